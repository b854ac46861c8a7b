//! `tokend mi-env APP`: the environment a program needs to reach the
//! managed-identity endpoint as app APP (docs/managed-identity.md), printed
//! for a systemd `EnvironmentFile=`. Root only: the header is a secret.

use crate::secret::{ExposeSecret, SecretEnv};
use crate::server::mi::PATH;
use std::path::Path;

/// Runs the command; the exit code.
pub fn run(app: &str, path: &Path) -> u8 {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("tokend mi-env prints the app's header, a secret: run it as root (e.g. sudo tokend mi-env {app} > /etc/tokend/mi/{app}.env)");
        return 1;
    }
    let Some(config) = crate::check::validate(path) else {
        return 1;
    };
    match env_lines(&config, app, &SecretEnv::process()) {
        Ok(lines) => {
            print!("{lines}");
            0
        }
        Err(e) => {
            eprintln!("tokend mi-env: {e}");
            1
        }
    }
}

/// The environment a program needs to use app `name` of `config`: the two
/// lines for a systemd `EnvironmentFile=`. The header is a secret.
pub fn env_lines(
    config: &crate::config::Config,
    name: &str,
    env: &SecretEnv,
) -> Result<String, String> {
    let Some(mi) = &config.managed_identity else {
        return Err(format!(
            "{} has no [managed_identity] section",
            crate::text::path(&config.path)
        ));
    };
    let Some(app) = mi.apps.get(name) else {
        let known: Vec<&str> = mi.apps.keys().map(String::as_str).collect();
        return Err(format!(
            "no managed-identity app named {name:?}; the apps are: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    };
    let header = app
        .header
        .resolve_now(env)
        .map_err(|e| format!("cannot read app {name}'s header: {e}"))?;
    Ok(format!(
        "IDENTITY_ENDPOINT=http://{}{PATH}\nIDENTITY_HEADER={}\n",
        mi.listen,
        header.expose_secret()
    ))
}

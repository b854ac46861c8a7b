//! What the two managed-identity doors offer, in force: each app's
//! header, read when a config is applied, and the sources it may use; and
//! the sources offered on the IMDS door. The managed-identity door asks
//! which app presented a header; status asks which apps use a source.
//! Swapped whole on reload, like the sources.

use crate::config::Config;
use crate::secret::{ExposeSecret, SecretEnv};
use secrecy::SecretString;
use subtle::ConstantTimeEq;

/// The apps allowed on the endpoint, with their headers read: what a
/// (re)load of the config gives the running daemon.
#[derive(Debug, Default)]
pub struct MiState {
    pub apps: Vec<AppState>,
    /// The sources offered on the IMDS door (`[imds] sources`).
    pub imds: Vec<String>,
}

/// One app, its header value if it could be read, and its sources.
#[derive(Debug)]
pub struct AppState {
    pub name: String,
    pub header: Option<SecretString>,
    pub sources: Vec<String>,
    /// Who may present the header (`None`: whoever has it).
    pub allow: Option<crate::acl::Allow>,
}

impl MiState {
    /// Reads every app's header now (files: call it off the runtime). An
    /// app whose header cannot be read is logged and matches no request.
    pub fn load(config: &Config, env: &SecretEnv) -> MiState {
        let imds = config
            .imds
            .as_ref()
            .map(|i| i.sources.clone())
            .unwrap_or_default();
        let Some(mi) = &config.managed_identity else {
            return MiState {
                apps: Vec::new(),
                imds,
            };
        };
        let apps = mi
            .apps
            .values()
            .map(|app| {
                let header = match app.header.resolve_now(env) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::error!(app = %app.name, error = %e, "cannot read the managed-identity app's header; its requests will be refused");
                        None
                    }
                };
                AppState {
                    name: app.name.clone(),
                    header,
                    sources: app.sources.clone(),
                    allow: app.allow.clone(),
                }
            })
            .collect();
        MiState { apps, imds }
    }

    /// The app whose header is `presented`, comparing with every app in
    /// constant time.
    pub fn app(&self, presented: &[u8]) -> Option<&AppState> {
        let mut found = None;
        for app in &self.apps {
            if let Some(h) = &app.header {
                if bool::from(h.expose_secret().as_bytes().ct_eq(presented)) && found.is_none() {
                    found = Some(app);
                }
            }
        }
        found
    }

    /// The apps that may use `source`.
    pub fn apps_using(&self, source: &str) -> Vec<String> {
        self.apps
            .iter()
            .filter(|a| a.sources.iter().any(|s| s == source))
            .map(|a| a.name.clone())
            .collect()
    }
}

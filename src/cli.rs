//! The command line, and what is generated from it: the man page
//! `tokend.8` and the shell completions. `dist/` holds the generated files
//! the Debian package installs; `tests/dist.rs` fails when they differ from
//! what this module renders (`TOKEND_REGENERATE=1 cargo test --test dist`
//! writes them anew), so they are never edited by hand.

use crate::config;
use clap::{CommandFactory, Parser, Subcommand};
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "tokend",
    version,
    about = "OAuth 2.0 client-credentials token broker on a Unix socket",
    long_about = "tokend holds OAuth 2.0 client-credentials identities (Microsoft Entra ID, \
Keycloak, Okta, Auth0, any RFC 6749 server), fetches an access token for each, refreshes it \
well before it expires, and serves the cached tokens to local programs over HTTP on a Unix \
domain socket, checking each caller's uid and groups. Programs get a bearer token with one \
request and never hold the client secret. Edits to the configuration apply without a restart."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    ///
    /// Runs until SIGTERM or SIGINT (then drains requests for up to 5 s and
    /// removes its socket); SIGHUP, or saving the configuration, reloads it.
    /// Under systemd it serves a passed socket (socket activation) and
    /// reports its state with sd_notify. It never forks into the background.
    Run {
        /// Config file.
        #[arg(short, long, env = "TOKEND_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Development mode: a built-in local IdP, a demo source, socket ./tokend.sock.
    ///
    /// Nothing to configure: prints the commands to try. The demo token lives
    /// 30 s, so refreshes show in the log.
    Dev,
    /// Validate the config; with --fetch, also get one token per source.
    ///
    /// Prints every problem as FILE:LINE:COL: what is wrong — how to fix, and
    /// exits 1 if there is any. With --fetch, it requests a token per source
    /// and prints its lifetime and the claims that matter (aud, roles/scp,
    /// tid, appid/azp, exp), calls each probe_url with it, and exits 1 if any
    /// of that fails.
    Check {
        /// Config file.
        #[arg(short, long, env = "TOKEND_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Request a token per source and show its claims.
        #[arg(long)]
        fetch: bool,
    },
    /// Print a token from the running daemon (for `Authorization: Bearer $(tokend token NAME)`).
    ///
    /// Exit status: 0 printed, 2 no such source or one you may not read,
    /// 4 unavailable (503, 504, 422), 1 anything else.
    Token {
        /// The source's name.
        name: String,
        /// The token must stay valid at least this long (e.g. 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        min_ttl: Option<Duration>,
        /// Print the JSON body instead of the bare token.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Print IDENTITY_ENDPOINT and IDENTITY_HEADER for a managed-identity app.
    ///
    /// For a systemd EnvironmentFile= of a program that uses the Azure SDK.
    /// Root only: it prints the app's header, a secret.
    MiEnv {
        /// The app, as in [managed_identity.apps.APP].
        app: String,
        /// Config file.
        #[arg(short, long, env = "TOKEND_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Print a source's token in the format a tool's credential helper expects.
    ///
    /// For tools that run a program for their credentials: kubectl and other
    /// client-go programs (exec plugin), git (credential helper), Google's
    /// SDKs (executable-sourced credentials). A client of the running daemon,
    /// like `tokend token`: the caller's uid and groups and the source's
    /// allow list apply, and no secret is read. Errors are one line on
    /// stderr naming the source and the daemon's error code.
    Credential {
        #[command(subcommand)]
        kind: CredentialKind,
    },
    /// Hand the socket's directory to the daemon's user (a Kubernetes init container).
    ///
    /// Makes DIR owned by OWNER:GROUP with mode 0755 unless it is already,
    /// refusing a symbolic link: a hostPath the kubelet made belongs to
    /// root. Run as root with only CAP_CHOWN (docs/kubernetes.md).
    SocketDir {
        /// The directory (the socket's, e.g. /run/tokend).
        dir: PathBuf,
        /// The daemon's uid.
        #[arg(long)]
        owner: u32,
        /// The directory's gid.
        #[arg(long)]
        group: u32,
    },
    /// Show the state of every source.
    ///
    /// State, expiry, last and next refresh, failures, credential expiry and
    /// the last error with its hint; only the sources the caller may read.
    Status {
        /// Print the /v1/sources document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// The tools `tokend credential` speaks to.
#[derive(Subcommand)]
pub enum CredentialKind {
    /// An ExecCredential for kubectl and other client-go programs.
    ///
    /// Kubeconfig: users[].user.exec with command: tokend,
    /// args: [credential, kubectl, SOURCE], interactiveMode: Never. The
    /// apiVersion follows $KUBERNETES_EXEC_INFO (v1 when unset).
    Kubectl {
        /// The source's name.
        source: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// git's credential-helper protocol (get; store and erase do nothing).
    ///
    /// git config credential.https://dev.azure.com.helper
    /// '!tokend credential git SOURCE'. A Bearer token where git offers
    /// capability[]=authtype (git 2.46 and later), else the token as the
    /// password of --username. Nothing for a protocol other than https.
    Git {
        /// The source's name.
        source: String,
        /// The user name sent with the token as password (git before 2.46).
        #[arg(long, default_value = "tokend")]
        username: String,
        /// Answer only for this host (as git sends it: `dev.azure.com`, or
        /// `host:port`); repeat for several. Without it, every host git asks
        /// about gets the token: scope the helper to a URL in git's config
        /// (credential.https://HOST.helper), or give --host.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// What git asks: get, store or erase.
        #[arg(value_parser = ["get", "store", "erase"])]
        action: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Google's executable-sourced credential (workload identity federation).
    ///
    /// credential_source.executable.command in an external_account config,
    /// with GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1. The version-1 JSON,
    /// on success and on failure; nothing on stderr.
    Gcp {
        /// The source's name.
        source: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
}

/// Where the daemon is, and how long to wait for it: every client command.
#[derive(clap::Args)]
pub struct DaemonArgs {
    /// The daemon's socket.
    #[arg(long, env = "TOKEND_SOCKET", default_value = config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Give up on a daemon that has not answered within this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
}

/// The shells completions are generated for, with the file name and the
/// directory (under `/usr/share`) each one's completions go in.
pub const SHELLS: &[(clap_complete::Shell, &str, &str)] = &[
    (
        clap_complete::Shell::Bash,
        "tokend",
        "bash-completion/completions",
    ),
    (
        clap_complete::Shell::Zsh,
        "_tokend",
        "zsh/vendor-completions",
    ),
    (
        clap_complete::Shell::Fish,
        "tokend.fish",
        "fish/vendor_completions.d",
    ),
];

/// The completion script for `shell`.
pub fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tokend", &mut out);
    out
}

/// `tokend.8`: the command, each subcommand with its options, and the
/// files, environment, signals and exit status a sysadmin needs.
pub fn man_page() -> Vec<u8> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("tokend {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    out.extend(roff.render().into_bytes());
    for sub in cmd.get_subcommands() {
        out.extend(subcommand(sub, "tokend"));
        // `tokend credential KIND`: each kind has its own subsection.
        let prefix = format!("tokend {}", sub.get_name());
        for nested in sub.get_subcommands() {
            out.extend(subcommand(nested, &prefix));
        }
    }
    out.extend(extra_sections().render().into_bytes());
    out
}

/// One subcommand as a `.SS` subsection: synopsis, description, options.
fn subcommand(sub: &clap::Command, prefix: &str) -> Vec<u8> {
    let man = clap_mangen::Man::new(sub.clone());
    let mut parts = Vec::new();
    let _ = man.render_synopsis_section(&mut parts);
    let _ = man.render_description_section(&mut parts);
    let _ = man.render_options_section(&mut parts);
    let text = String::from_utf8_lossy(&parts);
    let mut out = String::new();
    for line in text.lines() {
        match line {
            // The synopsis opens the subsection; the other headings go.
            ".SH SYNOPSIS" => {
                out.push_str(&format!(".SS \"{prefix} {}\"\n", sub.get_name()));
            }
            ".SH DESCRIPTION" | ".SH OPTIONS" => out.push_str(".PP\n"),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.into_bytes()
}

fn extra_sections() -> Roff {
    let mut r = Roff::new();
    let item = |r: &mut Roff, term: Vec<Inline>, text: &str| {
        r.control("TP", []);
        r.text(term);
        r.text([roman(text)]);
    };
    r.control("SH", ["FILES"]);
    item(&mut r, vec![italic(config::DEFAULT_PATH)], "The configuration: [server], [defaults], [sources.NAME] tables, [managed_identity] and [imds]. Unknown keys are errors. Edits apply without a restart once the file is saved.");
    item(&mut r, vec![italic("/etc/tokend/sources.d/*.toml")], "More [sources.NAME] tables, one file per team or service if you like, loaded in name order (include_dir changes the directory).");
    item(&mut r, vec![italic(config::DEFAULT_SOCKET)], "The socket programs ask for tokens on (HTTP/1.1: GET /v1/tokens/NAME). Its mode and group decide who may connect; each source's allow list decides who may read it.");
    item(&mut r, vec![italic("/usr/lib/systemd/system/tokend.service"), roman(", "), italic("tokend.socket")], "The systemd units: the socket unit creates the socket and passes it to the service, which runs as user tokend.");
    item(&mut r, vec![italic("/usr/share/doc/tokend/")], "README.md; under docs/ the reference for the configuration (config.md), the HTTP API (api.md), the daemon's behaviour (behaviour.md), operations (operations.md) and troubleshooting (troubleshooting.md); an annotated example configuration under examples/.");
    r.control("SH", ["ENVIRONMENT"]);
    item(
        &mut r,
        vec![bold("TOKEND_CONFIG")],
        "The configuration file, when -c is not given.",
    );
    item(
        &mut r,
        vec![bold("TOKEND_SOCKET")],
        "The socket the client commands (token, status) use, when --socket is not given.",
    );
    item(&mut r, vec![bold("RUST_LOG")], "Log level or filter (default info). Logs go to standard error; log_format = \"json\" in [server] makes them JSON lines.");
    item(
        &mut r,
        vec![bold("CREDENTIALS_DIRECTORY")],
        "Set by systemd's LoadCredential=: where { credential = \"NAME\" } secrets are read from.",
    );
    r.control("SH", ["SIGNALS"]);
    item(&mut r, vec![bold("SIGHUP")], "Reload the configuration (systemctl reload tokend). An invalid file changes nothing; the error is logged and shown in tokend status.");
    item(&mut r, vec![bold("SIGTERM"), roman(", "), bold("SIGINT")], "Stop accepting, finish requests in flight for up to 5 s, remove the socket file tokend created, exit 0.");
    r.control("SH", ["EXIT STATUS"]);
    r.text([roman(
        "0 on success. 1 when the configuration is invalid, the socket cannot be bound, or a check fails. \
tokend token also exits 2 for an unknown source, 3 when the caller may not read it, \
and 4 when no token is available (503, 504, 422).",
    )]);
    r.control("SH", ["EXAMPLES"]);
    let example = |r: &mut Roff, what: &str, command: &str| {
        r.control("PP", []);
        r.text([roman(what)]);
        r.control("RS", ["4"]);
        r.text([bold(command)]);
        r.control("RE", []);
    };
    example(
        &mut r,
        "Check the configuration and fetch one token per source, as the daemon's user (who must be able to read every secret file):",
        "sudo -u tokend tokend check --fetch",
    );
    example(
        &mut r,
        "Let the user nightly connect to the socket (then log in again):",
        "sudo usermod -aG tokend-clients nightly",
    );
    example(
        &mut r,
        "Call an API with a token, from a program whose user may read the source:",
        "curl -H \"Authorization: Bearer $(tokend token graph)\" https://graph.microsoft.com/v1.0/users",
    );
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), "),
        bold("systemd.socket"),
        roman("(5), "),
        bold("sysusers.d"),
        roman("(5); "),
        italic("/usr/share/doc/tokend/docs/config.md"),
        roman(", "),
        italic("api.md"),
        roman(", "),
        italic("behaviour.md"),
        roman(", "),
        italic("operations.md"),
        roman(", "),
        italic("troubleshooting.md"),
        roman("; alert rules and a Grafana dashboard in "),
        italic("/usr/share/tokend/monitoring/"),
        roman("."),
    ]);
    r
}

//! Config validation as a sysadmin meets it: every message with its file,
//! line and column.
use super::*;
use std::path::Path;
use std::time::{Duration, SystemTime};

const GOOD: &str = r#"
[sources.api]
token_url = "https://sso.example.com/token"
client_id = "api"
client_secret = { file = "/run/secret" }
"#;

fn problems(text: &str) -> Vec<Diagnostic> {
    match load_str(text, Path::new("t.toml"), Some(0o600)) {
        Err(ConfigError::Invalid(d, _)) => d,
        other => panic!("expected errors, got {other:?}"),
    }
}

fn one(text: &str) -> Diagnostic {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap()
}

#[test]
fn good_config_gets_defaults() {
    let c = load_str(GOOD, Path::new("t.toml"), Some(0o600)).unwrap();
    let s = &c.sources["api"];
    assert_eq!(s.auth_method, AuthMethod::ClientSecretBasic);
    assert_eq!(s.refresh_ratio, 0.75);
    assert_eq!(s.min_ttl, Duration::from_secs(120));
    assert_eq!(s.fetch_timeout, Duration::from_secs(15));
    assert!(s.eager);
    assert_eq!(c.server.socket_mode, 0o660);
    assert!(c.warnings.is_empty());
}

#[test]
fn unknown_key_names_line_and_column() {
    let d = one(&GOOD.replace("client_id =", "clent_id = \"x\"\nclient_id ="));
    assert_eq!((d.line, d.col), (4, 1));
    assert_eq!(d.message, "unknown key `clent_id`");
    assert_eq!(d.hint.as_deref(), Some("did you mean `client_id`?"));
    assert!(d.to_string().starts_with("t.toml:4:1: "), "{d}");
}

#[test]
fn unknown_server_key_and_top_level_key() {
    let p = problems(&format!("[server]\nsokcet = \"/x\"\n[servre]\n{GOOD}"));
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!((p[0].line, p[0].col), (2, 1));
    assert!(p[1].message.contains("unknown key `servre`"));
}

#[test]
fn syntax_error_has_position() {
    let d = one("[sources.api\nclient_id = 1");
    assert_eq!(d.line, 1);
    assert!(d.hint.as_deref().unwrap_or_default().contains("TOML"));
}

#[test]
fn bad_names() {
    let d = one(&GOOD.replace("[sources.api]", "[sources.Bad_Name]"));
    assert_eq!((d.line, d.col), (2, 10));
    assert!(d.message.contains("invalid source name"));
}

#[test]
fn http_only_to_loopback() {
    let d = one(&GOOD.replace("https://sso.example.com", "http://sso.example.com"));
    assert_eq!((d.line, d.col), (3, 13));
    assert!(d.hint.unwrap().contains("https://sso.example.com/token"));
    for ok in [
        "http://localhost:8080/t",
        "http://127.0.0.2/t",
        "http://[::1]:9/t",
    ] {
        load_str(
            &GOOD.replace("https://sso.example.com/token", ok),
            Path::new("t"),
            None,
        )
        .unwrap();
    }
}

#[test]
fn two_secret_kinds() {
    let d = one(&GOOD.replace(
        r#"{ file = "/run/secret" }"#,
        r#"{ file = "/a", env = "B" }"#,
    ));
    assert_eq!(d.line, 5);
    assert!(d.message.contains("exactly one"), "{d}");
}

#[test]
fn bad_duration_and_ratio_reported_together() {
    let p = problems(&format!(
        "{GOOD}min_ttl = \"2 parsecs\"\nrefresh_ratio = 1.5\nfetch_timeout = 30\n"
    ));
    assert_eq!(
        p.len(),
        1,
        "serde stops at the first type error within a table: {p:#?}"
    );
    let p = problems(&format!(
        "{GOOD}min_ttl = \"2 parsecs\"\nrefresh_ratio = 1.5\n"
    ));
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!(p[0].line, 6);
    assert!(p[0].message.contains("min_ttl"));
    assert_eq!(p[1].line, 7);
    assert!(p[1].hint.as_deref().unwrap().contains("0.5 to 0.95"));
}

#[test]
fn every_source_is_checked() {
    let text = format!("{GOOD}\n[sources.b]\nclient_id = \"b\"\n[sources.c]\ntoken_url = \"https://x/t\"\nclient_id = \"c\"\nclient_secret = {{ nope = \"x\" }}\n");
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(p[0].message.contains("no `token_url`"));
    assert!(p[1].message.contains("no credential"));
    assert!(p[2].message.contains("unknown secret kind"));
}

#[test]
fn defaults_apply_and_sources_override() {
    let c = load_str(
        &format!("[defaults]\nmin_ttl = \"5m\"\neager = false\n{GOOD}refresh_ratio = 0.8\n"),
        Path::new("t"),
        None,
    )
    .unwrap();
    let s = &c.sources["api"];
    assert_eq!(s.min_ttl, Duration::from_secs(300));
    assert!(!s.eager);
    assert_eq!(s.refresh_ratio, 0.8);
}

#[test]
fn azure_fills_in_and_checks_scopes() {
    let base = "[sources.graph]\nprovider = \"azure\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"x\"\nclient_secret = { env = \"S\" }\n";
    let c = load_str(base, Path::new("t"), None).unwrap();
    let g = &c.sources["graph"];
    assert_eq!(
        g.endpoint.to_string(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(g.auth_method, AuthMethod::ClientSecretPost);
    assert_eq!(g.scopes, vec![crate::entra::DEFAULT_SCOPE.to_string()]);

    let d = one(&format!(
        "{base}scopes = [\"https://graph.microsoft.com/User.Read\"]\n"
    ));
    assert!(
        d.hint
            .as_deref()
            .unwrap()
            .contains("\"https://graph.microsoft.com/.default\""),
        "{d}"
    );
    let d = one(&format!("{base}scopes = [\"User.Read\"]\n"));
    assert!(
        d.hint
            .as_deref()
            .unwrap()
            .contains("granted on the app registration"),
        "{d}"
    );
    let d = one(&base.replace("contoso.onmicrosoft.com", "common"));
    assert!(d.message.contains("common"));
    let c = load_str(
        &format!("{base}authority = \"https://login.microsoftonline.us\"\n"),
        Path::new("t"),
        None,
    )
    .unwrap();
    assert!(c.sources["graph"]
        .endpoint
        .to_string()
        .starts_with("https://login.microsoftonline.us/contoso"));
}

#[test]
fn inline_secret_in_readable_file_warns() {
    let text = GOOD.replace(r#"{ file = "/run/secret" }"#, r#""s3cret-value""#);
    let c = load_str(&text, Path::new("t"), Some(0o644)).unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert!(!c.warnings[0].to_string().contains("s3cret-value"));
    assert!(!format!("{c:?}").contains("s3cret-value"));
    let c = load_str(&text, Path::new("t"), Some(0o600)).unwrap();
    assert!(c.warnings.is_empty());
}

/// The package installs the configuration root:tokend 0640: readable by a
/// group only the daemon is in. That is as private as 0600, and must not
/// earn the warning (its old hint, chmod 600, would lock the daemon out).
#[test]
fn inline_secret_in_a_file_only_a_private_group_reads_does_not_warn() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let text = GOOD.replace(r#"{ file = "/run/secret" }"#, r#""s3cret-value""#);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokend.toml");
    std::fs::write(&path, &text).unwrap();
    let warnings_with = |mode: u32| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        load(&path).unwrap().warnings.len()
    };
    // The test's own primary group; root's has no listed members.
    let gid = nix::unistd::getegid().as_raw();
    let private = nix::unistd::Group::from_gid(nix::unistd::getegid())
        .unwrap()
        .is_some_and(|g| g.mem.is_empty());
    assert_eq!(warnings_with(0o600), 0);
    assert_eq!(warnings_with(0o644), 1, "others can read");
    assert_eq!(warnings_with(0o640), usize::from(!private), "group {gid}");
    if nix::unistd::geteuid().is_root() {
        // A gid no group has: who is in it cannot be known, so it counts.
        chown(&path, None, Some(4_000_000_123)).unwrap();
        assert_eq!(warnings_with(0o640), 1, "an unknown group");
    }
}

#[test]
fn credential_expires_date_or_string() {
    let c = load_str(
        &format!("{GOOD}credential_expires = 2027-05-01\n"),
        Path::new("t"),
        None,
    )
    .unwrap();
    let want = SystemTime::UNIX_EPOCH + Duration::from_secs(1_809_129_600);
    assert_eq!(c.sources["api"].credential_expires, Some(want));
    let c = load_str(
        &format!("{GOOD}credential_expires = \"2027-05-01\"\n"),
        Path::new("t"),
        None,
    )
    .unwrap();
    assert_eq!(c.sources["api"].credential_expires, Some(want));
    let d = one(&format!("{GOOD}credential_expires = \"soon\"\n"));
    assert_eq!(d.line, 6);
}

#[test]
fn server_section() {
    let c = load_str(&format!("[server]\nsocket = \"/tmp/x.sock\"\nsocket_mode = \"0600\"\nsocket_group = 0\nlog_format = \"json\"\nrequest_timeout = \"3s\"\nmetrics_listen = \"[::1]:9464\"\n{GOOD}"), Path::new("t"), None).unwrap();
    assert_eq!(c.server.socket_mode, 0o600);
    assert_eq!(c.server.metrics_listen, Some("[::1]:9464".parse().unwrap()));
    assert_eq!(c.server.socket_group, Some(0));
    assert_eq!(c.server.log_format, LogFormat::Json);
    assert_eq!(c.server.request_timeout, Duration::from_secs(3));
    let p = problems(&format!("[server]\nsocket_mode = \"999\"\nsocket_group = \"no-such-group-xyz\"\nmax_connections = 0\nmetrics_listen = \"localhost\"\n{GOOD}"));
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(p[3].message.contains("`metrics_listen`"), "{p:#?}");
    assert!(p[3].hint.as_deref().unwrap().contains("127.0.0.1:9464"));
}

#[test]
fn include_dir_adds_sources_and_duplicates_name_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("tokend.toml");
    std::fs::write(&main, format!("[defaults]\nmin_ttl = \"1m\"\n{GOOD}")).unwrap();
    std::fs::create_dir(dir.path().join("sources.d")).unwrap();
    let inc = |name: &str| {
        format!("[sources.{name}]\ntoken_url = \"https://x/t\"\nclient_id = \"c\"\nclient_secret = {{ env = \"E\" }}\n")
    };
    std::fs::write(dir.path().join("sources.d/b.toml"), inc("two")).unwrap();
    std::fs::write(dir.path().join("sources.d/a.toml"), inc("one")).unwrap();
    std::fs::write(dir.path().join("sources.d/notes.txt"), "ignored").unwrap();
    let c = super::load(&main).unwrap();
    assert_eq!(
        c.sources.keys().collect::<Vec<_>>(),
        vec!["api", "one", "two"]
    );
    assert_eq!(
        c.sources["one"].min_ttl,
        Duration::from_secs(60),
        "defaults apply to includes"
    );
    let names: Vec<_> = c
        .include_files
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["a.toml", "b.toml"], "name order");

    std::fs::write(dir.path().join("sources.d/c.toml"), inc("api")).unwrap();
    let Err(ConfigError::Invalid(p, _)) = super::load(&main) else {
        panic!()
    };
    assert_eq!(p.len(), 1, "{p:#?}");
    let msg = p[0].to_string();
    assert!(
        msg.starts_with(&format!(
            "{}:1:10: source `api` is defined twice",
            dir.path().join("sources.d/c.toml").display()
        )),
        "{msg}"
    );
    assert!(msg.contains(&format!("{}:4:10", main.display())), "{msg}");
}

#[test]
fn include_files_hold_only_sources_and_report_their_own_positions() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("tokend.toml");
    std::fs::write(
        &main,
        format!("include_dir = \"more\"\n[defaults]\nmin_ttl = \"forever\"\n{GOOD}"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("more")).unwrap();
    let inc = dir.path().join("more/x.toml");
    std::fs::write(&inc, "[server]\nsocket = \"/x\"\n[sources.x]\ntoken_url = \"https://x/t\"\nclient_id = \"c\"\nclient_secret = { env = \"E\" }\n").unwrap();
    let Err(ConfigError::Invalid(p, _)) = super::load(&main) else {
        panic!()
    };
    let text: Vec<String> = p.iter().map(ToString::to_string).collect();
    assert!(
        text.iter().any(|t| t.starts_with(&format!(
            "{}:1:2: `server` is not allowed in an include file",
            inc.display()
        ))),
        "{text:#?}"
    );
    // The bad default shows in the main file for `api` and at the header of `x` in the include.
    assert!(
        text.iter()
            .any(|t| t.starts_with(&format!("{}:3:11: `min_ttl`", main.display()))),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with(&format!("{}:3:10: `min_ttl`", inc.display()))),
        "{text:#?}"
    );

    std::fs::write(&main, format!("include_dir = \"missing\"\n{GOOD}")).unwrap();
    let Err(ConfigError::Invalid(p, _)) = super::load(&main) else {
        panic!()
    };
    assert!(p[0].message.contains("is not a directory"), "{p:#?}");
}

#[test]
fn allow_resolves_names_and_rejects_unknown_ones() {
    let c = load_str(&format!("{GOOD}allow = {{ users = [\"root\"], groups = [\"root\"], uids = [1000], gids = [2000] }}\n"), Path::new("t"), None).unwrap();
    let a = c.sources["api"].allow.clone().unwrap();
    assert_eq!(a.uids, [0, 1000].into());
    assert_eq!(a.gids, [0, 2000].into());
    let p = problems(&format!(
        "{GOOD}allow = {{ users = [\"no-such-user-xyz\"], groups = [\"no-such-group-xyz\"] }}\n"
    ));
    assert_eq!(p.len(), 2, "{p:#?}");
    assert_eq!((p[0].line, p[0].col), (6, 9));
    assert!(p[0].message.contains("unknown user `no-such-user-xyz`"));
    assert!(p[1].message.contains("unknown group `no-such-group-xyz`"));
    let d = one(&format!("{GOOD}allow = {{ user = [\"root\"] }}\n"));
    assert!(d.message.contains("`allow` is malformed"), "{d}");
}

#[test]
fn names() {
    assert!(valid_source_name("graph"));
    assert!(valid_source_name("a.b_c-1"));
    assert!(!valid_source_name(""));
    assert!(!valid_source_name("-x"));
    assert!(!valid_source_name("Graph"));
    assert!(!valid_source_name("../etc"));
    assert!(!valid_source_name(&"a".repeat(65)));
}

#[test]
fn an_inherited_plain_secret_is_judged_by_the_file_it_is_written_in() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("tokend.toml");
    // The secret is in a main file only its owner can read; the include
    // file that inherits it is world-readable, and that is fine.
    std::fs::write(&main, "[defaults]\nclient_secret = \"s3cret-value\"\n").unwrap();
    std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(dir.path().join("sources.d")).unwrap();
    let inc = dir.path().join("sources.d/a.toml");
    let text = "[sources.a]\ntoken_url = \"https://x/t\"\nclient_id = \"a\"\n[sources.b]\ntoken_url = \"https://x/t\"\nclient_id = \"b\"\n";
    std::fs::write(&inc, text).unwrap();
    std::fs::set_permissions(&inc, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = super::load(&main).unwrap();
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    // A readable main file earns one warning, at the [defaults] value.
    std::fs::set_permissions(&main, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = super::load(&main).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
    assert!(
        c.warnings[0]
            .to_string()
            .starts_with(&format!("{}:2:17: plain client_secret", main.display())),
        "{}",
        c.warnings[0]
    );
}

mod credentials {
    use super::*;
    use crate::cert::test_keys;
    use crate::config::{Credential, Endpoint, SigningAlg};

    const HEAD: &str =
        "[sources.a]\ntoken_url = \"https://sso.example.com/t\"\nclient_id = \"a\"\n";

    fn cert_line(cert: &Path, key: &Path, extra: &str) -> String {
        format!(
            "client_certificate = {{ cert = \"{}\", key = {{ file = \"{}\" }}{extra} }}\n",
            cert.display(),
            key.display()
        )
    }

    #[test]
    fn a_certificate_source_infers_private_key_jwt_and_its_alg() {
        let (cert, key) = test_keys::shared("rsa");
        let c = load_str(
            &format!("{HEAD}{}", cert_line(&cert, &key, "")),
            Path::new("t"),
            None,
        )
        .unwrap();
        let s = &c.sources["a"];
        assert_eq!(s.auth_method, AuthMethod::PrivateKeyJwt);
        let Credential::Certificate(cc) = &s.credential else {
            panic!()
        };
        assert_eq!(cc.alg, SigningAlg::Rs256);
        // notAfter is the credential's expiry unless credential_expires says otherwise.
        assert_eq!(s.credential_expires, Some(cc.cert.not_after));
        // Entra signs with PS256 by default.
        let azure = format!("[sources.a]\nprovider = \"azure\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"a\"\n{}", cert_line(&cert, &key, ""));
        let c = load_str(&azure, Path::new("t"), None).unwrap();
        let Credential::Certificate(cc) = &c.sources["a"].credential else {
            panic!()
        };
        assert_eq!(cc.alg, SigningAlg::Ps256);
        let (ec, eckey) = test_keys::shared("ec");
        let c = load_str(
            &format!("{HEAD}{}", cert_line(&ec, &eckey, "")),
            Path::new("t"),
            None,
        )
        .unwrap();
        let Credential::Certificate(cc) = &c.sources["a"].credential else {
            panic!()
        };
        assert_eq!(cc.alg, SigningAlg::Es256);
        let d = one(&format!(
            "{HEAD}{}",
            cert_line(&ec, &eckey, ", alg = \"PS256\"")
        ));
        assert!(
            d.message.contains("alg PS256 does not fit") && d.message.contains("ECDSA P-256"),
            "{d}"
        );
        let d = one(&format!(
            "{HEAD}{}",
            cert_line(&cert, &key, ", alg = \"HS256\"")
        ));
        assert!(
            d.message.contains("unknown alg in client_certificate"),
            "{d}"
        );
    }

    #[test]
    fn a_missing_or_wrong_certificate_file_is_a_config_error_naming_it() {
        let (cert, key) = test_keys::shared("rsa");
        let d = one(&format!(
            "{HEAD}{}",
            cert_line(Path::new("/nonexistent/app.pem"), &key, "")
        ));
        assert_eq!(d.line, 4);
        assert!(
            d.message
                .starts_with("cannot read certificate /nonexistent/app.pem"),
            "{d}"
        );
        let d = one(&format!("{HEAD}{}", cert_line(&key, &cert, "")));
        assert!(d.message.contains("is not a usable certificate"), "{d}");
        let d = one(&format!(
            "{HEAD}client_certificate = {{ cert = \"{}\" }}\n",
            cert.display()
        ));
        assert!(
            d.message.contains("`client_certificate` is malformed"),
            "{d}"
        );
    }

    #[test]
    fn one_credential_per_source_and_auth_method_must_fit_it() {
        let (cert, key) = test_keys::shared("rsa");
        let both = format!(
            "{HEAD}client_secret = {{ env = \"S\" }}\n{}",
            cert_line(&cert, &key, "")
        );
        let d = one(&both);
        assert_eq!(
            d.message,
            "source `a` has both `client_secret` and `client_certificate`; a source authenticates one way"
        );
        let d = one(&format!(
            "{HEAD}client_secret = {{ env = \"S\" }}\nauth_method = \"private_key_jwt\"\n"
        ));
        assert_eq!(
            d.message,
            "auth_method `private_key_jwt` does not go with client_secret"
        );
        assert!(d
            .hint
            .unwrap()
            .contains("client_secret_basic or client_secret_post"));
        let d = one(&format!(
            "{HEAD}client_assertion = {{ file = \"/t\" }}\nauth_method = \"tls_client_auth\"\n"
        ));
        assert_eq!(
            d.message,
            "auth_method `tls_client_auth` does not go with client_assertion"
        );
        let c = load_str(
            &format!(
                "{HEAD}{}auth_method = \"tls_client_auth\"\n",
                cert_line(&cert, &key, "")
            ),
            Path::new("t"),
            None,
        )
        .unwrap();
        assert_eq!(c.sources["a"].auth_method, AuthMethod::TlsClientAuth);
        let c = load_str(
            &format!("{HEAD}client_assertion = {{ file = \"/var/run/token\" }}\n"),
            Path::new("t"),
            None,
        )
        .unwrap();
        assert_eq!(c.sources["a"].auth_method, AuthMethod::PrivateKeyJwt);
        assert!(matches!(
            c.sources["a"].credential,
            Credential::Assertion(_)
        ));
    }

    #[test]
    fn a_default_secret_does_not_clash_with_a_sources_certificate() {
        let (cert, key) = test_keys::shared("rsa");
        let text = format!(
            "[defaults]\nclient_secret = {{ env = \"S\" }}\n{HEAD}{}[sources.b]\ntoken_url = \"https://x/t\"\nclient_id = \"b\"\n",
            cert_line(&cert, &key, "")
        );
        let c = load_str(&text, Path::new("t"), None).unwrap();
        assert!(matches!(
            c.sources["a"].credential,
            Credential::Certificate(_)
        ));
        assert!(matches!(c.sources["b"].credential, Credential::Secret(_)));
    }

    #[test]
    fn issuer_instead_of_token_url() {
        let text = "[sources.a]\nissuer = \"https://sso.example.com/realms/main\"\nclient_id = \"a\"\nclient_secret = { env = \"S\" }\n";
        let c = load_str(text, Path::new("t"), None).unwrap();
        assert_eq!(
            c.sources["a"].endpoint,
            Endpoint::Issuer(url::Url::parse("https://sso.example.com/realms/main").unwrap())
        );
        let d = one(&format!(
            "{HEAD}issuer = \"https://sso.example.com\"\nclient_secret = {{ env = \"S\" }}\n"
        ));
        assert_eq!(d.message, "source `a` has both `token_url` and `issuer`");
        let d = one(&text.replace("https://sso", "http://sso"));
        assert!(d.message.starts_with("`issuer` must use https"), "{d}");
    }

    #[test]
    fn ca_file_must_hold_certificates() {
        let (cert, key) = test_keys::shared("rsa");
        let c = load_str(
            &format!(
                "{HEAD}client_secret = {{ env = \"S\" }}\nca_file = \"{}\"\n",
                cert.display()
            ),
            Path::new("t"),
            None,
        )
        .unwrap();
        assert_eq!(c.sources["a"].ca_file.as_ref().unwrap().path, cert);
        let d = one(&format!(
            "{HEAD}client_secret = {{ env = \"S\" }}\nca_file = \"{}\"\n",
            key.display()
        ));
        assert!(d.message.contains("holds no PEM certificate"), "{d}");
        let d = one(&format!(
            "{HEAD}client_secret = {{ env = \"S\" }}\nca_file = \"/nonexistent/ca.pem\"\n"
        ));
        assert!(
            d.message
                .starts_with("cannot read ca_file /nonexistent/ca.pem"),
            "{d}"
        );
    }

    #[test]
    fn copy_paste_mistakes_in_secrets_are_warned_about_without_a_request() {
        let azure = "[sources.g]\nprovider = \"azure\"\ntenant = \"contoso.onmicrosoft.com\"\nclient_id = \"x\"\n";
        let warn = |secret: &str, base: &str| {
            let c = load_str(
                &format!("{base}client_secret = {secret:?}\n"),
                Path::new("t"),
                Some(0o600),
            )
            .unwrap();
            c.warnings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let w = warn("0b6e3a52-8f1d-4c7a-9e4b-2d5f6a7b8c9d", azure);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("looks like a GUID: this looks like the secret's ID, not its Value"),
            "{w:?}"
        );
        assert!(
            !w[0].contains("0b6e3a52"),
            "the value is never shown: {w:?}"
        );
        assert!(warn("Abc8Q~realLookingValue.Of40chars-xyzxyzxyzxyzx", azure).is_empty());
        assert!(warn(" padded", azure)[0].contains("starts or ends with whitespace"));
        assert!(warn("\"quoted\"", HEAD)[0].contains("wrapped in quotes"));
        // A GUID is a fine secret for other servers.
        assert!(warn("0b6e3a52-8f1d-4c7a-9e4b-2d5f6a7b8c9d", HEAD).is_empty());
        // The same holds for a secret file.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "0B6E3A52-8F1D-4C7A-9E4B-2D5F6A7B8C9D\n").unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let c = load_str(
            &format!("{azure}client_secret = {{ file = \"{}\" }}\n", f.display()),
            Path::new("t"),
            None,
        )
        .unwrap();
        assert!(c.warnings[0]
            .to_string()
            .contains(&format!("in file {} looks like a GUID", f.display())));
    }
}

/// An inline managed-identity header is a secret like an inline
/// client_secret: in a file others can read, it earns the same warning.
#[test]
fn inline_managed_identity_header_in_a_readable_file_warns() {
    let text = format!("{GOOD}scopes = [\"https://graph.microsoft.com/.default\"]\n[managed_identity]\nlisten = \"127.0.0.1:42356\"\n[managed_identity.apps.jira]\nheader = \"h3ader-value-long-enough\"\nsources = [\"api\"]\n");
    let c = load_str(&text, Path::new("t"), Some(0o644)).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = c.warnings[0].to_string();
    assert!(
        w.contains("plain header in a config file that others can read"),
        "{w}"
    );
    assert!(!w.contains("h3ader-value-long-enough"), "{w}");
    let c = load_str(&text, Path::new("t"), Some(0o600)).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

/// A header short enough to guess is refused, naming the app and never
/// the value.
#[test]
fn a_short_inline_header_is_refused() {
    let text = format!("{GOOD}scopes = [\"https://graph.microsoft.com/.default\"]\n[managed_identity]\nlisten = \"127.0.0.1:42356\"\n[managed_identity.apps.jira]\nheader = \"x\"\nsources = [\"api\"]\n");
    let e = load_str(&text, Path::new("t"), Some(0o600))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("app `jira`'s inline header is shorter than 16 bytes")
            && e.contains("openssl rand -hex 32"),
        "{e}"
    );
}

#[test]
fn managed_identity_is_loopback_only_and_names_real_sources() {
    let mi = |listen: &str, app: &str| {
        format!("{GOOD}scopes = [\"https://graph.microsoft.com/.default\"]\n[managed_identity]\nlisten = \"{listen}\"\n{app}")
    };
    let app = "[managed_identity.apps.jira]\nheader = { env = \"H\" }\nsources = [\"api\"]\n";
    let c = load_str(&mi("127.0.0.1:42356", app), Path::new("t"), None).unwrap();
    let m = c.managed_identity.unwrap();
    assert_eq!(m.listen.to_string(), "127.0.0.1:42356");
    assert_eq!(m.apps["jira"].sources, vec!["api".to_string()]);
    assert!(load_str(&mi("[::1]:42356", app), Path::new("t"), None).is_ok());

    let d = one(&mi("0.0.0.0:42356", app));
    assert_eq!((d.line, d.col), (8, 10));
    assert_eq!(
        d.message,
        "`listen` 0.0.0.0:42356 is not a loopback address"
    );
    let d = one(&mi("10.0.0.5:42356", app));
    assert!(d
        .hint
        .unwrap()
        .contains("must not be reachable from the network"));
    let d = one(&mi("localhost", app));
    assert!(d.message.contains("is not an address and port"), "{d}");
    let d = one(&mi("127.0.0.1:1", &app.replace("[\"api\"]", "[\"apii\"]")));
    assert_eq!(d.message, "app `jira` names unknown source `apii`");
    assert_eq!(d.hint.as_deref(), Some("did you mean `api`?"));
    let d = one(&mi(
        "127.0.0.1:1",
        "[managed_identity.apps.jira]\nsources = [\"api\"]\n",
    ));
    assert!(d.message.contains("app `jira` has no `header`"), "{d}");
    // A source an SDK could not name by resource.
    let text = mi("127.0.0.1:1", app).replace(
        "scopes = [\"https://graph.microsoft.com/.default\"]",
        "scopes = [\"read\", \"write\"]",
    );
    let d = one(&text);
    assert!(
        d.message.contains("cannot be served to Azure SDK programs"),
        "{d}"
    );
}

/// An app's `allow` takes a source's syntax, names resolved at load, and
/// a name that does not resolve is an error at the app's `allow`.
#[test]
fn a_managed_identity_apps_allow_is_read_like_a_sources() {
    let mi = |allow: &str| {
        format!("{GOOD}scopes = [\"https://graph.microsoft.com/.default\"]\n[managed_identity]\nlisten = \"127.0.0.1:42356\"\n[managed_identity.apps.jira]\nheader = {{ env = \"H\" }}\nsources = [\"api\"]\n{allow}")
    };
    let c = load_str(
        &mi("allow = { users = [\"root\"], uids = [4242] }\n"),
        Path::new("t"),
        None,
    )
    .unwrap();
    let allow = c.managed_identity.unwrap().apps["jira"]
        .allow
        .clone()
        .unwrap();
    assert_eq!(allow.uids, [0, 4242].into());
    let c = load_str(&mi(""), Path::new("t"), None).unwrap();
    assert_eq!(c.managed_identity.unwrap().apps["jira"].allow, None);
    let d = one(&mi("allow = { users = [\"no-such-user-xyz\"] }\n"));
    assert_eq!((d.line, d.col), (12, 9), "{d}");
    assert_eq!(d.message, "unknown user `no-such-user-xyz` in allow");
    let d = one(&mi("allow = { user = [\"root\"] }\n"));
    assert!(d.message.contains("`allow` is malformed"), "{d}");
    let d = one(&mi("allow = { units = [\"nightly.service\"] }\n"));
    assert!(
        d.message
            .contains("names units, which the managed-identity endpoint cannot know"),
        "{d}"
    );
}

/// `[imds]`: loopback or 169.254.169.254, and only defined sources an SDK
/// can name by resource.
#[test]
fn imds_listens_on_loopback_or_the_imds_address_and_offers_real_sources() {
    let imds = |listen: &str, sources: &str| {
        format!("{GOOD}scopes = [\"https://graph.microsoft.com/.default\"]\n[imds]\nlisten = \"{listen}\"\n{sources}")
    };
    let offered = "sources = [\"api\"]\n";
    for listen in ["127.0.0.1:42357", "[::1]:42357", "169.254.169.254:80"] {
        let c = load_str(&imds(listen, offered), Path::new("t"), None).unwrap();
        let i = c.imds.unwrap();
        assert_eq!(i.listen.to_string(), listen);
        assert_eq!(i.sources, vec!["api".to_string()]);
    }
    let d = one(&imds("0.0.0.0:80", offered));
    assert_eq!((d.line, d.col), (8, 10));
    assert_eq!(d.message, "`listen` 0.0.0.0:80 is not a loopback address");
    assert!(d
        .hint
        .unwrap()
        .contains("169.254.169.254:80 with that address on lo"));
    let d = one(&imds("169.254.169.253:80", offered));
    assert!(d.message.contains("is not a loopback address"), "{d}");
    let d = one(&imds("127.0.0.1:1", "sources = [\"apii\"]\n"));
    assert_eq!(d.message, "[imds] names unknown source `apii`");
    assert_eq!(d.hint.as_deref(), Some("did you mean `api`?"));
    let d = one(&imds("127.0.0.1:1", ""));
    assert!(d.message.contains("[imds] has no `sources`"), "{d}");
    let d = one(&imds(
        "127.0.0.1:1",
        "sources = [\"api\"]\nheader = \"x\"\n",
    ));
    assert_eq!(
        d.to_string(),
        "t.toml:10:1: unknown key `header` — valid keys here: listen, sources"
    );
}

/// `sinks`: every rule with its place, like sshd's StrictModes for paths.
mod sinks {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn with_sinks(list: &str) -> String {
        format!("{GOOD}sinks = [{list}]\n")
    }

    fn dir(mode: u32) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        d
    }

    #[test]
    fn a_good_sink_gets_its_defaults_and_makes_the_source_eager() {
        let d = dir(0o755);
        let text = format!(
            "{GOOD}eager = false\nsinks = [{{ path = \"{}/t\" }}, {{ path = \"{}/j\", format = \"json\", mode = \"0640\", group = 0 }}]\n",
            d.path().display(),
            d.path().display()
        );
        let c = load_str(&text, Path::new("t.toml"), Some(0o600)).unwrap();
        let s = &c.sources["api"];
        assert!(s.eager, "a source with sinks fetches without being asked");
        let dir = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(
            s.sinks,
            [
                SinkConfig {
                    path: dir.join("t"),
                    format: SinkFormat::Raw,
                    mode: 0o600,
                    owner: None,
                    group: None,
                },
                SinkConfig {
                    path: dir.join("j"),
                    format: SinkFormat::Json,
                    mode: 0o640,
                    owner: None,
                    group: Some(0),
                },
            ]
        );
    }

    #[test]
    fn paths_must_be_absolute_in_an_existing_directory_and_not_a_link() {
        let e = one(&with_sinks("{ path = \"tokens/a\" }"));
        assert!(e.message.contains("not an absolute path"), "{e}");
        assert_eq!((e.line, e.col), (6, 19), "{e}");

        // A directory that does not exist yet is a warning, not an error.
        let c = load_str(
            &with_sinks("{ path = \"/nonexistent-tokend/a\" }"),
            Path::new("t"),
            Some(0o600),
        )
        .unwrap();
        let w = &c.warnings[0];
        assert!(w.message.contains("does not exist (yet)"), "{w}");
        assert!(
            w.hint
                .as_deref()
                .unwrap_or("")
                .contains("/run/tokend/sinks"),
            "{w}"
        );
        assert_eq!(
            c.sources["api"].sinks[0].path,
            Path::new("/nonexistent-tokend/a")
        );

        let d = dir(0o755);
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        let e = one(&with_sinks(&format!(
            "{{ path = \"{}/link\" }}",
            d.path().display()
        )));
        assert!(e.message.contains("is a symbolic link"), "{e}");

        std::fs::create_dir(d.path().join("sub")).unwrap();
        let e = one(&with_sinks(&format!(
            "{{ path = \"{}/sub\" }}",
            d.path().display()
        )));
        assert!(e.message.contains("not a regular file"), "{e}");
    }

    #[test]
    fn a_directory_others_can_write_is_refused_sticky_or_not() {
        for mode in [0o775, 0o757, 0o1777] {
            let d = dir(mode);
            let e = one(&with_sinks(&format!(
                "{{ path = \"{}/a\" }}",
                d.path().display()
            )));
            assert!(e.message.contains("can be written by"), "{mode:o}: {e}");
            assert!(
                e.hint.as_deref().unwrap_or("").contains("chmod go-w"),
                "{e}"
            );
        }
        let e = one(&with_sinks("{ path = \"/tmp/a\" }"));
        assert!(e.message.contains("can be written by"), "/tmp: {e}");
    }

    #[test]
    fn a_directory_inside_one_others_can_write_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // the parent below must belong to root or the daemon
        }
        let parent = dir(0o777);
        let inner = parent.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = one(&with_sinks(&format!(
            "{{ path = \"{}/a\" }}",
            inner.display()
        )));
        assert!(e.message.contains("lies in"), "{e}");
        // Sticky, like /tmp: others cannot move `inner` away.
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        load_str(
            &with_sinks(&format!("{{ path = \"{}/a\" }}", inner.display())),
            Path::new("t.toml"),
            Some(0o600),
        )
        .unwrap();
    }

    #[test]
    fn mode_format_owner_and_duplicates() {
        let d = dir(0o755);
        let p = d.path().display();
        let e = one(&with_sinks(&format!(
            "{{ path = \"{p}/a\", mode = \"0666\" }}"
        )));
        assert!(e.message.contains("lets others write"), "{e}");
        let e = one(&with_sinks(&format!(
            "{{ path = \"{p}/a\", mode = \"rw\" }}"
        )));
        assert!(e.message.contains("not an octal permission"), "{e}");
        let e = one(&with_sinks(&format!(
            "{{ path = \"{p}/a\", format = \"yaml\" }}"
        )));
        assert!(e.message.contains("unknown sink format"), "{e}");
        let e = one(&with_sinks(&format!(
            "{{ path = \"{p}/a\", owner = \"no-such-user-tokend\" }}"
        )));
        assert!(e.message.contains("unknown user"), "{e}");
        let e = one(&with_sinks(&format!(
            "{{ path = \"{p}/a\", mdoe = \"0600\" }}"
        )));
        assert!(e.message.contains("mdoe"), "{e}");
        assert!(e.hint.as_deref().unwrap_or("").contains("mode"), "{e}");

        let text = format!(
            "{}\n[sources.other]\ntoken_url = \"https://sso.example.com/token\"\nclient_id = \"o\"\nclient_secret = {{ file = \"/run/s\" }}\nsinks = [{{ path = \"{p}/a\" }}]\n",
            with_sinks(&format!("{{ path = \"{p}/a\" }}"))
        );
        let e = one(&text);
        assert!(
            e.message
                .contains("is also written by the sink at t.toml:6:"),
            "{e}"
        );
    }

    #[test]
    fn sinks_cannot_be_defaults() {
        let d = dir(0o755);
        let e = one(&format!(
            "[defaults]\nsinks = [{{ path = \"{}/a\" }}]\n{GOOD}",
            d.path().display()
        ));
        assert!(e.message.contains("cannot be set in [defaults]"), "{e}");
    }
}

/// A value is never repeated in a message: a secret whose quotes were
/// forgotten, or of the wrong type, must not reach the log or /readyz.
#[test]
fn no_message_quotes_the_value_written() {
    let base =
        "[sources.api]\ntoken_url = \"https://sso.example.com/token\"\nclient_id = \"api\"\n";
    for (line, secret) in [
        ("client_secret = Sup3rSecret\n", "Sup3rSecret"),
        (
            "client_secret = { file = /run/s3cr3t-path }\n",
            "s3cr3t-path",
        ),
        ("client_secret = \"x\"\nmin_ttl = 987654\n", "987654"),
        ("client_secret = \"x\"\neager = \"hunter2\"\n", "hunter2"),
    ] {
        let text = format!("{base}{line}");
        let all = match load_str(&text, Path::new("t.toml"), Some(0o600)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {text}"),
        };
        assert!(!all.contains(secret), "{all}");
        assert!(all.contains("t.toml:"), "the place is still given: {all}");
    }
}

/// URLs carry no credentials or fragment, and a printed one no query.
#[test]
fn urls_with_credentials_or_fragments_are_refused_without_printing_them() {
    for (url, why) in [
        (
            "https://user:pw-s3cret@sso.example.com/token",
            "user name or password",
        ),
        (
            "https://user@sso.example.com/token",
            "user name or password",
        ),
        ("https://sso.example.com/token#frag", "fragment"),
    ] {
        for key in ["token_url", "issuer"] {
            let text = format!(
                "[sources.api]\n{key} = \"{url}\"\nclient_id = \"api\"\nclient_secret = \"x\"\n"
            );
            let e = one(&text);
            assert!(e.message.contains(why), "{e}");
            assert!(!e.to_string().contains("pw-s3cret"), "{e}");
        }
    }
    let e = one(&GOOD.replace(
        "https://sso.example.com/token",
        "http://sso.example.com/token?api_key=k3y",
    ));
    assert!(e.message.contains("must use https"), "{e}");
    assert!(!e.to_string().contains("k3y"), "{e}");
    let probe = one(&format!(
        "{GOOD}probe_url = \"https://u:p@graph.example.com/x\"\n"
    ));
    assert!(
        probe.message.contains("`probe_url` carries a user name"),
        "{probe}"
    );
    let authority = one("[sources.api]\nprovider = \"azure\"\ntenant = \"contoso\"\nauthority = \"https://login.example.com/#x\"\nclient_id = \"api\"\nclient_secret = { file = \"/run/s\" }\n");
    assert!(
        authority.message.contains("`authority` has a fragment"),
        "{authority}"
    );
}

/// StrictModes for the config: anyone who could write the main file, the
/// include directory or an include file (after following links) could
/// define a source that sends a real secret to an endpoint of theirs.
#[test]
fn config_files_others_could_write_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let set_mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("tokend.toml");
    std::fs::write(&main, GOOD).unwrap();
    set_mode(&main, 0o600);
    assert!(load(&main).is_ok());
    set_mode(&main, 0o666);
    let e = load(&main).unwrap_err().to_string();
    assert!(
        e.contains("can be written by anyone (mode 0666)") && e.contains("chmod o-w"),
        "{e}"
    );
    set_mode(&main, 0o600);

    let inc = dir.path().join("sources.d");
    std::fs::create_dir(&inc).unwrap();
    set_mode(&inc, 0o755);
    let extra = inc.join("b.toml");
    std::fs::write(&extra, GOOD.replace("[sources.api]", "[sources.b]")).unwrap();
    set_mode(&extra, 0o666);
    let e = load(&main).unwrap_err().to_string();
    assert!(e.contains(&format!("{}:1:1", extra.display())), "{e}");
    set_mode(&extra, 0o644);
    assert_eq!(load(&main).unwrap().sources.len(), 2);
    set_mode(&inc, 0o1777);
    let e = load(&main).unwrap_err().to_string();
    assert!(
        e.contains("config directory") && e.contains("(mode 1777)"),
        "{e}"
    );
    set_mode(&inc, 0o755);

    if !nix::unistd::geteuid().is_root() {
        return; // giving files away needs root
    }
    // A link in sources.d to a file another user owns.
    let theirs = dir.path().join("theirs.toml");
    std::fs::write(&theirs, GOOD.replace("[sources.api]", "[sources.c]")).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    std::os::unix::fs::symlink(&theirs, inc.join("c.toml")).unwrap();
    let e = load(&main).unwrap_err().to_string();
    assert!(
        e.contains("belongs to uid 65534") && e.contains("chown root"),
        "{e}"
    );
    std::fs::remove_file(inc.join("c.toml")).unwrap();
    // Group-writable: only by root's group (or tokend's own).
    std::os::unix::fs::chown(&extra, None, Some(65534)).unwrap();
    set_mode(&extra, 0o664);
    let e = load(&main).unwrap_err().to_string();
    assert!(e.contains("written by group 65534"), "{e}");
    std::os::unix::fs::chown(&extra, None, Some(0)).unwrap();
    assert!(load(&main).is_ok());
}

/// Every diagnostic's line and column come from one index of the file:
/// right at the first and last line, after multi-byte characters, and for
/// thousands of warnings (each kept once).
#[test]
fn places_are_exact_across_a_large_file() {
    let mut text = String::from("# é ü\n");
    for i in 0..3000 {
        text.push_str(&format!(
            "[sources.s{i}]\ntoken_url = \"https://sso.example.com/t\"\nclient_id = \"c\"\nclient_secret = \"plain-{i}\"\n"
        ));
    }
    let c = load_str(&text, Path::new("big.toml"), Some(0o644)).unwrap();
    assert_eq!(c.warnings.len(), 3000);
    let first = &c.warnings[0];
    let last = c.warnings.last().unwrap();
    let (lines, col) = (|w: &Diagnostic| w.line, |w: &Diagnostic| w.col);
    let mut at: Vec<usize> = c.warnings.iter().map(lines).collect();
    at.sort();
    assert_eq!(at[0], 5, "{first}");
    assert_eq!(at[2999], 5 + 4 * 2999, "{last}");
    assert!(c.warnings.iter().all(|w| col(w) == 17), "{first}");
}

/// A large file is parsed in pieces on every core (see pieces.rs): what it
/// says of a problem is what it says for a small file, at the same place.
#[test]
fn a_large_file_reports_problems_as_a_small_one_does() {
    let source = |i: usize| {
        format!("[sources.s{i}]\ntoken_url = \"https://sso.example.com/t\"\nclient_id = \"c\"\nclient_secret = {{ file = \"/run/s\" }}\n")
    };
    let big: String = (0..3000).map(source).collect();
    assert_eq!(
        load_str(&big, Path::new("t.toml"), Some(0o600))
            .unwrap()
            .sources
            .len(),
        3000
    );
    // A typo far down; a source defined twice.
    let typo = big.replace("[sources.s2500]\ntoken_url", "[sources.s2500]\ntokn_url");
    let d = one(&typo);
    assert_eq!(
        (d.line, d.col, d.message.as_str()),
        (1 + 4 * 2500 + 1, 1, "unknown key `tokn_url`")
    );
    let small = problems(&format!("{}{}{}", source(0), source(1), source(0)));
    let twice = problems(&format!("{big}{}", source(10)));
    assert_eq!(twice.len(), small.len());
    for (t, s) in twice.iter().zip(&small) {
        assert_eq!(
            (t.line - 4 * 3000, t.col, &t.message),
            (s.line - 4 * 2, s.col, &s.message)
        );
    }
}

/// A value in the wrong key or of the wrong form is never repeated: it may
/// be a secret pasted into the wrong place. The position says where it is.
#[test]
fn no_key_with_a_closed_set_of_values_quotes_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        "[server]\nlog_format = \"Sup3rSecretValue\"\n",
        "[server]\nmetrics_listen = \"Sup3rSecretValue\"\n",
        "[server]\nsocket_mode = \"Sup3rSecretValue\"\n",
        "[managed_identity]\nlisten = \"Sup3rSecretValue\"\n",
        &format!("{GOOD}provider = \"Sup3rSecretValue\"\n"),
        &format!("{GOOD}auth_method = \"Sup3rSecretValue\"\n"),
        &format!("{GOOD}eager = \"Sup3rSecretValue\"\n"),
        &format!(
            "{GOOD}sinks = [{{ path = \"{}/x\", format = \"Sup3rSecretValue\" }}]\n",
            dir.path().display()
        ),
    ];
    for text in cases {
        let e = load_str(text, Path::new("t"), Some(0o600))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("Sup3rSecretValue"), "{text}: {e}");
        assert!(e.starts_with("t:"), "placed: {e}");
    }
    // An octal number above 0777 is named for what it is.
    let e = load_str(
        "[server]\nsocket_mode = \"1777\"\n",
        Path::new("t"),
        Some(0o600),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("is above 0777"), "{e}");
}

/// `metrics_listen` on every interface exports every source's name and
/// expiry to the network: a warning that says so, at the key.
#[test]
fn metrics_on_every_interface_is_a_warning() {
    for addr in ["0.0.0.0:9464", "[::]:9464"] {
        let c = load_str(
            &format!("[server]\nmetrics_listen = \"{addr}\"\n{GOOD}"),
            Path::new("t"),
            Some(0o600),
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = c.warnings[0].to_string();
        assert!(
            w.starts_with("t:2:")
                && w.contains("listens on every interface")
                && w.contains("127.0.0.1:9464"),
            "{w}"
        );
    }
    let c = load_str(
        &format!("[server]\nmetrics_listen = \"127.0.0.1:9464\"\n{GOOD}"),
        Path::new("t"),
        Some(0o600),
    )
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

/// `allow.units` takes whole service or scope names; anything else is an
/// error at the allow.
#[test]
fn allow_units_are_service_or_scope_names() {
    let c = load_str(
        &format!("{GOOD}allow = {{ units = [\"nightly.service\", \"session-1.scope\"] }}\n"),
        Path::new("t"),
        None,
    )
    .unwrap();
    let allow = c.sources["api"].allow.clone().unwrap();
    assert_eq!(
        allow.units,
        ["nightly.service".to_string(), "session-1.scope".to_string()].into()
    );
    let d = one(&format!("{GOOD}allow = {{ units = [\"nightly\"] }}\n"));
    assert_eq!(
        d.message,
        "`nightly` in allow's units is not a service or scope unit name"
    );
    assert!(d.hint.unwrap().contains("\"nightly.service\""));
}

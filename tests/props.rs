//! Property tests: the parsers that take untrusted input never panic.

use proptest::prelude::*;
use std::path::Path;
use tokend::config::load_str;
use tokend::oauth::response::{parse_error, parse_token};

/// Text that looks enough like tokend TOML to reach the validator.
fn tomlish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "token_url",
        "client_id",
        "client_secret",
        "scopes",
        "params",
        "min_ttl",
        "refresh_ratio",
        "provider",
        "tenant",
        "allow",
        "eager",
        "credential_expires",
        "socket_mode",
        "include_dir",
        "bogus",
    ]);
    let value = prop::sample::select(vec![
        "\"https://x/t\"",
        "\"http://10.0.0.1/t\"",
        "\"azure\"",
        "\"common\"",
        "1.5",
        "0.7",
        "-3",
        "true",
        "[\"a\", \"b/.default\"]",
        "{ file = \"/x\" }",
        "{ env = \"E\", file = \"/y\" }",
        "2027-05-01",
        "\"5 parsecs\"",
        "{ users = [\"root\"] }",
        "\"\"",
        "[]",
        "{}",
    ]);
    let line = (key, value).prop_map(|(k, v)| format!("{k} = {v}\n"));
    let header = prop::sample::select(vec![
        "[sources.a]\n",
        "[sources.B]\n",
        "[server]\n",
        "[defaults]\n",
        "[sources]\n",
        "[[sources]]\n",
        "",
    ]);
    prop::collection::vec((header, line, "[ -~\n]{0,8}"), 0..12).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(h, l, noise)| format!("{h}{l}{noise}"))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn config_parser_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        let _ = load_str(&text, Path::new("/nonexistent/fuzz.toml"), Some(0o600));
    }

    #[test]
    fn config_validator_never_panics_on_tomlish_text(text in tomlish()) {
        let _ = load_str(&text, Path::new("/nonexistent/fuzz.toml"), Some(0o644));
    }

    #[test]
    fn token_response_parser_never_panics(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_token(&body);
    }

    #[test]
    fn token_response_parser_never_panics_on_jsonish_bodies(
        at in "[\"a-z_]{0,20}", ei in "(-?[0-9]{1,25}(\\.[0-9]{0,5})?|\"[0-9a-z ]{0,12}\"|null|true|\\[\\]|\\{\\})",
    ) {
        let body = format!("{{\"access_token\":{at:?},\"expires_in\":{ei},\"refresh_in\":{ei},\"scope\":{ei}}}");
        let _ = parse_token(body.as_bytes());
    }

    #[test]
    fn error_parser_never_panics(status in any::<u16>(), body in prop::collection::vec(any::<u8>(), 0..600)) {
        let e = parse_error(status, &body);
        let _ = (e.code(), e.message(), e.hint(), e.is_permanent());
    }

    #[test]
    fn error_parser_never_panics_on_entra_shaped_bodies(
        error in "\\PC{0,30}", desc in "(AADSTS[0-9]{0,9}: )?\\PC{0,200}", codes in prop::collection::vec(any::<i64>(), 0..4),
    ) {
        let body = serde_json::json!({"error": error, "error_description": desc, "error_codes": codes, "trace_id": "t"});
        let e = parse_error(400, body.to_string().as_bytes());
        let _ = (e.code(), e.message(), e.hint());
    }
}

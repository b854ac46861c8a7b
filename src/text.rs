//! Text from outside (an identity provider, a request path, a file name)
//! made safe for a terminal or a log line, and URLs made safe to print.

/// Characters that move the cursor, start a line, or reorder or hide text
/// on a terminal or in a log viewer: control characters (C0, DEL, C1),
/// and the Unicode format and separator characters abused the same way
/// (bidirectional overrides and isolates such as U+202E, zero-width ones,
/// U+2028 and U+2029, the BOM, tags).
pub fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}')
}

/// The most characters of one field of outside text that is printed or
/// logged (an IdP's error description, a status message).
pub const MAX_FIELD: usize = 1000;

/// At most `max` characters, every [`hidden`] one replaced by a space, so
/// a hostile text (an IdP's error, a token's claim) cannot flood, forge or
/// disguise a log line or a terminal's output.
pub fn clip(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if hidden(c) { ' ' } else { c })
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// A path as it may be printed: every [`hidden`] character escaped
/// (`\n` as `\u{a}`), so a file name cannot start a log line of its own.
pub fn path(p: &std::path::Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if hidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A URL as it may be printed: no user name, password, query or fragment
/// (a query often carries an API key; `?…` says one was there).
pub fn url(u: &url::Url) -> String {
    let mut shown = u.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    let mut out = clip(shown.as_str(), 500);
    if u.query().is_some() {
        out.push_str("?…");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_characters_are_neutralised_too() {
        assert_eq!(
            clip("a\u{202E}b\u{2028}c\u{200B}d\u{1b}[2J", 50),
            "a b c d [2J"
        );
        assert_eq!(
            path(std::path::Path::new("/etc/x\nINFO forged\u{202E}")),
            "/etc/x\\u{a}INFO forged\\u{202e}"
        );
    }

    #[test]
    fn a_printed_url_keeps_no_credential_or_query() {
        let u = url::Url::parse("http://user:pw@127.0.0.1:8080/t?api_key=k3y#frag").unwrap();
        assert_eq!(url(&u), "http://127.0.0.1:8080/t?…");
        let plain = url::Url::parse("https://sso.example.com/realms/main/token").unwrap();
        assert_eq!(url(&plain), "https://sso.example.com/realms/main/token");
    }

    #[test]
    fn clip_strips_control_characters() {
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdef", 3), "abc…");
    }
}

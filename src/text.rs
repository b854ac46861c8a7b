//! Text from outside (an identity provider, a request path, a file name)
//! made safe for a terminal or a log line, and URLs made safe to print.

/// At most `max` characters, control characters replaced, so a hostile body
/// cannot flood or forge log lines.
pub fn clip(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() > max {
        out.push('…');
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

//! Text from outside (an identity provider, a request path, a file name)
//! made safe for a terminal or a log line.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_strips_control_characters() {
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdef", 3), "abc…");
    }
}

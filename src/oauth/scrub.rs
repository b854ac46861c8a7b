//! Finding what was sent in what came back (docs/security.md, "Secrets
//! never leave"): an identity provider that echoes its request must not
//! put a secret into a log line, a status answer or an error message, in
//! any form an echo could take.
//!
//! The text is looked at as a reader would see it, and as it decodes:
//! control characters as the spaces the log shows (so a secret split by a
//! newline is found whole), `%XX` in either case and `+` as a space,
//! HTML character references, and runs of base64 (standard or URL-safe)
//! or hex, decoded. Any run of [`RUN`] or more consecutive characters of a
//! secret (the whole secret if it is shorter) found in any of those views
//! is cut out of the original text.

use base64::Engine;
use std::collections::HashSet;
use std::hash::BuildHasher;
use zeroize::Zeroizing;

/// The shortest run of a secret's characters that is cut out.
pub const RUN: usize = 12;

/// Secrets shorter than this are not looked for (they would match words).
const SHORTEST: usize = 4;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// The secrets one request sent, ready to be looked for.
pub struct Scrubber {
    sought: Vec<Sought>,
    hasher: std::hash::RandomState,
}

/// One secret: its characters, the run length looked for, and the hashes
/// of every run of that length (so a view is searched in one pass, and no
/// copy of a run of the secret is kept outside the wiped buffer).
struct Sought {
    chars: Zeroizing<Vec<char>>,
    run: usize,
    runs: HashSet<u64>,
}

/// A character of a view and the byte span of the original text it came
/// from.
type Mapped = (char, usize, usize);

impl Scrubber {
    pub fn new(secrets: &[&str]) -> Scrubber {
        let hasher = std::hash::RandomState::new();
        let sought = secrets
            .iter()
            .map(|s| Zeroizing::new(s.chars().collect::<Vec<char>>()))
            .filter(|c| c.len() >= SHORTEST)
            .map(|chars| {
                let run = chars.len().min(RUN);
                let runs = chars.windows(run).map(|w| hasher.hash_one(w)).collect();
                Sought { chars, run, runs }
            })
            .collect();
        Scrubber { sought, hasher }
    }

    /// `text` with every span that shows a secret, in any view, replaced by
    /// [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        if self.sought.is_empty() {
            return text.to_string();
        }
        let mut cut: Vec<(usize, usize)> = Vec::new();
        for plus_is_space in [false, true] {
            for decode in [false, true] {
                if plus_is_space && !decode {
                    continue;
                }
                let view = view(text, 0, decode, plus_is_space);
                cut.extend(self.found(&view));
            }
        }
        for (start, end) in encoded_runs(text) {
            if decoded_forms(&text[start..end]).any(|d| {
                let d = Zeroizing::new(d);
                let shown = String::from_utf8_lossy(&d);
                [false, true]
                    .into_iter()
                    .any(|p| !self.found(&view(&shown, 0, true, p)).is_empty())
            }) {
                cut.push((start, end));
            }
        }
        splice(text, cut)
    }

    /// The original spans in which `view` shows a run of a secret.
    fn found(&self, view: &[Mapped]) -> Vec<(usize, usize)> {
        let chars: Vec<char> = view.iter().map(|m| m.0).collect();
        let mut spans = Vec::new();
        for s in &self.sought {
            for (i, w) in chars.windows(s.run).enumerate() {
                if s.runs.contains(&self.hasher.hash_one(w))
                    && s.chars.windows(s.run).any(|r| r == w)
                {
                    spans.push((view[i].1, view[i + s.run - 1].2));
                }
            }
        }
        spans
    }
}

/// `text` as a reader sees it (control and other hidden characters as
/// spaces), optionally with `%XX` (ASCII) and HTML character references
/// decoded and `+` as a space; each character with its span in `text`,
/// offset by `base`.
fn view(text: &str, base: usize, decode: bool, plus_is_space: bool) -> Vec<Mapped> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.char_indices().peekable();
    while let Some((i, c)) = rest.next() {
        let (c, len) = match c {
            '%' if decode => match percent(&text[i..]) {
                Some(d) => (d, 3),
                None => (c, 1),
            },
            '&' if decode => match reference(&text[i..]) {
                Some((d, len)) => (d, len),
                None => (c, 1),
            },
            '+' if plus_is_space => (' ', 1),
            c if crate::text::hidden(c) => (' ', c.len_utf8()),
            c => (c, c.len_utf8()),
        };
        out.push((c, base + i, base + i + len));
        // Skip what the decoded character consumed beyond its first one.
        while rest.peek().is_some_and(|(j, _)| *j < i + len) {
            rest.next();
        }
    }
    out
}

/// `%XX` (either case) for an ASCII character.
fn percent(s: &str) -> Option<char> {
    let hex = s.get(1..3)?;
    let b = u8::from_str_radix(hex, 16).ok()?;
    b.is_ascii().then_some(b as char)
}

/// An HTML character reference at the start of `s`: the character and the
/// reference's length.
fn reference(s: &str) -> Option<(char, usize)> {
    let end = s.bytes().take(12).position(|b| b == b';')?;
    let name = &s[1..end];
    let c = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "quot" => '"',
        "apos" => '\'',
        "sol" => '/',
        "colon" => ':',
        "plus" => '+',
        "percnt" => '%',
        "bsol" => '\\',
        "nbsp" => ' ',
        _ => {
            let n = name.strip_prefix('#')?;
            let code = match n.strip_prefix(['x', 'X']) {
                Some(h) => u32::from_str_radix(h, 16).ok()?,
                None => n.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((c, end + 1))
}

/// Byte spans of runs that may be base64 or hex of something: at least 16
/// characters of the base64 alphabets (which hex is part of).
fn encoded_runs(text: &str) -> Vec<(usize, usize)> {
    let is = |b: u8| b.is_ascii_alphanumeric() || b"+/=-_".contains(&b);
    let bytes = text.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is(bytes[i]) {
            i += 1;
        }
        if i - start >= 16 {
            runs.push((start, i));
        }
    }
    runs
}

/// What a run decodes to, as base64 (standard, URL-safe, padded or not)
/// and as hex (from either of its first two characters).
fn decoded_forms(run: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
    let any_padding = general_purpose::GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, any_padding);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, any_padding);
    let b64 = [standard, url_safe]
        .into_iter()
        .filter_map(move |e| e.decode(run.trim_end_matches('=')).ok());
    let hex = (0..2).filter_map(move |skip| {
        let h = run.get(skip..)?;
        let h = &h[..h.len() - h.len() % 2];
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()
    });
    b64.chain(hex)
}

/// `text` with the byte spans `cut` (overlapping or not) each replaced by
/// [`REDACTED`].
fn splice(text: &str, mut cut: Vec<(usize, usize)>) -> String {
    cut.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (start, end) in cut {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in merged {
        out.push_str(&text[at..start]);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Sup3r Secret+/:&<>\"%\\x-val";

    fn scrubbed(echo: &str) -> String {
        Scrubber::new(&[SECRET]).scrub(echo)
    }

    /// Every form of the echo: none leaves a run of the secret.
    #[test]
    fn every_form_an_echo_takes_is_cut() {
        let percent: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
        let percent20 = percent.replace('+', "%20");
        let lower = percent.to_lowercase();
        let html = SECRET
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;");
        let numeric: String = SECRET.chars().map(|c| format!("&#{};", c as u32)).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("my-client:{percent}"));
        let hex: String = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
        let split = SECRET.replacen(' ', "\n", 1);
        let half = &SECRET[..SECRET.len() / 2];
        for form in [
            SECRET,
            &percent,
            &percent20,
            &lower,
            &html,
            &numeric,
            &b64,
            &b64url,
            &basic,
            &hex,
            &hex.to_uppercase(),
            &split,
            half,
        ] {
            let out = scrubbed(&format!("invalid secret: {form} (try again)"));
            assert!(
                out.contains(REDACTED)
                    && out.starts_with("invalid secret: ")
                    && out.ends_with(" (try again)"),
                "{form:?} gave {out:?}"
            );
            let shown = crate::text::clip(&out, 1000);
            for w in SECRET.as_bytes().windows(RUN) {
                assert!(
                    !shown.as_bytes().windows(RUN).any(|x| x == w),
                    "{form:?} left a run in {shown:?}"
                );
            }
        }
    }

    #[test]
    fn ordinary_text_and_short_runs_stay() {
        let s = Scrubber::new(&[SECRET]);
        let text = "invalid_client: AADSTS7000215 Secret expired (Sup3r Sec)";
        assert_eq!(s.scrub(text), text);
        // A secret too short to look for is not looked for.
        assert_eq!(Scrubber::new(&["abc"]).scrub("abc abc"), "abc abc");
        assert_eq!(Scrubber::new(&["abcd"]).scrub("x abcd y"), "x [REDACTED] y");
    }

    #[test]
    fn overlapping_finds_are_one_cut() {
        let s = Scrubber::new(&["0123456789abcdef", "89abcdefghijklmn"]);
        assert_eq!(s.scrub("<0123456789abcdefghijklmn>"), "<[REDACTED]>");
        assert_eq!(s.scrub("0123456789abcdef!"), "[REDACTED]!");
    }
}

//! Parsing a large file on every core.
//!
//! The TOML parser's cost grows with the file, and its token lists for a
//! whole large file cost as much again in page faults (figures in
//! docs/performance.md, "Start-up with many sources"). Such a file is cut at `[sources.NAME]` header lines into pieces of about
//! [`PIECE`] bytes, parsed at once on as many threads as there are cores,
//! each piece's sources deserialized where it was parsed.
//!
//! A cut must not change what the file means. The pieces are used only
//! when all of these hold, and otherwise the file is parsed whole, so an
//! error in it reads the same however it would have been cut:
//!
//! - Every piece parses. A header line inside a multi-line string, array
//!   or inline table leaves the piece before it unterminated, so a clean
//!   parse of every piece means each cut falls between two top-level lines.
//! - No header line that does not start `[sources.` or `[[sources.` says
//!   `sources` or holds a `\` (an escaped key): only `[sources.NAME…]`
//!   tables define anything in `sources`.
//! - The part before the first cut defines nothing in `sources` (a root
//!   `sources = {…}` or `sources.x.y = …` would be sealed or dotted there).
//! - No source and no other top-level key is in two pieces.
//!
//! Under those the pieces define disjoint key paths, and the whole file
//! parses to their union.

use super::diag::{self, Pending};
use super::raw::RawSource;
use std::ops::Range;
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

/// About how much text one thread parses at a time. Small enough that the
/// parser's scratch memory is reused rather than grown, large enough that
/// handing out pieces costs nothing.
pub(super) const PIECE: usize = 64 * 1024;

/// One `[sources.NAME]` table as written: its name, the name's span, and
/// the table deserialized (or why it could not be).
pub(super) struct FoundSource {
    pub name: String,
    pub span: Range<usize>,
    pub raw: Result<Box<RawSource>, Pending>,
}

/// What a file (or one piece of it) holds at the top level.
#[derive(Default)]
pub(super) struct Piece<'t> {
    pub sources: Vec<FoundSource>,
    /// Set when `sources` is there but is not a table: where it is.
    pub sources_not_table: Option<Range<usize>>,
    has_sources: bool,
    /// Every other top-level key, parsed but not yet deserialized.
    pub others: Vec<(Spanned<DeString<'t>>, Spanned<DeValue<'t>>)>,
}

impl<'t> Piece<'t> {
    fn of(doc: DeTable<'t>) -> Piece<'t> {
        let mut piece = Piece::default();
        for (key, value) in doc {
            if key.get_ref() != "sources" {
                piece.others.push((key, value));
                continue;
            }
            piece.has_sources = true;
            let span = value.span();
            match value.into_inner() {
                DeValue::Table(t) => {
                    piece
                        .sources
                        .extend(t.into_iter().map(|(name, v)| FoundSource {
                            span: name.span(),
                            name: name.into_inner().into_owned(),
                            raw: diag::deserialize(v).map(Box::new),
                        }));
                }
                _ => piece.sources_not_table = Some(span),
            }
        }
        piece
    }
}

/// Parses `text`: in pieces of about `piece` bytes on every core when that
/// means the same (see the module's text), else whole. The parser's errors
/// if it has any.
pub(super) fn parse(text: &str, piece: usize) -> Result<Vec<Piece<'_>>, Vec<toml::de::Error>> {
    if let Some(pieces) = cuts(text, piece).and_then(|c| in_pieces(text, &c)) {
        return Ok(pieces);
    }
    let (doc, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        Ok(vec![Piece::of(doc.into_inner())])
    } else {
        Err(errors)
    }
}

/// Where `text` may be cut: its start, the first `[sources.NAME]` header
/// line, each later one at least `piece` bytes past the last cut, and its
/// end. `None` when a header line could define `sources` some other way,
/// or when there would be only one piece of sources.
fn cuts(text: &str, piece: usize) -> Option<Vec<usize>> {
    let mut cuts = vec![0];
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let line = line.trim_start_matches([' ', '\t']);
        if !line.starts_with('[') {
            continue;
        }
        if is_source_header(line) {
            if cuts.len() == 1 || start - cuts[cuts.len() - 1] >= piece {
                cuts.push(start);
            }
        } else if !(line.starts_with("[sources.") || line.starts_with("[[sources."))
            && (line.contains("sources") || line.contains('\\'))
        {
            return None;
        }
    }
    cuts.push(text.len());
    // The part before the first source, and at least two pieces of sources.
    (cuts.len() > 3).then_some(cuts)
}

/// A `[sources.NAME]` line with a bare NAME.
fn is_source_header(line: &str) -> bool {
    line.strip_prefix("[sources.").is_some_and(|rest| {
        let name = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                .len();
        name > 0 && rest[name..].starts_with(']')
    })
}

/// The pieces between consecutive `cuts`, parsed on every core, or `None`
/// if they must not be used (see the module's text).
fn in_pieces<'t>(text: &'t str, cuts: &[usize]) -> Option<Vec<Piece<'t>>> {
    let ranges: Vec<Range<usize>> = cuts.windows(2).map(|w| w[0]..w[1]).collect();
    let pieces: Vec<Piece<'t>> = crate::cores::map(ranges, |range| {
        DeTable::parse(&text[range.clone()])
            .ok()
            .map(|doc| Piece::of(shift_table(doc.into_inner(), range.start)))
    })
    .into_iter()
    .collect::<Option<_>>()?;
    disjoint(&pieces).then_some(pieces)
}

/// Whether the pieces define disjoint key paths: nothing in `sources`
/// before the first cut, and no source or other top-level key twice.
fn disjoint(pieces: &[Piece<'_>]) -> bool {
    if pieces.first().is_some_and(|p| p.has_sources) {
        return false;
    }
    let mut names = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    pieces.iter().all(|p| {
        p.sources.iter().all(|s| names.insert(s.name.as_str()))
            && p.others
                .iter()
                .all(|(k, _)| keys.insert(k.get_ref().as_ref()))
    })
}

/// `t` with every span moved `by` bytes on: a piece's spans are relative to
/// its start, a diagnostic's to the file's.
fn shift_table(t: DeTable<'_>, by: usize) -> DeTable<'_> {
    if by == 0 {
        return t;
    }
    t.into_iter()
        .map(|(k, mut v)| {
            shift(&mut v, by);
            (moved(k, by), v)
        })
        .collect()
}

fn shift(v: &mut Spanned<DeValue<'_>>, by: usize) {
    let inner = std::mem::replace(v.get_mut(), DeValue::Boolean(false));
    let inner = match inner {
        DeValue::Table(t) => DeValue::Table(shift_table(t, by)),
        DeValue::Array(mut a) => {
            for e in a.iter_mut() {
                shift(e, by);
            }
            DeValue::Array(a)
        }
        other => other,
    };
    *v = moved(Spanned::new(v.span(), inner), by);
}

fn moved<T>(v: Spanned<T>, by: usize) -> Spanned<T> {
    let span = v.span();
    Spanned::new(span.start + by..span.end + by, v.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything a parse found, in order: sources by name, other keys by
    /// key, each with its span; or the errors with theirs.
    fn found(text: &str, piece: usize) -> String {
        match parse(text, piece) {
            Err(errors) => errors
                .iter()
                .map(|e| format!("error {:?} {}\n", e.span(), e.message()))
                .collect(),
            Ok(pieces) => {
                let mut lines: Vec<String> = pieces
                    .into_iter()
                    .flat_map(|p| {
                        let sources = p
                            .sources
                            .into_iter()
                            .map(|s| format!("source {} {:?} {:?}", s.name, s.span, s.raw));
                        let others = p
                            .others
                            .into_iter()
                            .map(|(k, v)| format!("key {} {:?} {:?}", k.get_ref(), k.span(), v));
                        let not_table = p
                            .sources_not_table
                            .map(|s| format!("sources not a table {s:?}"));
                        sources.chain(others).chain(not_table).collect::<Vec<_>>()
                    })
                    .collect();
                lines.sort();
                lines.join("\n")
            }
        }
    }

    fn cut(text: &str) -> bool {
        cuts(text, 1).and_then(|c| in_pieces(text, &c)).is_some()
    }

    const PREAMBLE: &str =
        "# tokend\n[server]\nsocket = \"/run/t.sock\"\n\n[defaults]\nclient_id = \"app\"\n\n";

    /// Cut at every source, the file reads exactly as it does whole: the
    /// same sources and keys at the same byte positions.
    #[test]
    fn pieces_read_as_the_whole_file() {
        let text = format!(
            "{PREAMBLE}[sources.a]\ntoken_url = \"https://sso.example.com/t\"\nscopes = [\n  \"x\",\n  \"y\",\n]\n\
             [sources.a.params]\nresource = \"r\"\n\n  [sources.b]  # indented, with a comment\r\n\
             client_secret = {{ file = \"/run/b\" }}\r\nnote = '''\n[server]\n'''\n\
             [[sources.b.sinks]]\npath = \"/run/b.jwt\"\n\
             [sources.c]\nclient_id = \"é\"\n\
             [managed_identity]\nlisten = \"127.0.0.1:50342\"\n"
        );
        assert!(cut(&text));
        let whole = found(&text, usize::MAX);
        assert_eq!(found(&text, 1), whole);
        assert!(whole.contains("source b"), "{whole}");
        assert!(whole.contains("unknown key `note`"), "{whole}");
        assert!(whole.contains("key managed_identity"), "{whole}");
    }

    /// Where a cut could change what the file means, it is parsed whole:
    /// the same result, errors included.
    #[test]
    fn a_file_that_cannot_be_cut_is_parsed_whole() {
        let a = "[sources.a]\nclient_id = \"a\"\n";
        let b = "[sources.b]\nclient_id = \"b\"\n";
        for text in [
            // Defined twice: an error, whole.
            format!("{a}{b}{a}"),
            format!("[server]\n{a}{b}[server]\n"),
            // `sources` defined by other means than [sources.NAME].
            format!("{a}{b}[sources]\n"),
            format!("sources = {{ z = {{}} }}\n{a}{b}"),
            format!("sources.z.client_id = \"z\"\n{a}{b}"),
            format!("{a}[ sources.c ]\n{b}"),
            format!("{a}[\"sources\".c]\n{b}"),
            format!("{a}[\"sour\\u0063es\".c]\n{b}"),
            format!("{a}{b}[[sources]]\n"),
            // A source's tables in two pieces: fine whole, so whole.
            format!("{a}{b}[sources.a.params]\nx = \"y\"\n"),
            // Header lines inside a value.
            format!("{a}x = \"\"\"\n{b}\"\"\"\n{b}"),
            format!("{a}x = [\n{b}]\n{b}"),
        ] {
            assert!(!cut(&text), "{text}");
            assert_eq!(found(&text, 1), found(&text, usize::MAX), "{text}");
        }
    }

    #[test]
    fn a_small_file_is_one_piece() {
        let text = format!("{PREAMBLE}[sources.a]\n[sources.b]\n");
        assert!(cuts(&text, PIECE).is_none());
        assert!(cuts(&text, 1).is_some());
    }
}

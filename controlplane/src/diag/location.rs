//! Where a key path is in the text: spans, lines and columns.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// 1-based line and column (in characters) of byte `offset` in `text`; an offset past the end or
/// inside a character is clamped to the nearest character start before it.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    LineCursor::new(text).advance_to(offset)
}

/// Places offsets of one text in order, each scanning only the text since the previous one, so
/// placing every problem of a report reads the text once (a lookup from the start per problem made
/// 200k problems take minutes).
pub(crate) struct LineCursor<'a> {
    text: &'a str,
    /// Where the scan stands: a character boundary, on `line` at `column`.
    offset: usize,
    line: usize,
    column: usize,
    /// Bytes read in all, restarts included.
    scanned: usize,
}

impl<'a> LineCursor<'a> {
    /// A cursor at the start of `text`.
    pub(crate) fn new(text: &'a str) -> LineCursor<'a> {
        LineCursor {
            text,
            offset: 0,
            line: 1,
            column: 1,
            scanned: 0,
        }
    }

    /// Line and column of `offset` (clamped as [`line_column`] does). An offset before the last
    /// one starts over from the top.
    pub(crate) fn advance_to(&mut self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        if offset < self.offset {
            *self = LineCursor {
                scanned: self.scanned,
                ..LineCursor::new(self.text)
            };
        }
        let between = &self.text[self.offset..offset];
        match between.rfind('\n') {
            Some(last) => {
                self.line += between.matches('\n').count();
                self.column = between[last + 1..].chars().count() + 1;
            }
            None => self.column += between.chars().count(),
        }
        self.scanned += between.len();
        self.offset = offset;
        (self.line, self.column)
    }

    /// Bytes scanned so far (tests check that placing is linear).
    #[cfg(test)]
    fn scanned(&self) -> usize {
        self.scanned
    }
}

/// The parsed document as one spanned value, the shape both locating and deserializing take.
pub(crate) fn spanned_root(doc: Spanned<DeTable<'_>>) -> Spanned<DeValue<'_>> {
    let span = doc.span();
    Spanned::new(span, DeValue::Table(doc.into_inner()))
}

/// One step of a config path.
#[derive(Debug, PartialEq, Eq)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `services[0].pools[1].addr` into keys and indices; a malformed step ends the path.
fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let Some((n, after)) = r.split_once(']') else {
                return out;
            };
            let Ok(n) = n.parse() else {
                return out;
            };
            out.push(Seg::Index(n));
            rest = after;
        }
    }
    out
}

/// The span of the value at `path` in `text`, or of its nearest existing ancestor (a table header
/// for a missing key; the start of the file for a missing top-level table). `None` when the text
/// is not TOML.
#[cfg(test)]
fn locate(text: &str, path: &str) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    Some(locate_in(&spanned_root(doc), path))
}

/// [`locate`] in a document already parsed.
pub(super) fn locate_in(root: &Spanned<DeValue<'_>>, path: &str) -> Range<usize> {
    let mut cur = root;
    for seg in segments(path) {
        let next = match (seg, cur.get_ref()) {
            (Seg::Key(k), DeValue::Table(t)) => t.get(k),
            (Seg::Index(i), DeValue::Array(a)) => a.get(i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    cur.span()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_keys_and_indices() {
        assert_eq!(
            segments("services[0].pools[12].backends[2].addr"),
            vec![
                Seg::Key("services"),
                Seg::Index(0),
                Seg::Key("pools"),
                Seg::Index(12),
                Seg::Key("backends"),
                Seg::Index(2),
                Seg::Key("addr")
            ]
        );
        assert_eq!(segments(""), vec![]);
        assert_eq!(segments("a[x].b"), vec![Seg::Key("a")]);
    }

    #[test]
    fn a_path_resolves_to_its_value_or_nearest_ancestor() {
        let text = "[dataplane]\nmtu = 1\n[[services]]\nname = \"a\"\n[[services]]\nname = \"b\"\n\
                    [[services.pools]]\nbackends = [{ addr = \"x\" }]\n";
        let at = |p: &str| {
            let s = locate(text, p).unwrap();
            (line_column(text, s.start), &text[s])
        };
        assert_eq!(at("dataplane.mtu"), ((2, 7), "1"));
        // A missing key: its table's header.
        assert_eq!(at("dataplane.workers"), ((1, 1), "[dataplane]"));
        assert_eq!(at("services[1].name"), ((6, 8), "\"b\""));
        assert_eq!(
            at("services[1].pools[0].backends[0].addr"),
            ((8, 22), "\"x\"")
        );
        assert_eq!(
            at("services[1].pools[0].snat"),
            ((7, 1), "[[services.pools]]")
        );
        // Missing top-level table: the start of the file.
        assert_eq!(locate(text, "admin.listen"), Some(0..0));
        assert_eq!(locate("[x", "a"), None);
    }

    #[test]
    fn line_column_counts_characters_from_one() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 3), (2, 1));
        assert_eq!(line_column(t, 5), (2, 3));
        // "é" is two bytes: the next character is column 4, not 5.
        assert_eq!(line_column(t, 7), (2, 4));
        assert_eq!(line_column(t, 8), (3, 1));
        assert_eq!(line_column(t, 99), (3, 2));
        // Inside the two bytes of "é": clamped to its start.
        assert_eq!(line_column(t, 6), (2, 3));
    }

    #[test]
    fn a_cursor_places_offsets_in_order_reading_the_text_once() {
        let t = "ab\ncdé\nf";
        let mut c = LineCursor::new(t);
        for offset in [0, 3, 5, 6, 7, 8, 99] {
            assert_eq!(
                c.advance_to(offset),
                line_column(t, offset),
                "offset {offset}"
            );
        }
        // Backwards starts over, still right.
        assert_eq!(c.advance_to(3), (2, 1));

        // 50k places in a 50k-line text: one pass, not one per place.
        let text = "k = 1\n".repeat(50_000);
        let mut c = LineCursor::new(&text);
        for line in 0..50_000 {
            assert_eq!(c.advance_to(line * 6 + 4), (line + 1, 5));
        }
        assert!(c.scanned() <= text.len(), "{} bytes scanned", c.scanned());
    }
}

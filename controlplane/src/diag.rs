//! Config problems placed in lb.toml: `file:line:column`, a source snippet and a hint.
//!
//! Rules that [`crate::compile()`] and [`Config::validate`] check report a [`Problem`] whose `path`
//! names the offending key (`services[0].pools[1].backends[2].addr`). This module parses the text a
//! second time into toml's spanned document and resolves each path to the nearest existing span (a
//! missing key points at its table header), so the serde types stay free of spans.
//!
//! Syntax and schema errors (unknown key, wrong type, bad value) come from serde, which stops at the
//! first error; [`parse_checked`] deserializes each section (every `[[services]]`, pool and backend
//! on its own) to report one error per section instead of one per file.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::compile::{CompileError, Compiled};
use crate::config::{self, Config};

/// One problem in a config, placed by its path in the document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: a key path like `services[0].pools[1].backends[2].addr`; `""` is the whole file.
    pub path: String,
    /// What is wrong, naming the service, pool or backend at fault.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

impl Problem {
    /// A problem at `path` with no hint.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
            hint: None,
        }
    }

    /// The same problem with a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Problem {
        self.hint = Some(hint.into());
        self
    }

    /// What is wrong (without the place or hint).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// A problem placed in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the text it points at; `None` when there is no text (the file could not be
    /// read) or no place.
    pub span: Option<Range<usize>>,
    /// Line, from 1 (0 without a span).
    pub line: usize,
    /// Column in characters, from 1 (0 without a span).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// Every problem found in one config file, in file order. `Display` gives one line per problem,
/// `file:line:column: message (hint: ...)`, for logs and the admin API; [`ConfigReport::render`]
/// adds the source lines for a terminal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigReport {
    /// The file, as named in every line.
    pub path: PathBuf,
    /// Its text (empty when it could not be read).
    pub text: String,
    /// The problems, sorted by place.
    pub diagnostics: Vec<Diagnostic>,
}

impl std::error::Error for ConfigReport {}

impl ConfigReport {
    /// A report of no problems yet for `path` with contents `text`.
    fn empty(path: &Path, text: &str) -> ConfigReport {
        ConfigReport {
            path: path.to_path_buf(),
            text: text.to_string(),
            diagnostics: Vec::new(),
        }
    }

    /// Adds a problem at a byte span.
    fn push_span(&mut self, span: Option<Range<usize>>, message: String, hint: Option<String>) {
        let (line, column) = match &span {
            Some(s) => config::line_column(&self.text, s.start),
            None => (0, 0),
        };
        self.diagnostics.push(Diagnostic {
            span,
            line,
            column,
            message,
            hint,
        });
    }

    /// Problems found by `validate()` or `compile()` in `text`, each resolved to its place.
    pub fn from_problems(path: &Path, text: &str, problems: &[Problem]) -> ConfigReport {
        let mut report = ConfigReport::empty(path, text);
        let doc = DeTable::parse(text).ok().map(root_value);
        for p in problems {
            let span = doc.as_ref().map(|root| locate_in(root, &p.path));
            report.push_span(span, p.message.clone(), p.hint.clone());
        }
        report.sort();
        report
    }

    /// [`ConfigReport::from_problems`] for a failed compile.
    pub fn from_compile(path: &Path, text: &str, err: &CompileError) -> ConfigReport {
        ConfigReport::from_problems(path, text, &err.problems)
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.diagnostics.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// File order; problems without a place last, in the order found.
    fn sort(&mut self) {
        self.diagnostics
            .sort_by_key(|d| d.span.as_ref().map_or(usize::MAX, |s| s.start));
    }

    /// The report for a terminal: per problem `file:line:column: error: message`, the source line
    /// with the offending key or value underlined and a `hint:` line; then `N error(s)`.
    pub fn render(&self) -> String {
        let renderer = Renderer::plain();
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&self.header(d));
            out.push_str(": error: ");
            out.push_str(&d.message);
            out.push('\n');
            let mut group = Group::with_level(Level::ERROR);
            if let Some(span) = &d.span {
                // An empty span (the start of the file) still gets a caret.
                let span = if span.is_empty() && span.start < self.text.len() {
                    span.start..span.start + 1
                } else {
                    span.clone()
                };
                group = group.element(
                    Snippet::source(self.text.as_str())
                        .annotation(AnnotationKind::Primary.span(span)),
                );
            }
            if let Some(h) = &d.hint {
                group = group.element(Level::HELP.with_name("hint").message(h.as_str()));
            }
            if d.span.is_some() || d.hint.is_some() {
                out.push_str(&renderer.render(&[group]));
                out.push('\n');
            }
        }
        let n = self.diagnostics.len();
        out.push_str(&format!("{n} error{}\n", if n == 1 { "" } else { "s" }));
        out
    }

    /// `file:line:column`, or `file` without a place.
    fn header(&self, d: &Diagnostic) -> String {
        if d.span.is_some() {
            format!("{}:{}:{}", self.path.display(), d.line, d.column)
        } else {
            self.path.display().to_string()
        }
    }
}

impl fmt::Display for ConfigReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}", self.header(d), d.message)?;
            if let Some(h) = &d.hint {
                write!(f, " (hint: {h})")?;
            }
        }
        Ok(())
    }
}

/// Reads the file at `path` and parses it with every syntax and schema error reported; returns the
/// config and the text (for [`ConfigReport::from_compile`] later). Rules that need the whole config
/// are checked by [`crate::compile::compile_with`], which calls [`Config::validate`].
pub fn load_checked(path: &Path) -> Result<(Config, String), ConfigReport> {
    let text = read(path)?;
    let cfg = parse_checked(&text, path)?;
    Ok((cfg, text))
}

fn read(path: &Path) -> Result<String, ConfigReport> {
    std::fs::read_to_string(path).map_err(|e| {
        let mut r = ConfigReport::empty(path, "");
        r.push_span(None, format!("cannot read the file: {e}"), None);
        r
    })
}

/// Reads, parses and compiles (generation 1) the file at `path`, every problem placed: what `lb
/// check` and `lb run` do before serving.
pub fn check_file(path: &Path) -> Result<(Config, Compiled), ConfigReport> {
    check_str(&read(path)?, path)
}

/// [`check_file`] for text already read; `path` only names the file.
pub fn check_str(text: &str, path: &Path) -> Result<(Config, Compiled), ConfigReport> {
    let cfg = parse_checked(text, path)?;
    let compiled =
        crate::compile::compile(&cfg, 1).map_err(|e| ConfigReport::from_compile(path, text, &e))?;
    Ok((cfg, compiled))
}

/// Parses lb.toml text; `path` only names the file. Every syntax error is reported; for schema
/// errors, the first of each section (the top-level tables, each neighbor, service, pool and
/// backend).
pub fn parse_checked(text: &str, path: &Path) -> Result<Config, ConfigReport> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        let mut report = ConfigReport::empty(path, text);
        for e in errors {
            report.push_span(e.span(), e.message().trim_end().to_string(), None);
        }
        report.sort();
        report.diagnostics.dedup_by_key(|d| d.span.clone());
        return Err(report);
    }
    // The success path deserializes the document it parsed, without a copy: a deep copy of a
    // large config costs as much as a third of the parse. Only a config with schema errors is
    // parsed a second time, to look at its sections apart.
    let first = match Config::deserialize(root_value(doc).into_deserializer()) {
        Ok(cfg) => return Ok(cfg),
        Err(e) => e,
    };
    let mut report = ConfigReport::empty(path, text);
    let (doc, _) = DeTable::parse_recoverable(text);
    let root = root_value(doc);
    let mut errors = section_errors(&root);
    if !errors
        .iter()
        .any(|e| e.span() == first.span() && e.message() == first.message())
    {
        errors.push(first);
    }
    for e in errors {
        let message = e.message().trim_end().to_string();
        let hint = schema_hint(&message);
        report.push_span(e.span(), message, hint);
    }
    report.sort();
    report.diagnostics.dedup();
    Err(report)
}

fn root_value(doc: Spanned<DeTable<'_>>) -> Spanned<DeValue<'_>> {
    let span = doc.span();
    Spanned::new(span, DeValue::Table(doc.into_inner()))
}

/// The first schema error of each section, found by deserializing the sections apart: the root
/// without its arrays of tables, then each element of those arrays without its own nested arrays.
fn section_errors(root: &Spanned<DeValue<'_>>) -> Vec<toml::de::Error> {
    let mut errors = Vec::new();
    let Some(table) = root.get_ref().as_table() else {
        return errors;
    };
    let mut top = table.clone();
    if let Some(neighbors) = take_array(&mut top, "neighbors") {
        for n in neighbors {
            check_section::<config::Neighbor>(n, &mut errors);
        }
    }
    if let Some(services) = take_array(&mut top, "services") {
        for svc in services {
            let Some(mut svc_table) = svc.get_ref().as_table().cloned() else {
                check_section::<config::Service>(svc, &mut errors);
                continue;
            };
            if let Some(pools) = take_array(&mut svc_table, "pools") {
                for pool in pools {
                    let Some(mut pool_table) = pool.get_ref().as_table().cloned() else {
                        check_section::<config::Pool>(pool, &mut errors);
                        continue;
                    };
                    if let Some(backends) = take_array(&mut pool_table, "backends") {
                        for b in backends {
                            check_section::<config::Backend>(b, &mut errors);
                        }
                    }
                    let span = pool.span();
                    check_section::<config::Pool>(
                        Spanned::new(span, DeValue::Table(pool_table)),
                        &mut errors,
                    );
                }
            }
            let span = svc.span();
            check_section::<config::Service>(
                Spanned::new(span, DeValue::Table(svc_table)),
                &mut errors,
            );
        }
    }
    check_section::<Config>(Spanned::new(root.span(), DeValue::Table(top)), &mut errors);
    errors
}

/// Removes `key` from `table` when it is an array (left in place otherwise, so the type error is
/// reported where it is).
fn take_array<'i>(table: &mut DeTable<'i>, key: &str) -> Option<Vec<Spanned<DeValue<'i>>>> {
    let items = table
        .get(key)?
        .get_ref()
        .as_array()?
        .iter()
        .cloned()
        .collect();
    table.remove(key);
    Some(items)
}

fn check_section<T: DeserializeOwned>(v: Spanned<DeValue<'_>>, errors: &mut Vec<toml::de::Error>) {
    if let Err(e) = T::deserialize(v.into_deserializer()) {
        errors.push(e);
    }
}

/// A hint for a serde error message: a close match for an unknown key or variant, or what a missing
/// key needs.
fn schema_hint(message: &str) -> Option<String> {
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if message.starts_with("unknown field") || message.starts_with("unknown variant") {
        let (got, choices) = quoted.split_first()?;
        let what = if message.starts_with("unknown field") {
            "key"
        } else {
            "value"
        };
        return Some(match closest(got, choices) {
            Some(c) => format!("did you mean `{c}`?"),
            None if what == "key" => {
                "this table has no such key; docs/CONFIG.md lists every key".to_string()
            }
            None => format!("the {what} must be one of the listed names"),
        });
    }
    if message.starts_with("invalid IP address syntax") {
        return Some("an IPv4 or IPv6 address, like \"198.18.0.1\" or \"2001:db8::1\"".into());
    }
    if message.starts_with("invalid type: string") && integer_expected(message) {
        return Some("write numbers without quotes".into());
    }
    if message.starts_with("missing field") {
        let field = quoted.first()?;
        return Some(format!(
            "`{field}` has no default: add it to this table (docs/CONFIG.md)"
        ));
    }
    None
}

/// True when serde's "expected ..." part names an integer type.
fn integer_expected(message: &str) -> bool {
    message.rsplit_once("expected ").is_some_and(|(_, t)| {
        matches!(
            t.trim(),
            "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize"
        )
    })
}

/// The choice nearest to `got` by edit distance, when it is close enough to be a typo.
fn closest<'a>(got: &str, choices: &[&'a str]) -> Option<&'a str> {
    let limit = (got.chars().count() / 3).max(1);
    choices
        .iter()
        .map(|c| (edit_distance(got, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance in characters, counting a swap of two neighbours as one edit (optimal string
/// alignment), so `prot` is one edit from `port`.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
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
pub fn locate(text: &str, path: &str) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    Some(locate_in(&root_value(doc), path))
}

fn locate_in(root: &Spanned<DeValue<'_>>, path: &str) -> Range<usize> {
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
            (config::line_column(text, s.start), &text[s])
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
    fn typos_get_a_did_you_mean() {
        assert_eq!(
            schema_hint("unknown field `mttu`, expected one of `mac`, `mtu`, `workers`"),
            Some("did you mean `mtu`?".into())
        );
        assert_eq!(
            schema_hint("unknown variant `dsr`, expected one of `fullnat`, `dsr-gue`, `dr`"),
            Some("did you mean `dr`?".into())
        );
        let h = schema_hint("unknown field `zzzzzz`, expected one of `mac`, `mtu`").unwrap();
        assert!(h.contains("no such key"), "{h}");
        let h = schema_hint("missing field `vip`").unwrap();
        assert!(h.contains("`vip` has no default"), "{h}");
        assert_eq!(
            schema_hint("invalid type: integer `5`, expected a string"),
            None
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(
            schema_hint("unknown variant `tpc`, expected `tcp` or `udp`"),
            Some("did you mean `tcp`?".into())
        );
    }

    #[test]
    fn display_is_one_line_per_problem_in_file_order() {
        let text = "[dataplane]\nmtu = 1\nworkers = 0\n";
        let r = ConfigReport::from_problems(
            Path::new("lb.toml"),
            text,
            &[
                Problem::new("dataplane.workers", "workers must be at least 1"),
                Problem::new("dataplane.mtu", "mtu 1 is too small").hint("576-9216"),
                Problem::new("", "somewhere"),
            ],
        );
        assert_eq!(
            r.to_string(),
            "lb.toml:1:1: somewhere\nlb.toml:2:7: mtu 1 is too small (hint: 576-9216)\n\
             lb.toml:3:11: workers must be at least 1"
        );
        let shown = r.render();
        assert!(
            shown.starts_with("lb.toml:1:1: error: somewhere\n"),
            "{shown}"
        );
        assert!(shown.contains("2 | mtu = 1\n"), "{shown}");
        assert!(shown.contains("hint: 576-9216"), "{shown}");
        assert!(shown.ends_with("3 errors\n"), "{shown}");
    }

    #[test]
    fn every_prefix_of_the_shipped_config_is_reported_without_a_panic() {
        let text = include_str!("../../lb.toml");
        let mut refused = 0;
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let cut = &text[..end];
            if let Err(r) = check_str(cut, Path::new("lb.toml")) {
                refused += 1;
                let shown = r.render();
                assert!(shown.ends_with(" error\n") || shown.ends_with(" errors\n"));
                for d in &r.diagnostics {
                    let span = d.span.clone().expect("every problem in a text has a place");
                    assert!(span.end <= cut.len(), "{span:?} past {end}");
                }
            }
        }
        // Cuts inside comments or after a complete key leave a valid file; the others are refused.
        assert!(refused > 1000, "{refused}");
        assert!(check_str(text, Path::new("lb.toml")).is_ok());
    }
}

//! Every problem of one file, placed and rendered for logs, the admin API and a terminal.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use toml::de::DeTable;

use super::location::{locate_in, spanned_root, LineCursor};
use super::Problem;

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

/// Problems shown in full by [`ConfigReport::render`] and `Display`; the rest are counted ("and N
/// more"): past the first screens, more lines help nobody, and 200k of them flood a log.
pub const MAX_SHOWN: usize = 100;

impl ConfigReport {
    /// A report of no problems yet for `path` with contents `text`.
    pub(crate) fn new(path: &Path, text: &str) -> ConfigReport {
        ConfigReport {
            path: path.to_path_buf(),
            text: text.to_string(),
            diagnostics: Vec::new(),
        }
    }

    /// Adds a problem at a byte span; its line and column are set by [`ConfigReport::sort`],
    /// which every report calls once its problems are in.
    pub(crate) fn push_span(
        &mut self,
        span: Option<Range<usize>>,
        message: String,
        hint: Option<String>,
    ) {
        self.diagnostics.push(Diagnostic {
            span,
            line: 0,
            column: 0,
            message,
            hint,
        });
    }

    /// Problems found by the config's validation in `text`, each resolved to its place.
    pub fn from_problems(path: &Path, text: &str, problems: &[Problem]) -> ConfigReport {
        let mut report = ConfigReport::new(path, text);
        let doc = DeTable::parse(text).ok().map(spanned_root);
        for p in problems {
            let span = doc.as_ref().map(|root| locate_in(root, &p.path));
            report.push_span(span, p.message.clone(), p.hint.clone());
        }
        report.sort();
        report
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.diagnostics.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// File order (problems without a place last, in the order found), each placed at its line
    /// and column in one pass over the text.
    pub(crate) fn sort(&mut self) {
        self.diagnostics
            .sort_by_key(|d| d.span.as_ref().map_or(usize::MAX, |s| s.start));
        let mut cursor = LineCursor::new(&self.text);
        for d in &mut self.diagnostics {
            (d.line, d.column) = match &d.span {
                Some(s) => cursor.advance_to(s.start),
                None => (0, 0),
            };
        }
    }

    /// The report for a terminal: per problem `file:line:column: error: message`, the source line
    /// with the offending key or value underlined and a `hint:` line; then `N error(s)`.
    pub fn render(&self) -> String {
        let renderer = Renderer::plain();
        let mut out = String::new();
        for d in self.diagnostics.iter().take(MAX_SHOWN) {
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
                // Only the lines the span is on: the renderer reads the source it is given.
                let from = self.text[..span.start].rfind('\n').map_or(0, |i| i + 1);
                let to = self.text[span.end..]
                    .find('\n')
                    .map_or(self.text.len(), |i| span.end + i);
                group = group.element(
                    Snippet::source(&self.text[from..to])
                        .line_start(d.line)
                        .annotation(
                            AnnotationKind::Primary.span(span.start - from..span.end - from),
                        ),
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
        if let Some(more) = self.not_shown() {
            out.push_str(&more);
            out.push('\n');
        }
        let n = self.diagnostics.len();
        out.push_str(&format!("{n} error{}\n", if n == 1 { "" } else { "s" }));
        out
    }

    /// "... and N more", when there are more than [`MAX_SHOWN`] problems.
    fn not_shown(&self) -> Option<String> {
        let n = self.diagnostics.len().checked_sub(MAX_SHOWN)?;
        (n > 0).then(|| {
            format!(
                "{}: ... and {n} more problem{} not shown",
                self.path.display(),
                if n == 1 { "" } else { "s" }
            )
        })
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
        for (i, d) in self.diagnostics.iter().take(MAX_SHOWN).enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}", self.header(d), d.message)?;
            if let Some(h) = &d.hint {
                write!(f, " (hint: {h})")?;
            }
        }
        if let Some(more) = self.not_shown() {
            write!(f, "\n{more}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn many_problems_are_placed_in_one_pass_and_shown_up_to_the_cap() {
        let n = 50_000;
        let text = "k = 1\n".repeat(n);
        let problems: Vec<Problem> = (0..n).map(|_| Problem::new("k", "bad")).collect();
        let mut r = ConfigReport::new(Path::new("lb.toml"), &text);
        for line in (0..n).rev() {
            r.push_span(Some(line * 6 + 4..line * 6 + 5), "bad".into(), None);
        }
        r.sort();
        assert_eq!((r.diagnostics[0].line, r.diagnostics[0].column), (1, 5));
        let last = &r.diagnostics[n - 1];
        assert_eq!((last.line, last.column), (n, 5));

        let shown = r.render();
        assert_eq!(shown.matches(": error: bad").count(), MAX_SHOWN, "{shown}");
        assert!(shown.contains("lb.toml:100:5: error: bad\n"), "{shown}");
        assert!(!shown.contains("lb.toml:101:5"), "{shown}");
        assert!(
            shown.ends_with(&format!(
                "lb.toml: ... and {} more problems not shown\n{n} errors\n",
                n - MAX_SHOWN
            )),
            "{}",
            &shown[shown.len() - 200..]
        );
        let lines = r.to_string();
        assert_eq!(lines.lines().count(), MAX_SHOWN + 1);
        assert!(lines.ends_with("more problems not shown"), "{lines}");
        // Through the config's own path too (every problem resolved by key path).
        let r = ConfigReport::from_problems(Path::new("lb.toml"), &text, &problems);
        assert_eq!(r.len(), n);
        assert_eq!(r.render().matches(": error: bad").count(), MAX_SHOWN);
    }
}

//! Every problem of one file, placed and rendered for logs, the admin API and a terminal.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use toml::de::DeTable;

use super::location::{line_column, locate_in, spanned_root};
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

impl ConfigReport {
    /// A report of no problems yet for `path` with contents `text`.
    pub(crate) fn new(path: &Path, text: &str) -> ConfigReport {
        ConfigReport {
            path: path.to_path_buf(),
            text: text.to_string(),
            diagnostics: Vec::new(),
        }
    }

    /// Adds a problem at a byte span.
    pub(crate) fn push_span(
        &mut self,
        span: Option<Range<usize>>,
        message: String,
        hint: Option<String>,
    ) {
        let (line, column) = match &span {
            Some(s) => line_column(&self.text, s.start),
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

    /// File order; problems without a place last, in the order found.
    pub(crate) fn sort(&mut self) {
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
}

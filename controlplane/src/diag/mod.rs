//! Config problems placed in lb.toml: `file:line:column`, a source snippet and a hint.
//!
//! The rules of the file ([`crate::config`]'s validation) report a [`Problem`] whose `path` names
//! the offending key (`services[0].pools[1].backends[2].addr`). This module parses the text a
//! second time into toml's spanned document and resolves each path to the nearest existing span (a
//! missing key points at its table header), so the serde types stay free of spans. It knows
//! nothing of the config's schema or of compiling: both use it, never the other way round.

mod hint;
mod location;
mod problem;
mod report;

pub use hint::schema_hint;
pub use location::line_column;
pub(crate) use location::spanned_root;
pub use problem::Problem;
pub use report::{ConfigReport, Diagnostic, MAX_SHOWN};

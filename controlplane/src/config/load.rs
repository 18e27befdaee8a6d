//! Reading lb.toml: the text, its syntax and schema (every error placed), then its rules.

use std::io::Read;
use std::path::Path;

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::schema::{Backend, Config, Neighbor, Pool, Service};
use crate::diag::{schema_hint, spanned_root, ConfigReport};

/// Reads, parses and validates the file at `path`: a config `compile()` can build, or every
/// problem found, placed at `file:line:column`.
pub fn load(path: &Path) -> Result<Config, ConfigReport> {
    load_with_text(path).map(|(cfg, _)| cfg)
}

/// [`load`], also returning the text, so problems found later (a failed compile) point into it.
pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigReport> {
    let text = read_text(path)?;
    let cfg = Config::from_toml_str(&text, path)?;
    Ok((cfg, text))
}

/// Largest config file read (64 MiB): a config of 10,000 services is about 2 MB, and reading stops
/// here, so a wrong path (`/dev/zero`, a huge log) cannot fill memory.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The text of the regular file at `path`, at most [`MAX_CONFIG_BYTES`]: a FIFO, device or
/// directory is refused before it is opened (opening a FIFO would wait for a writer), and bytes
/// that are not UTF-8 are reported at their line and column.
pub fn read_text(path: &Path) -> Result<String, ConfigReport> {
    let bytes = read_bytes(path)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        let mut r = ConfigReport::new(path, "");
        r.push_span(
            None,
            format!(
                "cannot read the file: it is larger than {} MiB",
                MAX_CONFIG_BYTES >> 20
            ),
            Some("a config is a few MB at most: is this the right file?".into()),
        );
        return Err(r);
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let byte = e.as_bytes()[at];
        // The lossy text keeps every byte before the first bad one, so offsets agree up to it;
        // the bad byte became U+FFFD, which the caret underlines.
        let text = String::from_utf8_lossy(e.as_bytes());
        let mut r = ConfigReport::new(path, &text);
        r.push_span(
            Some(at..at + '\u{FFFD}'.len_utf8()),
            format!("byte 0x{byte:02x} is not UTF-8"),
            Some("TOML files are UTF-8 text: re-save the file as UTF-8".into()),
        );
        r.sort();
        r
    })
}

/// The bytes of the regular file at `path`, at most [`MAX_CONFIG_BYTES`] + 1 (one more than
/// allowed, so a caller can tell a file that is too large): a FIFO, device or directory is
/// refused before it is opened. [`read_text`] and the file watcher read through it.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, ConfigReport> {
    let fail = |message: String, hint: Option<&str>| {
        let mut r = ConfigReport::new(path, "");
        r.push_span(None, message, hint.map(str::to_string));
        r
    };
    let not_regular = |meta: &std::fs::Metadata| {
        fail(
            format!(
                "cannot read the file: it is {}, not a regular file",
                file_kind(meta)
            ),
            Some("lb reads its config from a regular file (a symlink to one is fine)"),
        )
    };
    let meta =
        std::fs::metadata(path).map_err(|e| fail(format!("cannot read the file: {e}"), None))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let file =
        std::fs::File::open(path).map_err(|e| fail(format!("cannot read the file: {e}"), None))?;
    // The path may have been replaced between the two looks: judge what was opened.
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read the file: {e}"), None))?;
    if !meta.is_file() {
        return Err(not_regular(&meta));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read the file: {e}"), None))?;
    Ok(bytes)
}

/// What a file that is not a regular file is, for the message refusing it.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "something else"
    }
}

impl Config {
    /// Parses and validates lb.toml text; `path` only names the file. Every syntax error is
    /// reported; for schema errors, the first of each section (the top-level tables, each
    /// neighbor, service, pool and backend); then, if it parsed, every rule it breaks.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigReport> {
        let mut cfg = parse(text, path)?;
        cfg.resolve_paths(path);
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigReport::from_problems(path, text, &problems))
        }
    }
}

/// Syntax and schema of `text`, every error placed.
fn parse(text: &str, path: &Path) -> Result<Config, ConfigReport> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        let mut report = ConfigReport::new(path, text);
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
    let first = match Config::deserialize(spanned_root(doc).into_deserializer()) {
        Ok(cfg) => return Ok(cfg),
        Err(e) => e,
    };
    let mut report = ConfigReport::new(path, text);
    let (doc, _) = DeTable::parse_recoverable(text);
    let root = spanned_root(doc);
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
            check_section::<Neighbor>(n, &mut errors);
        }
    }
    if let Some(services) = take_array(&mut top, "services") {
        for svc in services {
            let Some(mut svc_table) = svc.get_ref().as_table().cloned() else {
                check_section::<Service>(svc, &mut errors);
                continue;
            };
            if let Some(pools) = take_array(&mut svc_table, "pools") {
                for pool in pools {
                    let Some(mut pool_table) = pool.get_ref().as_table().cloned() else {
                        check_section::<Pool>(pool, &mut errors);
                        continue;
                    };
                    if let Some(backends) = take_array(&mut pool_table, "backends") {
                        for b in backends {
                            check_section::<Backend>(b, &mut errors);
                        }
                    }
                    let span = pool.span();
                    check_section::<Pool>(
                        Spanned::new(span, DeValue::Table(pool_table)),
                        &mut errors,
                    );
                }
            }
            let span = svc.span();
            check_section::<Service>(Spanned::new(span, DeValue::Table(svc_table)), &mut errors);
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

//! The whole check `lb check`, `lb sim` and `lb run` start with: load, validate, compile, bind.

use std::path::Path;

use super::{compile, Compiled};
use crate::config::{load_with_text, Config, Host};
use crate::diag::{ConfigReport, Problem};

/// Reads, validates and compiles (generation 1) the file at `path`, with its next hops bound to a
/// cache of its own: every problem placed, or what a fresh `lb run` would serve first.
pub fn check_file(path: &Path) -> Result<(Config, Compiled), ConfigReport> {
    let (cfg, text) = load_with_text(path)?;
    let compiled = build(&cfg, &text, path)?;
    Ok((cfg, compiled))
}

/// [`check_file`], and the config fits `host`: its workers' cores are online and the memory it
/// needs is there. Checked before compiling, so a config too large for the machine is refused
/// without building its tables.
pub fn check_file_on(path: &Path, host: &Host) -> Result<(Config, Compiled), ConfigReport> {
    let (cfg, text) = load_with_text(path)?;
    let problems = cfg.check_host(host);
    if !problems.is_empty() {
        return Err(ConfigReport::from_problems(path, &text, &problems));
    }
    let compiled = build(&cfg, &text, path)?;
    Ok((cfg, compiled))
}

/// [`check_file`] for text already read; `path` only names the file.
pub fn check_str(text: &str, path: &Path) -> Result<(Config, Compiled), ConfigReport> {
    let cfg = Config::from_toml_str(text, path)?;
    let compiled = build(&cfg, text, path)?;
    Ok((cfg, compiled))
}

fn build(cfg: &Config, text: &str, path: &Path) -> Result<Compiled, ConfigReport> {
    let mut compiled = compile(cfg, 1).map_err(|e| ConfigReport::from_compile(path, text, &e))?;
    compiled.bind_fresh().map_err(|e| {
        ConfigReport::from_problems(
            path,
            text,
            &[Problem::new("dataplane", e.to_string()).hint(
                "list the MACs of backends on the link in [[neighbors]], or reach them through a gateway",
            )],
        )
    })?;
    Ok(compiled)
}

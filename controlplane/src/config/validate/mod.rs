//! Every rule of lb.toml that serde cannot express, in one place: ranges of single keys, keys of
//! one section together, and the rules that span the file (address families, how each backend is
//! reached, duplicate names, overlapping services). Each problem names its key path, so
//! [`crate::diag`] places it at `file:line:column`.
//!
//! Problems come in section order: `[dataplane]` and `[[neighbors]]`, `[conntrack]`, the services,
//! `[[http]]`, `[admin]`, `[logging]`, `[kubernetes]`.

mod dataplane;
mod health;
mod host;
mod http;
mod kubernetes;
mod reach;
mod services;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;

pub use host::{Host, MemoryEstimate};
pub use http::MAX_HTTP_WEIGHT;
pub use services::{weights_fit, WeightsTooLarge, WEIGHTS_HINT};

use super::schema::{Admin, Config, Conntrack};
use super::types::MacAddr;
use crate::diag::Problem;

/// Maglev table sizes to suggest: primes near powers of two, from small services to very large ones.
const SUITABLE_TABLE_SIZES: [usize; 14] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65537, 131071, 262139, 524287, 1048573, 2097143,
];

/// Largest Maglev table size: 2^21 slots (4 MiB a table) is 200,000 backends at ten slots each,
/// beyond the 65,534 a table can index. Larger sizes only cost memory and build time (2147483647
/// took 12.8 GB to check).
pub const MAX_TABLE_SIZE: usize = 1 << 21;

/// Largest conntrack capacity: what the dataplane's table can index (2^31 keys, about 190 GiB a
/// worker); whether it fits in memory is checked against the machine by [`Config::check_host`].
pub const MAX_CONNTRACK_CAPACITY: usize = ::dataplane::conntrack::MAX_CAPACITY;

/// A service's table needs this many slots per backend: with fewer, a backend's share strays far
/// from its weight and a backend change moves more flows than it must.
const SLOTS_PER_BACKEND: usize = 10;

/// Log levels a `[logging] level` directive may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

impl Config {
    /// Checks every rule of the file and returns every problem, in section order: what passes
    /// here, `compile()` can build.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        dataplane::check(self, &mut out);
        check_conntrack(&self.conntrack, &mut out);
        services::check(self, &mut out);
        http::check(self, &mut out);
        if self.admin.enabled && self.admin.listen.port() == 0 {
            out.push(
                Problem::new(
                    "admin.listen",
                    format!(
                        "admin: listen {} has port 0, which binds a port nobody can find",
                        self.admin.listen
                    ),
                )
                .hint("give a fixed port, e.g. \"127.0.0.1:9180\", or set enabled = false"),
            );
        }
        check_admin_limits(&self.admin, &mut out);
        if let Some(p) = check_log_level(&self.logging.level) {
            out.push(p);
        }
        if let Some(k) = &self.kubernetes {
            kubernetes::check(k, &mut out);
        }
        out
    }
}

impl Config {
    /// The rules of some entries alone: services `services` (indices into `services`) and
    /// upstreams `upstreams` (`(http, upstream)` indices). For a change that replaced only the
    /// backends of entries that passed [`Config::validate`]: what they claim together with the
    /// others (names, VIPs, ports, routes) is unchanged, so checking them alone is enough.
    pub fn validate_entries(
        &self,
        services: &[usize],
        upstreams: &[(usize, usize)],
    ) -> Vec<Problem> {
        let mut out = Vec::new();
        services::check_some(self, services, &mut out);
        http::check_upstreams(self, upstreams, &mut out);
        out
    }
}

/// Most admin connections served at once: each holds a descriptor the dataplane and the health
/// checks may need.
pub const MAX_ADMIN_CONNECTIONS: u32 = 65_536;

/// Longest admin timeout: beyond it a connection that sends nothing is held for no reason.
const MAX_ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// `[admin]` limits: at least one connection, at most [`MAX_ADMIN_CONNECTIONS`]; timeouts above 0
/// and at most an hour.
fn check_admin_limits(admin: &Admin, out: &mut Vec<Problem>) {
    if !(1..=MAX_ADMIN_CONNECTIONS).contains(&admin.max_connections) {
        out.push(
            Problem::new(
                "admin.max_connections",
                format!(
                    "admin: max_connections {} is outside 1-{MAX_ADMIN_CONNECTIONS}",
                    admin.max_connections
                ),
            )
            .hint(
                "each admin connection holds a file descriptor: 256 serves scrapers and operators",
            ),
        );
    }
    for (key, d) in [
        ("header_timeout", admin.header_timeout),
        ("idle_timeout", admin.idle_timeout),
    ] {
        if d.is_zero() || d > MAX_ADMIN_TIMEOUT {
            out.push(
                Problem::new(
                    format!("admin.{key}"),
                    format!("admin: {key} must be above 0 and at most 1h"),
                )
                .hint("a few seconds lets slow clients in and idle ones out, e.g. \"10s\""),
            );
        }
    }
}

/// `[conntrack]`: a table that can hold a flow, a budget inside it, timeouts above 0.
fn check_conntrack(ct: &Conntrack, out: &mut Vec<Problem>) {
    // A nat flow takes two keys, so a table of fewer than two keys could never hold one.
    if ct.capacity < 2 {
        out.push(Problem::new(
            "conntrack.capacity",
            format!(
                "conntrack: capacity {} is too small (at least 2)",
                ct.capacity
            ),
        ));
    }
    if ct.capacity > MAX_CONNTRACK_CAPACITY {
        out.push(
            Problem::new(
                "conntrack.capacity",
                format!(
                    "conntrack: capacity {} is above the largest table, {MAX_CONNTRACK_CAPACITY} keys",
                    ct.capacity
                ),
            )
            .hint("every worker holds a table of this many keys (a nat flow takes two): `lb check` prints the memory it needs"),
        );
    }
    let embryonic_budget = ct.embryonic_budget();
    if embryonic_budget > ct.capacity {
        out.push(
            Problem::new(
                "conntrack.embryonic_budget",
                format!(
                    "conntrack: embryonic_budget {} is above capacity {}",
                    embryonic_budget, ct.capacity
                ),
            )
            .hint("leave it out for a quarter of the capacity"),
        );
    }
    let t = &ct.timeouts;
    for (name, d) in [
        ("tcp_syn", t.tcp_syn),
        ("tcp_established", t.tcp_established),
        ("tcp_closing", t.tcp_closing),
        ("udp", t.udp),
        ("udp_unconfirmed", t.udp_unconfirmed),
    ] {
        if d.is_zero() {
            out.push(Problem::new(
                format!("conntrack.timeouts.{name}"),
                format!("conntrack.timeouts: {name} must be above 0"),
            ));
        }
    }
}

/// Text written only when it is displayed (`Lazy(|f| write!(f, ...))`): the names and key paths
/// that problems mention, which a valid config never shows.
struct Lazy<F>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

/// `IPv4` or `IPv6`, as problems name an address family.
fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The first address of the family (`v4`: IPv4) in `list`.
fn first_of_family(list: &[IpAddr], v4: bool) -> Option<IpAddr> {
    list.iter().copied().find(|a| a.is_ipv4() == v4)
}

/// A hint naming the table sizes that suit `backends` backends.
fn table_size_hint(backends: usize) -> String {
    let need = backends.saturating_mul(SLOTS_PER_BACKEND).max(1);
    let fits: Vec<String> = SUITABLE_TABLE_SIZES
        .iter()
        .filter(|&&p| p >= need)
        .take(4)
        .map(|p| p.to_string())
        .collect();
    if fits.is_empty() {
        format!("a prime of at least {need} (the default is 65537)")
    } else {
        format!(
            "a prime of at least {need}: {} (the default is 65537)",
            fits.join(", ")
        )
    }
}

/// A MAC we send from or to must be unicast: a multicast or zero MAC is a typo. `place` gives the
/// key path and what the MAC is, only called when there is a problem.
fn check_mac(out: &mut Vec<Problem>, mac: MacAddr, place: impl FnOnce() -> (String, String)) {
    let why = if mac.0 == [0; 6] {
        "is all zeros"
    } else if mac.0[0] & 1 == 1 {
        "is a multicast address"
    } else {
        return;
    };
    let (path, what) = place();
    out.push(
        Problem::new(path, format!("{what} {mac} {why}"))
            .hint("a unicast MAC has an even first byte, e.g. \"02:00:00:00:00:01\""),
    );
}

/// An address a packet is sent to or from must be a single host: not unspecified, not multicast.
/// `place` gives the key path and what the address is, only called when there is a problem.
fn check_unicast(out: &mut Vec<Problem>, addr: IpAddr, place: impl FnOnce() -> (String, String)) {
    let why = if addr.is_unspecified() {
        "is the unspecified address"
    } else if addr.is_multicast() || addr == IpAddr::from([255, 255, 255, 255]) {
        "is a multicast or broadcast address"
    } else {
        return;
    };
    let (path, what) = place();
    out.push(Problem::new(path, format!("{what} {addr} {why}")).hint("use a unicast address"));
}

/// A `[logging] level` must parse as a tracing filter, and a bare word must be a level or one of our
/// crates: tracing reads any other word as a target name, so a typo like "inof" would silently log
/// nothing.
fn check_log_level(level: &str) -> Option<Problem> {
    let bad =
        |message: String, hint: String| Some(Problem::new("logging.level", message).hint(hint));
    let usage =
        "a level (error, warn, info, debug, trace) or directives like \"warn,controlplane=debug\"";
    if level.trim().is_empty() {
        return bad("logging: level is empty".into(), usage.into());
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level) {
        return bad(
            format!("logging: level {level:?} is not a filter: {e}"),
            usage.into(),
        );
    }
    for directive in level.split(',').map(str::trim) {
        let word = directive.to_ascii_lowercase();
        let is_word =
            !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_word
            && !LOG_LEVELS.contains(&word.as_str())
            && !["controlplane", "dataplane", "lb"].contains(&word.as_str())
        {
            let near = LOG_LEVELS
                .iter()
                .min_by_key(|l| strsim::osa_distance(&word, l))
                .copied()
                .unwrap_or("info");
            return bad(
                format!("logging: {directive:?} in level {level:?} is neither a level nor one of our crates"),
                format!("did you mean \"{near}\"? ({usage})"),
            );
        }
    }
    None
}

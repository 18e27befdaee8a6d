//! Health checking: active TCP/HTTP probes with rise/fall hysteresis, and passive ejection on
//! signals the dataplane counts (backend resets, unanswered SYNs).
//!
//! The decisions are a pure core ([`ActiveState`], [`PassiveState`], [`BackendState`]) fed with
//! probe results and counter samples, so the rules are tested without sockets or clocks. The
//! probes ([`probe`]) and the [`Checker`] that schedules them run on the tokio runtime it is
//! given (`lb run` gives it one of its own, so nothing else on the control plane delays a probe); the checker reports every change of a backend's health as a [`Transition`] so the
//! caller can log it, count it and rebuild the table.
//!
//! Initial policy: a backend with an active check is [`Health::Unchecked`] (served) until its
//! first probe finishes, and that first result decides at once: a success makes it `Up`, a
//! failure `Down`. From then on `fall` consecutive failures take an up backend down and `rise`
//! consecutive successes bring a down backend up. This is HAProxy's default `init-state up`:
//! nothing is withheld from traffic at start or when added, yet a backend never seen healthy
//! does not take traffic for `fall` intervals.
//!
//! A probe that fails because of this host (out of descriptors, buffers, memory or ports:
//! [`ProbeError::Local`]) is unknown: it is counted ([`Checker::local_errors`]) and leaves the
//! backend's state as it was, so an exhausted host never takes its backends down.
//!
//! Rooms: `rules` (the pure core), `probes` (TCP and HTTP, failures as [`ProbeError`]) and
//! `checker` (the tasks).
//!

mod checker;
mod probes;
mod rules;

use std::time::Duration;

use serde::Serialize;

pub use checker::{probe_port, targets, Checker, Target};
pub use probes::{
    is_local_error, parse_status_line, probe, probe_http, probe_tcp, BadStatusLine, HttpError,
    ProbeError, ProbeResult,
};
pub use rules::{ActiveState, BackendState, PassiveSample, PassiveState, Transition};

/// Shortest time between two probes of one backend, whatever the config says: an interval of 0
/// would turn a probe task into a busy loop on the control plane's runtime.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Longest interval, jitter or timeout used, whatever the config says: lb.toml durations go up to
/// `u64::MAX` milliseconds, which no clock can add without overflowing.
pub const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// `"1s"`, `"250ms"`: durations as lb.toml writes them.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{ms}ms")
    } else {
        format!("{d:?}")
    }
}

/// What health checking says about a backend.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "reason")]
pub enum Health {
    /// No check configured (or not yet decided): treated as up.
    #[default]
    Unchecked,
    /// Passing.
    Up,
    /// Failing: out of the table; the reason says which check and why.
    Down(String),
}

impl Health {
    /// True unless checks say the backend is down.
    pub fn serves(&self) -> bool {
        !matches!(self, Health::Down(_))
    }

    /// The value of the `lb_backend_up` gauge: 1 up or unchecked, 0 down.
    pub fn gauge(&self) -> i64 {
        i64::from(self.serves())
    }
}

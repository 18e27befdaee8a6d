//! The control plane's shared vocabulary: how a backend is named, what health and operators say
//! about it, what the admin API observes, and the [`Control`] operations it may call.
//!
//! The configuration says what *should* serve; health checks and runtime operations say what
//! *may* serve right now. [`effective_weight`] combines them into the weight a backend gets in the
//! next compiled table; it is pure so the rules are tested without sockets.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use dataplane::worker::Snapshot;
use serde::Serialize;

pub use crate::config::{BackendKey, NameError};
pub use crate::health::Health;

/// What an operator set on a backend at runtime (HAProxy's `set server ... state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Serves as configured.
    #[default]
    Enabled,
    /// Keeps its existing flows, takes no new ones (weight 0 in the table).
    Drain,
    /// Out of the table: takes nothing, its flows move to other backends.
    Disabled,
}

impl FromStr for AdminState {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        match s {
            "enabled" | "enable" | "ready" => Ok(AdminState::Enabled),
            "drain" => Ok(AdminState::Drain),
            "disabled" | "disable" | "maint" => Ok(AdminState::Disabled),
            _ => Err(NameError::State(s.to_string())),
        }
    }
}

/// Runtime overrides of one backend. They survive reloads until cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub struct Override {
    /// Weight to use instead of the configured one.
    pub weight: Option<u32>,
    /// Operator state.
    pub admin: AdminState,
}

impl Override {
    /// True when the override changes nothing (and can be forgotten).
    pub fn is_empty(&self) -> bool {
        self.weight.is_none() && self.admin == AdminState::Enabled
    }
}

/// The weight a backend gets in the next table: `None` leaves it out of the table (its flows move),
/// `Some(0)` keeps it for its existing flows only (drain). `configured` is pool weight times
/// backend weight; `ignore_health` is set when the service fails open because every backend is down.
pub fn effective_weight(
    configured: u32,
    ov: &Override,
    health: &Health,
    ignore_health: bool,
) -> Option<u32> {
    match ov.admin {
        AdminState::Disabled => None,
        _ if !ignore_health && !health.serves() => None,
        AdminState::Drain => Some(0),
        AdminState::Enabled => Some(ov.weight.unwrap_or(configured)),
    }
}

/// One backend as `/state` and `/metrics` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    /// Its name.
    pub key: BackendKey,
    /// Pool name.
    pub pool: String,
    /// Forwarding mode of the pool.
    pub mode: &'static str,
    /// `pod` or `vm`.
    pub kind: &'static str,
    /// Pool weight times backend weight, from the config.
    pub configured_weight: u32,
    /// Weight in the serving table; `None` when it is out of the table.
    pub weight: Option<u32>,
    /// Health.
    pub health: Health,
    /// Runtime override.
    #[serde(rename = "override")]
    pub over: Override,
    /// Counter slot in the workers' per-backend counters (`Counters::backends`).
    #[serde(skip)]
    pub stat: Option<u32>,
}

/// One service as `/state` and `/metrics` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// VIP.
    pub vip: IpAddr,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Ports served, as written in the config (`80`, `8000-8010`); empty means all.
    pub ports: Vec<String>,
    /// True when every backend is down and the service fails open.
    pub failing_open: bool,
    /// Backends.
    pub backends: Vec<BackendStatus>,
    /// Counter slots in the workers' per-service counters (one per port range).
    #[serde(skip)]
    pub stats: Vec<u32>,
}

/// One `[[http]]` as the admin API sees it: its sockets, its backends (named
/// `HTTP/UPSTREAM/ADDR:PORT`, `pool` is the upstream) and, while it serves, its proxy's counters.
#[derive(Clone, Debug, Serialize)]
pub struct HttpStatus {
    /// The `[[http]]` name.
    pub name: String,
    /// Configured listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Whether it ends TLS.
    pub tls: bool,
    /// Every backend of every upstream, in file order.
    pub backends: Vec<BackendStatus>,
    /// The running proxy's per-worker counters; `None` while `lb run` has not started it.
    #[serde(skip)]
    pub proxy: Option<super::HttpHandle>,
}

/// Reload outcomes since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReloadStatus {
    /// Reloads that swapped in a new table.
    pub ok: u64,
    /// Reloads rejected (the previous table kept serving).
    pub failed: u64,
    /// The last rejection's full message, until a reload succeeds.
    pub last_error: Option<String>,
    /// Seconds since the Unix epoch of the last successful swap.
    pub last_ok_unix: Option<u64>,
    /// Settings the serving file changes that wait for a restart (`dataplane.workers`, ...).
    pub restart_needed: Vec<String>,
}

/// What reloads removed that still serves its tracked flows (`[dataplane] on_remove = "drain"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainingStatus {
    /// Removed services.
    pub services: Vec<String>,
    /// Removed backends, those of removed services included.
    pub backends: Vec<BackendKey>,
}

/// Everything the admin API reports, taken at one moment.
#[derive(Clone, Debug)]
pub struct Observation {
    /// Generation of the table the workers serve.
    pub generation: u64,
    /// Path of the config file.
    pub config_path: String,
    /// Services with their backends.
    pub services: Vec<ServiceStatus>,
    /// Reload outcomes.
    pub reload: ReloadStatus,
    /// Health state changes (up to down and back) since start.
    pub health_transitions: u64,
    /// The latest published counters of each worker.
    pub workers: Vec<Arc<Snapshot>>,
    /// Conntrack capacity per worker (keys).
    pub conntrack_capacity: usize,
    /// The interfaces the workers poll, in order (their names).
    pub interfaces: Vec<String>,
    /// Removed services and backends still draining.
    pub draining: DrainingStatus,
}

/// Why a runtime operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// No such backend in the serving config.
    #[error("no backend {0} in the configuration")]
    NoBackend(String),
    /// A malformed request.
    #[error("{0}")]
    Invalid(String),
    /// The resulting table could not be built.
    #[error("the table could not be rebuilt: {0}")]
    Compile(String),
}

/// The operations the admin API calls on the running control plane.
pub trait Control: Send + Sync + 'static {
    /// A consistent view of the state and counters.
    fn observe(&self) -> Observation;
    /// True once the workers serve a table (readiness).
    fn ready(&self) -> bool;
    /// Sets a backend's weight until cleared; the table is rebuilt and swapped before returning.
    fn set_weight(&self, key: &BackendKey, weight: u32) -> Result<u64, OpError>;
    /// Sets a backend's operator state until cleared; rebuilds and swaps the table.
    fn set_admin(&self, key: &BackendKey, state: AdminState) -> Result<u64, OpError>;
    /// Drops a backend's overrides; rebuilds and swaps the table.
    fn clear(&self, key: &BackendKey) -> Result<u64, OpError>;
    /// Rereads the config file now (as SIGHUP does); the new generation, or the rejection.
    fn reload(&self) -> Result<u64, super::ReloadError>;
    /// Every `[[http]]` with its backends and proxy counters (none by default: a plane without
    /// L7).
    fn http(&self) -> Vec<HttpStatus> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_keys_round_trip() {
        for s in [
            "web/198.18.1.10:8080",
            "web/[2001:db8::10]:80",
            "web/198.18.2.10",
            "a/b/2001:db8::1",
        ] {
            let k: BackendKey = s.parse().unwrap();
            assert_eq!(k.to_string(), s);
        }
        let k: BackendKey = "web/[2001:db8::10]".parse().unwrap();
        assert_eq!((k.addr.to_string(), k.port), ("2001:db8::10".into(), 0));
        for bad in [
            "",
            "web",
            "/198.18.1.10",
            "web/host:80",
            "web/198.18.1.10:99999",
        ] {
            assert!(bad.parse::<BackendKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn weights_follow_admin_then_health_then_override() {
        let up = Health::Up;
        let down = Health::Down("tcp connect refused".into());
        let ov = |weight, admin| Override { weight, admin };
        assert_eq!(
            effective_weight(3, &Override::default(), &up, false),
            Some(3)
        );
        assert_eq!(
            effective_weight(3, &Override::default(), &Health::Unchecked, false),
            Some(3)
        );
        assert_eq!(
            effective_weight(3, &Override::default(), &down, false),
            None
        );
        // Failing open: health is ignored, the operator is not.
        assert_eq!(
            effective_weight(3, &Override::default(), &down, true),
            Some(3)
        );
        assert_eq!(
            effective_weight(3, &ov(None, AdminState::Disabled), &down, true),
            None
        );
        assert_eq!(
            effective_weight(3, &ov(Some(7), AdminState::Enabled), &up, false),
            Some(7)
        );
        assert_eq!(
            effective_weight(3, &ov(Some(7), AdminState::Drain), &up, false),
            Some(0)
        );
        assert_eq!(
            effective_weight(3, &ov(None, AdminState::Drain), &down, false),
            None
        );
        assert_eq!(
            effective_weight(3, &ov(None, AdminState::Disabled), &up, false),
            None
        );
        assert!(ov(None, AdminState::Enabled).is_empty());
        assert!(!ov(Some(1), AdminState::Enabled).is_empty());
    }
}

//! How operators, metrics and the admin API name a backend: its service, address and port.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::Serialize;

/// A backend as operators name it: its service, address and port (0: the client's port).
/// Written `web/198.18.1.10:8080`, `web/[2001:db8::10]:80` or `web/198.18.2.10` (port 0).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct BackendKey {
    /// Service name.
    pub service: String,
    /// Backend address.
    pub addr: IpAddr,
    /// Backend port; 0 keeps the client's destination port.
    pub port: u16,
}

impl BackendKey {
    /// The name of backend `b` of service `svc` in the config.
    pub fn of(svc: &super::Service, b: &super::Backend) -> BackendKey {
        BackendKey {
            service: svc.name.clone(),
            addr: b.addr,
            port: b.port.unwrap_or(0),
        }
    }

    /// The name of backend `b` of upstream `up` of `[[http]]` `http`: service `http/upstream`.
    pub fn of_http(http: &super::Http, up: &super::Upstream, b: &super::HttpBackend) -> BackendKey {
        BackendKey {
            service: format!("{}/{}", http.name, up.name),
            addr: b.addr,
            port: b.port,
        }
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.addr, self.port) {
            (a, 0) => write!(f, "{}/{a}", self.service),
            (a, p) => write!(f, "{}/{}", self.service, SocketAddr::new(a, p)),
        }
    }
}

/// Why an operator's name for a backend or a state was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not `service/address[:port]`.
    #[error("invalid backend {0:?}: expected service/address[:port], like web/198.18.1.10:8080")]
    Backend(String),
    /// Not one of the operator states.
    #[error("invalid state {0:?}: expected enabled, drain or disabled")]
    State(String),
}

impl From<NameError> for String {
    fn from(e: NameError) -> String {
        e.to_string()
    }
}

impl FromStr for BackendKey {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::Backend(s.to_string());
        let (service, rest) = s.rsplit_once('/').ok_or_else(bad)?;
        if service.is_empty() {
            return Err(bad());
        }
        let (addr, port) = if let Ok(sa) = rest.parse::<SocketAddr>() {
            (sa.ip(), sa.port())
        } else if let Ok(a) = rest.parse::<IpAddr>() {
            (a, 0)
        } else if let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            (inner.parse::<IpAddr>().map_err(|_| bad())?, 0)
        } else {
            return Err(bad());
        };
        Ok(BackendKey {
            service: service.to_string(),
            addr,
            port,
        })
    }
}

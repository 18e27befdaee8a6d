//! lb.toml: its schema, the value types serde reads, every rule of the file, and loading.
//!
//! [`load`] reads a file, parses it (every syntax error; the first schema error of each section)
//! and runs [`Config::validate`], which checks every rule serde cannot express, from the range of
//! a single key to the rules that span the file (address families, next hops, overlapping
//! services). A config that loads is one `compile()` can build. [`crate::diag`] places every
//! problem at `file:line:column`.

mod http;
mod key;
mod kubernetes;
mod load;
mod schema;
#[cfg(test)]
mod tests;
mod types;
mod validate;

pub use validate::{
    weights_fit, Host, MemoryEstimate, WeightsTooLarge, MAX_ADMIN_CONNECTIONS,
    MAX_CONNTRACK_CAPACITY, MAX_HTTP_WEIGHT, MAX_TABLE_SIZE, WEIGHTS_HINT,
};

pub use http::{
    Balance, HashKey, HeaderModifier, Http, HttpBackend, HttpLimits, HttpProxy, HttpTimeouts,
    PathType, ProxyProtocol, Redirect, RedirectScheme, Route, RouteKind, TlsCert, Upstream,
    UpstreamRef, UpstreamTls,
};
pub use key::{BackendKey, NameError};
pub use kubernetes::{
    default_gateway_controller, default_ingress_controller, default_load_balancer_class,
    Kubernetes, LeaderElection,
};
pub use load::{load, load_with_text, read_bytes, read_text, MAX_CONFIG_BYTES};
pub use schema::*;
pub use types::{IpPrefix, MacAddr, PortRange, StatusRange, ValueError};

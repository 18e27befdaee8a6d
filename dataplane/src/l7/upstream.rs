//! How the proxy talks to a service's backends: plain TCP, or with a PROXY v2 header first, or
//! over TLS (or both: the header goes first, in clear, then the TLS handshake, as HAProxy's
//! `send-proxy-v2 ssl` does).
//!
//! [`UpstreamSpec`] is plain data from the config; [`Upstream`] is its compiled form in the route
//! table, with the TLS client settings loaded (CA file read) when the table is compiled, so a
//! reload picks up a changed CA file.

use super::tls::{client_config, TlsError};
use rustls::ClientConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// The PROXY protocol version sent first on every new backend connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyProtocol {
    /// The binary version 2 header ([`super::proxy_proto::ProxyHeader`]).
    V2,
}

/// TLS to a service's backends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendTlsSpec {
    /// PEM file of the CA certificates backends' certificates must chain to.
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and verified; None: the backend's address is verified, no SNI is sent.
    pub server_name: Option<String>,
    /// Accept any certificate (lab use only: anyone on the path can read and change traffic).
    pub insecure_skip_verify: bool,
}

/// How a service's backend connections are made (the default: plain TCP).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UpstreamSpec {
    /// A PROXY header first on each new connection. Such a connection carries one client's
    /// address, so it is private to the client connection that opened it (never pooled for
    /// others, as HAProxy marks `send-proxy-v2` connections private).
    pub proxy_protocol: Option<ProxyProtocol>,
    /// TLS to the backends.
    pub tls: Option<BackendTlsSpec>,
}

/// A compiled [`UpstreamSpec`]: the spec, and the TLS client settings loaded from it.
#[derive(Clone, Debug, Default)]
pub struct Upstream {
    /// What it was compiled from (also the transport's pool key with the address: connections
    /// made with other settings are never reused for it).
    pub spec: UpstreamSpec,
    /// The TLS client settings, or why they could not be loaded (then every connection to the
    /// service fails: 502).
    pub tls: Option<Result<Arc<ClientConfig>, Arc<TlsError>>>,
}

impl Upstream {
    /// Loads the TLS settings of `spec` (reads the CA file).
    pub fn load(spec: &UpstreamSpec) -> Upstream {
        Upstream {
            spec: spec.clone(),
            tls: spec
                .tls
                .as_ref()
                .map(|t| client_config(t).map_err(Arc::new)),
        }
    }

    /// True when connections carry one client's PROXY header (not to be shared).
    pub fn is_private(&self) -> bool {
        self.spec.proxy_protocol.is_some()
    }
}

impl PartialEq for Upstream {
    /// Two loads of the same spec are the same upstream.
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

impl Eq for Upstream {}

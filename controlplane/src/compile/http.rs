//! `[[http]]` -> what the L7 transport serves: per listener, the route table's spec, the
//! connection settings and the certificates. Pure, like the rest of compile.
//!
//! One [`HttpListener`] per `[[http]]` (not one table for every listener): the route table has
//! one default backend, and routes and upstream names are local to their `[[http]]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dataplane::l7::route::{
    BackendRef, EndpointSpec, HashKey as CoreHashKey, HeaderModifier as CoreHeaderModifier, Origin,
    PathMatch, PathRewrite, Policy, Redirect as CoreRedirect, RedirectStatus, RouteSpec, Scheme,
    ServiceSpec, TableSpec,
};
use dataplane::l7::upstream::{BackendTlsSpec, ProxyProtocol as CoreProxyProtocol, UpstreamSpec};
use dataplane::l7::{ConnConfig, Limits, Timeouts};

use super::Adjust;
use crate::config::{
    BackendKey, Balance, Config, HashKey, HeaderModifier, Http, PathType, ProxyProtocol, Redirect,
    RedirectScheme, RouteKind, Upstream, UpstreamRef,
};

/// One `[[http]]` as the transport takes it.
#[derive(Clone, Debug)]
pub struct HttpListener {
    /// Its name (metrics, logs).
    pub name: String,
    /// Sockets to listen on.
    pub listen: Vec<SocketAddr>,
    /// Certificates, the default first; empty: plain HTTP.
    pub tls: Vec<HttpCert>,
    /// Routes and upstreams, for `l7::RouteTable::compile`. Upstream `u` of `[[http]]` `h` is
    /// the service named `u`; its endpoints are in the config's order, backends taken out by
    /// `adjust` left out.
    pub routes: TableSpec,
    /// Limits, timeouts and buffer size of every connection.
    pub conn: ConnConfig,
    /// Connection counts and the backend pool (`[http.proxy]`).
    pub proxy: ProxySettings,
}

/// `[http.proxy]` as the transport takes it (a listener keeps them while it runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    /// Client connections per worker.
    pub max_conns: usize,
    /// Idle backend connections kept per backend address, per worker.
    pub pool_per_backend: usize,
    /// How long an idle backend connection is kept (ms).
    pub pool_idle: u64,
    /// How long a closing client connection is drained (ms).
    pub linger: u64,
}

/// One certificate chain and key, with the SNI names it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCert {
    /// SNI names, exact or `*.suffix`; empty: only as the default.
    pub names: Vec<String>,
    /// PEM certificate chain (path as resolved by `Config::resolve_paths`).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// How operators, metrics and overrides name an L7 backend: service `http/upstream`.
pub fn backend_key(http: &Http, up: &Upstream, b: &crate::config::HttpBackend) -> BackendKey {
    BackendKey::of_http(http, up, b)
}

/// Every `[[http]]` of `cfg` (validated), backend weights through `adjust`.
pub fn listeners(cfg: &Config, adjust: Adjust<'_>) -> Vec<HttpListener> {
    cfg.http.iter().map(|h| listener(h, adjust)).collect()
}

/// Upstream `up` of `http` as the route table takes it, backend weights through `adjust`.
pub fn upstream_service(http: &Http, up: &Upstream, adjust: Adjust<'_>) -> ServiceSpec {
    ServiceSpec {
        name: up.name.clone(),
        endpoints: up
            .backends
            .iter()
            .filter_map(|b| {
                adjust(&backend_key(http, up, b), b.weight).map(|weight| EndpointSpec {
                    addr: b.socket(),
                    weight,
                })
            })
            .collect(),
        policy: policy(up),
        upstream: upstream(up),
    }
}

pub(super) fn listener(http: &Http, adjust: Adjust<'_>) -> HttpListener {
    let services = http
        .upstreams
        .iter()
        .map(|up| upstream_service(http, up, adjust))
        .collect();
    let routes = http
        .routes
        .iter()
        .map(|r| RouteSpec {
            cookies: r
                .cookies
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            origin: match r.kind {
                RouteKind::Ingress => Origin::Ingress,
                RouteKind::Gateway => Origin::Gateway,
            },
            hosts: r.hosts.clone(),
            path: match r.path_type {
                PathType::Exact => PathMatch::Exact(r.path.clone()),
                PathType::Prefix => PathMatch::Prefix(r.path.clone()),
                PathType::ImplementationSpecific => {
                    PathMatch::ImplementationSpecific(r.path.clone())
                }
            },
            method: r.method.clone(),
            headers: r
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            backends: r.upstreams.iter().map(backend_ref).collect(),
            redirect: r.redirect.as_ref().map(redirect),
            request_headers: r.request_headers.as_ref().map(header_modifier),
        })
        .collect();
    HttpListener {
        name: http.name.clone(),
        listen: http.listen.clone(),
        tls: certs(http),
        routes: TableSpec {
            services,
            routes,
            default_backend: http.default_upstream.as_ref().map(|name| BackendRef {
                service: name.clone(),
                weight: 1,
            }),
        },
        conn: conn_config(http),
        proxy: ProxySettings {
            max_conns: http.proxy.max_connections,
            pool_per_backend: http.proxy.pool_per_backend,
            pool_idle: ms(http.proxy.pool_idle),
            linger: ms(http.proxy.linger),
        },
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `redirect` (validated: status 301 or 302, at most one of path and path_prefix).
fn redirect(r: &Redirect) -> CoreRedirect {
    CoreRedirect {
        scheme: r.scheme.map(|s| match s {
            RedirectScheme::Http => Scheme::Http,
            RedirectScheme::Https => Scheme::Https,
        }),
        host: r.host.clone(),
        port: r.port,
        path: match (&r.path, &r.path_prefix) {
            (Some(p), _) => Some(PathRewrite::ReplaceFull(p.clone())),
            (None, Some(p)) => Some(PathRewrite::ReplacePrefix(p.clone())),
            (None, None) => None,
        },
        status: if r.status == 301 {
            RedirectStatus::MovedPermanently
        } else {
            RedirectStatus::Found
        },
    }
}

/// `request_headers`, in the config's order (names sorted, as the TOML tables hold them).
fn header_modifier(m: &HeaderModifier) -> CoreHeaderModifier {
    let pairs = |map: &std::collections::BTreeMap<String, String>| {
        map.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    };
    CoreHeaderModifier {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.clone(),
    }
}

fn backend_ref(r: &UpstreamRef) -> BackendRef {
    BackendRef {
        service: r.name.clone(),
        weight: r.weight,
    }
}

/// How connections to the upstream's backends are made (CA path as resolved by
/// `Config::resolve_paths`; the file is read when the route table is compiled).
fn upstream(up: &Upstream) -> UpstreamSpec {
    UpstreamSpec {
        proxy_protocol: up.proxy_protocol.map(|p| match p {
            ProxyProtocol::V2 => CoreProxyProtocol::V2,
        }),
        tls: up.tls.as_ref().map(|t| BackendTlsSpec {
            ca: t.ca.clone(),
            server_name: t.server_name.clone(),
            insecure_skip_verify: t.insecure_skip_verify,
        }),
    }
}

fn policy(up: &Upstream) -> Policy {
    match up.balance {
        Balance::RoundRobin => Policy::RoundRobin,
        Balance::LeastRequests => Policy::LeastOutstanding,
        Balance::Hash => Policy::Hash(match &up.hash_key {
            None | Some(HashKey::ClientIp) => CoreHashKey::ClientAddr,
            Some(HashKey::Header(n)) => CoreHashKey::Header(n.clone()),
            Some(HashKey::Cookie(n)) => CoreHashKey::Cookie(n.clone()),
        }),
        Balance::Sticky => match &up.hash_key {
            Some(HashKey::Cookie(n)) => Policy::Sticky(n.clone()),
            // Refused by validation; the client address keeps it balanced if it came here.
            _ => Policy::Hash(CoreHashKey::ClientAddr),
        },
    }
}

/// The default certificate first (the one marked, else the first listed), the rest in order.
fn certs(http: &Http) -> Vec<HttpCert> {
    let default = http.tls.iter().position(|c| c.default).unwrap_or(0);
    let mut out: Vec<HttpCert> = http
        .tls
        .iter()
        .map(|c| HttpCert {
            names: c.sni.clone(),
            cert: c.cert.clone(),
            key: c.key.clone(),
        })
        .collect();
    if default < out.len() {
        let d = out.remove(default);
        out.insert(0, d);
    }
    out
}

fn conn_config(http: &Http) -> ConnConfig {
    let (t, l) = (&http.timeouts, &http.limits);
    ConnConfig {
        limits: Limits {
            max_request_line: l.max_request_line,
            max_head: l.max_head,
            max_headers: l.max_headers,
            max_chunk_line: l.max_chunk_line,
            max_body: l.max_body,
        },
        timeouts: Timeouts {
            header_read: ms(t.header_read),
            idle: ms(t.idle),
            connect: ms(t.connect),
            total: ms(t.request),
        },
        buffer: l.buffer,
    }
}

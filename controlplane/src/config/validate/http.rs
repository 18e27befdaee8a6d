//! `[[http]]`: names, listeners (and their clashes with L4 services), TLS files, timeouts and
//! limits, upstreams and their backends, routes (hosts, paths, matches, upstream references).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use dataplane::l7::filters::{self, FilterError, PathRewrite};
use dataplane::l7::tls::{self, CertSpec, TlsError};
use dataplane::l7::upstream::BackendTlsSpec;

use super::check_unicast;
use crate::config::http::{
    is_token, Balance, HashKey, HeaderModifier, Http, PathType, Redirect, Route, RouteKind,
    TlsCert, Upstream, UpstreamTls,
};
use crate::config::schema::{Backend, Config, Pool, Protocol, Service};
use crate::diag::Problem;

/// Largest weight of a backend or of an upstream in a route (Gateway API's bound too): weights
/// are relative, and this keeps every sum of them far from overflow.
pub const MAX_HTTP_WEIGHT: u32 = 1_000_000;

/// Largest request head a listener may accept: larger heads only help a client hold memory.
const MAX_HEAD_LIMIT: usize = 1 << 20;

/// Largest per-direction buffer: every connection may hold two of them.
const MAX_BUFFER: usize = 64 << 20;

/// Longest host name a route may match: the route table lowercases request hosts on the stack in
/// 256 bytes, and DNS names stop at 253.
const MAX_HOST: usize = 253;

/// Every `[[http]]`, then what they claim together (names, sockets, L4 VIPs).
pub(super) fn check(cfg: &Config, out: &mut Vec<Problem>) {
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(cfg.http.len());
    let mut sockets: Vec<(SocketAddr, usize)> = Vec::new();
    for (i, http) in cfg.http.iter().enumerate() {
        let path = format!("http[{i}]");
        let at = format!("http {}", http.name);
        check_name(&http.name, "http", &format!("{path}.name"), out);
        if let Some(first) = names.insert(http.name.as_str(), i) {
            out.push(
                Problem::new(
                    format!("{path}.name"),
                    format!("{at}: name already used by http #{}", first + 1),
                )
                .hint("http names key metrics and the admin API: make each one unique"),
            );
        }
        check_listen(cfg, http, &at, &path, &mut sockets, i, out);
        check_tls(&http.tls, &at, &path, out);
        check_timeouts(http, &at, &path, out);
        check_limits(http, &at, &path, out);
        check_proxy(http, &at, &path, out);
        let upstreams: Vec<&str> = http.upstreams.iter().map(|u| u.name.as_str()).collect();
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(upstreams.len());
        for (k, up) in http.upstreams.iter().enumerate() {
            let up_path = format!("{path}.upstreams[{k}]");
            if seen.insert(up.name.as_str(), k).is_some() {
                out.push(
                    Problem::new(
                        format!("{up_path}.name"),
                        format!("{at}: upstream {} is defined twice", up.name),
                    )
                    .hint("routes name upstreams: make each name unique in its [[http]]"),
                );
            }
            check_upstream(http, up, &up_path, out);
        }
        let names = Names {
            list: &upstreams,
            set: &seen,
        };
        // The first route of each match, so a later one with the same match is found in one
        // lookup (the cluster writes thousands of routes into one [[http]]).
        let mut first_of: HashMap<MatchKey<'_>, usize> = HashMap::with_capacity(http.routes.len());
        for (k, route) in http.routes.iter().enumerate() {
            let first = *first_of.entry(match_key(route)).or_insert(k);
            check_route(
                http,
                route,
                names,
                &format!("{path}.routes[{k}]"),
                (k, (first != k).then_some(first)),
                out,
            );
        }
        if let Some(name) = &http.default_upstream {
            check_ref(&at, name, names, &format!("{path}.default_upstream"), out);
        }
    }
}

/// The rules of upstreams `(http, upstream)` (indices into `cfg.http` and its upstreams) alone:
/// for a change that replaced only their backends, so the routes that name them still do.
pub(super) fn check_upstreams(cfg: &Config, idxs: &[(usize, usize)], out: &mut Vec<Problem>) {
    for &(i, k) in idxs {
        let Some(http) = cfg.http.get(i) else {
            continue;
        };
        if let Some(up) = http.upstreams.get(k) {
            check_upstream(http, up, &format!("http[{i}].upstreams[{k}]"), out);
        }
    }
}

/// Names appear in logs, metrics and admin API paths (`http/upstream/backend`).
fn check_name(name: &str, what: &str, path: &str, out: &mut Vec<Problem>) {
    if name.is_empty() || name.chars().any(|c| c.is_control() || c == '/') {
        out.push(
            Problem::new(
                path,
                format!("{what} {name:?}: name is empty or has control characters or '/'"),
            )
            .hint("names appear in logs, metrics and the admin API: use e.g. \"web\""),
        );
    }
}

/// Listen sockets: at least one, a real port, each claimed once (a wildcard address claims every
/// address of its family), none on an L4 service's VIP.
fn check_listen(
    cfg: &Config,
    http: &Http,
    at: &str,
    path: &str,
    sockets: &mut Vec<(SocketAddr, usize)>,
    idx: usize,
    out: &mut Vec<Problem>,
) {
    if http.listen.is_empty() {
        out.push(
            Problem::new(format!("{path}.listen"), format!("{at}: listen is empty"))
                .hint("give the sockets to serve on, e.g. listen = [\"198.18.0.10:80\"]"),
        );
    }
    for (k, sa) in http.listen.iter().enumerate() {
        let key = format!("{path}.listen[{k}]");
        if sa.port() == 0 {
            out.push(
                Problem::new(&key, format!("{at}: listen {sa} has port 0"))
                    .hint("give a fixed port, e.g. 80 or 443"),
            );
        }
        if sa.ip().is_multicast() || sa.ip() == IpAddr::from([255, 255, 255, 255]) {
            out.push(
                Problem::new(
                    &key,
                    format!("{at}: listen {sa} is a multicast or broadcast address"),
                )
                .hint("listen on a unicast address, or 0.0.0.0 / [::] for every address"),
            );
        }
        // A wildcard address takes the port on every address of its family: with SO_REUSEPORT
        // both binds would succeed and the kernel would split connections between them.
        let overlaps = |other: &SocketAddr| {
            other.port() == sa.port()
                && (other.ip() == sa.ip()
                    || ((other.ip().is_unspecified() || sa.ip().is_unspecified())
                        && other.is_ipv4() == sa.is_ipv4()))
        };
        if let Some(&(other, first)) = sockets.iter().find(|(other, _)| overlaps(other)) {
            let whose = if first == idx {
                "here".to_string()
            } else {
                format!("by http {}", cfg.http[first].name)
            };
            out.push(
                Problem::new(&key, format!("{at}: listen {sa} overlaps {other}, listened on {whose}"))
                    .hint("each address and port is served by one [[http]], once; 0.0.0.0 and [::] take the port on every address"),
            );
        }
        sockets.push((*sa, idx));
        for (s, svc) in cfg.services.iter().enumerate() {
            let same_addr = svc.vip == sa.ip()
                || (sa.ip().is_unspecified() && sa.ip().is_ipv4() == svc.vip.is_ipv4());
            let same_port = svc.ports.is_empty()
                || svc.ports.iter().any(|r| (r.lo..=r.hi).contains(&sa.port()));
            if svc.protocol == Protocol::Tcp && same_addr && same_port {
                out.push(
                    Problem::new(
                        &key,
                        format!(
                            "{at}: listen {sa} takes TCP port {} of service {} (services[{s}]), VIP {}",
                            sa.port(),
                            svc.name,
                            svc.vip
                        ),
                    )
                    .hint("an address and port is served either by an L4 service or by an HTTP listener: change one of them"),
                );
            }
        }
    }
}

/// Certificates: files that read, parse and belong together; SNI names valid and each used once;
/// at most one default.
fn check_tls(certs: &[TlsCert], at: &str, path: &str, out: &mut Vec<Problem>) {
    let defaults = certs.iter().filter(|c| c.default).count();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (k, cert) in certs.iter().enumerate() {
        let c_path = format!("{path}.tls[{k}]");
        if cert.default && defaults > 1 {
            out.push(
                Problem::new(
                    format!("{c_path}.default"),
                    format!("{at}: {defaults} certificates are marked default"),
                )
                .hint("mark one (or none: then the first is the default)"),
            );
        }
        for (n, name) in cert.sni.iter().enumerate() {
            let n_path = format!("{c_path}.sni[{n}]");
            if let Some((why, hint)) = bad_host(name) {
                out.push(Problem::new(&n_path, format!("{at}: sni {name:?} {why}")).hint(hint));
            } else if let Some(first) = names.insert(name.to_ascii_lowercase(), k) {
                out.push(
                    Problem::new(
                        &n_path,
                        format!(
                            "{at}: sni {name:?} is already served by certificate #{}",
                            first + 1
                        ),
                    )
                    .hint("each name picks one certificate: list it once"),
                );
            }
        }
        if let Err((key, message)) = load_pair(&cert.cert, &cert.key) {
            let file = if key == "key" { &cert.key } else { &cert.cert };
            out.push(
                Problem::new(
                    format!("{c_path}.{key}"),
                    format!("{at}: {} {}: {message}", key, file.display()),
                )
                .hint(match key {
                    "cert" => "a PEM file with the certificate chain, leaf first (-----BEGIN CERTIFICATE-----); relative paths start at the config file's directory",
                    _ => "a PEM file with the certificate's private key (-----BEGIN PRIVATE KEY-----, RSA or EC); relative paths start at the config file's directory",
                }),
            );
        }
    }
}

/// TLS to backends: a CA file that reads and holds certificates (unless verification is off, on
/// purpose and without a CA), a server name rustls takes.
fn check_upstream_tls(tls: &UpstreamTls, at: &str, path: &str, out: &mut Vec<Problem>) {
    let t_path = format!("{path}.tls");
    match (&tls.ca, tls.insecure_skip_verify) {
        (None, false) => out.push(
            Problem::new(&t_path, format!("{at}: tls has no ca to verify backends with"))
                .hint("set ca = \"backend-ca.pem\" (PEM, relative to the config file's directory); insecure_skip_verify = true skips verification, for labs only"),
        ),
        (Some(_), true) => out.push(
            Problem::new(
                format!("{t_path}.insecure_skip_verify"),
                format!("{at}: tls has a ca but insecure_skip_verify = true: the ca would not be used"),
            )
            .hint("remove insecure_skip_verify to verify backends against ca"),
        ),
        _ => {}
    }
    let spec = BackendTlsSpec {
        ca: tls.ca.clone(),
        server_name: tls.server_name.clone(),
        insecure_skip_verify: tls.insecure_skip_verify,
    };
    let ca = || tls.ca.as_deref().unwrap_or(Path::new("")).display();
    let problem = match tls::client_config(&spec) {
        Ok(_) | Err(TlsError::NoCa) => return,
        Err(TlsError::ServerName(name)) => Problem::new(
            format!("{t_path}.server_name"),
            format!("{at}: tls server_name {name:?} is not a DNS name or an IP address"),
        )
        .hint("the name the backends' certificates carry, e.g. \"api.internal\""),
        Err(TlsError::Read { source, .. }) => {
            Problem::new(format!("{t_path}.ca"), format!("{at}: ca {}: cannot read it: {source}", ca()))
                .hint("a PEM file with the CA certificates (-----BEGIN CERTIFICATE-----); relative paths start at the config file's directory")
        }
        Err(TlsError::Pem { what, .. }) => {
            Problem::new(format!("{t_path}.ca"), format!("{at}: ca {}: {what}", ca()))
                .hint("a PEM file with the CA certificates (-----BEGIN CERTIFICATE-----)")
        }
        Err(e) => Problem::new(&t_path, format!("{at}: tls: {e}")),
    };
    out.push(problem);
}

/// Loads a certificate chain and its key as the listener will (`l7::tls::load_cert`, which also
/// checks the key is the certificate's): `Err((which key, why))`.
fn load_pair(cert: &Path, key: &Path) -> Result<(), (&'static str, String)> {
    let spec = CertSpec {
        names: Vec::new(),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    let which = |p: &Path| if p == cert { "cert" } else { "key" };
    match tls::load_cert(&spec, &tls::provider()) {
        Ok(_) => Ok(()),
        Err(TlsError::Read { path, source }) => {
            Err((which(&path), format!("cannot read it: {source}")))
        }
        Err(TlsError::Pem { path, what }) if what.starts_with("no ") => {
            Err((which(&path), format!("holds {what}")))
        }
        Err(TlsError::Pem { path, what }) => {
            Err((which(&path), format!("is not valid PEM: {what}")))
        }
        Err(TlsError::Key { what, .. }) => Err((
            "key",
            format!("does not fit the certificate or is not a usable key: {what}"),
        )),
        Err(e) => Err(("key", e.to_string())),
    }
}

/// Every timeout above 0; a connect timeout inside the request timeout (else it never fires).
fn check_timeouts(http: &Http, at: &str, path: &str, out: &mut Vec<Problem>) {
    let t = &http.timeouts;
    for (name, d) in [
        ("header_read", t.header_read),
        ("idle", t.idle),
        ("connect", t.connect),
        ("request", t.request),
    ] {
        if d.is_zero() {
            out.push(Problem::new(
                format!("{path}.timeouts.{name}"),
                format!("{at}: timeouts.{name} must be above 0"),
            ));
        }
    }
    if !t.request.is_zero() && t.connect > t.request {
        out.push(
            Problem::new(
                format!("{path}.timeouts.connect"),
                format!(
                    "{at}: timeouts.connect {:?} is longer than timeouts.request {:?}",
                    t.connect, t.request
                ),
            )
            .hint("the request timeout would end the connect first, so no other backend is tried: lower connect"),
        );
    }
}

/// Limits the core can keep: a request line inside the head, a head inside the buffer, a field
/// count the parser holds.
fn check_limits(http: &Http, at: &str, path: &str, out: &mut Vec<Problem>) {
    let l = &http.limits;
    let mut push = |key: &str, message: String, hint: &str| {
        out.push(
            Problem::new(
                format!("{path}.limits.{key}"),
                format!("{at}: limits.{key} {message}"),
            )
            .hint(hint),
        );
    };
    let max_fields = dataplane::l7::head::MAX_HEADERS;
    if !(1024..=MAX_HEAD_LIMIT).contains(&l.max_head) {
        push(
            "max_head",
            format!("{} is outside 1024..={MAX_HEAD_LIMIT}", l.max_head),
            "the default, 32768, fits every common client",
        );
    }
    if l.max_request_line < 64 || l.max_request_line > l.max_head {
        push(
            "max_request_line",
            format!(
                "{} is outside 64..=max_head ({})",
                l.max_request_line, l.max_head
            ),
            "the request line is part of the head; the default is 8192",
        );
    }
    if !(1..=max_fields).contains(&l.max_headers) {
        push(
            "max_headers",
            format!("{} is outside 1..={max_fields}", l.max_headers),
            "the default is 100",
        );
    }
    if !(16..=64 * 1024).contains(&l.max_chunk_line) {
        push(
            "max_chunk_line",
            format!("{} is outside 16..=65536", l.max_chunk_line),
            "a chunk-size line with its extensions; the default is 4096",
        );
    }
    if l.buffer < l.max_head || l.buffer > MAX_BUFFER {
        push(
            "buffer",
            format!(
                "{} is outside max_head ({})..={MAX_BUFFER}",
                l.buffer, l.max_head
            ),
            "a whole request head must fit in the buffer; the default is 65536",
        );
    }
}

/// Most client connections one worker may hold (each holds four buffers).
const MAX_CONNECTIONS: usize = 1_000_000;
/// Most idle backend connections kept per backend and worker.
const MAX_POOL: usize = 10_000;
/// Longest an idle backend connection is kept, and a closing client connection drained.
const MAX_PROXY_WAIT: Duration = Duration::from_secs(3600);

/// `[http.proxy]`: counts a worker can hold, waits a timer can arm.
fn check_proxy(http: &Http, at: &str, path: &str, out: &mut Vec<Problem>) {
    let p = &http.proxy;
    let mut push = |key: &str, message: String, hint: &str| {
        out.push(
            Problem::new(
                format!("{path}.proxy.{key}"),
                format!("{at}: proxy.{key} {message}"),
            )
            .hint(hint),
        );
    };
    if !(1..=MAX_CONNECTIONS).contains(&p.max_connections) {
        push(
            "max_connections",
            format!("{} is outside 1..={MAX_CONNECTIONS}", p.max_connections),
            "client connections per worker; the default is 10000",
        );
    }
    if p.pool_per_backend > MAX_POOL {
        push(
            "pool_per_backend",
            format!("{} is above {MAX_POOL}", p.pool_per_backend),
            "idle backend connections per backend and worker (0 keeps none); the default is 64",
        );
    }
    if p.pool_idle.is_zero() || p.pool_idle > MAX_PROXY_WAIT {
        push(
            "pool_idle",
            format!("{:?} is outside 1ms..=1h", p.pool_idle),
            "how long an idle backend connection is kept; the default is \"30s\"",
        );
    }
    if p.linger > MAX_PROXY_WAIT {
        push(
            "linger",
            format!("{:?} is above 1h", p.linger),
            "how long a closing client connection is drained; the default is \"2s\"",
        );
    }
}

/// An upstream: name, policy keys, backends, health check.
fn check_upstream(http: &Http, up: &Upstream, path: &str, out: &mut Vec<Problem>) {
    let at = format!("http {} upstream {}", http.name, up.name);
    check_name(&up.name, "upstream", &format!("{path}.name"), out);
    match (up.balance, &up.hash_key) {
        (Balance::Hash, _) => {}
        (Balance::Sticky, Some(HashKey::Cookie(_))) => {}
        (Balance::Sticky, _) => out.push(
            Problem::new(
                format!("{path}.balance"),
                format!("{at}: balance = \"sticky\" needs the cookie it sets"),
            )
            .hint("add hash_key = \"cookie:NAME\" (e.g. \"cookie:INGRESSCOOKIE\")"),
        ),
        (_, Some(_)) => out.push(
            Problem::new(
                format!("{path}.hash_key"),
                format!("{at}: hash_key is only used with balance = \"hash\" or \"sticky\""),
            )
            .hint("set balance = \"hash\", or remove hash_key"),
        ),
        (_, None) => {}
    }
    if up.backends.is_empty() {
        out.push(
            Problem::new(format!("{path}.backends"), format!("{at}: no backends"))
                .hint("list backends = [{ addr = \"198.18.1.10\", port = 8080 }]; a route with upstreams = [] refuses on purpose"),
        );
    }
    if let Some(tls) = &up.tls {
        check_upstream_tls(tls, &at, path, out);
    }
    let mut seen: HashMap<SocketAddr, usize> = HashMap::with_capacity(up.backends.len());
    for (k, b) in up.backends.iter().enumerate() {
        let b_path = format!("{path}.backends[{k}]");
        check_unicast(out, b.addr, || {
            (format!("{b_path}.addr"), format!("{at} backend"))
        });
        if b.port == 0 {
            out.push(Problem::new(
                format!("{b_path}.port"),
                format!("{at}: backend {} has port 0", b.addr),
            ));
        }
        if b.weight > MAX_HTTP_WEIGHT {
            out.push(
                Problem::new(
                    format!("{b_path}.weight"),
                    format!(
                        "{at}: backend {} weight {} is above {MAX_HTTP_WEIGHT}",
                        b.socket(),
                        b.weight
                    ),
                )
                .hint("weights are relative (1 and 3 split like 100 and 300)"),
            );
        }
        if let Some(first) = seen.insert(b.socket(), k) {
            out.push(
                Problem::new(
                    format!("{b_path}.addr"),
                    format!(
                        "{at}: backend {} is listed twice (#{} and #{})",
                        b.socket(),
                        first + 1,
                        k + 1
                    ),
                )
                .hint("list a backend once; raise its weight instead"),
            );
        }
    }
    if let Some(hc) = &up.health_check {
        // The L4 rules of a check apply unchanged; they read the backends' ports from a pool.
        let svc = Service {
            name: format!("{}/{}", http.name, up.name),
            vip: http
                .listen
                .first()
                .map_or(IpAddr::from([0, 0, 0, 0]), |s| s.ip()),
            ports: Vec::new(),
            protocol: Protocol::Tcp,
            affinity: Default::default(),
            table_size: dataplane::maglev::DEFAULT_TABLE_SIZE,
            pools: vec![Pool {
                name: up.name.clone(),
                mode: crate::config::Mode::FullNat,
                weight: 1,
                snat: Vec::new(),
                encap_source: Vec::new(),
                gue_port: 0,
                backends: up
                    .backends
                    .iter()
                    .map(|b| Backend {
                        addr: b.addr,
                        port: Some(b.port),
                        weight: b.weight,
                        kind: Default::default(),
                    })
                    .collect(),
            }],
            health_check: None,
            passive: None,
            all_down: Default::default(),
        };
        hc.validate(&svc, &format!("{path}.health_check"), out);
    }
}

/// A route: hosts, path, matches allowed by its kind, upstream references and weights, and that
/// no earlier route already takes every request it matches.
fn check_route(
    http: &Http,
    route: &Route,
    upstreams: Names<'_>,
    path: &str,
    (idx, same_as): (usize, Option<usize>),
    out: &mut Vec<Problem>,
) {
    let at = format!("http {} route #{}", http.name, idx + 1);
    for (k, host) in route.hosts.iter().enumerate() {
        if let Some((why, hint)) = bad_host(host) {
            out.push(
                Problem::new(
                    format!("{path}.hosts[{k}]"),
                    format!("{at}: host {host:?} {why}"),
                )
                .hint(hint),
            );
        }
    }
    if let Some(why) = bad_path(&route.path) {
        out.push(
            Problem::new(
                format!("{path}.path"),
                format!("{at}: path {:?} {why}", route.path),
            )
            .hint("a path starts with '/' and holds visible ASCII only, no query: e.g. \"/api\""),
        );
    }
    if route.kind == RouteKind::Ingress {
        if route.method.is_some() {
            out.push(
                Problem::new(
                    format!("{path}.method"),
                    format!("{at}: method matches are for gateway routes"),
                )
                .hint("set kind = \"gateway\" (Gateway API HTTPRoute rules), or remove method"),
            );
        }
        if !route.headers.is_empty() {
            out.push(
                Problem::new(
                    format!("{path}.headers"),
                    format!("{at}: header matches are for gateway routes"),
                )
                .hint("set kind = \"gateway\" (Gateway API HTTPRoute rules), or remove headers"),
            );
        }
        if !route.cookies.is_empty() {
            out.push(
                Problem::new(
                    format!("{path}.cookies"),
                    format!("{at}: cookie matches are for gateway routes"),
                )
                .hint("set kind = \"gateway\", or remove cookies"),
            );
        }
    }
    if let Some(m) = &route.method {
        if !is_token(m) {
            out.push(
                Problem::new(
                    format!("{path}.method"),
                    format!("{at}: method {m:?} is not an HTTP method"),
                )
                .hint("e.g. \"GET\" (methods are case-sensitive)"),
            );
        }
    }
    let mut lower: HashMap<String, &str> = HashMap::with_capacity(route.headers.len());
    for (name, value) in &route.headers {
        // A name with '.' cannot be a key path segment: point at the table instead.
        let h_path = if name.contains(['.', '[']) {
            format!("{path}.headers")
        } else {
            format!("{path}.headers.{name}")
        };
        if !is_token(name) {
            out.push(Problem::new(
                &h_path,
                format!("{at}: {name:?} is not a header name"),
            ));
        } else if let Some(other) = lower.insert(name.to_ascii_lowercase(), name) {
            out.push(
                Problem::new(
                    &h_path,
                    format!("{at}: header {name:?} is matched twice (also as {other:?})"),
                )
                .hint("header names are case-insensitive: keep one"),
            );
        }
        if value
            .bytes()
            .any(|b| b != b' ' && b != b'\t' && !b.is_ascii_graphic())
        {
            out.push(Problem::new(
                &h_path,
                format!(
                    "{at}: header {name:?} value {value:?} has control or non-ASCII characters"
                ),
            ));
        }
    }
    for (name, value) in &route.cookies {
        let c_path = if name.contains(['.', '[']) {
            format!("{path}.cookies")
        } else {
            format!("{path}.cookies.{name}")
        };
        if !is_token(name) {
            out.push(Problem::new(
                &c_path,
                format!("{at}: {name:?} is not a cookie name"),
            ));
        }
        // RFC 6265 cookie-octets: visible ASCII but '"', ',', ';' and the backslash.
        if value.is_empty()
            || value
                .bytes()
                .any(|b| !b.is_ascii_graphic() || matches!(b, b'"' | b',' | b';' | b'\\'))
        {
            out.push(
                Problem::new(
                    &c_path,
                    format!("{at}: cookie {name:?} value {value:?} is not a cookie value"),
                )
                .hint("visible ASCII without spaces, '\"', ',', ';' or '\\'"),
            );
        }
    }
    if let Some(redirect) = &route.redirect {
        check_redirect(route, redirect, &at, path, out);
    }
    if let Some(mods) = &route.request_headers {
        check_request_headers(mods, &at, &format!("{path}.request_headers"), out);
        if route.redirect.is_some() {
            out.push(
                Problem::new(
                    format!("{path}.request_headers"),
                    format!(
                        "{at}: request_headers on a route that redirects: no request is sent on"
                    ),
                )
                .hint("remove request_headers, or the redirect"),
            );
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(route.upstreams.len());
    for (k, r) in route.upstreams.iter().enumerate() {
        let r_path = format!("{path}.upstreams[{k}]");
        check_ref(&at, &r.name, upstreams, &format!("{r_path}.name"), out);
        if seen.insert(r.name.as_str(), k).is_some() {
            out.push(
                Problem::new(
                    format!("{r_path}.name"),
                    format!("{at}: upstream {} is listed twice", r.name),
                )
                .hint("list an upstream once per route and give it the sum of the weights"),
            );
        }
        if r.weight > MAX_HTTP_WEIGHT {
            out.push(
                Problem::new(
                    format!("{r_path}.weight"),
                    format!(
                        "{at}: upstream {} weight {} is above {MAX_HTTP_WEIGHT}",
                        r.name, r.weight
                    ),
                )
                .hint("weights are relative (90 and 10 split like 9 and 1)"),
            );
        }
    }
    if !route.upstreams.is_empty() && route.upstreams.iter().all(|r| r.weight == 0) {
        out.push(
            Problem::new(format!("{path}.upstreams"), format!("{at}: every upstream has weight 0"))
                .hint("give one a weight above 0, or write upstreams = [] to refuse these requests on purpose"),
        );
    }
    if let Some(first) = same_as {
        out.push(
            Problem::new(
                path,
                format!(
                    "{at}: matches exactly what route #{} matches, so it never gets a request",
                    first + 1
                ),
            )
            .hint("remove one, or list both routes' upstreams in one with weights"),
        );
    }
}

/// A redirect: a status of 301 or 302, a host name without port, a port, paths that are
/// paths (one of `path` and `path_prefix`, the latter on prefix routes only), no upstreams.
fn check_redirect(route: &Route, r: &Redirect, at: &str, path: &str, out: &mut Vec<Problem>) {
    let r_path = format!("{path}.redirect");
    if !route.upstreams.is_empty() {
        out.push(
            Problem::new(
                format!("{path}.upstreams"),
                format!("{at}: a route that redirects sends no request to upstreams"),
            )
            .hint("remove upstreams (the redirect answers every request of this route), or the redirect"),
        );
    }
    if r.status != 301 && r.status != 302 {
        out.push(
            Problem::new(
                format!("{r_path}.status"),
                format!("{at}: redirect status {} is not 301 or 302", r.status),
            )
            .hint("301 (moved permanently, cached by clients) or 302 (found, the default)"),
        );
    }
    // Each part checked alone, by the core's own rules, so each problem has its place.
    let alone = |f: &dyn Fn(&mut filters::Redirect)| {
        let mut one = filters::Redirect::default();
        f(&mut one);
        one.check()
    };
    if let Some(host) = &r.host {
        if let Err(e) = alone(&|one| one.host = Some(host.clone())) {
            out.push(
                Problem::new(format!("{r_path}.host"), format!("{at}: {e}"))
                    .hint("a name like \"www.example.com\"; the port goes in port"),
            );
        }
    }
    if let Some(port) = r.port {
        if let Err(e) = alone(&|one| one.port = Some(port)) {
            out.push(Problem::new(format!("{r_path}.port"), format!("{at}: {e}")));
        }
    }
    if let Some(p) = &r.path {
        if let Err(e) = alone(&|one| one.path = Some(PathRewrite::ReplaceFull(p.clone()))) {
            out.push(
                Problem::new(format!("{r_path}.path"), format!("{at}: {e}"))
                    .hint("e.g. path = \"/new\"; the request's query string is kept"),
            );
        }
    }
    if let Some(p) = &r.path_prefix {
        if r.path.is_some() {
            out.push(
                Problem::new(
                    format!("{r_path}.path_prefix"),
                    format!("{at}: redirect has both path and path_prefix"),
                )
                .hint("path replaces the whole path, path_prefix only the prefix the route matched: keep one"),
            );
        } else if route.path_type == PathType::Exact {
            out.push(
                Problem::new(
                    format!("{r_path}.path_prefix"),
                    format!("{at}: redirect path_prefix on a route with path_type = \"exact\""),
                )
                .hint("an exact route matches the whole path: use path = \"...\" instead"),
            );
        } else if let Err(e) = alone(&|one| one.path = Some(PathRewrite::ReplacePrefix(p.clone())))
        {
            out.push(
                Problem::new(format!("{r_path}.path_prefix"), format!("{at}: {e}"))
                    .hint("e.g. path_prefix = \"/v2\" turns /v1/items into /v2/items (route path \"/v1\"); \"\" strips the prefix"),
            );
        }
    }
}

/// Header changes: names the proxy does not own, each once per list (names are
/// case-insensitive), values without control characters, so no change can add a head line.
fn check_request_headers(m: &HeaderModifier, at: &str, path: &str, out: &mut Vec<Problem>) {
    let check = |key: String, one: filters::HeaderModifier| {
        one.check().err().map(|e| {
            let hint = match e {
                FilterError::Protected(_) => {
                    "Host, Content-Length, Transfer-Encoding, Connection, Keep-Alive, TE, Trailer, Upgrade, Expect and the X-Forwarded-*/Forwarded fields are the proxy's"
                }
                FilterError::Name(_) => "e.g. \"X-Env\"",
                _ => "values are visible ASCII, spaces and tabs",
            };
            Problem::new(key, format!("{at}: request_headers: {e}")).hint(hint)
        })
    };
    // A name with '.' cannot be a key path segment: point at the table instead.
    let key = |list: &str, name: &str| {
        if name.contains(['.', '[']) {
            format!("{path}.{list}")
        } else {
            format!("{path}.{list}.{name}")
        }
    };
    for (list, pairs) in [("set", &m.set), ("add", &m.add)] {
        let mut lower: HashMap<String, &str> = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            let one = filters::HeaderModifier {
                set: vec![(name.clone(), value.clone())],
                ..Default::default()
            };
            out.extend(check(key(list, name), one));
            if let Some(other) = lower.insert(name.to_ascii_lowercase(), name) {
                out.push(
                    Problem::new(
                        key(list, name),
                        format!(
                            "{at}: request_headers.{list} has {name:?} twice (also as {other:?})"
                        ),
                    )
                    .hint("header names are case-insensitive: keep one"),
                );
            }
        }
    }
    let mut lower: HashMap<String, usize> = HashMap::with_capacity(m.remove.len());
    for (k, name) in m.remove.iter().enumerate() {
        let one = filters::HeaderModifier {
            remove: vec![name.clone()],
            ..Default::default()
        };
        out.extend(check(format!("{path}.remove[{k}]"), one));
        if lower.insert(name.to_ascii_lowercase(), k).is_some() {
            out.push(
                Problem::new(
                    format!("{path}.remove[{k}]"),
                    format!("{at}: request_headers.remove has {name:?} twice"),
                )
                .hint("header names are case-insensitive: keep one"),
            );
        }
    }
}

/// What a route takes requests by (kind, hosts, path and whether it is a prefix, method,
/// headers and cookies): two routes with the same key take the same requests, so the later one
/// is dead.
type MatchKey<'a> = (
    bool,
    Vec<String>,
    &'a str,
    bool,
    Option<&'a str>,
    &'a std::collections::BTreeMap<String, String>,
    &'a std::collections::BTreeMap<String, String>,
);

fn match_key(r: &Route) -> MatchKey<'_> {
    let mut hosts: Vec<String> = r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    hosts.sort();
    hosts.dedup();
    (
        r.kind == crate::config::RouteKind::Gateway,
        hosts,
        &r.path,
        r.path_type != crate::config::PathType::Exact,
        r.method.as_deref(),
        &r.headers,
        &r.cookies,
    )
}

/// The upstream names of one `[[http]]`: in order (for hints) and as a set (for lookups).
#[derive(Clone, Copy)]
struct Names<'a> {
    list: &'a [&'a str],
    set: &'a HashMap<&'a str, usize>,
}

/// A reference to an upstream of the same `[[http]]`, with a "did you mean" when it is a typo.
fn check_ref(at: &str, name: &str, names: Names<'_>, path: &str, out: &mut Vec<Problem>) {
    if names.set.contains_key(name) {
        return;
    }
    let upstreams = names.list;
    let near = upstreams
        .iter()
        .map(|u| (strsim::osa_distance(name, u), *u))
        .filter(|(d, _)| *d <= (name.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d);
    let hint = match near {
        Some((_, u)) => format!("did you mean \"{u}\"?"),
        None if upstreams.is_empty() => {
            "define it in an [[http.upstreams]] table of this [[http]]".into()
        }
        None => format!("upstreams of this [[http]]: {}", upstreams.join(", ")),
    };
    out.push(Problem::new(path, format!("{at}: no upstream named {name:?}")).hint(hint));
}

/// Why `host` cannot be a route or SNI host name, with a hint; `None` when it is fine.
fn bad_host(host: &str) -> Option<(String, &'static str)> {
    let example = "a name like \"app.example.com\" or \"*.example.com\"";
    if host.is_empty() {
        return Some((
            "is empty".into(),
            "leave hosts out (or empty) to match any host",
        ));
    }
    if host.contains(':') || host.starts_with('[') {
        return Some((
            "has a port or is an IPv6 address".into(),
            "hosts are matched without their port: write just the name",
        ));
    }
    if host.len() > MAX_HOST {
        return Some((format!("is longer than {MAX_HOST} characters"), example));
    }
    for (i, label) in host.split('.').enumerate() {
        if label.is_empty() {
            return Some((
                "has an empty label (a leading, trailing or double dot)".into(),
                example,
            ));
        }
        if label == "*" && i == 0 {
            if !host.contains('.') {
                return Some((
                    "is a bare wildcard".into(),
                    "leave hosts out to match any host",
                ));
            }
            continue;
        }
        if label.contains('*') {
            return Some((
                "has a wildcard that is not the whole first label".into(),
                "a wildcard stands for the first label only: \"*.example.com\"",
            ));
        }
        if label.len() > 63 {
            return Some(("has a label longer than 63 characters".into(), example));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Some((
                format!("has label {label:?}, which is not letters, digits and inner '-'"),
                "non-ASCII names are written in punycode (xn--...)",
            ));
        }
    }
    None
}

/// Why `path` can never be a route path; `None` when it is fine.
fn bad_path(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("does not start with '/'")
    } else if path.bytes().any(|b| !b.is_ascii_graphic()) {
        // Request targets are visible ASCII (we refuse others): such a route never matches, and
        // the characters could smuggle into logs.
        Some("has spaces, control or non-ASCII characters")
    } else if path.contains(['?', '#']) {
        Some("has a query or fragment, which routes never see")
    } else {
        None
    }
}

//! The route table: plain route data (from lb.toml or Kubernetes, later) compiled into an
//! immutable table that matches a request in one hash lookup and a short scan.
//!
//! Two origins, one table (the origin of each route picks its rules):
//! - Ingress: `*.x` covers exactly one label; paths Exact, Prefix (element by element,
//!   trailing slash ignored) and ImplementationSpecific (as Prefix); the longest path wins,
//!   Exact before Prefix at equal length; the default backend when nothing matches.
//! - Gateway API HTTPRoute: `*.x` covers one or more labels; Exact before any Prefix, then the
//!   longest prefix, then a method match, then the most header matches, then input order.
//!
//! Hosts are compared without port, case-insensitively. A request picks one host group (exact
//! host, else the most specific wildcard, else the routes without host), then the first rule of
//! that group in precedence order; there is no fall-through to less specific groups (as in
//! ingress-nginx and Envoy's virtual hosts). No rule: the default backend, else 404.

use super::errors::Status;
use super::filters::{FilterError, HeaderRewrite, RedirectRule};
use super::head::RequestHead;
use super::tls::TlsError;
use super::upstream::{Upstream, UpstreamSpec};
use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

pub use super::filters::{HeaderModifier, PathRewrite, Redirect, RedirectStatus, Scheme};

/// Which API a route comes from: it decides wildcard and precedence rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// networking.k8s.io/v1 Ingress (and lb.toml routes).
    Ingress,
    /// gateway.networking.k8s.io HTTPRoute.
    Gateway,
}

/// How a route's path matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path, exactly (case-sensitive).
    Exact(String),
    /// Element by element: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    /// Ingress ImplementationSpecific: read as Prefix.
    ImplementationSpecific(String),
}

/// How a service spreads requests over its endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// In turn, weighted.
    RoundRobin,
    /// The endpoint with the fewest requests in flight (on this worker).
    LeastOutstanding,
    /// The same key goes to the same endpoint while it exists (weighted rendezvous hashing).
    Hash(HashKey),
    /// Sticky sessions: a request whose cookie of this name names a usable endpoint
    /// ([`sticky_token`]) goes to it; any other is balanced in turn (weighted) and its answer
    /// sets the cookie to the endpoint chosen (ingress-nginx's `affinity: cookie`).
    Sticky(String),
}

/// What a sticky cookie holds for the endpoint at `addr`: a fixed hash of the address (FNV-1a
/// over the IPv6 or IPv4-mapped address and the port), the same on every replica and table
/// generation, never 0.
pub fn sticky_token(addr: SocketAddr) -> u64 {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ip.iter().chain(&addr.port().to_be_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// The cookie an answer sets for a sticky session: `name=<16 hex digits>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetCookie<'t> {
    /// The cookie's name.
    pub name: &'t str,
    /// The endpoint's [`sticky_token`].
    pub token: u64,
}

impl SetCookie<'_> {
    /// Appends the `set-cookie` header line (for the whole site, not readable by scripts).
    pub fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let _ = write!(
            out,
            "set-cookie: {}={:016x}; Path=/; HttpOnly\r\n",
            self.name, self.token
        );
    }

    /// The token a cookie value names (16 hex digits), if it is one.
    pub fn parse(value: &[u8]) -> Option<u64> {
        if value.len() != 16 {
            return None;
        }
        u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()
    }
}

/// What a consistent hash is computed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// A request header's value (a missing header hashes as empty).
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The client address.
    ClientAddr,
}

/// One endpoint of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative weight; 0 takes no new requests (drained or down).
    pub weight: u32,
}

/// A named group of endpoints (a Kubernetes Service, an lb.toml backend pool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The name routes refer to.
    pub name: String,
    /// Its endpoints.
    pub endpoints: Vec<EndpointSpec>,
    /// How it picks one.
    pub policy: Policy,
    /// How connections to its endpoints are made (PROXY header, TLS).
    pub upstream: UpstreamSpec,
}

/// A service a route sends to, with its share of the route's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    /// A service name; an unknown name makes the route answer an error.
    pub service: String,
    /// Relative weight among the route's services (canary, blue-green).
    pub weight: u32,
}

/// One route as the controlplane describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Which API it comes from.
    pub origin: Origin,
    /// Host names, exact or `*.suffix`; empty: any host.
    pub hosts: Vec<String>,
    /// The path match.
    pub path: PathMatch,
    /// Gateway only: the method must be this.
    pub method: Option<String>,
    /// Gateway only: each header must be present with exactly this value (names are
    /// case-insensitive).
    pub headers: Vec<(String, String)>,
    /// Gateway only: each cookie (of the Cookie header) must be present with exactly this
    /// value (names are case-sensitive). Counts like a header match for precedence.
    pub cookies: Vec<(String, String)>,
    /// Where matched requests go; empty (or only unknown services): an error answer (Gateway
    /// 500, Ingress 503). Not used when the route redirects.
    pub backends: Vec<BackendRef>,
    /// Answer matched requests with this redirect instead of sending them anywhere.
    pub redirect: Option<Redirect>,
    /// Change the request head sent to the backend.
    pub request_headers: Option<HeaderModifier>,
}

/// Everything a table is compiled from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableSpec {
    /// The services routes refer to.
    pub services: Vec<ServiceSpec>,
    /// The routes, in precedence order for ties (oldest first).
    pub routes: Vec<RouteSpec>,
    /// Ingress default backend: where requests that match no rule go.
    pub default_backend: Option<BackendRef>,
}

/// An endpoint in a compiled table (index into [`RouteTable::backends`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendId(pub u32);

/// A choice of backend for one request, kept for the retry and the bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// The split the request matched.
    pub split: u32,
    /// The service chosen in it.
    pub service: u32,
    /// The endpoint.
    pub backend: BackendId,
    /// The consistent-hash key's hash (0 for other policies).
    pub hash: u64,
}

/// A compiled endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its weight (0: no new requests).
    pub weight: u32,
    /// The service it belongs to.
    pub service: u32,
}

/// A compiled service: endpoint ids and the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Its name.
    pub name: Box<str>,
    /// Its endpoints.
    pub backends: Vec<BackendId>,
    /// How it picks one.
    pub policy: Policy,
    /// How connections to its endpoints are made, TLS settings loaded.
    pub upstream: Arc<Upstream>,
}

/// Where a matched route sends: a weighted set of services, or an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Index into [`RouteTable::splits`].
    Split(u32),
    /// Answer this status.
    Answer(Status),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PathRule {
    Exact(Box<[u8]>),
    /// Without its trailing slash; empty matches every path.
    Prefix(Box<[u8]>),
}

/// A header a rule requires: lowercased name, exact value.
type HeaderMatch = (Box<[u8]>, Box<[u8]>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    path: PathRule,
    method: Option<Box<[u8]>>,
    /// Lowercased names.
    headers: Box<[HeaderMatch]>,
    /// Cookie name (as given) and value.
    cookies: Box<[HeaderMatch]>,
    target: Target,
    /// The route answers a redirect (its `target` is then only what [`RouteTable::lookup`]
    /// says).
    redirect: Option<Arc<RedirectRule>>,
    /// The route changes the forwarded head.
    rewrite: Option<Arc<HeaderRewrite>>,
    /// Precedence: larger first (origin-specific meaning, see `precedence`).
    key: (u32, u32, u32, u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Wildcard {
    /// Ingress: exactly one label before the suffix.
    OneLabel,
    /// Gateway: one or more labels.
    AnyLabels,
}

/// The compiled, immutable table.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    exact: FxHashMap<Box<[u8]>, usize>,
    /// (".suffix", kind, group), most specific first.
    wildcards: Vec<(Box<[u8]>, Wildcard, usize)>,
    any_host: Option<usize>,
    groups: Vec<Vec<Rule>>,
    default: Option<Target>,
    /// Weighted services per split: (service, weight).
    pub splits: Vec<Vec<(u32, u32)>>,
    /// The route each split serves, as metrics name it: [`route_name`], or `default` for the
    /// default backend. Routes with the same hosts and path share a name.
    pub split_names: Vec<Box<str>>,
    /// Services.
    pub services: Vec<Service>,
    /// Endpoints.
    pub backends: Vec<Backend>,
}

/// The rule a request matched, with its filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Matched<'t> {
    /// Where it goes (ignoring `redirect`).
    pub target: Target,
    /// Answer this redirect instead.
    pub redirect: Option<&'t RedirectRule>,
    /// Change the forwarded head so.
    pub request_headers: Option<&'t HeaderRewrite>,
}

/// What the table sees of a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    buf: &'a [u8],
    head: Option<&'a RequestHead>,
    /// Host (authority), port included; empty when none.
    pub host: &'a [u8],
    /// Path and query.
    pub path: &'a [u8],
    /// Method.
    pub method: &'a [u8],
    /// Client address (for hashing).
    pub client: IpAddr,
    headers: &'a [(&'a str, &'a str)],
}

impl<'a> RequestView<'a> {
    /// A view of a parsed request head in `buf`.
    pub fn new(buf: &'a [u8], head: &'a RequestHead, client: IpAddr) -> Self {
        RequestView {
            buf,
            head: Some(head),
            host: head.host.map_or(&[][..], |h| h.of(buf)),
            path: head.path.of(buf),
            method: head.method_name.of(buf),
            client,
            headers: &[],
        }
    }

    /// A view built from parts (tests, tools).
    pub fn from_parts(
        host: &'a str,
        path: &'a str,
        method: &'a str,
        headers: &'a [(&'a str, &'a str)],
    ) -> Self {
        RequestView {
            buf: &[],
            head: None,
            host: host.as_bytes(),
            path: path.as_bytes(),
            method: method.as_bytes(),
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            headers,
        }
    }

    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        match self.head {
            Some(head) => head
                .fields
                .iter()
                .find(|f| f.name.of(self.buf).eq_ignore_ascii_case(name))
                .map(|f| f.value.of(self.buf)),
            None => self
                .headers
                .iter()
                .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes()),
        }
    }
}

/// The value of cookie `name` in a Cookie header (`a=1; b=2`).
pub(crate) fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = super::head::trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        (&pair[..eq] == name).then(|| &pair[eq + 1..])
    })
}

/// A host without its port, for matching.
fn strip_port(host: &[u8]) -> &[u8] {
    if host.starts_with(b"[") {
        return host
            .iter()
            .position(|&b| b == b']')
            .map_or(host, |i| &host[..=i]);
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

/// How metrics name a route: its hosts (comma-separated; `*` for any host) then its path, as
/// the config wrote them: `shop.example.com,www.example.com/api`.
pub fn route_name(route: &RouteSpec) -> String {
    let hosts = if route.hosts.is_empty() {
        "*".to_string()
    } else {
        route.hosts.join(",")
    };
    let path = match &route.path {
        PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::ImplementationSpecific(p) => p,
    };
    format!("{hosts}{path}")
}

/// A route's compiled filters (redirect, header rewrite).
type Filters = (Option<Arc<RedirectRule>>, Option<Arc<HeaderRewrite>>);

fn compile_filters(route: &RouteSpec) -> Result<Filters, FilterError> {
    let path = match &route.path {
        PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::ImplementationSpecific(p) => p,
    };
    let redirect = route
        .redirect
        .as_ref()
        .map(|r| RedirectRule::compile(r, path).map(Arc::new))
        .transpose()?;
    let rewrite = route
        .request_headers
        .as_ref()
        .map(|h| HeaderRewrite::compile(h).map(Arc::new))
        .transpose()?;
    Ok((redirect, rewrite))
}

fn lower(s: &str) -> Box<[u8]> {
    s.to_ascii_lowercase().into_bytes().into_boxed_slice()
}

impl RouteTable {
    /// Like [`Self::compile`], but refuses a table with a service whose backend TLS settings
    /// do not load (rather than serving 502 for it): the error names the service.
    pub fn try_compile(spec: &TableSpec) -> Result<RouteTable, (String, Arc<TlsError>)> {
        let table = RouteTable::compile(spec);
        for s in &table.services {
            if let Some(Err(e)) = &s.upstream.tls {
                return Err((s.name.to_string(), e.clone()));
            }
        }
        Ok(table)
    }

    /// Where `backend` listens and how to connect to it.
    pub fn backend_conn(&self, backend: BackendId) -> Option<(SocketAddr, &Arc<Upstream>)> {
        let b = self.backends.get(backend.0 as usize)?;
        let service = self.services.get(b.service as usize)?;
        Some((b.addr, &service.upstream))
    }

    /// This table with the endpoints, policy and connection settings of the services in
    /// `services` replaced (each names one of the table's services): a change of backends only,
    /// without compiling the routes again. `None` when a name is not one of its services.
    ///
    /// The replaced endpoints stay in [`RouteTable::backends`], unused, so every `BackendId`
    /// keeps its meaning; they are dropped (and the ids renumbered) once they outnumber the
    /// used ones.
    pub fn with_endpoints(&self, services: &[ServiceSpec]) -> Option<RouteTable> {
        let mut t = self.clone();
        for s in services {
            let i = t.services.iter().position(|x| *x.name == *s.name)?;
            let ids = t.push_endpoints(&s.endpoints, i);
            let svc = &mut t.services[i];
            svc.backends = ids;
            svc.policy = s.policy.clone();
            svc.upstream = Arc::new(Upstream::load(&s.upstream));
        }
        let used: usize = t.services.iter().map(|s| s.backends.len()).sum();
        if t.backends.len() > 2 * used + 1024 {
            t.compact();
        }
        Some(t)
    }

    /// Adds `endpoints` of service `service` to [`RouteTable::backends`]; their ids.
    fn push_endpoints(&mut self, endpoints: &[EndpointSpec], service: usize) -> Vec<BackendId> {
        endpoints
            .iter()
            .map(|e| {
                self.backends.push(Backend {
                    addr: e.addr,
                    weight: e.weight,
                    service: service as u32,
                });
                BackendId(self.backends.len() as u32 - 1)
            })
            .collect()
    }

    /// Drops the endpoints no service uses and renumbers the rest.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.backends);
        for svc in &mut self.services {
            for id in &mut svc.backends {
                self.backends.push(old[id.0 as usize].clone());
                *id = BackendId(self.backends.len() as u32 - 1);
            }
        }
    }

    /// Compiles `spec`. Never fails: a route with nothing usable to send to answers an error,
    /// a service whose backend TLS settings do not load answers 502 (see [`Self::try_compile`]).
    pub fn compile(spec: &TableSpec) -> RouteTable {
        let mut table = RouteTable::default();
        let mut by_name = FxHashMap::default();
        for (i, s) in spec.services.iter().enumerate() {
            by_name.insert(s.name.as_str(), i as u32);
            let backends = table.push_endpoints(&s.endpoints, i);
            table.services.push(Service {
                name: s.name.as_str().into(),
                backends,
                policy: s.policy.clone(),
                upstream: Arc::new(Upstream::load(&s.upstream)),
            });
        }
        let target_of = |table: &mut RouteTable, refs: &[BackendRef], origin: Origin| {
            let split: Vec<(u32, u32)> = refs
                .iter()
                .filter_map(|r| by_name.get(r.service.as_str()).map(|&s| (s, r.weight)))
                .collect();
            if split.is_empty() || split.len() != refs.len() && origin == Origin::Gateway {
                // Gateway API: a rule with an invalid backendRef answers 500 for its share; we
                // answer 500 for the whole rule (no partial split over what is left).
                return Target::Answer(match origin {
                    Origin::Gateway => Status::InternalError,
                    Origin::Ingress => Status::Unavailable,
                });
            }
            table.splits.push(split);
            Target::Split(table.splits.len() as u32 - 1)
        };
        table.default = spec
            .default_backend
            .as_ref()
            .map(|r| target_of(&mut table, std::slice::from_ref(r), Origin::Ingress));
        if let Some(Target::Split(_)) = table.default {
            table.split_names.push("default".into());
        }
        for route in &spec.routes {
            let filters = compile_filters(route);
            let target = match &filters {
                // A filter that does not check out (the controlplane refuses them first):
                // the route is misconfigured.
                Err(_) => Target::Answer(Status::InternalError),
                // A redirect sends nowhere; `lookup` (which knows no filters) says 500.
                Ok((Some(_), _)) => Target::Answer(Status::InternalError),
                Ok((None, _)) => target_of(&mut table, &route.backends, route.origin),
            };
            if let Target::Split(_) = target {
                table.split_names.push(route_name(route).into());
            }
            let (redirect, rewrite) = filters.unwrap_or_default();
            let (path, exact, len) = match &route.path {
                PathMatch::Exact(p) => (PathRule::Exact(p.as_bytes().into()), true, p.len()),
                PathMatch::Prefix(p) | PathMatch::ImplementationSpecific(p) => {
                    let trimmed = p.trim_end_matches('/');
                    (PathRule::Prefix(trimmed.as_bytes().into()), false, p.len())
                }
            };
            let len = len as u32;
            let key = match route.origin {
                Origin::Ingress => (len, u32::from(exact), 0, 0),
                Origin::Gateway => (
                    u32::from(exact),
                    len,
                    u32::from(route.method.is_some()),
                    (route.headers.len() + route.cookies.len()) as u32,
                ),
            };
            let rule = Rule {
                path,
                method: route.method.as_ref().map(|m| m.as_bytes().into()),
                headers: route
                    .headers
                    .iter()
                    .map(|(n, v)| (lower(n), v.as_bytes().into()))
                    .collect(),
                cookies: route
                    .cookies
                    .iter()
                    .map(|(n, v)| (n.as_bytes().into(), v.as_bytes().into()))
                    .collect(),
                target,
                redirect,
                rewrite,
                key,
            };
            if route.hosts.is_empty() {
                let group = table.group_for_any();
                table.groups[group].push(rule.clone());
            }
            for host in &route.hosts {
                let group = table.group_for(host, route.origin);
                table.groups[group].push(rule.clone());
            }
        }
        for group in &mut table.groups {
            // Stable: equal keys keep input order.
            group.sort_by_key(|rule| std::cmp::Reverse(rule.key));
        }
        table
            .wildcards
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        table
    }

    fn new_group(&mut self) -> usize {
        self.groups.push(Vec::new());
        self.groups.len() - 1
    }

    fn group_for_any(&mut self) -> usize {
        match self.any_host {
            Some(g) => g,
            None => {
                let g = self.new_group();
                self.any_host = Some(g);
                g
            }
        }
    }

    fn group_for(&mut self, host: &str, origin: Origin) -> usize {
        let host = lower(host);
        if let Some(suffix) = host.strip_prefix(b"*") {
            let kind = match origin {
                Origin::Ingress => Wildcard::OneLabel,
                Origin::Gateway => Wildcard::AnyLabels,
            };
            if let Some(&(_, _, g)) = self
                .wildcards
                .iter()
                .find(|(s, k, _)| **s == *suffix && *k == kind)
            {
                return g;
            }
            let g = self.new_group();
            self.wildcards.push((suffix.into(), kind, g));
            return g;
        }
        if let Some(&g) = self.exact.get(&host) {
            return g;
        }
        let g = self.new_group();
        self.exact.insert(host, g);
        g
    }

    /// The host group for a request host (port stripped, any case).
    fn group(&self, host: &[u8]) -> Option<usize> {
        let host = strip_port(host);
        if !host.is_empty() {
            // Lowercase into a stack buffer: no allocation per request.
            let mut buf = [0u8; 256];
            if host.len() <= buf.len() {
                let lowered = &mut buf[..host.len()];
                lowered.copy_from_slice(host);
                lowered.make_ascii_lowercase();
                if let Some(&g) = self.exact.get(&*lowered) {
                    return Some(g);
                }
                for (suffix, kind, g) in &self.wildcards {
                    if let Some(label) = lowered.strip_suffix(&**suffix) {
                        let ok = match kind {
                            Wildcard::OneLabel => !label.is_empty() && !label.contains(&b'.'),
                            Wildcard::AnyLabels => !label.is_empty(),
                        };
                        if ok {
                            return Some(*g);
                        }
                    }
                }
            }
        }
        self.any_host
    }

    /// Where `request` goes: a split of services or an answer (404 when nothing matches).
    /// Filters are not looked at (a redirecting route says 500): see [`Self::matched`].
    pub fn lookup(&self, request: &RequestView<'_>) -> Target {
        self.matched(request).target
    }

    /// The rule `request` matches: where it goes and what its filters do.
    pub fn matched(&self, request: &RequestView<'_>) -> Matched<'_> {
        let path = request.path;
        let path = &path[..path.iter().position(|&b| b == b'?').unwrap_or(path.len())];
        let matched = self.group(request.host).and_then(|g| {
            self.groups[g].iter().find(|rule| {
                let path_ok = match &rule.path {
                    PathRule::Exact(p) => **p == *path,
                    PathRule::Prefix(p) => {
                        path.starts_with(p) && (path.len() == p.len() || path[p.len()] == b'/')
                    }
                };
                path_ok
                    && rule.method.as_deref().is_none_or(|m| m == request.method)
                    && rule
                        .headers
                        .iter()
                        .all(|(n, v)| request.header(n) == Some(&**v))
                    && (rule.cookies.is_empty() || {
                        let header = request.header(b"cookie").unwrap_or_default();
                        rule.cookies
                            .iter()
                            .all(|(n, v)| cookie(header, n) == Some(&**v))
                    })
            })
        });
        match matched {
            Some(rule) => Matched {
                target: rule.target,
                redirect: rule.redirect.as_deref(),
                request_headers: rule.rewrite.as_deref(),
            },
            None => Matched {
                target: self.default.unwrap_or(Target::Answer(Status::NotFound)),
                redirect: None,
                request_headers: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(origin: Origin, host: &str, path: PathMatch, service: &str) -> RouteSpec {
        RouteSpec {
            cookies: Vec::new(),
            origin,
            hosts: if host.is_empty() {
                vec![]
            } else {
                vec![host.into()]
            },
            path,
            method: None,
            headers: vec![],
            backends: vec![BackendRef {
                service: service.into(),
                weight: 1,
            }],
            redirect: None,
            request_headers: None,
        }
    }

    fn table(routes: Vec<RouteSpec>) -> RouteTable {
        let services = ["a", "b", "c"]
            .iter()
            .map(|n| ServiceSpec {
                name: (*n).into(),
                endpoints: vec![EndpointSpec {
                    addr: "127.0.0.1:1".parse().unwrap(),
                    weight: 1,
                }],
                policy: Policy::RoundRobin,
                upstream: Default::default(),
            })
            .collect();
        RouteTable::compile(&TableSpec {
            services,
            routes,
            default_backend: None,
        })
    }

    fn service(t: &RouteTable, host: &str, path: &str) -> Option<String> {
        match t.lookup(&RequestView::from_parts(host, path, "GET", &[])) {
            Target::Split(s) => Some(
                t.services[t.splits[s as usize][0].0 as usize]
                    .name
                    .to_string(),
            ),
            Target::Answer(_) => None,
        }
    }

    /// Each service's endpoints (address, weight) as a table resolves them.
    fn endpoints(t: &RouteTable) -> Vec<(String, Vec<(SocketAddr, u32)>)> {
        t.services
            .iter()
            .map(|s| {
                let eps = s
                    .backends
                    .iter()
                    .map(|id| {
                        let b = &t.backends[id.0 as usize];
                        assert_eq!(t.services[b.service as usize].name, s.name);
                        (b.addr, b.weight)
                    })
                    .collect();
                (s.name.to_string(), eps)
            })
            .collect()
    }

    #[test]
    fn new_endpoints_serve_like_a_compiled_table_and_old_ids_are_dropped_later() {
        let routes = vec![
            route(
                Origin::Ingress,
                "a.test",
                PathMatch::Prefix("/".into()),
                "a",
            ),
            route(
                Origin::Ingress,
                "b.test",
                PathMatch::Prefix("/".into()),
                "b",
            ),
        ];
        let mut spec = TableSpec {
            services: ["a", "b"]
                .iter()
                .map(|n| ServiceSpec {
                    name: (*n).into(),
                    endpoints: vec![EndpointSpec {
                        addr: "127.0.0.1:1".parse().unwrap(),
                        weight: 1,
                    }],
                    policy: Policy::RoundRobin,
                    upstream: Default::default(),
                })
                .collect(),
            routes,
            default_backend: None,
        };
        let mut t = RouteTable::compile(&spec);
        for round in 0..2000u32 {
            let mut a = spec.services[0].clone();
            a.endpoints = (0..3)
                .map(|i| EndpointSpec {
                    addr: SocketAddr::from(([127, 0, 0, 2 + i as u8], 8000 + (round % 7) as u16)),
                    weight: i,
                })
                .collect();
            a.policy = if round % 2 == 0 {
                Policy::RoundRobin
            } else {
                Policy::LeastOutstanding
            };
            t = t.with_endpoints(std::slice::from_ref(&a)).unwrap();
            spec.services[0] = a;
            let want = RouteTable::compile(&spec);
            assert_eq!(endpoints(&t), endpoints(&want), "round {round}");
            assert_eq!(t.services[0].policy, want.services[0].policy);
            assert_eq!(service(&t, "a.test", "/").as_deref(), Some("a"));
            assert_eq!(service(&t, "b.test", "/").as_deref(), Some("b"));
        }
        // Replaced endpoints do not pile up.
        assert!(t.backends.len() <= 2 * 4 + 1024, "{}", t.backends.len());
        let unknown = ServiceSpec {
            name: "nope".into(),
            ..spec.services[0].clone()
        };
        assert!(t.with_endpoints(&[unknown]).is_none());
    }

    #[test]
    fn cookie_matches_read_the_cookie_header_and_rank_like_headers() {
        let mut by_cookie = route(Origin::Gateway, "h", PathMatch::Prefix("/".into()), "b");
        by_cookie.cookies = vec![("canary".into(), "always".into())];
        let mut by_header = route(Origin::Gateway, "h", PathMatch::Prefix("/".into()), "c");
        by_header.headers = vec![("x-canary".into(), "always".into())];
        let t = table(vec![
            route(Origin::Gateway, "h", PathMatch::Prefix("/".into()), "a"),
            by_header,
            by_cookie,
        ]);
        let to = |headers: &[(&str, &str)]| match t
            .lookup(&RequestView::from_parts("h", "/x", "GET", headers))
        {
            Target::Split(s) => t.services[t.splits[s as usize][0].0 as usize]
                .name
                .to_string(),
            Target::Answer(a) => format!("{a:?}"),
        };
        assert_eq!(to(&[]), "a");
        assert_eq!(to(&[("cookie", "canary=always")]), "b");
        assert_eq!(to(&[("cookie", "a=1;  canary=always ; z=2")]), "b");
        assert_eq!(to(&[("cookie", "canary=never")]), "a");
        assert_eq!(to(&[("cookie", "xcanary=always")]), "a");
        assert_eq!(
            to(&[("cookie", "Canary=always")]),
            "a",
            "names are case-sensitive"
        );
        // One match each: the earlier route wins the tie.
        assert_eq!(
            to(&[("x-canary", "always"), ("cookie", "canary=always")]),
            "c"
        );
    }

    #[test]
    fn wildcards_by_origin() {
        let t = table(vec![
            route(
                Origin::Ingress,
                "*.i.test",
                PathMatch::Prefix("/".into()),
                "a",
            ),
            route(
                Origin::Gateway,
                "*.g.test",
                PathMatch::Prefix("/".into()),
                "b",
            ),
        ]);
        assert_eq!(service(&t, "X.I.test:80", "/").as_deref(), Some("a"));
        assert_eq!(service(&t, "x.y.i.test", "/"), None);
        assert_eq!(service(&t, "x.y.g.test", "/").as_deref(), Some("b"));
        assert_eq!(service(&t, "g.test", "/"), None);
    }

    #[test]
    fn prefix_is_element_wise_and_query_is_ignored() {
        let t = table(vec![route(
            Origin::Ingress,
            "",
            PathMatch::Prefix("/foo/".into()),
            "a",
        )]);
        assert_eq!(service(&t, "h", "/foo?x=1").as_deref(), Some("a"));
        assert_eq!(service(&t, "h", "/foo/bar").as_deref(), Some("a"));
        assert_eq!(service(&t, "h", "/foobar"), None);
    }

    #[test]
    fn unknown_service_answers_by_origin() {
        let t = table(vec![
            route(Origin::Ingress, "i", PathMatch::Prefix("/".into()), "nope"),
            route(Origin::Gateway, "g", PathMatch::Prefix("/".into()), "nope"),
        ]);
        let answer = |h| t.lookup(&RequestView::from_parts(h, "/", "GET", &[]));
        assert_eq!(answer("i"), Target::Answer(Status::Unavailable));
        assert_eq!(answer("g"), Target::Answer(Status::InternalError));
        assert_eq!(answer("other"), Target::Answer(Status::NotFound));
    }

    #[test]
    fn each_split_is_named_after_its_route() {
        let mut t = table(vec![
            route(Origin::Ingress, "", PathMatch::Exact("/x".into()), "a"),
            // No split for a route that answers an error: the names stay aligned.
            route(Origin::Ingress, "i", PathMatch::Prefix("/".into()), "nope"),
            route(
                Origin::Ingress,
                "*.w.test",
                PathMatch::Prefix("/api".into()),
                "b",
            ),
        ]);
        assert_eq!(t.split_names.len(), t.splits.len());
        let name = |t: &RouteTable, host, path| match t.lookup(&RequestView::from_parts(
            host,
            path,
            "GET",
            &[],
        )) {
            Target::Split(s) => t.split_names[s as usize].to_string(),
            Target::Answer(a) => format!("{a:?}"),
        };
        assert_eq!(name(&t, "h", "/x"), "*/x");
        assert_eq!(name(&t, "a.w.test", "/api/1"), "*.w.test/api");
        let mut spec = TableSpec {
            services: vec![ServiceSpec {
                name: "a".into(),
                endpoints: vec![],
                policy: Policy::RoundRobin,
                upstream: Default::default(),
            }],
            routes: vec![route(
                Origin::Gateway,
                "",
                PathMatch::Exact("/x".into()),
                "a",
            )],
            default_backend: Some(BackendRef {
                service: "a".into(),
                weight: 1,
            }),
        };
        spec.routes[0].hosts = vec!["a.test".into(), "b.test".into()];
        t = RouteTable::compile(&spec);
        assert_eq!(name(&t, "b.test", "/x"), "a.test,b.test/x");
        assert_eq!(name(&t, "c.test", "/x"), "default");
    }
}

//! `[[http]]`: HTTP listeners, their upstreams and routes (the L7 half of lb.toml).
//!
//! One `[[http]]` is a self-contained HTTP service: the sockets it listens on (plain, or TLS
//! with certificates chosen by SNI), its limits and timeouts, the upstreams (groups of backends
//! with a balancing policy) and the routes (host and path, Ingress or Gateway API rules) that
//! send requests to them. Names of upstreams are local to their `[[http]]`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::schema::{Config, HealthCheck};
use super::types::de_duration;

/// `[[http]]`: one HTTP service (listeners, TLS, upstreams, routes).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Name (logs, metrics, the admin API).
    pub name: String,
    /// Socket addresses to listen on, `"198.18.0.10:80"` or `"[2001:db8::10]:80"`.
    pub listen: Vec<SocketAddr>,
    /// Certificates; none means plain HTTP.
    #[serde(default)]
    pub tls: Vec<TlsCert>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: HttpTimeouts,
    /// Size limits.
    #[serde(default)]
    pub limits: HttpLimits,
    /// Connection counts and the backend connection pool.
    #[serde(default)]
    pub proxy: HttpProxy,
    /// Groups of backends routes send to.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Routes, by host and path.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Where requests that match no route go; absent: 404.
    #[serde(default)]
    pub default_upstream: Option<String>,
}

/// `[[http.tls]]`: one certificate chain and key, and the names (SNI) it serves.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCert {
    /// PEM file with the certificate chain, leaf first (relative to the config file's directory).
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1), relative like `cert`.
    pub key: PathBuf,
    /// Names it serves, exact or `*.suffix` (one label); empty: only as the default.
    #[serde(default)]
    pub sni: Vec<String>,
    /// Served to clients that send no name or a name no certificate has; absent on every
    /// certificate: the first one.
    #[serde(default)]
    pub default: bool,
}

/// `[http.timeouts]`: durations written as `"500ms"`, `"5s"`, `"1m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpTimeouts {
    /// From the first byte of a request to the end of its head (408 after).
    #[serde(deserialize_with = "de_duration")]
    pub header_read: Duration,
    /// A keep-alive client connection without a request is closed after this.
    #[serde(deserialize_with = "de_duration")]
    pub idle: Duration,
    /// Connecting to a backend (another backend, or 504, after).
    #[serde(deserialize_with = "de_duration")]
    pub connect: Duration,
    /// From a request's head to the end of its response (504, or a cut, after).
    #[serde(deserialize_with = "de_duration")]
    pub request: Duration,
}

impl Default for HttpTimeouts {
    /// The L7 core's defaults, so an absent table and an absent key mean the same thing.
    fn default() -> Self {
        let d = dataplane::l7::Timeouts::default();
        HttpTimeouts {
            header_read: Duration::from_millis(d.header_read),
            idle: Duration::from_millis(d.idle),
            connect: Duration::from_millis(d.connect),
            request: Duration::from_millis(d.total),
        }
    }
}

/// `[http.limits]`: sizes in bytes (and a count of header fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Longest request line (414 beyond).
    pub max_request_line: usize,
    /// Largest request head, request line and fields (431 beyond).
    pub max_head: usize,
    /// Most header fields (431 beyond).
    pub max_headers: usize,
    /// Longest chunk-size line of a chunked body (400 beyond).
    pub max_chunk_line: usize,
    /// Largest request body (413 beyond).
    pub max_body: u64,
    /// Bytes held per direction before reading from that side pauses.
    pub buffer: usize,
}

impl Default for HttpLimits {
    /// The L7 core's defaults.
    fn default() -> Self {
        let c = dataplane::l7::ConnConfig::default();
        HttpLimits {
            max_request_line: c.limits.max_request_line,
            max_head: c.limits.max_head,
            max_headers: c.limits.max_headers,
            max_chunk_line: c.limits.max_chunk_line,
            max_body: c.limits.max_body,
            buffer: c.buffer,
        }
    }
}

/// `[http.proxy]`: how many client connections a worker takes and how backend connections are
/// kept. Read when the listener starts (a change needs a restart of `lb run`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpProxy {
    /// Client connections per worker; more are closed at accept.
    pub max_connections: usize,
    /// Idle backend connections kept per backend address, per worker (0: none kept).
    pub pool_per_backend: usize,
    /// How long an idle backend connection is kept.
    #[serde(deserialize_with = "de_duration")]
    pub pool_idle: Duration,
    /// How long a closing client connection is drained after its last answer, so the answer is
    /// not lost to a reset while the client still sends.
    #[serde(deserialize_with = "de_duration")]
    pub linger: Duration,
}

impl Default for HttpProxy {
    /// The transport's defaults.
    fn default() -> Self {
        let d = dataplane::net::ProxyConfig::default();
        HttpProxy {
            max_connections: d.max_conns,
            pool_per_backend: d.pool_per_backend,
            pool_idle: Duration::from_millis(d.pool_idle),
            linger: Duration::from_millis(d.linger),
        }
    }
}

/// `[[http.upstreams]]`: backends that share a balancing policy.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// The name routes refer to.
    pub name: String,
    /// How a request picks a backend.
    #[serde(default)]
    pub balance: Balance,
    /// `balance = "hash"`: what is hashed; absent: the client address.
    #[serde(default)]
    pub hash_key: Option<HashKey>,
    /// Backends.
    pub backends: Vec<HttpBackend>,
    /// Active health check of every backend; absent: backends are always up.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// `"v2"`: a PROXY protocol v2 header (the client's address and port) first on every new
    /// backend connection; absent: none.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `[http.upstreams.tls]`: TLS to the backends; absent: plain TCP.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

/// `[[http.upstreams]] proxy_protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ProxyProtocol {
    /// The binary version 2 header.
    #[serde(rename = "v2")]
    V2,
}

/// `[http.upstreams.tls]`: how backends are reached over TLS and verified.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file of the CA certificates backend certificates must chain to (relative to the
    /// config file's directory); required unless `insecure_skip_verify`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and verified in the certificate; absent: no SNI, the backend's address
    /// is verified (an IP name in its certificate).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any certificate: lab use only, traffic can then be read and changed on the path.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `[[http.upstreams]] balance`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// In turn, weighted.
    #[default]
    RoundRobin,
    /// The backend with the fewest requests in flight (per worker).
    LeastRequests,
    /// The same `hash_key` goes to the same backend while it exists (weighted rendezvous).
    Hash,
    /// Sticky sessions: the cookie `hash_key` names (`"cookie:NAME"`) is set on the first
    /// answer to the backend that served it, and later requests carrying it go there while it
    /// takes requests; the others are balanced in turn.
    Sticky,
}

/// `[[http.upstreams]] hash_key`: `"client-ip"`, `"header:NAME"` or `"cookie:NAME"`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum HashKey {
    /// The client address.
    ClientIp,
    /// A request header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

impl TryFrom<String> for HashKey {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s == "client-ip" {
            return Ok(HashKey::ClientIp);
        }
        let bad = || {
            format!("hash_key {s:?}: expected \"client-ip\", \"header:NAME\" or \"cookie:NAME\"")
        };
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if !is_token(name) {
            return Err(format!(
                "hash_key {s:?}: {name:?} is not a header or cookie name (letters, digits and !#$%&'*+-.^_`|~)"
            ));
        }
        match kind {
            "header" => Ok(HashKey::Header(name.into())),
            "cookie" => Ok(HashKey::Cookie(name.into())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client-ip"),
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

/// An RFC 9110 token: header names, cookie names and methods.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One backend of an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpBackend {
    /// Address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// Relative weight; 0 drains it (no new requests).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

impl HttpBackend {
    /// Where it listens.
    pub fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }
}

fn default_weight() -> u32 {
    1
}

/// `[[http.routes]]`: which requests go to which upstreams.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Whose rules it follows: Ingress (default) or Gateway API HTTPRoute.
    #[serde(default)]
    pub kind: RouteKind,
    /// Host names, exact or `*.suffix`; empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The path to match.
    #[serde(default = "default_path")]
    pub path: String,
    /// How the path matches.
    #[serde(default)]
    pub path_type: PathType,
    /// `kind = "gateway"` only: the request method must be this.
    #[serde(default)]
    pub method: Option<String>,
    /// `kind = "gateway"` only: each header must be present with exactly this value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `kind = "gateway"` only: each cookie of the request's Cookie header must be present with
    /// exactly this value (names are case-sensitive; the Ingress source's canary-by-cookie).
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    /// Where matching requests go, split by weight; empty: an error answer (503 for ingress,
    /// 500 for gateway routes). Required unless the route redirects.
    #[serde(default)]
    pub upstreams: Vec<UpstreamRef>,
    /// Answer every matching request with a redirect (then the route has no upstreams).
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Change the request head sent to the upstream.
    #[serde(default)]
    pub request_headers: Option<HeaderModifier>,
}

/// `[[http.routes]] redirect`: where to send the client instead (Gateway API
/// RequestRedirect). Each absent part is taken from the request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// The scheme of the new location; absent: the request's.
    #[serde(default)]
    pub scheme: Option<RedirectScheme>,
    /// The host of the new location (a name, no port); absent: the request's.
    #[serde(default)]
    pub host: Option<String>,
    /// The port of the new location; absent: the scheme's default when `scheme` is set, else
    /// the request's. The scheme's default port is never written.
    #[serde(default)]
    pub port: Option<u16>,
    /// Replace the whole path with this; exclusive with `path_prefix`.
    #[serde(default)]
    pub path: Option<String>,
    /// Replace the matched prefix with this (prefix routes only); exclusive with `path`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The answer's status: 301 or 302.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// `[[http.routes]] redirect.scheme`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectScheme {
    /// `http` (default port 80).
    Http,
    /// `https` (default port 443).
    Https,
}

/// `[[http.routes]] request_headers`: fields to set, add and remove on the forwarded request
/// (Gateway API RequestHeaderModifier). Names are case-insensitive; removal comes first, then
/// set, then add.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replace every field of this name with one field of this value (added when absent).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append a field, keeping those already there.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Drop every field of these names.
    #[serde(default)]
    pub remove: Vec<String>,
}

fn default_path() -> String {
    "/".into()
}

/// `[[http.routes]] kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// Kubernetes Ingress rules: `*.x` covers one label, the longest path wins.
    #[default]
    Ingress,
    /// Gateway API HTTPRoute rules: `*.x` covers any labels, Exact first, method and headers.
    Gateway,
}

/// `[[http.routes]] path_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathType {
    /// The whole path, exactly.
    Exact,
    /// Element by element: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    #[default]
    Prefix,
    /// As prefix (Ingress ImplementationSpecific).
    ImplementationSpecific,
}

/// An upstream a route sends to, with its share.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamRef {
    /// The upstream's name.
    pub name: String,
    /// Relative share among the route's upstreams (canary, blue-green); 0 gets none.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

impl Config {
    /// Makes every relative TLS file path relative to the directory of `config_path` (where
    /// the file was read from), so checking and serving read the same files whatever the
    /// working directory.
    pub fn resolve_paths(&mut self, config_path: &Path) {
        let dir = config_path.parent().unwrap_or(Path::new(""));
        for tls in self.http.iter_mut().flat_map(|h| &mut h.tls) {
            for p in [&mut tls.cert, &mut tls.key] {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        let upstream_cas = self
            .http
            .iter_mut()
            .flat_map(|h| &mut h.upstreams)
            .filter_map(|u| u.tls.as_mut()?.ca.as_mut());
        for p in upstream_cas {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }
}

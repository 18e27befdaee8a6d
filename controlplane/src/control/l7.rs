//! The L7 half of the running plane: one [`Proxy`] per `[[http]]`, each with its own route table
//! in an `ArcSwap`, kept in step with the serving config.
//!
//! A change goes in three steps so that nothing half-built serves: [`L7::prepare`] compiles every
//! listener's route table and (on a file reload) reads its certificates again, without touching
//! a socket; [`L7::bind`] starts the proxies of new `[[http]]` and changes the listen sockets
//! and certificates of running ones (a kept address keeps its socket, open connections stay);
//! [`L7::publish`] swaps the route tables (a request in flight finishes on the table it started
//! with) and stops the proxies of removed `[[http]]`. Until `lb run` calls [`L7::start`] only the
//! compiled listeners are kept (`lb check`, tests without sockets).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dataplane::l7::route::ServiceSpec;
use dataplane::l7::tls::{self, CertSpec, TlsError, TlsSpec};
use dataplane::l7::{ConnConfig, RouteTable};
use dataplane::net::{Counters, ListenerSpec, Metrics, Proxy, ProxyConfig, RequestStats};

use crate::compile::{HttpCert, HttpListener, ProxySettings};

/// Why an `[[http]]` could not be (re)configured; the running listeners keep serving.
#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    /// A certificate or key file could not be loaded.
    #[error("http {listener}: {source}")]
    Tls {
        /// The `[[http]]` name.
        listener: String,
        /// What is wrong with which file.
        source: TlsError,
    },
    /// The CA file of an upstream's TLS to its backends could not be loaded.
    #[error("http {listener}: upstream {upstream}: {source}")]
    BackendTls {
        /// The `[[http]]` name.
        listener: String,
        /// The `[[http.upstreams]]` name.
        upstream: String,
        /// What is wrong with which file.
        source: Arc<TlsError>,
    },
    /// A listen socket could not be opened, or the proxy could not start its workers.
    #[error("http {listener}: listening on {addrs:?}: {source}")]
    Listen {
        /// The `[[http]]` name.
        listener: String,
        /// Its listen addresses.
        addrs: Vec<SocketAddr>,
        /// The system's error.
        source: io::Error,
    },
}

/// The running proxies of a process, for the admin API: each listener's per-worker counters.
#[derive(Clone, Debug)]
pub struct HttpHandle {
    /// The `[[http]]` name.
    pub listener: String,
    /// The addresses it listens on.
    pub listen: Vec<SocketAddr>,
    /// Each worker's live counters ([`Proxy::metrics`]).
    pub workers: Vec<Arc<Metrics>>,
    /// Requests by route, backend and class, latencies by route ([`Proxy::requests`]).
    pub requests: Arc<RequestStats>,
}

impl HttpHandle {
    /// Every worker's counters, summed ([`Proxy::counters`]).
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for m in &self.workers {
            total.add(&m.read());
        }
        total
    }
}

/// One running `[[http]]`.
struct Running {
    proxy: Proxy,
    routes: Arc<ArcSwap<RouteTable>>,
    /// What it was started or last updated with, to tell what a reload changes.
    listen: Vec<SocketAddr>,
    certs: Vec<HttpCert>,
    /// Its sockets' settings (the loaded certificates).
    specs: Vec<ListenerSpec>,
    /// Read by its workers at start only.
    conn: ConnConfig,
    proxy_settings: ProxySettings,
}

/// One listener of a change, compiled and with its certificates loaded.
pub(super) struct Prepared {
    spec: HttpListener,
    table: RouteTable,
    /// Its sockets with their certificates; empty until the runtime has started.
    specs: Vec<ListenerSpec>,
}

/// New endpoints of some services of one listener, on their way to its proxy.
pub(super) struct EndpointChange {
    name: String,
    /// Each service's index in the listener's spec.
    at: Vec<usize>,
    services: Vec<ServiceSpec>,
    /// The running proxy's new table; `None` when it does not run yet.
    table: Option<RouteTable>,
}

/// The L7 runtime: the compiled listeners, and once started, their proxies.
#[derive(Default)]
pub(super) struct L7 {
    /// Worker threads per proxy; `None` until [`L7::start`].
    workers: Option<usize>,
    /// The serving config's listeners (started or not).
    listeners: Vec<HttpListener>,
    running: BTreeMap<String, Running>,
}

impl std::fmt::Debug for L7 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L7")
            .field("workers", &self.workers)
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The listener's sockets with its certificates read from their files.
fn load_specs(listener: &HttpListener) -> Result<Vec<ListenerSpec>, L7Error> {
    let tls = if listener.tls.is_empty() {
        None
    } else {
        let spec = TlsSpec {
            certs: listener
                .tls
                .iter()
                .map(|c| CertSpec {
                    names: c.names.clone(),
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                })
                .collect(),
        };
        Some(tls::server_config(&spec).map_err(|source| L7Error::Tls {
            listener: listener.name.clone(),
            source,
        })?)
    };
    Ok(listener
        .listen
        .iter()
        .map(|&addr| ListenerSpec {
            addr,
            tls: tls.clone(),
        })
        .collect())
}

/// `addrs` with the TLS settings of `like` (every socket of a listener has the same).
fn specs_like(addrs: &[SocketAddr], like: &[ListenerSpec]) -> Vec<ListenerSpec> {
    let tls = like.first().and_then(|s| s.tls.clone());
    addrs
        .iter()
        .map(|&addr| ListenerSpec {
            addr,
            tls: tls.clone(),
        })
        .collect()
}

/// Whether two socket sets use the same loaded certificates (the same load, not equal files).
fn same_tls(a: &[ListenerSpec], b: &[ListenerSpec]) -> bool {
    match (
        a.first().and_then(|s| s.tls.as_ref()),
        b.first().and_then(|s| s.tls.as_ref()),
    ) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        (None, None) => true,
        _ => false,
    }
}

/// Whether the per-connection settings differ (the workers read them once, at start).
fn same_conn(a: &ConnConfig, b: &ConnConfig) -> bool {
    a.limits == b.limits && a.timeouts == b.timeouts && a.buffer == b.buffer
}

impl L7 {
    /// The route table spec of serving listener `name`.
    pub(super) fn routes(&self, name: &str) -> Option<dataplane::l7::route::TableSpec> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.routes.clone())
    }

    /// Whether [`L7::start`] ran: the proxies serve.
    pub(super) fn started(&self) -> bool {
        self.workers.is_some()
    }

    /// Compiles every listener of `next`. With `reread` (a file reload, a start) the
    /// certificate files are read again, so a renewed certificate behind the same path is picked
    /// up; without it (a health or operator change) a running listener keeps its certificates.
    pub(super) fn prepare(
        &self,
        next: Vec<HttpListener>,
        reread: bool,
    ) -> Result<Vec<Prepared>, L7Error> {
        let mut out = Vec::with_capacity(next.len());
        for spec in next {
            let specs = match self.running.get(&spec.name) {
                Some(r) if !reread && r.certs == spec.tls => specs_like(&spec.listen, &r.specs),
                // Not serving yet: its certificates are read when it starts.
                _ if !self.started() => Vec::new(),
                _ => load_specs(&spec)?,
            };
            // A file reload refuses an upstream whose CA file no longer loads (the old table
            // keeps serving); a health or operator change compiles what the file gave.
            let table = if reread {
                RouteTable::try_compile(&spec.routes).map_err(|(upstream, source)| {
                    L7Error::BackendTls {
                        listener: spec.name.clone(),
                        upstream,
                        source,
                    }
                })?
            } else {
                RouteTable::compile(&spec.routes)
            };
            out.push(Prepared { table, spec, specs });
        }
        Ok(out)
    }

    /// Starts the proxies of new listeners and changes the sockets and certificates of running
    /// ones; what needs a restart to change, by name. Stops at the first error; what it changed
    /// before stays (each step is whole, and the old route tables keep serving).
    pub(super) fn bind(&mut self, next: &[Prepared]) -> Result<Vec<String>, L7Error> {
        let Some(workers) = self.workers else {
            return Ok(Vec::new());
        };
        let mut restart = Vec::new();
        for p in next {
            let name = &p.spec.name;
            let listen_error = |source| L7Error::Listen {
                listener: name.clone(),
                addrs: p.spec.listen.clone(),
                source,
            };
            match self.running.get_mut(name) {
                None => {
                    let r = start(&p.spec, p.table.clone(), p.specs.clone(), workers)
                        .map_err(listen_error)?;
                    tracing::info!(http = %name, listen = ?p.spec.listen, tls = !p.spec.tls.is_empty(), "http listener started");
                    self.running.insert(name.clone(), r);
                }
                Some(r) => {
                    if r.listen != p.spec.listen || !same_tls(&r.specs, &p.specs) {
                        r.proxy
                            .update_listeners(p.specs.clone())
                            .map_err(listen_error)?;
                        if r.listen != p.spec.listen {
                            tracing::info!(http = %name, from = ?r.listen, to = ?p.spec.listen, "http listen addresses changed");
                        }
                        r.listen = p.spec.listen.clone();
                        r.certs = p.spec.tls.clone();
                        r.specs = p.specs.clone();
                    }
                    if !same_conn(&r.conn, &p.spec.conn) || r.proxy_settings != p.spec.proxy {
                        // The workers read them once; restarting the proxy would close every
                        // open connection of the listener.
                        restart.push(format!("http {name}: timeouts, limits, proxy"));
                    }
                }
            }
        }
        Ok(restart)
    }

    /// Swaps in the new route tables, stops the proxies of listeners `next` no longer has, and
    /// keeps `next` as the serving listeners.
    pub(super) fn publish(&mut self, next: Vec<Prepared>) {
        let mut keep = Vec::with_capacity(next.len());
        for p in next {
            if let Some(r) = self.running.get(&p.spec.name) {
                r.routes.store(Arc::new(p.table));
            }
            keep.push(p.spec);
        }
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !keep.iter().any(|l| &l.name == *n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(r) = self.running.remove(&name) {
                stop(&name, r);
            }
        }
        self.listeners = keep;
    }

    /// The route table of serving listener `name` with the endpoints of `services` replaced
    /// (a change of its upstreams' backends, no route compiled again), ready for
    /// [`L7::publish_endpoints`]; `None` when the listener or one of the services is not there.
    pub(super) fn prepare_endpoints(
        &self,
        name: &str,
        services: Vec<ServiceSpec>,
    ) -> Option<EndpointChange> {
        let spec = self.listeners.iter().find(|l| l.name == name)?;
        let at = services
            .iter()
            .map(|s| spec.routes.services.iter().position(|x| x.name == s.name))
            .collect::<Option<Vec<usize>>>()?;
        let table = match self.running.get(name) {
            Some(r) => Some(r.routes.load().with_endpoints(&services)?),
            None => None,
        };
        Some(EndpointChange {
            name: name.to_string(),
            at,
            services,
            table,
        })
    }

    /// Swaps in the route tables of [`L7::prepare_endpoints`] and keeps their services in the
    /// serving listeners' specs.
    pub(super) fn publish_endpoints(&mut self, changes: Vec<EndpointChange>) {
        for c in changes {
            if let (Some(r), Some(t)) = (self.running.get(&c.name), c.table) {
                r.routes.store(Arc::new(t));
            }
            if let Some(l) = self.listeners.iter_mut().find(|l| l.name == c.name) {
                for (i, s) in c.at.into_iter().zip(c.services) {
                    l.routes.services[i] = s;
                }
            }
        }
    }

    /// Starts a proxy per serving listener with `workers` threads each. On an error the proxies
    /// already started are stopped again.
    pub(super) fn start(&mut self, workers: usize) -> Result<(), L7Error> {
        self.workers = Some(workers.max(1));
        let listeners = self.listeners.clone();
        let prepared = self.prepare(listeners, true).and_then(|p| {
            self.bind(&p)?;
            Ok(p)
        });
        match prepared {
            Ok(p) => {
                self.publish(p);
                Ok(())
            }
            Err(e) => {
                self.stop_all();
                Err(e)
            }
        }
    }

    /// Stops every proxy (their open connections close).
    pub(super) fn stop_all(&mut self) {
        self.workers = None;
        for (name, r) in std::mem::take(&mut self.running) {
            stop(&name, r);
        }
    }

    /// The running proxies' counters.
    pub(super) fn handles(&self) -> Vec<HttpHandle> {
        self.running
            .iter()
            .map(|(name, r)| HttpHandle {
                listener: name.clone(),
                listen: r.proxy.local_addrs().to_vec(),
                workers: r.proxy.metrics().to_vec(),
                requests: r.proxy.requests().clone(),
            })
            .collect()
    }
}

fn start(
    spec: &HttpListener,
    table: RouteTable,
    specs: Vec<ListenerSpec>,
    workers: usize,
) -> io::Result<Running> {
    let routes = Arc::new(ArcSwap::from_pointee(table));
    let config = ProxyConfig {
        listeners: specs.clone(),
        workers,
        // Not pinned: the L4 workers own their cores and may spin on them (idle = "poll", or
        // adaptive's spin phase); an L7 thread pinned beside one would only get the slices the
        // spinner leaves. The scheduler puts these where there is room.
        cores: Vec::new(),
        conn: spec.conn,
        max_conns: spec.proxy.max_conns,
        pool_per_backend: spec.proxy.pool_per_backend,
        pool_idle: spec.proxy.pool_idle,
        linger: spec.proxy.linger,
    };
    let proxy = Proxy::start(config, routes.clone())?;
    Ok(Running {
        proxy,
        routes,
        listen: spec.listen.clone(),
        certs: spec.tls.clone(),
        specs,
        conn: spec.conn,
        proxy_settings: spec.proxy,
    })
}

fn stop(name: &str, r: Running) {
    match r.proxy.stop() {
        Ok(()) => tracing::info!(http = %name, "http listener stopped"),
        Err(e) => tracing::error!(http = %name, error = %e, "http listener did not stop cleanly"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{SocketAddr, TcpListener};
    use std::path::PathBuf;

    use testkit::lab::{self, Request};

    use crate::control::{self, AdminState, BackendKey, Control, ControlPlane};

    /// A lab backend on loopback answering with `name`.
    fn backend(name: &str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        lab::backend::spawn_http(name, l);
        addr
    }

    /// A loopback port free a moment ago.
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// An `[[http]]` on `listen` with upstream `both` (a and b) as the default, and `extra`.
    fn text(listen: &[u16], a: SocketAddr, b: SocketAddr, extra: &str) -> String {
        let listen: Vec<String> = listen
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        format!(
            r#"[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
workers = 2

[[http]]
name = "site"
listen = [{}]
default_upstream = "both"

[[http.upstreams]]
name = "both"
backends = [{{ addr = "127.0.0.1", port = {} }}, {{ addr = "127.0.0.1", port = {} }}]

[[http.upstreams]]
name = "b"
backends = [{{ addr = "127.0.0.1", port = {} }}]
{extra}"#,
            listen.join(", "),
            a.port(),
            b.port(),
            b.port()
        )
    }

    const TO_B: &str = r#"
[[http.routes]]
hosts = ["b.test"]
path = "/"
upstreams = [{ name = "b" }]
"#;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn plane(tag: &str, body: &str) -> (ControlPlane, Dir, PathBuf) {
        let dir = std::env::temp_dir().join(format!("lb-l7-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(&path, body).unwrap();
        let (cfg, text) = crate::config::load_with_text(&path).unwrap();
        let (cp, _) = ControlPlane::new(&path, cfg, text, Box::new(control::load_file)).unwrap();
        (cp, Dir(dir), path)
    }

    fn spread(port: u16, req: &Request, n: usize) -> BTreeMap<String, usize> {
        let dst = SocketAddr::from(([127, 0, 0, 1], port));
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let key = lab::http_request(None, dst, req, lab::REQUEST_TIMEOUT)
                .unwrap_or_else(|e| format!("error: {e}"));
            *out.entry(key).or_insert(0) += 1;
        }
        out
    }

    fn only(name: &str, n: usize) -> BTreeMap<String, usize> {
        BTreeMap::from([(name.to_owned(), n)])
    }

    #[test]
    fn reloads_swap_routes_and_listeners_while_a_keep_alive_connection_stays() {
        let (a, b) = (backend("pod-a"), backend("pod-b"));
        let (p1, p2) = (free_port(), free_port());
        let (cp, _dir, path) = plane("reload", &text(&[p1], a, b, ""));
        // Nothing listens before `lb run` starts the proxies.
        assert!(cp.http_handles().is_empty());
        cp.start_http(2).unwrap();
        let b_test = Request::new("b.test", "/");
        assert_eq!(spread(p1, &b_test, 8).len(), 2, "no route yet: the default");
        let mut kept = lab::KeepAlive::connect(
            None,
            SocketAddr::from(([127, 0, 0, 1], p1)),
            lab::REQUEST_TIMEOUT,
        )
        .unwrap();
        kept.get().unwrap();

        // A route and a second listen address: the route serves on both, the connection stays.
        std::fs::write(&path, text(&[p1, p2], a, b, TO_B)).unwrap();
        cp.reload_file().unwrap();
        assert_eq!(spread(p1, &b_test, 4), only("pod-b", 4));
        assert_eq!(spread(p2, &b_test, 4), only("pod-b", 4));
        kept.get().unwrap();

        // A bad certificate path is refused with its place; the routes keep serving.
        let tls = "[[http.tls]]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n";
        let broken = text(&[p1, p2], a, b, "")
            .replace("[[http.upstreams]]", &format!("{tls}[[http.upstreams]]"));
        std::fs::write(&path, broken).unwrap();
        let e = cp.reload_file().unwrap_err().to_string();
        assert!(e.contains("missing.pem") && e.contains("lb.toml:"), "{e}");
        assert_eq!(spread(p1, &b_test, 4), only("pod-b", 4));

        // The first address removed: it stops listening, the other keeps serving, and so does
        // the connection accepted on the removed one.
        std::fs::write(&path, text(&[p2], a, b, TO_B)).unwrap();
        cp.reload_file().unwrap();
        let refused = lab::http_request(
            None,
            SocketAddr::from(([127, 0, 0, 1], p1)),
            &b_test,
            lab::REQUEST_TIMEOUT,
        );
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(spread(p2, &b_test, 4), only("pod-b", 4));
        kept.get().unwrap();

        let counters = cp.http_handles()[0].counters();
        assert!(counters.answers[1] >= 24, "{counters:?}");
        cp.stop_http();
        assert!(cp.http_handles().is_empty());
    }

    #[test]
    fn an_added_http_section_starts_listening_and_a_removed_one_stops() {
        let (a, b) = (backend("pod-a"), backend("pod-b"));
        let p = free_port();
        let with = text(&[p], a, b, "");
        let without = with[..with.find("[[http]]").unwrap()].to_owned();
        let (cp, _dir, path) = plane("section", &without);
        cp.start_http(1).unwrap();
        assert!(cp.http_handles().is_empty());
        let root = Request::new("x.test", "/");
        assert_eq!(
            spread(p, &root, 1)
                .keys()
                .filter(|k| k.starts_with("error"))
                .count(),
            1
        );

        std::fs::write(&path, &with).unwrap();
        cp.reload_file().unwrap();
        assert_eq!(cp.http_handles().len(), 1);
        assert_eq!(spread(p, &root, 4).values().sum::<usize>(), 4);
        assert!(!spread(p, &root, 4).keys().any(|k| k.starts_with("error")));

        std::fs::write(&path, &without).unwrap();
        cp.reload_file().unwrap();
        assert!(cp.http_handles().is_empty());
        assert!(lab::http_request(
            None,
            SocketAddr::from(([127, 0, 0, 1], p)),
            &root,
            lab::REQUEST_TIMEOUT
        )
        .is_err());
    }

    /// A CA and a leaf for `name` signed by it: the leaf's PEM files written to `cert` and
    /// `key`, the CA's to `ca`.
    fn issue(name: &str, ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "lb test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let leaf = params.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
        std::fs::write(ca, ca_cert.pem()).unwrap();
        std::fs::write(cert, leaf.pem()).unwrap();
        std::fs::write(key, leaf_key.serialize_pem()).unwrap();
    }

    /// `curl https://site.test:port/` trusting only `ca`: the body, or curl's complaint.
    fn curl(port: u16, ca: &std::path::Path) -> Result<String, String> {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(ca)
            .arg("--resolve")
            .arg(format!("site.test:{port}:127.0.0.1"))
            .arg(format!("https://site.test:{port}/"))
            .output()
            .expect("curl runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    #[test]
    fn a_reload_serves_certificate_files_renewed_in_place() {
        let (a, b) = (backend("pod-a"), backend("pod-b"));
        let p = free_port();
        let tls = "[[http.tls]]\ncert = \"site.pem\"\nkey = \"site.key\"\n";
        let body = text(&[p], a, b, "").replacen(
            "[[http.upstreams]]",
            &format!("{tls}[[http.upstreams]]"),
            1,
        );
        let dir = std::env::temp_dir().join(format!("lb-l7-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca1, ca2) = (dir.join("ca1.pem"), dir.join("ca2.pem"));
        let (cert, key) = (dir.join("site.pem"), dir.join("site.key"));
        issue("site.test", &ca1, &cert, &key);
        std::fs::write(dir.join("lb.toml"), &body).unwrap();
        let _dir = Dir(dir.clone());
        let path = dir.join("lb.toml");
        let (cfg, text) = crate::config::load_with_text(&path).unwrap();
        let (cp, _) = ControlPlane::new(&path, cfg, text, Box::new(control::load_file)).unwrap();
        cp.start_http(1).unwrap();
        let first = curl(p, &ca1).unwrap();
        assert!(first == "pod-a" || first == "pod-b", "{first}");

        // New files behind the same paths, the same lb.toml: a reload (SIGHUP) serves them to
        // new handshakes.
        issue("site.test", &ca2, &cert, &key);
        assert!(curl(p, &ca2).is_err(), "renewed before the reload");
        cp.reload_file().unwrap();
        assert!(curl(p, &ca2).is_ok());
        assert!(curl(p, &ca1).is_err());
        cp.stop_http();
    }

    #[test]
    fn operators_drain_l7_backends_and_state_shows_them() {
        let (a, b) = (backend("pod-a"), backend("pod-b"));
        let p = free_port();
        let (cp, _dir, _path) = plane("drain", &text(&[p], a, b, ""));
        cp.start_http(1).unwrap();
        let root = Request::new("x.test", "/");
        assert_eq!(spread(p, &root, 8).len(), 2);

        let key: BackendKey = format!("site/both/{b}").parse().unwrap();
        cp.set_admin(&key, AdminState::Drain).unwrap();
        assert_eq!(spread(p, &root, 6), only("pod-a", 6));
        let http = cp.http();
        let status = http[0].backends.iter().find(|s| s.key == key).unwrap();
        assert_eq!(
            (status.weight, status.over.admin),
            (Some(0), AdminState::Drain)
        );
        assert!(http[0].proxy.is_some());

        // Disabled everywhere: upstream `b` has no backend left, and its route answers 503.
        let only_b: BackendKey = format!("site/b/{b}").parse().unwrap();
        cp.set_admin(&only_b, AdminState::Disabled).unwrap();
        std::fs::write(&cp.path, text(&[p], a, b, TO_B)).unwrap();
        cp.reload_file().unwrap();
        let e = lab::http_request(
            None,
            SocketAddr::from(([127, 0, 0, 1], p)),
            &Request::new("b.test", "/"),
            lab::REQUEST_TIMEOUT,
        )
        .unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");

        cp.clear(&key).unwrap();
        assert_eq!(spread(p, &root, 8).len(), 2);
        // A weight beyond the file's bound is refused; an unknown backend is not found.
        assert!(cp.set_weight(&key, 2_000_000).is_err());
        let unknown: BackendKey = "site/both/127.0.0.1:1".parse().unwrap();
        assert!(matches!(
            cp.set_admin(&unknown, AdminState::Drain),
            Err(control::OpError::NoBackend(_))
        ));
        cp.stop_http();
    }
}

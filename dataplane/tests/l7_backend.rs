//! The backend side of the L7 transport: PROXY protocol v2 and TLS to backends, through a real
//! proxy on loopback. The backends here parse the PROXY header themselves (by the spec, not with
//! the proxy's code) and terminate TLS with rustls; certificates are made at test time (rcgen).
//! HAProxy (scripts/packages.txt) is the real PROXY v2 + TLS peer of the last test.

mod l7_net;

use arc_swap::ArcSwap;
use dataplane::l7::route::ServiceSpec;
use dataplane::l7::tls::{server_config, CertSpec, TlsSpec};
use dataplane::l7::upstream::{BackendTlsSpec, ProxyProtocol, UpstreamSpec};
use dataplane::l7::{RouteTable, TableSpec};
use dataplane::net::{Counters, ListenerSpec, Proxy, ProxyConfig};
use l7_net::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::ServerConfig;
use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("l7-backend-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA (PEM file `{tag}-ca.pem`) and a leaf for `backend.test` and 127.0.0.1 signed by it;
/// returns (CA path, leaf cert path, leaf key path).
fn make_certs(dir: &Path, tag: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("lb test CA {tag}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["backend.test".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .distinguished_name
        .push(DnType::CommonName, "backend.test");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join(format!("{tag}-ca.pem")),
        dir.join(format!("{tag}-leaf.pem")),
        dir.join(format!("{tag}-leaf.key")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Reads a PROXY v2 header as section 2.2 of the specification describes it: (source,
/// destination), or None when the bytes are not one.
fn read_proxy_v2(r: &mut impl Read) -> Option<(SocketAddr, SocketAddr)> {
    let mut fixed = [0u8; 16];
    r.read_exact(&mut fixed).ok()?;
    if fixed[..12] != *b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A" || fixed[12] != 0x21 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut block = vec![0u8; len];
    r.read_exact(&mut block).ok()?;
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match (fixed[13], len) {
        (0x11, 12) => {
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&block[at..at + 4]).unwrap());
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        (0x21, 36) => {
            let ip = |at: usize| {
                IpAddr::from(Ipv6Addr::from(
                    <[u8; 16]>::try_from(&block[at..at + 16]).unwrap(),
                ))
            };
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        _ => None,
    }
}

#[derive(Default)]
struct Shared {
    accepts: AtomicUsize,
    requests: AtomicUsize,
    /// Connections whose PROXY header or TLS handshake failed.
    refused: AtomicUsize,
    stop: AtomicBool,
}

/// A backend on 127.0.0.1 that optionally expects a PROXY v2 header, then optionally TLS, then
/// answers each request with `src=<header source or -> sni=<name or ->`.
struct PeerBackend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

fn answer(stream: impl Read + Write, what: &str, shared: &Shared) {
    let mut r = BufReader::new(stream);
    while let Some(_req) = read_request(&mut r) {
        shared.requests.fetch_add(1, SeqCst);
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{what}",
            what.len()
        );
        if r.get_mut().write_all(resp.as_bytes()).is_err() || r.get_mut().flush().is_err() {
            return;
        }
    }
}

impl PeerBackend {
    fn start(proxy_v2: bool, tls: Option<Arc<ServerConfig>>) -> PeerBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for stream in listener.incoming() {
                if sh.stop.load(SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                sh.accepts.fetch_add(1, SeqCst);
                stream.set_read_timeout(Some(IO_LIMIT)).unwrap();
                let (sh, tls) = (sh.clone(), tls.clone());
                conns.push(std::thread::spawn(move || {
                    let src = if proxy_v2 {
                        match read_proxy_v2(&mut stream) {
                            Some((src, _)) => src.to_string(),
                            None => {
                                sh.refused.fetch_add(1, SeqCst);
                                return;
                            }
                        }
                    } else {
                        "-".to_string()
                    };
                    match tls {
                        None => answer(stream, &format!("src={src} sni=-"), &sh),
                        Some(config) => {
                            let mut conn = rustls::ServerConnection::new(config).unwrap();
                            while conn.is_handshaking() {
                                if conn.complete_io(&mut stream).is_err() {
                                    sh.refused.fetch_add(1, SeqCst);
                                    return;
                                }
                            }
                            let sni = conn.server_name().unwrap_or("-").to_owned();
                            let what = format!("src={src} sni={sni}");
                            answer(rustls::StreamOwned::new(conn, stream), &what, &sh);
                        }
                    }
                }));
            }
            for c in conns {
                let _ = c.join();
            }
        });
        PeerBackend {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    fn accepts(&self) -> usize {
        self.shared.accepts.load(SeqCst)
    }

    fn requests(&self) -> usize {
        self.shared.requests.load(SeqCst)
    }

    fn refused(&self) -> usize {
        self.shared.refused.load(SeqCst)
    }
}

impl Drop for PeerBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One service `up` with one backend at `addr`, reached as `upstream` says; every request to it.
fn table(addr: SocketAddr, upstream: UpstreamSpec) -> TableSpec {
    TableSpec {
        services: vec![ServiceSpec {
            name: "up".into(),
            endpoints: vec![dataplane::l7::route::EndpointSpec { addr, weight: 1 }],
            policy: dataplane::l7::route::Policy::RoundRobin,
            upstream,
        }],
        routes: vec![route(&[], "/", "up")],
        default_backend: None,
    }
}

fn start(spec: &TableSpec) -> Proxy {
    let routes = Arc::new(ArcSwap::from_pointee(
        RouteTable::try_compile(spec).expect("backend TLS settings load"),
    ));
    let config = ProxyConfig {
        listeners: vec![ListenerSpec {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: None,
        }],
        workers: 1,
        conn: short_timeouts(),
        linger: 500,
        ..ProxyConfig::default()
    };
    Proxy::start(config, routes).unwrap()
}

fn proxy_v2() -> UpstreamSpec {
    UpstreamSpec {
        proxy_protocol: Some(ProxyProtocol::V2),
        tls: None,
    }
}

fn tls_to(ca: Option<&Path>, server_name: Option<&str>, insecure: bool) -> UpstreamSpec {
    UpstreamSpec {
        proxy_protocol: None,
        tls: Some(BackendTlsSpec {
            ca: ca.map(Path::to_path_buf),
            server_name: server_name.map(str::to_owned),
            insecure_skip_verify: insecure,
        }),
    }
}

fn tls_server(cert: &Path, key: &Path) -> Arc<ServerConfig> {
    server_config(&TlsSpec {
        certs: vec![CertSpec {
            names: vec![],
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }],
    })
    .unwrap()
}

/// A GET on a client connection: (status, body).
fn get(c: &mut Client) -> (u16, String) {
    let r = c.get("a.test", "/").expect("a response");
    (r.status, r.text())
}

fn local(c: &Client) -> SocketAddr {
    c.writer.local_addr().unwrap()
}

#[test]
fn proxy_v2_carries_each_clients_address_and_its_connection_stays_private() {
    let b = PeerBackend::start(true, None);
    let proxy = start(&table(b.addr, proxy_v2()));
    let addr = proxy.local_addrs()[0];
    let mut a = Client::connect(addr);
    assert_eq!(get(&mut a), (200, format!("src={} sni=-", local(&a))));
    // A's backend connection is idle now: B must not get it (it carries A's address).
    let mut bc = Client::connect(addr);
    assert_eq!(get(&mut bc), (200, format!("src={} sni=-", local(&bc))));
    assert_eq!(b.accepts(), 2);
    // A's next request reuses A's own connection.
    assert_eq!(get(&mut a), (200, format!("src={} sni=-", local(&a))));
    assert_eq!(b.accepts(), 2);
    // curl, as a user would run it: the backend saw curl's own address and port.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            " %{local_ip}:%{local_port}",
        ])
        .arg(format!("http://{addr}/"))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, curl) = out.rsplit_once(' ').unwrap();
    assert_eq!(body, format!("src={curl} sni=-"));
    assert_eq!(b.refused(), 0);
    drop((a, bc));
    let c = stop_and_count(proxy);
    assert_eq!((c.backend_opened, c.backend_reused), (3, 1));
}

#[test]
fn tls_to_a_backend_verified_by_name_or_by_address() {
    let dir = TempDir::new("verify");
    let (ca, cert, key) = make_certs(&dir.0, "good");
    let b = PeerBackend::start(false, Some(tls_server(&cert, &key)));
    for (name, sni) in [(Some("backend.test"), "backend.test"), (None, "-")] {
        let proxy = start(&table(b.addr, tls_to(Some(&ca), name, false)));
        let mut c = Client::connect(proxy.local_addrs()[0]);
        assert_eq!(get(&mut c), (200, format!("src=- sni={sni}")));
        // Keep-alive over TLS: the same backend connection serves the second request.
        assert_eq!(get(&mut c), (200, format!("src=- sni={sni}")));
        drop(c);
        let n = stop_and_count(proxy);
        assert_eq!((n.backend_failed, n.answers[1]), (0, 2), "{name:?}");
    }
    assert_eq!((b.accepts(), b.requests()), (2, 4));
}

#[test]
fn a_backend_certificate_of_another_ca_is_a_counted_502() {
    let dir = TempDir::new("wrong");
    let (_, cert, key) = make_certs(&dir.0, "real");
    let (other_ca, _, _) = make_certs(&dir.0, "other");
    let b = PeerBackend::start(false, Some(tls_server(&cert, &key)));
    let proxy = start(&table(
        b.addr,
        tls_to(Some(&other_ca), Some("backend.test"), false),
    ));
    let mut c = Client::connect(proxy.local_addrs()[0]);
    assert_eq!(get(&mut c).0, 502);
    // A name the certificate does not carry fails the same way, even with the right CA.
    let ca = dir.0.join("real-ca.pem");
    let wrong_name = start(&table(b.addr, tls_to(Some(&ca), Some("other.test"), false)));
    let mut c2 = Client::connect(wrong_name.local_addrs()[0]);
    assert_eq!(get(&mut c2).0, 502);
    drop((c, c2));
    for p in [proxy, wrong_name] {
        let n: Counters = stop_and_count(p);
        assert_eq!((n.backend_failed, n.answers[4]), (1, 1));
    }
    assert_eq!(b.requests(), 0, "nothing reached the backend");
    // The backend's threads see the alerts in their own time: wait, bounded.
    let deadline = Instant::now() + IO_LIMIT;
    while b.refused() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(b.refused(), 2, "both handshakes failed");
}

#[test]
fn insecure_skip_verify_accepts_any_certificate() {
    let dir = TempDir::new("insecure");
    let (_, cert, key) = make_certs(&dir.0, "any");
    let b = PeerBackend::start(false, Some(tls_server(&cert, &key)));
    let proxy = start(&table(b.addr, tls_to(None, None, true)));
    let mut c = Client::connect(proxy.local_addrs()[0]);
    assert_eq!(get(&mut c), (200, "src=- sni=-".to_string()));
    drop(c);
    proxy.stop().unwrap();
}

#[test]
fn proxy_v2_goes_first_in_clear_then_tls() {
    let dir = TempDir::new("both");
    let (ca, cert, key) = make_certs(&dir.0, "both");
    let b = PeerBackend::start(true, Some(tls_server(&cert, &key)));
    let mut spec = tls_to(Some(&ca), Some("backend.test"), false);
    spec.proxy_protocol = Some(ProxyProtocol::V2);
    let proxy = start(&table(b.addr, spec));
    let mut c = Client::connect(proxy.local_addrs()[0]);
    assert_eq!(
        get(&mut c),
        (200, format!("src={} sni=backend.test", local(&c)))
    );
    drop(c);
    proxy.stop().unwrap();
    assert_eq!(b.refused(), 0);
}

#[test]
fn a_ca_file_that_does_not_load_refuses_the_table() {
    let dir = TempDir::new("noca");
    let missing = dir.0.join("missing-ca.pem");
    let spec = table(
        "127.0.0.1:1".parse().unwrap(),
        tls_to(Some(&missing), None, false),
    );
    let (service, err) = RouteTable::try_compile(&spec).unwrap_err();
    assert_eq!(service, "up");
    assert!(err.to_string().contains("missing-ca.pem"), "{err}");
    // compile still serves, with 502 for that service.
    let proxy = {
        let routes = Arc::new(ArcSwap::from_pointee(RouteTable::compile(&spec)));
        let config = ProxyConfig {
            listeners: vec![ListenerSpec {
                addr: "127.0.0.1:0".parse().unwrap(),
                tls: None,
            }],
            conn: short_timeouts(),
            linger: 500,
            ..ProxyConfig::default()
        };
        Proxy::start(config, routes).unwrap()
    };
    let mut c = Client::connect(proxy.local_addrs()[0]);
    assert_eq!(get(&mut c).0, 502);
    drop(c);
    assert_eq!(stop_and_count(proxy).backend_failed, 1);
}

/// HAProxy as the backend: `accept-proxy` and `ssl` on its bind, answering with the source
/// address it took from the PROXY header. Killed when dropped.
struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn haproxy_takes_our_proxy_v2_header_over_tls() {
    let dir = TempDir::new("haproxy");
    let (ca, cert, key) = make_certs(&dir.0, "hap");
    // HAProxy takes the chain and key in one file.
    let bundle = dir.0.join("hap-bundle.pem");
    let mut pem = std::fs::read(&cert).unwrap();
    pem.extend(std::fs::read(&key).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = dir.0.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stderr format raw local0 err\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind 127.0.0.1:{port} accept-proxy ssl crt {}\n\
             \x20 http-request return status 200 content-type text/plain lf-string \"src=%[src]:%[src_port] sni=%[ssl_fc_sni]\"\n",
            bundle.display()
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haproxy starts");
    let mut hap = Haproxy(child);
    let backend: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Bounded wait for HAProxy to listen.
    let deadline = Instant::now() + IO_LIMIT;
    while TcpStream::connect(backend).is_err() {
        if let Ok(Some(status)) = hap.0.try_wait() {
            let mut err = String::new();
            let _ = hap.0.stderr.take().unwrap().read_to_string(&mut err);
            panic!("haproxy exited {status}: {err}");
        }
        assert!(Instant::now() < deadline, "haproxy did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut spec = tls_to(Some(&ca), Some("backend.test"), false);
    spec.proxy_protocol = Some(ProxyProtocol::V2);
    let proxy = start(&table(backend, spec));
    let mut c = Client::connect(proxy.local_addrs()[0]);
    assert_eq!(
        get(&mut c),
        (200, format!("src={} sni=backend.test", local(&c)))
    );
    drop(c);
    assert_eq!(stop_and_count(proxy).backend_failed, 0);
    drop(hap);
}

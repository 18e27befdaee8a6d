//! The mio transport with real peers on 127.0.0.1: wrk as the client, nginx as the backend (its
//! access log counts the backend connections), openssl s_client for two SNI names. The peers are
//! in scripts/packages.txt; the tests are ignored when run by a plain `cargo test` (see
//! `testkit::require_programs`) and run by scripts/test.sh.

mod l7_net;

use dataplane::l7::route::{EndpointSpec, Policy, ServiceSpec};
use dataplane::l7::tls::{server_config, CertSpec, TlsSpec};
use dataplane::l7::{ConnConfig, RouteTable, TableSpec};
use dataplane::net::{ListenerSpec, Proxy, ProxyConfig};
use l7_net::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        // Tests run in parallel: one directory each.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, SeqCst);
        let dir = std::env::temp_dir().join(format!("l7-peers-{tag}-{}-{n}", std::process::id()));
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

/// Runs a program with `input` on its stdin, killed after `limit`; its output.
fn run_bounded(cmd: &mut Command, input: &[u8], limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the program starts");
    let _ = child.stdin.take().unwrap().write_all(input);
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// nginx serving `nginx\n` on 127.0.0.1 from a temporary prefix, as the current user, in the
/// foreground (one process); its access log names each request's connection. Killed on drop.
struct Nginx {
    addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Nginx {
    fn start() -> Nginx {
        Nginx::with_keepalive_timeout("75s")
    }

    /// nginx closing a keep-alive connection idle for `timeout` (nginx's syntax: `100ms`).
    fn with_keepalive_timeout(timeout: &str) -> Nginx {
        let dir = TempDir::new("nginx");
        let d = dir.0.display();
        // nginx cannot listen on port 0: take a free port and hand it over (retried if taken).
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = format!(
                "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;
                 events {{ worker_connections 1024; }}
                 http {{
                   client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
                   uwsgi_temp_path {d}; scgi_temp_path {d};
                   log_format conns '$connection $request';
                   access_log {d}/access.log conns;
                   keepalive_requests 1000000; keepalive_timeout {timeout};
                   server {{ listen 127.0.0.1:{port};
                     location / {{ default_type text/plain; return 200 'nginx\\n'; }} }}
                 }}"
            );
            std::fs::write(dir.0.join("nginx.conf"), conf).unwrap();
            let mut child = Command::new("nginx")
                .arg("-p")
                .arg(&dir.0)
                .arg("-c")
                .arg(dir.0.join("nginx.conf"))
                .arg("-e")
                .arg(dir.0.join("error.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx starts");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + IO_LIMIT;
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect(addr).is_ok() {
                    return Nginx { addr, child, dir };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.0.join("error.log")).unwrap_or_default();
        panic!("nginx did not start: {log}");
    }

    /// (requests, distinct connections) in the access log, the readiness probes' connections
    /// excluded (they send no request).
    /// nginx writes a request's line after its response has gone, so the log is read until it
    /// stops growing (bounded: 2 s).
    fn log(&self) -> (usize, usize) {
        let read = || std::fs::read_to_string(self.dir.0.join("access.log")).unwrap_or_default();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut log = read();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let again = read();
            let stable = again.len() == log.len();
            log = again;
            if stable || std::time::Instant::now() > deadline {
                break;
            }
        }
        let conns: BTreeSet<&str> = log.lines().filter_map(|l| l.split(' ').next()).collect();
        (log.lines().count(), conns.len())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything to nginx.
fn to_nginx(nginx: &Nginx) -> TableSpec {
    TableSpec {
        services: vec![ServiceSpec {
            name: "nginx".into(),
            endpoints: vec![EndpointSpec {
                addr: nginx.addr,
                weight: 1,
            }],
            policy: Policy::RoundRobin,
            upstream: Default::default(),
        }],
        routes: vec![route(&[], "/", "nginx")],
        default_backend: None,
    }
}

/// What wrk reported.
#[derive(Debug)]
struct WrkRun {
    requests: u64,
    /// Non-2xx answers plus socket errors.
    errors: u64,
    report: String,
}

/// wrk with `conns` connections for `secs` seconds (plus `extra` arguments) against `addr`.
fn wrk(addr: SocketAddr, conns: usize, secs: u64, extra: &[&str]) -> WrkRun {
    let out = run_bounded(
        Command::new("wrk")
            .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")])
            .args(extra)
            .arg(format!("http://{addr}/")),
        b"",
        Duration::from_secs(secs + 20),
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {report}");
    let number_after = |label: &str| -> u64 {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0)
    };
    let requests = report
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in: {report}"));
    let errors = number_after("Non-2xx or 3xx responses:") + number_after("Socket errors:");
    WrkRun {
        requests,
        errors,
        report,
    }
}

#[test]
#[ignore = "needs nginx, wrk and openssl: scripts/test.sh installs and runs it"]
fn wrk_keep_alive_through_the_proxy_reuses_nginx_connections() {
    testkit::require_programs(&["nginx", "wrk"]);
    let nginx = Nginx::start();
    // One worker: one pool, so nginx sees at most one connection per concurrent request.
    let (proxy, _) = proxy(&to_nginx(&nginx), 1, ConnConfig::default());
    let run = wrk(proxy.local_addrs()[0], 8, 2, &[]);
    let counters = stop_and_count(proxy);
    assert_eq!(run.errors, 0, "{}", run.report);
    assert!(run.requests >= 100, "too few requests: {}", run.report);
    let (requests, conns) = nginx.log();
    // wrk stops counting at its deadline; what was in flight then still reached nginx.
    assert!(requests as u64 >= run.requests, "{requests} < {run:?}");
    // wrk keeps its 8 connections (after a first one that only checks the address).
    assert!(counters.accepted <= 9, "{counters:?}");
    // What the proxy counts is what nginx saw: connections opened, the rest reused; up to one
    // request per client connection may be cut at the end (wrk's exit, the proxy's stop).
    assert_eq!(counters.backend_opened, conns as u64, "{counters:?}");
    let (answered, sent) = (
        counters.answers[1],
        counters.backend_opened + counters.backend_reused,
    );
    let logged = requests as u64;
    assert!(
        answered <= logged && logged <= answered + 8,
        "{logged} {counters:?}"
    );
    assert!(
        logged <= sent && sent <= logged + 8,
        "{logged} {counters:?}"
    );
    assert!(
        conns <= 8 && requests >= 10 * conns,
        "{conns} backend connections for {requests} requests"
    );
}

#[test]
#[ignore = "needs nginx, wrk and openssl: scripts/test.sh installs and runs it"]
fn wrk_new_connection_per_request_still_reuses_nginx_connections() {
    testkit::require_programs(&["nginx", "wrk"]);
    let nginx = Nginx::start();
    let (proxy, _) = proxy(&to_nginx(&nginx), 1, ConnConfig::default());
    let run = wrk(proxy.local_addrs()[0], 4, 2, &["-H", "Connection: close"]);
    let counters = stop_and_count(proxy);
    assert_eq!(run.errors, 0, "{}", run.report);
    assert!(run.requests >= 100, "too few requests: {}", run.report);
    let (requests, conns) = nginx.log();
    // One client connection per request, the backend connections outlive them in the pool
    // (up to one request per client connection may be cut at the end).
    assert!(counters.accepted >= run.requests, "{counters:?} {run:?}");
    let logged = requests as u64;
    assert!(
        counters.answers[1] <= logged && logged <= counters.answers[1] + 4,
        "{logged} {counters:?}"
    );
    assert_eq!(counters.backend_opened, conns as u64, "{counters:?}");
    assert!(
        conns <= 4 && requests >= 10 * conns,
        "{conns} backend connections for {requests} requests"
    );
}

#[test]
#[ignore = "needs nginx, wrk and openssl: scripts/test.sh installs and runs it"]
fn a_pooled_connection_nginx_closed_while_idle_is_not_reused() {
    testkit::require_programs(&["nginx"]);
    let nginx = Nginx::with_keepalive_timeout("100ms");
    let (proxy, _) = proxy(&to_nginx(&nginx), 1, ConnConfig::default());
    let addr = proxy.local_addrs()[0];
    assert_eq!(Client::connect(addr).get("x", "/").unwrap().status, 200);
    // nginx closes the pooled connection meanwhile; the proxy must notice, not send into it.
    std::thread::sleep(Duration::from_millis(600));
    let mut c = Client::connect(addr);
    assert_eq!(c.get("x", "/").unwrap().status, 200);
    assert_eq!(c.get("x", "/").unwrap().status, 200);
    let counters = stop_and_count(proxy);
    assert_eq!(nginx.log(), (3, 2), "{counters:?}");
    assert_eq!(
        (counters.backend_opened, counters.backend_reused),
        (2, 1),
        "the closed connection was not reused, the new one was"
    );
}

/// A self-signed certificate per name (CN = the name), written as PEM files.
fn self_signed(dir: &Path, names: &[&str]) -> Vec<CertSpec> {
    names
        .iter()
        .map(|name| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *name);
            let cert = params.self_signed(&key).unwrap();
            let (cert_path, key_path) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            CertSpec {
                names: vec![name.to_string()],
                cert: cert_path,
                key: key_path,
            }
        })
        .collect()
}

#[test]
#[ignore = "needs nginx, wrk and openssl: scripts/test.sh installs and runs it"]
fn openssl_s_client_gets_each_sni_names_certificate_and_route() {
    testkit::require_programs(&["openssl"]);
    let dir = TempDir::new("sni");
    let backends = [
        Backend::start("one", Mode::Name),
        Backend::start("two", Mode::Name),
    ];
    let spec = TableSpec {
        services: backends.iter().map(service).collect(),
        routes: vec![
            route(&["one.test"], "/", "one"),
            route(&["two.test"], "/", "two"),
        ],
        default_backend: None,
    };
    let tls = TlsSpec {
        certs: self_signed(&dir.0, &["one.test", "two.test"]),
    };
    let routes = Arc::new(arc_swap::ArcSwap::from_pointee(RouteTable::compile(&spec)));
    let config = ProxyConfig {
        listeners: vec![ListenerSpec {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: Some(server_config(&tls).unwrap()),
        }],
        linger: 500,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start(config, routes).unwrap();
    let addr = proxy.local_addrs()[0];
    // An unknown name gets the first certificate (the default) and no route.
    for (sni, want_cn, want_body) in [
        ("one.test", "one.test", "one"),
        ("two.test", "two.test", "two"),
        ("other.test", "one.test", "404"),
    ] {
        let request = format!("GET / HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n");
        let out = run_bounded(
            Command::new("openssl")
                .args(["s_client", "-connect", &addr.to_string()])
                .args(["-servername", sni, "-ign_eof", "-alpn", "http/1.1"]),
            request.as_bytes(),
            IO_LIMIT,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("subject=CN = {want_cn}")),
            "{sni}: {text}"
        );
        assert!(text.contains("ALPN protocol: http/1.1"), "{sni}: {text}");
        // s_client prints its own lines right after the body.
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let status_line = text
            .lines()
            .find(|l| l.starts_with("HTTP/1.1 "))
            .unwrap_or("");
        if want_body == "404" {
            assert!(status_line.starts_with("HTTP/1.1 404"), "{sni}: {text}");
        } else {
            assert!(status_line.starts_with("HTTP/1.1 200"), "{sni}: {text}");
            assert!(body.starts_with(want_body), "{sni}: {text}");
        }
    }
    let counters = stop_and_count(proxy);
    assert_eq!(counters.tls_failed, 0);
    assert_eq!((counters.answers[1], counters.answers[3]), (2, 1));
}

//! Shared pieces of the L7 transport tests: in-test HTTP backends on loopback, route tables and
//! a small raw HTTP/1.1 client. Every thread here ends when its owner is dropped.
#![allow(dead_code)]

use arc_swap::ArcSwap;
use dataplane::l7::route::{
    BackendRef, EndpointSpec, Origin, PathMatch, Policy, RouteSpec, ServiceSpec,
};
use dataplane::l7::{ConnConfig, RouteTable, TableSpec, Timeouts};
use dataplane::net::{Counters, ListenerSpec, Proxy, ProxyConfig};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bounds every blocking read in the tests: a hang fails instead of blocking forever.
pub const IO_LIMIT: Duration = Duration::from_secs(10);

/// What a backend does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 200 with its name as the body, keep-alive.
    Name,
    /// Reads the request and never answers.
    Silent,
    /// Sends a head promising 1000 bytes, 10 of them, then closes.
    CutMidBody,
    /// 101 to an upgrade request, then echoes every byte.
    UpgradeEcho,
    /// Reads the request and closes without a word.
    Hangup,
}

/// A request as a backend saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    accepts: AtomicUsize,
    bytes: AtomicUsize,
    stop: AtomicBool,
}

/// An HTTP/1.1 backend on 127.0.0.1 answering in its own threads.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(name: &str, mode: Mode) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let (sh, nm) = (shared.clone(), name.to_owned());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for stream in listener.incoming() {
                if sh.stop.load(SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                sh.accepts.fetch_add(1, SeqCst);
                let (sh, nm) = (sh.clone(), nm.clone());
                conns.push(std::thread::spawn(move || serve(stream, &nm, mode, &sh)));
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Backend {
            name: name.to_owned(),
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.shared.accepts.load(SeqCst)
    }

    /// Bytes received so far, all connections.
    pub fn bytes(&self) -> usize {
        self.shared.bytes.load(SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one byte at a time through a counting wrapper, stopping when the backend stops.
struct Counted<'a> {
    stream: TcpStream,
    shared: &'a Shared,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.shared.stop.load(SeqCst) {
                return Ok(0);
            }
            match self.stream.read(buf) {
                Ok(n) => {
                    self.shared.bytes.fetch_add(n, SeqCst);
                    return Ok(n);
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn serve(stream: TcpStream, name: &str, mode: Mode, shared: &Shared) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut r = BufReader::new(Counted { stream, shared });
    loop {
        let Some(seen) = read_request(&mut r) else {
            return;
        };
        let upgrade = seen.header("upgrade").is_some();
        shared.seen.lock().unwrap().push(seen);
        let ok = match mode {
            Mode::Name => out.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: {name}\r\n\r\n{name}",
                    name.len()
                )
                .as_bytes(),
            ),
            Mode::Silent => continue,
            Mode::Hangup => return,
            Mode::CutMidBody => {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789");
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            Mode::UpgradeEcho if upgrade => {
                if out
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
                    .is_err()
                {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if out.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            Mode::UpgradeEcho => {
                out.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            }
        };
        if ok.is_err() {
            return;
        }
    }
}

/// One line, without its CRLF; bytes that are not UTF-8 (obs-text) are kept as U+FFFD.
fn line(r: &mut impl BufRead) -> Option<String> {
    let mut l = Vec::new();
    match r.read_until(b'\n', &mut l) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(
            String::from_utf8_lossy(&l)
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
    }
}

/// Reads one request (head and Content-Length or chunked body) as a backend sees it.
pub fn read_request(r: &mut impl BufRead) -> Option<Seen> {
    let start = line(r)?;
    let mut parts = start.split(' ');
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let l = line(r)?;
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let size = line(r)?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailers up to the empty line.
                while !line(r)?.is_empty() {}
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk);
            line(r)?;
        }
    } else if let Some(n) = get("content-length") {
        let mut b = vec![0; n.parse().ok()?];
        r.read_exact(&mut b).ok()?;
        body = b;
    }
    Some(Seen {
        method,
        path,
        host: get("host"),
        headers,
        body,
    })
}

/// A response as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response (Content-Length, chunked, or until close). None: the connection ended
/// (or timed out) before a whole response.
pub fn read_response(r: &mut impl BufRead) -> Option<Response> {
    let start = line(r)?;
    let status = start.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let l = line(r)?;
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if status == 101 || status == 204 || status == 304 {
    } else if get("transfer-encoding").is_some() {
        loop {
            let size = usize::from_str_radix(line(r)?.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                while !line(r)?.is_empty() {}
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk);
            line(r)?;
        }
    } else if let Some(n) = get("content-length") {
        let mut b = vec![0; n.parse().ok()?];
        r.read_exact(&mut b).ok()?;
        body = b;
    } else {
        r.read_to_end(&mut body).ok()?;
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

/// A client connection to the proxy with a bounded read timeout.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(IO_LIMIT)).unwrap();
        Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn get(&mut self, host: &str, path: &str) -> Option<Response> {
        self.send(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes());
        read_response(&mut self.reader)
    }

    /// True when the proxy closed the connection (EOF), false on data or timeout.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
            || matches!(self.reader.read(&mut b), Err(e) if e.kind() == io::ErrorKind::ConnectionReset)
    }
}

/// One service per backend, named by it.
pub fn service(b: &Backend) -> ServiceSpec {
    ServiceSpec {
        name: b.name.clone(),
        endpoints: vec![EndpointSpec {
            addr: b.addr,
            weight: 1,
        }],
        policy: Policy::RoundRobin,
        upstream: Default::default(),
    }
}

/// An Ingress route: hosts, a prefix (or exact with a leading `=`), one service.
pub fn route(hosts: &[&str], path: &str, service: &str) -> RouteSpec {
    RouteSpec {
        cookies: Vec::new(),
        origin: Origin::Ingress,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path: match path.strip_prefix('=') {
            Some(p) => PathMatch::Exact(p.into()),
            None => PathMatch::Prefix(path.into()),
        },
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

/// Everything to one backend.
pub fn catch_all(b: &Backend) -> TableSpec {
    TableSpec {
        services: vec![service(b)],
        routes: vec![route(&[], "/", &b.name)],
        default_backend: None,
    }
}

/// Short timeouts, so the timeout tests end quickly.
pub fn short_timeouts() -> ConnConfig {
    ConnConfig {
        timeouts: Timeouts {
            header_read: 2_000,
            idle: 5_000,
            connect: 1_000,
            total: 1_000,
        },
        ..ConnConfig::default()
    }
}

/// Stops the proxy (joining its workers, so every count is final) and sums its counters.
pub fn stop_and_count(proxy: Proxy) -> Counters {
    let metrics = proxy.metrics().to_vec();
    proxy.stop().unwrap();
    let mut total = Counters::default();
    for m in &metrics {
        total.add(&m.read());
    }
    total
}

/// A proxy on 127.0.0.1 (one plain listener) serving `spec`, with `workers` workers.
pub fn proxy(
    spec: &TableSpec,
    workers: usize,
    conn: ConnConfig,
) -> (Proxy, Arc<ArcSwap<RouteTable>>) {
    let routes = Arc::new(ArcSwap::from_pointee(RouteTable::compile(spec)));
    let config = ProxyConfig {
        listeners: vec![ListenerSpec {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: None,
        }],
        workers,
        conn,
        linger: 500,
        ..ProxyConfig::default()
    };
    (Proxy::start(config, routes.clone()).unwrap(), routes)
}

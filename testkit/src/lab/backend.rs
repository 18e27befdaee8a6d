//! The lab's backends: a tiny threaded HTTP/1.1 server that answers every request with its name,
//! and a UDP echo that answers every datagram with its name (`lb lab-backend`).
//!
//! They only have to show which backend a connection reached, so they do the least HTTP that
//! `curl` and [`super::http_get`] accept: read up to the end of the request head, answer `200 OK`
//! with `Content-Length`, keep the connection open for the next request until the client closes.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// Longest request head we read before giving up on a connection.
const MAX_HEAD: usize = 8192;
/// A client that says nothing for this long loses its connection (keeps idle threads bounded).
const IDLE: Duration = Duration::from_secs(30);

/// Binds every port (dual-stack `[::]`, so IPv4 clients reach it too), prints `ready` on stdout
/// and serves until killed.
pub fn serve(name: &str, http: &[u16], udp: &[u16]) -> io::Result<()> {
    let mut listeners = Vec::new();
    for &port in http {
        let l = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
            .map_err(|e| io::Error::new(e.kind(), format!("http port {port}: bind: {e}")))?;
        listeners.push(l);
    }
    let mut sockets = Vec::new();
    for &port in udp {
        let s = UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
            .map_err(|e| io::Error::new(e.kind(), format!("udp port {port}: bind: {e}")))?;
        sockets.push(s);
    }
    for l in listeners {
        let name = name.to_owned();
        std::thread::spawn(move || accept_loop(&name, &l));
    }
    for s in sockets {
        let name = name.to_owned();
        std::thread::spawn(move || udp_loop(&name, &s));
    }
    // The lab waits for this line before it sends traffic.
    let mut out = io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    loop {
        std::thread::park();
    }
}

/// Serves HTTP on `l` from a thread of its own, answering every request with `name` (the lab
/// backend in-process, for tests on loopback).
pub fn spawn_http(name: &str, l: TcpListener) {
    let name = name.to_owned();
    std::thread::spawn(move || accept_loop(&name, &l));
}

fn accept_loop(name: &str, l: &TcpListener) {
    for conn in l.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.to_owned();
        std::thread::spawn(move || {
            if let Err(e) = serve_http(&name, conn) {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

/// Answers requests on one connection until the client closes it or sends `Connection: close`.
fn serve_http(name: &str, conn: TcpStream) -> io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let body = format!("{name}\n");
    loop {
        let mut head_len = 0;
        let mut close = false;
        let mut first = true;
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line)?;
            if n == 0 {
                return Ok(());
            }
            head_len += n;
            if head_len > MAX_HEAD {
                return Err(io::Error::other("request head too long"));
            }
            let l = line.trim_end().to_ascii_lowercase();
            if first {
                first = false;
                // HTTP/1.0 closes after one answer unless asked otherwise.
                close = l.ends_with("http/1.0");
                continue;
            }
            if l.is_empty() {
                break;
            }
            if l.starts_with("connection:") && l.contains("close") {
                close = true;
            }
        }
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

fn udp_loop(name: &str, s: &UdpSocket) {
    let mut buf = [0u8; 2048];
    loop {
        match s.recv_from(&mut buf) {
            Ok((_, from)) => {
                let _ = s.send_to(name.as_bytes(), from);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "udp echo: receive failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

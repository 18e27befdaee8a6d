//! The lab's clients: HTTP GET (one-shot and keep-alive), UDP echo and ICMP echo, each from a
//! chosen source address. Call them from a thread inside the client's namespace.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// A socket of `addr`'s family, bound to `src` when given.
fn socket_for(addr: SocketAddr, ty: Type, src: Option<IpAddr>) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, None)?;
    if let Some(src) = src {
        s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    }
    Ok(s)
}

/// One HTTP GET on a new connection (from `src` if given) to `dst`; returns the body. Call it from
/// a thread inside the client's namespace.
pub fn http_get(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    let s = socket_for(dst, Type::STREAM, src)?;
    s.connect_timeout(&SockAddr::from(dst), timeout)?;
    let mut conn = TcpStream::from(s);
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    write!(
        conn,
        "GET / HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    parse_http_body(&answer)
}

/// A GET with a chosen Host, path and extra header fields (what an HTTP route matches on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The Host header.
    pub host: String,
    /// The request target (origin form).
    pub path: String,
    /// More header fields.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// `GET path` for `host`, no other fields.
    pub fn new(host: &str, path: &str) -> Request {
        Request {
            host: host.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
        }
    }

    /// Adds a header field.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn write_to(&self, w: &mut impl Write, close: bool) -> io::Result<()> {
        let mut head = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", self.path, self.host);
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes())
    }
}

/// Sends `req` on a new connection from `src` (when given) and returns the body of a 200 answer
/// (the backend's name); any other status is an error naming the status line.
pub fn http_request(
    src: Option<IpAddr>,
    dst: SocketAddr,
    req: &Request,
    timeout: Duration,
) -> io::Result<String> {
    let s = socket_for(dst, Type::STREAM, src)?;
    s.connect_timeout(&SockAddr::from(dst), timeout)?;
    let mut conn = TcpStream::from(s);
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    req.write_to(&mut conn, true)?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    parse_http_body(&answer)
}

/// The body of a `200` answer.
fn parse_http_body(answer: &str) -> io::Result<String> {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "incomplete HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("HTTP status line {status:?}"),
        ));
    }
    Ok(body.trim_end().to_owned())
}

/// An HTTP/1.1 connection that stays open for several requests (to check a flow keeps its backend).
#[derive(Debug)]
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    /// Connects (from `src` if given) to `dst`.
    pub fn connect(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let s = socket_for(dst, Type::STREAM, src)?;
        s.connect_timeout(&SockAddr::from(dst), timeout)?;
        let conn = TcpStream::from(s);
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        Ok(KeepAlive {
            reader: BufReader::new(conn.try_clone()?),
            writer: conn,
        })
    }

    /// Sends one request and returns the body of the answer.
    pub fn get(&mut self) -> io::Result<String> {
        self.request(&Request::new("lab", "/"))
    }

    /// Sends `req` on the connection and reads its answer as [`KeepAlive::get`] does.
    pub fn request(&mut self, req: &Request) -> io::Result<String> {
        req.write_to(&mut self.writer, false)?;
        let mut len = None;
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            head.push_str(&line);
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let len = len.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "answer has no Content-Length")
        })?;
        let mut body = vec![0; len.min(65536)];
        self.reader.read_exact(&mut body)?;
        head.push_str(&String::from_utf8_lossy(&body));
        parse_http_body(&head)
    }
}

/// One UDP datagram (from `src` if given) to `dst`; returns the answer. Call it from a thread
/// inside the client's namespace.
pub fn udp_echo(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    let s = UdpSocket::from(socket_for(dst, Type::DGRAM, src)?);
    s.set_read_timeout(Some(timeout))?;
    // Connected: only the VIP's answer is accepted, as a real client would.
    s.connect(dst)?;
    s.send(b"hello")?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned())
}

/// Sends one ICMP (v6) echo request to `dst` with a raw socket and waits for the matching reply;
/// returns the round-trip time. Call it from a thread inside the client's namespace.
pub fn ping(dst: IpAddr, seq: u16, timeout: Duration) -> io::Result<Duration> {
    let (domain, proto, request_type, reply_type) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128, 129),
    };
    let s = Socket::new(domain, Type::RAW, Some(proto))?;
    let id = (std::process::id() as u16) ^ seq.rotate_left(8);
    let mut msg = [0u8; 16];
    msg[0] = request_type;
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&seq.to_be_bytes());
    msg[8..].copy_from_slice(b"lb-lab!!");
    if dst.is_ipv4() {
        // The kernel computes the ICMPv6 checksum itself (it needs the pseudo-header).
        let c = dataplane::wire::checksum::icmpv4(&msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let start = Instant::now();
    s.send_to(&msg, &SockAddr::from(SocketAddr::new(dst, 0)))?;
    let mut sock = UdpLike(s);
    let mut buf = [0u8; 1500];
    loop {
        let left = timeout.checked_sub(start.elapsed()).unwrap_or_default();
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no echo reply from {dst}"),
            ));
        }
        sock.0.set_read_timeout(Some(left))?;
        let n = match sock.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let pkt = buf.get(..n).unwrap_or_default();
        // IPv4 raw sockets include the IP header, IPv6 ones do not.
        let icmp = if dst.is_ipv4() {
            let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
            pkt.get(ihl..).unwrap_or_default()
        } else {
            pkt
        };
        if icmp.first() == Some(&reply_type)
            && icmp.get(4..6) == Some(&id.to_be_bytes()[..])
            && icmp.get(6..8) == Some(&seq.to_be_bytes()[..])
        {
            return Ok(start.elapsed());
        }
    }
}

/// `Read` for a raw socket (socket2's `Read` impl is on `&Socket`).
struct UdpLike(Socket);

impl Read for UdpLike {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_bodies_are_taken_from_200_answers_only() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npod-a\n";
        assert_eq!(parse_http_body(ok).unwrap(), "pod-a");
        let e = parse_http_body("HTTP/1.1 503 Busy\r\n\r\nx").unwrap_err();
        assert!(e.to_string().contains("503"));
        assert!(parse_http_body("HTTP/1.1 200 OK\r\n").is_err());
    }
}

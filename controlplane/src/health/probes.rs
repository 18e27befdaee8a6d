//! The probes: a TCP connect, or an HTTP/1.1 GET whose status line must match, each bounded by the
//! check's timeout, on the checker's tokio runtime.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{fmt_duration, MAX_WAIT};
use crate::config::{CheckKind, HealthCheck, StatusRange};

/// Longest HTTP status line read; a longer one fails the probe.
const MAX_STATUS_LINE: usize = 512;

fn fmt_range(r: &StatusRange) -> String {
    if r.lo == r.hi {
        r.lo.to_string()
    } else {
        format!("{}-{}", r.lo, r.hi)
    }
}

/// An I/O error as a short lowercase phrase (`"connection refused"`), without the OS error number.
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let s = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::NotConnected => "not connected",
        K::BrokenPipe => "connection closed by the backend",
        K::AddrNotAvailable => "address not available",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::TimedOut => "timed out",
        K::PermissionDenied => "permission denied",
        _ => return e.to_string(),
    };
    s.to_string()
}

/// Errors that come from this host, never from the backend: out of descriptors (EMFILE, ENFILE),
/// buffers (ENOBUFS), memory (ENOMEM) or local ports (EADDRNOTAVAIL on connect). Linux numbers;
/// the crate forbids unsafe and does not link libc.
const LOCAL_ERRNOS: [i32; 5] = [24, 23, 105, 12, 99];

/// True when `e` says this host could not try, rather than that the backend failed.
pub fn is_local_error(e: &std::io::Error) -> bool {
    e.raw_os_error().is_some_and(|n| LOCAL_ERRNOS.contains(&n))
}

/// A failed connect to `addr`: local ([`ProbeError::Local`]) or the backend's.
fn connect_error(addr: SocketAddr, e: &std::io::Error) -> ProbeError {
    if is_local_error(e) {
        ProbeError::Local {
            addr,
            reason: e.to_string(),
        }
    } else {
        ProbeError::Connect {
            addr,
            reason: io_reason(e),
        }
    }
}

/// Why one probe failed. The text is what `/state`, the logs and `Health::Down` show, e.g.
/// `tcp connect to 198.18.1.10:8080: connection refused`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Neither the check, the backend nor the service names a port.
    #[error(
        "no port to probe: set health_check.port (neither the backend nor the service names one)"
    )]
    NoPort,
    /// The TCP connect failed.
    #[error("tcp connect to {addr}: {reason}")]
    Connect {
        /// The probed address.
        addr: SocketAddr,
        /// The I/O error as a short phrase (`connection refused`).
        reason: String,
    },
    /// This host could not run the probe (out of descriptors, buffers, memory or ports): says
    /// nothing about the backend, whose state is kept ([`ProbeError::is_local`]).
    #[error("probe of {addr} could not run on this host: {reason}")]
    Local {
        /// The probed address.
        addr: SocketAddr,
        /// The system's error.
        reason: String,
    },
    /// The TCP connect did not finish within the timeout.
    #[error("tcp connect to {addr}: timeout after {}", fmt_duration(*.after))]
    ConnectTimeout {
        /// The probed address.
        addr: SocketAddr,
        /// The check's timeout.
        after: Duration,
    },
    /// The HTTP exchange failed after the connect.
    #[error("http GET {path}: {source}")]
    Http {
        /// The check's path.
        path: String,
        /// What went wrong.
        source: HttpError,
    },
    /// The backend answered with a status outside the expected range.
    #[error("http GET {path} got {got}, expected {}", fmt_range(.expected))]
    Status {
        /// The check's path.
        path: String,
        /// The status received.
        got: u16,
        /// The range the check accepts.
        expected: StatusRange,
    },
}

impl ProbeError {
    /// True when the failure is this host's, not the backend's: the result is "unknown" and
    /// must not count towards taking the backend down.
    pub fn is_local(&self) -> bool {
        matches!(self, ProbeError::Local { .. })
    }
}

/// Why an HTTP check's exchange failed (after the TCP connect).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The check's path would break the request line.
    #[error("invalid path {0:?}: must start with / and hold no spaces or control characters")]
    InvalidPath(String),
    /// The check's host would break the Host header.
    #[error("invalid host {0:?}")]
    InvalidHost(String),
    /// Sending the request failed.
    #[error("send: {0}")]
    Send(String),
    /// Reading the answer failed.
    #[error("receive: {0}")]
    Receive(String),
    /// No status line within the timeout (connect included).
    #[error("timeout after {}", fmt_duration(*.0))]
    Timeout(Duration),
    /// The status line did not end within 512 bytes (`MAX_STATUS_LINE`).
    #[error("status line longer than {MAX_STATUS_LINE} bytes")]
    StatusLineTooLong,
    /// The backend closed the connection before answering.
    #[error("connection closed before a response")]
    ClosedBeforeResponse,
    /// The backend closed the connection in the middle of the status line.
    #[error("connection closed inside the status line")]
    ClosedInStatusLine,
    /// The status line is not HTTP/1.x.
    #[error(transparent)]
    BadStatusLine(#[from] BadStatusLine),
}

/// A status line that is not `HTTP/1.x NNN ...`; carries its first 64 characters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad status line {0:?}")]
pub struct BadStatusLine(pub String);

/// The outcome of one active probe: success, or why it failed.
pub type ProbeResult = Result<(), ProbeError>;

/// Parses an HTTP/1.x status line (without its line ending) and returns the status code.
pub fn parse_status_line(line: &[u8]) -> Result<u16, BadStatusLine> {
    let bad = || BadStatusLine(String::from_utf8_lossy(line).chars().take(64).collect());
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
    match rest {
        [minor, b' ', a, b, c, tail @ ..]
            if minor.is_ascii_digit()
                && [a, b, c].iter().all(|d| d.is_ascii_digit())
                && (tail.is_empty() || tail[0] == b' ') =>
        {
            let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
            if (100..=599).contains(&code) {
                Ok(code)
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

/// The request an HTTP check sends, or why it cannot be sent (a path or host that would break
/// the request line or headers).
fn http_request(probe: SocketAddr, check: &HealthCheck) -> Result<Vec<u8>, HttpError> {
    let unsafe_byte = |s: &str| s.bytes().any(|b| b <= b' ' || b == 0x7f);
    if !check.path.starts_with('/') || unsafe_byte(&check.path) {
        return Err(HttpError::InvalidPath(check.path.clone()));
    }
    let host = match &check.host {
        Some(h) if h.is_empty() || unsafe_byte(h) => {
            return Err(HttpError::InvalidHost(h.clone()));
        }
        Some(h) => h.clone(),
        None if probe.port() == 80 => match probe {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        },
        None => probe.to_string(),
    };
    Ok(format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: lb-health-check\r\n\
         Accept: */*\r\n\r\n",
        check.path
    )
    .into_bytes())
}

/// Runs one probe of `check` against `probe`; the whole probe is bounded by `check.timeout`.
pub async fn probe(probe: SocketAddr, check: &HealthCheck) -> ProbeResult {
    if probe.port() == 0 {
        return Err(ProbeError::NoPort);
    }
    match check.kind {
        CheckKind::Tcp => probe_tcp(probe, check.timeout).await,
        CheckKind::Http => probe_http(probe, check).await,
    }
}

/// A TCP connect to `addr` within `timeout`; the connection is closed at once.
pub async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> ProbeResult {
    let timeout = timeout.min(MAX_WAIT);
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(connect_error(addr, &e)),
        Err(_) => Err(ProbeError::ConnectTimeout {
            addr,
            after: timeout,
        }),
    }
}

/// An HTTP/1.1 `GET path` to `addr` whose status must be in `check.expect_status`, connect and
/// status line within `check.timeout`.
pub async fn probe_http(addr: SocketAddr, check: &HealthCheck) -> ProbeResult {
    let http = |source| ProbeError::Http {
        path: check.path.clone(),
        source,
    };
    let request = http_request(addr, check).map_err(http)?;
    let timeout = check.timeout.min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(connect_error(addr, &e)),
        Err(_) => {
            return Err(ProbeError::ConnectTimeout {
                addr,
                after: timeout,
            })
        }
    };
    let status = match tokio::time::timeout_at(deadline, status_of(stream, &request)).await {
        Ok(Ok(status)) => status,
        Ok(Err(StatusError::Local(e))) => {
            return Err(ProbeError::Local {
                addr,
                reason: e.to_string(),
            })
        }
        Ok(Err(StatusError::Http(e))) => return Err(http(e)),
        Err(_) => return Err(http(HttpError::Timeout(timeout))),
    };
    if check.expect_status.contains(status) {
        Ok(())
    } else {
        Err(ProbeError::Status {
            path: check.path.clone(),
            got: status,
            expected: check.expect_status,
        })
    }
}

/// Why [`status_of`] found no status: this host's error or the exchange's.
enum StatusError {
    Local(std::io::Error),
    Http(HttpError),
}

impl From<HttpError> for StatusError {
    fn from(e: HttpError) -> Self {
        StatusError::Http(e)
    }
}

impl From<BadStatusLine> for StatusError {
    fn from(e: BadStatusLine) -> Self {
        StatusError::Http(e.into())
    }
}

/// An I/O error of the exchange: this host's, or `http`'s kind of failure.
fn exchange_error(e: std::io::Error, http: fn(String) -> HttpError) -> StatusError {
    if is_local_error(&e) {
        StatusError::Local(e)
    } else {
        StatusError::Http(http(io_reason(&e)))
    }
}

/// Sends `request` and reads the response's status line.
async fn status_of(mut stream: TcpStream, request: &[u8]) -> Result<u16, StatusError> {
    stream
        .write_all(request)
        .await
        .map_err(|e| exchange_error(e, HttpError::Send))?;
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    loop {
        // RFC 9112 lets a recipient accept a bare LF as a line end.
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
            return Ok(parse_status_line(line)?);
        }
        if len == buf.len() {
            return Err(HttpError::StatusLineTooLong.into());
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| exchange_error(e, HttpError::Receive))?;
        if n == 0 {
            return Err(if len == 0 {
                HttpError::ClosedBeforeResponse
            } else {
                HttpError::ClosedInStatusLine
            }
            .into());
        }
        len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse_strictly() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
            Ok(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.1 301 "), Ok(301));
        for bad in [
            &b""[..],
            b"HTTP/2 200 OK",
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 abc OK",
            b"HTTP/1.1  200 OK",
            b"HTTP/1.1 099 OK",
            b"SSH-2.0-OpenSSH_9.2",
            b"\xff\xfe",
        ] {
            let e = parse_status_line(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad status line"), "{e}");
        }
    }

    #[test]
    fn requests_carry_host_and_refuse_injection() {
        let mut c = HealthCheck {
            kind: CheckKind::Http,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: Duration::ZERO,
            port: None,
            path: "/healthz".into(),
            host: None,
            expect_status: StatusRange { lo: 200, hi: 399 },
        };
        let req = |c: &HealthCheck, a: &str| {
            http_request(a.parse().unwrap(), c).map(|r| String::from_utf8(r).unwrap())
        };
        let r = req(&c, "198.18.1.10:8080").unwrap();
        assert!(
            r.starts_with("GET /healthz HTTP/1.1\r\nHost: 198.18.1.10:8080\r\n"),
            "{r}"
        );
        assert!(
            r.contains("\r\nConnection: close\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let r = req(&c, "[2001:db8::10]:80").unwrap();
        assert!(r.contains("\r\nHost: [2001:db8::10]\r\n"), "{r}");
        c.host = Some("web.example".into());
        assert!(req(&c, "198.18.1.10:80")
            .unwrap()
            .contains("\r\nHost: web.example\r\n"));
        c.path = "/x HTTP/1.1\r\nEvil: 1".into();
        assert!(matches!(
            req(&c, "198.18.1.10:80"),
            Err(HttpError::InvalidPath(p)) if p == c.path
        ));
        c.path = "/".into();
        c.host = Some("a\r\nb".into());
        let e = req(&c, "198.18.1.10:80").unwrap_err();
        assert_eq!(e, HttpError::InvalidHost("a\r\nb".into()));
        assert_eq!(e.to_string(), r#"invalid host "a\r\nb""#);
    }

    #[test]
    fn errors_of_this_host_are_unknown_not_the_backends_fault() {
        let addr: SocketAddr = "198.18.1.10:8080".parse().unwrap();
        // EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL: this host could not try.
        for errno in [24, 23, 105, 12, 99] {
            let e = connect_error(addr, &std::io::Error::from_raw_os_error(errno));
            assert!(e.is_local(), "errno {errno}: {e}");
            let text = e.to_string();
            assert!(
                text.starts_with("probe of 198.18.1.10:8080 could not run on this host: "),
                "{text}"
            );
        }
        // Refused, reset, unreachable, timed out: the backend's answer (or silence).
        for errno in [111, 104, 113, 101, 110] {
            let e = connect_error(addr, &std::io::Error::from_raw_os_error(errno));
            assert!(!e.is_local(), "errno {errno}: {e}");
            assert!(matches!(e, ProbeError::Connect { .. }), "{e}");
        }
        assert_eq!(
            connect_error(addr, &std::io::Error::from_raw_os_error(111)).to_string(),
            "tcp connect to 198.18.1.10:8080: connection refused"
        );
        assert!(!ProbeError::ConnectTimeout {
            addr,
            after: Duration::from_secs(1)
        }
        .is_local());
        assert!(matches!(
            exchange_error(std::io::Error::from_raw_os_error(105), HttpError::Send),
            StatusError::Local(_)
        ));
        assert!(matches!(
            exchange_error(std::io::Error::from_raw_os_error(104), HttpError::Receive),
            StatusError::Http(HttpError::Receive(r)) if r == "connection reset"
        ));
    }

    #[test]
    fn durations_and_ranges_read_as_written_in_lb_toml() {
        assert_eq!(fmt_duration(Duration::from_secs(1)), "1s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_range(&StatusRange { lo: 200, hi: 399 }), "200-399");
        assert_eq!(fmt_range(&StatusRange { lo: 204, hi: 204 }), "204");
    }
}

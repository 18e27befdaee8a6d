//! The request head sent to a backend: origin-form target, hop-by-hop fields removed (RFC 9110
//! §7.6.1), the route's header changes, and X-Forwarded-For/-Proto/-Host and Forwarded
//! (RFC 7239) set by the proxy.
//!
//! The client's own forwarding fields are dropped, never trusted or appended to: a client can
//! claim any address. Written into a buffer reused for every request of a connection.

use super::filters::HeaderRewrite;
use super::head::{FieldKind, RequestHead};
use std::io::Write as _;
use std::net::IpAddr;

/// What the proxy knows about the client side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address.
    pub addr: IpAddr,
    /// The client connection is TLS (X-Forwarded-Proto: https).
    pub tls: bool,
}

impl ClientInfo {
    fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// Appends the head to send to the backend for `head` (parsed from `buf`) to `out`, changed by
/// the route's `rewrite` (its fields after the request's own; the fields it owns never reach
/// it: Host, framing, hop-by-hop and forwarding fields are the proxy's).
pub fn write_request_head(
    buf: &[u8],
    head: &RequestHead,
    client: &ClientInfo,
    rewrite: Option<&HeaderRewrite>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method_name.of(buf));
    out.push(b' ');
    let path = head.path.of(buf);
    if !path.starts_with(b"/") && path != b"*" {
        out.push(b'/');
    }
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    let host = head.host.map_or(&b""[..], |h| h.of(buf));
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    for field in &head.fields {
        let keep = match field.kind {
            FieldKind::Host
            | FieldKind::Connection
            | FieldKind::HopByHop
            | FieldKind::Forwarding => false,
            FieldKind::Upgrade => head.upgrade,
            FieldKind::Expect => head.expect_continue,
            FieldKind::ContentLength | FieldKind::TransferEncoding => true,
            FieldKind::Other => {
                !head.connection_lists(buf, field.name.of(buf))
                    && !rewrite.is_some_and(|r| r.drops(field.name.of(buf)))
            }
        };
        if keep {
            out.extend_from_slice(field.name.of(buf));
            out.extend_from_slice(b": ");
            out.extend_from_slice(field.value.of(buf));
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(r) = rewrite {
        out.extend_from_slice(r.lines());
    }
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "x-forwarded-for: {}\r\nx-forwarded-proto: {}\r\n",
        client.addr,
        client.proto()
    );
    if !host.is_empty() {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    let _ = match client.addr {
        IpAddr::V4(a) => write!(out, "forwarded: for={a};proto={}", client.proto()),
        IpAddr::V6(a) => write!(out, "forwarded: for=\"[{a}]\";proto={}", client.proto()),
    };
    if !host.is_empty() {
        // A valid authority has no quote or backslash, so it needs no escaping.
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(host);
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
    if head.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::head::{parse_request, HeadScan, Limits};

    fn rewrite(raw: &[u8], client: ClientInfo) -> String {
        rewrite_with(raw, client, None)
    }

    fn rewrite_with(raw: &[u8], client: ClientInfo, mods: Option<&HeaderRewrite>) -> String {
        let limits = Limits::default();
        let len = HeadScan::default().scan(raw, &limits).unwrap().unwrap();
        let mut head = RequestHead::default();
        parse_request(raw, len, &limits, &mut head).unwrap();
        let mut out = Vec::new();
        write_request_head(raw, &head, &client, mods, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_and_forwarding() {
        let raw = b"GET http://b.test:8080?x HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Secret\r\n\
X-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\nUpgrade: websocket\r\nAccept: */*\r\n\r\n";
        let client = ClientInfo {
            addr: "192.0.2.7".parse().unwrap(),
            tls: true,
        };
        assert_eq!(
            rewrite(raw, client),
            "GET /?x HTTP/1.1\r\nhost: b.test:8080\r\nAccept: */*\r\nx-forwarded-for: 192.0.2.7\r\n\
x-forwarded-proto: https\r\nx-forwarded-host: b.test:8080\r\n\
forwarded: for=192.0.2.7;proto=https;host=\"b.test:8080\"\r\n\r\n"
        );
    }

    #[test]
    fn upgrade_keeps_upgrade_and_ipv6_is_quoted() {
        let raw =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let client = ClientInfo {
            addr: "2001:db8::1".parse().unwrap(),
            tls: false,
        };
        let out = rewrite(raw, client);
        assert!(out.contains("Upgrade: websocket\r\n"), "{out}");
        assert!(
            out.contains("forwarded: for=\"[2001:db8::1]\";proto=http;host=\"a\"\r\n"),
            "{out}"
        );
        assert!(out.ends_with("connection: upgrade\r\n\r\n"), "{out}");
    }

    #[test]
    fn route_header_changes() {
        use crate::l7::filters::HeaderModifier;
        let pairs = |l: &[(&str, &str)]| -> Vec<(String, String)> {
            l.iter().map(|(n, v)| ((*n).into(), (*v).into())).collect()
        };
        let mods = HeaderRewrite::compile(&HeaderModifier {
            set: pairs(&[("X-Set", "new"), ("x-absent", "a")]),
            add: pairs(&[("X-Add", "2"), ("X-Set", "more")]),
            remove: vec!["X-REMOVE".into()],
        })
        .unwrap();
        // Repeated fields and any case: every field of a set or removed name goes, the others
        // stay in order, added fields come after them.
        let raw = b"POST /p HTTP/1.1\r\nHost: a\r\nx-set: old1\r\nX-Add: 1\r\nX-Remove: r1\r\n\
Content-Length: 2\r\nX-SET: old2\r\nx-remove: r2\r\nAccept: */*\r\n\r\nhi";
        let client = ClientInfo {
            addr: "192.0.2.7".parse().unwrap(),
            tls: false,
        };
        assert_eq!(
            rewrite_with(raw, client, Some(&mods)),
            "POST /p HTTP/1.1\r\nhost: a\r\nX-Add: 1\r\nContent-Length: 2\r\nAccept: */*\r\n\
X-Set: new\r\nx-absent: a\r\nX-Add: 2\r\nX-Set: more\r\n\
x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\
forwarded: for=192.0.2.7;proto=http;host=\"a\"\r\n\r\n"
        );
    }
}

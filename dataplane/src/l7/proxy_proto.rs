//! The PROXY protocol version 2 header (HAProxy's proxy-protocol.txt, section 2.2), as sent
//! first on a new backend connection so the backend learns the client's address and port.
//!
//! Only what a proxy sends is built: version 2, command PROXY, TCP over IPv4 or IPv6, no TLVs.
//! The header lives in a fixed array: building it allocates nothing.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2 (high nibble), command PROXY (low nibble).
const VERSION_PROXY: u8 = 0x21;
/// AF_INET (high nibble), STREAM (low nibble).
const TCP4: u8 = 0x11;
/// AF_INET6, STREAM.
const TCP6: u8 = 0x21;
/// Signature, version/command, family/transport, address length.
const FIXED: usize = 16;
/// The largest header built: the fixed part and an IPv6 address block (2 x 16 + 2 x 2).
pub const MAX_LEN: usize = FIXED + 36;

/// One PROXY v2 header, ready to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    buf: [u8; MAX_LEN],
    len: u8,
}

impl ProxyHeader {
    /// The header for a TCP connection from `src` (the client) to `dst` (the address it
    /// connected to). Mixed families are sent as IPv6, with the IPv4 side v4-mapped; an
    /// IPv4-mapped IPv6 address on both sides is sent as IPv4 (what the client really used).
    pub fn v2(src: SocketAddr, dst: SocketAddr) -> ProxyHeader {
        let mut buf = [0u8; MAX_LEN];
        buf[..12].copy_from_slice(&SIGNATURE);
        buf[12] = VERSION_PROXY;
        let (s, d) = (src.ip().to_canonical(), dst.ip().to_canonical());
        let len = match (s, d) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                buf[13] = TCP4;
                buf[16..20].copy_from_slice(&s.octets());
                buf[20..24].copy_from_slice(&d.octets());
                12
            }
            _ => {
                buf[13] = TCP6;
                buf[16..32].copy_from_slice(&v6(s));
                buf[32..48].copy_from_slice(&v6(d));
                36
            }
        };
        buf[14..16].copy_from_slice(&(len as u16).to_be_bytes());
        let ports = FIXED + len - 4;
        buf[ports..ports + 2].copy_from_slice(&src.port().to_be_bytes());
        buf[ports + 2..ports + 4].copy_from_slice(&dst.port().to_be_bytes());
        ProxyHeader {
            buf,
            len: (FIXED + len) as u8,
        }
    }

    /// The bytes to send.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Built by hand from section 2.2 of the specification.
    const SIG: [u8; 12] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
    ];

    #[test]
    fn tcp_over_ipv4() {
        let h = ProxyHeader::v2(
            "192.0.2.1:56324".parse().unwrap(),
            "198.18.0.10:443".parse().unwrap(),
        );
        let mut want = SIG.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0C]);
        want.extend_from_slice(&[192, 0, 2, 1, 198, 18, 0, 10]);
        want.extend_from_slice(&[0xDC, 0x04, 0x01, 0xBB]);
        assert_eq!(h.as_bytes(), &want[..]);
        assert_eq!(h.as_bytes().len(), 28);
    }

    #[test]
    fn tcp_over_ipv6() {
        let h = ProxyHeader::v2(
            "[2001:db8::1]:1".parse().unwrap(),
            "[2001:db8::ff]:65535".parse().unwrap(),
        );
        let mut want = SIG.to_vec();
        want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff,
        ]);
        want.extend_from_slice(&[0x00, 0x01, 0xFF, 0xFF]);
        assert_eq!(h.as_bytes(), &want[..]);
        assert_eq!(h.as_bytes().len(), MAX_LEN);
    }

    #[test]
    fn v4_mapped_on_both_sides_is_ipv4_and_mixed_is_ipv6() {
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
        let mapped = ProxyHeader::v2(
            "[::ffff:192.0.2.1]:80".parse().unwrap(),
            "[::ffff:198.18.0.10]:8080".parse().unwrap(),
        );
        let plain = ProxyHeader::v2(
            "192.0.2.1:80".parse().unwrap(),
            "198.18.0.10:8080".parse().unwrap(),
        );
        assert_eq!(mapped, plain);

        let mixed = ProxyHeader::v2(
            "192.0.2.1:80".parse().unwrap(),
            "[2001:db8::ff]:443".parse().unwrap(),
        );
        let b = mixed.as_bytes();
        assert_eq!(&b[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(
            &b[16..32],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]
        );
        assert_eq!(&b[48..52], &[0x00, 0x50, 0x01, 0xBB]);
    }
}

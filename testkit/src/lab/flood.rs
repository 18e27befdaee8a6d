//! A bounded random-source UDP flood for the lab's tests: raw IPv4 datagrams whose source
//! address and port change with every datagram, as a spoofing attacker sends them. Sources come
//! only from 198.19.128.0/17 (inside the lab's 198.18.0.0/15, clear of its hosts and clients), so
//! nothing leaves the lab's namespaces.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dataplane::flow::{proto, Addr};
use dataplane::wire;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Most datagrams one call sends: a test's flood stays bounded whatever it asks.
pub const MAX_DATAGRAMS: usize = 100_000;

/// What a flood sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodReport {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Datagrams the kernel refused (a full queue): the flood goes on.
    pub refused: usize,
}

/// The `i`-th flood source: an address in 198.19.128.0/17 and a port from 1024, spread by a
/// multiplicative hash so consecutive datagrams look unrelated.
pub fn flood_source(i: u32) -> (Ipv4Addr, u16) {
    let h = i.wrapping_mul(0x9e37_79b9);
    let host = h >> 17; // 15 bits
    let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 128, 0)) | host);
    let port = 1024 + (h & 0xffff) as u16 % 64_000;
    (addr, port)
}

/// One IPv4/UDP datagram from `src` to `dst` with `payload`, both checksums filled in (the
/// dataplane's own header writers).
pub fn datagram(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0u8; 20 + udp_len];
    let fields = wire::Ipv4Fields {
        src: src.ip().octets(),
        dst: dst.ip().octets(),
        proto: proto::UDP,
        payload_len: udp_len as u16,
        ttl: 64,
        ..Default::default()
    };
    wire::write_ipv4(&mut p, &fields).expect("room for the IPv4 header");
    let u = &mut p[20..];
    wire::write_udp(u, src.port(), dst.port(), payload.len() as u16)
        .expect("room for the UDP header");
    u[8..].copy_from_slice(payload);
    let (s, d) = (
        Addr::from(IpAddr::V4(*src.ip())),
        Addr::from(IpAddr::V4(*dst.ip())),
    );
    wire::fill_udp_checksum(u, &s, &d);
    p
}

/// Sends `count` (at most [`MAX_DATAGRAMS`]) datagrams to `dst`, each from the next
/// [`flood_source`] starting at `first`, in bursts of `burst` with `pause` between bursts (so a
/// test floods the balancer, not the TAP queue in front of it). Call it from a thread inside the
/// client's namespace; needs CAP_NET_RAW.
pub fn udp_flood(
    dst: SocketAddrV4,
    first: u32,
    count: usize,
    burst: usize,
    pause: Duration,
) -> io::Result<FloodReport> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))?; // IPPROTO_RAW: header included
    let to = SockAddr::from(dst);
    let mut report = FloodReport::default();
    for n in 0..count.min(MAX_DATAGRAMS) {
        let (a, p) = flood_source(first.wrapping_add(n as u32));
        let d = datagram(SocketAddrV4::new(a, p), dst, b"flood");
        match s.send_to(&d, &to) {
            Ok(_) => report.sent += 1,
            Err(_) => report.refused += 1,
        }
        if burst > 0 && (n + 1) % burst == 0 {
            std::thread::sleep(pause);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::wire::L3;

    #[test]
    fn flood_sources_stay_in_their_prefix_and_differ() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            let (a, p) = flood_source(i);
            assert_eq!(
                u32::from(a) >> 15,
                u32::from(Ipv4Addr::new(198, 19, 128, 0)) >> 15
            );
            assert!(p >= 1024);
            seen.insert((a, p));
        }
        assert_eq!(seen.len(), 20_000, "every datagram is a new flow");
    }

    #[test]
    fn datagram_parses_with_valid_checksums() {
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 19, 200, 1), 4000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 7);
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame.extend(datagram(src, dst, b"flood"));
        let p = wire::parse(&frame).expect("parses (IP header checksum included)");
        assert_eq!(p.l3, L3::Ipv4);
        assert_eq!((p.proto, p.sport, p.dport), (proto::UDP, 4000, 7));
        assert!(wire::verify_l4_checksum(&frame, &p));
    }
}

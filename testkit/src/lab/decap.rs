//! The lab's IP-in-IP decapsulation agent (`lb lab-decap`), for the "VM" backends of `dsr-ipip`
//! pools.
//!
//! **Production backends do not need this**: they decapsulate in the kernel, with an `ipip` (or
//! `ip6tnl`) tunnel device or a `fou`/GUE receive port, and have the VIP on `lo`. The kernel this
//! project is built on ships without the `ipip` module, so the lab does the same job in userspace:
//!
//! - a raw socket for IP protocol 4 (IPv4 inside IPv4) and one for protocol 41 (IPv6 inside IPv6)
//!   receive the tunnelled packets addressed to the VM (a raw socket for the protocol also stops the
//!   kernel from answering "protocol unreachable");
//! - the outer header is stripped and the inner packet is sent unchanged, header included, on a
//!   raw `IPPROTO_RAW` socket to its own destination: the VIP, which is on the VM's `lo`, so the
//!   kernel loops it back and delivers it to the listening socket as if it had arrived from the
//!   client. The answer then leaves from the VIP straight to the client: direct server return.
//!
//! Packets that are not well-formed tunnelled packets are counted and dropped.

use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// IP protocol number of IPv4-in-IP.
const IPPROTO_IPIP: i32 = 4;
/// IP protocol / IPv6 next header of IPv6-in-IP.
const IPPROTO_IPV6: i32 = 41;
/// `IPPROTO_RAW`: sending on it means "the buffer carries its own IP header".
const IPPROTO_RAW: i32 = 255;

/// Packets decapsulated and re-injected, and packets dropped, since start.
static DECAPPED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// What to do with one received raw packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Inner<'a> {
    /// An inner IPv4 packet for this destination.
    V4(Ipv4Addr, &'a [u8]),
    /// An inner IPv6 packet for this destination.
    V6(Ipv6Addr, &'a [u8]),
}

/// Splits what an IPv4 raw socket for protocol 4 returns (outer IPv4 header included) into the
/// inner IPv4 packet and its destination; `None` for anything malformed.
pub fn inner_of_ipv4_outer(pkt: &[u8]) -> Option<Inner<'_>> {
    let first = *pkt.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*pkt.get(2)?, *pkt.get(3)?]));
    if ihl < 20 || total < ihl || total > pkt.len() {
        return None;
    }
    let inner = pkt.get(ihl..total)?;
    match *pkt.get(9)? {
        4 => inner_ipv4(inner),
        41 => inner_ipv6(inner),
        _ => None,
    }
}

/// Checks an inner packet that an IPv6 raw socket returned (payload only: IPv6 raw sockets never
/// include the outer header); `proto` is the socket's protocol.
pub fn inner_of_ipv6_payload(proto: i32, inner: &[u8]) -> Option<Inner<'_>> {
    match proto {
        IPPROTO_IPIP => inner_ipv4(inner),
        IPPROTO_IPV6 => inner_ipv6(inner),
        _ => None,
    }
}

fn inner_ipv4(inner: &[u8]) -> Option<Inner<'_>> {
    let first = *inner.first()?;
    let total = usize::from(u16::from_be_bytes([*inner.get(2)?, *inner.get(3)?]));
    if first >> 4 != 4 || usize::from(first & 0x0f) < 5 || total > inner.len() || total < 20 {
        return None;
    }
    let dst: [u8; 4] = inner.get(16..20)?.try_into().ok()?;
    Some(Inner::V4(Ipv4Addr::from(dst), inner.get(..total)?))
}

fn inner_ipv6(inner: &[u8]) -> Option<Inner<'_>> {
    if *inner.first()? >> 4 != 6 {
        return None;
    }
    let payload = usize::from(u16::from_be_bytes([*inner.get(4)?, *inner.get(5)?]));
    let dst: [u8; 16] = inner.get(24..40)?.try_into().ok()?;
    Some(Inner::V6(Ipv6Addr::from(dst), inner.get(..40 + payload)?))
}

/// Receives tunnelled packets on `dev` (IPv4 outer, protocols 4 and 41; IPv6 outer, protocols 4
/// and 41), re-injects the inner packets, prints `ready` on stdout once listening, and runs until
/// killed.
pub fn run(dev: &str) -> io::Result<()> {
    let raw = |domain: Domain, proto: i32| -> io::Result<Socket> {
        let s = Socket::new(domain, Type::RAW, Some(Protocol::from(proto))).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("raw socket {domain:?} protocol {proto}: {e} (needs root or CAP_NET_RAW)"),
            )
        })?;
        Ok(s)
    };
    let mut receivers = Vec::new();
    for (domain, proto) in [
        (Domain::IPV4, IPPROTO_IPIP),
        (Domain::IPV4, IPPROTO_IPV6),
        (Domain::IPV6, IPPROTO_IPIP),
        (Domain::IPV6, IPPROTO_IPV6),
    ] {
        let s = raw(domain, proto)?;
        s.bind_device(Some(dev.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("bind raw socket to {dev:?}: {e}")))?;
        receivers.push((domain, proto, s));
    }
    let tx4 = raw(Domain::IPV4, IPPROTO_RAW)?;
    let tx6 = raw(Domain::IPV6, IPPROTO_RAW)?;
    std::thread::scope(|scope| {
        for (domain, proto, rx) in &receivers {
            let (tx4, tx6) = (&tx4, &tx6);
            scope.spawn(move || receive_loop(*domain, *proto, rx, tx4, tx6));
        }
        println!("ready");
        Ok(())
    })
}

fn receive_loop(domain: Domain, proto: i32, mut rx: &Socket, tx4: &Socket, tx6: &Socket) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match rx.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "decap: receive failed");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let pkt = &buf[..n.min(buf.len())];
        let inner = if domain == Domain::IPV4 {
            inner_of_ipv4_outer(pkt)
        } else {
            inner_of_ipv6_payload(proto, pkt)
        };
        let sent = match inner {
            Some(Inner::V4(dst, p)) => tx4.send_to(p, &SockAddr::from(SocketAddrV4::new(dst, 0))),
            Some(Inner::V6(dst, p)) => {
                tx6.send_to(p, &SockAddr::from(SocketAddrV6::new(dst, 0, 0, 0)))
            }
            None => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match sent {
            Ok(_) => DECAPPED.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %e, "decap: re-inject failed");
                DROPPED.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn ipip_yields_the_inner_packet_and_its_destination() {
        let inner = ipv4(6, [198, 19, 0, 10], [198, 18, 0, 100], &[1, 2, 3, 4]);
        let outer = ipv4(4, [198, 18, 0, 1], [198, 18, 2, 10], &inner);
        assert_eq!(
            inner_of_ipv4_outer(&outer),
            Some(Inner::V4(Ipv4Addr::new(198, 18, 0, 100), &inner[..]))
        );
    }

    #[test]
    fn truncated_or_foreign_packets_are_refused() {
        let inner = ipv4(6, [198, 19, 0, 10], [198, 18, 0, 100], &[1, 2, 3, 4]);
        let outer = ipv4(4, [198, 18, 0, 1], [198, 18, 2, 10], &inner);
        for cut in 0..outer.len() {
            assert_eq!(inner_of_ipv4_outer(&outer[..cut]), None, "cut at {cut}");
        }
        let gre = ipv4(47, [198, 18, 0, 1], [198, 18, 2, 10], &inner);
        assert_eq!(inner_of_ipv4_outer(&gre), None);
        assert_eq!(inner_of_ipv6_payload(IPPROTO_IPV6, &inner), None);
    }
}

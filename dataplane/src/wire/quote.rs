//! The packet an ICMP error quotes.

use super::icmp::{is_icmpv4_echo, is_icmpv4_error, is_icmpv6_echo, is_icmpv6_error};
use super::ipv6::walk_ipv6_extensions;
use super::{arr, Frag, Parsed, L3};
use crate::flow::{proto, Addr, FlowKey};

/// The packet quoted by an ICMP error, as far as it is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    /// Offset of the quoted IP header in the frame (`p.l4_off + 8`).
    pub l3_off: usize,
    /// Offset of the quoted transport header (after the IPv4 options / IPv6 extension headers).
    pub l4_off: usize,
    /// Offset just past the quoted bytes actually present (quotes are truncated).
    pub end: usize,
    /// True for a quoted IPv6 packet.
    pub v6: bool,
    /// Quoted transport protocol.
    pub proto: u8,
    /// Quoted source address (the original packet's sender: usually us or our peer).
    pub src: Addr,
    /// Quoted destination address.
    pub dst: Addr,
    /// Quoted source port (ICMP echo: the identifier), when `ports_present`.
    pub sport: u16,
    /// Quoted destination port (ICMP echo: the identifier), when `ports_present`.
    pub dport: u16,
    /// True when the quote holds the ports (TCP/UDP: 4 bytes; ICMP echo: 8 bytes) and is no later fragment.
    pub ports_present: bool,
}

impl Quoted {
    /// The flow key of the quoted packet's own direction (meaningful when `ports_present`).
    pub fn key(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
        }
    }
}

/// Parses the packet quoted by an ICMPv4 (types 3, 4, 11, 12) or ICMPv6 (types 1 to 4) error.
///
/// `None` for other packets and for malformed quotes (quoted IP version or IHL wrong, IP header
/// not complete, IPv6 extension chain not walkable). The quoted IPv4 checksum is not verified:
/// routers may quote a header they already changed.
pub fn parse_icmp_quote(frame: &[u8], p: &Parsed) -> Option<Quoted> {
    let is_error = match (p.l3, p.proto) {
        (L3::Ipv4, proto::ICMP) => is_icmpv4_error(p.icmp_type),
        (L3::Ipv6, proto::ICMPV6) => is_icmpv6_error(p.icmp_type),
        _ => false,
    };
    if !is_error || p.frag == Frag::Later {
        return None;
    }
    let pkt = frame.get(..p.l3_end)?;
    let l3_off = p.l4_off.checked_add(8)?;
    let mut q = if p.l3 == L3::Ipv4 {
        let h: &[u8; 20] = arr(pkt, l3_off)?;
        let hlen = (h[0] & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([h[2], h[3]]) as usize;
        if h[0] >> 4 != 4 || hlen < 20 || total < hlen || l3_off + hlen > pkt.len() {
            return None;
        }
        let later = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
        Quoted {
            l3_off,
            l4_off: l3_off + hlen,
            end: pkt.len().min(l3_off + total),
            v6: false,
            proto: h[9],
            src: Addr::v4([h[12], h[13], h[14], h[15]]),
            dst: Addr::v4([h[16], h[17], h[18], h[19]]),
            sport: 0,
            dport: 0,
            // Provisional: a later fragment never has ports; checked against the length below.
            ports_present: !later,
        }
    } else {
        let h: &[u8; 40] = arr(pkt, l3_off)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let end = pkt
            .len()
            .min(l3_off + 40 + u16::from_be_bytes([h[4], h[5]]) as usize);
        let (nh, l4_off) = walk_ipv6_extensions(pkt.get(..end)?, h[6], l3_off + 40, end).ok()?;
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        dst.copy_from_slice(&h[24..40]);
        Quoted {
            l3_off,
            l4_off,
            end,
            v6: true,
            proto: nh,
            src: Addr::v6(src),
            dst: Addr::v6(dst),
            sport: 0,
            dport: 0,
            ports_present: true,
        }
    };
    let l4 = pkt.get(q.l4_off..q.end).unwrap_or(&[]);
    let ports = match q.proto {
        proto::TCP | proto::UDP => arr::<4>(l4, 0).map(|w| {
            (
                u16::from_be_bytes([w[0], w[1]]),
                u16::from_be_bytes([w[2], w[3]]),
            )
        }),
        proto::ICMP if !q.v6 => arr::<8>(l4, 0).filter(|e| is_icmpv4_echo(e[0])).map(|e| {
            (
                u16::from_be_bytes([e[4], e[5]]),
                u16::from_be_bytes([e[4], e[5]]),
            )
        }),
        proto::ICMPV6 if q.v6 => arr::<8>(l4, 0).filter(|e| is_icmpv6_echo(e[0])).map(|e| {
            (
                u16::from_be_bytes([e[4], e[5]]),
                u16::from_be_bytes([e[4], e[5]]),
            )
        }),
        _ => None,
    };
    match ports {
        Some((s, d)) if q.ports_present => {
            q.sport = s;
            q.dport = d;
        }
        _ => q.ports_present = false,
    }
    Some(q)
}

//! NAT: rewriting an IP packet's (or an ICMP quote's) addresses and ports in place, with
//! incremental checksum updates (RFC 1624) of the IPv4 header and the TCP/UDP checksum.

use super::checksum::Delta;
use super::{be16, put_be16};
use crate::flow::{proto, Addr, FlowKey};

/// Where the headers of an IP packet sit in a frame, for [`rewrite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpAt {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the transport header.
    pub l4: usize,
    /// Offset just past the bytes present (quotes in ICMP errors are truncated).
    pub end: usize,
    /// IPv4 (else IPv6).
    pub v4: bool,
    /// Transport protocol.
    pub proto: u8,
}

/// The checksum deltas of rewriting a packet of `from` into `to`: the IPv4 header's (addresses)
/// and the transport's (pseudo header addresses and ports). One address delta serves both.
#[inline(always)]
pub fn deltas(from: &FlowKey, to: &FlowKey) -> (Delta, Delta) {
    // Each address tested where it is (an array of the four was a 64-byte copy per call).
    if from.src.is_v4() && from.dst.is_v4() && to.src.is_v4() && to.dst.is_v4() {
        // Every new flow seals two values: the words straight from the addresses, no loops.
        let w = |a: &Addr| u32::from_be_bytes(a.v4_octets());
        return deltas_v4(
            [w(&from.src), w(&from.dst), ports(from.sport, from.dport)],
            [w(&to.src), w(&to.dst), ports(to.sport, to.dport)],
        );
    }
    deltas_other(from, to)
}

/// [`deltas`] of IPv4 keys from their words: source, destination (each the address as a
/// big-endian value) and port pair ([`ports`]).
#[inline(always)]
pub fn deltas_v4(from: [u32; 3], to: [u32; 3]) -> (Delta, Delta) {
    let (old, new) = (|w: u32| u64::from(!w), u64::from);
    let addrs = old(from[0]) + new(to[0]) + old(from[1]) + new(to[1]);
    // The transport's from the unfolded sums, one fold each: folding the sum of two sums is
    // folding the sum of their folds (both are the one value in 1..=0xffff, or 0 for a zero
    // sum, that the sum is congruent to modulo 0xffff).
    let l4 = addrs + old(from[2]) + new(to[2]);
    (Delta::from_sum(addrs), Delta::from_sum(l4))
}

/// [`deltas`] when an address is IPv6: byte runs of either length, kept out of the IPv4 code.
#[inline(never)]
fn deltas_other(from: &FlowKey, to: &FlowKey) -> (Delta, Delta) {
    let l3 = Delta::replace(from.src.wire_bytes(), to.src.wire_bytes())
        .and(Delta::replace(from.dst.wire_bytes(), to.dst.wire_bytes()));
    let l4 = l3.and(Delta::replace(
        &ports(from.sport, from.dport).to_be_bytes(),
        &ports(to.sport, to.dport).to_be_bytes(),
    ));
    (l3, l4)
}

/// A port pair as the 32-bit word it is on the wire (source port in the high half).
#[inline]
pub fn ports(sport: u16, dport: u16) -> u32 {
    (u32::from(sport) << 16) | u32::from(dport)
}

/// Offset of the TCP/UDP checksum field inside the transport header, if it has one we maintain.
#[inline]
fn l4_csum_off(proto: u8) -> Option<usize> {
    match proto {
        proto::TCP => Some(16),
        proto::UDP => Some(6),
        _ => None,
    }
}

/// Writes the addresses `src`, `dst` (same family as the packet) and the ports `ports` (source
/// port in the high half) and adjusts the checksums by the `(IPv4 header, transport)` deltas that
/// [`deltas`] computed for the packet's current tuple: the per-packet path of nat and fullnat.
/// Ports and the transport checksum are left alone where they lie past `at.end`.
#[inline(always)]
pub fn rewrite(
    frame: &mut [u8],
    at: IpAt,
    src: &Addr,
    dst: &Addr,
    ports: u32,
    (l3_delta, l4_delta): (Delta, Delta),
) {
    let Some(frame) = frame.get_mut(..at.end) else {
        return;
    };
    let (a_off, half) = if at.v4 {
        (at.l3 + 12, 4)
    } else {
        (at.l3 + 8, 16)
    };
    let Some(addrs) = frame.get_mut(a_off..a_off + 2 * half) else {
        return;
    };
    addrs[..half].copy_from_slice(src.wire_bytes());
    addrs[half..].copy_from_slice(dst.wire_bytes());
    if at.v4 {
        let c = l3_delta.apply(be16(frame, at.l3 + 10));
        put_be16(frame, at.l3 + 10, c);
    }
    let l4 = at.l4;
    let Some(p) = frame.get_mut(l4..l4 + 4) else {
        return;
    };
    p.copy_from_slice(&ports.to_be_bytes());
    let Some(co) = l4_csum_off(at.proto) else {
        return;
    };
    let Some(field) = frame.get_mut(l4 + co..l4 + co + 2) else {
        return;
    };
    let c = u16::from_be_bytes([field[0], field[1]]);
    if at.proto == proto::UDP && c == 0 && at.v4 {
        return; // IPv4 UDP without checksum stays without one.
    }
    let mut c = l4_delta.apply(c);
    if at.proto == proto::UDP && c == 0 {
        c = 0xffff;
    }
    field.copy_from_slice(&c.to_be_bytes());
}

/// [`rewrite`] for an IPv4 TCP or UDP packet whose headers [`parse`](super::parse) checked (the
/// IPv4 header at `at.l3`, the whole TCP or UDP header at `at.l4`): the per-packet path of nat and
/// fullnat flows of that family, with fixed-size header views instead of offset arithmetic.
/// Another protocol in `at.proto` counts as UDP; headers that are not all there are left alone.
#[inline(always)]
pub fn rewrite_v4(
    frame: &mut [u8],
    at: IpAt,
    src: [u8; 4],
    dst: [u8; 4],
    ports: u32,
    (l3_delta, l4_delta): (Delta, Delta),
) {
    let Some(frame) = frame.get_mut(..at.end) else {
        return;
    };
    // Checksum fields are loaded and stored native-endian: the deltas are in wire byte order.
    let csum = |b: &[u8; 2]| u16::from_ne_bytes(*b);
    if let Some(ip) = arr_mut::<20>(frame, at.l3) {
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = l3_delta.apply_wire(csum(&[ip[10], ip[11]]));
        ip[10..12].copy_from_slice(&c.to_ne_bytes());
    }
    if at.proto == proto::TCP {
        if let Some(t) = arr_mut::<18>(frame, at.l4) {
            t[..4].copy_from_slice(&ports.to_be_bytes());
            let c = l4_delta.apply_wire(csum(&[t[16], t[17]]));
            t[16..18].copy_from_slice(&c.to_ne_bytes());
        }
    } else if let Some(u) = arr_mut::<8>(frame, at.l4) {
        u[..4].copy_from_slice(&ports.to_be_bytes());
        let c = csum(&[u[6], u[7]]);
        if c != 0 {
            // A UDP checksum that computes to 0 goes on the wire as 0xffff (0 means none).
            u[6..8].copy_from_slice(&l4_delta.apply_udp_wire(c).to_ne_bytes());
        }
    }
}

/// [`rewrite_v4`] of an untagged frame whose IPv4 header has no options (IP at 14, transport at
/// 34), as [`parse_v4_flow`](super::parse_v4_flow) accepted it: the fast path's rewrite, on one
/// fixed-size view of the frame's first 42 (UDP) or 54 (TCP) bytes, so nothing inside is
/// bounds-checked again. `macs` are the destination and source MAC (as
/// [`mac_pair`](super::mac_pair) makes them), written too; `ports` the
/// port pair as [`ports`] makes it. `tcp` says
/// which transport it is (the flow's protocol). False, and nothing written, for a frame
/// shorter than its headers (which `parse_v4_flow` never accepts).
#[inline(always)]
pub fn rewrite_v4_frame(
    frame: &mut [u8],
    macs: &[u8; 12],
    addrs: (&[u8; 4], &[u8; 4]),
    ports: u32,
    (l3_delta, l4_delta): (Delta, Delta),
    tcp: bool,
) -> bool {
    // Checksum fields are loaded and stored native-endian: the deltas are in wire byte order.
    #[inline(always)]
    fn head(f: &mut [u8; 42], macs: &[u8; 12], addrs: (&[u8; 4], &[u8; 4]), ports: u32, l3: Delta) {
        f[..12].copy_from_slice(macs);
        f[26..30].copy_from_slice(addrs.0);
        f[30..34].copy_from_slice(addrs.1);
        let c = l3.apply_wire(u16::from_ne_bytes([f[24], f[25]]));
        f[24..26].copy_from_slice(&c.to_ne_bytes());
        f[34..38].copy_from_slice(&ports.to_be_bytes());
    }
    if tcp {
        let Some(f) = frame.first_chunk_mut::<54>() else {
            return false;
        };
        let c = l4_delta.apply_wire(u16::from_ne_bytes([f[50], f[51]]));
        f[50..52].copy_from_slice(&c.to_ne_bytes());
        if let Some(h) = f.first_chunk_mut::<42>() {
            head(h, macs, addrs, ports, l3_delta);
        }
    } else {
        let Some(f) = frame.first_chunk_mut::<42>() else {
            return false;
        };
        let c = u16::from_ne_bytes([f[40], f[41]]);
        if c != 0 {
            // A UDP checksum that computes to 0 goes on the wire as 0xffff (0 means none).
            f[40..42].copy_from_slice(&l4_delta.apply_udp_wire(c).to_ne_bytes());
        }
        head(f, macs, addrs, ports, l3_delta);
    }
    true
}

/// A fixed-size mutable view at `off`, or `None` past the end.
#[inline(always)]
fn arr_mut<const N: usize>(b: &mut [u8], off: usize) -> Option<&mut [u8; N]> {
    b.get_mut(off..off.checked_add(N)?)?.try_into().ok()
}

/// [`rewrite`] with the deltas taken from the bytes present: for one-off rewrites (the packet an
/// ICMP error quotes), not the per-packet path.
pub fn rewrite_present(frame: &mut [u8], at: IpAt, to: &FlowKey) {
    let (a_off, half) = if at.v4 {
        (at.l3 + 12, 4)
    } else {
        (at.l3 + 8, 16)
    };
    let (Some(src), Some(dst)) = (
        frame.get(a_off..a_off + half),
        frame.get(a_off + half..a_off + 2 * half),
    ) else {
        return;
    };
    let l3 = Delta::replace(src, to.src.wire_bytes()).and(Delta::replace(dst, to.dst.wire_bytes()));
    let l4 = match frame.get(at.l4..at.l4 + 4).filter(|_| at.l4 + 4 <= at.end) {
        Some(old) => l3.and(Delta::replace(
            old,
            &ports(to.sport, to.dport).to_be_bytes(),
        )),
        None => l3,
    };
    let to_ports = ports(to.sport, to.dport);
    rewrite(frame, at, &to.src, &to.dst, to_ports, (l3, l4));
}

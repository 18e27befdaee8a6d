//! Forwarding a packet by its flow value: address and port rewrite with incremental checksum
//! updates, or a MAC change; encapsulating actions go to `encap`.

use crate::flow::{proto, Addr};
use crate::packet::PacketBuf;
use crate::table::RoutingTable;
use crate::wire::{self, Parsed, L3};

use super::encap::encap;
use super::state::{Action, FlowValue};
use super::verdict::{DropReason, Verdict};

/// Forwards a packet according to a flow value. `entropy` is the GUE source port.
pub(super) fn apply(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    val: &FlowValue,
    entropy: u16,
) -> Verdict {
    match val.action {
        Action::Rewrite => {
            if val.new_src.is_v4() != (p.l3 == L3::Ipv4)
                || val.new_dst.is_v4() != val.new_src.is_v4()
            {
                return Verdict::Drop(DropReason::Unsupported);
            }
            let d = pkt.data_mut();
            rewrite_sealed(d, p, val);
            set_macs(d, val.mac, table.local.mac);
            Verdict::Tx
        }
        Action::Mac => {
            set_macs(pkt.data_mut(), val.mac, table.local.mac);
            Verdict::Tx
        }
        Action::Ipip | Action::Gue => encap(table, pkt, p, val, entropy),
    }
}

pub(super) fn src_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(6..12) {
        m.copy_from_slice(s);
    }
    m
}

pub(super) fn set_macs(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    if let Some(h) = frame.get_mut(..12) {
        h[..6].copy_from_slice(&dst);
        h[6..].copy_from_slice(&src);
    }
}

/// Offset of the TCP/UDP checksum field inside the transport header, if it has one we maintain.
pub(super) fn l4_csum_off(proto: u8) -> Option<usize> {
    match proto {
        proto::TCP => Some(16),
        proto::UDP => Some(6),
        _ => None,
    }
}

/// Ones' complement sum of the big-endian 32-bit words of `b` (4-byte multiple), unfolded.
#[inline]
pub(super) fn sum32(b: &[u8]) -> u64 {
    b.chunks_exact(4)
        .map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum()
}

/// Same as [`sum32`] over the complemented words: subtracting `b` in ones' complement.
#[inline]
pub(super) fn sub32(b: &[u8]) -> u64 {
    b.chunks_exact(4)
        .map(|w| u64::from(!u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum()
}

/// Applies an unfolded ones' complement delta to a checksum (RFC 1624 eqn. 3, 32 bits at a time).
#[inline]
pub(super) fn adjust(csum: u16, delta: u64) -> u16 {
    let mut s = u64::from(!csum) + delta;
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Rewrites the addresses and ports of an IP packet in place (same family), with incremental
/// checksum updates (RFC 1624) of the IPv4 header and the TCP/UDP checksum. `l3`/`l4` are offsets
/// in `frame`; `l4_end` bounds the transport bytes present (quotes in ICMP errors are truncated).
/// This is the per-packet path of nat and fullnat: one delta for the addresses serves both the IP
/// header and the pseudo header.
#[allow(clippy::too_many_arguments)]
pub(super) fn rewrite_at(
    frame: &mut [u8],
    l3: usize,
    l4: usize,
    l4_end: usize,
    v4: bool,
    proto: u8,
    src: Addr,
    dst: Addr,
    sport: u16,
    dport: u16,
) {
    let (a_off, half) = if v4 { (l3 + 12, 4) } else { (l3 + 8, 16) };
    let Some(addrs) = frame.get_mut(a_off..a_off + 2 * half) else {
        return;
    };
    let mut delta = sub32(addrs);
    addrs[..half].copy_from_slice(src.wire_bytes());
    addrs[half..].copy_from_slice(dst.wire_bytes());
    delta += sum32(addrs);
    if v4 {
        let c = adjust(wire::be16(frame, l3 + 10), delta);
        wire::put_be16(frame, l3 + 10, c);
    }
    if l4 + 4 <= l4_end {
        if let Some(ports) = frame.get_mut(l4..l4 + 4) {
            delta += sub32(ports);
            ports[..2].copy_from_slice(&sport.to_be_bytes());
            ports[2..].copy_from_slice(&dport.to_be_bytes());
            delta += sum32(ports);
        }
    }
    let Some(co) = l4_csum_off(proto) else {
        return;
    };
    if l4 + co + 2 > l4_end {
        return;
    }
    let c = wire::be16(frame, l4 + co);
    if proto == proto::UDP && c == 0 && v4 {
        return; // IPv4 UDP without checksum stays without one.
    }
    let mut c = adjust(c, delta);
    if proto == proto::UDP && c == 0 {
        c = 0xffff;
    }
    wire::put_be16(frame, l4 + co, c);
}

/// Rewrites a tracked packet with its flow's precomputed checksum deltas ([`FlowValue::seal`]):
/// the per-packet path of nat and fullnat.
pub(super) fn rewrite_sealed(frame: &mut [u8], p: &Parsed, val: &FlowValue) {
    let v4 = p.l3 == L3::Ipv4;
    let (a_off, half) = if v4 {
        (p.l3_off + 12, 4)
    } else {
        (p.l3_off + 8, 16)
    };
    let Some(addrs) = frame.get_mut(a_off..a_off + 2 * half) else {
        return;
    };
    addrs[..half].copy_from_slice(val.new_src.wire_bytes());
    addrs[half..].copy_from_slice(val.new_dst.wire_bytes());
    if v4 {
        let c = adjust(wire::be16(frame, p.l3_off + 10), val.l3_delta);
        wire::put_be16(frame, p.l3_off + 10, c);
    }
    let l4 = p.l4_off;
    if let Some(ports) = frame.get_mut(l4..l4 + 4) {
        ports[..2].copy_from_slice(&val.new_sport.to_be_bytes());
        ports[2..].copy_from_slice(&val.new_dport.to_be_bytes());
    }
    let Some(co) = l4_csum_off(p.proto) else {
        return;
    };
    let c = wire::be16(frame, l4 + co);
    if p.proto == proto::UDP && c == 0 && v4 {
        return; // IPv4 UDP without checksum stays without one.
    }
    let mut c = adjust(c, val.l4_delta);
    if p.proto == proto::UDP && c == 0 {
        c = 0xffff;
    }
    wire::put_be16(frame, l4 + co, c);
}

/// The IPv4 TOS / IPv6 traffic class of the packet at `l3`.
pub(super) fn tos(frame: &[u8], p: &Parsed) -> u8 {
    let b0 = frame.get(p.l3_off).copied().unwrap_or(0);
    let b1 = frame.get(p.l3_off + 1).copied().unwrap_or(0);
    if p.l3 == L3::Ipv4 {
        b1
    } else {
        (b0 << 4) | (b1 >> 4)
    }
}

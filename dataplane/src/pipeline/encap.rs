//! dsr-ipip and dsr-gue: the client's packet, unchanged, inside an outer IP (and UDP) header.

use crate::flow::{proto, Addr};
use crate::packet::PacketBuf;
use crate::table::RoutingTable;
use crate::wire::checksum::Delta;
use crate::wire::{self, Ipv4Fields, Ipv6Fields, Parsed, L3};

use super::icmp::too_big;
use super::state::{Action, Fast, FlowValue};
use super::verdict::{DropReason, Verdict};
use super::OUR_TTL;

/// [`encap`] of an untagged IPv4 packet by a flow value sealed `Fast::IpipV4` or `Fast::GueV4`:
/// the outer headers at fixed offsets, as the fast path writes an established flow's (the same
/// bytes `encap` writes). The general path's packets of such flows (a handshake's, a SYN's
/// retransmission) take it too. `None`, with nothing changed: another packet or flow, or one
/// that does not fit (too big for the MTU, no headroom), for `encap` to answer.
#[inline(always)]
pub(super) fn encap_v4(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    val: &FlowValue,
    entropy: u16,
) -> Option<Verdict> {
    let gue = match val.fast {
        Fast::IpipV4 => false,
        Fast::GueV4 => true,
        _ => return None,
    };
    // `outer_v4` takes the outer header's first word from the inner's, which must have no
    // options (the fast parse takes no other); `encap` writes the others' the same.
    if p.l3 != L3::Ipv4 || p.l3_off != wire::ETH_LEN || p.l4_off != p.l3_off + 20 {
        return None;
    }
    if outer_v4(pkt, table, val, p.l3_end - p.l3_off, gue, entropy) {
        Some(Verdict::Tx)
    } else {
        None
    }
}

/// The per-flow part of the outer IPv4 header's checksum of dsr-ipip (`gue` false) or dsr-gue
/// from `src` to `dst`, as a [`Delta`] from the inner header's first word (version, TOS and
/// length, which the outer header copies) to the outer header: its TTL and protocol, its
/// addresses and the encapsulation's overhead in the length. Computed when a flow value is
/// sealed (its `l3_delta`, which only a rewrite uses otherwise), so a packet adds only its
/// own first word ([`outer_v4`]). 0 for another flow kind or family. Always inline: a new
/// IPv4 flow computes it in dsr's own arm, where the compiler otherwise called it (14 more
/// instructions a dsr flow).
#[inline(always)]
pub(super) fn outer_delta(fast: Fast, src: &Addr, dst: &Addr) -> Delta {
    let (proto, overhead) = match fast {
        Fast::IpipV4 => (proto::IPIP, IPIP_OVERHEAD),
        Fast::GueV4 => (proto::UDP, GUE_OVERHEAD),
        _ => return Delta::default(),
    };
    if !src.is_v4() || !dst.is_v4() {
        return Delta::default();
    }
    let w = |a: &Addr| u64::from(u32::from_be_bytes(a.v4_octets()));
    let ttl_proto = u64::from(u32::from_be_bytes([OUR_TTL, proto, 0, 0]));
    Delta::from_sum(overhead as u64 + ttl_proto + w(src) + w(dst))
}

/// Bytes dsr-ipip puts in front of the client's IP packet (the outer IPv4 header).
pub(super) const IPIP_OVERHEAD: usize = 20;
/// Bytes dsr-gue puts in front of it (outer IPv4 and UDP).
pub(super) const GUE_OVERHEAD: usize = 28;

/// Writes the outer Ethernet, IPv4 (and for `gue` UDP, with `entropy` as its source port and
/// no checksum, as [`encap`]) headers of flow value `val` in front of the untagged IPv4 packet
/// without options of `inner` bytes behind the frame's Ethernet header: the fixed-offset
/// encapsulation the fast path and [`encap_v4`] share ([`outer_v4_as`]). False, with nothing
/// changed, when the result would pass the MTU or the buffer has no headroom for it.
#[inline(always)]
pub(super) fn outer_v4(
    pkt: &mut PacketBuf<'_>,
    table: &RoutingTable,
    val: &FlowValue,
    inner: usize,
    gue: bool,
    entropy: u16,
) -> bool {
    if gue {
        outer_v4_as::<true>(pkt, table, val, inner, entropy)
    } else {
        outer_v4_as::<false>(pkt, table, val, inner, entropy)
    }
}

/// [`outer_v4`] for one encapsulation (`GUE` or IPIP): the fast path calls it for the kind it
/// tested, so nothing inside tests it again. The outer IPv4 header's first word is the inner's
/// (version and IHL 0x45, TOS) with the overhead added to the length, and its checksum the
/// value's `l3_delta` ([`outer_delta`]) applied to that word's sum.
#[inline(always)]
pub(super) fn outer_v4_as<const GUE: bool>(
    pkt: &mut PacketBuf<'_>,
    table: &RoutingTable,
    val: &FlowValue,
    inner: usize,
    entropy: u16,
) -> bool {
    let overhead = if GUE { GUE_OVERHEAD } else { IPIP_OVERHEAD };
    if inner + overhead > usize::from(table.local.mtu) || !pkt.push_front(overhead) {
        return false;
    }
    // Ethernet, the outer IPv4 and UDP headers and the inner header's first word through one
    // fixed-size view: every frame here has an IPv4 packet of at least 28 bytes behind them.
    let Some(h) = pkt
        .data_mut()
        .first_chunk_mut::<{ wire::ETH_LEN + GUE_OVERHEAD + 4 }>()
    else {
        return false;
    };
    let (_, behind) = h.split_at(wire::ETH_LEN + overhead);
    let Some(&first) = behind.first_chunk::<4>() else {
        return false;
    };
    // The checksum in wire order (`Delta::apply_wire`): the first word's two halves summed with
    // an end-around carry, then the flow's part added. Never 0 (the first byte is 0x45), so
    // the same value as a sum over the whole header.
    let x = u32::from_ne_bytes(first);
    let (s, carry) = (x as u16).overflowing_add((x >> 16) as u16);
    let c = val.l3_delta.apply_wire(!(s + u16::from(carry)));
    // `inner + overhead` is at most the MTU, a u16: the length does not carry into the TOS.
    let w0 = (u32::from_be_bytes(first) + overhead as u32).to_be_bytes();
    h[..12].copy_from_slice(&val.macs);
    h[12..14].copy_from_slice(&wire::ETHERTYPE_IPV4.to_be_bytes());
    let proto = if GUE { proto::UDP } else { proto::IPIP };
    let [c0, c1] = c.to_ne_bytes();
    let mut ip = [
        w0[0], w0[1], w0[2], w0[3], 0, 0, 0, 0, OUR_TTL, proto, c0, c1, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    ip[12..16].copy_from_slice(&val.new_src.v4_octets());
    ip[16..20].copy_from_slice(&val.new_dst.v4_octets());
    h[wire::ETH_LEN..wire::ETH_LEN + 20].copy_from_slice(&ip);
    if GUE {
        let u = &mut h[wire::ETH_LEN + 20..wire::ETH_LEN + 28];
        u[0..2].copy_from_slice(&entropy.to_be_bytes());
        u[2..4].copy_from_slice(&val.gue_port.to_be_bytes());
        u[4..6].copy_from_slice(&((inner + 8) as u16).to_be_bytes());
        u[6..8].copy_from_slice(&[0, 0]);
    }
    true
}

/// Puts the frame's IP packet, unchanged, inside an outer IP (and UDP for GUE) header.
pub(super) fn encap(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    val: &FlowValue,
    entropy: u16,
) -> Verdict {
    let inner_len = p.l3_end - p.l3_off;
    let outer_v4 = val.new_dst.is_v4();
    if outer_v4 && p.l3 == L3::Ipv6 {
        return Verdict::Drop(DropReason::Unsupported);
    }
    let ip_len = if outer_v4 { 20 } else { 40 };
    let udp_len = if val.action == Action::Gue { 8 } else { 0 };
    let overhead = ip_len + udp_len;
    let mtu = usize::from(table.local.mtu);
    if inner_len + overhead > mtu {
        let report = mtu.saturating_sub(overhead) as u32;
        return too_big(table, pkt, p, report);
    }
    let inner_tos = wire::tos(pkt.data(), p.l3_off, p.l3 == L3::Ipv4);
    // Trailing Ethernet padding stays behind the packet; the outer length excludes it.
    if !pkt.push_front(overhead) {
        return Verdict::Drop(DropReason::NoRoom);
    }
    let l2 = p.l3_off;
    let d = pkt.data_mut();
    let outer_type = if outer_v4 {
        wire::ETHERTYPE_IPV4
    } else {
        wire::ETHERTYPE_IPV6
    };
    let (dst, src) = (wire::dst_mac(&val.macs), wire::src_mac(&val.macs));
    if wire::write_eth(d, dst, src, p.vlan, outer_type).is_none() {
        return Verdict::Drop(DropReason::NoRoom);
    }
    let next = if udp_len > 0 {
        proto::UDP
    } else if p.l3 == L3::Ipv4 {
        proto::IPIP
    } else {
        proto::IPV6
    };
    let payload = (inner_len + udp_len) as u16;
    let Some(out) = d.get_mut(l2..) else {
        return Verdict::Drop(DropReason::NoRoom);
    };
    let written = if outer_v4 {
        wire::write_ipv4(
            out,
            &Ipv4Fields {
                src: val.new_src.v4_octets(),
                dst: val.new_dst.v4_octets(),
                proto: next,
                payload_len: payload,
                ttl: OUR_TTL,
                tos: inner_tos,
                id: 0,
                flags_frag: 0,
            },
        )
    } else {
        wire::write_ipv6(
            out,
            &Ipv6Fields {
                src: val.new_src.0,
                dst: val.new_dst.0,
                next_header: next,
                payload_len: payload,
                hop_limit: OUR_TTL,
                traffic_class: inner_tos,
                flow_label: 0,
            },
        )
    };
    if written.is_none() {
        return Verdict::Drop(DropReason::NoRoom);
    }
    if udp_len > 0 {
        let Some(udp) = out.get_mut(ip_len..) else {
            return Verdict::Drop(DropReason::NoRoom);
        };
        if wire::write_udp(udp, entropy, val.gue_port, inner_len as u16).is_none() {
            return Verdict::Drop(DropReason::NoRoom);
        }
        if !outer_v4 {
            // IPv6 requires a UDP checksum (RFC 8200); IPv4's outer GUE header goes without.
            wire::fill_udp_checksum(&mut udp[..inner_len + 8], &val.new_src, &val.new_dst);
        }
    }
    Verdict::Tx
}

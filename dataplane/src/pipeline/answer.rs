//! Answers for our own addresses (ARP, neighbor discovery, echo) and learning next hops' MACs
//! from ARP and ND.

use crate::flow::{proto, Addr};
use crate::packet::PacketBuf;
use crate::table::RoutingTable;
use crate::wire::{self, checksum, Ipv6Fields, Parsed, L3};

use super::rewrite::{set_macs, src_mac};
use super::verdict::{DropReason, Verdict};
use super::OUR_TTL;

pub(super) fn arp(table: &RoutingTable, pkt: &mut PacketBuf<'_>, p: &Parsed) -> Verdict {
    let local_mac = table.local.mac;
    let d = pkt.data_mut();
    let eth_src = src_mac(d);
    let Some(mut arp) = d.get_mut(p.l3_off..).and_then(wire::ArpIpv4::new_checked) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    let (spa, tpa) = (arp.sender_ip(), arp.target_ip());
    if matches!(arp.operation(), wire::ARP_REQUEST | wire::ARP_REPLY) {
        // Requests, replies and gratuitous announcements all tell the sender's MAC.
        learn(table, Addr::v4(spa), arp.sender_mac());
    }
    // Gratuitous announcements, replies and other hosts' addresses are the host's business.
    if arp.operation() != wire::ARP_REQUEST || spa == tpa || !table.owns(Addr::v4(tpa)) {
        return Verdict::ToHost;
    }
    arp.make_reply(local_mac);
    set_macs(d, eth_src, local_mac);
    Verdict::Tx
}

/// Records `mac` for `addr` when `addr` is a next hop this table resolves dynamically. Nothing
/// else is learned: a stranger cannot add entries, and frames claiming one of our own addresses
/// or our MAC (our own probes looping back, or a conflict) are ignored.
pub(super) fn learn(table: &RoutingTable, addr: Addr, mac: [u8; 6]) {
    let Some(cache) = table.neighbors() else {
        return;
    };
    let Some(nh) = table.next_hop_by_addr(addr) else {
        return;
    };
    if mac == table.local.mac || table.owns(addr) {
        return;
    }
    cache.learn(nh.hop, mac);
}

/// Learns from a neighbor advertisement (its target and target link-layer address option) or a
/// neighbor solicitation (its source and source link-layer address option), after the checks of
/// RFC 4861 7.1: hop limit 255, code 0, valid checksum.
pub(super) fn learn_nd(table: &RoutingTable, d: &[u8], p: &Parsed) {
    let l4 = p.l4_off;
    if p.ttl != 255 || p.icmp_code != 0 || p.l3_end < l4 + 24 || p.l3_end > d.len() {
        return;
    }
    let (addr, want_opt) = if p.icmp_type == 136 {
        match d.get(l4 + 8..l4 + 24).and_then(Addr::from_wire) {
            Some(t) => (t, 2),
            None => return,
        }
    } else {
        (p.src, 1)
    };
    if addr == Addr::default() || table.next_hop_by_addr(addr).is_none() {
        return;
    }
    if !wire::verify_l4_checksum(d, p) {
        return;
    }
    let mut off = l4 + 24;
    while off + 8 <= p.l3_end {
        let (kind, len) = (d[off], usize::from(d[off + 1]) * 8);
        if len == 0 || off + len > p.l3_end {
            return;
        }
        if kind == want_opt {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&d[off + 2..off + 8]);
            learn(table, addr, mac);
            return;
        }
        off += len;
    }
}

pub(super) fn echo_reply(table: &RoutingTable, pkt: &mut PacketBuf<'_>, p: &Parsed) -> Verdict {
    let v4 = p.l3 == L3::Ipv4;
    let d = pkt.data_mut();
    let l3 = p.l3_off;
    let (a_off, half) = if v4 { (l3 + 12, 4) } else { (l3 + 8, 16) };
    if let Some(addrs) = d.get_mut(a_off..a_off + 2 * half) {
        let (s, t) = addrs.split_at_mut(half);
        s.swap_with_slice(t);
    }
    if v4 {
        d[l3 + 8] = OUR_TTL;
        wire::put_be16(d, l3 + 10, 0);
        let c = checksum::ipv4_header(&d[l3..p.l4_off]);
        wire::put_be16(d, l3 + 10, c);
    } else {
        d[l3 + 7] = OUR_TTL;
    }
    let reply = if v4 { 0 } else { 129 };
    let (src, dst) = (p.dst, p.src);
    let Some(icmp) = d.get_mut(p.l4_off..p.l3_end) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    icmp[0] = reply;
    // Recomputed, not updated: an all-zero message must get 0xffff, which RFC 1624's
    // incremental update would write as 0x0000.
    wire::put_be16(icmp, 2, 0);
    let c = if v4 {
        checksum::icmpv4(icmp)
    } else {
        checksum::l4(&src, &dst, proto::ICMPV6, icmp)
    };
    wire::put_be16(icmp, 2, c);
    let eth_src = src_mac(d);
    set_macs(d, eth_src, table.local.mac);
    Verdict::Tx
}

/// Answers an ICMPv6 neighbor solicitation for one of our addresses with an advertisement.
pub(super) fn neighbor_solicitation(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
) -> Verdict {
    let l4 = p.l4_off;
    let data = pkt.data();
    let Some(target) = data.get(l4 + 8..l4 + 24).and_then(Addr::from_wire) else {
        return Verdict::ToHost;
    };
    // RFC 4861 7.1.1: hop limit 255, code 0, at least 24 bytes.
    if p.ttl != 255 || p.icmp_code != 0 || p.l3_end < l4 + 24 || !table.owns(target) {
        return Verdict::ToHost;
    }
    if !wire::verify_l4_checksum(data, p) {
        return Verdict::Drop(DropReason::BadL4Checksum);
    }
    let dad = p.src == Addr::default();
    let all_nodes = Addr::v6([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let dst = if dad { all_nodes } else { p.src };
    let dst_mac = if dad {
        [0x33, 0x33, 0, 0, 0, 1]
    } else {
        src_mac(data)
    };
    let l3 = p.l3_off;
    let len = l4 + 32;
    if !pkt.set_len(len) {
        return Verdict::Drop(DropReason::NoRoom);
    }
    let mac = table.local.mac;
    let d = pkt.data_mut();
    set_macs(d, dst_mac, mac);
    let Some(ip) = d.get_mut(l3..) else {
        return Verdict::Drop(DropReason::NoRoom);
    };
    if wire::write_ipv6(
        ip,
        &Ipv6Fields {
            src: target.0,
            dst: dst.0,
            next_header: proto::ICMPV6,
            payload_len: 32,
            hop_limit: 255,
            traffic_class: 0,
            flow_label: 0,
        },
    )
    .is_none()
    {
        return Verdict::Drop(DropReason::NoRoom);
    }
    let flags = if dad { 0x20 } else { 0x60 }; // Override, plus Solicited when answering a host.
    let na = &mut d[l4..len];
    na[..8].copy_from_slice(&[136, 0, 0, 0, flags, 0, 0, 0]);
    na[8..24].copy_from_slice(&target.0);
    na[24..26].copy_from_slice(&[2, 1]);
    na[26..32].copy_from_slice(&mac);
    let c = checksum::l4(&target, &dst, proto::ICMPV6, na);
    wire::put_be16(na, 2, c);
    Verdict::Tx
}

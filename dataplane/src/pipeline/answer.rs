//! Answers for our own addresses (ARP, neighbor discovery, echo) and learning next hops' MACs
//! from ARP and ND.

use crate::flow::{proto, Addr};
use crate::packet::PacketBuf;
use crate::table::RoutingTable;
use crate::wire::{self, nd, set_macs, src_mac, Ipv6Fields, Parsed, L3};

use super::verdict::{DropReason, Verdict};
use super::OUR_TTL;

/// Answers an ARP request for one of our addresses on interface `port` (where it arrived) and
/// learns next hops' MACs from any ARP.
pub(super) fn arp(table: &RoutingTable, pkt: &mut PacketBuf<'_>, p: &Parsed, port: u8) -> Verdict {
    let local_mac = table.local.mac_of(port);
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
    if arp.operation() != wire::ARP_REQUEST || spa == tpa || !table.owns_on(port, Addr::v4(tpa)) {
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
    if table.local.iface_of_mac(&mac).is_some() || table.owns(addr) {
        return;
    }
    cache.learn(nh.hop, mac);
}

/// Learns from a neighbor advertisement (its target and target link-layer address option) or a
/// neighbor solicitation (its source and source link-layer address option), after the checks of
/// RFC 4861 7.1: hop limit 255, code 0, valid checksum.
pub(super) fn learn_nd(table: &RoutingTable, d: &[u8], p: &Parsed) {
    let l4 = p.l4_off;
    if p.ttl != 255 || p.icmp_code != 0 || p.l3_end < l4 + nd::ND_LEN || p.l3_end > d.len() {
        return;
    }
    let Some(msg) = d.get(l4..p.l3_end) else {
        return;
    };
    let (addr, want_opt) = if p.icmp_type == nd::ND_ADVERT {
        match nd::target(msg) {
            Some(t) => (t, nd::OPT_TARGET_LL),
            None => return,
        }
    } else {
        (p.src, nd::OPT_SOURCE_LL)
    };
    if addr == Addr::default() || table.next_hop_by_addr(addr).is_none() {
        return;
    }
    if !wire::verify_l4_checksum(d, p) {
        return;
    }
    if let Some(mac) = nd::link_layer_option(msg, want_opt) {
        learn(table, addr, mac);
    }
}

/// Answers an echo request to one of our addresses in place, from interface `port`.
pub(super) fn echo_reply(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    port: u8,
) -> Verdict {
    let v4 = p.l3 == L3::Ipv4;
    let d = pkt.data_mut();
    wire::answer_in_place(d, p.l3_off, p.l4_off, v4, OUR_TTL);
    let (src, dst) = (p.dst, p.src);
    let Some(icmp) = d.get_mut(p.l4_off..p.l3_end) else {
        return Verdict::Drop(DropReason::Truncated);
    };
    wire::echo_reply_in_place(icmp, v4, &src, &dst);
    let eth_src = src_mac(d);
    set_macs(d, eth_src, table.local.mac_of(port));
    Verdict::Tx
}

/// Answers an ICMPv6 neighbor solicitation for one of our addresses on interface `port` (where
/// it arrived) with an advertisement.
pub(super) fn neighbor_solicitation(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    port: u8,
) -> Verdict {
    let l4 = p.l4_off;
    let data = pkt.data();
    let Some(target) = data.get(l4..).and_then(nd::target) else {
        return Verdict::ToHost;
    };
    // RFC 4861 7.1.1: hop limit 255, code 0, at least 24 bytes.
    if p.ttl != 255
        || p.icmp_code != 0
        || p.l3_end < l4 + nd::ND_LEN
        || !table.owns_on(port, target)
    {
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
    let len = l4 + nd::ADVERT_LEN;
    if !pkt.set_len(len) {
        return Verdict::Drop(DropReason::NoRoom);
    }
    let mac = table.local.mac_of(port);
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
            payload_len: nd::ADVERT_LEN as u16,
            hop_limit: 255,
            traffic_class: 0,
            flow_label: 0,
        },
    )
    .is_none()
    {
        return Verdict::Drop(DropReason::NoRoom);
    }
    if nd::write_advert(&mut d[l4..len], &target, &dst, mac, !dad).is_none() {
        return Verdict::Drop(DropReason::NoRoom);
    }
    Verdict::Tx
}

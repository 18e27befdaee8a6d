//! ICMP: errors about tracked flows go to the flow's other end, errors about untracked dsr/dr
//! flows follow Maglev, and packets too big to encapsulate are answered.

use crate::conntrack::{Dir, Hit, Millis};
use crate::flow::{proto, FlowKey};
use crate::packet::PacketBuf;
use crate::table::{Mode, RoutingTable};
use crate::wire::nat::{self, IpAt};
use crate::wire::{self, nd, Ipv4Fields, Ipv6Fields, Parsed, L3};

use super::answer::{echo_reply, learn_nd, neighbor_solicitation};
use super::new_flow::choose;
use super::rewrite::apply;
use super::state::{Action, WorkerState};
use super::verdict::{DropReason, Verdict};
use super::{ICMP4_MAX, ICMP6_MAX, OUR_TTL};

pub(super) fn icmp(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
) -> Verdict {
    let v6 = p.l3 == L3::Ipv6;
    if p.l4_off + 8 > p.l3_end {
        return if table.owns(p.dst) {
            Verdict::Drop(DropReason::Truncated)
        } else {
            Verdict::ToHost
        };
    }
    let error = if v6 {
        wire::is_icmpv6_error(p.icmp_type)
    } else {
        wire::is_icmpv4_error(p.icmp_type)
    };
    if error {
        if let Some(q) = wire::parse_icmp_quote(pkt.data(), p) {
            if q.ports_present && matches!(q.proto, proto::TCP | proto::UDP) {
                // The quote is a packet sent towards the error's sender; its flow's key here is
                // the reverse.
                let key = q.key().reversed();
                if let Some(hit) = st.ct.lookup(&key, now) {
                    return icmp_error_tracked(st, table, pkt, p, &q, hit);
                }
                if table.is_vip(p.dst) && q.src == p.dst {
                    return icmp_error_stateless(table, pkt, p, &key);
                }
            }
        }
        // Errors to our own (non-VIP) addresses are the host's: its traceroute and path MTU
        // discovery need them.
        return if table.is_vip(p.dst) {
            Verdict::Drop(DropReason::IcmpUntracked)
        } else {
            Verdict::ToHost
        };
    }
    if v6 && matches!(p.icmp_type, nd::ND_SOLICIT | nd::ND_ADVERT) && table.neighbors().is_some() {
        learn_nd(table, pkt.data(), p);
    }
    if v6 && p.icmp_type == nd::ND_SOLICIT {
        return neighbor_solicitation(table, pkt, p, st.rx_port);
    }
    if !table.owns(p.dst) {
        return Verdict::ToHost;
    }
    let echo_request = if v6 {
        wire::ICMPV6_ECHO_REQUEST
    } else {
        wire::ICMPV4_ECHO_REQUEST
    };
    if p.icmp_type != echo_request || p.icmp_code != 0 {
        return Verdict::ToHost;
    }
    if !wire::verify_l4_checksum(pkt.data(), p) {
        return Verdict::Drop(DropReason::BadL4Checksum);
    }
    echo_reply(table, pkt, p, st.rx_port)
}

/// Answers the client with ICMP fragmentation needed / packet too big quoting its packet.
pub(super) fn too_big(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    mtu: u32,
) -> Verdict {
    let v4 = p.l3 == L3::Ipv4;
    let (ip_len, max) = if v4 { (20, ICMP4_MAX) } else { (40, ICMP6_MAX) };
    let inner_len = p.l3_end - p.l3_off;
    let quote = inner_len.min(max - ip_len - 8);
    let client_mac = wire::src_mac(pkt.data());
    // The answer leaves by the interface the packet came in on: the one its destination MAC
    // names.
    let arrived_to = wire::dst_mac(pkt.data());
    let our_mac = match table.local.iface_of_mac(&arrived_to) {
        Some(i) => table.local.mac_of(i),
        None => table.local.mac,
    };
    let (client, vip) = (p.src, p.dst);
    let l2 = p.l3_off;
    let (buf, head, _) = pkt.raw_mut();
    let from = head + l2;
    let to = from + ip_len + 8;
    if to + quote > buf.len() {
        return Verdict::Drop(DropReason::NoRoom);
    }
    buf.copy_within(from..from + quote, to);
    let frame = &mut buf[head..to + quote];
    let ethertype = if v4 {
        wire::ETHERTYPE_IPV4
    } else {
        wire::ETHERTYPE_IPV6
    };
    if wire::write_eth(frame, client_mac, our_mac, p.vlan, ethertype).is_none() {
        return Verdict::Drop(DropReason::NoRoom);
    }
    let icmp_len = 8 + quote;
    let ip = &mut frame[l2..];
    let ok = if v4 {
        wire::write_ipv4(
            ip,
            &Ipv4Fields {
                src: vip.v4_octets(),
                dst: client.v4_octets(),
                proto: proto::ICMP,
                payload_len: icmp_len as u16,
                ttl: OUR_TTL,
                tos: 0,
                id: 0,
                flags_frag: 0,
            },
        )
    } else {
        wire::write_ipv6(
            ip,
            &Ipv6Fields {
                src: vip.0,
                dst: client.0,
                next_header: proto::ICMPV6,
                payload_len: icmp_len as u16,
                hop_limit: OUR_TTL,
                traffic_class: 0,
                flow_label: 0,
            },
        )
    };
    if ok.is_none() {
        return Verdict::Drop(DropReason::NoRoom);
    }
    let icmp = &mut ip[ip_len..ip_len + icmp_len];
    if wire::write_too_big(icmp, v4, mtu, &vip, &client).is_none() {
        return Verdict::Drop(DropReason::NoRoom);
    }
    if pkt.set_bounds(head, l2 + ip_len + icmp_len) {
        Verdict::Tx
    } else {
        Verdict::Drop(DropReason::NoRoom)
    }
}

/// An ICMP error to a VIP about a flow this worker does not track (it started on another balancer
/// behind the same ECMP route, or before a restart): where Maglev puts that flow on a dsr or dr
/// backend, the error can go there unchanged, as Katran does. nat/fullnat need the flow's state.
pub(super) fn icmp_error_stateless(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    key: &FlowKey,
) -> Verdict {
    let Some((_, svc)) = table.service_for(key.dst, key.proto, key.dport) else {
        return Verdict::Drop(DropReason::IcmpUntracked);
    };
    let val = match choose(table, svc, key, |_| Ok(())) {
        Ok((val, _, _)) => val,
        Err(r) => return Verdict::Drop(r),
    };
    match val.action {
        Action::Ipip | Action::Gue | Action::Mac => apply(table, pkt, p, &val, key.sport),
        Action::Rewrite => Verdict::Drop(DropReason::IcmpUntracked),
    }
}

/// An ICMP error about a tracked flow goes to the flow's other end, rewritten so it makes sense
/// there: the outer header is re-addressed and the quoted header is put back into that end's view.
pub(super) fn icmp_error_tracked(
    st: &mut WorkerState,
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    q: &wire::Quoted,
    hit: Hit,
) -> Verdict {
    let val = *st.ct.value(hit.slot);
    match val.action {
        // The client's side of a dsr/dr flow: the backend needs the error unchanged.
        Action::Ipip | Action::Gue => return apply(table, pkt, p, &val, q.dport),
        Action::Mac => return apply(table, pkt, p, &val, 0),
        Action::Rewrite => {}
    }
    if val.new_src.is_v4() != (p.l3 == L3::Ipv4) || q.v6 == val.new_src.is_v4() {
        return Verdict::Drop(DropReason::Unsupported);
    }
    let outer_src = if hit.dir == Dir::Reply || val.mode == Mode::FullNat {
        val.new_src
    } else {
        p.src
    };
    let v4 = p.l3 == L3::Ipv4;
    let d = pkt.data_mut();
    // Quoted packet: the flow as the receiver of this error sent it.
    let quoted = IpAt {
        l3: q.l3_off,
        l4: q.l4_off,
        end: q.end,
        v4: !q.v6,
        proto: q.proto,
    };
    nat::rewrite_present(d, quoted, &val.new_key().reversed());
    if !q.v6 && q.l4_off <= q.end {
        wire::refresh_ipv4_checksum(d, q.l3_off, q.l4_off);
    }
    wire::set_addrs(d, p.l3_off, p.l4_off, v4, &outer_src, &val.new_dst);
    if let Some(msg) = d.get_mut(p.l4_off..p.l3_end) {
        wire::refresh_icmp_checksum(msg, v4, &outer_src, &val.new_dst);
    }
    wire::set_mac_pair(d, &val.macs);
    Verdict::Tx
}

//! Forwarding a packet by its flow value: address and port rewrite (nat, fullnat) or a MAC change
//! (dr); encapsulating actions go to `encap`.

use crate::packet::PacketBuf;
use crate::table::RoutingTable;
use crate::wire::nat::{self, IpAt};
use crate::wire::{self, Parsed, L3};

use super::encap::{encap, encap_v4};
use super::state::{Action, Fast, FlowValue};
use super::verdict::{DropReason, Verdict};

/// Forwards a packet according to a flow value. `entropy` is the GUE source port.
// The IPv4 rewrite is inlined into its callers (as a call it saved and restored six registers
// and passed the parse result through memory); the other actions stay one call away.
#[inline(always)]
pub(super) fn apply(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    val: &FlowValue,
    entropy: u16,
) -> Verdict {
    if val.fast == Fast::RewriteV4 {
        let at = IpAt {
            l3: p.l3_off,
            l4: p.l4_off,
            end: p.l3_end,
            v4: true,
            proto: p.proto,
        };
        let d = pkt.data_mut();
        let ports = nat::ports(val.new_sport, val.new_dport);
        let (src, dst) = (val.new_src.v4_octets(), val.new_dst.v4_octets());
        nat::rewrite_v4(d, at, src, dst, ports, (val.l3_delta, val.l4_delta));
        wire::set_mac_pair(d, &val.macs);
        return Verdict::Tx;
    }
    apply_other(table, pkt, p, val, entropy)
}

/// [`apply`] for every flow value not sealed `Fast::RewriteV4`.
#[inline(never)]
fn apply_other(
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
            let at = IpAt {
                l3: p.l3_off,
                l4: p.l4_off,
                end: p.l3_end,
                v4: p.l3 == L3::Ipv4,
                proto: p.proto,
            };
            let ports = nat::ports(val.new_sport, val.new_dport);
            let deltas = (val.l3_delta, val.l4_delta);
            nat::rewrite(d, at, &val.new_src, &val.new_dst, ports, deltas);
            wire::set_mac_pair(d, &val.macs);
            Verdict::Tx
        }
        Action::Mac => {
            wire::set_mac_pair(pkt.data_mut(), &val.macs);
            Verdict::Tx
        }
        Action::Ipip | Action::Gue => match encap_v4(table, pkt, p, val, entropy) {
            Some(v) => v,
            None => encap(table, pkt, p, val, entropy),
        },
    }
}

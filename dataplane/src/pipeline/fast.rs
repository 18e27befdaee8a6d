//! The fast path: a packet of a confirmed flow that stays where it is, in an untagged IPv4 TCP or
//! UDP frame without options, whose flow rewrites IPv4 (nat, fullnat), encapsulates in IPv4
//! (dsr-ipip, dsr-gue) or only changes MACs (dr). Most packets a balancer forwards are these; they skip the general parse (80-byte
//! [`Parsed`](crate::wire::Parsed)), classification, the state machine and the action dispatch.
//!
//! Every test here only decides whether the packet takes this path; anything unusual (another
//! frame kind, a flow mid-handshake or closing, a table swap since the flow was checked, a packet
//! that would not fit) returns `None` before anything changed, and the general path handles the
//! packet exactly as it always did.

use crate::conntrack::{Hit, Millis, V4Key};
use crate::flow::proto;
use crate::packet::PacketBuf;
use crate::table::RoutingTable;
use crate::wire::nat::{self, IpAt};
use crate::wire::{self, Ipv4Fields, ETHERTYPE_IPV4, ETH_LEN};

use super::state::{BurstFrame, Fast, WorkerState};
use super::verdict::{Counters, FlowCounters};
use super::OUR_TTL;

/// Bytes dsr-ipip puts in front of the client's IP packet.
const IPIP_OVERHEAD: usize = 20;
/// Bytes dsr-gue puts in front of it (outer IPv4 and UDP).
const GUE_OVERHEAD: usize = 28;

/// What [`forward`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Forwarded: transmit it.
    Forwarded,
    /// It needs the general path (nothing changed), which can take this lookup's result
    /// instead of looking again: `None`, the key is not tracked (or expired).
    General(Option<Hit>),
}

/// What a burst's fast-path packets add to the counters, added once per burst ([`Tally::flush`]):
/// the worker's rx/tx counts, and the service counts of runs of packets of one service (a
/// burst's packets of one flow, or of one busy service, are one run). Backends are counted per
/// packet: in a burst of many flows consecutive packets rarely share one, and a run that breaks
/// on every packet measured dearer (callgrind) than counting each.
#[derive(Debug)]
pub(super) struct Tally {
    packets: u64,
    rx_bytes: u64,
    tx_bytes: u64,
    svc: Run,
}

/// Packets and bytes of consecutive packets of one service's counter slot.
#[derive(Clone, Copy, Debug)]
struct Run {
    slot: u32,
    packets: u64,
    bytes: u64,
}

impl Run {
    const NONE: Run = Run {
        slot: u32::MAX,
        packets: 0,
        bytes: 0,
    };

    /// Counts a packet of `len` bytes for `slot`, adding the run so far to `to` when the slot
    /// changes.
    #[inline(always)]
    fn add(&mut self, to: &mut [FlowCounters], slot: u32, len: u64) {
        if slot != self.slot {
            self.flush(to);
            self.slot = slot;
        }
        self.packets += 1;
        self.bytes += len;
    }

    #[inline(always)]
    fn flush(&mut self, to: &mut [FlowCounters]) {
        if let Some(c) = to.get_mut(self.slot as usize) {
            c.packets += self.packets;
            c.bytes += self.bytes;
        }
        *self = Run::NONE;
    }
}

impl Tally {
    /// Nothing counted yet.
    pub(super) const fn new() -> Tally {
        Tally {
            packets: 0,
            rx_bytes: 0,
            tx_bytes: 0,
            svc: Run::NONE,
        }
    }

    /// Adds what was counted to `c`.
    #[inline(always)]
    pub(super) fn flush(&mut self, c: &mut Counters) {
        c.rx_packets += self.packets;
        c.rx_bytes += self.rx_bytes;
        c.tx_packets += self.packets;
        c.tx_bytes += self.tx_bytes;
        self.svc.flush(&mut c.services);
        *self = Tally::new();
    }
}

/// Forwards `pkt` (whose fields, key hash and conntrack slot hint `frame` holds, see
/// [`Conntrack::prefetch_slot`](crate::conntrack::Conntrack::prefetch_slot)) if it is a fast-path
/// packet; otherwise changes nothing and says why. Counts the packet in `tally`, which the
/// caller flushes into the counters (once per burst).
#[inline(always)]
pub(super) fn forward(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    frame: &BurstFrame,
    tally: &mut Tally,
) -> Outcome {
    match forward_tracked(st, table, now, pkt, frame, tally) {
        Ok(()) => Outcome::Forwarded,
        Err(o) => o,
    }
}

#[inline(always)]
fn forward_tracked(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    frame: &BurstFrame,
    tally: &mut Tally,
) -> Result<(), Outcome> {
    let BurstFrame {
        flow: ref f,
        hint,
        hash: h,
    } = *frame;
    let key = V4Key::new(f.src, f.dst, f.ports, f.proto);
    let (val, refresh) = match st.ct.lookup_steady(key, h, hint, now, f.tcp_flags) {
        Ok(v) => v,
        Err(hit) => return Err(Outcome::General(hit)),
    };
    // A steady flow the fast path still cannot take (rare: a table swap since the flow was
    // checked, a fast kind it does not have, a packet too big to encapsulate) looks up once
    // more for the general path, off the common path.
    let general = |st: &WorkerState| Err(Outcome::General(st.ct.lookup_hashed(&f.key(), h, now)));
    if val.generation != table.generation {
        return general(st);
    }
    let l3_end = usize::from(f.l3_end);
    let rx_len = pkt.len() as u64;
    match val.fast {
        Fast::RewriteV4 => {
            let at = IpAt {
                l3: ETH_LEN,
                l4: ETH_LEN + 20,
                end: l3_end,
                v4: true,
                proto: f.proto,
            };
            let d = pkt.data_mut();
            let ports = nat::ports(val.new_sport, val.new_dport);
            let (src, dst) = (val.new_src.v4_octets(), val.new_dst.v4_octets());
            nat::rewrite_v4(d, at, src, dst, ports, (val.l3_delta, val.l4_delta));
            wire::set_macs(d, val.mac, val.src_mac);
        }
        Fast::MacV4 => wire::set_macs(pkt.data_mut(), val.mac, val.src_mac),
        Fast::IpipV4 | Fast::GueV4 => {
            let inner = l3_end - ETH_LEN;
            let gue = val.fast == Fast::GueV4;
            let overhead = if gue { GUE_OVERHEAD } else { IPIP_OVERHEAD };
            if inner + overhead > usize::from(table.local.mtu) || !pkt.push_front(overhead) {
                return general(st);
            }
            let d = pkt.data_mut();
            let tos = d[overhead + ETH_LEN + 1];
            if let Some(eth) = d.get_mut(..ETH_LEN) {
                eth[..6].copy_from_slice(&val.mac);
                eth[6..12].copy_from_slice(&val.src_mac);
                eth[12..].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            }
            let udp = if gue { 8 } else { 0 };
            if let Some(out) = d.get_mut(ETH_LEN..) {
                wire::write_ipv4(
                    out,
                    &Ipv4Fields {
                        src: val.new_src.v4_octets(),
                        dst: val.new_dst.v4_octets(),
                        proto: if gue { proto::UDP } else { proto::IPIP },
                        payload_len: (inner + udp) as u16,
                        ttl: OUR_TTL,
                        tos,
                        id: 0,
                        flags_frag: 0,
                    },
                );
            }
            if gue {
                // The client's source port is the entropy, as the general path's; no UDP
                // checksum over IPv4.
                if let Some(u) = d.get_mut(ETH_LEN + 20..) {
                    wire::write_udp(u, f.sport(), val.gue_port, inner as u16);
                }
            }
        }
        Fast::No => return general(st),
    }
    let c = &mut st.counters;
    tally.packets += 1;
    tally.rx_bytes += rx_len;
    tally.tx_bytes += pkt.len() as u64;
    // The service and backend count the packet as received, as `count` does.
    tally.svc.add(&mut c.services, val.svc_stat, rx_len);
    if let Some(b) = c.backends.get_mut(val.be_stat as usize) {
        b.packets += 1;
        b.bytes += rx_len;
    }
    st.ct.refresh(refresh);
    Ok(())
}

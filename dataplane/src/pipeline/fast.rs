//! The fast path: a packet of a confirmed flow that stays where it is, in an untagged IPv4 TCP or
//! UDP frame without options, whose flow rewrites IPv4 (nat, fullnat), encapsulates in IPv4
//! (dsr-ipip, dsr-gue) or only changes MACs (dr). Most packets a balancer forwards are these; they skip the general parse (80-byte
//! [`Parsed`](crate::wire::Parsed)), classification, the state machine and the action dispatch.
//!
//! Every test here only decides whether the packet takes this path; anything unusual (another
//! frame kind, a flow mid-handshake or closing, a table swap since the flow was checked, a packet
//! that would not fit) returns `None` before anything changed, and the general path handles the
//! packet exactly as it always did.

use crate::conntrack::{Conntrack, Millis, Miss};
use crate::flow::proto;
use crate::packet::PacketBuf;
use crate::table::RoutingTable;
use crate::wire::nat;
use crate::wire::{self, ETH_LEN};

use super::encap::{self, GUE_OVERHEAD, IPIP_OVERHEAD};
use super::state::{gen32, BurstFrame, Fast, FlowValue};
use super::verdict::{Counters, FlowCounters};

/// What [`forward`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Forwarded: transmit it.
    Forwarded,
    /// It needs the general path (nothing changed), which can take this lookup's result
    /// instead of looking again (whether the key is tracked, expired or absent).
    General(Miss),
}

/// What a burst's fast-path packets add to the worker's rx/tx counters, added once per burst
/// ([`Tally::flush`]), and to their service's: a run of packets of one service (most of a
/// burst, usually) is added once, when a packet of another service ends it or at the flush.
/// Backends count each packet as it goes.
#[derive(Debug)]
pub(super) struct Tally {
    packets: u64,
    /// Bytes received; transmitted are these and `grown`.
    bytes: u64,
    /// Bytes the encapsulations added.
    grown: u64,
    /// The service of the run being counted ([`NO_RUN`]: none yet).
    svc: u32,
    /// `packets` and `bytes` when that run began.
    run_from: (u64, u64),
}

/// [`Tally::svc`] before the burst's first packet.
const NO_RUN: u32 = u32::MAX;

/// Ends the run of service `svc` (adds what was counted since `from`, packets and bytes, to
/// its counters) and returns `now` as where the next run begins: kept out of the walk (which
/// would otherwise hold the counters' base in a register), its tally passed by value so the
/// walk keeps it in registers.
#[cold]
#[inline(never)]
fn next_run(
    services: &mut [FlowCounters],
    svc: u32,
    from: (u64, u64),
    now: (u64, u64),
) -> (u64, u64) {
    if let Some(s) = services.get_mut(svc as usize) {
        s.packets += now.0 - from.0;
        s.bytes += now.1 - from.1;
    }
    now
}

impl Tally {
    /// Nothing counted yet.
    pub(super) const fn new() -> Tally {
        Tally {
            packets: 0,
            bytes: 0,
            grown: 0,
            svc: NO_RUN,
            run_from: (0, 0),
        }
    }

    /// Counts a packet of `rx_len` bytes of service `svc`.
    #[inline(always)]
    fn count(&mut self, c: &mut [FlowCounters], svc: u32, rx_len: u64) {
        if svc != self.svc {
            self.run_from = next_run(c, self.svc, self.run_from, (self.packets, self.bytes));
            self.svc = svc;
        }
        self.packets += 1;
        self.bytes += rx_len;
    }

    /// [`Tally::count`] of a walk's packet `nth` (from 0) when every packet before it in the
    /// walk was counted so: the packets are not counted one by one, [`Tally::flush_walk`] is
    /// told how many there were.
    #[inline(always)]
    fn count_nth(&mut self, c: &mut [FlowCounters], svc: u32, rx_len: u64, nth: u64) {
        if svc != self.svc {
            self.run_from = next_run(c, self.svc, self.run_from, (nth, self.bytes));
            self.svc = svc;
        }
        self.bytes += rx_len;
    }

    /// [`Tally::count`] (`ALONE`) or [`Tally::count_nth`], as [`forward_tracked`] counts.
    #[inline(always)]
    fn count_as<const ALONE: bool>(
        &mut self,
        c: &mut [FlowCounters],
        svc: u32,
        rx_len: u64,
        nth: usize,
    ) {
        if ALONE {
            self.count(c, svc, rx_len);
        } else {
            self.count_nth(c, svc, rx_len, nth as u64);
        }
    }

    /// [`Tally::flush`] after a walk that counted its first `forwarded` packets with
    /// [`Tally::count_nth`].
    #[inline(always)]
    pub(super) fn flush_walk(&mut self, c: &mut Counters, forwarded: usize) {
        self.packets = forwarded as u64;
        self.flush(c);
    }

    /// Adds the current run to its service's counters.
    #[inline(always)]
    fn end_run(&mut self, c: &mut Counters) {
        if let Some(s) = c.services.get_mut(self.svc as usize) {
            s.packets += self.packets - self.run_from.0;
            s.bytes += self.bytes - self.run_from.1;
        }
    }

    /// Adds what was counted to `c`.
    #[inline(always)]
    pub(super) fn flush(&mut self, c: &mut Counters) {
        self.end_run(c);
        c.rx_packets += self.packets;
        c.rx_bytes += self.bytes;
        c.tx_packets += self.packets;
        c.tx_bytes += self.bytes + self.grown;
        *self = Tally::new();
    }
}

/// What the fast path works with during a burst, borrowed apart from the worker's scratch
/// (which holds the burst's candidates) so both can be used at once.
pub(super) struct Lane<'a> {
    pub(super) ct: &'a mut Conntrack<FlowValue>,
    pub(super) counters: &'a mut Counters,
    pub(super) table: &'a RoutingTable,
    pub(super) now: Millis,
}

/// Forwards `pkt` (whose fields and key hash `frame` holds; `hint` its conntrack slot hint, see
/// [`Conntrack::lookup_steady`]) if it is a fast-path packet; otherwise changes nothing and says
/// why. Counts the packet in `tally` (and its backend in the counters); the caller flushes
/// `tally` into the counters (once per burst).
#[inline(always)]
pub(super) fn forward(
    lane: &mut Lane<'_>,
    pkt: &mut PacketBuf<'_>,
    frame: &BurstFrame,
    hint: u32,
    tally: &mut Tally,
) -> Outcome {
    match forward_tracked::<true>(lane, pkt, frame, hint, tally, 0) {
        Ok(()) => Outcome::Forwarded,
        Err(Some(hit)) => Outcome::General(hit),
        Err(None) => general(lane.ct, frame, lane.now),
    }
}

/// [`forward`] in a burst's fast loop, before anything else of the burst changed the table
/// (see [`Conntrack::lookup_steady_fresh`]; `frame.hint` found ahead in the burst's walk, or
/// [`NO_HINT`](crate::conntrack::NO_HINT)), as the walk's packet `nth` (from 0; every one
/// before it forwarded: [`Tally::count_nth`], flushed with [`Tally::flush_walk`]).
/// `Err(Some(miss))`: the general path, with this lookup's result; `Err(None)`: a steady flow
/// the fast path still cannot take, whose lookup the caller repeats for the general path.
#[inline(always)]
pub(super) fn forward_fresh(
    lane: &mut Lane<'_>,
    pkt: &mut PacketBuf<'_>,
    frame: &BurstFrame,
    tally: &mut Tally,
    nth: usize,
) -> Result<(), Option<Miss>> {
    forward_tracked::<false>(lane, pkt, frame, frame.hint, tally, nth)
}

/// The lookup of a frame [`forward`] gave up on (`Err(None)` from its walk), for the general
/// path ([`general`]).
fn again(ct: &Conntrack<FlowValue>, frame: &BurstFrame, now: Millis) -> Miss {
    ct.lookup_miss(&frame.flow().key(), frame.hash, now)
}

/// A steady flow the fast path still cannot take (rare: a table swap since the flow was
/// checked, a fast kind it does not have, a packet too big to encapsulate): its lookup once
/// more for the general path, kept out of the fast loop so that loop keeps its registers.
#[cold]
#[inline(never)]
fn general(ct: &Conntrack<FlowValue>, frame: &BurstFrame, now: Millis) -> Outcome {
    Outcome::General(again(ct, frame, now))
}

/// The fast path proper: `Err(Some(miss))` when the lookup says the general path must take
/// the frame, `Err(None)` when a steady flow's frame still cannot take the fast path (its
/// lookup is repeated for the general path, off the fast loop). `CHECK`: the hint may be stale,
/// and the packet is counted alone ([`Tally::count`]); else it is a walk's packet `nth`
/// ([`forward_fresh`]).
#[inline(always)]
fn forward_tracked<const CHECK: bool>(
    lane: &mut Lane<'_>,
    pkt: &mut PacketBuf<'_>,
    frame: &BurstFrame,
    hint: u32,
    tally: &mut Tally,
    nth: usize,
) -> Result<(), Option<Miss>> {
    let Lane {
        ct,
        counters,
        table,
        now,
    } = lane;
    let (ct, counters, table, now) = (&mut **ct, &mut **counters, *table, *now);
    let (key, h) = (frame.key, frame.hash);
    let found = if CHECK {
        ct.lookup_steady(key, h, hint, now, frame.tcp_flags)
    } else {
        ct.lookup_steady_fresh(key, h, hint, now, frame.tcp_flags)
    };
    let val = match found {
        Ok(v) => v,
        Err(hit) => return Err(Some(hit)),
    };
    if val.generation != gen32(table.generation) {
        return Err(None);
    }
    let rx_len = pkt.len() as u64;
    // dsr-ipip first, then nat and fullnat: one compare each instead of a jump through a
    // table (four compares of the kind make one); dsr-gue and dr after one range test.
    if val.fast == Fast::IpipV4 {
        let inner = usize::from(frame.l3_end) - ETH_LEN;
        if !encap::outer_v4_as::<false>(pkt, table, val, inner, 0) {
            return Err(None);
        }
        tally.grown += IPIP_OVERHEAD as u64;
    } else if val.fast == Fast::RewriteV4 {
        // `nat::ports` of the two ports as one rotated word: the two adjacent fields load as
        // one, and the rotation is one instruction where the shift and merge were three.
        let ports = (u32::from(val.new_sport) | (u32::from(val.new_dport) << 16)).rotate_left(16);
        let addrs = (val.new_src.v4_octets(), val.new_dst.v4_octets());
        let deltas = (val.l3_delta, val.l4_delta);
        // The value's protocol is its key's (one byte compared in the slot's line).
        let tcp = val.proto == proto::TCP;
        let d = pkt.data_mut();
        if !nat::rewrite_v4_frame(d, &val.macs, (&addrs.0, &addrs.1), ports, deltas, tcp) {
            return Err(None);
        }
    } else if val.fast as u8 >= Fast::GueV4 as u8 {
        if val.fast == Fast::GueV4 {
            let inner = usize::from(frame.l3_end) - ETH_LEN;
            // The client's source port is the entropy, as the general path's.
            if !encap::outer_v4_as::<true>(pkt, table, val, inner, frame.flow().sport()) {
                return Err(None);
            }
            tally.grown += GUE_OVERHEAD as u64;
        } else {
            wire::set_mac_pair(pkt.data_mut(), &val.macs);
        }
    } else {
        return Err(None);
    }
    // The service (in runs) and backend count the packet as received, as `count` does.
    if let Some(b) = counters.backends.get_mut(val.be_stat as usize) {
        b.packets += 1;
        b.bytes += rx_len;
    }
    tally.count_as::<CHECK>(&mut counters.services, val.svc_stat, rx_len, nth);
    Ok(())
}

//! One packet in, one verdict out: the whole L4 decision path the workers run.
//!
//! Rooms by job: `verdict` (verdicts and counters), `state` (per-worker state and the flow
//! values conntrack stores), `fast` (the common packet of an established IPv4 flow, tried
//! first), `new_flow` (service lookup, Maglev, the new flow's entries),
//! `tracked` (packets of known flows), `rewrite` (address and port rewrite), `encap`
//! (dsr-ipip, dsr-gue), `icmp` (errors about flows, too-big answers) and `answer` (ARP, ND
//! and echo for our own addresses).
#![forbid(unsafe_code)]

mod answer;
mod encap;
mod fast;
mod icmp;
mod new_flow;
mod rewrite;
mod state;
mod tracked;
mod verdict;

use state::BurstFrame;
pub use state::{snat_slice, FlowValue, WorkerState, PREFETCH_FROM_KEYS};
pub use verdict::{Counters, DropReason, FlowCounters, Verdict};

use crate::conntrack::{tcp_flags, Conntrack, Millis, Miss, Probe, V4Key, NO_HINT};
use crate::flow::proto;
use crate::packet::PacketBuf;
use crate::port::MAX_BURST;
use crate::table::RoutingTable;
use crate::wire::{self, Frag, ParseError, Parsed, V4Flow, V4Words, L3};

use fast::{Outcome, Tally};
use verdict::bump;

/// TTL / hop limit of packets we originate (answers, outer headers).
const OUR_TTL: u8 = 64;
/// RFC 1812: an ICMPv4 error carries as much of the original as fits in 576 bytes.
const ICMP4_MAX: usize = 576;
/// RFC 4443: an ICMPv6 error must not exceed the minimum IPv6 MTU.
const ICMP6_MAX: usize = 1280;

/// Runs one frame through the pipeline: parse, classify, track, rewrite in place. Tries the
/// fast path (an established IPv4 flow's common packet) first.
pub fn process(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
) -> Verdict {
    if state.generation == Some(table.generation) {
        match fast_one(state, table, now, pkt) {
            Ok(()) => return Verdict::Tx,
            Err(Some(seen)) => return process_seen(state, table, now, pkt, Some(&seen)),
            Err(None) => {}
        }
    }
    process_general(state, table, now, pkt)
}

/// The fast path for one frame outside a burst: `Ok` when it forwarded the frame (counted),
/// else what it learned of the frame for the general path (`None`: not a frame it reads).
#[inline(always)]
fn fast_one(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
) -> Result<(), Option<FastMiss>> {
    let w = wire::parse_v4_words(pkt.data()).ok_or(None)?;
    let WorkerState { ct, counters, .. } = state;
    let frame = burst_frame(ct, &w);
    let mut tally = Tally::new();
    let mut lane = fast::Lane {
        ct,
        counters,
        table,
        now,
    };
    match fast::forward(&mut lane, pkt, &frame, NO_HINT, &mut tally) {
        Outcome::Forwarded => {
            tally.flush(lane.counters);
            Ok(())
        }
        Outcome::General(hit) => Err(Some(FastMiss::of(lane.ct, &frame, hit))),
    }
}

/// A frame whose fast parse read `w`, as the fast path takes it (no hint yet).
#[inline(always)]
fn burst_frame(ct: &Conntrack<FlowValue>, w: &V4Words) -> BurstFrame {
    let key = V4Key::from_words(w.addrs, w.ports_proto);
    BurstFrame {
        key,
        hash: ct.hash_key(&key),
        hint: NO_HINT,
        l3_end: w.l3_end,
        tcp_flags: w.tcp_flags,
    }
}

/// What the fast path learned of a frame it passed on to the general path: the frame's fields
/// (it accepted the frame's headers) and its conntrack lookup (a hit, or whether the key is
/// absent or expired), so neither the parse nor the lookup is repeated, and, for a key no live
/// flow holds, the key's probe, so a new flow's insert does not search its buckets again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastMiss {
    /// The frame's fields.
    pub flow: V4Flow,
    /// Its key's conntrack lookup: the hit, or why there is none.
    pub hit: Miss,
    /// For a key no live flow holds (`hit` not `Tracked`): its probe in the conntrack that
    /// looked it up (this worker's), valid as long as `hit` (until the table next changes);
    /// for a tracked key, [`Probe::NONE`].
    pub probe: Probe,
}

impl FastMiss {
    /// What the fast path learned of `frame`, whose lookup said `hit`: the probe of a key
    /// no live flow holds made from that lookup (without a search when no slot holds it).
    #[inline(always)]
    fn of(ct: &Conntrack<FlowValue>, frame: &BurstFrame, hit: Miss) -> FastMiss {
        let probe = match hit {
            Miss::Tracked(_) => Probe::NONE,
            m => ct.probe_v4_after(frame.key, frame.hash, m == Miss::Absent),
        };
        FastMiss {
            flow: frame.flow(),
            hit,
            probe,
        }
    }

    /// [`FastMiss::of`] a frame not given to the fast path (a SYN, which it never takes, or
    /// the frame it gave up on): its lookup and its probe from one search of its buckets.
    #[inline(always)]
    fn searched(ct: &Conntrack<FlowValue>, frame: &BurstFrame, now: Millis) -> FastMiss {
        let (hit, probe) = ct.lookup_probe_v4(frame.key, frame.hash, now);
        let flow = frame.flow();
        // `Absent` (a new flow's SYN, the common case) built as itself: as a copy of `hit` it
        // copied the hit's unused fields too.
        if hit == Miss::Absent {
            return FastMiss {
                flow,
                hit: Miss::Absent,
                probe,
            };
        }
        FastMiss { flow, hit, probe }
    }

    /// For a frame whose key no live flow holds (a new flow's candidate): its fields and its
    /// key's probe.
    #[inline(always)]
    fn untracked(&self) -> Option<(&V4Flow, &Probe)> {
        match self.hit {
            Miss::Tracked(_) => None,
            _ => Some((&self.flow, &self.probe)),
        }
    }
}

/// [`process`] without the fast path: the general parse and classification for every frame.
pub fn process_general(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
) -> Verdict {
    let parsed = wire::parse(pkt.data());
    process_parsed(state, table, now, pkt, parsed)
}

/// Runs a burst (at most [`MAX_BURST`] frames; `verdicts[i]` is set for `pkts[i]`) through the
/// pipeline, as [`process`] would one by one, in one software-pipelined walk in the burst's
/// order: while a frame is forwarded (or given to [`process_general`]), a frame further on has
/// its flow fields read and its conntrack bucket's tags prefetched, and one nearer has its
/// slot found in those tags and prefetched. The worker's rx/tx counters of fast-path frames
/// are added once per burst.
pub fn process_burst(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkts: &mut [PacketBuf<'_>],
    verdicts: &mut [Verdict],
) {
    // `process_burst_with` adopts the table before any frame: the dispatch need not test it.
    process_burst_with(state, table, now, pkts, verdicts, |st, pkt, seen| {
        seen_dispatch::<true>(st, table, now, pkt, seen)
    })
}

/// [`process_burst`] with the frames that leave the fast path given to `slow` (the worker
/// steers them to their flow's owner before processing), with what the fast path learned of
/// the frame if it read it (for [`parse_after`] and [`process_parsed_as`]). `slow` must count
/// what it handles (as [`process_parsed`] does).
#[inline]
pub fn process_burst_with(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkts: &mut [PacketBuf<'_>],
    verdicts: &mut [Verdict],
    mut slow: impl FnMut(&mut WorkerState, &mut PacketBuf<'_>, Option<&FastMiss>) -> Verdict,
) {
    if state.generation != Some(table.generation) {
        state.adopt(table);
    }
    let n = pkts.len().min(verdicts.len()).min(MAX_BURST);
    let (pkts, verdicts) = (&mut pkts[..n], &mut verdicts[..n]);
    if n == 1 {
        // A port that hands frames over one at a time: no burst arrays to fill.
        let (Some(pkt), Some(v)) = (pkts.first_mut(), verdicts.first_mut()) else {
            return;
        };
        *v = match fast_one(state, table, now, pkt) {
            Ok(()) => Verdict::Tx,
            Err(seen) => slow(state, pkt, seen.as_ref()),
        };
        return;
    }
    let Some(mut scratch) = state.scratch.take() else {
        // Only a `slow` that runs a burst of its own gets here: frame by frame, then.
        for (pkt, v) in pkts.iter_mut().zip(verdicts.iter_mut()) {
            *v = match fast_one(state, table, now, pkt) {
                Ok(()) => Verdict::Tx,
                Err(seen) => slow(state, pkt, seen.as_ref()),
            };
        }
        return;
    };
    if state.ct.keys() <= state.prefetch_from {
        // A table whose used slots stay in cache: nothing read ahead, no prefetches.
        state.scratch = Some(scratch);
        let (stop, miss) = one_pass(state, table, now, pkts, verdicts);
        if stop < n {
            one_pass_tail(state, table, now, pkts, verdicts, stop, miss, &mut slow);
        }
        return;
    }
    let (stop, ahead) = pipelined(state, table, now, pkts, verdicts, &mut scratch);
    if stop < n {
        pipelined_tail(
            state,
            table,
            now,
            (pkts, verdicts),
            &mut scratch,
            (stop, ahead),
            &mut slow,
        );
    }
    state.scratch = Some(scratch);
}

/// Frames ahead of the one being forwarded whose fields are read and whose conntrack bucket's
/// tags are prefetched ([`pipelined`]).
const TAGS_AHEAD: usize = 16;
/// Frames ahead of the one being forwarded whose slot is found in those tags and prefetched
/// (fewer than [`TAGS_AHEAD`], so the tags have had time to arrive).
const SLOT_AHEAD: usize = 8;

/// A burst as one software-pipelined walk, in the burst's order: once frame i went through
/// the fast path, frame i + [`TAGS_AHEAD`] is parsed, hashed and its bucket's tags prefetched,
/// and frame i + [`SLOT_AHEAD`] has its slot found in those tags and prefetched (the slot is
/// its lookup's hint: after the turn, not before it, which left one instruction fewer per
/// frame to how the registers fall); the first frames are read ahead before the walk starts
/// (their slots found but a SYN's: [`find_ahead_unless_syn`]).
/// `frames[j]` holds frame j's fields once read. Stops at the first frame the fast path does
/// not take and returns its index (the burst's length when there is none) and what was read ahead by
/// then: bit j set for each frame j read whose fast parse took it ([`pipelined_tail`] goes on
/// from there; carrying the stopped frame's lookup out too cost the walk registers). Nothing
/// but steady lookups changes the table before it stops, so each hint is still that of a live
/// slot when its frame's turn comes. It never calls the general path, which would cost the
/// walk its registers.
#[inline(never)]
fn pipelined(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkts: &mut [PacketBuf<'_>],
    verdicts: &mut [Verdict],
    frames: &mut [BurstFrame; MAX_BURST],
) -> (usize, u64) {
    const _: () = assert!(SLOT_AHEAD < TAGS_AHEAD && MAX_BURST <= 64);
    let n = pkts.len().min(verdicts.len()).min(MAX_BURST);
    let mut lane = fast::Lane {
        ct: &mut state.ct,
        counters: &mut state.counters,
        table,
        now,
    };
    for j in 0..n.min(TAGS_AHEAD) {
        read_ahead(lane.ct, pkts, frames, j);
    }
    for j in 0..n.min(SLOT_AHEAD) {
        find_ahead_unless_syn(lane.ct, frames, j);
    }
    let mut tally = Tally::new();
    let mut stop = n;
    for i in 0..n {
        let (Some(pkt), Some(frame)) = (pkts.get_mut(i), frames.get(i)) else {
            break;
        };
        if frame.l3_end == NOT_READ
            || fast::forward_fresh(&mut lane, pkt, frame, &mut tally, i).is_err()
        {
            stop = i;
            break;
        }
        if i + TAGS_AHEAD < n {
            read_ahead(lane.ct, pkts, frames, i + TAGS_AHEAD);
        }
        if i + SLOT_AHEAD < n {
            find_ahead(lane.ct, frames, i + SLOT_AHEAD);
        }
    }
    tally.flush_walk(lane.counters, stop);
    // Every frame before the stop was forwarded: their verdicts in one fill, not a store
    // (and the verdicts' address held) per frame.
    if let Some(v) = verdicts.get_mut(..stop) {
        v.fill(Verdict::Tx);
    }
    // The frames read ahead by the stop whose fast parse took them ([`pipelined_tail`]'s
    // mask): those before `stop + TAGS_AHEAD` (entries further on are an earlier burst's).
    let mut cands = 0u64;
    if stop < n {
        for (j, f) in frames.iter().enumerate().take(n.min(stop + TAGS_AHEAD)) {
            cands |= u64::from(f.l3_end != NOT_READ) << j;
        }
    }
    (stop, cands)
}

/// The frames of a burst from where [`pipelined`] stopped (`stop` and `ahead` as it
/// returned them), in order: the frames not read ahead yet are read and their slots found
/// (but a SYN's: [`find_ahead_but_syn`]) first, in two short loops (read ahead between
/// calls of the general path, which cost the loop its registers, they cost new flows more
/// than the overlap saved), then that frame goes
/// through `slow` and each after it through the fast path, or `slow` when the fast path does
/// not take it. `slow` may change the table, so each hint is checked again.
#[inline(never)]
fn pipelined_tail(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    (pkts, verdicts): (&mut [PacketBuf<'_>], &mut [Verdict]),
    frames: &mut [BurstFrame; MAX_BURST],
    (stop, ahead): (usize, u64),
    slow: &mut impl FnMut(&mut WorkerState, &mut PacketBuf<'_>, Option<&FastMiss>) -> Verdict,
) {
    let n = pkts.len().min(verdicts.len()).min(MAX_BURST);
    let mut cands = ahead;
    for j in stop + TAGS_AHEAD..n {
        cands |= read_ahead(&state.ct, pkts, frames, j);
    }
    for j in stop + SLOT_AHEAD..n {
        find_ahead_but_syn(&state.ct, frames, j);
    }
    // The frame the walk stopped at: what the fast path learned of it, if it read it (its
    // lookup once more, as the general path needs it, with its probe).
    if let (Some(pkt), Some(v)) = (pkts.get_mut(stop), verdicts.get_mut(stop)) {
        let seen = match frames.get(stop) {
            Some(f) if cands & (1 << stop) != 0 => Some(FastMiss::searched(&state.ct, f, now)),
            _ => None,
        };
        *v = slow(state, pkt, seen.as_ref());
    }
    let mut tally = Tally::new();
    for i in stop + 1..n {
        let (Some(pkt), Some(v)) = (pkts.get_mut(i), verdicts.get_mut(i)) else {
            break;
        };
        *v = match frames.get(i) {
            Some(frame) if cands & (1 << i) != 0 => {
                candidate(state, table, now, pkt, frame, &mut tally, slow)
            }
            _ => slow(state, pkt, None),
        };
    }
    tally.flush(&mut state.counters);
}

/// [`BurstFrame::l3_end`] of an entry whose frame the fast parse did not take (an accepted
/// frame's is at least its headers' length).
const NOT_READ: u16 = 0;

/// Frame `j` of a burst read ahead ([`pipelined`]): its fields into `frames[j]` and its
/// bucket's tags requested; returns its bit of the candidate mask (0: the fast parse does not
/// read it, and the entry says so: [`NOT_READ`]).
#[inline(always)]
fn read_ahead(
    ct: &Conntrack<FlowValue>,
    pkts: &[PacketBuf<'_>],
    frames: &mut [BurstFrame],
    j: usize,
) -> u64 {
    let (Some(pkt), Some(slot)) = (pkts.get(j), frames.get_mut(j)) else {
        return 0;
    };
    let Some(f) = wire::parse_v4_words(pkt.data()) else {
        slot.l3_end = NOT_READ;
        return 0;
    };
    // Field by field: the hint is `find_ahead`'s to write, and the walk goes by index.
    let key = V4Key::from_words(f.addrs, f.ports_proto);
    let hash = ct.hash_key(&key);
    ct.prefetch(hash);
    slot.key = key;
    slot.hash = hash;
    slot.l3_end = f.l3_end;
    slot.tcp_flags = f.tcp_flags;
    1 << j
}

/// Frame `j`'s slot found in its bucket's tags and requested ([`pipelined`]); the slot is its
/// hint. Done for frames the fast parse did not take too (their entry holds an older frame's
/// fields, whose prefetch does no harm), which saves a test per frame.
#[inline(always)]
fn find_ahead(ct: &Conntrack<FlowValue>, frames: &mut [BurstFrame], j: usize) {
    if let Some(b) = frames.get_mut(j) {
        b.hint = ct.prefetch_slot(b.hash);
    }
}

/// [`find_ahead_unless_syn`] in [`pipelined_tail`], where a SYN's hint is left as it is (an
/// earlier frame's): there a SYN goes straight to its lookup and probe ([`candidate`]), which
/// take no hint, so no [`NO_HINT`] need be stored for it (fullnat new 1000 -> 998).
#[inline(always)]
fn find_ahead_but_syn(ct: &Conntrack<FlowValue>, frames: &mut [BurstFrame], j: usize) {
    if let Some(b) = frames.get_mut(j) {
        if b.tcp_flags & tcp_flags::SYN == 0 {
            b.hint = ct.prefetch_slot(b.hash);
        }
    }
}

/// [`find_ahead`] for a burst's first frames, but for a SYN: no slot found, its hint
/// [`NO_HINT`]. A SYN never takes the fast path (its flow does not stay where it is): in the
/// tail it goes straight to its lookup and probe ([`candidate`]), and a new flow's SYN, the
/// common one, has no slot to find, so the search of its first bucket's tags would be made
/// twice. (Its bucket's tags were requested when it was read.) Not in the
/// walk's loop, where the test would be on every established packet.
#[inline(always)]
fn find_ahead_unless_syn(ct: &Conntrack<FlowValue>, frames: &mut [BurstFrame], j: usize) {
    if let Some(b) = frames.get_mut(j) {
        b.hint = if b.tcp_flags & tcp_flags::SYN != 0 {
            NO_HINT
        } else {
            ct.prefetch_slot(b.hash)
        };
    }
}

/// A burst in one plain walk while the table is small (see
/// [`WorkerState::set_prefetch_from`]): each frame from the first, in order, parsed, looked up
/// and forwarded, until one the fast path does not take.
/// Returns that frame's index (the burst's length when there is none) and, if the fast parse
/// read it, what the fast path learned of it.
#[inline(never)]
fn one_pass(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkts: &mut [PacketBuf<'_>],
    verdicts: &mut [Verdict],
) -> (usize, Option<FastMiss>) {
    let mut tally = Tally::new();
    let mut lane = fast::Lane {
        ct: &mut state.ct,
        counters: &mut state.counters,
        table,
        now,
    };
    let mut stop = (pkts.len().min(verdicts.len()), None);
    for (i, (pkt, v)) in pkts.iter_mut().zip(verdicts.iter_mut()).enumerate() {
        let Some(f) = wire::parse_v4_words(pkt.data()) else {
            stop.0 = i;
            break;
        };
        let frame = burst_frame(lane.ct, &f);
        match fast::forward_fresh(&mut lane, pkt, &frame, &mut tally, i) {
            Ok(()) => *v = Verdict::Tx,
            Err(miss) => {
                stop = (i, Some((frame, miss)));
                break;
            }
        }
    }
    tally.flush_walk(lane.counters, stop.0);
    let miss = stop.1.map(|(frame, miss)| match miss {
        Some(hit) => FastMiss::of(&state.ct, &frame, hit),
        None => FastMiss::searched(&state.ct, &frame, now),
    });
    (stop.0, miss)
}

/// The frames of a burst from where [`one_pass`] stopped, in order: that one through `slow`,
/// each after it through the fast path, or `slow` when the fast path does not take it.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn one_pass_tail(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkts: &mut [PacketBuf<'_>],
    verdicts: &mut [Verdict],
    stop: usize,
    miss: Option<FastMiss>,
    slow: &mut impl FnMut(&mut WorkerState, &mut PacketBuf<'_>, Option<&FastMiss>) -> Verdict,
) {
    let mut frames = pkts.iter_mut().zip(verdicts.iter_mut()).skip(stop);
    if let Some((pkt, v)) = frames.next() {
        *v = slow(state, pkt, miss.as_ref());
    }
    for (pkt, v) in frames {
        *v = match fast_one(state, table, now, pkt) {
            Ok(()) => Verdict::Tx,
            Err(seen) => slow(state, pkt, seen.as_ref()),
        };
    }
}

/// A burst's fast-path candidate through the fast path, or `slow` with what the fast path
/// learned of it; a SYN straight to `slow`, with its lookup and probe from one search (the fast
/// path never takes a SYN: its flow does not stay where it is).
#[inline(always)]
fn candidate(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    frame: &BurstFrame,
    tally: &mut Tally,
    slow: &mut impl FnMut(&mut WorkerState, &mut PacketBuf<'_>, Option<&FastMiss>) -> Verdict,
) -> Verdict {
    if frame.tcp_flags & tcp_flags::SYN != 0 {
        let seen = FastMiss::searched(&state.ct, frame, now);
        return slow(state, pkt, Some(&seen));
    }
    let mut lane = fast::Lane {
        ct: &mut state.ct,
        counters: &mut state.counters,
        table,
        now,
    };
    match fast::forward(&mut lane, pkt, frame, frame.hint, tally) {
        Outcome::Forwarded => Verdict::Tx,
        Outcome::General(hit) => {
            let seen = FastMiss::of(lane.ct, frame, hit);
            slow(state, pkt, Some(&seen))
        }
    }
}

/// [`process`] for a frame the caller already parsed (the worker parses once to steer the frame
/// to its flow's owner). `parsed` must be `wire::parse(pkt.data())` of the frame as it is now.
pub fn process_parsed(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    parsed: Result<Parsed, ParseError>,
) -> Verdict {
    process_parsed_as(state, table, now, pkt, parsed, None)
}

/// The parse of a frame that left the fast path: [`wire::parse`], or, when the fast path read
/// it (`seen`), the same result built from the fields it read.
#[inline]
pub fn parse_after(frame: &[u8], seen: Option<&FastMiss>) -> Result<Parsed, ParseError> {
    match seen {
        Some(s) => Ok(wire::parsed_v4(frame, &s.flow)),
        None => wire::parse(frame),
    }
}

/// A frame the fast path passed on (`seen`: what it learned, if it read the frame), as
/// [`parse_after`] and [`process_parsed_as`] would take it: a new flow's SYN or datagram it
/// read goes to the new flow's own path first, without the general parse.
// Out of line: [`process`] calls it for every frame the fast path gives up, and its code
// inlined there cost established packets registers. (A burst's tails, out of the walk, have
// its dispatch inlined: [`seen_dispatch`].)
#[inline(never)]
fn process_seen(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    seen: Option<&FastMiss>,
) -> Verdict {
    seen_dispatch::<false>(state, table, now, pkt, seen)
}

/// [`process_seen`]'s dispatch, inlined where a burst's frames leave the fast path (only the
/// burst's tails, out of the walk, call it): one call less per new flow. `ADOPTED`: the
/// caller knows `state` adopted `table` (a burst's does before its first frame).
#[inline(always)]
fn seen_dispatch<const ADOPTED: bool>(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    seen: Option<&FastMiss>,
) -> Verdict {
    if let Some(s) = seen {
        debug_assert!(!ADOPTED || state.generation == Some(table.generation));
        let adopted = ADOPTED || state.generation == Some(table.generation);
        if s.untracked().is_some() && adopted {
            return new_flow::first_v4(state, table, now, pkt, s);
        }
    }
    seen_general(state, table, now, pkt, seen)
}

/// The general path of a frame the fast path passed on (`seen`: what it learned, if it read
/// the frame) and the new flow's own path left alone. Out of line: the dispatch before it
/// then keeps no registers, and both its calls are tail calls.
#[inline(never)]
fn seen_general(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    seen: Option<&FastMiss>,
) -> Verdict {
    let parsed = parse_after(pkt.data(), seen);
    process_parsed_as(state, table, now, pkt, parsed, seen)
}

/// Counts a frame received with `rx` bytes and what became of it, `tx` bytes long then (an
/// encapsulation grows it): the general path's count of every frame it decides.
#[inline(always)]
fn count_verdict(c: &mut Counters, rx: u64, tx: u64, v: Verdict) {
    bump(&mut c.rx_packets, 1);
    bump(&mut c.rx_bytes, rx);
    match v {
        // `Lent` is a worker's `Tx` across interfaces; the pipeline never returns it.
        Verdict::Tx | Verdict::Lent => {
            bump(&mut c.tx_packets, 1);
            bump(&mut c.tx_bytes, tx);
        }
        Verdict::Drop(r) => c.drops[r as usize] += 1,
        Verdict::ToHost => c.to_host += 1,
        Verdict::ToL7 => c.to_l7 += 1,
    }
}

/// [`process_parsed`] for a frame the fast path already looked up (`seen`, from the same table
/// generation and nothing processed in between: its conntrack lookup is not repeated).
pub fn process_parsed_as(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    parsed: Result<Parsed, ParseError>,
    seen: Option<&FastMiss>,
) -> Verdict {
    if state.generation != Some(table.generation) {
        state.adopt(table);
    }
    let rx = pkt.len() as u64;
    // A new flow's SYN or first datagram the fast parse read: its own path, without the
    // general classification (which decides every packet that path leaves alone).
    let first = seen
        .and_then(FastMiss::untracked)
        .and_then(|(f, probe)| new_flow::new_v4(state, table, now, pkt, f, probe));
    let v = match (first, parsed) {
        (Some(v), _) => v,
        (None, Ok(p)) => classify(state, table, now, pkt, p, seen),
        (None, Err(e)) => parse_error(table, pkt.data(), e),
    };
    count_verdict(&mut state.counters, rx, pkt.len() as u64, v);
    v
}

fn classify(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    p: Parsed,
    seen: Option<&FastMiss>,
) -> Verdict {
    match p.l3 {
        L3::Arp => return answer::arp(table, pkt, &p, st.rx_port),
        L3::Other => return Verdict::ToHost,
        L3::Ipv4 | L3::Ipv6 => {}
    }
    if p.frag != Frag::None {
        return if table.is_vip(p.dst) {
            Verdict::Drop(DropReason::Fragment)
        } else {
            Verdict::ToHost
        };
    }
    match p.proto {
        proto::TCP | proto::UDP => {
            // The key only where it is needed: a hit the fast path found goes on without it.
            let hit = match seen {
                Some(s) => s.hit.hit(),
                None => st.ct.lookup(&p.key(), now),
            };
            if let Some(hit) = hit {
                return tracked::tracked(st, table, now, pkt, &p, hit);
            }
            if table.is_vip(p.dst) {
                // The hash from the fast path's words (what it looked the key up with): no
                // `FlowKey` to hash.
                let hash = seen.map(|s| {
                    let f = &s.flow;
                    st.ct.hash_v4(f.src, f.dst, f.ports, f.proto)
                });
                return new_flow::new_flow(st, table, now, pkt, &p, &p.key(), hash);
            }
            Verdict::ToHost
        }
        proto::ICMP if p.l3 == L3::Ipv4 => icmp::icmp(st, table, now, pkt, &p),
        proto::ICMPV6 if p.l3 == L3::Ipv6 => icmp::icmp(st, table, now, pkt, &p),
        _ if table.is_vip(p.dst) => Verdict::Drop(DropReason::NoService),
        _ => Verdict::ToHost,
    }
}

fn parse_error(table: &RoutingTable, frame: &[u8], e: ParseError) -> Verdict {
    Verdict::Drop(match e {
        ParseError::Truncated => DropReason::Truncated,
        ParseError::BadIpChecksum => DropReason::BadIpChecksum,
        ParseError::UnsupportedExtension => {
            // Only IPv6 gets here; a packet for someone else is the host's business.
            match wire::ipv6_dst(frame) {
                Some(dst) if table.owns(dst) => DropReason::UnsupportedExtension,
                _ => return Verdict::ToHost,
            }
        }
        ParseError::BadIhl
        | ParseError::BadVersion
        | ParseError::BadLength
        | ParseError::BadTcpHeader
        | ParseError::BadUdpLength => DropReason::Malformed,
    })
}

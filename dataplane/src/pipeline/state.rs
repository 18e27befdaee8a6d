//! Per-worker state: the connection table and what it stores per key, counters, and this
//! worker's slice of the fullnat source ports.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::conntrack::{self, Conntrack, Dir, FlowState, Millis, Probe, TcpState, V4Key};
use crate::flow::{proto, Addr, FlowKey};
use crate::port::MAX_BURST;
use crate::table::{Mode, RoutingTable};
use crate::wire::checksum::Delta;
use crate::wire::{nat, V4Flow};

use super::verdict::{Counters, FlowCounters};

/// What a tracked key does to the packets that match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// Rewrite addresses and ports to `new_*` (nat, fullnat and their replies).
    Rewrite,
    /// Encapsulate in IP towards `new_dst` from `new_src`.
    Ipip,
    /// Encapsulate in UDP/GUE towards `new_dst:gue_port` from `new_src`.
    Gue,
    /// Change the destination MAC only.
    Mac,
}

/// The per-key value stored in conntrack: everything needed to forward a packet of that direction
/// without looking at the routing table, plus what identifies the backend across table swaps
/// with the key it is stored under (its `vip` and `backend` methods).
///
/// `repr(C)`, per-packet fields first: what the fast path reads (kind, counters, checksum
/// deltas, ports, MACs, generation, new addresses) is all of its 80 bytes but the two ports of
/// the identity, and conntrack keeps it in the slot's first two cache lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct FlowValue {
    /// Set by [`FlowValue::seal`]: which fixed-layout path the flow's packets take, if any.
    pub(super) fast: Fast,
    pub(super) action: Action,
    // From `mode` to `generation`, and from `gue_port` to `backend_port`: the fields a flow's
    // reply value shares with its forward one, in two runs a new flow's reply copies whole
    // (a 16-byte and an 8-byte copy).
    pub(super) mode: Mode,
    pub(super) proto: u8,
    pub(super) svc_stat: u32,
    pub(super) be_stat: u32,
    /// The low 32 bits of the table generation ([`gen32`]) the value was built or last
    /// revalidated in. 32 bits are enough: a value is revalidated on its first packet after a
    /// reload, so a stale one could pass for current only after exactly a multiple of 2^32
    /// reloads without a packet of its flow in between, while conntrack expires a flow idle
    /// for longer than its state's timeout (15 minutes established by default): 2^32 reloads
    /// in that time is millions per second, and even a reload every millisecond takes 49 days,
    /// which a control plane that builds a whole table per reload cannot come near.
    pub(super) generation: u32,
    /// Checksum delta of the address rewrite (IPv4 header), computed once per flow
    /// ([`Action::Rewrite`]); for [`Fast::IpipV4`] and [`Fast::GueV4`] the outer IPv4
    /// header's per-flow part ([`outer_delta`](super::encap::outer_delta)); 0 otherwise.
    pub(super) l3_delta: Delta,
    /// Checksum delta of the address and port rewrite (TCP/UDP pseudo header and ports;
    /// [`Action::Rewrite`] only).
    pub(super) l4_delta: Delta,
    pub(super) new_sport: u16,
    pub(super) new_dport: u16,
    /// The frame's destination MAC (the next hop's) and source MAC (ours on the interface this
    /// direction leaves by: the worker transmits a frame on the interface whose MAC is its
    /// source), as the frame's first 12 bytes hold them ([`crate::wire::mac_pair`]): one 8-byte and
    /// one 4-byte copy per packet.
    pub(super) macs: [u8; 12],
    pub(super) gue_port: u16,
    /// The flow was created by a client's SYN (not picked up mid-stream), so a flow that expires
    /// still in `SynSent` is a SYN the backend never answered. (Here, in the padding before
    /// `vport`: as the only `bool` it holds `Option<FlowValue>`'s niche, which conntrack's
    /// lookup tests on every packet, so it must sit in the per-packet lines.)
    pub(super) by_syn: bool,
    /// The service's port (the original key's destination port).
    pub(super) vport: u16,
    /// The backend's configured port (0: the service's port).
    pub(super) backend_port: u16,
    pub(super) new_src: Addr,
    pub(super) new_dst: Addr,
}

// 80 bytes: no address of the flow's identity (the keys hold them, see `FlowValue::vip`), a
// 32-bit generation.
const _: () = assert!(std::mem::size_of::<FlowValue>() == 80);

/// The low 32 bits of a table generation, as [`FlowValue::generation`] keeps it.
#[inline(always)]
pub(super) fn gen32(generation: u64) -> u32 {
    generation as u32
}

/// The fixed-layout forwarding a flow's packets qualify for, decided once per flow by
/// [`FlowValue::seal`] (the key fixes the packets' family and protocol), so the per-packet path
/// tests one byte instead of the action, both families and the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fast {
    /// Neither: the general `apply`.
    No,
    /// [`Action::Rewrite`] of IPv4 TCP or UDP into IPv4.
    RewriteV4,
    /// [`Action::Ipip`] of IPv4 TCP or UDP into an outer IPv4 header.
    IpipV4,
    /// [`Action::Gue`] of IPv4 TCP or UDP into outer IPv4 and UDP headers.
    GueV4,
    /// [`Action::Mac`] (dr) of IPv4 TCP or UDP.
    MacV4,
}

impl Fast {
    /// [`Fast::IpipV4`] or [`Fast::GueV4`], as one range test of the discriminant (the fast
    /// path's tests of the kind stay compares, not a jump table).
    #[inline(always)]
    pub(super) fn encaps_v4(self) -> bool {
        const _: () = assert!(Fast::GueV4 as u8 == Fast::IpipV4 as u8 + 1);
        (self as u8).wrapping_sub(Fast::IpipV4 as u8) < 2
    }
}

impl FlowValue {
    /// Precomputes the checksum deltas of rewriting `key` (the tuple this value's packets carry)
    /// into `new_*`, so a packet of the flow costs two checksum adjustments, not four sums;
    /// only a rewrite has them (encapsulation and a MAC change leave the packet's checksums
    /// alone, and their deltas stay 0). In place: a new flow seals its values where they are
    /// built, not copies of them.
    #[inline(always)]
    pub(super) fn seal(&mut self, key: &FlowKey) {
        if self.action == Action::Rewrite {
            (self.l3_delta, self.l4_delta) = nat::deltas(key, &self.new_key());
        }
        let v4 = matches!(key.proto, proto::TCP | proto::UDP)
            && key.src.is_v4()
            && key.dst.is_v4()
            && self.new_src.is_v4()
            && self.new_dst.is_v4();
        self.fast = match self.action {
            Action::Rewrite if v4 => Fast::RewriteV4,
            Action::Ipip if v4 => Fast::IpipV4,
            Action::Gue if v4 => Fast::GueV4,
            Action::Mac if v4 => Fast::MacV4,
            _ => Fast::No,
        };
        if self.fast.encaps_v4() {
            self.l3_delta = super::encap::outer_delta(self.fast, &self.new_src, &self.new_dst);
        }
    }

    /// The flow's service VIP, for a value stored with `key` of direction `dir`: the original
    /// key (client -> VIP) holds it as its destination, the reply's value as its new source.
    #[inline]
    pub(super) fn vip(&self, dir: Dir, key: &FlowKey) -> Addr {
        match dir {
            Dir::Original => key.dst,
            Dir::Reply => self.new_src,
        }
    }

    /// The flow's backend address, for a value stored with `key` of direction `dir`: the
    /// original value's new destination, the reply key's (backend -> us) source.
    #[inline]
    pub(super) fn backend(&self, dir: Dir, key: &FlowKey) -> Addr {
        match dir {
            Dir::Original => self.new_dst,
            Dir::Reply => key.src,
        }
    }

    /// The tuple this value rewrites its packets into.
    #[inline]
    pub(super) fn new_key(&self) -> FlowKey {
        FlowKey {
            src: self.new_src,
            dst: self.new_dst,
            sport: self.new_sport,
            dport: self.new_dport,
            proto: self.proto,
        }
    }
}

/// One fast-path candidate of a burst, read ahead of its turn (32 bytes): its key as the
/// words conntrack compares, the key's table hash, its conntrack slot hint
/// ([`NO_HINT`](crate::conntrack::NO_HINT) or
/// [`NOT_IN_FIRST`](crate::conntrack::NOT_IN_FIRST) when none) and the rest of its [`V4Flow`]; the
/// frame's index in the burst is its index in the burst's array of them.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub(super) struct BurstFrame {
    pub(super) key: V4Key,
    pub(super) hash: u64,
    pub(super) hint: u32,
    /// [`V4Flow::l3_end`].
    pub(super) l3_end: u16,
    /// [`V4Flow::tcp_flags`].
    pub(super) tcp_flags: u8,
}

// The frame stays half a cache line.
const _: () = assert!(std::mem::size_of::<BurstFrame>() == 32);

impl BurstFrame {
    /// The frame's fields as the fast parse read them.
    #[inline]
    pub(super) fn flow(&self) -> V4Flow {
        let k = &self.key;
        V4Flow {
            src: k.src(),
            dst: k.dst(),
            ports: k.ports(),
            l3_end: self.l3_end,
            proto: k.proto(),
            tcp_flags: self.tcp_flags,
        }
    }
}

/// Per-worker state: conntrack, counters, fullnat port allocator.
#[derive(Debug)]
pub struct WorkerState {
    /// This worker's index.
    pub worker: u16,
    /// How many workers share the traffic.
    pub workers: u16,
    /// The connection table.
    pub ct: Conntrack<FlowValue>,
    /// The interface the frames being processed arrived on (the worker sets it per burst):
    /// answers and a new flow's replies leave by it.
    pub rx_port: u8,
    /// Counters.
    pub counters: Counters,
    snat_lo: u16,
    snat_hi: u16,
    snat_next: u16,
    pub(super) generation: Option<u64>,
    /// A burst's fast-path candidates (their fields, hashes and slot hints) from when its walk
    /// reads them ahead to their turn (see [`process_burst_with`](super::process_burst_with)):
    /// kept here so no burst
    /// initialises an array of its own.
    /// (Taken out while a burst runs, so the burst can read it while the general path borrows
    /// the rest of the state.)
    pub(super) scratch: Option<Box<[BurstFrame; MAX_BURST]>>,
    /// Keys in use above which bursts prefetch conntrack slots (see
    /// [`WorkerState::set_prefetch_from`]).
    pub(super) prefetch_from: usize,
}

/// Keys in use up to which a burst does not read frames ahead to prefetch conntrack tags and
/// slots, by default: none (a burst of an empty table is one plain walk). The plain walk costs
/// fewer instructions (callgrind, 1024 flows: fullnat 268 against 300 for the pipelined walk)
/// but measured 35-55 % slower per burst than prefetching at 1024 flows in a 2^20-slot table
/// on the development VM (the flows' slots lie all over the table, so nearly every lookup
/// misses the cache, and the plain walk waits for each miss in turn, which the prefetches
/// overlap; the table is on transparent huge pages there, so these are not TLB misses), so it
/// is only for tables a caller knows to be cache-resident ([`WorkerState::set_prefetch_from`]).
pub const PREFETCH_FROM_KEYS: usize = 0;

impl WorkerState {
    /// State for worker `worker` of `workers`, with a conntrack table sized by `ct` whose hash
    /// seed is random per process, so packets cannot be crafted to pile into one bucket.
    pub fn new(worker: u16, workers: u16, ct: conntrack::Config) -> WorkerState {
        Self::with_seed(worker, workers, ct, RandomState::new().hash_one(worker))
    }

    /// The same with a fixed conntrack hash seed, for runs that must repeat exactly
    /// (instruction counts, benchmarks).
    pub fn with_seed(worker: u16, workers: u16, ct: conntrack::Config, seed: u64) -> WorkerState {
        WorkerState {
            worker,
            workers: workers.max(1),
            ct: Conntrack::with_seed(ct, seed),
            rx_port: 0,
            counters: Counters::default(),
            snat_lo: 0,
            snat_hi: 0,
            snat_next: 0,
            generation: None,
            scratch: Some(Box::new([BurstFrame::default(); MAX_BURST])),
            prefetch_from: PREFETCH_FROM_KEYS,
        }
    }

    /// Sets how many keys the conntrack table must hold before a burst's walk reads frames
    /// ahead of the one it forwards to prefetch their bucket tags, then their slots (default
    /// [`PREFETCH_FROM_KEYS`]: always); up to that, a burst is a plain walk that looks each
    /// frame up as it comes, cheaper in instructions but slower wherever the slots it reads
    /// miss the cache or the TLB. Both give the same results.
    pub fn set_prefetch_from(&mut self, keys: usize) {
        self.prefetch_from = keys;
    }

    /// Adopts a new table: sizes the counters and this worker's slice of the fullnat ports.
    /// Runs once per table generation (it may allocate), never per packet.
    pub fn adopt(&mut self, table: &RoutingTable) {
        let c = &mut self.counters;
        if c.services.len() < table.service_stat_slots() {
            c.services
                .resize(table.service_stat_slots(), FlowCounters::default());
        }
        if c.backends.len() < table.backend_stat_slots() {
            c.backends
                .resize(table.backend_stat_slots(), FlowCounters::default());
        }
        let (lo, hi) = snat_slice(table.local.snat_ports, self.worker, self.workers);
        if (lo, hi) != (self.snat_lo, self.snat_hi) {
            self.snat_lo = lo;
            self.snat_hi = hi;
            self.snat_next = lo;
        }
        self.generation = Some(table.generation);
    }

    /// Incremental conntrack expiry (the worker's slow path): removes at most `budget` slots'
    /// worth of expired flows and counts, per backend, the nat/fullnat TCP flows that expire
    /// while still waiting for the backend's SYN+ACK (`FlowCounters::unanswered_syns`).
    /// Returns how many flows were removed.
    pub fn expire(&mut self, now: Millis, budget: usize) -> usize {
        let WorkerState { ct, counters, .. } = self;
        ct.expire_with(now, budget, |fs, val| {
            let unanswered = fs == FlowState::Tcp(TcpState::SynSent) && val.by_syn;
            if unanswered && val.mode.replies_through_us() {
                if let Some(b) = counters.backends.get_mut(val.be_stat as usize) {
                    b.unanswered_syns += 1;
                }
            }
        })
    }

    /// Next fullnat source port whose reply key (backend -> snat:port) is free, with that key's
    /// probe (the insert that follows takes it instead of searching for the key again).
    #[inline(always)]
    pub(super) fn alloc_port(&mut self, key: &mut FlowKey, now: Millis) -> Option<Probe> {
        self.next_free_port(now, |ct, port| {
            key.dport = port;
            ct.probe(key, ct.table_hash(key))
        })
        .map(|(_, p)| p)
    }

    /// [`WorkerState::alloc_port`] of the reply key `be_w:be_port -> snat_w:port` (address
    /// words as loaded from the wire) from words: the port and the key's probe.
    #[inline(always)]
    pub(super) fn alloc_port_v4(
        &mut self,
        be_w: u32,
        snat_w: u32,
        be_port: u16,
        proto: u8,
        now: Millis,
    ) -> Option<(u16, Probe)> {
        self.next_free_port(
            now,
            #[inline(always)]
            |ct, port| reply_probe_v4(ct, be_w, snat_w, be_port, port, proto),
        )
    }

    /// The first step of [`WorkerState::alloc_port_v4`]'s walk alone: the next port, with its
    /// reply key's probe, if no live flow holds that key (the port taken as the walk would
    /// take it); `None`, with nothing changed, when it is held or the slice is empty, and the
    /// whole walk (which tries this port again) decides. No loop: a new flow's port is almost
    /// always the first one tried, and the walk's loop had its invariants set up (and spilled)
    /// ahead of that one try.
    #[inline(always)]
    pub(super) fn next_port_v4(
        &mut self,
        be_w: u32,
        snat_w: u32,
        be_port: u16,
        proto: u8,
        now: Millis,
    ) -> Option<(u16, Probe)> {
        if self.snat_hi < self.snat_lo || self.snat_lo == 0 {
            return None;
        }
        let port = self.snat_next;
        let p = reply_probe_v4(&self.ct, be_w, snat_w, be_port, port, proto);
        if self.ct.probe_live(&p, now) {
            return None;
        }
        self.snat_next = if port >= self.snat_hi {
            self.snat_lo
        } else {
            port + 1
        };
        Some((port, p))
    }

    /// Walks this worker's SNAT ports from where the last flow stopped, probing each one's
    /// reply key with `probe`, and returns the first port whose key no live flow holds, with
    /// its probe. Bounded: a burst must not stall on a crowded range; the next flow tries
    /// further on.
    #[inline(always)]
    fn next_free_port(
        &mut self,
        now: Millis,
        mut probe: impl FnMut(&Conntrack<FlowValue>, u16) -> Probe,
    ) -> Option<(u16, Probe)> {
        if self.snat_hi < self.snat_lo || self.snat_lo == 0 {
            return None;
        }
        let span = u32::from(self.snat_hi - self.snat_lo) + 1;
        for _ in 0..span.min(64) {
            let port = self.snat_next;
            self.snat_next = if port >= self.snat_hi {
                self.snat_lo
            } else {
                port + 1
            };
            let p = probe(&self.ct, port);
            if !self.ct.probe_live(&p, now) {
                return Some((port, p));
            }
        }
        None
    }
}

/// The probe of the fullnat reply key `be_w:be_port -> snat_w:port` (address words as loaded
/// from the wire).
#[inline(always)]
fn reply_probe_v4(
    ct: &Conntrack<FlowValue>,
    be_w: u32,
    snat_w: u32,
    be_port: u16,
    port: u16,
    proto: u8,
) -> Probe {
    let (bp, pp) = (be_port.to_be_bytes(), port.to_be_bytes());
    let ports = u32::from_ne_bytes([bp[0], bp[1], pp[0], pp[1]]);
    let h = ct.hash_v4(be_w, snat_w, ports, proto);
    ct.probe_v4(V4Key::new(be_w, snat_w, ports, proto), h)
}

/// Worker `w` of `n` gets the `w`-th of `n` equal slices of the port range.
pub fn snat_slice(range: (u16, u16), w: u16, n: u16) -> (u16, u16) {
    let (lo, hi) = range;
    if hi < lo || n == 0 {
        return (0, 0);
    }
    let per = (u32::from(hi - lo) + 1) / u32::from(n);
    if per == 0 {
        return (0, 0);
    }
    let start = u32::from(lo) + per * u32::from(w);
    (start as u16, (start + per - 1) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Conntrack keeps a slot's header in its first 32 bytes and the value after it: the fast
    /// path's fields (up to the new addresses) must end within the slot's first two cache lines.
    #[test]
    fn per_packet_fields_fit_the_slots_first_two_lines() {
        let end = std::mem::offset_of!(FlowValue, new_dst) + std::mem::size_of::<Addr>();
        assert!(
            32 + end <= 128,
            "per-packet fields end at byte {} of the slot",
            32 + end
        );
        for hot in [
            std::mem::offset_of!(FlowValue, fast),
            std::mem::offset_of!(FlowValue, svc_stat),
            std::mem::offset_of!(FlowValue, be_stat),
            std::mem::offset_of!(FlowValue, l3_delta),
            std::mem::offset_of!(FlowValue, l4_delta),
            std::mem::offset_of!(FlowValue, macs),
            std::mem::offset_of!(FlowValue, generation),
            std::mem::offset_of!(FlowValue, by_syn),
        ] {
            assert!(hot < end);
        }
        // `by_syn` is the niche conntrack's `Option<FlowValue>` keeps its tag in.
        assert_eq!(
            std::mem::size_of::<Option<FlowValue>>(),
            std::mem::size_of::<FlowValue>()
        );
    }
}

//! One packet in, one verdict out: the whole L4 decision path the workers run.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use crate::conntrack::tcp_flags::{ACK as TCP_ACK, RST as TCP_RST, SYN as TCP_SYN};
use crate::conntrack::{self, Conntrack, Dir, FlowState, Hit, InsertError, Millis, TcpState};
use crate::flow::{hash_addr, proto, Addr, FlowKey};
use crate::packet::PacketBuf;
use crate::table::{Affinity, Backend, Mode, Pool, RoutingTable, Service};
use crate::wire::{self, checksum, Frag, Ipv4Fields, Ipv6Fields, ParseError, Parsed, L3};

/// What to do with a frame after [`process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the (rewritten) frame on the port.
    Tx,
    /// Drop it, counted under the reason.
    Drop(DropReason),
    /// Hand it to the L7 proxy.
    ToL7,
    /// Not ours: give it to the host's stack.
    ToHost,
}

/// Why a frame was dropped. Every reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than a header it announces (or an empty frame).
    Truncated,
    /// Inconsistent header fields (IHL, lengths, TCP data offset, UDP length, IP version).
    Malformed,
    /// IPv4 header checksum wrong.
    BadIpChecksum,
    /// TCP/UDP/ICMP checksum wrong on a packet that would create state or be answered.
    BadL4Checksum,
    /// An IPv6 extension header we do not walk, on a packet for us.
    UnsupportedExtension,
    /// An IP fragment for a VIP.
    Fragment,
    /// A VIP, but no service for that protocol and port.
    NoService,
    /// The service has no backend with weight above 0.
    NoBackend,
    /// A fullnat TCP packet without a SYN and without state.
    NoFlow,
    /// No room in the connection table.
    ConntrackFull,
    /// Too many flows mid-handshake: the SYN-flood guard.
    EmbryonicBudget,
    /// No free fullnat source port.
    SnatExhausted,
    /// The flow's backend was removed from its service.
    BackendGone,
    /// An ICMP error to one of our addresses that quotes no tracked flow.
    IcmpUntracked,
    /// Growing the frame (encapsulation) found no headroom or room in the buffer.
    NoRoom,
    /// A configuration we cannot forward (e.g. address family mismatch at run time).
    Unsupported,
    /// A new flow's next hop (backend or gateway) has no resolved MAC yet; it is being probed.
    NoNeighbor,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 17] = [
        DropReason::Truncated,
        DropReason::Malformed,
        DropReason::BadIpChecksum,
        DropReason::BadL4Checksum,
        DropReason::UnsupportedExtension,
        DropReason::Fragment,
        DropReason::NoService,
        DropReason::NoBackend,
        DropReason::NoFlow,
        DropReason::ConntrackFull,
        DropReason::EmbryonicBudget,
        DropReason::SnatExhausted,
        DropReason::BackendGone,
        DropReason::IcmpUntracked,
        DropReason::NoRoom,
        DropReason::Unsupported,
        DropReason::NoNeighbor,
    ];

    /// The kebab-case name used by `lb sim`, fixtures and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Malformed => "malformed",
            DropReason::BadIpChecksum => "bad-ip-checksum",
            DropReason::BadL4Checksum => "bad-l4-checksum",
            DropReason::UnsupportedExtension => "unsupported-extension",
            DropReason::Fragment => "fragment",
            DropReason::NoService => "no-service",
            DropReason::NoBackend => "no-backend",
            DropReason::NoFlow => "no-flow",
            DropReason::ConntrackFull => "conntrack-full",
            DropReason::EmbryonicBudget => "embryonic-budget",
            DropReason::SnatExhausted => "snat-exhausted",
            DropReason::BackendGone => "backend-gone",
            DropReason::IcmpUntracked => "icmp-untracked",
            DropReason::NoRoom => "no-room",
            DropReason::Unsupported => "unsupported",
            DropReason::NoNeighbor => "no-neighbor",
        }
    }
}

impl Verdict {
    /// `tx`, `to-host`, `to-l7` or `drop:<reason>`, as `lb sim` prints and fixtures expect.
    pub fn name(&self) -> String {
        match self {
            Verdict::Tx => "tx".into(),
            Verdict::ToHost => "to-host".into(),
            Verdict::ToL7 => "to-l7".into(),
            Verdict::Drop(r) => format!("drop:{}", r.name()),
        }
    }
}

/// TTL / hop limit of packets we originate (answers, outer headers).
const OUR_TTL: u8 = 64;
/// RFC 1812: an ICMPv4 error carries as much of the original as fits in 576 bytes.
const ICMP4_MAX: usize = 576;
/// RFC 4443: an ICMPv6 error must not exceed the minimum IPv6 MTU.
const ICMP6_MAX: usize = 1280;

/// Packets, bytes and new flows of one service or backend on one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (frame lengths as received).
    pub bytes: u64,
    /// Flows created.
    pub new_flows: u64,
    /// TCP resets the backend sent (backends only; fullnat and nat, whose replies we see).
    pub resets: u64,
    /// Flows whose SYN the backend never answered before the flow expired (backends only;
    /// fullnat and nat).
    pub unanswered_syns: u64,
}

/// One worker's counters. Only the worker writes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames transmitted.
    pub tx_packets: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Frames handed to the host.
    pub to_host: u64,
    /// Frames handed to the L7 proxy.
    pub to_l7: u64,
    /// Drops, indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::ALL.len()],
    /// Per service, indexed by `Service::stat`.
    pub services: Vec<FlowCounters>,
    /// Per backend, indexed by `Backend::stat`.
    pub backends: Vec<FlowCounters>,
}

impl Counters {
    /// Drops for one reason.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
}

/// What a tracked key does to the packets that match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
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
/// without looking at the routing table, plus what identifies the backend across table swaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    action: Action,
    mode: Mode,
    new_src: Addr,
    new_dst: Addr,
    new_sport: u16,
    new_dport: u16,
    mac: [u8; 6],
    gue_port: u16,
    vip: Addr,
    vport: u16,
    proto: u8,
    backend: Addr,
    backend_port: u16,
    generation: u64,
    svc_stat: u32,
    be_stat: u32,
    /// The flow was created by a client's SYN (not picked up mid-stream), so a flow that expires
    /// still in `SynSent` is a SYN the backend never answered.
    by_syn: bool,
    /// Checksum delta of the address rewrite (IPv4 header), computed once per flow.
    l3_delta: u64,
    /// Checksum delta of the address and port rewrite (TCP/UDP pseudo header and ports).
    l4_delta: u64,
}

impl FlowValue {
    /// Precomputes the checksum deltas of rewriting `key` (the tuple this value's packets carry)
    /// into `new_*`, so a packet of the flow costs two checksum adjustments, not four sums.
    fn seal(mut self, key: &FlowKey) -> FlowValue {
        let ports = |a: u16, b: u16| (u32::from(a) << 16) | u32::from(b);
        self.l3_delta = sub32(key.src.wire_bytes())
            + sub32(key.dst.wire_bytes())
            + sum32(self.new_src.wire_bytes())
            + sum32(self.new_dst.wire_bytes());
        self.l4_delta = self.l3_delta
            + u64::from(!ports(key.sport, key.dport))
            + u64::from(ports(self.new_sport, self.new_dport));
        self
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
    /// Counters.
    pub counters: Counters,
    snat_lo: u16,
    snat_hi: u16,
    snat_next: u16,
    generation: Option<u64>,
}

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
            counters: Counters::default(),
            snat_lo: 0,
            snat_hi: 0,
            snat_next: 0,
            generation: None,
        }
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

    /// Next fullnat source port whose reply key (backend -> snat:port) is free.
    fn alloc_port(&mut self, key: &mut FlowKey, now: Millis) -> Option<u16> {
        if self.snat_hi < self.snat_lo || self.snat_lo == 0 {
            return None;
        }
        let span = u32::from(self.snat_hi - self.snat_lo) + 1;
        // Bounded: a burst must not stall on a crowded range; the next flow tries further on.
        for _ in 0..span.min(64) {
            let port = self.snat_next;
            self.snat_next = if port >= self.snat_hi {
                self.snat_lo
            } else {
                port + 1
            };
            key.dport = port;
            if self.ct.lookup(key, now).is_none() {
                return Some(port);
            }
        }
        None
    }
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

/// Runs one frame through the pipeline: parse, classify, track, rewrite in place.
pub fn process(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
) -> Verdict {
    let parsed = wire::parse(pkt.data());
    process_parsed(state, table, now, pkt, parsed)
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
    if state.generation != Some(table.generation) {
        state.adopt(table);
    }
    state.counters.rx_packets += 1;
    state.counters.rx_bytes += pkt.len() as u64;
    let v = match parsed {
        Ok(p) => classify(state, table, now, pkt, p),
        Err(e) => parse_error(table, pkt.data(), e),
    };
    let c = &mut state.counters;
    match v {
        Verdict::Tx => {
            c.tx_packets += 1;
            c.tx_bytes += pkt.len() as u64;
        }
        Verdict::Drop(r) => c.drops[r as usize] += 1,
        Verdict::ToHost => c.to_host += 1,
        Verdict::ToL7 => c.to_l7 += 1,
    }
    v
}

fn classify(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    p: Parsed,
) -> Verdict {
    match p.l3 {
        L3::Arp => return arp(table, pkt, &p),
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
            let key = FlowKey::of(&p);
            if let Some(hit) = st.ct.lookup(&key, now) {
                return tracked(st, table, now, pkt, &p, hit);
            }
            if table.is_vip(p.dst) {
                return new_flow(st, table, now, pkt, &p, &key);
            }
            Verdict::ToHost
        }
        proto::ICMP if p.l3 == L3::Ipv4 => icmp(st, table, now, pkt, &p),
        proto::ICMPV6 if p.l3 == L3::Ipv6 => icmp(st, table, now, pkt, &p),
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
            let off = if wire::be16(frame, 12) == wire::ETHERTYPE_VLAN {
                18
            } else {
                14
            };
            match frame.get(off + 24..off + 40).and_then(Addr::from_wire) {
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

/// A packet of a tracked flow: the stored rewrite wins over the current table, as long as the
/// flow's backend is still in its service.
fn tracked(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    hit: Hit,
) -> Verdict {
    if st.ct.value(hit.slot).generation != table.generation {
        let mut val = *st.ct.value(hit.slot);
        match revalidate(table, &mut val, hit.dir) {
            Some(()) => *st.ct.value_mut(hit.slot) = val,
            None => {
                st.ct.remove(hit.flow);
                return Verdict::Drop(DropReason::BackendGone);
            }
        }
    }
    st.ct.observe(hit.flow, hit.dir, p.tcp_flags, now);
    let val = st.ct.value(hit.slot);
    count(&mut st.counters, val, pkt.len() as u64, false);
    // Only nat and fullnat flows have a reply key, so this is the backend resetting the flow:
    // a passive health signal, one flag test per reply packet.
    if hit.dir == Dir::Reply && p.tcp_flags & TCP_RST != 0 && p.proto == proto::TCP {
        if let Some(b) = st.counters.backends.get_mut(val.be_stat as usize) {
            b.resets += 1;
        }
    }
    apply(table, pkt, p, val, p.sport)
}

/// Re-finds a flow's service and backend in a new table; `None` when the backend is gone.
fn revalidate(table: &RoutingTable, val: &mut FlowValue, dir: Dir) -> Option<()> {
    let (_, svc) = table.service_for(val.vip, val.proto, val.vport)?;
    let bi = svc.backend_index(val.backend, val.backend_port)?;
    let be = svc.backends.get(bi as usize)?;
    if dir == Dir::Original {
        // A next hop that is being re-resolved keeps the MAC the flow already uses.
        if let Ok(mac) = backend_mac(table, svc, usize::from(bi), be) {
            val.mac = mac;
        }
    }
    val.svc_stat = svc.stat;
    val.be_stat = be.stat;
    val.generation = table.generation;
    Some(())
}

fn count(c: &mut Counters, val: &FlowValue, len: u64, new: bool) {
    if let Some(s) = c.services.get_mut(val.svc_stat as usize) {
        s.packets += 1;
        s.bytes += len;
        s.new_flows += u64::from(new);
    }
    if let Some(b) = c.backends.get_mut(val.be_stat as usize) {
        b.packets += 1;
        b.bytes += len;
        b.new_flows += u64::from(new);
    }
}

fn new_flow(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    key: &FlowKey,
) -> Verdict {
    let Some((_, svc)) = table.service_for(p.dst, p.proto, p.dport) else {
        return Verdict::Drop(DropReason::NoService);
    };
    let tcp = p.proto == proto::TCP;
    let syn = tcp && p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
    if tcp && !syn && p.tcp_flags & (TCP_RST | TCP_SYN) != 0 {
        // A stray RST or SYN+ACK must not create state.
        return Verdict::Drop(DropReason::NoFlow);
    }
    if !wire::verify_l4_checksum(pkt.data(), p) {
        return Verdict::Drop(DropReason::BadL4Checksum);
    }
    let Some((be, pool, bi)) = select(table, svc, key) else {
        return Verdict::Drop(DropReason::NoBackend);
    };
    if tcp && !syn && pool.mode == Mode::FullNat {
        return Verdict::Drop(DropReason::NoFlow);
    }
    let mac = match backend_mac(table, svc, bi, be) {
        Ok(m) => m,
        Err(r) => return Verdict::Drop(r),
    };
    let client_mac = src_mac(pkt.data());
    let Some(mut fwd) = forward_value(table, svc, be, mac, pool, key) else {
        return Verdict::Drop(DropReason::Unsupported);
    };
    fwd.by_syn = syn;
    let mut reply = None;
    match pool.mode {
        Mode::FullNat => {
            let want_v4 = be.addr.is_v4();
            let Some(snat) = pool.snat.iter().find(|a| a.is_v4() == want_v4) else {
                return Verdict::Drop(DropReason::Unsupported);
            };
            let mut rkey = FlowKey {
                src: be.addr,
                dst: *snat,
                sport: fwd.new_dport,
                dport: 0,
                proto: p.proto,
            };
            let Some(port) = st.alloc_port(&mut rkey, now) else {
                return Verdict::Drop(DropReason::SnatExhausted);
            };
            fwd.new_src = *snat;
            fwd.new_sport = port;
            reply = Some(rkey);
        }
        Mode::Nat => {
            reply = Some(FlowKey {
                src: be.addr,
                dst: p.src,
                sport: fwd.new_dport,
                dport: p.sport,
                proto: p.proto,
            });
        }
        Mode::DsrIpip | Mode::DsrGue | Mode::Dr => {}
    }
    let rev = reply.map(|rk| {
        let v = FlowValue {
            action: Action::Rewrite,
            new_src: p.dst,
            new_dst: p.src,
            new_sport: p.dport,
            new_dport: p.sport,
            mac: client_mac,
            ..fwd
        };
        (rk, v)
    });
    let fwd = fwd.seal(key);
    let rev = rev.map(|(rk, v)| (rk, v.seal(&rk)));
    let initial = if tcp {
        FlowState::Tcp(TcpState::SynSent)
    } else {
        FlowState::Udp { replied: false }
    };
    if let Err(e) = st
        .ct
        .insert(now, (key, fwd), rev.as_ref().map(|(k, v)| (k, *v)), initial)
    {
        return Verdict::Drop(match e {
            InsertError::Full | InsertError::Exists => DropReason::ConntrackFull,
            InsertError::EmbryonicBudget => DropReason::EmbryonicBudget,
        });
    }
    let len = pkt.len() as u64;
    count(&mut st.counters, &fwd, len, true);
    apply(table, pkt, p, &fwd, p.sport)
}

/// Maglev's backend (and its pool) for a new flow `key` (client -> VIP); `None` when every
/// backend has weight 0.
fn select<'t>(
    table: &RoutingTable,
    svc: &'t Service,
    key: &FlowKey,
) -> Option<(&'t Backend, &'t Pool, usize)> {
    let hash = match svc.affinity {
        Affinity::None => key.hash(table.hash_seed),
        Affinity::ClientIp => hash_addr(&key.src, table.hash_seed),
    };
    let bi = usize::from(svc.maglev.lookup(hash)?);
    let be = svc.backends.get(bi)?;
    Some((be, svc.pools.get(usize::from(be.pool))?, bi))
}

/// The MAC towards backend `bi` of `svc`: its static `mac`, or its next hop's entry in the
/// neighbor cache (one atomic load). An unresolved next hop is marked wanted, so the resolver
/// probes it now, and the flow is refused with `no-neighbor` (the client's SYN retry finds it
/// resolved).
#[inline]
fn backend_mac(
    table: &RoutingTable,
    svc: &Service,
    bi: usize,
    be: &Backend,
) -> Result<[u8; 6], DropReason> {
    let Some(h) = svc.next_hop(bi) else {
        return Ok(be.mac);
    };
    let (Some(cache), Some(nh)) = (table.neighbors(), table.next_hops().get(h as usize)) else {
        return Err(DropReason::NoNeighbor);
    };
    cache.mac(nh.hop).ok_or_else(|| {
        cache.want(nh.hop);
        DropReason::NoNeighbor
    })
}

/// The client -> backend half of a new flow `key` (client -> VIP) on backend `be`, whose next
/// hop has `mac`. Fullnat's source address and port are filled in by the caller, which
/// allocates them.
fn forward_value(
    table: &RoutingTable,
    svc: &Service,
    be: &Backend,
    mac: [u8; 6],
    pool: &Pool,
    key: &FlowKey,
) -> Option<FlowValue> {
    let mut v = FlowValue {
        action: Action::Rewrite,
        mode: pool.mode,
        new_src: key.src,
        new_dst: be.addr,
        new_sport: key.sport,
        new_dport: if be.port == 0 { key.dport } else { be.port },
        mac,
        gue_port: pool.gue_port,
        vip: key.dst,
        vport: key.dport,
        proto: key.proto,
        backend: be.addr,
        backend_port: be.port,
        generation: table.generation,
        svc_stat: svc.stat,
        be_stat: be.stat,
        by_syn: false,
        l3_delta: 0,
        l4_delta: 0,
    };
    match pool.mode {
        Mode::DsrIpip | Mode::DsrGue => {
            v.action = if pool.mode == Mode::DsrIpip {
                Action::Ipip
            } else {
                Action::Gue
            };
            v.new_src = if be.addr.is_v4() {
                pool.encap_src_v4?
            } else {
                pool.encap_src_v6?
            };
            v.new_dport = key.dport;
        }
        Mode::Dr => {
            v.action = Action::Mac;
            v.new_dport = key.dport;
        }
        Mode::FullNat | Mode::Nat => {}
    }
    Some(v)
}

/// Forwards a packet according to a flow value. `entropy` is the GUE source port.
fn apply(
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

fn src_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(6..12) {
        m.copy_from_slice(s);
    }
    m
}

fn set_macs(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    if let Some(h) = frame.get_mut(..12) {
        h[..6].copy_from_slice(&dst);
        h[6..].copy_from_slice(&src);
    }
}

/// Offset of the TCP/UDP checksum field inside the transport header, if it has one we maintain.
fn l4_csum_off(proto: u8) -> Option<usize> {
    match proto {
        proto::TCP => Some(16),
        proto::UDP => Some(6),
        _ => None,
    }
}

/// Ones' complement sum of the big-endian 32-bit words of `b` (4-byte multiple), unfolded.
#[inline]
fn sum32(b: &[u8]) -> u64 {
    b.chunks_exact(4)
        .map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum()
}

/// Same as [`sum32`] over the complemented words: subtracting `b` in ones' complement.
#[inline]
fn sub32(b: &[u8]) -> u64 {
    b.chunks_exact(4)
        .map(|w| u64::from(!u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum()
}

/// Applies an unfolded ones' complement delta to a checksum (RFC 1624 eqn. 3, 32 bits at a time).
#[inline]
fn adjust(csum: u16, delta: u64) -> u16 {
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
fn rewrite_at(
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
fn rewrite_sealed(frame: &mut [u8], p: &Parsed, val: &FlowValue) {
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
fn tos(frame: &[u8], p: &Parsed) -> u8 {
    let b0 = frame.get(p.l3_off).copied().unwrap_or(0);
    let b1 = frame.get(p.l3_off + 1).copied().unwrap_or(0);
    if p.l3 == L3::Ipv4 {
        b1
    } else {
        (b0 << 4) | (b1 >> 4)
    }
}

/// Puts the frame's IP packet, unchanged, inside an outer IP (and UDP for GUE) header.
fn encap(
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
    let inner_tos = tos(pkt.data(), p);
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
    if wire::write_eth(d, val.mac, table.local.mac, p.vlan, outer_type).is_none() {
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
            let seg = &mut udp[..inner_len + 8];
            let mut c = checksum::l4(&val.new_src, &val.new_dst, proto::UDP, seg);
            if c == 0 {
                c = 0xffff;
            }
            wire::put_be16(seg, 6, c);
        }
    }
    Verdict::Tx
}

/// Answers the client with ICMP fragmentation needed / packet too big quoting its packet.
fn too_big(table: &RoutingTable, pkt: &mut PacketBuf<'_>, p: &Parsed, mtu: u32) -> Verdict {
    let v4 = p.l3 == L3::Ipv4;
    let (ip_len, max) = if v4 { (20, ICMP4_MAX) } else { (40, ICMP6_MAX) };
    let inner_len = p.l3_end - p.l3_off;
    let quote = inner_len.min(max - ip_len - 8);
    let client_mac = src_mac(pkt.data());
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
    if wire::write_eth(frame, client_mac, table.local.mac, p.vlan, ethertype).is_none() {
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
    if v4 {
        icmp[..8].copy_from_slice(&[3, 4, 0, 0, 0, 0, (mtu >> 8) as u8, mtu as u8]);
        let c = checksum::icmpv4(icmp);
        wire::put_be16(icmp, 2, c);
    } else {
        let m = mtu.to_be_bytes();
        icmp[..8].copy_from_slice(&[2, 0, 0, 0, m[0], m[1], m[2], m[3]]);
        let c = checksum::l4(&vip, &client, proto::ICMPV6, icmp);
        wire::put_be16(icmp, 2, c);
    }
    if pkt.set_bounds(head, l2 + ip_len + icmp_len) {
        Verdict::Tx
    } else {
        Verdict::Drop(DropReason::NoRoom)
    }
}

fn arp(table: &RoutingTable, pkt: &mut PacketBuf<'_>, p: &Parsed) -> Verdict {
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
fn learn(table: &RoutingTable, addr: Addr, mac: [u8; 6]) {
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
fn learn_nd(table: &RoutingTable, d: &[u8], p: &Parsed) {
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

fn icmp(
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
                let key = FlowKey {
                    src: q.dst,
                    dst: q.src,
                    sport: q.dport,
                    dport: q.sport,
                    proto: q.proto,
                };
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
    if v6 && matches!(p.icmp_type, 135 | 136) && table.neighbors().is_some() {
        learn_nd(table, pkt.data(), p);
    }
    if v6 && p.icmp_type == 135 {
        return neighbor_solicitation(table, pkt, p);
    }
    if !table.owns(p.dst) {
        return Verdict::ToHost;
    }
    let echo_request = if v6 { 128 } else { 8 };
    if p.icmp_type != echo_request || p.icmp_code != 0 {
        return Verdict::ToHost;
    }
    if !wire::verify_l4_checksum(pkt.data(), p) {
        return Verdict::Drop(DropReason::BadL4Checksum);
    }
    echo_reply(table, pkt, p)
}

fn echo_reply(table: &RoutingTable, pkt: &mut PacketBuf<'_>, p: &Parsed) -> Verdict {
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
fn neighbor_solicitation(table: &RoutingTable, pkt: &mut PacketBuf<'_>, p: &Parsed) -> Verdict {
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

/// An ICMP error to a VIP about a flow this worker does not track (it started on another balancer
/// behind the same ECMP route, or before a restart): where Maglev puts that flow on a dsr or dr
/// backend, the error can go there unchanged, as Katran does. nat/fullnat need the flow's state.
fn icmp_error_stateless(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    key: &FlowKey,
) -> Verdict {
    let Some((_, svc)) = table.service_for(key.dst, key.proto, key.dport) else {
        return Verdict::Drop(DropReason::IcmpUntracked);
    };
    let Some((be, pool, bi)) = select(table, svc, key) else {
        return Verdict::Drop(DropReason::NoBackend);
    };
    let mac = match backend_mac(table, svc, bi, be) {
        Ok(m) => m,
        Err(r) => return Verdict::Drop(r),
    };
    let Some(val) = forward_value(table, svc, be, mac, pool, key) else {
        return Verdict::Drop(DropReason::Unsupported);
    };
    match val.action {
        Action::Ipip | Action::Gue | Action::Mac => apply(table, pkt, p, &val, key.sport),
        Action::Rewrite => Verdict::Drop(DropReason::IcmpUntracked),
    }
}

/// An ICMP error about a tracked flow goes to the flow's other end, rewritten so it makes sense
/// there: the outer header is re-addressed and the quoted header is put back into that end's view.
fn icmp_error_tracked(
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
    rewrite_at(
        d,
        q.l3_off,
        q.l4_off,
        q.end,
        !q.v6,
        q.proto,
        val.new_dst,
        val.new_src,
        val.new_dport,
        val.new_sport,
    );
    if !q.v6 && q.l4_off <= q.end {
        wire::put_be16(d, q.l3_off + 10, 0);
        let c = checksum::ipv4_header(&d[q.l3_off..q.l4_off]);
        wire::put_be16(d, q.l3_off + 10, c);
    }
    // Outer header.
    let l3 = p.l3_off;
    if v4 {
        d[l3 + 12..l3 + 16].copy_from_slice(&outer_src.v4_octets());
        d[l3 + 16..l3 + 20].copy_from_slice(&val.new_dst.v4_octets());
        wire::put_be16(d, l3 + 10, 0);
        let c = checksum::ipv4_header(&d[l3..p.l4_off]);
        wire::put_be16(d, l3 + 10, c);
    } else {
        d[l3 + 8..l3 + 24].copy_from_slice(&outer_src.0);
        d[l3 + 24..l3 + 40].copy_from_slice(&val.new_dst.0);
    }
    let icmp = &mut d[p.l4_off..p.l3_end];
    wire::put_be16(icmp, 2, 0);
    let c = if v4 {
        checksum::icmpv4(icmp)
    } else {
        checksum::l4(&outer_src, &val.new_dst, proto::ICMPV6, icmp)
    };
    wire::put_be16(icmp, 2, c);
    set_macs(d, val.mac, table.local.mac);
    Verdict::Tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::Timeouts;
    use crate::neighbor::NeighborCache;
    use crate::sample;
    use crate::table::{NeighborSpec, Prefix};
    use proptest::prelude::*;

    const HEAD: usize = 128;

    fn state(capacity: usize, embryonic: usize) -> WorkerState {
        WorkerState::new(
            0,
            1,
            conntrack::Config {
                capacity,
                embryonic_budget: embryonic,
                timeouts: Timeouts::default(),
            },
        )
    }

    /// Runs a frame; returns the verdict and the transmitted bytes.
    fn run(st: &mut WorkerState, t: &RoutingTable, now: Millis, f: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; HEAD + f.len() + 1600];
        buf[HEAD..HEAD + f.len()].copy_from_slice(f);
        let mut p = PacketBuf::new(&mut buf, HEAD, f.len());
        let v = process(st, t, now, &mut p);
        (v, p.data().to_vec())
    }

    fn tcp(src: Addr, dst: Addr, sport: u16, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 128];
        let n = sample::tcp4(&mut f, src, dst, sport, 80, flags, 10);
        f.truncate(n);
        f
    }

    fn client(i: u32) -> Addr {
        Addr::v4([198, 19, (i >> 8) as u8, i as u8])
    }

    fn table(generation: u64, backends: &[(u8, u32)]) -> RoutingTable {
        sample::table_of(generation, backends)
    }

    /// Where a transmitted frame went: the rewritten IPv4 destination (fullnat) or outer
    /// destination (ipip), both at bytes 30..34.
    fn dest(out: &[u8]) -> [u8; 4] {
        [out[30], out[31], out[32], out[33]]
    }

    #[test]
    fn fullnat_round_trip_and_counters() {
        let t = sample::table(1, 4);
        let mut st = state(1024, 256);
        let c = client(1);
        let (v, out) = run(&mut st, &t, 0, &tcp(c, sample::VIP_FULLNAT, 5000, TCP_SYN));
        assert_eq!(v, Verdict::Tx);
        let p = wire::parse(&out).unwrap();
        assert_eq!(p.src, sample::SNAT);
        assert_eq!(p.sport, 1024, "first port of the worker's slice");
        assert!(wire::verify_l4_checksum(&out, &p));
        // The backend answers SYN+ACK to the SNAT address and port.
        let mut reply = vec![0u8; 128];
        let n = sample::tcp4(&mut reply, p.dst, p.src, p.dport, 1024, 0x12, 0);
        reply.truncate(n);
        let (v, back) = run(&mut st, &t, 1, &reply);
        assert_eq!(v, Verdict::Tx);
        let q = wire::parse(&back).unwrap();
        assert_eq!(
            (q.src, q.sport, q.dst, q.dport),
            (sample::VIP_FULLNAT, 80, c, 5000)
        );
        assert!(wire::verify_l4_checksum(&back, &q));
        assert_eq!(
            &back[..6],
            &sample::CLIENT_MAC,
            "back to the MAC the client came from"
        );
        let svc = t.services[0].stat as usize;
        assert_eq!(st.counters.services[svc].new_flows, 1);
        assert_eq!(st.counters.services[svc].packets, 2);
        assert_eq!(st.counters.tx_packets, 2);
    }

    /// The per-backend counters of the backend a forwarded frame went to (fullnat/nat: the
    /// rewritten destination).
    fn backend_counters(st: &WorkerState, t: &RoutingTable, vip: Addr, out: &[u8]) -> FlowCounters {
        let p = wire::parse(out).unwrap();
        let (_, svc) = t.service_for(vip, proto::TCP, 80).unwrap();
        let bi = svc
            .backend_index(p.dst, 8080)
            .expect("a backend of the service");
        st.counters.backends[svc.backends[bi as usize].stat as usize]
    }

    #[test]
    fn backend_resets_are_counted_per_backend_client_resets_are_not() {
        let t = sample::table(1, 4);
        let mut st = state(1024, 256);
        for vip in [sample::VIP_FULLNAT, sample::VIP_NAT] {
            let c = client(7);
            let (v, out) = run(&mut st, &t, 0, &tcp(c, vip, 5000, TCP_SYN));
            assert_eq!(v, Verdict::Tx);
            let p = wire::parse(&out).unwrap();
            // The client resets: not the backend's fault.
            let (v, _) = run(&mut st, &t, 1, &tcp(c, vip, 5000, TCP_RST | TCP_ACK));
            assert_eq!(v, Verdict::Tx);
            assert_eq!(backend_counters(&st, &t, vip, &out).resets, 0, "{vip}");
            // The backend resets (to the SNAT address and port, or to the client for nat).
            let mut rst = vec![0u8; 128];
            let n = sample::tcp4(&mut rst, p.dst, p.src, p.dport, p.sport, TCP_RST, 0);
            rst.truncate(n);
            let (v, _) = run(&mut st, &t, 2, &rst);
            assert_eq!(v, Verdict::Tx);
            let b = backend_counters(&st, &t, vip, &out);
            assert_eq!((b.resets, b.unanswered_syns), (1, 0), "{vip}");
        }
        let others: u64 = st.counters.backends.iter().map(|b| b.resets).sum();
        assert_eq!(others, 2, "no other backend was charged");
    }

    #[test]
    fn syns_the_backend_never_answered_are_counted_when_the_flow_expires() {
        let t = sample::table(1, 4);
        let mut st = state(1024, 256);
        let syn_timeout = Timeouts::default().tcp_syn;
        // Fullnat and nat flows whose SYN is never answered.
        let (_, fullnat) = run(
            &mut st,
            &t,
            0,
            &tcp(client(1), sample::VIP_FULLNAT, 5000, TCP_SYN),
        );
        let (_, nat) = run(
            &mut st,
            &t,
            0,
            &tcp(client(2), sample::VIP_NAT, 5000, TCP_SYN),
        );
        // A fullnat flow whose backend answers.
        let (_, ok) = run(
            &mut st,
            &t,
            0,
            &tcp(client(3), sample::VIP_FULLNAT, 5001, TCP_SYN),
        );
        let p = wire::parse(&ok).unwrap();
        let mut sa = vec![0u8; 128];
        let n = sample::tcp4(
            &mut sa,
            p.dst,
            p.src,
            p.dport,
            p.sport,
            TCP_SYN | TCP_ACK,
            0,
        );
        sa.truncate(n);
        assert_eq!(run(&mut st, &t, 1, &sa).0, Verdict::Tx);
        // A nat flow picked up mid-stream (no SYN seen) and a dsr flow: no verdict on the backend.
        assert_eq!(
            run(
                &mut st,
                &t,
                0,
                &tcp(client(4), sample::VIP_NAT, 5002, TCP_ACK)
            )
            .0,
            Verdict::Tx
        );
        assert_eq!(
            run(
                &mut st,
                &t,
                0,
                &tcp(client(5), sample::VIP_IPIP, 5003, TCP_SYN)
            )
            .0,
            Verdict::Tx
        );
        // Nothing is counted before the flows expire.
        assert_eq!(st.expire(syn_timeout - 1, 4096), 0);
        let total = |st: &WorkerState| -> u64 {
            st.counters.backends.iter().map(|b| b.unanswered_syns).sum()
        };
        assert_eq!(total(&st), 0);
        assert_eq!(st.expire(syn_timeout + 10, 4096), 5);
        assert_eq!(
            backend_counters(&st, &t, sample::VIP_FULLNAT, &fullnat).unanswered_syns,
            1
        );
        assert_eq!(
            backend_counters(&st, &t, sample::VIP_NAT, &nat).unanswered_syns,
            1
        );
        assert_eq!(
            total(&st),
            2,
            "answered, picked-up and dsr flows are not counted"
        );
    }

    /// The sample table with every backend on the link, resolved through a fresh cache.
    fn neighbor_table(generation: u64) -> (RoutingTable, std::sync::Arc<NeighborCache>) {
        let cache = std::sync::Arc::new(NeighborCache::new(64));
        let mut t = sample::table(generation, 2);
        t.set_neighbors(NeighborSpec {
            cache: cache.clone(),
            on_link: vec![
                Prefix {
                    addr: Addr::v4([198, 18, 0, 0]),
                    len: 16,
                },
                Prefix {
                    addr: Addr::v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                    len: 32,
                },
            ],
            gateway_v4: None,
            gateway_v6: None,
            statics: vec![],
        })
        .unwrap();
        (t, cache)
    }

    fn arp_frame(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 42];
        wire::write_eth(&mut f, [0xff; 6], sha, None, wire::ETHERTYPE_ARP).unwrap();
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, op as u8]);
        f[22..28].copy_from_slice(&sha);
        f[28..32].copy_from_slice(&spa);
        f[38..42].copy_from_slice(&tpa);
        f
    }

    /// An ICMPv6 NS (135) or NA (136) from `src` with `mac` in its link-layer option.
    fn nd_frame(kind: u8, src: Addr, dst: Addr, target: Addr, mac: [u8; 6], hops: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 32];
        wire::write_eth(&mut f, sample::LB_MAC, mac, None, wire::ETHERTYPE_IPV6).unwrap();
        wire::write_ipv6(
            &mut f[14..],
            &Ipv6Fields {
                src: src.0,
                dst: dst.0,
                next_header: proto::ICMPV6,
                payload_len: 32,
                hop_limit: hops,
                traffic_class: 0,
                flow_label: 0,
            },
        )
        .unwrap();
        let m = &mut f[54..];
        m[0] = kind;
        m[4] = if kind == 136 { 0x60 } else { 0 };
        m[8..24].copy_from_slice(&target.0);
        m[24..26].copy_from_slice(&[if kind == 136 { 2 } else { 1 }, 1]);
        m[26..32].copy_from_slice(&mac);
        let c = checksum::l4(&src, &dst, proto::ICMPV6, m);
        wire::put_be16(m, 2, c);
        f
    }

    fn mac_of(cache: &NeighborCache, t: &RoutingTable, a: Addr) -> Option<[u8; 6]> {
        cache.mac(t.next_hop_by_addr(a)?.hop)
    }

    #[test]
    fn a_new_flow_waits_for_its_next_hop_then_goes_to_the_learned_mac() {
        let (t, cache) = neighbor_table(1);
        let mut st = state(1024, 256);
        let syn = tcp(client(1), sample::VIP_FULLNAT, 5000, TCP_SYN);
        assert_eq!(
            run(&mut st, &t, 0, &syn).0,
            Verdict::Drop(DropReason::NoNeighbor)
        );
        assert_eq!(st.counters.dropped(DropReason::NoNeighbor), 1);
        assert_eq!(st.ct.len(), 0, "no state for a flow that was not forwarded");
        let wanted: Vec<Addr> = cache
            .entries()
            .into_iter()
            .filter(|(_, e)| e.wanted)
            .map(|(a, _)| a)
            .collect();
        assert_eq!(wanted.len(), 1, "the chosen backend is marked for probing");
        // The backends answer the resolver's ARP requests.
        let macs = [[2, 0, 0, 0, 0xb, 10], [2, 0, 0, 0, 0xb, 11]];
        for (h, mac) in [10u8, 11].into_iter().zip(macs) {
            let reply = arp_frame(wire::ARP_REPLY, mac, [198, 18, 1, h], [198, 18, 0, 1]);
            assert_eq!(run(&mut st, &t, 1, &reply).0, Verdict::ToHost);
        }
        let (v, out) = run(&mut st, &t, 2, &syn);
        assert_eq!(v, Verdict::Tx);
        let p = wire::parse(&out).unwrap();
        assert_eq!(p.dst, wanted[0]);
        assert_eq!(
            Some(out[..6].try_into().unwrap()),
            mac_of(&cache, &t, p.dst)
        );
        // An established flow keeps its MAC across a reload, even while its neighbor is being
        // re-resolved (the new table's binding of another cache starts unresolved).
        let (t2, _) = neighbor_table(2);
        let (v, again) = run(
            &mut st,
            &t2,
            3,
            &tcp(client(1), sample::VIP_FULLNAT, 5000, TCP_ACK),
        );
        assert_eq!(v, Verdict::Tx);
        assert_eq!(&again[..6], &out[..6]);
    }

    #[test]
    fn neighbors_are_learned_only_from_known_next_hops() {
        let (t, cache) = neighbor_table(1);
        let mut st = state(1024, 256);
        let be10 = Addr::v4([198, 18, 1, 10]);
        let be11 = Addr::v4([198, 18, 1, 11]);
        let m = [2, 0, 0, 0, 0xb, 10];
        // A stranger's announcement creates nothing.
        let stranger = arp_frame(wire::ARP_REPLY, m, [198, 18, 1, 99], [198, 18, 0, 1]);
        assert_eq!(run(&mut st, &t, 0, &stranger).0, Verdict::ToHost);
        assert!(t.next_hop_by_addr(Addr::v4([198, 18, 1, 99])).is_none());
        assert!(cache.entries().iter().all(|(_, e)| e.mac.is_none()));
        assert_eq!(cache.learned(), 0);
        // A frame claiming a backend's address with our own MAC is ignored.
        let ours = arp_frame(
            wire::ARP_REPLY,
            sample::LB_MAC,
            [198, 18, 1, 10],
            [198, 18, 0, 1],
        );
        run(&mut st, &t, 0, &ours);
        assert_eq!(mac_of(&cache, &t, be10), None);
        // Gratuitous ARP from a backend: learned (and still the host's business).
        let garp = arp_frame(wire::ARP_REQUEST, m, [198, 18, 1, 10], [198, 18, 1, 10]);
        assert_eq!(run(&mut st, &t, 0, &garp).0, Verdict::ToHost);
        assert_eq!(mac_of(&cache, &t, be10), Some(m));
        // A backend asking for our address: learned and answered.
        let m11 = [2, 0, 0, 0, 0xb, 11];
        let ask = arp_frame(wire::ARP_REQUEST, m11, [198, 18, 1, 11], [198, 18, 0, 1]);
        assert_eq!(run(&mut st, &t, 0, &ask).0, Verdict::Tx);
        assert_eq!(mac_of(&cache, &t, be11), Some(m11));

        // IPv6: neighbor advertisements must have hop limit 255 and a valid checksum.
        let ours6 = Addr::v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let b6 = Addr::v6([0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]);
        let m6 = [2, 0, 0, 0, 0x6b, 10];
        run(&mut st, &t, 0, &nd_frame(136, b6, ours6, b6, m6, 64));
        assert_eq!(
            mac_of(&cache, &t, b6),
            None,
            "hop limit 64: not from the link"
        );
        let mut bad = nd_frame(136, b6, ours6, b6, m6, 255);
        bad[60] ^= 1;
        run(&mut st, &t, 0, &bad);
        assert_eq!(mac_of(&cache, &t, b6), None, "bad checksum");
        let stranger6 = Addr::v6([0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 99]);
        run(
            &mut st,
            &t,
            0,
            &nd_frame(136, stranger6, ours6, stranger6, m6, 255),
        );
        assert_eq!(cache.learned(), 2);
        run(&mut st, &t, 0, &nd_frame(136, b6, ours6, b6, m6, 255));
        assert_eq!(mac_of(&cache, &t, b6), Some(m6));
        // A solicitation for our address from a backend teaches its source link-layer address.
        let b6b = Addr::v6([0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 11]);
        let m6b = [2, 0, 0, 0, 0x6b, 11];
        let (v, _) = run(&mut st, &t, 0, &nd_frame(135, b6b, ours6, ours6, m6b, 255));
        assert_eq!(v, Verdict::Tx, "still answered");
        assert_eq!(mac_of(&cache, &t, b6b), Some(m6b));
    }

    #[test]
    fn removing_a_backend_moves_only_its_flows() {
        let hosts: Vec<(u8, u32)> = (10..20).map(|h| (h, 1)).collect();
        let t1 = table(1, &hosts);
        let mut st = state(1 << 14, 1 << 12);
        let mut before = Vec::new();
        for i in 0..400 {
            for vip in [sample::VIP_FULLNAT, sample::VIP_IPIP] {
                let (v, out) = run(&mut st, &t1, 0, &tcp(client(i), vip, 6000, TCP_SYN));
                assert_eq!(v, Verdict::Tx);
                before.push((i, vip, dest(&out)));
            }
        }
        let removed = 13u8;
        let rest: Vec<(u8, u32)> = hosts
            .iter()
            .copied()
            .filter(|&(h, _)| h != removed)
            .collect();
        let t2 = table(2, &rest);
        let (mut moved, mut kept) = (0, 0);
        for (i, vip, d) in before {
            let (v, out) = run(&mut st, &t2, 1, &tcp(client(i), vip, 6000, TCP_ACK));
            if d[3] == removed {
                assert_eq!(v, Verdict::Drop(DropReason::BackendGone));
                moved += 1;
            } else {
                assert_eq!(v, Verdict::Tx);
                assert_eq!(dest(&out), d, "flow {i} to {vip} changed backend");
                kept += 1;
            }
        }
        assert!(moved > 0 && kept > moved * 5, "moved {moved}, kept {kept}");
    }

    #[test]
    fn syn_flood_through_the_pipeline_leaves_established_flows_alone() {
        let t = sample::table(1, 4);
        // A fixed conntrack seed: with some random seeds every flood SYN finds a half-open
        // victim to evict and none is refused, which would make the budget check below vacuous.
        let mut st = WorkerState::with_seed(
            0,
            1,
            conntrack::Config {
                capacity: 4096,
                embryonic_budget: 512,
                timeouts: Timeouts::default(),
            },
            1,
        );
        let mut est = Vec::new();
        for i in 0..200 {
            let (_, out) = run(
                &mut st,
                &t,
                0,
                &tcp(client(i), sample::VIP_IPIP, 7000, TCP_SYN),
            );
            // The client's ACK establishes a dsr flow.
            let (v, _) = run(
                &mut st,
                &t,
                1,
                &tcp(client(i), sample::VIP_IPIP, 7000, TCP_ACK),
            );
            assert_eq!(v, Verdict::Tx);
            est.push((i, dest(&out)));
        }
        let mut refused = 0;
        for n in 0..20_000u32 {
            let src = Addr::v4([198, 19, 200 + (n % 50) as u8, (n / 50) as u8]);
            let (v, _) = run(
                &mut st,
                &t,
                2,
                &tcp(src, sample::VIP_IPIP, (n % 60000) as u16 + 1, TCP_SYN),
            );
            refused += usize::from(v != Verdict::Tx);
        }
        assert!(refused > 0, "the flood must hit the embryonic budget");
        assert!(st.ct.embryonic() <= 512);
        for (i, d) in est {
            let (v, out) = run(
                &mut st,
                &t,
                3,
                &tcp(client(i), sample::VIP_IPIP, 7000, TCP_ACK),
            );
            assert_eq!(v, Verdict::Tx);
            assert_eq!(dest(&out), d);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Established flows keep their backend across any table swap that keeps that backend:
        /// others added, reweighted (even drained to 0) or removed.
        #[test]
        fn established_flows_survive_table_swaps(
            changes in proptest::collection::vec((10u8..40, 0u32..5), 1..30),
            flows in 1u32..200,
        ) {
            let base: Vec<(u8, u32)> = (10..20).map(|h| (h, 1)).collect();
            let t1 = table(1, &base);
            let mut st = state(1 << 12, 1 << 10);
            let mut seen = Vec::new();
            for i in 0..flows {
                for vip in [sample::VIP_FULLNAT, sample::VIP_IPIP] {
                    let (v, out) = run(&mut st, &t1, 0, &tcp(client(i), vip, 9000, TCP_SYN));
                    prop_assert_eq!(v, Verdict::Tx);
                    seen.push((i, vip, dest(&out)));
                }
            }
            let used: std::collections::BTreeSet<u8> = seen.iter().map(|s| s.2[3]).collect();
            // Apply the changes, but never to a backend that carries a flow.
            let mut next: std::collections::BTreeMap<u8, u32> = base.iter().copied().collect();
            for (h, w) in changes {
                if used.contains(&h) {
                    continue;
                }
                if w == 4 { next.remove(&h); } else { next.insert(h, w); }
            }
            let t2 = table(2, &next.into_iter().collect::<Vec<_>>());
            for (i, vip, d) in seen {
                let (v, out) = run(&mut st, &t2, 1, &tcp(client(i), vip, 9000, TCP_ACK));
                prop_assert_eq!(v, Verdict::Tx);
                prop_assert_eq!(dest(&out), d);
            }
        }

        #[test]
        fn process_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let t = sample::table(1, 2);
            let mut st = state(256, 64);
            let _ = run(&mut st, &t, 0, &bytes);
        }

        #[test]
        fn process_never_panics_on_mutated_frames(
            which in 0usize..3,
            flips in proptest::collection::vec((0usize..120, any::<u8>()), 1..6),
            cut in 0usize..130,
        ) {
            let t = sample::table(1, 2);
            let mut st = state(256, 64);
            let vip = [sample::VIP_FULLNAT, sample::VIP_IPIP, Addr::v4([198, 18, 0, 1])][which];
            let mut f = tcp(client(1), vip, 1234, TCP_SYN);
            // A valid flow first, so mutated packets also reach the conntrack-hit paths.
            let _ = run(&mut st, &t, 0, &f);
            for (i, b) in flips {
                if let Some(x) = f.get_mut(i) { *x ^= b; }
            }
            f.truncate(cut.max(1));
            let _ = run(&mut st, &t, 1, &f);
        }
    }
}

//! Workers: one thread per port queue, pinned to a core, running the loop
//! receive -> process -> transmit -> slow path (conntrack expiry, table adoption, counters).
//!
//! A worker polls one queue of each interface (a two-armed balancer: an outside and an inside
//! interface). A frame leaves by the interface whose MAC the pipeline wrote as its source (the
//! route to the backend or the client's arrival interface decided it); a frame that leaves by
//! another interface than it arrived on is copied into that interface's transmit queue.
//!
//! A flow is handled by one worker (see [`crate::steer`]): a frame received by a worker that does not
//! own its flow is copied into a preallocated buffer and pushed onto the owner's bounded hand-off
//! queue; the owner processes it and transmits it on its own port. Buffers travel back to the
//! sender's pool after use, so the steady state allocates nothing.
//!
//! The only shared state on the hot path is the table (`ArcSwap::load`, once per burst) and the
//! hand-off queues. Counters are published into an `ArcSwap` every 100 ms for the control plane.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::conntrack::{self, Millis};
use crate::neighbor::Resolver;
use crate::packet::PacketBuf;
use crate::pipeline::{
    parse_after, process, process_burst_with, process_parsed_as, Counters, DropReason, Verdict,
    WorkerState,
};
use crate::port::{Port, PortStats, HEADROOM};
use crate::steer::{Steer, ANY};
use crate::table::RoutingTable;

/// Frames received per `rx_burst`.
pub const BURST: usize = 64;
/// Size of one hand-off buffer: headroom, the largest frame the ports carry, and some tailroom.
const SLOT: usize = HEADROOM + 9216 + 64;
/// Most interfaces a worker polls.
pub const MAX_INTERFACES: usize = 8;
/// Handed-off frames processed per loop turn, so a busy peer cannot starve our own port.
const DRAIN_MAX: usize = 64;
/// Slow-path period.
const SLOW_PATH_MS: Millis = 1;
/// Counter publication period.
const PUBLISH_MS: Millis = 100;
/// Neighbor resolver period (worker 0): how soon a next hop a new flow wanted is probed.
const RESOLVE_MS: Millis = 10;
/// Conntrack slots examined per slow-path run: 256 per ms sweeps 262144 slots in about a second,
/// well inside the shortest timeout.
pub const EXPIRE_BUDGET: usize = 256;
/// What the port is told about a handed-off frame: nothing to send, recycle the buffer. Ports do
/// not count drop reasons; the worker counts it as `handed_off`, outside the pipeline's counters.
const HANDED_OFF: Verdict = Verdict::Drop(DropReason::Unsupported);

/// What a worker does when a loop turn found nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Spin: lowest latency, one full core per worker even when idle.
    Poll,
    /// Spin for `spin` empty turns, then sleep on the port's fd (and the hand-off wake fd) for at
    /// most `sleep` per turn until traffic returns: an idle balancer uses almost no CPU.
    Adaptive {
        /// Empty turns before the first sleep.
        spin: u32,
        /// Longest sleep per turn.
        sleep: Duration,
    },
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy::Adaptive {
            spin: 200,
            sleep: Duration::from_millis(1),
        }
    }
}

/// How to run the workers.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Core of worker `i` is `cores[i]`; workers past the end of the list are not pinned.
    pub cores: Vec<usize>,
    /// Idle behaviour.
    pub idle: IdlePolicy,
    /// Each worker's conntrack sizing.
    pub conntrack: conntrack::Config,
    /// Hand-off buffers each worker owns (its frames in flight to other workers).
    pub handoff_slots: usize,
}

impl WorkerConfig {
    /// Adaptive idling, no pinning, 256 hand-off buffers per worker.
    pub fn new(conntrack: conntrack::Config) -> WorkerConfig {
        WorkerConfig {
            cores: Vec::new(),
            idle: IdlePolicy::default(),
            conntrack,
            handoff_slots: 256,
        }
    }
}

/// Worker-level counters, beside the pipeline's [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Loop turns that found work.
    pub busy_turns: u64,
    /// Sleeps of the adaptive idle policy.
    pub sleeps: u64,
    /// Frames received here and handed to their owner.
    pub handed_off: u64,
    /// Frames handed to us by other workers and processed.
    pub handoff_received: u64,
    /// Frames that should have been handed off but found the owner's queue or our pool full.
    pub handoff_full: u64,
    /// Handed-off frames the pipeline sent to the host: our port cannot inject a foreign frame
    /// into the host's stack, so they are lost.
    pub handoff_to_host_lost: u64,
    /// Frames transmitted by another interface than they arrived on.
    pub crossed: u64,
    /// Of `crossed`, the frames copied into the other interface's buffers: every crossing
    /// frame unless both ports lend theirs (DPDK devices, see [`Port::lends`]), and frames
    /// handed over by another worker.
    pub crossed_copies: u64,
    /// Receive errors from the port.
    pub rx_errors: u64,
    /// Transmit and flush errors from the port.
    pub tx_errors: u64,
    /// Flows removed by expiry.
    pub expired: u64,
    /// ARP requests and neighbor solicitations sent by the resolver (worker 0 only).
    pub neighbor_probes: u64,
    /// Resolved neighbors forgotten after they stopped answering refresh probes (worker 0).
    pub neighbor_expired: u64,
}

/// What a worker publishes for the control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Worker index.
    pub worker: u16,
    /// The pipeline's counters.
    pub counters: Counters,
    /// Worker-level counters.
    pub stats: WorkerStats,
    /// The port's counters (the sum of its interfaces').
    pub port: PortStats,
    /// Each interface's queue's counters, in interface order.
    pub interfaces: Vec<PortStats>,
    /// Flows in the connection table.
    pub flows: usize,
    /// Keys in use in the connection table (a nat or fullnat flow takes two): its occupancy is
    /// keys over capacity.
    pub keys: usize,
    /// Generation of the table in use.
    pub generation: u64,
    /// Monotonic milliseconds since the worker started, when published.
    pub at_ms: Millis,
}

/// Sums the pipeline counters of several workers (per-service and per-backend slots included).
pub fn total(snapshots: &[Snapshot]) -> Counters {
    let mut t = Counters::default();
    for s in snapshots {
        let c = &s.counters;
        t.rx_packets += c.rx_packets;
        t.rx_bytes += c.rx_bytes;
        t.tx_packets += c.tx_packets;
        t.tx_bytes += c.tx_bytes;
        t.to_host += c.to_host;
        t.to_l7 += c.to_l7;
        for (a, b) in t.drops.iter_mut().zip(c.drops.iter()) {
            *a += b;
        }
        for (dst, src) in [
            (&mut t.services, &c.services),
            (&mut t.backends, &c.backends),
        ] {
            if dst.len() < src.len() {
                dst.resize(src.len(), Default::default());
            }
            for (a, b) in dst.iter_mut().zip(src.iter()) {
                a.packets += b.packets;
                a.bytes += b.bytes;
                a.new_flows += b.new_flows;
                a.resets += b.resets;
                a.unanswered_syns += b.unanswered_syns;
            }
        }
    }
    t
}

/// A frame in flight between workers.
struct Frame {
    buf: Box<[u8]>,
    len: usize,
    /// The interface it arrived on.
    port: u8,
    /// The worker whose pool the buffer returns to.
    from: u16,
}

/// Wakes a sleeping worker when a peer hands it a frame or the control plane stops it.
struct Wake {
    sleeping: AtomicBool,
    /// Frames queued for this worker and not yet taken.
    queued: AtomicUsize,
    /// An eventfd; `None` if the kernel refused one (the worker then sleeps its timeout out).
    fd: Option<OwnedFd>,
}

impl Wake {
    fn new() -> Wake {
        Wake {
            sleeping: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            fd: sys::eventfd(),
        }
    }

    fn ring(&self) {
        if let Some(fd) = &self.fd {
            sys::eventfd_ring(fd);
        }
    }

    fn clear(&self) {
        if let Some(fd) = &self.fd {
            sys::eventfd_clear(fd);
        }
    }
}

/// The sending side of one worker's queues, held by every worker.
struct Peer {
    inbound: SyncSender<Frame>,
    pool: SyncSender<Frame>,
    wake: Arc<Wake>,
}

/// One worker's ends of the hand-off mesh.
struct Mesh {
    inbound: Receiver<Frame>,
    pool: Receiver<Frame>,
    peers: Vec<Peer>,
    wake: Arc<Wake>,
}

impl Mesh {
    /// Builds the mesh for `n` workers, each with `slots` preallocated buffers.
    fn build(n: usize, slots: usize) -> Vec<Mesh> {
        let slots = slots.max(1);
        let mut ends = Vec::with_capacity(n);
        let mut peers = Vec::with_capacity(n);
        for w in 0..n {
            let (in_tx, in_rx) = sync_channel(slots * n.max(1));
            let (pool_tx, pool_rx) = sync_channel(slots);
            if n > 1 {
                for _ in 0..slots {
                    let f = Frame {
                        buf: vec![0u8; SLOT].into_boxed_slice(),
                        len: 0,
                        port: 0,
                        from: w as u16,
                    };
                    // Cannot fail: the channel has room for exactly `slots`.
                    let _ = pool_tx.try_send(f);
                }
            }
            let wake = Arc::new(Wake::new());
            peers.push((in_tx, pool_tx, wake.clone()));
            ends.push((in_rx, pool_rx, wake));
        }
        ends.into_iter()
            .map(|(inbound, pool, wake)| Mesh {
                inbound,
                pool,
                peers: peers
                    .iter()
                    .map(|(i, p, w)| Peer {
                        inbound: i.clone(),
                        pool: p.clone(),
                        wake: w.clone(),
                    })
                    .collect(),
                wake,
            })
            .collect()
    }

    /// Copies `frame` (received on interface `port`) into one of our buffers and queues it for
    /// worker `to`.
    fn hand_off(&self, to: u16, frame: &[u8], port: u8) -> bool {
        let Some(peer) = self.peers.get(usize::from(to)) else {
            return false;
        };
        let Ok(mut f) = self.pool.try_recv() else {
            return false;
        };
        let len = frame.len().min(SLOT - HEADROOM);
        if let (Some(dst), Some(src)) = (f.buf.get_mut(HEADROOM..HEADROOM + len), frame.get(..len))
        {
            dst.copy_from_slice(src);
        }
        f.len = len;
        f.port = port;
        match peer.inbound.try_send(f) {
            Ok(()) => {
                // Dekker with `Worker::sleep`: either the owner sees `queued` or we see it asleep.
                peer.wake.queued.fetch_add(1, Ordering::SeqCst);
                if peer.wake.sleeping.load(Ordering::SeqCst) {
                    peer.wake.ring();
                }
                true
            }
            Err(TrySendError::Full(f) | TrySendError::Disconnected(f)) => {
                self.recycle(f);
                false
            }
        }
    }

    /// Returns a buffer to the pool it came from.
    fn recycle(&self, f: Frame) {
        if let Some(peer) = self.peers.get(usize::from(f.from)) {
            // Fails only when that worker has exited; the buffer is then freed.
            let _ = peer.pool.try_send(f);
        }
    }
}

/// One dataplane worker: its ports (one queue of each interface), its flow state, and its end
/// of the hand-off mesh.
pub struct Worker {
    id: u16,
    workers: u16,
    state: WorkerState,
    /// Interface `i`'s queue is `ports[i]`.
    ports: Vec<Box<dyn Port>>,
    /// Bit `i` set: `ports[i]` lends its frames ([`Port::lends`]); a frame crossing between
    /// two such ports moves without a copy.
    lenders: u32,
    table: Arc<ArcSwap<RoutingTable>>,
    idle: IdlePolicy,
    stop: Arc<AtomicBool>,
    steer: Steer,
    mesh: Mesh,
    stats: WorkerStats,
    published: Arc<ArcSwap<Snapshot>>,
    /// Generation of the table this worker adopted, for the control plane: once every worker
    /// shows a generation, none holds an older table (see [`WorkerHandle::generation`]).
    adopted: Arc<AtomicU64>,
    started: Instant,
    generation: Option<u64>,
    /// Worker 0 resolves next hops (see [`Worker::resolve`]); built on first use.
    resolver: Option<Box<Resolver>>,
    /// Address of the cache the resolver's timing belongs to (identity only).
    resolver_cache: usize,
    next_resolve: Millis,
    next_slow: Millis,
    next_publish: Millis,
    published_turns: u64,
    idle_turns: u32,
}

/// Builds one worker per port (worker `i` on `ports[i]`), connected by hand-off queues, without
/// starting threads. [`spawn_workers`] runs them; tests may drive [`Worker::poll_once`] directly.
pub fn build_workers(
    ports: Vec<Box<dyn Port>>,
    table: Arc<ArcSwap<RoutingTable>>,
    cfg: &WorkerConfig,
) -> io::Result<Vec<Worker>> {
    build_workers_on(vec![ports], table, cfg)
}

/// [`build_workers`] for several interfaces: `interfaces[k]` are interface `k`'s queues, one per
/// worker (worker `i` polls `interfaces[k][i]` of every `k`), in the order of the table's
/// interfaces ([`crate::table::Local::mac_of`]).
pub fn build_workers_on(
    interfaces: Vec<Vec<Box<dyn Port>>>,
    table: Arc<ArcSwap<RoutingTable>>,
    cfg: &WorkerConfig,
) -> io::Result<Vec<Worker>> {
    let n = interfaces.first().map_or(0, Vec::len);
    if n == 0 || n > usize::from(u16::MAX - 1) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{n} ports: need between 1 and 65534 workers"),
        ));
    }
    if interfaces.len() > MAX_INTERFACES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} interfaces: at most {MAX_INTERFACES}", interfaces.len()),
        ));
    }
    if let Some(q) = interfaces.iter().find(|q| q.len() != n) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} queues on one interface, {n} on the first: every interface needs one per worker",
                q.len()
            ),
        ));
    }
    // Transposed: worker i gets queue i of every interface.
    let mut per_worker: Vec<Vec<Box<dyn Port>>> = (0..n).map(|_| Vec::new()).collect();
    for queues in interfaces {
        for (w, q) in per_worker.iter_mut().zip(queues) {
            w.push(q);
        }
    }
    let meshes = Mesh::build(n, cfg.handoff_slots);
    let first = table.load();
    let steer = Steer::new(&first);
    Ok(per_worker
        .into_iter()
        .zip(meshes)
        .enumerate()
        .map(|(i, (ports, mesh))| Worker {
            lenders: ports
                .iter()
                .enumerate()
                .filter(|(_, p)| p.lends())
                .fold(0, |m, (k, _)| m | 1u32.checked_shl(k as u32).unwrap_or(0)),
            id: i as u16,
            workers: n as u16,
            state: WorkerState::new(i as u16, n as u16, cfg.conntrack),
            ports,
            table: table.clone(),
            idle: cfg.idle,
            stop: Arc::new(AtomicBool::new(false)),
            steer: steer.clone(),
            mesh,
            stats: WorkerStats::default(),
            published: Arc::new(ArcSwap::from_pointee(Snapshot {
                worker: i as u16,
                ..Snapshot::default()
            })),
            adopted: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            generation: None,
            resolver: None,
            resolver_cache: 0,
            next_resolve: 0,
            next_slow: 0,
            next_publish: 0,
            published_turns: 0,
            idle_turns: 0,
        })
        .collect())
}

impl Worker {
    /// This worker's index.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Monotonic milliseconds since the worker was built.
    fn now_ms(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    /// One loop turn: receive a burst (steer, process or hand off), process handed-off frames,
    /// flush, run the slow path when due. Returns how many frames it handled.
    pub fn poll_once(&mut self) -> usize {
        let now = self.now_ms();
        let table = self.table.load();
        if self.generation != Some(table.generation) {
            // Off the per-packet path: sizing counters and rebuilding steering facts allocate.
            self.state.adopt(&table);
            self.steer.refresh(&table);
            self.generation = Some(table.generation);
            // Release: the drop of the previous burst's guard on the old table happens before
            // the control plane, reading this with Acquire, drops that table.
            self.adopted.store(table.generation, Ordering::Release);
        }
        let Worker {
            id,
            workers,
            state,
            ports,
            steer,
            mesh,
            stats,
            lenders,
            ..
        } = self;
        let lenders = *lenders;
        let (id, workers) = (*id, *workers);
        let t: &RoutingTable = &table;
        // With one interface every frame leaves where it arrived: no source MAC is read.
        let multi = ports.len() > 1;
        let mut rx = 0;
        for i in 0..ports.len() {
            let (before, rest) = ports.split_at_mut(i);
            let Some((port, after)) = rest.split_first_mut() else {
                break;
            };
            let here = i as u8;
            state.rx_port = here;
            // Egress ports of the frames this burst lends, in the burst's order.
            let mut lent_to = [0u8; BURST];
            let mut lent = 0usize;
            let lends = multi && lenders & (1 << i) != 0;
            let got = port.rx_batch(BURST, &mut |pkts, verdicts| {
                // The fast path forwards packets of this worker's established flows (a flow is
                // tracked only by its owner, so a hit needs no steering); the rest are steered.
                process_burst_with(state, t, now, pkts, verdicts, |state, pkt, seen| {
                    // One parse per frame serves both steering and the pipeline.
                    let parsed = parse_after(pkt.data(), seen);
                    let owner = steer.owner_parsed(t, pkt.data(), &parsed, workers);
                    if owner == ANY || owner == id || owner >= workers {
                        return process_parsed_as(state, t, now, pkt, parsed, seen);
                    }
                    if mesh.hand_off(owner, pkt.data(), here) {
                        stats.handed_off += 1;
                    } else {
                        stats.handoff_full += 1;
                        state.counters.drops[DropReason::HandoffFull as usize] += 1;
                    }
                    HANDED_OFF
                });
                if multi {
                    for (pkt, v) in pkts.iter().zip(verdicts.iter_mut()) {
                        if *v != Verdict::Tx {
                            continue;
                        }
                        let Some(out) = egress(t, pkt.data(), here) else {
                            continue;
                        };
                        let Some(other) = other_port(before, after, here, out) else {
                            *v = HANDED_OFF;
                            continue;
                        };
                        stats.crossed += 1;
                        // An empty frame is never lent: its port would drop it, and the
                        // lent frames would no longer pair up with `lent_to`.
                        if lends && lenders & (1u32 << out) != 0 && !pkt.is_empty() {
                            // Moved after the burst, without a copy.
                            *v = Verdict::Lent;
                            if let Some(slot) = lent_to.get_mut(lent) {
                                *slot = out;
                                lent += 1;
                            }
                            continue;
                        }
                        if other.tx_frame(pkt.data()).is_err() {
                            stats.tx_errors += 1;
                        }
                        stats.crossed_copies += 1;
                        // Sent (or lost) elsewhere: this port recycles the buffer.
                        *v = HANDED_OFF;
                    }
                }
            });
            rx += got.unwrap_or_else(|_| {
                stats.rx_errors += 1;
                0
            });
            for &out in lent_to.get(..lent).unwrap_or_default() {
                let Some(frame) = port.take_lent() else {
                    break;
                };
                let sent = other_port(before, after, here, out).map(|o| o.tx_lent(frame));
                if !matches!(sent, Some(Ok(()))) {
                    // Dropping a refused frame frees it.
                    stats.tx_errors += 1;
                }
            }
        }
        let mut drained = 0;
        // A peer counts a frame in `queued` right after queueing it: a frame not counted yet
        // waits for the next turn, and a turn with none skips the channel.
        let handed = mesh.wake.queued.load(Ordering::Relaxed) > 0;
        while handed && drained < DRAIN_MAX {
            let Ok(mut f) = mesh.inbound.try_recv() else {
                break;
            };
            mesh.wake.queued.fetch_sub(1, Ordering::SeqCst);
            drained += 1;
            stats.handoff_received += 1;
            let len = f.len.min(SLOT - HEADROOM);
            state.rx_port = f.port;
            let mut pkt = PacketBuf::new(&mut f.buf, HEADROOM, len);
            match process(state, &table, now, &mut pkt) {
                Verdict::Tx => {
                    let out = if multi {
                        egress(t, pkt.data(), f.port).unwrap_or(f.port)
                    } else {
                        0
                    };
                    if out != f.port {
                        stats.crossed += 1;
                        stats.crossed_copies += 1;
                    }
                    let sent = ports
                        .get_mut(usize::from(out))
                        .map(|port| port.tx_frame(pkt.data()));
                    if !matches!(sent, Some(Ok(_))) {
                        stats.tx_errors += 1;
                    }
                }
                Verdict::ToHost => {
                    stats.handoff_to_host_lost += 1;
                    state.counters.drops[DropReason::HandoffToHost as usize] += 1;
                }
                Verdict::Drop(_) | Verdict::ToL7 | Verdict::Lent => {}
            }
            mesh.recycle(f);
        }
        for port in ports.iter_mut() {
            if port.flush().is_err() {
                stats.tx_errors += 1;
            }
        }
        drop(table);
        if now >= self.next_slow {
            self.timers(now);
        }
        let work = rx + drained;
        if work > 0 {
            self.stats.busy_turns += 1;
        }
        work
    }

    /// The slow path, once per [`SLOW_PATH_MS`]: conntrack expiry, then the resolver and the
    /// counters' publication when theirs are due. Kept out of [`Worker::poll_once`]'s body, so
    /// the per-burst loop stays small (and a profile can count it apart: its cost per packet
    /// depends on the rate).
    #[cold]
    #[inline(never)]
    fn timers(&mut self, now: Millis) {
        self.next_slow = now + SLOW_PATH_MS;
        self.stats.expired += self.state.expire(now, EXPIRE_BUDGET) as u64;
        if self.id == 0 && now >= self.next_resolve {
            self.next_resolve = now + RESOLVE_MS;
            self.resolve(now);
        }
        if now >= self.next_publish {
            self.next_publish = now + PUBLISH_MS;
            self.publish(now);
        }
    }

    /// Runs the neighbor resolver and transmits its ARP/ND probes on this worker's queue of each
    /// next hop's interface. Only
    /// worker 0 does this: one resolver sees every next hop once, its probes leave through a port
    /// that is polled anyway, and answers are learned by whichever worker receives them (the
    /// cache is shared). The table is loaded here and released before returning, like a burst's.
    fn resolve(&mut self, now: Millis) {
        let table = self.table.load();
        let Some(cache) = table.neighbors() else {
            return;
        };
        if table.next_hops().is_empty() {
            return;
        }
        let id = Arc::as_ptr(cache) as usize;
        if self.resolver.is_none() || self.resolver_cache != id {
            // Once per cache (at start): the timing array is sized by the cache.
            self.resolver = Some(Box::new(Resolver::new(cache.capacity())));
            self.resolver_cache = id;
        }
        let Some(r) = self.resolver.as_mut() else {
            return;
        };
        let (ports, stats) = (&mut self.ports, &mut self.stats);
        let expired = r.expired;
        let sent = r.tick(
            now,
            &|i| table.local.mac_of(i),
            cache,
            table.next_hops(),
            &mut |f, _, iface| {
                let sent = ports.get_mut(usize::from(iface)).map(|p| p.tx_frame(f));
                if !matches!(sent, Some(Ok(_))) {
                    stats.tx_errors += 1;
                }
            },
        );
        stats.neighbor_probes += sent as u64;
        stats.neighbor_expired += r.expired - expired;
        if sent > 0 {
            for port in ports.iter_mut() {
                if port.flush().is_err() {
                    stats.tx_errors += 1;
                }
            }
        }
    }

    /// Copies the counters where the control plane reads them. Allocates; every 100 ms at most
    /// (and once before an idle sleep).
    fn publish(&mut self, now: Millis) {
        self.published_turns = self.stats.busy_turns;
        self.published.store(Arc::new(self.snapshot_at(now)));
    }

    /// The worker's flow state and its ports (one queue of each interface), for a tool that
    /// drives the worker by hand between turns of [`Worker::poll_once`] (the zero-copy
    /// benchmark confirms its flows through them before it measures the turns).
    pub fn parts_mut(&mut self) -> (&mut WorkerState, &mut [Box<dyn Port>]) {
        (&mut self.state, &mut self.ports)
    }

    /// The counters as they stand now (a worker driven by [`Worker::poll_once`] instead of a
    /// thread publishes none by itself).
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(self.now_ms())
    }

    fn snapshot_at(&self, now: Millis) -> Snapshot {
        let port = self
            .ports
            .iter()
            .map(|p| p.stats())
            .fold(PortStats::default(), |a, b| PortStats {
                rx: a.rx + b.rx,
                tx: a.tx + b.tx,
                tx_dropped: a.tx_dropped + b.tx_dropped,
                rx_dropped: a.rx_dropped + b.rx_dropped,
                to_host: a.to_host + b.to_host,
            });
        let mut counters = self.state.counters.clone();
        // The port keeps its own loss counters (cumulative): `lb_drops_total` shows them too.
        counters.drops[DropReason::TxFailed as usize] = port.tx_dropped;
        counters.drops[DropReason::RxDropped as usize] = port.rx_dropped;
        Snapshot {
            worker: self.id,
            counters,
            stats: self.stats,
            port,
            interfaces: self.ports.iter().map(|p| p.stats()).collect(),
            flows: self.state.ct.len(),
            keys: self.state.ct.keys(),
            generation: self.generation.unwrap_or(0),
            at_ms: now,
        }
    }

    /// The loop, until stopped. Returns the final counters.
    fn run(mut self) -> Snapshot {
        while !self.stop.load(Ordering::Relaxed) {
            if self.poll_once() > 0 {
                self.idle_turns = 0;
                continue;
            }
            match self.idle {
                IdlePolicy::Poll => std::hint::spin_loop(),
                IdlePolicy::Adaptive { spin, sleep } => {
                    // Once past `spin`, every empty turn sleeps until traffic resets the count.
                    self.idle_turns = self.idle_turns.saturating_add(1);
                    if self.idle_turns > spin {
                        self.sleep(sleep);
                    }
                }
            }
        }
        let snap = self.snapshot_at(self.now_ms());
        self.published.store(Arc::new(snap.clone()));
        snap
    }

    /// Sleeps until the port has frames, a peer hands us one, we are stopped, or `max` passes.
    fn sleep(&mut self, max: Duration) {
        if self.published_turns != self.stats.busy_turns {
            // Nothing changes while we sleep, so this snapshot stays exact however long we do.
            self.publish(self.now_ms());
        }
        let wake = &self.mesh.wake;
        wake.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if wake.queued.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::SeqCst) {
            self.stats.sleeps += 1;
            let mut fds = [None; MAX_INTERFACES + 1];
            fds[0] = wake.fd.as_ref().map(|f| f.as_raw_fd());
            for (slot, port) in fds[1..].iter_mut().zip(&self.ports) {
                *slot = port.wait_fd();
            }
            wait(&fds, max);
        }
        wake.sleeping.store(false, Ordering::SeqCst);
        wake.clear();
    }
}

/// Port `out` of a worker whose ports are split around port `here` (`before` it and `after` it).
fn other_port<'p>(
    before: &'p mut [Box<dyn Port>],
    after: &'p mut [Box<dyn Port>],
    here: u8,
    out: u8,
) -> Option<&'p mut Box<dyn Port>> {
    if out < here {
        before.get_mut(usize::from(out))
    } else {
        after.get_mut(usize::from(out.checked_sub(here)?.checked_sub(1)?))
    }
}

/// The interface a frame the pipeline answered `Tx` leaves by, when it is not `here` (where it
/// arrived): the one whose MAC the pipeline wrote as the frame's source. `None`: `here`.
#[inline]
fn egress(table: &RoutingTable, frame: &[u8], here: u8) -> Option<u8> {
    let src = frame.get(6..12)?;
    if src == table.local.mac_of(here) {
        return None;
    }
    table.local.iface_of_mac(src).filter(|&i| i != here)
}

pub use crate::port::sys::pin_to_core;
use crate::port::sys::{self, wait};

/// A running worker thread, as the control plane holds it.
pub struct WorkerHandle {
    id: u16,
    port: String,
    core: Option<usize>,
    pin_error: Option<io::Error>,
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    published: Arc<ArcSwap<Snapshot>>,
    adopted: Arc<AtomicU64>,
    thread: Option<JoinHandle<Snapshot>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("id", &self.id)
            .field("port", &self.port)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// Worker index.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Name of the worker's port.
    pub fn port_name(&self) -> &str {
        &self.port
    }

    /// The core the worker was asked to run on.
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    /// Why pinning failed, if it did (the worker runs unpinned then).
    pub fn pin_error(&self) -> Option<&io::Error> {
        self.pin_error.as_ref()
    }

    /// Generation of the table the worker runs on (0 before its first turn). Once it is at
    /// least `g`, the worker holds no reference to any table older than `g`: it loads the table
    /// afresh every turn and keeps none across idle sleeps, so the control plane may drop older
    /// tables. An idle worker adopts a new table within one sleep (at most 1 ms by default).
    pub fn generation(&self) -> u64 {
        self.adopted.load(Ordering::Acquire)
    }

    /// The counters last published (at most about 100 ms old). Never blocks the worker.
    pub fn counters(&self) -> Arc<Snapshot> {
        self.published.load_full()
    }

    /// Wakes the worker if it sleeps idle, so it adopts a just-published table now rather than
    /// after its sleep (the control plane calls this on every handle after a reload).
    pub fn wake(&self) {
        self.wake.ring();
    }

    /// Asks the worker to stop after its current turn (and wakes it if it sleeps).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.ring();
    }

    /// Stops the worker and waits for it; returns its final counters. The worker's port is dropped
    /// (closed) by then.
    pub fn join(mut self) -> io::Result<Snapshot> {
        self.stop();
        let Some(t) = self.thread.take() else {
            return Ok((*self.counters()).clone());
        };
        t.join()
            .map_err(|_| io::Error::other(format!("worker {} panicked", self.id)))
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop();
            let _ = t.join();
        }
    }
}

/// Starts one thread per port (`lb-worker-N`), worker `i` pinned to `cfg.cores[i]` when given.
/// Pinning failures do not stop a worker; they are reported by [`WorkerHandle::pin_error`].
pub fn spawn_workers(
    ports: Vec<Box<dyn Port>>,
    table: Arc<ArcSwap<RoutingTable>>,
    cfg: WorkerConfig,
) -> io::Result<Vec<WorkerHandle>> {
    spawn_workers_on(vec![ports], table, cfg)
}

/// [`spawn_workers`] for several interfaces (see [`build_workers_on`]).
pub fn spawn_workers_on(
    interfaces: Vec<Vec<Box<dyn Port>>>,
    table: Arc<ArcSwap<RoutingTable>>,
    cfg: WorkerConfig,
) -> io::Result<Vec<WorkerHandle>> {
    let workers = build_workers_on(interfaces, table, &cfg)?;
    let mut handles = Vec::with_capacity(workers.len());
    for w in workers {
        let id = w.id;
        let core = cfg.cores.get(usize::from(id)).copied();
        let (pinned_tx, pinned_rx) = sync_channel(1);
        let mut h = WorkerHandle {
            id,
            port: w
                .ports
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(","),
            core,
            pin_error: None,
            stop: w.stop.clone(),
            wake: w.mesh.wake.clone(),
            published: w.published.clone(),
            adopted: w.adopted.clone(),
            thread: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("lb-worker-{id}"))
            .spawn(move || {
                let pinned = core.map(pin_to_core).transpose();
                let _ = pinned_tx.send(pinned.err());
                w.run()
            });
        match thread {
            Ok(t) => {
                h.pin_error = pinned_rx.recv().ok().flatten();
                h.thread = Some(t);
                handles.push(h);
            }
            Err(e) => {
                // Dropping the handles stops and joins the workers already started.
                return Err(io::Error::new(
                    e.kind(),
                    format!("starting worker {id}: {e}"),
                ));
            }
        }
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::mem::MemPort;

    #[test]
    fn pinning_to_an_absent_core_is_an_error_not_a_panic() {
        assert!(pin_to_core(usize::MAX).is_err());
        assert!(pin_to_core(libc::CPU_SETSIZE as usize - 1).is_err());
    }

    #[test]
    fn handoff_buffers_return_to_their_pool() {
        let meshes = Mesh::build(2, 2);
        // Worker 0 can hand off exactly its two buffers before worker 1 processes anything.
        assert!(meshes[0].hand_off(1, &[1u8; 60], 0));
        assert!(meshes[0].hand_off(1, &[2u8; 60], 0));
        assert!(!meshes[0].hand_off(1, &[3u8; 60], 0));
        assert_eq!(meshes[1].wake.queued.load(Ordering::SeqCst), 2);
        let f = meshes[1].inbound.try_recv().unwrap();
        assert_eq!((f.from, f.len, f.buf[HEADROOM]), (0, 60, 1));
        meshes[1].recycle(f);
        assert!(meshes[0].hand_off(1, &[4u8; 60], 0));
        // A frame larger than a buffer is cut, not a panic.
        let big = vec![7u8; SLOT * 2];
        let meshes = Mesh::build(2, 1);
        assert!(meshes[1].hand_off(0, &big, 0));
        assert_eq!(meshes[0].inbound.try_recv().unwrap().len, SLOT - HEADROOM);
    }

    #[test]
    fn totals_add_up_per_service_slots() {
        let mut a = Snapshot::default();
        a.counters.rx_packets = 2;
        a.counters.services = vec![Default::default(); 1];
        a.counters.services[0].new_flows = 1;
        let mut b = a.clone();
        b.counters.services = vec![Default::default(); 2];
        b.counters.services[1].new_flows = 5;
        let t = total(&[a, b]);
        assert_eq!(t.rx_packets, 4);
        assert_eq!(
            t.services.iter().map(|s| s.new_flows).collect::<Vec<_>>(),
            vec![1, 5]
        );
    }

    #[test]
    fn an_empty_port_list_is_refused() {
        let t = Arc::new(ArcSwap::from_pointee(
            RoutingTable::new(
                1,
                crate::table::Local {
                    mac: [2, 0, 0, 0, 0, 1],
                    addrs: vec![],
                    mtu: 1500,
                    snat_ports: (1024, 65535),
                    more: Vec::new(),
                },
                vec![],
            )
            .unwrap(),
        ));
        let cfg = WorkerConfig::new(conntrack::Config {
            capacity: 64,
            embryonic_budget: 16,
            timeouts: Default::default(),
        });
        assert!(build_workers(vec![], t.clone(), &cfg).is_err());
        let one: Vec<Box<dyn Port>> = vec![Box::new(MemPort::new())];
        assert_eq!(build_workers(one, t, &cfg).unwrap().len(), 1);
    }

    /// A frame lost to a full hand-off ring is a drop `lb_drops_total` shows (`handoff-full`),
    /// not only a worker statistic.
    #[test]
    fn a_full_handoff_ring_counts_handoff_full_drops() {
        use crate::flow::{proto, Addr};
        use crate::table::{Affinity, Backend, Local, Mode, Pool, ServiceSpec};
        const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
        const SNAT: [u8; 4] = [198, 18, 0, 2];
        let spec = ServiceSpec {
            stat: None,
            name: "full".into(),
            vip: Addr::v4([198, 18, 0, 100]),
            proto: proto::TCP,
            port_lo: 80,
            port_hi: 80,
            affinity: Affinity::None,
            table_size: 251,
            pools: vec![Pool {
                name: "full".into(),
                mode: Mode::FullNat,
                snat: vec![Addr::v4(SNAT)],
                encap_src_v4: None,
                encap_src_v6: None,
                gue_port: 6080,
            }],
            backends: vec![Backend {
                addr: Addr::v4([198, 18, 1, 10]),
                port: 8080,
                weight: 1,
                mac: [2, 0, 0, 0, 1, 10],
                pool: 0,
                stat: 0,
            }],
        };
        let local = Local {
            mac: LB_MAC,
            addrs: vec![Addr::v4([198, 18, 0, 1])],
            mtu: 1500,
            snat_ports: (1024, 65535),
            more: Vec::new(),
        };
        let t = Arc::new(ArcSwap::from_pointee(
            RoutingTable::new(1, local, vec![spec]).unwrap(),
        ));
        // Backend replies to a port of worker 1's slice, all received by worker 0.
        let (_, hi0) = crate::pipeline::snat_slice((1024, 65535), 0, 2);
        let mut p0 = MemPort::new();
        for i in 0..5u16 {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 1, 10], LB_MAC)
                .ipv4([198, 18, 1, 10], SNAT, 64)
                .tcp(8080, hi0 + 1 + i, 1, 1000)
                .ack(1)
                .write(&mut f, b"hi")
                .unwrap();
            p0.rx.push_back(f);
        }
        let mut cfg = WorkerConfig::new(conntrack::Config {
            capacity: 64,
            embryonic_budget: 16,
            timeouts: Default::default(),
        });
        cfg.handoff_slots = 1;
        let ports: Vec<Box<dyn Port>> = vec![Box::new(p0), Box::new(MemPort::new())];
        let mut ws = build_workers(ports, t, &cfg).unwrap();
        assert_eq!(ws[0].poll_once(), 5);
        // One buffer: the first frame is handed off, the other four find no room.
        assert_eq!((ws[0].stats.handed_off, ws[0].stats.handoff_full), (1, 4));
        let snap = ws[0].snapshot_at(0);
        assert_eq!(snap.counters.dropped(DropReason::HandoffFull), 4);
        assert_eq!(total(&[snap]).dropped(DropReason::HandoffFull), 4);
    }
}

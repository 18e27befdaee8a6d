//! What the pipeline decides for a frame, and the per-worker counters that record it.

use super::state::FlowValue;

/// What to do with a frame after [`process`](super::process).
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
    /// Set by a worker, never by the pipeline: a `Tx` frame that leaves by another interface,
    /// whose port keeps the buffer for that interface's port to transmit without a copy
    /// ([`Port::take_lent`](crate::port::Port::take_lent)). Ports that do not lend drop it.
    Lent,
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
    /// Too many UDP flows not yet confirmed (no client datagram after an answer): the UDP-flood
    /// guard, counted apart so a UDP flood never shows as a TCP problem.
    UdpBudget,
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
    /// The worker owning the frame's flow had no room in its hand-off ring (or we had no free
    /// hand-off buffer). Counted by the worker, not the pipeline.
    HandoffFull,
    /// A frame handed over by another worker that the pipeline sent to the host: only the
    /// receiving port can inject into the host's stack. Counted by the worker.
    HandoffToHost,
    /// The port could not transmit the frame (ring or socket buffer full, TAP queue full:
    /// `EAGAIN`, send error). Taken from the port's own counter.
    TxFailed,
    /// Frames the kernel dropped before lb could read them, where the port can read that
    /// figure (af_packet: TPACKET statistics; AF_XDP: XDP statistics). Taken from the port.
    RxDropped,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 22] = [
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
        DropReason::UdpBudget,
        DropReason::SnatExhausted,
        DropReason::BackendGone,
        DropReason::IcmpUntracked,
        DropReason::NoRoom,
        DropReason::Unsupported,
        DropReason::NoNeighbor,
        DropReason::HandoffFull,
        DropReason::HandoffToHost,
        DropReason::TxFailed,
        DropReason::RxDropped,
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
            DropReason::UdpBudget => "udp-budget",
            DropReason::SnatExhausted => "snat-exhausted",
            DropReason::BackendGone => "backend-gone",
            DropReason::IcmpUntracked => "icmp-untracked",
            DropReason::NoRoom => "no-room",
            DropReason::Unsupported => "unsupported",
            DropReason::NoNeighbor => "no-neighbor",
            DropReason::HandoffFull => "handoff-full",
            DropReason::HandoffToHost => "handoff-to-host",
            DropReason::TxFailed => "tx-failed",
            DropReason::RxDropped => "rx-dropped",
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
            Verdict::Lent => "lent".into(),
            Verdict::Drop(r) => format!("drop:{}", r.name()),
        }
    }
}

/// Packets, bytes and new flows of one service or backend on one worker.
// `packets` and `bytes` apart: the fast path adds to both per packet, and side by side the
// compiler pairs the two adds into a vector add (twice the instructions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Packets forwarded.
    pub packets: u64,
    /// Flows created.
    pub new_flows: u64,
    /// Bytes forwarded (frame lengths as received).
    pub bytes: u64,
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

/// Counts one forwarded packet of a flow for its service and backend.
#[inline(always)]
pub(super) fn count(c: &mut Counters, val: &FlowValue, len: u64, new: bool) {
    if let Some(s) = c.services.get_mut(val.svc_stat as usize) {
        bump(&mut s.packets, 1);
        bump(&mut s.bytes, len);
        bump(&mut s.new_flows, u64::from(new));
    }
    if let Some(b) = c.backends.get_mut(val.be_stat as usize) {
        bump(&mut b.packets, 1);
        bump(&mut b.bytes, len);
        bump(&mut b.new_flows, u64::from(new));
    }
}

/// `*counter += by` as an add to memory of its own. The fence after it is the compiler's
/// alone (it emits no instruction): it keeps LLVM's SLP vectorizer from pairing adjacent
/// counters' adds into SSE adds, whose operand vectors cost more than the adds (a forwarded
/// frame's four counts in [`Counters`] took 13 instructions that way, 5 as adds to memory).
#[inline(always)]
pub(super) fn bump(counter: &mut u64, by: u64) {
    *counter += by;
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

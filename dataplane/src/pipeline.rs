//! One packet in, one verdict out: the whole L4 decision path the workers run.

use crate::conntrack::Millis;
use crate::packet::PacketBuf;
use crate::table::RoutingTable;

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
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 16] = [
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

/// Per-worker state: conntrack, counters, port allocator.
#[derive(Debug)]
pub struct WorkerState {}

impl WorkerState {
    /// State for worker `worker` of `workers`, with a conntrack table sized by `ct`.
    pub fn new(worker: u16, workers: u16, ct: crate::conntrack::Config) -> WorkerState {
        let _ = (worker, workers, ct);
        WorkerState {}
    }
}

/// Runs one frame through the pipeline.
pub fn process(
    _state: &mut WorkerState,
    _table: &RoutingTable,
    _now: Millis,
    _pkt: &mut PacketBuf<'_>,
) -> Verdict {
    Verdict::Drop(DropReason::Truncated)
}

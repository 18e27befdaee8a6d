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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than an Ethernet header, or a header it announces.
    Truncated = 0,
}

/// Per-worker state: conntrack, counters, port allocator.
#[derive(Debug, Default)]
pub struct WorkerState {}

/// Runs one frame through the pipeline.
pub fn process(
    _state: &mut WorkerState,
    _table: &RoutingTable,
    _now: Millis,
    _pkt: &mut PacketBuf<'_>,
) -> Verdict {
    Verdict::Drop(DropReason::Truncated)
}

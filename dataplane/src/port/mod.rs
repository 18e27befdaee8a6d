//! Packet ports: where frames come from and go to.
//!
//! A port hands the worker bursts of received frames, in place, in buffers with headroom; the
//! worker runs the pipeline on each and returns the verdict; the port then transmits (`Tx`),
//! gives the frame to the host's stack where it can (`ToHost`), or recycles the buffer. Zero copy
//! where the backend allows (AF_XDP rewrites in UMEM and transmits the same frame).
//!
//! All `unsafe` of the dataplane lives in the submodules here, one `// SAFETY:` comment per block.

use crate::packet::PacketBuf;
use crate::pipeline::{DropReason, Verdict};

/// What [`Port::rx_batch`]'s verdict slice holds before the callback sets it.
pub const UNSET: Verdict = Verdict::Drop(DropReason::Unsupported);

pub mod af_packet;
pub mod af_xdp;
pub mod bpf;
#[cfg(feature = "dpdk")]
pub mod dpdk;
mod ifname;
pub mod mem;
pub mod sys;
pub mod tap;

pub use ifname::{check_ifname, IFNAME_MAX};

/// Headroom every port leaves in front of a received frame, enough for the largest encapsulation
/// (Ethernet + VLAN + IPv6 + UDP = 66 bytes) with room to spare.
pub const HEADROOM: usize = 128;

/// Most frames a port hands over in one [`Port::rx_batch`] call.
pub const MAX_BURST: usize = 64;

/// Hints the CPU to fetch the cache line holding `r` (the first pass of a burst calls it for
/// each frame's conntrack bucket). A no-op on targets without a prefetch instruction here.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` only hints the cache; it never faults, whatever the address, and SSE
    // (which the intrinsic requires) is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (r as *const T).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// Per-port counters, kept by the port itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub rx: u64,
    /// Frames transmitted.
    pub tx: u64,
    /// Frames that could not be transmitted (ring full, send error).
    pub tx_dropped: u64,
    /// Frames the kernel dropped before we read them, where the port can read that figure.
    pub rx_dropped: u64,
    /// Frames handed to the host's stack.
    pub to_host: u64,
}

/// A source and sink of Ethernet frames for one worker (one queue).
pub trait Port: Send {
    /// Name for logs (`tap:lb0/q1`, `af_xdp:veth0/q0`, ...).
    fn name(&self) -> String;

    /// Receives up to `max` frames and runs `f` on each, in place. Frames for which `f` returns
    /// `Verdict::Tx` are queued for transmission (sent at the latest by [`Port::flush`]);
    /// `ToHost` frames go to the host's stack where the port can do that. Returns the number of
    /// frames received. Never blocks.
    fn rx_burst(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut PacketBuf<'_>) -> Verdict,
    ) -> std::io::Result<usize>;

    /// Receives up to `max` (at most [`MAX_BURST`]) frames and hands them to `f` as one burst:
    /// `f` gets the frames and a verdict slice of the same length, filled with
    /// `Verdict::Drop(DropReason::Unsupported)`, and sets `verdicts[i]` for `frames[i]`. The port
    /// then acts on each verdict as [`Port::rx_burst`] does. Returns the number of frames
    /// received. Never blocks. The default hands `rx_burst`'s frames over one at a time; ports
    /// that can hold a whole burst override it, so the pipeline parses every frame and prefetches
    /// its flow's bucket before processing any.
    fn rx_batch(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut [PacketBuf<'_>], &mut [Verdict]),
    ) -> std::io::Result<usize> {
        self.rx_burst(max.min(MAX_BURST), &mut |pkt| {
            let mut v = [UNSET];
            f(std::slice::from_mut(pkt), &mut v);
            v[0]
        })
    }

    /// Transmits what is queued.
    fn flush(&mut self) -> std::io::Result<()>;

    /// A file descriptor that becomes readable when frames arrive, for the adaptive idle policy
    /// (poll(2) on it with a short timeout). `None` for ports without one.
    fn wait_fd(&self) -> Option<std::os::fd::RawFd>;

    /// Counters.
    fn stats(&self) -> PortStats;

    /// Queues one frame that did not come from this port's `rx_burst` (a frame another worker
    /// handed over) for transmission, sent at the latest by [`Port::flush`].
    fn tx_frame(&mut self, _frame: &[u8]) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    /// True when this port lends received frames (a [`Verdict::Lent`] verdict keeps the frame's
    /// buffer for [`Port::take_lent`]) and transmits frames other lending ports lend it
    /// ([`Port::tx_lent`]): a frame that leaves by another interface of the same worker then
    /// moves without a copy. Only DPDK ports do (their buffers are mbufs, which any DPDK device
    /// transmits); the others copy with [`Port::tx_frame`].
    fn lends(&self) -> bool {
        false
    }

    /// The next frame of the last burst that got [`Verdict::Lent`], in the burst's order, or
    /// `None` when none is left. A lent frame not taken before the next receive is freed then.
    fn take_lent(&mut self) -> Option<Lent> {
        None
    }

    /// Queues a frame another port of this worker lent (see [`Port::lends`]) for transmission,
    /// sent at the latest by [`Port::flush`]; gives it back when this port cannot take it
    /// (dropping a [`Lent`] frees it).
    fn tx_lent(&mut self, frame: Lent) -> Result<(), Lent> {
        Err(frame)
    }
}

/// A received frame one port lends another port of the same worker to transmit without a copy
/// ([`Port::take_lent`], [`Port::tx_lent`]): a DPDK mbuf, which either device can transmit (the
/// driver that sends it frees it to the pool it came from). Dropping it frees the buffer.
/// Without the `dpdk` feature no port lends and no value of this type exists.
pub struct Lent(pub(crate) LentBuf);

#[cfg(feature = "dpdk")]
pub(crate) type LentBuf = dpdk::Mbuf;
#[cfg(not(feature = "dpdk"))]
pub(crate) type LentBuf = std::convert::Infallible;

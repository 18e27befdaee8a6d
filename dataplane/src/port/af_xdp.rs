//! AF_XDP port: frames arrive in and leave from UMEM, rewritten in place (zero copy in our code;
//! the kernel copies only where the driver has no zero-copy support).
//!
//! Layout: one UMEM per socket and one socket per queue, so each port (one per worker) owns all
//! its rings and frames and needs no locks. A UMEM has `frames` chunks of [`FRAME_SIZE`] bytes;
//! the kernel writes a frame at `chunk + HEADROOM + 256` (our UMEM headroom plus the kernel's
//! `XDP_PACKET_HEADROOM`), so the pipeline can grow it in front by far more than the 68 bytes it
//! needs, and has over 3 KiB behind it.
//!
//! Life of a chunk: fill ring -> (kernel) -> rx ring -> pipeline -> tx ring if `Tx` (same chunk,
//! the descriptor moved to the frame's new start) -> completion ring -> free list -> fill ring;
//! any other verdict puts the chunk straight back on the free list.
//!
//! What reaches userspace is chosen by the XDP program (see [`super::bpf`]): by default only
//! frames for owned addresses ([`AfXdpPort::set_owned`]); everything else stays with the kernel.
//! A frame that does reach us and that the pipeline still gives `ToHost` (for example an ICMP
//! error to an owned address) cannot be handed back from userspace: it is dropped and counted in
//! [`AfXdpPort::to_host_dropped`], not in [`PortStats::to_host`].
//!
//! Binding asks for no particular mode, so the kernel uses zero copy where the driver supports it
//! and falls back to copy mode otherwise ([`AfXdpPort::zero_copy`] says which it chose); generic
//! XDP and [`AfXdpOptions::force_copy`] bind in copy mode, [`AfXdpOptions::require_zero_copy`]
//! binds with `XDP_ZEROCOPY` and fails where the driver cannot. Zero copy needs a driver with
//! AF_XDP zero-copy support in native mode (i40e, ice, ixgbe, igc, igb, mlx5, stmmac, ...);
//! veth, tap and generic XDP have none and always copy.
//!
//! The rings run in the kernel's `need_wakeup` mode: the kernel is kicked (a zero-length
//! `sendto` for the tx ring, `recvfrom` for the fill ring) only when it asks for it, at most once
//! per burst and flush. In copy mode one `sendto` sends a whole burst where the kernel takes
//! `XDP_MAX_TX_SKB_BUDGET` (Linux 6.17+; before, it sends 32 frames a call, and a burst of 64
//! takes two: [`AfXdpPort::tx_batch`]). Received chunks go back to the fill ring in batches of at least
//! [`REFILL_BATCH`]; transmitted frames are committed once per burst. With
//! [`AfXdpOptions::busy_poll`] (on by default) the socket asks for busy polling
//! (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL`, `SO_BUSY_POLL_BUDGET`, Linux 5.11+): a poll that finds
//! the rx ring empty then drives the driver's NAPI from this thread with one `recvfrom`, and
//! with the interface's `napi_defer_hard_irqs` and `gro_flush_timeout` set the device's
//! interrupts stay off while the worker keeps up. A kernel that refuses an option leaves that
//! option unset ([`AfXdpPort::busy_poll`] says what took); the port works the same without.

use std::io;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig};

pub use super::bpf::AttachMode;
use super::bpf::XdpAttachment;
use super::{Port, PortStats, HEADROOM, MAX_BURST, UNSET};
use crate::packet::PacketBuf;
use crate::pipeline::Verdict;

/// Size of one UMEM chunk (one frame with its headroom and tailroom).
pub const FRAME_SIZE: u32 = 4096;

/// `SOL_XDP` socket option level and the `XDP_OPTIONS` query.
const SOL_XDP: libc::c_int = 283;
const XDP_OPTIONS: libc::c_int = 8;
/// `XDP_STATISTICS` (linux/if_xdp.h): the socket's cumulative drop counters.
const XDP_STATISTICS: libc::c_int = 7;
/// `XDP_MAX_TX_SKB_BUDGET` (linux/if_xdp.h, Linux 6.17+): how many frames one copy-mode send
/// may take from the transmit ring (the kernel's default is 32, its floor; at most the ring's
/// size).
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// The kernel's own copy-mode send batch where [`XDP_MAX_TX_SKB_BUDGET`] is not taken.
const KERNEL_TX_BATCH: u32 = 32;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

/// How often a bind that finds the queue busy is retried: the socket of a process that just
/// exited is released by a deferred kernel work item, so a quick restart can find it still there.
const BIND_RETRIES: u32 = 40;
const BIND_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Free chunks collected before they go back to the fill ring: one ring update (and at most one
/// wakeup) per batch instead of per burst.
pub const REFILL_BATCH: usize = 64;

/// `SO_BUSY_POLL`, `SO_PREFER_BUSY_POLL` and `SO_BUSY_POLL_BUDGET` (asm-generic/socket.h).
const SO_BUSY_POLL: libc::c_int = 46;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// Busy-poll settings for an AF_XDP socket (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// `SO_BUSY_POLL`: microseconds a busy poll may spin in the driver.
    pub usecs: u32,
    /// `SO_BUSY_POLL_BUDGET`: packets one busy poll may process.
    pub budget: u32,
}

impl Default for BusyPoll {
    /// The kernel documentation's example values: 20 us, a budget of 64.
    fn default() -> Self {
        BusyPoll {
            usecs: 20,
            budget: 64,
        }
    }
}

/// Which busy-poll options a socket accepted (see [`AfXdpPort::busy_poll`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BusyPollState {
    /// `SO_PREFER_BUSY_POLL` is set: the worker drives NAPI when its rx ring is empty.
    pub active: bool,
    /// Options the kernel refused, with its error (empty when all took or none was asked for).
    pub refused: Vec<String>,
}

/// Upper bound of `sendto` kicks per flush: in copy mode each one sends a batch
/// ([`AfXdpPort::tx_batch`] frames) and answers `EAGAIN` while more are pending.
const MAX_KICKS: u32 = 64;

/// How to open an AF_XDP port.
#[derive(Clone, Debug)]
pub struct AfXdpOptions {
    /// Native or generic XDP.
    pub mode: AttachMode,
    /// Bind in copy mode even where zero copy would work.
    pub force_copy: bool,
    /// UMEM chunks per queue (each [`FRAME_SIZE`] bytes).
    pub frames: u32,
    /// Entries in each of the rx, tx, fill and completion rings (a power of two).
    pub ring_size: u32,
    /// Capacity of the owned-address map; 0 redirects every frame to userspace instead.
    pub max_owned: u32,
    /// Bind with `XDP_ZEROCOPY`: fail where the driver has no zero-copy support instead of
    /// falling back to copy mode.
    pub require_zero_copy: bool,
    /// Busy polling for the socket; `None` leaves the socket's defaults.
    pub busy_poll: Option<BusyPoll>,
}

impl Default for AfXdpOptions {
    fn default() -> Self {
        AfXdpOptions {
            mode: AttachMode::Auto,
            force_copy: false,
            frames: 4096,
            ring_size: 2048,
            max_owned: 1024,
            require_zero_copy: false,
            busy_poll: Some(BusyPoll::default()),
        }
    }
}

/// The UMEM area: anonymous memory, unmapped on drop.
struct Area {
    ptr: NonNull<u8>,
    len: usize,
}

impl Area {
    fn new(len: usize) -> io::Result<Area> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Area { ptr, len })
    }

    /// The chunk starting at `offset`, if it lies inside the area.
    fn chunk_mut(&mut self, offset: u64) -> Option<&mut [u8]> {
        let start = usize::try_from(offset).ok()?;
        let size = FRAME_SIZE as usize;
        if start % size != 0 || start.checked_add(size)? > self.len {
            return None;
        }
        // SAFETY: the range is inside the mapping (checked above), which lives as long as `self`.
        // The chunk is ours alone: the kernel gave it to us through the rx ring and does not touch
        // it until we put it on the fill or tx ring, which happens after this borrow ends; the
        // `&mut self` borrow keeps us from handing out a second slice at the same time.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), size) })
    }

    /// A burst's chunks as frames: `PacketBuf`s over the chunks of `frames` (chunk offset, head,
    /// length), in order, into `out`. The caller checked that every offset is a distinct chunk
    /// inside the area ([`Burst::take`]).
    fn bufs<'a>(&'a mut self, frames: &[(u64, u32, u32)], out: &mut [PacketBuf<'a>]) {
        let base = self.ptr.as_ptr();
        for (&(chunk, head, len), pkt) in frames.iter().zip(out.iter_mut()) {
            let Ok(start) = usize::try_from(chunk) else {
                continue;
            };
            if start % FRAME_SIZE as usize != 0 || start + FRAME_SIZE as usize > self.len {
                continue;
            }
            // SAFETY: the chunk lies inside the mapping (checked here), which lives as long as
            // `self`, and it is ours alone: the kernel handed it over on the rx ring and does not
            // touch it until it goes back on the fill or tx ring, after `'a` ends. The chunks of
            // `frames` are distinct (the caller checked), so the slices do not overlap, and the
            // `&mut self` borrow keeps anyone else from handing out more for `'a`.
            let chunk =
                unsafe { std::slice::from_raw_parts_mut(base.add(start), FRAME_SIZE as usize) };
            *pkt = PacketBuf::new(chunk, head as usize, len as usize);
        }
    }
}

/// The descriptors of one received burst, checked: in range, aligned, no chunk twice.
struct Burst {
    /// (chunk offset, head, length) per frame: as received, then as the pipeline left it.
    frames: [(u64, u32, u32); MAX_BURST],
    n: usize,
}

impl Burst {
    /// Adds a received descriptor's chunk; false (not added) for a chunk outside the area or one
    /// already in the burst (a kernel bug, but two `&mut` over one chunk must never exist).
    /// `seen` holds, per chunk index, the stamp of the last burst that took it.
    fn take(
        &mut self,
        chunk: u64,
        head: u32,
        len: u32,
        area_len: usize,
        seen: &mut [u32],
        stamp: u32,
    ) -> bool {
        let idx = (chunk / u64::from(FRAME_SIZE)) as usize;
        let ok = chunk % u64::from(FRAME_SIZE) == 0
            && (chunk as usize)
                .checked_add(FRAME_SIZE as usize)
                .is_some_and(|e| e <= area_len)
            && seen.get(idx).is_some_and(|&s| s != stamp)
            && self.n < MAX_BURST;
        if !ok {
            return false;
        }
        seen[idx] = stamp;
        self.frames[self.n] = (chunk, head, len);
        self.n += 1;
        true
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and nothing borrows the area any
        // more (the port drops its rings and UMEM first; the kernel keeps its own page pins).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// An AF_XDP socket on one queue of an interface, with its own UMEM.
pub struct AfXdpPort {
    // Field order is drop order: rings and sockets first, then the memory, then the XDP program
    // (detached when the last port of the interface is dropped).
    rx: RingRx,
    tx: RingTx,
    device: DeviceQueue,
    _umem: Umem,
    area: Area,
    /// Chunks we own that are on no ring (capacity `frames`, so pushes never allocate).
    free: Vec<u64>,
    /// Per chunk, the stamp of the last burst that received it ([`Burst::take`]).
    seen: Box<[u32]>,
    stamp: u32,
    /// Free chunks that go back to the fill ring at once.
    refill_batch: usize,
    xdp: Arc<XdpAttachment>,
    fd: RawFd,
    ifname: String,
    queue: u32,
    ring_size: u32,
    zero_copy: bool,
    busy_poll: BusyPollState,
    /// Frames one copy-mode send takes from the transmit ring ([`AfXdpPort::tx_batch`]).
    tx_batch: u32,
    /// Sends asked of the kernel to transmit ([`AfXdpPort::tx_kicks`]).
    tx_kicks: u64,
    stats: PortStats,
    to_host_dropped: u64,
}

// SAFETY: `Umem` and `Area` hold raw pointers into our own mapping, which is valid from any
// thread; everything else (rings, fds, the attachment) is `Send`. The port is used by one thread
// at a time (`&mut self`), which the single-producer/single-consumer rings require.
unsafe impl Send for AfXdpPort {}

/// Receive queue ids [`AfXdpPort::open_queues`] accepts are below this (the kernel's own
/// limit on a device's queues, and the socket map's size).
pub const MAX_QUEUE_ID: u32 = 4096;

/// Settles a received frame (UMEM `chunk`, the frame at `head`, `len` bytes) by the pipeline's
/// verdict `v`: a `Tx` goes on the transmit ring from its own chunk; anything else is
/// [`discard`]ed. False, with nothing counted or freed, when a `Tx` finds no reserved slot
/// left in `tx`.
#[inline(always)]
fn settle(
    tx: &mut xdpilone::WriteTx<'_>,
    counts: (&mut PortStats, &mut u64),
    free: &mut Vec<u64>,
    chunk: u64,
    (head, len): (usize, usize),
    v: Verdict,
) -> bool {
    if matches!(v, Verdict::Tx) && len > 0 {
        let desc = XdpDesc {
            addr: chunk + head as u64,
            len: len as u32,
            options: 0,
        };
        if !tx.insert_once(desc) {
            return false;
        }
        counts.0.tx += 1;
        return true;
    }
    discard(counts, free, chunk, v);
    true
}

/// Counts a frame that is not sent in `counts` (port stats: a `Tx` as dropped; frames for the
/// host dropped) and gives its chunk back to `free`.
#[inline(always)]
fn discard(
    (stats, to_host_dropped): (&mut PortStats, &mut u64),
    free: &mut Vec<u64>,
    chunk: u64,
    v: Verdict,
) {
    match v {
        Verdict::Tx => stats.tx_dropped += 1,
        Verdict::ToHost => *to_host_dropped += 1,
        Verdict::Drop(_) | Verdict::ToL7 | Verdict::Lent => {}
    }
    free.push(chunk);
}

/// Asks the kernel to send what the transmit ring holds (a zero-length, non-blocking send on
/// our own socket). An error says whether to go on (`EAGAIN`: more pending, `EBUSY`: the
/// driver is busy, ...); the caller decides.
fn kick_tx(fd: RawFd) -> io::Result<()> {
    // SAFETY: a zero-length send on our own socket; no buffers are passed.
    let ret = unsafe {
        libc::sendto(
            fd,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    match ret {
        0.. => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn errno(e: xdpilone::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.get_raw().abs())
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl AfXdpPort {
    /// Attaches the XDP program to `ifname` (in the calling thread's network namespace) and opens
    /// one port per queue `0..queues`.
    pub fn open(ifname: &str, queues: u16, opts: AfXdpOptions) -> io::Result<Vec<AfXdpPort>> {
        let ids: Vec<u32> = (0..u32::from(queues)).collect();
        Self::open_queues(ifname, &ids, opts)
    }

    /// Like [`AfXdpPort::open`], one port per receive queue id in `queues`, in that order (the
    /// queues the NIC's RSS or flow-steering rules send the balancer's traffic to). Frames
    /// arriving on the interface's other queues have no socket to go to and stay with the
    /// kernel.
    pub fn open_queues(
        ifname: &str,
        queues: &[u32],
        opts: AfXdpOptions,
    ) -> io::Result<Vec<AfXdpPort>> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("af_xdp:{ifname}: {what}"),
            )
        };
        let Some(&highest) = queues.iter().max() else {
            return Err(bad("needs at least one queue"));
        };
        if queues
            .iter()
            .enumerate()
            .any(|(i, q)| queues[..i].contains(q))
        {
            return Err(bad("a queue id is listed twice"));
        }
        if highest >= MAX_QUEUE_ID {
            return Err(bad("queue ids must be below 4096"));
        }
        if !opts.ring_size.is_power_of_two() || opts.ring_size < 64 {
            return Err(bad("ring_size must be a power of two >= 64"));
        }
        if opts.frames < opts.ring_size {
            return Err(bad("frames must be at least ring_size"));
        }
        // The socket map is indexed by receive queue id: sized to the highest one bound.
        let xdp = Arc::new(XdpAttachment::attach(
            ifname,
            highest + 1,
            opts.max_owned,
            opts.mode,
        )?);
        queues
            .iter()
            .map(|&q| {
                AfXdpPort::open_queue(ifname, q, &opts, xdp.clone())
                    .map_err(|e| context(e, format!("af_xdp:{ifname}/q{q}")))
            })
            .collect()
    }

    fn open_queue(
        ifname: &str,
        queue: u32,
        opts: &AfXdpOptions,
        xdp: Arc<XdpAttachment>,
    ) -> io::Result<AfXdpPort> {
        let len = (opts.frames as usize)
            .checked_mul(FRAME_SIZE as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "UMEM too large"))?;
        let area = Area::new(len)?;
        let config = UmemConfig {
            fill_size: opts.ring_size,
            complete_size: opts.ring_size,
            frame_size: FRAME_SIZE,
            headroom: HEADROOM as u32,
            flags: 0,
        };
        // SAFETY: the area is page aligned (fresh mmap), `frames * FRAME_SIZE` bytes long, and it
        // outlives the UMEM: both are fields of the port and `area` is dropped after `_umem`.
        let umem = unsafe { Umem::new(config, NonNull::slice_from_raw_parts(area.ptr, len)) }
            .map_err(|e| context(errno(e), "registering the UMEM".into()))?;
        let name = std::ffi::CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with NUL"))?;
        let mut info = IfInfo::invalid();
        info.from_name(&name).map_err(errno)?;
        info.set_queue(queue);
        let sock = Socket::with_shared(&info, &umem).map_err(errno)?;
        let mut device = umem.fq_cq(&sock).map_err(errno)?;
        let mut bind_flags = SocketConfig::XDP_BIND_NEED_WAKEUP;
        if opts.force_copy || !xdp.native() {
            bind_flags |= SocketConfig::XDP_BIND_COPY;
        } else if opts.require_zero_copy {
            bind_flags |= SocketConfig::XDP_BIND_ZEROCOPY;
        }
        let ring = NonZeroU32::new(opts.ring_size);
        let user = umem
            .rx_tx(
                &sock,
                &SocketConfig {
                    rx_size: ring,
                    tx_size: ring,
                    bind_flags,
                },
            )
            .map_err(errno)?;
        let rx = user.map_rx().map_err(errno)?;
        let tx = user.map_tx().map_err(errno)?;

        // Prefill before binding so the first frames find buffers.
        let mut free: Vec<u64> = Vec::with_capacity(opts.frames as usize);
        free.extend(
            (0..u64::from(opts.frames))
                .rev()
                .map(|i| i * u64::from(FRAME_SIZE)),
        );
        refill(&mut device, &mut free, 1);

        let mut tries = 0;
        loop {
            match umem.bind(&user).map_err(errno) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < BIND_RETRIES => {
                    tries += 1;
                    std::thread::sleep(BIND_PAUSE);
                }
                Err(e) => return Err(context(e, "binding the AF_XDP socket".into())),
            }
        }
        let fd = user.as_raw_fd();
        xdp.set_socket(queue, fd)?;
        let busy_poll = opts
            .busy_poll
            .map_or_else(BusyPollState::default, |b| set_busy_poll(fd, b));
        let zero_copy = query_zero_copy(fd)?;
        // A whole burst in one copy-mode send (zero copy sends from the driver, whatever this
        // says).
        let tx_batch = if zero_copy {
            KERNEL_TX_BATCH
        } else {
            set_tx_budget(fd, (MAX_BURST as u32).min(opts.ring_size)).unwrap_or(KERNEL_TX_BATCH)
        };
        Ok(AfXdpPort {
            zero_copy,
            busy_poll,
            tx_batch,
            tx_kicks: 0,
            rx,
            tx,
            device,
            _umem: umem,
            area,
            free,
            seen: vec![0; opts.frames as usize].into_boxed_slice(),
            stamp: 0,
            refill_batch: REFILL_BATCH.min(opts.frames as usize / 4).max(1),
            xdp,
            fd,
            ifname: ifname.to_owned(),
            queue,
            ring_size: opts.ring_size,
            stats: PortStats::default(),
            to_host_dropped: 0,
        })
    }

    /// Replaces the addresses whose frames the XDP program sends to userspace (shared by all
    /// queues of the interface); all other frames go to the kernel.
    pub fn set_owned(&self, addrs: &[IpAddr]) -> io::Result<()> {
        self.xdp.set_owned(addrs)
    }

    /// Replaces the owned addresses and the nat backends whose frames (replies to clients) must
    /// reach the balancer although they are not addressed to it.
    pub fn set_owned_and_sources(&self, addrs: &[IpAddr], sources: &[IpAddr]) -> io::Result<()> {
        self.xdp.set_owned_and_sources(addrs, sources)
    }

    /// A handle on the interface's owned-address set that outlives moving the ports to workers.
    pub fn owned_handle(&self) -> OwnedAddrs {
        OwnedAddrs(self.xdp.clone())
    }

    /// True when the program runs in native (driver) mode, false in generic mode.
    pub fn native(&self) -> bool {
        self.xdp.native()
    }

    /// True when the kernel bound the socket in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Which busy-poll options the socket accepted.
    pub fn busy_poll(&self) -> &BusyPollState {
        &self.busy_poll
    }

    /// Frames one copy-mode `sendto` takes from the transmit ring: a whole burst
    /// ([`MAX_BURST`], bounded by the ring) where the kernel takes `XDP_MAX_TX_SKB_BUDGET`
    /// (Linux 6.17+), else the kernel's fixed 32, so a burst of 64 then needs two sends.
    pub fn tx_batch(&self) -> u32 {
        self.tx_batch
    }

    /// `sendto` calls made so far to have the kernel transmit (the flushes' kicks and those of a
    /// full transmit ring).
    pub fn tx_kicks(&self) -> u64 {
        self.tx_kicks
    }

    /// Frames the pipeline gave `ToHost` that had already been redirected to us: dropped, since
    /// AF_XDP cannot hand a frame back to the kernel.
    pub fn to_host_dropped(&self) -> u64 {
        self.to_host_dropped
    }

    /// Moves transmitted chunks from the completion ring to the free list.
    fn reclaim(&mut self) {
        let mut done = self.device.complete(self.ring_size);
        while let Some(addr) = done.read() {
            self.free.push(addr & !u64::from(FRAME_SIZE - 1));
        }
        done.release();
    }
}

/// Gives the kernel as many free chunks as the fill ring takes, once at least `batch` are free
/// (and, in `need_wakeup` mode, kicks the driver if it asks for it).
fn refill(device: &mut DeviceQueue, free: &mut Vec<u64>, batch: usize) {
    if free.len() < batch.max(1) {
        return;
    }
    let mut total = 0;
    // Twice at most: a reservation counts free slots by the consumer index last read and reads
    // it again only once that count is used up, which a first pass that fills it does.
    for _ in 0..2 {
        let mut fill = device.fill(u32::try_from(free.len()).unwrap_or(u32::MAX));
        let cap = fill.capacity() as usize;
        let start = free.len().saturating_sub(cap);
        let put = fill.insert(free[start..].iter().copied()) as usize;
        fill.commit();
        drop(fill);
        free.drain(start..start + put);
        total += put;
        if put == 0 || free.is_empty() {
            break;
        }
    }
    if total > 0 && device.needs_wakeup() {
        device.wake();
    }
}

/// Sets the busy-poll options on `fd`, each on its own: a kernel without one (before 5.11) or a
/// budget above what an unprivileged socket may ask for refuses it, and the others still count.
fn set_busy_poll(fd: RawFd, b: BusyPoll) -> BusyPollState {
    let mut state = BusyPollState::default();
    for (name, opt, value) in [
        ("SO_PREFER_BUSY_POLL", SO_PREFER_BUSY_POLL, 1),
        (
            "SO_BUSY_POLL",
            SO_BUSY_POLL,
            b.usecs.min(i32::MAX as u32) as libc::c_int,
        ),
        (
            "SO_BUSY_POLL_BUDGET",
            SO_BUSY_POLL_BUDGET,
            b.budget.min(i32::MAX as u32) as libc::c_int,
        ),
    ] {
        // SAFETY: `value` is a c_int that outlives the call, and its size is what we pass.
        let ret = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if ret == 0 {
            state.active |= opt == SO_PREFER_BUSY_POLL;
        } else {
            state
                .refused
                .push(format!("{name}: {}", io::Error::last_os_error()));
        }
    }
    state
}

/// Asks the kernel to send up to `budget` frames per copy-mode `sendto` on `fd` (whose transmit
/// ring is set up): `Some(budget)` when it took it; `None` on kernels before 6.17 (no such
/// option) or a budget outside what it allows (below 32, above the ring's size).
fn set_tx_budget(fd: RawFd, budget: u32) -> Option<u32> {
    // SAFETY: `budget` is a u32 that outlives the call, and its size is what we pass.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    (ret == 0).then_some(budget)
}

/// Drives the driver's NAPI from this thread (busy polling) or answers a fill-ring wakeup
/// request: one non-blocking, zero-length `recvfrom` on our socket.
fn kick_rx(fd: RawFd) {
    // SAFETY: a zero-length, non-blocking receive on our own socket with no buffer and no
    // address: the kernel writes nothing.
    unsafe {
        libc::recvfrom(
            fd,
            std::ptr::null_mut(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
    }
}

/// Asks the kernel whether `fd` was bound in zero-copy mode.
fn query_zero_copy(fd: RawFd) -> io::Result<bool> {
    let mut flags: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `struct xdp_options` is one u32; `flags` and `len` are valid for writes.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_OPTIONS,
            (&mut flags as *mut u32).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags & XDP_OPTIONS_ZEROCOPY != 0)
}

/// Shared handle on an interface's owned-address map (see [`AfXdpPort::owned_handle`]).
#[derive(Clone)]
pub struct OwnedAddrs(Arc<XdpAttachment>);

impl OwnedAddrs {
    /// Replaces the owned addresses, as [`AfXdpPort::set_owned`].
    pub fn set(&self, addrs: &[IpAddr]) -> io::Result<()> {
        self.0.set_owned(addrs)
    }

    /// Replaces the owned addresses and the nat backends, as
    /// [`AfXdpPort::set_owned_and_sources`] (the control plane keeps it current across reloads).
    pub fn set_with_sources(&self, addrs: &[IpAddr], sources: &[IpAddr]) -> io::Result<()> {
        self.0.set_owned_and_sources(addrs, sources)
    }
}

impl Port for AfXdpPort {
    fn name(&self) -> String {
        format!("af_xdp:{}/q{}", self.ifname, self.queue)
    }

    fn rx_burst(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut PacketBuf<'_>) -> Verdict,
    ) -> io::Result<usize> {
        self.reclaim();
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        let chunk_mask = !u64::from(FRAME_SIZE - 1);
        let mut n = 0usize;
        {
            let mut rx = self.rx.receive(max);
            let mut tx = self.tx.transmit(rx.capacity());
            while let Some(desc) = rx.read() {
                n += 1;
                let chunk = desc.addr & chunk_mask;
                let head = (desc.addr - chunk) as usize;
                let Some(frame) = self.area.chunk_mut(chunk) else {
                    // Not a chunk of ours: nothing to recycle.
                    continue;
                };
                let mut pkt = PacketBuf::new(frame, head, desc.len as usize);
                let v = f(&mut pkt);
                let counts = (&mut self.stats, &mut self.to_host_dropped);
                let at = (pkt.head(), pkt.len());
                if settle(&mut tx, counts, &mut self.free, chunk, at, v) {
                    continue;
                }
                // Out of reserved slots: a new reservation reads the kernel's consumer index
                // again (see `rx_batch`).
                tx.commit();
                drop(tx);
                tx = self.tx.transmit(rx.capacity().max(1));
                let counts = (&mut self.stats, &mut self.to_host_dropped);
                if !settle(&mut tx, counts, &mut self.free, chunk, at, v) {
                    let counts = (&mut self.stats, &mut self.to_host_dropped);
                    discard(counts, &mut self.free, chunk, v);
                }
            }
            tx.commit();
            rx.release();
        }
        self.stats.rx += n as u64;
        refill(&mut self.device, &mut self.free, self.refill_batch);
        if n == 0 && (self.busy_poll.active || self.device.needs_wakeup()) {
            // Nothing arrived: let this thread run the driver's receive (busy polling), or
            // wake a driver that stopped for lack of fill-ring entries.
            kick_rx(self.fd);
        }
        Ok(n)
    }

    fn rx_batch(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut [PacketBuf<'_>], &mut [Verdict]),
    ) -> io::Result<usize> {
        self.reclaim();
        let max = max.min(MAX_BURST);
        let chunk_mask = !u64::from(FRAME_SIZE - 1);
        self.stamp = self.stamp.wrapping_add(1);
        let mut burst = Burst {
            frames: [(0, 0, 0); MAX_BURST],
            n: 0,
        };
        let mut got = 0usize;
        {
            let mut rx = self.rx.receive(max as u32);
            while let Some(desc) = rx.read() {
                got += 1;
                let chunk = desc.addr & chunk_mask;
                // Below FRAME_SIZE: the mask kept the rest.
                let head = (desc.addr - chunk) as u32;
                // A descriptor we cannot take has no chunk of ours to recycle.
                burst.take(
                    chunk,
                    head,
                    desc.len,
                    self.area.len,
                    &mut self.seen,
                    self.stamp,
                );
            }
            rx.release();
        }
        self.stats.rx += got as u64;
        let n = burst.n;
        if n > 0 {
            let mut verdicts = [UNSET; MAX_BURST];
            {
                let mut pkts: [PacketBuf<'_>; MAX_BURST] =
                    [const { PacketBuf::empty() }; MAX_BURST];
                self.area.bufs(&burst.frames[..n], &mut pkts[..n]);
                f(&mut pkts[..n], &mut verdicts[..n]);
                for (fr, p) in burst.frames.iter_mut().zip(&pkts[..n]) {
                    // Inside the chunk (FRAME_SIZE bytes): the casts keep every bit.
                    (fr.1, fr.2) = (p.head() as u32, p.len() as u32);
                }
            }
            let mut i = 0;
            let mut kicked = false;
            while i < n {
                // A reservation counts free slots by the consumer index last read, and reads it
                // again only when that count is 0: a pass that ends short of slots has used up
                // that count, so the next one sees what the kernel has sent since.
                let mut tx = self.tx.transmit((n - i) as u32);
                let start = i;
                while i < n {
                    let counts = (&mut self.stats, &mut self.to_host_dropped);
                    let ((chunk, head, len), v) = (burst.frames[i], verdicts[i]);
                    let at = (head as usize, len as usize);
                    if !settle(&mut tx, counts, &mut self.free, chunk, at, v) {
                        break;
                    }
                    i += 1;
                }
                // One commit per pass (one per burst when the ring has room); the kick, if the
                // kernel wants one, comes with `flush`.
                tx.commit();
                drop(tx);
                if i < n && i == start {
                    if kicked {
                        // Still full after the kernel was asked to send: the rest is dropped.
                        for (frame, &v) in burst.frames[i..n].iter().zip(&verdicts[i..n]) {
                            let counts = (&mut self.stats, &mut self.to_host_dropped);
                            discard(counts, &mut self.free, frame.0, v);
                        }
                        break;
                    }
                    // Full by the kernel's own count: have it send, take its completions back,
                    // and try once more.
                    // An error only says the kernel is busy, which the one retry covers.
                    let _ = kick_tx(self.fd);
                    self.tx_kicks += 1;
                    self.reclaim();
                    kicked = true;
                }
            }
        }
        refill(&mut self.device, &mut self.free, self.refill_batch);
        if got == 0 && (self.busy_poll.active || self.device.needs_wakeup()) {
            kick_rx(self.fd);
        }
        Ok(got)
    }

    fn flush(&mut self) -> io::Result<()> {
        for _ in 0..MAX_KICKS {
            // Busy polling drives the driver's transmit from here too, asked or not.
            if self.tx.pending() == 0 || !(self.tx.needs_wakeup() || self.busy_poll.active) {
                break;
            }
            self.tx_kicks += 1;
            let Err(e) = kick_tx(self.fd) else {
                continue;
            };
            match e.raw_os_error() {
                // More pending (copy mode sends a batch per call) or the driver is busy.
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                // Completion ring or skb allocation full: try again on the next flush.
                Some(libc::EBUSY) | Some(libc::ENOBUFS) => break,
                _ => return Err(context(e, self.name())),
            }
        }
        self.reclaim();
        Ok(())
    }

    fn tx_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.reclaim();
        let Some(chunk) = self.free.pop() else {
            self.stats.tx_dropped += 1;
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let placed = self
            .area
            .chunk_mut(chunk)
            .and_then(|c| c.get_mut(HEADROOM..HEADROOM + frame.len()))
            .map(|dst| dst.copy_from_slice(frame))
            .is_some();
        let desc = XdpDesc {
            addr: chunk + HEADROOM as u64,
            len: frame.len() as u32,
            options: 0,
        };
        let sent = placed && {
            let mut tx = self.tx.transmit(1);
            let ok = tx.insert_once(desc);
            tx.commit();
            ok
        };
        if sent {
            self.stats.tx += 1;
            Ok(())
        } else {
            self.free.push(chunk);
            self.stats.tx_dropped += 1;
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.fd)
    }

    fn stats(&self) -> PortStats {
        PortStats {
            rx_dropped: kernel_rx_drops(self.fd),
            ..self.stats
        }
    }
}

/// Frames the kernel dropped on their way to socket `fd` (cumulative): `rx_dropped` (no room,
/// e.g. an empty fill ring) plus `rx_ring_full`. 0 when it cannot be read.
fn kernel_rx_drops(fd: RawFd) -> u64 {
    // struct xdp_statistics: rx_dropped, rx_invalid_descs, tx_invalid_descs, rx_ring_full,
    // rx_fill_ring_empty_descs, tx_ring_empty_descs; older kernels fill only a prefix.
    let mut st = [0u64; 6];
    let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
    // SAFETY: `st` is valid for `len` bytes of writes and the kernel writes at most that.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            SOL_XDP,
            XDP_STATISTICS,
            st.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return 0;
    }
    st[0] + if len as usize >= 4 * 8 { st[3] } else { 0 }
}

//! DPDK port (cargo feature `dpdk`): any DPDK poll-mode driver, physical (Intel, Mellanox, ...)
//! or virtual (`net_memif`, `net_af_packet`, `net_tap`, `net_af_xdp`), one receive and transmit
//! queue per worker with RSS spreading flows over the queues.
//!
//! Zero copy: the pipeline works on the receive mbuf's own data buffer (a [`PacketBuf`] over
//! the whole buffer, the frame at the mbuf's data offset, DPDK's 128 bytes of headroom in front);
//! a `Tx` verdict transmits that same mbuf with its bounds moved to wherever the pipeline left
//! the frame; everything else goes back to the pool in one bulk free per burst. Only frames
//! another worker hands over ([`Port::tx_frame`]) are copied, into a fresh mbuf. A frame that
//! leaves by another DPDK device of the same worker (a two-armed balancer) is not copied either:
//! its port lends the mbuf ([`Port::take_lent`]) and the other device's port transmits it
//! ([`Port::tx_lent`]); its driver frees it to the pool it came from, so every device's pool
//! lives until the last device is closed.
//!
//! EAL is initialised once per process ([`DpdkPort::open`] does it on first use) and torn down
//! by [`eal_cleanup`] once every port is closed; a process cannot initialise it again after that.
//! EAL runs `--in-memory` (no hugepage or runtime files left behind, no secondary processes) and
//! on one lcore unless the arguments say otherwise; the worker threads are not EAL lcores, each
//! registers itself on its first burst to get a mempool cache.
//!
//! DPDK has no host stack to hand frames to: a `ToHost` verdict drops the frame and counts it
//! ([`DpdkPort::to_host_dropped`]). Frames larger than one mbuf (2048 bytes of data) arrive in
//! several segments and are dropped and counted ([`DpdkPort::multi_seg_dropped`]).

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{Lent, Port, PortStats, UNSET};
use crate::packet::PacketBuf;
use crate::pipeline::Verdict;

/// The bindgen output for `dpdk/bindings.h` (the shim and a few EAL and ethdev calls).
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::all
)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/dpdk.rs"));
}

/// Most frames one `rx_burst` takes from the driver.
pub const MAX_BURST: usize = 64;

/// Frames queued for transmission before `rx_burst` flushes on its own.
const TX_QUEUE: usize = 4 * MAX_BURST;

/// Extra `rte_eth_tx_burst` calls for what the driver did not take at once (its ring was full);
/// what is left after them is freed and counted in `tx_dropped`.
const TX_RETRIES: u32 = 8;

/// Frame bytes of an mbuf at the default MTU: DPDK's default data room.
const MBUF_FRAME: u16 = 2048;

/// Data room of each mbuf for `mtu` (0: the device's default): room for the largest frame
/// (Ethernet header, two VLAN tags, FCS) after the headroom, so every received frame is one
/// segment, and never less than DPDK's default.
fn mbuf_data_room(mtu: u16) -> u16 {
    let frame = (u32::from(mtu) + 26).next_multiple_of(128);
    let frame = frame.max(u32::from(MBUF_FRAME));
    u16::try_from(frame + ffi::RTE_PKTMBUF_HEADROOM).unwrap_or(u16::MAX)
}

/// Per-lcore mempool cache size (DPDK's upper limit is 512).
const POOL_CACHE: u32 = 256;

/// How to open a DPDK port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpdkOptions {
    /// Extra EAL arguments (`-l 2`, `--vdev ...`, `-a 0000:01:00.0`, ...), after ours.
    pub eal_args: Vec<String>,
    /// The ethdev name: a PCI address (`0000:01:00.0`) or a virtual device's name (`net_memif0`).
    pub device: String,
    /// When set, `device` is a virtual device created with these arguments
    /// (`role=server,socket=/run/lb.sock`) when the port opens and removed when it closes.
    pub vdev_args: Option<String>,
    /// Receive descriptors per queue (the driver may adjust it).
    pub rx_descriptors: u16,
    /// Transmit descriptors per queue (the driver may adjust it).
    pub tx_descriptors: u16,
    /// Mbufs in the device's pool, shared by its queues.
    pub mempool_size: u32,
    /// Back EAL's memory with hugepages; false runs with `--no-huge` (ordinary pages, slower,
    /// enough for virtual devices).
    pub hugepages: bool,
    /// The MTU to configure (jumbo frames: up to 9216); 0 leaves the device's own (1500 for
    /// most). The pool's mbufs are sized so a frame of this MTU fits one.
    pub mtu: u16,
}

impl Default for DpdkOptions {
    fn default() -> Self {
        DpdkOptions {
            eal_args: Vec::new(),
            device: String::new(),
            vdev_args: None,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mempool_size: 16383,
            hugepages: true,
            mtu: 0,
        }
    }
}

/// Counters of the whole device, from `rte_eth_stats_get`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames received.
    pub ipackets: u64,
    /// Frames transmitted.
    pub opackets: u64,
    /// Frames the hardware dropped for want of a free descriptor.
    pub imissed: u64,
    /// Erroneous received frames.
    pub ierrors: u64,
    /// Failed transmissions.
    pub oerrors: u64,
    /// Receive mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// Queue `queue`'s receive-interrupt fd, made non-blocking (its wake-ups are read away after a
/// sleep); `None` when the driver gives none.
fn rx_intr_fd(port: u16, queue: u16) -> Option<RawFd> {
    // SAFETY: a started port configured with receive interrupts.
    let fd = unsafe { ffi::lb_rx_intr_fd(port, queue) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fcntl on an fd DPDK owns for the port's life; only O_NONBLOCK is added.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return None;
        }
    }
    Some(fd)
}

/// EAL's life in this process.
enum Eal {
    Uninit,
    Ready,
    Failed(String),
    CleanedUp,
}

static EAL: Mutex<Eal> = Mutex::new(Eal::Uninit);

/// Devices open in this process: EAL is only torn down when none is.
static OPEN_DEVICES: AtomicUsize = AtomicUsize::new(0);

/// Pools of closed devices, freed when the last device closes: a device may still hold mbufs
/// of another device's pool in its transmit ring (frames lent across interfaces), which its
/// close returns to that pool. Addresses of `rte_mempool`s.
static CLOSED_POOLS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn error(what: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("dpdk: {what}"))
}

/// DPDK's words for a (positive) errno value.
fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    let s = unsafe { CStr::from_ptr(ffi::rte_strerror(errno)) };
    s.to_string_lossy().into_owned()
}

/// An io::Error for a DPDK call that returned `ret` (a negative errno) or set rte_errno.
fn dpdk_error(what: &str, ret: i32) -> io::Error {
    let errno = if ret < 0 {
        -ret
    } else {
        // SAFETY: reads the calling thread's rte_errno.
        unsafe { ffi::lb_errno() }
    };
    io::Error::new(
        io::Error::from_raw_os_error(errno).kind(),
        format!("dpdk: {what}: {}", strerror(errno)),
    )
}

/// The EAL argument vector: ours first, then the operator's, which may override them. Ours: a
/// file prefix of our own (`lb-<pid>`: never the config of another DPDK process on the host),
/// hugepage files unlinked as soon as they are mapped (`--no-huge` without hugepages), one lcore.
/// The shared config stays on (unlike `--in-memory`) because some drivers, memif among them,
/// need EAL's multi-process channel; [`eal_cleanup`] removes its files.
fn eal_argv(opts: &DpdkOptions, first_cpu: usize, pid: u32) -> Vec<String> {
    let has = |names: &[&str]| {
        opts.eal_args.iter().any(|a| {
            names
                .iter()
                .any(|n| a == n || a.starts_with(&format!("{n}=")))
        })
    };
    let mut argv = vec!["lb".to_string()];
    let in_memory = has(&["--in-memory", "--no-shconf"]);
    if !in_memory && !has(&["--file-prefix", "--proc-type"]) {
        argv.push(format!("--file-prefix=lb-{pid}"));
    }
    if !opts.hugepages {
        if !has(&["--no-huge"]) {
            argv.push("--no-huge".into());
        }
    } else if !in_memory && !has(&["--huge-unlink"]) {
        argv.push("--huge-unlink".into());
    }
    if !has(&["-l", "-c", "--lcores"]) {
        argv.extend(["-l".into(), first_cpu.to_string()]);
    }
    if !has(&["--no-telemetry", "--telemetry"]) {
        argv.push("--no-telemetry".into());
    }
    argv.extend(opts.eal_args.iter().cloned());
    argv
}

/// Initialises EAL on first use; later calls reuse it (with its first arguments).
fn eal_init(opts: &DpdkOptions) -> io::Result<()> {
    let mut eal = EAL.lock().unwrap_or_else(|e| e.into_inner());
    match &*eal {
        Eal::Ready => return Ok(()),
        Eal::Failed(why) => return Err(error(format!("EAL failed to start earlier: {why}"))),
        Eal::CleanedUp => {
            return Err(error(
                "EAL was cleaned up; it cannot start again in this process",
            ))
        }
        Eal::Uninit => {}
    }
    let saved = affinity();
    let first_cpu = saved
        .as_ref()
        .and_then(|set| (0..libc::CPU_SETSIZE as usize).find(|&c| cpu_isset(set, c)))
        .unwrap_or(0);
    let argv = eal_argv(opts, first_cpu, std::process::id());
    let cargs: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| error("an EAL argument contains a NUL byte"))?;
    // rte_eal_init keeps pointers into argv (and may permute it): the strings live for the rest
    // of the process.
    let cargs: &'static [CString] = Vec::leak(cargs);
    let ptrs: &'static mut [*mut libc::c_char] = Vec::leak(
        cargs
            .iter()
            .map(|c| c.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect(),
    );
    let argc = i32::try_from(cargs.len()).map_err(|_| error("too many EAL arguments"))?;
    // SAFETY: argv holds `argc` valid NUL-terminated strings followed by NULL, leaked so they
    // outlive EAL; EAL is initialised at most once (the mutex and the state above).
    let ret = unsafe { ffi::rte_eal_init(argc, ptrs.as_mut_ptr()) };
    // EAL pins the calling thread to its main lcore; the caller (lb's main thread, whose
    // control threads inherit its mask) keeps the CPUs it had.
    if let Some(set) = saved {
        set_affinity(&set);
    }
    if ret < 0 {
        let e = dpdk_error(&format!("EAL init with {}", argv.join(" ")), ret);
        // EAL's own lines above say why; the usual cause is memory.
        let e = io::Error::other(format!(
            "{e} (EAL's messages above say why; with hugepages, reserve them in \
             /proc/sys/vm/nr_hugepages and mount hugetlbfs, or set hugepages = false)"
        ));
        // A failed init leaves its runtime directory behind; remove it when the prefix is the
        // one we chose (ours alone: another primary may be using a prefix given to us).
        let ours = format!("--file-prefix=lb-{}", std::process::id());
        if argv.contains(&ours) {
            // SAFETY: EAL sets the runtime directory's path before anything that can fail late.
            let dir = unsafe { CStr::from_ptr(ffi::rte_eal_get_runtime_dir()) }
                .to_string_lossy()
                .into_owned();
            if dir.ends_with(&ours["--file-prefix=".len()..]) {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        *eal = Eal::Failed(e.to_string());
        return Err(e);
    }
    *eal = Eal::Ready;
    Ok(())
}

fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of its size; pid 0 is the calling thread.
    let ret = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    (ret == 0).then_some(set)
}

fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of_val(set), set);
    }
}

fn cpu_isset(set: &libc::cpu_set_t, cpu: usize) -> bool {
    // SAFETY: CPU_ISSET only reads the set; `cpu` is below CPU_SETSIZE (the caller's range).
    unsafe { libc::CPU_ISSET(cpu, set) }
}

/// Tears EAL down (`rte_eal_cleanup`) once every DPDK port of the process is closed. Call it
/// once before exit; afterwards no DPDK port can open in this process. A no-op when EAL never
/// started.
pub fn eal_cleanup() -> io::Result<()> {
    let mut eal = EAL.lock().unwrap_or_else(|e| e.into_inner());
    if !matches!(*eal, Eal::Ready) {
        return Ok(());
    }
    let open = OPEN_DEVICES.load(Ordering::SeqCst);
    if open != 0 {
        return Err(error(format!(
            "EAL cleanup with {open} device(s) still open"
        )));
    }
    // SAFETY: EAL is initialised; the string is EAL's own, copied before cleanup.
    let runtime_dir = unsafe { CStr::from_ptr(ffi::rte_eal_get_runtime_dir()) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: EAL is initialised and no device or pool of ours is left.
    let ret = unsafe { ffi::rte_eal_cleanup() };
    *eal = Eal::CleanedUp;
    if ret < 0 {
        return Err(dpdk_error("EAL cleanup", ret));
    }
    // EAL leaves its shared config (config, fbarray_*, mp_socket) in the runtime directory of
    // our file prefix; we are its only (primary) process, so it goes with us.
    if !runtime_dir.is_empty() {
        match std::fs::remove_dir_all(&runtime_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(format!("removing {runtime_dir}: {e}"))),
        }
    }
    Ok(())
}

/// One started ethdev with its mempool; stopped, closed (and a virtual device removed) when the
/// last queue's port is dropped.
struct Device {
    port_id: u16,
    pool: *mut ffi::rte_mempool,
    name: String,
    vdev: bool,
    driver: String,
}

// SAFETY: the mempool pointer is used through DPDK's thread-safe pool operations; the ethdev
// calls made on `Device` (stats, stop, close) are allowed from any thread.
unsafe impl Send for Device {}
// SAFETY: as above; `Device` has no interior state of its own.
unsafe impl Sync for Device {}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the port was started by us; every queue's port (and with it every mbuf it held)
        // is gone, since they hold the Arc this drop ends.
        unsafe {
            ffi::rte_eth_dev_stop(self.port_id);
            ffi::rte_eth_dev_close(self.port_id);
        }
        if self.vdev {
            if let Ok(name) = CString::new(self.name.as_str()) {
                // SAFETY: both arguments are valid NUL-terminated strings.
                unsafe {
                    ffi::rte_eal_hotplug_remove(c"vdev".as_ptr(), name.as_ptr());
                }
            }
        }
        // The pool goes when no device is left that could hold one of its mbufs.
        let mut closed = CLOSED_POOLS.lock().unwrap_or_else(|e| e.into_inner());
        closed.push(self.pool as usize);
        if OPEN_DEVICES.fetch_sub(1, Ordering::SeqCst) == 1 {
            for pool in closed.drain(..) {
                // SAFETY: every device that drew from or transmitted into our pools is closed
                // (this was the last), so no mbuf of them is in use; each pool is listed once.
                unsafe { ffi::rte_mempool_free(pool as *mut ffi::rte_mempool) };
            }
        }
    }
}

/// A received mbuf one DPDK port lends another ([`Lent`]); freed when dropped.
pub struct Mbuf(*mut ffi::rte_mbuf);

impl Mbuf {
    /// Takes the mbuf out without freeing it.
    fn into_raw(self) -> *mut ffi::rte_mbuf {
        let m = self.0;
        std::mem::forget(self);
        m
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        let mut m = self.0;
        // SAFETY: the mbuf is ours alone (received, its bounds set, neither transmitted nor
        // freed), and this is its only free.
        unsafe { ffi::lb_free_bulk(&mut m, 1) };
    }
}

/// A queue's receive interrupt, between [`Port::wait_fd`] and the next receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interrupt {
    /// Not enabled: the busy path, or a queue that never slept.
    Off,
    /// Enabled by `wait_fd` until the next receive disables it and reads its wake-up away.
    Armed,
    /// The driver has no interrupt switch: the fd is readable whenever frames wait (net_tap's
    /// queue fd), so nothing is enabled, disabled or read away, ever.
    Level,
}

/// One queue of a DPDK device, for one worker.
pub struct DpdkPort {
    /// Received mbufs of the current burst (the single-segment ones at the front, in order).
    rx: [*mut ffi::rte_mbuf; MAX_BURST],
    /// Mbufs queued for transmission, their frame bounds set.
    tx: Mbufs<TX_QUEUE>,
    /// Mbufs of the current burst to return to the pool.
    free: Mbufs<MAX_BURST>,
    /// Mbufs of the last burst lent to another port ([`Verdict::Lent`]), their bounds set, and
    /// how many of them [`Port::take_lent`] took; the rest are freed by the next receive.
    lent: Mbufs<MAX_BURST>,
    lent_taken: usize,
    queue: u16,
    registered: bool,
    stats: PortStats,
    to_host_dropped: u64,
    multi_seg_dropped: u64,
    /// The queue's receive-interrupt fd, where the driver has them (see [`Port::wait_fd`]).
    intr_fd: Option<RawFd>,
    /// Where the receive interrupt stands (see [`Interrupt`]).
    interrupt: Cell<Interrupt>,
    device: Arc<Device>,
}

// SAFETY: the mbuf pointers are ours alone (received from or allocated for this queue, not yet
// transmitted or freed); the queue is used by one thread at a time (`&mut self`), which is what
// DPDK requires of a queue.
unsafe impl Send for DpdkPort {}

impl DpdkPort {
    /// Initialises EAL if this process has not yet, creates the virtual device if `opts` asks,
    /// and starts `opts.device` with `queues` receive/transmit queues: one port per queue.
    pub fn open(opts: &DpdkOptions, queues: u16) -> io::Result<Vec<DpdkPort>> {
        if queues == 0 {
            return Err(error("a port needs at least one queue"));
        }
        eal_init(opts)?;
        let name = CString::new(opts.device.as_str())
            .map_err(|_| error("the device name contains a NUL byte"))?;
        if let Some(args) = &opts.vdev_args {
            let args = CString::new(args.as_str())
                .map_err(|_| error("the vdev arguments contain a NUL byte"))?;
            // SAFETY: valid NUL-terminated strings; EAL is initialised.
            let ret =
                unsafe { ffi::rte_eal_hotplug_add(c"vdev".as_ptr(), name.as_ptr(), args.as_ptr()) };
            if ret < 0 {
                return Err(dpdk_error(
                    &format!("creating virtual device {}", opts.device),
                    ret,
                ));
            }
        }
        let remove_vdev = || {
            if opts.vdev_args.is_some() {
                // SAFETY: valid NUL-terminated strings; the device was added above.
                unsafe { ffi::rte_eal_hotplug_remove(c"vdev".as_ptr(), name.as_ptr()) };
            }
        };
        let mut port_id = 0u16;
        // SAFETY: `name` is a valid string and `port_id` is valid for writes.
        let ret = unsafe { ffi::rte_eth_dev_get_port_by_name(name.as_ptr(), &mut port_id) };
        if ret != 0 {
            remove_vdev();
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "dpdk: no device {:?} (probed ones are named by PCI address or vdev name; \
                     check the EAL arguments and that the NIC is bound to a DPDK driver)",
                    opts.device
                ),
            ));
        }
        let pool_name = CString::new(format!("lb_pool_{port_id}")).map_err(|_| error("pool"))?;
        let cache = if opts.mempool_size >= 2 * POOL_CACHE {
            POOL_CACHE
        } else {
            0
        };
        // SAFETY: a valid name; sizes are plain numbers DPDK checks.
        let pool = unsafe {
            ffi::rte_pktmbuf_pool_create(
                pool_name.as_ptr(),
                opts.mempool_size,
                cache,
                0,
                mbuf_data_room(opts.mtu),
                ffi::SOCKET_ID_ANY,
            )
        };
        if pool.is_null() {
            let e = dpdk_error(
                &format!("creating a pool of {} mbufs", opts.mempool_size),
                0,
            );
            remove_vdev();
            return Err(e);
        }
        OPEN_DEVICES.fetch_add(1, Ordering::SeqCst);
        let mut device = Device {
            port_id,
            pool,
            name: opts.device.clone(),
            vdev: opts.vdev_args.is_some(),
            driver: String::new(),
        };
        // SAFETY: plain data; zeroed is valid.
        let mut info: ffi::lb_port_info = unsafe { std::mem::zeroed() };
        // SAFETY: `pool` is a live mempool and `info` is valid for writes.
        let ret = unsafe {
            ffi::lb_port_start(
                port_id,
                queues,
                opts.rx_descriptors,
                opts.tx_descriptors,
                opts.mtu,
                pool,
                &mut info,
            )
        };
        if ret == -libc::ERANGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "dpdk: {} takes an MTU of at most {}, not {}",
                    opts.device, info.max_mtu, opts.mtu
                ),
            ));
        }
        if ret != 0 {
            // Dropping `device` closes the port, removes the vdev and frees the pool.
            return Err(dpdk_error(
                &format!("starting {} with {queues} queues", opts.device),
                ret,
            ));
        }
        // SAFETY: the shim wrote a NUL-terminated name into the array.
        device.driver = unsafe { CStr::from_ptr(info.driver.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let device = Arc::new(device);
        Ok((0..queues)
            .map(|queue| DpdkPort {
                rx: [std::ptr::null_mut(); MAX_BURST],
                tx: Mbufs::new(),
                free: Mbufs::new(),
                lent: Mbufs::new(),
                lent_taken: 0,
                queue,
                registered: false,
                stats: PortStats::default(),
                to_host_dropped: 0,
                multi_seg_dropped: 0,
                intr_fd: (info.rx_intr == 1)
                    .then(|| rx_intr_fd(device.port_id, queue))
                    .flatten(),
                interrupt: Cell::new(Interrupt::Off),
                device: device.clone(),
            })
            .collect())
    }

    /// Mbufs free in the device's pool (its queues' caches included): one that keeps falling
    /// while traffic is steady is a leak.
    pub fn pool_available(&self) -> u32 {
        // SAFETY: the pool lives as long as the device, which this port holds.
        unsafe { ffi::rte_mempool_avail_count(self.device.pool) }
    }

    /// Whether the queue has a receive interrupt an idle worker can sleep on.
    pub fn rx_interrupts(&self) -> bool {
        self.intr_fd.is_some()
    }

    /// Disables the receive interrupt [`Port::wait_fd`] enabled and reads away its wake-up, so
    /// the fd is quiet until the next enable (the busy path never takes an interrupt).
    fn disarm(&mut self) {
        // SAFETY: a started port and one of its queues, used by this thread alone.
        unsafe { ffi::lb_rx_intr_disable(self.device.port_id, self.queue) };
        if let Some(fd) = self.intr_fd {
            let mut count = 0u64;
            // SAFETY: `count` is valid for 8 bytes of writes; the fd is non-blocking, so an
            // fd without a wake-up pending answers EAGAIN at once.
            unsafe { libc::read(fd, (&mut count as *mut u64).cast(), 8) };
        }
        self.interrupt.set(Interrupt::Off);
    }

    /// The driver's name (`net_memif`, `net_ixgbe`, ...).
    pub fn driver(&self) -> &str {
        &self.device.driver
    }

    /// True when the device reports its link up (a memif once its peer has connected).
    pub fn link_up(&self) -> bool {
        // SAFETY: a query of a started port; it does not wait.
        unsafe { ffi::lb_link_up(self.device.port_id) == 1 }
    }

    /// Frames the pipeline gave `ToHost`: dropped, DPDK has no host stack to give them to.
    pub fn to_host_dropped(&self) -> u64 {
        self.to_host_dropped
    }

    /// Frames that arrived in several segments (longer than one mbuf): dropped.
    pub fn multi_seg_dropped(&self) -> u64 {
        self.multi_seg_dropped
    }

    /// The whole device's counters (all queues).
    pub fn device_stats(&self) -> DeviceStats {
        // SAFETY: rte_eth_stats is plain data; zeroed is valid.
        let mut st: ffi::rte_eth_stats = unsafe { std::mem::zeroed() };
        // SAFETY: the port is started and `st` valid for writes.
        if unsafe { ffi::rte_eth_stats_get(self.device.port_id, &mut st) } != 0 {
            return DeviceStats::default();
        }
        DeviceStats {
            ipackets: st.ipackets,
            opackets: st.opackets,
            imissed: st.imissed,
            ierrors: st.ierrors,
            oerrors: st.oerrors,
            rx_nombuf: st.rx_nombuf,
        }
    }

    /// Receives up to `max` (at most [`MAX_BURST`]) frames into `rx`, transmitting first when
    /// the transmit queue could not take a whole burst. Returns how many arrived.
    fn receive(&mut self, max: usize) -> usize {
        if self.interrupt.get() == Interrupt::Armed {
            self.disarm();
        }
        if !self.lent.is_empty() {
            self.release_lent();
        }
        if !self.registered {
            // Once per worker thread: an lcore id gives the thread a mempool cache. Without
            // one (no free lcore slot) the pool still works, uncached.
            // SAFETY: EAL is initialised (the port exists).
            let _ = unsafe { ffi::lb_thread_register() };
            self.registered = true;
        }
        if self.tx.len() + MAX_BURST > TX_QUEUE {
            self.transmit();
        }
        let want = max.min(MAX_BURST) as u16;
        // SAFETY: `rx` has room for `want` entries; the queue is ours.
        let got = unsafe {
            ffi::lb_rx_burst(self.device.port_id, self.queue, self.rx.as_mut_ptr(), want)
        };
        self.stats.rx += u64::from(got);
        usize::from(got)
    }

    /// The pipeline's views of the `got` mbufs just received, written into the front of
    /// `pkts` and returned: the single-segment ones, which move to the front of `rx`; frames in
    /// several segments are listed for freeing and counted ([`views_into`]).
    #[inline(always)]
    fn views<'p, 'b>(
        &mut self,
        got: usize,
        pkts: &'p mut [MaybeUninit<PacketBuf<'b>>; MAX_BURST],
    ) -> &'p mut [PacketBuf<'b>] {
        let sink = (&mut self.free, &mut self.multi_seg_dropped);
        // SAFETY: `rx[..got]` are the mbufs the receive just gave us.
        let n = unsafe { views_into(&mut self.rx, got, pkts, sink) };
        // SAFETY: `pkts[..n]` were written by `views_into` (`n` <= MAX_BURST), and a
        // `PacketBuf` has no drop to miss; the array is built without initialising the slots no
        // frame fills.
        unsafe { &mut *std::ptr::slice_from_raw_parts_mut(pkts.as_mut_ptr().cast(), n) }
    }

    /// Queues the first mbufs of `rx`, whose frames are `pkts`, for transmission where
    /// `verdicts` says `Tx` (their bounds set to where the pipeline left the frame), lends them
    /// where it says `Lent`, else lists them for freeing.
    #[inline(always)]
    fn settle(&mut self, pkts: &[PacketBuf<'_>], verdicts: &[Verdict]) {
        let DpdkPort {
            rx,
            tx,
            free,
            lent,
            stats,
            to_host_dropped,
            ..
        } = self;
        // The common case in the loop, a frame to send: one test of its verdict (a `match` on
        // it became a jump table) and the queue's length in a register.
        let mut queued = tx.len;
        // `receive` made room for a whole burst (it transmits first when the queue could not
        // take one), so every frame to send fits: `queued` stays below `tx.len + pkts.len()`,
        // within the queue, and the mask below changes no index, it only shows the compiler
        // that the index is in bounds (one `and` for a test and branch per frame). Were there
        // no room, the general loop in `settle_rest` tests each frame.
        const _: () = assert!(TX_QUEUE.is_power_of_two());
        if queued + pkts.len() > TX_QUEUE {
            settle_tight(rx, pkts, verdicts, tx, lent, free, stats, to_host_dropped);
            return;
        }
        for ((&m, p), &v) in rx.iter().zip(pkts).zip(verdicts) {
            if matches!(v, Verdict::Tx) && !p.is_empty() {
                // SAFETY: a received mbuf of ours (see `set_bounds`).
                unsafe { set_bounds(m, p) };
                tx.buf[queued & (TX_QUEUE - 1)] = m;
                queued += 1;
                continue;
            }
            tx.len = queued;
            settle_rest(m, p, v, tx, lent, free, stats, to_host_dropped);
            queued = tx.len;
        }
        tx.len = queued;
    }

    /// Transmits what is queued when the transmit queue is full, before one more frame from
    /// outside the current burst (a copy, a lent frame) joins it.
    fn make_room(&mut self) {
        if self.tx.len() >= TX_QUEUE {
            self.transmit();
        }
    }

    /// Frees the lent mbufs no port took.
    fn release_lent(&mut self) {
        let taken = self.lent_taken.min(self.lent.len);
        let untaken = &mut self.lent.buf[taken..self.lent.len];
        if !untaken.is_empty() {
            // SAFETY: the mbufs no port took are still ours, each listed once.
            unsafe { ffi::lb_free_bulk(untaken.as_mut_ptr(), untaken.len() as u32) };
        }
        self.lent.clear();
        self.lent_taken = 0;
    }

    /// Frees the burst's mbufs not transmitted.
    fn free_settled(&mut self) {
        if !self.free.is_empty() {
            // SAFETY: every mbuf in `free` is ours and listed once.
            unsafe { ffi::lb_free_bulk(self.free.as_mut_ptr(), self.free.len() as u32) };
            self.free.clear();
        }
    }

    /// Transmits the queued mbufs, retrying what the driver's ring had no room for; frees and
    /// counts what is still left after that.
    fn transmit(&mut self) {
        let n = self.tx.len();
        if n == 0 {
            return;
        }
        let port = self.device.port_id;
        let mut sent = 0usize;
        while sent < n {
            let chunk = (n - sent).min(usize::from(u16::MAX));
            // SAFETY: the mbufs are ours, their bounds set.
            let got = unsafe {
                ffi::lb_tx_burst(
                    port,
                    self.queue,
                    self.tx.as_mut_ptr().add(sent),
                    chunk as u16,
                )
            };
            let mut done = usize::from(got);
            let mut tries = 0;
            while done < chunk && tries < TX_RETRIES {
                tries += 1;
                // SAFETY: the rest of the chunk: ours, bounds set.
                let got = unsafe {
                    ffi::lb_tx_burst(
                        port,
                        self.queue,
                        self.tx.as_mut_ptr().add(sent + done),
                        (chunk - done) as u16,
                    )
                };
                done += usize::from(got);
            }
            if done < chunk {
                let left = chunk - done;
                self.stats.tx_dropped += left as u64;
                // SAFETY: the driver did not take these; they are still ours.
                unsafe {
                    ffi::lb_free_bulk(self.tx.as_mut_ptr().add(sent + done), left as u32);
                }
            }
            self.stats.tx += done as u64;
            sent += chunk;
        }
        self.tx.clear();
    }
}

/// A fixed-size list of mbufs (no allocation, no growth on the hot path).
struct Mbufs<const N: usize> {
    len: usize,
    buf: [*mut ffi::rte_mbuf; N],
}

impl<const N: usize> Mbufs<N> {
    fn new() -> Self {
        Mbufs {
            len: 0,
            buf: [std::ptr::null_mut(); N],
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn as_slice(&self) -> &[*mut ffi::rte_mbuf] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    fn as_mut_ptr(&mut self) -> *mut *mut ffi::rte_mbuf {
        self.buf.as_mut_ptr()
    }

    /// Appends `m`. Every caller makes room first (a burst's lists hold a whole burst, the
    /// transmit queue is flushed before it could overflow); were it full anyway, `m` is freed
    /// rather than lost.
    #[inline(always)]
    fn push(&mut self, m: *mut ffi::rte_mbuf) {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = m;
                self.len += 1;
            }
            None => free_one(m),
        }
    }
}

/// Returns one mbuf of ours to its pool.
#[cold]
fn free_one(mut m: *mut ffi::rte_mbuf) {
    // SAFETY: the caller's mbuf, listed nowhere else.
    unsafe { ffi::lb_free_bulk(&mut m, 1) };
}

/// [`DpdkPort::views`]: the views of the single-segment frames of `rx[..got]` written into
/// `pkts[..n]`, their mbufs moved to `rx[..n]` in order; the others pushed to `sink.0` (to
/// free) and counted in `sink.1`. Returns `n`.
///
/// The common burst, every frame in one buffer, takes the first loop: frame i's view is
/// `pkts[i]` and its mbuf stays at `rx[i]` (no second index, no bounds test of it, no store back
/// into `rx`: 6 instructions a packet fewer than one compacting loop). The first frame in
/// several segments hands the rest of the burst to [`views_rest`].
///
/// # Safety
/// Every mbuf of `rx[..got]` is a received mbuf of ours, as [`view_of`] requires.
#[inline(always)]
unsafe fn views_into<'b>(
    rx: &mut [*mut ffi::rte_mbuf; MAX_BURST],
    got: usize,
    pkts: &mut [MaybeUninit<PacketBuf<'b>>; MAX_BURST],
    sink: (&mut Mbufs<MAX_BURST>, &mut u64),
) -> usize {
    let got = got.min(MAX_BURST);
    let mut n = 0;
    while n < got {
        let (Some(&m), Some(slot)) = (rx.get(n), pkts.get_mut(n)) else {
            break;
        };
        // SAFETY: the caller's.
        let Some(view) = (unsafe { view_of(m) }) else {
            // SAFETY: the caller's.
            return unsafe { views_rest(rx, n, got, pkts, sink) };
        };
        slot.write(view);
        n += 1;
    }
    n
}

/// [`views_into`] from frame `from` on, once frame `from` was found in several segments
/// (`pkts[..from]` written, `rx[..from]` in place): the single-segment frames that follow move
/// to the front of `rx` behind those, the others are pushed to `sink.0` and counted in
/// `sink.1`. Returns how many views `pkts` then holds.
///
/// # Safety
/// As [`views_into`].
#[cold]
#[inline(never)]
unsafe fn views_rest(
    rx: &mut [*mut ffi::rte_mbuf; MAX_BURST],
    from: usize,
    got: usize,
    pkts: &mut [MaybeUninit<PacketBuf<'_>>; MAX_BURST],
    (free, multi_seg): (&mut Mbufs<MAX_BURST>, &mut u64),
) -> usize {
    let mut n = from;
    for i in from..got.min(MAX_BURST) {
        let m = rx[i];
        // SAFETY: the caller's.
        let Some(view) = (unsafe { view_of(m) }) else {
            *multi_seg += 1;
            free.push(m);
            continue;
        };
        // `n <= i`: both within the arrays.
        if let (Some(slot), Some(r)) = (pkts.get_mut(n), rx.get_mut(n)) {
            slot.write(view);
            *r = m;
            n += 1;
        }
    }
    n
}

/// The pipeline's view of received mbuf `m`'s frame, or `None` for a frame in several segments
/// (only a whole frame in one buffer is handed over; a receive always gives a buffer, and the
/// null check keeps a null one from ever reaching a slice).
///
/// # Safety
/// `m` is a received mbuf, ours until we transmit or free it, and no other view of its buffer
/// lives while the returned one does (the burst's views are dropped before it is settled).
#[inline(always)]
unsafe fn view_of<'b>(m: *mut ffi::rte_mbuf) -> Option<PacketBuf<'b>> {
    // SAFETY: the caller's mbuf; the offsets and types are those the shim checks against
    // DPDK's header.
    let (buf, segs) = unsafe {
        (
            mbuf_get::<*mut u8>(m, ffi::LB_MBUF_BUF_ADDR),
            mbuf_get::<u16>(m, ffi::LB_MBUF_NB_SEGS),
        )
    };
    if segs != 1 || buf.is_null() {
        return None;
    }
    // SAFETY: as above.
    let (buf_len, head, len) = unsafe {
        (
            mbuf_get::<u16>(m, ffi::LB_MBUF_BUF_LEN),
            mbuf_get::<u16>(m, ffi::LB_MBUF_DATA_OFF),
            mbuf_get::<u16>(m, ffi::LB_MBUF_DATA_LEN),
        )
    };
    // SAFETY: the mbuf's data buffer is `buf_len` bytes at `buf` (not null), ours until the
    // burst is settled, after the caller is done with the view (the caller's promise); no other
    // frame of the burst shares it.
    let buf = unsafe { std::slice::from_raw_parts_mut(buf, usize::from(buf_len)) };
    Some(PacketBuf::new(buf, usize::from(head), usize::from(len)))
}

/// Writes the frame's bounds in its buffer (`buf_len`, a u16, so the casts keep every bit) into
/// its mbuf.
///
/// # Safety
/// `m` is a received mbuf of ours and `p` the view of its buffer.
#[inline(always)]
unsafe fn set_bounds(m: *mut ffi::rte_mbuf, p: &PacketBuf<'_>) {
    // SAFETY: the caller's; the offsets and types are those the shim checks against DPDK's
    // header.
    unsafe {
        mbuf_set(m, ffi::LB_MBUF_DATA_OFF, p.head() as u16);
        mbuf_set(m, ffi::LB_MBUF_DATA_LEN, p.len() as u16);
        mbuf_set(m, ffi::LB_MBUF_PKT_LEN, p.len() as u32);
    }
}

/// [`DpdkPort::settle`] when the transmit queue has no room for the whole burst (never after
/// `receive`, which makes it): each frame to send is queued while it fits, the rest go to
/// [`settle_rest`].
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn settle_tight(
    rx: &[*mut ffi::rte_mbuf; MAX_BURST],
    pkts: &[PacketBuf<'_>],
    verdicts: &[Verdict],
    tx: &mut Mbufs<TX_QUEUE>,
    lent: &mut Mbufs<MAX_BURST>,
    free: &mut Mbufs<MAX_BURST>,
    stats: &mut PortStats,
    to_host_dropped: &mut u64,
) {
    for ((&m, p), &v) in rx.iter().zip(pkts).zip(verdicts) {
        if matches!(v, Verdict::Tx) && !p.is_empty() {
            if let Some(slot) = tx.buf.get_mut(tx.len) {
                // SAFETY: a received mbuf of ours (see `set_bounds`).
                unsafe { set_bounds(m, p) };
                *slot = m;
                tx.len += 1;
                continue;
            }
        }
        settle_rest(m, p, v, tx, lent, free, stats, to_host_dropped);
    }
}

/// [`DpdkPort::settle`] for a frame it does not queue at once: lent (bounds set), or freed
/// (dropped, for the host, empty, or a `Tx` the full queue cannot take), and counted.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn settle_rest(
    m: *mut ffi::rte_mbuf,
    p: &PacketBuf<'_>,
    v: Verdict,
    tx: &mut Mbufs<TX_QUEUE>,
    lent: &mut Mbufs<MAX_BURST>,
    free: &mut Mbufs<MAX_BURST>,
    stats: &mut PortStats,
    to_host_dropped: &mut u64,
) {
    match v {
        Verdict::Tx | Verdict::Lent if !p.is_empty() => {
            // SAFETY: a received mbuf of ours, `p` its view.
            unsafe { set_bounds(m, p) };
            if matches!(v, Verdict::Lent) {
                lent.push(m);
            } else {
                // Full (every caller makes room first): freed.
                tx.push(m);
            }
        }
        Verdict::Tx | Verdict::Lent => {
            stats.tx_dropped += 1;
            free.push(m);
        }
        Verdict::ToHost => {
            *to_host_dropped += 1;
            free.push(m);
        }
        Verdict::Drop(_) | Verdict::ToL7 => free.push(m),
    }
}

/// The `T` at byte `off` of mbuf `m`.
///
/// # Safety
/// `m` is a live mbuf and `off` one of the `LB_MBUF_*` offsets, whose field is a `T`.
#[inline(always)]
unsafe fn mbuf_get<T: Copy>(m: *const ffi::rte_mbuf, off: u32) -> T {
    // SAFETY: the caller's.
    unsafe {
        m.cast::<u8>()
            .add(off as usize)
            .cast::<T>()
            .read_unaligned()
    }
}

/// Writes `v` at byte `off` of mbuf `m`.
///
/// # Safety
/// As [`mbuf_get`], and the mbuf is ours.
#[inline(always)]
unsafe fn mbuf_set<T: Copy>(m: *mut ffi::rte_mbuf, off: u32, v: T) {
    // SAFETY: the caller's.
    unsafe {
        m.cast::<u8>()
            .add(off as usize)
            .cast::<T>()
            .write_unaligned(v)
    }
}

impl Port for DpdkPort {
    fn name(&self) -> String {
        format!("dpdk:{}/q{}", self.device.name, self.queue)
    }

    fn rx_burst(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut PacketBuf<'_>) -> Verdict,
    ) -> io::Result<usize> {
        let got = self.receive(max);
        let mut slots = [const { MaybeUninit::uninit() }; MAX_BURST];
        let pkts = self.views(got, &mut slots);
        let mut verdicts = [UNSET; MAX_BURST];
        for (p, v) in pkts.iter_mut().zip(verdicts.iter_mut()) {
            *v = f(p);
        }
        let n = pkts.len();
        self.settle(pkts, &verdicts[..n]);
        self.free_settled();
        Ok(got)
    }

    // Called through `dyn Port` by the workers; kept a function of its own where a caller knows
    // the type too (the zero-copy benchmark), so profiles of both show the same code.
    #[inline(never)]
    fn rx_batch(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut [PacketBuf<'_>], &mut [Verdict]),
    ) -> io::Result<usize> {
        let got = self.receive(max);
        if got == 0 {
            return Ok(0);
        }
        let mut slots = [const { MaybeUninit::uninit() }; MAX_BURST];
        let pkts = self.views(got, &mut slots);
        let n = pkts.len();
        let mut verdicts = [UNSET; MAX_BURST];
        f(pkts, &mut verdicts[..n]);
        self.settle(pkts, &verdicts[..n]);
        self.free_settled();
        Ok(got)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.transmit();
        Ok(())
    }

    /// The queue's receive-interrupt fd, with the interrupt enabled until the next receive
    /// (drivers with receive interrupts: NICs whose interrupt vectors VFIO gives DPDK, net_tap;
    /// not memif, af_packet or af_xdp); `None` without, and an idle worker then sleeps its
    /// timeout.
    fn wait_fd(&self) -> Option<RawFd> {
        let fd = self.intr_fd?;
        if self.interrupt.get() == Interrupt::Off {
            // SAFETY: a started port and one of its queues, used by this thread alone.
            match unsafe { ffi::lb_rx_intr_enable(self.device.port_id, self.queue) } {
                0 => self.interrupt.set(Interrupt::Armed),
                e if e == -libc::ENOTSUP => self.interrupt.set(Interrupt::Level),
                _ => return None,
            }
        }
        Some(fd)
    }

    fn stats(&self) -> PortStats {
        let mut st = self.stats;
        if self.queue == 0 {
            // The device's drops are per device: queue 0 reports them, once.
            let dev = self.device_stats();
            st.rx_dropped = dev.imissed + dev.rx_nombuf;
        }
        st
    }

    fn lends(&self) -> bool {
        true
    }

    fn take_lent(&mut self) -> Option<Lent> {
        let m = *self.lent.as_slice().get(self.lent_taken)?;
        self.lent_taken += 1;
        Some(Lent(Mbuf(m)))
    }

    fn tx_lent(&mut self, frame: Lent) -> Result<(), Lent> {
        self.make_room();
        // Its bounds were set when its port settled the burst; the device transmits any mbuf.
        self.tx.push(frame.0.into_raw());
        Ok(())
    }

    fn tx_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let Ok(len) = u16::try_from(frame.len()) else {
            self.stats.tx_dropped += 1;
            return Err(io::ErrorKind::InvalidInput.into());
        };
        self.make_room();
        // SAFETY: the pool is live; `frame` is valid for `len` bytes of reads.
        let m = unsafe { ffi::lb_alloc_copy(self.device.pool, frame.as_ptr(), len) };
        if m.is_null() {
            self.stats.tx_dropped += 1;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // The copy's bounds are set: the frame right after the headroom.
        self.tx.push(m);
        Ok(())
    }
}

impl Drop for DpdkPort {
    fn drop(&mut self) {
        self.release_lent();
        self.free_settled();
        self.transmit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str], hugepages: bool) -> DpdkOptions {
        DpdkOptions {
            eal_args: args.iter().map(|s| s.to_string()).collect(),
            hugepages,
            ..DpdkOptions::default()
        }
    }

    /// A stand-in for an mbuf: the fields `views_into` reads, at the shim's offsets.
    #[repr(C, align(64))]
    struct FakeMbuf([u8; 64]);

    impl FakeMbuf {
        fn new(buf: &mut [u8], head: u16, len: u16, segs: u16) -> FakeMbuf {
            let mut m = FakeMbuf([0; 64]);
            let at = |off: u32| off as usize;
            let addr = buf.as_mut_ptr() as usize;
            m.0[at(ffi::LB_MBUF_BUF_ADDR)..][..8].copy_from_slice(&addr.to_ne_bytes());
            m.0[at(ffi::LB_MBUF_BUF_LEN)..][..2].copy_from_slice(&(buf.len() as u16).to_ne_bytes());
            m.0[at(ffi::LB_MBUF_DATA_OFF)..][..2].copy_from_slice(&head.to_ne_bytes());
            m.0[at(ffi::LB_MBUF_DATA_LEN)..][..2].copy_from_slice(&len.to_ne_bytes());
            m.0[at(ffi::LB_MBUF_NB_SEGS)..][..2].copy_from_slice(&segs.to_ne_bytes());
            m
        }

        fn ptr(&mut self) -> *mut ffi::rte_mbuf {
            (self as *mut FakeMbuf).cast()
        }
    }

    /// What `views_into` made of a burst (mbufs by their index in the burst).
    #[derive(Debug, PartialEq, Eq)]
    struct Viewed {
        /// The views' (head, len), in order.
        views: Vec<(usize, usize)>,
        /// The mbufs left at the front of `rx`, one per view.
        front: Vec<usize>,
        /// The mbufs listed for freeing.
        freed: Vec<usize>,
        /// Frames counted as in several segments.
        multi: u64,
    }

    /// `views_into` over a burst whose frames are in one segment (`true`) or several, in order;
    /// frame i's view is (10 + i, 60 + i).
    fn views_of(one_segment: &[bool]) -> Viewed {
        let mut bufs = vec![[0u8; 256]; one_segment.len()];
        let mut mbufs: Vec<FakeMbuf> = bufs
            .iter_mut()
            .zip(one_segment)
            .enumerate()
            .map(|(i, (b, &one))| {
                let segs = if one { 1 } else { 2 };
                FakeMbuf::new(b, 10 + i as u16, 60 + i as u16, segs)
            })
            .collect();
        let ptrs: Vec<*mut ffi::rte_mbuf> = mbufs.iter_mut().map(FakeMbuf::ptr).collect();
        let index = |m: &*mut ffi::rte_mbuf| ptrs.iter().position(|p| p == m).expect("an mbuf");
        let mut rx = [std::ptr::null_mut(); MAX_BURST];
        rx[..ptrs.len()].copy_from_slice(&ptrs);
        let mut pkts = [const { MaybeUninit::uninit() }; MAX_BURST];
        let (mut free, mut multi) = (Mbufs::<MAX_BURST>::new(), 0u64);
        // SAFETY: each fake mbuf's buffer address and length are those of a live buffer of its
        // own, and the views are dropped before the buffers.
        let n = unsafe { views_into(&mut rx, ptrs.len(), &mut pkts, (&mut free, &mut multi)) };
        let views = pkts[..n]
            .iter()
            // SAFETY: `views_into` wrote `pkts[..n]`.
            .map(|p| unsafe { p.assume_init_ref() })
            .map(|p| (p.head(), p.len()))
            .collect();
        Viewed {
            views,
            front: rx[..n].iter().map(index).collect(),
            freed: free.as_slice().iter().map(index).collect(),
            multi,
        }
    }

    /// The (head, len) of frame i of `views_of`'s bursts.
    fn view(i: usize) -> (usize, usize) {
        (10 + i, 60 + i)
    }

    #[test]
    fn a_burst_views_its_single_segment_frames_in_order_and_drops_the_others() {
        let of = |frames: &[usize], freed: Vec<usize>| Viewed {
            views: frames.iter().map(|&i| view(i)).collect(),
            front: frames.to_vec(),
            multi: freed.len() as u64,
            freed,
        };
        // Every frame in one segment: all viewed in place.
        assert_eq!(views_of(&[true; 5]), of(&[0, 1, 2, 3, 4], vec![]));
        // Frames in several segments first, in the middle and last: the others move up.
        let burst = [false, true, true, false, true, false];
        assert_eq!(views_of(&burst), of(&[1, 2, 4], vec![0, 3, 5]));
        // A whole burst of 64, one frame in several segments near its end.
        let mut burst = [true; MAX_BURST];
        burst[60] = false;
        let kept: Vec<usize> = (0..MAX_BURST).filter(|&i| i != 60).collect();
        assert_eq!(views_of(&burst), of(&kept, vec![60]));
        // None at all.
        assert_eq!(views_of(&[]), of(&[], vec![]));
    }

    #[test]
    fn mbufs_hold_a_whole_frame_of_the_mtu() {
        let head = ffi::RTE_PKTMBUF_HEADROOM as u16;
        // The device's own MTU, and anything up to DPDK's default room: the default.
        assert_eq!(mbuf_data_room(0), 2048 + head);
        assert_eq!(mbuf_data_room(1500), 2048 + head);
        // Jumbo: the IP packet, Ethernet header, two VLAN tags and FCS, in 128-byte steps.
        assert_eq!(mbuf_data_room(9000), 9088 + head);
        assert!(mbuf_data_room(9216) >= 9216 + 26 + head);
    }

    #[test]
    fn eal_arguments_leave_no_files_and_use_one_lcore() {
        let argv = eal_argv(&opts(&[], true), 0, 42);
        assert_eq!(
            argv,
            [
                "lb",
                "--file-prefix=lb-42",
                "--huge-unlink",
                "-l",
                "0",
                "--no-telemetry"
            ]
        );
        let argv = eal_argv(&opts(&["--vdev", "net_memif0"], false), 3, 42);
        assert_eq!(
            argv,
            [
                "lb",
                "--file-prefix=lb-42",
                "--no-huge",
                "-l",
                "3",
                "--no-telemetry",
                "--vdev",
                "net_memif0"
            ]
        );
    }

    #[test]
    fn operator_eal_arguments_replace_ours() {
        let argv = eal_argv(
            &opts(&["--in-memory", "-l", "0-1", "--telemetry"], true),
            0,
            42,
        );
        assert_eq!(argv, ["lb", "--in-memory", "-l", "0-1", "--telemetry"]);
        let argv = eal_argv(
            &opts(&["--file-prefix=x", "--huge-unlink=never"], true),
            1,
            42,
        );
        assert_eq!(
            argv,
            [
                "lb",
                "-l",
                "1",
                "--no-telemetry",
                "--file-prefix=x",
                "--huge-unlink=never"
            ]
        );
    }
}

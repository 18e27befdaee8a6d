//! AF_PACKET port: a TPACKET_V3 receive ring per worker, fanned out by flow hash.
//!
//! Each [`AfPacketPort`] owns one `AF_PACKET`/`SOCK_RAW` socket bound to the interface with
//! `ETH_P_ALL`, with an mmap'ed TPACKET_V3 RX ring (8 blocks of 1 MiB, blocks retired after 1 ms).
//! With more than one queue the sockets join one `PACKET_FANOUT_HASH` group, so the kernel hands
//! each flow to one socket (the hash is symmetric: both directions of a flow go to the same one).
//! Outgoing frames (ours and the host's) are not received (`PACKET_IGNORE_OUTGOING` and
//! `PACKET_FANOUT_FLAG_IGNORE_OUTGOING`): the port sees ingress only.
//!
//! Frames are copied out of the ring into the port's own buffer (the ring slot has no headroom)
//! before the pipeline runs. `Tx` frames are sent at once with send(2) on the same socket, one call
//! per frame (no TX ring); a full socket buffer (`EAGAIN`/`ENOBUFS`) counts as `tx_dropped`.
//!
//! `ToHost` needs no action: AF_PACKET taps the receive path, so the host's stack already got its
//! own copy of every frame this port sees. Such frames are only counted in [`PortStats::to_host`].
//! The flip side: the host also answers what it owns, so the interface must carry no address the
//! load balancer answers for (the lab leaves it unnumbered).
//!
//! Frames the sender left with a partial transport checksum (a veth peer with checksum offload;
//! the ring marks them `TP_STATUS_CSUMNOTREADY`) get their TCP/UDP checksum completed before the
//! pipeline sees them, so incremental updates downstream stay correct. Real NICs never deliver such
//! frames, so this costs nothing there.

use std::ffi::CString;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{check_ifname, Port, PortStats, HEADROOM};
use crate::flow::proto;
use crate::packet::PacketBuf;
use crate::pipeline::Verdict;
use crate::wire::{self, checksum, Frag};

/// Largest frame handed to the pipeline: a 9216-byte jumbo payload plus Ethernet and a VLAN tag.
pub const MAX_FRAME: usize = 9216 + 18;

/// Room after the largest frame, for answers built in place that outgrow the request.
const TAILROOM: usize = 128;

/// Size of one ring block; a block holds many frames, and a jumbo frame fits in one.
pub const BLOCK_SIZE: usize = 1 << 20;
/// Blocks per ring (8 MiB of ring per socket).
pub const BLOCK_COUNT: usize = 8;
/// Nominal frame size: TPACKET_V3 packs frames of any size into a block; this only sets
/// `tp_frame_nr`, which the kernel checks against the block geometry.
const FRAME_SIZE: usize = 2048;
/// A block is handed to us at the latest this many milliseconds after its first frame.
const RETIRE_MS: u32 = 1;

/// `TPACKET_V3` from `enum tpacket_versions` in linux/if_packet.h (V1 = 0, V2 = 1, V3 = 2);
/// libc exports the enum, whose shape changed between releases, so the value is spelled out.
const TPACKET_V3: libc::c_int = 2;

/// Offset of `hdr.bh1.block_status` in `struct tpacket_block_desc` (linux/if_packet.h).
const BLOCK_STATUS_OFF: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status);
/// Offset of `hdr.bh1.num_pkts`.
const BLOCK_NUM_PKTS_OFF: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, num_pkts);
/// Offset of `hdr.bh1.offset_to_first_pkt`.
const BLOCK_FIRST_OFF: usize = offset_of!(libc::tpacket_block_desc, hdr)
    + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt);

/// One worker's socket on an interface.
#[derive(Debug)]
pub struct AfPacketPort {
    fd: OwnedFd,
    ring: Ring,
    ifname: String,
    queue: u16,
    /// Block the next frame comes from.
    block: usize,
    /// Position inside `block` when it is ours and partly consumed.
    pos: Option<BlockPos>,
    buf: Vec<u8>,
    stats: PortStats,
    /// Ring-full drops the kernel reported so far: its counter resets on every read, and
    /// `stats` (which takes `&self`) adds each read here.
    kernel_drops: std::cell::Cell<u64>,
}

/// Where the next frame of a block we own starts.
#[derive(Clone, Copy, Debug)]
struct BlockPos {
    left: u32,
    off: usize,
}

impl AfPacketPort {
    /// Opens `queues` sockets on interface `ifname` (in the calling thread's network namespace),
    /// one per worker, joined in one fanout group when `queues > 1`.
    pub fn open(ifname: &str, queues: u16) -> io::Result<Vec<AfPacketPort>> {
        check_ifname(ifname)?;
        if queues == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("af_packet {ifname}: queue count must be at least 1"),
            ));
        }
        let cname = CString::new(ifname).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface name {ifname:?}"),
            )
        })?;
        // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("af_packet: no interface {ifname:?} in this network namespace"),
            ));
        }
        let mut ports = Vec::with_capacity(queues as usize);
        let mut group: Option<u16> = None;
        for queue in 0..queues {
            let port = open_socket(ifname, ifindex as libc::c_int, queue)?;
            if queues > 1 {
                group = Some(join_fanout(&port, group)?);
            }
            ports.push(port);
        }
        Ok(ports)
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

/// An error from syscall `what` on `ifname`, keeping the OS error kind.
fn os_err(ifname: &str, queue: u16, what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => " (needs root or CAP_NET_RAW)",
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!("af_packet {ifname} queue {queue}: {what}: {e}{hint}"),
    )
}

/// setsockopt(2) with a plain-data value.
fn set_opt<T: Copy>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, val: &T) -> bool {
    // SAFETY: the kernel reads exactly `size_of::<T>()` bytes from `val`, which is a live
    // reference; `T` is one of the repr(C) option structs or a c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (val as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    rc == 0
}

fn open_socket(ifname: &str, ifindex: libc::c_int, queue: u16) -> io::Result<AfPacketPort> {
    // Protocol 0: the socket receives nothing until it is bound to the interface below, so no
    // frame from another interface lands in the ring.
    // SAFETY: plain syscall with constant arguments.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(os_err(ifname, queue, "socket(AF_PACKET)"));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    if !set_opt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &TPACKET_V3) {
        return Err(os_err(ifname, queue, "PACKET_VERSION V3"));
    }
    let one: libc::c_int = 1;
    if !set_opt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one) {
        return Err(os_err(ifname, queue, "PACKET_IGNORE_OUTGOING"));
    }
    let req = libc::tpacket_req3 {
        tp_block_size: BLOCK_SIZE as libc::c_uint,
        tp_block_nr: BLOCK_COUNT as libc::c_uint,
        tp_frame_size: FRAME_SIZE as libc::c_uint,
        tp_frame_nr: (BLOCK_SIZE * BLOCK_COUNT / FRAME_SIZE) as libc::c_uint,
        tp_retire_blk_tov: RETIRE_MS,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    if !set_opt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req) {
        return Err(os_err(ifname, queue, "PACKET_RX_RING"));
    }
    let len = BLOCK_SIZE * BLOCK_COUNT;
    // SAFETY: maps the ring the kernel just allocated for this socket; a fresh mapping chosen by
    // the kernel aliases nothing in this process.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(os_err(ifname, queue, "mmap of the RX ring"));
    }
    let ring = Ring {
        ptr: ptr.cast(),
        len,
    };

    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex;
    // SAFETY: `sll` is a live sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err(ifname, queue, "bind"));
    }
    Ok(AfPacketPort {
        fd,
        ring,
        ifname: ifname.to_owned(),
        queue,
        block: 0,
        pos: None,
        buf: vec![0; HEADROOM + MAX_FRAME + TAILROOM],
        stats: PortStats::default(),
        kernel_drops: std::cell::Cell::new(0),
    })
}

/// Joins `port` to fanout group `group`, or creates a group with a kernel-chosen unique id when
/// `group` is `None`. Returns the group id.
fn join_fanout(port: &AfPacketPort, group: Option<u16>) -> io::Result<u16> {
    let flags = libc::PACKET_FANOUT_HASH | libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
    let (id, flags) = match group {
        Some(id) => (id, flags),
        // The kernel picks an id no other group in this namespace uses (id must be 0 then).
        None => (0, flags | libc::PACKET_FANOUT_FLAG_UNIQUEID),
    };
    let val = ((flags << 16) | id as libc::c_uint) as libc::c_int;
    if !set_opt(&port.fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &val) {
        return Err(os_err(&port.ifname, port.queue, "PACKET_FANOUT"));
    }
    if let Some(id) = group {
        return Ok(id);
    }
    let mut out: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `out`, a live c_int, and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            port.fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_FANOUT,
            (&mut out as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(os_err(&port.ifname, port.queue, "getsockopt PACKET_FANOUT"));
    }
    // The low 16 bits are the group id (the type and flags sit above, linux/if_packet.h).
    Ok((out as u32 & 0xffff) as u16)
}

/// The mmap'ed RX ring.
#[derive(Debug)]
struct Ring {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping belongs to this value alone (it is never shared or cloned), so moving it to
// another thread moves sole access with it.
unsafe impl Send for Ring {}

impl Ring {
    /// The status word of block `i` (`i < BLOCK_COUNT`), shared with the kernel.
    fn status(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < BLOCK_COUNT);
        // SAFETY: `i * BLOCK_SIZE + BLOCK_STATUS_OFF + 4 <= len` for i < BLOCK_COUNT; the block
        // start is page aligned and the offset is 8, so the u32 is aligned; the kernel updates it
        // with atomic/ordered stores, and AtomicU32 has u32's layout.
        unsafe {
            &*self
                .ptr
                .add(i * BLOCK_SIZE + BLOCK_STATUS_OFF)
                .cast::<AtomicU32>()
        }
    }

    /// Block `i`, readable. Only call while the block's status says it belongs to user space: the
    /// kernel does not write a block it has handed over until we give it back.
    fn block(&self, i: usize) -> &[u8] {
        debug_assert!(i < BLOCK_COUNT);
        // SAFETY: the range is inside the mapping (see `status`), and while the block is ours
        // nothing writes to it for the lifetime of the returned borrow (we give the block back only
        // through `status`, after the borrow has ended).
        unsafe { std::slice::from_raw_parts(self.ptr.add(i * BLOCK_SIZE), BLOCK_SIZE) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `open_socket`, unmapped once here.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

fn ne32(b: &[u8], off: usize) -> u32 {
    off.checked_add(4)
        .and_then(|end| b.get(off..end))
        .map_or(0, |w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
}

fn ne16(b: &[u8], off: usize) -> u16 {
    off.checked_add(2)
        .and_then(|end| b.get(off..end))
        .map_or(0, |w| u16::from_ne_bytes([w[0], w[1]]))
}

/// Completes the TCP/UDP checksum of a frame whose sender left only the pseudo-header sum in it
/// (checksum offload). Frames that are not unfragmented TCP/UDP over IP are left alone.
pub fn complete_l4_checksum(frame: &mut [u8]) {
    let Ok(p) = wire::parse(frame) else {
        return;
    };
    if p.frag != Frag::None {
        return;
    }
    let (field, end) = match p.proto {
        proto::TCP => (16, p.l3_end),
        proto::UDP => (
            6,
            p.l4_off
                .saturating_add(wire::be16(frame, p.l4_off + 4) as usize),
        ),
        _ => return,
    };
    if !wire::put_be16(frame, p.l4_off + field, 0) {
        return;
    }
    let Some(seg) = frame.get(p.l4_off..end) else {
        return;
    };
    let initial = checksum::pseudo_header(&p.src, &p.dst, p.proto, seg.len() as u32);
    let mut csum = checksum::fold(checksum::sum(seg, initial));
    if p.proto == proto::UDP && csum == 0 {
        // 0 means "no checksum" in UDP; the all-ones form is the same value.
        csum = 0xffff;
    }
    wire::put_be16(frame, p.l4_off + field, csum);
}

impl Port for AfPacketPort {
    fn name(&self) -> String {
        format!("af_packet:{}/q{}", self.ifname, self.queue)
    }

    fn rx_burst(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut PacketBuf<'_>) -> Verdict,
    ) -> io::Result<usize> {
        let hdr_len = size_of::<libc::tpacket3_hdr>();
        let mut n = 0;
        while n < max {
            let mut pos = match self.pos {
                Some(pos) => pos,
                None => {
                    if self.ring.status(self.block).load(Ordering::Acquire) & libc::TP_STATUS_USER
                        == 0
                    {
                        break;
                    }
                    let block = self.ring.block(self.block);
                    BlockPos {
                        left: ne32(block, BLOCK_NUM_PKTS_OFF),
                        off: ne32(block, BLOCK_FIRST_OFF) as usize,
                    }
                }
            };
            let block = self.ring.block(self.block);
            // A frame header and the frame it points to must lie inside the block; anything else
            // ends the block (the kernel never produces that, but we do not index on trust).
            let frame = if pos.left > 0
                && pos
                    .off
                    .checked_add(hdr_len)
                    .is_some_and(|e| e <= block.len())
            {
                let h = &block[pos.off..pos.off + hdr_len];
                let next = ne32(h, offset_of!(libc::tpacket3_hdr, tp_next_offset)) as usize;
                let snaplen = ne32(h, offset_of!(libc::tpacket3_hdr, tp_snaplen)) as usize;
                let status = ne32(h, offset_of!(libc::tpacket3_hdr, tp_status));
                let mac = ne16(h, offset_of!(libc::tpacket3_hdr, tp_mac)) as usize;
                let start = pos.off + mac;
                let data = start
                    .checked_add(snaplen.min(MAX_FRAME))
                    .and_then(|end| block.get(start..end));
                pos.left -= 1;
                pos.off = if next == 0 {
                    block.len()
                } else {
                    pos.off + next
                };
                if next == 0 {
                    pos.left = 0;
                }
                data.map(|d| (d, status))
            } else {
                pos.left = 0;
                None
            };
            let copied = frame.map(|(data, status)| {
                self.buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
                (data.len(), status)
            });
            if pos.left == 0 {
                // Done with this block: give it back and move on to the next one.
                self.ring
                    .status(self.block)
                    .store(libc::TP_STATUS_KERNEL, Ordering::Release);
                self.block = (self.block + 1) % BLOCK_COUNT;
                self.pos = None;
            } else {
                self.pos = Some(pos);
            }
            let Some((len, status)) = copied else {
                continue;
            };
            n += 1;
            self.stats.rx += 1;
            if status & libc::TP_STATUS_CSUMNOTREADY != 0 {
                complete_l4_checksum(&mut self.buf[HEADROOM..HEADROOM + len]);
            }
            let mut pkt = PacketBuf::new(&mut self.buf, HEADROOM, len);
            match f(&mut pkt) {
                Verdict::Tx => {
                    let sent = send_frame(self.fd.as_raw_fd(), pkt.data());
                    count_tx(&mut self.stats, sent);
                }
                // The host's stack already received its own copy from the driver.
                Verdict::ToHost => self.stats.to_host += 1,
                Verdict::Drop(_) | Verdict::ToL7 | Verdict::Lent => {}
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Frames are sent as soon as their verdict is known.
        Ok(())
    }

    fn tx_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let sent = send_frame(self.fd.as_raw_fd(), frame);
        count_tx(&mut self.stats, sent);
        if sent {
            Ok(())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn stats(&self) -> PortStats {
        self.kernel_drops
            .set(self.kernel_drops.get() + u64::from(read_kernel_drops(&self.fd)));
        PortStats {
            rx_dropped: self.kernel_drops.get(),
            ..self.stats
        }
    }
}

/// Frames the kernel dropped for a full ring since the last call (PACKET_STATISTICS resets its
/// counters on read); 0 when it cannot be read.
fn read_kernel_drops(fd: &OwnedFd) -> u32 {
    let mut st = libc::tpacket_stats_v3 {
        tp_packets: 0,
        tp_drops: 0,
        tp_freeze_q_cnt: 0,
    };
    let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `st`, a live tpacket_stats_v3 (the
    // layout it uses for a TPACKET_V3 socket), and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats_v3).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        st.tp_drops
    } else {
        0
    }
}

/// Sends one whole frame on a socket bound to its interface, without blocking.
fn send_frame(fd: RawFd, data: &[u8]) -> bool {
    // SAFETY: `data` is a live slice of `data.len()` bytes; the socket is bound to the
    // interface, so no destination address is needed.
    let sent = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_DONTWAIT) };
    sent >= 0 && sent as usize == data.len()
}

/// Counts a transmission attempt.
fn count_tx(stats: &mut PortStats, sent: bool) {
    if sent {
        stats.tx += 1;
    } else {
        stats.tx_dropped += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_header_offsets_match_the_kernel_layout() {
        // struct tpacket_block_desc { u32 version; u32 offset_to_priv; union { struct
        // tpacket_hdr_v1 bh1 } hdr; } with bh1 = { u32 block_status; u32 num_pkts;
        // u32 offset_to_first_pkt; ... }, 8-byte aligned.
        assert_eq!(
            (BLOCK_STATUS_OFF, BLOCK_NUM_PKTS_OFF, BLOCK_FIRST_OFF),
            (8, 12, 16)
        );
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_mac), 24);
    }

    #[test]
    fn partial_udp_checksum_is_completed() {
        // Ethernet + IPv4 (198.18.0.1 -> 198.18.0.2) + UDP 1000 -> 2000 with payload "hi", and
        // in the checksum field only the pseudo-header sum, as checksum offload leaves it.
        let mut f = vec![0u8; 14 + 20 + 10];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip.copy_from_slice(&[
            0x45, 0, 0, 30, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ]);
        let c = checksum::ipv4_header(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f[34..44].copy_from_slice(&[0x03, 0xe8, 0x07, 0xd0, 0, 10, 0x12, 0x34, b'h', b'i']);
        complete_l4_checksum(&mut f);
        let p = wire::parse(&f).unwrap();
        assert!(wire::verify_l4_checksum(&f, &p));
        assert_ne!(wire::be16(&f, 40), 0x1234);
    }

    #[test]
    fn checksum_completion_ignores_junk() {
        for len in 0..60 {
            let mut f = vec![0xffu8; len];
            complete_l4_checksum(&mut f);
        }
    }
}

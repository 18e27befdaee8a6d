//! TAP port: Ethernet frames read from and written to a Linux TAP device, one fd per queue.
//!
//! The device is opened with `IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE`: each [`TapPort`] is one queue
//! (one worker), and the kernel spreads the frames it sends into the TAP over the queues by flow.
//! The interface is created if it does not exist and is not persistent: it disappears when the
//! last queue's fd closes. Addresses, routes and link state are left to the caller (the lab).
//!
//! Verdicts: `Tx` frames are written back to the TAP at once (so they enter the host's stack);
//! `ToHost` frames are dropped and counted in [`PortStats::to_host`]: the TAP *is* the host side, so
//! writing them back would return to the host a frame the host itself just sent.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{check_ifname, Port, PortStats, HEADROOM};
use crate::packet::PacketBuf;
use crate::pipeline::Verdict;

/// Largest frame read from the TAP: a 9216-byte jumbo payload plus Ethernet and one VLAN tag.
pub const MAX_FRAME: usize = 9216 + 18;

/// Room after the largest frame, for answers built in place that outgrow the request.
const TAILROOM: usize = 128;

const TUN_PATH: &str = "/dev/net/tun";

/// `struct ifreq` as TUNSETIFF reads it (linux/if.h): name, then the flags member of the union.
#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    // The union is 24 bytes on 64-bit Linux (struct ifmap / sockaddr); the kernel copies all of it.
    _pad: [u8; 22],
}

/// One queue of a multi-queue TAP device.
#[derive(Debug)]
pub struct TapPort {
    file: File,
    ifname: String,
    queue: usize,
    buf: Vec<u8>,
    stats: PortStats,
}

impl TapPort {
    /// Opens (creating if needed) TAP interface `ifname` with `queues` queues, one port per queue,
    /// in the calling thread's network namespace. Non-blocking.
    pub fn open(ifname: &str, queues: usize) -> io::Result<Vec<TapPort>> {
        check_ifname(ifname)?;
        if queues == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tap {ifname}: queue count must be at least 1"),
            ));
        }
        (0..queues)
            .map(|queue| {
                let file = open_queue(ifname, queue)?;
                Ok(TapPort {
                    file,
                    ifname: ifname.to_owned(),
                    queue,
                    buf: vec![0; HEADROOM + MAX_FRAME + TAILROOM],
                    stats: PortStats::default(),
                })
            })
            .collect()
    }

    /// The interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

/// Opens /dev/net/tun and attaches the fd as queue `queue` of `ifname`.
fn open_queue(ifname: &str, queue: usize) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => io::Error::new(
                e.kind(),
                format!("tap {ifname}: {TUN_PATH} does not exist (no tun driver, or a container without the device node): {e}"),
            ),
            io::ErrorKind::PermissionDenied => io::Error::new(
                e.kind(),
                format!("tap {ifname}: cannot open {TUN_PATH} (needs root or CAP_NET_ADMIN): {e}"),
            ),
            _ => io::Error::new(e.kind(), format!("tap {ifname}: cannot open {TUN_PATH}: {e}")),
        })?;
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as libc::c_short,
        _pad: [0; 22],
    };
    // check_ifname guarantees at most 15 bytes, so the name stays NUL-terminated.
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: TUNSETIFF reads (and writes back) one `struct ifreq`; `req` is a live, writable,
    // repr(C) value of that size and layout, and the fd is open for the duration of the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut IfreqFlags,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::EPERM) => "not permitted (needs root or CAP_NET_ADMIN)",
            Some(libc::EINVAL) => {
                "an interface of that name exists and is not a multi-queue TAP (or the name is invalid)"
            }
            Some(libc::EBUSY) => "the interface is busy (another process holds it, or no free queue)",
            _ => "TUNSETIFF failed",
        };
        return Err(io::Error::new(
            e.kind(),
            format!("tap {ifname} queue {queue}: {why}: {e}"),
        ));
    }
    Ok(file)
}

impl Port for TapPort {
    fn name(&self) -> String {
        format!("tap:{}/q{}", self.ifname, self.queue)
    }

    fn rx_burst(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&mut PacketBuf<'_>) -> Verdict,
    ) -> io::Result<usize> {
        let mut n = 0;
        while n < max {
            let len = match self
                .file
                .read(&mut self.buf[HEADROOM..HEADROOM + MAX_FRAME])
            {
                Ok(0) => break,
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{}: read: {e}", self.name()),
                    ))
                }
            };
            n += 1;
            self.stats.rx += 1;
            let mut pkt = PacketBuf::new(&mut self.buf, HEADROOM, len);
            match f(&mut pkt) {
                Verdict::Tx => {
                    let _ = write_frame(&mut self.file, &mut self.stats, pkt.data());
                }
                // The TAP is the host side: the frame came from the host, so there is no other
                // host stack to give it to. Counted, then dropped.
                Verdict::ToHost => self.stats.to_host += 1,
                Verdict::Drop(_) | Verdict::ToL7 | Verdict::Lent => {}
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Frames are written as soon as their verdict is known.
        Ok(())
    }

    fn tx_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        write_frame(&mut self.file, &mut self.stats, frame)
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

/// Writes one frame: one write(2) is one frame on a TAP, and a short write does not happen for
/// frames within the MTU, so anything but the full length counts as a drop.
fn write_frame(file: &mut std::fs::File, stats: &mut PortStats, frame: &[u8]) -> io::Result<()> {
    match file.write(frame) {
        Ok(w) if w == frame.len() => {
            stats.tx += 1;
            Ok(())
        }
        Ok(_) => {
            stats.tx_dropped += 1;
            Err(io::ErrorKind::WriteZero.into())
        }
        Err(e) => {
            stats.tx_dropped += 1;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(
            std::mem::size_of::<IfreqFlags>(),
            std::mem::size_of::<libc::ifreq>()
        );
    }

    #[test]
    fn bad_names_and_counts_are_refused_before_any_syscall() {
        for bad in ["", "a-name-that-is-too-long", "a/b"] {
            let e = TapPort::open(bad, 1).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        let e = TapPort::open("lbtap0", 0).unwrap_err();
        assert!(e.to_string().contains("lbtap0"));
    }
}

//! The few system calls the workers make outside their ports: an eventfd to wake a sleeping
//! worker, ppoll to sleep on fds, and CPU pinning. Kept here so every `unsafe` block of the
//! dataplane lives under `port/`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A non-blocking eventfd, or `None` if the kernel refuses one.
pub fn eventfd() -> Option<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative return is a new fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes an eventfd readable.
pub fn eventfd_ring(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an fd we own; errors (counter full) mean it is
    // already readable, which is all we want.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Resets an eventfd to not readable.
pub fn eventfd_clear(fd: &OwnedFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64; non-blocking, so EAGAIN is fine.
    unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

/// poll(2)s the fds for input, at most `max`; sleeps `max` when there is none to poll.
pub fn wait(fds: &[Option<RawFd>], max: Duration) {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 2];
    let mut n = 0;
    for fd in fds.iter().flatten() {
        if let Some(p) = pfds.get_mut(n) {
            *p = libc::pollfd {
                fd: *fd,
                events: libc::POLLIN,
                revents: 0,
            };
            n += 1;
        }
    }
    if n == 0 {
        std::thread::sleep(max);
        return;
    }
    let ts = libc::timespec {
        tv_sec: max.as_secs() as libc::time_t,
        tv_nsec: max.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `pfds` holds `n` initialised pollfds and outlives the call; `ts` is a live timespec;
    // a null signal mask keeps the thread's mask. EINTR just ends the sleep early.
    unsafe { libc::ppoll(pfds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
}

/// Pins the calling thread to `core`.
pub fn pin_to_core(core: usize) -> io::Result<()> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("core {core} is past CPU_SETSIZE"),
        ));
    }
    // SAFETY: cpu_set_t is plain bits, so all-zero is the empty set; CPU_SET's index is checked
    // above; sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from a live set.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

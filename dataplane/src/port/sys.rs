//! The few system calls the workers make outside their ports: an eventfd to wake a sleeping
//! worker, ppoll to sleep on fds, and CPU pinning, through rustix's safe wrappers.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::thread::CpuSet;

/// A non-blocking eventfd, or `None` if the kernel refuses one.
pub fn eventfd() -> Option<OwnedFd> {
    rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).ok()
}

/// Makes an eventfd readable.
pub fn eventfd_ring(fd: &OwnedFd) {
    // An error (counter full) means it is already readable, which is all we want.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets an eventfd to not readable.
pub fn eventfd_clear(fd: &OwnedFd) {
    let mut v = [0u8; 8];
    // Non-blocking: EAGAIN (already clear) is fine.
    let _ = rustix::io::read(fd, &mut v);
}

/// ppoll(2)s the fds for input, at most `max`; sleeps `max` when there is none to poll.
pub fn wait(fds: &[Option<RawFd>], max: Duration) {
    // SAFETY: the caller's fds belong to ports and eventfds that outlive this call (the worker
    // owns both while it sleeps here); they are only borrowed for the duration of the poll.
    let borrowed: Vec<BorrowedFd<'_>> = fds
        .iter()
        .flatten()
        .map(|fd| unsafe { BorrowedFd::borrow_raw(*fd) })
        .collect();
    if borrowed.is_empty() {
        std::thread::sleep(max);
        return;
    }
    let mut pfds: Vec<PollFd<'_>> = borrowed
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let ts = Timespec {
        tv_sec: max.as_secs() as _,
        tv_nsec: max.subsec_nanos() as _,
    };
    // EINTR just ends the sleep early.
    let _ = rustix::event::poll(&mut pfds, Some(&ts));
}

/// Pins the calling thread to `core`.
pub fn pin_to_core(core: usize) -> io::Result<()> {
    if core >= CpuSet::MAX_CPU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("core {core} is past CPU_SETSIZE"),
        ));
    }
    let mut set = CpuSet::new();
    set.set(core);
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

//! One `lb run` per interface, and the descriptors it may use.
//!
//! Two balancers on one interface both forward every frame (af_packet: SYNs doubled, connections
//! reset) or split its queues (tap). The lock is an abstract unix socket named after the
//! interface: abstract names live in the network namespace, like interface names, and the kernel
//! frees the name when the process dies however it dies, so a crash never leaves a stale lock.
//! The holder's pid comes from connecting to it (`SO_PEERCRED`).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

/// Held while `lb run` serves the interface; dropping it (or dying) lets the next one in.
#[derive(Debug)]
pub struct InterfaceLock {
    _socket: UnixListener,
}

/// Why the interface could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another `lb run` serves the interface.
    #[error("interface {ifname} is already served by another lb run{}: stop it first (two balancers on one interface both forward every frame)", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The interface.
        ifname: String,
        /// The holder's pid, when it could be asked.
        holder: Option<i32>,
    },
    /// The lock itself failed.
    #[error("locking interface {ifname} against a second lb run: {source}")]
    Io {
        /// The interface.
        ifname: String,
        /// The system's error.
        source: io::Error,
    },
}

/// The abstract socket name that stands for `ifname` in this network namespace.
fn lock_name(ifname: &str) -> String {
    format!("lb/interface/{ifname}")
}

/// Takes `ifname`'s lock, or says who holds it.
pub fn lock_interface(ifname: &str) -> Result<InterfaceLock, LockError> {
    let io_err = |source| LockError::Io {
        ifname: ifname.to_string(),
        source,
    };
    let addr = SocketAddr::from_abstract_name(lock_name(ifname).as_bytes()).map_err(io_err)?;
    match UnixListener::bind_addr(&addr) {
        Ok(socket) => Ok(InterfaceLock { _socket: socket }),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(LockError::Held {
            ifname: ifname.to_string(),
            holder: holder(&addr),
        }),
        Err(e) => Err(io_err(e)),
    }
}

/// The pid of the process listening on `addr` (it never accepts: the connection waits in its
/// backlog until we close it).
fn holder(addr: &SocketAddr) -> Option<i32> {
    let stream = UnixStream::connect_addr(addr).ok()?;
    let cred = rustix::net::sockopt::socket_peercred(&stream).ok()?;
    Some(cred.pid.as_raw_nonzero().get())
}

/// Raises the soft limit on open descriptors to the hard one (systemd and most shells start
/// processes at 1024, far below what is allowed) and returns the soft limit now in force, `None`
/// when unlimited or unknown.
pub fn raise_nofile() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (now.current, now.maximum) {
        if cur < max {
            let raised = Rlimit {
                current: Some(max),
                maximum: Some(max),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => return Some(max),
                Err(e) => {
                    tracing::warn!(soft = cur, hard = max, error = %e, "could not raise the open-file limit")
                }
            }
        }
    }
    now.current
}

/// The admin connections allowed when `soft` descriptors may be open: at most a quarter of them,
/// so the health checks, the ports and the config reloads always find descriptors.
pub fn admin_connection_budget(configured: usize, soft: Option<u64>) -> usize {
    let quarter = soft.map_or(usize::MAX, |s| usize::try_from(s / 4).unwrap_or(usize::MAX));
    configured.min(quarter).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_an_interface_is_refused_and_names_the_holder() {
        let ifname = format!("lbtest{}", std::process::id());
        let first = lock_interface(&ifname).expect("first lock");
        let e = lock_interface(&ifname).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, LockError::Held { holder: Some(p), .. } if u32::try_from(*p).ok() == Some(std::process::id())),
            "{e:?}"
        );
        assert!(
            text.starts_with(&format!(
                "interface {ifname} is already served by another lb run (pid {})",
                std::process::id()
            )),
            "{text}"
        );
        // Another interface is free; the first is free again once released.
        drop(lock_interface(&format!("{ifname}x")).expect("another interface"));
        drop(first);
        lock_interface(&ifname).expect("lock after release");
    }

    #[test]
    fn admin_connections_take_at_most_a_quarter_of_the_descriptors() {
        assert_eq!(admin_connection_budget(256, Some(1_048_576)), 256);
        assert_eq!(admin_connection_budget(256, Some(1024)), 256);
        assert_eq!(admin_connection_budget(256, Some(64)), 16);
        assert_eq!(admin_connection_budget(256, Some(2)), 1);
        assert_eq!(admin_connection_budget(256, None), 256);
    }
}

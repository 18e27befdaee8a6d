//! Network namespaces and veth pairs for tests and the lab, removed again on drop.
//!
//! Everything shells out to `ip` (iproute2): these helpers run once per test or lab setup, never on
//! a packet path, and `ip` is what an operator would type to inspect the same state. Code that must
//! run *inside* a namespace (opening a port, binding a socket) runs on a fresh thread that entered
//! it with setns(2), so the calling process's own namespace never changes; file descriptors opened
//! there stay bound to that namespace and can be used from any thread afterwards.
//!
//! Names get a caller-given prefix plus the process id ([`scoped_name`]) so parallel test binaries
//! never collide. Cleanup runs in `Drop`, so it also happens when a test panics (but not when the
//! process is killed: `ip netns list | grep <prefix>` finds leftovers).

use std::io;
use std::os::fd::AsFd;
use std::process::Command;

pub use dataplane::port::check_ifname;

/// `<prefix><pid><tag>`: a name unique to this process, e.g. `scoped_name("lbt", "a")` = `lbt4242a`.
pub fn scoped_name(prefix: &str, tag: &str) -> String {
    format!("{prefix}{}{tag}", std::process::id())
}

/// Runs `cmd args...` in the current namespace; the error carries the command line and its stderr.
pub fn run(cmd: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run `{cmd}`: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd args...` inside namespace `ns` (`ip netns exec`); returns its stdout.
pub fn run_in(ns: &str, cmd: &str, args: &[&str]) -> io::Result<String> {
    let mut full = vec!["netns", "exec", ns, cmd];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up; fails if it already exists.
    pub fn create(name: &str) -> io::Result<Netns> {
        if name.is_empty() || name.contains('/') || name.len() > 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad namespace name {name:?}"),
            ));
        }
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.run("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `cmd args...` inside this namespace; returns its stdout.
    pub fn run(&self, cmd: &str, args: &[&str]) -> io::Result<String> {
        run_in(&self.name, cmd, args)
    }

    /// Runs `f` on a new thread that entered this namespace, and returns its result. A panic in
    /// `f` is propagated to the caller.
    pub fn enter_on_thread<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = format!("/var/run/netns/{}", self.name);
        let file = std::fs::File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {path}: {e}")))?;
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                // setns(2) moves this (new) thread only; the caller's namespace never changes.
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| {
                    let e = io::Error::from(e);
                    io::Error::new(e.kind(), format!("setns({path}): {e}"))
                })?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the name is enough: the namespace itself goes when its last user (an open
        // socket, a thread) is gone, taking its interfaces with it.
        let _ = run("ip", &["netns", "delete", &self.name]);
    }
}

/// A veth pair, deleted on drop (deleting one end removes both).
#[derive(Debug)]
pub struct VethPair {
    a: String,
    ns_a: Option<String>,
    b: String,
}

impl VethPair {
    /// Name of the first end.
    pub fn a(&self) -> &str {
        &self.a
    }

    /// Name of the second end.
    pub fn b(&self) -> &str {
        &self.b
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Fails harmlessly when the end's namespace was deleted first (the pair went with it).
        let _ = match &self.ns_a {
            Some(ns) => run_in(ns, "ip", &["link", "del", &self.a]),
            None => run("ip", &["link", "del", &self.a]),
        };
    }
}

/// Creates veth pair `a`–`b`, moves each end into its namespace (`None`: stays in the caller's)
/// and sets both up.
pub fn veth_pair(a: &str, ns_a: Option<&str>, b: &str, ns_b: Option<&str>) -> io::Result<VethPair> {
    for name in [a, b] {
        check_ifname(name)?;
    }
    run("ip", &["link", "add", a, "type", "veth", "peer", "name", b])?;
    // From here on, drop removes the pair even if a later step fails.
    let mut pair = VethPair {
        a: a.to_owned(),
        ns_a: None,
        b: b.to_owned(),
    };
    if let Some(ns) = ns_b {
        run("ip", &["link", "set", b, "netns", ns])?;
    }
    if let Some(ns) = ns_a {
        run("ip", &["link", "set", a, "netns", ns])?;
        pair.ns_a = Some(ns.to_owned());
    }
    for (name, ns) in [(a, ns_a), (b, ns_b)] {
        let args = ["link", "set", name, "up"];
        match ns {
            Some(ns) => run_in(ns, "ip", &args)?,
            None => run("ip", &args)?,
        };
    }
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_names_carry_the_pid() {
        let n = scoped_name("lbt", "a");
        assert_eq!(n, format!("lbt{}a", std::process::id()));
    }
}

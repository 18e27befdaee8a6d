//! The lab: network namespaces on this machine where `lb run` balances real connections between a
//! client and "pod" and "VM" backends (`lb lab demo`, `lb lab up`, the end-to-end tests).
//!
//! ```text
//!   <p>cl  client   eth0 198.19.0.10-25/16, 2001:db8:19::10-25/64; 198.18.0.0/15 and 2001:db8::/64 on-link
//!     |
//!   <p>lb  bridge br0 ── TAP (the `interface` of lb.toml, default lb0) ── `lb run` (owns 198.18.0.1, VIPs, SNAT)
//!     |         |          |
//!   <p>pa     <p>pb      <p>vm
//!   pod-a     pod-b      vm-a: 198.18.2.10, VIPs on lo, `lb lab-decap` (IP-in-IP, see [`decap`])
//!   198.18.1.10/11, default route via the balancer (198.18.0.1 / 2001:db8::1), so nat replies
//!   return through it; MACs are the [[neighbors]] of lb.toml.
//!   br0 itself has 198.18.255.1/16: the balancer host's kernel address, where health checks
//!   come from (on-link for the backends, so their answers never touch the dataplane), and
//!   where `[[http]]` listeners listen (a route puts the clients' 198.19.0.0/16 on br0 too).
//! ```
//!
//! With `port = "af_packet"` or `"af_xdp"` the balancer's interface is instead one end of a veth
//! pair whose other end (`vlb`) is on the bridge.
//!
//! A two-armed config (two `[[dataplane.interfaces]]`) gets two bridges: the client and the first
//! interface on `br0`, the backends and the second interface on `br1` (its veth end `vlb1`), and
//! the pods' default routes via our first addresses on the second interface. Nothing else joins
//! the bridges, so every packet between client and pods crosses `lb run`. The VM's direct
//! replies cannot reach the clients there (no router between the bridges).
//!
//! Every name carries a per-run prefix (`<p>` = prefix + pid), so parallel runs never collide, and
//! nothing is created in the root namespace: veth pairs are made inside the balancer's namespace
//! and their far ends moved straight into the peer. Addresses come only from 198.18.0.0/15 and
//! 2001:db8::/32. [`Lab`]'s `Drop` stops every process and deletes the namespaces (which removes
//! every interface with them), so a failing test or an interrupted demo leaves nothing behind; a
//! killed process can leave namespaces and its log directory, which `lb lab down` sweeps.
//!
//! The backends are `lb lab-backend` processes ([`backend`]): HTTP and UDP echo servers that
//! answer with their name, so the client sees which backend it reached.

pub mod backend;
mod client;
mod config;
pub mod decap;
mod demo;
pub mod flood;
mod process;
mod topology;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

pub use client::{http_get, http_request, ping, udp_echo, KeepAlive, Request};
pub use config::Target;
pub use demo::{demo, DemoReport};
pub use topology::{sweep, Lab, LabOptions, LbExit, Swept};

/// The balancer's own IPv4 address in the lab (the backends' default gateway).
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The balancer's own IPv6 address in the lab.
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The balancer host kernel's address on the backends' segment (the source of health checks).
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 255, 1);
/// Number of client addresses of each family (sources rotate over them, so `client-ip` affinity
/// still shows a spread).
pub const CLIENT_ADDRS: u8 = 16;
/// Interface name of the balancer's TAP when the config does not name one.
pub const DEFAULT_INTERFACE: &str = "lb0";
/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One backend host of the lab.
#[derive(Clone, Copy, Debug)]
pub struct BackendHost {
    /// Name it answers with.
    pub name: &'static str,
    /// Namespace suffix.
    pub tag: &'static str,
    /// MAC of its interface (lb.toml's `[[neighbors]]` name it).
    pub mac: &'static str,
    /// IPv4 address.
    pub v4: Ipv4Addr,
    /// IPv6 address.
    pub v6: Ipv6Addr,
    /// A "VM" reached by IP-in-IP: VIPs on `lo`, decapsulation agent, replies straight to clients.
    pub vm: bool,
}

/// The backends every lab has.
pub const BACKENDS: [BackendHost; 3] = [
    BackendHost {
        name: "pod-a",
        tag: "pa",
        mac: "02:00:00:00:01:0a",
        v4: Ipv4Addr::new(198, 18, 1, 10),
        v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 0x10),
        vm: false,
    },
    BackendHost {
        name: "pod-b",
        tag: "pb",
        mac: "02:00:00:00:01:0b",
        v4: Ipv4Addr::new(198, 18, 1, 11),
        v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 0x11),
        vm: false,
    },
    BackendHost {
        name: "vm-a",
        tag: "vm",
        mac: "02:00:00:00:02:0a",
        v4: Ipv4Addr::new(198, 18, 2, 10),
        v6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 2, 0x10),
        vm: true,
    },
];

/// TCP ports every backend serves HTTP on, and UDP ports it echoes on.
pub const HTTP_PORTS: [u16; 3] = [80, 81, 8080];
/// UDP echo ports of every backend.
pub const UDP_PORTS: [u16; 2] = [7, 8007];

/// The `i`-th client IPv4 address (`i` < [`CLIENT_ADDRS`]).
pub fn client_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, 10 + i % CLIENT_ADDRS)
}

/// The `i`-th client IPv6 address.
pub fn client_v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0x19,
        0,
        0,
        0,
        0,
        0x10 + u16::from(i % CLIENT_ADDRS),
    )
}

/// Errors of the lab; each names the step or the input that failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A setup or teardown step failed.
    #[error("lab: {step}: {source}")]
    Step {
        /// What was being done.
        step: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The configuration could not be used for the lab.
    #[error("lab: config {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A process did not get ready in time (or exited).
    #[error("lab: {what} not ready after {waited:?}: {detail}")]
    NotReady {
        /// The process.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// What we know (exit status, last log lines).
        detail: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("lab: interrupted")]
    Interrupted,
}

/// Wraps an I/O error with the step that failed.
pub(crate) fn step<T>(what: impl FnOnce() -> String, r: io::Result<T>) -> Result<T, LabError> {
    r.map_err(|source| LabError::Step {
        step: what(),
        source,
    })
}

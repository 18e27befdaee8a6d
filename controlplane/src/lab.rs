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
//!   come from (on-link for the backends, so their answers never touch the dataplane).
//! ```
//!
//! With `port = "af_packet"` or `"af_xdp"` the balancer's interface is instead one end of a veth
//! pair whose other end (`vlb`) is on the bridge.
//!
//! Every name carries a per-run prefix (`<p>` = prefix + pid), so parallel runs never collide, and
//! nothing is created in the root namespace: veth pairs are made inside the balancer's namespace
//! and their far ends moved straight into the peer. Addresses come only from 198.18.0.0/15 and
//! 2001:db8::/32. [`Lab`]'s `Drop` stops every process and deletes the namespaces (which removes
//! every interface with them), so a failing test or an interrupted demo leaves nothing behind; a
//! killed process can leave namespaces, which `lb lab down` sweeps.
//!
//! The backends are `lb lab-backend` processes ([`backend`]): HTTP and UDP echo servers that
//! answer with their name, so the client sees which backend it reached.

pub mod backend;
pub mod decap;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dataplane::port::netns::{self, Netns};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

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
    /// MAC of its interface (lb.toml's [[neighbors]] name it).
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

fn step<T>(what: impl FnOnce() -> String, r: io::Result<T>) -> Result<T, LabError> {
    r.map_err(|source| LabError::Step {
        step: what(),
        source,
    })
}

/// A child process inside a namespace, killed on drop.
#[derive(Debug)]
struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
    lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    /// Starts `bin args...` in namespace `ns` (`ip netns exec` execs it, so the child is the
    /// program itself); stdout is read line by line when `watch_stdout`, else logged with stderr.
    fn spawn(
        what: &str,
        ns: &str,
        bin: &Path,
        args: &[String],
        dir: &Path,
        watch_stdout: bool,
    ) -> Result<Proc, LabError> {
        let log = dir.join(format!("{what}.log"));
        let err = step(|| format!("create {}", log.display()), File::create(&log))?;
        let out = if watch_stdout {
            Stdio::piped()
        } else {
            Stdio::from(step(
                || format!("clone {}", log.display()),
                err.try_clone(),
            )?)
        };
        let mut child = step(
            || format!("start {what} in {ns}"),
            Command::new("ip")
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                // Logs go to a file: no colour codes.
                .env("NO_COLOR", "1")
                .args(["netns", "exec", ns])
                .arg(bin)
                .args(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn(),
        )?;
        let lines = child.stdout.take().map(|stdout| {
            let (tx, rx) = mpsc::channel();
            // Keeps draining after the first line so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Ok(Proc {
            what: what.to_owned(),
            child,
            log,
            lines,
        })
    }

    /// Waits for the line `ready` on stdout.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        if let Some(rx) = &self.lines {
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(l) if l.trim() == "ready" => return Ok(()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        Err(self.not_ready(timeout))
    }

    fn not_ready(&mut self, waited: Duration) -> LabError {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!("exited ({s})"),
            _ => "still running".to_owned(),
        };
        LabError::NotReady {
            what: self.what.clone(),
            waited,
            detail: format!("{status}; log: {}", tail(&self.log, 10)),
        }
    }

    /// Asks the process to stop with SIGTERM, waits up to `grace`, then kills it.
    fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of a file, joined with " | " (for error messages).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// How to build a lab.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Name prefix; the process id is appended (`<prefix><pid>-lb`, ...).
    pub prefix: String,
    /// The `lb` binary (runs the backends, the decap agent and `lb run`).
    pub lb_bin: PathBuf,
    /// The configuration: its VIPs go on the VM's `lo`, its `interface` names the TAP.
    pub config: PathBuf,
}

/// What the balancer printed when it stopped.
#[derive(Clone, Debug)]
pub struct LbExit {
    /// Exit status (`None` if it could not be collected).
    pub status: Option<std::process::ExitStatus>,
    /// Its stdout and stderr.
    pub output: String,
}

/// A running lab; dropping it stops every process and deletes every namespace.
#[derive(Debug)]
pub struct Lab {
    run: String,
    dir: PathBuf,
    lb_bin: PathBuf,
    config: PathBuf,
    vips: Vec<IpAddr>,
    lb: Option<Proc>,
    procs: Vec<Proc>,
    namespaces: Vec<Netns>,
}

/// Service addresses of a config, read leniently (only `[[services]] vip`) so the lab works with
/// any config `lb run` accepts; and the TAP interface name.
fn read_config(path: &Path) -> Result<(Vec<IpAddr>, String, Vec<Target>), LabError> {
    let bad = |message: String| LabError::Config {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let iface = value
        .get("dataplane")
        .and_then(|d| d.get("interface"))
        .and_then(|i| i.as_str())
        .unwrap_or(DEFAULT_INTERFACE)
        .to_owned();
    netns::check_ifname(&iface).map_err(|e| bad(e.to_string()))?;
    let mut vips = Vec::new();
    let mut targets = Vec::new();
    let services = value
        .get("services")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    for s in &services {
        let name = s.get("name").and_then(|n| n.as_str()).unwrap_or("?");
        let vip: IpAddr = s
            .get("vip")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("service {name:?} has no vip")))?
            .parse()
            .map_err(|e| bad(format!("service {name:?}: vip: {e}")))?;
        if !vips.contains(&vip) {
            vips.push(vip);
        }
        let udp = s.get("protocol").and_then(|p| p.as_str()) == Some("udp");
        // The first port of the first range: enough to reach the service.
        let port = s
            .get("ports")
            .and_then(|p| p.as_array())
            .and_then(|p| p.first())
            .and_then(|p| match p {
                toml::Value::Integer(i) => u16::try_from(*i).ok(),
                toml::Value::String(s) => s.split('-').next().and_then(|p| p.trim().parse().ok()),
                _ => None,
            })
            .ok_or_else(|| bad(format!("service {name:?}: no usable port")))?;
        targets.push(Target {
            service: name.to_owned(),
            addr: SocketAddr::new(vip, port),
            udp,
        });
    }
    Ok((vips, iface, targets))
}

/// `[dataplane] port` and `workers` of a config (`tap` and 1 when absent).
fn read_port_kind(path: &Path) -> Result<(String, u16), LabError> {
    let text = std::fs::read_to_string(path).map_err(|e| LabError::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let value: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| LabError::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let dataplane = value.get("dataplane");
    let kind = dataplane
        .and_then(|d| d.get("port"))
        .and_then(|p| p.as_str())
        .unwrap_or("tap")
        .to_owned();
    let workers = dataplane
        .and_then(|d| d.get("workers"))
        .and_then(|w| w.as_integer())
        .and_then(|w| u16::try_from(w).ok())
        .unwrap_or(1)
        .max(1);
    Ok((kind, workers))
}

/// A service of the config the demo sends traffic to.
#[derive(Clone, Debug)]
pub struct Target {
    /// Service name.
    pub service: String,
    /// VIP and first port.
    pub addr: SocketAddr,
    /// UDP (echo) rather than TCP (HTTP).
    pub udp: bool,
}

impl Lab {
    /// Builds the namespaces, links and addresses and starts the backends and the decap agent
    /// (not the balancer: see [`Lab::start_lb`]).
    pub fn up(opts: &LabOptions) -> Result<Lab, LabError> {
        let (vips, iface, _) = read_config(&opts.config)?;
        let (port_kind, queues) = read_port_kind(&opts.config)?;
        let run = format!("{}{}", opts.prefix, std::process::id());
        let dir = std::env::temp_dir().join(format!("{run}-lab"));
        step(
            || format!("create {}", dir.display()),
            std::fs::create_dir_all(&dir),
        )?;
        let mut lab = Lab {
            run,
            dir,
            lb_bin: opts.lb_bin.clone(),
            config: opts.config.clone(),
            vips,
            lb: None,
            procs: Vec::new(),
            namespaces: Vec::new(),
        };
        lab.build(&iface, (&port_kind, queues))?;
        lab.start_backends()?;
        Ok(lab)
    }

    /// Namespace name for a role tag (`lb`, `cl`, or a backend's tag).
    pub fn ns_name(&self, tag: &str) -> String {
        format!("{}-{tag}", self.run)
    }

    /// The client's namespace.
    pub fn client(&self) -> Result<&Netns, LabError> {
        self.ns("cl")
    }

    /// The namespace of a role tag.
    pub fn ns(&self, tag: &str) -> Result<&Netns, LabError> {
        let name = self.ns_name(tag);
        self.namespaces
            .iter()
            .find(|n| n.name() == name)
            .ok_or_else(|| LabError::Step {
                step: "find a lab namespace".into(),
                source: io::Error::new(io::ErrorKind::NotFound, name),
            })
    }

    /// Where logs and generated files of this run live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn build(&mut self, iface: &str, (port_kind, queues): (&str, u16)) -> Result<(), LabError> {
        for tag in ["lb", "cl", "pa", "pb", "vm"] {
            let name = self.ns_name(tag);
            let ns = step(|| format!("create namespace {name}"), Netns::create(&name))?;
            self.namespaces.push(ns);
        }
        let lb = self.ns_name("lb");
        let in_ns = |ns: &str, args: &[&str]| -> Result<(), LabError> {
            step(
                || format!("in {ns}: ip {}", args.join(" ")),
                netns::run_in(ns, "ip", args),
            )
            .map(|_| ())
        };
        // No IPv6 on the balancer's side of the wires: its interfaces are not hosts (and must not
        // answer neighbor solicitations for the balancer).
        for key in ["all", "default"] {
            set_sysctl(
                self.ns("lb")?,
                &format!("net/ipv6/conf/{key}/disable_ipv6"),
                "1",
            )?;
        }
        // Snooping off: the balancer never sends MLD reports, and must still get the neighbor
        // solicitations for its addresses.
        in_ns(
            &lb,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        )?;
        in_ns(&lb, &["link", "set", "br0", "up"])?;
        // The balancer host's own kernel address on the segment: health checks (and anything
        // else the control plane sends) leave from here, not through the dataplane.
        in_ns(
            &lb,
            &["addr", "add", &format!("{HOST_V4}/16"), "dev", "br0"],
        )?;
        if port_kind == "tap" {
            // A persistent multi-queue TAP, so it is on the bridge before `lb run` attaches.
            in_ns(
                &lb,
                &["tuntap", "add", "dev", iface, "mode", "tap", "multi_queue"],
            )?;
            in_ns(&lb, &["link", "set", iface, "master", "br0", "up"])?;
        } else {
            // af_packet and af_xdp attach to an existing interface: one end of a veth pair whose
            // other end is on the bridge.
            // One queue per worker: AF_XDP binds one socket per queue.
            let queues = queues.to_string();
            in_ns(
                &lb,
                &[
                    "link",
                    "add",
                    iface,
                    "numtxqueues",
                    &queues,
                    "numrxqueues",
                    &queues,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "vlb",
                    "numtxqueues",
                    &queues,
                    "numrxqueues",
                    &queues,
                ],
            )?;
            in_ns(&lb, &["link", "set", "vlb", "master", "br0", "up"])?;
            in_ns(&lb, &["link", "set", iface, "up"])?;
        }

        for (tag, mac) in [("cl", None)]
            .into_iter()
            .chain(BACKENDS.iter().map(|b| (b.tag, Some(b.mac))))
        {
            let peer = self.ns_name(tag);
            let port = format!("v{tag}");
            in_ns(
                &lb,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &peer,
                ],
            )?;
            in_ns(&lb, &["link", "set", &port, "master", "br0", "up"])?;
            if let Some(mac) = mac {
                in_ns(&peer, &["link", "set", "eth0", "address", mac])?;
            }
            in_ns(&peer, &["link", "set", "eth0", "up"])?;
            if port_kind == "af_xdp" {
                // veth hands locally sent packets on with the checksum left to "hardware"; a NIC
                // would fill it in, generic XDP shows it unfinished. Hosts compute their own.
                step(
                    || format!("in {peer}: ethtool -K eth0 tx off (is ethtool installed?)"),
                    netns::run_in(&peer, "ethtool", &["-K", "eth0", "tx", "off"]),
                )?;
            }
        }

        let cl = self.ns_name("cl");
        for i in 0..CLIENT_ADDRS {
            in_ns(
                &cl,
                &[
                    "addr",
                    "add",
                    &format!("{}/16", client_v4(i)),
                    "dev",
                    "eth0",
                ],
            )?;
            in_ns(
                &cl,
                &[
                    "addr",
                    "add",
                    &format!("{}/64", client_v6(i)),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
        }
        in_ns(&cl, &["route", "add", "198.18.0.0/15", "dev", "eth0"])?;
        in_ns(&cl, &["-6", "route", "add", "2001:db8::/64", "dev", "eth0"])?;

        for b in &BACKENDS {
            let ns = self.ns_name(b.tag);
            in_ns(
                &ns,
                &["addr", "add", &format!("{}/16", b.v4), "dev", "eth0"],
            )?;
            in_ns(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("{}/64", b.v6),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
            if b.vm {
                // Direct server return: answers go straight to the clients, from the VIP.
                in_ns(&ns, &["route", "add", "198.19.0.0/16", "dev", "eth0"])?;
                in_ns(
                    &ns,
                    &["-6", "route", "add", "2001:db8:19::/64", "dev", "eth0"],
                )?;
                for vip in &self.vips {
                    let prefix = if vip.is_ipv4() { 32 } else { 128 };
                    in_ns(
                        &ns,
                        &["addr", "add", &format!("{vip}/{prefix}"), "dev", "lo"],
                    )?;
                }
                let vm = self.ns(b.tag)?;
                // The VM holds the VIPs but must not answer ARP for them (the balancer does),
                // and decapsulated packets arrive from clients it routes elsewhere.
                for (key, value) in [
                    ("net/ipv4/conf/all/arp_ignore", "1"),
                    ("net/ipv4/conf/all/arp_announce", "2"),
                    ("net/ipv4/conf/all/rp_filter", "0"),
                    ("net/ipv4/conf/eth0/rp_filter", "0"),
                    ("net/ipv4/conf/lo/rp_filter", "0"),
                ] {
                    set_sysctl(vm, key, value)?;
                }
            } else {
                // Pods answer clients through the balancer (nat needs the replies).
                in_ns(&ns, &["route", "add", "default", "via", &LB_V4.to_string()])?;
                in_ns(
                    &ns,
                    &["-6", "route", "add", "default", "via", &LB_V6.to_string()],
                )?;
            }
        }
        Ok(())
    }

    fn start_backends(&mut self) -> Result<(), LabError> {
        for b in &BACKENDS {
            self.start_backend(b.name)?;
        }
        Ok(())
    }

    /// Stops the named backend's servers (a crashed pod, for health-check tests); `false` if it
    /// was not running.
    pub fn stop_backend(&mut self, name: &str) -> bool {
        let before = self.procs.len();
        self.procs.retain(|p| p.what != name);
        before != self.procs.len()
    }

    /// Starts the named backend's servers (and a VM's decap agent) and waits until they serve.
    pub fn start_backend(&mut self, name: &str) -> Result<(), LabError> {
        for b in BACKENDS.iter().filter(|b| b.name == name) {
            let ns = self.ns_name(b.tag);
            let mut args = vec!["lab-backend".to_owned(), "--name".into(), b.name.into()];
            for p in HTTP_PORTS {
                args.extend(["--http".into(), p.to_string()]);
            }
            for p in UDP_PORTS {
                args.extend(["--udp".into(), p.to_string()]);
            }
            let mut p = Proc::spawn(b.name, &ns, &self.lb_bin, &args, &self.dir, true)?;
            p.wait_ready(Duration::from_secs(10))?;
            self.procs.push(p);
            if b.vm && !self.procs.iter().any(|p| p.what.ends_with("-decap")) {
                let args = ["lab-decap", "--dev", "eth0"].map(String::from);
                let what = format!("{}-decap", b.name);
                let mut p = Proc::spawn(&what, &ns, &self.lb_bin, &args, &self.dir, true)?;
                p.wait_ready(Duration::from_secs(10))?;
                self.procs.push(p);
            }
        }
        Ok(())
    }

    /// Starts `lb run --config <config>` in the balancer's namespace and waits until it answers
    /// ping for its own address from the client (so ARP, the TAP and a worker all work).
    pub fn start_lb(&mut self, timeout: Duration) -> Result<(), LabError> {
        let args = [
            "run".to_owned(),
            "--config".into(),
            self.config.display().to_string(),
        ];
        let lb = self.ns_name("lb");
        let mut p = Proc::spawn("lb-run", &lb, &self.lb_bin, &args, &self.dir, false)?;
        let client = self.client()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = p.child.try_wait() {
                return Err(p.not_ready(timeout));
            }
            let answered = client
                .enter_on_thread(|| ping(IpAddr::V4(LB_V4), 1, Duration::from_millis(300)))
                .is_ok_and(|r| r.is_ok());
            if answered {
                break;
            }
            if Instant::now() > deadline {
                return Err(p.not_ready(timeout));
            }
        }
        self.lb = Some(p);
        Ok(())
    }

    /// Stops the balancer with SIGTERM (it prints its counters) and returns what it printed.
    pub fn stop_lb(&mut self) -> Option<LbExit> {
        let mut p = self.lb.take()?;
        let status = p.terminate(Duration::from_secs(5));
        Some(LbExit {
            status,
            output: std::fs::read_to_string(&p.log).unwrap_or_default(),
        })
    }

    /// Sends `signal` (a name like `HUP`) to the balancer; `false` when it is not running.
    pub fn signal_lb(&self, signal: &str) -> bool {
        let Some(p) = &self.lb else {
            return false;
        };
        Command::new("kill")
            .args([format!("-{signal}"), p.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// What the balancer has logged so far.
    pub fn lb_log(&self) -> String {
        self.lb
            .as_ref()
            .and_then(|p| std::fs::read_to_string(&p.log).ok())
            .unwrap_or_default()
    }

    /// Whether the balancer process is still running.
    pub fn lb_running(&mut self) -> bool {
        self.lb
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_lb();
        self.procs.clear();
        // Anything else still inside (a stray child) would keep a namespace alive.
        for ns in &self.namespaces {
            if let Ok(pids) = netns::run("ip", &["netns", "pids", ns.name()]) {
                for pid in pids.split_whitespace() {
                    let _ = netns::run("kill", &["-KILL", pid]);
                }
            }
        }
        self.namespaces.clear();
        if std::env::var_os("LB_LAB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes `/proc/sys/<key>` as seen from inside `ns`.
fn set_sysctl(ns: &Netns, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{key}");
    let r = ns.enter_on_thread(|| std::fs::write(&path, value));
    step(
        || format!("in {}: {path} = {value}", ns.name()),
        r.and_then(|r| r),
    )
}

/// Deletes every namespace whose name starts with `prefix` (after killing what runs in it):
/// the leftovers of a lab whose process was killed. Returns the names deleted.
pub fn sweep(prefix: &str) -> io::Result<Vec<String>> {
    if prefix.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to sweep namespaces with an empty prefix",
        ));
    }
    let list = netns::run("ip", &["netns", "list"])?;
    let mut deleted = Vec::new();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if !name.starts_with(prefix) {
            continue;
        }
        if let Ok(pids) = netns::run("ip", &["netns", "pids", name]) {
            for pid in pids.split_whitespace() {
                let _ = netns::run("kill", &["-KILL", pid]);
            }
        }
        netns::run("ip", &["netns", "delete", name])?;
        deleted.push(name.to_owned());
    }
    Ok(deleted)
}

/// A socket of `addr`'s family, bound to `src` when given.
fn socket_for(addr: SocketAddr, ty: Type, src: Option<IpAddr>) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, None)?;
    if let Some(src) = src {
        s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    }
    Ok(s)
}

/// One HTTP GET on a new connection (from `src` if given) to `dst`; returns the body. Call it from
/// a thread inside the client's namespace.
pub fn http_get(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    let s = socket_for(dst, Type::STREAM, src)?;
    s.connect_timeout(&SockAddr::from(dst), timeout)?;
    let mut conn = TcpStream::from(s);
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    write!(
        conn,
        "GET / HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    parse_http_body(&answer)
}

/// The body of a `200` answer.
fn parse_http_body(answer: &str) -> io::Result<String> {
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "incomplete HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("HTTP status line {status:?}"),
        ));
    }
    Ok(body.trim_end().to_owned())
}

/// An HTTP/1.1 connection that stays open for several requests (to check a flow keeps its backend).
#[derive(Debug)]
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    /// Connects (from `src` if given) to `dst`.
    pub fn connect(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let s = socket_for(dst, Type::STREAM, src)?;
        s.connect_timeout(&SockAddr::from(dst), timeout)?;
        let conn = TcpStream::from(s);
        conn.set_read_timeout(Some(timeout))?;
        conn.set_write_timeout(Some(timeout))?;
        Ok(KeepAlive {
            reader: BufReader::new(conn.try_clone()?),
            writer: conn,
        })
    }

    /// Sends one request and returns the body of the answer.
    pub fn get(&mut self) -> io::Result<String> {
        self.writer
            .write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")?;
        let mut len = None;
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            head.push_str(&line);
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
        }
        let len = len.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "answer has no Content-Length")
        })?;
        let mut body = vec![0; len.min(65536)];
        self.reader.read_exact(&mut body)?;
        head.push_str(&String::from_utf8_lossy(&body));
        parse_http_body(&head)
    }
}

/// One UDP datagram (from `src` if given) to `dst`; returns the answer. Call it from a thread
/// inside the client's namespace.
pub fn udp_echo(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<String> {
    let s = UdpSocket::from(socket_for(dst, Type::DGRAM, src)?);
    s.set_read_timeout(Some(timeout))?;
    // Connected: only the VIP's answer is accepted, as a real client would.
    s.connect(dst)?;
    s.send(b"hello")?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned())
}

/// Sends one ICMP (v6) echo request to `dst` with a raw socket and waits for the matching reply;
/// returns the round-trip time. Call it from a thread inside the client's namespace.
pub fn ping(dst: IpAddr, seq: u16, timeout: Duration) -> io::Result<Duration> {
    let (domain, proto, request_type, reply_type) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128, 129),
    };
    let s = Socket::new(domain, Type::RAW, Some(proto))?;
    let id = (std::process::id() as u16) ^ seq.rotate_left(8);
    let mut msg = [0u8; 16];
    msg[0] = request_type;
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&seq.to_be_bytes());
    msg[8..].copy_from_slice(b"lb-lab!!");
    if dst.is_ipv4() {
        // The kernel computes the ICMPv6 checksum itself (it needs the pseudo-header).
        let c = dataplane::wire::checksum::icmpv4(&msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let start = Instant::now();
    s.send_to(&msg, &SockAddr::from(SocketAddr::new(dst, 0)))?;
    let mut sock = UdpLike(s);
    let mut buf = [0u8; 1500];
    loop {
        let left = timeout.checked_sub(start.elapsed()).unwrap_or_default();
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no echo reply from {dst}"),
            ));
        }
        sock.0.set_read_timeout(Some(left))?;
        let n = match sock.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let pkt = buf.get(..n).unwrap_or_default();
        // IPv4 raw sockets include the IP header, IPv6 ones do not.
        let icmp = if dst.is_ipv4() {
            let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
            pkt.get(ihl..).unwrap_or_default()
        } else {
            pkt
        };
        if icmp.first() == Some(&reply_type)
            && icmp.get(4..6) == Some(&id.to_be_bytes()[..])
            && icmp.get(6..8) == Some(&seq.to_be_bytes()[..])
        {
            return Ok(start.elapsed());
        }
    }
}

/// `Read` for a raw socket (socket2's `Read` impl is on `&Socket`).
struct UdpLike(Socket);

impl Read for UdpLike {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }
}

/// What `lb lab demo` measured.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// Per service: answers per backend name (`"(failed)"` counts errors and timeouts).
    pub spread: Vec<(Target, BTreeMap<String, usize>)>,
    /// The balancer's output when it stopped (its final counters).
    pub lb_output: String,
    /// Namespaces the lab used (all deleted by the time the report is returned).
    pub namespaces: Vec<String>,
}

/// Builds the lab for `config`, runs `lb run` in it, sends `requests` new connections (TCP
/// services: HTTP GET; UDP services: one datagram) to every service of the config from the
/// client's addresses in turn, stops the balancer and tears everything down. `stop` (set by a
/// signal handler) ends the run early, still tearing down.
pub fn demo(
    lb_bin: &Path,
    config: &Path,
    requests: usize,
    stop: &AtomicBool,
) -> Result<DemoReport, LabError> {
    let (_, _, targets) = read_config(config)?;
    let opts = LabOptions {
        prefix: "lbdemo".into(),
        lb_bin: lb_bin.to_owned(),
        config: config.to_owned(),
    };
    let mut lab = Lab::up(&opts)?;
    let interrupted = || {
        if stop.load(Ordering::Relaxed) {
            Err(LabError::Interrupted)
        } else {
            Ok(())
        }
    };
    interrupted()?;
    lab.start_lb(Duration::from_secs(15))?;
    let mut report = DemoReport {
        namespaces: lab.namespaces.iter().map(|n| n.name().to_owned()).collect(),
        ..DemoReport::default()
    };
    for t in targets {
        let mut spread = BTreeMap::new();
        let client = lab.client()?;
        let r = client.enter_on_thread(|| {
            for i in 0..requests {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = u8::try_from(i % usize::from(CLIENT_ADDRS)).unwrap_or(0);
                let src = match t.addr {
                    SocketAddr::V4(_) => IpAddr::V4(client_v4(k)),
                    SocketAddr::V6(_) => IpAddr::V6(client_v6(k)),
                };
                let answer = if t.udp {
                    udp_echo(Some(src), t.addr, REQUEST_TIMEOUT)
                } else {
                    http_get(Some(src), t.addr, REQUEST_TIMEOUT)
                };
                let key = match answer {
                    Ok(name) => name,
                    Err(e) => {
                        tracing::debug!(error = %e, target = %t.addr, "request failed");
                        "(failed)".to_owned()
                    }
                };
                *spread.entry(key).or_insert(0usize) += 1;
            }
        });
        step(|| "enter the client namespace".to_owned(), r)?;
        report.spread.push((t, spread));
        interrupted()?;
    }
    if let Some(exit) = lab.stop_lb() {
        report.lb_output = exit.output;
    }
    drop(lab);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_bodies_are_taken_from_200_answers_only() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npod-a\n";
        assert_eq!(parse_http_body(ok).unwrap(), "pod-a");
        let e = parse_http_body("HTTP/1.1 503 Busy\r\n\r\nx").unwrap_err();
        assert!(e.to_string().contains("503"));
        assert!(parse_http_body("HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn the_shipped_config_names_the_lab_backends() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb.toml");
        let (vips, iface, targets) = read_config(&path).unwrap();
        assert!(!vips.is_empty());
        assert!(!iface.is_empty());
        assert!(targets.iter().any(|t| !t.udp) && targets.iter().any(|t| t.udp));
        let text = std::fs::read_to_string(&path).unwrap();
        for b in &BACKENDS {
            assert!(
                text.contains(b.mac),
                "lb.toml lacks the neighbor MAC of {}",
                b.name
            );
            assert!(text.contains(&b.v4.to_string()), "lb.toml lacks {}", b.v4);
        }
    }
}

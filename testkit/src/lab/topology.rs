//! Building and tearing down the lab: namespaces, the bridge, veth pairs, addresses and routes, and
//! the processes in them (backends, decap agent, `lb run`).

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::config::{read_config, read_inside, read_port_kind, Inside};
use super::process::Proc;
use super::{
    client_v4, client_v6, ping, step, LabError, BACKENDS, CLIENT_ADDRS, HOST_V4, HTTP_PORTS, LB_V4,
    LB_V6, UDP_PORTS,
};
use crate::netns::{self, Netns};

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
    pub(super) namespaces: Vec<Netns>,
}

impl Lab {
    /// Builds the namespaces, links and addresses and starts the backends and the decap agent
    /// (not the balancer: see [`Lab::start_lb`]).
    pub fn up(opts: &LabOptions) -> Result<Lab, LabError> {
        let (vips, iface, _) = read_config(&opts.config)?;
        let (port_kind, queues) = read_port_kind(&opts.config)?;
        let inside = read_inside(&opts.config)?;
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
        lab.build(&iface, inside.as_ref(), (&port_kind, queues))?;
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

    /// Builds the namespaces and links. One-armed: everyone on bridge `br0` with the balancer's
    /// `iface`. Two-armed (`inside`): the client and `iface` on `br0`, the backends and the
    /// inside interface on `br1`, the pods' default routes via our inside addresses.
    fn build(
        &mut self,
        iface: &str,
        inside: Option<&Inside>,
        (port_kind, queues): (&str, u16),
    ) -> Result<(), LabError> {
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
        let bridges: Vec<(&str, &str, &str)> = match inside {
            None => vec![("br0", iface, "vlb")],
            Some(i) => vec![("br0", iface, "vlb"), ("br1", &i.name, "vlb1")],
        };
        for (bridge, dev, far) in &bridges {
            // Snooping off: the balancer never sends MLD reports, and must still get the
            // neighbor solicitations for its addresses.
            in_ns(
                &lb,
                &[
                    "link",
                    "add",
                    bridge,
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ],
            )?;
            in_ns(&lb, &["link", "set", bridge, "up"])?;
            attach(&in_ns, &lb, dev, far, bridge, port_kind, queues)?;
        }
        // The balancer host's own kernel address on the segment: health checks (and anything
        // else the control plane sends) leave from here, not through the dataplane.
        in_ns(
            &lb,
            &["addr", "add", &format!("{HOST_V4}/16"), "dev", "br0"],
        )?;
        // The clients are on-link too: the [[http]] listeners answer them from the kernel here.
        in_ns(&lb, &["route", "add", "198.19.0.0/16", "dev", "br0"])?;
        let backend_bridge = if inside.is_some() { "br1" } else { "br0" };

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
            let bridge = if mac.is_some() { backend_bridge } else { "br0" };
            in_ns(&lb, &["link", "set", &port, "master", bridge, "up"])?;
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
                // Pods answer clients through the balancer (nat needs the replies): its inside
                // addresses when it has two interfaces.
                let v4 = inside.and_then(|i| i.v4).unwrap_or(LB_V4);
                let v6 = inside.and_then(|i| i.v6).unwrap_or(LB_V6);
                in_ns(&ns, &["route", "add", "default", "via", &v4.to_string()])?;
                in_ns(
                    &ns,
                    &["-6", "route", "add", "default", "via", &v6.to_string()],
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

/// Runs `ip <args>` in a namespace.
type InNs<'a> = dyn Fn(&str, &[&str]) -> Result<(), LabError> + 'a;

/// Puts the balancer's interface `dev` on `bridge`: a persistent multi-queue TAP for `tap`,
/// else one end of a veth pair (`far` on the bridge) with one queue per worker.
fn attach(
    in_ns: &InNs<'_>,
    lb: &str,
    dev: &str,
    far: &str,
    bridge: &str,
    port_kind: &str,
    queues: u16,
) -> Result<(), LabError> {
    if port_kind == "tap" {
        // A persistent multi-queue TAP, so it is on the bridge before `lb run` attaches. Owned
        // by root: a TAP with no owner lets any user who can open /dev/net/tun attach to it and
        // read or inject the lab's frames.
        in_ns(
            lb,
            &[
                "tuntap",
                "add",
                "dev",
                dev,
                "mode",
                "tap",
                "multi_queue",
                "user",
                "0",
            ],
        )?;
        return in_ns(lb, &["link", "set", dev, "master", bridge, "up"]);
    }
    // af_packet and af_xdp attach to an existing interface: one end of a veth pair whose other
    // end is on the bridge. One queue per worker: AF_XDP binds one socket per queue.
    let queues = queues.to_string();
    in_ns(
        lb,
        &[
            "link",
            "add",
            dev,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "type",
            "veth",
            "peer",
            "name",
            far,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
        ],
    )?;
    in_ns(lb, &["link", "set", far, "master", bridge, "up"])?;
    in_ns(lb, &["link", "set", dev, "up"])
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

/// What [`sweep`] deleted.
#[derive(Debug, Default)]
pub struct Swept {
    /// Namespaces deleted (with every interface in them).
    pub namespaces: Vec<String>,
    /// Log and config directories of labs whose process is gone.
    pub dirs: Vec<PathBuf>,
}

/// Deletes every namespace whose name starts with `prefix` (after killing what runs in it) and
/// the log directories of labs with that prefix whose process is gone: the leftovers of a lab
/// whose process was killed.
pub fn sweep(prefix: &str) -> io::Result<Swept> {
    if prefix.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to sweep namespaces with an empty prefix",
        ));
    }
    let list = netns::run("ip", &["netns", "list"])?;
    let mut swept = Swept::default();
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
        swept.namespaces.push(name.to_owned());
    }
    swept.dirs = sweep_dirs(&std::env::temp_dir(), prefix)?;
    Ok(swept)
}

/// Deletes `<prefix><pid>-lab` directories under `tmp` whose pid is no longer running. A live
/// lab keeps its directory: its own `Drop` removes it.
fn sweep_dirs(tmp: &Path, prefix: &str) -> io::Result<Vec<PathBuf>> {
    let mut deleted = Vec::new();
    for entry in std::fs::read_dir(tmp)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix("-lab"))
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() || !entry.file_type()?.is_dir() {
            continue;
        }
        std::fs::remove_dir_all(entry.path())?;
        deleted.push(entry.path());
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::sweep_dirs;

    #[test]
    fn sweep_deletes_the_log_directories_of_dead_labs_only() {
        let tmp = std::env::temp_dir().join(format!("lbsweeptest{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        // A pid that cannot be running (above pid_max's ceiling), ours (alive), another prefix,
        // and a name that only looks like a lab's.
        let dead = tmp.join("lbdemo4999999-lab");
        let alive = tmp.join(format!("lbdemo{}-lab", std::process::id()));
        let other = tmp.join("lbtest4999999-lab");
        let odd = tmp.join("lbdemox-lab");
        for d in [&dead, &alive, &other, &odd] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("lb.log"), "log").unwrap();
        }
        let deleted = sweep_dirs(&tmp, "lbdemo").unwrap();
        let kept = [alive.exists(), other.exists(), odd.exists()];
        let _ = std::fs::remove_dir_all(&tmp);
        assert_eq!(deleted, vec![dead.clone()]);
        assert!(!dead.exists());
        assert_eq!(kept, [true, true, true]);
    }
}

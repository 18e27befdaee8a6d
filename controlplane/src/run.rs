//! `lb run`: open the configured port, start one pinned worker per queue, serve until SIGINT or
//! SIGTERM, then stop the workers and close the ports (which detaches XDP and removes the TAP
//! device the port created).

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use controlplane::compile::{Compiled, RunSettings};
use controlplane::config::{IdleMode, PortKind, XdpMode};
use dataplane::port::af_packet::AfPacketPort;
use dataplane::port::af_xdp::{AfXdpOptions, AfXdpPort, AttachMode};
use dataplane::port::tap::TapPort;
use dataplane::port::Port;
use dataplane::worker::{self, IdlePolicy, Snapshot, WorkerConfig, WorkerHandle};
use dataplane::{DropReason, RoutingTable};

/// Why the ports could not be opened, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The interface does not exist (af_packet and af_xdp attach to an existing one).
    #[error("interface {ifname} does not exist (port kind {}; `ip link` lists the interfaces)", kind.name())]
    NoInterface {
        /// Port kind.
        kind: PortKind,
        /// Interface name.
        ifname: String,
    },
    /// Not allowed to open the port.
    #[error("no permission to open a {} port on {ifname}: run as root or grant CAP_NET_ADMIN and CAP_NET_RAW{} ({source})", kind.name(), if *kind == PortKind::AfXdp { " and CAP_BPF" } else { "" })]
    Permission {
        /// Port kind.
        kind: PortKind,
        /// Interface name.
        ifname: String,
        /// The system's error.
        source: io::Error,
    },
    /// The kernel lacks the socket family or feature the port needs.
    #[error("this kernel does not support {} ports ({source}); try port = \"tap\" or \"af_packet\"", kind.name())]
    KernelLacks {
        /// Port kind.
        kind: PortKind,
        /// The system's error.
        source: io::Error,
    },
    /// Anything else the port reported.
    #[error("opening the {} port on {ifname}: {source}", kind.name())]
    Other {
        /// Port kind.
        kind: PortKind,
        /// Interface name.
        ifname: String,
        /// The system's error.
        source: io::Error,
    },
}

/// Sorts an error from a port constructor into the operator's categories.
pub fn classify(kind: PortKind, ifname: &str, e: io::Error) -> PortError {
    let ifname = ifname.to_string();
    match e.raw_os_error() {
        Some(libc_errno::ENODEV | libc_errno::ENXIO) => {
            return PortError::NoInterface { kind, ifname };
        }
        Some(libc_errno::EPERM | libc_errno::EACCES) => {
            return PortError::Permission {
                kind,
                ifname,
                source: e,
            };
        }
        Some(
            libc_errno::EAFNOSUPPORT
            | libc_errno::EPROTONOSUPPORT
            | libc_errno::ENOSYS
            | libc_errno::EOPNOTSUPP,
        ) => return PortError::KernelLacks { kind, source: e },
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied => PortError::Permission {
            kind,
            ifname,
            source: e,
        },
        io::ErrorKind::Unsupported => PortError::KernelLacks { kind, source: e },
        _ => PortError::Other {
            kind,
            ifname,
            source: e,
        },
    }
}

/// The errno values [`classify`] sorts by (Linux numbering; the binary forbids unsafe and does
/// not link libc directly).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENXIO: i32 = 6;
    pub const EACCES: i32 = 13;
    pub const ENODEV: i32 = 19;
    pub const ENOSYS: i32 = 38;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EPROTONOSUPPORT: i32 = 93;
    pub const EAFNOSUPPORT: i32 = 97;
}

/// Checks that an existing interface is there before a port tries to attach to it, so the
/// message names the interface rather than a socket call. `sys_class_net` is `/sys/class/net`.
pub fn check_interface(
    kind: PortKind,
    ifname: &str,
    sys_class_net: &Path,
) -> Result<(), PortError> {
    if kind == PortKind::Tap || !sys_class_net.exists() {
        // TAP creates its interface; without sysfs the port's own error has to do.
        return Ok(());
    }
    if sys_class_net.join(ifname).exists() {
        Ok(())
    } else {
        Err(PortError::NoInterface {
            kind,
            ifname: ifname.to_string(),
        })
    }
}

/// Opens one port per worker on the configured interface. `owned` are the addresses the
/// balancer answers for and `nat_backends` the backends whose replies come back through it (an
/// AF_XDP port redirects only frames to the former or from the latter; the rest stays with the
/// kernel).
pub fn open_ports(
    run: &RunSettings,
    queues: usize,
    owned: &[IpAddr],
    nat_backends: &[IpAddr],
) -> Result<Vec<Box<dyn Port>>, PortError> {
    check_interface(run.port, &run.interface, Path::new("/sys/class/net"))?;
    let opened = match run.port {
        PortKind::Tap => TapPort::open(&run.interface, queues).map(boxed),
        PortKind::AfPacket => u16::try_from(queues)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
            .and_then(|q| AfPacketPort::open(&run.interface, q))
            .map(boxed),
        PortKind::AfXdp => open_af_xdp(run, queues, owned, nat_backends),
    };
    opened.map_err(|e| classify(run.port, &run.interface, e))
}

fn boxed<P: Port + 'static>(ports: Vec<P>) -> Vec<Box<dyn Port>> {
    ports
        .into_iter()
        .map(|p| Box::new(p) as Box<dyn Port>)
        .collect()
}

fn open_af_xdp(
    run: &RunSettings,
    queues: usize,
    owned: &[IpAddr],
    nat_backends: &[IpAddr],
) -> io::Result<Vec<Box<dyn Port>>> {
    let queues = u16::try_from(queues).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let opts = AfXdpOptions {
        mode: match run.xdp_mode {
            XdpMode::Native => AttachMode::Native,
            XdpMode::Generic => AttachMode::Generic,
            XdpMode::Auto => AttachMode::Auto,
        },
        ..AfXdpOptions::default()
    };
    let ports = AfXdpPort::open(&run.interface, queues, opts)?;
    if let Some(first) = ports.first() {
        first.set_owned_and_sources(owned, nat_backends)?;
        tracing::info!(
            native = first.native(),
            zero_copy = first.zero_copy(),
            "af_xdp attached"
        );
    }
    Ok(boxed(ports))
}

/// The worker idle policy for a config's `idle`.
pub fn idle_policy(mode: IdleMode) -> IdlePolicy {
    match mode {
        IdleMode::Adaptive => IdlePolicy::default(),
        IdleMode::Poll => IdlePolicy::Poll,
    }
}

/// How often the control thread logs a counter summary (at debug level).
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Serves `compiled` from `path` until SIGINT or SIGTERM.
pub fn run(path: &Path, compiled: Compiled) -> anyhow::Result<()> {
    // Signals first: one arriving while ports open must still lead to a clean stop. A second
    // SIGINT/SIGTERM while stopping exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }

    let run = compiled.run.clone();
    let workers = usize::from(compiled.workers);
    let owned: Vec<IpAddr> = compiled.table.owned_addrs().map(IpAddr::from).collect();
    let nat_backends: Vec<IpAddr> = compiled
        .table
        .nat_backend_addrs()
        .map(IpAddr::from)
        .collect();
    let ports = open_ports(&run, workers, &owned, &nat_backends)?;
    let names: Vec<String> = ports.iter().map(|p| p.name()).collect();
    tracing::info!(
        config = %path.display(),
        kind = run.port.name(),
        interface = %run.interface,
        queues = ports.len(),
        ports = ?names,
        "ports open"
    );
    log_served(&compiled.table);

    let table = Arc::new(ArcSwap::from_pointee(compiled.table));
    let cfg = WorkerConfig {
        cores: run.cores.clone(),
        idle: idle_policy(run.idle),
        conntrack: compiled.conntrack,
        handoff_slots: 256,
    };
    let handles = worker::spawn_workers(ports, table.clone(), cfg)
        .map_err(|e| anyhow::anyhow!("starting the workers: {e}"))?;
    for h in &handles {
        match (h.core(), h.pin_error()) {
            (Some(core), Some(e)) => {
                tracing::warn!(worker = h.id(), core, error = %e, "could not pin worker; it runs unpinned")
            }
            (core, _) => {
                tracing::info!(worker = h.id(), ?core, port = h.port_name(), idle = ?run.idle, "worker started")
            }
        }
    }

    let control = std::thread::Builder::new()
        .name("lb-control".into())
        .spawn(move || control_loop(&stop, handles, &table))?;
    let finals = control
        .join()
        .map_err(|_| anyhow::anyhow!("the control thread panicked"))?;
    log_final(&finals);
    Ok(())
}

/// The control-plane thread: waits for a stop signal, logs summaries, stops the workers. Holds
/// the table so the last reference to a replaced table is dropped here, never in a worker.
fn control_loop(
    stop: &AtomicBool,
    handles: Vec<WorkerHandle>,
    table: &ArcSwap<RoutingTable>,
) -> Vec<Snapshot> {
    let mut next_summary = Instant::now() + SUMMARY_EVERY;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() >= next_summary {
            next_summary += SUMMARY_EVERY;
            let snaps: Vec<Snapshot> = handles.iter().map(|h| (*h.counters()).clone()).collect();
            let t = worker::total(&snaps);
            tracing::debug!(
                generation = table.load().generation,
                rx = t.rx_packets,
                tx = t.tx_packets,
                to_host = t.to_host,
                flows = snaps.iter().map(|s| s.flows).sum::<usize>(),
                "counters"
            );
        }
    }
    tracing::info!("signal received; stopping the workers");
    for h in &handles {
        h.stop();
    }
    let mut finals = Vec::with_capacity(handles.len());
    for h in handles {
        let id = h.id();
        match h.join() {
            Ok(s) => finals.push(s),
            Err(e) => tracing::error!(worker = id, error = %e, "worker did not stop cleanly"),
        }
    }
    finals
}

fn log_served(table: &RoutingTable) {
    for svc in &table.services {
        let proto = match svc.proto {
            6 => "tcp",
            17 => "udp",
            _ => "?",
        };
        let ports = if svc.port_lo == 0 && svc.port_hi == 0 {
            "all".to_string()
        } else if svc.port_lo == svc.port_hi {
            svc.port_lo.to_string()
        } else {
            format!("{}-{}", svc.port_lo, svc.port_hi)
        };
        let backends: Vec<String> = svc
            .backends
            .iter()
            .map(|b| {
                let mode = svc
                    .pools
                    .get(usize::from(b.pool))
                    .map_or("?", |p| p.mode.name());
                format!("{}:{} w{} {}", b.addr, b.port, b.weight, mode)
            })
            .collect();
        tracing::info!(
            service = %svc.name,
            vip = %svc.vip,
            proto,
            ports = %ports,
            backends = ?backends,
            "serving"
        );
    }
    if table.services.is_empty() {
        tracing::warn!("no services configured: answering ARP and ping only");
    }
}

fn log_final(finals: &[Snapshot]) {
    let t = worker::total(finals);
    let drops: Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| t.dropped(**r) > 0)
        .map(|r| format!("{}={}", r.name(), t.dropped(*r)))
        .collect();
    let handed: u64 = finals.iter().map(|s| s.stats.handed_off).sum();
    tracing::info!(
        rx = t.rx_packets,
        tx = t.tx_packets,
        to_host = t.to_host,
        handed_off = handed,
        drops = ?drops,
        "stopped"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_interface_and_what_to_do() {
        let e = classify(
            PortKind::AfPacket,
            "eth9",
            io::Error::from_raw_os_error(libc_errno::ENODEV),
        );
        assert!(matches!(e, PortError::NoInterface { .. }));
        assert!(
            e.to_string().contains("interface eth9 does not exist"),
            "{e}"
        );

        let e = classify(
            PortKind::AfXdp,
            "eth0",
            io::Error::from_raw_os_error(libc_errno::EPERM),
        );
        let s = e.to_string();
        assert!(s.contains("no permission") && s.contains("eth0"), "{s}");
        assert!(s.contains("CAP_NET_ADMIN") && s.contains("CAP_BPF"), "{s}");

        let e = classify(
            PortKind::AfXdp,
            "eth0",
            io::Error::from_raw_os_error(libc_errno::EAFNOSUPPORT),
        );
        assert!(e.to_string().contains("does not support af_xdp"), "{e}");

        let e = classify(PortKind::Tap, "lb0", io::Error::other("odd"));
        assert!(e.to_string().contains("tap port on lb0: odd"), "{e}");
    }

    #[test]
    fn a_missing_interface_is_caught_before_opening() {
        let dir = std::env::temp_dir().join(format!("lb-run-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("veth0")).unwrap();
        assert!(check_interface(PortKind::AfPacket, "veth0", &dir).is_ok());
        let e = check_interface(PortKind::AfXdp, "veth9", &dir).unwrap_err();
        assert!(
            e.to_string().contains("interface veth9 does not exist"),
            "{e}"
        );
        // TAP creates its interface.
        assert!(check_interface(PortKind::Tap, "veth9", &dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! `lb run`: open the configured port, start one pinned worker per queue, serve until SIGINT or
//! SIGTERM, then stop the workers and close the ports (which detaches XDP and removes the TAP
//! device the port created).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::instance;
use controlplane::api::admin;
use controlplane::compile::RunSettings;
use controlplane::config::{self, Config, IdleMode, PortKind, XdpMode};
use controlplane::control::{self, AddressFilter, Control, ControlPlane, StartError};
use controlplane::health::{self, Checker, Transition};
use controlplane::sources;
use controlplane::sources::kubernetes::source::Source;
use dataplane::port::af_packet::AfPacketPort;
use dataplane::port::af_xdp::{AfXdpOptions, AfXdpPort, AttachMode};
use dataplane::port::tap::TapPort;
use dataplane::port::Port;
use dataplane::worker::{self, IdlePolicy, Snapshot, WorkerConfig};
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
    if matches!(kind, PortKind::Tap | PortKind::Dpdk) || !sys_class_net.exists() {
        // TAP creates its interface, DPDK has none in the kernel; without sysfs the port's own
        // error has to do.
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

/// Ports opened on the interface, and the filter that decides which frames reach them when
/// the interface filters (AF_XDP: frames to owned addresses and from nat backends; the rest
/// stays with the kernel).
pub struct Opened {
    /// One port per worker.
    pub ports: Vec<Box<dyn Port>>,
    /// The interface's address filter, for the control plane to keep current.
    pub filter: Option<Box<dyn AddressFilter>>,
}

/// The ports of every interface, and the filter of those that filter.
pub struct OpenedAll {
    /// Interface `k`'s queues, one per worker.
    pub interfaces: Vec<Vec<Box<dyn Port>>>,
    /// The address filters of the interfaces that filter, kept equal as one.
    pub filter: Option<Box<dyn AddressFilter>>,
}

/// Opens one port per worker on every configured interface, in order.
pub fn open_all(
    run: &RunSettings,
    dpdk: Option<&config::Dpdk>,
    queues: usize,
) -> Result<OpenedAll, PortError> {
    let mut ports = Vec::with_capacity(run.interfaces.len());
    let mut filters: Vec<Box<dyn AddressFilter>> = Vec::new();
    for link in &run.interfaces {
        // On an error the ports opened so far close as they drop.
        let opened = open_link(run, link, dpdk, queues)?;
        ports.push(opened.ports);
        filters.extend(opened.filter);
    }
    let filter: Option<Box<dyn AddressFilter>> = match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Box::new(filters)),
    };
    Ok(OpenedAll {
        interfaces: ports,
        filter,
    })
}

/// Opens one port per worker on interface `link`.
fn open_link(
    run: &RunSettings,
    link: &config::Link,
    dpdk: Option<&config::Dpdk>,
    queues: usize,
) -> Result<Opened, PortError> {
    let (ifname, kind) = (link.name.as_str(), link.port);
    check_interface(kind, ifname, Path::new("/sys/class/net"))?;
    let unfiltered = |ports| Opened {
        ports,
        filter: None,
    };
    let opened = match kind {
        PortKind::Tap => TapPort::open(ifname, queues).map(|p| unfiltered(boxed(p))),
        PortKind::AfPacket => u16::try_from(queues)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
            .and_then(|q| AfPacketPort::open(ifname, q))
            .map(|p| unfiltered(boxed(p))),
        PortKind::AfXdp => {
            let ids: Vec<u32> = match &link.queues {
                Some(ids) => ids.clone(),
                None => (0..queues as u32).collect(),
            };
            open_af_xdp(run, ifname, &ids)
        }
        PortKind::Dpdk => {
            let Some(d) = dpdk else {
                return Err(PortError::Other {
                    kind,
                    ifname: ifname.to_string(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "port \"dpdk\" needs a [dataplane.dpdk] table",
                    ),
                });
            };
            // DPDK's messages name the cause themselves (an EAL failure reads as EACCES, which
            // `classify` would call a permission problem).
            let (device, vdev) = link.dpdk_device(d);
            return open_dpdk(d, device, vdev.map(str::to_string), run.mtu, queues)
                .map(unfiltered)
                .map_err(|source| PortError::Other {
                    kind,
                    ifname: device.to_string(),
                    source,
                });
        }
    };
    opened.map_err(|e| classify(kind, ifname, e))
}

/// Opens DPDK `device` (created from `vdev` arguments when given) with the EAL and queue
/// settings of `[dataplane.dpdk]`, one queue per worker.
#[cfg(feature = "dpdk")]
fn open_dpdk(
    d: &config::Dpdk,
    device: &str,
    vdev: Option<String>,
    mtu: u16,
    queues: usize,
) -> io::Result<Vec<Box<dyn Port>>> {
    use dataplane::port::dpdk::{DpdkOptions, DpdkPort};
    let queues = u16::try_from(queues).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let opts = DpdkOptions {
        eal_args: d.eal_args.clone(),
        device: device.to_string(),
        vdev_args: vdev,
        rx_descriptors: d.rx_descriptors,
        tx_descriptors: d.tx_descriptors,
        mempool_size: d.mempool_size,
        hugepages: d.hugepages,
        // Jumbo frames need the device told; at 1500 or below its own MTU stays (a net_af_packet
        // device would otherwise set the kernel interface's).
        mtu: if mtu > STANDARD_MTU { mtu } else { 0 },
    };
    let ports = DpdkPort::open(&opts, queues)?;
    if let Some(first) = ports.first() {
        tracing::info!(device, driver = first.driver(), "dpdk device started");
    }
    Ok(boxed(ports))
}

/// Without the feature the port does not exist (the config check refuses it before this).
#[cfg(not(feature = "dpdk"))]
fn open_dpdk(
    _: &config::Dpdk,
    _: &str,
    _: Option<String>,
    _: u16,
    _: usize,
) -> io::Result<Vec<Box<dyn Port>>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "this lb was built without the dpdk feature",
    ))
}

/// Ethernet's MTU: what a DPDK device runs at unless told otherwise.
#[cfg(feature = "dpdk")]
const STANDARD_MTU: u16 = 1500;

/// Tears DPDK's EAL down once the ports are closed (a no-op when no DPDK port ever opened), so
/// `lb run` leaves no runtime or hugepage files behind.
fn close_dpdk() {
    #[cfg(feature = "dpdk")]
    if let Err(e) = dataplane::port::dpdk::eal_cleanup() {
        tracing::warn!(error = %e, "dpdk cleanup");
    }
}

fn boxed<P: Port + 'static>(ports: Vec<P>) -> Vec<Box<dyn Port>> {
    ports
        .into_iter()
        .map(|p| Box::new(p) as Box<dyn Port>)
        .collect()
}

fn open_af_xdp(run: &RunSettings, ifname: &str, queues: &[u32]) -> io::Result<Opened> {
    let opts = AfXdpOptions {
        mode: match run.xdp_mode {
            XdpMode::Native => AttachMode::Native,
            XdpMode::Generic => AttachMode::Generic,
            XdpMode::Auto => AttachMode::Auto,
        },
        ..AfXdpOptions::default()
    };
    let ports = AfXdpPort::open_queues(ifname, queues, opts)?;
    let filter = ports.first().map(|first| {
        tracing::info!(
            interface = ifname,
            native = first.native(),
            zero_copy = first.zero_copy(),
            busy_poll = first.busy_poll().active,
            tx_batch = first.tx_batch(),
            "af_xdp attached"
        );
        if !first.busy_poll().refused.is_empty() {
            tracing::info!(refused = ?first.busy_poll().refused, "af_xdp busy polling options not set");
        }
        Box::new(first.owned_handle()) as Box<dyn AddressFilter>
    });
    Ok(Opened {
        ports: boxed(ports),
        filter,
    })
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

/// How often the control thread looks at its flags (stop, SIGHUP, file changes).
const TICK: Duration = Duration::from_millis(50);

/// How often passive health signals (resets, unanswered SYNs) are read from the workers.
const PASSIVE_EVERY: Duration = Duration::from_secs(1);

/// A changed file is reloaded once it has been quiet this long (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Serves the config at `path` (already loaded as `cfg`) until SIGINT or SIGTERM; SIGHUP or a
/// change of the file reloads it.
pub fn run(path: &Path, cfg: Config, text: String) -> anyhow::Result<()> {
    // Signals first: one arriving while ports open must still lead to a clean stop. A second
    // SIGINT/SIGTERM while stopping exits at once. SIGHUP must never kill a running balancer.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;

    // Before anything touches the interface: a second balancer on it would double or split
    // every frame. Held until this function returns.
    let _locks = cfg
        .dataplane
        .links()
        .iter()
        .map(|l| instance::lock_interface(&l.name))
        .collect::<Result<Vec<_>, _>>()?;
    let nofile = instance::raise_nofile();
    let mut limits = admin::Limits::of(&cfg.admin);
    let budget = instance::admin_connection_budget(limits.max_connections, nofile);
    if budget < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            allowed = budget,
            open_files = ?nofile,
            "admin max_connections lowered to a quarter of the open-file limit"
        );
        limits.max_connections = budget;
    }
    tracing::info!(open_files = ?nofile, admin_connections = limits.max_connections, "limits");

    let admin = cfg.admin.clone();
    let dpdk = cfg.dataplane.dpdk.clone();
    let (cp, start) =
        ControlPlane::new(path, cfg, text, Box::new(control::load_file)).map_err(|e| match e {
            // The report itself, so `main` renders it with the source lines as `lb check` does.
            StartError::Config(report) => anyhow::Error::new(report),
            e => anyhow::Error::new(e),
        })?;
    let cp = Arc::new(cp);
    let run = start.run.clone();
    let workers = usize::from(start.workers);
    let table = cp.table();
    let OpenedAll {
        interfaces: ports,
        filter,
    } = open_all(&run, dpdk.as_ref(), workers).inspect_err(|_| close_dpdk())?;
    if let Some(filter) = filter {
        // Before the workers start: frames for the served addresses must reach them.
        cp.attach_filter(filter)
            .map_err(|e| anyhow::anyhow!("writing the XDP address filter: {e}"))?;
    }
    for (link, queues) in run.interfaces.iter().zip(&ports) {
        let names: Vec<String> = queues.iter().map(|p| p.name()).collect();
        tracing::info!(
            config = %path.display(),
            kind = link.port.name(),
            interface = %link.name,
            queues = queues.len(),
            ports = ?names,
            "ports open"
        );
    }
    log_served(&table.load());

    let wcfg = WorkerConfig {
        cores: run.cores.clone(),
        idle: idle_policy(run.idle),
        conntrack: start.conntrack,
        handoff_slots: 256,
    };
    let handles = worker::spawn_workers_on(ports, table, wcfg)
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
    cp.attach_workers(handles);
    // L7 after the L4 ports: a listener that cannot bind stops `lb run` before it reports ready.
    if let Err(e) = cp.start_http(workers) {
        stop_workers(&cp);
        close_dpdk();
        return Err(anyhow::anyhow!("starting the http listeners: {e}"));
    }
    for h in cp.http_handles() {
        tracing::info!(http = %h.listener, listen = ?h.listen, workers = h.workers.len(), "serving http");
    }

    let control = std::thread::Builder::new()
        .name("lb-control".into())
        .spawn(move || control_thread(&cp, &admin, limits, &stop, &hup))?;
    let finals = control
        .join()
        .map_err(|_| anyhow::anyhow!("the control thread panicked"))??;
    log_final(&finals);
    // The workers have ended and with them the ports.
    close_dpdk();
    Ok(())
}

/// The control-plane thread: a tokio runtime that reloads on SIGHUP and file changes, releases
/// replaced tables, serves the admin API, logs summaries, and stops the workers on
/// SIGINT/SIGTERM. Health probes run on a runtime of their own ([`Checker::start`]).
fn control_thread(
    cp: &Arc<ControlPlane>,
    admin: &config::Admin,
    limits: admin::Limits,
    stop: &AtomicBool,
    hup: &AtomicBool,
) -> anyhow::Result<Vec<Snapshot>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dirty = Arc::new(AtomicBool::new(false));
    let _watcher = {
        let dirty = dirty.clone();
        sources::file::watch(cp.path(), move || dirty.store(true, Ordering::SeqCst))
            .inspect_err(
                |e| tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP"),
            )
            .ok()
    };
    // Health transitions are logged as they happen; the table is rebuilt on the next tick.
    let health_changed = Arc::new(AtomicBool::new(false));
    let checker = {
        let changed = health_changed.clone();
        // Probes on their own runtime: this thread waits for the control plane's lock while
        // others compile under it, and serves the admin API.
        Checker::start(move |transitions: Vec<Transition>| {
            for t in &transitions {
                if t.new.serves() {
                    tracing::info!(backend = %t.key, from = ?t.old, to = ?t.new, "backend up");
                } else {
                    tracing::warn!(backend = %t.key, from = ?t.old, to = ?t.new, "backend down");
                }
            }
            changed.store(true, Ordering::SeqCst);
        })?
    };
    checker.set_targets(health::targets(&cp.config()));
    // The kubernetes source, on this runtime; it stops when dropped (before the runtime).
    let kube_cfg = cp.config().kubernetes;
    let kube = kube_cfg.as_ref().map(|k| {
        let k = k.resolved(cp.path());
        tracing::info!(
            kubeconfig = ?k.kubeconfig,
            namespaces = ?k.namespaces,
            leader_election = k.leader_election.enabled,
            "kubernetes source starting"
        );
        Source::start_elected(rt.handle(), cp.clone(), k)
    });
    // The admin API stops with the control loop (the sender is dropped when it returns).
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if admin.enabled {
        let listener = rt.block_on(tokio::net::TcpListener::bind(admin.listen));
        match listener {
            Ok(l) => {
                tracing::info!(listen = %admin.listen, "admin API listening");
                let control: Arc<dyn Control> = cp.clone();
                let mut stats = admin::Stats::new(checker.local_errors());
                if let Some(source) = &kube {
                    stats = stats.with_source(source.state());
                }
                let stats = Arc::new(stats);
                rt.spawn(async move {
                    let shutdown = async {
                        let _ = admin_stopped.await;
                    };
                    if let Err(e) = admin::serve(l, control, limits, stats, shutdown).await {
                        tracing::error!(error = %e, "admin API stopped");
                    }
                });
            }
            // The dataplane keeps serving: an operator without metrics is better off than
            // clients without service.
            Err(e) => {
                tracing::error!(listen = %admin.listen, error = %e, "cannot listen for the admin API")
            }
        }
    }
    rt.block_on(async {
        let mut tick = tokio::time::interval(TICK);
        let mut next_summary = Instant::now() + SUMMARY_EVERY;
        let mut next_passive = Instant::now();
        let mut changed_at: Option<Instant> = None;
        let mut cluster_applied = 0;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let now = Instant::now();
            if dirty.swap(false, Ordering::SeqCst) {
                changed_at = Some(now);
            }
            let file_settled = changed_at.is_some_and(|t| now.duration_since(t) >= DEBOUNCE);
            if hup.swap(false, Ordering::SeqCst) || file_settled {
                changed_at = None;
                let c = cp.clone();
                // Compiling a large config takes milliseconds: off the runtime's thread.
                let reloaded = tokio::task::spawn_blocking(move || c.reload_file()).await;
                if matches!(reloaded, Ok(Ok(_))) {
                    if let Some(source) = &kube {
                        if cp.cluster_status().last_error.is_some() {
                            // The cluster change the old file refused may fit the new one.
                            source.resync();
                        }
                    }
                    if cp.config().kubernetes != kube_cfg {
                        tracing::warn!(
                            "[kubernetes] changed: the source keeps its settings until lb restarts"
                        );
                    }
                    checker.set_targets(health::targets(&cp.config()));
                    // Checks removed or changed by the file may change health without a
                    // transition being reported: apply the checker's view now.
                    health_changed.store(true, Ordering::SeqCst);
                }
            }
            if kube.is_some() {
                // Cluster services may bring health checks of their own.
                let applied = cp.cluster_status().applied;
                if applied != cluster_applied {
                    cluster_applied = applied;
                    checker.set_targets(health::targets(&cp.config()));
                    health_changed.store(true, Ordering::SeqCst);
                }
            }
            if now >= next_passive {
                next_passive = now + PASSIVE_EVERY;
                checker.passive_tick(now, &cp.passive_samples());
            }
            if health_changed.swap(false, Ordering::SeqCst) {
                let c = cp.clone();
                let (snap, total) = (checker.snapshot(), checker.transitions_total());
                if let Ok(Some(g)) =
                    tokio::task::spawn_blocking(move || c.set_health(snap, total)).await
                {
                    tracing::info!(generation = g, "table rebuilt after a health change");
                }
            }
            cp.expire_draining(now);
            cp.release_retired();
            if now >= next_summary {
                next_summary += SUMMARY_EVERY;
                let snaps = cp.snapshots();
                let owned: Vec<Snapshot> = snaps.iter().map(|s| (**s).clone()).collect();
                let t = worker::total(&owned);
                tracing::debug!(
                    generation = cp.table().load().generation,
                    rx = t.rx_packets,
                    tx = t.tx_packets,
                    to_host = t.to_host,
                    flows = snaps.iter().map(|s| s.flows).sum::<usize>(),
                    "counters"
                );
            }
        }
    });
    if let Some(source) = kube {
        // A leader gives up its Lease so another replica takes over at once.
        rt.block_on(source.shutdown(Duration::from_secs(2)));
    }
    drop(checker);
    drop(admin_stop);
    tracing::info!("signal received; stopping the workers");
    cp.stop_http();
    Ok(stop_workers(cp))
}

/// Stops and joins the dataplane workers; their final counters.
fn stop_workers(cp: &ControlPlane) -> Vec<Snapshot> {
    let handles = cp.detach_workers();
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
    let probes: u64 = finals.iter().map(|s| s.stats.neighbor_probes).sum();
    let crossed: u64 = finals.iter().map(|s| s.stats.crossed).sum();
    let copies: u64 = finals.iter().map(|s| s.stats.crossed_copies).sum();
    tracing::info!(
        rx = t.rx_packets,
        tx = t.tx_packets,
        to_host = t.to_host,
        handed_off = handed,
        crossed_interfaces = crossed,
        crossed_copies = copies,
        neighbor_probes = probes,
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

//! Prometheus metrics built from an [`Observation`].
//!
//! Every scrape builds a fresh registry from one observation, so the exposition is exactly what
//! the control plane saw at that moment and nothing is kept between scrapes. The counters come
//! from the workers' cumulative counters, so they only grow as long as those do. Every name starts
//! with `lb_`; `docs/ADMIN.md` lists them all with their labels.

use std::fmt::Debug;
use std::hash::Hash;
use std::net::SocketAddr;

use dataplane::pipeline::{DropReason, FlowCounters};
use dataplane::port::PortStats;
use dataplane::worker::Snapshot;
use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::l7_metrics::L7Sample;
use crate::control::state::{AdminState, BackendKey, BackendStatus, Observation};

/// The `Content-Type` of [`render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The value of `lb_backend_weight` for a backend that is out of the serving table (disabled or
/// down): distinct from 0, which means draining (kept for existing flows only).
pub const OUT_OF_TABLE_WEIGHT: i64 = -1;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    worker: u16,
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    worker: u16,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceWorkerLabels {
    service: String,
    worker: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendStateLabels {
    service: String,
    backend: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendWorkerLabels {
    service: String,
    backend: String,
    pool: String,
    mode: &'static str,
    kind: &'static str,
    worker: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The `backend` label: the key without its service, `198.18.1.10:8080`, `[2001:db8::10]:80`, or
/// the bare address when the port is 0 (as operators write it in admin API paths).
pub fn backend_label(key: &BackendKey) -> String {
    match key.port {
        0 => key.addr.to_string(),
        p => SocketAddr::new(key.addr, p).to_string(),
    }
}

/// Labels of families; the trait bounds `Family` needs.
trait Labels: Clone + Debug + Hash + Eq + Send + Sync + EncodeLabelSet + 'static {}
impl<T: Clone + Debug + Hash + Eq + Send + Sync + EncodeLabelSet + 'static> Labels for T {}

/// Registers a counter family (the encoder appends `_total` to `name`). Rows with equal labels
/// are summed, so a label set never appears twice.
fn counters<L: Labels>(
    reg: &mut Registry,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) {
    let family = Family::<L, Counter>::default();
    for (labels, v) in rows {
        family.get_or_create(&labels).inc_by(v);
    }
    reg.register(name, help, family);
}

/// Registers a gauge family; a later row with the same labels replaces an earlier one.
fn gauges<L: Labels>(
    reg: &mut Registry,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, i64)>,
) {
    let family = Family::<L, Gauge>::default();
    for (labels, v) in rows {
        family.get_or_create(&labels).set(v);
    }
    reg.register(name, help, family);
}

/// Registers one unlabelled gauge.
fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

/// Registers one unlabelled counter.
fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// Gauges hold i64; counts and sizes never come near its limit, but saturate rather than wrap.
fn to_i64<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// A counter slot of one worker; a slot the worker does not have (yet) counts 0.
fn slot(slots: &[FlowCounters], stat: u32) -> FlowCounters {
    usize::try_from(stat)
        .ok()
        .and_then(|i| slots.get(i))
        .copied()
        .unwrap_or_default()
}

/// A per-interface counter family: name, help, and the port counter it shows.
type PortFamily = (&'static str, &'static str, fn(&PortStats) -> u64);

/// Per worker and interface: what its queue of that interface received, sent and lost.
fn interface_metrics(reg: &mut Registry, workers: &[&Snapshot], names: &[String]) {
    let families: [PortFamily; 4] = [
        (
            "interface_rx_frames",
            "Frames received on the interface's queue.",
            |p| p.rx,
        ),
        (
            "interface_tx_frames",
            "Frames transmitted on the interface's queue.",
            |p| p.tx,
        ),
        (
            "interface_tx_dropped",
            "Frames the interface's queue could not transmit.",
            |p| p.tx_dropped,
        ),
        (
            "interface_rx_dropped",
            "Frames the kernel or device dropped before the queue read them, where it tells.",
            |p| p.rx_dropped,
        ),
    ];
    for (name, help, f) in families {
        counters(
            reg,
            name,
            help,
            workers.iter().flat_map(|s| {
                s.interfaces.iter().enumerate().map(move |(i, p)| {
                    let interface = names.get(i).cloned().unwrap_or_else(|| i.to_string());
                    (
                        InterfaceLabels {
                            worker: s.worker,
                            interface,
                        },
                        f(p),
                    )
                })
            }),
        );
    }
}

/// Per-worker pipeline, worker and port counters.
fn worker_metrics(reg: &mut Registry, workers: &[&Snapshot]) {
    let per_worker = |reg: &mut Registry, name: &str, help: &str, f: fn(&Snapshot) -> u64| {
        counters(
            reg,
            name,
            help,
            workers
                .iter()
                .map(|s| (WorkerLabels { worker: s.worker }, f(s))),
        );
    };
    per_worker(reg, "rx_packets", "Frames received.", |s| {
        s.counters.rx_packets
    });
    per_worker(reg, "rx_bytes", "Bytes received.", |s| s.counters.rx_bytes);
    per_worker(reg, "tx_packets", "Frames transmitted.", |s| {
        s.counters.tx_packets
    });
    per_worker(reg, "tx_bytes", "Bytes transmitted.", |s| {
        s.counters.tx_bytes
    });
    per_worker(reg, "to_host_packets", "Frames handed to the host.", |s| {
        s.counters.to_host
    });
    per_worker(
        reg,
        "to_l7_packets",
        "Frames handed to the L7 proxy.",
        |s| s.counters.to_l7,
    );
    per_worker(
        reg,
        "handoff_packets",
        "Frames received by this worker and handed to the worker owning their flow.",
        |s| s.stats.handed_off,
    );
    per_worker(
        reg,
        "handoff_full",
        "Frames lost because the owning worker's hand-off queue was full.",
        |s| s.stats.handoff_full,
    );
    per_worker(
        reg,
        "port_rx_errors",
        "Receive errors from the port.",
        |s| s.stats.rx_errors,
    );
    per_worker(
        reg,
        "port_tx_errors",
        "Transmit and flush errors from the port.",
        |s| s.stats.tx_errors,
    );
    per_worker(
        reg,
        "port_tx_dropped",
        "Frames the port could not transmit (ring full, send error).",
        |s| s.port.tx_dropped,
    );
    per_worker(
        reg,
        "crossed_interface_packets",
        "Frames transmitted by another interface than they arrived on.",
        |s| s.stats.crossed,
    );
    per_worker(
        reg,
        "crossed_interface_copies",
        "Of the crossed frames, those copied into the other interface's buffers (the rest moved without a copy: DPDK devices lend their mbufs).",
        |s| s.stats.crossed_copies,
    );
    per_worker(
        reg,
        "neighbor_probes",
        "ARP requests and neighbor solicitations sent to resolve next hops (worker 0).",
        |s| s.stats.neighbor_probes,
    );
    per_worker(
        reg,
        "neighbor_expired",
        "Next hops forgotten after unanswered refresh probes.",
        |s| s.stats.neighbor_expired,
    );
    per_worker(
        reg,
        "conntrack_expired",
        "Flows removed from the connection table by expiry.",
        |s| s.stats.expired,
    );
    counters(
        reg,
        "drops",
        "Frames dropped, by reason.",
        workers.iter().flat_map(|s| {
            DropReason::ALL.iter().map(|&r| {
                let labels = DropLabels {
                    worker: s.worker,
                    reason: r.name(),
                };
                (labels, s.counters.dropped(r))
            })
        }),
    );
    gauges(
        reg,
        "conntrack_flows",
        "Flows in the worker's connection table.",
        workers
            .iter()
            .map(|s| (WorkerLabels { worker: s.worker }, to_i64(s.flows))),
    );
    gauges(
        reg,
        "conntrack_keys",
        "Keys in use in the worker's connection table (a nat or fullnat flow takes two).",
        workers
            .iter()
            .map(|s| (WorkerLabels { worker: s.worker }, to_i64(s.keys))),
    );
    gauges(
        reg,
        "worker_table_generation",
        "Generation of the routing table the worker uses.",
        workers
            .iter()
            .map(|s| (WorkerLabels { worker: s.worker }, to_i64(s.generation))),
    );
}

/// Per-service traffic, summed over the service's counter slots (one per port range).
fn service_metrics(reg: &mut Registry, obs: &Observation, workers: &[&Snapshot]) {
    let rows = |f: fn(&FlowCounters) -> u64| {
        let mut rows = Vec::new();
        for svc in &obs.services {
            for s in workers {
                let v = svc
                    .stats
                    .iter()
                    .map(|&st| f(&slot(&s.counters.services, st)))
                    .fold(0u64, u64::wrapping_add);
                let labels = ServiceWorkerLabels {
                    service: svc.name.clone(),
                    worker: s.worker,
                };
                rows.push((labels, v));
            }
        }
        rows
    };
    counters(
        reg,
        "service_packets",
        "Packets forwarded for the service.",
        rows(|c| c.packets),
    );
    counters(
        reg,
        "service_bytes",
        "Bytes forwarded for the service.",
        rows(|c| c.bytes),
    );
    counters(
        reg,
        "service_new_flows",
        "Flows created for the service.",
        rows(|c| c.new_flows),
    );
    gauges(
        reg,
        "service_failing_open",
        "1 while every backend of the service is down and it serves them all regardless.",
        obs.services.iter().map(|s| {
            let labels = ServiceLabels {
                service: s.name.clone(),
            };
            (labels, i64::from(s.failing_open))
        }),
    );
}

fn backend_labels(b: &BackendStatus) -> BackendLabels {
    BackendLabels {
        service: b.key.service.clone(),
        backend: backend_label(&b.key),
    }
}

/// Per-backend traffic (backends in the table, i.e. with a counter slot) and state.
fn backend_metrics(reg: &mut Registry, obs: &Observation, workers: &[&Snapshot]) {
    let backends = || obs.services.iter().flat_map(|s| s.backends.iter());
    let rows = |f: fn(&FlowCounters) -> u64| {
        let mut rows = Vec::new();
        for b in backends() {
            let Some(stat) = b.stat else { continue };
            for s in workers {
                let labels = BackendWorkerLabels {
                    service: b.key.service.clone(),
                    backend: backend_label(&b.key),
                    pool: b.pool.clone(),
                    mode: b.mode,
                    kind: b.kind,
                    worker: s.worker,
                };
                rows.push((labels, f(&slot(&s.counters.backends, stat))));
            }
        }
        rows
    };
    counters(
        reg,
        "backend_packets",
        "Packets forwarded to the backend.",
        rows(|c| c.packets),
    );
    counters(
        reg,
        "backend_bytes",
        "Bytes forwarded to the backend.",
        rows(|c| c.bytes),
    );
    counters(
        reg,
        "backend_new_flows",
        "Flows created towards the backend.",
        rows(|c| c.new_flows),
    );
    counters(
        reg,
        "backend_resets",
        "TCP resets the backend sent (nat and fullnat only).",
        rows(|c| c.resets),
    );
    counters(
        reg,
        "backend_unanswered_syns",
        "Flows whose SYN the backend never answered (nat and fullnat only).",
        rows(|c| c.unanswered_syns),
    );
    gauges(
        reg,
        "backend_up",
        "1 when health checks pass or none are configured, 0 when they fail.",
        backends().map(|b| (backend_labels(b), b.health.gauge())),
    );
    gauges(
        reg,
        "backend_weight",
        "Weight in the serving table: 0 draining, -1 out of the table (disabled or down).",
        backends().map(|b| {
            let w = b.weight.map_or(OUT_OF_TABLE_WEIGHT, i64::from);
            (backend_labels(b), w)
        }),
    );
    gauges(
        reg,
        "backend_configured_weight",
        "Pool weight times backend weight, from the configuration.",
        backends().map(|b| (backend_labels(b), i64::from(b.configured_weight))),
    );
    gauges(
        reg,
        "backend_admin_state",
        "Operator state: 1 on the current state's series, 0 on the others.",
        backends().flat_map(|b| {
            [
                (AdminState::Enabled, "enabled"),
                (AdminState::Drain, "drain"),
                (AdminState::Disabled, "disabled"),
            ]
            .into_iter()
            .map(move |(st, name)| {
                let labels = BackendStateLabels {
                    service: b.key.service.clone(),
                    backend: backend_label(&b.key),
                    state: name,
                };
                (labels, i64::from(b.over.admin == st))
            })
        }),
    );
}

/// The exposition (Prometheus text format 0.0.4, see [`CONTENT_TYPE`]) of one observation.
pub fn render(obs: &Observation) -> String {
    render_with(obs, &ListenerSample::default())
}

/// What the admin listener and the health checker counted, beside the control plane's
/// [`Observation`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerSample {
    /// Admin connections being served.
    pub open: u64,
    /// Admin connections accepted since start.
    pub accepted: u64,
    /// Admin connections closed by the header-read or idle timeout.
    pub timed_out: u64,
    /// Failed accepts on the admin listener.
    pub accept_errors: u64,
    /// Health probes that failed on this host (counted as unknown, not against the backend).
    pub probe_local_errors: u64,
}

/// [`render`], with the admin listener's and the checker's own counters.
pub fn render_with(obs: &Observation, listener: &ListenerSample) -> String {
    render_all(obs, listener, Vec::new())
}

/// [`render_with`] and the `lb_http_*` families of the running `[[http]]` proxies in one
/// exposition (one registry, so each family has one `# TYPE` line).
pub fn render_all(obs: &Observation, listener: &ListenerSample, l7: Vec<L7Sample>) -> String {
    let mut reg = Registry::with_prefix("lb");
    super::l7_metrics::register(&mut reg, l7);
    let workers: Vec<&Snapshot> = obs.workers.iter().map(|s| s.as_ref()).collect();
    worker_metrics(&mut reg, &workers);
    interface_metrics(&mut reg, &workers, &obs.interfaces);
    gauge(
        &mut reg,
        "conntrack_capacity",
        "Connection table capacity of each worker (keys).",
        to_i64(obs.conntrack_capacity),
    );
    gauge(
        &mut reg,
        "draining_services",
        "Services a reload removed that still serve their tracked flows (on_remove = \"drain\").",
        to_i64(obs.draining.services.len()),
    );
    gauge(
        &mut reg,
        "draining_backends",
        "Backends a reload removed (with their service or alone) that still serve their tracked flows.",
        to_i64(obs.draining.backends.len()),
    );
    service_metrics(&mut reg, obs, &workers);
    backend_metrics(&mut reg, obs, &workers);
    counters(
        &mut reg,
        "reloads",
        "Reloads by result: ok swapped in a new table, failed kept the previous one.",
        [
            (ResultLabels { result: "ok" }, obs.reload.ok),
            (ResultLabels { result: "failed" }, obs.reload.failed),
        ],
    );
    gauge(
        &mut reg,
        "last_reload_successful",
        "1 unless the last reload was rejected.",
        i64::from(obs.reload.last_error.is_none()),
    );
    if let Some(t) = obs.reload.last_ok_unix {
        gauge(
            &mut reg,
            "last_reload_success_timestamp_seconds",
            "Unix time of the last successful table swap.",
            to_i64(t),
        );
    }
    gauge(
        &mut reg,
        "table_generation",
        "Generation of the table the control plane last swapped in.",
        to_i64(obs.generation),
    );
    counter(
        &mut reg,
        "health_transitions",
        "Backend health changes (up to down and back) since start.",
        obs.health_transitions,
    );
    counter(
        &mut reg,
        "health_probe_local_errors",
        "Health probes that failed on this host (out of descriptors, buffers or ports): the backend kept its state.",
        listener.probe_local_errors,
    );
    gauge(
        &mut reg,
        "admin_connections",
        "Admin API connections being served.",
        to_i64(listener.open),
    );
    counter(
        &mut reg,
        "admin_connections_accepted",
        "Admin API connections accepted since start.",
        listener.accepted,
    );
    counter(
        &mut reg,
        "admin_connections_timed_out",
        "Admin API connections closed because a request head or any byte did not come in time.",
        listener.timed_out,
    );
    counter(
        &mut reg,
        "admin_accept_errors",
        "Failed accepts on the admin listener (out of descriptors, most likely).",
        listener.accept_errors,
    );
    let mut out = String::new();
    // Writing into a String cannot fail and our label encoders do not fail either; should one
    // ever, the scrape shows what was written so far rather than taking the API down.
    if let Err(e) = prometheus_text::encode(&mut out, &reg) {
        tracing::warn!("metrics encoding stopped early: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::control::state::{Health, Override, ReloadStatus, ServiceStatus};

    fn backend(addr: &str, stat: Option<u32>) -> BackendStatus {
        BackendStatus {
            key: format!("web/{addr}").parse().unwrap(),
            pool: "main".into(),
            mode: "fullnat",
            kind: "pod",
            configured_weight: 1,
            weight: Some(1),
            health: Health::Unchecked,
            over: Override::default(),
            stat,
        }
    }

    /// Value of the sample written exactly as `series` (name and labels in encoder order).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn slots_beyond_the_workers_counters_count_zero() {
        let mut snap = Snapshot::default();
        snap.counters.services = vec![FlowCounters {
            packets: 5,
            ..Default::default()
        }];
        snap.counters.backends = vec![FlowCounters {
            packets: 7,
            ..Default::default()
        }];
        snap.interfaces = vec![
            PortStats {
                rx: 3,
                ..Default::default()
            },
            PortStats {
                tx: 4,
                ..Default::default()
            },
        ];
        let obs = Observation {
            generation: 1,
            config_path: "lb.toml".into(),
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "198.18.0.1".parse().unwrap(),
                protocol: "tcp",
                ports: vec![],
                failing_open: false,
                backends: vec![
                    backend("198.18.1.10:80", Some(0)),
                    backend("198.18.1.11:80", Some(1)),
                    backend("198.18.1.12:80", Some(u32::MAX)),
                    backend("198.18.1.13:80", None),
                ],
                stats: vec![0, 3, u32::MAX],
            }],
            reload: ReloadStatus::default(),
            health_transitions: 0,
            workers: vec![
                Arc::new(snap),
                Arc::new(Snapshot {
                    worker: 1,
                    ..Default::default()
                }),
            ],
            conntrack_capacity: 0,
            interfaces: vec!["lbo".into(), "lbi".into()],
            draining: Default::default(),
        };
        let text = render(&obs);
        // Each worker's queue of each interface, by the interface's name.
        assert_eq!(
            sample(
                &text,
                "lb_interface_rx_frames_total{worker=\"0\",interface=\"lbo\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "lb_interface_tx_frames_total{worker=\"0\",interface=\"lbi\"}"
            ),
            Some(4.0)
        );
        let b = |addr: &str, w: u16| {
            let series = format!(
                "lb_backend_packets_total{{service=\"web\",backend=\"{addr}\",pool=\"main\",\
                 mode=\"fullnat\",kind=\"pod\",worker=\"{w}\"}}"
            );
            sample(&text, &series)
        };
        assert_eq!(b("198.18.1.10:80", 0), Some(7.0));
        assert_eq!(b("198.18.1.11:80", 0), Some(0.0));
        assert_eq!(b("198.18.1.12:80", 0), Some(0.0));
        assert_eq!(b("198.18.1.10:80", 1), Some(0.0));
        // Out of the table: no traffic series, but its state is still shown.
        assert_eq!(b("198.18.1.13:80", 0), None);
        assert_eq!(
            sample(
                &text,
                "lb_backend_up{service=\"web\",backend=\"198.18.1.13:80\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "lb_service_packets_total{service=\"web\",worker=\"0\"}"
            ),
            Some(5.0)
        );
        assert_eq!(
            sample(
                &text,
                "lb_service_packets_total{service=\"web\",worker=\"1\"}"
            ),
            Some(0.0)
        );
        // Never reloaded successfully: no timestamp sample.
        assert!(!text.contains("lb_last_reload_success_timestamp_seconds "));
    }

    #[test]
    fn backend_labels_match_admin_paths() {
        let k = |s: &str| backend_label(&s.parse().unwrap());
        assert_eq!(k("web/198.18.1.10:8080"), "198.18.1.10:8080");
        assert_eq!(k("web/[2001:db8::10]:80"), "[2001:db8::10]:80");
        assert_eq!(k("web/198.18.2.10"), "198.18.2.10");
        assert_eq!(k("web/2001:db8::10"), "2001:db8::10");
    }
}

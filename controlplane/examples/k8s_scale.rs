//! The kubernetes source at scale: 10,000 Services with 100,000 endpoints in an in-process
//! fake API server (`kubefake`), watched by the real source into a [`ControlPlane`] with two
//! L4 workers on in-memory ports.
//!
//! - 1,000 Services of type LoadBalancer (L4, VIPs from 198.19.0.0/16) and 9,000 ClusterIP
//!   Services behind 1,000 Ingresses (one host each, 9 Prefix paths each, one Service per
//!   path); one EndpointSlice of 10 ready endpoints per Service.
//! - Initial sync: from starting the source to the source reporting its first apply.
//! - Then single endpoint changes (one endpoint turns not ready, ready again, a new endpoint
//!   joins), each timed from the write to the fake server until (a) the control plane has
//!   published a table generation that reflects it (checked in the table for L4, in the
//!   serving config for Ingress backends) and (b) both L4 workers have adopted it
//!   (`ControlPlane::wait_adopted`). The L7 proxies are not started (they would bind the
//!   Ingress address); for Ingress backends (a) is the moment they would switch.
//!   Endpoint moves take the source's patch path (only the changed Services' entries).
//! - Where a whole apply's time goes (any change but an endpoint move), measured apart on the
//!   same state: cloning the snapshot (the source does it per whole apply), `translate`, and
//!   `set_cluster` split into validate
//!   (`Config::validate`), compile (`compile_probe`, warm Maglev cache) and the rest (merge,
//!   drain, swap).
//! - Memory: VmRSS and VmHWM of this process (the fake API server and its copy of every
//!   object are in it too: its share is printed before the source starts).
//!
//! `perf/k8s-scale` runs it; `--changes N` (default 200), `--services N` (default 10000,
//! a tenth of them L4), `--endpoints N` (per Service, default 10).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::config;
use controlplane::control::{self, ClusterPart, Control, ControlPlane};
use controlplane::sources::kubernetes::model::{ObjectKey, Snapshot};
use controlplane::sources::kubernetes::source::{self, Source};
use controlplane::sources::kubernetes::translate;
use dataplane::port::mem::MemPort;
use dataplane::port::Port;
use dataplane::worker::{self, WorkerConfig};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kubefake::FakeApiServer;

const NS: &str = "scale";
/// Paths (and so Services) per Ingress.
const PATHS: usize = 9;
/// Endpoint slots per Service in the address plan (the first `endpoints` exist at start; the
/// rest are for endpoints that join later).
const SLOTS: usize = 16;
/// Pod addresses per port: 198.18.1.0 - 198.18.254.255 (198.18.0.0/24 holds lb's own).
const ADDRS_PER_PORT: usize = 65_024;
/// Longest wait for any one step.
const TIMEOUT: Duration = Duration::from_secs(60);

const BASE: &str = r#"
[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
snat = ["198.18.0.2"]
gateway_mac = "02:00:00:00:00:fe"
workers = 2
"#;

/// The benchmark's shape.
#[derive(Clone, Copy, Debug)]
struct Shape {
    services: usize,
    l4: usize,
    endpoints: usize,
    changes: usize,
}

fn meta(name: &str, ns: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(str::to_string),
        ..ObjectMeta::default()
    }
}

fn service_name(shape: &Shape, s: usize) -> String {
    if s < shape.l4 {
        format!("l4-{s}")
    } else {
        format!("web-{s}")
    }
}

/// Endpoint `e` of Service `s`: its address and port. Every endpoint of a Service shares its
/// port (one slice); `(address, port)` is unique over all Services.
fn endpoint_addr(s: usize, e: usize) -> (String, i32) {
    let i = s * SLOTS + e;
    let host = 256 + i % ADDRS_PER_PORT;
    let port = 8080 + (i / ADDRS_PER_PORT) as i32;
    (format!("198.18.{}.{}", host / 256, host % 256), port)
}

fn service(shape: &Shape, s: usize) -> Service {
    let (_, port) = endpoint_addr(s, 0);
    let l4 = s < shape.l4;
    Service {
        metadata: meta(&service_name(shape, s), Some(NS)),
        spec: Some(ServiceSpec {
            type_: l4.then(|| "LoadBalancer".to_string()),
            load_balancer_class: l4.then(|| "lb.example.com/vip".to_string()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(port)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The state of one endpoint slot: absent, ready, or not ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ep {
    Absent,
    Ready,
    NotReady,
}

fn slice(shape: &Shape, s: usize, eps: &[Ep]) -> EndpointSlice {
    let name = service_name(shape, s);
    let mut m = meta(&format!("{name}-abcde"), Some(NS));
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_string(),
        name,
    )]));
    let (_, port) = endpoint_addr(s, 0);
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: eps
            .iter()
            .enumerate()
            .filter(|(_, st)| **st != Ep::Absent)
            .map(|(e, st)| {
                let ready = *st == Ep::Ready;
                Endpoint {
                    addresses: vec![endpoint_addr(s, e).0],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(ready),
                        terminating: Some(false),
                    }),
                    ..Endpoint::default()
                }
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

fn class() -> IngressClass {
    IngressClass {
        metadata: meta("lb", None),
        spec: Some(IngressClassSpec {
            controller: Some("lb.example.com/ingress-controller".into()),
            ..IngressClassSpec::default()
        }),
    }
}

/// Ingress `i`: host `h{i}.scale.example.com`, path `/s{j}` to the j-th of its Services.
fn ingress(shape: &Shape, i: usize) -> Ingress {
    let paths = (0..PATHS)
        .filter_map(|j| {
            let s = shape.l4 + i * PATHS + j;
            (s < shape.services).then(|| HTTPIngressPath {
                path: Some(format!("/s{j}")),
                path_type: "Prefix".into(),
                backend: IngressBackend {
                    service: Some(IngressServiceBackend {
                        name: service_name(shape, s),
                        port: Some(ServiceBackendPort {
                            number: Some(80),
                            ..ServiceBackendPort::default()
                        }),
                    }),
                    ..IngressBackend::default()
                },
            })
        })
        .collect();
    Ingress {
        metadata: meta(&format!("ing-{i}"), Some(NS)),
        spec: Some(IngressSpec {
            ingress_class_name: Some("lb".into()),
            rules: Some(vec![IngressRule {
                host: Some(format!("h{i}.scale.example.com")),
                http: Some(HTTPIngressRuleValue { paths }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}

fn ingresses(shape: &Shape) -> usize {
    (shape.services - shape.l4).div_ceil(PATHS)
}

/// The objects as the source would hold them (for the split timings).
fn snapshot(shape: &Shape, eps: &[Vec<Ep>]) -> Snapshot {
    let mut snap = Snapshot::default();
    snap.ingress_classes.insert("lb".into(), class());
    for (s, ep) in eps.iter().enumerate().take(shape.services) {
        let svc = service(shape, s);
        snap.services.insert(ObjectKey::of(&svc), svc);
        let sl = slice(shape, s, ep);
        snap.endpoint_slices.insert(ObjectKey::of(&sl), sl);
    }
    for i in 0..ingresses(shape) {
        let ing = ingress(shape, i);
        snap.ingresses.insert(ObjectKey::of(&ing), ing);
    }
    snap
}

/// VmRSS and VmHWM of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `p50 / p99 / max` of `v` in ms (sorts it).
fn summary(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort();
    format!(
        "{:.1} / {:.1} / {:.1}",
        ms(percentile(v, 0.5)),
        ms(percentile(v, 0.99)),
        ms(v[v.len() - 1])
    )
}

/// Median and minimum of `runs` timings of `f`, as `median (min)` in ms.
fn timed(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    (v[v.len() / 2], v[0])
}

/// Whether endpoint `e` of Service `s` takes new connections in what the plane serves now:
/// the L4 table for LoadBalancer Services, the serving `[[http]]` config for Ingress ones.
fn taking(cp: &ControlPlane, shape: &Shape, s: usize, e: usize) -> bool {
    let (addr, port) = endpoint_addr(s, e);
    if s < shape.l4 {
        let name = format!("k8s/{NS}/{}", service_name(shape, s));
        let t = cp.table().load();
        t.services
            .iter()
            .filter(|x| *x.name == *name || x.name.starts_with(&format!("{name}/")))
            .flat_map(|x| x.backends.iter())
            .any(|b| b.addr.to_string() == addr && i32::from(b.port) == port && b.weight > 0)
    } else {
        cp.http().iter().flat_map(|h| h.backends.iter()).any(|b| {
            b.key.addr.to_string() == addr
                && i32::from(b.key.port) == port
                && b.weight.is_some_and(|w| w > 0)
        })
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let services = arg("--services", 10_000).max(10);
    let shape = Shape {
        services,
        l4: services / 10,
        endpoints: arg("--endpoints", 10).clamp(2, SLOTS - 4),
        changes: arg("--changes", 200).max(3),
    };
    println!(
        "k8s scale: {} Services ({} LoadBalancer, {} behind {} Ingresses x {PATHS} paths), {} endpoints ({} per Service), {} changes",
        shape.services,
        shape.l4,
        shape.services - shape.l4,
        ingresses(&shape),
        shape.services * shape.endpoints,
        shape.endpoints,
        shape.changes
    );
    let mut eps: Vec<Vec<Ep>> = (0..shape.services)
        .map(|_| {
            let mut v = vec![Ep::Absent; SLOTS];
            v[..shape.endpoints].fill(Ep::Ready);
            v
        })
        .collect();

    // The cluster.
    let (rss0, _) = memory();
    let t = Instant::now();
    let fake = FakeApiServer::start();
    fake.apply(&class());
    for (s, ep) in eps.iter().enumerate() {
        fake.apply(&service(&shape, s));
        fake.apply(&slice(&shape, s, ep));
    }
    for i in 0..ingresses(&shape) {
        fake.apply(&ingress(&shape, i));
    }
    let (rss_fake, _) = memory();
    println!(
        "fake API server loaded in {:.1} s; RSS {:.0} MiB before, {:.0} MiB with the fake's objects",
        t.elapsed().as_secs_f64(),
        rss0,
        rss_fake
    );

    // The balancer: lb.toml with [kubernetes], two L4 workers on in-memory ports.
    let dir = std::env::temp_dir().join(format!("lb-k8s-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path: PathBuf = dir.join("lb.toml");
    let kc = dir.join("kubeconfig");
    fake.write_kubeconfig(&kc).expect("kubeconfig");
    let text = format!(
        "{BASE}\n[kubernetes]\nkubeconfig = {kc:?}\nsecrets_dir = {:?}\ningress_http = [\"198.18.0.10:80\"]\nvip_pool = [\"198.19.0.0/16\"]\n",
        dir.join("secrets")
    );
    std::fs::write(&path, text).expect("lb.toml");
    let (cfg, text) = config::load_with_text(&path).expect("lb.toml loads");
    let k = cfg
        .kubernetes
        .clone()
        .expect("[kubernetes] present")
        .resolved(&path);
    let settings = source::settings(&k);
    let (cp, start) = ControlPlane::new(&path, cfg, text, Box::new(control::load_file))
        .expect("the file compiles");
    let cp = Arc::new(cp);
    let ports: Vec<Box<dyn Port>> = (0..start.workers)
        .map(|_| Box::new(MemPort::new()) as Box<dyn Port>)
        .collect();
    let handles = worker::spawn_workers(ports, cp.table(), WorkerConfig::new(start.conntrack))
        .expect("workers start");
    cp.attach_workers(handles);
    let (rss_plane, _) = memory();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Not the leader: no status writes (they are not on the path measured here).
    let (_leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let src = Source::start(rt.handle(), cp.clone(), k, leader_rx);
    let state = src.state();
    while !state.ready() {
        assert!(t.elapsed() < TIMEOUT, "no sync: {:?}", state.reasons());
        std::thread::sleep(Duration::from_millis(5));
    }
    let synced = t.elapsed();
    let g = cp.table().load().generation;
    cp.wait_adopted(g, TIMEOUT)
        .expect("workers adopt the first sync");
    let adopted = t.elapsed();
    let view = state.view();
    let st = cp.cluster_status();
    let (rss_sync, hwm_sync) = memory();
    assert_eq!(
        st.services, shape.l4,
        "every LoadBalancer Service is served (problems: {})",
        view.problems
    );
    assert!(
        taking(&cp, &shape, shape.services - 1, 0),
        "the last Ingress Service's endpoints are served"
    );
    println!(
        "initial sync: {:.2} s to the first apply, {:.2} s until both workers serve it ({} L4 services, {} [[http]], {} problems)",
        synced.as_secs_f64(),
        adopted.as_secs_f64(),
        st.services,
        st.http,
        view.problems
    );

    // Single endpoint changes, spread over the Services: for each, one endpoint turns not
    // ready (a removal: applied at once), ready again and a new one joins (additions: they
    // wait for the batch window, 5 ms by default).
    let mut lat: BTreeMap<(&str, &str), Vec<Duration>> = BTreeMap::new();
    let mut all = Vec::new();
    let mut published_all = Vec::new();
    let mut applies = Vec::new();
    let changes_started = Instant::now();
    for i in 0..shape.changes {
        let s = (i / 3 * 7919 + 13) % shape.services;
        let (op, e, want) = match i % 3 {
            0 => ("not ready", 0, Ep::NotReady),
            1 => ("ready again", 0, Ep::Ready),
            _ => {
                let e = eps[s].iter().position(|x| *x == Ep::Absent);
                match e {
                    Some(e) => ("new endpoint", e, Ep::Ready),
                    None => ("ready again", 0, Ep::Ready),
                }
            }
        };
        eps[s][e] = want;
        let obj = slice(&shape, s, &eps[s]);
        let before = cp.table().load().generation;
        let applied_before = state.view().sync_seconds_count;
        let t0 = Instant::now();
        fake.apply(&obj);
        // Published: a newer generation; adopted: both workers serve it. Whether it shows
        // the change is checked after that (reading the serving [[http]] config takes a while
        // with 90,000 backends, so it stays out of the timing); if not, the next one is awaited.
        let mut seen = before;
        let (published, adopted) = loop {
            let g = cp.table().load().generation;
            if g > seen {
                seen = g;
                let published = t0.elapsed();
                cp.wait_adopted(g, TIMEOUT)
                    .expect("workers adopt the change");
                let adopted = t0.elapsed();
                if taking(&cp, &shape, s, e) == (want == Ep::Ready) {
                    break (published, adopted);
                }
            }
            assert!(t0.elapsed() < TIMEOUT, "change {i} never published");
            std::thread::sleep(Duration::from_micros(100));
        };
        let layer = if s < shape.l4 { "L4" } else { "Ingress" };
        lat.entry((layer, op)).or_default().push(adopted);
        all.push(adopted);
        published_all.push(published);
        // The source records its apply just after the swap: wait for it (outside the timing).
        let waited = Instant::now();
        loop {
            let v = state.view();
            if v.sync_seconds_count > applied_before {
                if let Some(secs) = v.last_sync_seconds {
                    applies.push(Duration::from_secs_f64(secs));
                }
                break;
            }
            if waited.elapsed() > Duration::from_secs(1) {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        cp.release_retired();
        if (i + 1) % 20 == 0 {
            eprintln!(
                "  {} changes, {:.1} s since the first",
                i + 1,
                changes_started.elapsed().as_secs_f64()
            );
        }
    }
    let (rss_changes, hwm) = memory();
    drop(src);

    // Where an apply's time goes, on the same state (the source stopped): median (min).
    let runs = 5;
    let snap = snapshot(&shape, &eps);
    let (clone_med, clone_min) = timed(runs, || drop(std::hint::black_box(snap.clone())));
    let (tr_med, tr_min) = timed(runs, || {
        drop(std::hint::black_box(translate::translate(&snap, &settings)))
    });
    let mut toggled = eps.clone();
    let mut sets = Vec::new();
    for r in 0..runs {
        // One endpoint of one Service flips each run, as a watch event would.
        let s = shape.l4 + r * 101 % (shape.services - shape.l4);
        toggled[s][1] = if toggled[s][1] == Ep::Ready {
            Ep::NotReady
        } else {
            Ep::Ready
        };
        let t = translate::translate(&snapshot(&shape, &toggled), &settings);
        let part = ClusterPart {
            services: t.services,
            http: t.http,
        };
        let t0 = Instant::now();
        cp.set_cluster(part).expect("the changed part applies");
        sets.push(t0.elapsed());
        cp.release_retired();
    }
    sets.sort();
    let (set_med, set_min) = (sets[sets.len() / 2], sets[0]);
    let serving = cp.config();
    let (comp_med, comp_min) = timed(runs, || {
        cp.compile_probe(&serving)
            .expect("the serving config compiles")
    });
    let (val_med, val_min) = timed(3, || {
        let problems = serving.validate();
        assert!(problems.is_empty(), "the serving config is valid");
    });
    let (_, hwm_end) = memory();

    let mut published_sorted = published_all.clone();
    println!();
    println!("| what | p50 / p99 / max (ms) | n |");
    println!("|---|---|---|");
    println!(
        "| write to both workers serving it, all changes | {} | {} |",
        summary(&mut all),
        all.len()
    );
    println!(
        "| write to the table published (before the workers' adoption) | {} | {} |",
        summary(&mut published_sorted),
        published_all.len()
    );
    for ((layer, op), v) in &mut lat {
        let n = v.len();
        println!("| {layer}: {op} | {} | {n} |", summary(v));
    }
    println!(
        "| source's own lb_kubernetes_sync_seconds (first event of an apply to published) | {} | {} |",
        summary(&mut applies),
        applies.len()
    );
    println!();
    println!("| one whole apply (any change but an endpoint move), split (same state, source stopped) | median (min) ms |");
    println!("|---|---|");
    println!(
        "| clone the snapshot (the source does it per whole apply) | {:.1} ({:.1}) |",
        ms(clone_med),
        ms(clone_min)
    );
    println!(
        "| translate (snapshot -> services + [[http]]) | {:.1} ({:.1}) |",
        ms(tr_med),
        ms(tr_min)
    );
    println!(
        "| set_cluster (merge, checks, compile, drain, swap) | {:.1} ({:.1}) |",
        ms(set_med),
        ms(set_min)
    );
    println!(
        "| of which compile (compile_probe, warm Maglev cache) | {:.1} ({:.1}) |",
        ms(comp_med),
        ms(comp_min)
    );
    println!(
        "| rest of set_cluster (merge, validate, drain, swap) | {:.1} |",
        ms(set_med.saturating_sub(comp_med))
    );
    println!(
        "| validate alone (`Config::validate` of the serving config, median (min) of 3) | {:.1} ({:.1}) |",
        ms(val_med),
        ms(val_min)
    );
    println!();
    println!("| memory (MiB) | RSS | peak (VmHWM) |");
    println!("|---|---|---|");
    println!("| process start | {rss0:.0} | - |");
    println!("| + fake API server with every object | {rss_fake:.0} | - |");
    println!("| + control plane, 2 workers (file only) | {rss_plane:.0} | - |");
    println!("| after the initial sync | {rss_sync:.0} | {hwm_sync:.0} |");
    println!(
        "| after {} changes | {rss_changes:.0} | {hwm:.0} |",
        shape.changes
    );
    println!("| end (after the split timings) | - | {hwm_end:.0} |");
    println!(
        "balancer's share after sync (RSS minus the fake's): {:.0} MiB",
        rss_sync - rss_fake
    );

    for h in cp.detach_workers() {
        let _ = h.join();
    }
    drop(rt);
    drop(fake);
    let _ = std::fs::remove_dir_all(&dir);
}

//! The admin HTTP API over loopback, against a fake control plane: what scrapers, probes and
//! operators see, and what reaches the control plane.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::api::{admin, l7_metrics, metrics};
use controlplane::control::state::{
    AdminState, BackendKey, BackendStatus, Control, Health, Observation, OpError, Override,
    ReloadStatus, ServiceStatus,
};
use controlplane::control::ReloadError;
use controlplane::{ConfigReport, Problem};
use dataplane::pipeline::{DropReason, FlowCounters};
use dataplane::worker::Snapshot;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What the fake was asked to do.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Weight(BackendKey, u32),
    Admin(BackendKey, AdminState),
    Clear(BackendKey),
    Reload,
}

struct Fake {
    obs: Observation,
    ready: AtomicBool,
    generation: AtomicU64,
    reload_ok: AtomicBool,
    calls: Mutex<Vec<Call>>,
}

/// The backend whose table cannot be built, to exercise compile errors.
const UNBUILDABLE: &str = "web/198.18.1.11:8080";

impl Fake {
    fn op(&self, key: &BackendKey, call: Call) -> Result<u64, OpError> {
        let known = self
            .obs
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .any(|b| &b.key == key);
        if !known {
            return Err(OpError::NoBackend(key.to_string()));
        }
        if key.to_string() == UNBUILDABLE {
            return Err(OpError::Compile("service web: no backend left".into()));
        }
        self.calls.lock().unwrap().push(call);
        Ok(self.generation.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

impl Control for Fake {
    fn observe(&self) -> Observation {
        self.obs.clone()
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    fn set_weight(&self, key: &BackendKey, weight: u32) -> Result<u64, OpError> {
        if weight > 1000 {
            return Err(OpError::Invalid(format!("weight {weight} above 1000")));
        }
        self.op(key, Call::Weight(key.clone(), weight))
    }
    fn set_admin(&self, key: &BackendKey, state: AdminState) -> Result<u64, OpError> {
        self.op(key, Call::Admin(key.clone(), state))
    }
    fn clear(&self, key: &BackendKey) -> Result<u64, OpError> {
        self.op(key, Call::Clear(key.clone()))
    }
    fn reload(&self) -> Result<u64, ReloadError> {
        self.calls.lock().unwrap().push(Call::Reload);
        if self.reload_ok.load(Ordering::SeqCst) {
            Ok(self.generation.fetch_add(1, Ordering::SeqCst) + 1)
        } else {
            let problem = Problem::new("services[0].pool", "service web: unknown pool \"blue\"");
            Err(ReloadError::Config(ConfigReport::from_problems(
                Path::new("lb.toml"),
                "",
                &[problem],
            )))
        }
    }
}

fn fc(packets: u64, bytes: u64, new_flows: u64, resets: u64, unanswered_syns: u64) -> FlowCounters {
    FlowCounters {
        packets,
        bytes,
        new_flows,
        resets,
        unanswered_syns,
    }
}

#[allow(clippy::too_many_arguments)]
fn backend(
    key: &str,
    pool: &str,
    mode: &'static str,
    kind: &'static str,
    configured_weight: u32,
    weight: Option<u32>,
    health: Health,
    over: Override,
    stat: Option<u32>,
) -> BackendStatus {
    BackendStatus {
        key: key.parse().unwrap(),
        pool: pool.into(),
        mode,
        kind,
        configured_weight,
        weight,
        health,
        over,
        stat,
    }
}

fn observation() -> Observation {
    let mut w0 = Snapshot {
        worker: 0,
        flows: 10,
        generation: 7,
        ..Default::default()
    };
    let c = &mut w0.counters;
    (
        c.rx_packets,
        c.rx_bytes,
        c.tx_packets,
        c.tx_bytes,
        c.to_host,
    ) = (100, 6400, 90, 5760, 3);
    c.drops[DropReason::NoBackend as usize] = 4;
    c.drops[DropReason::ConntrackFull as usize] = 1;
    // web counts in slots 0 and 1 (two port ranges), dns in slot 2.
    c.services = vec![
        fc(50, 3000, 5, 0, 0),
        fc(10, 600, 1, 0, 0),
        fc(9, 900, 9, 0, 0),
    ];
    c.backends = vec![
        fc(40, 2400, 4, 1, 0),
        fc(20, 1200, 2, 0, 2),
        fc(5, 300, 1, 0, 0),
    ];
    w0.stats.expired = 11;
    let mut w1 = Snapshot {
        worker: 1,
        flows: 250,
        keys: 500,
        generation: 7,
        ..Default::default()
    };
    let c = &mut w1.counters;
    (
        c.rx_packets,
        c.rx_bytes,
        c.tx_packets,
        c.tx_bytes,
        c.to_host,
    ) = (200, 12800, 180, 11520, 0);
    c.drops[DropReason::NoBackend as usize] = 6;
    // Worker 1 has not grown its vectors to the newest slots yet: they count 0.
    c.services = vec![fc(70, 4200, 7, 0, 0)];
    c.backends = vec![fc(60, 3600, 6, 0, 0)];

    let web = ServiceStatus {
        name: "web".into(),
        vip: "198.18.0.10".parse().unwrap(),
        protocol: "tcp",
        ports: vec!["80".into(), "8000-8010".into()],
        failing_open: false,
        backends: vec![
            backend(
                "web/198.18.1.10:8080",
                "main",
                "fullnat",
                "pod",
                3,
                Some(3),
                Health::Up,
                Override::default(),
                Some(0),
            ),
            backend(
                "web/198.18.1.11:8080",
                "main",
                "fullnat",
                "pod",
                3,
                None,
                Health::Down("tcp connect refused".into()),
                Override::default(),
                Some(1),
            ),
            backend(
                "web/[2001:db8::10]:80",
                "v6",
                "nat",
                "pod",
                2,
                Some(0),
                Health::Unchecked,
                Override {
                    weight: Some(5),
                    admin: AdminState::Drain,
                },
                Some(2),
            ),
            backend(
                "web/198.18.2.10",
                "vms",
                "gue",
                "vm",
                1,
                None,
                Health::Up,
                Override {
                    weight: None,
                    admin: AdminState::Disabled,
                },
                None,
            ),
        ],
        stats: vec![0, 1],
    };
    let dns = ServiceStatus {
        name: "dns".into(),
        vip: "198.18.0.53".parse().unwrap(),
        protocol: "udp",
        ports: vec!["53".into()],
        failing_open: true,
        backends: vec![],
        stats: vec![2],
    };
    Observation {
        generation: 7,
        config_path: "/etc/lb/lb.toml".into(),
        services: vec![web, dns],
        reload: ReloadStatus {
            ok: 4,
            failed: 1,
            last_error: Some("lb.toml:3: bad vip".into()),
            last_ok_unix: Some(1_700_000_000),
            restart_needed: vec![],
        },
        health_transitions: 9,
        interfaces: vec!["lb0".into()],
        workers: vec![Arc::new(w0), Arc::new(w1)],
        conntrack_capacity: 1000,
        draining: Default::default(),
    }
}

fn fake() -> Arc<Fake> {
    Arc::new(Fake {
        obs: observation(),
        ready: AtomicBool::new(true),
        generation: AtomicU64::new(7),
        reload_ok: AtomicBool::new(true),
        calls: Mutex::new(Vec::new()),
    })
}

/// A running admin server; dropping the sender stops it.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(control: Arc<Fake>) -> Server {
    start_with(control, admin::Limits::default(), Arc::default()).await
}

async fn start_with(
    control: Arc<dyn Control>,
    limits: admin::Limits,
    stats: Arc<admin::Stats>,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(admin::serve(listener, control, limits, stats, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request on its own connection, bounded in time.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Resp {
    let go = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), go)
        .await
        .expect("request timed out");
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("no header end");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = Resp {
        status: status.parse().unwrap(),
        headers,
        body: body.to_string(),
    };
    if resp.header("transfer-encoding") == Some("chunked") {
        resp.body = dechunk(body);
    }
    resp
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// A parsed sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text format (the subset the encoder writes: no timestamps).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Our label values contain no `",` sequence, so splitting there is exact.
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").unwrap();
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        out.push((name.to_string(), map, value.parse().unwrap()));
    }
    out
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let hits: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
        .collect();
    assert_eq!(hits.len(), 1, "{name} {labels:?}: {hits:?}");
    hits[0]
}

#[tokio::test]
async fn metrics_expose_worker_service_and_backend_counters() {
    let srv = start(fake()).await;
    let r = request(srv.addr, "GET", "/metrics", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let s = parse_exposition(&r.body);
    let w = |n: &str, w: &str| value(&s, n, &[("worker", w)]);
    assert_eq!(w("lb_rx_packets_total", "0"), 100.0);
    assert_eq!(w("lb_rx_bytes_total", "1"), 12800.0);
    assert_eq!(w("lb_tx_packets_total", "1"), 180.0);
    assert_eq!(w("lb_tx_bytes_total", "0"), 5760.0);
    assert_eq!(w("lb_to_host_packets_total", "0"), 3.0);
    assert_eq!(w("lb_conntrack_expired_total", "0"), 11.0);
    assert_eq!(w("lb_conntrack_flows", "1"), 250.0);
    assert_eq!(value(&s, "lb_conntrack_capacity", &[]), 1000.0);
    let drop = |w: &str, r: &str| value(&s, "lb_drops_total", &[("worker", w), ("reason", r)]);
    assert_eq!(drop("0", "no-backend"), 4.0);
    assert_eq!(drop("1", "no-backend"), 6.0);
    assert_eq!(drop("0", "conntrack-full"), 1.0);
    assert_eq!(drop("1", "truncated"), 0.0);
    // Every reason is exported for every worker, so rate() sees a series from the start.
    let reasons = s.iter().filter(|x| x.0 == "lb_drops_total").count();
    assert_eq!(reasons, 2 * DropReason::ALL.len());

    // Services: summed over their slots; missing slots count 0.
    let svc = |n: &str, svc: &str, w: &str| value(&s, n, &[("service", svc), ("worker", w)]);
    assert_eq!(svc("lb_service_packets_total", "web", "0"), 60.0);
    assert_eq!(svc("lb_service_bytes_total", "web", "0"), 3600.0);
    assert_eq!(svc("lb_service_new_flows_total", "web", "0"), 6.0);
    assert_eq!(svc("lb_service_packets_total", "web", "1"), 70.0);
    assert_eq!(svc("lb_service_packets_total", "dns", "0"), 9.0);
    assert_eq!(svc("lb_service_packets_total", "dns", "1"), 0.0);
    assert_eq!(
        value(&s, "lb_service_failing_open", &[("service", "dns")]),
        1.0
    );

    // Backends: traffic per worker with all their labels.
    let labels = [
        ("service", "web"),
        ("backend", "198.18.1.10:8080"),
        ("pool", "main"),
        ("mode", "fullnat"),
        ("kind", "pod"),
        ("worker", "0"),
    ];
    assert_eq!(value(&s, "lb_backend_packets_total", &labels), 40.0);
    assert_eq!(value(&s, "lb_backend_bytes_total", &labels), 2400.0);
    assert_eq!(value(&s, "lb_backend_new_flows_total", &labels), 4.0);
    assert_eq!(value(&s, "lb_backend_resets_total", &labels), 1.0);
    let b = |n: &str, be: &str, w: &str| {
        value(&s, n, &[("service", "web"), ("backend", be), ("worker", w)])
    };
    assert_eq!(
        b("lb_backend_unanswered_syns_total", "198.18.1.11:8080", "0"),
        2.0
    );
    assert_eq!(b("lb_backend_packets_total", "198.18.1.10:8080", "1"), 60.0);
    assert_eq!(b("lb_backend_packets_total", "198.18.1.11:8080", "1"), 0.0);
    assert_eq!(
        value(
            &s,
            "lb_backend_packets_total",
            &[
                ("backend", "[2001:db8::10]:80"),
                ("mode", "nat"),
                ("pool", "v6"),
                ("worker", "0")
            ]
        ),
        5.0
    );
    // Out of the table (no counter slot): no traffic series.
    assert!(!s
        .iter()
        .any(|x| x.0 == "lb_backend_packets_total" && x.1["backend"] == "198.18.2.10"));

    // Backend state.
    let st = |n: &str, be: &str| value(&s, n, &[("service", "web"), ("backend", be)]);
    assert_eq!(st("lb_backend_up", "198.18.1.10:8080"), 1.0);
    assert_eq!(st("lb_backend_up", "198.18.1.11:8080"), 0.0);
    assert_eq!(st("lb_backend_up", "[2001:db8::10]:80"), 1.0);
    assert_eq!(st("lb_backend_weight", "198.18.1.10:8080"), 3.0);
    assert_eq!(st("lb_backend_weight", "198.18.1.11:8080"), -1.0);
    assert_eq!(st("lb_backend_weight", "[2001:db8::10]:80"), 0.0);
    assert_eq!(st("lb_backend_weight", "198.18.2.10"), -1.0);
    assert_eq!(st("lb_backend_configured_weight", "[2001:db8::10]:80"), 2.0);
    let admin = |be: &str, state: &str| {
        value(
            &s,
            "lb_backend_admin_state",
            &[("service", "web"), ("backend", be), ("state", state)],
        )
    };
    assert_eq!(admin("[2001:db8::10]:80", "drain"), 1.0);
    assert_eq!(admin("[2001:db8::10]:80", "enabled"), 0.0);
    assert_eq!(admin("198.18.2.10", "disabled"), 1.0);
    assert_eq!(admin("198.18.1.10:8080", "enabled"), 1.0);

    // Reloads and health.
    assert_eq!(value(&s, "lb_reloads_total", &[("result", "ok")]), 4.0);
    assert_eq!(value(&s, "lb_reloads_total", &[("result", "failed")]), 1.0);
    assert_eq!(value(&s, "lb_last_reload_successful", &[]), 0.0);
    assert_eq!(value(&s, "lb_table_generation", &[]), 7.0);
    assert_eq!(
        value(&s, "lb_last_reload_success_timestamp_seconds", &[]),
        1.7e9
    );
    assert_eq!(value(&s, "lb_health_transitions_total", &[]), 9.0);
    // Counters are typed as counters for Prometheus.
    assert!(r.body.contains("# TYPE lb_backend_packets_total counter\n"));
    assert!(r.body.contains("# TYPE lb_backend_up gauge\n"));
}

#[tokio::test]
async fn counters_follow_the_workers_across_scrapes() {
    let f = fake();
    let first = metrics::render(&f.observe());
    let mut obs = f.observe();
    let mut w0 = (*obs.workers[0]).clone();
    w0.counters.rx_packets += 5;
    w0.counters.backends[0].packets += 2;
    obs.workers[0] = Arc::new(w0);
    let second = metrics::render(&obs);
    let (a, b) = (parse_exposition(&first), parse_exposition(&second));
    for (name, labels, v) in a.iter().filter(|x| x.0.ends_with("_total")) {
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(value(&b, name, &pairs) >= *v, "{name} {labels:?}");
    }
    assert_eq!(value(&b, "lb_rx_packets_total", &[("worker", "0")]), 105.0);
    let be = [("backend", "198.18.1.10:8080"), ("worker", "0")];
    assert_eq!(value(&b, "lb_backend_packets_total", &be), 42.0);
}

#[tokio::test]
async fn state_reports_services_backends_reload_and_conntrack() {
    let srv = start(fake()).await;
    let r = request(srv.addr, "GET", "/state", "").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["generation"], 7);
    assert_eq!(v["config_path"], "/etc/lb/lb.toml");
    assert_eq!(v["ready"], true);
    assert_eq!(v["reload"]["ok"], 4);
    assert_eq!(v["reload"]["failed"], 1);
    assert_eq!(v["reload"]["last_error"], "lb.toml:3: bad vip");
    assert_eq!(v["reload"]["last_ok_unix"], 1_700_000_000u64);
    assert_eq!(v["health_transitions"], 9);
    assert_eq!(v["conntrack"]["capacity"], 1000);
    assert_eq!(v["conntrack"]["workers"][1]["worker"], 1);
    assert_eq!(v["conntrack"]["workers"][1]["flows"], 250);
    // 250 nat flows take 500 of the 1000 keys.
    assert_eq!(v["conntrack"]["workers"][1]["keys"], 500);
    assert_eq!(v["conntrack"]["workers"][1]["occupancy"], 0.5);
    let web = &v["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["vip"], "198.18.0.10");
    assert_eq!(web["ports"][1], "8000-8010");
    assert_eq!(v["services"][1]["failing_open"], true);
    let b = &web["backends"];
    assert_eq!(b[0]["name"], "web/198.18.1.10:8080");
    assert_eq!(b[0]["backend"], "198.18.1.10:8080");
    assert_eq!(b[0]["weight"], 3);
    assert_eq!(b[0]["health"]["state"], "up");
    assert_eq!(b[1]["weight"], Value::Null);
    assert_eq!(b[1]["health"]["state"], "down");
    assert_eq!(b[1]["health"]["reason"], "tcp connect refused");
    assert_eq!(b[2]["backend"], "[2001:db8::10]:80");
    assert_eq!(b[2]["override"]["admin"], "drain");
    assert_eq!(b[2]["override"]["weight"], 5);
    assert_eq!(b[2]["configured_weight"], 2);
    assert_eq!(b[3]["backend"], "198.18.2.10");
    assert_eq!(b[3]["override"]["admin"], "disabled");
    assert_eq!(b[3]["kind"], "vm");

    let r = request(srv.addr, "GET", "/backends/web/%5B2001:db8::10%5D:80", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["override"]["admin"], "drain");
}

#[tokio::test]
async fn probes_report_liveness_and_readiness() {
    let f = fake();
    f.ready.store(false, Ordering::SeqCst);
    let srv = start(f.clone()).await;
    let r = request(srv.addr, "GET", "/healthz", "").await;
    assert_eq!((r.status, r.body.trim()), (200, "ok"));
    assert_eq!(request(srv.addr, "GET", "/readyz", "").await.status, 503);
    f.ready.store(true, Ordering::SeqCst);
    assert_eq!(request(srv.addr, "GET", "/readyz", "").await.status, 200);
}

#[tokio::test]
async fn operations_reach_the_control_plane_with_the_right_backend() {
    let f = fake();
    let srv = start(f.clone()).await;
    let key = |s: &str| s.parse::<BackendKey>().unwrap();

    let r = request(
        srv.addr,
        "POST",
        "/backends/web/198.18.1.10:8080/weight",
        r#"{"weight": 3}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["generation"], 8);
    assert_eq!(r.json()["backend"], "web/198.18.1.10:8080");

    // IPv6 backends: brackets raw or percent-encoded.
    for path in [
        "/backends/web/[2001:db8::10]:80/state",
        "/backends/web/%5B2001:db8::10%5D:80/state",
    ] {
        let r = request(srv.addr, "POST", path, r#"{"state":"drain"}"#).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let r = request(srv.addr, "DELETE", "/backends/web/198.18.2.10/override", "").await;
    assert_eq!((r.status, r.json()["generation"].as_u64()), (200, Some(11)));
    let r = request(
        srv.addr,
        "POST",
        "/backends/web/198.18.2.10/state",
        r#"{"state":"disabled"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(srv.addr, "POST", "/reload", "").await;
    assert_eq!((r.status, r.json()["generation"].as_u64()), (200, Some(13)));

    assert_eq!(
        *f.calls.lock().unwrap(),
        vec![
            Call::Weight(key("web/198.18.1.10:8080"), 3),
            Call::Admin(key("web/[2001:db8::10]:80"), AdminState::Drain),
            Call::Admin(key("web/[2001:db8::10]:80"), AdminState::Drain),
            Call::Clear(key("web/198.18.2.10")),
            Call::Admin(key("web/198.18.2.10"), AdminState::Disabled),
            Call::Reload,
        ]
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_message() {
    let f = fake();
    let srv = start(f.clone()).await;
    let cases = [
        (
            "/backends/web/not-an-address/weight",
            r#"{"weight": 3}"#,
            "invalid backend \"web/not-an-address\"",
        ),
        (
            "/backends/web/198.18.1.10:99999/weight",
            r#"{"weight": 3}"#,
            "invalid backend",
        ),
        (
            "/backends/web/198.18.1.10:8080/weight",
            r#"{"weight": -1}"#,
            "invalid body",
        ),
        (
            "/backends/web/198.18.1.10:8080/weight",
            r#"{"weight": 3, "x": 1}"#,
            "unknown field",
        ),
        (
            "/backends/web/198.18.1.10:8080/weight",
            "",
            "expected {\"weight\"",
        ),
        (
            "/backends/web/198.18.1.10:8080/weight",
            r#"{"weight": 5000}"#,
            "weight 5000 above 1000",
        ),
        (
            "/backends/web/198.18.1.10:8080/state",
            r#"{"state": "sleep"}"#,
            "invalid state \"sleep\"",
        ),
    ];
    for (path, body, msg) in cases {
        let r = request(srv.addr, "POST", path, body).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        let err = r.json()["error"].as_str().unwrap().to_string();
        assert!(err.contains(msg), "{path} {body}: {err}");
    }
    assert!(f.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unknown_backends_and_rejected_tables_are_reported() {
    let f = fake();
    let srv = start(f.clone()).await;
    let r = request(
        srv.addr,
        "POST",
        "/backends/web/198.18.9.9:80/weight",
        r#"{"weight": 1}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("web/198.18.9.9:80"));
    let r = request(
        srv.addr,
        "DELETE",
        "/backends/api/198.18.1.10:8080/override",
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        request(srv.addr, "GET", "/backends/web/198.18.9.9", "")
            .await
            .status,
        404
    );
    let r = request(srv.addr, "GET", "/nope", "").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("no such route"))
    );

    let path = format!("/backends/{UNBUILDABLE}/state");
    let r = request(srv.addr, "POST", &path, r#"{"state":"disabled"}"#).await;
    assert_eq!(r.status, 409);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("no backend left"));

    f.reload_ok.store(false, Ordering::SeqCst);
    let r = request(srv.addr, "POST", "/reload", "").await;
    assert_eq!(r.status, 409);
    assert!(r.json()["error"].as_str().unwrap().contains("unknown pool"));
}

#[tokio::test]
async fn the_server_stops_when_shutdown_completes() {
    let mut srv = start(fake()).await;
    assert_eq!(request(srv.addr, "GET", "/healthz", "").await.status, 200);
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(srv.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).await.unwrap() > 0);

    drop(srv.stop.take());
    let res = tokio::time::timeout(Duration::from_secs(10), &mut srv.task)
        .await
        .expect("server did not stop");
    res.unwrap().unwrap();
    assert!(TcpStream::connect(srv.addr).await.is_err());
}

/// Every `lb_` name in the Grafana dashboard's queries is one `/metrics` exports.
#[test]
fn the_dashboard_uses_only_exported_metrics() {
    let mut text = metrics::render(&observation());
    text += &l7_metrics::render(vec![l7_sample()]);
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if !line.starts_with('#') => line.split(['{', ' ']).next(),
            None => None,
        };
        exported.extend(name.map(str::to_string));
    }

    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana/lb-dashboard.json"
    );
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    collect_queries(&dash, &mut queries);
    assert!(queries.len() >= 10, "{queries:?}");
    let mut used = BTreeSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(i) = rest.find("lb_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            // Only whole identifiers: `xlb_` inside another name is not ours.
            let before = rest[..i].chars().last();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                used.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "dashboard uses unexported {unknown:?}");
    for must in [
        "lb_backend_up",
        "lb_drops_total",
        "lb_conntrack_capacity",
        "lb_http_requests_total",
        "lb_http_request_duration_seconds_bucket",
    ] {
        assert!(used.contains(must), "dashboard lacks {must}");
    }
}

/// An L7 listener with one route and backend, so every `lb_http_` series is exported.
fn l7_sample() -> l7_metrics::L7Sample {
    use dataplane::net::metrics::{PairCounts, RouteCounts};
    let mut sample = l7_metrics::L7Sample {
        listener: "web".into(),
        ..Default::default()
    };
    sample.requests.routes.push(RouteCounts {
        route: "a.test/".into(),
        ..Default::default()
    });
    sample.requests.pairs.push(PairCounts {
        route: "a.test/".into(),
        backend: "198.18.1.10:80".into(),
        classes: [0, 1, 0, 0, 0],
    });
    sample
}

/// The PromQL of panel targets (`expr`) and template variables (`query`, `definition`).
fn collect_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => collect_queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_queries(v, out)),
        _ => {}
    }
}

/// A real control plane (no workers) serving `web` with three backends of weight 1 in a table of
/// 65537 slots.
fn real_plane(tag: &str) -> (Arc<controlplane::control::ControlPlane>, PathBuf) {
    let dir = std::env::temp_dir().join(format!("lb-admin-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(
        &path,
        r#"
[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
workers = 1

[[services]]
name = "web"
vip = "198.18.0.100"
ports = ["80"]
protocol = "tcp"
table_size = 65537

[[services.pools]]
name = "pods"
mode = "fullnat"
snat = ["198.18.0.2"]
backends = [
  { addr = "198.18.1.10", port = 8080 },
  { addr = "198.18.1.11", port = 8080 },
  { addr = "198.18.1.12", port = 8080 },
]
"#,
    )
    .unwrap();
    let (cfg, text) = controlplane::config::load_with_text(&path).unwrap();
    let (cp, _) = controlplane::control::ControlPlane::new(
        &path,
        cfg,
        text,
        Box::new(controlplane::control::load_file),
    )
    .unwrap();
    (Arc::new(cp), dir)
}

/// A weight from the API obeys the file's rule (the weights of a service fit its table): a
/// weight of 4294967295 would otherwise take every slot and send every flow to one backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_weights_obey_the_bound_of_the_file() {
    let (cp, dir) = real_plane("weights");
    let server = start_with(cp.clone(), admin::Limits::default(), Arc::default()).await;
    let path = "/backends/web/198.18.1.10:8080/weight";

    let r = request(server.addr, "POST", path, r#"{"weight": 4294967295}"#).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains("weight 4294967295 refused")
            && msg.contains("weights add up to 4294967297, more than the 65537 slots"),
        "{msg}"
    );
    // Nothing changed: no override, the table still splits evenly.
    let b = request(server.addr, "GET", "/backends/web/198.18.1.10:8080", "").await;
    assert_eq!(b.json()["weight"], 1, "{}", b.body);

    // One slot over the table refused, exactly the table accepted.
    let r = request(server.addr, "POST", path, r#"{"weight": 65536}"#).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = request(server.addr, "POST", path, r#"{"weight": 65535}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Overrides of the other backends count too.
    let other = "/backends/web/198.18.1.11:8080/weight";
    let r = request(server.addr, "POST", other, r#"{"weight": 2}"#).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let _ = std::fs::remove_dir_all(dir);
}

/// Opens a connection that sends nothing.
async fn idle(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Waits (bounded) until the server closes `s`: true when it did.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

/// Beyond `max_connections` a client waits (in the backlog) and is served as soon as a place
/// frees; idle clients never starve the API for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_for_a_free_place() {
    let stats = Arc::new(admin::Stats::default());
    let limits = admin::Limits {
        max_connections: 2,
        header_timeout: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(3600),
    };
    let server = start_with(fake(), limits, stats.clone()).await;
    let a = idle(server.addr).await;
    let _b = idle(server.addr).await;
    let third = tokio::spawn(request(server.addr, "GET", "/healthz", ""));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond the limit of 2"
    );
    assert!(stats.open.load(Ordering::Relaxed) <= 2);
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the waiting client was never served")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok\n");
}

/// A connection that never sends a whole head, or stalls in a body, is closed; its place serves
/// the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stalled_connections_are_closed() {
    let hour = Duration::from_secs(3600);
    let short = Duration::from_millis(300);
    // The head: nothing sent, or half a head.
    let heads = admin::Limits {
        max_connections: 2,
        header_timeout: short,
        idle_timeout: hour,
    };
    let server = start_with(fake(), heads, Arc::default()).await;
    let mut silent = idle(server.addr).await;
    let mut partial = idle(server.addr).await;
    partial
        .write_all(b"GET /state HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut silent, Duration::from_secs(10)).await);
    assert!(closed_by_server(&mut partial, Duration::from_secs(10)).await);
    let r = request(server.addr, "GET", "/healthz", "").await;
    assert_eq!(r.status, 200);

    // A body that stops halfway.
    let stats = Arc::new(admin::Stats::default());
    let bodies = admin::Limits {
        max_connections: 1,
        header_timeout: hour,
        idle_timeout: short,
    };
    let server = start_with(fake(), bodies, stats.clone()).await;
    let mut stalled = idle(server.addr).await;
    stalled
        .write_all(
            b"POST /backends/web/198.18.1.10:8080/weight HTTP/1.1\r\nHost: x\r\n\
              Content-Length: 40\r\n\r\n{\"weight\"",
        )
        .await
        .unwrap();
    assert!(closed_by_server(&mut stalled, Duration::from_secs(10)).await);
    let r = request(server.addr, "GET", "/healthz", "").await;
    assert_eq!(r.status, 200);
    let m = request(server.addr, "GET", "/metrics", "").await;
    assert!(
        m.body.contains("lb_admin_connections_timed_out_total 1\n"),
        "{}",
        m.body
    );
    assert!(
        m.body.contains("lb_admin_connections_accepted_total 3\n"),
        "{}",
        m.body
    );
    assert!(m.body.contains("lb_admin_connections 1\n"), "{}", m.body);
}

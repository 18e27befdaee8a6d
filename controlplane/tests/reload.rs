//! Reload, runtime overrides and health through the running control plane, with real worker
//! threads on in-memory ports: what the workers serve after each change, and what a bad file,
//! an unknown backend or a failing health check does (and does not) change.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use controlplane::control::{self, AdminState, BackendKey, Control, ControlPlane, Health, OpError};
use controlplane::diag;
use dataplane::port::mem::MemPort;
use dataplane::port::Port;
use dataplane::worker::{self, WorkerConfig};
use dataplane::RoutingTable;

const GOOD: &str = r#"
[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
workers = 2

[[services]]
name = "web"
vip = "198.18.0.100"
ports = ["80"]
protocol = "tcp"
all_down = "ALL_DOWN"

[[services.pools]]
name = "pods"
mode = "fullnat"
snat = ["198.18.0.2"]
backends = [
  { addr = "198.18.1.10", port = 8080, weight = 1 },
  { addr = "198.18.1.11", port = 8080, weight = 1 },
  { addr = "198.18.1.12", port = 8080, weight = WEIGHT },
]
"#;

fn text(weight: u32, all_down: &str) -> String {
    GOOD.replace("WEIGHT", &weight.to_string())
        .replace("ALL_DOWN", all_down)
}

/// A config file in its own directory, removed when dropped.
struct File {
    dir: PathBuf,
    path: PathBuf,
}

impl File {
    fn new(tag: &str, body: &str) -> File {
        let dir = std::env::temp_dir().join(format!("lb-reload-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(&path, body).unwrap();
        File { dir, path }
    }

    fn write(&self, body: &str) {
        std::fs::write(&self.path, body).unwrap();
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(file: &File) -> Arc<ControlPlane> {
    let (cfg, text) = diag::load_checked(&file.path).unwrap();
    let (cp, start) =
        ControlPlane::new(&file.path, cfg, text, Box::new(control::load_file)).unwrap();
    let ports: Vec<Box<dyn Port>> = (0..start.workers)
        .map(|_| Box::new(MemPort::new()) as Box<dyn Port>)
        .collect();
    let handles =
        worker::spawn_workers(ports, cp.table(), WorkerConfig::new(start.conntrack)).unwrap();
    cp.attach_workers(handles);
    Arc::new(cp)
}

fn key(last: u8) -> BackendKey {
    BackendKey {
        service: "web".into(),
        addr: IpAddr::from([198, 18, 1, last]),
        port: 8080,
    }
}

/// Weight of each backend in the serving table (absent: out of the table).
fn weights(t: &RoutingTable) -> HashMap<String, u32> {
    t.services[0]
        .backends
        .iter()
        .map(|b| (b.addr.to_string(), b.weight))
        .collect()
}

fn serving(cp: &ControlPlane) -> Arc<RoutingTable> {
    cp.table().load_full()
}

fn stop(cp: Arc<ControlPlane>) {
    for h in cp.detach_workers() {
        h.join().unwrap();
    }
}

#[test]
fn a_good_file_swaps_and_every_worker_adopts_it() {
    let file = File::new("good", &text(1, "drop"));
    let cp = start(&file);
    assert_eq!(serving(&cp).generation, 1);
    file.write(&text(5, "drop"));
    assert_eq!(cp.reload().unwrap(), 2);
    let t = serving(&cp);
    assert_eq!(t.generation, 2);
    assert_eq!(weights(&t)["198.18.1.12"], 5);
    assert!(
        cp.wait_adopted(2, Duration::from_secs(5)).is_some(),
        "workers did not adopt generation 2"
    );
    // Every worker is on generation 2: the generation-1 table is released here.
    assert_eq!(cp.release_retired(), 1);
    let obs = cp.observe();
    assert_eq!((obs.reload.ok, obs.reload.failed), (1, 0));
    assert!(obs.reload.last_ok_unix.is_some());
    stop(cp);
}

#[test]
fn a_broken_file_between_good_ones_changes_nothing() {
    let file = File::new("broken", &text(1, "drop"));
    let cp = start(&file);
    let before = serving(&cp);

    // A syntax error, then a file that parses but does not compile.
    for (bad, needle) in [
        ("[dataplane\nmac = 1\n".to_string(), "lb.toml:1:"),
        (text(1, "drop").replace("198.18.0.2", "2001:db8::2"), "snat"),
    ] {
        file.write(&bad);
        let err = cp.reload().unwrap_err().to_string();
        assert!(err.contains(needle), "{needle:?} not in {err}");
        let now = serving(&cp);
        assert!(Arc::ptr_eq(&before, &now), "a bad file replaced the table");
        let obs = cp.observe();
        assert_eq!(obs.generation, 1);
        assert_eq!(obs.reload.last_error.as_deref(), Some(err.as_str()));
    }
    assert_eq!(cp.observe().reload.failed, 2);

    file.write(&text(3, "drop"));
    assert_eq!(cp.reload().unwrap(), 2);
    let obs = cp.observe();
    assert_eq!(obs.reload.last_error, None);
    assert_eq!((obs.reload.ok, obs.reload.failed), (1, 2));
    assert_eq!(weights(&serving(&cp))["198.18.1.12"], 3);
    stop(cp);
}

#[test]
fn overrides_drain_disable_and_survive_a_reload_until_cleared() {
    let file = File::new("override", &text(1, "drop"));
    let cp = start(&file);

    cp.set_admin(&key(10), AdminState::Drain).unwrap();
    // Drained: still in the table (its flows keep their backend) with weight 0.
    assert_eq!(weights(&serving(&cp))["198.18.1.10"], 0);
    cp.set_weight(&key(11), 4).unwrap();
    cp.set_admin(&key(12), AdminState::Disabled).unwrap();
    let w = weights(&serving(&cp));
    assert_eq!(w.get("198.18.1.11"), Some(&4));
    assert_eq!(w.get("198.18.1.12"), None, "a disabled backend stays out");

    // A reload re-applies the overrides to the new file.
    file.write(&text(7, "drop"));
    cp.reload().unwrap();
    let w = weights(&serving(&cp));
    assert_eq!((w["198.18.1.10"], w["198.18.1.11"]), (0, 4));
    assert_eq!(w.get("198.18.1.12"), None);

    for last in [10, 11, 12] {
        cp.clear(&key(last)).unwrap();
    }
    let w = weights(&serving(&cp));
    assert_eq!(
        (w["198.18.1.10"], w["198.18.1.11"], w["198.18.1.12"]),
        (1, 1, 7)
    );

    let unknown = key(99);
    assert_eq!(
        cp.set_weight(&unknown, 1),
        Err(OpError::NoBackend(unknown.to_string()))
    );
    let obs = cp.observe();
    let b = &obs.services[0].backends;
    assert!(b.iter().all(|b| b.over.weight.is_none()));
    stop(cp);
}

#[test]
fn down_backends_leave_the_table_and_all_down_follows_the_policy() {
    for (policy, expect_all_down) in [("drop", 0usize), ("fail-open", 3)] {
        let file = File::new(&format!("health-{policy}"), &text(1, policy));
        let cp = start(&file);
        let down = |why: &str| Health::Down(why.into());

        let mut h = HashMap::new();
        h.insert(key(10), down("tcp connect refused"));
        h.insert(key(11), Health::Up);
        assert!(cp.set_health(h.clone(), 1).is_some());
        let w = weights(&serving(&cp));
        assert_eq!(w.get("198.18.1.10"), None);
        assert_eq!(w.len(), 2);
        // The same health again rebuilds nothing.
        assert!(cp.set_health(h, 1).is_none());

        let all: HashMap<_, _> = [10, 11, 12].map(|l| (key(l), down("timeout"))).into();
        cp.set_health(all, 3);
        assert_eq!(
            weights(&serving(&cp)).len(),
            expect_all_down,
            "policy {policy}"
        );
        let obs = cp.observe();
        assert_eq!(obs.services[0].failing_open, policy == "fail-open");
        assert_eq!(obs.health_transitions, 3);
        stop(cp);
    }
}

//! The kubernetes source at runtime: the cluster's part of the desired state beside the file's
//! (merged, validated, drained and rejected like a reload), and the source's readiness when
//! the API server cannot be reached.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::api::admin;
use controlplane::config::{self, Config};
use controlplane::control::{self, ClusterPart, Control, ControlPlane, ReloadError};
use controlplane::sources::kubernetes::source::{Source, SyncState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

const FILE: &str = r#"
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

[[services.pools]]
name = "pods"
mode = "fullnat"
snat = ["198.18.0.2"]
backends = [{ addr = "198.18.1.10", port = 8080 }]
"#;

/// A config file in its own directory, removed when dropped.
struct File {
    dir: PathBuf,
    path: PathBuf,
}

impl File {
    fn new(tag: &str, body: &str) -> File {
        let dir = std::env::temp_dir().join(format!("lb-k8s-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(&path, body).unwrap();
        File { dir, path }
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A control plane serving `file` (no workers: the table is what is checked).
fn plane(file: &File) -> Arc<ControlPlane> {
    let (cfg, text) = config::load_with_text(&file.path).unwrap();
    let (cp, _) = ControlPlane::new(&file.path, cfg, text, Box::new(control::load_file)).unwrap();
    Arc::new(cp)
}

/// A cluster part written as lb.toml entries would be (what `translate` produces).
fn part(entries: &str) -> ClusterPart {
    let text = format!("[dataplane]\nmac = \"02:00:00:00:00:01\"\n{entries}");
    let cfg: Config = toml::from_str(&text).unwrap();
    ClusterPart {
        services: cfg.services,
        http: cfg.http,
    }
}

/// An L4 service as the source names them, with `backends` (last octets) on port 8080.
fn lb_service(name: &str, vip: &str, backends: &[u8]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ addr = \"198.18.2.{b}\", port = 8080 }}"))
        .collect();
    format!(
        r#"
[[services]]
name = "{name}"
vip = "{vip}"
ports = ["80"]
protocol = "tcp"

[[services.pools]]
name = "endpoints"
mode = "fullnat"
snat = ["198.18.0.2"]
backends = [{}]
"#,
        list.join(", ")
    )
}

fn served(cp: &ControlPlane) -> Vec<String> {
    cp.table()
        .load()
        .services
        .iter()
        .map(|s| s.name.to_string())
        .collect()
}

#[test]
fn cluster_services_serve_beside_the_files() {
    let file = File::new("beside", FILE);
    let cp = plane(&file);
    let g = cp
        .set_cluster(part(&lb_service("k8s/shop/api", "198.18.0.101", &[1, 2])))
        .unwrap();
    assert_eq!(g, 2);
    let names = served(&cp);
    assert!(names.contains(&"web".to_string()), "{names:?}");
    assert!(names.contains(&"k8s/shop/api".to_string()), "{names:?}");
    let st = cp.cluster_status();
    assert_eq!((st.applied, st.rejected, st.services), (1, 0, 1));
    // The same part again changes nothing.
    assert_eq!(
        cp.set_cluster(part(&lb_service("k8s/shop/api", "198.18.0.101", &[1, 2])))
            .unwrap(),
        2
    );
    // An empty part takes the cluster's services away (to drain); the file's stay.
    assert_eq!(cp.set_cluster(ClusterPart::default()).unwrap(), 3);
    let names: Vec<String> = cp
        .config()
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, vec!["web".to_string()]);
    assert_eq!(cp.cluster_status().services, 0);
}

#[test]
fn a_clash_with_the_file_is_rejected_and_the_previous_tables_serve() {
    let file = File::new("clash", FILE);
    let cp = plane(&file);
    cp.set_cluster(part(&lb_service("k8s/shop/api", "198.18.0.101", &[1])))
        .unwrap();
    let before = cp.table().load().generation;
    let err = cp
        .set_cluster(part(&lb_service("web", "198.18.0.102", &[1])))
        .unwrap_err();
    assert!(matches!(err, ReloadError::Cluster(_)), "{err}");
    assert!(
        err.to_string()
            .contains("cluster service web: lb.toml has a service of that name"),
        "{err}"
    );
    assert_eq!(cp.table().load().generation, before);
    assert!(served(&cp).contains(&"k8s/shop/api".to_string()));
    let st = cp.cluster_status();
    assert_eq!((st.applied, st.rejected), (1, 1));
    assert!(st.last_error.is_some());
    // A good part clears the error.
    cp.set_cluster(part(&lb_service("k8s/shop/api", "198.18.0.101", &[1, 3])))
        .unwrap();
    assert_eq!(cp.cluster_status().last_error, None);
}

#[test]
fn a_cluster_entry_that_breaks_a_rule_is_named_by_its_object() {
    let file = File::new("rule", FILE);
    let cp = plane(&file);
    // The same VIP and port as the file's service.
    let err = cp
        .set_cluster(part(&lb_service("k8s/shop/api", "198.18.0.100", &[1])))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cluster service k8s/shop/api: "), "{msg}");
    assert_eq!(served(&cp), vec!["web".to_string()]);
    assert_eq!(cp.cluster_status().rejected, 1);
}

#[test]
fn a_file_reload_keeps_the_cluster_part() {
    let file = File::new("reload", FILE);
    let cp = plane(&file);
    cp.set_cluster(part(&lb_service("k8s/shop/api", "198.18.0.101", &[1])))
        .unwrap();
    std::fs::write(&file.path, FILE.replace("198.18.1.10", "198.18.1.11")).unwrap();
    cp.reload_file().unwrap();
    let names = served(&cp);
    assert!(names.contains(&"k8s/shop/api".to_string()), "{names:?}");
    let t = cp.table().load();
    let web = t.services.iter().find(|s| &*s.name == "web").unwrap();
    let taking: Vec<String> = web
        .backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| b.addr.to_string())
        .collect();
    assert_eq!(taking, vec!["198.18.1.11".to_string()]);
    // A file that now clashes with the cluster is refused; both keep serving.
    let clash = format!("{FILE}{}", lb_service("k8s/shop/api", "198.18.0.103", &[9]));
    std::fs::write(&file.path, clash).unwrap();
    let err = cp.reload_file().unwrap_err();
    assert!(err.to_string().contains("k8s/shop/api"), "{err}");
    assert!(served(&cp).contains(&"k8s/shop/api".to_string()));
}

#[test]
fn a_removed_cluster_endpoint_drains() {
    let file = File::new("drain", FILE);
    let cp = plane(&file);
    cp.set_cluster(part(&lb_service("k8s/shop/api", "198.18.0.101", &[1, 2])))
        .unwrap();
    cp.set_cluster(part(&lb_service("k8s/shop/api", "198.18.0.101", &[1])))
        .unwrap();
    let draining = cp.observe().draining;
    assert!(
        draining
            .backends
            .iter()
            .any(|b| b.to_string() == "k8s/shop/api/198.18.2.2:8080"),
        "{draining:?}"
    );
    // Kept in the table at weight 0 for its flows.
    let t = cp.table().load();
    let api = t
        .services
        .iter()
        .find(|s| &*s.name == "k8s/shop/api")
        .unwrap();
    let gone = api
        .backends
        .iter()
        .find(|b| b.addr.to_string() == "198.18.2.2")
        .expect("the removed endpoint stays for its flows");
    assert_eq!(gone.weight, 0);
    // A removed service drains too.
    cp.set_cluster(ClusterPart::default()).unwrap();
    assert!(cp
        .observe()
        .draining
        .services
        .contains(&"k8s/shop/api".to_string()));
}

/// One HTTP/1.1 GET on its own connection, bounded in time: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let go = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .expect("admin answered in time")
}

/// A kubeconfig for an API server at `server`.
fn kubeconfig(dir: &std::path::Path, server: &str) -> PathBuf {
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n"
        ),
    )
    .unwrap();
    p
}

async fn wait_for(state: &SyncState, what: impl Fn(&SyncState) -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if what(state) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_not_ready_and_readyz_says_why() {
    let file = File::new("unreachable", FILE);
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let kc = kubeconfig(&file.dir, &format!("http://{closed}"));
    let k: config::Kubernetes = toml::from_str(&format!(
        "kubeconfig = {:?}\nsecrets_dir = {:?}\n",
        kc,
        file.dir.join("secrets")
    ))
    .unwrap();
    let cp = plane(&file);
    cp.attach_workers(Vec::new());
    let (_leader_tx, leader) = watch::channel(false);
    let source = Source::start(&tokio::runtime::Handle::current(), cp.clone(), k, leader);
    let state = source.state();
    assert!(
        wait_for(&state, |s| s
            .reasons()
            .iter()
            .any(|r| r.contains("failing since")))
        .await,
        "{:?}",
        state.reasons()
    );
    assert!(!state.ready());
    let reasons = state.reasons();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("kubernetes: not synced yet: waiting for the first list of")),
        "{reasons:?}"
    );

    // /readyz through the admin API: not ready, and why.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(admin::Stats::default().with_source(state.clone()));
    let control: Arc<dyn Control> = cp.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(admin::serve(
        listener,
        control,
        admin::Limits::default(),
        stats,
        async {
            let _ = stopped.await;
        },
    ));
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("kubernetes: watch of"), "{body}");
    assert!(body.contains("failing since"), "{body}");
    let (status, body) = get(addr, "/state").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"kubernetes\""), "{body}");
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(metrics.contains("lb_kubernetes_synced 0"), "{metrics}");
    assert!(
        metrics.contains("lb_kubernetes_watch_failing{watch=\"Service\"} 1"),
        "{metrics}"
    );
    // Nothing from the cluster was applied.
    assert_eq!(cp.cluster_status().applied, 0);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    source.stop();
}

#[test]
fn kubernetes_settings_are_checked_and_placed_like_every_section() {
    let dir = File::new("settings", FILE);
    let load = |extra: &str| {
        std::fs::write(&dir.path, format!("{FILE}{extra}")).unwrap();
        config::load(&dir.path)
    };
    // Absent: no source; present with nothing set: the documented defaults.
    assert_eq!(load("").unwrap().kubernetes, None);
    let k = load("\n[kubernetes]\n").unwrap().kubernetes.unwrap();
    assert_eq!(k.ingress_controller, "lb.example.com/ingress-controller");
    assert_eq!(k.gateway_controller, "lb.example.com/gateway-controller");
    assert_eq!(k.load_balancer_class, "lb.example.com/vip");
    assert_eq!(k.secrets_dir, PathBuf::from("/run/lb/k8s-secrets"));
    assert_eq!(k.batch, Duration::from_millis(5));
    assert!(k.leader_election.enabled);
    assert_eq!(k.leader_election.name, "lb-leader");
    assert_eq!(k.leader_election.lease_duration, Duration::from_secs(15));

    // An unknown key is an error at its table, with the key it may have meant.
    let e = load("\n[kubernetes]\nnamespace = [\"web\"]\n").unwrap_err();
    let d = &e.diagnostics[0];
    assert_eq!(d.line, FILE.lines().count() + 3, "{e}");
    assert!(
        d.hint.as_deref().unwrap_or("").contains("namespaces"),
        "{e}"
    );
    assert!(d.message.contains("unknown field `namespace`"), "{e}");

    // Rules serde cannot express, each at its key.
    let e = load(
        "\n[kubernetes]\nnamespaces = [\"Web\"]\nlabel_selector = \"app in web\"\ningress_controller = \"nginx\"\nbatch = \"2s\"\n\n[kubernetes.leader_election]\nlease_duration = \"5s\"\nrenew_deadline = \"10s\"\n",
    )
    .unwrap_err();
    let lines: Vec<(usize, &str)> = e
        .diagnostics
        .iter()
        .map(|d| (d.line, d.message.as_str()))
        .collect();
    assert_eq!(lines.len(), 5, "{e}");
    // `[kubernetes]` is on line `at`; the keys follow it.
    let at = FILE.lines().count() + 2;
    assert!(
        lines[0].0 == at + 1 && lines[0].1.contains("namespace \"Web\""),
        "{e}"
    );
    assert!(
        lines[1].0 == at + 2 && lines[1].1.contains("label_selector"),
        "{e}"
    );
    assert!(
        lines[2].0 == at + 3 && lines[2].1.contains("ingress_controller"),
        "{e}"
    );
    assert!(lines[3].0 == at + 4 && lines[3].1.contains("batch"), "{e}");
    assert!(
        lines[4].0 == at + 7 && lines[4].1.contains("lease_duration"),
        "{e}"
    );
}

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

// ---- Against the fake API server: objects in, routes out. ----

mod cluster {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use controlplane::config;
    use controlplane::control::{self, Control, ControlPlane};
    use controlplane::sources::kubernetes::source::{Source, SyncState};
    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{
        Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
    };
    use k8s_openapi::api::networking::v1::{
        HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass,
        IngressClassSpec, IngressRule, IngressServiceBackend, IngressSpec, ServiceBackendPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use kubefake::FakeApiServer;
    use tokio::sync::watch;

    use super::File;

    pub const NS: &str = "shop";

    fn meta(name: &str, ns: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: ns.map(str::to_string),
            ..ObjectMeta::default()
        }
    }

    pub fn class() -> IngressClass {
        IngressClass {
            metadata: meta("lb", None),
            spec: Some(IngressClassSpec {
                controller: Some("lb.example.com/ingress-controller".into()),
                ..IngressClassSpec::default()
            }),
        }
    }

    pub fn service(name: &str) -> Service {
        Service {
            metadata: meta(name, Some(NS)),
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::Int(8080)),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// An endpoint: (last octet, ready, serving, terminating).
    pub type Ep = (u8, bool, bool, bool);

    pub fn up(last: u8) -> Ep {
        (last, true, true, false)
    }

    pub fn slice(service: &str, eps: &[Ep]) -> EndpointSlice {
        let mut m = meta(&format!("{service}-abc"), Some(NS));
        m.labels = Some(BTreeMap::from([(
            "kubernetes.io/service-name".to_string(),
            service.to_string(),
        )]));
        EndpointSlice {
            metadata: m,
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|&(last, ready, serving, terminating)| Endpoint {
                    addresses: vec![format!("198.18.2.{last}")],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            }]),
        }
    }

    pub fn ingress(name: &str, host: &str, service: &str) -> Ingress {
        Ingress {
            metadata: meta(name, Some(NS)),
            spec: Some(IngressSpec {
                ingress_class_name: Some("lb".into()),
                rules: Some(vec![IngressRule {
                    host: Some(host.into()),
                    http: Some(HTTPIngressRuleValue {
                        paths: vec![HTTPIngressPath {
                            path: Some("/".into()),
                            path_type: "Prefix".into(),
                            backend: IngressBackend {
                                service: Some(IngressServiceBackend {
                                    name: service.into(),
                                    port: Some(ServiceBackendPort {
                                        number: Some(80),
                                        ..ServiceBackendPort::default()
                                    }),
                                }),
                                ..IngressBackend::default()
                            },
                        }],
                    }),
                }]),
                ..IngressSpec::default()
            }),
            ..Ingress::default()
        }
    }

    /// One balancer replica: a control plane whose lb.toml has `[kubernetes]` pointing at the
    /// fake, and its source.
    pub struct Replica {
        pub cp: Arc<ControlPlane>,
        pub source: Option<Source>,
        pub state: Arc<SyncState>,
        pub leader: watch::Sender<bool>,
        pub file: File,
    }

    pub const BASE: &str = r#"
[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
snat = ["198.18.0.2"]
gateway_mac = "02:00:00:00:00:fe"
workers = 1
"#;

    impl Replica {
        pub fn start(tag: &str, fake: &FakeApiServer, extra: &str, leader: bool) -> Replica {
            let file = File::new(tag, "");
            let kc = file.dir.join("kubeconfig");
            fake.write_kubeconfig(&kc).unwrap();
            let text = format!(
                "{BASE}\n[kubernetes]\nkubeconfig = {kc:?}\nsecrets_dir = {:?}\ningress_http = [\"198.18.0.10:80\"]\nvip_pool = [\"198.18.0.128/28\"]\n{extra}\n",
                file.dir.join("secrets")
            );
            std::fs::write(&file.path, text).unwrap();
            let (cfg, text) = config::load_with_text(&file.path).unwrap();
            let k = cfg.kubernetes.clone().unwrap().resolved(&file.path);
            let (cp, _) =
                ControlPlane::new(&file.path, cfg, text, Box::new(control::load_file)).unwrap();
            let cp = Arc::new(cp);
            let (tx, rx) = watch::channel(leader);
            let source = Source::start(&tokio::runtime::Handle::current(), cp.clone(), k, rx);
            Replica {
                cp,
                state: source.state(),
                source: Some(source),
                leader: tx,
                file,
            }
        }

        /// Each Ingress backend (`addr:port`) with its weight in the serving config (`None`:
        /// out of the table).
        pub fn ingress_backends(&self) -> BTreeMap<String, Option<u32>> {
            self.cp
                .http()
                .iter()
                .filter(|h| h.name == "k8s-ingress")
                .flat_map(|h| h.backends.iter())
                .map(|b| (format!("{}:{}", b.key.addr, b.key.port), b.weight))
                .collect()
        }

        pub fn stop(mut self) {
            if let Some(s) = self.source.take() {
                s.stop();
            }
        }
    }

    /// Waits (up to 10 s, polling every millisecond) until `what` holds; how long it took.
    pub async fn until(what: impl Fn() -> bool) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if what() {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }

    pub fn backends(list: &[(&str, Option<u32>)]) -> BTreeMap<String, Option<u32>> {
        list.iter().map(|(a, w)| (a.to_string(), *w)).collect()
    }

    /// The fake with a class, Service `web` (two ready endpoints) and Ingress `shop`.
    pub fn seeded() -> FakeApiServer {
        let fake = FakeApiServer::start();
        fake.apply(&class());
        fake.apply(&service("web"));
        fake.apply(&slice("web", &[up(1), up(2)]));
        fake.apply(&ingress("shop", "shop.example.com", "web"));
        fake
    }
}

use cluster::{backends, seeded, slice, until, up, Replica};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_service_and_slices_route_and_follow_endpoint_conditions() {
    let fake = seeded();
    let r = Replica::start("routes", &fake, "", true);
    let two = backends(&[("198.18.2.1:8080", Some(1)), ("198.18.2.2:8080", Some(1))]);
    // Ready once the first state is applied (just after the table shows it).
    let took = until(|| r.ingress_backends() == two && r.state.ready()).await;
    assert!(
        took.is_some(),
        "{:?} {:?}",
        r.ingress_backends(),
        r.state.reasons()
    );
    assert!(r.state.reasons().is_empty(), "{:?}", r.state.reasons());

    // A pod turns not ready: out at once.
    fake.apply(&slice("web", &[up(1), (2, false, false, false)]));
    let took = until(|| !r.ingress_backends().contains_key("198.18.2.2:8080")).await;
    println!("not ready -> out of the table in {took:?}");
    assert!(took.is_some(), "{:?}", r.ingress_backends());

    // Back, then terminating (still serving): weight 0 (drains, no new requests).
    fake.apply(&slice("web", &[up(1), up(2)]));
    assert!(until(|| r.ingress_backends() == two).await.is_some());
    fake.apply(&slice("web", &[up(1), (2, false, true, true)]));
    let drained = backends(&[("198.18.2.1:8080", Some(1)), ("198.18.2.2:8080", Some(0))]);
    let took = until(|| r.ingress_backends() == drained).await;
    println!("terminating -> weight 0 in {took:?}");
    assert!(took.is_some(), "{:?}", r.ingress_backends());

    // Scaled up: a new endpoint takes requests.
    fake.apply(&slice("web", &[up(1), up(2), up(3)]));
    let took = until(|| r.ingress_backends().get("198.18.2.3:8080") == Some(&Some(1))).await;
    println!("scaled up -> serving in {took:?}");
    assert!(took.is_some(), "{:?}", r.ingress_backends());
    // The Ingress got its address.
    assert!(until(|| fake
        .get::<k8s_openapi::api::networking::v1::Ingress>(cluster::NS, "shop")
        .and_then(|i| i.status?.load_balancer?.ingress)
        .is_some_and(|v| v.iter().any(|i| i.ip.as_deref() == Some("198.18.0.10"))))
    .await
    .is_some());
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_moves_are_patched_in_place_and_match_a_whole_sync() {
    let fake = seeded();
    let r = Replica::start("patched", &fake, "", true);
    let two = backends(&[("198.18.2.1:8080", Some(1)), ("198.18.2.2:8080", Some(1))]);
    assert!(until(|| r.ingress_backends() == two).await.is_some());
    // The leader writes the Ingress's address; that write comes back as a change of the
    // Ingress (a whole translation). Let it settle.
    assert!(until(|| fake
        .get::<k8s_openapi::api::networking::v1::Ingress>(cluster::NS, "shop")
        .and_then(|i| i.status?.load_balancer?.ingress)
        .is_some())
    .await
    .is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = r.state.view();
    type Move<'a> = (&'a [cluster::Ep], &'a [(&'a str, Option<u32>)]);
    let moves: [Move<'_>; 3] = [
        (
            &[up(1), (2, false, false, false)],
            &[("198.18.2.1:8080", Some(1))],
        ),
        (
            &[up(1), up(3)],
            &[("198.18.2.1:8080", Some(1)), ("198.18.2.3:8080", Some(1))],
        ),
        (
            &[up(1), (3, false, true, true), up(4)],
            &[
                ("198.18.2.1:8080", Some(1)),
                ("198.18.2.3:8080", Some(0)),
                ("198.18.2.4:8080", Some(1)),
            ],
        ),
    ];
    for (eps, want) in moves {
        fake.apply(&slice("web", eps));
        let want = backends(want);
        assert!(
            until(|| r.ingress_backends() == want).await.is_some(),
            "{:?} != {want:?}",
            r.ingress_backends()
        );
    }
    let after = r.state.view();
    assert_eq!(
        after.applies_patched - before.applies_patched,
        3,
        "each endpoint move patched in place: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.applies_ok - before.applies_ok,
        3,
        "and nothing else applied"
    );
    assert_eq!(r.cp.cluster_status().patched, after.applies_patched);
    // A replica that starts now translates everything once: the same serving state.
    let fresh = Replica::start("patched-fresh", &fake, "", false);
    assert!(until(|| fresh.state.ready()).await.is_some());
    assert_eq!(fresh.cp.cluster(), r.cp.cluster());
    assert_eq!(
        fresh.cp.http_routes("k8s-ingress"),
        r.cp.http_routes("k8s-ingress")
    );
    fresh.stop();
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_are_applied_at_once_additions_wait_for_the_batch() {
    let fake = seeded();
    let r = Replica::start("batch", &fake, "batch = \"400ms\"", true);
    let two = backends(&[("198.18.2.1:8080", Some(1)), ("198.18.2.2:8080", Some(1))]);
    assert!(until(|| r.ingress_backends() == two).await.is_some());
    let applied = r.state.view().applies_ok;

    // An addition waits for the window.
    let t = Instant::now();
    fake.apply(&slice("web", &[up(1), up(2), up(3)]));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!r.ingress_backends().contains_key("198.18.2.3:8080"));
    assert!(
        until(|| r.ingress_backends().contains_key("198.18.2.3:8080"))
            .await
            .is_some()
    );
    let added = t.elapsed();
    println!("addition applied after {added:?} (batch 400ms)");
    assert!(added >= Duration::from_millis(350), "{added:?}");

    // An addition, then a removal inside the window: both applied at once with the removal.
    let t = Instant::now();
    fake.apply(&slice("web", &[up(1), up(2), up(3), up(4)]));
    tokio::time::sleep(Duration::from_millis(20)).await;
    fake.apply(&slice("web", &[up(2), up(3), up(4)]));
    assert!(
        until(|| !r.ingress_backends().contains_key("198.18.2.1:8080"))
            .await
            .is_some()
    );
    let removed = t.elapsed();
    println!("removal applied after {removed:?} (batch 400ms)");
    assert!(removed < Duration::from_millis(300), "{removed:?}");
    assert!(r.ingress_backends().contains_key("198.18.2.4:8080"));
    // Two changes of the first kind were one apply each, not one per event.
    assert!(r.state.view().applies_ok <= applied + 3);
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_relists_without_losing_a_route() {
    let fake = seeded();
    let r = Replica::start("restart", &fake, "", true);
    let two = backends(&[("198.18.2.1:8080", Some(1)), ("198.18.2.2:8080", Some(1))]);
    assert!(until(|| r.ingress_backends() == two).await.is_some());
    let watches = fake.watches_started();

    // Restarted, with a change made while it was down (its history gone: 410 on resume).
    let watcher = {
        let cp = r.cp.clone();
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let l = lost.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                let routed = cp
                    .http()
                    .iter()
                    .any(|h| h.name == "k8s-ingress" && !h.backends.is_empty());
                if !routed {
                    l.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        (lost, stop, t)
    };
    fake.restart(Duration::from_millis(500));
    assert!(until(|| r
        .state
        .reasons()
        .iter()
        .any(|x| x.contains("failing since")))
    .await
    .is_some());
    assert!(r.state.ready(), "stays ready on the last tables");
    fake.apply(&slice("web", &[up(1), up(2), up(3)]));
    fake.compact();
    let took = until(|| r.ingress_backends().contains_key("198.18.2.3:8080")).await;
    println!("change made during a restart applied {took:?} after the change");
    assert!(took.is_some(), "{:?}", r.state.reasons());
    assert!(
        until(|| r.state.reasons().is_empty()).await.is_some(),
        "{:?}",
        r.state.reasons()
    );
    assert!(fake.watches_started() > watches);
    let (lost, stop, t) = watcher;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    t.join().unwrap();
    assert!(
        !lost.load(std::sync::atomic::Ordering::SeqCst),
        "a route was lost meanwhile"
    );
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_and_keeps_the_routes() {
    let fake = seeded();
    let r = Replica::start("gone", &fake, "", true);
    let two = backends(&[("198.18.2.1:8080", Some(1)), ("198.18.2.2:8080", Some(1))]);
    assert!(until(|| r.ingress_backends() == two).await.is_some());
    let expired = fake.watches_expired();
    // Compacted history, then a change: open watches end with 410 and the watchers relist.
    fake.set_history_limit(1);
    fake.compact();
    fake.apply(&slice("web", &[up(1), up(2), up(5)]));
    fake.apply(&cluster::service("other"));
    fake.apply(&cluster::service("third"));
    let took = until(|| r.ingress_backends().contains_key("198.18.2.5:8080")).await;
    assert!(
        took.is_some(),
        "{:?} {:?}",
        r.ingress_backends(),
        r.state.reasons()
    );
    assert!(r.ingress_backends().contains_key("198.18.2.1:8080"));
    println!("410 expired watches: {}", fake.watches_expired() - expired);
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_keeps_the_tables_and_readyz_says_why() {
    let fake = seeded();
    let r = Replica::start("gone-away", &fake, "", true);
    let two = backends(&[("198.18.2.1:8080", Some(1)), ("198.18.2.2:8080", Some(1))]);
    assert!(until(|| r.ingress_backends() == two).await.is_some());
    fake.set_unreachable(true);
    assert!(until(|| r
        .state
        .reasons()
        .iter()
        .any(|x| x.starts_with("kubernetes: watch of") && x.contains("failing since")))
    .await
    .is_some());
    assert!(r.state.ready());
    assert_eq!(r.ingress_backends(), two);
    fake.set_unreachable(false);
    assert!(
        until(|| r.state.reasons().is_empty()).await.is_some(),
        "{:?}",
        r.state.reasons()
    );
    r.stop();
}

/// Status writes (PATCH of a `/status` subresource) in the fake's log.
fn status_writes(fake: &kubefake::FakeApiServer) -> usize {
    fake.requests()
        .iter()
        .filter(|(m, p, _)| m == "PATCH" && p.ends_with("/status"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_status_and_events_and_a_new_leader_takes_over() {
    use k8s_openapi::api::networking::v1::Ingress;
    let fake = seeded();
    // An Ingress with a bad annotation: a problem to report as an Event.
    let mut bad = cluster::ingress("bad", "bad.example.com", "web");
    bad.metadata.annotations = Some(
        [(
            "nginx.ingress.kubernetes.io/proxy-body-size".to_string(),
            "lots".to_string(),
        )]
        .into(),
    );
    fake.apply(&bad);
    let a = Replica::start("leader-a", &fake, "", false);
    let b = Replica::start("leader-b", &fake, "", false);
    let two = backends(&[("198.18.2.1:8080", Some(1)), ("198.18.2.2:8080", Some(1))]);
    assert!(
        until(|| a.ingress_backends() == two && b.ingress_backends() == two)
            .await
            .is_some()
    );
    // Both serve; neither leads: nothing written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_writes(&fake), 0);
    let events = |fake: &kubefake::FakeApiServer| {
        fake.requests()
            .iter()
            .filter(|(m, p, _)| m == "POST" && p.ends_with("/events"))
            .count()
    };
    assert_eq!(events(&fake), 0);

    // A leads: the Ingresses get their address, the bad one an Event.
    a.leader.send_replace(true);
    let has_ip = |fake: &kubefake::FakeApiServer, name: &str| {
        fake.get::<Ingress>(cluster::NS, name)
            .and_then(|i| i.status?.load_balancer?.ingress)
            .is_some_and(|v| v.iter().any(|i| i.ip.as_deref() == Some("198.18.0.10")))
    };
    assert!(until(|| has_ip(&fake, "shop")).await.is_some());
    assert!(until(|| events(&fake) >= 1).await.is_some());
    assert!(a.state.view().leader && !b.state.view().leader);
    // Written once: further changes that keep the status write nothing more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (writes, evs) = (status_writes(&fake), events(&fake));
    fake.apply(&slice("web", &[up(1), up(2), up(3)]));
    assert!(
        until(|| a.ingress_backends().contains_key("198.18.2.3:8080"))
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_writes(&fake), writes, "{:?}", fake.requests());
    assert_eq!(events(&fake), evs, "the same problem is reported once");

    // Failover: A stops leading, B leads; a status someone cleared is written again by B.
    a.leader.send_replace(false);
    b.leader.send_replace(true);
    assert!(until(|| b.state.view().leader && !a.state.view().leader)
        .await
        .is_some());
    fake.clear_requests();
    let mut cleared = fake.get::<Ingress>(cluster::NS, "shop").unwrap();
    cleared.status = Some(Default::default());
    fake.apply_status(&cleared);
    assert!(until(|| has_ip(&fake, "shop")).await.is_some());
    // By B (A no longer leads); the log entry may trail the write a little.
    assert!(until(|| status_writes(&fake) >= 1).await.is_some());
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_elected_replicas_one_leader_and_failover() {
    use controlplane::control::{self as ctl, ControlPlane as Plane};
    use controlplane::sources::kubernetes::source::Source as Src;
    use k8s_openapi::api::networking::v1::Ingress;
    let fake = seeded();
    let election = "[kubernetes.leader_election]\nnamespace = \"lb-system\"\nlease_duration = \"2s\"\nrenew_deadline = \"1s\"\nretry_period = \"100ms\"\n";
    let start = |tag: &str| {
        let file = File::new(tag, "");
        let kc = file.dir.join("kubeconfig");
        fake.write_kubeconfig(&kc).unwrap();
        std::fs::write(
            &file.path,
            format!(
                "{}\n[kubernetes]\nkubeconfig = {kc:?}\nsecrets_dir = {:?}\ningress_http = [\"198.18.0.10:80\"]\n{election}",
                cluster::BASE,
                file.dir.join("secrets")
            ),
        )
        .unwrap();
        let (cfg, text) = config::load_with_text(&file.path).unwrap();
        let k = cfg.kubernetes.clone().unwrap().resolved(&file.path);
        let (cp, _) = Plane::new(&file.path, cfg, text, Box::new(ctl::load_file)).unwrap();
        let src = Src::start_elected(&tokio::runtime::Handle::current(), Arc::new(cp), k);
        (src, file)
    };
    let (a, _fa) = start("elect-a");
    let (b, _fb) = start("elect-b");
    let (sa, sb) = (a.state(), b.state());
    let one = || {
        let (x, y) = (sa.view().leader, sb.view().leader);
        x != y
    };
    assert!(until(one).await.is_some(), "no single leader");
    // Stays one for a while (several renewals).
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert!(one(), "a: {}, b: {}", sa.view().leader, sb.view().leader);
    }
    assert!(fake
        .get::<k8s_openapi::api::coordination::v1::Lease>("lb-system", "lb-leader")
        .is_some());
    let (leader, follower, fstate) = if sa.view().leader {
        (a, b, sb)
    } else {
        (b, a, sa)
    };
    // The leader wrote the Ingress status.
    let has_ip = || {
        fake.get::<Ingress>(cluster::NS, "shop")
            .and_then(|i| i.status?.load_balancer?.ingress)
            .is_some_and(|v| v.iter().any(|i| i.ip.as_deref() == Some("198.18.0.10")))
    };
    assert!(until(has_ip).await.is_some());
    // The leader stops (gives the Lease up): the other takes over and writes.
    let t = Instant::now();
    leader.shutdown(Duration::from_secs(2)).await;
    assert!(until(|| fstate.view().leader).await.is_some());
    println!("failover in {:?}", t.elapsed());
    let mut cleared = fake.get::<Ingress>(cluster::NS, "shop").unwrap();
    cleared.status = Some(Default::default());
    fake.apply_status(&cleared);
    assert!(until(has_ip).await.is_some());
    follower.shutdown(Duration::from_secs(2)).await;
}

/// GatewayClass `lb` (ours), Gateway `gw` with one HTTP listener on 8080 (`allowed` routes),
/// and HTTPRoute `shop` for shop.example.com to Service `web` port 80, in the fake.
fn apply_gateway(
    fake: &kubefake::FakeApiServer,
    allowed: Option<controlplane::sources::kubernetes::model::AllowedRoutes>,
) {
    use controlplane::sources::kubernetes::model::{
        Gateway, GatewayClass, GatewayClassSpec, GatewaySpec, HTTPBackendRef, HTTPRoute,
        HTTPRouteRule, HTTPRouteSpec, Listener, ParentReference,
    };
    fake.apply(&GatewayClass::new(
        "lb",
        GatewayClassSpec {
            controller_name: "lb.example.com/gateway-controller".into(),
            description: None,
        },
    ));
    let mut gw = Gateway::new(
        "gw",
        GatewaySpec {
            gateway_class_name: "lb".into(),
            listeners: vec![Listener {
                name: "http".into(),
                hostname: None,
                port: 8080,
                protocol: "HTTP".into(),
                tls: None,
                allowed_routes: allowed,
            }],
            addresses: Vec::new(),
        },
    );
    gw.metadata.namespace = Some(cluster::NS.into());
    fake.apply(&gw);
    let mut route = HTTPRoute::new(
        "shop",
        HTTPRouteSpec {
            parent_refs: vec![ParentReference {
                name: "gw".into(),
                ..ParentReference::default()
            }],
            hostnames: vec!["shop.example.com".into()],
            rules: vec![HTTPRouteRule {
                backend_refs: vec![HTTPBackendRef {
                    name: "web".into(),
                    port: Some(80),
                    ..HTTPBackendRef::default()
                }],
                ..HTTPRouteRule::default()
            }],
        },
    );
    route.metadata.namespace = Some(cluster::NS.into());
    fake.apply(&route);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_httproute_route_and_get_their_conditions() {
    use controlplane::sources::kubernetes::model::ObjectKey;
    use controlplane::sources::kubernetes::model::{Gateway, HTTPRoute};
    use controlplane::sources::kubernetes::translate::gateway_http_name;
    let fake = kubefake::FakeApiServer::start();
    fake.apply(&cluster::service("web"));
    fake.apply(&slice("web", &[up(1), up(2)]));
    apply_gateway(&fake, None);
    let r = Replica::start(
        "gateway",
        &fake,
        "gateway_addresses = [\"198.18.0.11\"]",
        true,
    );
    let name = gateway_http_name(&ObjectKey::new(cluster::NS, "gw"), 8080);
    let routed = || {
        r.cp.http().iter().any(|h| {
            h.name == name
                && h.listen.iter().any(|a| a.to_string() == "198.18.0.11:8080")
                && h.backends.len() == 2
        })
    };
    assert!(
        until(routed).await.is_some(),
        "{:?} {:?}",
        r.cp.http().iter().map(|h| &h.name).collect::<Vec<_>>(),
        r.state.view()
    );
    // The leader writes the route's and the gateway's conditions.
    let accepted = || {
        let route: Option<HTTPRoute> = fake.get(cluster::NS, "shop");
        let gw: Option<Gateway> = fake.get(cluster::NS, "gw");
        let route_ok = route.and_then(|r| r.status).is_some_and(|s| {
            s.parents.iter().any(|p| {
                p.conditions.iter().any(|c| {
                    c.type_ == "Accepted"
                        && c.status == "True"
                        && !c.last_transition_time.is_empty()
                })
            })
        });
        let gw_ok = gw.and_then(|g| g.status).is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Programmed" && c.status == "True")
                && s.addresses.iter().any(|a| a.value == "198.18.0.11")
        });
        route_ok && gw_ok
    };
    assert!(until(accepted).await.is_some());
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_service_gets_a_vip_and_its_status() {
    use k8s_openapi::api::core::v1::Service;
    let fake = kubefake::FakeApiServer::start();
    let mut svc = cluster::service("db");
    if let Some(spec) = svc.spec.as_mut() {
        spec.type_ = Some("LoadBalancer".into());
        spec.load_balancer_class = Some("lb.example.com/vip".into());
    }
    fake.apply(&svc);
    fake.apply(&slice("db", &[up(7), up(8)]));
    let r = Replica::start("l4", &fake, "", true);
    // The first host address of the pool (198.18.0.128/28).
    let vip = "198.18.0.129";
    let served = || {
        r.cp.table().load().services.iter().any(|s| {
            s.name.starts_with("k8s/shop/db") && s.vip.to_string() == vip && s.backends.len() == 2
        })
    };
    assert!(
        until(served).await.is_some(),
        "{:?}",
        r.cp.table()
            .load()
            .services
            .iter()
            .map(|s| (s.name.to_string(), s.vip.to_string(), s.backends.len()))
            .collect::<Vec<_>>()
    );
    let has_vip = || {
        fake.get::<Service>(cluster::NS, "db")
            .and_then(|s| s.status?.load_balancer?.ingress)
            .is_some_and(|v| v.iter().any(|i| i.ip.as_deref() == Some(vip)))
    };
    assert!(until(has_vip).await.is_some());
    // The Service goes away: its VIP drains (kept for its flows), then nothing new.
    fake.delete::<Service>(cluster::NS, "db");
    assert!(until(|| r
        .cp
        .observe()
        .draining
        .services
        .iter()
        .any(|s| s.starts_with("k8s/shop/db")))
    .await
    .is_some());
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_change_refused_for_a_clash_applies_after_the_file_lets_go() {
    let fake = kubefake::FakeApiServer::start();
    let mut svc = cluster::service("db");
    if let Some(spec) = svc.spec.as_mut() {
        spec.type_ = Some("LoadBalancer".into());
        spec.load_balancer_class = Some("lb.example.com/vip".into());
    }
    fake.apply(&svc);
    fake.apply(&slice("db", &[up(7)]));
    // The file already has a service of the name the cluster's gets.
    let clash = r#"
[[services]]
name = "k8s/shop/db"
vip = "198.18.0.50"
ports = ["80"]
protocol = "tcp"

[[services.pools]]
name = "static"
mode = "fullnat"
backends = [{ addr = "198.18.1.10", port = 8080 }]
"#;
    let r = Replica::start("resync", &fake, clash, true);
    let text = std::fs::read_to_string(&r.file.path).unwrap();
    assert!(until(|| r.state.view().applies_rejected >= 1)
        .await
        .is_some());
    assert!(r
        .state
        .reasons()
        .iter()
        .any(|x| x.contains("lb.toml has a service of that name")));
    // The file lets go of the name; a resync applies the cluster's service.
    std::fs::write(&r.file.path, text.replace(clash, "")).unwrap();
    r.cp.reload_file().unwrap();
    r.source.as_ref().unwrap().resync();
    let vip = || {
        r.cp.table()
            .load()
            .services
            .iter()
            .any(|s| &*s.name == "k8s/shop/db" && s.vip.to_string() == "198.18.0.129")
    };
    assert!(until(vip).await.is_some(), "{:?}", r.state.view());
    // Synced and ready now (the state follows the table within the apply).
    assert!(
        until(|| r.state.ready() && r.state.reasons().is_empty())
            .await
            .is_some(),
        "{:?}",
        r.state.reasons()
    );
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_labelled_later_lets_its_routes_attach_to_a_selector_listener() {
    use controlplane::sources::kubernetes::model::ObjectKey;
    use controlplane::sources::kubernetes::model::{AllowedRoutes, RouteNamespaces};
    use controlplane::sources::kubernetes::translate::gateway_http_name;
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    let fake = kubefake::FakeApiServer::start();
    fake.apply(&cluster::service("web"));
    fake.apply(&slice("web", &[up(1)]));
    apply_gateway(
        &fake,
        Some(AllowedRoutes {
            namespaces: Some(RouteNamespaces {
                from: Some("Selector".into()),
                selector: Some(LabelSelector {
                    match_labels: Some([("gw".to_string(), "shared".to_string())].into()),
                    match_expressions: None,
                }),
            }),
        }),
    );
    let mut ns = Namespace::default();
    ns.metadata.name = Some(cluster::NS.into());
    fake.apply(&ns);
    let r = Replica::start(
        "selector",
        &fake,
        "gateway_addresses = [\"198.18.0.11\"]",
        true,
    );
    let name = gateway_http_name(&ObjectKey::new(cluster::NS, "gw"), 8080);
    let routes = || r.cp.http_routes(&name).map_or(0, |spec| spec.routes.len());
    assert!(until(|| r.state.ready()).await.is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(routes(), 0, "the namespace has no matching label yet");
    // Labelled: the route attaches, without a restart.
    ns.metadata.labels = Some([("gw".to_string(), "shared".to_string())].into());
    fake.apply(&ns);
    assert!(
        until(|| routes() == 1).await.is_some(),
        "{:?}",
        r.state.view()
    );
    // The label taken away: it leaves again.
    ns.metadata.labels = None;
    fake.apply(&ns);
    assert!(until(|| routes() == 0).await.is_some());
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_that_cannot_be_listed_do_not_keep_the_source_unready() {
    let fake = seeded();
    // An API server (or RBAC) without Namespaces for us: 404 on the first list.
    fake.unregister("", "v1", "namespaces");
    let r = Replica::start("no-namespaces", &fake, "", true);
    let two = backends(&[("198.18.2.1:8080", Some(1)), ("198.18.2.2:8080", Some(1))]);
    assert!(until(|| r.ingress_backends() == two && r.state.ready())
        .await
        .is_some());
    let v = r.state.view();
    assert!(
        v.disabled
            .get("Namespace")
            .is_some_and(|why| why.contains("Selector")),
        "{:?}",
        v.disabled
    );
    r.stop();
}

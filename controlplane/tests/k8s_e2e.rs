//! The kubernetes source end to end (root only): `lb run` in the namespace lab with
//! `[kubernetes]` pointing at a fake API server (started inside the balancer's namespace, on
//! its 127.0.0.1); objects in the fake drive real traffic to the lab's pods: an Ingress (L7) and
//! a LoadBalancer Service (L4). Scaling endpoints moves new requests (time measured and
//! printed); 100 endpoint churns under a keep-alive wrk load lose no request.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kubefake::FakeApiServer;
use testkit::lab::{self, Lab, LabOptions, Request};

mod labkit;
use labkit::{wait_for, TempDir, Wrk, HEAD};

/// One lab at a time: the tests share the machine's two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Where Ingresses are served: the balancer host's kernel address.
const SITE: &str = "198.18.255.1:80";

/// The LoadBalancer Service's VIP (the pool's only address).
const VIP: &str = "198.18.0.100:80";

const NS: &str = "shop";

fn meta(name: &str, ns: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(str::to_string),
        ..ObjectMeta::default()
    }
}

fn service(name: &str, load_balancer: bool) -> Service {
    Service {
        metadata: meta(name, Some(NS)),
        spec: Some(ServiceSpec {
            type_: load_balancer.then(|| "LoadBalancer".to_string()),
            load_balancer_class: load_balancer.then(|| "lb.example.com/vip".to_string()),
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

/// The slice of `service` with these lab pods (`pod-a`, `pod-b`) ready.
fn slice(service: &str, pods: &[&str]) -> EndpointSlice {
    let mut m = meta(&format!("{service}-1"), Some(NS));
    m.labels = Some(BTreeMap::from([(
        "kubernetes.io/service-name".to_string(),
        service.to_string(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: lab::BACKENDS
            .iter()
            .filter(|b| pods.contains(&b.name))
            .map(|b| Endpoint {
                addresses: vec![b.v4.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
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

fn ingress() -> Ingress {
    Ingress {
        metadata: meta("www", Some(NS)),
        spec: Some(IngressSpec {
            ingress_class_name: Some("lb".into()),
            rules: Some(vec![IngressRule {
                host: Some("www.lab.test".into()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: "web".into(),
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

/// The lab up with its fake API server (in the balancer's namespace) seeded, and `lb run`
/// started on a config whose `[kubernetes]` points at it.
fn lab_with_cluster(tag: &str) -> (Lab, FakeApiServer, TempDir) {
    let dir = std::env::temp_dir().join(format!("lbe2e-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    let path = dir.0.join("lb.toml");
    let kc: PathBuf = dir.0.join("kubeconfig");
    // `snat` belongs to [dataplane]: put it there, then add [kubernetes].
    let body = HEAD.replacen("workers = 2\n", "workers = 2\nsnat = [\"198.18.0.2\"]\n", 1);
    std::fs::write(
        &path,
        format!(
            "{body}\n[kubernetes]\nkubeconfig = {kc:?}\nsecrets_dir = {:?}\ningress_http = [\"{SITE}\"]\nvip_pool = [\"198.18.0.100/32\"]\n\n[kubernetes.leader_election]\nnamespace = \"lb-system\"\nlease_duration = \"3s\"\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\n",
            dir.0.join("secrets")
        ),
    )
    .unwrap();
    let mut lab = Lab::up(&LabOptions {
        prefix: format!("lbt{tag}"),
        lb_bin: PathBuf::from(env!("CARGO_BIN_EXE_lb")),
        config: path.clone(),
    })
    .unwrap();
    // Started from a thread inside the balancer's namespace: its threads and socket live there.
    let fake = lab
        .ns("lb")
        .unwrap()
        .enter_on_thread(FakeApiServer::start)
        .unwrap();
    fake.write_kubeconfig(&kc).unwrap();
    fake.apply(&IngressClass {
        metadata: meta("lb", None),
        spec: Some(IngressClassSpec {
            controller: Some("lb.example.com/ingress-controller".into()),
            ..IngressClassSpec::default()
        }),
    });
    fake.apply(&service("web", false));
    fake.apply(&slice("web", &["pod-a"]));
    fake.apply(&ingress());
    fake.apply(&service("db", true));
    fake.apply(&slice("db", &["pod-a", "pod-b"]));
    lab.start_lb(Duration::from_secs(15)).unwrap();
    (lab, fake, dir)
}

/// One HTTP/1.1 request to the admin API inside the balancer's namespace: (status, body).
fn admin(lab: &Lab, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    lab.ns("lb")
        .unwrap()
        .enter_on_thread(|| {
            let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:9180") else {
                return (0, String::new());
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            let status = out
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let body = out
                .split_once("\r\n\r\n")
                .map_or("", |(_, b)| b)
                .to_string();
            (status, body)
        })
        .unwrap()
}

/// `n` requests on new connections from the client's addresses in turn: answers by backend
/// name, errors as `"error: ..."`.
fn spread(lab: &Lab, dst: &str, host: &str, n: usize) -> BTreeMap<String, usize> {
    let dst: SocketAddr = dst.parse().unwrap();
    let req = Request::new(host, "/");
    lab.client()
        .unwrap()
        .enter_on_thread(|| {
            let mut out = BTreeMap::new();
            for i in 0..n {
                let src = IpAddr::V4(lab::client_v4(u8::try_from(i % 16).unwrap()));
                let key = match lab::http_request(Some(src), dst, &req, lab::REQUEST_TIMEOUT) {
                    Ok(name) => name,
                    Err(e) => format!("error: {e}"),
                };
                *out.entry(key).or_insert(0) += 1;
            }
            out
        })
        .unwrap()
}

fn only(name: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(name.to_string(), n)])
}

/// Time from the slice change until new requests reach only `want` (polled with one request
/// at a time from the client).
fn time_to_move(lab: &Lab, fake: &FakeApiServer, pods: &[&str], want: &str) -> Duration {
    let dst: SocketAddr = SITE.parse().unwrap();
    let req = Request::new("www.lab.test", "/");
    let t = Instant::now();
    fake.apply(&slice("web", pods));
    lab.client()
        .unwrap()
        .enter_on_thread(|| {
            let mut streak = 0;
            let mut first_ok = None;
            while t.elapsed() < Duration::from_secs(10) {
                let src = IpAddr::V4(lab::client_v4(1));
                match lab::http_request(Some(src), dst, &req, lab::REQUEST_TIMEOUT) {
                    Ok(name) if name == want => {
                        first_ok.get_or_insert(t.elapsed());
                        streak += 1;
                        if streak >= 5 {
                            break;
                        }
                    }
                    _ => {
                        streak = 0;
                        first_ok = None;
                    }
                }
            }
            first_ok.unwrap_or(Duration::from_secs(10))
        })
        .unwrap()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn cluster_objects_drive_real_traffic_and_endpoint_churn_loses_nothing() {
    testkit::require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (mut lab, fake, _dir) = lab_with_cluster("k8");
    assert!(
        wait_for(Duration::from_secs(15), || admin(&lab, "/readyz").0 == 200),
        "not ready: {:?}\n{}",
        admin(&lab, "/readyz"),
        lab.lb_log()
    );

    // L7: the Ingress routes www.lab.test to the Service's one endpoint.
    assert!(
        wait_for(Duration::from_secs(10), || spread(
            &lab,
            SITE,
            "www.lab.test",
            6
        ) == only("pod-a", 6)),
        "{:?}\n{}",
        spread(&lab, SITE, "www.lab.test", 6),
        lab.lb_log()
    );
    // L4: the LoadBalancer Service's VIP balances over both pods.
    let l4 = spread(&lab, VIP, "db.lab.test", 40);
    assert_eq!(
        l4.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["pod-a".to_string(), "pod-b".to_string()]),
        "{l4:?}\n{}",
        lab.lb_log()
    );
    // The leader wrote the addresses back.
    assert!(wait_for(Duration::from_secs(10), || fake
        .get::<Service>(NS, "db")
        .and_then(|s| s.status?.load_balancer?.ingress)
        .is_some_and(|v| v
            .iter()
            .any(|i| i.ip.as_deref() == Some("198.18.0.100")))));

    // Scaling moves new requests: to pod-b alone and back to pod-a alone, five times each.
    let mut moves = Vec::new();
    for _ in 0..5 {
        moves.push(time_to_move(&lab, &fake, &["pod-b"], "pod-b"));
        moves.push(time_to_move(&lab, &fake, &["pod-a"], "pod-a"));
    }
    moves.sort();
    println!("endpoint change -> new requests moved: {moves:?}");
    let median = moves[moves.len() / 2];
    println!("median {median:?}, max {:?}", moves[moves.len() - 1]);
    assert!(median <= Duration::from_millis(100), "{moves:?}");
    // What the balancer itself measured: first watch event of an apply to its table published.
    let (_, metrics) = admin(&lab, "/metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let (sum, count) = (
        value("lb_kubernetes_sync_seconds_sum "),
        value("lb_kubernetes_sync_seconds_count "),
    );
    assert!(count >= 10.0, "{metrics}");
    println!(
        "lb_kubernetes_sync_seconds: {count} applies, mean {:.2} ms",
        sum / count * 1000.0
    );

    // 100 churns under keep-alive load: pod-b joins and leaves (pod-a stays) every 20 ms.
    fake.apply(&slice("web", &["pod-a", "pod-b"]));
    let wrk = Wrk::start(&lab, SITE, 8, 30);
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..100 {
        let pods: &[&str] = if i % 2 == 0 {
            &["pod-a"]
        } else {
            &["pod-a", "pod-b"]
        };
        fake.apply(&slice("web", pods));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = wrk.finish();
    println!("{out}");
    let requests: u64 = out
        .lines()
        .filter(|l| l.contains(" requests in "))
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let errors: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .collect();
    assert!(requests > 100, "{out}");
    assert!(errors.is_empty(), "{out}\n{}", lab.lb_log());
    let (_, state) = admin(&lab, "/state");
    assert!(state.contains("\"kubernetes\""), "{state}");

    // SIGTERM: the source stops with the rest, and the leader gives its Lease up.
    let exit = lab.stop_lb().unwrap();
    assert!(exit.status.is_some_and(|s| s.success()), "{}", exit.output);
    let lease: k8s_openapi::api::coordination::v1::Lease = fake
        .get("lb-system", "lb-leader")
        .expect("the Lease was taken");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(holder.is_empty(), "still held by {holder}");
}

//! `[[http]]` served by a real `lb run` in the namespace lab (root only): requests routed by host,
//! path and header reach the pods that answer with their name; a stopped pod leaves rotation
//! and comes back; an operator's drain takes a pod out of new requests; reloads (routes, weights,
//! listen addresses) apply while keep-alive clients opened before keep working and lose nothing;
//! a broken reload leaves the old routes serving.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::lab::{self, Lab, Request};

mod labkit;
use labkit::{lab_with, reloads_logged, wait_for, Wrk, HEAD};

/// One lab at a time: the tests share the machine's two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The HTTP listener, on the balancer host's kernel address (as in the shipped lb.toml).
const SITE: &str = "198.18.255.1:80";

/// Requests wrk's summary reports, and its error lines (non-2xx answers, socket errors).
fn wrk_summary(out: &str) -> (u64, Vec<String>) {
    let requests = out
        .lines()
        .filter(|l| l.contains(" requests in "))
        .find_map(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let errors = out
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(|l| l.trim().to_owned())
        .collect();
    (requests, errors)
}

/// A fast TCP check, so a stopped pod leaves within a fraction of a second.
const CHECK: &str = r#"
[http.upstreams.health_check]
kind = "tcp"
interval = "200ms"
timeout = "100ms"
rise = 1
fall = 1
"#;

/// The shipped lb.toml's HTTP service with checks; `extra_listen`, `weight_a` (pod-a's weight in
/// `pods`) and `extra_route` vary it between reloads.
fn config(extra_listen: &str, weight_a: u32, extra_route: &str) -> String {
    format!(
        r#"{HEAD}
[[http]]
name = "site"
listen = ["{SITE}"{extra_listen}]
default_upstream = "pods"

[[http.upstreams]]
name = "pods"
backends = [
  {{ addr = "198.18.1.10", port = 8080, weight = {weight_a} }},
  {{ addr = "198.18.1.11", port = 8080 }},
]
{CHECK}
[[http.upstreams]]
name = "pod-a"
backends = [{{ addr = "198.18.1.10", port = 8080 }}]
{CHECK}
[[http.upstreams]]
name = "pod-b"
backends = [{{ addr = "198.18.1.11", port = 8080 }}]
{CHECK}
[[http.routes]]
hosts = ["www.lab.test"]
path = "/"
upstreams = [{{ name = "pods" }}]

[[http.routes]]
hosts = ["www.lab.test"]
path = "/api"
upstreams = [{{ name = "pod-a", weight = 90 }}, {{ name = "pod-b", weight = 10 }}]

[[http.routes]]
kind = "gateway"
hosts = ["*.lab.test"]
path = "/"
headers = {{ X-Pod = "b" }}
upstreams = [{{ name = "pod-b" }}]
{extra_route}"#
    )
}

/// A route for `new.lab.test` to pod-b only (without it the host falls to `pods`).
const NEW_ROUTE: &str = r#"
[[http.routes]]
hosts = ["new.lab.test"]
path = "/"
upstreams = [{ name = "pod-b" }]
"#;

/// A route to an upstream that does not exist: the file is rejected.
const BROKEN_ROUTE: &str = r#"
[[http.routes]]
hosts = ["broken.lab.test"]
path = "/"
upstreams = [{ name = "nope" }]
"#;

/// `n` requests on new connections from the client's addresses in turn: answers by backend
/// name, errors (their message) as `"error: ..."`.
fn spread(lab: &Lab, dst: &str, req: &Request, n: usize) -> BTreeMap<String, usize> {
    let dst: SocketAddr = dst.parse().unwrap();
    lab.client()
        .unwrap()
        .enter_on_thread(|| {
            let mut out = BTreeMap::new();
            for i in 0..n {
                let src = IpAddr::V4(lab::client_v4(u8::try_from(i % 16).unwrap()));
                let key = match lab::http_request(Some(src), dst, req, lab::REQUEST_TIMEOUT) {
                    Ok(name) => name,
                    Err(e) => format!("error: {e}"),
                };
                *out.entry(key).or_insert(0) += 1;
            }
            out
        })
        .unwrap()
}

fn www(path: &str) -> Request {
    Request::new("www.lab.test", path)
}

/// One HTTP/1.1 request to the admin API inside the balancer's namespace: (status, body).
fn admin(lab: &Lab, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    lab.ns("lb")
        .unwrap()
        .enter_on_thread(|| {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9180").expect("admin API");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "{method} {path} HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
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

/// The `/state` entry of an L7 backend (`site/UPSTREAM/ADDR:PORT`).
fn http_backend(lab: &Lab, name: &str) -> serde_json::Value {
    let (code, body) = admin(lab, "GET", "/state", "");
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    state["http"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["backends"].as_array().into_iter().flatten())
        .find(|b| b["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no http backend {name} in /state: {body}"))
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn http_routes_by_host_path_and_header_and_follows_health_and_drain() {
    testkit::require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (mut lab, _dir, _path) = lab_with("h7", &config("", 1, ""));

    // Host and path: "/" goes to both pods, /api is the 90/10 canary, X-Pod: b on another host
    // of the domain goes to pod-b, an unknown host to the default upstream.
    let root = spread(&lab, SITE, &www("/"), 20);
    assert_eq!(
        root.keys().collect::<Vec<_>>(),
        ["pod-a", "pod-b"],
        "{root:?}"
    );
    let api = spread(&lab, SITE, &www("/api/items"), 100);
    let (a, b) = (api.get("pod-a").copied(), api.get("pod-b").copied());
    assert_eq!(a.unwrap_or(0) + b.unwrap_or(0), 100, "{api:?}");
    assert!(a > b && b >= Some(1), "canary 90/10: {api:?}");
    let by_header = Request::new("x.lab.test", "/").header("X-Pod", "b");
    let header = spread(&lab, SITE, &by_header, 10);
    assert_eq!(header, BTreeMap::from([("pod-b".to_owned(), 10)]));
    let other = spread(&lab, SITE, &Request::new("other.example", "/"), 10);
    assert_eq!(
        other.values().sum::<usize>(),
        10,
        "default upstream: {other:?}"
    );
    assert!(!other.keys().any(|k| k.starts_with("error")), "{other:?}");

    // A stopped pod fails its check and leaves rotation; its only route answers 503.
    assert!(lab.stop_backend("pod-b"));
    assert!(
        wait_for(Duration::from_secs(10), || {
            spread(&lab, SITE, &www("/"), 6) == BTreeMap::from([("pod-a".to_owned(), 6)])
        }),
        "pod-b stayed in rotation:\n{}",
        lab.lb_log()
    );
    // The spread above can already be all pod-a while pod-b is still up: a refused connect is
    // retried on another backend. Its health check takes it down within fall x interval.
    let mut b = serde_json::Value::Null;
    assert!(
        wait_for(Duration::from_secs(10), || {
            b = http_backend(&lab, "site/pods/198.18.1.11:8080");
            b["health"]["state"] == "down"
        }),
        "pod-b's check never took it down: {b}"
    );
    // pod-b's key in upstream `pod-b` is checked on its own: once it too is down, 503.
    let mut all_down = BTreeMap::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            all_down = spread(&lab, SITE, &by_header, 3);
            all_down
                .keys()
                .all(|k| k.contains("503 Service Unavailable"))
        }),
        "every backend of the route down: {all_down:?}"
    );
    // Back: it takes requests again.
    lab.start_backend("pod-b").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || spread(&lab, SITE, &www("/"), 6)
            .contains_key("pod-b")),
        "pod-b did not come back:\n{}",
        lab.lb_log()
    );

    // An operator drains pod-b in `pods`: no new requests; `/state` shows the override.
    let (code, body) = admin(
        &lab,
        "POST",
        "/backends/site%2Fpods/198.18.1.11:8080/state",
        r#"{"state": "drain"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let drained = spread(&lab, SITE, &www("/"), 10);
    assert_eq!(drained, BTreeMap::from([("pod-a".to_owned(), 10)]));
    let b = http_backend(&lab, "site/pods/198.18.1.11:8080");
    assert_eq!(b["override"]["admin"], "drain", "{b}");
    assert_eq!(b["weight"], 0, "{b}");
    let (code, body) = admin(
        &lab,
        "DELETE",
        "/backends/site%2Fpods/198.18.1.11:8080/override",
        "",
    );
    assert_eq!(code, 200, "{body}");
    assert!(spread(&lab, SITE, &www("/"), 10).contains_key("pod-b"));

    // The listener's answers are counted on /metrics, by route and backend.
    let (_, metrics) = admin(&lab, "GET", "/metrics", "");
    let ok: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("lb_http_requests_total{")
                && l.contains("listener=\"site\"")
                && l.contains("class=\"2xx\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(ok >= 150.0, "{metrics}");
    assert!(
        metrics.contains("route=\"www.lab.test/api\",backend=\"198.18.1.10:8080\""),
        "{metrics}"
    );
    assert!(metrics.contains("lb_http_active_connections{listener=\"site\"}"));

    let exit = lab.stop_lb().unwrap();
    assert!(
        exit.output.contains("http listener stopped"),
        "{}",
        exit.output
    );
}

#[derive(Default)]
struct Traffic {
    requests: AtomicU64,
    errors: Mutex<Vec<String>>,
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn http_reloads_apply_and_keep_alive_clients_lose_no_request() {
    testkit::require_root();
    testkit::require_programs(&["wrk"]);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (mut lab, _dir, path) = lab_with("r7", &config("", 1, ""));
    let reload = |lab: &Lab, body: &str, ok: usize| {
        std::fs::write(&path, body).unwrap();
        assert!(lab.signal_lb("HUP"), "lb is not running");
        assert!(
            wait_for(Duration::from_secs(5), || reloads_logged(lab) >= ok),
            "reload {ok} not logged:\n{}",
            lab.lb_log()
        );
    };
    let rejected = |lab: &Lab| lab.lb_log().matches("reload rejected").count();

    // Without the route, new.lab.test falls to `pods`: both pods answer.
    assert_eq!(
        spread(&lab, SITE, &Request::new("new.lab.test", "/"), 10).len(),
        2
    );

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Arc::new(Traffic::default());
    let client = lab.client().unwrap();
    let site: SocketAddr = SITE.parse().unwrap();
    std::thread::scope(|scope| {
        // Four keep-alive connections opened before the first reload, each asking in a loop:
        // every request must be answered, on the same connection, through every reload.
        for i in 0..4u8 {
            let (stop, traffic) = (stop.clone(), traffic.clone());
            scope.spawn(move || {
                client.enter_on_thread(|| {
                    let src = Some(IpAddr::V4(lab::client_v4(i)));
                    let mut conn = match lab::KeepAlive::connect(src, site, lab::REQUEST_TIMEOUT) {
                        Ok(c) => c,
                        Err(e) => {
                            traffic.errors.lock().unwrap().push(format!("connect: {e}"));
                            return;
                        }
                    };
                    let req = www("/");
                    while !stop.load(Ordering::Relaxed) {
                        match conn.request(&req) {
                            Ok(_) => {
                                traffic.requests.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                traffic.errors.lock().unwrap().push(e.to_string());
                                return;
                            }
                        }
                    }
                })
            });
        }
        assert!(wait_for(Duration::from_secs(5), || traffic
            .requests
            .load(Ordering::Relaxed)
            >= 8));
        let before = traffic.requests.load(Ordering::Relaxed);
        // wrk's keep-alive load beside them, from before the first reload to after the last.
        let wrk = Wrk::start(&lab, SITE, 8, 600);
        // A hundred reloads, each a different table (pod-a's weight, the new route on and off),
        // a broken route every 25.
        let mut broken = 0;
        for i in 1..=100usize {
            if i % 25 == 0 {
                std::fs::write(&path, config("", 1, BROKEN_ROUTE)).unwrap();
                assert!(lab.signal_lb("HUP"));
                broken += 1;
                assert!(
                    wait_for(Duration::from_secs(5), || rejected(&lab) >= broken),
                    "broken route {broken} not rejected:\n{}",
                    lab.lb_log()
                );
            }
            let route = if i % 2 == 1 { NEW_ROUTE } else { "" };
            let weight = u32::try_from(1 + i % 3).unwrap();
            reload(&lab, &config("", weight, route), i);
        }
        let during = traffic.requests.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        let out = wrk.finish();
        let (wrk_requests, wrk_errors) = wrk_summary(&out);
        eprintln!("wrk during 100 reloads:\n{out}");
        assert!(
            wrk_requests >= 100 && wrk_errors.is_empty(),
            "wrk lost requests during the reloads ({wrk_requests} sent): {wrk_errors:?}\n{out}"
        );
        assert!(
            during >= 100,
            "too little traffic during the reloads: {during}"
        );
    });
    let errors = traffic.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "requests lost during reloads: {errors:?}"
    );

    // The last reload (100, even) has no new route; add it and a second listen address: the
    // route applies, the new socket serves, and a connection opened before still works.
    let mut kept = client
        .enter_on_thread(|| lab::KeepAlive::connect(None, site, lab::REQUEST_TIMEOUT))
        .unwrap()
        .unwrap();
    // Its socket was made in the client's namespace; it is used from here.
    assert!(kept.request(&www("/")).is_ok());
    let ok = reloads_logged(&lab);
    reload(
        &lab,
        &config(", \"198.18.255.1:8081\"", 1, NEW_ROUTE),
        ok + 1,
    );
    let new_host = Request::new("new.lab.test", "/");
    assert_eq!(
        spread(&lab, SITE, &new_host, 10),
        BTreeMap::from([("pod-b".to_owned(), 10)])
    );
    assert_eq!(
        spread(&lab, "198.18.255.1:8081", &new_host, 5),
        BTreeMap::from([("pod-b".to_owned(), 5)])
    );
    let again = kept.request(&www("/"));
    assert!(
        again.is_ok(),
        "a keep-alive connection did not survive: {again:?}"
    );

    // A broken route is rejected with its place in the file; the old routes keep serving.
    let before = rejected(&lab);
    std::fs::write(&path, config("", 1, BROKEN_ROUTE)).unwrap();
    assert!(lab.signal_lb("HUP"));
    assert!(wait_for(Duration::from_secs(5), || rejected(&lab) > before));
    assert!(lab.lb_log().contains("nope"), "{}", lab.lb_log());
    assert_eq!(
        spread(&lab, SITE, &new_host, 5),
        BTreeMap::from([("pod-b".to_owned(), 5)])
    );
    assert!(lab.lb_running());
}

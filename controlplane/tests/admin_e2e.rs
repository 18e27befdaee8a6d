//! The admin API cannot take the VIP down (root only): a running `lb run` in the namespace lab,
//! its open-file limit lowered so a hundred idle connections to the admin port would exhaust it,
//! keeps its backends up, its established and new VIP connections working, and answers the admin
//! API again once the idle clients are gone.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use testkit::lab::{self, Lab};

mod labkit;
use labkit::{lab_with, wait_for, HEAD};

/// Idle connections opened to the admin port: far more than the open-file headroom left to lb.
const IDLE: usize = 100;

/// Descriptors lb may open beyond those it holds when the test starts.
const HEADROOM: u64 = 24;

fn config() -> String {
    let head = HEAD.replace(
        "listen = \"127.0.0.1:9180\"",
        "listen = \"127.0.0.1:9180\"\nmax_connections = 8\nheader_timeout = \"3s\"",
    );
    assert_ne!(
        head, HEAD,
        "the lab head changed: the admin limits are not set"
    );
    format!(
        r#"{head}
[[services]]
name = "web"
vip = "198.18.0.100"
ports = ["80"]
protocol = "tcp"
[services.health_check]
kind = "tcp"
interval = "200ms"
timeout = "200ms"
rise = 1
fall = 1
jitter = "10ms"
[[services.pools]]
name = "pods"
mode = "fullnat"
snat = ["198.18.0.2"]
backends = [
  {{ addr = "198.18.1.10", port = 8080 }},
  {{ addr = "198.18.1.11", port = 8080 }},
]
"#
    )
}

/// The pid of `lb run` in the balancer's namespace.
fn lb_pid(lab: &Lab) -> i32 {
    let pids = testkit::netns::run("ip", &["netns", "pids", &lab.ns_name("lb")]).unwrap();
    pids.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"run"))
        })
        .expect("lb run in the balancer's namespace")
}

/// One request to the admin API inside the balancer's namespace: (status, body); status 0 when
/// no answer came.
fn admin_get(lab: &Lab, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    lab.ns("lb")
        .unwrap()
        .enter_on_thread(|| {
            let Ok(mut s) = TcpStream::connect("127.0.0.1:9180") else {
                return (0, String::new());
            };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
            );
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

/// Health states of every backend in `/state`.
fn health_states(state: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(state).unwrap_or_default();
    v["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["backends"].as_array().into_iter().flatten())
        .map(|b| b["health"]["state"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn new_connection(lab: &Lab) -> std::io::Result<String> {
    let web: SocketAddr = "198.18.0.100:80".parse().unwrap();
    lab.client()
        .unwrap()
        .enter_on_thread(|| {
            lab::http_get(
                Some(IpAddr::V4(lab::client_v4(3))),
                web,
                lab::REQUEST_TIMEOUT,
            )
        })
        .unwrap()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn idle_admin_clients_never_take_the_vip_down() {
    testkit::require_root();
    let (mut lab, _dir, _path) = lab_with("adm", &config());
    let web: SocketAddr = "198.18.0.100:80".parse().unwrap();
    // Both backends checked and up before anything else.
    assert!(
        wait_for(Duration::from_secs(10), || {
            let (status, body) = admin_get(&lab, "/state");
            status == 200 && health_states(&body) == ["up", "up"]
        }),
        "backends never came up:\n{}",
        lab.lb_log()
    );
    let mut kept = lab
        .client()
        .unwrap()
        .enter_on_thread(|| {
            lab::KeepAlive::connect(
                Some(IpAddr::V4(lab::client_v4(0))),
                web,
                lab::REQUEST_TIMEOUT,
            )
        })
        .unwrap()
        .expect("keep-alive connection to the web service");
    let first = kept.get().expect("first request");

    // Leave lb only a few descriptors more than it holds now.
    let pid = lb_pid(&lab);
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let limit = open + HEADROOM;
    rustix::process::prlimit(
        rustix::process::Pid::from_raw(pid),
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .expect("prlimit");

    // A hundred clients connect to the admin port and say nothing.
    let idle: Vec<TcpStream> = lab
        .ns("lb")
        .unwrap()
        .enter_on_thread(|| {
            (0..IDLE)
                .filter_map(|_| TcpStream::connect("127.0.0.1:9180").ok())
                .collect()
        })
        .unwrap();
    assert_eq!(idle.len(), IDLE, "the kernel's backlog took every client");

    // Many probe intervals pass while they sit there: the VIP keeps working.
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(
            kept.get().expect("request on the kept connection"),
            first,
            "the kept connection changed backend"
        );
        let answer = new_connection(&lab);
        assert!(
            answer.is_ok(),
            "new connection {i} failed: {answer:?}\n{}",
            lab.lb_log()
        );
    }
    drop(idle);

    // The idle clients are gone: the API answers, and no backend was ever taken down.
    assert!(
        wait_for(Duration::from_secs(15), || admin_get(&lab, "/healthz").0
            == 200),
        "the admin API does not answer after the idle clients left:\n{}",
        lab.lb_log()
    );
    let (status, state) = admin_get(&lab, "/state");
    assert_eq!(status, 200, "{state}");
    assert_eq!(health_states(&state), ["up", "up"], "{state}");
    let log = lab.lb_log();
    assert!(
        !log.contains("backend down"),
        "a backend was taken down:\n{log}"
    );
    let (_, metrics) = admin_get(&lab, "/metrics");
    assert!(
        metrics.contains("lb_admin_connections_accepted_total"),
        "{metrics}"
    );
    assert_eq!(kept.get().expect("request after the test"), first);
    assert!(lab.lb_running(), "lb exited during the test:\n{log}");
}

//! Issue 10 defect 7 in the namespace lab (root only): a random-source UDP flood to one service
//! of a running `lb run` must not block new TCP connections to another service, nor break an
//! established one, and `/state` must count occupancy in keys.
//!
//! The balancer's tables are small (1024 keys a worker) so that a bounded flood (20,000
//! datagrams, each a new flow, from 198.19.128.0/17 only) is many times what they hold. The echo
//! backends answer every datagram, so each flood flow is also "replied". Before the fix every
//! flood flow was a confirmed, unevictable UDP flow for `udp` (30 s): the tables filled and every
//! new connection to the web VIP was dropped as `conntrack-full`.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use testkit::lab::{self, flood, Lab};

mod labkit;
use labkit::{lab_with, HEAD};

const WEB: &str = "198.18.0.100:80";
const ECHO: &str = "198.18.0.100:7";
/// Keys per worker's table: small, so the flood overfills it many times.
const CAPACITY: usize = 1024;
const FLOOD: usize = 20_000;

fn config() -> String {
    format!(
        r#"{HEAD}
[conntrack]
capacity = {CAPACITY}

[conntrack.timeouts]
udp = "30s"

[[services]]
name = "web"
vip = "198.18.0.100"
ports = ["80"]
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "fullnat"
snat = ["198.18.0.2"]
backends = [{{ addr = "198.18.1.10", port = 8080 }}, {{ addr = "198.18.1.11", port = 8080 }}]

[[services]]
name = "echo"
vip = "198.18.0.100"
ports = ["7"]
protocol = "udp"
[[services.pools]]
name = "pods"
mode = "nat"
backends = [{{ addr = "198.18.1.10", port = 7 }}, {{ addr = "198.18.1.11", port = 7 }}]
"#
    )
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn udp_flood_does_not_block_new_tcp_connections_to_another_service() {
    testkit::require_root();
    let (lab, _dir, _path) = lab_with("uf", &config());
    let web: SocketAddr = WEB.parse().unwrap();
    let echo: SocketAddrV4 = ECHO.parse().unwrap();
    let client = lab.client().unwrap();

    // A keep-alive connection from before the flood, and the echo service answering.
    let mut keep = client
        .enter_on_thread(|| {
            lab::KeepAlive::connect(
                Some(IpAddr::V4(lab::client_v4(0))),
                web,
                lab::REQUEST_TIMEOUT,
            )
        })
        .unwrap()
        .expect("keep-alive connection to the web VIP");
    let first = client
        .enter_on_thread(|| keep.get())
        .unwrap()
        .expect("first answer");
    let echoed = client
        .enter_on_thread(|| lab::udp_echo(None, SocketAddr::V4(echo), lab::REQUEST_TIMEOUT))
        .unwrap();
    assert!(echoed.is_ok(), "echo service before the flood: {echoed:?}");

    // The flood, in twenty rounds of 1,000 datagrams (bursts of 200, about 10,000 a second), with
    // a new connection and a request on the keep-alive connection after each round: every
    // request meets tables the flood has just filled.
    let (sent, during) = client
        .enter_on_thread(|| {
            let mut sent = 0;
            let mut out = Probe::default();
            for round in 0..20u8 {
                let r = flood::udp_flood(
                    echo,
                    u32::from(round) * 1000,
                    FLOOD / 20,
                    200,
                    Duration::from_millis(20),
                )
                .expect("raw socket in the client namespace");
                sent += r.sent;
                let src = IpAddr::V4(lab::client_v4(1 + round % 15));
                out.record(
                    "new connection",
                    lab::http_get(Some(src), web, lab::REQUEST_TIMEOUT),
                );
                out.keep_alive(keep.get(), &first);
            }
            (sent, out)
        })
        .unwrap();
    eprintln!("flood: {sent} datagrams sent; during: {during:?}");
    assert!(sent >= FLOOD * 9 / 10, "the flood was sent: {sent}");

    // Right after the flood: twenty new connections, and the keep-alive connection again.
    let after = client
        .enter_on_thread(|| {
            let mut out = Probe::default();
            for i in 0..20u8 {
                out.record(
                    "new connection",
                    lab::http_get(
                        Some(IpAddr::V4(lab::client_v4(i))),
                        web,
                        lab::REQUEST_TIMEOUT,
                    ),
                );
            }
            out.keep_alive(keep.get(), &first);
            out
        })
        .unwrap();
    eprintln!("after: {after:?}");

    let metrics = admin(&lab, "/metrics");
    let drops = |reason: &str| sum(&metrics, "lb_drops_total", &format!("reason=\"{reason}\""));
    eprintln!(
        "drops: conntrack-full {}, embryonic-budget {}, udp-budget {}",
        drops("conntrack-full"),
        drops("embryonic-budget"),
        drops("udp-budget")
    );
    assert!(
        during.failures.is_empty(),
        "during the flood: {:?}",
        during.failures
    );
    assert!(
        after.failures.is_empty(),
        "right after the flood: {:?}",
        after.failures
    );
    // The flood really went through the tables: most of its datagrams made a new flow, many
    // times what the two workers' tables hold.
    let flood_flows = sum(&metrics, "lb_service_new_flows_total", "service=\"echo\"");
    assert!(
        flood_flows >= (FLOOD / 2) as f64 && flood_flows >= (20 * CAPACITY) as f64 / 2.0,
        "the flood made only {flood_flows} flows:\n{metrics}"
    );

    // Occupancy counts keys: every flow here is nat or fullnat (two keys).
    let state: serde_json::Value = serde_json::from_str(&admin(&lab, "/state")).unwrap();
    let ct = &state["conntrack"];
    assert_eq!(ct["capacity"], CAPACITY);
    for w in ct["workers"].as_array().unwrap() {
        let (flows, keys) = (w["flows"].as_u64().unwrap(), w["keys"].as_u64().unwrap());
        assert_eq!(keys, 2 * flows, "{w}");
        let occupancy = w["occupancy"].as_f64().unwrap();
        assert!(
            (occupancy - keys as f64 / CAPACITY as f64).abs() < 1e-9,
            "{w}"
        );
    }
    let mut lab = lab;
    assert!(lab.lb_running(), "lb exited during the test");
}

/// What the client saw: successful requests and every failure, with its cause.
#[derive(Debug, Default)]
struct Probe {
    ok: usize,
    failures: Vec<String>,
}

impl Probe {
    fn record(&mut self, what: &str, r: std::io::Result<String>) {
        match r {
            Ok(_) => self.ok += 1,
            Err(e) => self.failures.push(format!("{what}: {e}")),
        }
    }

    fn keep_alive(&mut self, r: std::io::Result<String>, first: &str) {
        match r {
            Ok(name) if name == first => {}
            Ok(name) => self.failures.push(format!(
                "keep-alive connection moved from {first} to {name}"
            )),
            Err(e) => self.failures.push(format!("keep-alive connection: {e}")),
        }
    }
}

/// The sum of the samples of `metric` whose labels contain `label`.
fn sum(metrics: &str, metric: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The body of a GET to the admin API inside the balancer's namespace.
fn admin(lab: &Lab, path: &str) -> String {
    use std::io::{Read, Write};
    lab.ns("lb")
        .unwrap()
        .enter_on_thread(|| {
            let mut s = std::net::TcpStream::connect("127.0.0.1:9180").expect("admin API");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
            out.split_once("\r\n\r\n")
                .map_or("", |(_, b)| b)
                .to_string()
        })
        .unwrap()
}

//! The control plane of a running `lb run` in the namespace lab (root only): established TCP
//! connections and a UDP flow keep working, on the same backend, through a hundred reloads and
//! broken files in between; a killed backend is ejected by health checks and comes back; a
//! backend drained through the admin API finishes its connections and takes no new ones.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::lab::{self, Lab};

mod labkit;
use labkit::{lab_with, reloads_logged, wait_for, HEAD};

/// One lab at a time: the tests share the machine's two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The lab's config; `variant` changes weights, adds and removes a backend and a service, so each
/// reload really swaps a different table.
fn config(variant: usize) -> String {
    config_with(variant, "")
}

/// [`config`] with extra keys for the web service (health checks).
fn config_with(variant: usize, web_extra: &str) -> String {
    let weight_a = 1 + variant % 3;
    // Every fourth table adds a third backend to the web service (then the next removes it): the
    // established connections on the other two must not notice.
    let third = if variant % 4 == 2 {
        "\n  { addr = \"198.18.1.12\", port = 8080 },"
    } else {
        ""
    };
    let extra = if variant % 2 == 1 {
        r#"
[[services]]
name = "extra"
vip = "198.18.0.103"
ports = ["81"]
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "fullnat"
snat = ["198.18.0.2"]
backends = [{ addr = "198.18.1.10", port = 8080 }]
"#
    } else {
        ""
    };
    format!(
        r#"{HEAD}
[[services]]
name = "web"
vip = "198.18.0.100"
ports = ["80"]
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "fullnat"
snat = ["198.18.0.2"]
backends = [
  {{ addr = "198.18.1.10", port = 8080, weight = {weight_a} }},
  {{ addr = "198.18.1.11", port = 8080 }},{third}
]
{web_extra}

[[services]]
name = "echo"
vip = "198.18.0.100"
ports = ["7"]
protocol = "udp"
[[services.pools]]
name = "pods"
mode = "nat"
backends = [{{ addr = "198.18.1.10", port = 7 }}, {{ addr = "198.18.1.11", port = 7 }}]
{extra}"#
    )
}

fn rejections_logged(lab: &Lab) -> usize {
    lab.lb_log().matches("reload rejected").count()
}

#[derive(Default)]
struct Traffic {
    tcp_requests: AtomicU64,
    tcp_errors: Mutex<Vec<String>>,
    udp_sent: AtomicU64,
    udp_answered: AtomicU64,
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn a_hundred_reloads_under_traffic_lose_no_connection_and_no_packet() {
    testkit::require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (mut lab, _dir, path) = lab_with("rl", &config(0));

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = Arc::new(Traffic::default());
    let web: SocketAddr = "198.18.0.100:80".parse().unwrap();
    let echo: SocketAddr = "198.18.0.100:7".parse().unwrap();
    let client = lab.client().unwrap();
    let during = std::thread::scope(|scope| {
        let mut threads = Vec::new();
        // Six keep-alive connections from different client addresses (so both backends and both
        // workers carry some), each asking in a loop; every answer must name its first backend.
        for i in 0..6u8 {
            let (stop, traffic) = (stop.clone(), traffic.clone());
            threads.push(scope.spawn(move || {
                client
                    .enter_on_thread(|| {
                        let src = Some(IpAddr::V4(lab::client_v4(i)));
                        let mut conn = match lab::KeepAlive::connect(src, web, lab::REQUEST_TIMEOUT)
                        {
                            Ok(c) => c,
                            Err(e) => {
                                traffic
                                    .tcp_errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("connect {i}: {e}"));
                                return;
                            }
                        };
                        let mut first: Option<String> = None;
                        while !stop.load(Ordering::Relaxed) {
                            match conn.get() {
                                Ok(name) => {
                                    traffic.tcp_requests.fetch_add(1, Ordering::Relaxed);
                                    let f = first.get_or_insert_with(|| name.clone());
                                    if *f != name {
                                        traffic.tcp_errors.lock().unwrap().push(format!(
                                            "connection {i} moved from {f} to {name}"
                                        ));
                                    }
                                }
                                Err(e) => {
                                    traffic
                                        .tcp_errors
                                        .lock()
                                        .unwrap()
                                        .push(format!("connection {i}: {e}"));
                                    return;
                                }
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    })
                    .unwrap();
            }));
        }
        // One UDP flow (a fixed source port): each datagram waits for its echo.
        {
            let (stop, traffic) = (stop.clone(), traffic.clone());
            threads.push(scope.spawn(move || {
                client
                    .enter_on_thread(|| {
                        let sock = UdpSocket::bind((lab::client_v4(9), 0)).unwrap();
                        sock.connect(echo).unwrap();
                        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                        let mut buf = [0u8; 1500];
                        let mut seq = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            seq += 1;
                            let msg = format!("seq {seq}");
                            if sock.send(msg.as_bytes()).is_err() {
                                continue;
                            }
                            traffic.udp_sent.fetch_add(1, Ordering::Relaxed);
                            if sock.recv(&mut buf).is_ok() {
                                traffic.udp_answered.fetch_add(1, Ordering::Relaxed);
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    })
                    .unwrap();
            }));
        }

        // Let the flows establish, then reload a hundred times, each time a different table, with
        // a broken file every 25 reloads.
        assert!(wait_for(Duration::from_secs(5), || traffic
            .tcp_requests
            .load(Ordering::Relaxed)
            >= 12));
        let start_requests = traffic.tcp_requests.load(Ordering::Relaxed);
        let mut rejected = 0;
        for i in 1..=100 {
            if i % 25 == 0 {
                std::fs::write(&path, "[dataplane\nbroken = \n").unwrap();
                assert!(lab.signal_lb("HUP"));
                rejected += 1;
                assert!(
                    wait_for(Duration::from_secs(5), || rejections_logged(&lab)
                        >= rejected),
                    "broken file {rejected} not rejected:\n{}",
                    lab.lb_log()
                );
            }
            std::fs::write(&path, config(i)).unwrap();
            assert!(lab.signal_lb("HUP"), "lb is not running");
            assert!(
                wait_for(Duration::from_secs(5), || reloads_logged(&lab) >= i),
                "reload {i} not logged:\n{}",
                lab.lb_log()
            );
        }
        // No signal at all: writing the file is enough (it is watched). The writes above may have
        // caused watcher reloads of their own (of the same content); let those settle first.
        std::thread::sleep(Duration::from_millis(600));
        let before = reloads_logged(&lab);
        std::fs::write(&path, config(101)).unwrap();
        assert!(
            wait_for(Duration::from_secs(5), || reloads_logged(&lab) > before),
            "a changed file was not reloaded:\n{}",
            lab.lb_log()
        );
        let during = traffic.tcp_requests.load(Ordering::Relaxed) - start_requests;
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        during
    });

    let errors = traffic.tcp_errors.lock().unwrap().clone();
    let (sent, answered) = (
        traffic.udp_sent.load(Ordering::Relaxed),
        traffic.udp_answered.load(Ordering::Relaxed),
    );
    let log = lab.lb_log();
    eprintln!(
        "reloads: {} ok, {} rejected; tcp requests during reloads: {during}; udp {answered}/{sent}",
        reloads_logged(&lab),
        rejections_logged(&lab)
    );
    assert!(errors.is_empty(), "broken connections: {errors:#?}");
    assert_eq!(answered, sent, "UDP datagrams of an established flow lost");
    assert!(
        during >= 60,
        "too little traffic during the reloads: {during}"
    );
    assert!(sent >= 30, "too little UDP traffic: {sent}");
    // Each broken file was rejected (the watcher may have tried one a second time), and every
    // accepted reload made exactly one new generation.
    assert!(rejections_logged(&lab) >= 4, "{log}");
    let ok = reloads_logged(&lab);
    assert!(ok >= 101, "{log}");
    assert!(log.contains(&format!("generation={}", ok + 1)), "{log}");
    assert!(lab.lb_running(), "lb exited during the test");
}

/// New connections from rotating client addresses; the names that answered (failures count as
/// "(failed)").
fn spread(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    let web: SocketAddr = "198.18.0.100:80".parse().unwrap();
    lab.client()
        .unwrap()
        .enter_on_thread(|| {
            let mut out = BTreeMap::new();
            for i in 0..n {
                let src = Some(IpAddr::V4(lab::client_v4((i % 16) as u8)));
                let name = lab::http_get(src, web, Duration::from_millis(500))
                    .unwrap_or_else(|_| "(failed)".into());
                *out.entry(name).or_insert(0) += 1;
            }
            out
        })
        .unwrap()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn a_killed_backend_is_ejected_within_fall_intervals_and_comes_back() {
    testkit::require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // interval 200 ms, fall 2, rise 2: down within about 0.4 s, back within about 0.4 s.
    let check = "[services.health_check]\nkind = \"http\"\npath = \"/\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\njitter = \"20ms\"\n";
    let (mut lab, _dir, _path) = lab_with("hc", &config_with(0, check));
    let both = spread(&lab, 24);
    assert_eq!(
        both.keys().collect::<Vec<_>>(),
        ["pod-a", "pod-b"],
        "{both:?}"
    );

    // The swap that takes it out is logged after the transition.
    let rebuilt = |lab: &Lab| {
        lab.lb_log()
            .matches("rebuilt after a health change")
            .count()
    };
    let before = rebuilt(&lab);
    assert!(lab.stop_backend("pod-a"));
    let killed = Instant::now();
    assert!(
        wait_for(Duration::from_secs(3), || lab
            .lb_log()
            .contains("backend down")
            && rebuilt(&lab) > before),
        "pod-a was not ejected:\n{}",
        lab.lb_log()
    );
    let ejected_after = killed.elapsed();
    // fall x interval is 0.4 s; allow for jitter, the probe timeout and a loaded machine.
    assert!(
        ejected_after < Duration::from_millis(1500),
        "ejected after {ejected_after:?}"
    );
    let log = lab.lb_log();
    assert!(log.contains("web/198.18.1.10:8080"), "{log}");
    // Every new connection now goes to pod-b (none fails: nothing is sent to the dead pod).
    let after = spread(&lab, 24);
    assert_eq!(after.get("pod-b"), Some(&24), "{after:?}\n{}", lab.lb_log());

    let before = rebuilt(&lab);
    lab.start_backend("pod-a").unwrap();
    let restarted = Instant::now();
    assert!(
        wait_for(Duration::from_secs(3), || rebuilt(&lab) > before),
        "pod-a did not come back:\n{}",
        lab.lb_log()
    );
    let back_after = restarted.elapsed();
    assert!(
        back_after < Duration::from_millis(1500),
        "back after {back_after:?}"
    );
    let again = spread(&lab, 24);
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        ["pod-a", "pod-b"],
        "{again:?}"
    );
    eprintln!("ejected after {ejected_after:?}, back after {back_after:?}");
    assert!(lab.lb_running(), "lb exited during the test");
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

/// The value of the first sample of `metric` whose labels contain every one of `labels`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(metric)?;
        if !(rest.starts_with('{') || rest.starts_with(' '))
            || !labels.iter().all(|x| rest.contains(x))
        {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn a_drained_backend_finishes_its_connections_and_takes_no_new_ones() {
    testkit::require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (mut lab, _dir, _path) = lab_with("dr", &config(0));
    let web: SocketAddr = "198.18.0.100:80".parse().unwrap();
    let (code, _) = admin(&lab, "GET", "/readyz", "");
    assert_eq!(code, 200);

    // A keep-alive connection that landed on pod-a (a socket keeps its namespace, so it can be
    // used from this thread afterwards).
    let mut kept = lab
        .client()
        .unwrap()
        .enter_on_thread(|| {
            (0..16u8).find_map(|i| {
                let src = Some(IpAddr::V4(lab::client_v4(i)));
                let mut c = lab::KeepAlive::connect(src, web, lab::REQUEST_TIMEOUT).ok()?;
                (c.get().ok()? == "pod-a").then_some(c)
            })
        })
        .unwrap()
        .expect("no connection reached pod-a");

    let (code, body) = admin(
        &lab,
        "POST",
        "/backends/web/198.18.1.10:8080/state",
        r#"{"state":"drain"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("generation"), "{body}");

    // New connections avoid the drained backend...
    let after = spread(&lab, 24);
    assert_eq!(after.get("pod-b"), Some(&24), "{after:?}");
    // ...while the existing one keeps it to completion.
    for _ in 0..20 {
        assert_eq!(
            kept.get()
                .expect("request on the drained backend's connection"),
            "pod-a"
        );
    }
    drop(kept);

    let (_, state) = admin(&lab, "GET", "/state", "");
    assert!(state.contains("\"drain\""), "{state}");
    let (_, metrics) = admin(&lab, "GET", "/metrics", "");
    let weight = sample(
        &metrics,
        "lb_backend_weight",
        &["backend=\"198.18.1.10:8080\""],
    );
    assert_eq!(weight, Some(0.0), "{metrics}");
    let new_b: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("lb_backend_new_flows_total") && l.contains("198.18.1.11:8080"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(new_b >= 24.0, "pod-b new flows {new_b}:\n{metrics}");

    // Clearing the override brings it back for new connections.
    let (code, body) = admin(
        &lab,
        "DELETE",
        "/backends/web/198.18.1.10:8080/override",
        "",
    );
    assert_eq!(code, 200, "{body}");
    let again = spread(&lab, 24);
    assert!(again.contains_key("pod-a"), "{again:?}");
    assert!(!again.contains_key("(failed)"), "{again:?}");

    let (code, body) = admin(
        &lab,
        "POST",
        "/backends/web/198.18.9.9:1/weight",
        r#"{"weight":2}"#,
    );
    assert_eq!(code, 404, "{body}");
    assert!(lab.lb_running(), "lb exited during the test");
}

/// Frames received by the workers, summed (from `/metrics`).
fn worker_rx(lab: &Lab) -> f64 {
    let (status, metrics) = admin(lab, "GET", "/metrics", "");
    assert_eq!(status, 200, "{metrics}");
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let name = l.split(['{', ' ']).next()?;
            if !name.ends_with("rx_packets_total") {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// HTTP requests to `dst` from the client; the names that answered, failures as "(failed)".
fn answers_from(lab: &Lab, dst: &str, n: usize, timeout: Duration) -> BTreeMap<String, usize> {
    let dst: SocketAddr = dst.parse().unwrap();
    lab.client()
        .unwrap()
        .enter_on_thread(|| {
            let mut out = BTreeMap::new();
            for i in 0..n {
                let src = Some(IpAddr::V4(lab::client_v4((i % 16) as u8)));
                let name = lab::http_get(src, dst, timeout).unwrap_or_else(|_| "(failed)".into());
                *out.entry(name).or_insert(0) += 1;
            }
            out
        })
        .unwrap()
}

/// Defect 2 of issue 9, on a real AF_XDP port: the XDP program redirects to the workers only
/// frames to the addresses in its map. A VIP added by a reload is balanced (its address entered
/// the map before the table was published); removed by a reload, its frames go to the kernel
/// again (the address left the map once the old table was released) and no worker sees them.
/// Before the fix the map was written once at start and the added VIP never answered.
#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn a_vip_added_by_reload_is_redirected_by_xdp_and_leaves_the_map_when_removed() {
    testkit::require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let on_xdp = |variant: usize| {
        config(variant).replace(
            "port = \"tap\"",
            // A removed VIP leaves the map once no table serves it: at once with "reset"
            // (with the default "drain" it stays for its tracked flows until drain_timeout).
            "port = \"af_xdp\"\nxdp_mode = \"generic\"\non_remove = \"reset\"",
        )
    };
    // Variant 0 has no "extra" service; variant 1 adds it at 198.18.0.103:81 (to pod-a).
    let (mut lab, _dir, path) = lab_with("xdprl", &on_xdp(0));
    let extra = "198.18.0.103:81";
    let web = answers_from(&lab, "198.18.0.100:80", 8, lab::REQUEST_TIMEOUT);
    assert!(!web.contains_key("(failed)"), "{web:?}");

    std::fs::write(&path, on_xdp(1)).unwrap();
    let (status, body) = admin(&lab, "POST", "/reload", "");
    assert_eq!(status, 200, "{body}");
    let got = answers_from(&lab, extra, 8, lab::REQUEST_TIMEOUT);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["pod-a"],
        "the added VIP is not balanced: {got:?}\n{}",
        lab.lb_log()
    );

    std::fs::write(&path, on_xdp(0)).unwrap();
    let (status, body) = admin(&lab, "POST", "/reload", "");
    assert_eq!(status, 200, "{body}");
    // The control thread releases the old table within a few ticks (50 ms each).
    std::thread::sleep(Duration::from_millis(500));
    let before = worker_rx(&lab);
    let attempts = 6;
    let got = answers_from(&lab, extra, attempts, Duration::from_millis(300));
    assert_eq!(got.get("(failed)"), Some(&attempts), "{got:?}");
    let reached = worker_rx(&lab) - before;
    assert!(
        reached < attempts as f64,
        "{reached} frames to the removed VIP still reached the workers (XDP map not shrunk)"
    );
    // The VIP that stayed still works.
    let web = answers_from(&lab, "198.18.0.100:80", 8, lab::REQUEST_TIMEOUT);
    assert!(!web.contains_key("(failed)"), "{web:?}");
    assert!(lab.lb_running(), "lb exited during the test");
}

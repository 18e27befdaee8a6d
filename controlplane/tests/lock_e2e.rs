//! One `lb run` per interface (root only): a second `lb run` with the same config in the lab
//! exits 1 naming the interface and the first one's pid, and the first keeps serving: a
//! keep-alive connection stays on its backend and new connections work.

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::lab::{self, Lab};

mod labkit;
use labkit::{lab_with, HEAD};

const SERVICE: &str = r#"
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
  { addr = "198.18.1.10", port = 8080 },
  { addr = "198.18.1.11", port = 8080 },
]
"#;

/// The pid of the `lb run` the lab started in the balancer's namespace.
fn lb_pid(lab: &Lab) -> u32 {
    let pids = testkit::netns::run("ip", &["netns", "pids", &lab.ns_name("lb")]).unwrap();
    pids.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"run"))
        })
        .expect("lb run in the balancer's namespace")
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn a_second_lb_run_on_the_same_interface_exits_and_the_first_keeps_serving() {
    testkit::require_root();
    let (mut lab, dir, path) = lab_with("lck", &format!("{HEAD}{SERVICE}"));
    let web: SocketAddr = "198.18.0.100:80".parse().unwrap();
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
    let holder = lb_pid(&lab);

    // The same config, the same interface, the same namespace.
    let log = dir.0.join("second.log");
    let mut second = Command::new("ip")
        .args(["netns", "exec", &lab.ns_name("lb")])
        .arg(env!("CARGO_BIN_EXE_lb"))
        .args(["run", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            // Still running: the bug. Stop it before asserting, so nothing is left behind.
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "the second lb run did not exit 1:\n{err}"
    );
    assert!(
        err.contains(&format!(
            "interface lb0 is already served by another lb run (pid {holder})"
        )),
        "{err}"
    );

    // The first never noticed.
    for _ in 0..5 {
        assert_eq!(kept.get().expect("request on the kept connection"), first);
    }
    for i in 0..5u8 {
        let answer = lab
            .client()
            .unwrap()
            .enter_on_thread(|| {
                lab::http_get(
                    Some(IpAddr::V4(lab::client_v4(i))),
                    web,
                    lab::REQUEST_TIMEOUT,
                )
            })
            .unwrap();
        assert!(
            answer.is_ok(),
            "new connection failed: {answer:?}\n{}",
            lab.lb_log()
        );
    }
    assert!(
        lab.lb_running(),
        "the first lb run exited:\n{}",
        lab.lb_log()
    );
}

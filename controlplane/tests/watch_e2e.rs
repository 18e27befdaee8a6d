//! A slow writer of `lb.toml` under a running `lb run` in the namespace lab (root only): the
//! half-written file (valid TOML without `[[services]]`) is never served, so a keep-alive
//! connection to the service survives, and the completed file is applied.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use testkit::lab;

mod labkit;
use labkit::{lab_with, reloads_logged, wait_for, HEAD};

/// The web service; `weight` makes each written file differ from the last.
fn services(weight: u32) -> String {
    format!(
        r#"
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
  {{ addr = "198.18.1.10", port = 8080, weight = {weight} }},
  {{ addr = "198.18.1.11", port = 8080 }},
]
"#
    )
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn a_slow_writer_never_serves_a_half_written_file() {
    testkit::require_root();
    let (mut lab, _dir, path) = lab_with("sw", &format!("{HEAD}{}", services(1)));
    let web: SocketAddr = "198.18.0.100:80".parse().unwrap();
    let mut kept = lab
        .client()
        .unwrap()
        .enter_on_thread(|| {
            let src = Some(IpAddr::V4(lab::client_v4(0)));
            lab::KeepAlive::connect(src, web, lab::REQUEST_TIMEOUT)
        })
        .unwrap()
        .expect("keep-alive connection to the web service");
    let first = kept.get().expect("first request");
    let before = reloads_logged(&lab);

    // The writer truncates the file, writes the part without services and pauses.
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(HEAD.as_bytes()).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        reloads_logged(&lab),
        before,
        "the half-written file was applied:\n{}",
        lab.lb_log()
    );
    for _ in 0..5 {
        assert_eq!(
            kept.get().expect("request during the pause"),
            first,
            "the connection changed backend"
        );
    }

    // The writer finishes and closes: the complete file is applied once.
    f.write_all(services(2).as_bytes()).unwrap();
    drop(f);
    assert!(
        wait_for(Duration::from_secs(2), || reloads_logged(&lab) > before),
        "the completed file was not applied:\n{}",
        lab.lb_log()
    );
    for _ in 0..5 {
        assert_eq!(kept.get().expect("request after the reload"), first);
    }
    assert!(lab.lb_running(), "lb exited during the test");
}

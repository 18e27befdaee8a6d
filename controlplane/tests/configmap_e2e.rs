//! A config mounted as a Kubernetes ConfigMap under a running `lb run` in the namespace lab (root
//! only): `lb.toml -> ..data/lb.toml`, `..data -> ..<version>`, and an update writes a new version
//! directory and renames a new `..data` link over the old one. Each swap is applied (the second
//! shows the watcher follows the new target, not the first one's file), and a keep-alive
//! connection to the service that stays keeps its backend throughout.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::lab::{self, Lab, LabOptions};

mod labkit;
use labkit::{reloads_logged, wait_for, TempDir, HEAD};

/// The web service, and with `echo` a second TCP service on port 81 of the same backends.
fn config(echo: bool, weight: u32) -> String {
    let service = |name: &str, port: u16, weight: u32| {
        format!(
            r#"
[[services]]
name = "{name}"
vip = "198.18.0.100"
ports = ["{port}"]
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
    };
    let mut s = format!("{HEAD}{}", service("web", 80, 1));
    if echo {
        s.push_str(&service("web81", 81, weight));
    }
    s
}

/// Publishes `body` as the ConfigMap's version `n`, as the kubelet does: a new directory, a new
/// `..data` link renamed over the old one.
fn publish(dir: &Path, n: u32, body: &str) {
    let version = format!("..2026_12_05_{n:02}");
    std::fs::create_dir(dir.join(&version)).unwrap();
    std::fs::write(dir.join(&version).join("lb.toml"), body).unwrap();
    let _ = std::fs::remove_file(dir.join("..data_tmp"));
    symlink(&version, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

fn get(lab: &Lab, dst: &str) -> std::io::Result<String> {
    let dst: SocketAddr = dst.parse().unwrap();
    lab.client()
        .unwrap()
        .enter_on_thread(|| {
            lab::http_get(
                Some(IpAddr::V4(lab::client_v4(1))),
                dst,
                lab::REQUEST_TIMEOUT,
            )
        })
        .unwrap()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn a_configmap_update_is_applied_and_keeps_connections() {
    testkit::require_root();
    let dir = TempDir(std::env::temp_dir().join(format!("lbe2e-cm-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    publish(&dir.0, 1, &config(false, 1));
    symlink("..data/lb.toml", dir.0.join("lb.toml")).unwrap();
    let path: PathBuf = dir.0.join("lb.toml");
    let mut lab = Lab::up(&LabOptions {
        prefix: "lbtcm".into(),
        lb_bin: PathBuf::from(env!("CARGO_BIN_EXE_lb")),
        config: path,
    })
    .unwrap();
    lab.start_lb(Duration::from_secs(15)).unwrap();

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
    assert!(
        get(&lab, "198.18.0.100:81").is_err(),
        "port 81 served before the update"
    );

    // Version 2 adds the service on port 81.
    let before = reloads_logged(&lab);
    publish(&dir.0, 2, &config(true, 1));
    assert!(
        wait_for(Duration::from_secs(3), || reloads_logged(&lab) > before),
        "the ConfigMap update was not applied:\n{}",
        lab.lb_log()
    );
    let answer = get(&lab, "198.18.0.100:81").expect("the added service answers");
    assert!(answer.starts_with("pod-"), "{answer}");
    assert_eq!(kept.get().expect("request after the update"), first);

    // Version 3 changes a weight: the watcher follows version 2's file, then version 3's.
    let before = reloads_logged(&lab);
    publish(&dir.0, 3, &config(true, 3));
    assert!(
        wait_for(Duration::from_secs(3), || reloads_logged(&lab) > before),
        "the second ConfigMap update was not applied:\n{}",
        lab.lb_log()
    );
    assert_eq!(kept.get().expect("request after the second update"), first);
    assert!(lab.lb_running(), "lb exited during the test");
}

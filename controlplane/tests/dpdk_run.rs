//! `lb run` with `port = "dpdk"` (root, `--features dpdk`, dpdk-testpmd): lb serves a memif
//! device it creates, testpmd on the other end sends UDP to a fullnat VIP, lb forwards it, and
//! SIGTERM ends lb cleanly: exit status 0, the forwarded frames in its final counters, and no
//! EAL runtime directory left behind.

#[cfg(not(feature = "dpdk"))]
#[test]
fn lb_run_with_dpdk_needs_the_feature() {
    eprintln!(
        "skipped: `lb run` with port = \"dpdk\" is tested by `cargo test -p controlplane \
         --features dpdk --test dpdk_run -- --include-ignored` (root, libdpdk-dev, dpdk-testpmd)"
    );
}

#[cfg(feature = "dpdk")]
#[test]
#[ignore = "needs root, --features dpdk and dpdk-testpmd"]
fn lb_run_forwards_over_a_dpdk_memif_and_stops_cleanly() {
    let pid = std::process::id();
    let socket = format!("/lbd-run-{pid}.sock");
    // testpmd's txonly frames go from 198.18.0.1 to 198.18.0.2, UDP 9 -> 9: the VIP here.
    let config = format!(
        r#"
[dataplane]
port = "dpdk"
interface = "lbd{pid}"
workers = 1
idle = "poll"
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.250"]
gateway_mac = "02:00:00:00:00:fe"

[dataplane.dpdk]
device = "net_memif0"
vdev = "role=server,socket={socket},socket-abstract=yes"
{DPDK_SETTINGS}
{SINK}"#
    );
    let stopped = run_lb_against_testpmd("one", &config, &[&socket]);
    assert!(
        count(&stopped, "tx=") > 100,
        "lb forwarded testpmd's frames: {stopped}"
    );
}

/// Two DPDK devices, one per interface: testpmd's frames to the VIP arrive on the outside memif
/// and leave, rewritten, by the inside one towards the backend, which a static neighbor places
/// on the inside interface.
#[cfg(feature = "dpdk")]
#[test]
#[ignore = "needs root, --features dpdk and dpdk-testpmd"]
fn lb_run_forwards_between_two_dpdk_devices() {
    let pid = std::process::id();
    let (outside, inside) = (
        format!("/lbd-run2o-{pid}.sock"),
        format!("/lbd-run2i-{pid}.sock"),
    );
    let config = format!(
        r#"
[dataplane]
port = "dpdk"
workers = 1
idle = "poll"
gateway_mac = "02:00:00:00:00:fe"

[[dataplane.interfaces]]
name = "lbdo{pid}"
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.250"]
dpdk_device = "net_memif0"
dpdk_vdev = "role=server,socket={outside},socket-abstract=yes"

[[dataplane.interfaces]]
name = "lbdi{pid}"
mac = "02:00:00:00:00:02"
addresses = ["198.18.1.1"]
dpdk_device = "net_memif1"
dpdk_vdev = "role=server,socket={inside},socket-abstract=yes"

[dataplane.dpdk]
{DPDK_SETTINGS}
{SINK}
interface = "lbdi{pid}"
"#
    );
    let stopped = run_lb_against_testpmd("two", &config, &[&outside, &inside]);
    let (tx, crossed, copies) = (
        count(&stopped, "tx="),
        count(&stopped, "crossed_interfaces="),
        count(&stopped, "crossed_copies="),
    );
    assert!(tx > 100, "lb forwarded testpmd's frames: {stopped}");
    assert_eq!(
        crossed, tx,
        "every forwarded frame left by the inside device: {stopped}"
    );
    assert_eq!(
        copies, 0,
        "the inside device sent the outside device's mbufs, none copied: {stopped}"
    );
}

/// EAL and queue settings both tests share.
#[cfg(feature = "dpdk")]
const DPDK_SETTINGS: &str = r#"eal_args = ["--no-pci", "-m", "256"]
hugepages = false
mempool_size = 4095
rx_descriptors = 512
tx_descriptors = 512

[admin]
enabled = false
"#;

/// A fullnat UDP service on testpmd's txonly destination (198.18.0.2, port 9) whose backend
/// has a static MAC (the last line is its `[[neighbors]]` entry, open for more keys).
#[cfg(feature = "dpdk")]
const SINK: &str = r#"
[[services]]
name = "sink"
vip = "198.18.0.2"
protocol = "udp"
ports = ["9"]
[[services.pools]]
name = "b"
mode = "fullnat"
snat = ["198.18.0.3"]
backends = [{ addr = "198.18.1.10", port = 9 }]

[[neighbors]]
ip = "198.18.1.10"
mac = "02:00:00:00:01:0a""#;

/// The value of `key` (`tx=`) in lb's final counters line; panics when the line lacks it.
#[cfg(feature = "dpdk")]
fn count(stopped: &str, key: &str) -> u64 {
    stopped
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in lb's final counters: {stopped}"))
}

/// Runs `lb run` with `config` (its memif servers on abstract `sockets`), a testpmd client on
/// each socket sending UDP (txonly, from its first port only) to lb's first interface for 2
/// s once it forwards, then SIGTERM: asserts lb exits 0 and leaves no EAL runtime directory, and returns lb's
/// final counters line.
#[cfg(feature = "dpdk")]
fn run_lb_against_testpmd(tag: &str, config: &str, sockets: &[&str]) -> String {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    testkit::require_root();
    testkit::require_programs(&["dpdk-testpmd"]);
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("lbd-run-{tag}-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let log = dir.join("lb.log");
    let peer_out = dir.join("testpmd.out");
    let peer_prefix = format!("lbd-run-{tag}-{pid}-peer");

    /// Kills what is still running and removes the files, also when an assertion fails.
    struct Cleanup {
        children: Vec<std::process::Child>,
        paths: Vec<std::path::PathBuf>,
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for c in &mut self.children {
                let _ = c.kill();
                let _ = c.wait();
            }
            for p in &self.paths {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
    let mut cleanup = Cleanup {
        children: Vec::new(),
        paths: vec![dir.clone(), format!("/var/run/dpdk/{peer_prefix}").into()],
    };

    let lb = Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["run", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(dir.join("lb.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start lb");
    let lb_pid = lb.id();
    cleanup.children.push(lb);
    cleanup
        .paths
        .push(format!("/var/run/dpdk/lb-{lb_pid}").into());
    let read_log = || {
        let raw = std::fs::read_to_string(&log).unwrap_or_default();
        strip_ansi(&raw)
    };
    let end = Instant::now() + Duration::from_secs(30);
    while !read_log().contains("worker started") {
        assert!(Instant::now() < end, "lb did not start:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        read_log().matches("driver=\"net_memif\"").count(),
        sockets.len(),
        "{}",
        read_log()
    );

    let mut args: Vec<String> = [
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-telemetry",
        "-l",
        "0,1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--file-prefix={peer_prefix}"));
    for (i, socket) in sockets.iter().enumerate() {
        args.push(format!(
            "--vdev=net_memif{i},role=client,socket={socket},socket-abstract=yes"
        ));
    }
    args.extend(
        [
            "--",
            "--forward-mode=txonly",
            "--portmask=0x1",
            "--eth-peer=0,02:00:00:00:00:01",
            "--total-num-mbufs=4096",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    // Line-buffered, so its progress reaches the file as it is printed.
    let mut peer = Command::new("stdbuf")
        .arg("-oL")
        .arg("dpdk-testpmd")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&peer_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dpdk-testpmd");
    let peer_stdin = peer.stdin.take();
    cleanup.children.push(peer);
    // testpmd prints this once its ports are up and it forwards (after connecting to lb's
    // memif servers, which on a loaded machine takes more than a fixed wait allowed); then it
    // sends for 2 s.
    let end = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&peer_out)
        .unwrap_or_default()
        .contains("Press enter to exit")
    {
        assert!(
            Instant::now() < end,
            "testpmd did not start forwarding:\n{}\nlb:\n{}",
            std::fs::read_to_string(&peer_out).unwrap_or_default(),
            read_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));

    // lb stops first, while its peer is still connected: DPDK 22.11's memif driver tears a
    // link down from its interrupt thread (unmapping the shared rings) while a worker may be
    // inside its receive, which crashes the worker now and then (docs/OPERATIONS.md).
    let st = Command::new("kill")
        .args(["-TERM", &lb_pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let lb = &mut cleanup.children[0];
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = lb.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "lb did not stop:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    };
    // testpmd stops and exits when its stdin closes.
    drop(peer_stdin);
    let text = read_log();
    assert!(status.success(), "lb exited with {status}:\n{text}");
    assert!(!text.contains("dpdk cleanup"), "{text}");
    let runtime = format!("/var/run/dpdk/lb-{lb_pid}");
    assert!(
        !std::path::Path::new(&runtime).exists(),
        "lb left {runtime} behind"
    );
    text.lines()
        .find(|l| l.contains(" stopped "))
        .unwrap_or_else(|| panic!("no final counters:\n{text}"))
        .to_string()
}

#[cfg(feature = "dpdk")]
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

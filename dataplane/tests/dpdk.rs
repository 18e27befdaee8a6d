//! The DPDK port against a real peer: DPDK's testpmd in `5tswap` mode on the other end of a
//! memif link. testpmd swaps MACs, addresses and ports of every frame, so what the balancer
//! sends to a backend comes back as that backend's reply, and its reply to the client as the
//! client's next request. Needs root, `--features dpdk` and testpmd (Debian package dpdk);
//! otherwise it says why it skipped.
//!
//! EAL lives once per process and cannot start again after its cleanup, so each test runs in a
//! child process of its own (this binary again, `LB_DPDK_CHILD=<test>`), which ends with the
//! port's clean shutdown; the parent then checks what the child left behind: runtime files,
//! hugepage files, hugepages, peer processes. Hence `harness = false`.

fn main() {
    #[cfg(not(feature = "dpdk"))]
    eprintln!(
        "dpdk: skipped: the DPDK port tests need `cargo test -p dataplane --features dpdk \
         --test dpdk` (and root, libdpdk-dev, dpdk-testpmd)"
    );
    #[cfg(feature = "dpdk")]
    with_dpdk::main();
}

#[cfg(feature = "dpdk")]
mod with_dpdk {
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use arc_swap::ArcSwap;
    use dataplane::conntrack::{Config, Timeouts};
    use dataplane::flow::Addr;
    use dataplane::port::dpdk::{eal_cleanup, DpdkOptions, DpdkPort};
    use dataplane::port::Port;
    use dataplane::worker::{spawn_workers, IdlePolicy, WorkerConfig};
    use dataplane::{process, DropReason, Verdict, WorkerState};
    use testkit::sample;

    /// How long a peer may take to connect, and a test to see its frames.
    const WAIT: Duration = Duration::from_secs(15);

    /// How long one test's child process may run.
    const CHILD_LIMIT: Duration = Duration::from_secs(90);

    /// The tests, by name.
    const TESTS: [(&str, fn()); 7] = [
        (
            "fullnat_flow_is_forwarded_both_ways_over_memif_in_place",
            fullnat_flow_is_forwarded_both_ways_over_memif_in_place,
        ),
        (
            "a_jumbo_mtu_the_device_cannot_take_is_refused_clearly",
            a_jumbo_mtu_the_device_cannot_take_is_refused_clearly,
        ),
        (
            "a_jumbo_frame_makes_the_whole_trip_in_one_mbuf",
            a_jumbo_frame_makes_the_whole_trip_in_one_mbuf,
        ),
        (
            "a_frame_lent_to_another_device_arrives_whole_and_its_pool_outlives_its_device",
            a_frame_lent_to_another_device_arrives_whole_and_its_pool_outlives_its_device,
        ),
        (
            "an_idle_queue_wakes_on_its_receive_interrupt",
            an_idle_queue_wakes_on_its_receive_interrupt,
        ),
        (
            "malformed_frames_are_counted_and_dropped_by_a_running_worker",
            malformed_frames_are_counted_and_dropped_by_a_running_worker,
        ),
        (
            "shutdown_with_hugepages_leaves_no_files_pages_or_processes",
            shutdown_with_hugepages_leaves_no_files_pages_or_processes,
        ),
    ];

    /// Environment variable naming the test a child process runs.
    const CHILD: &str = "LB_DPDK_CHILD";

    /// Environment variable giving the child the hugetlbfs mount to use.
    const HUGE_DIR: &str = "LB_DPDK_HUGE_DIR";

    pub fn main() {
        if let Ok(name) = std::env::var(CHILD) {
            let (_, test) = TESTS
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no test {name}"));
            test();
            // The clean shutdown every test ends with (the ports are closed by now).
            eal_cleanup().expect("EAL cleanup");
            return;
        }
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--list") {
            for (name, _) in TESTS {
                println!("{name}: test");
            }
            return;
        }
        let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
        let tests: Vec<_> = TESTS
            .iter()
            .filter(|(n, _)| filter.as_ref().is_none_or(|f| n.contains(f.as_str())))
            .collect();
        println!("\nrunning {} tests", tests.len());
        if !testkit::is_root() {
            for (name, _) in &tests {
                println!("test {name} ... skipped: needs root (EAL, memif, hugepages)");
            }
            return;
        }
        testkit::require_programs(&["dpdk-testpmd", "mount", "umount"]);
        let mut failed = Vec::new();
        for (name, _) in &tests {
            match run_child(name) {
                Ok(()) => println!("test {name} ... ok"),
                Err(why) => {
                    println!("test {name} ... FAILED\n{why}");
                    failed.push(*name);
                }
            }
        }
        println!(
            "\ntest result: {}. {} passed; {} failed",
            if failed.is_empty() { "ok" } else { "FAILED" },
            tests.len() - failed.len(),
            failed.len()
        );
        if !failed.is_empty() {
            std::process::exit(101);
        }
    }

    /// Runs test `name` in a child process, then checks what it left behind.
    fn run_child(name: &str) -> Result<(), String> {
        let huge = if name.contains("hugepages") {
            Some(Hugepages::reserve(128)?)
        } else {
            None
        };
        let free_before = huge.as_ref().map(|_| hugepages_free());
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        cmd.env(CHILD, name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(h) = &huge {
            cmd.env(HUGE_DIR, &h.dir);
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let pid = child.id();
        // Drain both pipes on threads so a chatty child never blocks on a full pipe.
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let end = Instant::now() + CHILD_LIMIT;
        let status = loop {
            if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                break Some(st);
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = format!(
            "--- stdout\n{}--- stderr\n{}",
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default()
        );
        let mut problems = Vec::new();
        match status {
            None => problems.push(format!("still running after {CHILD_LIMIT:?}: killed")),
            Some(st) if !st.success() => problems.push(format!("exited with {st}")),
            Some(_) => {}
        }
        // What a clean shutdown must not leave: EAL's runtime directory, testpmd processes
        // (their command lines carry the child's pid in the memif socket name).
        let runtime = PathBuf::from(format!("/var/run/dpdk/lb-{pid}"));
        if runtime.exists() {
            problems.push(format!("left {}", runtime.display()));
            let _ = std::fs::remove_dir_all(&runtime);
        }
        let peers = processes_mentioning(&format!("lbt-{pid}-"));
        if !peers.is_empty() {
            problems.push(format!("left peer processes {peers:?}"));
            for p in peers {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
        }
        if let Some(h) = &huge {
            let files = std::fs::read_dir(&h.dir)
                .map(|d| d.count())
                .unwrap_or_default();
            if files != 0 {
                problems.push(format!(
                    "left {files} hugepage files in {}",
                    h.dir.display()
                ));
            }
            let free_after = hugepages_free();
            if Some(free_after) != free_before {
                problems.push(format!(
                    "free hugepages {free_before:?} before, {free_after} after"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}\n{output}", problems.join("\n")))
        }
    }

    /// Pids of processes whose command line contains `needle`.
    fn processes_mentioning(needle: &str) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(needle))
                    .unwrap_or(false)
            })
            .collect()
    }

    fn hugepages_free() -> u64 {
        meminfo("HugePages_Free:")
    }

    fn meminfo(key: &str) -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().split(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// 2 MiB hugepages for a test, on a hugetlbfs mount of its own; the pool size and the
    /// mount are restored on drop.
    struct Hugepages {
        dir: PathBuf,
        nr_before: Option<u64>,
    }

    const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

    impl Hugepages {
        fn reserve(pages: u64) -> Result<Hugepages, String> {
            let dir = std::env::temp_dir().join(format!("lbt-huge-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let mut h = Hugepages {
                dir,
                nr_before: None,
            };
            let free = hugepages_free();
            if free < pages {
                let nr: u64 = std::fs::read_to_string(NR_HUGEPAGES)
                    .map_err(|e| e.to_string())?
                    .trim()
                    .parse()
                    .map_err(|_| "nr_hugepages unreadable".to_string())?;
                h.nr_before = Some(nr);
                std::fs::write(NR_HUGEPAGES, (nr + pages - free).to_string())
                    .map_err(|e| format!("raising {NR_HUGEPAGES}: {e}"))?;
                if hugepages_free() < pages {
                    return Err(format!("could not reserve {pages} hugepages"));
                }
            }
            let st = Command::new("mount")
                .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "lbt-huge"])
                .arg(&h.dir)
                .status()
                .map_err(|e| e.to_string())?;
            if !st.success() {
                return Err(format!("mounting hugetlbfs on {}", h.dir.display()));
            }
            Ok(h)
        }
    }

    impl Drop for Hugepages {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.dir).status();
            let _ = std::fs::remove_dir(&self.dir);
            if let Some(nr) = self.nr_before {
                let _ = std::fs::write(NR_HUGEPAGES, nr.to_string());
            }
        }
    }

    fn ct() -> Config {
        Config {
            capacity: 1 << 12,
            embryonic_budget: 1 << 10,
            timeouts: Timeouts::default(),
        }
    }

    /// The memif socket of test `tag` (abstract: no file to remove), named after this process.
    fn socket(tag: &str) -> String {
        format!("/lbt-{}-{tag}.sock", std::process::id())
    }

    /// Options of the port under test: a memif server on `socket(tag)`, ordinary pages.
    fn options(vdev: &str, tag: &str) -> DpdkOptions {
        DpdkOptions {
            eal_args: vec!["--no-pci".into(), "-m".into(), "256".into()],
            device: vdev.into(),
            vdev_args: Some(format!(
                "role=server,socket={},socket-abstract=yes",
                socket(tag)
            )),
            rx_descriptors: 512,
            tx_descriptors: 512,
            mempool_size: 4095,
            hugepages: false,
            mtu: 0,
        }
    }

    /// testpmd on the client end of `socket(tag)`, forwarding in `mode`; stopped (stdin
    /// closed, killed if it lingers) and its runtime directory removed on drop. Should this
    /// process die first, testpmd sees its stdin close and exits by itself.
    struct Testpmd {
        child: Child,
        stdin: Option<ChildStdin>,
        prefix: String,
    }

    impl Testpmd {
        fn start(tag: &str, mode: &str) -> Testpmd {
            Testpmd::start_with(tag, mode, &[])
        }

        /// [`Testpmd::start`] with more of testpmd's own options (`--mbuf-size=...`).
        fn start_with(tag: &str, mode: &str, extra: &[&str]) -> Testpmd {
            let prefix = format!("lbt-{}-{tag}", std::process::id());
            let child = Command::new("dpdk-testpmd")
                .args([
                    "--no-huge",
                    "-m",
                    "256",
                    "--no-pci",
                    "--no-telemetry",
                    "-l",
                    "0,1",
                    &format!("--file-prefix={prefix}"),
                    &format!(
                        "--vdev=net_memif0,role=client,socket={},socket-abstract=yes",
                        socket(tag)
                    ),
                    "--",
                    &format!("--forward-mode={mode}"),
                    // testpmd empties its receive queues before forwarding starts; the frames
                    // a test sends as soon as the link is up must not be lost that way.
                    "--no-flush-rx",
                    "--total-num-mbufs=4096",
                    "--rxd=512",
                    "--txd=512",
                ])
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = child.expect("start dpdk-testpmd");
            let stdin = child.stdin.take();
            Testpmd {
                child,
                stdin,
                prefix,
            }
        }
    }

    impl Drop for Testpmd {
        fn drop(&mut self) {
            self.stdin.take();
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                if Instant::now() > end {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
        }
    }

    fn wait_link(port: &DpdkPort) {
        let end = Instant::now() + WAIT;
        while !port.link_up() {
            assert!(Instant::now() < end, "the memif link never came up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `frame`, again until the driver takes it: a memif link is up before the peer has
    /// posted its first receive buffers.
    fn inject(port: &mut DpdkPort, frame: &[u8]) {
        let end = Instant::now() + WAIT;
        loop {
            let before = port.stats().tx;
            port.tx_frame(frame).expect("queue a frame");
            port.flush().expect("flush");
            if port.stats().tx > before {
                return;
            }
            assert!(Instant::now() < end, "the peer never took a frame");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The frame as testpmd's 5tswap would send it back: MACs, IPv4 addresses and ports swapped.
    fn swap5(frame: &[u8]) -> Vec<u8> {
        let mut f = frame.to_vec();
        for (a, b, n) in [(0, 6, 6), (26, 30, 4), (34, 36, 2)] {
            let (x, y) = (f[a..a + n].to_vec(), f[b..b + n].to_vec());
            f[a..a + n].copy_from_slice(&y);
            f[b..b + n].copy_from_slice(&x);
        }
        f
    }

    /// (source, destination, source port, destination port) of an IPv4 TCP/UDP frame.
    fn tuple(f: &[u8]) -> ([u8; 4], [u8; 4], u16, u16) {
        let ip = |o: usize| [f[o], f[o + 1], f[o + 2], f[o + 3]];
        let port = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
        (ip(26), ip(30), port(34), port(36))
    }

    const CLIENT: Addr = Addr::v4([198, 19, 0, 7]);

    /// A client's SYN to the fullnat VIP, as the balancer receives it.
    fn client_syn() -> Vec<u8> {
        let mut buf = [0u8; 128];
        let n = sample::tcp4(&mut buf, CLIENT, sample::VIP_FULLNAT, 40000, 80, 0x02, 0);
        buf[..n].to_vec()
    }

    /// One hop of a frame through the pipeline: what arrived, the verdict, and what the
    /// pipeline left in the same buffer.
    type Hop = (Vec<u8>, Verdict, Vec<u8>);

    /// Sends `syn` (a client's SYN to the fullnat VIP) to testpmd, which reflects it back as
    /// the client's; runs the pipeline on it and on the reflection of what it sent (the
    /// backend's reply), and returns those two hops. Stops `peer` after.
    fn two_hops(port: &mut DpdkPort, peer: Testpmd, syn: &[u8]) -> Vec<Hop> {
        let table = sample::table(1, 4);
        let mut st = WorkerState::with_seed(0, 1, ct(), 1);
        // testpmd turns this into the client's SYN.
        inject(port, &swap5(syn));
        let seed_drops = port.stats().tx_dropped;
        let mut hops: Vec<Hop> = Vec::new();
        let end = Instant::now() + WAIT;
        while hops.len() < 2 && Instant::now() < end {
            port.rx_burst(32, &mut |pkt| {
                let input = pkt.data().to_vec();
                // Two hops are the test; later frames of the loop are let go.
                let v = if hops.len() < 2 {
                    process(&mut st, &table, 1, pkt)
                } else {
                    Verdict::Drop(DropReason::Malformed)
                };
                hops.push((input, v, pkt.data().to_vec()));
                v
            })
            .expect("rx");
            port.flush().expect("flush");
        }
        drop(peer);
        assert_eq!(
            hops.len(),
            2,
            "frames seen: {} {:?}",
            hops.len(),
            port.stats()
        );
        let stats = port.stats();
        assert!(stats.rx >= 2, "{stats:?}");
        assert!(
            stats.tx >= 3,
            "the seed and both forwarded frames: {stats:?}"
        );
        assert_eq!(
            stats.tx_dropped, seed_drops,
            "no drops after the link was ready: {stats:?}"
        );
        hops
    }

    fn fullnat_flow_is_forwarded_both_ways_over_memif_in_place() {
        let mut ports = DpdkPort::open(&options("net_memif0", "both"), 1).expect("open port");
        let mut port = ports.pop().expect("one queue");
        assert_eq!(port.driver(), "net_memif");
        let peer = Testpmd::start("both", "5tswap");
        wait_link(&port);
        let hops = two_hops(&mut port, peer, &client_syn());

        let (vip, snat) = (sample::VIP_FULLNAT.v4_octets(), sample::SNAT.v4_octets());
        // Hop 1: the client's SYN to the VIP, sent on to a backend from the snat address.
        let (input, v, sent) = &hops[0];
        assert_eq!(tuple(input), (CLIENT.v4_octets(), vip, 40000, 80));
        assert_eq!(*v, Verdict::Tx);
        let (src, backend, sport, dport) = tuple(sent);
        assert_eq!(src, snat);
        assert_eq!(&backend[..3], &[198, 18, 1], "a fullnat backend");
        assert_eq!(dport, 8080);
        // Hop 2: the backend's reply (testpmd's reflection), back to the client from the VIP.
        let (input, v, sent) = &hops[1];
        assert_eq!(tuple(input), (backend, snat, 8080, sport));
        assert_eq!(*v, Verdict::Tx);
        assert_eq!(tuple(sent), (vip, CLIENT.v4_octets(), 80, 40000));
        assert_eq!(&sent[..6], &sample::CLIENT_MAC, "to the client's router");
    }

    /// A jumbo MTU the device cannot take is refused at open with the device's limit (memif's
    /// frames stop at 1518 bytes), and leaves nothing half-open: the same device then opens at
    /// its own MTU and forwards. (No virtual device here carries frames over 2048 bytes, so
    /// a jumbo frame's own trip is not shown on this machine.)
    fn a_jumbo_mtu_the_device_cannot_take_is_refused_clearly() {
        let mut opts = options("net_memif0", "jumbo");
        opts.mtu = 9000;
        let refused = DpdkPort::open(&opts, 1)
            .err()
            .expect("memif takes no jumbo frames");
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
        assert!(
            refused
                .to_string()
                .contains("net_memif0 takes an MTU of at most 1500, not 9000"),
            "{refused}"
        );
        // memif keeps a server socket bound until EAL cleanup: the reopen takes another.
        let mut opts = options("net_memif0", "jumbo2");
        opts.mtu = 0;
        let mut ports = DpdkPort::open(&opts, 1).expect("the same device at its own MTU");
        let mut port = ports.pop().expect("one queue");
        let peer = Testpmd::start("jumbo2", "5tswap");
        wait_link(&port);
        let hops = two_hops(&mut port, peer, &client_syn());
        assert!(hops.iter().all(|(_, v, _)| *v == Verdict::Tx), "{hops:?}");
    }

    /// A 9000-byte frame through a device at MTU 9000: DPDK's `net_ring`, whose transmit ring
    /// is its receive ring (no wire, no size limit: the only virtual device here that carries
    /// more than about 2 KB). The client's SYN is received whole in one mbuf (a frame in
    /// several would be dropped and counted), rewritten in place by the pipeline (fullnat),
    /// transmitted, and comes back byte for byte as the backend gets it.
    fn a_jumbo_frame_makes_the_whole_trip_in_one_mbuf() {
        let opts = DpdkOptions {
            eal_args: vec!["--no-pci".into(), "-m".into(), "256".into()],
            device: "net_ring0".into(),
            vdev_args: Some(String::new()),
            rx_descriptors: 512,
            tx_descriptors: 512,
            mempool_size: 1023,
            hugepages: false,
            mtu: 9000,
        };
        let mut port = DpdkPort::open(&opts, 1)
            .expect("net_ring at MTU 9000")
            .pop()
            .expect("one queue");
        // A whole 9000-byte IP packet: 14 + 20 + 20 header bytes and the payload.
        let mut buf = vec![0u8; 9014];
        let n = sample::tcp4(&mut buf, CLIENT, sample::VIP_FULLNAT, 40000, 80, 0x02, 8960);
        assert_eq!(n, 9014);
        let syn = buf[..n].to_vec();
        let mut table = sample::table(1, 4);
        // The sample's interface MTU is 1500: this lab link is a jumbo one.
        table.local.mtu = 9000;
        let mut st = WorkerState::with_seed(0, 1, ct(), 1);
        port.tx_frame(&syn)
            .expect("a 9014-byte mbuf from a pool sized for MTU 9000");
        port.flush().expect("flush");
        let mut seen: Vec<(Vec<u8>, Verdict, Vec<u8>)> = Vec::new();
        let end = Instant::now() + WAIT;
        while seen.len() < 2 && Instant::now() < end {
            port.rx_batch(32, &mut |pkts, verdicts| {
                for (pkt, v) in pkts.iter_mut().zip(verdicts.iter_mut()) {
                    let input = pkt.data().to_vec();
                    // The first trip is the client's SYN; the second is what lb sent, let go.
                    *v = if seen.is_empty() {
                        process(&mut st, &table, 1, pkt)
                    } else {
                        Verdict::Drop(DropReason::Malformed)
                    };
                    seen.push((input, *v, pkt.data().to_vec()));
                }
            })
            .expect("rx");
            port.flush().expect("flush");
        }
        assert_eq!(
            seen.len(),
            2,
            "frames back: {} {:?}",
            seen.len(),
            port.stats()
        );
        let (arrived, verdict, sent) = &seen[0];
        assert_eq!(arrived, &syn, "the SYN arrived whole in one mbuf");
        assert_eq!(*verdict, Verdict::Tx);
        assert_eq!(sent.len(), 9014);
        let (src, backend, _, dport) = tuple(sent);
        assert_eq!(src, sample::SNAT.v4_octets());
        assert_eq!(&backend[..3], &[198, 18, 1], "a fullnat backend");
        assert_eq!(dport, 8080);
        assert_eq!(&sent[54..], &syn[54..], "the payload untouched");
        assert_eq!(
            &seen[1].0, sent,
            "the backend gets what lb sent, byte for byte"
        );
        assert_eq!(port.multi_seg_dropped(), 0);
        assert_eq!(port.stats().tx_dropped, 0);
    }

    /// A `net_ring` device of its own (its transmit ring is its receive ring), ordinary pages.
    fn ring_port(device: &str) -> DpdkPort {
        let opts = DpdkOptions {
            eal_args: vec!["--no-pci".into(), "-m".into(), "256".into()],
            device: device.into(),
            vdev_args: Some(String::new()),
            rx_descriptors: 512,
            tx_descriptors: 512,
            mempool_size: 1023,
            hugepages: false,
            mtu: 0,
        };
        DpdkPort::open(&opts, 1)
            .unwrap_or_else(|e| panic!("{device}: {e}"))
            .pop()
            .expect("one queue")
    }

    /// Runs bursts of `port` through `f` (which sets the verdicts) until `want` frames came,
    /// flushing after each; returns the frames as `f` left them.
    fn receive_some(
        port: &mut DpdkPort,
        want: usize,
        f: &mut dyn FnMut(&mut dataplane::PacketBuf<'_>) -> Verdict,
    ) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let end = Instant::now() + WAIT;
        while got.len() < want && Instant::now() < end {
            port.rx_batch(32, &mut |pkts, verdicts| {
                for (pkt, v) in pkts.iter_mut().zip(verdicts.iter_mut()) {
                    *v = f(pkt);
                    got.push(pkt.data().to_vec());
                }
            })
            .expect("rx");
            port.flush().expect("flush");
        }
        got
    }

    /// Two devices, as in a two-armed balancer whose frames change interface: frames received
    /// on `net_ring0` are rewritten by the pipeline and lent to `net_ring1`, which transmits
    /// the same mbufs (no copy) and gets them back byte for byte. A lent frame nobody takes is
    /// freed by its port's next receive, and a frame from the first device's pool still in the
    /// second device's ring when the first device closes is read whole and freed afterwards:
    /// pools live until the last device is closed. Every mbuf goes back to its pool.
    fn a_frame_lent_to_another_device_arrives_whole_and_its_pool_outlives_its_device() {
        let mut a = ring_port("net_ring0");
        let mut b = ring_port("net_ring1");
        assert!(a.lends() && b.lends());
        let (a_full, b_full) = (a.pool_available(), b.pool_available());
        let table = sample::table(1, 4);
        let mut st = WorkerState::with_seed(0, 1, ct(), 1);
        let syn = |sport: u16| {
            let mut buf = vec![0u8; 128];
            let n = sample::tcp4(&mut buf, CLIENT, sample::VIP_FULLNAT, sport, 80, 0x02, 0);
            buf.truncate(n);
            buf
        };
        let mut lend = |pkt: &mut dataplane::PacketBuf<'_>| {
            let v = process(&mut st, &table, 1, pkt);
            assert_eq!(v, Verdict::Tx, "a fullnat SYN is forwarded");
            Verdict::Lent
        };
        for sport in [40000, 40001] {
            a.tx_frame(&syn(sport)).expect("queue");
        }
        a.flush().expect("flush");
        let sent = receive_some(&mut a, 2, &mut lend);
        assert_eq!(sent.len(), 2);
        // The first is taken and sent by the other device; the second is never taken.
        let first = a.take_lent().expect("a lent frame");
        b.tx_lent(first)
            .unwrap_or_else(|_| panic!("b takes a lent frame"));
        b.flush().expect("flush");
        assert_eq!(b.stats().tx, 1);
        let back = receive_some(&mut b, 1, &mut |_| Verdict::Drop(DropReason::Malformed));
        assert_eq!(back, sent[..1], "b sent a's mbuf as the pipeline left it");
        // a's next receive (none waiting) frees the frame nobody took.
        assert_eq!(a.rx_batch(32, &mut |_, _| {}).expect("rx"), 0);
        assert!(a.take_lent().is_none());
        assert_eq!(
            (a.pool_available(), b.pool_available()),
            (a_full, b_full),
            "every mbuf is back in its pool"
        );

        // A frame of a's pool waits in b's ring while a's device closes.
        a.tx_frame(&syn(40002)).expect("queue");
        a.flush().expect("flush");
        let sent = receive_some(&mut a, 1, &mut lend);
        assert_eq!(sent.len(), 1);
        let third = a.take_lent().expect("a lent frame");
        b.tx_lent(third)
            .unwrap_or_else(|_| panic!("b takes a lent frame"));
        b.flush().expect("flush");
        drop(a);
        let back = receive_some(&mut b, 1, &mut |_| Verdict::Drop(DropReason::Malformed));
        assert_eq!(back, sent, "read whole after its device closed");
        assert_eq!(b.pool_available(), b_full);
        drop(b);
    }

    /// Whether `fd` becomes readable within `ms` milliseconds.
    fn readable(fd: std::os::fd::RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        n == 1 && p.revents & libc::POLLIN != 0
    }

    /// An AF_PACKET socket on `ifname` that sends whole frames.
    fn raw_socket(ifname: &str) -> std::os::fd::OwnedFd {
        use std::os::fd::{AsRawFd, FromRawFd};
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh socket we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0, "no interface {ifname}");
        // SAFETY: zeroed sockaddr_ll is valid; the fields are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
        fd
    }

    /// An idle worker sleeps on the queue's receive interrupt where the driver has one (here
    /// DPDK's `net_tap`, whose kernel side sends the frame): the fd stays quiet while nothing
    /// arrives, turns readable when a frame does, and is quiet again once the frame is
    /// received, until the worker sleeps again. memif has none: its worker sleeps its timeout.
    fn an_idle_queue_wakes_on_its_receive_interrupt() {
        use std::os::fd::AsRawFd;
        let mut memif = DpdkPort::open(&options("net_memif0", "intr"), 1).expect("open memif");
        assert!(!memif[0].rx_interrupts(), "memif gives no interrupt fd");
        assert_eq!(memif[0].wait_fd(), None);
        drop(memif.pop());

        let ifname = format!("lbti{}", std::process::id());
        let mut opts = options("net_tap0", "intr");
        opts.vdev_args = Some(format!("iface={ifname}"));
        let mut ports = DpdkPort::open(&opts, 1).expect("open net_tap");
        let mut port = ports.pop().expect("one queue");
        assert!(
            port.rx_interrupts(),
            "net_tap queues have receive interrupts"
        );
        // The kernel side, quiet: no IPv6 (router solicitations) on it.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
            "1",
        );
        let st = Command::new("ip")
            .args(["link", "set", &ifname, "up"])
            .status()
            .expect("run ip");
        assert!(st.success());
        let kernel = raw_socket(&ifname);
        let fd = port.wait_fd().expect("an fd to sleep on");
        // Whatever the kernel sent while the link came up is received first.
        std::thread::sleep(Duration::from_millis(200));
        port.rx_burst(64, &mut |_| Verdict::Drop(DropReason::Unsupported))
            .expect("rx");
        let fd2 = port.wait_fd().expect("armed again");
        assert_eq!(fd, fd2);
        assert!(!readable(fd, 200), "quiet while nothing arrives");
        let frame = client_syn();
        // SAFETY: `frame` is valid for its length.
        let sent = unsafe { libc::send(kernel.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(sent, frame.len() as isize);
        assert!(readable(fd, 5000), "the frame's arrival wakes the sleeper");
        let mut got = Vec::new();
        let end = Instant::now() + WAIT;
        while got.is_empty() && Instant::now() < end {
            port.rx_burst(32, &mut |pkt| {
                got.push(pkt.data().to_vec());
                Verdict::Drop(DropReason::Unsupported)
            })
            .expect("rx");
        }
        assert_eq!(got, vec![frame], "the frame sent, received");
        assert!(!readable(fd, 0), "received: the wake-up is read away");
        assert_eq!(port.wait_fd(), Some(fd), "armed again for the next sleep");
    }

    fn malformed_frames_are_counted_and_dropped_by_a_running_worker() {
        let mut ports = DpdkPort::open(&options("net_memif0", "bad"), 1).expect("open port");
        let mut port = ports.pop().expect("one queue");
        let _peer = Testpmd::start("bad", "5tswap");
        wait_link(&port);

        // IPv4 frames whose header claims more bytes than the frame has.
        let mut bad = client_syn();
        bad[16..18].copy_from_slice(&1400u16.to_be_bytes());
        const BAD: u64 = 5;
        for _ in 0..BAD {
            inject(&mut port, &swap5(&bad));
        }
        // And one good flow, which keeps going round: lb -> testpmd -> lb.
        inject(&mut port, &swap5(&client_syn()));

        let table = Arc::new(ArcSwap::from_pointee(sample::table(1, 4)));
        let mut cfg = WorkerConfig::new(ct());
        cfg.idle = IdlePolicy::Poll;
        let workers = spawn_workers(vec![Box::new(port)], table, cfg).expect("spawn");
        let end = Instant::now() + WAIT;
        loop {
            let snap = workers[0].counters();
            let malformed = snap.counters.drops[DropReason::Malformed as usize];
            if (malformed >= BAD && snap.port.tx > 100) || Instant::now() > end {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let w = workers.into_iter().next().expect("one worker");
        w.stop();
        let snap = w.join().expect("join");
        assert_eq!(
            snap.counters.drops[DropReason::Malformed as usize],
            BAD,
            "every malformed frame counted once: {:?} {:?} {:?}",
            snap.counters.drops,
            snap.port,
            snap.stats
        );
        assert!(
            snap.port.tx > 100,
            "the good flow kept being forwarded beside them: {:?}",
            snap.port
        );
        assert!(snap.port.rx >= BAD + 100, "{:?}", snap.port);
    }

    fn shutdown_with_hugepages_leaves_no_files_pages_or_processes() {
        let dir = std::env::var(HUGE_DIR).expect("the parent mounts hugetlbfs");
        let mut opts = options("net_memif0", "huge");
        opts.hugepages = true;
        opts.eal_args = vec![
            "--no-pci".into(),
            "-m".into(),
            "128".into(),
            format!("--huge-dir={dir}"),
        ];
        // Twice: closing stops and closes the device, removes the vdev and frees its pool, so
        // the same device and pool names can be created again. (memif keeps a server socket
        // bound until EAL cleanup, hence a second socket.)
        for round in 0..2 {
            let tag = format!("huge{round}");
            opts.vdev_args = Some(format!(
                "role=server,socket={},socket-abstract=yes",
                socket(&tag)
            ));
            let end = Instant::now() + WAIT;
            let ports = loop {
                match DpdkPort::open(&opts, 2) {
                    Ok(p) => break p,
                    Err(e) if Instant::now() < end => {
                        eprintln!("round {round}: {e}; again");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("open round {round}: {e}"),
                }
            };
            assert_eq!(ports.len(), 2);
            assert_eq!(ports[1].name(), "dpdk:net_memif0/q1");
            let peer = Testpmd::start(&tag, "io");
            wait_link(&ports[0]);
            drop(peer);
            drop(ports);
        }
    }
}

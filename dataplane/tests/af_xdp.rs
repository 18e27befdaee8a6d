//! AF_XDP port against a real kernel: two network namespaces joined by a veth pair. The XDP side
//! echoes UDP datagrams sent to an owned address by the other side's kernel stack, and leaves
//! traffic to its own kernel address with the kernel. Needs root; prints "skipped" otherwise.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use dataplane::port::af_xdp::{AfXdpOptions, AfXdpPort, AttachMode};
use dataplane::port::Port;
use dataplane::{DropReason, PacketBuf, Verdict};

const MAC_A: &str = "02:00:5e:00:00:0a";
const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The owned address "behind" the XDP side: only the port answers for it.
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces `a` and `b` with a veth pair `link_a` (in `a`) - `link_b` (in `b`), removed on
/// drop (deleting a namespace deletes the veth end in it, and with it the pair).
struct Veth {
    ns_a: String,
    ns_b: String,
    link_a: String,
}

impl Veth {
    fn new(tag: &str, queues: u16) -> Veth {
        let pid = std::process::id();
        let v = Veth {
            ns_a: format!("lbx-{pid}-{tag}-nsa"),
            ns_b: format!("lbx-{pid}-{tag}-nsb"),
            link_a: format!("lbx{pid}{tag}a"),
        };
        let link_b = format!("lbx{pid}{tag}b");
        assert!(v.link_a.len() <= 15);
        ip(&["netns", "add", &v.ns_a]);
        let v = v; // from here on Drop cleans up, also if a later step panics
        ip(&["netns", "add", &v.ns_b]);
        let q = queues.to_string();
        ip(&[
            "link",
            "add",
            &v.link_a,
            "netns",
            &v.ns_a,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &link_b,
            "netns",
            &v.ns_b,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]);
        let (a, b) = (&v.ns_a, &v.ns_b);
        ip(&["-n", a, "link", "set", &v.link_a, "address", MAC_A]);
        ip(&["-n", a, "addr", "add", "198.18.0.1/24", "dev", &v.link_a]);
        ip(&["-n", b, "addr", "add", "198.18.0.2/24", "dev", &link_b]);
        ip(&["-n", a, "link", "set", &v.link_a, "up"]);
        ip(&["-n", b, "link", "set", &link_b, "up"]);
        // The VIP lives behind A's MAC; a permanent entry means B never ARPs for it.
        ip(&[
            "-n",
            b,
            "neigh",
            "add",
            "198.18.0.100",
            "lladdr",
            MAC_A,
            "dev",
            &link_b,
            "nud",
            "permanent",
        ]);
        // veth offloads the UDP checksum (leaves only the pseudo-header sum in the frame) and the
        // receiving veth trusts it; a frame that took the XDP path and came back echoed would be
        // dropped by B with a checksum error. A real NIC fills it in: make B's veth do the same.
        in_netns(&v.ns_b, || tx_checksum_in_software(&link_b));
        v
    }

    fn link_a_xdp(&self) -> String {
        ip(&["-n", &self.ns_a, "-d", "link", "show", "dev", &self.link_a])
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a fresh thread that has entered namespace `ns` (the test thread stays where it is;
/// sockets and ports created there keep their namespace when used from here).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(format!("/var/run/netns/{ns}")).expect("open netns");
            // SAFETY: setns on a namespace fd we hold open; it only changes this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// Turns off transmit checksum offload on `ifname` (`ethtool -K <if> tx off`, without ethtool).
fn tx_checksum_in_software(ifname: &str) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = Ifreq {
        name: [0; 16],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("ioctl socket");
    // SAFETY: `req` is a valid `struct ifreq` whose data points to a live `ethtool_value`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) };
    assert_eq!(
        rc,
        0,
        "ETHTOOL_STXCSUM {ifname}: {}",
        std::io::Error::last_os_error()
    );
}

/// Swaps MACs, IPv4 addresses and UDP ports of an IPv4/UDP frame (checksums stay valid: the sums
/// do not change when their terms swap places) and transmits it back.
fn echo(pkt: &mut PacketBuf<'_>) -> Verdict {
    let d = pkt.data_mut();
    let ihl = match d.get(14) {
        Some(v) if d.get(12..14) == Some(&[0x08, 0x00]) => usize::from(v & 0x0f) * 4,
        _ => return Verdict::Drop(DropReason::Unsupported),
    };
    if d.len() < 14 + ihl + 8 || d[14 + 9] != 17 {
        return Verdict::Drop(DropReason::Unsupported);
    }
    for i in 0..6 {
        d.swap(i, 6 + i);
    }
    for i in 0..4 {
        d.swap(26 + i, 30 + i);
    }
    let udp = 14 + ihl;
    for i in 0..2 {
        d.swap(udp + i, udp + 2 + i);
    }
    Verdict::Tx
}

/// [`echo`] over a whole burst, as `rx_batch` hands it over.
fn echo_burst(pkts: &mut [PacketBuf<'_>], verdicts: &mut [Verdict]) {
    for (p, v) in pkts.iter_mut().zip(verdicts.iter_mut()) {
        *v = echo(p);
    }
}

/// Sends `n` datagrams from `sock` to the VIP and runs the port until all come back echoed or
/// the deadline passes (polling every port). Returns how many came back with their payload intact.
fn echo_round(ports: &mut [AfXdpPort], sock: &UdpSocket, n: usize) -> usize {
    echo_round_with(ports, sock, n, false)
}

/// [`echo_round`] through `rx_batch` (whole bursts) when `batch`, else `rx_burst`.
fn echo_round_with(ports: &mut [AfXdpPort], sock: &UdpSocket, n: usize, batch: bool) -> usize {
    let vip = SocketAddr::new(IpAddr::V4(VIP), 9000);
    for i in 0..n {
        sock.send_to(format!("ping {i}").as_bytes(), vip)
            .expect("send");
    }
    let mut got = vec![false; n];
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.iter().any(|g| !g) && Instant::now() < deadline {
        for port in ports.iter_mut() {
            if batch {
                port.rx_batch(64, &mut echo_burst).expect("rx_batch");
            } else {
                port.rx_burst(64, &mut echo).expect("rx_burst");
            }
            port.flush().expect("flush");
        }
        while let Ok((len, from)) = sock.recv_from(&mut buf) {
            assert_eq!(from, vip, "echo comes from the VIP");
            let text = std::str::from_utf8(&buf[..len]).expect("utf8");
            let i: usize = text
                .strip_prefix("ping ")
                .and_then(|s| s.parse().ok())
                .expect("payload kept");
            got[i] = true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    got.iter().filter(|g| **g).count()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn echoes_owned_traffic_passes_the_rest_and_detaches() {
    testkit::require_root();
    let veth = Veth::new("e", 1);
    let opts = AfXdpOptions {
        mode: AttachMode::Native,
        frames: 256,
        ring_size: 128,
        ..AfXdpOptions::default()
    };
    let mut ports = in_netns(&veth.ns_a, || {
        AfXdpPort::open(&veth.link_a, 1, opts.clone())
    })
    .expect("open AF_XDP on veth in native mode");
    let mut port = ports.pop().expect("one port");
    port.set_owned(&[IpAddr::V4(VIP)]).expect("set_owned");
    println!(
        "{}: native={} zero_copy={}",
        port.name(),
        port.native(),
        port.zero_copy()
    );
    assert!(port.native(), "veth takes native XDP");
    assert!(veth.link_a_xdp().contains("prog/xdp"), "program attached");

    let b = in_netns(&veth.ns_b, || UdpSocket::bind((ADDR_B, 0))).expect("bind in b");
    b.set_nonblocking(true).expect("nonblocking");
    let host = in_netns(&veth.ns_a, || UdpSocket::bind((ADDR_A, 7777))).expect("bind in a");
    host.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");

    // Owned traffic: echoed by the port, through UMEM and the tx ring.
    assert_eq!(
        echo_round(std::slice::from_mut(&mut port), &b, 32),
        32,
        "all datagrams echoed"
    );
    let s = port.stats();
    assert_eq!((s.rx, s.tx, s.tx_dropped), (32, 32, 0), "{s:?}");

    // Not owned: B's ARP for A and the datagram to A's own address stay with A's kernel, while
    // the port runs, and never show up on the port.
    b.send_to(b"to the host", (ADDR_A, 7777))
        .expect("send to host");
    let mut buf = [0u8; 64];
    let (len, from) = host.recv_from(&mut buf).expect("host stack received");
    assert_eq!(
        (&buf[..len], from.ip()),
        (&b"to the host"[..], IpAddr::V4(ADDR_B))
    );
    let mut seen = 0;
    port.rx_burst(64, &mut |_| {
        seen += 1;
        Verdict::Drop(DropReason::Unsupported)
    })
    .expect("rx_burst");
    assert_eq!(seen, 0, "traffic for the host was not redirected");

    // Detach on drop, and a quick rebind on the same queue works (EBUSY is retried).
    drop(port);
    drop(ports);
    assert!(!veth.link_a_xdp().contains("xdp"), "program detached");
    let started = Instant::now();
    let mut again = in_netns(&veth.ns_a, || {
        AfXdpPort::open(&veth.link_a, 1, opts.clone())
    })
    .expect("reopen right after close");
    println!("reopen took {:?}", started.elapsed());
    let mut port = again.pop().expect("one port");
    port.set_owned(&[IpAddr::V4(VIP)]).expect("set_owned");
    assert_eq!(
        echo_round(std::slice::from_mut(&mut port), &b, 4),
        4,
        "echo after reopen"
    );
    drop(port);
    assert!(!veth.link_a_xdp().contains("xdp"), "program detached again");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn generic_mode_serves_every_queue() {
    testkit::require_root();
    let veth = Veth::new("g", 2);
    let opts = AfXdpOptions {
        mode: AttachMode::Generic,
        frames: 256,
        ring_size: 128,
        ..AfXdpOptions::default()
    };
    let mut ports = in_netns(&veth.ns_a, || AfXdpPort::open(&veth.link_a, 2, opts))
        .expect("open AF_XDP on two queues in generic mode");
    assert_eq!(ports.len(), 2);
    assert!(!ports[0].native() && !ports[0].zero_copy());
    assert!(
        veth.link_a_xdp().contains("xdpgeneric"),
        "generic program attached"
    );
    ports[1]
        .owned_handle()
        .set(&[IpAddr::V4(VIP)])
        .expect("set_owned through the shared handle");
    let b = in_netns(&veth.ns_b, || UdpSocket::bind((ADDR_B, 0))).expect("bind in b");
    b.set_nonblocking(true).expect("nonblocking");
    assert_eq!(echo_round(&mut ports, &b, 32), 32, "all datagrams echoed");
    let rx: u64 = ports.iter().map(|p| p.stats().rx).sum();
    let tx: u64 = ports.iter().map(|p| p.stats().tx).sum();
    assert_eq!((rx, tx), (32, 32));
    drop(ports);
    assert!(!veth.link_a_xdp().contains("xdp"), "program detached");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn bursts_echo_with_busy_polling_and_veth_refuses_zero_copy() {
    testkit::require_root();
    let veth = Veth::new("b", 1);
    let opts = AfXdpOptions {
        mode: AttachMode::Native,
        frames: 256,
        ring_size: 128,
        ..AfXdpOptions::default()
    };
    // veth has no AF_XDP zero-copy support: asking for it fails instead of copying.
    let strict = AfXdpOptions {
        require_zero_copy: true,
        ..opts.clone()
    };
    let refused = in_netns(&veth.ns_a, || AfXdpPort::open(&veth.link_a, 1, strict));
    assert!(refused.is_err(), "zero copy on veth must fail");
    let mut ports = in_netns(&veth.ns_a, || AfXdpPort::open(&veth.link_a, 1, opts))
        .expect("open AF_XDP on veth in native mode");
    let mut port = ports.pop().expect("one port");
    assert!(!port.zero_copy(), "veth copies");
    let bp = port.busy_poll().clone();
    println!("busy polling: {bp:?}");
    assert!(
        bp.active || !bp.refused.is_empty(),
        "busy polling is either set or its refusal reported"
    );
    port.set_owned(&[IpAddr::V4(VIP)]).expect("set_owned");
    let b = in_netns(&veth.ns_b, || UdpSocket::bind((ADDR_B, 0))).expect("bind in b");
    b.set_nonblocking(true).expect("nonblocking");
    // Twice as many datagrams as the fill ring holds, so chunks must come back in batches.
    let mut echoed = 0;
    for _ in 0..8 {
        echoed += echo_round_with(std::slice::from_mut(&mut port), &b, 32, true);
    }
    assert_eq!(echoed, 256, "all datagrams echoed through rx_batch");
    let s = port.stats();
    assert_eq!((s.rx, s.tx, s.tx_dropped), (256, 256, 0), "{s:?}");
}

/// One of the per-queue counters `ethtool -S` shows for `link` in `ns` (veth: per receive queue,
/// what XDP saw and redirected).
fn queue_stat(ns: &str, link: &str, name: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-S", link])
        .output()
        .expect("run ethtool (package ethtool)");
    assert!(out.status.success(), "ethtool -S {link}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in ethtool -S {link}:\n{text}"))
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn a_socket_on_a_chosen_queue_leaves_the_other_queues_to_the_kernel() {
    testkit::require_root();
    let veth = Veth::new("q", 2);
    let opts = AfXdpOptions {
        mode: AttachMode::Native,
        frames: 256,
        ring_size: 128,
        ..AfXdpOptions::default()
    };
    let bad = in_netns(&veth.ns_a, || {
        AfXdpPort::open_queues(&veth.link_a, &[1, 1], opts.clone())
    });
    assert!(bad.is_err(), "one queue twice is refused");
    let mut ports = in_netns(&veth.ns_a, || {
        AfXdpPort::open_queues(&veth.link_a, &[1], opts.clone())
    })
    .expect("open AF_XDP on queue 1 only");
    assert_eq!(ports.len(), 1);
    assert!(ports[0].name().ends_with("/q1"), "{}", ports[0].name());
    ports[0].set_owned(&[IpAddr::V4(VIP)]).expect("set_owned");
    // Many flows (one socket each, so one source port each): veth delivers each on the receive
    // queue of the sender's transmit queue, which the flow's hash picks, so both queues get some.
    let socks: Vec<UdpSocket> = (0..32)
        .map(|_| {
            let s = in_netns(&veth.ns_b, || UdpSocket::bind((ADDR_B, 0))).expect("bind in b");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let mut echoed = 0;
    for s in &socks {
        echoed += echo_round_once(&mut ports, s);
    }
    let stat = |n: &str| queue_stat(&veth.ns_a, &veth.link_a, n);
    let (seen0, seen1) = (
        stat("rx_queue_0_xdp_packets"),
        stat("rx_queue_1_xdp_packets"),
    );
    let (redir0, redir1) = (
        stat("rx_queue_0_xdp_redirect"),
        stat("rx_queue_1_xdp_redirect"),
    );
    println!("queue 0: {seen0} seen, {redir0} redirected; queue 1: {seen1} seen, {redir1} redirected; {echoed} echoed");
    assert_eq!(redir0, 0, "nothing on queue 0 reaches a socket");
    assert!(seen0 > 0 && seen1 > 0, "the flows spread over both queues");
    assert_eq!(
        redir1, echoed as u64,
        "every frame queue 1 redirected was echoed"
    );
    assert!(echoed > 0 && echoed < 32, "only queue 1's flows are served");
    assert_eq!(ports[0].stats().rx, echoed as u64);
}

/// A veth pair in namespaces (`prefix` names them), one AF_XDP port in native mode on its first
/// end (256 frames, 128-entry rings) that owns the VIP, and a non-blocking UDP socket on the
/// other end. Bind the results in this order so the port closes before the veth goes.
fn echo_lab(prefix: &str) -> (Veth, AfXdpPort, UdpSocket) {
    let veth = Veth::new(prefix, 1);
    let opts = AfXdpOptions {
        mode: AttachMode::Native,
        frames: 256,
        ring_size: 128,
        ..AfXdpOptions::default()
    };
    let mut ports = in_netns(&veth.ns_a, || AfXdpPort::open(&veth.link_a, 1, opts))
        .expect("open AF_XDP on veth in native mode");
    let port = ports.pop().expect("one port");
    port.set_owned(&[IpAddr::V4(VIP)]).expect("set_owned");
    let b = in_netns(&veth.ns_b, || UdpSocket::bind((ADDR_B, 0))).expect("bind in b");
    b.set_nonblocking(true).expect("nonblocking");
    (veth, port, b)
}

/// Sends one datagram from `sock` to the VIP and polls the ports for up to 300 ms for its echo:
/// 1 if it came back, 0 if not (its queue has no socket).
fn echo_round_once(ports: &mut [AfXdpPort], sock: &UdpSocket) -> usize {
    let vip = SocketAddr::new(IpAddr::V4(VIP), 9000);
    sock.send_to(b"ping 0", vip).expect("send");
    let deadline = Instant::now() + Duration::from_millis(300);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        for port in ports.iter_mut() {
            port.rx_burst(64, &mut echo).expect("rx_burst");
            port.flush().expect("flush");
        }
        if sock.recv_from(&mut buf).is_ok() {
            return 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    0
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn a_flood_larger_than_the_rings_is_echoed_without_transmit_drops() {
    testkit::require_root();
    let (_veth, mut port, b) = echo_lab("f");
    // 100 datagrams at once against 128-entry rings: bursts of 64 (one kick each where the
    // kernel takes a budget of 64, else two of 32). The transmit reservation must see the
    // slots the kernel has freed since it last looked, through `rx_batch` and through
    // `rx_burst`.
    let mut echoed = 0;
    for round in 0..8 {
        echoed += echo_round_with(std::slice::from_mut(&mut port), &b, 100, round < 4);
    }
    let s = port.stats();
    println!("{echoed} echoed, {s:?}");
    assert_eq!((echoed, s.tx, s.tx_dropped), (800, 800, 0), "{s:?}");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn a_burst_of_64_leaves_in_one_send_where_the_kernel_takes_the_tx_budget() {
    testkit::require_root();
    let (_veth, mut port, b) = echo_lab("k");
    let batch = port.tx_batch();
    println!(
        "tx batch {batch} frames a send (kernel {})",
        kernel_release()
    );
    // XDP_MAX_TX_SKB_BUDGET came with Linux 6.17: there the whole burst goes in one send.
    if kernel_at_least(6, 17) {
        assert_eq!(batch, 64, "the kernel takes a budget of one burst");
    } else {
        assert_eq!(batch, 32, "the kernel's fixed batch");
    }
    let vip = SocketAddr::new(IpAddr::V4(VIP), 9000);
    // Whole bursts of 64: the datagrams wait in the rx ring until all 64 are there (veth runs
    // XDP in the sender's softirq), then one rx_batch takes them and one flush sends them.
    let mut bursts = 0;
    let mut echoed = 0;
    for round in 0..20 {
        for i in 0..64 {
            b.send_to(format!("ping {round} {i}").as_bytes(), vip)
                .expect("send");
        }
        std::thread::sleep(Duration::from_millis(20));
        let kicks = port.tx_kicks();
        let got = port.rx_batch(64, &mut echo_burst).expect("rx_batch");
        port.flush().expect("flush");
        let sends = port.tx_kicks() - kicks;
        if got == 64 {
            bursts += 1;
            assert_eq!(
                u64::from(64 / batch),
                sends,
                "sends for a burst of 64 at {batch} a send"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 64];
        let mut this = 0;
        while this < got && Instant::now() < deadline {
            // Frames left by a short round go out with this round's flush too.
            port.flush().expect("flush");
            match b.recv_from(&mut buf) {
                Ok(_) => this += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        echoed += this;
        // Whatever a short round left behind is dropped (the verdicts' default) before the next.
        while port.rx_batch(64, &mut |_, _| {}).expect("rx_batch") > 0 {}
        while b.recv_from(&mut buf).is_ok() {}
        if bursts >= 5 {
            break;
        }
    }
    assert!(
        bursts >= 5,
        "only {bursts} of the rounds came in one burst of 64"
    );
    assert!(echoed >= 64 * 5, "echoed {echoed}");
    assert_eq!(port.stats().tx_dropped, 0);
}

/// The running kernel's release (`uname -r`).
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read /proc/sys/kernel/osrelease")
        .trim()
        .to_owned()
}

/// True when the running kernel is `major.minor` or later.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = kernel_release();
    let mut it = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

//! Real ports against the kernel, inside throwaway network namespaces (needs root; skipped otherwise).
//!
//! Each test builds its own namespaces with names carrying the process id, uses only 198.18.0.0/15,
//! bounds every wait, and removes what it built on drop, also when an assertion fails.

use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dataplane::flow::{proto, Addr};
use dataplane::port::af_packet::AfPacketPort;
use dataplane::port::tap::TapPort;
use dataplane::port::Port;
use dataplane::wire::{self, L3};
use dataplane::{DropReason, PacketBuf, Verdict};
use testkit::netns::{scoped_name, veth_pair, Netns};

/// A UDP datagram seen on a port: its addresses, ports and payload, and whether its checksum holds.
struct Udp {
    src: Addr,
    dst: Addr,
    dport: u16,
    payload: Vec<u8>,
    checksum_ok: bool,
}

fn udp(frame: &[u8]) -> Option<Udp> {
    let p = wire::parse(frame).ok()?;
    if p.l3 != L3::Ipv4 || p.proto != proto::UDP {
        return None;
    }
    Some(Udp {
        src: p.src,
        dst: p.dst,
        dport: p.dport,
        payload: frame.get(p.l4_off + 8..p.l3_end)?.to_vec(),
        checksum_ok: wire::verify_l4_checksum(frame, &p),
    })
}

/// Turns an Ethernet/IPv4/UDP frame into the answer: MACs, addresses and ports swapped. Swapping
/// keeps both checksums valid (ones' complement sums do not depend on word order).
fn swap_in_place(pkt: &mut PacketBuf<'_>) {
    let f = pkt.data_mut();
    let Ok(p) = wire::parse(f) else { return };
    for i in 0..6 {
        f.swap(i, 6 + i);
    }
    for i in 0..4 {
        f.swap(p.l3_off + 12 + i, p.l3_off + 16 + i);
    }
    for i in 0..2 {
        f.swap(p.l4_off + i, p.l4_off + 2 + i);
    }
}

/// Calls `rx_burst` until `done` or `timeout`, sleeping briefly when nothing came.
fn pump(
    ports: &mut [&mut dyn Port],
    timeout: Duration,
    f: &mut dyn FnMut(usize, &mut PacketBuf<'_>) -> Verdict,
    done: &dyn Fn() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done() && Instant::now() < deadline {
        let mut got = 0;
        for (i, port) in ports.iter_mut().enumerate() {
            got += port.rx_burst(64, &mut |pkt| f(i, pkt)).expect("rx_burst");
            port.flush().expect("flush");
        }
        if got == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn tap_answers_reach_the_kernel_and_to_host_frames_do_not() {
    testkit::require_root();
    let ns = Netns::create(&scoped_name("lbt-tap-", "")).expect("netns");
    let ifname = scoped_name("lbt", "t");
    let mut ports = ns
        .enter_on_thread(|| TapPort::open(&ifname, 2))
        .expect("enter netns")
        .expect("open tap");
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| p.wait_fd().is_some()));
    assert_eq!(ports[1].name(), format!("tap:{ifname}/q1"));

    ns.run("ip", &["link", "set", &ifname, "up"]).unwrap();
    ns.run("ip", &["addr", "add", "198.18.0.1/24", "dev", &ifname])
        .unwrap();
    // A static neighbour, so the kernel emits the datagram on the TAP without asking ARP first.
    ns.run(
        "ip",
        &[
            "neigh",
            "add",
            "198.18.0.2",
            "lladdr",
            "02:00:00:00:00:02",
            "dev",
            &ifname,
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    let sock = ns
        .enter_on_thread(|| UdpSocket::bind("198.18.0.1:0"))
        .unwrap()
        .expect("bind in netns");
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer: SocketAddr = "198.18.0.2:7777".parse().unwrap();
    sock.send_to(b"for-the-host", peer).unwrap();
    sock.send_to(b"echo-me", peer).unwrap();

    let target = Addr::v4([198, 18, 0, 2]);
    let (echoed, handed, mut bad_sum) = (Cell::new(0), Cell::new(0), 0);
    let [q0, q1] = &mut ports[..] else {
        unreachable!()
    };
    pump(
        &mut [q0 as &mut dyn Port, q1 as &mut dyn Port],
        Duration::from_secs(3),
        &mut |_, pkt| match udp(pkt.data()) {
            Some(u) if u.dst == target && u.dport == 7777 => {
                bad_sum += usize::from(!u.checksum_ok);
                if u.payload == b"echo-me" {
                    echoed.set(echoed.get() + 1);
                    swap_in_place(pkt);
                    Verdict::Tx
                } else {
                    handed.set(handed.get() + 1);
                    Verdict::ToHost
                }
            }
            // IPv6 router solicitations and the like.
            _ => Verdict::Drop(DropReason::Unsupported),
        },
        &|| echoed.get() + handed.get() >= 2,
    );
    assert_eq!((echoed.get(), handed.get(), bad_sum), (1, 1, 0));

    let mut buf = [0u8; 2048];
    let (len, from) = sock
        .recv_from(&mut buf)
        .expect("the echo reaches the kernel's socket");
    assert_eq!(&buf[..len], b"echo-me");
    assert_eq!(from, peer);
    // The ToHost frame was dropped, not written back: nothing else arrives.
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "a ToHost frame came back"
    );

    // Whichever queue the kernel picked for the flow, the totals are the same.
    let (q0, q1) = (ports[0].stats(), ports[1].stats());
    assert!(q0.rx + q1.rx >= 2);
    assert_eq!(
        (
            q0.tx + q1.tx,
            q0.to_host + q1.to_host,
            q0.tx_dropped + q1.tx_dropped
        ),
        (1, 1, 0)
    );
}

#[test]
fn tap_open_reports_a_bad_name() {
    let e = TapPort::open("this-name-is-too-long", 1).unwrap_err();
    assert!(e.to_string().contains("this-name-is-too-long"), "{e}");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn af_packet_fanout_echoes_every_datagram_once() {
    testkit::require_root();
    let ns_a = Netns::create(&scoped_name("lbt-afp-", "-a")).expect("netns a");
    let ns_b = Netns::create(&scoped_name("lbt-afp-", "-b")).expect("netns b");
    let (if_a, if_b) = (scoped_name("lbp", "a"), scoped_name("lbp", "b"));
    let _veth = veth_pair(&if_a, Some(ns_a.name()), &if_b, Some(ns_b.name())).expect("veth");

    // Side B stays unnumbered: its kernel ignores the datagrams, only the ports answer them.
    ns_b.run(
        "ip",
        &["link", "set", &if_b, "address", "02:00:00:00:01:02"],
    )
    .unwrap();
    ns_a.run("ip", &["addr", "add", "198.18.1.1/24", "dev", &if_a])
        .unwrap();
    ns_a.run(
        "ip",
        &[
            "neigh",
            "add",
            "198.18.1.2",
            "lladdr",
            "02:00:00:00:01:02",
            "dev",
            &if_a,
            "nud",
            "permanent",
        ],
    )
    .unwrap();

    let mut ports = ns_b
        .enter_on_thread(|| AfPacketPort::open(&if_b, 2))
        .unwrap()
        .expect("open af_packet");
    assert_eq!(ports.len(), 2);

    // 20 flows (one socket each, distinct source and destination ports), 10 datagrams per flow.
    const FLOWS: usize = 20;
    const PER_FLOW: usize = 10;
    let socks: Vec<UdpSocket> = ns_a
        .enter_on_thread(|| {
            (0..FLOWS)
                .map(|_| UdpSocket::bind("198.18.1.1:0"))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .unwrap()
        .expect("bind in netns");
    for round in 0..PER_FLOW {
        for (i, s) in socks.iter().enumerate() {
            let dst = SocketAddr::from((Ipv4Addr::new(198, 18, 1, 2), 20000 + i as u16));
            s.send_to(format!("flow {i} seq {round}").as_bytes(), dst)
                .unwrap();
        }
    }

    let target = Addr::v4([198, 18, 1, 2]);
    let per_port = [Cell::new(0usize), Cell::new(0usize)];
    let (mut own_echo_seen, mut bad_sum) = (0, 0);
    {
        let [p0, p1] = &mut ports[..] else {
            unreachable!()
        };
        pump(
            &mut [p0 as &mut dyn Port, p1 as &mut dyn Port],
            Duration::from_secs(5),
            &mut |i, pkt| match udp(pkt.data()) {
                Some(u) if u.dst == target => {
                    per_port[i].set(per_port[i].get() + 1);
                    bad_sum += usize::from(!u.checksum_ok);
                    swap_in_place(pkt);
                    Verdict::Tx
                }
                Some(u) if u.src == target => {
                    own_echo_seen += 1;
                    Verdict::Drop(DropReason::Unsupported)
                }
                // IPv6 neighbour discovery from side A: the host has it already.
                _ => Verdict::ToHost,
            },
            &|| per_port[0].get() + per_port[1].get() >= FLOWS * PER_FLOW,
        );
    }
    let per_port = per_port.map(Cell::into_inner);
    assert_eq!(
        per_port[0] + per_port[1],
        FLOWS * PER_FLOW,
        "frames received"
    );
    assert!(
        per_port[0] > 0 && per_port[1] > 0,
        "fanout spread flows over both sockets: {per_port:?}"
    );
    // Offloaded (partial) checksums from the veth peer were completed by the port.
    assert_eq!(bad_sum, 0);
    // Our own transmissions are not received again.
    assert_eq!(own_echo_seen, 0);

    let mut buf = [0u8; 2048];
    for (i, s) in socks.iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        for round in 0..PER_FLOW {
            let (len, from) = s
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("flow {i}: echo {round} missing: {e}"));
            assert_eq!(from.port(), 20000 + i as u16);
            assert_eq!(&buf[..len], format!("flow {i} seq {round}").as_bytes());
        }
    }
    let stats: Vec<_> = ports.iter().map(|p| p.stats()).collect();
    assert_eq!(
        stats.iter().map(|s| s.tx).sum::<u64>(),
        (FLOWS * PER_FLOW) as u64
    );
    assert!(stats.iter().all(|s| s.tx_dropped == 0), "{stats:?}");
    for (p, n) in ports.iter().zip(per_port) {
        assert_eq!(p.stats().tx, n as u64, "{}", p.name());
    }
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn af_packet_open_reports_a_missing_interface() {
    testkit::require_root();
    let ns = Netns::create(&scoped_name("lbt-afp-", "-m")).expect("netns");
    let e = ns
        .enter_on_thread(|| AfPacketPort::open("nosuchif0", 1))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains("nosuchif0"), "{e}");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it as root"]
fn af_packet_single_queue_sees_ingress_only() {
    testkit::require_root();
    let ns_a = Netns::create(&scoped_name("lbt-af1-", "-a")).expect("netns a");
    let ns_b = Netns::create(&scoped_name("lbt-af1-", "-b")).expect("netns b");
    let (if_a, if_b) = (scoped_name("lb1", "a"), scoped_name("lb1", "b"));
    let _veth = veth_pair(&if_a, Some(ns_a.name()), &if_b, Some(ns_b.name())).expect("veth");
    ns_a.run(
        "ip",
        &["link", "set", &if_a, "address", "02:00:00:00:02:01"],
    )
    .unwrap();
    ns_b.run(
        "ip",
        &["link", "set", &if_b, "address", "02:00:00:00:02:02"],
    )
    .unwrap();
    ns_a.run("ip", &["addr", "add", "198.18.2.1/24", "dev", &if_a])
        .unwrap();
    ns_b.run("ip", &["addr", "add", "198.18.2.3/24", "dev", &if_b])
        .unwrap();
    for (ns, ifname, ip, mac) in [
        (&ns_a, &if_a, "198.18.2.2", "02:00:00:00:02:02"),
        (&ns_b, &if_b, "198.18.2.1", "02:00:00:00:02:01"),
    ] {
        ns.run(
            "ip",
            &[
                "neigh",
                "add",
                ip,
                "lladdr",
                mac,
                "dev",
                ifname,
                "nud",
                "permanent",
            ],
        )
        .unwrap();
    }
    let mut ports = ns_b
        .enter_on_thread(|| AfPacketPort::open(&if_b, 1))
        .unwrap()
        .expect("open af_packet");
    let port = &mut ports[0];
    assert_eq!(port.name(), format!("af_packet:{if_b}/q0"));

    let a = ns_a
        .enter_on_thread(|| UdpSocket::bind("198.18.2.1:0"))
        .unwrap()
        .unwrap();
    let b = ns_b
        .enter_on_thread(|| UdpSocket::bind("198.18.2.3:0"))
        .unwrap()
        .unwrap();
    // B's own kernel sends out of the port's interface: the port must not see that.
    for _ in 0..5 {
        b.send_to(b"from-b", "198.18.2.1:9").unwrap();
    }
    for i in 0..5u8 {
        a.send_to(&[i], "198.18.2.2:4000").unwrap();
    }
    let target = Addr::v4([198, 18, 2, 2]);
    let (echoed, outgoing) = (Cell::new(0), Cell::new(0));
    pump(
        &mut [port as &mut dyn Port],
        Duration::from_secs(3),
        &mut |_, pkt| match udp(pkt.data()) {
            Some(u) if u.dst == target => {
                echoed.set(echoed.get() + 1);
                swap_in_place(pkt);
                Verdict::Tx
            }
            Some(u) if u.src == Addr::v4([198, 18, 2, 3]) => {
                outgoing.set(outgoing.get() + 1);
                Verdict::ToHost
            }
            _ => Verdict::ToHost,
        },
        &|| echoed.get() >= 5,
    );
    // Give stray outgoing frames time to show up before judging.
    pump(
        &mut [port as &mut dyn Port],
        Duration::from_millis(100),
        &mut |_, _| Verdict::ToHost,
        &|| false,
    );
    assert_eq!((echoed.get(), outgoing.get()), (5, 0));
    a.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    for i in 0..5u8 {
        let (len, from) = a.recv_from(&mut buf).expect("echo");
        assert_eq!((&buf[..len], from.port()), (&[i][..], 4000));
    }
    let st = port.stats();
    assert_eq!((st.tx, st.tx_dropped), (5, 0));
}

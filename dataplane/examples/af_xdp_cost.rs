//! The AF_XDP port's own instructions per packet (perf/instructions.sh af_xdp): frames sent into
//! a veth pair in namespaces of its own wait in the socket's receive ring, then go through
//! [`Port::rx_batch`] (bursts of 32, every frame forwarded untouched) and [`Port::flush`]. Run
//! under callgrind with collection only inside those two calls, what is counted per packet is
//! the port in userspace: ring reads, frame views, verdicts, the transmit ring, completions and
//! the fill ring's refill (the kernel's share is not counted). Needs root.
//!
//! Usage: `af_xdp_cost <rounds>` (512 frames a round; prints what it did)

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use dataplane::port::af_xdp::{AfXdpOptions, AfXdpPort, AttachMode};
use dataplane::port::Port;
use dataplane::Verdict;
use testkit::netns::{veth_pair, Netns};
use testkit::sample;

const ROUND: usize = 512;
const BURST: usize = 32;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: af_xdp_cost <rounds>");
            std::process::exit(2);
        });
    let pid = std::process::id();
    let a = Netns::create(&format!("lbcost-{pid}-a")).expect("namespace a");
    let b = Netns::create(&format!("lbcost-{pid}-b")).expect("namespace b");
    let (link_a, link_b) = (format!("lbc{pid}a"), format!("lbc{pid}b"));
    let _veth = veth_pair(&link_a, Some(a.name()), &link_b, Some(b.name())).expect("veth pair");
    let mac = sample::LB_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    a.run("ip", &["link", "set", &link_a, "address", &mac])
        .expect("mac");
    // A veth without a checksum offload to fill in: every frame is sent as written.
    b.run("ethtool", &["-K", &link_b, "tx", "off"])
        .expect("ethtool");
    let opts = AfXdpOptions {
        mode: AttachMode::Native,
        busy_poll: None,
        ..AfXdpOptions::default()
    };
    let mut port = a
        .enter_on_thread(|| AfXdpPort::open(&link_a, 1, opts))
        .expect("enter a")
        .expect("af_xdp on the veth")
        .pop()
        .expect("one queue");
    let vip = Ipv4Addr::new(198, 18, 0, 100);
    port.set_owned(&[IpAddr::V4(vip)]).expect("owned");
    let sender = b
        .enter_on_thread(|| packet_socket(&link_b))
        .expect("enter b");
    let mut frame = [0u8; 64];
    let n = sample::tcp4(
        &mut frame,
        dataplane::flow::Addr::v4([198, 18, 0, 2]),
        dataplane::flow::Addr::v4(vip.octets()),
        40000,
        80,
        0x10,
        4,
    );
    let frame = &frame[..n];
    // Let the link come up: the first frames may be lost while it does.
    std::thread::sleep(Duration::from_millis(200));
    // Called through the trait object as the workers call it (not inlined into this loop), so
    // callgrind can count inside the two calls only.
    let port: &mut dyn Port = std::hint::black_box(&mut port);
    let (mut got_total, mut calls, mut short) = (0usize, 0usize, 0usize);
    for _ in 0..rounds {
        for _ in 0..ROUND {
            // SAFETY: a bound packet socket and a valid buffer.
            unsafe { libc::send(sender.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        }
        // The frames wait in the receive ring once the veth's NAPI has run.
        std::thread::sleep(Duration::from_millis(5));
        let mut got = 0;
        let end = Instant::now() + Duration::from_secs(2);
        while got < ROUND && Instant::now() < end {
            let k = port
                .rx_batch(BURST, &mut |_pkts, verdicts| verdicts.fill(Verdict::Tx))
                .expect("rx");
            port.flush().expect("flush");
            calls += 1;
            if k < BURST {
                short += 1;
            }
            got += k;
        }
        got_total += got;
    }
    let st = port.stats();
    println!(
        "rounds={rounds} frames={got_total} calls={calls} short_calls={short} tx={} tx_dropped={}",
        st.tx, st.tx_dropped
    );
}

/// A packet socket bound to `ifname` that sends whole frames.
fn packet_socket(ifname: &str) -> OwnedFd {
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: we own the new fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).expect("name");
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no interface {ifname}");
    // SAFETY: zeroed is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = index as i32;
    // SAFETY: a valid sockaddr_ll of its own size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    fd
}

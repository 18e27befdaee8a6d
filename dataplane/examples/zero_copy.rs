//! lb's side of the zero-copy benchmark (perf/zero-copy): the DPDK port as a memif server and
//! the real pipeline on one pinned core, with testpmd in `5tswap` mode on the client end. testpmd
//! swaps every frame's MACs, addresses and ports, so a fullnat request lb sends to a backend comes
//! back as the backend's reply, and lb's reply to the client comes back as the client's next
//! request: both directions of established UDP flows, forever.
//!
//! Usage: `zero_copy <frame bytes> <flows> <seconds> <socket> <core> <in flight>`
//!
//! Warm-up: `<in flight>` frames are seeded over `min(flows, in flight)` flows and keep
//! circulating; when `flows` is larger, the other flows are created and confirmed in waves whose
//! frames are let go after their reply, so the conntrack table holds every flow. Then the
//! measured loop runs for `<seconds>`: lb's own worker loop ([`Worker::poll_once`], as a
//! worker thread with `idle = "poll"` runs it: receive a burst, run the pipeline on each frame
//! in its mbuf, transmit the same mbufs, the timers), on the worker's own flow state, which the
//! warm-up filled.
//! Prints one `key=value` line; `measuring` on stderr marks the start of the measured window.
//! `cpu_ns_per_packet` is the thread's CPU time over forwarded packets (empty polls included);
//! `packets_per_busy_turn` the frames received per turn that received any, `empty_turns` the
//! share of turns that received none (the loop reads no clock per turn to time them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use dataplane::conntrack::{Config, Timeouts};
use dataplane::flow::{proto, Addr};
use dataplane::pipeline::process_burst;
use dataplane::port::dpdk::{eal_cleanup, DpdkOptions, DpdkPort};
use dataplane::port::Port;
use dataplane::table::{Mode, RoutingTable};
use dataplane::wire::{self, checksum, Ipv4Fields};
use dataplane::worker::{build_workers, IdlePolicy, Worker, WorkerConfig};
use dataplane::{process, Verdict};
use testkit::sample::{self, CLIENT_MAC as ROUTER_MAC, LB_MAC};

const VIP: [u8; 4] = [198, 18, 0, 100];
const SNAT: [[u8; 4]; 2] = [[198, 18, 0, 2], [198, 18, 0, 3]];
const BURST: usize = 32;

fn table() -> RoutingTable {
    let hosts: Vec<(u8, u32)> = (10..14u8).map(|h| (h, 1)).collect();
    let backends = sample::backends_v4(1, &hosts, 8080);
    let pool = sample::pool(Mode::FullNat, SNAT.iter().map(|a| Addr::v4(*a)).collect());
    let svc = sample::service("bench", Addr::v4(VIP), proto::UDP, (80, 80), pool, backends);
    RoutingTable::new(1, sample::local_v4(), vec![svc]).expect("a valid table")
}

/// Client address and port of flow `i`: 198.19.0.0/16, then the next source port.
fn client(i: usize) -> ([u8; 4], u16) {
    (
        [198, 19, (i >> 8) as u8, i as u8],
        10_000 + (i >> 16) as u16,
    )
}

/// The flow a client-bound frame (lb's reply) belongs to.
fn flow_of_reply(f: &[u8]) -> Option<usize> {
    if f.len() < 38 || f[26..30] != VIP {
        return None;
    }
    let sport = u16::from_be_bytes([f[36], f[37]]);
    Some(
        (usize::from(sport.checked_sub(10_000)?) << 16)
            | usize::from(f[32]) << 8
            | usize::from(f[33]),
    )
}

/// Flow `i`'s request to the VIP, `size` bytes, as testpmd must send it to us: built, then
/// swapped the way 5tswap swaps (so testpmd's swap turns it into the request).
fn seed(i: usize, size: usize) -> Vec<u8> {
    let (ip, sport) = client(i);
    let mut f = vec![0u8; size];
    wire::write_eth(&mut f, LB_MAC, ROUTER_MAC, None, wire::ETHERTYPE_IPV4).expect("room");
    let udp_len = size - 34;
    wire::write_ipv4(
        &mut f[14..],
        &Ipv4Fields {
            src: ip,
            dst: VIP,
            proto: proto::UDP,
            payload_len: udp_len as u16,
            ttl: 64,
            tos: 0,
            id: 1,
            flags_frag: 0x4000,
        },
    )
    .expect("room");
    wire::write_udp(&mut f[34..], sport, 80, (udp_len - 8) as u16).expect("room");
    let c = checksum::l4(&Addr::v4(ip), &Addr::v4(VIP), proto::UDP, &f[34..]);
    f[40..42].copy_from_slice(&c.to_be_bytes());
    for (a, b, n) in [(0, 6, 6), (26, 30, 4), (34, 36, 2)] {
        let (x, y) = (f[a..a + n].to_vec(), f[b..b + n].to_vec());
        f[a..a + n].copy_from_slice(&y);
        f[b..b + n].copy_from_slice(&x);
    }
    f
}

fn thread_cpu() -> Duration {
    let mut ts = libc_timespec();
    // SAFETY: a valid timespec to write; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn libc_timespec() -> libc::timespec {
    libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, size, flows, secs, socket, core, inflight] = args.as_slice() else {
        eprintln!("usage: zero_copy <frame bytes> <flows> <seconds> <socket> <core> <in flight>");
        std::process::exit(2);
    };
    let num = |s: &str| s.parse::<usize>().expect("a number");
    let (size, flows, secs, core, inflight) = (
        num(size).clamp(64, 1500),
        num(flows).max(1),
        num(secs),
        num(core),
        num(inflight),
    );
    let opts = DpdkOptions {
        eal_args: vec![
            "--no-pci".into(),
            "-m".into(),
            "1024".into(),
            "-l".into(),
            core.to_string(),
        ],
        device: "net_memif0".into(),
        vdev_args: Some(format!(
            "role=server,socket={socket},socket-abstract=yes,rsize=12"
        )),
        rx_descriptors: 1024,
        tx_descriptors: 1024,
        mempool_size: 32767,
        hugepages: false,
        mtu: 0,
    };
    let port = DpdkPort::open(&opts, 1)
        .expect("open the memif port")
        .pop()
        .expect("one queue");
    dataplane::worker::pin_to_core(core).expect("pin");
    let end = Instant::now() + Duration::from_secs(30);
    while !port.link_up() {
        assert!(Instant::now() < end, "testpmd never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let tables = Arc::new(ArcSwap::from_pointee(table()));
    let mut cfg = WorkerConfig::new(Config {
        capacity: (4 * flows).next_power_of_two().max(1 << 12),
        embryonic_budget: (2 * flows).next_power_of_two().max(1 << 10),
        // A wave's flow sees one request and one reply; lb confirms a UDP flow only at the
        // client's next datagram, so without this the wave flows would expire 5 s after the
        // warm-up (the default `udp_unconfirmed`), inside a longer measurement: 73.5k of 100k
        // flows were left at the end of a 5-s run. The table holds every flow for the run.
        timeouts: Timeouts {
            udp_unconfirmed: 600_000,
            ..Timeouts::default()
        },
    });
    cfg.idle = IdlePolicy::Poll;
    let ports: Vec<Box<dyn Port>> = vec![Box::new(port)];
    let mut worker: Worker = build_workers(ports, tables.clone(), &cfg)
        .expect("one worker")
        .pop()
        .expect("one worker");
    let table = tables.load_full();
    // Its clock starts with the worker's (within a millisecond; flows live for seconds).
    let started = Instant::now();
    let (st, ports) = worker.parts_mut();
    let port = &mut ports[0];
    let now = |s: &Instant| s.elapsed().as_millis() as u64;

    // The peer takes frames once it polls: until then a memif transmit finds no room. Probe
    // with flow 0 until one comes back.
    let mut back = false;
    while !back {
        assert!(Instant::now() < end, "testpmd never reflected a frame");
        let _ = port.tx_frame(&seed(0, size));
        port.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(10));
        port.rx_burst(BURST, &mut |_| {
            back = true;
            Verdict::Drop(dataplane::DropReason::NoFlow)
        })
        .expect("rx");
    }
    // Warm-up: the circulating frames first, then the other flows in waves of at most
    // `inflight` frames, each let go once its flow is confirmed (lost ones are sent again).
    let steady = flows.min(inflight);
    let mut confirmed = vec![false; flows];
    let mut n_confirmed = 0usize;
    let mut seeded = 0usize;
    let mut next_wave = steady;
    let mut outstanding = 0usize;
    let mut progress = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while n_confirmed < flows || seeded < inflight {
        assert!(
            Instant::now() < deadline,
            "warm-up: {n_confirmed} of {flows} flows confirmed after 120 s"
        );
        let mut sent = 0;
        while seeded < inflight
            && sent < BURST
            && port.tx_frame(&seed(seeded % steady, size)).is_ok()
        {
            seeded += 1;
            sent += 1;
        }
        while next_wave < flows && outstanding < inflight && sent < BURST {
            if !confirmed[next_wave] {
                if port.tx_frame(&seed(next_wave, size)).is_err() {
                    break;
                }
                outstanding += 1;
                sent += 1;
            }
            next_wave += 1;
        }
        if next_wave == flows && progress.elapsed() > Duration::from_millis(500) {
            // Frames were lost (a full ring): seed the flows still unconfirmed again.
            next_wave = steady;
            outstanding = 0;
            progress = Instant::now();
        }
        let t = now(&started);
        port.rx_burst(BURST, &mut |pkt| {
            let v = process(st, &table, t, pkt);
            let Some(i) = flow_of_reply(pkt.data()).filter(|&i| v == Verdict::Tx && i < flows)
            else {
                return v;
            };
            if !confirmed[i] {
                confirmed[i] = true;
                n_confirmed += 1;
                progress = Instant::now();
            }
            if i < steady {
                return v;
            }
            // A wave's frame has done its job: let it go.
            outstanding = outstanding.saturating_sub(1);
            Verdict::Drop(dataplane::DropReason::NoFlow)
        })
        .expect("rx");
        port.flush().expect("flush");
    }
    // Let the circulation settle.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        let t = now(&started);
        port.rx_batch(BURST, &mut |pkts, verdicts| {
            process_burst(st, &table, t, pkts, verdicts)
        })
        .expect("rx");
        port.flush().expect("flush");
    }

    eprintln!("measuring");
    let before = worker.snapshot();
    let warm_flows = before.flows;
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs(secs as u64);
    let mut turns = 0u64;
    // Turns that received frames, counted instead of timed: a clock read per turn (two, for a
    // turn's wall time) would cost lb's side what neither the worker thread nor testpmd pays.
    let mut busy = 0u64;
    loop {
        turns += 1;
        if turns % 1024 == 0 && Instant::now() >= stop {
            break;
        }
        busy += u64::from(worker.poll_once() > 0);
    }
    let wall = t0.elapsed();
    let cpu = thread_cpu() - cpu0;
    let after = worker.snapshot();
    let forwarded = after.counters.tx_packets - before.counters.tx_packets;
    let rx = after.port.rx - before.port.rx;
    let pps = forwarded as f64 / wall.as_secs_f64();
    println!(
        "size={size} flows={flows} in_flight={inflight} circulating_flows={steady} \
         forwarded_pps={pps:.0} rx={rx} forwarded={forwarded} tx_dropped={} \
         cpu_ns_per_packet={:.1} packets_per_busy_turn={:.1} empty_turns={:.3} \
         conntrack_flows={} warm_flows={warm_flows} seconds={:.2}",
        after.port.tx_dropped - before.port.tx_dropped,
        cpu.as_nanos() as f64 / forwarded.max(1) as f64,
        rx as f64 / busy.max(1) as f64,
        (turns - busy) as f64 / turns.max(1) as f64,
        after.flows,
        wall.as_secs_f64()
    );
    drop(worker);
    eal_cleanup().expect("EAL cleanup");
}

//! The DPDK port's own instructions per packet (perf/instructions.sh dpdk): `turns` bursts of 32
//! through [`Port::rx_batch`] and [`Port::flush`] on DPDK's `net_null` device, whose receive
//! hands out fresh mbufs and whose transmit frees them, with a callback that forwards every
//! frame untouched. Run under callgrind with two turn counts and subtracted, what is left per
//! packet is the port (burst bookkeeping, frame views, verdicts, bounds, transmit queue) plus
//! net_null's own receive and transmit, a fixed cost the same for every version of the port.
//!
//! With `copy` or `lend` every frame leaves by a second `net_null` device instead, as a two-armed
//! worker sends a frame that changes interface: copied into a fresh mbuf of the second device
//! ([`Port::tx_frame`]), or lent, the mbuf itself ([`Port::take_lent`], [`Port::tx_lent`]).
//!
//! With `worker` the real worker loop runs instead ([`Worker::poll_once`], built by
//! [`build_workers`] over queue 0 of the device): every frame is a dr packet of one of
//! [`dataplane::worker::BURST`] (64) established TCP flows (dr rewrites only the MACs, and
//! net_null's receive hands back the mbufs its transmit just freed, with their bytes, so the same
//! frames, one worker burst, go round forever). The
//! SYNs and then the ACKs that establish the flows are put into the pool by queue 1 of the same
//! device (`tx_frame`, `flush`: net_null's transmit frees them to the pool's cache, where the
//! next receive takes them). perf/instructions.sh `dpdk-worker` counts it whole and in parts:
//! the pipeline (the burst callback), the worker's timers, net_null.
//!
//! Usage: `port_cost <turns> [copy|lend|worker]`

use dataplane::port::dpdk::{eal_cleanup, DpdkOptions, DpdkPort};
use dataplane::port::Port;
use dataplane::worker::{build_workers, IdlePolicy, WorkerConfig};
use dataplane::Verdict;

const BURST: usize = 32;
/// The worker's burst: its mode's frames and flows, one whole burst.
const WORKER_BURST: usize = dataplane::worker::BURST;

/// A `net_null` device of 64-byte frames whose receive does not write them (`copy=0`).
fn opts(device: &str) -> DpdkOptions {
    DpdkOptions {
        eal_args: vec!["--no-pci".into(), "-m".into(), "256".into()],
        device: device.into(),
        vdev_args: Some("size=64,copy=0".into()),
        rx_descriptors: 1024,
        tx_descriptors: 1024,
        mempool_size: 4095,
        hugepages: false,
        mtu: 0,
    }
}

fn main() {
    let turns: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: port_cost <turns> [copy|lend|worker]");
            std::process::exit(2);
        });
    let cross = std::env::args().nth(2);
    if cross.as_deref() == Some("worker") {
        worker(turns);
        return;
    }
    let open = |device: &str| {
        DpdkPort::open(&opts(device), 1)
            .expect("open net_null")
            .pop()
            .expect("one queue")
    };
    let mut port = open("net_null0");
    let mut forwarded = 0usize;
    if let Some(how) = cross {
        let lend = match how.as_str() {
            "lend" => true,
            "copy" => false,
            _ => {
                eprintln!("usage: port_cost <turns> [copy|lend|worker]");
                std::process::exit(2);
            }
        };
        let mut other = open("net_null1");
        let mut lent = 0usize;
        for _ in 0..turns {
            port.rx_batch(BURST, &mut |pkts, verdicts| {
                for (p, v) in pkts.iter().zip(verdicts.iter_mut()) {
                    *v = if lend {
                        lent += 1;
                        Verdict::Lent
                    } else {
                        let _ = other.tx_frame(p.data());
                        Verdict::Drop(dataplane::DropReason::Unsupported)
                    };
                }
                forwarded += pkts.len();
            })
            .expect("rx");
            for _ in 0..std::mem::take(&mut lent) {
                let Some(frame) = port.take_lent() else {
                    break;
                };
                let _ = other.tx_lent(frame);
            }
            port.flush().expect("flush");
            other.flush().expect("flush");
        }
        let st = other.stats();
        println!(
            "turns={turns} forwarded={forwarded} crossed_tx={} tx_dropped={}",
            st.tx, st.tx_dropped
        );
        assert_eq!(
            st.tx as usize,
            turns * BURST,
            "every frame left by the other"
        );
        drop((port, other));
        eal_cleanup().expect("EAL cleanup");
        return;
    }
    for _ in 0..turns {
        port.rx_batch(BURST, &mut |pkts, verdicts| {
            for (p, v) in pkts.iter().zip(verdicts.iter_mut()) {
                *v = if p.is_empty() {
                    Verdict::Drop(dataplane::DropReason::Truncated)
                } else {
                    Verdict::Tx
                };
            }
            forwarded += pkts.len();
        })
        .expect("rx");
        port.flush().expect("flush");
    }
    let st = port.stats();
    println!(
        "turns={turns} forwarded={forwarded} rx={} tx={} tx_dropped={}",
        st.rx, st.tx, st.tx_dropped
    );
    assert_eq!(forwarded, turns * BURST, "net_null hands out whole bursts");
    drop(port);
    eal_cleanup().expect("EAL cleanup");
}

/// `turns` turns of the real worker loop over queue 0 of a `net_null` device, its
/// [`WORKER_BURST`] frames those of established dr flows (see the module doc).
fn worker(turns: usize) {
    use dataplane::conntrack::{Config, Timeouts};
    use dataplane::flow::Addr;
    use std::sync::Arc;
    use testkit::sample;

    let mut queues = DpdkPort::open(&opts("net_null0"), 2).expect("open net_null");
    let mut feed = queues.pop().expect("queue 1");
    let port = queues.pop().expect("queue 0");
    let table = Arc::new(arc_swap::ArcSwap::from_pointee(sample::table(1, 16)));
    let mut cfg = WorkerConfig::new(Config {
        capacity: 1 << 12,
        embryonic_budget: 1 << 10,
        timeouts: Timeouts::default(),
    });
    cfg.idle = IdlePolicy::Poll;
    let mut w = build_workers(vec![Box::new(port)], table, &cfg)
        .expect("one worker")
        .pop()
        .expect("one worker");
    let client = |i: usize| Addr::v4([198, 19, 0, i as u8]);
    // SYNs (padded to net_null's 64 bytes), then the ACKs (10 bytes of data: 64) that confirm
    // the flows; from then on the ACKs go round.
    for (flags, payload) in [(0x02, 0), (0x10, 10)] {
        for i in 0..WORKER_BURST {
            let mut f = [0u8; 64];
            sample::tcp4(&mut f, client(i), sample::VIP_DR, 40000, 80, flags, payload);
            feed.tx_frame(&f).expect("an mbuf");
        }
        feed.flush().expect("flush");
        assert_eq!(
            w.poll_once(),
            WORKER_BURST,
            "net_null hands out whole bursts"
        );
    }
    for _ in 0..turns {
        w.poll_once();
    }
    let snap = w.snapshot();
    println!(
        "turns={turns} rx={} tx={} tx_packets={} rx_packets={} flows={}",
        snap.port.rx, snap.port.tx, snap.counters.tx_packets, snap.counters.rx_packets, snap.flows
    );
    assert_eq!(
        snap.counters.tx_packets as usize,
        (turns + 2) * WORKER_BURST,
        "every frame forwarded: {snap:?}"
    );
    drop((w, feed));
    eal_cleanup().expect("EAL cleanup");
}

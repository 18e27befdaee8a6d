//! The DPDK port's own instructions per packet (perf/instructions.sh dpdk): `turns` bursts of 32
//! through [`Port::rx_batch`] and [`Port::flush`] on DPDK's `net_null` device, whose receive
//! hands out fresh mbufs and whose transmit frees them, with a callback that forwards every
//! frame untouched. Run under callgrind with two turn counts and subtracted, what is left per
//! packet is the port (burst bookkeeping, frame views, verdicts, bounds, transmit queue) plus
//! net_null's own receive and transmit, a fixed cost the same for every version of the port.
//!
//! Usage: `port_cost <turns>`

use dataplane::port::dpdk::{eal_cleanup, DpdkOptions, DpdkPort};
use dataplane::port::Port;
use dataplane::Verdict;

const BURST: usize = 32;

fn main() {
    let turns: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: port_cost <turns>");
            std::process::exit(2);
        });
    let opts = DpdkOptions {
        eal_args: vec!["--no-pci".into(), "-m".into(), "256".into()],
        device: "net_null0".into(),
        vdev_args: Some("size=64,copy=0".into()),
        rx_descriptors: 1024,
        tx_descriptors: 1024,
        mempool_size: 4095,
        hugepages: false,
        mtu: 0,
    };
    let mut port = DpdkPort::open(&opts, 1)
        .expect("open net_null")
        .pop()
        .expect("one queue");
    let mut forwarded = 0usize;
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

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
//! Usage: `port_cost <turns> [copy|lend]`

use dataplane::port::dpdk::{eal_cleanup, DpdkOptions, DpdkPort};
use dataplane::port::Port;
use dataplane::Verdict;

const BURST: usize = 32;

fn main() {
    let turns: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: port_cost <turns> [copy|lend]");
            std::process::exit(2);
        });
    let cross = std::env::args().nth(2);
    let opts = |device: &str| DpdkOptions {
        eal_args: vec!["--no-pci".into(), "-m".into(), "256".into()],
        device: device.into(),
        vdev_args: Some("size=64,copy=0".into()),
        rx_descriptors: 1024,
        tx_descriptors: 1024,
        mempool_size: 4095,
        hugepages: false,
        mtu: 0,
    };
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
                eprintln!("usage: port_cost <turns> [copy|lend]");
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

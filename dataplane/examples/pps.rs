//! Drives the real pipeline over synthetic traffic without any port, for instruction counting
//! (`perf/instructions.sh` runs it under callgrind) and quick profiling.
//!
//! Usage: `pps <fullnat|ipip> <established|new> <packets>`
//!
//! `established`: every flow's handshake first (the client's SYN, for fullnat the backend's
//! SYN+ACK, then the client's ACKs), so the counted packets belong to established, confirmed
//! flows. `new`: a SYN of a new flow per packet.

use dataplane::conntrack::{Config, Timeouts};
use dataplane::flow::Addr;
use dataplane::{process, PacketBuf, RoutingTable, Verdict, WorkerState};
use testkit::sample;

const FLOWS: usize = 1024;
const HEADROOM: usize = 128;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, kind, packets) = match args.as_slice() {
        [_, m, k, n] => (m.as_str(), k.as_str(), n.parse::<usize>().unwrap_or(0)),
        _ => {
            eprintln!("usage: pps <fullnat|ipip> <established|new> <packets>");
            std::process::exit(2);
        }
    };
    let vip = if mode == "ipip" {
        sample::VIP_IPIP
    } else {
        sample::VIP_FULLNAT
    };
    let table = sample::table(1, 16);
    // A fixed conntrack seed: callgrind counts must repeat exactly from run to run.
    let mut st = WorkerState::with_seed(
        0,
        1,
        Config {
            capacity: 1 << 16,
            embryonic_budget: 1 << 14,
            timeouts: Timeouts::default(),
        },
        1,
    );
    let client = |i: usize| Addr::v4([198, 19, (i >> 8) as u8, i as u8]);
    let mut syn = vec![[0u8; 256]; FLOWS];
    let mut ack = vec![[0u8; 256]; FLOWS];
    let mut lens = vec![0usize; FLOWS];
    for i in 0..FLOWS {
        sample::tcp4(&mut syn[i], client(i), vip, 40000, 80, 0x02, 0);
        lens[i] = sample::tcp4(&mut ack[i], client(i), vip, 40000, 80, 0x10, 64);
    }
    let mut buf = [0u8; 2048];
    // Copies the frame into the receive buffer, as a port would, and runs it through.
    let mut run = |frame: &[u8], len: usize, st: &mut WorkerState, now: u64| -> Verdict {
        rx(&mut buf, frame, len, st, &table, now)
    };
    let mut tx = 0usize;
    if kind == "new" {
        for n in 0..packets {
            let i = n % FLOWS;
            let mut f = syn[i];
            // A fresh source port per packet makes every SYN a new flow.
            f[34..36].copy_from_slice(&((n as u16) | 1024).to_be_bytes());
            let c = u16::from_be_bytes([f[50], f[51]]);
            let c = dataplane::wire::checksum::update16(c, 40000, (n as u16) | 1024);
            f[50..52].copy_from_slice(&c.to_be_bytes());
            tx += usize::from(run(&f, 54, &mut st, n as u64) == Verdict::Tx);
        }
    } else {
        let mut out = [0u8; 2048];
        let mut reply = [0u8; 256];
        for f in &syn {
            rx(&mut out, f, 54, &mut st, &table, 0);
            if mode != "ipip" {
                // The backend's SYN+ACK to the rewritten SYN: with the client's ACK that
                // follows, the flow is established and confirmed, as a real one is.
                let o = &out[HEADROOM..HEADROOM + 54];
                let ip = |i: usize| Addr::v4([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                let port = |i: usize| u16::from_be_bytes([o[i], o[i + 1]]);
                let n = sample::tcp4(&mut reply, ip(30), ip(26), port(36), port(34), 0x12, 0);
                rx(&mut out, &reply, n, &mut st, &table, 0);
            }
        }
        for n in 0..packets {
            let i = n % FLOWS;
            tx += usize::from(run(&ack[i], lens[i], &mut st, 1) == Verdict::Tx);
        }
    }
    // Established runs must leave no flow mid-handshake (unconfirmed).
    println!(
        "{mode} {kind}: {packets} packets, {tx} transmitted, {} flows unconfirmed",
        st.ct.embryonic()
    );
}

/// Copies `frame` into `buf` behind the headroom, as a port's receive would, and processes it.
fn rx(
    buf: &mut [u8],
    frame: &[u8],
    len: usize,
    st: &mut WorkerState,
    table: &RoutingTable,
    now: u64,
) -> Verdict {
    buf[HEADROOM..HEADROOM + len].copy_from_slice(&frame[..len]);
    let mut p = PacketBuf::new(buf, HEADROOM, len);
    process(st, table, now, &mut p)
}

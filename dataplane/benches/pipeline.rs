//! Packets per second through `process()` for established and new flows, fullnat and dsr-ipip,
//! and through `process_burst` (bursts of 32, as the worker runs them) for established flows;
//! `fullnat-100k`, `dsr-ipip-100k`: the established rows with 100 000 flows, a table far larger than the cache,
//! where one packet at a time waits for its slot and a burst prefetches them.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::conntrack::{Config, Timeouts};
use dataplane::flow::Addr;
use dataplane::pipeline::process_burst;
use dataplane::{process, DropReason, PacketBuf, Verdict, WorkerState};
use testkit::sample;

const FLOWS: usize = 1024;
const HEADROOM: usize = 128;
const BURST: usize = 32;

fn state() -> WorkerState {
    WorkerState::new(
        0,
        1,
        Config {
            capacity: 1 << 20,
            embryonic_budget: 1 << 18,
            timeouts: Timeouts::default(),
        },
    )
}

fn client(i: usize) -> Addr {
    Addr::v4([198, 19, (i >> 8) as u8, i as u8])
}

/// Flow `i`'s source port: past 65 536 flows the clients' addresses repeat with another port.
fn client_port(i: usize) -> u16 {
    40000 + (i >> 16) as u16
}

fn bench_mode(c: &mut Criterion, name: &str, vip: Addr, flows: usize) {
    let table = sample::table(1, 16);
    let mut buf = [0u8; 2048];
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));

    let mut st = state();
    let mut frames = Vec::with_capacity(flows);
    for i in 0..flows {
        let mut f = [0u8; 256];
        let n = sample::tcp4(&mut f, client(i), vip, client_port(i), 80, 0x02, 0);
        buf[HEADROOM..HEADROOM + n].copy_from_slice(&f[..n]);
        process(
            &mut st,
            &table,
            0,
            &mut PacketBuf::new(&mut buf, HEADROOM, n),
        );
        if vip == sample::VIP_FULLNAT {
            // The backend's SYN+ACK to the rewritten SYN: with the client's ACKs that follow,
            // the flow is established and confirmed, as a real one is.
            let o = &buf[HEADROOM..HEADROOM + 54];
            let ip = |i: usize| Addr::v4([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            let port = |i: usize| u16::from_be_bytes([o[i], o[i + 1]]);
            let (src, dst, sport, dport) = (ip(30), ip(26), port(36), port(34));
            let n = sample::tcp4(&mut f, src, dst, sport, dport, 0x12, 0);
            buf[HEADROOM..HEADROOM + n].copy_from_slice(&f[..n]);
            process(
                &mut st,
                &table,
                0,
                &mut PacketBuf::new(&mut buf, HEADROOM, n),
            );
        }
        let n = sample::tcp4(&mut f, client(i), vip, client_port(i), 80, 0x10, 64);
        frames.push((f, n));
    }
    let mut i = 0usize;
    g.bench_function("established", |b| {
        b.iter(|| {
            let (f, n) = &frames[i % flows];
            i += 1;
            buf[HEADROOM..HEADROOM + n].copy_from_slice(&f[..*n]);
            process(
                &mut st,
                &table,
                1,
                &mut PacketBuf::new(&mut buf, HEADROOM, *n),
            )
        })
    });

    // The same frames, 32 per `process_burst` call.
    let mut bufs = [[0u8; 512]; BURST];
    let mut verdicts = [Verdict::Drop(DropReason::Unsupported); BURST];
    let mut k = 0usize;
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function("established-burst32", |b| {
        b.iter(|| {
            let mut lens = [0usize; BURST];
            for (buf, len) in bufs.iter_mut().zip(lens.iter_mut()) {
                let (f, n) = &frames[k % flows];
                k += 1;
                buf[HEADROOM..HEADROOM + 128].copy_from_slice(&f[..128]);
                *len = *n;
            }
            let mut i = 0;
            let mut pkts = bufs.each_mut().map(|b| {
                i += 1;
                PacketBuf::new(b, HEADROOM, lens[i - 1])
            });
            process_burst(&mut st, &table, 1, &mut pkts, &mut verdicts);
            verdicts[0]
        })
    });
    g.throughput(Throughput::Elements(1));
    if flows != FLOWS {
        g.finish();
        return;
    }

    let mut st = state();
    let mut n = 0u64;
    g.bench_function("new-flow", |b| {
        b.iter(|| {
            n += 1;
            let mut f = [0u8; 64];
            let len = sample::tcp4(
                &mut f,
                client(n as usize),
                vip,
                (n >> 16) as u16 | 1024,
                80,
                0x02,
                0,
            );
            buf[HEADROOM..HEADROOM + len].copy_from_slice(&f[..len]);
            // Time moves 1 ms per SYN so unanswered flows expire and the table never fills.
            process(
                &mut st,
                &table,
                n,
                &mut PacketBuf::new(&mut buf, HEADROOM, len),
            )
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    bench_mode(c, "fullnat", sample::VIP_FULLNAT, FLOWS);
    bench_mode(c, "dsr-ipip", sample::VIP_IPIP, FLOWS);
    bench_mode(c, "fullnat-100k", sample::VIP_FULLNAT, 100_000);
    bench_mode(c, "dsr-ipip-100k", sample::VIP_IPIP, 100_000);
}

criterion_group!(benches, pipeline);
criterion_main!(benches);

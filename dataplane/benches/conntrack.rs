//! Conntrack lookup and insert cost in a table filled to its practical maximum.
//!
//! The table (1M slots) is filled with single-key, confirmed UDP flows until the first insert fails, then on until
//! 1 insert in 100 fails; both fill factors are printed, and lookups (hit and miss), insert+remove
//! pairs and lookup+observe are timed in that table.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dataplane::conntrack::{Config, Conntrack, Dir, FlowState, Timeouts};
use dataplane::flow::{proto, Addr, FlowKey};

const CAPACITY: usize = 1 << 20;
const UDP: FlowState = FlowState::Udp { replied: false };

/// Distinct client keys: `n` spreads over source address and port.
fn key(n: u32) -> FlowKey {
    let b = n.to_be_bytes();
    FlowKey {
        src: Addr::v4([10, b[0], b[1], b[2]]),
        dst: Addr::v4([192, 0, 2, 1]),
        sport: 1024 + u16::from(b[3]),
        dport: 53,
        proto: proto::UDP,
    }
}

/// The client's second datagram: a confirmed flow is not held to the unconfirmed UDP budget.
fn confirm(ct: &mut Conntrack<u64>, flow: u32) {
    ct.observe(flow, Dir::Original, 0, 0);
}

/// A table filled until 1 insert in 100 fails, the keys it holds, and keys it does not hold.
fn filled() -> (Conntrack<u64>, Vec<FlowKey>, Vec<FlowKey>) {
    let cfg = Config {
        capacity: CAPACITY,
        embryonic_budget: CAPACITY / 8,
        timeouts: Timeouts::default(),
    };
    let mut ct = Conntrack::new(cfg);
    let mut held = Vec::with_capacity(CAPACITY);
    let mut n = 0u32;
    loop {
        let k = key(n);
        n += 1;
        match ct
            .insert(0, (&k, u64::from(n)), None, UDP)
            .map(|f| confirm(&mut ct, f))
        {
            Ok(()) => held.push(k),
            Err(_) => break,
        }
    }
    let first_failure = ct.len();
    // How much further the table goes while fewer than 1 in 100 inserts fail.
    let (mut tried, mut failed) = (0u32, 0u32);
    let mut at_one_percent = first_failure;
    while failed * 100 <= tried.max(100) {
        let k = key(n);
        n += 1;
        tried += 1;
        match ct
            .insert(0, (&k, u64::from(n)), None, UDP)
            .map(|f| confirm(&mut ct, f))
        {
            Ok(()) => held.push(k),
            Err(_) => failed += 1,
        }
        if failed * 100 <= tried {
            at_one_percent = ct.len();
        }
    }
    println!(
        "conntrack fill: first failed insert at {first_failure}/{CAPACITY} = {:.1} %; \
         inserts fail 1 in 100 at {at_one_percent} = {:.1} %",
        100.0 * first_failure as f64 / CAPACITY as f64,
        100.0 * at_one_percent as f64 / CAPACITY as f64,
    );
    let missing = (n..n + (1 << 16)).map(key).collect();
    // Visit held keys in a scattered order so consecutive lookups do not share cache lines.
    let mut order: Vec<FlowKey> = Vec::with_capacity(held.len());
    let step = 7919; // prime, coprime with any length that is not its multiple
    let len = held.len();
    let mut i = 0;
    for _ in 0..len {
        order.push(held[i]);
        i = (i + step) % len;
    }
    (ct, order, missing)
}

fn bench(c: &mut Criterion) {
    let (mut ct, held, missing) = filled();
    let mut i = 0;
    c.bench_function("conntrack/lookup_hit", |b| {
        b.iter(|| {
            i = (i + 1) % held.len();
            let h = ct.lookup(black_box(&held[i]), 1).expect("held key");
            black_box(*ct.value(h.slot))
        })
    });
    let mut j = 0;
    c.bench_function("conntrack/lookup_miss", |b| {
        b.iter(|| {
            j = (j + 1) % missing.len();
            black_box(ct.lookup(black_box(&missing[j]), 1))
        })
    });
    let mut k = 0;
    let mut full = 0u64;
    let mut total = 0u64;
    c.bench_function("conntrack/insert_remove", |b| {
        b.iter(|| {
            k = (k + 1) % missing.len();
            total += 1;
            match ct.insert(1, (black_box(&missing[k]), 7), None, UDP) {
                Ok(f) => ct.remove(f),
                Err(_) => full += 1,
            }
        })
    });
    println!("insert_remove: {full} of {total} inserts found no room");
    let mut m = 0;
    c.bench_function("conntrack/lookup_observe_hit", |b| {
        b.iter(|| {
            m = (m + 1) % held.len();
            let h = ct.lookup(&held[m], 1).expect("held key");
            black_box(ct.observe(h.flow, Dir::Original, 0, 1))
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);

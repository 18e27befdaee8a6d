//! Build time of weighted Maglev tables: what the control plane pays on every backend change.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dataplane::maglev::{build, MaglevBackend, DEFAULT_TABLE_SIZE};

/// `n` backends with weights 1..=100 from a fixed LCG, so every run measures the same input.
fn backends(n: usize) -> Vec<MaglevBackend> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            MaglevBackend {
                key: format!("198.18.{}.{}:8080", i / 250, i % 250).into_bytes(),
                weight: (state >> 33) as u32 % 100 + 1,
            }
        })
        .collect()
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    for n in [100, 1000] {
        let b = backends(n);
        group.bench_function(format!("{n}_weighted_backends_65537_slots"), |bench| {
            bench.iter(|| build(black_box(&b), black_box(DEFAULT_TABLE_SIZE)))
        });
    }
    group.finish();

    let table = build(&backends(1000), DEFAULT_TABLE_SIZE).expect("benchmark input is valid");
    let hashes: Vec<u64> = (0..1024u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    c.bench_function("maglev_lookup_1024_hashes", |bench| {
        bench.iter(|| {
            let mut hits = 0u32;
            for &h in black_box(&hashes) {
                hits += u32::from(table.lookup(h).is_some());
            }
            hits
        })
    });
}

criterion_group!(benches, bench_build);
criterion_main!(benches);

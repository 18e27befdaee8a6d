//! Builds the Maglev table of 1000 weighted backends (the `maglev` bench's input) `n` times and
//! prints the CPU time per build: on a shared machine the thread's CPU time moves far less than
//! wall time does. `perf/instructions.sh maglev` counts its instructions under callgrind.
//!
//! Usage: `maglev_build [n] [backends]` (defaults 20, 1000).

use dataplane::maglev::{build, MaglevBackend, DEFAULT_TABLE_SIZE};

/// `n` backends with weights 1..=100 from a fixed LCG, as `benches/maglev.rs` makes them.
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

/// This thread's CPU time in nanoseconds.
fn cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let count: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let b = backends(count);
    let mut best = u128::MAX;
    let mut sum = 0u128;
    let mut check = 0u64;
    for _ in 0..n.max(1) {
        let t = cpu_ns();
        let table = build(&b, DEFAULT_TABLE_SIZE).expect("valid input");
        let d = cpu_ns() - t;
        best = best.min(d);
        sum += d;
        check = table.slots().iter().fold(0, |h: u64, &s| {
            h.wrapping_mul(31).wrapping_add(u64::from(s))
        });
    }
    println!(
        "maglev build, {count} weighted backends, M = {DEFAULT_TABLE_SIZE}: best {:.3} ms, mean {:.3} ms CPU over {} builds (table checksum {check:x})",
        best as f64 / 1e6,
        sum as f64 / 1e6 / n.max(1) as f64,
        n.max(1)
    );
}

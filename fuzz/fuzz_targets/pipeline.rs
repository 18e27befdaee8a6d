//! Feeds sequences of arbitrary frames through the whole pipeline, with one worker state per
//! input so later frames can hit the flows earlier ones created (conntrack, rewrites, ICMP errors).
//!
//! Input: frames separated by a 2-byte big-endian length prefix; the sample table has a service
//! per forwarding mode.
#![no_main]

use std::sync::OnceLock;

use dataplane::conntrack::{Config, Timeouts};
use dataplane::{process, PacketBuf, RoutingTable, Verdict, WorkerState};
use testkit::sample;
use libfuzzer_sys::fuzz_target;

const HEAD: usize = 128;

/// Built once: six Maglev tables per input would make the fuzzer crawl.
static TABLE: OnceLock<RoutingTable> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let table = TABLE.get_or_init(|| sample::table(1, 3));
    let mut st = WorkerState::new(
        0,
        2,
        Config {
            capacity: 64,
            embryonic_budget: 16,
            timeouts: Timeouts::default(),
        },
    );
    let mut buf = vec![0u8; HEAD + 2048];
    let mut rest = data;
    let mut now = 0;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])) % 1600;
        let frame = &rest[2..(2 + len).min(rest.len())];
        rest = &rest[2 + frame.len()..];
        buf[HEAD..HEAD + frame.len()].copy_from_slice(frame);
        let mut pkt = PacketBuf::new(&mut buf, HEAD, frame.len());
        let v = process(&mut st, table, now, &mut pkt);
        if v == Verdict::Tx {
            // Whatever we transmit must at least be a frame we can parse again.
            assert!(pkt.len() >= 14, "transmitted a runt: {}", pkt.len());
        }
        now += 1000;
    }
});

//! Feeds arbitrary frames to the per-packet classifier and the checks that follow it.
//!
//! Under `cfg(fuzzing)` the IPv4 header checksum is not verified, so inputs reach the transport,
//! L4 checksum and ICMP quote code without the fuzzer having to solve a checksum.
#![no_main]

use dataplane::wire::{parse, parse_icmp_quote, verify_l4_checksum};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    if let Ok(p) = parse(frame) {
        // The pipeline slices with these offsets, so they must hold for every accepted frame.
        assert!(p.l3_off <= p.l4_off && p.l4_off <= p.l3_end && p.l3_end <= frame.len());
        let _ = verify_l4_checksum(frame, &p);
        if let Some(q) = parse_icmp_quote(frame, &p) {
            assert!(q.l3_off <= q.l4_off && q.l4_off <= q.end && q.end <= p.l3_end);
        }
    }
});

//! Drives the L7 connection machine with arbitrary client and backend byte streams, closes and
//! timer ticks, through the same harness its tests use (a fake router, a backend that answers
//! only what the input says). Checks: no panic, no hang (every call returns), buffers bounded,
//! nothing written to the client after it was closed.
//!
//! Input: a sequence of (op byte, 2-byte length, bytes) records; op % 5 picks client bytes,
//! backend bytes, a backend close, a client close, or a clock step of `length` ms.
#![no_main]

#[path = "../../dataplane/tests/l7_harness/mod.rs"]
#[allow(dead_code)]
mod l7_harness;

use dataplane::l7::conn::ConnConfig;
use l7_harness::{FakeRouter, Harness, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new(ConnConfig::default(), FakeRouter { backends: 2 }, Reply::Silent);
    let mut rest = data;
    while rest.len() >= 3 {
        let (op, len) = (rest[0], usize::from(u16::from_be_bytes([rest[1], rest[2]])));
        let bytes = &rest[3..(3 + len).min(rest.len())];
        rest = &rest[3 + bytes.len()..];
        let closed = h.client_closed;
        let written = h.to_client.len();
        match op % 5 {
            0 => h.client(bytes),
            1 => h.backend(bytes),
            2 => h.backend_close(),
            3 => h.client_close(),
            _ => {
                let now = h.now + len as u64;
                h.advance(now);
            }
        }
        assert!(h.conn.buffered() <= 4 * ConnConfig::default().buffer);
        if closed {
            assert_eq!(h.to_client.len(), written, "bytes written after the close");
        }
    }
});

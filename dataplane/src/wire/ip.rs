//! Family-generic edits of an IP header in place: the fields answers and ICMP errors change.

use super::{checksum, put_be16};
use crate::flow::Addr;

/// The IPv4 TOS / IPv6 traffic class of the IP header at `l3` (0 when it is not there).
#[inline]
pub fn tos(frame: &[u8], l3: usize, v4: bool) -> u8 {
    let b0 = frame.get(l3).copied().unwrap_or(0);
    let b1 = frame.get(l3 + 1).copied().unwrap_or(0);
    if v4 {
        b1
    } else {
        (b0 << 4) | (b1 >> 4)
    }
}

/// Recomputes the header checksum of the IPv4 header spanning `frame[l3..l4]`.
pub fn refresh_ipv4_checksum(frame: &mut [u8], l3: usize, l4: usize) {
    if !put_be16(frame, l3 + 10, 0) {
        return;
    }
    if let Some(h) = frame.get(l3..l4) {
        let c = checksum::ipv4_header(h);
        put_be16(frame, l3 + 10, c);
    }
}

/// Re-addresses the IP header at `l3` (IPv4 header up to `l4`, whose checksum is recomputed).
/// Addresses of the other family than the header's are not written.
pub fn set_addrs(frame: &mut [u8], l3: usize, l4: usize, v4: bool, src: &Addr, dst: &Addr) {
    let (a_off, half) = if v4 { (l3 + 12, 4) } else { (l3 + 8, 16) };
    if src.wire_bytes().len() != half || dst.wire_bytes().len() != half {
        return;
    }
    let Some(addrs) = frame.get_mut(a_off..a_off + 2 * half) else {
        return;
    };
    addrs[..half].copy_from_slice(src.wire_bytes());
    addrs[half..].copy_from_slice(dst.wire_bytes());
    if v4 {
        refresh_ipv4_checksum(frame, l3, l4);
    }
}

/// Turns the IP header at `l3` around for an answer: swaps the addresses and sets our TTL / hop
/// limit (IPv4: checksum recomputed over `frame[l3..l4]`).
pub fn answer_in_place(frame: &mut [u8], l3: usize, l4: usize, v4: bool, ttl: u8) {
    let (a_off, half) = if v4 { (l3 + 12, 4) } else { (l3 + 8, 16) };
    if let Some(addrs) = frame.get_mut(a_off..a_off + 2 * half) {
        let (s, t) = addrs.split_at_mut(half);
        s.swap_with_slice(t);
    }
    let ttl_off = if v4 { l3 + 8 } else { l3 + 7 };
    if let Some(b) = frame.get_mut(ttl_off) {
        *b = ttl;
    }
    if v4 {
        refresh_ipv4_checksum(frame, l3, l4);
    }
}

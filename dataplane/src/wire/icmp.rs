//! ICMPv4 and ICMPv6: message types, and the messages answers build (echo replies, too big).

use super::{checksum, put_be16};
use crate::flow::{proto, Addr};

/// True for an ICMPv4 echo request or reply (types 8, 0).
#[inline]
pub(super) fn is_icmpv4_echo(t: u8) -> bool {
    t == 8 || t == 0
}

/// True for an ICMPv6 echo request or reply (types 128, 129).
#[inline]
pub(super) fn is_icmpv6_echo(t: u8) -> bool {
    t == 128 || t == 129
}

/// True for the ICMPv4 error types that quote a packet: unreachable, source quench, time exceeded, parameter problem.
#[inline]
pub fn is_icmpv4_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 11 | 12)
}

/// True for the ICMPv6 error types that quote a packet: unreachable, packet too big, time exceeded, parameter problem.
#[inline]
pub fn is_icmpv6_error(t: u8) -> bool {
    matches!(t, 1..=4)
}

/// ICMPv4 echo reply.
pub const ICMPV4_ECHO_REPLY: u8 = 0;
/// ICMPv4 echo request.
pub const ICMPV4_ECHO_REQUEST: u8 = 8;
/// ICMPv6 echo request.
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
/// ICMPv6 echo reply.
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// Recomputes the checksum of the ICMP message `msg` (ICMPv6: with the pseudo header of
/// `src` -> `dst`). Recomputed, not updated: an all-zero message must get 0xffff, which RFC
/// 1624's incremental update would write as 0x0000.
pub fn refresh_checksum(msg: &mut [u8], v4: bool, src: &Addr, dst: &Addr) {
    if !put_be16(msg, 2, 0) {
        return;
    }
    let c = if v4 {
        checksum::icmpv4(msg)
    } else {
        checksum::l4(src, dst, proto::ICMPV6, msg)
    };
    put_be16(msg, 2, c);
}

/// Turns the echo request `msg` (the ICMP message) into its reply from `src` to `dst`.
pub fn echo_reply_in_place(msg: &mut [u8], v4: bool, src: &Addr, dst: &Addr) {
    let Some(t) = msg.first_mut() else {
        return;
    };
    *t = if v4 {
        ICMPV4_ECHO_REPLY
    } else {
        ICMPV6_ECHO_REPLY
    };
    refresh_checksum(msg, v4, src, dst);
}

/// Writes the 8-byte header of an ICMPv4 fragmentation needed (type 3 code 4) or ICMPv6 packet
/// too big (type 2) error reporting `mtu`, and the checksum over `msg` (header plus the quote
/// already in place behind it) from `src` to `dst`.
pub fn write_too_big(msg: &mut [u8], v4: bool, mtu: u32, src: &Addr, dst: &Addr) -> Option<()> {
    let h = msg.get_mut(..8)?;
    if v4 {
        let m = (mtu as u16).to_be_bytes(); // The low 16 bits, as the field holds.
        h.copy_from_slice(&[3, 4, 0, 0, 0, 0, m[0], m[1]]);
    } else {
        let m = mtu.to_be_bytes();
        h.copy_from_slice(&[2, 0, 0, 0, m[0], m[1], m[2], m[3]]);
    }
    refresh_checksum(msg, v4, src, dst);
    Some(())
}

//! ICMPv4 and ICMPv6 message types.

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

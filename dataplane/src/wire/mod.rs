//! Checked views over the headers the dataplane reads and writes, and checksum arithmetic.
//!
//! Rooms by job: [`parse`] is the single-pass classifier the pipeline runs on every frame (no
//! allocation, no panic whatever the input) and [`verify_l4_checksum`] the slower check that only
//! packets creating state or getting answered need; `quote` reads the packet an ICMP error
//! quotes; [`checksum`] holds the RFC 1071/1624 arithmetic; `eth`, `arp`, `ipv4`, `ipv6`, `udp`,
//! `icmp` and [`nd`] read and build their own headers, `ip` edits either IP header in place, and
//! [`nat`] rewrites addresses and ports with incremental checksum updates.
#![forbid(unsafe_code)]

mod arp;
pub mod checksum;
mod eth;
mod icmp;
mod ip;
mod ipv4;
mod ipv6;
pub mod nat;
pub mod nd;
mod parse;
mod quote;
mod udp;

pub use arp::{ArpIpv4, ARP_IPV4_LEN, ARP_REPLY, ARP_REQUEST};
pub use eth::{
    dst_mac, mac_pair, set_mac_pair, set_macs, src_mac, write_eth, ETHERTYPE_ARP, ETHERTYPE_IPV4,
    ETHERTYPE_IPV6, ETHERTYPE_VLAN, ETH_LEN,
};
pub use icmp::{
    echo_reply_in_place, is_icmpv4_error, is_icmpv6_error,
    refresh_checksum as refresh_icmp_checksum, write_too_big, ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
};
pub use ip::{answer_in_place, refresh_ipv4_checksum, set_addrs, tos};
pub use ipv4::{ipv4_20_checksum_bytes, write_ipv4, Ipv4Fields};
pub use ipv6::{write_ipv6, Ipv6Fields, MAX_IPV6_EXTENSIONS};
pub use parse::{
    ipv6_dst, parse, parse_v4_flow, parse_v4_words, parsed_v4, verify_l4_checksum, verify_v4_l4,
    Frag, ParseError, Parsed, V4Flow, V4Words, L3,
};
pub use quote::{parse_icmp_quote, Quoted};
pub use udp::{fill_udp_checksum, write_udp};

/// Reads a fixed-size array at `off`, or `None` past the end: indexing the array is then check-free.
#[inline(always)]
fn arr<const N: usize>(b: &[u8], off: usize) -> Option<&[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// The big-endian 16-bit word at `off`, or 0 when `b` is too short.
#[inline]
pub fn be16(b: &[u8], off: usize) -> u16 {
    arr::<2>(b, off).map_or(0, |w| u16::from_be_bytes(*w))
}

/// Writes `v` big-endian at `off`; false (and `b` unchanged) when it does not fit.
#[inline]
pub fn put_be16(b: &mut [u8], off: usize, v: u16) -> bool {
    match off.checked_add(2).and_then(|end| b.get_mut(off..end)) {
        Some(dst) => {
            dst.copy_from_slice(&v.to_be_bytes());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_tests;

//! IPv4: the header checksum check of the parser and the header writer.

use super::checksum;

/// The fields of an IPv4 header without options, for [`write_ipv4`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4Fields {
    /// Source address.
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Protocol of the payload.
    pub proto: u8,
    /// Payload length in bytes (the total length is 20 more).
    pub payload_len: u16,
    /// Time to live.
    pub ttl: u8,
    /// Type of service / DSCP+ECN byte.
    pub tos: u8,
    /// Identification.
    pub id: u16,
    /// Flags (DF = 0x4000, MF = 0x2000) and fragment offset, as on the wire.
    pub flags_frag: u16,
}

/// True when a 20-byte IPv4 header's ones' complement sum is all ones (checksum correct).
///
/// Native-endian loads: the sum of byte-swapped words is the byte-swapped sum (RFC 1071 2.B),
/// and all ones is the same either way, so no byte swapping is needed.
#[inline(always)]
pub(super) fn ipv4_20_sums_to_ones(h: &[u8; 20]) -> bool {
    let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
    let s = w(0) + w(4) + w(8) + w(12) + w(16);
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s == 0xffff
}

/// Checks the IPv4 header checksum (switched off under `cfg(fuzzing)` so fuzzers reach the L4 code).
#[inline(always)]
pub(super) fn ipv4_checksum_ok(frame: &[u8], h: &[u8; 20], l3_off: usize, hlen: usize) -> bool {
    if cfg!(fuzzing) {
        return true;
    }
    if hlen == 20 {
        ipv4_20_sums_to_ones(h)
    } else {
        frame
            .get(l3_off..l3_off + hlen)
            .is_some_and(|hdr| checksum::sum(hdr, 0) == 0xffff)
    }
}

/// The header checksum of a 20-byte IPv4 header whose checksum field is zero, as the two bytes
/// that go on the wire: the native-endian sum of `ipv4_20_sums_to_ones`, complemented. Every
/// encapsulated packet (dsr-ipip) pays this, so it is five loads and three folds, no loop.
#[inline(always)]
pub fn ipv4_20_checksum_bytes(h: &[u8; 20]) -> [u8; 2] {
    let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
    let s = w(0) + w(4) + w(8) + w(12) + w(16);
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    (!(s as u16)).to_ne_bytes()
}

/// Writes a 20-byte IPv4 header with a correct header checksum; returns 20.
#[inline]
pub fn write_ipv4(buf: &mut [u8], h: &Ipv4Fields) -> Option<usize> {
    let total = h.payload_len.checked_add(20)?;
    let b: &mut [u8; 20] = buf.get_mut(..20)?.try_into().ok()?;
    b[0] = 0x45;
    b[1] = h.tos;
    b[2..4].copy_from_slice(&total.to_be_bytes());
    b[4..6].copy_from_slice(&h.id.to_be_bytes());
    b[6..8].copy_from_slice(&h.flags_frag.to_be_bytes());
    b[8] = h.ttl;
    b[9] = h.proto;
    b[10] = 0;
    b[11] = 0;
    b[12..16].copy_from_slice(&h.src);
    b[16..20].copy_from_slice(&h.dst);
    let c = ipv4_20_checksum_bytes(b);
    b[10..12].copy_from_slice(&c);
    Some(20)
}

//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Partial sums are `u32` values that can be chained through `initial`; [`fold`] turns one into the
//! complemented 16-bit value that goes on the wire. Every function here is total: odd lengths are
//! padded with a zero byte as RFC 1071 says, and nothing panics.

use crate::flow::Addr;

/// Adds `data` as big-endian 16-bit words to the partial sum `initial` (odd length: last byte padded).
///
/// The result is folded to at most 16 bits, so it can be passed on as `initial` without overflow.
#[inline]
pub fn sum(data: &[u8], initial: u32) -> u32 {
    // End-around-carry addition of 64-bit big-endian words: 2^16 - 1 divides 2^64 - 1, so the
    // 64-bit ones' complement sum folds to the same 16-bit sum as adding 16-bit words one by one.
    let mut acc = initial as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let (s, carry) = acc.overflowing_add(u64::from_be_bytes(w));
        acc = s + carry as u64;
    }
    let rest = chunks.remainder();
    let mut w = [0u8; 8];
    // `rest` is at most 7 bytes; zero padding on the right is the RFC 1071 rule for the odd byte.
    if let Some(dst) = w.get_mut(..rest.len()) {
        dst.copy_from_slice(rest);
    }
    let (s, carry) = acc.overflowing_add(u64::from_be_bytes(w));
    acc = s + carry as u64;
    fold64(acc)
}

/// Folds a 64-bit end-around-carry sum to 16 bits (returned in a `u32`).
#[inline]
fn fold64(acc: u64) -> u32 {
    // The halves added with the carry added back (an add and an add with carry): both are at
    // most 2^32 - 1, so the sum with its carry ends below 2^32 without a second fold.
    let (s, carry) = (acc as u32).overflowing_add((acc >> 32) as u32);
    u32::from(fold32(s.wrapping_add(u32::from(carry))))
}

/// Folds a 32-bit partial sum to 16 bits without complementing: the halves added with the
/// carry added back, as [`fold64`] (the same value as adding the halves twice over).
#[inline]
fn fold32(s: u32) -> u16 {
    let (t, carry) = (s as u16).overflowing_add((s >> 16) as u16);
    t.wrapping_add(u16::from(carry))
}

/// The checksum to put on the wire for the partial sum `sum`: folded to 16 bits and complemented.
#[inline]
pub fn fold(sum: u32) -> u16 {
    !fold32(sum)
}

/// RFC 1624 eqn. 3: the checksum `csum` after one 16-bit word of the covered data changed from `old` to `new`.
///
/// A UDP checksum of 0 means "none" and must not be updated; the caller checks that first.
#[inline]
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    !fold32(!csum as u32 + !old as u32 + new as u32)
}

/// A ones' complement difference (RFC 1624), folded to 16 bits: what replacing some 32-bit words
/// of the covered data with others does to its sum. Computed once per flow, applied per packet;
/// folding it up front leaves one fold per packet. (End-around-carry folding keeps a non-zero
/// sum non-zero, so a folded delta gives the very checksums the unfolded one gave.)
///
/// Kept in wire byte order (the two bytes as they would sit in a header, loaded native-endian):
/// ones' complement sums commute with swapping the bytes of every word, so
/// [`Delta::apply_wire`] adjusts a checksum field loaded straight from the packet without a byte
/// swap either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    /// The difference of replacing `old` by `new` (equal lengths, multiples of 4 bytes, starting at
    /// an even offset of the covered data; other bytes past the last whole word are ignored).
    #[inline]
    pub fn replace(old: &[u8], new: &[u8]) -> Delta {
        Delta::from_sum(sub32(old) + sum32(new))
    }

    /// The difference whose unfolded ones' complement sum is `sum` (the complemented old words
    /// and the new words, as big-endian values): what [`Delta::replace`] computes, for callers
    /// that have the words in registers already.
    #[inline]
    pub fn from_sum(sum: u64) -> Delta {
        Delta(u32::from((fold64(sum) as u16).to_be()))
    }

    /// The difference of the reverse replacement (`new` back to `old`, the words in any order
    /// and with the 16-bit halves of any word swapped: ones' complement sums commute), from
    /// this one by negation, without summing the words again. `zero` says whether the reverse's
    /// unfolded sum is exactly zero (its old words all ones, its new words all zeros): that
    /// alone decides the reverse's form (0 or 0xffff) when this one is congruent to zero.
    #[inline(always)]
    pub fn reversed(self, zero: bool) -> Delta {
        let v = self.0 as u16;
        // Both byte orders of 0 and 0xffff are themselves, and negation (`!`) commutes with
        // swapping the bytes: the wire order needs no swap.
        let congruent_zero = v.wrapping_add(1) <= 1;
        let r = match (congruent_zero, zero) {
            (false, _) => !v,
            (true, false) => 0xffff,
            (true, true) => 0,
        };
        Delta(u32::from(r))
    }

    /// Both differences at once (they cover the same data).
    #[inline]
    #[must_use]
    pub fn and(self, other: Delta) -> Delta {
        Delta(u32::from(fold32(self.0 + other.0)))
    }

    /// RFC 1624 eqn. 3: the checksum `csum` (its value, as `u16::from_be_bytes` reads it) after
    /// the replacement.
    #[inline]
    pub fn apply(self, csum: u16) -> u16 {
        u16::from_be(self.apply_wire(csum.to_be()))
    }

    /// [`Delta::apply`] on a checksum field's two bytes loaded native-endian
    /// (`u16::from_ne_bytes`), returning the bytes to store the same way: the per-packet form.
    #[inline(always)]
    pub fn apply_wire(self, csum: u16) -> u16 {
        // A 16-bit add and its carry added back (end-around carry): both terms are at most
        // 0xffff, so the sum with its carry ends below 2^16 without a second fold.
        let (s, carry) = (!csum).overflowing_add(self.0 as u16);
        !s.wrapping_add(u16::from(carry))
    }

    /// [`Delta::apply_wire`] of a UDP checksum field that is not zero (zero: no checksum, left
    /// alone), with UDP's rule that a checksum computing to 0 goes on the wire as 0xffff: the
    /// checksum minus the difference (RFC 1624 eqn. 2, the checksum plus the complemented
    /// difference with end-around carry), which never gives 0 for a checksum that is not 0, and
    /// equals eqn. 3's result everywhere else (checked for every pair). Two instructions fewer
    /// than eqn. 3 and the zero test.
    #[inline(always)]
    pub fn apply_udp_wire(self, csum: u16) -> u16 {
        // Both byte orders of 0xffff are 0xffff and `!` commutes with swapping the bytes: the
        // wire order needs no swap.
        let (s, carry) = csum.overflowing_add(!(self.0 as u16));
        s.wrapping_add(u16::from(carry))
    }
}

/// Ones' complement sum of the big-endian 32-bit words of `b`, unfolded.
#[inline]
fn sum32(b: &[u8]) -> u64 {
    b.chunks_exact(4)
        .map(|w| u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum()
}

/// [`sum32`] of the complemented words: subtracting `b` in ones' complement.
#[inline]
fn sub32(b: &[u8]) -> u64 {
    b.chunks_exact(4)
        .map(|w| u64::from(!u32::from_be_bytes([w[0], w[1], w[2], w[3]])))
        .sum()
}

/// The header checksum of an IPv4 header `hdr` (IHL*4 bytes), treating its checksum field as zero.
#[inline]
pub fn ipv4_header(hdr: &[u8]) -> u16 {
    let head = hdr.get(..10).unwrap_or(hdr);
    let tail = hdr.get(12..).unwrap_or(&[]);
    fold(sum(tail, sum(head, 0)))
}

/// The partial sum of the TCP/UDP/ICMPv6 pseudo header: IPv4 (RFC 793) when `src` is IPv4, else IPv6 (RFC 8200).
#[inline]
pub fn pseudo_header(src: &Addr, dst: &Addr, proto: u8, len: u32) -> u32 {
    // The length goes in as two 16-bit words for both families: for IPv4 it is at most 16 bits, so
    // the high word is zero and this matches the 12-byte pseudo header.
    let fixed = proto as u32 + (len >> 16) + (len & 0xffff);
    if src.is_v4() && dst.is_v4() {
        // Two words in registers: a new flow's checksum check, no byte loops.
        let w = |a: &Addr| u64::from(u32::from_be_bytes(a.v4_octets()));
        return fold64(w(src) + w(dst) + u64::from(fixed));
    }
    sum(dst.wire_bytes(), sum(src.wire_bytes(), fixed))
}

/// The transport checksum of `segment` (TCP, UDP or ICMPv6) including the pseudo header.
///
/// The caller zeroes the segment's checksum field first. For UDP a result of 0 is sent as
/// 0xffff (RFC 768: 0 means "no checksum"), so this returns 0xffff there.
/// ICMPv4 has no pseudo header: use [`icmpv4`].
#[inline]
pub fn l4(src: &Addr, dst: &Addr, proto: u8, segment: &[u8]) -> u16 {
    let c = fold(sum(
        segment,
        pseudo_header(src, dst, proto, segment.len() as u32),
    ));
    if c == 0 && proto == crate::flow::proto::UDP {
        0xffff
    } else {
        c
    }
}

/// The ICMPv4 checksum of `msg` (no pseudo header); the caller zeroes the checksum field first.
#[inline]
pub fn icmpv4(msg: &[u8]) -> u16 {
    fold(sum(msg, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain RFC 1071 algorithm, 16 bits at a time, as the reference for the fast one.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                (c[0] as u16) << 8
            };
            s += w as u32;
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn rfc1071_example_sums_to_known_value() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data, 0), 0xddf2);
        assert_eq!(fold(sum(&data, 0)), !0xddf2);
    }

    #[test]
    fn ipv4_header_of_known_packet() {
        // A captured header (Wikipedia's example) whose checksum is b861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&hdr), 0xb861);
        let mut zeroed = hdr;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(ipv4_header(&zeroed), 0xb861);
        // A whole valid header sums to all ones.
        assert_eq!(fold(sum(&hdr, 0)), 0);
    }

    #[test]
    fn odd_length_pads_last_byte_high() {
        assert_eq!(sum(&[0x12], 0), 0x1200);
        assert_eq!(sum(&[0x12, 0x34, 0x56], 0), 0x1234 + 0x5600);
    }

    #[test]
    fn udp_checksum_zero_is_sent_as_all_ones() {
        // A segment whose true checksum is 0 must come out as ffff for UDP, not "no checksum".
        let src = Addr::v4([0, 0, 0, 0]);
        let dst = Addr::v4([0, 0, 0, 0]);
        // Pseudo header sum: proto 17 + len 8 = 25; UDP header words must bring the total to ffff.
        let rest = 0xffffu32 - 25 - 8;
        let seg = [0, 0, 0, 0, 0, 8, (rest >> 8) as u8, rest as u8];
        assert_eq!(l4(&src, &dst, crate::flow::proto::UDP, &seg), 0xffff);
    }

    /// UDP's form of the update: eqn. 3 with a result of 0 sent as 0xffff, for every checksum
    /// that is not 0 (the whole square of 2^32 pairs was checked once; here every checksum
    /// against the edge differences and a spread of others, and random pairs below).
    #[test]
    fn udp_apply_is_eqn3_with_zero_as_all_ones() {
        let ds = (0..=0xffffu32)
            .step_by(0x0fff)
            .chain([0, 1, 2, 0x7fff, 0x8000, 0xfffe, 0xffff]);
        for d in ds {
            for c in 1..=0xffffu16 {
                let want = match Delta(d).apply_wire(c) {
                    0 => 0xffff,
                    x => x,
                };
                assert_eq!(
                    Delta(d).apply_udp_wire(c),
                    want,
                    "checksum {c:04x} delta {d:04x}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn udp_apply_matches_eqn3(c in 1..=0xffffu16, d in 0..=0xffffu32) {
            let want = match Delta(d).apply_wire(c) {
                0 => 0xffff,
                x => x,
            };
            prop_assert_eq!(Delta(d).apply_udp_wire(c), want);
        }

        #[test]
        fn folds_match_the_halves_added_twice(acc in any::<u64>(), small in 0u64..1 << 36) {
            let halves32 = |s: u32| {
                let s = (s & 0xffff) + (s >> 16);
                ((s & 0xffff) + (s >> 16)) as u16
            };
            let halves64 = |a: u64| {
                let s = (a & 0xffff_ffff) + (a >> 32);
                u32::from(halves32(((s & 0xffff_ffff) + (s >> 32)) as u32))
            };
            for a in [acc, small, acc >> 16, u64::MAX, 0, 0xffff_ffff, 1 << 32, 0x1_0000_ffff] {
                prop_assert_eq!(fold64(a), halves64(a), "{:#x}", a);
                prop_assert_eq!(fold32(a as u32), halves32(a as u32), "{:#x}", a);
            }
        }

        #[test]
        fn sum_matches_rfc1071_reference(data in proptest::collection::vec(any::<u8>(), 0..300), init in 0u32..0x1_0000) {
            let fast = fold32(sum(&data, init));
            let slow = fold32(reference_sum(&data) as u32 + init);
            // 0 and ffff are the same number in ones' complement.
            prop_assert!(fast == slow || (fast | slow) == 0xffff && (fast & slow) == 0);
        }

        #[test]
        fn update16_equals_full_recompute(mut data in proptest::collection::vec(any::<u8>(), 2..200), idx in any::<prop::sample::Index>(), new in any::<u16>()) {
            let words = data.len() / 2;
            let i = idx.index(words) * 2;
            let before = fold(sum(&data, 0));
            let old = u16::from_be_bytes([data[i], data[i + 1]]);
            data[i..i + 2].copy_from_slice(&new.to_be_bytes());
            let after = fold(sum(&data, 0));
            let inc = update16(before, old, new);
            // Incremental and full results may differ only as +0/-0 (0000 vs ffff).
            prop_assert!(inc == after || (inc == 0xffff && after == 0) || (inc == 0 && after == 0xffff),
                "inc {inc:04x} full {after:04x}");
        }

        #[test]
        fn reversed_delta_equals_computed(w in proptest::array::uniform6(prop_oneof![Just(0u32), Just(u32::MAX), Just(0xffff), any::<u32>()])) {
            use crate::wire::nat::deltas_v4;
            let swap = |p: u32| p.rotate_left(16);
            let (from, to) = ([w[0], w[1], w[2]], [w[3], w[4], w[5]]);
            // A flow's reply undoes its forward rewrite: addresses exchanged, ports exchanged.
            let (f3, f4) = deltas_v4(from, to);
            let (r3, r4) = deltas_v4([to[1], to[0], swap(to[2])], [from[1], from[0], swap(from[2])]);
            // The reverse's sums are exactly zero when its old words are all ones and its
            // new words all zeros.
            let z3 = to[0] & to[1] == u32::MAX && from[0] | from[1] == 0;
            let z4 = z3 && to[2] == u32::MAX && from[2] == 0;
            prop_assert_eq!(f3.reversed(z3), r3);
            prop_assert_eq!(f4.reversed(z4), r4);
        }

        #[test]
        fn delta_equals_full_recompute(mut data in proptest::collection::vec(any::<u8>(), 32..200), idx in any::<prop::sample::Index>(), new in proptest::collection::vec(any::<u8>(), 1..8)) {
            let n = new.len() * 4;
            let new: Vec<u8> = new.iter().flat_map(|b| [*b, b.wrapping_mul(3), b ^ 0x5a, b.wrapping_add(7)]).collect();
            let i = idx.index((data.len() - n) / 2) * 2;
            let before = fold(sum(&data, 0));
            let old = data[i..i + n].to_vec();
            data[i..i + n].copy_from_slice(&new);
            let after = fold(sum(&data, 0));
            let inc = Delta::replace(&old, &new).apply(before);
            prop_assert!(inc == after || (inc == 0xffff && after == 0) || (inc == 0 && after == 0xffff),
                "inc {inc:04x} full {after:04x}");
        }
    }
}

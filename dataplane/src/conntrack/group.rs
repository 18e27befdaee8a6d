//! Swiss-table style group match: which of a bucket's 16 tags carry a fingerprint, in a few
//! instructions instead of a compare and a branch per tag, on every packet's lookup.
//!
//! x86_64: SSE2 (part of the baseline, so always there): two 128-bit loads, mask off the
//! unconfirmed bit, compare 8 lanes at once, pack and take the byte mask. Elsewhere: SWAR on four
//! 64-bit words.
#![allow(unsafe_code)]

use super::{BUCKET, TAG_FP};

/// The slots of a bucket (bit i = slot i) whose tag's fingerprint is `fp` (`fp <= TAG_FP`; the
/// unconfirmed bit of the tags is ignored).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn group_match(tags: &[u16; BUCKET], fp: u16) -> u32 {
    group_eq::<true>(tags, fp)
}

/// The slots of a bucket (bit i = slot i) whose tag is `t`, the whole tag compared (its
/// unconfirmed bit too): for [`TAG_FREE`](super::TAG_FREE), the free slots, the unconfirmed
/// bit's mask left out (no live tag's fingerprint is 0, whatever that bit).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn group_eq_tag(tags: &[u16; BUCKET], t: u16) -> u32 {
    group_eq::<false>(tags, t)
}

/// The slots of a bucket whose tag, with the unconfirmed bit masked off if `MASK`, is `v`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn group_eq<const MASK: bool>(tags: &[u16; BUCKET], v: u16) -> u32 {
    use std::arch::x86_64::{
        _mm_and_si128, _mm_cmpeq_epi16, _mm_loadu_si128, _mm_movemask_epi8, _mm_packs_epi16,
        _mm_set1_epi16,
    };
    const _: () = assert!(BUCKET == 16);
    let p = tags.as_ptr();
    // SAFETY: SSE2 is part of the x86_64 baseline. The two unaligned loads read tags 0..8 and
    // 8..16, all inside `tags` (16 u16 = 32 bytes). The rest is arithmetic on registers.
    unsafe {
        let mut lo = _mm_loadu_si128(p.cast());
        let mut hi = _mm_loadu_si128(p.add(8).cast());
        if MASK {
            let mask = _mm_set1_epi16(TAG_FP as i16);
            (lo, hi) = (_mm_and_si128(lo, mask), _mm_and_si128(hi, mask));
        }
        let want = _mm_set1_epi16(v as i16);
        let a = _mm_cmpeq_epi16(lo, want);
        let b = _mm_cmpeq_epi16(hi, want);
        // Each 16-bit lane is 0 or -1: saturating packs keep that as one byte per tag, in order.
        _mm_movemask_epi8(_mm_packs_epi16(a, b)) as u32
    }
}

/// The slots of a bucket whose tag is `t`, the whole tag compared (portable form).
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(super) fn group_eq_tag(tags: &[u16; BUCKET], t: u16) -> u32 {
    let mut m = 0u32;
    for (i, &x) in tags.iter().enumerate() {
        m |= u32::from(x == t) << i;
    }
    m
}

/// The slots of a bucket (bit i = slot i) whose tag has its top bit (the unconfirmed bit) set:
/// the eviction candidates, without a compare per tag.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn top_bits(tags: &[u16; BUCKET]) -> u32 {
    use std::arch::x86_64::{_mm_loadu_si128, _mm_movemask_epi8, _mm_packs_epi16};
    let p = tags.as_ptr();
    // SAFETY: as in `group_match`: two unaligned loads inside `tags`, then register arithmetic.
    unsafe {
        let lo = _mm_loadu_si128(p.cast());
        let hi = _mm_loadu_si128(p.add(8).cast());
        // A lane with its top bit set is negative; saturating packs keep the sign per byte.
        _mm_movemask_epi8(_mm_packs_epi16(lo, hi)) as u32
    }
}

/// The slots of a bucket whose tag has its top bit set (portable form).
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(super) fn top_bits(tags: &[u16; BUCKET]) -> u32 {
    let mut m = 0u32;
    for (i, &t) in tags.iter().enumerate() {
        m |= u32::from(t >> 15) << i;
    }
    m
}

/// The slots of a bucket (bit i = slot i) whose tag's fingerprint is `fp`: SWAR, four tags per
/// 64-bit word. Exact: with the high bit of every lane cleared, adding 0x7fff sets a lane's bit
/// 15 iff the lane is non-zero and never carries into the next lane.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(super) fn group_match(tags: &[u16; BUCKET], fp: u16) -> u32 {
    const fn lanes(v: u16) -> u64 {
        (v as u64) * 0x0001_0001_0001_0001
    }
    let mut m = 0u32;
    for (w, q) in tags.chunks_exact(4).enumerate() {
        let word = u64::from(q[0])
            | (u64::from(q[1]) << 16)
            | (u64::from(q[2]) << 32)
            | (u64::from(q[3]) << 48);
        let x = (word ^ lanes(fp)) & lanes(TAG_FP);
        let zero = !(x + lanes(TAG_FP)) & lanes(0x8000);
        for lane in 0..4 {
            m |= (((zero >> (16 * lane + 15)) & 1) as u32) << (4 * w + lane);
        }
    }
    m
}

/// Hints the CPU to fetch the cache line of `items[i]`, without a bounds check: an index past
/// the end only names an address nothing is read from (a prefetch never faults), which a
/// caller whose index is a hash's bucket or a tag's slot need not test first.
#[inline(always)]
pub(super) fn prefetch_at<T>(items: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = items.as_ptr().wrapping_add(i).cast::<i8>();
        // SAFETY: `prefetcht0` only hints the cache and never faults, whatever the address
        // (`wrapping_add` only computes one); SSE is part of the x86_64 baseline.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (items, i);
}

/// Hints the CPU to fetch the first two cache lines of `items[i]` (a slot: its key word,
/// timer, state and the value's per-packet fields), without a bounds check ([`prefetch_at`]).
#[inline(always)]
pub(super) fn prefetch_two_lines_at<T>(items: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = items.as_ptr().wrapping_add(i).cast::<i8>();
        // SAFETY: as in `prefetch_at`.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (items, i);
}

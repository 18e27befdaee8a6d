//! The table's memory: large tables on huge pages where the kernel gives them.
//!
//! A table of 100k flows spans tens of megabytes, and a worker's packets land on slots all over
//! it: with 4 KiB pages nearly every lookup also misses the TLB. Transparent huge pages (2 MiB)
//! cut that to a few hundred entries; the common `madvise` setting of
//! `/sys/kernel/mm/transparent_hugepage/enabled` gives them only to memory that asks, before it
//! is first touched. Asking is a hint: where the kernel refuses, the table works as before.
#![allow(unsafe_code)]

/// Tables smaller than this stay on ordinary pages (a huge page would be mostly empty).
const HUGE_MIN: usize = 4 << 20;

/// `n` copies of `fill` in memory advised for transparent huge pages before it is written.
/// Allocates once (at start, never per packet).
pub(super) fn filled<T: Clone>(n: usize, fill: T) -> Box<[T]> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes >= HUGE_MIN {
        advise_huge(v.as_mut_ptr().cast::<u8>(), bytes);
    }
    v.resize(n, fill);
    v.into_boxed_slice()
}

/// `madvise(MADV_HUGEPAGE)` over the whole pages inside `len` bytes at `ptr`; errors ignored.
fn advise_huge(ptr: *mut u8, len: usize) {
    let page = 4096usize;
    let start = (ptr as usize).div_ceil(page) * page;
    let end = (ptr as usize + len) / page * page;
    if end <= start {
        return;
    }
    // SAFETY: [start, end) lies inside the allocation `ptr` points to (len bytes of capacity,
    // owned by the caller's vector and not yet handed out); MADV_HUGEPAGE changes how the kernel
    // backs those pages, never their contents or mapping, and fails harmlessly (EINVAL) where
    // the kernel has no transparent huge pages.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_holds_n_copies_small_or_large() {
        let small = filled(10, 7u16);
        assert_eq!((small.len(), small.iter().all(|&x| x == 7)), (10, true));
        let large = filled(HUGE_MIN, 3u8);
        assert_eq!(large.len(), HUGE_MIN);
        assert!(large.iter().all(|&x| x == 3));
    }
}

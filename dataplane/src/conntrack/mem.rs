//! The table's memory: large arrays on huge pages where the kernel gives them.
//!
//! A table of 100k flows spans tens of megabytes, and a worker's packets land on slots all over
//! it: with 4 KiB pages nearly every lookup also misses the TLB. Transparent huge pages (2 MiB)
//! cut that to a few hundred entries; the common `madvise` setting of
//! `/sys/kernel/mm/transparent_hugepage/enabled` gives them only to memory that asks, before it
//! is first touched, and only for whole 2 MiB ranges aligned to 2 MiB. So a large array gets a
//! mapping of its own, aligned and sized to whole huge pages: a heap block is aligned only to a
//! page, which left its first and last 2 MiB on small pages, and an array under 4 MiB (the tags
//! of a 100k-flow table, 1 MiB, read by every lookup) on small pages only. Asking is a hint:
//! where the kernel refuses huge pages, the mapping works as before; where it refuses the
//! mapping, the array is on the heap.
#![allow(unsafe_code)]

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A huge page (x86_64, aarch64 with 4 KiB base pages).
const HUGE: usize = 2 << 20;

/// Arrays smaller than this stay on the heap: at least half of their huge page is used.
const HUGE_MIN: usize = HUGE / 2;

/// A fixed-length array of `T`, on huge pages when large ([`filled`]). Dereferences to a slice.
pub(super) struct Table<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    /// Bytes of the mapping at `ptr`, or 0 for an array on the heap (a `Box<[T]>`).
    mapped: usize,
}

// SAFETY: a `Table` owns its elements as a `Box<[T]>` would (nothing else points into them), so
// it can move to or be shared with another thread when `T` can.
unsafe impl<T: Copy + Send> Send for Table<T> {}
// SAFETY: as above; `&Table` gives only `&[T]`.
unsafe impl<T: Copy + Sync> Sync for Table<T> {}

impl<T: Copy> Deref for Table<T> {
    type Target = [T];

    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialized elements the table owns (see `filled`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> DerefMut for Table<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for Table<T> {
    fn drop(&mut self) {
        if self.mapped == 0 {
            // SAFETY: a heap table's `ptr` and `len` are those of a leaked `Box<[T]>`
            // (`filled`), which is given back once.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            });
        } else {
            // SAFETY: `ptr` and `mapped` are the mapping `map_huge` made for this table alone;
            // `T: Copy` has no drop to run first.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.mapped);
            }
        }
    }
}

/// `n` copies of `fill`; an array of at least [`HUGE_MIN`] bytes in a mapping of its own that
/// is advised for transparent huge pages before it is written. Allocates once (at start, never
/// per packet).
pub(super) fn filled<T: Copy>(n: usize, fill: T) -> Table<T> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes >= HUGE_MIN && std::mem::align_of::<T>() <= HUGE {
        if let Some((ptr, mapped)) = map_huge(bytes) {
            let ptr = ptr.cast::<T>();
            for i in 0..n {
                // SAFETY: the mapping holds `bytes` = n * size_of::<T>() bytes at an address
                // aligned to 2 MiB, so to `T`; each element is written once before any read.
                unsafe { ptr.as_ptr().add(i).write(fill) };
            }
            return Table {
                ptr,
                len: n,
                mapped,
            };
        }
    }
    // Given back as a `Box<[T]>` of `n` elements on drop.
    let ptr = NonNull::from(Box::leak(vec![fill; n].into_boxed_slice())).cast::<T>();
    Table {
        ptr,
        len: n,
        mapped: 0,
    }
}

/// A private anonymous mapping of `bytes` rounded up to whole huge pages, starting on a huge
/// page boundary, advised `MADV_HUGEPAGE`; its address and length. None where mmap fails.
fn map_huge(bytes: usize) -> Option<(NonNull<u8>, usize)> {
    let len = bytes.checked_next_multiple_of(HUGE)?;
    let span = len.checked_add(HUGE)?;
    // SAFETY: a fresh private anonymous mapping at an address of the kernel's choosing touches
    // no existing memory.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    // One huge page more than needed, so an aligned run of `len` bytes lies inside; the rest,
    // before and after it, is given back.
    let base = raw as usize;
    let start = base.next_multiple_of(HUGE);
    let (head, tail) = (start - base, base + span - (start + len));
    // SAFETY: both ranges lie inside the mapping just made, outside [start, start + len), and
    // nothing points into them; munmap of a zero length is skipped. MADV_HUGEPAGE changes how
    // the kernel backs the kept range, never its contents, and fails harmlessly (EINVAL) where
    // the kernel has no transparent huge pages.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    NonNull::new(start as *mut u8).map(|p| (p, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_holds_n_copies_small_or_large() {
        let small = filled(10, 7u16);
        assert_eq!((small.len(), small.iter().all(|&x| x == 7)), (10, true));
        assert_eq!(small.mapped, 0);
        let mut large = filled(HUGE_MIN, 3u8);
        assert_eq!(large.len(), HUGE_MIN);
        assert!(large.iter().all(|&x| x == 3));
        large[HUGE_MIN - 1] = 9;
        assert_eq!(large.last(), Some(&9));
        let empty = filled(0, 1u64);
        assert!(empty.is_empty());
    }

    #[test]
    fn large_tables_get_a_huge_page_aligned_mapping_of_whole_huge_pages() {
        // 1.5 MiB of u16 and 5 MiB of 64-byte-aligned items: each in a mapping of its own,
        // starting on a 2 MiB boundary and as long as its whole huge pages.
        let tags = filled(3 << 18, 0u16);
        assert_eq!(tags.as_ptr() as usize % HUGE, 0);
        assert_eq!(tags.mapped, HUGE);
        #[derive(Clone, Copy)]
        #[repr(align(64))]
        struct Line([u8; 64]);
        let lines = filled((5 << 20) / 64, Line([1; 64]));
        assert_eq!(lines.as_ptr() as usize % HUGE, 0);
        assert_eq!(lines.mapped, 3 * HUGE);
        assert!(lines.iter().all(|l| l.0 == [1; 64]));
    }
}

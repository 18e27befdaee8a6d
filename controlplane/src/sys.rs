//! The control plane's one direct call into the C library.

/// Hands the allocator's free memory back to the kernel.
///
/// glibc keeps freed memory for reuse: a Maglev table (128 KiB) is above its initial mmap
/// threshold, but the first such free raises the threshold, so later tables come from the heap
/// and from the arenas of tokio's blocking threads, which shrink only from their top. After a
/// reload from 10,000 services back to 2, 1.3 GB stayed resident serving 2 services. Called
/// after replaced tables are released, i.e. once per reload, never on the packet path; it costs
/// a walk of the free lists (about a millisecond for a large heap).
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only releases memory no allocation refers to.
    unsafe {
        libc::malloc_trim(0);
    }
}

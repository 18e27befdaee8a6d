//! A frame inside a buffer with headroom, so encapsulation can grow it in front without copying.
//!
//! Its `unsafe` (the frame's bytes taken without a bounds check, twice per packet on the
//! fast path) rests on an invariant every function here keeps: `head + len <= buf.len()`.
#![allow(unsafe_code)]

/// A frame of `len` bytes starting at `head` inside `buf`. Bytes before `head` are headroom.
///
/// Invariant (kept by every constructor and method, the fields being private):
/// `head + len <= buf.len()`.
#[derive(Debug)]
pub struct PacketBuf<'a> {
    buf: &'a mut [u8],
    head: usize,
    len: usize,
}

impl<'a> PacketBuf<'a> {
    /// Wraps `buf[head..head + len]`. Out-of-range values are clamped to the buffer.
    #[inline]
    pub fn new(buf: &'a mut [u8], head: usize, len: usize) -> Self {
        let head = head.min(buf.len());
        let len = len.min(buf.len() - head);
        PacketBuf { buf, head, len }
    }

    /// A buffer of no bytes: what a port's burst array holds in the slots no frame fills
    /// (`[const { PacketBuf::empty() }; N]` builds the array in place, without a copy).
    #[inline]
    pub const fn empty() -> PacketBuf<'a> {
        PacketBuf {
            buf: &mut [],
            head: 0,
            len: 0,
        }
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        debug_assert!(self.head + self.len <= self.buf.len());
        // SAFETY: `head + len <= buf.len()` is the type's invariant (see `PacketBuf`), so the
        // range is inside `buf` and `head + len` does not overflow.
        unsafe { self.buf.get_unchecked(self.head..self.head + self.len) }
    }

    /// The frame's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        debug_assert!(self.head + self.len <= self.buf.len());
        // SAFETY: as in `data`: the range is inside `buf` by the type's invariant.
        unsafe { self.buf.get_unchecked_mut(self.head..self.head + self.len) }
    }

    /// Length of the frame.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Free bytes in front of the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Free bytes after the frame.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.head - self.len
    }

    /// Offset of the frame inside the underlying buffer.
    #[inline]
    pub fn head(&self) -> usize {
        self.head
    }

    /// Grows the frame by `n` bytes at the front; false (and unchanged) without enough headroom.
    #[inline]
    pub fn push_front(&mut self, n: usize) -> bool {
        if n > self.head {
            return false;
        }
        self.head -= n;
        self.len += n;
        true
    }

    /// Shrinks the frame by `n` bytes at the front; false (and unchanged) if the frame is shorter.
    pub fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        self.head += n;
        self.len -= n;
        true
    }

    /// Sets the frame length, keeping its start; false (and unchanged) past the buffer's end.
    pub fn set_len(&mut self, len: usize) -> bool {
        // Checked: an overflowing sum must not pass for a short one (the invariant).
        if self
            .head
            .checked_add(len)
            .is_none_or(|end| end > self.buf.len())
        {
            return false;
        }
        self.len = len;
        true
    }

    /// Replaces the frame with `bytes`, placed at `head`. False if it does not fit.
    pub fn replace(&mut self, head: usize, bytes: &[u8]) -> bool {
        if head
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.buf.len())
        {
            return false;
        }
        self.buf[head..head + bytes.len()].copy_from_slice(bytes);
        self.head = head;
        self.len = bytes.len();
        true
    }

    /// Moves the frame to `buf[head..head + len]` (after building a new frame in place via
    /// [`PacketBuf::raw_mut`]). False (and unchanged) past the buffer's end.
    pub fn set_bounds(&mut self, head: usize, len: usize) -> bool {
        if head.checked_add(len).is_none_or(|end| end > self.buf.len()) {
            return false;
        }
        self.head = head;
        self.len = len;
        true
    }

    /// The whole underlying buffer and the frame's position in it, for building a new frame in place.
    pub fn raw_mut(&mut self) -> (&mut [u8], usize, usize) {
        (self.buf, self.head, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_pull_respect_bounds() {
        let mut mem = [0u8; 32];
        let mut p = PacketBuf::new(&mut mem, 8, 10);
        assert!(!p.push_front(9));
        assert!(p.push_front(8));
        assert_eq!((p.head(), p.len()), (0, 18));
        assert!(p.pull_front(18));
        assert!(p.is_empty());
        assert!(!p.pull_front(1));
        assert!(!p.set_len(33));
        assert!(!p.set_len(usize::MAX));
        assert!(p.set_len(14));
        assert_eq!(p.tailroom(), 0);
    }

    #[test]
    fn new_clamps_out_of_range() {
        let mut mem = [0u8; 4];
        let p = PacketBuf::new(&mut mem, 10, 10);
        assert_eq!((p.head(), p.len()), (4, 0));
    }
}

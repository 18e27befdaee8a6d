//! UDP: the header writer of dsr-gue's outer header and its checksum.

use super::{checksum, put_be16};
use crate::flow::{proto, Addr};

/// Writes an 8-byte UDP header with checksum 0 (none, or to be filled by `checksum::l4`); returns 8.
pub fn write_udp(buf: &mut [u8], sport: u16, dport: u16, payload_len: u16) -> Option<usize> {
    let len = payload_len.checked_add(8)?;
    let b: &mut [u8; 8] = buf.get_mut(..8)?.try_into().ok()?;
    b[0..2].copy_from_slice(&sport.to_be_bytes());
    b[2..4].copy_from_slice(&dport.to_be_bytes());
    b[4..6].copy_from_slice(&len.to_be_bytes());
    b[6..8].copy_from_slice(&[0, 0]);
    Some(8)
}

/// Computes and writes the checksum of the UDP datagram `dgram` (header and payload) from `src`
/// to `dst`; 0 goes out as 0xffff.
pub fn fill_udp_checksum(dgram: &mut [u8], src: &Addr, dst: &Addr) {
    if !put_be16(dgram, 6, 0) {
        return;
    }
    let c = checksum::l4(src, dst, proto::UDP, dgram);
    put_be16(dgram, 6, c);
}

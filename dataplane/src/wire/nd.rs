//! IPv6 neighbor discovery (RFC 4861): reading solicitations and advertisements, and writing the
//! advertisement that answers a solicitation.

use super::checksum;
use crate::flow::{proto, Addr};

/// ICMPv6 type of a neighbor solicitation.
pub const ND_SOLICIT: u8 = 135;
/// ICMPv6 type of a neighbor advertisement.
pub const ND_ADVERT: u8 = 136;
/// Option type: source link-layer address.
pub const OPT_SOURCE_LL: u8 = 1;
/// Option type: target link-layer address.
pub const OPT_TARGET_LL: u8 = 2;
/// Length of a solicitation or advertisement before its options.
pub const ND_LEN: usize = 24;
/// Length of the advertisement [`write_advert`] writes: the message and one target link-layer
/// address option.
pub const ADVERT_LEN: usize = ND_LEN + 8;

/// The target address of a solicitation or advertisement `msg` (the ICMPv6 message).
pub fn target(msg: &[u8]) -> Option<Addr> {
    msg.get(8..24).and_then(Addr::from_wire)
}

/// The MAC in the first link-layer address option of type `kind` of `msg`; `None` when there is
/// none or an option's length is zero or runs past the message.
pub fn link_layer_option(msg: &[u8], kind: u8) -> Option<[u8; 6]> {
    let mut off = ND_LEN;
    while off + 8 <= msg.len() {
        let (k, len) = (msg[off], usize::from(msg[off + 1]) * 8);
        if len == 0 || off + len > msg.len() {
            return None;
        }
        if k == kind {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&msg[off + 2..off + 8]);
            return Some(mac);
        }
        off += len;
    }
    None
}

/// Writes a neighbor advertisement for `target` at `mac` (override flag, plus solicited when
/// answering a host rather than duplicate address detection) with its checksum for `target` ->
/// `dst`; returns [`ADVERT_LEN`].
pub fn write_advert(
    msg: &mut [u8],
    target: &Addr,
    dst: &Addr,
    mac: [u8; 6],
    solicited: bool,
) -> Option<usize> {
    let na = msg.get_mut(..ADVERT_LEN)?;
    let flags = if solicited { 0x60 } else { 0x20 };
    na[..8].copy_from_slice(&[ND_ADVERT, 0, 0, 0, flags, 0, 0, 0]);
    na[8..24].copy_from_slice(&target.0);
    na[24..26].copy_from_slice(&[OPT_TARGET_LL, 1]);
    na[26..32].copy_from_slice(&mac);
    let c = checksum::l4(target, dst, proto::ICMPV6, na);
    na[2..4].copy_from_slice(&c.to_be_bytes());
    Some(ADVERT_LEN)
}

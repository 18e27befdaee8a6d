//! IPv6: the extension header walk (parser and ICMP quotes) and the header writer.

use super::{arr, ParseError};

/// IPv6 extension headers [`parse`] walks over: hop-by-hop, routing, destination options.
const IPV6_HOPOPT: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Longest extension header chain we walk; longer chains are refused rather than looped over.
pub const MAX_IPV6_EXTENSIONS: usize = 8;

/// True for the IANA IPv6 extension header numbers (RFC 8200 4, RFC 7045), which are not transports.
#[inline]
pub(super) fn is_ipv6_extension(nh: u8) -> bool {
    matches!(
        nh,
        IPV6_HOPOPT
            | IPV6_ROUTING
            | IPV6_FRAGMENT
            | 50
            | 51
            | IPV6_DSTOPTS
            | 135
            | 139
            | 140
            | 253
            | 254
    )
}

/// Walks the hop-by-hop, routing and destination options headers of an IPv6 packet.
///
/// Starts at `off` with next header `nh` and stays below `end`. Returns the transport protocol and
/// its offset. Fragment and any other extension header, or a chain longer than
/// [`MAX_IPV6_EXTENSIONS`], is `UnsupportedExtension`; a header past `end` is `Truncated`.
#[inline]
pub(super) fn walk_ipv6_extensions(
    pkt: &[u8],
    mut nh: u8,
    mut off: usize,
    end: usize,
) -> Result<(u8, usize), ParseError> {
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match nh {
            IPV6_HOPOPT | IPV6_ROUTING | IPV6_DSTOPTS => {
                let h: &[u8; 2] = arr(pkt, off).ok_or(ParseError::Truncated)?;
                nh = h[0];
                off += (h[1] as usize + 1) * 8;
                if off > end {
                    return Err(ParseError::Truncated);
                }
            }
            n if is_ipv6_extension(n) => return Err(ParseError::UnsupportedExtension),
            _ => return Ok((nh, off)),
        }
    }
    if is_ipv6_extension(nh) {
        Err(ParseError::UnsupportedExtension)
    } else {
        Ok((nh, off))
    }
}

/// The fields of an IPv6 header, for [`write_ipv6`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv6Fields {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Next header (payload protocol).
    pub next_header: u8,
    /// Payload length in bytes (after the 40-byte header).
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (low 20 bits used).
    pub flow_label: u32,
}

/// Writes a 40-byte IPv6 header; returns 40.
pub fn write_ipv6(buf: &mut [u8], h: &Ipv6Fields) -> Option<usize> {
    let b: &mut [u8; 40] = buf.get_mut(..40)?.try_into().ok()?;
    let w0 = (6u32 << 28) | ((h.traffic_class as u32) << 20) | (h.flow_label & 0x000f_ffff);
    b[0..4].copy_from_slice(&w0.to_be_bytes());
    b[4..6].copy_from_slice(&h.payload_len.to_be_bytes());
    b[6] = h.next_header;
    b[7] = h.hop_limit;
    b[8..24].copy_from_slice(&h.src);
    b[24..40].copy_from_slice(&h.dst);
    Some(40)
}

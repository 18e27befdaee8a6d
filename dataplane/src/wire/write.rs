//! Header writers for encapsulation (dsr-ipip, dsr-gue) and for answers (ICMP errors).
//!
//! Each writes one header at the start of `buf` and returns its length, or `None` (nothing
//! written) when `buf` is too short or a length field would overflow.

use super::checksum;
use super::{ETHERTYPE_VLAN, ETH_LEN};

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

/// Writes an Ethernet II header, with an 802.1Q tag carrying the TCI `vlan` if given; returns 14 or 18.
pub fn write_eth(
    buf: &mut [u8],
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
) -> Option<usize> {
    let len = if vlan.is_some() { ETH_LEN + 4 } else { ETH_LEN };
    let b = buf.get_mut(..len)?;
    b[0..6].copy_from_slice(&dst);
    b[6..12].copy_from_slice(&src);
    if let Some(tci) = vlan {
        b[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        b[14..16].copy_from_slice(&tci.to_be_bytes());
    }
    b[len - 2..len].copy_from_slice(&ethertype.to_be_bytes());
    Some(len)
}

/// Writes a 20-byte IPv4 header with a correct header checksum; returns 20.
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
    let c = checksum::ipv4_header(b);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    Some(20)
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

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice, UdpHeaderSlice};

    #[test]
    fn eth_with_and_without_vlan() {
        let mut b = [0u8; 18];
        assert_eq!(write_eth(&mut b, [1; 6], [2; 6], None, 0x0800), Some(14));
        assert_eq!(&b[..14], &[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0x08, 0x00]);
        assert_eq!(
            write_eth(&mut b, [1; 6], [2; 6], Some(0x2064), 0x86dd),
            Some(18)
        );
        assert_eq!(&b[12..18], &[0x81, 0x00, 0x20, 0x64, 0x86, 0xdd]);
        assert_eq!(
            write_eth(&mut b[..17], [1; 6], [2; 6], Some(1), 0x0800),
            None
        );
        assert_eq!(write_eth(&mut b[..13], [1; 6], [2; 6], None, 0x0800), None);
    }

    #[test]
    fn ipv4_header_is_what_etherparse_reads() {
        let mut b = [0u8; 20];
        let f = Ipv4Fields {
            src: [198, 18, 0, 10],
            dst: [10, 0, 0, 2],
            proto: 4,
            payload_len: 60,
            ttl: 64,
            tos: 0x10,
            id: 0x1234,
            flags_frag: 0x4000,
        };
        assert_eq!(write_ipv4(&mut b, &f), Some(20));
        let h = Ipv4HeaderSlice::from_slice(&b).expect("etherparse reads it");
        assert_eq!(h.source(), f.src);
        assert_eq!(h.destination(), f.dst);
        assert_eq!(h.total_len(), 80);
        assert_eq!(h.ttl(), 64);
        assert_eq!(h.protocol().0, 4);
        assert_eq!(h.identification(), 0x1234);
        assert!(h.dont_fragment());
        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
        assert_eq!(write_ipv4(&mut b[..19], &f), None);
        assert_eq!(
            write_ipv4(
                &mut b,
                &Ipv4Fields {
                    payload_len: 65516,
                    ..f
                }
            ),
            None
        );
    }

    #[test]
    fn ipv6_header_is_what_etherparse_reads() {
        let mut b = [0u8; 40];
        let f = Ipv6Fields {
            src: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            next_header: 41,
            payload_len: 1000,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0xfff12345,
        };
        assert_eq!(write_ipv6(&mut b, &f), Some(40));
        let h = Ipv6HeaderSlice::from_slice(&b).expect("etherparse reads it");
        assert_eq!(h.source(), f.src);
        assert_eq!(h.destination(), f.dst);
        assert_eq!(h.payload_length(), 1000);
        assert_eq!(h.next_header().0, 41);
        assert_eq!(h.hop_limit(), 64);
        assert_eq!(h.traffic_class(), 0xb8);
        assert_eq!(h.flow_label().value(), 0x12345);
        assert_eq!(write_ipv6(&mut b[..39], &f), None);
    }

    #[test]
    fn udp_header_has_length_and_no_checksum() {
        let mut b = [0xffu8; 8];
        assert_eq!(write_udp(&mut b, 40000, 6080, 100), Some(8));
        let h = UdpHeaderSlice::from_slice(&b).expect("etherparse reads it");
        assert_eq!(
            (
                h.source_port(),
                h.destination_port(),
                h.length(),
                h.checksum()
            ),
            (40000, 6080, 108, 0)
        );
        assert_eq!(write_udp(&mut b, 1, 2, 65530), None);
        assert_eq!(write_udp(&mut b[..7], 1, 2, 0), None);
    }
}

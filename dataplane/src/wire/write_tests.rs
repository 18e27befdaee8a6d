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

#[test]
fn ipv4_header_checksum_matches_the_generic_sum_for_any_fields() {
    // write_ipv4 folds native-endian words; the generic RFC 1071 sum is the reference.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let r = next().to_le_bytes();
        let q = next().to_le_bytes();
        let f = Ipv4Fields {
            src: [r[0], r[1], r[2], r[3]],
            dst: [r[4], r[5], r[6], r[7]],
            proto: q[0],
            payload_len: u16::from_le_bytes([q[1], q[2] & 0x7f]),
            ttl: q[3],
            tos: q[4],
            id: u16::from_le_bytes([q[5], q[6]]),
            flags_frag: u16::from(q[7]) << 8,
        };
        let mut b = [0u8; 20];
        assert_eq!(write_ipv4(&mut b, &f), Some(20));
        let written = u16::from_be_bytes([b[10], b[11]]);
        b[10] = 0;
        b[11] = 0;
        assert_eq!(written, checksum::ipv4_header(&b), "{f:?}");
    }
}

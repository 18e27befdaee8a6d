use super::*;
use crate::flow::{proto, Addr, FlowKey};
use proptest::prelude::*;

// Realistic frames, generated once with correct checksums (client 198.18.0.1 / 2001:db8::1,
// VIP 198.18.0.100 / 2001:db8::64, router 10.0.0.1 / 2001:db8::fe0) and kept as hex.
/// 60 bytes.
const ARP_WHO_HAS: &str = concat!(
    "ffffffffffff02000000000108060001080006040001020000000001c6120001000000000000c6120064000000000000",
    "000000000000000000000000",
);
/// 74 bytes.
const V4_TCP_SYN: &str = concat!(
    "0200000000aa02000000000108004500003c1c464000400691ecc6120001c61200649c4000503b9aca0000000000a002",
    "faf03c180000020405b40402080a0001e2400000000001030307",
);
/// 71 bytes.
const V4_UDP_DNS: &str = concat!(
    "0200000000aa0200000000010800450000391c4600004011d1e4c6120001c6120064cf080035002528a1abcd01000001",
    "000000000000076578616d706c6503636f6d0000010001",
);
/// 94 bytes.
const V6_TCP_SYN: &str = concat!(
    "0200000000aa02000000000186dd600000000028064020010db800000000000000000000000120010db8000000000000",
    "0000000000649c4101bb0000000100000000a002faf070f90000020405b40402080a0001e2400000000001030307",
);
/// 98 bytes.
const V4_ECHO_REQUEST: &str = concat!(
    "0200000000aa0200000000010800450000541c464000400191d9c6120001c612006408002cf612340001101112131415",
    "161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445",
    "4647",
);
/// 118 bytes.
const V6_ECHO_REQUEST: &str = concat!(
    "0200000000aa02000000000186dd6000000000403a4020010db800000000000000000000000120010db8000000000000",
    "000000000064800027b143210007101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031",
    "32333435363738393a3b3c3d3e3f4041424344454647",
);
/// 75 bytes.
const VLAN_V4_UDP: &str = concat!(
    "0200000000aa020000000001810020640800450000391c4600004011d1e4c6120001c6120064cf090035002528a0abcd",
    "01000001000000000000076578616d706c6503636f6d0000010001",
);
/// 70 bytes.
const V4_FRAG_NEEDED: &str = concat!(
    "0200000000aa0200000000010800450000381c460000ff01cf070a000001c612006403045aec00000578450005a01c46",
    "400040068c88c6120064c612000100509c4000000007",
);
/// 126 bytes.
const V6_TOO_BIG: &str = concat!(
    "0200000000aa02000000000186dd6000000000483a4020010db8000000000000000000000fe020010db8000000000000",
    "000000000064020077f400000500600000000580114020010db800000000000000000000006420010db8000000000000",
    "0000000000010035cf080580a1b179797979797979797979797979797979",
);
/// 60 bytes.
const V4_TCP_ACK_PADDED: &str = concat!(
    "0200000000aa0200000000010800450000281c46400040069200c6120001c61200649c4000503b9aca01000000085010",
    "faf086250000000000000000",
);
/// 107 bytes.
const V6_EXT_UDP: &str = concat!(
    "0200000000aa02000000000186dd600000000035004020010db800000000000000000000000120010db8000000000000",
    "0000000000643c000502000001001100010400000000cf0a003500255952abcd01000001000000000000076578616d70",
    "6c6503636f6d0000010001",
);
/// 82 bytes.
const V4_UDP_FIRST_FRAG: &str = concat!(
    "0200000000aa020000000001080045000044004d20004011cdd2c6120001c6120064cf0b00350064a1597a7a7a7a7a7a",
    "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a",
);
/// 86 bytes.
const V4_UDP_LATER_FRAG: &str = concat!(
    "0200000000aa020000000001080045000048004d00064011edc8c6120001c61200647a7a7a7a7a7a7a7a7a7a7a7a7a7a",
    "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a",
);

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn all_frames() -> Vec<Vec<u8>> {
    [
        ARP_WHO_HAS,
        V4_TCP_SYN,
        V4_UDP_DNS,
        V6_TCP_SYN,
        V4_ECHO_REQUEST,
        V6_ECHO_REQUEST,
        VLAN_V4_UDP,
        V4_FRAG_NEEDED,
        V6_TOO_BIG,
        V4_TCP_ACK_PADDED,
        V6_EXT_UDP,
        V4_UDP_FIRST_FRAG,
        V4_UDP_LATER_FRAG,
    ]
    .iter()
    .map(|s| hex(s))
    .collect()
}

const C4: Addr = Addr::v4([198, 18, 0, 1]);
const VIP4: Addr = Addr::v4([198, 18, 0, 100]);
const C6: Addr = Addr::v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
const VIP6: Addr = Addr::v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64]);

/// Ports, protocol and addresses as etherparse (an independent parser) sees them.
fn etherparse_view(frame: &[u8]) -> (u16, u16, Addr, Addr) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let s = SlicedPacket::from_ethernet(frame).expect("etherparse accepts the frame");
    let (src, dst) = match s.net {
        Some(NetSlice::Ipv4(ip)) => (
            Addr::v4(ip.header().source()),
            Addr::v4(ip.header().destination()),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            Addr::v6(ip.header().source()),
            Addr::v6(ip.header().destination()),
        ),
        _ => panic!("not IP"),
    };
    let (sp, dp) = match s.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    };
    (sp, dp, src, dst)
}

/// Recomputes the IPv4 header checksum after a test changed a header field.
fn fix_ipv4_checksum(f: &mut [u8], l3_off: usize) {
    let hlen = (f[l3_off] & 0xf) as usize * 4;
    let hlen = hlen.clamp(20, f.len() - l3_off);
    let c = checksum::ipv4_header(&f[l3_off..l3_off + hlen]);
    f[l3_off + 10..l3_off + 12].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn arp_request_is_arp_with_sender_and_target() {
    let f = hex(ARP_WHO_HAS);
    let p = parse(&f).expect("ARP parses");
    assert_eq!(p.l3, L3::Arp);
    assert_eq!(p.ethertype, ETHERTYPE_ARP);
    assert_eq!((p.l3_off, p.l3_end), (14, 42));
    assert_eq!((p.src, p.dst), (C4, VIP4));
    let a = ArpIpv4::new_checked(&f[p.l3_off..]).expect("Ethernet/IPv4 ARP");
    assert_eq!(a.operation(), ARP_REQUEST);
    assert!(verify_l4_checksum(&f, &p));
    assert_eq!(parse_icmp_quote(&f, &p), None);
}

#[test]
fn ipv4_tcp_syn_fields() {
    let f = hex(V4_TCP_SYN);
    let p = parse(&f).expect("SYN parses");
    assert_eq!(p.l3, L3::Ipv4);
    assert_eq!(p.vlan, None);
    assert_eq!((p.l3_off, p.l4_off, p.l3_end), (14, 34, 74));
    assert_eq!(
        (p.proto, p.src, p.dst, p.sport, p.dport),
        (proto::TCP, C4, VIP4, 40000, 80)
    );
    assert_eq!(p.tcp_flags, 0x02);
    assert_eq!((p.frag, p.df, p.ttl), (Frag::None, true, 64));
    assert_eq!(etherparse_view(&f), (p.sport, p.dport, p.src, p.dst));
    assert!(verify_l4_checksum(&f, &p));
}

#[test]
fn ipv4_udp_fields() {
    let f = hex(V4_UDP_DNS);
    let p = parse(&f).expect("UDP parses");
    assert_eq!(
        (p.proto, p.sport, p.dport, p.l3_end),
        (proto::UDP, 53000, 53, 71)
    );
    assert_eq!((p.tcp_flags, p.df), (0, false));
    assert_eq!(etherparse_view(&f), (p.sport, p.dport, p.src, p.dst));
    assert!(verify_l4_checksum(&f, &p));
}

#[test]
fn ipv6_tcp_syn_fields() {
    let f = hex(V6_TCP_SYN);
    let p = parse(&f).expect("IPv6 SYN parses");
    assert_eq!(p.l3, L3::Ipv6);
    assert_eq!((p.l3_off, p.l4_off, p.l3_end), (14, 54, 94));
    assert_eq!(
        (p.proto, p.src, p.dst, p.sport, p.dport),
        (proto::TCP, C6, VIP6, 40001, 443)
    );
    assert_eq!(
        (p.tcp_flags, p.frag, p.df, p.ttl),
        (0x02, Frag::None, true, 64)
    );
    assert_eq!(etherparse_view(&f), (p.sport, p.dport, p.src, p.dst));
    assert!(verify_l4_checksum(&f, &p));
}

#[test]
fn echo_requests_put_identifier_in_both_ports() {
    let f = hex(V4_ECHO_REQUEST);
    let p = parse(&f).expect("ping parses");
    assert_eq!((p.proto, p.icmp_type, p.icmp_code), (proto::ICMP, 8, 0));
    assert_eq!((p.sport, p.dport), (0x1234, 0x1234));
    assert!(verify_l4_checksum(&f, &p));
    assert_eq!(parse_icmp_quote(&f, &p), None, "an echo is no error");
    let view =
        smoltcp::wire::Icmpv4Packet::new_checked(&f[p.l4_off..p.l3_end]).expect("smoltcp view");
    assert_eq!(view.echo_ident(), 0x1234);

    let f = hex(V6_ECHO_REQUEST);
    let p = parse(&f).expect("ping6 parses");
    assert_eq!((p.proto, p.icmp_type, p.icmp_code), (proto::ICMPV6, 128, 0));
    assert_eq!((p.sport, p.dport), (0x4321, 0x4321));
    assert!(verify_l4_checksum(&f, &p));
}

#[test]
fn vlan_tag_moves_l3_and_is_reported() {
    let f = hex(VLAN_V4_UDP);
    let p = parse(&f).expect("tagged frame parses");
    assert_eq!(p.vlan, Some(0x2064));
    assert_eq!(p.ethertype, ETHERTYPE_IPV4);
    assert_eq!((p.l3_off, p.l4_off), (18, 38));
    assert_eq!((p.sport, p.dport), (53001, 53));
    assert_eq!(etherparse_view(&f), (p.sport, p.dport, p.src, p.dst));
    assert!(verify_l4_checksum(&f, &p));
}

#[test]
fn padded_frame_ends_ip_before_padding() {
    let f = hex(V4_TCP_ACK_PADDED);
    assert_eq!(f.len(), 60);
    let p = parse(&f).expect("padded ACK parses");
    assert_eq!(p.l3_end, 54);
    assert_eq!(p.tcp_flags, 0x10);
    // The padding is not part of the checksummed segment.
    assert!(verify_l4_checksum(&f, &p));
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let f = hex(V6_EXT_UDP);
    let p = parse(&f).expect("IPv6 with HBH and DSTOPTS parses");
    assert_eq!((p.proto, p.l4_off), (proto::UDP, 14 + 40 + 16));
    assert_eq!((p.sport, p.dport), (53002, 53));
    assert!(verify_l4_checksum(&f, &p));
}

#[test]
fn fragments_are_classified() {
    let f = hex(V4_UDP_FIRST_FRAG);
    let p = parse(&f).expect("first fragment parses");
    assert_eq!(p.frag, Frag::First);
    // The UDP length (100) is larger than this fragment's payload and still accepted.
    assert_eq!((p.sport, p.dport), (53003, 53));

    let f = hex(V4_UDP_LATER_FRAG);
    let p = parse(&f).expect("later fragment parses");
    assert_eq!(p.frag, Frag::Later);
    assert_eq!((p.proto, p.sport, p.dport), (proto::UDP, 0, 0));
    assert!(verify_l4_checksum(&f, &p), "fragments are not checkable");
}

#[test]
fn other_ethertype_is_ok_and_other() {
    let mut f = hex(V4_TCP_SYN);
    f[12..14].copy_from_slice(&0x88ccu16.to_be_bytes()); // LLDP
    let p = parse(&f).expect("non-IP frame parses");
    assert_eq!((p.l3, p.ethertype, p.l3_end), (L3::Other, 0x88cc, f.len()));
}

#[test]
fn icmpv4_error_quote_gives_the_original_flow() {
    let f = hex(V4_FRAG_NEEDED);
    let p = parse(&f).expect("frag needed parses");
    assert_eq!((p.icmp_type, p.icmp_code, p.ttl), (3, 4, 255));
    assert!(verify_l4_checksum(&f, &p));
    let q = parse_icmp_quote(&f, &p).expect("quote parses");
    assert_eq!(
        q,
        Quoted {
            l3_off: 42,
            l4_off: 62,
            end: 70,
            v6: false,
            proto: proto::TCP,
            src: VIP4,
            dst: C4,
            sport: 80,
            dport: 40000,
            ports_present: true,
        }
    );
}

#[test]
fn icmpv6_error_quote_gives_the_original_flow() {
    let f = hex(V6_TOO_BIG);
    let p = parse(&f).expect("too big parses");
    assert_eq!(p.icmp_type, 2);
    assert!(verify_l4_checksum(&f, &p));
    let q = parse_icmp_quote(&f, &p).expect("quote parses");
    assert_eq!((q.l3_off, q.l4_off, q.end, q.v6), (62, 102, 126, true));
    assert_eq!((q.proto, q.src, q.dst), (proto::UDP, VIP6, C6));
    assert_eq!((q.sport, q.dport, q.ports_present), (53, 53000, true));
}

#[test]
fn short_or_bad_quotes() {
    let f = hex(V4_FRAG_NEEDED);
    let p = parse(&f).expect("frag needed parses");
    // Only two bytes of the quoted TCP header: the flow is known but not its ports.
    let mut short = p;
    short.l3_end = 64;
    let q = parse_icmp_quote(&f, &short).expect("IP header is complete");
    assert_eq!((q.end, q.ports_present, q.sport), (64, false, 0));
    // Quoted IP header cut: nothing usable.
    short.l3_end = 60;
    assert_eq!(parse_icmp_quote(&f, &short), None);
    // Quoted IHL below 5 or version wrong.
    for (off, byte) in [(42, 0x44), (42, 0x65)] {
        let mut g = f.clone();
        g[off] = byte;
        assert_eq!(parse_icmp_quote(&g, &p), None, "byte {byte:#x}");
    }
    // A quoted later fragment has no ports.
    let mut g = f.clone();
    g[42 + 7] = 1;
    assert!(
        !parse_icmp_quote(&g, &p)
            .expect("still an IP header")
            .ports_present
    );
}

#[test]
fn truncated_headers() {
    let syn = hex(V4_TCP_SYN);
    assert_eq!(parse(&syn[..13]), Err(ParseError::Truncated), "Ethernet");
    assert_eq!(parse(&syn[..33]), Err(ParseError::Truncated), "IPv4");
    assert_eq!(
        parse(&hex(VLAN_V4_UDP)[..17]),
        Err(ParseError::Truncated),
        "VLAN tag"
    );
    assert_eq!(
        parse(&hex(V6_TCP_SYN)[..53]),
        Err(ParseError::Truncated),
        "IPv6"
    );
    assert_eq!(
        parse(&hex(ARP_WHO_HAS)[..41]),
        Err(ParseError::Truncated),
        "ARP"
    );
    // An IP packet too short for its TCP header: total length 30.
    let mut f = syn.clone();
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    fix_ipv4_checksum(&mut f, 14);
    assert_eq!(parse(&f), Err(ParseError::Truncated), "TCP inside IP");
    // An echo request with only the 4-byte ICMP header.
    let mut f = hex(V4_ECHO_REQUEST);
    f[16..18].copy_from_slice(&24u16.to_be_bytes());
    fix_ipv4_checksum(&mut f, 14);
    assert_eq!(parse(&f), Err(ParseError::Truncated), "echo identifier");
}

#[test]
fn bad_ihl() {
    let mut f = hex(V4_TCP_SYN);
    f[14] = 0x44;
    fix_ipv4_checksum(&mut f, 14);
    assert_eq!(parse(&f), Err(ParseError::BadIhl));
    // IHL 15 (60 bytes) with a total length of 40.
    let mut f = hex(V4_TCP_SYN);
    f[14] = 0x4f;
    f[16..18].copy_from_slice(&40u16.to_be_bytes());
    assert_eq!(parse(&f), Err(ParseError::BadIhl));
}

#[test]
fn bad_version() {
    let mut f = hex(V4_TCP_SYN);
    f[14] = 0x65;
    assert_eq!(parse(&f), Err(ParseError::BadVersion));
    let mut f = hex(V6_TCP_SYN);
    f[14] = 0x40;
    assert_eq!(parse(&f), Err(ParseError::BadVersion));
}

#[test]
fn bad_length() {
    let syn = hex(V4_TCP_SYN);
    // Total length past the frame (a frame cut after the IP header).
    assert_eq!(parse(&syn[..60]), Err(ParseError::BadLength));
    // Total length smaller than the minimum header.
    let mut f = syn.clone();
    f[16..18].copy_from_slice(&19u16.to_be_bytes());
    fix_ipv4_checksum(&mut f, 14);
    assert_eq!(parse(&f), Err(ParseError::BadLength));
    // IPv6 payload length past the frame.
    assert_eq!(parse(&hex(V6_TCP_SYN)[..90]), Err(ParseError::BadLength));
}

#[test]
fn bad_ip_checksum() {
    let mut f = hex(V4_TCP_SYN);
    f[22] = 63; // TTL changed without fixing the checksum
    assert_eq!(parse(&f), Err(ParseError::BadIpChecksum));
    // A header with options is checked over its whole length.
    let mut f = hex(V4_TCP_SYN);
    f[14] = 0x46;
    f.splice(34..34, [1, 1, 1, 0]); // NOP NOP NOP EOL
    f[16..18].copy_from_slice(&64u16.to_be_bytes());
    fix_ipv4_checksum(&mut f, 14);
    let p = parse(&f).expect("header with options parses");
    assert_eq!((p.l4_off, p.sport), (38, 40000));
    f[35] = 2;
    assert_eq!(parse(&f), Err(ParseError::BadIpChecksum));
}

#[test]
fn bad_tcp_header() {
    let mut f = hex(V4_TCP_SYN);
    f[34 + 12] = 0x40; // data offset 4
    assert_eq!(parse(&f), Err(ParseError::BadTcpHeader));
    f[34 + 12] = 0xb0; // data offset 11 = 44 bytes, segment is 40
    assert_eq!(parse(&f), Err(ParseError::BadTcpHeader));
}

#[test]
fn bad_udp_length() {
    let mut f = hex(V4_UDP_DNS);
    f[34 + 4..34 + 6].copy_from_slice(&7u16.to_be_bytes());
    assert_eq!(parse(&f), Err(ParseError::BadUdpLength));
    f[34 + 4..34 + 6].copy_from_slice(&38u16.to_be_bytes()); // payload is 37
    assert_eq!(parse(&f), Err(ParseError::BadUdpLength));
}

#[test]
fn unsupported_extensions() {
    // Next header 44: a fragment header.
    let mut f = hex(V6_TCP_SYN);
    f[20] = 44;
    assert_eq!(parse(&f), Err(ParseError::UnsupportedExtension));
    // AH is an extension we do not walk.
    f[20] = 51;
    assert_eq!(parse(&f), Err(ParseError::UnsupportedExtension));
    // A chain of nine destination options headers is refused, eight are walked.
    let chain = |n: usize| {
        let mut f = hex(V6_EXT_UDP)[..54].to_vec();
        f[20] = 60;
        for i in 0..n {
            f.extend_from_slice(&[if i + 1 == n { 59 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
        }
        let plen = (n * 8) as u16;
        f[18..20].copy_from_slice(&plen.to_be_bytes());
        f
    };
    let p = parse(&chain(8)).expect("eight headers are walked");
    assert_eq!((p.proto, p.l4_off, p.l3_end), (59, 54 + 64, 54 + 64));
    assert_eq!(parse(&chain(9)), Err(ParseError::UnsupportedExtension));
    // An extension header that claims more than the packet holds.
    let mut f = hex(V6_EXT_UDP);
    f[55] = 200;
    assert_eq!(parse(&f), Err(ParseError::Truncated));
}

#[test]
fn l4_checksum_catches_corruption() {
    for (frame, at) in [
        (V4_TCP_SYN, 60),
        (V4_UDP_DNS, 50),
        (V6_TCP_SYN, 80),
        (V4_ECHO_REQUEST, 60),
        (V6_ECHO_REQUEST, 100),
        (V6_EXT_UDP, 90),
    ] {
        let mut f = hex(frame);
        let p = parse(&f).expect("fixture parses");
        assert!(verify_l4_checksum(&f, &p), "{frame}");
        f[at] ^= 0x01;
        assert!(
            !verify_l4_checksum(&f, &p),
            "corruption at {at} missed in {frame}"
        );
    }
}

#[test]
fn udp_zero_checksum_means_none_on_ipv4_only() {
    let mut f = hex(V4_UDP_DNS);
    f[40..42].copy_from_slice(&[0, 0]);
    f[50] ^= 0xff;
    let p = parse(&f).expect("parses");
    assert!(verify_l4_checksum(&f, &p));
    let mut f = hex(V6_EXT_UDP);
    let p = parse(&f).expect("parses");
    f[p.l4_off + 6..p.l4_off + 8].copy_from_slice(&[0, 0]);
    assert!(!verify_l4_checksum(&f, &p));
}

#[test]
fn l4_checksum_function_reproduces_wire_values() {
    for frame in [
        V4_TCP_SYN,
        V4_UDP_DNS,
        V6_TCP_SYN,
        V6_ECHO_REQUEST,
        V6_EXT_UDP,
    ] {
        let mut f = hex(frame);
        let p = parse(&f).expect("fixture parses");
        let at = p.l4_off
            + if p.proto == proto::TCP {
                16
            } else if p.proto == proto::UDP {
                6
            } else {
                2
            };
        let wire = be16(&f, at);
        assert!(put_be16(&mut f, at, 0));
        let seg = &f[p.l4_off..p.l3_end];
        assert_eq!(checksum::l4(&p.src, &p.dst, p.proto, seg), wire, "{frame}");
    }
    let mut f = hex(V4_ECHO_REQUEST);
    let wire = be16(&f, 36);
    assert!(put_be16(&mut f, 36, 0));
    assert_eq!(checksum::icmpv4(&f[34..]), wire);
}

#[test]
fn incremental_nat_rewrite_keeps_tcp_checksum_valid() {
    // What the pipeline does for nat: VIP:80 -> backend 10.1.0.7:8080, checksums updated in place.
    let mut f = hex(V4_TCP_SYN);
    let backend = [10, 1, 0, 7];
    let ip_c = be16(&f, 24);
    let tcp_c = be16(&f, 50);
    let old_dst: [u8; 4] = f[30..34].try_into().expect("4 bytes");
    f[30..34].copy_from_slice(&backend);
    assert!(put_be16(
        &mut f,
        24,
        checksum::Delta::replace(&old_dst, &backend).apply(ip_c)
    ));
    let tcp_c = checksum::Delta::replace(&old_dst, &backend).apply(tcp_c);
    assert!(put_be16(&mut f, 50, checksum::update16(tcp_c, 80, 8080)));
    assert!(put_be16(&mut f, 36, 8080));
    let p = parse(&f).expect("rewritten frame still has a valid IP checksum");
    assert_eq!((p.dst, p.dport), (Addr::v4(backend), 8080));
    assert!(verify_l4_checksum(&f, &p));
}

#[test]
fn be16_helpers_are_bounds_checked() {
    let mut b = [0u8; 3];
    assert!(put_be16(&mut b, 1, 0xabcd));
    assert_eq!(be16(&b, 1), 0xabcd);
    assert!(!put_be16(&mut b, 2, 1));
    assert!(!put_be16(&mut b, usize::MAX, 1));
    assert_eq!(be16(&b, 2), 0);
    assert_eq!(be16(&b, usize::MAX), 0);
}

/// The invariants the pipeline slices with: offsets ordered and inside the frame.
fn check_invariants(f: &[u8]) {
    if let Ok(p) = parse(f) {
        assert!(
            p.l3_off <= p.l4_off && p.l4_off <= p.l3_end && p.l3_end <= f.len(),
            "{p:?}"
        );
        let _ = verify_l4_checksum(f, &p);
        if let Some(q) = parse_icmp_quote(f, &p) {
            assert!(p.l4_off + 8 == q.l3_off && q.l3_off <= q.l4_off && q.l4_off <= q.end);
            assert!(q.end <= p.l3_end, "{q:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn never_panics_on_arbitrary_bytes(f in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_invariants(&f);
    }

    #[test]
    fn never_panics_on_random_ip_behind_ethernet(
        ethertype in prop::sample::select(vec![ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_ARP, ETHERTYPE_VLAN]),
        body in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut f = hex(V4_TCP_SYN)[..12].to_vec();
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&body);
        if ethertype == ETHERTYPE_IPV4 && f.len() >= 34 {
            fix_ipv4_checksum(&mut f, 14);
        }
        check_invariants(&f);
    }

    #[test]
    fn never_panics_on_mutated_frames(
        which in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        fix in any::<bool>(),
    ) {
        let frames = all_frames();
        let mut f = frames[which.index(frames.len())].clone();
        for (at, v) in edits {
            let i = at.index(f.len());
            f[i] = v;
        }
        // Fix the IPv4 checksum half the time so the mutations reach the transport code.
        if fix && f.len() >= 34 && f[12..14] == [8, 0] {
            fix_ipv4_checksum(&mut f, 14);
        }
        // Cut the frame short a quarter of the time.
        let c = cut.index(4 * f.len());
        let keep = if c < f.len() { c } else { f.len() };
        check_invariants(&f[..keep]);
    }
}

proptest! {
    /// The fixed-layout IPv4 rewrite (per packet of v4 nat/fullnat flows) writes the very bytes
    /// the general rewrite writes, with sealed (folded) deltas, for TCP, UDP, and UDP without
    /// a checksum, whatever the new tuple.
    #[test]
    fn rewrite_v4_equals_general_rewrite(
        frame in prop_oneof![Just(V4_TCP_SYN), Just(V4_UDP_DNS), Just(VLAN_V4_UDP), Just(V4_TCP_ACK_PADDED)],
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        sport in any::<u16>(),
        dport in any::<u16>(),
        no_udp_checksum in any::<bool>(),
    ) {
        let mut f = hex(frame);
        let p = parse(&f).expect("sample frames parse");
        if p.proto == proto::UDP && no_udp_checksum {
            prop_assert!(put_be16(&mut f, p.l4_off + 6, 0));
        }
        let to = FlowKey { src: Addr::v4(src), dst: Addr::v4(dst), sport, dport, proto: p.proto };
        let deltas = nat::deltas(&p.key(), &to);
        let at = nat::IpAt { l3: p.l3_off, l4: p.l4_off, end: p.l3_end, v4: true, proto: p.proto };
        let ports = nat::ports(sport, dport);
        let mut general = f.clone();
        nat::rewrite(&mut general, at, &to.src, &to.dst, ports, deltas);
        nat::rewrite_v4(&mut f, at, src, dst, ports, deltas);
        prop_assert_eq!(&f, &general);
        let q = parse(&f).expect("rewritten frame keeps a valid IP checksum");
        prop_assert_eq!(q.key(), to);
        prop_assert!(verify_l4_checksum(&f, &q));
    }
}

proptest! {
    /// The fast path's rewrite of an untagged frame writes the very bytes `rewrite_v4` and
    /// `set_macs` write, for TCP, UDP and UDP without a checksum, whatever the new tuple and
    /// MACs, and refuses (writing nothing) a frame too short for its headers.
    #[test]
    fn rewrite_v4_frame_equals_rewrite_v4(
        frame in prop_oneof![Just(V4_TCP_SYN), Just(V4_UDP_DNS), Just(V4_TCP_ACK_PADDED)],
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        sport in any::<u16>(),
        dport in any::<u16>(),
        macs in any::<([u8; 6], [u8; 6])>(),
        no_udp_checksum in any::<bool>(),
    ) {
        let mut f = hex(frame);
        let p = parse(&f).expect("sample frames parse");
        if p.proto == proto::UDP && no_udp_checksum {
            prop_assert!(put_be16(&mut f, p.l4_off + 6, 0));
        }
        let to = FlowKey { src: Addr::v4(src), dst: Addr::v4(dst), sport, dport, proto: p.proto };
        let deltas = nat::deltas(&p.key(), &to);
        let at = nat::IpAt { l3: p.l3_off, l4: p.l4_off, end: p.l3_end, v4: true, proto: p.proto };
        let ports = nat::ports(sport, dport);
        let mut want = f.clone();
        nat::rewrite_v4(&mut want, at, src, dst, ports, deltas);
        crate::wire::set_macs(&mut want, macs.0, macs.1);
        let tcp = p.proto == proto::TCP;
        prop_assert!(nat::rewrite_v4_frame(&mut f, &crate::wire::mac_pair(macs.0, macs.1), (&src, &dst), ports, deltas, tcp));
        prop_assert_eq!(&f, &want);
        let short = if tcp { 53 } else { 41 };
        let mut cut = want[..short].to_vec();
        prop_assert!(!nat::rewrite_v4_frame(&mut cut, &crate::wire::mac_pair(macs.0, macs.1), (&src, &dst), ports, deltas, tcp));
        prop_assert_eq!(&cut[..], &want[..short]);
    }
}

/// Every TCP header length a SYN can have (20 to 60 bytes, no payload; the fixed-word cases
/// among them): a right checksum passes and any one byte changed fails, as the general check.
#[test]
fn a_syns_checksum_check_from_words_holds_for_every_header_length() {
    let (src, dst) = (Addr::v4([198, 18, 0, 1]), Addr::v4([198, 18, 0, 100]));
    for hdr in (20..=60).step_by(4) {
        let mut f = vec![0u8; 14 + 20 + hdr];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + hdr) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = proto::TCP;
        f[26..30].copy_from_slice(&src.v4_octets());
        f[30..34].copy_from_slice(&dst.v4_octets());
        fix_ipv4_checksum(&mut f, 14);
        for (i, b) in f[34..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(hdr as u8);
        }
        f[46] = ((hdr / 4) as u8) << 4;
        f[47] = 0x02;
        f[50..52].fill(0);
        let c = checksum::l4(&src, &dst, proto::TCP, &f[34..]);
        f[50..52].copy_from_slice(&c.to_be_bytes());
        let v = parse_v4_flow(&f).expect("a SYN the fast parse reads");
        assert!(verify_v4_l4(&f, &v), "{hdr}-byte header, right checksum");
        for i in 34..f.len() {
            if i == 46 {
                continue; // the data offset: the fast parse reads it
            }
            let mut g = f.clone();
            g[i] ^= 0x41;
            let Some(w) = parse_v4_flow(&g) else {
                continue;
            };
            let p = parse(&g).expect("the fast parse read it");
            assert!(!verify_v4_l4(&g, &w), "{hdr}-byte header, byte {i} changed");
            assert_eq!(verify_v4_l4(&g, &w), verify_l4_checksum(&g, &p));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// A new flow's checksum check from the fast parse's words gives `verify_l4_checksum`'s
    /// answer for every frame the fast parse reads: TCP and UDP (with and without a
    /// checksum, a UDP length short of the IP payload) of every length, checksums right,
    /// wrong, or bytes changed after them.
    #[test]
    fn the_words_checksum_check_is_the_general_one(
        udp in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..70),
        trailer in 0..4usize,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        no_udp_checksum in any::<bool>(),
    ) {
        let (src, dst) = (Addr::v4([198, 18, 0, 1]), Addr::v4([198, 18, 0, 100]));
        let hdr = if udp { 8 } else { 20 };
        let mut f = vec![0u8; 14 + 20 + hdr + payload.len() + trailer];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip_len = (20 + hdr + payload.len() + trailer) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[22] = 64;
        f[23] = if udp { proto::UDP } else { proto::TCP };
        f[26..30].copy_from_slice(&src.v4_octets());
        f[30..34].copy_from_slice(&dst.v4_octets());
        fix_ipv4_checksum(&mut f, 14);
        f[34 + hdr..34 + hdr + payload.len()].copy_from_slice(&payload);
        if udp {
            // The datagram stops before the IP packet's last `trailer` bytes.
            f[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            if !no_udp_checksum {
                let end = 34 + 8 + payload.len();
                let c = checksum::l4(&src, &dst, proto::UDP, &f[34..end]);
                f[40..42].copy_from_slice(&c.to_be_bytes());
            }
        } else {
            f[46] = 5 << 4;
            f[47] = 0x02;
            let c = checksum::l4(&src, &dst, proto::TCP, &f[34..]);
            f[50..52].copy_from_slice(&c.to_be_bytes());
        }
        for (at, v) in edits {
            // Transport bytes only: the fast parse must still read the frame.
            let i = 34 + at.index(f.len() - 34);
            // (Not the UDP length nor the TCP data offset.)
            let length_field = if udp { (38..40).contains(&i) } else { i == 46 };
            if !length_field {
                f[i] = v;
            }
        }
        let Some(v) = parse_v4_flow(&f) else {
            return Ok(());
        };
        let p = parse(&f).expect("the fast parse read it");
        prop_assert_eq!(verify_v4_l4(&f, &v), verify_l4_checksum(&f, &p));
    }
}

mod fast_parse {
    use super::super::{parse, parse_v4_flow, parsed_v4};
    use proptest::prelude::*;

    /// An IPv4 TCP (6) or UDP (17) frame with valid lengths and header checksum, from a few
    /// header fields.
    fn frame(proto: u8, flags_frag: u16, ttl: u8, payload: usize) -> Vec<u8> {
        let l4 = if proto == 6 { 20 } else { 8 };
        let total = 20 + l4 + payload;
        let mut f = vec![0u8; 14 + total];
        f[12] = 0x08;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
        f[20..22].copy_from_slice(&flags_frag.to_be_bytes());
        f[22] = ttl;
        f[23] = proto;
        f[26..34].copy_from_slice(&[198, 19, 0, 1, 198, 18, 0, 100]);
        f[34..38].copy_from_slice(&[0x9c, 0x40, 0, 80]);
        if proto == 6 {
            f[46] = 5 << 4;
            f[47] = 0x10;
        } else {
            f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        }
        let c = super::super::checksum::sum(&f[14..34], 0);
        f[24..26].copy_from_slice(&(!(c as u16)).to_be_bytes());
        f
    }

    /// Every UDP length and every TCP data offset, with payloads around them: the fast parse
    /// takes a frame exactly when `parse` does (its length tests fold two bounds into one).
    #[test]
    fn fast_parse_lengths_agree_with_parse() {
        for payload in [0, 1, 12, 40] {
            let f = frame(17, 0x4000, 64, payload);
            for ulen in 0..=u16::MAX {
                let mut g = f.clone();
                g[38..40].copy_from_slice(&ulen.to_be_bytes());
                assert_eq!(
                    parse_v4_flow(&g).is_some(),
                    parse(&g).is_ok(),
                    "udp length {ulen}, payload {payload}"
                );
            }
            let f = frame(6, 0x4000, 64, payload);
            for byte in 0..=u8::MAX {
                let mut g = f.clone();
                g[46] = byte;
                assert_eq!(
                    parse_v4_flow(&g).is_some(),
                    parse(&g).is_ok(),
                    "tcp offset byte {byte:#x}, payload {payload}"
                );
            }
        }
    }

    proptest! {
        /// The fast parser accepts only what `parse` accepts, and `parsed_v4` rebuilds exactly
        /// what `parse` returns, whatever bytes are changed.
        #[test]
        fn fast_parse_agrees_with_parse(
            proto in prop_oneof![Just(6u8), Just(17u8)],
            flags_frag in prop_oneof![Just(0u16), Just(0x4000), Just(0x2000), Just(0x0010)],
            ttl in any::<u8>(),
            payload in 0usize..40,
            pokes in proptest::collection::vec((0usize..80, any::<u8>()), 0..3),
            cut in 0usize..4,
        ) {
            // The unmodified, unfragmented frame takes the fast path.
            prop_assert!(parse_v4_flow(&frame(proto, 0x4000, ttl, payload)).is_some());
            let mut f = frame(proto, flags_frag, ttl, payload);
            for (i, b) in pokes {
                if let Some(x) = f.get_mut(i) {
                    *x = b;
                }
            }
            f.truncate(f.len().saturating_sub(cut * 7));
            if let Some(v) = parse_v4_flow(&f) {
                let p = parse(&f);
                prop_assert_eq!(p, Ok(parsed_v4(&f, &v)));
            }
        }
    }
}

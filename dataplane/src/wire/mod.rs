//! Checked views over the headers the dataplane reads and writes, and checksum arithmetic.
//!
//! [`parse`] is the single-pass classifier the pipeline runs on every frame: no allocation, no
//! panic whatever the input. [`checksum`] holds the RFC 1071/1624 arithmetic, [`verify_l4_checksum`]
//! and [`parse_icmp_quote`] the slower checks that only packets creating state or carrying ICMP
//! errors need, and the `write_*` functions build the headers of encapsulations and answers.
//! Views for building answers come from `smoltcp::wire` (re-exported here) plus [`ArpIpv4`].

pub mod checksum;
mod view;
mod write;

pub use view::{ArpIpv4, ARP_IPV4_LEN, ARP_REPLY, ARP_REQUEST};
pub use write::{write_eth, write_ipv4, write_ipv6, write_udp, Ipv4Fields, Ipv6Fields};

/// smoltcp's checked views and reprs, so callers need a single `wire::` import.
pub use smoltcp::wire::{
    ArpHardware, ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame,
    EthernetProtocol, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Icmpv6Message, Icmpv6Packet,
    Icmpv6Repr, Ipv4Packet, Ipv6Packet, NdiscNeighborFlags, NdiscRepr, TcpPacket, UdpPacket,
};

use crate::flow::{proto, Addr};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// Ethernet header length without a VLAN tag.
pub const ETH_LEN: usize = 14;

/// What the network layer of a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    /// An ARP packet at `l3_off`.
    Arp,
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
    /// Any other EtherType.
    Other,
}

/// Fragmentation state of an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment.
    None,
    /// First fragment (offset 0, more fragments): ports are present.
    First,
    /// A later fragment: no transport header.
    Later,
}

/// The result of [`parse`]: offsets and the fields the pipeline classifies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The 802.1Q TCI (priority, DEI and VLAN id), if the frame had one tag.
    pub vlan: Option<u16>,
    /// The EtherType after any VLAN tag.
    pub ethertype: u16,
    /// Network layer.
    pub l3: L3,
    /// Offset of the network header (14, or 18 with a VLAN tag).
    pub l3_off: usize,
    /// Offset of the transport header (IPv4: `l3_off + IHL*4`; IPv6: after the skipped extension headers).
    /// Non-IP frames: equal to `l3_end`.
    pub l4_off: usize,
    /// Offset just past the IP packet (`l3_off + total length`); trailing Ethernet padding is after it.
    /// ARP: just past the ARP packet. Other EtherTypes: the frame length.
    pub l3_end: usize,
    /// IP protocol / IPv6 next header of the transport (after extension headers).
    pub proto: u8,
    /// Source address (ARP over Ethernet/IPv4: the sender protocol address; else zero for non-IP).
    pub src: Addr,
    /// Destination address (ARP over Ethernet/IPv4: the target protocol address; else zero for non-IP).
    pub dst: Addr,
    /// Source port (TCP/UDP), ICMP echo identifier for echo request/reply, else 0.
    pub sport: u16,
    /// Destination port (TCP/UDP), ICMP echo identifier for echo request/reply, else 0.
    pub dport: u16,
    /// TCP flags byte (FIN=0x01, SYN=0x02, RST=0x04, PSH=0x08, ACK=0x10), else 0.
    pub tcp_flags: u8,
    /// ICMP / ICMPv6 type, else 0.
    pub icmp_type: u8,
    /// ICMP / ICMPv6 code, else 0.
    pub icmp_code: u8,
    /// Fragment state.
    pub frag: Frag,
    /// IPv4 DF bit (always true for IPv6, which routers never fragment).
    pub df: bool,
    /// TTL / hop limit.
    pub ttl: u8,
}

/// Why a frame was rejected by [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The frame (or the IP packet) ends before a header it announces.
    #[error("truncated header")]
    Truncated,
    /// IPv4 IHL below 5 or past the packet.
    #[error("bad IPv4 header length")]
    BadIhl,
    /// IP version field disagrees with the EtherType.
    #[error("bad IP version")]
    BadVersion,
    /// IP total/payload length smaller than the header or larger than the frame.
    #[error("bad IP length")]
    BadLength,
    /// IPv4 header checksum wrong.
    #[error("bad IPv4 header checksum")]
    BadIpChecksum,
    /// TCP data offset below 5 or past the packet.
    #[error("bad TCP header length")]
    BadTcpHeader,
    /// UDP length field smaller than 8 or larger than the IP payload.
    #[error("bad UDP length")]
    BadUdpLength,
    /// An IPv6 extension header we do not walk (or a chain that is too long).
    #[error("unsupported IPv6 extension header")]
    UnsupportedExtension,
}

/// IPv6 extension headers [`parse`] walks over: hop-by-hop, routing, destination options.
const IPV6_HOPOPT: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Longest extension header chain we walk; longer chains are refused rather than looped over.
pub const MAX_IPV6_EXTENSIONS: usize = 8;

/// Reads a fixed-size array at `off`, or `None` past the end: indexing the array is then check-free.
#[inline(always)]
fn arr<const N: usize>(b: &[u8], off: usize) -> Option<&[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// The big-endian 16-bit word at `off`, or 0 when `b` is too short.
#[inline]
pub fn be16(b: &[u8], off: usize) -> u16 {
    arr::<2>(b, off).map_or(0, |w| u16::from_be_bytes(*w))
}

/// The big-endian 32-bit word at `off`, or 0 when `b` is too short.
#[inline]
pub fn be32(b: &[u8], off: usize) -> u32 {
    arr::<4>(b, off).map_or(0, |w| u32::from_be_bytes(*w))
}

/// Writes `v` big-endian at `off`; false (and `b` unchanged) when it does not fit.
#[inline]
pub fn put_be16(b: &mut [u8], off: usize, v: u16) -> bool {
    match off.checked_add(2).and_then(|end| b.get_mut(off..end)) {
        Some(dst) => {
            dst.copy_from_slice(&v.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Writes `v` big-endian at `off`; false (and `b` unchanged) when it does not fit.
#[inline]
pub fn put_be32(b: &mut [u8], off: usize, v: u32) -> bool {
    match off.checked_add(4).and_then(|end| b.get_mut(off..end)) {
        Some(dst) => {
            dst.copy_from_slice(&v.to_be_bytes());
            true
        }
        None => false,
    }
}

/// True for the IANA IPv6 extension header numbers (RFC 8200 4, RFC 7045), which are not transports.
#[inline]
fn is_ipv6_extension(nh: u8) -> bool {
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
fn walk_ipv6_extensions(
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

/// True for an ICMPv4 echo request or reply (types 8, 0).
#[inline]
fn is_icmpv4_echo(t: u8) -> bool {
    t == 8 || t == 0
}

/// True for an ICMPv6 echo request or reply (types 128, 129).
#[inline]
fn is_icmpv6_echo(t: u8) -> bool {
    t == 128 || t == 129
}

/// True for the ICMPv4 error types that quote a packet: unreachable, source quench, time exceeded, parameter problem.
#[inline]
pub fn is_icmpv4_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 11 | 12)
}

/// True for the ICMPv6 error types that quote a packet: unreachable, packet too big, time exceeded, parameter problem.
#[inline]
pub fn is_icmpv6_error(t: u8) -> bool {
    matches!(t, 1..=4)
}

/// True when a 20-byte IPv4 header's ones' complement sum is all ones (checksum correct).
///
/// Native-endian loads: the sum of byte-swapped words is the byte-swapped sum (RFC 1071 2.B),
/// and all ones is the same either way, so no byte swapping is needed.
#[inline(always)]
fn ipv4_20_sums_to_ones(h: &[u8; 20]) -> bool {
    let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
    let s = w(0) + w(4) + w(8) + w(12) + w(16);
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s == 0xffff
}

/// Checks the IPv4 header checksum (switched off under `cfg(fuzzing)` so fuzzers reach the L4 code).
#[inline(always)]
fn ipv4_checksum_ok(frame: &[u8], h: &[u8; 20], l3_off: usize, hlen: usize) -> bool {
    if cfg!(fuzzing) {
        return true;
    }
    if hlen == 20 {
        ipv4_20_sums_to_ones(h)
    } else {
        frame
            .get(l3_off..l3_off + hlen)
            .is_some_and(|hdr| checksum::sum(hdr, 0) == 0xffff)
    }
}

/// What the transport header contributes to [`Parsed`].
#[derive(Clone, Copy, Default)]
struct L4Fields {
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    icmp_type: u8,
    icmp_code: u8,
}

/// Classifies a frame in one pass. Verifies lengths and the IPv4 header checksum, not L4 checksums.
///
/// Errors: fewer bytes than a fixed header needs (Ethernet, VLAN tag, IP, or a transport / extension
/// header inside the IP packet) is [`ParseError::Truncated`]; the rest as the variants say. For a
/// first fragment the UDP length is not compared with the fragment's payload (it covers the whole
/// datagram). Frames that are not IPv4, IPv6 or ARP are `Ok` with `l3 == L3::Other`.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    let eth: &[u8; ETH_LEN] = arr(frame, 0).ok_or(ParseError::Truncated)?;
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    // The untagged IPv4 frame is the common case: test it first.
    if ethertype == ETHERTYPE_IPV4 {
        return parse_ipv4(frame, None, ETH_LEN);
    }
    let (vlan, ethertype, l3_off) = if ethertype == ETHERTYPE_VLAN {
        let tag: &[u8; 4] = arr(frame, ETH_LEN).ok_or(ParseError::Truncated)?;
        let inner = u16::from_be_bytes([tag[2], tag[3]]);
        (
            Some(u16::from_be_bytes([tag[0], tag[1]])),
            inner,
            ETH_LEN + 4,
        )
    } else {
        (None, ethertype, ETH_LEN)
    };
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(frame, vlan, l3_off),
        ETHERTYPE_IPV6 => parse_ipv6(frame, vlan, l3_off),
        ETHERTYPE_ARP => parse_arp(frame, vlan, l3_off),
        _ => Ok(non_ip(vlan, ethertype, L3::Other, l3_off, frame.len())),
    }
}

/// A [`Parsed`] for a frame without IP: everything past the network header is zero.
fn non_ip(vlan: Option<u16>, ethertype: u16, l3: L3, l3_off: usize, l3_end: usize) -> Parsed {
    Parsed {
        vlan,
        ethertype,
        l3,
        l3_off,
        l4_off: l3_end,
        l3_end,
        proto: 0,
        src: Addr::default(),
        dst: Addr::default(),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        frag: Frag::None,
        df: false,
        ttl: 0,
    }
}

/// ARP: the fixed header and both address pairs must be present; Ethernet/IPv4 fills `src`/`dst`.
#[inline(never)]
fn parse_arp(frame: &[u8], vlan: Option<u16>, l3_off: usize) -> Result<Parsed, ParseError> {
    let h: &[u8; 8] = arr(frame, l3_off).ok_or(ParseError::Truncated)?;
    let (hlen, plen) = (h[4] as usize, h[5] as usize);
    let end = l3_off + 8 + 2 * (hlen + plen);
    if end > frame.len() {
        return Err(ParseError::Truncated);
    }
    let mut p = non_ip(vlan, ETHERTYPE_ARP, L3::Arp, l3_off, end);
    if let Some(a) = ArpIpv4::new_checked(frame.get(l3_off..).unwrap_or(&[])) {
        p.src = Addr::v4(a.sender_ip());
        p.dst = Addr::v4(a.target_ip());
    }
    Ok(p)
}

#[inline(always)]
fn parse_ipv4(frame: &[u8], vlan: Option<u16>, l3_off: usize) -> Result<Parsed, ParseError> {
    let h: &[u8; 20] = arr(frame, l3_off).ok_or(ParseError::Truncated)?;
    // Almost every IPv4 header is 0x45 (no options): one compare settles version and IHL, and
    // lets the compiler drop the option-length checks below on that path.
    let hlen = if h[0] == 0x45 {
        20
    } else {
        if h[0] >> 4 != 4 {
            return Err(ParseError::BadVersion);
        }
        let hlen = (h[0] & 0x0f) as usize * 4;
        if hlen < 20 {
            return Err(ParseError::BadIhl);
        }
        hlen
    };
    let total = u16::from_be_bytes([h[2], h[3]]) as usize;
    // `arr` succeeded, so l3_off + 20 <= frame.len().
    if total < 20 || total > frame.len() - l3_off {
        return Err(ParseError::BadLength);
    }
    if hlen > total {
        return Err(ParseError::BadIhl);
    }
    if !ipv4_checksum_ok(frame, h, l3_off, hlen) {
        return Err(ParseError::BadIpChecksum);
    }
    let ff = u16::from_be_bytes([h[6], h[7]]);
    let frag = if ff & 0x1fff != 0 {
        Frag::Later
    } else if ff & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::None
    };
    let l4_off = l3_off + hlen;
    let l3_end = l3_off + total;
    let proto = h[9];
    let l4 = if frag == Frag::Later {
        L4Fields::default()
    } else {
        parse_l4(frame, proto, l4_off, l3_end, frag, proto::ICMP)?
    };
    Ok(Parsed {
        vlan,
        ethertype: ETHERTYPE_IPV4,
        l3: L3::Ipv4,
        l3_off,
        l4_off,
        l3_end,
        proto,
        src: Addr::v4([h[12], h[13], h[14], h[15]]),
        dst: Addr::v4([h[16], h[17], h[18], h[19]]),
        sport: l4.sport,
        dport: l4.dport,
        tcp_flags: l4.tcp_flags,
        icmp_type: l4.icmp_type,
        icmp_code: l4.icmp_code,
        frag,
        df: ff & 0x4000 != 0,
        ttl: h[8],
    })
}

#[inline(always)]
fn parse_ipv6(frame: &[u8], vlan: Option<u16>, l3_off: usize) -> Result<Parsed, ParseError> {
    let h: &[u8; 40] = arr(frame, l3_off).ok_or(ParseError::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::BadVersion);
    }
    let plen = u16::from_be_bytes([h[4], h[5]]) as usize;
    if plen > frame.len() - l3_off - 40 {
        return Err(ParseError::BadLength);
    }
    let l3_end = l3_off + 40 + plen;
    let pkt = frame.get(..l3_end).unwrap_or(&[]);
    let (proto, l4_off) = walk_ipv6_extensions(pkt, h[6], l3_off + 40, l3_end)?;
    let l4 = parse_l4(frame, proto, l4_off, l3_end, Frag::None, proto::ICMPV6)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    Ok(Parsed {
        vlan,
        ethertype: ETHERTYPE_IPV6,
        l3: L3::Ipv6,
        l3_off,
        l4_off,
        l3_end,
        proto,
        src: Addr::v6(src),
        dst: Addr::v6(dst),
        sport: l4.sport,
        dport: l4.dport,
        tcp_flags: l4.tcp_flags,
        icmp_type: l4.icmp_type,
        icmp_code: l4.icmp_code,
        frag: Frag::None,
        df: true,
        ttl: h[7],
    })
}

/// The transport header inside `frame[l4_off..l3_end]`; `icmp` is the ICMP protocol of this IP version.
#[inline(always)]
fn parse_l4(
    frame: &[u8],
    proto: u8,
    l4: usize,
    l3_end: usize,
    frag: Frag,
    icmp: u8,
) -> Result<L4Fields, ParseError> {
    let pkt = frame.get(..l3_end).unwrap_or(&[]);
    let mut f = L4Fields::default();
    match proto {
        proto::TCP => {
            let t: &[u8; 20] = arr(pkt, l4).ok_or(ParseError::Truncated)?;
            let doff = (t[12] >> 4) as usize * 4;
            if doff < 20 || doff > pkt.len() - l4 {
                return Err(ParseError::BadTcpHeader);
            }
            f.sport = u16::from_be_bytes([t[0], t[1]]);
            f.dport = u16::from_be_bytes([t[2], t[3]]);
            f.tcp_flags = t[13];
        }
        proto::UDP => {
            let u: &[u8; 8] = arr(pkt, l4).ok_or(ParseError::Truncated)?;
            let ulen = u16::from_be_bytes([u[4], u[5]]) as usize;
            // A first fragment's UDP length covers the whole datagram, not this fragment.
            if ulen < 8 || (ulen > pkt.len() - l4 && frag == Frag::None) {
                return Err(ParseError::BadUdpLength);
            }
            f.sport = u16::from_be_bytes([u[0], u[1]]);
            f.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        n if n == icmp => {
            let c: &[u8; 4] = arr(pkt, l4).ok_or(ParseError::Truncated)?;
            f.icmp_type = c[0];
            f.icmp_code = c[1];
            let echo = if icmp == proto::ICMP {
                is_icmpv4_echo(c[0])
            } else {
                is_icmpv6_echo(c[0])
            };
            if echo {
                let e: &[u8; 8] = arr(pkt, l4).ok_or(ParseError::Truncated)?;
                let id = u16::from_be_bytes([e[4], e[5]]);
                f.sport = id;
                f.dport = id;
            }
        }
        _ => {}
    }
    Ok(f)
}

/// Verifies the transport checksum of a parsed IP packet: TCP, UDP, ICMPv4 and ICMPv6.
///
/// UDP over IPv4 with checksum 0 carries none and is valid; over IPv6 it is invalid (RFC 8200).
/// Other protocols, non-IP frames and fragments (whose checksum covers the whole datagram) are `true`.
pub fn verify_l4_checksum(frame: &[u8], p: &Parsed) -> bool {
    if p.frag != Frag::None || !matches!(p.l3, L3::Ipv4 | L3::Ipv6) {
        return true;
    }
    let Some(seg) = frame.get(p.l4_off..p.l3_end) else {
        return false;
    };
    let v4 = p.l3 == L3::Ipv4;
    let ok = |seg: &[u8], initial: u32| checksum::sum(seg, initial) == 0xffff;
    match p.proto {
        proto::TCP => ok(
            seg,
            checksum::pseudo_header(&p.src, &p.dst, proto::TCP, seg.len() as u32),
        ),
        proto::UDP => {
            let csum = be16(seg, 6);
            if csum == 0 {
                return v4;
            }
            // The checksum covers the UDP length, not any bytes after it inside the IP payload.
            let Some(dgram) = seg.get(..be16(seg, 4) as usize) else {
                return false;
            };
            ok(
                dgram,
                checksum::pseudo_header(&p.src, &p.dst, proto::UDP, dgram.len() as u32),
            )
        }
        proto::ICMP if v4 => ok(seg, 0),
        proto::ICMPV6 if !v4 => ok(
            seg,
            checksum::pseudo_header(&p.src, &p.dst, proto::ICMPV6, seg.len() as u32),
        ),
        _ => true,
    }
}

/// The packet quoted by an ICMP error, as far as it is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    /// Offset of the quoted IP header in the frame (`p.l4_off + 8`).
    pub l3_off: usize,
    /// Offset of the quoted transport header (after the IPv4 options / IPv6 extension headers).
    pub l4_off: usize,
    /// Offset just past the quoted bytes actually present (quotes are truncated).
    pub end: usize,
    /// True for a quoted IPv6 packet.
    pub v6: bool,
    /// Quoted transport protocol.
    pub proto: u8,
    /// Quoted source address (the original packet's sender: usually us or our peer).
    pub src: Addr,
    /// Quoted destination address.
    pub dst: Addr,
    /// Quoted source port (ICMP echo: the identifier), when `ports_present`.
    pub sport: u16,
    /// Quoted destination port (ICMP echo: the identifier), when `ports_present`.
    pub dport: u16,
    /// True when the quote holds the ports (TCP/UDP: 4 bytes; ICMP echo: 8 bytes) and is no later fragment.
    pub ports_present: bool,
}

/// Parses the packet quoted by an ICMPv4 (types 3, 4, 11, 12) or ICMPv6 (types 1 to 4) error.
///
/// `None` for other packets and for malformed quotes (quoted IP version or IHL wrong, IP header
/// not complete, IPv6 extension chain not walkable). The quoted IPv4 checksum is not verified:
/// routers may quote a header they already changed.
pub fn parse_icmp_quote(frame: &[u8], p: &Parsed) -> Option<Quoted> {
    let is_error = match (p.l3, p.proto) {
        (L3::Ipv4, proto::ICMP) => is_icmpv4_error(p.icmp_type),
        (L3::Ipv6, proto::ICMPV6) => is_icmpv6_error(p.icmp_type),
        _ => false,
    };
    if !is_error || p.frag == Frag::Later {
        return None;
    }
    let pkt = frame.get(..p.l3_end)?;
    let l3_off = p.l4_off.checked_add(8)?;
    let mut q = if p.l3 == L3::Ipv4 {
        let h: &[u8; 20] = arr(pkt, l3_off)?;
        let hlen = (h[0] & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([h[2], h[3]]) as usize;
        if h[0] >> 4 != 4 || hlen < 20 || total < hlen || l3_off + hlen > pkt.len() {
            return None;
        }
        let later = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
        Quoted {
            l3_off,
            l4_off: l3_off + hlen,
            end: pkt.len().min(l3_off + total),
            v6: false,
            proto: h[9],
            src: Addr::v4([h[12], h[13], h[14], h[15]]),
            dst: Addr::v4([h[16], h[17], h[18], h[19]]),
            sport: 0,
            dport: 0,
            // Provisional: a later fragment never has ports; checked against the length below.
            ports_present: !later,
        }
    } else {
        let h: &[u8; 40] = arr(pkt, l3_off)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        let end = pkt
            .len()
            .min(l3_off + 40 + u16::from_be_bytes([h[4], h[5]]) as usize);
        let (nh, l4_off) = walk_ipv6_extensions(pkt.get(..end)?, h[6], l3_off + 40, end).ok()?;
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        dst.copy_from_slice(&h[24..40]);
        Quoted {
            l3_off,
            l4_off,
            end,
            v6: true,
            proto: nh,
            src: Addr::v6(src),
            dst: Addr::v6(dst),
            sport: 0,
            dport: 0,
            ports_present: true,
        }
    };
    let l4 = pkt.get(q.l4_off..q.end).unwrap_or(&[]);
    let ports = match q.proto {
        proto::TCP | proto::UDP => arr::<4>(l4, 0).map(|w| {
            (
                u16::from_be_bytes([w[0], w[1]]),
                u16::from_be_bytes([w[2], w[3]]),
            )
        }),
        proto::ICMP if !q.v6 => arr::<8>(l4, 0).filter(|e| is_icmpv4_echo(e[0])).map(|e| {
            (
                u16::from_be_bytes([e[4], e[5]]),
                u16::from_be_bytes([e[4], e[5]]),
            )
        }),
        proto::ICMPV6 if q.v6 => arr::<8>(l4, 0).filter(|e| is_icmpv6_echo(e[0])).map(|e| {
            (
                u16::from_be_bytes([e[4], e[5]]),
                u16::from_be_bytes([e[4], e[5]]),
            )
        }),
        _ => None,
    };
    match ports {
        Some((s, d)) if q.ports_present => {
            q.sport = s;
            q.dport = d;
        }
        _ => q.ports_present = false,
    }
    Some(q)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let view = Icmpv4Packet::new_checked(&f[p.l4_off..p.l3_end]).expect("smoltcp view");
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
            checksum::update_bytes(ip_c, &old_dst, &backend)
        ));
        let tcp_c = checksum::update_bytes(tcp_c, &old_dst, &backend);
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
        assert!(!put_be32(&mut b, 0, 1));
        assert_eq!(be32(&b, 0), 0);
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
}

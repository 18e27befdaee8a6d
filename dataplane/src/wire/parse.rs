//! The single-pass classifier every frame goes through, and the transport checksum check of
//! packets that create state or get answered.

use super::arp::ArpIpv4;
use super::eth::{ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, ETH_LEN};
use super::icmp::{is_icmpv4_echo, is_icmpv6_echo};
use super::ipv4::ipv4_checksum_ok;
use super::ipv6::walk_ipv6_extensions;
use super::{arr, be16, checksum};
use crate::flow::{proto, Addr, FlowKey};

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

impl Parsed {
    /// The flow key of the packet's own direction.
    #[inline]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
        }
    }
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

/// The flow fields of the common frame, for the pipeline's fast path: 20 bytes instead of
/// [`Parsed`]'s 80, offsets implied (IPv4 header at 14, transport at 34).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V4Flow {
    /// Source address: its 4 wire bytes loaded as a native-endian word (no byte swap).
    pub src: u32,
    /// Destination address, loaded the same way.
    pub dst: u32,
    /// Source and destination port, the 4 wire bytes loaded the same way.
    pub ports: u32,
    /// Offset just past the IP packet (14 + total length).
    pub l3_end: u16,
    /// TCP or UDP.
    pub proto: u8,
    /// TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
}

impl V4Flow {
    /// The packet's flow key.
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            src: Addr::v4(self.src.to_ne_bytes()),
            dst: Addr::v4(self.dst.to_ne_bytes()),
            sport: self.sport(),
            dport: self.dport(),
            proto: self.proto,
        }
    }

    /// The source port.
    #[inline(always)]
    pub fn sport(&self) -> u16 {
        let p = self.ports.to_ne_bytes();
        u16::from_be_bytes([p[0], p[1]])
    }

    /// The destination port.
    #[inline(always)]
    pub fn dport(&self) -> u16 {
        let p = self.ports.to_ne_bytes();
        u16::from_be_bytes([p[2], p[3]])
    }
}

/// The fast path's parser: the flow fields of an untagged IPv4 TCP or UDP frame without IP
/// options that is not a fragment, or `None` for every other frame. Accepts exactly the frames
/// of that kind that [`parse`] accepts (same length, checksum and header checks) with the same
/// fields, so a frame it refuses goes through `parse` and gets the same verdict it always had.
#[inline(always)]
pub fn parse_v4_flow(frame: &[u8]) -> Option<V4Flow> {
    parse_v4_words(frame).map(|w| w.flow())
}

/// [`parse_v4_flow`]'s fields as the two 64-bit words a connection table compares keys by
/// (what the fast path hashes and looks up), with the rest of [`V4Flow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V4Words {
    /// [`V4Flow::src`] in the low half, [`V4Flow::dst`] in the high half.
    pub addrs: u64,
    /// [`V4Flow::ports`] in the low half, [`V4Flow::proto`] above it.
    pub ports_proto: u64,
    /// [`V4Flow::l3_end`].
    pub l3_end: u16,
    /// [`V4Flow::tcp_flags`].
    pub tcp_flags: u8,
}

impl V4Words {
    /// The same fields as a [`V4Flow`].
    #[inline(always)]
    pub fn flow(&self) -> V4Flow {
        V4Flow {
            src: self.addrs as u32,
            dst: (self.addrs >> 32) as u32,
            ports: self.ports_proto as u32,
            l3_end: self.l3_end,
            proto: (self.ports_proto >> 32) as u8,
            tcp_flags: self.tcp_flags,
        }
    }
}

/// [`parse_v4_flow`] with its result as [`V4Words`].
#[inline(always)]
pub fn parse_v4_words(frame: &[u8]) -> Option<V4Words> {
    // Ethernet, IPv4 and the 8 bytes of either transport header the checks need: one bounds
    // check, then fixed offsets.
    let h: &[u8; ETH_LEN + 20 + 8] = arr(frame, 0)?;
    // The EtherType and the version and header length in one compare (the TOS byte masked).
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let [t0, t1] = ETHERTYPE_IPV4.to_be_bytes();
    let (mask, want) = (
        u32::from_ne_bytes([0xff, 0xff, 0xff, 0]),
        u32::from_ne_bytes([t0, t1, 0x45, 0]),
    );
    if word(12) & mask != want {
        return None;
    }
    // Flags and fragment offset without DF (the mask in wire byte order): a fragment.
    if u16::from_ne_bytes([h[20], h[21]]) & u16::from_ne_bytes([0x3f, 0xff]) != 0 {
        return None;
    }
    // The header as the words its checksum sums: the first eight bytes, both addresses (the
    // key's word, loaded once for both), then the TTL, protocol and checksum.
    let wide = |i: usize| u64::from(word(i)) | (u64::from(word(i + 4)) << 32);
    let (first, addrs) = (wide(14), wide(26));
    let total = usize::from(u16::from_be_bytes([h[16], h[17]]));
    if total > frame.len() - ETH_LEN {
        return None;
    }
    if !ipv4_20_ones(first, addrs, word(22)) {
        return None;
    }
    let proto = h[23];
    // Each transport's smallest packet also bounds `total` from below (20 + its header).
    let tcp_flags = match proto {
        proto::TCP => {
            // `total <= frame.len() - 14` and the check below give a frame of 54 bytes or more.
            let t: &[u8; 20] = arr(frame, ETH_LEN + 20)?;
            // A data offset under 5 words and a header past the packet in one test: an offset
            // under 5 wraps to 0xfffb or more, whose bytes are past any `total`.
            let extra = u16::from(t[12] >> 4).wrapping_sub(5);
            if usize::from(extra) * 4 + 40 > total {
                return None;
            }
            t[13]
        }
        proto::UDP => {
            // Under 8 and past the datagram in one test: a length under 8 wraps to 0xfff8 or
            // more, past any `total`.
            let ulen = u16::from_be_bytes([h[38], h[39]]).wrapping_sub(8);
            if usize::from(ulen) + 28 > total {
                return None;
            }
            0
        }
        _ => return None,
    };
    Some(V4Words {
        addrs,
        ports_proto: u64::from(word(34)) | (u64::from(proto) << 32),
        l3_end: (ETH_LEN + total) as u16,
        tcp_flags,
    })
}

/// Whether a 20-byte IPv4 header, as two 64-bit words and a 32-bit one (each its wire bytes
/// loaded native-endian), sums to all ones (its checksum is right): switched off under
/// `cfg(fuzzing)` as [`parse`]'s check is. Added with end-around carry, the words keep their
/// sum modulo 2^64 - 1, a multiple of 0xffff; the plain sum is the ones' complement sum
/// modulo 0xffff (2^16 is 1 modulo 0xffff, in either byte order), and a header with a non-zero
/// first byte sums to something non-zero, so all ones is exactly "divisible by 0xffff": a
/// multiply instead of folds.
#[inline(always)]
fn ipv4_20_ones(a: u64, b: u64, c: u32) -> bool {
    if cfg!(fuzzing) {
        return true;
    }
    // Neither carry add overflows: a sum that carried is at most 2^64 - 2.
    let (s, carry) = a.overflowing_add(b);
    let s = s + u64::from(carry);
    let (s, carry) = s.overflowing_add(u64::from(c));
    let s = s + u64::from(carry);
    s % 0xffff == 0
}

/// What [`parse`] returns for a frame [`parse_v4_flow`] accepted as `f`, built from the
/// checks already made instead of parsing again: the general path of a frame whose key the
/// fast path found untracked (every new flow's first packet).
#[inline]
pub fn parsed_v4(frame: &[u8], f: &V4Flow) -> Parsed {
    let (df, ttl) = match arr::<20>(frame, ETH_LEN) {
        Some(ip) => (ip[6] & 0x40 != 0, ip[8]),
        None => (false, 0),
    };
    Parsed {
        vlan: None,
        ethertype: ETHERTYPE_IPV4,
        l3: L3::Ipv4,
        l3_off: ETH_LEN,
        l4_off: ETH_LEN + 20,
        l3_end: usize::from(f.l3_end),
        proto: f.proto,
        src: Addr::v4(f.src.to_ne_bytes()),
        dst: Addr::v4(f.dst.to_ne_bytes()),
        sport: f.sport(),
        dport: f.dport(),
        tcp_flags: f.tcp_flags,
        icmp_type: 0,
        icmp_code: 0,
        frag: Frag::None,
        df,
        ttl,
    }
}

/// The destination of an IPv6 frame (untagged or with one VLAN tag) that [`parse`] refused: for
/// telling whether a packet with an unsupported extension header was for us.
pub fn ipv6_dst(frame: &[u8]) -> Option<Addr> {
    let l3 = if be16(frame, 12) == ETHERTYPE_VLAN {
        ETH_LEN + 4
    } else {
        ETH_LEN
    };
    frame.get(l3 + 24..l3 + 40).and_then(Addr::from_wire)
}

/// [`verify_l4_checksum`] of a frame [`parse_v4_flow`] accepted as `f` (TCP or UDP behind a
/// 20-byte IPv4 header): the same answer from the fast parse's words. The segment is summed as
/// native-endian 64-bit words added with end-around carry, with the pseudo header's address
/// words as loaded, and tested once at the end: a sum of byte-swapped
/// 16-bit words is 256 times the sum modulo 0xffff, so "all ones" (divisible by 0xffff) holds
/// in either byte order.
///
/// The common SYNs are summed here, inline, as fixed words: a bare 20-byte TCP header
/// (scanners, floods, load generators), a 40-byte one (Linux's: MSS, SACK permitted,
/// timestamps, window scale), a 32-byte one (Windows': no timestamps) and a 44-byte one
/// (macOS': timestamps and padding), the clients an edge or a cluster's balancer mostly sees.
/// Every other segment in `verify_v4_l4_rest`, out of line. (Out of line, a Windows or macOS
/// SYN paid 33 and 35 instructions more than a Linux one for the call and the registers it
/// saves: fullnat new 1015 and 1017 against 982.)
#[inline(always)]
pub fn verify_v4_l4(frame: &[u8], f: &V4Flow) -> bool {
    if f.proto == proto::TCP {
        if let Some(seg) = frame.get(ETH_LEN + 20..usize::from(f.l3_end)) {
            // The pseudo header's zero and protocol word, then its length, as loaded.
            let fixed = u16::from_ne_bytes([0, proto::TCP]);
            let acc = u64::from(f.src) + u64::from(f.dst) + u64::from(fixed);
            if let Ok(h) = <&[u8; 40]>::try_from(seg) {
                let wlen = u16::from_ne_bytes(40u16.to_be_bytes());
                return sum_fixed(acc + u64::from(wlen), h) % 0xffff == 0;
            }
            if let Ok(h) = <&[u8; 20]>::try_from(seg) {
                let wlen = u16::from_ne_bytes(20u16.to_be_bytes());
                return sum_fixed(acc + u64::from(wlen), h) % 0xffff == 0;
            }
            if let Ok(h) = <&[u8; 32]>::try_from(seg) {
                let wlen = u16::from_ne_bytes(32u16.to_be_bytes());
                return sum_fixed(acc + u64::from(wlen), h) % 0xffff == 0;
            }
            if let Ok(h) = <&[u8; 44]>::try_from(seg) {
                let wlen = u16::from_ne_bytes(44u16.to_be_bytes());
                return sum_fixed(acc + u64::from(wlen), h) % 0xffff == 0;
            }
        }
    }
    verify_v4_l4_rest(frame, f)
}

/// [`verify_v4_l4`] for any segment.
#[inline(never)]
fn verify_v4_l4_rest(frame: &[u8], f: &V4Flow) -> bool {
    let Some(seg) = frame.get(ETH_LEN + 20..usize::from(f.l3_end)) else {
        return false;
    };
    let seg = if f.proto == proto::UDP {
        let Some(u) = seg.first_chunk::<8>() else {
            return false;
        };
        if u[6] == 0 && u[7] == 0 {
            // No checksum: valid over IPv4.
            return true;
        }
        // The checksum covers the UDP length, not any bytes after it inside the IP payload.
        match seg.get(..usize::from(u16::from_be_bytes([u[4], u[5]]))) {
            Some(d) => d,
            None => return false,
        }
    } else {
        seg
    };
    let len = seg.len();
    // The pseudo header: both addresses, then zero and the protocol, then the length, each
    // 16-bit word as a native-endian load of its wire bytes would read it.
    let fixed = u16::from_ne_bytes([0, f.proto]);
    let wlen = u16::from_ne_bytes((len as u16).to_be_bytes());
    let mut acc = u64::from(f.src) + u64::from(f.dst) + u64::from(fixed) + u64::from(wlen);
    // The whole 8-byte words added with end-around carry (one add and one carry add each):
    // the sum stays congruent modulo 2^64 - 1, a multiple of 0xffff. A short segment (a SYN's
    // 20 to 60 bytes) is a few words, one at a time: no unrolled loop to set up.
    let whole = len & !7;
    let mut at = 0;
    // (Its test on the slice first: the loop as `while at < whole` was unrolled, its set-up
    // costing a short segment more than its words.)
    while let Some(w) = seg.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        if at >= whole {
            break;
        }
        acc = ones_add(acc, u64::from_ne_bytes(*w));
        at += 8;
    }
    let rest = len - whole;
    if rest == 4 {
        // A TCP header's length is a multiple of 4: its last word alone.
        let Some(w) = seg.last_chunk::<4>() else {
            return false;
        };
        acc = ones_add(acc, u64::from(u32::from_ne_bytes(*w)));
    } else if rest > 0 {
        // The last 8 bytes (a segment has at least 8), whose last `rest` bytes are not summed
        // yet: those alone, at the same even positions, the others zero.
        let Some(tail) = seg.last_chunk::<8>() else {
            return false;
        };
        let w = u64::from_ne_bytes(*tail);
        let w = if cfg!(target_endian = "little") {
            w >> (8 * (8 - rest))
        } else {
            w << (8 * (8 - rest))
        };
        acc = ones_add(acc, w);
    }
    // The plain sum of the 16-bit words is their ones' complement sum modulo 0xffff (2^16 is
    // 1 modulo 0xffff), and a packet's sum is not 0 (the protocol word alone is not): all
    // ones is exactly "divisible by 0xffff", a multiply instead of four folds.
    acc % 0xffff == 0
}

/// `acc` plus the words of `h` (`N` a multiple of 4) with end-around carry, as
/// [`verify_v4_l4`]'s loop and tail would add them: its 8-byte words, then a last 4-byte one.
#[inline(always)]
fn sum_fixed<const N: usize>(mut acc: u64, h: &[u8; N]) -> u64 {
    let words = h.chunks_exact(8);
    let tail = words.remainder();
    for w in words {
        if let Ok(w) = <[u8; 8]>::try_from(w) {
            acc = ones_add(acc, u64::from_ne_bytes(w));
        }
    }
    if let Ok(t) = <[u8; 4]>::try_from(tail) {
        acc = ones_add(acc, u64::from(u32::from_ne_bytes(t)));
    }
    debug_assert!(tail.is_empty() || tail.len() == 4);
    acc
}

/// `a + b` with end-around carry: congruent to the plain sum modulo 2^64 - 1 (a multiple of
/// 0xffff), and it does not overflow (a sum that carried is at most 2^64 - 2).
#[inline(always)]
fn ones_add(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + u64::from(carry)
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

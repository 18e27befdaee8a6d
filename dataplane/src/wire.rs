//! Checked views over the headers the dataplane reads and writes, and checksum arithmetic.
//!
//! CONTRACT (skeleton, to be implemented): `parse` is the single-pass classifier used by the
//! pipeline for every frame. It never panics, whatever the input.

use crate::flow::Addr;

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
    pub l4_off: usize,
    /// Offset just past the IP packet (`l3_off + total length`); trailing Ethernet padding is after it.
    pub l3_end: usize,
    /// IP protocol / IPv6 next header of the transport (after extension headers).
    pub proto: u8,
    /// Source address (zero for non-IP).
    pub src: Addr,
    /// Destination address (zero for non-IP).
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
    /// The frame ends before a header it announces.
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

/// Classifies a frame in one pass. Verifies lengths and the IPv4 header checksum, not L4 checksums.
pub fn parse(_frame: &[u8]) -> Result<Parsed, ParseError> {
    Err(ParseError::Truncated)
}

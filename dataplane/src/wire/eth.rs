//! Ethernet II: EtherTypes, the header writer and the MAC fields the pipeline swaps.

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

/// The destination MAC of a frame (all zero when the frame is shorter than that).
#[inline]
pub fn dst_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(..6) {
        m.copy_from_slice(s);
    }
    m
}

/// The source MAC of a frame (all zero when the frame is shorter than that).
#[inline]
pub fn src_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(6..12) {
        m.copy_from_slice(s);
    }
    m
}

/// Sets a frame's destination and source MACs (nothing when the frame is shorter than that).
#[inline]
pub fn set_macs(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    if let Some(h) = frame.get_mut(..12) {
        h[..6].copy_from_slice(&dst);
        h[6..].copy_from_slice(&src);
    }
}

/// A destination and a source MAC as the frame's first 12 bytes hold them.
#[inline]
pub fn mac_pair(dst: [u8; 6], src: [u8; 6]) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[..6].copy_from_slice(&dst);
    m[6..].copy_from_slice(&src);
    m
}

/// [`set_macs`] from both MACs as [`mac_pair`] makes them: one 8-byte and one 4-byte copy.
#[inline]
pub fn set_mac_pair(frame: &mut [u8], macs: &[u8; 12]) {
    if let Some(h) = frame.first_chunk_mut::<12>() {
        *h = *macs;
    }
}

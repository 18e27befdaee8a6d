//! Checked views the dataplane needs beyond smoltcp's: ARP for Ethernet/IPv4 with fixed-size fields.
//!
//! smoltcp's `ArpPacket` accepts any hardware/protocol length and hands out slices; answering ARP
//! needs exactly the Ethernet/IPv4 form, so this view checks that once and returns arrays.

/// ARP operation code of a request.
pub const ARP_REQUEST: u16 = 1;
/// ARP operation code of a reply.
pub const ARP_REPLY: u16 = 2;
/// Length of an Ethernet/IPv4 ARP packet.
pub const ARP_IPV4_LEN: usize = 28;

/// An Ethernet/IPv4 ARP packet (htype 1, ptype 0x0800, hlen 6, plen 4) over at least 28 bytes.
#[derive(Clone, Copy, Debug)]
pub struct ArpIpv4<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> ArpIpv4<T> {
    /// Wraps `buf` when it starts with an Ethernet/IPv4 ARP packet; `None` otherwise.
    pub fn new_checked(buf: T) -> Option<Self> {
        let b = buf.as_ref();
        let h: &[u8; ARP_IPV4_LEN] = b.get(..ARP_IPV4_LEN)?.try_into().ok()?;
        if h[..6] == [0, 1, 0x08, 0x00, 6, 4] {
            Some(ArpIpv4 { buf })
        } else {
            None
        }
    }

    /// The 28 bytes, checked by `new_checked` (so the fallback never happens).
    fn h(&self) -> [u8; ARP_IPV4_LEN] {
        self.buf
            .as_ref()
            .get(..ARP_IPV4_LEN)
            .and_then(|s| s.try_into().ok())
            .unwrap_or([0; ARP_IPV4_LEN])
    }

    /// The operation (1 request, 2 reply).
    pub fn operation(&self) -> u16 {
        let h = self.h();
        u16::from_be_bytes([h[6], h[7]])
    }

    /// Sender hardware address.
    pub fn sender_mac(&self) -> [u8; 6] {
        let h = self.h();
        [h[8], h[9], h[10], h[11], h[12], h[13]]
    }

    /// Sender protocol address.
    pub fn sender_ip(&self) -> [u8; 4] {
        let h = self.h();
        [h[14], h[15], h[16], h[17]]
    }

    /// Target hardware address.
    pub fn target_mac(&self) -> [u8; 6] {
        let h = self.h();
        [h[18], h[19], h[20], h[21], h[22], h[23]]
    }

    /// Target protocol address.
    pub fn target_ip(&self) -> [u8; 4] {
        let h = self.h();
        [h[24], h[25], h[26], h[27]]
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buf
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpIpv4<T> {
    /// Turns a request into the reply from `our_mac` in place: swaps sender and target, operation 2.
    ///
    /// The target protocol address (the address asked for) becomes the sender's; the requester's
    /// pair becomes the target.
    pub fn make_reply(&mut self, our_mac: [u8; 6]) {
        let h = self.h();
        if let Some(b) = self.buf.as_mut().get_mut(..ARP_IPV4_LEN) {
            b[6..8].copy_from_slice(&ARP_REPLY.to_be_bytes());
            b[8..14].copy_from_slice(&our_mac);
            b[14..18].copy_from_slice(&h[24..28]);
            b[18..24].copy_from_slice(&h[8..14]);
            b[24..28].copy_from_slice(&h[14..18]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet/IPv4, request
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 198, 18, 0, 1, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 198, 18, 0, 100, // target (VIP)
    ];

    #[test]
    fn reads_request_fields() {
        let a = ArpIpv4::new_checked(&REQ[..]).expect("valid ARP");
        assert_eq!(a.operation(), ARP_REQUEST);
        assert_eq!(a.sender_mac(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(a.sender_ip(), [198, 18, 0, 1]);
        assert_eq!(a.target_mac(), [0; 6]);
        assert_eq!(a.target_ip(), [198, 18, 0, 100]);
    }

    #[test]
    fn reply_answers_the_requester_from_the_asked_address() {
        let mut buf = REQ;
        let mut a = ArpIpv4::new_checked(&mut buf[..]).expect("valid ARP");
        a.make_reply([2, 0, 0, 0, 0, 0xaa]);
        assert_eq!(a.operation(), ARP_REPLY);
        assert_eq!(a.sender_mac(), [2, 0, 0, 0, 0, 0xaa]);
        assert_eq!(a.sender_ip(), [198, 18, 0, 100]);
        assert_eq!(a.target_mac(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(a.target_ip(), [198, 18, 0, 1]);
    }

    #[test]
    fn rejects_short_or_non_ipv4_arp() {
        assert!(ArpIpv4::new_checked(&REQ[..27]).is_none());
        let mut v6ish = REQ;
        v6ish[5] = 16;
        assert!(ArpIpv4::new_checked(&v6ish[..]).is_none());
    }
}

//! Flow identity: addresses, the 5-tuple key, and the hashes used for Maglev and conntrack.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 address stored in 16 bytes (IPv4 as `::ffff:a.b.c.d`), cheap to copy and compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Addr(pub [u8; 16]);

impl Addr {
    /// The IPv4 address `a.b.c.d`.
    pub const fn v4(o: [u8; 4]) -> Addr {
        Addr([
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
        ])
    }

    /// An IPv6 address from its 16 bytes.
    pub const fn v6(o: [u8; 16]) -> Addr {
        Addr(o)
    }

    /// True when this holds an IPv4 address.
    #[inline]
    pub fn is_v4(&self) -> bool {
        // One 128-bit compare: the top 96 bits are ::ffff.
        u128::from_be_bytes(self.0) >> 32 == 0xffff
    }

    /// The 4 bytes of an IPv4 address (meaningless for IPv6).
    pub fn v4_octets(&self) -> [u8; 4] {
        [self.0[12], self.0[13], self.0[14], self.0[15]]
    }

    /// The address bytes as they appear on the wire: 4 for IPv4, 16 for IPv6.
    pub fn wire_bytes(&self) -> &[u8] {
        if self.is_v4() {
            &self.0[12..]
        } else {
            &self.0
        }
    }

    /// Reads an address from wire bytes of length 4 or 16; `None` otherwise.
    pub fn from_wire(b: &[u8]) -> Option<Addr> {
        match b.len() {
            4 => Some(Addr::v4([b[0], b[1], b[2], b[3]])),
            16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                Some(Addr(o))
            }
            _ => None,
        }
    }
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(v4) => Addr::v4(v4.octets()),
            IpAddr::V6(v6) => Addr(v6.octets()),
        }
    }
}

impl From<Addr> for IpAddr {
    fn from(a: Addr) -> IpAddr {
        if a.is_v4() {
            IpAddr::V4(Ipv4Addr::from(a.v4_octets()))
        } else {
            IpAddr::V6(Ipv6Addr::from(a.0))
        }
    }
}

impl std::fmt::Debug for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", IpAddr::from(*self))
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", IpAddr::from(*self))
    }
}

/// IP protocol numbers the dataplane knows.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// IPv4 encapsulated in IP.
    pub const IPIP: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 encapsulated in IP.
    pub const IPV6: u8 = 41;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// The 5-tuple of one direction of a flow, as seen on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct FlowKey {
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// Source port (ICMP echo: the identifier).
    pub sport: u16,
    /// Destination port (ICMP echo: the identifier).
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl FlowKey {
    /// The key of the opposite direction.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// A 64-bit hash of the whole key, for conntrack slots and Maglev selection.
    #[inline]
    pub fn hash(&self, seed: u64) -> u64 {
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        h = mix(h, u128::from_ne_bytes(self.src.0));
        h = mix(h, u128::from_ne_bytes(self.dst.0));
        let rest = (self.sport as u64) | ((self.dport as u64) << 16) | ((self.proto as u64) << 32);
        finish(h ^ rest.wrapping_mul(0xff51_afd7_ed55_8ccd))
    }
}

impl FlowKey {
    /// The hash connection tables place this key by: [`hash_v4`] for an IPv4 key (the fast
    /// path computes it from the header's words without building the key), [`FlowKey::hash`]
    /// otherwise. Not for Maglev or steering, which keep [`FlowKey::hash`].
    #[inline]
    pub fn table_hash(&self, seed: u64) -> u64 {
        if self.src.is_v4() && self.dst.is_v4() {
            let w = |a: &Addr| u32::from_ne_bytes(a.v4_octets());
            let (s, d) = (self.sport.to_be_bytes(), self.dport.to_be_bytes());
            let ports = u32::from_ne_bytes([s[0], s[1], d[0], d[1]]);
            hash_v4(w(&self.src), w(&self.dst), ports, self.proto, seed)
        } else {
            self.hash(seed)
        }
    }
}

/// The table hash of an IPv4 key from its parts (the addresses and the port pair as their wire
/// bytes loaded into native-endian words, so a parser needs no byte swap): [`hash_v4_words`] of
/// the key's two 64-bit words.
#[inline(always)]
pub fn hash_v4(src: u32, dst: u32, ports: u32, proto: u8, seed: u64) -> u64 {
    let lo = u64::from(src) | (u64::from(dst) << 32);
    let hi = u64::from(ports) | (u64::from(proto) << 32);
    hash_v4_words(lo, hi, seed)
}

/// [`hash_v4`] of an IPv4 key as two words: `lo` the source address in the low half and the
/// destination in the high half, `hi` the port pair word in the low half and the protocol
/// above it (the words a connection table compares keys by). One 64x64 multiply of the seeded
/// words, folded, then a short finish so the bucket (low bits) and fingerprint (high bits)
/// both depend on every input bit. About a third of [`FlowKey::hash`]'s cost, on every
/// packet's lookup.
#[inline(always)]
pub fn hash_v4_words(lo: u64, hi: u64, seed: u64) -> u64 {
    let a = lo ^ seed;
    let b = hi ^ seed.rotate_left(31) ^ 0xe703_7ed1_a0b4_28db;
    let m = u128::from(a).wrapping_mul(u128::from(b));
    let h = (m as u64) ^ ((m >> 64) as u64);
    let h = (h ^ (h >> 32)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 29)
}

/// A 64-bit hash of one address, for client-IP affinity.
#[inline]
pub fn hash_addr(a: &Addr, seed: u64) -> u64 {
    finish(mix(seed ^ 0x9e37_79b9_7f4a_7c15, u128::from_ne_bytes(a.0)))
}

/// A 64-bit hash of arbitrary bytes (backend names for Maglev permutations). Not for the hot path.
pub fn hash_bytes(b: &[u8], seed: u64) -> u64 {
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for chunk in b.chunks(16) {
        let mut w = [0u8; 16];
        w[..chunk.len()].copy_from_slice(chunk);
        h = mix(h, u128::from_le_bytes(w));
    }
    finish(h ^ b.len() as u64)
}

#[inline]
fn mix(h: u64, w: u128) -> u64 {
    let lo = w as u64;
    let hi = (w >> 64) as u64;
    let m = ((lo ^ h) as u128).wrapping_mul((hi ^ 0xe703_7ed1_a0b4_28db) as u128);
    ((m as u64) ^ ((m >> 64) as u64)).wrapping_add(h.rotate_left(23))
}

#[inline]
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_round_trips_through_ipaddr() {
        let a = Addr::v4([198, 18, 0, 1]);
        assert!(a.is_v4());
        assert_eq!(a.wire_bytes(), &[198, 18, 0, 1]);
        assert_eq!(Addr::from(IpAddr::from(a)), a);
        let b: Addr = "2001:db8::1".parse::<IpAddr>().unwrap().into();
        assert!(!b.is_v4());
        assert_eq!(b.wire_bytes().len(), 16);
    }

    #[test]
    fn hash_depends_on_every_field() {
        let k = FlowKey {
            src: Addr::v4([198, 18, 0, 1]),
            dst: Addr::v4([198, 18, 0, 2]),
            sport: 1,
            dport: 2,
            proto: proto::TCP,
        };
        let base = k.hash(0);
        for f in [
            FlowKey { sport: 3, ..k },
            FlowKey { dport: 3, ..k },
            FlowKey {
                proto: proto::UDP,
                ..k
            },
            FlowKey {
                src: Addr::v4([198, 18, 0, 3]),
                ..k
            },
            k.reversed(),
        ] {
            assert_ne!(f.hash(0), base);
        }
        assert_ne!(k.hash(1), base);
    }

    #[test]
    fn table_hash_of_v4_keys_is_hash_v4_and_uses_every_field() {
        let k = FlowKey {
            src: Addr::v4([198, 18, 0, 1]),
            dst: Addr::v4([198, 18, 0, 2]),
            sport: 1000,
            dport: 80,
            proto: proto::TCP,
        };
        let h = k.table_hash(7);
        let w = u32::from_ne_bytes;
        let ports = w([0x03, 0xe8, 0, 80]);
        assert_eq!(
            h,
            hash_v4(w([198, 18, 0, 1]), w([198, 18, 0, 2]), ports, proto::TCP, 7)
        );
        for f in [
            FlowKey { sport: 1001, ..k },
            FlowKey { dport: 81, ..k },
            FlowKey {
                proto: proto::UDP,
                ..k
            },
            FlowKey {
                src: Addr::v4([198, 18, 0, 3]),
                ..k
            },
            k.reversed(),
        ] {
            assert_ne!(f.table_hash(7), h);
        }
        assert_ne!(k.table_hash(8), h);
        // IPv6 keys keep the general hash.
        let v6 = FlowKey {
            src: "2001:db8::1".parse::<IpAddr>().unwrap().into(),
            ..k
        };
        assert_eq!(v6.table_hash(7), v6.hash(7));
    }
}

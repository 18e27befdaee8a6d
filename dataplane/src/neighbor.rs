//! Next-hop resolution: ARP for IPv4 and neighbor discovery for IPv6.
//!
//! The [`NeighborCache`] is a fixed array of slots, one per next-hop address the control plane
//! knows (an on-link backend or a gateway), shared by the workers and the control plane. A slot
//! is one `AtomicU64`: the MAC, an 8-bit tag and state bits. Workers read it with one atomic
//! load when a *new* flow picks a backend (established flows store their MAC), and write it only
//! when an ARP or ND frame from that very address arrives. No lock is taken on either path.
//!
//! Slots are assigned to addresses by the control plane ([`NeighborCache::bind`]) and stay with
//! an address across table generations, so reloads keep what was learned. A slot given to
//! another address gets a new tag; a worker still on an older table writes or reads only while
//! the tag it holds matches (compare-and-swap), so it can never put an old address's MAC into
//! the new address's slot.
//!
//! The [`Resolver`] is a pure state machine (frames out, time in) that worker 0 runs in its slow
//! path: it probes unresolved slots (broadcast ARP request / multicast NS) with back-off, faster
//! while new flows are waiting, and re-probes resolved ones (unicast) before they age out.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::conntrack::Millis;
use crate::flow::{proto, Addr};
use crate::wire::{self, checksum};

/// A resolved entry is trusted this long after the neighbor was last heard from; then it is
/// re-probed (RFC 4861's REACHABLE_TIME).
pub const REACHABLE_MS: Millis = 30_000;
/// Interval between probes of one neighbor (RFC 4861's RETRANS_TIMER).
pub const RETRANS_MS: Millis = 1_000;
/// Unanswered refresh probes before a resolved entry is dropped (RFC 4861's MAX_UNICAST_SOLICIT).
pub const MAX_REFRESH_PROBES: u32 = 3;
/// Longest wait between probes of an unresolved neighbor nobody currently needs.
pub const MAX_BACKOFF_MS: Millis = 30_000;
/// Probes built per [`Resolver::tick`], so thousands of new next hops do not burst onto the link.
pub const PROBES_PER_TICK: usize = 32;
/// Largest frame the resolver builds (an NS: 14 + 40 + 32).
pub const PROBE_MAX: usize = 86;

const MAC_MASK: u64 = (1 << 48) - 1;
const TAG_SHIFT: u32 = 48;
const TAG_MASK: u64 = 0xff << TAG_SHIFT;
/// The MAC bits hold a neighbor's address.
const F_VALID: u64 = 1 << 56;
/// A new flow found the slot unresolved: probe soon.
const F_WANTED: u64 = 1 << 57;
/// The neighbor was heard from since the resolver last looked.
const F_SEEN: u64 = 1 << 58;

/// A next hop's place in the cache: its slot and the tag the slot had when it was bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hop {
    /// Slot index.
    pub slot: u32,
    /// Tag of the binding; changes when the slot is given to another address.
    pub tag: u8,
}

/// A [`Hop`] with a caller's index beside it, packed in one word the way a slot's word holds
/// its tag, with the valid flag set: one masked compare of a slot's word against it tells both
/// that the slot is still bound to this hop and that it is resolved ([`NeighborCache::resolved`],
/// a new flow's read). The slot in bits 0-23, the index in bits 24-47 (both below
/// [`MAX_CAPACITY`], which bounds the cache's slots), the tag in a slot word's tag bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundHop(u64);

const BOUND_SLOT_MASK: u64 = (1 << 24) - 1;
const BOUND_INDEX_SHIFT: u32 = 24;

impl BoundHop {
    /// No hop: every bit set (not a value [`BoundHop::new`] makes, its index being in range).
    pub const NONE: BoundHop = BoundHop(u64::MAX);

    /// `hop` with `index`; `None` when the slot or the index is not below [`MAX_CAPACITY`].
    pub fn new(hop: Hop, index: u32) -> Option<BoundHop> {
        let (slot, index) = (u64::from(hop.slot), u64::from(index));
        (slot <= BOUND_SLOT_MASK && index <= BOUND_SLOT_MASK).then(|| {
            BoundHop(
                slot | (index << BOUND_INDEX_SHIFT) | (u64::from(hop.tag) << TAG_SHIFT) | F_VALID,
            )
        })
    }

    /// The hop packed here.
    #[inline]
    pub fn hop(self) -> Hop {
        Hop {
            slot: self.slot() as u32,
            tag: tag_of(self.0),
        }
    }

    /// The index packed here.
    #[inline]
    pub fn index(self) -> u32 {
        ((self.0 >> BOUND_INDEX_SHIFT) & BOUND_SLOT_MASK) as u32
    }

    #[inline(always)]
    fn slot(self) -> usize {
        (self.0 & BOUND_SLOT_MASK) as usize
    }
}

/// Most slots a cache has ([`NeighborCache::new`] clamps to it).
pub const MAX_CAPACITY: usize = 1 << 24;

/// One slot as read at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The neighbor's MAC, when resolved.
    pub mac: Option<[u8; 6]>,
    /// A new flow is waiting for it.
    pub wanted: bool,
    /// Heard from since the resolver last looked.
    pub seen: bool,
}

/// Which address each slot is bound to (control plane only; workers never lock it).
#[derive(Debug, Default)]
struct Directory {
    by_addr: HashMap<Addr, Hop>,
    addr_of: Vec<Option<Addr>>,
    free: Vec<u32>,
}

/// The shared neighbor cache: one atomic word per next-hop address.
#[derive(Debug)]
pub struct NeighborCache {
    slots: Box<[AtomicU64]>,
    dir: Mutex<Directory>,
    learned: AtomicU64,
}

fn mac_bits(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&mac);
    u64::from_be_bytes(b)
}

fn mac_of(word: u64) -> [u8; 6] {
    let b = (word & MAC_MASK).to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

fn tag_of(word: u64) -> u8 {
    ((word & TAG_MASK) >> TAG_SHIFT) as u8
}

/// True for a MAC a neighbor can have: not multicast/broadcast, not all zero.
fn unicast(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

impl NeighborCache {
    /// A cache for at most `capacity` next-hop addresses (all memory allocated here).
    pub fn new(capacity: usize) -> NeighborCache {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        NeighborCache {
            slots: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            dir: Mutex::new(Directory {
                by_addr: HashMap::new(),
                addr_of: vec![None; capacity],
                free: (0..capacity as u32).rev().collect(),
            }),
            learned: AtomicU64::new(0),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn dir(&self) -> std::sync::MutexGuard<'_, Directory> {
        // A panic while holding the lock leaves the directory consistent (every update is one
        // push or insert), so a poisoned lock is still usable.
        self.dir.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of `addr`, bound now if it has none (control plane, while building a table).
    /// `None` when every slot is taken.
    pub fn bind(&self, addr: Addr) -> Option<Hop> {
        let mut d = self.dir();
        if let Some(h) = d.by_addr.get(&addr) {
            return Some(*h);
        }
        let slot = d.free.pop()?;
        let tag = self
            .slots
            .get(slot as usize)
            .map(|w| tag_of(w.load(Ordering::Acquire)))?;
        let hop = Hop { slot, tag };
        d.by_addr.insert(addr, hop);
        if let Some(a) = d.addr_of.get_mut(slot as usize) {
            *a = Some(addr);
        }
        Some(hop)
    }

    /// Frees the slots of addresses for which `keep` is false (control plane, after publishing a
    /// table that no longer uses them). The slot's tag changes, so workers still holding an older
    /// table neither read nor write it under the old binding.
    pub fn retain(&self, mut keep: impl FnMut(Addr) -> bool) {
        let mut d = self.dir();
        let gone: Vec<(Addr, Hop)> = d
            .by_addr
            .iter()
            .filter(|(a, _)| !keep(**a))
            .map(|(a, h)| (*a, *h))
            .collect();
        for (addr, hop) in gone {
            d.by_addr.remove(&addr);
            if let Some(a) = d.addr_of.get_mut(hop.slot as usize) {
                *a = None;
            }
            if let Some(w) = self.slots.get(hop.slot as usize) {
                let next = u64::from(hop.tag.wrapping_add(1)) << TAG_SHIFT;
                w.store(next, Ordering::Release);
            }
            d.free.push(hop.slot);
        }
    }

    /// The address bound to `hop`, if the binding is current.
    pub fn addr_of(&self, hop: Hop) -> Option<Addr> {
        let d = self.dir();
        let a = (*d.addr_of.get(hop.slot as usize)?)?;
        (d.by_addr.get(&a) == Some(&hop)).then_some(a)
    }

    /// Every bound address and its entry (for the admin API and logs).
    pub fn entries(&self) -> Vec<(Addr, Entry)> {
        let d = self.dir();
        let mut v: Vec<(Addr, Entry)> = d
            .by_addr
            .iter()
            .map(|(a, h)| (*a, self.entry(*h)))
            .collect();
        v.sort_by_key(|(a, _)| *a);
        v
    }

    /// Updates learned from ARP/ND frames since the start.
    pub fn learned(&self) -> u64 {
        self.learned.load(Ordering::Relaxed)
    }

    fn word(&self, hop: Hop) -> Option<u64> {
        let w = self.slots.get(hop.slot as usize)?.load(Ordering::Acquire);
        (tag_of(w) == hop.tag).then_some(w)
    }

    /// The slot as it is now (a stale binding reads as unresolved).
    pub fn entry(&self, hop: Hop) -> Entry {
        let w = self.word(hop).unwrap_or(0);
        Entry {
            mac: (w & F_VALID != 0).then(|| mac_of(w)),
            wanted: w & F_WANTED != 0,
            seen: w & F_SEEN != 0,
        }
    }

    /// The MAC of a resolved neighbor: the one atomic load a new flow pays.
    #[inline]
    pub fn mac(&self, hop: Hop) -> Option<[u8; 6]> {
        let w = self.word(hop)?;
        (w & F_VALID != 0).then(|| mac_of(w))
    }

    /// [`NeighborCache::mac`] of a hop packed with [`BoundHop`], as a new flow reads it: the
    /// slot's one atomic load and one masked compare of its tag and valid flag.
    #[inline]
    pub fn resolved(&self, hop: BoundHop) -> Option<[u8; 6]> {
        let w = self.slots.get(hop.slot())?.load(Ordering::Acquire);
        ((w ^ hop.0) & (TAG_MASK | F_VALID) == 0).then(|| mac_of(w))
    }

    /// Marks an unresolved neighbor as needed by a flow, so the resolver probes it at its next
    /// tick. Writes only when the mark is not already there (a SYN flood towards an unresolved
    /// backend costs loads, not cache-line ping-pong).
    #[inline]
    pub fn want(&self, hop: Hop) {
        let Some(w) = self.slots.get(hop.slot as usize) else {
            return;
        };
        let cur = w.load(Ordering::Relaxed);
        if tag_of(cur) == hop.tag && cur & (F_WANTED | F_VALID) == 0 {
            let _ = w.compare_exchange(cur, cur | F_WANTED, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Records that the neighbor bound to `hop` has `mac` (heard from it just now). Returns false
    /// when the binding is stale or the MAC cannot be a neighbor's.
    pub fn learn(&self, hop: Hop, mac: [u8; 6]) -> bool {
        if !unicast(mac) {
            return false;
        }
        let Some(w) = self.slots.get(hop.slot as usize) else {
            return false;
        };
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if tag_of(cur) != hop.tag {
                return false;
            }
            let next = (cur & TAG_MASK) | mac_bits(mac) | F_VALID | F_SEEN;
            if next == cur {
                return true;
            }
            match w.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.learned.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Clears the seen and wanted marks and returns the word they were read from (resolver).
    /// Writes only when a mark is set.
    fn take_marks(&self, hop: Hop) -> Option<u64> {
        let w = self.slots.get(hop.slot as usize)?;
        let cur = w.load(Ordering::Acquire);
        if tag_of(cur) != hop.tag {
            return None;
        }
        if cur & (F_SEEN | F_WANTED) == 0 {
            return Some(cur);
        }
        let prev = w.fetch_and(!(F_SEEN | F_WANTED), Ordering::AcqRel);
        // A rebind between the load and the AND only cleared marks of a fresh slot.
        (tag_of(prev) == hop.tag).then_some(prev)
    }

    /// Forgets the MAC of an entry that stopped answering (resolver).
    fn invalidate(&self, hop: Hop) {
        let Some(w) = self.slots.get(hop.slot as usize) else {
            return;
        };
        let mut cur = w.load(Ordering::Acquire);
        while tag_of(cur) == hop.tag && cur & F_VALID != 0 {
            match w.compare_exchange_weak(cur, cur & TAG_MASK, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

/// A next hop as a routing table knows it: the address to resolve, its cache slot, and the
/// source address our probes for it carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The neighbor's IP address (a backend on the link, or a gateway).
    pub addr: Addr,
    /// Its cache slot.
    pub hop: Hop,
    /// Our address (same family) that probes come from.
    pub src: Addr,
    /// The interface it is reached on (probes leave there, with that interface's MAC).
    pub iface: u8,
}

/// What a probe is for, so callers can count them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Broadcast ARP request / multicast NS for an unresolved neighbor.
    Resolve,
    /// Unicast ARP request / NS to a resolved neighbor about to age out.
    Refresh,
}

/// The resolver's private timing for one slot.
#[derive(Clone, Copy, Debug, Default)]
struct Timing {
    /// Tag the timing belongs to; a rebound slot starts over.
    tag: u8,
    /// False until the slot was first looked at under this tag.
    known: bool,
    /// Next time a probe may go out (resolved: when the entry ages out).
    next: Millis,
    /// Last probe sent.
    last: Option<Millis>,
    /// Probes sent without an answer.
    unanswered: u32,
}

/// Probes unresolved neighbors and refreshes resolved ones. Pure: the caller passes the time and
/// transmits the frames it hands back.
#[derive(Debug)]
pub struct Resolver {
    timing: Vec<Timing>,
    buf: [u8; PROBE_MAX],
    /// Probes built so far.
    pub probes: u64,
    /// Entries dropped because their neighbor stopped answering.
    pub expired: u64,
}

impl Resolver {
    /// A resolver for a cache of `capacity` slots (allocates once).
    pub fn new(capacity: usize) -> Resolver {
        Resolver {
            timing: vec![Timing::default(); capacity],
            buf: [0; PROBE_MAX],
            probes: 0,
            expired: 0,
        }
    }

    /// Looks at every next hop of the current table once: records answers, builds due probes
    /// (at most [`PROBES_PER_TICK`]) from `our_mac(interface)` and hands each to `tx` with the
    /// interface it leaves on, and drops entries whose neighbor stopped answering. Call it
    /// every few milliseconds from a slow path.
    pub fn tick(
        &mut self,
        now: Millis,
        our_mac: &dyn Fn(u8) -> [u8; 6],
        cache: &NeighborCache,
        hops: &[NextHop],
        tx: &mut dyn FnMut(&[u8], Probe, u8),
    ) -> usize {
        let mut sent = 0;
        for nh in hops {
            let Some(t) = self.timing.get_mut(nh.hop.slot as usize) else {
                continue;
            };
            if !t.known || t.tag != nh.hop.tag {
                *t = Timing {
                    tag: nh.hop.tag,
                    known: true,
                    next: now,
                    last: None,
                    unanswered: 0,
                };
            }
            let Some(w) = cache.take_marks(nh.hop) else {
                continue;
            };
            if w & F_SEEN != 0 {
                t.unanswered = 0;
                t.next = now.saturating_add(REACHABLE_MS);
            }
            let probe = if w & F_VALID != 0 {
                if now < t.next {
                    continue;
                }
                if t.unanswered >= MAX_REFRESH_PROBES {
                    cache.invalidate(nh.hop);
                    self.expired += 1;
                    t.unanswered = 0;
                    t.next = now;
                    Probe::Resolve
                } else {
                    Probe::Refresh
                }
            } else {
                if w & F_WANTED != 0 {
                    // A flow is waiting: back to one probe per RETRANS_MS.
                    let soon = t.last.map_or(now, |l| l.saturating_add(RETRANS_MS));
                    t.next = t.next.min(soon.max(now));
                }
                if now < t.next {
                    continue;
                }
                Probe::Resolve
            };
            if sent >= PROBES_PER_TICK {
                break;
            }
            let dst_mac = match probe {
                Probe::Refresh => Some(mac_of(w)),
                Probe::Resolve => None,
            };
            let Some(len) = build_probe(&mut self.buf, our_mac(nh.iface), nh.src, nh.addr, dst_mac)
            else {
                continue;
            };
            t.last = Some(now);
            t.unanswered = t.unanswered.saturating_add(1);
            t.next = match probe {
                Probe::Refresh => now.saturating_add(RETRANS_MS),
                // 1 s, 2 s, 4 s ... up to MAX_BACKOFF_MS while nobody needs it.
                Probe::Resolve => now
                    .saturating_add((RETRANS_MS << (t.unanswered - 1).min(16)).min(MAX_BACKOFF_MS)),
            };
            self.probes += 1;
            sent += 1;
            if let Some(f) = self.buf.get(..len) {
                tx(f, probe, nh.iface);
            }
        }
        sent
    }
}

/// Builds an ARP request (IPv4) or neighbor solicitation (IPv6) for `target` from `src` into
/// `buf`; broadcast / solicited-node multicast when `dst_mac` is `None`, else unicast to it.
/// Returns the frame length; `None` when the families differ or `buf` is short.
pub fn build_probe(
    buf: &mut [u8],
    our_mac: [u8; 6],
    src: Addr,
    target: Addr,
    dst_mac: Option<[u8; 6]>,
) -> Option<usize> {
    match (src.is_v4(), target.is_v4()) {
        (true, true) => arp_request(buf, our_mac, src.v4_octets(), target.v4_octets(), dst_mac),
        (false, false) => neighbor_solicitation(buf, our_mac, src, target, dst_mac),
        _ => None,
    }
}

/// Length of the ARP requests we send: padded to the Ethernet minimum (without FCS), as some
/// NICs do not pad frames handed to them by AF_XDP.
pub const ARP_FRAME_LEN: usize = 60;

/// An Ethernet/IPv4 ARP request "who has `target`, tell `src`".
pub fn arp_request(
    buf: &mut [u8],
    our_mac: [u8; 6],
    src: [u8; 4],
    target: [u8; 4],
    dst_mac: Option<[u8; 6]>,
) -> Option<usize> {
    let f = buf.get_mut(..ARP_FRAME_LEN)?;
    f.fill(0);
    wire::write_eth(
        f,
        dst_mac.unwrap_or([0xff; 6]),
        our_mac,
        None,
        wire::ETHERTYPE_ARP,
    )?;
    let a = &mut f[14..14 + wire::ARP_IPV4_LEN];
    a[..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, wire::ARP_REQUEST as u8]);
    a[8..14].copy_from_slice(&our_mac);
    a[14..18].copy_from_slice(&src);
    a[24..28].copy_from_slice(&target);
    Some(ARP_FRAME_LEN)
}

/// The solicited-node multicast address of `a` (ff02::1:ffXX:XXXX) and its Ethernet address.
pub fn solicited_node(a: Addr) -> (Addr, [u8; 6]) {
    let t = a.0;
    let ip = Addr::v6([
        0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
    ]);
    (ip, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
}

/// An ICMPv6 neighbor solicitation for `target` from `src` with our MAC as source link-layer
/// option (RFC 4861 4.3), hop limit 255.
pub fn neighbor_solicitation(
    buf: &mut [u8],
    our_mac: [u8; 6],
    src: Addr,
    target: Addr,
    dst_mac: Option<[u8; 6]>,
) -> Option<usize> {
    let f = buf.get_mut(..PROBE_MAX)?;
    f.fill(0);
    let (dst, eth_dst) = match dst_mac {
        Some(m) => (target, m),
        None => solicited_node(target),
    };
    wire::write_eth(f, eth_dst, our_mac, None, wire::ETHERTYPE_IPV6)?;
    wire::write_ipv6(
        &mut f[14..],
        &wire::Ipv6Fields {
            src: src.0,
            dst: dst.0,
            next_header: proto::ICMPV6,
            payload_len: 32,
            hop_limit: 255,
            traffic_class: 0,
            flow_label: 0,
        },
    )?;
    let ns = &mut f[54..86];
    ns[0] = 135;
    ns[8..24].copy_from_slice(&target.0);
    ns[24..26].copy_from_slice(&[1, 1]);
    ns[26..32].copy_from_slice(&our_mac);
    let c = checksum::l4(&src, &dst, proto::ICMPV6, ns);
    wire::put_be16(ns, 2, c);
    Some(PROBE_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 1, 10];

    fn v4(last: u8) -> Addr {
        Addr::v4([198, 18, 1, last])
    }

    fn hop(c: &NeighborCache, a: Addr, src: Addr) -> NextHop {
        NextHop {
            addr: a,
            hop: c.bind(a).unwrap(),
            src,
            iface: 0,
        }
    }

    #[test]
    fn bind_is_stable_and_learning_needs_a_current_binding() {
        let c = NeighborCache::new(2);
        let a = c.bind(v4(10)).unwrap();
        assert_eq!(c.bind(v4(10)), Some(a), "one slot per address");
        let b = c.bind(v4(11)).unwrap();
        assert_ne!(a.slot, b.slot);
        assert_eq!(c.bind(v4(12)), None, "full");
        assert_eq!(c.mac(a), None);
        assert!(c.learn(a, B));
        assert_eq!(c.mac(a), Some(B));
        assert_eq!(c.learned(), 1);
        // Broadcast, multicast and zero MACs are never learned.
        assert!(!c.learn(b, [0xff; 6]));
        assert!(!c.learn(b, [0x33, 0x33, 0, 0, 0, 1]));
        assert!(!c.learn(b, [0; 6]));
        assert_eq!(c.mac(b), None);
        // Freeing a slot bumps its tag: the old binding can neither read nor write it.
        c.retain(|x| x != v4(10));
        assert_eq!(c.mac(a), None);
        assert!(!c.learn(a, B));
        let reused = c.bind(v4(12)).unwrap();
        assert_eq!(reused.slot, a.slot);
        assert_ne!(reused.tag, a.tag);
        assert!(
            !c.learn(a, B),
            "a worker on the old table cannot poison the new binding"
        );
        assert_eq!(c.mac(reused), None);
        assert_eq!(c.addr_of(reused), Some(v4(12)));
        assert_eq!(c.addr_of(a), None);
    }

    #[test]
    fn a_bound_hop_reads_its_slot_only_while_current_and_resolved() {
        let c = NeighborCache::new(4);
        let a = c.bind(v4(10)).unwrap();
        let bound = BoundHop::new(a, 3).unwrap();
        assert_eq!((bound.hop(), bound.index()), (a, 3), "packed and read back");
        assert_eq!(c.resolved(bound), None, "unresolved");
        c.want(bound.hop());
        assert_eq!(c.resolved(bound), None, "wanted is still unresolved");
        assert!(c.learn(a, B));
        assert_eq!(c.resolved(bound), Some(B));
        assert_eq!(c.resolved(bound), c.mac(a), "as the slot's own read");
        // The seen and wanted marks do not hide the MAC.
        let w = c.slots[a.slot as usize].load(Ordering::Relaxed);
        c.slots[a.slot as usize].store(w | F_SEEN | F_WANTED, Ordering::Relaxed);
        assert_eq!(c.resolved(bound), Some(B));
        // Forgotten (stopped answering): unresolved again.
        c.invalidate(a);
        assert_eq!(c.resolved(bound), None);
        assert!(c.learn(a, B));
        // A slot re-bound to another address (its tag bumped) reads as unresolved under the
        // old binding, even once the new address is resolved.
        c.retain(|x| x != v4(10));
        let reused = c.bind(v4(11)).unwrap();
        assert_eq!(reused.slot, a.slot);
        assert!(c.learn(reused, [2, 0, 0, 0, 1, 11]));
        assert_eq!(c.resolved(bound), None, "stale binding");
        assert_eq!(
            c.resolved(BoundHop::new(reused, 3).unwrap()),
            Some([2, 0, 0, 0, 1, 11])
        );
        // Every tag value: the compare covers all of its bits.
        for tag in 0..=u8::MAX {
            let other = BoundHop::new(Hop { slot: a.slot, tag }, 0).unwrap();
            let want = (tag == reused.tag).then_some([2, 0, 0, 0, 1, 11]);
            assert_eq!(c.resolved(other), want, "tag {tag}");
        }
        // No hop, a slot past the cache, and a slot or index past the packing.
        assert_eq!(c.resolved(BoundHop::NONE), None);
        assert_eq!(
            c.resolved(BoundHop::new(Hop { slot: 4, tag: 0 }, 0).unwrap()),
            None
        );
        let max = MAX_CAPACITY as u32;
        assert!(BoundHop::new(Hop { slot: max, tag: 0 }, 0).is_none());
        assert!(BoundHop::new(Hop { slot: 0, tag: 0 }, max).is_none());
        let top = BoundHop::new(
            Hop {
                slot: max - 1,
                tag: 0xff,
            },
            max - 1,
        )
        .unwrap();
        assert_ne!(top, BoundHop::NONE);
        assert_eq!(
            (top.hop().slot, top.hop().tag, top.index()),
            (max - 1, 0xff, max - 1)
        );
    }

    #[test]
    fn want_marks_only_unresolved_entries() {
        let c = NeighborCache::new(4);
        let a = c.bind(v4(10)).unwrap();
        c.want(a);
        assert!(c.entry(a).wanted);
        c.learn(a, B);
        let e = c.entry(a);
        assert_eq!((e.mac, e.wanted, e.seen), (Some(B), false, true));
        c.want(a);
        assert!(!c.entry(a).wanted, "a resolved entry needs no probe");
    }

    /// Runs the resolver at `now`, returning the frames it sent.
    fn tick(
        r: &mut Resolver,
        now: Millis,
        c: &NeighborCache,
        hops: &[NextHop],
    ) -> Vec<(Vec<u8>, Probe)> {
        let mut out = Vec::new();
        r.tick(now, &|_| OUR, c, hops, &mut |f, p, _| {
            out.push((f.to_vec(), p))
        });
        out
    }

    #[test]
    fn unresolved_neighbors_are_probed_with_back_off_and_faster_when_wanted() {
        let c = NeighborCache::new(8);
        let hops = [hop(&c, v4(10), Addr::v4([198, 18, 0, 1]))];
        let mut r = Resolver::new(8);
        let mut times = Vec::new();
        for now in (0..40_000).step_by(10) {
            if !tick(&mut r, now, &c, &hops).is_empty() {
                times.push(now);
            }
        }
        assert_eq!(times, vec![0, 1_000, 3_000, 7_000, 15_000, 31_000]);
        // A flow needs it: the next probe goes out one RETRANS_MS after the last, not at 61 s.
        c.want(hops[0].hop);
        assert!(tick(&mut r, 40_000, &c, &hops).len() == 1);
        assert!(tick(&mut r, 40_500, &c, &hops).is_empty());
        c.want(hops[0].hop);
        assert!(tick(&mut r, 40_990, &c, &hops).is_empty());
        assert_eq!(tick(&mut r, 41_000, &c, &hops).len(), 1);
    }

    #[test]
    fn resolved_entries_are_refreshed_by_unicast_then_dropped_when_silent() {
        let c = NeighborCache::new(8);
        let hops = [hop(&c, v4(10), Addr::v4([198, 18, 0, 1]))];
        let mut r = Resolver::new(8);
        let first = tick(&mut r, 0, &c, &hops);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1, Probe::Resolve);
        assert_eq!(&first[0].0[..6], &[0xff; 6], "broadcast");
        c.learn(hops[0].hop, B);
        assert!(tick(&mut r, 100, &c, &hops).is_empty(), "just heard from");
        // Nothing until the entry ages out at 30.1 s.
        assert!(tick(&mut r, 30_099, &c, &hops).is_empty());
        let p = tick(&mut r, 30_100, &c, &hops);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1, Probe::Refresh);
        assert_eq!(&p[0].0[..6], &B, "unicast to the known MAC");
        assert_eq!(c.mac(hops[0].hop), Some(B), "still usable while probing");
        // An answer resets the clock.
        c.learn(hops[0].hop, B);
        assert!(tick(&mut r, 30_200, &c, &hops).is_empty());
        assert_eq!(tick(&mut r, 60_200, &c, &hops).len(), 1);
        // Silence: two more refresh probes, then the entry goes and a broadcast follows.
        assert_eq!(tick(&mut r, 61_200, &c, &hops)[0].1, Probe::Refresh);
        assert_eq!(tick(&mut r, 62_200, &c, &hops)[0].1, Probe::Refresh);
        assert_eq!(c.mac(hops[0].hop), Some(B));
        let last = tick(&mut r, 63_200, &c, &hops);
        assert_eq!(last[0].1, Probe::Resolve);
        assert_eq!(c.mac(hops[0].hop), None);
        assert_eq!(r.expired, 1);
    }

    #[test]
    fn probes_per_tick_are_bounded() {
        let c = NeighborCache::new(100);
        let hops: Vec<NextHop> = (0..100)
            .map(|i| hop(&c, v4(i), Addr::v4([198, 18, 0, 1])))
            .collect();
        let mut r = Resolver::new(100);
        let mut total = 0;
        for now in 0..4 {
            let n = tick(&mut r, now, &c, &hops).len();
            assert!(n <= PROBES_PER_TICK);
            total += n;
        }
        assert_eq!(total, 100, "every neighbor probed within a few ticks");
    }

    #[test]
    fn arp_request_is_a_valid_broadcast_who_has() {
        let mut buf = [0u8; 128];
        let n = arp_request(&mut buf, OUR, [198, 18, 0, 1], [198, 18, 1, 10], None).unwrap();
        let f = &buf[..n];
        let eth = etherparse::Ethernet2Header::from_slice(f).unwrap().0;
        assert_eq!(eth.destination, [0xff; 6]);
        assert_eq!(eth.source, OUR);
        assert_eq!(eth.ether_type, etherparse::EtherType::ARP);
        let arp = etherparse::ArpPacket::from_slice(&f[14..]).unwrap();
        assert_eq!(arp.operation, etherparse::ArpOperation::REQUEST);
        assert_eq!(arp.hw_addr_type, etherparse::ArpHardwareId::ETHERNET);
        assert_eq!(arp.proto_addr_type, etherparse::EtherType::IPV4);
        assert_eq!(arp.sender_hw_addr(), &OUR);
        assert_eq!(arp.sender_protocol_addr(), &[198, 18, 0, 1]);
        assert_eq!(arp.target_hw_addr(), &[0; 6]);
        assert_eq!(arp.target_protocol_addr(), &[198, 18, 1, 10]);
        assert_eq!(n, 60);
    }

    #[test]
    fn neighbor_solicitation_goes_to_the_solicited_node_group_with_a_valid_checksum() {
        let src = Addr::v6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let target = Addr::v6([
            0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0xef,
        ]);
        let mut buf = [0u8; 128];
        let n = neighbor_solicitation(&mut buf, OUR, src, target, None).unwrap();
        let f = &buf[..n];
        let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
            panic!("not Ethernet II")
        };
        assert_eq!(eth.destination(), [0x33, 0x33, 0xff, 0xab, 0xcd, 0xef]);
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        let h = ip.header();
        assert_eq!(h.hop_limit(), 255);
        assert_eq!(h.source(), src.0);
        let group = [
            0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xab, 0xcd, 0xef,
        ];
        assert_eq!(h.destination(), group);
        let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert_eq!(
            icmp.icmp_type(),
            etherparse::Icmpv6Type::NeighborSolicitation
        );
        assert!(icmp.is_checksum_valid(src.0, group));
        let payload = icmp.payload();
        assert_eq!(&payload[..16], &target.0, "target");
        assert_eq!(&payload[16..18], &[1, 1], "source link-layer option");
        assert_eq!(&payload[18..24], &OUR);
        // Unicast refresh: to the neighbor's own address and MAC.
        let mut buf = [0u8; 128];
        let n = neighbor_solicitation(&mut buf, OUR, src, target, Some(B)).unwrap();
        assert_eq!(&buf[..6], &B);
        assert_eq!(&buf[14 + 24..14 + 40], &target.0);
        assert_eq!(n, PROBE_MAX);
    }
}

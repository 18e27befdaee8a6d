//! The immutable routing table the workers read: services, pools, backends and their Maglev tables.
//!
//! A table is built off the hot path (by the control plane's `compile()`), never mutated, and swapped
//! in whole. Everything a worker needs per packet is an index or a hash lookup away.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::flow::{hash_bytes, Addr};
use crate::maglev::{self, Maglev, MaglevBackend, MaglevError};
use crate::neighbor::{BoundHop, NeighborCache, NextHop};

/// How a pool's backends receive traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// DNAT to the backend and SNAT to a local address; replies come back to us.
    FullNat,
    /// DNAT only; the backend routes replies back through the balancer, which SNATs them to the VIP.
    Nat,
    /// IP-in-IP (or IPv6-in-IPv6, IPv4-in-IPv6) encapsulation; the backend replies directly.
    DsrIpip,
    /// GUE (variant 1: the inner IP packet right after UDP) encapsulation; the backend replies directly.
    DsrGue,
    /// Destination MAC rewrite on a shared L2 segment; the backend owns the VIP on a loopback.
    Dr,
}

impl Mode {
    /// The name used in lb.toml and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Mode::FullNat => "fullnat",
            Mode::Nat => "nat",
            Mode::DsrIpip => "dsr-ipip",
            Mode::DsrGue => "dsr-gue",
            Mode::Dr => "dr",
        }
    }

    /// True for modes whose replies pass through the balancer (and so need a reply-direction key).
    pub fn replies_through_us(self) -> bool {
        matches!(self, Mode::FullNat | Mode::Nat)
    }
}

/// How a new flow picks its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Affinity {
    /// Hash of the whole 5-tuple.
    #[default]
    None,
    /// Hash of the client address only: one client always lands on the same backend.
    ClientIp,
}

/// One backend of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Address.
    pub addr: Addr,
    /// Destination port; 0 keeps the client's destination port.
    pub port: u16,
    /// Effective weight (pool weight times backend weight); 0 drains it.
    pub weight: u32,
    /// MAC of the next hop towards this backend.
    pub mac: [u8; 6],
    /// Index of its pool in [`Service::pools`].
    pub pool: u16,
    /// Index of its counters in a worker's per-backend counters.
    pub stat: u32,
}

/// A set of backends sharing a forwarding mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Name (for logs and metrics).
    pub name: String,
    /// Forwarding mode.
    pub mode: Mode,
    /// Source addresses for fullnat (one of each family at least where backends of that family exist).
    pub snat: Vec<Addr>,
    /// Outer source address of encapsulated packets, IPv4.
    pub encap_src_v4: Option<Addr>,
    /// Outer source address of encapsulated packets, IPv6.
    pub encap_src_v6: Option<Addr>,
    /// GUE destination port (dsr-gue).
    pub gue_port: u16,
}

/// A virtual service: a VIP, a protocol, a port range and its backends.
#[derive(Clone, Debug)]
pub struct Service {
    /// Name (for logs and metrics).
    pub name: String,
    /// The virtual IP.
    pub vip: Addr,
    /// IP protocol (6 or 17).
    pub proto: u8,
    /// First port served (0 with `port_hi` 0: every port).
    pub port_lo: u16,
    /// Last port served.
    pub port_hi: u16,
    /// Backend selection.
    pub affinity: Affinity,
    /// Pools.
    pub pools: Vec<Pool>,
    /// Backends of all pools, in a deterministic order.
    pub backends: Vec<Backend>,
    /// Maglev table over `backends` (shared with other tables built from the same backends).
    pub maglev: Arc<Maglev>,
    /// Index of its counters in a worker's per-service counters.
    pub stat: u32,
    /// Removed from the config but kept for its tracked flows: they revalidate to it
    /// ([`RoutingTable::draining_service_for`]), new flows find no service
    /// ([`RoutingTable::service_for`] skips it). Every backend of a draining service has weight 0.
    pub draining: bool,
    by_addr: HashMap<(Addr, u16), u16, FastHash>,
    /// Per backend, when resolved dynamically, its next hop's cache slot with its index in
    /// [`RoutingTable::next_hops`] ([`BoundHop::NONE`]: the backend's static `mac`), so a new
    /// flow reads the slot without going through `next_hops`; empty when the table has no
    /// neighbor cache.
    hops: Vec<BoundHop>,
    /// Per backend, the interface that reaches it; empty: interface 0 for all.
    ifaces: Vec<u8>,
    /// Per pool (as `pools`), its IPv4 fullnat source addresses in `Pool::snat`'s order, as
    /// address words (the wire's bytes loaded native-endian): built with the table, so a new
    /// flow does not walk `Pool::snat` for them ([`Service::snat_v4`]).
    snat_v4: Vec<Vec<u32>>,
}

/// The key of [`RoutingTable::service_for_v4`]'s map: the address word as loaded from the
/// wire, the protocol and the port in one word.
#[inline(always)]
fn v4_vip_key(dst: u32, proto: u8, port: u16) -> u64 {
    u64::from(dst) | (u64::from(proto) << 32) | (u64::from(port) << 40)
}

/// [`RoutingTable::service_for_v4`]'s map from [`v4_vip_key`] to a service index: a flat
/// open-addressed array, at most half full, of (key, index) pairs, probed linearly from a
/// multiplicative hash of the key. Built once per table; a lookup is a multiply, a shift and a
/// compare or two, where `HashMap`'s (FxHash, SIMD group match) cost a new flow about 25
/// instructions per lookup.
#[derive(Clone, Debug)]
struct V4Vips {
    slots: Box<[(u64, u32)]>,
    shift: u32,
}

/// An empty [`V4Vips`] slot: no key has it ([`v4_vip_key`] uses the low 56 bits).
const V4_VIP_EMPTY: u64 = u64::MAX;

impl V4Vips {
    /// The map of `entries` (distinct keys).
    fn new(entries: &[(u64, u32)]) -> V4Vips {
        let n = (entries.len() * 2).next_power_of_two().max(8);
        let mut slots = vec![(V4_VIP_EMPTY, 0u32); n].into_boxed_slice();
        let shift = 64 - n.trailing_zeros();
        let mask = n - 1;
        for &(k, i) in entries {
            let mut at = Self::home(k, shift);
            while slots[at].0 != V4_VIP_EMPTY {
                at = (at + 1) & mask;
            }
            slots[at] = (k, i);
        }
        V4Vips { slots, shift }
    }

    #[inline(always)]
    fn home(k: u64, shift: u32) -> usize {
        (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> shift) as usize
    }

    /// The index stored for `k`.
    #[inline(always)]
    fn get(&self, k: u64) -> Option<u32> {
        let mask = self.slots.len().wrapping_sub(1);
        let mut at = Self::home(k, self.shift) & mask;
        // At most half full: an empty slot ends every probe.
        for _ in 0..self.slots.len() {
            let &(key, i) = self.slots.get(at)?;
            if key == k {
                return Some(i);
            }
            if key == V4_VIP_EMPTY {
                return None;
            }
            at = (at + 1) & mask;
        }
        None
    }
}

impl Service {
    /// Index of the backend with this address and port, if it is still in the service.
    pub fn backend_index(&self, addr: Addr, port: u16) -> Option<u16> {
        self.by_addr.get(&(addr, port)).copied()
    }

    /// Index in [`RoutingTable::next_hops`] of backend `i`'s next hop, when it is resolved
    /// dynamically; `None` when its static `mac` applies.
    #[inline]
    pub fn next_hop(&self, i: usize) -> Option<u32> {
        self.bound_hop(i).map(BoundHop::index)
    }

    /// Backend `i`'s next hop (that of [`Service::next_hop`]) with its cache slot, when it is
    /// resolved dynamically; `None` when its static `mac` applies.
    #[inline]
    pub fn bound_hop(&self, i: usize) -> Option<BoundHop> {
        self.hops.get(i).copied().filter(|&h| h != BoundHop::NONE)
    }

    /// The interface that reaches backend `i` (0 when next hops are not resolved by route).
    #[inline]
    pub fn iface(&self, i: usize) -> u8 {
        self.ifaces.get(i).copied().unwrap_or(0)
    }

    /// Pool `pool`'s IPv4 fullnat source addresses (its `snat` of that family, in order) as
    /// address words, the wire's bytes loaded native-endian; empty for a pool out of range.
    #[inline]
    pub fn snat_v4(&self, pool: usize) -> &[u32] {
        self.snat_v4.get(pool).map_or(&[], Vec::as_slice)
    }
}

/// Per pool, its IPv4 `snat` addresses as address words ([`Service::snat_v4`]).
fn snat_words(pools: &[Pool]) -> Vec<Vec<u32>> {
    pools
        .iter()
        .map(|p| {
            p.snat
                .iter()
                .filter(|a| a.is_v4())
                .map(|a| u32::from_ne_bytes(a.v4_octets()))
                .collect()
        })
        .collect()
}

/// An on-link prefix: addresses inside it are their own next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Network address (bits past `len` are ignored).
    pub addr: Addr,
    /// Prefix length in bits of the address's own family (0..=32 for IPv4, 0..=128 for IPv6).
    pub len: u8,
}

impl Prefix {
    /// True when `a` (of the same family) is inside the prefix.
    pub fn contains(&self, a: Addr) -> bool {
        if a.is_v4() != self.addr.is_v4() {
            return false;
        }
        // IPv4 lives in the low 32 bits of the 128 (::ffff:a.b.c.d), whose top 96 bits match.
        let bits = u32::from(self.len) + if a.is_v4() { 96 } else { 0 };
        let mask = match bits {
            0 => 0,
            b if b >= 128 => u128::MAX,
            b => u128::MAX << (128 - b),
        };
        u128::from_be_bytes(a.0) & mask == u128::from_be_bytes(self.addr.0) & mask
    }
}

/// How backends' next hops are resolved (built by the control plane from config; see
/// [`RoutingTable::set_neighbors`]).
#[derive(Clone, Debug)]
pub struct NeighborSpec {
    /// The cache shared by every table generation and the workers (created once at start).
    pub cache: Arc<NeighborCache>,
    /// What each interface reaches, in interface order (at least one).
    pub links: Vec<Link>,
    /// Static neighbors (`[[neighbors]]`): never probed, never learned over.
    pub statics: Vec<(Addr, [u8; 6])>,
    /// Static neighbors placed on an interface (`[[neighbors]] interface`): a backend at one of
    /// these addresses leaves by that interface, to itself, whatever the links say.
    pub pinned: Vec<(Addr, u8)>,
}

/// What one interface reaches: its on-link prefixes, and through its gateways either the
/// prefixes of `routes` or, with no `routes`, everything no other interface claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Prefixes on this link: an address inside one is its own next hop here.
    pub on_link: Vec<Prefix>,
    /// Prefixes reached through this link's gateway; empty: the gateway is a default route.
    pub routes: Vec<Prefix>,
    /// IPv4 gateway.
    pub gateway_v4: Option<Addr>,
    /// IPv6 gateway.
    pub gateway_v6: Option<Addr>,
}

impl NeighborSpec {
    /// A one-armed balancer's spec: one link.
    pub fn one(
        cache: Arc<NeighborCache>,
        on_link: Vec<Prefix>,
        gateway_v4: Option<Addr>,
        gateway_v6: Option<Addr>,
        statics: Vec<(Addr, [u8; 6])>,
    ) -> NeighborSpec {
        NeighborSpec {
            cache,
            links: vec![Link {
                on_link,
                routes: Vec::new(),
                gateway_v4,
                gateway_v6,
            }],
            statics,
            pinned: Vec::new(),
        }
    }

    /// The route to `a`: the interface that reaches it and its next hop there (`a` itself on
    /// the link, else a gateway); `None` for the hop when nothing routes it (interface 0, the
    /// backend's static MAC). Most specific on-link prefix first, then the most specific
    /// `routes` prefix, then the first link with a default gateway of `a`'s family. A static
    /// neighbor is on the interface it is pinned to, else on the link whose prefix holds it,
    /// else on interface 0.
    pub fn route(&self, a: Addr, is_static: bool) -> (u8, Option<Addr>) {
        route(&self.links, &self.pinned, a, is_static)
    }
}

/// The route to `a` over `links`, with the static neighbors `pinned` to an interface (see
/// [`NeighborSpec::route`]), for the config's checks too.
pub fn route(
    links: &[Link],
    pinned: &[(Addr, u8)],
    a: Addr,
    is_static: bool,
) -> (u8, Option<Addr>) {
    if let Some(&(_, iface)) = pinned.iter().find(|(p, _)| *p == a) {
        return (iface, Some(a));
    }
    {
        let best = |pick: fn(&Link) -> &[Prefix]| {
            links
                .iter()
                .enumerate()
                .flat_map(|(i, l)| pick(l).iter().map(move |p| (i, p)))
                .filter(|(_, p)| p.contains(a))
                .max_by_key(|(i, p)| (p.len, std::cmp::Reverse(*i)))
                .map(|(i, _)| i as u8)
        };
        let gateway = |l: &Link| {
            if a.is_v4() {
                l.gateway_v4
            } else {
                l.gateway_v6
            }
        };
        if let Some(i) = best(|l| &l.on_link) {
            return (i, Some(a));
        }
        if is_static {
            return (0, Some(a));
        }
        if let Some(i) = best(|l| &l.routes) {
            return (i, gateway(&links[usize::from(i)]));
        }
        match links
            .iter()
            .position(|l| l.routes.is_empty() && gateway(l).is_some())
        {
            Some(i) => (i as u8, gateway(&links[i])),
            None => (0, None),
        }
    }
}

/// What a service is built from (the table computes the rest).
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Name.
    pub name: String,
    /// The virtual IP.
    pub vip: Addr,
    /// IP protocol (6 or 17).
    pub proto: u8,
    /// First port served (0 with `port_hi` 0: every port).
    pub port_lo: u16,
    /// Last port served.
    pub port_hi: u16,
    /// Backend selection.
    pub affinity: Affinity,
    /// Maglev table size (a prime).
    pub table_size: usize,
    /// Pools.
    pub pools: Vec<Pool>,
    /// Backends; their `stat` is used as given when `stat` is set, else filled in by the table.
    pub backends: Vec<Backend>,
    /// Counter slot of the service, chosen by the caller so that slots stay stable across table
    /// generations (a reload must not move one backend's counts onto another); `None` numbers
    /// services and backends in order.
    pub stat: Option<u32>,
}

/// Maglev tables already built, keyed by their inputs, so a reload rebuilds only the services
/// whose backends or weights changed.
#[derive(Debug, Default)]
pub struct MaglevCache {
    /// Keyed by each backend's address, port and weight, in the order given, and the table size:
    /// the Maglev key of a backend is a function of its address and port, so this is the same
    /// key as the Maglev input, without formatting the keys of a table that is already built.
    tables: HashMap<MaglevInput, Arc<Maglev>, FastHash>,
}

/// What a Maglev table is built from: each backend's address, port and weight, and the size.
type MaglevInput = (Vec<(Addr, u16, u32)>, usize);

impl MaglevCache {
    /// The table for these backends (in this order; each backend's slots are indexes into it) and
    /// size, built now or taken from an earlier build.
    pub fn get(&mut self, backends: &[Backend], size: usize) -> Result<Arc<Maglev>, MaglevError> {
        let key = (
            backends
                .iter()
                .map(|b| (b.addr, b.port, b.weight))
                .collect::<Vec<_>>(),
            size,
        );
        if let Some(t) = self.tables.get(&key) {
            return Ok(t.clone());
        }
        let t = Arc::new(maglev::build(&maglev_keys(backends), size)?);
        self.tables.insert(key, t.clone());
        Ok(t)
    }

    /// Forgets tables no current routing table uses (only this cache holds them).
    pub fn retain_used(&mut self) {
        self.tables.retain(|_, t| Arc::strong_count(t) > 1);
    }

    /// Number of tables held.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// True when no table is held.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// Maglev's input for backends: each one's key is `addr:port`, which fixes the slots it prefers.
fn maglev_keys(backends: &[Backend]) -> Vec<MaglevBackend> {
    backends
        .iter()
        .map(|b| MaglevBackend {
            key: format!("{}:{}", b.addr, b.port).into_bytes(),
            weight: b.weight,
        })
        .collect()
}

/// The balancer's own L2/L3 identity: its first interface (`mac`, `addrs`), the others (`more`:
/// a two-armed or multi-NIC balancer), and what they share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    /// Our MAC address on interface 0.
    pub mac: [u8; 6],
    /// Addresses we own on interface 0 besides VIPs and SNAT addresses (answer ARP, ND and echo).
    pub addrs: Vec<Addr>,
    /// Largest IP packet we may transmit (the links' MTU).
    pub mtu: u16,
    /// Source ports used for fullnat, split evenly between workers.
    pub snat_ports: (u16, u16),
    /// Interfaces 1, 2, ... (empty for a one-armed balancer).
    pub more: Vec<Iface>,
}

/// One further interface of the balancer ([`Local::more`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// Our MAC address on it (distinct from every other interface's: a transmitted frame's
    /// source MAC says which interface sends it).
    pub mac: [u8; 6],
    /// Addresses we own on it besides VIPs and SNAT addresses.
    pub addrs: Vec<Addr>,
}

impl Local {
    /// Number of interfaces.
    pub fn interfaces(&self) -> usize {
        1 + self.more.len()
    }

    /// Our MAC on interface `i` (interface 0's for an index past the end).
    #[inline]
    pub fn mac_of(&self, i: u8) -> [u8; 6] {
        match i {
            0 => self.mac,
            i => self
                .more
                .get(usize::from(i) - 1)
                .map_or(self.mac, |f| f.mac),
        }
    }

    /// Our own addresses on interface `i` (empty past the end).
    pub fn addrs_of(&self, i: u8) -> &[Addr] {
        match i {
            0 => &self.addrs,
            i => self
                .more
                .get(usize::from(i) - 1)
                .map_or(&[][..], |f| &f.addrs),
        }
    }

    /// The interface whose MAC is `mac`, if any.
    #[inline]
    pub fn iface_of_mac(&self, mac: &[u8]) -> Option<u8> {
        if mac == self.mac {
            return Some(0);
        }
        self.more
            .iter()
            .position(|f| f.mac == mac)
            .map(|i| (i + 1) as u8)
    }
}

/// Why a table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Maglev rejected a service.
    #[error("service {service}: {source}")]
    Maglev {
        /// The service.
        service: String,
        /// Maglev's reason.
        source: MaglevError,
    },
    /// The neighbor cache has no free slot for another next hop.
    #[error("next hop {addr}: the neighbor cache is full ({capacity} slots)")]
    NeighborsFull {
        /// The next hop.
        addr: Addr,
        /// Slots of the cache.
        capacity: usize,
    },
    /// A next hop to resolve, but none of our addresses of its family to probe from.
    #[error("next hop {addr}: no local address of its family to send ARP/ND probes from")]
    NoProbeSource {
        /// The next hop.
        addr: Addr,
    },
    /// A change of backends names a service this table has not live under that name, VIP,
    /// protocol and ports, or gives no counter slots ([`RoutingTable::with_backends`]).
    #[error("service {service}: not a live service of the table with those ports")]
    NotPatchable {
        /// The service.
        service: String,
    },
    /// Two services claim the same VIP, protocol and port.
    #[error("services {first} and {second} both claim {vip} port {port} protocol {proto}")]
    Overlap {
        /// First service.
        first: String,
        /// Second service.
        second: String,
        /// VIP.
        vip: Addr,
        /// Port.
        port: u16,
        /// Protocol.
        proto: u8,
    },
}

/// The immutable routing state every worker reads.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    /// Increases with every table the control plane publishes.
    pub generation: u64,
    /// Our own identity.
    pub local: Local,
    /// Services.
    pub services: Vec<Service>,
    /// Seed of flow hashes (constant across generations so selection is stable).
    pub hash_seed: u64,
    backend_stats: u32,
    service_stats: u32,
    vips: HashMap<(Addr, u8, u16), u32, FastHash>,
    /// `vips`' IPv4 entries keyed by one word ([`v4_vip_key`]): a new flow's lookup hashes 8
    /// bytes instead of 19.
    vips_v4: V4Vips,
    draining_vips: HashMap<(Addr, u8, u16), u32, FastHash>,
    owned: HashSet<Addr, FastHash>,
    snat: HashSet<Addr, FastHash>,
    vip_addrs: HashSet<Addr, FastHash>,
    neighbors: Option<Arc<NeighborCache>>,
    next_hops: Vec<NextHop>,
    hop_index: HashMap<Addr, u32, FastHash>,
}

impl RoutingTable {
    /// Builds the indexes and Maglev tables. Pure: the same input gives the same table.
    pub fn new(
        generation: u64,
        local: Local,
        specs: Vec<ServiceSpec>,
    ) -> Result<RoutingTable, TableError> {
        Self::build(generation, local, specs, &mut MaglevCache::default())
    }

    /// [`RoutingTable::new`], reusing Maglev tables from `cache` and adding the ones it builds.
    pub fn build(
        generation: u64,
        local: Local,
        specs: Vec<ServiceSpec>,
        cache: &mut MaglevCache,
    ) -> Result<RoutingTable, TableError> {
        Self::build_with_draining(generation, local, specs, Vec::new(), cache)
    }

    /// [`RoutingTable::build`] plus `draining` services: removed from the config but kept, with
    /// their VIPs, so their tracked flows keep their backends ([`Service::draining`]). A draining
    /// service never shadows a live one or an earlier draining one: a port already claimed stays
    /// with its first claimant (so list the newest removals first).
    pub fn build_with_draining(
        generation: u64,
        local: Local,
        specs: Vec<ServiceSpec>,
        draining: Vec<ServiceSpec>,
        cache: &mut MaglevCache,
    ) -> Result<RoutingTable, TableError> {
        let live = specs.len();
        let specs: Vec<ServiceSpec> = specs.into_iter().chain(draining).collect();
        let mut services = Vec::with_capacity(specs.len());
        let mut vips: HashMap<(Addr, u8, u16), u32, FastHash> =
            HashMap::with_capacity_and_hasher(specs.len(), FastHash::default());
        let mut owned: HashSet<Addr, FastHash> = local
            .addrs
            .iter()
            .chain(local.more.iter().flat_map(|f| f.addrs.iter()))
            .copied()
            .collect();
        owned.reserve(specs.len());
        let mut snat: HashSet<Addr, FastHash> = HashSet::default();
        let mut vip_addrs: HashSet<Addr, FastHash> =
            HashSet::with_capacity_and_hasher(specs.len(), FastHash::default());
        // Draining services are found only by tracked flows, so a new flow's lookup is the
        // same as without them (and costs nothing more).
        let mut draining_vips: HashMap<(Addr, u8, u16), u32, FastHash> = HashMap::default();
        let mut backend_stats = 0u32;
        let mut service_stats = 0u32;
        for (idx, spec) in specs.into_iter().enumerate() {
            let draining = idx >= live;
            let mut backends = spec.backends;
            if spec.stat.is_none() {
                // Numbered in the order the table keeps them.
                backends.sort_by_key(|b| (b.addr, b.port, b.pool));
                for (i, b) in backends.iter_mut().enumerate() {
                    b.stat = backend_stats + i as u32;
                }
            }
            let (backends, maglev, by_addr) =
                index_backends(backends, spec.table_size, &spec.name, cache)?;
            for b in &backends {
                backend_stats = backend_stats.max(b.stat.saturating_add(1));
            }
            let stat = spec.stat.unwrap_or(idx as u32);
            service_stats = service_stats.max(stat.saturating_add(1));
            for p in &spec.pools {
                for a in &p.snat {
                    snat.insert(*a);
                    owned.insert(*a);
                }
            }
            owned.insert(spec.vip);
            vip_addrs.insert(spec.vip);
            // (0, 0) is the one every-port entry; a range claims each of its ports.
            for port in spec.port_lo..=spec.port_hi {
                let key = (spec.vip, spec.proto, port);
                if draining {
                    if !vips.contains_key(&key) {
                        draining_vips.entry(key).or_insert(idx as u32);
                    }
                    continue;
                }
                if let Some(prev) = vips.insert(key, idx as u32) {
                    let first: &Service = &services[prev as usize];
                    return Err(TableError::Overlap {
                        first: first.name.clone(),
                        second: spec.name,
                        vip: spec.vip,
                        port,
                        proto: spec.proto,
                    });
                }
            }
            services.push(Service {
                name: spec.name,
                vip: spec.vip,
                proto: spec.proto,
                port_lo: spec.port_lo,
                port_hi: spec.port_hi,
                affinity: spec.affinity,
                snat_v4: snat_words(&spec.pools),
                pools: spec.pools,
                backends,
                maglev,
                stat,
                draining,
                by_addr,
                hops: Vec::new(),
                ifaces: Vec::new(),
            });
        }
        let vips_v4: Vec<(u64, u32)> = vips
            .iter()
            .filter(|((a, _, _), _)| a.is_v4())
            .map(|(&(a, proto, port), &i)| {
                let w = u32::from_ne_bytes(a.v4_octets());
                (v4_vip_key(w, proto, port), i)
            })
            .collect();
        let vips_v4 = V4Vips::new(&vips_v4);
        Ok(RoutingTable {
            generation,
            local,
            services,
            hash_seed: hash_bytes(b"lb-flow-hash", 0),
            backend_stats,
            service_stats,
            vips,
            vips_v4,
            draining_vips,
            owned,
            snat,
            vip_addrs,
            neighbors: None,
            next_hops: Vec::new(),
            hop_index: HashMap::default(),
        })
    }

    /// Switches backends to dynamic next-hop resolution through `spec.cache` (call once, after
    /// building, before publishing). Per backend: its next-hop address is the backend itself
    /// when it is on the link (or a static neighbor), else the gateway of its family; a static
    /// neighbor's MAC replaces `Backend::mac`; any other next hop gets a cache slot and is
    /// resolved by ARP/ND. A backend off the link with no gateway of its family keeps its `mac`
    /// (the `gateway_mac` of older configs). Binds slots in the cache (the control plane frees
    /// unused ones later with [`NeighborCache::retain`]).
    pub fn set_neighbors(&mut self, spec: NeighborSpec) -> Result<(), TableError> {
        let statics: HashMap<Addr, [u8; 6], FastHash> = spec.statics.iter().copied().collect();
        for idx in 0..self.services.len() {
            self.bind_hops(idx, &spec, &statics)?;
        }
        self.neighbors = Some(spec.cache);
        Ok(())
    }

    /// Binds the next hops of service `idx`'s backends (see [`RoutingTable::set_neighbors`]).
    fn bind_hops(
        &mut self,
        idx: usize,
        spec: &NeighborSpec,
        statics: &HashMap<Addr, [u8; 6], FastHash>,
    ) -> Result<(), TableError> {
        let local = &self.local;
        let source = |iface: u8, hop: Addr| -> Option<Addr> {
            let same = |a: &&Addr| a.is_v4() == hop.is_v4();
            let on_link = spec
                .links
                .get(usize::from(iface))
                .map_or(&[][..], |l| &l.on_link);
            let own = local.addrs_of(iface);
            // Prefer our address on the hop's own link, else any of its family on that
            // interface, else any of its family.
            own.iter()
                .filter(same)
                .find(|a| on_link.iter().any(|p| p.contains(**a) && p.contains(hop)))
                .or_else(|| own.iter().find(same))
                .or_else(|| {
                    (0..local.interfaces() as u8)
                        .flat_map(|i| local.addrs_of(i))
                        .find(same)
                })
                .copied()
        };
        let svc = &mut self.services[idx];
        let mut hops = Vec::with_capacity(svc.backends.len());
        let mut ifaces = Vec::with_capacity(svc.backends.len());
        for be in &mut svc.backends {
            let (iface, hop) = spec.route(be.addr, statics.contains_key(&be.addr));
            ifaces.push(iface);
            let Some(hop) = hop else {
                hops.push(BoundHop::NONE);
                continue;
            };
            if let Some(mac) = statics.get(&hop) {
                be.mac = *mac;
                hops.push(BoundHop::NONE);
                continue;
            }
            let (i, h) = match self.hop_index.get(&hop) {
                Some(&i) => (i, self.next_hops[i as usize].hop),
                None => {
                    let h = spec.cache.bind(hop).ok_or(TableError::NeighborsFull {
                        addr: hop,
                        capacity: spec.cache.capacity(),
                    })?;
                    let src = source(iface, hop).ok_or(TableError::NoProbeSource { addr: hop })?;
                    let i = self.next_hops.len() as u32;
                    self.next_hops.push(NextHop {
                        addr: hop,
                        hop: h,
                        src,
                        iface,
                    });
                    self.hop_index.insert(hop, i);
                    (i, h)
                }
            };
            // Every next hop has its own slot, so there are no more of them than slots.
            hops.push(BoundHop::new(h, i).ok_or(TableError::NeighborsFull {
                addr: hop,
                capacity: spec.cache.capacity(),
            })?);
        }
        svc.hops = hops;
        svc.ifaces = if ifaces.iter().all(|&i| i == 0) {
            Vec::new()
        } else {
            ifaces
        };
        Ok(())
    }

    /// The neighbor cache, when next hops are resolved dynamically.
    pub fn neighbors(&self) -> Option<&Arc<NeighborCache>> {
        self.neighbors.as_ref()
    }

    /// Next hops resolved dynamically (each with its cache slot and probe source).
    pub fn next_hops(&self) -> &[NextHop] {
        &self.next_hops
    }

    /// The dynamically resolved next hop with this address, if any (learning from ARP/ND).
    #[inline]
    pub fn next_hop_by_addr(&self, a: Addr) -> Option<&NextHop> {
        let i = *self.hop_index.get(&a)?;
        self.next_hops.get(i as usize)
    }

    /// The service serving `dst`/`proto`/`dport` (an exact port first, then an every-port
    /// service); never a draining one.
    #[inline]
    pub fn service_for(&self, dst: Addr, proto: u8, dport: u16) -> Option<(u32, &Service)> {
        let idx = match self.vips.get(&(dst, proto, dport)) {
            Some(i) => *i,
            None => *self.vips.get(&(dst, proto, 0))?,
        };
        Some((idx, &self.services[idx as usize]))
    }

    /// [`RoutingTable::service_for`] of an IPv4 destination given as its wire bytes loaded
    /// native-endian (as [`crate::wire::V4Flow`] holds it): the same service.
    #[inline]
    pub fn service_for_v4(&self, dst: u32, proto: u8, dport: u16) -> Option<&Service> {
        let idx = match self.vips_v4.get(v4_vip_key(dst, proto, dport)) {
            Some(i) => i,
            None => self.vips_v4.get(v4_vip_key(dst, proto, 0))?,
        };
        self.services.get(idx as usize)
    }

    /// The draining service (removed by a reload, see [`Service::draining`]) that held
    /// `dst`/`proto`/`dport` where no live service does: only tracked flows look here.
    pub fn draining_service_for(&self, dst: Addr, proto: u8, dport: u16) -> Option<&Service> {
        let idx = match self.draining_vips.get(&(dst, proto, dport)) {
            Some(i) => *i,
            None => *self.draining_vips.get(&(dst, proto, 0))?,
        };
        self.services.get(idx as usize)
    }

    /// True for any address we answer for: VIPs, local and SNAT addresses.
    #[inline]
    pub fn owns(&self, a: Addr) -> bool {
        self.owned.contains(&a)
    }

    /// True for an address we answer ARP and ND for on interface `iface`: VIPs and SNAT
    /// addresses on every interface, our own addresses on theirs.
    #[inline]
    pub fn owns_on(&self, iface: u8, a: Addr) -> bool {
        self.owns(a)
            && (self.local.more.is_empty()
                || self.is_vip(a)
                || self.is_snat(a)
                || self.local.addrs_of(iface).contains(&a))
    }

    /// Every address we answer for (VIPs, local and SNAT addresses), e.g. for an XDP filter.
    pub fn owned_addrs(&self) -> impl Iterator<Item = Addr> + '_ {
        self.owned.iter().copied()
    }

    /// Addresses of nat backends: their replies to clients come back through the balancer.
    pub fn nat_backend_addrs(&self) -> impl Iterator<Item = Addr> + '_ {
        self.services.iter().flat_map(|svc| {
            svc.backends.iter().filter_map(move |be| {
                let nat = svc.pools.get(usize::from(be.pool)).map(|p| p.mode) == Some(Mode::Nat);
                nat.then_some(be.addr)
            })
        })
    }

    /// True for a VIP.
    #[inline]
    pub fn is_vip(&self, a: Addr) -> bool {
        self.vip_addrs.contains(&a)
    }

    /// True for a fullnat source address.
    #[inline]
    pub fn is_snat(&self, a: Addr) -> bool {
        self.snat.contains(&a)
    }

    /// Number of per-backend counter slots a worker needs.
    pub fn backend_stat_slots(&self) -> usize {
        self.backend_stats as usize
    }

    /// Number of per-service counter slots a worker needs.
    pub fn service_stat_slots(&self) -> usize {
        self.service_stats as usize
    }
}

impl RoutingTable {
    /// This table, stamped `generation`, with the live services of `specs` rebuilt from them:
    /// a change of backends only, in time proportional to the services changed, not to the
    /// table (the Kubernetes source moves endpoints of one Service among thousands). Each spec
    /// names a live service by its VIP, protocol and first port, with the same name and last
    /// port, and gives counter slots (`stat` set); its pools, backends, weights and affinity
    /// replace the service's. Next hops of the new backends are bound with `neighbors` when this
    /// table resolves them dynamically (the spec it was bound with). Nothing else changes, and
    /// on an error this table is untouched.
    pub fn with_backends(
        &self,
        generation: u64,
        specs: Vec<ServiceSpec>,
        cache: &mut MaglevCache,
        neighbors: Option<&NeighborSpec>,
    ) -> Result<RoutingTable, TableError> {
        let statics: HashMap<Addr, [u8; 6], FastHash> = neighbors
            .map(|n| n.statics.iter().copied().collect())
            .unwrap_or_default();
        let mut t = self.clone();
        t.generation = generation;
        for spec in specs {
            let idx = match (spec.stat, t.vips.get(&(spec.vip, spec.proto, spec.port_lo))) {
                (Some(_), Some(&i))
                    if t.services[i as usize].name == spec.name
                        && t.services[i as usize].port_hi == spec.port_hi
                        && t.services[i as usize].port_lo == spec.port_lo =>
                {
                    i as usize
                }
                _ => return Err(TableError::NotPatchable { service: spec.name }),
            };
            let (backends, maglev, by_addr) =
                index_backends(spec.backends, spec.table_size, &spec.name, cache)?;
            for b in &backends {
                t.backend_stats = t.backend_stats.max(b.stat.saturating_add(1));
            }
            for p in &spec.pools {
                for a in &p.snat {
                    t.snat.insert(*a);
                    t.owned.insert(*a);
                }
            }
            let stat = spec.stat.unwrap_or_default();
            t.service_stats = t.service_stats.max(stat.saturating_add(1));
            let svc = &mut t.services[idx];
            svc.affinity = spec.affinity;
            svc.snat_v4 = snat_words(&spec.pools);
            svc.pools = spec.pools;
            svc.backends = backends;
            svc.maglev = maglev;
            svc.stat = stat;
            svc.by_addr = by_addr;
            svc.hops = Vec::new();
            svc.ifaces = Vec::new();
            if let Some(n) = neighbors.filter(|_| t.neighbors.is_some()) {
                t.bind_hops(idx, n, &statics)?;
            }
        }
        Ok(t)
    }
}

/// A service's backend index by address and port.
type ByAddr = HashMap<(Addr, u16), u16, FastHash>;

/// A service's backends in the table's order (address, port, pool), their Maglev table (from
/// `cache`) and the index by address and port.
fn index_backends(
    mut backends: Vec<Backend>,
    table_size: usize,
    service: &str,
    cache: &mut MaglevCache,
) -> Result<(Vec<Backend>, Arc<Maglev>, ByAddr), TableError> {
    backends.sort_by_key(|b| (b.addr, b.port, b.pool));
    let maglev = cache
        .get(&backends, table_size)
        .map_err(|source| TableError::Maglev {
            service: service.to_string(),
            source,
        })?;
    let by_addr = backends
        .iter()
        .enumerate()
        .map(|(i, b)| ((b.addr, b.port), i as u16))
        .collect();
    Ok((backends, maglev, by_addr))
}

/// The hasher of the table's small keys (rustc-hash's Fx): fast and not keyed, which is safe
/// here because the keys stored come from config, so packets can only probe the maps, not fill
/// them with colliding keys.
pub type FastHash = rustc_hash::FxBuildHasher;

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(last: u8) -> Addr {
        Addr::v6([0x20, 1, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, last])
    }

    #[test]
    fn v4_vips_find_every_key_they_hold_and_no_other() {
        for n in [0usize, 1, 3, 8, 100, 1000] {
            // Keys that differ only in the port or the protocol, as a service's do.
            let key = |i: usize| {
                let dst = u32::from_ne_bytes([198, 18, (i / 251) as u8, (i % 251) as u8]);
                v4_vip_key(dst, if i % 2 == 0 { 6 } else { 17 }, (i % 7) as u16 * 1000)
            };
            let entries: Vec<(u64, u32)> = (0..n).map(|i| (key(i), i as u32)).collect();
            let map = V4Vips::new(&entries);
            for &(k, i) in &entries {
                assert_eq!(map.get(k), Some(i), "{n} keys");
            }
            for i in n..n + 2000 {
                assert_eq!(map.get(key(i)), None, "{n} keys");
            }
        }
    }

    #[test]
    fn prefixes_match_their_family_only() {
        let p4 = Prefix {
            addr: Addr::v4([198, 18, 1, 0]),
            len: 24,
        };
        assert!(p4.contains(Addr::v4([198, 18, 1, 200])));
        assert!(!p4.contains(Addr::v4([198, 18, 2, 1])));
        assert!(!p4.contains(v6(1)));
        let all4 = Prefix {
            addr: Addr::v4([0, 0, 0, 0]),
            len: 0,
        };
        assert!(all4.contains(Addr::v4([8, 8, 8, 8])));
        assert!(
            !all4.contains(v6(1)),
            "0.0.0.0/0 is IPv4's default, not IPv6's"
        );
        let p6 = Prefix {
            addr: v6(0),
            len: 48,
        };
        assert!(p6.contains(v6(9)));
        assert!(!p6.contains(Addr::v6([
            0x20, 1, 0x0d, 0xb9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1
        ])));
        let host = Prefix {
            addr: v6(9),
            len: 128,
        };
        assert!(host.contains(v6(9)) && !host.contains(v6(8)));
    }

    fn p4(a: [u8; 4], len: u8) -> Prefix {
        Prefix {
            addr: Addr::v4(a),
            len,
        }
    }

    #[test]
    fn the_route_to_an_address_picks_its_interface_and_next_hop() {
        let gw_out = Addr::v4([198, 18, 0, 254]);
        let gw_in = Addr::v4([198, 18, 1, 254]);
        let links = [
            // Outside: the default route.
            Link {
                on_link: vec![p4([198, 18, 0, 0], 24)],
                gateway_v4: Some(gw_out),
                ..Link::default()
            },
            // Inside: its own net, and 198.18.128.0/17 through its router.
            Link {
                on_link: vec![p4([198, 18, 1, 0], 24), p4([198, 18, 1, 128], 25)],
                routes: vec![p4([198, 18, 128, 0], 17)],
                gateway_v4: Some(gw_in),
                ..Link::default()
            },
        ];
        let a = |o: [u8; 4]| Addr::v4(o);
        // On a link: itself, on that link.
        assert_eq!(
            route(&links, &[], a([198, 18, 0, 7]), false),
            (0, Some(a([198, 18, 0, 7])))
        );
        assert_eq!(
            route(&links, &[], a([198, 18, 1, 7]), false),
            (1, Some(a([198, 18, 1, 7])))
        );
        // Behind the inside router; anything else through the outside default.
        assert_eq!(
            route(&links, &[], a([198, 18, 200, 1]), false),
            (1, Some(gw_in))
        );
        assert_eq!(
            route(&links, &[], a([198, 19, 0, 1]), false),
            (0, Some(gw_out))
        );
        // A static neighbor off every link stays on interface 0, as itself.
        assert_eq!(
            route(&links, &[], a([198, 19, 0, 1]), true),
            (0, Some(a([198, 19, 0, 1])))
        );
        // ... unless it is pinned to an interface, which wins over every prefix.
        let pinned = [(a([198, 19, 0, 1]), 1), (a([198, 18, 0, 7]), 1)];
        assert_eq!(
            route(&links, &pinned, a([198, 19, 0, 1]), true),
            (1, Some(a([198, 19, 0, 1])))
        );
        assert_eq!(route(&links, &pinned, a([198, 18, 0, 7]), true).0, 1);
        // No IPv6 gateway anywhere: nothing routes it.
        assert_eq!(route(&links, &[], v6(1), false), (0, None));
        // The most specific on-link prefix wins over an earlier, wider one.
        let overlap = [
            Link {
                on_link: vec![p4([198, 18, 0, 0], 16)],
                ..Link::default()
            },
            Link {
                on_link: vec![p4([198, 18, 5, 0], 24)],
                ..Link::default()
            },
        ];
        assert_eq!(route(&overlap, &[], a([198, 18, 5, 9]), false).0, 1);
        assert_eq!(route(&overlap, &[], a([198, 18, 6, 9]), false).0, 0);
    }

    #[test]
    fn interfaces_are_found_by_their_mac() {
        let local = Local {
            mac: [2, 0, 0, 0, 0, 1],
            addrs: vec![Addr::v4([198, 18, 0, 1])],
            mtu: 1500,
            snat_ports: (1024, 65535),
            more: vec![Iface {
                mac: [2, 0, 0, 0, 0, 2],
                addrs: vec![Addr::v4([198, 18, 1, 1])],
            }],
        };
        assert_eq!(local.interfaces(), 2);
        assert_eq!(local.iface_of_mac(&[2, 0, 0, 0, 0, 2]), Some(1));
        assert_eq!(local.iface_of_mac(&[2, 0, 0, 0, 0, 1]), Some(0));
        assert_eq!(local.iface_of_mac(&[2, 0, 0, 0, 0, 3]), None);
        assert_eq!(local.mac_of(1), [2, 0, 0, 0, 0, 2]);
        assert_eq!(
            local.mac_of(9),
            [2, 0, 0, 0, 0, 1],
            "past the end: interface 0"
        );
        assert_eq!(local.addrs_of(1), &[Addr::v4([198, 18, 1, 1])]);
        assert!(local.addrs_of(2).is_empty());
    }
}

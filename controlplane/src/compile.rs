//! `compile()`: a parsed [`Config`] becomes the dataplane's immutable [`RoutingTable`].
//!
//! Compilation checks every rule that spans several fields (address families, neighbors, SNAT and
//! encapsulation sources) and reports all the problems it finds at once, so one edit-check cycle
//! fixes a whole config.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use dataplane::conntrack;
use dataplane::flow::Addr;
use dataplane::neighbor::NeighborCache;
use dataplane::table::{self, Local, MaglevCache, NeighborSpec, Prefix, ServiceSpec};
use dataplane::RoutingTable;
use std::sync::Arc;

use crate::config::{self, Config, Lazy, MacAddr};
use crate::diag::Problem;
use crate::state::BackendKey;

/// What `compile()` produces: the routing table and the per-worker settings that go with it.
#[derive(Debug)]
pub struct Compiled {
    /// The table every worker reads.
    pub table: RoutingTable,
    /// Each worker's conntrack sizing and timeouts.
    pub conntrack: conntrack::Config,
    /// Number of workers.
    pub workers: u16,
    /// How `lb run` runs the dataplane: port, interface, cores, idle policy.
    pub run: RunSettings,
    /// Next hops resolved by ARP/ND; `None` when `[dataplane] on_link` and `gateway` are both
    /// empty. The control plane binds their neighbor-cache slots when it publishes the table.
    pub next_hops: Option<NextHops>,
}

/// What resolving next hops needs from `[dataplane]` and `[[neighbors]]`, without the cache:
/// compile stays pure, and the one publish step binds the slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHops {
    /// Prefixes on our link: a backend inside one is resolved itself.
    pub on_link: Vec<Prefix>,
    /// IPv4 gateway for backends off the link.
    pub gateway_v4: Option<Addr>,
    /// IPv6 gateway for backends off the link.
    pub gateway_v6: Option<Addr>,
    /// Static neighbors (`[[neighbors]]`, and the gateways when `gateway_mac` is set).
    pub statics: Vec<(Addr, [u8; 6])>,
}

impl NextHops {
    /// The spec `RoutingTable::set_neighbors` takes, resolving through `cache`.
    pub fn spec(&self, cache: Arc<NeighborCache>) -> NeighborSpec {
        NeighborSpec {
            cache,
            on_link: self.on_link.clone(),
            gateway_v4: self.gateway_v4,
            gateway_v6: self.gateway_v6,
            statics: self.statics.clone(),
        }
    }
}

/// The dataplane run settings of `[dataplane]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    /// Kind of packet port.
    pub port: config::PortKind,
    /// Interface name.
    pub interface: String,
    /// Core of each worker, one per worker.
    pub cores: Vec<usize>,
    /// Idle policy.
    pub idle: config::IdleMode,
    /// XDP attach mode (af_xdp only).
    pub xdp_mode: config::XdpMode,
}

/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
const IFNAME_MAX: usize = 15;

/// Every problem found in a config, each naming the service, pool or backend at fault and the key
/// path of the offending value ([`crate::diag`] turns paths into `file:line:column`). `Display`
/// lists them one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// One per problem, in the order checked.
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileError {}

/// Smallest and largest MTU we accept: IPv4's minimum datagram and the jumbo frames the ports carry.
const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=9216;

/// Builds the routing table for `cfg`, stamped with `generation`. Pure: the same input gives the same
/// table.
pub fn compile(cfg: &Config, generation: u64) -> Result<Compiled, CompileError> {
    compile_with(
        cfg,
        generation,
        &mut Context {
            adjust: &|_, w| Some(w),
            slots: &mut StatSlots::default(),
            cache: &mut MaglevCache::default(),
        },
    )
}

/// Decides a backend's weight in the table from its configured weight (pool weight times backend
/// weight): `None` leaves it out, `Some(0)` drains it. Health and runtime overrides enter here.
pub type Adjust<'a> = &'a dyn Fn(&BackendKey, u32) -> Option<u32>;

/// What a running control plane adds to a compile: the runtime weight of each backend, counter
/// slots that stay put across reloads, and the Maglev tables of the previous compile.
pub struct Context<'a> {
    /// Runtime weight of each backend.
    pub adjust: Adjust<'a>,
    /// Counter slots by service and backend, kept across compiles.
    pub slots: &'a mut StatSlots,
    /// Maglev tables already built.
    pub cache: &'a mut MaglevCache,
}

/// Next-hop addresses the neighbor cache holds at most (backends on the link plus gateways).
pub const NEIGHBOR_SLOTS: usize = 16_384;

/// The next hops of `[dataplane]` and `[[neighbors]]`.
fn next_hops(cfg: &Config) -> NextHops {
    let dp = &cfg.dataplane;
    let gateway = |v4: bool| {
        dp.gateway
            .iter()
            .find(|g| g.is_ipv4() == v4)
            .map(|g| Addr::from(*g))
    };
    let mut statics: Vec<(Addr, [u8; 6])> = cfg
        .neighbors
        .iter()
        .map(|n| (Addr::from(n.ip), n.mac.0))
        .collect();
    // A gateway with a configured MAC is a static neighbor too.
    if let Some(mac) = dp.gateway_mac {
        statics.extend(dp.gateway.iter().map(|g| (Addr::from(*g), mac.0)));
    }
    NextHops {
        on_link: dp
            .on_link
            .iter()
            .map(|p| Prefix {
                addr: p.addr.into(),
                len: p.len,
            })
            .collect(),
        gateway_v4: gateway(true),
        gateway_v6: gateway(false),
        statics,
    }
}

/// Counter slots by name. A slot, once given, keeps its meaning for the life of the process, so
/// the workers' cumulative counters stay attached to the same service or backend across reloads
/// (a slot is never reused; a process that sees very many distinct backends grows its counters).
///
/// Every compile looks up every service and backend: slots are grouped by service name (one
/// string lookup per service, then address and port), hashed with the dataplane's fast hasher
/// (the keys come from the config, not from packets).
#[derive(Debug, Default)]
pub struct StatSlots {
    /// Index in `slots` of each service name.
    by_name: HashMap<String, usize, table::FastHash>,
    slots: Vec<ServiceSlots>,
    services: u32,
    backends: u32,
}

/// The slots of one service name.
#[derive(Debug, Default)]
struct ServiceSlots {
    /// Per port range.
    ranges: Vec<((u16, u16), u32)>,
    /// Per backend address and port.
    backends: HashMap<(IpAddr, u16), u32, table::FastHash>,
}

/// The backend slots of one service, to assign many with one lookup of its name.
pub struct BackendSlots<'a> {
    slots: &'a mut ServiceSlots,
    next: &'a mut u32,
}

impl BackendSlots<'_> {
    /// The slot of the service's backend at `addr` and `port`, assigned on first use.
    pub fn get(&mut self, addr: IpAddr, port: u16) -> u32 {
        *self.slots.backends.entry((addr, port)).or_insert_with(|| {
            let s = *self.next;
            *self.next += 1;
            s
        })
    }
}

impl StatSlots {
    /// Index of `name`'s slots, added on first use (only then is the name copied).
    fn index(&mut self, name: &str) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.slots.len();
        self.slots.push(ServiceSlots::default());
        self.by_name.insert(name.to_string(), i);
        i
    }

    fn of(&self, name: &str) -> Option<&ServiceSlots> {
        self.by_name.get(name).and_then(|&i| self.slots.get(i))
    }

    /// The slot of a service's port range (`(0, 0)`: every port), assigned on first use.
    pub fn service(&mut self, name: &str, lo: u16, hi: u16) -> u32 {
        if let Some(s) = self.service_slot(name, lo, hi) {
            return s;
        }
        let next = self.services;
        self.services += 1;
        let i = self.index(name);
        self.slots[i].ranges.push(((lo, hi), next));
        next
    }

    /// The backend slots of service `name`.
    pub fn backends_of(&mut self, name: &str) -> BackendSlots<'_> {
        let i = self.index(name);
        BackendSlots {
            slots: &mut self.slots[i],
            next: &mut self.backends,
        }
    }

    /// The slot of a backend, assigned on first use.
    pub fn backend(&mut self, key: &BackendKey) -> u32 {
        self.backends_of(&key.service).get(key.addr, key.port)
    }

    /// The slot of a backend, if it has one.
    pub fn backend_slot(&self, key: &BackendKey) -> Option<u32> {
        self.of(&key.service)?
            .backends
            .get(&(key.addr, key.port))
            .copied()
    }

    /// The slot of a service's port range, if it has one.
    pub fn service_slot(&self, name: &str, lo: u16, hi: u16) -> Option<u32> {
        self.of(name)?
            .ranges
            .iter()
            .find(|(r, _)| *r == (lo, hi))
            .map(|(_, s)| *s)
    }
}

/// [`compile`] for a running control plane: weights pass through `ctx.adjust`, counter slots come
/// from `ctx.slots` and Maglev tables from `ctx.cache`.
pub fn compile_with(
    cfg: &Config,
    generation: u64,
    ctx: &mut Context<'_>,
) -> Result<Compiled, CompileError> {
    // Rules on single fields and sections first, then the ones that need the whole config.
    let mut problems = cfg.validate();
    let dp = &cfg.dataplane;

    if !MTU_RANGE.contains(&dp.mtu) {
        problems.push(
            Problem::new(
                "dataplane.mtu",
                format!(
                    "dataplane: mtu {} is outside {}-{}",
                    dp.mtu,
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                ),
            )
            .hint("1500 on plain Ethernet; up to 9216 with jumbo frames"),
        );
    }
    if dp.workers == 0 {
        problems.push(Problem::new(
            "dataplane.workers",
            "dataplane: workers must be at least 1",
        ));
    }
    let snat_port_count = u32::from(dp.snat_ports.hi) - u32::from(dp.snat_ports.lo) + 1;
    if snat_port_count < u32::from(dp.workers) {
        problems.push(
            Problem::new(
                "dataplane.snat_ports",
                format!(
                "dataplane: snat_ports {} has {} ports, fewer than the {} workers that split it",
                dp.snat_ports, snat_port_count, dp.workers
            ),
            )
            .hint("every worker needs its own slice of source ports: widen the range"),
        );
    }

    let run = run_settings(dp, &mut problems);
    let neighbors = neighbor_macs(cfg, &mut problems);
    let conntrack = conntrack_config(&cfg.conntrack, &mut problems);

    let mut specs = Vec::with_capacity(cfg.services.len());
    // Where each spec's port range is in the config (service, port range; `None`: the VIP of an
    // every-port service), for overlap problems.
    let mut spec_places: Vec<(usize, Option<usize>)> = Vec::with_capacity(cfg.services.len());
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(cfg.services.len());
    for (i, svc) in cfg.services.iter().enumerate() {
        if let Some(first) = names.insert(svc.name.as_str(), i) {
            problems.push(
                Problem::new(
                    format!("services[{i}].name"),
                    format!(
                        "service {}: name already used by service #{}",
                        svc.name,
                        first + 1
                    ),
                )
                .hint("service names key metrics and the admin API: make each one unique"),
            );
        }
        if let Some(mut svc_specs) = compile_service(cfg, i, svc, &neighbors, ctx, &mut problems) {
            if svc.ports.is_empty() {
                spec_places.push((i, None));
            } else {
                spec_places.extend((0..svc_specs.len()).map(|k| (i, Some(k))));
            }
            specs.append(&mut svc_specs);
        }
    }
    check_overlaps(&specs, &spec_places, &mut problems);

    if !problems.is_empty() {
        return Err(CompileError { problems });
    }

    let local = Local {
        mac: dp.mac.0,
        addrs: dp.addresses.iter().map(|a| Addr::from(*a)).collect(),
        mtu: dp.mtu,
        snat_ports: (dp.snat_ports.lo, dp.snat_ports.hi),
    };
    let table =
        RoutingTable::build(generation, local, specs, ctx.cache).map_err(|e| CompileError {
            problems: vec![Problem::new("", e.to_string())],
        })?;
    let next_hops = (!dp.on_link.is_empty() || !dp.gateway.is_empty()).then(|| next_hops(cfg));
    Ok(Compiled {
        table,
        conntrack,
        workers: dp.workers,
        run,
        next_hops,
    })
}

/// Port, interface and cores; every worker gets a core (0, 1, ... when none are listed).
fn run_settings(dp: &config::Dataplane, problems: &mut Vec<Problem>) -> RunSettings {
    let name = &dp.interface;
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name == "."
        || name == ".."
        || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
    {
        problems.push(Problem::new(
            "dataplane.interface",
            format!(
            "dataplane: interface {name:?} is not a valid interface name (1-{IFNAME_MAX} bytes, no '/', ':' or spaces)"
        ),
        ));
    }
    let cores = match &dp.cores {
        None => (0..usize::from(dp.workers)).collect(),
        Some(c) => {
            if c.len() != usize::from(dp.workers) {
                problems.push(
                    Problem::new(
                        "dataplane.cores",
                        format!(
                            "dataplane: cores lists {} cores for {} workers (one per worker)",
                            c.len(),
                            dp.workers
                        ),
                    )
                    .hint("list one core per worker, or leave cores out for 0, 1, ..."),
                );
            }
            c.clone()
        }
    };
    RunSettings {
        port: dp.port,
        interface: name.clone(),
        cores,
        idle: dp.idle,
        xdp_mode: dp.xdp_mode,
    }
}

/// Static neighbors by address; an address listed twice with different MACs is a problem.
fn neighbor_macs(cfg: &Config, problems: &mut Vec<Problem>) -> HashMap<IpAddr, MacAddr> {
    let mut map = HashMap::new();
    for (i, n) in cfg.neighbors.iter().enumerate() {
        if let Some(prev) = map.insert(n.ip, n.mac) {
            if prev != n.mac {
                problems.push(
                    Problem::new(
                        format!("neighbors[{i}].mac"),
                        format!(
                            "neighbor {}: listed with two MACs, {} and {}",
                            n.ip, prev, n.mac
                        ),
                    )
                    .hint("keep one [[neighbors]] entry per address"),
                );
            }
        }
    }
    map
}

fn conntrack_config(ct: &config::Conntrack, problems: &mut Vec<Problem>) -> conntrack::Config {
    // A nat flow takes two keys, so a table of fewer than two keys could never hold one.
    if ct.capacity < 2 {
        problems.push(Problem::new(
            "conntrack.capacity",
            format!(
                "conntrack: capacity {} is too small (at least 2)",
                ct.capacity
            ),
        ));
    }
    let embryonic_budget = ct.embryonic_budget();
    if embryonic_budget > ct.capacity {
        problems.push(
            Problem::new(
                "conntrack.embryonic_budget",
                format!(
                    "conntrack: embryonic_budget {} is above capacity {}",
                    embryonic_budget, ct.capacity
                ),
            )
            .hint("leave it out for a quarter of the capacity"),
        );
    }
    let t = &ct.timeouts;
    let mut ms = |name: &str, d: std::time::Duration| -> u64 {
        if d.is_zero() {
            problems.push(Problem::new(
                format!("conntrack.timeouts.{name}"),
                format!("conntrack.timeouts: {name} must be above 0"),
            ));
        }
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    };
    let timeouts = conntrack::Timeouts {
        tcp_syn: ms("tcp_syn", t.tcp_syn),
        tcp_established: ms("tcp_established", t.tcp_established),
        tcp_closing: ms("tcp_closing", t.tcp_closing),
        udp: ms("udp", t.udp),
    };
    conntrack::Config {
        capacity: ct.capacity,
        embryonic_budget,
        timeouts,
    }
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn backend_name(b: &config::Backend) -> String {
    match (b.addr, b.port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

/// The first address of `want`'s family in `list`.
fn first_of_family(list: &[IpAddr], v4: bool) -> Option<IpAddr> {
    list.iter().copied().find(|a| a.is_ipv4() == v4)
}

/// One spec per port range of the service (the table serves one range per spec); `None` when the
/// service has problems.
fn compile_service(
    cfg: &Config,
    svc_idx: usize,
    svc: &config::Service,
    neighbors: &HashMap<IpAddr, MacAddr>,
    ctx: &mut Context<'_>,
    problems: &mut Vec<Problem>,
) -> Option<Vec<ServiceSpec>> {
    let before = problems.len();
    let vip_v4 = svc.vip.is_ipv4();
    let mut pools = Vec::with_capacity(svc.pools.len());
    let mut backends = Vec::new();
    // Backends are identified by address and port in the table (and in flows that outlive a reload).
    // The value is where the first one is (pool, backend), named only if a second one turns up.
    let mut seen: HashMap<(IpAddr, u16), (usize, usize), table::FastHash> =
        HashMap::with_capacity_and_hasher(
            svc.pools.iter().map(|p| p.backends.len()).sum(),
            table::FastHash::default(),
        );
    let mut slots = ctx.slots.backends_of(&svc.name);
    // One key, its address and port changed per backend: no copy of the service name per backend.
    let mut key = BackendKey {
        service: svc.name.clone(),
        addr: svc.vip,
        port: 0,
    };
    let mut pool_names: HashMap<&str, ()> = HashMap::new();

    if svc.pools.len() > usize::from(u16::MAX) {
        problems.push(Problem::new(
            format!("services[{svc_idx}].pools"),
            format!(
                "service {}: {} pools, at most {}",
                svc.name,
                svc.pools.len(),
                u16::MAX
            ),
        ));
        return None;
    }

    for (pool_idx, pool) in svc.pools.iter().enumerate() {
        // Written only into problems, like the backend's name and path below.
        let at =
            Lazy(|f: &mut fmt::Formatter<'_>| write!(f, "service {} pool {}", svc.name, pool.name));
        let pool_path =
            Lazy(|f: &mut fmt::Formatter<'_>| write!(f, "services[{svc_idx}].pools[{pool_idx}]"));
        if pool_names.insert(pool.name.as_str(), ()).is_some() {
            problems.push(Problem::new(
                format!("{pool_path}.name"),
                format!("{at}: pool name used twice in the service"),
            ));
        }
        let mode = match pool.mode {
            config::Mode::FullNat => table::Mode::FullNat,
            config::Mode::Nat => table::Mode::Nat,
            config::Mode::DsrIpip => table::Mode::DsrIpip,
            config::Mode::DsrGue => table::Mode::DsrGue,
            config::Mode::Dr => table::Mode::Dr,
        };
        let dsr = matches!(mode, table::Mode::DsrIpip | table::Mode::DsrGue);
        if mode != table::Mode::FullNat && !pool.snat.is_empty() {
            problems.push(
                Problem::new(
                    format!("{pool_path}.snat"),
                    format!(
                        "{at}: snat is only used by fullnat pools, this one is {}",
                        mode.name()
                    ),
                )
                .hint("remove snat, or set mode = \"fullnat\""),
            );
        }
        if !dsr && !pool.encap_source.is_empty() {
            problems.push(
                Problem::new(
                    format!("{pool_path}.encap_source"),
                    format!(
                    "{at}: encap_source is only used by dsr-ipip and dsr-gue pools, this one is {}",
                    mode.name()
                ),
                )
                .hint("remove encap_source"),
            );
        }
        if mode == table::Mode::DsrGue && pool.gue_port == 0 {
            problems.push(
                Problem::new(
                    format!("{pool_path}.gue_port"),
                    format!("{at}: gue_port 0 is not a port"),
                )
                .hint("leave it out for 6080, the port Linux fou listens on by convention"),
            );
        }
        // A fullnat pool without its own snat list uses the dataplane's.
        let snat: &[IpAddr] = if mode == table::Mode::FullNat && pool.snat.is_empty() {
            &cfg.dataplane.snat
        } else {
            &pool.snat
        };

        let encap_src = |v4: bool| {
            dsr.then(|| {
                first_of_family(&pool.encap_source, v4)
                    .or_else(|| first_of_family(&cfg.dataplane.addresses, v4))
            })
            .flatten()
        };
        let encap_src_v4 = encap_src(true);
        let encap_src_v6 = encap_src(false);
        // Report a missing SNAT or encap source once per pool and family, naming the first backend.
        let mut missing_reported = [false, false];

        for (b_idx, b) in pool.backends.iter().enumerate() {
            // Where the messages point and whom they name, written only when there is a problem.
            let at_b = || format!("{at} backend {}", backend_name(b));
            let b_path = || format!("{pool_path}.backends[{b_idx}]");
            let b_v4 = b.addr.is_ipv4();

            if b.port == Some(0) {
                problems.push(Problem::new(
                    format!("{}.port", b_path()),
                    format!(
                        "{}: port 0 is not a port (leave port out to keep the client's port)",
                        at_b()
                    ),
                ));
            }
            let dp = &cfg.dataplane;
            // Resolved at run time (ARP/ND through the neighbor cache): on the link, or behind a
            // gateway of its family.
            let dynamic = dp.on_link.iter().any(|p| p.contains(b.addr))
                || dp.gateway.iter().any(|g| g.is_ipv4() == b_v4);
            let mac = match neighbors.get(&b.addr).or(dp.gateway_mac.as_ref()) {
                Some(m) => m.0,
                None if dynamic => [0; 6],
                None => {
                    problems.push(
                        Problem::new(
                            format!("{}.addr", b_path()),
                            format!(
                        "{}: no MAC: {} is not in [[neighbors]] and dataplane.gateway_mac is not set",
                        at_b(),
                        b.addr
                    ),
                        )
                        .hint(format!(
                            "add a [[neighbors]] entry with ip = \"{}\", list its prefix in [dataplane] on_link, or set [dataplane] gateway or gateway_mac",
                            b.addr
                        )),
                    );
                    [0; 6]
                }
            };
            match mode {
                table::Mode::FullNat | table::Mode::Nat | table::Mode::Dr if b_v4 != vip_v4 => {
                    problems.push(
                        Problem::new(
                            format!("{}.addr", b_path()),
                            format!(
                        "{}: {} backend behind {} VIP {}: {} cannot translate between address families",
                        at_b(),
                        family(b.addr),
                        family(svc.vip),
                        svc.vip,
                        mode.name()
                    ),
                        )
                        .hint(format!(
                            "use a backend address of the VIP's family, or a dsr pool (dsr-ipip, dsr-gue) for {} backends",
                            family(b.addr)
                        )),
                    );
                }
                table::Mode::DsrIpip | table::Mode::DsrGue if b_v4 && !vip_v4 => {
                    problems.push(
                        Problem::new(
                            format!("{}.addr", b_path()),
                            format!(
                        "{}: IPv4 backend behind IPv6 VIP {}: an IPv6 packet cannot be carried in IPv4 by {}",
                        at_b(),
                        svc.vip,
                        mode.name()
                    ),
                        )
                        .hint("give the backend an IPv6 address"),
                    );
                }
                _ => {}
            }
            if mode == table::Mode::FullNat
                && first_of_family(snat, b_v4).is_none()
                && !missing_reported[usize::from(b_v4)]
            {
                missing_reported[usize::from(b_v4)] = true;
                problems.push(
                    Problem::new(
                        format!("{pool_path}.snat"),
                        format!(
                            "{}: fullnat needs an {} address in the pool's snat list (or in [dataplane] snat)",
                            at_b(),
                            family(b.addr)
                        ),
                    )
                    .hint(format!(
                        "add an {} source address the balancer may use to the pool's snat, or to [dataplane] snat for every fullnat pool",
                        family(b.addr)
                    )),
                );
            }
            if dsr
                && (if b_v4 { encap_src_v4 } else { encap_src_v6 }).is_none()
                && !missing_reported[usize::from(b_v4)]
            {
                missing_reported[usize::from(b_v4)] = true;
                problems.push(Problem::new(
                    format!("{pool_path}.encap_source"),
                    format!(
                    "{}: no {fam} source for the outer header: set the pool's encap_source or add an {fam} dataplane address",
                    at_b(),
                    fam = family(b.addr)
                ),
                ));
            }
            // dr and dsr forward the client's packet unchanged: a backend port other than the one
            // the client used would be silently ignored, so it is refused instead.
            if let (Some(p), table::Mode::Dr | table::Mode::DsrIpip | table::Mode::DsrGue) =
                (b.port, mode)
            {
                if p != 0 && !(svc.ports.len() == 1 && svc.ports[0].is_single(p)) {
                    problems.push(Problem::new(
                        format!("{}.port", b_path()),
                        format!(
                        "{}: {} forwards the packet unchanged and cannot change the port to {p}: leave port out",
                        at_b(),
                        mode.name()
                    ),
                    ));
                }
            }
            let weight = match pool.weight.checked_mul(b.weight) {
                Some(w) => w,
                None => {
                    problems.push(
                        Problem::new(
                            format!("{}.weight", b_path()),
                            format!(
                                "{}: pool weight {} times backend weight {} overflows",
                                at_b(),
                                pool.weight,
                                b.weight
                            ),
                        )
                        .hint("weights are relative: 1 and 3 split traffic like 100 and 300"),
                    );
                    0
                }
            };
            let port = b.port.unwrap_or(0);
            if let Some((p, k)) = seen.insert((b.addr, port), (pool_idx, b_idx)) {
                let other = &svc.pools[p];
                problems.push(
                    Problem::new(
                        format!("{}.addr", b_path()),
                        format!(
                            "{}: the same address and port as service {} pool {} backend {}",
                            at_b(),
                            svc.name,
                            other.name,
                            backend_name(&other.backends[k])
                        ),
                    )
                    .hint("a backend may appear once per service; raise its weight instead"),
                );
            }
            key.addr = b.addr;
            key.port = port;
            // Health and operators may take a backend out (its flows move) or drain it.
            if let Some(weight) = (ctx.adjust)(&key, weight) {
                backends.push(table::Backend {
                    addr: Addr::from(b.addr),
                    port,
                    weight,
                    mac,
                    pool: pool_idx as u16,
                    stat: slots.get(b.addr, port),
                });
            }
        }

        pools.push(table::Pool {
            name: pool.name.clone(),
            mode,
            snat: snat.iter().map(|a| Addr::from(*a)).collect(),
            encap_src_v4: encap_src_v4.map(Addr::from),
            encap_src_v6: encap_src_v6.map(Addr::from),
            gue_port: pool.gue_port,
        });
    }

    if problems.len() != before {
        return None;
    }
    let ranges: Vec<(u16, u16)> = if svc.ports.is_empty() {
        vec![(0, 0)]
    } else {
        svc.ports.iter().map(|r| (r.lo, r.hi)).collect()
    };
    let affinity = match svc.affinity {
        config::Affinity::None => table::Affinity::None,
        config::Affinity::ClientIp => table::Affinity::ClientIp,
    };
    let mut specs = Vec::with_capacity(ranges.len());
    let last = ranges.len() - 1;
    for (r, (port_lo, port_hi)) in ranges.into_iter().enumerate() {
        // The last range takes the pools and backends, the others copy them.
        let (pools, backends) = if r == last {
            (std::mem::take(&mut pools), std::mem::take(&mut backends))
        } else {
            (pools.clone(), backends.clone())
        };
        specs.push(ServiceSpec {
            stat: Some(ctx.slots.service(&svc.name, port_lo, port_hi)),
            name: svc.name.clone(),
            vip: Addr::from(svc.vip),
            proto: svc.protocol.number(),
            port_lo,
            port_hi,
            affinity,
            table_size: svc.table_size,
            pools,
            backends,
        });
    }
    Some(specs)
}

/// Reports every pair of specs that claim a common (VIP, protocol, port), in spec order; the table
/// would only report the first. `places` says where each spec is (see `compile_with`).
fn check_overlaps(
    specs: &[ServiceSpec],
    places: &[(usize, Option<usize>)],
    problems: &mut Vec<Problem>,
) {
    // Only specs of one VIP and protocol can clash: compare within those groups rather than every
    // pair of a thousand services.
    let mut groups: HashMap<(Addr, u8), Vec<usize>, table::FastHash> =
        HashMap::with_capacity_and_hasher(specs.len(), Default::default());
    for (i, s) in specs.iter().enumerate() {
        groups.entry((s.vip, s.proto)).or_default().push(i);
    }
    let mut pairs = Vec::new();
    for group in groups.values().filter(|g| g.len() > 1) {
        for (n, &i) in group.iter().enumerate() {
            pairs.extend(group[n + 1..].iter().map(|&j| (i, j)));
        }
    }
    pairs.sort_unstable();
    for (i, j) in pairs {
        let (a, b) = (&specs[i], &specs[j]);
        // (0, 0) is "every port", which the table resolves after exact ports: it overlaps nothing
        // but another every-port service.
        let a_all = (a.port_lo, a.port_hi) == (0, 0);
        let b_all = (b.port_lo, b.port_hi) == (0, 0);
        let clash = if a_all || b_all {
            a_all && b_all
        } else {
            a.port_lo <= b.port_hi && b.port_lo <= a.port_hi
        };
        if clash {
            let ports = if a_all {
                "every port".to_string()
            } else {
                let lo = a.port_lo.max(b.port_lo);
                let hi = a.port_hi.min(b.port_hi);
                if lo == hi {
                    format!("port {lo}")
                } else {
                    format!("ports {lo}-{hi}")
                }
            };
            let what = if a.name == b.name {
                format!("service {} lists {ports} twice", a.name)
            } else {
                format!("services {} and {} both claim", a.name, b.name)
            };
            let proto = if a.proto == 6 { "tcp" } else { "udp" };
            let message = if a.name == b.name {
                format!("{what} for {} {proto}", a.vip)
            } else {
                format!("{what} {} {proto} {ports}", a.vip)
            };
            // The later claim is the one to point at: the first one was fine until then.
            let path = match places.get(j) {
                Some((s, None)) => format!("services[{s}].vip"),
                Some((s, Some(k))) => format!("services[{s}].ports[{k}]"),
                None => String::new(),
            };
            problems.push(
                Problem::new(path, message)
                    .hint("a VIP, protocol and port belong to one service: split the port ranges"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
"#;

    fn cfg(extra: &str) -> Config {
        Config::from_toml_str(&format!("{BASE}{extra}"), Path::new("t.toml")).unwrap()
    }

    fn problems(extra: &str) -> Vec<String> {
        messages(compile(&cfg(extra), 1).unwrap_err())
    }

    fn messages(e: CompileError) -> Vec<String> {
        e.problems.iter().map(|p| p.message().to_string()).collect()
    }

    fn one_problem(extra: &str, needles: &[&str]) {
        let p = problems(extra);
        assert_eq!(p.len(), 1, "{p:#?}");
        for n in needles {
            assert!(p[0].contains(n), "{:?} lacks {n:?}", p[0]);
        }
    }

    #[test]
    fn run_settings_default_to_one_core_per_worker_and_are_checked() {
        let c = compile(&cfg("workers = 3\n"), 1).unwrap();
        assert_eq!(c.run.cores, vec![0, 1, 2]);
        assert_eq!(c.run.interface, "lb0");
        assert_eq!(c.run.port, config::PortKind::Tap);
        let c = compile(
            &cfg("workers = 2\ncores = [1, 3]\nport = \"af_packet\"\n"),
            1,
        )
        .unwrap();
        assert_eq!(c.run.cores, vec![1, 3]);
        assert_eq!(c.run.port, config::PortKind::AfPacket);
        one_problem("workers = 2\ncores = [1]\n", &["cores", "2 workers"]);
        one_problem(
            "interface = \"a-very-long-interface\"\n",
            &["a-very-long-interface", "not a valid interface name"],
        );
        one_problem("interface = \"\"\n", &["interface"]);
    }

    #[test]
    fn every_port_service_and_weights() {
        let c = compile(
            &cfg(r#"
[[services]]
name = "all"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "nat"
weight = 3
backends = [{ addr = "198.18.1.10", weight = 2 }, { addr = "198.18.1.11", weight = 0 }]
"#),
            7,
        )
        .unwrap();
        assert_eq!(c.table.generation, 7);
        let s = &c.table.services[0];
        assert_eq!((s.port_lo, s.port_hi, s.proto), (0, 0, 6));
        let weights: Vec<u32> = s.backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, vec![6, 0]);
        assert_eq!(s.backends[0].mac, [2, 0, 0, 0, 0, 0xfe]);
        assert_eq!(s.backends[0].port, 0);
        assert!(c
            .table
            .service_for(Addr::v4([198, 18, 0, 100]), 6, 12345)
            .is_some());
    }

    #[test]
    fn port_list_becomes_one_spec_per_range() {
        let c = compile(
            &cfg(r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "udp"
ports = ["53", "8000-8002"]
[[services.pools]]
name = "p"
mode = "nat"
backends = [{ addr = "198.18.1.10" }]
"#),
            1,
        )
        .unwrap();
        let vip = Addr::v4([198, 18, 0, 100]);
        for port in [53, 8000, 8001, 8002] {
            assert!(c.table.service_for(vip, 17, port).is_some(), "{port}");
        }
        for port in [54, 7999, 8003] {
            assert!(c.table.service_for(vip, 17, port).is_none(), "{port}");
        }
        assert!(c.table.service_for(vip, 6, 53).is_none());
    }

    #[test]
    fn backend_without_neighbor_or_gateway_is_named() {
        let text = r#"
[dataplane]
mac = "02:00:00:00:00:01"
[[neighbors]]
ip = "198.18.1.10"
mac = "02:00:00:00:01:0a"
[[services]]
name = "web"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "nat"
backends = [{ addr = "198.18.1.10", port = 80 }, { addr = "198.18.1.99", port = 80 }]
"#;
        let c = Config::from_toml_str(text, Path::new("t.toml")).unwrap();
        let p = messages(compile(&c, 1).unwrap_err());
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].starts_with("service web pool pods backend 198.18.1.99:80: no MAC"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn neighbor_mac_wins_over_gateway() {
        let c = compile(
            &cfg(r#"
[[neighbors]]
ip = "198.18.1.10"
mac = "02:00:00:00:01:0a"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "dr"
backends = [{ addr = "198.18.1.10" }, { addr = "198.18.1.11" }]
"#),
            1,
        )
        .unwrap();
        let macs: Vec<[u8; 6]> = c.table.services[0].backends.iter().map(|b| b.mac).collect();
        assert_eq!(macs, vec![[2, 0, 0, 0, 1, 0x0a], [2, 0, 0, 0, 0, 0xfe]]);
    }

    #[test]
    fn fullnat_needs_snat_of_each_backend_family() {
        one_problem(
            r#"
[[services]]
name = "web"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "fullnat"
backends = [{ addr = "198.18.1.10", port = 80 }, { addr = "198.18.1.11", port = 80 }]
"#,
            &[
                "service web pool pods backend 198.18.1.10:80",
                "IPv4",
                "snat",
            ],
        );
        // An IPv6 SNAT address does not serve IPv4 backends.
        one_problem(
            r#"
[[services]]
name = "web"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "fullnat"
snat = ["2001:db8::2"]
backends = [{ addr = "198.18.1.10", port = 80 }]
"#,
            &["backend 198.18.1.10:80", "IPv4 address in the pool's snat"],
        );
    }

    #[test]
    fn nat_modes_refuse_a_family_change() {
        for mode in ["nat", "fullnat", "dr"] {
            // fullnat gets SNAT addresses of both families so the family rule is the only problem.
            let snat = if mode == "fullnat" {
                r#"snat = ["198.18.0.2", "2001:db8::2"]"#
            } else {
                ""
            };
            one_problem(
                &format!(
                    r#"
[[services]]
name = "web"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "{mode}"
{snat}
backends = [{{ addr = "2001:db8::10" }}]
"#
                ),
                &[
                    "service web pool pods backend 2001:db8::10",
                    "IPv6 backend behind IPv4 VIP",
                    mode,
                ],
            );
        }
    }

    #[test]
    fn dsr_carries_v4_in_v6_but_not_v6_in_v4() {
        // IPv4 VIP, IPv6 backend: fine once there is an IPv6 outer source.
        let c = compile(
            &cfg(r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "vms"
mode = "dsr-ipip"
encap_source = ["2001:db8::1"]
backends = [{ addr = "2001:db8::10" }, { addr = "198.18.2.10" }]
"#),
            1,
        )
        .unwrap();
        let pool = &c.table.services[0].pools[0];
        assert_eq!(
            pool.encap_src_v6,
            Some(Addr::from("2001:db8::1".parse::<IpAddr>().unwrap()))
        );
        // No IPv4 encap_source: the first dataplane IPv4 address.
        assert_eq!(pool.encap_src_v4, Some(Addr::v4([198, 18, 0, 1])));

        one_problem(
            r#"
[[services]]
name = "s6"
vip = "2001:db8::100"
protocol = "tcp"
[[services.pools]]
name = "vms"
mode = "dsr-gue"
encap_source = ["198.18.0.1"]
backends = [{ addr = "198.18.2.10" }]
"#,
            &[
                "service s6 pool vms backend 198.18.2.10",
                "IPv4 backend behind IPv6 VIP",
            ],
        );
    }

    #[test]
    fn dsr_without_an_outer_source_of_the_backend_family() {
        one_problem(
            r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "vms"
mode = "dsr-ipip"
backends = [{ addr = "2001:db8::10" }, { addr = "2001:db8::11" }]
"#,
            &[
                "service s pool vms backend 2001:db8::10",
                "no IPv6 source",
                "encap_source",
            ],
        );
    }

    #[test]
    fn dr_and_dsr_refuse_a_port_change() {
        one_problem(
            r#"
[[services]]
name = "s"
vip = "198.18.0.100"
ports = ["80"]
protocol = "tcp"
[[services.pools]]
name = "l2"
mode = "dr"
backends = [{ addr = "198.18.1.10", port = 8080 }]
"#,
            &[
                "service s pool l2 backend 198.18.1.10:8080",
                "cannot change the port",
            ],
        );
        // The same port as the only one served changes nothing.
        assert!(compile(
            &cfg(r#"
[[services]]
name = "s"
vip = "198.18.0.100"
ports = [80]
protocol = "tcp"
[[services.pools]]
name = "l2"
mode = "dr"
backends = [{ addr = "198.18.1.10", port = 80 }]
"#),
            1
        )
        .is_ok());
    }

    #[test]
    fn every_problem_is_listed_not_just_the_first() {
        let text = r#"
[dataplane]
mac = "02:00:00:00:00:01"
snat_ports = "1000-1001"
workers = 4
[[services]]
name = "a"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "fullnat"
backends = [{ addr = "198.18.1.10" }]
[[services]]
name = "b"
vip = "2001:db8::100"
protocol = "udp"
[[services.pools]]
name = "q"
mode = "nat"
backends = [{ addr = "198.18.1.11" }]
"#;
        let c = Config::from_toml_str(text, Path::new("t.toml")).unwrap();
        let p = messages(compile(&c, 1).unwrap_err());
        let expect = [
            "dataplane: snat_ports 1000-1001 has 2 ports, fewer than the 4 workers",
            "service a pool p backend 198.18.1.10: no MAC",
            "service a pool p backend 198.18.1.10: fullnat needs an IPv4",
            "service b pool q backend 198.18.1.11: no MAC",
            "service b pool q backend 198.18.1.11: IPv4 backend behind IPv6 VIP",
        ];
        assert_eq!(p.len(), expect.len(), "{p:#?}");
        for (got, want) in p.iter().zip(expect) {
            assert!(
                got.starts_with(want),
                "{got:?} does not start with {want:?}"
            );
        }
    }

    /// A tcp service `name` on `vip` and `ports` (a TOML list) with one nat backend.
    fn nat_service(name: &str, vip: &str, ports: &str) -> String {
        format!(
            r#"
[[services]]
name = "{name}"
vip = "{vip}"
protocol = "tcp"
ports = {ports}
[[services.pools]]
name = "p"
mode = "nat"
backends = [{{ addr = "198.18.1.10" }}]
"#
        )
    }

    #[test]
    fn overlapping_services_are_all_reported() {
        let svc = |name: &str, ports: &str| nat_service(name, "198.18.0.100", ports);
        let p = problems(&format!(
            "{}{}{}",
            svc("a", r#"["80-90"]"#),
            svc("b", r#"["85"]"#),
            svc("c", r#"["90-100", "95"]"#)
        ));
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p[0].contains("services a and b both claim 198.18.0.100 tcp port 85"),
            "{}",
            p[0]
        );
        assert!(
            p[1].contains("services a and c both claim 198.18.0.100 tcp port 90"),
            "{}",
            p[1]
        );
        assert!(p[2].contains("service c lists port 95 twice"), "{}", p[2]);
    }

    #[test]
    fn duplicate_backends_and_names() {
        let p = problems(
            r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "nat"
backends = [{ addr = "198.18.1.10", port = 80 }]
[[services.pools]]
name = "p"
mode = "nat"
backends = [{ addr = "198.18.1.10", port = 80 }]
[[services]]
name = "s"
vip = "198.18.0.101"
protocol = "tcp"
"#,
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p[0].contains("service s pool p: pool name used twice"),
            "{}",
            p[0]
        );
        assert!(
            p[1].contains("the same address and port as service s pool p backend 198.18.1.10:80"),
            "{}",
            p[1]
        );
        assert!(p[2].contains("service s: name already used"), "{}", p[2]);
    }

    #[test]
    fn snat_and_encap_source_on_the_wrong_mode() {
        one_problem(
            r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "nat"
snat = ["198.18.0.2"]
backends = [{ addr = "198.18.1.10" }]
"#,
            &["service s pool p: snat is only used by fullnat"],
        );
        one_problem(
            r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "fullnat"
snat = ["198.18.0.2"]
encap_source = ["198.18.0.1"]
backends = [{ addr = "198.18.1.10" }]
"#,
            &["service s pool p: encap_source is only used by dsr"],
        );
    }

    #[test]
    fn weight_overflow_and_port_zero() {
        let p = problems(
            r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "nat"
weight = 4294967295
backends = [{ addr = "198.18.1.10", port = 0, weight = 2 }]
"#,
        );
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].contains("backend 198.18.1.10:0: port 0"), "{}", p[0]);
        assert!(
            p[1].contains("backend 198.18.1.10:0: pool weight 4294967295 times"),
            "{}",
            p[1]
        );
    }

    #[test]
    fn dataplane_and_conntrack_limits() {
        let text = r#"
[dataplane]
mac = "02:00:00:00:00:01"
mtu = 100
workers = 0
[conntrack]
capacity = 100
embryonic_budget = 101
[conntrack.timeouts]
udp = "0s"
"#;
        let c = Config::from_toml_str(text, Path::new("t.toml")).unwrap();
        let p = messages(compile(&c, 1).unwrap_err());
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].contains("mtu 100"));
        assert!(p[1].contains("workers"));
        assert!(p[2].contains("embryonic_budget 101 is above capacity 100"));
        assert!(p[3].contains("udp must be above 0"));
    }

    #[test]
    fn conntrack_settings_reach_the_workers() {
        let c = compile(
            &cfg("[conntrack]\ncapacity = 1024\n[conntrack.timeouts]\ntcp_syn = \"750ms\"\n"),
            1,
        )
        .unwrap();
        assert_eq!(c.conntrack.capacity, 1024);
        assert_eq!(c.conntrack.embryonic_budget, 256);
        assert_eq!(c.conntrack.timeouts.tcp_syn, 750);
        assert_eq!(c.conntrack.timeouts.udp, 30_000);
        assert_eq!(c.workers, 1);
        assert_eq!(c.table.local.snat_ports, (1024, 65535));
    }

    #[test]
    fn overlaps_of_different_vips_are_reported_in_file_order_at_the_later_claim() {
        let svc = nat_service;
        let text = format!(
            "{BASE}{}{}{}{}{}",
            svc("a", "198.18.0.100", r#"["80"]"#),
            svc("b", "198.18.0.101", r#"["80"]"#),
            svc("c", "198.18.0.101", r#"["70", "80"]"#),
            svc("d", "198.18.0.100", r#"["80"]"#),
            svc("e", "198.18.0.102", r#"["80"]"#),
        );
        let c = Config::from_toml_str(&text, Path::new("t.toml")).unwrap();
        let p = compile(&c, 1).unwrap_err().problems;
        let got: Vec<(&str, &str)> = p
            .iter()
            .map(|p| (p.path.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "services[3].ports[0]",
                    "services a and d both claim 198.18.0.100 tcp port 80"
                ),
                (
                    "services[2].ports[1]",
                    "services b and c both claim 198.18.0.101 tcp port 80"
                ),
            ]
        );
    }

    /// (service, port, backend address) and its (service slot, backend slot).
    type Slotted = ((String, u16, String), (u32, u32));

    #[test]
    fn counter_slots_stay_with_their_service_and_backend_across_compiles() {
        let svc = |name: &str, vip: &str, backends: &[&str]| {
            let list: Vec<String> = backends
                .iter()
                .map(|a| format!("{{ addr = \"{a}\", port = 80 }}"))
                .collect();
            format!(
                "\n[[services]]\nname = \"{name}\"\nvip = \"{vip}\"\nprotocol = \"tcp\"\n\
                 ports = [\"80\", \"443\"]\n[[services.pools]]\nname = \"p\"\nmode = \"nat\"\n\
                 backends = [{}]\n",
                list.join(", ")
            )
        };
        let mut slots = StatSlots::default();
        let mut cache = MaglevCache::default();
        let mut build = |text: String| {
            let c = Config::from_toml_str(&format!("{BASE}{text}"), Path::new("t.toml")).unwrap();
            let mut ctx = Context {
                adjust: &|_, w| Some(w),
                slots: &mut slots,
                cache: &mut cache,
            };
            let t = compile_with(&c, 1, &mut ctx).unwrap().table;
            let mut out: Vec<Slotted> = Vec::new();
            for s in &t.services {
                for b in &s.backends {
                    out.push((
                        (s.name.clone(), s.port_lo, b.addr.to_string()),
                        (s.stat, b.stat),
                    ));
                }
            }
            out.sort();
            out
        };
        let first = build(format!(
            "{}{}",
            svc("a", "198.18.0.100", &["198.18.1.1", "198.18.1.2"]),
            svc("b", "198.18.0.101", &["198.18.1.1"])
        ));
        // Every service port range and every backend of a service has its own slot.
        let mut service_slots: Vec<u32> = first.iter().map(|(_, (s, _))| *s).collect();
        service_slots.dedup();
        assert_eq!(service_slots.len(), 4, "{first:?}");
        let backend = |v: &[Slotted], svc: &str, addr: &str| {
            v.iter()
                .find(|((s, _, a), _)| s == svc && a == addr)
                .map(|(_, (_, b))| *b)
        };
        let a1 = backend(&first, "a", "198.18.1.1").unwrap();
        let b1 = backend(&first, "b", "198.18.1.1").unwrap();
        assert_ne!(a1, b1, "the same address in two services counts apart");

        // Reordered services, a backend removed and one added: the others keep their slots, the
        // new one gets a slot never used before.
        let second = build(format!(
            "{}{}",
            svc("b", "198.18.0.101", &["198.18.1.1"]),
            svc("a", "198.18.0.100", &["198.18.1.3", "198.18.1.1"])
        ));
        assert_eq!(backend(&second, "a", "198.18.1.1"), Some(a1));
        assert_eq!(backend(&second, "b", "198.18.1.1"), Some(b1));
        let a3 = backend(&second, "a", "198.18.1.3").unwrap();
        assert!(first.iter().all(|(_, (_, b))| *b != a3), "{a3} reused");
        let services = |v: &[Slotted]| {
            let mut s: Vec<(String, u16, u32)> = v
                .iter()
                .map(|((n, p, _), (s, _))| (n.clone(), *p, *s))
                .collect();
            s.dedup();
            s
        };
        assert_eq!(services(&first), services(&second));
        assert_eq!(
            slots.backend_slot(&BackendKey {
                service: "a".into(),
                addr: "198.18.1.3".parse().unwrap(),
                port: 80,
            }),
            Some(a3)
        );
        assert_eq!(
            slots.service_slot("b", 443, 443),
            services(&first)
                .iter()
                .find(|(n, p, _)| n == "b" && *p == 443)
                .map(|(_, _, s)| *s)
        );
        assert_eq!(slots.service_slot("b", 8080, 8080), None);
    }
}

//! `[[services]]`, their pools and backends: names, table sizes and weights, what each forwarding
//! mode needs (address families, SNAT and outer sources, ports), duplicates and overlaps.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use super::reach::Reach;
use super::{
    check_unicast, family, first_of_family, table_size_hint, Lazy, MAX_TABLE_SIZE,
    SLOTS_PER_BACKEND,
};
use crate::config::schema::{Backend, Config, Mode, Pool, Service};
use crate::diag::Problem;

/// Most backends in one service: the table indexes them with a `u16`, one value kept for "empty".
const MAX_BACKENDS: usize = u16::MAX as usize - 1;

/// The rules of every service, then the claims services make together.
pub(super) fn check(cfg: &Config, out: &mut Vec<Problem>) {
    let mut reach = Reach::new(cfg);
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(cfg.services.len());
    for i in 0..cfg.services.len() {
        check_one(cfg, i, &mut reach, Some(&mut names), out);
    }
    check_overlaps(&cfg.services, out);
}

/// The rules of services `idxs` (entries of `cfg.services`) alone: for a change that replaced
/// only their backends, so the rules they share with the others (names, overlapping VIPs and
/// ports) still hold.
pub(super) fn check_some(cfg: &Config, idxs: &[usize], out: &mut Vec<Problem>) {
    let mut reach = Reach::new(cfg);
    for &i in idxs.iter().filter(|&&i| i < cfg.services.len()) {
        check_one(cfg, i, &mut reach, None, out);
    }
}

/// The rules of service `i`; with `names` (the names seen so far), a name used before too.
fn check_one<'a>(
    cfg: &'a Config,
    i: usize,
    reach: &mut Reach<'_>,
    names: Option<&mut HashMap<&'a str, usize>>,
    out: &mut Vec<Problem>,
) {
    let svc = &cfg.services[i];
    // Written only into problems: a reload validates thousands of services that have none.
    let at = Lazy(|f: &mut fmt::Formatter<'_>| write!(f, "service {}", svc.name));
    let path = Lazy(|f: &mut fmt::Formatter<'_>| write!(f, "services[{i}]"));
    check_service(svc, &at, &path, out);
    if let Some(first) = names.and_then(|n| n.insert(svc.name.as_str(), i)) {
        out.push(
            Problem::new(
                format!("{path}.name"),
                format!(
                    "service {}: name already used by service #{}",
                    svc.name,
                    first + 1
                ),
            )
            .hint("service names key metrics and the admin API: make each one unique"),
        );
    }
    if svc.pools.len() > usize::from(u16::MAX) {
        out.push(Problem::new(
            format!("{path}.pools"),
            format!("{at}: {} pools, at most {}", svc.pools.len(), u16::MAX),
        ));
        return;
    }
    check_pools(cfg, i, svc, reach, out);
    if let Some(hc) = &svc.health_check {
        hc.validate(svc, &format!("{path}.health_check"), out);
    }
    if let Some(p) = &svc.passive {
        p.validate(svc, &at, &format!("{path}.passive"), out);
    }
}

/// What to do about weights that do not fit their table.
pub const WEIGHTS_HINT: &str =
    "weights are relative (1 and 3 split like 100 and 300): lower them, or raise table_size";

/// The weights of a service's backends (pool weight times backend weight, or an operator's
/// override) add up to more than its table's slots: light backends would get no slot, and one
/// huge weight takes every slot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("weights add up to {total}, more than the {table_size} slots of the table: light backends would get no traffic")]
pub struct WeightsTooLarge {
    /// The sum of the weights.
    pub total: u64,
    /// The service's `table_size`.
    pub table_size: usize,
}

/// The one weight rule, for the file and the admin API alike: a service's weights add up to at
/// most its `table_size`.
pub fn weights_fit(total: u64, table_size: usize) -> Result<(), WeightsTooLarge> {
    if total > table_size as u64 {
        Err(WeightsTooLarge { total, table_size })
    } else {
        Ok(())
    }
}

/// The service's own keys: name, VIP, and a table that fits its backends and weights.
fn check_service(
    svc: &Service,
    at: &dyn fmt::Display,
    path: &dyn fmt::Display,
    out: &mut Vec<Problem>,
) {
    if svc.name.is_empty() || svc.name.chars().any(char::is_control) {
        out.push(
            Problem::new(
                format!("{path}.name"),
                format!(
                    "service {:?}: name is empty or has control characters",
                    svc.name
                ),
            )
            .hint("names appear in logs, metrics and the admin API: use e.g. \"web\""),
        );
    }
    check_unicast(out, svc.vip, || {
        (format!("{path}.vip"), format!("{at}: vip"))
    });

    let backends: usize = svc.pools.iter().map(|p| p.backends.len()).sum();
    // Checked before primality, whose trial division grows with the value.
    if svc.table_size > MAX_TABLE_SIZE {
        out.push(
            Problem::new(
                format!("{path}.table_size"),
                format!(
                    "{at}: table_size {} is above the largest table, {MAX_TABLE_SIZE} slots",
                    svc.table_size
                ),
            )
            .hint(table_size_hint(backends)),
        );
    } else if !dataplane::maglev::is_valid_table_size(svc.table_size) {
        out.push(
            Problem::new(
                format!("{path}.table_size"),
                format!("{at}: table_size {} is not a prime", svc.table_size),
            )
            .hint(table_size_hint(backends)),
        );
    } else if backends > MAX_BACKENDS {
        out.push(Problem::new(
            format!("{path}.pools"),
            format!("{at}: {backends} backends, at most {MAX_BACKENDS}"),
        ));
    } else if svc.table_size < backends.saturating_mul(SLOTS_PER_BACKEND) {
        out.push(
            Problem::new(
                format!("{path}.table_size"),
                format!(
                    "{at}: table_size {} is below {SLOTS_PER_BACKEND} slots for each of its {backends} backends",
                    svc.table_size
                ),
            )
            .hint(table_size_hint(backends)),
        );
    } else {
        // Weights that overflow are reported with their backend; leave them out of the sum.
        let total: u64 = svc
            .pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(move |b| p.weight.checked_mul(b.weight))
            })
            .map(|w| u64::from(w.unwrap_or(0)))
            .sum();
        if let Err(e) = weights_fit(total, svc.table_size) {
            out.push(
                Problem::new(format!("{path}.table_size"), format!("{at}: {e}")).hint(WEIGHTS_HINT),
            );
        }
    }
}

/// Every pool of service `svc` (number `svc_idx`) and its backends.
fn check_pools(
    cfg: &Config,
    svc_idx: usize,
    svc: &Service,
    reach: &mut Reach<'_>,
    out: &mut Vec<Problem>,
) {
    // Backends are identified by address and port in the table (and in flows that outlive a
    // reload). The value is where the first one is (pool, backend), named only if a second one
    // turns up.
    let mut seen: HashMap<(IpAddr, u16), (usize, usize), dataplane::table::FastHash> =
        HashMap::with_capacity_and_hasher(
            svc.pools.iter().map(|p| p.backends.len()).sum(),
            Default::default(),
        );
    let mut pool_names: HashMap<&str, ()> = HashMap::with_capacity(svc.pools.len());
    for (pool_idx, pool) in svc.pools.iter().enumerate() {
        // Written only into problems, like the backend's name and path below.
        let at =
            Lazy(|f: &mut fmt::Formatter<'_>| write!(f, "service {} pool {}", svc.name, pool.name));
        let pool_path =
            Lazy(|f: &mut fmt::Formatter<'_>| write!(f, "services[{svc_idx}].pools[{pool_idx}]"));
        if pool.name.is_empty() || pool.name.chars().any(char::is_control) {
            out.push(Problem::new(
                format!("{pool_path}.name"),
                format!(
                    "service {} pool {:?}: name is empty or has control characters",
                    svc.name, pool.name
                ),
            ));
        }
        if pool_names.insert(pool.name.as_str(), ()).is_some() {
            out.push(Problem::new(
                format!("{pool_path}.name"),
                format!("{at}: pool name used twice in the service"),
            ));
        }
        for (k, a) in pool.snat.iter().enumerate() {
            check_unicast(out, *a, || {
                (
                    format!("{pool_path}.snat[{k}]"),
                    format!("{at}: snat address"),
                )
            });
        }
        check_pool_mode(pool, &at, &pool_path, out);

        let sources = Sources::of(cfg, pool);
        // Report a missing SNAT or encap source once per pool and family, naming the first backend.
        let mut missing_reported = [false, false];
        for (b_idx, b) in pool.backends.iter().enumerate() {
            // Where the messages point and whom they name, written only when there is a problem.
            let at_b = || format!("{at} backend {}", backend_name(b));
            let b_path = || format!("{pool_path}.backends[{b_idx}]");
            check_unicast(out, b.addr, || {
                (format!("{}.addr", b_path()), format!("{at} backend"))
            });
            check_backend(svc, pool, b, &at_b, &b_path, reach, out);
            let v4 = usize::from(b.addr.is_ipv4());
            if !missing_reported[v4] {
                missing_reported[v4] = sources.check(pool, b.addr, &at_b, &pool_path, out);
            }
            let port = b.port.unwrap_or(0);
            if let Some((p, k)) = seen.insert((b.addr, port), (pool_idx, b_idx)) {
                let other = &svc.pools[p];
                out.push(
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
        }
    }
}

/// Keys of a pool that only some modes use.
fn check_pool_mode(
    pool: &Pool,
    at: &dyn fmt::Display,
    pool_path: &dyn fmt::Display,
    out: &mut Vec<Problem>,
) {
    let mode = pool.mode;
    if mode != Mode::FullNat && !pool.snat.is_empty() {
        out.push(
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
    if !mode.is_dsr() && !pool.encap_source.is_empty() {
        out.push(
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
    if mode == Mode::DsrGue && pool.gue_port == 0 {
        out.push(
            Problem::new(
                format!("{pool_path}.gue_port"),
                format!("{at}: gue_port 0 is not a port"),
            )
            .hint("leave it out for 6080, the port Linux fou listens on by convention"),
        );
    }
}

/// One backend: its port, how it is reached, its family against the VIP's, its weight.
fn check_backend(
    svc: &Service,
    pool: &Pool,
    b: &Backend,
    at_b: &dyn Fn() -> String,
    b_path: &dyn Fn() -> String,
    reach: &mut Reach<'_>,
    out: &mut Vec<Problem>,
) {
    let mode = pool.mode;
    let (b_v4, vip_v4) = (b.addr.is_ipv4(), svc.vip.is_ipv4());
    if b.port == Some(0) {
        out.push(Problem::new(
            format!("{}.port", b_path()),
            format!(
                "{}: port 0 is not a port (leave port out to keep the client's port)",
                at_b()
            ),
        ));
    }
    reach.check(b.addr, at_b, b_path, out);
    match mode {
        Mode::FullNat | Mode::Nat | Mode::Dr if b_v4 != vip_v4 => {
            out.push(
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
        Mode::DsrIpip | Mode::DsrGue if b_v4 && !vip_v4 => {
            out.push(
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
    // dr and dsr forward the client's packet unchanged: a backend port other than the one the
    // client used would be silently ignored, so it is refused instead.
    if let (Some(p), Mode::Dr | Mode::DsrIpip | Mode::DsrGue) = (b.port, mode) {
        if p != 0 && !(svc.ports.len() == 1 && svc.ports[0].is_single(p)) {
            out.push(Problem::new(
                format!("{}.port", b_path()),
                format!(
                    "{}: {} forwards the packet unchanged and cannot change the port to {p}: leave port out",
                    at_b(),
                    mode.name()
                ),
            ));
        }
    }
    if pool.weight.checked_mul(b.weight).is_none() {
        out.push(
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
    }
}

/// The source addresses a pool's packets leave with: SNAT for fullnat, the outer header's for dsr.
struct Sources {
    snat_v4: bool,
    snat_v6: bool,
    encap_v4: bool,
    encap_v6: bool,
}

impl Sources {
    /// What `pool` has of each family, with the dataplane's defaults (`[dataplane] snat` for a
    /// fullnat pool without its own list, our first address of each family for dsr).
    fn of(cfg: &Config, pool: &Pool) -> Sources {
        let snat: &[IpAddr] = if pool.snat.is_empty() {
            &cfg.dataplane.snat
        } else {
            &pool.snat
        };
        let encap = |v4: bool| {
            first_of_family(&pool.encap_source, v4)
                .or_else(|| first_of_family(&cfg.dataplane.all_addresses(), v4))
                .is_some()
        };
        Sources {
            snat_v4: first_of_family(snat, true).is_some(),
            snat_v6: first_of_family(snat, false).is_some(),
            encap_v4: encap(true),
            encap_v6: encap(false),
        }
    }

    /// Reports a backend at `addr` whose family the pool has no source for; true when it did.
    fn check(
        &self,
        pool: &Pool,
        addr: IpAddr,
        at_b: &dyn Fn() -> String,
        pool_path: &dyn fmt::Display,
        out: &mut Vec<Problem>,
    ) -> bool {
        let v4 = addr.is_ipv4();
        if pool.mode == Mode::FullNat && !(if v4 { self.snat_v4 } else { self.snat_v6 }) {
            out.push(
                Problem::new(
                    format!("{pool_path}.snat"),
                    format!(
                        "{}: fullnat needs an {} address in the pool's snat list (or in [dataplane] snat)",
                        at_b(),
                        family(addr)
                    ),
                )
                .hint(format!(
                    "add an {} source address the balancer may use to the pool's snat, or to [dataplane] snat for every fullnat pool",
                    family(addr)
                )),
            );
            return true;
        }
        if pool.mode.is_dsr() && !(if v4 { self.encap_v4 } else { self.encap_v6 }) {
            out.push(Problem::new(
                format!("{pool_path}.encap_source"),
                format!(
                    "{}: no {fam} source for the outer header: set the pool's encap_source or add an {fam} dataplane address",
                    at_b(),
                    fam = family(addr)
                ),
            ));
            return true;
        }
        false
    }
}

/// How problems name a backend: `198.18.1.10:8080`, `[2001:db8::10]:80`, or the address alone.
fn backend_name(b: &Backend) -> String {
    match (b.addr, b.port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

/// Overlapping claims reported at most: past them the config is a copy gone wrong, and listing every
/// pair of 100k copies would take hours.
pub(super) const MAX_OVERLAPS: usize = 10_000;

/// One (VIP, protocol, ports) claim: a port range of a service, or its VIP for every port.
struct Claim<'a> {
    svc: &'a Service,
    /// The service's index and the range's (`None`: every port), for the problem's path.
    place: (usize, Option<usize>),
    /// `(0, 0)` for every port, as the table writes it.
    ports: (u16, u16),
}

/// Reports every pair of claims on a common (VIP, protocol, port), in file order of the pairs, at
/// the later claim: the first one was fine until then.
fn check_overlaps(services: &[Service], out: &mut Vec<Problem>) {
    let mut claims = Vec::with_capacity(services.len());
    for (i, svc) in services.iter().enumerate() {
        if svc.ports.is_empty() {
            claims.push(Claim {
                svc,
                place: (i, None),
                ports: (0, 0),
            });
        }
        for (k, r) in svc.ports.iter().enumerate() {
            claims.push(Claim {
                svc,
                place: (i, Some(k)),
                ports: (r.lo, r.hi),
            });
        }
    }
    // Only claims of one VIP and protocol can clash: compare within those groups rather than every
    // pair of a thousand services.
    let mut groups: HashMap<(IpAddr, u8), Vec<usize>, dataplane::table::FastHash> =
        HashMap::with_capacity_and_hasher(claims.len(), Default::default());
    for (i, c) in claims.iter().enumerate() {
        groups
            .entry((c.svc.vip, c.svc.protocol.number()))
            .or_default()
            .push(i);
    }
    // The clashing pairs only, found by sorting each group by first port: a VIP shared by 20k
    // services on distinct ports made 200M pairs to compare. Every-port claims clash only with
    // each other.
    let mut pairs = Vec::new();
    'groups: for group in groups.values().filter(|g| g.len() > 1) {
        let (every, mut ranged): (Vec<usize>, Vec<usize>) =
            group.iter().partition(|&&i| claims[i].ports == (0, 0));
        for (n, &i) in every.iter().enumerate() {
            for &j in &every[n + 1..] {
                if pairs.len() == MAX_OVERLAPS {
                    break 'groups;
                }
                pairs.push((i, j));
            }
        }
        ranged.sort_unstable_by_key(|&i| (claims[i].ports.0, i));
        for (n, &i) in ranged.iter().enumerate() {
            let hi = claims[i].ports.1;
            for &j in ranged[n + 1..]
                .iter()
                .take_while(|&&j| claims[j].ports.0 <= hi)
            {
                if pairs.len() == MAX_OVERLAPS {
                    break 'groups;
                }
                pairs.push((i.min(j), i.max(j)));
            }
        }
    }
    if pairs.len() == MAX_OVERLAPS {
        out.push(
            Problem::new(
                "services",
                format!("more than {MAX_OVERLAPS} overlapping claims: only those are listed"),
            )
            .hint("each (VIP, protocol, port) belongs to one service"),
        );
    }
    pairs.sort_unstable();
    for (i, j) in pairs {
        let (a, b) = (&claims[i], &claims[j]);
        // (0, 0) is "every port", which the table resolves after exact ports: it overlaps nothing
        // but another every-port service.
        let a_all = a.ports == (0, 0);
        let b_all = b.ports == (0, 0);
        let clash = if a_all || b_all {
            a_all && b_all
        } else {
            a.ports.0 <= b.ports.1 && b.ports.0 <= a.ports.1
        };
        if !clash {
            continue;
        }
        let ports = if a_all {
            "every port".to_string()
        } else {
            let lo = a.ports.0.max(b.ports.0);
            let hi = a.ports.1.min(b.ports.1);
            if lo == hi {
                format!("port {lo}")
            } else {
                format!("ports {lo}-{hi}")
            }
        };
        let (vip, proto) = (a.svc.vip, a.svc.protocol.name());
        let message = if a.svc.name == b.svc.name {
            format!(
                "service {} lists {ports} twice for {vip} {proto}",
                a.svc.name
            )
        } else {
            format!(
                "services {} and {} both claim {vip} {proto} {ports}",
                a.svc.name, b.svc.name
            )
        };
        let path = match b.place {
            (s, None) => format!("services[{s}].vip"),
            (s, Some(k)) => format!("services[{s}].ports[{k}]"),
        };
        out.push(
            Problem::new(path, message)
                .hint("a VIP, protocol and port belong to one service: split the port ranges"),
        );
    }
}

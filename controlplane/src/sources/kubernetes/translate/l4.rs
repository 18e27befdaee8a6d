//! Services of type LoadBalancer -> L4 `[[services]]` with a VIP from the pool.
//!
//! A Service keeps the VIP its status (or `spec.loadBalancerIP`) names while it is in the pool
//! and nobody older holds it; the others get the first free address in pool order, oldest
//! Service first, so the same cluster always gives the same VIPs.
//!
//! Names: `k8s/<namespace>/<name>` for TCP, `.../udp` for UDP when the Service has both. When
//! the ports map to target ports that differ from them (a backend has one port in lb), each
//! port is a service of its own: `k8s/<namespace>/<name>/<port>` (`.../<port>/udp`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service as KService, ServicePort};

use super::common::{age, distinct, Endpoint, EndpointIndex, Problems};
use super::{Kind, Settings};
use crate::config::{
    Affinity, AllDown, Backend, BackendKind, Mode, Pool, PortRange, Protocol, Service,
};
use crate::sources::kubernetes::annotations::{self, quote};
use crate::sources::kubernetes::model::{ObjectKey, Snapshot};

/// Maglev table sizes, smallest first (primes; the default first).
const TABLE_SIZES: [usize; 6] = [65537, 131071, 262139, 524287, 1048573, 2097143];
/// Slots per backend a table needs.
const SLOTS_PER_BACKEND: usize = 10;
/// Most backends in one service.
const MAX_BACKENDS: usize = u16::MAX as usize - 1;
/// Most ports of one Service.
const MAX_PORTS: usize = 256;

/// Each port of a service, with its endpoints.
type PortEndpoints = Vec<(u16, Vec<Endpoint>)>;

/// What the LoadBalancer Services give.
#[derive(Default)]
pub struct L4Out {
    /// `[[services]]`.
    pub services: Vec<Service>,
    /// Service status addresses to write.
    pub statuses: Vec<(ObjectKey, Vec<IpAddr>)>,
}

/// Our LoadBalancer Services, oldest first.
fn ours<'a>(snap: &'a Snapshot, settings: &Settings) -> Vec<(&'a ObjectKey, &'a KService)> {
    let mut list: Vec<(&ObjectKey, &KService)> = snap
        .services
        .iter()
        .filter(|(_, s)| is_ours(s, settings))
        .collect();
    list.sort_by_cached_key(|(_, s)| age(&s.metadata));
    list
}

/// The VIP a Service asks to keep: its status's first address, else `spec.loadBalancerIP`.
fn wanted(svc: &KService) -> Option<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .find_map(|i| i.ip.as_deref()?.parse().ok())
        .or_else(|| svc.spec.as_ref()?.load_balancer_ip.as_deref()?.parse().ok())
}

/// True when `a` (inside `p`) is one of `p.0.hosts()`: not an IPv4 network or broadcast
/// address (below /31).
fn is_host(p: &crate::config::IpPrefix, a: IpAddr) -> bool {
    match (p.0, a) {
        (ipnet::IpNet::V4(n), IpAddr::V4(a)) if n.prefix_len() < 31 => {
            a != n.network() && a != n.broadcast()
        }
        _ => true,
    }
}

/// VIPs for `list` (same order), `None` where the pool is exhausted.
fn allocate(list: &[(&ObjectKey, &KService)], settings: &Settings) -> Vec<Option<IpAddr>> {
    let in_pool = |a: IpAddr| {
        settings
            .vip_pool
            .iter()
            .any(|p| p.contains(a) && is_host(p, a))
    };
    // Addresses the HTTP listeners and Gateways may use are never VIPs.
    let mut used: BTreeSet<IpAddr> = settings
        .ingress_http
        .iter()
        .chain(&settings.ingress_https)
        .map(|s| s.ip())
        .chain(settings.gateway_addresses.iter().copied())
        .collect();
    let mut vips: Vec<Option<IpAddr>> = list
        .iter()
        .map(|(_, s)| {
            let w = wanted(s).filter(|a| in_pool(*a) && !used.contains(a))?;
            used.insert(w);
            Some(w)
        })
        .collect();
    let mut free = settings
        .vip_pool
        .iter()
        .flat_map(|p| p.0.hosts())
        .filter(|a| !a.is_unspecified() && !a.is_multicast());
    for v in vips.iter_mut().filter(|v| v.is_none()) {
        *v = free.by_ref().find(|a| !used.contains(a));
        if let Some(a) = v {
            used.insert(*a);
        }
    }
    vips
}

/// Annotations of a readable size and at least one TCP or UDP port (at most [`MAX_PORTS`]);
/// else reported.
fn servable(key: &ObjectKey, svc: &KService, problems: &mut Problems) -> bool {
    if annotations::check_size(svc.metadata.annotations.as_ref()).is_err() {
        problems.push(
            Kind::Service,
            key,
            "TooLarge",
            format!(
                "annotations are larger than {} bytes: the Service is skipped",
                annotations::MAX_ANNOTATION_BYTES
            ),
        );
        return false;
    }
    let ports: &[ServicePort] = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let usable = ports.iter().any(|p| {
        (1..=65535).contains(&p.port)
            && matches!(p.protocol.as_deref().unwrap_or("TCP"), "TCP" | "UDP")
    });
    if !usable || ports.len() > MAX_PORTS {
        problems.push(
            Kind::Service,
            key,
            "InvalidPorts",
            format!(
                "{} ports, none TCP or UDP or more than {MAX_PORTS}: the Service is skipped",
                ports.len()
            ),
        );
        return false;
    }
    true
}

/// What the LoadBalancer Services of `snap` mean.
pub fn translate(snap: &Snapshot, settings: &Settings, problems: &mut Problems) -> L4Out {
    let mut out = L4Out::default();
    // Services that cannot be served are left out before VIPs are handed out, so they hold
    // none.
    let list: Vec<(&ObjectKey, &KService)> = ours(snap, settings)
        .into_iter()
        .filter(|(key, svc)| servable(key, svc, problems))
        .collect();
    if list.is_empty() {
        return out;
    }
    let eps = EndpointIndex::new(snap);
    let vips = allocate(&list, settings);
    for ((key, svc), vip) in list.iter().zip(vips) {
        let Some(vip) = vip else {
            problems.push(
                Kind::Service,
                key,
                "NoVipAvailable",
                "every VIP of the pool is taken: the Service gets none",
            );
            continue;
        };
        one(key, svc, vip, &eps, problems, &mut out);
    }
    out
}

/// True when `svc` is a LoadBalancer Service of ours (whether it is served or not).
pub fn is_ours(svc: &KService, settings: &Settings) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    spec.type_.as_deref() == Some("LoadBalancer")
        && match spec.load_balancer_class.as_deref() {
            Some(c) => c == settings.load_balancer_class,
            None => settings.default_load_balancer,
        }
}

/// The `[[services]]` of LoadBalancer Service `key` at `vip` (the one it holds), and its
/// problems: what [`translate`] makes of it, for a change of its endpoints alone.
pub fn retranslate(
    key: &ObjectKey,
    svc: &KService,
    vip: IpAddr,
    eps: &EndpointIndex<'_>,
    problems: &mut Problems,
) -> Vec<Service> {
    let mut out = L4Out::default();
    if servable(key, svc, problems) {
        one(key, svc, vip, eps, problems, &mut out);
    }
    out.services
}

/// The `[[services]]` of LoadBalancer Service `key` at `vip`, and its status.
fn one(
    key: &ObjectKey,
    svc: &KService,
    vip: IpAddr,
    eps: &EndpointIndex<'_>,
    problems: &mut Problems,
    out: &mut L4Out,
) {
    let (ann, ann_problems) = annotations::parse_service(svc.metadata.annotations.as_ref());
    for p in ann_problems {
        problems.push(Kind::Service, key, p.reason, p.message);
    }
    let ports: &[ServicePort] = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let mut by_proto: BTreeMap<&str, Vec<&ServicePort>> = BTreeMap::new();
    for p in ports {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !(1..=65535).contains(&p.port) {
            problems.push(
                Kind::Service,
                key,
                "InvalidPorts",
                format!("port {} is not a port: skipped", p.port),
            );
            continue;
        }
        match proto {
            "TCP" | "UDP" => {
                let list = by_proto.entry(proto).or_default();
                if list.iter().any(|q| q.port == p.port) {
                    problems.push(
                        Kind::Service,
                        key,
                        "InvalidPorts",
                        format!(
                            "port {} {proto} is listed twice: the second is skipped",
                            p.port
                        ),
                    );
                } else {
                    list.push(p);
                }
            }
            other => problems.push(
                Kind::Service,
                key,
                "NotSupported",
                format!(
                    "protocol {} is not supported: port {} skipped",
                    quote(other),
                    p.port
                ),
            ),
        }
    }
    let both = by_proto.len() > 1;
    let mode = ann.mode.unwrap_or(Mode::FullNat);
    let vm_mode = ann.vm_mode.unwrap_or(mode);
    let mut made = false;
    for (proto, ports) in by_proto {
        let protocol = if proto == "UDP" {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let suffix = if protocol == Protocol::Udp && both {
            "/udp"
        } else {
            ""
        };
        let per_port: PortEndpoints = ports
            .iter()
            .map(|p| (p.port as u16, eps.endpoints(key, p)))
            .collect();
        let rewrites = per_port
            .iter()
            .any(|(port, e)| e.iter().any(|e| e.port != *port));
        let dsr_like = |m: Mode| matches!(m, Mode::Dr | Mode::DsrIpip | Mode::DsrGue);
        let mismatch = per_port.iter().any(|(port, e)| {
            e.iter()
                .any(|e| e.port != *port && dsr_like(if e.vm { vm_mode } else { mode }))
        });
        if mismatch {
            problems.push(
                Kind::Service,
                key,
                "PortMismatch",
                "dr and dsr forward packets unchanged: target ports must equal the ports; the packets keep the Service port",
            );
        }
        let groups: Vec<(String, PortEndpoints)> = if rewrites && per_port.len() > 1 {
            per_port
                .into_iter()
                .map(|(port, e)| (format!("k8s/{key}/{port}{suffix}"), vec![(port, e)]))
                .collect()
        } else {
            vec![(format!("k8s/{key}{suffix}"), per_port)]
        };
        let mut family_mismatch = false;
        for (name, group) in groups {
            let single = group.len() == 1;
            let ports: Vec<PortRange> = group
                .iter()
                .map(|(p, _)| PortRange { lo: *p, hi: *p })
                .collect();
            let mut pods: BTreeMap<(IpAddr, Option<u16>), Backend> = BTreeMap::new();
            let mut vms: BTreeMap<(IpAddr, Option<u16>), Backend> = BTreeMap::new();
            for (_, endpoints) in &group {
                for e in endpoints {
                    let m = if e.vm { vm_mode } else { mode };
                    // nat, fullnat and dr cannot change the family; dsr carries IPv4 in
                    // IPv6 but not the reverse.
                    let fits = match m {
                        Mode::DsrIpip | Mode::DsrGue => e.addr.is_ipv6() || vip.is_ipv4(),
                        _ => e.addr.is_ipv4() == vip.is_ipv4(),
                    };
                    if !fits {
                        family_mismatch = true;
                        continue;
                    }
                    let port = if single && !dsr_like(m) && rewrites {
                        Some(e.port)
                    } else {
                        None
                    };
                    let (set, kind) = if e.vm {
                        (&mut vms, BackendKind::Vm)
                    } else {
                        (&mut pods, BackendKind::Pod)
                    };
                    let b = set.entry((e.addr, port)).or_insert(Backend {
                        addr: e.addr,
                        port,
                        weight: e.weight,
                        kind,
                    });
                    b.weight = b.weight.max(e.weight);
                }
            }
            let count = pods.len() + vms.len();
            if count > MAX_BACKENDS {
                problems.push(
                    Kind::Service,
                    key,
                    "TooLarge",
                    format!("{count} endpoints, more than {MAX_BACKENDS}: skipped"),
                );
                continue;
            }
            let weight = ann.weight.unwrap_or(1);
            let need = (count * SLOTS_PER_BACKEND).max(count * weight as usize);
            let Some(&table_size) = TABLE_SIZES.iter().find(|&&s| s >= need) else {
                problems.push(
                    Kind::Service,
                    key,
                    "TooLarge",
                    format!("{count} endpoints need a table larger than lb builds: skipped"),
                );
                continue;
            };
            let pool = |name: &str, mode: Mode, backends: Vec<Backend>| Pool {
                name: name.into(),
                mode,
                weight,
                snat: Vec::new(),
                encap_source: Vec::new(),
                gue_port: 6080,
                backends,
            };
            let mut pools = vec![pool("pods", mode, pods.into_values().collect())];
            if !vms.is_empty() {
                pools.push(pool("vms", vm_mode, vms.into_values().collect()));
            }
            out.services.push(Service {
                name,
                vip,
                ports,
                protocol,
                affinity: if ann.client_ip_affinity {
                    Affinity::ClientIp
                } else {
                    Affinity::None
                },
                table_size,
                pools,
                health_check: None,
                passive: None,
                all_down: AllDown::default(),
            });
            made = true;
        }
        if family_mismatch {
            problems.push(
                Kind::Service,
                key,
                "FamilyMismatch",
                format!("endpoints of another address family than VIP {vip} cannot be reached in this mode: left out"),
            );
        }
    }
    if made {
        let current = distinct(
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse().ok()),
        );
        if current != [vip] {
            out.statuses.push((key.clone(), vec![vip]));
        }
    }
}

//! What the parts of `translate` share: problems (bounded), age order, host and path checks,
//! Service ports and their EndpointSlice endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::{Kind, ObjectProblem};
use crate::sources::kubernetes::annotations::quote;
use crate::sources::kubernetes::model::{ObjectKey, Snapshot};

/// Label of an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label of an EndpointSlice naming who manages it.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The EndpointSlice controller (slices of pods selected by the Service).
pub const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// Most problems kept per object (then one saying how many more).
const MAX_PROBLEMS_PER_OBJECT: usize = 20;
/// Most problems kept in all.
const MAX_PROBLEMS: usize = 10_000;
/// Longest host name (DNS).
const MAX_HOST: usize = 253;
/// Longest route path.
pub const MAX_PATH: usize = 2048;

/// Problems, at most [`MAX_PROBLEMS_PER_OBJECT`] per object.
#[derive(Default)]
pub struct Problems {
    list: Vec<ObjectProblem>,
    per_object: BTreeMap<(Kind, ObjectKey), usize>,
}

impl Problems {
    /// Reports that (part of) `key` was not used.
    pub fn push(&mut self, kind: Kind, key: &ObjectKey, reason: &str, message: impl Into<String>) {
        let n = self.per_object.entry((kind, key.clone())).or_default();
        *n += 1;
        if *n > MAX_PROBLEMS_PER_OBJECT || self.list.len() >= MAX_PROBLEMS {
            return;
        }
        let mut message = message.into();
        if *n == MAX_PROBLEMS_PER_OBJECT {
            message.push_str(" (further problems of this object are not listed)");
        }
        self.list.push(ObjectProblem {
            kind,
            key: key.clone(),
            reason: reason.into(),
            message,
        });
    }

    /// Every problem, in the order found.
    pub fn into_vec(self) -> Vec<ObjectProblem> {
        self.list
    }
}

/// How objects are ordered when the older one wins: creation time (absent first), then
/// namespace and name.
pub type Age = (Option<Time>, ObjectKey);

/// The age of an object.
pub fn age(meta: &ObjectMeta) -> Age {
    (
        meta.creation_timestamp.clone(),
        ObjectKey::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        ),
    )
}

/// A route or SNI host name, lowercased: DNS labels of letters, digits and inner `-`, the
/// first one may be `*`. `Err(why)` otherwise.
pub fn check_host(host: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("host {} {why}", quote(host)));
    if host.is_empty() {
        return bad("is empty");
    }
    if host.len() > MAX_HOST {
        return bad("is longer than 253 bytes");
    }
    let labels: Vec<&str> = host.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if *label == "*" && i == 0 && labels.len() > 1 {
            continue;
        }
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("is not a DNS name (letters, digits and inner '-', or '*.' first)");
        }
    }
    Ok(host.to_ascii_lowercase())
}

/// A route path: starts with `/`, visible ASCII, no query or fragment, bounded.
pub fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        Err(format!("path {} does not start with '/'", quote(path)))
    } else if path.len() > MAX_PATH {
        Err(format!(
            "path {} is longer than {MAX_PATH} bytes",
            quote(path)
        ))
    } else if path.bytes().any(|b| !b.is_ascii_graphic()) || path.contains(['?', '#']) {
        Err(format!(
            "path {} has spaces, control or non-ASCII characters, or a query",
            quote(path)
        ))
    } else if let Some(bad) = ["//", "/./", "/../", "%2f", "%2F"]
        .into_iter()
        .find(|s| path.contains(s))
        .or(["/..", "/."].into_iter().find(|s| path.ends_with(s)))
    {
        // kube-apiserver refuses these in Exact and Prefix paths: a backend that normalizes
        // the path would see another one than the route matched.
        Err(format!(
            "path {} has {bad:?} (empty, dot or encoded-slash segments are refused)",
            quote(path)
        ))
    } else if path.contains(['{', '}']) {
        // Outside Gateway API's path pattern; meaningful in other proxies' config syntax.
        Err(format!("path {} has '{{' or '}}'", quote(path)))
    } else {
        Ok(())
    }
}

/// How a route names a Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    /// By number.
    Number(i32),
    /// By name.
    Name(String),
}

/// The port of `svc` that `port` names.
pub fn service_port<'a>(svc: &'a Service, port: &PortRef) -> Option<&'a ServicePort> {
    let ports = svc.spec.as_ref()?.ports.as_deref()?;
    ports.iter().find(|p| match port {
        PortRef::Number(n) => p.port == *n,
        PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
    })
}

/// One endpoint of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Pod (or VM) address.
    pub addr: IpAddr,
    /// The target port on it.
    pub port: u16,
    /// 1: takes new requests; 0: serving but terminating (drains).
    pub weight: u32,
    /// From a slice not managed by the EndpointSlice controller (a VM).
    pub vm: bool,
}

/// The EndpointSlices of each Service.
pub struct EndpointIndex<'a> {
    by_service: BTreeMap<ObjectKey, Vec<&'a EndpointSlice>>,
}

impl<'a> EndpointIndex<'a> {
    /// Indexes the slices of `snap` by their Service.
    pub fn new(snap: &'a Snapshot) -> EndpointIndex<'a> {
        let mut by_service: BTreeMap<ObjectKey, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in snap.endpoint_slices.values() {
            let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let ns = slice.metadata.namespace.clone().unwrap_or_default();
            by_service
                .entry(ObjectKey::new(ns, svc.clone()))
                .or_default()
                .push(slice);
        }
        EndpointIndex { by_service }
    }

    /// Indexes the slices of Service `svc` alone (a change of its endpoints).
    pub fn of_service(snap: &'a Snapshot, svc: &ObjectKey) -> EndpointIndex<'a> {
        let start = ObjectKey::new(svc.namespace.clone(), String::new());
        let slices: Vec<&EndpointSlice> = snap
            .endpoint_slices
            .range(start..)
            .take_while(|(k, _)| k.namespace == svc.namespace)
            .map(|(_, s)| s)
            .filter(|s| service_of(s).is_some_and(|k| k == *svc))
            .collect();
        let mut by_service = BTreeMap::new();
        by_service.insert(svc.clone(), slices);
        EndpointIndex { by_service }
    }

    /// The endpoints of Service `svc`'s port `port`: ready ones at weight 1, serving and
    /// terminating ones at 0, others left out; one entry per address and port (the best
    /// condition wins when slices overlap), in address order.
    pub fn endpoints(&self, svc: &ObjectKey, port: &ServicePort) -> Vec<Endpoint> {
        let name = port.name.as_deref().unwrap_or("");
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let mut best: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
        for slice in self.by_service.get(svc).into_iter().flatten() {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let vm = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY_LABEL))
                .is_none_or(|m| m != SLICE_CONTROLLER);
            let target = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == name
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            });
            let Some(target) = target.and_then(|p| p.port) else {
                continue;
            };
            let Ok(target) = u16::try_from(target) else {
                continue;
            };
            if target == 0 {
                continue;
            }
            for ep in &slice.endpoints {
                let c = ep.conditions.as_ref();
                let ready = c.and_then(|c| c.ready) != Some(false);
                let serving = c.and_then(|c| c.serving) == Some(true);
                let terminating = c.and_then(|c| c.terminating) == Some(true);
                let weight = if ready {
                    1
                } else if serving && terminating {
                    0
                } else {
                    continue;
                };
                // Every address of an endpoint is the same pod: the first is used.
                let Some(addr) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                    continue;
                };
                if addr.is_unspecified() || addr.is_multicast() || addr == IpAddr::from([255; 4]) {
                    continue;
                }
                let e = Endpoint {
                    addr,
                    port: target,
                    weight,
                    vm,
                };
                best.entry((addr, target))
                    .and_modify(|old| {
                        if e.weight > old.weight {
                            *old = e;
                        }
                    })
                    .or_insert(e);
            }
        }
        best.into_values().collect()
    }
}

/// The Service an EndpointSlice belongs to (its label), if it names one.
pub fn service_of(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(
        slice.metadata.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

/// Whether `labels` satisfy `sel` (every `matchLabels` pair and every `matchExpressions`
/// requirement, as the API server reads them; an empty selector selects everything).
/// `Err(why)` for a requirement the API server would refuse.
pub fn selects(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<bool, String> {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let mut ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let has = labels.get(&e.key);
        let met = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "selector operator {} on {} needs values",
                    e.operator,
                    quote(&e.key)
                ))
            }
            "In" => has.is_some_and(|v| values.contains(v)),
            "NotIn" => has.is_none_or(|v| !values.contains(v)),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "selector operator {} on {} takes no values",
                    e.operator,
                    quote(&e.key)
                ))
            }
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            other => {
                return Err(format!(
                    "selector operator {} is not one of In, NotIn, Exists, DoesNotExist",
                    quote(other)
                ))
            }
        };
        ok &= met;
    }
    Ok(ok)
}

/// Distinct addresses, in order.
pub fn distinct(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let set: BTreeSet<IpAddr> = addrs.into_iter().collect();
    set.into_iter().collect()
}

//! Endpoint moves without a whole translation: most cluster changes are EndpointSlice writes
//! (pods become ready, terminate, move), and each touches one Service among thousands. After a
//! whole translation, an [`Index`] records where each Service's endpoints went (its L4
//! `[[services]]`, the `[[http]]` upstreams of its ports); [`patch`] then recomputes those
//! entries alone, with the same functions a whole translation uses, so both give the same
//! entries. A change that would do more than replace backends (an upstream that loses its last
//! endpoint or gains its first, an L4 service that splits by port, a new problem to report) is
//! not patched: [`patch`] says so and the source translates everything.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use super::common::{service_port, EndpointIndex, PortRef, Problems};
use super::upstreams::http_backends;
use super::{l4, Kind, ObjectProblem, Settings, Translated};
use crate::config::Upstream;
use crate::control::{BackendPatch, ClusterPart};
use crate::sources::kubernetes::model::{ObjectKey, Snapshot};

/// Where each Service's endpoints are in a translation's entries.
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// Per LoadBalancer Service: its VIP and the indices of its `[[services]]`.
    l4: HashMap<ObjectKey, (IpAddr, Vec<usize>)>,
    /// Per Service: `(http, upstream, port)` indices of the upstreams of its ports.
    upstreams: HashMap<ObjectKey, Vec<(usize, usize, u16)>>,
    /// Services an Ingress or HTTPRoute names.
    referenced: HashSet<ObjectKey>,
    /// The problems reported for each Service.
    problems: HashMap<ObjectKey, Vec<ObjectProblem>>,
}

/// `<namespace>.<service>:<port>` (an upstream's name) -> the Service and port. Namespaces and
/// Service names are DNS labels: no dots.
fn upstream_service(name: &str) -> Option<(ObjectKey, u16)> {
    let (ns, rest) = name.split_once('.')?;
    let (svc, port) = rest.rsplit_once(':')?;
    Some((ObjectKey::new(ns, svc), port.parse().ok()?))
}

/// `k8s/<namespace>/<name>[/...]` (an L4 service's name) -> the Service.
fn l4_service(name: &str) -> Option<ObjectKey> {
    let mut parts = name.strip_prefix("k8s/")?.split('/');
    Some(ObjectKey::new(parts.next()?, parts.next()?))
}

/// The Services the Ingresses and HTTPRoutes of `snap` name as backends (whether they are ours
/// or not: a superset is safe).
fn referenced(snap: &Snapshot) -> HashSet<ObjectKey> {
    let mut out = HashSet::new();
    for (key, ing) in &snap.ingresses {
        let Some(spec) = ing.spec.as_ref() else {
            continue;
        };
        let paths = spec
            .rules
            .iter()
            .flatten()
            .filter_map(|r| r.http.as_ref())
            .flat_map(|h| &h.paths)
            .map(|p| &p.backend);
        for b in spec.default_backend.iter().chain(paths) {
            if let Some(s) = &b.service {
                out.insert(ObjectKey::new(key.namespace.clone(), s.name.clone()));
            }
        }
    }
    for (key, route) in &snap.http_routes {
        for r in route.spec.rules.iter().flat_map(|r| &r.backend_refs) {
            let ns = r.namespace.clone().unwrap_or_else(|| key.namespace.clone());
            out.insert(ObjectKey::new(ns, r.name.clone()));
        }
    }
    out
}

impl Index {
    /// Where the endpoints of `snap`'s Services are in `t`, its whole translation.
    pub fn new(snap: &Snapshot, t: &Translated) -> Index {
        let mut ix = Index {
            referenced: referenced(snap),
            ..Index::default()
        };
        for (i, s) in t.services.iter().enumerate() {
            if let Some(key) = l4_service(&s.name) {
                ix.l4.entry(key).or_insert((s.vip, Vec::new())).1.push(i);
            }
        }
        for (h, http) in t.http.iter().enumerate() {
            for (u, up) in http.upstreams.iter().enumerate() {
                if let Some((key, port)) = upstream_service(&up.name) {
                    ix.upstreams.entry(key).or_default().push((h, u, port));
                }
            }
        }
        for p in t.problems.iter().filter(|p| p.kind == Kind::Service) {
            ix.problems
                .entry(p.key.clone())
                .or_default()
                .push(p.clone());
        }
        ix
    }
}

/// The entries of Services `changed` (whose EndpointSlices changed) recomputed from `snap`,
/// as replacements for those in `part` (the translation `index` was made from, with every
/// patch since): `None` when the change is more than new backends for entries that exist.
pub fn patch(
    snap: &Snapshot,
    settings: &Settings,
    index: &Index,
    part: &ClusterPart,
    changed: &BTreeSet<ObjectKey>,
) -> Option<BackendPatch> {
    let mut out = BackendPatch::default();
    for key in changed {
        let l4 = index.l4.get(key);
        let ups = index.upstreams.get(key);
        let svc = snap.services.get(key);
        if l4.is_none() && svc.is_some_and(|s| l4::is_ours(s, settings)) {
            // A LoadBalancer Service that has no entry yet.
            return None;
        }
        if ups.is_none() && index.referenced.contains(key) {
            // Named by a route that has no upstream for it (no endpoints yet, say).
            return None;
        }
        if l4.is_none() && ups.is_none() {
            continue;
        }
        let svc = svc?;
        let eps = EndpointIndex::of_service(snap, key);
        if let Some((vip, at)) = l4 {
            let mut problems = Problems::default();
            let services = l4::retranslate(key, svc, *vip, &eps, &mut problems);
            let reported = index.problems.get(key).map(Vec::as_slice).unwrap_or(&[]);
            if problems.into_vec() != reported || services.len() != at.len() {
                return None;
            }
            for (new, &i) in services.into_iter().zip(at) {
                let old = part.services.get(i)?;
                if old.name != new.name {
                    return None;
                }
                // Entries whose backends came out the same need no change.
                if *old != new {
                    out.services.push(new);
                }
            }
        }
        for &(h, u, port) in ups.into_iter().flatten() {
            let http = part.http.get(h)?;
            let old: &Upstream = http.upstreams.get(u)?;
            let sp = service_port(svc, &PortRef::Number(i32::from(port)))?;
            let backends = http_backends(&eps, key, sp);
            if backends.is_empty() {
                // The routes lose their upstream: a whole translation says what they answer.
                return None;
            }
            if backends != old.backends {
                out.upstreams.push((
                    http.name.clone(),
                    Upstream {
                        backends,
                        ..old.clone()
                    },
                ));
            }
        }
    }
    Some(out)
}

//! A change of backends only, in time proportional to what changed: the Kubernetes source moves
//! the endpoints of one Service among thousands, and a whole reload (merge, validate, compile
//! and bind every service and route) would cost the whole cluster's size for each move.
//!
//! The entries a [`BackendPatch`] names replace the serving config's in place; only they are
//! validated, only their removed backends start draining, only their table entries are rebuilt
//! ([`RoutingTable::with_backends`](dataplane::RoutingTable::with_backends)) and only the
//! listeners whose upstreams changed get a new route table. What they claim together with the
//! other entries (names, VIPs, ports, routes) cannot change, so the full checks still hold. A
//! patch that would change more is not applied here: the caller makes a whole change instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use super::overrides::failing_open_of;
use super::{runtime_weight, unix_now, ClusterPart, ControlPlane, Inner, ReloadError};
use crate::compile::{self, Context, NextHops};
use crate::config::{self, BackendKey, Config};
use crate::diag::Problem;

/// A change of the cluster's part that replaces backends only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendPatch {
    /// L4 services, each replacing the cluster's service of its name: the same VIP, protocol,
    /// ports, checks and all-down policy; pools, backends, weights, table size and affinity
    /// may differ.
    pub services: Vec<config::Service>,
    /// `(http, upstream)`: each upstream replaces the one of its name in the cluster's `[[http]]`
    /// `http`, with the same settings and other backends.
    pub upstreams: Vec<(String, config::Upstream)>,
}

impl BackendPatch {
    /// True when it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.upstreams.is_empty()
    }

    /// Applies it to `part`; false (and `part` unchanged in the entries not found) when an
    /// entry it names is not there.
    pub fn apply_to(&self, part: &mut ClusterPart) -> bool {
        let mut found = true;
        for s in &self.services {
            match part.services.iter_mut().find(|x| x.name == s.name) {
                Some(x) => *x = s.clone(),
                None => found = false,
            }
        }
        for (h, up) in &self.upstreams {
            match part
                .http
                .iter_mut()
                .find(|x| x.name == *h)
                .and_then(|x| x.upstreams.iter_mut().find(|u| u.name == up.name))
            {
                Some(x) => *x = up.clone(),
                None => found = false,
            }
        }
        found
    }
}

/// Where a patch's entries are: in the cluster's part and in the serving config.
struct Places {
    /// Index of each service in the cluster's part.
    services: Vec<usize>,
    /// `(http, upstream)` index of each upstream in the cluster's part.
    upstreams: Vec<(usize, usize)>,
    /// The services' indices in the serving config.
    config_services: Vec<usize>,
    /// The upstreams' `(http, upstream)` indices in the serving config.
    config_upstreams: Vec<(usize, usize)>,
}

/// The same service but for its backends (what a patch may change).
fn same_shape(a: &config::Service, b: &config::Service) -> bool {
    a.name == b.name
        && a.vip == b.vip
        && a.protocol == b.protocol
        && a.ports == b.ports
        && a.health_check == b.health_check
        && a.passive == b.passive
        && a.all_down == b.all_down
}

/// The same upstream but for its backends.
fn same_upstream(a: &config::Upstream, b: &config::Upstream) -> bool {
    a.name == b.name
        && a.balance == b.balance
        && a.hash_key == b.hash_key
        && a.health_check == b.health_check
        && a.proxy_protocol == b.proxy_protocol
        && a.tls == b.tls
}

impl Inner {
    /// Where `patch`'s entries are, or `None` when it is not a change of backends only of the
    /// serving state (an entry that is not there, or that changes more, or twice).
    fn places(&self, patch: &BackendPatch) -> Option<Places> {
        if self.cluster_status.last_error.is_some() {
            // The serving state is not the cluster's last part: only a whole change fixes it.
            return None;
        }
        let (nf, nh) = (self.file.services.len(), self.file.http.len());
        let mut p = Places {
            services: Vec::with_capacity(patch.services.len()),
            upstreams: Vec::with_capacity(patch.upstreams.len()),
            config_services: Vec::with_capacity(patch.services.len()),
            config_upstreams: Vec::with_capacity(patch.upstreams.len()),
        };
        if !patch.services.is_empty() {
            let index: HashMap<&str, usize> = self
                .cluster
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.as_str(), i))
                .collect();
            for s in &patch.services {
                let i = *index.get(s.name.as_str())?;
                let serving = self.config.services.get(nf + i)?;
                if !same_shape(&self.cluster.services[i], s) || serving.name != s.name {
                    return None;
                }
                p.services.push(i);
                p.config_services.push(nf + i);
            }
        }
        for (h, up) in &patch.upstreams {
            let j = self.cluster.http.iter().position(|x| x.name == *h)?;
            let k = self.cluster.http[j]
                .upstreams
                .iter()
                .position(|u| u.name == up.name)?;
            let serving = self.config.http.get(nh + j)?;
            if !same_upstream(&self.cluster.http[j].upstreams[k], up) || serving.name != *h {
                return None;
            }
            p.upstreams.push((j, k));
            p.config_upstreams.push((nh + j, k));
        }
        let distinct = |n: usize, set: usize| n == set;
        if !distinct(
            p.services.len(),
            p.services.iter().collect::<HashSet<_>>().len(),
        ) || !distinct(
            p.upstreams.len(),
            p.upstreams.iter().collect::<HashSet<_>>().len(),
        ) {
            return None;
        }
        Some(p)
    }
}

/// The problems of cluster entries, each naming its entry (they have no place in the file).
fn cluster_problems(config: &Config, problems: Vec<Problem>) -> ReloadError {
    let lines: Vec<String> = problems
        .into_iter()
        .map(|p| {
            let who = super::entry_index(&p.path, "services")
                .and_then(|i| config.services.get(i))
                .map(|s| format!("cluster service {}", s.name))
                .or_else(|| {
                    super::entry_index(&p.path, "http")
                        .and_then(|i| config.http.get(i))
                        .map(|h| format!("cluster http {}", h.name))
                })
                .unwrap_or_else(|| "cluster".to_string());
            match &p.hint {
                Some(h) => format!("{who}: {} (hint: {h})", p.message),
                None => format!("{who}: {}", p.message),
            }
        })
        .collect();
    ReloadError::Cluster(lines.join("\n"))
}

impl ControlPlane {
    /// Replaces backends of the cluster's part (see [`BackendPatch`]) in time proportional to
    /// the entries changed: `Ok(None)` when `patch` is more than that for the serving state
    /// (the caller then makes a whole [`ControlPlane::set_cluster`]). Entries that break a rule,
    /// or a table that cannot be built, change nothing: the error is counted, logged and kept
    /// for `/state` as a whole change's would be.
    pub fn patch_backends(&self, patch: &BackendPatch) -> Result<Option<u64>, ReloadError> {
        let mut inner = self.lock();
        if patch.is_empty() {
            return Ok(Some(inner.generation));
        }
        let Some(places) = inner.places(patch) else {
            return Ok(None);
        };
        // The new entries go into the serving config in place; the old ones come back on an
        // error.
        let mut old_services = Vec::with_capacity(places.config_services.len());
        for (s, &c) in patch.services.iter().zip(&places.config_services) {
            old_services.push(std::mem::replace(&mut inner.config.services[c], s.clone()));
        }
        let mut old_upstreams = Vec::with_capacity(places.config_upstreams.len());
        for ((_, up), &(h, k)) in patch.upstreams.iter().zip(&places.config_upstreams) {
            old_upstreams.push(std::mem::replace(
                &mut inner.config.http[h].upstreams[k],
                up.clone(),
            ));
        }
        let result = self.publish_patch(&mut inner, &places, &old_services);
        match &result {
            Ok(g) => {
                let Inner {
                    cluster,
                    cluster_status: st,
                    ..
                } = &mut *inner;
                for (s, &i) in patch.services.iter().zip(&places.services) {
                    cluster.services[i] = s.clone();
                }
                for ((_, up), &(j, k)) in patch.upstreams.iter().zip(&places.upstreams) {
                    cluster.http[j].upstreams[k] = up.clone();
                }
                st.applied += 1;
                st.patched += 1;
                st.last_ok_unix = Some(unix_now());
                tracing::debug!(
                    generation = g,
                    services = patch.services.len(),
                    upstreams = patch.upstreams.len(),
                    "cluster backends applied"
                );
            }
            Err(e) => {
                for (old, &c) in old_services.into_iter().zip(&places.config_services) {
                    inner.config.services[c] = old;
                }
                for (old, &(h, k)) in old_upstreams.into_iter().zip(&places.config_upstreams) {
                    inner.config.http[h].upstreams[k] = old;
                }
                let st = &mut inner.cluster_status;
                st.rejected += 1;
                st.last_error = Some(e.to_string());
                tracing::error!(error = %e, "cluster change rejected; the previous tables keep serving");
            }
        }
        result.map(Some)
    }

    /// Checks the patched entries (already in the serving config; `old_services` are the ones
    /// they replaced), drains what they removed and publishes their new table entries and
    /// route tables.
    fn publish_patch(
        &self,
        inner: &mut Inner,
        places: &Places,
        old_services: &[config::Service],
    ) -> Result<u64, ReloadError> {
        let problems = inner
            .config
            .validate_entries(&places.config_services, &places.config_upstreams);
        if !problems.is_empty() {
            return Err(cluster_problems(&inner.config, problems));
        }
        let old: Vec<&config::Service> = old_services.iter().collect();
        let new: Vec<&config::Service> = places
            .config_services
            .iter()
            .map(|&c| &inner.config.services[c])
            .collect();
        let draining =
            inner
                .draining
                .after_patch(&old, &new, &inner.config.dataplane, Instant::now());
        let before = std::mem::replace(&mut inner.draining, draining);
        let result = self.publish_entries(inner, &places.config_services, &places.config_upstreams);
        if result.is_err() {
            inner.draining = before;
        }
        result
    }

    /// Rebuilds the table entries of services `services` and the route-table services of
    /// upstreams `upstreams` (`(http, upstream)`; indices into the serving config) with the
    /// current overrides, health and drain, and publishes them; the rest of the serving tables
    /// stays as it is.
    pub(super) fn publish_entries(
        &self,
        inner: &mut Inner,
        services: &[usize],
        upstreams: &[(usize, usize)],
    ) -> Result<u64, ReloadError> {
        let g = inner.generation + 1;
        let Inner {
            config,
            overrides,
            health,
            slots,
            cache,
            draining,
            failing_open,
            l7,
            neighbors,
            ..
        } = &mut *inner;
        let mut failing = failing_open.clone();
        for &c in services {
            failing.remove(&config.services[c].name);
        }
        failing.extend(failing_open_of(
            services.iter().map(|&c| &config.services[c]),
            overrides,
            health,
        ));
        let adjust = |key: &BackendKey, w: u32| runtime_weight(overrides, health, &failing, key, w);
        let drained = draining.draining();
        let mut ctx = Context {
            adjust: &adjust,
            draining: &drained,
            slots,
            cache,
        };
        let specs = compile::service_specs(config, services, &mut ctx);
        let mut by_http: BTreeMap<usize, Vec<_>> = BTreeMap::new();
        for &(h, k) in upstreams {
            let http = &config.http[h];
            by_http
                .entry(h)
                .or_default()
                .push(compile::upstream_service(http, &http.upstreams[k], &adjust));
        }
        let mut changes = Vec::with_capacity(by_http.len());
        for (h, list) in by_http {
            let name = &config.http[h].name;
            match l7.prepare_endpoints(name, list) {
                Some(c) => changes.push(c),
                None => {
                    return Err(ReloadError::Cluster(format!(
                        "cluster http {name}: an upstream the change names is not served"
                    )))
                }
            }
        }
        let hops = NextHops::of(config).map(|h| h.spec(neighbors.clone()));
        let table = self
            .table
            .load()
            .with_backends(g, specs, cache, hops.as_ref());
        let table = match table {
            Ok(t) => t,
            Err(e) => {
                // Slots bound before the failure are used by no table.
                self.retain_neighbors(inner);
                return Err(ReloadError::Cluster(e.to_string()));
            }
        };
        Ok(self.apply_entries(inner, table, changes, failing)?)
    }
}

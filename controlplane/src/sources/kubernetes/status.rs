//! Status and Events written back by the leader (every replica serves traffic; only the one
//! that holds the Lease writes, so replicas never fight over an object's status).
//!
//! After each apply the source hands over the translation's statuses and problems with the
//! objects as they were ([`StatusWork`]). The leader patches the status subresource (a merge
//! patch of `/status`) of each object whose status differs, keeping a condition's
//! `lastTransitionTime` when its status did not change and leaving other controllers' HTTPRoute
//! parent entries alone; and creates one Warning Event per new problem (named from a hash of
//! the problem, so a replica taking over does not repeat it).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::watch;

use super::model::{
    Condition, Gateway, GatewayClass, HTTPRoute, HTTPRouteStatus, ObjectKey, Snapshot,
};
use super::source::{kind_name, now_rfc3339, StatusWork, SyncState};
use super::translate::{Kind, ObjectProblem};

/// The Events' `source.component` and `reportingComponent`.
const COMPONENT: &str = "lb";

/// Writes status while leader: waits for the client, then for each new [`StatusWork`] or
/// leadership change. Ends when the source stops (its senders are dropped).
pub async fn run(
    mut client: watch::Receiver<Option<Client>>,
    mut leader: watch::Receiver<bool>,
    mut work: watch::Receiver<Option<StatusWork>>,
    state: Arc<SyncState>,
    controller: String,
) {
    let client = loop {
        if let Some(c) = client.borrow_and_update().clone() {
            break c;
        }
        if client.changed().await.is_err() {
            return;
        }
    };
    let mut writer = Writer {
        client,
        controller,
        written: HashMap::new(),
        events: HashSet::new(),
    };
    let mut leader_gone = false;
    loop {
        let is_leader = !leader_gone && *leader.borrow_and_update();
        state.set_leader(is_leader);
        let w = work.borrow_and_update().clone();
        if is_leader {
            if let Some(w) = w {
                writer.write(&w).await;
            }
        } else {
            // A new term starts from what the cluster holds.
            writer.written.clear();
        }
        tokio::select! {
            r = leader.changed(), if !leader_gone => {
                if r.is_err() {
                    // The elector stopped: this replica no longer leads.
                    leader_gone = true;
                }
            }
            r = work.changed() => if r.is_err() { return },
        }
    }
}

/// What the leader wrote, so an unchanged status is not written again before the watch shows
/// it.
struct Writer {
    client: Client,
    controller: String,
    /// Per object: the status value written and the object's resourceVersion then.
    written: HashMap<(Kind, ObjectKey), (serde_json::Value, Option<String>)>,
    /// Problems an Event was created for (those still present).
    events: HashSet<(Kind, ObjectKey, String, String)>,
}

impl Writer {
    async fn write(&mut self, w: &StatusWork) {
        let snap = &w.snapshot;
        let now = now_rfc3339();
        for (key, ips) in &w.statuses.ingresses {
            let Some(obj) = snap.ingresses.get(key) else {
                continue;
            };
            let current: Vec<String> = obj
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .map(|v| v.iter().filter_map(|i| i.ip.clone()).collect())
                .unwrap_or_default();
            if same_ips(&current, ips) {
                continue;
            }
            let status = json!({ "loadBalancer": { "ingress": lb_ingress(ips) } });
            let api = Api::namespaced(self.client.clone(), &key.namespace);
            self.patch::<Ingress>(api, Kind::Ingress, key, obj, status)
                .await;
        }
        for (key, ips) in &w.statuses.services {
            let Some(obj) = snap.services.get(key) else {
                continue;
            };
            let current: Vec<String> = obj
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .map(|v| v.iter().filter_map(|i| i.ip.clone()).collect())
                .unwrap_or_default();
            if same_ips(&current, ips) {
                continue;
            }
            let status = json!({ "loadBalancer": { "ingress": lb_ingress(ips) } });
            let api = Api::namespaced(self.client.clone(), &key.namespace);
            self.patch::<Service>(api, Kind::Service, key, obj, status)
                .await;
        }
        for (name, want) in &w.statuses.gateway_classes {
            let Some(obj) = snap.gateway_classes.get(name) else {
                continue;
            };
            let old = obj.status.clone().unwrap_or_default();
            let mut want = want.clone();
            keep_times(&mut want.conditions, &old.conditions, &now);
            if want == old {
                continue;
            }
            let key = ObjectKey::new("", name.clone());
            let status = serde_json::to_value(&want).unwrap_or_default();
            let api = Api::all(self.client.clone());
            self.patch::<GatewayClass>(api, Kind::GatewayClass, &key, obj, status)
                .await;
        }
        for (key, want) in &w.statuses.gateways {
            let Some(obj) = snap.gateways.get(key) else {
                continue;
            };
            let old = obj.status.clone().unwrap_or_default();
            let mut want = want.clone();
            keep_times(&mut want.conditions, &old.conditions, &now);
            for l in &mut want.listeners {
                let before = old
                    .listeners
                    .iter()
                    .find(|o| o.name == l.name)
                    .map(|o| o.conditions.as_slice())
                    .unwrap_or_default();
                keep_times(&mut l.conditions, before, &now);
            }
            if want == old {
                continue;
            }
            let status = serde_json::to_value(&want).unwrap_or_default();
            let api = Api::namespaced(self.client.clone(), &key.namespace);
            self.patch::<Gateway>(api, Kind::Gateway, key, obj, status)
                .await;
        }
        for (key, want) in &w.statuses.http_routes {
            let Some(obj) = snap.http_routes.get(key) else {
                continue;
            };
            let old = obj.status.clone().unwrap_or_default();
            let want = route_status(&old, want, &self.controller, &now);
            if want == old {
                continue;
            }
            let status = serde_json::to_value(&want).unwrap_or_default();
            let api = Api::namespaced(self.client.clone(), &key.namespace);
            self.patch::<HTTPRoute>(api, Kind::HttpRoute, key, obj, status)
                .await;
        }
        self.events(snap, &w.problems, &now).await;
    }

    /// Merge-patches `/status` of `obj` with `status`, unless this very value was written
    /// already and the watch has not shown the object since.
    async fn patch<K>(
        &mut self,
        api: Api<K>,
        kind: Kind,
        key: &ObjectKey,
        obj: &K,
        status: serde_json::Value,
    ) where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let rv = obj.meta().resource_version.clone();
        let id = (kind, key.clone());
        if self
            .written
            .get(&id)
            .is_some_and(|(v, at)| *v == status && *at == rv)
        {
            return;
        }
        let body = json!({ "status": status });
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                tracing::info!(kind = kind_name(kind), object = %key, "kubernetes: status written");
                self.written.insert(id, (status, rv));
            }
            Err(e) => {
                tracing::warn!(kind = kind_name(kind), object = %key, error = %e, "kubernetes: writing status failed; retried at the next change");
            }
        }
    }

    /// One Warning Event per problem not reported yet.
    async fn events(&mut self, snap: &Snapshot, problems: &[ObjectProblem], now: &str) {
        let current: HashSet<(Kind, ObjectKey, String, String)> = problems
            .iter()
            .map(|p| (p.kind, p.key.clone(), p.reason.clone(), p.message.clone()))
            .collect();
        // A problem that went away is reported again if it comes back.
        self.events.retain(|p| current.contains(p));
        for p in problems {
            let id = (p.kind, p.key.clone(), p.reason.clone(), p.message.clone());
            if self.events.contains(&id) {
                continue;
            }
            let ev = event_for(snap, p, now);
            let ns = ev.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
            match api.create(&PostParams::default(), &ev).await {
                Ok(_) => {
                    self.events.insert(id);
                }
                // Created by this or an earlier leader already.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    self.events.insert(id);
                }
                Err(e) => {
                    tracing::warn!(object = %p.key, reason = %p.reason, error = %e, "kubernetes: creating an Event failed; retried at the next change");
                }
            }
        }
    }
}

/// `status.loadBalancer.ingress` entries for `ips`.
fn lb_ingress(ips: &[IpAddr]) -> Vec<serde_json::Value> {
    ips.iter()
        .map(|ip| json!({ "ip": ip.to_string() }))
        .collect()
}

fn same_ips(current: &[String], want: &[IpAddr]) -> bool {
    current.len() == want.len()
        && current
            .iter()
            .zip(want)
            .all(|(c, w)| c.parse::<IpAddr>().ok() == Some(*w))
}

/// Gives each condition of `new` the `lastTransitionTime` of its type in `old` when its status
/// is the same there, else `now`.
pub fn keep_times(new: &mut [Condition], old: &[Condition], now: &str) {
    for c in new {
        match old.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status && !o.last_transition_time.is_empty() => {
                c.last_transition_time = o.last_transition_time.clone();
            }
            _ => c.last_transition_time = now.to_string(),
        }
    }
}

/// An HTTPRoute's status with our parents' entries replaced by `ours` (times kept) and other
/// controllers' entries untouched.
pub fn route_status(
    old: &HTTPRouteStatus,
    ours: &HTTPRouteStatus,
    controller: &str,
    now: &str,
) -> HTTPRouteStatus {
    let mut parents: Vec<_> = old
        .parents
        .iter()
        .filter(|p| p.controller_name != controller)
        .cloned()
        .collect();
    for p in &ours.parents {
        let mut p = p.clone();
        let before = old
            .parents
            .iter()
            .find(|o| o.controller_name == controller && o.parent_ref == p.parent_ref)
            .map(|o| o.conditions.as_slice())
            .unwrap_or_default();
        keep_times(&mut p.conditions, before, now);
        parents.push(p);
    }
    HTTPRouteStatus { parents }
}

/// An Event's involved object of kind `K`: its apiVersion and, when the source holds it, its uid.
fn involved<K: Resource<DynamicType = ()>>(obj: Option<&K>) -> (String, Option<String>) {
    (
        K::api_version(&()).into_owned(),
        obj.and_then(|o| o.meta().uid.clone()),
    )
}

/// The Warning Event for `p`, named from a hash of the problem (the same problem gets the same
/// name, so creating it twice is a conflict, not a duplicate).
pub fn event_for(snap: &Snapshot, p: &ObjectProblem, now: &str) -> Event {
    let (api_version, uid) = match p.kind {
        Kind::IngressClass => involved(snap.ingress_classes.get(&p.key.name)),
        Kind::Ingress => involved(snap.ingresses.get(&p.key)),
        Kind::Service => involved(snap.services.get(&p.key)),
        Kind::EndpointSlice => involved(snap.endpoint_slices.get(&p.key)),
        Kind::Secret => involved(snap.secrets.get(&p.key)),
        Kind::GatewayClass => involved(snap.gateway_classes.get(&p.key.name)),
        Kind::Gateway => involved(snap.gateways.get(&p.key)),
        Kind::HttpRoute => involved(snap.http_routes.get(&p.key)),
        Kind::Namespace => involved(snap.namespaces.get(&p.key.name)),
    };
    let mut h = DefaultHasher::new();
    (p.kind, &p.key, &p.reason, &p.message).hash(&mut h);
    // Cluster-scoped objects' Events go to `default`, as kubectl shows them there.
    let ns = if p.key.namespace.is_empty() {
        "default".to_string()
    } else {
        p.key.namespace.clone()
    };
    let base: String = p.key.name.chars().take(200).collect();
    let time = now.parse::<k8s_openapi::jiff::Timestamp>().ok().map(Time);
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{base}.{:016x}", h.finish())),
            namespace: Some(ns),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(api_version),
            kind: Some(kind_name(p.kind).into()),
            name: Some(p.key.name.clone()),
            namespace: (!p.key.namespace.is_empty()).then(|| p.key.namespace.clone()),
            uid,
            ..ObjectReference::default()
        },
        reason: Some(p.reason.clone()),
        message: Some(p.message.clone()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.into()),
        first_timestamp: time.clone(),
        last_timestamp: time,
        count: Some(1),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::kubernetes::model::{ParentReference, RouteParentStatus};

    fn cond(t: &str, status: &str, at: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: status.into(),
            reason: "R".into(),
            last_transition_time: at.into(),
            ..Condition::default()
        }
    }

    #[test]
    fn transition_times_move_only_when_the_status_does() {
        let old = vec![
            cond("Accepted", "True", "2026-01-01T00:00:00Z"),
            cond("Programmed", "False", "2026-01-01T00:00:00Z"),
        ];
        let mut new = vec![
            cond("Accepted", "True", ""),
            cond("Programmed", "True", ""),
            cond("ResolvedRefs", "True", ""),
        ];
        keep_times(&mut new, &old, "2026-02-02T00:00:00Z");
        assert_eq!(new[0].last_transition_time, "2026-01-01T00:00:00Z");
        assert_eq!(new[1].last_transition_time, "2026-02-02T00:00:00Z");
        assert_eq!(new[2].last_transition_time, "2026-02-02T00:00:00Z");
    }

    #[test]
    fn other_controllers_route_parents_stay() {
        let parent = |name: &str, ctl: &str, at: &str| RouteParentStatus {
            parent_ref: ParentReference {
                name: name.into(),
                ..ParentReference::default()
            },
            controller_name: ctl.into(),
            conditions: vec![cond("Accepted", "True", at)],
        };
        let old = HTTPRouteStatus {
            parents: vec![
                parent("theirs", "other.example.com/gw", "2026-01-01T00:00:00Z"),
                parent(
                    "ours",
                    "lb.example.com/gateway-controller",
                    "2026-01-01T00:00:00Z",
                ),
            ],
        };
        let want = HTTPRouteStatus {
            parents: vec![parent("ours", "lb.example.com/gateway-controller", "")],
        };
        let got = route_status(
            &old,
            &want,
            "lb.example.com/gateway-controller",
            "2026-03-03T00:00:00Z",
        );
        // Nothing changed: the same status as before, so nothing is written.
        assert_eq!(got, old);
    }

    #[test]
    fn the_same_problem_names_the_same_event() {
        let snap = Snapshot::default();
        let p = ObjectProblem {
            kind: Kind::Ingress,
            key: ObjectKey::new("web", "shop"),
            reason: "InvalidAnnotation".into(),
            message: "bad".into(),
        };
        let a = event_for(&snap, &p, "2026-01-01T00:00:00Z");
        let b = event_for(&snap, &p, "2026-01-02T00:00:00Z");
        assert_eq!(a.metadata.name, b.metadata.name);
        assert_eq!(a.metadata.namespace.as_deref(), Some("web"));
        assert_eq!(a.type_.as_deref(), Some("Warning"));
        assert_eq!(a.involved_object.kind.as_deref(), Some("Ingress"));
        let other = ObjectProblem {
            message: "worse".into(),
            ..p
        };
        assert_ne!(
            a.metadata.name,
            event_for(&snap, &other, "2026-01-01T00:00:00Z")
                .metadata
                .name
        );
    }

    #[test]
    fn events_name_their_object_by_api_version_and_uid() {
        let mut snap = Snapshot::default();
        let mut ing = Ingress::default();
        ing.metadata.uid = Some("u-1".into());
        snap.ingresses.insert(ObjectKey::new("web", "shop"), ing);
        let at = |kind, key: ObjectKey| {
            let p = ObjectProblem {
                kind,
                key,
                reason: "R".into(),
                message: "m".into(),
            };
            event_for(&snap, &p, "2026-01-01T00:00:00Z").involved_object
        };
        let o = at(Kind::Ingress, ObjectKey::new("web", "shop"));
        assert_eq!(o.api_version.as_deref(), Some("networking.k8s.io/v1"));
        assert_eq!(o.uid.as_deref(), Some("u-1"));
        for (kind, want) in [
            (Kind::IngressClass, "networking.k8s.io/v1"),
            (Kind::Service, "v1"),
            (Kind::EndpointSlice, "discovery.k8s.io/v1"),
            (Kind::Secret, "v1"),
            (Kind::GatewayClass, "gateway.networking.k8s.io/v1"),
            (Kind::Gateway, "gateway.networking.k8s.io/v1"),
            (Kind::HttpRoute, "gateway.networking.k8s.io/v1"),
        ] {
            let o = at(kind, ObjectKey::new("web", "absent"));
            assert_eq!(o.api_version.as_deref(), Some(want), "{kind:?}");
            assert_eq!(o.uid, None, "{kind:?}: not in the snapshot");
        }
    }
}

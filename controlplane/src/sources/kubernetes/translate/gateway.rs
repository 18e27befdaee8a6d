//! Gateway API: GatewayClass, Gateway, HTTPRoute -> one `[[http]]` per Gateway and port
//! (`gw:<namespace>:<name>:<port>`), and the status the spec asks for.
//!
//! - GatewayClass of our controller: Accepted.
//! - Gateway of such a class: an address (`spec.addresses`, which must be one of
//!   `Settings::gateway_addresses`, else the first free one), listeners HTTP and HTTPS (TLS
//!   terminated with Secrets of the Gateway's namespace; other namespaces need a
//!   ReferenceGrant, which is not supported); `allowedRoutes` Same, All or Selector (the
//!   route's Namespace labels).
//! - HTTPRoute: attaches to the listeners its parentRefs name that allow it and whose hostname
//!   intersects its hostnames; rules become Gateway routes (Exact and PathPrefix paths, method,
//!   exact header matches, weighted backendRefs, the RequestHeaderModifier and RequestRedirect
//!   filters). A rule with a backendRef that does not resolve answers 500 (the L7 core's
//!   reading of the spec: the whole rule, not a share).
//!
//! Oldest first everywhere (creation time, then namespace and name): addresses, and a rule
//! matching exactly what an older one matches loses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use dataplane::l7::filters;

use super::common::{age, check_host, check_path, selects, EndpointIndex, PortRef, Problems};
use super::tls::secret_pem;
use super::upstreams::{Resolved, UpstreamSettings, Upstreams};
use super::{Kind, PemFile, Settings};
use crate::config::{
    HeaderModifier, Http, HttpLimits, HttpProxy, HttpTimeouts, PathType, Redirect, RedirectScheme,
    Route, RouteKind, TlsCert, UpstreamRef, MAX_HTTP_WEIGHT,
};
use crate::sources::kubernetes::annotations::{is_token, quote};
use crate::sources::kubernetes::model::{
    Condition, Gateway, GatewayAddress, GatewayClassStatus, GatewayStatus, HTTPBackendRef,
    HTTPHeaderFilter, HTTPRequestRedirectFilter, HTTPRoute, HTTPRouteRule, HTTPRouteStatus,
    Listener, ListenerStatus, ObjectKey, RouteGroupKind, RouteParentStatus, Snapshot,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The Gateway API group.
const GROUP: &str = "gateway.networking.k8s.io";
/// Most listeners of a Gateway (the CRD's own bound).
const MAX_LISTENERS: usize = 64;
/// Most rules, matches per rule, backendRefs per rule of an HTTPRoute (the CRD's bounds are
/// 16, 64 and 16: these only stop a hostile object before it is expanded).
const MAX_RULES: usize = 64;
const MAX_MATCHES: usize = 64;
const MAX_BACKEND_REFS: usize = 64;
const MAX_HOSTNAMES: usize = 64;
const MAX_PARENTS: usize = 32;

/// What the Gateway API objects give.
#[derive(Default)]
pub struct GatewayOut {
    /// One `[[http]]` per (Gateway, port).
    pub http: Vec<Http>,
    /// Certificates.
    pub pem_files: Vec<PemFile>,
    /// GatewayClass status.
    pub gateway_classes: Vec<(String, GatewayClassStatus)>,
    /// Gateway status.
    pub gateways: Vec<(ObjectKey, GatewayStatus)>,
    /// HTTPRoute status.
    pub http_routes: Vec<(ObjectKey, HTTPRouteStatus)>,
}

/// The name of the `[[http]]` of a Gateway's port.
pub fn http_name(gw: &ObjectKey, port: u16) -> String {
    format!("gw:{}:{}:{port}", gw.namespace, gw.name)
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: String::new(),
    }
}

/// Conditions equal but for their transition times (which the writer fills).
fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

/// One listener as served.
struct ListenerState {
    /// Accepted and programmable (valid protocol, hostname, certificates).
    ok: bool,
    hostname: Option<String>,
    /// `allowedRoutes.namespaces.from`: Same, All or Selector (others: none).
    from: String,
    /// `from: Selector`: the namespaces' labels it takes (`None`: none, an invalid selector).
    selector: Option<LabelSelector>,
    conditions: Vec<Condition>,
    attached: i32,
    certs: Vec<TlsCert>,
}

/// One Gateway of ours.
struct GwState<'a> {
    key: ObjectKey,
    gw: &'a Gateway,
    addr: Option<IpAddr>,
    address_problem: Option<(&'static str, String)>,
    listeners: Vec<ListenerState>,
}

/// A rule match, ready for a route.
#[derive(Clone)]
struct MatchDraft {
    path: String,
    path_type: PathType,
    method: Option<String>,
    headers: BTreeMap<String, String>,
}

/// What the Gateway API objects of `snap` mean.
pub fn translate(snap: &Snapshot, settings: &Settings, problems: &mut Problems) -> GatewayOut {
    let mut out = GatewayOut::default();
    let classes: BTreeSet<&str> = snap
        .gateway_classes
        .iter()
        .filter(|(_, c)| c.spec.controller_name == settings.gateway_controller)
        .map(|(n, _)| n.as_str())
        .collect();
    for name in &classes {
        let c = &snap.gateway_classes[*name];
        let want = vec![condition(
            "Accepted",
            true,
            "Accepted",
            "",
            c.metadata.generation,
        )];
        let current = c.status.as_ref().map(|s| &s.conditions[..]).unwrap_or(&[]);
        if !same_conditions(current, &want) {
            out.gateway_classes
                .push((name.to_string(), GatewayClassStatus { conditions: want }));
        }
    }
    let mut gws: Vec<(&ObjectKey, &Gateway)> = Vec::new();
    for (key, g) in &snap.gateways {
        if !classes.contains(g.spec.gateway_class_name.as_str()) {
            continue;
        }
        if g.spec.listeners.len() > MAX_LISTENERS {
            problems.push(
                Kind::Gateway,
                key,
                "TooLarge",
                format!("more than {MAX_LISTENERS} listeners: skipped"),
            );
            continue;
        }
        gws.push((key, g));
    }
    if gws.is_empty() {
        return out;
    }
    gws.sort_by_cached_key(|(_, g)| age(&g.metadata));
    let mut states = addresses(&gws, settings);
    for st in &mut states {
        listeners(snap, settings, st, problems, &mut out.pem_files);
    }
    let eps = EndpointIndex::new(snap);
    // Per (gateway index, port): routes and their match keys (to drop exact duplicates).
    let mut routes: BTreeMap<(usize, u16), (Vec<Route>, Upstreams)> = BTreeMap::new();
    let mut seen: BTreeSet<(usize, u16, String)> = BTreeSet::new();
    let mut rlist: Vec<(&ObjectKey, &HTTPRoute)> = snap.http_routes.iter().collect();
    rlist.sort_by_cached_key(|(_, r)| age(&r.metadata));
    for (rkey, route) in rlist {
        let gen = route.metadata.generation;
        let mut parents: Vec<RouteParentStatus> = Vec::new();
        if route.spec.parent_refs.len() > MAX_PARENTS
            || route.spec.rules.len() > MAX_RULES
            || route.spec.hostnames.len() > MAX_HOSTNAMES
        {
            problems.push(
                Kind::HttpRoute,
                rkey,
                "TooLarge",
                format!(
                    "more than {MAX_PARENTS} parentRefs, {MAX_RULES} rules or {MAX_HOSTNAMES} hostnames: skipped"
                ),
            );
            continue;
        }
        // Hostnames: invalid ones are dropped (never widened to "any").
        let mut hostnames: Vec<String> = Vec::new();
        for h in &route.spec.hostnames {
            match check_host(h) {
                Ok(h) => hostnames.push(h),
                Err(why) => problems.push(Kind::HttpRoute, rkey, "InvalidHostname", why),
            }
        }
        let declared = !route.spec.hostnames.is_empty();
        let (rules, refs_ok) = rules(snap, rkey, &route.spec.rules, problems);
        for pref in &route.spec.parent_refs {
            let group = pref.group.as_deref().unwrap_or(GROUP);
            let kind = pref.kind.as_deref().unwrap_or("Gateway");
            if group != GROUP || kind != "Gateway" {
                continue;
            }
            let gkey = ObjectKey::new(
                pref.namespace
                    .clone()
                    .unwrap_or_else(|| rkey.namespace.clone()),
                pref.name.clone(),
            );
            let Some(gi) = states.iter().position(|s| s.key == gkey) else {
                continue;
            };
            let st = &mut states[gi];
            let status = |ok: bool, reason: &str, message: &str| {
                condition("Accepted", ok, reason, message, gen)
            };
            let candidates: Vec<usize> = st
                .gw
                .spec
                .listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    pref.section_name.as_ref().is_none_or(|s| *s == l.name)
                        && pref.port.is_none_or(|p| p == l.port)
                })
                .map(|(i, _)| i)
                .collect();
            let accepted = if candidates.is_empty() {
                status(
                    false,
                    "NoMatchingParent",
                    "no listener has this sectionName or port",
                )
            } else {
                let allowed: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let l = &st.listeners[i];
                        l.ok && match l.from.as_str() {
                            "All" => true,
                            "Same" => rkey.namespace == st.key.namespace,
                            "Selector" => l.selector.as_ref().is_some_and(|sel| {
                                let labels = snap
                                    .namespaces
                                    .get(&rkey.namespace)
                                    .and_then(|n| n.metadata.labels.as_ref());
                                selects(sel, labels) == Ok(true)
                            }),
                            _ => false,
                        }
                    })
                    .collect();
                let mut attached: Vec<(usize, Vec<String>)> = Vec::new();
                for &i in &allowed {
                    let lh = st.listeners[i].hostname.as_deref();
                    if let Some(hosts) = intersect(lh, &hostnames, declared) {
                        attached.push((i, hosts));
                    }
                }
                if allowed.is_empty() {
                    status(
                        false,
                        "NotAllowedByListeners",
                        "no listener allows this route",
                    )
                } else if attached.is_empty() {
                    status(
                        false,
                        "NoMatchingListenerHostname",
                        "no hostname intersects a listener's",
                    )
                } else {
                    // Per port: the union of the hosts (any host wins).
                    let mut by_port: BTreeMap<u16, Option<BTreeSet<String>>> = BTreeMap::new();
                    for (i, hosts) in &attached {
                        st.listeners[*i].attached += 1;
                        let port = st.gw.spec.listeners[*i].port;
                        let e = by_port.entry(port).or_insert_with(|| Some(BTreeSet::new()));
                        match (e.as_mut(), hosts.is_empty()) {
                            (Some(_), true) => *e = None,
                            (Some(set), false) => set.extend(hosts.iter().cloned()),
                            (None, _) => {}
                        }
                    }
                    if st.addr.is_some() {
                        for (port, hosts) in by_port {
                            let hosts: Vec<String> =
                                hosts.map(|h| h.into_iter().collect()).unwrap_or_default();
                            let (list, ups) = routes.entry((gi, port)).or_default();
                            emit(
                                snap, &eps, rkey, &rules, &hosts, list, ups, &mut seen, gi, port,
                                problems,
                            );
                        }
                    }
                    status(true, "Accepted", "")
                }
            };
            let resolved = match &refs_ok {
                Ok(()) => condition("ResolvedRefs", true, "ResolvedRefs", "", gen),
                Err((reason, message)) => condition("ResolvedRefs", false, reason, message, gen),
            };
            parents.push(RouteParentStatus {
                parent_ref: pref.clone(),
                controller_name: settings.gateway_controller.clone(),
                conditions: vec![accepted, resolved],
            });
        }
        if parents.is_empty() {
            continue;
        }
        let current: Vec<&RouteParentStatus> = route
            .status
            .as_ref()
            .map(|s| {
                s.parents
                    .iter()
                    .filter(|p| p.controller_name == settings.gateway_controller)
                    .collect()
            })
            .unwrap_or_default();
        let same = current.len() == parents.len()
            && current.iter().zip(&parents).all(|(a, b)| {
                a.parent_ref == b.parent_ref && same_conditions(&a.conditions, &b.conditions)
            });
        if !same {
            out.http_routes
                .push((rkey.clone(), HTTPRouteStatus { parents }));
        }
    }

    for (gi, st) in states.iter().enumerate() {
        if let Some(addr) = st.addr {
            let ports: BTreeSet<u16> = st
                .gw
                .spec
                .listeners
                .iter()
                .zip(&st.listeners)
                .filter(|(_, s)| s.ok)
                .map(|(l, _)| l.port)
                .collect();
            for port in ports {
                let (list, ups) = routes.remove(&(gi, port)).unwrap_or_default();
                let mut tls: Vec<TlsCert> = Vec::new();
                let mut names: BTreeSet<String> = BTreeSet::new();
                for (l, s) in st.gw.spec.listeners.iter().zip(&st.listeners) {
                    if l.port != port || !s.ok {
                        continue;
                    }
                    for c in &s.certs {
                        let mut c = c.clone();
                        c.sni.retain(|n| names.insert(n.clone()));
                        if !tls.iter().any(|t| t.cert == c.cert) {
                            tls.push(c);
                        }
                    }
                }
                out.http.push(Http {
                    name: http_name(&st.key, port),
                    listen: vec![SocketAddr::new(addr, port)],
                    tls,
                    timeouts: HttpTimeouts::default(),
                    limits: HttpLimits::default(),
                    proxy: HttpProxy::default(),
                    upstreams: ups.into_vec(),
                    routes: list,
                    default_upstream: None,
                });
            }
        }
        let gen = st.gw.metadata.generation;
        let (programmed, reason, message) = match (&st.address_problem, st.addr) {
            (Some((r, m)), _) => (false, *r, m.clone()),
            (None, None) => (
                false,
                "AddressNotAssigned",
                "no address is free".to_string(),
            ),
            (None, Some(_)) => (true, "Programmed", String::new()),
        };
        let want = GatewayStatus {
            addresses: st
                .addr
                .map(|a| GatewayAddress {
                    type_: Some("IPAddress".into()),
                    value: a.to_string(),
                })
                .into_iter()
                .collect(),
            conditions: vec![
                condition("Accepted", true, "Accepted", "", gen),
                condition("Programmed", programmed, reason, &message, gen),
            ],
            listeners: st
                .gw
                .spec
                .listeners
                .iter()
                .zip(&st.listeners)
                .map(|(l, s)| ListenerStatus {
                    name: l.name.clone(),
                    supported_kinds: vec![RouteGroupKind {
                        group: Some(GROUP.into()),
                        kind: "HTTPRoute".into(),
                    }],
                    attached_routes: s.attached,
                    conditions: s.conditions.clone(),
                })
                .collect(),
        };
        let same = st.gw.status.as_ref().is_some_and(|c| {
            c.addresses == want.addresses
                && same_conditions(&c.conditions, &want.conditions)
                && c.listeners.len() == want.listeners.len()
                && c.listeners.iter().zip(&want.listeners).all(|(a, b)| {
                    a.name == b.name
                        && a.attached_routes == b.attached_routes
                        && a.supported_kinds == b.supported_kinds
                        && same_conditions(&a.conditions, &b.conditions)
                })
        });
        if !same {
            out.gateways.push((st.key.clone(), want));
        }
    }
    out
}

/// Addresses for the Gateways (oldest first): the requested one if it is ours and free, the
/// one in the status if still ours and free, else the first free.
fn addresses<'a>(gws: &[(&ObjectKey, &'a Gateway)], settings: &Settings) -> Vec<GwState<'a>> {
    let ingress: BTreeSet<IpAddr> = settings
        .ingress_http
        .iter()
        .chain(&settings.ingress_https)
        .map(|s| s.ip())
        .collect();
    let usable = |a: &IpAddr| settings.gateway_addresses.contains(a) && !ingress.contains(a);
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    let mut states: Vec<GwState<'a>> = Vec::new();
    for (key, gw) in gws {
        let mut st = GwState {
            key: (*key).clone(),
            gw,
            addr: None,
            address_problem: None,
            listeners: Vec::new(),
        };
        if let Some(req) = gw.spec.addresses.first() {
            let ip = (req.type_.as_deref().unwrap_or("IPAddress") == "IPAddress")
                .then(|| req.value.parse::<IpAddr>().ok())
                .flatten();
            match ip {
                Some(a) if usable(&a) && !used.contains(&a) => {
                    used.insert(a);
                    st.addr = Some(a);
                }
                _ => {
                    st.address_problem = Some((
                        "AddressNotUsable",
                        format!(
                            "address {} is not one this controller may use, or is taken",
                            quote(&req.value)
                        ),
                    ))
                }
            }
        } else {
            let sticky = gw
                .status
                .as_ref()
                .and_then(|s| s.addresses.first())
                .and_then(|a| a.value.parse::<IpAddr>().ok())
                .filter(|a| usable(a) && !used.contains(a));
            if let Some(a) = sticky {
                used.insert(a);
                st.addr = Some(a);
            }
        }
        states.push(st);
    }
    for st in states
        .iter_mut()
        .filter(|s| s.addr.is_none() && s.address_problem.is_none())
    {
        st.addr = settings
            .gateway_addresses
            .iter()
            .copied()
            .find(|a| usable(a) && !used.contains(a));
        if let Some(a) = st.addr {
            used.insert(a);
        }
    }
    states
}

/// Each listener's state and conditions; certificates of HTTPS listeners.
fn listeners(
    snap: &Snapshot,
    settings: &Settings,
    st: &mut GwState<'_>,
    problems: &mut Problems,
    pem_files: &mut Vec<PemFile>,
) {
    let gen = st.gw.metadata.generation;
    let mut protocols: BTreeMap<u16, &str> = BTreeMap::new();
    for l in &st.gw.spec.listeners {
        let mut ok = true;
        let mut accepted = condition("Accepted", true, "Accepted", "", gen);
        let mut resolved = condition("ResolvedRefs", true, "ResolvedRefs", "", gen);
        let mut certs = Vec::new();
        let mut conflicted = None;
        if l.port == 0 || !matches!(l.protocol.as_str(), "HTTP" | "HTTPS") {
            ok = false;
            accepted = condition(
                "Accepted",
                false,
                "UnsupportedProtocol",
                "only HTTP and HTTPS listeners are supported",
                gen,
            );
        } else if let Some(&p) = protocols.get(&l.port).filter(|p| **p != l.protocol) {
            ok = false;
            accepted = condition("Accepted", false, "ProtocolConflict", "", gen);
            conflicted = Some(condition(
                "Conflicted",
                true,
                "ProtocolConflict",
                &format!("port {} is {p} on another listener", l.port),
                gen,
            ));
        } else {
            protocols.insert(l.port, l.protocol.as_str());
        }
        let hostname = match l.hostname.as_deref() {
            None => None,
            Some(h) => match check_host(h) {
                Ok(h) => Some(h),
                Err(why) => {
                    ok = false;
                    accepted = condition("Accepted", false, "Invalid", &why, gen);
                    None
                }
            },
        };
        let from = l
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.clone())
            .unwrap_or_else(|| "Same".into());
        let mut selector = None;
        if from == "Selector" {
            let sel = l
                .allowed_routes
                .as_ref()
                .and_then(|a| a.namespaces.as_ref())
                .and_then(|n| n.selector.clone());
            let checked = match &sel {
                None => Err("from Selector names no selector".to_string()),
                Some(s) => selects(s, None).map(|_| ()),
            };
            match checked {
                Ok(()) => selector = sel,
                Err(why) => problems.push(
                    Kind::Gateway,
                    &st.key,
                    "InvalidSelector",
                    format!(
                        "listener {}: allowedRoutes {why}: no route attaches",
                        quote(&l.name)
                    ),
                ),
            }
        }
        if ok && l.protocol == "HTTPS" {
            let (c, problem) = listener_certs(snap, settings, st, l, pem_files);
            certs = c;
            if let Some((reason, message)) = problem {
                resolved = condition("ResolvedRefs", false, reason, &message, gen);
            }
            if certs.is_empty() {
                ok = false;
            }
        }
        let programmed = if ok && st.addr.is_some() {
            condition("Programmed", true, "Programmed", "", gen)
        } else {
            condition("Programmed", false, "Invalid", "", gen)
        };
        let mut conditions = vec![accepted, resolved, programmed];
        conditions.extend(conflicted);
        st.listeners.push(ListenerState {
            ok,
            hostname,
            from,
            selector,
            conditions,
            attached: 0,
            certs,
        });
    }
}

/// The certificates of an HTTPS listener and, if a ref did not resolve, the condition's reason.
fn listener_certs(
    snap: &Snapshot,
    settings: &Settings,
    st: &GwState<'_>,
    l: &Listener,
    pem_files: &mut Vec<PemFile>,
) -> (Vec<TlsCert>, Option<(&'static str, String)>) {
    let mut certs = Vec::new();
    let mut problem = None;
    let Some(tls) = l.tls.as_ref() else {
        return (
            certs,
            Some(("InvalidCertificateRef", "HTTPS without tls".into())),
        );
    };
    if tls.mode.as_deref().unwrap_or("Terminate") != "Terminate" {
        return (
            certs,
            Some((
                "InvalidCertificateRef",
                "only tls mode Terminate is supported".into(),
            )),
        );
    }
    for r in tls.certificate_refs.iter().take(16) {
        if !r.group.as_deref().unwrap_or("").is_empty()
            || r.kind.as_deref().unwrap_or("Secret") != "Secret"
        {
            problem = Some((
                "InvalidCertificateRef",
                format!("{} is not a Secret", quote(&r.name)),
            ));
            continue;
        }
        let ns = r
            .namespace
            .clone()
            .unwrap_or_else(|| st.key.namespace.clone());
        if ns != st.key.namespace {
            problem = Some((
                "RefNotPermitted",
                "Secrets of other namespaces need a ReferenceGrant, which is not supported".into(),
            ));
            continue;
        }
        let pem = match snap.secrets.get(&ObjectKey::new(ns, r.name.clone())) {
            None => Err("not found".to_string()),
            Some(s) => secret_pem(s, &settings.secrets_dir),
        };
        match pem {
            Ok(p) => {
                certs.push(TlsCert {
                    cert: p.cert.path.clone(),
                    key: p.key.path.clone(),
                    sni: l
                        .hostname
                        .iter()
                        .filter_map(|h| check_host(h).ok())
                        .collect(),
                    default: false,
                });
                for f in [p.cert, p.key] {
                    if !pem_files.iter().any(|x| x.path == f.path) {
                        pem_files.push(f);
                    }
                }
            }
            Err(why) => {
                problem = Some((
                    "InvalidCertificateRef",
                    format!("Secret {}: {why}", quote(&r.name)),
                ))
            }
        }
    }
    // One certificate per listener is served (several would need different key types).
    certs.truncate(1);
    (certs, problem)
}

/// The hosts a route serves on a listener: `None` when they do not intersect; an empty list
/// for any host. Gateway API: `*.x` covers one or more labels.
fn intersect(listener: Option<&str>, route: &[String], declared: bool) -> Option<Vec<String>> {
    if declared && route.is_empty() {
        // Every declared hostname was invalid: never widen to any host.
        return None;
    }
    let Some(l) = listener else {
        return Some(route.to_vec());
    };
    if route.is_empty() {
        return Some(vec![l.to_string()]);
    }
    let mut out: Vec<String> = Vec::new();
    for h in route {
        let pick = if within(l, h) {
            Some(h.as_str())
        } else if within(h, l) {
            Some(l)
        } else {
            None
        };
        if let Some(p) = pick {
            if !out.iter().any(|x| x == p) {
                out.push(p.to_string());
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Every name `inner` covers is covered by `outer`.
fn within(outer: &str, inner: &str) -> bool {
    if outer == inner {
        return true;
    }
    match outer.strip_prefix('*') {
        Some(suffix) => inner.len() > suffix.len() && inner.ends_with(suffix),
        None => false,
    }
}

/// One rule, ready: its matches, and its backendRefs resolved to (namespace, Service, port,
/// weight), or `None` when one does not resolve (the rule answers 500).
struct RuleDraft {
    matches: Vec<MatchDraft>,
    refs: Option<Vec<(String, String, u16, u32)>>,
    redirect: Option<Redirect>,
    request_headers: Option<HeaderModifier>,
}

/// The rules of a route, and whether every backendRef resolved (else the ResolvedRefs reason).
fn rules(
    snap: &Snapshot,
    rkey: &ObjectKey,
    spec: &[HTTPRouteRule],
    problems: &mut Problems,
) -> (Vec<RuleDraft>, Result<(), (&'static str, String)>) {
    let mut out = Vec::new();
    let mut refs_ok: Result<(), (&'static str, String)> = Ok(());
    for (ri, rule) in spec.iter().enumerate() {
        if rule.matches.len() > MAX_MATCHES || rule.backend_refs.len() > MAX_BACKEND_REFS {
            problems.push(
                Kind::HttpRoute,
                rkey,
                "TooLarge",
                format!("rule {ri}: too many matches or backendRefs: skipped"),
            );
            continue;
        }
        let mut skip = false;
        let mut redirect: Option<Redirect> = None;
        let mut request_headers: Option<HeaderModifier> = None;
        for f in rule.filters.iter().take(16) {
            match f.type_.as_str() {
                "RequestHeaderModifier" if request_headers.is_none() => {
                    match f.request_header_modifier.as_ref() {
                        Some(m) => {
                            request_headers = Some(header_modifier(m, rkey, ri, problems));
                        }
                        None => skip = true,
                    }
                }
                "RequestRedirect" if redirect.is_none() => {
                    match f.request_redirect.as_ref().map(to_redirect) {
                        Some(Ok(r)) => redirect = Some(r),
                        Some(Err(why)) => {
                            problems.push(
                                Kind::HttpRoute,
                                rkey,
                                "InvalidFilter",
                                format!("rule {ri}: RequestRedirect {why}: the rule is not served"),
                            );
                            skip = true;
                        }
                        None => skip = true,
                    }
                }
                other => {
                    problems.push(
                        Kind::HttpRoute,
                        rkey,
                        "NotSupported",
                        format!(
                            "rule {ri}: filter {} is not supported (or given twice): the rule is not served",
                            quote(other)
                        ),
                    );
                    skip = true;
                }
            }
        }
        if skip {
            continue;
        }
        if redirect.is_some() {
            // A redirect answers the request: nothing is sent on, so no header changes.
            request_headers = None;
        }
        let mut matches = Vec::new();
        let default_match = [Default::default()];
        let specs = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        'm: for m in specs {
            let (path, path_type) = match &m.path {
                None => ("/".to_string(), PathType::Prefix),
                Some(p) => {
                    let v = p.value.clone().unwrap_or_else(|| "/".into());
                    let t = match p.type_.as_deref().unwrap_or("PathPrefix") {
                        "Exact" => PathType::Exact,
                        "PathPrefix" => PathType::Prefix,
                        other => {
                            problems.push(Kind::HttpRoute, rkey, "NotSupported", format!("rule {ri}: path match {} is not supported: that match is not accepted", quote(other)));
                            continue 'm;
                        }
                    };
                    (v, t)
                }
            };
            if let Err(why) = check_path(&path) {
                problems.push(
                    Kind::HttpRoute,
                    rkey,
                    "InvalidPath",
                    format!("rule {ri}: {why}"),
                );
                continue;
            }
            let mut headers = BTreeMap::new();
            let mut lower = BTreeSet::new();
            for h in m.headers.iter().take(16) {
                if h.type_.as_deref().unwrap_or("Exact") != "Exact" {
                    problems.push(Kind::HttpRoute, rkey, "NotSupported", format!("rule {ri}: header match type {} is not supported: that match is not accepted", quote(h.type_.as_deref().unwrap_or(""))));
                    continue 'm;
                }
                let ok_value = !h.value.is_empty()
                    && h.value.len() <= 4096
                    && h.value
                        .bytes()
                        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic());
                if !is_token(&h.name) || h.name.len() > 256 || !ok_value {
                    problems.push(
                        Kind::HttpRoute,
                        rkey,
                        "InvalidHeader",
                        format!(
                            "rule {ri}: header {} value {}: not a header name and visible value",
                            quote(&h.name),
                            quote(&h.value)
                        ),
                    );
                    continue 'm;
                }
                // The first of names equal but for case wins (Gateway API).
                if lower.insert(h.name.to_ascii_lowercase()) {
                    headers.insert(h.name.clone(), h.value.clone());
                }
            }
            let method = match &m.method {
                Some(x) if !is_token(x) || x.len() > 32 => {
                    problems.push(
                        Kind::HttpRoute,
                        rkey,
                        "InvalidMethod",
                        format!("rule {ri}: method {} is not a method", quote(x)),
                    );
                    continue;
                }
                x => x.clone(),
            };
            matches.push(MatchDraft {
                path,
                path_type,
                method,
                headers,
            });
        }
        if matches.is_empty() {
            continue;
        }
        let mut refs: Option<Vec<(String, String, u16, u32)>> = Some(Vec::new());
        for b in &rule.backend_refs {
            match check_ref(snap, rkey, b) {
                Ok(r) => {
                    if let Some(v) = refs.as_mut() {
                        v.push(r);
                    }
                }
                Err(e) => {
                    if refs_ok.is_ok() {
                        refs_ok = Err(e);
                    }
                    refs = None;
                }
            }
        }
        if redirect.as_ref().is_some_and(|r| r.path_prefix.is_some()) {
            let before = matches.len();
            matches.retain(|m| m.path_type != PathType::Exact);
            if matches.len() < before {
                problems.push(
                    Kind::HttpRoute,
                    rkey,
                    "InvalidFilter",
                    format!("rule {ri}: ReplacePrefixMatch on an Exact path match: that match is not accepted"),
                );
            }
            if matches.is_empty() {
                continue;
            }
        }
        out.push(RuleDraft {
            matches,
            refs,
            redirect,
            request_headers,
        });
    }
    (out, refs_ok)
}

/// A RequestHeaderModifier as lb takes it: each entry checked by the core's own rules; an
/// entry the core refuses (a field the proxy owns, like Host; a bad name or value; a name given
/// twice) is left out and reported.
fn header_modifier(
    m: &HTTPHeaderFilter,
    rkey: &ObjectKey,
    ri: usize,
    problems: &mut Problems,
) -> HeaderModifier {
    let mut out = HeaderModifier::default();
    let bad = |what: String, problems: &mut Problems| {
        problems.push(
            Kind::HttpRoute,
            rkey,
            "InvalidFilter",
            format!("rule {ri}: RequestHeaderModifier {what}: left out"),
        )
    };
    for (list, entries) in [("set", &m.set), ("add", &m.add)] {
        let mut lower = BTreeSet::new();
        for h in entries.iter().take(16) {
            let one = filters::HeaderModifier {
                set: vec![(h.name.clone(), h.value.clone())],
                ..Default::default()
            };
            if let Err(e) = one.check() {
                bad(
                    format!("{list} {}: {}", quote(&h.name), quote(&e.to_string())),
                    problems,
                );
            } else if !lower.insert(h.name.to_ascii_lowercase()) {
                bad(format!("{list} {} given twice", quote(&h.name)), problems);
            } else {
                let target = if list == "set" {
                    &mut out.set
                } else {
                    &mut out.add
                };
                target.insert(h.name.clone(), h.value.clone());
            }
        }
    }
    let mut lower = BTreeSet::new();
    for name in m.remove.iter().take(16) {
        let one = filters::HeaderModifier {
            remove: vec![name.clone()],
            ..Default::default()
        };
        if let Err(e) = one.check() {
            bad(
                format!("remove {}: {}", quote(name), quote(&e.to_string())),
                problems,
            );
        } else if lower.insert(name.to_ascii_lowercase()) {
            out.remove.push(name.clone());
        }
    }
    out
}

/// A RequestRedirect as lb takes it (checked by the core's rules), or why not.
fn to_redirect(r: &HTTPRequestRedirectFilter) -> Result<Redirect, String> {
    let scheme = match r.scheme.as_deref() {
        None => None,
        Some("http") => Some(RedirectScheme::Http),
        Some("https") => Some(RedirectScheme::Https),
        Some(other) => return Err(format!("scheme {} is not http or https", quote(other))),
    };
    let status = r.status_code.unwrap_or(302);
    if status != 301 && status != 302 {
        return Err(format!("status {status} is not 301 or 302"));
    }
    let (path, path_prefix) = match &r.path {
        None => (None, None),
        Some(p) => match p.type_.as_str() {
            "ReplaceFullPath" => (Some(p.replace_full_path.clone().unwrap_or_default()), None),
            "ReplacePrefixMatch" => (
                None,
                Some(p.replace_prefix_match.clone().unwrap_or_default()),
            ),
            other => return Err(format!("path type {} is not supported", quote(other))),
        },
    };
    let core = filters::Redirect {
        scheme: None,
        host: r.hostname.clone(),
        port: r.port,
        path: match (&path, &path_prefix) {
            (Some(p), _) => Some(filters::PathRewrite::ReplaceFull(p.clone())),
            (None, Some(p)) => Some(filters::PathRewrite::ReplacePrefix(p.clone())),
            (None, None) => None,
        },
        status: filters::RedirectStatus::default(),
    };
    core.check().map_err(|e| quote(&e.to_string()))?;
    Ok(Redirect {
        scheme,
        host: r.hostname.clone(),
        port: r.port,
        path,
        path_prefix,
        status,
    })
}

/// A backendRef -> (namespace, Service, port, weight), or the ResolvedRefs reason.
fn check_ref(
    snap: &Snapshot,
    rkey: &ObjectKey,
    b: &HTTPBackendRef,
) -> Result<(String, String, u16, u32), (&'static str, String)> {
    if !b.group.as_deref().unwrap_or("").is_empty()
        || b.kind.as_deref().unwrap_or("Service") != "Service"
    {
        return Err((
            "InvalidKind",
            format!("backendRef {} is not a Service", quote(&b.name)),
        ));
    }
    let ns = b
        .namespace
        .clone()
        .unwrap_or_else(|| rkey.namespace.clone());
    if ns != rkey.namespace {
        return Err((
            "RefNotPermitted",
            "Services of other namespaces need a ReferenceGrant, which is not supported".into(),
        ));
    }
    let Some(port) = b.port else {
        return Err((
            "BackendNotFound",
            format!("backendRef {} has no port", quote(&b.name)),
        ));
    };
    let svc = snap
        .services
        .get(&ObjectKey::new(ns.clone(), b.name.clone()))
        .ok_or_else(|| {
            (
                "BackendNotFound",
                format!("Service {} not found", quote(&b.name)),
            )
        })?;
    if super::common::service_port(svc, &PortRef::Number(i32::from(port))).is_none() {
        return Err((
            "BackendNotFound",
            format!("Service {} has no port {port}", quote(&b.name)),
        ));
    }
    Ok((
        ns,
        b.name.clone(),
        port,
        b.weight.unwrap_or(1).min(MAX_HTTP_WEIGHT),
    ))
}

/// Adds a route's rules (with `hosts`) to the routes of one `[[http]]`.
#[allow(clippy::too_many_arguments)]
fn emit(
    snap: &Snapshot,
    eps: &EndpointIndex<'_>,
    rkey: &ObjectKey,
    rules: &[RuleDraft],
    hosts: &[String],
    list: &mut Vec<Route>,
    ups: &mut Upstreams,
    seen: &mut BTreeSet<(usize, u16, String)>,
    gi: usize,
    port: u16,
    problems: &mut Problems,
) {
    for rule in rules {
        let upstreams: Vec<UpstreamRef> = match &rule.refs {
            _ if rule.redirect.is_some() => Vec::new(),
            None => Vec::new(),
            Some(refs) => {
                let mut v: Vec<UpstreamRef> = Vec::new();
                for (ns, name, p, w) in refs {
                    let r = ups.resolve(
                        snap,
                        eps,
                        ns,
                        name,
                        &PortRef::Number(i32::from(*p)),
                        &UpstreamSettings::default(),
                    );
                    if let Ok((Resolved::Upstream(n), _)) = r {
                        match v.iter_mut().find(|u| u.name == n) {
                            Some(u) => u.weight = (u.weight + w).min(MAX_HTTP_WEIGHT),
                            None => v.push(UpstreamRef {
                                name: n,
                                weight: *w,
                            }),
                        }
                    }
                }
                if v.iter().all(|u| u.weight == 0) {
                    v.clear();
                }
                v
            }
        };
        for m in &rule.matches {
            let mut sorted: Vec<&String> = hosts.iter().collect();
            sorted.sort();
            let key = format!(
                "{sorted:?}|{}|{}|{:?}|{:?}",
                m.path,
                m.path_type == PathType::Exact,
                m.method,
                m.headers
            );
            if !seen.insert((gi, port, key)) {
                problems.push(
                    Kind::HttpRoute,
                    rkey,
                    "Conflict",
                    format!(
                        "a match of path {} is already served by an older rule: ignored",
                        quote(&m.path)
                    ),
                );
                continue;
            }
            list.push(Route {
                kind: RouteKind::Gateway,
                hosts: hosts.to_vec(),
                path: m.path.clone(),
                path_type: m.path_type,
                method: m.method.clone(),
                headers: m.headers.clone(),
                cookies: BTreeMap::new(),
                upstreams: upstreams.clone(),
                redirect: rule.redirect.clone(),
                request_headers: rule.request_headers.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_intersection() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(intersect(None, &[], false), Some(vec![]));
        assert_eq!(intersect(Some("a.com"), &[], false), Some(s(&["a.com"])));
        assert_eq!(
            intersect(Some("*.w.io"), &s(&["w.io", "x.w.io", "y.x.w.io"]), true),
            Some(s(&["x.w.io", "y.x.w.io"]))
        );
        assert_eq!(
            intersect(Some("v.s.com"), &s(&["*.s.com"]), true),
            Some(s(&["v.s.com"]))
        );
        assert_eq!(intersect(Some("a.com"), &s(&["b.com"]), true), None);
        assert_eq!(intersect(None, &[], true), None);
    }
}

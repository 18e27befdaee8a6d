//! IngressClass and Ingress -> one `[[http]]` `k8s-ingress` (plain) and, with certificates,
//! `k8s-ingress-tls`, both with the same routes and upstreams.
//!
//! Order decides conflicts: Ingresses are taken oldest first (creation time, then namespace and
//! name); a rule with the host, path and exactness of an earlier one, or a second default
//! backend, loses and is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};

use super::common::{age, check_host, check_path, distinct, EndpointIndex, PortRef, Problems};
use super::tls::secret_pem;
use super::upstreams::{Resolved, UpstreamSettings, Upstreams};
use super::{Kind, PemFile, Settings};
use crate::config::{
    Balance, HashKey, Http, HttpLimits, HttpProxy, HttpTimeouts, PathType, Redirect,
    RedirectScheme, Route, RouteKind, TlsCert, UpstreamRef, UpstreamTls,
};
use crate::sources::kubernetes::annotations::{
    self, quote, BackendProtocol, HashBy, IngressAnnotations,
};
use crate::sources::kubernetes::model::{ObjectKey, Snapshot};

/// Name of the plain `[[http]]`.
pub const HTTP_NAME: &str = "k8s-ingress";
/// Name of the TLS `[[http]]`.
pub const HTTPS_NAME: &str = "k8s-ingress-tls";
/// The IngressClass annotation that makes a class the default.
pub const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// The legacy class annotation of an Ingress.
pub const LEGACY_CLASS: &str = "kubernetes.io/ingress.class";
/// An Ingress with more paths than this is skipped.
pub const MAX_PATHS: usize = 1000;
/// An Ingress with more TLS entries than this is skipped.
const MAX_TLS: usize = 100;

/// What the Ingresses give.
#[derive(Default)]
pub struct IngressOut {
    /// `k8s-ingress` and perhaps `k8s-ingress-tls`.
    pub http: Vec<Http>,
    /// Certificates.
    pub pem_files: Vec<PemFile>,
    /// Ingress status addresses to write.
    pub statuses: Vec<(ObjectKey, Vec<IpAddr>)>,
}

/// One Ingress of ours that passed the size checks.
struct Ours<'a> {
    key: ObjectKey,
    ing: &'a Ingress,
    ann: IngressAnnotations,
}

/// A route being built, with the Ingress it came from.
struct Draft {
    route: Route,
    owner: ObjectKey,
}

/// Which of `snap`'s Ingresses are ours, oldest first.
fn ours<'a>(snap: &'a Snapshot, settings: &Settings, problems: &mut Problems) -> Vec<Ours<'a>> {
    let classes: BTreeSet<&str> = snap
        .ingress_classes
        .iter()
        .filter(|(_, c)| {
            c.spec.as_ref().and_then(|s| s.controller.as_deref())
                == Some(settings.ingress_controller.as_str())
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let has_default = classes.iter().any(|name| {
        snap.ingress_classes[*name]
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS))
            .is_some_and(|v| v == "true")
    });
    let mut list = Vec::new();
    for (key, ing) in &snap.ingresses {
        let class = ing
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
            .or_else(|| {
                ing.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(LEGACY_CLASS))
                    .map(String::as_str)
            });
        let mine = match class {
            Some(c) => classes.contains(c),
            None => has_default,
        };
        if !mine {
            continue;
        }
        if let Err(e) = annotations::check_size(ing.metadata.annotations.as_ref()) {
            problems.push(
                Kind::Ingress,
                key,
                "TooLarge",
                format!(
                    "annotations take {} bytes, more than {}: the Ingress is skipped",
                    e.bytes,
                    annotations::MAX_ANNOTATION_BYTES
                ),
            );
            continue;
        }
        let spec = ing.spec.as_ref();
        let rules = spec.and_then(|s| s.rules.as_deref()).unwrap_or_default();
        let paths: usize = rules
            .iter()
            .map(|r| r.http.as_ref().map_or(1, |h| h.paths.len().max(1)))
            .fold(0usize, usize::saturating_add);
        if paths > MAX_PATHS {
            problems.push(
                Kind::Ingress,
                key,
                "TooLarge",
                format!("{paths} paths, more than {MAX_PATHS}: the Ingress is skipped"),
            );
            continue;
        }
        let tls = spec.and_then(|s| s.tls.as_deref()).unwrap_or_default();
        if tls.len() > MAX_TLS {
            problems.push(
                Kind::Ingress,
                key,
                "TooLarge",
                format!(
                    "{} tls entries, more than {MAX_TLS}: the Ingress is skipped",
                    tls.len()
                ),
            );
            continue;
        }
        let (ann, ann_problems) = annotations::parse_ingress(ing.metadata.annotations.as_ref());
        for p in ann_problems {
            problems.push(Kind::Ingress, key, p.reason, p.message);
        }
        list.push(Ours {
            key: key.clone(),
            ing,
            ann,
        });
    }
    list.sort_by_cached_key(|o| age(&o.ing.metadata));
    list
}

/// How an Ingress's annotations set its upstreams.
fn upstream_settings(o: &Ours<'_>, problems: &mut Problems) -> UpstreamSettings {
    let mut s = UpstreamSettings::default();
    let key = match (&o.ann.affinity_cookie, &o.ann.hash_by) {
        // lb sets the affinity cookie on the first answer, as ingress-nginx does.
        (Some(cookie), _) => Some((Balance::Sticky, HashKey::Cookie(cookie.clone()))),
        (None, Some(HashBy::RemoteAddr)) => Some((Balance::Hash, HashKey::ClientIp)),
        (None, Some(HashBy::Header(h))) => Some((Balance::Hash, HashKey::Header(h.clone()))),
        (None, Some(HashBy::Cookie(c))) => Some((Balance::Hash, HashKey::Cookie(c.clone()))),
        (None, None) => None,
    };
    if let Some((balance, k)) = key {
        s.balance = balance;
        s.hash_key = Some(k);
    }
    if o.ann.backend_protocol == Some(BackendProtocol::Https) {
        // No CA can be named yet (proxy-ssl-secret is not supported): like ingress-nginx
        // (proxy-ssl-verify off by default), the backends' certificates are not verified.
        s.tls = Some(UpstreamTls {
            ca: None,
            server_name: None,
            insecure_skip_verify: true,
        });
        problems.push(
            Kind::Ingress,
            &o.key,
            "BackendNotVerified",
            "backend-protocol HTTPS: the backends' certificates are not verified (no CA can be given yet)",
        );
    }
    s
}

/// A Service backend of an Ingress -> an upstream reference (`None`: answer the error).
#[allow(clippy::too_many_arguments)]
fn backend_ref(
    snap: &Snapshot,
    eps: &EndpointIndex<'_>,
    upstreams: &mut Upstreams,
    o: &Ours<'_>,
    backend: &IngressBackend,
    settings: &UpstreamSettings,
    problems: &mut Problems,
) -> Option<String> {
    let Some(svc) = &backend.service else {
        problems.push(
            Kind::Ingress,
            &o.key,
            "UnsupportedBackend",
            "a resource backend is not supported: the path answers 503",
        );
        return None;
    };
    let port = match svc.port.as_ref() {
        Some(p) => match (&p.name, p.number) {
            (Some(name), _) if !name.is_empty() => PortRef::Name(name.clone()),
            (_, Some(n)) => PortRef::Number(n),
            _ => {
                problems.push(
                    Kind::Ingress,
                    &o.key,
                    "BackendNotFound",
                    format!("backend Service {} names no port", quote(&svc.name)),
                );
                return None;
            }
        },
        None => {
            problems.push(
                Kind::Ingress,
                &o.key,
                "BackendNotFound",
                format!("backend Service {} names no port", quote(&svc.name)),
            );
            return None;
        }
    };
    match upstreams.resolve(snap, eps, &o.key.namespace, &svc.name, &port, settings) {
        Ok((Resolved::Upstream(name), conflict)) => {
            if conflict {
                problems.push(
                    Kind::Ingress,
                    &o.key,
                    "UpstreamConflict",
                    format!(
                        "upstream {} is used by an older Ingress with other balancing or TLS annotations: those are kept",
                        quote(&name)
                    ),
                );
            }
            Some(name)
        }
        Ok((Resolved::NoEndpoints, _)) => None,
        Err(why) => {
            problems.push(
                Kind::Ingress,
                &o.key,
                "BackendNotFound",
                format!("{why}: the path answers 503"),
            );
            None
        }
    }
}

/// The identity of an Ingress route: host (empty: any), path, exact or not.
type MatchKey = (String, String, bool);

/// What the Ingresses of `snap` mean under `settings`.
pub fn translate(snap: &Snapshot, settings: &Settings, problems: &mut Problems) -> IngressOut {
    let list = ours(snap, settings, problems);
    let mut out = IngressOut::default();
    if list.is_empty() {
        return out;
    }
    let eps = EndpointIndex::new(snap);
    let mut upstreams = Upstreams::default();
    let mut drafts: Vec<Draft> = Vec::new();
    let mut index: BTreeMap<MatchKey, usize> = BTreeMap::new();
    let mut default_upstream: Option<(Option<String>, ObjectKey)> = None;
    let (mains, canaries): (Vec<&Ours<'_>>, Vec<&Ours<'_>>) =
        list.iter().partition(|o| !o.ann.canary.enabled);

    for o in &mains {
        let up_settings = upstream_settings(o, problems);
        let spec = o.ing.spec.as_ref();
        if let Some(b) = spec.and_then(|s| s.default_backend.as_ref()) {
            match &default_upstream {
                Some((_, first)) => problems.push(
                    Kind::Ingress,
                    &o.key,
                    "Conflict",
                    format!(
                        "defaultBackend is ignored: Ingress {} (older) gives the default backend",
                        quote(&first.to_string())
                    ),
                ),
                None => {
                    let r = backend_ref(snap, &eps, &mut upstreams, o, b, &up_settings, problems);
                    default_upstream = Some((r, o.key.clone()));
                }
            }
        }
        for rule in spec.and_then(|s| s.rules.as_deref()).unwrap_or_default() {
            let host = match rule.host.as_deref() {
                None | Some("") => String::new(),
                Some(h) => match check_host(h) {
                    Ok(h) => h,
                    Err(why) => {
                        problems.push(
                            Kind::Ingress,
                            &o.key,
                            "InvalidHost",
                            format!("{why}: the rule is skipped"),
                        );
                        continue;
                    }
                },
            };
            for p in rule.http.iter().flat_map(|h| &h.paths) {
                let path = p.path.clone().unwrap_or_else(|| "/".into());
                if let Err(why) = check_path(&path) {
                    problems.push(
                        Kind::Ingress,
                        &o.key,
                        "InvalidPath",
                        format!("{why}: the path is skipped"),
                    );
                    continue;
                }
                let path_type = match p.path_type.as_str() {
                    "Exact" => PathType::Exact,
                    "Prefix" => PathType::Prefix,
                    "ImplementationSpecific" => PathType::ImplementationSpecific,
                    other => {
                        problems.push(
                            Kind::Ingress,
                            &o.key,
                            "InvalidPath",
                            format!("pathType {} is not Exact, Prefix or ImplementationSpecific: the path is skipped", quote(other)),
                        );
                        continue;
                    }
                };
                let mk: MatchKey = (host.clone(), path.clone(), path_type == PathType::Exact);
                if let Some(&i) = index.get(&mk) {
                    let owner = &drafts[i].owner;
                    let whose = if *owner == o.key {
                        "an earlier rule of this Ingress".to_string()
                    } else {
                        format!("Ingress {} (older)", quote(&owner.to_string()))
                    };
                    problems.push(
                        Kind::Ingress,
                        &o.key,
                        "Conflict",
                        format!(
                            "host {} path {} is already served by {whose}: this one is ignored",
                            quote(if host.is_empty() { "*" } else { &host }),
                            quote(&path)
                        ),
                    );
                    continue;
                }
                let up = backend_ref(
                    snap,
                    &eps,
                    &mut upstreams,
                    o,
                    &p.backend,
                    &up_settings,
                    problems,
                );
                index.insert(mk, drafts.len());
                drafts.push(Draft {
                    route: Route {
                        kind: RouteKind::Ingress,
                        hosts: if host.is_empty() {
                            vec![]
                        } else {
                            vec![host.clone()]
                        },
                        path,
                        path_type,
                        method: None,
                        headers: BTreeMap::new(),
                        cookies: BTreeMap::new(),
                        upstreams: up
                            .into_iter()
                            .map(|name| UpstreamRef { name, weight: 1 })
                            .collect(),
                        redirect: None,
                        request_headers: None,
                    },
                    owner: o.key.clone(),
                });
            }
        }
    }

    let mut header_routes: Vec<Draft> = Vec::new();
    let mut canaried: BTreeSet<usize> = BTreeSet::new();
    for o in &canaries {
        apply_canary(
            snap,
            &eps,
            &mut upstreams,
            o,
            &index,
            &mut drafts,
            &mut canaried,
            &mut header_routes,
            problems,
        );
    }
    // The L7 core honors header matches only on Gateway API routes (validate refuses them on
    // Ingress routes), and ranks the two kinds differently within one host: a canary's header
    // route is a Gateway route, and so are the other routes of its host, which keeps the
    // header route ahead of its plain twin (Gateway API: more header matches first). The ranks
    // differ only where an Exact path is shorter than a Prefix path that also matches, and
    // `*.x` hosts then cover any number of labels.
    let gateway_hosts: BTreeSet<Vec<String>> = header_routes
        .iter()
        .map(|d| d.route.hosts.clone())
        .collect();
    for d in &mut drafts {
        if gateway_hosts.contains(&d.route.hosts) {
            d.route.kind = RouteKind::Gateway;
            if d.route.path_type == PathType::ImplementationSpecific {
                d.route.path_type = PathType::Prefix;
            }
        }
    }
    let route_owners: Vec<ObjectKey> = header_routes
        .iter()
        .chain(&drafts)
        .map(|d| d.owner.clone())
        .collect();
    let mut routes: Vec<Route> = header_routes.into_iter().map(|d| d.route).collect();
    routes.extend(drafts.into_iter().map(|d| d.route));
    // References to upstreams that never got backends are dropped (the route answers 503).
    for r in &mut routes {
        r.upstreams.retain(|u| upstreams.contains(&u.name));
        if r.upstreams.iter().all(|u| u.weight == 0) {
            r.upstreams.clear();
        }
    }

    let (certs, pem_files) = certificates(snap, settings, &mains, problems);
    let (timeouts, limits) = connection_settings(&mains);
    let https_served = !certs.is_empty() && !settings.ingress_https.is_empty();
    let plain_routes = redirect_routes(
        &routes,
        &route_owners,
        &list,
        https_served,
        settings,
        problems,
    );
    let upstream_list = upstreams.into_vec();
    let default_upstream = default_upstream.and_then(|(r, _)| r);
    let http =
        |name: &str, listen: &[std::net::SocketAddr], tls: Vec<TlsCert>, routes: &[Route]| Http {
            name: name.into(),
            listen: listen.to_vec(),
            tls,
            timeouts,
            limits,
            proxy: HttpProxy::default(),
            upstreams: upstream_list.clone(),
            routes: routes.to_vec(),
            default_upstream: default_upstream.clone(),
        };
    if !settings.ingress_http.is_empty() {
        out.http.push(http(
            HTTP_NAME,
            &settings.ingress_http,
            Vec::new(),
            &plain_routes,
        ));
    }
    if !certs.is_empty() {
        if settings.ingress_https.is_empty() {
            for o in mains
                .iter()
                .filter(|o| o.ing.spec.as_ref().is_some_and(|s| s.tls.is_some()))
            {
                problems.push(
                    Kind::Ingress,
                    &o.key,
                    "TlsNotServed",
                    "no HTTPS address is configured for Ingresses: tls is ignored (served on plain HTTP only)",
                );
            }
        } else {
            out.http
                .push(http(HTTPS_NAME, &settings.ingress_https, certs, &routes));
            out.pem_files = pem_files;
        }
    }
    let served = !out.http.is_empty();
    let tls_served = out.http.iter().any(|h| h.name == HTTPS_NAME);
    let ips = distinct(
        settings
            .ingress_http
            .iter()
            .chain(if tls_served {
                &settings.ingress_https[..]
            } else {
                &[]
            })
            .map(|s| s.ip())
            .filter(|ip| !ip.is_unspecified()),
    );
    if served {
        for o in &list {
            let current: Vec<IpAddr> = distinct(
                o.ing
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|l| l.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.ip.as_deref()?.parse().ok()),
            );
            if current != ips {
                out.statuses.push((o.key.clone(), ips.clone()));
            }
        }
    }
    out
}

/// A canary's route of its own: a header or a cookie with a value, and where it sends.
struct CanaryMatch<'a> {
    header: Option<&'a String>,
    cookie: Option<&'a String>,
    value: &'a str,
    to: &'a [UpstreamRef],
}

impl<'a> CanaryMatch<'a> {
    fn header(name: &'a String, value: &'a str, to: &'a [UpstreamRef]) -> Self {
        CanaryMatch {
            header: Some(name),
            cookie: None,
            value,
            to,
        }
    }

    fn cookie(name: &'a String, value: &'a str, to: &'a [UpstreamRef]) -> Self {
        CanaryMatch {
            header: None,
            cookie: Some(name),
            value,
            to,
        }
    }
}

/// Adds canary Ingress `o`'s backend to the routes it shadows: by weight (a share of the main
/// route), by header and by cookie (routes of their own, ahead of the main one).
#[allow(clippy::too_many_arguments)]
fn apply_canary(
    snap: &Snapshot,
    eps: &EndpointIndex<'_>,
    upstreams: &mut Upstreams,
    o: &Ours<'_>,
    index: &BTreeMap<MatchKey, usize>,
    drafts: &mut [Draft],
    canaried: &mut BTreeSet<usize>,
    header_routes: &mut Vec<Draft>,
    problems: &mut Problems,
) {
    let c = &o.ann.canary;
    let up_settings = upstream_settings(o, problems);
    let spec = o.ing.spec.as_ref();
    for rule in spec.and_then(|s| s.rules.as_deref()).unwrap_or_default() {
        let host = match rule.host.as_deref() {
            None | Some("") => String::new(),
            Some(h) => match check_host(h) {
                Ok(h) => h,
                Err(why) => {
                    problems.push(Kind::Ingress, &o.key, "InvalidHost", why);
                    continue;
                }
            },
        };
        for p in rule.http.iter().flat_map(|h| &h.paths) {
            let path = p.path.clone().unwrap_or_else(|| "/".into());
            let mk: MatchKey = (host.clone(), path.clone(), p.path_type == "Exact");
            let Some(&i) = index.get(&mk) else {
                problems.push(
                    Kind::Ingress,
                    &o.key,
                    "CanaryWithoutMain",
                    format!(
                        "canary host {} path {}: no main Ingress serves it; ignored",
                        quote(if host.is_empty() { "*" } else { &host }),
                        quote(&path)
                    ),
                );
                continue;
            };
            if !canaried.insert(i) {
                problems.push(
                    Kind::Ingress,
                    &o.key,
                    "Conflict",
                    format!(
                        "path {} already has a canary (older): ignored",
                        quote(&path)
                    ),
                );
                continue;
            }
            let Some(up) = backend_ref(snap, eps, upstreams, o, &p.backend, &up_settings, problems)
            else {
                continue;
            };
            let main = &mut drafts[i].route;
            // What "never" keeps to: the main backends without the canary's share.
            let main_only = main.upstreams.clone();
            if let Some(w) = c.weight {
                let w = w.min(c.weight_total);
                let rest = c.weight_total - w;
                for u in &mut main.upstreams {
                    u.weight = rest;
                }
                if main.upstreams.iter().any(|u| u.name == up) {
                    problems.push(
                        Kind::Ingress,
                        &o.key,
                        "Conflict",
                        "the canary's backend is the main backend: the weight changes nothing",
                    );
                    for u in &mut main.upstreams {
                        u.weight = 1;
                    }
                } else {
                    main.upstreams.push(UpstreamRef {
                        name: up.clone(),
                        weight: w,
                    });
                }
            }
            // ingress-nginx's order: the header, then the cookie, then the weight. "always" (or
            // the header value given) sends to the canary, "never" keeps to the main backends;
            // another value falls through to the next rule. Each is a route of its own with one
            // match, ahead of the main route; among them the earlier wins a tie.
            let canary = vec![UpstreamRef {
                name: up.clone(),
                weight: 1,
            }];
            let mut matches: Vec<CanaryMatch<'_>> = Vec::new();
            if let Some(h) = &c.by_header {
                match &c.by_header_value {
                    Some(v) => matches.push(CanaryMatch::header(h, v, &canary)),
                    None => {
                        matches.push(CanaryMatch::header(h, "always", &canary));
                        matches.push(CanaryMatch::header(h, "never", &main_only));
                    }
                }
            }
            if let Some(name) = &c.by_cookie {
                matches.push(CanaryMatch::cookie(name, "always", &canary));
                matches.push(CanaryMatch::cookie(name, "never", &main_only));
            }
            for m in matches {
                let one = |n: Option<&String>| {
                    n.map(|n| BTreeMap::from([(n.clone(), m.value.to_string())]))
                        .unwrap_or_default()
                };
                header_routes.push(Draft {
                    route: Route {
                        kind: RouteKind::Gateway,
                        hosts: main.hosts.clone(),
                        path: main.path.clone(),
                        path_type: match main.path_type {
                            PathType::Exact => PathType::Exact,
                            _ => PathType::Prefix,
                        },
                        method: None,
                        headers: one(m.header),
                        cookies: one(m.cookie),
                        upstreams: m.to.to_vec(),
                        redirect: None,
                        request_headers: None,
                    },
                    owner: o.key.clone(),
                });
            }
        }
    }
}

/// `[[http.tls]]` entries from the Ingresses' `tls` (oldest first; a host is served by the
/// first certificate that names it), and their PEM files.
fn certificates(
    snap: &Snapshot,
    settings: &Settings,
    mains: &[&Ours<'_>],
    problems: &mut Problems,
) -> (Vec<TlsCert>, Vec<PemFile>) {
    let mut certs: Vec<TlsCert> = Vec::new();
    let mut files: BTreeMap<std::path::PathBuf, PemFile> = BTreeMap::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut cert_index: BTreeMap<std::path::PathBuf, usize> = BTreeMap::new();
    for o in mains {
        for t in o
            .ing
            .spec
            .as_ref()
            .and_then(|s| s.tls.as_deref())
            .unwrap_or_default()
        {
            let Some(secret_name) = t.secret_name.as_deref().filter(|s| !s.is_empty()) else {
                problems.push(
                    Kind::Ingress,
                    &o.key,
                    "InvalidTls",
                    "a tls entry names no Secret: ignored",
                );
                continue;
            };
            let skey = ObjectKey::new(o.key.namespace.clone(), secret_name);
            let pem = match snap.secrets.get(&skey) {
                None => Err("not found".to_string()),
                Some(s) => secret_pem(s, &settings.secrets_dir),
            };
            let pem = match pem {
                Ok(p) => p,
                Err(why) => {
                    problems.push(
                        Kind::Ingress,
                        &o.key,
                        "InvalidTls",
                        format!(
                            "Secret {}: {why}: its hosts get no certificate",
                            quote(secret_name)
                        ),
                    );
                    continue;
                }
            };
            let mut sni = Vec::new();
            for h in t.hosts.iter().flatten() {
                match check_host(h) {
                    Ok(h) if taken.contains(&h) => problems.push(
                        Kind::Ingress,
                        &o.key,
                        "Conflict",
                        format!(
                            "tls host {} already has a certificate (older): ignored",
                            quote(&h)
                        ),
                    ),
                    Ok(h) => {
                        taken.insert(h.clone());
                        sni.push(h);
                    }
                    Err(why) => problems.push(Kind::Ingress, &o.key, "InvalidTls", why),
                }
            }
            if sni.is_empty() && t.hosts.as_ref().is_some_and(|h| !h.is_empty()) {
                continue;
            }
            if let Some(&i) = cert_index.get(&pem.cert.path) {
                let c: &mut TlsCert = &mut certs[i];
                c.sni.extend(sni);
                continue;
            }
            cert_index.insert(pem.cert.path.clone(), certs.len());
            certs.push(TlsCert {
                cert: pem.cert.path.clone(),
                key: pem.key.path.clone(),
                sni,
                default: false,
            });
            files.insert(pem.cert.path.clone(), pem.cert);
            files.insert(pem.key.path.clone(), pem.key);
        }
    }
    (certs, files.into_values().collect())
}

/// Timeouts and the body limit are per `[[http]]` in lb: the strictest any Ingress asks for.
fn connection_settings(mains: &[&Ours<'_>]) -> (HttpTimeouts, HttpLimits) {
    let mut t = HttpTimeouts::default();
    let mut l = HttpLimits::default();
    let connect = mains
        .iter()
        .filter_map(|o| o.ann.proxy_connect_timeout)
        .min();
    // nginx's read and send timeouts bound the time between two reads or writes; lb bounds the
    // whole request, so the longer of the two is taken per Ingress, then the strictest.
    let request = mains
        .iter()
        .filter_map(|o| o.ann.proxy_read_timeout.max(o.ann.proxy_send_timeout))
        .min();
    if let Some(c) = connect {
        t.connect = c;
    }
    if let Some(r) = request {
        t.request = r;
    }
    if t.connect > t.request {
        t.connect = t.request;
    }
    if let Some(b) = mains.iter().filter_map(|o| o.ann.proxy_body_size).min() {
        l.max_body = b;
    }
    (t, l)
}

/// The routes of the plain listener: those of Ingresses with `ssl-redirect: "true"` or
/// `force-ssl-redirect: "true"` answer a redirect to HTTPS (301; ingress-nginx answers 308,
/// which lb's redirects do not have), the others as on the HTTPS listener. ingress-nginx also
/// redirects every TLS host by default; lb only where the annotation asks (an Ingress that
/// works over plain HTTP keeps working).
fn redirect_routes(
    routes: &[Route],
    owners: &[ObjectKey],
    list: &[Ours<'_>],
    https_served: bool,
    settings: &Settings,
    problems: &mut Problems,
) -> Vec<Route> {
    let wants: BTreeSet<&ObjectKey> = list
        .iter()
        .filter(|o| {
            !o.ann.canary.enabled
                && (o.ann.ssl_redirect == Some(true) || o.ann.force_ssl_redirect == Some(true))
        })
        .map(|o| &o.key)
        .collect();
    if !https_served {
        for key in &wants {
            problems.push(
                Kind::Ingress,
                key,
                "NotSupported",
                "ssl-redirect / force-ssl-redirect: no HTTPS listener serves Ingresses: HTTP is served as is",
            );
        }
        return routes.to_vec();
    }
    let port = settings
        .ingress_https
        .first()
        .map(|s| s.port())
        .filter(|p| *p != 443);
    routes
        .iter()
        .zip(owners)
        .map(|(r, owner)| {
            if !wants.contains(owner) {
                return r.clone();
            }
            let mut r = r.clone();
            r.upstreams.clear();
            r.redirect = Some(Redirect {
                scheme: Some(RedirectScheme::Https),
                host: None,
                port,
                path: None,
                path_prefix: None,
                status: 301,
            });
            r
        })
        .collect()
}

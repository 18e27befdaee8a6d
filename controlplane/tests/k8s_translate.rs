//! The kubernetes source's translation, pure: snapshots of cluster objects -> `[[http]]` and
//! `[[services]]` entries, problems and status. Every translated config is merged into a
//! minimal file config and must pass `Config::validate` and `compile`.

#[path = "common/k8s_objects.rs"]
mod k8s_objects;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use controlplane::config::{Balance, Config, HashKey, Http, PathType, RouteKind, Service};
use controlplane::sources::kubernetes::model::Snapshot;
use controlplane::sources::kubernetes::translate::{translate, Kind, Translated};
use dataplane::l7::conn::Router;
use dataplane::l7::route::{RequestView, RouteTable};
use dataplane::l7::select::{Routing, SelectState};
use k8s_objects::*;

const BASE: &str = r#"[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
snat = ["198.18.0.2"]
on_link = ["198.18.0.0/15"]
"#;

/// A directory for certificates, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("k8s-translate-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The translated config merged into a minimal file config: PEM files written, validated
/// (every problem fails the test), compiled.
fn merged(t: &Translated) -> controlplane::Compiled {
    for f in &t.pem_files {
        std::fs::write(&f.path, &f.content).unwrap();
    }
    let mut cfg = Config::from_toml_str(BASE, Path::new("lb.toml")).unwrap();
    cfg.services.extend(t.services.iter().cloned());
    cfg.http.extend(t.http.iter().cloned());
    let problems = cfg.validate();
    assert!(problems.is_empty(), "{problems:#?}");
    controlplane::compile(&cfg, 1).unwrap()
}

fn http<'a>(t: &'a Translated, name: &str) -> &'a Http {
    t.http.iter().find(|h| h.name == name).unwrap_or_else(|| {
        panic!(
            "no http {name}: {:?}",
            t.http.iter().map(|h| &h.name).collect::<Vec<_>>()
        )
    })
}

fn service<'a>(t: &'a Translated, name: &str) -> &'a Service {
    t.services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// The reasons reported for `kind` `ns/name`.
fn reasons(t: &Translated, kind: Kind, ns: &str, name: &str) -> Vec<String> {
    t.problems
        .iter()
        .filter(|p| p.kind == kind && p.key.namespace == ns && p.key.name == name)
        .map(|p| p.reason.clone())
        .collect()
}

/// Where a request goes through the compiled `[[http]]` `name`: the address picked, or the
/// status.
fn route_to(
    c: &controlplane::Compiled,
    name: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<IpAddr, u16> {
    let spec = &c.http.iter().find(|h| h.name == name).unwrap().routes;
    let table = RouteTable::compile(spec);
    let mut state = SelectState::new(&table);
    let mut routing = Routing {
        table: &table,
        state: &mut state,
    };
    let view = RequestView::from_parts(host, path, "GET", headers);
    match routing.route(&view) {
        Ok(pick) => Ok(table.backends[pick.backend.0 as usize].addr.ip()),
        Err(s) => Err(s.code()),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The class, a Service `web` (port 80 "http" -> 8080) with a slice of three endpoints:
/// ready, not ready, draining.
fn web_cluster() -> Snapshot {
    let mut s = Snapshot::default();
    s.add(ingress_class("lb", INGRESS_CONTROLLER, false))
        .add(k8s_objects::service("shop", "web", &[("http", 80, 8080)]))
        .add(slice(
            "shop",
            "web",
            "web-abc12",
            &[("http", 8080)],
            &[
                ("198.18.1.10", State::Ready),
                ("198.18.1.11", State::NotReady),
                ("198.18.1.12", State::Draining),
                ("198.18.1.13", State::Gone),
            ],
            false,
        ));
    s
}

#[test]
fn ingress_service_and_slices_become_routes_and_upstreams() {
    let dir = TempDir::new("basic");
    let mut snap = web_cluster();
    snap.add(
        ingress("shop", "web", Some("lb"), 0)
            .rule(
                Some("shop.example.com"),
                "/",
                "Prefix",
                backend_named("web", "http"),
            )
            .rule(
                Some("shop.example.com"),
                "/api",
                "Exact",
                backend("web", 80),
            ),
    );
    let t = translate(&snap, &settings(&dir.0));
    assert!(t.problems.is_empty(), "{:#?}", t.problems);
    let h = http(&t, "k8s-ingress");
    assert_eq!(h.listen, vec![INGRESS_HTTP.parse().unwrap()]);
    assert_eq!(h.upstreams.len(), 1);
    let up = &h.upstreams[0];
    assert_eq!(up.name, "shop.web:80");
    let backends: Vec<(IpAddr, u16, u32)> = up
        .backends
        .iter()
        .map(|b| (b.addr, b.port, b.weight))
        .collect();
    // Ready: new requests; draining (serving + terminating): weight 0; not ready / gone: out.
    assert_eq!(
        backends,
        vec![(ip("198.18.1.10"), 8080, 1), (ip("198.18.1.12"), 8080, 0)]
    );
    assert_eq!(h.routes.len(), 2);
    assert_eq!(h.routes[0].kind, RouteKind::Ingress);
    assert_eq!(h.routes[0].hosts, vec!["shop.example.com".to_string()]);
    assert_eq!(h.routes[1].path, "/api");
    assert_eq!(h.routes[1].path_type, PathType::Exact);
    // No TLS: no HTTPS listener.
    assert!(t.http.iter().all(|h| h.name != "k8s-ingress-tls"));
    // Status: the Ingress address.
    assert_eq!(t.statuses.ingresses.len(), 1);
    assert_eq!(t.statuses.ingresses[0].1, vec![ip("198.18.0.10")]);
    let c = merged(&t);
    for _ in 0..5 {
        assert_eq!(
            route_to(&c, "k8s-ingress", "shop.example.com", "/x", &[]),
            Ok(ip("198.18.1.10"))
        );
    }
    assert_eq!(
        route_to(&c, "k8s-ingress", "other.example.com", "/", &[]),
        Err(404)
    );
}

#[test]
fn class_selection_default_legacy_and_foreign() {
    let dir = TempDir::new("class");
    let mut snap = web_cluster();
    snap.add(ingress_class("lb", INGRESS_CONTROLLER, true))
        .add(ingress_class("other", "example.org/other", false))
        .add(ingress("shop", "no-class", None, 0).rule(
            Some("a.example.com"),
            "/",
            "Prefix",
            backend("web", 80),
        ))
        .add(ingress("shop", "foreign", Some("other"), 0).rule(
            Some("b.example.com"),
            "/",
            "Prefix",
            backend("web", 80),
        ))
        .add(ingress("shop", "unknown", Some("nope"), 0).rule(
            Some("c.example.com"),
            "/",
            "Prefix",
            backend("web", 80),
        ))
        .add(
            ingress("shop", "legacy", None, 0)
                .annotation("kubernetes.io/ingress.class", "lb")
                .rule(Some("d.example.com"), "/", "Prefix", backend("web", 80)),
        );
    let t = translate(&snap, &settings(&dir.0));
    let hosts: Vec<&str> = http(&t, "k8s-ingress")
        .routes
        .iter()
        .map(|r| r.hosts[0].as_str())
        .collect();
    // Same age: by namespace and name (legacy, no-class).
    assert_eq!(hosts, ["d.example.com", "a.example.com"]);
    // Not ours: no status written for them.
    let keys: Vec<&str> = t
        .statuses
        .ingresses
        .iter()
        .map(|(k, _)| k.name.as_str())
        .collect();
    assert_eq!(keys, ["legacy", "no-class"]);

    // Without the default annotation, the class-less Ingress is not ours.
    snap.add(ingress_class("lb", INGRESS_CONTROLLER, false));
    let t = translate(&snap, &settings(&dir.0));
    let hosts: Vec<&str> = http(&t, "k8s-ingress")
        .routes
        .iter()
        .map(|r| r.hosts[0].as_str())
        .collect();
    assert_eq!(hosts, ["d.example.com"]);
    merged(&t);
}

#[test]
fn tls_from_secret_selected_by_sni_and_bad_secret_reported() {
    let dir = TempDir::new("tls");
    let mut snap = web_cluster();
    let (cert, key) = self_signed("shop.example.com");
    snap.add(tls_secret("shop", "shop-tls", &cert, &key))
        .add(tls_secret("shop", "broken", "not pem", "nor this"))
        .add(
            ingress("shop", "web", Some("lb"), 0)
                .rule(Some("shop.example.com"), "/", "Prefix", backend("web", 80))
                .tls(&["shop.example.com"], "shop-tls")
                .tls(&["other.example.com"], "broken")
                .tls(&["third.example.com"], "missing"),
        );
    let t = translate(&snap, &settings(&dir.0));
    let h = http(&t, "k8s-ingress-tls");
    assert_eq!(h.listen, vec![INGRESS_HTTPS.parse().unwrap()]);
    assert_eq!(h.tls.len(), 1);
    assert_eq!(h.tls[0].sni, vec!["shop.example.com".to_string()]);
    assert!(h.tls[0].cert.starts_with(&dir.0));
    assert_eq!(t.pem_files.len(), 2);
    assert!(t.pem_files.iter().any(|f| f.content == cert.as_bytes()));
    // Same routes on both listeners.
    assert_eq!(h.routes, http(&t, "k8s-ingress").routes);
    assert_eq!(
        reasons(&t, Kind::Ingress, "shop", "web"),
        ["InvalidTls", "InvalidTls"]
    );
    // The status has both listeners' address once.
    assert_eq!(t.statuses.ingresses[0].1, vec![ip("198.18.0.10")]);
    let c = merged(&t);
    let l = c.http.iter().find(|h| h.name == "k8s-ingress-tls").unwrap();
    assert_eq!(l.tls[0].names, vec!["shop.example.com".to_string()]);
    // A changed Secret is a new file name.
    let (cert2, key2) = self_signed("shop.example.com");
    snap.add(tls_secret("shop", "shop-tls", &cert2, &key2));
    let t2 = translate(&snap, &settings(&dir.0));
    assert_ne!(http(&t2, "k8s-ingress-tls").tls[0].cert, h.tls[0].cert);
}

#[test]
fn default_backend_and_conflicts_oldest_wins() {
    let dir = TempDir::new("conflict");
    let mut snap = web_cluster();
    snap.add(k8s_objects::service("shop", "api", &[("http", 80, 9090)]))
        .add(slice(
            "shop",
            "api",
            "api-1",
            &[("http", 9090)],
            &[("198.18.1.20", State::Ready)],
            false,
        ))
        .add(
            ingress("shop", "young", Some("lb"), 10)
                .default_backend(backend("api", 80))
                .rule(Some("shop.example.com"), "/", "Prefix", backend("api", 80)),
        )
        .add(
            ingress("shop", "old", Some("lb"), 1)
                .default_backend(backend("web", 80))
                .rule(Some("shop.example.com"), "/", "Prefix", backend("web", 80))
                .rule(
                    Some("shop.example.com"),
                    "/missing",
                    "Prefix",
                    backend("nope", 80),
                ),
        );
    let t = translate(&snap, &settings(&dir.0));
    let h = http(&t, "k8s-ingress");
    assert_eq!(h.default_upstream.as_deref(), Some("shop.web:80"));
    assert_eq!(h.routes.len(), 2);
    assert_eq!(h.routes[0].upstreams[0].name, "shop.web:80");
    // A missing Service: the route stays and answers 503.
    assert!(h.routes[1].upstreams.is_empty());
    assert_eq!(
        reasons(&t, Kind::Ingress, "shop", "old"),
        ["BackendNotFound"]
    );
    assert_eq!(
        reasons(&t, Kind::Ingress, "shop", "young"),
        ["Conflict", "Conflict"]
    );
    let c = merged(&t);
    assert_eq!(
        route_to(&c, "k8s-ingress", "shop.example.com", "/", &[]),
        Ok(ip("198.18.1.10"))
    );
    assert_eq!(
        route_to(&c, "k8s-ingress", "shop.example.com", "/missing", &[]),
        Err(503)
    );
    assert_eq!(
        route_to(&c, "k8s-ingress", "else.example.com", "/", &[]),
        Ok(ip("198.18.1.10"))
    );
}

#[test]
fn a_service_without_endpoints_answers_503() {
    let dir = TempDir::new("empty");
    let mut snap = web_cluster();
    snap.add(k8s_objects::service("shop", "idle", &[("http", 80, 8080)]))
        .add(ingress("shop", "idle", Some("lb"), 0).rule(None, "/", "Prefix", backend("idle", 80)));
    let t = translate(&snap, &settings(&dir.0));
    let h = http(&t, "k8s-ingress");
    assert!(h.upstreams.is_empty());
    assert!(h.routes[0].upstreams.is_empty());
    let c = merged(&t);
    assert_eq!(
        route_to(&c, "k8s-ingress", "any.example.com", "/", &[]),
        Err(503)
    );
}

/// `web_cluster` with Service `web-v2` (one ready endpoint, 198.18.2.10) and the main Ingress
/// `web` (shop.example.com/ to `web`): what a canary Ingress shadows.
fn canary_cluster() -> Snapshot {
    let mut snap = web_cluster();
    snap.add(k8s_objects::service(
        "shop",
        "web-v2",
        &[("http", 80, 8080)],
    ))
    .add(slice(
        "shop",
        "web-v2",
        "v2-1",
        &[("http", 8080)],
        &[("198.18.2.10", State::Ready)],
        false,
    ))
    .add(ingress("shop", "web", Some("lb"), 0).rule(
        Some("shop.example.com"),
        "/",
        "Prefix",
        backend("web", 80),
    ));
    snap
}

#[test]
fn canary_by_weight_and_by_header() {
    let dir = TempDir::new("canary");
    let mut snap = canary_cluster();
    snap.add(k8s_objects::service("shop", "api", &[("http", 80, 9090)]))
        .add(slice(
            "shop",
            "api",
            "api-1",
            &[("http", 9090)],
            &[("198.18.1.20", State::Ready)],
            false,
        ))
        .add(ingress("shop", "api", Some("lb"), 2).rule(
            Some("shop.example.com"),
            "/api",
            "Prefix",
            backend("api", 80),
        ))
        .add(
            ingress("shop", "web-canary", Some("lb"), 1)
                .nginx("canary", "true")
                .nginx("canary-weight", "20")
                .nginx("canary-by-header", "X-Canary")
                .rule(
                    Some("shop.example.com"),
                    "/",
                    "Prefix",
                    backend("web-v2", 80),
                ),
        );
    let t = translate(&snap, &settings(&dir.0));
    assert!(t.problems.is_empty(), "{:#?}", t.problems);
    let h = http(&t, "k8s-ingress");
    assert_eq!(h.routes.len(), 4);
    // The header routes (Gateway routes: only those match headers): "always" to the canary,
    // "never" to the main backends alone; then the weighted main.
    let header = &h.routes[0];
    assert_eq!(header.kind, RouteKind::Gateway);
    assert_eq!(
        header.headers.get("X-Canary").map(String::as_str),
        Some("always")
    );
    assert_eq!(header.upstreams[0].name, "shop.web-v2:80");
    let never = &h.routes[1];
    assert_eq!(
        never.headers.get("X-Canary").map(String::as_str),
        Some("never")
    );
    let only: Vec<&str> = never.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(only, ["shop.web:80"]);
    let main = &h.routes[2];
    let split: Vec<(&str, u32)> = main
        .upstreams
        .iter()
        .map(|u| (u.name.as_str(), u.weight))
        .collect();
    assert_eq!(split, [("shop.web:80", 80), ("shop.web-v2:80", 20)]);
    let c = merged(&t);
    assert_eq!(
        route_to(
            &c,
            "k8s-ingress",
            "shop.example.com",
            "/a/b",
            &[("x-canary", "always")]
        ),
        Ok(ip("198.18.2.10"))
    );
    // The other routes of the host keep their precedence (the longer path first).
    assert_eq!(
        route_to(
            &c,
            "k8s-ingress",
            "shop.example.com",
            "/api/v1",
            &[("x-canary", "always")]
        ),
        Ok(ip("198.18.1.20"))
    );
    assert_eq!(
        route_to(&c, "k8s-ingress", "shop.example.com", "/api", &[]),
        Ok(ip("198.18.1.20"))
    );
    // "never" is never the canary, whatever the weight.
    for _ in 0..50 {
        assert_eq!(
            route_to(
                &c,
                "k8s-ingress",
                "shop.example.com",
                "/",
                &[("x-canary", "never")]
            ),
            Ok(ip("198.18.1.10"))
        );
    }
    // The split, over many requests on one table.
    let spec = &c.http[0].routes;
    let table = RouteTable::compile(spec);
    let mut state = SelectState::new(&table);
    let mut routing = Routing {
        table: &table,
        state: &mut state,
    };
    let view = RequestView::from_parts("shop.example.com", "/", "GET", &[]);
    let mut canary = 0;
    for _ in 0..1000 {
        let pick = routing.route(&view).unwrap();
        routing.finished(&pick);
        if table.backends[pick.backend.0 as usize].addr.ip() == ip("198.18.2.10") {
            canary += 1;
        }
    }
    assert!(
        (150..=250).contains(&canary),
        "{canary} of 1000 to the canary"
    );
}

/// Where `n` requests with `headers` go: (main, canary) counts.
fn spread(c: &controlplane::Compiled, headers: &[(&str, &str)], n: usize) -> (usize, usize) {
    let table = RouteTable::compile(&c.http[0].routes);
    let mut state = SelectState::new(&table);
    let mut routing = Routing {
        table: &table,
        state: &mut state,
    };
    let view = RequestView::from_parts("shop.example.com", "/x", "GET", headers);
    let mut out = (0, 0);
    for _ in 0..n {
        let pick = routing.route(&view).unwrap();
        routing.finished(&pick);
        if table.backends[pick.backend.0 as usize].addr.ip() == ip("198.18.2.10") {
            out.1 += 1;
        } else {
            out.0 += 1;
        }
    }
    out
}

#[test]
fn canary_by_cookie_then_weight_and_the_header_first() {
    let dir = TempDir::new("canary-cookie");
    let mut snap = canary_cluster();
    snap.add(
        ingress("shop", "web-canary", Some("lb"), 1)
            .nginx("canary", "true")
            .nginx("canary-weight", "50")
            .nginx("canary-by-header", "X-Canary")
            .nginx("canary-by-cookie", "canary_v2")
            .rule(
                Some("shop.example.com"),
                "/",
                "Prefix",
                backend("web-v2", 80),
            ),
    );
    let t = translate(&snap, &settings(&dir.0));
    assert!(t.problems.is_empty(), "{:#?}", t.problems);
    let c = merged(&t);
    let cookie = |v: &str| format!("theme=dark; canary_v2={v}; x=1");
    // The cookie decides.
    assert_eq!(spread(&c, &[("cookie", &cookie("always"))], 100), (0, 100));
    assert_eq!(spread(&c, &[("cookie", &cookie("never"))], 100), (100, 0));
    // Another value, another cookie or none: the weight.
    for headers in [
        vec![("cookie", cookie("maybe"))],
        vec![("cookie", "canary_v3=always".to_string())],
        vec![],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (main, canary) = spread(&c, &h, 1000);
        assert!(
            (400..=600).contains(&canary),
            "{headers:?}: {main} main, {canary} canary"
        );
    }
    // The header comes first: "never" wins over the cookie's "always", and the other way.
    let never = [("x-canary", "never"), ("cookie", &*cookie("always"))];
    assert_eq!(spread(&c, &never, 100), (100, 0));
    let always = [("x-canary", "always"), ("cookie", &*cookie("never"))];
    assert_eq!(spread(&c, &always, 100), (0, 100));
}

#[test]
fn annotations_typed_bad_ones_reported_snippets_refused() {
    let dir = TempDir::new("annotations");
    let mut snap = web_cluster();
    snap.add(
        ingress("shop", "web", Some("lb"), 0)
            .nginx("affinity", "cookie")
            .nginx("session-cookie-name", "route")
            .nginx("proxy-connect-timeout", "3")
            .nginx("proxy-read-timeout", "30")
            .nginx("proxy-body-size", "2m")
            .nginx("canary-weight", "ten")
            .nginx("upstream-hash-by", "$request_uri")
            .nginx("configuration-snippet", "more_set_headers \"X: y\";")
            .nginx("server-snippet", "location /x { return 200; }")
            .rule(Some("shop.example.com"), "/", "Prefix", backend("web", 80)),
    );
    let t = translate(&snap, &settings(&dir.0));
    let mut r = reasons(&t, Kind::Ingress, "shop", "web");
    r.sort();
    assert_eq!(
        r,
        [
            "InvalidAnnotation",
            "InvalidAnnotation",
            "SnippetRefused",
            "SnippetRefused"
        ]
    );
    // Nothing of a snippet is anywhere in the output.
    let dump = format!("{:?}{:?}", t.http, t.services);
    assert!(!dump.contains("more_set_headers") && !dump.contains("return 200"));
    // The rest is served, typed.
    let h = http(&t, "k8s-ingress");
    assert_eq!(h.upstreams[0].balance, Balance::Sticky);
    assert_eq!(
        h.upstreams[0].hash_key,
        Some(HashKey::Cookie("route".into()))
    );
    assert_eq!(h.timeouts.connect, std::time::Duration::from_secs(3));
    assert_eq!(h.timeouts.request, std::time::Duration::from_secs(30));
    assert_eq!(h.limits.max_body, 2 << 20);
    assert_eq!(h.routes.len(), 1);
    let c = merged(&t);
    // The affinity cookie is set by lb on the first answer, and followed after.
    let table = RouteTable::compile(&c.http[0].routes);
    let mut state = SelectState::new(&table);
    let mut routing = Routing {
        table: &table,
        state: &mut state,
    };
    let mut send = |headers: &[(&str, &str)]| {
        let view = RequestView::from_parts("shop.example.com", "/", "GET", headers);
        match routing.route_in_table(&view) {
            dataplane::l7::conn::Routed::Send(pick, _, set) => {
                routing.finished(&pick);
                (
                    table.backends[pick.backend.0 as usize].addr,
                    set.map(|s| (s.name.to_string(), s.token)),
                )
            }
            other => panic!("{other:?}"),
        }
    };
    let (first, set) = send(&[]);
    let (name, token) = set.expect("the first answer sets the cookie");
    assert_eq!(name, "route");
    let cookie = format!("route={token:016x}");
    assert_eq!(send(&[("cookie", &cookie)]), (first, None));
}

#[test]
fn hostile_objects_are_skipped_and_reported() {
    let dir = TempDir::new("hostile");
    let mut snap = web_cluster();
    snap.add(
        ingress("shop", "huge-annotation", Some("lb"), 0)
            .annotation("example.com/blob", &"x".repeat(1 << 20))
            .rule(Some("a.example.com"), "/", "Prefix", backend("web", 80)),
    )
    .add(ingress("shop", "many-paths", Some("lb"), 0).many_paths(
        "b.example.com",
        10_000,
        backend("web", 80),
    ))
    .add(
        ingress("shop", "injection", Some("lb"), 0)
            .rule(Some("c.example.com"), "/ok", "Prefix", backend("web", 80))
            .rule(
                Some("c.example.com"),
                "/x;\n}\nserver {",
                "Prefix",
                backend("web", 80),
            )
            .rule(
                Some("c.example.com"),
                "no-slash",
                "Prefix",
                backend("web", 80),
            )
            .rule(Some("bad host\n"), "/", "Prefix", backend("web", 80))
            .rule(Some("c.example.com"), "/r", "Regex", backend("web", 80)),
    )
    .add(ingress("shop", "fine", Some("lb"), 0).rule(
        Some("d.example.com"),
        "/",
        "Prefix",
        backend("web", 80),
    ));
    let t = translate(&snap, &settings(&dir.0));
    assert_eq!(
        reasons(&t, Kind::Ingress, "shop", "huge-annotation"),
        ["TooLarge"]
    );
    assert_eq!(
        reasons(&t, Kind::Ingress, "shop", "many-paths"),
        ["TooLarge"]
    );
    assert_eq!(
        reasons(&t, Kind::Ingress, "shop", "injection"),
        ["InvalidPath", "InvalidPath", "InvalidHost", "InvalidPath"]
    );
    let routes: Vec<(String, String)> = http(&t, "k8s-ingress")
        .routes
        .iter()
        .map(|r| (r.hosts[0].clone(), r.path.clone()))
        .collect();
    assert_eq!(
        routes,
        [
            ("d.example.com".into(), "/".into()),
            ("c.example.com".into(), "/ok".into())
        ]
    );
    // Messages are bounded even for a 1 MiB value.
    assert!(t.problems.iter().all(|p| p.message.len() < 512));
    merged(&t);
}

#[test]
fn load_balancer_vips_are_stable_and_sticky() {
    let dir = TempDir::new("vips");
    let mut snap = Snapshot::default();
    let ports = [("http", "TCP", 80, 80)];
    snap.add(lb_service("a", "first", Some(LB_CLASS), &ports, 1, None))
        .add(lb_service("a", "second", Some(LB_CLASS), &ports, 2, None))
        // Sticky: keeps the address in its status (in the pool, free).
        .add(lb_service(
            "a",
            "sticky",
            Some(LB_CLASS),
            &ports,
            3,
            Some("198.18.5.1"),
        ))
        .add(lb_service(
            "a",
            "other-class",
            Some("example.org/x"),
            &ports,
            0,
            None,
        ))
        .add(lb_service("a", "no-class", None, &ports, 0, None))
        // Oldest, but nothing to serve: it takes no VIP.
        .add(lb_service(
            "a",
            "sctp-only",
            Some(LB_CLASS),
            &[("x", "SCTP", 80, 80)],
            0,
            None,
        ));
    let s = settings(&dir.0);
    let t = translate(&snap, &s);
    let vips: Vec<(&str, IpAddr)> = t
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.vip))
        .collect();
    // 198.18.5.0/30: hosts .1 and .2; sticky keeps .1, the oldest others take what is left.
    assert_eq!(
        vips,
        [
            ("k8s/a/first", ip("198.18.5.2")),
            ("k8s/a/sticky", ip("198.18.5.1"))
        ]
    );
    assert_eq!(
        reasons(&t, Kind::Service, "a", "second"),
        ["NoVipAvailable"]
    );
    assert_eq!(
        reasons(&t, Kind::Service, "a", "sctp-only"),
        ["InvalidPorts"]
    );
    assert_eq!(
        t.statuses.services.len(),
        1,
        "sticky's status is already right"
    );
    // The same snapshot, the same answer.
    let again = translate(&snap, &s);
    assert_eq!(again.services, t.services);
    // The status written back makes it stick even when an older Service appears.
    snap.add(lb_service(
        "a",
        "first",
        Some(LB_CLASS),
        &ports,
        1,
        Some("198.18.5.2"),
    ))
    .add(lb_service("a", "oldest", Some(LB_CLASS), &ports, 0, None));
    let t = translate(&snap, &s);
    let vips: Vec<(&str, IpAddr)> = t
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.vip))
        .collect();
    assert_eq!(
        vips,
        [
            ("k8s/a/first", ip("198.18.5.2")),
            ("k8s/a/sticky", ip("198.18.5.1"))
        ]
    );
    // The default class when configured.
    let mut s2 = s.clone();
    s2.default_load_balancer = true;
    s2.vip_pool = vec!["198.18.6.0/29".parse().unwrap()];
    let t = translate(&snap, &s2);
    assert!(t.services.iter().any(|s| s.name == "k8s/a/no-class"));
    merged(&t);
}

#[test]
fn load_balancer_pods_and_vms_ports_and_modes() {
    let dir = TempDir::new("l4");
    let mut snap = Snapshot::default();
    let mut svc = lb_service(
        "db",
        "pg",
        Some(LB_CLASS),
        &[
            ("pg", "TCP", 5432, 5432),
            ("metrics", "TCP", 9187, 9187),
            ("dns", "UDP", 53, 5353),
        ],
        0,
        None,
    );
    svc.metadata.annotations = Some(
        [
            ("lb.example.com/mode", "nat"),
            ("lb.example.com/vm-mode", "dsr-ipip"),
            ("lb.example.com/weight", "3"),
            ("lb.example.com/affinity", "client-ip"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    snap.add(svc)
        .add(slice(
            "db",
            "pg",
            "pg-pods",
            &[("pg", 5432), ("metrics", 9187), ("dns", 5353)],
            &[
                ("198.18.3.10", State::Ready),
                ("198.18.3.11", State::Draining),
                ("198.18.3.12", State::NotReady),
            ],
            false,
        ))
        .add(slice(
            "db",
            "pg",
            "pg-vms",
            &[("pg", 5432), ("metrics", 9187)],
            &[("198.18.4.10", State::Ready)],
            true,
        ));
    // The UDP slice port has protocol TCP in the builder: make it UDP.
    let key = controlplane::sources::kubernetes::model::ObjectKey::new("db", "pg-pods");
    let s = snap.endpoint_slices.get_mut(&key).unwrap();
    s.ports.as_mut().unwrap()[2].protocol = Some("UDP".into());
    let t = translate(&snap, &settings(&dir.0));
    assert!(t.problems.is_empty(), "{:#?}", t.problems);
    // TCP ports keep their numbers: one service for both, backends keep the client's port.
    let tcp = service(&t, "k8s/db/pg");
    assert_eq!(tcp.ports.len(), 2);
    assert_eq!(tcp.affinity, controlplane::config::Affinity::ClientIp);
    assert_eq!(tcp.pools.len(), 2);
    let pods = &tcp.pools[0];
    assert_eq!(
        (pods.name.as_str(), pods.mode, pods.weight),
        ("pods", controlplane::config::Mode::Nat, 3)
    );
    let b: Vec<(IpAddr, Option<u16>, u32)> = pods
        .backends
        .iter()
        .map(|b| (b.addr, b.port, b.weight))
        .collect();
    assert_eq!(
        b,
        [(ip("198.18.3.10"), None, 1), (ip("198.18.3.11"), None, 0)]
    );
    let vms = &tcp.pools[1];
    assert_eq!(
        (vms.name.as_str(), vms.mode),
        ("vms", controlplane::config::Mode::DsrIpip)
    );
    assert_eq!(vms.backends[0].kind, controlplane::config::BackendKind::Vm);
    // UDP 53 -> 5353: its own service with the target port.
    let udp = service(&t, "k8s/db/pg/udp");
    assert_eq!(udp.protocol, controlplane::config::Protocol::Udp);
    assert_eq!(udp.pools[0].backends[0].port, Some(5353));
    assert_eq!(t.statuses.services[0].1, vec![ip("198.18.5.1")]);
    merged(&t);
}

/// A condition's (type, status, reason).
fn cond(
    c: &[controlplane::sources::kubernetes::model::Condition],
) -> Vec<(String, String, String)> {
    c.iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

fn t3(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

/// GatewayClass, a Gateway with an HTTP and an HTTPS listener, Services `web` and `web-v2`.
fn gateway_cluster() -> Snapshot {
    use controlplane::sources::kubernetes::model::{GatewayTls, SecretObjectReference};
    let mut snap = web_cluster();
    let (cert, key) = self_signed("app.example.com");
    let mut https = listener("https", Some("app.example.com"), 443);
    https.protocol = "HTTPS".into();
    https.tls = Some(GatewayTls {
        mode: None,
        certificate_refs: vec![SecretObjectReference {
            group: None,
            kind: None,
            name: "app-tls".into(),
            namespace: None,
        }],
    });
    snap.add(gateway_class("lb", GATEWAY_CONTROLLER))
        .add(gateway_class("theirs", "example.org/gateway"))
        .add(tls_secret("shop", "app-tls", &cert, &key))
        .add(k8s_objects::service(
            "shop",
            "web-v2",
            &[("http", 80, 8080)],
        ))
        .add(slice(
            "shop",
            "web-v2",
            "v2-1",
            &[("http", 8080)],
            &[("198.18.2.10", State::Ready)],
            false,
        ))
        .add(gateway(
            "shop",
            "gw",
            "lb",
            vec![listener("http", Some("*.example.com"), 80), https],
            &["198.18.0.21"],
        ))
        .add(gateway(
            "shop",
            "foreign",
            "theirs",
            vec![listener("http", None, 80)],
            &[],
        ));
    snap
}

#[test]
fn gateway_and_http_routes_with_statuses() {
    use controlplane::sources::kubernetes::model::{
        HTTPHeaderMatch, HTTPPathMatch, HTTPRouteMatch, HTTPRouteRule, HTTPRouteSpec,
    };
    let dir = TempDir::new("gateway");
    let mut snap = gateway_cluster();
    let rule = |path: &str, headers: &[(&str, &str)], refs| HTTPRouteRule {
        matches: vec![HTTPRouteMatch {
            path: Some(HTTPPathMatch {
                type_: Some("PathPrefix".into()),
                value: Some(path.into()),
            }),
            headers: headers
                .iter()
                .map(|(n, v)| HTTPHeaderMatch {
                    type_: None,
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            method: Some("GET".into()),
        }],
        filters: vec![],
        backend_refs: refs,
    };
    snap.add(http_route(
        "shop",
        "app",
        0,
        HTTPRouteSpec {
            parent_refs: vec![parent("gw", None)],
            hostnames: vec!["app.example.com".into()],
            rules: vec![
                rule(
                    "/",
                    &[],
                    vec![
                        backend_ref("web", 80, Some(90)),
                        backend_ref("web-v2", 80, Some(10)),
                    ],
                ),
                rule(
                    "/beta",
                    &[("x-beta", "1")],
                    vec![backend_ref("web-v2", 80, None)],
                ),
            ],
        },
    ))
    .add(http_route(
        "shop",
        "bad-ref",
        1,
        HTTPRouteSpec {
            parent_refs: vec![parent("gw", Some("http"))],
            hostnames: vec!["bad.example.com".into()],
            rules: vec![rule("/", &[], {
                let mut r = backend_ref("web", 80, None);
                r.kind = Some("Bucket".into());
                vec![r]
            })],
        },
    ))
    .add(http_route(
        "other-ns",
        "elsewhere",
        2,
        HTTPRouteSpec {
            parent_refs: vec![ParentReferenceExt::ns(parent("gw", None), "shop")],
            hostnames: vec![],
            rules: vec![rule("/", &[], vec![])],
        },
    ))
    .add(http_route(
        "shop",
        "wrong-host",
        3,
        HTTPRouteSpec {
            parent_refs: vec![parent("gw", Some("http"))],
            hostnames: vec!["app.example.org".into()],
            rules: vec![rule("/", &[], vec![])],
        },
    ))
    .add(http_route(
        "shop",
        "no-section",
        4,
        HTTPRouteSpec {
            parent_refs: vec![parent("gw", Some("grpc"))],
            hostnames: vec![],
            rules: vec![rule("/", &[], vec![])],
        },
    ))
    .add(http_route(
        "shop",
        "not-ours",
        5,
        HTTPRouteSpec {
            parent_refs: vec![parent("foreign", None)],
            hostnames: vec![],
            rules: vec![rule("/", &[], vec![])],
        },
    ));
    let t = translate(&snap, &settings(&dir.0));
    // One [[http]] per port, on the requested address.
    let h80 = http(&t, "gw:shop:gw:80");
    assert_eq!(h80.listen, vec!["198.18.0.21:80".parse().unwrap()]);
    let h443 = http(&t, "gw:shop:gw:443");
    assert_eq!(h443.tls.len(), 1);
    assert_eq!(h443.tls[0].sni, vec!["app.example.com".to_string()]);
    let r = &h80.routes[0];
    assert_eq!(r.kind, RouteKind::Gateway);
    assert_eq!(r.hosts, vec!["app.example.com".to_string()]);
    assert_eq!(r.method.as_deref(), Some("GET"));
    let split: Vec<(&str, u32)> = r
        .upstreams
        .iter()
        .map(|u| (u.name.as_str(), u.weight))
        .collect();
    assert_eq!(split, [("shop.web:80", 90), ("shop.web-v2:80", 10)]);
    assert_eq!(
        h80.routes[1].headers.get("x-beta").map(String::as_str),
        Some("1")
    );
    // bad-ref: attached, but its rule answers 500.
    assert!(h80.routes[2].upstreams.is_empty());
    assert_eq!(h80.routes.len(), 3);
    assert_eq!(
        h443.routes.len(),
        2,
        "only app attaches to the https listener"
    );

    // Statuses.
    let classes: Vec<&str> = t
        .statuses
        .gateway_classes
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(classes, ["lb"]);
    assert_eq!(
        cond(&t.statuses.gateway_classes[0].1.conditions),
        [t3("Accepted", "True", "Accepted")]
    );
    assert_eq!(t.statuses.gateways.len(), 1);
    let (gk, gs) = &t.statuses.gateways[0];
    assert_eq!(gk.name, "gw");
    assert_eq!(gs.addresses[0].value, "198.18.0.21");
    assert_eq!(
        cond(&gs.conditions),
        [
            t3("Accepted", "True", "Accepted"),
            t3("Programmed", "True", "Programmed")
        ]
    );
    let attached: Vec<(&str, i32)> = gs
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.attached_routes))
        .collect();
    assert_eq!(attached, [("http", 2), ("https", 1)]);
    assert!(gs
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(1) && c.last_transition_time.is_empty()));
    let route_status = |name: &str| {
        let (_, s) = t
            .statuses
            .http_routes
            .iter()
            .find(|(k, _)| k.name == name)
            .unwrap_or_else(|| panic!("no status for {name}"));
        assert_eq!(s.parents.len(), 1);
        assert_eq!(s.parents[0].controller_name, GATEWAY_CONTROLLER);
        cond(&s.parents[0].conditions)
    };
    assert_eq!(
        route_status("app"),
        [
            t3("Accepted", "True", "Accepted"),
            t3("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    assert_eq!(
        route_status("bad-ref")[1],
        t3("ResolvedRefs", "False", "InvalidKind")
    );
    assert_eq!(
        route_status("elsewhere")[0],
        t3("Accepted", "False", "NotAllowedByListeners")
    );
    assert_eq!(
        route_status("wrong-host")[0],
        t3("Accepted", "False", "NoMatchingListenerHostname")
    );
    assert_eq!(
        route_status("no-section")[0],
        t3("Accepted", "False", "NoMatchingParent")
    );
    assert!(t
        .statuses
        .http_routes
        .iter()
        .all(|(k, _)| k.name != "not-ours"));
    let c = merged(&t);
    assert_eq!(
        route_to(
            &c,
            "gw:shop:gw:80",
            "app.example.com",
            "/beta/x",
            &[("x-beta", "1")]
        ),
        Ok(ip("198.18.2.10"))
    );
    assert_eq!(
        route_to(&c, "gw:shop:gw:80", "bad.example.com", "/", &[]),
        Err(500)
    );

    // Written back, the same statuses are not written again.
    let mut again = snap.clone();
    for (k, s) in &t.statuses.http_routes {
        again.http_routes.get_mut(k).unwrap().status = Some(s.clone());
    }
    for (k, s) in &t.statuses.gateways {
        again.gateways.get_mut(k).unwrap().status = Some(s.clone());
    }
    for (k, s) in &t.statuses.gateway_classes {
        again.gateway_classes.get_mut(k).unwrap().status = Some(s.clone());
    }
    let t2 = translate(&again, &settings(&dir.0));
    assert_eq!(t2.statuses.http_routes.len(), 0);
    assert_eq!(t2.statuses.gateways.len(), 0);
    assert_eq!(t2.statuses.gateway_classes.len(), 0);
}

/// Sets a parentRef's namespace.
trait ParentReferenceExt {
    fn ns(self, ns: &str) -> Self;
}

impl ParentReferenceExt for controlplane::sources::kubernetes::model::ParentReference {
    fn ns(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }
}

#[test]
fn gateway_address_and_certificate_refs_refused() {
    use controlplane::sources::kubernetes::model::SecretObjectReference;
    let dir = TempDir::new("gateway-refused");
    let mut snap = gateway_cluster();
    // An address this controller may not use.
    let key = controlplane::sources::kubernetes::model::ObjectKey::new("shop", "gw");
    snap.gateways.get_mut(&key).unwrap().spec.addresses[0].value = "192.0.2.1".into();
    // A certificate of another namespace (no ReferenceGrant support).
    let mut g2 = gateway("shop", "gw2", "lb", vec![listener("https", None, 443)], &[]);
    g2.spec.listeners[0].protocol = "HTTPS".into();
    g2.spec.listeners[0].tls = Some(controlplane::sources::kubernetes::model::GatewayTls {
        mode: None,
        certificate_refs: vec![SecretObjectReference {
            group: None,
            kind: None,
            name: "app-tls".into(),
            namespace: Some("elsewhere".into()),
        }],
    });
    snap.add(g2);
    let t = translate(&snap, &settings(&dir.0));
    let status = |name: &str| {
        &t.statuses
            .gateways
            .iter()
            .find(|(k, _)| k.name == name)
            .unwrap()
            .1
    };
    assert_eq!(
        cond(&status("gw").conditions)[1],
        t3("Programmed", "False", "AddressNotUsable")
    );
    assert!(t.http.iter().all(|h| !h.name.starts_with("gw:shop:gw:")));
    // gw2 gets the first free address, but its listener has no certificate.
    let s2 = status("gw2");
    assert_eq!(s2.addresses[0].value, "198.18.0.20");
    let l = cond(&s2.listeners[0].conditions);
    assert_eq!(l[1], t3("ResolvedRefs", "False", "RefNotPermitted"));
    assert_eq!(l[2], t3("Programmed", "False", "Invalid"));
    assert!(t.http.iter().all(|h| h.name != "gw:shop:gw2:443"));
    merged(&t);
}

mod fuzz {
    //! Random objects, hostile values included: translate never panics, and what it gives
    //! always passes validate and compile when merged into a file config.
    use super::*;
    use controlplane::sources::kubernetes::model::{
        HTTPHeaderMatch, HTTPPathMatch, HTTPRouteMatch, HTTPRouteRule, HTTPRouteSpec,
    };
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9.*-]{1,20}",
            "[ -~]{0,24}",
            "\\PC{0,12}",
            Just("shop.example.com".to_string()),
            Just("*.example.com".to_string()),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("/".to_string()),
            "/[a-z/]{0,10}",
            "[ -~]{0,16}",
            "/[a-z]{1,4}[\\n\\t ?#;{}]{1,3}",
        ]
    }

    fn svc_name() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["web".to_string(), "api".into(), "missing".into()])
    }

    fn addr() -> impl Strategy<Value = String> {
        prop_oneof![
            (1u8..4, 1u8..250).prop_map(|(a, b)| format!("198.18.{a}.{b}")),
            prop::sample::select(vec![
                "0.0.0.0".to_string(),
                "224.0.0.1".into(),
                "255.255.255.255".into(),
                "2001:db8::5".into(),
                "not-an-address".into(),
            ]),
        ]
    }

    fn state() -> impl Strategy<Value = State> {
        prop::sample::select(vec![
            State::Ready,
            State::NotReady,
            State::Draining,
            State::Gone,
        ])
    }

    prop_compose! {
        fn an_ingress(i: usize)(
            class in prop::sample::select(vec![Some("lb"), None, Some("other")]),
            rules in prop::collection::vec((prop::option::of(text()), path(),
                prop::sample::select(vec!["Exact", "Prefix", "ImplementationSpecific", "Regex"]),
                svc_name(), prop::sample::select(vec![80, 81, 0, -1])), 0..5),
            default in prop::option::of(svc_name()),
            ann in prop::collection::vec((prop::sample::select(vec!["canary", "canary-weight",
                "canary-by-header", "affinity", "session-cookie-name", "upstream-hash-by",
                "backend-protocol", "proxy-connect-timeout", "proxy-read-timeout",
                "proxy-body-size", "server-snippet", "canary-weight-total"]), text()), 0..4),
            created in 0i64..4,
        ) -> k8s_openapi::api::networking::v1::Ingress {
            let mut b = ingress("shop", &format!("ing{i}"), class, created);
            for (h, p, t, s, port) in rules {
                b = b.rule(h.as_deref(), &p, t, backend(&s, port));
            }
            if let Some(d) = default {
                b = b.default_backend(backend(&d, 80));
            }
            for (k, v) in ann {
                b = b.nginx(k, &v);
            }
            b.build()
        }
    }

    prop_compose! {
        fn a_route(i: usize)(
            hostnames in prop::collection::vec(text(), 0..3),
            rules in prop::collection::vec((path(), prop::sample::select(vec!["Exact", "PathPrefix", "RegularExpression"]),
                prop::option::of(text()), prop::collection::vec((text(), text()), 0..2),
                prop::collection::vec((svc_name(), prop::sample::select(vec![80u16, 81]), prop::option::of(0u32..2_000_000)), 0..3)), 0..4),
            section in prop::option::of(prop::sample::select(vec!["http", "nope"])),
            created in 0i64..4,
            filters in prop::collection::vec(a_filter(), 0..3),
        ) -> controlplane::sources::kubernetes::model::HTTPRoute {
            let mut filters = filters.into_iter();
            let rules = rules.into_iter().map(|(p, t, m, hs, refs)| HTTPRouteRule {
                matches: vec![HTTPRouteMatch {
                    path: Some(HTTPPathMatch { type_: Some(t.into()), value: Some(p) }),
                    headers: hs.into_iter().map(|(n, v)| HTTPHeaderMatch { type_: None, name: n, value: v }).collect(),
                    method: m,
                }],
                filters: filters.next().into_iter().collect(),
                backend_refs: refs.into_iter().map(|(s, p, w)| backend_ref(&s, p, w)).collect(),
            }).collect();
            http_route("shop", &format!("r{i}"), created, HTTPRouteSpec {
                parent_refs: vec![parent("gw", section)],
                hostnames,
                rules,
            })
        }
    }

    fn a_filter() -> impl Strategy<Value = controlplane::sources::kubernetes::model::HTTPRouteFilter>
    {
        use controlplane::sources::kubernetes::model::{
            HTTPHeader, HTTPHeaderFilter, HTTPPathModifier, HTTPRequestRedirectFilter,
            HTTPRouteFilter,
        };
        let header = || {
            (
                prop::sample::select(vec![
                    "X-A".to_string(),
                    "x-a".into(),
                    "Host".into(),
                    "Content-Length".into(),
                    "bad name".into(),
                ]),
                text(),
            )
                .prop_map(|(name, value)| HTTPHeader { name, value })
        };
        prop_oneof![
            (
                prop::collection::vec(header(), 0..3),
                prop::collection::vec(header(), 0..3),
                prop::collection::vec(text(), 0..3)
            )
                .prop_map(|(set, add, remove)| HTTPRouteFilter {
                    type_: "RequestHeaderModifier".into(),
                    request_header_modifier: Some(HTTPHeaderFilter { set, add, remove }),
                    request_redirect: None,
                }),
            (
                prop::option::of(text()),
                prop::option::of(text()),
                prop::option::of(0u16..3),
                prop::option::of(prop::sample::select(vec![301u16, 302, 307, 0])),
                prop::option::of((
                    prop::sample::select(vec!["ReplaceFullPath", "ReplacePrefixMatch", "Other"]),
                    path()
                ))
            )
                .prop_map(|(scheme, hostname, port, status_code, p)| HTTPRouteFilter {
                    type_: "RequestRedirect".into(),
                    request_header_modifier: None,
                    request_redirect: Some(HTTPRequestRedirectFilter {
                        scheme,
                        hostname,
                        path: p.map(|(t, v)| HTTPPathModifier {
                            type_: t.into(),
                            replace_full_path: Some(v.clone()),
                            replace_prefix_match: Some(v),
                        }),
                        port,
                        status_code,
                    }),
                }),
            Just(HTTPRouteFilter {
                type_: "URLRewrite".into(),
                ..HTTPRouteFilter::default()
            }),
        ]
    }

    fn cluster() -> impl Strategy<Value = Snapshot> {
        (
            prop::collection::vec(an_ingress(0), 0..4),
            prop::collection::vec(a_route(0), 0..4),
            prop::collection::vec((addr(), state()), 0..6),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["TCP", "UDP", "SCTP"]),
                    0i32..3,
                    0i32..3,
                ),
                1..4,
            ),
            prop::sample::select(vec!["fullnat", "nat", "dr", "bogus"]),
            prop::option::of(prop::sample::select(vec![
                "198.18.5.1",
                "198.18.5.3",
                "10.0.0.1",
            ])),
        )
            .prop_map(|(ings, routes, eps, lb_ports, mode, status_ip)| {
                let mut snap = Snapshot::default();
                snap.add(ingress_class("lb", INGRESS_CONTROLLER, true))
                    .add(gateway_class("lb", GATEWAY_CONTROLLER))
                    .add(gateway(
                        "shop",
                        "gw",
                        "lb",
                        vec![listener("http", Some("*.example.com"), 80)],
                        &[],
                    ))
                    .add(k8s_objects::service("shop", "web", &[("http", 80, 8080)]))
                    .add(k8s_objects::service(
                        "shop",
                        "api",
                        &[("", 80, 80), ("http", 81, 8081)],
                    ));
                let eps_ref: Vec<(&str, State)> =
                    eps.iter().map(|(a, s)| (a.as_str(), *s)).collect();
                snap.add(slice(
                    "shop",
                    "web",
                    "web-1",
                    &[("http", 8080)],
                    &eps_ref,
                    false,
                ))
                .add(slice(
                    "shop",
                    "api",
                    "api-1",
                    &[("", 80), ("http", 8081)],
                    &eps_ref,
                    true,
                ));
                for (i, mut ing) in ings.into_iter().enumerate() {
                    ing.metadata.name = Some(format!("ing{i}"));
                    snap.add(ing);
                }
                for (i, mut r) in routes.into_iter().enumerate() {
                    r.metadata.name = Some(format!("r{i}"));
                    snap.add(r);
                }
                let ports: Vec<(&str, &str, i32, i32)> = lb_ports
                    .iter()
                    .map(|(proto, p, t)| ("", *proto, 80 + p, 8080 + t))
                    .collect();
                let mut lb = lb_service("shop", "api", Some(LB_CLASS), &ports, 0, status_ip);
                lb.metadata.annotations =
                    Some([("lb.example.com/mode".to_string(), mode.to_string())].into());
                snap.add(lb);
                snap
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn translate_never_panics_and_its_output_validates(snap in cluster()) {
            let dir = TempDir::new("fuzz");
            let t = translate(&snap, &settings(&dir.0));
            let again = translate(&snap, &settings(&dir.0));
            prop_assert_eq!(&t.http, &again.http);
            prop_assert_eq!(&t.services, &again.services);
            merged(&t);
        }
    }
}

#[test]
fn ssl_redirect_answers_https_on_the_plain_listener() {
    let dir = TempDir::new("ssl-redirect");
    let mut snap = web_cluster();
    let (cert, key) = self_signed("shop.example.com");
    snap.add(tls_secret("shop", "shop-tls", &cert, &key))
        .add(
            ingress("shop", "web", Some("lb"), 0)
                .nginx("ssl-redirect", "true")
                .rule(Some("shop.example.com"), "/", "Prefix", backend("web", 80))
                .tls(&["shop.example.com"], "shop-tls"),
        )
        .add(ingress("shop", "plain", Some("lb"), 1).rule(
            Some("plain.example.com"),
            "/",
            "Prefix",
            backend("web", 80),
        ));
    let t = translate(&snap, &settings(&dir.0));
    assert!(t.problems.is_empty(), "{:#?}", t.problems);
    let plain = http(&t, "k8s-ingress");
    let r = &plain.routes[0];
    assert!(r.upstreams.is_empty());
    let redirect = r.redirect.as_ref().expect("a redirect");
    assert_eq!(
        redirect.scheme,
        Some(controlplane::config::RedirectScheme::Https)
    );
    assert_eq!((redirect.status, redirect.port), (301, None));
    // Only the annotated Ingress redirects; HTTPS serves both.
    assert!(plain.routes[1].redirect.is_none());
    let tls = http(&t, "k8s-ingress-tls");
    assert!(tls
        .routes
        .iter()
        .all(|r| r.redirect.is_none() && !r.upstreams.is_empty()));
    merged(&t);

    // Without an HTTPS listener: reported, served as is.
    let mut s = settings(&dir.0);
    s.ingress_https.clear();
    let t = translate(&snap, &s);
    assert!(http(&t, "k8s-ingress")
        .routes
        .iter()
        .all(|r| r.redirect.is_none()));
    assert!(reasons(&t, Kind::Ingress, "shop", "web").contains(&"NotSupported".to_string()));
}

#[test]
fn gateway_filters_header_modifier_and_redirect() {
    use controlplane::sources::kubernetes::model::{
        HTTPHeader, HTTPHeaderFilter, HTTPPathMatch, HTTPPathModifier, HTTPRequestRedirectFilter,
        HTTPRouteFilter, HTTPRouteMatch, HTTPRouteRule, HTTPRouteSpec,
    };
    let dir = TempDir::new("gateway-filters");
    let mut snap = gateway_cluster();
    let m = |t: &str, p: &str| HTTPRouteMatch {
        path: Some(HTTPPathMatch {
            type_: Some(t.into()),
            value: Some(p.into()),
        }),
        ..HTTPRouteMatch::default()
    };
    let header_filter = HTTPRouteFilter {
        type_: "RequestHeaderModifier".into(),
        request_header_modifier: Some(HTTPHeaderFilter {
            set: vec![
                HTTPHeader {
                    name: "X-Env".into(),
                    value: "prod".into(),
                },
                HTTPHeader {
                    name: "Host".into(),
                    value: "evil.example.com".into(),
                },
            ],
            add: vec![HTTPHeader {
                name: "X-Bad".into(),
                value: "a\r\nInjected: 1".into(),
            }],
            remove: vec!["X-Debug".into()],
        }),
        request_redirect: None,
    };
    let redirect = |prefix: bool| HTTPRouteFilter {
        type_: "RequestRedirect".into(),
        request_header_modifier: None,
        request_redirect: Some(HTTPRequestRedirectFilter {
            scheme: Some("https".into()),
            hostname: None,
            path: prefix.then(|| HTTPPathModifier {
                type_: "ReplacePrefixMatch".into(),
                replace_full_path: None,
                replace_prefix_match: Some("/v2".into()),
            }),
            port: None,
            status_code: Some(301),
        }),
    };
    snap.add(http_route(
        "shop",
        "filters",
        0,
        HTTPRouteSpec {
            parent_refs: vec![parent("gw", Some("http"))],
            hostnames: vec!["app.example.com".into()],
            rules: vec![
                HTTPRouteRule {
                    matches: vec![m("PathPrefix", "/api")],
                    filters: vec![header_filter],
                    backend_refs: vec![backend_ref("web", 80, None)],
                },
                HTTPRouteRule {
                    matches: vec![m("PathPrefix", "/v1"), m("Exact", "/v1-exact")],
                    filters: vec![redirect(true)],
                    backend_refs: vec![backend_ref("web", 80, None)],
                },
                HTTPRouteRule {
                    matches: vec![m("PathPrefix", "/old")],
                    filters: vec![HTTPRouteFilter {
                        type_: "URLRewrite".into(),
                        ..HTTPRouteFilter::default()
                    }],
                    backend_refs: vec![backend_ref("web", 80, None)],
                },
            ],
        },
    ));
    let t = translate(&snap, &settings(&dir.0));
    let h = http(&t, "gw:shop:gw:80");
    let paths: Vec<&str> = h.routes.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/api", "/v1"],
        "the Exact match of a prefix rewrite and the URLRewrite rule are not served"
    );
    let mods = h.routes[0].request_headers.as_ref().unwrap();
    assert_eq!(mods.set.get("X-Env").map(String::as_str), Some("prod"));
    assert_eq!(mods.set.len(), 1, "Host is the proxy's");
    assert!(mods.add.is_empty(), "a CR/LF value is refused");
    assert_eq!(mods.remove, vec!["X-Debug".to_string()]);
    let r = &h.routes[1];
    assert!(r.upstreams.is_empty());
    let red = r.redirect.as_ref().unwrap();
    assert_eq!(red.path_prefix.as_deref(), Some("/v2"));
    assert_eq!(red.status, 301);
    let mut rs = reasons(&t, Kind::HttpRoute, "shop", "filters");
    rs.sort();
    assert_eq!(
        rs,
        [
            "InvalidFilter",
            "InvalidFilter",
            "InvalidFilter",
            "NotSupported"
        ]
    );
    merged(&t);
}

#[test]
fn ingress_status_names_the_listeners_that_serve() {
    let dir = TempDir::new("status");
    let mut snap = web_cluster();
    let (cert, key) = self_signed("shop.example.com");
    snap.add(tls_secret("shop", "shop-tls", &cert, &key)).add(
        ingress("shop", "web", Some("lb"), 0)
            .rule(Some("shop.example.com"), "/", "Prefix", backend("web", 80))
            .tls(&["shop.example.com"], "shop-tls"),
    );
    // HTTPS only, on its own address.
    let mut s = settings(&dir.0);
    s.ingress_http.clear();
    s.ingress_https = vec!["198.18.0.11:443".parse().unwrap()];
    let t = translate(&snap, &s);
    assert_eq!(t.http.len(), 1);
    assert_eq!(t.statuses.ingresses[0].1, vec![ip("198.18.0.11")]);
    // Both, on two addresses.
    s.ingress_http = vec![INGRESS_HTTP.parse().unwrap()];
    let t = translate(&snap, &s);
    assert_eq!(
        t.statuses.ingresses[0].1,
        vec![ip("198.18.0.10"), ip("198.18.0.11")]
    );
    // Already written: nothing to write.
    let key = controlplane::sources::kubernetes::model::ObjectKey::new("shop", "web");
    let ing = snap.ingresses.get_mut(&key).unwrap();
    ing.status = Some(k8s_openapi::api::networking::v1::IngressStatus {
        load_balancer: Some(
            k8s_openapi::api::networking::v1::IngressLoadBalancerStatus {
                ingress: Some(
                    ["198.18.0.11", "198.18.0.10"]
                        .iter()
                        .map(
                            |a| k8s_openapi::api::networking::v1::IngressLoadBalancerIngress {
                                ip: Some(a.to_string()),
                                ..Default::default()
                            },
                        )
                        .collect(),
                ),
            },
        ),
    });
    assert!(translate(&snap, &s).statuses.ingresses.is_empty());
}

#[test]
fn listeners_allow_routes_from_namespaces_chosen_by_labels() {
    use controlplane::sources::kubernetes::model::{
        AllowedRoutes, HTTPPathMatch, HTTPRouteMatch, HTTPRouteRule, HTTPRouteSpec, RouteNamespaces,
    };
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    let dir = TempDir::new("selector");
    let selector = |sel: LabelSelector| AllowedRoutes {
        namespaces: Some(RouteNamespaces {
            from: Some("Selector".into()),
            selector: Some(sel),
        }),
    };
    let mut by_label = listener("teams", Some("*.example.com"), 80);
    by_label.allowed_routes = Some(selector(LabelSelector {
        match_labels: Some([("team".to_string(), "a".to_string())].into()),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "env".into(),
            operator: "NotIn".into(),
            values: Some(vec!["dev".into()]),
        }]),
    }));
    let mut bad = listener("bad", Some("*.example.org"), 8080);
    bad.allowed_routes = Some(selector(LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "team".into(),
            operator: "Near".into(),
            values: None,
        }]),
    }));
    let mut snap = web_cluster();
    snap.add(gateway_class("lb", GATEWAY_CONTROLLER))
        .add(gateway(
            "shop",
            "gw",
            "lb",
            vec![by_label, bad],
            &["198.18.0.21"],
        ));
    let namespace = |name: &str, labels: &[(&str, &str)]| {
        let mut n = Namespace::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    };
    for (ns, labels) in [
        ("team-a", &[("team", "a")][..]),
        ("team-a-dev", &[("team", "a"), ("env", "dev")][..]),
        ("team-b", &[("team", "b")][..]),
    ] {
        snap.namespaces.insert(ns.into(), namespace(ns, labels));
    }
    let route_in = |ns: &str| {
        http_route(
            ns,
            "app",
            0,
            HTTPRouteSpec {
                parent_refs: vec![parent("gw", None).ns("shop")],
                hostnames: vec![format!("{ns}.example.com")],
                rules: vec![HTTPRouteRule {
                    matches: vec![HTTPRouteMatch {
                        path: Some(HTTPPathMatch {
                            type_: Some("PathPrefix".into()),
                            value: Some("/".into()),
                        }),
                        headers: vec![],
                        method: None,
                    }],
                    filters: vec![],
                    backend_refs: vec![backend_ref("web", 80, None)],
                }],
            },
        )
    };
    // Also a namespace the snapshot has no object of (not listed yet, or not allowed to list).
    for ns in ["team-a", "team-a-dev", "team-b", "unknown"] {
        snap.add(route_in(ns))
            .add(k8s_objects::service(ns, "web", &[("http", 80, 8080)]))
            .add(slice(
                ns,
                "web",
                "web-1",
                &[("http", 8080)],
                &[("198.18.1.30", State::Ready)],
                false,
            ));
    }
    let t = translate(&snap, &settings(&dir.0));
    let accepted = |ns: &str| {
        let (_, s) = t
            .statuses
            .http_routes
            .iter()
            .find(|(k, _)| k.namespace == ns)
            .unwrap_or_else(|| panic!("a status for the route in {ns}"));
        let c = &s.parents[0].conditions;
        cond(c)
            .into_iter()
            .find(|(ty, _, _)| ty == "Accepted")
            .map(|(_, status, reason)| (status, reason))
            .unwrap()
    };
    assert_eq!(accepted("team-a"), ("True".into(), "Accepted".into()));
    for ns in ["team-a-dev", "team-b", "unknown"] {
        assert_eq!(
            accepted(ns),
            ("False".into(), "NotAllowedByListeners".into()),
            "{ns}"
        );
    }
    assert_eq!(
        reasons(&t, Kind::Gateway, "shop", "gw"),
        ["InvalidSelector"],
        "{:#?}",
        t.problems
    );
    let c = merged(&t);
    assert_eq!(
        route_to(&c, "gw:shop:gw:80", "team-a.example.com", "/", &[]),
        Ok(ip("198.18.1.30"))
    );
    assert_eq!(
        route_to(&c, "gw:shop:gw:80", "team-b.example.com", "/", &[]),
        Err(404)
    );
}

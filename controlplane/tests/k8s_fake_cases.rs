//! The routing cases of ../shared/testdata/routing/cases.json and hostile objects through the
//! real path: objects written into the in-process fake API server (`kubefake`), the kubernetes
//! source watching it and applying to a `ControlPlane`, and the control plane's serving config
//! compiled into the L7 route table that answers the requests.
//!
//! The cases are applied one group at a time (the previous group's objects deleted and that
//! applied first); every wait is bounded.

#[path = "common/k8s_objects.rs"]
mod k8s_objects;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use controlplane::config;
use controlplane::control::{self, ControlPlane};
use controlplane::sources::kubernetes::model::{Gateway, GatewayClass, HTTPRoute};
use controlplane::sources::kubernetes::source::{self, Source, SyncState};
use controlplane::sources::kubernetes::translate::{translate, Settings};
use dataplane::l7::conn::Router;
use dataplane::l7::route::{RequestView, RouteTable, TableSpec};
use dataplane::l7::select::{Routing, SelectState};
use k8s_objects::{Obj, INGRESS_CONTROLLER};
use k8s_openapi::api::core::v1::{Event, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubefake::FakeApiServer;
use serde_json::Value;
use testkit::shared::check_routing_request_named;
use tokio::sync::watch;

/// How long one group's objects may take to be applied.
const APPLY_WITHIN: Duration = Duration::from_secs(5);

/// A directory of its own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lb-k8s-fake-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One balancer: a control plane whose lb.toml has `[kubernetes]` pointing at the fake (with
/// the settings of `k8s_objects::settings`), and its source.
struct Replica {
    cp: Arc<ControlPlane>,
    source: Option<Source>,
    state: Arc<SyncState>,
    /// What the source translates with (the secrets directory resolved).
    settings: Settings,
    /// Whether it leads (kept open: the source follows it).
    _leader: watch::Sender<bool>,
    // Dropped last: the source writes certificates into it.
    _dir: TempDir,
}

impl Replica {
    /// Starts a replica on `fake`; `leader`: it writes status and Events.
    fn start(tag: &str, fake: &FakeApiServer, leader: bool) -> Replica {
        let dir = TempDir::new(tag);
        let kc = dir.0.join("kubeconfig");
        fake.write_kubeconfig(&kc).unwrap();
        let s = k8s_objects::settings(&dir.0.join("secrets"));
        let text = format!(
            r#"
[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
snat = ["198.18.0.2"]
gateway_mac = "02:00:00:00:00:fe"
workers = 1

[kubernetes]
kubeconfig = {kc:?}
secrets_dir = {:?}
ingress_controller = {:?}
gateway_controller = {:?}
ingress_http = [{:?}]
ingress_https = [{:?}]
gateway_addresses = [{:?}, {:?}]
vip_pool = ["198.18.5.0/30"]
load_balancer_class = {:?}
"#,
            s.secrets_dir,
            s.ingress_controller,
            s.gateway_controller,
            s.ingress_http[0].to_string(),
            s.ingress_https[0].to_string(),
            s.gateway_addresses[0].to_string(),
            s.gateway_addresses[1].to_string(),
            s.load_balancer_class,
        );
        let path = dir.0.join("lb.toml");
        std::fs::write(&path, text).unwrap();
        let (cfg, text) = config::load_with_text(&path).unwrap();
        let k = cfg.kubernetes.clone().unwrap().resolved(&path);
        let settings = source::settings(&k);
        assert_eq!(settings, s, "lb.toml says what the objects expect");
        let (cp, _) = ControlPlane::new(&path, cfg, text, Box::new(control::load_file)).unwrap();
        let cp = Arc::new(cp);
        let (tx, rx) = watch::channel(leader);
        let source = Source::start(&tokio::runtime::Handle::current(), cp.clone(), k, rx);
        Replica {
            cp,
            state: source.state(),
            source: Some(source),
            settings,
            _leader: tx,
            _dir: dir,
        }
    }

    /// The route table of `[[http]]` `name` as the control plane serves it now (its serving
    /// config compiled); `None` when there is no such `[[http]]`.
    fn table(&self, name: &str) -> Option<(TableSpec, Vec<String>)> {
        let compiled = controlplane::compile(&self.cp.config(), 1).unwrap();
        compiled.http.into_iter().find(|h| h.name == name).map(|h| {
            let sni = h.tls.iter().flat_map(|c| c.names.iter().cloned()).collect();
            (h.routes, sni)
        })
    }

    /// Watch events the source has received so far (every kind).
    fn events_seen(&self) -> u64 {
        self.state.view().events.values().sum()
    }

    fn stop(mut self) {
        if let Some(s) = self.source.take() {
            s.stop();
        }
    }
}

/// Waits (up to `within`, polling every 2 ms) until `what` holds; how long it took.
async fn until(within: Duration, what: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if what() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// An object's metadata.
fn meta(o: &Obj) -> &ObjectMeta {
    match o {
        Obj::IngressClass(x) => &x.metadata,
        Obj::Ingress(x) => &x.metadata,
        Obj::Service(x) => &x.metadata,
        Obj::EndpointSlice(x) => &x.metadata,
        Obj::Secret(x) => &x.metadata,
        Obj::GatewayClass(x) => &x.metadata,
        Obj::Gateway(x) => &x.metadata,
        Obj::HttpRoute(x) => &x.metadata,
    }
}

/// Where an object goes in the order of writes (its kind's rank: what others refer to first).
fn rank(o: &Obj) -> u8 {
    match o {
        Obj::IngressClass(_) => 0,
        Obj::GatewayClass(_) => 1,
        Obj::Service(_) => 2,
        Obj::EndpointSlice(_) => 3,
        Obj::Secret(_) => 4,
        Obj::Gateway(_) => 5,
        Obj::Ingress(_) => 6,
        Obj::HttpRoute(_) => 7,
    }
}

/// Writes `o` as a user would (`kubectl apply`).
fn put(fake: &FakeApiServer, o: &Obj) {
    match o {
        Obj::IngressClass(x) => fake.apply(x),
        Obj::Ingress(x) => fake.apply(x),
        Obj::Service(x) => fake.apply(x),
        Obj::EndpointSlice(x) => fake.apply(x),
        Obj::Secret(x) => fake.apply(x),
        Obj::GatewayClass(x) => fake.apply(x),
        Obj::Gateway(x) => fake.apply(x),
        Obj::HttpRoute(x) => fake.apply(x),
    };
}

/// Deletes `o`.
fn remove(fake: &FakeApiServer, o: &Obj) {
    let m = meta(o);
    let ns = m.namespace.as_deref().unwrap_or("");
    let name = m.name.as_deref().unwrap_or("");
    let gone = match o {
        Obj::IngressClass(_) => fake.delete::<IngressClass>(ns, name),
        Obj::Ingress(_) => fake.delete::<Ingress>(ns, name),
        Obj::Service(_) => fake.delete::<Service>(ns, name),
        Obj::EndpointSlice(_) => fake.delete::<EndpointSlice>(ns, name),
        Obj::Secret(_) => fake.delete::<Secret>(ns, name),
        Obj::GatewayClass(_) => fake.delete::<GatewayClass>(ns, name),
        Obj::Gateway(_) => fake.delete::<Gateway>(ns, name),
        Obj::HttpRoute(_) => fake.delete::<HTTPRoute>(ns, name),
    };
    assert!(gone, "{ns}/{name} was stored");
}

/// Sleeps into the next wall-clock second (the fake stamps `creationTimestamp` in seconds).
async fn next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let left = Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos()));
    tokio::time::sleep(left + Duration::from_millis(20)).await;
}

/// Writes a group's objects, referenced kinds first. The API server stamps the creation time
/// (in seconds) and the older Ingress or HTTPRoute wins a conflict, then the name: where the
/// case's creation order is not the names' order, the next one is written a second later.
async fn write_all(fake: &FakeApiServer, objs: &mut [Obj]) {
    objs.sort_by_key(|o| (rank(o), meta(o).creation_timestamp.clone()));
    let mut last: Option<(u8, String)> = None;
    for o in objs.iter() {
        let name = meta(o).name.clone().unwrap_or_default();
        if matches!(o, Obj::Ingress(_) | Obj::HttpRoute(_)) {
            if let Some((r, prev)) = &last {
                if *r == rank(o) && *prev > name {
                    next_second().await;
                }
            }
            last = Some((rank(o), name));
        }
        put(fake, o);
    }
}

/// The `[[http]]` a case request is served by.
fn http_name(gateway: bool, request: &Value) -> String {
    if gateway {
        format!(
            "gw:{}:{}:80",
            k8s_objects::CASE_NS,
            k8s_objects::CASE_GATEWAY
        )
    } else if request["scheme"] == "https" {
        "k8s-ingress-tls".to_string()
    } else {
        "k8s-ingress".to_string()
    }
}

/// Replays every case group of `kind` ("ingress" or "gateway") through the fake API server:
/// how many requests passed, and the failures.
async fn replay(kind: &str) -> (usize, Vec<String>) {
    let fake = FakeApiServer::start();
    let r = Replica::start(&format!("cases-{kind}"), &fake, false);
    assert!(
        until(APPLY_WITHIN, || r.state.ready()).await.is_some(),
        "the source synced: {:?}",
        r.state.reasons()
    );
    let mut failures = Vec::new();
    let mut passed = 0;
    let mut previous: Vec<Obj> = Vec::new();
    for group in testkit::shared::json_array("routing/cases.json")
        .iter()
        .filter(|g| g["kind"] == kind)
    {
        let id = group["id"].as_str().unwrap_or("?");
        // The previous group's objects go; nothing of the cluster is left serving.
        for o in &previous {
            remove(&fake, o);
        }
        let emptied = until(APPLY_WITHIN, || r.cp.cluster().is_empty()).await;
        assert!(emptied.is_some(), "{id}: the deletions were applied");

        let case = k8s_objects::case_objects(group);
        let mut objs = k8s_objects::objects(&case.snapshot);
        let seen = r.events_seen();
        let t = Instant::now();
        write_all(&fake, &mut objs).await;
        // Applied: the source has seen every object written, and the control plane serves
        // what the group's objects mean (for a group that means nothing of ours, seeing them
        // is what tells the answers are not from before).
        let want = translate(&case.snapshot, &r.settings);
        let applied = until(APPLY_WITHIN, || {
            let part = r.cp.cluster();
            r.events_seen() >= seen + objs.len() as u64
                && part.http == want.http
                && part.services == want.services
        })
        .await;
        if applied.is_none() {
            failures.push(format!(
                "{id}: not applied within {APPLY_WITHIN:?}: {:?}",
                r.state.reasons()
            ));
        }
        let took = t.elapsed();
        previous = objs;

        let mut group_passed = 0;
        let requests = group["requests"].as_array().unwrap();
        for request in requests {
            let name = http_name(kind == "gateway", request);
            // No [[http]] at all (no Ingress of ours): nothing is served, as an empty table.
            let (spec, sni) = r.table(&name).unwrap_or((
                TableSpec {
                    services: vec![],
                    routes: vec![],
                    default_backend: None,
                },
                Vec::new(),
            ));
            if request["scheme"] == "https" {
                let want_sni = request["sni"].as_str().unwrap_or_default();
                if !sni.iter().any(|n| n == want_sni) {
                    failures.push(format!("{id}: no certificate for {want_sni:?}"));
                    continue;
                }
            }
            let table = RouteTable::compile(&spec);
            let mut state = SelectState::new(&table);
            let mut routing = Routing {
                table: &table,
                state: &mut state,
            };
            match check_routing_request_named(
                &mut routing,
                request,
                &k8s_objects::by_address(&case.backend_of),
            ) {
                Ok(()) => group_passed += 1,
                Err(e) => {
                    failures.push(format!("{id} {} {}: {e}", request["host"], request["path"]))
                }
            }
        }
        println!(
            "{id}: {group_passed}/{} requests pass (objects written and applied in {took:?})",
            requests.len()
        );
        passed += group_passed;
    }
    r.stop();
    (passed, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_cases_through_the_fake_api_server_route_as_expected() {
    let want: usize = testkit::shared::json_array("routing/cases.json")
        .iter()
        .filter(|g| g["kind"] == "ingress")
        .map(|g| g["requests"].as_array().map_or(0, Vec::len))
        .sum();
    let (passed, failures) = replay("ingress").await;
    println!("ingress: {passed}/{want} requests pass");
    assert!(
        failures.is_empty(),
        "{} failures ({passed} passed):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed, want);
    assert!(want > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_cases_through_the_fake_api_server_route_as_expected() {
    let all = testkit::shared::json_array("routing/cases.json");
    let want: usize = all
        .iter()
        .filter(|g| g["kind"] == "gateway")
        .map(|g| g["requests"].as_array().map_or(0, Vec::len))
        .sum();
    let (passed, failures) = replay("gateway").await;
    println!("gateway: {passed}/{want} requests pass");
    assert!(
        failures.is_empty(),
        "{} failures ({passed} passed):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed, want);
    // With the Ingress groups, every request of the file (160 in all).
    let total: usize = all
        .iter()
        .map(|g| g["requests"].as_array().map_or(0, Vec::len))
        .sum();
    let ingress = total - want;
    println!("all groups: {total} requests ({ingress} ingress, {want} gateway)");
    assert_eq!(total, 160);
}

// ---- Hostile objects through the fake ----

/// The namespace of the hostile objects.
const NS: &str = "shop";
/// The one endpoint of Service `web`.
const WEB: &str = "198.18.1.10";

/// What `[[http]] k8s-ingress` answers for a GET of `host` `path`: the status and the address
/// picked.
fn answer(r: &Replica, host: &str, path: &str) -> (u16, Option<IpAddr>) {
    let Some((spec, _)) = r.table("k8s-ingress") else {
        return (404, None);
    };
    let table = RouteTable::compile(&spec);
    let mut state = SelectState::new(&table);
    let mut routing = Routing {
        table: &table,
        state: &mut state,
    };
    let view = RequestView::from_parts(host, path, "GET", &[]);
    match routing.route(&view) {
        Ok(pick) => (200, Some(table.backends[pick.backend.0 as usize].addr.ip())),
        Err(s) => (s.code(), None),
    }
}

/// The (host, path) of every route of `[[http]] k8s-ingress` in the serving config.
fn ingress_routes(r: &Replica) -> BTreeSet<(String, String)> {
    r.cp.config()
        .http
        .iter()
        .filter(|h| h.name == "k8s-ingress")
        .flat_map(|h| h.routes.iter())
        .map(|rt| (rt.hosts.join(","), rt.path.clone()))
        .collect()
}

/// The Warning Events stored in the fake about Ingress `name`: their reasons and messages.
fn events_about(fake: &FakeApiServer, name: &str) -> Vec<(String, String)> {
    fake.list_json::<Event>(Some(NS))
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Event>(v).ok())
        .filter(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.involved_object.kind.as_deref() == Some("Ingress")
                && e.involved_object.name.as_deref() == Some(name)
        })
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// An Ingress of ours in `NS`: one host, `/` to Service `web`.
fn plain(name: &str, host: &str) -> k8s_objects::IngressBuilder {
    k8s_objects::ingress(NS, name, Some("lb"), 0).rule(
        Some(host),
        "/",
        "Prefix",
        k8s_objects::backend("web", 80),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_objects_through_the_fake_are_skipped_and_reported_and_the_rest_serves() {
    use k8s_objects::{backend, ingress, ingress_class, service, slice, State};
    let fake = FakeApiServer::start();
    fake.apply(&ingress_class("lb", INGRESS_CONTROLLER, false));
    fake.apply(&service(NS, "web", &[("http", 80, 8080)]));
    fake.apply(&slice(
        NS,
        "web",
        "web-abc12",
        &[("http", 8080)],
        &[(WEB, State::Ready)],
        false,
    ));
    fake.apply(&plain("fine", "d.example.com").build());
    let r = Replica::start("hostile", &fake, true);
    let web: IpAddr = WEB.parse().unwrap();
    assert!(
        until(APPLY_WITHIN, || answer(&r, "d.example.com", "/")
            == (200, Some(web)))
        .await
        .is_some(),
        "{:?}",
        r.state.reasons()
    );

    let max_body = || {
        r.cp.config()
            .http
            .iter()
            .find(|h| h.name == "k8s-ingress")
            .map(|h| h.limits.max_body)
    };
    let default_body = max_body();
    assert!(default_body.is_some());

    // A bad annotation: the Ingress is served without it, and a Warning Event says why.
    fake.apply(
        &plain("bad-annotation", "e.example.com")
            .nginx("proxy-body-size", "lots")
            .build(),
    );
    // A 1 MiB annotation and 10,000 paths: skipped whole.
    fake.apply(
        &plain("huge-annotation", "a.example.com")
            .annotation("example.com/blob", &"x".repeat(1 << 20))
            .build(),
    );
    fake.apply(
        &ingress(NS, "many-paths", Some("lb"), 0)
            .many_paths("b.example.com", 10_000, backend("web", 80))
            .build(),
    );
    // Path injection attempts beside one good path: each bad path skipped and reported.
    let injected = [
        "/x\r\nHost: evil.example.com",
        "/x;\n}\nserver {",
        "/y\nlocation / { return 200 \"owned\"; }",
        "/a#frag",
        "/q?admin=1",
        "/tab\there",
        "/{x}",
        "/s/../admin",
        "//double",
        "/p%2Fq",
        "/end/..",
    ];
    let mut inj = ingress(NS, "injection", Some("lb"), 0).rule(
        Some("c.example.com"),
        "/ok",
        "Prefix",
        backend("web", 80),
    );
    for p in injected {
        inj = inj.rule(Some("c.example.com"), p, "Prefix", backend("web", 80));
    }
    fake.apply(&inj.build());
    // `;` is a valid path character (RFC 3986, Gateway API's pattern) that means something in
    // other proxies' config text: taken as literal path bytes (nothing is pasted into any
    // config text), so the route matches exactly its own bytes and captures nothing else.
    let literal = ["/a;b"];
    let mut lit = ingress(NS, "literal", Some("lb"), 0);
    for p in literal {
        lit = lit.rule(Some("g.example.com"), p, "Prefix", backend("web", 80));
    }
    fake.apply(&lit.build());

    // The process stays responsive: an Ingress written after all of them is served soon.
    let t = Instant::now();
    fake.apply(&plain("late", "f.example.com").build());
    // Meanwhile the Ingress beside them never stops serving.
    let interrupted = std::cell::Cell::new(0u32);
    let took = until(APPLY_WITHIN, || {
        if answer(&r, "d.example.com", "/") != (200, Some(web)) {
            interrupted.set(interrupted.get() + 1);
        }
        answer(&r, "f.example.com", "/") == (200, Some(web))
    })
    .await;
    assert_eq!(
        interrupted.get(),
        0,
        "polls where d.example.com was not served"
    );
    println!("a good Ingress written after the hostile ones served in {took:?}");
    assert!(
        took.is_some(),
        "{:?} {:?}",
        ingress_routes(&r),
        r.state.reasons()
    );
    assert!(t.elapsed() < APPLY_WITHIN);

    // What serves: the good Ingresses, the bad annotation's Ingress, the good injection path.
    let want: BTreeSet<(String, String)> = [
        ("c.example.com", "/ok"),
        ("d.example.com", "/"),
        ("e.example.com", "/"),
        ("f.example.com", "/"),
        ("g.example.com", literal[0]),
    ]
    .iter()
    .map(|(h, p)| (h.to_string(), p.to_string()))
    .collect();
    assert_eq!(ingress_routes(&r), want);
    assert_eq!(answer(&r, "d.example.com", "/"), (200, Some(web)));
    assert_eq!(answer(&r, "e.example.com", "/"), (200, Some(web)));
    assert_eq!(max_body(), default_body, "the bad body size is not applied");
    assert_eq!(answer(&r, "c.example.com", "/ok"), (200, Some(web)));
    assert_eq!(answer(&r, "a.example.com", "/").0, 404);
    assert_eq!(answer(&r, "b.example.com", "/p5").0, 404);
    assert_eq!(answer(&r, "c.example.com", "/x").0, 404);
    assert_eq!(answer(&r, "c.example.com", "/y").0, 404);
    for p in literal {
        assert_eq!(answer(&r, "g.example.com", p), (200, Some(web)), "{p}");
    }
    for p in ["/", "/a", "/admin", "/s/admin", "/x"] {
        assert_eq!(answer(&r, "g.example.com", p).0, 404, "{p}");
    }
    // No value of an object is in any entry of the serving config.
    let dump = format!("{:?}", r.cp.config().http);
    for needle in [
        "evil.example.com",
        "server {",
        "location",
        "owned",
        "xxxxxxxx",
    ] {
        assert!(!dump.contains(needle), "{needle:?} in the serving config");
    }

    // Reported: one Warning Event per problem, written by the leader into the fake.
    let reported = |name: &str, reason: &str, n: usize| {
        let evs = events_about(&fake, name);
        evs.iter().filter(|(r, _)| r == reason).count() == n
    };
    let all_reported = until(APPLY_WITHIN, || {
        reported("bad-annotation", "InvalidAnnotation", 1)
            && reported("huge-annotation", "TooLarge", 1)
            && reported("many-paths", "TooLarge", 1)
            && reported("injection", "InvalidPath", injected.len())
    })
    .await;
    assert!(
        all_reported.is_some(),
        "bad-annotation {:?}\nhuge-annotation {:?}\nmany-paths {:?}\ninjection {:?}",
        events_about(&fake, "bad-annotation"),
        events_about(&fake, "huge-annotation"),
        events_about(&fake, "many-paths"),
        events_about(&fake, "injection")
    );
    // Messages are bounded and carry no raw control characters, whatever the value was.
    for name in [
        "bad-annotation",
        "huge-annotation",
        "many-paths",
        "injection",
    ] {
        for (reason, message) in events_about(&fake, name) {
            assert!(
                message.len() < 512,
                "{name} {reason}: {} bytes",
                message.len()
            );
            assert!(
                !message.contains(['\r', '\n']),
                "{name} {reason}: {message:?}"
            );
        }
    }
    for good in ["fine", "late", "literal"] {
        assert!(events_about(&fake, good).is_empty(), "{good}");
    }
    let view = r.state.view();
    assert!(view.problems >= 3 + injected.len(), "{view:?}");
    // Skipping is per object: no apply of the cluster's state was refused for them.
    assert_eq!(view.applies_rejected, 0, "{view:?}");
    r.stop();
}

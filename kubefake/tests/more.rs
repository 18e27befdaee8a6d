//! Beyond the basics: custom resources with a status subresource (our Gateway API types are
//! such), kube's Event recorder, raw watch semantics (initial events, timeouts, 410 on an old
//! resourceVersion, black holes) and a list of thousands of objects.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::CustomResource;
use kubefake::FakeApiServer;
use serde::{Deserialize, Serialize};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A namespaced custom resource with a status, like HTTPRoute.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced,
    status = "RouteStatus",
    schema = "disabled"
)]
struct RouteSpec {
    hostnames: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RouteStatus {
    accepted: bool,
}

/// A cluster-scoped one, like GatewayClass.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GatewayClass",
    status = "RouteStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
struct ClassSpec {
    controller_name: String,
}

fn service(name: &str) -> Service {
    let mut s = Service::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some("default".into());
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_with_status_subresource() {
    let fake = FakeApiServer::start();
    let mut route = HTTPRoute::new(
        "r1",
        RouteSpec {
            hostnames: vec!["a.example".into()],
        },
    );
    route.metadata.namespace = Some("apps".into());
    route.status = Some(RouteStatus { accepted: true });
    let stored = fake.apply(&route);
    assert!(
        stored.get("status").is_none(),
        "a user's apply does not write status"
    );

    let routes: Api<HTTPRoute> = Api::namespaced(fake.client(), "apps");
    let got = routes.get("r1").await.expect("get route");
    assert_eq!(got.spec.hostnames, ["a.example"]);
    let status = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                        "status": {"accepted": true}});
    let pp = PatchParams::apply("lb-status").force();
    let patched = routes
        .patch_status("r1", &pp, &Patch::Apply(&status))
        .await
        .expect("status");
    assert_eq!(patched.status, Some(RouteStatus { accepted: true }));
    assert_eq!(
        fake.request_log().last().map(|r| r.path.clone()).as_deref(),
        Some("/apis/gateway.networking.k8s.io/v1/namespaces/apps/httproutes/r1/status")
    );

    let classes: Api<GatewayClass> = Api::all(fake.client());
    fake.apply(&GatewayClass::new(
        "lb",
        ClassSpec {
            controller_name: "example.net/lb".into(),
        },
    ));
    let listed = classes
        .list(&ListParams::default())
        .await
        .expect("list classes");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.namespace, None, "cluster-scoped");
    assert_eq!(listed.items[0].spec.controller_name, "example.net/lb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_event_recorder_publishes_and_updates_series() {
    let fake = FakeApiServer::start();
    fake.apply(&service("web"));
    let reporter = Reporter {
        controller: "lb".into(),
        instance: Some("lb-0".into()),
    };
    let recorder = Recorder::new(fake.client(), reporter);
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidAnnotation".into(),
        note: Some("lb.example/weight: not a number".into()),
        action: "Translate".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.expect("publish");
    recorder
        .publish(&event, &reference)
        .await
        .expect("publish again");
    let events = fake.list_json::<k8s_openapi::api::events::v1::Event>(Some("default"));
    assert_eq!(
        events.len(),
        1,
        "the repeat is a series on the same Event: {events:?}"
    );
    assert_eq!(events[0]["reason"], "InvalidAnnotation");
    assert_eq!(events[0]["regarding"]["name"], "web");
    let methods: Vec<String> = fake.requests().into_iter().map(|(m, _, _)| m).collect();
    assert_eq!(methods, ["POST", "PATCH"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_semantics() {
    let fake = FakeApiServer::start();
    fake.apply(&service("a"));
    fake.apply(&service("b"));
    let api: Api<Service> = Api::namespaced(fake.client(), "default");

    // From "0": the current objects first, as ADDED.
    let mut s = api
        .watch(&WatchParams::default().disable_bookmarks(), "0")
        .await
        .expect("watch")
        .boxed();
    for want in ["a", "b"] {
        let ev = within("initial event", s.try_next())
            .await
            .expect("stream")
            .expect("event");
        assert!(
            matches!(&ev, WatchEvent::Added(o) if o.metadata.name.as_deref() == Some(want)),
            "{ev:?}"
        );
    }
    drop(s);

    // timeoutSeconds ends the stream.
    let started = Instant::now();
    let wp = WatchParams::default().disable_bookmarks().timeout(1);
    let mut s = api
        .watch(&wp, &fake.resource_version().to_string())
        .await
        .expect("watch")
        .boxed();
    assert!(within("the watch to end", s.try_next())
        .await
        .expect("stream")
        .is_none());
    assert!(started.elapsed() >= Duration::from_millis(900));

    // An old resourceVersion after a compaction: one ERROR 410 Expired, then the end.
    let old = fake.resource_version();
    fake.apply(&service("c"));
    fake.compact();
    let mut s = api
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .expect("watch")
        .boxed();
    let ev = within("the 410", s.try_next())
        .await
        .expect("stream")
        .expect("event");
    assert!(
        matches!(&ev, WatchEvent::Error(e) if e.code == 410 && e.reason == "Expired"),
        "{ev:?}"
    );
    assert!(within("the end", s.try_next())
        .await
        .expect("stream")
        .is_none());
    assert_eq!(fake.watches_expired(), 1);
    within("ended watches to be uncounted", async {
        while fake.active_watches() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // A black hole: the request hangs (the client's own timeout fires), then it answers again.
    fake.set_unresponsive(true);
    let hung = tokio::time::timeout(Duration::from_millis(300), api.get("a")).await;
    assert!(hung.is_err(), "no answer while unresponsive");
    fake.set_unresponsive(false);
    within("an answer", api.get("a"))
        .await
        .expect("get after the black hole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_objects_list_and_reflect() {
    let fake = FakeApiServer::start();
    let api: Api<Service> = Api::all(fake.client());
    let start = Instant::now();
    for i in 0..3000 {
        fake.apply(&service(&format!("s{i:05}")));
    }
    let applied = start.elapsed();
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().page_size(500)),
    )
    .default_backoff()
    .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    let start = Instant::now();
    within("the reflector", async {
        while reader.state().len() < 3000 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let synced = start.elapsed();
    let pages = fake
        .request_log()
        .iter()
        .filter(|r| r.method == "GET" && !r.is_watch() && r.query.contains("limit=500"))
        .count();
    eprintln!("3000 applies {applied:?}, reflector synced in {synced:?} with {pages} pages");
    assert_eq!(pages, 6, "paged by 500");
    // One more change reaches the reflector through the watch.
    fake.apply(&service("z"));
    within("the watch event", async {
        while reader.state().len() < 3001 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_served_types_and_unregister_hides_a_crd() {
    let fake = FakeApiServer::start();
    let client = fake.client();
    let discovery = kube::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let gateway = discovery
        .get("gateway.networking.k8s.io")
        .expect("the Gateway API group");
    let kinds: Vec<String> = gateway
        .recommended_resources()
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    assert!(kinds.contains(&"HTTPRoute".to_owned()), "{kinds:?}");
    let core = discovery.get("").expect("the core group");
    assert!(core.recommended_resources().iter().any(
        |(r, caps)| r.plural == "services" && caps.scope == kube::discovery::Scope::Namespaced
    ));

    // Without the CRD: not discovered, and its URLs are 404.
    fake.unregister("gateway.networking.k8s.io", "v1", "httproutes");
    let discovery = kube::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let kinds: Vec<String> = discovery
        .get("gateway.networking.k8s.io")
        .map(|g| {
            g.recommended_resources()
                .into_iter()
                .map(|(r, _)| r.kind)
                .collect()
        })
        .unwrap_or_default();
    assert!(!kinds.contains(&"HTTPRoute".to_owned()), "{kinds:?}");
    let routes: Api<HTTPRoute> = Api::namespaced(client, "apps");
    let missing = routes.list(&ListParams::default()).await;
    assert!(
        matches!(&missing, Err(kube::Error::Api(s)) if s.code == 404),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_lists_json_patches_and_delete_collection() {
    let fake = FakeApiServer::start();
    let api: Api<Service> = Api::namespaced(fake.client(), "default");
    fake.apply(&service("a"));
    let then = fake.resource_version();
    fake.apply(&service("b"));
    assert!(fake.delete::<Service>("default", "a"));

    // The list as it was at `then`.
    let lp = ListParams::default()
        .at(&then.to_string())
        .matching(kube::api::VersionMatch::Exact);
    let old = api.list(&lp).await.expect("exact list");
    let names: Vec<_> = old
        .items
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names, ["a"]);
    assert_eq!(old.metadata.resource_version, Some(then.to_string()));

    // RFC 6902 patch: add a label, test-guarded.
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/name", "value": "b"},
        {"op": "add", "path": "/metadata/labels", "value": {"tier": "web"}},
    ]))
    .expect("patch ops");
    let patched = api
        .patch("b", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .expect("json patch");
    assert_eq!(
        patched
            .metadata
            .labels
            .unwrap_or_default()
            .get("tier")
            .map(String::as_str),
        Some("web")
    );
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "zzz"}]))
            .expect("patch ops");
    let refused = api
        .patch("b", &PatchParams::default(), &Patch::Json::<()>(failing))
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422),
        "{refused:?}"
    );

    // deletecollection with a selector takes only the selected.
    fake.apply(&service("c"));
    let gone = api
        .delete_collection(
            &kube::api::DeleteParams::default(),
            &ListParams::default().labels("tier=web"),
        )
        .await
        .expect("delete collection");
    let deleted: Vec<String> = gone
        .left()
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(deleted, ["b"]);
    let left: Vec<_> = api.list(&ListParams::default()).await.expect("list").items;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].metadata.name.as_deref(), Some("c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watchers_sync_from_initial_events() {
    let fake = FakeApiServer::start();
    fake.apply(&service("a"));
    fake.apply(&service("b"));
    let api: Api<Service> = Api::all(fake.client());
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default().streaming_lists()),
    )
    .default_backoff()
    .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    let names = |r: &reflector::Store<Service>| {
        let mut n: Vec<String> = r
            .state()
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        n.sort();
        n
    };
    within("the initial events", async {
        while names(&reader) != ["a", "b"] {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        fake.request_log().iter().all(|r| r.is_watch()),
        "a streaming list needs no LIST"
    );
    fake.apply(&service("c"));
    within("a later event", async {
        while names(&reader) != ["a", "b", "c"] {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    task.abort();
}

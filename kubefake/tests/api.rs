//! kube's own client and watcher against the fake API server: what the kubernetes source
//! relies on (list, watch, relist after 410 and after a restart, bookmarks, conflicts, status).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Service, ServiceSpec, ServiceStatus};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kubefake::{FakeApiServer, RequestRecord};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `cond` every 20 ms until it holds or WAIT passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn service(name: &str, app: &str, port: i32) -> Service {
    Service {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                port,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn names(list: &[Service]) -> Vec<String> {
    let mut n: Vec<String> = list
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_added_modified_deleted_in_order() {
    let fake = FakeApiServer::start();
    let api: Api<Service> = Api::namespaced(fake.client(), "default");
    api.create(&PostParams::default(), &service("before", "web", 80))
        .await
        .expect("create");
    let list = within("list", api.list(&ListParams::default()))
        .await
        .expect("list");
    assert_eq!(names(&list.items), ["before"]);
    let rv = list
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let mut events = within(
        "watch",
        api.watch(&WatchParams::default().disable_bookmarks(), &rv),
    )
    .await
    .expect("watch")
    .boxed();
    assert!(fake.wait_for_watches(1, WAIT));

    fake.apply(&service("a", "web", 80));
    fake.apply(&service("a", "web", 81));
    // The same object again is no change: no event.
    fake.apply(&service("a", "web", 81));
    assert!(fake.delete::<Service>("default", "a"));

    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = within("event", events.try_next())
            .await
            .expect("stream")
            .expect("event");
        seen.push(match ev {
            WatchEvent::Added(s) => ("ADDED", s),
            WatchEvent::Modified(s) => ("MODIFIED", s),
            WatchEvent::Deleted(s) => ("DELETED", s),
            other => panic!("unexpected {other:?}"),
        });
    }
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    let port = |s: &Service| {
        s.spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(|p| p[0].port)
    };
    assert_eq!(port(&seen[1].1), Some(81));
    let rvs: Vec<u64> = seen
        .iter()
        .map(|(_, s)| {
            s.metadata
                .resource_version
                .as_deref()
                .unwrap_or("")
                .parse()
                .expect("numeric rv")
        })
        .collect();
    assert!(
        rvs.windows(2).all(|w| w[0] < w[1]),
        "resourceVersions increase: {rvs:?}"
    );
    assert_eq!(
        seen[1].1.metadata.generation,
        Some(2),
        "the spec change bumped generation"
    );

    // A watch from an old resourceVersion replays the history from there.
    let mut replay = api
        .watch(&WatchParams::default().disable_bookmarks(), &rv)
        .await
        .expect("watch")
        .boxed();
    let first = within("replay", replay.try_next())
        .await
        .expect("stream")
        .expect("event");
    assert!(matches!(first, WatchEvent::Added(s) if s.metadata.name.as_deref() == Some("a")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_filter_lists_and_watches() {
    let fake = FakeApiServer::start();
    let api: Api<Service> = Api::namespaced(fake.client(), "default");
    fake.apply(&service("w1", "web", 80));
    fake.apply(&service("w2", "web", 80));
    fake.apply(&service("d1", "db", 5432));
    let mut other_ns = service("w3", "web", 80);
    other_ns.metadata.namespace = Some("other".into());
    fake.apply(&other_ns);

    let web = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list");
    assert_eq!(names(&web.items), ["w1", "w2"]);
    let not_web = api
        .list(&ListParams::default().labels("app notin (web)"))
        .await
        .expect("list");
    assert_eq!(names(&not_web.items), ["d1"]);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=w2"))
        .await
        .expect("list");
    assert_eq!(names(&by_name.items), ["w2"]);
    let all: Api<Service> = Api::all(fake.client());
    let everywhere = all
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list");
    assert_eq!(names(&everywhere.items), ["w1", "w2", "w3"]);
    let other = all
        .list(&ListParams::default().fields("metadata.namespace!=default"))
        .await
        .expect("list");
    assert_eq!(names(&other.items), ["w3"]);
    let bad = api.list(&ListParams::default().labels("app in (web")).await;
    assert!(
        matches!(bad, Err(kube::Error::Api(s)) if s.code == 400),
        "a broken selector is a 400"
    );

    // Paging: two at a time, all of them in the end.
    let mut lp = ListParams::default().limit(2);
    let mut paged = Vec::new();
    loop {
        let page = api.list(&lp).await.expect("page");
        assert!(page.items.len() <= 2);
        paged.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(names(&paged), ["d1", "w1", "w2"]);

    // A watch with a selector: relabelling out of the selection is a DELETED.
    let rv = web.metadata.resource_version.expect("rv");
    let wp = WatchParams::default().labels("app=web").disable_bookmarks();
    let mut events = api.watch(&wp, &rv).await.expect("watch").boxed();
    fake.apply(&service("d2", "db", 1)); // never seen
    fake.apply(&service("w1", "db", 80)); // leaves the selection
    fake.apply(&service("d1", "web", 5432)); // joins it
    let ev = within("event", events.try_next())
        .await
        .expect("stream")
        .expect("event");
    assert!(
        matches!(&ev, WatchEvent::Deleted(s) if s.metadata.name.as_deref() == Some("w1")),
        "{ev:?}"
    );
    let ev = within("event", events.try_next())
        .await
        .expect("stream")
        .expect("event");
    assert!(
        matches!(&ev, WatchEvent::Added(s) if s.metadata.name.as_deref() == Some("d1")),
        "{ev:?}"
    );
}

/// Runs a reflector over Services; returns its store and the task driving it.
fn reflect(fake: &FakeApiServer) -> (reflector::Store<Service>, tokio::task::JoinHandle<()>) {
    let api: Api<Service> = Api::all(fake.client());
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    (reader, task)
}

fn store_names(reader: &reflector::Store<Service>) -> Vec<String> {
    let mut n: Vec<String> = reader
        .state()
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_relists_after_410_and_its_store_ends_right() {
    let fake = FakeApiServer::start();
    fake.apply(&service("a", "web", 80));
    fake.apply(&service("b", "web", 80));
    let (reader, task) = reflect(&fake);
    eventually("the initial list", || store_names(&reader) == ["a", "b"]).await;
    assert!(fake.wait_for_watches(1, WAIT));

    // While the client cannot reach the server, objects change and the history is compacted:
    // its next watch, from its old resourceVersion, gets 410 and it must relist.
    fake.set_unreachable(true);
    assert!(fake.delete::<Service>("default", "a"));
    fake.apply(&service("c", "web", 80));
    fake.compact();
    fake.clear_requests();
    fake.set_unreachable(false);
    eventually("the relisted store", || store_names(&reader) == ["b", "c"]).await;
    assert!(
        fake.watches_expired() >= 1,
        "the old resourceVersion got 410"
    );
    let log = fake.request_log();
    let first_list = log
        .iter()
        .position(|r| r.path == "/api/v1/services" && !r.is_watch());
    let first_watch = log.iter().position(RequestRecord::is_watch);
    assert!(
        matches!((first_watch, first_list), (Some(w), Some(l)) if w < l),
        "a watch that got 410, then a list: {log:?}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_recovers_from_an_apiserver_restart() {
    let fake = FakeApiServer::start();
    fake.apply(&service("a", "web", 80));
    let (reader, task) = reflect(&fake);
    eventually("the initial list", || store_names(&reader) == ["a"]).await;
    assert!(fake.wait_for_watches(1, WAIT));
    let started = fake.watches_started();

    fake.restart(Duration::from_millis(300));
    // Connections are refused while it is down.
    assert!(std::net::TcpStream::connect(fake.addr()).is_err());
    // A restart ends every watch (its task notices the closed connection a moment later).
    eventually("every watch ended by the restart", || {
        fake.active_watches() == 0
    })
    .await;
    fake.apply(&service("b", "web", 80));
    eventually("the store after the restart", || {
        store_names(&reader) == ["a", "b"]
    })
    .await;
    assert!(
        fake.watches_started() > started,
        "the watcher watched again"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_arrive_with_the_current_resource_version() {
    let fake = FakeApiServer::start();
    fake.set_bookmark_interval(Duration::from_millis(100));
    let api: Api<Service> = Api::namespaced(fake.client(), "default");
    let list = api.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.expect("rv");
    let mut events = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    // A change to another resource type moves the global resourceVersion on.
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("l".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: None,
    };
    fake.apply(&lease);
    let now = fake.resource_version();
    let mut bookmark = None;
    within("a bookmark", async {
        while let Some(ev) = events.try_next().await.expect("stream") {
            if let WatchEvent::Bookmark(b) = ev {
                if b.metadata.resource_version.parse::<u64>().ok() == Some(now) {
                    bookmark = Some(b);
                    break;
                }
            }
        }
    })
    .await;
    assert!(
        bookmark.is_some(),
        "a bookmark at the latest resourceVersion"
    );
}

fn lease(name: &str, holder: &str) -> Lease {
    Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_replace_is_a_409_conflict() {
    let fake = FakeApiServer::start();
    let api: Api<Lease> = Api::namespaced(fake.client(), "kube-system");
    let created = api
        .create(&PostParams::default(), &lease("lb", "one"))
        .await
        .expect("create");
    let again = api
        .create(&PostParams::default(), &lease("lb", "two"))
        .await;
    assert!(
        matches!(again, Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists")
    );

    let mut mine = created.clone();
    mine.spec = Some(LeaseSpec {
        holder_identity: Some("one-renewed".into()),
        ..Default::default()
    });
    let renewed = api
        .replace("lb", &PostParams::default(), &mine)
        .await
        .expect("replace");
    // `created` carries the old resourceVersion now: a second writer loses.
    let mut theirs = created;
    theirs.spec = Some(LeaseSpec {
        holder_identity: Some("two".into()),
        ..Default::default()
    });
    let lost = api.replace("lb", &PostParams::default(), &theirs).await;
    assert!(
        matches!(lost, Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict"),
        "stale replace"
    );
    let now = api.get("lb").await.expect("get");
    assert_eq!(
        now.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("one-renewed")
    );
    assert_eq!(
        now.metadata.resource_version,
        renewed.metadata.resource_version
    );

    let missing = api.get("nope").await;
    assert!(matches!(missing, Err(kube::Error::Api(s)) if s.code == 404 && s.reason == "NotFound"));
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..Default::default()
    };
    let stale_delete = api.delete("lb", &dp).await;
    assert!(matches!(stale_delete, Err(kube::Error::Api(s)) if s.code == 409));
    api.delete("lb", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(fake.get_json::<Lease>("kube-system", "lb").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_is_separate_from_the_object() {
    let fake = FakeApiServer::start();
    let api: Api<Service> = Api::namespaced(fake.client(), "default");
    fake.apply(&service("web", "web", 80));
    // Server-side apply of the status, as a status writer does it.
    let status = json!({"apiVersion": "v1", "kind": "Service",
                        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}});
    let pp = PatchParams::apply("lb-status").force();
    let patched = api
        .patch_status("web", &pp, &Patch::Apply(&status))
        .await
        .expect("patch status");
    let ip = |s: &Service| {
        s.status
            .as_ref()
            .and_then(|s: &ServiceStatus| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|i| i.first())
            .and_then(|i| i.ip.clone())
    };
    assert_eq!(ip(&patched).as_deref(), Some("192.0.2.10"));
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "a status write is not a spec change"
    );

    // A user's apply (no status) keeps the status; a status in a normal patch is ignored.
    fake.apply(&service("web", "web", 8080));
    let mut sneaky = json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.66"}]}}});
    sneaky["spec"] = json!({"ports": [{"port": 9090}]});
    let after = api
        .patch("web", &PatchParams::default(), &Patch::Merge(&sneaky))
        .await
        .expect("patch");
    assert_eq!(ip(&after).as_deref(), Some("192.0.2.10"));
    assert_eq!(
        after.spec.and_then(|s| s.ports).map(|p| p[0].port),
        Some(9090)
    );

    // Server-side apply of a new object creates it.
    let ssa = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ssa"},
                     "spec": {"ports": [{"port": 53}]}});
    api.patch(
        "ssa",
        &PatchParams::apply("lb").force(),
        &Patch::Apply(&ssa),
    )
    .await
    .expect("apply");
    assert!(fake.get::<Service>("default", "ssa").is_some());

    let writers: Vec<(String, String)> = fake
        .requests()
        .into_iter()
        .filter(|(m, _, _)| m == "PATCH")
        .map(|(_, p, agent)| (p, agent))
        .collect();
    assert_eq!(
        writers[0],
        (
            "/api/v1/namespaces/default/services/web/status".into(),
            "lb-status".into()
        )
    );
    assert_eq!(
        writers[2],
        (
            "/api/v1/namespaces/default/services/ssa".into(),
            "lb".into()
        )
    );
}

#[test]
fn controls_work_without_a_runtime_and_kubeconfig_points_at_the_server() {
    let fake = FakeApiServer::start();
    fake.apply(&service("a", "web", 80));
    assert_eq!(fake.list_json::<Service>(None).len(), 1);
    let dir = std::env::temp_dir().join(format!("kubefake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("kubeconfig");
    fake.write_kubeconfig(&path).expect("write kubeconfig");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let got = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        Api::<Service>::default_namespaced(client).get("a").await
    });
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert_eq!(
        got.expect("get through the kubeconfig")
            .metadata
            .name
            .as_deref(),
        Some("a")
    );
}

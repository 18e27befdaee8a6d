//! Route filters through the real transport on 127.0.0.1: the backend receives the head the
//! route's header modifier made, the client gets the redirect the route answers (from the raw
//! client and from curl), and the connection carries on after it.

mod l7_net;

use dataplane::l7::route::{HeaderModifier, PathRewrite, Redirect, RedirectStatus, Scheme};
use dataplane::l7::{ConnConfig, TableSpec};
use l7_net::*;
use std::process::Command;

/// Backend `app`; a.test -> app with header changes, old.test/v1 and old.test/ redirect.
fn filtered() -> (Backend, TableSpec) {
    let app = Backend::start("app", Mode::Name);
    let mut modified = route(&["a.test"], "/", "app");
    modified.request_headers = Some(HeaderModifier {
        set: vec![("X-Env".into(), "prod".into())],
        add: vec![("X-Tag".into(), "lb".into())],
        remove: vec!["x-debug".into()],
    });
    let mut moved = route(&["old.test"], "/v1", "app");
    moved.backends.clear();
    moved.redirect = Some(Redirect {
        scheme: Some(Scheme::Https),
        host: Some("new.test".into()),
        path: Some(PathRewrite::ReplacePrefix("/v2".into())),
        status: RedirectStatus::MovedPermanently,
        ..Default::default()
    });
    let mut found = route(&["old.test"], "/", "app");
    found.backends.clear();
    found.redirect = Some(Redirect::default());
    let spec = TableSpec {
        services: vec![service(&app)],
        routes: vec![modified, moved, found],
        default_backend: None,
    };
    (app, spec)
}

#[test]
fn the_backend_gets_the_modified_head_and_the_client_the_redirect() {
    let (app, spec) = filtered();
    let (proxy, _) = proxy(&spec, 1, ConnConfig::default());
    let addr = proxy.local_addrs()[0];
    let mut c = Client::connect(addr);
    let r = c.get("old.test", "/v1/items?id=7").expect("an answer");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://new.test/v2/items?id=7"));
    // The same connection goes on to a proxied request with its head changed.
    c.send(
        b"GET /x HTTP/1.1\r\nhost: a.test\r\nX-ENV: dev\r\nx-env: test\r\nX-Tag: client\r\n\
X-Debug: 1\r\naccept: */*\r\n\r\n",
    );
    let r = read_response(&mut c.reader).expect("an answer");
    assert_eq!((r.status, r.text().as_str()), (200, "app"));
    let seen = app.seen().pop().expect("the backend saw it");
    let values = |n: &str| -> Vec<String> {
        seen.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(values("x-env"), vec!["prod"]);
    assert_eq!(values("x-tag"), vec!["client", "lb"]);
    assert!(values("x-debug").is_empty());
    assert_eq!(values("accept"), vec!["*/*"]);
    assert_eq!(seen.header("x-forwarded-host"), Some("a.test"));
    // A plain redirect keeps the request's port, path and query.
    let r = c.get("old.test:8080", "/page?a=b").expect("an answer");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://old.test:8080/page?a=b"));
    assert_eq!(r.text(), "302 Found\n");
    assert_eq!(app.seen().len(), 1, "redirects never reach the backend");
    let counters = stop_and_count(proxy);
    assert_eq!(counters.answers[1], 1);
    assert_eq!(counters.answers[2], 2);
}

#[test]
fn curl_sees_the_redirect() {
    let (_app, spec) = filtered();
    let (proxy, _) = proxy(&spec, 1, ConnConfig::default());
    let port = proxy.local_addrs()[0].port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w"])
        .arg("%{http_code} %{redirect_url}")
        .arg("--resolve")
        .arg(format!("old.test:{port}:127.0.0.1"))
        .arg(format!("http://old.test:{port}/v1/a/b?c=d"))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "301 https://new.test/v2/a/b?c=d"
    );
    proxy.stop().unwrap();
}

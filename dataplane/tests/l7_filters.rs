//! Route filters in the connection machine, from recorded byte streams: a redirecting route
//! answers by itself (and the connection lives on), a header-modifying route sends the changed
//! head (also on the retry), and a route with a filter that does not check out answers 500.

mod l7_harness;

use dataplane::l7::conn::ConnConfig;
use dataplane::l7::route::{
    BackendId, BackendRef, EndpointSpec, HeaderModifier, Origin, PathMatch, PathRewrite, Policy,
    Redirect, RedirectStatus, RouteSpec, RouteTable, Scheme, ServiceSpec, TableSpec,
};
use dataplane::l7::select::{Routing, SelectState};
use l7_harness::{Harness, Reply};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn route(host: &str, path: PathMatch) -> RouteSpec {
    RouteSpec {
        cookies: Vec::new(),
        origin: Origin::Gateway,
        hosts: vec![host.into()],
        path,
        method: None,
        headers: vec![],
        backends: vec![BackendRef {
            service: "s".into(),
            weight: 1,
        }],
        redirect: None,
        request_headers: None,
    }
}

fn table(routes: Vec<RouteSpec>) -> RouteTable {
    RouteTable::compile(&TableSpec {
        services: vec![ServiceSpec {
            name: "s".into(),
            endpoints: ["127.0.0.1:1", "127.0.0.1:2"]
                .iter()
                .map(|a| EndpointSpec {
                    addr: a.parse().unwrap(),
                    weight: 1,
                })
                .collect(),
            policy: Policy::RoundRobin,
            upstream: Default::default(),
        }],
        routes,
        default_backend: None,
    })
}

fn redirect_route(host: &str, path: PathMatch, redirect: Redirect) -> RouteSpec {
    RouteSpec {
        cookies: Vec::new(),
        backends: vec![],
        redirect: Some(redirect),
        ..route(host, path)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_redirect_is_answered_whole_and_the_connection_stays() {
    let t = table(vec![
        redirect_route(
            "old.test",
            PathMatch::Prefix("/v1/".into()),
            Redirect {
                scheme: Some(Scheme::Https),
                host: Some("new.test".into()),
                path: Some(PathRewrite::ReplacePrefix("/v2".into())),
                status: RedirectStatus::MovedPermanently,
                ..Default::default()
            },
        ),
        redirect_route(
            "old.test",
            PathMatch::Exact("/home".into()),
            Redirect::default(),
        ),
        route("old.test", PathMatch::Prefix("/".into())),
    ]);
    let mut state = SelectState::new(&t);
    let routing = Routing {
        table: &t,
        state: &mut state,
    };
    let mut h = Harness::new(ConnConfig::default(), routing, Reply::Fixed(OK.to_vec()));
    // Two redirects pipelined, then a request that goes to the backend on the same connection.
    h.client(
        b"GET /v1/items?id=7 HTTP/1.1\r\nHost: old.test:8080\r\n\r\n\
GET /home HTTP/1.1\r\nHost: old.test:8080\r\n\r\nGET /other HTTP/1.1\r\nHost: old.test\r\n\r\n",
    );
    assert_eq!(
        text(&h.to_client),
        "HTTP/1.1 301 Moved Permanently\r\nlocation: https://new.test/v2/items?id=7\r\n\
content-type: text/plain\r\ncontent-length: 22\r\n\r\n301 Moved Permanently\n\
HTTP/1.1 302 Found\r\nlocation: http://old.test:8080/home\r\n\
content-type: text/plain\r\ncontent-length: 10\r\n\r\n302 Found\n\
HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    );
    // Only the last request reached a backend.
    assert_eq!(h.seen.len(), 1);
    assert_eq!(h.seen[0].path, "/other");
    assert!(!h.client_closed);
    assert_eq!(h.conn.answers(), [0, 1, 2, 0, 0]);
}

#[test]
fn a_redirect_of_a_request_with_a_body_closes() {
    let t = table(vec![redirect_route(
        "a.test",
        PathMatch::Prefix("/".into()),
        Redirect::default(),
    )]);
    let mut state = SelectState::new(&t);
    let routing = Routing {
        table: &t,
        state: &mut state,
    };
    let mut h = Harness::new(ConnConfig::default(), routing, Reply::Fixed(OK.to_vec()));
    h.client(b"POST /form HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhel");
    assert_eq!(
        text(&h.to_client),
        "HTTP/1.1 302 Found\r\nlocation: http://a.test/form\r\ncontent-type: text/plain\r\n\
content-length: 10\r\nconnection: close\r\n\r\n302 Found\n"
    );
    assert!(h.client_closed);
    assert!(h.connects.is_empty());
    // So does one whose client asked to close.
    let mut state = SelectState::new(&t);
    let routing = Routing {
        table: &t,
        state: &mut state,
    };
    let mut h = Harness::new(ConnConfig::default(), routing, Reply::Fixed(OK.to_vec()));
    h.client(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    assert_eq!(h.statuses(), vec![302]);
    assert!(h.client_closed);
}

#[test]
fn the_backend_gets_the_modified_head_also_on_the_retry() {
    let mut r = route("a.test", PathMatch::Prefix("/".into()));
    r.request_headers = Some(HeaderModifier {
        set: vec![("X-Env".into(), "prod".into())],
        add: vec![("X-Tag".into(), "lb".into())],
        remove: vec!["x-debug".into()],
    });
    let t = table(vec![r, route("b.test", PathMatch::Prefix("/".into()))]);
    let mut state = SelectState::new(&t);
    let routing = Routing {
        table: &t,
        state: &mut state,
    };
    let mut h = Harness::new(ConnConfig::default(), routing, Reply::Fixed(OK.to_vec()));
    // The first backend refuses: the retry carries the same changed head.
    h.refuse = vec![BackendId(0)];
    h.client(
        b"GET / HTTP/1.1\r\nHost: a.test\r\nx-env: dev\r\nX-ENV: test\r\nX-Tag: client\r\n\
X-Debug: 1\r\n\r\n",
    );
    assert_eq!(h.statuses(), vec![200]);
    assert_eq!(h.connects, vec![BackendId(0), BackendId(1)]);
    let headers = &h.seen[0].headers;
    let values = |n: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("x-env"), vec!["prod"]);
    assert_eq!(values("x-tag"), vec!["client", "lb"]);
    assert!(values("x-debug").is_empty());
    // Another route's requests are not touched.
    h.client(b"GET / HTTP/1.1\r\nHost: b.test\r\nX-Debug: 1\r\n\r\n");
    assert_eq!(h.statuses(), vec![200, 200]);
    assert_eq!(
        h.seen[1]
            .headers
            .iter()
            .filter(|(k, _)| k == "x-debug")
            .count(),
        1
    );
    assert!(h.seen[1].headers.iter().all(|(k, _)| k != "x-tag"));
}

#[test]
fn a_filter_that_does_not_check_out_answers_500() {
    let mut injecting = route("a.test", PathMatch::Prefix("/".into()));
    injecting.request_headers = Some(HeaderModifier {
        add: vec![("X-A".into(), "1\r\nX-Injected: 1".into())],
        ..Default::default()
    });
    let mut framing = route("b.test", PathMatch::Prefix("/".into()));
    framing.request_headers = Some(HeaderModifier {
        set: vec![("Content-Length".into(), "0".into())],
        ..Default::default()
    });
    let bad_host = redirect_route(
        "c.test",
        PathMatch::Prefix("/".into()),
        Redirect {
            host: Some("evil.test\r\nSet-Cookie: x=1".into()),
            ..Default::default()
        },
    );
    let t = table(vec![injecting, framing, bad_host]);
    let mut state = SelectState::new(&t);
    let routing = Routing {
        table: &t,
        state: &mut state,
    };
    let mut h = Harness::new(ConnConfig::default(), routing, Reply::Fixed(OK.to_vec()));
    for host in ["a.test", "b.test", "c.test"] {
        h.client(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    }
    assert_eq!(h.statuses(), vec![500, 500, 500]);
    assert!(h.connects.is_empty());
    assert!(!text(&h.to_client).contains("Injected") && !text(&h.to_client).contains("Set-Cookie"));
}

#[test]
fn answers_to_head_have_no_body_and_the_next_answer_follows_at_once() {
    let t = table(vec![
        redirect_route("a.test", PathMatch::Prefix("/".into()), Redirect::default()),
        route("b.test", PathMatch::Prefix("/".into())),
    ]);
    let mut state = SelectState::new(&t);
    let routing = Routing {
        table: &t,
        state: &mut state,
    };
    let mut h = Harness::new(ConnConfig::default(), routing, Reply::Fixed(OK.to_vec()));
    h.client(
        b"HEAD /x HTTP/1.1\r\nHost: a.test\r\n\r\nHEAD / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n\
GET / HTTP/1.1\r\nHost: b.test\r\n\r\n",
    );
    assert_eq!(
        text(&h.to_client),
        "HTTP/1.1 302 Found\r\nlocation: http://a.test/x\r\ncontent-type: text/plain\r\n\
content-length: 10\r\n\r\n\
HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 14\r\n\r\n\
HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    );
    assert!(!h.client_closed);
}

//! The mio transport with real sockets on 127.0.0.1: in-test backends, Rust and curl clients.
//! Routing by host and path, keep-alive reuse, streamed chunked uploads, upgrade tunnels, failing
//! and silent backends, table reloads under load, and the shared HTTP vectors through the real
//! proxy.

mod l7_net;

use base64::Engine as _;
use dataplane::l7::route::BackendRef;
use dataplane::l7::{ConnConfig, RejectReason, RouteTable, TableSpec};
use l7_net::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Backends `api`, `web` and `wild`; a.test/api -> api, a.test/ -> web, *.b.test -> wild.
fn three_routes() -> (Vec<Backend>, TableSpec) {
    let backends: Vec<Backend> = ["api", "web", "wild"]
        .iter()
        .map(|n| Backend::start(n, Mode::Name))
        .collect();
    let spec = TableSpec {
        services: backends.iter().map(service).collect(),
        routes: vec![
            route(&["a.test"], "/api", "api"),
            route(&["a.test"], "/", "web"),
            route(&["*.b.test"], "/", "wild"),
        ],
        default_backend: None,
    };
    (backends, spec)
}

#[test]
fn routes_by_host_and_path() {
    let (backends, spec) = three_routes();
    let (proxy, _) = proxy(&spec, 2, ConnConfig::default());
    let addr = proxy.local_addrs()[0];
    let mut c = Client::connect(addr);
    for (host, path, want) in [
        ("a.test", "/api", "api"),
        ("a.test", "/api/v1/x?q=1", "api"),
        ("A.TEST:8080", "/api", "api"),
        ("a.test", "/apix", "web"),
        ("a.test", "/", "web"),
        ("x.b.test", "/anything", "wild"),
    ] {
        let r = c.get(host, path).expect("an answer");
        assert_eq!((r.status, r.text().as_str()), (200, want), "{host}{path}");
    }
    // Only one label under a wildcard; no default backend: 404, and the connection stays.
    assert_eq!(c.get("y.x.b.test", "/").unwrap().status, 404);
    assert_eq!(c.get("other.test", "/").unwrap().status, 404);
    assert_eq!(c.get("a.test", "/api").unwrap().text(), "api");
    // The backend learns who the client is; the client's own claim is dropped.
    c.send(b"GET /api HTTP/1.1\r\nhost: a.test\r\nx-forwarded-for: 6.6.6.6\r\n\r\n");
    assert_eq!(read_response(&mut c.reader).unwrap().status, 200);
    let last = backends[0].seen().pop().unwrap();
    assert_eq!(last.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(last.header("x-forwarded-host"), Some("a.test"));
    let counters = stop_and_count(proxy);
    assert_eq!(counters.answers[1], 8);
    assert_eq!(counters.answers[3], 2);
}

#[test]
fn curl_routes_by_host_and_path() {
    let (_backends, spec) = three_routes();
    let (proxy, _) = proxy(&spec, 1, ConnConfig::default());
    let port = proxy.local_addrs()[0].port();
    for (host, path, want) in [
        ("a.test", "/api/users", "api"),
        ("a.test", "/index.html", "web"),
        ("www.b.test", "/", "wild"),
    ] {
        // --resolve sends the right Host and SNI as a real client would.
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve"])
            .arg(format!("{host}:{port}:127.0.0.1"))
            .arg(format!("http://{host}:{port}{path}"))
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{host}{path}");
    }
    proxy.stop().unwrap();
}

#[test]
fn keep_alive_reuses_backend_connections() {
    let b = Backend::start("only", Mode::Name);
    // One worker: one pool, so every request after the first finds the connection.
    let (proxy, _) = proxy(&catch_all(&b), 1, ConnConfig::default());
    let addr = proxy.local_addrs()[0];
    for _ in 0..4 {
        let mut c = Client::connect(addr);
        for _ in 0..5 {
            assert_eq!(c.get("x", "/").unwrap().text(), "only");
        }
    }
    assert_eq!(b.seen().len(), 20);
    assert_eq!(
        b.accepts(),
        1,
        "every request after the first reuses the backend connection"
    );
    let counters = stop_and_count(proxy);
    assert_eq!((counters.backend_opened, counters.backend_reused), (1, 19));
}

#[test]
fn chunked_upload_streams_to_the_backend() {
    let b = Backend::start("up", Mode::Name);
    let (proxy, _) = proxy(&catch_all(&b), 1, ConnConfig::default());
    let mut c = Client::connect(proxy.local_addrs()[0]);
    c.send(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n");
    let chunk = vec![b'z'; 100_000];
    c.send(format!("{:x}\r\n", chunk.len()).as_bytes());
    c.send(&chunk);
    c.send(b"\r\n");
    // The body is passed on as it comes: the backend has bytes before the upload ends.
    let deadline = Instant::now() + IO_LIMIT;
    while b.bytes() < 100_000 {
        assert!(
            Instant::now() < deadline,
            "nothing reached the backend mid-upload"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..9 {
        c.send(format!("{:x}\r\n", chunk.len()).as_bytes());
        c.send(&chunk);
        c.send(b"\r\n");
    }
    c.send(b"0\r\n\r\n");
    let r = read_response(&mut c.reader).unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "up"));
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), 1_000_000);
    assert!(seen[0].body.iter().all(|&x| x == b'z'));
    proxy.stop().unwrap();
}

#[test]
fn upgrade_becomes_a_tunnel() {
    let b = Backend::start("ws", Mode::UpgradeEcho);
    let (proxy, _) = proxy(&catch_all(&b), 1, ConnConfig::default());
    let mut c = Client::connect(proxy.local_addrs()[0]);
    c.send(b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n");
    let r = read_response(&mut c.reader).unwrap();
    assert_eq!(r.status, 101);
    for msg in [
        &b"hello"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0u8, 255, 13, 10][..],
    ] {
        c.send(msg);
        let mut got = vec![0; msg.len()];
        c.reader.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
    proxy.stop().unwrap();
}

#[test]
fn backend_cut_mid_body_cuts_the_client_without_hanging() {
    let b = Backend::start("cut", Mode::CutMidBody);
    let (proxy, _) = proxy(&catch_all(&b), 1, ConnConfig::default());
    let mut c = Client::connect(proxy.local_addrs()[0]);
    c.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut all = Vec::new();
    // Ok: the proxy closed (a timeout would be an error here).
    c.reader
        .read_to_end(&mut all)
        .expect("the proxy closes, it does not hang");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("0123456789"),
        "only what the backend sent: {text}"
    );
    proxy.stop().unwrap();
}

#[test]
fn backend_hanging_up_or_refusing_gives_502() {
    let b = Backend::start("gone", Mode::Hangup);
    let (proxy, _) = proxy(&catch_all(&b), 1, ConnConfig::default());
    let mut c = Client::connect(proxy.local_addrs()[0]);
    assert_eq!(c.get("x", "/").unwrap().status, 502);
    proxy.stop().unwrap();

    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut spec = catch_all(&b);
    spec.services[0].endpoints[0].addr = closed;
    let (proxy, _) = l7_net::proxy(&spec, 1, ConnConfig::default());
    let mut c = Client::connect(proxy.local_addrs()[0]);
    assert_eq!(c.get("x", "/").unwrap().status, 502);
    assert!(proxy.counters().backend_failed >= 1);
    proxy.stop().unwrap();
}

#[test]
fn silent_backend_gives_504() {
    let b = Backend::start("mute", Mode::Silent);
    let (proxy, _) = proxy(&catch_all(&b), 1, short_timeouts());
    let mut c = Client::connect(proxy.local_addrs()[0]);
    let r = c.get("x", "/").expect("an answer, not a hang");
    assert_eq!(r.status, 504);
    proxy.stop().unwrap();
}

#[test]
fn reloads_under_a_client_loop_lose_no_request() {
    let blue = Backend::start("blue", Mode::Name);
    let green = Backend::start("green", Mode::Name);
    let tables = [
        RouteTable::compile(&catch_all(&blue)),
        RouteTable::compile(&catch_all(&green)),
    ];
    let (proxy, routes) = proxy(&catch_all(&blue), 2, ConnConfig::default());
    let addr = proxy.local_addrs()[0];
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut bad) = (0, Vec::new());
                let mut c = Client::connect(addr);
                while !stop.load(SeqCst) {
                    // Client 1 opens a new connection every ten requests.
                    if i == 1 && ok % 10 == 0 {
                        c = Client::connect(addr);
                    }
                    match c.get("x", "/") {
                        Some(r) if r.status == 200 => ok += 1,
                        other => bad.push(format!("{other:?}")),
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    for i in 0..100 {
        routes.store(Arc::new(tables[i % 2].clone()));
        std::thread::sleep(Duration::from_millis(3));
    }
    stop.store(true, SeqCst);
    let mut total = 0;
    for t in clients {
        let (ok, bad) = t.join().unwrap();
        assert!(bad.is_empty(), "lost requests: {bad:?}");
        total += ok;
    }
    assert!(total > 0);
    assert_eq!(blue.seen().len() + green.seen().len(), total);
    // The last table (green) serves the next request.
    let mut c = Client::connect(addr);
    assert_eq!(c.get("x", "/").unwrap().text(), "green");
    proxy.stop().unwrap();
}

fn vectors() -> Vec<Value> {
    testkit::shared::json_array("http/vectors.json")
}

/// Every shared vector through the real proxy and a recording backend.
#[test]
fn every_vector_through_the_real_proxy() {
    let b = Backend::start("rec", Mode::Name);
    let mut spec = catch_all(&b);
    // `OPTIONS *` has no path a route can match: the default backend takes it.
    spec.default_backend = Some(BackendRef {
        service: b.name.clone(),
        weight: 1,
    });
    let (proxy, _) = proxy(&spec, 1, ConnConfig::default());
    let addr = proxy.local_addrs()[0];
    let (mut failures, mut must, mut refused) = (Vec::new(), 0, 0);
    for v in &vectors() {
        let id = v["id"].as_str().unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["raw_b64"].as_str().unwrap())
            .unwrap();
        let expectation = v["rfc_expectation"].as_str().unwrap();
        let allowed: Vec<u64> = v["rfc_status"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect();
        let expect = v["expect_requests"].as_u64().unwrap() as usize;
        let marker = v["smuggle_marker"].as_str();
        let (seen_before, bytes_before) = (b.seen().len(), b.bytes());

        let mut c = Client::connect(addr);
        c.send(&raw);
        let mut statuses = Vec::new();
        // Read answers until the proxy closes, refuses, or answered all that were expected.
        while let Some(r) = read_response(&mut c.reader) {
            statuses.push(r.status);
            if r.status >= 400 || (statuses.len() >= expect && expect > 0) {
                break;
            }
        }
        drop(c);
        let seen: Vec<_> = b.seen().split_off(seen_before);
        let reached = b.bytes() - bytes_before;
        let must_reject = expectation.starts_with("reject");
        must += usize::from(must_reject);
        if let Some(m) = marker {
            if seen.iter().any(|s| s.path.starts_with(m)) {
                failures.push(format!("{id}: smuggled {m} reached the backend"));
            }
        }
        let rejected = statuses.first().is_some_and(|&s| s >= 400);
        if rejected {
            if reached > 0 {
                failures.push(format!(
                    "{id}: rejected {statuses:?} but {reached} bytes reached the backend"
                ));
            }
            if must_reject {
                if allowed.contains(&u64::from(statuses[0])) {
                    refused += 1;
                } else {
                    failures.push(format!("{id}: {} not in {allowed:?}", statuses[0]));
                }
            } else if expectation == "accept" {
                failures.push(format!("{id}: must accept, got {statuses:?}"));
            }
        } else if must_reject {
            failures.push(format!("{id}: must reject, got {statuses:?}"));
        } else if seen.len() != expect || statuses != vec![200; expect] {
            failures.push(format!(
                "{id}: backend saw {} (want {expect}), client got {statuses:?}",
                seen.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!((must, refused), (82, 82));
    let counters = stop_and_count(proxy);
    assert!(counters.rejected_total() >= 82, "{counters:?}");
    assert!(counters.rejected(RejectReason::ContentLengthWithTe) >= 1);
}

#[test]
fn stop_closes_open_connections_and_joins() {
    let b = Backend::start("s", Mode::Name);
    let (proxy, _) = proxy(&catch_all(&b), 2, ConnConfig::default());
    let mut c = Client::connect(proxy.local_addrs()[0]);
    assert_eq!(c.get("x", "/").unwrap().status, 200);
    proxy.stop().unwrap();
    let mut rest = Vec::new();
    assert!(c.reader.read_to_end(&mut rest).is_ok() && rest.is_empty());
    let _ = c.writer.write_all(b"x");
}

#[test]
fn listeners_are_added_and_removed_without_touching_the_rest() {
    let b = Backend::start("l", Mode::Name);
    let (mut proxy, _) = proxy(&catch_all(&b), 2, ConnConfig::default());
    let first = proxy.local_addrs()[0];
    let mut kept = Client::connect(first);
    assert_eq!(kept.get("x", "/").unwrap().status, 200);

    let spec = |addr| dataplane::net::ListenerSpec { addr, tls: None };
    proxy
        .update_listeners(vec![spec(first), spec("127.0.0.1:0".parse().unwrap())])
        .unwrap();
    let second = proxy.local_addrs()[1];
    assert_eq!(
        proxy.local_addrs()[0],
        first,
        "a kept address keeps its socket"
    );
    for addr in [first, second] {
        assert_eq!(Client::connect(addr).get("x", "/").unwrap().text(), "l");
    }
    // The connection accepted before is untouched.
    assert_eq!(kept.get("x", "/").unwrap().status, 200);

    proxy.update_listeners(vec![spec(second)]).unwrap();
    assert_eq!(proxy.local_addrs(), [second]);
    assert!(
        std::net::TcpStream::connect(first).is_err(),
        "a removed address no longer accepts"
    );
    assert_eq!(Client::connect(second).get("x", "/").unwrap().status, 200);
    // Removing its listener does not close a connection it accepted.
    assert_eq!(kept.get("x", "/").unwrap().status, 200);
    proxy.stop().unwrap();
}

#[test]
fn sticky_sessions_set_their_cookie_and_keep_each_client_on_its_backend() {
    use dataplane::l7::route::{EndpointSpec, Policy, ServiceSpec};
    use std::collections::BTreeMap;
    let backends: Vec<Backend> = ["one", "two", "three"]
        .iter()
        .map(|n| Backend::start(n, Mode::Name))
        .collect();
    let spec = TableSpec {
        services: vec![ServiceSpec {
            name: "app".into(),
            endpoints: backends
                .iter()
                .map(|b| EndpointSpec {
                    addr: b.addr,
                    weight: 1,
                })
                .collect(),
            policy: Policy::Sticky("SRV".into()),
            upstream: Default::default(),
        }],
        routes: vec![route(&[], "/", "app")],
        default_backend: None,
    };
    let (proxy, _) = proxy(&spec, 1, ConnConfig::default());
    let addr = proxy.local_addrs()[0];
    // New clients are balanced in turn, and each answer names the backend that gave it.
    let mut backend_of: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..6 {
        let mut c = Client::connect(addr);
        let r = c.get("x", "/").expect("an answer");
        let set = r
            .header("set-cookie")
            .expect("a new client gets the cookie");
        let (pair, attrs) = set.split_once(';').unwrap();
        assert_eq!(attrs.trim(), "Path=/; HttpOnly");
        let value = pair.strip_prefix("SRV=").unwrap().to_string();
        let before = backend_of.insert(value.clone(), r.text());
        assert!(before.is_none_or(|b| b == r.text()), "{value}: one backend");
    }
    assert_eq!(backend_of.len(), 3, "every backend took new clients");
    // A returning client stays on its backend, told nothing new.
    for (value, name) in &backend_of {
        let mut c = Client::connect(addr);
        for _ in 0..5 {
            c.send(
                format!("GET / HTTP/1.1\r\nhost: x\r\ncookie: a=1; SRV={value}\r\n\r\n").as_bytes(),
            );
            let r = read_response(&mut c.reader).expect("an answer");
            assert_eq!(&r.text(), name);
            assert_eq!(r.header("set-cookie"), None);
        }
    }
    proxy.stop().unwrap();
}

#[test]
fn a_dot_segment_cannot_walk_out_of_the_routed_prefix() {
    let public = Backend::start("public", Mode::Name);
    let admin = Backend::start("admin", Mode::Name);
    let spec = TableSpec {
        services: vec![service(&public), service(&admin)],
        routes: vec![
            route(&["a.test"], "/public", "public"),
            route(&["a.test"], "/admin", "admin"),
        ],
        default_backend: None,
    };
    let (proxy, _) = proxy(&spec, 1, ConnConfig::default());
    let addr = proxy.local_addrs()[0];
    for path in ["/public/../admin", "/public/%2e%2e/admin", "/public/./x"] {
        let mut c = Client::connect(addr);
        let r = c.get("a.test", path).expect("an answer");
        assert_eq!(r.status, 400, "{path}");
    }
    assert_eq!(
        Client::connect(addr)
            .get("a.test", "/public/x")
            .unwrap()
            .text(),
        "public"
    );
    assert!(admin.seen().is_empty(), "nothing reached the admin backend");
    let counters = stop_and_count(proxy);
    assert_eq!(counters.answers[3], 3, "three 4xx answers");
}

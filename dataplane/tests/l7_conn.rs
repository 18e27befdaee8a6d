//! The L7 connection machine from recorded byte streams: keep-alive and pool reuse, pipelining,
//! streaming bodies, 100-continue, upgrade tunnels, timeouts, retries and 502/503/504, and
//! backend connections whose framing was ambiguous never reused. Then property tests: any
//! client or backend bytes, split anywhere, give no panic, bounded buffers and the same answers.

mod l7_harness;

use dataplane::l7::conn::{ConnConfig, Timeouts};
use dataplane::l7::errors::RejectReason;
use dataplane::l7::route::BackendId;
use l7_harness::{find, FakeRouter, Harness, Reply};
use proptest::prelude::*;

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: lb.test\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn harness(backends: u32, reply: Reply) -> Harness<FakeRouter> {
    Harness::new(ConnConfig::default(), FakeRouter { backends }, reply)
}

fn client_text(h: &Harness<FakeRouter>) -> String {
    String::from_utf8_lossy(&h.to_client).into_owned()
}

#[test]
fn keep_alive_reuses_the_backend_connection() {
    let mut h = harness(1, Reply::Fixed(OK.to_vec()));
    h.client(GET);
    h.client(GET);
    assert_eq!(h.statuses(), vec![200, 200]);
    assert_eq!((h.connects.len(), h.released, h.reused), (2, 2, 1));
    assert!(!h.client_closed);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut h = harness(1, Reply::Silent);
    h.client(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n");
    // Only the first request is in flight.
    assert_eq!(
        h.seen.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
        ["/one"]
    );
    h.backend(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none");
    assert_eq!(h.seen.len(), 2);
    h.backend(b"HTTP/1.1 201 Created\r\ncontent-length: 3\r\n\r\ntwo");
    assert_eq!(h.statuses(), vec![200, 201]);
    let text = client_text(&h);
    assert!(text.find("one").unwrap() < text.find("two").unwrap());
}

#[test]
fn chunked_upload_streams_before_it_ends() {
    let mut h = harness(1, Reply::Silent);
    h.client(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
    assert!(
        h.to_backend.ends_with(b"5\r\nhel"),
        "the first bytes go on at once"
    );
    h.client(b"lo\r\n0\r\n\r\n");
    assert_eq!(h.seen.len(), 1);
    assert_eq!(h.seen[0].body, b"hello");
}

#[test]
fn a_bad_body_in_hand_never_opens_a_backend() {
    let mut h = harness(1, Reply::Fixed(OK.to_vec()));
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(h.statuses(), vec![400]);
    assert_eq!(h.refused, vec![RejectReason::ChunkSize]);
    assert!(h.connects.is_empty());
    // Arriving after the head went out, the same error cuts the backend connection.
    let mut h = harness(1, Reply::Fixed(OK.to_vec()));
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    h.client(b"zz\r\n");
    assert_eq!(h.statuses(), vec![400]);
    assert_eq!(
        (h.connects.len(), h.backend_closes, h.seen.len()),
        (1, 1, 0)
    );
}

#[test]
fn expect_100_continue_is_relayed() {
    let mut h = harness(1, Reply::Silent);
    h.client(b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    assert!(find(&h.to_backend, b"Expect: 100-continue").is_some());
    h.backend(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(client_text(&h).starts_with("HTTP/1.1 100 Continue\r\n\r\n"));
    h.client(b"hi");
    h.backend(OK);
    assert_eq!(h.seen[0].body, b"hi");
    assert_eq!(h.statuses(), vec![100, 200]);
}

#[test]
fn upgrade_becomes_a_tunnel() {
    let mut h = harness(1, Reply::Silent);
    h.client(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(find(&h.to_backend, b"connection: upgrade\r\n").is_some());
    h.backend(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nFROM-BACKEND");
    h.client(b"\x81\x02hi not http at all\r\n\r\n");
    assert!(h
        .to_backend
        .ends_with(b"\x81\x02hi not http at all\r\n\r\n"));
    assert!(h.to_client.ends_with(b"\r\n\r\nFROM-BACKEND"));
    assert!(client_text(&h).contains("connection: upgrade\r\n"));
}

#[test]
fn an_idle_tunnel_closes() {
    let config = ConnConfig {
        timeouts: Timeouts {
            idle: 100,
            ..Timeouts::default()
        },
        ..ConnConfig::default()
    };
    let mut h = Harness::new(config, FakeRouter { backends: 1 }, Reply::Silent);
    h.client(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    h.backend(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    h.advance(90);
    h.client(b"ping");
    h.advance(150);
    assert!(!h.client_closed, "bytes moved at 90: alive until 190");
    h.advance(190);
    assert!(h.client_closed);
}

#[test]
fn half_closed_client_still_gets_its_answers() {
    let mut h = harness(1, Reply::Silent);
    h.client(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\nGET /thr");
    h.client_close();
    assert!(!h.client_closed);
    h.backend(OK);
    h.backend(OK);
    assert_eq!(h.statuses(), vec![200, 200]);
    assert_eq!(h.seen.len(), 2, "the cut-short third request is not sent");
    assert!(h.client_closed);
    // Cut in the middle of a body: ends at once.
    let mut h = harness(1, Reply::Silent);
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhe");
    h.client_close();
    assert!(h.client_closed);
    assert_eq!(h.backend_closes, 1);
}

#[test]
fn a_101_nobody_asked_for_is_a_502() {
    let mut h = harness(1, Reply::Silent);
    h.client(GET);
    h.backend(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n");
    assert_eq!(h.statuses(), vec![502]);
}

#[test]
fn ambiguous_response_framing_is_never_reused() {
    for response in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
    ] {
        let mut h = harness(1, Reply::Fixed(response.to_vec()));
        h.client(GET);
        assert_eq!(h.statuses()[0], 200);
        assert_eq!((h.released, h.backend_closes), (0, 1), "{}", String::from_utf8_lossy(response));
    }
    // Conflicting lengths: the client gets a 502, never the body.
    let mut h = harness(
        1,
        Reply::Fixed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec(),
        ),
    );
    h.client(GET);
    assert_eq!(h.statuses(), vec![502]);
}

#[test]
fn close_delimited_response_closes_the_client() {
    let mut h = harness(1, Reply::Silent);
    h.client(GET);
    h.backend(b"HTTP/1.1 200 OK\r\n\r\nuntil the end");
    assert!(!h.client_closed);
    h.backend_close();
    assert!(h.client_closed);
    assert!(client_text(&h).ends_with("connection: close\r\n\r\nuntil the end"));
}

#[test]
fn http10_client_gets_a_dechunked_body() {
    let mut h = harness(
        1,
        Reply::Fixed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        ),
    );
    h.client(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(
        client_text(&h),
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nok"
    );
    assert!(h.client_closed);
}

#[test]
fn connect_failure_retries_another_backend_once() {
    let mut h = harness(2, Reply::Fixed(OK.to_vec()));
    h.refuse = vec![BackendId(0)];
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(h.connects, vec![BackendId(0), BackendId(1)]);
    assert_eq!(h.statuses(), vec![200]);
    assert_eq!(h.seen[0].body, b"hi");

    let mut h = harness(3, Reply::Fixed(OK.to_vec()));
    h.refuse = vec![BackendId(0), BackendId(1)];
    h.client(GET);
    assert_eq!(h.connects.len(), 2, "one retry only");
    assert_eq!(h.statuses(), vec![502]);
}

#[test]
fn backend_closing_early_retries_only_what_can_be_replayed() {
    // GET, nothing answered: replayed on the other backend.
    let mut h = harness(2, Reply::Silent);
    h.client(GET);
    h.backend_close();
    assert_eq!(h.connects, vec![BackendId(0), BackendId(1)]);
    h.backend(OK);
    assert_eq!(h.statuses(), vec![200]);
    // POST whose body went out: 502, no retry.
    let mut h = harness(2, Reply::Silent);
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
    h.backend_close();
    assert_eq!(h.connects.len(), 1);
    assert_eq!(h.statuses(), vec![502]);
    assert!(h.client_closed);
}

#[test]
fn timeouts() {
    let t = Timeouts {
        header_read: 100,
        idle: 1000,
        connect: 50,
        total: 500,
    };
    let config = ConnConfig {
        timeouts: t,
        ..ConnConfig::default()
    };
    // Header read: 408.
    let mut h = Harness::new(config, FakeRouter { backends: 1 }, Reply::Silent);
    h.client(b"GET / HTTP/1.1\r\nHo");
    h.advance(99);
    assert!(h.to_client.is_empty());
    h.advance(100);
    assert_eq!(h.statuses(), vec![408]);
    assert!(h.client_closed);
    // Idle keep-alive connection: closed silently.
    let mut h = Harness::new(
        config,
        FakeRouter { backends: 1 },
        Reply::Fixed(OK.to_vec()),
    );
    h.client(GET);
    h.advance(1000);
    assert!(h.client_closed);
    assert_eq!(h.statuses(), vec![200]);
    // Total: the backend never answers: 504.
    let mut h = Harness::new(config, FakeRouter { backends: 1 }, Reply::Silent);
    h.client(GET);
    h.advance(500);
    assert_eq!(h.statuses(), vec![504]);
    assert_eq!(h.backend_closes, 1);
}

#[test]
fn connect_timeout_retries_then_504() {
    let config = ConnConfig {
        timeouts: Timeouts {
            connect: 50,
            ..Timeouts::default()
        },
        ..ConnConfig::default()
    };
    let mut h = Harness::new(config, FakeRouter { backends: 2 }, Reply::Silent);
    // Backends that never answer the connect: the harness holds the Connect unanswered.
    h.hold_connects = true;
    h.client(GET);
    assert_eq!(h.connects, vec![BackendId(0)]);
    h.advance(50);
    assert_eq!(h.connects, vec![BackendId(0), BackendId(1)]);
    assert!(h.to_client.is_empty());
    h.advance(100);
    assert_eq!(h.connects.len(), 2);
    assert_eq!(h.statuses(), vec![504]);
    assert_eq!(h.backend_closes, 2);
}

#[test]
fn routed_through_a_compiled_table() {
    use dataplane::l7::route::{
        BackendRef, EndpointSpec, Origin, PathMatch, Policy, RouteSpec, RouteTable, ServiceSpec,
        TableSpec,
    };
    use dataplane::l7::select::{Routing, SelectState};
    let service = |name: &str, weight| ServiceSpec {
        name: name.into(),
        endpoints: vec![EndpointSpec {
            addr: "127.0.0.1:1".parse().unwrap(),
            weight,
        }],
        policy: Policy::RoundRobin,
        upstream: Default::default(),
    };
    let route = |host: &str, name: &str| RouteSpec {
        cookies: Vec::new(),
        origin: Origin::Ingress,
        hosts: vec![host.into()],
        path: PathMatch::Prefix("/".into()),
        method: None,
        headers: vec![],
        backends: vec![BackendRef {
            service: name.into(),
            weight: 1,
        }],
        redirect: None,
        request_headers: None,
    };
    let table = RouteTable::compile(&TableSpec {
        services: vec![service("a", 1), service("b", 1), service("drained", 0)],
        routes: vec![
            route("a.test", "a"),
            route("*.b.test", "b"),
            route("d.test", "drained"),
        ],
        default_backend: None,
    });
    let mut state = SelectState::new(&table);
    let routing = Routing {
        table: &table,
        state: &mut state,
    };
    let mut h = Harness::new(ConnConfig::default(), routing, Reply::Fixed(OK.to_vec()));
    for host in ["a.test", "x.B.test:8080", "nowhere.test", "d.test"] {
        h.client(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    }
    assert_eq!(h.statuses(), vec![200, 200, 404, 503]);
    assert_eq!(h.connects, vec![BackendId(0), BackendId(1)]);
    assert_eq!(h.seen[1].host.as_deref(), Some("x.B.test:8080"));
    assert!(!h.client_closed);
}

#[test]
fn requests_in_flight_are_counted_until_they_end_however_they_end() {
    use dataplane::l7::route::{
        BackendRef, EndpointSpec, Origin, PathMatch, Policy, RouteSpec, RouteTable, ServiceSpec,
        TableSpec,
    };
    use dataplane::l7::select::{Routing, SelectState};
    let table = RouteTable::compile(&TableSpec {
        services: vec![ServiceSpec {
            name: "s".into(),
            endpoints: vec![EndpointSpec {
                addr: "127.0.0.1:1".parse().unwrap(),
                weight: 1,
            }],
            policy: Policy::LeastOutstanding,
            upstream: Default::default(),
        }],
        routes: vec![RouteSpec {
            cookies: Vec::new(),
            origin: Origin::Ingress,
            hosts: vec![],
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: vec![],
            backends: vec![BackendRef {
                service: "s".into(),
                weight: 1,
            }],
            redirect: None,
            request_headers: None,
        }],
        default_backend: None,
    });
    let mut state = SelectState::new(&table);
    type Step = fn(&mut Harness<Routing<'_>>);
    let endings: [(&str, Step); 4] = [
        ("answered", |h| h.backend(OK)),
        ("client gone", |h| h.client_close()),
        ("backend gone", |h| h.backend_close()),
        ("timed out", |h| h.advance(60_000)),
    ];
    for (name, end) in endings {
        {
            let routing = Routing {
                table: &table,
                state: &mut state,
            };
            let mut h = Harness::new(ConnConfig::default(), routing, Reply::Silent);
            h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbo");
            assert_eq!(h.router.state.outstanding(BackendId(0)), 1, "{name}");
            if name == "answered" {
                h.client(b"dy");
            }
            end(&mut h);
        }
        assert_eq!(state.outstanding(BackendId(0)), 0, "{name}");
    }
}

#[test]
fn routing_answers_keep_bodiless_connections() {
    struct NotFound;
    impl dataplane::l7::conn::Router for NotFound {
        fn route(
            &mut self,
            _: &dataplane::l7::route::RequestView<'_>,
        ) -> Result<dataplane::l7::route::Pick, dataplane::l7::errors::Status> {
            Err(dataplane::l7::errors::Status::NotFound)
        }
        fn retry(&mut self, _: &dataplane::l7::route::Pick) -> Option<dataplane::l7::route::Pick> {
            None
        }
        fn finished(&mut self, _: &dataplane::l7::route::Pick) {}
    }
    let mut h = Harness::new(ConnConfig::default(), NotFound, Reply::Silent);
    h.client(GET);
    h.client(GET);
    assert_eq!(h.statuses(), vec![404, 404]);
    assert!(!h.client_closed);
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel");
    assert!(
        h.client_closed,
        "a body left unread cannot be skipped safely"
    );
}

/// Client streams: valid requests, refusals and junk, to be split anywhere.
fn client_stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(GET.to_vec()),
        Just(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        Just(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n".to_vec()),
        Just(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
        "[ -~\r\n]{0,60}".prop_map(String::into_bytes),
    ];
    proptest::collection::vec(piece, 1..6).prop_map(|p| p.concat())
}

fn feed_split(stream: &[u8], cuts: &[usize], reply: Reply, close: bool) -> Harness<FakeRouter> {
    let mut h = Harness::new(ConnConfig::default(), FakeRouter { backends: 1 }, reply);
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    let mut at = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        h.client(&stream[at..cut]);
        at = cut;
        assert!(h.conn.buffered() <= 2 * 64 * 1024 + stream.len());
    }
    if close {
        h.client_close();
        assert!(h.client_closed, "the end of the stream ends the connection");
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any client bytes split anywhere: no panic, bounded buffers, the same answers and the same
    /// requests at the backend as when sent in one piece.
    #[test]
    fn client_bytes_split_anywhere(
        stream in client_stream(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        close in any::<bool>(),
    ) {
        let whole = feed_split(&stream, &[], Reply::Fixed(OK.to_vec()), close);
        let split = feed_split(&stream, &cuts, Reply::Fixed(OK.to_vec()), close);
        prop_assert_eq!(split.statuses(), whole.statuses());
        prop_assert_eq!(&split.seen, &whole.seen);
        prop_assert_eq!(split.client_closed, whole.client_closed);
    }

    /// Any backend bytes split anywhere: no panic, bounded buffers, and the client gets the same
    /// responses (statuses) and connection outcome.
    #[test]
    fn backend_bytes_split_anywhere(
        stream in prop_oneof![
            Just(OK.to_vec()),
            Just(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec()),
            Just(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..80),
            "HTTP/1.1 [0-9]{3} [ -~]{0,10}\r\n([A-Za-z-]{1,8}: [ -~]{0,8}\r\n){0,3}\r\n[ -~\r\n]{0,30}".prop_map(String::into_bytes),
        ],
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        close in any::<bool>(),
    ) {
        let run = |cuts: &[usize]| {
            let mut h = harness(1, Reply::Silent);
            h.client(GET);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut at = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                h.backend(&stream[at..cut]);
                at = cut;
                assert!(h.conn.buffered() <= 2 * 64 * 1024 + stream.len());
            }
            if close {
                h.backend_close();
            }
            (h.statuses(), h.client_closed)
        };
        prop_assert_eq!(run(&cuts), run(&[]));
    }
}

#[derive(Clone, Debug)]
enum Event {
    Client(Vec<u8>),
    Backend(Vec<u8>),
    BackendClose,
    ClientClose,
    Advance(u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => prop_oneof![
            Just(GET.to_vec()),
            Just(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n".to_vec()),
            Just(b"0\r\n\r\n".to_vec()),
            Just(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..30),
        ].prop_map(Event::Client),
        3 => prop_oneof![
            Just(OK.to_vec()),
            Just(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".to_vec()),
            Just(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
            Just(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..30),
        ].prop_map(Event::Backend),
        1 => Just(Event::BackendClose),
        1 => Just(Event::ClientClose),
        1 => (0u64..70_000).prop_map(Event::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any order of client bytes, backend bytes, closes and timers: no panic, bounded buffers,
    /// bytes only to a connected backend (the harness checks), nothing after the end.
    #[test]
    fn any_event_sequence(events in proptest::collection::vec(event(), 1..25)) {
        let mut h = harness(2, Reply::Silent);
        for e in events {
            let closed = h.client_closed;
            let written = h.to_client.len();
            match e {
                Event::Client(b) => h.client(&b),
                Event::Backend(b) => h.backend(&b),
                Event::BackendClose => h.backend_close(),
                Event::ClientClose => h.client_close(),
                Event::Advance(ms) => {
                    let now = h.now + ms;
                    h.advance(now);
                }
            }
            prop_assert!(h.conn.buffered() <= 4 * 64 * 1024);
            if closed {
                prop_assert_eq!(h.to_client.len(), written, "nothing is written after the end");
            }
        }
    }
}

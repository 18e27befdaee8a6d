//! Health checks against real sockets on loopback: TCP and HTTP probes, rise/fall timing, reloads
//! and passive ejection through the `Checker`.
//!
//! Timing bounds are generous (3x the expected time plus slack): the box is small and shared.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controlplane::config::{CheckKind, HealthCheck, Passive, StatusRange};
use controlplane::control::state::{BackendKey, Health};
use controlplane::health::{Checker, PassiveSample, Target, Transition};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

const INTERVAL: Duration = Duration::from_millis(100);

fn check(kind: CheckKind) -> HealthCheck {
    HealthCheck {
        kind,
        interval: INTERVAL,
        timeout: Duration::from_millis(300),
        rise: 2,
        fall: 2,
        jitter: Duration::from_millis(10),
        port: None,
        path: "/healthz".into(),
        host: None,
        expect_status: StatusRange { lo: 200, hi: 399 },
    }
}

fn target(addr: SocketAddr, check: Option<HealthCheck>) -> Target {
    Target {
        key: BackendKey {
            service: "web".into(),
            addr: addr.ip(),
            port: addr.port(),
        },
        probe: addr,
        check,
        passive: None,
    }
}

/// A checker on the test's runtime that records every transition it reports.
fn checker() -> (Checker, Arc<Mutex<Vec<Transition>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let c = Checker::new(tokio::runtime::Handle::current(), move |t| {
        sink.lock().unwrap().extend(t)
    });
    (c, seen)
}

/// Polls until the target's health satisfies `want`; the time it took, or None after `limit`.
async fn wait_for(
    c: &Checker,
    key: &BackendKey,
    limit: Duration,
    want: impl Fn(&Health) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if c.health(key).as_ref().is_some_and(&want) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn is_down(h: &Health) -> bool {
    matches!(h, Health::Down(_))
}

fn is_up(h: &Health) -> bool {
    *h == Health::Up
}

fn bind(addr: SocketAddr) -> TcpListener {
    let s = TcpSocket::new_v4().unwrap();
    s.set_reuseaddr(true).unwrap();
    s.bind(addr).unwrap();
    s.listen(64).unwrap()
}

/// Accepts and closes connections, counting them.
fn serve_tcp(l: TcpListener, accepted: Arc<AtomicUsize>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            drop(s);
        }
    })
}

/// Answers each request with the current `status`, remembering the last request head.
fn serve_http(l: TcpListener, status: Arc<AtomicU16>, head: Arc<Mutex<String>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let status = status.clone();
            let head = head.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                *head.lock().unwrap() = String::from_utf8_lossy(&buf).into_owned();
                let code = status.load(Ordering::Relaxed);
                let resp = format!("HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_backend_goes_down_when_closed_and_up_when_reopened() {
    let listener = bind("127.0.0.1:0".parse().unwrap());
    let addr = listener.local_addr().unwrap();
    let server = serve_tcp(listener, Arc::new(AtomicUsize::new(0)));
    let (c, seen) = checker();
    let t = target(addr, Some(check(CheckKind::Tcp)));
    let key = t.key.clone();
    c.set_targets(vec![t]);
    assert_eq!(c.health(&key), Some(Health::Unchecked));
    assert!(
        wait_for(&c, &key, Duration::from_secs(2), is_up)
            .await
            .is_some(),
        "a listening backend comes up on its first probe"
    );

    server.abort();
    let _ = server.await;
    let fall = 2 * INTERVAL;
    let took = wait_for(&c, &key, 3 * fall + INTERVAL, is_down)
        .await
        .expect("down within 3 x fall x interval after the listener closed");
    let Some(Health::Down(reason)) = c.health(&key) else {
        unreachable!()
    };
    assert_eq!(reason, format!("tcp connect to {addr}: connection refused"));
    eprintln!("down after {took:?} (fall x interval = {fall:?})");

    let server = serve_tcp(bind(addr), Arc::new(AtomicUsize::new(0)));
    let rise = 2 * INTERVAL;
    let took = wait_for(&c, &key, 3 * rise + INTERVAL, is_up)
        .await
        .expect("up within 3 x rise x interval after the listener reopened");
    eprintln!("up after {took:?} (rise x interval = {rise:?})");
    server.abort();

    let seen = seen.lock().unwrap().clone();
    let states: Vec<(bool, bool)> = seen
        .iter()
        .map(|t| (t.old.serves(), t.new.serves()))
        .collect();
    assert_eq!(
        seen.iter().map(|t| (&t.old, &t.new)).collect::<Vec<_>>(),
        vec![
            (&Health::Unchecked, &Health::Up),
            (&Health::Up, &Health::Down(reason.clone())),
            (&Health::Down(reason.clone()), &Health::Up),
        ],
        "{states:?}"
    );
    assert_eq!(c.transitions_total(), 2, "out of service and back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_status_decides_and_the_request_names_path_and_host() {
    let listener = bind("127.0.0.1:0".parse().unwrap());
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(503));
    let head = Arc::new(Mutex::new(String::new()));
    let server = serve_http(listener, status.clone(), head.clone());
    let (c, _) = checker();
    let t = target(addr, Some(check(CheckKind::Http)));
    let key = t.key.clone();
    c.set_targets(vec![t]);

    wait_for(&c, &key, Duration::from_secs(2), is_down)
        .await
        .expect("a backend answering 503 is down");
    assert_eq!(
        c.health(&key),
        Some(Health::Down(
            "http GET /healthz got 503, expected 200-399".into()
        ))
    );
    let head = head.lock().unwrap().clone();
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head:?}");
    assert!(head.contains(&format!("\r\nHost: {addr}\r\n")), "{head:?}");
    assert!(head.contains("\r\nConnection: close\r\n"), "{head:?}");

    status.store(200, Ordering::Relaxed);
    wait_for(&c, &key, 3 * 2 * INTERVAL + INTERVAL, is_up)
        .await
        .expect("200 brings it up within 3 x rise x interval");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_http_backend_fails_by_timeout() {
    let listener = bind("127.0.0.1:0".parse().unwrap());
    let addr = listener.local_addr().unwrap();
    // Accepts and holds every connection without a byte of answer.
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let (c, _) = checker();
    let mut hc = check(CheckKind::Http);
    hc.timeout = Duration::from_millis(200);
    let t = target(addr, Some(hc));
    let key = t.key.clone();
    c.set_targets(vec![t]);
    wait_for(&c, &key, Duration::from_secs(2), is_down)
        .await
        .expect("a silent backend goes down");
    assert_eq!(
        c.health(&key),
        Some(Health::Down(
            "http GET /healthz: timeout after 200ms".into()
        ))
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_state_of_unchanged_targets_and_drop_stops_probes() {
    // A port nobody listens on: bound, then closed.
    let dead = bind("127.0.0.1:0".parse().unwrap()).local_addr().unwrap();
    let listener = bind("127.0.0.1:0".parse().unwrap());
    let live = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let server = serve_tcp(listener, accepted.clone());

    let (c, seen) = checker();
    let mut slow = check(CheckKind::Tcp);
    // Long enough that nothing is probed again while the test looks at the reloaded state.
    slow.interval = Duration::from_secs(30);
    slow.jitter = Duration::ZERO;
    let down = target(dead, Some(slow.clone()));
    let up = target(live, Some(check(CheckKind::Tcp)));
    c.set_targets(vec![down.clone(), up.clone()]);
    wait_for(&c, &down.key, Duration::from_secs(2), is_down)
        .await
        .expect("the dead port goes down");
    wait_for(&c, &up.key, Duration::from_secs(2), is_up)
        .await
        .expect("the live port comes up");
    let before = seen.lock().unwrap().len();

    // The same targets again, plus one without a check: nothing restarts, nothing transitions.
    let unchecked = target("127.0.0.1:1".parse().unwrap(), None);
    c.set_targets(vec![up.clone(), down.clone(), unchecked.clone()]);
    assert!(
        is_down(&c.health(&down.key).unwrap()),
        "kept down, not unchecked"
    );
    assert_eq!(c.health(&up.key), Some(Health::Up));
    assert_eq!(c.health(&unchecked.key), Some(Health::Unchecked));
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "no transition on reload"
    );

    // A changed check keeps the verdict (a down backend must not come back untested).
    let mut changed = down.clone();
    changed.check.as_mut().unwrap().rise = 5;
    c.set_targets(vec![up.clone(), changed]);
    assert!(
        is_down(&c.health(&down.key).unwrap()),
        "kept down across a check change"
    );
    assert_eq!(
        c.health(&unchecked.key),
        None,
        "removed targets are forgotten"
    );
    assert_eq!(c.snapshot().len(), 2);

    // Dropping the checker stops probing the live backend.
    tokio::time::sleep(3 * INTERVAL).await;
    let probed = accepted.load(Ordering::Relaxed);
    assert!(probed >= 2, "probed every interval: {probed}");
    drop(c);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let at_drop = accepted.load(Ordering::Relaxed);
    tokio::time::sleep(5 * INTERVAL).await;
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        at_drop,
        "no probe after drop"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_takes_a_backend_out_for_the_back_off() {
    let (c, seen) = checker();
    let mut t = target("127.0.0.1:9".parse().unwrap(), None);
    t.passive = Some(Passive {
        resets: 0,
        unanswered_syns: 5,
        window: Duration::from_secs(10),
        backoff: Duration::from_secs(30),
    });
    let key = t.key.clone();
    c.set_targets(vec![t]);
    let t0 = Instant::now();
    let tick = |secs: u64, syns: u64| {
        let samples = HashMap::from([(
            key.clone(),
            PassiveSample {
                resets: 0,
                unanswered_syns: syns,
            },
        )]);
        c.passive_tick(t0 + Duration::from_secs(secs), &samples);
    };
    tick(0, 40);
    assert_eq!(
        c.health(&key),
        Some(Health::Unchecked),
        "old totals do not eject"
    );
    tick(1, 45);
    assert_eq!(
        c.health(&key),
        Some(Health::Down(
            "passive: 5 unanswered SYNs within 10s, ejected for 30s".into()
        ))
    );
    // The back-off ends even when no sample comes for the backend.
    c.passive_tick(t0 + Duration::from_secs(31), &HashMap::new());
    assert_eq!(c.health(&key), Some(Health::Unchecked));
    tick(32, 48);
    assert_eq!(
        c.health(&key),
        Some(Health::Unchecked),
        "re-baselined at 45"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(Transition::changes_serving));
    assert_eq!(c.transitions_total(), 2);
}

/// A control loop that keeps its runtime's thread busy (waiting for the control plane's lock
/// while a reload compiles, say) never fails a probe: `Checker::start` gives the probes a
/// runtime of their own. On a shared runtime the probe's timer kept running while its request
/// could not be sent, and healthy backends were taken down (HTTP checks with a 500 ms timeout).
#[test]
fn a_busy_control_runtime_never_fails_a_probe() {
    let backend_rt = tokio::runtime::Runtime::new().unwrap();
    let addr = backend_rt.block_on(async {
        let l = bind("127.0.0.1:0".parse().unwrap());
        let a = l.local_addr().unwrap();
        drop(serve_http(l, Arc::new(AtomicU16::new(200)), Arc::default()));
        a
    });
    // The control thread's runtime, as `lb run` has it: current-thread.
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let c = Checker::start(move |t| sink.lock().unwrap().extend(t)).unwrap();
    let mut chk = check(CheckKind::Http);
    chk.interval = Duration::from_millis(50);
    chk.timeout = Duration::from_millis(50);
    chk.rise = 1;
    chk.fall = 1;
    chk.jitter = Duration::ZERO;
    let t = target(addr, Some(chk));
    let key = t.key.clone();
    c.set_targets(vec![t]);
    // Busy most of the time, yielding only between spells: 3 s, some 60 probe intervals.
    control.block_on(async {
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(120));
        }
    });
    let downs: Vec<Transition> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|t| !t.new.serves())
        .cloned()
        .collect();
    assert!(
        downs.is_empty(),
        "a healthy backend was taken down: {downs:?}"
    );
    assert_eq!(c.health(&key), Some(Health::Up));
}

//! A real WebSocket session through the mio proxy on 127.0.0.1: tungstenite on both ends (the
//! client and an echo backend), so the handshake (Sec-WebSocket-Key/Accept, the 101 with its
//! `Connection: upgrade`), framing, ping/pong and the close handshake all cross `net::Proxy`
//! byte for byte. Plain `cargo test`: no root, no external program.

mod l7_net;

use dataplane::l7::{ConnConfig, TableSpec};
use dataplane::net::Proxy;
use l7_net::*;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::{Bytes, Error, Message, WebSocket};

/// What the echo backend does after the handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WsMode {
    /// Echoes every text and binary message until the close handshake.
    Echo,
    /// Echoes the first message, then drops the TCP connection without a close frame.
    DieAfterOne,
}

/// A WebSocket echo server (tungstenite's server handshake) on 127.0.0.1, one thread per
/// connection; every read is bounded by `IO_LIMIT`, so its threads end on their own.
struct WsBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Sessions that ended with a completed close handshake.
    closed_clean: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl WsBackend {
    fn start(mode: WsMode) -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let closed_clean = Arc::new(AtomicUsize::new(0));
        let (st, cc) = (stop.clone(), closed_clean.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for stream in listener.incoming() {
                if st.load(SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let cc = cc.clone();
                conns.push(std::thread::spawn(move || echo(stream, mode, &cc)));
            }
            for c in conns {
                let _ = c.join();
            }
        });
        WsBackend {
            addr,
            stop,
            closed_clean,
            thread: Some(thread),
        }
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn echo(stream: TcpStream, mode: WsMode, closed_clean: &AtomicUsize) {
    stream.set_read_timeout(Some(IO_LIMIT)).unwrap();
    let raw = stream.try_clone().unwrap();
    // Not a WebSocket handshake (the accept loop's wake-up connection): nothing to do.
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    loop {
        match ws.read() {
            // tungstenite queues the pong for a ping and the reply to a close itself; they go
            // out with the next read or send.
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).is_err() {
                    return;
                }
                if mode == WsMode::DieAfterOne {
                    let _ = raw.shutdown(Shutdown::Both);
                    return;
                }
            }
            Ok(_) => {}
            Err(Error::ConnectionClosed) => {
                closed_clean.fetch_add(1, SeqCst);
                return;
            }
            Err(_) => return,
        }
    }
}

/// `/ws` to the WebSocket backend, everything else to a plain HTTP backend.
fn table(ws: &WsBackend, web: &Backend) -> TableSpec {
    let mut ws_service = service(web);
    ws_service.name = "ws".into();
    ws_service.endpoints[0].addr = ws.addr;
    TableSpec {
        services: vec![ws_service, service(web)],
        routes: vec![route(&[], "/ws", "ws"), route(&[], "/", &web.name)],
        default_backend: None,
    }
}

/// A WebSocket client through the proxy; asserts the 101 came back with the handshake intact.
fn ws_client(proxy: &Proxy) -> WebSocket<TcpStream> {
    let s = TcpStream::connect(proxy.local_addrs()[0]).unwrap();
    s.set_read_timeout(Some(IO_LIMIT)).unwrap();
    let (ws, response) = tungstenite::client("ws://chat.test/ws/room", s)
        .expect("the WebSocket handshake completes through the proxy");
    assert_eq!(response.status(), 101);
    ws
}

/// The close handshake: ours, the backend's reply, then the backend closes TCP and the proxy
/// passes that on (a client sees ConnectionClosed only on EOF; a read timeout is an error).
fn close_cleanly(mut ws: WebSocket<TcpStream>) {
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(Error::ConnectionClosed) => return,
            Err(e) => panic!("the close handshake ends cleanly, not with {e}"),
        }
    }
}

/// Waits (bounded) until the proxy has no client connection open; the count it saw last.
fn wait_idle(proxy: &Proxy) -> u64 {
    let deadline = Instant::now() + IO_LIMIT;
    loop {
        let active = proxy.counters().active;
        if active == 0 || Instant::now() > deadline {
            return active;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A normal request on its own connection, answered by the HTTP backend.
fn plain_get_routes(proxy: &Proxy, web: &Backend) {
    let mut c = Client::connect(proxy.local_addrs()[0]);
    let r = c.get("chat.test", "/index.html").expect("an answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), web.name);
}

#[test]
fn websocket_echo_ping_and_close_through_the_proxy() {
    let ws_backend = WsBackend::start(WsMode::Echo);
    let web = Backend::start("web", Mode::Name);
    let (proxy, _) = proxy(&table(&ws_backend, &web), 1, ConnConfig::default());
    let mut ws = ws_client(&proxy);

    // Text and binary of several sizes: one frame fits a read buffer, the largest (200 KiB) is
    // relayed in many reads and writes.
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let messages = [
        Message::text("hello"),
        Message::binary(vec![0u8, 255, 13, 10]),
        Message::text("é".repeat(3000)),
        Message::binary(vec![0x5a; 70_000]),
        Message::binary(big),
        Message::text(""),
    ];
    for m in &messages {
        ws.send(m.clone()).unwrap();
        assert_eq!(&ws.read().unwrap(), m, "echoed unchanged");
    }

    // A plain request on another connection routes while the tunnel is open.
    plain_get_routes(&proxy, &web);

    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Message::Pong(Bytes::from_static(b"are you there"))
    );

    close_cleanly(ws);
    assert_eq!(wait_idle(&proxy), 0, "every client connection closed");
    drop(ws_backend);
    // Joined: the backend's session thread finished.
    plain_get_routes(&proxy, &web);
    let counts = stop_and_count(proxy);
    assert_eq!(counts.accepted, 3, "one tunnel and two plain connections");
}

#[test]
fn close_handshake_is_seen_by_the_backend() {
    let ws_backend = WsBackend::start(WsMode::Echo);
    let web = Backend::start("web", Mode::Name);
    let (proxy, _) = proxy(&table(&ws_backend, &web), 1, ConnConfig::default());
    let mut ws = ws_client(&proxy);
    ws.send(Message::text("bye")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("bye"));
    close_cleanly(ws);
    let closed = ws_backend.closed_clean.clone();
    drop(ws_backend);
    assert_eq!(
        closed.load(SeqCst),
        1,
        "the backend finished the close handshake"
    );
    assert_eq!(wait_idle(&proxy), 0);
    proxy.stop().unwrap();
}

#[test]
fn backend_dying_mid_tunnel_closes_the_client() {
    let ws_backend = WsBackend::start(WsMode::DieAfterOne);
    let web = Backend::start("web", Mode::Name);
    let (proxy, _) = proxy(&table(&ws_backend, &web), 1, ConnConfig::default());
    let mut ws = ws_client(&proxy);
    ws.send(Message::text("last words")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("last words"));
    // The backend is gone without a close frame: the proxy closes our side, so the next read
    // ends with EOF or a reset, not with the read timeout.
    let started = Instant::now();
    let err = loop {
        match ws.read() {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    let timed_out = matches!(&err, Error::Io(e) if matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    assert!(
        !timed_out,
        "the proxy left the client hanging ({err}) for {:?}",
        started.elapsed()
    );
    drop(ws);
    assert_eq!(
        wait_idle(&proxy),
        0,
        "the tunnel's client connection closed"
    );
    plain_get_routes(&proxy, &web);
    proxy.stop().unwrap();
}

//! One L7 worker: a `mio::Poll` loop over its listeners, client connections and backend
//! connections. Sockets only: every decision is the core's ([`Conn`]).
//!
//! Tokens: listener `i` is `i`; connection slot `s` is `BASE + 2s` (client) and `BASE + 2s + 1`
//! (its backend). Readiness is edge-triggered, so a side is read until `WouldBlock` or until the
//! core wants no more; a side left readable is read again once the core wants more.

use super::metrics::Metrics;
use super::tables::{ConnRouter, Tables};
use super::timers::{Timer, Timers};
use super::{ListenerSpec, ProxyConfig};
use crate::conntrack::Millis;
use crate::l7::pool::Pool;
use crate::l7::route::BackendId;
use crate::l7::tls::{Plain, TlsSession};
use crate::l7::{Action, ClientInfo, Conn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use rustc_hash::FxHashMap;
use rustls::ServerConfig;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// First connection token; listeners are below.
const BASE: usize = 1 << 16;
/// The waker's token.
const WAKE: Token = Token(usize::MAX);
/// Bytes read per call.
const READ_CHUNK: usize = 64 * 1024;
/// Longest poll sleep: the pool's expiry runs at least this often.
const HOUSEKEEPING: Millis = 1_000;

/// A backend connection of a slot.
#[derive(Debug)]
struct BackendSock {
    stream: TcpStream,
    /// Pool key: the backend address, interned.
    key: BackendId,
    connecting: bool,
    readable: bool,
}

/// One client connection.
#[derive(Debug)]
struct Slot {
    conn: Conn,
    client: TcpStream,
    tls: Option<TlsSession>,
    backend: Option<BackendSock>,
    /// Table generation of the current request.
    gen: Option<usize>,
    readable: bool,
    /// The core asked to close: flush, then shut down and linger.
    closing: bool,
    /// Output flushed and write side shut: draining input until EOF or the linger timer.
    lingering: bool,
    timer: Timer,
    /// Answers already counted.
    counted: [u64; 5],
    /// When the current request started and when its response head went out (`Cx::now_us`).
    started_us: u64,
    head_us: u64,
}

/// What the per-connection code needs of the worker, apart from the slots.
struct Cx {
    registry: Registry,
    tables: Tables,
    pool: Pool<TcpStream>,
    /// Backend address -> pool key.
    keys: FxHashMap<SocketAddr, BackendId>,
    timers: Timers,
    metrics: Arc<Metrics>,
    actions: Vec<Action>,
    scratch: Box<[u8]>,
    config: Arc<ProxyConfig>,
    now: Millis,
    /// `now` in microseconds, for latencies: read with it, once per wake-up.
    now_us: u64,
}

/// A worker before it runs.
pub(super) struct Worker {
    poll: Poll,
    waker: Arc<Waker>,
    listeners: Vec<(TcpListener, Option<Arc<ServerConfig>>)>,
    slots: Vec<Option<Slot>>,
    /// Incarnation of each slot index (stale timers of a reused slot are ignored).
    incarnations: Vec<u32>,
    free: Vec<usize>,
    stop: Arc<AtomicBool>,
    /// New listener sets from [`super::Proxy::update_listeners`].
    mailbox: Arc<Mutex<Option<ListenerUpdate>>>,
    epoch: Instant,
    cx: Cx,
}

/// A new listener set for one worker: the specs in order, with a socket for each address this
/// worker does not listen on yet (bound by the caller, so errors are the caller's).
#[derive(Debug)]
pub(super) struct ListenerUpdate {
    pub specs: Vec<ListenerSpec>,
    pub sockets: Vec<Option<TcpListener>>,
    /// Told once the worker listens on the new set.
    pub done: SyncSender<()>,
}

impl Worker {
    pub fn new(
        config: Arc<ProxyConfig>,
        listeners: Vec<TcpListener>,
        tables: Tables,
        stop: Arc<AtomicBool>,
        mailbox: Arc<Mutex<Option<ListenerUpdate>>>,
        metrics: Arc<Metrics>,
        epoch: Instant,
    ) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let mut bound = Vec::with_capacity(listeners.len());
        for (i, (mut l, spec)) in listeners.into_iter().zip(&config.listeners).enumerate() {
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)?;
            bound.push((l, spec.tls.clone()));
        }
        let cx = Cx {
            registry: poll.registry().try_clone()?,
            tables,
            pool: Pool::new(config.pool_per_backend, config.pool_idle),
            keys: FxHashMap::default(),
            timers: Timers::default(),
            metrics,
            actions: Vec::with_capacity(16),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            config,
            now: 0,
            now_us: 0,
        };
        Ok(Worker {
            poll,
            waker,
            listeners: bound,
            slots: Vec::new(),
            incarnations: Vec::new(),
            free: Vec::new(),
            stop,
            mailbox,
            epoch,
            cx,
        })
    }

    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut next_housekeeping = 0;
        while !self.stop.load(SeqCst) {
            let now = self.now();
            let wake_at = self
                .cx
                .timers
                .next()
                .unwrap_or(Millis::MAX)
                .min(next_housekeeping);
            let timeout = Duration::from_millis(wake_at.saturating_sub(now).min(HOUSEKEEPING));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            let elapsed = self.epoch.elapsed();
            self.cx.now = elapsed.as_millis() as Millis;
            self.cx.now_us = elapsed.as_micros() as u64;
            for event in &events {
                let token = event.token().0;
                if event.token() == WAKE {
                    self.take_listener_update();
                    continue;
                }
                if token < BASE {
                    self.accept(token);
                    continue;
                }
                let s = (token - BASE) / 2;
                let Some(slot) = self.slots.get_mut(s).and_then(Option::as_mut) else {
                    continue;
                };
                if (token - BASE) % 2 == 0 {
                    slot.readable |=
                        event.is_readable() || event.is_read_closed() || event.is_error();
                } else if let Some(b) = slot.backend.as_mut() {
                    b.readable |= event.is_readable() || event.is_read_closed();
                    if b.connecting {
                        connect_outcome(slot, &mut self.cx, event.is_error());
                    }
                }
                self.drive(s);
            }
            let now = self.cx.now;
            while let Some((s, inc, at)) = self.cx.timers.pop_due(now) {
                if self.incarnations.get(s) != Some(&inc) {
                    continue;
                }
                let Some(slot) = self.slots[s].as_mut() else {
                    continue;
                };
                if !self.cx.timers.fire(&mut slot.timer, s, inc, at, now) {
                    continue;
                }
                if slot.lingering {
                    self.free_slot(s);
                    continue;
                }
                let cx = &mut self.cx;
                let mut router = ConnRouter {
                    tables: &mut cx.tables,
                    gen: &mut slot.gen,
                };
                slot.conn.timer(now, &mut router, &mut cx.actions);
                run_actions(slot, s, inc, cx);
                self.drive(s);
            }
            if now >= next_housekeeping {
                self.cx.pool.expire(now, drop);
                next_housekeeping = now + HOUSEKEEPING;
            }
        }
    }

    /// Adopts a new listener set: addresses kept keep their socket (and take the new TLS
    /// settings), new ones are registered, dropped ones are closed. Open connections stay.
    fn take_listener_update(&mut self) {
        let Some(update) = self.mailbox.lock().ok().and_then(|mut m| m.take()) else {
            return;
        };
        let mut old: Vec<Option<TcpListener>> = std::mem::take(&mut self.listeners)
            .into_iter()
            .map(|(mut l, _)| {
                let _ = self.cx.registry.deregister(&mut l);
                Some(l)
            })
            .collect();
        for (i, (spec, socket)) in update.specs.into_iter().zip(update.sockets).enumerate() {
            let socket = socket.or_else(|| {
                old.iter_mut()
                    .find(|l| {
                        l.as_ref()
                            .is_some_and(|l| l.local_addr().ok() == Some(spec.addr))
                    })
                    .and_then(Option::take)
            });
            let Some(mut l) = socket else { continue };
            if self
                .cx
                .registry
                .register(&mut l, Token(i), Interest::READABLE)
                .is_ok()
            {
                self.listeners.push((l, spec.tls));
            }
        }
        // Addresses no longer listed close before the caller hears it is done.
        drop(old);
        // Connections may wait in a kept socket's queue since the deregistration.
        for i in 0..self.listeners.len() {
            self.accept(i);
        }
        let _ = update.done.send(());
    }

    fn accept(&mut self, i: usize) {
        if i >= self.listeners.len() {
            return;
        }
        loop {
            let (stream, peer) = match self.listeners[i].0.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || is_fd_shortage(&e) => return,
                // ECONNABORTED, EINTR: that connection is gone, the listener is fine.
                Err(_) => continue,
            };
            self.cx.metrics.accepted.fetch_add(1, Relaxed);
            let open = self.slots.len() - self.free.len();
            if open >= self.cx.config.max_conns {
                self.cx.metrics.over_capacity.fetch_add(1, Relaxed);
                continue;
            }
            let tls = match &self.listeners[i].1 {
                None => None,
                Some(config) => match TlsSession::new(config.clone()) {
                    Ok(t) => Some(t),
                    Err(_) => {
                        self.cx.metrics.tls_failed.fetch_add(1, Relaxed);
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let s = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.slots.push(None);
                    self.incarnations.push(0);
                    self.slots.len() - 1
                }
            };
            let mut client = stream;
            if self
                .cx
                .registry
                .register(
                    &mut client,
                    Token(BASE + 2 * s),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                self.free.push(s);
                continue;
            }
            let info = ClientInfo {
                addr: peer.ip(),
                tls: tls.is_some(),
            };
            let conn = Conn::new(self.cx.config.conn, info, self.cx.now, &mut self.cx.actions);
            self.cx.metrics.active.fetch_add(1, Relaxed);
            let slot = self.slots[s].insert(Slot {
                conn,
                client,
                tls,
                backend: None,
                gen: None,
                readable: true,
                closing: false,
                lingering: false,
                timer: Timer::default(),
                counted: [0; 5],
                started_us: 0,
                head_us: 0,
            });
            run_actions(slot, s, self.incarnations[s], &mut self.cx);
            self.drive(s);
        }
    }

    /// Moves bytes for slot `s` until nothing moves, then frees it if it is finished.
    fn drive(&mut self, s: usize) {
        let inc = self.incarnations[s];
        let Some(slot) = self.slots[s].as_mut() else {
            return;
        };
        let done = pump(slot, s, inc, &mut self.cx);
        count_answers(slot, &self.cx.metrics);
        if done {
            self.free_slot(s);
        }
    }

    fn free_slot(&mut self, s: usize) {
        let Some(mut slot) = self.slots[s].take() else {
            return;
        };
        count_answers(&mut slot, &self.cx.metrics);
        let _ = self.cx.registry.deregister(&mut slot.client);
        if let Some(mut b) = slot.backend.take() {
            let _ = self.cx.registry.deregister(&mut b.stream);
        }
        if let Some(g) = slot.gen.take() {
            self.cx.tables.release(g);
        }
        self.cx.metrics.active.fetch_sub(1, Relaxed);
        self.incarnations[s] = self.incarnations[s].wrapping_add(1);
        self.free.push(s);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        for s in 0..self.slots.len() {
            self.free_slot(s);
        }
    }
}

/// Accept errors that mean "no file descriptors now": stop accepting this turn.
fn is_fd_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn count_answers(slot: &mut Slot, metrics: &Metrics) {
    let now = slot.conn.answers();
    for (i, (n, seen)) in now.iter().zip(slot.counted.iter_mut()).enumerate() {
        if *n > *seen {
            metrics.answers[i].fetch_add(*n - *seen, Relaxed);
            *seen = *n;
        }
    }
}

/// A backend connect finished (or failed): tell the core (its actions run in the next `pump`).
fn connect_outcome(slot: &mut Slot, cx: &mut Cx, error: bool) {
    let Some(b) = slot.backend.as_mut() else {
        return;
    };
    let failed = error
        || matches!(b.stream.take_error(), Ok(Some(_)) | Err(_))
        || match b.stream.peer_addr() {
            Ok(_) => false,
            // Not yet: a spurious wake-up.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
            Err(_) => true,
        };
    let mut router = ConnRouter {
        tables: &mut cx.tables,
        gen: &mut slot.gen,
    };
    if failed {
        cx.metrics.backend_failed.fetch_add(1, Relaxed);
        let mut b = slot.backend.take().expect("checked above");
        let _ = cx.registry.deregister(&mut b.stream);
        slot.conn
            .backend_failed(cx.now, &mut router, &mut cx.actions);
    } else {
        b.connecting = false;
        slot.conn
            .backend_connected(cx.now, &mut router, &mut cx.actions);
    }
}

/// Runs the actions the core pushed (it may push more while they run).
fn run_actions(slot: &mut Slot, s: usize, inc: u32, cx: &mut Cx) {
    let mut i = 0;
    while i < cx.actions.len() {
        let action = cx.actions[i];
        i += 1;
        match action {
            Action::Connect(id) => connect(slot, s, id, cx),
            Action::WriteClient | Action::WriteBackend => {}
            Action::ReleaseBackend => {
                if let Some(mut b) = slot.backend.take() {
                    let _ = cx.registry.deregister(&mut b.stream);
                    // A full pool hands it back: dropping closes it.
                    drop(cx.pool.put(b.key, b.stream, cx.now));
                }
            }
            Action::CloseBackend => {
                if let Some(mut b) = slot.backend.take() {
                    let _ = cx.registry.deregister(&mut b.stream);
                }
            }
            Action::CloseClient => slot.closing = true,
            Action::ArmTimer(at) => cx.timers.arm(&mut slot.timer, s, inc, at),
            Action::Refused(reason) => cx.metrics.reject(reason),
            Action::RequestStarted => {
                slot.started_us = cx.now_us;
                slot.head_us = cx.now_us;
            }
            Action::ResponseStarted => slot.head_us = cx.now_us,
            Action::RequestEnded(ended) => cx.tables.record(
                &ended,
                cx.now_us.saturating_sub(slot.started_us),
                slot.head_us.saturating_sub(slot.started_us),
            ),
        }
    }
    cx.actions.clear();
}

/// A connection to backend `id` of the slot's table: pooled if one is alive, else new.
fn connect(slot: &mut Slot, s: usize, id: BackendId, cx: &mut Cx) {
    if let Some(mut old) = slot.backend.take() {
        let _ = cx.registry.deregister(&mut old.stream);
    }
    let addr = slot.gen.and_then(|g| cx.tables.addr(g, id));
    let Some(addr) = addr else {
        let mut router = ConnRouter {
            tables: &mut cx.tables,
            gen: &mut slot.gen,
        };
        slot.conn
            .backend_failed(cx.now, &mut router, &mut cx.actions);
        return;
    };
    let next = BackendId(cx.keys.len() as u32);
    let key = *cx.keys.entry(addr).or_insert(next);
    let token = Token(BASE + 2 * s + 1);
    // A pooled connection the backend closed while idle reads EOF (or stray bytes): drop it.
    let mut probe = [0u8; 1];
    while let Some(mut stream) = cx.pool.take(key, cx.now, drop) {
        let alive =
            matches!(stream.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        if !alive {
            continue;
        }
        if cx
            .registry
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            continue;
        }
        cx.metrics.backend_reused.fetch_add(1, Relaxed);
        slot.backend = Some(BackendSock {
            stream,
            key,
            connecting: false,
            readable: true,
        });
        let mut router = ConnRouter {
            tables: &mut cx.tables,
            gen: &mut slot.gen,
        };
        slot.conn
            .backend_connected(cx.now, &mut router, &mut cx.actions);
        return;
    }
    let opened = TcpStream::connect(addr).and_then(|mut stream| {
        cx.registry
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(stream)
    });
    match opened {
        Ok(stream) => {
            let _ = stream.set_nodelay(true);
            cx.metrics.backend_opened.fetch_add(1, Relaxed);
            slot.backend = Some(BackendSock {
                stream,
                key,
                connecting: true,
                readable: false,
            });
        }
        Err(_) => {
            cx.metrics.backend_failed.fetch_add(1, Relaxed);
            let mut router = ConnRouter {
                tables: &mut cx.tables,
                gen: &mut slot.gen,
            };
            slot.conn
                .backend_failed(cx.now, &mut router, &mut cx.actions);
        }
    }
}

/// What a read gave.
enum Got {
    Data(usize),
    Eof,
    Blocked,
}

fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> Got {
    loop {
        match stream.read(buf) {
            Ok(0) => return Got::Eof,
            Ok(n) => return Got::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Got::Blocked,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A reset is an end like any other here.
            Err(_) => return Got::Eof,
        }
    }
}

/// Writes what it can; `Err` when the peer is gone.
fn write_some(stream: &mut TcpStream, data: &[u8]) -> Result<usize, ()> {
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}

/// Moves every byte that can move for one slot. True when the slot is finished.
fn pump(slot: &mut Slot, s: usize, inc: u32, cx: &mut Cx) -> bool {
    loop {
        let mut progress = false;
        run_actions(slot, s, inc, cx);
        if slot.lingering {
            // Drain and discard until EOF; the linger timer bounds it.
            return loop {
                match read_some(&mut slot.client, &mut cx.scratch) {
                    Got::Data(_) => {}
                    Got::Eof => break true,
                    Got::Blocked => break false,
                }
            };
        }
        // Client output.
        match flush_client(slot, cx) {
            Ok(moved) => progress |= moved,
            Err(()) => return true,
        }
        // Backend output.
        if let Some(b) = slot.backend.as_mut().filter(|b| !b.connecting) {
            let out = slot.conn.backend_output();
            if !out.is_empty() {
                let mut router = ConnRouter {
                    tables: &mut cx.tables,
                    gen: &mut slot.gen,
                };
                match write_some(&mut b.stream, out) {
                    Ok(0) => {}
                    Ok(n) => {
                        slot.conn
                            .backend_written(cx.now, n, &mut router, &mut cx.actions);
                        progress = true;
                    }
                    Err(()) => {
                        slot.conn
                            .backend_closed(cx.now, &mut router, &mut cx.actions);
                        progress = true;
                    }
                }
                run_actions(slot, s, inc, cx);
            }
        }
        if slot.closing {
            let flushed = slot.conn.client_output().is_empty()
                && slot.tls.as_ref().is_none_or(|t| !t.wants_write());
            if flushed {
                if let Some(tls) = slot.tls.as_mut() {
                    if !tls.is_handshaking() {
                        tls.close();
                        let _ = tls.write_tls(&mut slot.client);
                    }
                }
                let _ = slot.client.shutdown(Shutdown::Write);
                slot.lingering = true;
                cx.timers
                    .arm(&mut slot.timer, s, inc, cx.now + cx.config.linger);
                continue;
            }
            if !progress {
                return false;
            }
            continue;
        }
        // Client input.
        if slot.conn.wants_client_data() {
            match read_client(slot, cx) {
                Ok(moved) => progress |= moved,
                Err(()) => {
                    let mut router = ConnRouter {
                        tables: &mut cx.tables,
                        gen: &mut slot.gen,
                    };
                    slot.conn
                        .client_closed(cx.now, &mut router, &mut cx.actions);
                    progress = true;
                }
            }
            run_actions(slot, s, inc, cx);
        }
        // Backend input.
        if let Some(b) = slot.backend.as_mut() {
            if b.readable && !b.connecting && slot.conn.wants_backend_data() {
                let mut router = ConnRouter {
                    tables: &mut cx.tables,
                    gen: &mut slot.gen,
                };
                match read_some(&mut b.stream, &mut cx.scratch) {
                    Got::Data(n) => {
                        slot.conn.backend_data(
                            cx.now,
                            &cx.scratch[..n],
                            &mut router,
                            &mut cx.actions,
                        );
                        progress = true;
                    }
                    Got::Eof => {
                        slot.conn
                            .backend_closed(cx.now, &mut router, &mut cx.actions);
                        progress = true;
                    }
                    Got::Blocked => b.readable = false,
                }
                run_actions(slot, s, inc, cx);
            }
        }
        if !progress {
            return false;
        }
    }
}

/// Writes the core's client output (through TLS when there is one). `Err`: the client is gone.
fn flush_client(slot: &mut Slot, cx: &mut Cx) -> Result<bool, ()> {
    let mut progress = false;
    let mut router = ConnRouter {
        tables: &mut cx.tables,
        gen: &mut slot.gen,
    };
    match slot.tls.as_mut() {
        None => {
            let out = slot.conn.client_output();
            if !out.is_empty() {
                let n = write_some(&mut slot.client, out)?;
                if n > 0 {
                    slot.conn
                        .client_written(cx.now, n, &mut router, &mut cx.actions);
                    progress = true;
                }
            }
        }
        Some(tls) => {
            let out = slot.conn.client_output();
            if !out.is_empty() && !tls.is_handshaking() {
                let n = tls.write_plain(out);
                if n > 0 {
                    slot.conn
                        .client_written(cx.now, n, &mut router, &mut cx.actions);
                    progress = true;
                }
            }
            while tls.wants_write() {
                match tls.write_tls(&mut slot.client) {
                    Ok(0) => break,
                    Ok(_) => progress = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(()),
                }
            }
        }
    }
    Ok(progress)
}

/// Reads client bytes into the core (decrypting first on TLS). `Err`: the client closed.
fn read_client(slot: &mut Slot, cx: &mut Cx) -> Result<bool, ()> {
    let mut router = ConnRouter {
        tables: &mut cx.tables,
        gen: &mut slot.gen,
    };
    let Some(tls) = slot.tls.as_mut() else {
        if !slot.readable {
            return Ok(false);
        }
        return match read_some(&mut slot.client, &mut cx.scratch) {
            Got::Data(n) => {
                slot.conn
                    .client_data(cx.now, &cx.scratch[..n], &mut router, &mut cx.actions);
                Ok(true)
            }
            Got::Eof => Err(()),
            Got::Blocked => {
                slot.readable = false;
                Ok(false)
            }
        };
    };
    // Plaintext already decrypted goes first; records are read only when none waits.
    match tls.read_plain(&mut cx.scratch) {
        Plain::Data(n) => {
            slot.conn
                .client_data(cx.now, &cx.scratch[..n], &mut router, &mut cx.actions);
            return Ok(true);
        }
        Plain::Closed => return Err(()),
        Plain::Empty => {}
    }
    if !slot.readable {
        return Ok(false);
    }
    match tls.read_tls(&mut slot.client) {
        Ok(0) => Err(()),
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            slot.readable = false;
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
        Err(e) => {
            if e.kind() == io::ErrorKind::InvalidData {
                cx.metrics.tls_failed.fetch_add(1, Relaxed);
                // Send the alert rustls queued, best effort.
                let _ = tls.write_tls(&mut slot.client);
            }
            Err(())
        }
    }
}

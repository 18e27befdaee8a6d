//! One L7 worker: a `mio::Poll` loop over its listeners, client connections and backend
//! connections. Sockets only: every decision is the core's ([`Conn`]).
//!
//! Tokens: listener `i` is `i`; the client of connection slot `s` is `BASE + s`; backend socket
//! `id` is `BACKENDS + id`, registered once for its life (plain or TLS, in a slot, parked or
//! pooled), so moving it between slots, the pool and a slot's parking place costs no epoll
//! syscall (an event of an idle socket only marks it: taking it checks it). Readiness is
//! edge-triggered, so a side is read until it is drained or until the core wants no more; a side
//! left readable is read again once the core wants more. A read shorter than the buffer drained
//! the socket: any byte arriving later raises a new edge, so no read is spent on `WouldBlock`
//! (unless the peer's close was reported: then read to the end).
//!
//! A new backend connection is set up before the core hears it is connected: TCP connect, then
//! the PROXY header (if its upstream sends one), then the TLS handshake (if TLS): a failure in
//! any of them is a failed connect (another backend, or 502). Pooled connections are keyed by
//! address and upstream settings; one carrying a PROXY header is private to its client
//! connection (parked in the slot, reused only by that client's next requests).

use super::metrics::Metrics;
use super::tables::{ConnRouter, Tables};
use super::timers::{Timer, Timers};
use super::{ListenerSpec, ProxyConfig};
use crate::conntrack::Millis;
use crate::l7::pool::Pool;
use crate::l7::proxy_proto::ProxyHeader;
use crate::l7::route::BackendId;
use crate::l7::tls::{backend_name, Plain, TlsSession};
use crate::l7::upstream::{ProxyProtocol, UpstreamSpec};
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

/// First client token; listeners are below.
const BASE: usize = 1 << 16;
/// First backend socket token; clients are below.
const BACKENDS: usize = 1 << 31;
/// The waker's token.
const WAKE: Token = Token(usize::MAX);
/// Bytes read per call.
const READ_CHUNK: usize = 64 * 1024;
/// Longest poll sleep: the pool's expiry runs at least this often.
const HOUSEKEEPING: Millis = 1_000;

/// A backend connection of a slot (or pooled, or parked).
#[derive(Debug)]
struct BackendSock {
    stream: TcpStream,
    /// Pool key: the backend address and upstream settings, interned.
    key: BackendId,
    /// Its id in [`BackendIds`] (its token is `BACKENDS + id`).
    id: usize,
    /// Not handed to the core yet: TCP connect, PROXY header or TLS handshake under way.
    connecting: bool,
    /// The TCP connect finished.
    established: bool,
    readable: bool,
    /// The backend closed or failed: read until EOF, a short read does not mean drained.
    hup: bool,
    /// When it went idle (pooled or parked): one taken in the same millisecond with no event
    /// since is not peeked.
    idle_since: Millis,
    /// The PROXY header and how much of it is written (sent first, in clear).
    preamble: Option<(ProxyHeader, usize)>,
    tls: Option<TlsSession>,
    /// Carries its client's PROXY header: reused only by that client connection.
    private: bool,
}

/// One client connection.
#[derive(Debug)]
struct Slot {
    conn: Conn,
    client: TcpStream,
    /// The client's address and port (the PROXY header's source).
    peer: SocketAddr,
    tls: Option<TlsSession>,
    backend: Option<BackendSock>,
    /// An idle private backend connection, kept for this client's next request.
    parked: Option<BackendSock>,
    /// Table generation of the current request.
    gen: Option<usize>,
    readable: bool,
    /// The client closed or failed: read until EOF, a short read does not mean drained.
    hup: bool,
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
    /// Idle backend sockets (still registered, with their ids and when they went idle).
    pool: Pool<BackendSock>,
    ids: BackendIds,
    /// Backend address -> (upstream settings, pool key) for each settings seen.
    keys: FxHashMap<SocketAddr, Vec<(UpstreamSpec, BackendId)>>,
    next_key: u32,
    timers: Timers,
    metrics: Arc<Metrics>,
    actions: Vec<Action>,
    scratch: Box<[u8]>,
    config: Arc<ProxyConfig>,
    now: Millis,
    /// `now` in microseconds, for latencies: read with it, once per wake-up.
    now_us: u64,
}

/// Ids of backend sockets, each registered once with token `BACKENDS + id` and kept while the
/// socket moves between slots and the pool.
#[derive(Debug, Default)]
struct BackendIds {
    /// The slot each id serves; None while idle in the pool or closed.
    owners: Vec<Option<usize>>,
    /// An event came while the socket idled in the pool (its edge is spent: peek before use).
    stirred: Vec<bool>,
    free: Vec<usize>,
    /// Closed during this turn: reused from the next poll on, so an event of the closed socket
    /// still in this turn's batch never reaches the id's next socket.
    closed: Vec<usize>,
}

impl BackendIds {
    /// A new id serving slot `s`.
    fn open(&mut self, s: usize) -> usize {
        match self.free.pop() {
            Some(id) => {
                self.owners[id] = Some(s);
                self.stirred[id] = false;
                id
            }
            None => {
                self.owners.push(Some(s));
                self.stirred.push(false);
                self.owners.len() - 1
            }
        }
    }

    /// The socket of `id` is closed (dropping it left the epoll set).
    fn close(&mut self, id: usize) {
        self.owners[id] = None;
        self.closed.push(id);
    }

    /// Called between turns: the ids closed during the last one may be reused.
    fn recycle(&mut self) {
        self.free.append(&mut self.closed);
    }
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
            ids: BackendIds::default(),
            keys: FxHashMap::default(),
            next_key: 0,
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
            self.cx.ids.recycle();
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
                if token >= BACKENDS {
                    let id = token - BACKENDS;
                    // None: idle in the pool (taking it checks it) or closed.
                    let Some(s) = self.cx.ids.owners.get(id).copied().flatten() else {
                        if let Some(stirred) = self.cx.ids.stirred.get_mut(id) {
                            *stirred = true;
                        }
                        continue;
                    };
                    let Some(slot) = self.slots.get_mut(s).and_then(Option::as_mut) else {
                        continue;
                    };
                    if let Some(b) = slot.backend.as_mut().filter(|b| b.id == id) {
                        b.readable |= event.is_readable() || event.is_read_closed();
                        b.hup |= event.is_read_closed() || event.is_error();
                        if b.connecting {
                            connect_outcome(slot, &mut self.cx, event.is_error());
                        }
                    }
                    self.drive(s);
                    continue;
                }
                let s = token - BASE;
                let Some(slot) = self.slots.get_mut(s).and_then(Option::as_mut) else {
                    continue;
                };
                slot.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
                slot.hup |= event.is_read_closed() || event.is_error();
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
                let ids = &mut self.cx.ids;
                self.cx.pool.expire(now, |b| ids.close(b.id));
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
                    Token(BASE + s),
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
                peer,
                tls,
                backend: None,
                parked: None,
                gen: None,
                readable: true,
                hup: false,
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
        // No deregistration: closing a socket (its only descriptor) takes it out of the epoll
        // set, so the slot's sockets just drop here, a syscall fewer each.
        for b in [slot.backend.take(), slot.parked.take()]
            .into_iter()
            .flatten()
        {
            self.cx.ids.close(b.id);
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

/// A backend connection being set up had an event: once connected, PROXY header written and TLS
/// handshake done, or on failure, tell the core (its actions run in the next `pump`).
fn connect_outcome(slot: &mut Slot, cx: &mut Cx, error: bool) {
    let Some(b) = slot.backend.as_mut() else {
        return;
    };
    let mut failed = false;
    if !b.established {
        failed = error
            || matches!(b.stream.take_error(), Ok(Some(_)) | Err(_))
            || match b.stream.peer_addr() {
                Ok(_) => false,
                // Not yet: a spurious wake-up.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => true,
            };
        b.established = !failed;
    }
    if !failed {
        match set_up(b) {
            Ok(true) => {}
            // The rest comes with the next event (writable, or the peer's handshake records).
            Ok(false) => return,
            Err(()) => failed = true,
        }
    }
    let mut router = ConnRouter {
        tables: &mut cx.tables,
        gen: &mut slot.gen,
    };
    if failed {
        cx.metrics.backend_failed.fetch_add(1, Relaxed);
        let b = slot.backend.take().expect("checked above");
        cx.ids.close(b.id);
        slot.conn
            .backend_failed(cx.now, &mut router, &mut cx.actions);
    } else {
        b.connecting = false;
        slot.conn
            .backend_connected(cx.now, &mut router, &mut cx.actions);
    }
}

/// Writes the PROXY header, then runs the TLS handshake, as far as the socket allows. `Ok(true)`:
/// ready for the core; `Ok(false)`: wait for the socket; `Err`: failed (a bad certificate, the
/// peer closed).
fn set_up(b: &mut BackendSock) -> Result<bool, ()> {
    if let Some((header, written)) = b.preamble.as_mut() {
        let bytes = header.as_bytes();
        while *written < bytes.len() {
            match write_some(&mut b.stream, &bytes[*written..])? {
                0 => return Ok(false),
                n => *written += n,
            }
        }
        b.preamble = None;
    }
    let Some(tls) = b.tls.as_mut() else {
        return Ok(true);
    };
    loop {
        let mut moved = flush_tls(tls, &mut b.stream)?;
        if !tls.is_handshaking() {
            // Anything still queued (the client Finished) goes out with the first request.
            return Ok(true);
        }
        match tls.read_tls(&mut b.stream) {
            Ok(0) => return Err(()),
            Ok(_) => moved = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => moved = true,
            Err(_) => {
                // Send the alert rustls queued (bad certificate...), best effort.
                let _ = tls.write_tls(&mut b.stream);
                return Err(());
            }
        }
        if !moved {
            return Ok(false);
        }
    }
}

/// Writes the TLS records a session has queued, as far as the socket takes them. `Ok(true)`:
/// some were written; `Err`: the peer is gone.
fn flush_tls(tls: &mut TlsSession, stream: &mut TcpStream) -> Result<bool, ()> {
    let mut progress = false;
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(0) => break,
            Ok(_) => progress = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(progress)
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
                    // It stays registered; its events only mark it while it idles.
                    cx.ids.owners[b.id] = None;
                    cx.ids.stirred[b.id] = false;
                    b.idle_since = cx.now;
                    // An older parked one, or this one when the pool is full: dropping
                    // closes it, which takes it out of the epoll set.
                    let closed = if b.private {
                        // One per client is enough.
                        slot.parked.replace(b)
                    } else {
                        cx.pool.put(b.key, b, cx.now)
                    };
                    if let Some(old) = closed {
                        cx.ids.close(old.id);
                    }
                }
            }
            // Dropping closes it, which takes it out of the epoll set.
            Action::CloseBackend => close_backend(slot, cx),
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

/// The pool key of `addr` with `spec`: connections are shared only between equal settings.
fn pool_key(cx: &mut Cx, addr: SocketAddr, spec: &UpstreamSpec) -> BackendId {
    let list = cx.keys.entry(addr).or_default();
    if let Some(&(_, key)) = list.iter().find(|(s, _)| s == spec) {
        return key;
    }
    let key = BackendId(cx.next_key);
    cx.next_key += 1;
    list.push((spec.clone(), key));
    key
}

/// True when an idle connection still looks usable: no EOF and no stray bytes waiting (a TLS
/// connection with records waiting, a late alert or ticket, is not reused either).
fn is_alive(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Hands a reused (pooled or parked) connection to the core if it is alive; else closes it.
fn reuse(slot: &mut Slot, s: usize, mut b: BackendSock, cx: &mut Cx) -> bool {
    // One put back this millisecond, drained, with no event since is taken without the peek (a
    // syscall per request under load): its edge is unspent, so a close not yet polled reaches
    // its new slot like one arriving just after a peek would.
    let fresh = b.idle_since == cx.now && !cx.ids.stirred[b.id] && !b.readable && !b.hup;
    if !fresh && !is_alive(&b.stream) {
        cx.ids.close(b.id);
        return false;
    }
    cx.ids.owners[b.id] = Some(s);
    cx.metrics.backend_reused.fetch_add(1, Relaxed);
    // Nothing to read (the peek, or no event since it idled): the next byte raises an edge.
    b.readable = false;
    slot.backend = Some(b);
    let mut router = ConnRouter {
        tables: &mut cx.tables,
        gen: &mut slot.gen,
    };
    slot.conn
        .backend_connected(cx.now, &mut router, &mut cx.actions);
    true
}

/// Tells the core the connect failed, and counts it.
fn connect_failed(slot: &mut Slot, cx: &mut Cx) {
    cx.metrics.backend_failed.fetch_add(1, Relaxed);
    let mut router = ConnRouter {
        tables: &mut cx.tables,
        gen: &mut slot.gen,
    };
    slot.conn
        .backend_failed(cx.now, &mut router, &mut cx.actions);
}

/// Closes the slot's backend connection, if any (dropping it takes it out of the epoll set).
fn close_backend(slot: &mut Slot, cx: &mut Cx) {
    if let Some(b) = slot.backend.take() {
        cx.ids.close(b.id);
    }
}

/// A connection to backend `id` of the slot's table: this client's parked private one, a pooled
/// one if alive, else new.
fn connect(slot: &mut Slot, s: usize, id: BackendId, cx: &mut Cx) {
    close_backend(slot, cx);
    let target = slot
        .gen
        .and_then(|g| cx.tables.backend_conn(g, id))
        .map(|(addr, up)| (addr, up.clone()));
    let Some((addr, upstream)) = target else {
        let mut router = ConnRouter {
            tables: &mut cx.tables,
            gen: &mut slot.gen,
        };
        slot.conn
            .backend_failed(cx.now, &mut router, &mut cx.actions);
        return;
    };
    let key = pool_key(cx, addr, &upstream.spec);
    if let Some(b) = slot.parked.take() {
        if b.key == key {
            if reuse(slot, s, b, cx) {
                return;
            }
        } else {
            // Another backend (or settings): the parked one is of no more use.
            cx.ids.close(b.id);
        }
    }
    if !upstream.is_private() {
        // A pooled connection the backend closed while idle reads EOF (or stray bytes): the
        // check in `reuse` drops it.
        loop {
            let ids = &mut cx.ids;
            let Some(b) = cx.pool.take(key, cx.now, |b| ids.close(b.id)) else {
                break;
            };
            if reuse(slot, s, b, cx) {
                return;
            }
        }
    }
    let tls = match &upstream.tls {
        None => None,
        Some(Ok(config)) => {
            let spec = upstream.spec.tls.as_ref().expect("loaded from a spec");
            match TlsSession::client(config.clone(), backend_name(spec, addr.ip())) {
                Ok(t) => Some(t),
                Err(_) => return connect_failed(slot, cx),
            }
        }
        // The CA file did not load: nothing can be verified.
        Some(Err(_)) => return connect_failed(slot, cx),
    };
    let preamble = match upstream.spec.proxy_protocol {
        None => None,
        Some(ProxyProtocol::V2) => match slot.client.local_addr() {
            Ok(local) => Some((ProxyHeader::v2(slot.peer, local), 0)),
            Err(_) => return connect_failed(slot, cx),
        },
    };
    let id = cx.ids.open(s);
    let opened = TcpStream::connect(addr).and_then(|mut stream| {
        let token = Token(BACKENDS + id);
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
                id,
                connecting: true,
                established: false,
                readable: false,
                hup: false,
                idle_since: 0,
                preamble,
                tls,
                private: upstream.is_private(),
            });
        }
        Err(_) => {
            cx.ids.close(id);
            connect_failed(slot, cx);
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
            // Drain and discard until EOF; the linger timer bounds it. Only on an edge: right
            // after the shutdown the client has usually sent nothing more, and its FIN raises one.
            return loop {
                if !slot.readable {
                    break false;
                }
                match read_some(&mut slot.client, &mut cx.scratch) {
                    Got::Data(n) => {
                        if n < cx.scratch.len() && !slot.hup {
                            slot.readable = false;
                        }
                    }
                    Got::Eof => break true,
                    Got::Blocked => {
                        slot.readable = false;
                        break false;
                    }
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
            let mut router = ConnRouter {
                tables: &mut cx.tables,
                gen: &mut slot.gen,
            };
            match write_backend(b, slot.conn.backend_output()) {
                Ok((0, moved)) => progress |= moved,
                Ok((n, _)) => {
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
        // Backend input (TLS: decrypted bytes may wait while the socket is drained).
        if let Some(b) = slot.backend.as_mut() {
            if (b.readable || b.tls.is_some()) && !b.connecting && slot.conn.wants_backend_data() {
                let mut router = ConnRouter {
                    tables: &mut cx.tables,
                    gen: &mut slot.gen,
                };
                match read_backend(b, &mut cx.scratch) {
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
                    Got::Blocked => {}
                }
                run_actions(slot, s, inc, cx);
            }
        }
        if !progress {
            return false;
        }
    }
}

/// Writes the core's backend output (through TLS when there is one): `(bytes of it taken,
/// anything moved)`. `Err`: the backend is gone.
fn write_backend(b: &mut BackendSock, out: &[u8]) -> Result<(usize, bool), ()> {
    match b.tls.as_mut() {
        None if out.is_empty() => Ok((0, false)),
        None => write_some(&mut b.stream, out).map(|n| (n, n > 0)),
        Some(tls) => {
            let n = if out.is_empty() {
                0
            } else {
                tls.write_plain(out)
            };
            let flushed = flush_tls(tls, &mut b.stream)?;
            Ok((n, n > 0 || flushed))
        }
    }
}

/// Reads backend bytes (decrypted on TLS) into `buf`; marks the socket drained on `Blocked`, or
/// (plain) on a read shorter than `buf`. TLS reads to `WouldBlock`: rustls takes at most its own
/// buffer's room per read, so a short read there does not mean drained.
fn read_backend(b: &mut BackendSock, buf: &mut [u8]) -> Got {
    let Some(tls) = b.tls.as_mut() else {
        if !b.readable {
            return Got::Blocked;
        }
        let got = read_some(&mut b.stream, buf);
        match got {
            Got::Data(n) if n < buf.len() && !b.hup => b.readable = false,
            Got::Blocked => b.readable = false,
            _ => {}
        }
        return got;
    };
    loop {
        match tls.read_plain(buf) {
            Plain::Data(n) => return Got::Data(n),
            Plain::Closed => return Got::Eof,
            Plain::Empty => {}
        }
        if !b.readable {
            return Got::Blocked;
        }
        match tls.read_tls(&mut b.stream) {
            Ok(0) => return Got::Eof,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                b.readable = false;
                return Got::Blocked;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A protocol error: the response cannot be trusted; an end like a reset.
            Err(_) => return Got::Eof,
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
            progress |= flush_tls(tls, &mut slot.client)?;
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
                if n < cx.scratch.len() && !slot.hup {
                    slot.readable = false;
                }
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

//! The mio transport for the L7 core: kernel sockets around [`crate::l7::Conn`], no decisions.
//!
//! [`Proxy::start`] runs one thread per worker, each with its own `mio::Poll`, its own
//! SO_REUSEPORT listener per listen address (the kernel spreads connections over them), a slab of
//! connections, one timer per connection, a backend connection pool and its own selection state.
//! Routes come from an `ArcSwap<RouteTable>` loaded when a request is routed: a request finishes
//! on the table it started with, the next one uses the newest. Listeners stay open across table
//! changes. TLS listeners put a [`crate::l7::tls::TlsSession`] between socket and core.
//!
//! By job: `worker` (the poll loop and socket handling), `tables` (table generations as the
//! core's `Router`), `timers` (one timer per connection, lazy deletion), [`metrics`].
#![forbid(unsafe_code)]

pub mod metrics;
mod tables;
mod timers;
mod worker;

pub use metrics::{Counters, Metrics, RequestCounts, RequestStats};

use crate::conntrack::Millis;
use crate::l7::{ConnConfig, RouteTable};
use arc_swap::ArcSwap;
use mio::net::TcpListener;
use mio::Waker;
use rustls::ServerConfig;
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One address the proxy accepts HTTP on.
#[derive(Clone, Debug)]
pub struct ListenerSpec {
    /// Where to listen (port 0: any free port, the same on every worker).
    pub addr: SocketAddr,
    /// TLS settings ([`crate::l7::tls::server_config`]); None: plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
}

/// How the proxy runs.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Listen addresses.
    pub listeners: Vec<ListenerSpec>,
    /// Worker threads (at least one).
    pub workers: usize,
    /// Core of worker `i` is `cores[i]`; workers past the end are not pinned.
    pub cores: Vec<usize>,
    /// Limits, timeouts and buffer size of each connection.
    pub conn: ConnConfig,
    /// Client connections per worker; more are closed at accept (`over_capacity`).
    pub max_conns: usize,
    /// Idle backend connections kept per backend address, per worker.
    pub pool_per_backend: usize,
    /// How long an idle backend connection is kept.
    pub pool_idle: Millis,
    /// How long a closing client connection is drained after its last answer, so the answer is
    /// not lost to a reset when the client was still sending.
    pub linger: Millis,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listeners: Vec::new(),
            workers: 1,
            cores: Vec::new(),
            conn: ConnConfig::default(),
            max_conns: 10_000,
            pool_per_backend: 64,
            pool_idle: 30_000,
            linger: 2_000,
        }
    }
}

/// A worker thread as the proxy holds it.
#[derive(Debug)]
struct WorkerThread {
    waker: Arc<Waker>,
    mailbox: Arc<Mutex<Option<worker::ListenerUpdate>>>,
    thread: Option<JoinHandle<()>>,
}

/// How long [`Proxy::update_listeners`] waits for a worker to adopt the new set.
const UPDATE_WAIT: Duration = Duration::from_secs(5);

/// The running proxy: its workers, their listeners and counters.
#[derive(Debug)]
pub struct Proxy {
    stop: Arc<AtomicBool>,
    workers: Vec<WorkerThread>,
    addrs: Vec<SocketAddr>,
    metrics: Vec<Arc<Metrics>>,
    /// Requests by route and backend, every worker's.
    requests: Arc<RequestStats>,
}

/// A non-blocking listener with SO_REUSEPORT, so every worker has its own on one address.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}

impl Proxy {
    /// Binds every listener on every worker (errors here, before any thread starts), then starts
    /// the workers on `routes`.
    pub fn start(config: ProxyConfig, routes: Arc<ArcSwap<RouteTable>>) -> io::Result<Proxy> {
        let workers = config.workers.max(1);
        // The first bind picks the port (when 0); the other workers bind that same address.
        let mut addrs = Vec::with_capacity(config.listeners.len());
        let mut sockets: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
        for spec in &config.listeners {
            let first = listen(spec.addr)?;
            let addr = first.local_addr()?;
            addrs.push(addr);
            sockets[0].push(first);
            for list in sockets.iter_mut().skip(1) {
                list.push(listen(addr)?);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let config = Arc::new(config);
        let mut proxy = Proxy {
            stop: stop.clone(),
            workers: Vec::with_capacity(workers),
            addrs,
            metrics: Vec::with_capacity(workers),
            requests: Arc::default(),
        };
        for (id, listeners) in sockets.into_iter().enumerate() {
            let metrics = Arc::new(Metrics::default());
            let mailbox = Arc::new(Mutex::new(None));
            let w = worker::Worker::new(
                config.clone(),
                listeners,
                tables::Tables::new(routes.clone(), proxy.requests.clone()),
                stop.clone(),
                mailbox.clone(),
                metrics.clone(),
                epoch,
            )?;
            let waker = w.waker();
            let core = config.cores.get(id).copied();
            let thread = std::thread::Builder::new()
                .name(format!("lb-l7-{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        // Unpinned is slower, not wrong: run anyway.
                        let _ = crate::worker::pin_to_core(core);
                    }
                    w.run();
                })?;
            proxy.metrics.push(metrics);
            proxy.workers.push(WorkerThread {
                waker,
                mailbox,
                thread: Some(thread),
            });
        }
        Ok(proxy)
    }

    /// The bound listen addresses, in the order of [`ProxyConfig::listeners`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Replaces the listener set without closing what stays: an address already listened on
    /// keeps its sockets (and takes the spec's TLS settings: a new certificate applies to new
    /// handshakes), a new address is bound on every worker here (an error leaves the old set
    /// serving), an address no longer listed is closed. Open connections are never closed.
    /// Returns once every worker listens on the new set.
    pub fn update_listeners(&mut self, specs: Vec<ListenerSpec>) -> io::Result<()> {
        let workers = self.workers.len();
        let mut sockets: Vec<Vec<Option<TcpListener>>> = (0..workers).map(|_| Vec::new()).collect();
        let mut addrs = Vec::with_capacity(specs.len());
        let mut bound = Vec::with_capacity(specs.len());
        for spec in &specs {
            if self.addrs.contains(&spec.addr) {
                addrs.push(spec.addr);
                sockets.iter_mut().for_each(|s| s.push(None));
                bound.push(spec.clone());
                continue;
            }
            let first = listen(spec.addr)?;
            let addr = first.local_addr()?;
            sockets[0].push(Some(first));
            for list in sockets.iter_mut().skip(1) {
                list.push(Some(listen(addr)?));
            }
            addrs.push(addr);
            bound.push(ListenerSpec {
                addr,
                tls: spec.tls.clone(),
            });
        }
        let mut acks = Vec::with_capacity(workers);
        for (w, sockets) in self.workers.iter().zip(sockets) {
            let (done, ack) = sync_channel(1);
            let update = worker::ListenerUpdate {
                specs: bound.clone(),
                sockets,
                done,
            };
            *w.mailbox
                .lock()
                .map_err(|_| io::Error::other("an l7 worker panicked"))? = Some(update);
            w.waker.wake()?;
            acks.push(ack);
        }
        self.addrs = addrs;
        for ack in acks {
            ack.recv_timeout(UPDATE_WAIT)
                .map_err(|_| io::Error::other("an l7 worker did not take the new listeners"))?;
        }
        Ok(())
    }

    /// Each worker's counters.
    pub fn metrics(&self) -> &[Arc<Metrics>] {
        &self.metrics
    }

    /// Requests by route, backend and status class, and latencies by route: every worker's,
    /// kept across table changes.
    pub fn requests(&self) -> &Arc<RequestStats> {
        &self.requests
    }

    /// Every worker's counters, summed.
    pub fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for m in &self.metrics {
            total.add(&m.read());
        }
        total
    }

    /// Stops the workers (open connections are closed) and waits for them.
    pub fn stop(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.workers {
            w.waker.wake()?;
        }
        let mut result = Ok(());
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                if t.join().is_err() {
                    result = Err(io::Error::other("an l7 worker panicked"));
                }
            }
        }
        result
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

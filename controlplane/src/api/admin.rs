//! The admin HTTP API: metrics, health and readiness probes, state, and runtime operations on
//! backends (HAProxy's runtime API over REST). `docs/ADMIN.md` is the reference.
//!
//! [`Control`] methods are synchronous and may rebuild a routing table, so every call runs on
//! tokio's blocking pool: a slow rebuild never stalls a scrape or a probe.
//!
//! The listener is bounded ([`Limits`]): at most `max_connections` are served at once (more wait
//! in the kernel's listen backlog and hold no descriptor of ours), a request head must arrive
//! within `header_timeout`, and a connection on which nothing moves for `idle_timeout` is closed.
//! Idle clients can therefore never take the descriptors the health checks and the ports need.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRef, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::l7_metrics::L7Sample;
use super::metrics;
use crate::config;
use crate::control::state::{
    AdminState, BackendKey, BackendStatus, Control, DrainingStatus, HttpStatus, Observation,
    OpError, ReloadStatus, ServiceStatus,
};

/// The admin API's state: the control plane and the counters kept beside it.
#[derive(Clone)]
struct Api {
    control: Arc<dyn Control>,
    stats: Arc<Stats>,
}

impl FromRef<Api> for Arc<dyn Control> {
    fn from_ref(api: &Api) -> Self {
        api.control.clone()
    }
}

impl FromRef<Api> for Arc<Stats> {
    fn from_ref(api: &Api) -> Self {
        api.stats.clone()
    }
}

/// Bounds of the admin listener (`[admin]` in lb.toml).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A request head must arrive within this, counted from when the server waits for it.
    pub header_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    /// The limits `[admin]` asks for.
    pub fn of(admin: &config::Admin) -> Limits {
        Limits {
            max_connections: usize::try_from(admin.max_connections).unwrap_or(usize::MAX),
            header_timeout: admin.header_timeout,
            idle_timeout: admin.idle_timeout,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::of(&config::Admin::default())
    }
}

/// What the admin listener (and the health checker, which has no API of its own) counts
/// outside the control plane; `/metrics` shows it.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections being served now.
    pub open: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections closed because a head or any byte did not come in time.
    pub timed_out: AtomicU64,
    /// Failed accepts (out of descriptors, most likely).
    pub accept_errors: AtomicU64,
    /// Health probes that failed on this host rather than at the backend (the checker's count).
    pub probe_local_errors: Arc<AtomicU64>,
    /// Sources of desired state beside the file (the kubernetes source): their readiness,
    /// `/state` and metrics.
    pub sources: Vec<Arc<dyn SourceStatus>>,
}

/// A source of desired state beside the config file, as the admin API shows it.
pub trait SourceStatus: Send + Sync + std::fmt::Debug {
    /// Its key in `/state` (`kubernetes`).
    fn name(&self) -> &'static str;
    /// False until it has delivered its first state: `/readyz` is not ready meanwhile.
    fn ready(&self) -> bool;
    /// Why its part may be missing or stale, one line each; `/readyz` prints them (ready or
    /// not).
    fn reasons(&self) -> Vec<String>;
    /// Its part of `/state`.
    fn state(&self) -> serde_json::Value;
    /// Its metric families (Prometheus text, without `# EOF`).
    fn metrics(&self) -> String;
}

impl Stats {
    /// Counters at zero, showing the checker's count of local probe errors.
    pub fn new(probe_local_errors: Arc<AtomicU64>) -> Stats {
        Stats {
            probe_local_errors,
            ..Stats::default()
        }
    }

    /// Adds a source whose readiness, state and metrics the API shows.
    pub fn with_source(mut self, source: Arc<dyn SourceStatus>) -> Stats {
        self.sources.push(source);
        self
    }

    /// The values as the metrics exposition takes them.
    pub fn sample(&self) -> metrics::ListenerSample {
        metrics::ListenerSample {
            open: self.open.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
            probe_local_errors: self.probe_local_errors.load(Ordering::Relaxed),
        }
    }
}

/// The admin API's routes, calling `control`.
pub fn router(control: Arc<dyn Control>) -> Router {
    router_with(control, Arc::default())
}

/// The admin API's routes, calling `control`; `/metrics` also shows `stats`.
pub fn router_with(control: Arc<dyn Control>, stats: Arc<Stats>) -> Router {
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(get_ready))
        .route("/state", get(get_state))
        .route("/backends/{service}/{backend}", get(get_backend))
        .route("/backends/{service}/{backend}/weight", post(post_weight))
        .route("/backends/{service}/{backend}/state", post(post_state))
        .route(
            "/backends/{service}/{backend}/override",
            delete(del_override),
        )
        .route("/reload", post(post_reload))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(Api { control, stats })
}

/// How long to wait before accepting again after a failed accept (out of descriptors): a
/// tight retry loop would take the runtime's thread and fill the log.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Failed accepts are logged at most this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// After `shutdown`, how long requests in progress may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the admin API on `listener` within `limits` until `shutdown` completes, then lets
/// requests in progress finish (up to 5 s) and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<dyn Control>,
    limits: Limits,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = router_with(control, stats.clone());
    let max = limits
        .max_connections
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut last_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // A permit first, then accept: beyond the limit a client waits in the kernel's backlog,
        // holding no descriptor of ours.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if last_logged.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                    last_logged = Some(Instant::now());
                    tracing::warn!(error = %e, "admin API: accept failed; retrying");
                }
                drop(permit);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let conn = serve_connection(stream, app.clone(), limits, stats.clone(), closed.clone());
        tokio::spawn(async move {
            conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, permits.acquire_many(all)).await;
    Ok(())
}

/// Serves one connection: HTTP/1.1 with keep-alive, the header-read timeout on hyper's timer,
/// the idle timeout on the socket; closes gracefully once `closing` turns true.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    limits: Limits,
    stats: Arc<Stats>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(Idle::new(stream, limits.idle_timeout, stats.clone()));
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { closing.wait_for(|c| *c).await.map(drop) } => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = result {
        // Idle counts its own; hyper's header timeout comes back as this error (or, on a
        // connection that sent nothing at all, as a quiet close it does not tell apart).
        if e.is_timeout() {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(error = %e, "admin API connection ended");
    }
    stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// A socket that fails with `TimedOut` once no byte has moved either way for `timeout` while the
/// server waits on it: a client that stalls mid-body or stops reading its answer lets go of its
/// connection.
struct Idle<S> {
    inner: S,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    stats: Arc<Stats>,
}

impl<S> Idle<S> {
    fn new(inner: S, timeout: Duration, stats: Arc<Stats>) -> Self {
        Idle {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            stats,
        }
    }

    /// Bytes moved: the silence starts again.
    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.timeout;
        self.deadline.as_mut().reset(next);
    }

    /// The wait goes on, unless the silence has lasted too long.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "admin API connection idle too long",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    me.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => me.pending(cx),
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if r.as_ref().is_ok_and(|n| *n > 0) {
                    me.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => me.pending(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        match Pin::new(&mut me.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if r.as_ref().is_ok_and(|n| *n > 0) {
                    me.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => me.pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

type Ctl = State<Arc<dyn Control>>;

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        let status = match e {
            OpError::NoBackend(_) => StatusCode::NOT_FOUND,
            OpError::Invalid(_) => StatusCode::BAD_REQUEST,
            // The request was well formed but the table it leads to cannot be built: the
            // conflict is with the current configuration, and the old table keeps serving.
            OpError::Compile(_) => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Runs a synchronous control-plane call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the control plane call failed: {e}"),
        )
    })
}

/// The backend named by the path: service and `addr:port`, `[v6]:port` or a bare address.
fn backend_key(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<BackendKey, ApiError> {
    let Path((service, backend)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    format!("{service}/{backend}")
        .parse()
        .map_err(ApiError::bad_request)
}

/// Parses a JSON body, whatever its content type (curl -d sends a form type).
fn json_body<T: for<'de> Deserialize<'de>>(body: &Bytes, expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid body: {e}; expected {expected}")))
}

/// What a successful operation answers.
#[derive(Serialize)]
struct Done {
    /// The operation's target (`web/198.18.1.10:8080`), absent for a reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    /// Generation of the table now serving.
    generation: u64,
}

fn done(key: Option<&BackendKey>, generation: u64) -> Json<Done> {
    Json(Done {
        backend: key.map(|k| k.to_string()),
        generation,
    })
}

async fn get_metrics(State(c): Ctl, State(stats): State<Arc<Stats>>) -> Result<Response, ApiError> {
    let listener = stats.sample();
    let text = blocking(move || {
        let l7 = c
            .http()
            .iter()
            .filter_map(|h| h.proxy.as_ref().map(L7Sample::of_handle))
            .collect();
        let mut text = metrics::render_all(&c.observe(), &listener, l7);
        if !stats.sources.is_empty() {
            // The sources' families go before the exposition's end marker.
            let eof = text.rfind("# EOF").unwrap_or(text.len());
            let tail = text.split_off(eof);
            for s in &stats.sources {
                text.push_str(&s.metrics());
            }
            text.push_str(&tail);
        }
        text
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

async fn get_ready(State(c): Ctl, State(stats): State<Arc<Stats>>) -> Result<Response, ApiError> {
    let plane = blocking(move || c.ready()).await?;
    let mut ready = plane;
    let mut why = String::new();
    if !plane {
        why.push_str("dataplane: workers not started\n");
    }
    for s in &stats.sources {
        ready &= s.ready();
        for r in s.reasons() {
            why.push_str(&r);
            why.push('\n');
        }
    }
    Ok(if ready {
        (StatusCode::OK, format!("ready\n{why}")).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready\n{why}")).into_response()
    })
}

/// One backend in `/state`: its status plus its name as the API's paths take it.
#[derive(Serialize)]
struct BackendView<'a> {
    /// `service/backend`.
    name: String,
    /// The path segment: `198.18.1.10:8080`, `[2001:db8::10]:80` or a bare address.
    backend: String,
    #[serde(flatten)]
    status: &'a BackendStatus,
}

impl<'a> BackendView<'a> {
    fn new(status: &'a BackendStatus) -> Self {
        BackendView {
            name: status.key.to_string(),
            backend: metrics::backend_label(&status.key),
            status,
        }
    }
}

#[derive(Serialize)]
struct ServiceView<'a> {
    name: &'a str,
    vip: std::net::IpAddr,
    protocol: &'static str,
    ports: &'a [String],
    failing_open: bool,
    backends: Vec<BackendView<'a>>,
}

impl<'a> ServiceView<'a> {
    fn new(s: &'a ServiceStatus) -> Self {
        ServiceView {
            name: &s.name,
            vip: s.vip,
            protocol: s.protocol,
            ports: &s.ports,
            failing_open: s.failing_open,
            backends: s.backends.iter().map(BackendView::new).collect(),
        }
    }
}

/// One `[[http]]` in `/state`.
#[derive(Serialize)]
struct HttpView<'a> {
    name: &'a str,
    listen: &'a [std::net::SocketAddr],
    tls: bool,
    /// Whether its proxy runs (`lb run` started it).
    serving: bool,
    backends: Vec<BackendView<'a>>,
}

impl<'a> HttpView<'a> {
    fn new(h: &'a HttpStatus) -> Self {
        HttpView {
            name: &h.name,
            listen: &h.listen,
            tls: h.tls,
            serving: h.proxy.is_some(),
            backends: h.backends.iter().map(BackendView::new).collect(),
        }
    }
}

#[derive(Serialize)]
struct WorkerView {
    worker: u16,
    /// Flows in its connection table.
    flows: usize,
    /// Keys those flows take (a nat or fullnat flow takes two).
    keys: usize,
    /// `keys / capacity` (1 is a full table), 0 when the capacity is unknown.
    occupancy: f64,
    /// Generation of the table it uses.
    generation: u64,
}

#[derive(Serialize)]
struct ConntrackView {
    /// Keys per worker.
    capacity: usize,
    workers: Vec<WorkerView>,
}

#[derive(Serialize)]
struct StateView<'a> {
    generation: u64,
    config_path: &'a str,
    ready: bool,
    reload: &'a ReloadStatus,
    health_transitions: u64,
    conntrack: ConntrackView,
    services: Vec<ServiceView<'a>>,
    http: Vec<HttpView<'a>>,
    draining: &'a DrainingStatus,
}

fn state_json(obs: &Observation, http: &[HttpStatus], ready: bool) -> serde_json::Value {
    let capacity = obs.conntrack_capacity;
    let workers = obs
        .workers
        .iter()
        .map(|s| WorkerView {
            worker: s.worker,
            flows: s.flows,
            keys: s.keys,
            // Precision loss is irrelevant for a ratio shown to people.
            occupancy: if capacity == 0 {
                0.0
            } else {
                s.keys as f64 / capacity as f64
            },
            generation: s.generation,
        })
        .collect();
    let view = StateView {
        generation: obs.generation,
        config_path: &obs.config_path,
        ready,
        reload: &obs.reload,
        health_transitions: obs.health_transitions,
        conntrack: ConntrackView { capacity, workers },
        services: obs.services.iter().map(ServiceView::new).collect(),
        http: http.iter().map(HttpView::new).collect(),
        draining: &obs.draining,
    };
    serde_json::to_value(view).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

async fn get_state(
    State(c): Ctl,
    State(stats): State<Arc<Stats>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let v = blocking(move || {
        let ready = c.ready() && stats.sources.iter().all(|s| s.ready());
        let mut v = state_json(&c.observe(), &c.http(), ready);
        if let Some(obj) = v.as_object_mut() {
            for s in &stats.sources {
                let mut sv = s.state();
                if let Some(o) = sv.as_object_mut() {
                    o.insert("ready".into(), s.ready().into());
                    o.insert("reasons".into(), s.reasons().into());
                }
                obj.insert(s.name().into(), sv);
            }
        }
        v
    })
    .await?;
    Ok(Json(v))
}

async fn get_backend(
    State(c): Ctl,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = backend_key(path)?;
    let (obs, http) = blocking(move || (c.observe(), c.http())).await?;
    let status = obs
        .services
        .iter()
        .flat_map(|s| s.backends.iter())
        .chain(http.iter().flat_map(|h| h.backends.iter()))
        .find(|b| b.key == key)
        .ok_or_else(|| ApiError::from(OpError::NoBackend(key.to_string())))?;
    serde_json::to_value(BackendView::new(status))
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

async fn post_weight(
    State(c): Ctl,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Json<Done>, ApiError> {
    let key = backend_key(path)?;
    let WeightBody { weight } = json_body(&body, r#"{"weight": <0 to 4294967295>}"#)?;
    let k = key.clone();
    let generation = blocking(move || c.set_weight(&k, weight)).await??;
    Ok(done(Some(&key), generation))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: String,
}

async fn post_state(
    State(c): Ctl,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Json<Done>, ApiError> {
    let key = backend_key(path)?;
    let StateBody { state } = json_body(&body, r#"{"state": "enabled" | "drain" | "disabled"}"#)?;
    let state: AdminState = state.parse().map_err(ApiError::bad_request)?;
    let k = key.clone();
    let generation = blocking(move || c.set_admin(&k, state)).await??;
    Ok(done(Some(&key), generation))
}

async fn del_override(
    State(c): Ctl,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Done>, ApiError> {
    let key = backend_key(path)?;
    let k = key.clone();
    let generation = blocking(move || c.clear(&k)).await??;
    Ok(done(Some(&key), generation))
}

async fn post_reload(State(c): Ctl) -> Result<Json<Done>, ApiError> {
    let generation = blocking(move || c.reload())
        .await?
        // The config was rejected; the previous table keeps serving.
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    Ok(done(None, generation))
}

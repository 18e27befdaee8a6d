//! The admin HTTP API: metrics, health and readiness probes, state, and runtime operations on
//! backends (HAProxy's runtime API over REST). `docs/ADMIN.md` is the reference.
//!
//! [`Control`] methods are synchronous and may rebuild a routing table, so every call runs on
//! tokio's blocking pool: a slow rebuild never stalls a scrape or a probe.

use std::future::Future;
use std::io;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::metrics;
use crate::control::state::{
    AdminState, BackendKey, BackendStatus, Control, DrainingStatus, Observation, OpError,
    ReloadStatus, ServiceStatus,
};

/// The admin API's routes, calling `control`.
pub fn router(control: Arc<dyn Control>) -> Router {
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
        .with_state(control)
}

/// Serves the admin API on `listener` until `shutdown` completes, then lets requests in progress
/// finish and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<dyn Control>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(control))
        .with_graceful_shutdown(shutdown)
        .await
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

async fn get_metrics(State(c): Ctl) -> Result<Response, ApiError> {
    let text = blocking(move || metrics::render(&c.observe())).await?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

async fn get_ready(State(c): Ctl) -> Result<Response, ApiError> {
    Ok(if blocking(move || c.ready()).await? {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
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

#[derive(Serialize)]
struct WorkerView {
    worker: u16,
    /// Flows in its connection table.
    flows: usize,
    /// `flows / capacity`, 0 when the capacity is unknown.
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
    draining: &'a DrainingStatus,
}

fn state_json(obs: &Observation, ready: bool) -> serde_json::Value {
    let capacity = obs.conntrack_capacity;
    let workers = obs
        .workers
        .iter()
        .map(|s| WorkerView {
            worker: s.worker,
            flows: s.flows,
            // Precision loss is irrelevant for a ratio shown to people.
            occupancy: if capacity == 0 {
                0.0
            } else {
                s.flows as f64 / capacity as f64
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
        draining: &obs.draining,
    };
    serde_json::to_value(view).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

async fn get_state(State(c): Ctl) -> Result<Json<serde_json::Value>, ApiError> {
    let v = blocking(move || {
        let ready = c.ready();
        state_json(&c.observe(), ready)
    })
    .await?;
    Ok(Json(v))
}

async fn get_backend(
    State(c): Ctl,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = backend_key(path)?;
    let obs = blocking(move || c.observe()).await?;
    let status = obs
        .services
        .iter()
        .flat_map(|s| s.backends.iter())
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

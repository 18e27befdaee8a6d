//! The HTTP side: URL routing, the verbs, chunked watch streams, and the listener that
//! restarts and outages close.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ApiError, Change, Filter, Part, PatchKind, ResourceType, Store};

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// "GET", "PUT", ...
    pub method: String,
    /// The URL path, e.g. "/api/v1/namespaces/default/services/web/status".
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// `fieldManager` query parameter when given, else the User-Agent header.
    pub agent: String,
    /// The answer's HTTP status (0: never answered, the server was unresponsive).
    pub status: u16,
}

impl RequestRecord {
    /// Whether this was a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        truthy(&parse_query(&self.query), "watch")
    }
}

/// State shared by the server tasks and the test controls.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The store's resourceVersion after each write; watches wait on it.
    changed: watch::Sender<u64>,
    pub requests: Mutex<Vec<RequestRecord>>,
    pub active_watches: AtomicUsize,
    pub watches_started: AtomicU64,
    /// Watches answered with 410 Expired.
    pub watches_expired: AtomicU64,
    pub bookmark_interval_ms: AtomicU64,
    /// Delay before every answer, in milliseconds.
    pub latency_ms: AtomicU64,
    /// Bumped to drop every open connection (restart, outage).
    pub epoch: watch::Sender<u64>,
    /// Whether the listener should be open.
    pub available: watch::Sender<bool>,
    /// Whether the listener is open now.
    pub listening: AtomicBool,
    pub unreachable: AtomicBool,
    /// Requests are read but never answered while set.
    pub unresponsive: watch::Sender<bool>,
    pub down_until: Mutex<Option<Instant>>,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            store: Mutex::new(Store::new()),
            changed: watch::Sender::new(0),
            requests: Mutex::new(Vec::new()),
            active_watches: AtomicUsize::new(0),
            watches_started: AtomicU64::new(0),
            watches_expired: AtomicU64::new(0),
            bookmark_interval_ms: AtomicU64::new(1000),
            latency_ms: AtomicU64::new(0),
            epoch: watch::Sender::new(0),
            available: watch::Sender::new(true),
            listening: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
            unresponsive: watch::Sender::new(false),
            down_until: Mutex::new(None),
        }
    }

    /// Reads the store.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&lock(&self.store))
    }

    /// Writes the store and wakes the watches.
    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (r, rv) = {
            let mut store = lock(&self.store);
            let r = f(&mut store);
            (r, store.rv)
        };
        self.changed.send_replace(rv);
        r
    }
}

/// A response body: a whole JSON document, or the chunks of a watch.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::Full(Some(Bytes::from(v.to_string()))));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn truthy(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

/// A request's target: the resource type, namespace, name and subresource.
struct Target {
    ty: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

fn parse_target(shared: &Shared, path: &str) -> Result<Target, ApiError> {
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found(path)),
    };
    let find = |plural: &str| shared.read(|s| s.find_type(group, version, plural));
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, ..] if find(plural).is_some() => {
            (Some((*ns).to_owned()), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => return Err(not_found(path)),
    };
    let ty = find(plural).ok_or_else(|| not_found(path))?;
    if sub.is_some_and(|s| s != "status") || (sub.is_some() && !ty.has_status) {
        return Err(not_found(path));
    }
    if !ty.namespaced && namespace.is_some() {
        return Err(not_found(path));
    }
    if name.is_some_and(str::is_empty) {
        return Err(not_found(path));
    }
    Ok(Target {
        ty,
        namespace,
        name: name.map(str::to_owned),
        status: sub.is_some(),
    })
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or("").to_owned();
    let query = parse_query(&raw_query);
    let agent = query.get("fieldManager").cloned().unwrap_or_else(|| {
        req.headers()
            .get(hyper::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    });
    let mut record = RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: raw_query,
        agent,
        status: 0,
    };
    if !*shared.available.borrow() {
        // Down or unreachable: a connection accepted in the moment the outage began (after
        // the connections were dropped, before the listener closed) must not carry requests
        // through it. Breaking it reads as a refused or reset connection to the client.
        return Err(std::io::Error::other(
            "the server is down; dropping the connection",
        ));
    }
    let mut black_hole = shared.unresponsive.subscribe();
    if *black_hole.borrow_and_update() {
        // A black hole: no answer while it lasts; then the connection breaks (the request
        // is never carried out: no late write lands after the client gave up).
        lock(&shared.requests).push(record.clone());
        let _ = black_hole.wait_for(|on| !*on).await;
        return Err(std::io::Error::other(
            "the black hole ended; dropping the connection",
        ));
    }
    let latency = shared.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let resp = match req.into_body().collect().await {
        Ok(body) => route(
            &shared,
            &method,
            &path,
            &query,
            &content_type,
            &body.to_bytes(),
        )
        .unwrap_or_else(|e| error_response(&e)),
        Err(e) => error_response(&ApiError::bad_request(format!("reading the body: {e}"))),
    };
    record.status = resp.status().as_u16();
    lock(&shared.requests).push(record);
    Ok(resp)
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    if path == "/version" {
        return Ok(json_response(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kubefake", "platform": "linux/amd64"}),
        ));
    }
    if let Some(doc) = discovery(shared, path) {
        return doc.map(|d| json_response(200, &d));
    }
    let t = parse_target(shared, path)?;
    let ns = t.namespace.as_deref().unwrap_or("");
    let part = if t.status { Part::Status } else { Part::Main };
    let needs_ns = t.ty.namespaced && t.namespace.is_none();
    match (method, &t.name) {
        (&Method::GET, None) => {
            let filter = Filter {
                namespace: t.namespace.clone(),
                labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
                    .map_err(ApiError::bad_request)?,
                fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
                    .map_err(ApiError::bad_request)?,
            };
            if truthy(query, "watch") {
                return start_watch(shared, t.ty, filter, query);
            }
            let limit = match query.get("limit") {
                Some(l) => Some(
                    l.parse::<usize>()
                        .map_err(|_| ApiError::bad_request("invalid limit"))?,
                ),
                None => None,
            };
            let cont = query.get("continue").map(String::as_str);
            let exact = match (
                query.get("resourceVersionMatch"),
                query.get("resourceVersion"),
            ) {
                (Some(m), Some(rv)) if m == "Exact" => Some(rv.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
                _ => None,
            };
            let list = shared.read(|s| s.list(&t.ty, &filter, limit, cont, exact))?;
            Ok(json_response(200, &list))
        }
        (&Method::GET, Some(name)) if !needs_ns => {
            let obj = shared.read(|s| s.get(&t.ty, ns, name))?;
            Ok(json_response(200, &obj))
        }
        (&Method::POST, None) if !needs_ns && !t.status => {
            let obj = parse_body(body)?;
            let created = shared.write(|s| s.create(&t.ty, ns, obj, Part::Main))?;
            Ok(json_response(201, &created))
        }
        (&Method::PUT, Some(name)) if !needs_ns => {
            let obj = parse_body(body)?;
            let replaced = shared.write(|s| s.replace(&t.ty, ns, name, obj, part))?;
            Ok(json_response(200, &replaced))
        }
        (&Method::PATCH, Some(name)) if !needs_ns => {
            let kind = match content_type.split(';').next().unwrap_or("").trim() {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    PatchKind::Merge
                }
                "application/apply-patch+yaml" => PatchKind::Apply,
                "application/json-patch+json" => PatchKind::Json,
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the fake API server does not take {other:?} patches"),
                    ))
                }
            };
            let patch = parse_body(body)?;
            let existed = shared.read(|s| s.get(&t.ty, ns, name).is_ok());
            let patched = shared.write(|s| s.patch(&t.ty, ns, name, kind, &patch, part))?;
            Ok(json_response(if existed { 200 } else { 201 }, &patched))
        }
        (&Method::DELETE, Some(name)) if !needs_ns && !t.status => {
            let opts: Value = if body.is_empty() {
                json!({})
            } else {
                parse_body(body)?
            };
            let precondition = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str);
            let gone = shared.write(|s| s.delete(&t.ty, ns, name, precondition))?;
            Ok(json_response(200, &gone))
        }
        (&Method::DELETE, None) if !t.status => {
            // deletecollection: every selected object, answered as a list of them.
            let filter = Filter {
                namespace: t.namespace.clone(),
                labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
                    .map_err(ApiError::bad_request)?,
                fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
                    .map_err(ApiError::bad_request)?,
            };
            let gone = shared.write(|s| {
                let doomed = s.current(&t.ty, &filter);
                doomed
                    .iter()
                    .filter_map(|o| {
                        let ns = o
                            .pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        let name = o.pointer("/metadata/name").and_then(Value::as_str)?;
                        s.delete(&t.ty, ns, name, None).ok()
                    })
                    .collect::<Vec<_>>()
            });
            let rv = shared.read(|s| s.rv);
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", t.ty.kind), "apiVersion": t.ty.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()}, "items": gone}),
            ))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )),
    }
}

/// The discovery documents (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`) for the
/// types served; None for any other path.
fn discovery(shared: &Shared, path: &str) -> Option<Result<Value, ApiError>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let types = shared.read(|s| s.types().to_vec());
    let resources = |group: &str, version: &str| {
        let mut list = Vec::new();
        for t in types
            .iter()
            .filter(|t| t.group == group && t.version == version)
        {
            let verbs = [
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ];
            list.push(
                json!({"name": t.plural, "singularName": t.kind.to_lowercase(),
                             "namespaced": t.namespaced, "kind": t.kind, "verbs": verbs}),
            );
            if t.has_status {
                list.push(
                    json!({"name": format!("{}/status", t.plural), "singularName": "",
                                 "namespaced": t.namespaced, "kind": t.kind,
                                 "verbs": ["get", "patch", "update"]}),
                );
            }
        }
        if list.is_empty() {
            return Err(not_found(path));
        }
        let group_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        Ok(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                  "resources": list}),
        )
    };
    Some(match segs.as_slice() {
        ["api"] => Ok(json!({"kind": "APIVersions", "versions": ["v1"],
                             "serverAddressByClientCIDRs": []})),
        ["apis"] => {
            let mut groups: Vec<(String, Vec<String>)> = Vec::new();
            for t in types.iter().filter(|t| !t.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| *g == t.group) {
                    Some((_, versions)) if !versions.contains(&t.version) => {
                        versions.push(t.version.clone())
                    }
                    Some(_) => {}
                    None => groups.push((t.group.clone(), vec![t.version.clone()])),
                }
            }
            let groups: Vec<Value> = groups
                .iter()
                .map(|(g, versions)| {
                    let vs: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    json!({"name": g, "versions": vs, "preferredVersion": vs[0]})
                })
                .collect();
            Ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["api", version] => resources("", version),
        ["apis", group, version] => resources(group, version),
        _ => return None,
    })
}

/// Keeps the count of active watches right however a watch task ends.
struct WatchGuard(Arc<Shared>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.active_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": obj}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark_line(ty: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": ty.kind, "apiVersion": ty.api_version(), "metadata": meta}),
    )
}

/// A change as the watch with this filter sees it: an object that starts matching is ADDED,
/// one that stops matching is DELETED.
fn render_change(c: &Change, filter: &Filter) -> Option<Bytes> {
    let before = c.before.as_ref().filter(|b| filter.matches(b));
    let after = c.after.as_ref().filter(|a| filter.matches(a));
    match (before, after) {
        (None, Some(a)) => Some(event_line("ADDED", a)),
        (Some(_), Some(a)) => Some(event_line("MODIFIED", a)),
        (Some(b), None) => Some(match &c.after {
            // Still there, but no longer selected.
            Some(a) => event_line("DELETED", a),
            None => {
                let mut gone = (**b).clone();
                gone["metadata"]["resourceVersion"] = c.rv.to_string().into();
                event_line("DELETED", &gone)
            }
        }),
        (None, None) => None,
    }
}

fn start_watch(
    shared: &Arc<Shared>,
    ty: ResourceType,
    filter: Filter,
    query: &HashMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let bookmarks = truthy(query, "allowWatchBookmarks");
    let initial_end = truthy(query, "sendInitialEvents");
    // 0 or absent: no timeout (kube-apiserver picks a long one).
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => {
            let secs: u64 = t
                .parse()
                .map_err(|_| ApiError::bad_request("invalid timeoutSeconds"))?;
            (secs > 0).then(|| Duration::from_secs(secs))
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut epoch = shared.epoch.subscribe();
    let mut changed = shared.changed.subscribe();
    shared.active_watches.fetch_add(1, Ordering::SeqCst);
    shared.watches_started.fetch_add(1, Ordering::SeqCst);
    let guard = WatchGuard(shared.clone());
    let shared = shared.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let every =
            Duration::from_millis(shared.bookmark_interval_ms.load(Ordering::SeqCst).max(1));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // Every change up to `last` has been sent (or was before the start).
        let mut last = 0;
        let mut lines = Vec::new();
        match since {
            None => shared.read(|s| {
                lines.extend(
                    s.current(&ty, &filter)
                        .iter()
                        .map(|o| event_line("ADDED", o)),
                );
                last = s.rv;
                if initial_end {
                    lines.push(bookmark_line(&ty, last, true));
                }
            }),
            Some(rv) => last = rv,
        }
        loop {
            let mut ended = false;
            shared.read(|s| match s.changes_since(&ty, last) {
                Ok(changes) => {
                    lines.extend(changes.iter().filter_map(|c| render_change(c, &filter)));
                    last = last.max(s.rv);
                }
                Err(e) => {
                    shared.watches_expired.fetch_add(1, Ordering::SeqCst);
                    lines.push(event_line("ERROR", &e.status()));
                    ended = true;
                }
            });
            for line in lines.drain(..) {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            if ended {
                return;
            }
            loop {
                tokio::select! {
                    r = changed.changed() => {
                        if r.is_err() {
                            return;
                        }
                        break;
                    }
                    _ = ticks.tick(), if bookmarks => {
                        if tx.send(bookmark_line(&ty, last, false)).await.is_err() {
                            return;
                        }
                    }
                    _ = async {
                        match deadline {
                            Some(d) => tokio::time::sleep_until(d).await,
                            None => std::future::pending().await,
                        }
                    } => return,
                    _ = tx.closed() => return,
                    _ = epoch.changed() => return,
                }
            }
        }
    });
    let mut r = Response::new(Body::Stream(rx));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// Binds the listener (again, after a restart, on the same port).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn serve_connection(shared: &Arc<Shared>, stream: TcpStream) {
    let mut epoch = shared.epoch.subscribe();
    let shared = shared.clone();
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
        tokio::select! {
            _ = conn => {}
            // Restart or outage: drop the connection (and with it any watch on it).
            _ = epoch.changed() => {}
        }
    });
}

/// Accepts connections while the server is available; closes the listener (connections are
/// refused) while it is not.
pub(crate) async fn serve(shared: Arc<Shared>, first: TcpListener, addr: SocketAddr) {
    let mut available = shared.available.subscribe();
    let mut listener = Some(first);
    shared.listening.store(true, Ordering::SeqCst);
    loop {
        match &listener {
            Some(l) => {
                tokio::select! {
                    r = l.accept() => {
                        if let Ok((stream, _)) = r {
                            serve_connection(&shared, stream);
                        }
                    }
                    r = available.changed() => {
                        if r.is_err() {
                            return;
                        }
                        if !*available.borrow_and_update() {
                            listener = None;
                            shared.listening.store(false, Ordering::SeqCst);
                        }
                    }
                }
            }
            None => {
                if *available.borrow_and_update() {
                    match bind(addr) {
                        Ok(l) => {
                            listener = Some(l);
                            shared.listening.store(true, Ordering::SeqCst);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                    continue;
                }
                if available.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query("&watch=true&labelSelector=app%3Dweb%2Ctier+in+%28a%2Cb%29&x");
        assert_eq!(q.get("watch").map(String::as_str), Some("true"));
        assert_eq!(
            q.get("labelSelector").map(String::as_str),
            Some("app=web,tier in (a,b)")
        );
        assert_eq!(q.get("x").map(String::as_str), Some(""));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}

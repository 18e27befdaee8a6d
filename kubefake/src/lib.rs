//! An in-process fake Kubernetes API server for tests: list and watch the way kube-apiserver
//! does them (resourceVersion, chunked watch events, bookmarks, 410 Gone), label and field
//! selectors, status subresources, Events and Leases with optimistic concurrency (409).
//!
//! The server runs on its own tokio runtime (its own threads), bound to 127.0.0.1, plain HTTP,
//! no authentication. kube's `Client` and `kube_runtime::watcher` work against it unchanged.
//! The test controls ([`FakeApiServer::apply`], [`FakeApiServer::restart`], ...) are plain
//! synchronous calls usable from `#[test]` and from async tests alike.
//!
//! What it serves: the core and group URL forms (`/api/v1/namespaces/{ns}/{plural}/{name}/status`,
//! `/apis/{group}/{version}/{plural}` across namespaces, ...) for Services, Secrets, ConfigMaps,
//! Events (core and events.k8s.io), Namespaces, Pods, Endpoints, EndpointSlices, Ingresses,
//! IngressClasses, Leases and the Gateway API kinds ([`FakeApiServer::register`] adds more);
//! GET, LIST (`limit`/`continue`, `labelSelector`, `fieldSelector`, `resourceVersionMatch=Exact`),
//! WATCH (replay from a resourceVersion, bookmarks, `sendInitialEvents`, `timeoutSeconds`, 410),
//! POST, PUT, PATCH (merge, strategic as merge, apply as merge, JSON patch), DELETE and
//! deletecollection; discovery (`/api`, `/apis`). Apply patches must be JSON (kube sends JSON).
//!
//! Test controls: [`FakeApiServer::apply`] / [`FakeApiServer::apply_status`] /
//! [`FakeApiServer::delete`] / [`FakeApiServer::get`] (no HTTP, not in the request log),
//! [`FakeApiServer::compact`] (410 for older resourceVersions), [`FakeApiServer::restart`],
//! [`FakeApiServer::set_unreachable`] (refused), [`FakeApiServer::set_unresponsive`] (black
//! hole), [`FakeApiServer::set_latency`], [`FakeApiServer::requests`] /
//! [`FakeApiServer::request_log`], [`FakeApiServer::active_watches`].
//!
//! ```no_run
//! # async fn demo() {
//! use k8s_openapi::api::core::v1::Service;
//! let fake = kubefake::FakeApiServer::start();
//! let mut svc = Service::default();
//! svc.metadata.name = Some("web".into());
//! svc.metadata.namespace = Some("default".into());
//! fake.apply(&svc);
//! let api: kube::Api<Service> = kube::Api::namespaced(fake.client(), "default");
//! assert!(api.get("web").await.is_ok());
//! # }
//! ```

#![forbid(unsafe_code)]

mod selector;
mod server;
mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use server::RequestRecord;
use server::{lock, Shared};
use store::Part;
pub use store::{ApiError, ResourceType};

/// How long the sync controls wait for the listener to follow a change (never reached in
/// practice: it is one task wake-up).
const CONTROL_WAIT: Duration = Duration::from_secs(5);

/// A fake API server on 127.0.0.1 with its own runtime; stopped when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeApiServer {
    /// Starts a server on 127.0.0.1 (an ephemeral port). Panics if the runtime or the socket
    /// cannot be made (a broken test machine).
    pub fn start() -> Self {
        let shared = Arc::new(Shared::new());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kubefake".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("kubefake-worker")
                    .enable_all()
                    .build()
                    .expect("kubefake: building its tokio runtime");
                let started = rt.block_on(async {
                    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
                    let addr = listener.local_addr()?;
                    tokio::spawn(server::serve(thread_shared, listener, addr));
                    Ok::<_, std::io::Error>(addr)
                });
                let ok = started.is_ok();
                let _ = ready_tx.send(started.map(|a| (a, rt.handle().clone())));
                if ok {
                    let _ = rt.block_on(stop_rx);
                }
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("kubefake: spawning its thread");
        let (addr, handle) = ready_rx
            .recv()
            .expect("kubefake: the server thread died while starting")
            .expect("kubefake: binding 127.0.0.1:0");
        Self {
            shared,
            handle,
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The server's address (127.0.0.1 and its port; the port survives restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube `Config` for this server (no auth, default namespace "default").
    pub fn config(&self) -> kube::Config {
        let uri = self.url().parse().expect("kubefake: its own URL parses");
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".into();
        config
    }

    /// A kube `Client` for this server. Call it inside a tokio runtime (the client's
    /// connection pool runs on the caller's runtime).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("kubefake: building a kube client")
    }

    /// Writes a kubeconfig pointing at this server (for `lb run` in another process).
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubefake\n  cluster:\n    server: {}\n\
             users:\n- name: kubefake\n  user: {{}}\ncontexts:\n- name: kubefake\n  context:\n    \
             cluster: kubefake\n    user: kubefake\n    namespace: default\n\
             current-context: kubefake\n",
            self.url()
        );
        std::fs::write(path, text)
    }

    /// Serves another resource type (a CRD of our own, say).
    pub fn register(&self, ty: ResourceType) {
        self.shared.write(|s| s.register(ty));
    }

    /// Stops serving a type, as if its CRD were not installed: its URLs answer 404 and
    /// discovery no longer lists it (objects stored for it are kept).
    pub fn unregister(&self, group: &str, version: &str, plural: &str) {
        self.shared.write(|s| s.unregister(group, version, plural));
    }

    fn type_of<K: Resource<DynamicType = ()>>(&self, namespaced_hint: bool) -> ResourceType {
        let (g, v, p) = (K::group(&()), K::version(&()), K::plural(&()));
        if let Some(t) = self.shared.read(|s| s.find_type(&g, &v, &p)) {
            return t;
        }
        let ty = ResourceType::new(&g, &v, &p, &K::kind(&()), namespaced_hint, true);
        self.register(ty.clone());
        ty
    }

    fn to_json<K: Serialize>(obj: &K) -> Result<Value, ApiError> {
        let mut v = serde_json::to_value(obj)
            .map_err(|e| ApiError::bad_request(format!("serializing the object: {e}")))?;
        // A user's apply is unconditional.
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        Ok(v)
    }

    /// Creates or replaces an object as a user would (`kubectl apply`): `.status` is not
    /// written for types with a status subresource (see [`Self::apply_status`]); watches see
    /// ADDED or MODIFIED (nothing if the object did not change). Namespace defaults to
    /// "default". Returns the stored object.
    pub fn try_apply<K: Resource<DynamicType = ()> + Serialize>(
        &self,
        obj: &K,
    ) -> Result<Value, ApiError> {
        let meta = obj.meta();
        let ty = self.type_of::<K>(meta.namespace.is_some());
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let v = Self::to_json(obj)?;
        self.shared.write(|s| {
            if !name.is_empty() && s.get(&ty, &ns, &name).is_ok() {
                s.replace(&ty, &ns, &name, v, Part::Main)
            } else {
                s.create(&ty, &ns, v, Part::Main)
            }
        })
    }

    /// [`Self::try_apply`], panicking on a refusal (a bug in the test).
    pub fn apply<K: Resource<DynamicType = ()> + Serialize>(&self, obj: &K) -> Value {
        self.try_apply(obj)
            .unwrap_or_else(|e| panic!("kubefake: apply refused: {e}"))
    }

    /// Replaces the `.status` of an existing object (as its controller would).
    pub fn apply_status<K: Resource<DynamicType = ()> + Serialize>(&self, obj: &K) -> Value {
        let meta = obj.meta();
        let ty = self.type_of::<K>(meta.namespace.is_some());
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let result = Self::to_json(obj).and_then(|v| {
            let part = if ty.has_status {
                Part::Status
            } else {
                Part::All
            };
            self.shared.write(|s| s.replace(&ty, &ns, &name, v, part))
        });
        result.unwrap_or_else(|e| panic!("kubefake: status write refused: {e}"))
    }

    /// Deletes an object (`ns` is ignored for cluster-scoped types); false if it was absent.
    pub fn delete<K: Resource<DynamicType = ()>>(&self, ns: &str, name: &str) -> bool {
        let ty = self.type_of::<K>(!ns.is_empty());
        self.shared.write(|s| s.delete(&ty, ns, name, None)).is_ok()
    }

    /// The stored object as JSON (`ns` is ignored for cluster-scoped types).
    pub fn get_json<K: Resource<DynamicType = ()>>(&self, ns: &str, name: &str) -> Option<Value> {
        let ty = self.type_of::<K>(!ns.is_empty());
        self.shared.read(|s| s.get(&ty, ns, name).ok())
    }

    /// The stored object, typed (None if absent or if it does not deserialize as `K`).
    pub fn get<K: Resource<DynamicType = ()> + DeserializeOwned>(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<K> {
        self.get_json::<K>(ns, name)
            .and_then(|v| serde_json::from_value(v).ok())
    }

    /// Every stored object of a type (in `ns`, or in all namespaces when None).
    pub fn list_json<K: Resource<DynamicType = ()>>(&self, ns: Option<&str>) -> Vec<Value> {
        let ty = self.type_of::<K>(ns.is_some());
        let filter = store::Filter {
            namespace: ns.map(str::to_owned),
            ..Default::default()
        };
        self.shared.read(|s| s.current(&ty, &filter))
    }

    /// The last resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(|s| s.rv)
    }

    /// Drops the change history: a watch or a continue token from any resourceVersion before
    /// now gets 410 Expired (kube_runtime's watcher then relists). Open watches that are
    /// behind end with the same error.
    pub fn compact(&self) {
        self.shared.write(|s| s.compact());
    }

    /// How many changes the history keeps (default 10,000); older ones are compacted away.
    pub fn set_history_limit(&self, changes: usize) {
        self.shared.write(|s| s.set_history_limit(changes));
    }

    /// The period of BOOKMARK events on watches that allow them (default 1 s); applies to
    /// watches started afterwards.
    pub fn set_bookmark_interval(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.shared.bookmark_interval_ms.store(ms, Ordering::SeqCst);
    }

    fn wait_listening(&self, want: bool) {
        let until = Instant::now() + CONTROL_WAIT;
        while self.shared.listening.load(Ordering::SeqCst) != want && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn drop_connections(&self) {
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// Like an apiserver restart: closes every connection (watches end), refuses connections
    /// for `down`, then serves again on the same port with the same objects. Returns once the
    /// server is down.
    pub fn restart(&self, down: Duration) {
        *lock(&self.shared.down_until) = Some(Instant::now() + down);
        self.shared.available.send_replace(false);
        self.drop_connections();
        self.wait_listening(false);
        let shared = self.shared.clone();
        self.handle.spawn(async move {
            tokio::time::sleep(down).await;
            if !shared.unreachable.load(Ordering::SeqCst) {
                shared.available.send_replace(true);
            }
        });
    }

    /// While true, every connection is closed and new ones are refused (the server is gone);
    /// false serves again. Returns once the listener follows.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.shared.unreachable.store(unreachable, Ordering::SeqCst);
        if unreachable {
            self.shared.available.send_replace(false);
            self.drop_connections();
            self.wait_listening(false);
        } else {
            let down_until = *lock(&self.shared.down_until);
            if down_until.is_none_or(|t| Instant::now() >= t) {
                self.shared.available.send_replace(true);
                self.wait_listening(true);
            }
        }
    }

    /// While true, requests are accepted but never answered (a network black hole: clients
    /// see timeouts, not errors). When it ends, the connections of the hung requests break
    /// (their requests are never carried out); other connections are untouched.
    pub fn set_unresponsive(&self, unresponsive: bool) {
        self.shared.unresponsive.send_replace(unresponsive);
    }

    /// Delays every answer by `latency` (requests in flight overlap: races become certain).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.shared.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Every request so far: (method, path, `fieldManager` query parameter or else the
    /// User-Agent). Test controls are not requests.
    pub fn requests(&self) -> Vec<(String, String, String)> {
        lock(&self.shared.requests)
            .iter()
            .map(|r| (r.method.clone(), r.path.clone(), r.agent.clone()))
            .collect()
    }

    /// Every request so far with its query string and answer status, in the order answered.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Watches open now.
    pub fn active_watches(&self) -> usize {
        self.shared.active_watches.load(Ordering::SeqCst)
    }

    /// Watches started since the server started (a relisting client starts new ones).
    pub fn watches_started(&self) -> u64 {
        self.shared.watches_started.load(Ordering::SeqCst)
    }

    /// Watches answered with 410 Expired (their resourceVersion was compacted away).
    pub fn watches_expired(&self) -> u64 {
        self.shared.watches_expired.load(Ordering::SeqCst)
    }

    /// Waits (blocking, up to `timeout`) until at least `n` watches are open.
    pub fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if self.active_watches() >= n {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_server_handle_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::FakeApiServer>();
    }
}

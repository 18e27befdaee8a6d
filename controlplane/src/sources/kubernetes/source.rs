//! The running source: one watcher per kind (and per namespace when `namespaces` lists some)
//! on the control plane's tokio runtime, a [`Snapshot`] of what they saw, batching, and the
//! apply step (translate, certificates to disk, [`ControlPlane::set_cluster`]).
//!
//! - A relist (first list, 410 Gone, a restarted API server) is buffered by its watcher and
//!   replaces that kind's objects at once, when complete: the tables are never cleared while it
//!   runs.
//! - After the first change, more are gathered for `batch` before one apply. A change that only
//!   removes endpoints (or turns them not ready), or deletes an object, is applied at once,
//!   taking the gathered changes with it: removals never wait behind additions.
//! - Nothing is applied before every watcher has listed once. Then the plane is ready
//!   ([`SyncState::ready`]) and stays so while the API server is away: the last tables keep
//!   serving and [`SyncState::reasons`] says why they may be stale.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::leader::{default_identity, LeaderConfig, LeaderElector};
use super::model::{Gateway, GatewayClass, HTTPRoute, ObjectKey, Snapshot};
use super::translate::{self, patch, service_of, Kind, PemFile, Settings, Translated};
use crate::config::Kubernetes;
use crate::control::{ClusterPart, ControlPlane};

/// First wait after a failed list or watch; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait between retries of a failing watch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long a failed connection setup (kubeconfig, client) waits before trying again.
const CLIENT_RETRY: Duration = Duration::from_secs(2);

/// The settings `translate` takes, from `[kubernetes]`.
pub fn settings(k: &Kubernetes) -> Settings {
    Settings {
        ingress_controller: k.ingress_controller.clone(),
        gateway_controller: k.gateway_controller.clone(),
        ingress_http: k.ingress_http.clone(),
        ingress_https: k.ingress_https.clone(),
        gateway_addresses: k.gateway_addresses.clone(),
        vip_pool: k.vip_pool.clone(),
        load_balancer_class: k.load_balancer_class.clone(),
        default_load_balancer: k.default_load_balancer,
        secrets_dir: k.secrets_dir.clone(),
    }
}

/// The client `[kubernetes]` asks for: its `kubeconfig`, else the pod's service account, else
/// the usual kubeconfig lookup.
pub async fn client(k: &Kubernetes) -> Result<Client, String> {
    let config = match &k.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => match kube::Config::incluster() {
            Ok(c) => c,
            Err(_) => kube::Config::infer()
                .await
                .map_err(|e| format!("no kubeconfig and not in a cluster: {e}"))?,
        },
    };
    Client::try_from(config).map_err(|e| format!("building the API client: {e}"))
}

/// The name of a kind in logs, `/state` and metrics labels.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::IngressClass => "IngressClass",
        Kind::Ingress => "Ingress",
        Kind::Service => "Service",
        Kind::EndpointSlice => "EndpointSlice",
        Kind::Secret => "Secret",
        Kind::GatewayClass => "GatewayClass",
        Kind::Gateway => "Gateway",
        Kind::HttpRoute => "HTTPRoute",
        Kind::Namespace => "Namespace",
    }
}

/// One watched object (moved once from its watcher into the snapshot: its size does not matter).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
enum Obj {
    IngressClass(IngressClass),
    Ingress(Ingress),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Secret(Secret),
    GatewayClass(GatewayClass),
    Gateway(Gateway),
    HttpRoute(HTTPRoute),
    Namespace(Namespace),
}

/// What a watcher tells the source.
#[derive(Debug)]
enum Msg {
    /// Added or changed.
    Apply(Obj),
    /// Deleted.
    Delete(Obj),
    /// A complete (re)list of `kind` in `namespace` (`None`: all namespaces).
    Relist {
        kind: Kind,
        namespace: Option<String>,
        objects: Vec<Obj>,
    },
    /// The list or watch failed; the watcher retries.
    Failed { watch: String, error: String },
    /// The watch works again.
    Recovered { watch: String },
    /// The kind is not served by the API server (a Gateway API CRD not installed).
    Disabled { kind: Kind, why: String },
}

/// A watch that fails, since when.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// RFC 3339 time of the first failure of this run of failures.
    pub since: String,
    /// The last error.
    pub error: String,
}

/// What the source has done, for `/readyz`, `/state` and `/metrics`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SyncView {
    /// A cluster state was applied once: the plane serves the cluster.
    pub synced: bool,
    /// Watches that have not listed yet (before the first sync).
    pub waiting_for: Vec<String>,
    /// Watches failing now.
    pub failing: BTreeMap<String, Failure>,
    /// Kinds not watched, and why (a missing CRD).
    pub disabled: BTreeMap<String, String>,
    /// Events received, by kind.
    pub events: BTreeMap<String, u64>,
    /// Applies of the cluster state that changed the tables.
    pub applies_ok: u64,
    /// Applies rejected (the previous tables kept serving).
    pub applies_rejected: u64,
    /// Applies that changed nothing (the same desired state).
    pub applies_unchanged: u64,
    /// Of the applies that changed the tables, those that only moved endpoints of existing
    /// entries (patched in place instead of a whole translation).
    pub applies_patched: u64,
    /// The last rejection, until an apply succeeds.
    pub last_error: Option<String>,
    /// Objects (or parts) skipped in the last translation.
    pub problems: usize,
    /// Seconds from the first change of the last apply to its table being published.
    pub last_sync_seconds: Option<f64>,
    /// Sum and count of those, for the `lb_kubernetes_sync_seconds` summary.
    pub sync_seconds_sum: f64,
    /// Count of measured applies.
    pub sync_seconds_count: u64,
    /// This replica writes status and Events.
    pub leader: bool,
}

/// The source's shared state: written by the source, read by the admin API.
#[derive(Debug, Default)]
pub struct SyncState {
    inner: Mutex<SyncView>,
}

impl SyncState {
    fn lock(&self) -> MutexGuard<'_, SyncView> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the state.
    pub fn view(&self) -> SyncView {
        self.lock().clone()
    }

    /// True once a cluster state was applied (and from then on, API server or not).
    pub fn ready(&self) -> bool {
        self.lock().synced
    }

    /// Why the cluster's part may be missing or stale, one line each (none: all is well).
    pub fn reasons(&self) -> Vec<String> {
        let v = self.lock();
        let mut out = Vec::new();
        if !v.synced {
            if v.waiting_for.is_empty() && v.failing.is_empty() {
                out.push("kubernetes: not synced yet".to_string());
            } else if !v.waiting_for.is_empty() {
                out.push(format!(
                    "kubernetes: not synced yet: waiting for the first list of {}",
                    v.waiting_for.join(", ")
                ));
            }
        }
        for (w, f) in &v.failing {
            out.push(format!(
                "kubernetes: watch of {w} failing since {}: {}",
                f.since, f.error
            ));
        }
        if let Some(e) = &v.last_error {
            out.push(format!(
                "kubernetes: the last cluster change was rejected: {e}"
            ));
        }
        out
    }

    /// The `lb_kubernetes_*` families in Prometheus text format (no `# EOF`).
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let v = self.lock();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP lb_kubernetes_events_total Watch events received from the API server, by kind."
        );
        let _ = writeln!(s, "# TYPE lb_kubernetes_events_total counter");
        for (kind, n) in &v.events {
            let _ = writeln!(s, "lb_kubernetes_events_total{{kind=\"{kind}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP lb_kubernetes_applies_total Applies of the cluster state by result: ok changed the tables, unchanged found nothing to change, rejected kept the previous tables."
        );
        let _ = writeln!(s, "# TYPE lb_kubernetes_applies_total counter");
        for (r, n) in [
            ("ok", v.applies_ok),
            ("unchanged", v.applies_unchanged),
            ("rejected", v.applies_rejected),
        ] {
            let _ = writeln!(s, "lb_kubernetes_applies_total{{result=\"{r}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP lb_kubernetes_applies_patched_total Applies that only moved endpoints of existing entries, patched in place (counted in applies_total ok too)."
        );
        let _ = writeln!(s, "# TYPE lb_kubernetes_applies_patched_total counter");
        let _ = writeln!(
            s,
            "lb_kubernetes_applies_patched_total {}",
            v.applies_patched
        );
        let _ = writeln!(
            s,
            "# HELP lb_kubernetes_sync_seconds Time from the first watch event of an apply to its table being published."
        );
        let _ = writeln!(s, "# TYPE lb_kubernetes_sync_seconds summary");
        let _ = writeln!(s, "lb_kubernetes_sync_seconds_sum {}", v.sync_seconds_sum);
        let _ = writeln!(
            s,
            "lb_kubernetes_sync_seconds_count {}",
            v.sync_seconds_count
        );
        let _ = writeln!(
            s,
            "# HELP lb_kubernetes_synced 1 once a cluster state was applied."
        );
        let _ = writeln!(s, "# TYPE lb_kubernetes_synced gauge");
        let _ = writeln!(s, "lb_kubernetes_synced {}", i32::from(v.synced));
        let _ = writeln!(
            s,
            "# HELP lb_kubernetes_watch_failing 1 for each watch failing now."
        );
        let _ = writeln!(s, "# TYPE lb_kubernetes_watch_failing gauge");
        for w in v.failing.keys() {
            let _ = writeln!(s, "lb_kubernetes_watch_failing{{watch=\"{w}\"}} 1");
        }
        s
    }

    /// Records whether this replica leads (for `/state`).
    pub fn set_leader(&self, leader: bool) {
        self.lock().leader = leader;
    }
}

impl crate::api::admin::SourceStatus for SyncState {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn ready(&self) -> bool {
        SyncState::ready(self)
    }

    fn reasons(&self) -> Vec<String> {
        SyncState::reasons(self)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.view()).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        SyncState::metrics(self)
    }
}

/// What the leader should write after an apply: the statuses and problems of one translation
/// and the objects as they were then (to compare with).
#[derive(Clone, Debug)]
pub struct StatusWork {
    /// The objects as last seen.
    pub snapshot: Arc<Snapshot>,
    /// What the translation wants written.
    pub statuses: translate::Statuses,
    /// Objects skipped.
    pub problems: Vec<translate::ObjectProblem>,
}

/// A running source; dropping it (or [`Source::stop`]) stops its watchers and status writer;
/// [`Source::shutdown`] also gives up the Lease when it leads.
pub struct Source {
    state: Arc<SyncState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Tells the leader elector to stop (and release the Lease).
    stop: watch::Sender<bool>,
    /// The elector's task, once the client is there.
    elector: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// Asks the applier to apply the cluster state again.
    resync: Arc<tokio::sync::Notify>,
}

impl Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").finish_non_exhaustive()
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Source {
    /// Starts the source on `rt`: it connects (retrying until it can), watches, and applies
    /// what the cluster means to `cp`. `leader` says whether this replica writes status and
    /// Events (`true` forever without leader election).
    pub fn start(
        rt: &tokio::runtime::Handle,
        cp: Arc<ControlPlane>,
        k: Kubernetes,
        leader: watch::Receiver<bool>,
    ) -> Source {
        Source::spawn(rt, cp, k, leader, None)
    }

    /// Starts the source with `[kubernetes.leader_election]`: with it enabled, a
    /// [`LeaderElector`] on the source's client decides whether this replica writes status;
    /// disabled, this replica always does.
    pub fn start_elected(
        rt: &tokio::runtime::Handle,
        cp: Arc<ControlPlane>,
        k: Kubernetes,
    ) -> Source {
        let enabled = k.leader_election.enabled;
        let (tx, rx) = watch::channel(!enabled);
        Source::spawn(rt, cp, k, rx, enabled.then_some(tx))
    }

    fn spawn(
        rt: &tokio::runtime::Handle,
        cp: Arc<ControlPlane>,
        k: Kubernetes,
        leader: watch::Receiver<bool>,
        elect: Option<watch::Sender<bool>>,
    ) -> Source {
        let state = Arc::new(SyncState::default());
        let (work_tx, work_rx) = watch::channel::<Option<StatusWork>>(None);
        let (client_tx, client_rx) = watch::channel::<Option<Client>>(None);
        let (stop, stop_rx) = watch::channel(false);
        let elector = Arc::new(Mutex::new(None));
        let election = elect.map(|leading| Election {
            leading,
            stop: stop_rx,
            task: elector.clone(),
        });
        let resync = Arc::new(tokio::sync::Notify::new());
        let main = rt.spawn(run(
            cp,
            k.clone(),
            state.clone(),
            work_tx,
            client_tx,
            election,
            resync.clone(),
        ));
        let status = rt.spawn(super::status::run(
            client_rx,
            leader,
            work_rx,
            state.clone(),
            k.gateway_controller.clone(),
        ));
        Source {
            state,
            tasks: vec![main, status],
            stop,
            elector,
            resync,
        }
    }

    /// Applies the cluster state again (after a file reload: a cluster change the old file
    /// refused may fit the new one).
    pub fn resync(&self) {
        self.resync.notify_one();
    }

    /// Stops the source; a leader first gives up its Lease (waiting at most `timeout`), so
    /// another replica takes over without waiting for it to expire.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.stop.send(true);
        let task = self
            .elector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = task {
            let _ = tokio::time::timeout(timeout, t).await;
        }
    }

    /// The source's state (shared with the admin API).
    pub fn state(&self) -> Arc<SyncState> {
        self.state.clone()
    }

    /// Stops the watchers and the status writer.
    pub fn stop(self) {
        drop(self);
    }
}

/// The leader election of a source: where to say whether we lead, when to stop, and where
/// the elector's task goes.
struct Election {
    leading: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// The Lease's namespace: `[kubernetes.leader_election] namespace`, else the pod's
/// (`POD_NAMESPACE`, the service account's namespace file), else `default`.
pub fn lease_namespace(k: &Kubernetes) -> String {
    k.leader_election
        .namespace
        .clone()
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "default".into())
}

/// Starts the elector on `client`; its verdicts go to `e.leading`.
fn start_election(client: &Client, k: &Kubernetes, e: Election) {
    let le = &k.leader_election;
    let cfg = LeaderConfig {
        namespace: lease_namespace(k),
        name: le.name.clone(),
        // Unique per start: two sources in one process (or a restart reusing a pid) are two
        // candidates.
        identity: format!("{}_{:08x}", default_identity(), fastrand::u32(..)),
        lease_duration: le.lease_duration,
        renew_deadline: le.renew_deadline,
        retry_period: le.retry_period,
    };
    tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, identity = %cfg.identity, "kubernetes: leader election");
    let elector = LeaderElector::new(client.clone(), cfg);
    let mut sub = elector.subscribe();
    let Election {
        leading,
        mut stop,
        task,
    } = e;
    let forward = tokio::spawn(async move {
        loop {
            let v = *sub.borrow_and_update();
            leading.send_replace(v);
            if sub.changed().await.is_err() {
                leading.send_replace(false);
                return;
            }
        }
    });
    let run = tokio::spawn(async move {
        elector
            .run(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        let _ = forward.await;
    });
    *task.lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
}

/// Connects, then watches and applies until aborted.
async fn run(
    cp: Arc<ControlPlane>,
    k: Kubernetes,
    state: Arc<SyncState>,
    work: watch::Sender<Option<StatusWork>>,
    client_out: watch::Sender<Option<Client>>,
    election: Option<Election>,
    resync: Arc<tokio::sync::Notify>,
) {
    let client = loop {
        match client(&k).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "kubernetes: cannot connect; retrying");
                record_failure(&state, "connection", &e);
                tokio::time::sleep(CLIENT_RETRY).await;
            }
        }
    };
    state.lock().failing.remove("connection");
    if let Some(e) = election {
        start_election(&client, &k, e);
    }
    let _ = client_out.send(Some(client.clone()));
    let (tx, rx) = mpsc::unbounded_channel();
    let watches = spawn_watchers(&client, &k, &tx);
    {
        let mut v = state.lock();
        v.waiting_for = watches.iter().map(|(name, _)| name.clone()).collect();
    }
    let _guard = AbortOnDrop(watches.into_iter().map(|(_, t)| t).collect());
    drop(tx);
    Applier {
        cp,
        settings: settings(&k),
        batch: k.batch,
        state,
        work,
        snapshot: Snapshot::default(),
        last: None,
        index: None,
        changed: BTreeSet::new(),
        structural: false,
        resync,
    }
    .run(rx)
    .await;
}

/// Aborts its tasks when dropped (the watchers stop with the source).
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn record_failure(state: &SyncState, watch: &str, error: &str) {
    let mut v = state.lock();
    let since = now_rfc3339();
    v.failing
        .entry(watch.to_string())
        .and_modify(|f| f.error = error.to_string())
        .or_insert(Failure {
            since,
            error: error.to_string(),
        });
}

/// Now, as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::try_from(SystemTime::now())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// One watcher per kind and namespace; their names (`Kind` or `Kind in ns`) and tasks.
fn spawn_watchers(
    client: &Client,
    k: &Kubernetes,
    tx: &mpsc::UnboundedSender<Msg>,
) -> Vec<(String, tokio::task::JoinHandle<()>)> {
    let labels = k.label_selector.trim();
    let labelled = || {
        let c = watcher::Config::default();
        if labels.is_empty() {
            c
        } else {
            c.labels(labels)
        }
    };
    let namespaces: Vec<Option<String>> = if k.namespaces.is_empty() {
        vec![None]
    } else {
        k.namespaces.iter().cloned().map(Some).collect()
    };
    let mut out = Vec::new();
    // Cluster-scoped kinds.
    out.push(spawn_watch::<IngressClass>(
        Api::all(client.clone()),
        watcher::Config::default(),
        Kind::IngressClass,
        None,
        Obj::IngressClass,
        tx,
    ));
    out.push(spawn_watch::<GatewayClass>(
        Api::all(client.clone()),
        watcher::Config::default(),
        Kind::GatewayClass,
        None,
        Obj::GatewayClass,
        tx,
    ));
    // Their labels only: Gateway listeners may allow routes from namespaces by selector.
    out.push(spawn_watch::<Namespace>(
        Api::all(client.clone()),
        watcher::Config::default(),
        Kind::Namespace,
        None,
        Obj::Namespace,
        tx,
    ));
    for ns in &namespaces {
        fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
        where
            K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
            <K as Resource>::DynamicType: Default,
        {
            match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        out.push(spawn_watch::<Ingress>(
            api(client, ns),
            labelled(),
            Kind::Ingress,
            ns.clone(),
            Obj::Ingress,
            tx,
        ));
        out.push(spawn_watch::<Service>(
            api(client, ns),
            labelled(),
            Kind::Service,
            ns.clone(),
            Obj::Service,
            tx,
        ));
        out.push(spawn_watch::<EndpointSlice>(
            api(client, ns),
            watcher::Config::default(),
            Kind::EndpointSlice,
            ns.clone(),
            Obj::EndpointSlice,
            tx,
        ));
        out.push(spawn_watch::<Secret>(
            api(client, ns),
            watcher::Config::default().fields("type=kubernetes.io/tls"),
            Kind::Secret,
            ns.clone(),
            Obj::Secret,
            tx,
        ));
        out.push(spawn_watch::<Gateway>(
            api(client, ns),
            watcher::Config::default(),
            Kind::Gateway,
            ns.clone(),
            Obj::Gateway,
            tx,
        ));
        out.push(spawn_watch::<HTTPRoute>(
            api(client, ns),
            labelled(),
            Kind::HttpRoute,
            ns.clone(),
            Obj::HttpRoute,
            tx,
        ));
    }
    out
}

fn watch_name(kind: Kind, ns: &Option<String>) -> String {
    match ns {
        Some(ns) => format!("{} in {ns}", kind_name(kind)),
        None => kind_name(kind).to_string(),
    }
}

fn is_gateway_api(kind: Kind) -> bool {
    matches!(kind, Kind::GatewayClass | Kind::Gateway | Kind::HttpRoute)
}

/// The HTTP status of a failed list or watch, when the API server answered.
fn api_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

/// Spawns the watcher of one kind in one namespace (`None`: all). A relist is buffered and
/// sent whole; errors are reported and retried with backoff.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    ns: Option<String>,
    wrap: fn(K) -> Obj,
    tx: &mpsc::UnboundedSender<Msg>,
) -> (String, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    <K as Resource>::DynamicType: Default,
{
    let name = watch_name(kind, &ns);
    let tx = tx.clone();
    let wname = name.clone();
    let task = tokio::spawn(async move {
        let name = wname;
        let mut backoff = MIN_BACKOFF;
        let mut failing = false;
        loop {
            let mut stream = Box::pin(watcher::watcher(api.clone(), config.clone()));
            let mut buf: Option<Vec<Obj>> = None;
            let mut restart = false;
            while let Some(item) = stream.next().await {
                let msg = match item {
                    Ok(Event::Init) => {
                        buf = Some(Vec::new());
                        continue;
                    }
                    Ok(Event::InitApply(o)) => {
                        buf.get_or_insert_with(Vec::new).push(wrap(o));
                        continue;
                    }
                    Ok(Event::InitDone) => Msg::Relist {
                        kind,
                        namespace: ns.clone(),
                        objects: buf.take().unwrap_or_default(),
                    },
                    Ok(Event::Apply(o)) => Msg::Apply(wrap(o)),
                    Ok(Event::Delete(o)) => Msg::Delete(wrap(o)),
                    Err(e) => {
                        let code = api_code(&e);
                        let first = matches!(e, watcher::Error::InitialListFailed(_));
                        if first
                            && (code == Some(404) && is_gateway_api(kind)
                                || matches!(code, Some(403 | 404)) && kind == Kind::Namespace)
                        {
                            let why = if kind == Kind::Namespace {
                                "Namespaces cannot be listed (RBAC: list and watch namespaces); listeners with allowedRoutes from Selector attach no route; restart lb after granting it".to_string()
                            } else {
                                format!(
                                    "the API server does not serve {} (Gateway API CRDs not installed?); restart lb after installing them",
                                    kind_name(kind)
                                )
                            };
                            tracing::warn!(watch = %name, "kubernetes: {why}");
                            let _ = tx.send(Msg::Disabled { kind, why });
                            return;
                        }
                        failing = true;
                        tracing::warn!(watch = %name, error = %e, "kubernetes: watch failed; retrying");
                        if tx
                            .send(Msg::Failed {
                                watch: name.clone(),
                                error: e.to_string(),
                            })
                            .is_err()
                        {
                            return;
                        }
                        // Start over with a list: its completion is the sign the watch works
                        // again (a resumed watch says nothing until something changes), and a
                        // watch refused with 410 at its start would otherwise be retried at
                        // the same resourceVersion forever. The list is buffered, so the
                        // tables stay as they are meanwhile.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        restart = true;
                        break;
                    }
                };
                backoff = MIN_BACKOFF;
                if failing {
                    failing = false;
                    tracing::info!(watch = %name, "kubernetes: watch recovered");
                    if tx
                        .send(Msg::Recovered {
                            watch: name.clone(),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                if tx.send(msg).is_err() {
                    return;
                }
            }
            if !restart {
                // The watcher stream never ends by itself; if it does, start over.
                tokio::time::sleep(backoff).await;
            }
        }
    });
    (name, task)
}

/// The source's loop: keeps the snapshot, batches, applies.
struct Applier {
    cp: Arc<ControlPlane>,
    settings: Settings,
    batch: Duration,
    state: Arc<SyncState>,
    work: watch::Sender<Option<StatusWork>>,
    snapshot: Snapshot,
    /// The last translation's cluster part applied (to skip identical ones), with every patch
    /// since.
    last: Option<ClusterPart>,
    /// Where each Service's endpoints are in `last`, from its whole translation.
    index: Option<patch::Index>,
    /// Services whose EndpointSlices changed since the last apply.
    changed: BTreeSet<ObjectKey>,
    /// Something besides EndpointSlices changed since the last apply: translate everything.
    structural: bool,
    /// Asks for an apply even when nothing changed.
    resync: Arc<tokio::sync::Notify>,
}

/// How urgent a change is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Urgency {
    /// Nothing to apply.
    None,
    /// Apply within the batch window.
    Batch,
    /// Apply now (a removal).
    Now,
}

impl Applier {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        // Watches that have not listed yet; nothing is applied before they all have.
        let mut waiting: BTreeSet<String> = self.state.lock().waiting_for.iter().cloned().collect();
        // When the first gathered change came, and when the batch window ends.
        let mut pending: Option<(Instant, Instant)> = None;
        let mut now_due = false;
        loop {
            let resync = self.resync.clone();
            let msg = match pending {
                Some(_) if now_due && waiting.is_empty() => None,
                Some((_, deadline)) if waiting.is_empty() => tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => Some(m),
                        None => return,
                    },
                    () = tokio::time::sleep_until(deadline.into()) => None,
                },
                _ => tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => Some(m),
                        None => return,
                    },
                    () = resync.notified() => {
                        // Apply even an unchanged translation (the plane's file changed).
                        self.last = None;
                        self.structural = true;
                        let now = Instant::now();
                        pending.get_or_insert((now, now));
                        now_due = true;
                        None
                    }
                },
            };
            let batch = self.batch;
            let mut note = |u: Urgency, pending: &mut Option<(Instant, Instant)>| {
                if u > Urgency::None {
                    let now = Instant::now();
                    pending.get_or_insert((now, now + batch));
                }
                if u == Urgency::Now {
                    now_due = true;
                }
            };
            match msg {
                Some(m) => {
                    let u = self.take(m, &mut waiting);
                    note(u, &mut pending);
                    // Whatever else is queued already goes into the same apply.
                    while let Ok(m) = rx.try_recv() {
                        let u = self.take(m, &mut waiting);
                        note(u, &mut pending);
                    }
                }
                // The batch window ended.
                None => now_due = true,
            }
            if !waiting.is_empty() {
                continue;
            }
            if !self.state.lock().synced {
                // The first complete view (or one the plane refused so far): apply it now.
                let now = Instant::now();
                pending.get_or_insert((now, now));
                now_due = true;
            }
            if now_due {
                now_due = false;
                if let Some((first, _)) = pending.take() {
                    self.apply(first).await;
                }
            }
        }
    }

    /// Folds one message into the snapshot; how urgently it must be applied.
    fn take(&mut self, msg: Msg, waiting: &mut BTreeSet<String>) -> Urgency {
        match msg {
            Msg::Apply(o) => {
                self.count(&o);
                self.upsert(o)
            }
            Msg::Delete(o) => {
                self.count(&o);
                self.remove(&o)
            }
            Msg::Relist {
                kind,
                namespace,
                objects,
            } => {
                let name = watch_name(kind, &namespace);
                waiting.remove(&name);
                {
                    let mut v = self.state.lock();
                    v.waiting_for.retain(|w| *w != name);
                    v.failing.remove(&name);
                    *v.events.entry(kind_name(kind).to_string()).or_default() +=
                        objects.len() as u64;
                }
                let u = self.replace(kind, namespace.as_deref(), objects);
                self.structural |= u > Urgency::None;
                u
            }
            Msg::Failed { watch, error } => {
                record_failure(&self.state, &watch, &error);
                Urgency::None
            }
            Msg::Recovered { watch } => {
                self.state.lock().failing.remove(&watch);
                Urgency::None
            }
            Msg::Disabled { kind, why } => {
                let names: Vec<String> = waiting
                    .iter()
                    .filter(|w| {
                        *w == kind_name(kind) || w.starts_with(&format!("{} in ", kind_name(kind)))
                    })
                    .cloned()
                    .collect();
                let mut v = self.state.lock();
                for n in names {
                    waiting.remove(&n);
                    v.waiting_for.retain(|w| *w != n);
                    v.failing.remove(&n);
                }
                v.disabled.insert(kind_name(kind).to_string(), why);
                self.structural = true;
                Urgency::Batch
            }
        }
    }

    fn count(&self, o: &Obj) {
        let mut v = self.state.lock();
        *v.events
            .entry(kind_name(obj_kind(o)).to_string())
            .or_default() += 1;
    }

    fn upsert(&mut self, o: Obj) -> Urgency {
        let s = &mut self.snapshot;
        let u = match &o {
            Obj::EndpointSlice(x) => {
                let old = s.endpoint_slices.insert(ObjectKey::of(x), x.clone());
                let u = match &old {
                    Some(old) if only_removes(old, x) => {
                        if old == x {
                            Urgency::None
                        } else {
                            Urgency::Now
                        }
                    }
                    _ => Urgency::Batch,
                };
                if u > Urgency::None {
                    self.changed.extend(old.as_ref().and_then(service_of));
                    self.changed.extend(service_of(x));
                }
                return u;
            }
            _ => self.upsert_other(o),
        };
        self.structural |= u > Urgency::None;
        u
    }

    /// [`Applier::upsert`] of anything but an EndpointSlice.
    fn upsert_other(&mut self, o: Obj) -> Urgency {
        let s = &mut self.snapshot;
        match o {
            Obj::IngressClass(x) => changed(s.ingress_classes.insert(name_of(&x), x.clone()), &x),
            Obj::Ingress(x) => changed(s.ingresses.insert(ObjectKey::of(&x), x.clone()), &x),
            Obj::Service(x) => changed(s.services.insert(ObjectKey::of(&x), x.clone()), &x),
            Obj::EndpointSlice(_) => unreachable!("upsert takes EndpointSlices"),
            Obj::Secret(x) => changed(s.secrets.insert(ObjectKey::of(&x), x.clone()), &x),
            Obj::GatewayClass(x) => changed(s.gateway_classes.insert(name_of(&x), x.clone()), &x),
            Obj::Gateway(x) => changed(s.gateways.insert(ObjectKey::of(&x), x.clone()), &x),
            Obj::HttpRoute(x) => changed(s.http_routes.insert(ObjectKey::of(&x), x.clone()), &x),
            Obj::Namespace(x) => changed(s.namespaces.insert(name_of(&x), x.clone()), &x),
        }
    }

    fn remove(&mut self, o: &Obj) -> Urgency {
        let s = &mut self.snapshot;
        let gone = match o {
            Obj::IngressClass(x) => s.ingress_classes.remove(&name_of(x)).is_some(),
            Obj::Ingress(x) => s.ingresses.remove(&ObjectKey::of(x)).is_some(),
            Obj::Service(x) => s.services.remove(&ObjectKey::of(x)).is_some(),
            Obj::EndpointSlice(x) => match s.endpoint_slices.remove(&ObjectKey::of(x)) {
                Some(old) => {
                    self.changed.extend(service_of(&old));
                    return Urgency::Now;
                }
                None => false,
            },
            Obj::Secret(x) => s.secrets.remove(&ObjectKey::of(x)).is_some(),
            Obj::GatewayClass(x) => s.gateway_classes.remove(&name_of(x)).is_some(),
            Obj::Gateway(x) => s.gateways.remove(&ObjectKey::of(x)).is_some(),
            Obj::HttpRoute(x) => s.http_routes.remove(&ObjectKey::of(x)).is_some(),
            Obj::Namespace(x) => s.namespaces.remove(&name_of(x)).is_some(),
        };
        if gone {
            self.structural = true;
            Urgency::Now
        } else {
            Urgency::None
        }
    }

    /// Replaces the objects of `kind` in `ns` (`None`: all) with a relist's.
    fn replace(&mut self, kind: Kind, ns: Option<&str>, objects: Vec<Obj>) -> Urgency {
        fn swap<K: Ord + Clone, V: Resource>(
            map: &mut BTreeMap<K, V>,
            keep: impl Fn(&K) -> bool,
            new: Vec<(K, V)>,
        ) -> Urgency {
            let mut next: BTreeMap<K, V> = new.into_iter().collect();
            let old: Vec<K> = map.keys().filter(|k| !keep(k)).cloned().collect();
            let removed = old.iter().any(|k| !next.contains_key(k));
            let mut same = !removed && old.len() == next.len();
            for k in old {
                if let Some(v) = map.remove(&k) {
                    same &= next.get(&k).is_some_and(|n| same_version(n, &v));
                }
            }
            map.append(&mut next);
            if same {
                Urgency::None
            } else if removed {
                Urgency::Now
            } else {
                Urgency::Batch
            }
        }
        let s = &mut self.snapshot;
        let in_scope = |k: &ObjectKey| ns.is_none_or(|ns| k.namespace == ns);
        let keep = |k: &ObjectKey| !in_scope(k);
        macro_rules! pick {
            ($variant:ident) => {
                objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Obj::$variant(x) => Some((ObjectKey::of(&x), x)),
                        _ => None,
                    })
                    .collect()
            };
        }
        match kind {
            Kind::IngressClass => swap(
                &mut s.ingress_classes,
                |_| false,
                objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Obj::IngressClass(x) => Some((name_of(&x), x)),
                        _ => None,
                    })
                    .collect(),
            ),
            Kind::GatewayClass => swap(
                &mut s.gateway_classes,
                |_| false,
                objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Obj::GatewayClass(x) => Some((name_of(&x), x)),
                        _ => None,
                    })
                    .collect(),
            ),
            Kind::Ingress => swap(&mut s.ingresses, keep, pick!(Ingress)),
            Kind::Service => swap(&mut s.services, keep, pick!(Service)),
            Kind::EndpointSlice => swap(&mut s.endpoint_slices, keep, pick!(EndpointSlice)),
            Kind::Secret => swap(&mut s.secrets, keep, pick!(Secret)),
            Kind::Gateway => swap(&mut s.gateways, keep, pick!(Gateway)),
            Kind::HttpRoute => swap(&mut s.http_routes, keep, pick!(HttpRoute)),
            Kind::Namespace => swap(
                &mut s.namespaces,
                |_| false,
                objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Obj::Namespace(x) => Some((name_of(&x), x)),
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }

    /// Applies what changed since the last apply; `first` is when its first change arrived.
    async fn apply(&mut self, first: Instant) {
        let changed = std::mem::take(&mut self.changed);
        let structural = std::mem::replace(&mut self.structural, false);
        if !structural && self.patch(&changed, first) {
            return;
        }
        self.apply_all(first).await;
    }

    /// Applies a change of EndpointSlices alone as new backends of the entries their Services
    /// have (in time proportional to them, not to the cluster); false when it is more than that
    /// or the plane refused it: then everything is translated.
    fn patch(&mut self, changed: &BTreeSet<ObjectKey>, first: Instant) -> bool {
        let (Some(index), Some(last)) = (&self.index, &mut self.last) else {
            return false;
        };
        let Some(p) = patch::patch(&self.snapshot, &self.settings, index, last, changed) else {
            return false;
        };
        match self.cp.patch_backends(&p) {
            Ok(Some(g)) => {
                if !p.apply_to(last) {
                    // Cannot be (the plane found every entry): start over from a whole one.
                    self.last = None;
                    self.index = None;
                }
                let secs = first.elapsed().as_secs_f64();
                let mut v = self.state.lock();
                if p.is_empty() {
                    v.applies_unchanged += 1;
                } else {
                    v.applies_ok += 1;
                    v.applies_patched += 1;
                    v.last_sync_seconds = Some(secs);
                    v.sync_seconds_sum += secs;
                    v.sync_seconds_count += 1;
                }
                v.last_error = None;
                tracing::debug!(
                    generation = g,
                    seconds = secs,
                    "kubernetes: endpoints applied"
                );
                true
            }
            Ok(None) => false,
            Err(e) => {
                // A whole translation says the same, with every problem.
                tracing::debug!(error = %e, "kubernetes: endpoint patch refused; translating everything");
                false
            }
        }
    }

    /// Translates the whole snapshot and applies it.
    async fn apply_all(&mut self, first: Instant) {
        let snap = Arc::new(self.snapshot.clone());
        let settings = self.settings.clone();
        let cp = self.cp.clone();
        let last = self.last.clone();
        let job = {
            let snap = snap.clone();
            tokio::task::spawn_blocking(move || {
                let t = translate::translate(&snap, &settings);
                let part = ClusterPart {
                    services: t.services.clone(),
                    http: t.http.clone(),
                };
                let index = patch::Index::new(&snap, &t);
                if last.as_ref() == Some(&part) {
                    return (t, part, index, None);
                }
                let written = write_pem_files(&settings.secrets_dir, &t.pem_files);
                let result = match written {
                    Ok(()) => cp.set_cluster(part.clone()).map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                if result.is_ok() {
                    // The listeners have read what they serve: older certificates can go.
                    prune_pem_files(&settings.secrets_dir, &t.pem_files);
                }
                (t, part, index, Some(result))
            })
        };
        let Ok((t, part, index, result)) = job.await else {
            tracing::error!("kubernetes: the apply task panicked");
            return;
        };
        let Translated {
            problems, statuses, ..
        } = t;
        {
            let mut v = self.state.lock();
            v.problems = problems.len();
            match result {
                None => {
                    v.applies_unchanged += 1;
                    v.synced = true;
                    self.index = Some(index);
                }
                Some(Ok(g)) => {
                    let secs = first.elapsed().as_secs_f64();
                    v.applies_ok += 1;
                    v.synced = true;
                    v.last_error = None;
                    v.last_sync_seconds = Some(secs);
                    v.sync_seconds_sum += secs;
                    v.sync_seconds_count += 1;
                    tracing::debug!(generation = g, seconds = secs, "kubernetes: applied");
                    self.last = Some(part);
                    self.index = Some(index);
                }
                Some(Err(e)) => {
                    self.index = None;
                    v.applies_rejected += 1;
                    v.last_error = Some(e);
                }
            }
        }
        for p in &problems {
            tracing::debug!(kind = kind_name(p.kind), object = %p.key, reason = %p.reason, message = %p.message, "kubernetes: object skipped");
        }
        let _ = self.work.send(Some(StatusWork {
            snapshot: snap,
            statuses,
            problems,
        }));
    }
}

fn obj_kind(o: &Obj) -> Kind {
    match o {
        Obj::IngressClass(_) => Kind::IngressClass,
        Obj::Ingress(_) => Kind::Ingress,
        Obj::Service(_) => Kind::Service,
        Obj::EndpointSlice(_) => Kind::EndpointSlice,
        Obj::Secret(_) => Kind::Secret,
        Obj::GatewayClass(_) => Kind::GatewayClass,
        Obj::Gateway(_) => Kind::Gateway,
        Obj::HttpRoute(_) => Kind::HttpRoute,
        Obj::Namespace(_) => Kind::Namespace,
    }
}

fn name_of<K: Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

/// True when `a` and `b` are the same version of an object (the same resourceVersion).
fn same_version<K: Resource>(a: &K, b: &K) -> bool {
    let (a, b) = (&a.meta().resource_version, &b.meta().resource_version);
    a.is_some() && a == b
}

/// `Batch` when `new` differs from `old` (an insert's previous value), else `None`.
fn changed<K: Resource>(old: Option<K>, new: &K) -> Urgency {
    match old {
        Some(o) if same_version(&o, new) => Urgency::None,
        _ => Urgency::Batch,
    }
}

/// True when `new` only takes away from `old`: the same ports, and every endpoint that may
/// take new flows in `new` (ready) did so in `old` with the same addresses. An endpoint turning
/// not ready, terminating or gone is such a change; one added or turning ready is not.
pub fn only_removes(old: &EndpointSlice, new: &EndpointSlice) -> bool {
    if old.ports != new.ports || old.address_type != new.address_type {
        return false;
    }
    let state = |e: &k8s_openapi::api::discovery::v1::Endpoint| {
        let c = e.conditions.as_ref();
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        (ready && !terminating, serving)
    };
    new.endpoints.iter().all(|n| {
        let (ready, serving) = state(n);
        if !ready && !serving {
            return true;
        }
        old.endpoints.iter().any(|o| {
            let (o_ready, o_serving) = state(o);
            o.addresses == n.addresses
                && o.target_ref == n.target_ref
                && (o_ready || !ready)
                && (o_serving || !serving)
        })
    })
}

/// Writes certificates where the translation's `[[http.tls]]` entries name them: the directory
/// mode 0700, each file 0600, written to a temporary name and renamed into place (a reader never
/// sees half a file). Files already there are kept (their names derive from their content).
/// A path outside `dir` is refused.
pub fn write_pem_files(dir: &Path, files: &[PemFile]) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("creating the secrets directory {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("setting the mode of {}: {e}", dir.display()))?;
    for f in files {
        if f.path.parent() != Some(dir) {
            return Err(format!(
                "certificate path {} is not directly in the secrets directory {}",
                f.path.display(),
                dir.display()
            ));
        }
        if std::fs::read(&f.path).is_ok_and(|c| c == f.content) {
            continue;
        }
        let tmp = f.path.with_extension(format!("tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(&f.content)?;
            out.sync_all()?;
            std::fs::rename(&tmp, &f.path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("writing {}: {e}", f.path.display()));
        }
    }
    Ok(())
}

/// Removes the certificate files of earlier applies from `dir`: files named like the
/// translation names them (32 hex digits, `.crt` or `.key`) that `keep` does not list. Other
/// files are left alone.
pub fn prune_pem_files(dir: &Path, keep: &[PemFile]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let ours = name.split_once('.').is_some_and(|(stem, ext)| {
            stem.len() == 32
                && stem.bytes().all(|b| b.is_ascii_hexdigit())
                && (ext == "crt" || ext == "key")
        });
        if ours && !keep.iter().any(|f| f.path == path) {
            if let Err(err) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %err, "kubernetes: removing an old certificate file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn ep(addr: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addresses: vec![addr.into()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            ..Endpoint::default()
        }
    }

    fn slice(eps: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: eps,
            ports: Some(vec![EndpointPort {
                port: Some(8080),
                ..EndpointPort::default()
            }]),
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn removals_and_not_ready_are_urgent_additions_are_not() {
        let a = ep("198.18.1.1", true, true, false);
        let b = ep("198.18.1.2", true, true, false);
        let two = slice(vec![a.clone(), b.clone()]);
        // Removed.
        assert!(only_removes(&two, &slice(vec![a.clone()])));
        // Terminating (serving): drains, no new flows.
        assert!(only_removes(
            &two,
            &slice(vec![a.clone(), ep("198.18.1.2", false, true, true)])
        ));
        // Not ready at all.
        assert!(only_removes(
            &two,
            &slice(vec![a.clone(), ep("198.18.1.2", false, false, false)])
        ));
        // Added.
        assert!(!only_removes(&slice(vec![a.clone()]), &two));
        // Turned ready.
        assert!(!only_removes(
            &slice(vec![a.clone(), ep("198.18.1.2", false, false, false)]),
            &two
        ));
        // A port change is not a removal.
        let mut moved = two.clone();
        moved.ports = Some(vec![EndpointPort {
            port: Some(9090),
            ..EndpointPort::default()
        }]);
        assert!(!only_removes(&two, &moved));
    }

    #[test]
    fn certificates_are_written_private_and_whole() {
        let dir = std::env::temp_dir().join(format!("lb-k8s-pem-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let f = PemFile {
            path: dir.join("abc.pem"),
            content: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
        };
        write_pem_files(&dir, std::slice::from_ref(&f)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&f.path), 0o600);
        assert_eq!(std::fs::read(&f.path).unwrap(), f.content);
        // Nothing else left behind (no temporary file).
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let outside = PemFile {
            path: dir.join("../escape.pem"),
            content: Vec::new(),
        };
        assert!(write_pem_files(&dir, &[outside]).is_err());
        // Certificates no longer used are pruned; other files stay.
        let old = PemFile {
            path: dir.join(format!("{}.crt", "a".repeat(32))),
            content: b"old".to_vec(),
        };
        let kept = PemFile {
            path: dir.join(format!("{}.key", "b".repeat(32))),
            content: b"new".to_vec(),
        };
        write_pem_files(&dir, &[old.clone(), kept.clone()]).unwrap();
        prune_pem_files(&dir, std::slice::from_ref(&kept));
        assert!(!old.path.exists());
        assert!(kept.path.exists());
        assert!(f.path.exists(), "not named like ours: left alone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

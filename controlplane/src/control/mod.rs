//! The running control plane: the serving config, runtime overrides and health, and the one path
//! that turns them into a routing table and publishes it to the workers.
//!
//! Every change — the first table, a reloaded file, a health transition, an operator's command —
//! compiles a new table with the next generation and hands it to `ControlPlane::apply` (in
//! `control/apply.rs`), the only place a table is published. A file that fails to parse, validate or
//! compile, or a table that cannot be applied, changes nothing: the error is logged, counted and
//! kept for the admin API while the previous table keeps serving. Replaced tables are kept here
//! until every worker has moved to a newer generation, so the last reference to a table is
//! dropped on the control plane, never inside a worker.

mod apply;
mod drain;
mod l7;
mod observe;
mod overrides;
mod patch;
pub mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use dataplane::neighbor::NeighborCache;
use dataplane::table::{Local, MaglevCache};
use dataplane::worker::{Snapshot, WorkerHandle};
use dataplane::RoutingTable;

use crate::compile::{compile_with, CompileError, Compiled, Context, StatSlots, NEIGHBOR_SLOTS};
use crate::config::Config;
use crate::diag::ConfigReport;
use crate::health::PassiveSample;
pub use apply::{AddressFilter, ApplyError};
use apply::{Filter, Fixed, Next};
use drain::DrainSet;
pub use l7::{HttpHandle, L7Error};
use overrides::failing_open;
pub use patch::BackendPatch;
pub use state::{
    effective_weight, AdminState, BackendKey, BackendStatus, Control, DrainingStatus, Health,
    HttpStatus, Observation, OpError, Override, ReloadStatus, ServiceStatus,
};

/// Reads and parses a config file: the config and its text (for locating compile problems), or
/// the located report of every problem.
pub type Loader = dyn Fn(&Path) -> Result<(Config, String), ConfigReport> + Send + Sync;

/// The default loader: [`crate::config::load_with_text`] (read, parse, validate).
pub fn load_file(path: &Path) -> Result<(Config, String), ConfigReport> {
    crate::config::load_with_text(path)
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read, parsed, validated or compiled: every problem, located.
    #[error("{0}")]
    Config(ConfigReport),
    /// The compiled table could not be published.
    #[error("{0}")]
    Apply(#[from] ApplyError),
    /// The cluster's part of the desired state does not fit beside the file's (a name or
    /// address clash, an entry that breaks a rule): every problem, each naming its entry.
    #[error("{0}")]
    Cluster(String),
}

impl From<ReloadError> for String {
    fn from(e: ReloadError) -> String {
        e.to_string()
    }
}

/// The running control plane. Shared by the control thread, the admin API and health checks.
pub struct ControlPlane {
    path: PathBuf,
    loader: Box<Loader>,
    table: Arc<ArcSwap<RoutingTable>>,
    inner: Mutex<Inner>,
    workers: Mutex<Vec<WorkerHandle>>,
    ready: AtomicBool,
}

struct Inner {
    /// The serving config: the file's, with the cluster's entries appended.
    config: Config,
    /// The file's config alone (as last loaded).
    file: Config,
    /// The cluster's part of the desired state, as last accepted.
    cluster: ClusterPart,
    /// What the cluster's changes did.
    cluster_status: ClusterStatus,
    /// The serving config's text, so problems found in a later rebuild point into it.
    text: String,
    generation: u64,
    slots: StatSlots,
    cache: MaglevCache,
    overrides: BTreeMap<BackendKey, Override>,
    health: HashMap<BackendKey, Health>,
    failing_open: HashSet<String>,
    /// Services and backends reloads removed, kept for their tracked flows until a deadline.
    draining: DrainSet,
    reload: ReloadStatus,
    health_transitions: u64,
    conntrack_capacity: usize,
    /// Tables replaced but possibly still read by a worker.
    retired: Vec<Arc<RoutingTable>>,
    /// Next-hop MACs learned by the workers, shared by every generation.
    neighbors: Arc<NeighborCache>,
    /// The settings read once at start.
    fixed: Fixed,
    /// The ports' address filter (AF_XDP), once attached.
    filter: Option<Filter>,
    /// The `[[http]]` listeners and, once `lb run` starts them, their proxies.
    l7: l7::L7,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What starting the workers needs besides the table: fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct Start {
    /// Each worker's conntrack sizing and timeouts.
    pub conntrack: dataplane::conntrack::Config,
    /// Number of workers.
    pub workers: u16,
    /// Port, interface, cores, idle policy.
    pub run: crate::compile::RunSettings,
}

/// Why the first table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config does not compile: every problem, located.
    #[error("{0}")]
    Config(ConfigReport),
    /// The compiled table could not be published.
    #[error("{0}")]
    Apply(#[from] ApplyError),
}

impl ControlPlane {
    /// Compiles `config` (already loaded from `path`, whose text is `text`) into generation 1.
    /// The workers are attached later with [`ControlPlane::attach_workers`], once they run on
    /// [`ControlPlane::table`].
    pub fn new(
        path: &Path,
        config: Config,
        text: String,
        loader: Box<Loader>,
    ) -> Result<(ControlPlane, Start), StartError> {
        let mut inner = Inner {
            fixed: Fixed::of(&config),
            file: config.clone(),
            cluster: ClusterPart::default(),
            cluster_status: ClusterStatus::default(),
            config,
            text,
            generation: 0,
            slots: StatSlots::default(),
            cache: MaglevCache::default(),
            overrides: BTreeMap::new(),
            health: HashMap::new(),
            failing_open: HashSet::new(),
            draining: DrainSet::default(),
            reload: ReloadStatus::default(),
            health_transitions: 0,
            conntrack_capacity: 0,
            retired: Vec::new(),
            neighbors: Arc::new(NeighborCache::new(NEIGHBOR_SLOTS)),
            filter: None,
            l7: l7::L7::default(),
        };
        let (next, start) = inner
            .compile(None, None, 1)
            .map_err(|e| StartError::Config(ConfigReport::from_compile(path, &inner.text, &e)))?;
        // The key slots a worker's table really has (rounded up), so occupancy reaches 1 when full.
        inner.conntrack_capacity = dataplane::conntrack::slots_for(start.conntrack.capacity);
        let cp = ControlPlane {
            path: path.to_path_buf(),
            loader,
            table: Arc::new(ArcSwap::from_pointee(placeholder())),
            inner: Mutex::new(inner),
            workers: Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
        };
        {
            let mut inner = cp.lock();
            cp.apply(&mut inner, next, None)?;
        }
        Ok((cp, start))
    }

    /// The table the workers read.
    pub fn table(&self) -> Arc<ArcSwap<RoutingTable>> {
        self.table.clone()
    }

    /// The config file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The serving config.
    pub fn config(&self) -> Config {
        self.lock().config.clone()
    }

    /// Hands over the running workers; the plane is ready from now on.
    pub fn attach_workers(&self, handles: Vec<WorkerHandle>) {
        *self.workers.lock().unwrap_or_else(|p| p.into_inner()) = handles;
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Takes the workers back (to stop them); the plane is no longer ready.
    pub fn detach_workers(&self) -> Vec<WorkerHandle> {
        self.ready.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Starts one proxy per `[[http]]` of the serving config, `workers` threads each; from now
    /// on every change of the config, health or overrides reaches them too.
    pub fn start_http(&self, workers: usize) -> Result<(), L7Error> {
        self.lock().l7.start(workers)
    }

    /// Stops the `[[http]]` proxies (their open connections close).
    pub fn stop_http(&self) {
        self.lock().l7.stop_all();
    }

    /// The running `[[http]]` proxies: each listener's per-worker counters.
    pub fn http_handles(&self) -> Vec<HttpHandle> {
        self.lock().l7.handles()
    }

    /// The route table spec `[[http]]` `name` serves (or will serve once its proxy starts):
    /// routes, upstreams and their endpoints at their runtime weights.
    pub fn http_routes(&self, name: &str) -> Option<dataplane::l7::route::TableSpec> {
        self.lock().l7.routes(name)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every change is a whole swap).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current worker counters.
    pub fn snapshots(&self) -> Vec<Arc<Snapshot>> {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|h| h.counters())
            .collect()
    }

    /// The generation every worker has adopted (the smallest), `None` without workers.
    pub fn adopted_generation(&self) -> Option<u64> {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|h| h.generation())
            .min()
    }

    /// Waits until every worker serves `generation` or newer; the time it took, or `None` on timeout.
    pub fn wait_adopted(&self, generation: u64, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            match self.adopted_generation() {
                Some(g) if g >= generation => return Some(start.elapsed()),
                None => return Some(start.elapsed()),
                _ => {}
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Rereads the config file: parse, validate, compile, apply. On any error the serving table
    /// is untouched; the error is counted, logged and kept for `/state`.
    pub fn reload_file(&self) -> Result<u64, ReloadError> {
        let loaded = (self.loader)(&self.path);
        let mut inner = self.lock();
        let result = loaded
            .map_err(ReloadError::Config)
            .and_then(|(file, text)| {
                // The cluster's part stays: it must still fit beside the new file.
                let merged = merge(&file, &inner.cluster);
                if !inner.cluster.is_empty() {
                    check_merged(&file, &inner.cluster, &merged, &self.path, &text)?;
                }
                let g = self.publish(&mut inner, merged, text)?;
                inner.file = file;
                Ok(g)
            });
        match &result {
            Ok(g) => {
                inner.reload.ok += 1;
                inner.reload.last_error = None;
                inner.reload.last_ok_unix = Some(unix_now());
                tracing::info!(generation = g, path = %self.path.display(), "configuration reloaded");
            }
            Err(e) => {
                inner.reload.failed += 1;
                inner.reload.last_error = Some(e.to_string());
                tracing::error!(path = %self.path.display(), error = %e, "reload rejected; the previous configuration keeps serving");
            }
        }
        result
    }

    /// Compiles `merged` (the next serving config, whose file part has `text`) with the drain
    /// of what it removes, and publishes it. Nothing changes on an error.
    fn publish(&self, inner: &mut Inner, merged: Config, text: String) -> Result<u64, ReloadError> {
        let g = inner.generation + 1;
        let draining = inner
            .draining
            .after_reload(&inner.config, &merged, Instant::now());
        let (next, _) = inner
            .compile(Some(&merged), Some(&draining), g)
            .map_err(|e| ReloadError::Config(ConfigReport::from_compile(&self.path, &text, &e)))?;
        let g = self.apply(inner, next, Some((merged, text)))?;
        if draining != inner.draining {
            let (services, backends) = draining.names();
            tracing::info!(
                ?services,
                ?backends,
                "removed services and backends keep their flows until they drain"
            );
        }
        inner.draining = draining;
        Ok(g)
    }

    /// Replaces the cluster's part of the desired state (the kubernetes source's services and
    /// `[[http]]` entries): the serving config becomes the file's with `cluster` appended,
    /// validated, compiled and applied like a reload (what it removes drains the same way).
    /// A part that clashes with the file's names or addresses, breaks a rule or does not
    /// compile changes nothing: it is counted, logged and kept for `/state` while the previous
    /// table keeps serving. The same part again changes nothing and returns the serving
    /// generation.
    pub fn set_cluster(&self, cluster: ClusterPart) -> Result<u64, ReloadError> {
        let mut inner = self.lock();
        if cluster == inner.cluster && inner.cluster_status.last_error.is_none() {
            return Ok(inner.generation);
        }
        let merged = merge(&inner.file, &cluster);
        let text = inner.text.clone();
        let result = check_merged(&inner.file, &cluster, &merged, &self.path, &text)
            .and_then(|()| self.publish(&mut inner, merged, text));
        let st = &mut inner.cluster_status;
        match &result {
            Ok(g) => {
                st.applied += 1;
                st.last_error = None;
                st.last_ok_unix = Some(unix_now());
                st.services = cluster.services.len();
                st.http = cluster.http.len();
                tracing::info!(
                    generation = g,
                    services = cluster.services.len(),
                    http = cluster.http.len(),
                    "cluster state applied"
                );
                inner.cluster = cluster;
            }
            Err(e) => {
                st.rejected += 1;
                st.last_error = Some(e.to_string());
                tracing::error!(error = %e, "cluster change rejected; the previous tables keep serving");
            }
        }
        result
    }

    /// What the cluster's changes did (for `/state`).
    pub fn cluster_status(&self) -> ClusterStatus {
        self.lock().cluster_status.clone()
    }

    /// The cluster's part of the serving config.
    pub fn cluster(&self) -> ClusterPart {
        self.lock().cluster.clone()
    }

    /// Per-backend passive signals (resets, unanswered SYNs) summed over the workers, for the
    /// backends whose service has passive ejection.
    pub fn passive_samples(&self) -> HashMap<BackendKey, PassiveSample> {
        let snaps = self.snapshots();
        let inner = self.lock();
        let mut out = HashMap::new();
        for s in inner.config.services.iter().filter(|s| s.passive.is_some()) {
            for b in s.pools.iter().flat_map(|p| &p.backends) {
                let key = BackendKey::of(s, b);
                let Some(slot) = inner.slots.backend_slot(&key) else {
                    continue;
                };
                let mut sample = PassiveSample::default();
                for snap in &snaps {
                    if let Some(c) = snap.counters.backends.get(slot as usize) {
                        sample.add(c);
                    }
                }
                out.insert(key, sample);
            }
        }
        out
    }

    /// Compiles `cfg` as a reload would, without publishing (benchmarks measure compile time).
    pub fn compile_probe(&self, cfg: &Config) -> Result<(), CompileError> {
        let mut inner = self.lock();
        let g = inner.generation + 1;
        inner.compile(Some(cfg), None, g).map(drop)
    }

    /// Applies health results (and the checker's running count of transitions); rebuilds the
    /// table when a backend's health changed.
    pub fn set_health(
        &self,
        mut health: HashMap<BackendKey, Health>,
        transitions_total: u64,
    ) -> Option<u64> {
        // Unchecked is what an absent entry means: keep only what can change a weight.
        health.retain(|_, h| *h != Health::Unchecked);
        let mut inner = self.lock();
        inner.health_transitions = transitions_total;
        if inner.health == health {
            return None;
        }
        inner.health = health;
        match self.rebuild(&mut inner) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::error!(error = %e, "could not rebuild the table after a health change");
                None
            }
        }
    }

    /// Lets go of the removed services and backends whose `drain_timeout` has passed by `now`
    /// (their remaining flows end at their next packet); the new generation when the table
    /// changed. The control loop calls it every tick.
    pub fn expire_draining(&self, now: Instant) -> Option<u64> {
        let mut inner = self.lock();
        let before = inner.draining.clone();
        // Only backends of live services end: rebuild those services alone.
        let services: Option<Vec<usize>> =
            inner.draining.expiring_backends(now).and_then(|names| {
                names
                    .iter()
                    .map(|n| inner.config.services.iter().position(|s| s.name == *n))
                    .collect()
            });
        if !inner.draining.expire(now) {
            return None;
        }
        let rebuilt = match services {
            Some(idxs) => self
                .publish_entries(&mut inner, &idxs, &[])
                .map_err(|e| e.to_string()),
            None => self.rebuild(&mut inner),
        };
        match rebuilt {
            Ok(g) => {
                tracing::info!(generation = g, "drained services and backends removed");
                Some(g)
            }
            Err(e) => {
                // Try again at the next tick.
                inner.draining = before;
                tracing::error!(error = %e, "could not rebuild the table after a drain ended");
                None
            }
        }
    }

    /// Compiles the serving config with the current overrides and health and publishes it; the
    /// error, located in the serving config's text, when it cannot be.
    fn rebuild(&self, inner: &mut Inner) -> Result<u64, String> {
        let g = inner.generation + 1;
        let (next, _) = inner
            .compile(None, None, g)
            .map_err(|e| inner.report(&self.path, &e))?;
        self.apply(inner, next, None).map_err(|e| e.to_string())
    }
}

impl Inner {
    /// A compile error of the serving config, located in its text.
    fn report(&self, path: &Path, e: &CompileError) -> String {
        ConfigReport::from_compile(path, &self.text, e).to_string()
    }

    /// Compiles `cfg` (`None`: the serving config) with the current overrides and health and
    /// `draining` (`None`: what drains now), stamped `generation`: the table to publish and the
    /// settings workers start with.
    fn compile(
        &mut self,
        cfg: Option<&Config>,
        draining: Option<&DrainSet>,
        generation: u64,
    ) -> Result<(Next, Start), CompileError> {
        let Inner {
            config,
            overrides,
            health,
            slots,
            cache,
            draining: draining_now,
            ..
        } = self;
        let cfg = cfg.unwrap_or(config);
        let draining = draining.unwrap_or(draining_now).draining();
        let failing = failing_open(cfg, overrides, health);
        let adjust = |key: &BackendKey, w: u32| runtime_weight(overrides, health, &failing, key, w);
        let mut ctx = Context {
            adjust: &adjust,
            draining: &draining,
            slots,
            cache,
        };
        let Compiled {
            table,
            conntrack,
            workers,
            run,
            next_hops,
            http,
        } = compile_with(cfg, generation, &mut ctx)?;
        let next = Next {
            table,
            next_hops,
            failing,
            http,
        };
        let start = Start {
            conntrack,
            workers,
            run,
        };
        Ok((next, start))
    }
}

/// Backend `key`'s weight in the table, from its configured weight `w`, its operator override,
/// its health and whether its service fails open (`None`: out of the table).
fn runtime_weight(
    overrides: &BTreeMap<BackendKey, Override>,
    health: &HashMap<BackendKey, Health>,
    failing: &HashSet<String>,
    key: &BackendKey,
    w: u32,
) -> Option<u32> {
    effective_weight(
        w,
        overrides.get(key).unwrap_or(&Override::default()),
        health.get(key).unwrap_or(&Health::Unchecked),
        failing.contains(&key.service),
    )
}

/// The cluster's part of the desired state: what the kubernetes source's objects mean, as
/// lb.toml entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterPart {
    /// L4 services (LoadBalancer Services).
    pub services: Vec<crate::config::Service>,
    /// HTTP services (Ingress, Gateway listeners).
    pub http: Vec<crate::config::Http>,
}

impl ClusterPart {
    /// True when the cluster adds nothing.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.http.is_empty()
    }
}

/// What the cluster's changes did, for `/state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClusterStatus {
    /// Changes applied.
    pub applied: u64,
    /// Of the changes applied, those that replaced backends only (applied in time proportional
    /// to them, not to the whole cluster).
    pub patched: u64,
    /// Changes rejected (the previous tables kept serving).
    pub rejected: u64,
    /// The last rejection, until a change is applied.
    pub last_error: Option<String>,
    /// Seconds since the Unix epoch of the last applied change.
    pub last_ok_unix: Option<u64>,
    /// Services the cluster adds now.
    pub services: usize,
    /// `[[http]]` entries the cluster adds now.
    pub http: usize,
}

/// The file's config with the cluster's entries appended.
fn merge(file: &Config, cluster: &ClusterPart) -> Config {
    let mut c = file.clone();
    c.services.extend(cluster.services.iter().cloned());
    c.http.extend(cluster.http.iter().cloned());
    c
}

/// Checks `merged` (`file` plus `cluster`): a cluster name that the file uses already, then
/// every rule. A problem in a cluster entry names it (it has no place in the file); one in a
/// file entry is placed in `text`.
fn check_merged(
    file: &Config,
    cluster: &ClusterPart,
    merged: &Config,
    path: &Path,
    text: &str,
) -> Result<(), ReloadError> {
    let mut lines = Vec::new();
    for s in &cluster.services {
        if file.services.iter().any(|f| f.name == s.name) {
            lines.push(format!(
                "cluster service {}: lb.toml has a service of that name",
                s.name
            ));
        }
    }
    for h in &cluster.http {
        if file.http.iter().any(|f| f.name == h.name) {
            lines.push(format!(
                "cluster http {}: lb.toml has an [[http]] of that name",
                h.name
            ));
        }
    }
    if !lines.is_empty() {
        return Err(ReloadError::Cluster(lines.join("\n")));
    }
    let problems = merged.validate();
    if problems.is_empty() {
        return Ok(());
    }
    let (nf, nh) = (file.services.len(), file.http.len());
    let mut in_file = Vec::new();
    for p in problems {
        let cluster_entry = entry_index(&p.path, "services")
            .filter(|&i| i >= nf)
            .and_then(|i| merged.services.get(i))
            .map(|s| format!("cluster service {}", s.name))
            .or_else(|| {
                entry_index(&p.path, "http")
                    .filter(|&i| i >= nh)
                    .and_then(|i| merged.http.get(i))
                    .map(|h| format!("cluster http {}", h.name))
            });
        match cluster_entry {
            Some(who) => lines.push(match &p.hint {
                Some(h) => format!("{who}: {} (hint: {h})", p.message),
                None => format!("{who}: {}", p.message),
            }),
            None => in_file.push(p),
        }
    }
    if !in_file.is_empty() {
        // A file entry that breaks a rule only beside the cluster's (an address both use).
        lines.push(format!(
            "beside the cluster's entries: {}",
            ConfigReport::from_problems(path, text, &in_file)
        ));
    }
    Err(ReloadError::Cluster(lines.join("\n")))
}

/// `N` of a problem path `{section}[N]...`.
fn entry_index(path: &str, section: &str) -> Option<usize> {
    let rest = path.strip_prefix(section)?.strip_prefix('[')?;
    rest[..rest.find(']')?].parse().ok()
}

/// The table the workers' `ArcSwap` holds until the first one is applied (no worker runs on it).
fn placeholder() -> RoutingTable {
    let local = Local {
        mac: [0; 6],
        addrs: Vec::new(),
        mtu: 1500,
        snat_ports: (1024, 65535),
        more: Vec::new(),
    };
    RoutingTable::build(0, local, Vec::new(), &mut MaglevCache::default())
        .expect("an empty table builds")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

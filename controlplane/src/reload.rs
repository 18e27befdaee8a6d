//! The running control plane: the serving config, runtime overrides and health, and the one path
//! that turns them into a routing table and swaps it into the workers.
//!
//! Every change — a reloaded file, a health transition, an operator's command — goes through
//! [`ControlPlane::rebuild`]-style steps: compile into a new table with the next generation, and only
//! if that succeeds, swap it in. A file that fails to parse, validate or compile changes nothing:
//! the error is logged, counted and kept for the admin API while the previous table keeps serving.
//! Replaced tables are kept here until every worker has moved to a newer generation, so the last
//! reference to a table is dropped on the control plane, never inside a worker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use dataplane::table::MaglevCache;
use dataplane::worker::{Snapshot, WorkerHandle};
use dataplane::RoutingTable;

use crate::compile::{compile_with, CompileError, Compiled, Context, StatSlots, NEIGHBOR_SLOTS};
use crate::config::{self, AllDown, BackendKind, Config};
use crate::diag::{self, ConfigReport};
use crate::health::PassiveSample;
use crate::state::{
    effective_weight, AdminState, BackendKey, BackendStatus, Control, Health, Observation, OpError,
    Override, ReloadStatus, ServiceStatus,
};
use dataplane::neighbor::NeighborCache;

/// Reads and parses a config file: the config and its text (for locating compile problems), or
/// the full report, one `file:line:column: message` per line.
pub type Loader = dyn Fn(&Path) -> Result<(Config, String), String> + Send + Sync;

/// The default loader: [`diag::load_checked`].
pub fn load_file(path: &Path) -> Result<(Config, String), String> {
    diag::load_checked(path).map_err(|r| r.to_string())
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
    config: Config,
    /// The serving config's text, so problems found in a later rebuild point into it.
    text: String,
    generation: u64,
    slots: StatSlots,
    cache: MaglevCache,
    overrides: BTreeMap<BackendKey, Override>,
    health: HashMap<BackendKey, Health>,
    failing_open: HashSet<String>,
    reload: ReloadStatus,
    health_transitions: u64,
    conntrack_capacity: usize,
    /// Tables replaced but possibly still read by a worker.
    retired: Vec<Arc<RoutingTable>>,
    /// Next-hop MACs learned by the workers, shared by every generation.
    neighbors: Arc<NeighborCache>,
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
#[error("{0}")]
pub struct StartError(pub ConfigReport);

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
            config,
            text,
            generation: 0,
            slots: StatSlots::default(),
            cache: MaglevCache::default(),
            overrides: BTreeMap::new(),
            health: HashMap::new(),
            failing_open: HashSet::new(),
            reload: ReloadStatus::default(),
            health_transitions: 0,
            conntrack_capacity: 0,
            retired: Vec::new(),
            neighbors: Arc::new(NeighborCache::new(NEIGHBOR_SLOTS)),
        };
        let Compiled {
            table,
            conntrack,
            workers,
            run,
            ..
        } = inner
            .compile(None, 1)
            .map_err(|e| StartError(ConfigReport::from_compile(path, &inner.text, &e)))?;
        inner.generation = 1;
        inner.conntrack_capacity = conntrack.capacity;
        let cp = ControlPlane {
            path: path.to_path_buf(),
            loader,
            table: Arc::new(ArcSwap::from_pointee(table)),
            inner: Mutex::new(inner),
            workers: Mutex::new(Vec::new()),
            ready: AtomicBool::new(false),
        };
        Ok((
            cp,
            Start {
                conntrack,
                workers,
                run,
            },
        ))
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

    /// Drops replaced tables no worker can still be reading, and the Maglev tables only they used.
    pub fn release_retired(&self) -> usize {
        let Some(adopted) = self.adopted_generation() else {
            return 0;
        };
        let mut inner = self.lock();
        let before = inner.retired.len();
        inner.retired.retain(|t| t.generation >= adopted);
        let released = before - inner.retired.len();
        if released > 0 {
            inner.cache.retain_used();
            // Next hops no table still uses give their slots back (no worker reads old tables).
            let serving = self.table.load();
            inner.neighbors.retain(|a| {
                serving.next_hop_by_addr(a).is_some()
                    || inner
                        .retired
                        .iter()
                        .any(|t| t.next_hop_by_addr(a).is_some())
            });
        }
        released
    }

    /// Rereads the config file: parse, validate, compile, swap. On any error the serving table is
    /// untouched; the error is counted, logged and kept for `/state`.
    pub fn reload_file(&self) -> Result<u64, String> {
        let loaded = (self.loader)(&self.path);
        let mut inner = self.lock();
        let result = loaded.and_then(|(cfg, text)| {
            let notes = restart_only_changes(&inner.config, &cfg);
            for n in &notes {
                tracing::warn!(change = %n, "this change needs a restart; the rest of the file is applied");
            }
            let table = inner
                .next_table(Some(&cfg))
                .map_err(|e| ConfigReport::from_compile(&self.path, &text, &e).to_string())?;
            // The replaced config (every service and backend) is freed after the swap, not
            // before: the workers need not wait for it.
            let old = (
                std::mem::replace(&mut inner.config, cfg),
                std::mem::replace(&mut inner.text, text),
            );
            let g = self.swap(&mut inner, table);
            drop(old);
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
                inner.reload.last_error = Some(e.clone());
                tracing::error!(path = %self.path.display(), error = %e, "reload rejected; the previous configuration keeps serving");
            }
        }
        result
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

    /// Compiles `cfg` as a reload would, without swapping (benchmarks measure compile time).
    pub fn compile_probe(&self, cfg: &Config) -> Result<(), String> {
        let mut inner = self.lock();
        inner
            .next_table(Some(cfg))
            .map(drop)
            .map_err(|e| e.to_string())
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
        match inner.next_table(None) {
            Ok(t) => Some(self.swap(&mut inner, t)),
            Err(e) => {
                let e = inner.report(&self.path, &e);
                tracing::error!(error = %e, "could not rebuild the table after a health change");
                None
            }
        }
    }

    fn swap(&self, inner: &mut Inner, table: RoutingTable) -> u64 {
        let g = table.generation;
        inner.generation = g;
        let old = self.table.swap(Arc::new(table));
        inner.retired.push(old);
        // Idle workers sleep up to a millisecond: wake them so the new table is served now.
        for h in self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            h.wake();
        }
        g
    }

    fn update_override(
        &self,
        key: &BackendKey,
        f: impl FnOnce(&mut Override),
    ) -> Result<u64, OpError> {
        let mut inner = self.lock();
        if !config_has(&inner.config, key) {
            return Err(OpError::NoBackend(key.to_string()));
        }
        let before = inner.overrides.get(key).copied();
        let mut ov = before.unwrap_or_default();
        f(&mut ov);
        if ov.is_empty() {
            inner.overrides.remove(key);
        } else {
            inner.overrides.insert(key.clone(), ov);
        }
        match inner.next_table(None) {
            Ok(t) => {
                tracing::info!(backend = %key, weight = ?ov.weight, state = ?ov.admin, "runtime override");
                Ok(self.swap(&mut inner, t))
            }
            Err(e) => {
                let e = inner.report(&self.path, &e);
                match before {
                    Some(b) => inner.overrides.insert(key.clone(), b),
                    None => inner.overrides.remove(key),
                };
                Err(OpError::Compile(e))
            }
        }
    }
}

impl Inner {
    /// A compile error of the serving config, located in its text.
    fn report(&self, path: &Path, e: &CompileError) -> String {
        ConfigReport::from_compile(path, &self.text, e).to_string()
    }

    /// Compiles `cfg` (`None`: the serving config) with the current overrides and health,
    /// stamped `generation`; on success, remembers which services fail open in it.
    fn compile(&mut self, cfg: Option<&Config>, generation: u64) -> Result<Compiled, CompileError> {
        let Inner {
            config,
            overrides,
            health,
            slots,
            cache,
            neighbors,
            ..
        } = self;
        let cfg = cfg.unwrap_or(config);
        let failing = failing_open(cfg, overrides, health);
        let adjust = |key: &BackendKey, w: u32| {
            effective_weight(
                w,
                overrides.get(key).unwrap_or(&Override::default()),
                health.get(key).unwrap_or(&Health::Unchecked),
                failing.contains(&key.service),
            )
        };
        let mut ctx = Context {
            adjust: &adjust,
            slots,
            cache,
        };
        let mut compiled = compile_with(cfg, generation, &mut ctx)?;
        if let Some(hops) = &compiled.next_hops {
            compiled
                .table
                .set_neighbors(hops.spec(neighbors.clone()))
                .map_err(|e| CompileError {
                    problems: vec![crate::diag::Problem::new("dataplane", e.to_string()).hint(
                        "next hops are resolved from our own addresses of their family: add one to [dataplane] addresses",
                    )],
                })?;
        }
        self.failing_open = failing;
        Ok(compiled)
    }

    /// The next generation's table for `cfg` (`None`: the serving config).
    fn next_table(&mut self, cfg: Option<&Config>) -> Result<RoutingTable, CompileError> {
        let g = self.generation + 1;
        self.compile(cfg, g).map(|c| c.table)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// True when `key` names a backend of the config.
fn config_has(cfg: &Config, key: &BackendKey) -> bool {
    cfg.services.iter().any(|s| {
        s.name == key.service
            && s.pools
                .iter()
                .flat_map(|p| &p.backends)
                .any(|b| b.addr == key.addr && b.port.unwrap_or(0) == key.port)
    })
}

/// Services whose every operator-enabled backend is down and whose policy is to fail open.
fn failing_open(
    cfg: &Config,
    overrides: &BTreeMap<BackendKey, Override>,
    health: &HashMap<BackendKey, Health>,
) -> HashSet<String> {
    let mut out = HashSet::new();
    for s in &cfg.services {
        if s.all_down != AllDown::FailOpen {
            continue;
        }
        let mut any = false;
        let mut all_down = true;
        for b in s.pools.iter().flat_map(|p| &p.backends) {
            let key = BackendKey::of(s, b);
            if overrides.get(&key).map(|o| o.admin) == Some(AdminState::Disabled) {
                continue;
            }
            any = true;
            if health.get(&key).is_none_or(Health::serves) {
                all_down = false;
            }
        }
        if any && all_down {
            out.insert(s.name.clone());
        }
    }
    out
}

/// Settings a running dataplane cannot change (ports, workers, conntrack sizing), in words.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (&old.dataplane, &new.dataplane);
    let mut out = Vec::new();
    let mut note = |name: &str, changed: bool| {
        if changed {
            out.push(format!("dataplane.{name}"));
        }
    };
    note("port", a.port != b.port);
    note("interface", a.interface != b.interface);
    note("workers", a.workers != b.workers);
    note("cores", a.cores != b.cores);
    note("idle", a.idle != b.idle);
    note("xdp_mode", a.xdp_mode != b.xdp_mode);
    if old.conntrack != new.conntrack {
        out.push("conntrack".into());
    }
    if old.admin != new.admin {
        out.push("admin".into());
    }
    if old.logging != new.logging {
        out.push("logging".into());
    }
    out
}

fn kind_name(k: BackendKind) -> &'static str {
    match k {
        BackendKind::Pod => "pod",
        BackendKind::Vm => "vm",
    }
}

fn mode_name(m: config::Mode) -> &'static str {
    match m {
        config::Mode::FullNat => "fullnat",
        config::Mode::Nat => "nat",
        config::Mode::DsrIpip => "dsr-ipip",
        config::Mode::DsrGue => "dsr-gue",
        config::Mode::Dr => "dr",
    }
}

impl Control for ControlPlane {
    fn observe(&self) -> Observation {
        let workers = self.snapshots();
        let inner = self.lock();
        let mut services = Vec::with_capacity(inner.config.services.len());
        for s in &inner.config.services {
            let ranges: Vec<(u16, u16)> = if s.ports.is_empty() {
                vec![(0, 0)]
            } else {
                s.ports.iter().map(|r| (r.lo, r.hi)).collect()
            };
            let failing = inner.failing_open.contains(&s.name);
            let mut backends = Vec::new();
            for p in &s.pools {
                for b in &p.backends {
                    let key = BackendKey::of(s, b);
                    let over = inner.overrides.get(&key).copied().unwrap_or_default();
                    let health = inner.health.get(&key).cloned().unwrap_or_default();
                    let configured = p.weight.saturating_mul(b.weight);
                    backends.push(BackendStatus {
                        weight: effective_weight(configured, &over, &health, failing),
                        stat: inner.slots.backend_slot(&key),
                        key,
                        pool: p.name.clone(),
                        mode: mode_name(p.mode),
                        kind: kind_name(b.kind),
                        configured_weight: configured,
                        health,
                        over,
                    });
                }
            }
            services.push(ServiceStatus {
                name: s.name.clone(),
                vip: s.vip,
                protocol: match s.protocol {
                    config::Protocol::Tcp => "tcp",
                    config::Protocol::Udp => "udp",
                },
                ports: s.ports.iter().map(|r| r.to_string()).collect(),
                failing_open: failing,
                backends,
                stats: ranges
                    .iter()
                    .filter_map(|&(lo, hi)| inner.slots.service_slot(&s.name, lo, hi))
                    .collect(),
            });
        }
        Observation {
            generation: inner.generation,
            config_path: self.path.display().to_string(),
            services,
            reload: inner.reload.clone(),
            health_transitions: inner.health_transitions,
            workers,
            conntrack_capacity: inner.conntrack_capacity,
        }
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn set_weight(&self, key: &BackendKey, weight: u32) -> Result<u64, OpError> {
        self.update_override(key, |o| o.weight = Some(weight))
    }

    fn set_admin(&self, key: &BackendKey, state: AdminState) -> Result<u64, OpError> {
        self.update_override(key, |o| o.admin = state)
    }

    fn clear(&self, key: &BackendKey) -> Result<u64, OpError> {
        self.update_override(key, |o| *o = Override::default())
    }

    fn reload(&self) -> Result<u64, String> {
        self.reload_file()
    }
}

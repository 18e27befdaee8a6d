//! The checker: one probe task per checked backend on tokio, its results fed through the rules,
//! every change of health reported as a [`Transition`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use super::rules::same_state;
use super::Health;
use super::{
    probe, ActiveState, BackendState, PassiveSample, PassiveState, ProbeResult, Transition,
    MAX_WAIT, MIN_INTERVAL,
};
use crate::config::BackendKey;
use crate::config::{Config, HealthCheck, Passive, Service};

/// One backend to check, as the caller resolved it from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The backend's name.
    pub key: BackendKey,
    /// Where to probe: the backend address with the check's port, else the backend's port, else
    /// the service's first port (see [`probe_port`]); port 0 means none could be chosen and
    /// every probe fails saying so.
    pub probe: SocketAddr,
    /// The active check; `None` means none.
    pub check: Option<HealthCheck>,
    /// Passive ejection; `None` means none.
    pub passive: Option<Passive>,
}

/// The port an active check probes: the check's `port`, else the backend's, else the first port
/// of the service; `None` when the service serves every port and neither names one.
pub fn probe_port(
    check: &HealthCheck,
    backend_port: Option<u16>,
    service: &Service,
) -> Option<u16> {
    check
        .port
        .or(backend_port)
        .or_else(|| service.ports.first().map(|r| r.lo))
        .filter(|&p| p != 0)
}

/// Every backend of every service as a [`Target`], keyed as the state names them (port 0 when
/// the backend keeps the client's port). A backend listed twice in one service appears once.
pub fn targets(config: &Config) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in &config.services {
        for p in &s.pools {
            for b in &p.backends {
                let key = BackendKey::of(s, b);
                if !seen.insert(key.clone()) {
                    continue;
                }
                let port = s
                    .health_check
                    .as_ref()
                    .and_then(|c| probe_port(c, b.port, s))
                    .unwrap_or(0);
                out.push(Target {
                    key,
                    probe: SocketAddr::new(b.addr, port),
                    check: s.health_check.clone(),
                    passive: s.passive.clone(),
                });
            }
        }
    }
    // L7 backends: the upstream's check on the check's port, else the backend's. Passive
    // ejection reads the L4 workers' counters, which never see them.
    for h in &config.http {
        for up in &h.upstreams {
            for b in &up.backends {
                let key = BackendKey::of_http(h, up, b);
                if !seen.insert(key.clone()) {
                    continue;
                }
                let port = up
                    .health_check
                    .as_ref()
                    .and_then(|c| c.port)
                    .unwrap_or(b.port);
                out.push(Target {
                    key,
                    probe: SocketAddr::new(b.addr, port),
                    check: up.health_check.clone(),
                    passive: None,
                });
            }
        }
    }
    out
}

/// A random delay in `[0, max]`, so probes of many backends do not align.
fn jitter(max: Duration) -> Duration {
    let nanos = u64::try_from(max.min(MAX_WAIT).as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// Called with the transitions of one event.
type OnChange = dyn Fn(Vec<Transition>) + Send + Sync;

struct Slot {
    target: Target,
    state: BackendState,
    /// Identifies the probe task that may record results into this slot: a task replaced by a
    /// reload (or of a removed and re-added backend) finds another number and stops.
    generation: u64,
    task: Option<AbortHandle>,
    /// The latest probe could not run on this host; logged once until a probe runs again.
    local_failing: bool,
}

#[derive(Default)]
struct Slots {
    map: HashMap<BackendKey, Slot>,
    next_generation: u64,
}

struct Inner {
    slots: Mutex<Slots>,
    on_change: Box<OnChange>,
    serving_changes: AtomicU64,
    /// Probes that failed on this host (shared with whoever shows it: the admin API).
    local_errors: Arc<AtomicU64>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        // A panic elsewhere cannot leave the map half-updated in a way that matters more than
        // stopping health checking would.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts and delivers transitions; the caller has released the lock.
    fn report(&self, transitions: Vec<Transition>) {
        if transitions.is_empty() {
            return;
        }
        let n = transitions.iter().filter(|t| t.changes_serving()).count();
        self.serving_changes
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        (self.on_change)(transitions);
    }

    /// Records a probe result; false when the task is stale and must stop.
    fn record(&self, key: &BackendKey, generation: u64, result: ProbeResult) -> bool {
        let mut slots = self.lock();
        let Some(slot) = slots.map.get_mut(key) else {
            return false;
        };
        if slot.generation != generation {
            return false;
        }
        // Out of descriptors, buffers or ports here says nothing about the backend: unknown, so
        // it keeps its state (an exhausted host would otherwise take every backend down).
        if let Some(e) = result.as_ref().err().filter(|e| e.is_local()) {
            self.local_errors.fetch_add(1, Ordering::Relaxed);
            if !slot.local_failing {
                slot.local_failing = true;
                tracing::warn!(backend = %key, error = %e, "health probe could not run on this host; the backend keeps its state");
            }
            return true;
        }
        slot.local_failing = false;
        let old = slot.state.health();
        let Some(active) = slot.state.active.as_mut() else {
            return false;
        };
        active.record(result);
        let new = slot.state.health();
        drop(slots);
        if !same_state(&old, &new) {
            self.report(vec![Transition {
                key: key.clone(),
                old,
                new,
            }]);
        }
        true
    }
}

/// Runs the health checks of a set of targets on a tokio runtime and keeps their combined health.
///
/// Dropping it stops every probe task.
pub struct Checker {
    inner: Arc<Inner>,
    runtime: Handle,
    /// The runtime [`Checker::start`] made for the probes alone, shut down with the checker.
    own: Option<tokio::runtime::Runtime>,
}

impl Checker {
    /// A checker with no targets whose probes run on `runtime`. `on_change` receives the
    /// transitions of each event (a probe result, a reload, a passive tick), never empty; it is
    /// called without the checker's lock held, from a probe task or from the thread calling
    /// [`Checker::set_targets`] / [`Checker::passive_tick`], and must not block (send on a
    /// channel or wake a task). It may call [`Checker::snapshot`].
    pub fn new(
        runtime: Handle,
        on_change: impl Fn(Vec<Transition>) + Send + Sync + 'static,
    ) -> Self {
        Checker {
            inner: Arc::new(Inner {
                slots: Mutex::new(Slots::default()),
                on_change: Box::new(on_change),
                serving_changes: AtomicU64::new(0),
                local_errors: Arc::default(),
            }),
            runtime,
            own: None,
        }
    }

    /// A checker whose probes run on a runtime of their own (one thread, `lb-health`), so that
    /// nothing else (a control loop waiting for a lock, an admin request) can hold a probe back:
    /// a probe held back past its timeout fails although the backend would have answered.
    pub fn start(
        on_change: impl Fn(Vec<Transition>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let own = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("lb-health")
            .enable_all()
            .build()?;
        let mut checker = Checker::new(own.handle().clone(), on_change);
        checker.own = Some(own);
        Ok(checker)
    }

    /// Replaces the set of targets (on start and on every reload). A backend whose key stays
    /// keeps its health; its probe schedule is kept too when its probe address and check are
    /// unchanged, else restarted with the new check (keeping the verdict, with the new rise and
    /// fall). Its passive state is kept when the passive config is unchanged, else restarted.
    /// New backends start `Unchecked` and are probed after a random delay up to `jitter`;
    /// removed ones stop being probed. A key given twice: the last one counts.
    pub fn set_targets(&self, targets: Vec<Target>) {
        let mut wanted: HashMap<BackendKey, Target> = HashMap::with_capacity(targets.len());
        for t in targets {
            wanted.insert(t.key.clone(), t);
        }
        let mut transitions = Vec::new();
        let mut slots = self.inner.lock();
        let mut old = std::mem::take(&mut slots.map);
        for (key, target) in wanted {
            let slot = match old.remove(&key) {
                Some(mut slot) => {
                    let before = slot.state.health();
                    let probe_kept =
                        slot.target.probe == target.probe && slot.target.check == target.check;
                    if !probe_kept {
                        if let Some(task) = slot.task.take() {
                            task.abort();
                        }
                        slot.state.active = target.check.as_ref().map(|c| {
                            let mut a = slot
                                .state
                                .active
                                .take()
                                .unwrap_or_else(|| ActiveState::new(c.rise, c.fall));
                            a.set_thresholds(c.rise, c.fall);
                            a
                        });
                        slots.next_generation += 1;
                        slot.generation = slots.next_generation;
                        slot.task = self.spawn(&target, slot.generation);
                    }
                    if slot.target.passive != target.passive {
                        slot.state.passive = target.passive.clone().map(PassiveState::new);
                    }
                    slot.target = target;
                    let after = slot.state.health();
                    if !same_state(&before, &after) {
                        transitions.push(Transition {
                            key: key.clone(),
                            old: before,
                            new: after,
                        });
                    }
                    slot
                }
                None => {
                    slots.next_generation += 1;
                    let generation = slots.next_generation;
                    Slot {
                        state: BackendState {
                            active: target
                                .check
                                .as_ref()
                                .map(|c| ActiveState::new(c.rise, c.fall)),
                            passive: target.passive.clone().map(PassiveState::new),
                        },
                        task: self.spawn(&target, generation),
                        target,
                        generation,
                        local_failing: false,
                    }
                }
            };
            slots.map.insert(key, slot);
        }
        drop(slots);
        for (_, slot) in old {
            if let Some(task) = slot.task {
                task.abort();
            }
        }
        self.inner.report(transitions);
    }

    fn spawn(&self, target: &Target, generation: u64) -> Option<AbortHandle> {
        let check = target.check.clone()?;
        let task = self.runtime.spawn(probe_loop(
            Arc::downgrade(&self.inner),
            target.key.clone(),
            generation,
            target.probe,
            check,
        ));
        Some(task.abort_handle())
    }

    /// Feeds the passive signals: each backend's cumulative totals (summed over workers) at
    /// `now`. Ends back-offs that are over, also for backends missing from `samples`.
    pub fn passive_tick(&self, now: Instant, samples: &HashMap<BackendKey, PassiveSample>) {
        let mut transitions = Vec::new();
        let mut slots = self.inner.lock();
        for (key, slot) in slots.map.iter_mut() {
            if slot.state.passive.is_none() {
                continue;
            }
            let before = slot.state.health();
            if let Some(passive) = slot.state.passive.as_mut() {
                match samples.get(key) {
                    Some(s) => passive.observe(now, *s),
                    None => passive.expire(now),
                }
            }
            let after = slot.state.health();
            if !same_state(&before, &after) {
                transitions.push(Transition {
                    key: key.clone(),
                    old: before,
                    new: after,
                });
            }
        }
        drop(slots);
        self.inner.report(transitions);
    }

    /// The combined health of every target.
    pub fn snapshot(&self) -> HashMap<BackendKey, Health> {
        self.inner
            .lock()
            .map
            .iter()
            .map(|(k, s)| (k.clone(), s.state.health()))
            .collect()
    }

    /// The combined health of one target, if it is one.
    pub fn health(&self, key: &BackendKey) -> Option<Health> {
        self.inner.lock().map.get(key).map(|s| s.state.health())
    }

    /// The reason of a target's latest failed active probe, even while it is still up.
    pub fn last_failure(&self, key: &BackendKey) -> Option<String> {
        let slots = self.inner.lock();
        let active = slots.map.get(key)?.state.active.as_ref()?;
        active.last_failure().map(str::to_string)
    }

    /// Transitions into or out of service since the checker was made (for
    /// `lb_health_transitions_total`).
    pub fn transitions_total(&self) -> u64 {
        self.inner.serving_changes.load(Ordering::Relaxed)
    }

    /// Probes that could not run on this host since the checker was made (for
    /// `lb_health_probe_local_errors_total`); they left their backend's state as it was.
    pub fn local_errors(&self) -> Arc<AtomicU64> {
        self.inner.local_errors.clone()
    }

    /// Stops every probe task and forgets every target.
    pub fn stop(&self) {
        let mut slots = self.inner.lock();
        for (_, slot) in slots.map.drain() {
            if let Some(task) = slot.task {
                task.abort();
            }
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop();
        if let Some(own) = self.own.take() {
            // Does not wait, so it may run inside another runtime too.
            own.shutdown_background();
        }
    }
}

/// Probes one target every `interval` plus jitter (measured from the start of the previous probe)
/// until the checker is gone or the slot belongs to another task.
async fn probe_loop(
    inner: Weak<Inner>,
    key: BackendKey,
    generation: u64,
    addr: SocketAddr,
    check: HealthCheck,
) {
    let interval = check.interval.clamp(MIN_INTERVAL, MAX_WAIT);
    let mut next = tokio::time::Instant::now() + jitter(check.jitter);
    loop {
        tokio::time::sleep_until(next).await;
        let started = tokio::time::Instant::now();
        let result = probe(addr, &check).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if !inner.record(&key, generation, result) {
            return;
        }
        drop(inner);
        next = started + interval + jitter(check.jitter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_upstream_backends_are_targets_with_their_upstreams_check() {
        let text = r#"
[dataplane]
mac = "02:00:00:00:00:01"

[[http]]
name = "site"
listen = ["198.18.0.10:80"]

[[http.upstreams]]
name = "pods"
backends = [{ addr = "198.18.1.10", port = 8080 }, { addr = "198.18.1.11", port = 8080 }]
[http.upstreams.health_check]
kind = "http"
port = 9000

[[http.upstreams]]
name = "plain"
backends = [{ addr = "198.18.1.12", port = 8080 }]
"#;
        let cfg = Config::from_toml_str(text, std::path::Path::new("t.toml")).unwrap();
        let t = targets(&cfg);
        let names: Vec<String> = t.iter().map(|t| t.key.to_string()).collect();
        assert_eq!(
            names,
            [
                "site/pods/198.18.1.10:8080",
                "site/pods/198.18.1.11:8080",
                "site/plain/198.18.1.12:8080"
            ]
        );
        // The check's port wins over the backend's; no check: none (always up); never passive.
        assert_eq!(t[0].probe, "198.18.1.10:9000".parse().unwrap());
        assert!(t[0]
            .check
            .as_ref()
            .is_some_and(|c| c.kind == crate::config::CheckKind::Http));
        assert_eq!(t[2].check, None);
        assert!(t.iter().all(|t| t.passive.is_none()));
    }
}

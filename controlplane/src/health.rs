//! Health checking: active TCP/HTTP probes with rise/fall hysteresis, and passive ejection on
//! signals the dataplane counts (backend resets, unanswered SYNs).
//!
//! The decisions are a pure core ([`ActiveState`], [`PassiveState`], [`BackendState`]) fed with
//! probe results and counter samples, so the rules are tested without sockets or clocks. The
//! probes ([`probe`]) and the [`Checker`] that schedules them run on the control plane's tokio
//! runtime; the checker reports every change of a backend's health as a [`Transition`] so the
//! caller can log it, count it and rebuild the table.
//!
//! Initial policy: a backend with an active check is [`Health::Unchecked`] (served) until its
//! first probe finishes, and that first result decides at once: a success makes it `Up`, a
//! failure `Down`. From then on `fall` consecutive failures take an up backend down and `rise`
//! consecutive successes bring a down backend up. This is HAProxy's default `init-state up`:
//! nothing is withheld from traffic at start or when added, yet a backend never seen healthy
//! does not take traffic for `fall` intervals.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use dataplane::pipeline::FlowCounters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::AbortHandle;

use crate::config::{CheckKind, Config, HealthCheck, Passive, Service, StatusRange};
use crate::state::{BackendKey, Health};

/// The outcome of one active probe: success, or why it failed (`"tcp connect to
/// 198.18.1.10:8080: connection refused"`).
pub type ProbeResult = Result<(), String>;

/// Shortest time between two probes of one backend, whatever the config says: an interval of 0
/// would turn a probe task into a busy loop on the control plane's runtime.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Longest interval, jitter or timeout used, whatever the config says: lb.toml durations go up to
/// `u64::MAX` milliseconds, which no clock can add without overflowing.
pub const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// Longest HTTP status line read; a longer one fails the probe.
const MAX_STATUS_LINE: usize = 512;

/// What the active check last decided, before combining with passive ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Unchecked,
    Up,
    Down,
}

/// Rise/fall state of one backend's active check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveState {
    rise: u32,
    fall: u32,
    verdict: Verdict,
    /// Consecutive results that contradict `verdict` (failures while up, successes while down).
    streak: u32,
    last_failure: Option<String>,
}

impl ActiveState {
    /// A fresh, unchecked state; thresholds of 0 count as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        ActiveState {
            rise: rise.max(1),
            fall: fall.max(1),
            verdict: Verdict::Unchecked,
            streak: 0,
            last_failure: None,
        }
    }

    /// Changes the thresholds (a reload edited the check) and keeps the verdict.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Takes one probe result into account.
    pub fn record(&mut self, result: ProbeResult) {
        let ok = match result {
            Ok(()) => true,
            Err(reason) => {
                self.last_failure = Some(reason);
                false
            }
        };
        match (self.verdict, ok) {
            (Verdict::Unchecked, true) => self.verdict = Verdict::Up,
            (Verdict::Unchecked, false) => self.verdict = Verdict::Down,
            (Verdict::Up, true) | (Verdict::Down, false) => self.streak = 0,
            (Verdict::Up, false) => {
                self.streak += 1;
                if self.streak >= self.fall {
                    self.verdict = Verdict::Down;
                    self.streak = 0;
                }
            }
            (Verdict::Down, true) => {
                self.streak += 1;
                if self.streak >= self.rise {
                    self.verdict = Verdict::Up;
                    self.streak = 0;
                }
            }
        }
    }

    /// The active check's verdict; `Down` carries the latest failure's reason.
    pub fn health(&self) -> Health {
        match self.verdict {
            Verdict::Unchecked => Health::Unchecked,
            Verdict::Up => Health::Up,
            Verdict::Down => Health::Down(self.last_failure.clone().unwrap_or_default()),
        }
    }

    /// The reason of the latest failed probe, even if the backend is still up.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }
}

/// Cumulative per-backend totals of the passive signals, summed over workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveSample {
    /// Resets the backend sent (`FlowCounters::resets`).
    pub resets: u64,
    /// SYNs the backend never answered (`FlowCounters::unanswered_syns`).
    pub unanswered_syns: u64,
}

impl PassiveSample {
    /// Adds one worker's counters of the backend.
    pub fn add(&mut self, c: &FlowCounters) {
        self.resets = self.resets.wrapping_add(c.resets);
        self.unanswered_syns = self.unanswered_syns.wrapping_add(c.unanswered_syns);
    }
}

impl From<&FlowCounters> for PassiveSample {
    fn from(c: &FlowCounters) -> Self {
        PassiveSample {
            resets: c.resets,
            unanswered_syns: c.unanswered_syns,
        }
    }
}

/// Passive ejection of one backend: counts within a sliding window and a back-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassiveState {
    cfg: Passive,
    /// Samples from the newest one at or before the window's start up to the latest; the front
    /// is the baseline the counts are taken against.
    history: VecDeque<(Instant, PassiveSample)>,
    /// While ejected: until when (`None`: a back-off too long to represent) and why.
    ejected: Option<(Option<Instant>, String)>,
}

impl PassiveState {
    /// A state with no history: the first sample becomes the baseline, so totals counted before
    /// (or before a reload) never eject.
    pub fn new(cfg: Passive) -> Self {
        PassiveState {
            cfg,
            history: VecDeque::new(),
            ejected: None,
        }
    }

    /// Ends an ejection whose back-off is over. The history is cleared, so the next sample is
    /// the new baseline and the counts that caused the ejection cannot cause another.
    pub fn expire(&mut self, now: Instant) {
        if let Some((Some(until), _)) = &self.ejected {
            if now >= *until {
                self.ejected = None;
                self.history.clear();
            }
        }
    }

    /// Takes the backend's cumulative totals at `now`; ejects it when a nonzero threshold is
    /// reached within the window. Counts are taken against the newest sample at or before the
    /// window's start, so they may include up to one sampling period more than the window.
    pub fn observe(&mut self, now: Instant, total: PassiveSample) {
        self.expire(now);
        if self.ejected.is_some() {
            return;
        }
        if let Some(&(_, last)) = self.history.back() {
            // Totals went backwards: the counter slots were reset. Start over from here.
            if total.resets < last.resets || total.unanswered_syns < last.unanswered_syns {
                self.history.clear();
            }
        }
        self.history.push_back((now, total));
        if let Some(start) = now.checked_sub(self.cfg.window) {
            while self.history.len() >= 2 && self.history[1].0 <= start {
                self.history.pop_front();
            }
        }
        let Some(&(_, base)) = self.history.front() else {
            return;
        };
        let resets = total.resets.saturating_sub(base.resets);
        let syns = total.unanswered_syns.saturating_sub(base.unanswered_syns);
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        let why = if self.cfg.resets > 0 && resets >= self.cfg.resets {
            format!("{resets} reset{}", plural(resets))
        } else if self.cfg.unanswered_syns > 0 && syns >= self.cfg.unanswered_syns {
            format!("{syns} unanswered SYN{}", plural(syns))
        } else {
            return;
        };
        let reason = format!(
            "passive: {why} within {}, ejected for {}",
            fmt_duration(self.cfg.window),
            fmt_duration(self.cfg.backoff)
        );
        self.ejected = Some((now.checked_add(self.cfg.backoff), reason));
        self.history.clear();
    }

    /// Why the backend is ejected, while it is.
    pub fn ejected(&self) -> Option<&str> {
        self.ejected.as_ref().map(|(_, r)| r.as_str())
    }
}

/// Everything health checking knows about one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendState {
    /// The active check, when one is configured.
    pub active: Option<ActiveState>,
    /// Passive ejection, when configured.
    pub passive: Option<PassiveState>,
}

impl BackendState {
    /// Combined health: down if the active check says so (its reason wins, since it lasts until
    /// probes pass again) or if passively ejected; else the active verdict (`Unchecked` without
    /// an active check).
    pub fn health(&self) -> Health {
        let active = self
            .active
            .as_ref()
            .map_or(Health::Unchecked, ActiveState::health);
        if let Health::Down(_) = active {
            return active;
        }
        match self.passive.as_ref().and_then(PassiveState::ejected) {
            Some(reason) => Health::Down(reason.to_string()),
            None => active,
        }
    }
}

/// One change of a backend's health (a change of state; a new reason alone is not one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The backend.
    pub key: BackendKey,
    /// Health before.
    pub old: Health,
    /// Health after.
    pub new: Health,
}

impl Transition {
    /// True when the backend entered or left the table (what `lb_health_transitions_total`
    /// counts); `Unchecked` to `Up` is reported but changes nothing served.
    pub fn changes_serving(&self) -> bool {
        self.old.serves() != self.new.serves()
    }
}

fn same_state(a: &Health, b: &Health) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

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
    out
}

/// `"1s"`, `"250ms"`: durations as lb.toml writes them.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{ms}ms")
    } else {
        format!("{d:?}")
    }
}

fn fmt_range(r: &StatusRange) -> String {
    if r.lo == r.hi {
        r.lo.to_string()
    } else {
        format!("{}-{}", r.lo, r.hi)
    }
}

/// An I/O error as a short lowercase phrase (`"connection refused"`), without the OS error number.
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let s = match e.kind() {
        K::ConnectionRefused => "connection refused",
        K::ConnectionReset => "connection reset",
        K::ConnectionAborted => "connection aborted",
        K::NotConnected => "not connected",
        K::BrokenPipe => "connection closed by the backend",
        K::AddrNotAvailable => "address not available",
        K::HostUnreachable => "host unreachable",
        K::NetworkUnreachable => "network unreachable",
        K::TimedOut => "timed out",
        K::PermissionDenied => "permission denied",
        _ => return e.to_string(),
    };
    s.to_string()
}

/// Parses an HTTP/1.x status line (without its line ending) and returns the status code.
pub fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let bad = || {
        let shown: String = String::from_utf8_lossy(line).chars().take(64).collect();
        format!("bad status line {shown:?}")
    };
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
    match rest {
        [minor, b' ', a, b, c, tail @ ..]
            if minor.is_ascii_digit()
                && [a, b, c].iter().all(|d| d.is_ascii_digit())
                && (tail.is_empty() || tail[0] == b' ') =>
        {
            let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
            if (100..=599).contains(&code) {
                Ok(code)
            } else {
                Err(bad())
            }
        }
        _ => Err(bad()),
    }
}

/// The request an HTTP check sends, or why it cannot be sent (a path or host that would break
/// the request line or headers).
fn http_request(probe: SocketAddr, check: &HealthCheck) -> Result<Vec<u8>, String> {
    let unsafe_byte = |s: &str| s.bytes().any(|b| b <= b' ' || b == 0x7f);
    if !check.path.starts_with('/') || unsafe_byte(&check.path) {
        return Err(format!(
            "invalid path {:?}: must start with / and hold no spaces or control characters",
            check.path
        ));
    }
    let host = match &check.host {
        Some(h) if h.is_empty() || unsafe_byte(h) => {
            return Err(format!("invalid host {h:?}"));
        }
        Some(h) => h.clone(),
        None if probe.port() == 80 => match probe {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        },
        None => probe.to_string(),
    };
    Ok(format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: lb-health-check\r\n\
         Accept: */*\r\n\r\n",
        check.path
    )
    .into_bytes())
}

/// Runs one probe of `check` against `probe`; the whole probe is bounded by `check.timeout`.
pub async fn probe(probe: SocketAddr, check: &HealthCheck) -> ProbeResult {
    if probe.port() == 0 {
        return Err(
            "no port to probe: set health_check.port (neither the backend nor the service names one)"
                .into(),
        );
    }
    match check.kind {
        CheckKind::Tcp => probe_tcp(probe, check.timeout).await,
        CheckKind::Http => probe_http(probe, check).await,
    }
}

/// A TCP connect to `addr` within `timeout`; the connection is closed at once.
pub async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> ProbeResult {
    let timeout = timeout.min(MAX_WAIT);
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(format!("tcp connect to {addr}: {}", io_reason(&e))),
        Err(_) => Err(format!(
            "tcp connect to {addr}: timeout after {}",
            fmt_duration(timeout)
        )),
    }
}

/// An HTTP/1.1 `GET path` to `addr` whose status must be in `check.expect_status`, connect and
/// status line within `check.timeout`.
pub async fn probe_http(addr: SocketAddr, check: &HealthCheck) -> ProbeResult {
    let what = format!("http GET {}", check.path);
    let request = http_request(addr, check).map_err(|e| format!("{what}: {e}"))?;
    let timeout = check.timeout.min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("tcp connect to {addr}: {}", io_reason(&e))),
        Err(_) => {
            return Err(format!(
                "tcp connect to {addr}: timeout after {}",
                fmt_duration(timeout)
            ))
        }
    };
    let status = match tokio::time::timeout_at(deadline, status_of(stream, &request)).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("{what}: {e}")),
        Err(_) => return Err(format!("{what}: timeout after {}", fmt_duration(timeout))),
    };
    if check.expect_status.contains(status) {
        Ok(())
    } else {
        Err(format!(
            "{what} got {status}, expected {}",
            fmt_range(&check.expect_status)
        ))
    }
}

/// Sends `request` and reads the response's status line.
async fn status_of(mut stream: TcpStream, request: &[u8]) -> Result<u16, String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("send: {}", io_reason(&e)))?;
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    loop {
        // RFC 9112 lets a recipient accept a bare LF as a line end.
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
            return parse_status_line(line);
        }
        if len == buf.len() {
            return Err(format!("status line longer than {MAX_STATUS_LINE} bytes"));
        }
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("receive: {}", io_reason(&e)))?;
        if n == 0 {
            return Err(if len == 0 {
                "connection closed before a response".into()
            } else {
                "connection closed inside the status line".into()
            });
        }
        len += n;
    }
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
            }),
            runtime,
        }
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

    fn fail(s: &str) -> ProbeResult {
        Err(s.to_string())
    }

    #[test]
    fn first_result_decides_then_fall_failures_take_it_down() {
        let mut a = ActiveState::new(2, 3);
        assert_eq!(a.health(), Health::Unchecked);
        a.record(Ok(()));
        assert_eq!(a.health(), Health::Up);
        a.record(fail("one"));
        a.record(fail("two"));
        assert_eq!(a.health(), Health::Up, "two failures of fall=3");
        assert_eq!(a.last_failure(), Some("two"));
        a.record(Ok(()));
        a.record(fail("three"));
        a.record(fail("four"));
        assert_eq!(a.health(), Health::Up, "a success restarts the count");
        a.record(fail("five"));
        assert_eq!(a.health(), Health::Down("five".into()));

        let mut b = ActiveState::new(2, 3);
        b.record(fail("tcp connect to 198.18.1.10:8080: connection refused"));
        assert_eq!(
            b.health(),
            Health::Down("tcp connect to 198.18.1.10:8080: connection refused".into()),
            "a backend never seen up goes down on its first failure"
        );
    }

    #[test]
    fn rise_successes_bring_it_up_and_the_reason_follows_the_latest_failure() {
        let mut a = ActiveState::new(3, 1);
        a.record(Ok(()));
        a.record(fail("refused"));
        assert_eq!(a.health(), Health::Down("refused".into()));
        a.record(Ok(()));
        a.record(Ok(()));
        a.record(fail("timeout after 1s"));
        assert_eq!(a.health(), Health::Down("timeout after 1s".into()));
        a.record(Ok(()));
        a.record(Ok(()));
        assert!(matches!(a.health(), Health::Down(_)), "two of rise=3");
        a.record(Ok(()));
        assert_eq!(a.health(), Health::Up);
        assert_eq!(a.last_failure(), Some("timeout after 1s"));
    }

    #[test]
    fn zero_thresholds_act_as_one_and_new_thresholds_keep_the_verdict() {
        let mut a = ActiveState::new(0, 0);
        a.record(Ok(()));
        a.record(fail("x"));
        assert_eq!(a.health(), Health::Down("x".into()));
        a.set_thresholds(2, 2);
        a.record(Ok(()));
        assert!(matches!(a.health(), Health::Down(_)));
        a.record(Ok(()));
        assert_eq!(a.health(), Health::Up);
    }

    fn passive(resets: u64, syns: u64) -> Passive {
        Passive {
            resets,
            unanswered_syns: syns,
            window: Duration::from_secs(10),
            backoff: Duration::from_secs(30),
        }
    }

    fn sample(resets: u64, syns: u64) -> PassiveSample {
        PassiveSample {
            resets,
            unanswered_syns: syns,
        }
    }

    #[test]
    fn passive_counts_only_within_the_window() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = PassiveState::new(passive(0, 5));
        // Totals from before the first sample never count.
        p.observe(at(0), sample(1000, 1000));
        assert_eq!(p.ejected(), None);
        // 4 SYNs over 12 s, 1 each 3 s: at most 4 in any 10 s, so never ejected.
        for (i, s) in [3, 6, 9, 12, 15, 18].into_iter().enumerate() {
            p.observe(at(s), sample(1000, 1001 + i as u64));
            assert_eq!(p.ejected(), None, "at {s}s");
        }
        // A burst: 5 within the window ejects.
        p.observe(at(19), sample(1000, 1010));
        assert_eq!(
            p.ejected(),
            Some("passive: 7 unanswered SYNs within 10s, ejected for 30s")
        );
    }

    #[test]
    fn passive_zero_threshold_never_ejects_and_resets_do() {
        let t0 = Instant::now();
        let mut p = PassiveState::new(passive(3, 0));
        p.observe(t0, sample(0, 0));
        p.observe(t0 + Duration::from_secs(1), sample(2, 500));
        assert_eq!(
            p.ejected(),
            None,
            "unanswered_syns = 0 disables that signal"
        );
        p.observe(t0 + Duration::from_secs(2), sample(3, 500));
        assert_eq!(
            p.ejected(),
            Some("passive: 3 resets within 10s, ejected for 30s")
        );
    }

    #[test]
    fn passive_back_off_expires_and_rebaselines() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = PassiveState::new(passive(0, 5));
        p.observe(at(0), sample(0, 0));
        p.observe(at(1), sample(0, 5));
        assert!(p.ejected().is_some());
        // SYNs of flows from before the ejection keep expiring during the back-off.
        p.observe(at(20), sample(0, 9));
        p.expire(at(30));
        assert!(p.ejected().is_some(), "back-off of 30s from 1s");
        p.observe(at(31), sample(0, 9));
        assert_eq!(p.ejected(), None, "back after the back-off");
        // The old counts are the new baseline: 4 more do not eject...
        p.observe(at(32), sample(0, 13));
        assert_eq!(p.ejected(), None);
        // ...a fifth does.
        p.observe(at(33), sample(0, 14));
        assert!(p.ejected().is_some());
    }

    #[test]
    fn passive_counters_going_backwards_start_over() {
        let t0 = Instant::now();
        let mut p = PassiveState::new(passive(0, 5));
        p.observe(t0, sample(0, 100));
        p.observe(t0 + Duration::from_secs(1), sample(0, 2));
        p.observe(t0 + Duration::from_secs(2), sample(0, 6));
        assert_eq!(p.ejected(), None, "4 since the reset");
        p.observe(t0 + Duration::from_secs(3), sample(0, 7));
        assert!(p.ejected().is_some());
    }

    #[test]
    fn combined_health_prefers_the_active_reason() {
        let t0 = Instant::now();
        let mut b = BackendState {
            active: Some(ActiveState::new(1, 1)),
            passive: Some(PassiveState::new(passive(1, 0))),
        };
        assert_eq!(b.health(), Health::Unchecked);
        b.active.as_mut().unwrap().record(Ok(()));
        assert_eq!(b.health(), Health::Up);
        let p = b.passive.as_mut().unwrap();
        p.observe(t0, sample(0, 0));
        p.observe(t0 + Duration::from_secs(1), sample(1, 0));
        assert_eq!(
            b.health(),
            Health::Down("passive: 1 reset within 10s, ejected for 30s".into())
        );
        b.active.as_mut().unwrap().record(fail("refused"));
        assert_eq!(b.health(), Health::Down("refused".into()));
        b.active.as_mut().unwrap().record(Ok(()));
        assert!(matches!(b.health(), Health::Down(r) if r.starts_with("passive")));

        let none = BackendState::default();
        assert_eq!(none.health(), Health::Unchecked);
    }

    #[test]
    fn status_lines_parse_strictly() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
            Ok(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.1 301 "), Ok(301));
        for bad in [
            &b""[..],
            b"HTTP/2 200 OK",
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 abc OK",
            b"HTTP/1.1  200 OK",
            b"HTTP/1.1 099 OK",
            b"SSH-2.0-OpenSSH_9.2",
            b"\xff\xfe",
        ] {
            let e = parse_status_line(bad).unwrap_err();
            assert!(e.starts_with("bad status line"), "{e}");
        }
    }

    #[test]
    fn requests_carry_host_and_refuse_injection() {
        let mut c = HealthCheck {
            kind: CheckKind::Http,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: Duration::ZERO,
            port: None,
            path: "/healthz".into(),
            host: None,
            expect_status: StatusRange { lo: 200, hi: 399 },
        };
        let req = |c: &HealthCheck, a: &str| {
            http_request(a.parse().unwrap(), c).map(|r| String::from_utf8(r).unwrap())
        };
        let r = req(&c, "198.18.1.10:8080").unwrap();
        assert!(
            r.starts_with("GET /healthz HTTP/1.1\r\nHost: 198.18.1.10:8080\r\n"),
            "{r}"
        );
        assert!(
            r.contains("\r\nConnection: close\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let r = req(&c, "[2001:db8::10]:80").unwrap();
        assert!(r.contains("\r\nHost: [2001:db8::10]\r\n"), "{r}");
        c.host = Some("web.example".into());
        assert!(req(&c, "198.18.1.10:80")
            .unwrap()
            .contains("\r\nHost: web.example\r\n"));
        c.path = "/x HTTP/1.1\r\nEvil: 1".into();
        assert!(req(&c, "198.18.1.10:80")
            .unwrap_err()
            .contains("invalid path"));
        c.path = "/".into();
        c.host = Some("a\r\nb".into());
        assert!(req(&c, "198.18.1.10:80")
            .unwrap_err()
            .contains("invalid host"));
    }

    #[test]
    fn durations_and_ranges_read_as_written_in_lb_toml() {
        assert_eq!(fmt_duration(Duration::from_secs(1)), "1s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_range(&StatusRange { lo: 200, hi: 399 }), "200-399");
        assert_eq!(fmt_range(&StatusRange { lo: 204, hi: 204 }), "204");
    }
}

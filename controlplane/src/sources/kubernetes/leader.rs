//! Lease-based leader election (coordination.k8s.io/v1), the way client-go's leaderelection
//! does it: every replica serves traffic, only the leader writes status and Events.
//!
//! A replica takes the Lease when it is absent, released or expired (`renewTime +
//! leaseDurationSeconds` in the past), by a create or a replace carrying the resourceVersion it
//! read: of two replicas racing, the API server lets one write and answers the other 409. The
//! leader renews every retry period; if it cannot renew within the renew deadline (shorter than
//! the lease duration) it steps down before anyone else may take the Lease, so two replicas
//! never both believe they lead.
//!
//! A Lease another replica holds is also only taken once it has not changed for its duration
//! as seen here (client-go's observed time), so clock skew between replicas cannot make one
//! take a Lease that is still being renewed.
//!
//! [`decide`] is the pure part (a Lease as read, who we are, the time -> what to do);
//! [`LeaderElector::run`] does the I/O and publishes "am I the leader" on a watch channel.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tokio::sync::watch;

/// Where the Lease is, who we are, and the timings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease (one per controller, shared by its replicas).
    pub name: String,
    /// This replica's identity ([`default_identity`]: pod or host name and pid).
    pub identity: String,
    /// How long a Lease holds without renewal (written as whole seconds, rounded up).
    pub lease_duration: Duration,
    /// The leader steps down when it could not renew for this long (< `lease_duration`).
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew (< `renew_deadline`).
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the timings: the renew deadline must be shorter than the lease (or a stalled
    /// leader could still believe it leads when another takes over), the retry period
    /// shorter than the deadline, all non-zero; and the names set.
    pub fn validate(&self) -> Result<(), LeaderConfigError> {
        if self.namespace.is_empty() || self.name.is_empty() || self.identity.is_empty() {
            return Err(LeaderConfigError::MissingName);
        }
        if self.retry_period.is_zero()
            || self.renew_deadline <= self.retry_period
            || self.lease_duration <= self.renew_deadline
        {
            return Err(LeaderConfigError::Timings {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        }
        Ok(())
    }

    /// `leaseDurationSeconds` as written in the Lease.
    fn lease_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
    }
}

/// A [`LeaderConfig`] that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaderConfigError {
    /// Namespace, name or identity is empty.
    #[error("leader election needs a lease namespace, a lease name and an identity")]
    MissingName,
    /// The timings do not satisfy retry period < renew deadline < lease duration.
    #[error(
        "leader election needs retry period ({retry_period:?}) < renew deadline \
         ({renew_deadline:?}) < lease duration ({lease_duration:?})"
    )]
    Timings {
        /// Configured lease duration.
        lease_duration: Duration,
        /// Configured renew deadline.
        renew_deadline: Duration,
        /// Configured retry period.
        retry_period: Duration,
    },
}

/// This replica's identity: `$POD_NAME` (from the downward API) or the host name, then the pid
/// (two processes on one host are two candidates).
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "lb".to_owned());
    format!("{host}_{}", std::process::id())
}

/// What a candidate does after reading the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The Lease is absent, released or expired: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and it is valid: wait.
    Wait {
        /// The holder.
        holder: String,
    },
    /// We thought we led, but someone else holds a valid Lease: stop leading now.
    StepDown {
        /// The holder.
        holder: String,
    },
}

/// When a Lease runs out: `renewTime` (or `acquireTime`) + `leaseDurationSeconds`; None when
/// it has no time or no duration (such a Lease holds nothing).
fn expiry(spec: &LeaseSpec) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let secs = spec.lease_duration_seconds.filter(|s| *s > 0)?;
    renewed
        .checked_add(SignedDuration::from_secs(i64::from(secs)))
        .ok()
}

/// Pure: given the Lease as read (None: absent), our identity, the time and whether we lead
/// now, what to do.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp, leading: bool) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    match expiry(spec) {
        Some(until) if until >= now => {
            let holder = holder.to_owned();
            if leading {
                Decision::StepDown { holder }
            } else {
                Decision::Wait { holder }
            }
        }
        _ => Decision::Acquire,
    }
}

/// The Lease we write to take or keep leadership (or, with `release`, to give it up).
fn lease_to_write(
    cfg: &LeaderConfig,
    old: Option<&Lease>,
    now: Timestamp,
    decision: &Decision,
    release: bool,
) -> Lease {
    let mut lease = old.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let old_spec = lease.spec.take().unwrap_or_default();
    let taking = *decision == Decision::Acquire;
    let changes_hands =
        taking && old.is_some() && old_spec.holder_identity.as_deref() != Some(&cfg.identity);
    let stamp = Some(MicroTime(now));
    lease.spec = Some(LeaseSpec {
        holder_identity: if release {
            None
        } else {
            Some(cfg.identity.clone())
        },
        lease_duration_seconds: Some(if release { 1 } else { cfg.lease_seconds() }),
        acquire_time: if taking || old_spec.acquire_time.is_none() {
            stamp.clone()
        } else {
            old_spec.acquire_time.clone()
        },
        renew_time: stamp,
        lease_transitions: Some(old_spec.lease_transitions.unwrap_or(0) + i32::from(changes_hands)),
        ..old_spec
    });
    lease
}

/// What this replica last saw of the Lease (holder and renewal) and since when by its own
/// monotonic clock: client-go's observedTime. A Lease another replica holds is taken only when
/// it is expired by its `renewTime` and has also not changed here for its duration, so a
/// replica whose clock runs ahead cannot take a Lease that is still being renewed.
#[derive(Debug, Default)]
struct Observed {
    seen: bool,
    record: Option<(Option<String>, Option<MicroTime>)>,
    /// None: first sight, nothing known of its past (then `renewTime` alone decides).
    since: Option<Instant>,
}

impl Observed {
    /// Notes the Lease as read at `at`.
    fn see(&mut self, lease: Option<&Lease>, at: Instant) {
        let record = lease
            .and_then(|l| l.spec.as_ref())
            .map(|s| (s.holder_identity.clone(), s.renew_time.clone()));
        if !self.seen {
            self.seen = true;
            self.record = record;
        } else if self.record != record {
            self.record = record;
            self.since = Some(at);
        }
    }

    /// Whether the Lease has stayed the same here for `duration` (true when its past is
    /// unknown).
    fn unchanged_for(&self, duration: Duration, now: Instant) -> bool {
        self.since.is_none_or(|since| now >= since + duration)
    }
}

/// `decide`, then held back to Wait while another replica's Lease has changed here within its
/// duration (see [`Observed`]).
fn decide_observed(
    lease: Option<&Lease>,
    identity: &str,
    now: Timestamp,
    leading: bool,
    observed: &Observed,
    local_now: Instant,
) -> Decision {
    let decision = decide(lease, identity, now, leading);
    let spec = lease.and_then(|l| l.spec.as_ref());
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or("");
    if decision != Decision::Acquire || holder.is_empty() || holder == identity {
        return decision;
    }
    let secs = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(0);
    let duration = Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    if observed.unchanged_for(duration, local_now) {
        decision
    } else {
        Decision::Wait {
            holder: holder.to_owned(),
        }
    }
}

/// Why an attempt to acquire or renew did not settle the question.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("the API server: {0}")]
    Api(#[from] kube::Error),
    #[error("no answer in time")]
    Timeout,
}

/// Runs the election for one replica.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    leading: watch::Sender<bool>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl LeaderElector {
    /// An elector for the Lease in `cfg`. Timings that fail [`LeaderConfig::validate`] are
    /// replaced by safe ones (renew deadline 2/3 of the lease, retry period 1/5 of the
    /// deadline) with a warning; call `validate` first to refuse them instead.
    pub fn new(client: Client, mut cfg: LeaderConfig) -> Self {
        if let Err(e) = cfg.validate() {
            if matches!(e, LeaderConfigError::Timings { .. }) {
                let lease = cfg.lease_duration.max(Duration::from_secs(1));
                cfg.lease_duration = lease;
                cfg.renew_deadline = lease * 2 / 3;
                cfg.retry_period = cfg.renew_deadline / 5;
                tracing::warn!(error = %e, ?cfg, "leader election timings replaced");
            } else {
                tracing::warn!(error = %e, "leader election misconfigured");
            }
        }
        let api = Api::namespaced(client, &cfg.namespace);
        Self {
            api,
            cfg,
            leading: watch::Sender::new(false),
        }
    }

    /// Whether this replica leads now; false until it has acquired the Lease and again as
    /// soon as it may no longer be sure it holds it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// One read and (maybe) one write. Ok(true): we hold the Lease as of `now`.
    async fn attempt(
        &self,
        leading: bool,
        now: Timestamp,
        observed: &mut Observed,
    ) -> Result<bool, AttemptError> {
        let current = self.api.get_opt(&self.cfg.name).await?;
        let local_now = Instant::now();
        observed.see(current.as_ref(), local_now);
        let decision = decide_observed(
            current.as_ref(),
            &self.cfg.identity,
            now,
            leading,
            observed,
            local_now,
        );
        match &decision {
            Decision::Wait { .. } | Decision::StepDown { .. } => return Ok(false),
            Decision::Acquire | Decision::Renew => {}
        }
        let lease = lease_to_write(&self.cfg, current.as_ref(), now, &decision, false);
        let written = match current {
            None => self.api.create(&PostParams::default(), &lease).await,
            Some(_) => {
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            // Another replica wrote the Lease since we read it: it won.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up (so another replica need not wait for it to expire), if we hold
    /// it. Ok(false): it was not ours.
    async fn release(&self) -> Result<bool, AttemptError> {
        let Some(current) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(false);
        };
        let holder = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.cfg.identity.as_str()) {
            return Ok(false);
        }
        let lease = lease_to_write(
            &self.cfg,
            Some(&current),
            Timestamp::now(),
            &Decision::Renew,
            true,
        );
        self.api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await?;
        Ok(true)
    }

    fn set_leading(&self, leading: bool) {
        let was = self.leading.send_replace(leading);
        if was != leading {
            if leading {
                tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became the leader");
            } else {
                tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "stopped leading");
            }
        }
    }

    /// Campaigns and leads until `shutdown` completes; then gives the Lease up if it holds it
    /// and reports not leading.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let cfg = self.cfg.clone();
        // While leading: when the last successful renewal started.
        let mut renewed: Option<Instant> = None;
        let mut observed = Observed::default();
        loop {
            let started = Instant::now();
            // A leader that could not renew in time stops leading before anything else.
            if renewed.is_some_and(|t| started >= t + cfg.renew_deadline) {
                tracing::warn!(lease = %cfg.name, "could not renew the lease before the deadline");
                renewed = None;
                self.set_leading(false);
            }
            // No attempt may run past the renew deadline: a hung request must not keep a
            // leader that can no longer renew.
            let budget = match renewed {
                Some(t) => (t + cfg.renew_deadline).saturating_duration_since(started),
                None => cfg.renew_deadline,
            };
            let outcome = tokio::select! {
                () = &mut shutdown => break,
                r = tokio::time::timeout(budget, self.attempt(renewed.is_some(), Timestamp::now(), &mut observed)) => {
                    r.unwrap_or(Err(AttemptError::Timeout))
                }
            };
            match outcome {
                Ok(true) => {
                    renewed = Some(started);
                    self.set_leading(true);
                }
                Ok(false) => {
                    renewed = None;
                    self.set_leading(false);
                }
                Err(e) => {
                    tracing::debug!(lease = %cfg.name, error = %e, "leader election attempt failed");
                    if renewed.is_some_and(|t| Instant::now() >= t + cfg.renew_deadline) {
                        tracing::warn!(lease = %cfg.name, error = %e, "could not renew the lease before the deadline");
                        renewed = None;
                        self.set_leading(false);
                    }
                }
            }
            let mut pause = cfg.retry_period;
            match renewed {
                // Wake up in time to step down at the deadline.
                Some(t) => {
                    pause = pause
                        .min((t + cfg.renew_deadline).saturating_duration_since(Instant::now()))
                }
                // Candidates spread their attempts (client-go's jitter factor 1.2).
                None => pause += cfg.retry_period.mul_f64(fastrand::f64() * 0.2),
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        // Stop acting as the leader before the Lease is given up, never after.
        self.set_leading(false);
        // Also when not leading: an acquisition cut short by the shutdown may have landed.
        match tokio::time::timeout(cfg.retry_period, self.release()).await {
            Ok(Ok(true)) => tracing::info!(lease = %cfg.name, "released the lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(lease = %cfg.name, error = %e, "could not release the lease")
            }
            Err(_) => tracing::warn!(lease = %cfg.name, "could not release the lease in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("timestamp")
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>, duration: Option<i32>) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: renewed.map(|s| MicroTime(at(s))),
                lease_duration_seconds: duration,
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        let wait = |h: &str| Decision::Wait {
            holder: h.to_owned(),
        };
        let step_down = |h: &str| Decision::StepDown {
            holder: h.to_owned(),
        };
        let cases: Vec<(&str, Option<Lease>, i64, bool, Decision)> = vec![
            ("absent", None, 0, false, Decision::Acquire),
            (
                "no spec",
                Some(Lease::default()),
                0,
                false,
                Decision::Acquire,
            ),
            (
                "released",
                Some(lease(None, Some(0), Some(15))),
                1,
                false,
                Decision::Acquire,
            ),
            (
                "empty holder",
                Some(lease(Some(""), Some(0), Some(15))),
                1,
                false,
                Decision::Acquire,
            ),
            (
                "ours",
                Some(lease(Some("me"), Some(0), Some(15))),
                1,
                true,
                Decision::Renew,
            ),
            (
                "ours, expired (we restarted)",
                Some(lease(Some("me"), Some(0), Some(15))),
                100,
                false,
                Decision::Renew,
            ),
            (
                "theirs, valid",
                Some(lease(Some("them"), Some(0), Some(15))),
                10,
                false,
                wait("them"),
            ),
            (
                "theirs, at the edge",
                Some(lease(Some("them"), Some(0), Some(15))),
                15,
                false,
                wait("them"),
            ),
            (
                "theirs, expired",
                Some(lease(Some("them"), Some(0), Some(15))),
                16,
                false,
                Decision::Acquire,
            ),
            (
                "theirs while we lead",
                Some(lease(Some("them"), Some(0), Some(15))),
                1,
                true,
                step_down("them"),
            ),
            (
                "theirs, no renew time",
                Some(lease(Some("them"), None, Some(15))),
                1,
                false,
                Decision::Acquire,
            ),
            (
                "theirs, no duration",
                Some(lease(Some("them"), Some(0), None)),
                1,
                false,
                Decision::Acquire,
            ),
        ];
        for (what, l, now, leading, want) in cases {
            assert_eq!(decide(l.as_ref(), "me", at(now), leading), want, "{what}");
        }
    }

    #[test]
    fn written_lease_counts_transitions_and_keeps_acquire_time() {
        let cfg = LeaderConfig {
            lease_duration: Duration::from_millis(1500),
            ..LeaderConfig::new("ns", "lb", "me")
        };
        let fresh = lease_to_write(&cfg, None, at(0), &Decision::Acquire, false);
        let spec = fresh.spec.clone().expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(
            spec.lease_duration_seconds,
            Some(2),
            "rounded up to whole seconds"
        );
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(fresh.metadata.name.as_deref(), Some("lb"));

        let renewed = lease_to_write(&cfg, Some(&fresh), at(5), &Decision::Renew, false);
        let spec = renewed.spec.expect("spec");
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(5))));

        let theirs = lease(Some("them"), Some(0), Some(15));
        let taken = lease_to_write(&cfg, Some(&theirs), at(20), &Decision::Acquire, false);
        assert_eq!(taken.spec.expect("spec").lease_transitions, Some(1));

        let released = lease_to_write(&cfg, Some(&fresh), at(6), &Decision::Renew, true);
        let spec = released.spec.expect("spec");
        assert_eq!(spec.holder_identity, None);
        assert_eq!(
            decide(Some(&lease(None, Some(6), Some(1))), "other", at(6), false),
            Decision::Acquire
        );
    }

    #[test]
    fn a_lease_renewed_here_recently_is_not_taken_whatever_its_renew_time() {
        let t0 = Instant::now();
        let mut obs = Observed::default();
        // First sight: nothing known of its past, renewTime decides.
        let stale = lease(Some("them"), Some(0), Some(15));
        obs.see(Some(&stale), t0);
        assert_eq!(
            decide_observed(Some(&stale), "me", at(100), false, &obs, t0),
            Decision::Acquire
        );
        // It changes (they renew, but their clock is behind ours by 100 s): the renewTime
        // looks expired, yet it changed here just now, so we wait a lease duration.
        let renewed = lease(Some("them"), Some(1), Some(15));
        obs.see(Some(&renewed), t0 + Duration::from_secs(1));
        let wait = Decision::Wait {
            holder: "them".into(),
        };
        let local = t0 + Duration::from_secs(10);
        assert_eq!(
            decide_observed(Some(&renewed), "me", at(100), false, &obs, local),
            wait
        );
        // Unchanged for its duration: taken.
        obs.see(Some(&renewed), t0 + Duration::from_secs(16));
        let local = t0 + Duration::from_secs(17);
        assert_eq!(
            decide_observed(Some(&renewed), "me", at(100), false, &obs, local),
            Decision::Acquire
        );
        // Our own and released Leases are not held back.
        let ours = lease(Some("me"), Some(1), Some(15));
        obs.see(Some(&ours), local);
        assert_eq!(
            decide_observed(Some(&ours), "me", at(2), true, &obs, local),
            Decision::Renew
        );
        let released = lease(None, Some(2), Some(1));
        obs.see(Some(&released), local);
        assert_eq!(
            decide_observed(Some(&released), "me", at(2), false, &obs, local),
            Decision::Acquire
        );
    }

    #[test]
    fn timings_are_validated() {
        let ok = LeaderConfig::new("ns", "lb", "me");
        assert_eq!(ok.validate(), Ok(()));
        let bad = LeaderConfig {
            renew_deadline: Duration::from_secs(15),
            ..ok.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(LeaderConfigError::Timings { .. })
        ));
        let bad = LeaderConfig {
            retry_period: Duration::ZERO,
            ..ok.clone()
        };
        assert!(bad.validate().is_err());
        let bad = LeaderConfig {
            identity: String::new(),
            ..ok
        };
        assert_eq!(bad.validate(), Err(LeaderConfigError::MissingName));
        assert!(default_identity().ends_with(&format!("_{}", std::process::id())));
    }
}

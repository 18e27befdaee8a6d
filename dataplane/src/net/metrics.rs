//! What the transport counts: per worker, relaxed atomic counters the worker bumps and anyone
//! (the admin API, tests) reads without stopping it ([`Metrics`]); per proxy, requests by route,
//! backend and status class and latency histograms by route ([`RequestStats`]), kept by name
//! across table changes.

use crate::l7::RejectReason;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

/// Room for every [`RejectReason`] (indexed by its discriminant).
pub const REJECT_SLOTS: usize = 32;

/// Every [`RejectReason`] with its metrics label (`reason`), in discriminant order.
pub const REJECT_REASONS: [(RejectReason, &str); 26] = [
    (RejectReason::BareCr, "bare_cr"),
    (RejectReason::BareLf, "bare_lf"),
    (RejectReason::ObsFold, "obs_fold"),
    (RejectReason::RequestLine, "request_line"),
    (RejectReason::Target, "target"),
    (RejectReason::Version, "version"),
    (RejectReason::UriTooLong, "uri_too_long"),
    (RejectReason::HeadTooLarge, "head_too_large"),
    (RejectReason::TooManyHeaders, "too_many_headers"),
    (RejectReason::HeaderSyntax, "header_syntax"),
    (RejectReason::MissingHost, "missing_host"),
    (RejectReason::DuplicateHost, "duplicate_host"),
    (RejectReason::BadHost, "bad_host"),
    (RejectReason::ContentLength, "content_length"),
    (RejectReason::ContentLengthWithTe, "content_length_with_te"),
    (RejectReason::TransferEncoding, "transfer_encoding"),
    (RejectReason::ConnectionFraming, "connection_framing"),
    (RejectReason::Expectation, "expectation"),
    (RejectReason::Connect, "connect"),
    (RejectReason::ChunkSize, "chunk_size"),
    (RejectReason::ChunkExtension, "chunk_extension"),
    (RejectReason::ChunkData, "chunk_data"),
    (RejectReason::ChunkLineTooLong, "chunk_line_too_long"),
    (RejectReason::Trailer, "trailer"),
    (RejectReason::BodyTooLarge, "body_too_large"),
    (RejectReason::DotSegment, "dot_segment"),
];

/// One worker's live counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Answers sent to clients by status class: 1xx (101 only), 2xx, 3xx, 4xx, 5xx.
    pub answers: [AtomicU64; 5],
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Client connections open now.
    pub active: AtomicU64,
    /// Backend connections opened.
    pub backend_opened: AtomicU64,
    /// Requests sent on a pooled (reused) backend connection.
    pub backend_reused: AtomicU64,
    /// Backend connections that could not be made.
    pub backend_failed: AtomicU64,
    /// Requests refused by the core, by reason.
    pub rejected: [AtomicU64; REJECT_SLOTS],
    /// Connections closed at accept: the worker had `max_conns`.
    pub over_capacity: AtomicU64,
    /// TLS handshakes or sessions that failed.
    pub tls_failed: AtomicU64,
}

/// A plain copy of [`Metrics`], summable across workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// See [`Metrics::answers`].
    pub answers: [u64; 5],
    /// See [`Metrics::accepted`].
    pub accepted: u64,
    /// See [`Metrics::active`].
    pub active: u64,
    /// See [`Metrics::backend_opened`].
    pub backend_opened: u64,
    /// See [`Metrics::backend_reused`].
    pub backend_reused: u64,
    /// See [`Metrics::backend_failed`].
    pub backend_failed: u64,
    /// See [`Metrics::rejected`].
    pub rejected: [u64; REJECT_SLOTS],
    /// See [`Metrics::over_capacity`].
    pub over_capacity: u64,
    /// See [`Metrics::tls_failed`].
    pub tls_failed: u64,
}

impl Metrics {
    /// A copy of the counters now.
    pub fn read(&self) -> Counters {
        Counters {
            answers: self.answers.each_ref().map(|a| a.load(Relaxed)),
            accepted: self.accepted.load(Relaxed),
            active: self.active.load(Relaxed),
            backend_opened: self.backend_opened.load(Relaxed),
            backend_reused: self.backend_reused.load(Relaxed),
            backend_failed: self.backend_failed.load(Relaxed),
            rejected: self.rejected.each_ref().map(|a| a.load(Relaxed)),
            over_capacity: self.over_capacity.load(Relaxed),
            tls_failed: self.tls_failed.load(Relaxed),
        }
    }

    pub(super) fn reject(&self, reason: RejectReason) {
        self.rejected[reason as usize % REJECT_SLOTS].fetch_add(1, Relaxed);
    }
}

impl Counters {
    /// Adds `other` (another worker's counters).
    pub fn add(&mut self, other: &Counters) {
        for (a, b) in self.answers.iter_mut().zip(other.answers) {
            *a += b;
        }
        for (a, b) in self.rejected.iter_mut().zip(other.rejected) {
            *a += b;
        }
        self.accepted += other.accepted;
        self.active += other.active;
        self.backend_opened += other.backend_opened;
        self.backend_reused += other.backend_reused;
        self.backend_failed += other.backend_failed;
        self.over_capacity += other.over_capacity;
        self.tls_failed += other.tls_failed;
    }

    /// Requests refused for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize % REJECT_SLOTS]
    }

    /// Requests refused by the core, every reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}

/// Upper bounds of the latency buckets in microseconds: Prometheus' default buckets (5 ms to
/// 10 s); one more bucket past the last holds the rest (+Inf).
pub const LATENCY_BUCKETS_US: [u64; 11] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

/// Buckets of a [`Histogram`]: one per bound and +Inf.
pub const HISTOGRAM_SLOTS: usize = LATENCY_BUCKETS_US.len() + 1;

/// A latency histogram of relaxed atomics: the count per bucket (not cumulative) and the sum.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; HISTOGRAM_SLOTS],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts one duration of `us` microseconds.
    pub fn observe(&self, us: u64) {
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// A copy now.
    pub fn read(&self) -> HistogramCounts {
        HistogramCounts {
            buckets: self.buckets.each_ref().map(|b| b.load(Relaxed)),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// A plain copy of a [`Histogram`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramCounts {
    /// Observations per bucket (bounds [`LATENCY_BUCKETS_US`], then +Inf), not cumulative.
    pub buckets: [u64; HISTOGRAM_SLOTS],
    /// Sum of the observations, microseconds.
    pub sum_us: u64,
}

impl HistogramCounts {
    /// Observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// One route's latency histograms.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// From the request head read to the end of its response (queued whole, or cut).
    pub duration: Histogram,
    /// From the request head read to its response head (or local answer).
    pub head: Histogram,
}

/// Requests of one route to one backend by status class: 1xx (101 only) .. 5xx.
#[derive(Debug, Default)]
pub struct ClassCounts(pub [AtomicU64; 5]);

/// The route and backend label of a request no backend was picked for (refused, 404, a route
/// with nothing usable).
pub const NONE: &str = "none";

/// The numbers one request ends in: its route's histograms and its (route, backend) counts.
#[derive(Clone, Debug)]
pub struct RequestHandles {
    /// Its route's histograms (shared by every backend of the route).
    pub route: Arc<RouteStats>,
    /// Its route and backend's counts.
    pub counts: Arc<ClassCounts>,
}

/// Requests by route and backend, for every worker of one proxy: entries are created by name
/// (route as [`crate::l7::route::route_name`] gives it, backend `addr:port`) the first time a
/// worker's table generation meets them, and never removed, so a reload does not reset the
/// counters of a route that stays. Workers resolve an entry once per generation (the lock) and
/// then bump its relaxed atomics; two workers may bump the same one.
#[derive(Debug)]
pub struct RequestStats {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    routes: BTreeMap<Box<str>, Arc<RouteStats>>,
    /// Id -> (route, backend, handles); id 0 is (none, none).
    pairs: Vec<(Box<str>, Box<str>, RequestHandles)>,
    ids: BTreeMap<(Box<str>, Box<str>), u32>,
}

impl Default for RequestStats {
    fn default() -> Self {
        let stats = RequestStats {
            inner: Mutex::new(Entries::default()),
        };
        stats.resolve(NONE, NONE);
        stats
    }
}

impl RequestStats {
    /// The id and handles of (`route`, `backend`), created if new. Ids are stable: 0 is
    /// ([`NONE`], [`NONE`]).
    pub fn resolve(&self, route: &str, backend: &str) -> (u32, RequestHandles) {
        let mut e = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&id) = e.ids.get(&(route.into(), backend.into())) {
            return (id, e.pairs[id as usize].2.clone());
        }
        let stats = e.routes.entry(route.into()).or_default().clone();
        let handles = RequestHandles {
            route: stats,
            counts: Arc::default(),
        };
        let id = e.pairs.len() as u32;
        e.pairs
            .push((route.into(), backend.into(), handles.clone()));
        e.ids.insert((route.into(), backend.into()), id);
        (id, handles)
    }

    /// A copy now, sorted by name.
    pub fn read(&self) -> RequestCounts {
        let e = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        RequestCounts {
            routes: e
                .routes
                .iter()
                .map(|(name, r)| RouteCounts {
                    route: name.to_string(),
                    duration: r.duration.read(),
                    head: r.head.read(),
                })
                .collect(),
            pairs: e
                .ids
                .iter()
                .map(|((route, backend), &id)| PairCounts {
                    route: route.to_string(),
                    backend: backend.to_string(),
                    classes: e.pairs[id as usize]
                        .2
                        .counts
                        .0
                        .each_ref()
                        .map(|c| c.load(Relaxed)),
                })
                .collect(),
        }
    }
}

/// A copy of [`RequestStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Per route, by name.
    pub routes: Vec<RouteCounts>,
    /// Per route and backend, by names.
    pub pairs: Vec<PairCounts>,
}

/// One route's histograms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteCounts {
    /// Route name ([`NONE`]: no backend picked).
    pub route: String,
    /// See [`RouteStats::duration`].
    pub duration: HistogramCounts,
    /// See [`RouteStats::head`].
    pub head: HistogramCounts,
}

/// Requests of one route to one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairCounts {
    /// Route name.
    pub route: String,
    /// Backend `addr:port` ([`NONE`]: none picked).
    pub backend: String,
    /// By status class, 1xx .. 5xx.
    pub classes: [u64; 5],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let h = Histogram::default();
        for us in [0, 5_000, 5_001, 10_000_000, 10_000_001] {
            h.observe(us);
        }
        let c = h.read();
        assert_eq!(c.buckets[0], 2, "0 and exactly 5 ms are in le=0.005");
        assert_eq!(c.buckets[1], 1);
        assert_eq!(c.buckets[10], 1, "exactly 10 s is in le=10");
        assert_eq!(c.buckets[11], 1, "past 10 s: +Inf only");
        assert_eq!(c.count(), 5);
        assert_eq!(c.sum_us, 20_010_002);
    }

    #[test]
    fn a_name_resolves_to_the_same_counters_every_time() {
        let stats = RequestStats::default();
        assert_eq!(stats.resolve(NONE, NONE).0, 0);
        let (a, ha) = stats.resolve("a.test/", "127.0.0.1:1");
        let (b, hb) = stats.resolve("a.test/", "127.0.0.1:2");
        assert_ne!(a, b);
        assert!(
            Arc::ptr_eq(&ha.route, &hb.route),
            "one route, one histogram"
        );
        ha.counts.0[1].fetch_add(3, Relaxed);
        let (again, h) = stats.resolve("a.test/", "127.0.0.1:1");
        assert_eq!(again, a);
        assert_eq!(h.counts.0[1].load(Relaxed), 3);
        let read = stats.read();
        assert_eq!(read.routes.len(), 2);
        let pair = read
            .pairs
            .iter()
            .find(|p| p.backend == "127.0.0.1:1")
            .unwrap();
        assert_eq!(pair.classes, [0, 3, 0, 0, 0]);
    }

    #[test]
    fn every_reject_reason_has_its_own_slot() {
        // The last variant's discriminant must fit: a new reason past the room would share one.
        assert!((RejectReason::DotSegment as usize) < REJECT_SLOTS);
    }

    #[test]
    fn reject_reasons_are_listed_in_order() {
        for (i, (reason, _)) in REJECT_REASONS.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
        // The last variant is listed: a reason added after it must be added here too.
        assert_eq!(REJECT_REASONS.last().unwrap().0, RejectReason::DotSegment);
    }
}

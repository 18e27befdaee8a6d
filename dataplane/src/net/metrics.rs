//! What the transport counts, per worker: relaxed atomic counters the worker bumps and anyone
//! (the admin API, tests) reads without stopping it.

use crate::l7::RejectReason;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Room for every [`RejectReason`] (indexed by its discriminant).
pub const REJECT_SLOTS: usize = 32;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reject_reason_has_its_own_slot() {
        // The last variant's discriminant must fit: a new reason past the room would share one.
        assert!((RejectReason::BodyTooLarge as usize) < REJECT_SLOTS);
    }
}

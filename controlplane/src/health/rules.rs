//! The rules: rise/fall hysteresis of the active check, passive ejection on the dataplane's
//! counters, and their combination into one health per backend. Pure: results and samples in,
//! health out; no sockets, no clocks of their own.

use std::collections::VecDeque;
use std::time::Instant;

use dataplane::pipeline::FlowCounters;

use super::fmt_duration;
use super::Health;
use crate::config::BackendKey;
use crate::config::Passive;

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

    /// Takes one probe result into account; a failure's text becomes the reason shown.
    pub fn record(&mut self, result: Result<(), impl std::fmt::Display>) {
        let ok = match result {
            Ok(()) => true,
            Err(reason) => {
                self.last_failure = Some(reason.to_string());
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

/// Whether two healths are the same state (reasons aside).
pub(super) fn same_state(a: &Health, b: &Health) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fail(s: &str) -> Result<(), String> {
        Err(s.to_string())
    }

    #[test]
    fn first_result_decides_then_fall_failures_take_it_down() {
        let mut a = ActiveState::new(2, 3);
        assert_eq!(a.health(), Health::Unchecked);
        a.record(Ok::<(), String>(()));
        assert_eq!(a.health(), Health::Up);
        a.record(fail("one"));
        a.record(fail("two"));
        assert_eq!(a.health(), Health::Up, "two failures of fall=3");
        assert_eq!(a.last_failure(), Some("two"));
        a.record(Ok::<(), String>(()));
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
        a.record(Ok::<(), String>(()));
        a.record(fail("refused"));
        assert_eq!(a.health(), Health::Down("refused".into()));
        a.record(Ok::<(), String>(()));
        a.record(Ok::<(), String>(()));
        a.record(fail("timeout after 1s"));
        assert_eq!(a.health(), Health::Down("timeout after 1s".into()));
        a.record(Ok::<(), String>(()));
        a.record(Ok::<(), String>(()));
        assert!(matches!(a.health(), Health::Down(_)), "two of rise=3");
        a.record(Ok::<(), String>(()));
        assert_eq!(a.health(), Health::Up);
        assert_eq!(a.last_failure(), Some("timeout after 1s"));
    }

    #[test]
    fn zero_thresholds_act_as_one_and_new_thresholds_keep_the_verdict() {
        let mut a = ActiveState::new(0, 0);
        a.record(Ok::<(), String>(()));
        a.record(fail("x"));
        assert_eq!(a.health(), Health::Down("x".into()));
        a.set_thresholds(2, 2);
        a.record(Ok::<(), String>(()));
        assert!(matches!(a.health(), Health::Down(_)));
        a.record(Ok::<(), String>(()));
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
        b.active.as_mut().unwrap().record(Ok::<(), String>(()));
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
        b.active.as_mut().unwrap().record(Ok::<(), String>(()));
        assert!(matches!(b.health(), Health::Down(r) if r.starts_with("passive")));

        let none = BackendState::default();
        assert_eq!(none.health(), Health::Unchecked);
    }
}

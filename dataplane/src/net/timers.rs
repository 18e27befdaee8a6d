//! One timer per connection on a binary heap with lazy deletion.
//!
//! A connection re-arms its timer on almost every event, nearly always to a later time. Only an
//! earlier deadline is pushed; a later one is recorded in the slot and pushed when the earlier
//! entry comes due. So each connection has about one entry in the heap, and re-arming to a later
//! time costs nothing.

use crate::conntrack::Millis;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A slot's timer state (kept in the connection slot).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Timer {
    /// When the connection wants to be woken.
    pub at: Option<Millis>,
    /// The earliest entry of this slot in the heap.
    queued: Option<Millis>,
}

/// The heap: (deadline, slot, incarnation of the slot).
#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Millis, usize, u32)>>,
}

impl Timers {
    /// Sets `timer` (of `slot`, incarnation `inc`) to fire at `at`.
    pub fn arm(&mut self, timer: &mut Timer, slot: usize, inc: u32, at: Millis) {
        timer.at = Some(at);
        if timer.queued.is_none_or(|q| at < q) {
            timer.queued = Some(at);
            self.heap.push(Reverse((at, slot, inc)));
        }
    }

    /// The earliest entry's time (it may be stale: waking early is harmless).
    pub fn next(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pops the next entry due at `now`: (slot, incarnation, its time).
    pub fn pop_due(&mut self, now: Millis) -> Option<(usize, u32, Millis)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                let Reverse((at, slot, inc)) = self.heap.pop()?;
                Some((slot, inc, at))
            }
            _ => None,
        }
    }

    /// Whether a popped entry (due at `entry`) fires `timer` at `now`. A stale entry is ignored;
    /// an entry that came due before a later re-arm queues the later time.
    pub fn fire(
        &mut self,
        timer: &mut Timer,
        slot: usize,
        inc: u32,
        entry: Millis,
        now: Millis,
    ) -> bool {
        if timer.queued != Some(entry) {
            return false;
        }
        timer.queued = None;
        match timer.at {
            Some(at) if at <= now => {
                timer.at = None;
                true
            }
            Some(at) => {
                self.arm(timer, slot, inc, at);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_rearms_do_not_grow_the_heap_and_fire_once() {
        let mut timers = Timers::default();
        let mut t = Timer::default();
        for at in 10..1000 {
            timers.arm(&mut t, 3, 0, at);
        }
        assert_eq!(timers.heap.len(), 1);
        let (slot, inc, entry) = timers.pop_due(10).unwrap();
        assert!(
            !timers.fire(&mut t, slot, inc, entry, 10),
            "re-armed to 999"
        );
        assert_eq!(timers.next(), Some(999));
        assert_eq!(timers.pop_due(998), None);
        let (slot, inc, entry) = timers.pop_due(999).unwrap();
        assert!(timers.fire(&mut t, slot, inc, entry, 999));
        assert_eq!(timers.next(), None);
        // An earlier deadline is pushed; the old entry goes stale.
        timers.arm(&mut t, 3, 0, 50);
        timers.arm(&mut t, 3, 0, 20);
        let (s, i, e) = timers.pop_due(20).unwrap();
        assert!(timers.fire(&mut t, s, i, e, 20));
        let (s, i, e) = timers.pop_due(50).unwrap();
        assert!(!timers.fire(&mut t, s, i, e, 50), "stale");
    }
}

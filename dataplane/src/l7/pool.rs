//! Idle backend connections, per backend: the data structure a transport keeps its reusable
//! connections in (the connection type is the transport's: a mio stream, a TCP handle).
//!
//! [`Action::ReleaseBackend`](super::Action::ReleaseBackend) means `put`;
//! [`Action::Connect`](super::Action::Connect) means `take`, or open a new connection when it
//! returns `None`. Most recently used first, so the least used connections age out.

use super::route::BackendId;
use crate::conntrack::Millis;
use rustc_hash::FxHashMap;

/// Idle connections to backends, each with the time it became idle.
#[derive(Debug)]
pub struct Pool<C> {
    idle: FxHashMap<BackendId, Vec<(C, Millis)>>,
    max_per_backend: usize,
    idle_timeout: Millis,
}

impl<C> Pool<C> {
    /// A pool keeping at most `max_per_backend` idle connections per backend, each for at most
    /// `idle_timeout` milliseconds.
    pub fn new(max_per_backend: usize, idle_timeout: Millis) -> Self {
        Pool {
            idle: FxHashMap::default(),
            max_per_backend,
            idle_timeout,
        }
    }

    /// An idle connection to `backend` that has not timed out, most recent first. Expired ones
    /// met on the way are handed to `close`.
    pub fn take(&mut self, backend: BackendId, now: Millis, mut close: impl FnMut(C)) -> Option<C> {
        let list = self.idle.get_mut(&backend)?;
        while let Some((conn, since)) = list.pop() {
            if now.saturating_sub(since) < self.idle_timeout {
                return Some(conn);
            }
            close(conn);
        }
        None
    }

    /// Keeps `conn` for reuse; returns it when the backend already has its fill (close it).
    pub fn put(&mut self, backend: BackendId, conn: C, now: Millis) -> Option<C> {
        let list = self.idle.entry(backend).or_default();
        if list.len() >= self.max_per_backend {
            return Some(conn);
        }
        list.push((conn, now));
        None
    }

    /// Removes a connection the peer closed while idle (found by `is_it`).
    pub fn remove(&mut self, backend: BackendId, mut is_it: impl FnMut(&C) -> bool) -> Option<C> {
        let list = self.idle.get_mut(&backend)?;
        let i = list.iter().position(|(c, _)| is_it(c))?;
        Some(list.remove(i).0)
    }

    /// Hands every connection idle for `idle_timeout` or longer to `close`.
    pub fn expire(&mut self, now: Millis, mut close: impl FnMut(C)) {
        for list in self.idle.values_mut() {
            // Oldest first in each list.
            let keep_from = list
                .iter()
                .position(|&(_, since)| now.saturating_sub(since) < self.idle_timeout)
                .unwrap_or(list.len());
            for (conn, _) in list.drain(..keep_from) {
                close(conn);
            }
        }
    }

    /// Idle connections held, all backends.
    pub fn len(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_cap_and_expiry() {
        let mut pool = Pool::new(2, 100);
        let b = BackendId(7);
        assert_eq!(pool.put(b, 'a', 0), None);
        assert_eq!(pool.put(b, 'b', 10), None);
        assert_eq!(pool.put(b, 'c', 20), Some('c'));
        assert_eq!(pool.take(b, 50, |_| panic!("nothing expired")), Some('b'));
        let mut closed = Vec::new();
        assert_eq!(pool.take(b, 150, |c| closed.push(c)), None);
        assert_eq!(closed, vec!['a']);
        pool.put(b, 'd', 200);
        pool.expire(300, |c| closed.push(c));
        assert_eq!(closed, vec!['a', 'd']);
        assert!(pool.is_empty());
        assert_eq!(pool.take(BackendId(1), 0, |_| {}), None);
    }
}

//! Backend choice: which service of a route's weighted split, then which endpoint of it.
//!
//! The split is a smooth weighted round robin (the same sequence every time: 70/30 gives seven
//! and three in every ten). Within a service: round robin (weighted by repeating the turn),
//! least outstanding requests, or weighted rendezvous hashing of a header, cookie or the client
//! address (a key keeps its endpoint while that endpoint exists; removing one moves only its
//! keys). State is per worker and sized to one table: a new table gets a new state.

use super::conn::{Routed, Router};
use super::errors::Status;
use super::route::{
    cookie, sticky_token, BackendId, HashKey, Pick, Policy, RequestView, RouteTable, SetCookie,
    Target,
};
use std::hash::{BuildHasher, Hasher};

/// Per-worker selection state for one [`RouteTable`].
#[derive(Clone, Debug, Default)]
pub struct SelectState {
    /// Smooth weighted round robin: current weight of each (split, entry).
    current: Vec<Vec<i64>>,
    /// Round robin position per service.
    turn: Vec<u64>,
    /// Requests in flight per endpoint.
    outstanding: Vec<u32>,
}

impl SelectState {
    /// Fresh state for `table`.
    pub fn new(table: &RouteTable) -> SelectState {
        SelectState {
            current: table.splits.iter().map(|s| vec![0; s.len()]).collect(),
            turn: vec![0; table.services.len()],
            outstanding: vec![0; table.backends.len()],
        }
    }

    /// Requests in flight to `backend` from this worker.
    pub fn outstanding(&self, backend: BackendId) -> u32 {
        self.outstanding[backend.0 as usize]
    }
}

/// A fixed hasher (same result on every worker and every run, so hashing is consistent).
fn hash_bytes(parts: &[&[u8]]) -> u64 {
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    for p in parts {
        h.write(p);
        h.write_u8(0xff);
    }
    // Fx mixes weakly in the low bits; finish with a multiply-xorshift.
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

fn key_hash(key: &HashKey, request: &RequestView<'_>) -> u64 {
    match key {
        HashKey::Header(name) => hash_bytes(&[request.header(name.as_bytes()).unwrap_or(b"")]),
        HashKey::Cookie(name) => {
            let value = request
                .header(b"cookie")
                .and_then(|c| cookie(c, name.as_bytes()));
            hash_bytes(&[value.unwrap_or(b"")])
        }
        HashKey::ClientAddr => match request.client {
            std::net::IpAddr::V4(a) => hash_bytes(&[&a.octets()]),
            std::net::IpAddr::V6(a) => hash_bytes(&[&a.octets()]),
        },
    }
}

/// Picks an endpoint of `service`, never `avoid`; `None` when none is usable.
fn pick_endpoint(
    table: &RouteTable,
    state: &mut SelectState,
    service: u32,
    hash: u64,
    avoid: Option<BackendId>,
) -> Option<BackendId> {
    let svc = &table.services[service as usize];
    let usable = |id: &BackendId| table.backends[id.0 as usize].weight > 0 && Some(*id) != avoid;
    let round_robin = |state: &mut SelectState| {
        let total: u64 = svc
            .backends
            .iter()
            .filter(|b| usable(b))
            .map(|b| u64::from(table.backends[b.0 as usize].weight))
            .sum();
        if total == 0 {
            return None;
        }
        let turn = &mut state.turn[service as usize];
        let mut at = *turn % total;
        *turn = turn.wrapping_add(1);
        svc.backends.iter().copied().filter(usable).find(|b| {
            let w = u64::from(table.backends[b.0 as usize].weight);
            if at < w {
                true
            } else {
                at -= w;
                false
            }
        })
    };
    match &svc.policy {
        Policy::RoundRobin => round_robin(state),
        // `hash` is the token the request's cookie names (0: none).
        Policy::Sticky(_) => svc
            .backends
            .iter()
            .copied()
            .filter(usable)
            .find(|b| hash != 0 && sticky_token(table.backends[b.0 as usize].addr) == hash)
            .or_else(|| round_robin(state)),
        Policy::LeastOutstanding => {
            // Fewest in flight relative to weight; ties go round robin.
            let turn = &mut state.turn[service as usize];
            let start = (*turn as usize) % svc.backends.len().max(1);
            *turn = turn.wrapping_add(1);
            let n = svc.backends.len();
            (0..n)
                .map(|i| svc.backends[(start + i) % n])
                .filter(usable)
                .min_by_key(|b| {
                    let w = u64::from(table.backends[b.0 as usize].weight);
                    (u64::from(state.outstanding[b.0 as usize]) << 32) / w
                })
        }
        Policy::Hash(_) => svc.backends.iter().copied().filter(usable).max_by(|a, b| {
            let score = |id: BackendId| {
                // The address, not the id: ids shift when a table is rebuilt.
                let addr = table.backends[id.0 as usize].addr;
                let ip = match addr.ip() {
                    std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                    std::net::IpAddr::V6(a) => a.octets(),
                };
                let h = hash_bytes(&[&hash.to_le_bytes(), &ip, &addr.port().to_le_bytes()]);
                // Weighted rendezvous: -w / ln(u), u uniform in (0, 1].
                let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                -f64::from(table.backends[id.0 as usize].weight) / u.ln()
            };
            score(*a).total_cmp(&score(*b))
        }),
    }
}

/// The table and this worker's selection state, as the connection machine's [`Router`].
#[derive(Debug)]
pub struct Routing<'a> {
    /// The table.
    pub table: &'a RouteTable,
    /// This worker's state for it.
    pub state: &'a mut SelectState,
}

impl<'a> Routing<'a> {
    /// What the table's route for `request` does: a backend (with the route's header rewrite),
    /// a redirect, or an answer. The filters borrow the table, not this state.
    pub fn route_in_table(&mut self, request: &RequestView<'_>) -> Routed<'a> {
        let table: &'a RouteTable = self.table;
        let matched = table.matched(request);
        if let Some(redirect) = matched.redirect {
            return Routed::Redirect(redirect);
        }
        match matched.target {
            Target::Answer(status) => Routed::Answer(status),
            Target::Split(split) => match self.pick_in_split(split, request) {
                Ok(pick) => {
                    let set_cookie = match &table.services[pick.service as usize].policy {
                        Policy::Sticky(name) => {
                            let token = sticky_token(table.backends[pick.backend.0 as usize].addr);
                            (token != pick.hash).then_some(SetCookie { name, token })
                        }
                        _ => None,
                    };
                    Routed::Send(pick, matched.request_headers, set_cookie)
                }
                Err(status) => Routed::Answer(status),
            },
        }
    }

    /// A backend of `split` for `request`.
    fn pick_in_split(&mut self, split: u32, request: &RequestView<'_>) -> Result<Pick, Status> {
        let service = self.pick_service(split).ok_or(Status::Unavailable)?;
        let hash = match &self.table.services[service as usize].policy {
            Policy::Hash(key) => key_hash(key, request),
            Policy::Sticky(name) => request
                .header(b"cookie")
                .and_then(|c| cookie(c, name.as_bytes()))
                .and_then(SetCookie::parse)
                .unwrap_or(0),
            _ => 0,
        };
        let chosen = pick_endpoint(self.table, self.state, service, hash, None);
        // The chosen service has nothing usable: any other service of the split will do.
        let (service, backend) = match chosen {
            Some(b) => (service, b),
            None => self.table.splits[split as usize]
                .iter()
                .filter(|&&(s, w)| w > 0 && s != service)
                .find_map(|&(s, _)| {
                    pick_endpoint(self.table, self.state, s, hash, None).map(|b| (s, b))
                })
                .ok_or(Status::Unavailable)?,
        };
        self.state.outstanding[backend.0 as usize] += 1;
        Ok(Pick {
            split,
            service,
            backend,
            hash,
        })
    }

    /// Chooses a service of `split` by smooth weighted round robin.
    fn pick_service(&mut self, split: u32) -> Option<u32> {
        let entries = &self.table.splits[split as usize];
        let current = &mut self.state.current[split as usize];
        let total: i64 = entries.iter().map(|&(_, w)| i64::from(w)).sum();
        if total == 0 {
            return None;
        }
        let mut best = 0;
        for (i, &(_, w)) in entries.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        Some(entries[best].0)
    }
}

impl Router for Routing<'_> {
    fn route(&mut self, request: &RequestView<'_>) -> Result<Pick, Status> {
        match self.table.lookup(request) {
            Target::Answer(status) => Err(status),
            Target::Split(split) => self.pick_in_split(split, request),
        }
    }

    fn route_request(&mut self, request: &RequestView<'_>) -> Routed<'_> {
        self.route_in_table(request)
    }

    fn retry(&mut self, pick: &Pick) -> Option<Pick> {
        // A pick from another table (the request outlived a reload) is not retried here.
        if pick.service as usize >= self.table.services.len() {
            return None;
        }
        let backend = pick_endpoint(
            self.table,
            self.state,
            pick.service,
            pick.hash,
            Some(pick.backend),
        )?;
        self.state.outstanding[backend.0 as usize] += 1;
        Some(Pick { backend, ..*pick })
    }

    fn finished(&mut self, pick: &Pick) {
        // A pick from another table counts nothing here (and must not panic).
        if let Some(n) = self.state.outstanding.get_mut(pick.backend.0 as usize) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::route::{
        BackendRef, EndpointSpec, Origin, PathMatch, RouteSpec, ServiceSpec, TableSpec,
    };
    use proptest::prelude::*;

    fn table(policy: Policy, weights: &[u32], split: &[u32]) -> RouteTable {
        let services = split
            .iter()
            .enumerate()
            .map(|(s, _)| ServiceSpec {
                name: format!("s{s}"),
                endpoints: weights
                    .iter()
                    .enumerate()
                    .map(|(i, &weight)| EndpointSpec {
                        addr: format!("10.0.{s}.{i}:80").parse().unwrap(),
                        weight,
                    })
                    .collect(),
                policy: policy.clone(),
                upstream: Default::default(),
            })
            .collect();
        let routes = vec![RouteSpec {
            cookies: Vec::new(),
            origin: Origin::Gateway,
            hosts: vec![],
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: vec![],
            backends: split
                .iter()
                .enumerate()
                .map(|(s, &weight)| BackendRef {
                    service: format!("s{s}"),
                    weight,
                })
                .collect(),
            redirect: None,
            request_headers: None,
        }];
        RouteTable::compile(&TableSpec {
            services,
            routes,
            default_backend: None,
        })
    }

    /// Routes one request on `t`: the endpoint and the token the answer sets (if any).
    fn sticky(
        r: &mut Routing<'_>,
        headers: &[(&str, &str)],
    ) -> (std::net::SocketAddr, Option<u64>) {
        let t = r.table;
        match r.route_in_table(&RequestView::from_parts("h", "/", "GET", headers)) {
            Routed::Send(p, _, c) => {
                r.finished(&p);
                (t.backends[p.backend.0 as usize].addr, c.map(|c| c.token))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sticky_cookie_is_set_followed_and_moved_when_its_endpoint_leaves() {
        let t = table(Policy::Sticky("srv".into()), &[1, 1, 0], &[1]);
        let mut state = SelectState::new(&t);
        let mut r = Routing {
            table: &t,
            state: &mut state,
        };
        // Without the cookie: in turn over the usable endpoints, each answer naming its own.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let (addr, c) = sticky(&mut r, &[]);
            assert_eq!(c, Some(sticky_token(addr)));
            seen.insert(addr);
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        // With it: the same endpoint every time, and no new cookie.
        let (addr, c) = sticky(&mut r, &[]);
        let cookie = format!("a=1; srv={:016x}; b=2", c.unwrap());
        for _ in 0..20 {
            assert_eq!(sticky(&mut r, &[("cookie", &cookie)]), (addr, None));
        }
        // A value naming no endpoint, or the drained one (weight 0): balanced, told the new one.
        let drained: std::net::SocketAddr = "10.0.0.2:80".parse().unwrap();
        for value in [
            "zz".to_string(),
            "00000000000000ff".to_string(),
            format!("{:016x}", sticky_token(drained)),
        ] {
            let (to, c) = sticky(&mut r, &[("cookie", &format!("srv={value}"))]);
            assert_ne!(to, drained);
            assert_eq!(c, Some(sticky_token(to)), "{value}");
        }
        // Tokens are the address's: the same on every table and replica.
        assert_eq!(
            SetCookie::parse(format!("{:016x}", sticky_token(addr)).as_bytes()),
            Some(sticky_token(addr))
        );
        let mut line = Vec::new();
        SetCookie {
            name: "srv",
            token: 0xab,
        }
        .write(&mut line);
        assert_eq!(
            line,
            b"set-cookie: srv=00000000000000ab; Path=/; HttpOnly\r\n"
        );
    }

    fn counts(t: &RouteTable, n: usize, headers: &[(&str, &str)]) -> Vec<usize> {
        let mut state = SelectState::new(t);
        let mut routing = Routing {
            table: t,
            state: &mut state,
        };
        let mut seen = vec![0; t.backends.len()];
        for _ in 0..n {
            let pick = routing
                .route(&RequestView::from_parts("h", "/", "GET", headers))
                .unwrap();
            seen[pick.backend.0 as usize] += 1;
            routing.finished(&pick);
        }
        seen
    }

    #[test]
    fn round_robin_is_weighted_and_skips_weight_zero() {
        let t = table(Policy::RoundRobin, &[1, 2, 0], &[1]);
        assert_eq!(counts(&t, 300, &[]), vec![100, 200, 0]);
    }

    #[test]
    fn split_is_exact_over_each_period() {
        let t = table(Policy::RoundRobin, &[1], &[70, 30, 0]);
        assert_eq!(counts(&t, 1000, &[]), vec![700, 300, 0]);
    }

    #[test]
    fn least_outstanding_avoids_busy_endpoints() {
        let t = table(Policy::LeastOutstanding, &[1, 1, 1], &[1]);
        let mut state = SelectState::new(&t);
        let mut routing = Routing {
            table: &t,
            state: &mut state,
        };
        let view = RequestView::from_parts("h", "/", "GET", &[]);
        // Three requests in flight spread over the three endpoints.
        let picks: Vec<_> = (0..3).map(|_| routing.route(&view).unwrap()).collect();
        let mut ids: Vec<_> = picks.iter().map(|p| p.backend.0).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 1, 2]);
        // Finish the one on endpoint 1: the next request goes there.
        let on_one = picks.iter().find(|p| p.backend.0 == 1).unwrap();
        routing.finished(on_one);
        assert_eq!(routing.route(&view).unwrap().backend.0, 1);
    }

    #[test]
    fn retry_never_picks_the_same_endpoint() {
        let t = table(Policy::RoundRobin, &[1, 1], &[1]);
        let mut state = SelectState::new(&t);
        let mut routing = Routing {
            table: &t,
            state: &mut state,
        };
        let first = routing
            .route(&RequestView::from_parts("h", "/", "GET", &[]))
            .unwrap();
        assert_ne!(routing.retry(&first).unwrap().backend, first.backend);
        let single = table(Policy::RoundRobin, &[1], &[1]);
        let mut state = SelectState::new(&single);
        let mut routing = Routing {
            table: &single,
            state: &mut state,
        };
        let first = routing
            .route(&RequestView::from_parts("h", "/", "GET", &[]))
            .unwrap();
        assert_eq!(routing.retry(&first), None);
    }

    #[test]
    fn picks_from_another_table_are_ignored() {
        let big = table(Policy::RoundRobin, &[1, 1, 1], &[1, 1]);
        let small = table(Policy::RoundRobin, &[1], &[1]);
        let mut big_state = SelectState::new(&big);
        let pick = Routing {
            table: &big,
            state: &mut big_state,
        }
        .route(&RequestView::from_parts("h", "/", "GET", &[]))
        .unwrap();
        let far = Pick {
            service: 1,
            backend: BackendId(5),
            ..pick
        };
        let mut state = SelectState::new(&small);
        let mut routing = Routing {
            table: &small,
            state: &mut state,
        };
        routing.finished(&far);
        assert_eq!(routing.retry(&far), None);
    }

    #[test]
    fn cookie_values() {
        assert_eq!(cookie(b"a=1; sid=xyz; b=2", b"sid"), Some(&b"xyz"[..]));
        assert_eq!(cookie(b"a=1", b"sid"), None);
    }

    proptest! {
        /// A key always lands on the same endpoint, and removing another endpoint does not move it.
        #[test]
        fn hash_is_consistent(key in "[a-z0-9]{1,12}", drop in 0usize..5) {
            let policy = Policy::Hash(HashKey::Header("x-user".into()));
            let all = table(policy.clone(), &[1, 1, 1, 1, 1], &[1]);
            let headers = [("X-User", key.as_str())];
            let view = RequestView::from_parts("h", "/", "GET", &headers);
            let mut state = SelectState::new(&all);
            let mut routing = Routing { table: &all, state: &mut state };
            let a = routing.route(&view).unwrap().backend;
            prop_assert_eq!(routing.route(&view).unwrap().backend, a);
            let mut weights = [1u32; 5];
            weights[drop] = 0;
            let fewer = table(policy, &weights, &[1]);
            let mut state = SelectState::new(&fewer);
            let mut routing = Routing { table: &fewer, state: &mut state };
            let b = routing.route(&view).unwrap().backend;
            if a.0 as usize != drop {
                prop_assert_eq!(a, b);
            } else {
                prop_assert_ne!(b.0 as usize, drop);
            }
        }

        /// Weighted split: over any whole number of periods the counts are the weights exactly.
        #[test]
        fn split_counts_follow_weights(w in proptest::collection::vec(0u32..20, 1..5), periods in 1usize..4) {
            prop_assume!(w.iter().any(|&x| x > 0));
            let t = table(Policy::RoundRobin, &[1], &w);
            let total: u32 = w.iter().sum();
            let seen = counts(&t, total as usize * periods, &[]);
            let want: Vec<usize> = w.iter().map(|&x| x as usize * periods).collect();
            prop_assert_eq!(seen, want);
        }
    }
}

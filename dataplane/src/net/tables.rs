//! Route table generations on one worker, as the core's [`Router`].
//!
//! A connection holds the generation its current request was routed on (for the retry and the
//! bookkeeping) until its next request is routed. Routing a request loads the published table: a
//! new one becomes the newest generation, with fresh selection state. A generation no request
//! holds any more, and that is not the newest, is dropped.
//!
//! Metrics: when a request ends, its route and backend indexes are named on the generation
//! that routed it ([`Router::metrics_key`], once per pair and generation: the registry's lock),
//! giving a registry id whose handles the worker keeps; counting is then an index and atomics.

use super::metrics::{RequestHandles, RequestStats, NONE};
use crate::l7::route::{BackendId, Pick, RequestView};
use crate::l7::upstream::Upstream;
use crate::l7::{Ended, RouteTable, Routed, Router, Routing, SelectState, Status};
use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

#[derive(Debug)]
struct Generation {
    table: Arc<RouteTable>,
    state: SelectState,
    /// Connections holding it.
    users: u32,
    /// (split, backend) -> registry id, filled on first use.
    keys: FxHashMap<(u32, u32), u32>,
}

/// The tables a worker serves from.
#[derive(Debug)]
pub(super) struct Tables {
    source: Arc<ArcSwap<RouteTable>>,
    gens: Vec<Option<Generation>>,
    newest: usize,
    /// The proxy's request counters.
    stats: Arc<RequestStats>,
    /// Registry id -> handles, for the ids this worker met.
    handles: Vec<Option<RequestHandles>>,
}

impl Tables {
    pub fn new(source: Arc<ArcSwap<RouteTable>>, stats: Arc<RequestStats>) -> Tables {
        let table = source.load_full();
        let state = SelectState::new(&table);
        let (none, handles) = stats.resolve(NONE, NONE);
        debug_assert_eq!(none, 0);
        Tables {
            source,
            gens: vec![Some(Generation {
                table,
                state,
                users: 0,
                keys: FxHashMap::default(),
            })],
            newest: 0,
            stats,
            handles: vec![Some(handles)],
        }
    }

    fn generation(&mut self, g: usize) -> &mut Generation {
        self.gens[g].as_mut().expect("a held generation is kept")
    }

    /// Adopts the published table if it changed.
    fn refresh(&mut self) {
        let current = self.source.load();
        if Arc::ptr_eq(&current, &self.generation(self.newest).table) {
            return;
        }
        let table = arc_swap::Guard::into_inner(current);
        let gen = Generation {
            state: SelectState::new(&table),
            table,
            users: 0,
            keys: FxHashMap::default(),
        };
        let old = self.newest;
        self.newest = match self.gens.iter().position(Option::is_none) {
            Some(free) => {
                self.gens[free] = Some(gen);
                free
            }
            None => {
                self.gens.push(Some(gen));
                self.gens.len() - 1
            }
        };
        if self.generation(old).users == 0 {
            self.gens[old] = None;
        }
    }

    /// A connection lets go of generation `g`.
    pub fn release(&mut self, g: usize) {
        let gen = self.generation(g);
        gen.users -= 1;
        if gen.users == 0 && g != self.newest {
            self.gens[g] = None;
        }
    }

    /// Where `backend` of generation `g` listens.
    #[cfg(test)]
    pub fn addr(&mut self, g: usize, backend: BackendId) -> Option<SocketAddr> {
        let table = &self.generation(g).table;
        table.backends.get(backend.0 as usize).map(|b| b.addr)
    }

    /// Where `backend` of generation `g` listens and how connections to it are made.
    pub fn backend_conn(
        &mut self,
        g: usize,
        backend: BackendId,
    ) -> Option<(SocketAddr, &Arc<Upstream>)> {
        self.generation(g).table.backend_conn(backend)
    }

    /// The registry id of requests on `split` to `backend` of generation `g` (0: unknown).
    fn key(&mut self, g: usize, split: u32, backend: BackendId) -> u32 {
        let Some(gen) = self.gens.get_mut(g).and_then(Option::as_mut) else {
            return 0;
        };
        if let Some(&id) = gen.keys.get(&(split, backend.0)) {
            return id;
        }
        let table = &gen.table;
        let (Some(route), Some(b)) = (
            table.split_names.get(split as usize),
            table.backends.get(backend.0 as usize),
        ) else {
            return 0;
        };
        let (id, handles) = self.stats.resolve(route, &b.addr.to_string());
        gen.keys.insert((split, backend.0), id);
        let i = id as usize;
        if self.handles.len() <= i {
            self.handles.resize(i + 1, None);
        }
        self.handles[i] = Some(handles);
        id
    }

    /// Counts an ended request that took `total_us` (`head_us` to its response head).
    pub fn record(&self, ended: &Ended, total_us: u64, head_us: u64) {
        let h = self
            .handles
            .get(ended.key as usize)
            .and_then(Option::as_ref)
            .or(self.handles[0].as_ref())
            .expect("id 0 is resolved at start");
        h.counts.0[ended.class()].fetch_add(1, Relaxed);
        h.route.duration.observe(total_us);
        h.route.head.observe(head_us);
    }

    /// Generations alive (the newest and those requests still hold).
    #[cfg(test)]
    pub fn alive(&self) -> usize {
        self.gens.iter().flatten().count()
    }
}

/// The [`Router`] a connection's calls get: the worker's tables and the connection's generation.
pub(super) struct ConnRouter<'a> {
    pub tables: &'a mut Tables,
    pub gen: &'a mut Option<usize>,
}

impl ConnRouter<'_> {
    /// The newest table for a new request: the connection moves to its generation.
    fn newest(&mut self) -> Routing<'_> {
        self.tables.refresh();
        let newest = self.tables.newest;
        if *self.gen != Some(newest) {
            if let Some(old) = self.gen.take() {
                self.tables.release(old);
            }
            self.tables.generation(newest).users += 1;
            *self.gen = Some(newest);
        }
        let gen = self.tables.generation(newest);
        Routing {
            table: &gen.table,
            state: &mut gen.state,
        }
    }
}

impl Router for ConnRouter<'_> {
    fn route(&mut self, request: &RequestView<'_>) -> Result<Pick, Status> {
        self.newest().route(request)
    }

    fn route_request(&mut self, request: &RequestView<'_>) -> Routed<'_> {
        // The route's filters borrow the table, which outlives this call's Routing.
        self.newest().route_in_table(request)
    }

    fn retry(&mut self, pick: &Pick) -> Option<Pick> {
        let gen = self.tables.generation((*self.gen)?);
        Routing {
            table: &gen.table,
            state: &mut gen.state,
        }
        .retry(pick)
    }

    fn finished(&mut self, pick: &Pick) {
        if let Some(g) = *self.gen {
            let gen = self.tables.generation(g);
            Routing {
                table: &gen.table,
                state: &mut gen.state,
            }
            .finished(pick);
        }
    }

    fn metrics_key(&mut self, split: u32, backend: BackendId) -> u32 {
        match *self.gen {
            Some(g) => self.tables.key(g, split, backend),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::head::{parse_request, HeadScan, Limits, RequestHead};
    use crate::l7::route::{
        BackendRef, EndpointSpec, Origin, PathMatch, Policy, RouteSpec, ServiceSpec,
    };
    use crate::l7::TableSpec;

    fn table(port: u16) -> RouteTable {
        RouteTable::compile(&TableSpec {
            services: vec![ServiceSpec {
                name: "s".into(),
                endpoints: vec![EndpointSpec {
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    weight: 1,
                }],
                policy: Policy::RoundRobin,
                upstream: Default::default(),
            }],
            routes: vec![RouteSpec {
                cookies: Vec::new(),
                origin: Origin::Ingress,
                hosts: vec![],
                path: PathMatch::Prefix("/".into()),
                method: None,
                headers: vec![],
                backends: vec![BackendRef {
                    service: "s".into(),
                    weight: 1,
                }],
                redirect: None,
                request_headers: None,
            }],
            default_backend: None,
        })
    }

    #[test]
    fn a_request_keeps_its_table_and_the_next_one_takes_the_new_one() {
        let source = Arc::new(ArcSwap::from_pointee(table(1)));
        let mut tables = Tables::new(source.clone(), Arc::default());
        let buf = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let limits = Limits::default();
        let len = HeadScan::default().scan(buf, &limits).unwrap().unwrap();
        let mut head = RequestHead::default();
        parse_request(buf, len, &limits, &mut head).unwrap();
        let view = RequestView::new(buf, &head, [127, 0, 0, 1].into());

        let (mut a, mut b) = (None, None);
        let pick = ConnRouter {
            tables: &mut tables,
            gen: &mut a,
        }
        .route(&view)
        .unwrap();
        source.store(Arc::new(table(2)));
        // `a` is mid-request: its backend is still the old table's.
        assert_eq!(tables.addr(a.unwrap(), pick.backend).unwrap().port(), 1);
        let pick_b = ConnRouter {
            tables: &mut tables,
            gen: &mut b,
        }
        .route(&view)
        .unwrap();
        assert_eq!(tables.addr(b.unwrap(), pick_b.backend).unwrap().port(), 2);
        assert_eq!(tables.alive(), 2);
        // `a`'s next request moves it to the new table; the old one is dropped.
        ConnRouter {
            tables: &mut tables,
            gen: &mut a,
        }
        .route(&view)
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(tables.alive(), 1);
    }

    #[test]
    fn a_request_is_counted_on_the_table_that_routed_it() {
        let source = Arc::new(ArcSwap::from_pointee(table(1)));
        let stats = Arc::new(RequestStats::default());
        let mut tables = Tables::new(source.clone(), stats.clone());
        let buf = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let limits = Limits::default();
        let len = HeadScan::default().scan(buf, &limits).unwrap().unwrap();
        let mut head = RequestHead::default();
        parse_request(buf, len, &limits, &mut head).unwrap();
        let view = RequestView::new(buf, &head, [127, 0, 0, 1].into());
        let mut gen = None;
        let mut router = ConnRouter {
            tables: &mut tables,
            gen: &mut gen,
        };
        let pick = router.route(&view).unwrap();
        // A reload lands while the request is in flight: it still counts on port 1.
        source.store(Arc::new(table(2)));
        let key = router.metrics_key(pick.split, pick.backend);
        assert_ne!(key, 0);
        let ended = Ended {
            split: Some(pick.split),
            backend: Some(pick.backend),
            status: 204,
            key,
        };
        tables.record(&ended, 7_000, 1_000);
        // One with no backend counts on (none, none).
        tables.record(
            &Ended {
                split: None,
                backend: None,
                status: 404,
                key: 0,
            },
            0,
            0,
        );
        let read = stats.read();
        let pair = |backend: &str| {
            read.pairs
                .iter()
                .find(|p| p.backend == backend)
                .map(|p| (p.route.clone(), p.classes))
        };
        assert_eq!(pair("127.0.0.1:1"), Some(("*/".into(), [0, 1, 0, 0, 0])));
        assert_eq!(pair(NONE), Some((NONE.into(), [0, 0, 0, 1, 0])));
        let route = read.routes.iter().find(|r| r.route == "*/").unwrap();
        assert_eq!(route.duration.buckets[1], 1, "7 ms: le=0.01");
        assert_eq!(route.head.buckets[0], 1, "1 ms: le=0.005");
    }
}

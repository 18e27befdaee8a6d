//! The one publish step: a compiled table becomes the workers' table only through
//! [`ControlPlane::apply`], and replaced tables leave only through
//! [`ControlPlane::release_retired`].
//!
//! Publishing binds next hops to neighbor-cache slots, widens the XDP address filter to the new
//! table's addresses, keeps the settings a running dataplane cannot change at their running
//! values, stores the table and wakes the workers. Releasing drops tables no worker can still be
//! reading and shrinks what they alone needed: Maglev tables, neighbor slots and filter entries.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use dataplane::port::af_xdp::OwnedAddrs;
use dataplane::table::TableError;
use dataplane::RoutingTable;

use super::l7::{EndpointChange, L7Error};
use super::{ControlPlane, Inner};
use crate::compile::{HttpListener, NextHops};
use crate::config::{self, Config};

/// Where the network decides which frames reach the balancer at all: AF_XDP's map of owned
/// addresses (frames to them) and nat backends (frames from them). Frames outside it stay with
/// the kernel, so it must cover every table a worker may be serving.
pub trait AddressFilter: Send {
    /// Replaces the filter with `owned` (frames to them) and `sources` (frames from them).
    fn set(&self, owned: &[IpAddr], sources: &[IpAddr]) -> io::Result<()>;
}

/// The filters of several interfaces, kept equal: every interface lets the same addresses in.
impl AddressFilter for Vec<Box<dyn AddressFilter>> {
    fn set(&self, owned: &[IpAddr], sources: &[IpAddr]) -> io::Result<()> {
        for f in self {
            f.set(owned, sources)?;
        }
        Ok(())
    }
}

impl AddressFilter for OwnedAddrs {
    fn set(&self, owned: &[IpAddr], sources: &[IpAddr]) -> io::Result<()> {
        self.set_with_sources(owned, sources)
    }
}

/// The addresses a set of tables needs in the filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Addresses {
    owned: BTreeSet<IpAddr>,
    sources: BTreeSet<IpAddr>,
}

impl Addresses {
    fn add(&mut self, t: &RoutingTable) {
        self.owned.extend(t.owned_addrs().map(IpAddr::from));
        self.sources.extend(t.nat_backend_addrs().map(IpAddr::from));
    }

    fn write(&self, filter: &dyn AddressFilter) -> io::Result<()> {
        let owned: Vec<IpAddr> = self.owned.iter().copied().collect();
        let sources: Vec<IpAddr> = self.sources.iter().copied().collect();
        filter.set(&owned, &sources)
    }
}

/// The filter and what was last written to it.
pub(super) struct Filter {
    filter: Box<dyn AddressFilter>,
    written: Addresses,
    /// A shrink failed: try again at the next release check.
    stale: bool,
}

/// Why a compiled table was not published; the serving table keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A next hop could not get a neighbor-cache slot or a probe source.
    #[error("{0}{hint}", hint = neighbor_hint(.0))]
    Neighbors(#[source] TableError),
    /// The XDP address filter could not be widened to the new table's addresses.
    #[error("updating the XDP address filter: {0}")]
    AddressFilter(#[source] io::Error),
    /// An `[[http]]` listener could not load its certificates or open its sockets.
    #[error("{0}")]
    Http(#[from] L7Error),
}

/// What an operator can do about a neighbor error.
fn neighbor_hint(e: &TableError) -> &'static str {
    match e {
        TableError::NoProbeSource { .. } => {
            " (hint: next hops are resolved from our own addresses of their family: add one to [dataplane] addresses)"
        }
        TableError::NeighborsFull { .. } => {
            " (hint: fewer distinct next hops: list backends off the link behind a [dataplane] gateway)"
        }
        _ => "",
    }
}

/// What `lb run` read once at start and keeps until it restarts: ports, workers and their
/// cores, conntrack sizing, the admin listener, logging, and the SNAT port range the workers'
/// slices (and so the steering of fullnat replies) are cut from.
#[derive(Clone, Debug)]
pub(super) struct Fixed {
    dataplane: config::Dataplane,
    conntrack: config::Conntrack,
    admin: config::Admin,
    logging: config::Logging,
}

impl Fixed {
    pub(super) fn of(cfg: &Config) -> Fixed {
        Fixed {
            dataplane: cfg.dataplane.clone(),
            conntrack: cfg.conntrack.clone(),
            admin: cfg.admin.clone(),
            logging: cfg.logging.clone(),
        }
    }

    /// The restart-only settings `new` changes, by their place in the file.
    pub(super) fn changes(&self, new: &Config) -> Vec<String> {
        let (a, b) = (&self.dataplane, &new.dataplane);
        let mut out = Vec::new();
        let mut note = |name: &str, changed: bool| {
            if changed {
                out.push(name.to_string());
            }
        };
        note("dataplane.port", a.port != b.port);
        note(
            "dataplane.interface",
            a.interface_name() != b.interface_name(),
        );
        // Which interfaces are opened, and how; their addresses, MACs and links apply on reload.
        type Opened = (
            String,
            config::PortKind,
            Option<Vec<u32>>,
            [Option<String>; 2],
        );
        let opened = |d: &config::Dataplane| -> Vec<Opened> {
            d.links()
                .into_iter()
                .map(|l| (l.name, l.port, l.queues, [l.dpdk_device, l.dpdk_vdev]))
                .collect()
        };
        note(
            "dataplane.interfaces",
            !(a.interfaces.is_empty() && b.interfaces.is_empty()) && opened(a) != opened(b),
        );
        note("dataplane.queues", a.queues != b.queues);
        note("dataplane.workers", a.workers != b.workers);
        note("dataplane.cores", a.cores != b.cores);
        note("dataplane.idle", a.idle != b.idle);
        note("dataplane.xdp_mode", a.xdp_mode != b.xdp_mode);
        note("dataplane.dpdk", a.dpdk != b.dpdk);
        // Each worker's source-port slice is cut from this range and a fullnat reply is
        // steered by it: a live change would send replies of existing flows to other workers.
        note("dataplane.snat_ports", a.snat_ports != b.snat_ports);
        note("conntrack", self.conntrack != new.conntrack);
        note("admin", self.admin != new.admin);
        note("logging", self.logging != new.logging);
        out
    }

    /// The interfaces the workers poll (the running ones), by name.
    pub(super) fn interface_names(&self) -> Vec<String> {
        self.dataplane.links().into_iter().map(|l| l.name).collect()
    }

    /// Puts the running values of the restart-only settings the table carries into `table`.
    fn keep(&self, table: &mut RoutingTable) {
        table.local.snat_ports = (self.dataplane.snat_ports.lo, self.dataplane.snat_ports.hi);
        // The workers poll the interfaces they started with: a table naming more would send
        // frames to ports they do not have (past the end, interface 0's MAC applies).
        let running = self.dataplane.links().len();
        table.local.more.truncate(running.saturating_sub(1));
    }
}

/// A compiled table on its way to the workers.
pub(super) struct Next {
    /// The table, with the next generation.
    pub table: RoutingTable,
    /// Its next hops, bound to cache slots when it is published.
    pub next_hops: Option<NextHops>,
    /// Services failing open in it.
    pub failing: std::collections::HashSet<String>,
    /// The `[[http]]` listeners compiled with it (same overrides and health).
    pub http: Vec<HttpListener>,
}

impl ControlPlane {
    /// Publishes `next` (and makes `config`, with its text, the serving config): the only place
    /// a table reaches the workers, L4 or L7. Nothing changes on an error, except that
    /// `[[http]]` listeners bound before a failing one keep their new sockets (each serving its
    /// old routes until a publish succeeds).
    ///
    /// L7 order: route tables compiled and certificates read first (no socket touched), then
    /// new listeners started and sockets or certificates changed, then the L4 table stored, then
    /// the route tables swapped and removed listeners stopped. A config (`Some`) rereads the
    /// certificate files; a rebuild (health, operators) keeps the loaded ones.
    pub(super) fn apply(
        &self,
        inner: &mut Inner,
        next: Next,
        config: Option<(Config, String)>,
    ) -> Result<u64, ApplyError> {
        let Next {
            mut table,
            next_hops,
            failing,
            http,
        } = next;
        let http = inner.l7.prepare(http, config.is_some())?;
        let mut restart = config
            .as_ref()
            .map(|(c, _)| inner.fixed.changes(c))
            .unwrap_or_default();
        inner.fixed.keep(&mut table);
        if let Some(hops) = &next_hops {
            if let Err(e) = table.set_neighbors(hops.spec(inner.neighbors.clone())) {
                // Slots bound before the failure are used by no table.
                self.retain_neighbors(inner);
                return Err(ApplyError::Neighbors(e));
            }
        }
        self.widen_filter(inner, &table)?;
        match inner.l7.bind(&http) {
            // Reported for a new file only, as the settings above (a rebuild changes none).
            Ok(notes) if config.is_some() => restart.extend(notes),
            Ok(_) => {}
            Err(e) => {
                self.retain_neighbors(inner);
                return Err(e.into());
            }
        }
        for n in &restart {
            tracing::warn!(setting = %n, "this change needs a restart; the rest of the file is applied");
        }
        let g = table.generation;
        inner.generation = g;
        inner.failing_open = failing;
        // The replaced config (every service and backend) is freed after the swap, not before:
        // the workers need not wait for it.
        let old_config = config.map(|(c, text)| {
            inner.reload.restart_needed = restart;
            (
                std::mem::replace(&mut inner.config, c),
                std::mem::replace(&mut inner.text, text),
            )
        });
        self.store(inner, table);
        inner.l7.publish(http);
        drop(old_config);
        Ok(g)
    }

    /// Publishes `table`, a copy of the serving one with some services' backends changed
    /// ([`RoutingTable::with_backends`]), and the new route tables of the listeners whose
    /// upstreams changed with them. Nothing changes on an error.
    pub(super) fn apply_entries(
        &self,
        inner: &mut Inner,
        mut table: RoutingTable,
        http: Vec<EndpointChange>,
        failing: std::collections::HashSet<String>,
    ) -> Result<u64, ApplyError> {
        inner.fixed.keep(&mut table);
        self.widen_filter(inner, &table)?;
        let g = table.generation;
        inner.generation = g;
        inner.failing_open = failing;
        self.store(inner, table);
        inner.l7.publish_endpoints(http);
        Ok(g)
    }

    /// Frames for `table`'s addresses must reach the workers before they serve it; the old
    /// table's stay until it is released.
    fn widen_filter(&self, inner: &mut Inner, table: &RoutingTable) -> Result<(), ApplyError> {
        if let Some(f) = &mut inner.filter {
            let mut want = f.written.clone();
            want.add(table);
            if want != f.written {
                let written = want.write(&*f.filter);
                if let Err(e) = written {
                    self.retain_neighbors(inner);
                    return Err(ApplyError::AddressFilter(e));
                }
                f.written = want;
            }
        }
        Ok(())
    }

    /// Makes `table` the workers' table and wakes them; the replaced one is retired.
    fn store(&self, inner: &mut Inner, table: RoutingTable) {
        let old = self.table.swap(Arc::new(table));
        // Generation 0 is the placeholder no worker was started on.
        if old.generation > 0 {
            inner.retired.push(old);
        }
        // Idle workers sleep up to a millisecond: wake them so the new table is served now.
        for h in self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            h.wake();
        }
    }

    /// Hands the plane the address filter of the opened ports and writes the serving table's
    /// addresses into it; from now on every publish and release keeps it current.
    pub fn attach_filter(&self, filter: Box<dyn AddressFilter>) -> io::Result<()> {
        let mut inner = self.lock();
        let mut want = Addresses::default();
        want.add(&self.table.load());
        for t in &inner.retired {
            want.add(t);
        }
        want.write(&*filter)?;
        inner.filter = Some(Filter {
            filter,
            written: want,
            stale: false,
        });
        Ok(())
    }

    /// Drops replaced tables no worker can still be reading, then what only they used: Maglev
    /// tables, neighbor slots and address-filter entries. The number of tables dropped.
    pub fn release_retired(&self) -> usize {
        let Some(adopted) = self.adopted_generation() else {
            return 0;
        };
        let mut inner = self.lock();
        let before = inner.retired.len();
        inner.retired.retain(|t| t.generation >= adopted);
        let released = before - inner.retired.len();
        if released > 0 {
            inner.cache.retain_used();
            self.retain_neighbors(&inner);
        }
        if released > 0 || inner.filter.as_ref().is_some_and(|f| f.stale) {
            self.shrink_filter(&mut inner);
        }
        drop(inner);
        if released > 0 {
            // What the released tables held goes back to the kernel, not only to the allocator.
            crate::sys::return_free_memory();
        }
        released
    }

    /// Frees the neighbor slots of next hops no table still uses.
    pub(super) fn retain_neighbors(&self, inner: &Inner) {
        let serving = self.table.load();
        inner.neighbors.retain(|a| {
            serving.next_hop_by_addr(a).is_some()
                || inner
                    .retired
                    .iter()
                    .any(|t| t.next_hop_by_addr(a).is_some())
        });
    }

    /// Narrows the filter to the tables still in use. A failure leaves it wider than needed
    /// (those frames reach a worker, which hands them to the host or drops them) and is
    /// retried at the next release check.
    fn shrink_filter(&self, inner: &mut Inner) {
        let mut want = Addresses::default();
        want.add(&self.table.load());
        for t in &inner.retired {
            want.add(t);
        }
        let Some(f) = &mut inner.filter else {
            return;
        };
        if want == f.written {
            f.stale = false;
            return;
        }
        match want.write(&*f.filter) {
            Ok(()) => {
                f.written = want;
                f.stale = false;
            }
            Err(e) => {
                if !f.stale {
                    tracing::warn!(error = %e, "could not remove released addresses from the XDP filter");
                }
                f.stale = true;
            }
        }
    }
}

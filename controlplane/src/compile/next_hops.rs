//! Next hops resolved at run time by ARP/ND: what the table's neighbor binding needs from the
//! config. Compiling only describes them; binding cache slots is the publishing step's job.

use std::sync::Arc;

use dataplane::flow::Addr;
use dataplane::neighbor::NeighborCache;
use dataplane::table::{Link, NeighborSpec, TableError};

use super::Compiled;
use crate::config::{self, Config};

/// Next-hop addresses the neighbor cache holds at most (backends on the link plus gateways).
pub const NEIGHBOR_SLOTS: usize = 16_384;

/// How backends' next hops are resolved: each interface's `on_link`, `gateway` and `routes`
/// (`[dataplane]`'s own for one interface), and the static MACs (`[[neighbors]]`, `gateway_mac`
/// for the gateways).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHops {
    /// What each interface reaches, in interface order.
    pub links: Vec<Link>,
    /// Addresses whose MAC is configured: never probed.
    pub statics: Vec<(Addr, [u8; 6])>,
    /// Static neighbors with an `interface`: the interface's index.
    pub pinned: Vec<(Addr, u8)>,
}

impl NextHops {
    /// The next hops of `cfg`; `None` when it resolves none and places no static neighbor on
    /// an interface (no `on_link`, no `gateway` on any interface, no `[[neighbors]]
    /// interface`): then every backend's MAC is static and it leaves by interface 0.
    pub fn of(cfg: &Config) -> Option<NextHops> {
        let dp = &cfg.dataplane;
        let links = dp.links();
        let pinned: Vec<(Addr, u8)> = cfg
            .pinned_neighbors(&links)
            .into_iter()
            .map(|(a, i)| (Addr::from(a), i))
            .collect();
        if pinned.is_empty()
            && links
                .iter()
                .all(|l| l.on_link.is_empty() && l.gateway.is_empty())
        {
            return None;
        }
        let mut statics: Vec<(Addr, [u8; 6])> = cfg
            .neighbors
            .iter()
            .map(|n| (Addr::from(n.ip), n.mac.0))
            .collect();
        // A gateway with a configured MAC is a static neighbor too.
        if let Some(mac) = dp.gateway_mac {
            statics.extend(
                links
                    .iter()
                    .flat_map(|l| l.gateway.iter())
                    .map(|g| (Addr::from(*g), mac.0)),
            );
        }
        Some(NextHops {
            links: links.iter().map(config::Link::to_table).collect(),
            statics,
            pinned,
        })
    }

    /// What `RoutingTable::set_neighbors` takes, binding slots of `cache`.
    pub fn spec(&self, cache: Arc<NeighborCache>) -> NeighborSpec {
        NeighborSpec {
            cache,
            links: self.links.clone(),
            statics: self.statics.clone(),
            pinned: self.pinned.clone(),
        }
    }
}

impl Compiled {
    /// Binds the table's next hops to a cache of its own, as a process serving only this table
    /// would (`lb check`, `lb sim`, tests); a running control plane binds the cache every
    /// generation shares instead. Fails when the cache is full.
    pub fn bind_fresh(&mut self) -> Result<(), TableError> {
        match &self.next_hops {
            Some(hops) => self
                .table
                .set_neighbors(hops.spec(Arc::new(NeighborCache::new(NEIGHBOR_SLOTS)))),
            None => Ok(()),
        }
    }
}

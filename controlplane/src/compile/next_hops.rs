//! Next hops resolved at run time by ARP/ND: what the table's neighbor binding needs from the
//! config. Compiling only describes them; binding cache slots is the publishing step's job.

use std::sync::Arc;

use dataplane::flow::Addr;
use dataplane::neighbor::NeighborCache;
use dataplane::table::{NeighborSpec, Prefix, TableError};

use super::Compiled;
use crate::config::Config;

/// Next-hop addresses the neighbor cache holds at most (backends on the link plus gateways).
pub const NEIGHBOR_SLOTS: usize = 16_384;

/// How backends' next hops are resolved: `[dataplane] on_link` and `gateway`, and the static MACs
/// (`[[neighbors]]`, `gateway_mac` for the gateways).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHops {
    /// Prefixes on our link: a backend inside one is its own next hop.
    pub on_link: Vec<Prefix>,
    /// IPv4 gateway for backends off the link.
    pub gateway_v4: Option<Addr>,
    /// IPv6 gateway for backends off the link.
    pub gateway_v6: Option<Addr>,
    /// Addresses whose MAC is configured: never probed.
    pub statics: Vec<(Addr, [u8; 6])>,
}

impl NextHops {
    /// The next hops of `cfg`; `None` when it resolves none (no `on_link`, no `gateway`).
    pub fn of(cfg: &Config) -> Option<NextHops> {
        let dp = &cfg.dataplane;
        if dp.on_link.is_empty() && dp.gateway.is_empty() {
            return None;
        }
        let gateway = |v4: bool| {
            dp.gateway
                .iter()
                .find(|g| g.is_ipv4() == v4)
                .map(|g| Addr::from(*g))
        };
        let mut statics: Vec<(Addr, [u8; 6])> = cfg
            .neighbors
            .iter()
            .map(|n| (Addr::from(n.ip), n.mac.0))
            .collect();
        // A gateway with a configured MAC is a static neighbor too.
        if let Some(mac) = dp.gateway_mac {
            statics.extend(dp.gateway.iter().map(|g| (Addr::from(*g), mac.0)));
        }
        Some(NextHops {
            on_link: dp.on_link.iter().map(|p| p.to_table()).collect(),
            gateway_v4: gateway(true),
            gateway_v6: gateway(false),
            statics,
        })
    }

    /// What `RoutingTable::set_neighbors` takes, binding slots of `cache`.
    pub fn spec(&self, cache: Arc<NeighborCache>) -> NeighborSpec {
        NeighborSpec {
            cache,
            on_link: self.on_link.clone(),
            gateway_v4: self.gateway_v4,
            gateway_v6: self.gateway_v6,
            statics: self.statics.clone(),
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

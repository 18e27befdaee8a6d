//! How each backend is reached: a static MAC (`[[neighbors]]`, `gateway_mac`) or a next hop
//! resolved at run time by ARP/ND (the backend itself on our link, else the gateway of its
//! family), which needs one of our addresses of the hop's family to send the probes from.

use std::collections::HashSet;
use std::net::IpAddr;

use super::family;
use crate::config::schema::{Config, Dataplane};
use crate::diag::Problem;

/// What the rules need to know about the link, computed once per config.
pub(super) struct Reach<'a> {
    dp: &'a Dataplane,
    /// Addresses with a MAC of their own in `[[neighbors]]`.
    neighbors: HashSet<IpAddr>,
    /// Next hops already reported for lack of a probe source (once each).
    reported: HashSet<IpAddr>,
}

impl<'a> Reach<'a> {
    /// The link of `cfg`.
    pub(super) fn new(cfg: &'a Config) -> Reach<'a> {
        Reach {
            dp: &cfg.dataplane,
            neighbors: cfg.neighbors.iter().map(|n| n.ip).collect(),
            reported: HashSet::new(),
        }
    }

    /// The problems of the backend at `addr`: no way to find its MAC, or no address to probe its
    /// next hop from. `at` names the backend and `path` is its key path (`...backends[2]`), both
    /// written only for a problem.
    pub(super) fn check(
        &mut self,
        addr: IpAddr,
        at: impl Fn() -> String,
        path: impl Fn() -> String,
        out: &mut Vec<Problem>,
    ) {
        let dp = self.dp;
        let v4 = addr.is_ipv4();
        let on_link = dp.on_link.iter().any(|p| p.contains(addr));
        let gateway = dp.gateway.iter().position(|g| g.is_ipv4() == v4);
        let has_mac = self.neighbors.contains(&addr) || dp.gateway_mac.is_some();
        if !has_mac && !on_link && gateway.is_none() {
            out.push(
                Problem::new(
                    format!("{}.addr", path()),
                    format!(
                        "{}: no MAC: {addr} is not in [[neighbors]] and dataplane.gateway_mac is not set",
                        at()
                    ),
                )
                .hint(format!(
                    "add a [[neighbors]] entry with ip = \"{addr}\", list its prefix in [dataplane] on_link, or set [dataplane] gateway or gateway_mac"
                )),
            );
            return;
        }

        // The next hop the table resolves (as `RoutingTable::set_neighbors` picks it): the backend
        // when it is on the link or a static neighbor, else the gateway of its family.
        let is_static = |a: &IpAddr| {
            self.neighbors.contains(a) || (dp.gateway_mac.is_some() && dp.gateway.contains(a))
        };
        let (hop, hop_path) = if on_link || is_static(&addr) {
            (addr, None)
        } else if let Some(i) = gateway {
            (dp.gateway[i], Some(i))
        } else {
            return;
        };
        if is_static(&hop)
            || dp.addresses.iter().any(|a| a.is_ipv4() == hop.is_ipv4())
            || !self.reported.insert(hop)
        {
            return;
        }
        let probe = if hop.is_ipv4() { "ARP" } else { "ND" };
        let (path, what) = match hop_path {
            None => (
                format!("{}.addr", path()),
                format!("{}: {hop} is on our link, resolved by {probe}", at()),
            ),
            Some(i) => (
                format!("dataplane.gateway[{i}]"),
                format!("dataplane: gateway {hop} is resolved by {probe}"),
            ),
        };
        out.push(
            Problem::new(
                path,
                format!(
                    "{what}, but [dataplane] addresses has no {} address to send the probes from",
                    family(hop)
                ),
            )
            .hint("next hops are resolved from our own addresses of their family: add one to [dataplane] addresses"),
        );
    }
}

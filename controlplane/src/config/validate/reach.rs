//! How each backend is reached: a static MAC (`[[neighbors]]`, `gateway_mac`) or a next hop
//! resolved at run time by ARP/ND (the backend itself on our link, else the gateway of its
//! family), which needs one of our addresses of the hop's family to send the probes from.

use std::collections::HashSet;
use std::net::IpAddr;

use super::family;
use dataplane::flow::Addr;
use dataplane::table;

use crate::config::schema::{Config, Dataplane, Link};
use crate::diag::Problem;

/// What the rules need to know about the links, computed once per config.
pub(super) struct Reach<'a> {
    dp: &'a Dataplane,
    /// The interfaces, in order.
    links: Vec<Link>,
    /// The same as the table routes by them.
    routes: Vec<table::Link>,
    /// Addresses with a MAC of their own in `[[neighbors]]`.
    neighbors: HashSet<IpAddr>,
    /// Those placed on an interface, with its index.
    pinned: Vec<(Addr, u8)>,
    /// Next hops already reported for lack of a probe source (once each).
    reported: HashSet<IpAddr>,
}

impl<'a> Reach<'a> {
    /// The links of `cfg`.
    pub(super) fn new(cfg: &'a Config) -> Reach<'a> {
        let links = cfg.dataplane.links();
        Reach {
            dp: &cfg.dataplane,
            routes: links.iter().map(Link::to_table).collect(),
            neighbors: cfg.neighbors.iter().map(|n| n.ip).collect(),
            pinned: cfg
                .pinned_neighbors(&links)
                .into_iter()
                .map(|(a, i)| (Addr::from(a), i))
                .collect(),
            reported: HashSet::new(),
            links,
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
        let is_static = |a: &IpAddr| {
            self.neighbors.contains(a)
                || (dp.gateway_mac.is_some() && self.links.iter().any(|l| l.gateway.contains(a)))
        };
        // The route the table takes (`NeighborSpec::route`): the interface and the next hop.
        let a = Addr::from(addr);
        let (iface, hop) = table::route(&self.routes, &self.pinned, a, is_static(&addr));
        let has_mac = self.neighbors.contains(&addr) || dp.gateway_mac.is_some();
        let Some(hop) = hop.map(IpAddr::from) else {
            if !has_mac {
                let one = self.links.len() == 1;
                out.push(
                    Problem::new(
                        format!("{}.addr", path()),
                        format!(
                            "{}: no MAC: {addr} is not in [[neighbors]], no on_link prefix holds it, no gateway routes it, and dataplane.gateway_mac is not set",
                            at()
                        ),
                    )
                    .hint(if one {
                        format!("add a [[neighbors]] entry with ip = \"{addr}\", list its prefix in [dataplane] on_link, or set [dataplane] gateway or gateway_mac")
                    } else {
                        format!("add a [[neighbors]] entry with ip = \"{addr}\", or list its prefix in the on_link or routes of an interface in [[dataplane.interfaces]]")
                    }),
                );
            }
            return;
        };
        let link = &self.links[usize::from(iface)];
        let hop_path = (hop != addr).then(|| {
            let j = link.gateway.iter().position(|g| *g == hop).unwrap_or(0);
            format!("{}.gateway[{j}]", link.path)
        });
        let any_source = link.addresses.iter().any(|a| a.is_ipv4() == hop.is_ipv4())
            || dp
                .all_addresses()
                .iter()
                .any(|a| a.is_ipv4() == hop.is_ipv4());
        if is_static(&hop) || any_source || !self.reported.insert(hop) {
            return;
        }
        let probe = if hop.is_ipv4() { "ARP" } else { "ND" };
        let (path, what) = match hop_path {
            None => (
                format!("{}.addr", path()),
                format!("{}: {hop} is on our link, resolved by {probe}", at()),
            ),
            Some(p) => (
                p,
                format!("dataplane: gateway {hop} is resolved by {probe}"),
            ),
        };
        let place = if link.path == "dataplane" {
            "[dataplane] addresses".to_string()
        } else {
            format!("the addresses of interface {:?}", link.name)
        };
        out.push(
            Problem::new(
                path,
                format!(
                    "{what}, but {place} has no {} address to send the probes from",
                    family(hop)
                ),
            )
            .hint(format!(
                "next hops are resolved from our own addresses of their family: add one to {place}"
            )),
        );
    }
}

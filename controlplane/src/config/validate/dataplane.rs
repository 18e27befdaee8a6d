//! `[dataplane]` and `[[neighbors]]`: our identity, the link, the workers and their cores.

use std::collections::HashMap;

use super::{check_mac, check_unicast};
use crate::config::schema::Config;
use crate::diag::Problem;

/// Smallest and largest MTU we accept: IPv4's minimum datagram and the jumbo frames the ports carry.
const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=9216;

/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
const IFNAME_MAX: usize = 15;

/// The rules of `[dataplane]` and `[[neighbors]]`.
pub(super) fn check(cfg: &Config, out: &mut Vec<Problem>) {
    let dp = &cfg.dataplane;
    check_mac(out, dp.mac, || {
        ("dataplane.mac".into(), "dataplane: mac".into())
    });
    if let Some(m) = dp.gateway_mac {
        check_mac(out, m, || {
            (
                "dataplane.gateway_mac".into(),
                "dataplane: gateway_mac".into(),
            )
        });
    }
    for (i, a) in dp.addresses.iter().enumerate() {
        check_unicast(out, *a, || {
            (
                format!("dataplane.addresses[{i}]"),
                "dataplane: address".into(),
            )
        });
    }
    for (i, a) in dp.snat.iter().enumerate() {
        check_unicast(out, *a, || {
            (
                format!("dataplane.snat[{i}]"),
                "dataplane: snat address".into(),
            )
        });
    }
    for (i, g) in dp.gateway.iter().enumerate() {
        check_unicast(out, *g, || {
            (
                format!("dataplane.gateway[{i}]"),
                "dataplane: gateway".into(),
            )
        });
        if dp.gateway[..i].iter().any(|o| o.is_ipv4() == g.is_ipv4()) {
            out.push(
                Problem::new(
                    format!("dataplane.gateway[{i}]"),
                    format!(
                        "dataplane: a second {} gateway {g}",
                        if g.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                )
                .hint("list at most one gateway per address family"),
            );
        }
        if !dp.on_link.is_empty() && !dp.on_link.iter().any(|p| p.contains(*g)) {
            out.push(
                Problem::new(
                    format!("dataplane.gateway[{i}]"),
                    format!("dataplane: gateway {g} is not inside any on_link prefix"),
                )
                .hint("a gateway must be on our link; add its prefix to [dataplane] on_link"),
            );
        }
    }
    if !MTU_RANGE.contains(&dp.mtu) {
        out.push(
            Problem::new(
                "dataplane.mtu",
                format!(
                    "dataplane: mtu {} is outside {}-{}",
                    dp.mtu,
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                ),
            )
            .hint("1500 on plain Ethernet; up to 9216 with jumbo frames"),
        );
    }
    if dp.workers == 0 {
        out.push(Problem::new(
            "dataplane.workers",
            "dataplane: workers must be at least 1",
        ));
    }
    let snat_port_count = u32::from(dp.snat_ports.hi) - u32::from(dp.snat_ports.lo) + 1;
    if snat_port_count < u32::from(dp.workers) {
        out.push(
            Problem::new(
                "dataplane.snat_ports",
                format!(
                    "dataplane: snat_ports {} has {} ports, fewer than the {} workers that split it",
                    dp.snat_ports, snat_port_count, dp.workers
                ),
            )
            .hint("every worker needs its own slice of source ports: widen the range"),
        );
    }
    let name = &dp.interface;
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name == "."
        || name == ".."
        || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
    {
        out.push(Problem::new(
            "dataplane.interface",
            format!(
                "dataplane: interface {name:?} is not a valid interface name (1-{IFNAME_MAX} bytes, no '/', ':' or spaces)"
            ),
        ));
    }
    if let Some(cores) = &dp.cores {
        if cores.len() != usize::from(dp.workers) {
            out.push(
                Problem::new(
                    "dataplane.cores",
                    format!(
                        "dataplane: cores lists {} cores for {} workers (one per worker)",
                        cores.len(),
                        dp.workers
                    ),
                )
                .hint("list one core per worker, or leave cores out for 0, 1, ..."),
            );
        }
    }

    let mut macs = HashMap::with_capacity(cfg.neighbors.len());
    for (i, n) in cfg.neighbors.iter().enumerate() {
        check_unicast(out, n.ip, || {
            (format!("neighbors[{i}].ip"), format!("neighbor {}", n.ip))
        });
        check_mac(out, n.mac, || {
            (format!("neighbors[{i}].mac"), format!("neighbor {}", n.ip))
        });
        if let Some(prev) = macs.insert(n.ip, n.mac) {
            if prev != n.mac {
                out.push(
                    Problem::new(
                        format!("neighbors[{i}].mac"),
                        format!(
                            "neighbor {}: listed with two MACs, {} and {}",
                            n.ip, prev, n.mac
                        ),
                    )
                    .hint("keep one [[neighbors]] entry per address"),
                );
            }
        }
    }
}

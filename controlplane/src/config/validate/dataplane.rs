//! `[dataplane]` and `[[neighbors]]`: our identity, the link, the workers and their cores.

use std::collections::HashMap;

use super::{check_mac, check_unicast};
use crate::config::schema::{Config, Dataplane, Dpdk, Link, PortKind};
use crate::diag::Problem;

/// Smallest and largest MTU we accept: IPv4's minimum datagram and the jumbo frames the ports carry.
const MTU_RANGE: std::ops::RangeInclusive<u16> = 576..=9216;

/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
const IFNAME_MAX: usize = 15;

/// Descriptors per DPDK queue we accept: below 32 no driver keeps up, above 32768 none takes it.
const DPDK_DESCRIPTORS: std::ops::RangeInclusive<u16> = 32..=32768;

/// Mbufs per worker beyond its receive and transmit rings: a burst in the pipeline, the pool's
/// per-thread cache, frames handed between workers.
const DPDK_MBUF_SLACK: u32 = 512;

/// Whether this build has the DPDK port (the `dpdk` cargo feature).
const DPDK_BUILT: bool = cfg!(feature = "dpdk");

/// Receive queue ids `queues` may name are below this.
const AF_XDP_MAX_QUEUE: u32 = dataplane::port::af_xdp::MAX_QUEUE_ID;

/// Most interfaces one balancer serves (`dataplane::worker::MAX_INTERFACES`).
const MAX_INTERFACES: usize = dataplane::worker::MAX_INTERFACES;

/// The rules of `[dataplane]` and `[[neighbors]]`.
pub(super) fn check(cfg: &Config, out: &mut Vec<Problem>) {
    let dp = &cfg.dataplane;
    if let Some(m) = dp.gateway_mac {
        check_mac(out, m, || {
            (
                "dataplane.gateway_mac".into(),
                "dataplane: gateway_mac".into(),
            )
        });
    }
    check_interfaces(dp, out);
    for link in dp.links() {
        check_link(&link, out);
        check_queues(&link, dp.workers, out);
    }
    for (i, a) in dp.snat.iter().enumerate() {
        check_unicast(out, *a, || {
            (
                format!("dataplane.snat[{i}]"),
                "dataplane: snat address".into(),
            )
        });
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
    check_dpdk(dp, DPDK_BUILT, out);

    let mut macs = HashMap::with_capacity(cfg.neighbors.len());
    for (i, n) in cfg.neighbors.iter().enumerate() {
        check_unicast(out, n.ip, || {
            (format!("neighbors[{i}].ip"), format!("neighbor {}", n.ip))
        });
        check_mac(out, n.mac, || {
            (format!("neighbors[{i}].mac"), format!("neighbor {}", n.ip))
        });
        if let Some(name) = &n.interface {
            let links = dp.links();
            if !links.iter().any(|l| &l.name == name) {
                let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
                out.push(
                    Problem::new(
                        format!("neighbors[{i}].interface"),
                        format!("neighbor {}: no interface {name:?}", n.ip),
                    )
                    .hint(format!("the interfaces are {}", names.join(", "))),
                );
            }
        }
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

/// One interface or several: `[[dataplane.interfaces]]` replaces `[dataplane]`'s own `mac`,
/// `interface`, `addresses`, `on_link` and `gateway` (both at once would leave one unsaid), and
/// its entries need distinct names and MACs; without it `mac` is required.
fn check_interfaces(dp: &Dataplane, out: &mut Vec<Problem>) {
    if dp.interfaces.is_empty() {
        if let Some(mac) = dp.mac {
            check_mac(out, mac, || {
                ("dataplane.mac".into(), "dataplane: mac".into())
            });
        } else {
            out.push(
                Problem::new("dataplane", "dataplane: mac is missing")
                    .hint("set [dataplane] mac = \"02:00:00:00:00:01\", our MAC on the interface"),
            );
        }
        return;
    }
    let single = [
        ("mac", dp.mac.is_some()),
        ("interface", dp.interface.is_some()),
        ("addresses", !dp.addresses.is_empty()),
        ("on_link", !dp.on_link.is_empty()),
        ("gateway", !dp.gateway.is_empty()),
        ("queues", dp.queues.is_some()),
    ];
    for (key, set) in single {
        if set {
            out.push(
                Problem::new(
                    format!("dataplane.{key}"),
                    format!("dataplane: {key} is set beside [[dataplane.interfaces]]"),
                )
                .hint(format!(
                    "with [[dataplane.interfaces]], set {key} in each interface's entry"
                )),
            );
        }
    }
    if dp.interfaces.len() > MAX_INTERFACES {
        out.push(Problem::new(
            format!("dataplane.interfaces[{MAX_INTERFACES}]"),
            format!(
                "dataplane: {} interfaces, at most {MAX_INTERFACES}",
                dp.interfaces.len()
            ),
        ));
    }
    for (i, f) in dp.interfaces.iter().enumerate() {
        let earlier = &dp.interfaces[..i];
        if earlier.iter().any(|o| o.name == f.name) {
            out.push(Problem::new(
                format!("dataplane.interfaces[{i}].name"),
                format!("dataplane: interface {:?} is listed twice", f.name),
            ));
        }
        if earlier.iter().any(|o| o.mac == f.mac) {
            out.push(
                Problem::new(
                    format!("dataplane.interfaces[{i}].mac"),
                    format!(
                        "dataplane: interface {:?} has the MAC {} of an earlier interface",
                        f.name, f.mac
                    ),
                )
                .hint("each interface needs its own MAC: a frame leaves by the interface whose MAC it carries"),
            );
        }
        let own_device = [
            ("dpdk_device", f.dpdk_device.is_some()),
            ("dpdk_vdev", f.dpdk_vdev.is_some()),
        ];
        for (key, set) in own_device {
            if set && f.port.unwrap_or(dp.port) != PortKind::Dpdk {
                out.push(
                    Problem::new(
                        format!("dataplane.interfaces[{i}].{key}"),
                        format!(
                            "dataplane: {key} is only read with port = \"dpdk\", and interface {:?} has port {:?}",
                            f.name,
                            f.port.unwrap_or(dp.port).name()
                        ),
                    )
                    .hint("set port = \"dpdk\" on this interface, or remove the key"),
                );
            }
        }
        if f.dpdk_vdev.is_some() && f.dpdk_device.is_none() {
            out.push(
                Problem::new(
                    format!("dataplane.interfaces[{i}].dpdk_vdev"),
                    format!(
                        "dataplane: interface {:?} has dpdk_vdev without dpdk_device",
                        f.name
                    ),
                )
                .hint("dpdk_vdev creates the virtual device dpdk_device names: set both"),
            );
        }
    }
}

/// The rules of one interface: its name, MAC, addresses, and gateways on its link (at most one
/// per family, inside its on_link prefixes, and one for each family its `routes` name).
fn check_link(link: &Link, out: &mut Vec<Problem>) {
    let at = &link.path;
    // The one interface of `[dataplane]` has its `mac` checked where it is read (it may be
    // absent, which `check_interfaces` reports).
    if link.path != "dataplane" {
        check_mac(out, link.mac, || {
            (format!("{at}.mac"), "dataplane: mac".into())
        });
    }
    for (i, a) in link.addresses.iter().enumerate() {
        check_unicast(out, *a, || {
            (format!("{at}.addresses[{i}]"), "dataplane: address".into())
        });
    }
    for (i, g) in link.gateway.iter().enumerate() {
        check_unicast(out, *g, || {
            (format!("{at}.gateway[{i}]"), "dataplane: gateway".into())
        });
        if link.gateway[..i].iter().any(|o| o.is_ipv4() == g.is_ipv4()) {
            out.push(
                Problem::new(
                    format!("{at}.gateway[{i}]"),
                    format!(
                        "dataplane: a second {} gateway {g}",
                        if g.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                )
                .hint("list at most one gateway per address family"),
            );
        }
        if !link.on_link.is_empty() && !link.on_link.iter().any(|p| p.contains(*g)) {
            out.push(
                Problem::new(
                    format!("{at}.gateway[{i}]"),
                    format!("dataplane: gateway {g} is not inside any on_link prefix"),
                )
                .hint("a gateway must be on our link; add its prefix to on_link"),
            );
        }
    }
    for (i, r) in link.routes.iter().enumerate() {
        let v4 = matches!(r.0, ipnet::IpNet::V4(_));
        if !link.gateway.iter().any(|g| g.is_ipv4() == v4) {
            out.push(
                Problem::new(
                    format!("{at}.routes[{i}]"),
                    format!(
                        "dataplane: route {r} needs an {} gateway on interface {:?}",
                        if v4 { "IPv4" } else { "IPv6" },
                        link.name
                    ),
                )
                .hint("add the router of that family to this interface's gateway"),
            );
        }
    }
    let name = &link.name;
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name == "."
        || name == ".."
        || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
    {
        let key = if link.path == "dataplane" {
            "dataplane.interface".to_string()
        } else {
            format!("{at}.name")
        };
        out.push(Problem::new(
            key,
            format!(
                "dataplane: interface {name:?} is not a valid interface name (1-{IFNAME_MAX} bytes, no '/', ':' or spaces)"
            ),
        ));
    }
}

/// `queues`: one receive queue id per worker, distinct, below the kernel's limit, and only for
/// `af_xdp`, the one port that binds hardware queue ids (tap and af_packet queues have no ids;
/// dpdk owns its device and spreads it over queues `0..workers` by RSS).
fn check_queues(link: &Link, workers: u16, out: &mut Vec<Problem>) {
    let Some(queues) = &link.queues else {
        return;
    };
    let at = format!("{}.queues", link.path);
    if link.port != PortKind::AfXdp {
        out.push(
            Problem::new(
                at.clone(),
                format!(
                    "dataplane: queues picks af_xdp receive queues, and interface {:?} has port {:?}",
                    link.name,
                    link.port.name()
                ),
            )
            .hint("leave queues out: the other ports use one queue per worker, in order"),
        );
        return;
    }
    if queues.len() != usize::from(workers) {
        out.push(
            Problem::new(
                at.clone(),
                format!(
                    "dataplane: queues lists {} queues for {} workers (one per worker)",
                    queues.len(),
                    workers
                ),
            )
            .hint("list one receive queue id per worker, or leave queues out for 0, 1, ..."),
        );
    }
    for (i, q) in queues.iter().enumerate() {
        if queues[..i].contains(q) {
            out.push(Problem::new(
                format!("{at}[{i}]"),
                format!("dataplane: queue {q} is listed twice (one socket per queue)"),
            ));
        }
        if *q >= AF_XDP_MAX_QUEUE {
            out.push(Problem::new(
                format!("{at}[{i}]"),
                format!("dataplane: queue {q} is not below {AF_XDP_MAX_QUEUE}"),
            ));
        }
    }
}

/// Each dpdk interface drives a device of its own: its `dpdk_device`, else `[dataplane.dpdk]
/// device` (which only one interface may fall back on); no device twice.
fn check_dpdk_devices(dp: &Dataplane, d: &Dpdk, out: &mut Vec<Problem>) {
    let links: Vec<Link> = dp
        .links()
        .into_iter()
        .filter(|l| l.port == PortKind::Dpdk)
        .collect();
    let shared: Vec<&Link> = links.iter().filter(|l| l.dpdk_device.is_none()).collect();
    if !shared.is_empty() && d.device.trim().is_empty() {
        out.push(
            Problem::new("dataplane.dpdk.device", "dataplane.dpdk: device is empty")
                .hint("a PCI address (\"0000:01:00.0\") or a virtual device name (\"net_memif0\"), here or as each interface's dpdk_device"),
        );
    }
    for l in shared.iter().skip(1) {
        out.push(
            Problem::new(
                l.path.clone(),
                format!(
                    "dataplane: interfaces {:?} and {:?} would both drive [dataplane.dpdk] device",
                    shared[0].name, l.name
                ),
            )
            .hint("give each dpdk interface its own dpdk_device"),
        );
    }
    for (i, l) in links.iter().enumerate() {
        let (device, _) = l.dpdk_device(d);
        if l.dpdk_device
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            out.push(Problem::new(
                format!("{}.dpdk_device", l.path),
                "dataplane: dpdk_device is empty",
            ));
        } else if links[..i].iter().any(|o| {
            // Two falling back on [dataplane.dpdk] device are reported above.
            o.dpdk_device(d).0 == device && (o.dpdk_device.is_some() || l.dpdk_device.is_some())
        }) {
            let at = match l.dpdk_device {
                Some(_) => format!("{}.dpdk_device", l.path),
                None => l.path.clone(),
            };
            out.push(Problem::new(
                at,
                format!("dataplane: DPDK device {device:?} is driven by an earlier interface"),
            ));
        }
        let nul = |s: &str| s.contains('\0');
        if l.dpdk_device.as_deref().is_some_and(nul) || l.dpdk_vdev.as_deref().is_some_and(nul) {
            out.push(Problem::new(
                l.path.clone(),
                "dataplane: dpdk_device or dpdk_vdev contains a NUL character",
            ));
        }
    }
}

/// `port = "dpdk"` and `[dataplane.dpdk]`: the port needs the table and a build with the
/// feature (`built`), the table needs the port; device, descriptors and pool size.
pub(super) fn check_dpdk(dp: &Dataplane, built: bool, out: &mut Vec<Problem>) {
    let wants = dp.links().iter().any(|l| l.port == PortKind::Dpdk);
    if wants && !built {
        out.push(
            Problem::new(
                "dataplane.port",
                "dataplane: port \"dpdk\" needs lb built with the dpdk feature, and this one is not",
            )
            .hint("build with `cargo build --release --features dpdk` (needs libdpdk-dev), or pick \"af_xdp\""),
        );
    }
    let Some(d) = &dp.dpdk else {
        if wants {
            out.push(
                Problem::new(
                    "dataplane.port",
                    "dataplane: port \"dpdk\" needs a [dataplane.dpdk] table naming the device",
                )
                .hint("add [dataplane.dpdk] with device = \"0000:01:00.0\" (a NIC bound to a DPDK driver)"),
            );
        }
        return;
    };
    if !wants {
        out.push(
            Problem::new(
                "dataplane.dpdk",
                format!(
                    "dataplane: [dataplane.dpdk] is only read with port = \"dpdk\", and port is {:?}",
                    dp.port.name()
                ),
            )
            .hint("set port = \"dpdk\", or remove the [dataplane.dpdk] table"),
        );
    }
    check_dpdk_devices(dp, d, out);
    let nul = |s: &str| s.contains('\0');
    if nul(&d.device) {
        out.push(Problem::new(
            "dataplane.dpdk.device",
            "dataplane.dpdk: device contains a NUL character",
        ));
    }
    if d.vdev.as_deref().is_some_and(nul) {
        out.push(Problem::new(
            "dataplane.dpdk.vdev",
            "dataplane.dpdk: vdev contains a NUL character",
        ));
    }
    for (i, a) in d.eal_args.iter().enumerate() {
        if nul(a) {
            out.push(Problem::new(
                format!("dataplane.dpdk.eal_args[{i}]"),
                "dataplane.dpdk: an EAL argument contains a NUL character",
            ));
        }
    }
    for (key, n) in [
        ("rx_descriptors", d.rx_descriptors),
        ("tx_descriptors", d.tx_descriptors),
    ] {
        if !DPDK_DESCRIPTORS.contains(&n) {
            out.push(
                Problem::new(
                    format!("dataplane.dpdk.{key}"),
                    format!(
                        "dataplane.dpdk: {key} {n} is outside {}-{}",
                        DPDK_DESCRIPTORS.start(),
                        DPDK_DESCRIPTORS.end()
                    ),
                )
                .hint("1024 suits most NICs (the driver rounds it to what it supports)"),
            );
        }
    }
    let need = u32::from(dp.workers)
        * (u32::from(d.rx_descriptors) + u32::from(d.tx_descriptors) + DPDK_MBUF_SLACK);
    if d.mempool_size < need {
        out.push(
            Problem::new(
                "dataplane.dpdk.mempool_size",
                format!(
                    "dataplane.dpdk: mempool_size {} is below the {need} mbufs {} workers need \
                     (their receive and transmit rings plus {DPDK_MBUF_SLACK} each)",
                    d.mempool_size, dp.workers
                ),
            )
            .hint("raise mempool_size (a power of two minus one uses memory best) or lower the descriptors"),
        );
    }
}

//! `compile()`: a validated [`Config`] becomes the dataplane's immutable [`RoutingTable`].
//!
//! Pure: the config, the runtime weight of each backend (overrides and health), counter slots and
//! the Maglev tables of the previous compile go in; a table and the settings that go with it come
//! out, and nothing else changes. The rules of the file are checked before, by
//! [`Config::validate`] (which [`crate::config::load`] runs): compile only fails where the table
//! itself refuses ([`CompileError`]). Binding next hops to the shared neighbor cache is left to
//! the step that publishes the table ([`Compiled::next_hops`]).

mod check;
mod draining;
mod http;
mod next_hops;
mod service;
mod slots;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use dataplane::conntrack;
use dataplane::flow::Addr;
use dataplane::table::{Iface, Local, MaglevCache, ServiceSpec, TableError};
use dataplane::RoutingTable;

pub use check::{check_file, check_file_on, check_str};
pub use draining::{Draining, DrainingBackend};
pub use http::{backend_key, upstream_service, HttpCert, HttpListener, ProxySettings};
pub use next_hops::{NextHops, NEIGHBOR_SLOTS};
pub use slots::StatSlots;

use crate::config::BackendKey;
use crate::config::{self, Config, MacAddr};
use crate::diag::{ConfigReport, Problem};

/// What `compile()` produces: the routing table and the per-worker settings that go with it.
#[derive(Debug)]
pub struct Compiled {
    /// The table every worker reads (next hops not yet bound: see `next_hops`).
    pub table: RoutingTable,
    /// Each worker's conntrack sizing and timeouts.
    pub conntrack: conntrack::Config,
    /// Number of workers.
    pub workers: u16,
    /// How `lb run` runs the dataplane: port, interface, cores, idle policy.
    pub run: RunSettings,
    /// Next hops to resolve by ARP/ND, for `RoutingTable::set_neighbors` before the table is
    /// served; `None` when the config resolves none (static MACs only).
    pub next_hops: Option<NextHops>,
    /// The `[[http]]` listeners (L7), each with its route table spec.
    pub http: Vec<HttpListener>,
}

/// The dataplane run settings of `[dataplane]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    /// Kind of packet port (of the first interface).
    pub port: config::PortKind,
    /// Interface name (of the first interface).
    pub interface: String,
    /// Every interface served, in order (the first is `interface`): what `lb run` opens is
    /// each one's name, port kind, `queues` and DPDK device.
    pub interfaces: Vec<config::Link>,
    /// Core of each worker, one per worker.
    pub cores: Vec<usize>,
    /// Idle policy.
    pub idle: config::IdleMode,
    /// XDP attach mode (af_xdp only).
    pub xdp_mode: config::XdpMode,
    /// `[dataplane] mtu`: the largest IP packet (the DPDK port sizes its device and mbufs by it).
    pub mtu: u16,
}

/// Why a validated config could not be built into a table.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The routing table refused the services (a Maglev table it cannot build, say).
    #[error(transparent)]
    Table(#[from] TableError),
}

impl ConfigReport {
    /// The report of a failed compile of `text` (read from `path`): the table's reason, placed
    /// at the file.
    pub fn from_compile(path: &Path, text: &str, err: &CompileError) -> ConfigReport {
        ConfigReport::from_problems(path, text, &[Problem::new("", err.to_string())])
    }
}

/// Decides a backend's weight in the table from its configured weight (pool weight times backend
/// weight): `None` leaves it out, `Some(0)` drains it. Health and runtime overrides enter here.
pub type Adjust<'a> = &'a dyn Fn(&BackendKey, u32) -> Option<u32>;

/// What a running control plane adds to a compile: the runtime weight of each backend, counter
/// slots that stay put across reloads, the Maglev tables of the previous compile, and what
/// earlier reloads removed that still drains.
pub struct Context<'a> {
    /// Runtime weight of each backend.
    pub adjust: Adjust<'a>,
    /// Removed services and backends kept, at weight 0, for their tracked flows.
    pub draining: &'a Draining,
    /// Counter slots by service and backend, kept across compiles.
    pub slots: &'a mut StatSlots,
    /// Maglev tables already built.
    pub cache: &'a mut MaglevCache,
}

/// Builds the routing table for `cfg` (validated), stamped with `generation`, every backend at
/// its configured weight. Pure: the same input gives the same table.
pub fn compile(cfg: &Config, generation: u64) -> Result<Compiled, CompileError> {
    compile_with(
        cfg,
        generation,
        &mut Context {
            adjust: &|_, w| Some(w),
            draining: &Draining::default(),
            slots: &mut StatSlots::default(),
            cache: &mut MaglevCache::default(),
        },
    )
}

/// [`compile`] for a running control plane: weights pass through `ctx.adjust`, counter slots come
/// from `ctx.slots` and Maglev tables from `ctx.cache`; `ctx.draining` is added at weight 0
/// (removed backends in their services, removed services as draining services).
///
/// `cfg` must have passed [`Config::validate`]: a config that breaks a rule may build a table
/// that misroutes (a backend without a MAC, say) rather than fail.
pub fn compile_with(
    cfg: &Config,
    generation: u64,
    ctx: &mut Context<'_>,
) -> Result<Compiled, CompileError> {
    let dp = &cfg.dataplane;
    let macs: HashMap<IpAddr, MacAddr> = cfg.neighbors.iter().map(|n| (n.ip, n.mac)).collect();
    let mut specs = Vec::with_capacity(cfg.services.len());
    for svc in &cfg.services {
        specs.extend(service::specs(cfg, svc, &macs, ctx, false));
    }
    let draining: &Draining = ctx.draining;
    let mut drained = Vec::with_capacity(draining.services.len());
    for svc in &draining.services {
        drained.extend(service::specs(cfg, svc, &macs, ctx, true));
    }
    let links = dp.links();
    let addrs = |l: &config::Link| l.addresses.iter().map(|a| Addr::from(*a)).collect();
    let local = Local {
        mac: links.first().map_or([0; 6], |l| l.mac.0),
        addrs: links.first().map(addrs).unwrap_or_default(),
        mtu: dp.mtu,
        snat_ports: (dp.snat_ports.lo, dp.snat_ports.hi),
        more: links
            .iter()
            .skip(1)
            .map(|l| Iface {
                mac: l.mac.0,
                addrs: addrs(l),
            })
            .collect(),
    };
    let table = RoutingTable::build_with_draining(generation, local, specs, drained, ctx.cache)?;
    Ok(Compiled {
        table,
        conntrack: conntrack_config(&cfg.conntrack),
        workers: dp.workers,
        run: run_settings(dp),
        next_hops: NextHops::of(cfg),
        http: http::listeners(cfg, ctx.adjust),
    })
}

/// The table's specs of services `idxs` (entries of `cfg.services`, validated) as
/// [`compile_with`] makes them: for [`RoutingTable::with_backends`], when only their backends
/// changed.
pub fn service_specs(cfg: &Config, idxs: &[usize], ctx: &mut Context<'_>) -> Vec<ServiceSpec> {
    let macs: HashMap<IpAddr, MacAddr> = cfg.neighbors.iter().map(|n| (n.ip, n.mac)).collect();
    let mut specs = Vec::with_capacity(idxs.len());
    for svc in idxs.iter().filter_map(|&i| cfg.services.get(i)) {
        specs.extend(service::specs(cfg, svc, &macs, ctx, false));
    }
    specs
}

/// Port, interface and cores; every worker gets a core (0, 1, ... when none are listed).
fn run_settings(dp: &config::Dataplane) -> RunSettings {
    let links = dp.links();
    RunSettings {
        port: links.first().map_or(dp.port, |l| l.port),
        interface: dp.interface_name().to_string(),
        interfaces: links,
        cores: dp
            .cores
            .clone()
            .unwrap_or_else(|| (0..usize::from(dp.workers)).collect()),
        idle: dp.idle,
        xdp_mode: dp.xdp_mode,
        mtu: dp.mtu,
    }
}

/// `[conntrack]` as the workers take it: timeouts in milliseconds.
fn conntrack_config(ct: &config::Conntrack) -> conntrack::Config {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let t = &ct.timeouts;
    conntrack::Config {
        capacity: ct.capacity,
        embryonic_budget: ct.embryonic_budget(),
        timeouts: conntrack::Timeouts {
            tcp_syn: ms(t.tcp_syn),
            tcp_established: ms(t.tcp_established),
            tcp_closing: ms(t.tcp_closing),
            udp: ms(t.udp),
            udp_unconfirmed: ms(t.udp_unconfirmed),
        },
    }
}

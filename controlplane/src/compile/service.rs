//! One `[[services]]` entry becomes the table's specs: its pools, its backends at their runtime
//! weights (and its removed backends that drain, at weight 0), one spec per port range.

use std::collections::HashMap;
use std::net::IpAddr;

use dataplane::flow::Addr;
use dataplane::table::{self, ServiceSpec};

use super::Context;
use crate::config::BackendKey;
use crate::config::{self, Config, MacAddr};

/// One spec per port range of `svc` (the table serves one range per spec); `macs` are the
/// `[[neighbors]]` by address. A `removed` service drains: every backend at weight 0.
pub(super) fn specs(
    cfg: &Config,
    svc: &config::Service,
    macs: &HashMap<IpAddr, MacAddr>,
    ctx: &mut Context<'_>,
    removed: bool,
) -> Vec<ServiceSpec> {
    let mut pools: Vec<table::Pool> = svc.pools.iter().map(|p| pool(cfg, p)).collect();
    let backends = backends(cfg, svc, macs, ctx, removed, &mut pools);
    let ranges: Vec<(u16, u16)> = if svc.ports.is_empty() {
        vec![(0, 0)]
    } else {
        svc.ports.iter().map(|r| (r.lo, r.hi)).collect()
    };
    let affinity = match svc.affinity {
        config::Affinity::None => table::Affinity::None,
        config::Affinity::ClientIp => table::Affinity::ClientIp,
    };
    let mut spec = |(port_lo, port_hi): (u16, u16), pools, backends| ServiceSpec {
        stat: Some(ctx.slots.service(&svc.name, port_lo, port_hi)),
        name: svc.name.clone(),
        vip: Addr::from(svc.vip),
        proto: svc.protocol.number(),
        port_lo,
        port_hi,
        affinity,
        table_size: svc.table_size,
        pools,
        backends,
    };
    // The last range takes the pools and backends, the others copy them.
    let (last, others) = ranges.split_last().expect("at least one range");
    let mut specs: Vec<ServiceSpec> = others
        .iter()
        .map(|r| spec(*r, pools.clone(), backends.clone()))
        .collect();
    specs.push(spec(*last, pools, backends));
    specs
}

/// A pool as the table takes it: its mode and the sources its packets leave with.
fn pool(cfg: &Config, pool: &config::Pool) -> table::Pool {
    let mode = pool.mode.table_mode();
    // A fullnat pool without its own snat list uses the dataplane's.
    let snat: &[IpAddr] = if mode == table::Mode::FullNat && pool.snat.is_empty() {
        &cfg.dataplane.snat
    } else {
        &pool.snat
    };
    // The outer source of encapsulated packets: the pool's own, else our first address.
    let encap_src = |v4: bool| {
        let first = |list: &[IpAddr]| list.iter().copied().find(|a| a.is_ipv4() == v4);
        pool.mode
            .is_dsr()
            .then(|| first(&pool.encap_source).or_else(|| first(&cfg.dataplane.all_addresses())))
            .flatten()
            .map(Addr::from)
    };
    table::Pool {
        name: pool.name.clone(),
        mode,
        snat: snat.iter().map(|a| Addr::from(*a)).collect(),
        encap_src_v4: encap_src(true),
        encap_src_v6: encap_src(false),
        gue_port: pool.gue_port,
    }
}

/// Every backend of `svc` that `ctx.adjust` keeps, at the weight it gives (0 for every backend
/// of a `removed` service), with its counter slot and its MAC (zero for one resolved at run
/// time); then the service's draining backends at weight 0, in their pool (added to `pools`
/// when the service no longer has it).
fn backends(
    cfg: &Config,
    svc: &config::Service,
    macs: &HashMap<IpAddr, MacAddr>,
    ctx: &mut Context<'_>,
    removed: bool,
    pools: &mut Vec<table::Pool>,
) -> Vec<table::Backend> {
    let gateway_mac = cfg.dataplane.gateway_mac;
    let mac_of = |addr: &IpAddr| {
        macs.get(addr)
            .copied()
            .or(gateway_mac)
            .map_or([0; 6], |m| m.0)
    };
    let mut out = Vec::with_capacity(svc.pools.iter().map(|p| p.backends.len()).sum());
    let draining: &super::Draining = ctx.draining;
    let mut slots = ctx.slots.backends_of(&svc.name);
    // One key, its address and port changed per backend: no copy of the service name per backend.
    let mut key = BackendKey {
        service: svc.name.clone(),
        addr: svc.vip,
        port: 0,
    };
    for (pool_idx, pool) in svc.pools.iter().enumerate() {
        for b in &pool.backends {
            let port = b.port.unwrap_or(0);
            key.addr = b.addr;
            key.port = port;
            // Health and operators may take a backend out (its flows move) or drain it; a
            // removed service's backends only serve the flows they have.
            let weight = if removed {
                0
            } else {
                match (ctx.adjust)(&key, pool.weight.saturating_mul(b.weight)) {
                    Some(w) => w,
                    None => continue,
                }
            };
            out.push(table::Backend {
                addr: Addr::from(b.addr),
                port,
                weight,
                mac: mac_of(&b.addr),
                pool: pool_idx as u16,
                stat: slots.get(b.addr, port),
            });
        }
    }
    for d in draining.backends.iter().filter(|d| d.service == svc.name) {
        let (addr, port) = (d.backend.addr, d.backend.port.unwrap_or(0));
        // Back in the config (or twice in the set): the configured one wins.
        if out
            .iter()
            .any(|b| b.addr == Addr::from(addr) && b.port == port)
        {
            continue;
        }
        let want = pool(cfg, &d.pool);
        let idx = match pools
            .iter()
            .position(|p| p.name == want.name && p.mode == want.mode)
        {
            Some(i) => i,
            None => {
                pools.push(want);
                pools.len() - 1
            }
        };
        out.push(table::Backend {
            addr: Addr::from(addr),
            port,
            weight: 0,
            mac: mac_of(&addr),
            pool: idx as u16,
            stat: slots.get(addr, port),
        });
    }
    out
}

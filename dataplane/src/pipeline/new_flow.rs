//! The first packet of a flow: service lookup, Maglev selection, the next hop's MAC, and the
//! conntrack entries of both directions.

use crate::conntrack::tcp_flags::{ACK as TCP_ACK, RST as TCP_RST, SYN as TCP_SYN};
use crate::conntrack::{FlowState, InsertError, Millis, TcpState};
use crate::flow::{hash_addr, proto, FlowKey};
use crate::packet::PacketBuf;
use crate::table::{Affinity, Backend, Mode, Pool, RoutingTable, Service};
use crate::wire::checksum::Delta;
use crate::wire::{self, Parsed};

use super::rewrite::apply;
use super::state::{Action, Fast, FlowValue, WorkerState};
use super::verdict::{count, DropReason, Verdict};

// Its own function: inlined into `classify`, its size changes the code of every tracked packet.
#[inline(never)]
pub(super) fn new_flow(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    key: &FlowKey,
    hash: Option<u64>,
) -> Verdict {
    let Some((_, svc)) = table.service_for(p.dst, p.proto, p.dport) else {
        return Verdict::Drop(DropReason::NoService);
    };
    let tcp = p.proto == proto::TCP;
    let syn = tcp && p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
    if tcp && !syn && p.tcp_flags & (TCP_RST | TCP_SYN) != 0 {
        // A stray RST or SYN+ACK must not create state.
        return Verdict::Drop(DropReason::NoFlow);
    }
    if !wire::verify_l4_checksum(pkt.data(), p) {
        return Verdict::Drop(DropReason::BadL4Checksum);
    }
    let client_mac = wire::src_mac(pkt.data());
    // A fullnat flow needs the client's SYN: refused before the next hop is probed for it.
    let gate = |pool: &Pool| match tcp && !syn && pool.mode == Mode::FullNat {
        true => Err(DropReason::NoFlow),
        false => Ok(()),
    };
    let (mut fwd, be, pool) = match choose(table, svc, key, gate) {
        Ok(c) => c,
        Err(r) => return Verdict::Drop(r),
    };
    fwd.by_syn = syn;
    let mut reply = None;
    match pool.mode {
        Mode::FullNat => {
            let want_v4 = be.addr.is_v4();
            let (rkey, rhash) = match snat_alloc(st, pool, be, fwd.new_dport, p.proto, want_v4, now)
            {
                Ok(a) => a,
                Err(r) => return Verdict::Drop(r),
            };
            fwd.new_src = rkey.dst;
            fwd.new_sport = rkey.dport;
            reply = Some((rkey, rhash));
        }
        Mode::Nat => {
            let rkey = FlowKey {
                src: be.addr,
                dst: p.src,
                sport: fwd.new_dport,
                dport: p.sport,
                proto: p.proto,
            };
            reply = Some((rkey, st.ct.table_hash(&rkey)));
        }
        Mode::DsrIpip | Mode::DsrGue | Mode::Dr => {}
    }
    let rev = reply.map(|(rk, rh)| {
        let mut v = FlowValue {
            action: Action::Rewrite,
            new_src: p.dst,
            new_dst: p.src,
            new_sport: p.dport,
            new_dport: p.sport,
            mac: client_mac,
            src_mac: table.local.mac_of(st.rx_port),
            ..fwd
        };
        v.seal(&rk);
        (rk, rh, v)
    });
    fwd.seal(key);
    let initial = if tcp {
        FlowState::Tcp(TcpState::SynSent)
    } else {
        FlowState::Udp { replied: false }
    };
    // The fast path hashed the key already (it looked it up); other frames hash it here.
    let hash = hash.unwrap_or_else(|| st.ct.table_hash(key));
    let rev = rev.as_ref().map(|(k, h, v)| (k, *h, v));
    if let Err(e) = st.ct.insert_hashed(now, (key, hash, &fwd), rev, initial) {
        return Verdict::Drop(match e {
            InsertError::Full | InsertError::Exists => DropReason::ConntrackFull,
            InsertError::EmbryonicBudget => DropReason::EmbryonicBudget,
            InsertError::UdpBudget => DropReason::UdpBudget,
        });
    }
    let len = pkt.len() as u64;
    count(&mut st.counters, &fwd, len, true);
    apply(table, pkt, p, &fwd, p.sport)
}

/// A fullnat source (address, port) for a new flow to `be`, as the reply key (backend ->
/// source) with its table hash: the pool's addresses of the
/// backend's family take turns (one per new flow, so all of them carry flows), and when one has
/// no free port in this worker's slice the next is tried. Any of them steers replies to us, as
/// steering reads only the port. `unsupported` when the pool has no address of that family,
/// `snat-exhausted` when every address's slice is full. No allocation: the family's addresses are counted, then walked.
fn snat_alloc(
    st: &mut WorkerState,
    pool: &Pool,
    be: &Backend,
    be_port: u16,
    proto: u8,
    want_v4: bool,
    now: Millis,
) -> Result<(FlowKey, u64), DropReason> {
    let of_family = || pool.snat.iter().filter(move |a| a.is_v4() == want_v4);
    let n = of_family().count();
    if n == 0 {
        return Err(DropReason::Unsupported);
    }
    let start = st.next_snat_addr(n);
    // From the `start`-th on, wrapping around: one walk, not a search from the front per try.
    for &snat in of_family().skip(start).chain(of_family().take(start)) {
        let mut rkey = FlowKey {
            src: be.addr,
            dst: snat,
            sport: be_port,
            dport: 0,
            proto,
        };
        if let Some((_, h)) = st.alloc_port(&mut rkey, now) {
            return Ok((rkey, h));
        }
    }
    Err(DropReason::SnatExhausted)
}

/// The one select -> MAC -> forward sequence of a new flow `key` (client -> VIP) of `svc`: Maglev's
/// backend, the MAC of its next hop, and the client -> backend flow value. `gate` may refuse the
/// backend's pool before its next hop is looked up (and probed).
pub(super) fn choose<'t>(
    table: &RoutingTable,
    svc: &'t Service,
    key: &FlowKey,
    gate: impl FnOnce(&Pool) -> Result<(), DropReason>,
) -> Result<(FlowValue, &'t Backend, &'t Pool), DropReason> {
    let (be, pool, bi) = select(table, svc, key).ok_or(DropReason::NoBackend)?;
    gate(pool)?;
    let mac = backend_mac(table, svc, bi, be)?;
    let fwd = forward_value(table, svc, bi, be, mac, pool, key).ok_or(DropReason::Unsupported)?;
    Ok((fwd, be, pool))
}

/// Maglev's backend (and its pool) for a new flow `key` (client -> VIP); `None` when every
/// backend has weight 0.
fn select<'t>(
    table: &RoutingTable,
    svc: &'t Service,
    key: &FlowKey,
) -> Option<(&'t Backend, &'t Pool, usize)> {
    let hash = match svc.affinity {
        Affinity::None => key.hash(table.hash_seed),
        Affinity::ClientIp => hash_addr(&key.src, table.hash_seed),
    };
    let bi = usize::from(svc.maglev.lookup(hash)?);
    let be = svc.backends.get(bi)?;
    Some((be, svc.pools.get(usize::from(be.pool))?, bi))
}

/// The MAC towards backend `bi` of `svc`: its static `mac`, or its next hop's entry in the
/// neighbor cache (one atomic load). An unresolved next hop is marked wanted, so the resolver
/// probes it now, and the flow is refused with `no-neighbor` (the client's SYN retry finds it
/// resolved).
#[inline]
pub(super) fn backend_mac(
    table: &RoutingTable,
    svc: &Service,
    bi: usize,
    be: &Backend,
) -> Result<[u8; 6], DropReason> {
    let Some(h) = svc.next_hop(bi) else {
        return Ok(be.mac);
    };
    let (Some(cache), Some(nh)) = (table.neighbors(), table.next_hops().get(h as usize)) else {
        return Err(DropReason::NoNeighbor);
    };
    cache.mac(nh.hop).ok_or_else(|| {
        cache.want(nh.hop);
        DropReason::NoNeighbor
    })
}

/// The client -> backend half of a new flow `key` (client -> VIP) on backend `be` (index `bi`),
/// whose next hop has `mac`. Fullnat's source address and port are filled in by the caller, which
/// allocates them.
fn forward_value(
    table: &RoutingTable,
    svc: &Service,
    bi: usize,
    be: &Backend,
    mac: [u8; 6],
    pool: &Pool,
    key: &FlowKey,
) -> Option<FlowValue> {
    let mut v = FlowValue {
        action: Action::Rewrite,
        mode: pool.mode,
        new_src: key.src,
        new_dst: be.addr,
        new_sport: key.sport,
        new_dport: if be.port == 0 { key.dport } else { be.port },
        mac,
        src_mac: table.local.mac_of(svc.iface(bi)),
        gue_port: pool.gue_port,
        vip: key.dst,
        vport: key.dport,
        proto: key.proto,
        backend: be.addr,
        backend_port: be.port,
        generation: table.generation,
        svc_stat: svc.stat,
        be_stat: be.stat,
        by_syn: false,
        l3_delta: Delta::default(),
        l4_delta: Delta::default(),
        fast: Fast::No,
    };
    match pool.mode {
        Mode::DsrIpip | Mode::DsrGue => {
            v.action = if pool.mode == Mode::DsrIpip {
                Action::Ipip
            } else {
                Action::Gue
            };
            v.new_src = if be.addr.is_v4() {
                pool.encap_src_v4?
            } else {
                pool.encap_src_v6?
            };
            v.new_dport = key.dport;
        }
        Mode::Dr => {
            v.action = Action::Mac;
            v.new_dport = key.dport;
        }
        Mode::FullNat | Mode::Nat => {}
    }
    Some(v)
}

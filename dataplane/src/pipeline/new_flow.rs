//! The first packet of a flow: service lookup, Maglev selection, the next hop's MAC, and the
//! conntrack entries of both directions.

use crate::conntrack::tcp_flags::{ACK as TCP_ACK, RST as TCP_RST, SYN as TCP_SYN};
use crate::conntrack::{FlowState, InsertError, Millis, Probe, TcpState, V4Key};
use crate::flow::{hash_addr, proto, Addr, FlowKey};
use crate::neighbor::BoundHop;
use crate::packet::PacketBuf;
use crate::table::{Affinity, Backend, Mode, Pool, RoutingTable, Service};
use crate::wire::checksum::Delta;
use crate::wire::{self, nat, Parsed, V4Flow};

use super::encap;
use super::rewrite::apply;
use super::state::{gen32, Action, Fast, FlowValue, WorkerState};
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
    let client_mac = wire::src_mac(pkt.data());
    // The fast path hashed the key already (it looked it up); other frames hash it here.
    let hash = hash.unwrap_or_else(|| st.ct.table_hash(key));
    let pa = st.ct.probe(key, hash);
    let slot = match commit(st, table, now, (key, &pa), fwd, be, pool, client_mac) {
        Ok(s) => s,
        Err(r) => return Verdict::Drop(r),
    };
    let WorkerState { ct, counters, .. } = st;
    let val = ct.value(slot);
    count(counters, val, pkt.len() as u64, true);
    apply(table, pkt, p, val, p.sport)
}

/// A new flow's first packet in the common case, without the general parse's [`Parsed`] or
/// classification: an untagged IPv4 TCP SYN or UDP datagram the fast parse read (`f`) whose
/// key the fast path found untracked, to a service with an IPv4 backend. `None`, with nothing
/// changed, for every other packet (another TCP segment, no service, a bad checksum, no
/// backend, an IPv6 backend): the general path decides it as before. Otherwise the verdict,
/// with the flow created and the packet forwarded as [`new_flow`] would (the same entries,
/// values, counters and bytes: `tests/new_flow_v4.rs` holds them side by side); the caller
/// counts the packet's rx and verdict. Built from the header's words: each value once, in
/// place, sealed from words, the keys searched once each, the original key's probe `pa` the
/// fast path's (from its lookup, the table unchanged since).
#[inline(never)]
pub(super) fn new_v4(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    f: &V4Flow,
    pa: &Probe,
) -> Option<Verdict> {
    new_v4_inline(st, table, now, pkt, f, pa)
}

/// [`new_v4`] with the frame's counting, for a frame the fast path read and found untracked
/// (`seen`, in a burst, the table adopted): the verdict, the frame counted as the general path
/// counts it; a frame [`new_v4`] leaves alone goes on to the general path (which counts it).
/// Its own call from the burst's dispatch, so that dispatch keeps no registers and calls it
/// (and the general path here) as tail calls.
#[inline(never)]
pub(super) fn first_v4(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    seen: &super::FastMiss,
) -> Verdict {
    let rx = pkt.len() as u64;
    match new_v4_inline(st, table, now, pkt, &seen.flow, &seen.probe) {
        // The common verdict's count without a test of it.
        Some(Verdict::Tx) => {
            super::count_verdict(&mut st.counters, rx, pkt.len() as u64, Verdict::Tx);
            Verdict::Tx
        }
        Some(v) => {
            super::count_verdict(&mut st.counters, rx, pkt.len() as u64, v);
            v
        }
        None => super::seen_general(st, table, now, pkt, Some(seen)),
    }
}

#[inline(always)]
fn new_v4_inline(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    f: &V4Flow,
    pa: &Probe,
) -> Option<Verdict> {
    let tcp = f.proto == proto::TCP;
    if tcp && f.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
        return None;
    }
    let (sport, dport) = (f.sport(), f.dport());
    // The VIP 0.0.0.0 (not a VIP a client reaches) goes to the general path: then the reply's
    // deltas are never those of all-zero client and VIP words (see `z3` below), and the
    // compiler drops that case's tests and selects.
    if f.dst == 0 {
        return None;
    }
    let svc = table.service_for_v4(f.dst, f.proto, dport)?;
    let frame = pkt.data();
    if !wire::verify_v4_l4(frame, f) {
        return None;
    }
    let client_mac = wire::src_mac(frame);
    let (client, vip) = (Addr::v4(f.src.to_ne_bytes()), Addr::v4(f.dst.to_ne_bytes()));
    let key = FlowKey {
        src: client,
        dst: vip,
        sport,
        dport,
        proto: f.proto,
    };
    let (be, pool, bi) = select(table, svc, &key)?;
    if !be.addr.is_v4() {
        return None;
    }
    // From here on the verdict is this function's: the next hop may be marked wanted, a
    // source port taken.
    let mac = match backend_mac(table, svc, bi, be) {
        Ok(m) => m,
        Err(r) => return Some(Verdict::Drop(r)),
    };
    // The client's words as the deltas take them (big-endian values).
    let (c_be, v_be) = (u32::from_be(f.src), u32::from_be(f.dst));
    let in_ports = nat::ports(sport, dport);
    // The new source as an address word (the client's, or dsr's encapsulation source), made
    // an `Addr` once, and the outer header's delta computed in dsr's own arm: an `Addr` chosen
    // here, the compiler kept it as 16 bytes and put them together again where it was stored
    // (80 instructions a new flow when it did), and the delta after the choice it computed for
    // every mode.
    let (action, fast, src_w, new_dport, l3_delta) = match pool.mode {
        Mode::FullNat | Mode::Nat => (
            Action::Rewrite,
            Fast::RewriteV4,
            f.src,
            if be.port == 0 { dport } else { be.port },
            Delta::default(),
        ),
        Mode::DsrIpip | Mode::DsrGue => {
            let Some(src) = pool.encap_src_v4 else {
                return Some(Verdict::Drop(DropReason::Unsupported));
            };
            if !src.is_v4() {
                return None;
            }
            let (action, fast) = match pool.mode {
                Mode::DsrIpip => (Action::Ipip, Fast::IpipV4),
                _ => (Action::Gue, Fast::GueV4),
            };
            let l3 = encap::outer_delta(fast, &src, &be.addr);
            (action, fast, u32::from_ne_bytes(src.v4_octets()), dport, l3)
        }
        Mode::Dr => (Action::Mac, Fast::MacV4, f.src, dport, Delta::default()),
    };
    let new_src = Addr::v4(src_w.to_ne_bytes());
    let mut fwd = FlowValue {
        fast,
        action,
        mode: pool.mode,
        proto: f.proto,
        svc_stat: svc.stat,
        be_stat: be.stat,
        l3_delta,
        l4_delta: Delta::default(),
        new_sport: sport,
        new_dport,
        macs: wire::mac_pair(mac, table.local.mac_of(svc.iface(bi))),
        gue_port: pool.gue_port,
        by_syn: tcp,
        generation: gen32(table.generation),
        vport: dport,
        backend_port: be.port,
        new_src,
        new_dst: be.addr,
    };
    // The fast path's probe of this key (of an untracked key: never `Probe::NONE`), used
    // where it lies.
    debug_assert!(pa.is_of_v4(V4Key::new(f.src, f.dst, f.ports, f.proto)));
    let initial = if tcp {
        FlowState::Tcp(TcpState::SynSent)
    } else {
        FlowState::Udp { replied: false }
    };
    if pool.mode.replies_through_us() {
        let be_w = u32::from_ne_bytes(be.addr.v4_octets());
        // The reply key (backend -> us) and its value (back to the client).
        let (r_dst, r_dport, pb) = if pool.mode == Mode::FullNat {
            match snat_v4(
                st,
                svc.snat_v4(usize::from(be.pool)),
                pa,
                be_w,
                new_dport,
                f.proto,
                now,
            ) {
                Ok(a) => a,
                Err(r) => return Some(Verdict::Drop(r)),
            }
        } else {
            let ports = u32::from_ne_bytes(nat::ports(new_dport, sport).to_be_bytes());
            let rk = V4Key::new(be_w, f.src, ports, f.proto);
            let pb = st
                .ct
                .probe_v4(rk, st.ct.hash_v4(be_w, f.src, ports, f.proto));
            (f.src, sport, pb)
        };
        let r_dst_be = u32::from_be(r_dst);
        fwd.new_src = Addr::v4(r_dst.to_ne_bytes());
        fwd.new_sport = r_dport;
        let be_be = u32::from_be(be_w);
        (fwd.l3_delta, fwd.l4_delta) = nat::deltas_v4(
            [c_be, v_be, in_ports],
            [r_dst_be, be_be, nat::ports(r_dport, new_dport)],
        );
        // The reply undoes the forward rewrite: its deltas are the forward ones negated. Its
        // sums are exactly zero only with its old words all ones and its new words all zeros.
        let z3 = be_be & r_dst_be == u32::MAX && v_be | c_be == 0;
        let z4 = z3 && nat::ports(new_dport, r_dport) == u32::MAX && in_ports == 0;
        let (l3_delta, l4_delta) = (fwd.l3_delta.reversed(z3), fwd.l4_delta.reversed(z4));
        // The fields the reply shares with the forward value copied, the others set.
        let mut rev = fwd;
        rev.fast = Fast::RewriteV4;
        rev.action = Action::Rewrite;
        (rev.l3_delta, rev.l4_delta) = (l3_delta, l4_delta);
        (rev.new_src, rev.new_dst) = (vip, client);
        (rev.new_sport, rev.new_dport) = (dport, sport);
        rev.macs = wire::mac_pair(client_mac, table.local.mac_of(st.rx_port));
        if let Err(e) = st
            .ct
            .insert_probed_v4(now, (pa, &fwd), Some((&pb, &rev)), initial)
        {
            return Some(Verdict::Drop(insert_drop(e)));
        }
        // The flow slot holds `fwd` as it is here; fullnat and nat always rewrite
        // (`Fast::RewriteV4`): forwarded here, without the dispatch on the kind below (a jump
        // table).
        debug_assert!(fwd.fast == Fast::RewriteV4);
        count(&mut st.counters, &fwd, pkt.len() as u64, true);
        if rewrite_first_v4(pkt, &fwd, tcp) {
            return Some(Verdict::Tx);
        }
        return Some(forward_general(table, pkt, f, &fwd, sport));
    }
    // Encapsulation and dr leave the packet's checksums alone: no deltas (as `seal`).
    if let Err(e) = st.ct.insert_probed_v4(now, (pa, &fwd), None, initial) {
        return Some(Verdict::Drop(insert_drop(e)));
    }
    // The flow slot holds `fwd` as it is here: dr's `Fast::MacV4` or an encapsulation's
    // (tested in turn: a match on the kind was a jump table).
    let val = &fwd;
    count(&mut st.counters, val, pkt.len() as u64, true);
    debug_assert!(val.fast == Fast::MacV4 || val.fast.encaps_v4());
    let done = if val.fast == Fast::MacV4 {
        wire::set_mac_pair(pkt.data_mut(), &val.macs);
        true
    } else {
        let inner = usize::from(f.l3_end) - wire::ETH_LEN;
        encap::outer_v4(pkt, table, val, inner, val.fast == Fast::GueV4, sport)
    };
    if done {
        return Some(Verdict::Tx);
    }
    // What the fixed layouts do not take (a packet too big to encapsulate): the general
    // forwarding, from the parse the general path would have made.
    Some(forward_general(table, pkt, f, val, sport))
}

/// The address and port rewrite of a new flow's first packet by its value `val`
/// ([`Fast::RewriteV4`]); false, with nothing changed, when the fixed layout does not fit.
#[inline(always)]
fn rewrite_first_v4(pkt: &mut PacketBuf<'_>, val: &FlowValue, tcp: bool) -> bool {
    let ports = nat::ports(val.new_sport, val.new_dport);
    let addrs = (val.new_src.v4_octets(), val.new_dst.v4_octets());
    let deltas = (val.l3_delta, val.l4_delta);
    nat::rewrite_v4_frame(
        pkt.data_mut(),
        &val.macs,
        (&addrs.0, &addrs.1),
        ports,
        deltas,
        tcp,
    )
}

/// [`new_v4`]'s first packet where the fixed layouts do not take it: the general forwarding of
/// flow value `val`, from the parse the general path would have made. Out of line: it is
/// almost never taken, and its code inlined cost every new flow registers.
#[cold]
#[inline(never)]
fn forward_general(
    table: &RoutingTable,
    pkt: &mut PacketBuf<'_>,
    f: &V4Flow,
    val: &FlowValue,
    sport: u16,
) -> Verdict {
    let p = wire::parsed_v4(pkt.data(), f);
    apply(table, pkt, &p, val, sport)
}

/// [`snat_alloc`] for an IPv4 backend (`be_w`, its address word as loaded; `be_port` the
/// port the flow goes to) from words: the fullnat source address word and port, and the
/// reply key's probe (`orig` the original key's). The same choice, order and errors; the pool's IPv4 addresses are the
/// words the table keeps for it (`words`, [`Service::snat_v4`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn snat_v4(
    st: &mut WorkerState,
    words: &[u32],
    orig: &Probe,
    be_w: u32,
    be_port: u16,
    proto: u8,
    now: Millis,
) -> Result<(u32, u16, Probe), DropReason> {
    let n = words.len();
    if n == 0 {
        return Err(DropReason::Unsupported);
    }
    // The addresses from the one the key's hash picks on, wrapping around: the common case (its
    // next port is free) without the walk's loops, the walk (from that port again) a call.
    let i = orig.pick(n);
    if let Some(&snat_w) = words.get(i) {
        if let Some((port, p)) = st.next_port_v4(be_w, snat_w, be_port, proto, now) {
            return Ok((snat_w, port, p));
        }
    }
    // The walk's probe through memory, its address and port in registers: the common case's
    // probe then stays in registers where the two join.
    let mut p = Probe::NONE;
    let (snat_w, port) = snat_v4_walk(st, words, i, be_w, be_port, proto, now, &mut p)?;
    Ok((snat_w, port, p))
}

/// [`snat_v4`]'s walk from the address at `i` (the one the hash picked) on, wrapping around:
/// each address's ports from where the last flow stopped; the reply key's probe into `probe`.
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn snat_v4_walk(
    st: &mut WorkerState,
    words: &[u32],
    mut i: usize,
    be_w: u32,
    be_port: u16,
    proto: u8,
    now: Millis,
    probe: &mut Probe,
) -> Result<(u32, u16), DropReason> {
    let n = words.len();
    for _ in 0..n {
        let Some(&snat_w) = words.get(i) else {
            break;
        };
        if let Some((port, p)) = st.alloc_port_v4(be_w, snat_w, be_port, proto, now) {
            *probe = p;
            return Ok((snat_w, port));
        }
        i = if i + 1 == n { 0 } else { i + 1 };
    }
    Err(DropReason::SnatExhausted)
}

/// The drop of a failed conntrack insert.
fn insert_drop(e: InsertError) -> DropReason {
    match e {
        InsertError::Full | InsertError::Exists => DropReason::ConntrackFull,
        InsertError::EmbryonicBudget => DropReason::EmbryonicBudget,
        InsertError::UdpBudget => DropReason::UdpBudget,
    }
}

/// The rest of a new flow once its backend is chosen (`fwd`, the client -> backend value):
/// fullnat's source port, the reply key and value (nat, fullnat), both values sealed, and the
/// conntrack entries, with `orig` the original key and its probe. Returns the flow slot (whose
/// value is the sealed `fwd`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn commit(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    (key, pa): (&FlowKey, &Probe),
    mut fwd: FlowValue,
    be: &Backend,
    pool: &Pool,
    client_mac: [u8; 6],
) -> Result<u32, DropReason> {
    let mut reply = None;
    match pool.mode {
        Mode::FullNat => {
            let want_v4 = be.addr.is_v4();
            let (rkey, rprobe) =
                snat_alloc(st, pool, be, fwd.new_dport, key.proto, pa, want_v4, now)?;
            fwd.new_src = rkey.dst;
            fwd.new_sport = rkey.dport;
            reply = Some((rkey, rprobe));
        }
        Mode::Nat => {
            let rkey = FlowKey {
                src: be.addr,
                dst: key.src,
                sport: fwd.new_dport,
                dport: key.sport,
                proto: key.proto,
            };
            reply = Some((rkey, st.ct.probe(&rkey, st.ct.table_hash(&rkey))));
        }
        Mode::DsrIpip | Mode::DsrGue | Mode::Dr => {}
    }
    let rev = reply.map(|(rk, rp)| {
        let mut v = FlowValue {
            action: Action::Rewrite,
            new_src: key.dst,
            new_dst: key.src,
            new_sport: key.dport,
            new_dport: key.sport,
            macs: wire::mac_pair(client_mac, table.local.mac_of(st.rx_port)),
            ..fwd
        };
        v.seal(&rk);
        (rk, rp, v)
    });
    fwd.seal(key);
    let initial = if key.proto == proto::TCP {
        FlowState::Tcp(TcpState::SynSent)
    } else {
        FlowState::Udp { replied: false }
    };
    let rev = rev.as_ref().map(|(k, p, v)| (k, p, v));
    st.ct
        .insert_probed(now, (key, pa, &fwd), rev, initial)
        .map_err(insert_drop)
}

/// A fullnat source (address, port) for a new flow to `be` whose key's probe is `orig`, as the
/// reply key (backend -> source) with its probe: the pool's addresses of the backend's
/// family, from the one the key's hash picks ([`Probe::pick`]: each pool's flows spread evenly
/// over its own addresses whatever other pools' flows come in between), and when one has no free port in this
/// worker's slice the next is tried. Any of them steers replies to us, as
/// steering reads only the port. `unsupported` when the pool has no address of that family,
/// `snat-exhausted` when every address's slice is full. No allocation: the family's addresses are counted, then walked.
#[allow(clippy::too_many_arguments)]
fn snat_alloc(
    st: &mut WorkerState,
    pool: &Pool,
    be: &Backend,
    be_port: u16,
    proto: u8,
    orig: &Probe,
    want_v4: bool,
    now: Millis,
) -> Result<(FlowKey, Probe), DropReason> {
    let of_family = || pool.snat.iter().filter(move |a| a.is_v4() == want_v4);
    let n = of_family().count();
    if n == 0 {
        return Err(DropReason::Unsupported);
    }
    let start = orig.pick(n);
    // From the `start`-th on, wrapping around: one walk, not a search from the front per try.
    for &snat in of_family().skip(start).chain(of_family().take(start)) {
        let mut rkey = FlowKey {
            src: be.addr,
            dst: snat,
            sport: be_port,
            dport: 0,
            proto,
        };
        if let Some(p) = st.alloc_port(&mut rkey, now) {
            return Ok((rkey, p));
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
    match svc.bound_hop(bi) {
        None => Ok(be.mac),
        Some(h) => next_hop_mac(table, svc, bi, h),
    }
}

/// [`backend_mac`] of backend `bi` of `svc` whose next hop (`h`, its cache slot as the service
/// keeps it) is resolved dynamically (any config with `on_link` or a gateway): the slot's word
/// read and tested against `h` in one compare, without going through
/// [`RoutingTable::next_hops`]. Inline: out of line (new12's f032d6b) a backend with a static
/// MAC saved 5 instructions a new flow, but one behind the neighbor cache paid 26 more for the
/// call's saved registers and the result's packing (`PPS_NEXT_HOPS=on_link`: 1004 -> 1030).
#[inline]
fn next_hop_mac(
    table: &RoutingTable,
    svc: &Service,
    bi: usize,
    h: BoundHop,
) -> Result<[u8; 6], DropReason> {
    let Some(cache) = table.neighbors() else {
        return Err(DropReason::NoNeighbor);
    };
    match cache.resolved(h) {
        Some(mac) => Ok(mac),
        None => Err(unresolved(table, svc, bi)),
    }
}

/// [`next_hop_mac`]'s unresolved next hop (of backend `bi` of `svc`): marked wanted, so the
/// resolver probes it now, and the flow refused. Out of line, and from what the caller keeps
/// anyway (the cache and the hop found again): the mark's compare-and-swap inlined, or the
/// cache and hop kept for it, cost every new flow registers.
#[cold]
#[inline(never)]
fn unresolved(table: &RoutingTable, svc: &Service, bi: usize) -> DropReason {
    if let (Some(cache), Some(h)) = (table.neighbors(), svc.bound_hop(bi)) {
        cache.want(h.hop());
    }
    DropReason::NoNeighbor
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
        macs: wire::mac_pair(mac, table.local.mac_of(svc.iface(bi))),
        gue_port: pool.gue_port,
        vport: key.dport,
        proto: key.proto,
        backend_port: be.port,
        generation: gen32(table.generation),
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

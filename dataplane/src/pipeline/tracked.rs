//! Packets of tracked flows: the stored rewrite wins over the current table.

use crate::conntrack::tcp_flags::RST as TCP_RST;
use crate::conntrack::{Dir, Hit, Millis};
use crate::flow::{proto, FlowKey};
use crate::packet::PacketBuf;
use crate::table::RoutingTable;
use crate::wire::Parsed;

use super::new_flow::backend_mac;
use super::rewrite::apply;
use super::state::{gen32, FlowValue, WorkerState};
use super::verdict::{count, DropReason, Verdict};

/// A packet of a tracked flow: the stored rewrite wins over the current table, as long as the
/// flow's backend is still in its service (a removed one that drains counts: the control plane
/// keeps it at weight 0, in a draining service if the service went too).
pub(super) fn tracked(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    p: &Parsed,
    hit: Hit,
) -> Verdict {
    if st.ct.value(hit.slot).generation != gen32(table.generation) {
        let mut val = *st.ct.value(hit.slot);
        let key = st.ct.key(hit.slot);
        match key.and_then(|k| revalidate(table, &mut val, hit.dir, &k)) {
            Some(()) => *st.ct.value_mut(hit.slot) = val,
            None => {
                st.ct.remove(hit.flow);
                return Verdict::Drop(DropReason::BackendGone);
            }
        }
    }
    st.ct.observe(hit.flow, hit.dir, p.tcp_flags, now);
    let val = st.ct.value(hit.slot);
    count(&mut st.counters, val, pkt.len() as u64, false);
    // Only nat and fullnat flows have a reply key, so this is the backend resetting the flow:
    // a passive health signal, one flag test per reply packet.
    if hit.dir == Dir::Reply && p.tcp_flags & TCP_RST != 0 && p.proto == proto::TCP {
        if let Some(b) = st.counters.backends.get_mut(val.be_stat as usize) {
            b.resets += 1;
        }
    }
    apply(table, pkt, p, val, p.sport)
}

/// Re-finds a flow's service and backend in a new table; `None` when the backend is gone (out of
/// the table: removed with `on_remove = "reset"`, drained past its timeout, disabled or down).
/// `key` is the key `val` is stored under (of direction `dir`), which holds the part of the
/// flow's identity the value does not.
// Once per flow and table generation: kept out of the per-packet code around it.
#[cold]
#[inline(never)]
pub(super) fn revalidate(
    table: &RoutingTable,
    val: &mut FlowValue,
    dir: Dir,
    key: &FlowKey,
) -> Option<()> {
    let vip = val.vip(dir, key);
    let svc = match table.service_for(vip, val.proto, val.vport) {
        Some((_, svc)) => svc,
        None => table.draining_service_for(vip, val.proto, val.vport)?,
    };
    let bi = svc.backend_index(val.backend(dir, key), val.backend_port)?;
    let be = svc.backends.get(bi as usize)?;
    if dir == Dir::Original {
        // A next hop that is being re-resolved keeps the MAC the flow already uses.
        if let Ok(mac) = backend_mac(table, svc, usize::from(bi), be) {
            val.macs[..6].copy_from_slice(&mac);
        }
        // A reload may route the backend through another interface.
        val.macs[6..].copy_from_slice(&table.local.mac_of(svc.iface(usize::from(bi))));
    }
    val.svc_stat = svc.stat;
    val.be_stat = be.stat;
    val.generation = gen32(table.generation);
    Some(())
}

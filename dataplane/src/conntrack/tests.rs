use super::tcp_flags::{ACK, FIN, RST, SYN};
use super::*;
use crate::flow::{proto, Addr};
use proptest::prelude::*;

const T: Timeouts = Timeouts {
    tcp_syn: 5_000,
    tcp_established: 900_000,
    tcp_closing: 10_000,
    udp: 30_000,
    udp_unconfirmed: 5_000,
};

fn cfg(capacity: usize, embryonic_budget: usize) -> Config {
    Config {
        capacity,
        embryonic_budget,
        timeouts: T,
    }
}

/// Client `n` -> VIP:80 (TCP) or VIP:53 (UDP).
fn key(n: u32, p: u8) -> FlowKey {
    let b = n.to_be_bytes();
    FlowKey {
        src: Addr::v4([10, b[1], b[2], b[3]]),
        dst: Addr::v4([192, 0, 2, 1]),
        sport: 1024 + (n >> 24) as u16,
        dport: if p == proto::TCP { 80 } else { 53 },
        proto: p,
    }
}

/// The reply key of a nat flow for client `n`: backend -> client.
fn rkey(n: u32, p: u8) -> FlowKey {
    let k = key(n, p);
    FlowKey {
        src: Addr::v4([198, 51, 100, 7]),
        dst: k.src,
        sport: k.dport,
        dport: k.sport,
        proto: p,
    }
}

const SYN_SENT: FlowState = FlowState::Tcp(TcpState::SynSent);
const ESTABLISHED: FlowState = FlowState::Tcp(TcpState::Established);
const UDP_NEW: FlowState = FlowState::Udp { replied: false };
const UDP_REPLIED: FlowState = FlowState::Udp { replied: true };

/// Tracks a UDP flow without a reply key (dsr) for client `n` at `now` and confirms it with the
/// client's second datagram.
fn udp_confirmed(ct: &mut Conntrack<u32>, n: u32, now: Millis) -> u32 {
    let f = ct
        .insert(now, (&key(n, proto::UDP), n), None, UDP_NEW)
        .unwrap();
    ct.observe(f, Dir::Original, 0, now);
    assert_eq!(ct.udp_unconfirmed(), 0, "flow {n} confirmed");
    f
}

#[test]
fn bytes_for_matches_what_new_allocates() {
    let ct: Conntrack<u64> = Conntrack::new(cfg(1000, 10));
    let allocated = std::mem::size_of_val(&*ct.slots)
        + std::mem::size_of_val(&*ct.tags)
        + std::mem::size_of_val(&*ct.overflow);
    assert_eq!(Conntrack::<u64>::bytes_for(1000), allocated as u64);
    assert_eq!(
        Conntrack::<u64>::bytes_for(usize::MAX),
        Conntrack::<u64>::bytes_for(MAX_CAPACITY)
    );
}

#[test]
fn capacity_is_rounded_up_to_a_power_of_two_of_at_least_one_bucket() {
    for (asked, got) in [
        (0, 16),
        (1, 16),
        (16, 16),
        (17, 32),
        (1000, 1024),
        (1 << 20, 1 << 20),
    ] {
        let ct: Conntrack<u8> = Conntrack::new(cfg(asked, 1));
        assert_eq!(ct.capacity(), got, "capacity {asked}");
        assert_eq!(ct.config().capacity, got);
        assert!(ct.is_empty());
    }
}

#[test]
fn nat_handshake_walks_syn_sent_syn_received_established() {
    let mut ct = Conntrack::new(cfg(1024, 16));
    let (k, r) = (key(1, proto::TCP), rkey(1, proto::TCP));
    let f = ct.insert(0, (&k, 'o'), Some((&r, 'r')), SYN_SENT).unwrap();
    assert_eq!(ct.embryonic(), 1);
    // The client's ACK before the backend's SYN+ACK proves nothing on a nat flow.
    assert_eq!(ct.observe(f, Dir::Original, ACK, 1), SYN_SENT);
    let hit = ct.lookup(&r, 2).unwrap();
    assert_eq!((hit.flow, hit.dir), (f, Dir::Reply));
    assert_eq!(
        ct.observe(hit.flow, Dir::Reply, SYN | ACK, 2),
        FlowState::Tcp(TcpState::SynReceived)
    );
    assert_eq!(ct.embryonic(), 1);
    assert_eq!(ct.observe(f, Dir::Original, ACK, 3), ESTABLISHED);
    assert_eq!(ct.embryonic(), 0);
    assert_eq!(ct.state(f), ESTABLISHED);
    assert_eq!(ct.len(), 1);
}

#[test]
fn dsr_flow_is_established_by_the_clients_second_packet() {
    let mut ct = Conntrack::new(cfg(1024, 16));
    let k = key(2, proto::TCP);
    let f = ct.insert(0, (&k, 0u32), None, SYN_SENT).unwrap();
    // A retransmitted SYN is still a handshake in progress.
    assert_eq!(ct.observe(f, Dir::Original, SYN, 1_000), SYN_SENT);
    assert_eq!(ct.embryonic(), 1);
    assert_eq!(ct.observe(f, Dir::Original, ACK, 1_010), ESTABLISHED);
    assert_eq!(ct.embryonic(), 0);
    assert_eq!(ct.reply_slot(f), None);
}

#[test]
fn fin_from_both_sides_or_rst_closes() {
    let mut ct = Conntrack::new(cfg(1024, 16));
    let establish = |ct: &mut Conntrack<u8>, n| {
        let f = ct
            .insert(
                0,
                (&key(n, proto::TCP), 0),
                Some((&rkey(n, proto::TCP), 0)),
                SYN_SENT,
            )
            .unwrap();
        ct.observe(f, Dir::Reply, SYN | ACK, 0);
        ct.observe(f, Dir::Original, ACK, 0);
        f
    };
    let f = establish(&mut ct, 1);
    let fin_wait = FlowState::Tcp(TcpState::FinWait);
    let closed = FlowState::Tcp(TcpState::Closed);
    assert_eq!(ct.observe(f, Dir::Original, FIN | ACK, 1), fin_wait);
    // A second FIN from the same side does not close.
    assert_eq!(ct.observe(f, Dir::Original, FIN | ACK, 2), fin_wait);
    assert_eq!(ct.observe(f, Dir::Reply, ACK, 3), fin_wait);
    assert_eq!(ct.observe(f, Dir::Reply, FIN | ACK, 4), closed);
    // The client reusing the port starts a new handshake on the same entry.
    assert_eq!(ct.observe(f, Dir::Original, SYN, 5), SYN_SENT);
    let g = establish(&mut ct, 2);
    assert_eq!(ct.observe(g, Dir::Reply, RST, 1), closed);
    let h = establish(&mut ct, 3);
    assert_eq!(ct.observe(h, Dir::Original, RST | ACK, 1), closed);
}

#[test]
fn nat_udp_flow_is_confirmed_by_the_clients_datagram_after_a_reply() {
    let mut ct = Conntrack::new(cfg(1024, 4));
    let (k, r) = (key(1, proto::UDP), rkey(1, proto::UDP));
    let f = ct.insert(0, (&k, 1u8), Some((&r, 2u8)), UDP_NEW).unwrap();
    // UDP has its own count: the TCP (embryonic) one is untouched.
    assert_eq!((ct.embryonic(), ct.udp_unconfirmed()), (0, 1));
    assert_eq!(ct.deadline(f), Some(T.udp_unconfirmed));
    // The client repeating itself proves nothing on a nat flow (a spoofer can do that).
    assert_eq!(ct.observe(f, Dir::Original, 0, 1), UDP_NEW);
    assert_eq!(ct.udp_unconfirmed(), 1);
    // Nor does the backend's reply alone: an echo or DNS backend answers every spoofed source.
    assert_eq!(ct.observe(f, Dir::Reply, 0, 2), UDP_REPLIED);
    assert_eq!(ct.udp_unconfirmed(), 1);
    assert_eq!(ct.deadline(f), Some(2 + T.udp_unconfirmed));
    // The client's datagram after the reply confirms it, with the long timeout.
    assert_eq!(ct.observe(f, Dir::Original, 0, 3), UDP_REPLIED);
    assert_eq!(ct.udp_unconfirmed(), 0);
    assert_eq!(ct.deadline(f), Some(3 + T.udp));
    assert_eq!(ct.observe(f, Dir::Reply, 0, 4), UDP_REPLIED);
    assert_eq!((ct.udp_unconfirmed(), ct.deadline(f)), (0, Some(4 + T.udp)));
}

#[test]
fn dsr_udp_flow_is_confirmed_by_the_clients_second_datagram() {
    let mut ct = Conntrack::new(cfg(1024, 4));
    let f = ct
        .insert(0, (&key(1, proto::UDP), 1u32), None, UDP_NEW)
        .unwrap();
    assert_eq!(ct.udp_unconfirmed(), 1);
    assert_eq!(ct.observe(f, Dir::Original, 0, 10), UDP_NEW);
    assert_eq!(ct.udp_unconfirmed(), 0);
    assert_eq!(ct.deadline(f), Some(10 + T.udp));
}

#[test]
fn each_state_expires_after_its_own_timeout() {
    let mut ct = Conntrack::new(cfg(1024, 16));
    let syn = key(1, proto::TCP);
    let est = key(2, proto::TCP);
    let fin = key(3, proto::TCP);
    let udp = key(4, proto::UDP);
    let new_udp = key(5, proto::UDP);
    ct.insert(100, (&syn, 0u8), None, SYN_SENT).unwrap();
    let e = ct.insert(100, (&est, 0), None, SYN_SENT).unwrap();
    ct.observe(e, Dir::Original, ACK, 100);
    let c = ct.insert(100, (&fin, 0), None, SYN_SENT).unwrap();
    ct.observe(c, Dir::Original, ACK, 100);
    ct.observe(c, Dir::Original, FIN | ACK, 100);
    let u = ct.insert(0, (&udp, 0), None, UDP_NEW).unwrap();
    ct.observe(u, Dir::Original, 0, 100);
    ct.insert(100, (&new_udp, 0), None, UDP_NEW).unwrap();
    for (k, t) in [
        (syn, T.tcp_syn),
        (est, T.tcp_established),
        (fin, T.tcp_closing),
        (udp, T.udp),
        (new_udp, T.udp_unconfirmed),
    ] {
        assert!(
            ct.lookup(&k, 100 + t - 1).is_some(),
            "{k:?} alive just before {t} ms"
        );
        assert!(
            ct.lookup(&k, 100 + t).is_none(),
            "{k:?} expired after {t} ms"
        );
    }
    // A packet refreshes the timer.
    ct.observe(e, Dir::Original, ACK, 500_000);
    assert!(ct.lookup(&est, 100 + T.tcp_established).is_some());
    // Expired flows stay stored until collected.
    assert_eq!(ct.len(), 5);
}

#[test]
fn expire_with_reports_the_state_and_value_of_each_flow_it_removes() {
    let mut ct = Conntrack::new(cfg(64, 64));
    let a = ct
        .insert(
            0,
            (&key(1, proto::TCP), 10),
            Some((&rkey(1, proto::TCP), 11)),
            SYN_SENT,
        )
        .unwrap();
    let b = ct
        .insert(
            0,
            (&key(2, proto::TCP), 20),
            Some((&rkey(2, proto::TCP), 21)),
            SYN_SENT,
        )
        .unwrap();
    // The backend answers flow b's SYN.
    ct.observe(b, Dir::Reply, SYN | ACK, 1);
    let _ = a;
    let mut seen = Vec::new();
    let n = ct.expire_with(T.tcp_syn + 1, 64, |st, v| seen.push((st, *v)));
    seen.sort_by_key(|s| s.1);
    assert_eq!(n, 2);
    assert_eq!(
        seen,
        vec![(SYN_SENT, 10), (FlowState::Tcp(TcpState::SynReceived), 20)],
        "each flow once, with the value of its original key"
    );
}

/// Every call examines exactly the `budget` slots from where the last stopped, wrapping
/// around, whether the cursor and budget fall on bucket boundaries or not: the flows it removes
/// are exactly the expired flows whose flow slots lie in that window.
#[test]
fn expire_removes_exactly_the_expired_flows_of_its_window() {
    let cap = 256;
    let mut ct = Conntrack::new(cfg(cap, cap));
    for n in 0..90 {
        // Every third flow confirmed (it outlives the others), every other one with a reply key.
        let reply = (n % 2 == 0).then(|| (rkey(n, proto::UDP), n));
        let f = ct
            .insert(
                0,
                (&key(n, proto::UDP), n),
                reply.as_ref().map(|(k, v)| (k, *v)),
                UDP_NEW,
            )
            .unwrap();
        if n % 3 == 0 {
            ct.observe(f, Dir::Original, 0, 0);
            ct.observe(f, Dir::Reply, 0, 0);
            ct.observe(f, Dir::Original, 0, 0);
        }
    }
    let now = T.udp_unconfirmed;
    let mut cursor = 0usize;
    for budget in [5, 16, 7, 13, 32, 1, 100, 16, 48, 3, 300, 11] {
        let due: Vec<u32> = ct
            .iter_flows()
            .filter(|&(f, _, _)| ct.deadline(f).is_some_and(|d| now >= d))
            .filter(|&(f, _, _)| (f as usize).wrapping_sub(cursor) % cap < budget.min(cap))
            .map(|(f, _, _)| f)
            .collect();
        let before = ct.len();
        let r = ct.expire(now, budget);
        assert_eq!(r, due.len(), "budget {budget} from {cursor}");
        assert_eq!(ct.len(), before - r);
        for f in due {
            assert!(ct.key(f).is_none(), "flow slot {f} removed");
        }
        cursor = (cursor + budget.min(cap)) % cap;
    }
    // The confirmed flows (30) are left, every key still found.
    assert_eq!(ct.len(), 30);
    for n in (0..90).step_by(3) {
        assert!(ct.lookup(&key(n, proto::UDP), now).is_some(), "flow {n}");
    }
}

#[test]
fn expire_examines_at_most_budget_slots_per_call() {
    let mut ct = Conntrack::new(cfg(1024, 1024));
    for n in 0..300 {
        ct.insert(
            0,
            (&key(n, proto::UDP), n),
            Some((&rkey(n, proto::UDP), n)),
            UDP_NEW,
        )
        .unwrap();
    }
    let keep = key(1_000, proto::TCP);
    let kf = ct.insert(0, (&keep, 7), None, SYN_SENT).unwrap();
    ct.observe(kf, Dir::Original, ACK, T.udp_unconfirmed);
    // Nothing is due yet.
    assert_eq!(ct.expire(T.udp_unconfirmed - 1, 1024), 0);
    let now = T.udp_unconfirmed;
    let mut calls = 0;
    let mut removed = 0;
    while ct.len() > 1 {
        let r = ct.expire(now, 16);
        assert!(r <= 16, "removed {r} flows while examining 16 slots");
        removed += r;
        calls += 1;
        assert!(calls <= 1024 / 16 * 2, "expiry does not progress");
    }
    assert_eq!(removed, 300);
    // One sweep of the table is enough, spread over many calls.
    assert!(calls > 1 && calls <= 1024 / 16, "took {calls} calls");
    assert_eq!(
        ct.iter_flows().map(|(f, _, _)| f).collect::<Vec<_>>(),
        vec![kf]
    );
    assert!(ct.lookup(&key(3, proto::UDP), now).is_none());
    assert!(ct.lookup(&rkey(3, proto::UDP), now).is_none());
}

#[test]
fn paired_keys_share_state_and_values_and_are_removed_together() {
    let mut ct = Conntrack::new(cfg(1024, 16));
    let (k, r) = (key(1, proto::TCP), rkey(1, proto::TCP));
    let f = ct
        .insert(0, (&k, 10u32), Some((&r, 20u32)), SYN_SENT)
        .unwrap();
    let ho = ct.lookup(&k, 1).unwrap();
    let hr = ct.lookup(&r, 1).unwrap();
    assert_eq!((ho.flow, ho.slot, ho.dir), (f, f, Dir::Original));
    assert_eq!((hr.flow, hr.dir), (f, Dir::Reply));
    assert_eq!(ct.reply_slot(f), Some(hr.slot));
    assert_eq!((*ct.value(ho.slot), *ct.value(hr.slot)), (10, 20));
    *ct.value_mut(hr.slot) = 21;
    assert_eq!(*ct.value(hr.slot), 21);
    ct.observe(hr.flow, Dir::Reply, SYN | ACK, 2);
    assert_eq!(ct.state(hr.slot), FlowState::Tcp(TcpState::SynReceived));
    assert_eq!(ct.state(f), FlowState::Tcp(TcpState::SynReceived));
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.iter_flows().count(), 1);
    // Removing through the reply key removes the whole flow.
    ct.remove(hr.slot);
    assert!(ct.lookup(&k, 3).is_none());
    assert!(ct.lookup(&r, 3).is_none());
    assert_eq!((ct.len(), ct.embryonic()), (0, 0));
    // Removing again is harmless.
    ct.remove(f);
    assert_eq!(ct.len(), 0);
    // And the keys can be tracked again.
    ct.insert(4, (&r, 1), Some((&k, 2)), UDP_NEW).unwrap();
    assert_eq!(ct.lookup(&k, 5).unwrap().dir, Dir::Reply);
}

#[test]
fn live_key_is_exists_and_a_failed_insert_changes_nothing() {
    let mut ct = Conntrack::new(cfg(1024, 16));
    let (k, r) = (key(1, proto::TCP), rkey(1, proto::TCP));
    let f = ct.insert(0, (&k, 1u8), Some((&r, 2u8)), SYN_SENT).unwrap();
    let k2 = key(2, proto::TCP);
    assert_eq!(
        ct.insert(1, (&k, 9), None, SYN_SENT),
        Err(InsertError::Exists)
    );
    assert_eq!(
        ct.insert(1, (&k2, 9), Some((&r, 9)), SYN_SENT),
        Err(InsertError::Exists)
    );
    assert_eq!(
        ct.insert(1, (&k2, 9), Some((&k2, 9)), SYN_SENT),
        Err(InsertError::Exists)
    );
    assert_eq!((ct.len(), ct.embryonic()), (1, 1));
    assert!(ct.lookup(&k2, 1).is_none());
    assert_eq!(*ct.value(ct.lookup(&r, 1).unwrap().slot), 2);
    // Once expired, the same keys make a new flow (and the old entry is gone).
    let g = ct
        .insert(T.tcp_syn, (&k, 3), Some((&r, 4)), SYN_SENT)
        .unwrap();
    assert_eq!((ct.len(), ct.embryonic()), (1, 1));
    assert_eq!(*ct.value(ct.lookup(&k, T.tcp_syn).unwrap().slot), 3);
    assert_eq!(
        ct.iter_flows().map(|(f, _, _)| f).collect::<Vec<_>>(),
        vec![g]
    );
    let _ = f;
}

#[test]
fn full_bucket_of_established_flows_rejects_even_syns() {
    // One bucket: every key competes for the same 16 slots.
    let mut ct = Conntrack::new(cfg(16, 16));
    for n in 0..16 {
        udp_confirmed(&mut ct, n, 0);
    }
    assert_eq!(
        ct.insert(0, (&key(99, proto::UDP), 0), None, UDP_NEW),
        Err(InsertError::Full)
    );
    assert_eq!(
        ct.insert(0, (&key(99, proto::TCP), 0), None, SYN_SENT),
        Err(InsertError::Full)
    );
    assert_eq!(ct.len(), 16);
    // An expired entry is reused.
    let f = ct.lookup(&key(5, proto::UDP), 0).unwrap().flow;
    ct.observe(f, Dir::Original, 0, 1_000);
    let at = T.udp + 500;
    ct.insert(at, (&key(99, proto::TCP), 0), None, SYN_SENT)
        .unwrap();
    assert!(ct.lookup(&key(5, proto::UDP), at).is_some());
    // Only the reused entry went; the other expired ones wait for expire().
    assert_eq!(ct.len(), 16);
    assert_eq!(ct.expire(at, 16), 14);
    assert_eq!(ct.len(), 2);
}

#[test]
fn pair_insert_in_one_bucket_takes_two_slots() {
    // One bucket: the reply key's first free slot is the flow key's (excluded), so it takes
    // the next one, while the bucket's last six slots are free (pairs 0-5, the compare) and
    // when they are not (pairs 6 and 7, the count).
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(16, 16));
    for n in 0..8u32 {
        let (k, r) = (key(n, proto::UDP), rkey(n, proto::UDP));
        let f = ct.insert(0, (&k, n), Some((&r, n + 100)), UDP_NEW).unwrap();
        let reply = ct.reply_slot(f).unwrap();
        assert_eq!((f, reply), (2 * n, 2 * n + 1));
        assert_eq!(ct.lookup(&k, 0).unwrap().slot, f);
        assert_eq!(ct.lookup(&r, 0).unwrap().slot, reply);
        assert_eq!((*ct.value(f), *ct.value(reply)), (n, n + 100));
    }
    assert_eq!((ct.len(), ct.keys()), (8, 16));
}

#[test]
fn pair_insert_needs_room_for_both_keys() {
    let mut ct = Conntrack::new(cfg(16, 16));
    for n in 0..15 {
        udp_confirmed(&mut ct, n, 0);
    }
    let (k, r) = (key(99, proto::UDP), rkey(99, proto::UDP));
    assert_eq!(
        ct.insert(0, (&k, 0), Some((&r, 0)), UDP_NEW),
        Err(InsertError::Full)
    );
    assert!(ct.lookup(&k, 0).is_none());
    assert_eq!(ct.len(), 15);
    ct.insert(0, (&k, 0), None, UDP_NEW).unwrap();
    assert_eq!(ct.len(), 16);
}

#[test]
fn syn_evicts_the_oldest_embryonic_flow_in_its_window() {
    let mut ct = Conntrack::new(cfg(16, 2));
    let (a, b, c) = (key(1, proto::TCP), key(2, proto::TCP), key(3, proto::TCP));
    ct.insert(10, (&a, 1u8), None, SYN_SENT).unwrap();
    let fb = ct.insert(0, (&b, 2u8), None, SYN_SENT).unwrap();
    let _ = fb;
    // At the budget: the least recently active embryonic flow (b) makes room.
    ct.insert(20, (&c, 3u8), None, SYN_SENT).unwrap();
    assert!(ct.lookup(&a, 20).is_some());
    assert!(ct.lookup(&b, 20).is_none());
    assert_eq!(*ct.value(ct.lookup(&c, 20).unwrap().slot), 3);
    assert_eq!((ct.len(), ct.embryonic()), (2, 2));

    // A full bucket of live flows: a SYN replaces the oldest embryonic one, never an established one.
    let mut ct = Conntrack::new(cfg(16, 16));
    for n in 0..16 {
        let f = ct
            .insert(n.into(), (&key(n, proto::TCP), n), None, SYN_SENT)
            .unwrap();
        if n != 7 && n != 9 {
            ct.observe(f, Dir::Original, ACK, n.into());
        }
    }
    assert_eq!(ct.embryonic(), 2);
    ct.insert(100, (&key(50, proto::TCP), 50), None, SYN_SENT)
        .unwrap();
    assert!(ct.lookup(&key(7, proto::TCP), 100).is_none());
    ct.insert(100, (&key(51, proto::TCP), 51), None, SYN_SENT)
        .unwrap();
    assert!(ct.lookup(&key(9, proto::TCP), 100).is_none());
    // Now the window holds the two new embryonic flows and 14 established ones: UDP cannot evict.
    assert_eq!(
        ct.insert(100, (&key(52, proto::UDP), 0), None, UDP_NEW),
        Err(InsertError::Full)
    );
    for n in (0..16).filter(|n| *n != 7 && *n != 9) {
        let h = ct.lookup(&key(n, proto::TCP), 100).unwrap();
        assert_eq!(*ct.value(h.slot), n);
    }
}

#[test]
fn embryonic_budget_fails_when_no_embryonic_flow_shares_the_window() {
    let mut ct = Conntrack::new(cfg(1 << 16, 2));
    let a = key(1, proto::TCP);
    let b = key(2, proto::TCP);
    ct.insert(0, (&a, 0u8), None, SYN_SENT).unwrap();
    ct.insert(0, (&b, 0u8), None, SYN_SENT).unwrap();
    let shares = |ct: &Conntrack<u8>, k: &FlowKey| {
        let p = ct.probe(k, ct.table_hash(k));
        [a, b].iter().any(|x| {
            let s = ct.lookup(x, 0).unwrap().slot as usize;
            p.buckets
                .iter()
                .any(|&bk| (bk as usize..bk as usize + BUCKET).contains(&s))
        })
    };
    let c = (3..)
        .map(|n| key(n, proto::TCP))
        .find(|k| !shares(&ct, k))
        .unwrap();
    assert_eq!(
        ct.insert(1, (&c, 0), None, SYN_SENT),
        Err(InsertError::EmbryonicBudget)
    );
    assert_eq!((ct.len(), ct.embryonic()), (2, 2));
    // UDP has a budget of its own; an established flow leaves TCP's and makes room.
    ct.insert(1, (&key(3, proto::UDP), 0), None, UDP_NEW)
        .unwrap();
    let fa = ct.lookup(&a, 1).unwrap().flow;
    ct.observe(fa, Dir::Original, ACK, 1);
    ct.insert(1, (&c, 0), None, SYN_SENT).unwrap();
    assert_eq!((ct.len(), ct.embryonic()), (4, 2));
}

/// A flood key: random client `x` (outside 10/8, so never equal to a test's real key) to the
/// VIP's UDP port, and its nat reply key.
fn flood_key(x: u32, i: usize) -> (FlowKey, FlowKey) {
    let k = FlowKey {
        src: Addr::v4(x.to_be_bytes()).max(Addr::v4([11, 0, 0, 0])),
        sport: i as u16,
        ..key(0, proto::UDP)
    };
    let r = FlowKey {
        dst: Addr::v4([172, 16, 0, 1]),
        ..k.reversed()
    };
    (k, r)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Issue 10 defect 7: a random-source UDP flood (nat: two keys a flow; its backend answers
    /// every datagram) fills the table only up to the UDP budget, evicts neither confirmed flows
    /// nor half-open TCP flows, and leaves TCP's whole budget to new connections.
    #[test]
    fn udp_flood_evicts_no_confirmed_flow_and_leaves_the_tcp_budget_alone(
        fill in 0.0f64..0.3,
        flood in proptest::collection::vec((any::<u32>(), any::<bool>(), 0u64..2), 3000..6000),
        seed in any::<u64>(),
    ) {
        let (cap, budget) = (4096, 256);
        let mut ct: Conntrack<u32> = Conntrack::with_seed(cfg(cap, budget), seed);
        // Confirmed flows (TCP and UDP, half of them nat pairs) up to `fill`, then 64 TCP flows
        // mid-handshake (the backend's SYN+ACK seen).
        let mut confirmed = Vec::new();
        let mut n = 0u32;
        while ct.keys() < (cap as f64 * fill) as usize {
            n += 1;
            let p = if n % 3 == 0 { proto::UDP } else { proto::TCP };
            let paired = n % 2 == 0;
            let (k, r) = (key(n, p), rkey(n, p));
            let initial = if p == proto::TCP { SYN_SENT } else { UDP_NEW };
            let f = ct.insert(0, (&k, n), paired.then_some((&r, !n)), initial);
            let f = f.map_err(|e| TestCaseError::fail(format!("flow {n}: {e}")))?;
            if paired {
                ct.observe(f, Dir::Reply, SYN | ACK, 0);
            }
            ct.observe(f, Dir::Original, if p == proto::TCP { ACK } else { 0 }, 0);
            confirmed.push((n, p, paired));
        }
        prop_assert_eq!((ct.embryonic(), ct.udp_unconfirmed()), (0, 0));
        let mut half_open = Vec::new();
        for m in 0..64 {
            let n = 100_000 + m;
            let f = ct.insert(0, (&key(n, proto::TCP), n), Some((&rkey(n, proto::TCP), n)), SYN_SENT);
            let f = f.map_err(|e| TestCaseError::fail(format!("half-open {n}: {e}")))?;
            ct.observe(f, Dir::Reply, SYN | ACK, 0);
            half_open.push(n);
        }
        let mut now = 0;
        let mut udp_budget_drops = 0;
        for (i, (x, answered, dt)) in flood.into_iter().enumerate() {
            now += dt;
            let (k, r) = flood_key(x, i);
            match ct.insert(now, (&k, 0), Some((&r, 0)), UDP_NEW) {
                Ok(f) if answered => {
                    ct.observe(f, Dir::Reply, 0, now);
                }
                Ok(_) | Err(InsertError::Full) => {}
                Err(InsertError::UdpBudget) => udp_budget_drops += 1,
                Err(e) => return Err(TestCaseError::fail(format!("flood insert: {e}"))),
            }
            prop_assert!(ct.udp_unconfirmed() <= budget);
            if i % 64 == 0 {
                ct.expire(now, 256);
            }
        }
        // The flood may lose datagrams to its own budget, never to TCP's.
        let _ = udp_budget_drops;
        prop_assert!(now < T.tcp_syn);
        prop_assert!(ct.udp_unconfirmed() <= budget);
        prop_assert_eq!(ct.embryonic(), half_open.len());
        for (n, p, paired) in confirmed {
            let h = ct.lookup(&key(n, p), now).ok_or_else(|| TestCaseError::fail(format!("confirmed {n} evicted")))?;
            prop_assert_eq!(*ct.value(h.slot), n);
            if paired {
                prop_assert!(ct.lookup(&rkey(n, p), now).is_some());
            }
        }
        for n in half_open {
            let h = ct.lookup(&key(n, proto::TCP), now).ok_or_else(|| TestCaseError::fail(format!("half-open {n} evicted")))?;
            prop_assert_eq!(ct.state(h.flow), FlowState::Tcp(TcpState::SynReceived));
        }
        // New connections get TCP's budget (less the half-open ones) in full.
        for m in 0..(budget - 64) as u32 {
            let n = 200_000 + m;
            let r = ct.insert(now, (&key(n, proto::TCP), n), None, SYN_SENT);
            prop_assert!(r.is_ok(), "SYN {} after the flood: {:?}", m, r);
        }
    }
}

/// Oldest-first eviction is the per-service fairness: while a flood holds the UDP budget, a new
/// flow of another service evicts a flood flow in its own buckets and lives long enough (the
/// flood has to cycle through the budget to reach it) to get its answer and be confirmed.
#[test]
fn udp_flood_on_one_service_does_not_starve_new_flows_of_another() {
    // The default ratio: the budget is a quarter of the capacity, so a nat flood holds half the keys.
    let (cap, budget) = (4096, 1024);
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(cap, budget));
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng as u32
    };
    let mut now = 0;
    let mut flood = 0;
    let mut served = 0;
    for round in 0..100u32 {
        // The flood: many times the budget in new flows between two clients' flows.
        for _ in 0..(budget * 2) {
            flood += 1;
            now += 1;
            let (k, r) = flood_key(next(), flood);
            let _ = ct.insert(now, (&k, 0), Some((&r, 0)), UDP_NEW);
        }
        assert_eq!(
            ct.udp_unconfirmed(),
            budget,
            "round {round}: the flood holds the budget"
        );
        // A DNS client of another service (port 5353): query, then the flood goes on for a
        // tenth of the budget before the answer and the client's next query (time moves a
        // millisecond per flood flow, so the client's flow is never the oldest in its buckets).
        let k = FlowKey {
            dport: 5353,
            ..key(round, proto::UDP)
        };
        let r = FlowKey {
            sport: 5353,
            ..rkey(round, proto::UDP)
        };
        let f = ct.insert(now, (&k, round), Some((&r, round)), UDP_NEW);
        assert!(f.is_ok(), "round {round}: {f:?}");
        for _ in 0..budget / 10 {
            flood += 1;
            now += 1;
            let (fk, fr) = flood_key(next(), flood);
            let _ = ct.insert(now, (&fk, 0), Some((&fr, 0)), UDP_NEW);
        }
        if let Some(h) = ct.lookup(&r, now) {
            ct.observe(h.flow, Dir::Reply, 0, now);
            ct.observe(h.flow, Dir::Original, 0, now);
            served += 1;
        }
    }
    assert_eq!(served, 100, "every client of the other service was served");
}

/// Occupancy counts keys: a table filled with nat flows (two keys each) is full at
/// `keys() == capacity()`, not at half of it.
#[test]
fn keys_count_both_keys_of_a_nat_flow_so_a_full_table_reads_full() {
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(16, 16));
    for n in 0..8 {
        let f = ct
            .insert(
                0,
                (&key(n, proto::UDP), n),
                Some((&rkey(n, proto::UDP), n)),
                UDP_NEW,
            )
            .unwrap();
        ct.observe(f, Dir::Reply, 0, 0);
        ct.observe(f, Dir::Original, 0, 0);
    }
    assert_eq!((ct.len(), ct.keys(), ct.capacity()), (8, 16, 16));
    assert_eq!(
        ct.insert(0, (&key(99, proto::UDP), 0), None, UDP_NEW),
        Err(InsertError::Full)
    );
    ct.remove(ct.lookup(&rkey(3, proto::UDP), 0).unwrap().slot);
    assert_eq!((ct.len(), ct.keys()), (7, 14));
    let f = ct.lookup(&key(4, proto::UDP), 0).unwrap().flow;
    ct.observe(f, Dir::Original, 0, 0);
    assert_eq!(ct.expire(T.udp, 16), 7);
    assert_eq!((ct.len(), ct.keys()), (0, 0));
    assert_eq!(slots_for(1000), 1024);
    assert_eq!(slots_for(0), BUCKET);
}

#[test]
fn mid_stream_pickup_is_embryonic_until_its_next_packet() {
    let mut ct = Conntrack::new(cfg(1024, 1));
    let k = key(1, proto::TCP);
    let f = ct.insert(0, (&k, 0u8), None, ESTABLISHED).unwrap();
    assert_eq!(ct.state(f), ESTABLISHED);
    assert_eq!(ct.embryonic(), 1);
    // Unconfirmed, it lives only as long as a SYN would.
    assert_eq!(ct.deadline(f), Some(T.tcp_syn));
    assert_eq!(
        ct.insert(0, (&key(2, proto::TCP), 0), None, ESTABLISHED),
        Err(InsertError::EmbryonicBudget)
    );
    assert_eq!(ct.observe(f, Dir::Original, ACK, 10), ESTABLISHED);
    assert_eq!(ct.embryonic(), 0);
    assert_eq!(ct.deadline(f), Some(10 + T.tcp_established));
}

#[test]
fn unused_slots_are_harmless_to_state_observe_and_remove() {
    let mut ct: Conntrack<u8> = Conntrack::new(cfg(16, 1));
    assert_eq!(ct.state(3), FlowState::Tcp(TcpState::Closed));
    assert_eq!(
        ct.observe(3, Dir::Reply, SYN, 0),
        FlowState::Tcp(TcpState::Closed)
    );
    assert_eq!(
        ct.observe(u32::MAX, Dir::Reply, SYN, 0),
        FlowState::Tcp(TcpState::Closed)
    );
    ct.remove(3);
    ct.remove(u32::MAX);
    assert_eq!(ct.expire(0, usize::MAX), 0);
    assert_eq!((ct.len(), ct.embryonic(), ct.key(3)), (0, 0, None));
}

/// Counters agree with what the table holds, and every unexpired stored key is found.
fn check_consistent(ct: &Conntrack<u32>, now: Millis) -> Result<(), TestCaseError> {
    let flows: Vec<_> = ct.iter_flows().collect();
    prop_assert_eq!(ct.len(), flows.len());
    let count = |class| {
        flows
            .iter()
            .filter(|(f, _, _)| ct.unconfirmed_class(*f) == Some(class))
            .count()
    };
    let (emb, udp) = (count(Class::Tcp), count(Class::Udp));
    prop_assert_eq!(ct.embryonic(), emb);
    prop_assert_eq!(ct.udp_unconfirmed(), udp);
    prop_assert!(emb <= ct.config().embryonic_budget);
    prop_assert!(udp <= ct.config().embryonic_budget);
    let keys = flows.len()
        + flows
            .iter()
            .filter(|(f, _, _)| ct.reply_slot(*f).is_some())
            .count();
    prop_assert_eq!(ct.keys(), keys);
    prop_assert_eq!(
        ct.keys(),
        ct.tags.iter().filter(|&&t| t != TAG_FREE).count()
    );
    for (f, k, _) in flows {
        // Eviction reads an unconfirmed flow's deadline from whichever key's tag it meets.
        if let (Some(r), Some(_)) = (ct.reply_slot(f), ct.unconfirmed_class(f)) {
            prop_assert_eq!(ct.slots[r as usize].deadline, ct.slots[f as usize].deadline);
        }
        let live = now < ct.deadline(f).unwrap();
        prop_assert_eq!(ct.lookup(&k, now).map(|h| h.flow), live.then_some(f));
        if let Some(r) = ct.reply_slot(f) {
            let h = ct.lookup(&ct.key(r).unwrap(), now);
            prop_assert_eq!(
                h.map(|h| (h.flow, h.slot, h.dir)),
                live.then_some((f, r, Dir::Reply))
            );
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Op {
    Insert {
        n: u32,
        paired: bool,
        tcp: bool,
        initial: u8,
    },
    Observe {
        pick: usize,
        reply: bool,
        flags: u8,
    },
    Remove {
        pick: usize,
    },
    Expire {
        budget: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..80, any::<bool>(), any::<bool>(), 0u8..3)
            .prop_map(|(n, paired, tcp, initial)| Op::Insert { n, paired, tcp, initial }),
        4 => (any::<usize>(), any::<bool>(), any::<u8>())
            .prop_map(|(pick, reply, flags)| Op::Observe { pick, reply, flags }),
        1 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
        1 => (0usize..40).prop_map(|budget| Op::Expire { budget }),
        2 => (0u64..8_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

proptest! {
    #[test]
    fn any_operation_sequence_keeps_counters_and_lookups_consistent(
        ops in proptest::collection::vec(op(), 1..300),
        cap in prop_oneof![Just(16usize), Just(32), Just(64)],
        budget in 0usize..12,
    ) {
        let mut ct: Conntrack<u32> = Conntrack::new(cfg(cap, budget));
        let mut now = 0;
        for op in ops {
            match op {
                Op::Insert { n, paired, tcp, initial } => {
                    let p = if tcp { proto::TCP } else { proto::UDP };
                    let st = match (tcp, initial) {
                        (false, _) => UDP_NEW,
                        (true, 0) => SYN_SENT,
                        (true, 1) => ESTABLISHED,
                        (true, _) => FlowState::Tcp(TcpState::FinWait),
                    };
                    let (k, r) = (key(n, p), rkey(n % 20, p));
                    let before = (ct.len(), ct.lookup(&k, now), ct.lookup(&r, now));
                    let res = ct.insert(now, (&k, n), paired.then_some((&r, n + 1000)), st);
                    match res {
                        Ok(f) => {
                            prop_assert_eq!(ct.lookup(&k, now).map(|h| h.flow), Some(f));
                            prop_assert_eq!(ct.state(f), st);
                            prop_assert_eq!(*ct.value(f), n);
                        }
                        Err(InsertError::Exists) => {
                            prop_assert!(before.1.is_some() || (paired && before.2.is_some()));
                            prop_assert_eq!(ct.len(), before.0);
                        }
                        Err(_) => prop_assert_eq!(ct.len(), before.0),
                    }
                }
                Op::Observe { pick, reply, flags } => {
                    let flows: Vec<u32> = ct.iter_flows().map(|(f, _, _)| f).collect();
                    if !flows.is_empty() {
                        let f = flows[pick % flows.len()];
                        let dir = if reply { Dir::Reply } else { Dir::Original };
                        let s = ct.observe(f, dir, flags, now);
                        prop_assert_eq!(ct.state(f), s);
                    }
                }
                Op::Remove { pick } => {
                    let flows: Vec<u32> = ct.iter_flows().map(|(f, _, _)| f).collect();
                    if !flows.is_empty() {
                        let f = flows[pick % flows.len()];
                        let k = ct.key(f).unwrap();
                        ct.remove(f);
                        prop_assert!(ct.lookup(&k, now).is_none());
                    }
                }
                Op::Expire { budget } => {
                    let before = ct.len();
                    let r = ct.expire(now, budget);
                    prop_assert!(r <= budget);
                    prop_assert_eq!(ct.len(), before - r);
                }
                Op::Advance { ms } => now += ms,
            }
            check_consistent(&ct, now)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn syn_flood_never_evicts_an_established_flow(
        fill in 0.0f64..0.7,
        flood in proptest::collection::vec((any::<u32>(), any::<bool>(), 0u64..50), 1000..4000),
        seed in any::<u64>(),
    ) {
        let cap = 4096;
        let mut ct: Conntrack<u32> = Conntrack::with_seed(cfg(cap, 256), seed);
        // Establish flows until `fill` of the slots hold keys; every other one is a nat pair.
        let mut est = Vec::new();
        let mut n = 0u32;
        let mut keys = 0;
        while keys < (cap as f64 * fill) as usize {
            n += 1;
            let paired = n % 2 == 0;
            let (k, r) = (key(n, proto::TCP), rkey(n, proto::TCP));
            let f = ct.insert(0, (&k, n), paired.then_some((&r, !n)), SYN_SENT);
            let f = f.map_err(|e| TestCaseError::fail(format!("establishing at {keys} keys: {e}")))?;
            if paired {
                ct.observe(f, Dir::Reply, SYN | ACK, 0);
            }
            prop_assert_eq!(ct.observe(f, Dir::Original, ACK, 0), ESTABLISHED);
            est.push((n, paired));
            keys += 1 + usize::from(paired);
        }
        let mut now = 0;
        for (i, (x, paired, dt)) in flood.into_iter().enumerate() {
            now += dt;
            // Flood keys live outside 10/8 and the backend's address, so they never equal a real one.
            let k = FlowKey { src: Addr::v4(x.to_be_bytes()).max(Addr::v4([11, 0, 0, 0])), sport: i as u16, ..key(0, proto::TCP) };
            let r = FlowKey { dst: Addr::v4([172, 16, 0, 1]), ..k.reversed() };
            let _ = ct.insert(now, (&k, 0), paired.then_some((&r, 0)), SYN_SENT);
            if i % 64 == 0 {
                ct.expire(now, 256);
            }
            prop_assert!(ct.embryonic() <= 256);
        }
        prop_assert!(now < T.tcp_established);
        for (n, paired) in est {
            let h = ct.lookup(&key(n, proto::TCP), now).unwrap();
            prop_assert_eq!((*ct.value(h.slot), ct.state(h.flow)), (n, ESTABLISHED));
            if paired {
                let h = ct.lookup(&rkey(n, proto::TCP), now).unwrap();
                prop_assert_eq!(*ct.value(h.slot), !n);
            }
        }
    }
}

proptest! {
    /// The group matches find exactly the tags a plain per-tag compare finds, whatever the
    /// unconfirmed bits and fingerprints around them (a missed tag would be a lost flow).
    #[test]
    fn group_match_equals_per_tag_compare(
        tags in proptest::array::uniform16(prop_oneof![
            Just(TAG_FREE),
            Just(TAG_MIN),
            Just(TAG_MIN | TAG_UNCONFIRMED),
            Just(TAG_FP),
            Just(TAG_FP | TAG_UNCONFIRMED),
            any::<u16>(),
        ]),
        fp in prop_oneof![Just(TAG_MIN), Just(TAG_FP), TAG_MIN..=TAG_FP],
    ) {
        let fp_want = (0..BUCKET).filter(|&i| tags[i] & TAG_FP == fp).fold(0, |m, i| m | 1 << i);
        prop_assert_eq!(match_fp(&tags, fp), fp_want);
        // The free match over tags a table can hold: a fingerprint below TAG_MIN only when free.
        let held = tags.map(|t| if t & TAG_FP < TAG_MIN { TAG_FREE } else { t });
        let free_want = (0..BUCKET).filter(|&i| held[i] == TAG_FREE).fold(0, |m, i| m | 1 << i);
        prop_assert_eq!(match_free(&held, 0), free_want);
        // The whole-tag compare (unconfirmed bit included), against a tag the bucket holds.
        let t = tags[usize::from(fp) % BUCKET];
        let eq_want = (0..BUCKET).filter(|&i| tags[i] == t).fold(0, |m, i| m | 1 << i);
        prop_assert_eq!(group::group_eq_tag(&tags, t), eq_want);
    }
}

proptest! {
    /// The paired popcount that picks the emptier bucket counts as `count_ones` does.
    #[test]
    fn popcount_pair_counts_each_bucket_mask(a in 0u32..1 << 16, b in 0u32..1 << 16) {
        prop_assert_eq!(popcount_pair(a, b), (a.count_ones(), b.count_ones()));
    }
}

/// The one compare `free_slot_in` tries before counting a first bucket's free slots: every
/// bucket mask it accepts has room to spare (so the choice is the count's), and it accepts
/// exactly the masks whose last `FIRST_BUCKET_ROOM` slots are free.
#[test]
fn last_slots_free_means_room_in_the_first_bucket() {
    for m in 0u32..1 << BUCKET {
        let last_free = (BUCKET as u32 - FIRST_BUCKET_ROOM..BUCKET as u32).all(|i| m & 1 << i != 0);
        assert_eq!(m >= LAST_SLOTS, last_free, "mask {m:#x}");
        if m >= LAST_SLOTS {
            assert!(ones(m) >= FIRST_BUCKET_ROOM, "mask {m:#x}");
        }
    }
}

/// The fast path's key of `k` (an IPv4 key), as `wire::V4Flow` loads its words.
fn v4key(k: &FlowKey) -> V4Key {
    let w = |a: &Addr| u32::from_ne_bytes(a.v4_octets());
    let (s, d) = (k.sport.to_be_bytes(), k.dport.to_be_bytes());
    V4Key::new(
        w(&k.src),
        w(&k.dst),
        u32::from_ne_bytes([s[0], s[1], d[0], d[1]]),
        k.proto,
    )
}

#[test]
fn steady_lookup_trusts_a_hint_only_while_its_slot_holds_the_key() {
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(64, 64));
    let k = key(1, proto::UDP);
    let h = k.table_hash(DEFAULT_SEED);
    let f = udp_confirmed(&mut ct, 1, 0);
    // Replied, so the flow is steady for the fast path.
    ct.observe(f, Dir::Reply, 0, 0);
    let hint = ct.prefetch_slot(h);
    assert_eq!(hint, f, "the hint is the key's slot");
    let v = ct.lookup_steady(v4key(&k), h, hint, 1, 0).unwrap();
    assert_eq!(*v, 1);
    // A wrong hint (another live slot) falls back to the search.
    let other = udp_confirmed(&mut ct, 2, 0);
    ct.observe(other, Dir::Reply, 0, 0);
    let v = ct.lookup_steady(v4key(&k), h, other, 1, 0).unwrap();
    assert_eq!(*v, 1);
    // Removed: the slot still holds the bytes, but its tag is free, so the hint is not trusted.
    ct.remove(f);
    assert_eq!(
        ct.lookup_steady(v4key(&k), h, hint, 1, 0),
        Err(Miss::Absent)
    );
    assert_eq!(
        ct.lookup_steady(v4key(&k), h, NO_HINT, 1, 0),
        Err(Miss::Absent)
    );
}

/// The steady lookup's miss tells a key no slot holds (`Absent`, which lets a new flow's insert
/// skip its search) from one whose flow expired (`Untracked`: the insert must find and reuse
/// that slot, or the key would be stored twice).
#[test]
fn steady_lookup_tells_an_absent_key_from_an_expired_one() {
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(64, 64));
    let k = key(1, proto::UDP);
    let h = k.table_hash(DEFAULT_SEED);
    assert_eq!(
        ct.lookup_steady(v4key(&k), h, NO_HINT, 0, 0),
        Err(Miss::Absent)
    );
    let f = udp_confirmed(&mut ct, 1, 0);
    let expired = T.udp + 1;
    assert_eq!(
        ct.lookup_steady(v4key(&k), h, NO_HINT, expired, 0),
        Err(Miss::Untracked)
    );
    // Untracked: the probe searches and finds the expired flow, which the insert removes.
    let p = ct.probe_v4_after(v4key(&k), h, false);
    assert!(!ct.probe_live(&p, expired));
    let g = ct
        .insert_probed(expired, (&k, &p, &2), None, UDP_NEW)
        .unwrap();
    assert_eq!(
        (ct.len(), *ct.value(g)),
        (1, 2),
        "the expired flow replaced"
    );
    assert!(g == f || ct.key(f).is_none(), "the key is stored once");
    ct.remove(g);
    assert_eq!(
        ct.lookup_steady(v4key(&k), h, NO_HINT, expired, 0),
        Err(Miss::Absent)
    );
    // Absent: no search, and the insert still finds a free slot.
    let p = ct.probe_v4_after(v4key(&k), h, true);
    let g = ct
        .insert_probed(expired, (&k, &p, &3), None, UDP_NEW)
        .unwrap();
    assert_eq!((ct.len(), *ct.value(g)), (1, 3));
}

/// `lookup_probe_v4` is `lookup_miss` and `probe_v4` from one search: for keys absent, live
/// (original and reply keys, some in their second bucket) and expired, the same miss and the
/// same probe, and an absent key's probe inserts as `probe_v4`'s does.
#[test]
fn lookup_probe_is_the_lookup_and_the_probe() {
    // A small table, full enough that some keys live in their second bucket.
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(256, 256));
    for n in 0..100 {
        let _ = ct.insert(
            n as u64,
            (&key(n, proto::UDP), n),
            Some((&rkey(n, proto::UDP), n)),
            UDP_NEW,
        );
    }
    assert!(ct.overflow.iter().any(|&c| c != 0), "some key overflowed");
    for now in [0, 50, T.udp_unconfirmed + 50, T.udp_unconfirmed + 200] {
        for n in 0..200 {
            for k in [key(n, proto::UDP), rkey(n, proto::UDP)] {
                let h = ct.table_hash(&k);
                let (miss, p) = ct.lookup_probe_v4(v4key(&k), h, now);
                assert_eq!(miss, ct.lookup_miss(&k, h, now), "key {k:?} at {now}");
                assert_eq!(p, ct.probe_v4(v4key(&k), h));
                assert!(p.is_of_v4(v4key(&k)) && !Probe::NONE.is_of_v4(v4key(&k)));
            }
        }
    }
    let k = key(1_000, proto::UDP);
    let h = ct.table_hash(&k);
    let (miss, p) = ct.lookup_probe_v4(v4key(&k), h, 0);
    assert_eq!(miss, Miss::Absent);
    let f = ct.insert_probed_v4(0, (&p, &7), None, UDP_NEW).unwrap();
    assert_eq!(ct.lookup(&k, 0).map(|hit| hit.flow), Some(f));
}

#[test]
fn a_removed_flows_reply_key_is_not_found_through_a_stale_hint() {
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(64, 64));
    let (k, r) = (key(1, proto::UDP), rkey(1, proto::UDP));
    let hr = r.table_hash(DEFAULT_SEED);
    let f = ct.insert(0, (&k, 1), Some((&r, 2)), UDP_NEW).unwrap();
    // The backend's reply, then the client's next datagram: replied and confirmed.
    ct.observe(f, Dir::Reply, 0, 0);
    ct.observe(f, Dir::Original, 0, 0);
    let hint = ct.prefetch_slot(hr);
    let v = ct.lookup_steady(v4key(&r), hr, hint, 1, 0).unwrap();
    assert_eq!(*v, 2);
    ct.remove(f);
    assert_eq!(
        ct.lookup_steady(v4key(&r), hr, hint, 1, 0),
        Err(Miss::Absent)
    );
    // A new flow with the same reply key, stored elsewhere or in the same slot, is the one found.
    let g = ct
        .insert(1, (&key(2, proto::UDP), 3), Some((&r, 4)), UDP_NEW)
        .unwrap();
    let hit = ct
        .lookup_steady(v4key(&r), hr, hint, 1, 0)
        .unwrap_err()
        .hit()
        .unwrap();
    assert_eq!((hit.flow, *ct.value(hit.slot)), (g, 4));
}

#[test]
fn ipv4_and_ipv6_keys_with_equal_protocols_never_match_each_other() {
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(16, 16));
    let v6 = |n: u32| {
        let mut o = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        o[12..].copy_from_slice(&n.to_be_bytes());
        Addr::v6(o)
    };
    let a = FlowKey {
        src: v6(1),
        dst: v6(2),
        sport: 1,
        dport: 2,
        proto: proto::TCP,
    };
    ct.insert(0, (&a, 1), None, SYN_SENT).unwrap();
    ct.insert(0, (&key(1, proto::TCP), 2), None, SYN_SENT)
        .unwrap();
    // One bucket, and IPv6 key words carry only the protocol: among this many other keys some
    // share `a`'s fingerprint too (15 bits), and only the full key tells them apart.
    let mut same_fp = 0;
    let fp = |k: &FlowKey| ct.place_hashed(k.table_hash(DEFAULT_SEED)).2;
    for n in 3..(1 << 17) {
        let b = FlowKey { src: v6(n), ..a };
        same_fp += usize::from(fp(&b) == fp(&a));
        assert_eq!(ct.lookup(&b, 0), None, "{b:?}");
    }
    assert!(same_fp > 0, "no other key shared the fingerprint");
    let hit = ct.lookup(&a, 0).unwrap();
    assert_eq!(*ct.value(hit.slot), 1);
    let hit = ct.lookup(&key(1, proto::TCP), 0).unwrap();
    assert_eq!(*ct.value(hit.slot), 2);
}

/// An IPv4 key is not stored whole (its word holds it): `key` and `iter_flows` rebuild it, and
/// a slot that held an IPv6 key and then an IPv4 one reads as the IPv4 key, its stale key
/// compared by no lookup.
#[test]
fn keys_read_back_whole_from_words_and_across_a_slot_reused_by_another_family() {
    // One bucket: the IPv4 flow takes the slot the IPv6 flow left.
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(16, 16));
    let mut o = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    let v6 = FlowKey {
        src: Addr::v6(o),
        dst: Addr::v6({
            o[15] = 10;
            o
        }),
        sport: 40000,
        dport: 443,
        proto: proto::TCP,
    };
    let f6 = ct.insert(0, (&v6, 1), None, SYN_SENT).unwrap();
    assert_eq!(ct.key(f6), Some(v6));
    ct.remove(f6);
    let (k, r) = (key(0x0102_0304, proto::UDP), rkey(0x0102_0304, proto::UDP));
    let f = ct.insert(0, (&k, 2), Some((&r, 3)), UDP_NEW).unwrap();
    let rs = ct.reply_slot(f).unwrap();
    assert!(f == f6 || rs == f6, "a key took the freed slot");
    assert_eq!((ct.key(f), ct.key(rs)), (Some(k), Some(r)));
    assert_eq!(ct.iter_flows().collect::<Vec<_>>(), vec![(f, k, UDP_NEW)]);
    assert_eq!(ct.lookup(&v6, 0), None);
    assert_eq!(ct.lookup(&r, 0).map(|h| h.slot), Some(rs));
    // Ports and protocol are read back in their places.
    assert_eq!((k.sport, k.dport, r.sport, r.dport), (1025, 53, 53, 1025));
}

#[test]
fn a_slot_is_a_32_byte_header_then_the_value_on_64_byte_boundaries() {
    assert_eq!(std::mem::align_of::<Slot<u64>>(), 64);
    assert_eq!(std::mem::offset_of!(Slot<u64>, value), 32);
    assert_eq!(std::mem::size_of::<Slot<u64>>() % 64, 0);
}

/// Keys go to their first bucket while it has room (where the fast path's hint looks), and the
/// table still fills far before a key finds both its buckets full.
#[test]
fn inserts_prefer_the_first_bucket_and_still_fill_the_table() {
    let cap = 1usize << 16;
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(cap, usize::MAX));
    let in_second = |ct: &Conntrack<u32>| {
        ct.iter_flows()
            .filter(|&(slot, k, _)| ct.bucket1(ct.table_hash(&k)) != slot as usize & !(BUCKET - 1))
            .count()
    };
    let mut n = 0usize;
    loop {
        let k = key((n as u32).wrapping_mul(2_654_435_761), proto::UDP);
        if ct
            .free_slot(&ct.probe(&k, ct.table_hash(&k)), None)
            .is_none()
        {
            break;
        }
        ct.insert(0, (&k, n as u32), None, UDP_NEW).unwrap();
        n += 1;
        if n == cap / 2 {
            // Emptier-bucket inserts alone put about 32 % there at this fill.
            let second = in_second(&ct);
            assert!(
                second * 20 < n,
                "{second} of {n} keys in their second bucket"
            );
        }
    }
    // Emptier-bucket inserts alone: 89 %; first bucket whenever free: 58 %.
    assert!(
        n * 100 >= cap * 80,
        "a key found both buckets full at {n} keys"
    );
}

/// A UDP flow without a reply key (dsr, dr) is confirmed by the client's second datagram and
/// never sees a reply: its packets are steady all the same (the fast path takes them), and
/// move its timer exactly as the general path's `observe` would.
#[test]
fn a_confirmed_udp_flow_without_a_reply_key_is_steady() {
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(64, 64));
    let k = key(1, proto::UDP);
    let h = k.table_hash(DEFAULT_SEED);
    let f = udp_confirmed(&mut ct, 1, 0);
    assert_eq!(ct.state(f), UDP_NEW, "never replied");
    let v = ct.lookup_steady(v4key(&k), h, NO_HINT, 100, 0);
    assert_eq!(v, Ok(&1));
    assert_eq!(ct.deadline(f), Some(100 + T.udp));
    assert!(ct.touch(f, 0, 200));
    assert_eq!(ct.deadline(f), Some(200 + T.udp));
    // The general path's observe leaves the same state and deadline.
    let mut general: Conntrack<u32> = Conntrack::new(cfg(64, 64));
    let g = udp_confirmed(&mut general, 1, 0);
    general.observe(g, Dir::Original, 0, 200);
    assert_eq!(
        (general.state(g), general.deadline(g)),
        (ct.state(f), ct.deadline(f))
    );
    // An unconfirmed one is not steady: its next datagram confirms it on the general path.
    let u = ct
        .insert(0, (&key(2, proto::UDP), 2), None, UDP_NEW)
        .unwrap();
    let k2 = key(2, proto::UDP);
    assert_eq!(
        ct.lookup_steady(v4key(&k2), k2.table_hash(DEFAULT_SEED), NO_HINT, 1, 0),
        Err(Miss::Tracked(Hit {
            slot: u,
            flow: u,
            dir: Dir::Original
        }))
    );
}

/// Each bucket counts the keys in use whose first bucket it is and that live in their second
/// (IPv4 and IPv6, original and reply keys), through inserts, evictions and removals, so a
/// search that misses a key's first bucket can stop there when the count is 0 and still finds
/// every key: in a small table filled past the point where keys overflow, every key is found
/// after every change, and the counts are 0 again once the table is empty.
#[test]
fn overflow_counts_the_keys_in_their_second_bucket() {
    let mut ct: Conntrack<u32> = Conntrack::new(cfg(256, 64));
    let v6 = |n: u32| {
        let mut o = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        o[12..].copy_from_slice(&n.to_be_bytes());
        let k = key(n, proto::TCP);
        FlowKey {
            src: Addr::v6(o),
            ..k
        }
    };
    let counted = |ct: &Conntrack<u32>| {
        let mut want = vec![0u32; ct.overflow.len()];
        for (slot, k, _) in ct.iter_flows() {
            let mut keys = vec![(slot, k)];
            keys.extend(ct.reply_slot(slot).map(|r| (r, ct.key(r).unwrap())));
            for (s, k) in keys {
                let b1 = ct.bucket1(ct.table_hash(&k));
                if b1 != s as usize & !(BUCKET - 1) {
                    want[b1 / BUCKET] += 1;
                }
            }
        }
        assert_eq!(&*ct.overflow, &want[..], "overflow counts");
        want.iter().sum::<u32>()
    };
    let mut live = Vec::new();
    let mut most = 0;
    for n in 1..2000u32 {
        let (k, r) = if n % 3 == 0 {
            let k = v6(n);
            (k, k.reversed())
        } else {
            (key(n, proto::TCP), rkey(n, proto::TCP))
        };
        let reply = (n % 2 == 0).then_some((&r, n));
        // Time moves: older unconfirmed flows expire or are evicted as the budget fills.
        let now = u64::from(n) * 50;
        if let Ok(f) = ct.insert(now, (&k, n), reply, SYN_SENT) {
            live.push((f, k));
        }
        most = most.max(counted(&ct));
        for &(f, k) in &live {
            if ct.key(f) == Some(k) {
                assert_eq!(ct.find(&k, ct.table_hash(&k)), Some(f), "key {k:?}");
            }
        }
        if n % 7 == 0 {
            if let Some((f, k)) = live.pop() {
                if ct.key(f) == Some(k) {
                    ct.remove(f);
                }
            }
        }
        ct.expire(now, 32);
        counted(&ct);
    }
    assert!(most > 0, "some keys went to their second bucket");
    let flows: Vec<u32> = ct.iter_flows().map(|(f, _, _)| f).collect();
    for f in flows {
        ct.remove(f);
    }
    assert_eq!(counted(&ct), 0);
    assert!(ct.overflow.iter().all(|&n| n == 0));
}

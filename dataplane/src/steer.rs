//! Which worker owns a frame's flow, so both directions of a flow meet on the worker whose
//! connection table holds it.
//!
//! A NIC (or a TAP/AF_PACKET fanout) spreads frames over queues by its own hash, which knows
//! nothing of fullnat's address rewrite: the request `C:c -> VIP:v` and the reply
//! `B:b -> S:s` may land on different queues. Every worker therefore asks [`owner`] about each
//! received frame and hands frames it does not own to their owner (see `worker`). The rule is one
//! function for every direction:
//!
//! - to a VIP (client -> VIP): hash of the client's (address, port);
//! - to a fullnat SNAT address (backend reply): the worker whose [`snat_slice`] holds the
//!   destination port, because that worker allocated the port;
//! - anything else with ports (nat replies `B:b -> C:c`): hash of the destination (address,
//!   port), which is the client again;
//! - ICMP errors: the rule above applied to the reverse of the quoted packet (the quote is a
//!   packet that left us; its reverse is what we would receive on that flow);
//! - ARP, echo, fragments, non-IP, unparsable: [`ANY`], the receiving worker keeps it (no state).
//!
//! The hash uses the table's `hash_seed`, which is constant across generations, so a table swap
//! does not move flows. Changing `snat_ports` or the number of workers does move fullnat replies
//! (their slices change): that is a restart, not a reload.
#![forbid(unsafe_code)]

use std::collections::HashSet;

use crate::flow::{proto, Addr, FlowKey};
use crate::pipeline::snat_slice;
use crate::table::{FastHash, RoutingTable};
use crate::wire::{self, Frag, ParseError, Parsed, L3};

/// Returned by [`owner`] for frames that carry no flow state: whichever worker received the frame
/// handles it.
pub const ANY: u16 = u16::MAX;

/// Per-table facts [`Steer::owner`] uses to avoid handing off traffic that cannot belong to a flow.
/// Built once per table generation (it allocates), never per packet.
#[derive(Debug, Clone, Default)]
pub struct Steer {
    generation: Option<u64>,
    /// Backend addresses of nat pools: only their packets to non-owned addresses can be nat replies.
    nat_backends: HashSet<Addr, FastHash>,
}

impl Steer {
    /// Steering facts for `table`.
    pub fn new(table: &RoutingTable) -> Steer {
        let mut s = Steer::default();
        s.refresh(table);
        s
    }

    /// Rebuilds the facts when `table` is a new generation; cheap otherwise.
    pub fn refresh(&mut self, table: &RoutingTable) {
        if self.generation == Some(table.generation) {
            return;
        }
        self.nat_backends.clear();
        self.nat_backends.extend(table.nat_backend_addrs());
        self.generation = Some(table.generation);
    }

    /// Like [`owner`], but frames to addresses we do not own are steered only when they come from a
    /// nat backend (the only ones that can be replies of a flow). Other transit traffic stays on the
    /// receiving worker, which gives it to the host without a detour. `self` must have been
    /// refreshed with `table`.
    #[inline]
    pub fn owner(&self, table: &RoutingTable, frame: &[u8], workers: u16) -> u16 {
        self.owner_parsed(table, frame, &wire::parse(frame), workers)
    }

    /// [`Steer::owner`] for a frame already parsed (`parsed` = `wire::parse(frame)`), so the
    /// worker parses each frame once for steering and processing.
    #[inline]
    pub fn owner_parsed(
        &self,
        table: &RoutingTable,
        frame: &[u8],
        parsed: &Result<Parsed, ParseError>,
        workers: u16,
    ) -> u16 {
        decide(table, frame, parsed, workers, Some(&self.nat_backends))
    }
}

/// The worker (`0..workers`) owning the flow of `frame`, or [`ANY`] when any worker may handle it.
/// Pure; the same rule for both directions of every flow.
pub fn owner(table: &RoutingTable, frame: &[u8], workers: u16) -> u16 {
    decide(table, frame, &wire::parse(frame), workers, None)
}

fn decide(
    table: &RoutingTable,
    frame: &[u8],
    parsed: &Result<Parsed, ParseError>,
    workers: u16,
    nat_backends: Option<&HashSet<Addr, FastHash>>,
) -> u16 {
    if workers <= 1 {
        return 0;
    }
    let Ok(p) = parsed else {
        return ANY;
    };
    if !matches!(p.l3, L3::Ipv4 | L3::Ipv6) || p.frag != Frag::None {
        return ANY;
    }
    match p.proto {
        proto::TCP | proto::UDP => by_tuple(table, &p.key(), workers, nat_backends),
        proto::ICMP | proto::ICMPV6 => match wire::parse_icmp_quote(frame, p) {
            Some(q) if q.ports_present && matches!(q.proto, proto::TCP | proto::UDP) => {
                let reverse = FlowKey {
                    src: q.dst,
                    dst: q.src,
                    sport: q.dport,
                    dport: q.sport,
                    proto: q.proto,
                };
                by_tuple(table, &reverse, workers, nat_backends)
            }
            _ => ANY,
        },
        _ => ANY,
    }
}

/// The owner of a packet with this tuple arriving at the balancer.
fn by_tuple(
    table: &RoutingTable,
    k: &FlowKey,
    workers: u16,
    nat_backends: Option<&HashSet<Addr, FastHash>>,
) -> u16 {
    if table.is_vip(k.dst) {
        return client_hash(table, k.src, k.sport, workers);
    }
    if table.is_snat(k.dst) {
        return slice_owner(table.local.snat_ports, k.dport, workers);
    }
    if nat_backends.is_some_and(|b| !b.contains(&k.src)) {
        return ANY;
    }
    client_hash(table, k.dst, k.dport, workers)
}

/// The worker of a client (address, port): the one hash both directions agree on.
#[inline]
fn client_hash(table: &RoutingTable, addr: Addr, port: u16, workers: u16) -> u16 {
    let k = FlowKey {
        src: addr,
        sport: port,
        ..FlowKey::default()
    };
    // Multiply-shift maps the hash onto 0..workers without a division.
    ((u64::from(k.hash(table.hash_seed) as u32) * u64::from(workers)) >> 32) as u16
}

/// The worker whose fullnat port slice holds `port`; [`ANY`] for ports outside every slice (no
/// fullnat flow uses them, so there is nothing to find).
fn slice_owner(range: (u16, u16), port: u16, workers: u16) -> u16 {
    let (lo, _) = snat_slice(range, 0, workers);
    let (_, hi0) = snat_slice(range, 0, workers);
    if lo == 0 || port < lo {
        return ANY;
    }
    let per = u32::from(hi0 - lo) + 1;
    let w = (u32::from(port) - u32::from(lo)) / per;
    if w >= u32::from(workers) {
        return ANY;
    }
    w as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack;
    use crate::packet::PacketBuf;
    use crate::pipeline::{process, Verdict, WorkerState};
    use crate::table::{Affinity, Backend, Local, Mode, Pool, ServiceSpec};

    const VIP: [u8; 4] = [198, 18, 0, 100];
    const SNAT: [u8; 4] = [198, 18, 0, 2];
    const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn pool(name: &str, mode: Mode, snat: &[Addr]) -> Pool {
        Pool {
            name: name.into(),
            mode,
            snat: if mode == Mode::FullNat {
                snat.to_vec()
            } else {
                vec![]
            },
            encap_src_v4: Some(Addr::v4([198, 18, 0, 1])),
            encap_src_v6: None,
            gue_port: 6080,
        }
    }

    fn be(addr: [u8; 4], port: u16) -> Backend {
        Backend {
            addr: Addr::v4(addr),
            port,
            weight: 1,
            mac: [2, 0, 0, 0, 1, addr[3]],
            pool: 0,
            stat: 0,
        }
    }

    /// Three services on one VIP: tcp/80 fullnat, udp/7 nat, tcp/443 dsr-ipip.
    fn table() -> RoutingTable {
        table_with(&[Addr::v4(SNAT)], (1024, 65535), 2)
    }

    /// The same with these fullnat source addresses and ports, and the first `backends` (1 or 2)
    /// backends.
    fn table_with(snat: &[Addr], snat_ports: (u16, u16), backends: usize) -> RoutingTable {
        let svc = |name: &str, proto: u8, port: u16, mode: Mode| ServiceSpec {
            stat: None,
            name: name.into(),
            vip: Addr::v4(VIP),
            proto,
            port_lo: port,
            port_hi: port,
            affinity: Affinity::None,
            table_size: 251,
            pools: vec![pool(name, mode, snat)],
            backends: [be([198, 18, 1, 10], 8080), be([198, 18, 1, 11], 8080)][..backends].to_vec(),
        };
        RoutingTable::new(
            1,
            Local {
                mac: LB_MAC,
                addrs: vec![Addr::v4([198, 18, 0, 1])],
                mtu: 1500,
                snat_ports,
                more: Vec::new(),
            },
            vec![
                svc("full", proto::TCP, 80, Mode::FullNat),
                svc("nat", proto::UDP, 7, Mode::Nat),
                svc("dsr", proto::TCP, 443, Mode::DsrIpip),
            ],
        )
        .unwrap()
    }

    fn frame(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 9, 9], LB_MAC).ipv4(src, dst, 64);
        let mut out = Vec::new();
        if proto == crate::flow::proto::TCP {
            b.tcp(sport, dport, 1, 1000)
                .syn()
                .write(&mut out, b"hi")
                .unwrap();
        } else {
            b.udp(sport, dport).write(&mut out, b"hi").unwrap();
        }
        out
    }

    /// Runs `f` through `state`; returns the transmitted frame.
    fn run(st: &mut WorkerState, t: &RoutingTable, f: &[u8]) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 128 + f.len() + 64];
        buf[128..128 + f.len()].copy_from_slice(f);
        let mut pkt = PacketBuf::new(&mut buf, 128, f.len());
        match process(st, t, 0, &mut pkt) {
            Verdict::Tx => Some(pkt.data().to_vec()),
            _ => None,
        }
    }

    /// The reply a backend would send to a forwarded frame: swap addresses and ports.
    fn reply_to(fwd: &[u8]) -> Vec<u8> {
        let p = wire::parse(fwd).unwrap();
        let a = |x: Addr| x.v4_octets();
        frame(a(p.dst), a(p.src), p.proto, p.dport, p.sport)
    }

    /// An ICMPv4 "fragmentation needed" from `router` to `to`, quoting `quoted` (a frame).
    fn icmp_error(router: [u8; 4], to: [u8; 4], quoted: &[u8]) -> Vec<u8> {
        let ip = &quoted[14..];
        let q = &ip[..ip.len().min(28)];
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 9, 9], LB_MAC)
            .ipv4(router, to, 64)
            .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400,
                },
            ))
            .write(&mut out, q)
            .unwrap();
        out
    }

    fn ct_cfg() -> conntrack::Config {
        conntrack::Config {
            capacity: 4096,
            embryonic_budget: 1024,
            timeouts: conntrack::Timeouts::default(),
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// For random flows and 1..=8 workers, the owner of the request processes it, and its
    /// reply (and ICMP errors about either direction) steer back to that same worker.
    #[test]
    fn both_directions_of_every_mode_meet_on_one_worker() {
        let t = table();
        let steer = Steer::new(&t);
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for workers in 1..=8u16 {
            let mut states: Vec<WorkerState> = (0..workers)
                .map(|w| WorkerState::new(w, workers, ct_cfg()))
                .collect();
            let mut seen = vec![0u32; usize::from(workers)];
            for i in 0..300 {
                let r = rng.next();
                let client = [10, (r >> 8) as u8, (r >> 16) as u8, (r >> 24) as u8 | 1];
                let cport = 1024 + (r >> 32) as u16 % 60000;
                let (proto, vport) = match i % 3 {
                    0 => (proto::TCP, 80),
                    1 => (proto::UDP, 7),
                    _ => (proto::TCP, 443),
                };
                let req = frame(client, VIP, proto, cport, vport);
                let w = owner(&t, &req, workers);
                assert!(w < workers, "request owner {w} of {workers}");
                assert_eq!(steer.owner(&t, &req, workers), w);
                seen[usize::from(w)] += 1;
                let fwd = run(&mut states[usize::from(w)], &t, &req).expect("forwarded");
                // The client's side of the path reports an error about our packet to it.
                let err_client = icmp_error([10, 0, 0, 254], VIP, &reply_to(&req));
                assert_eq!(owner(&t, &err_client, workers), w, "client-side ICMP error");
                if vport == 443 {
                    continue; // dsr: the backend answers the client directly.
                }
                let reply = reply_to(&fwd);
                assert_eq!(
                    owner(&t, &reply, workers),
                    w,
                    "reply of {i} ({workers} workers)"
                );
                assert_eq!(steer.owner(&t, &reply, workers), w);
                let back = run(&mut states[usize::from(w)], &t, &reply).expect("reply forwarded");
                let bp = wire::parse(&back).unwrap();
                assert_eq!((bp.src, bp.sport), (Addr::v4(VIP), vport));
                assert_eq!((bp.dst, bp.dport), (Addr::v4(client), cport));
                // The backend's side reports an error about the forwarded packet.
                let fp = wire::parse(&fwd).unwrap();
                let err_backend = icmp_error([198, 18, 1, 254], fp.src.v4_octets(), &fwd);
                assert_eq!(
                    owner(&t, &err_backend, workers),
                    w,
                    "backend-side ICMP error"
                );
            }
            // The hash spreads flows: every worker owns some of 300 flows.
            assert!(seen.iter().all(|&n| n > 0), "{workers} workers: {seen:?}");
        }
    }

    #[test]
    fn stateless_frames_stay_where_they_arrive() {
        let t = table();
        let steer = Steer::new(&t);
        // ARP request for the VIP.
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 9, 9, 0x08, 0x06]);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 9, 9, 10, 0, 0, 1]);
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 100]);
        assert_eq!(owner(&t, &arp, 4), ANY);
        // Echo request to the VIP.
        let mut echo = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 9, 9], LB_MAC)
            .ipv4([10, 0, 0, 1], VIP, 64)
            .icmpv4_echo_request(7, 1)
            .write(&mut echo, b"ping")
            .unwrap();
        assert_eq!(owner(&t, &echo, 4), ANY);
        // Garbage and an empty frame.
        assert_eq!(owner(&t, &[], 4), ANY);
        assert_eq!(owner(&t, &[0x45; 33], 4), ANY);
        // Transit traffic from a host that is no nat backend: steered by the pure rule, kept by Steer.
        let transit = frame([10, 9, 9, 9], [10, 8, 8, 8], proto::UDP, 5000, 53);
        assert!(owner(&t, &transit, 4) < 4);
        assert_eq!(steer.owner(&t, &transit, 4), ANY);
        // One worker: everything is worker 0's.
        assert_eq!(owner(&t, &arp, 1), 0);
    }

    #[test]
    fn snat_ports_outside_every_slice_are_nobodys() {
        // 10 ports over 3 workers: slices of 3, port 1033 is left over.
        assert_eq!(slice_owner((1024, 1033), 1024, 3), 0);
        assert_eq!(slice_owner((1024, 1033), 1029, 3), 1);
        assert_eq!(slice_owner((1024, 1033), 1032, 3), 2);
        assert_eq!(slice_owner((1024, 1033), 1033, 3), ANY);
        assert_eq!(slice_owner((1024, 1033), 80, 3), ANY);
        for w in 0..3 {
            let (lo, hi) = snat_slice((1024, 1033), w, 3);
            for p in lo..=hi {
                assert_eq!(slice_owner((1024, 1033), p, 3), w);
            }
        }
    }

    /// Fullnat spreads new flows over every snat address of the family: with two addresses and
    /// a 5-port slice per worker, 10 flows to one backend through one worker succeed (one address holds 5),
    /// both addresses carry flows, every (address, port) is distinct, and every reply steers
    /// back to that worker and is rewritten back to its client.
    #[test]
    fn fullnat_uses_every_snat_address() {
        const SNAT2: [u8; 4] = [198, 18, 0, 3];
        let t = table_with(&[Addr::v4(SNAT), Addr::v4(SNAT2)], (1024, 1033), 1);
        let workers = 2;
        let mut st = WorkerState::new(0, workers, ct_cfg());
        st.adopt(&t);
        let mut used = HashSet::<(Addr, u16), FastHash>::default();
        for i in 0..10u16 {
            let req = frame([10, 0, 0, 1], VIP, proto::TCP, 2000 + i, 80);
            let fwd = run(&mut st, &t, &req).unwrap_or_else(|| panic!("flow {i} refused"));
            let p = wire::parse(&fwd).unwrap();
            assert!(
                used.insert((p.src, p.sport)),
                "flow {i} reuses {:?}",
                p.sport
            );
            let reply = reply_to(&fwd);
            assert_eq!(owner(&t, &reply, workers), 0, "reply of flow {i}");
            let back = run(&mut st, &t, &reply).expect("reply forwarded");
            assert_eq!(wire::parse(&back).unwrap().dport, 2000 + i);
        }
        for a in [SNAT, SNAT2] {
            assert!(used.iter().any(|(s, _)| *s == Addr::v4(a)), "{a:?} unused");
        }
        // Both slices full now: the next flow is refused, not given a duplicate.
        let req = frame([10, 0, 0, 1], VIP, proto::TCP, 3000, 80);
        assert_eq!(run(&mut st, &t, &req), None);
    }
}

//! A new flow's own path (an IPv4 SYN or UDP datagram the fast parse read, to a service)
//! changes nothing a user can see: random first packets of flows (SYNs, other TCP segments,
//! UDP with and without a checksum, corrupt transport checksums, packets too big to
//! encapsulate, every mode, both affinities, an IPv6 backend, a pool without an encapsulation
//! source, two SNAT addresses and a port range small enough to run out, a table small enough to
//! fill and a budget small enough to evict, time passing and expiry) give the same verdicts,
//! bytes, counters and conntrack entries (slots, keys, states, timers, values of both
//! directions) through `process` (the fast path's miss, then the new flow's path), through
//! `process_burst_with` with the worker's kind of slow path (parse, then `process_parsed_as`),
//! and through bursts of several frames (`process_burst`, and `process_burst_with` the worker's
//! way: the burst's lookup tells the new flow's path whether the key is absent, so the insert
//! need not search for it) as through `process_general` (the general parse and
//! classification, the reference).

use dataplane::conntrack::{self, Millis, Timeouts};
use dataplane::flow::{proto, Addr};
use dataplane::maglev::DEFAULT_TABLE_SIZE;
use dataplane::pipeline::{
    parse_after, process_burst, process_burst_with, process_general, process_parsed_as,
};
use dataplane::table::{Affinity, Backend, Local, Mode, Pool, RoutingTable, ServiceSpec};
use dataplane::wire::{self, checksum, Ipv4Fields};
use dataplane::{process, DropReason, PacketBuf, Verdict, WorkerState};
use proptest::prelude::*;

const HEAD: usize = 128;
const BUF: usize = 2048;
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// VIPs: one per mode (TCP 80 and UDP 53 each), an every-port UDP fullnat service with
/// client-IP affinity, a fullnat service with an IPv6 backend, a dsr pool without an IPv4
/// encapsulation source, and an address that is no VIP.
const VIPS: [[u8; 4]; 9] = [
    [198, 18, 0, 100],
    [198, 18, 0, 101],
    [198, 18, 0, 102],
    [198, 18, 0, 103],
    [198, 18, 0, 104],
    [198, 18, 0, 105],
    [198, 18, 0, 106],
    [198, 18, 0, 107],
    [198, 18, 9, 9],
];

fn table() -> RoutingTable {
    let local = Local {
        mac: LB_MAC,
        addrs: vec![Addr::v4([198, 18, 0, 1])],
        // Small: a client packet of 100 bytes or more does not fit dsr's outer header.
        mtu: 120,
        // Three ports per SNAT address: a busy client runs out.
        snat_ports: (2000, 2002),
        more: Vec::new(),
    };
    let pool = |mode: Mode, encap: bool| Pool {
        name: "pool".into(),
        mode,
        snat: vec![
            Addr::v4([198, 18, 0, 2]),
            Addr::v6([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
            Addr::v4([198, 18, 0, 3]),
        ],
        encap_src_v4: encap.then_some(Addr::v4([198, 18, 0, 1])),
        encap_src_v6: None,
        gue_port: 6080,
    };
    let backends = |net: u8, port: u16| -> Vec<Backend> {
        (0..3u8)
            .map(|h| Backend {
                addr: Addr::v4([198, 18, net, 10 + h]),
                port: if h == 1 { 0 } else { port },
                weight: 1 + u32::from(h),
                mac: [0x02, 0, 0, 0, net, h],
                pool: 0,
                stat: 0,
            })
            .collect()
    };
    let svc = |vip: usize, proto: u8, ports: (u16, u16), mode: Mode, net: u8| ServiceSpec {
        stat: None,
        name: format!("s{vip}-{proto}"),
        vip: Addr::v4(VIPS[vip]),
        proto,
        port_lo: ports.0,
        port_hi: ports.1,
        affinity: Affinity::None,
        table_size: DEFAULT_TABLE_SIZE,
        pools: vec![pool(mode, true)],
        backends: backends(net, 8080),
    };
    let mut specs = Vec::new();
    for (i, &mode) in testkit::sample::MODES.iter().enumerate() {
        specs.push(svc(i, proto::TCP, (80, 80), mode, 1 + i as u8));
        specs.push(svc(i, proto::UDP, (53, 53), mode, 1 + i as u8));
    }
    let mut every = svc(5, proto::UDP, (0, 0), Mode::FullNat, 6);
    every.affinity = Affinity::ClientIp;
    specs.push(every);
    let mut v6 = svc(6, proto::TCP, (80, 80), Mode::FullNat, 7);
    v6.backends = vec![Backend {
        addr: Addr::v6([0x20, 1, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),
        port: 8080,
        weight: 1,
        mac: [0x02, 0, 0, 0, 7, 0],
        pool: 0,
        stat: 0,
    }];
    specs.push(v6);
    let mut bare = svc(7, proto::TCP, (80, 80), Mode::DsrIpip, 8);
    bare.pools = vec![pool(Mode::DsrIpip, false)];
    specs.push(bare);
    RoutingTable::new(1, local, specs).expect("valid table")
}

fn state() -> WorkerState {
    WorkerState::with_seed(
        0,
        1,
        conntrack::Config {
            // Small enough to fill, with a budget small enough to evict.
            capacity: 64,
            embryonic_budget: 12,
            timeouts: Timeouts::default(),
        },
        7,
    )
}

/// What a client sends.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// TCP with these flags.
    Tcp(u8),
    /// UDP with a checksum.
    Udp,
    /// UDP without a checksum (0).
    UdpNoSum,
}

/// An Ethernet + IPv4 + TCP/UDP frame with valid checksums (unless `corrupt`).
fn frame(src: Addr, dst: Addr, sport: u16, dport: u16, kind: Kind, payload: usize) -> Vec<u8> {
    let (p, hdr) = match kind {
        Kind::Tcp(_) => (proto::TCP, 20),
        Kind::Udp | Kind::UdpNoSum => (proto::UDP, 8),
    };
    let len = 14 + 20 + hdr + payload;
    let mut f = vec![0u8; len];
    wire::write_eth(&mut f, LB_MAC, CLIENT_MAC, None, 0x0800).unwrap();
    wire::write_ipv4(
        &mut f[14..],
        &Ipv4Fields {
            src: src.v4_octets(),
            dst: dst.v4_octets(),
            proto: p,
            payload_len: (hdr + payload) as u16,
            ttl: 64,
            tos: 0x10,
            id: 7,
            flags_frag: 0x4000,
        },
    )
    .unwrap();
    let l4 = &mut f[34..];
    l4[0..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&dport.to_be_bytes());
    for (i, b) in l4[hdr..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(sport as u8);
    }
    match kind {
        Kind::Tcp(flags) => {
            l4[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
            l4[12] = 5 << 4;
            l4[13] = flags;
            l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
            let c = checksum::l4(&src, &dst, proto::TCP, l4);
            l4[16..18].copy_from_slice(&c.to_be_bytes());
        }
        Kind::Udp | Kind::UdpNoSum => {
            l4[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
            if matches!(kind, Kind::Udp) {
                let c = checksum::l4(&src, &dst, proto::UDP, l4);
                l4[6..8].copy_from_slice(&c.to_be_bytes());
            }
        }
    }
    f
}

#[derive(Clone, Debug)]
enum Op {
    /// Client `client` sends from port `sport` to VIP `vip`, port `dport`.
    Send {
        vip: usize,
        client: u8,
        sport: u16,
        dport: u16,
        kind: Kind,
        payload: usize,
        /// Flip a payload or header byte after the checksums are written.
        corrupt: bool,
    },
    /// Time passes.
    Wait(Millis),
    /// The worker's expiry pass.
    Expire(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        6 => Just(Kind::Tcp(0x02)),
        1 => Just(Kind::Tcp(0x12)),
        1 => Just(Kind::Tcp(0x10)),
        1 => Just(Kind::Tcp(0x04)),
        1 => Just(Kind::Tcp(0x03)),
        3 => Just(Kind::Udp),
        1 => Just(Kind::UdpNoSum),
    ];
    let dport = prop_oneof![4 => Just(80u16), 3 => Just(53), 1 => Just(81), 1 => any::<u16>()];
    prop_oneof![
        12 => (
            0..VIPS.len(),
            0..6u8,
            prop_oneof![0..8u16, any::<u16>()],
            dport,
            kind,
            // 12, 20 and 24 bytes behind a 20-byte TCP header: the segment lengths of a
            // Windows, a Linux and a macOS SYN (32, 40, 44), which the checksum sums inline.
            prop_oneof![
                Just(0usize),
                0..7usize,
                prop::sample::select(vec![12usize, 20, 24]),
                60..90usize
            ],
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(vip, client, sport, dport, kind, payload, corrupt)| Op::Send {
                vip,
                client,
                sport,
                dport,
                kind,
                payload,
                corrupt,
            }),
        1 => prop_oneof![Just(1u64), Just(3_000), Just(6_000), Just(40_000)].prop_map(Op::Wait),
        1 => prop_oneof![Just(16usize), Just(64)].prop_map(Op::Expire),
    ]
}

/// Everything conntrack holds, slot by slot: each flow's slot, key, state, timer, and the
/// values of both its keys (with the reply key and its slot).
fn entries(st: &WorkerState) -> Vec<String> {
    st.ct
        .iter_flows()
        .map(|(slot, key, state)| {
            let reply = st
                .ct
                .reply_slot(slot)
                .map(|r| (r, st.ct.key(r), *st.ct.value(r)));
            format!(
                "{slot} {key:?} {state:?} {:?} {:?} {reply:?}",
                st.ct.deadline(slot),
                st.ct.value(slot)
            )
        })
        .collect()
}

/// Frames sent since the last burst ran: each with the general path's verdict and bytes.
type Pending = Vec<(Vec<u8>, Verdict, Vec<u8>)>;

/// Most frames per burst of the burst runs.
const BURST: usize = 8;

/// The pending frames as one burst through `process_burst` (`bursts.0`) and through
/// `process_burst_with` the worker's way (`bursts.1`): the same verdicts and bytes as the
/// general path gave each, then the same counters and conntrack entries as it has now.
fn run_bursts(
    table: &RoutingTable,
    now: Millis,
    pending: &mut Pending,
    bursts: (&mut WorkerState, &mut WorkerState),
    general: &WorkerState,
) -> Result<(), TestCaseError> {
    if pending.is_empty() {
        return Ok(());
    }
    for (worker_way, st) in [(false, bursts.0), (true, bursts.1)] {
        let mut bufs: Vec<Vec<u8>> = pending
            .iter()
            .map(|(f, _, _)| {
                let mut b = vec![0u8; BUF];
                b[HEAD..HEAD + f.len()].copy_from_slice(f);
                b
            })
            .collect();
        let mut pkts: Vec<PacketBuf<'_>> = bufs
            .iter_mut()
            .zip(pending.iter())
            .map(|(b, (f, _, _))| PacketBuf::new(b, HEAD, f.len()))
            .collect();
        let mut vs = vec![Verdict::Drop(DropReason::Unsupported); pkts.len()];
        if worker_way {
            process_burst_with(st, table, now, &mut pkts, &mut vs, |st, p, seen| {
                let parsed = parse_after(p.data(), seen);
                process_parsed_as(st, table, now, p, parsed, seen)
            });
        } else {
            process_burst(st, table, now, &mut pkts, &mut vs);
        }
        for (i, (p, (_, v, out))) in pkts.iter().zip(pending.iter()).enumerate() {
            prop_assert_eq!(vs[i], *v, "verdict of frame {} of a burst", i);
            prop_assert_eq!(p.data(), &out[..], "bytes of frame {} of a burst", i);
        }
        prop_assert_eq!(&st.counters, &general.counters, "counters after a burst");
        prop_assert_eq!(entries(st), entries(general), "conntrack after a burst");
    }
    pending.clear();
    Ok(())
}

fn run(ops: &[Op]) -> Result<WorkerState, TestCaseError> {
    let table = table();
    // The third: as the worker runs frames, through `process_burst_with` with a slow path
    // that parses first (to steer) and then calls `process_parsed_as`.
    let (mut fast, mut general, mut steered) = (state(), state(), state());
    // The same frames in bursts of up to `BURST` (time passes and expiry runs between them).
    let (mut bursts, mut worker_bursts) = (state(), state());
    let mut pending = Pending::new();
    let mut now: Millis = 1;
    for op in ops {
        if !matches!(op, Op::Send { .. }) || pending.len() == BURST {
            let b = (&mut bursts, &mut worker_bursts);
            run_bursts(&table, now, &mut pending, b, &general)?;
        }
        match *op {
            Op::Send {
                vip,
                client,
                sport,
                dport,
                kind,
                payload,
                corrupt,
            } => {
                let src = Addr::v4([198, 19, 0, 10 + client]);
                let mut f = frame(src, Addr::v4(VIPS[vip]), sport, dport, kind, payload);
                if corrupt {
                    let at = f.len() - 1;
                    f[at] ^= 0x5a;
                }
                let mut a = vec![0u8; BUF];
                let mut b = vec![0u8; BUF];
                let mut c = vec![0u8; BUF];
                a[HEAD..HEAD + f.len()].copy_from_slice(&f);
                b[HEAD..HEAD + f.len()].copy_from_slice(&f);
                c[HEAD..HEAD + f.len()].copy_from_slice(&f);
                let mut pa = PacketBuf::new(&mut a, HEAD, f.len());
                let mut pb = PacketBuf::new(&mut b, HEAD, f.len());
                let va = process(&mut fast, &table, now, &mut pa);
                let vb = process_general(&mut general, &table, now, &mut pb);
                let mut pc = [PacketBuf::new(&mut c, HEAD, f.len())];
                let mut vc = [Verdict::Drop(DropReason::Unsupported)];
                process_burst_with(
                    &mut steered,
                    &table,
                    now,
                    &mut pc,
                    &mut vc,
                    |st, p, seen| {
                        let parsed = parse_after(p.data(), seen);
                        process_parsed_as(st, &table, now, p, parsed, seen)
                    },
                );
                prop_assert_eq!(va, vb, "verdict of {:?}", op);
                prop_assert_eq!(vc[0], vb, "verdict of {:?} (steered)", op);
                prop_assert_eq!(pa.data(), pb.data(), "bytes of {:?}", op);
                prop_assert_eq!(pc[0].data(), pb.data(), "bytes of {:?} (steered)", op);
                prop_assert_eq!(&fast.counters, &general.counters, "counters after {:?}", op);
                prop_assert_eq!(
                    &steered.counters,
                    &general.counters,
                    "counters after {:?}",
                    op
                );
                prop_assert_eq!(
                    entries(&fast),
                    entries(&general),
                    "conntrack after {:?}",
                    op
                );
                prop_assert_eq!(
                    entries(&steered),
                    entries(&general),
                    "conntrack after {:?}",
                    op
                );
                pending.push((f, vb, pb.data().to_vec()));
            }
            Op::Wait(ms) => now += ms,
            Op::Expire(budget) => {
                let n = general.expire(now, budget);
                prop_assert_eq!(fast.expire(now, budget), n);
                prop_assert_eq!(steered.expire(now, budget), n);
                prop_assert_eq!(&fast.counters, &general.counters);
                prop_assert_eq!(&steered.counters, &general.counters);
                prop_assert_eq!(entries(&fast), entries(&general));
                prop_assert_eq!(entries(&steered), entries(&general));
                for st in [&mut bursts, &mut worker_bursts] {
                    prop_assert_eq!(st.expire(now, budget), n);
                    prop_assert_eq!(&st.counters, &general.counters);
                    prop_assert_eq!(entries(st), entries(&general));
                }
            }
        }
    }
    let b = (&mut bursts, &mut worker_bursts);
    run_bursts(&table, now, &mut pending, b, &general)?;
    Ok(fast)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_new_flows_own_path_matches_the_general_path(ops in proptest::collection::vec(op(), 1..200)) {
        run(&ops)?;
    }
}

/// The cases the random runs must reach: each mode's SYN and datagram take the new flow's path
/// and are forwarded, and the refusals it decides itself (SNAT ports run out, a budget full)
/// or leaves to the general path (an IPv6 backend, a stray ACK) agree.
#[test]
fn every_mode_and_refusal_agrees() {
    let mut ops = Vec::new();
    for vip in 0..VIPS.len() {
        for (dport, kind) in [(80, Kind::Tcp(0x02)), (53, Kind::Udp), (53, Kind::UdpNoSum)] {
            for sport in 0..3 {
                ops.push(Op::Send {
                    vip,
                    client: 1,
                    sport,
                    dport,
                    kind,
                    payload: 4,
                    corrupt: false,
                });
            }
        }
    }
    // One client opens more fullnat flows (TCP and UDP, each class with its own budget) than
    // its SNAT ports allow.
    for sport in 100..130 {
        for (dport, kind) in [(80, Kind::Tcp(0x02)), (53, Kind::Udp)] {
            ops.push(Op::Send {
                vip: 0,
                client: 2,
                sport,
                dport,
                kind,
                payload: 0,
                corrupt: false,
            });
        }
    }
    let st = run(&ops).unwrap();
    let c = &st.counters;
    let drops = |r: DropReason| c.drops[r as usize];
    assert!(c.tx_packets >= 30, "forwarded: {}", c.tx_packets);
    assert!(
        drops(DropReason::SnatExhausted) > 0,
        "the busy client was refused: {:?}",
        c.drops
    );
    assert!(
        drops(DropReason::NoService) > 0,
        "no service: {:?}",
        c.drops
    );
    assert!(
        drops(DropReason::Unsupported) > 0,
        "no encapsulation source: {:?}",
        c.drops
    );
}

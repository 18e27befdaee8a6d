//! The fast path and burst processing change nothing a user can see: random sequences of
//! frames of many flows (handshakes, data, FIN, RST, UDP, corrupt headers, every mode, time
//! passing, a table swap) give the same verdicts, bytes, counters and flow states through
//! `process_burst` (fast path, bursts of varying size) as through `process_general` one frame at
//! a time (the general path alone).

use dataplane::conntrack::{self, Millis, Timeouts};
use dataplane::flow::{proto, Addr};
use dataplane::pipeline::{process_burst, process_general};
use dataplane::table::Mode;
use dataplane::wire::{self, checksum, Ipv4Fields};
use dataplane::{DropReason, PacketBuf, RoutingTable, Verdict, WorkerState};
use proptest::prelude::*;
use testkit::sample;

const HEAD: usize = 128;
const BUF: usize = 2048;

fn state() -> WorkerState {
    WorkerState::with_seed(
        0,
        1,
        conntrack::Config {
            capacity: 1 << 12,
            embryonic_budget: 64,
            timeouts: Timeouts::default(),
        },
        7,
    )
}

/// An Ethernet + IPv4 + UDP frame with valid checksums.
fn udp4(src: Addr, dst: Addr, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let len = 14 + 20 + 8 + payload;
    let mut f = vec![0u8; len];
    wire::write_eth(&mut f, sample::LB_MAC, sample::CLIENT_MAC, None, 0x0800).unwrap();
    wire::write_ipv4(
        &mut f[14..],
        &Ipv4Fields {
            src: src.v4_octets(),
            dst: dst.v4_octets(),
            proto: proto::UDP,
            payload_len: (8 + payload) as u16,
            ttl: 64,
            tos: 0,
            id: 1,
            flags_frag: 0,
        },
    )
    .unwrap();
    let u = &mut f[34..];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    let c = checksum::l4(&src, &dst, proto::UDP, u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    f
}

fn tcp4(src: Addr, dst: Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 128];
    let n = sample::tcp4(&mut f, src, dst, sport, dport, flags, 10);
    f.truncate(n);
    f
}

/// The reply a backend (or the client, for a frame towards it) sends to a transmitted frame:
/// addresses and ports swapped, as the peer of the rewritten packet would answer. `None` for
/// frames that are not plain IPv4 TCP/UDP (encapsulated dsr frames get no reply through us).
fn answer(out: &[u8], flags: u8) -> Option<Vec<u8>> {
    if out.len() < 42 || out[12..14] != [0x08, 0x00] || out[14] != 0x45 {
        return None;
    }
    let ip = |i: usize| Addr::v4([out[i], out[i + 1], out[i + 2], out[i + 3]]);
    let port = |i: usize| u16::from_be_bytes([out[i], out[i + 1]]);
    match out[23] {
        proto::TCP => Some(tcp4(ip(30), ip(26), port(36), port(34), flags)),
        proto::UDP => Some(udp4(ip(30), ip(26), port(36), port(34), 12)),
        _ => None,
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// The client of flow `flow` to VIP `vip` sends TCP with `flags`, or UDP when `flags` is 0.
    Client { vip: usize, flow: u16, flags: u8 },
    /// The peer answers the last transmitted frame of that flow.
    Answer { vip: usize, flow: u16, flags: u8 },
    /// A client frame with a broken IPv4 header checksum.
    Corrupt { vip: usize, flow: u16 },
    /// Time passes.
    Wait(Millis),
    /// The table is swapped for a new generation (flows are revalidated).
    Swap,
    /// The frames so far are processed (burst boundary).
    Flush,
}

const VIPS: [Addr; 5] = [
    sample::VIP_FULLNAT,
    sample::VIP_IPIP,
    sample::VIP_NAT,
    sample::VIP_GUE,
    sample::VIP_DR,
];

fn op() -> impl Strategy<Value = Op> {
    let flags = prop_oneof![
        Just(0x02u8),
        Just(0x10),
        Just(0x10),
        Just(0x18),
        Just(0x11),
        Just(0x04),
        Just(0x12),
        Just(0),
    ];
    prop_oneof![
        6 => (0..VIPS.len(), 0..6u16, flags.clone())
            .prop_map(|(vip, flow, flags)| Op::Client { vip, flow, flags }),
        4 => (0..VIPS.len(), 0..6u16, flags)
            .prop_map(|(vip, flow, flags)| Op::Answer { vip, flow, flags }),
        1 => (0..VIPS.len(), 0..6u16).prop_map(|(vip, flow)| Op::Corrupt { vip, flow }),
        1 => prop_oneof![Just(1u64), Just(4_000), Just(40_000)].prop_map(Op::Wait),
        1 => Just(Op::Swap),
        2 => Just(Op::Flush),
    ]
}

/// The UDP ops: every client frame a datagram (to port 53, the UDP table's services), and
/// answers, corrupt frames, waits, swaps and flushes as in [`op`].
fn udp_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..VIPS.len(), 0..6u16).prop_map(|(vip, flow)| Op::Client { vip, flow, flags: 0 }),
        4 => (0..VIPS.len(), 0..6u16).prop_map(|(vip, flow)| Op::Answer { vip, flow, flags: 0 }),
        1 => (0..VIPS.len(), 0..6u16).prop_map(|(vip, flow)| Op::Corrupt { vip, flow }),
        1 => prop_oneof![Just(1u64), Just(4_000), Just(40_000)].prop_map(Op::Wait),
        1 => Just(Op::Swap),
        2 => Just(Op::Flush),
    ]
}

/// The sample table's IPv4 services (the same VIPs, modes and backends) for UDP port 53:
/// the UDP frames of [`udp_op`] are their flows' (the sample table's services are TCP only).
fn udp_table(generation: u64) -> RoutingTable {
    let hosts: Vec<(u8, u32)> = (10..14u8).map(|h| (h, 1)).collect();
    let services = VIPS
        .iter()
        .zip(sample::MODES)
        .zip(1u8..)
        .map(|((&vip, mode), net)| {
            let port = if matches!(mode, Mode::FullNat | Mode::Nat) {
                5353
            } else {
                0
            };
            let pool = sample::pool(mode, vec![sample::SNAT]);
            let backends = sample::backends_v4(net, &hosts, port);
            sample::service(
                &format!("udp{net}"),
                vip,
                proto::UDP,
                (53, 53),
                pool,
                backends,
            )
        })
        .collect();
    RoutingTable::new(generation, sample::local_v4(), services).expect("a valid table")
}

/// Both runs side by side: the reference through `process_general`, the other through
/// `process_burst`, frames queued until a flush.
struct Pair {
    general: WorkerState,
    burst: WorkerState,
    table: RoutingTable,
    generation: u64,
    now: Millis,
    queue: Vec<Vec<u8>>,
    /// The table of each generation.
    make: fn(u64) -> RoutingTable,
    /// Last transmitted frame per (vip, flow).
    last: std::collections::HashMap<(usize, u16), Vec<u8>>,
    /// Which (vip, flow) each queued frame belongs to.
    owners: Vec<(usize, u16)>,
}

impl Pair {
    fn flush(&mut self) -> Result<(), TestCaseError> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let mut bufs: Vec<Vec<u8>> = self
            .queue
            .iter()
            .map(|f| {
                let mut b = vec![0u8; BUF];
                b[HEAD..HEAD + f.len()].copy_from_slice(f);
                b
            })
            .collect();
        let mut pkts: Vec<PacketBuf<'_>> = bufs
            .iter_mut()
            .zip(&self.queue)
            .map(|(b, f)| PacketBuf::new(b, HEAD, f.len()))
            .collect();
        let mut verdicts = vec![Verdict::Drop(DropReason::Unsupported); pkts.len()];
        process_burst(
            &mut self.burst,
            &self.table,
            self.now,
            &mut pkts,
            &mut verdicts,
        );
        for (i, f) in self.queue.iter().enumerate() {
            let mut b = vec![0u8; BUF];
            b[HEAD..HEAD + f.len()].copy_from_slice(f);
            let mut p = PacketBuf::new(&mut b, HEAD, f.len());
            let v = process_general(&mut self.general, &self.table, self.now, &mut p);
            prop_assert_eq!(v, verdicts[i], "verdict of frame {}", i);
            prop_assert_eq!(p.data(), pkts[i].data(), "bytes of frame {}", i);
            if v == Verdict::Tx {
                self.last.insert(self.owners[i], p.data().to_vec());
            }
        }
        self.queue.clear();
        self.owners.clear();
        prop_assert_eq!(&self.general.counters, &self.burst.counters);
        let flows = |st: &WorkerState| {
            st.ct
                .iter_flows()
                .map(|(slot, k, s)| (k, s, st.ct.deadline(slot)))
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(flows(&self.general), flows(&self.burst));
        Ok(())
    }

    fn push(&mut self, owner: (usize, u16), f: Vec<u8>) -> Result<(), TestCaseError> {
        self.queue.push(f);
        self.owners.push(owner);
        if self.queue.len() == 64 {
            self.flush()?;
        }
        Ok(())
    }
}

proptest! {
    /// The fast path finds flows the general path stored: the hash it computes from the
    /// header's words is the table hash of the key `parse` reads (a mismatch would send every
    /// packet down the general path, silently).
    #[test]
    fn fast_hash_is_the_table_hash_of_the_parsed_key(
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        sport in any::<u16>(),
        dport in any::<u16>(),
        udp in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (src, dst) = (Addr::v4(src), Addr::v4(dst));
        let f = if udp {
            udp4(src, dst, sport, dport, 4)
        } else {
            tcp4(src, dst, sport, dport, 0x10)
        };
        let v = wire::parse_v4_flow(&f).expect("a plain IPv4 TCP/UDP frame takes the fast path");
        let key = wire::parse(&f).expect("valid frame").key();
        prop_assert_eq!(v.key(), key);
        prop_assert_eq!(
            dataplane::flow::hash_v4(v.src, v.dst, v.ports, v.proto, seed),
            key.table_hash(seed)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Both ways a burst runs: prefetching tags and slots in passes before the fast loop (as
    /// with a table far past the cache), and in one walk (a table whose keys fit the cache).
    #[test]
    fn bursts_and_the_fast_path_match_the_general_path(
        ops in proptest::collection::vec(op(), 1..300),
        prefetch in any::<bool>(),
    ) {
        run(ops, prefetch)?;
    }

    /// The same for UDP flows of every mode (dsr and dr flows without replies, confirmed by
    /// the client's second datagram; nat and fullnat both ways), some clients' datagrams
    /// without a checksum.
    #[test]
    fn udp_bursts_and_the_fast_path_match_the_general_path(
        ops in proptest::collection::vec(udp_op(), 1..300),
        prefetch in any::<bool>(),
    ) {
        run_with(ops, prefetch, udp_table)?;
    }
}

/// Runs `ops` through both paths (see [`Pair`]), the burst's with or without its prefetch
/// passes.
fn run(ops: Vec<Op>, prefetch: bool) -> Result<(), TestCaseError> {
    run_with(ops, prefetch, |g| sample::table(g, 4))
}

/// [`run`] with the table of each generation from `make`.
fn run_with(
    ops: Vec<Op>,
    prefetch: bool,
    make: fn(u64) -> RoutingTable,
) -> Result<(), TestCaseError> {
    let mut burst = state();
    burst.set_prefetch_from(if prefetch { 0 } else { usize::MAX });
    let mut pair = Pair {
        general: state(),
        burst,
        table: make(1),
        make,
        generation: 1,
        now: 1,
        queue: Vec::new(),
        last: Default::default(),
        owners: Vec::new(),
    };
    for op in ops {
        match op {
            Op::Client { vip, flow, flags } => {
                let src = Addr::v4([198, 19, 1, flow as u8]);
                let f = if flags == 0 {
                    let mut f = udp4(src, VIPS[vip], 40000 + flow, 53, 20);
                    if flow % 3 == 2 {
                        // No checksum: the rewrite must leave it so.
                        f[40..42].fill(0);
                    }
                    f
                } else {
                    tcp4(src, VIPS[vip], 40000 + flow, 80, flags)
                };
                pair.push((vip, flow), f)?;
            }
            Op::Answer { vip, flow, flags } => {
                let reply = pair
                    .last
                    .get(&(vip, flow))
                    .and_then(|out| answer(out, flags));
                if let Some(f) = reply {
                    pair.push((vip, flow), f)?;
                }
            }
            Op::Corrupt { vip, flow } => {
                let src = Addr::v4([198, 19, 1, flow as u8]);
                let mut f = tcp4(src, VIPS[vip], 40000 + flow, 80, 0x10);
                f[24] ^= 0x55;
                pair.push((vip, flow), f)?;
            }
            Op::Wait(ms) => {
                pair.flush()?;
                pair.now += ms;
            }
            Op::Swap => {
                pair.flush()?;
                pair.generation += 1;
                pair.table = (pair.make)(pair.generation);
            }
            Op::Flush => pair.flush()?,
        }
    }
    pair.flush()
}

/// The burst's order holds per flow: in one burst, established packets of flow 0 before and
/// after a frame the fast path gives up (flow 1's FIN, then its ACK, which the FIN moved out
/// of the steady state; a corrupt frame; a new flow's SYN), and frames after those that the
/// fast path takes again; in another, a new flow's SYN first and its retransmission right
/// behind it; in a third, a new flow's SYN first and its ACK right behind it. Each frame
/// gets its own verdict and bytes, as one by one through the general path. Both ways a burst
/// runs.
#[test]
fn a_burst_keeps_each_flows_order_around_frames_the_fast_path_gives_up() {
    let establish = |vip: usize, flow: u16| {
        vec![
            Op::Client {
                vip,
                flow,
                flags: 0x02,
            },
            Op::Flush,
            Op::Answer {
                vip,
                flow,
                flags: 0x12,
            },
            Op::Flush,
            Op::Client {
                vip,
                flow,
                flags: 0x10,
            },
            Op::Flush,
        ]
    };
    for prefetch in [false, true] {
        for vip in 0..VIPS.len() {
            let mut ops = Vec::new();
            ops.extend(establish(vip, 0));
            ops.extend(establish(vip, 1));
            ops.extend([
                Op::Client {
                    vip,
                    flow: 0,
                    flags: 0x10,
                },
                Op::Client {
                    vip,
                    flow: 1,
                    flags: 0x11,
                },
                Op::Client {
                    vip,
                    flow: 1,
                    flags: 0x10,
                },
                Op::Client {
                    vip,
                    flow: 0,
                    flags: 0x18,
                },
                Op::Corrupt { vip, flow: 0 },
                Op::Client {
                    vip,
                    flow: 0,
                    flags: 0x10,
                },
                Op::Client {
                    vip,
                    flow: 2,
                    flags: 0x02,
                },
                Op::Client {
                    vip,
                    flow: 2,
                    flags: 0x10,
                },
                Op::Answer {
                    vip,
                    flow: 0,
                    flags: 0x10,
                },
                Op::Client {
                    vip,
                    flow: 0,
                    flags: 0x04,
                },
                Op::Client {
                    vip,
                    flow: 0,
                    flags: 0x10,
                },
                Op::Flush,
                // A burst that starts with a frame the fast path gives up: a new flow's SYN,
                // its retransmission right behind it, then steady frames of another flow.
                Op::Client {
                    vip,
                    flow: 3,
                    flags: 0x02,
                },
                Op::Client {
                    vip,
                    flow: 3,
                    flags: 0x02,
                },
                Op::Client {
                    vip,
                    flow: 1,
                    flags: 0x10,
                },
                Op::Client {
                    vip,
                    flow: 3,
                    flags: 0x10,
                },
                Op::Flush,
                // A new flow's SYN, its ACK right behind it (had the ACK gone first, fullnat
                // would drop it as `no-flow`), then a frame of another flow.
                Op::Client {
                    vip,
                    flow: 4,
                    flags: 0x02,
                },
                Op::Client {
                    vip,
                    flow: 4,
                    flags: 0x10,
                },
                Op::Client {
                    vip,
                    flow: 3,
                    flags: 0x10,
                },
                Op::Flush,
            ]);
            if let Err(e) = run(ops, prefetch) {
                panic!("vip {vip}, prefetch {prefetch}: {e}");
            }
        }
    }
}

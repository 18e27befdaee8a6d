//! Drives the real pipeline over synthetic traffic without any port, for instruction counting
//! (`perf/instructions.sh` runs it under callgrind) and quick profiling.
//!
//! Usage: `pps <fullnat|nat|ipip|gue|dr> <established|udp|new|flood> <packets> [harness]`
//!
//! `established`: every flow's handshake first (the client's SYN, for fullnat and nat the
//! backend's SYN+ACK, then the client's ACKs), so the counted packets belong to established, confirmed
//! flows. `udp`: established UDP flows of a UDP service of the mode (the zero-copy benchmark's
//! traffic): each flow's first datagram, for fullnat and nat the backend's reply, then the
//! client's next datagram, which confirms it; the counted packets are, for fullnat and nat,
//! a client's datagram and the backend's reply to it in turn, for the other modes (whose
//! replies do not come through the balancer) the client's datagrams. `new`: the SYN of a flow never seen per packet (no source port repeats: a repeat would
//! be a retransmitted SYN of a flow still waiting, which takes another path), into a table
//! sized for the rate, as a user sizes
//! one (the default config's budget ratio, a quarter of the slots): time moves 1 ms per burst
//! (32 000 new flows/s) and, as the worker does every millisecond, each burst is followed by an
//! expiry pass over 256 slots, whose cost is counted with the packets'. `flood`: a SYN flood's
//! steady state: a small table whose embryonic budget is full of unanswered SYNs (time moves 1
//! ms per SYN and nothing expires them), so every SYN (again of a flow never seen) evicts the
//! oldest of them. The counted
//! packets run in bursts of 32 through `process_burst`, as the worker runs them (`packets` is
//! rounded down to whole bursts).
//!
//! `udp` takes two optional environment variables, for a table the size of the zero-copy
//! benchmark's: `PPS_FLOWS` flows in the table (default 1024; above that, a table of
//! `4 * PPS_FLOWS` slots rounded up to a power of two, as `zero_copy` sizes it) and `PPS_HOT` of
//! them carrying the counted packets (default all), as the benchmark's frames in flight carry
//! its traffic over a table that holds every flow. Under `valgrind --tool=cachegrind
//! --cache-sim=yes` that counts the cache lines a packet misses with many flows.
//!
//! `new` and `flood` send a bare SYN (a 20-byte TCP header, a 54-byte frame) unless `PPS_SYN`
//! names a client: `linux`, whose options (MSS, SACK permitted, timestamps, window scale) make
//! its TCP header 40 bytes and its frame 74, as real clients' SYNs are; `windows` (MSS, window
//! scale, SACK permitted: 32 bytes) or `macos` (those and timestamps: 44 bytes).
//!
//! `PPS_NEXT_HOPS=on_link` (not for `udp`): the backends' MACs resolved through the neighbor
//! cache, as a config with `on_link` (or a gateway) has them, instead of configured per backend:
//! every backend on the link 198.18.0.0/16, its MAC learned before the counted packets.
//!
//! `harness`: the same run with `process_burst` (and the expiry pass) left out, so its count is what the harness
//! itself costs (the copy standing in for a port's receive, the buffers, the loop);
//! `perf/instructions.sh` subtracts it to report the pipeline's own instructions per packet.

use dataplane::conntrack::{Config, Timeouts};
use dataplane::flow::proto;
use dataplane::flow::Addr;
use dataplane::neighbor::NeighborCache;
use dataplane::pipeline::process_burst;
use dataplane::table::{Mode, NeighborSpec, Prefix};
use dataplane::wire::{self, checksum, Ipv4Fields};
use dataplane::worker::EXPIRE_BUDGET;
use dataplane::{process, DropReason, PacketBuf, RoutingTable, Verdict, WorkerState};
use testkit::sample;

const FLOWS: usize = 1024;
const HEADROOM: usize = 128;
/// Frames per `process_burst` call, as the worker's.
const BURST: usize = 32;
/// One frame's buffer: headroom, the frame, room to grow.
const BUF: usize = 512;
/// Bytes copied in per frame (every frame here is shorter): a fixed size, so the copy is a few
/// moves instead of a `memcpy` call.
const COPY: usize = 128;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: pps <fullnat|nat|ipip|gue|dr> <established|udp|new|flood> <packets> [harness]";
    let (mode, kind, packets, dry) = match args.as_slice() {
        [_, m, k, n] => (
            m.as_str(),
            k.as_str(),
            n.parse::<usize>().unwrap_or(0),
            false,
        ),
        [_, m, k, n, h] if h == "harness" => (m.as_str(), k.as_str(), n.parse().unwrap_or(0), true),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    if !matches!(kind, "established" | "udp" | "new" | "flood") {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let (vip, replies, udp_mode) = match mode {
        "fullnat" => (sample::VIP_FULLNAT, true, Mode::FullNat),
        "nat" => (sample::VIP_NAT, true, Mode::Nat),
        "ipip" => (sample::VIP_IPIP, false, Mode::DsrIpip),
        "gue" => (sample::VIP_GUE, false, Mode::DsrGue),
        "dr" => (sample::VIP_DR, false, Mode::Dr),
        _ => {
            eprintln!("unknown mode {mode}: fullnat, nat, ipip, gue or dr");
            std::process::exit(2);
        }
    };
    let mut table = if kind == "udp" {
        udp_table(udp_mode)
    } else {
        sample::table(1, 16)
    };
    match std::env::var("PPS_NEXT_HOPS").as_deref() {
        Ok("on_link") if kind != "udp" => on_link(&mut table),
        Ok("static") | Err(_) => {}
        Ok(other) => panic!("PPS_NEXT_HOPS={other}: static, or on_link (not for udp)"),
    }
    let env = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
    };
    // The udp kind's flows in the table and those carrying the counted packets.
    let flows = if kind == "udp" {
        env("PPS_FLOWS").unwrap_or(FLOWS).clamp(1, 1 << 22)
    } else {
        FLOWS
    };
    let hot = env("PPS_HOT").unwrap_or(flows).clamp(1, flows);
    // A fixed conntrack seed: callgrind counts must repeat exactly from run to run.
    let capacity = match kind {
        "new" => 1 << 20,
        _ if flows > FLOWS => (4 * flows).next_power_of_two(),
        _ => 1 << 16,
    };
    let mut st = WorkerState::with_seed(
        0,
        1,
        Config {
            capacity,
            embryonic_budget: capacity / 4,
            timeouts: Timeouts::default(),
        },
        1,
    );
    let client = |i: usize| Addr::v4([198, 19 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    let syn_opts: &[u8] = match std::env::var("PPS_SYN").as_deref() {
        Ok("linux") => &sample::LINUX_SYN_OPTIONS,
        Ok("windows") => &sample::WINDOWS_SYN_OPTIONS,
        Ok("macos") => &sample::MACOS_SYN_OPTIONS,
        Ok("bare") | Err(_) => &[],
        Ok(other) => panic!("PPS_SYN={other}: bare, linux, windows or macos"),
    };
    let mut syn = vec![[0u8; 256]; FLOWS];
    let mut syn_len = 0;
    let mut ack = vec![[0u8; 256]; FLOWS];
    let mut lens = vec![0usize; FLOWS];
    for i in 0..FLOWS {
        syn_len = sample::tcp4_syn_with(&mut syn[i], client(i), vip, 40000, 80, syn_opts);
        lens[i] = sample::tcp4(&mut ack[i], client(i), vip, 40000, 80, 0x10, 64);
    }
    let mut tx = 0usize;
    // The counted packets go through `process_burst` in bursts of BURST, as the worker runs
    // them; a port's receive is stood in for by a fixed-size copy into each frame's buffer.
    let mut bufs = [[0u8; BUF]; BURST];
    let mut blens = [0usize; BURST];
    let bursts = packets / BURST;
    if kind == "udp" {
        let (mut req, mut rep) = (vec![[0u8; 256]; flows], vec![[0u8; 256]; flows]);
        let mut out = [0u8; 2048];
        let mut ulen = 0;
        for i in 0..flows {
            ulen = udp4(&mut req[i], client(i), UDP_VIP, 40000, 80);
            rx(&mut out, &req[i], ulen, &mut st, &table, 0);
            if replies {
                // The backend's reply to the rewritten datagram.
                let o = &out[HEADROOM..HEADROOM + ulen];
                let ip = |i: usize| Addr::v4([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                let port = |i: usize| u16::from_be_bytes([o[i], o[i + 1]]);
                udp4(&mut rep[i], ip(30), ip(26), port(36), port(34));
                rx(&mut out, &rep[i], ulen, &mut st, &table, 0);
            }
            // The client's next datagram confirms the flow.
            rx(&mut out, &req[i], ulen, &mut st, &table, 0);
        }
        // The next flow and, for fullnat and nat, whether its reply is next (a counter, not a
        // division by `hot`, which would cost the harness more than the constant's mask).
        let (mut k, mut reply) = (0usize, false);
        for _ in 0..bursts {
            for buf in bufs.iter_mut() {
                let f = if reply { &rep[k] } else { &req[k] };
                reply = replies && !reply;
                if !reply {
                    k += 1;
                    if k == hot {
                        k = 0;
                    }
                }
                buf[HEADROOM..HEADROOM + COPY].copy_from_slice(&f[..COPY]);
            }
            tx += burst(&mut st, &table, 1, &mut bufs, &[ulen; BURST], dry);
        }
    } else if kind != "established" {
        for b in 0..bursts {
            for (i, buf) in bufs.iter_mut().enumerate() {
                let n = b * BURST + i;
                let f = &mut buf[HEADROOM..HEADROOM + COPY];
                // Every SYN a flow never seen: source ports 1024-65535 of one client, then of
                // the next (a port that repeated would be a retransmitted SYN of a flow still
                // waiting for its answer, which takes another path).
                const PORTS: usize = 65536 - 1024;
                f.copy_from_slice(&syn[(n / PORTS) % FLOWS][..COPY]);
                let port = (1024 + n % PORTS) as u16;
                f[34..36].copy_from_slice(&port.to_be_bytes());
                let c = u16::from_be_bytes([f[50], f[51]]);
                let c = dataplane::wire::checksum::update16(c, 40000, port);
                f[50..52].copy_from_slice(&c.to_be_bytes());
                blens[i] = syn_len;
            }
            if kind == "new" {
                // 1 ms per burst, and the worker's expiry pass of each millisecond.
                let now = b as u64;
                tx += burst(&mut st, &table, now, &mut bufs, &blens, dry);
                if !dry {
                    st.expire(now, EXPIRE_BUDGET);
                }
            } else {
                // 1 ms per SYN: the budget fills with unanswered SYNs, which nothing expires.
                tx += burst(&mut st, &table, (b * BURST) as u64, &mut bufs, &blens, dry);
            }
        }
    } else {
        let mut out = [0u8; 2048];
        let mut reply = [0u8; 256];
        for f in &syn {
            rx(&mut out, f, 54, &mut st, &table, 0);
            if replies {
                // The backend's SYN+ACK to the rewritten SYN: with the client's ACK that
                // follows, the flow is established and confirmed, as a real one is.
                let o = &out[HEADROOM..HEADROOM + 54];
                let ip = |i: usize| Addr::v4([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                let port = |i: usize| u16::from_be_bytes([o[i], o[i + 1]]);
                let n = sample::tcp4(&mut reply, ip(30), ip(26), port(36), port(34), 0x12, 0);
                rx(&mut out, &reply, n, &mut st, &table, 0);
            }
        }
        for b in 0..bursts {
            for (i, buf) in bufs.iter_mut().enumerate() {
                let k = (b * BURST + i) % FLOWS;
                buf[HEADROOM..HEADROOM + COPY].copy_from_slice(&ack[k][..COPY]);
                blens[i] = lens[k];
            }
            tx += burst(&mut st, &table, 1, &mut bufs, &blens, dry);
        }
    }
    // Established runs must leave no flow mid-handshake (unconfirmed).
    println!(
        "{mode} {kind}: {} packets, {tx} transmitted, {} flows unconfirmed",
        bursts * BURST,
        st.ct.embryonic()
    );
}

/// The UDP service's VIP in [`udp_table`].
const UDP_VIP: Addr = Addr::v4([198, 18, 0, 100]);
/// UDP payload bytes: 60-byte frames, the zero-copy benchmark's 64 with the FCS.
const UDP_PAYLOAD: usize = 18;

/// A table with one UDP service on [`UDP_VIP`] port 80 in `mode`, with 16 backends (in
/// 198.18.1.0/24, port 8080; dsr and dr keep the port), as `sample::table`'s TCP services.
fn udp_table(mode: Mode) -> RoutingTable {
    let keeps_port = matches!(mode, Mode::DsrIpip | Mode::DsrGue | Mode::Dr);
    let hosts: Vec<(u8, u32)> = (10..26u8).map(|h| (h, 1)).collect();
    let backends = sample::backends_v4(1, &hosts, if keeps_port { 0 } else { 8080 });
    let pool = sample::pool(mode, vec![sample::SNAT]);
    let svc = sample::service("udp", UDP_VIP, proto::UDP, (80, 80), pool, backends);
    RoutingTable::new(1, sample::local_v4(), vec![svc]).expect("a valid table")
}

/// Writes an Ethernet + IPv4 + UDP frame with [`UDP_PAYLOAD`] bytes of payload and valid
/// checksums into `buf`; returns its length.
fn udp4(buf: &mut [u8], src: Addr, dst: Addr, sport: u16, dport: u16) -> usize {
    let len = 14 + 20 + 8 + UDP_PAYLOAD;
    let f = &mut buf[..len];
    f.fill(0);
    wire::write_eth(
        f,
        sample::LB_MAC,
        sample::CLIENT_MAC,
        None,
        wire::ETHERTYPE_IPV4,
    )
    .expect("room");
    let ip = Ipv4Fields {
        src: src.v4_octets(),
        dst: dst.v4_octets(),
        proto: proto::UDP,
        payload_len: (8 + UDP_PAYLOAD) as u16,
        ttl: 64,
        tos: 0,
        id: 1,
        flags_frag: 0x4000,
    };
    wire::write_ipv4(&mut f[14..], &ip).expect("room");
    wire::write_udp(&mut f[34..], sport, dport, UDP_PAYLOAD as u16).expect("room");
    let c = checksum::l4(&src, &dst, proto::UDP, &f[34..]);
    f[40..42].copy_from_slice(&c.to_be_bytes());
    len
}

/// Runs one burst of frames (`lens[i]` bytes of `bufs[i]` behind the headroom) through
/// `process_burst` (not when `dry`: the harness's own cost alone); returns how many it
/// transmitted.
fn burst(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: u64,
    bufs: &mut [[u8; BUF]; BURST],
    lens: &[usize; BURST],
    dry: bool,
) -> usize {
    let mut i = 0;
    let mut pkts = bufs.each_mut().map(|b| {
        i += 1;
        PacketBuf::new(b, HEADROOM, lens[i - 1])
    });
    let mut verdicts = [Verdict::Drop(DropReason::Unsupported); BURST];
    if dry {
        std::hint::black_box((&mut pkts, &mut verdicts));
    } else {
        process_burst(st, table, now, &mut pkts, &mut verdicts);
    }
    verdicts.iter().filter(|v| **v == Verdict::Tx).count()
}

/// Copies `frame` into `buf` behind the headroom, as a port's receive would, and processes it.
fn rx(
    buf: &mut [u8],
    frame: &[u8],
    len: usize,
    st: &mut WorkerState,
    table: &RoutingTable,
    now: u64,
) -> Verdict {
    buf[HEADROOM..HEADROOM + len].copy_from_slice(&frame[..len]);
    let mut p = PacketBuf::new(buf, HEADROOM, len);
    process(st, table, now, &mut p)
}

/// The table's IPv4 backends resolved through a neighbor cache: all on the link
/// 198.18.0.0/16, each one's MAC (the one the table configures for it) learned, as an ARP reply
/// teaches it.
fn on_link(table: &mut RoutingTable) {
    let cache = std::sync::Arc::new(NeighborCache::new(256));
    table
        .set_neighbors(NeighborSpec::one(
            cache.clone(),
            vec![Prefix {
                addr: Addr::v4([198, 18, 0, 0]),
                len: 16,
            }],
            None,
            None,
            Vec::new(),
        ))
        .expect("the sample table's next hops");
    let backends = table.services.iter().flat_map(|s| &s.backends);
    for be in backends.filter(|be| be.addr.is_v4()) {
        let hop = cache.bind(be.addr).expect("a slot");
        assert!(cache.learn(hop, be.mac), "a unicast MAC, bound");
    }
}

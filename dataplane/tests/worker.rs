//! Worker threads end to end over in-memory ports: hand-off between workers, table swaps under
//! traffic, idle CPU use and stopping.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use common::SharedPort;
use dataplane::conntrack;
use dataplane::flow::{proto, Addr};
use dataplane::port::Port;
use dataplane::table::{Affinity, Backend, Local, Mode, Pool, ServiceSpec};
use dataplane::worker::{spawn_workers, total, IdlePolicy, WorkerConfig, WorkerHandle};
use dataplane::{wire, RoutingTable};

const VIP: [u8; 4] = [198, 18, 0, 100];
const SNAT: [u8; 4] = [198, 18, 0, 2];
const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 9, 9];

/// The tests measure process CPU time, so they must not run side by side.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn backend(last: u8) -> Backend {
    Backend {
        addr: Addr::v4([198, 18, 1, last]),
        port: 8080,
        weight: 1,
        mac: [2, 0, 0, 0, 1, last],
        pool: 0,
        stat: 0,
    }
}

/// One fullnat TCP service on VIP:80 over the backends `198.18.1.<last>`.
fn table(generation: u64, backends: &[u8]) -> RoutingTable {
    table_on(generation, Vec::new(), backends)
}

/// [`table`] for a balancer with the further interfaces `more`.
fn table_on(generation: u64, more: Vec<dataplane::table::Iface>, backends: &[u8]) -> RoutingTable {
    RoutingTable::new(
        generation,
        Local {
            mac: LB_MAC,
            addrs: vec![Addr::v4([198, 18, 0, 1])],
            mtu: 1500,
            snat_ports: (1024, 65535),
            more,
        },
        vec![ServiceSpec {
            stat: None,
            name: "web".into(),
            vip: Addr::v4(VIP),
            proto: proto::TCP,
            port_lo: 80,
            port_hi: 80,
            affinity: Affinity::None,
            table_size: 251,
            pools: vec![Pool {
                name: "pods".into(),
                mode: Mode::FullNat,
                snat: vec![Addr::v4(SNAT)],
                encap_src_v4: None,
                encap_src_v6: None,
                gue_port: 0,
            }],
            backends: backends.iter().map(|&b| backend(b)).collect(),
        }],
    )
    .unwrap()
}

fn ct() -> conntrack::Config {
    conntrack::Config {
        capacity: 8192,
        embryonic_budget: 4096,
        timeouts: conntrack::Timeouts::default(),
    }
}

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Ack,
}

fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: Flags) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64000);
    let b = match flags {
        Flags::Syn => b.syn(),
        Flags::SynAck => b.syn().ack(1001),
        Flags::Ack => b.ack(1),
    };
    let mut out = Vec::new();
    b.write(&mut out, b"x").unwrap();
    out
}

fn client(i: u32) -> ([u8; 4], u16) {
    (
        [10, 1, (i >> 8) as u8, i as u8],
        20_000 + (i % 40_000) as u16,
    )
}

/// Collects transmitted frames from `ports` until `n` arrived or `within` passed.
fn collect(ports: &[SharedPort], n: usize, within: Duration) -> Vec<Vec<u8>> {
    let end = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < end {
        for p in ports {
            got.extend(p.take_tx());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for p in ports {
        got.extend(p.take_tx());
    }
    got
}

fn octets(a: Addr) -> [u8; 4] {
    a.v4_octets()
}

fn spawn(
    ports: &[SharedPort],
    t: &Arc<ArcSwap<RoutingTable>>,
    idle: IdlePolicy,
) -> Vec<WorkerHandle> {
    let mut cfg = WorkerConfig::new(ct());
    cfg.idle = idle;
    let boxed: Vec<Box<dyn Port>> = ports
        .iter()
        .map(|p| Box::new(p.clone()) as Box<dyn Port>)
        .collect();
    spawn_workers(boxed, t.clone(), cfg).unwrap()
}

/// Stops every worker, asserting each joins within a second; returns the final snapshots.
fn stop_all(handles: Vec<WorkerHandle>) -> Vec<dataplane::worker::Snapshot> {
    let start = Instant::now();
    for h in &handles {
        h.stop();
    }
    let snaps: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        start.elapsed()
    );
    snaps
}

/// A long idle sleep: anything that waits for it instead of being woken blows the deadlines below.
const LONG_SLEEP: IdlePolicy = IdlePolicy::Adaptive {
    spin: 10,
    sleep: Duration::from_secs(5),
};

#[test]
fn replies_arriving_on_the_other_worker_are_handed_to_the_flow_owner() {
    let _g = serial();
    let t = Arc::new(ArcSwap::from_pointee(table(1, &[10, 11])));
    let ports = [SharedPort::new(), SharedPort::new()];
    let handles = spawn(&ports, &t, LONG_SLEEP);
    const N: u32 = 200;

    // Every request arrives on worker 0's port.
    ports[0].push((0..N).map(|i| {
        let (c, cp) = client(i);
        tcp(c, VIP, cp, 80, Flags::Syn)
    }));
    let fwd = collect(&ports, N as usize, Duration::from_secs(3));
    assert_eq!(fwd.len(), N as usize, "forwarded SYNs");

    // Every reply arrives on worker 1's port.
    let mut expect = HashMap::new();
    let replies: Vec<Vec<u8>> = fwd
        .iter()
        .map(|f| {
            let p = wire::parse(f).unwrap();
            assert_eq!(p.src, Addr::v4(SNAT));
            expect.insert(p.sport, ());
            tcp(
                octets(p.dst),
                octets(p.src),
                p.dport,
                p.sport,
                Flags::SynAck,
            )
        })
        .collect();
    assert_eq!(expect.len(), N as usize, "one SNAT port per flow");
    ports[1].push(replies);
    let back = collect(&ports, N as usize, Duration::from_secs(3));
    assert_eq!(back.len(), N as usize, "rewritten replies");
    let mut clients: Vec<(Addr, u16)> = back
        .iter()
        .map(|f| {
            let p = wire::parse(f).unwrap();
            assert_eq!(
                (p.src, p.sport),
                (Addr::v4(VIP), 80),
                "reply comes from the VIP"
            );
            assert!(wire::verify_l4_checksum(f, &p), "reply checksum");
            (p.dst, p.dport)
        })
        .collect();
    clients.sort();
    let mut want: Vec<(Addr, u16)> = (0..N)
        .map(|i| {
            let (c, cp) = client(i);
            (Addr::v4(c), cp)
        })
        .collect();
    want.sort();
    assert_eq!(clients, want);

    // The published counters show the flows, and both directions crossed workers.
    std::thread::sleep(Duration::from_millis(250));
    let live: Vec<_> = handles.iter().map(|h| (*h.counters()).clone()).collect();
    assert_eq!(total(&live).services[0].new_flows, u64::from(N));
    assert_eq!(live.iter().map(|s| s.flows).sum::<usize>(), N as usize);
    let snaps = stop_all(handles);
    assert!(snaps[0].stats.handed_off > 0, "requests owned by worker 1");
    assert!(snaps[1].stats.handed_off > 0, "replies owned by worker 0");
    let sum = |f: fn(&dataplane::worker::Snapshot) -> u64| snaps.iter().map(f).sum::<u64>();
    assert_eq!(
        sum(|s| s.stats.handed_off),
        sum(|s| s.stats.handoff_received)
    );
    assert_eq!(snaps.iter().map(|s| s.stats.handoff_full).sum::<u64>(), 0);
}

#[test]
fn a_table_swap_under_traffic_keeps_flows_and_reaches_new_ones() {
    let _g = serial();
    let t = Arc::new(ArcSwap::from_pointee(table(1, &[10, 11])));
    let ports = [SharedPort::new(), SharedPort::new()];
    let handles = spawn(&ports, &t, LONG_SLEEP);
    const N: u32 = 300;

    let syns = |range: std::ops::Range<u32>| {
        range
            .map(|i| {
                let (c, cp) = client(i);
                tcp(c, VIP, cp, 80, Flags::Syn)
            })
            .collect::<Vec<_>>()
    };
    let first = syns(0..N);
    ports[0].push(first[..N as usize / 2].to_vec());
    ports[1].push(first[N as usize / 2..].to_vec());
    let fwd = collect(&ports, N as usize, Duration::from_secs(3));
    assert_eq!(fwd.len(), N as usize);
    // Fullnat hides the client: a flow is known by its SNAT address and port.
    let backend_of: HashMap<(Addr, u16), Addr> = fwd
        .iter()
        .map(|f| {
            let p = wire::parse(f).unwrap();
            ((p.src, p.sport), p.dst)
        })
        .collect();
    assert_eq!(backend_of.len(), N as usize);

    // Swap in a table with a third backend while the established flows keep sending.
    t.store(Arc::new(table(2, &[10, 11, 12])));
    let acks: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let (c, cp) = client(i);
            tcp(c, VIP, cp, 80, Flags::Ack)
        })
        .collect();
    ports[1].push(acks[..N as usize / 2].to_vec());
    ports[0].push(acks[N as usize / 2..].to_vec());
    let again = collect(&ports, N as usize, Duration::from_secs(3));
    assert_eq!(again.len(), N as usize, "established flows still forwarded");
    let broken = again
        .iter()
        .filter(|f| {
            let p = wire::parse(f).unwrap();
            backend_of.get(&(p.src, p.sport)) != Some(&p.dst)
        })
        .count();
    assert_eq!(broken, 0, "flows moved to another backend by the swap");

    // New flows see the new table: the added backend gets some of them.
    ports[0].push(syns(N..2 * N));
    let fresh = collect(&ports, N as usize, Duration::from_secs(3));
    assert_eq!(fresh.len(), N as usize);
    let to_new = fresh
        .iter()
        .filter(|f| wire::parse(f).unwrap().dst == Addr::v4([198, 18, 1, 12]))
        .count();
    assert!(
        to_new > N as usize / 10,
        "only {to_new} new flows on the added backend"
    );
    let snaps = stop_all(handles);
    assert!(snaps.iter().all(|s| s.generation == 2));
}

fn process_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the rusage we pass.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[test]
fn an_idle_adaptive_worker_leaves_the_cpu_alone_and_a_polling_one_does_not() {
    let _g = serial();
    let t = Arc::new(ArcSwap::from_pointee(table(1, &[10, 11])));
    let measure = |idle: IdlePolicy| {
        let ports = [SharedPort::new(), SharedPort::new()];
        let handles = spawn(&ports, &t, idle);
        std::thread::sleep(Duration::from_millis(50)); // past the spin phase
        let (cpu0, wall0) = (process_cpu(), Instant::now());
        std::thread::sleep(Duration::from_millis(300));
        let share = (process_cpu() - cpu0).as_secs_f64() / wall0.elapsed().as_secs_f64();
        stop_all(handles);
        share
    };
    // Two workers idle for 300 ms: together under 30% of one core.
    let adaptive = measure(IdlePolicy::default());
    assert!(
        adaptive < 0.30,
        "adaptive idle workers used {:.0}% CPU",
        adaptive * 100.0
    );
    // The same measurement sees a spinning worker (even on a loaded machine it gets a fair share).
    let poll = measure(IdlePolicy::Poll);
    eprintln!("idle CPU of two workers: adaptive {adaptive:.3}, poll {poll:.3} of one core");
    assert!(poll > adaptive, "poll {poll:.2} vs adaptive {adaptive:.2}");
}

#[test]
fn stop_wakes_a_sleeping_worker() {
    let _g = serial();
    let t = Arc::new(ArcSwap::from_pointee(table(1, &[10])));
    let ports = [SharedPort::new()];
    let handles = spawn(
        &ports,
        &t,
        IdlePolicy::Adaptive {
            spin: 0,
            sleep: Duration::from_secs(30),
        },
    );
    std::thread::sleep(Duration::from_millis(100));
    stop_all(handles); // asserts < 1 s although the worker sleeps 30 s at a time
}

/// Waits until every handle reports generation `g`; returns how long that took.
fn until_generation(handles: &[WorkerHandle], g: u64, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if handles.iter().all(|h| h.generation() == g) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    None
}

#[test]
fn every_worker_reports_a_new_table_quickly_and_keeps_no_reference_to_the_old_one() {
    let _g = serial();
    let t = Arc::new(ArcSwap::from_pointee(table(1, &[10, 11])));
    let ports = [SharedPort::new(), SharedPort::new(), SharedPort::new()];
    // Default idling: workers sleep at most 1 ms, so they pick a new table up within a sleep.
    let handles = spawn(&ports, &t, IdlePolicy::default());
    assert!(
        until_generation(&handles, 1, Duration::from_secs(2)).is_some(),
        "workers never adopted the first table"
    );
    std::thread::sleep(Duration::from_millis(50)); // idle now, past the spin phase
    let mut worst = Duration::ZERO;
    for g in 2..12u64 {
        let old = t.swap(Arc::new(table(g, &[10, 11, (g % 3) as u8 + 12])));
        let took = until_generation(&handles, g, Duration::from_secs(1))
            .unwrap_or_else(|| panic!("generation {g} did not reach every worker within 1 s"));
        worst = worst.max(took);
        // The control plane holds the last reference: dropping it here frees the table, never
        // a worker's burst.
        assert_eq!(
            Arc::strong_count(&old),
            1,
            "a worker still holds generation {}",
            g - 1
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("reload to 3 idle workers (1 ms sleeps): worst {worst:?}");
    assert!(worst < Duration::from_millis(100), "worst {worst:?}");
    stop_all(handles);

    // Workers in long sleeps are woken by the control plane instead of waiting 5 s.
    let handles = spawn(&ports, &t, LONG_SLEEP);
    assert!(until_generation(&handles, 11, Duration::from_secs(2)).is_some());
    std::thread::sleep(Duration::from_millis(100)); // asleep by now
    let old = t.swap(Arc::new(table(12, &[10])));
    for h in &handles {
        h.wake();
    }
    let took = until_generation(&handles, 12, Duration::from_secs(1))
        .expect("woken workers adopt the new table");
    eprintln!("reload to 3 woken workers (5 s sleeps): {took:?}");
    assert_eq!(Arc::strong_count(&old), 1);
    stop_all(handles);
}

/// Our MAC on the inside interface of the two-interface tests.
const LB_MAC_IN: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// [`table`] for a two-armed balancer: interface 0 (outside, `LB_MAC`) and interface 1 (inside,
/// `LB_MAC_IN`, owning 198.18.1.1), the backends on the inside link with static MACs.
fn two_armed_table() -> RoutingTable {
    use dataplane::neighbor::NeighborCache;
    use dataplane::table::{Iface, Link, NeighborSpec, Prefix};
    let mut t = table_on(
        1,
        vec![Iface {
            mac: LB_MAC_IN,
            addrs: vec![Addr::v4([198, 18, 1, 1])],
        }],
        &[10, 11],
    );
    t.set_neighbors(NeighborSpec {
        cache: Arc::new(NeighborCache::new(16)),
        links: vec![
            Link::default(),
            Link {
                on_link: vec![Prefix {
                    addr: Addr::v4([198, 18, 1, 0]),
                    len: 24,
                }],
                ..Link::default()
            },
        ],
        statics: [10u8, 11]
            .iter()
            .map(|&b| (Addr::v4([198, 18, 1, b]), [2, 0, 0, 0, 1, b]))
            .collect(),
        pinned: Vec::new(),
    })
    .unwrap();
    t
}

/// An ARP request from `sha`/`spa` for `tpa`.
fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    wire::write_eth(&mut f, [0xff; 6], sha, None, wire::ETHERTYPE_ARP).unwrap();
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa);
    f[38..42].copy_from_slice(&tpa);
    f
}

#[test]
fn two_interfaces_clients_outside_backends_inside_and_replies_back_out() {
    let _g = serial();
    let t = Arc::new(ArcSwap::from_pointee(two_armed_table()));
    // Two workers, each polling one queue of each interface.
    let outside = [SharedPort::new(), SharedPort::new()];
    let inside = [SharedPort::new(), SharedPort::new()];
    let queues = |ports: &[SharedPort]| -> Vec<Box<dyn Port>> {
        ports
            .iter()
            .map(|p| Box::new(p.clone()) as Box<dyn Port>)
            .collect()
    };
    let mut cfg = WorkerConfig::new(ct());
    cfg.idle = LONG_SLEEP;
    let handles = dataplane::worker::spawn_workers_on(
        vec![queues(&outside), queues(&inside)],
        t.clone(),
        cfg,
    )
    .unwrap();
    const N: u32 = 100;

    // Requests arrive outside and leave inside, from our inside MAC to the backends' MACs.
    outside[0].push((0..N).map(|i| {
        let (c, cp) = client(i);
        tcp(c, VIP, cp, 80, Flags::Syn)
    }));
    let fwd = collect(&inside, N as usize, Duration::from_secs(3));
    assert_eq!(fwd.len(), N as usize, "SYNs forwarded inside");
    assert!(collect(&outside, 1, Duration::from_millis(50)).is_empty());
    let replies: Vec<Vec<u8>> = fwd
        .iter()
        .map(|f| {
            assert_eq!(&f[6..12], &LB_MAC_IN, "source MAC of the inside interface");
            assert!(f[..6] == [2, 0, 0, 0, 1, 10] || f[..6] == [2, 0, 0, 0, 1, 11]);
            let p = wire::parse(f).unwrap();
            tcp(
                octets(p.dst),
                octets(p.src),
                p.dport,
                p.sport,
                Flags::SynAck,
            )
        })
        .collect();
    // Replies arrive inside, on worker 1's queue (half belong to worker 0: handed over), and
    // leave outside to the client's MAC from our outside MAC.
    inside[1].push(replies);
    let back = collect(&outside, N as usize, Duration::from_secs(3));
    assert_eq!(back.len(), N as usize, "replies sent outside");
    assert!(collect(&inside, 1, Duration::from_millis(50)).is_empty());
    for f in &back {
        assert_eq!((&f[..6], &f[6..12]), (&CLIENT_MAC[..], &LB_MAC[..]));
        let p = wire::parse(f).unwrap();
        assert_eq!((p.src, p.sport), (Addr::v4(VIP), 80));
    }

    // Our inside address is answered inside only; the VIP on both interfaces.
    let asker = [2, 0, 0, 0, 7, 7];
    outside[0].push([arp_request(asker, [198, 18, 0, 9], [198, 18, 1, 1])]);
    inside[0].push([arp_request(asker, [198, 18, 1, 9], [198, 18, 1, 1])]);
    outside[1].push([arp_request(asker, [198, 18, 0, 9], VIP)]);
    let answered_in = collect(&inside, 1, Duration::from_secs(2));
    let answered_out = collect(&outside, 1, Duration::from_secs(2));
    assert_eq!(answered_in.len(), 1, "inside address, asked inside");
    assert_eq!(&answered_in[0][22..28], &LB_MAC_IN, "ARP sender MAC");
    assert_eq!(answered_out.len(), 1, "only the VIP is answered outside");
    assert_eq!(&answered_out[0][28..32], &VIP, "the answer is for the VIP");
    assert_eq!(&answered_out[0][22..28], &LB_MAC);

    let snaps = stop_all(handles);
    let crossed: u64 = snaps.iter().map(|s| s.stats.crossed).sum();
    assert_eq!(crossed, 2 * u64::from(N), "every forwarded frame crossed");
    assert!(snaps.iter().map(|s| s.stats.handed_off).sum::<u64>() > 0);
}

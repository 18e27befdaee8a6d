//! What the pipeline does with what a reload removed and the control plane keeps draining
//! (`[dataplane] on_remove = "drain"`): a removed backend stays in its service at weight 0 and a
//! removed service stays in the table marked draining. Their tracked flows keep their backend;
//! new flows never reach them; once they leave the table (drain over, or `on_remove = "reset"`)
//! their flows end.

use dataplane::conntrack::tcp_flags::{ACK as TCP_ACK, SYN as TCP_SYN};
use dataplane::conntrack::{self, Millis, Timeouts};
use dataplane::flow::{proto, Addr};
use dataplane::table::{MaglevCache, Mode, ServiceSpec};
use dataplane::{process, wire, DropReason, PacketBuf, RoutingTable, Verdict, WorkerState};
use testkit::sample;

const HEAD: usize = 128;
const WEB: Addr = Addr::v4([198, 18, 0, 100]);
const API: Addr = Addr::v4([198, 18, 0, 110]);

fn state() -> WorkerState {
    WorkerState::new(
        0,
        1,
        conntrack::Config {
            capacity: 1 << 14,
            embryonic_budget: 1 << 12,
            timeouts: Timeouts::default(),
        },
    )
}

fn run(st: &mut WorkerState, t: &RoutingTable, now: Millis, f: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; HEAD + f.len() + 1600];
    buf[HEAD..HEAD + f.len()].copy_from_slice(f);
    let mut p = PacketBuf::new(&mut buf, HEAD, f.len());
    let v = process(st, t, now, &mut p);
    (v, p.data().to_vec())
}

fn tcp(src: Addr, dst: Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = vec![0u8; 128];
    let n = sample::tcp4(&mut f, src, dst, sport, dport, flags, 10);
    f.truncate(n);
    f
}

fn client(i: u32) -> Addr {
    Addr::v4([198, 19, (i >> 8) as u8, i as u8])
}

/// A fullnat service on `vip` port 80 with backends 198.18.`net`.`h`:8080 at their weights.
fn svc(name: &str, vip: Addr, net: u8, backends: &[(u8, u32)]) -> ServiceSpec {
    let pool = sample::pool(Mode::FullNat, vec![sample::SNAT]);
    sample::service(
        name,
        vip,
        proto::TCP,
        (80, 80),
        pool,
        sample::backends_v4(net, backends, 8080),
    )
}

fn table(generation: u64, live: Vec<ServiceSpec>, draining: Vec<ServiceSpec>) -> RoutingTable {
    RoutingTable::build_with_draining(
        generation,
        sample::local_v4(),
        live,
        draining,
        &mut MaglevCache::default(),
    )
    .unwrap()
}

/// The rewritten destination of a transmitted IPv4 frame.
fn dest(out: &[u8]) -> [u8; 4] {
    [out[30], out[31], out[32], out[33]]
}

/// An ARP request from a client for `ip`.
fn arp_request(ip: Addr) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    let sha = [0x02, 0, 0, 0, 0, 0x77];
    wire::write_eth(&mut f, [0xff; 6], sha, None, wire::ETHERTYPE_ARP).unwrap();
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&[198, 19, 0, 1]);
    f[38..42].copy_from_slice(&ip.v4_octets());
    f
}

#[test]
fn a_removed_backend_at_weight_zero_keeps_its_flows_and_gets_no_new_ones() {
    let all: Vec<(u8, u32)> = (10..14).map(|h| (h, 1)).collect();
    let t1 = table(1, vec![svc("web", WEB, 1, &all)], vec![]);
    let mut st = state();
    let mut flows = Vec::new();
    for i in 0..200 {
        let (v, out) = run(&mut st, &t1, 0, &tcp(client(i), WEB, 6000, 80, TCP_SYN));
        assert_eq!(v, Verdict::Tx);
        flows.push((i, dest(&out)));
    }
    let removed = [198, 18, 1, 13];
    assert!(flows.iter().any(|(_, d)| *d == removed));
    // Generation 2: the control plane keeps the removed backend at weight 0.
    let drained: Vec<(u8, u32)> = all
        .iter()
        .map(|&(h, w)| (h, if h == 13 { 0 } else { w }))
        .collect();
    let t2 = table(2, vec![svc("web", WEB, 1, &drained)], vec![]);
    for (i, d) in &flows {
        let (v, out) = run(&mut st, &t2, 1, &tcp(client(*i), WEB, 6000, 80, TCP_ACK));
        assert_eq!(v, Verdict::Tx, "flow {i} to {d:?}");
        assert_eq!(dest(&out), *d, "flow {i} changed backend");
    }
    for i in 1000..1400 {
        let (v, out) = run(&mut st, &t2, 2, &tcp(client(i), WEB, 6000, 80, TCP_SYN));
        assert_eq!(v, Verdict::Tx);
        assert_ne!(dest(&out), removed, "a new flow picked the removed backend");
    }
    // Generation 3: the drain is over (or `on_remove = "reset"`): its flows end.
    let t3 = table(3, vec![svc("web", WEB, 1, &all[..3])], vec![]);
    let on_removed = flows.iter().find(|(_, d)| *d == removed).unwrap().0;
    let (v, _) = run(
        &mut st,
        &t3,
        3,
        &tcp(client(on_removed), WEB, 6000, 80, TCP_ACK),
    );
    assert_eq!(v, Verdict::Drop(DropReason::BackendGone));
}

#[test]
fn a_draining_service_keeps_its_flows_answers_arp_and_refuses_new_ones() {
    let web = || svc("web", WEB, 1, &[(10, 1), (11, 1)]);
    let t1 = table(1, vec![web(), svc("api", API, 2, &[(10, 1)])], vec![]);
    let mut st = state();
    let c = client(7);
    let (v, out) = run(&mut st, &t1, 0, &tcp(c, API, 7000, 80, TCP_SYN));
    assert_eq!(v, Verdict::Tx);
    assert_eq!(dest(&out), [198, 18, 2, 10]);
    let p = wire::parse(&out).unwrap();

    // Generation 2: api is removed and drains.
    let t2 = table(2, vec![web()], vec![svc("api", API, 2, &[(10, 0)])]);
    let (v, out) = run(&mut st, &t2, 1, &tcp(c, API, 7000, 80, TCP_ACK));
    assert_eq!(v, Verdict::Tx, "the tracked flow lost its backend");
    assert_eq!(dest(&out), [198, 18, 2, 10]);
    // The backend's answer still reaches the client, from the VIP.
    let (v, back) = run(
        &mut st,
        &t2,
        1,
        &tcp(p.dst, p.src, p.dport, p.sport, TCP_ACK),
    );
    assert_eq!(v, Verdict::Tx);
    let q = wire::parse(&back).unwrap();
    assert_eq!((q.src, q.sport, q.dst, q.dport), (API, 80, c, 7000));
    // New flows find no service; the VIP is still ours (ARP), and web serves on.
    let (v, _) = run(&mut st, &t2, 1, &tcp(client(8), API, 7001, 80, TCP_SYN));
    assert_eq!(v, Verdict::Drop(DropReason::NoService));
    let (v, _) = run(&mut st, &t2, 1, &arp_request(API));
    assert_eq!(v, Verdict::Tx, "the draining VIP's ARP went unanswered");
    let (v, _) = run(&mut st, &t2, 1, &tcp(client(8), WEB, 7001, 80, TCP_SYN));
    assert_eq!(v, Verdict::Tx);

    // Generation 3: restored, the flow never noticed, and new flows are served again.
    let t3 = table(3, vec![web(), svc("api", API, 2, &[(10, 1)])], vec![]);
    let (v, out) = run(&mut st, &t3, 2, &tcp(c, API, 7000, 80, TCP_ACK));
    assert_eq!((v, dest(&out)), (Verdict::Tx, [198, 18, 2, 10]));
    let (v, _) = run(&mut st, &t3, 2, &tcp(client(9), API, 7002, 80, TCP_SYN));
    assert_eq!(v, Verdict::Tx);

    // Generation 4: removed for good (drain over, or `on_remove = "reset"`): the flow ends.
    let t4 = table(4, vec![web()], vec![]);
    let (v, _) = run(&mut st, &t4, 3, &tcp(c, API, 7000, 80, TCP_ACK));
    assert_eq!(v, Verdict::Drop(DropReason::BackendGone));
}

#[test]
fn a_draining_service_never_shadows_a_live_one() {
    // `api` was removed and `api2` now serves its VIP and port with another backend.
    let t = table(
        1,
        vec![svc("api2", API, 3, &[(20, 1)])],
        vec![svc("api", API, 2, &[(10, 0)])],
    );
    let (_, live) = t.service_for(API, proto::TCP, 80).unwrap();
    assert_eq!(live.name, "api2");
    assert!(!live.draining);
    assert!(t.draining_service_for(API, proto::TCP, 80).is_none());
    let mut st = state();
    let (v, out) = run(&mut st, &t, 0, &tcp(client(1), API, 7000, 80, TCP_SYN));
    assert_eq!((v, dest(&out)), (Verdict::Tx, [198, 18, 3, 20]));
}

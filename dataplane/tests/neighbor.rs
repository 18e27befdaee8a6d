//! Dynamic neighbor resolution end to end through a worker thread: a backend starts unresolved,
//! the first SYN is dropped and counted, the resolver's ARP request (IPv4) or neighbor
//! solicitation (IPv6) leaves the port, the answer is fed in, and the retried SYN goes to the
//! learned MAC.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use common::SharedPort;
use dataplane::conntrack;
use dataplane::flow::{proto, Addr};
use dataplane::neighbor::NeighborCache;
use dataplane::port::Port;
use dataplane::table::{Affinity, Backend, Local, Mode, NeighborSpec, Pool, Prefix, ServiceSpec};
use dataplane::worker::{spawn_workers, IdlePolicy, WorkerConfig, WorkerHandle};
use dataplane::{wire, DropReason, RoutingTable};
use etherparse::{Icmpv6Type, LinkSlice, NetSlice, SlicedPacket, TransportSlice};

const LB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 9, 9];
const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 0xb, 0x0a];
const LB4: [u8; 4] = [198, 18, 0, 1];
const VIP4: [u8; 4] = [198, 18, 0, 100];
const SNAT4: [u8; 4] = [198, 18, 0, 2];
const BACKEND4: [u8; 4] = [198, 18, 1, 10];

fn v6(net: u8, last: u8) -> [u8; 16] {
    [0x20, 1, 0xd, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]
}

/// One fullnat TCP service on port 80 over one backend on the link, resolved dynamically.
fn table(vip: Addr, snat: Addr, backend: Addr, cache: &Arc<NeighborCache>) -> RoutingTable {
    let mut t = RoutingTable::new(
        1,
        Local {
            mac: LB_MAC,
            addrs: vec![Addr::v4(LB4), Addr::v6(v6(0, 1))],
            mtu: 1500,
            snat_ports: (1024, 65535),
            more: Vec::new(),
        },
        vec![ServiceSpec {
            stat: None,
            name: "web".into(),
            vip,
            proto: proto::TCP,
            port_lo: 80,
            port_hi: 80,
            affinity: Affinity::None,
            table_size: 251,
            pools: vec![Pool {
                name: "pods".into(),
                mode: Mode::FullNat,
                snat: vec![snat],
                encap_src_v4: None,
                encap_src_v6: None,
                gue_port: 0,
            }],
            backends: vec![Backend {
                addr: backend,
                port: 8080,
                weight: 1,
                mac: [0; 6], // unused: the next hop is resolved
                pool: 0,
                stat: 0,
            }],
        }],
    )
    .unwrap();
    t.set_neighbors(NeighborSpec::one(
        cache.clone(),
        vec![
            Prefix {
                addr: Addr::v4([198, 18, 0, 0]),
                len: 16,
            },
            Prefix {
                addr: Addr::v6(v6(0, 0)),
                len: 32,
            },
        ],
        None,
        None,
        vec![],
    ))
    .unwrap();
    t
}

fn spawn(port: &SharedPort, t: RoutingTable) -> Vec<WorkerHandle> {
    let cfg = WorkerConfig::new(conntrack::Config {
        capacity: 1024,
        embryonic_budget: 512,
        timeouts: conntrack::Timeouts::default(),
    });
    let ports: Vec<Box<dyn Port>> = vec![Box::new(port.clone())];
    let mut cfg = cfg;
    cfg.idle = IdlePolicy::default();
    spawn_workers(ports, Arc::new(ArcSwap::from_pointee(t)), cfg).unwrap()
}

/// Waits up to `within` for a transmitted frame that `want` accepts; returns it.
fn wait_tx(port: &SharedPort, within: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(f) = port.take_tx().into_iter().find(|f| want(f)) {
            return Some(f);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn wait_until(within: Duration, cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// The MAC of the cache's only entry.
fn learned(cache: &NeighborCache) -> Option<[u8; 6]> {
    cache.entries().first().and_then(|(_, e)| e.mac)
}

fn no_neighbor_drops(h: &WorkerHandle) -> u64 {
    h.counters().counters.dropped(DropReason::NoNeighbor)
}

#[test]
fn an_ipv4_backend_is_resolved_by_arp_before_its_first_flow_is_forwarded() {
    let cache = Arc::new(NeighborCache::new(16));
    let t = table(Addr::v4(VIP4), Addr::v4(SNAT4), Addr::v4(BACKEND4), &cache);
    let port = SharedPort::new();
    let handles = spawn(&port, t);
    let syn = || {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4([10, 1, 0, 1], VIP4, 64)
            .tcp(20_000, 80, 1000, 64000)
            .syn()
            .write(&mut f, b"")
            .unwrap();
        f
    };
    port.push([syn()]);
    assert!(
        wait_until(Duration::from_secs(2), || no_neighbor_drops(&handles[0])
            == 1),
        "the first SYN is dropped as no-neighbor"
    );
    // The resolver asks for the backend: broadcast, from our address and MAC.
    let req = wait_tx(&port, Duration::from_secs(2), |f| {
        f.get(12..14) == Some(&[0x08, 0x06])
    })
    .expect("an ARP request leaves the port");
    let eth = etherparse::Ethernet2Header::from_slice(&req).unwrap().0;
    assert_eq!((eth.destination, eth.source), ([0xff; 6], LB_MAC));
    let arp = etherparse::ArpPacket::from_slice(&req[14..])
        .unwrap()
        .try_eth_ipv4()
        .unwrap();
    assert_eq!(arp.operation, etherparse::ArpOperation::REQUEST);
    assert_eq!((arp.sender_mac, arp.sender_ipv4), (LB_MAC, LB4));
    assert_eq!(arp.target_ipv4, BACKEND4);
    // The backend answers.
    let mut reply = Vec::new();
    etherparse::PacketBuilder::ethernet2(BACKEND_MAC, LB_MAC)
        .arp(
            etherparse::ArpPacket::new(
                etherparse::ArpHardwareId::ETHERNET,
                etherparse::EtherType::IPV4,
                etherparse::ArpOperation::REPLY,
                &BACKEND_MAC,
                &BACKEND4,
                &LB_MAC,
                &LB4,
            )
            .unwrap(),
        )
        .write(&mut reply)
        .unwrap();
    port.push([reply]);
    assert!(
        wait_until(Duration::from_secs(2), || learned(&cache)
            == Some(BACKEND_MAC)),
        "the reply is learned"
    );
    // The client retries its SYN: forwarded to the backend's learned MAC.
    port.push([syn()]);
    let fwd = wait_tx(&port, Duration::from_secs(2), |f| {
        wire::parse(f).is_ok_and(|p| p.dst == Addr::v4(BACKEND4))
    })
    .expect("the retried SYN is forwarded");
    assert_eq!(&fwd[..6], &BACKEND_MAC);
    assert_eq!(&fwd[6..12], &LB_MAC);
    let snap = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .next()
        .unwrap();
    assert_eq!(snap.counters.dropped(DropReason::NoNeighbor), 1);
    assert!(snap.stats.neighbor_probes >= 1);
}

#[test]
fn an_ipv6_backend_is_resolved_by_neighbor_discovery_before_its_first_flow_is_forwarded() {
    let cache = Arc::new(NeighborCache::new(16));
    let (vip, snat, backend) = (v6(0, 0x64), v6(0, 2), v6(1, 0x0a));
    let t = table(Addr::v6(vip), Addr::v6(snat), Addr::v6(backend), &cache);
    let port = SharedPort::new();
    let handles = spawn(&port, t);
    let client = v6(9, 1);
    let syn = || {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv6(client, vip, 64)
            .tcp(20_000, 80, 1000, 64000)
            .syn()
            .write(&mut f, b"")
            .unwrap();
        f
    };
    port.push([syn()]);
    assert!(
        wait_until(Duration::from_secs(2), || no_neighbor_drops(&handles[0])
            == 1),
        "the first SYN is dropped as no-neighbor"
    );
    let ns = wait_tx(&port, Duration::from_secs(2), |f| {
        SlicedPacket::from_ethernet(f).is_ok_and(|p| {
            matches!(&p.transport, Some(TransportSlice::Icmpv6(i))
                if i.icmp_type() == Icmpv6Type::NeighborSolicitation)
        })
    })
    .expect("a neighbor solicitation leaves the port");
    let p = SlicedPacket::from_ethernet(&ns).unwrap();
    let Some(LinkSlice::Ethernet2(eth)) = &p.link else {
        panic!("not Ethernet II")
    };
    assert_eq!(eth.destination(), [0x33, 0x33, 0xff, 0, 0, 0x0a]);
    assert_eq!(eth.source(), LB_MAC);
    let Some(NetSlice::Ipv6(ip)) = &p.net else {
        panic!("not IPv6")
    };
    let group = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0x0a];
    assert_eq!(ip.header().destination(), group);
    assert_eq!(ip.header().source(), v6(0, 1));
    assert_eq!(ip.header().hop_limit(), 255);
    let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
        panic!("not ICMPv6")
    };
    assert!(icmp.is_checksum_valid(v6(0, 1), group));
    assert_eq!(&icmp.payload()[..16], &backend, "target");
    assert_eq!(
        &icmp.payload()[16..24],
        &[1, 1, 2, 0, 0, 0, 0, 1],
        "source link-layer option"
    );
    // The backend advertises itself (solicited, override) with its target link-layer address.
    let mut na = Vec::new();
    let mut body = backend.to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&BACKEND_MAC);
    etherparse::PacketBuilder::ethernet2(BACKEND_MAC, LB_MAC)
        .ipv6(backend, v6(0, 1), 255)
        .icmpv6(Icmpv6Type::NeighborAdvertisement(
            etherparse::icmpv6::NeighborAdvertisementHeader {
                router: false,
                solicited: true,
                r#override: true,
            },
        ))
        .write(&mut na, &body)
        .unwrap();
    port.push([na]);
    assert!(
        wait_until(Duration::from_secs(2), || learned(&cache)
            == Some(BACKEND_MAC)),
        "the advertisement is learned"
    );
    port.push([syn()]);
    let fwd = wait_tx(&port, Duration::from_secs(2), |f| {
        wire::parse(f).is_ok_and(|p| p.dst == Addr::v6(backend))
    })
    .expect("the retried SYN is forwarded");
    assert_eq!(&fwd[..6], &BACKEND_MAC);
    let snap = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .next()
        .unwrap();
    assert_eq!(snap.counters.dropped(DropReason::NoNeighbor), 1);
}

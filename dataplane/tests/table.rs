//! Routing table next hops on the sample table.

use dataplane::flow::Addr;
use dataplane::neighbor::NeighborCache;
use dataplane::table::*;
use std::sync::Arc;
use testkit::sample;

fn v6(last: u8) -> Addr {
    Addr::v6([0x20, 1, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, last])
}

#[test]
fn next_hops_are_the_backend_on_link_the_gateway_off_link_and_statics_stay_static() {
    let cache = Arc::new(NeighborCache::new(16));
    let mut t = sample::table(1, 2);
    let gw4 = Addr::v4([198, 18, 0, 254]);
    t.set_neighbors(NeighborSpec::one(
        cache.clone(),
        // Only the fullnat backends' net (198.18.1.0/24) and our own net are on the link.
        vec![
            Prefix {
                addr: Addr::v4([198, 18, 1, 0]),
                len: 24,
            },
            Prefix {
                addr: Addr::v4([198, 18, 0, 0]),
                len: 24,
            },
        ],
        Some(gw4),
        None,
        // One static backend on the nat net, which makes it on-link.
        vec![(Addr::v4([198, 18, 3, 10]), [2, 0, 0, 0, 0xee, 0xee])],
    ))
    .unwrap();
    let hop_addr = |svc: usize, b: usize| {
        let s = &t.services[svc];
        s.next_hop(b).map(|i| t.next_hops()[i as usize].addr)
    };
    // fullnat: each backend resolves itself, probed from our address on that link.
    assert_eq!(hop_addr(0, 0), Some(Addr::v4([198, 18, 1, 10])));
    assert_eq!(hop_addr(0, 1), Some(Addr::v4([198, 18, 1, 11])));
    let nh = t.next_hop_by_addr(Addr::v4([198, 18, 1, 10])).unwrap();
    assert_eq!(nh.src, Addr::v4([198, 18, 0, 1]));
    // dsr-ipip backends are off the link: both go through the one gateway slot.
    assert_eq!(hop_addr(1, 0), Some(gw4));
    assert_eq!(hop_addr(1, 1), Some(gw4));
    assert_eq!(t.next_hops().iter().filter(|h| h.addr == gw4).count(), 1);
    // nat: the static one uses its static MAC, the other the gateway.
    let nat = &t.services[2];
    let si = nat.backend_index(Addr::v4([198, 18, 3, 10]), 8080).unwrap() as usize;
    assert_eq!(nat.next_hop(si), None);
    assert_eq!(nat.backends[si].mac, [2, 0, 0, 0, 0xee, 0xee]);
    // IPv6 off the link without an IPv6 gateway keeps its configured MAC.
    let s6 = &t.services[5];
    assert_eq!(s6.next_hop(0), None);
    assert_eq!(s6.backends[0].mac, [2, 0, 0, 0, 6, 10]);
    // Slots are shared by table generations: a rebuilt table binds the same ones.
    let mut t2 = sample::table(2, 2);
    t2.set_neighbors(NeighborSpec::one(
        cache.clone(),
        vec![Prefix {
            addr: Addr::v4([198, 18, 1, 0]),
            len: 24,
        }],
        Some(gw4),
        None,
        vec![],
    ))
    .unwrap();
    for nh in t2.next_hops() {
        assert_eq!(t.next_hop_by_addr(nh.addr).map(|h| h.hop), Some(nh.hop));
    }
}

#[test]
fn a_full_cache_or_no_source_address_is_an_error_naming_the_next_hop() {
    let mut t = sample::table(1, 3);
    let err = t
        .set_neighbors(NeighborSpec::one(
            Arc::new(NeighborCache::new(2)),
            vec![Prefix {
                addr: Addr::v4([198, 18, 1, 0]),
                len: 24,
            }],
            None,
            None,
            vec![],
        ))
        .unwrap_err();
    assert!(err.to_string().contains("198.18.1.12"), "{err}");
    // An IPv6 backend, but only IPv4 addresses of ours to probe from.
    let mut t = RoutingTable::new(
        1,
        Local {
            mac: [2, 0, 0, 0, 0, 1],
            addrs: vec![Addr::v4([198, 18, 0, 1])],
            mtu: 1500,
            snat_ports: (1024, 65535),
            more: Vec::new(),
        },
        vec![ServiceSpec {
            name: "six".into(),
            vip: v6(100),
            proto: 6,
            port_lo: 80,
            port_hi: 80,
            affinity: Affinity::None,
            table_size: 251,
            pools: vec![Pool {
                name: "p".into(),
                mode: Mode::DsrIpip,
                snat: vec![],
                encap_src_v4: None,
                encap_src_v6: Some(v6(1)),
                gue_port: 0,
            }],
            backends: vec![Backend {
                addr: v6(10),
                port: 0,
                weight: 1,
                mac: [0; 6],
                pool: 0,
                stat: 0,
            }],
            stat: None,
        }],
    )
    .unwrap();
    let err = t
        .set_neighbors(NeighborSpec::one(
            Arc::new(NeighborCache::new(2)),
            vec![],
            None,
            Some(v6(1)),
            vec![],
        ))
        .unwrap_err();
    assert!(
        matches!(err, TableError::NoProbeSource { addr } if addr == v6(1)),
        "{err}"
    );
}

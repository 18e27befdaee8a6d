//! What a valid config compiles into.

use std::net::IpAddr;
use std::path::Path;

use dataplane::flow::Addr;
use dataplane::table::MaglevCache;

use super::*;

const BASE: &str = r#"
[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
"#;

fn cfg(extra: &str) -> Config {
    Config::from_toml_str(&format!("{BASE}{extra}"), Path::new("t.toml"))
        .unwrap_or_else(|r| panic!("{}", r.render()))
}

#[test]
fn run_settings_default_to_one_core_per_worker() {
    let c = compile(&cfg("workers = 3\n"), 1).unwrap();
    assert_eq!(c.run.cores, vec![0, 1, 2]);
    assert_eq!(c.run.interface, "lb0");
    assert_eq!(c.run.port, config::PortKind::Tap);
    let c = compile(
        &cfg("workers = 2\ncores = [1, 3]\nport = \"af_packet\"\n"),
        1,
    )
    .unwrap();
    assert_eq!(c.run.cores, vec![1, 3]);
    assert_eq!(c.run.port, config::PortKind::AfPacket);
}

#[test]
fn every_port_service_and_weights() {
    let c = compile(
        &cfg(r#"
[[services]]
name = "all"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "nat"
weight = 3
backends = [{ addr = "198.18.1.10", weight = 2 }, { addr = "198.18.1.11", weight = 0 }]
"#),
        7,
    )
    .unwrap();
    assert_eq!(c.table.generation, 7);
    let s = &c.table.services[0];
    assert_eq!((s.port_lo, s.port_hi, s.proto), (0, 0, 6));
    let weights: Vec<u32> = s.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, vec![6, 0]);
    assert_eq!(s.backends[0].mac, [2, 0, 0, 0, 0, 0xfe]);
    assert_eq!(s.backends[0].port, 0);
    assert!(c
        .table
        .service_for(Addr::v4([198, 18, 0, 100]), 6, 12345)
        .is_some());
}

#[test]
fn port_list_becomes_one_spec_per_range() {
    let c = compile(
        &cfg(r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "udp"
ports = ["53", "8000-8002"]
[[services.pools]]
name = "p"
mode = "nat"
backends = [{ addr = "198.18.1.10" }]
"#),
        1,
    )
    .unwrap();
    let vip = Addr::v4([198, 18, 0, 100]);
    for port in [53, 8000, 8001, 8002] {
        assert!(c.table.service_for(vip, 17, port).is_some(), "{port}");
    }
    for port in [54, 7999, 8003] {
        assert!(c.table.service_for(vip, 17, port).is_none(), "{port}");
    }
    assert!(c.table.service_for(vip, 6, 53).is_none());
}

#[test]
fn neighbor_mac_wins_over_gateway() {
    let c = compile(
        &cfg(r#"
[[neighbors]]
ip = "198.18.1.10"
mac = "02:00:00:00:01:0a"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "dr"
backends = [{ addr = "198.18.1.10" }, { addr = "198.18.1.11" }]
"#),
        1,
    )
    .unwrap();
    let macs: Vec<[u8; 6]> = c.table.services[0].backends.iter().map(|b| b.mac).collect();
    assert_eq!(macs, vec![[2, 0, 0, 0, 1, 0x0a], [2, 0, 0, 0, 0, 0xfe]]);
}

#[test]
fn dsr_pools_get_an_outer_source_of_each_family() {
    // IPv4 VIP, IPv6 backend: fine once there is an IPv6 outer source.
    let c = compile(
        &cfg(r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "vms"
mode = "dsr-ipip"
encap_source = ["2001:db8::1"]
backends = [{ addr = "2001:db8::10" }, { addr = "198.18.2.10" }]
"#),
        1,
    )
    .unwrap();
    let pool = &c.table.services[0].pools[0];
    assert_eq!(
        pool.encap_src_v6,
        Some(Addr::from("2001:db8::1".parse::<IpAddr>().unwrap()))
    );
    // No IPv4 encap_source: the first dataplane IPv4 address.
    assert_eq!(pool.encap_src_v4, Some(Addr::v4([198, 18, 0, 1])));
}

#[test]
fn conntrack_settings_reach_the_workers() {
    let c = compile(
        &cfg("[conntrack]\ncapacity = 1024\n[conntrack.timeouts]\ntcp_syn = \"750ms\"\n"),
        1,
    )
    .unwrap();
    assert_eq!(c.conntrack.capacity, 1024);
    assert_eq!(c.conntrack.embryonic_budget, 256);
    assert_eq!(c.conntrack.timeouts.tcp_syn, 750);
    assert_eq!(c.conntrack.timeouts.udp, 30_000);
    assert_eq!(c.workers, 1);
    assert_eq!(c.table.local.snat_ports, (1024, 65535));
}

/// (service, port, backend address) and its (service slot, backend slot).
type Slotted = ((String, u16, String), (u32, u32));

#[test]
fn counter_slots_stay_with_their_service_and_backend_across_compiles() {
    let svc = |name: &str, vip: &str, backends: &[&str]| {
        let list: Vec<String> = backends
            .iter()
            .map(|a| format!("{{ addr = \"{a}\", port = 80 }}"))
            .collect();
        format!(
            "\n[[services]]\nname = \"{name}\"\nvip = \"{vip}\"\nprotocol = \"tcp\"\n\
             ports = [\"80\", \"443\"]\n[[services.pools]]\nname = \"p\"\nmode = \"nat\"\n\
             backends = [{}]\n",
            list.join(", ")
        )
    };
    let mut slots = StatSlots::default();
    let mut cache = MaglevCache::default();
    let mut build = |text: String| {
        let c = Config::from_toml_str(&format!("{BASE}{text}"), Path::new("t.toml")).unwrap();
        let mut ctx = Context {
            adjust: &|_, w| Some(w),
            draining: &Draining::default(),
            slots: &mut slots,
            cache: &mut cache,
        };
        let t = compile_with(&c, 1, &mut ctx).unwrap().table;
        let mut out: Vec<Slotted> = Vec::new();
        for s in &t.services {
            for b in &s.backends {
                out.push((
                    (s.name.clone(), s.port_lo, b.addr.to_string()),
                    (s.stat, b.stat),
                ));
            }
        }
        out.sort();
        out
    };
    let first = build(format!(
        "{}{}",
        svc("a", "198.18.0.100", &["198.18.1.1", "198.18.1.2"]),
        svc("b", "198.18.0.101", &["198.18.1.1"])
    ));
    // Every service port range and every backend of a service has its own slot.
    let mut service_slots: Vec<u32> = first.iter().map(|(_, (s, _))| *s).collect();
    service_slots.dedup();
    assert_eq!(service_slots.len(), 4, "{first:?}");
    let backend = |v: &[Slotted], svc: &str, addr: &str| {
        v.iter()
            .find(|((s, _, a), _)| s == svc && a == addr)
            .map(|(_, (_, b))| *b)
    };
    let a1 = backend(&first, "a", "198.18.1.1").unwrap();
    let b1 = backend(&first, "b", "198.18.1.1").unwrap();
    assert_ne!(a1, b1, "the same address in two services counts apart");

    // Reordered services, a backend removed and one added: the others keep their slots, the
    // new one gets a slot never used before.
    let second = build(format!(
        "{}{}",
        svc("b", "198.18.0.101", &["198.18.1.1"]),
        svc("a", "198.18.0.100", &["198.18.1.3", "198.18.1.1"])
    ));
    assert_eq!(backend(&second, "a", "198.18.1.1"), Some(a1));
    assert_eq!(backend(&second, "b", "198.18.1.1"), Some(b1));
    let a3 = backend(&second, "a", "198.18.1.3").unwrap();
    assert!(first.iter().all(|(_, (_, b))| *b != a3), "{a3} reused");
    let services = |v: &[Slotted]| {
        let mut s: Vec<(String, u16, u32)> = v
            .iter()
            .map(|((n, p, _), (s, _))| (n.clone(), *p, *s))
            .collect();
        s.dedup();
        s
    };
    assert_eq!(services(&first), services(&second));
    assert_eq!(
        slots.backend_slot(&BackendKey {
            service: "a".into(),
            addr: "198.18.1.3".parse().unwrap(),
            port: 80,
        }),
        Some(a3)
    );
    assert_eq!(
        slots.service_slot("b", 443, 443),
        services(&first)
            .iter()
            .find(|(n, p, _)| n == "b" && *p == 443)
            .map(|(_, _, s)| *s)
    );
    assert_eq!(slots.service_slot("b", 8080, 8080), None);
}

#[test]
fn next_hops_are_described_not_bound() {
    assert_eq!(compile(&cfg(""), 1).unwrap().next_hops, None);
    let text = r#"
on_link = ["198.18.0.0/16"]
gateway = ["198.18.0.254"]
[[neighbors]]
ip = "198.18.1.11"
mac = "02:00:00:00:01:0b"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "nat"
backends = [{ addr = "198.18.1.10" }, { addr = "198.18.1.11" }, { addr = "198.19.0.10" }]
"#;
    let mut c = compile(&cfg(text), 1).unwrap();
    let hops = c.next_hops.clone().expect("on_link and a gateway");
    assert_eq!(
        hops.links,
        vec![dataplane::table::Link {
            on_link: vec![dataplane::table::Prefix {
                addr: Addr::v4([198, 18, 0, 0]),
                len: 16
            }],
            routes: vec![],
            gateway_v4: Some(Addr::v4([198, 18, 0, 254])),
            gateway_v6: None,
        }]
    );
    // The neighbor, and the gateway with gateway_mac.
    assert_eq!(
        hops.statics,
        vec![
            (Addr::v4([198, 18, 1, 11]), [2, 0, 0, 0, 1, 0x0b]),
            (Addr::v4([198, 18, 0, 254]), [2, 0, 0, 0, 0, 0xfe]),
        ]
    );
    // Compiling binds no cache slot: that is the publishing step's.
    assert!(c.table.neighbors().is_none());
    assert!(c.table.next_hops().is_empty());
    c.bind_fresh().unwrap();
    assert!(c.table.neighbors().is_some());
    // 198.18.1.10 on the link is resolved; the others have static MACs.
    let hops: Vec<Addr> = c.table.next_hops().iter().map(|h| h.addr).collect();
    assert_eq!(hops, vec![Addr::v4([198, 18, 1, 10])]);
}

#[test]
fn every_prefix_of_the_shipped_config_is_reported_without_a_panic() {
    let text = include_str!("../../../lb.toml");
    let mut refused = 0;
    for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
        let cut = &text[..end];
        if let Err(r) = check_str(cut, Path::new("lb.toml")) {
            refused += 1;
            let shown = r.render();
            assert!(shown.ends_with(" error\n") || shown.ends_with(" errors\n"));
            for d in &r.diagnostics {
                let span = d.span.clone().expect("every problem in a text has a place");
                assert!(span.end <= cut.len(), "{span:?} past {end}");
            }
        }
    }
    // Cuts inside comments or after a complete key leave a valid file; the others are refused.
    assert!(refused > 1000, "{refused}");
    assert!(check_str(text, Path::new("lb.toml")).is_ok());
}

#[test]
fn draining_services_and_backends_are_compiled_at_weight_zero_in_their_slots() {
    let svc = |name: &str, vip: &str, hosts: &[u8]| {
        let list: Vec<String> = hosts
            .iter()
            .map(|h| format!("{{ addr = \"198.18.1.{h}\", port = 80 }}"))
            .collect();
        format!(
            "\n[[services]]\nname = \"{name}\"\nvip = \"{vip}\"\nprotocol = \"tcp\"\n\
             ports = [\"80\"]\n[[services.pools]]\nname = \"p\"\nmode = \"nat\"\n\
             backends = [{}]\n",
            list.join(", ")
        )
    };
    let before = cfg(&format!(
        "{}{}",
        svc("web", "198.18.0.100", &[1, 2]),
        svc("api", "198.18.0.101", &[3])
    ));
    let after = cfg(&svc("web", "198.18.0.100", &[1]));
    let (mut slots, mut cache) = (StatSlots::default(), MaglevCache::default());
    let mut build = |c: &Config, draining: &Draining| {
        let mut ctx = Context {
            adjust: &|_, w| Some(w),
            draining,
            slots: &mut slots,
            cache: &mut cache,
        };
        compile_with(c, 1, &mut ctx).unwrap().table
    };
    let t1 = build(&before, &Draining::default());
    let web_pool = before.services[0].pools[0].clone();
    let draining = Draining {
        services: vec![before.services[1].clone()],
        backends: vec![DrainingBackend {
            service: "web".into(),
            pool: config::Pool {
                backends: vec![],
                ..web_pool.clone()
            },
            backend: web_pool.backends[1].clone(),
        }],
    };
    let t2 = build(&after, &draining);
    let find =
        |t: &RoutingTable, name: &str| t.services.iter().find(|s| s.name == name).cloned().unwrap();
    let (web1, web2) = (find(&t1, "web"), find(&t2, "web"));
    assert!(!web2.draining);
    assert_eq!(web2.pools.len(), 1, "the backend went back into its pool");
    let slot = |s: &dataplane::table::Service, last: u8| {
        s.backends
            .iter()
            .find(|b| b.addr == Addr::v4([198, 18, 1, last]))
            .map(|b| (b.weight, b.stat))
    };
    assert_eq!(slot(&web2, 1), slot(&web1, 1));
    assert_eq!(slot(&web2, 2), Some((0, slot(&web1, 2).unwrap().1)));
    let (api1, api2) = (find(&t1, "api"), find(&t2, "api"));
    assert!(api2.draining && !api1.draining);
    assert_eq!(api2.stat, api1.stat);
    assert_eq!(slot(&api2, 3), Some((0, slot(&api1, 3).unwrap().1)));
    // Its VIP is still ours (ARP, the XDP filter) and its nat backend still a reply source.
    assert!(t2.owns(Addr::v4([198, 18, 0, 101])));
    assert!(t2
        .nat_backend_addrs()
        .any(|a| a == Addr::v4([198, 18, 1, 3])));
    // Without a drain set the removed things are gone (`on_remove = "reset"`, or drained).
    let t3 = build(&after, &Draining::default());
    assert_eq!(t3.services.len(), 1);
    assert_eq!(slot(&t3.services[0], 2), None);
}

#[test]
fn a_static_neighbor_leaves_by_the_interface_it_names() {
    let text = r#"
[dataplane]
[[dataplane.interfaces]]
name = "lbo"
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
[[dataplane.interfaces]]
name = "lbi"
mac = "02:00:00:00:00:02"
addresses = ["198.18.1.1"]
on_link = ["198.18.1.0/24"]
[[neighbors]]
ip = "198.18.7.10"
mac = "02:00:00:00:07:0a"
interface = "lbi"
[[neighbors]]
ip = "198.18.7.11"
mac = "02:00:00:00:07:0b"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "nat"
backends = [{ addr = "198.18.7.10" }, { addr = "198.18.7.11" }, { addr = "198.18.1.10" }]
"#;
    let cfg = Config::from_toml_str(text, Path::new("t.toml"))
        .unwrap_or_else(|r| panic!("{}", r.render()));
    let mut c = compile(&cfg, 1).unwrap();
    let hops = c.next_hops.clone().expect("links and a pinned neighbor");
    assert_eq!(hops.pinned, vec![(Addr::v4([198, 18, 7, 10]), 1)]);
    c.bind_fresh().unwrap();
    let svc = &c.table.services[0];
    let iface_of = |a: [u8; 4]| {
        let i = svc
            .backends
            .iter()
            .position(|b| b.addr == Addr::v4(a))
            .expect("backend");
        (svc.iface(i), svc.backends[i].mac)
    };
    // Pinned to the inside interface although no on_link prefix holds it; its MAC is static.
    assert_eq!(iface_of([198, 18, 7, 10]), (1, [2, 0, 0, 0, 7, 0x0a]));
    // Without `interface`: the first interface, as before.
    assert_eq!(iface_of([198, 18, 7, 11]).0, 0);
    // On the inside link: routed there and resolved.
    assert_eq!(iface_of([198, 18, 1, 10]).0, 1);
}

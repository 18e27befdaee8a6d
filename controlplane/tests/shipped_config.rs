//! The lb.toml shipped at the workspace root parses and compiles into the table it describes.

use std::path::Path;

use controlplane::{compile, load};
use dataplane::flow::Addr;
use dataplane::table::{Affinity, Mode};

fn shipped() -> controlplane::Compiled {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../lb.toml"));
    let cfg = load(path).unwrap_or_else(|e| panic!("{e}"));
    compile(&cfg, 1).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn shipped_config_compiles_to_web_and_echo() {
    let c = shipped();
    let t = &c.table;
    assert_eq!(t.local.mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(
        t.local.addrs,
        vec![
            Addr::v4([198, 18, 0, 1]),
            Addr::from("2001:db8::1".parse::<std::net::IpAddr>().unwrap())
        ]
    );
    assert_eq!((t.local.mtu, t.local.snat_ports), (1500, (1024, 65535)));
    assert_eq!(c.workers, 2);
    assert_eq!(c.conntrack.capacity, 262_144);
    assert_eq!(c.conntrack.embryonic_budget, 65_536);
    assert_eq!(c.conntrack.timeouts.tcp_established, 15 * 60 * 1000);

    let vip = Addr::v4([198, 18, 0, 100]);
    let (_, web) = t.service_for(vip, 6, 80).expect("web serves tcp/80");
    assert_eq!(web.name, "web");
    assert_eq!(web.affinity, Affinity::None);
    assert!(t.service_for(vip, 6, 81).is_none());
    let modes: Vec<(&str, Mode)> = web
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.mode))
        .collect();
    assert_eq!(modes, vec![("pods", Mode::FullNat), ("vms", Mode::DsrIpip)]);
    assert_eq!(web.pools[0].snat, vec![Addr::v4([198, 18, 0, 2])]);
    // No encap_source in the file: the first dataplane address of the backend's family.
    assert_eq!(web.pools[1].encap_src_v4, Some(Addr::v4([198, 18, 0, 1])));

    let backends: Vec<(Addr, u16, u32, [u8; 6], u16)> = web
        .backends
        .iter()
        .map(|b| (b.addr, b.port, b.weight, b.mac, b.pool))
        .collect();
    assert_eq!(
        backends,
        vec![
            (
                Addr::v4([198, 18, 1, 10]),
                8080,
                1,
                [2, 0, 0, 0, 1, 0x0a],
                0
            ),
            (
                Addr::v4([198, 18, 1, 11]),
                8080,
                1,
                [2, 0, 0, 0, 1, 0x0b],
                0
            ),
            // No port: keeps the client's port.
            (Addr::v4([198, 18, 2, 10]), 0, 2, [2, 0, 0, 0, 2, 0x0a], 1),
        ]
    );

    let (_, echo) = t.service_for(vip, 17, 7).expect("echo serves udp/7");
    assert_eq!(echo.name, "echo");
    assert_eq!(echo.affinity, Affinity::ClientIp);
    assert_eq!(echo.pools[0].mode, Mode::Nat);
    assert_eq!(echo.backends.len(), 2);
    assert!(echo.backends.iter().all(|b| b.port == 7));

    assert!(t.owns(Addr::v4([198, 18, 0, 2])) && t.is_snat(Addr::v4([198, 18, 0, 2])));
    assert!(t.is_vip(vip));
}

#[test]
fn shipped_config_routes_http_by_host_and_path() {
    use dataplane::l7::route::{RequestView, RouteTable, Target};

    let c = shipped();
    assert_eq!(c.http.len(), 1);
    let site = &c.http[0];
    assert_eq!(site.name, "site");
    assert_eq!(site.listen, vec!["198.18.255.1:80".parse().unwrap()]);
    assert!(site.tls.is_empty());
    let table = RouteTable::compile(&site.routes);
    // The upstreams each request can reach, by name and weight.
    let to = |host: &str, path: &str, headers: &[(&str, &str)]| -> Vec<(String, u32)> {
        match table.lookup(&RequestView::from_parts(host, path, "GET", headers)) {
            Target::Split(s) => table.splits[s as usize]
                .iter()
                .map(|&(svc, w)| (table.services[svc as usize].name.to_string(), w))
                .collect(),
            Target::Answer(status) => vec![(format!("answer {}", status.code()), 0)],
        }
    };
    let one = |name: &str| vec![(name.to_string(), 1)];
    assert_eq!(to("www.lab.test", "/", &[]), one("pods"));
    assert_eq!(to("WWW.lab.test:80", "/index.html", &[]), one("pods"));
    assert_eq!(
        to("www.lab.test", "/api/v1", &[]),
        vec![("pod-a".to_string(), 90), ("pod-b".to_string(), 10)]
    );
    // Element-wise prefix: /apiary is not under /api.
    assert_eq!(to("www.lab.test", "/apiary", &[]), one("pods"));
    assert_eq!(to("x.lab.test", "/", &[("x-pod", "b")]), one("pod-b"));
    // No header match, no route of the host: the default upstream.
    assert_eq!(to("x.lab.test", "/", &[]), one("pods"));
    assert_eq!(to("elsewhere.test", "/", &[]), one("pods"));
    let pods: Vec<String> = site.routes.services[0]
        .endpoints
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    assert_eq!(pods, vec!["198.18.1.10:8080", "198.18.1.11:8080"]);
}

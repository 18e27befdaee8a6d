//! The rules, each with a config that breaks it and the problem it gets.

use super::{check_log_level, table_size_hint, SUITABLE_TABLE_SIZES};
use crate::config::Config;

const BASE: &str = r#"
[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
"#;

/// The problems of `text`, which must parse.
fn validate(text: &str) -> Vec<String> {
    let c: Config = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    c.validate().into_iter().map(|p| p.message).collect()
}

fn problems(extra: &str) -> Vec<String> {
    validate(&format!("{BASE}{extra}"))
}

fn one_problem(extra: &str, needles: &[&str]) {
    let p = problems(extra);
    assert_eq!(p.len(), 1, "{p:#?}");
    for n in needles {
        assert!(p[0].contains(n), "{:?} lacks {n:?}", p[0]);
    }
}

#[test]
fn run_settings_are_checked() {
    assert_eq!(
        problems("workers = 2\ncores = [1, 3]\n"),
        Vec::<String>::new()
    );
    one_problem("workers = 2\ncores = [1]\n", &["cores", "2 workers"]);
    one_problem(
        "interface = \"a-very-long-interface\"\n",
        &["a-very-long-interface", "not a valid interface name"],
    );
    one_problem("interface = \"\"\n", &["interface"]);
}

#[test]
fn backend_without_neighbor_or_gateway_is_named() {
    let text = r#"
[dataplane]
mac = "02:00:00:00:00:01"
[[neighbors]]
ip = "198.18.1.10"
mac = "02:00:00:00:01:0a"
[[services]]
name = "web"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "nat"
backends = [{ addr = "198.18.1.10", port = 80 }, { addr = "198.18.1.99", port = 80 }]
"#;
    let p = validate(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("service web pool pods backend 198.18.1.99:80: no MAC"),
        "{}",
        p[0]
    );
}

#[test]
fn fullnat_needs_snat_of_each_backend_family() {
    one_problem(
        r#"
[[services]]
name = "web"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "fullnat"
backends = [{ addr = "198.18.1.10", port = 80 }, { addr = "198.18.1.11", port = 80 }]
"#,
        &[
            "service web pool pods backend 198.18.1.10:80",
            "IPv4",
            "snat",
        ],
    );
    // An IPv6 SNAT address does not serve IPv4 backends.
    one_problem(
        r#"
[[services]]
name = "web"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "fullnat"
snat = ["2001:db8::2"]
backends = [{ addr = "198.18.1.10", port = 80 }]
"#,
        &["backend 198.18.1.10:80", "IPv4 address in the pool's snat"],
    );
}

#[test]
fn nat_modes_refuse_a_family_change() {
    for mode in ["nat", "fullnat", "dr"] {
        // fullnat gets SNAT addresses of both families so the family rule is the only problem.
        let snat = if mode == "fullnat" {
            r#"snat = ["198.18.0.2", "2001:db8::2"]"#
        } else {
            ""
        };
        one_problem(
            &format!(
                r#"
[[services]]
name = "web"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "pods"
mode = "{mode}"
{snat}
backends = [{{ addr = "2001:db8::10" }}]
"#
            ),
            &[
                "service web pool pods backend 2001:db8::10",
                "IPv6 backend behind IPv4 VIP",
                mode,
            ],
        );
    }
}

#[test]
fn dsr_without_an_outer_source_of_the_backend_family() {
    one_problem(
        r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "vms"
mode = "dsr-ipip"
backends = [{ addr = "2001:db8::10" }, { addr = "2001:db8::11" }]
"#,
        &[
            "service s pool vms backend 2001:db8::10",
            "no IPv6 source",
            "encap_source",
        ],
    );
}

#[test]
fn dr_and_dsr_refuse_a_port_change() {
    one_problem(
        r#"
[[services]]
name = "s"
vip = "198.18.0.100"
ports = ["80"]
protocol = "tcp"
[[services.pools]]
name = "l2"
mode = "dr"
backends = [{ addr = "198.18.1.10", port = 8080 }]
"#,
        &[
            "service s pool l2 backend 198.18.1.10:8080",
            "cannot change the port",
        ],
    );
    // The same port as the only one served changes nothing.
    assert!(problems(
        r#"
[[services]]
name = "s"
vip = "198.18.0.100"
ports = [80]
protocol = "tcp"
[[services.pools]]
name = "l2"
mode = "dr"
backends = [{ addr = "198.18.1.10", port = 80 }]
"#
    )
    .is_empty());
}

#[test]
fn every_problem_is_listed_not_just_the_first() {
    let text = r#"
[dataplane]
mac = "02:00:00:00:00:01"
snat_ports = "1000-1001"
workers = 4
[[services]]
name = "a"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "fullnat"
backends = [{ addr = "198.18.1.10" }]
[[services]]
name = "b"
vip = "2001:db8::100"
protocol = "udp"
[[services.pools]]
name = "q"
mode = "nat"
backends = [{ addr = "198.18.1.11" }]
"#;
    let p = validate(text);
    let expect = [
        "dataplane: snat_ports 1000-1001 has 2 ports, fewer than the 4 workers",
        "service a pool p backend 198.18.1.10: no MAC",
        "service a pool p backend 198.18.1.10: fullnat needs an IPv4",
        "service b pool q backend 198.18.1.11: no MAC",
        "service b pool q backend 198.18.1.11: IPv4 backend behind IPv6 VIP",
    ];
    assert_eq!(p.len(), expect.len(), "{p:#?}");
    for (got, want) in p.iter().zip(expect) {
        assert!(
            got.starts_with(want),
            "{got:?} does not start with {want:?}"
        );
    }
}

/// A tcp service `name` on `vip` and `ports` (a TOML list) with one nat backend.
fn nat_service(name: &str, vip: &str, ports: &str) -> String {
    format!(
        r#"
[[services]]
name = "{name}"
vip = "{vip}"
protocol = "tcp"
ports = {ports}
[[services.pools]]
name = "p"
mode = "nat"
backends = [{{ addr = "198.18.1.10" }}]
"#
    )
}

#[test]
fn overlapping_services_are_all_reported() {
    let svc = |name: &str, ports: &str| nat_service(name, "198.18.0.100", ports);
    let p = problems(&format!(
        "{}{}{}",
        svc("a", r#"["80-90"]"#),
        svc("b", r#"["85"]"#),
        svc("c", r#"["90-100", "95"]"#)
    ));
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(
        p[0].contains("services a and b both claim 198.18.0.100 tcp port 85"),
        "{}",
        p[0]
    );
    assert!(
        p[1].contains("services a and c both claim 198.18.0.100 tcp port 90"),
        "{}",
        p[1]
    );
    assert!(p[2].contains("service c lists port 95 twice"), "{}", p[2]);
}

#[test]
fn one_vip_on_many_ports_is_checked_without_comparing_every_pair() {
    // Before: 20k services on one VIP made 200M pairs (3.2 GB) to compare and sort.
    let services: String = (1..=20_000)
        .map(|i| nat_service(&format!("s{i}"), "198.18.0.100", &format!("[{i}]")))
        .collect();
    assert_eq!(problems(&services), Vec::<String>::new());
}

#[test]
fn overlaps_are_listed_up_to_a_cap() {
    // 200 copies of one service: 19,900 clashing pairs, of which the first 10,000 are listed.
    let services: String = (0..200)
        .map(|i| nat_service(&format!("s{i}"), "198.18.0.100", "[80]"))
        .collect();
    let p = problems(&services);
    assert_eq!(p.len(), super::services::MAX_OVERLAPS + 1);
    assert!(
        p[0].contains("more than 10000 overlapping claims"),
        "{}",
        p[0]
    );
    assert!(
        p[1].contains("services s0 and s1 both claim 198.18.0.100 tcp port 80"),
        "{}",
        p[1]
    );
}

#[test]
fn duplicate_backends_and_names() {
    let p = problems(
        r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "nat"
backends = [{ addr = "198.18.1.10", port = 80 }]
[[services.pools]]
name = "p"
mode = "nat"
backends = [{ addr = "198.18.1.10", port = 80 }]
[[services]]
name = "s"
vip = "198.18.0.101"
protocol = "tcp"
"#,
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(
        p[0].contains("service s pool p: pool name used twice"),
        "{}",
        p[0]
    );
    assert!(
        p[1].contains("the same address and port as service s pool p backend 198.18.1.10:80"),
        "{}",
        p[1]
    );
    assert!(p[2].contains("service s: name already used"), "{}", p[2]);
}

#[test]
fn snat_and_encap_source_on_the_wrong_mode() {
    one_problem(
        r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "nat"
snat = ["198.18.0.2"]
backends = [{ addr = "198.18.1.10" }]
"#,
        &["service s pool p: snat is only used by fullnat"],
    );
    one_problem(
        r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "fullnat"
snat = ["198.18.0.2"]
encap_source = ["198.18.0.1"]
backends = [{ addr = "198.18.1.10" }]
"#,
        &["service s pool p: encap_source is only used by dsr"],
    );
}

#[test]
fn weight_overflow_and_port_zero() {
    let p = problems(
        r#"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "nat"
weight = 4294967295
backends = [{ addr = "198.18.1.10", port = 0, weight = 2 }]
"#,
    );
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p[0].contains("backend 198.18.1.10:0: port 0"), "{}", p[0]);
    assert!(
        p[1].contains("backend 198.18.1.10:0: pool weight 4294967295 times"),
        "{}",
        p[1]
    );
}

#[test]
fn dataplane_and_conntrack_limits() {
    let text = r#"
[dataplane]
mac = "02:00:00:00:00:01"
mtu = 100
workers = 0
[conntrack]
capacity = 100
embryonic_budget = 101
[conntrack.timeouts]
udp = "0s"
"#;
    let p = validate(text);
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(p[0].contains("mtu 100"));
    assert!(p[1].contains("workers"));
    assert!(p[2].contains("embryonic_budget 101 is above capacity 100"));
    assert!(p[3].contains("udp must be above 0"));
}

#[test]
fn overlaps_of_different_vips_are_reported_in_file_order_at_the_later_claim() {
    let svc = nat_service;
    let text = format!(
        "{BASE}{}{}{}{}{}",
        svc("a", "198.18.0.100", r#"["80"]"#),
        svc("b", "198.18.0.101", r#"["80"]"#),
        svc("c", "198.18.0.101", r#"["70", "80"]"#),
        svc("d", "198.18.0.100", r#"["80"]"#),
        svc("e", "198.18.0.102", r#"["80"]"#),
    );
    let c: Config = toml::from_str(&text).unwrap();
    let p = c.validate();
    let got: Vec<(&str, &str)> = p
        .iter()
        .map(|p| (p.path.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "services[3].ports[0]",
                "services a and d both claim 198.18.0.100 tcp port 80"
            ),
            (
                "services[2].ports[1]",
                "services b and c both claim 198.18.0.101 tcp port 80"
            ),
        ]
    );
}

#[test]
fn suggested_table_sizes_are_primes_the_table_accepts() {
    for p in SUITABLE_TABLE_SIZES {
        assert!(dataplane::maglev::is_valid_table_size(p), "{p}");
    }
    assert!(SUITABLE_TABLE_SIZES.contains(&dataplane::maglev::DEFAULT_TABLE_SIZE));
    // 30 backends need 300 slots: the list starts at the first prime above.
    assert!(table_size_hint(30).starts_with("a prime of at least 300: 509, 1021,"));
    assert!(table_size_hint(1_000_000).starts_with("a prime of at least 10000000 (the default"));
}

#[test]
fn log_levels_are_filters_and_bare_words_are_levels() {
    for good in [
        "info",
        "WARN",
        "warn,controlplane=debug",
        "dataplane",
        "lb::run=trace",
    ] {
        assert_eq!(check_log_level(good), None, "{good}");
    }
    for bad in [
        "",
        "  ",
        "inof",
        "verbose",
        "controlplane=loud",
        "warn,,debgu",
    ] {
        let p = check_log_level(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert_eq!(p.path, "logging.level");
        assert!(p.hint.is_some());
    }
    let p = check_log_level("inof").unwrap();
    assert!(p.hint.unwrap().starts_with("did you mean \"info\"?"));
}

/// A dataplane with no IPv6 address that resolves next hops on its link and through a gateway.
const LINK: &str = r#"
[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
on_link = ["198.18.0.0/16", "2001:db8::/64"]
gateway = ["198.18.0.254", "2001:db8::fe"]
"#;

/// A nat service on `vip` with backends at `addrs`.
fn nat_backends(vip: &str, addrs: &[&str]) -> String {
    let list: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        "[[services]]\nname = \"s\"\nvip = \"{vip}\"\nprotocol = \"tcp\"\n[[services.pools]]\n\
         name = \"p\"\nmode = \"nat\"\nbackends = [{}]\n",
        list.join(", ")
    )
}

#[test]
fn next_hops_need_an_address_of_their_family_to_probe_from() {
    let c = |svc: String| -> Config { toml::from_str(&format!("{LINK}{svc}")).unwrap() };
    // IPv4 next hops: probed from 198.18.0.1.
    let ok = c(nat_backends(
        "198.18.0.100",
        &["198.18.1.10", "198.19.0.10"],
    ));
    assert_eq!(ok.validate(), vec![]);

    // An IPv6 backend on the link, two behind the IPv6 gateway: each next hop once.
    let p = c(nat_backends(
        "2001:db8::100",
        &["2001:db8::10", "2001:db9::10", "2001:db9::11"],
    ))
    .validate();
    let got: Vec<(&str, &str)> = p
        .iter()
        .map(|p| (p.path.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "services[0].pools[0].backends[0].addr",
                "service s pool p backend 2001:db8::10: 2001:db8::10 is on our link, resolved \
                 by ND, but [dataplane] addresses has no IPv6 address to send the probes from"
            ),
            (
                "dataplane.gateway[1]",
                "dataplane: gateway 2001:db8::fe is resolved by ND, but [dataplane] addresses \
                 has no IPv6 address to send the probes from"
            ),
        ]
    );
    assert!(p.iter().all(|p| p
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("add one to [dataplane] addresses"))));

    // A static MAC is never probed: a neighbor, or the gateway with gateway_mac.
    let statics = format!(
        "{}[[neighbors]]\nip = \"2001:db8::10\"\nmac = \"02:00:00:00:01:0a\"\n",
        nat_backends("2001:db8::100", &["2001:db8::10", "2001:db9::10"])
    );
    let with_mac = LINK.replace("on_link", "gateway_mac = \"02:00:00:00:00:fe\"\non_link");
    let cfg: Config = toml::from_str(&format!("{with_mac}{statics}")).unwrap();
    assert_eq!(cfg.validate(), vec![]);
}

#[test]
fn admin_limits_are_bounded() {
    assert!(problems("[admin]\nmax_connections = 256\nheader_timeout = \"10s\"\n").is_empty());
    one_problem(
        "[admin]\nmax_connections = 0\n",
        &["admin: max_connections 0 is outside 1-65536"],
    );
    one_problem(
        "[admin]\nmax_connections = 100000\n",
        &["max_connections 100000 is outside"],
    );
    one_problem(
        "[admin]\nheader_timeout = \"0ms\"\n",
        &["admin: header_timeout must be above 0 and at most 1h"],
    );
    one_problem(
        "[admin]\nidle_timeout = \"2h\"\n",
        &["admin: idle_timeout must be above 0"],
    );
}

/// The problems of `[dataplane]` extras `extra` as a build with (`built`) or without the dpdk
/// feature sees them.
fn dpdk_problems(extra: &str, built: bool) -> Vec<String> {
    let text = format!("{BASE}{extra}");
    let c: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut out = Vec::new();
    super::dataplane::check_dpdk(&c.dataplane, built, &mut out);
    out.into_iter().map(|p| p.message).collect()
}

const DPDK_OK: &str = "port = \"dpdk\"\n[dataplane.dpdk]\ndevice = \"net_memif0\"\n\
                       vdev = \"role=server\"\neal_args = [\"--no-pci\"]\n";

#[test]
fn dpdk_port_needs_the_feature_and_its_table() {
    assert_eq!(dpdk_problems(DPDK_OK, true), Vec::<String>::new());
    let p = dpdk_problems(DPDK_OK, false);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("dpdk feature"), "{p:?}");
    let p = dpdk_problems("port = \"dpdk\"\n", true);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("[dataplane.dpdk]"), "{p:?}");
    let p = dpdk_problems(
        "port = \"af_xdp\"\n[dataplane.dpdk]\ndevice = \"net_memif0\"\n",
        true,
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("only read with port = \"dpdk\""), "{p:?}");
}

#[test]
fn dpdk_device_descriptors_and_pool_are_checked() {
    let with = |extra: &str| dpdk_problems(&format!("{DPDK_OK}{extra}"), true);
    let one = |extra: &str, needle: &str| {
        let p = with(extra);
        assert_eq!(p.len(), 1, "{extra}: {p:#?}");
        assert!(p[0].contains(needle), "{p:?} lacks {needle:?}");
    };
    one(
        "rx_descriptors = 16\n",
        "rx_descriptors 16 is outside 32-32768",
    );
    one(
        "tx_descriptors = 65535\nmempool_size = 100000\n",
        "tx_descriptors 65535 is outside",
    );
    one(
        "mempool_size = 2047\n",
        "below the 2560 mbufs 1 workers need",
    );
    let p = dpdk_problems("port = \"dpdk\"\n[dataplane.dpdk]\ndevice = \" \"\n", true);
    assert!(p.iter().any(|m| m.contains("device is empty")), "{p:?}");
    // The default pool (16383) holds four workers' default rings (4 x 2560), not eight.
    let eight = "workers = 8\nport = \"dpdk\"\n[dataplane.dpdk]\ndevice = \"0000:01:00.0\"\n";
    let p = dpdk_problems(eight, true);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("20480 mbufs 8 workers"), "{p:?}");
}

#[test]
fn this_build_refuses_port_dpdk_exactly_when_built_without_the_feature() {
    let p = problems(DPDK_OK);
    if cfg!(feature = "dpdk") {
        assert_eq!(p, Vec::<String>::new());
    } else {
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(p[0].contains("built with the dpdk feature"), "{p:?}");
    }
}

#[test]
fn each_dpdk_interface_drives_a_device_of_its_own() {
    let two = |a: &str, b: &str| {
        format!(
            "[dataplane]\nport = \"dpdk\"\n\
             [[dataplane.interfaces]]\nname = \"lbo\"\nmac = \"02:00:00:00:00:01\"\n{a}\
             [[dataplane.interfaces]]\nname = \"lbi\"\nmac = \"02:00:00:00:00:02\"\n{b}\
             [dataplane.dpdk]\neal_args = [\"--no-pci\"]\n"
        )
    };
    let problems = |text: &str| -> Vec<String> {
        let c: Config = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mut out = Vec::new();
        super::dataplane::check(&c, &mut out);
        out.into_iter()
            .map(|p| p.message)
            .filter(|m| !m.contains("dpdk feature"))
            .collect()
    };
    let own = |d: &str| format!("dpdk_device = \"{d}\"\ndpdk_vdev = \"role=server\"\n");
    assert_eq!(
        problems(&two(&own("net_memif0"), &own("net_memif1"))),
        Vec::<String>::new()
    );
    let p = problems(&two(&own("net_memif0"), &own("net_memif0")));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("driven by an earlier interface"), "{p:?}");
    // Neither names a device, and [dataplane.dpdk] names none either: both fall back on it.
    let p = problems(&two("", ""));
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p[0].contains("device is empty"), "{p:?}");
    assert!(p[1].contains("would both drive"), "{p:?}");
    // One may fall back on [dataplane.dpdk] device.
    let shared =
        two(&own("net_memif1"), "").replace("eal_args", "device = \"net_memif0\"\neal_args");
    assert_eq!(problems(&shared), Vec::<String>::new());
    let p = problems(&two(
        &own("net_memif0"),
        "port = \"af_xdp\"\ndpdk_device = \"net_memif1\"\n",
    ));
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].contains("only read with port = \"dpdk\""), "{p:?}");
    let p = problems(&two(&own("net_memif0"), "dpdk_vdev = \"role=server\"\n"));
    assert!(
        p.iter()
            .any(|m| m.contains("dpdk_vdev without dpdk_device")),
        "{p:?}"
    );
}

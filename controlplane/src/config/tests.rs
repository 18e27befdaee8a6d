//! Parsing: defaults, and syntax and schema errors placed at `file:line:column`.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::diag::ConfigReport;

/// Parses and validates, as `load` does.
fn parse(text: &str) -> Result<Config, ConfigReport> {
    Config::from_toml_str(text, Path::new("t.toml"))
}

/// The keys of `text` with their defaults, without the rules.
fn fields(text: &str) -> Config {
    toml::from_str(text).unwrap()
}

#[test]
fn defaults_fill_a_minimal_config() {
    let c = fields("[dataplane]\nmac = \"02:00:00:00:00:01\"\n");
    assert_eq!(c.dataplane.mtu, 1500);
    assert_eq!(
        c.dataplane.snat_ports,
        PortRange {
            lo: 1024,
            hi: 65535
        }
    );
    assert_eq!(c.dataplane.workers, 1);
    assert_eq!(c.dataplane.gateway_mac, None);
    assert_eq!(c.dataplane.port, PortKind::Tap);
    assert_eq!(c.dataplane.interface_name(), "lb0");
    assert_eq!(c.dataplane.cores, None);
    assert_eq!(c.dataplane.idle, IdleMode::Adaptive);
    assert_eq!(c.dataplane.xdp_mode, XdpMode::Auto);
    assert_eq!(c.conntrack.capacity, 262_144);
    assert_eq!(c.conntrack.embryonic_budget(), 65_536);
    assert_eq!(
        c.conntrack.timeouts.tcp_established,
        Duration::from_secs(900)
    );
    assert_eq!(c.conntrack.timeouts.udp_unconfirmed, Duration::from_secs(5));
    assert!(c.services.is_empty());
}

#[test]
fn service_and_backend_defaults() {
    let c = fields(
        r#"
[dataplane]
mac = "02:00:00:00:00:01"
[conntrack]
capacity = 1000
[conntrack.timeouts]
udp = "500ms"
udp_unconfirmed = "2s"
[[services]]
name = "s"
vip = "2001:db8::100"
protocol = "udp"
ports = [53, "8000-8010"]
[[services.pools]]
name = "p"
mode = "dsr-gue"
backends = [{ addr = "2001:db8::10" }]
"#,
    );
    assert_eq!(c.conntrack.embryonic_budget(), 250);
    assert_eq!(c.conntrack.timeouts.udp, Duration::from_millis(500));
    assert_eq!(c.conntrack.timeouts.udp_unconfirmed, Duration::from_secs(2));
    assert_eq!(c.conntrack.timeouts.tcp_syn, Duration::from_secs(5));
    let s = &c.services[0];
    assert_eq!(s.affinity, Affinity::None);
    assert_eq!(s.table_size, 65537);
    assert_eq!(
        s.ports,
        vec![
            PortRange { lo: 53, hi: 53 },
            PortRange { lo: 8000, hi: 8010 }
        ]
    );
    let p = &s.pools[0];
    assert_eq!((p.weight, p.gue_port), (1, 6080));
    let b = &p.backends[0];
    assert_eq!((b.port, b.weight, b.kind), (None, 1, BackendKind::Pod));
}

#[test]
fn unknown_field_points_at_its_line_and_column() {
    let text = "[dataplane]\nmac = \"02:00:00:00:00:01\"\n  mttu = 9000\n";
    let r = parse(text).unwrap_err();
    assert_eq!(r.len(), 1, "{r}");
    let d = &r.diagnostics[0];
    assert_eq!((d.line, d.column), (3, 3), "{}", d.message);
    assert!(d.message.contains("mttu"), "{}", d.message);
    assert_eq!(d.hint.as_deref(), Some("did you mean `mtu`?"));
    let shown = parse(text).unwrap_err().to_string();
    assert!(shown.starts_with("t.toml:3:3: "), "{shown}");
}

#[test]
fn bad_values_point_at_the_value() {
    let text = "[dataplane]\nmac = \"02:00:00:00:00:01\"\n[conntrack.timeouts]\nudp = \"30 s\"\n";
    let shown = parse(text).unwrap_err().to_string();
    assert!(shown.starts_with("t.toml:4:7: "), "{shown}");
    assert!(shown.contains("invalid duration"), "{shown}");

    let text = "[dataplane]\nmac = \"02:00:00:00:00:01\"\nsnat_ports = \"2000-1000\"\n";
    let shown = parse(text).unwrap_err().to_string();
    assert!(shown.starts_with("t.toml:3:14: "), "{shown}");

    let text = "[dataplane]\nmac = \"02:00:00:00:00:01\"\naddresses = [\"198.18.0.300\"]\n";
    let shown = parse(text).unwrap_err().to_string();
    assert!(shown.starts_with("t.toml:3:14: "), "{shown}");
}

#[test]
fn run_settings_parse_and_unknown_kinds_point_at_the_value() {
    let c = parse(
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\nport = \"af_xdp\"\ninterface = \"eth1\"\n\
         workers = 2\ncores = [2, 3]\nidle = \"poll\"\nxdp_mode = \"generic\"\n",
    )
    .unwrap();
    let d = &c.dataplane;
    assert_eq!((d.port, d.interface_name()), (PortKind::AfXdp, "eth1"));
    assert_eq!(d.cores, Some(vec![2, 3]));
    assert_eq!((d.idle, d.xdp_mode), (IdleMode::Poll, XdpMode::Generic));
    let shown = parse("[dataplane]\nmac = \"02:00:00:00:00:01\"\nport = \"netmap\"\n")
        .unwrap_err()
        .to_string();
    assert!(shown.starts_with("t.toml:3:8: "), "{shown}");
    assert!(shown.contains("af_packet"), "{shown}");
}

#[test]
fn unknown_mode_is_rejected() {
    let text = r#"
[dataplane]
mac = "02:00:00:00:00:01"
[[services]]
name = "s"
vip = "198.18.0.100"
protocol = "tcp"
[[services.pools]]
name = "p"
mode = "dsr"
"#;
    let shown = parse(text).unwrap_err().to_string();
    assert!(shown.starts_with("t.toml:10:8: "), "{shown}");
}

#[test]
fn missing_file_names_the_path() {
    let err = load(Path::new("/nonexistent/lb.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/lb.toml: cannot read the file: "),
        "{err}"
    );
}

#[test]
fn rules_are_checked_on_load() {
    let r = parse("[dataplane]\nmac = \"02:00:00:00:00:01\"\nworkers = 0\n").unwrap_err();
    assert_eq!(
        r.to_string(),
        "t.toml:3:11: dataplane: workers must be at least 1"
    );
}

/// An `[[http]]` on 198.18.0.10:80 with one upstream and `proxy` as its `[http.proxy]` body.
fn http_with_proxy(proxy: &str) -> String {
    format!(
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\n\
         [[http]]\nname = \"site\"\nlisten = [\"198.18.0.10:80\"]\n\
         [http.proxy]\n{proxy}\n\
         [[http.upstreams]]\nname = \"app\"\nbackends = [{{ addr = \"198.18.1.10\", port = 8080 }}]\n"
    )
}

#[test]
fn http_proxy_keys_default_to_the_transport_and_are_checked() {
    let c = parse(&http_with_proxy("")).unwrap();
    let d = dataplane::net::ProxyConfig::default();
    let p = c.http[0].proxy;
    assert_eq!(
        (p.max_connections, p.pool_per_backend),
        (d.max_conns, d.pool_per_backend)
    );
    assert_eq!(
        (p.pool_idle, p.linger),
        (
            Duration::from_millis(d.pool_idle),
            Duration::from_millis(d.linger)
        )
    );
    let c = parse(&http_with_proxy(
        "max_connections = 5\npool_per_backend = 0\npool_idle = \"5s\"\nlinger = \"0s\"",
    ))
    .unwrap();
    assert_eq!(c.http[0].proxy.max_connections, 5);
    assert_eq!(c.http[0].proxy.pool_per_backend, 0);

    for (body, place, words) in [
        (
            "max_connections = 0",
            "t.toml:7:19",
            "proxy.max_connections 0 is outside",
        ),
        (
            "pool_per_backend = 10001",
            "t.toml:7:20",
            "proxy.pool_per_backend 10001 is above",
        ),
        (
            "pool_idle = \"0s\"",
            "t.toml:7:13",
            "proxy.pool_idle 0ns is outside",
        ),
        (
            "linger = \"2h\"",
            "t.toml:7:10",
            "proxy.linger 7200s is above",
        ),
    ] {
        let r = parse(&http_with_proxy(body)).unwrap_err().to_string();
        assert!(r.contains(place) && r.contains(words), "{body}: {r}");
    }
    let r = parse(&http_with_proxy("max_conns = 5"))
        .unwrap_err()
        .to_string();
    assert!(r.contains("unknown field `max_conns`"), "{r}");
}

#[test]
fn dpdk_settings_parse_and_their_problems_are_placed() {
    let text = "[dataplane]\nmac = \"02:00:00:00:00:01\"\nport = \"dpdk\"\n\
                [dataplane.dpdk]\ndevice = \"net_memif0\"\nvdev = \"role=server\"\n\
                rx_descriptors = 8\n";
    let c: Config = fields(text);
    let d = c.dataplane.dpdk.expect("the table");
    assert_eq!(c.dataplane.port, PortKind::Dpdk);
    assert_eq!(
        (
            d.device.as_str(),
            d.vdev.as_deref(),
            d.tx_descriptors,
            d.mempool_size,
            d.hugepages
        ),
        ("net_memif0", Some("role=server"), 1024, 16383, true)
    );
    let shown = parse(text).unwrap_err().to_string();
    assert!(
        shown.contains("t.toml:7:18: dataplane.dpdk: rx_descriptors 8 is outside"),
        "{shown}"
    );
    let shown = parse("[dataplane]\nmac = \"02:00:00:00:00:01\"\n[dataplane.dpdk]\nmapool = 1\n")
        .unwrap_err()
        .to_string();
    assert!(shown.starts_with("t.toml:4:1: "), "{shown}");
}

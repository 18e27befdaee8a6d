//! Every class of config error is reported at the right `line:column`, with a message or hint that
//! names the problem.
//!
//! A case is lb.toml text in which `@@` marks where each error must point (the marker is removed
//! before parsing), and one word per marker that the message or hint must contain.

use std::path::Path;

use controlplane::compile;
use controlplane::config::{Config, Host};
use controlplane::diag::ConfigReport;

/// A dataplane every backend can be reached through (the gateway) with both families.
const BASE: &str = r#"[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1", "2001:db8::1"]
gateway_mac = "02:00:00:00:00:fe"
"#;

/// A nat service on tcp/80 with one backend; `svc_keys` go in `[[services]]`, `pool_keys` in its
/// pool, `after` after it.
fn svc(svc_keys: &str, pool_keys: &str, after: &str) -> String {
    format!(
        "{BASE}[[services]]\nname = \"web\"\nvip = \"198.18.0.100\"\nprotocol = \"tcp\"\nports = [80]\n{svc_keys}\n\
         [[services.pools]]\nname = \"p\"\n{pool_keys}\n{after}"
    )
}

/// One nat pool with one backend.
const NAT: &str = "mode = \"nat\"\nbackends = [{ addr = \"198.18.1.10\", port = 8080 }]";

/// The text without markers and the (line, column) of each marker.
fn unmark(marked: &str) -> (String, Vec<(usize, usize)>) {
    let mut text = String::new();
    let mut at = Vec::new();
    for (i, part) in marked.split("@@").enumerate() {
        if i > 0 {
            at.push(controlplane::diag::line_column(&text, text.len()));
        }
        text.push_str(part);
    }
    (text, at)
}

fn report(text: &str) -> Option<ConfigReport> {
    compile::check_str(text, Path::new("lb.toml")).err()
}

/// Asserts the report of `marked` has one problem per marker, at the marker, in file order, each
/// naming its word.
#[track_caller]
fn case(name: &str, marked: &str, words: &[&str]) {
    let (text, at) = unmark(marked);
    assert_eq!(at.len(), words.len(), "{name}: one word per marker");
    let Some(r) = report(&text) else {
        panic!("{name}: accepted, expected {} problem(s)\n{text}", at.len());
    };
    let got: Vec<(usize, usize)> = r.diagnostics.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(got, at, "{name}: places differ\n{r}\n---\n{text}");
    for (d, w) in r.diagnostics.iter().zip(words) {
        let said = format!("{} {}", d.message, d.hint.as_deref().unwrap_or(""));
        assert!(said.contains(w), "{name}: {said:?} does not name {w:?}");
    }
}

#[test]
fn the_base_and_the_service_template_are_valid() {
    assert!(report(BASE).is_none(), "{}", report(BASE).unwrap());
    let t = svc("", NAT, "");
    assert!(report(&t).is_none(), "{}", report(&t).unwrap());
}

#[test]
fn syntax_errors() {
    case(
        "bare words",
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\nmtu = @@15 00\n",
        &["quoted"],
    );
    case(
        "unclosed string",
        // Where the closing quote should be.
        "[dataplane]\nmac = \"02:00:00:00:00:01@@\n",
        &["expected `\"`"],
    );
    case(
        "key twice",
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\n@@mac = \"02:00:00:00:00:02\"\n",
        &["duplicate"],
    );
}

#[test]
fn unknown_keys_point_at_the_key_and_suggest_the_near_one() {
    case(
        "dataplane key",
        &format!("{BASE}@@mttu = 9000\n"),
        &["did you mean `mtu`"],
    );
    case(
        "top-level table",
        &format!("{BASE}[@@servics]\n"),
        &["servics"],
    );
    case(
        "key inside an inline backend",
        &svc(
            "",
            "mode = \"nat\"\nbackends = [{ addr = \"198.18.1.10\", @@prot = 8080 }]",
            "",
        ),
        &["did you mean `port`"],
    );
    case(
        "health_check key",
        &svc(
            "[services.health_check]\nkind = \"tcp\"\n@@intervall = \"1s\"",
            NAT,
            "",
        ),
        &["interval"],
    );
}

#[test]
fn wrong_types_point_at_the_value() {
    case(
        "quoted number",
        &format!("{BASE}workers = @@\"two\"\n"),
        &["without quotes"],
    );
    case(
        "number for a list",
        &format!("{BASE}[[neighbors]]\nip = \"198.18.1.10\"\nmac = @@5\n"),
        &["invalid type"],
    );
    case(
        "unknown enum value",
        &svc("", "mode = @@\"dsr\"\nbackends = []", ""),
        &["dsr-ipip"],
    );
}

#[test]
fn bad_values_point_at_the_value() {
    case(
        "address",
        &format!("{BASE}snat = [\"198.18.0.2\", @@\"198.18.0.300\"]\n"),
        &["IPv4 or IPv6"],
    );
    case(
        "mac",
        "[dataplane]\nmac = @@\"02:00:00:00:00\"\n",
        &["invalid MAC address"],
    );
    case(
        "port range",
        &svc("", NAT, "").replace("ports = [80]", "ports = [80, @@\"90-85\"]"),
        &["first port is above the last"],
    );
    case(
        "port 0",
        &svc("", NAT, "").replace("ports = [80]", "ports = [@@0]"),
        &["invalid port 0"],
    );
    case(
        "duration",
        &format!("{BASE}[conntrack.timeouts]\nudp = @@\"30 s\"\n"),
        &["invalid duration"],
    );
    case(
        "status range",
        &svc(
            "[services.health_check]\nkind = \"http\"\nexpect_status = @@\"200-600\"",
            NAT,
            "",
        ),
        &["invalid status range"],
    );
    case(
        "admin listen",
        &format!("{BASE}[admin]\nlisten = @@\"localhost:9180\"\n"),
        &["socket address"],
    );
}

#[test]
fn missing_required_keys_point_at_their_table() {
    case(
        "service without vip",
        &format!("{BASE}@@[[services]]\nname = \"web\"\nprotocol = \"tcp\"\n"),
        &["`vip` has no default"],
    );
    case(
        "no dataplane at all",
        "@@[logging]\nlevel = \"info\"\n",
        &["dataplane"],
    );
    case(
        "backend without addr",
        &svc("", "mode = \"nat\"\nbackends = [@@{ port = 8080 }]", ""),
        &["addr"],
    );
}

#[test]
fn schema_errors_are_reported_once_per_section() {
    // Three services, a pool and a backend each with their own error: all five are reported.
    let marked = format!(
        "{BASE}@@mttu = 1\n\
         [[services]]\nname = \"a\"\nvip = @@\"198.18.0\"\nprotocol = \"tcp\"\n\
         [[services.pools]]\nname = \"p\"\nmode = @@\"natt\"\n\
         [[services]]\nname = \"b\"\nvip = \"198.18.0.101\"\nprotocol = @@\"tpc\"\n\
         [[services.pools]]\nname = \"q\"\nmode = \"nat\"\nbackends = [{{ addr = \"198.18.1.10\", weight = @@-1 }}]\n"
    );
    case(
        "five sections",
        &marked,
        &["mtu", "IP address", "nat", "tcp", "invalid value"],
    );
}

#[test]
fn dataplane_rules() {
    case(
        "mtu",
        &format!("{BASE}mtu = @@100\n"),
        &["mtu 100 is outside 576-9216"],
    );
    case(
        "workers",
        &format!("{BASE}workers = @@0\n"),
        &["workers must be at least 1"],
    );
    case(
        "snat ports for the workers",
        &format!("{BASE}workers = 4\nsnat_ports = @@\"2000-2002\"\n"),
        &["fewer than the 4 workers"],
    );
    case(
        "interface",
        &format!("{BASE}interface = @@\"eth0:1\"\n"),
        &["not a valid interface name"],
    );
    case(
        "cores",
        &format!("{BASE}workers = 2\ncores = @@[1]\n"),
        &["one per worker"],
    );
    case(
        "multicast mac",
        "[dataplane]\nmac = @@\"01:00:5e:00:00:01\"\n",
        &["multicast"],
    );
    case(
        "zero gateway mac",
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\ngateway_mac = @@\"00:00:00:00:00:00\"\n",
        &["all zeros"],
    );
    case(
        "unspecified address",
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\naddresses = [@@\"0.0.0.0\"]\n",
        &["unspecified"],
    );
    case(
        "multicast snat",
        &format!("{BASE}snat = [@@\"ff02::1\"]\n"),
        &["multicast"],
    );
}

#[test]
fn neighbor_and_conntrack_rules() {
    case(
        "neighbor with two macs",
        &format!(
            "{BASE}[[neighbors]]\nip = \"198.18.1.10\"\nmac = \"02:00:00:00:01:0a\"\n\
             [[neighbors]]\nip = \"198.18.1.10\"\nmac = @@\"02:00:00:00:01:0b\"\n"
        ),
        &["two MACs"],
    );
    case(
        "multicast neighbor",
        &format!("{BASE}[[neighbors]]\nip = @@\"224.0.0.1\"\nmac = \"02:00:00:00:01:0a\"\n"),
        &["multicast"],
    );
    case(
        "capacity",
        &format!("{BASE}[conntrack]\ncapacity = @@1\nembryonic_budget = 0\n"),
        &["too small"],
    );
    case(
        "embryonic budget",
        &format!("{BASE}[conntrack]\ncapacity = 100\nembryonic_budget = @@101\n"),
        &["above capacity 100"],
    );
    case(
        "zero timeout",
        &format!("{BASE}[conntrack.timeouts]\ntcp_syn = @@\"0s\"\n"),
        &["tcp_syn must be above 0"],
    );
}

#[test]
fn bounds_are_checked_before_anything_is_built() {
    // Before: 2^40 passed and `lb run` aborted allocating 377 GB; 2147483647 (a prime) passed and
    // building its table took 12.8 GB.
    case(
        "conntrack capacity above the largest table",
        &format!("{BASE}[conntrack]\ncapacity = @@1099511627776\nembryonic_budget = 0\n"),
        &["above the largest table, 2147483648 keys"],
    );
    case(
        "table size above the largest table",
        &svc("table_size = @@2147483647", NAT, ""),
        &["above the largest table, 2097152 slots"],
    );
    case(
        "a huge weight",
        &svc(
            "table_size = @@65537",
            "mode = \"nat\"\nbackends = [{ addr = \"198.18.1.10\", weight = 4294967295 }, { addr = \"198.18.1.11\" }]",
            "",
        ),
        &["weights add up to 4294967296"],
    );
}

/// Asserts the machine rules for `host` report one problem per marker of `marked`, in order, each
/// naming its word.
#[track_caller]
fn host_case(name: &str, marked: &str, host: &Host, words: &[&str]) {
    let (text, at) = unmark(marked);
    let path = Path::new("lb.toml");
    let cfg = Config::from_toml_str(&text, path).unwrap_or_else(|r| panic!("{name}: {r}"));
    let r = ConfigReport::from_problems(path, &text, &cfg.check_host(host));
    let got: Vec<(usize, usize)> = r.diagnostics.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(got, at, "{name}: places differ\n{r}\n---\n{text}");
    for (d, w) in r.diagnostics.iter().zip(words) {
        let said = format!("{} {}", d.message, d.hint.as_deref().unwrap_or(""));
        assert!(said.contains(w), "{name}: {said:?} does not name {w:?}");
    }
}

#[test]
fn machine_rules_take_the_machine_as_input() {
    let two_cpus = Host {
        cpus: vec![0, 1],
        memory: 8 << 30,
    };
    host_case("fits", &format!("{BASE}workers = 2\n"), &two_cpus, &[]);
    // `lb run` would run workers 2 and 3 unpinned.
    host_case(
        "more workers than online cores",
        &format!("{BASE}workers = @@4\n"),
        &two_cpus,
        &["core 2 is not online on this machine (online: 0-1)"],
    );
    host_case(
        "a listed core that is not online",
        &format!("{BASE}workers = 2\ncores = [1, @@5]\n"),
        &two_cpus,
        &["core 5 is not online"],
    );
    // 2^31 keys are about 356 GiB a worker.
    host_case(
        "conntrack larger than memory",
        &format!("{BASE}[conntrack]\ncapacity = @@2147483648\n"),
        &two_cpus,
        &["more than the 8.0 GiB this machine has available"],
    );
    let small = Host {
        cpus: vec![0, 1],
        memory: 16 << 20,
    };
    host_case(
        "tables larger than memory",
        &format!(
            "{BASE}[conntrack]\ncapacity = 1024\n{}",
            svc("table_size = @@2097143", NAT, "")
                .strip_prefix(BASE)
                .unwrap()
        ),
        &small,
        &["lower [conntrack] capacity, workers or table sizes"],
    );
}

#[test]
fn the_memory_estimate_adds_up_from_sizes() {
    let text = format!(
        "{BASE}workers = 2\n[conntrack]\ncapacity = 1000\n{}",
        svc("table_size = 251", NAT, "").strip_prefix(BASE).unwrap()
    );
    let cfg = Config::from_toml_str(&text, Path::new("lb.toml")).unwrap();
    let m = cfg.memory_estimate();
    // 1000 keys round up to 1024.
    assert_eq!(
        m.conntrack_per_worker,
        dataplane::conntrack::Conntrack::<dataplane::pipeline::FlowValue>::bytes_for(1024)
    );
    assert_eq!((m.workers, m.tables, m.maglev, m.vip_ports), (2, 1, 502, 1));
    assert_eq!(
        m.total(),
        2 * m.conntrack_per_worker + 2 * (502 + m.vip_bytes()) + m.maglev_build
    );
    let line = m.to_string();
    assert!(
        line.contains("conntrack 2 workers x ")
            && line.contains("(Maglev 1 table 502 B + 1 VIP port 48 B) x 2"),
        "{line}"
    );
    // A port range claims each of its ports.
    let wide = text.replace("ports = [80]", "ports = [\"1000-1999\", 80]");
    let cfg = Config::from_toml_str(&wide, Path::new("lb.toml")).unwrap();
    assert_eq!(cfg.memory_estimate().vip_ports, 1001);
}

#[test]
fn service_rules() {
    case(
        "duplicate name",
        &format!(
            "{}[[services]]\nname = @@\"web\"\nvip = \"198.18.0.101\"\nprotocol = \"tcp\"\n",
            svc("", NAT, "")
        ),
        &["name already used"],
    );
    case(
        "multicast vip",
        &svc("", NAT, "").replace("vip = \"198.18.0.100\"", "vip = @@\"239.1.1.1\""),
        &["multicast"],
    );
    case(
        "table size not prime",
        &svc("table_size = @@1000", NAT, ""),
        &["251, 509"],
    );
    case(
        "table size too small for the backends",
        &svc(
            "table_size = @@13",
            "mode = \"nat\"\nbackends = [{ addr = \"198.18.1.10\" }, { addr = \"198.18.1.11\" }]",
            "",
        ),
        &["below 10 slots for each of its 2 backends"],
    );
    case(
        "weights above the table",
        &svc(
            "table_size = @@251",
            "mode = \"nat\"\nweight = 100\nbackends = [{ addr = \"198.18.1.10\", weight = 3 }]",
            "",
        ),
        &["weights add up to 300"],
    );
    case(
        "overlapping services",
        &format!(
            "{}[[services]]\nname = \"web2\"\nvip = \"198.18.0.100\"\nprotocol = \"tcp\"\nports = [@@\"79-81\"]\n",
            svc("", NAT, "")
        ),
        &["both claim 198.18.0.100 tcp port 80"],
    );
}

#[test]
fn pool_and_backend_rules() {
    case(
        "pool name twice",
        &svc(
            "",
            NAT,
            "[[services.pools]]\nname = @@\"p\"\nmode = \"nat\"\n",
        ),
        &["pool name used twice"],
    );
    case(
        "snat on a nat pool",
        &svc("", &format!("snat = @@[\"198.18.0.2\"]\n{NAT}"), ""),
        &["only used by fullnat"],
    );
    case(
        "encap_source on a nat pool",
        &svc("", &format!("encap_source = @@[\"198.18.0.1\"]\n{NAT}"), ""),
        &["only used by dsr"],
    );
    case(
        "gue port 0",
        &svc(
            "",
            "mode = \"dsr-gue\"\ngue_port = @@0\nbackends = [{ addr = \"198.18.1.10\" }]",
            "",
        ),
        &["gue_port 0"],
    );
    case(
        "backend port 0",
        &svc(
            "",
            "mode = \"nat\"\nbackends = [{ addr = \"198.18.1.10\", port = @@0 }]",
            "",
        ),
        &["port 0 is not a port"],
    );
    case(
        "no mac for a backend",
        &svc(
            "",
            "mode = \"nat\"\nbackends = [{ addr = @@\"198.18.1.10\" }]",
            "",
        )
        .replace("gateway_mac = \"02:00:00:00:00:fe\"\n", ""),
        &["[[neighbors]]"],
    );
    case(
        "family change",
        &svc(
            "",
            "mode = \"nat\"\nbackends = [{ addr = @@\"2001:db8::10\" }]",
            "",
        ),
        &["cannot translate between address families"],
    );
    case(
        "ipv4 backend behind an ipv6 vip in dsr",
        &svc(
            "",
            "mode = \"dsr-ipip\"\nbackends = [{ addr = @@\"198.18.1.10\" }]",
            "",
        )
        .replace("vip = \"198.18.0.100\"", "vip = \"2001:db8::100\""),
        &["IPv4 backend behind IPv6 VIP"],
    );
    case(
        "fullnat without a source address",
        &svc(
            "",
            "mode = \"fullnat\"\nbackends = [{ addr = \"198.18.1.10\" }]",
            "",
        )
        .replace("[[services.pools]]", "@@[[services.pools]]"),
        &["[dataplane] snat"],
    );
    case(
        "dsr without an outer source",
        &svc(
            "",
            "mode = \"dsr-ipip\"\nencap_source = @@[\"198.18.0.1\"]\nbackends = [{ addr = \"2001:db8::10\" }]",
            "",
        )
        .replace("addresses = [\"198.18.0.1\", \"2001:db8::1\"]", "addresses = [\"198.18.0.1\"]"),
        &["no IPv6 source"],
    );
    case(
        "dr changes the port",
        &svc(
            "",
            "mode = \"dr\"\nbackends = [{ addr = \"198.18.1.10\", port = @@8080 }]",
            "",
        ),
        &["cannot change the port"],
    );
    case(
        "weight overflow",
        &svc(
            "",
            "mode = \"nat\"\nweight = 4294967295\nbackends = [{ addr = \"198.18.1.10\", weight = @@2 }]",
            "",
        ),
        &["overflows"],
    );
    case(
        "duplicate backend",
        &svc(
            "",
            "mode = \"nat\"\nbackends = [{ addr = \"198.18.1.10\" }, { addr = @@\"198.18.1.10\" }]",
            "",
        ),
        &["the same address and port"],
    );
}

#[test]
fn health_check_rules() {
    let hc = |keys: &str| svc(&format!("[services.health_check]\n{keys}"), NAT, "");
    case(
        "interval 0",
        &hc("kind = \"tcp\"\ninterval = @@\"0s\""),
        &["interval must be above 0"],
    );
    case(
        "timeout 0",
        &hc("kind = \"tcp\"\ntimeout = @@\"0s\""),
        &["timeout must be above 0"],
    );
    case(
        "timeout above interval",
        &hc("kind = \"tcp\"\ninterval = \"1s\"\ntimeout = @@\"2s\""),
        &["longer than the interval"],
    );
    case(
        "jitter not below interval",
        &hc("kind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"500ms\"\njitter = @@\"1s\""),
        &["jitter 1s is not below the interval"],
    );
    case(
        "rise and fall 0",
        &hc("kind = \"tcp\"\nrise = @@0\nfall = @@0"),
        &["rise must be at least 1", "fall must be at least 1"],
    );
    case("port 0", &hc("kind = \"tcp\"\nport = @@0"), &["port 0"]);
    case(
        "nothing to probe",
        &svc(
            "[services.health_check]\nkind = \"tcp\"",
            "mode = \"nat\"\nbackends = [{ addr = \"198.18.1.10\" }]",
            "",
        )
        .replace("ports = [80]\n", "")
        .replace("[services.health_check]", "@@[services.health_check]"),
        &["set port in the health check"],
    );
    case(
        "http path",
        &hc("kind = \"http\"\npath = @@\"healthz\""),
        &["starts with '/'"],
    );
    case(
        "http host",
        &hc("kind = \"http\"\nhost = @@\"a b\""),
        &["Host header"],
    );
    case(
        "http keys on a tcp check",
        &hc("kind = \"tcp\"\npath = @@\"/healthz\"\nexpect_status = @@\"200\""),
        &["only used by http", "kind = \"http\""],
    );
}

#[test]
fn passive_rules() {
    let passive = |keys: &str| svc(&format!("[services.passive]\n{keys}"), NAT, "");
    case(
        "window 0",
        &passive("window = @@\"0s\""),
        &["window must be above 0"],
    );
    case(
        "backoff 0",
        &passive("backoff = @@\"0s\""),
        &["backoff must be above 0"],
    );
    case(
        "never ejects",
        &svc("@@[services.passive]\nunanswered_syns = 0", NAT, ""),
        &["never ejects"],
    );
    case(
        "udp service",
        &svc("@@[services.passive]\nresets = 3", NAT, "")
            .replace("protocol = \"tcp\"", "protocol = \"udp\""),
        &["a udp service has neither"],
    );
}

#[test]
fn admin_and_logging_rules() {
    case(
        "admin on port 0",
        &format!("{BASE}[admin]\nlisten = @@\"127.0.0.1:0\"\n"),
        &["port 0"],
    );
    // A disabled admin API may keep any address.
    assert!(report(&format!(
        "{BASE}[admin]\nenabled = false\nlisten = \"127.0.0.1:0\"\n"
    ))
    .is_none());
    case(
        "filter syntax",
        &format!("{BASE}[logging]\nlevel = @@\"controlplane=loud\"\n"),
        &["not a filter"],
    );
    case(
        "level typo",
        &format!("{BASE}[logging]\nlevel = @@\"warn,inof\"\n"),
        &["did you mean \"info\""],
    );
    case(
        "unknown format",
        &format!("{BASE}[logging]\nformat = @@\"yaml\"\n"),
        &["json"],
    );
    assert!(report(&format!(
        "{BASE}[logging]\nlevel = \"warn,controlplane=debug\"\nformat = \"json\"\n"
    ))
    .is_none());
}

#[test]
fn several_errors_are_all_reported_in_file_order() {
    // Semantic problems are found in several passes (validate, then compile) but come out sorted.
    let text = format!(
        "{BASE}mtu = 100\n\
         [[services]]\nname = \"web\"\nvip = \"198.18.0.100\"\nprotocol = \"tcp\"\ntable_size = 1000\n\
         [[services.pools]]\nname = \"p\"\nmode = \"nat\"\nbackends = [{{ addr = \"2001:db8::10\" }}]\n\
         [logging]\nlevel = \"inof\"\n"
    );
    let r = report(&text).expect("problems");
    let places: Vec<(usize, usize)> = r.diagnostics.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(places, vec![(5, 7), (10, 14), (14, 22), (16, 9)], "{r}");
    let shown = r.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 4, "{shown}");
    assert!(
        lines[0].starts_with("lb.toml:5:7: dataplane: mtu 100"),
        "{shown}"
    );
    assert!(
        lines[1].starts_with("lb.toml:10:14: service web: table_size 1000 is not a prime (hint: "),
        "{shown}"
    );
    assert!(
        lines[2]
            .starts_with("lb.toml:14:22: service web pool p backend 2001:db8::10: IPv6 backend"),
        "{shown}"
    );
    assert!(lines[3].starts_with("lb.toml:16:9: logging: "), "{shown}");
    let rendered = r.render();
    assert!(
        rendered.contains("lb.toml:10:14: error: service web: table_size 1000 is not a prime\n"),
        "{rendered}"
    );
    assert!(rendered.contains("10 | table_size = 1000\n"), "{rendered}");
    assert!(
        rendered.contains("= hint: a prime of at least 10: 251"),
        "{rendered}"
    );
    assert!(rendered.ends_with("4 errors\n"), "{rendered}");
}

#[test]
fn a_fullnat_pool_without_snat_uses_the_dataplane_pool() {
    let text = svc(
        "",
        "mode = \"fullnat\"\nbackends = [{ addr = \"198.18.1.10\" }]",
        "",
    )
    .replace(
        "gateway_mac = \"02:00:00:00:00:fe\"\n",
        "gateway_mac = \"02:00:00:00:00:fe\"\nsnat = [\"198.18.0.2\"]\n",
    );
    let (_, compiled) = compile::check_str(&text, Path::new("lb.toml")).unwrap();
    let snat = &compiled.table.services[0].pools[0].snat;
    assert_eq!(snat, &vec![dataplane::flow::Addr::v4([198, 18, 0, 2])]);
    assert!(compiled
        .table
        .is_snat(dataplane::flow::Addr::v4([198, 18, 0, 2])));

    // A pool's own list wins over the dataplane's.
    let own = text.replace(
        "mode = \"fullnat\"",
        "mode = \"fullnat\"\nsnat = [\"198.18.0.3\"]",
    );
    let (_, compiled) = compile::check_str(&own, Path::new("lb.toml")).unwrap();
    assert_eq!(
        compiled.table.services[0].pools[0].snat,
        vec![dataplane::flow::Addr::v4([198, 18, 0, 3])]
    );
}

#[test]
fn a_missing_file_is_named() {
    let r = compile::check_file(Path::new("/nonexistent/lb.toml")).unwrap_err();
    assert!(
        r.to_string()
            .starts_with("/nonexistent/lb.toml: cannot read the file"),
        "{r}"
    );
    assert!(r.render().ends_with("1 error\n"));
}

#[test]
fn the_shipped_config_passes_with_its_commented_examples_enabled() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../lb.toml"));
    let text = std::fs::read_to_string(path).unwrap();
    if let Err(r) = compile::check_str(&text, path) {
        panic!("{}", r.render());
    }
    // `# key = value` and `# [table]` lines are examples: uncommented, they must be valid too.
    let mut enabled = 0;
    let uncommented: String = text
        .lines()
        .map(|l| {
            let rest = l.strip_prefix("# ").unwrap_or("");
            let key = rest.split_once(" = ").map_or("", |(k, _)| k);
            let is_key = !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
            if is_key || rest.starts_with('[') {
                enabled += 1;
                format!("{rest}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(enabled >= 20, "{enabled} examples found");
    if let Err(r) = compile::check_str(&uncommented, path) {
        panic!("{}\n{uncommented}", r.render());
    }
}

#[test]
fn neighbor_resolution_rules() {
    let dp = "[dataplane]\nmac = \"02:00:00:00:00:01\"\naddresses = [\"198.18.0.1\"]\n";
    case(
        "bad prefix",
        &format!("{dp}on_link = @@[\"198.18.0.0/33\"]\n"),
        &["33"],
    );
    case(
        "two gateways of one family",
        &format!(
            "{dp}on_link = [\"198.18.0.0/16\"]\ngateway = [\"198.18.0.254\", @@\"198.18.0.253\"]\n"
        ),
        &["one gateway per address family"],
    );
    case(
        "gateway off the link",
        &format!("{dp}on_link = [\"198.18.0.0/16\"]\ngateway = [@@\"198.19.0.254\"]\n"),
        &["on_link"],
    );
    // A backend neither on the link, nor behind a gateway, nor with a MAC: named, with the ways out.
    case(
        "no way to reach a backend",
        &format!(
            "{dp}on_link = [\"198.18.0.0/24\"]\n[[services]]\nname = \"web\"\nvip = \"198.18.0.100\"\n\
             protocol = \"tcp\"\n[[services.pools]]\nname = \"p\"\nmode = \"nat\"\n\
             backends = [{{ addr = @@\"198.18.1.10\" }}]\n"
        ),
        &["on_link"],
    );
    // Resolved at run time, but none of our addresses is of the next hop's family to send the
    // ARP/ND probes from: the backend on the link, and the gateway, each named.
    let v6 = "[[services]]\nname = \"web\"\nvip = \"2001:db8::100\"\nprotocol = \"tcp\"\n\
              [[services.pools]]\nname = \"p\"\nmode = \"nat\"\n";
    case(
        "no address to probe an IPv6 next hop from",
        &format!(
            "{dp}on_link = [\"2001:db8::/64\"]\ngateway = [@@\"2001:db8::fe\"]\n{v6}\
             backends = [{{ addr = @@\"2001:db8::10\" }}, {{ addr = \"2001:db9::10\" }}]\n"
        ),
        &["add one to [dataplane] addresses", "ND"],
    );
    // On the link: resolved at run time, no MAC needed.
    let ok = format!(
        "{dp}on_link = [\"198.18.0.0/16\"]\n[[services]]\nname = \"web\"\nvip = \"198.18.0.100\"\n\
         protocol = \"tcp\"\n[[services.pools]]\nname = \"p\"\nmode = \"nat\"\n\
         backends = [{{ addr = \"198.18.1.10\" }}]\n"
    );
    assert!(report(&ok).is_none(), "{}", report(&ok).unwrap());
}

/// An `[[http]]` with one upstream `a` and the given routes.
fn http_routes(routes: &str) -> String {
    format!(
        "{BASE}[[http]]\nname = \"site\"\nlisten = [\"198.18.0.10:80\"]\n\
         [[http.upstreams]]\nname = \"a\"\nbackends = [{{ addr = \"198.18.1.10\", port = 8080 }}]\n{routes}"
    )
}

#[test]
fn a_route_with_the_match_of_an_earlier_one_is_dead() {
    // The same hosts in another case and order, the same path: the third route never gets a
    // request, and the message names the first one it repeats (not the second, which differs).
    let route = |hosts: &str, extra: &str| {
        format!("[[http.routes]]\nhosts = [{hosts}]\npath = \"/x\"\n{extra}upstreams = [{{ name = \"a\" }}]\n")
    };
    let first = route("\"A.example\", \"b.example\"", "");
    let exact = route("\"a.example\", \"b.example\"", "path_type = \"exact\"\n");
    let dead = route("\"b.example\", \"a.example\", \"B.example\"", "");
    case(
        "dead route",
        &http_routes(&format!("{first}{exact}@@{dead}")),
        &["route #1"],
    );
    // Exact beside prefix, another host, gateway routes with another method or header: all
    // different matches, accepted.
    let gateway = |extra: &str| {
        format!("[[http.routes]]\nkind = \"gateway\"\npath = \"/x\"\n{extra}upstreams = [{{ name = \"a\" }}]\n")
    };
    let distinct = [
        first.clone(),
        exact,
        route("\"c.example\"", ""),
        gateway(""),
        gateway("method = \"POST\"\n"),
        gateway("headers = { \"X-A\" = \"1\" }\n"),
    ]
    .concat();
    assert!(report(&http_routes(&distinct)).is_none(), "{distinct}");
}

/// Two interfaces that are fine on their own: outside and inside.
const TWO_ARMED: &str = r#"[dataplane]
workers = 1

[[dataplane.interfaces]]
name = "lbo"
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]

[[dataplane.interfaces]]
name = "lbi"
mac = "02:00:00:00:00:02"
addresses = ["198.18.1.1"]
on_link = ["198.18.1.0/24"]
"#;

#[test]
fn interfaces_are_checked_each_at_its_own_key() {
    assert!(
        report(&format!(
            "{TWO_ARMED}[[services]]\nname = \"web\"\nvip = \"198.18.0.100\"\nprotocol = \"tcp\"\nports = [80]\n\
             [[services.pools]]\nname = \"p\"\n{NAT}\n"
        ))
        .is_none(),
        "a backend on the inside link is reachable"
    );
    case(
        "the single-interface keys beside interfaces",
        &TWO_ARMED.replace(
            "workers = 1\n",
            "workers = 1\nmac = @@\"02:00:00:00:00:09\"\n",
        ),
        &["each interface's entry"],
    );
    case(
        "two interfaces with one MAC",
        &TWO_ARMED.replace(
            "mac = \"02:00:00:00:00:02\"",
            "mac = @@\"02:00:00:00:00:01\"",
        ),
        &["own MAC"],
    );
    case(
        "a route without a gateway of its family",
        &TWO_ARMED.replace(
            "on_link = [\"198.18.1.0/24\"]\n",
            "on_link = [\"198.18.1.0/24\"]\nroutes = [@@\"198.18.128.0/17\"]\n",
        ),
        &["gateway"],
    );
    case(
        "an interface name the kernel refuses",
        &TWO_ARMED.replace("name = \"lbi\"", "name = @@\"lb/inside\""),
        &["not a valid interface name"],
    );
    case(
        "a backend no interface reaches",
        &format!(
            "{TWO_ARMED}[[services]]\nname = \"web\"\nvip = \"198.18.0.100\"\nprotocol = \"tcp\"\nports = [80]\n\
             [[services.pools]]\nname = \"p\"\nmode = \"nat\"\nbackends = [{{ addr = @@\"198.18.7.10\", port = 8080 }}]\n"
        ),
        &["[[dataplane.interfaces]]"],
    );
    case(
        "one interface without a mac",
        "@@[dataplane]\naddresses = [\"198.18.0.1\"]\n",
        &["mac"],
    );
    case(
        "one interface with an all-zero mac",
        "[dataplane]\nmac = @@\"00:00:00:00:00:00\"\n",
        &["mac"],
    );
    case(
        "an interface with a multicast mac",
        &TWO_ARMED.replace(
            "mac = \"02:00:00:00:00:02\"",
            "mac = @@\"03:00:00:00:00:02\"",
        ),
        &["mac"],
    );
}

#[test]
fn queues_are_one_af_xdp_receive_queue_per_worker() {
    let xdp = TWO_ARMED
        .replace("workers = 1\n", "workers = 2\nport = \"af_xdp\"\n")
        .replace("name = \"lbi\"\n", "name = \"lbi\"\nqueues = [4, 5]\n");
    assert!(
        report(&xdp).is_none(),
        "two af_xdp queue ids for two workers are accepted"
    );
    case(
        "queues on a tap interface",
        &TWO_ARMED.replace("name = \"lbi\"\n", "name = \"lbi\"\nqueues = @@[3]\n"),
        &["\"tap\""],
    );
    case(
        "fewer queues than workers",
        &xdp.replace("queues = [4, 5]", "queues = @@[4]"),
        &["1 queues for 2 workers"],
    );
    case(
        "a queue listed twice",
        &xdp.replace("queues = [4, 5]", "queues = [4, @@4]"),
        &["listed twice"],
    );
    case(
        "a queue id past the kernel's limit",
        &xdp.replace("queues = [4, 5]", "queues = [4, @@4096]"),
        &["below 4096"],
    );
    case(
        "queues beside [[dataplane.interfaces]]",
        &xdp.replace("workers = 2\n", "workers = 2\nqueues = @@[0, 1]\n"),
        &["each interface's entry"],
    );
    case(
        "one interface's queues for another port",
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\nport = \"af_packet\"\nqueues = @@[2]\n",
        &["af_xdp"],
    );
}

#[test]
fn a_static_neighbor_names_an_interface_that_exists() {
    let pinned = format!(
        "{TWO_ARMED}[[neighbors]]\nip = \"198.18.7.10\"\nmac = \"02:00:00:00:07:0a\"\ninterface = \"lbi\"\n"
    );
    assert!(report(&pinned).is_none(), "an inside neighbor is accepted");
    case(
        "a neighbor on an interface that is not configured",
        &pinned.replace("interface = \"lbi\"", "interface = @@\"lbx\""),
        &["no interface \"lbx\""],
    );
}

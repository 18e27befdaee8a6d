//! Replays Katran's L4 packet fixtures (`shared/testdata/katran`, beside the checkout) through our
//! real pipeline and checks the semantics another balancer must share with Katran: what is
//! encapsulated to which reals, what is answered, what must not be forwarded. Which real is chosen,
//! the outer source address and anything else that is Katran's own choice is not checked.
//!
//! Each fixture runs on its own (`sim::run` with a fresh conntrack). A fixture we fail is a bug
//! unless docs/KATRAN.md lists it with the policy that makes us differ; that list is
//! [`KNOWN_DIFFERENCES`], and a listed fixture that passes (or differs in another way than the
//! documented verdict) fails the test too, so the list stays honest.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use etherparse::checksum::Sum16BitWords;
use etherparse::{Ethernet2Slice, Icmpv6Slice, Ipv4Slice, Ipv6Slice, PacketBuilder, UdpHeader};
use serde::Deserialize;

/// Katran's fixtures and the two neutral scenarios (read in place, never copied into the project).
const KATRAN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/katran");
/// Where the known differences are explained.
const KATRAN_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/KATRAN.md");

/// Fixtures on which we differ from Katran by a documented policy: (fixture id, our verdict).
/// Keep in sync with the table in docs/KATRAN.md (`known_differences_match_the_doc` checks it).
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    // ICMP errors are forwarded only for flows we track; Katran hashes the quoted tuple.
    // L4 checksums are verified on flow creation; Katran never checks them.
    ("base.testFixtures.26", "drop:bad-l4-checksum"),
    ("base.testFixtures.27", "drop:bad-l4-checksum"),
    ("gue.gueTestFixtures.24", "drop:bad-l4-checksum"),
    ("gue.gueTestFixtures.25", "drop:bad-l4-checksum"),
    ("tpr.tprTestFixtures.04", "drop:bad-l4-checksum"),
    ("tpr.tprTestFixtures.17", "drop:bad-l4-checksum"),
    ("tpr.tprGueTestFixtures.04", "drop:bad-l4-checksum"),
    ("tpr.tprGueTestFixtures.17", "drop:bad-l4-checksum"),
];

// ---------------------------------------------------------------------------------------------
// index.json and the scenario files

/// `index.json`: only the fields the replay uses.
#[derive(Debug, Deserialize)]
struct Index {
    fixtures: Vec<Fixture>,
}

/// One Katran fixture.
#[derive(Debug, Deserialize)]
struct Fixture {
    id: String,
    description: String,
    source: Source,
    input_pcap: String,
    #[serde(default)]
    expected_output_pcap: Option<String>,
    expected_return: String,
    katran_config: String,
    #[serde(default)]
    expected_output: Option<serde_json::Value>,
    semantic: Semantic,
}

/// Where in Katran's sources a fixture comes from.
#[derive(Debug, Deserialize)]
struct Source {
    vector: String,
}

/// What another balancer can be checked against.
#[derive(Debug, Deserialize)]
struct Semantic {
    kind: String,
    portable: bool,
    check: String,
}

/// `scenario-katran-*.json` (format `l4-scenario/1`).
#[derive(Debug, Deserialize)]
struct Scenario {
    name: String,
    lb: LbIdentity,
    gateway: Gateway,
    #[serde(default)]
    neighbors: Vec<Neighbor>,
    encap: Encap,
    vips: Vec<Vip>,
}

/// The balancer's own identity.
#[derive(Debug, Deserialize)]
struct LbIdentity {
    mac: String,
    ipv4: IpAddr,
    ipv6: IpAddr,
    mtu: u16,
}

/// The default next hop.
#[derive(Debug, Deserialize)]
struct Gateway {
    mac: String,
}

/// A static neighbor.
#[derive(Debug, Deserialize)]
struct Neighbor {
    #[serde(alias = "addr")]
    ip: IpAddr,
    mac: String,
}

/// Encapsulation settings.
#[derive(Debug, Deserialize)]
struct Encap {
    gue_port: u16,
}

/// One VIP: address, port (0 = every port), protocol, mode and reals.
#[derive(Debug, Deserialize)]
struct Vip {
    name: String,
    addr: IpAddr,
    port: u16,
    proto: String,
    mode: String,
    #[serde(default)]
    affinity: Option<String>,
    backends: Vec<Backend>,
}

/// One real.
#[derive(Debug, Deserialize)]
struct Backend {
    addr: IpAddr,
    port: u16,
    mac: String,
    weight: u32,
}

fn katran_path(rel: &str) -> PathBuf {
    Path::new(KATRAN_DIR).join(rel)
}

fn load_index() -> Index {
    let path = katran_path("index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (shared/ must sit beside the checkout)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_scenario(t: Tunnel) -> Scenario {
    let path = katran_path(t.scenario_file());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn proto_number(name: &str) -> Option<u8> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        _ => None,
    }
}

impl Scenario {
    /// The VIP serving `addr`/`proto`/`port`: an exact port first, then an every-port VIP.
    fn vip_for(&self, addr: IpAddr, proto: u8, port: u16) -> Option<&Vip> {
        let same = |v: &&Vip| v.addr == addr && proto_number(&v.proto) == Some(proto);
        self.vips
            .iter()
            .filter(same)
            .find(|v| v.port == port)
            .or_else(|| self.vips.iter().filter(same).find(|v| v.port == 0))
    }

    /// Every real of every VIP.
    fn is_any_real(&self, a: IpAddr) -> bool {
        self.vips
            .iter()
            .any(|v| v.backends.iter().any(|b| b.addr == a))
    }
}

/// Writes the scenario as lb.toml text (the shipped `lb.toml` format, docs/PIPELINE.md).
fn lb_toml(s: &Scenario) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Generated from {} (Katran's test configuration).",
        s.name
    );
    let _ = writeln!(t, "[dataplane]");
    let _ = writeln!(t, "mac = {}", quoted(&s.lb.mac));
    let _ = writeln!(
        t,
        "addresses = [{}, {}]",
        quoted(&s.lb.ipv4.to_string()),
        quoted(&s.lb.ipv6.to_string())
    );
    let _ = writeln!(t, "mtu = {}", s.lb.mtu);
    let _ = writeln!(t, "snat_ports = \"1024-65535\"");
    let _ = writeln!(t, "gateway_mac = {}", quoted(&s.gateway.mac));
    // Reals behind another MAC than the gateway's get a static neighbor.
    let mut neighbors: BTreeMap<IpAddr, String> =
        s.neighbors.iter().map(|n| (n.ip, n.mac.clone())).collect();
    for b in s.vips.iter().flat_map(|v| &v.backends) {
        if !b.mac.eq_ignore_ascii_case(&s.gateway.mac) {
            neighbors.insert(b.addr, b.mac.clone());
        }
    }
    for (ip, mac) in &neighbors {
        let _ = writeln!(
            t,
            "\n[[neighbors]]\nip = {}\nmac = {}",
            quoted(&ip.to_string()),
            quoted(mac)
        );
    }
    let _ = writeln!(
        t,
        "\n[conntrack]\ncapacity = 65536\nembryonic_budget = 16384"
    );
    let _ = writeln!(
        t,
        "\n[conntrack.timeouts]\ntcp_syn = \"5s\"\ntcp_established = \"15m\"\ntcp_closing = \"10s\"\nudp = \"30s\""
    );
    for v in &s.vips {
        let _ = writeln!(t, "\n[[services]]\nname = {}", quoted(&v.name));
        let _ = writeln!(t, "vip = {}", quoted(&v.addr.to_string()));
        // Katran's port 0 is every port: our `ports` left out.
        if v.port != 0 {
            let _ = writeln!(t, "ports = [{}]", quoted(&v.port.to_string()));
        }
        let _ = writeln!(t, "protocol = {}", quoted(&v.proto));
        let _ = writeln!(
            t,
            "affinity = {}",
            quoted(v.affinity.as_deref().unwrap_or("none"))
        );
        let _ = writeln!(
            t,
            "\n[[services.pools]]\nname = \"reals\"\nmode = {}",
            quoted(&v.mode)
        );
        let dsr = v.mode.starts_with("dsr-");
        if v.mode == "dsr-gue" {
            let _ = writeln!(t, "gue_port = {}", s.encap.gue_port);
        }
        let backends: Vec<String> = v
            .backends
            .iter()
            .map(|b| {
                // DSR never rewrites the port, so a backend port would only be noise.
                if dsr || b.port == 0 {
                    format!(
                        "{{ addr = {}, weight = {} }}",
                        quoted(&b.addr.to_string()),
                        b.weight
                    )
                } else {
                    format!(
                        "{{ addr = {}, port = {}, weight = {} }}",
                        quoted(&b.addr.to_string()),
                        b.port,
                        b.weight
                    )
                }
            })
            .collect();
        let _ = writeln!(t, "backends = [{}]", backends.join(", "));
    }
    t
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut m {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

// ---------------------------------------------------------------------------------------------
// Which fixtures run, under which scenario, checked how

/// The encapsulation a scenario uses (and so which scenario file applies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tunnel {
    Ipip,
    Gue,
}

impl Tunnel {
    fn scenario_file(self) -> &'static str {
        match self {
            Tunnel::Ipip => "scenario-katran-ipip.json",
            Tunnel::Gue => "scenario-katran-gue.json",
        }
    }
}

/// What a fixture's semantics require of us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Encapsulated to one of the VIP's reals, inner packet unchanged.
    Encap,
    /// An ICMP error about a VIP flow, encapsulated to one of the VIP's reals unchanged.
    IcmpErrorEncap,
    /// An echo reply from the VIP.
    EchoReply,
    /// Not for a VIP: anything but forwarding it to a real.
    NotForwarded,
    /// Katran drops it (or answers with its own MTU): a policy question. Anything but a
    /// forward to a real; a transmitted frame must be an ICMP error to the client with our MTU.
    Policy,
}

/// How one fixture is handled.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Plan {
    /// Replayed under a scenario.
    Run { tunnel: Tunnel, expect: Expect },
    /// Not replayed, with the reason (grouped in the summary).
    Skip(String),
}

/// The Katran configurations our scenarios restate (the `+optional` fixtures that run are the
/// ones whose semantics do not depend on the optional features).
const SCENARIO_CONFIGS: [&str; 2] = ["katran-default", "katran-default+optional"];

fn plan(f: &Fixture) -> Plan {
    let sem = &f.semantic;
    if !SCENARIO_CONFIGS.contains(&f.katran_config.as_str()) {
        return Plan::Skip(format!(
            "{} config (a separate Katran program)",
            f.katran_config
        ));
    }
    if let Some(rest) = sem.check.strip_prefix("Katran feature-specific (") {
        let feature = rest.split(')').next().unwrap_or(rest);
        return Plan::Skip(format!("Katran feature-specific ({feature})"));
    }
    let expect = match sem.kind.as_str() {
        "encap" if sem.check.contains("one of the VIP's reals") => Expect::Encap,
        "encap" => return Plan::Skip("Katran feature destination, not a VIP real".into()),
        "encap-icmp-error" => Expect::IcmpErrorEncap,
        "icmp-echo-reply" => Expect::EchoReply,
        "to-host" => Expect::NotForwarded,
        "drop" | "icmp-too-big" => Expect::Policy,
        other => return Plan::Skip(format!("Katran-specific rewrite ({other})")),
    };
    Plan::Run {
        tunnel: tunnel_of(f),
        expect,
    }
}

/// IPIP or GUE: the check text says so for encapsulations; otherwise the fixture's group
/// (`gueTestFixtures`, `tprGueTestFixtures`, `originGueIcmpTooBig...`) does.
fn tunnel_of(f: &Fixture) -> Tunnel {
    if f.semantic.check.contains("GUE") {
        Tunnel::Gue
    } else if f.semantic.check.contains("IPIP") {
        Tunnel::Ipip
    } else if f.source.vector.to_ascii_lowercase().contains("gue") {
        Tunnel::Gue
    } else {
        Tunnel::Ipip
    }
}

// ---------------------------------------------------------------------------------------------
// Independent decoding of frames (etherparse), never trusting our own parser

/// An Ethernet frame's IP packet, cut to its stated length (Ethernet padding removed).
#[derive(Debug)]
struct Ip<'a> {
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    /// Transport protocol / next header after extension headers.
    proto: u8,
    /// The whole IP packet.
    packet: &'a [u8],
    /// The IP payload.
    payload: &'a [u8],
    /// IPv4 header checksum valid (always true for IPv6).
    header_ok: bool,
}

fn decode_frame(frame: &[u8]) -> Result<Ip<'_>, String> {
    let eth =
        Ethernet2Slice::from_slice_without_fcs(frame).map_err(|e| format!("ethernet: {e}"))?;
    let mut ethertype = eth.ether_type().0;
    let mut l3 = eth.payload_slice();
    if ethertype == 0x8100 {
        ethertype = l3
            .get(2..4)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or("short vlan")?;
        l3 = l3.get(4..).ok_or("short vlan")?;
    }
    let mut ip = match ethertype {
        0x0800 | 0x86dd => decode_ip(l3)?,
        other => return Err(format!("ethertype {other:#06x}")),
    };
    ip.eth_src = eth.source();
    ip.eth_dst = eth.destination();
    Ok(ip)
}

/// Decodes a bare IP packet (the inner packet of a tunnel, or one at an Ethernet payload).
fn decode_ip(bytes: &[u8]) -> Result<Ip<'_>, String> {
    match bytes.first().map(|b| b >> 4) {
        Some(4) => {
            let v4 = Ipv4Slice::from_slice(bytes).map_err(|e| format!("ipv4: {e}"))?;
            let h = v4.header();
            let total = usize::from(h.total_len());
            let header_ok = Sum16BitWords::new().add_slice(h.slice()).ones_complement() == 0;
            Ok(Ip {
                eth_src: [0; 6],
                eth_dst: [0; 6],
                src: IpAddr::V4(h.source_addr()),
                dst: IpAddr::V4(h.destination_addr()),
                proto: v4.payload().ip_number.0,
                packet: bytes.get(..total).ok_or("ipv4 total length")?,
                payload: v4.payload().payload,
                header_ok,
            })
        }
        Some(6) => {
            let v6 = Ipv6Slice::from_slice(bytes).map_err(|e| format!("ipv6: {e}"))?;
            let h = v6.header();
            let total = 40 + usize::from(h.payload_length());
            Ok(Ip {
                eth_src: [0; 6],
                eth_dst: [0; 6],
                src: IpAddr::V6(h.source_addr()),
                dst: IpAddr::V6(h.destination_addr()),
                proto: v6.payload().ip_number.0,
                packet: bytes.get(..total).ok_or("ipv6 payload length")?,
                payload: v6.payload().payload,
                header_ok: true,
            })
        }
        _ => Err("not an IP packet".into()),
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]))
}

fn is_icmp_error(ip: &Ip<'_>) -> bool {
    match (ip.src, ip.proto, ip.payload.first()) {
        (IpAddr::V4(_), 1, Some(t)) => matches!(t, 3 | 4 | 11 | 12),
        (IpAddr::V6(_), 58, Some(t)) => (1..=4).contains(t),
        _ => false,
    }
}

/// The VIP side of the flow a frame belongs to: (VIP, protocol, VIP port). For an ICMP error,
/// the flow of the packet it quotes (sent by the VIP).
fn vip_flow(ip: &Ip<'_>) -> Option<(IpAddr, u8, u16)> {
    match ip.proto {
        6 | 17 => Some((ip.dst, ip.proto, be16(ip.payload, 2)?)),
        _ if is_icmp_error(ip) => {
            let q = decode_ip(ip.payload.get(8..)?).ok()?;
            matches!(q.proto, 6 | 17).then_some(())?;
            Some((q.src, q.proto, be16(q.payload, 0)?))
        }
        _ => None,
    }
}

/// Internet checksum over ICMPv4 (or any message without a pseudo header): valid when it sums to 0.
fn sums_to_zero(bytes: &[u8]) -> bool {
    Sum16BitWords::new().add_slice(bytes).ones_complement() == 0
}

fn icmp_checksum_ok(ip: &Ip<'_>) -> bool {
    match (ip.src, ip.dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => Icmpv6Slice::from_slice(ip.payload)
            .map(|m| m.is_checksum_valid(s.octets(), d.octets()))
            .unwrap_or(false),
        _ => sums_to_zero(ip.payload),
    }
}

/// One line about a frame, for the failure table.
fn summarize(frame: &[u8]) -> String {
    let ip = match decode_frame(frame) {
        Ok(ip) => ip,
        Err(e) => return format!("{} bytes, {e}", frame.len()),
    };
    let mut s = format!("{} > {} proto {}", ip.src, ip.dst, ip.proto);
    if ip.proto == 17 {
        if let (Some(sp), Some(dp)) = (be16(ip.payload, 0), be16(ip.payload, 2)) {
            let _ = write!(s, " udp {sp}>{dp}");
        }
    }
    if let (1 | 58, Some(t), Some(c)) = (ip.proto, ip.payload.first(), ip.payload.get(1)) {
        let _ = write!(s, " icmp {t}/{c}");
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The checks

/// What a check is given: the scenario, the input frame, and what we did with it.
struct Case<'a> {
    scenario: &'a Scenario,
    tunnel: Tunnel,
    input: &'a [u8],
    verdict: &'a str,
    output: Option<&'a [u8]>,
}

/// Checks one result; `Ok` carries a short note (e.g. which real), `Err` why it fails.
fn check(expect: Expect, c: &Case<'_>) -> Result<String, String> {
    match expect {
        Expect::Encap | Expect::IcmpErrorEncap => check_encap(c),
        Expect::EchoReply => check_echo_reply(c),
        Expect::NotForwarded => check_not_forwarded(c),
        Expect::Policy => check_policy(c),
    }
}

fn tx_output<'a>(c: &Case<'a>) -> Result<&'a [u8], String> {
    if c.verdict != "tx" {
        return Err(format!("verdict {}, expected tx", c.verdict));
    }
    c.output
        .ok_or_else(|| "verdict tx without an output frame".to_string())
}

/// Encapsulation: outer header to one of the VIP's reals (behind its MAC), IPIP / IPv6-in-IPv6 /
/// GUE as the scenario says, inner packet byte-identical to the input's IP packet.
fn check_encap(c: &Case<'_>) -> Result<String, String> {
    let input = decode_frame(c.input).map_err(|e| format!("input: {e}"))?;
    let (vip, proto, port) = vip_flow(&input).ok_or("input belongs to no VIP flow")?;
    let v = c
        .scenario
        .vip_for(vip, proto, port)
        .ok_or_else(|| format!("scenario has no VIP {vip} proto {proto} port {port}"))?;
    let out = decode_frame(tx_output(c)?).map_err(|e| format!("output: {e}"))?;
    let real = v
        .backends
        .iter()
        .find(|b| b.addr == out.dst)
        .ok_or_else(|| format!("outer dst {} is not a real of {}", out.dst, v.name))?;
    if Some(out.eth_dst) != parse_mac(&real.mac) {
        return Err(format!(
            "outer dst MAC {:02x?}, the real is behind {}",
            out.eth_dst, real.mac
        ));
    }
    if Some(out.eth_src) != parse_mac(&c.scenario.lb.mac) {
        return Err(format!("outer src MAC {:02x?} is not ours", out.eth_src));
    }
    if !out.header_ok {
        return Err("outer IPv4 header checksum wrong".into());
    }
    let inner_v6 = input.dst.is_ipv6();
    let inner = match c.tunnel {
        Tunnel::Ipip => {
            let want = if out.dst.is_ipv4() || !inner_v6 {
                4
            } else {
                41
            };
            if out.proto != want {
                return Err(format!("outer protocol {}, IPIP wants {want}", out.proto));
            }
            out.payload
        }
        Tunnel::Gue => {
            if out.proto != 17 {
                return Err(format!("outer protocol {}, GUE wants UDP", out.proto));
            }
            check_gue_udp(&out, c.scenario.encap.gue_port)?;
            out.payload.get(8..).unwrap_or_default()
        }
    };
    if inner != input.packet {
        return Err(format!(
            "inner packet ({} bytes) differs from the input's IP packet ({} bytes)",
            inner.len(),
            input.packet.len()
        ));
    }
    Ok(format!("{:?} to {}", c.tunnel, out.dst))
}

/// GUE's UDP header: our port, a length covering the inner packet, a valid checksum (or none
/// over IPv4).
fn check_gue_udp(out: &Ip<'_>, gue_port: u16) -> Result<(), String> {
    let (h, payload) = UdpHeader::from_slice(out.payload).map_err(|e| format!("udp: {e}"))?;
    if h.destination_port != gue_port {
        return Err(format!(
            "GUE port {}, scenario says {gue_port}",
            h.destination_port
        ));
    }
    if usize::from(h.length) != out.payload.len() {
        return Err(format!(
            "UDP length {} for {} bytes",
            h.length,
            out.payload.len()
        ));
    }
    let want = match (out.src, out.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) if h.checksum == 0 => return Ok(()),
        (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => h.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload),
        _ => return Err("mixed outer address families".into()),
    }
    .map_err(|e| format!("udp checksum: {e}"))?;
    if h.checksum != want {
        return Err(format!(
            "GUE UDP checksum {:#06x}, should be {want:#06x}",
            h.checksum
        ));
    }
    Ok(())
}

/// Echo reply: addresses swapped, type 0 / 129, identifier, sequence and data kept, valid
/// checksums, back to the MAC the request came from.
fn check_echo_reply(c: &Case<'_>) -> Result<String, String> {
    let input = decode_frame(c.input).map_err(|e| format!("input: {e}"))?;
    let out = decode_frame(tx_output(c)?).map_err(|e| format!("output: {e}"))?;
    if (out.src, out.dst) != (input.dst, input.src) {
        return Err(format!(
            "reply {} > {}, request was {} > {}",
            out.src, out.dst, input.src, input.dst
        ));
    }
    if out.eth_dst != input.eth_src {
        return Err("reply not sent back to the requester's MAC".into());
    }
    let want_type = if out.dst.is_ipv4() { 0 } else { 129 };
    if out.proto != input.proto
        || out.payload.first() != Some(&want_type)
        || out.payload.get(1) != Some(&0)
    {
        return Err(format!("not an echo reply: {}", summarize(tx_output(c)?)));
    }
    if out.payload.get(4..) != input.payload.get(4..) {
        return Err("identifier, sequence or data changed".into());
    }
    if !out.header_ok {
        return Err("IPv4 header checksum wrong".into());
    }
    if !icmp_checksum_ok(&out) {
        return Err("ICMP checksum wrong".into());
    }
    Ok("echo reply".into())
}

/// Not for a VIP: to-host or a drop; a transmitted frame must be an answer to the sender, never a
/// forward to a real.
fn check_not_forwarded(c: &Case<'_>) -> Result<String, String> {
    if c.verdict != "tx" {
        return Ok(c.verdict.to_string());
    }
    let out = tx_output(c)?;
    let Ok(o) = decode_frame(out) else {
        return Ok(format!("tx non-IP ({} bytes)", out.len()));
    };
    if c.scenario.is_any_real(o.dst) {
        return Err(format!("forwarded to real {}: {}", o.dst, summarize(out)));
    }
    match decode_frame(c.input) {
        Ok(i) if o.dst == i.src => Ok(format!("tx answer: {}", summarize(out))),
        _ => Err(format!("forwarded: {}", summarize(out))),
    }
}

/// A policy case: anything but a forward to a real. If we transmit, it must be our ICMP
/// fragmentation-needed / packet-too-big to the client, quoting the input, with our tunnel MTU.
fn check_policy(c: &Case<'_>) -> Result<String, String> {
    if c.verdict != "tx" {
        return Ok(c.verdict.to_string());
    }
    let out = tx_output(c)?;
    let o = decode_frame(out).map_err(|e| format!("tx of a non-IP frame: {e}"))?;
    if c.scenario.is_any_real(o.dst) {
        return Err(format!("forwarded to real {}: {}", o.dst, summarize(out)));
    }
    check_too_big(c).map(|mtu| format!("tx ICMP too big, MTU {mtu}"))
}

/// Our ICMP "fragmentation needed" (v4) / "packet too big" (v6) for an input that does not fit
/// the tunnel: from the VIP to the client's MAC and address, quoting the start of the input, with
/// the MTU the tunnel leaves (link MTU minus the outer headers towards one of the VIP's reals).
/// Returns the MTU reported.
fn check_too_big(c: &Case<'_>) -> Result<u32, String> {
    let input = decode_frame(c.input).map_err(|e| format!("input: {e}"))?;
    let out = decode_frame(tx_output(c)?).map_err(|e| format!("output: {e}"))?;
    if (out.src, out.dst) != (input.dst, input.src) {
        return Err(format!(
            "ICMP {} > {}, should go from the VIP to the client",
            out.src, out.dst
        ));
    }
    if out.eth_dst != input.eth_src {
        return Err("ICMP not sent back to the client's MAC".into());
    }
    let v4 = out.dst.is_ipv4();
    let icmp = out.payload;
    let (mtu, limit) = if v4 {
        if out.proto != 1 || icmp.get(..2) != Some(&[3, 4]) {
            return Err(format!(
                "not ICMP fragmentation needed: {}",
                summarize(tx_output(c)?)
            ));
        }
        (u32::from(be16(icmp, 6).unwrap_or(0)), 576)
    } else {
        if out.proto != 58 || icmp.get(..2) != Some(&[2, 0]) {
            return Err(format!(
                "not ICMPv6 packet too big: {}",
                summarize(tx_output(c)?)
            ));
        }
        let m = icmp
            .get(4..8)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        (m.unwrap_or(0), 1280)
    };
    let quote = icmp.get(8..).unwrap_or_default();
    if quote.is_empty() || !input.packet.starts_with(quote) {
        return Err("the quote is not the start of the input packet".into());
    }
    if out.packet.len() > limit {
        return Err(format!(
            "ICMP error of {} bytes, limit {limit}",
            out.packet.len()
        ));
    }
    if !out.header_ok || !icmp_checksum_ok(&out) {
        return Err("checksum wrong".into());
    }
    let allowed = tunnel_mtus(c, &input);
    if !allowed.contains(&mtu) {
        return Err(format!("MTU {mtu}, our tunnel MTU is one of {allowed:?}"));
    }
    Ok(mtu)
}

/// Link MTU minus the outer headers, for each real of the input's VIP.
fn tunnel_mtus(c: &Case<'_>, input: &Ip<'_>) -> Vec<u32> {
    let udp = if c.tunnel == Tunnel::Gue { 8 } else { 0 };
    let mut v: Vec<u32> = vip_flow(input)
        .and_then(|(a, p, port)| c.scenario.vip_for(a, p, port))
        .map(|vip| {
            vip.backends
                .iter()
                .map(|b| {
                    let outer = if b.addr.is_ipv4() { 20 } else { 40 } + udp;
                    u32::from(c.scenario.lb.mtu).saturating_sub(outer)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v.dedup();
    v
}

/// A packet from the client that creates the flow an ICMP error quotes (the quote is the VIP's
/// reply, so the client's packet has its addresses and ports swapped): a TCP SYN or a UDP packet.
fn primer_for(icmp_frame: &[u8]) -> Result<Vec<u8>, String> {
    let outer = decode_frame(icmp_frame)?;
    if !is_icmp_error(&outer) {
        return Err("not an ICMP error".into());
    }
    let q = decode_ip(outer.payload.get(8..).unwrap_or_default())?;
    let (vport, cport) = (
        be16(q.payload, 0).ok_or("quote has no ports")?,
        be16(q.payload, 2).ok_or("quote has no ports")?,
    );
    let base = PacketBuilder::ethernet2(outer.eth_src, outer.eth_dst);
    let ip = match (q.dst, q.src) {
        (IpAddr::V4(client), IpAddr::V4(vip)) => base.ipv4(client.octets(), vip.octets(), 64),
        (IpAddr::V6(client), IpAddr::V6(vip)) => base.ipv6(client.octets(), vip.octets(), 64),
        _ => return Err("mixed families in the quote".into()),
    };
    let mut frame = Vec::new();
    let payload = b"primer";
    let written = match q.proto {
        6 => ip
            .tcp(cport, vport, 1, 8192)
            .syn()
            .write(&mut frame, payload),
        17 => ip.udp(cport, vport).write(&mut frame, payload),
        p => return Err(format!("quote protocol {p}")),
    };
    written.map_err(|e| format!("building the primer: {e}"))?;
    Ok(frame)
}

// ---------------------------------------------------------------------------------------------
// The replay

/// What the simulator did with one frame.
struct SimFrame {
    verdict: String,
    output: Option<Vec<u8>>,
}

/// A compiled scenario: frames in, one result per frame out (fresh state on every call).
type Sim<'a> = &'a dyn Fn(&[Vec<u8>]) -> Vec<SimFrame>;

/// One fixture's outcome.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Pass(String),
    /// Differs as docs/KATRAN.md says.
    Documented(String),
    Fail(String),
}

/// One row of the report.
struct Row {
    id: String,
    description: String,
    portable: bool,
    expect: Expect,
    check: String,
    ours: String,
    outcome: Outcome,
}

fn documented(id: &str) -> Option<&'static str> {
    KNOWN_DIFFERENCES
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, v)| *v)
}

/// Applies the allow-list to a check's result.
fn judge(id: &str, verdict: &str, result: Result<String, String>) -> Outcome {
    match (documented(id), result) {
        (None, Ok(note)) => Outcome::Pass(note),
        (None, Err(why)) => Outcome::Fail(why),
        (Some(_), Ok(note)) => Outcome::Fail(format!(
            "passes ({note}) but docs/KATRAN.md lists it as a difference: remove it there and from KNOWN_DIFFERENCES"
        )),
        (Some(doc), Err(why)) if doc == verdict => Outcome::Documented(why),
        (Some(doc), Err(why)) => Outcome::Fail(format!("{why}; documented verdict is {doc}, ours is {verdict}")),
    }
}

/// Replays one planned fixture with `sim` (one call per fixture: fresh state).
fn replay(
    f: &Fixture,
    tunnel: Tunnel,
    expect: Expect,
    scenario: &Scenario,
    input: &[u8],
    sim: Sim<'_>,
) -> Row {
    let frames = vec![input.to_vec()];
    let results = sim(&frames);
    let (verdict, output) = match results.first() {
        Some(r) if results.len() == 1 => (r.verdict.clone(), r.output.clone()),
        _ => (format!("{} results for 1 frame", results.len()), None),
    };
    let case = Case {
        scenario,
        tunnel,
        input,
        verdict: &verdict,
        output: output.as_deref(),
    };
    let mut outcome = judge(&f.id, &verdict, check(expect, &case));
    // Under our policy an ICMP error is forwarded for a tracked flow: show that it is, to the
    // flow's real and unchanged, once the client's packet has created the flow.
    if expect == Expect::IcmpErrorEncap && !matches!(outcome, Outcome::Fail(_)) {
        if let Err(why) = replay_primed(tunnel, scenario, input, sim) {
            outcome = Outcome::Fail(format!("with the flow tracked: {why}"));
        }
    }
    let ours = match &output {
        Some(o) => format!("{verdict} {}", summarize(o)),
        None => verdict.clone(),
    };
    Row {
        id: f.id.clone(),
        description: f.description.clone(),
        portable: f.semantic.portable,
        expect,
        check: f.semantic.check.clone(),
        ours,
        outcome,
    }
}

/// Runs [client packet creating the quoted flow, the ICMP error]: both encapsulated to the same
/// real, each unchanged inside.
fn replay_primed(
    tunnel: Tunnel,
    scenario: &Scenario,
    icmp: &[u8],
    sim: Sim<'_>,
) -> Result<(), String> {
    let primer = primer_for(icmp)?;
    let results = sim(&[primer.clone(), icmp.to_vec()]);
    let [first, second] = results.as_slice() else {
        return Err(format!("{} results for 2 frames", results.len()));
    };
    let case = |input: &'static str, frame: &[u8], r: &SimFrame| -> Result<IpAddr, String> {
        let c = Case {
            scenario,
            tunnel,
            input: frame,
            verdict: &r.verdict,
            output: r.output.as_deref(),
        };
        check_encap(&c).map_err(|e| format!("{input}: {e}"))?;
        let out = r.output.as_deref().unwrap_or_default();
        decode_frame(out)
            .map(|o| o.dst)
            .map_err(|e| format!("{input}: {e}"))
    };
    let real = case("client packet", &primer, first)?;
    let err_real = case("ICMP error", icmp, second)?;
    if real != err_real {
        return Err(format!(
            "ICMP error went to {err_real}, the flow's real is {real}"
        ));
    }
    Ok(())
}

/// Prints the table of failures (and documented differences) and the summary line; returns the
/// failures.
fn report(rows: &[Row], skipped: &BTreeMap<String, Vec<String>>, portable: usize) -> usize {
    let mut out = String::new();
    let fails: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
        .collect();
    let docs: Vec<&Row> = rows
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Documented(_)))
        .collect();
    for (title, list) in [
        ("FAILED", &fails),
        ("differs as docs/KATRAN.md says", &docs),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "\n{title}:\n{:<44} | {:<60} | {:<14} | ours -> why",
            "fixture", "description", "expected"
        );
        for r in list.iter() {
            let why = match &r.outcome {
                Outcome::Fail(w) | Outcome::Documented(w) | Outcome::Pass(w) => w,
            };
            let _ = writeln!(
                out,
                "{:<44} | {:<60} | {:<14} | {} -> {why}\n{:<44}   Katran semantics: {}",
                r.id,
                r.description,
                format!("{:?}", r.expect),
                r.ours,
                "",
                r.check
            );
        }
    }
    let tally = |portable: bool| {
        let mut t = [0usize; 4]; // replayed, passed, documented, failed
        for r in rows.iter().filter(|r| r.portable == portable) {
            t[0] += 1;
            t[match r.outcome {
                Outcome::Pass(_) => 1,
                Outcome::Documented(_) => 2,
                Outcome::Fail(_) => 3,
            }] += 1;
        }
        t
    };
    let [p_run, p_ok, p_doc, p_fail] = tally(true);
    let [n_run, n_ok, n_doc, n_fail] = tally(false);
    let skipped_total: usize = skipped.values().map(Vec::len).sum();
    let reasons: Vec<String> = skipped
        .iter()
        .map(|(k, v)| format!("{}: {k}", v.len()))
        .collect();
    let _ = writeln!(
        out,
        "\nkatran: {portable} portable ({p_run} replayed), {p_ok} passed, {p_doc} differ by documented \
         policy, {p_fail} failed; {n_run} non-portable replayed for policy ({n_ok} passed, {n_doc} \
         documented, {n_fail} failed); {skipped_total} skipped ({})",
        reasons.join("; ")
    );
    // Test output is the report here; cargo shows it for a failing test or with --nocapture.
    print!("{out}");
    fails.len()
}

/// Reads the input pcap through the same reader `lb sim` uses.
fn input_frame(f: &Fixture) -> Result<Vec<u8>, String> {
    let path = katran_path(&f.input_pcap);
    let frames =
        controlplane::sim::read_pcap(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut it = frames.into_iter();
    match (it.next(), it.next()) {
        (Some((_, frame)), None) => Ok(frame),
        _ => Err(format!("{}: expected exactly one frame", path.display())),
    }
}

/// Compiles a scenario into a simulator closure over the real pipeline.
fn simulator(s: &Scenario) -> impl Fn(&[Vec<u8>]) -> Vec<SimFrame> {
    let text = lb_toml(s);
    let file = format!("{}.toml", s.name);
    let cfg = controlplane::config::Config::from_toml_str(&text, Path::new(&file))
        .unwrap_or_else(|e| panic!("{file}: {e}\n{text}"));
    let compiled = controlplane::compile::compile(&cfg, 1)
        .unwrap_or_else(|e| panic!("{file}: compile: {e}\n{text}"));
    move |frames: &[Vec<u8>]| {
        // Katran's fixtures carry no meaningful time: every frame at t=0.
        let frames: Vec<(u64, Vec<u8>)> = frames.iter().map(|f| (0, f.clone())).collect();
        let report = controlplane::sim::run(&compiled, &frames);
        report
            .frames
            .into_iter()
            .map(|r| SimFrame {
                verdict: r.verdict.name(),
                output: r.output,
            })
            .collect()
    }
}

#[test]
fn katran_fixtures_replay() {
    let index = load_index();
    let ipip = load_scenario(Tunnel::Ipip);
    let gue = load_scenario(Tunnel::Gue);
    let sim_ipip = simulator(&ipip);
    let sim_gue = simulator(&gue);
    let portable = index
        .fixtures
        .iter()
        .filter(|f| f.semantic.portable)
        .count();
    let mut rows = Vec::new();
    let mut skipped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &index.fixtures {
        let (tunnel, expect) = match plan(f) {
            Plan::Run { tunnel, expect } => (tunnel, expect),
            Plan::Skip(reason) => {
                skipped.entry(reason).or_default().push(f.id.clone());
                continue;
            }
        };
        let (scenario, sim): (&Scenario, Sim<'_>) = match tunnel {
            Tunnel::Ipip => (&ipip, &sim_ipip),
            Tunnel::Gue => (&gue, &sim_gue),
        };
        let row = match input_frame(f) {
            Ok(input) => replay(f, tunnel, expect, scenario, &input, sim),
            Err(e) => Row {
                id: f.id.clone(),
                description: f.description.clone(),
                portable: f.semantic.portable,
                expect,
                check: f.semantic.check.clone(),
                ours: "not run".into(),
                outcome: Outcome::Fail(e),
            },
        };
        rows.push(row);
    }
    // Every documented difference must be a fixture we replay (else the list has gone stale).
    let stale: Vec<&str> = KNOWN_DIFFERENCES
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !rows.iter().any(|r| r.id == *id))
        .collect();
    let fails = report(&rows, &skipped, portable);
    assert!(
        stale.is_empty(),
        "KNOWN_DIFFERENCES names fixtures that are not replayed: {stale:?}"
    );
    assert_eq!(
        fails, 0,
        "{fails} Katran fixtures fail without a documented reason (table above)"
    );
}

/// docs/KATRAN.md's table of differences and [`KNOWN_DIFFERENCES`] name the same fixtures with the
/// same verdicts.
#[test]
fn known_differences_match_the_doc() {
    let doc = std::fs::read_to_string(KATRAN_DOC).unwrap_or_else(|e| panic!("{KATRAN_DOC}: {e}"));
    let mut in_doc = doc_differences(&doc);
    in_doc.sort();
    let mut in_code: Vec<(String, String)> = KNOWN_DIFFERENCES
        .iter()
        .map(|(i, v)| (i.to_string(), v.to_string()))
        .collect();
    in_code.sort();
    assert_eq!(
        in_doc, in_code,
        "docs/KATRAN.md and KNOWN_DIFFERENCES disagree"
    );
}

/// The rows of the doc's differences table: `| `fixture id` | `our verdict` | why |`.
fn doc_differences(doc: &str) -> Vec<(String, String)> {
    doc.lines()
        .filter_map(|l| {
            let mut cells = l.trim().strip_prefix('|')?.split('|').map(str::trim);
            let id = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let verdict = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            (id.contains('.') && !verdict.is_empty()).then(|| (id.to_string(), verdict.to_string()))
        })
        .collect()
}

/// Tests of the plan and the checks themselves, on Katran's own expected outputs and on broken
/// copies of them (no pipeline involved).
#[cfg(test)]
mod checks {
    use super::*;

    fn fixture<'a>(index: &'a Index, id: &str) -> &'a Fixture {
        index
            .fixtures
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no fixture {id}"))
    }

    /// The one frame of a pcap, read independently of `controlplane::sim`.
    fn pcap_frame(rel: &str) -> Vec<u8> {
        let file = std::fs::File::open(katran_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let mut r = pcap_file::pcap::PcapReader::new(file).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let p = r
            .next_packet()
            .unwrap_or_else(|| panic!("{rel}: empty"))
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        p.data.into_owned()
    }

    /// Katran's own result for a fixture, as our simulator would report it.
    fn katran_result(f: &Fixture) -> (String, Option<Vec<u8>>) {
        match f.expected_return.as_str() {
            "XDP_TX" => (
                "tx".into(),
                f.expected_output_pcap.as_deref().map(pcap_frame),
            ),
            "XDP_PASS" => ("to-host".into(), None),
            _ => ("drop:katran".into(), None),
        }
    }

    fn run_check(f: &Fixture, verdict: &str, output: Option<&[u8]>) -> Result<String, String> {
        let Plan::Run { tunnel, expect } = plan(f) else {
            panic!("{} is not replayed", f.id);
        };
        let scenario = load_scenario(tunnel);
        let input = pcap_frame(&f.input_pcap);
        check(
            expect,
            &Case {
                scenario: &scenario,
                tunnel,
                input: &input,
                verdict,
                output,
            },
        )
    }

    #[test]
    fn plan_covers_the_portable_fixtures() {
        let index = load_index();
        assert_eq!(index.fixtures.len(), 177);
        let portable: Vec<&Fixture> = index
            .fixtures
            .iter()
            .filter(|f| f.semantic.portable)
            .collect();
        assert_eq!(portable.len(), 103);
        for f in &portable {
            match plan(f) {
                Plan::Run { .. } => {}
                // Katran's decap program has no VIPs at all; our scenarios restate katran-default.
                Plan::Skip(r) => assert!(r.starts_with("katran-decap"), "{} skipped: {r}", f.id),
            }
        }
        let tunnel = |id: &str| match plan(fixture(&index, id)) {
            Plan::Run { tunnel, .. } => Some(tunnel),
            Plan::Skip(_) => None,
        };
        assert_eq!(tunnel("base.testFixtures.05"), Some(Tunnel::Ipip));
        assert_eq!(tunnel("gue.gueTestFixtures.04"), Some(Tunnel::Gue));
        // No encapsulation in the check text: the group decides.
        assert_eq!(tunnel("gue.gueTestFixtures.06"), Some(Tunnel::Gue));
        assert_eq!(tunnel("base.testFixtures.08"), Some(Tunnel::Ipip));
        assert_eq!(
            tunnel("icmp-too-big.originGueIcmpTooBigTestFixtures.02"),
            Some(Tunnel::Gue)
        );
        assert_eq!(tunnel("healthcheck.hcTestFixtures.02"), None);
        assert_eq!(tunnel("lpm-src-lookup.lpmSrcLookupTestFixtures.01"), None);
        assert_eq!(tunnel("optional.optionalTestFixtures.04"), None);
    }

    /// Katran's GUE outputs use the scenario's port: the mapping to the GUE scenario is right.
    #[test]
    fn gue_fixtures_use_the_scenario_port() {
        let index = load_index();
        let port = load_scenario(Tunnel::Gue).encap.gue_port;
        let mut seen = 0;
        for f in &index.fixtures {
            if let (
                Plan::Run {
                    tunnel: Tunnel::Gue,
                    expect: Expect::Encap | Expect::IcmpErrorEncap,
                },
                Some(out),
            ) = (plan(f), &f.expected_output)
            {
                assert_eq!(
                    out.get("dport").and_then(|v| v.as_u64()),
                    Some(u64::from(port)),
                    "{}",
                    f.id
                );
                seen += 1;
            }
        }
        assert!(seen > 30, "only {seen} GUE encapsulations");
    }

    #[test]
    fn lb_toml_restates_the_scenario() {
        for t in [Tunnel::Ipip, Tunnel::Gue] {
            let s = load_scenario(t);
            let text = lb_toml(&s);
            let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let services = v
                .get("services")
                .and_then(|s| s.as_array())
                .expect("services");
            assert_eq!(services.len(), s.vips.len());
            assert_eq!(
                v["dataplane"]["gateway_mac"].as_str(),
                Some("00:00:de:ad:be:af")
            );
            assert_eq!(v["dataplane"]["addresses"][0].as_str(), Some("192.0.2.1"));
            let any = services
                .iter()
                .find(|s| s["vip"].as_str() == Some("10.200.1.2"))
                .expect("10.200.1.2");
            assert!(any.get("ports").is_none(), "port 0 must mean every port");
            let udp = services
                .iter()
                .find(|s| {
                    s["vip"].as_str() == Some("10.200.1.1") && s["protocol"].as_str() == Some("udp")
                })
                .expect("10.200.1.1/udp");
            assert_eq!(udp["ports"][0].as_str(), Some("80"));
            let pool = &udp["pools"][0];
            assert_eq!(pool["backends"].as_array().map(Vec::len), Some(3));
            match t {
                Tunnel::Ipip => {
                    assert_eq!(pool["mode"].as_str(), Some("dsr-ipip"));
                    assert!(pool.get("gue_port").is_none());
                }
                Tunnel::Gue => {
                    assert_eq!(pool["mode"].as_str(), Some("dsr-gue"));
                    assert_eq!(pool["gue_port"].as_integer(), Some(9886));
                }
            }
        }
    }

    /// Katran's own outputs satisfy the replayed portable checks, except where Katran does what
    /// the scenario does not allow: QUIC packets routed by the server id in their connection id
    /// to a real that is not the QUIC VIP's, and a GUE UDP checksum Katran gets wrong.
    #[test]
    fn katran_outputs_pass_the_checks() {
        let index = load_index();
        let mut passed = 0;
        for f in index.fixtures.iter().filter(|f| f.semantic.portable) {
            if !matches!(plan(f), Plan::Run { .. }) {
                continue;
            }
            let (verdict, out) = katran_result(f);
            match run_check(f, &verdict, out.as_deref()) {
                Ok(_) => passed += 1,
                Err(e) if f.id == "gue.gueTestFixtures.08" => {
                    assert!(e.contains("UDP checksum"), "{e}")
                }
                Err(e) if f.description.starts_with("QUIC") => {
                    assert!(e.contains("is not a real of k-quic"), "{}: {e}", f.id)
                }
                Err(e) => panic!("{}: Katran's output fails: {e}", f.id),
            }
        }
        assert!(passed >= 60, "only {passed}");
    }

    #[test]
    fn encap_check_rejects_broken_outputs() {
        let index = load_index();
        for id in [
            "base.testFixtures.06",
            "gue.gueTestFixtures.01",
            "gue.gueTestFixtures.04",
        ] {
            let f = fixture(&index, id);
            let (_, out) = katran_result(f);
            let out = out.expect("katran output");
            assert!(run_check(f, "tx", Some(&out)).is_ok(), "{id}");
            // Wrong verdict.
            assert!(run_check(f, "to-host", None).is_err(), "{id}");
            // Inner packet changed (last byte of the payload).
            let mut inner = out.clone();
            if let Some(b) = inner.last_mut() {
                *b ^= 0xff;
            }
            assert!(
                run_check(f, "tx", Some(&inner)).is_err(),
                "{id}: inner change accepted"
            );
            // Outer destination not a real: change the last byte of the outer destination.
            let o = decode_frame(&out).expect("decode");
            let dst_end = 14 + if o.dst.is_ipv4() { 20 } else { 40 };
            let mut other = out.clone();
            other[dst_end - 1] ^= 0x40;
            assert!(
                run_check(f, "tx", Some(&other)).is_err(),
                "{id}: non-real accepted"
            );
        }
        // GUE to the wrong port.
        let f = fixture(&index, "gue.gueTestFixtures.01");
        let mut out = katran_result(f).1.expect("output");
        out[14 + 20 + 2..14 + 20 + 4].copy_from_slice(&6080u16.to_be_bytes());
        let e = run_check(f, "tx", Some(&out)).unwrap_err();
        assert!(e.contains("GUE port"), "{e}");
        // IPIP fixture given a GUE frame.
        let ipip = fixture(&index, "base.testFixtures.01");
        let gue_out = katran_result(f).1.expect("output");
        assert!(run_check(ipip, "tx", Some(&gue_out)).is_err());
    }

    #[test]
    fn echo_check_rejects_a_bad_checksum_or_changed_data() {
        let index = load_index();
        for id in ["base.testFixtures.08", "base.testFixtures.09"] {
            let f = fixture(&index, id);
            let out = katran_result(f).1.expect("output");
            assert!(run_check(f, "tx", Some(&out)).is_ok(), "{id}");
            let o = decode_frame(&out).expect("decode");
            let l4 = o.packet.len() - o.payload.len() + 14;
            let mut bad = out.clone();
            bad[l4 + 2] ^= 1;
            assert!(
                run_check(f, "tx", Some(&bad))
                    .unwrap_err()
                    .contains("checksum"),
                "{id}"
            );
            let mut seq = out.clone();
            seq[l4 + 7] ^= 1;
            assert!(run_check(f, "tx", Some(&seq)).is_err(), "{id}");
            // The request sent back unchanged is no reply.
            let input = pcap_frame(&f.input_pcap);
            assert!(run_check(f, "tx", Some(&input)).is_err(), "{id}");
        }
    }

    #[test]
    fn not_forwarded_check_rejects_a_forward_to_a_real() {
        let index = load_index();
        let f = fixture(&index, "base.testFixtures.15");
        assert!(run_check(f, "to-host", None).is_ok());
        assert!(run_check(f, "drop:no-service", None).is_ok());
        let forwarded = katran_result(fixture(&index, "base.testFixtures.02"))
            .1
            .expect("output");
        assert!(run_check(f, "tx", Some(&forwarded)).is_err());
    }

    /// An ICMP frag-needed for base.testFixtures.33 (1501-byte UDP to 10.200.1.1:80, v4 reals):
    /// accepted with our IPIP MTU 1480, rejected with Katran's 1500 or a quote that is not the input.
    #[test]
    fn too_big_check_wants_our_tunnel_mtu() {
        let index = load_index();
        let f = fixture(&index, "base.testFixtures.33");
        let input = pcap_frame(&f.input_pcap);
        let ip = decode_frame(&input).expect("input");
        let build = |mtu: u16, quote: &[u8]| {
            let (IpAddr::V4(client), IpAddr::V4(vip)) = (ip.src, ip.dst) else {
                panic!("v4")
            };
            let mut frame = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0], ip.eth_src)
                .ipv4(vip.octets(), client.octets(), 64)
                .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: mtu,
                    },
                ))
                .write(&mut frame, quote)
                .expect("build");
            frame
        };
        let quote = &ip.packet[..548];
        assert_eq!(
            run_check(f, "tx", Some(&build(1480, quote))),
            Ok("tx ICMP too big, MTU 1480".into())
        );
        assert!(run_check(f, "tx", Some(&build(1500, quote)))
            .unwrap_err()
            .contains("MTU 1500"));
        let mut other = quote.to_vec();
        other[40] ^= 1;
        assert!(run_check(f, "tx", Some(&build(1480, &other))).is_err());
        assert!(run_check(f, "drop:fragment", None).is_ok());
    }

    #[test]
    fn primer_recreates_the_quoted_flow() {
        let index = load_index();
        for id in ["base.testFixtures.10", "base.testFixtures.11"] {
            let icmp = pcap_frame(&fixture(&index, id).input_pcap);
            let primer = primer_for(&icmp).expect("primer");
            let p = decode_frame(&primer).expect("decode");
            let i = decode_frame(&icmp).expect("decode");
            assert_eq!(vip_flow(&p), vip_flow(&i), "{id}");
            assert_eq!(p.payload.get(13), Some(&0x02), "{id}: a SYN");
            assert_eq!((p.eth_src, p.eth_dst), (i.eth_src, i.eth_dst));
        }
    }

    #[test]
    fn judge_keeps_the_allow_list_honest() {
        let id = "base.testFixtures.26";
        assert!(matches!(
            judge(id, "drop:bad-l4-checksum", Err("x".into())),
            Outcome::Documented(_)
        ));
        assert!(matches!(judge(id, "tx", Ok("ok".into())), Outcome::Fail(_)));
        assert!(matches!(
            judge(id, "drop:no-service", Err("x".into())),
            Outcome::Fail(_)
        ));
        assert!(matches!(
            judge("base.testFixtures.01", "drop:x", Err("x".into())),
            Outcome::Fail(_)
        ));
        assert!(matches!(
            judge("base.testFixtures.01", "tx", Ok("ok".into())),
            Outcome::Pass(_)
        ));
    }

    #[test]
    fn doc_table_parses() {
        let doc = "| fixture | ours | why |\n|---|---|---|\n| `a.b.1` | `drop:x` | because |\n`not.a.row`\n";
        assert_eq!(
            doc_differences(doc),
            vec![("a.b.1".to_string(), "drop:x".to_string())]
        );
    }
}

//! The lb.toml schema: serde structs with defaults, and loading with `file:line:column` errors.
//!
//! Parsing checks shapes and value syntax (addresses, MACs, port ranges, durations);
//! [`Config::validate`] checks ranges and the keys of one section together (health checks, table
//! sizes, logging); rules that span the config (address families, neighbors, SNAT addresses) are
//! checked by [`crate::compile()`]. [`crate::diag`] places every problem at `file:line:column`.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::diag::{edit_distance, Problem};

/// A whole lb.toml.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The balancer's own identity and port settings.
    pub dataplane: Dataplane,
    /// Static neighbors: the MAC to send to for an address.
    #[serde(default)]
    pub neighbors: Vec<Neighbor>,
    /// Connection tracking sizing and timeouts.
    #[serde(default)]
    pub conntrack: Conntrack,
    /// Virtual services.
    #[serde(default)]
    pub services: Vec<Service>,
    /// The admin HTTP API (metrics, state, runtime operations).
    #[serde(default)]
    pub admin: Admin,
    /// Logging.
    #[serde(default)]
    pub logging: Logging,
}

/// `[admin]`: the admin HTTP listener.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Serve the admin API at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address and port to listen on; loopback by default, so only the box itself can reach it.
    #[serde(default = "default_admin_listen")]
    pub listen: std::net::SocketAddr,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            enabled: true,
            listen: default_admin_listen(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_admin_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9180))
}

/// `[logging]`: what `lb run` logs and how.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// A tracing filter (`"info"`, `"warn,controlplane=debug"`); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Line format.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// `[logging] format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[dataplane]`: our MAC, addresses and port-level settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    /// Our MAC on the balancer's interface.
    pub mac: MacAddr,
    /// Addresses the balancer owns (answers ARP, ND and ping for them).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Largest IP packet on the link.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Source ports for fullnat, as `"lo-hi"`.
    #[serde(default = "default_snat_ports")]
    pub snat_ports: PortRange,
    /// Source addresses for fullnat pools that list no `snat` of their own (the local address pool).
    #[serde(default)]
    pub snat: Vec<IpAddr>,
    /// Next hop for addresses not listed in `[[neighbors]]`.
    #[serde(default)]
    pub gateway_mac: Option<MacAddr>,
    /// Prefixes on our link: a backend inside one is resolved itself by ARP/ND.
    #[serde(default)]
    pub on_link: Vec<IpPrefix>,
    /// Routers (at most one per family) for backends off the link, resolved by ARP/ND.
    #[serde(default)]
    pub gateway: Vec<IpAddr>,
    /// Number of dataplane workers.
    #[serde(default = "default_workers")]
    pub workers: u16,
    /// Kind of packet port `lb run` opens on `interface`.
    #[serde(default)]
    pub port: PortKind,
    /// The interface the balancer serves (created for `tap`, existing for the others).
    #[serde(default = "default_interface")]
    pub interface: String,
    /// Core of each worker; absent means cores 0, 1, ... in order.
    #[serde(default)]
    pub cores: Option<Vec<usize>>,
    /// What an idle worker does.
    #[serde(default)]
    pub idle: IdleMode,
    /// How `af_xdp` attaches its XDP program.
    #[serde(default)]
    pub xdp_mode: XdpMode,
}

/// `[dataplane] port`: where frames come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
pub enum PortKind {
    /// A TAP device the balancer creates (runs anywhere with CAP_NET_ADMIN).
    #[default]
    #[serde(rename = "tap")]
    Tap,
    /// AF_PACKET sockets (with fanout) on an existing interface.
    #[serde(rename = "af_packet")]
    AfPacket,
    /// AF_XDP sockets on an existing interface, one per queue.
    #[serde(rename = "af_xdp")]
    AfXdp,
}

impl PortKind {
    /// The name used in lb.toml and logs.
    pub fn name(self) -> &'static str {
        match self {
            PortKind::Tap => "tap",
            PortKind::AfPacket => "af_packet",
            PortKind::AfXdp => "af_xdp",
        }
    }
}

/// `[dataplane] idle`: what a worker does with no traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleMode {
    /// Spin briefly, then sleep on the port until frames arrive (about 1 ms at a time).
    #[default]
    Adaptive,
    /// Spin always: lowest latency, one busy core per worker.
    Poll,
}

/// `[dataplane] xdp_mode`: how the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver; fails where the driver lacks XDP.
    Native,
    /// Generic (skb) mode: works on any interface, slower.
    Generic,
    /// Native where the driver has it, generic otherwise.
    #[default]
    Auto,
}

fn default_interface() -> String {
    "lb0".into()
}

fn default_mtu() -> u16 {
    1500
}

fn default_snat_ports() -> PortRange {
    PortRange {
        lo: 1024,
        hi: 65535,
    }
}

fn default_workers() -> u16 {
    1
}

/// `[[neighbors]]`: a static ARP/ND entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbor {
    /// The neighbor's address.
    pub ip: IpAddr,
    /// Its MAC.
    pub mac: MacAddr,
}

/// `[conntrack]`: per-worker table sizing and idle timeouts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conntrack {
    /// Tracked keys per worker (a nat or fullnat flow takes two).
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// Most embryonic flows at once; absent means a quarter of `capacity`.
    #[serde(default)]
    pub embryonic_budget: Option<usize>,
    /// Idle timeouts per state.
    #[serde(default)]
    pub timeouts: Timeouts,
}

impl Conntrack {
    /// The embryonic budget, with the default (a quarter of the capacity) applied.
    pub fn embryonic_budget(&self) -> usize {
        self.embryonic_budget.unwrap_or(self.capacity / 4)
    }
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            capacity: default_capacity(),
            embryonic_budget: None,
            timeouts: Timeouts::default(),
        }
    }
}

fn default_capacity() -> usize {
    262_144
}

/// `[conntrack.timeouts]`: durations written as `"500ms"`, `"5s"`, `"15m"`, `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP flow whose handshake is not complete.
    #[serde(deserialize_with = "de_duration")]
    pub tcp_syn: Duration,
    /// TCP flow with a completed handshake.
    #[serde(deserialize_with = "de_duration")]
    pub tcp_established: Duration,
    /// TCP flow after a FIN or RST.
    #[serde(deserialize_with = "de_duration")]
    pub tcp_closing: Duration,
    /// UDP flow (and ICMP echo).
    #[serde(deserialize_with = "de_duration")]
    pub udp: Duration,
}

impl Default for Timeouts {
    /// The dataplane's defaults, so an absent table and an absent key mean the same thing.
    fn default() -> Self {
        let d = dataplane::conntrack::Timeouts::default();
        Timeouts {
            tcp_syn: Duration::from_millis(d.tcp_syn),
            tcp_established: Duration::from_millis(d.tcp_established),
            tcp_closing: Duration::from_millis(d.tcp_closing),
            udp: Duration::from_millis(d.udp),
        }
    }
}

/// `[[services]]`: a VIP, protocol and ports with pools of backends.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name (logs, metrics).
    pub name: String,
    /// The virtual IP.
    pub vip: IpAddr,
    /// Ports served; empty means every port.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Backend selection.
    #[serde(default)]
    pub affinity: Affinity,
    /// Maglev table size (a prime).
    #[serde(default = "default_table_size")]
    pub table_size: usize,
    /// Pools of backends.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// Active health check of every backend; absent means backends are always up (unless a
    /// passive signal or an operator takes them out).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection on dataplane signals; absent means none.
    #[serde(default)]
    pub passive: Option<Passive>,
    /// What to do when every backend is down.
    #[serde(default)]
    pub all_down: AllDown,
}

/// `[services.health_check]`: an active probe of each backend from the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Probe kind.
    pub kind: CheckKind,
    /// Time between probes of one backend.
    #[serde(default = "default_check_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    /// A probe not finished in this time failed.
    #[serde(default = "default_check_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Each interval is lengthened by a random amount up to this, so probes do not align.
    #[serde(default = "default_jitter", deserialize_with = "de_duration")]
    pub jitter: Duration,
    /// Port to probe; absent means the backend's port, else the service's first port.
    #[serde(default)]
    pub port: Option<u16>,
    /// HTTP: the request path.
    #[serde(default = "default_check_path")]
    pub path: String,
    /// HTTP: the Host header; absent means the backend address.
    #[serde(default)]
    pub host: Option<String>,
    /// HTTP: the status codes that count as healthy, `"200-399"`.
    #[serde(default = "default_expect_status")]
    pub expect_status: StatusRange,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_rise() -> u32 {
    2
}

fn default_fall() -> u32 {
    3
}

fn default_jitter() -> Duration {
    Duration::from_millis(100)
}

fn default_check_path() -> String {
    "/".into()
}

fn default_expect_status() -> StatusRange {
    StatusRange { lo: 200, hi: 399 }
}

/// `[services.health_check] kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP/1.1 GET whose status must fall in `expect_status`.
    Http,
}

/// An inclusive HTTP status range, written `"200-399"` or `"200"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest status accepted.
    pub lo: u16,
    /// Highest status accepted.
    pub hi: u16,
}

impl StatusRange {
    /// True when `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || {
            de::Error::custom(format!(
                "invalid status range {s:?}: expected \"200-399\" or \"200\" (100-599)"
            ))
        };
        let code = |p: &str| match p.trim().parse::<u16>() {
            Ok(v) if (100..=599).contains(&v) => Ok(v),
            _ => Err(bad()),
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => {
                let v = code(&s)?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        Ok(StatusRange { lo, hi })
    }
}

/// `[services.passive]`: eject a backend on signals the dataplane sees, for a back-off.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Passive {
    /// Resets sent by the backend within `window` that eject it (0: never).
    #[serde(default)]
    pub resets: u64,
    /// SYNs the backend left unanswered within `window` that eject it (0: never).
    #[serde(default = "default_unanswered_syns")]
    pub unanswered_syns: u64,
    /// The window the counts are taken over.
    #[serde(default = "default_passive_window", deserialize_with = "de_duration")]
    pub window: Duration,
    /// How long an ejected backend stays out before it is tried again.
    #[serde(default = "default_backoff", deserialize_with = "de_duration")]
    pub backoff: Duration,
}

fn default_unanswered_syns() -> u64 {
    5
}

fn default_passive_window() -> Duration {
    Duration::from_secs(10)
}

fn default_backoff() -> Duration {
    Duration::from_secs(30)
}

/// `[[services]] all_down`: the policy when no backend is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllDown {
    /// Serve nobody: new flows are dropped (and counted) until a backend comes back.
    #[default]
    Drop,
    /// Ignore health and spread over every configured backend (an outage of the checker must
    /// not become an outage of the service).
    FailOpen,
}

fn default_table_size() -> usize {
    dataplane::maglev::DEFAULT_TABLE_SIZE
}

/// `[[services.pools]]`: backends sharing a forwarding mode.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Name (logs, metrics).
    pub name: String,
    /// Forwarding mode.
    pub mode: Mode,
    /// Multiplies every backend's weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Source addresses for fullnat.
    #[serde(default)]
    pub snat: Vec<IpAddr>,
    /// Outer source addresses of encapsulated packets (dsr); default: our first address per family.
    #[serde(default)]
    pub encap_source: Vec<IpAddr>,
    /// GUE destination port (dsr-gue).
    #[serde(default = "default_gue_port")]
    pub gue_port: u16,
    /// Backends.
    #[serde(default)]
    pub backends: Vec<Backend>,
}

fn default_weight() -> u32 {
    1
}

fn default_gue_port() -> u16 {
    6080
}

/// One backend of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Address.
    pub addr: IpAddr,
    /// Destination port; absent keeps the client's destination port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative weight inside the pool; 0 drains it.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// What runs there.
    #[serde(default)]
    pub kind: BackendKind,
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// Backend selection of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    /// Hash of the 5-tuple.
    #[default]
    None,
    /// Hash of the client address.
    ClientIp,
}

/// Forwarding mode of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Mode {
    /// DNAT + SNAT.
    #[serde(rename = "fullnat")]
    FullNat,
    /// DNAT only.
    #[serde(rename = "nat")]
    Nat,
    /// IP-in-IP direct server return.
    #[serde(rename = "dsr-ipip")]
    DsrIpip,
    /// GUE direct server return.
    #[serde(rename = "dsr-gue")]
    DsrGue,
    /// MAC rewrite on a shared segment.
    #[serde(rename = "dr")]
    Dr,
}

/// What a backend is (informational for now: metrics and health-check defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A Kubernetes pod.
    #[default]
    Pod,
    /// A virtual machine.
    Vm,
}

/// A MAC address written `"02:00:00:00:00:01"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid MAC address {s:?}: expected six hex bytes like \"02:00:00:00:00:01\"")
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An IP prefix, written `"198.18.0.0/16"` or `"2001:db8::/64"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub len: u8,
}

impl IpPrefix {
    /// True when `a` is inside the prefix (same family).
    pub fn contains(&self, a: IpAddr) -> bool {
        dataplane::table::Prefix {
            addr: self.addr.into(),
            len: self.len,
        }
        .contains(a.into())
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid prefix {s:?}: expected an address and a length, like \"198.18.0.0/16\""
            )
        };
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("invalid prefix {s:?}: length {len} is above {max}"));
        }
        Ok(IpPrefix { addr, len })
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An inclusive port range, written `"80"`, `"8000-8010"` or as an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (equal to `lo` for a single port).
    pub hi: u16,
}

impl PortRange {
    /// True when the range is the single port `p`.
    pub fn is_single(&self, p: u16) -> bool {
        self.lo == p && self.hi == p
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Parses `"80"` or `"8000-8010"`: ports 1..=65535 (0 means "every port" inside the table), lo <= hi.
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let port = |p: &str| -> Result<u16, String> {
        let p = p.trim();
        match p.parse::<u16>() {
            Ok(0) => Err(format!("invalid port range {s:?}: port 0 is not a port")),
            Ok(v) => Ok(v),
            Err(_) => Err(format!(
                "invalid port range {s:?}: expected a port 1-65535 or \"lo-hi\""
            )),
        }
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!(
            "invalid port range {s:?}: first port is above the last"
        ));
    }
    Ok(PortRange { lo, hi })
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (80) or a port range (\"8000-8010\")")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortRange { lo: p, hi: p }),
                    _ => Err(E::custom(format!("invalid port {v}: expected 1-65535"))),
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(-1))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                parse_port_range(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a duration: an integer followed by `ms`, `s`, `m` or `h` (`"500ms"`, `"15m"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration {s:?}: expected a number and a unit ms, s, m or h (\"5s\")");
    let digits = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    if digits == 0 {
        return Err(bad());
    }
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let ms = n
        .checked_mul(ms_per)
        .ok_or_else(|| format!("invalid duration {s:?}: too long"))?;
    Ok(Duration::from_millis(ms))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(de::Error::custom)
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The TOML is malformed or does not fit the schema, at a known place.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line, from 1.
        line: usize,
        /// Column in characters, from 1.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The TOML does not fit the schema and the parser gave no place.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Parses lb.toml text; `path` only names the file in errors.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            match e.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    ConfigError::Parse {
                        path: path.to_path_buf(),
                        line,
                        column,
                        message,
                    }
                }
                None => ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message,
                },
            }
        })
    }
}

/// Maglev table sizes to suggest: primes near powers of two, from small services to very large ones.
pub const SUITABLE_TABLE_SIZES: [usize; 14] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65537, 131071, 262139, 524287, 1048573, 2097143,
];

/// A service's table needs this many slots per backend: with fewer, a backend's share strays far
/// from its weight and a backend change moves more flows than it must.
pub const SLOTS_PER_BACKEND: usize = 10;

/// Most backends in one service: the table indexes them with a `u16`, one value kept for "empty".
const MAX_BACKENDS: usize = u16::MAX as usize - 1;

/// Log levels a `[logging] level` directive may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

impl Config {
    /// Checks the rules on single keys and sections that serde cannot express (ranges, relations
    /// between keys of one table, health checks, passive ejection, admin, logging) and returns every
    /// problem, in config order. [`crate::compile::compile_with`] calls it and adds the rules that
    /// span the whole config (families, neighbors, overlaps).
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let dp = &self.dataplane;
        check_mac(&mut out, dp.mac, || {
            ("dataplane.mac".into(), "dataplane: mac".into())
        });
        if let Some(m) = dp.gateway_mac {
            check_mac(&mut out, m, || {
                (
                    "dataplane.gateway_mac".into(),
                    "dataplane: gateway_mac".into(),
                )
            });
        }
        for (i, a) in dp.addresses.iter().enumerate() {
            check_unicast(&mut out, *a, || {
                (
                    format!("dataplane.addresses[{i}]"),
                    "dataplane: address".into(),
                )
            });
        }
        for (i, a) in dp.snat.iter().enumerate() {
            check_unicast(&mut out, *a, || {
                (
                    format!("dataplane.snat[{i}]"),
                    "dataplane: snat address".into(),
                )
            });
        }
        for (i, g) in dp.gateway.iter().enumerate() {
            check_unicast(&mut out, *g, || {
                (
                    format!("dataplane.gateway[{i}]"),
                    "dataplane: gateway".into(),
                )
            });
            if dp.gateway[..i].iter().any(|o| o.is_ipv4() == g.is_ipv4()) {
                out.push(
                    Problem::new(
                        format!("dataplane.gateway[{i}]"),
                        format!(
                            "dataplane: a second {} gateway {g}",
                            if g.is_ipv4() { "IPv4" } else { "IPv6" }
                        ),
                    )
                    .hint("list at most one gateway per address family"),
                );
            }
            if !dp.on_link.is_empty() && !dp.on_link.iter().any(|p| p.contains(*g)) {
                out.push(
                    Problem::new(
                        format!("dataplane.gateway[{i}]"),
                        format!("dataplane: gateway {g} is not inside any on_link prefix"),
                    )
                    .hint("a gateway must be on our link; add its prefix to [dataplane] on_link"),
                );
            }
        }
        for (i, n) in self.neighbors.iter().enumerate() {
            check_unicast(&mut out, n.ip, || {
                (format!("neighbors[{i}].ip"), format!("neighbor {}", n.ip))
            });
            check_mac(&mut out, n.mac, || {
                (format!("neighbors[{i}].mac"), format!("neighbor {}", n.ip))
            });
        }
        for (i, svc) in self.services.iter().enumerate() {
            svc.validate(i, &mut out);
        }
        if self.admin.enabled && self.admin.listen.port() == 0 {
            out.push(
                Problem::new(
                    "admin.listen",
                    format!(
                        "admin: listen {} has port 0, which binds a port nobody can find",
                        self.admin.listen
                    ),
                )
                .hint("give a fixed port, e.g. \"127.0.0.1:9180\", or set enabled = false"),
            );
        }
        if let Some(p) = check_log_level(&self.logging.level) {
            out.push(p);
        }
        out
    }
}

impl Service {
    fn validate(&self, i: usize, out: &mut Vec<Problem>) {
        // Written only into problems: a reload validates thousands of services that have none.
        let at = Lazy(|f: &mut fmt::Formatter<'_>| write!(f, "service {}", self.name));
        let path = Lazy(|f: &mut fmt::Formatter<'_>| write!(f, "services[{i}]"));
        if self.name.is_empty() || self.name.chars().any(char::is_control) {
            out.push(
                Problem::new(
                    format!("{path}.name"),
                    format!(
                        "service {:?}: name is empty or has control characters",
                        self.name
                    ),
                )
                .hint("names appear in logs, metrics and the admin API: use e.g. \"web\""),
            );
        }
        check_unicast(out, self.vip, || {
            (format!("{path}.vip"), format!("{at}: vip"))
        });

        let backends: usize = self.pools.iter().map(|p| p.backends.len()).sum();
        if !dataplane::maglev::is_valid_table_size(self.table_size) {
            out.push(
                Problem::new(
                    format!("{path}.table_size"),
                    format!("{at}: table_size {} is not a prime", self.table_size),
                )
                .hint(table_size_hint(backends)),
            );
        } else if backends > MAX_BACKENDS {
            out.push(Problem::new(
                format!("{path}.pools"),
                format!("{at}: {backends} backends, at most {MAX_BACKENDS}"),
            ));
        } else if self.table_size < backends.saturating_mul(SLOTS_PER_BACKEND) {
            out.push(
                Problem::new(
                    format!("{path}.table_size"),
                    format!(
                        "{at}: table_size {} is below {SLOTS_PER_BACKEND} slots for each of its {backends} backends",
                        self.table_size
                    ),
                )
                .hint(table_size_hint(backends)),
            );
        } else {
            // Weights that overflow are reported by compile(); leave them out of the sum.
            let total: u64 = self
                .pools
                .iter()
                .flat_map(|p| {
                    p.backends
                        .iter()
                        .map(move |b| p.weight.checked_mul(b.weight))
                })
                .map(|w| u64::from(w.unwrap_or(0)))
                .sum();
            if total > self.table_size as u64 {
                out.push(
                    Problem::new(
                        format!("{path}.table_size"),
                        format!(
                            "{at}: weights add up to {total}, more than the {} slots of the table: light backends would get no traffic",
                            self.table_size
                        ),
                    )
                    .hint("weights are relative (1 and 3 split like 100 and 300): lower them, or raise table_size"),
                );
            }
        }

        for (j, pool) in self.pools.iter().enumerate() {
            let pool_path = Lazy(|f: &mut fmt::Formatter<'_>| write!(f, "{path}.pools[{j}]"));
            if pool.name.is_empty() || pool.name.chars().any(char::is_control) {
                out.push(Problem::new(
                    format!("{pool_path}.name"),
                    format!(
                        "{at} pool {:?}: name is empty or has control characters",
                        pool.name
                    ),
                ));
            }
            for (k, a) in pool.snat.iter().enumerate() {
                check_unicast(out, *a, || {
                    (
                        format!("{pool_path}.snat[{k}]"),
                        format!("{at} pool {}: snat address", pool.name),
                    )
                });
            }
            // Per backend, the path and message are only written when there is a problem: a
            // reload of thousands of backends would spend most of its validation formatting them.
            for (k, b) in pool.backends.iter().enumerate() {
                check_unicast(out, b.addr, || {
                    (
                        format!("{pool_path}.backends[{k}].addr"),
                        format!("{at} pool {} backend", pool.name),
                    )
                });
            }
        }

        if let Some(hc) = &self.health_check {
            hc.validate(self, &format!("{path}.health_check"), out);
        }
        if let Some(p) = &self.passive {
            let pp = format!("{path}.passive");
            if self.protocol == Protocol::Udp {
                out.push(
                    Problem::new(
                        pp.clone(),
                        format!("{at}: passive ejection counts TCP resets and SYNs; a udp service has neither"),
                    )
                    .hint("remove [services.passive], or use an active health_check"),
                );
            }
            if p.window.is_zero() {
                out.push(Problem::new(
                    format!("{pp}.window"),
                    format!("{at}: passive window must be above 0"),
                ));
            }
            if p.backoff.is_zero() {
                out.push(
                    Problem::new(
                        format!("{pp}.backoff"),
                        format!("{at}: passive backoff must be above 0"),
                    )
                    .hint("an ejected backend stays out this long before it is tried again, e.g. \"30s\""),
                );
            }
            if p.resets == 0 && p.unanswered_syns == 0 {
                out.push(
                    Problem::new(
                        pp,
                        format!("{at}: passive has every threshold at 0, so it never ejects"),
                    )
                    .hint("set resets or unanswered_syns above 0, or remove [services.passive]"),
                );
            }
        }
    }
}

impl HealthCheck {
    fn validate(&self, svc: &Service, path: &str, out: &mut Vec<Problem>) {
        let at = format!("service {} health_check", svc.name);
        let mut push = |key: &str, message: String, hint: Option<&str>| {
            let p = Problem::new(format!("{path}.{key}"), format!("{at}: {message}"));
            out.push(match hint {
                Some(h) => p.hint(h),
                None => p,
            });
        };
        if self.interval.is_zero() {
            push(
                "interval",
                "interval must be above 0".into(),
                Some("e.g. \"2s\""),
            );
        }
        if self.timeout.is_zero() {
            push(
                "timeout",
                "timeout must be above 0".into(),
                Some("e.g. \"1s\""),
            );
        } else if !self.interval.is_zero() && self.timeout > self.interval {
            push(
                "timeout",
                format!(
                    "timeout {:?} is longer than the interval {:?}",
                    self.timeout, self.interval
                ),
                Some(
                    "a probe must end before the next one starts: lower timeout or raise interval",
                ),
            );
        }
        if !self.interval.is_zero() && self.jitter >= self.interval {
            push(
                "jitter",
                format!(
                    "jitter {:?} is not below the interval {:?}",
                    self.jitter, self.interval
                ),
                Some("jitter only spreads probes inside an interval, e.g. a tenth of it"),
            );
        }
        if self.rise == 0 {
            push("rise", "rise must be at least 1".into(), None);
        }
        if self.fall == 0 {
            push("fall", "fall must be at least 1".into(), None);
        }
        match self.port {
            Some(0) => push(
                "port",
                "port 0 is not a port".into(),
                Some("leave port out to probe each backend's own port"),
            ),
            Some(_) => {}
            None if svc.ports.is_empty() => {
                if let Some(b) = svc
                    .pools
                    .iter()
                    .flat_map(|p| &p.backends)
                    .find(|b| b.port.is_none())
                {
                    push(
                        "port",
                        format!(
                            "no port to probe backend {}: it has no port and the service serves every port",
                            b.addr
                        ),
                        Some("set port in the health check"),
                    );
                }
            }
            None => {}
        }
        let bad_text = |s: &str| s.chars().any(|c| c.is_whitespace() || c.is_control());
        match self.kind {
            CheckKind::Http => {
                if !self.path.starts_with('/') || bad_text(&self.path) {
                    push(
                        "path",
                        format!("path {:?} is not a request path", self.path),
                        Some("a path starts with '/' and has no spaces, e.g. \"/healthz\""),
                    );
                }
                if let Some(h) = &self.host {
                    if h.is_empty() || bad_text(h) {
                        push(
                            "host",
                            format!("host {h:?} is not a Host header value"),
                            Some("a name like \"web.example\", no spaces"),
                        );
                    }
                }
            }
            CheckKind::Tcp => {
                // These have defaults, so a value other than the default was set by hand.
                let only_http = "only used by http checks";
                let hint = Some("set kind = \"http\", or remove it");
                if self.path != default_check_path() {
                    push("path", format!("path is {only_http}"), hint);
                }
                if self.host.is_some() {
                    push("host", format!("host is {only_http}"), hint);
                }
                if self.expect_status != default_expect_status() {
                    push(
                        "expect_status",
                        format!("expect_status is {only_http}"),
                        hint,
                    );
                }
            }
        }
    }
}

/// Text written only when it is displayed (`Lazy(|f| write!(f, ...))`): the names and key paths
/// that problems mention, which a valid config never shows.
pub(crate) struct Lazy<F>(pub(crate) F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

/// A hint naming the table sizes that suit `backends` backends.
fn table_size_hint(backends: usize) -> String {
    let need = backends.saturating_mul(SLOTS_PER_BACKEND).max(1);
    let fits: Vec<String> = SUITABLE_TABLE_SIZES
        .iter()
        .filter(|&&p| p >= need)
        .take(4)
        .map(|p| p.to_string())
        .collect();
    if fits.is_empty() {
        format!("a prime of at least {need} (the default is 65537)")
    } else {
        format!(
            "a prime of at least {need}: {} (the default is 65537)",
            fits.join(", ")
        )
    }
}

/// A MAC we send from or to must be unicast: a multicast or zero MAC is a typo. `place` gives the
/// key path and what the MAC is, only called when there is a problem.
fn check_mac(out: &mut Vec<Problem>, mac: MacAddr, place: impl FnOnce() -> (String, String)) {
    let why = if mac.0 == [0; 6] {
        "is all zeros"
    } else if mac.0[0] & 1 == 1 {
        "is a multicast address"
    } else {
        return;
    };
    let (path, what) = place();
    out.push(
        Problem::new(path, format!("{what} {mac} {why}"))
            .hint("a unicast MAC has an even first byte, e.g. \"02:00:00:00:00:01\""),
    );
}

/// An address a packet is sent to or from must be a single host: not unspecified, not multicast.
/// `place` gives the key path and what the address is, only called when there is a problem.
fn check_unicast(out: &mut Vec<Problem>, addr: IpAddr, place: impl FnOnce() -> (String, String)) {
    let why = if addr.is_unspecified() {
        "is the unspecified address"
    } else if addr.is_multicast() || addr == IpAddr::from([255, 255, 255, 255]) {
        "is a multicast or broadcast address"
    } else {
        return;
    };
    let (path, what) = place();
    out.push(Problem::new(path, format!("{what} {addr} {why}")).hint("use a unicast address"));
}

/// A `[logging] level` must parse as a tracing filter, and a bare word must be a level or one of our
/// crates: tracing reads any other word as a target name, so a typo like "inof" would silently log
/// nothing.
fn check_log_level(level: &str) -> Option<Problem> {
    let bad =
        |message: String, hint: String| Some(Problem::new("logging.level", message).hint(hint));
    let usage =
        "a level (error, warn, info, debug, trace) or directives like \"warn,controlplane=debug\"";
    if level.trim().is_empty() {
        return bad("logging: level is empty".into(), usage.into());
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level) {
        return bad(
            format!("logging: level {level:?} is not a filter: {e}"),
            usage.into(),
        );
    }
    for directive in level.split(',').map(str::trim) {
        let word = directive.to_ascii_lowercase();
        let is_word =
            !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if is_word
            && !LOG_LEVELS.contains(&word.as_str())
            && !["controlplane", "dataplane", "lb"].contains(&word.as_str())
        {
            let near = LOG_LEVELS
                .iter()
                .min_by_key(|l| edit_distance(&word, l))
                .copied()
                .unwrap_or("info");
            return bad(
                format!("logging: {directive:?} in level {level:?} is neither a level nor one of our crates"),
                format!("did you mean \"{near}\"? ({usage})"),
            );
        }
    }
    None
}

/// Reads and parses the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    Config::from_toml_str(&text, path)
}

/// 1-based line and column (in characters) of byte `offset` in `text`; an offset past the end or
/// inside a character is clamped to the nearest character start before it.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("t.toml"))
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_are_rejected_with_the_input() {
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            "5sec",
            "1.5s",
            "-1s",
            "5d",
            "99999999999999999999h",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("80"), Ok(PortRange { lo: 80, hi: 80 }));
        assert_eq!(
            parse_port_range("8000-8010"),
            Ok(PortRange { lo: 8000, hi: 8010 })
        );
        assert_eq!(
            parse_port_range("1-65535"),
            Ok(PortRange { lo: 1, hi: 65535 })
        );
        for bad in ["0", "65536", "10-5", "a", "", "1-", "-1", "1-2-3", "0-10"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            "02:00:00:00:00:fE".parse::<MacAddr>(),
            Ok(MacAddr([2, 0, 0, 0, 0, 0xfe]))
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:0:0:0:0:1",
            "zz:00:00:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert_eq!(
            MacAddr([2, 0, 0, 0, 0, 0xfe]).to_string(),
            "02:00:00:00:00:fe"
        );
    }

    #[test]
    fn line_column_counts_characters_from_one() {
        let t = "ab\ncdé\nf";
        assert_eq!(line_column(t, 0), (1, 1));
        assert_eq!(line_column(t, 3), (2, 1));
        assert_eq!(line_column(t, 5), (2, 3));
        // "é" is two bytes: the next character is column 4, not 5.
        assert_eq!(line_column(t, 7), (2, 4));
        assert_eq!(line_column(t, 8), (3, 1));
        assert_eq!(line_column(t, 99), (3, 2));
        // Inside the two bytes of "é": clamped to its start.
        assert_eq!(line_column(t, 6), (2, 3));
    }

    #[test]
    fn defaults_fill_a_minimal_config() {
        let c = parse("[dataplane]\nmac = \"02:00:00:00:00:01\"\n").unwrap();
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
        assert_eq!(c.dataplane.interface, "lb0");
        assert_eq!(c.dataplane.cores, None);
        assert_eq!(c.dataplane.idle, IdleMode::Adaptive);
        assert_eq!(c.dataplane.xdp_mode, XdpMode::Auto);
        assert_eq!(c.conntrack.capacity, 262_144);
        assert_eq!(c.conntrack.embryonic_budget(), 65_536);
        assert_eq!(
            c.conntrack.timeouts.tcp_established,
            Duration::from_secs(900)
        );
        assert!(c.services.is_empty());
    }

    #[test]
    fn service_and_backend_defaults() {
        let c = parse(
            r#"
[dataplane]
mac = "02:00:00:00:00:01"
[conntrack]
capacity = 1000
[conntrack.timeouts]
udp = "500ms"
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
        )
        .unwrap();
        assert_eq!(c.conntrack.embryonic_budget(), 250);
        assert_eq!(c.conntrack.timeouts.udp, Duration::from_millis(500));
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
        match parse(text) {
            Err(ConfigError::Parse {
                line,
                column,
                message,
                ..
            }) => {
                assert_eq!((line, column), (3, 3), "{message}");
                assert!(message.contains("mttu"), "{message}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        let shown = parse(text).unwrap_err().to_string();
        assert!(shown.starts_with("t.toml:3:3: "), "{shown}");
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let text =
            "[dataplane]\nmac = \"02:00:00:00:00:01\"\n[conntrack.timeouts]\nudp = \"30 s\"\n";
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
             cores = [2, 3]\nidle = \"poll\"\nxdp_mode = \"generic\"\n",
        )
        .unwrap();
        let d = &c.dataplane;
        assert_eq!((d.port, d.interface.as_str()), (PortKind::AfXdp, "eth1"));
        assert_eq!(d.cores, Some(vec![2, 3]));
        assert_eq!((d.idle, d.xdp_mode), (IdleMode::Poll, XdpMode::Generic));
        let shown = parse("[dataplane]\nmac = \"02:00:00:00:00:01\"\nport = \"dpdk\"\n")
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
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load(Path::new("/nonexistent/lb.toml")).unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/lb.toml: "),
            "{err}"
        );
    }
}

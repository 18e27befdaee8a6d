//! The lb.toml schema: serde structs with defaults, and loading with `file:line:column` errors.
//!
//! Parsing checks shapes and value syntax (addresses, MACs, port ranges, durations); rules that span
//! several fields (address families, neighbors, SNAT addresses) are checked by [`crate::compile`].

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

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
    /// Next hop for addresses not listed in `[[neighbors]]`.
    #[serde(default)]
    pub gateway_mac: Option<MacAddr>,
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
    fn missing_file_names_the_path() {
        let err = load(Path::new("/nonexistent/lb.toml")).unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/lb.toml: "),
            "{err}"
        );
    }
}

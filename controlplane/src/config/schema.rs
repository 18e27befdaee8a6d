//! The lb.toml schema: serde structs, each key's default, and `deny_unknown_fields` everywhere so
//! a typo is an error rather than a silently ignored key.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::types::{de_duration, IpPrefix, MacAddr, PortRange, StatusRange};

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
    /// HTTP services (L7): listeners, upstreams and routes.
    #[serde(default)]
    pub http: Vec<super::http::Http>,
    /// The admin HTTP API (metrics, state, runtime operations).
    #[serde(default)]
    pub admin: Admin,
    /// Logging.
    #[serde(default)]
    pub logging: Logging,
    /// The Kubernetes source; absent: none runs.
    #[serde(default)]
    pub kubernetes: Option<super::kubernetes::Kubernetes>,
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
    /// Connections served at once; more wait in the listen backlog, never holding a descriptor.
    #[serde(default = "default_admin_max_connections")]
    pub max_connections: u32,
    /// A request head must arrive within this, counted from when the server waits for it (so it
    /// also closes a keep-alive connection idle between requests).
    #[serde(
        default = "default_admin_header_timeout",
        deserialize_with = "de_duration"
    )]
    pub header_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed (a stalled body,
    /// a client that stops reading its answer).
    #[serde(
        default = "default_admin_idle_timeout",
        deserialize_with = "de_duration"
    )]
    pub idle_timeout: Duration,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            enabled: true,
            listen: default_admin_listen(),
            max_connections: default_admin_max_connections(),
            header_timeout: default_admin_header_timeout(),
            idle_timeout: default_admin_idle_timeout(),
        }
    }
}

fn default_admin_max_connections() -> u32 {
    256
}

fn default_admin_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_admin_idle_timeout() -> Duration {
    Duration::from_secs(60)
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
    /// Our MAC on the balancer's interface (one interface; with `[[dataplane.interfaces]]`,
    /// each interface has its own).
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// `[[dataplane.interfaces]]`: the interfaces of a two-armed or multi-NIC balancer, each
    /// with its own MAC, addresses and link. Empty: the one interface of the keys above.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
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
    /// The interface the balancer serves (created for `tap`, existing for the others); `lb0`
    /// when absent.
    #[serde(default)]
    pub interface: Option<String>,
    /// `af_xdp` only: the receive queue id each worker binds on `interface`, one per worker
    /// (absent: worker `i` binds queue `i`).
    #[serde(default)]
    pub queues: Option<Vec<u32>>,
    /// Core of each worker; absent means cores 0, 1, ... in order.
    #[serde(default)]
    pub cores: Option<Vec<usize>>,
    /// What an idle worker does.
    #[serde(default)]
    pub idle: IdleMode,
    /// How `af_xdp` attaches its XDP program.
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// `[dataplane.dpdk]`: EAL and device settings of `port = "dpdk"`.
    #[serde(default)]
    pub dpdk: Option<Dpdk>,
    /// What a reload does to the tracked flows of a service or backend it removes.
    #[serde(default)]
    pub on_remove: OnRemove,
    /// How long a removed service or backend keeps its tracked flows (`on_remove = "drain"`).
    #[serde(default = "default_drain_timeout", deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
}

/// `[[dataplane.interfaces]]`: one interface of a balancer that serves several (an outside and
/// an inside interface, or several NICs). Every worker polls one queue of each.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// The interface's name (created for `tap`, existing for the others).
    pub name: String,
    /// Our MAC on it (distinct from every other interface's).
    pub mac: MacAddr,
    /// Addresses we own on it (answers ARP, ND and ping for them there).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Prefixes on its link: an address inside one is reached on this interface directly.
    #[serde(default)]
    pub on_link: Vec<IpPrefix>,
    /// Routers on its link (at most one per family), resolved by ARP/ND.
    #[serde(default)]
    pub gateway: Vec<IpAddr>,
    /// Prefixes reached through this interface's gateway; empty: its gateway is the default
    /// route (the first interface with one wins).
    #[serde(default)]
    pub routes: Vec<IpPrefix>,
    /// Kind of packet port on it; `[dataplane] port` when absent.
    #[serde(default)]
    pub port: Option<PortKind>,
    /// `af_xdp` only: the receive queue id each worker binds, one per worker (absent: worker
    /// `i` binds queue `i`).
    #[serde(default)]
    pub queues: Option<Vec<u32>>,
    /// `dpdk` only: this interface's DPDK device (a PCI address or a virtual device's name);
    /// absent: `[dataplane.dpdk] device` (for one interface at most).
    #[serde(default)]
    pub dpdk_device: Option<String>,
    /// `dpdk` only: the arguments of a virtual device `lb run` creates as `dpdk_device`.
    #[serde(default)]
    pub dpdk_vdev: Option<String>,
}

/// One interface as the rest of the config sees it: an entry of `[[dataplane.interfaces]]`, or
/// the single interface of `[dataplane]`'s own keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Key path of its table, for problems (`dataplane` or `dataplane.interfaces[1]`).
    pub path: String,
    /// Interface name.
    pub name: String,
    /// Our MAC on it (all zero when a one-interface config lacks `mac`, which validation
    /// reports).
    pub mac: MacAddr,
    /// Our addresses on it.
    pub addresses: Vec<IpAddr>,
    /// Its on-link prefixes.
    pub on_link: Vec<IpPrefix>,
    /// Its gateways.
    pub gateway: Vec<IpAddr>,
    /// Prefixes behind its gateway (empty: default route).
    pub routes: Vec<IpPrefix>,
    /// Port kind.
    pub port: PortKind,
    /// The receive queue id of each worker (`af_xdp`), if the config picks them.
    pub queues: Option<Vec<u32>>,
    /// Its own DPDK device (`dpdk`), if the entry names one.
    pub dpdk_device: Option<String>,
    /// That device's virtual-device arguments.
    pub dpdk_vdev: Option<String>,
}

impl Link {
    /// The DPDK device this interface drives and its virtual-device arguments: its own
    /// `dpdk_device`, else `[dataplane.dpdk]`'s `device` and `vdev`.
    pub fn dpdk_device<'a>(&'a self, dpdk: &'a Dpdk) -> (&'a str, Option<&'a str>) {
        match &self.dpdk_device {
            Some(own) => (own, self.dpdk_vdev.as_deref()),
            None => (&dpdk.device, dpdk.vdev.as_deref()),
        }
    }

    /// What this interface reaches, as the table routes by it.
    pub fn to_table(&self) -> dataplane::table::Link {
        let gateway = |v4: bool| {
            self.gateway
                .iter()
                .find(|g| g.is_ipv4() == v4)
                .map(|g| dataplane::flow::Addr::from(*g))
        };
        dataplane::table::Link {
            on_link: self.on_link.iter().map(|p| p.to_table()).collect(),
            routes: self.routes.iter().map(|p| p.to_table()).collect(),
            gateway_v4: gateway(true),
            gateway_v6: gateway(false),
        }
    }
}

impl Config {
    /// The `[[neighbors]]` entries that name their interface, as (address, index of that
    /// interface in `links`); a name no interface has (which validation reports) is left out.
    pub fn pinned_neighbors(&self, links: &[Link]) -> Vec<(IpAddr, u8)> {
        self.neighbors
            .iter()
            .filter_map(|n| {
                let name = n.interface.as_deref()?;
                let i = links.iter().position(|l| l.name == name)?;
                Some((n.ip, i as u8))
            })
            .collect()
    }
}

impl Dataplane {
    /// The interfaces served, in order: `[[dataplane.interfaces]]`, or the one of `[dataplane]`.
    pub fn links(&self) -> Vec<Link> {
        if self.interfaces.is_empty() {
            return vec![Link {
                path: "dataplane".into(),
                name: self.interface_name().to_string(),
                mac: self.mac.unwrap_or(MacAddr([0; 6])),
                addresses: self.addresses.clone(),
                on_link: self.on_link.clone(),
                gateway: self.gateway.clone(),
                routes: Vec::new(),
                port: self.port,
                queues: self.queues.clone(),
                dpdk_device: None,
                dpdk_vdev: None,
            }];
        }
        self.interfaces
            .iter()
            .enumerate()
            .map(|(i, f)| Link {
                path: format!("dataplane.interfaces[{i}]"),
                name: f.name.clone(),
                mac: f.mac,
                addresses: f.addresses.clone(),
                on_link: f.on_link.clone(),
                gateway: f.gateway.clone(),
                routes: f.routes.clone(),
                port: f.port.unwrap_or(self.port),
                queues: f.queues.clone(),
                dpdk_device: f.dpdk_device.clone(),
                dpdk_vdev: f.dpdk_vdev.clone(),
            })
            .collect()
    }

    /// The first interface's name (`lb0` when `interface` is absent).
    pub fn interface_name(&self) -> &str {
        match self.interfaces.first() {
            Some(f) => &f.name,
            None => self.interface.as_deref().unwrap_or("lb0"),
        }
    }

    /// Our addresses on every interface.
    pub fn all_addresses(&self) -> Vec<IpAddr> {
        self.links().into_iter().flat_map(|l| l.addresses).collect()
    }
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
    /// A DPDK device (a NIC bound to a DPDK driver, or a virtual device), one queue per worker;
    /// needs a build with the `dpdk` feature and a `[dataplane.dpdk]` table.
    #[serde(rename = "dpdk")]
    Dpdk,
}

impl PortKind {
    /// The name used in lb.toml and logs.
    pub fn name(self) -> &'static str {
        match self {
            PortKind::Tap => "tap",
            PortKind::AfPacket => "af_packet",
            PortKind::AfXdp => "af_xdp",
            PortKind::Dpdk => "dpdk",
        }
    }
}

/// `[dataplane.dpdk]`: how `port = "dpdk"` starts EAL and its device.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dpdk {
    /// The device: a PCI address (`"0000:01:00.0"`) or a virtual device's name (`"net_memif0"`);
    /// may be left out when every dpdk interface names its own (`dpdk_device`).
    #[serde(default)]
    pub device: String,
    /// Arguments of a virtual device that `lb run` creates as `device`
    /// (`"role=server,socket=/run/lb.sock"`); absent for a device EAL probes itself.
    #[serde(default)]
    pub vdev: Option<String>,
    /// Extra EAL arguments (`["-a", "0000:01:00.0"]`, `["--no-pci"]`, ...), after lb's own.
    #[serde(default)]
    pub eal_args: Vec<String>,
    /// Receive descriptors per queue (the driver may round it).
    #[serde(default = "default_dpdk_descriptors")]
    pub rx_descriptors: u16,
    /// Transmit descriptors per queue (the driver may round it).
    #[serde(default = "default_dpdk_descriptors")]
    pub tx_descriptors: u16,
    /// Mbufs in the device's pool, shared by its queues.
    #[serde(default = "default_dpdk_mempool")]
    pub mempool_size: u32,
    /// Hugepages for EAL's memory (false: `--no-huge`, ordinary pages).
    #[serde(default = "default_true")]
    pub hugepages: bool,
}

fn default_dpdk_descriptors() -> u16 {
    1024
}

fn default_dpdk_mempool() -> u32 {
    16383
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

/// `[dataplane] on_remove`: the fate of the flows of a service or backend a reload removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRemove {
    /// They keep their backend until they end or `drain_timeout` passes; new flows go
    /// elsewhere (IPVS's default, and what a hitless reload needs).
    #[default]
    Drain,
    /// They are dropped at once (their next packet finds no backend).
    Reset,
}

/// As long as an established TCP flow may stay idle by default (`[conntrack.timeouts]`).
fn default_drain_timeout() -> Duration {
    Duration::from_secs(15 * 60)
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
    /// The interface it is on (a name in `[[dataplane.interfaces]]`); absent: the interface
    /// whose `on_link` holds it, else the first.
    #[serde(default)]
    pub interface: Option<String>,
}

/// `[conntrack]`: per-worker table sizing and idle timeouts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conntrack {
    /// Tracked keys per worker (a nat or fullnat flow takes two).
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// Most unconfirmed flows of each class at once (TCP mid-handshake, and apart from them UDP
    /// flows not yet confirmed); absent means a quarter of `capacity`.
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
    /// Confirmed UDP flow (and ICMP echo).
    #[serde(deserialize_with = "de_duration")]
    pub udp: Duration,
    /// UDP flow not yet confirmed (no client datagram after an answer yet).
    #[serde(deserialize_with = "de_duration")]
    pub udp_unconfirmed: Duration,
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
            udp_unconfirmed: Duration::from_millis(d.udp_unconfirmed),
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

pub(super) fn default_check_path() -> String {
    "/".into()
}

pub(super) fn default_expect_status() -> StatusRange {
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
    /// The name used in lb.toml.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

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

impl Mode {
    /// The dataplane's mode for this one (the one mapping between the two).
    pub fn table_mode(self) -> dataplane::table::Mode {
        use dataplane::table::Mode as T;
        match self {
            Mode::FullNat => T::FullNat,
            Mode::Nat => T::Nat,
            Mode::DsrIpip => T::DsrIpip,
            Mode::DsrGue => T::DsrGue,
            Mode::Dr => T::Dr,
        }
    }

    /// The name used in lb.toml (the dataplane's, which metrics use too).
    pub fn name(self) -> &'static str {
        self.table_mode().name()
    }

    /// True for the modes that encapsulate (and so need an outer source address).
    pub fn is_dsr(self) -> bool {
        matches!(self, Mode::DsrIpip | Mode::DsrGue)
    }
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

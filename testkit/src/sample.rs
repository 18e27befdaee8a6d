//! A small, fixed routing table and frame builders, shared by benchmarks, the instruction counter,
//! fuzz targets and tests, so they all exercise the same realistic setup.

use dataplane::flow::{proto, Addr};
use dataplane::maglev::DEFAULT_TABLE_SIZE;
use dataplane::table::{Affinity, Backend, Local, Mode, Pool, RoutingTable, ServiceSpec};
use dataplane::wire::{self, checksum, Ipv4Fields};

/// Our MAC in the sample table.
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The client-side router's MAC.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// The fullnat VIP (TCP port 80).
pub const VIP_FULLNAT: Addr = Addr::v4([198, 18, 0, 100]);
/// The dsr-ipip VIP (TCP port 80).
pub const VIP_IPIP: Addr = Addr::v4([198, 18, 0, 101]);
/// The nat VIP (TCP port 80).
pub const VIP_NAT: Addr = Addr::v4([198, 18, 0, 102]);
/// The dsr-gue VIP (TCP port 80).
pub const VIP_GUE: Addr = Addr::v4([198, 18, 0, 103]);
/// The dr VIP (TCP port 80).
pub const VIP_DR: Addr = Addr::v4([198, 18, 0, 104]);
/// The IPv6 fullnat VIP (TCP port 80).
pub const VIP6_FULLNAT: Addr =
    Addr::v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
/// Every forwarding mode, in the order of the sample table's IPv4 services (fullnat, dsr-ipip,
/// nat, dsr-gue, dr: the VIPs above and backend nets 1 to 5).
pub const MODES: [Mode; 5] = [
    Mode::FullNat,
    Mode::DsrIpip,
    Mode::Nat,
    Mode::DsrGue,
    Mode::Dr,
];
/// The fullnat source address.
pub const SNAT: Addr = Addr::v4([198, 18, 0, 2]);
/// The IPv6 fullnat source address.
pub const SNAT6: Addr = Addr::v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);

/// A table with one service per mode, each with `backends` backends, all TCP port 80: fullnat on
/// [`VIP_FULLNAT`] (backends in 198.18.1.0/24), dsr-ipip on [`VIP_IPIP`] (198.18.2.0/24), nat on
/// [`VIP_NAT`] (198.18.3.0/24), dsr-gue on [`VIP_GUE`] (198.18.4.0/24), dr on [`VIP_DR`]
/// (198.18.5.0/24) and IPv6 fullnat on [`VIP6_FULLNAT`] (2001:db8:1::/64).
pub fn table(generation: u64, backends: u8) -> RoutingTable {
    let hosts: Vec<(u8, u32)> = (0..backends).map(|i| (10 + i, 1)).collect();
    table_of(generation, &hosts)
}

/// The same services with the given backends, as (host number, weight): host `h` is
/// 198.18.`net`.`h` in every IPv4 service and 2001:db8:1::`h` in the IPv6 one.
pub fn table_of(generation: u64, backends: &[(u8, u32)]) -> RoutingTable {
    let mut local = local_v4();
    local.addrs.push(Addr::v6([
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ]));
    let hosts = |net: u8| {
        if net == 6 {
            let v6 = |h: u8| Addr::v6([0x20, 1, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, h]);
            backends_at(net, backends, 8080, v6)
        } else {
            // dsr and dr forward the packet unchanged, so their backends keep the port.
            backends_v4(
                net,
                backends,
                if matches!(net, 2 | 4 | 5) { 0 } else { 8080 },
            )
        }
    };
    let svc = |name: &str, vip: Addr, mode: Mode, net: u8| {
        service(
            name,
            vip,
            proto::TCP,
            (80, 80),
            pool(mode, vec![SNAT, SNAT6]),
            hosts(net),
        )
    };
    RoutingTable::new(
        generation,
        local,
        vec![
            svc("fullnat", VIP_FULLNAT, Mode::FullNat, 1),
            svc("ipip", VIP_IPIP, Mode::DsrIpip, 2),
            svc("nat", VIP_NAT, Mode::Nat, 3),
            svc("gue", VIP_GUE, Mode::DsrGue, 4),
            svc("dr", VIP_DR, Mode::Dr, 5),
            svc("fullnat6", VIP6_FULLNAT, Mode::FullNat, 6),
        ],
    )
    .expect("the sample table is valid")
}

/// The sample table's own addresses, IPv4 only: [`LB_MAC`], 198.18.0.1, MTU 1500, SNAT ports
/// 1024-65535.
pub fn local_v4() -> Local {
    Local {
        mac: LB_MAC,
        addrs: vec![Addr::v4([198, 18, 0, 1])],
        mtu: 1500,
        snat_ports: (1024, 65535),
        more: Vec::new(),
    }
}

/// A service on `vip`, protocol `proto` (see [`proto`]), ports `ports` (first, last; (0, 0)
/// for every port), with one pool and no affinity, as the sample table's.
pub fn service(
    name: &str,
    vip: Addr,
    proto: u8,
    ports: (u16, u16),
    pool: Pool,
    backends: Vec<Backend>,
) -> ServiceSpec {
    ServiceSpec {
        stat: None,
        name: name.into(),
        vip,
        proto,
        port_lo: ports.0,
        port_hi: ports.1,
        affinity: Affinity::None,
        table_size: DEFAULT_TABLE_SIZE,
        pools: vec![pool],
        backends,
    }
}

/// The sample table's pool in `mode`, with `snat` as its fullnat source addresses, the
/// encapsulation source 198.18.0.1 and GUE port 6080.
pub fn pool(mode: Mode, snat: Vec<Addr>) -> Pool {
    Pool {
        name: "pool".into(),
        mode,
        snat,
        encap_src_v4: Some(Addr::v4([198, 18, 0, 1])),
        encap_src_v6: None,
        gue_port: 6080,
    }
}

/// Backends of pool 0 as (host number, weight): host `h` is 198.18.`net`.`h`, port `port` (0:
/// the service's), MAC 02:00:00:00:`net`:`h`.
pub fn backends_v4(net: u8, hosts: &[(u8, u32)], port: u16) -> Vec<Backend> {
    backends_at(net, hosts, port, |h| Addr::v4([198, 18, net, h]))
}

/// [`backends_v4`] with host `h`'s address `addr(h)`.
fn backends_at(net: u8, hosts: &[(u8, u32)], port: u16, addr: impl Fn(u8) -> Addr) -> Vec<Backend> {
    hosts
        .iter()
        .map(|&(h, weight)| Backend {
            addr: addr(h),
            port,
            weight,
            mac: [0x02, 0, 0, 0, net, h],
            pool: 0,
            stat: 0,
        })
        .collect()
}

/// Writes an Ethernet + IPv4 + TCP frame with valid checksums into `buf`; returns its length.
/// `buf` must hold at least 54 + `payload` bytes.
pub fn tcp4(
    buf: &mut [u8],
    src: Addr,
    dst: Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: usize,
) -> usize {
    let len = 14 + 20 + 20 + payload;
    let frame = &mut buf[..len];
    frame.fill(0);
    wire::write_eth(frame, LB_MAC, CLIENT_MAC, None, wire::ETHERTYPE_IPV4).expect("room");
    wire::write_ipv4(
        &mut frame[14..],
        &Ipv4Fields {
            src: src.v4_octets(),
            dst: dst.v4_octets(),
            proto: proto::TCP,
            payload_len: (20 + payload) as u16,
            ttl: 64,
            tos: 0,
            id: 1,
            flags_frag: 0x4000,
        },
    )
    .expect("room");
    let tcp = &mut frame[34..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let c = checksum::l4(&src, &dst, proto::TCP, tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    len
}

/// The options of a Linux client's SYN (MSS 1460, SACK permitted, timestamps, a NOP, window
/// scale 7): 20 bytes, so its TCP header is 40 bytes and its frame 74.
pub const LINUX_SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
];

/// The options of a Windows client's SYN (MSS 1460, NOP, window scale 8, two NOPs, SACK
/// permitted): 12 bytes, so its TCP header is 32 bytes and its frame 66.
pub const WINDOWS_SYN_OPTIONS: [u8; 12] = [2, 4, 0x05, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2];

/// The options of a macOS client's SYN (MSS 1460, NOP, window scale 6, two NOPs, timestamps,
/// SACK permitted, end of list): 24 bytes, so its TCP header is 44 bytes and its frame 78.
pub const MACOS_SYN_OPTIONS: [u8; 24] = [
    2, 4, 0x05, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 4, 2, 0, 0,
];

/// [`tcp4`]'s SYN with TCP options `opts` (a multiple of 4 bytes, at most 40) after the fixed
/// header, as a real client sends it: valid checksums; returns the frame's length.
pub fn tcp4_syn_with(
    buf: &mut [u8],
    src: Addr,
    dst: Addr,
    sport: u16,
    dport: u16,
    opts: &[u8],
) -> usize {
    assert!(
        opts.len() % 4 == 0 && opts.len() <= 40,
        "TCP options are whole words, at most 40 bytes"
    );
    let len = tcp4(buf, src, dst, sport, dport, 0x02, opts.len());
    let tcp = &mut buf[34..len];
    tcp[20..].copy_from_slice(opts);
    tcp[12] = (((20 + opts.len()) / 4) << 4) as u8;
    tcp[16..18].fill(0);
    let c = checksum::l4(&src, &dst, proto::TCP, tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    len
}

//! Shared by the golden fixture tests: the manifest (`fixtures/cases.json`), a pcap reader of our
//! own, the check kinds, and a checksum verifier built on etherparse that does not use any of our
//! packet code, so a wrong checksum in a fixture or in the pipeline's output cannot hide behind the
//! same bug on both sides.
#![allow(dead_code)] // each test file uses a different part of this module

use std::fs::File;
use std::path::{Path, PathBuf};

use etherparse::checksum::Sum16BitWords;
use etherparse::{Icmpv6Slice, Ipv4HeaderSlice, Ipv6HeaderSlice, TcpSlice, UdpSlice};
use serde::Deserialize;

/// UDP destination ports whose payload is a GUE (variant 1) inner IP packet.
pub const GUE_PORTS: [u16; 1] = [6080];

/// One case of the manifest.
#[derive(Debug, Deserialize)]
pub struct Case {
    /// Unique name; also the stem of its pcap files.
    pub name: String,
    /// What the case shows.
    pub description: String,
    /// Config path relative to `fixtures/`.
    pub config: String,
    /// Input pcap relative to `fixtures/`.
    pub input: String,
    /// Expected pcap relative to `fixtures/` (absent when no frame is transmitted).
    pub expected: Option<String>,
    /// One entry per input frame.
    pub frames: Vec<FrameSpec>,
    /// One-of frames of this case must pick at least this many different choices (Maglev spreads).
    #[serde(default)]
    pub min_distinct_choices: Option<usize>,
}

/// What one input frame must produce.
#[derive(Debug, Deserialize)]
pub struct FrameSpec {
    /// `tx`, `to-host` or `drop:<reason>`.
    pub verdict: String,
    /// How the output is compared (see [`Check`]).
    pub check: String,
    /// Index into the expected pcap for `exact`.
    pub expected_index: Option<usize>,
    /// Candidate indices into the expected pcap for `one-of` and `same-choice-as:<k>`.
    #[serde(default)]
    pub expected_indices: Vec<usize>,
    /// The expected frame deliberately carries a bad TCP/UDP checksum (an established flow forwards
    /// a bad checksum still bad), so the checksum verifier must reject it.
    #[serde(default)]
    pub l4_checksum_bad: bool,
}

/// How a frame's output is compared with the expected pcap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Byte for byte equal to `expected[expected_index]`.
    Exact,
    /// Equal to one of `expected[expected_indices[j]]` (one candidate per possible backend).
    OneOf,
    /// Like `OneOf`, and the matching position `j` is the one frame `k` of the case matched.
    SameChoiceAs(usize),
    /// Nothing transmitted: the output, if the simulator reports one, is the untouched input.
    None,
}

impl Check {
    /// Parses a manifest check string.
    pub fn parse(s: &str) -> Result<Check, String> {
        match s {
            "exact" => Ok(Check::Exact),
            "one-of" => Ok(Check::OneOf),
            "none" => Ok(Check::None),
            _ => s
                .strip_prefix("same-choice-as:")
                .and_then(|k| k.parse().ok())
                .map(Check::SameChoiceAs)
                .ok_or_else(|| format!("unknown check kind {s:?}")),
        }
    }

    /// The expected-pcap indices a frame with this check may match.
    pub fn candidates(self, spec: &FrameSpec) -> Vec<usize> {
        match self {
            Check::Exact => spec.expected_index.into_iter().collect(),
            Check::OneOf | Check::SameChoiceAs(_) => spec.expected_indices.clone(),
            Check::None => Vec::new(),
        }
    }
}

/// `controlplane/../fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
}

/// Reads `fixtures/cases.json`.
pub fn load_manifest() -> Vec<Case> {
    let path = fixtures_dir().join("cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The frames of a pcap file, read with pcap-file (not with the simulator's reader).
pub fn read_pcap_frames(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader =
        pcap_file::pcap::PcapReader::new(file).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut frames = Vec::new();
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.map_err(|e| format!("{}: {e}", path.display()))?;
        frames.push(pkt.data.into_owned());
    }
    Ok(frames)
}

/// Where two frames first differ, with 16 bytes of each from there, for failure messages.
pub fn describe_diff(expected: &[u8], actual: &[u8]) -> String {
    let at = expected
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(actual.len()));
    let hex = |b: &[u8]| {
        let end = (at + 16).min(b.len());
        b.get(at..end)
            .unwrap_or(&[])
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "lengths expected {} actual {}; first difference at byte {at}: expected [{}] actual [{}]",
        expected.len(),
        actual.len(),
        hex(expected),
        hex(actual)
    )
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Verifies every checksum of an Ethernet frame: the IPv4 header, TCP, UDP (0 allowed over IPv4),
/// ICMP and ICMPv6; it descends into IP-in-IP, IPv6-in-IPv6/IPv4-in-IPv6, GUE (UDP to a
/// [`GUE_PORTS`] port) and the packet quoted by an ICMP error (its IPv4 header always, and the
/// whole packet when it is quoted complete). ARP has no checksum and passes.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let mut ethertype = be16(frame, 12).ok_or("frame shorter than an Ethernet header")?;
    let mut off = 14;
    if ethertype == 0x8100 {
        ethertype = be16(frame, 16).ok_or("frame ends inside its VLAN tag")?;
        off = 18;
    }
    let l3 = &frame[off..];
    match ethertype {
        0x0800 => verify_ipv4(l3, 0, "IPv4"),
        0x86dd => verify_ipv6(l3, 0, "IPv6"),
        0x0806 => Ok(()),
        other => Err(format!("EtherType {other:#06x} is not IPv4, IPv6 or ARP")),
    }
}

const MAX_DEPTH: u8 = 4;

#[derive(Clone, Copy)]
enum Pseudo {
    V4([u8; 4], [u8; 4]),
    V6([u8; 16], [u8; 16]),
}

fn verify_ipv4(pkt: &[u8], depth: u8, ctx: &str) -> Result<(), String> {
    let h = Ipv4HeaderSlice::from_slice(pkt).map_err(|e| format!("{ctx}: header: {e}"))?;
    // RFC 1071: the sum over the header including its checksum is all ones.
    if Sum16BitWords::new().add_slice(h.slice()).ones_complement() != 0 {
        return Err(format!(
            "{ctx}: header checksum {:#06x}, should be {:#06x}",
            h.header_checksum(),
            h.to_header().calc_header_checksum()
        ));
    }
    let total = h.total_len() as usize;
    let hl = h.slice().len();
    if total < hl || total > pkt.len() {
        return Err(format!(
            "{ctx}: total length {total} outside header {hl} .. {} bytes present",
            pkt.len()
        ));
    }
    if h.more_fragments() || h.fragments_offset().value() != 0 {
        return Ok(()); // no complete transport segment to check
    }
    let pseudo = Pseudo::V4(h.source(), h.destination());
    verify_l4(pseudo, h.protocol().0, &pkt[hl..total], depth, ctx)
}

fn verify_ipv6(pkt: &[u8], depth: u8, ctx: &str) -> Result<(), String> {
    let h = Ipv6HeaderSlice::from_slice(pkt).map_err(|e| format!("{ctx}: header: {e}"))?;
    let end = 40 + h.payload_length() as usize;
    if end > pkt.len() {
        return Err(format!(
            "{ctx}: payload length {} past the {} bytes present",
            h.payload_length(),
            pkt.len()
        ));
    }
    let mut next = h.next_header().0;
    let mut off = 40;
    // Hop-by-hop, routing and destination options are skipped (no routing header in the fixtures,
    // so the pseudo-header destination is the header's); a fragment ends the check.
    while matches!(next, 0 | 43 | 60) {
        let len = pkt
            .get(off + 1)
            .map(|l| (*l as usize + 1) * 8)
            .ok_or(format!("{ctx}: extension header truncated"))?;
        next = pkt[off];
        off += len;
        if off > end {
            return Err(format!("{ctx}: extension headers past the payload"));
        }
    }
    if next == 44 {
        return Ok(());
    }
    let pseudo = Pseudo::V6(h.source(), h.destination());
    verify_l4(pseudo, next, &pkt[off..end], depth, ctx)
}

fn verify_l4(pseudo: Pseudo, proto: u8, l4: &[u8], depth: u8, ctx: &str) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{ctx}: nested deeper than {MAX_DEPTH}"));
    }
    match proto {
        6 => {
            let tcp = TcpSlice::from_slice(l4).map_err(|e| format!("{ctx}/TCP: {e}"))?;
            let want = match pseudo {
                Pseudo::V4(s, d) => tcp.calc_checksum_ipv4(s, d),
                Pseudo::V6(s, d) => tcp.calc_checksum_ipv6(s, d),
            }
            .map_err(|e| format!("{ctx}/TCP: {e}"))?;
            if want != tcp.checksum() {
                return Err(format!(
                    "{ctx}/TCP: checksum {:#06x}, should be {want:#06x}",
                    tcp.checksum()
                ));
            }
            Ok(())
        }
        17 => {
            let udp = UdpSlice::from_slice(l4).map_err(|e| format!("{ctx}/UDP: {e}"))?;
            let got = udp.checksum();
            let zero_ok = matches!(pseudo, Pseudo::V4(..)) && got == 0;
            if !zero_ok {
                let hdr = udp.to_header();
                let want = match pseudo {
                    Pseudo::V4(s, d) => hdr.calc_checksum_ipv4_raw(s, d, udp.payload()),
                    Pseudo::V6(s, d) => hdr.calc_checksum_ipv6_raw(s, d, udp.payload()),
                }
                .map_err(|e| format!("{ctx}/UDP: {e}"))?;
                if want != got {
                    return Err(format!(
                        "{ctx}/UDP: checksum {got:#06x}, should be {want:#06x}"
                    ));
                }
            }
            let inner = udp.payload();
            if GUE_PORTS.contains(&udp.destination_port()) {
                let ctx = format!("{ctx}/GUE");
                return match inner.first().map(|b| b >> 4) {
                    Some(4) => verify_ipv4(inner, depth + 1, &ctx),
                    Some(6) => verify_ipv6(inner, depth + 1, &ctx),
                    _ => Err(format!("{ctx}: payload is not an IP packet")),
                };
            }
            Ok(())
        }
        1 if matches!(pseudo, Pseudo::V4(..)) => {
            if l4.len() < 8 {
                return Err(format!(
                    "{ctx}/ICMP: {} bytes, shorter than its header",
                    l4.len()
                ));
            }
            if Sum16BitWords::new().add_slice(l4).ones_complement() != 0 {
                let mut zeroed = l4.to_vec();
                zeroed[2] = 0;
                zeroed[3] = 0;
                let want = Sum16BitWords::new().add_slice(&zeroed).ones_complement();
                return Err(format!(
                    "{ctx}/ICMP: checksum {:#06x}, should be {want:#06x}",
                    u16::from_be_bytes([l4[2], l4[3]])
                ));
            }
            if matches!(l4[0], 3 | 4 | 5 | 11 | 12) {
                return verify_quoted(&l4[8..], depth + 1, &format!("{ctx}/ICMP quote"));
            }
            Ok(())
        }
        58 => {
            let Pseudo::V6(s, d) = pseudo else {
                return Err(format!("{ctx}: ICMPv6 over IPv4"));
            };
            let icmp = Icmpv6Slice::from_slice(l4).map_err(|e| format!("{ctx}/ICMPv6: {e}"))?;
            if !icmp.is_checksum_valid(s, d) {
                return Err(format!(
                    "{ctx}/ICMPv6: checksum {:#06x} is wrong",
                    icmp.checksum()
                ));
            }
            if matches!(icmp.type_u8(), 1..=4) {
                return verify_quoted(&l4[8..], depth + 1, &format!("{ctx}/ICMPv6 quote"));
            }
            Ok(())
        }
        4 => verify_ipv4(l4, depth + 1, &format!("{ctx}/IPIP")),
        41 => verify_ipv6(l4, depth + 1, &format!("{ctx}/IPv6-in-IP")),
        _ => Ok(()),
    }
}

/// The packet an ICMP error quotes: the IPv4 header must be right whenever it is there in full;
/// everything is checked when the whole packet is quoted.
fn verify_quoted(q: &[u8], depth: u8, ctx: &str) -> Result<(), String> {
    match q.first().map(|b| b >> 4) {
        Some(4) => {
            let h = Ipv4HeaderSlice::from_slice(q).map_err(|e| format!("{ctx}: {e}"))?;
            if q.len() >= h.total_len() as usize {
                verify_ipv4(q, depth, ctx)
            } else if Sum16BitWords::new().add_slice(h.slice()).ones_complement() != 0 {
                Err(format!(
                    "{ctx}: IPv4 header checksum {:#06x}, should be {:#06x}",
                    h.header_checksum(),
                    h.to_header().calc_header_checksum()
                ))
            } else {
                Ok(())
            }
        }
        Some(6) => {
            let h = Ipv6HeaderSlice::from_slice(q).map_err(|e| format!("{ctx}: {e}"))?;
            if q.len() >= 40 + h.payload_length() as usize {
                verify_ipv6(q, depth, ctx)
            } else {
                Ok(())
            }
        }
        _ => Err(format!("{ctx}: does not start with an IP header")),
    }
}

//! One packet in, one verdict out: the whole L4 decision path the workers run.
//!
//! Rooms by job: `verdict` (verdicts and counters), `state` (per-worker state and the flow
//! values conntrack stores), `new_flow` (service lookup, Maglev, the new flow's entries),
//! `tracked` (packets of known flows), `rewrite` (address and port rewrite), `encap`
//! (dsr-ipip, dsr-gue), `icmp` (errors about flows, too-big answers) and `answer` (ARP, ND
//! and echo for our own addresses).
#![forbid(unsafe_code)]

mod answer;
mod encap;
mod icmp;
mod new_flow;
mod rewrite;
mod state;
mod tracked;
mod verdict;

pub use state::{snat_slice, FlowValue, WorkerState};
pub use verdict::{Counters, DropReason, FlowCounters, Verdict};

use crate::conntrack::Millis;
use crate::flow::proto;
use crate::packet::PacketBuf;
use crate::table::RoutingTable;
use crate::wire::{self, Frag, ParseError, Parsed, L3};

/// TTL / hop limit of packets we originate (answers, outer headers).
const OUR_TTL: u8 = 64;
/// RFC 1812: an ICMPv4 error carries as much of the original as fits in 576 bytes.
const ICMP4_MAX: usize = 576;
/// RFC 4443: an ICMPv6 error must not exceed the minimum IPv6 MTU.
const ICMP6_MAX: usize = 1280;

/// Runs one frame through the pipeline: parse, classify, track, rewrite in place.
pub fn process(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
) -> Verdict {
    let parsed = wire::parse(pkt.data());
    process_parsed(state, table, now, pkt, parsed)
}

/// [`process`] for a frame the caller already parsed (the worker parses once to steer the frame
/// to its flow's owner). `parsed` must be `wire::parse(pkt.data())` of the frame as it is now.
pub fn process_parsed(
    state: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    parsed: Result<Parsed, ParseError>,
) -> Verdict {
    if state.generation != Some(table.generation) {
        state.adopt(table);
    }
    state.counters.rx_packets += 1;
    state.counters.rx_bytes += pkt.len() as u64;
    let v = match parsed {
        Ok(p) => classify(state, table, now, pkt, p),
        Err(e) => parse_error(table, pkt.data(), e),
    };
    let c = &mut state.counters;
    match v {
        Verdict::Tx => {
            c.tx_packets += 1;
            c.tx_bytes += pkt.len() as u64;
        }
        Verdict::Drop(r) => c.drops[r as usize] += 1,
        Verdict::ToHost => c.to_host += 1,
        Verdict::ToL7 => c.to_l7 += 1,
    }
    v
}

fn classify(
    st: &mut WorkerState,
    table: &RoutingTable,
    now: Millis,
    pkt: &mut PacketBuf<'_>,
    p: Parsed,
) -> Verdict {
    match p.l3 {
        L3::Arp => return answer::arp(table, pkt, &p),
        L3::Other => return Verdict::ToHost,
        L3::Ipv4 | L3::Ipv6 => {}
    }
    if p.frag != Frag::None {
        return if table.is_vip(p.dst) {
            Verdict::Drop(DropReason::Fragment)
        } else {
            Verdict::ToHost
        };
    }
    match p.proto {
        proto::TCP | proto::UDP => {
            let key = p.key();
            if let Some(hit) = st.ct.lookup(&key, now) {
                return tracked::tracked(st, table, now, pkt, &p, hit);
            }
            if table.is_vip(p.dst) {
                return new_flow::new_flow(st, table, now, pkt, &p, &key);
            }
            Verdict::ToHost
        }
        proto::ICMP if p.l3 == L3::Ipv4 => icmp::icmp(st, table, now, pkt, &p),
        proto::ICMPV6 if p.l3 == L3::Ipv6 => icmp::icmp(st, table, now, pkt, &p),
        _ if table.is_vip(p.dst) => Verdict::Drop(DropReason::NoService),
        _ => Verdict::ToHost,
    }
}

fn parse_error(table: &RoutingTable, frame: &[u8], e: ParseError) -> Verdict {
    Verdict::Drop(match e {
        ParseError::Truncated => DropReason::Truncated,
        ParseError::BadIpChecksum => DropReason::BadIpChecksum,
        ParseError::UnsupportedExtension => {
            // Only IPv6 gets here; a packet for someone else is the host's business.
            match wire::ipv6_dst(frame) {
                Some(dst) if table.owns(dst) => DropReason::UnsupportedExtension,
                _ => return Verdict::ToHost,
            }
        }
        ParseError::BadIhl
        | ParseError::BadVersion
        | ParseError::BadLength
        | ParseError::BadTcpHeader
        | ParseError::BadUdpLength => DropReason::Malformed,
    })
}

//! `lb sim`: replays frames through the same `process()` the workers run, and pcap input/output.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dataplane::{DropReason, PacketBuf, Verdict, WorkerState};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::{DataLink, Endianness};

use crate::compile::Compiled;

/// Headroom in front of every frame, so encapsulation can grow it without copying.
pub const HEADROOM: usize = 256;
/// Room for a frame at least this large (jumbo), plus [`TAILROOM`].
const MIN_FRAME_ROOM: usize = 9216;
/// Room after the largest frame, so a frame can grow at its end too.
pub const TAILROOM: usize = 256;

/// What happened to one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameResult {
    /// The pipeline's verdict.
    pub verdict: Verdict,
    /// The frame as transmitted, for [`Verdict::Tx`].
    pub output: Option<Vec<u8>>,
}

/// The outcome of a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    /// One result per input frame, in order.
    pub frames: Vec<FrameResult>,
    /// Frames per verdict name (`tx`, `to-host`, `to-l7`, `drop:<reason>`); only verdicts seen.
    pub counts: BTreeMap<String, u64>,
    /// What each backend received (the spread), from the worker's own counters.
    pub backends: Vec<BackendTally>,
}

/// Traffic one backend received during a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendTally {
    /// Service name.
    pub service: String,
    /// Pool's forwarding mode.
    pub mode: &'static str,
    /// `address:port` (port 0: the client's destination port).
    pub backend: String,
    /// Flows created towards it.
    pub new_flows: u64,
    /// Packets forwarded in both directions.
    pub packets: u64,
}

impl SimReport {
    /// The transmitted frames with the timestamps of the frames that caused them.
    pub fn tx_frames(&self, input: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
        self.frames
            .iter()
            .zip(input)
            .filter_map(|(r, (ms, _))| r.output.as_ref().map(|o| (*ms, o.clone())))
            .collect()
    }
}

/// Counter slots: tx, to-host, to-l7, then one per drop reason in `DropReason::ALL` order.
const SLOTS: usize = 3 + DropReason::ALL.len();

fn slot(v: Verdict) -> usize {
    match v {
        Verdict::Tx | Verdict::Lent => 0,
        Verdict::ToHost => 1,
        Verdict::ToL7 => 2,
        Verdict::Drop(r) => 3 + r as usize,
    }
}

fn slot_verdict(i: usize) -> Option<Verdict> {
    match i {
        0 => Some(Verdict::Tx),
        1 => Some(Verdict::ToHost),
        2 => Some(Verdict::ToL7),
        _ => DropReason::ALL.get(i - 3).map(|r| Verdict::Drop(*r)),
    }
}

/// Runs `frames` (timestamp in ms, bytes) through one worker with `compiled`'s table.
pub fn run(compiled: &Compiled, frames: &[(u64, Vec<u8>)]) -> SimReport {
    let mut state = WorkerState::new(0, 1, compiled.conntrack);
    let largest = frames.iter().map(|(_, f)| f.len()).max().unwrap_or(0);
    // One buffer for every frame, as a port's receive ring would reuse its buffers.
    let mut buf = vec![0u8; HEADROOM + largest.max(MIN_FRAME_ROOM) + TAILROOM];
    let mut tally = [0u64; SLOTS];
    let mut results = Vec::with_capacity(frames.len());
    for (ms, frame) in frames {
        let len = frame.len();
        buf[HEADROOM..HEADROOM + len].copy_from_slice(frame);
        let mut pkt = PacketBuf::new(&mut buf, HEADROOM, len);
        let verdict = dataplane::process(&mut state, &compiled.table, *ms, &mut pkt);
        tally[slot(verdict)] += 1;
        let output = (verdict == Verdict::Tx).then(|| pkt.data().to_vec());
        results.push(FrameResult { verdict, output });
    }
    let counts = tally
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .filter_map(|(i, n)| slot_verdict(i).map(|v| (v.name(), *n)))
        .collect();
    let backends = compiled
        .table
        .services
        .iter()
        .flat_map(|svc| svc.backends.iter().map(move |b| (svc, b)))
        .map(|(svc, b)| {
            let c = state
                .counters
                .backends
                .get(b.stat as usize)
                .copied()
                .unwrap_or_default();
            BackendTally {
                service: svc.name.clone(),
                mode: svc
                    .pools
                    .get(b.pool as usize)
                    .map_or("?", |p| p.mode.name()),
                backend: std::net::SocketAddr::new(b.addr.into(), b.port).to_string(),
                new_flows: c.new_flows,
                packets: c.packets,
            }
        })
        .collect();
    SimReport {
        frames: results,
        counts,
        backends,
    }
}

/// Why a pcap could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// Opening or creating the file failed.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not a pcap we can read, or a record is broken.
    #[error("{}: {error}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The pcap library's reason.
        error: pcap_file::PcapError,
    },
    /// The capture is not of Ethernet frames.
    #[error("{}: link type {datalink:?}, expected Ethernet", path.display())]
    LinkType {
        /// The file.
        path: PathBuf,
        /// The link type found.
        datalink: DataLink,
    },
    /// A timestamp does not fit a pcap record (after year 2106).
    #[error("{}: frame {index}: timestamp {ms} ms does not fit a pcap record", path.display())]
    Timestamp {
        /// The file.
        path: PathBuf,
        /// Index of the frame.
        index: usize,
        /// Its timestamp.
        ms: u64,
    },
}

/// Reads an Ethernet pcap (either byte order, micro- or nanosecond timestamps) as (ms, frame) pairs.
/// Timestamps are truncated to the millisecond the pipeline's clock counts in.
pub fn read_pcap(path: &Path) -> Result<Vec<(u64, Vec<u8>)>, PcapError> {
    let file = File::open(path).map_err(|error| PcapError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let format = |error| PcapError::Format {
        path: path.to_path_buf(),
        error,
    };
    let mut reader = PcapReader::new(BufReader::new(file)).map_err(format)?;
    let datalink = reader.header().datalink;
    if datalink != DataLink::ETHERNET {
        return Err(PcapError::LinkType {
            path: path.to_path_buf(),
            datalink,
        });
    }
    let mut frames = Vec::new();
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.map_err(format)?;
        let ms = u64::try_from(pkt.timestamp.as_millis()).unwrap_or(u64::MAX);
        frames.push((ms, pkt.data.into_owned()));
    }
    Ok(frames)
}

/// Writes (ms, frame) pairs as an Ethernet pcap with microsecond timestamps.
pub fn write_pcap(path: &Path, frames: &[(u64, Vec<u8>)]) -> Result<(), PcapError> {
    let io = |error| PcapError::Io {
        path: path.to_path_buf(),
        error,
    };
    let format = |error| PcapError::Format {
        path: path.to_path_buf(),
        error,
    };
    let file = File::create(path).map_err(io)?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        // A frame can grow past 65535 only in theory (jumbo plus encapsulation stays far below),
        // but a snaplen below the frame would make the writer refuse it.
        snaplen: 262_144,
        endianness: Endianness::native(),
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(BufWriter::new(file), header).map_err(format)?;
    for (index, (ms, data)) in frames.iter().enumerate() {
        if *ms / 1000 > u64::from(u32::MAX) {
            return Err(PcapError::Timestamp {
                path: path.to_path_buf(),
                index,
                ms: *ms,
            });
        }
        let orig_len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let pkt = PcapPacket::new(Duration::from_millis(*ms), orig_len, data);
        writer.write_packet(&pkt).map_err(format)?;
    }
    writer.into_writer().flush().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verdict_has_its_own_slot() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..SLOTS {
            let v = slot_verdict(i).unwrap();
            assert_eq!(slot(v), i);
            assert!(seen.insert(v.name()));
        }
        assert_eq!(slot_verdict(SLOTS), None);
    }
}

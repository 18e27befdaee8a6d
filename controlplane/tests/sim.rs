//! `sim::run` and the pcap plumbing around it.

use std::path::PathBuf;
use std::time::Duration;

use controlplane::sim::{self, PcapError};
use controlplane::{compile, Config};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sim-{}-{name}", std::process::id()))
}

fn compiled() -> controlplane::Compiled {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../lb.toml"));
    compile(&controlplane::load(path).unwrap(), 1).unwrap()
}

/// A TCP SYN from 198.18.9.9:40000 to the shipped web VIP, port 80.
fn syn_to_web() -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 9, 9], [2, 0, 0, 0, 0, 1])
        .ipv4([198, 18, 9, 9], [198, 18, 0, 100], 64)
        .tcp(40000, 80, 1, 65535)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

#[test]
fn replay_reports_one_verdict_per_frame_and_writes_tx_frames() {
    let c = compiled();
    let input = vec![
        (1_000, syn_to_web()),
        (1_250, syn_to_web()),
        (2_000, vec![0u8; 3]),
        (2_001, Vec::new()),
    ];
    let report = sim::run(&c, &input);
    assert_eq!(report.frames.len(), input.len());
    assert_eq!(report.counts.values().sum::<u64>(), input.len() as u64);
    for (name, n) in &report.counts {
        assert!(*n > 0, "{name} listed with 0");
        assert!(
            name == "tx" || name == "to-host" || name == "to-l7" || name.starts_with("drop:"),
            "{name}"
        );
    }
    for r in &report.frames {
        assert_eq!(r.output.is_some(), r.verdict == dataplane::Verdict::Tx);
        assert!(report.counts.contains_key(&r.verdict.name()));
    }

    let tx = report.tx_frames(&input);
    assert_eq!(
        tx.len() as u64,
        report.counts.get("tx").copied().unwrap_or(0)
    );
    let out = tmp("out.pcap");
    sim::write_pcap(&out, &tx).unwrap();
    assert_eq!(sim::read_pcap(&out).unwrap(), tx);
}

#[test]
fn empty_config_drops_or_passes_every_frame_without_panicking() {
    let cfg = Config::from_toml_str(
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\n",
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let c = compile(&cfg, 1).unwrap();
    let big = vec![0xffu8; 12_000];
    let report = sim::run(&c, &[(0, big), (1, syn_to_web())]);
    assert_eq!(report.counts.values().sum::<u64>(), 2);
}

#[test]
fn pcap_round_trip_keeps_frames_and_millisecond_timestamps() {
    let frames = vec![
        (0, syn_to_web()),
        (1_700_000_000_123, vec![1, 2, 3]),
        (1_700_000_000_124, vec![0xaa; 9000]),
    ];
    let path = tmp("roundtrip.pcap");
    sim::write_pcap(&path, &frames).unwrap();
    assert_eq!(sim::read_pcap(&path).unwrap(), frames);
}

fn write_with(path: &PathBuf, header: PcapHeader, packets: &[(Duration, &[u8])]) {
    let mut w = PcapWriter::with_header(std::fs::File::create(path).unwrap(), header).unwrap();
    for (ts, data) in packets {
        w.write_packet(&PcapPacket::new(*ts, data.len() as u32, data))
            .unwrap();
    }
}

#[test]
fn reads_both_byte_orders_and_nanosecond_pcaps() {
    let frame = syn_to_web();
    for endianness in [Endianness::Big, Endianness::Little] {
        for ts_resolution in [TsResolution::MicroSecond, TsResolution::NanoSecond] {
            let path = tmp(&format!("{endianness:?}-{ts_resolution:?}.pcap"));
            let header = PcapHeader {
                endianness,
                ts_resolution,
                ..PcapHeader::default()
            };
            write_with(
                &path,
                header,
                &[
                    (Duration::new(5, 999_999_999), &frame),
                    (Duration::new(6, 1_000_000), &frame),
                ],
            );
            let got = sim::read_pcap(&path).unwrap();
            // Truncated to the millisecond, never rounded up into the next one.
            assert_eq!(got, vec![(5_999, frame.clone()), (6_001, frame.clone())]);
        }
    }
}

#[test]
fn non_ethernet_and_garbage_pcaps_are_refused_with_the_path() {
    let path = tmp("raw-ip.pcap");
    let header = PcapHeader {
        datalink: DataLink::RAW,
        ..PcapHeader::default()
    };
    write_with(&path, header, &[(Duration::ZERO, &[0x45u8; 20][..])]);
    let err = sim::read_pcap(&path).unwrap_err();
    assert!(matches!(err, PcapError::LinkType { .. }), "{err:?}");
    assert!(err.to_string().contains("raw-ip.pcap"), "{err}");

    let path = tmp("garbage.pcap");
    std::fs::write(&path, b"this is not a pcap file at all").unwrap();
    let err = sim::read_pcap(&path).unwrap_err();
    assert!(matches!(err, PcapError::Format { .. }), "{err:?}");

    let err = sim::read_pcap(&tmp("missing.pcap")).unwrap_err();
    assert!(matches!(err, PcapError::Io { .. }), "{err:?}");
}

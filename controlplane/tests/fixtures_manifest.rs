//! The golden fixture table itself, checked without the balancer: the manifest is well formed,
//! every file it names exists and agrees with it, and every expected frame carries correct
//! checksums (verified with etherparse, independently of the generator and of our packet code).

mod common;

use std::collections::HashSet;

use common::{
    describe_diff, fixtures_dir, load_manifest, read_pcap_frames, verify_checksums, Case, Check,
};

fn expected_frames(case: &Case) -> Result<Vec<Vec<u8>>, String> {
    match &case.expected {
        Some(p) => read_pcap_frames(&fixtures_dir().join(p)),
        None => Ok(Vec::new()),
    }
}

#[test]
fn manifest_has_at_least_80_cases_and_every_file_exists() {
    let cases = load_manifest();
    assert!(cases.len() >= 80, "only {} cases", cases.len());
    let dir = fixtures_dir();
    let mut names = HashSet::new();
    let mut problems = Vec::new();
    for case in &cases {
        let mut bad = |what: String| problems.push(format!("{}: {what}", case.name));
        if !names.insert(case.name.as_str()) {
            bad("duplicate name".into());
        }
        if case.description.trim().is_empty() {
            bad("no description".into());
        }
        if !dir.join(&case.config).is_file() {
            bad(format!("config {} missing", case.config));
        }
        let inputs = match read_pcap_frames(&dir.join(&case.input)) {
            Ok(f) => f,
            Err(e) => {
                bad(e);
                continue;
            }
        };
        if inputs.len() != case.frames.len() {
            bad(format!(
                "{} input frames, {} frame specs",
                inputs.len(),
                case.frames.len()
            ));
        }
        let expected = match expected_frames(case) {
            Ok(f) => f,
            Err(e) => {
                bad(e);
                continue;
            }
        };
        let mut used = vec![false; expected.len()];
        for (i, spec) in case.frames.iter().enumerate() {
            let check = match Check::parse(&spec.check) {
                Ok(c) => c,
                Err(e) => {
                    bad(format!("frame {i}: {e}"));
                    continue;
                }
            };
            let verdict_ok = spec.verdict == "tx"
                || spec.verdict == "to-host"
                || spec
                    .verdict
                    .strip_prefix("drop:")
                    .is_some_and(|r| !r.is_empty());
            if !verdict_ok {
                bad(format!("frame {i}: verdict {:?}", spec.verdict));
            }
            if (spec.verdict == "tx") == (check == Check::None) {
                bad(format!(
                    "frame {i}: verdict {} with check {}",
                    spec.verdict, spec.check
                ));
            }
            let candidates = check.candidates(spec);
            if check != Check::None && candidates.is_empty() {
                bad(format!("frame {i}: no expected frame"));
            }
            for c in candidates {
                match used.get_mut(c) {
                    Some(u) => *u = true,
                    None => bad(format!(
                        "frame {i}: expected index {c} past {}",
                        expected.len()
                    )),
                }
            }
            if let Check::SameChoiceAs(k) = check {
                let earlier = case.frames.get(k).filter(|_| k < i);
                let same_arity = earlier.is_some_and(|e| {
                    e.expected_indices.len() == spec.expected_indices.len()
                        && Check::parse(&e.check).is_ok_and(|c| c != Check::None)
                });
                if !same_arity {
                    bad(format!(
                        "frame {i}: same-choice-as:{k} needs an earlier one-of frame with as many candidates"
                    ));
                }
            }
        }
        if let Some(i) = used.iter().position(|u| !u) {
            bad(format!(
                "expected frame {i} is not referenced by any input frame"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "manifest problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_expected_frame_has_correct_checksums() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for case in load_manifest() {
        let expected = match expected_frames(&case) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{}: {e}", case.name));
                continue;
            }
        };
        for (i, spec) in case.frames.iter().enumerate() {
            let Ok(check) = Check::parse(&spec.check) else {
                continue;
            };
            for c in check.candidates(spec) {
                let Some(frame) = expected.get(c) else {
                    continue;
                };
                checked += 1;
                match (verify_checksums(frame), spec.l4_checksum_bad) {
                    (Ok(()), false) => {}
                    (Err(e), true) if e.contains("/TCP:") || e.contains("/UDP:") => {}
                    (Err(e), false) => {
                        problems.push(format!("{} frame {i} (expected {c}): {e}", case.name))
                    }
                    (r, true) => problems.push(format!(
                        "{} frame {i} (expected {c}): marked l4_checksum_bad but verifies as {r:?}",
                        case.name
                    )),
                }
            }
        }
    }
    assert!(checked > 200, "only {checked} expected frames checked");
    assert!(
        problems.is_empty(),
        "checksum problems:\n{}",
        problems.join("\n")
    );
}

/// The verifier must not pass everything: flipping the last byte of any IP frame without padding
/// lands in checksummed data (for tunnels and ICMP quotes: the inner packet or the ICMP message),
/// and flipping the outer TTL breaks the IPv4 header checksum.
#[test]
fn verify_checksums_rejects_corrupted_frames() {
    let mut caught = 0;
    let mut missed = Vec::new();
    for case in load_manifest() {
        let Ok(expected) = expected_frames(&case) else {
            continue;
        };
        for (idx, frame) in expected.iter().enumerate() {
            if verify_checksums(frame).is_err() {
                continue; // a deliberately bad one
            }
            let off = if frame.get(12..14) == Some(&[0x81, 0x00]) {
                18
            } else {
                14
            };
            let ethertype = frame.get(off - 2..off).unwrap_or(&[]);
            let ip_len = match ethertype {
                [0x08, 0x00] => frame
                    .get(off + 2..off + 4)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize),
                [0x86, 0xdd] => frame
                    .get(off + 4..off + 6)
                    .map(|b| 40 + u16::from_be_bytes([b[0], b[1]]) as usize),
                _ => None,
            };
            let Some(ip_len) = ip_len else { continue };
            // An IPv4 UDP datagram without checksum (0) has nothing that covers its payload.
            let unchecked_udp = ethertype == [0x08, 0x00]
                && frame.get(off + 9) == Some(&17)
                && frame.get(off + 26..off + 28) == Some(&[0, 0])
                && frame.get(off + 22..off + 24) != Some(&common::GUE_PORTS[0].to_be_bytes());
            if off + ip_len == frame.len() && !unchecked_udp {
                let mut bad = frame.clone();
                *bad.last_mut().unwrap() ^= 0x5a;
                match verify_checksums(&bad) {
                    Err(_) => caught += 1,
                    Ok(()) => {
                        missed.push(format!("{} expected {idx}: last byte flipped", case.name))
                    }
                }
            }
            if ethertype == [0x08, 0x00] {
                let mut bad = frame.clone();
                bad[off + 8] ^= 0x01;
                match verify_checksums(&bad) {
                    Err(_) => caught += 1,
                    Ok(()) => missed.push(format!("{} expected {idx}: TTL flipped", case.name)),
                }
            }
        }
    }
    assert!(caught > 200, "only {caught} corruptions tried");
    assert!(
        missed.is_empty(),
        "corruptions not caught:\n{}",
        missed.join("\n")
    );
}

#[test]
fn describe_diff_points_at_the_first_difference() {
    let d = describe_diff(&[1, 2, 3, 4], &[1, 2, 9, 4, 5]);
    assert!(d.contains("at byte 2"), "{d}");
    assert!(d.contains("expected [03 04] actual [09 04 05]"), "{d}");
    assert!(d.contains("lengths expected 4 actual 5"), "{d}");
}

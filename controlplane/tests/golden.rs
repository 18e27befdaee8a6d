//! Replays every golden fixture (`fixtures/cases.json`) through the same pipeline the workers run
//! (`lb sim`'s engine) and compares verdicts and output frames with the expected ones, which were
//! built from docs/PIPELINE.md, not from our code. Every failure of every case is collected and
//! reported in one assertion, so one run shows everything.

mod common;

use std::path::Path;

use common::{
    describe_diff, fixtures_dir, load_manifest, read_pcap_frames, verify_checksums, Case, Check,
};

#[test]
fn golden_fixtures() {
    let cases = load_manifest();
    let mut failures = Vec::new();
    let mut frames = 0;
    for case in &cases {
        frames += case.frames.len();
        for problem in run_case(case) {
            failures.push(format!("{}: {problem}", case.name));
        }
    }
    let failed_cases: std::collections::BTreeSet<&str> = failures
        .iter()
        .filter_map(|f| f.split(':').next())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases ({} frames) failed, {} problems:\n{}",
        failed_cases.len(),
        cases.len(),
        frames,
        failures.len(),
        failures.join("\n")
    );
}

/// Runs one case on a fresh simulator and returns every problem found.
fn run_case(case: &Case) -> Vec<String> {
    let dir = fixtures_dir();
    let config_path = dir.join(&case.config);
    let cfg = match controlplane::config::load(&config_path) {
        Ok(c) => c,
        Err(e) => return vec![format!("config {}: {e}", case.config)],
    };
    let compiled = match controlplane::compile::compile(&cfg, 1) {
        Ok(c) => c,
        Err(e) => return vec![format!("compile {}: {e}", case.config)],
    };
    let input_path = dir.join(&case.input);
    let sim_frames = match controlplane::sim::read_pcap(&input_path) {
        Ok(f) => f,
        Err(e) => return vec![format!("sim::read_pcap {}: {e}", case.input)],
    };
    let (inputs, expected) = match read_case_pcaps(&input_path, case) {
        Ok(x) => x,
        Err(e) => return vec![e],
    };
    let report = controlplane::sim::run(&compiled, &sim_frames);

    let mut problems = Vec::new();
    if report.frames.len() != case.frames.len() {
        problems.push(format!(
            "{} results for {} input frames",
            report.frames.len(),
            case.frames.len()
        ));
    }
    // Which candidate position each one-of frame matched, for same-choice-as checks.
    let mut choices: Vec<Option<usize>> = vec![None; case.frames.len()];
    for (i, (spec, got)) in case.frames.iter().zip(&report.frames).enumerate() {
        let verdict = got.verdict.name();
        if verdict != spec.verdict {
            problems.push(format!(
                "frame {i}: verdict {verdict}, expected {}",
                spec.verdict
            ));
        }
        let check = match Check::parse(&spec.check) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("frame {i}: {e}"));
                continue;
            }
        };
        let output = got.output.as_deref();
        match check {
            Check::None => {
                if let (Some(out), Some(inp)) = (output, inputs.get(i)) {
                    if out != inp.as_slice() {
                        problems.push(format!(
                            "frame {i}: not transmitted, but the frame was changed: {}",
                            describe_diff(inp, out)
                        ));
                    }
                }
            }
            Check::Exact | Check::OneOf | Check::SameChoiceAs(_) => {
                let Some(out) = output else {
                    if verdict == "tx" {
                        problems.push(format!("frame {i}: tx without an output frame"));
                    }
                    continue;
                };
                let candidates: Vec<&Vec<u8>> = check
                    .candidates(spec)
                    .iter()
                    .filter_map(|c| expected.get(*c))
                    .collect();
                match candidates.iter().position(|e| e.as_slice() == out) {
                    Some(j) => choices[i] = Some(j),
                    None => {
                        // Report against the candidate that agrees longest with the output.
                        let closest = candidates
                            .iter()
                            .max_by_key(|e| e.iter().zip(out).take_while(|(a, b)| a == b).count());
                        let diff = closest
                            .map(|e| describe_diff(e, out))
                            .unwrap_or_else(|| "no expected frame".into());
                        let of = if candidates.len() > 1 {
                            format!(" (closest of {} candidates)", candidates.len())
                        } else {
                            String::new()
                        };
                        problems.push(format!("frame {i}: output differs{of}: {diff}"));
                    }
                }
                if let Check::SameChoiceAs(k) = check {
                    if let (Some(mine), Some(theirs)) =
                        (choices[i], choices.get(k).copied().flatten())
                    {
                        if mine != theirs {
                            problems.push(format!(
                                "frame {i}: went to candidate {mine}, frame {k} to candidate {theirs}; expected the same backend"
                            ));
                        }
                    }
                }
                match (verify_checksums(out), spec.l4_checksum_bad) {
                    (Ok(()), false) => {}
                    (Err(e), true) if e.contains("/TCP:") || e.contains("/UDP:") => {}
                    (Err(e), false) => problems.push(format!("frame {i}: output checksum: {e}")),
                    (Ok(()), true) => problems.push(format!(
                        "frame {i}: a bad transport checksum was forwarded as a good one (recomputed instead of updated)"
                    )),
                    (Err(e), true) => problems.push(format!("frame {i}: output checksum: {e}")),
                }
            }
        }
    }
    if let Some(min) = case.min_distinct_choices {
        let distinct: std::collections::HashSet<usize> =
            choices.iter().flatten().copied().collect();
        if distinct.len() < min {
            problems.push(format!(
                "flows used {} different backends, expected at least {min}",
                distinct.len()
            ));
        }
    }
    problems
}

type Frames = Vec<Vec<u8>>;

fn read_case_pcaps(input: &Path, case: &Case) -> Result<(Frames, Frames), String> {
    let inputs = read_pcap_frames(input)?;
    let expected = match &case.expected {
        Some(p) => read_pcap_frames(&fixtures_dir().join(p))?,
        None => Vec::new(),
    };
    Ok((inputs, expected))
}

//! Replays every vector of ../shared/testdata/http/vectors.json through the L7 connection
//! machine with a recording backend: must-reject vectors are refused with an allowed status and
//! nothing of them reaches the backend; accepted vectors reach it exactly `expect_requests`
//! times; no `smuggle_marker` path ever reaches it; `must_close` closes the client connection.

mod l7_harness;

use base64::Engine as _;
use dataplane::l7::conn::ConnConfig;
use l7_harness::{FakeRouter, Harness, Reply};
use serde_json::Value;

fn vectors() -> Vec<Value> {
    testkit::shared::json_array("http/vectors.json")
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Runs one vector; returns what went wrong, if anything.
fn check(v: &Value) -> Result<&'static str, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["raw_b64"].as_str().unwrap())
        .unwrap();
    let expectation = v["rfc_expectation"].as_str().unwrap();
    let allowed: Vec<u16> = v["rfc_status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap() as u16)
        .collect();
    let expect_requests = v["expect_requests"].as_u64().unwrap() as usize;
    let marker = v["smuggle_marker"].as_str();
    let must_close = v["must_close"].as_bool().unwrap();
    let expect_host = v["expect_host"].as_str();

    let mut h = Harness::new(
        ConnConfig::default(),
        FakeRouter { backends: 1 },
        Reply::Fixed(OK.to_vec()),
    );
    h.client(&raw);
    let statuses = h.statuses();

    if let Some(marker) = marker {
        if h.seen.iter().any(|s| s.path.starts_with(marker)) {
            return Err(format!("smuggled {marker} reached the backend"));
        }
    }
    let rejected = statuses.first().is_some_and(|&s| s >= 400);
    if rejected {
        if !h.to_backend.is_empty() {
            return Err(format!(
                "rejected with {statuses:?} but {} bytes reached the backend",
                h.to_backend.len()
            ));
        }
        if !h.client_closed {
            return Err("rejected without closing".into());
        }
        return match expectation {
            "reject-400" | "reject-other" if allowed.contains(&statuses[0]) => Ok("rejected"),
            "reject-400" | "reject-other" => {
                Err(format!("status {} not in {allowed:?}", statuses[0]))
            }
            "either" => Ok("rejected"),
            _ => Err(format!("must accept, got {statuses:?}")),
        };
    }
    if expectation.starts_with("reject") {
        return Err(format!(
            "must reject, got {statuses:?}, backend saw {:?}",
            h.seen
        ));
    }
    if h.seen.len() != expect_requests {
        return Err(format!(
            "backend saw {} requests, want {expect_requests}: {:?}",
            h.seen.len(),
            h.seen
        ));
    }
    if statuses != vec![200; expect_requests] {
        return Err(format!("client got {statuses:?}"));
    }
    if must_close && !h.client_closed {
        return Err("must close the client connection".into());
    }
    if let Some(host) = expect_host {
        if h.seen[0].host.as_deref() != Some(host) {
            return Err(format!(
                "backend saw host {:?}, want {host}",
                h.seen[0].host
            ));
        }
    }
    Ok("accepted")
}

#[test]
fn every_vector() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 149);
    let mut failures = Vec::new();
    let mut must_reject = 0;
    let mut rejected_must = 0;
    for v in &vectors {
        let id = v["id"].as_str().unwrap();
        let must = v["rfc_expectation"].as_str().unwrap().starts_with("reject");
        must_reject += usize::from(must);
        match check(v) {
            Ok(outcome) => {
                rejected_must += usize::from(must && outcome == "rejected");
                println!("{id}: {outcome}");
            }
            Err(e) => failures.push(format!("{id}: {}", e.chars().take(400).collect::<String>())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!((must_reject, rejected_must), (82, 82));
}

/// The same vectors fed one byte at a time give the same answers as fed whole.
#[test]
fn every_vector_byte_by_byte() {
    for v in &vectors() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v["raw_b64"].as_str().unwrap())
            .unwrap();
        let whole = {
            let mut h = Harness::new(
                ConnConfig::default(),
                FakeRouter { backends: 1 },
                Reply::Fixed(OK.to_vec()),
            );
            h.client(&raw);
            (h.statuses(), h.seen.len(), h.client_closed)
        };
        let mut h = Harness::new(
            ConnConfig::default(),
            FakeRouter { backends: 1 },
            Reply::Fixed(OK.to_vec()),
        );
        for b in &raw {
            h.client(std::slice::from_ref(b));
        }
        let marker = v["smuggle_marker"].as_str();
        assert!(
            marker.is_none_or(|m| !h.seen.iter().any(|s| s.path.starts_with(m))),
            "{}: smuggled byte by byte",
            v["id"]
        );
        assert_eq!(
            (h.statuses(), h.seen.len(), h.client_closed),
            whole,
            "{}",
            v["id"]
        );
    }
}

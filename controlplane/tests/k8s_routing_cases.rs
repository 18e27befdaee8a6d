//! Every routing case of ../shared/testdata/routing/cases.json expressed as cluster objects
//! (Ingress or Gateway + HTTPRoute, with Services and EndpointSlices whose endpoints are
//! distinct addresses per case backend), translated, merged into a minimal lb.toml, validated,
//! compiled into the L7 route table, and every request routed: the backend is identified by
//! the address it picks.

#[path = "common/k8s_objects.rs"]
mod k8s_objects;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use controlplane::config::Config;
use controlplane::sources::kubernetes::translate::{translate, Translated};
use dataplane::l7::conn::Router;
use dataplane::l7::route::{RequestView, RouteTable, TableSpec};
use dataplane::l7::select::{Routing, SelectState};
use serde_json::Value;

const BASE: &str = r#"[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
"#;

/// The translated config merged into a minimal file config (its PEM files written where it says),
/// validated (every problem is a failure) and compiled.
fn compile(t: &Translated) -> controlplane::Compiled {
    for f in &t.pem_files {
        std::fs::write(&f.path, &f.content).unwrap();
    }
    let mut cfg = Config::from_toml_str(BASE, Path::new("lb.toml")).unwrap();
    cfg.services.extend(t.services.iter().cloned());
    cfg.http.extend(t.http.iter().cloned());
    let problems = cfg.validate();
    assert!(problems.is_empty(), "{problems:#?}");
    controlplane::compile(&cfg, 1).unwrap()
}

/// One request through `routing`: the status and the address picked.
fn route(routing: &mut Routing<'_>, request: &Value) -> (u16, Option<IpAddr>) {
    let headers = testkit::shared::headers_of(&request["headers"]);
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let view = RequestView::from_parts(
        request["host"].as_str().unwrap_or(""),
        request["path"].as_str().unwrap(),
        request["method"].as_str().unwrap_or("GET"),
        &pairs,
    );
    match routing.route(&view) {
        Ok(pick) => {
            routing.finished(&pick);
            let addr = routing.table.backends[pick.backend.0 as usize].addr.ip();
            (200, Some(addr))
        }
        Err(status) => (status.code(), None),
    }
}

/// Checks one request: status and backend (by address), distinct endpoints over `repeat`, or
/// the weighted distribution over `samples`.
fn check(
    routing: &mut Routing<'_>,
    request: &Value,
    backend_of: &BTreeMap<IpAddr, String>,
) -> Result<(), String> {
    let want_status = request["expect_status"].as_u64().unwrap() as u16;
    let name = |a: Option<IpAddr>| a.map(|a| backend_of.get(&a).cloned().unwrap_or(a.to_string()));
    if let Some(distribution) = request["expect_distribution"].as_object() {
        let samples = request["samples"].as_u64().unwrap();
        let tolerance = request["tolerance"].as_f64().unwrap();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for _ in 0..samples {
            let (status, pick) = route(routing, request);
            if status != want_status {
                return Err(format!("status {status}"));
            }
            *counts.entry(name(pick).unwrap()).or_default() += 1;
        }
        for (n, share) in distribution {
            let got = *counts.get(n).unwrap_or(&0) as f64 / samples as f64;
            if (got - share.as_f64().unwrap()).abs() > tolerance {
                return Err(format!("{n}: share {got}, want {share}"));
            }
        }
        return Ok(());
    }
    let mut endpoints = BTreeSet::new();
    for _ in 0..request["repeat"].as_u64().unwrap_or(1) {
        let (status, pick) = route(routing, request);
        let got = name(pick);
        let want = request["expect_backend"].as_str();
        if status != want_status || got.as_deref() != want {
            return Err(format!("got {status} {got:?}, want {want_status} {want:?}"));
        }
        endpoints.extend(pick);
    }
    match request["expect_distinct_endpoints"].as_u64() {
        Some(n) if endpoints.len() as u64 != n => {
            Err(format!("{} distinct endpoints, want {n}", endpoints.len()))
        }
        _ => Ok(()),
    }
}

/// The routing cases: `shared/testdata` beside the checkout (where CI and testkit put it), or
/// beside a parent directory of it (a git worktree inside another directory).
fn cases() -> Vec<Value> {
    let rel = "shared/testdata/routing/cases.json";
    let found = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join(rel))
        .find(|p| p.is_file());
    match found {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap(),
        None => testkit::shared::json_array("routing/cases.json"),
    }
}

#[test]
fn every_routing_case_through_cluster_objects_routes_as_expected() {
    let dir = std::env::temp_dir().join(format!("k8s-routing-cases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let settings = k8s_objects::settings(&dir);
    let mut failures = Vec::new();
    let mut passed = 0;
    for group in cases() {
        let case = k8s_objects::case_objects(&group);
        let t = translate(&case.snapshot, &settings);
        let compiled = compile(&t);
        let gateway = group["kind"] == "gateway";
        for request in group["requests"].as_array().unwrap() {
            let name = if gateway {
                format!(
                    "gw:{}:{}:80",
                    k8s_objects::CASE_NS,
                    k8s_objects::CASE_GATEWAY
                )
            } else if request["scheme"] == "https" {
                "k8s-ingress-tls".to_string()
            } else {
                "k8s-ingress".to_string()
            };
            // No [[http]] at all (no Ingress of ours): nothing is served, as an empty table.
            let spec = compiled
                .http
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.routes.clone())
                .unwrap_or(TableSpec {
                    services: vec![],
                    routes: vec![],
                    default_backend: None,
                });
            if request["scheme"] == "https" {
                let h = compiled.http.iter().find(|h| h.name == name);
                let sni = request["sni"].as_str().unwrap_or_default();
                if !h.is_some_and(|h| h.tls.iter().any(|c| c.names.iter().any(|n| n == sni))) {
                    failures.push(format!("{}: no certificate for {sni:?}", group["id"]));
                }
            }
            let table = RouteTable::compile(&spec);
            let mut state = SelectState::new(&table);
            let mut routing = Routing {
                table: &table,
                state: &mut state,
            };
            match check(&mut routing, request, &case.backend_of) {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!(
                    "{} {} {}: {e}",
                    group["id"], request["host"], request["path"]
                )),
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        failures.is_empty(),
        "{} failures ({passed} passed):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed, 160);
}

//! Every routing case of ../shared/testdata/routing/cases.json expressed as cluster objects
//! (Ingress or Gateway + HTTPRoute, with Services and EndpointSlices whose endpoints are
//! distinct addresses per case backend), translated, merged into a minimal lb.toml, validated,
//! compiled into the L7 route table, and every request routed: the backend is identified by
//! the address it picks.

#[path = "common/k8s_objects.rs"]
mod k8s_objects;

use std::path::Path;

use controlplane::config::Config;
use controlplane::sources::kubernetes::translate::{translate, Translated};
use dataplane::l7::route::{RouteTable, TableSpec};
use dataplane::l7::select::{Routing, SelectState};
use testkit::shared::check_routing_request_named;

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

#[test]
fn every_routing_case_through_cluster_objects_routes_as_expected() {
    let dir = std::env::temp_dir().join(format!("k8s-routing-cases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let settings = k8s_objects::settings(&dir);
    let mut failures = Vec::new();
    let mut passed = 0;
    for group in testkit::shared::json_array("routing/cases.json") {
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
            match check_routing_request_named(
                &mut routing,
                request,
                &k8s_objects::by_address(&case.backend_of),
            ) {
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

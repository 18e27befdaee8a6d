//! Replays every group of ../shared/testdata/routing/cases.json through the route table and
//! backend choice: each request gets the expected status and backend (and, where the case says
//! so, the expected spread over endpoints or weights).
//!
//! What a controller decides before the table (which Ingress class is served, which Gateway
//! routes are attached, which backendRefs resolve) is applied here the way the controller will:
//! routes of a class that does not exist are left out, and a backendRef of an unknown kind or to
//! a missing Service becomes a reference to no service.

use dataplane::l7::route::{
    BackendRef, EndpointSpec, Origin, PathMatch, Policy, RouteSpec, RouteTable, ServiceSpec,
    TableSpec,
};
use dataplane::l7::select::{Routing, SelectState};
use serde_json::Value;
use std::collections::BTreeSet;

fn cases() -> Vec<Value> {
    testkit::shared::json_array("routing/cases.json")
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// The table a controller would build for one case group.
fn table_of(group: &Value) -> TableSpec {
    let origin = match group["kind"].as_str().unwrap() {
        "ingress" => Origin::Ingress,
        _ => Origin::Gateway,
    };
    let missing: BTreeSet<String> = group["missing_backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(str_of)
        .collect();
    let replicas = |name: &str| group["backend_replicas"][name].as_u64().unwrap_or(1);
    let served = group["ingress_class_exists"].as_bool().unwrap_or(true);

    // Gateway rows of one (route, rule, match) share a match and split over their backends.
    let mut routes: Vec<(String, RouteSpec)> = Vec::new();
    let mut names = BTreeSet::new();
    for row in group["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|_| served)
    {
        let path = row["path"].as_str().unwrap().to_string();
        let path = match row["path_type"].as_str().unwrap() {
            "Exact" => PathMatch::Exact(path),
            "Prefix" => PathMatch::Prefix(path),
            _ => PathMatch::ImplementationSpecific(path),
        };
        let backend = str_of(&row["backend"]).map(|name| {
            let service = match row["backend_kind"].as_str() {
                // A kind the controller cannot resolve names no service.
                Some(kind) => format!("{kind}/{name}"),
                None => name,
            };
            BackendRef {
                service,
                weight: row["weight"].as_u64().unwrap_or(1) as u32,
            }
        });
        if let Some(b) = &backend {
            if !missing.contains(&b.service) && row["backend_kind"].is_null() {
                names.insert(b.service.clone());
            }
        }
        let key = format!(
            "{}|{}|{}|{}|{:?}",
            row["route"], row["rule"], row["match"], row["host"], path
        );
        let spec = RouteSpec {
            cookies: Vec::new(),
            origin,
            hosts: str_of(&row["host"]).into_iter().collect(),
            path,
            method: str_of(&row["method"]),
            headers: testkit::shared::headers_of(&row["headers"]),
            backends: backend.into_iter().collect(),
            redirect: None,
            request_headers: None,
        };
        match routes
            .iter_mut()
            .find(|(k, _)| origin == Origin::Gateway && *k == key)
        {
            Some((_, existing)) => existing.backends.extend(spec.backends),
            None => routes.push((key, spec)),
        }
    }
    let default_backend = str_of(&group["default_backend"]).map(|service| {
        names.insert(service.clone());
        BackendRef { service, weight: 1 }
    });
    let services = names
        .iter()
        .enumerate()
        .map(|(s, name)| ServiceSpec {
            name: name.clone(),
            endpoints: (0..replicas(name))
                .map(|i| EndpointSpec {
                    addr: format!("10.{s}.0.{i}:8080").parse().unwrap(),
                    weight: 1,
                })
                .collect(),
            policy: Policy::RoundRobin,
            upstream: Default::default(),
        })
        .collect();
    TableSpec {
        services,
        routes: routes.into_iter().map(|(_, r)| r).collect(),
        default_backend,
    }
}

#[test]
fn every_group() {
    let mut failures = Vec::new();
    let mut passed = 0;
    for group in cases() {
        let table = RouteTable::compile(&table_of(&group));
        let mut state = SelectState::new(&table);
        let mut routing = Routing {
            table: &table,
            state: &mut state,
        };
        for request in group["requests"].as_array().unwrap() {
            match testkit::shared::check_routing_request(&mut routing, request) {
                Ok(()) => passed += 1,
                Err(e) => failures.push(format!(
                    "{} {} {}: {e}",
                    group["id"].as_str().unwrap(),
                    request["host"],
                    request["path"]
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed, 160);
}

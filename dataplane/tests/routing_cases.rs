//! Replays every group of ../shared/testdata/routing/cases.json through the route table and
//! backend choice: each request gets the expected status and backend (and, where the case says
//! so, the expected spread over endpoints or weights).
//!
//! What a controller decides before the table (which Ingress class is served, which Gateway
//! routes are attached, which backendRefs resolve) is applied here the way the controller will:
//! routes of a class that does not exist are left out, and a backendRef of an unknown kind or to
//! a missing Service becomes a reference to no service.

use dataplane::l7::conn::Router;
use dataplane::l7::route::{
    BackendRef, EndpointSpec, Origin, PathMatch, Policy, RequestView, RouteSpec, RouteTable,
    ServiceSpec, TableSpec,
};
use dataplane::l7::select::{Routing, SelectState};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn cases() -> Vec<Value> {
    testkit::shared::json_array("routing/cases.json")
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn headers_of(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
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
            origin,
            hosts: str_of(&row["host"]).into_iter().collect(),
            path,
            method: str_of(&row["method"]),
            headers: headers_of(&row["headers"]),
            backends: backend.into_iter().collect(),
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
        })
        .collect();
    TableSpec {
        services,
        routes: routes.into_iter().map(|(_, r)| r).collect(),
        default_backend,
    }
}

/// One request: the status and, for 200, the service and endpoint chosen.
fn send(routing: &mut Routing<'_>, request: &Value) -> (u16, Option<(String, u32)>) {
    let host = request["host"].as_str().unwrap_or("");
    let path = request["path"].as_str().unwrap();
    let method = request["method"].as_str().unwrap_or("GET");
    let headers = headers_of(&request["headers"]);
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    match routing.route(&RequestView::from_parts(host, path, method, &pairs)) {
        Ok(pick) => {
            routing.finished(&pick);
            let service = routing.table.services[pick.service as usize]
                .name
                .to_string();
            (200, Some((service, pick.backend.0)))
        }
        Err(status) => (status.code(), None),
    }
}

fn check(routing: &mut Routing<'_>, request: &Value) -> Result<(), String> {
    let want_status = request["expect_status"].as_u64().unwrap() as u16;
    if let Some(distribution) = request["expect_distribution"].as_object() {
        let samples = request["samples"].as_u64().unwrap();
        let tolerance = request["tolerance"].as_f64().unwrap();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for _ in 0..samples {
            let (status, pick) = send(routing, request);
            if status != want_status {
                return Err(format!("status {status}"));
            }
            *counts.entry(pick.unwrap().0).or_default() += 1;
        }
        for (name, share) in distribution {
            let got = *counts.get(name).unwrap_or(&0) as f64 / samples as f64;
            if (got - share.as_f64().unwrap()).abs() > tolerance {
                return Err(format!("{name}: share {got}, want {share}"));
            }
        }
        return Ok(());
    }
    let repeat = request["repeat"].as_u64().unwrap_or(1);
    let mut endpoints = BTreeSet::new();
    for _ in 0..repeat {
        let (status, pick) = send(routing, request);
        let service = pick.as_ref().map(|p| p.0.as_str());
        let want = request["expect_backend"].as_str();
        if status != want_status || service != want {
            return Err(format!(
                "got {status} {service:?}, want {want_status} {want:?}"
            ));
        }
        if let Some((_, endpoint)) = pick {
            endpoints.insert(endpoint);
        }
    }
    if let Some(distinct) = request["expect_distinct_endpoints"].as_u64() {
        if endpoints.len() as u64 != distinct {
            return Err(format!(
                "{} distinct endpoints, want {distinct}",
                endpoints.len()
            ));
        }
    }
    Ok(())
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
            match check(&mut routing, request) {
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

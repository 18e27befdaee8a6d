//! The peers' test corpora in `shared/testdata`, beside the checkout (never copied into the
//! project; `shared/testdata/README.md` describes them).

use std::path::PathBuf;

/// The path of `rel` under `shared/testdata`.
pub fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(rel)
}

/// The JSON array in `shared/testdata/<rel>` (the HTTP vectors, the routing cases). Panics with
/// the path when the file is missing or not an array: a test cannot run without its data.
pub fn json_array(rel: &str) -> Vec<serde_json::Value> {
    let path = path(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Array(items)) => items,
        Ok(_) => panic!("{}: not a JSON array", path.display()),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// The `headers` object of a routing case's route or request, as (name, value) pairs.
pub fn headers_of(v: &serde_json::Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The name a pick is known by in `routing/cases.json`: here, the service (upstream) chosen.
pub type NameOf<'a> =
    &'a dyn Fn(&dataplane::l7::select::Routing<'_>, &dataplane::l7::route::Pick) -> String;

/// One request of `routing/cases.json` through `routing`: the status and, for 200, the name of
/// the pick (`name`) and the endpoint chosen.
fn route_request(
    routing: &mut dataplane::l7::select::Routing<'_>,
    request: &serde_json::Value,
    name: NameOf<'_>,
) -> (u16, Option<(String, u32)>) {
    use dataplane::l7::conn::Router;
    use dataplane::l7::route::RequestView;
    let headers = headers_of(&request["headers"]);
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
            let named = name(routing, &pick);
            routing.finished(&pick);
            (200, Some((named, pick.backend.0)))
        }
        Err(status) => (status.code(), None),
    }
}

/// Checks one request of `routing/cases.json` against `routing`, a case's backend being the
/// upstream of that name: see [`check_routing_request_named`].
pub fn check_routing_request(
    routing: &mut dataplane::l7::select::Routing<'_>,
    request: &serde_json::Value,
) -> Result<(), String> {
    check_routing_request_named(routing, request, &|r, pick| {
        r.table.services[pick.service as usize].name.to_string()
    })
}

/// Checks one request of `routing/cases.json` against `routing`: its status and backend (the
/// case's backend name is what `name` calls the pick), over `repeat` sends its distinct
/// endpoints, or over `samples` sends its weighted distribution.
pub fn check_routing_request_named(
    routing: &mut dataplane::l7::select::Routing<'_>,
    request: &serde_json::Value,
    name: NameOf<'_>,
) -> Result<(), String> {
    use std::collections::{BTreeMap, BTreeSet};
    let want_status = request["expect_status"].as_u64().unwrap() as u16;
    if let Some(distribution) = request["expect_distribution"].as_object() {
        let samples = request["samples"].as_u64().unwrap();
        let tolerance = request["tolerance"].as_f64().unwrap();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for _ in 0..samples {
            let (status, pick) = route_request(routing, request, name);
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
    let mut endpoints = BTreeSet::new();
    for _ in 0..request["repeat"].as_u64().unwrap_or(1) {
        let (status, pick) = route_request(routing, request, name);
        let got = pick.as_ref().map(|p| p.0.as_str());
        let want = request["expect_backend"].as_str();
        if status != want_status || got != want {
            return Err(format!("got {status} {got:?}, want {want_status} {want:?}"));
        }
        endpoints.extend(pick.map(|p| p.1));
    }
    match request["expect_distinct_endpoints"].as_u64() {
        Some(n) if endpoints.len() as u64 != n => {
            Err(format!("{} distinct endpoints, want {n}", endpoints.len()))
        }
        _ => Ok(()),
    }
}

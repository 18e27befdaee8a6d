//! Endpoint moves patched in place give what a whole change gives: `translate::patch` the same
//! entries as a whole translation, and `ControlPlane::patch_backends` the same serving config,
//! routing table, drain and route-table spec as `set_cluster`.

#[path = "common/k8s_objects.rs"]
mod k8s_objects;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use controlplane::config;
use controlplane::control::{self, ClusterPart, ControlPlane};
use controlplane::sources::kubernetes::model::{
    HTTPPathMatch, HTTPRouteMatch, HTTPRouteRule, HTTPRouteSpec, ObjectKey, Snapshot,
};
use controlplane::sources::kubernetes::translate::patch::{self, Index};
use controlplane::sources::kubernetes::translate::{translate, Settings};
use k8s_objects::*;
use proptest::prelude::*;

const FILE: &str = r#"[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
snat = ["198.18.0.2"]
on_link = ["198.18.0.0/15"]
workers = 1
drain_timeout = "30s"
"#;

/// A directory (certificates, the config file), removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("k8s-patch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The Services whose endpoints the tests move: `(namespace, name, slice ports)`.
/// A Service: namespace, name, its slices' ports.
type Svc = (&'static str, &'static str, &'static [(&'static str, i32)]);

const SERVICES: [Svc; 5] = [
    // Behind an Ingress.
    ("shop", "web", &[("http", 8080)]),
    // Behind an HTTPRoute.
    ("shop", "api", &[("http", 9090)]),
    // LoadBalancer, TCP and UDP (two L4 services).
    ("db", "pg", &[("pg", 5432), ("dns", 5353)]),
    // LoadBalancer, two TCP ports with other target ports (one L4 service per port).
    ("db", "multi", &[("a", 7001), ("b", 7002)]),
    // Named by nothing.
    ("shop", "idle", &[("http", 8080)]),
];

/// The objects besides the EndpointSlices: classes, Services, an Ingress, a Gateway and its
/// HTTPRoute.
fn cluster() -> Snapshot {
    let (cert, key) = self_signed("shop.example.com");
    let mut s = Snapshot::default();
    s.add(ingress_class("lb", INGRESS_CONTROLLER, false))
        .add(gateway_class("lb", GATEWAY_CONTROLLER))
        .add(service("shop", "web", &[("http", 80, 8080)]))
        .add(service("shop", "api", &[("http", 80, 9090)]))
        .add(service("shop", "idle", &[("http", 80, 8080)]))
        .add(lb_service(
            "db",
            "pg",
            Some(LB_CLASS),
            &[("pg", "TCP", 5432, 5432), ("dns", "UDP", 53, 5353)],
            0,
            None,
        ))
        .add(lb_service(
            "db",
            "multi",
            Some(LB_CLASS),
            &[("a", "TCP", 7000, 7001), ("b", "TCP", 7100, 7002)],
            1,
            None,
        ))
        .add(tls_secret("shop", "shop-tls", &cert, &key))
        .add(
            ingress("shop", "web", Some("lb"), 0)
                .rule(Some("shop.example.com"), "/", "Prefix", backend("web", 80))
                .tls(&["shop.example.com"], "shop-tls"),
        )
        .add(gateway(
            "shop",
            "gw",
            "lb",
            vec![listener("http", Some("*.example.com"), 80)],
            &["198.18.0.21"],
        ))
        .add(http_route(
            "shop",
            "api",
            0,
            HTTPRouteSpec {
                parent_refs: vec![parent("gw", None)],
                hostnames: vec!["api.example.com".into()],
                rules: vec![HTTPRouteRule {
                    matches: vec![HTTPRouteMatch {
                        path: Some(HTTPPathMatch {
                            type_: Some("PathPrefix".into()),
                            value: Some("/".into()),
                        }),
                        headers: vec![],
                        method: None,
                    }],
                    filters: vec![],
                    backend_refs: vec![backend_ref("api", 80, None)],
                }],
            },
        ));
    s
}

/// One endpoint: last octet of `198.18.3.<host>` (pods) or `198.18.4.<host>` (VMs), and state.
type Ep = (u8, State);

/// Sets Service `svc`'s slices: its pods and its VMs (a slice not managed by Kubernetes).
fn set_endpoints(snap: &mut Snapshot, svc: usize, pods: &[Ep], vms: &[Ep]) -> ObjectKey {
    let (ns, name, ports) = SERVICES[svc];
    for (suffix, list, vm, net) in [("pods", pods, false, 3), ("vms", vms, true, 4)] {
        let key = ObjectKey::new(ns, format!("{name}-{suffix}"));
        if list.is_empty() {
            snap.endpoint_slices.remove(&key);
            continue;
        }
        let addrs: Vec<(String, State)> = list
            .iter()
            .map(|(h, st)| (format!("198.18.{net}.{h}"), *st))
            .collect();
        let eps: Vec<(&str, State)> = addrs.iter().map(|(a, s)| (a.as_str(), *s)).collect();
        snap.add(slice(ns, name, &key.name, ports, &eps, vm));
    }
    ObjectKey::new(ns, name)
}

/// The whole translation of `snap` (its certificates written) and its index.
fn part_of(snap: &Snapshot, settings: &Settings) -> (ClusterPart, Index) {
    let t = translate(snap, settings);
    std::fs::create_dir_all(&settings.secrets_dir).unwrap();
    for f in &t.pem_files {
        std::fs::write(&f.path, &f.content).unwrap();
    }
    let index = Index::new(snap, &t);
    (
        ClusterPart {
            services: t.services,
            http: t.http,
        },
        index,
    )
}

/// Every Service with two ready pods.
fn seeded() -> Snapshot {
    let mut snap = cluster();
    for svc in 0..SERVICES.len() {
        set_endpoints(&mut snap, svc, &[(1, State::Ready), (2, State::Ready)], &[]);
    }
    snap
}

#[test]
fn an_endpoint_move_is_patched_and_equals_a_whole_translation() {
    let dir = TempDir::new("pure");
    let settings = settings(&dir.0);
    let base = seeded();
    let mut snap = base.clone();
    let (mut part, index) = part_of(&snap, &settings);
    assert_eq!(part.services.len(), 4, "{:#?}", part.services);
    assert_eq!(
        part.http.len(),
        3,
        "ingress http and https (one upstream in both), gateway port 80"
    );
    for svc in 0..4 {
        let mut snap2 = snap.clone();
        let key = set_endpoints(
            &mut snap2,
            svc,
            &[(1, State::Ready), (2, State::Draining), (3, State::Ready)],
            &[],
        );
        let p = patch::patch(&snap2, &settings, &index, &part, &BTreeSet::from([key]))
            .unwrap_or_else(|| panic!("service {svc}: a move of endpoints is a patch"));
        assert!(!p.is_empty(), "service {svc}: the patch changes something");
        let mut patched = part.clone();
        assert!(p.apply_to(&mut patched));
        assert_eq!(patched, part_of(&snap2, &settings).0, "service {svc}");
    }
    // A Service nobody names changes nothing.
    let key = set_endpoints(&mut snap, 4, &[(9, State::Ready)], &[]);
    let p = patch::patch(&snap, &settings, &index, &part, &BTreeSet::from([key])).unwrap();
    assert!(p.is_empty());
    // The last endpoint of an upstream gone: its routes change, a whole translation says how.
    let key = set_endpoints(&mut snap, 0, &[(1, State::NotReady)], &[]);
    assert!(patch::patch(&snap, &settings, &index, &part, &BTreeSet::from([key])).is_none());
    // VMs beside pods add a pool to an L4 service: still a patch.
    let mut snap = base;
    let key = set_endpoints(&mut snap, 2, &[(1, State::Ready)], &[(7, State::Ready)]);
    let p = patch::patch(&snap, &settings, &index, &part, &BTreeSet::from([key])).unwrap();
    assert!(p.apply_to(&mut part));
    assert_eq!(part, part_of(&snap, &settings).0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the endpoints do, a patch (when there is one) gives the whole translation's
    /// entries; when there is none, the whole translation is taken and patching goes on from
    /// there.
    #[test]
    fn patches_always_equal_whole_translations(
        steps in prop::collection::vec(
            (
                0..SERVICES.len(),
                prop::collection::vec((1u8..6, 0u8..4), 0..5),
                prop::collection::vec((1u8..4, 0u8..4), 0..3),
            ),
            1..12,
        )
    ) {
        let dir = TempDir::new("prop");
        let settings = settings(&dir.0);
        let mut snap = seeded();
        let (mut part, mut index) = part_of(&snap, &settings);
        let state = |s: u8| [State::Ready, State::NotReady, State::Draining, State::Gone][s as usize];
        for (svc, pods, vms) in steps {
            let pods: Vec<Ep> = pods.into_iter().map(|(h, s)| (h, state(s))).collect();
            let vms: Vec<Ep> = vms.into_iter().map(|(h, s)| (h, state(s))).collect();
            let key = set_endpoints(&mut snap, svc, &pods, &vms);
            let (whole, whole_index) = part_of(&snap, &settings);
            match patch::patch(&snap, &settings, &index, &part, &BTreeSet::from([key])) {
                Some(p) => {
                    prop_assert!(p.apply_to(&mut part));
                    prop_assert_eq!(&part, &whole);
                }
                None => {
                    part = whole;
                    index = whole_index;
                }
            }
        }
    }
}

/// A control plane serving `file` plus `part`.
fn plane(dir: &Path, tag: &str, file: &str, part: &ClusterPart) -> ControlPlane {
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, file).unwrap();
    let (cfg, text) = config::load_with_text(&path).unwrap();
    let (cp, _) = ControlPlane::new(&path, cfg, text, Box::new(control::load_file)).unwrap();
    cp.set_cluster(part.clone()).unwrap();
    cp
}

/// What the workers see of a table: each service's name, draining flag, backends (address,
/// port, weight, pool) and Maglev slots.
fn table_view(cp: &ControlPlane) -> Vec<String> {
    let t = cp.table().load_full();
    let mut out: Vec<String> = t
        .services
        .iter()
        .map(|s| {
            let backends: Vec<String> = s
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let hop = s.next_hop(i).map(|h| t.next_hops()[h as usize].addr);
                    format!(
                        "{:?}:{} w{} p{} hop {hop:?} mac {:?}",
                        b.addr, b.port, b.weight, b.pool, b.mac
                    )
                })
                .collect();
            format!(
                "{} draining={} affinity={:?} pools={:?} backends={backends:?} maglev={:?}",
                s.name, s.draining, s.affinity, s.pools, s.maglev
            )
        })
        .collect();
    out.sort();
    out
}

/// The draining services and backends, sorted.
fn draining(cp: &ControlPlane) -> (Vec<String>, Vec<String>) {
    let d = control::Control::observe(cp).draining;
    let mut backends: Vec<String> = d.backends.iter().map(|b| b.to_string()).collect();
    backends.sort();
    (d.services, backends)
}

#[test]
fn patched_backends_serve_what_a_whole_change_serves() {
    let dir = TempDir::new("plane");
    let settings = settings(&dir.0);
    let snap = seeded();
    let (part, index) = part_of(&snap, &settings);
    let patched = plane(&dir.0, "patched", FILE, &part);
    let whole = plane(&dir.0, "whole", FILE, &part);
    let mut now = part.clone();
    let moves: [(usize, &[Ep], &[Ep]); 5] = [
        // Ingress: one pod out (drains in L4 terms: L7 has no drain), one new.
        (0, &[(2, State::Ready), (3, State::Ready)], &[]),
        // HTTPRoute: one pod terminating.
        (1, &[(1, State::Ready), (2, State::Draining)], &[]),
        // L4 TCP+UDP: a pod out (drains), a VM joins in its own pool.
        (2, &[(1, State::Ready)], &[(5, State::Ready)]),
        // L4 per port: a pod not ready.
        (3, &[(1, State::Ready), (2, State::NotReady)], &[]),
        // The pod that left comes back: it stops draining.
        (
            2,
            &[(1, State::Ready), (2, State::Ready)],
            &[(5, State::Ready)],
        ),
    ];
    let mut snap = snap;
    for (svc, pods, vms) in moves {
        let key = set_endpoints(&mut snap, svc, pods, vms);
        let p = patch::patch(&snap, &settings, &index, &now, &BTreeSet::from([key]))
            .unwrap_or_else(|| panic!("service {svc}: a patch"));
        let g = patched.patch_backends(&p).unwrap();
        assert!(g.is_some(), "service {svc}: patched in place");
        assert!(p.apply_to(&mut now));
        whole.set_cluster(part_of(&snap, &settings).0).unwrap();
        assert_eq!(patched.config(), whole.config(), "service {svc}");
        assert_eq!(patched.cluster(), whole.cluster(), "service {svc}");
        assert_eq!(table_view(&patched), table_view(&whole), "service {svc}");
        for http in &now.http {
            assert_eq!(
                patched.http_routes(&http.name),
                whole.http_routes(&http.name),
                "service {svc}, http {}",
                http.name
            );
        }
        assert_eq!(
            draining(&patched),
            draining(&whole),
            "service {svc}: the same backends drain"
        );
    }
    // The pg pod that left drained (weight 0, still in the table) until it came back.
    let st = patched.cluster_status();
    assert_eq!(st.patched, 5, "{st:?}");
    assert!(st.last_error.is_none());
}

#[test]
fn a_patch_that_breaks_a_rule_changes_nothing_and_is_reported() {
    let dir = TempDir::new("refused");
    let settings = settings(&dir.0);
    let mut snap = seeded();
    let (part, index) = part_of(&snap, &settings);
    // Backends are reached on 198.18.0.0/16 only: no gateway, no gateway MAC. The translation
    // cannot know that; the file's rules do.
    let narrow = FILE
        .replace("gateway_mac = \"02:00:00:00:00:fe\"\n", "")
        .replace("198.18.0.0/15", "198.18.0.0/16");
    let cp = plane(&dir.0, "refused", &narrow, &part);
    let before = table_view(&cp);
    let config_before = cp.config();
    let (ns, name, ports) = SERVICES[2];
    snap.add(slice(
        ns,
        name,
        "pg-pods",
        ports,
        &[("198.18.3.1", State::Ready), ("198.19.3.7", State::Ready)],
        false,
    ));
    let key = ObjectKey::new(ns, name);
    let p = patch::patch(&snap, &settings, &index, &part, &BTreeSet::from([key]))
        .expect("new backends of an L4 service are a patch");
    let e = cp
        .patch_backends(&p)
        .expect_err("a backend off the link without a gateway");
    let msg = e.to_string();
    assert!(msg.contains("cluster service k8s/db/pg"), "{msg}");
    assert!(msg.contains("198.19.3.7"), "{msg}");
    assert_eq!(table_view(&cp), before, "the previous table serves");
    assert_eq!(
        cp.config(),
        config_before,
        "the serving config is unchanged"
    );
    assert_eq!(cp.cluster(), part);
    let st = cp.cluster_status();
    assert_eq!(st.rejected, 1);
    assert!(st.last_error.is_some());
    // While the last change is refused, patches wait for a whole change.
    assert_eq!(cp.patch_backends(&p).unwrap(), None);
}

#[test]
fn a_patch_naming_an_entry_that_is_not_served_is_left_to_a_whole_change() {
    let dir = TempDir::new("unknown");
    let settings = settings(&dir.0);
    let snap = seeded();
    let (part, _) = part_of(&snap, &settings);
    let cp = plane(&dir.0, "unknown", FILE, &part);
    let mut svc = part.services[0].clone();
    svc.name = "k8s/db/nothing".into();
    let p = control::BackendPatch {
        services: vec![svc],
        upstreams: vec![],
    };
    assert_eq!(cp.patch_backends(&p).unwrap(), None);
    // Another VIP is more than new backends.
    let mut svc = part.services[0].clone();
    svc.vip = "198.18.5.3".parse().unwrap();
    let p = control::BackendPatch {
        services: vec![svc],
        upstreams: vec![],
    };
    assert_eq!(cp.patch_backends(&p).unwrap(), None);
    assert_eq!(cp.cluster(), part);
}

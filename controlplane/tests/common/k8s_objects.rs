//! Builders of Kubernetes objects (real k8s-openapi types and our Gateway API types) for the
//! kubernetes source's tests, and the routing cases of `../shared/testdata/routing/cases.json`
//! expressed as objects ([`case_objects`]), so the translate test and the fake API server's
//! tests replay the same objects.
//!
//! Include with `#[path = "common/k8s_objects.rs"] mod k8s_objects;`.
#![allow(dead_code)] // each test file uses a different part of this module

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use controlplane::sources::kubernetes::model::{
    Gateway, GatewayAddress, GatewayClass, GatewayClassSpec, GatewaySpec, HTTPBackendRef,
    HTTPHeaderMatch, HTTPPathMatch, HTTPRoute, HTTPRouteMatch, HTTPRouteRule, HTTPRouteSpec,
    Listener, ObjectKey, ParentReference, Snapshot,
};
use controlplane::sources::kubernetes::translate::Settings;
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Secret, Service, ServicePort, ServiceSpec,
    ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec,
    IngressRule, IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use serde_json::Value;

/// Our IngressClass controller in these tests.
pub const INGRESS_CONTROLLER: &str = "lb.example.com/ingress";
/// Our GatewayClass controller in these tests.
pub const GATEWAY_CONTROLLER: &str = "lb.example.com/gateway";
/// Our loadBalancerClass in these tests.
pub const LB_CLASS: &str = "lb.example.com/vip";
/// Where Ingress HTTP is served in these tests.
pub const INGRESS_HTTP: &str = "198.18.0.10:80";
/// Where Ingress HTTPS is served in these tests.
pub const INGRESS_HTTPS: &str = "198.18.0.10:443";

/// Settings for the tests: Ingress on 198.18.0.10, Gateways on 198.18.0.20-21, VIPs in
/// 198.18.5.0/30, certificates under `secrets_dir`.
pub fn settings(secrets_dir: &Path) -> Settings {
    Settings {
        ingress_controller: INGRESS_CONTROLLER.into(),
        gateway_controller: GATEWAY_CONTROLLER.into(),
        ingress_http: vec![INGRESS_HTTP.parse().unwrap()],
        ingress_https: vec![INGRESS_HTTPS.parse().unwrap()],
        gateway_addresses: vec![
            "198.18.0.20".parse().unwrap(),
            "198.18.0.21".parse().unwrap(),
        ],
        vip_pool: vec!["198.18.5.0/30".parse().unwrap()],
        load_balancer_class: LB_CLASS.into(),
        default_load_balancer: false,
        secrets_dir: secrets_dir.to_path_buf(),
    }
}

/// Metadata: namespace, name, created `created` seconds after the epoch.
pub fn meta(ns: &str, name: &str, created: i64) -> ObjectMeta {
    ObjectMeta {
        namespace: (!ns.is_empty()).then(|| ns.to_string()),
        name: Some(name.to_string()),
        creation_timestamp: Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created).unwrap(),
        )),
        generation: Some(1),
        ..ObjectMeta::default()
    }
}

/// An IngressClass of `controller`, the default class when `default`.
pub fn ingress_class(name: &str, controller: &str, default: bool) -> IngressClass {
    let mut m = meta("", name, 0);
    if default {
        m.annotations = Some(BTreeMap::from([(
            "ingressclass.kubernetes.io/is-default-class".to_string(),
            "true".to_string(),
        )]));
    }
    IngressClass {
        metadata: m,
        spec: Some(IngressClassSpec {
            controller: Some(controller.into()),
            parameters: None,
        }),
    }
}

/// A ClusterIP Service with ports (name, port, target port).
pub fn service(ns: &str, name: &str, ports: &[(&str, i32, i32)]) -> Service {
    Service {
        metadata: meta(ns, name, 0),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, t)| ServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: *p,
                        target_port: Some(IntOrString::Int(*t)),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// A LoadBalancer Service with ports (name, protocol, port, target port), our class when
/// `class` is given, created at `created`, with `status_ip` in its status.
pub fn lb_service(
    ns: &str,
    name: &str,
    class: Option<&str>,
    ports: &[(&str, &str, i32, i32)],
    created: i64,
    status_ip: Option<&str>,
) -> Service {
    Service {
        metadata: meta(ns, name, created),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            load_balancer_class: class.map(str::to_string),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, proto, p, t)| ServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: *p,
                        target_port: Some(IntOrString::Int(*t)),
                        protocol: Some(proto.to_string()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: status_ip.map(|ip| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(ip.into()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            conditions: None,
        }),
    }
}

/// An endpoint's conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// ready, serving.
    Ready,
    /// not ready, not serving.
    NotReady,
    /// terminating but still serving.
    Draining,
    /// terminating, not serving.
    Gone,
}

/// An EndpointSlice of Service `svc`: ports (name, port, protocol TCP), endpoints (address,
/// state); managed by the EndpointSlice controller unless `vm`.
pub fn slice(
    ns: &str,
    svc: &str,
    name: &str,
    ports: &[(&str, i32)],
    endpoints: &[(&str, State)],
    vm: bool,
) -> EndpointSlice {
    let mut m = meta(ns, name, 0);
    let mut labels = BTreeMap::from([("kubernetes.io/service-name".to_string(), svc.to_string())]);
    if !vm {
        labels.insert(
            "endpointslice.kubernetes.io/managed-by".into(),
            "endpointslice-controller.k8s.io".into(),
        );
    }
    m.labels = Some(labels);
    let v6 = endpoints.first().is_some_and(|(a, _)| a.contains(':'));
    EndpointSlice {
        metadata: m,
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: Some(n.to_string()),
                    port: Some(*p),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                })
                .collect(),
        ),
        endpoints: endpoints
            .iter()
            .map(|(a, s)| Endpoint {
                addresses: vec![a.to_string()],
                conditions: Some(match s {
                    State::Ready => EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    },
                    State::NotReady => EndpointConditions {
                        ready: Some(false),
                        serving: Some(false),
                        terminating: Some(false),
                    },
                    State::Draining => EndpointConditions {
                        ready: Some(false),
                        serving: Some(true),
                        terminating: Some(true),
                    },
                    State::Gone => EndpointConditions {
                        ready: Some(false),
                        serving: Some(false),
                        terminating: Some(true),
                    },
                }),
                ..Endpoint::default()
            })
            .collect(),
    }
}

/// A Service backend by port number.
pub fn backend(svc: &str, port: i32) -> IngressBackend {
    IngressBackend {
        resource: None,
        service: Some(IngressServiceBackend {
            name: svc.into(),
            port: Some(ServiceBackendPort {
                name: None,
                number: Some(port),
            }),
        }),
    }
}

/// A Service backend by port name.
pub fn backend_named(svc: &str, port: &str) -> IngressBackend {
    IngressBackend {
        resource: None,
        service: Some(IngressServiceBackend {
            name: svc.into(),
            port: Some(ServiceBackendPort {
                name: Some(port.into()),
                number: None,
            }),
        }),
    }
}

/// An Ingress under construction.
pub struct IngressBuilder(pub Ingress);

/// An Ingress of class `class` (none: the default class), created at `created`.
pub fn ingress(ns: &str, name: &str, class: Option<&str>, created: i64) -> IngressBuilder {
    IngressBuilder(Ingress {
        metadata: meta(ns, name, created),
        spec: Some(IngressSpec {
            ingress_class_name: class.map(str::to_string),
            ..IngressSpec::default()
        }),
        status: None,
    })
}

impl IngressBuilder {
    fn spec(&mut self) -> &mut IngressSpec {
        self.0.spec.get_or_insert_with(IngressSpec::default)
    }

    /// A rule: host (None: any), path, pathType, backend.
    pub fn rule(
        mut self,
        host: Option<&str>,
        path: &str,
        path_type: &str,
        b: IngressBackend,
    ) -> Self {
        self.spec()
            .rules
            .get_or_insert_with(Vec::new)
            .push(IngressRule {
                host: host.map(str::to_string),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        backend: b,
                        path: Some(path.into()),
                        path_type: path_type.into(),
                    }],
                }),
            });
        self
    }

    /// One rule of host `host` with many paths (`/p0`, `/p1`, ...) to one backend.
    pub fn many_paths(mut self, host: &str, n: usize, b: IngressBackend) -> Self {
        self.spec()
            .rules
            .get_or_insert_with(Vec::new)
            .push(IngressRule {
                host: Some(host.into()),
                http: Some(HTTPIngressRuleValue {
                    paths: (0..n)
                        .map(|i| HTTPIngressPath {
                            backend: b.clone(),
                            path: Some(format!("/p{i}")),
                            path_type: "Prefix".into(),
                        })
                        .collect(),
                }),
            });
        self
    }

    /// `spec.defaultBackend`.
    pub fn default_backend(mut self, b: IngressBackend) -> Self {
        self.spec().default_backend = Some(b);
        self
    }

    /// A `tls` entry.
    pub fn tls(mut self, hosts: &[&str], secret: &str) -> Self {
        self.spec()
            .tls
            .get_or_insert_with(Vec::new)
            .push(IngressTLS {
                hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
                secret_name: Some(secret.into()),
            });
        self
    }

    /// An annotation.
    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.0
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        self
    }

    /// An ingress-nginx annotation (`nginx.ingress.kubernetes.io/<k>`).
    pub fn nginx(self, k: &str, v: &str) -> Self {
        self.annotation(&format!("nginx.ingress.kubernetes.io/{k}"), v)
    }

    /// The Ingress.
    pub fn build(self) -> Ingress {
        self.0
    }
}

/// A self-signed certificate and key (PEM) for `host`.
pub fn self_signed(host: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

/// A Secret of type kubernetes.io/tls.
pub fn tls_secret(ns: &str, name: &str, cert: &str, key: &str) -> Secret {
    Secret {
        metadata: meta(ns, name, 0),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), ByteString(cert.as_bytes().to_vec())),
            ("tls.key".to_string(), ByteString(key.as_bytes().to_vec())),
        ])),
        ..Secret::default()
    }
}

/// A GatewayClass of `controller`.
pub fn gateway_class(name: &str, controller: &str) -> GatewayClass {
    let mut gc = GatewayClass::new(
        name,
        GatewayClassSpec {
            controller_name: controller.into(),
            description: None,
        },
    );
    gc.metadata = meta("", name, 0);
    gc
}

/// An HTTP listener.
pub fn listener(name: &str, hostname: Option<&str>, port: u16) -> Listener {
    Listener {
        name: name.into(),
        hostname: hostname.map(str::to_string),
        port,
        protocol: "HTTP".into(),
        tls: None,
        allowed_routes: None,
    }
}

/// A Gateway of class `class` with `listeners` and requested `addresses`.
pub fn gateway(
    ns: &str,
    name: &str,
    class: &str,
    listeners: Vec<Listener>,
    addresses: &[&str],
) -> Gateway {
    let mut g = Gateway::new(
        name,
        GatewaySpec {
            gateway_class_name: class.into(),
            listeners,
            addresses: addresses
                .iter()
                .map(|a| GatewayAddress {
                    type_: None,
                    value: a.to_string(),
                })
                .collect(),
        },
    );
    g.metadata = meta(ns, name, 0);
    g
}

/// An HTTPRoute.
pub fn http_route(ns: &str, name: &str, created: i64, spec: HTTPRouteSpec) -> HTTPRoute {
    let mut r = HTTPRoute::new(name, spec);
    r.metadata = meta(ns, name, created);
    r
}

/// A parentRef to Gateway `name` (and listener `section`).
pub fn parent(name: &str, section: Option<&str>) -> ParentReference {
    ParentReference {
        name: name.into(),
        section_name: section.map(str::to_string),
        ..ParentReference::default()
    }
}

/// A backendRef to Service `name` port `port` with `weight`.
pub fn backend_ref(name: &str, port: u16, weight: Option<u32>) -> HTTPBackendRef {
    HTTPBackendRef {
        name: name.into(),
        port: Some(port),
        weight,
        ..HTTPBackendRef::default()
    }
}

/// Adds objects to a snapshot by their keys.
pub trait Add {
    /// Adds `obj`.
    fn add<T: Into<Obj>>(&mut self, obj: T) -> &mut Self;
}

/// Any object a snapshot holds (test data: the size of the variants does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Obj {
    /// IngressClass.
    IngressClass(IngressClass),
    /// Ingress.
    Ingress(Ingress),
    /// Service.
    Service(Service),
    /// EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// Secret.
    Secret(Secret),
    /// GatewayClass.
    GatewayClass(GatewayClass),
    /// Gateway.
    Gateway(Gateway),
    /// HTTPRoute.
    HttpRoute(HTTPRoute),
}

macro_rules! obj_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Obj {
            fn from(o: $t) -> Obj {
                Obj::$v(o)
            }
        }
    )*};
}
obj_from!(IngressClass => IngressClass, Ingress => Ingress, Service => Service,
    EndpointSlice => EndpointSlice, Secret => Secret, GatewayClass => GatewayClass,
    Gateway => Gateway, HTTPRoute => HttpRoute);

impl From<IngressBuilder> for Obj {
    fn from(b: IngressBuilder) -> Obj {
        Obj::Ingress(b.0)
    }
}

impl Add for Snapshot {
    fn add<T: Into<Obj>>(&mut self, obj: T) -> &mut Self {
        match obj.into() {
            Obj::IngressClass(o) => {
                self.ingress_classes
                    .insert(o.metadata.name.clone().unwrap_or_default(), o);
            }
            Obj::Ingress(o) => {
                self.ingresses.insert(ObjectKey::of(&o), o);
            }
            Obj::Service(o) => {
                self.services.insert(ObjectKey::of(&o), o);
            }
            Obj::EndpointSlice(o) => {
                self.endpoint_slices.insert(ObjectKey::of(&o), o);
            }
            Obj::Secret(o) => {
                self.secrets.insert(ObjectKey::of(&o), o);
            }
            Obj::GatewayClass(o) => {
                self.gateway_classes
                    .insert(o.metadata.name.clone().unwrap_or_default(), o);
            }
            Obj::Gateway(o) => {
                self.gateways.insert(ObjectKey::of(&o), o);
            }
            Obj::HttpRoute(o) => {
                self.http_routes.insert(ObjectKey::of(&o), o);
            }
        }
        self
    }
}

/// Every object of `snap`, for pushing into an API server.
pub fn objects(snap: &Snapshot) -> Vec<Obj> {
    let mut v: Vec<Obj> = Vec::new();
    v.extend(snap.ingress_classes.values().cloned().map(Obj::from));
    v.extend(snap.gateway_classes.values().cloned().map(Obj::from));
    v.extend(snap.services.values().cloned().map(Obj::from));
    v.extend(snap.endpoint_slices.values().cloned().map(Obj::from));
    v.extend(snap.secrets.values().cloned().map(Obj::from));
    v.extend(snap.ingresses.values().cloned().map(Obj::from));
    v.extend(snap.gateways.values().cloned().map(Obj::from));
    v.extend(snap.http_routes.values().cloned().map(Obj::from));
    v
}

/// The namespace of the routing cases' objects.
pub const CASE_NS: &str = "cases";
/// The Service port of every case backend (target port 8080).
pub const CASE_PORT: i32 = 80;
/// The Gateway of the Gateway API cases.
pub const CASE_GATEWAY: &str = "gw";

/// One routing case group as cluster objects.
pub struct CaseObjects {
    /// The objects.
    pub snapshot: Snapshot,
    /// Which case backend each endpoint address belongs to.
    pub backend_of: BTreeMap<IpAddr, String>,
}

/// The address of replica `i` of the `s`-th backend of a case (198.19.s.i+1).
fn case_addr(s: usize, i: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 19, s as u8, (i + 1) as u8))
}

/// A routing case group (`kind` ingress or gateway) as Ingress or HTTPRoute objects, with a
/// Service and an EndpointSlice per case backend (one address per replica) and, for TLS, a
/// Secret with a self-signed certificate.
pub fn case_objects(group: &Value) -> CaseObjects {
    let mut snap = Snapshot::default();
    let mut backend_of = BTreeMap::new();
    let missing: BTreeSet<&str> = group["missing_backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let rows: Vec<&Value> = group["routes"].as_array().unwrap().iter().collect();
    let unattached: Vec<&Value> = group["unattached_routes"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    // Case backends, in order of appearance.
    let mut names: Vec<String> = Vec::new();
    let all_backends = rows
        .iter()
        .chain(&unattached)
        .filter_map(|r| r["backend"].as_str())
        .chain(group["default_backend"].as_str());
    for b in all_backends {
        if !names.iter().any(|n| n == b) {
            names.push(b.to_string());
        }
    }
    for (s, name) in names.iter().enumerate() {
        if missing.contains(name.as_str()) {
            continue;
        }
        snap.add(service(CASE_NS, name, &[("http", CASE_PORT, 8080)]));
        let replicas = group["backend_replicas"][name.as_str()]
            .as_u64()
            .unwrap_or(1);
        let addrs: Vec<String> = (0..replicas)
            .map(|i| {
                let a = case_addr(s, i);
                backend_of.insert(a, name.clone());
                a.to_string()
            })
            .collect();
        let eps: Vec<(&str, State)> = addrs.iter().map(|a| (a.as_str(), State::Ready)).collect();
        snap.add(slice(
            CASE_NS,
            name,
            &format!("{name}-abc12"),
            &[("http", 8080)],
            &eps,
            false,
        ));
    }
    if group["kind"] == "ingress" {
        ingress_case(group, &rows, &mut snap);
    } else {
        gateway_case(group, &rows, &unattached, &mut snap);
    }
    CaseObjects {
        snapshot: snap,
        backend_of,
    }
}

fn ingress_case(group: &Value, rows: &[&Value], snap: &mut Snapshot) {
    snap.add(ingress_class("lb", INGRESS_CONTROLLER, false));
    let class = group["ingress_class_name"].as_str().unwrap_or("lb");
    if group["ingress_class_exists"].as_bool() == Some(true) && class != "lb" {
        snap.add(ingress_class(class, "other.example.com/controller", false));
    }
    // One Ingress per `ingress` of the rows (in order of appearance).
    let mut builders: Vec<(String, IngressBuilder)> = Vec::new();
    for row in rows {
        let name = row["ingress"].as_str().unwrap_or("case").to_string();
        if !builders.iter().any(|(n, _)| *n == name) {
            let created = builders.len() as i64;
            builders.push((name.clone(), ingress(CASE_NS, &name, Some(class), created)));
        }
        let (_, b) = builders.iter_mut().find(|(n, _)| *n == name).unwrap();
        let taken = std::mem::replace(b, ingress(CASE_NS, &name, None, 0));
        *b = taken.rule(
            row["host"].as_str(),
            row["path"].as_str().unwrap(),
            row["path_type"].as_str().unwrap(),
            backend(row["backend"].as_str().unwrap(), CASE_PORT),
        );
    }
    if let Some(d) = group["default_backend"].as_str() {
        if builders.is_empty() {
            builders.push(("case".into(), ingress(CASE_NS, "case", Some(class), 0)));
        }
        let b = std::mem::replace(&mut builders[0].1, ingress(CASE_NS, "x", None, 0));
        builders[0].1 = b.default_backend(backend(d, CASE_PORT));
    }
    for t in group["tls"].as_array().into_iter().flatten() {
        let secret = t["secret"].as_str().unwrap();
        let (cert, key) = self_signed(t["self_signed_for"].as_str().unwrap());
        snap.add(tls_secret(CASE_NS, secret, &cert, &key));
        let hosts: Vec<&str> = t["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let b = std::mem::replace(&mut builders[0].1, ingress(CASE_NS, "x", None, 0));
        builders[0].1 = b.tls(&hosts, secret);
    }
    for (_, b) in builders {
        snap.add(b);
    }
}

fn gateway_case(group: &Value, rows: &[&Value], unattached: &[&Value], snap: &mut Snapshot) {
    snap.add(gateway_class("lb", GATEWAY_CONTROLLER));
    let listeners: Vec<Listener> = match group["listeners"].as_array() {
        Some(ls) => ls
            .iter()
            .map(|l| listener(l["name"].as_str().unwrap(), l["hostname"].as_str(), 80))
            .collect(),
        None => vec![listener("http", None, 80)],
    };
    snap.add(gateway(CASE_NS, CASE_GATEWAY, "lb", listeners, &[]));
    // Routes in order of appearance; each route's rules by index; each rule's matches by index.
    let mut order: Vec<String> = Vec::new();
    for row in rows {
        let name = row["route"].as_str().unwrap_or("route").to_string();
        if !order.contains(&name) {
            order.push(name);
        }
    }
    for (created, name) in order.iter().enumerate() {
        let mine: Vec<&&Value> = rows
            .iter()
            .filter(|r| r["route"].as_str().unwrap_or("route") == name)
            .collect();
        // A row's host is the effective one: declared by the route, unless it is just its
        // listener's hostname (then the route declares none and inherits it).
        let listener_host = |l: Option<&str>| {
            group["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| l.is_some() && x["name"].as_str() == l)
                .and_then(|x| x["hostname"].as_str())
        };
        let hostnames: Vec<String> = match mine[0]["declared_hostnames"].as_array() {
            Some(h) => h
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            None => {
                let mut h: Vec<String> = Vec::new();
                for r in &mine {
                    let host = r["host"].as_str();
                    if let Some(host) =
                        host.filter(|x| Some(*x) != listener_host(r["listener"].as_str()))
                    {
                        if !h.iter().any(|x| x == host) {
                            h.push(host.to_string());
                        }
                    }
                }
                h
            }
        };
        let mut sections: Vec<Option<&str>> = Vec::new();
        for r in &mine {
            let l = r["listener"].as_str();
            if !sections.contains(&l) {
                sections.push(l);
            }
        }
        let mut rules: BTreeMap<u64, HTTPRouteRule> = BTreeMap::new();
        let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
        for r in &mine {
            let ri = r["rule"].as_u64().unwrap_or(0);
            let mi = r["match"].as_u64().unwrap_or(0);
            let rule = rules.entry(ri).or_default();
            if seen.insert((ri, mi)) {
                rule.matches.push(HTTPRouteMatch {
                    path: Some(HTTPPathMatch {
                        type_: Some(
                            match r["path_type"].as_str().unwrap() {
                                "Exact" => "Exact",
                                _ => "PathPrefix",
                            }
                            .into(),
                        ),
                        value: Some(r["path"].as_str().unwrap().into()),
                    }),
                    headers: r["headers"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| HTTPHeaderMatch {
                            type_: None,
                            name: k.clone(),
                            value: v.as_str().unwrap().into(),
                        })
                        .collect(),
                    method: r["method"].as_str().map(str::to_string),
                });
            }
            if let Some(b) = r["backend"].as_str() {
                if !rule.backend_refs.iter().any(|x| x.name == b) {
                    let mut br =
                        backend_ref(b, CASE_PORT as u16, r["weight"].as_u64().map(|w| w as u32));
                    if let Some((g, k)) = r["backend_kind"].as_str().and_then(|k| k.split_once('/'))
                    {
                        br.group = Some(g.into());
                        br.kind = Some(k.into());
                    }
                    rule.backend_refs.push(br);
                }
            }
        }
        snap.add(http_route(
            CASE_NS,
            name,
            created as i64,
            HTTPRouteSpec {
                parent_refs: sections.iter().map(|l| parent(CASE_GATEWAY, *l)).collect(),
                hostnames,
                rules: rules.into_values().collect(),
            },
        ));
    }
    for (i, u) in unattached.iter().enumerate() {
        let name = u["route"].as_str().unwrap();
        let hostnames = u["hostnames"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        snap.add(http_route(
            CASE_NS,
            name,
            (order.len() + i) as i64,
            HTTPRouteSpec {
                parent_refs: vec![parent(CASE_GATEWAY, None)],
                hostnames,
                rules: vec![HTTPRouteRule {
                    matches: vec![HTTPRouteMatch {
                        path: Some(HTTPPathMatch {
                            type_: Some("PathPrefix".into()),
                            value: Some(u["path"].as_str().unwrap().into()),
                        }),
                        ..HTTPRouteMatch::default()
                    }],
                    filters: vec![],
                    backend_refs: vec![backend_ref(
                        u["backend"].as_str().unwrap(),
                        CASE_PORT as u16,
                        None,
                    )],
                }],
            },
        ));
    }
}

/// A case's backend is known here by the address its endpoint has (`backend_of`): upstream
/// names are the cluster's (`namespace.service:port`), not the case's.
pub fn by_address(
    backend_of: &BTreeMap<IpAddr, String>,
) -> impl Fn(&dataplane::l7::select::Routing<'_>, &dataplane::l7::route::Pick) -> String + '_ {
    move |routing, pick| {
        let addr = routing.table.backends[pick.backend.0 as usize].addr.ip();
        backend_of.get(&addr).cloned().unwrap_or(addr.to_string())
    }
}

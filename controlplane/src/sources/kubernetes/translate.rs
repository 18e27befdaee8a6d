//! Pure: a [`Snapshot`] of cluster objects and the source's [`Settings`] -> the desired state
//! they mean ([`Translated`]: `[[services]]` and `[[http]]` entries as lb.toml would write them,
//! the problems of objects that were skipped, and the status the leader should write back).
//!
//! No I/O and no clock: the same snapshot always gives the same result, so every decision is
//! tested without a cluster. An object that cannot be used is skipped and reported; it never
//! stops the others, and no value of an object is ever pasted into any config text (the
//! entries are typed structs, not text).
//!
//! Names: Ingresses share the `[[http]]` [`INGRESS_HTTP_NAME`] (and [`INGRESS_HTTPS_NAME`] with
//! certificates); a Gateway's port is [`gateway_http_name`] (`gw:<namespace>:<name>:<port>`);
//! an upstream is a Service port, `<namespace>.<service>:<port>` (lb.toml refuses `/` in HTTP
//! and upstream names: they are path segments of the admin API); an L4 service is
//! `k8s/<namespace>/<name>` (see `l4` for the UDP and per-port forms).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::model::{ObjectKey, Snapshot};
use crate::config::{Http, IpPrefix, Service};

mod common;
mod gateway;
mod ingress;
mod l4;
pub mod patch;
mod tls;
mod upstreams;

pub use common::service_of;
use common::Problems;
pub use gateway::http_name as gateway_http_name;
pub use ingress::{HTTPS_NAME as INGRESS_HTTPS_NAME, HTTP_NAME as INGRESS_HTTP_NAME};

/// How the source reads the cluster (from `[kubernetes]` in lb.toml).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Our IngressClass controller (`spec.controller` of the IngressClasses we serve).
    pub ingress_controller: String,
    /// Our GatewayClass controller (`spec.controllerName`).
    pub gateway_controller: String,
    /// Where Ingress HTTP is served (plain), e.g. `198.18.0.10:80`.
    pub ingress_http: Vec<SocketAddr>,
    /// Where Ingress HTTPS is served (Ingresses with `tls`); empty: TLS Ingresses are served
    /// on plain HTTP only and reported.
    pub ingress_https: Vec<SocketAddr>,
    /// Addresses a Gateway may listen on (its `spec.addresses` must be among them); absent
    /// addresses: the first free one from here.
    pub gateway_addresses: Vec<IpAddr>,
    /// VIPs for Services of type LoadBalancer, handed out in order.
    pub vip_pool: Vec<IpPrefix>,
    /// Services with this `spec.loadBalancerClass` are ours.
    pub load_balancer_class: String,
    /// Also take LoadBalancer Services without a `loadBalancerClass`.
    pub default_load_balancer: bool,
    /// Where certificates from Secrets are written for the listeners (mode 0700, files 0600).
    pub secrets_dir: PathBuf,
}

/// Kind of a cluster object, for problems and status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// networking.k8s.io/v1 IngressClass.
    IngressClass,
    /// networking.k8s.io/v1 Ingress.
    Ingress,
    /// v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// v1 Secret.
    Secret,
    /// gateway.networking.k8s.io/v1 GatewayClass.
    GatewayClass,
    /// gateway.networking.k8s.io/v1 Gateway.
    Gateway,
    /// gateway.networking.k8s.io/v1 HTTPRoute.
    HttpRoute,
    /// v1 Namespace (read for its labels only).
    Namespace,
}

/// Why (part of) an object was not used: logged, counted, and written as a Warning Event by
/// the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectProblem {
    /// The object's kind.
    pub kind: Kind,
    /// The object.
    pub key: ObjectKey,
    /// A CamelCase reason (the Event's reason), e.g. `InvalidAnnotation`.
    pub reason: String,
    /// What is wrong and what was done about it (bounded length; values are quoted and cut).
    pub message: String,
}

/// A PEM certificate chain and key from a Secret, to be written where an `[[http.tls]]` entry
/// names it (`path` under `Settings::secrets_dir`; the name derives from the content's hash, so a
/// changed Secret is a new file and a reload picks it up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemFile {
    /// Where it goes.
    pub path: PathBuf,
    /// Its content.
    pub content: Vec<u8>,
}

/// Status the leader writes back (only where it differs from the object's current status).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Statuses {
    /// Ingress `status.loadBalancer.ingress[].ip`.
    pub ingresses: Vec<(ObjectKey, Vec<IpAddr>)>,
    /// Service `status.loadBalancer.ingress[].ip`.
    pub services: Vec<(ObjectKey, Vec<IpAddr>)>,
    /// GatewayClass status.
    pub gateway_classes: Vec<(String, super::model::GatewayClassStatus)>,
    /// Gateway status.
    pub gateways: Vec<(ObjectKey, super::model::GatewayStatus)>,
    /// HTTPRoute status (our parents' entries only).
    pub http_routes: Vec<(ObjectKey, super::model::HTTPRouteStatus)>,
}

/// What a snapshot means.
#[derive(Clone, Debug, Default)]
pub struct Translated {
    /// L4 services (LoadBalancer Services), named `k8s/<namespace>/<name>`.
    pub services: Vec<Service>,
    /// HTTP services: one for Ingress (`k8s-ingress`), one per Gateway listener port.
    pub http: Vec<Http>,
    /// Certificates to write before the entries above are applied.
    pub pem_files: Vec<PemFile>,
    /// Objects (or parts) skipped, and why.
    pub problems: Vec<ObjectProblem>,
    /// Status to write back (leader only).
    pub statuses: Statuses,
}

/// What `snap` means under `settings`.
pub fn translate(snap: &Snapshot, settings: &Settings) -> Translated {
    let mut problems = Problems::default();
    let ing = ingress::translate(snap, settings, &mut problems);
    let l4 = l4::translate(snap, settings, &mut problems);
    let gw = gateway::translate(snap, settings, &mut problems);
    let mut pem_files = ing.pem_files;
    for f in gw.pem_files {
        if !pem_files.iter().any(|p| p.path == f.path) {
            pem_files.push(f);
        }
    }
    let mut http = ing.http;
    http.extend(gw.http);
    Translated {
        services: l4.services,
        http,
        pem_files,
        problems: problems.into_vec(),
        statuses: Statuses {
            ingresses: ing.statuses,
            services: l4.statuses,
            gateway_classes: gw.gateway_classes,
            gateways: gw.gateways,
            http_routes: gw.http_routes,
        },
    }
}

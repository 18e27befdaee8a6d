//! What the kubernetes source holds: every watched object, by namespace and name (a
//! [`Snapshot`]), and our typed Gateway API resources (gateway.networking.k8s.io/v1, the core
//! fields we implement; unknown fields are ignored when read).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A namespaced object's name (cluster-scoped objects have an empty namespace).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObjectKey {
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object from its metadata.
    pub fn of<K: kube::Resource>(obj: &K) -> ObjectKey {
        let m = obj.meta();
        ObjectKey::new(
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Every object the source watches, as last seen. The input of `translate`.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// IngressClasses (cluster-scoped), by name.
    pub ingress_classes: BTreeMap<String, IngressClass>,
    /// Ingresses.
    pub ingresses: BTreeMap<ObjectKey, Ingress>,
    /// Services.
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices, by their own name; label `kubernetes.io/service-name` names the Service.
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// Secrets (type kubernetes.io/tls are the ones used).
    pub secrets: BTreeMap<ObjectKey, Secret>,
    /// GatewayClasses (cluster-scoped), by name.
    pub gateway_classes: BTreeMap<String, GatewayClass>,
    /// Gateways.
    pub gateways: BTreeMap<ObjectKey, Gateway>,
    /// HTTPRoutes.
    pub http_routes: BTreeMap<ObjectKey, HTTPRoute>,
    /// Namespaces (cluster-scoped), by name: their labels, for listeners that allow routes
    /// from namespaces chosen by a selector.
    pub namespaces: BTreeMap<String, Namespace>,
}

/// A condition as Gateway API status carries it (metav1.Condition).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs`, `Programmed`, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
    /// The object's generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last status change.
    #[serde(default)]
    pub last_transition_time: String,
}

/// GatewayClass spec.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "GatewayClass",
    status = "GatewayClassStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// The controller that manages Gateways of this class; ours when it equals our
    /// `gateway_controller_name`.
    pub controller_name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// GatewayClass status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassStatus {
    /// Accepted.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Gateway spec.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The GatewayClass.
    pub gateway_class_name: String,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Requested addresses (type IPAddress); empty: one from the configured pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<GatewayAddress>,
}

/// One address of a Gateway (spec or status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` (the default) or `Hostname`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The address.
    pub value: String,
}

/// One listener of a Gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Unique within the Gateway; routes attach by it (`sectionName`).
    pub name: String,
    /// Host names it serves, exact or `*.suffix`; absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Port.
    pub port: u16,
    /// `HTTP` or `HTTPS` (others are not supported: the listener is not accepted).
    pub protocol: String,
    /// HTTPS: the certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTls>,
    /// Which routes may attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// A listener's TLS settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTls {
    /// `Terminate` (default; the only mode supported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Secrets of type kubernetes.io/tls.
    #[serde(default)]
    pub certificate_refs: Vec<SecretObjectReference>,
}

/// A reference to a Secret (group "", kind Secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectReference {
    /// "" for core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace; absent: the Gateway's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `allowedRoutes` of a listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    /// Namespaces routes may come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,
}

/// `allowedRoutes.namespaces`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (default), `All` or `Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `Selector`: labels of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// Gateway status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Addresses the Gateway serves on.
    #[serde(default)]
    pub addresses: Vec<GatewayAddress>,
    /// Accepted, Programmed.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Per listener.
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

/// One listener's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// The listener's name.
    pub name: String,
    /// Route kinds it accepts.
    #[serde(default)]
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Routes attached to it.
    pub attached_routes: i32,
    /// Accepted, ResolvedRefs, Programmed.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A route kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteGroupKind {
    /// `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `HTTPRoute`.
    pub kind: String,
}

/// HTTPRoute spec.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced,
    status = "HTTPRouteStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteSpec {
    /// The Gateways (and listeners) it attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Host names; empty: the listener's.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<HTTPRouteRule>,
}

/// A reference to a Gateway (and optionally one listener of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// `gateway.networking.k8s.io` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Gateway` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Gateway's namespace; absent: the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Gateway's name.
    pub name: String,
    /// A listener's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// A listener's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// One rule: matches (any of), filters, backends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteRule {
    /// Any of them; empty: one match of PathPrefix `/`.
    #[serde(default)]
    pub matches: Vec<HTTPRouteMatch>,
    /// Filters applied to matching requests.
    #[serde(default)]
    pub filters: Vec<HTTPRouteFilter>,
    /// Backends, split by weight.
    #[serde(default)]
    pub backend_refs: Vec<HTTPBackendRef>,
}

/// One match: path, headers, method (all must hold).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteMatch {
    /// Path; absent: PathPrefix `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HTTPPathMatch>,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<HTTPHeaderMatch>,
    /// Method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A path match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HTTPPathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression` (not supported).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The path; default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A header match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HTTPHeaderMatch {
    /// `Exact` (default) or `RegularExpression` (not supported).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Header name (case-insensitive).
    pub name: String,
    /// Value.
    pub value: String,
}

/// A filter of a rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteFilter {
    /// `RequestHeaderModifier`, `RequestRedirect`, ... (others are not supported).
    #[serde(rename = "type")]
    pub type_: String,
    /// RequestHeaderModifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HTTPHeaderFilter>,
    /// RequestRedirect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<HTTPRequestRedirectFilter>,
}

/// RequestHeaderModifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HTTPHeaderFilter {
    /// Replaces (or adds) these headers.
    #[serde(default)]
    pub set: Vec<HTTPHeader>,
    /// Adds these (beside existing ones).
    #[serde(default)]
    pub add: Vec<HTTPHeader>,
    /// Removes these header names.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
pub struct HTTPHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// RequestRedirect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRequestRedirectFilter {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path replacement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HTTPPathModifier>,
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301 or 302 (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// A path modifier of a redirect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HTTPPathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    /// ReplaceFullPath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// ReplacePrefixMatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// A backend of a rule: a Service and port, with a weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HTTPBackendRef {
    /// "" (core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Service's name.
    pub name: String,
    /// Its namespace; absent: the route's (another namespace needs a ReferenceGrant, which is
    /// not supported: such a ref does not resolve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Share; default 1, 0 gets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// HTTPRoute status: one entry per parent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HTTPRouteStatus {
    /// Per parent Gateway.
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

/// A route's status for one parent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent.
    pub parent_ref: ParentReference,
    /// Our controller name.
    pub controller_name: String,
    /// Accepted, ResolvedRefs.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

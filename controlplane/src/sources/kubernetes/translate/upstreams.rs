//! L7 upstreams of one `[[http]]`: a Service port's endpoints, named `<namespace>.<service>:<port>`.
//!
//! (`/` cannot be in an upstream name: names are path segments of the admin API. Namespaces
//! and Service names are DNS labels without dots, so the name is still unambiguous.)

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServicePort;

use super::common::{service_port, EndpointIndex, PortRef};
use crate::config::{Balance, HashKey, HttpBackend, Upstream, UpstreamTls};
use crate::sources::kubernetes::annotations::quote;
use crate::sources::kubernetes::model::{ObjectKey, Snapshot};

/// How an upstream balances and reaches its backends (from annotations; default round robin,
/// plain HTTP).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// Balancing.
    pub balance: Balance,
    /// `balance = Hash`: the key.
    pub hash_key: Option<HashKey>,
    /// TLS to the backends.
    pub tls: Option<UpstreamTls>,
}

/// The endpoints of Service `key`'s port `port` as upstream backends.
pub fn http_backends(
    eps: &EndpointIndex<'_>,
    key: &ObjectKey,
    port: &ServicePort,
) -> Vec<HttpBackend> {
    eps.endpoints(key, port)
        .into_iter()
        .map(|e| HttpBackend {
            addr: e.addr,
            port: e.port,
            weight: e.weight,
        })
        .collect()
}

/// What a backend reference resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// An upstream with backends, by name.
    Upstream(String),
    /// The Service port exists but has no endpoints that may take requests: no upstream (an
    /// upstream needs backends), the route answers the error.
    NoEndpoints,
}

/// The upstreams of one `[[http]]`, in name order.
#[derive(Default)]
pub struct Upstreams {
    map: BTreeMap<String, Upstream>,
}

impl Upstreams {
    /// Resolves Service `name` in `namespace`, port `port`, to an upstream (created the first
    /// time with `settings`). `Err(why)` when the Service or the port does not exist;
    /// `Ok((resolved, conflict))` where `conflict` says the upstream was already made with other
    /// settings (the first ones stay).
    pub fn resolve(
        &mut self,
        snap: &Snapshot,
        eps: &EndpointIndex<'_>,
        namespace: &str,
        name: &str,
        port: &PortRef,
        settings: &UpstreamSettings,
    ) -> Result<(Resolved, bool), String> {
        let key = ObjectKey::new(namespace, name);
        let svc = snap
            .services
            .get(&key)
            .ok_or_else(|| format!("Service {} not found", quote(&key.to_string())))?;
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(format!(
                "Service {} is of type ExternalName, which is not supported",
                quote(&key.to_string())
            ));
        }
        let sp = service_port(svc, port).ok_or_else(|| {
            let p = match port {
                PortRef::Number(n) => n.to_string(),
                PortRef::Name(n) => quote(n),
            };
            format!("Service {} has no port {p}", quote(&key.to_string()))
        })?;
        if sp.protocol.as_deref().unwrap_or("TCP") != "TCP" {
            return Err(format!(
                "Service {} port {} is not TCP",
                quote(&key.to_string()),
                sp.port
            ));
        }
        let up_name = format!("{namespace}.{name}:{}", sp.port);
        if let Some(up) = self.map.get(&up_name) {
            let same = up.balance == settings.balance
                && up.hash_key == settings.hash_key
                && up.tls == settings.tls;
            return Ok((Resolved::Upstream(up_name), !same));
        }
        let backends = http_backends(eps, &key, sp);
        if backends.is_empty() {
            return Ok((Resolved::NoEndpoints, false));
        }
        self.map.insert(
            up_name.clone(),
            Upstream {
                name: up_name.clone(),
                balance: settings.balance,
                hash_key: settings.hash_key.clone(),
                backends,
                health_check: None,
                proxy_protocol: None,
                tls: settings.tls.clone(),
            },
        );
        Ok((Resolved::Upstream(up_name), false))
    }

    /// True when `name` is one of them.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Every upstream, in name order.
    pub fn into_vec(self) -> Vec<Upstream> {
        self.map.into_values().collect()
    }
}

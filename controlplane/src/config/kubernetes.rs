//! `[kubernetes]`: the cluster source. Absent: no source runs and the file alone is the desired
//! state. Present: `lb run` watches the cluster and serves what it means beside the file's
//! services (docs/KUBERNETES.md).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::types::{de_duration, IpPrefix};

/// `[kubernetes]`: where the cluster is, what to watch and what is ours.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// A kubeconfig file (relative to lb.toml's directory); absent: the pod's service account
    /// (in-cluster), else the usual kubeconfig lookup (`KUBECONFIG`, `~/.kube/config`).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces watched; empty: all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// A label selector (`app=web,tier!=cache`) for Services, Ingresses and HTTPRoutes; empty:
    /// all of them.
    #[serde(default)]
    pub label_selector: String,
    /// The IngressClass `spec.controller` we serve.
    #[serde(default = "default_ingress_controller")]
    pub ingress_controller: String,
    /// The GatewayClass `spec.controllerName` we serve.
    #[serde(default = "default_gateway_controller")]
    pub gateway_controller: String,
    /// Where Ingress HTTP is served.
    #[serde(default)]
    pub ingress_http: Vec<SocketAddr>,
    /// Where Ingress HTTPS is served.
    #[serde(default)]
    pub ingress_https: Vec<SocketAddr>,
    /// Addresses Gateways may listen on.
    #[serde(default)]
    pub gateway_addresses: Vec<IpAddr>,
    /// VIPs for Services of type LoadBalancer, handed out in order.
    #[serde(default)]
    pub vip_pool: Vec<IpPrefix>,
    /// LoadBalancer Services with this `spec.loadBalancerClass` are ours.
    #[serde(default = "default_load_balancer_class")]
    pub load_balancer_class: String,
    /// Also take LoadBalancer Services without a `loadBalancerClass`.
    #[serde(default)]
    pub default_load_balancer: bool,
    /// Where certificates from Secrets are written (relative to lb.toml's directory).
    #[serde(default = "default_secrets_dir")]
    pub secrets_dir: PathBuf,
    /// After the first change, wait this long for more before applying (removals of endpoints
    /// never wait).
    #[serde(default = "default_batch", deserialize_with = "de_duration")]
    pub batch: Duration,
    /// Lease-based leader election: only the leader writes status and Events.
    #[serde(default)]
    pub leader_election: LeaderElection,
}

/// `[kubernetes.leader_election]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderElection {
    /// Elect a leader at all; `false`: this replica always writes status (a single replica).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The Lease's namespace; absent: the pod's namespace (`POD_NAMESPACE`, the service
    /// account's namespace file), else `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Lease's name.
    #[serde(default = "default_lease_name")]
    pub name: String,
    /// How long a leader's Lease holds without renewal.
    #[serde(default = "default_lease_duration", deserialize_with = "de_duration")]
    pub lease_duration: Duration,
    /// A leader that cannot renew within this stops leading.
    #[serde(default = "default_renew_deadline", deserialize_with = "de_duration")]
    pub renew_deadline: Duration,
    /// How often candidates try to take the Lease (and the leader renews it).
    #[serde(default = "default_retry_period", deserialize_with = "de_duration")]
    pub retry_period: Duration,
}

impl Default for LeaderElection {
    fn default() -> Self {
        LeaderElection {
            enabled: true,
            namespace: None,
            name: default_lease_name(),
            lease_duration: default_lease_duration(),
            renew_deadline: default_renew_deadline(),
            retry_period: default_retry_period(),
        }
    }
}

impl Kubernetes {
    /// `kubeconfig` and `secrets_dir` with a relative path taken from `config_path`'s directory.
    pub fn resolved(&self, config_path: &Path) -> Kubernetes {
        let dir = config_path.parent().unwrap_or(Path::new(""));
        let mut k = self.clone();
        if let Some(p) = &mut k.kubeconfig {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        if k.secrets_dir.is_relative() {
            k.secrets_dir = dir.join(&k.secrets_dir);
        }
        k
    }
}

fn default_true() -> bool {
    true
}

/// `[kubernetes] ingress_controller` when absent.
pub fn default_ingress_controller() -> String {
    "lb.example.com/ingress-controller".into()
}

/// `[kubernetes] gateway_controller` when absent.
pub fn default_gateway_controller() -> String {
    "lb.example.com/gateway-controller".into()
}

/// `[kubernetes] load_balancer_class` when absent.
pub fn default_load_balancer_class() -> String {
    "lb.example.com/vip".into()
}

fn default_secrets_dir() -> PathBuf {
    PathBuf::from("/run/lb/k8s-secrets")
}

fn default_batch() -> Duration {
    Duration::from_millis(5)
}

fn default_lease_name() -> String {
    "lb-leader".into()
}

fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}

fn default_renew_deadline() -> Duration {
    Duration::from_secs(10)
}

fn default_retry_period() -> Duration {
    Duration::from_secs(2)
}

//! The `kubernetes` source: IngressClass, Ingress, Gateway API (GatewayClass, Gateway,
//! HTTPRoute), Service, EndpointSlice and Secret from the cluster, turned into the same desired
//! state lb.toml gives (`[[services]]` and `[[http]]`), merged with the file's, compiled and
//! applied like a reload.
//!
//! - `model`: the objects the source holds (a [`model::Snapshot`]) and our Gateway API types.
//! - `annotations`, `translate`: pure; a snapshot and the settings -> [`translate::Translated`].
//! - `source`: the watchers on the control plane's tokio runtime, batching, apply, readiness.
//! - `leader`, `status`: Lease-based leader election; status and Events written by the leader.

pub mod annotations;
pub mod leader;
pub mod model;
pub mod source;
pub mod status;
pub mod translate;

//! The admin API: HTTP endpoints for state, drain and overrides ([`admin`]) and the Prometheus
//! text ([`metrics`]) they serve.

pub mod admin;
pub mod metrics;

//! The admin API: HTTP endpoints for state, drain and overrides ([`admin`]) and the Prometheus
//! text they serve ([`metrics`]; the L7 proxies' `lb_http_*` families: [`l7_metrics`]).

pub mod admin;
pub mod l7_metrics;
pub mod metrics;

//! Gateway API: GatewayClass, Gateway, HTTPRoute -> one `[[http]]` per Gateway and port, and
//! their status.

use super::common::Problems;
use super::{PemFile, Settings};
use crate::config::Http;
use crate::sources::kubernetes::model::{
    GatewayClassStatus, GatewayStatus, HTTPRouteStatus, ObjectKey, Snapshot,
};

/// What the Gateway API objects give.
#[derive(Default)]
pub struct GatewayOut {
    /// One `[[http]]` per (Gateway, port).
    pub http: Vec<Http>,
    /// Certificates.
    pub pem_files: Vec<PemFile>,
    /// GatewayClass status.
    pub gateway_classes: Vec<(String, GatewayClassStatus)>,
    /// Gateway status.
    pub gateways: Vec<(ObjectKey, GatewayStatus)>,
    /// HTTPRoute status.
    pub http_routes: Vec<(ObjectKey, HTTPRouteStatus)>,
}

/// What the Gateway API objects of `snap` mean.
pub fn translate(snap: &Snapshot, settings: &Settings, problems: &mut Problems) -> GatewayOut {
    let _ = (snap, settings, problems);
    GatewayOut::default()
}

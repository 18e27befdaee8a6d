//! What a running control plane keeps after a reload removed it, so its tracked flows drain
//! (`[dataplane] on_remove = "drain"`): compile adds it to the table at weight 0, where tracked
//! flows revalidate to it and Maglev never picks it.

use crate::config;

/// Removed services and backends still draining. Deciding what is removed and for how long is
/// the control plane's job; compile only adds these to the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Draining {
    /// Services no longer configured, as last configured (with their draining backends), the
    /// newest removal first: where two claim a port, the newest keeps it.
    pub services: Vec<config::Service>,
    /// Backends removed from services still configured.
    pub backends: Vec<DrainingBackend>,
}

/// A backend removed from a service that is still configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainingBackend {
    /// Name of its service.
    pub service: String,
    /// Its pool as last configured, without backends (mode and sources for its flows).
    pub pool: config::Pool,
    /// The backend as last configured.
    pub backend: config::Backend,
}

impl Draining {
    /// True when nothing drains.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.backends.is_empty()
    }
}

//! What the admin API sees and may do: [`Control`] for the running plane.

use std::sync::atomic::Ordering;

use super::state::{
    effective_weight, AdminState, BackendKey, BackendStatus, Control, DrainingStatus, HttpStatus,
    Observation, OpError, Override, ServiceStatus,
};
use super::{ControlPlane, ReloadError};
use crate::config::{self, BackendKind};

fn kind_name(k: BackendKind) -> &'static str {
    match k {
        BackendKind::Pod => "pod",
        BackendKind::Vm => "vm",
    }
}

impl Control for ControlPlane {
    fn observe(&self) -> Observation {
        let workers = self.snapshots();
        let inner = self.lock();
        let mut services = Vec::with_capacity(inner.config.services.len());
        for s in &inner.config.services {
            let ranges: Vec<(u16, u16)> = if s.ports.is_empty() {
                vec![(0, 0)]
            } else {
                s.ports.iter().map(|r| (r.lo, r.hi)).collect()
            };
            let failing = inner.failing_open.contains(&s.name);
            let mut backends = Vec::new();
            for p in &s.pools {
                for b in &p.backends {
                    let key = BackendKey::of(s, b);
                    let over = inner.overrides.get(&key).copied().unwrap_or_default();
                    let health = inner.health.get(&key).cloned().unwrap_or_default();
                    let configured = p.weight.saturating_mul(b.weight);
                    backends.push(BackendStatus {
                        weight: effective_weight(configured, &over, &health, failing),
                        stat: inner.slots.backend_slot(&key),
                        key,
                        pool: p.name.clone(),
                        mode: config::Mode::name(p.mode),
                        kind: kind_name(b.kind),
                        configured_weight: configured,
                        health,
                        over,
                    });
                }
            }
            services.push(ServiceStatus {
                name: s.name.clone(),
                vip: s.vip,
                protocol: match s.protocol {
                    config::Protocol::Tcp => "tcp",
                    config::Protocol::Udp => "udp",
                },
                ports: s.ports.iter().map(|r| r.to_string()).collect(),
                failing_open: failing,
                backends,
                stats: ranges
                    .iter()
                    .filter_map(|&(lo, hi)| inner.slots.service_slot(&s.name, lo, hi))
                    .collect(),
            });
        }
        Observation {
            generation: inner.generation,
            config_path: self.path.display().to_string(),
            services,
            reload: inner.reload.clone(),
            health_transitions: inner.health_transitions,
            workers,
            conntrack_capacity: inner.conntrack_capacity,
            interfaces: inner.fixed.interface_names(),
            draining: {
                let (services, backends) = inner.draining.names();
                DrainingStatus { services, backends }
            },
        }
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn set_weight(&self, key: &BackendKey, weight: u32) -> Result<u64, OpError> {
        self.update_override(key, |o| o.weight = Some(weight))
    }

    fn set_admin(&self, key: &BackendKey, state: AdminState) -> Result<u64, OpError> {
        self.update_override(key, |o| o.admin = state)
    }

    fn clear(&self, key: &BackendKey) -> Result<u64, OpError> {
        self.update_override(key, |o| *o = Override::default())
    }

    fn reload(&self) -> Result<u64, ReloadError> {
        self.reload_file()
    }

    fn http(&self) -> Vec<HttpStatus> {
        let inner = self.lock();
        let handles = inner.l7.handles();
        inner
            .config
            .http
            .iter()
            .map(|h| {
                let mut backends = Vec::new();
                for up in &h.upstreams {
                    for b in &up.backends {
                        let key = crate::compile::backend_key(h, up, b);
                        let over = inner.overrides.get(&key).copied().unwrap_or_default();
                        let health = inner.health.get(&key).cloned().unwrap_or_default();
                        backends.push(BackendStatus {
                            // L7 upstreams never fail open.
                            weight: effective_weight(b.weight, &over, &health, false),
                            stat: None,
                            key,
                            pool: up.name.clone(),
                            mode: "http",
                            kind: "http",
                            configured_weight: b.weight,
                            health,
                            over,
                        });
                    }
                }
                HttpStatus {
                    name: h.name.clone(),
                    listen: h.listen.clone(),
                    tls: !h.tls.is_empty(),
                    backends,
                    proxy: handles.iter().find(|p| p.listener == h.name).cloned(),
                }
            })
            .collect()
    }
}

//! Runtime overrides: what operators set on a backend (weight, drain, disable) until they clear
//! it, and the fail-open rule that decides when health is ignored.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::state::{AdminState, BackendKey, Health, OpError, Override};
use super::ControlPlane;
use crate::config::{self, AllDown, Config};

impl ControlPlane {
    /// Changes `key`'s override with `f` and publishes the resulting table; on an error the
    /// override is put back and nothing changes.
    pub(super) fn update_override(
        &self,
        key: &BackendKey,
        f: impl FnOnce(&mut Override),
    ) -> Result<u64, OpError> {
        let mut inner = self.lock();
        if !config_has(&inner.config, key) {
            return Err(OpError::NoBackend(key.to_string()));
        }
        let before = inner.overrides.get(key).copied();
        let mut ov = before.unwrap_or_default();
        f(&mut ov);
        if let Some(w) = ov.weight {
            weight_fits(&inner.config, &inner.overrides, key, w)?;
        }
        if ov.is_empty() {
            inner.overrides.remove(key);
        } else {
            inner.overrides.insert(key.clone(), ov);
        }
        match self.rebuild(&mut inner) {
            Ok(g) => {
                tracing::info!(backend = %key, weight = ?ov.weight, state = ?ov.admin, "runtime override");
                Ok(g)
            }
            Err(e) => {
                match before {
                    Some(b) => inner.overrides.insert(key.clone(), b),
                    None => inner.overrides.remove(key),
                };
                Err(OpError::Compile(e))
            }
        }
    }
}

/// The file's weight rule ([`config::weights_fit`]) for `key`'s service with `weight` as its
/// override: one huge weight would take every slot of the table.
fn weight_fits(
    cfg: &Config,
    overrides: &BTreeMap<BackendKey, Override>,
    key: &BackendKey,
    weight: u32,
) -> Result<(), OpError> {
    if http_has(cfg, key) {
        // No Maglev table to fill: the file's own bound on an L7 weight.
        return if weight <= config::MAX_HTTP_WEIGHT {
            Ok(())
        } else {
            Err(OpError::Invalid(format!(
                "{key}: weight {weight} refused: an http backend's weight is at most {}",
                config::MAX_HTTP_WEIGHT
            )))
        };
    }
    let Some(s) = cfg.services.iter().find(|s| s.name == key.service) else {
        return Ok(());
    };
    let total: u64 = s
        .pools
        .iter()
        .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
        .map(|(p, b)| {
            let k = BackendKey::of(s, b);
            let w = if &k == key {
                Some(weight)
            } else {
                overrides.get(&k).and_then(|o| o.weight)
            };
            w.map_or(u64::from(p.weight) * u64::from(b.weight), u64::from)
        })
        .sum();
    config::weights_fit(total, s.table_size).map_err(|e| {
        OpError::Invalid(format!(
            "{key}: weight {weight} refused: service {}: {e} ({})",
            s.name,
            config::WEIGHTS_HINT
        ))
    })
}

/// True when `key` names a backend of the config.
fn config_has(cfg: &Config, key: &BackendKey) -> bool {
    http_has(cfg, key)
        || cfg.services.iter().any(|s| {
            s.name == key.service
                && s.pools
                    .iter()
                    .flat_map(|p| &p.backends)
                    .any(|b| b.addr == key.addr && b.port.unwrap_or(0) == key.port)
        })
}

/// Whether `key` names a backend of an `[[http]]` upstream (`HTTP/UPSTREAM/ADDR:PORT`).
fn http_has(cfg: &Config, key: &BackendKey) -> bool {
    cfg.http.iter().any(|h| {
        h.upstreams.iter().any(|up| {
            up.backends
                .iter()
                .any(|b| BackendKey::of_http(h, up, b) == *key)
        })
    })
}

/// Services whose every operator-enabled backend is down and whose policy is to fail open.
pub(super) fn failing_open(
    cfg: &Config,
    overrides: &BTreeMap<BackendKey, Override>,
    health: &HashMap<BackendKey, Health>,
) -> HashSet<String> {
    failing_open_of(&cfg.services, overrides, health)
}

/// [`failing_open`] of some services only.
pub(super) fn failing_open_of<'a>(
    services: impl IntoIterator<Item = &'a crate::config::Service>,
    overrides: &BTreeMap<BackendKey, Override>,
    health: &HashMap<BackendKey, Health>,
) -> HashSet<String> {
    let mut out = HashSet::new();
    for s in services {
        if s.all_down != AllDown::FailOpen {
            continue;
        }
        let mut any = false;
        let mut all_down = true;
        for b in s.pools.iter().flat_map(|p| &p.backends) {
            let key = BackendKey::of(s, b);
            if overrides.get(&key).map(|o| o.admin) == Some(AdminState::Disabled) {
                continue;
            }
            any = true;
            if health.get(&key).is_none_or(Health::serves) {
                all_down = false;
            }
        }
        if any && all_down {
            out.insert(s.name.clone());
        }
    }
    out
}

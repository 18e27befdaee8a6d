//! What the lab reads from a config: VIPs, the interface, the port kind and the services to reach.
//! Read leniently (plain TOML, not the control plane's schema) so the lab works with any config
//! `lb run` accepts.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::{LabError, DEFAULT_INTERFACE};
use crate::netns;

/// Service addresses of a config, read leniently (only `[[services]] vip`) so the lab works with
/// any config `lb run` accepts; and the TAP interface name.
pub(super) fn read_config(path: &Path) -> Result<(Vec<IpAddr>, String, Vec<Target>), LabError> {
    let bad = |message: String| LabError::Config {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))?;
    let iface = value
        .get("dataplane")
        .and_then(|d| d.get("interface"))
        .and_then(|i| i.as_str())
        .unwrap_or(DEFAULT_INTERFACE)
        .to_owned();
    netns::check_ifname(&iface).map_err(|e| bad(e.to_string()))?;
    let mut vips = Vec::new();
    let mut targets = Vec::new();
    let services = value
        .get("services")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    for s in &services {
        let name = s.get("name").and_then(|n| n.as_str()).unwrap_or("?");
        let vip: IpAddr = s
            .get("vip")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("service {name:?} has no vip")))?
            .parse()
            .map_err(|e| bad(format!("service {name:?}: vip: {e}")))?;
        if !vips.contains(&vip) {
            vips.push(vip);
        }
        let udp = s.get("protocol").and_then(|p| p.as_str()) == Some("udp");
        // The first port of the first range: enough to reach the service.
        let port = s
            .get("ports")
            .and_then(|p| p.as_array())
            .and_then(|p| p.first())
            .and_then(|p| match p {
                toml::Value::Integer(i) => u16::try_from(*i).ok(),
                toml::Value::String(s) => s.split('-').next().and_then(|p| p.trim().parse().ok()),
                _ => None,
            })
            .ok_or_else(|| bad(format!("service {name:?}: no usable port")))?;
        targets.push(Target {
            service: name.to_owned(),
            addr: SocketAddr::new(vip, port),
            udp,
        });
    }
    Ok((vips, iface, targets))
}

/// `[dataplane] port` and `workers` of a config (`tap` and 1 when absent).
pub(super) fn read_port_kind(path: &Path) -> Result<(String, u16), LabError> {
    let text = std::fs::read_to_string(path).map_err(|e| LabError::Config {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let value: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| LabError::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    let dataplane = value.get("dataplane");
    let kind = dataplane
        .and_then(|d| d.get("port"))
        .and_then(|p| p.as_str())
        .unwrap_or("tap")
        .to_owned();
    let workers = dataplane
        .and_then(|d| d.get("workers"))
        .and_then(|w| w.as_integer())
        .and_then(|w| u16::try_from(w).ok())
        .unwrap_or(1)
        .max(1);
    Ok((kind, workers))
}

/// A service of the config the demo sends traffic to.
#[derive(Clone, Debug)]
pub struct Target {
    /// Service name.
    pub service: String,
    /// VIP and first port.
    pub addr: SocketAddr,
    /// UDP (echo) rather than TCP (HTTP).
    pub udp: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::BACKENDS;

    #[test]
    fn the_shipped_config_names_the_lab_backends() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb.toml");
        let (vips, iface, targets) = read_config(&path).unwrap();
        assert!(!vips.is_empty());
        assert!(!iface.is_empty());
        assert!(targets.iter().any(|t| !t.udp) && targets.iter().any(|t| t.udp));
        let text = std::fs::read_to_string(&path).unwrap();
        for b in &BACKENDS {
            assert!(
                text.contains(b.mac),
                "lb.toml lacks the neighbor MAC of {}",
                b.name
            );
            assert!(text.contains(&b.v4.to_string()), "lb.toml lacks {}", b.v4);
        }
    }
}

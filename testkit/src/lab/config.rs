//! What the lab reads from a config: VIPs, the interface, the port kind and the services to reach.
//! Read leniently (plain TOML, not the control plane's schema) so the lab works with any config
//! `lb run` accepts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use super::{LabError, Request, DEFAULT_INTERFACE};
use crate::netns;

/// The config at `path` as plain TOML.
fn read_table(path: &Path) -> Result<toml::Table, LabError> {
    let bad = |message: String| LabError::Config {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    text.parse()
        .map_err(|e: toml::de::Error| bad(e.to_string()))
}

/// Service addresses of a config, read leniently (only `[[services]] vip`) so the lab works with
/// any config `lb run` accepts; and the TAP interface name.
pub(super) fn read_config(path: &Path) -> Result<(Vec<IpAddr>, String, Vec<Target>), LabError> {
    let bad = |message: String| LabError::Config {
        path: path.to_owned(),
        message,
    };
    let value = read_table(path)?;
    let dataplane = value.get("dataplane");
    let first = dataplane
        .and_then(|d| d.get("interfaces"))
        .and_then(|i| i.as_array())
        .and_then(|i| i.first())
        .and_then(|f| f.get("name"));
    let iface = first
        .or_else(|| dataplane.and_then(|d| d.get("interface")))
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
            request: None,
        });
    }
    targets.extend(http_targets(&value));
    Ok((vips, iface, targets))
}

/// One target per route of every `[[http]]` (at its first listen address): a request the route
/// matches (its first host, a wildcard's `*` as `demo`; its path; its header matches), so the
/// demo shows which backend answers each route.
fn http_targets(value: &toml::Table) -> Vec<Target> {
    let mut out = Vec::new();
    let listeners = value.get("http").and_then(|h| h.as_array());
    for h in listeners.into_iter().flatten() {
        let name = h.get("name").and_then(|n| n.as_str()).unwrap_or("?");
        let Some(addr) = h
            .get("listen")
            .and_then(|l| l.as_array())
            .and_then(|l| l.first())
            .and_then(|a| a.as_str())
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            continue;
        };
        let routes = h.get("routes").and_then(|r| r.as_array());
        for r in routes.into_iter().flatten() {
            let host = r
                .get("hosts")
                .and_then(|h| h.as_array())
                .and_then(|h| h.first())
                .and_then(|h| h.as_str())
                .map_or_else(
                    || "demo.lab.test".to_owned(),
                    |h| h.replacen('*', "demo", 1),
                );
            let path = r.get("path").and_then(|p| p.as_str()).unwrap_or("/");
            let mut request = Request::new(&host, path);
            let mut shown = format!("{host}{path}");
            let headers = r.get("headers").and_then(|h| h.as_table());
            for (n, v) in headers.into_iter().flatten() {
                let v = v.as_str().unwrap_or_default();
                shown.push_str(&format!(" {n}: {v}"));
                request = request.header(n, v);
            }
            out.push(Target {
                service: format!("{name} {shown}"),
                addr,
                udp: false,
                request: Some(request),
            });
        }
    }
    out
}

/// The inside interface of a two-armed config: the second of `[[dataplane.interfaces]]`, with
/// its name and our first address of each family there (the backends' gateway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Inside {
    /// Interface name.
    pub name: String,
    /// Our IPv4 address on it.
    pub v4: Option<Ipv4Addr>,
    /// Our IPv6 address on it.
    pub v6: Option<Ipv6Addr>,
}

/// [`Inside`] of the config at `path`; `None` for a one-armed config.
pub(super) fn read_inside(path: &Path) -> Result<Option<Inside>, LabError> {
    let bad = |message: String| LabError::Config {
        path: path.to_owned(),
        message,
    };
    let value = read_table(path)?;
    let Some(second) = value
        .get("dataplane")
        .and_then(|d| d.get("interfaces"))
        .and_then(|i| i.as_array())
        .and_then(|i| i.get(1))
    else {
        return Ok(None);
    };
    let name = second
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| bad("the second [[dataplane.interfaces]] has no name".into()))?
        .to_owned();
    netns::check_ifname(&name).map_err(|e| bad(e.to_string()))?;
    let addrs: Vec<IpAddr> = second
        .get("addresses")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    Ok(Some(Inside {
        name,
        v4: addrs.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }),
        v6: addrs.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        }),
    }))
}

/// `[dataplane] port` and `workers` of a config (`tap` and 1 when absent).
pub(super) fn read_port_kind(path: &Path) -> Result<(String, u16), LabError> {
    let value = read_table(path)?;
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
    /// An `[[http]]` route: the request that matches it (else a plain `GET /`).
    pub request: Option<Request>,
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
        // Every route of the HTTP service is a target, with the host and headers it matches.
        let http: Vec<&Target> = targets.iter().filter(|t| t.request.is_some()).collect();
        assert_eq!(http.len(), 3, "{http:?}");
        let api = http
            .iter()
            .find(|t| t.service.ends_with("www.lab.test/api"));
        assert!(api.is_some(), "{http:?}");
        let by_header = http
            .iter()
            .find_map(|t| t.request.as_ref().filter(|r| !r.headers.is_empty()));
        assert_eq!(
            by_header.map(|r| (r.host.as_str(), r.headers.clone())),
            Some(("demo.lab.test", vec![("X-Pod".to_owned(), "b".to_owned())]))
        );
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

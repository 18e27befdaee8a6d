//! What reloads removed and still drains: IPVS keeps a removed destination (its "trash") while
//! its connections live; here a removed service or backend stays in the table at weight 0 for
//! `[dataplane] drain_timeout`, so its tracked flows keep their backend and a hitless reload is
//! one, and leaves when the time is up or when a reload brings it back (its flows never notice).
//!
//! Pure: the set, the configs before and after a reload and the time in, the next set out.

use std::time::Instant;

use crate::compile::{Draining, DrainingBackend};
use crate::config::{self, Config, OnRemove};

/// Removed services and backends with the time each stops draining.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct DrainSet {
    /// Newest removal first, as [`Draining::services`] wants them.
    services: Vec<(config::Service, Instant)>,
    backends: Vec<(DrainingBackend, Instant)>,
}

/// The same service: a reload that changes its VIP, protocol or ports removes the old one.
fn same_service(a: &config::Service, b: &config::Service) -> bool {
    a.name == b.name && a.vip == b.vip && a.protocol == b.protocol && a.ports == b.ports
}

fn same_backend(a: &config::Backend, b: &config::Backend) -> bool {
    a.addr == b.addr && a.port.unwrap_or(0) == b.port.unwrap_or(0)
}

fn has_backend(svc: &config::Service, b: &config::Backend) -> bool {
    svc.pools
        .iter()
        .flat_map(|p| &p.backends)
        .any(|x| same_backend(x, b))
}

/// `pool` without its backends: what a draining backend keeps of it.
fn pool_shell(pool: &config::Pool) -> config::Pool {
    config::Pool {
        backends: Vec::new(),
        ..pool.clone()
    }
}

/// Puts draining backend `d` back into its pool of `svc` (a removed service takes its
/// draining backends along).
fn fold(svc: &mut config::Service, d: &DrainingBackend) {
    if has_backend(svc, &d.backend) {
        return;
    }
    match svc
        .pools
        .iter_mut()
        .find(|p| p.name == d.pool.name && p.mode == d.pool.mode)
    {
        Some(p) => p.backends.push(d.backend.clone()),
        None => svc.pools.push(config::Pool {
            backends: vec![d.backend.clone()],
            ..d.pool.clone()
        }),
    }
}

/// Backends of `old` that `new` (the same service) no longer has, draining until `until`.
fn removed_backends<'a>(
    old: &'a config::Service,
    new: &'a config::Service,
    until: Instant,
) -> impl Iterator<Item = (DrainingBackend, Instant)> + 'a {
    old.pools.iter().flat_map(move |p| {
        p.backends
            .iter()
            .filter(|b| !has_backend(new, b))
            .map(move |b| {
                let d = DrainingBackend {
                    service: old.name.clone(),
                    pool: pool_shell(p),
                    backend: b.clone(),
                };
                (d, until)
            })
    })
}

impl DrainSet {
    /// The set once `new` replaces `old` at `now`: what `new` removes drains until `now` plus
    /// its `drain_timeout`, what it brings back stops draining (a re-added service's backends
    /// that did not come back drain on), the rest keeps its time. Empty with
    /// `on_remove = "reset"`.
    pub(super) fn after_reload(&self, old: &Config, new: &Config, now: Instant) -> DrainSet {
        let dp = &new.dataplane;
        if dp.on_remove == OnRemove::Reset {
            return DrainSet::default();
        }
        let until = now.checked_add(dp.drain_timeout).unwrap_or(now);
        let in_new = |s: &config::Service| new.services.iter().find(|n| same_service(n, s));
        let mut out = DrainSet::default();
        // Removed by this reload: newest, so first.
        let mut gone_now: Vec<&str> = Vec::new();
        for o in &old.services {
            match in_new(o) {
                Some(n) => out.backends.extend(removed_backends(o, n, until)),
                None => {
                    let mut s = o.clone();
                    for (d, _) in self.backends.iter().filter(|(d, _)| d.service == o.name) {
                        fold(&mut s, d);
                    }
                    gone_now.push(&o.name);
                    out.services.push((s, until));
                }
            }
        }
        for (s, t) in &self.services {
            match in_new(s) {
                Some(n) => out.backends.extend(removed_backends(s, n, *t)),
                None => out.services.push((s.clone(), *t)),
            }
        }
        for (d, t) in &self.backends {
            let back = new
                .services
                .iter()
                .any(|n| n.name == d.service && has_backend(n, &d.backend));
            let folded = gone_now.contains(&d.service.as_str());
            let twice = out
                .backends
                .iter()
                .any(|(e, _)| e.service == d.service && same_backend(&e.backend, &d.backend));
            if !back && !folded && !twice {
                out.backends.push((d.clone(), *t));
            }
        }
        out
    }

    /// The set once each service of `new` replaces the one of the same name in `old` (the same
    /// services, only their backends changed) at `now`: as [`DrainSet::after_reload`] for these
    /// services alone, the rest of the set as it is.
    pub(super) fn after_patch(
        &self,
        old: &[&config::Service],
        new: &[&config::Service],
        dp: &config::Dataplane,
        now: Instant,
    ) -> DrainSet {
        if dp.on_remove == OnRemove::Reset {
            return DrainSet::default();
        }
        let until = now.checked_add(dp.drain_timeout).unwrap_or(now);
        let mut out = DrainSet {
            services: self.services.clone(),
            backends: Vec::new(),
        };
        for (o, n) in old.iter().zip(new) {
            out.backends.extend(removed_backends(o, n, until));
        }
        for (d, t) in &self.backends {
            let back = new
                .iter()
                .any(|n| n.name == d.service && has_backend(n, &d.backend));
            let twice = out
                .backends
                .iter()
                .any(|(e, _)| e.service == d.service && same_backend(&e.backend, &d.backend));
            if !back && !twice {
                out.backends.push((d.clone(), *t));
            }
        }
        out
    }

    /// Names of the live services whose draining backends are gone by `now` (what
    /// [`DrainSet::expire`] would change), or `None` when a draining service goes too.
    pub(super) fn expiring_backends(&self, now: Instant) -> Option<Vec<String>> {
        if self.services.iter().any(|(_, t)| *t <= now) {
            return None;
        }
        let mut names: Vec<String> = self
            .backends
            .iter()
            .filter(|(_, t)| *t <= now)
            .map(|(d, _)| d.service.clone())
            .collect();
        names.sort();
        names.dedup();
        Some(names)
    }

    /// Forgets what stopped draining by `now`; true when something left.
    pub(super) fn expire(&mut self, now: Instant) -> bool {
        let before = self.services.len() + self.backends.len();
        self.services.retain(|(_, t)| *t > now);
        self.backends.retain(|(_, t)| *t > now);
        before != self.services.len() + self.backends.len()
    }

    /// What compile adds to the table.
    pub(super) fn draining(&self) -> Draining {
        Draining {
            services: self.services.iter().map(|(s, _)| s.clone()).collect(),
            backends: self.backends.iter().map(|(b, _)| b.clone()).collect(),
        }
    }

    /// Names of the draining services, and of the draining backends (a draining service's
    /// backends included), for the admin API.
    pub(super) fn names(&self) -> (Vec<String>, Vec<config::BackendKey>) {
        let services = self.services.iter().map(|(s, _)| s.name.clone()).collect();
        let mut backends: Vec<config::BackendKey> = self
            .backends
            .iter()
            .map(|(d, _)| config::BackendKey {
                service: d.service.clone(),
                addr: d.backend.addr,
                port: d.backend.port.unwrap_or(0),
            })
            .collect();
        for (s, _) in &self.services {
            backends.extend(
                s.pools
                    .iter()
                    .flat_map(|p| &p.backends)
                    .map(|b| config::BackendKey::of(s, b)),
            );
        }
        (services, backends)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    const HEAD: &str = r#"
[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1"]
gateway_mac = "02:00:00:00:00:fe"
ON_REMOVE
"#;

    /// A service on `198.18.0.<vip>` port 80 with backends `198.18.1.<h>:8080`.
    fn svc(name: &str, vip: u8, hosts: &[u8]) -> String {
        let list: Vec<String> = hosts
            .iter()
            .map(|h| format!("{{ addr = \"198.18.1.{h}\", port = 8080 }}"))
            .collect();
        format!(
            "\n[[services]]\nname = \"{name}\"\nvip = \"198.18.0.{vip}\"\nprotocol = \"tcp\"\n\
             ports = [\"80\"]\n[[services.pools]]\nname = \"pods\"\nmode = \"fullnat\"\n\
             snat = [\"198.18.0.2\"]\nbackends = [{}]\n",
            list.join(", ")
        )
    }

    fn cfg_with(on_remove: &str, services: &[String]) -> Config {
        let text = format!(
            "{}{}",
            HEAD.replace("ON_REMOVE", on_remove),
            services.concat()
        );
        Config::from_toml_str(&text, Path::new("t.toml"))
            .unwrap_or_else(|r| panic!("{}", r.render()))
    }

    fn cfg(services: &[String]) -> Config {
        cfg_with("", services)
    }

    fn names(d: &DrainSet) -> (Vec<String>, Vec<String>) {
        let (s, b) = d.names();
        (s, b.iter().map(|k| k.to_string()).collect())
    }

    #[test]
    fn removed_services_and_backends_drain_until_they_come_back_or_time_out() {
        let t0 = Instant::now();
        let full = cfg(&[svc("web", 100, &[10, 11]), svc("api", 101, &[10])]);
        let no_api = cfg(&[svc("web", 100, &[10, 11])]);
        let d = DrainSet::default().after_reload(&full, &no_api, t0);
        assert_eq!(
            names(&d),
            (vec!["api".into()], vec!["api/198.18.1.10:8080".into()])
        );
        assert_eq!(d.draining().services[0].name, "api");

        // A backend of web goes too, a second later.
        let t1 = t0 + Duration::from_secs(1);
        let web_one = cfg(&[svc("web", 100, &[10])]);
        let d = d.after_reload(&no_api, &web_one, t1);
        assert_eq!(
            names(&d),
            (
                vec!["api".into()],
                vec!["web/198.18.1.11:8080".into(), "api/198.18.1.10:8080".into()]
            )
        );
        let b = &d.draining().backends[0];
        assert_eq!((b.service.as_str(), b.pool.name.as_str()), ("web", "pods"));
        assert!(b.pool.backends.is_empty());

        // The file is restored: nothing drains any more.
        let d2 = d.after_reload(&web_one, &full, t1);
        assert_eq!(d2, DrainSet::default());

        // Not restored: api leaves 15 minutes (the default) after its removal, web's backend a
        // second later.
        let mut d3 = d.clone();
        assert!(!d3.expire(t0 + Duration::from_secs(899)));
        assert!(d3.expire(t0 + Duration::from_secs(900)));
        assert_eq!(names(&d3), (vec![], vec!["web/198.18.1.11:8080".into()]));
        assert!(d3.expire(t1 + Duration::from_secs(900)));
        assert_eq!(d3, DrainSet::default());
    }

    #[test]
    fn a_removed_service_takes_its_draining_backends_along_and_gives_them_back() {
        let t0 = Instant::now();
        let two = cfg(&[svc("web", 100, &[10, 11])]);
        let one = cfg(&[svc("web", 100, &[10])]);
        let none = cfg(&[]);
        let d = DrainSet::default().after_reload(&two, &one, t0);
        let d = d.after_reload(&one, &none, t0 + Duration::from_secs(5));
        // Both backends drain inside the draining service.
        let (s, b) = names(&d);
        assert_eq!(s, vec!["web"]);
        assert_eq!(b.len(), 2, "{b:?}");
        assert!(d.draining().backends.is_empty());
        // web comes back with one backend: the other drains on, alone.
        let d = d.after_reload(&none, &one, t0 + Duration::from_secs(6));
        assert_eq!(names(&d), (vec![], vec!["web/198.18.1.11:8080".into()]));
    }

    #[test]
    fn a_service_that_moves_drains_at_its_old_place() {
        let t0 = Instant::now();
        let old = cfg(&[svc("web", 100, &[10])]);
        let moved = cfg(&[svc("web", 105, &[10])]);
        let d = DrainSet::default().after_reload(&old, &moved, t0);
        let drained = d.draining();
        assert_eq!(drained.services.len(), 1);
        assert_eq!(drained.services[0].vip.to_string(), "198.18.0.100");
    }

    #[test]
    fn reset_drains_nothing() {
        let t0 = Instant::now();
        let full = cfg(&[svc("web", 100, &[10, 11]), svc("api", 101, &[10])]);
        let d = DrainSet::default().after_reload(&full, &cfg(&[svc("web", 100, &[10])]), t0);
        assert_ne!(d, DrainSet::default());
        let reset = cfg_with("on_remove = \"reset\"", &[svc("web", 100, &[10])]);
        assert_eq!(d.after_reload(&full, &reset, t0), DrainSet::default());
        let short = cfg_with("drain_timeout = \"2s\"", &[svc("web", 100, &[10])]);
        let mut d = DrainSet::default().after_reload(&full, &short, t0);
        assert!(d.expire(t0 + Duration::from_secs(2)));
        assert_eq!(d, DrainSet::default());
    }
}

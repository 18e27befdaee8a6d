//! `[services.health_check]` and `[services.passive]`: probe timing, thresholds and requests, and
//! passive ejection.

use std::fmt;

use super::super::schema::{
    default_check_path, default_expect_status, CheckKind, HealthCheck, Passive, Protocol, Service,
};
use crate::diag::Problem;

impl HealthCheck {
    /// The probe's timing, thresholds, port and (for http) request, of service `svc` at `path`.
    pub(super) fn validate(&self, svc: &Service, path: &str, out: &mut Vec<Problem>) {
        let at = format!("service {} health_check", svc.name);
        let mut push = |key: &str, message: String, hint: Option<&str>| {
            let p = Problem::new(format!("{path}.{key}"), format!("{at}: {message}"));
            out.push(match hint {
                Some(h) => p.hint(h),
                None => p,
            });
        };
        if self.interval.is_zero() {
            push(
                "interval",
                "interval must be above 0".into(),
                Some("e.g. \"2s\""),
            );
        }
        if self.timeout.is_zero() {
            push(
                "timeout",
                "timeout must be above 0".into(),
                Some("e.g. \"1s\""),
            );
        } else if !self.interval.is_zero() && self.timeout > self.interval {
            push(
                "timeout",
                format!(
                    "timeout {:?} is longer than the interval {:?}",
                    self.timeout, self.interval
                ),
                Some(
                    "a probe must end before the next one starts: lower timeout or raise interval",
                ),
            );
        }
        if !self.interval.is_zero() && self.jitter >= self.interval {
            push(
                "jitter",
                format!(
                    "jitter {:?} is not below the interval {:?}",
                    self.jitter, self.interval
                ),
                Some("jitter only spreads probes inside an interval, e.g. a tenth of it"),
            );
        }
        if self.rise == 0 {
            push("rise", "rise must be at least 1".into(), None);
        }
        if self.fall == 0 {
            push("fall", "fall must be at least 1".into(), None);
        }
        match self.port {
            Some(0) => push(
                "port",
                "port 0 is not a port".into(),
                Some("leave port out to probe each backend's own port"),
            ),
            Some(_) => {}
            None if svc.ports.is_empty() => {
                if let Some(b) = svc
                    .pools
                    .iter()
                    .flat_map(|p| &p.backends)
                    .find(|b| b.port.is_none())
                {
                    push(
                        "port",
                        format!(
                            "no port to probe backend {}: it has no port and the service serves every port",
                            b.addr
                        ),
                        Some("set port in the health check"),
                    );
                }
            }
            None => {}
        }
        let bad_text = |s: &str| s.chars().any(|c| c.is_whitespace() || c.is_control());
        match self.kind {
            CheckKind::Http => {
                if !self.path.starts_with('/') || bad_text(&self.path) {
                    push(
                        "path",
                        format!("path {:?} is not a request path", self.path),
                        Some("a path starts with '/' and has no spaces, e.g. \"/healthz\""),
                    );
                }
                if let Some(h) = &self.host {
                    if h.is_empty() || bad_text(h) {
                        push(
                            "host",
                            format!("host {h:?} is not a Host header value"),
                            Some("a name like \"web.example\", no spaces"),
                        );
                    }
                }
            }
            CheckKind::Tcp => {
                // These have defaults, so a value other than the default was set by hand.
                let only_http = "only used by http checks";
                let hint = Some("set kind = \"http\", or remove it");
                if self.path != default_check_path() {
                    push("path", format!("path is {only_http}"), hint);
                }
                if self.host.is_some() {
                    push("host", format!("host is {only_http}"), hint);
                }
                if self.expect_status != default_expect_status() {
                    push(
                        "expect_status",
                        format!("expect_status is {only_http}"),
                        hint,
                    );
                }
            }
        }
    }
}

impl Passive {
    /// Windows, back-off and thresholds of service `svc`'s passive ejection at `path`.
    pub(super) fn validate(
        &self,
        svc: &Service,
        at: &dyn fmt::Display,
        path: &str,
        out: &mut Vec<Problem>,
    ) {
        if svc.protocol == Protocol::Udp {
            out.push(
                Problem::new(
                    path,
                    format!("{at}: passive ejection counts TCP resets and SYNs; a udp service has neither"),
                )
                .hint("remove [services.passive], or use an active health_check"),
            );
        }
        if self.window.is_zero() {
            out.push(Problem::new(
                format!("{path}.window"),
                format!("{at}: passive window must be above 0"),
            ));
        }
        if self.backoff.is_zero() {
            out.push(
                Problem::new(
                    format!("{path}.backoff"),
                    format!("{at}: passive backoff must be above 0"),
                )
                .hint(
                    "an ejected backend stays out this long before it is tried again, e.g. \"30s\"",
                ),
            );
        }
        if self.resets == 0 && self.unanswered_syns == 0 {
            out.push(
                Problem::new(
                    path,
                    format!("{at}: passive has every threshold at 0, so it never ejects"),
                )
                .hint("set resets or unanswered_syns above 0, or remove [services.passive]"),
            );
        }
    }
}

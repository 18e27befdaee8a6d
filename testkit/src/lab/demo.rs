//! `lb lab demo`: build the lab, send requests to every service of a config, report the spread.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::config::read_config;
use super::{
    client_v4, client_v6, http_get, http_request, step, udp_echo, Lab, LabError, LabOptions,
    Target, CLIENT_ADDRS, REQUEST_TIMEOUT,
};

/// What `lb lab demo` measured.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// Per service: answers per backend name (`"(failed)"` counts errors and timeouts).
    pub spread: Vec<(Target, BTreeMap<String, usize>)>,
    /// The balancer's output when it stopped (its final counters).
    pub lb_output: String,
    /// Namespaces the lab used (all deleted by the time the report is returned).
    pub namespaces: Vec<String>,
}

/// Builds the lab for `config`, runs `lb run` in it, sends `requests` new connections (TCP
/// services: HTTP GET; UDP services: one datagram; `[[http]]` routes: a GET the route matches)
/// to every service of the config from the
/// client's addresses in turn, stops the balancer and tears everything down. `stop` (set by a
/// signal handler) ends the run early, still tearing down.
pub fn demo(
    lb_bin: &Path,
    config: &Path,
    requests: usize,
    stop: &AtomicBool,
) -> Result<DemoReport, LabError> {
    let (_, _, targets) = read_config(config)?;
    let opts = LabOptions {
        prefix: "lbdemo".into(),
        lb_bin: lb_bin.to_owned(),
        config: config.to_owned(),
    };
    let mut lab = Lab::up(&opts)?;
    let interrupted = || {
        if stop.load(Ordering::Relaxed) {
            Err(LabError::Interrupted)
        } else {
            Ok(())
        }
    };
    interrupted()?;
    lab.start_lb(Duration::from_secs(15))?;
    let mut report = DemoReport {
        namespaces: lab.namespaces.iter().map(|n| n.name().to_owned()).collect(),
        ..DemoReport::default()
    };
    for t in targets {
        let mut spread = BTreeMap::new();
        let client = lab.client()?;
        let r = client.enter_on_thread(|| {
            for i in 0..requests {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = u8::try_from(i % usize::from(CLIENT_ADDRS)).unwrap_or(0);
                let src = match t.addr {
                    SocketAddr::V4(_) => IpAddr::V4(client_v4(k)),
                    SocketAddr::V6(_) => IpAddr::V6(client_v6(k)),
                };
                let answer = match &t.request {
                    _ if t.udp => udp_echo(Some(src), t.addr, REQUEST_TIMEOUT),
                    Some(req) => http_request(Some(src), t.addr, req, REQUEST_TIMEOUT),
                    None => http_get(Some(src), t.addr, REQUEST_TIMEOUT),
                };
                let key = match answer {
                    Ok(name) => name,
                    Err(e) => {
                        tracing::debug!(error = %e, target = %t.addr, "request failed");
                        "(failed)".to_owned()
                    }
                };
                *spread.entry(key).or_insert(0usize) += 1;
            }
        });
        step(|| "enter the client namespace".to_owned(), r)?;
        report.spread.push((t, spread));
        interrupted()?;
    }
    if let Some(exit) = lab.stop_lb() {
        report.lb_output = exit.output;
    }
    drop(lab);
    Ok(report)
}

//! The L7 proxy on kernel sockets with one listener and one upstream, for benchmarks and
//! profiling (`perf/compare-l7` runs it; `lb run` does not serve `[[http]]` yet).
//!
//! Usage: `l7_proxy <listen addr> <upstream addr> <workers> [cores] [cert.pem key.pem]`
//! (`cores`: comma-separated, worker `i` pinned to the `i`-th, `-` for none; with a certificate
//! and key the listener terminates TLS, without session resumption). Prints the bound address and the counters every
//! second on stderr; runs until killed.

use arc_swap::ArcSwap;
use dataplane::l7::route::{
    BackendRef, EndpointSpec, Origin, PathMatch, Policy, RouteSpec, ServiceSpec,
};
use dataplane::l7::tls::{server_config, CertSpec, TlsSpec};
use dataplane::l7::{ConnConfig, RouteTable, TableSpec};
use dataplane::net::{ListenerSpec, Proxy, ProxyConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str =
    "usage: l7_proxy <listen addr> <upstream addr> <workers> [cores|-] [cert.pem key.pem]";

fn fail(why: &str) -> ! {
    eprintln!("l7_proxy: {why}\n{USAGE}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        fail("missing arguments");
    }
    let listen: SocketAddr = args[0]
        .parse()
        .unwrap_or_else(|_| fail("bad listen address"));
    let upstream: SocketAddr = args[1]
        .parse()
        .unwrap_or_else(|_| fail("bad upstream address"));
    let workers: usize = args[2].parse().unwrap_or_else(|_| fail("bad worker count"));
    let cores: Vec<usize> = match args.get(3).map(String::as_str) {
        None | Some("-") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|c| c.parse().unwrap_or_else(|_| fail("bad core list")))
            .collect(),
    };
    let tls = match (args.get(4), args.get(5)) {
        (Some(cert), Some(key)) => {
            let spec = TlsSpec {
                certs: vec![CertSpec {
                    names: vec!["bench.test".into()],
                    cert: PathBuf::from(cert),
                    key: PathBuf::from(key),
                }],
            };
            let config = server_config(&spec).unwrap_or_else(|e| fail(&e.to_string()));
            // Every handshake a full one, like the peer proxies in perf/compare-l7: wrk keeps
            // its session across reconnects and would resume with our tickets.
            let mut config = (*config).clone();
            config.send_tls13_tickets = 0;
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            Some(Arc::new(config))
        }
        (None, None) => None,
        _ => fail("a certificate needs its key"),
    };
    let spec = TableSpec {
        services: vec![ServiceSpec {
            name: "upstream".into(),
            endpoints: vec![EndpointSpec {
                addr: upstream,
                weight: 1,
            }],
            policy: Policy::RoundRobin,
            upstream: Default::default(),
        }],
        routes: vec![RouteSpec {
            cookies: Vec::new(),
            origin: Origin::Ingress,
            hosts: vec![],
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: vec![],
            backends: vec![BackendRef {
                service: "upstream".into(),
                weight: 1,
            }],
            redirect: None,
            request_headers: None,
        }],
        default_backend: None,
    };
    let routes = Arc::new(ArcSwap::from_pointee(RouteTable::compile(&spec)));
    let config = ProxyConfig {
        listeners: vec![ListenerSpec { addr: listen, tls }],
        workers,
        cores,
        conn: ConnConfig::default(),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start(config, routes).unwrap_or_else(|e| fail(&format!("start: {e}")));
    eprintln!("l7_proxy: listening on {}", proxy.local_addrs()[0]);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let c = proxy.counters();
        eprintln!(
            "l7_proxy: accepted {} answers {:?} backend opened {} reused {} failed {} tls_failed {}",
            c.accepted, c.answers, c.backend_opened, c.backend_reused, c.backend_failed, c.tls_failed
        );
    }
}

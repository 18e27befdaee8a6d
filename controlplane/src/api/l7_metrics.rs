//! Prometheus text for the L7 proxies: one [`L7Sample`] per `[[http]]` listener (its name and
//! what its [`Proxy`] counted), encoded as the `lb_http_*` families with a `listener` label.
//!
//! Several listeners go into one set of families (one `# TYPE` line each, as the text format
//! wants), so [`register`] takes them all at once. The numbers are cumulative in the proxy
//! (requests by route and backend are kept by name across reloads), so they only grow while the
//! proxy runs. `docs/ADMIN.md` lists the names and labels.

use dataplane::net::metrics::{HistogramCounts, RouteCounts, LATENCY_BUCKETS_US, REJECT_REASONS};
use dataplane::net::{Counters, Proxy, RequestCounts};

use crate::control::HttpHandle;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// One L7 listener's numbers, read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L7Sample {
    /// The `[[http]]` name (the `listener` label).
    pub listener: String,
    /// Every worker's connection counters, summed.
    pub counters: Counters,
    /// Requests by route and backend, latencies by route.
    pub requests: RequestCounts,
}

impl L7Sample {
    /// Reads `proxy`'s counters now, for the listener named `listener`.
    pub fn of(listener: &str, proxy: &Proxy) -> L7Sample {
        L7Sample {
            listener: listener.to_string(),
            counters: proxy.counters(),
            requests: proxy.requests().read(),
        }
    }

    /// Reads the counters of a running `[[http]]` as the control plane hands it out.
    pub fn of_handle(handle: &HttpHandle) -> L7Sample {
        L7Sample {
            listener: handle.listener.clone(),
            counters: handle.counters(),
            requests: handle.requests.read(),
        }
    }
}

/// Adds the `lb_http_*` families of `samples` to `reg` (prefix `lb` expected, as
/// [`super::metrics`] uses).
pub fn register(reg: &mut Registry, samples: Vec<L7Sample>) {
    reg.register_collector(Box::new(L7Collector(samples)));
}

/// The exposition of `samples` alone (Prometheus text format 0.0.4).
pub fn render(samples: Vec<L7Sample>) -> String {
    let mut reg = Registry::with_prefix("lb");
    register(&mut reg, samples);
    let mut out = String::new();
    if let Err(e) = prometheus_text::encode(&mut out, &reg) {
        tracing::warn!("l7 metrics encoding stopped early: {e}");
    }
    out
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Encodes the samples taken at registration (a registry is built per scrape).
#[derive(Debug)]
struct L7Collector(Vec<L7Sample>);

type Family<'e> = MetricEncoder<'e>;

/// An unlabelled-but-for-`listener` counter: name, help and its value in [`Counters`].
type Single = (&'static str, &'static str, fn(&Counters) -> u64);

/// One counter row of a family.
fn count(f: &mut Family<'_>, labels: &impl EncodeLabelSet, v: u64) -> Result<(), std::fmt::Error> {
    f.encode_family(labels)?
        .encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

/// One histogram row of a family: bucket bounds in seconds.
fn histogram(
    f: &mut Family<'_>,
    labels: &impl EncodeLabelSet,
    h: &HistogramCounts,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
        .iter()
        .map(|&us| us as f64 / 1e6)
        .chain([f64::INFINITY])
        .zip(h.buckets)
        .collect();
    f.encode_family(labels)?.encode_histogram::<NoLabelSet>(
        h.sum_us as f64 / 1e6,
        h.count(),
        &buckets,
        None,
    )
}

fn duration(r: &RouteCounts) -> &HistogramCounts {
    &r.duration
}

fn first_byte(r: &RouteCounts) -> &HistogramCounts {
    &r.head
}

impl Collector for L7Collector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let samples = &self.0;
        let mut f = enc.encode_descriptor(
            "http_requests",
            "HTTP requests answered, by route (hosts and path as configured; none: no backend picked), backend (addr:port; none: answered by the proxy before any backend) and status class.",
            None,
            MetricType::Counter,
        )?;
        for s in samples {
            for p in &s.requests.pairs {
                for (class, &v) in CLASSES.iter().zip(&p.classes) {
                    let labels = [
                        ("listener", s.listener.as_str()),
                        ("route", &p.route),
                        ("backend", &p.backend),
                        ("class", class),
                    ];
                    count(&mut f, &labels, v)?;
                }
            }
        }
        for (name, help, pick) in [
            (
                "http_request_duration_seconds",
                "From a request's head read to the end of its response (queued whole, or cut), by route.",
                duration as fn(&RouteCounts) -> &HistogramCounts,
            ),
            (
                "http_time_to_first_byte_seconds",
                "From a request's head read to its response head (or the proxy's own answer), by route.",
                first_byte,
            ),
        ] {
            let mut f = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for s in samples {
                for r in &s.requests.routes {
                    let labels = [("listener", s.listener.as_str()), ("route", &r.route)];
                    histogram(&mut f, &labels, pick(r))?;
                }
            }
        }
        let mut f = enc.encode_descriptor(
            "http_active_connections",
            "Client connections open now.",
            None,
            MetricType::Gauge,
        )?;
        for s in samples {
            let labels = [("listener", s.listener.as_str())];
            f.encode_family(&labels)?.encode_gauge(&s.counters.active)?;
        }
        let singles: [Single; 3] = [
            (
                "http_connections",
                "Client connections accepted (those closed at once for over_capacity included).",
                |c| c.accepted,
            ),
            (
                "http_tls_failures",
                "TLS handshakes or sessions that failed.",
                |c| c.tls_failed,
            ),
            (
                "http_over_capacity",
                "Client connections closed at accept: the worker had max_conns open.",
                |c| c.over_capacity,
            ),
        ];
        for (name, help, value) in singles {
            let mut f = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in samples {
                let labels = [("listener", s.listener.as_str())];
                count(&mut f, &labels, value(&s.counters))?;
            }
        }
        let mut f = enc.encode_descriptor(
            "http_backend_connections",
            "Backend connections by result: opened (new), reused (taken from the pool for a request), failed (could not connect).",
            None,
            MetricType::Counter,
        )?;
        for s in samples {
            let c = &s.counters;
            for (result, v) in [
                ("opened", c.backend_opened),
                ("reused", c.backend_reused),
                ("failed", c.backend_failed),
            ] {
                let labels = [("listener", s.listener.as_str()), ("result", result)];
                count(&mut f, &labels, v)?;
            }
        }
        let mut f = enc.encode_descriptor(
            "http_rejections",
            "Requests refused by the proxy (4xx/5xx answered, connection closed), by reason.",
            None,
            MetricType::Counter,
        )?;
        for s in samples {
            for (reason, label) in REJECT_REASONS {
                let labels = [("listener", s.listener.as_str()), ("reason", label)];
                count(&mut f, &labels, s.counters.rejected(reason))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwap;
    use dataplane::l7::route::{BackendRef, EndpointSpec, Origin, PathMatch, Policy, RouteSpec};
    use dataplane::l7::route::{ServiceSpec, TableSpec};
    use dataplane::l7::RouteTable;
    use dataplane::net::{ListenerSpec, ProxyConfig};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::time::Duration;

    /// A keep-alive backend on loopback: `200 ok` for every request, after 30 ms for paths
    /// under `/slow`, and `500` for paths under `/err`.
    fn backend() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || serve(stream));
            }
        });
        addr
    }

    fn serve(stream: TcpStream) {
        let mut out = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            // Heads only (the test sends no bodies): skip to the blank line.
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                if h == "\r\n" {
                    break;
                }
            }
            if path.starts_with("/slow") {
                std::thread::sleep(Duration::from_millis(30));
            }
            let status = if path.starts_with("/err") {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
            if out.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn route(host: &str, path: &str, service: &str) -> RouteSpec {
        RouteSpec {
            cookies: Vec::new(),
            origin: Origin::Ingress,
            hosts: vec![host.into()],
            path: PathMatch::Prefix(path.into()),
            method: None,
            headers: vec![],
            backends: vec![BackendRef {
                service: service.into(),
                weight: 1,
            }],
            redirect: None,
            request_headers: None,
        }
    }

    fn table(api: SocketAddr, web: SocketAddr, extra: bool) -> RouteTable {
        let service = |name: &str, addr| ServiceSpec {
            name: name.into(),
            endpoints: vec![EndpointSpec { addr, weight: 1 }],
            policy: Policy::RoundRobin,
            upstream: Default::default(),
        };
        let mut routes = vec![route("a.test", "/api", "api"), route("a.test", "/", "web")];
        if extra {
            routes.push(route("b.test", "/", "web"));
        }
        RouteTable::compile(&TableSpec {
            services: vec![service("api", api), service("web", web)],
            routes,
            default_backend: None,
        })
    }

    /// Sends `request` and reads one response; its status.
    fn ask(c: &mut TcpStream, request: &str) -> u16 {
        c.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            c.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        c.read_exact(&mut body).unwrap();
        head[9..12].parse().unwrap()
    }

    fn get(c: &mut TcpStream, host: &str, path: &str) -> u16 {
        ask(c, &format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n"))
    }

    /// The value of the exposition line that starts with `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn a_real_proxy_renders_requests_by_route_backend_and_class() {
        let (api, web) = (backend(), backend());
        let routes = Arc::new(ArcSwap::from_pointee(table(api, web, false)));
        let config = ProxyConfig {
            listeners: vec![ListenerSpec {
                addr: "127.0.0.1:0".parse().unwrap(),
                tls: None,
            }],
            workers: 2,
            ..ProxyConfig::default()
        };
        let proxy = Proxy::start(config, routes.clone()).unwrap();
        let addr = proxy.local_addrs()[0];
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(get(&mut c, "a.test", "/api/x"), 200);
        assert_eq!(get(&mut c, "a.test", "/api/y"), 200);
        assert_eq!(get(&mut c, "a.test", "/err"), 500);
        assert_eq!(get(&mut c, "a.test", "/slow"), 200);
        assert_eq!(get(&mut c, "nowhere.test", "/"), 404);
        // A reload that keeps both routes must not reset their counters.
        routes.store(Arc::new(table(api, web, true)));
        assert_eq!(get(&mut c, "a.test", "/api/z"), 200);
        assert_eq!(get(&mut c, "b.test", "/"), 200);
        // A bare LF: refused (400) and the connection closed.
        let mut bad = TcpStream::connect(addr).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(ask(&mut bad, "GET / HTTP/1.1\nhost: a.test\r\n\r\n"), 400);

        let text = render(vec![
            L7Sample::of("web", &proxy),
            L7Sample::of("copy", &proxy),
        ]);
        let api_l = format!("backend=\"{api}\"");
        let web_l = format!("backend=\"{web}\"");
        let series = |name: &str, labels: &str| value(&text, &format!("{name}{{{labels}}}"));
        let req = |route: &str, backend: &str, class: &str| {
            series(
                "lb_http_requests_total",
                &format!("listener=\"web\",route=\"{route}\",{backend},class=\"{class}\""),
            )
        };
        assert_eq!(req("a.test/api", &api_l, "2xx"), Some(3.0), "{text}");
        assert_eq!(req("a.test/api", &api_l, "5xx"), Some(0.0));
        assert_eq!(req("a.test/", &web_l, "5xx"), Some(1.0));
        assert_eq!(req("a.test/", &web_l, "2xx"), Some(1.0));
        assert_eq!(req("b.test/", &web_l, "2xx"), Some(1.0));
        assert_eq!(req("none", "backend=\"none\"", "4xx"), Some(2.0));
        let dur = |suffix: &str, route: &str, extra: &str| {
            series(
                &format!("lb_http_request_duration_seconds_{suffix}"),
                &format!("listener=\"web\",route=\"{route}\"{extra}"),
            )
        };
        assert_eq!(dur("count", "a.test/api", ""), Some(3.0));
        assert_eq!(dur("bucket", "a.test/api", ",le=\"+Inf\""), Some(3.0));
        // The slow request took at least its 30 ms: never in the 25 ms bucket.
        assert_eq!(dur("count", "a.test/", ""), Some(2.0));
        assert!(dur("bucket", "a.test/", ",le=\"0.025\"").unwrap() <= 1.0);
        assert!(dur("sum", "a.test/", "").unwrap() >= 0.03);
        assert_eq!(
            series(
                "lb_http_time_to_first_byte_seconds_count",
                "listener=\"web\",route=\"a.test/api\""
            ),
            Some(3.0)
        );
        let on = |name: &str, extra: &str| series(name, &format!("listener=\"web\"{extra}"));
        assert_eq!(on("lb_http_connections_total", ""), Some(2.0));
        assert_eq!(
            on("lb_http_rejections_total", ",reason=\"bare_lf\""),
            Some(1.0)
        );
        assert_eq!(
            on("lb_http_rejections_total", ",reason=\"obs_fold\""),
            Some(0.0)
        );
        // One client connection, keep-alive to each backend: later requests reuse them.
        let reused = on("lb_http_backend_connections_total", ",result=\"reused\"").unwrap();
        let opened = on("lb_http_backend_connections_total", ",result=\"opened\"").unwrap();
        assert_eq!(reused + opened, 6.0);
        assert!(reused >= 4.0, "{text}");
        assert_eq!(on("lb_http_tls_failures_total", ""), Some(0.0));
        assert_eq!(on("lb_http_over_capacity_total", ""), Some(0.0));
        assert!(on("lb_http_active_connections", "").is_some());
        // Two listeners share each family's one TYPE line.
        assert_eq!(
            text.matches("# TYPE lb_http_requests_total counter")
                .count(),
            1
        );
        assert!(text.contains("lb_http_requests_total{listener=\"copy\""));
        proxy.stop().unwrap();
    }
}

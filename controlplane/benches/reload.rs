//! Reload-to-all-workers latency: from the reload call (what SIGHUP or a file change triggers)
//! until every worker serves the new generation, for 1 service and for 1000 services x 10
//! backends. Two worker threads on in-memory ports, adaptive idle (they sleep when idle, as an
//! idle balancer does). Each reload changes one backend's weight in one service, the common edit.
//!
//! `cargo bench -p controlplane --bench reload` prints p50/p99/max per size.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use controlplane::config;
use controlplane::control::{self, ControlPlane};
use dataplane::port::mem::MemPort;
use dataplane::port::Port;
use dataplane::worker::{self, WorkerConfig};

/// A config of `services` services, each with `backends` fullnat backends; `bump` sets the
/// weight of the first backend of service `bump % services`.
fn config_text(services: usize, backends: usize, bump: usize) -> String {
    let mut s = String::from(
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\naddresses = [\"198.18.0.1\"]\n\
         gateway_mac = \"02:00:00:00:00:fe\"\nworkers = 2\n",
    );
    for i in 0..services {
        let vip = format!("198.19.{}.{}", i / 250, i % 250 + 1);
        let _ = write!(
            s,
            "\n[[services]]\nname = \"svc{i}\"\nvip = \"{vip}\"\nports = [\"80\"]\nprotocol = \"tcp\"\n\
             \n[[services.pools]]\nname = \"pods\"\nmode = \"fullnat\"\nsnat = [\"198.18.0.2\"]\nbackends = [\n"
        );
        for b in 0..backends {
            let weight = if i == bump % services && b == 0 {
                2 + bump % 7
            } else {
                1
            };
            let _ = writeln!(
                s,
                "  {{ addr = \"198.18.{}.{}\", port = 8080, weight = {weight} }},",
                16 + b,
                i % 250 + 1
            );
        }
        s.push_str("]\n");
    }
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn measure(services: usize, backends: usize, reloads: usize) {
    let dir = std::env::temp_dir().join(format!("lb-bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("lb.toml");
    std::fs::write(&path, config_text(services, backends, 0)).unwrap();
    let started = Instant::now();
    let (cfg, text) = config::load_with_text(&path).unwrap();
    let (cp, start) = ControlPlane::new(&path, cfg, text, Box::new(control::load_file)).unwrap();
    let first = started.elapsed();
    let ports: Vec<Box<dyn Port>> = (0..start.workers)
        .map(|_| Box::new(MemPort::new()) as Box<dyn Port>)
        .collect();
    let handles =
        worker::spawn_workers(ports, cp.table(), WorkerConfig::new(start.conntrack)).unwrap();
    cp.attach_workers(handles);

    // Per reload: the whole latency, and what is left of it after `reload_file` returns (read,
    // parse, validate, compile, swap, wake the workers, free the old config): waiting for both
    // workers to adopt the new table.
    let mut lat = Vec::with_capacity(reloads);
    let mut waits = Vec::with_capacity(reloads);
    for r in 1..=reloads {
        std::fs::write(&path, config_text(services, backends, r)).unwrap();
        let t0 = Instant::now();
        let g = cp.reload_file().expect("reload");
        let returned = t0.elapsed();
        cp.wait_adopted(g, Duration::from_secs(10))
            .expect("workers adopt the new generation");
        lat.push(t0.elapsed());
        waits.push(t0.elapsed() - returned);
        cp.release_retired();
    }
    lat.sort();
    waits.sort();
    // Where the time goes: reading and parsing the file as a reload does (every problem located
    // on failure), plain serde parsing for comparison, and compiling with warm Maglev tables (a
    // reload also builds the one Maglev table whose weights changed). Median and minimum of 9
    // runs each: the box is shared, and the minimum is the cost without interference.
    let stats = |f: &mut dyn FnMut()| {
        let mut v: Vec<Duration> = (0..9)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        v.sort();
        format!("{:.1} ({:.1})", ms(v[v.len() / 2]), ms(v[0]))
    };
    let load = stats(&mut || drop(config::load(&path).unwrap()));
    let text = std::fs::read_to_string(&path).unwrap();
    let serde = stats(&mut || drop(toml::from_str::<config::Config>(&text).unwrap()));
    let cfg = config::load(&path).unwrap();
    let compile = stats(&mut || cp.compile_probe(&cfg).unwrap());
    println!(
        "reload {services} services x {backends} backends: first compile {:.1} ms; {reloads} reloads: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(first),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat[lat.len() - 1]),
    );
    println!(
        "  after reload_file returned, waiting for adoption: p99 {:.2} ms, max {:.2} ms; median (min) of 9: \
         load (parse and validate) {load} ms, plain serde parse {serde} ms, compile with warm Maglev cache {compile} ms",
        ms(percentile(&waits, 0.99)),
        ms(waits[waits.len() - 1]),
    );
    for h in cp.detach_workers() {
        h.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with no args: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick { 3 } else { 100 };
    measure(1, 10, n);
    measure(1000, 10, if quick { 2 } else { n });
}

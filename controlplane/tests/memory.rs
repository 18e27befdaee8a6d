//! Memory after a large reload: a balancer that once served many services and now serves two
//! gives the memory back. Its own test binary (one test), so the process's RSS is this test's.
//!
//! Real control plane and worker threads on in-memory ports, reloading from a file as SIGHUP
//! does; each service has backends of its own, so each needs a Maglev table of its own
//! (65537 slots, 128 KiB). Removed services leave at once (`on_remove = "reset"`): with the
//! default `drain` they stay in the table, and hold their memory, for `drain_timeout`.

use std::fmt::Write as _;
use std::time::Duration;

use controlplane::config;
use controlplane::control::{self, ControlPlane};
use dataplane::port::mem::MemPort;
use dataplane::port::Port;
use dataplane::worker::{self, WorkerConfig};

/// `services` fullnat services with two backends each, none shared with another service.
fn config_text(services: usize) -> String {
    let mut s = String::from(
        "[dataplane]\nmac = \"02:00:00:00:00:01\"\naddresses = [\"198.18.0.1\"]\n\
         gateway_mac = \"02:00:00:00:00:fe\"\nworkers = 2\non_remove = \"reset\"\n[conntrack]\ncapacity = 1024\n",
    );
    for i in 0..services {
        let (hi, lo) = (i / 250, i % 250 + 1);
        let _ = write!(
            s,
            "\n[[services]]\nname = \"svc{i}\"\nvip = \"198.19.{hi}.{lo}\"\nports = [\"80\"]\n\
             protocol = \"tcp\"\n[[services.pools]]\nname = \"pods\"\nmode = \"fullnat\"\n\
             snat = [\"198.18.0.2\"]\nbackends = [\n  {{ addr = \"198.18.{}.{lo}\", port = 8080 }},\n  \
             {{ addr = \"198.18.{}.{lo}\", port = 8081 }},\n]\n",
            16 + hi,
            16 + hi
        );
    }
    s
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[test]
fn rss_returns_near_its_earlier_level_after_a_large_reload_is_undone() {
    let dir = std::env::temp_dir().join(format!("lb-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(&path, config_text(2)).unwrap();
    let (cfg, text) = config::load_with_text(&path).unwrap();
    let (cp, start) = ControlPlane::new(&path, cfg, text, Box::new(control::load_file)).unwrap();
    let ports: Vec<Box<dyn Port>> = (0..start.workers)
        .map(|_| Box::new(MemPort::new()) as Box<dyn Port>)
        .collect();
    let handles =
        worker::spawn_workers(ports, cp.table(), WorkerConfig::new(start.conntrack)).unwrap();
    cp.attach_workers(handles);
    // Reloads run on another thread, as on tokio's blocking pool in `lb run` (so in another
    // malloc arena than the one that releases).
    let reload = |services: usize| {
        std::fs::write(&path, config_text(services)).unwrap();
        let g = std::thread::scope(|s| s.spawn(|| cp.reload_file().unwrap()).join().unwrap());
        cp.wait_adopted(g, Duration::from_secs(30))
            .expect("workers adopt the new generation");
        cp.release_retired();
    };
    let before = rss_kib();
    let mut rows = Vec::new();
    for _ in 0..3 {
        reload(2000);
        let big = rss_kib();
        reload(2);
        rows.push((big, rss_kib()));
    }
    for h in cp.detach_workers() {
        h.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    // 2000 Maglev tables of 128 KiB: about 250 MiB while the large config serves.
    for &(big, small) in &rows {
        assert!(
            big > before + 200 * 1024,
            "the large config should take its Maglev tables: {before} KiB -> {big} KiB"
        );
        assert!(
            small < before + 48 * 1024,
            "back to 2 services, RSS should return near {before} KiB; cycles (large, small): {rows:?} KiB"
        );
    }
}

//! Shared by the end-to-end tests: a config directory removed on drop, and a lab
//! running `lb run` on a given config.
#![allow(dead_code)] // each test file uses a different part of this module

use std::path::PathBuf;
use std::time::{Duration, Instant};

use testkit::lab::{Lab, LabOptions};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A lab (namespace prefix `lbt<tag>`) running `lb run` on `body`, written to its own directory;
/// the config file's path comes back for rewriting. Dropping the lab tears everything down.
pub fn lab_with(tag: &str, body: &str) -> (Lab, TempDir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("lbe2e-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    let path = dir.0.join("lb.toml");
    std::fs::write(&path, body).unwrap();
    let mut lab = Lab::up(&LabOptions {
        prefix: format!("lbt{tag}"),
        lb_bin: PathBuf::from(env!("CARGO_BIN_EXE_lb")),
        config: path.clone(),
    })
    .unwrap();
    lab.start_lb(Duration::from_secs(15)).unwrap();
    (lab, dir, path)
}

/// The lab's `[dataplane]`, `[admin]` and `[[neighbors]]` (TAP, two workers, the pods' MACs):
/// valid on its own, with no service; the tests append theirs.
pub const HEAD: &str = r#"[dataplane]
mac = "02:00:00:00:00:01"
addresses = ["198.18.0.1", "2001:db8::1"]
gateway_mac = "02:00:00:00:00:fe"
port = "tap"
interface = "lb0"
workers = 2

[admin]
listen = "127.0.0.1:9180"

[[neighbors]]
ip = "198.18.1.10"
mac = "02:00:00:00:01:0a"
[[neighbors]]
ip = "198.18.1.11"
mac = "02:00:00:00:01:0b"
"#;

/// How many reloads `lb run` has logged as applied.
pub fn reloads_logged(lab: &Lab) -> usize {
    lab.lb_log().matches("configuration reloaded").count()
}

/// Waits until `f` holds, up to `timeout`.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

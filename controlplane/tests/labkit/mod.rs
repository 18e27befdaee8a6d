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

/// wrk in the client's namespace against `site` (Host: www.lab.test), until [`Wrk::finish`]
/// interrupts it; killed on drop, so a failing test leaves no load running.
pub struct Wrk(Option<std::process::Child>);

impl Wrk {
    /// Starts `wrk` against `site` with `conns` keep-alive connections for at most `max` seconds.
    pub fn start(lab: &Lab, site: &str, conns: u32, max: u32) -> Wrk {
        let ns = lab.client().unwrap().name().to_owned();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "wrk", "-t1"])
            .arg(format!("-c{conns}"))
            .arg(format!("-d{max}s"))
            .args(["--timeout", "5s", "-H", "Host: www.lab.test"])
            .arg(format!("http://{site}/"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("wrk starts");
        Wrk(Some(child))
    }

    /// Interrupts wrk (it prints its summary on SIGINT) and returns that summary.
    pub fn finish(mut self) -> String {
        let child = self.0.take().unwrap();
        let _ = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let out = child.wait_with_output().expect("wrk ends");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

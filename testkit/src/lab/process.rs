//! Processes of the lab: children started inside a namespace, watched for `ready`, stopped on drop.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{step, LabError};

/// A child process inside a namespace, killed on drop.
#[derive(Debug)]
pub(super) struct Proc {
    pub(super) what: String,
    pub(super) child: Child,
    pub(super) log: PathBuf,
    lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    /// Starts `bin args...` in namespace `ns` (`ip netns exec` execs it, so the child is the
    /// program itself); stdout is read line by line when `watch_stdout`, else logged with stderr.
    pub(super) fn spawn(
        what: &str,
        ns: &str,
        bin: &Path,
        args: &[String],
        dir: &Path,
        watch_stdout: bool,
    ) -> Result<Proc, LabError> {
        let log = dir.join(format!("{what}.log"));
        let err = step(|| format!("create {}", log.display()), File::create(&log))?;
        let out = if watch_stdout {
            Stdio::piped()
        } else {
            Stdio::from(step(
                || format!("clone {}", log.display()),
                err.try_clone(),
            )?)
        };
        let mut child = step(
            || format!("start {what} in {ns}"),
            Command::new("ip")
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                // Logs go to a file: no colour codes.
                .env("NO_COLOR", "1")
                .args(["netns", "exec", ns])
                .arg(bin)
                .args(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn(),
        )?;
        let lines = child.stdout.take().map(|stdout| {
            let (tx, rx) = mpsc::channel();
            // Keeps draining after the first line so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Ok(Proc {
            what: what.to_owned(),
            child,
            log,
            lines,
        })
    }

    /// Waits for the line `ready` on stdout.
    pub(super) fn wait_ready(&mut self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        if let Some(rx) = &self.lines {
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(l) if l.trim() == "ready" => return Ok(()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        Err(self.not_ready(timeout))
    }

    pub(super) fn not_ready(&mut self, waited: Duration) -> LabError {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!("exited ({s})"),
            _ => "still running".to_owned(),
        };
        LabError::NotReady {
            what: self.what.clone(),
            waited,
            detail: format!("{status}; log: {}", tail(&self.log, 10)),
        }
    }

    /// Asks the process to stop with SIGTERM, waits up to `grace`, then kills it.
    pub(super) fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of a file, joined with " | " (for error messages).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

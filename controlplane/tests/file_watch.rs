//! The config-file watcher on a temp directory (no root): it fires for complete writes only,
//! for an atomic rename, and for a Kubernetes ConfigMap-style symlink swap.

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::sources::file::{watch, FileWatcher};

/// A unique empty directory under the system temp dir.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("lb-watch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts the watcher with a counter of calls.
fn counted(path: &Path) -> (FileWatcher, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let w = watch(path, move || {
        c.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    (w, n)
}

/// Waits up to `limit` for the counter to reach `want`; returns how long it took.
fn wait_for(n: &AtomicUsize, want: usize, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if n.load(Ordering::SeqCst) >= want {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn a_slow_writer_is_seen_only_after_close() {
    let d = temp_dir("slow");
    let path = d.join("lb.toml");
    std::fs::write(&path, "[dataplane]\n[[services]]\nname = \"web\"\n").unwrap();
    let (_w, n) = counted(&path);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"[dataplane]\n").unwrap();
    f.flush().unwrap();
    // A writer pausing mid-file: the half-written file must not be reported.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(n.load(Ordering::SeqCst), 0, "fired on a half-written file");
    f.write_all(b"[[services]]\nname = \"api\"\n").unwrap();
    drop(f);
    assert!(
        wait_for(&n, 1, Duration::from_secs(1)).is_some(),
        "the completed write was not reported"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_atomic_rename_is_seen() {
    let d = temp_dir("rename");
    let path = d.join("lb.toml");
    std::fs::write(&path, "a = 1\n").unwrap();
    let (_w, n) = counted(&path);
    let tmp = d.join(".lb.toml.tmp");
    std::fs::write(&tmp, "a = 2\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(
        wait_for(&n, 1, Duration::from_secs(1)).is_some(),
        "rename not reported"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn an_unchanged_rewrite_is_not_reported() {
    let d = temp_dir("same");
    let path = d.join("lb.toml");
    std::fs::write(&path, "a = 1\n").unwrap();
    let (_w, n) = counted(&path);
    std::fs::write(&path, "a = 1\n").unwrap();
    std::fs::write(d.join("other.toml"), "b = 1\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        n.load(Ordering::SeqCst),
        0,
        "same bytes reported as a change"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A ConfigMap volume: `lb.toml -> ..data/lb.toml`, `..data -> ..<timestamp>`, updated by writing
/// a new timestamped directory and renaming a new `..data` link over the old one.
#[test]
fn a_configmap_symlink_swap_is_seen_within_a_second() {
    let d = temp_dir("configmap");
    let v1 = d.join("..2026_12_05_01");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("lb.toml"), "a = 1\n").unwrap();
    symlink("..2026_12_05_01", d.join("..data")).unwrap();
    symlink("..data/lb.toml", d.join("lb.toml")).unwrap();
    let (_w, n) = counted(&d.join("lb.toml"));
    for (i, name) in ["..2026_12_05_02", "..2026_12_05_03"].iter().enumerate() {
        let v = d.join(name);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("lb.toml"), format!("a = {}\n", i + 2)).unwrap();
        symlink(name, d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        let took = wait_for(&n, i + 1, Duration::from_secs(1));
        assert!(took.is_some(), "swap {} not reported within 1 s", i + 1);
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// A plain symlink to a file in another directory: edits of the target are seen.
#[test]
fn an_edit_through_a_symlink_is_seen() {
    let d = temp_dir("link");
    let real = d.join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("config.toml"), "a = 1\n").unwrap();
    let conf = d.join("etc");
    std::fs::create_dir(&conf).unwrap();
    symlink(real.join("config.toml"), conf.join("lb.toml")).unwrap();
    let (_w, n) = counted(&conf.join("lb.toml"));
    std::fs::write(real.join("config.toml"), "a = 2\n").unwrap();
    assert!(
        wait_for(&n, 1, Duration::from_secs(1)).is_some(),
        "edit of the target not reported"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

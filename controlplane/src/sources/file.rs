//! The config-file watcher: notices complete writes to the file (or to what its symlinks point
//! to) and reports them, so a reload never reads a file that a writer is still filling.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

/// What an event means for the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The file (or a link on its way) may now hold complete new content: read it.
    Apply,
    /// Not a complete write (a modify in progress, a removal, a read): wait for more.
    Ignore,
}

/// Sorts one event. Only writes that are complete count: a close after writing, a rename into
/// place (`mv`, an editor's save, a ConfigMap's `..data` swap) and the creation of a symlink
/// (`is_link`: the event's path is a symlink now; a link is created whole). A plain modify is a
/// writer mid-file, and a new regular file is empty until its writer closes it.
pub fn classify(kind: &EventKind, is_link: bool) -> Verdict {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Verdict::Apply,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Verdict::Ignore,
        EventKind::Modify(ModifyKind::Name(_)) => Verdict::Apply,
        EventKind::Create(CreateKind::Folder) => Verdict::Ignore,
        EventKind::Create(_) if is_link => Verdict::Apply,
        _ => Verdict::Ignore,
    }
}

/// How often the watcher thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A running watcher; dropping it stops the watching thread.
pub struct FileWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Watches `path` and calls `on_change` when a complete write gives it content other than what it
/// had at the start or at the last call. The directory of the path and the directory of what it
/// resolves to are watched, re-resolved after each event (a ConfigMap swaps its `..data` link).
pub fn watch(
    path: &Path,
    on_change: impl Fn() + Send + 'static,
) -> Result<FileWatcher, notify::Error> {
    let (tx, rx) = mpsc::channel();
    // The handler only forwards: adding a watch from inside notify's handler would deadlock.
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let _ = tx.send(ev);
        }
    })?;
    let path = path.to_path_buf();
    // Read before watching: a write racing the start is then seen as a change, not as the start.
    let last = content_hash(&path);
    let mut watched = BTreeSet::new();
    rewatch(&mut watcher, &path, &mut watched)?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("lb-config-watch".into())
            .spawn(move || run(watcher, path, watched, last, rx, &stop, on_change))
            .map_err(notify::Error::io)?
    };
    Ok(FileWatcher {
        stop,
        thread: Some(thread),
    })
}

/// The directories to watch: the link's own and the resolved file's (when it resolves).
fn dirs_of(path: &Path) -> BTreeSet<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut dirs = BTreeSet::from([parent(path)]);
    if let Ok(target) = std::fs::canonicalize(path) {
        dirs.insert(parent(&target));
    }
    dirs
}

/// Brings the watched directories in line with where `path` resolves now.
fn rewatch(
    w: &mut notify::RecommendedWatcher,
    path: &Path,
    watched: &mut BTreeSet<PathBuf>,
) -> Result<(), notify::Error> {
    let want = dirs_of(path);
    for gone in watched.difference(&want) {
        // The old target's directory is usually deleted already; its watch went with it.
        let _ = w.unwatch(gone);
    }
    let mut result = Ok(());
    for new in want.difference(watched) {
        if let Err(e) = w.watch(new, RecursiveMode::NonRecursive) {
            result = Err(e);
        }
    }
    *watched = want
        .into_iter()
        .filter(|d| result.is_ok() || d.is_dir())
        .collect();
    result
}

/// A hash of the file's bytes (through its links); None when it cannot be read now. Read as
/// loading reads it (regular files only, bounded), so a FIFO or a device behind the path neither
/// blocks this thread nor fills memory.
fn content_hash(path: &Path) -> Option<u64> {
    let bytes = crate::config::read_bytes(path).ok()?;
    let mut h = DefaultHasher::new();
    h.write(&bytes);
    Some(h.finish())
}

/// Whether an event's path can be the config: the file's name, the resolved file's name, or a
/// symlink (an intermediate link such as a ConfigMap's `..data`).
fn relevant(ev_path: &Path, names: &[std::ffi::OsString]) -> bool {
    ev_path
        .file_name()
        .is_some_and(|n| names.iter().any(|m| m == n))
        || ev_path.is_symlink()
}

/// The watching thread: sorts events, follows the link, and reports content changes.
fn run(
    mut w: notify::RecommendedWatcher,
    path: PathBuf,
    mut watched: BTreeSet<PathBuf>,
    mut last: Option<u64>,
    rx: mpsc::Receiver<notify::Event>,
    stop: &AtomicBool,
    on_change: impl Fn(),
) {
    while !stop.load(Ordering::SeqCst) {
        let ev = match rx.recv_timeout(POLL) {
            Ok(ev) => ev,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut names: Vec<std::ffi::OsString> =
            path.file_name().into_iter().map(Into::into).collect();
        if let Some(n) = std::fs::canonicalize(&path)
            .ok()
            .and_then(|t| t.file_name().map(Into::into))
        {
            names.push(n);
        }
        let apply = ev
            .paths
            .iter()
            .any(|p| relevant(p, &names) && classify(&ev.kind, p.is_symlink()) == Verdict::Apply);
        if !apply {
            continue;
        }
        if let Err(e) = rewatch(&mut w, &path, &mut watched) {
            tracing::warn!(path = %path.display(), error = %e, "cannot watch where the config file points");
        }
        let now = content_hash(&path);
        if now.is_some() && now != last {
            last = now;
            on_change();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, MetadataKind, RemoveKind};

    #[test]
    fn only_complete_writes_apply() {
        use Verdict::{Apply, Ignore};
        let cases = [
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                false,
                Apply,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
                Ignore,
            ),
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                false,
                Ignore,
            ),
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                false,
                Ignore,
            ),
            (EventKind::Modify(ModifyKind::Any), false, Ignore),
            (
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
                false,
                Ignore,
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                false,
                Apply,
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                false,
                Apply,
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::Any)),
                false,
                Apply,
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                false,
                Ignore,
            ),
            (EventKind::Create(CreateKind::File), false, Ignore),
            (EventKind::Create(CreateKind::File), true, Apply),
            (EventKind::Create(CreateKind::Any), true, Apply),
            (EventKind::Create(CreateKind::Folder), false, Ignore),
            (EventKind::Remove(RemoveKind::File), false, Ignore),
            (EventKind::Any, false, Ignore),
            (EventKind::Other, false, Ignore),
        ];
        for (kind, is_link, want) in cases {
            assert_eq!(classify(&kind, is_link), want, "{kind:?} link={is_link}");
        }
    }
}

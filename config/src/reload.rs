//! Hot reload: a running process takes a new configuration file without a
//! restart, or refuses it whole.
//!
//! **Watching.** The file's *directory* is watched (inotify, not
//! recursive) and events are filtered by the file's name: editors that save
//! by writing a new file and renaming it over the old one, and symlink swaps
//! (`ln -s new tmp && mv tmp kaelix.toml`), replace the inode a watch on the
//! file itself would be attached to. Names starting with `..` also count
//! (Kubernetes swaps a `..data` symlink beside the file). Our own backup
//! (`NAME.bak`) does not.
//!
//! **Debounce.** After a relevant event the watcher waits until no further
//! one arrived for the debounce period (1 s by default), then reloads once:
//! a burst of writes, or a file written in pieces, is one reload of the
//! final text.
//!
//! **Reload** ([`HotReloadManager::reload_now`], also what SIGHUP calls):
//! read the file; the same text as applied is nothing to do; otherwise load
//! it with the same environment and flags as at start, validate it
//! ([`Phase::Reload`]: ports are ours), diff the effective tree against the
//! current one leaf by leaf, and refuse the whole change if any changed key
//! is not declared reloadable in the [`ReloadPolicy`]. A refusal keeps the
//! current configuration, logs the keys and the reason, and is counted.
//!
//! **Apply.** One `ArcSwap::store`: readers (`current()`) load an `Arc`
//! without a lock and see the old or the new configuration, never a mix.
//! Applies are serialized by a writers' mutex readers never take. The
//! previous good file text is written to `NAME.bak`, then every subscriber
//! gets the [`ConfigChange`] (changed keys, old and new configuration).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::Table;

use crate::loader::{ConfigLoader, Loaded, changed_keys};
use crate::validate::{Phase, Validate};

/// The default debounce period.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(1);

/// Which keys may change while running. Patterns are key paths; a pattern
/// covers the key and everything under it, and `[*]` matches any index
/// (`topics[*].max_bytes`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPolicy {
    reloadable: Vec<String>,
}

impl ReloadPolicy {
    /// The declared reloadable keys.
    pub fn new<'a>(reloadable: impl IntoIterator<Item = &'a str>) -> Self {
        ReloadPolicy { reloadable: reloadable.into_iter().map(str::to_owned).collect() }
    }

    /// Whether a change to `key` may apply while running.
    pub fn allows(&self, key: &str) -> bool {
        let general = wildcard_indices(key);
        self.reloadable.iter().any(|p| {
            general == *p
                || (general.starts_with(p.as_str()) && matches!(general.as_bytes().get(p.len()), Some(b'.' | b'[')))
        })
    }

    /// The declared patterns.
    pub fn patterns(&self) -> &[String] {
        &self.reloadable
    }
}

/// `topics[3].name` → `topics[*].name`.
fn wildcard_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut in_index = false;
    for c in key.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[*");
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// One applied change.
#[derive(Debug)]
pub struct ConfigChange<T> {
    /// Counts applies from 0 (the configuration at start).
    pub generation: u64,
    /// Every leaf key whose value changed, sorted.
    pub changed: Vec<String>,
    /// Before.
    pub old: Arc<T>,
    /// After (what `current()` now returns).
    pub new: Arc<T>,
}

impl<T> ConfigChange<T> {
    /// Whether `key` or anything under it changed.
    pub fn touches(&self, key: &str) -> bool {
        self.changed
            .iter()
            .any(|c| c == key || (c.starts_with(key) && matches!(c.as_bytes().get(key.len()), Some(b'.' | b'['))))
    }
}

/// What one reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new configuration is current.
    Applied {
        /// Its generation.
        generation: u64,
        /// The keys that changed.
        changed: Vec<String>,
    },
    /// The file holds what is already applied (or only comments changed).
    Unchanged,
    /// Refused: the current configuration stays.
    Rejected {
        /// Why, with the keys or the diagnostics.
        reason: String,
    },
}

/// What the manager has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Changes applied.
    pub applied: u64,
    /// Changes refused (invalid file, non-reloadable key).
    pub rejected: u64,
    /// Reloads that found nothing new.
    pub unchanged: u64,
    /// The latest refusal's reason.
    pub last_error: Option<String>,
    /// When the latest change applied: milliseconds since the Unix epoch
    /// (wall clock).
    pub last_apply_unix_ms: Option<u64>,
    /// The current generation.
    pub generation: u64,
}

type Applied = (Table, Option<String>, Option<String>);

type Subscribers<T> = Mutex<Vec<mpsc::Sender<Arc<ConfigChange<T>>>>>;

struct Inner<T> {
    current: ArcSwap<T>,
    loader: ConfigLoader,
    path: PathBuf,
    policy: ReloadPolicy,
    /// Writers only: the effective tree and file text of `current`, and
    /// the file text refused last.
    applied: Mutex<Applied>,
    subscribers: Subscribers<T>,
    generation: AtomicU64,
    applied_count: AtomicU64,
    rejected_count: AtomicU64,
    unchanged_count: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_apply_unix_ms: Mutex<Option<u64>>,
}

/// The current configuration of a running process, and its reloads.
pub struct HotReloadManager<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for HotReloadManager<T> {
    fn clone(&self) -> Self {
        HotReloadManager { inner: self.inner.clone() }
    }
}

/// Keeps the directory watch alive; dropping it stops watching.
pub struct WatchHandle {
    watcher: Option<notify::RecommendedWatcher>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        // Dropping the watcher closes the event channel; the debounce
        // thread sees the disconnect and ends.
        drop(self.watcher.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<T> HotReloadManager<T>
where
    T: DeserializeOwned + Serialize + Default + Validate + Send + Sync + 'static,
{
    /// Manages `loaded` (the result of `loader.load()`), reloading from its
    /// file with `loader`'s environment and flags. None if it came from no
    /// file.
    pub fn new(loader: ConfigLoader, loaded: Loaded<T>, policy: ReloadPolicy) -> Option<Self> {
        let path = loaded.file.clone()?;
        Some(HotReloadManager {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(loaded.config),
                loader,
                path,
                policy,
                applied: Mutex::new((loaded.effective, loaded.file_text, None)),
                subscribers: Mutex::new(Vec::new()),
                generation: AtomicU64::new(0),
                applied_count: AtomicU64::new(0),
                rejected_count: AtomicU64::new(0),
                unchanged_count: AtomicU64::new(0),
                last_error: Mutex::new(None),
                last_apply_unix_ms: Mutex::new(None),
            }),
        })
    }

    /// The current configuration, without a lock (the hot-path read).
    pub fn current(&self) -> Guard<Arc<T>> {
        self.inner.current.load()
    }

    /// The current configuration as an owned `Arc`.
    pub fn snapshot(&self) -> Arc<T> {
        self.inner.current.load_full()
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Where the previous good file is kept.
    pub fn backup_path(&self) -> PathBuf {
        let mut name = self.inner.path.file_name().unwrap_or_default().to_owned();
        name.push(".bak");
        self.inner.path.with_file_name(name)
    }

    /// Every later applied change is sent here.
    pub fn subscribe(&self) -> mpsc::Receiver<Arc<ConfigChange<T>>> {
        let (tx, rx) = mpsc::channel();
        self.inner.subscribers.lock().expect("subscribers").push(tx);
        rx
    }

    /// Counters and the latest error.
    pub fn stats(&self) -> ReloadStats {
        ReloadStats {
            applied: self.inner.applied_count.load(Ordering::Relaxed),
            rejected: self.inner.rejected_count.load(Ordering::Relaxed),
            unchanged: self.inner.unchanged_count.load(Ordering::Relaxed),
            last_error: self.inner.last_error.lock().expect("last_error").clone(),
            last_apply_unix_ms: *self.inner.last_apply_unix_ms.lock().expect("last_apply"),
            generation: self.inner.generation.load(Ordering::Acquire),
        }
    }

    /// Reads, validates and applies the file now (SIGHUP; the watcher
    /// after its debounce).
    #[allow(clippy::disallowed_methods, reason = "hot reload reads the configuration file")]
    pub fn reload_now(&self) -> ReloadOutcome {
        let text = match std::fs::read_to_string(&self.inner.path) {
            Ok(t) => t,
            Err(e) => return self.reject(&[], format!("{}: cannot read: {e}", self.inner.path.display())),
        };
        let mut applied = self.inner.applied.lock().expect("applied");
        // The text in force, or the text refused last time: nothing new to
        // apply or to report (an editor's extra events, a repeated SIGHUP).
        if applied.1.as_deref() == Some(text.as_str()) || applied.2.as_deref() == Some(text.as_str()) {
            self.inner.unchanged_count.fetch_add(1, Ordering::Relaxed);
            return ReloadOutcome::Unchanged;
        }
        let loaded = match self.inner.loader.load_text::<T>(Some(&self.inner.path), Some(&text), Phase::Reload) {
            Ok(l) => l,
            Err(e) => {
                applied.2 = Some(text);
                return self.reject(&[], format!("invalid configuration:\n{e}"));
            }
        };
        let refused_text = text.clone();
        let previous = applied.1.clone();
        let outcome = self.offer_locked(&mut applied, loaded);
        if let ReloadOutcome::Rejected { .. } = outcome {
            applied.2 = Some(refused_text);
        }
        if matches!(outcome, ReloadOutcome::Applied { .. })
            && let Some(previous) = previous
            && let Err(e) = write_replacing(&self.backup_path(), &previous)
        {
            tracing::warn!(backup = %self.backup_path().display(), error = %e, "configuration applied; keeping the previous file as a backup failed");
        }
        outcome
    }

    /// Applies an already loaded and validated configuration if every
    /// changed key is reloadable (what a reload does after reading; also
    /// the path benchmarks measure).
    pub fn offer(&self, loaded: Loaded<T>) -> ReloadOutcome {
        let mut applied = self.inner.applied.lock().expect("applied");
        self.offer_locked(&mut applied, loaded)
    }

    fn offer_locked(&self, applied: &mut Applied, loaded: Loaded<T>) -> ReloadOutcome {
        let changed = changed_keys(&applied.0, &loaded.effective);
        if changed.is_empty() {
            applied.1 = loaded.file_text;
            self.inner.unchanged_count.fetch_add(1, Ordering::Relaxed);
            return ReloadOutcome::Unchanged;
        }
        let refused: BTreeSet<&str> =
            changed.iter().filter(|k| !self.inner.policy.allows(k)).map(String::as_str).collect();
        if !refused.is_empty() {
            let keys: Vec<&str> = refused.into_iter().collect();
            return self.reject(&keys, "changing these keys needs a restart".to_owned());
        }
        for w in &loaded.warnings {
            tracing::warn!(%w, "configuration warning");
        }
        let new = Arc::new(loaded.config);
        let old = self.inner.current.swap(new.clone());
        let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
        *applied = (loaded.effective, loaded.file_text, None);
        self.inner.applied_count.fetch_add(1, Ordering::Relaxed);
        *self.inner.last_apply_unix_ms.lock().expect("last_apply") = Some(wall_now_unix_ms());
        tracing::info!(generation, changed = ?changed, "configuration applied");
        let change = Arc::new(ConfigChange { generation, changed: changed.clone(), old, new });
        self.inner.subscribers.lock().expect("subscribers").retain(|s| s.send(change.clone()).is_ok());
        ReloadOutcome::Applied { generation, changed }
    }

    fn reject(&self, keys: &[&str], reason: String) -> ReloadOutcome {
        let reason = if keys.is_empty() { reason } else { format!("{reason}: {}", keys.join(", ")) };
        tracing::warn!(file = %self.inner.path.display(), %reason, "configuration change rejected; the current configuration stays");
        self.inner.rejected_count.fetch_add(1, Ordering::Relaxed);
        *self.inner.last_error.lock().expect("last_error") = Some(reason.clone());
        ReloadOutcome::Rejected { reason }
    }

    /// Watches the file's directory and reloads `debounce` after the last
    /// relevant event. Watching stops when the handle is dropped.
    #[allow(clippy::disallowed_methods, reason = "the watcher's debounce thread")]
    pub fn watch(&self, debounce: Duration) -> notify::Result<WatchHandle> {
        let dir = match self.inner.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = self.inner.path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::RecommendedWatcher::new(tx, notify::Config::default())?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let manager = self.clone();
        let relevant = move |event: &notify::Event| {
            event
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n == name.as_os_str() || n.to_string_lossy().starts_with("..")))
        };
        let thread = std::thread::Builder::new().name("kaelix-config-watch".into()).spawn(move || {
            while let Ok(event) = rx.recv() {
                match event {
                    Ok(e) if relevant(&e) => {}
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "configuration watch error");
                        continue;
                    }
                }
                // Trailing debounce: reload once nothing relevant arrived
                // for a whole period.
                loop {
                    match rx.recv_timeout(debounce) {
                        Ok(Ok(e)) if relevant(&e) => continue,
                        Ok(_) => continue,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                let _ = manager.reload_now();
            }
        })?;
        Ok(WatchHandle { watcher: Some(watcher), thread: Some(thread) })
    }
}

#[allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "stats report the wall-clock time of the latest apply"
)]
fn wall_now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Writes `text` over `path` in place (created if missing): the old bytes
/// overwritten, the file cut to the new length. Not truncating to zero
/// first nor renaming over it is the point: either makes ext4 flush the
/// file's data at close or rename (`auto_da_alloc`), 0.3 to 2 ms per apply
/// on this machine's disk, against microseconds in place. The price: a
/// crash in the middle of it can leave the backup torn (the backup is a
/// convenience copy; the configuration file itself is never written here).
#[allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "hot reload keeps the previous file as a backup"
)]
fn write_replacing(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_cover_subkeys_and_any_index() {
        let p = ReloadPolicy::new(["limits", "topics[*].max_bytes", "log.level"]);
        assert!(p.allows("limits.max_payload"));
        assert!(p.allows("limits"));
        assert!(!p.allows("limitsx"));
        assert!(p.allows("topics[12].max_bytes"));
        assert!(!p.allows("topics[12].name"));
        assert!(p.allows("log.level"));
        assert!(!p.allows("log.format"));
    }
}

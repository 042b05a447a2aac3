//! File storage: the [`Storage`] contract on one directory of real files,
//! with every blocking call (open, positioned IO, `fsync`) run on a
//! [`BlockingPool`].
//!
//! # Model
//!
//! A [`FileStorage`] owns one directory; each contract name is a file in it.
//! Use one `FileStorage` (and its clones) per directory, and let nothing else
//! write there: open files are tracked in memory.
//!
//! * **Open files are shared.** Opening a name that is already open returns
//!   a handle to the same [`DiskFile`] state, so every handle sees one
//!   in-memory length and concurrent appends through any of them never
//!   overlap.
//! * **Length.** [`DiskFile::len`] is an in-memory `AtomicU64` that includes
//!   unsynced writes. `append` reserves its range with a `fetch_add` when
//!   called; `write_at` and `truncate` update the length when they complete.
//!   A read past the length fails with [`StorageError::OutOfBounds`]; a read
//!   of a range whose append is still in flight may fail with
//!   [`StorageError::Io`]. A failed append leaves its reserved range as a
//!   hole. `truncate` is not ordered against writes still in flight on the
//!   same file: await them first.
//! * **Removal.** `remove` unlinks the file and marks its open handles
//!   removed: from then on they fail with [`StorageError::NotFound`] and
//!   report length 0, as in the simulator. Opening the name again creates a
//!   new, empty file.
//!
//! # Durability
//!
//! * `sync` is `fdatasync` (`File::sync_data`). For appends that is enough:
//!   POSIX requires `fdatasync` to flush the metadata needed to read the data
//!   back, which includes a grown file size, and skipping the rest (mtime)
//!   saves a journal commit on most filesystems. After a `truncate`, the next
//!   `sync` uses `fsync` (`File::sync_all`) instead, so a shrink is not left
//!   to each filesystem's reading of "needed for retrieval".
//! * A failed `sync` poisons the file: Linux may drop the dirty pages after
//!   reporting the error, so a later `fsync` could succeed without them.
//!   Every later `sync` on that file state fails too; recovery must reopen
//!   the file after all its handles are dropped and re-read what is there.
//! * Creating a file (in `open`) and `remove` also `fsync` the directory, so
//!   the name itself is durable when they return.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "file storage is where the real runtime touches the file system"
)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::Bytes;
use kaelix_core::runtime::{Storage, StorageError, StorageFile, validate_file_name};

use crate::blocking::BlockingPool;

/// The [`Storage`] contract on one directory. Cheap to clone.
#[derive(Clone)]
pub struct FileStorage {
    inner: Arc<StorageInner>,
}

struct StorageInner {
    dir: PathBuf,
    /// Kept open to `fsync` the directory after creating or removing a name.
    dir_handle: File,
    /// Files with live handles, so a second `open` shares their state.
    /// Also serialises open and remove, which are rare.
    open_files: Mutex<BTreeMap<String, Weak<FileState>>>,
    pool: BlockingPool,
    stats: Arc<StorageStats>,
}

/// IO counters of one [`FileStorage`] over all its files (telemetry reads
/// them; relaxed atomics, each number exact, a snapshot may mix instants).
#[derive(Debug, Default)]
pub struct StorageStats {
    /// Bytes read by `read_at`.
    pub bytes_read: AtomicU64,
    /// Bytes written by `write_at` and `append`.
    pub bytes_written: AtomicU64,
    /// Completed writes and appends.
    pub writes: AtomicU64,
    /// Completed syncs (`fdatasync`, or `fsync` after a truncate).
    pub syncs: AtomicU64,
    /// Syncs that failed.
    pub sync_failures: AtomicU64,
    /// How long each sync took, in nanoseconds.
    pub sync_latency: crate::executor::metrics::LatencyHistogram,
}

/// An open file of a [`FileStorage`]. Cloning gives another handle to the
/// same file (and the same in-memory length).
#[derive(Clone)]
pub struct DiskFile {
    state: Arc<FileState>,
    pool: BlockingPool,
    stats: Arc<StorageStats>,
}

struct FileState {
    name: String,
    file: File,
    /// The length including unsynced writes and reserved appends.
    len: AtomicU64,
    removed: AtomicBool,
    /// Set by `truncate`: the next `sync` must be a full `fsync`.
    needs_full_sync: AtomicBool,
    /// A `sync` failed: durability of this file is unknown from now on.
    sync_failed: AtomicBool,
}

impl FileStorage {
    /// Storage in `dir`, creating the directory (and its parents) if missing
    /// and making its entry durable. Blocks the calling thread: call it at
    /// start-up, not from an executor task.
    pub fn open_dir(dir: impl Into<PathBuf>, pool: BlockingPool) -> Result<FileStorage, StorageError> {
        let dir = dir.into();
        let fail = |what: &str, e: io::Error| StorageError::Io(format!("{}: {what}: {e}", dir.display()));
        fs::create_dir_all(&dir).map_err(|e| fail("create directory", e))?;
        let dir_handle = File::open(&dir).map_err(|e| fail("open directory", e))?;
        // The directory may have just been created: make its own entry durable.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent).and_then(|p| p.sync_all()).map_err(|e| fail("sync parent directory", e))?;
        }
        let inner = StorageInner {
            dir,
            dir_handle,
            open_files: Mutex::new(BTreeMap::new()),
            pool,
            stats: Arc::new(StorageStats::default()),
        };
        Ok(FileStorage { inner: Arc::new(inner) })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// IO counters over every file of this storage.
    pub fn stats(&self) -> &Arc<StorageStats> {
        &self.inner.stats
    }
}

impl StorageInner {
    fn lock_open_files(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Weak<FileState>>> {
        // Only IO runs under this lock; a panic there leaves the map consistent.
        self.open_files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.dir_handle.sync_all()
    }

    /// Runs on the pool.
    fn open_blocking(&self, name: &str) -> Result<Arc<FileState>, StorageError> {
        let mut open_files = self.lock_open_files();
        if let Some(state) = open_files.get(name).and_then(Weak::upgrade) {
            return Ok(state);
        }
        let path = self.dir.join(name);
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        let (file, created) = match options.clone().create_new(true).open(&path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                (options.open(&path).map_err(|e| io_error(name, "open", e))?, false)
            }
            Err(e) => return Err(io_error(name, "create", e)),
        };
        if created && let Err(e) = self.sync_dir() {
            // Undo, so a retry creates (and syncs) the name again.
            let _ = fs::remove_file(&path);
            return Err(io_error(name, "sync directory after create", e));
        }
        let len = file.metadata().map_err(|e| io_error(name, "stat", e))?.len();
        let state = Arc::new(FileState {
            name: name.to_owned(),
            file,
            len: AtomicU64::new(len),
            removed: AtomicBool::new(false),
            needs_full_sync: AtomicBool::new(false),
            sync_failed: AtomicBool::new(false),
        });
        open_files.retain(|_, handle| handle.strong_count() > 0);
        open_files.insert(name.to_owned(), Arc::downgrade(&state));
        Ok(state)
    }

    /// Runs on the pool.
    fn remove_blocking(&self, name: &str) -> Result<(), StorageError> {
        let mut open_files = self.lock_open_files();
        let unlinked = fs::remove_file(self.dir.join(name));
        let gone = match &unlinked {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        if gone && let Some(state) = open_files.remove(name).and_then(|handle| handle.upgrade()) {
            state.removed.store(true, Ordering::Release);
        }
        drop(open_files);
        match unlinked {
            Ok(()) => self.sync_dir().map_err(|e| io_error(name, "sync directory after remove", e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StorageError::NotFound(name.to_owned())),
            Err(e) => Err(io_error(name, "remove", e)),
        }
    }

    /// Runs on the pool. Names that are not valid contract names (files put
    /// there by someone else) cannot be opened, so they are not listed.
    fn list_blocking(&self) -> Result<Vec<String>, StorageError> {
        let fail = |e: io::Error| StorageError::Io(format!("{}: list: {e}", self.dir.display()));
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            if !entry.file_type().map_err(fail)?.is_file() {
                continue;
            }
            if let Ok(name) = entry.file_name().into_string()
                && validate_file_name(&name).is_ok()
            {
                names.push(name);
            }
        }
        names.sort_unstable();
        Ok(names)
    }
}

impl Storage for FileStorage {
    type File = DiskFile;

    fn open(&self, name: &str) -> impl Future<Output = Result<DiskFile, StorageError>> + Send {
        let checked = validate_file_name(name);
        let (inner, name) = (Arc::clone(&self.inner), name.to_owned());
        async move {
            checked?;
            let pool = inner.pool.clone();
            let state = pool.run(move || inner.open_blocking(&name)).await?;
            Ok(DiskFile { state, pool, stats: self.inner.stats.clone() })
        }
    }

    fn remove(&self, name: &str) -> impl Future<Output = Result<(), StorageError>> + Send {
        let checked = validate_file_name(name);
        let (inner, name) = (Arc::clone(&self.inner), name.to_owned());
        async move {
            checked?;
            inner.pool.clone().run(move || inner.remove_blocking(&name)).await
        }
    }

    fn list(&self) -> impl Future<Output = Result<Vec<String>, StorageError>> + Send {
        let inner = Arc::clone(&self.inner);
        async move { inner.pool.clone().run(move || inner.list_blocking()).await }
    }
}

impl DiskFile {
    /// The file's name in its storage.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The state, unless the file was removed.
    fn live_state(&self) -> Result<Arc<FileState>, StorageError> {
        if self.state.removed.load(Ordering::Acquire) {
            Err(StorageError::NotFound(self.state.name.clone()))
        } else {
            Ok(Arc::clone(&self.state))
        }
    }

    /// Runs `io` on the pool against the live file state.
    fn on_pool<T, F>(&self, io: F) -> impl Future<Output = Result<T, StorageError>> + Send + 'static
    where
        F: FnOnce(&FileState) -> Result<T, StorageError> + Send + 'static,
        T: Send + 'static,
    {
        let pending = self.live_state().map(|state| self.pool.run(move || io(&state)));
        async move { pending?.await }
    }
}

impl StorageFile for DiskFile {
    fn len(&self) -> u64 {
        if self.state.removed.load(Ordering::Acquire) { 0 } else { self.state.len.load(Ordering::Acquire) }
    }

    fn read_at(&self, offset: u64, len: usize) -> impl Future<Output = Result<Bytes, StorageError>> + Send {
        // A removed file is not found, whatever the range.
        let in_bounds = self.live_state().and_then(|state| {
            let file_len = state.len.load(Ordering::Acquire);
            match offset.checked_add(len as u64) {
                Some(end) if end <= file_len => Ok(()),
                _ => Err(StorageError::OutOfBounds { offset, len, file_len }),
            }
        });
        let stats = self.stats.clone();
        let pending = in_bounds.map(|()| {
            self.on_pool(move |state| {
                let mut buf = vec![0; len];
                state
                    .file
                    .read_exact_at(&mut buf, offset)
                    .map_err(|e| io_error(&state.name, format_args!("read of {len} bytes at offset {offset}"), e))?;
                stats.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
                Ok(Bytes::from(buf))
            })
        });
        async move { pending?.await }
    }

    fn write_at(&self, offset: u64, data: Bytes) -> impl Future<Output = Result<(), StorageError>> + Send {
        let stats = self.stats.clone();
        self.on_pool(move |state| {
            let end = extent_end(offset, data.len()).ok_or_else(|| too_large(&state.name, offset, data.len()))?;
            state.file.write_all_at(&data, offset).map_err(|e| {
                io_error(&state.name, format_args!("write of {} bytes at offset {offset}", data.len()), e)
            })?;
            state.len.fetch_max(end, Ordering::AcqRel);
            stats.record_write(data.len());
            Ok(())
        })
    }

    fn append(&self, data: Bytes) -> impl Future<Output = Result<u64, StorageError>> + Send {
        // The contract reserves the offset when `append` is called, not when
        // the future is first polled.
        let reserved = self.live_state().and_then(|state| {
            state
                .len
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |len| extent_end(len, data.len()))
                .map_err(|len| too_large(&state.name, len, data.len()))
        });
        let stats = self.stats.clone();
        let pending = reserved.map(|offset| {
            self.on_pool(move |state| {
                state.file.write_all_at(&data, offset).map_err(|e| {
                    io_error(&state.name, format_args!("append of {} bytes at offset {offset}", data.len()), e)
                })?;
                stats.record_write(data.len());
                Ok(offset)
            })
        });
        async move { pending?.await }
    }

    fn truncate(&self, len: u64) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.on_pool(move |state| {
            state.file.set_len(len).map_err(|e| io_error(&state.name, format_args!("truncate to {len} bytes"), e))?;
            state.len.store(len, Ordering::Release);
            // After the length: a sync that sees the flag covers the truncate.
            state.needs_full_sync.store(true, Ordering::Release);
            Ok(())
        })
    }

    fn sync(&self) -> impl Future<Output = Result<(), StorageError>> + Send {
        let stats = self.stats.clone();
        self.on_pool(move |state| {
            if state.sync_failed.load(Ordering::Acquire) {
                return Err(StorageError::Io(format!(
                    "{}: an earlier sync failed; its unsynced writes may be lost, reopen and recover",
                    state.name
                )));
            }
            let full = state.needs_full_sync.swap(false, Ordering::AcqRel);
            let synced = stats.time_sync(|| if full { state.file.sync_all() } else { state.file.sync_data() });
            synced.map_err(|e| {
                state.sync_failed.store(true, Ordering::Release);
                io_error(&state.name, if full { "fsync" } else { "fdatasync" }, e)
            })
        })
    }
}

impl StorageStats {
    fn record_write(&self, len: usize) {
        self.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs a sync, counting it and its duration (on the real clock: this is
    /// the OS layer, and what is measured is the disk).
    #[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "measures a real fsync")]
    fn time_sync(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let started = std::time::Instant::now();
        let result = sync();
        self.sync_latency.record(started.elapsed().as_nanos() as u64);
        match &result {
            Ok(()) => self.syncs.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.sync_failures.fetch_add(1, Ordering::Relaxed),
        };
        result
    }
}

/// The end of `len` bytes at `offset`, if it is a valid file offset
/// (at most `i64::MAX` on Linux).
fn extent_end(offset: u64, len: usize) -> Option<u64> {
    offset.checked_add(len as u64).filter(|&end| end <= i64::MAX as u64)
}

fn too_large(name: &str, offset: u64, len: usize) -> StorageError {
    StorageError::Io(format!("{name}: {len} bytes at offset {offset} exceed the largest file offset"))
}

/// An `io::Error` as a [`StorageError::Io`] naming the file and the operation.
fn io_error(name: &str, what: impl fmt::Display, e: io::Error) -> StorageError {
    StorageError::Io(format!("{name}: {what}: {e}"))
}

impl fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStorage").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

impl fmt::Debug for DiskFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskFile").field("name", &self.state.name).field("len", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::blocking::tests::block_on;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!("kaelix-storage-{test}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn storage(dir: &TempDir) -> FileStorage {
        FileStorage::open_dir(dir.0.join("node"), BlockingPool::new(2, "test-storage")).expect("open_dir")
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn round_trip() {
        let dir = TempDir::new("round-trip");
        let storage = storage(&dir);
        block_on(async {
            let f = storage.open("data.log").await.expect("open");
            assert!(f.is_empty());
            assert_eq!(f.append(b("hello ")).await, Ok(0));
            assert_eq!(f.append(b("world")).await, Ok(6));
            f.write_at(0, b("H")).await.expect("write");
            assert_eq!(f.len(), 11);
            assert_eq!(f.read_at(0, 11).await.expect("read"), b("Hello world"));
            // Writing past the end zero-fills the gap.
            f.write_at(13, b("!")).await.expect("write");
            assert_eq!(f.read_at(10, 4).await.expect("read"), Bytes::from_static(b"d\0\0!"));
            f.truncate(5).await.expect("truncate");
            assert_eq!(f.len(), 5);
            f.sync().await.expect("sync after truncate");
            assert_eq!(f.append(b("!")).await, Ok(5));
            f.sync().await.expect("sync");
            assert_eq!(f.read_at(0, 6).await.expect("read"), b("Hello!"));
            assert_eq!(fs::metadata(dir.0.join("node/data.log")).expect("stat").len(), 6);
        });
    }

    #[test]
    fn concurrent_appends_from_clones_never_overlap() {
        const THREADS: usize = 4;
        const PER_THREAD: usize = 50;
        let dir = TempDir::new("concurrent-appends");
        let storage = storage(&dir);
        let first = block_on(storage.open("log")).expect("open");
        let record = |t: usize, i: usize| format!("[{t}:{i}:{}]", "x".repeat((t * 7 + i) % 13));
        let appenders: Vec<_> = (0..THREADS)
            .map(|t| {
                // Half the threads clone the handle, half open the name again:
                // both must share one length.
                let file = if t % 2 == 0 { first.clone() } else { block_on(storage.open("log")).expect("open") };
                thread::spawn(move || {
                    block_on(async {
                        let mut placed = Vec::new();
                        for i in 0..PER_THREAD {
                            let offset = file.append(b(&record(t, i))).await.expect("append");
                            placed.push((t, i, offset));
                        }
                        placed
                    })
                })
            })
            .collect();
        let mut placed: Vec<(usize, usize, u64)> =
            appenders.into_iter().flat_map(|h| h.join().expect("appender thread")).collect();
        placed.sort_by_key(|&(_, _, offset)| offset);
        block_on(async {
            let mut expected_offset = 0;
            for (t, i, offset) in placed {
                let want = record(t, i);
                assert_eq!(offset, expected_offset, "gap or overlap before record {want}");
                let got = first.read_at(offset, want.len()).await.expect("read");
                assert_eq!(got, b(&want), "record {t}:{i} at {offset} was overwritten");
                expected_offset += want.len() as u64;
            }
            assert_eq!(first.len(), expected_offset);
        });
    }

    #[test]
    fn reopen_after_drop_sees_the_data() {
        let dir = TempDir::new("reopen");
        {
            let storage = storage(&dir);
            block_on(async {
                let f = storage.open("state").await.expect("open");
                f.append(b("durable")).await.expect("append");
                f.sync().await.expect("sync");
            });
        }
        let storage = storage(&dir);
        block_on(async {
            let f = storage.open("state").await.expect("reopen");
            assert_eq!(f.len(), 7);
            assert_eq!(f.read_at(0, 7).await.expect("read"), b("durable"));
            assert_eq!(f.append(b("!")).await, Ok(7), "appends continue at the end");
        });
    }

    #[test]
    fn reads_past_the_end_are_out_of_bounds() {
        let dir = TempDir::new("out-of-bounds");
        let storage = storage(&dir);
        block_on(async {
            let f = storage.open("data.bin").await.expect("open");
            f.write_at(0, b("abc")).await.expect("write");
            let err = f.read_at(2, 5).await.expect_err("past the end");
            assert_eq!(err, StorageError::OutOfBounds { offset: 2, len: 5, file_len: 3 });
            assert_eq!(err.to_string(), "read of 5 bytes at offset 2 is past the end of the file (3 bytes)");
            assert_eq!(f.read_at(4, 0).await, Err(StorageError::OutOfBounds { offset: 4, len: 0, file_len: 3 }));
            assert_eq!(
                f.read_at(u64::MAX, 2).await,
                Err(StorageError::OutOfBounds { offset: u64::MAX, len: 2, file_len: 3 })
            );
            assert_eq!(f.read_at(3, 0).await, Ok(Bytes::new()));
            assert_eq!(f.read_at(1, 2).await, Ok(b("bc")));
        });
    }

    #[test]
    fn io_errors_name_the_file() {
        let dir = TempDir::new("io-errors");
        let storage = storage(&dir);
        block_on(async {
            let f = storage.open("big").await.expect("open");
            let err = f.write_at(u64::MAX - 1, b("ab")).await.expect_err("beyond any file offset");
            assert!(matches!(&err, StorageError::Io(m) if m.starts_with("big: ")), "{err}");
            assert!(f.is_empty(), "a failed write does not change the length");
        });
    }

    #[test]
    fn invalid_names_are_refused() {
        let dir = TempDir::new("invalid-names");
        let storage = storage(&dir);
        block_on(async {
            let long = "n".repeat(256);
            for bad in ["", ".", "..", "a/b", "x y", "ü", "../escape", long.as_str()] {
                let opened = storage.open(bad).await.map(|_| ());
                assert_eq!(opened, Err(StorageError::InvalidName(bad.to_owned())));
                assert_eq!(storage.remove(bad).await, Err(StorageError::InvalidName(bad.to_owned())));
            }
            assert_eq!(storage.list().await, Ok(vec![]));
        });
        assert!(!dir.0.join("escape").exists());
    }

    #[test]
    fn list_returns_sorted_regular_files() {
        let dir = TempDir::new("list");
        let storage = storage(&dir);
        block_on(async {
            for name in ["b", "c.log", "a-1", "A_0"] {
                storage.open(name).await.expect("open");
            }
            // Not storage files: a directory and a name the contract cannot open.
            fs::create_dir(storage.dir().join("subdir")).expect("mkdir");
            fs::write(storage.dir().join("not valid"), b"").expect("write");
            assert_eq!(storage.list().await, Ok(["A_0", "a-1", "b", "c.log"].map(String::from).to_vec()));
        });
    }

    #[test]
    fn removed_files_are_not_found_through_old_handles() {
        let dir = TempDir::new("remove");
        let storage = storage(&dir);
        block_on(async {
            let f = storage.open("data.bin").await.expect("open");
            f.append(b("abc")).await.expect("append");
            assert_eq!(storage.remove("missing").await, Err(StorageError::NotFound("missing".to_owned())));
            storage.remove("data.bin").await.expect("remove");
            assert!(!storage.dir().join("data.bin").exists());
            let not_found = Err(StorageError::NotFound("data.bin".to_owned()));
            assert_eq!(f.read_at(0, 1).await, not_found.clone().map(|()| Bytes::new()));
            assert_eq!(f.clone().sync().await, not_found);
            assert_eq!(f.write_at(0, b("x")).await, not_found);
            assert_eq!(f.truncate(0).await, not_found);
            assert_eq!(f.append(b("x")).await, not_found.clone().map(|()| 0));
            assert_eq!(f.len(), 0);
            assert_eq!(storage.remove("data.bin").await, not_found);
            assert_eq!(storage.list().await, Ok(vec![]));
            // The name can be created again, empty and unrelated to the old handle.
            let again = storage.open("data.bin").await.expect("reopen");
            assert!(again.is_empty());
            assert_eq!(f.read_at(0, 0).await, not_found.map(|()| Bytes::new()));
        });
    }
}

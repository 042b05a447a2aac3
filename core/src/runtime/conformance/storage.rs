//! [`Storage`] and [`StorageFile`]: names, reads of completed writes,
//! appends, truncation, errors, listing, removal, sync.
//!
//! Every check works on files named `conformance-…` and removes them at
//! the end; it tolerates other files in the same storage.

use bytes::Bytes;
use futures_util::future::join;

use super::ensure;
use crate::runtime::{Clock, Priority, Spawner, Storage, StorageError, StorageFile};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Removes `name` if it exists (a leftover of an earlier run).
async fn clear<S: Storage>(storage: &S, name: &str) -> Result<(), String> {
    match storage.remove(name).await {
        Ok(()) | Err(StorageError::NotFound(_)) => Ok(()),
        Err(e) => Err(format!("removing a leftover {name}: {e}")),
    }
}

/// `name`, freshly created and empty.
async fn fresh<S: Storage>(storage: &S, name: &str) -> Result<S::File, String> {
    clear(storage, name).await?;
    let f = storage.open(name).await.map_err(|e| format!("open {name}: {e}"))?;
    ensure(f.is_empty(), || format!("{name} was just created, yet has {} bytes", f.len()))?;
    Ok(f)
}

async fn read<F: StorageFile>(f: &F, offset: u64, len: usize) -> Result<Bytes, String> {
    f.read_at(offset, len).await.map_err(|e| format!("read of {len} bytes at {offset}: {e}"))
}

/// Reads `want.len()` bytes at `offset` and compares.
async fn expect_bytes<F: StorageFile>(f: &F, offset: u64, want: &[u8], when: &str) -> Result<(), String> {
    let got = read(f, offset, want.len()).await?;
    ensure(got[..] == *want, || {
        format!("{when}: read {got:?} at {offset}, expected {:?}", Bytes::copy_from_slice(want))
    })
}

fn not_found<T>(name: &str) -> Result<T, StorageError> {
    Err(StorageError::NotFound(name.to_owned()))
}

/// `open` creates a missing file empty (and listed); opening an existing
/// file keeps its content, and every handle sees the same file.
pub async fn open_creates_an_empty_file<S: Storage>(storage: &S) -> Result<(), String> {
    let name = "conformance-open.dat";
    clear(storage, name).await?;
    let listed = storage.list().await.map_err(|e| format!("list: {e}"))?;
    ensure(!listed.iter().any(|n| n == name), || format!("{name} was removed, yet listed: {listed:?}"))?;
    let f = storage.open(name).await.map_err(|e| format!("open {name}: {e}"))?;
    ensure(f.is_empty() && f.len() == 0, || format!("a new file has {} bytes", f.len()))?;
    let listed = storage.list().await.map_err(|e| format!("list: {e}"))?;
    ensure(listed.iter().any(|n| n == name), || format!("{name} was created, yet not listed: {listed:?}"))?;
    f.append(b("abc")).await.map_err(|e| format!("append: {e}"))?;
    let again = storage.open(name).await.map_err(|e| format!("opening {name} again: {e}"))?;
    ensure(again.len() == 3, || format!("reopened after a 3-byte append: {} bytes", again.len()))?;
    expect_bytes(&again, 0, b"abc", "through a second open").await?;
    again.append(b("de")).await.map_err(|e| format!("append: {e}"))?;
    ensure(f.len() == 5, || format!("the first handle sees {} bytes after the second appended 2 to 3", f.len()))?;
    expect_bytes(&f, 0, b"abcde", "through the first handle").await?;
    storage.remove(name).await.map_err(|e| format!("remove {name}: {e}"))
}

/// Completed writes are visible to reads at once (before any sync), through
/// every handle: overwrites, appends, and writes past the end, whose gap
/// reads as zeros.
pub async fn reads_see_completed_writes<S: Storage>(storage: &S) -> Result<(), String> {
    let name = "conformance-rw.dat";
    let f = fresh(storage, name).await?;
    let w = |r: Result<(), StorageError>| r.map_err(|e| format!("write: {e}"));
    w(f.write_at(0, b("hello world")).await)?;
    ensure(f.len() == 11, || format!("11 bytes written, length {}", f.len()))?;
    expect_bytes(&f, 0, b"hello world", "after a write").await?;
    w(f.write_at(6, b("WORLD")).await)?;
    expect_bytes(&f, 0, b"hello WORLD", "after an overwrite").await?;
    let at = f.append(b("!")).await.map_err(|e| format!("append: {e}"))?;
    ensure(at == 11, || format!("append to an 11-byte file wrote at {at}"))?;
    w(f.write_at(15, b("z")).await)?;
    ensure(f.len() == 16, || format!("a byte written at 15: length {}", f.len()))?;
    expect_bytes(&f, 0, b"hello WORLD!\0\0\0z", "after a write past the end").await?;
    let clone = f.clone();
    expect_bytes(&clone, 0, b"hello WORLD!\0\0\0z", "through a clone").await?;
    let reopened = storage.open(name).await.map_err(|e| format!("open {name} again: {e}"))?;
    expect_bytes(&reopened, 0, b"hello WORLD!\0\0\0z", "through a second open").await?;
    storage.remove(name).await.map_err(|e| format!("remove {name}: {e}"))
}

/// `append` returns the offset it wrote at, one after another; the offset
/// is reserved when `append` is called, not when its future is polled.
pub async fn append_offsets_are_reserved_at_call<S: Storage>(storage: &S) -> Result<(), String> {
    let name = "conformance-append.log";
    let f = fresh(storage, name).await?;
    let mut offsets = Vec::new();
    for s in ["aaa", "bb", "c"] {
        offsets.push(f.append(b(s)).await.map_err(|e| format!("append: {e}"))?);
    }
    ensure(offsets == [0, 3, 5], || format!("appends of 3, 2 and 1 bytes wrote at {offsets:?}"))?;
    // Called x then y; polled y first.
    let x = f.append(b("x"));
    let y = f.append(b("yy"));
    let (ry, rx) = join(y, x).await;
    ensure(rx == Ok(6) && ry == Ok(7), || {
        format!("append x then yy (called in that order, polled in the other) wrote x at {rx:?}, yy at {ry:?}")
    })?;
    ensure(f.len() == 9, || format!("9 bytes appended, length {}", f.len()))?;
    expect_bytes(&f, 0, b"aaabbcxyy", "after the appends").await?;
    storage.remove(name).await.map_err(|e| format!("remove {name}: {e}"))
}

/// Appends from concurrent tasks, through clones and second opens of one
/// file, never overlap and leave no gap: their ranges tile the file.
pub async fn concurrent_appends_never_overlap<R: Storage + Spawner + Clock>(rt: &R) -> Result<(), String> {
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let name = "conformance-concurrent.log";
    let first = fresh(rt, name).await?;
    let record = |t: usize, i: usize| format!("[{t}:{i}:{}]", "x".repeat((t * 7 + i) % 13));
    let mut appenders = Vec::new();
    for t in 0..TASKS {
        let file = if t % 2 == 0 {
            first.clone()
        } else {
            rt.open(name).await.map_err(|e| format!("open {name} again: {e}"))?
        };
        appenders.push(rt.spawn(Priority::ALL[t % 4], "conformance-appender", async move {
            let mut placed = Vec::new();
            for i in 0..EACH {
                let offset = file.append(b(&record(t, i))).await.map_err(|e| format!("append {t}:{i}: {e}"))?;
                placed.push((offset, t, i));
            }
            Ok::<_, String>(placed)
        }));
    }
    let mut placed = Vec::new();
    for (t, h) in appenders.into_iter().enumerate() {
        placed.extend(h.await.map_err(|e| format!("appender {t}: {e}"))??);
    }
    placed.sort_unstable();
    let mut end = 0;
    for (offset, t, i) in placed {
        let want = record(t, i);
        ensure(offset == end, || {
            format!("record {t}:{i} at {offset}, but the records before it end at {end}: overlap or gap")
        })?;
        expect_bytes(&first, offset, want.as_bytes(), "a concurrent append").await?;
        end += want.len() as u64;
    }
    ensure(first.len() == end, || format!("the appends end at {end}, the file has {} bytes", first.len()))?;
    rt.remove(name).await.map_err(|e| format!("remove {name}: {e}"))
}

/// `truncate` shortens a file (what was cut is gone: reads past the new end
/// fail, appends continue there) and zero-extends it.
pub async fn truncate_shortens_and_zero_extends<S: Storage>(storage: &S) -> Result<(), String> {
    let name = "conformance-truncate.dat";
    let f = fresh(storage, name).await?;
    f.write_at(0, b("0123456789")).await.map_err(|e| format!("write: {e}"))?;
    f.truncate(4).await.map_err(|e| format!("truncate to 4: {e}"))?;
    ensure(f.len() == 4, || format!("truncated to 4: length {}", f.len()))?;
    expect_bytes(&f, 0, b"0123", "after truncating to 4").await?;
    let r = f.read_at(0, 5).await;
    ensure(r == Err(StorageError::OutOfBounds { offset: 0, len: 5, file_len: 4 }), || {
        format!("reading 5 bytes of a file truncated to 4 gave {r:?}")
    })?;
    f.truncate(8).await.map_err(|e| format!("truncate to 8: {e}"))?;
    ensure(f.len() == 8, || format!("extended to 8: length {}", f.len()))?;
    expect_bytes(&f, 0, b"0123\0\0\0\0", "after extending to 8").await?;
    let at = f.append(b("x")).await.map_err(|e| format!("append: {e}"))?;
    ensure(at == 8, || format!("append after truncating to 8 wrote at {at}"))?;
    f.truncate(0).await.map_err(|e| format!("truncate to 0: {e}"))?;
    ensure(f.is_empty(), || format!("truncated to 0: length {}", f.len()))?;
    storage.remove(name).await.map_err(|e| format!("remove {name}: {e}"))
}

/// A read reaching past the end fails with [`StorageError::OutOfBounds`]
/// naming the request and the length; reads inside the file (also empty
/// ones at the end) succeed.
pub async fn reads_past_the_end_are_out_of_bounds<S: Storage>(storage: &S) -> Result<(), String> {
    let name = "conformance-bounds.dat";
    let f = fresh(storage, name).await?;
    f.write_at(0, b("abc")).await.map_err(|e| format!("write: {e}"))?;
    let oob = |offset: u64, len: usize| Err(StorageError::OutOfBounds { offset, len, file_len: 3 });
    for (offset, len) in [(2u64, 5usize), (4, 0), (3, 1), (u64::MAX, 2), (0, usize::MAX)] {
        let r = f.read_at(offset, len).await.map(|_| ());
        ensure(r == oob(offset, len), || format!("read of {len} bytes at {offset} of a 3-byte file gave {r:?}"))?;
    }
    for (offset, want) in [(3u64, &b""[..]), (0, b"abc"), (1, b"bc"), (0, b"")] {
        expect_bytes(&f, offset, want, "inside a 3-byte file").await?;
    }
    storage.remove(name).await.map_err(|e| format!("remove {name}: {e}"))
}

/// `list` returns every file's name, sorted, whatever the creation order.
pub async fn list_is_sorted<S: Storage>(storage: &S) -> Result<(), String> {
    let names = ["b", "c.log", "a-1", "A_0", "Z", "0", "a", "a.b", "_"].map(|n| format!("conformance-list-{n}"));
    for n in &names {
        fresh(storage, n).await?;
    }
    let listed = storage.list().await.map_err(|e| format!("list: {e}"))?;
    ensure(listed.windows(2).all(|w| w[0] < w[1]), || format!("list is not sorted: {listed:?}"))?;
    let ours: Vec<&String> = listed.iter().filter(|n| n.starts_with("conformance-list-")).collect();
    let mut want: Vec<&String> = names.iter().collect();
    want.sort();
    ensure(ours == want, || format!("created {want:?}, listed {ours:?}"))?;
    for n in &names {
        storage.remove(n).await.map_err(|e| format!("remove {n}: {e}"))?;
    }
    Ok(())
}

/// `remove` deletes the name: it is no longer listed, removing it again or
/// removing a name that never existed is [`StorageError::NotFound`], and
/// opening it again creates a new, empty file.
pub async fn remove_deletes_the_name<S: Storage>(storage: &S) -> Result<(), String> {
    let name = "conformance-remove.dat";
    let f = fresh(storage, name).await?;
    f.append(b("abc")).await.map_err(|e| format!("append: {e}"))?;
    f.sync().await.map_err(|e| format!("sync: {e}"))?;
    drop(f);
    let r = storage.remove(name).await;
    ensure(r == Ok(()), || format!("removing {name} gave {r:?}"))?;
    let listed = storage.list().await.map_err(|e| format!("list: {e}"))?;
    ensure(!listed.iter().any(|n| n == name), || format!("{name} was removed, yet listed: {listed:?}"))?;
    let r = storage.remove(name).await;
    ensure(r == not_found(name), || format!("removing {name} twice gave {r:?}"))?;
    let never = "conformance-never-created";
    clear(storage, never).await?;
    let r = storage.remove(never).await;
    ensure(r == not_found(never), || format!("removing a name that never existed gave {r:?}"))?;
    let again = storage.open(name).await.map_err(|e| format!("open {name} after removing it: {e}"))?;
    ensure(again.is_empty(), || format!("{name} reopened after removal has {} bytes", again.len()))?;
    storage.remove(name).await.map_err(|e| format!("remove {name}: {e}"))
}

/// Names that are not plain (`[A-Za-z0-9._-]`, 1–255 bytes, not `.` or
/// `..`) are refused with [`StorageError::InvalidName`] by `open` and
/// `remove`, and never appear in the listing; the longest plain name works.
pub async fn invalid_names_are_refused<S: Storage>(storage: &S) -> Result<(), String> {
    let long = "n".repeat(256);
    let bad = ["", ".", "..", "a/b", "/abs", "x y", "ü", "../escape", "tab\t", "nul\0", long.as_str()];
    for name in bad {
        let invalid = Err(StorageError::InvalidName(name.to_owned()));
        let r = storage.open(name).await.map(|_| ());
        ensure(r == invalid, || format!("open({name:?}) gave {r:?}"))?;
        let r = storage.remove(name).await;
        ensure(r == invalid, || format!("remove({name:?}) gave {r:?}"))?;
    }
    let listed = storage.list().await.map_err(|e| format!("list: {e}"))?;
    ensure(!listed.iter().any(|n| bad.contains(&n.as_str()) || n == "escape"), || {
        format!("an invalid name reached the storage: {listed:?}")
    })?;
    let longest = format!("conformance-{}", "m".repeat(255 - "conformance-".len()));
    let f = fresh(storage, &longest).await?;
    f.append(b("ok")).await.map_err(|e| format!("append to a 255-byte name: {e}"))?;
    expect_bytes(&f, 0, b"ok", "a file with a 255-byte name").await?;
    storage.remove(&longest).await.map_err(|e| format!("remove the 255-byte name: {e}"))
}

/// `sync` succeeds on a healthy device — on an empty file, after appends,
/// writes and truncation — and changes nothing a read sees.
pub async fn sync_succeeds<S: Storage>(storage: &S) -> Result<(), String> {
    let name = "conformance-sync.dat";
    let f = fresh(storage, name).await?;
    let sync = |what: &'static str, r: Result<(), StorageError>| r.map_err(|e| format!("sync {what}: {e}"));
    sync("of an empty file", f.sync().await)?;
    f.append(b("hello")).await.map_err(|e| format!("append: {e}"))?;
    sync("after an append", f.sync().await)?;
    f.write_at(1, b("E")).await.map_err(|e| format!("write: {e}"))?;
    sync("after a write", f.sync().await)?;
    f.truncate(4).await.map_err(|e| format!("truncate: {e}"))?;
    sync("after a truncate", f.sync().await)?;
    sync("twice in a row", f.sync().await)?;
    expect_bytes(&f, 0, b"hEll", "after the syncs").await?;
    ensure(f.len() == 4, || format!("length {} after truncating to 4 and syncing", f.len()))?;
    storage.remove(name).await.map_err(|e| format!("remove {name}: {e}"))
}

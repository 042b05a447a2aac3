//! Configuration: what hot reload costs (issue 14's targets).
//!
//! * `config/apply_validated_change` — `HotReloadManager::offer` of an
//!   already loaded and validated configuration that changes one limit:
//!   diff of the effective trees, the reloadable-key check, the atomic swap
//!   and the broadcast to one subscriber (target: under 1 ms).
//! * `config/reload_from_file` — one whole update through the manager as
//!   SIGHUP or the watcher does it: save the file (overwritten in place),
//!   read it, parse, merge, validate, diff, swap, back up the previous file
//!   (target: at least 1,000 per second, i.e. under 1 ms each).
//! * `config/update_in_memory` — the manager's own share of an update:
//!   parse, merge, validate and apply a new text, without the file system.
//! * `config/load_and_validate` — the loader alone on the same text.
//! * `config/read_current` — the hot-path read: load the current
//!   configuration (no lock) and read one limit.
//! * The size of one configuration instance (a realistic `ServerConfig`:
//!   3 users with permissions, 5 topics) is measured with a counting
//!   allocator — the bytes a clone allocates plus the inline size — and
//!   printed before the timings (target: under 10 KB).
//!
//! `cargo bench -p kaelix-benches --bench config -- --noplot`; medians in
//! `target/criterion/config_*/new/estimates.json`.

#![allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "a benchmark of file reloads: real files")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kaelix_config::{ConfigLoader, FixedProbe, HotReloadManager, Phase, ReloadPolicy};
use kaelix_server::ServerConfig;

/// Counts bytes allocated, to size a configuration instance.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code, reason = "a counting allocator delegating to System: the only way to measure heap size")]
// SAFETY: every method forwards to `System` with the caller's arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const HASH: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

fn file_text(max_payload: u64) -> String {
    let mut t = format!(
        "server_name = \"bench-node\"\n[nats]\nlisten = \"127.0.0.1:0\"\n[native]\nlisten = \"127.0.0.1:0\"\n\
         [limits]\nmax_payload = {max_payload}\nmax_connections = 10000\n"
    );
    for user in ["alice", "bob", "carol"] {
        t += &format!(
            "[[auth.users]]\nuser = \"{user}\"\npassword = \"{HASH}\"\n\
             [auth.users.publish]\nallow = [\"orders.>\", \"{user}.>\"]\ndeny = [\"orders.secret\"]\n\
             [auth.users.subscribe]\nallow = [\">\"]\n"
        );
    }
    for topic in ["orders", "payments", "metrics.cpu", "metrics.mem", "audit"] {
        t += &format!("[[topics]]\nname = \"{topic}\"\npartitions = 4\nmax_records = 1000000\n");
    }
    t
}

/// Saves `text` over `path` in place (see `config/reload_from_file`).
fn save_in_place(path: &Path, text: &str) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.set_len(text.len() as u64).unwrap();
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("kaelix-bench-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kaelix.toml");
    std::fs::write(&path, file_text(1 << 20)).unwrap();
    let loader = ConfigLoader::new().with_path(&path).with_probe(Arc::new(FixedProbe::default()));
    let initial = loader.load::<ServerConfig>().unwrap();

    // Size of one instance.
    let before = ALLOCATED.load(Ordering::Relaxed);
    let copy = black_box(initial.config.clone());
    let heap = ALLOCATED.load(Ordering::Relaxed) - before;
    let inline = std::mem::size_of::<ServerConfig>();
    println!("config/instance_size: {} bytes ({inline} inline + {heap} on the heap; 3 users, 5 topics)", inline + heap);
    drop(copy);

    let manager =
        HotReloadManager::new(loader.clone(), initial, ReloadPolicy::new(ServerConfig::RELOADABLE.iter().copied()))
            .unwrap();
    let changes = manager.subscribe();
    let load = |payload: u64| {
        loader
            .load_text::<ServerConfig>(Some(Path::new("kaelix.toml")), Some(&file_text(payload)), Phase::Reload)
            .unwrap()
    };
    let (a, b) = (load(2 << 20), load(1 << 20));
    let mut flip = false;
    c.bench_function("config/apply_validated_change", |bench| {
        bench.iter_batched(
            || {
                flip = !flip;
                if flip { a.clone() } else { b.clone() }
            },
            |next| {
                let outcome = manager.offer(next);
                assert!(matches!(outcome, kaelix_config::reload::ReloadOutcome::Applied { .. }), "{outcome:?}");
                while changes.try_recv().is_ok() {}
            },
            BatchSize::SmallInput,
        )
    });

    // The manager's own share of an update: load and validate the new
    // text, then apply (no file IO).
    let mut limit = 7 << 20;
    c.bench_function("config/update_in_memory", |bench| {
        bench.iter(|| {
            limit += 1;
            let next = loader
                .load_text::<ServerConfig>(Some(Path::new("kaelix.toml")), Some(&file_text(limit)), Phase::Reload)
                .unwrap();
            let outcome = manager.offer(next);
            assert!(matches!(outcome, kaelix_config::reload::ReloadOutcome::Applied { .. }), "{outcome:?}");
            while changes.try_recv().is_ok() {}
        })
    });

    // Every update writes a limit not written before: always a change. The
    // file is saved in place (overwritten, then cut to length): truncating
    // it to zero first or renaming a new file over it makes ext4 flush it
    // (`auto_da_alloc`), 0.3 to 2 ms that are the editor's, not the manager's.
    let mut payload = 3 << 20;
    c.bench_function("config/reload_from_file", |bench| {
        bench.iter(|| {
            payload += 1;
            save_in_place(&path, &file_text(payload));
            let outcome = manager.reload_now();
            assert!(matches!(outcome, kaelix_config::reload::ReloadOutcome::Applied { .. }), "{outcome:?}");
            while changes.try_recv().is_ok() {}
        })
    });

    let text = file_text(5 << 20);
    c.bench_function("config/load_and_validate", |bench| {
        bench.iter(|| {
            black_box(
                loader.load_text::<ServerConfig>(Some(Path::new("kaelix.toml")), Some(&text), Phase::Reload).unwrap(),
            )
        })
    });

    c.bench_function("config/read_current", |bench| bench.iter(|| black_box(manager.current().limits.max_payload)));
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);

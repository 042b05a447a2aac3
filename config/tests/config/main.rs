//! Hot reload on real files: the ways editors and deployments replace a
//! configuration file, half-written files, bursts, and refusals.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "real files, real time: what hot reload is about"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kaelix_config::reload::{ReloadOutcome, WatchHandle};
use kaelix_config::{
    Category, ConfigLoader, Findings, FixedProbe, HotReloadManager, ReloadPolicy, Validate, ValidationContext,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AppConfig {
    listen: String,
    limits: Limits,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Limits {
    max_payload: u64,
    max_connections: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_payload: 1024, max_connections: 10 }
    }
}

impl Validate for AppConfig {
    fn validate(&self, _ctx: &ValidationContext<'_>, f: &mut Findings) {
        if self.limits.max_payload == 0 {
            f.error(Category::Performance, "limits.max_payload", "must be at least 1");
        }
    }
}

const DEBOUNCE: Duration = Duration::from_millis(300);

fn dir(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kaelix-config-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(payload: u64) -> String {
    format!("listen = \"127.0.0.1:4222\"\n[limits]\nmax_payload = {payload}\n")
}

fn manager(path: &Path) -> (HotReloadManager<AppConfig>, WatchHandle) {
    let loader = ConfigLoader::new().with_path(path).with_probe(Arc::new(FixedProbe::default()));
    let loaded = loader.load::<AppConfig>().unwrap();
    let m = HotReloadManager::new(loader, loaded, ReloadPolicy::new(["limits"])).unwrap();
    let watch = m.watch(DEBOUNCE).unwrap();
    (m, watch)
}

/// Waits (up to 10 s: a loaded machine) until `done`; false if it never is.
fn eventually(done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// After the expected state, nothing else happens for a few debounce periods.
fn settles(m: &HotReloadManager<AppConfig>) -> kaelix_config::ReloadStats {
    std::thread::sleep(DEBOUNCE * 4);
    m.stats()
}

#[test]
fn a_save_by_rename_applies_once_and_names_the_changed_keys() {
    let d = dir("rename");
    let path = d.join("app.toml");
    std::fs::write(&path, text(1024)).unwrap();
    let (m, _w) = manager(&path);
    let changes = m.subscribe();
    // What vim and most editors do: write a new file, rename it over.
    std::fs::write(d.join(".app.toml.swp"), text(2048)).unwrap();
    std::fs::rename(d.join(".app.toml.swp"), &path).unwrap();
    assert!(eventually(|| m.current().limits.max_payload == 2048));
    let change = changes.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(change.changed, vec!["limits.max_payload"]);
    assert_eq!((change.old.limits.max_payload, change.new.limits.max_payload, change.generation), (1024, 2048, 1));
    let stats = settles(&m);
    assert_eq!((stats.applied, stats.rejected, stats.generation), (1, 0, 1));
    assert!(stats.last_apply_unix_ms.is_some());
    assert_eq!(std::fs::read_to_string(m.backup_path()).unwrap(), text(1024), "the previous good file is kept");
}

#[test]
fn a_truncate_and_write_in_pieces_applies_the_whole_file_once() {
    let d = dir("truncate");
    let path = d.join("app.toml");
    std::fs::write(&path, text(1024)).unwrap();
    let (m, _w) = manager(&path);
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    let full = text(4096);
    let (first, second) = full.split_at(full.len() / 2);
    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    std::thread::sleep(DEBOUNCE / 3);
    f.write_all(second.as_bytes()).unwrap();
    drop(f);
    assert!(eventually(|| m.current().limits.max_payload == 4096));
    let stats = settles(&m);
    assert_eq!((stats.applied, stats.rejected), (1, 0), "the half-written state was never loaded");
}

#[test]
fn a_symlink_swap_is_seen() {
    let d = dir("symlink");
    let path = d.join("app.toml");
    std::fs::write(d.join("v1.toml"), text(1024)).unwrap();
    std::fs::write(d.join("v2.toml"), text(8192)).unwrap();
    std::os::unix::fs::symlink(d.join("v1.toml"), &path).unwrap();
    let (m, _w) = manager(&path);
    assert_eq!(m.current().limits.max_payload, 1024);
    // Atomic swap: a new link beside it, renamed over the old one.
    std::os::unix::fs::symlink(d.join("v2.toml"), d.join("app.toml.new")).unwrap();
    std::fs::rename(d.join("app.toml.new"), &path).unwrap();
    assert!(eventually(|| m.current().limits.max_payload == 8192));
    assert_eq!(settles(&m).applied, 1);
}

#[test]
fn a_file_left_half_written_is_refused_and_the_old_configuration_stays() {
    let d = dir("half");
    let path = d.join("app.toml");
    std::fs::write(&path, text(1024)).unwrap();
    let (m, _w) = manager(&path);
    std::fs::write(&path, "listen = \"127.0.0.1:4222\"\n[limits]\nmax_pay").unwrap();
    assert!(eventually(|| m.stats().rejected == 1));
    assert_eq!(m.current().limits.max_payload, 1024, "the old configuration stays");
    let error = m.stats().last_error.unwrap();
    assert!(error.starts_with("invalid configuration:\n") && error.contains("app.toml:3:"), "{error}");
    // Finished later: applied.
    std::fs::write(&path, text(3000)).unwrap();
    assert!(eventually(|| m.current().limits.max_payload == 3000));
    let stats = settles(&m);
    assert_eq!((stats.applied, stats.rejected), (1, 1));
}

#[test]
fn a_burst_of_100_writes_is_one_apply_of_the_last() {
    let d = dir("burst");
    let path = d.join("app.toml");
    std::fs::write(&path, text(1)).unwrap();
    let (m, _w) = manager(&path);
    for i in 2..=101 {
        std::fs::write(&path, text(i)).unwrap();
    }
    assert!(eventually(|| m.current().limits.max_payload == 101));
    let stats = settles(&m);
    assert_eq!((stats.applied, stats.rejected), (1, 0), "{stats:?}");
}

#[test]
fn invalid_and_non_reloadable_changes_are_refused_whole() {
    let d = dir("refused");
    let path = d.join("app.toml");
    std::fs::write(&path, text(1024)).unwrap();
    let (m, _w) = manager(&path);
    // Invalid value: refused, old kept, the reason names file:line:column.
    std::fs::write(&path, text(0)).unwrap();
    assert!(eventually(|| m.stats().rejected == 1));
    assert_eq!(m.current().limits.max_payload, 1024);
    assert_eq!(
        m.stats().last_error.unwrap(),
        "invalid configuration:\napp.toml:3:15: limits.max_payload: must be at least 1"
            .replace("app.toml", &path.display().to_string())
    );
    // A reloadable and a non-reloadable key together: nothing applies.
    std::fs::write(&path, "listen = \"0.0.0.0:1\"\n[limits]\nmax_payload = 5\n").unwrap();
    assert!(eventually(|| m.stats().rejected == 2));
    assert_eq!(m.current().limits.max_payload, 1024, "rejected whole: not even the reloadable key");
    assert_eq!(m.stats().last_error.unwrap(), "changing these keys needs a restart: listen");
    // SIGHUP's path: the same refused text again is nothing new.
    assert_eq!(m.reload_now(), ReloadOutcome::Unchanged);
    assert_eq!(settles(&m).rejected, 2);
    assert!(!m.backup_path().exists(), "no apply, no backup");
}

//! Helpers shared by the integration tests.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use kaelix_runtime_real::topology::Topology;
use kaelix_runtime_real::{Executor, ExecutorConfig};

/// A currently free port on 127.0.0.1 (bound, then released).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "kaelix-rt-{label}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A small unpinned executor (tests share two cores).
pub fn executor(name: &str, workers: usize) -> Executor {
    Executor::new(ExecutorConfig {
        workers_per_node: Some(workers),
        pin_workers: false,
        topology: Some(Topology::single_node(0..workers)),
        name: name.into(),
        ..ExecutorConfig::default()
    })
    .expect("executor starts")
}

//! Helpers shared by the integration tests.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kaelix_runtime_real::topology::Topology;
use kaelix_runtime_real::{Executor, ExecutorConfig};

/// A currently free port on 127.0.0.1, for a node to bind later (and to
/// bind again when it restarts). Drawn below the kernel's ephemeral range
/// (`ip_local_port_range`, 32768 and up by default), never with
/// `127.0.0.1:0`: the OS hands such a port, once released, to the next
/// `:0` bind — another test's listener, in this process or another — and
/// the node that binds it later fails (as its client listener, it used to
/// run on unreachable, and a produce to the groups it led went unanswered).
/// Each draw of this process is a new port; the process id spreads the
/// draws of test binaries running side by side.
pub fn free_addr() -> SocketAddr {
    static DRAWS: AtomicU32 = AtomicU32::new(0);
    let (low, span) = (20_000u32, 12_000u32);
    for _ in 0..500 {
        let draw = DRAWS.fetch_add(1, Ordering::Relaxed);
        // 104 729 is prime to the span: 12 000 draws in a row are distinct.
        let port = low + std::process::id().wrapping_mul(7919).wrapping_add(draw.wrapping_mul(104_729)) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port on loopback between {low} and {}", low + span);
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

//! The runtime contract's conformance suite (`kaelix_core::runtime::conformance`,
//! shared with `kaelix-runtime-sim`) on real threads, sockets and files.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use kaelix_core::NodeId;
use kaelix_core::runtime::conformance::{self, Pair};
use kaelix_runtime_real::{NodeConfig, RealRuntime};

use crate::support::{executor, free_addr, temp_dir};

/// Two nodes on one executor, each with a node-to-node address and its own
/// data directory; node 1 listens for clients, node 3 has a client address
/// nobody is bound to, node 77 has no address at all. Byte streams bind
/// port 0 on 127.0.0.1.
#[test]
fn conformance_suite_passes_on_the_real_runtime() {
    let exec = executor("conformance", 2);
    let peers = BTreeMap::from([(NodeId(1), free_addr()), (NodeId(2), free_addr())]);
    let clients = BTreeMap::from([(NodeId(1), free_addr()), (NodeId(3), free_addr())]);
    let dirs = [temp_dir("conformance-1"), temp_dir("conformance-2")];
    let node = |id: u64, dir: &std::path::PathBuf| {
        let mut cfg = NodeConfig::new(NodeId(id), dir.clone());
        cfg.peers = peers.clone();
        cfg.clients = clients.clone();
        cfg.seed = Some(id);
        RealRuntime::start(exec.handle(), cfg).expect("node starts")
    };
    let pair = Pair {
        server: node(1, &dirs[0]),
        client: node(2, &dirs[1]),
        not_listening: vec![NodeId(3), NodeId(77)],
        server_ip: Ipv4Addr::LOCALHOST.into(),
    };
    let report = exec.block_on(conformance::run_all(pair, &[]));
    exec.shutdown(Duration::from_secs(1));
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Err(e) = report.verdict(&[]) {
        panic!("{e}");
    }
}

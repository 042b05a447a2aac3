//! The simulator's broadcast node, unchanged, as three real nodes on
//! 127.0.0.1: it converges, with one node killed and restarted mid-run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kaelix_cluster::broadcast::BroadcastConfig;
use kaelix_cluster::broadcast::node::{BroadcastClient, BroadcastObserver, run_node};
use kaelix_cluster::broadcast::wire::Value;
use kaelix_core::NodeId;
use kaelix_core::runtime::{Clock, Priority, Spawner};
use kaelix_runtime_real::{Executor, NodeConfig, RealRuntime};

use crate::support::{executor, free_addr, temp_dir};

const SERVERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const CLIENT: NodeId = NodeId(100);

/// What each node holds, as the nodes report it.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<BTreeMap<NodeId, BTreeSet<u64>>>>);

impl BroadcastObserver for Held {
    fn booted(&self, node: NodeId) {
        self.0.lock().unwrap().insert(node, BTreeSet::new());
    }
    fn learned(&self, node: NodeId, value: &Value) {
        self.0.lock().unwrap().entry(node).or_default().insert(value.id);
    }
}

struct Cluster {
    peers: BTreeMap<NodeId, SocketAddr>,
    clients: BTreeMap<NodeId, SocketAddr>,
    dirs: BTreeMap<NodeId, PathBuf>,
    held: Held,
}

impl Cluster {
    fn start_node(&self, id: NodeId) -> Executor {
        let exec = executor(&format!("n{}", id.0), 1);
        let mut cfg = NodeConfig::new(id, self.dirs[&id].clone());
        cfg.peers = self.peers.clone();
        cfg.clients = self.clients.clone();
        let rt = RealRuntime::start(exec.handle(), cfg).expect("node starts");
        let config = BroadcastConfig::new(SERVERS.to_vec());
        let node = run_node(rt.clone(), config, self.held.clone()).expect("node listens for clients");
        drop(rt.spawn(Priority::Critical, "broadcast-node", node));
        exec
    }
}

#[test]
fn three_real_nodes_converge_with_one_killed_and_restarted() {
    let cluster = Cluster {
        peers: SERVERS.iter().map(|&n| (n, free_addr())).collect(),
        clients: SERVERS.iter().map(|&n| (n, free_addr())).collect(),
        dirs: SERVERS.iter().map(|&n| (n, temp_dir(&format!("bcast-n{}", n.0)))).collect(),
        held: Held::default(),
    };
    let mut nodes: BTreeMap<NodeId, Executor> = SERVERS.iter().map(|&n| (n, cluster.start_node(n))).collect();

    let client_exec = executor("client", 1);
    let mut cfg = NodeConfig::new(CLIENT, temp_dir("bcast-client"));
    cfg.clients = cluster.clients.clone();
    let client_rt = RealRuntime::start(client_exec.handle(), cfg).unwrap();

    // Submits `ids` round-robin over `targets`, retrying elsewhere on an
    // unknown outcome; returns the acknowledged ids.
    let submit = |ids: std::ops::Range<u64>, targets: Vec<NodeId>| {
        let rt = client_rt.clone();
        client_exec.block_on(async move {
            let mut client = BroadcastClient::new(rt.clone());
            let mut acked = Vec::new();
            for id in ids {
                let value = Value { id, payload: Bytes::from(format!("value {id}")) };
                for attempt in 0..20 {
                    let node = targets[(id as usize + attempt) % targets.len()];
                    match client.submit(node, value.clone(), Duration::from_secs(2)).await {
                        Ok(true) => {
                            acked.push(id);
                            break;
                        }
                        _ => rt.sleep(Duration::from_millis(50)).await,
                    }
                }
            }
            acked
        })
    };

    let mut acked = submit(0..100, SERVERS.to_vec());
    assert_eq!(acked.len(), 100, "all three up: every value acknowledged");

    // Kill node 2 mid-run; keep submitting to the others.
    let report = nodes.remove(&NodeId(2)).unwrap().shutdown(Duration::ZERO);
    assert!(report.cancelled.contains(&"broadcast-node"), "{report:?}");
    acked.extend(submit(100..200, vec![NodeId(1), NodeId(3)]));
    assert_eq!(acked.len(), 200, "two of three up: still acknowledged (2 copies needed)");

    // Restart it from its disk; it must catch up by anti-entropy.
    nodes.insert(NodeId(2), cluster.start_node(NodeId(2)));
    acked.extend(submit(200..250, SERVERS.to_vec()));
    let acked: BTreeSet<u64> = acked.into_iter().collect();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held = cluster.held.0.lock().unwrap().clone();
        let missing: Vec<(NodeId, usize)> = SERVERS
            .iter()
            .map(|n| (*n, acked.difference(held.get(n).unwrap_or(&BTreeSet::new())).count()))
            .filter(|(_, m)| *m > 0)
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not converged after 30 s; missing per node: {missing:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (_, exec) in nodes {
        exec.shutdown(Duration::ZERO);
    }
}

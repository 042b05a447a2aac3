//! The simulator's replicated-partition node, unchanged, as three real
//! nodes on 127.0.0.1: produces are acknowledged through leader changes,
//! a killed node (the leader of partition 0) restarts from its real files,
//! and every acknowledged record is read back at its offset.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kaelix_cluster::raft::{Raft, Role};
use kaelix_cluster::replicated::client::PartitionClient;
use kaelix_cluster::replicated::node::{ReplicaObserver, ReplicatedConfig, run_node};
use kaelix_core::NodeId;
use kaelix_core::runtime::{Priority, Spawner};
use kaelix_runtime_real::{Executor, NodeConfig, RealRuntime};

use crate::support::{executor, free_addr, temp_dir};

const SERVERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const CLIENT: NodeId = NodeId(100);
const PARTITIONS: u32 = 2;

/// Who leads each partition, as the members report it.
#[derive(Clone, Default)]
struct Leaders(Arc<Mutex<BTreeMap<u32, NodeId>>>);

impl ReplicaObserver for Leaders {
    fn stepped(&self, node: NodeId, group: u32, raft: &Raft) {
        if raft.role() == Role::Leader {
            self.0.lock().unwrap().insert(group, node);
        }
    }
}

struct Cluster {
    peers: BTreeMap<NodeId, SocketAddr>,
    clients: BTreeMap<NodeId, SocketAddr>,
    dirs: BTreeMap<NodeId, PathBuf>,
    leaders: Leaders,
}

impl Cluster {
    fn start_node(&self, id: NodeId) -> Executor {
        let exec = executor(&format!("r{}", id.0), 1);
        let mut cfg = NodeConfig::new(id, self.dirs[&id].clone());
        cfg.peers = self.peers.clone();
        cfg.clients = self.clients.clone();
        let rt = RealRuntime::start(exec.handle(), cfg).expect("node starts");
        let mut config = ReplicatedConfig::new(SERVERS.to_vec(), PARTITIONS);
        // Exercise snapshots and new WAL generations on real files.
        config.snapshot_every = 25;
        let node = run_node(rt.clone(), config, self.leaders.clone()).expect("node listens for clients");
        drop(rt.spawn(Priority::Critical, "replicated-node", node));
        exec
    }
}

#[test]
fn three_real_nodes_replicate_partitions_through_a_leader_crash() {
    let cluster = Cluster {
        peers: SERVERS.iter().map(|&n| (n, free_addr())).collect(),
        clients: SERVERS.iter().map(|&n| (n, free_addr())).collect(),
        dirs: SERVERS.iter().map(|&n| (n, temp_dir(&format!("raft-n{}", n.0)))).collect(),
        leaders: Leaders::default(),
    };
    let mut nodes: BTreeMap<NodeId, Executor> = SERVERS.iter().map(|&n| (n, cluster.start_node(n))).collect();

    let client_exec = executor("raft-client", 1);
    let mut cfg = NodeConfig::new(CLIENT, temp_dir("raft-client"));
    cfg.clients = cluster.clients.clone();
    let client_rt = RealRuntime::start(client_exec.handle(), cfg).unwrap();
    let mut client = PartitionClient::new(client_rt.clone(), SERVERS.to_vec(), 7);
    let mut acked: BTreeMap<(u32, u64), String> = BTreeMap::new();

    // Produces records `range`, each exactly once, through whatever leaders
    // there are; the client moves in and back out of the task.
    let produce = |mut client: PartitionClient<RealRuntime>, range: std::ops::Range<u32>| {
        client_exec.block_on(async move {
            let mut got = Vec::new();
            for i in range {
                let p = i % PARTITIONS;
                let payload = format!("record {i}");
                let offset = client
                    .produce(p, Bytes::from(payload.clone()), Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|e| panic!("produce {i}: {e}"));
                got.push(((p, offset), payload));
            }
            (client, got)
        })
    };

    let (c, got) = produce(client, 0..60);
    client = c;
    acked.extend(got);
    assert_eq!(acked.len(), 60, "every produce acknowledged at its own offset");

    // Kill the leader of partition 0; the others elect a new one.
    let leader = cluster.leaders.0.lock().unwrap()[&0];
    let report = nodes.remove(&leader).unwrap().shutdown(Duration::ZERO);
    assert!(report.cancelled.contains(&"replicated-node"), "{report:?}");
    let (c, got) = produce(client, 60..100);
    client = c;
    acked.extend(got);
    assert_eq!(acked.len(), 100, "two of three up: still acknowledged");

    // Restart it from its files; it must catch up and serve as a member.
    nodes.insert(leader, cluster.start_node(leader));
    let (mut client, got) = produce(client, 100..130);
    acked.extend(got);

    let keys: Vec<(u32, u64)> = acked.keys().copied().collect();
    let read_back = client_exec.block_on(async move {
        let mut out = BTreeMap::new();
        for (p, offset) in keys {
            let got = client.read(p, offset, Duration::from_secs(10)).await.expect("read");
            out.insert((p, offset), got.map(|b| String::from_utf8(b.to_vec()).expect("utf-8")));
        }
        out
    });
    for (key, payload) in &acked {
        assert_eq!(read_back[key].as_ref(), Some(payload), "offset {key:?}");
    }
    // Offsets are dense per partition: 65 records in each.
    for p in 0..PARTITIONS {
        let offsets: Vec<u64> = acked.keys().filter(|(q, _)| *q == p).map(|(_, o)| *o).collect();
        assert_eq!(offsets, (0..65).collect::<Vec<u64>>(), "partition {p}");
    }
    for (_, exec) in nodes {
        exec.shutdown(Duration::ZERO);
    }
    client_exec.shutdown(Duration::ZERO);
}

//! The replicated-partition node under the simulator, when one node cannot
//! listen for clients (its port taken, as a test's port drawn from the
//! ephemeral range was on a loaded machine): that node does not start
//! (`run_node` says why), so it never leads a group that clients cannot
//! reach, and the two others answer a produce to every partition. A node
//! that ran on without its listener was a member like any other: as the
//! leader of a group, every produce to that group went unanswered, the
//! others only redirecting to it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kaelix_cluster::replicated::client::{ClientError, PartitionClient};
use kaelix_cluster::replicated::node::{NoObserver, ReplicatedConfig, StartError, run_node};
use kaelix_core::runtime::{ClientNetwork, NetError};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::{NodeKind, NodeSpec, Sim, SimConfig};

const SERVERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
/// The node whose client port another holds.
const DEAF: NodeId = NodeId(3);
/// Enough groups that the deaf node, were it a member, would lead some.
const PARTITIONS: u32 = 6;

/// Each partition's produce, as the client saw it end.
type Answers = Arc<Mutex<Vec<(u32, Result<u64, ClientError>)>>>;

#[test]
fn a_node_that_cannot_listen_does_not_start_and_the_others_serve_every_partition() {
    for seed in 0..4 {
        let sim = Sim::new(SimConfig::new(seed));
        let refused: Arc<Mutex<Vec<StartError>>> = Arc::default();
        let config = ReplicatedConfig::new(SERVERS.to_vec(), PARTITIONS);
        for id in SERVERS {
            let (config, refused) = (config.clone(), refused.clone());
            let init = SimRuntime::init(move |rt| {
                let (config, refused) = (config.clone(), refused.clone());
                async move {
                    // Someone else holds the deaf node's client listener.
                    let _taken = (id == DEAF).then(|| rt.listen().expect("the first listen succeeds"));
                    match run_node(rt, config, NoObserver) {
                        Ok(node) => node.await,
                        Err(e) => {
                            refused.lock().unwrap().push(e);
                            std::future::pending::<()>().await;
                        }
                    }
                }
            });
            let spec = NodeSpec { kind: NodeKind::Server, name: format!("server-{}", id.0), faulty_disk: false, init };
            sim.add_node(id, spec);
        }
        let answers: Answers = Arc::default();
        let init = {
            let answers = answers.clone();
            SimRuntime::init(move |rt| {
                let answers = answers.clone();
                async move {
                    let mut client = PartitionClient::new(rt, SERVERS.to_vec(), 7);
                    for p in 0..PARTITIONS {
                        let offset = client.produce(p, Bytes::from(format!("to {p}")), Duration::from_secs(10)).await;
                        answers.lock().unwrap().push((p, offset));
                    }
                }
            })
        };
        sim.add_node(NodeId(100), NodeSpec { kind: NodeKind::Client, name: "client".into(), faulty_disk: false, init });

        let deadline = Instant::ZERO + Duration::from_secs(120);
        let all_answered = |_: &Sim| answers.lock().unwrap().len() == PARTITIONS as usize;
        assert!(sim.run_until_done(deadline, all_answered, |_| Ok::<(), ()>(())).unwrap(), "seed {seed}: not done");
        for (p, offset) in answers.lock().unwrap().iter() {
            assert_eq!(offset, &Ok(0), "seed {seed}: the produce to partition {p}");
        }
        assert_eq!(
            *refused.lock().unwrap(),
            vec![StartError::Listen { node: DEAF, error: NetError::AlreadyListening }],
            "seed {seed}: the deaf node, and only it, did not start"
        );
        eprintln!("seed {seed}: every partition answered at {}", sim.now());
        sim.shutdown();
    }
}

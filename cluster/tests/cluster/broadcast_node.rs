//! The broadcast node under the simulator, when it cannot listen for
//! clients (its port taken): it does not start, and `run_node` says why,
//! rather than running on as a member no client can reach (see
//! `kaelix_cluster::driver`).

use std::sync::{Arc, Mutex};

use kaelix_cluster::broadcast::BroadcastConfig;
use kaelix_cluster::broadcast::node::{NoObserver, run_node};
use kaelix_cluster::driver::StartError;
use kaelix_core::runtime::{ClientNetwork, NetError};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::{NodeKind, NodeSpec, Sim, SimConfig};

/// Each node, and what starting it answered (`None`: it started).
type Started = Arc<Mutex<Vec<(NodeId, Option<StartError>)>>>;

#[test]
fn a_broadcast_node_that_cannot_listen_does_not_start() {
    let sim = Sim::new(SimConfig::new(1));
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    let started: Started = Arc::default();
    for id in members.clone() {
        let (config, started) = (BroadcastConfig::new(members.clone()), started.clone());
        let init = SimRuntime::init(move |rt| {
            let (config, started) = (config.clone(), started.clone());
            async move {
                // Someone else holds node 3's client listener.
                let _taken = (id == NodeId(3)).then(|| rt.listen().expect("the first listen succeeds"));
                match run_node(rt, config, NoObserver) {
                    Ok(node) => {
                        started.lock().unwrap().push((id, None));
                        node.await
                    }
                    Err(e) => {
                        started.lock().unwrap().push((id, Some(e)));
                        std::future::pending::<()>().await;
                    }
                }
            }
        });
        sim.add_node(
            id,
            NodeSpec { kind: NodeKind::Server, name: format!("server-{}", id.0), faulty_disk: false, init },
        );
    }
    let all_tried = |_: &Sim| started.lock().unwrap().len() == 3;
    let deadline = Instant::ZERO + Duration::from_secs(10);
    assert!(sim.run_until_done(deadline, all_tried, |_| Ok::<(), ()>(())).unwrap(), "every node tried to start");
    sim.shutdown();
    let mut got = started.lock().unwrap().clone();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(
        got,
        vec![
            (NodeId(1), None),
            (NodeId(2), None),
            (NodeId(3), Some(StartError::Listen { node: NodeId(3), error: NetError::AlreadyListening })),
        ]
    );
}

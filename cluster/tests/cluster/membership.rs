//! The membership service end to end under the simulator: five nodes
//! converge, a crashed node is declared dead by everyone, and it rejoins
//! after a restart (with a fresh incarnation).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kaelix_cluster::membership::{self, Membership, MembershipConfig};
use kaelix_cluster::swim::MemberState;
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::{Fault, NodeKind, NodeSpec, Sim, SimConfig};

type Views = Arc<Mutex<BTreeMap<NodeId, Membership>>>;

fn states(views: &Views, observer: NodeId) -> BTreeMap<NodeId, MemberState> {
    let views = views.lock().unwrap();
    let Some(view) = views.get(&observer) else { return BTreeMap::new() };
    view.members().into_iter().map(|m| (m.id, m.state)).collect()
}

fn all_see(views: &Views, observers: &[NodeId], target: NodeId, state: MemberState) -> bool {
    observers.iter().all(|&o| states(views, o).get(&target) == Some(&state))
}

#[test]
fn five_nodes_converge_detect_a_crash_and_readmit_the_restarted_node() {
    for seed in 0..5 {
        let sim = Sim::new(SimConfig::new(seed));
        let nodes: Vec<NodeId> = (1..=5).map(NodeId).collect();
        let views: Views = Arc::default();
        for &id in &nodes {
            let (views, seeds) = (views.clone(), vec![NodeId(1)]);
            let init = SimRuntime::init(move |rt| {
                let (views, seeds) = (views.clone(), seeds.clone());
                async move {
                    let m = membership::start(&rt, MembershipConfig::new(seeds, Bytes::from_static(b"role=broker")));
                    views.lock().unwrap().insert(id, m);
                    std::future::pending::<()>().await
                }
            });
            sim.add_node(id, NodeSpec { kind: NodeKind::Server, name: format!("m{}", id.0), faulty_disk: false, init });
        }
        let at = |s: u64| Instant::ZERO + Duration::from_secs(s);
        let run_until = |deadline: Instant, done: &dyn Fn() -> bool| {
            sim.run_until_done(deadline, |_| done(), |_| Ok::<(), ()>(())).unwrap()
        };
        let converged =
            || nodes.iter().all(|&o| nodes.iter().all(|&t| states(&views, o).get(&t) == Some(&MemberState::Alive)));
        assert!(run_until(at(20), &converged), "seed {seed}: no convergence within 20 s");

        let victim = NodeId(3);
        sim.apply_fault(Fault::Crash(victim));
        let others: Vec<NodeId> = nodes.iter().copied().filter(|&n| n != victim).collect();
        let crashed_at = sim.now();
        assert!(
            run_until(crashed_at + Duration::from_secs(30), &|| all_see(&views, &others, victim, MemberState::Dead)),
            "seed {seed}: the crash was not detected by everyone within 30 s"
        );
        let detection = sim.now() - crashed_at;
        assert!(
            detection >= Duration::from_secs(1),
            "seed {seed}: detected in {detection:?}, faster than a probe round"
        );
        eprintln!("seed {seed}: converged, crash detected by all in {detection:?}");
        sim.apply_fault(Fault::Restart { node: victim, wipe: false });
        let restarted_at = sim.now();
        assert!(
            run_until(restarted_at + Duration::from_secs(30), &|| {
                views.lock().unwrap().contains_key(&victim) && converged()
            }),
            "seed {seed}: the restarted node was not readmitted within 30 s"
        );
        sim.shutdown();
    }
}

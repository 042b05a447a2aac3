//! Scenario family: SWIM membership (with Lifeguard) under faults.
//!
//! * **Cluster**: `n` nodes (5, 20 or 100) running
//!   `kaelix_cluster::membership`, joining through nodes 1–3.
//! * **Faults**: swarm-drawn per seed — crashes and restarts of up to a
//!   third of the nodes, partitions of every kind, loss, duplication,
//!   reordering, pauses, clock skew, drift and steps — for a 20 s safety
//!   phase.
//! * **Liveness**: then faults stop, crashed nodes restart and partitions
//!   heal; within the bound every node must see every node alive.
//!
//! A planted-bug variant (refutations that do not raise the incarnation)
//! must fail. Not yet here (the membership issue's remaining work): the
//! false-positive budget, the incarnations-only-grow check across
//! observers, and the measured table.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kaelix_cluster::membership::{self, Membership, MembershipConfig};
use kaelix_cluster::swim::{MemberState, PlantedBug};
use kaelix_core::rng;
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::trace::{TraceSink, digest};
use kaelix_sim::{FaultProfile, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig, Tolerance};

use crate::{RunReport, Scenario, Verdict};

/// One cluster size (and possibly a planted bug).
pub struct MembershipScenario {
    name: &'static str,
    description: &'static str,
    nodes: u64,
    planted: PlantedBug,
}

/// 5 nodes.
pub static MEMBERSHIP_5: MembershipScenario = MembershipScenario {
    name: "membership-5",
    description: "SWIM + Lifeguard, 5 nodes; crashes, partitions, loss, pauses, clocks; all agree after heal",
    nodes: 5,
    planted: PlantedBug::None,
};
/// 20 nodes.
pub static MEMBERSHIP_20: MembershipScenario = MembershipScenario {
    name: "membership-20",
    description: "SWIM + Lifeguard, 20 nodes; crashes, partitions, loss, pauses, clocks; all agree after heal",
    nodes: 20,
    planted: PlantedBug::None,
};
/// 100 nodes.
pub static MEMBERSHIP_100: MembershipScenario = MembershipScenario {
    name: "membership-100",
    description: "SWIM + Lifeguard, 100 nodes; crashes, partitions, loss, pauses, clocks; all agree after heal",
    nodes: 100,
    planted: PlantedBug::None,
};
/// Planted bug: refutations that do not raise the incarnation.
pub static MEMBERSHIP_20_REFUTE_BUG: MembershipScenario = MembershipScenario {
    name: "membership-20-refute-without-incarnation",
    description: "[planted bug] SWIM, 20 nodes, refuting a suspicion without raising the incarnation",
    nodes: 20,
    planted: PlantedBug::RefuteWithoutIncarnation,
};

const SAFETY: Duration = Duration::from_secs(20);
const LIVENESS_BOUND: Duration = Duration::from_secs(90);

type Views = Arc<Mutex<BTreeMap<NodeId, Membership>>>;

/// Nodes (observer → how many members it does not see alive).
fn disagreements(views: &Views, nodes: &[NodeId]) -> Vec<(NodeId, usize)> {
    let views = views.lock().unwrap_or_else(|e| e.into_inner());
    nodes
        .iter()
        .map(|&o| {
            let alive = views.get(&o).map_or(0, |v| {
                v.members().iter().filter(|m| m.state == MemberState::Alive && nodes.contains(&m.id)).count()
            });
            (o, nodes.len() - alive)
        })
        .filter(|(_, missing)| *missing > 0)
        .collect()
}

impl Scenario for MembershipScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn planted_bug(&self) -> bool {
        self.planted != PlantedBug::None
    }

    fn run(&self, seed: u64, trace: Option<TraceSink>) -> RunReport {
        let planted = self.planted;
        let nodes: Vec<NodeId> = (1..=self.nodes).map(NodeId).collect();
        let tolerance = Tolerance { max_down: (nodes.len() / 3).max(1), faulty_disks: 0, power_loss: false };
        let mut setup = rng::derive(seed, 0x5_1a_4e);
        let mut profile = FaultProfile::swarm(&mut setup);
        profile.restrict(&tolerance);
        let safety_end = Instant::ZERO + SAFETY;
        let schedule = FaultSchedule::generate(&profile, &tolerance, &nodes, &[], safety_end, &mut setup);
        let fault_mix = profile.mix();

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let views: Views = Arc::default();
        let seeds: Vec<NodeId> = nodes.iter().copied().take(3).collect();
        for &id in &nodes {
            let (views, seeds) = (views.clone(), seeds.clone());
            let init = SimRuntime::init(move |rt| {
                let (views, seeds) = (views.clone(), seeds.clone());
                async move {
                    let metadata = Bytes::from(format!("node={}", id.0));
                    let mut config = MembershipConfig::new(seeds, metadata);
                    config.swim.planted = planted;
                    let m = membership::start(&rt, config);
                    views.lock().unwrap_or_else(|e| e.into_inner()).insert(id, m);
                    std::future::pending::<()>().await
                }
            });
            sim.add_node(id, NodeSpec { kind: NodeKind::Server, name: format!("m{}", id.0), faulty_disk: false, init });
        }
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(safety_end);

        let deadline = safety_end + LIVENESS_BOUND;
        let mut last_check = Instant::ZERO;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.run_until_done(
                deadline,
                |sim| {
                    let now = sim.now();
                    if now < safety_end || now < last_check + Duration::from_millis(100) {
                        return false;
                    }
                    last_check = now;
                    disagreements(&views, &nodes).is_empty()
                },
                |_| Ok::<(), ()>(()),
            )
        }));
        let verdict = match outcome {
            Ok(Ok(true)) => Verdict::Pass,
            Ok(Ok(false)) => {
                let d = disagreements(&views, &nodes);
                Verdict::LivenessViolation(format!(
                    "{} of {} nodes still miss members {LIVENESS_BOUND:?} after heal: {:?}",
                    d.len(),
                    nodes.len(),
                    &d[..d.len().min(5)]
                ))
            }
            Ok(Err(())) => unreachable!("no safety check fails"),
            Err(panic) => Verdict::from_panic(panic),
        };
        let now = sim.now();
        sim.trace_event(None, "verdict", digest(verdict.to_string().as_bytes()), || format!("VERDICT {verdict}"));
        let report = RunReport {
            seed,
            trace_hash: sim.trace_hash(),
            sim_time: now.since_origin(),
            stats: sim.stats(),
            fault_mix,
            faults_applied: sim.fault_log().len(),
            workload: (self.nodes, self.nodes - disagreements(&views, &nodes).len() as u64),
            verdict,
        };
        sim.shutdown();
        report
    }
}

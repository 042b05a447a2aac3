//! Scenario family: SWIM membership (with Lifeguard) under faults, judged
//! by the [`oracle`].
//!
//! * **Cluster**: `n` nodes (5, 20 or 100) running
//!   `kaelix_cluster::membership` with the default configuration, joining
//!   through nodes 1–3 (all boot at once: a join storm).
//! * **Swarm faults** (`membership-5/20/100`): drawn per seed — crashes
//!   and restarts of up to a third of the nodes, partitions of every kind
//!   (symmetric, asymmetric, one-way), loss, duplication, reordering,
//!   pauses, clock skew, drift and steps — for a 20 s safety phase. Half
//!   the seeds boot every node run at incarnation 1 (memberlist's way),
//!   so every restart starts below its own tombstone and must outbid it
//!   (memberlist#345); the others boot at their wall clock in ms.
//! * **Slow node** (`membership-20-slow-node`): 10 % loss on every link
//!   and one node (drawn per seed, never a seed node) paused again and
//!   again for 60 s — runs of 50–500 ms between pauses of 100 ms up to a
//!   per-seed maximum of 0.5–3 s (about three quarters of its time frozen:
//!   a node starved of CPU or stuck in GC). Nothing else goes wrong.
//! * **One node lost for good** (every scenario): a non-seed node (never
//!   the slow one), drawn per seed apart from the fault schedule, is
//!   crashed when the liveness phase starts and never restarted
//!   (`Sim::retire_at_liveness`).
//! * **Liveness**: then faults stop, crashed nodes restart (but the lost
//!   one), partitions heal; within 25 s every node must see every other
//!   node alive, and within 90 s at its current incarnation (the oracle's
//!   check 4); and every node must drop the lost node within the
//!   completeness bound the oracle derives from the SWIM configuration
//!   (check 6: 90–304 s by cluster size with the phi gate's deferrals, worst case; the tallies show how
//!   long it really took). 25 s is
//!   shorter than the 30 s after which tombstones are forgotten, so a
//!   restarted node has to be readmitted by outbidding its tombstone, not
//!   by being forgotten; 90 s leaves anti-entropy (push-pull every 30 s)
//!   time to repair a stale incarnation whose gossip was all lost.
//!
//! **Checked at every simulator event** (see [`oracle`]): incarnations only
//! grow (per run, with the exact exceptions restarts and forgetting
//! allow), nobody holds an incarnation no run of the member ever held, no
//! record goes from suspect or dead back to alive without a higher
//! incarnation (check 5), every refutation of a false suspicion reaches
//! every live node within the shortest suspicion timeout (check 7; its
//! spread is tallied in buckets, summed over seeds by `sim run`), and the
//! **false-positive budget**.
//!
//! # False-positive budget
//!
//! A false death is a `Dead` declaration about a member's current run
//! while it was up, unpaused and mutually reachable with the declarer for
//! the whole suspicion (the oracle's definition). The budget is
//! [`FALSE_DEATH_BUDGET`] per run, i.e. **zero**. Why zero is the right
//! budget and not a hope: a suspicion lasts at least `4 · max(1, log10 N)`
//! seconds, and in that time the suspicion reaches the suspect (gossip
//! rounds every 200 ms to 3 members, buddy records on every packet to it)
//! and its refutation reaches the declarer the same ways, over many
//! independent paths; with the links between them intact, a false death
//! needs dozens of independent datagrams all lost, which at the swarm's
//! loss rates (≤ 20 %) should not happen in any run of this length. So
//! any false death is treated as a bug, and each one found so far was one
//! (piggyback-only dissemination, unanswered stale accusations; see the
//! SWIM module). Measured: none in the CI seeds of every scenario nor in
//! the table's 120 s loss and slow-node windows (`kaelix sim
//! membership-table` prints the rates). A seed over the budget fails as a
//! safety violation naming the death. False *suspicions* are normal under
//! loss (refuted at once) and are counted (`tallies`), not limited.
//!
//! The slow-node scenario adds the Lifeguard claim: the slow node's
//! accusations of healthy members are refuted before they kill anyone
//! (its false deaths fall under the same budget), and the slow node itself
//! is never counted (it is not healthy).
//!
//! **Phi gate.** Every scenario runs the default configuration, so SWIM's
//! suspicions are gated by phi (see the `swim` module's *Phi gate*), and
//! check 6's bound includes the rounds the gate may defer. The baselines
//! `membership-5/20/100-phi-gate-off` and
//! `membership-20-slow-node-phi-gate-off` (runnable by name, not in the
//! catalog nor the swarm) run the same seeds — the same fault schedules —
//! with the gate off, so the tallies compare the two: `false suspicions`
//! (the oracle's judgement above) and `suspect events about up members`
//! (every node's `Suspect` event about a member whose current run was up
//! and unpaused at that moment, by the simulator's ground truth).
//!
//! Planted bugs must fail: `membership-20-refute-without-incarnation`
//! (refutations that do not raise the incarnation, so a suspicion is never
//! answered and healthy members die: the false-death budget or the
//! liveness check), `membership-20-accuse-next-incarnation` (an
//! off-by-one accusation: records hold an incarnation the member never
//! had, the oracle's check 3) and `membership-20-ignore-own-tombstone`
//! (memberlist#345: a node restarted below its tombstone never outbids it,
//! so it is not readmitted before its tombstone is forgotten: the 25 s
//! liveness check) and `membership-20-alive-ignores-incarnation` (the
//! merge rule's `>` taken as `≥`: an `Alive` at the incarnation held
//! replaces a `Suspect` or `Dead` record, so stale gossip revives members:
//! check 5).

pub mod oracle;
pub mod table;

use bytes::Bytes;
use kaelix_cluster::membership::MembershipConfig;
use kaelix_cluster::swim::SwimConfig;
use kaelix_core::planted::Planted;
#[cfg(feature = "planted-bugs")]
use kaelix_core::planted::PlantedBug;
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_sim::trace::TraceSink;
use kaelix_sim::{Fault, FaultProfile, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig, Tolerance};

use crate::metrics::RunMetrics;
use crate::{RunReport, Scenario, Tallies, Verdict};
use oracle::{Oracle, OracleConfig, Registry, membership_node};

/// False deaths a run may have (see the module docs): none.
pub const FALSE_DEATH_BUDGET: u64 = 0;

/// Which faults a scenario injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Faults {
    /// Swarm testing over every fault kind SWIM claims to survive.
    Swarm,
    /// 10 % loss and one node paused over and over.
    SlowNode,
}

/// One cluster size and fault family (and possibly a planted bug).
pub struct MembershipScenario {
    name: &'static str,
    description: &'static str,
    nodes: u64,
    faults: Faults,
    planted: Planted,
    /// The phi gate as configured by default (on), or off (the baselines).
    phi_gate: bool,
}

/// 5 nodes.
pub static MEMBERSHIP_5: MembershipScenario = MembershipScenario {
    name: "membership-5",
    description: "SWIM + Lifeguard, 5 nodes; crashes, partitions, loss, pauses, clocks; no false deaths, incarnations only grow, all agree after heal",
    nodes: 5,
    faults: Faults::Swarm,
    planted: Planted::NONE,
    phi_gate: true,
};
/// 20 nodes.
pub static MEMBERSHIP_20: MembershipScenario = MembershipScenario {
    name: "membership-20",
    description: "SWIM + Lifeguard, 20 nodes; crashes, partitions, loss, pauses, clocks; no false deaths, incarnations only grow, all agree after heal",
    nodes: 20,
    faults: Faults::Swarm,
    planted: Planted::NONE,
    phi_gate: true,
};
/// 100 nodes.
pub static MEMBERSHIP_100: MembershipScenario = MembershipScenario {
    name: "membership-100",
    description: "SWIM + Lifeguard, 100 nodes; crashes, partitions, loss, pauses, clocks; no false deaths, incarnations only grow, all agree after heal",
    nodes: 100,
    faults: Faults::Swarm,
    planted: Planted::NONE,
    phi_gate: true,
};
/// 20 nodes, one of them slow, 10 % loss.
pub static MEMBERSHIP_20_SLOW_NODE: MembershipScenario = MembershipScenario {
    name: "membership-20-slow-node",
    description: "SWIM + Lifeguard, 20 nodes, one paused again and again, 10% loss; no healthy node dies, all agree after",
    nodes: 20,
    faults: Faults::SlowNode,
    planted: Planted::NONE,
    phi_gate: true,
};
/// Planted bug: accusations of an incarnation the member never had.
#[cfg(feature = "planted-bugs")]
pub static MEMBERSHIP_20_ACCUSE_NEXT_BUG: MembershipScenario = MembershipScenario {
    name: "membership-20-accuse-next-incarnation",
    description: "[planted bug] SWIM, 20 nodes, a failed probe accuses the incarnation after the one probed",
    nodes: 20,
    faults: Faults::Swarm,
    phi_gate: true,
    planted: Planted::only(PlantedBug::SwimAccuseNextIncarnation),
};
/// Planted bug: a node ignores its own tombstone (memberlist#345).
#[cfg(feature = "planted-bugs")]
pub static MEMBERSHIP_20_IGNORE_TOMBSTONE_BUG: MembershipScenario = MembershipScenario {
    name: "membership-20-ignore-own-tombstone",
    description: "[planted bug] SWIM, 20 nodes, a node ignores deaths declared about itself (memberlist#345)",
    nodes: 20,
    faults: Faults::Swarm,
    phi_gate: true,
    planted: Planted::only(PlantedBug::SwimIgnoreOwnTombstone),
};
/// Planted bug: refutations that do not raise the incarnation.
#[cfg(feature = "planted-bugs")]
pub static MEMBERSHIP_20_REFUTE_BUG: MembershipScenario = MembershipScenario {
    name: "membership-20-refute-without-incarnation",
    description: "[planted bug] SWIM, 20 nodes, refuting a suspicion without raising the incarnation",
    nodes: 20,
    faults: Faults::Swarm,
    phi_gate: true,
    planted: Planted::only(PlantedBug::SwimRefuteWithoutIncarnation),
};

/// Planted bug: an `Alive` at the incarnation held revives a suspect or a
/// dead member.
#[cfg(feature = "planted-bugs")]
pub static MEMBERSHIP_20_ALIVE_IGNORES_INCARNATION_BUG: MembershipScenario = MembershipScenario {
    name: "membership-20-alive-ignores-incarnation",
    description: "[planted bug] SWIM, 20 nodes, an Alive at the incarnation held replaces a Suspect or Dead record",
    nodes: 20,
    faults: Faults::Swarm,
    phi_gate: true,
    planted: Planted::only(PlantedBug::SwimAliveIgnoresIncarnation),
};

/// Baseline: `membership-5` with the phi gate off.
pub static MEMBERSHIP_5_PHI_GATE_OFF: MembershipScenario = MembershipScenario {
    name: "membership-5-phi-gate-off",
    description: "[baseline] membership-5 with the phi gate off (every failed probe round accuses at once)",
    phi_gate: false,
    ..MEMBERSHIP_5
};
/// Baseline: `membership-20` with the phi gate off.
pub static MEMBERSHIP_20_PHI_GATE_OFF: MembershipScenario = MembershipScenario {
    name: "membership-20-phi-gate-off",
    description: "[baseline] membership-20 with the phi gate off (every failed probe round accuses at once)",
    phi_gate: false,
    ..MEMBERSHIP_20
};
/// Baseline: `membership-100` with the phi gate off.
pub static MEMBERSHIP_100_PHI_GATE_OFF: MembershipScenario = MembershipScenario {
    name: "membership-100-phi-gate-off",
    description: "[baseline] membership-100 with the phi gate off (every failed probe round accuses at once)",
    phi_gate: false,
    ..MEMBERSHIP_100
};
/// Baseline: `membership-20-slow-node` with the phi gate off.
pub static MEMBERSHIP_20_SLOW_NODE_PHI_GATE_OFF: MembershipScenario = MembershipScenario {
    name: "membership-20-slow-node-phi-gate-off",
    description: "[baseline] membership-20-slow-node with the phi gate off (every failed probe round accuses at once)",
    phi_gate: false,
    ..MEMBERSHIP_20_SLOW_NODE
};

const SAFETY: Duration = Duration::from_secs(20);
const SLOW_SAFETY: Duration = Duration::from_secs(60);
/// Every node must see every node alive this soon after heal. Shorter than
/// `gc_after` (30 s): a member that was dead at heal time has not been
/// forgotten by then unless it died more than 5 s before heal, so
/// readmission must come from refutation (outbidding the tombstone), not
/// from the cluster forgetting it.
const ALIVE_BOUND: Duration = Duration::from_secs(25);
/// And at everyone's current incarnation this soon: a stale record whose
/// gossip was all lost is repaired by push-pull (every 30 s per node).
const AGREEMENT_BOUND: Duration = Duration::from_secs(90);
/// How often the liveness condition is evaluated.
const CONVERGENCE_CHECK: Duration = Duration::from_millis(100);

/// The slow node's pauses over `[start, end)`: runs of 50–500 ms between
/// pauses of 100 ms up to `max_pause`.
fn slow_node_pauses(
    node: NodeId,
    start: Instant,
    end: Instant,
    max_pause: Duration,
    rng: &mut DetRng,
) -> Vec<(Instant, Fault)> {
    let mut out = Vec::new();
    let mut t = start;
    let ms = |rng: &mut DetRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
    loop {
        t += ms(rng, 50, 500);
        let resume = t + ms(rng, 100, max_pause.as_millis() as u64);
        if resume >= end {
            return out;
        }
        out.push((t, Fault::Pause(node)));
        out.push((resume, Fault::Resume(node)));
        t = resume;
    }
}

impl Scenario for MembershipScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn workload_units(&self) -> (&'static str, &'static str) {
        ("nodes", "agreeing on every member at the end")
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn planted(&self) -> Planted {
        self.planted
    }

    fn run(&self, seed: u64, trace: Option<TraceSink>) -> RunReport {
        self.run_tallied(seed, trace).0
    }

    fn run_tallied(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies) {
        let (report, tallies, _) = self.execute(seed, trace, false);
        (report, tallies)
    }

    fn run_metered(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies, Option<RunMetrics>) {
        self.execute(seed, trace, true)
    }
}

impl MembershipScenario {
    /// One run; with `meter`, every node's membership figures once it
    /// ended (its current run's handle: a node restarted counts from its
    /// last boot).
    fn execute(&self, seed: u64, trace: Option<TraceSink>, meter: bool) -> (RunReport, Tallies, Option<RunMetrics>) {
        let planted = self.planted;
        let nodes: Vec<NodeId> = (1..=self.nodes).map(NodeId).collect();
        let seeds: Vec<NodeId> = nodes.iter().copied().take(3).collect();
        let mut setup = rng::derive(seed, 0x5_1a_4e);
        let (profile, faults, safety_end, slow) = match self.faults {
            Faults::Swarm => {
                let tolerance = Tolerance { max_down: (nodes.len() / 3).max(1), faulty_disks: 0, power_loss: false };
                let mut profile = FaultProfile::swarm(&mut setup);
                profile.restrict(&tolerance);
                // SWIM works in protocol periods of a second: outages and
                // partitions last long enough to be detected (and some to
                // be healed before), pauses long enough to miss probes.
                profile.downtime = (Duration::from_millis(500), Duration::from_secs(15));
                profile.partition_duration = (Duration::from_millis(500), Duration::from_secs(15));
                profile.pause_duration = (Duration::from_millis(10), Duration::from_secs(3));
                let safety_end = Instant::ZERO + SAFETY;
                let schedule = FaultSchedule::generate(&profile, &tolerance, &nodes, &[], safety_end, &mut setup);
                (profile, schedule.faults, safety_end, None)
            }
            Faults::SlowNode => {
                let mut profile = FaultProfile::calm();
                profile.link.loss = 0.10;
                let safety_end = Instant::ZERO + SLOW_SAFETY;
                let slow = nodes[setup.random_range(seeds.len()..nodes.len())];
                let max_pause = Duration::from_millis(setup.random_range(500..=3_000));
                let start = Instant::ZERO + Duration::from_secs(2);
                (profile, slow_node_pauses(slow, start, safety_end, max_pause, &mut setup), safety_end, Some(slow))
            }
        };
        let mut fault_mix = match self.faults {
            Faults::Swarm => profile.mix(),
            Faults::SlowNode => vec!["loss", "pause"],
        };
        // Half the seeds boot every run at incarnation 1 (memberlist's
        // way), so each restart starts below its own tombstone and must
        // outbid it (memberlist#345); the rest take the wall clock.
        let boot_incarnation = (self.faults == Faults::Swarm && setup.random_bool(0.5)).then_some(1);
        if boot_incarnation.is_some() {
            fault_mix.push("boot-at-incarnation-1");
        }

        // One member is lost for good: crashed when the calm phase starts
        // and never restarted, so every other node must declare it dead
        // (check 6). Never a seed node, nor the slow one; drawn apart so the
        // fault schedule is the one this seed always drew.
        let lost = {
            let mut draw = rng::derive(seed, 0x10_57);
            let candidates: Vec<NodeId> = nodes[seeds.len()..].iter().copied().filter(|&n| Some(n) != slow).collect();
            candidates[draw.random_range(0..candidates.len())]
        };
        fault_mix.push("one-node-lost-for-good");
        let max_drift_ppm = profile.max_drift_ppm.unsigned_abs();
        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let registry = Registry::default();
        let swim = SwimConfig { planted, ..SwimConfig::default() };
        let swim = if self.phi_gate { swim } else { swim.without_phi_gate() };
        let mut oracle_config = OracleConfig::for_swim(&swim);
        oracle_config.watched = slow;
        oracle_config.max_drift_ppm = max_drift_ppm;
        if nodes.len() > 20 {
            oracle_config.sample_every = Duration::from_millis(250);
        }
        let mut oracle = Oracle::new(oracle_config, &nodes, registry.clone());
        for &id in &nodes {
            let (seeds, swim) = (seeds.clone(), swim.clone());
            let init = membership_node(id, registry.clone(), move || {
                let metadata = Bytes::from(format!("node={}", id.0));
                MembershipConfig {
                    swim: swim.clone(),
                    boot_incarnation,
                    ..MembershipConfig::new(seeds.clone(), metadata)
                }
            });
            sim.add_node(id, NodeSpec { kind: NodeKind::Server, name: format!("m{}", id.0), faulty_disk: false, init });
        }
        for (at, fault) in faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(safety_end);
        sim.retire_at_liveness(lost);

        // Long enough for check 6 to fire (it is judged every sample) rather
        // than the run to end first; a passing run ends much sooner.
        let completeness = oracle.bounds().completeness;
        let deadline = safety_end + AGREEMENT_BOUND.max(completeness + Duration::from_secs(1));
        let mut last_check = Instant::ZERO;
        let mut alive_agreed = false;
        let mut converged = false;
        let mut dropped = false;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.run_until_done(
                deadline,
                |sim| {
                    oracle.observe(sim);
                    if oracle.violation().is_some() || oracle.tally().false_deaths > FALSE_DEATH_BUDGET {
                        return true;
                    }
                    let now = sim.now();
                    if now < safety_end || now < last_check + CONVERGENCE_CHECK {
                        return false;
                    }
                    last_check = now;
                    if !alive_agreed {
                        alive_agreed = oracle.alive_sets_agree();
                        if !alive_agreed {
                            return now > safety_end + ALIVE_BOUND;
                        }
                    }
                    if !converged {
                        converged = oracle.converged();
                        if !converged {
                            return now > safety_end + AGREEMENT_BOUND;
                        }
                    }
                    // Check 6's end state: nobody holds the lost node live
                    // (its time bound is the oracle's to judge).
                    dropped = oracle.lost_members_dropped(now);
                    dropped
                },
                |_| Ok::<(), ()>(()),
            )
        }));
        let tally = oracle.tally();
        let verdict = match outcome {
            Err(panic) => Verdict::from_panic(panic),
            Ok(Err(())) => unreachable!("the step check never fails"),
            Ok(Ok(_)) => {
                if let Some(v) = oracle.violation() {
                    Verdict::SafetyViolation(v.to_string())
                } else if tally.false_deaths > FALSE_DEATH_BUDGET {
                    Verdict::SafetyViolation(format!(
                        "{} false death(s), budget {FALSE_DEATH_BUDGET}: {}",
                        tally.false_deaths,
                        oracle.false_deaths()[0]
                    ))
                } else if converged && dropped {
                    Verdict::Pass
                } else if converged {
                    Verdict::LivenessViolation(format!(
                        "completeness (check 6): {lost} stayed crashed and is still held live at the deadline"
                    ))
                } else {
                    let (exact, bound, what) = if alive_agreed {
                        (true, AGREEMENT_BOUND, "alive at their current incarnation")
                    } else {
                        (false, ALIVE_BOUND, "alive")
                    };
                    let d = oracle.disagreements(exact);
                    Verdict::LivenessViolation(format!(
                        "{} of {} nodes still do not see every node {what} {bound:?} after heal: {:?}; e.g. {}",
                        d.len(),
                        nodes.len(),
                        &d[..d.len().min(5)],
                        d.first().map_or_else(String::new, |&(o, _)| oracle.explain(o, exact))
                    ))
                }
            }
        };
        let agreeing = (self.nodes - 1).saturating_sub(oracle.disagreements(true).len() as u64);
        let s = tally.refutation_spread;
        let c = tally.completeness;
        let tallies = vec![
            ("suspicions", tally.suspicions),
            ("false suspicions", tally.false_suspicions),
            ("suspect events about up members", tally.suspect_events_of_up_members),
            ("false suspicions by the slow node", tally.false_suspicions_by_watched),
            ("deaths", tally.deaths),
            ("false deaths", tally.false_deaths),
            ("refutations timed", tally.refutations_judged),
            ("refutations interrupted by faults", tally.refutations_interrupted),
            ("refutation everywhere <=250ms", s[0]),
            ("refutation everywhere <=500ms", s[1]),
            ("refutation everywhere <=1s", s[2]),
            ("refutation everywhere <=2s", s[3]),
            ("refutation everywhere <=4s", s[4]),
            ("refutation everywhere >4s", s[5]),
            ("lost node dead everywhere <=5s", c[0]),
            ("lost node dead everywhere <=10s", c[1]),
            ("lost node dead everywhere <=20s", c[2]),
            ("lost node dead everywhere <=40s", c[3]),
            ("lost node dead everywhere <=80s", c[4]),
            ("lost node dead everywhere >80s", c[5]),
        ];
        let metrics = meter.then(|| {
            let mut m = RunMetrics::new();
            for &id in &nodes {
                if let Some(membership) = oracle.membership(id) {
                    m.record_membership(id, membership);
                }
            }
            m.record_sim_time(sim.now().since_origin().as_secs_f64());
            m
        });
        let report = RunReport::conclude(&sim, seed, verdict, fault_mix, (self.nodes - 1, agreeing));
        (report, tallies, metrics)
    }
}

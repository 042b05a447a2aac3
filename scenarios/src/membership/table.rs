//! The measured membership table (`kaelix sim membership-table`): what
//! SWIM with Lifeguard costs and buys at 5, 20 and 100 nodes, against a
//! reference configuration, every figure measured in the simulator and
//! deterministic in its seeds.
//!
//! # Configurations
//!
//! * **kaelix**: `SwimConfig::default()` — memberlist's LAN numbers (probe
//!   1 s, probe timeout 500 ms, 3 indirect checks, suspicion mult 4,
//!   suspicion max-timeout mult 6, retransmit mult 4, gossip every 200 ms
//!   to 3 members, push-pull 30 s, awareness max multiplier 8) with
//!   Lifeguard on, plus what Kaelix's SWIM adds to memberlist's: announce
//!   to tombstones and unseen seeds every 5 s (and join retries), push-pull
//!   with strangers, and answers to stale statements about oneself.
//! * **reference**: `SwimConfig::without_lifeguard().without_phi_gate()` —
//!   the same numbers with Lifeguard and the phi gate off (memberlist has
//!   no phi gate; kaelix's row has it on, the default): no local health scaling, suspicion timeout fixed
//!   at its minimum `4 · max(1, log10 N) · 1 s` (no dogpile), no nacks, no
//!   buddy records. This is memberlist's protocol with its Lifeguard
//!   extensions switched off, run by Kaelix's SWIM core, not memberlist's
//!   code: its transport (UDP probes plus TCP push-pull and fallback
//!   pings) is not modelled, and Kaelix's additions above stay on
//!   (memberlist leaves rejoining after a partition to Serf).
//!
//! # Experiments (per size, configuration and seed)
//!
//! 1. **Lifecycle** on healthy links (50 µs + 100 µs tail): all `N` boot
//!    at once and join through nodes 1–3 → *join storm* (until every node
//!    sees every node alive at its current incarnation); 10 s settle; a
//!    30 s window of **messages and bytes per node per second** (idle
//!    cluster); one more node joins → *one join*; 5 s; a random non-seed
//!    node crashes → *crash detected* by the first observer and by all
//!    (their `Dead` events); it restarts → *restart rejoin*; the cluster
//!    splits in two halves for 30 s (each declares the other dead) and
//!    heals → *partition heal*.
//! 2. **10 % loss** on every link: join, settle 10 s, then a 120 s window:
//!    false suspicions and false deaths (the [`super::oracle`]'s
//!    judgement: about a member up, unpaused and reachable from the
//!    accuser) per node-hour, and messages and bytes per node per second.
//! 3. **Slow node** + 10 % loss: the same window while one non-seed node
//!    is paused again and again (runs of 50–500 ms between pauses of
//!    100 ms–2 s, as in `membership-20-slow-node`): false suspicions raised
//!    *by* the slow node per hour, and false deaths per healthy node-hour.
//!
//! Times are medians and p99 (nearest rank) over seeds, in seconds;
//! convergence is checked every 50 ms of simulated time, so those times
//! are upper bounds within 50 ms; detection times are exact (events).

use std::collections::BTreeSet;

use bytes::Bytes;
use kaelix_cluster::membership::MembershipConfig;
use kaelix_cluster::swim::{MembershipEventKind, SwimConfig};
use kaelix_core::rng::{self, RngExt};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_sim::{Fault, FaultProfile, NodeKind, NodeSpec, Sim, SimConfig};

use super::oracle::{Oracle, OracleConfig, Registry, Tally, membership_node};
use super::slow_node_pauses;

/// The configuration a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    /// `SwimConfig::default()`: memberlist's numbers with Lifeguard.
    Kaelix,
    /// The same numbers without Lifeguard and without the phi gate.
    Reference,
}

impl Variant {
    /// Both, in table order.
    pub const ALL: [Variant; 2] = [Variant::Kaelix, Variant::Reference];

    /// The SWIM configuration.
    pub fn swim(self) -> SwimConfig {
        match self {
            Variant::Kaelix => SwimConfig::default(),
            Variant::Reference => SwimConfig::without_lifeguard().without_phi_gate(),
        }
    }

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Kaelix => "kaelix",
            Variant::Reference => "reference",
        }
    }
}

/// Which experiment a job runs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Experiment {
    /// Join storm, idle traffic, one join, crash, restart, partition.
    Lifecycle,
    /// A 120 s window under 10 % loss.
    Loss,
    /// The same with a slow node.
    SlowNode,
}

/// One simulation of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Job {
    /// Cluster size.
    pub nodes: u64,
    /// Configuration.
    pub variant: Variant,
    /// What to measure.
    pub experiment: Experiment,
    /// The seed.
    pub seed: u64,
}

/// What the lifecycle experiment measured (`None`: not within its bound).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lifecycle {
    /// All nodes boot at once until everyone agrees.
    pub storm: Option<Duration>,
    /// One more node until everyone agrees.
    pub join: Option<Duration>,
    /// Crash until the first `Dead` about the victim.
    pub detect_first: Option<Duration>,
    /// Crash until every other node has declared it dead.
    pub detect_all: Option<Duration>,
    /// Restart until everyone agrees.
    pub rejoin: Option<Duration>,
    /// Heal of a 30 s half/half partition until everyone agrees.
    pub heal: Option<Duration>,
    /// Idle traffic: messages per node per second.
    pub messages: f64,
    /// Idle traffic: bytes per node per second.
    pub bytes: f64,
}

/// What a loss window measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    /// Whether the cluster converged before the window.
    pub converged: bool,
    /// The oracle's tallies over the window.
    pub tally: Tally,
    /// Healthy node-hours in the window.
    pub node_hours: f64,
    /// The window's length in hours (the slow node's own exposure).
    pub hours: f64,
    /// Messages per node per second.
    pub messages: f64,
    /// Bytes per node per second.
    pub bytes: f64,
}

/// A job's measurement.
#[derive(Clone, Debug, PartialEq)]
pub enum Measured {
    /// Of [`Experiment::Lifecycle`].
    Lifecycle(Lifecycle),
    /// Of [`Experiment::Loss`] or [`Experiment::SlowNode`].
    Window(Window),
}

/// A job's result: the measurement and any broken invariant the oracle saw.
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    /// The job.
    pub job: Job,
    /// What it measured.
    pub measured: Measured,
    /// The oracle's first violation, if any (a bug: the table says so).
    pub violation: Option<String>,
}

/// Seeds per cluster size.
#[derive(Clone, Debug)]
pub struct TablePlan {
    /// `(nodes, seeds)` per row group.
    pub sizes: Vec<(u64, u64)>,
}

impl Default for TablePlan {
    /// 5 nodes × 60 seeds, 20 × 30, 100 × 10: about two minutes on two cores.
    fn default() -> Self {
        TablePlan { sizes: vec![(5, 60), (20, 30), (100, 10)] }
    }
}

impl TablePlan {
    /// Every job, largest clusters first (so a parallel runner ends with
    /// the short ones).
    pub fn jobs(&self) -> Vec<Job> {
        let mut jobs = Vec::new();
        for &(nodes, seeds) in self.sizes.iter().rev() {
            for variant in Variant::ALL {
                for experiment in [Experiment::Lifecycle, Experiment::Loss, Experiment::SlowNode] {
                    for seed in 0..seeds {
                        jobs.push(Job { nodes, variant, experiment, seed });
                    }
                }
            }
        }
        jobs
    }
}

const SETTLE: Duration = Duration::from_secs(10);
const IDLE_WINDOW: Duration = Duration::from_secs(30);
const FP_WINDOW: Duration = Duration::from_secs(120);
const PARTITION: Duration = Duration::from_secs(30);
const BOUND: Duration = Duration::from_secs(120);
const CONVERGENCE_CHECK: Duration = Duration::from_millis(50);
const SLOW_MAX_PAUSE: Duration = Duration::from_secs(2);

/// A cluster under the simulator with its oracle.
struct Harness {
    sim: Sim,
    registry: Registry,
    oracle: Oracle,
    swim: SwimConfig,
    nodes: Vec<NodeId>,
}

impl Harness {
    fn new(job: &Job, loss: f64, watched: Option<NodeId>) -> Self {
        let mut profile = FaultProfile::calm();
        profile.link.loss = loss;
        let sim = Sim::new(SimConfig { seed: job.seed, profile, ..SimConfig::new(job.seed) });
        let registry = Registry::default();
        let swim = job.variant.swim();
        let mut config = OracleConfig::for_swim(&swim);
        config.keep_log = true;
        config.watched = watched;
        let oracle = Oracle::new(config, &[], registry.clone());
        let mut h = Harness { sim, registry, oracle, swim, nodes: Vec::new() };
        for i in 1..=job.nodes {
            h.boot(NodeId(i));
        }
        h
    }

    fn boot(&mut self, id: NodeId) {
        let swim = self.swim.clone();
        let seeds: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let init = membership_node(id, self.registry.clone(), move || MembershipConfig {
            swim: swim.clone(),
            ..MembershipConfig::new(seeds.clone(), Bytes::from(format!("node={}", id.0)))
        });
        self.oracle.add_node(id);
        self.nodes.push(id);
        self.sim
            .add_node(id, NodeSpec { kind: NodeKind::Server, name: format!("m{}", id.0), faulty_disk: false, init });
    }

    /// Steps until `until` holds (checked every [`CONVERGENCE_CHECK`]) or
    /// `deadline`; returns when it held.
    fn run_until(&mut self, deadline: Instant, mut until: impl FnMut(&Oracle) -> bool) -> Option<Instant> {
        let oracle = &mut self.oracle;
        let mut last: Option<Instant> = None;
        let held = self
            .sim
            .run_until_done(
                deadline,
                |sim| {
                    oracle.observe(sim);
                    let now = sim.now();
                    if last.is_some_and(|l| now < l + CONVERGENCE_CHECK) {
                        return false;
                    }
                    last = Some(now);
                    until(oracle)
                },
                |_| Ok::<(), ()>(()),
            )
            .unwrap_or(false);
        held.then(|| self.sim.now())
    }

    fn run_for(&mut self, d: Duration) {
        let deadline = self.sim.now() + d;
        self.run_until(deadline, |_| false);
    }

    /// Runs until every node agrees; how long it took.
    fn converge(&mut self) -> Option<Duration> {
        let start = self.sim.now();
        self.run_until(start + BOUND, Oracle::converged).map(|t| t - start)
    }

    /// Messages and bytes sent so far by every current run.
    fn traffic(&self) -> (u64, u64) {
        self.nodes.iter().filter_map(|&n| self.oracle.membership(n)).fold((0, 0), |(m, b), ms| {
            let s = ms.stats();
            (m + s.messages_sent, b + s.bytes_sent)
        })
    }

    /// Per node per second over `[from, now]`, between two traffic readings.
    fn rate(&self, before: (u64, u64), after: (u64, u64), window: Duration, nodes: usize) -> (f64, f64) {
        let per = window.as_secs_f64() * nodes as f64;
        ((after.0 - before.0) as f64 / per, (after.1 - before.1) as f64 / per)
    }
}

fn lifecycle(job: &Job) -> (Lifecycle, Option<String>) {
    let mut h = Harness::new(job, 0.0, None);
    let mut out = Lifecycle { storm: h.converge(), ..Lifecycle::default() };
    h.run_for(SETTLE);
    let before = h.traffic();
    h.run_for(IDLE_WINDOW);
    (out.messages, out.bytes) = h.rate(before, h.traffic(), IDLE_WINDOW, h.nodes.len());

    h.boot(NodeId(job.nodes + 1));
    out.join = h.converge();
    h.run_for(Duration::from_secs(5));

    let mut pick = rng::derive(job.seed, 0x7ab1e);
    let victim = NodeId(pick.random_range(4..=job.nodes.max(4)).min(job.nodes));
    let crashed_at = h.sim.now();
    h.sim.apply_fault(Fault::Crash(victim));
    let others: BTreeSet<NodeId> = h.nodes.iter().copied().filter(|&n| n != victim).collect();
    let declared = |o: &Oracle| -> BTreeSet<NodeId> {
        o.log()
            .iter()
            .filter(|e| e.at >= crashed_at && e.member == victim && e.kind == MembershipEventKind::Dead)
            .map(|e| e.observer)
            .collect()
    };
    let all_at = h.run_until(crashed_at + BOUND, |o| declared(o).is_superset(&others));
    out.detect_first = h
        .oracle
        .log()
        .iter()
        .find(|e| e.at >= crashed_at && e.member == victim && e.kind == MembershipEventKind::Dead)
        .map(|e| e.at - crashed_at);
    // The exact time of the last declaration, not the check that saw it.
    out.detect_all = all_at.and_then(|_| {
        let log = h.oracle.log();
        others
            .iter()
            .map(|o| {
                log.iter()
                    .find(|e| {
                        e.at >= crashed_at
                            && e.member == victim
                            && e.observer == *o
                            && e.kind == MembershipEventKind::Dead
                    })
                    .map(|e| e.at)
            })
            .collect::<Option<Vec<Instant>>>()
            .and_then(|ts| ts.into_iter().max())
            .map(|t| t - crashed_at)
    });

    h.sim.apply_fault(Fault::Restart { node: victim, wipe: false });
    out.rejoin = h.converge();
    h.run_for(SETTLE);

    let (a, b) = h.nodes.split_at(h.nodes.len() / 2);
    h.sim.apply_fault(Fault::PartitionSymmetric(vec![a.to_vec(), b.to_vec()]));
    h.run_for(PARTITION);
    h.sim.apply_fault(Fault::Heal);
    out.heal = h.converge();
    let violation = h.oracle.violation().map(str::to_string);
    h.sim.shutdown();
    (out, violation)
}

fn window(job: &Job) -> (Window, Option<String>) {
    let slow = (job.experiment == Experiment::SlowNode).then(|| {
        let mut pick = rng::derive(job.seed, 0x5_10e);
        NodeId(pick.random_range(4..=job.nodes.max(4)).min(job.nodes))
    });
    let mut h = Harness::new(job, 0.10, slow);
    let mut out = Window { converged: h.converge().is_some(), ..Window::default() };
    h.run_for(SETTLE);
    let start = h.sim.now();
    if let Some(s) = slow {
        let mut rng = rng::derive(job.seed, 0x510e_f00d);
        for (at, fault) in slow_node_pauses(s, start, start + FP_WINDOW, SLOW_MAX_PAUSE, &mut rng) {
            h.sim.schedule_fault(at, fault);
        }
    }
    let (tally_before, traffic_before) = (h.oracle.tally(), h.traffic());
    h.run_for(FP_WINDOW);
    let t = h.oracle.tally();
    out.tally = Tally {
        suspicions: t.suspicions - tally_before.suspicions,
        false_suspicions: t.false_suspicions - tally_before.false_suspicions,
        suspect_events_of_up_members: t.suspect_events_of_up_members - tally_before.suspect_events_of_up_members,
        false_suspicions_by_watched: t.false_suspicions_by_watched - tally_before.false_suspicions_by_watched,
        deaths: t.deaths - tally_before.deaths,
        false_deaths: t.false_deaths - tally_before.false_deaths,
        false_deaths_by_watched: t.false_deaths_by_watched - tally_before.false_deaths_by_watched,
        dead_events: t.dead_events - tally_before.dead_events,
        refutations_judged: t.refutations_judged - tally_before.refutations_judged,
        refutations_interrupted: t.refutations_interrupted - tally_before.refutations_interrupted,
        refutation_spread: std::array::from_fn(|i| t.refutation_spread[i] - tally_before.refutation_spread[i]),
        completeness: std::array::from_fn(|i| t.completeness[i] - tally_before.completeness[i]),
    };
    out.hours = FP_WINDOW.as_secs_f64() / 3600.0;
    let healthy = h.nodes.len() - usize::from(slow.is_some());
    out.node_hours = out.hours * healthy as f64;
    (out.messages, out.bytes) = h.rate(traffic_before, h.traffic(), FP_WINDOW, h.nodes.len());
    let violation = h.oracle.violation().map(str::to_string);
    h.sim.shutdown();
    (out, violation)
}

/// Runs one job (deterministic in it).
pub fn run(job: Job) -> JobResult {
    let (measured, violation) = match job.experiment {
        Experiment::Lifecycle => {
            let (m, v) = lifecycle(&job);
            (Measured::Lifecycle(m), v)
        }
        Experiment::Loss | Experiment::SlowNode => {
            let (m, v) = window(&job);
            (Measured::Window(m), v)
        }
    };
    JobResult { job, measured, violation }
}

/// `(median, p99)` by nearest rank, and how many samples were missing.
fn quantiles(samples: &[Option<Duration>]) -> (Option<(f64, f64)>, usize) {
    let mut v: Vec<f64> = samples.iter().flatten().map(|d| d.as_secs_f64()).collect();
    let missing = samples.len() - v.len();
    if v.is_empty() {
        return (None, missing);
    }
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (Some((rank(0.5), rank(0.99))), missing)
}

fn cell(samples: &[Option<Duration>]) -> String {
    match quantiles(samples) {
        (None, _) => "never".into(),
        (Some((median, p99)), 0) => format!("{median:.2} ({p99:.2})"),
        (Some((median, p99)), missing) => format!("{median:.2} ({p99:.2}) {missing} never"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// Renders the results as three markdown tables with a legend.
pub fn render(plan: &TablePlan, results: &[JobResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let seeds: Vec<String> = plan.sizes.iter().map(|(n, s)| format!("{n} nodes × {s} seeds")).collect();
    let _ = writeln!(out, "SWIM membership, measured in the simulator ({}).", seeds.join(", "));
    let _ = writeln!(out, "kaelix = SwimConfig::default() (memberlist LAN numbers, Lifeguard and the phi gate on);");
    let _ = writeln!(
        out,
        "reference = SwimConfig::without_lifeguard().without_phi_gate() (the same numbers, Lifeguard and the phi gate off)."
    );
    let _ = writeln!(out, "Times in seconds of simulated time: median (p99, nearest rank) over seeds.\n");

    let lifecycles = |n: u64, v: Variant| -> Vec<Lifecycle> {
        results
            .iter()
            .filter(|r| r.job.nodes == n && r.job.variant == v)
            .filter_map(|r| match r.measured {
                Measured::Lifecycle(l) => Some(l),
                Measured::Window(_) => None,
            })
            .collect()
    };
    let windows = |n: u64, v: Variant, e: Experiment| -> Vec<Window> {
        results
            .iter()
            .filter(|r| r.job.nodes == n && r.job.variant == v && r.job.experiment == e)
            .filter_map(|r| match r.measured {
                Measured::Window(w) => Some(w),
                Measured::Lifecycle(_) => None,
            })
            .collect()
    };

    let _ = writeln!(
        out,
        "| nodes | config | join storm | one join | crash: first detects | crash: all detect | restart rejoin | partition heal |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for &(n, _) in &plan.sizes {
        for v in Variant::ALL {
            let l = lifecycles(n, v);
            let col = |f: fn(&Lifecycle) -> Option<Duration>| cell(&l.iter().map(f).collect::<Vec<_>>());
            let _ = writeln!(
                out,
                "| {n} | {} | {} | {} | {} | {} | {} | {} |",
                v.label(),
                col(|l| l.storm),
                col(|l| l.join),
                col(|l| l.detect_first),
                col(|l| l.detect_all),
                col(|l| l.rejoin),
                col(|l| l.heal)
            );
        }
    }

    let _ = writeln!(out, "\nFalse positives (120 s windows; summed over seeds, rate per healthy node-hour):\n");
    let _ = writeln!(
        out,
        "| nodes | config | 10% loss: suspicions | false suspicions /node-h | false deaths /node-h | slow node + 10% loss: false suspicions by the slow node /h | false suspicions /node-h | false deaths /node-h |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for &(n, _) in &plan.sizes {
        for v in Variant::ALL {
            let sum = |ws: &[Window], f: fn(&Tally) -> u64| ws.iter().map(|w| f(&w.tally)).sum::<u64>();
            let loss = windows(n, v, Experiment::Loss);
            let slow = windows(n, v, Experiment::SlowNode);
            let node_hours = |ws: &[Window]| ws.iter().map(|w| w.node_hours).sum::<f64>();
            let hours = |ws: &[Window]| ws.iter().map(|w| w.hours).sum::<f64>();
            let rate = |count: u64, per: f64| format!("{:.2} ({count})", count as f64 / per);
            let _ = writeln!(
                out,
                "| {n} | {} | {} | {} | {} | {} | {} | {} |",
                v.label(),
                sum(&loss, |t| t.suspicions),
                rate(sum(&loss, |t| t.false_suspicions), node_hours(&loss)),
                rate(sum(&loss, |t| t.false_deaths), node_hours(&loss)),
                rate(sum(&slow, |t| t.false_suspicions_by_watched), hours(&slow)),
                rate(sum(&slow, |t| t.false_suspicions), node_hours(&slow)),
                rate(sum(&slow, |t| t.false_deaths), node_hours(&slow)),
            );
        }
    }

    let _ = writeln!(out, "\nTraffic sent per node per second (median over seeds):\n");
    let _ = writeln!(out, "| nodes | config | idle: messages | idle: bytes | 10% loss: messages | 10% loss: bytes |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for &(n, _) in &plan.sizes {
        for v in Variant::ALL {
            let l = lifecycles(n, v);
            let w = windows(n, v, Experiment::Loss);
            let _ = writeln!(
                out,
                "| {n} | {} | {:.2} | {:.0} | {:.2} | {:.0} |",
                v.label(),
                median(l.iter().map(|l| l.messages).collect()),
                median(l.iter().map(|l| l.bytes).collect()),
                median(w.iter().map(|w| w.messages).collect()),
                median(w.iter().map(|w| w.bytes).collect()),
            );
        }
    }

    let unconverged = results.iter().filter(|r| matches!(r.measured, Measured::Window(w) if !w.converged)).count();
    if unconverged > 0 {
        let _ = writeln!(out, "\n{unconverged} loss window(s) started before the cluster had converged.");
    }
    let violations: Vec<&JobResult> = results.iter().filter(|r| r.violation.is_some()).collect();
    if violations.is_empty() {
        let _ = writeln!(out, "\nThe oracle saw no broken invariant in any run.");
    } else {
        let _ = writeln!(out, "\nBROKEN INVARIANTS in {} run(s):", violations.len());
        for r in violations {
            let _ = writeln!(out, "  {:?}: {}", r.job, r.violation.as_deref().unwrap_or_default());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_and_count_misses() {
        let s = |x: u64| Some(Duration::from_millis(x));
        let (q, missing) = quantiles(&[s(300), s(100), None, s(200)]);
        assert_eq!(q, Some((0.2, 0.3)));
        assert_eq!(missing, 1);
        assert_eq!(quantiles(&[None]), (None, 1));
    }

    #[test]
    fn a_small_lifecycle_measures_every_phase() {
        let job = Job { nodes: 5, variant: Variant::Kaelix, experiment: Experiment::Lifecycle, seed: 1 };
        let r = run(job);
        assert_eq!(r.violation, None);
        let Measured::Lifecycle(l) = r.measured else { panic!("{r:?}") };
        for (name, t) in [
            ("storm", l.storm),
            ("join", l.join),
            ("first", l.detect_first),
            ("all", l.detect_all),
            ("rejoin", l.rejoin),
            ("heal", l.heal),
        ] {
            assert!(t.is_some(), "{name} never happened: {l:?}");
        }
        let (first, all) = (l.detect_first.unwrap(), l.detect_all.unwrap());
        assert!(first <= all, "{l:?}");
        // A crash is suspected after a failed probe (≥ 1 s) and declared
        // after the 4 s minimum suspicion at 5 nodes.
        assert!(first >= Duration::from_secs(4), "{l:?}");
        // Idle: a ping and an ack per node per protocol period, plus the
        // push-pull every 30 s.
        assert!(l.messages > 1.5 && l.messages < 3.0 && l.bytes > 20.0, "{l:?}");
        assert_eq!(run(job), r, "deterministic in its seed");
    }
}

//! The catalog of simulated scenarios, their workloads and checkers, and
//! the seed drivers (run, replay with determinism check).
//!
//! A **scenario** is a cluster shape + a workload + a fault profile (drawn
//! per seed by swarm testing, limited by what the protocol tolerates) +
//! checkers + a liveness bound. Each is registered by name in [`catalog`];
//! `kaelix sim list` prints them. **Planted-bug** variants switch a known
//! wrong behaviour on (a [`kaelix_core::planted::PlantedBug`]): the
//! simulator must catch them, which tests the simulator itself. They exist
//! only with this crate's `planted-bugs` feature (`planted()` lists them);
//! production builds of the `kaelix` binary do not enable it, so their
//! catalog holds none.
//!
//! Every run is deterministic in its seed; [`run_checked`] runs a seed twice
//! and compares trace hashes.
//!
//! # Client histories
//!
//! Scenarios whose clients produce to and read from partitions record what
//! the clients saw in a [`history::History`] ([`history::HistoryRecorder`],
//! one clone per client task) and return it from
//! [`Scenario::run_recording`]. [`linearizability::check_history`] checks it
//! per partition against the sequential log (linearizability, with timed-out
//! operations as unknown) and for duplicated, lost, skipped and
//! non-monotonic offsets ([`linearizability::offsets`]).
//!
//! `kaelix sim replay --scenario S --seed N --history FILE` writes the
//! history as **JSON lines**, one object per operation, in call order:
//!
//! ```text
//! {"client": 3, "partition": "orders/0", "op": "produce", "input": "v17", "output": 42, "call": 1200000, "return": 1900000}
//! ```
//!
//! For `produce`, `input` is the payload (a string) and `output` the offset
//! assigned; for `read`, `input` is the offset and `output` the payload read,
//! or `null` when nothing is at that offset yet. `call` and `return` are
//! simulated nanoseconds (the simulator's true time, one clock for every
//! client). When the outcome is unknown (timeout, crash), `output` and
//! `return` are `null`. Keys appear in exactly that order. `kaelix sim
//! check-history FILE` reads such a file back (rejecting a malformed line
//! with its number and the problem) and checks it. Details: [`history`].

pub mod availability;
pub mod broadcast;
pub mod broker;
pub mod broker_backpressure;
pub mod broker_durable;
pub mod broker_plugins;
pub mod broker_replicated;
pub mod checker;
pub mod cluster;
pub mod harness;
pub mod history;
pub mod linearizability;
pub mod membership;
pub mod metrics;
pub mod picture;
pub mod raft;
pub mod serve;
mod workload;

use kaelix_core::planted::Planted;
use kaelix_core::time::Duration;
use kaelix_sim::trace::TraceSink;
use kaelix_sim::trace::digest;
use kaelix_sim::{Coverage, Sim, SimStats};

use crate::history::History;
use crate::metrics::RunMetrics;

/// Where a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every check held and the scenario converged in time.
    Pass,
    /// A safety invariant broke (checked at every step) or acknowledged
    /// data was lost.
    SafetyViolation(String),
    /// The scenario did not converge within its liveness bound.
    LivenessViolation(String),
    /// A task panicked.
    Panic(String),
}

impl Verdict {
    /// Whether the run passed.
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Pass => write!(f, "pass"),
            Verdict::SafetyViolation(m) => write!(f, "SAFETY VIOLATION: {m}"),
            Verdict::LivenessViolation(m) => write!(f, "LIVENESS VIOLATION: {m}"),
            Verdict::Panic(m) => write!(f, "PANIC: {m}"),
        }
    }
}

impl Verdict {
    /// Which check failed, for telling whether two failing runs fail "the
    /// same check" (the shrinker's test): the verdict's kind and the first
    /// six words of its message that hold no digit (node ids, offsets,
    /// terms and times change between runs; the check's wording does not).
    /// `None` for a pass.
    pub fn check(&self) -> Option<String> {
        let (kind, message) = match self {
            Verdict::Pass => return None,
            Verdict::SafetyViolation(m) => ("SAFETY VIOLATION", m),
            Verdict::LivenessViolation(m) => ("LIVENESS VIOLATION", m),
            Verdict::Panic(m) => ("PANIC", m),
        };
        let words: Vec<&str> =
            message.split_whitespace().filter(|w| !w.chars().any(|c| c.is_ascii_digit())).take(6).collect();
        Some(format!("{kind}: {}", words.join(" ")))
    }

    /// The verdict for a run whose stepping panicked with `payload`.
    pub fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Verdict {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".into());
        Verdict::Panic(message)
    }
}

/// What one run of one seed produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// The outcome.
    pub verdict: Verdict,
    /// Hash of every event of the run.
    pub trace_hash: u64,
    /// Simulated time covered.
    pub sim_time: Duration,
    /// Simulator counters.
    pub stats: SimStats,
    /// Fault kinds this seed switched on.
    pub fault_mix: Vec<&'static str>,
    /// Discrete faults applied.
    pub faults_applied: usize,
    /// Workload counters, as the scenario's [`Scenario::workload_units`]
    /// name them.
    pub workload: (u64, u64),
    /// Fault points and `sometimes!` assertions reached.
    pub coverage: Coverage,
}

impl RunReport {
    /// Ends a run of `sim`: folds the verdict into the trace (so a replay
    /// must reach the same verdict to give the same hash), reads the
    /// simulator's counters, and shuts the world down.
    pub fn conclude(
        sim: &Sim,
        seed: u64,
        verdict: Verdict,
        fault_mix: Vec<&'static str>,
        workload: (u64, u64),
    ) -> RunReport {
        sim.trace_event(None, "verdict", digest(verdict.to_string().as_bytes()), || format!("VERDICT {verdict}"));
        let report = RunReport {
            seed,
            trace_hash: sim.trace_hash(),
            sim_time: sim.now().since_origin(),
            stats: sim.stats(),
            fault_mix,
            faults_applied: sim.fault_log().len(),
            workload,
            coverage: sim.coverage(),
            verdict,
        };
        sim.shutdown();
        report
    }
}

/// Scenario-specific tallies of one run by name, in the scenario's order
/// (`kaelix sim run` sums them over seeds).
pub type Tallies = Vec<(&'static str, u64)>;

/// A registered scenario.
pub trait Scenario: Sync {
    /// Unique name (`--scenario NAME`).
    fn name(&self) -> &'static str;
    /// One line for `kaelix sim list`.
    fn description(&self) -> &'static str;
    /// The bugs this variant plants (none by default).
    fn planted(&self) -> Planted {
        Planted::NONE
    }
    /// Whether this variant plants a bug (so failing is expected).
    fn planted_bug(&self) -> bool {
        self.planted().any()
    }
    /// What the two workload counters of a [`RunReport`] count, as
    /// `kaelix sim run` prints them ("{first} {label0}, {second} {label1}").
    fn workload_units(&self) -> (&'static str, &'static str) {
        ("values submitted", "acknowledged")
    }
    /// Runs one seed, rendering the trace into `trace` if given.
    fn run(&self, seed: u64, trace: Option<TraceSink>) -> RunReport;
    /// Runs one seed like [`Scenario::run`] and also returns the client
    /// history it recorded, if this scenario records one (the default
    /// records none).
    fn run_recording(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Option<History>) {
        (self.run(seed, trace), None)
    }
    /// Runs one seed like [`Scenario::run`] and also returns its tallies
    /// (the default has none).
    fn run_tallied(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies) {
        (self.run(seed, trace), Vec::new())
    }
    /// Runs one seed like [`Scenario::run_tallied`] and also returns the
    /// metrics its components recorded, read when the run ended
    /// ([`metrics::RunMetrics`]; `kaelix sim run --seed N --metrics`).
    /// Reading them changes nothing in the run: same trace hash. `None`:
    /// this scenario exports no metrics (the default).
    fn run_metered(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies, Option<RunMetrics>) {
        let (report, tallies) = self.run_tallied(seed, trace);
        (report, tallies, None)
    }
}

/// Whether this build has the planted-bug variants (the `planted-bugs`
/// feature).
pub const PLANTED_BUGS: bool = cfg!(feature = "planted-bugs");

/// Every scenario, in listing order: the correct protocols, then (only with
/// the `planted-bugs` feature) the `planted()` variants.
pub fn catalog() -> Vec<&'static dyn Scenario> {
    let correct: [&'static dyn Scenario; 14] = [
        &broadcast::BROADCAST,
        &broker::BROKER,
        &broker_durable::BROKER_DURABLE,
        &broker_backpressure::BROKER_BACKPRESSURE,
        &broker_replicated::BROKER_REPLICATED,
        &broker_plugins::BROKER_PLUGINS,
        &membership::MEMBERSHIP_5,
        &membership::MEMBERSHIP_20,
        &membership::MEMBERSHIP_100,
        &membership::MEMBERSHIP_20_SLOW_NODE,
        &raft::RAFT_PARTITIONS,
        &serve::SERVE,
        &serve::SERVE_RELOAD,
        &cluster::CLUSTER,
    ];
    let all = correct.to_vec();
    #[cfg(feature = "planted-bugs")]
    let all = [all, planted()].concat();
    all
}

/// The planted-bug variants, in listing order. Exists only with the
/// `planted-bugs` feature, as do the variants themselves.
#[cfg(feature = "planted-bugs")]
pub fn planted() -> Vec<&'static dyn Scenario> {
    vec![
        &broadcast::BROADCAST_ACK_BEFORE_SYNC,
        &broadcast::BROADCAST_SKIP_CHECKSUM,
        &membership::MEMBERSHIP_20_REFUTE_BUG,
        &membership::MEMBERSHIP_20_ACCUSE_NEXT_BUG,
        &membership::MEMBERSHIP_20_IGNORE_TOMBSTONE_BUG,
        &membership::MEMBERSHIP_20_ALIVE_IGNORES_INCARNATION_BUG,
        &raft::RAFT_VOTE_BEFORE_PERSIST,
        &raft::RAFT_COMMIT_PREVIOUS_TERM,
        &raft::RAFT_ACK_BEFORE_COMMIT,
        &raft::RAFT_STRAND_FOLLOWER,
        &broker_durable::BROKER_DURABLE_ACK_BEFORE_SYNC,
        &broker_durable::BROKER_DURABLE_GROUP_READS_UNSYNCED,
        &broker_replicated::BROKER_REPLICATED_ACK_BEFORE_COMMIT,
        &broker_replicated::BROKER_REPLICATED_DELIVER_UNCOMMITTED,
        &broker_replicated::BROKER_REPLICATED_COMMIT_ALL_PARTITIONS,
        &broker_replicated::BROKER_REPLICATED_SPILL_FORGETS,
        &broker_backpressure::BROKER_BACKPRESSURE_DROP_NEWEST,
        &broker_backpressure::BROKER_BACKPRESSURE_BLOCK_DROPS,
        &broker_backpressure::BROKER_BACKPRESSURE_GROW_STUCK,
        &broker_backpressure::BROKER_BACKPRESSURE_SHED_HIGH,
        &broker_backpressure::BROKER_BACKPRESSURE_QUEUE_IGNORES_ROOM,
        &serve::SERVE_PONG_BEFORE_STORED,
        &broker_plugins::BROKER_PLUGINS_QUARANTINE_BYPASS,
        &cluster::CLUSTER_FORWARD_UNKNOWN_AS_REFUSED,
        &cluster::CLUSTER_FETCH_SKIPS_READ_INDEX,
        &cluster::CLUSTER_REPLACEMENT_SHRINKS_GROUP,
    ]
}

/// Comparison baselines: correct protocols run with a feature switched off,
/// so a tally can be compared over the same seeds (the membership
/// scenarios without the phi gate). Runnable by name ([`find`]); not in the
/// [`catalog`], so the swarm and the catalog-wide tests skip them.
pub fn baselines() -> Vec<&'static dyn Scenario> {
    vec![
        &membership::MEMBERSHIP_5_PHI_GATE_OFF,
        &membership::MEMBERSHIP_20_PHI_GATE_OFF,
        &membership::MEMBERSHIP_100_PHI_GATE_OFF,
        &membership::MEMBERSHIP_20_SLOW_NODE_PHI_GATE_OFF,
    ]
}

/// The scenario named `name` (the catalog's or a baseline).
pub fn find(name: &str) -> Option<&'static dyn Scenario> {
    catalog().into_iter().chain(baselines()).find(|s| s.name() == name)
}

/// A seed run twice: the report of the first run and whether the second
/// reproduced its trace hash and verdict.
#[derive(Clone, Debug)]
pub struct CheckedRun {
    /// The first run.
    pub report: RunReport,
    /// The first run's tallies.
    pub tallies: Tallies,
    /// The second run's hash.
    pub replay_hash: u64,
}

impl CheckedRun {
    /// Whether the replay matched bit for bit.
    pub fn deterministic(&self) -> bool {
        self.report.trace_hash == self.replay_hash
    }
}

/// Runs `seed` twice and compares (the built-in determinism check).
pub fn run_checked(scenario: &dyn Scenario, seed: u64) -> CheckedRun {
    let (report, tallies) = scenario.run_tallied(seed, None);
    let replay = scenario.run(seed, None);
    CheckedRun { replay_hash: replay.trace_hash, report, tallies }
}

/// Runs `seed` of `scenario` with its drawn fault schedule replaced by
/// `schedule` (see [`kaelix_sim::shrink`]); everything else is the seed's.
/// Returns the report and the schedule the seed drew.
pub fn run_with_schedule(
    scenario: &dyn Scenario,
    seed: u64,
    schedule: Option<&kaelix_sim::FaultSchedule>,
    trace: Option<TraceSink>,
) -> (RunReport, kaelix_sim::FaultSchedule) {
    kaelix_sim::shrink::with_schedule(schedule, || scenario.run(seed, trace))
}

/// A failing seed's fault schedule, shrunk ([`shrink_seed`]).
#[derive(Clone, Debug)]
pub struct Shrunk {
    /// The check the seed fails ([`Verdict::check`]); every candidate kept
    /// fails this same check.
    pub check: String,
    /// The seed's own run.
    pub first: RunReport,
    /// The schedule the seed drew.
    pub drawn: kaelix_sim::FaultSchedule,
    /// The smallest failing schedule found, candidates run, 1-minimality.
    pub outcome: kaelix_sim::shrink::ShrinkOutcome,
    /// The workload the seed drew, for scenarios with recorded workload
    /// lists (empty otherwise).
    pub drawn_workload: kaelix_sim::shrink::WorkloadKeep,
    /// The smallest failing workload found under the shrunk schedule
    /// (`None`: the scenario records no workload list).
    pub workload: Option<kaelix_sim::shrink::WorkloadOutcome>,
    /// The run under the shrunk schedule (and workload).
    pub replay: RunReport,
}

impl Shrunk {
    /// Whether the run under the shrunk schedule fails the same check.
    pub fn still_fails(&self) -> bool {
        self.replay.verdict.check().as_deref() == Some(self.check.as_str())
    }
}

/// Why a seed cannot be shrunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShrinkError {
    /// The seed passes: nothing to shrink.
    Passes,
    /// Giving the drawn schedule back changed the run (trace hashes), so
    /// the scenario schedules faults in a way the shrinker cannot replace.
    NotReplaceable {
        /// The seed's own run.
        first: u64,
        /// The run with its drawn schedule given back.
        again: u64,
    },
}

impl std::fmt::Display for ShrinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShrinkError::Passes => write!(f, "the seed passes; there is no failure to shrink"),
            ShrinkError::NotReplaceable { first, again } => write!(
                f,
                "replaying the recorded schedule changed the run (trace hash {first:016x}, then {again:016x}): the scenario schedules its faults in a way the shrinker cannot replace"
            ),
        }
    }
}

/// Shrinks the fault schedule of a failing `seed` of `scenario` (see
/// [`kaelix_sim::shrink`]): the seed's run, its drawn schedule checked to
/// reproduce it, delta debugging over candidates run under the same seed
/// (each must fail the same check), and the run under the result.
/// `out_of_time` is asked before each candidate; `progress` hears the
/// smallest failing schedule's length after each.
pub fn shrink_seed(
    scenario: &dyn Scenario,
    seed: u64,
    out_of_time: &mut dyn FnMut() -> bool,
    progress: &mut dyn FnMut(usize),
) -> Result<Shrunk, ShrinkError> {
    let (first, drawn) = run_with_schedule(scenario, seed, None, None);
    let check = first.verdict.check().ok_or(ShrinkError::Passes)?;
    // The drawn schedule given back must reproduce the run bit for bit, or
    // a candidate's result would say nothing about the original.
    let (again, _) = run_with_schedule(scenario, seed, Some(&drawn), None);
    if again.trace_hash != first.trace_hash {
        return Err(ShrinkError::NotReplaceable { first: first.trace_hash, again: again.trace_hash });
    }
    let mut smallest = drawn.len();
    let outcome = kaelix_sim::shrink::shrink(
        &drawn,
        &mut |candidate| {
            let (report, _) = run_with_schedule(scenario, seed, Some(candidate), None);
            let same = report.verdict.check().as_deref() == Some(check.as_str());
            if same {
                smallest = smallest.min(candidate.len());
            }
            progress(smallest);
            same
        },
        out_of_time,
    );
    // Then the workload, under the shrunk schedule.
    let (_, drawn_workload) =
        kaelix_sim::shrink::with_workload(None, || run_with_schedule(scenario, seed, Some(&outcome.schedule), None));
    let workload = (!drawn_workload.is_empty()).then(|| {
        kaelix_sim::shrink::shrink_workload(
            &drawn_workload,
            &mut |keep| {
                let (report, _) = run_with(scenario, seed, Some(&outcome.schedule), Some(keep), None);
                let same = report.verdict.check().as_deref() == Some(check.as_str());
                progress(outcome.schedule.len());
                same
            },
            out_of_time,
        )
    });
    let (replay, _) = run_with(scenario, seed, Some(&outcome.schedule), workload.as_ref().map(|w| &w.keep), None);
    Ok(Shrunk { check, first, drawn, outcome, drawn_workload, workload, replay })
}

/// Runs `seed` of `scenario` with its fault schedule replaced by
/// `schedule` and its recorded workload lists cut to `workload` (see
/// [`kaelix_sim::shrink`]); everything else is the seed's. Returns the
/// report and the schedule the seed drew.
pub fn run_with(
    scenario: &dyn Scenario,
    seed: u64,
    schedule: Option<&kaelix_sim::FaultSchedule>,
    workload: Option<&kaelix_sim::shrink::WorkloadKeep>,
    trace: Option<TraceSink>,
) -> (RunReport, kaelix_sim::FaultSchedule) {
    kaelix_sim::shrink::with_workload(workload, || run_with_schedule(scenario, seed, schedule, trace)).0
}

/// The command that reproduces a run (a planted-bug variant needs the
/// `planted-bugs` feature).
pub fn replay_command(scenario: &dyn Scenario, seed: u64) -> String {
    let features = if scenario.planted_bug() { " --features planted-bugs" } else { "" };
    format!("cargo run --release -p kaelix{features} -- sim replay --scenario {} --seed {seed}", scenario.name())
}

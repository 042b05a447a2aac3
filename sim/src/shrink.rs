//! Shrinking a failing run's fault schedule (delta debugging), and running a
//! scenario under a schedule given from outside.
//!
//! # Model
//!
//! A scenario draws its [`FaultSchedule`] from its seed and hands each fault
//! to [`Sim::schedule_fault`](crate::Sim::schedule_fault). [`with_schedule`]
//! runs any code that builds simulations on this thread while recording the
//! faults they schedule, and optionally **replaces** them: at the first
//! `schedule_fault` call every fault of the given schedule is pushed instead
//! (in its order, at the same point of the event stream as the drawn ones),
//! and the drawn ones are dropped. Everything else — the seed, the workload,
//! every other draw — stays as it was, so the full recorded schedule given
//! back reproduces the run bit for bit (same trace hash), and a smaller one
//! differs from it only by the missing faults.
//!
//! [`shrink`] groups a schedule into **units** — a crash with its restart, a
//! power loss with the restarts after it, a pause with its resume, a
//! partition with its heal, and each single fault otherwise — then removes
//! units by delta debugging (Zeller's ddmin: complements of ever smaller
//! chunks) while the run still fails the same check, then shortens what is
//! left (a unit's end moved halfway towards its start while it still
//! fails), and repeats until nothing changes. The result is **1-minimal**:
//! removing any one remaining unit makes the failure go away — unless the
//! time bound cut it short, which the outcome says.
//!
//! # Workload operations
//!
//! A scenario whose workload is a **recorded list** of operations per
//! client (drawn from the seed before the run, e.g. by
//! `kaelix_scenarios::harness::SimScenario::clients_with_workload`) passes
//! each list through [`workload_list`]. Under [`with_workload`] the lists'
//! lengths are recorded and, if a [`WorkloadKeep`] is given, each list is
//! cut to the operations it keeps (by index, order kept); nothing else of
//! the run changes. [`shrink_workload`] removes operations by ddmin while
//! the run still fails the same check, down to a 1-minimal set. Operations
//! are opaque to the simulator, so they are removed, not shortened. The
//! built-in scenarios record their workloads the same way (the
//! `kaelix_scenarios` crate's `workload` module: one list per client or
//! workload task, some drawn as a task starts, e.g. per incarnation of a
//! restarted node — any time during the run, so long as each list id is
//! drawn once per run); only the membership scenarios, which have no client
//! operations, record none.

use std::cell::RefCell;
use std::collections::BTreeMap;

use kaelix_core::NodeId;
use kaelix_core::time::Instant;
use serde::{Deserialize, Serialize};

use crate::faults::{Fault, FaultSchedule};

struct Capture {
    /// Faults the running code scheduled (the drawn schedule).
    scheduled: Vec<(Instant, Fault)>,
    /// What replaces them, until the first `schedule_fault` pushes it.
    replacement: Option<Vec<(Instant, Fault)>>,
    /// Whether the drawn faults are being replaced.
    replacing: bool,
}

thread_local! {
    static CAPTURE: RefCell<Option<Capture>> = const { RefCell::new(None) };
}

/// Runs `f`, recording the faults the simulations it builds schedule, and
/// replacing them by `replacement` if given (see the module docs). Returns
/// `f`'s result and the drawn schedule.
pub fn with_schedule<T>(replacement: Option<&FaultSchedule>, f: impl FnOnce() -> T) -> (T, FaultSchedule) {
    let capture = Capture {
        scheduled: Vec::new(),
        replacing: replacement.is_some(),
        replacement: replacement.map(|s| s.faults.clone()),
    };
    let previous = CAPTURE.with(|c| c.borrow_mut().replace(capture));
    struct Restore(Option<Option<Capture>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take().expect("restored once");
            CAPTURE.with(|c| *c.borrow_mut() = previous);
        }
    }
    let restore = Restore(Some(previous));
    let out = f();
    let captured = CAPTURE.with(|c| c.borrow_mut().take()).expect("capture in place");
    drop(restore);
    (out, FaultSchedule { faults: captured.scheduled })
}

/// What `Sim::schedule_fault` does with a fault under [`with_schedule`]:
/// the faults to push now (the fault itself outside a capture).
pub(crate) fn intercept(at: Instant, fault: Fault) -> Vec<(Instant, Fault)> {
    CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        let Some(capture) = c.as_mut() else { return vec![(at, fault)] };
        capture.scheduled.push((at, fault.clone()));
        if capture.replacing { capture.replacement.take().unwrap_or_default() } else { vec![(at, fault)] }
    })
}

/// A group of faults removed or kept together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Its faults in time order; the first starts it, the others end it.
    pub faults: Vec<(Instant, Fault)>,
}

/// Groups a schedule into units (see the module docs).
pub fn units(schedule: &FaultSchedule) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    // Indices of units still waiting for their end.
    let mut down: Vec<(NodeId, usize)> = Vec::new();
    let mut power_loss: Option<usize> = None;
    let mut paused: Vec<(NodeId, usize)> = Vec::new();
    let mut partition: Option<usize> = None;
    for (at, fault) in &schedule.faults {
        let entry = (*at, fault.clone());
        let joins = match fault {
            Fault::Restart { node, .. } => match down.iter().position(|(n, _)| n == node) {
                Some(k) => Some(down.swap_remove(k).1),
                None => power_loss,
            },
            Fault::Resume(node) => paused.iter().position(|(n, _)| n == node).map(|k| paused.swap_remove(k).1),
            Fault::Heal => partition.take(),
            _ => None,
        };
        if let Some(u) = joins {
            units[u].faults.push(entry);
            continue;
        }
        let u = units.len();
        units.push(Unit { faults: vec![entry] });
        match fault {
            Fault::Crash(n) => down.push((*n, u)),
            Fault::PowerLoss => power_loss = Some(u),
            Fault::Pause(n) => paused.push((*n, u)),
            Fault::PartitionSymmetric(_) | Fault::PartitionAsymmetric { .. } | Fault::PartitionOneWay { .. } => {
                partition = Some(u);
            }
            _ => {}
        }
    }
    units
}

/// The schedule of `units`, in time order (a unit's start stays before its
/// end when times tie).
pub fn flatten(units: &[Unit]) -> FaultSchedule {
    let mut faults: Vec<(Instant, Fault)> = units.iter().flat_map(|u| u.faults.iter().cloned()).collect();
    faults.sort_by_key(|(t, _)| *t);
    FaultSchedule { faults }
}

/// How a shrink ended.
#[derive(Clone, Debug)]
pub struct ShrinkOutcome {
    /// The smallest failing schedule found.
    pub schedule: FaultSchedule,
    /// Candidates run.
    pub runs: u64,
    /// Whether every single-unit removal of `schedule` was tried and passed
    /// (false if the time bound cut the search short).
    pub one_minimal: bool,
}

/// Shrinks `schedule`, which fails, to a 1-minimal failing one (see the
/// module docs). `fails` runs a candidate and says whether it fails the
/// same check; `out_of_time` is asked before each candidate.
pub fn shrink(
    schedule: &FaultSchedule,
    fails: &mut dyn FnMut(&FaultSchedule) -> bool,
    out_of_time: &mut dyn FnMut() -> bool,
) -> ShrinkOutcome {
    let mut runs = 0u64;
    let mut timed_out = false;
    let mut test = |units: &[Unit], runs: &mut u64, timed_out: &mut bool| -> bool {
        if *timed_out || out_of_time() {
            *timed_out = true;
            return false;
        }
        *runs += 1;
        fails(&flatten(units))
    };
    let mut current = units(schedule);
    loop {
        let before = current.clone();
        // ddmin over units: try each chunk's complement.
        let mut n = 2usize;
        while current.len() >= 2 && !timed_out {
            let chunk = current.len().div_ceil(n);
            let mut reduced = false;
            for start in (0..current.len()).step_by(chunk) {
                let complement: Vec<Unit> = current[..start]
                    .iter()
                    .chain(current[(start + chunk).min(current.len())..].iter())
                    .cloned()
                    .collect();
                if test(&complement, &mut runs, &mut timed_out) {
                    current = complement;
                    n = (n - 1).max(2);
                    reduced = true;
                    break;
                }
            }
            if !reduced {
                if n >= current.len() {
                    break;
                }
                n = (2 * n).min(current.len());
            }
        }
        // A single unit left: is it needed at all?
        if current.len() == 1 && !timed_out && test(&[], &mut runs, &mut timed_out) {
            current.clear();
        }
        // Shorten: move each unit's end halfway to its start while it fails.
        for i in 0..current.len() {
            while current[i].faults.len() > 1 && !timed_out {
                let start = current[i].faults[0].0.as_nanos();
                let mut shorter = current.clone();
                let mut moved = false;
                for (t, _) in shorter[i].faults.iter_mut().skip(1) {
                    let half = start + (t.as_nanos() - start) / 2;
                    // Shorter than a millisecond is not worth a run.
                    if t.as_nanos() - start >= 2_000_000 {
                        *t = Instant::from_nanos(half);
                        moved = true;
                    }
                }
                if !moved || !test(&shorter, &mut runs, &mut timed_out) {
                    break;
                }
                current = shorter;
            }
        }
        if current == before || timed_out {
            break;
        }
    }
    ShrinkOutcome { schedule: flatten(&current), runs, one_minimal: !timed_out }
}

/// A fault schedule in a file (`kaelix sim shrink` writes it, `kaelix sim
/// replay --schedule` reads it): JSON, one object per fault with its time
/// in nanoseconds of simulated time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    /// The scenario the schedule belongs to.
    pub scenario: String,
    /// The seed of everything else.
    pub seed: u64,
    /// The check the run fails, as the shrinker saw it.
    pub check: String,
    /// The faults, in time order.
    pub faults: Vec<FaultEntry>,
    /// The workload operations kept, for scenarios that record workload
    /// lists (absent: the seed's whole workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadKeep>,
}

/// One fault of a [`ScheduleFile`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultEntry {
    /// Simulated time, nanoseconds.
    pub at_nanos: u64,
    /// The fault.
    pub fault: FaultRecord,
}

/// [`Fault`] as a file holds it (node ids as numbers).
#[allow(missing_docs, reason = "each variant is the Fault variant of the same name")]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultRecord {
    Crash { node: u64 },
    Restart { node: u64, wipe: bool },
    PowerLoss,
    Pause { node: u64 },
    Resume { node: u64 },
    PartitionSymmetric { groups: Vec<Vec<u64>> },
    PartitionAsymmetric { isolated: u64, inbound_blocked: bool },
    PartitionOneWay { from: u64, to: u64 },
    Heal,
    ClockStep { node: u64, delta_nanos: i64 },
    ClockDrift { node: u64, ppm: i64 },
    BitRot { node: u64 },
}

impl From<&Fault> for FaultRecord {
    fn from(f: &Fault) -> Self {
        match f {
            Fault::Crash(n) => FaultRecord::Crash { node: n.0 },
            Fault::Restart { node, wipe } => FaultRecord::Restart { node: node.0, wipe: *wipe },
            Fault::PowerLoss => FaultRecord::PowerLoss,
            Fault::Pause(n) => FaultRecord::Pause { node: n.0 },
            Fault::Resume(n) => FaultRecord::Resume { node: n.0 },
            Fault::PartitionSymmetric(groups) => FaultRecord::PartitionSymmetric {
                groups: groups.iter().map(|g| g.iter().map(|n| n.0).collect()).collect(),
            },
            Fault::PartitionAsymmetric { isolated, inbound_blocked } => {
                FaultRecord::PartitionAsymmetric { isolated: isolated.0, inbound_blocked: *inbound_blocked }
            }
            Fault::PartitionOneWay { from, to } => FaultRecord::PartitionOneWay { from: from.0, to: to.0 },
            Fault::Heal => FaultRecord::Heal,
            Fault::ClockStep { node, delta_nanos } => {
                FaultRecord::ClockStep { node: node.0, delta_nanos: *delta_nanos }
            }
            Fault::ClockDrift { node, ppm } => FaultRecord::ClockDrift { node: node.0, ppm: *ppm },
            Fault::BitRot(n) => FaultRecord::BitRot { node: n.0 },
        }
    }
}

impl From<&FaultRecord> for Fault {
    fn from(f: &FaultRecord) -> Self {
        match f {
            FaultRecord::Crash { node } => Fault::Crash(NodeId(*node)),
            FaultRecord::Restart { node, wipe } => Fault::Restart { node: NodeId(*node), wipe: *wipe },
            FaultRecord::PowerLoss => Fault::PowerLoss,
            FaultRecord::Pause { node } => Fault::Pause(NodeId(*node)),
            FaultRecord::Resume { node } => Fault::Resume(NodeId(*node)),
            FaultRecord::PartitionSymmetric { groups } => {
                Fault::PartitionSymmetric(groups.iter().map(|g| g.iter().map(|&n| NodeId(n)).collect()).collect())
            }
            FaultRecord::PartitionAsymmetric { isolated, inbound_blocked } => {
                Fault::PartitionAsymmetric { isolated: NodeId(*isolated), inbound_blocked: *inbound_blocked }
            }
            FaultRecord::PartitionOneWay { from, to } => {
                Fault::PartitionOneWay { from: NodeId(*from), to: NodeId(*to) }
            }
            FaultRecord::Heal => Fault::Heal,
            FaultRecord::ClockStep { node, delta_nanos } => {
                Fault::ClockStep { node: NodeId(*node), delta_nanos: *delta_nanos }
            }
            FaultRecord::ClockDrift { node, ppm } => Fault::ClockDrift { node: NodeId(*node), ppm: *ppm },
            FaultRecord::BitRot { node } => Fault::BitRot(NodeId(*node)),
        }
    }
}

impl ScheduleFile {
    /// The file form of `schedule`.
    pub fn new(scenario: &str, seed: u64, check: &str, schedule: &FaultSchedule) -> Self {
        ScheduleFile {
            scenario: scenario.to_owned(),
            seed,
            check: check.to_owned(),
            faults: schedule
                .faults
                .iter()
                .map(|(t, f)| FaultEntry { at_nanos: t.as_nanos(), fault: f.into() })
                .collect(),
            workload: None,
        }
    }

    /// The schedule it holds. Errors if the faults are out of time order.
    pub fn schedule(&self) -> Result<FaultSchedule, String> {
        if let Some(i) = self.faults.windows(2).position(|w| w[1].at_nanos < w[0].at_nanos) {
            return Err(format!(
                "faults[{}]: at_nanos {} is before the previous fault's",
                i + 1,
                self.faults[i + 1].at_nanos
            ));
        }
        Ok(FaultSchedule {
            faults: self.faults.iter().map(|e| (Instant::from_nanos(e.at_nanos), Fault::from(&e.fault))).collect(),
        })
    }

    /// Parses a file's text; errors name the line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ScheduleFile =
            serde_json::from_str(text).map_err(|e| format!("line {}, column {}: {e}", e.line(), e.column()))?;
        file.schedule()?;
        if let Some(workload) = &file.workload {
            for (list, kept) in &workload.lists {
                if let Some(i) = kept.windows(2).position(|w| w[1] <= w[0]) {
                    return Err(format!(
                        "workload.lists.{list}[{}]: index {} is not above the previous one (kept indices ascend)",
                        i + 1,
                        kept[i + 1]
                    ));
                }
            }
        }
        Ok(file)
    }

    /// The file's text (pretty JSON, one fault per object).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a schedule always serializes")
    }
}

/// Which operations of each recorded workload list a run keeps: list id →
/// kept indices, ascending. A list not named keeps everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadKeep {
    /// Kept indices per list.
    pub lists: BTreeMap<u64, Vec<usize>>,
}

impl WorkloadKeep {
    /// Operations kept over all lists.
    pub fn len(&self) -> usize {
        self.lists.values().map(Vec::len).sum()
    }

    /// Whether no operation is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pairs(&self) -> Vec<(u64, usize)> {
        self.lists.iter().flat_map(|(l, ix)| ix.iter().map(move |i| (*l, *i))).collect()
    }

    fn from_pairs(lists: impl Iterator<Item = u64>, pairs: &[(u64, usize)]) -> WorkloadKeep {
        let mut out: BTreeMap<u64, Vec<usize>> = lists.map(|l| (l, Vec::new())).collect();
        for (l, i) in pairs {
            out.entry(*l).or_default().push(*i);
        }
        WorkloadKeep { lists: out }
    }
}

#[derive(Default)]
struct WorkloadCapture {
    keep: Option<WorkloadKeep>,
    drawn: BTreeMap<u64, usize>,
}

thread_local! {
    static WORKLOAD: RefCell<Option<WorkloadCapture>> = const { RefCell::new(None) };
}

/// Runs `f`, recording the workload lists it draws ([`workload_list`]) and
/// cutting them to `keep` if given. Returns `f`'s result and the drawn
/// workload as a keep-everything [`WorkloadKeep`] (empty if none recorded).
pub fn with_workload<T>(keep: Option<&WorkloadKeep>, f: impl FnOnce() -> T) -> (T, WorkloadKeep) {
    let capture = WorkloadCapture { keep: keep.cloned(), drawn: BTreeMap::new() };
    let previous = WORKLOAD.with(|c| c.borrow_mut().replace(capture));
    struct Restore(Option<Option<WorkloadCapture>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take().expect("restored once");
            WORKLOAD.with(|c| *c.borrow_mut() = previous);
        }
    }
    let restore = Restore(Some(previous));
    let out = f();
    let captured = WORKLOAD.with(|c| c.borrow_mut().take()).expect("capture in place");
    drop(restore);
    let drawn = captured.drawn.into_iter().map(|(l, n)| (l, (0..n).collect())).collect();
    (out, WorkloadKeep { lists: drawn })
}

/// A scenario's recorded workload list `list` (see the module docs): the
/// operations drawn, cut to the kept ones under [`with_workload`].
pub fn workload_list<T>(list: u64, drawn: Vec<T>) -> Vec<T> {
    WORKLOAD.with(|c| {
        let mut c = c.borrow_mut();
        let Some(capture) = c.as_mut() else { return drawn };
        let previous = capture.drawn.insert(list, drawn.len());
        assert!(previous.is_none(), "workload list {list} drawn twice in one run");
        match capture.keep.as_ref().and_then(|k| k.lists.get(&list)) {
            None => drawn,
            Some(kept) => {
                drawn.into_iter().enumerate().filter(|(i, _)| kept.binary_search(i).is_ok()).map(|(_, op)| op).collect()
            }
        }
    })
}

/// How a workload shrink ended.
#[derive(Clone, Debug)]
pub struct WorkloadOutcome {
    /// The smallest failing set of operations found.
    pub keep: WorkloadKeep,
    /// Candidates run.
    pub runs: u64,
    /// Whether every single-operation removal was tried and passed.
    pub one_minimal: bool,
}

/// Shrinks the operations of `drawn` (which fails) by ddmin to a 1-minimal
/// failing set: `fails` runs a candidate and says whether it fails the same
/// check; `out_of_time` is asked before each candidate.
pub fn shrink_workload(
    drawn: &WorkloadKeep,
    fails: &mut dyn FnMut(&WorkloadKeep) -> bool,
    out_of_time: &mut dyn FnMut() -> bool,
) -> WorkloadOutcome {
    let lists: Vec<u64> = drawn.lists.keys().copied().collect();
    let mut runs = 0u64;
    let mut timed_out = false;
    let mut test = |pairs: &[(u64, usize)], runs: &mut u64, timed_out: &mut bool| -> bool {
        if *timed_out || out_of_time() {
            *timed_out = true;
            return false;
        }
        *runs += 1;
        fails(&WorkloadKeep::from_pairs(lists.iter().copied(), pairs))
    };
    let mut current = drawn.pairs();
    let mut n = 2usize;
    while current.len() >= 2 && !timed_out {
        let chunk = current.len().div_ceil(n);
        let mut reduced = false;
        for start in (0..current.len()).step_by(chunk) {
            let complement: Vec<(u64, usize)> =
                current[..start].iter().chain(current[(start + chunk).min(current.len())..].iter()).copied().collect();
            if test(&complement, &mut runs, &mut timed_out) {
                current = complement;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n >= current.len() {
                break;
            }
            n = (2 * n).min(current.len());
        }
    }
    if current.len() == 1 && !timed_out && test(&[], &mut runs, &mut timed_out) {
        current.clear();
    }
    WorkloadOutcome { keep: WorkloadKeep::from_pairs(lists.iter().copied(), &current), runs, one_minimal: !timed_out }
}

/// The schedule as readable lines: time, then the fault.
pub fn render(schedule: &FaultSchedule) -> String {
    schedule.faults.iter().map(|(t, f)| format!("  {:>14.6} s  {f}\n", t.as_nanos() as f64 / 1e9)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_file_keeps_its_workload_and_refuses_unordered_indices() {
        let mut file = ScheduleFile::new("s", 1, "c", &FaultSchedule::default());
        file.workload = Some(WorkloadKeep { lists: [(2, vec![0, 5])].into_iter().collect() });
        assert_eq!(ScheduleFile::parse(&file.to_json()), Ok(file));
        let bad = r#"{"scenario": "s", "seed": 1, "check": "c", "faults": [], "workload": {"lists": {"2": [5, 5]}}}"#;
        assert_eq!(
            ScheduleFile::parse(bad),
            Err("workload.lists.2[1]: index 5 is not above the previous one (kept indices ascend)".into())
        );
    }

    #[test]
    fn workload_lists_are_recorded_cut_and_shrunk_to_a_one_minimal_set() {
        let draw = || (workload_list(0, vec!['a', 'b', 'c', 'd']), workload_list(1, vec!['x', 'y']));
        assert_eq!(draw(), (vec!['a', 'b', 'c', 'd'], vec!['x', 'y']), "outside a capture nothing changes");
        let (full, drawn) = with_workload(None, draw);
        assert_eq!(full.0.len(), 4);
        assert_eq!(drawn.len(), 6);
        let keep = WorkloadKeep { lists: [(0, vec![1, 3])].into_iter().collect() };
        let (cut, _) = with_workload(Some(&keep), draw);
        assert_eq!(cut, (vec!['b', 'd'], vec!['x', 'y']), "a list not named keeps everything");
        // Fails while both 'c' and 'y' are run.
        let mut fails = |k: &WorkloadKeep| {
            let (ops, _) = with_workload(Some(k), draw);
            ops.0.contains(&'c') && ops.1.contains(&'y')
        };
        let outcome = shrink_workload(&drawn, &mut fails, &mut || false);
        assert!(outcome.one_minimal);
        assert_eq!(outcome.keep.pairs(), vec![(0, 2), (1, 1)]);
    }

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    fn sample() -> FaultSchedule {
        FaultSchedule {
            faults: vec![
                (at(10), Fault::Crash(NodeId(1))),
                (at(20), Fault::PartitionOneWay { from: NodeId(2), to: NodeId(3) }),
                (at(30), Fault::ClockStep { node: NodeId(2), delta_nanos: -5 }),
                (at(40), Fault::Restart { node: NodeId(1), wipe: true }),
                (at(50), Fault::Heal),
                (at(60), Fault::PowerLoss),
                (at(70), Fault::Restart { node: NodeId(1), wipe: false }),
                (at(80), Fault::Restart { node: NodeId(2), wipe: false }),
                (at(90), Fault::BitRot(NodeId(3))),
            ],
        }
    }

    #[test]
    fn units_pair_starts_with_ends_and_flatten_inverts() {
        let u = units(&sample());
        let sizes: Vec<usize> = u.iter().map(|u| u.faults.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1, 3, 1]);
        assert_eq!(flatten(&u), sample());
    }

    /// The failure needs the partition and the bit rot, and the partition
    /// to last at least 12 ms: the shrinker keeps exactly those two units
    /// and shortens the partition, but not below what fails.
    #[test]
    fn shrink_finds_the_one_minimal_core_and_shortens_it() {
        let mut fails = |s: &FaultSchedule| {
            let start = s.faults.iter().find(|(_, f)| matches!(f, Fault::PartitionOneWay { .. })).map(|f| f.0);
            let heal = s.faults.iter().find(|(_, f)| matches!(f, Fault::Heal)).map(|f| f.0);
            let rot = s.faults.iter().any(|(_, f)| matches!(f, Fault::BitRot(_)));
            match (start, heal) {
                (Some(a), Some(b)) => rot && b.as_nanos() - a.as_nanos() >= 12_000_000,
                _ => false,
            }
        };
        let out = shrink(&sample(), &mut fails, &mut || false);
        assert!(out.one_minimal);
        assert_eq!(out.schedule.len(), 3, "{:?}", out.schedule);
        assert!(fails(&out.schedule));
        let heal = out.schedule.faults.iter().find(|(_, f)| matches!(f, Fault::Heal)).expect("kept").0;
        assert!(heal < at(50), "the partition was shortened: {heal:?}");
        // 1-minimal: every single unit removed passes.
        let u = units(&out.schedule);
        for i in 0..u.len() {
            let mut fewer = u.clone();
            fewer.remove(i);
            assert!(!fails(&flatten(&fewer)));
        }
    }

    #[test]
    fn shrink_stops_at_the_time_bound() {
        // Only the bit rot matters; two candidates fit in the budget.
        let mut budget = 2;
        let out = shrink(&sample(), &mut |s| s.faults.iter().any(|(_, f)| matches!(f, Fault::BitRot(_))), &mut || {
            budget -= 1;
            budget < 0
        });
        assert!(!out.one_minimal);
        assert_eq!(out.runs, 2);
        // What was reached so far still fails.
        assert!(out.schedule.faults.iter().any(|(_, f)| matches!(f, Fault::BitRot(_))));
    }

    #[test]
    fn schedule_files_round_trip_and_errors_name_the_place() {
        let file = ScheduleFile::new("raft-partitions", 7, "SAFETY VIOLATION: x", &sample());
        let back = ScheduleFile::parse(&file.to_json()).expect("parses");
        assert_eq!(back, file);
        assert_eq!(back.schedule().expect("ordered"), sample());
        let err = ScheduleFile::parse("{\"scenario\": \"s\", \"seed\": 1,\n \"check\": \"c\", \"faults\": [{\"at_nanos\": 1, \"fault\": {\"kind\": \"melt\"}}]}")
            .unwrap_err();
        assert!(err.starts_with("line 2, column"), "{err}");
        assert!(err.contains("melt"), "{err}");
        let mut unordered = file.clone();
        unordered.faults.swap(0, 1);
        assert!(ScheduleFile::parse(&unordered.to_json()).unwrap_err().contains("faults[1]"));
    }
}

//! Shrinking the built-in scenarios' workloads: a planted bug's failing
//! seed shrinks to fewer operations than it drew, the shrunk run fails the
//! same check, and the kept schedule and workload replay it exactly.

use kaelix_scenarios::{Scenario, find, run_with, shrink_seed};
use kaelix_sim::shrink::{ScheduleFile, WorkloadKeep};

/// The first failing seed of `name` below `limit`.
fn first_failure(s: &dyn Scenario, limit: u64) -> u64 {
    (0..limit)
        .find(|&seed| !s.run(seed, None).verdict.passed())
        .unwrap_or_else(|| panic!("{}: not caught in {limit} seeds", s.name()))
}

fn shrinks_workload(name: &str, limit: u64, candidates: u64) {
    let s = find(name).expect("registered");
    let seed = first_failure(s, limit);
    // A bound on candidate runs, not on time: the test must not depend on
    // the machine's speed. The workload is shrunk after the schedule, so
    // the bound leaves it room.
    let mut runs = 0u64;
    let shrunk = shrink_seed(
        s,
        seed,
        &mut || {
            runs += 1;
            runs > candidates
        },
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
    let drawn = shrunk.drawn_workload.len();
    let workload = shrunk.workload.as_ref().unwrap_or_else(|| panic!("{name}: no recorded workload list"));
    assert!(drawn > 0, "{name}: the workload lists are empty");
    assert!(
        workload.keep.len() < drawn,
        "{name} seed {seed}: the workload did not shrink ({} of {drawn} operations left)",
        workload.keep.len()
    );
    assert!(
        shrunk.still_fails(),
        "{name} seed {seed}: the shrunk run fails another check: {} (expected {})",
        shrunk.replay.verdict,
        shrunk.check
    );
    // The schedule file form keeps both, and replaying it gives the
    // identical run.
    let mut file = ScheduleFile::new(name, seed, &shrunk.check, &shrunk.outcome.schedule);
    file.workload = Some(workload.keep.clone());
    let back = ScheduleFile::parse(&file.to_json()).expect("parses");
    let keep: &WorkloadKeep = back.workload.as_ref().expect("kept");
    let schedule = back.schedule().expect("ordered");
    let (again, _) = run_with(s, seed, Some(&schedule), Some(keep), None);
    assert_eq!(again.trace_hash, shrunk.replay.trace_hash, "{name} seed {seed}: the replay differs");
    assert_eq!(again.verdict.check().as_deref(), Some(shrunk.check.as_str()));
}

#[test]
fn raft_ack_before_commit_shrinks_its_workload_and_replays() {
    shrinks_workload("raft-partitions-ack-before-commit", 60, 300);
}

#[test]
fn broadcast_skip_checksum_shrinks_its_workload_and_replays() {
    shrinks_workload("broadcast-skip-checksum", 60, 300);
}

/// One planted bug of each other family whose workload is recorded lists
/// drawn as tasks start (per incarnation, per publisher, the hot-swapper,
/// the reloader).
#[test]
fn the_broker_and_serve_families_shrink_their_workloads_and_replay() {
    for name in [
        "broker-durable-ack-before-sync",
        "broker-replicated-ack-before-commit",
        "broker-backpressure-drop-newest",
        "broker-plugins-quarantine-bypass",
        "serve-pong-before-stored",
    ] {
        shrinks_workload(name, 60, 300);
    }
}

//! Scenario-level tests: determinism across many seeds, and the simulator's
//! power to catch planted bugs.

use kaelix_scenarios::{Verdict, catalog, find, run_checked};

/// 1,000 seeds each replay to the same trace hash, all pass, and distinct
/// seeds give distinct runs.
#[test]
fn broadcast_1000_seeds_deterministic_and_passing() {
    let s = find("broadcast").expect("registered");
    let mut hashes = std::collections::BTreeSet::new();
    for seed in 0..1000 {
        let run = run_checked(s, seed);
        assert!(
            run.deterministic(),
            "seed {seed}: trace hash {:016x} then {:016x}",
            run.report.trace_hash,
            run.replay_hash
        );
        assert_eq!(run.report.verdict, Verdict::Pass, "seed {seed} failed");
        assert!(run.report.workload.1 > 0, "seed {seed}: nothing acknowledged");
        hashes.insert(run.report.trace_hash);
    }
    assert_eq!(hashes.len(), 1000, "different seeds must give different runs");
}

fn first_failure(name: &str, limit: u64) -> Option<(u64, Verdict)> {
    let s = find(name).expect("registered");
    (0..limit).map(|seed| (seed, s.run(seed, None).verdict)).find(|(_, v)| !v.passed())
}

#[test]
fn planted_ack_before_sync_is_caught_within_1000_seeds() {
    let (seed, verdict) =
        first_failure("broadcast-ack-before-sync", 1000).expect("planted bug not found in 1000 seeds");
    assert!(
        matches!(&verdict, Verdict::SafetyViolation(m) if m.contains("lost from every node")),
        "seed {seed}: {verdict}"
    );
    // The failure reproduces bit for bit.
    let s = find("broadcast-ack-before-sync").unwrap();
    let run = run_checked(s, seed);
    assert!(run.deterministic());
    assert_eq!(run.report.verdict, verdict);
}

#[test]
fn planted_skip_checksum_is_caught_within_1000_seeds() {
    let (seed, verdict) = first_failure("broadcast-skip-checksum", 1000).expect("planted bug not found in 1000 seeds");
    assert!(matches!(&verdict, Verdict::SafetyViolation(m) if m.contains("nobody sent")), "seed {seed}: {verdict}");
}

#[test]
fn trace_sink_renders_the_same_run() {
    let s = find("broadcast").unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(0u64));
    let l2 = lines.clone();
    let traced = s.run(7, Some(Box::new(move |_e| *l2.lock().unwrap() += 1)));
    let plain = s.run(7, None);
    assert_eq!(traced.trace_hash, plain.trace_hash, "rendering must not change the run");
    assert!(*lines.lock().unwrap() > 1000);
}

#[test]
fn catalog_names_are_unique_and_findable() {
    let names: Vec<&str> = catalog().iter().map(|s| s.name()).collect();
    let unique: std::collections::BTreeSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), names.len());
    for n in names {
        assert!(find(n).is_some());
    }
    assert!(find("no-such-scenario").is_none());
}

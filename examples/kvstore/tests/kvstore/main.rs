//! The store's own simulated scenario, through the public simulation API
//! alone (`kaelix_scenarios::harness` and the functions it names): the
//! correct store passes many seeds deterministically; the planted bug is
//! caught, replays identically, shrinks to a small fault schedule that
//! still fails the same check, and is drawn as a page.

use std::collections::BTreeMap;
use std::sync::Arc;

use kaelix_core::NodeId;
use kaelix_core::rng::RngExt;
use kaelix_core::time::Duration;
use kaelix_scenarios::harness::{SimScenario, run_seeds};
use kaelix_scenarios::{picture, run_checked, run_with, run_with_schedule, shrink_seed};
use kaelix_sim::Tolerance;
use kvstore_example::{StoreClient, StoreConfig, run_replica};

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged puts: key → value.
    acked: BTreeMap<String, String>,
    puts: u64,
}

const REPLICAS: u64 = 3;
const SAFETY: Duration = Duration::from_secs(4);

/// Three replicas, three clients. Each client puts fresh keys during the
/// safety phase, then reads back every put it saw acknowledged: each must
/// hold exactly its value (durability of acknowledged puts).
fn scenario(ack_before_sync: bool) -> SimScenario<Seen> {
    let name = if ack_before_sync { "kvstore-ack-before-sync" } else { "kvstore" };
    SimScenario::<Seen>::new(name, "replicated key-value store, 3 replicas, 3 clients")
        .servers(REPLICAS, move |rt, ctx| {
            let mut config = StoreConfig::new(ctx.servers.clone());
            config.ack_before_sync = ack_before_sync;
            run_replica(rt, config)
        })
        // Each client's puts are a list drawn from the seed before the
        // run (so the shrinker can remove operations too).
        .clients_with_workload(
            3,
            |rng, client| {
                (0..rng.random_range(20..40u64)).map(|i| (format!("c{client}-{i}"), format!("v{i}"))).collect()
            },
            |rt, ctx, puts: Arc<Vec<(String, String)>>| async move {
                let mut client = StoreClient::new(rt, NodeId(1));
                let start = client.now();
                let mut mine = Vec::new();
                for (key, value) in puts.iter() {
                    if client.now() - start >= SAFETY {
                        break;
                    }
                    ctx.observed.with(|s| s.puts += 1);
                    if client.put(key, value, 3).await {
                        ctx.observed.with(|s| s.acked.insert(key.clone(), value.clone()));
                        mine.push((key.clone(), value.clone()));
                    }
                }
                // After the faults stop: every acknowledged put must be there.
                while client.now() - start < SAFETY {
                    client.sleep(Duration::from_millis(100)).await;
                }
                for (key, value) in mine {
                    let read = loop {
                        if let Some(read) = client.get(&key, 10).await {
                            break read;
                        }
                    };
                    if read.as_deref() != Some(value.as_str()) {
                        ctx.observed.fail(format!("acknowledged put {key}={value} reads back as {read:?}"));
                    }
                }
                ctx.done();
            },
        )
        .tolerance(Tolerance { max_down: 1, faulty_disks: 0, power_loss: true })
        .safety_phase(SAFETY)
        .liveness_bound(Duration::from_secs(20))
        .workload(("puts", "acknowledged"), |s| (s.puts, s.acked.len() as u64))
        .planted(ack_before_sync)
}

#[test]
fn the_correct_store_passes_every_seed_deterministically() {
    let summary = run_seeds(&scenario(false), 0..60);
    assert_eq!(summary.seeds, 60);
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    assert!(summary.nondeterministic.is_empty(), "{:?}", summary.nondeterministic);
    // The workload did something: puts were acknowledged.
    let report = run_checked(&scenario(false), 0).report;
    assert!(report.workload.1 > 10, "{:?}", report.workload);
}

#[test]
fn the_planted_bug_is_caught_replayed_shrunk_and_drawn() {
    let bad = scenario(true);
    let summary = run_seeds(&bad, 0..200);
    assert!(summary.nondeterministic.is_empty(), "{:?}", summary.nondeterministic);
    let (seed, verdict) = summary.failures.first().cloned().expect("the planted bug is caught within 200 seeds");
    assert!(verdict.to_string().contains("reads back as"), "{verdict}");

    // Replay: the same run, bit for bit.
    let replay = run_checked(&bad, seed);
    assert!(replay.deterministic());
    assert_eq!(replay.report.verdict, verdict);

    // Shrink: a smaller schedule that fails the same check, and replays so.
    let shrunk = shrink_seed(&bad, seed, &mut || false, &mut |_| {}).expect("the seed fails");
    assert!(shrunk.outcome.one_minimal);
    assert!(shrunk.outcome.schedule.len() <= shrunk.drawn.len());
    assert!(shrunk.still_fails(), "{}", shrunk.replay.verdict);
    let (again, _) = run_with_schedule(&bad, seed, Some(&shrunk.outcome.schedule), None);
    assert_eq!(again.verdict.check(), Some(shrunk.check.clone()));

    // The workload shrank too, and the shrunk run replays exactly.
    let workload = shrunk.workload.as_ref().expect("the clients' puts are recorded lists");
    assert!(workload.one_minimal);
    assert!(workload.keep.len() < shrunk.drawn_workload.len(), "no put removed");
    let (exact, _) = run_with(&bad, seed, Some(&shrunk.outcome.schedule), Some(&workload.keep), None);
    assert_eq!(exact.trace_hash, shrunk.replay.trace_hash);
    assert_eq!(exact.verdict.check(), Some(shrunk.check.clone()));

    // Draw: the failure is on the page, with the replicas' and clients' lanes.
    let page = picture::draw_with(&bad, seed, Some(&shrunk.outcome.schedule), Some(&workload.keep), 2_000);
    assert_eq!(page.report.trace_hash, exact.trace_hash);
    assert!(page.html.contains("\"failure\":{\"at\":"));
    for lane in ["server-1", "server-3", "client-0"] {
        assert!(page.html.contains(&format!("\"name\":\"{lane}\"")), "no lane {lane}");
    }
    eprintln!(
        "kvstore-ack-before-sync: seed {seed} fails ({verdict}); shrunk {} -> {} faults in {} runs, {} -> {} puts in {} runs",
        shrunk.drawn.len(),
        shrunk.outcome.schedule.len(),
        shrunk.outcome.runs,
        shrunk.drawn_workload.len(),
        workload.keep.len(),
        workload.runs
    );
}

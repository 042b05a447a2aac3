//! A run's metrics (`Scenario::run_metered`, `kaelix sim run --seed N
//! --metrics`): byte-identical for a seed, different between seeds, the
//! run itself unchanged by reading them, and the broker's figures equal to
//! what the test counts from the clients' side of the run.

use kaelix_scenarios::metrics::RunMetrics;
use kaelix_scenarios::{RunReport, Scenario, Tallies, find};

fn metered(s: &dyn Scenario, seed: u64) -> (RunReport, Tallies, RunMetrics) {
    let (report, tallies, metrics) = s.run_metered(seed, None);
    let metrics = metrics.unwrap_or_else(|| panic!("{} exports metrics", s.name()));
    (report, tallies, metrics)
}

fn tally(tallies: &Tallies, name: &str) -> u64 {
    tallies.iter().find(|(k, _)| *k == name).unwrap_or_else(|| panic!("tally {name:?} in {tallies:?}")).1
}

const NODE1: (&str, &str) = ("node", "1");

#[test]
fn broker_metrics_are_deterministic_and_match_the_clients_count() {
    let broker = find("broker").expect("the broker scenario");
    let mut published = Vec::new();
    let mut renders = Vec::new();
    for seed in 0..3 {
        let (report, tallies, metrics) = metered(broker, seed);
        assert!(report.verdict.passed(), "seed {seed}: {}", report.verdict);
        let text = metrics.render();

        // Same seed: byte-identical metrics, and metering changed nothing
        // in the run (the plain run has the same trace hash).
        let (again, _, again_metrics) = metered(broker, seed);
        assert_eq!(text, again_metrics.render(), "seed {seed}: metrics differ between two runs");
        assert_eq!(report.trace_hash, again.trace_hash);
        assert_eq!(report.trace_hash, broker.run(seed, None).trace_hash, "seed {seed}: metering changed the run");

        // The families serve exports for a broker are all here.
        for family in [
            "kaelix_broker_published_messages_total",
            "kaelix_broker_delivered_messages_total",
            "kaelix_broker_dropped_messages_total",
            "kaelix_broker_dead_lettered_messages_total",
            "kaelix_broker_consumer_group_lag_messages",
            "kaelix_broker_match_cache_lookups_total",
            "kaelix_sim_time_seconds",
        ] {
            assert!(text.contains(&format!("# TYPE {family} ")), "seed {seed}: no {family} in\n{text}");
        }
        for reason in ["oldest", "newest", "shed", "closed", "expired"] {
            assert!(
                metrics.value("kaelix_broker_dropped_messages_total", &[NODE1, ("reason", reason)]).is_some(),
                "seed {seed}: no drops by {reason}"
            );
        }
        // The text is sorted: families by name.
        let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "families not sorted: {names:?}");

        // Independent counts. Publishes: what the publishers had
        // acknowledged (workload.0) plus the dead letters the scenario read
        // back from the `_dlq` topics' records — the broker appends both.
        let dead_read_back = tally(&tallies, "dead letters read back");
        let got = metrics.value("kaelix_broker_published_messages_total", &[NODE1]).expect("published");
        assert_eq!(got, (report.workload.0 + dead_read_back) as f64, "seed {seed}: published\n{text}");
        let dead = metrics.value("kaelix_broker_dead_lettered_messages_total", &[NODE1]).expect("dead letters");
        assert_eq!(dead, dead_read_back as f64, "seed {seed}: dead letters");
        assert_eq!(dead, tally(&tallies, "processor: dead-lettered") as f64, "seed {seed}: processor's dead letters");
        // The run ended with every stream drained and closed by shutdown.
        assert_eq!(metrics.value("kaelix_broker_streams", &[NODE1]), Some(0.0), "seed {seed}");
        // Virtual time: the figure is the run's simulated time, exactly.
        assert_eq!(metrics.value("kaelix_sim_time_seconds", &[]), Some(report.sim_time.as_secs_f64()));

        published.push(got);
        renders.push(text);
    }
    // Another seed: other figures.
    assert!(published.windows(2).any(|w| w[0] != w[1]), "three seeds published the same: {published:?}");
    assert!(renders[0] != renders[1] && renders[1] != renders[2]);
}

#[test]
fn replicated_metrics_hold_every_raft_member_and_broker() {
    let s = find("broker-replicated").expect("the replicated broker scenario");
    let seed = 3;
    let (report, tallies, metrics) = metered(s, seed);
    assert!(report.verdict.passed(), "{}", report.verdict);
    let (again, _, again_metrics) = metered(s, seed);
    assert_eq!(metrics.render(), again_metrics.render(), "metrics differ between two runs of seed {seed}");
    assert_eq!(report.trace_hash, again.trace_hash);
    assert_eq!(report.trace_hash, s.run(seed, None).trace_hash, "metering changed the run");

    let servers = tally(&tallies, "servers");
    let text = metrics.render();
    for node in 1..=servers {
        let n = node.to_string();
        assert!(
            metrics.value("kaelix_broker_published_messages_total", &[("node", &n)]).is_some(),
            "no broker figures of node {node}:\n{text}"
        );
    }
    // The run ends once the cluster is quiet (the scenario's auditor judged
    // that from its own watch of every member): per partition, exactly one
    // leader, every member naming it, at one term and one commit index,
    // applied to it.
    for (topic, partition) in [("orders.eu", "0"), ("orders.eu", "1"), ("audit.log", "0")] {
        let at = |name: &str, node: u64| {
            let n = node.to_string();
            metrics
                .value(name, &[("node", &n), ("topic", topic), ("partition", partition)])
                .unwrap_or_else(|| panic!("no {name} of node {node} {topic}/{partition}:\n{text}"))
        };
        let leaders: Vec<u64> = (1..=servers).filter(|&n| at("kaelix_cluster_partition_role", n) == 2.0).collect();
        assert_eq!(leaders.len(), 1, "{topic}/{partition}: leaders {leaders:?}");
        let commit = at("kaelix_cluster_partition_commit_index", leaders[0]);
        assert!(commit > 0.0);
        for n in 1..=servers {
            assert_eq!(at("kaelix_cluster_partition_leader", n), leaders[0] as f64, "{topic}/{partition} node {n}");
            assert_eq!(at("kaelix_cluster_partition_commit_index", n), commit, "{topic}/{partition} node {n}");
            assert_eq!(at("kaelix_cluster_partition_applied_index", n), commit, "{topic}/{partition} node {n}");
            assert_eq!(
                at("kaelix_cluster_partition_term", n),
                at("kaelix_cluster_partition_term", leaders[0]),
                "{topic}/{partition} node {n}"
            );
        }
    }
    assert_ne!(metrics.render(), metered(s, seed + 1).2.render(), "another seed, same metrics");
}

#[test]
fn a_scenario_without_metrics_says_so() {
    let s = find("broadcast").expect("broadcast");
    let (report, _, metrics) = s.run_metered(0, None);
    assert!(metrics.is_none());
    assert_eq!(report.trace_hash, s.run(0, None).trace_hash);
}

#[test]
fn serve_metrics_hold_the_server_and_its_broker() {
    let s = find("serve").expect("the serve scenario");
    for seed in [0, 1] {
        let (report, _, metrics) = metered(s, seed);
        assert!(report.verdict.passed(), "seed {seed}: {}", report.verdict);
        let text = metrics.render();
        assert_eq!(text, metered(s, seed).2.render(), "seed {seed}: metrics differ between two runs");
        assert_eq!(report.trace_hash, s.run(seed, None).trace_hash, "seed {seed}: metering changed the run");
        for family in [
            "kaelix_server_connections_accepted_total",
            "kaelix_server_received_bytes_total",
            "kaelix_broker_published_messages_total",
        ] {
            assert!(text.contains(&format!("# TYPE {family} counter\n")), "seed {seed}: no {family} in\n{text}");
        }
        // NATS clients spoke to the server that ended the run.
        assert!(metrics.sum("kaelix_server_received_bytes_total", &[NODE1, ("protocol", "nats")]) > 0.0, "{text}");
    }
}

//! A run's metrics (`Scenario::run_metered`, `kaelix sim run --seed N
//! --metrics`): every scenario exports some; byte-identical for a seed,
//! different between seeds, the run itself unchanged by reading them, and
//! the components' figures checked against what the clients or the
//! scenario's oracle recorded of the run.

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

/// Runs `name`'s `seed` metered twice and plain once: it passes, the two
/// metered runs render byte-identical text, and metering changed nothing
/// in the run (the plain run has the same trace hash). The first run.
fn checked(name: &str, seed: u64) -> (RunReport, Tallies, RunMetrics) {
    let s = find(name).unwrap_or_else(|| panic!("scenario {name}"));
    let (report, tallies, metrics) = metered(s, seed);
    assert!(report.verdict.passed(), "{name} seed {seed}: {}", report.verdict);
    let (again, _, again_metrics) = metered(s, seed);
    assert_eq!(metrics.render(), again_metrics.render(), "{name} seed {seed}: metrics differ between two runs");
    assert_eq!(report.trace_hash, again.trace_hash);
    assert_eq!(report.trace_hash, s.run(seed, None).trace_hash, "{name} seed {seed}: metering changed the run");
    assert_eq!(metrics.value("kaelix_sim_time_seconds", &[]), Some(report.sim_time.as_secs_f64()));
    (report, tallies, metrics)
}

#[test]
fn every_scenario_exports_metrics() {
    // Only the cheapest seed of each is run here; the scenarios' own
    // figures are checked by the tests below.
    for s in kaelix_scenarios::catalog() {
        if s.name().starts_with("membership-") && s.name() != "membership-5" {
            continue; // the same code path as membership-5, much slower
        }
        let (_, _, metrics) = s.run_metered(0, None);
        let metrics = metrics.unwrap_or_else(|| panic!("{} exports no metrics", s.name()));
        assert!(metrics.names().len() > 1, "{}: only {:?}", s.name(), metrics.names());
    }
}

#[test]
fn raft_metrics_hold_every_member_and_agree_with_the_oracle() {
    let mut renders = Vec::new();
    for seed in [0, 1] {
        let (report, tallies, metrics) = checked("raft-partitions", seed);
        let text = metrics.render();
        let servers = tally(&tallies, "servers");
        let elected = tally(&tallies, "leaders elected (group, term)");
        let mut led = 0.0;
        for partition in ["0", "1"] {
            let at = |name: &str, node: u64| {
                let n = node.to_string();
                metrics
                    .value(name, &[("node", &n), ("topic", "orders"), ("partition", partition)])
                    .unwrap_or_else(|| panic!("seed {seed}: no {name} of node {node} orders/{partition}:\n{text}"))
            };
            // Every acknowledged produce is a committed entry of its
            // partition's log (noops and configurations come on top).
            let acked = tally(&tallies, &format!("acknowledged produces, partition {partition}"));
            let commit = (1..=servers).map(|n| at("kaelix_cluster_partition_commit_index", n)).fold(0.0, f64::max);
            assert!(commit >= acked as f64, "seed {seed} orders/{partition}: commit {commit} < {acked} acknowledged");
            for n in 1..=servers {
                assert!(
                    at("kaelix_cluster_partition_applied_index", n) <= at("kaelix_cluster_partition_commit_index", n)
                );
                led += at("kaelix_raft_terms_led_total", n);
                if at("kaelix_cluster_partition_role", n) == 2.0 {
                    // A leader campaigned and won in this incarnation.
                    assert!(at("kaelix_raft_terms_led_total", n) >= 1.0, "seed {seed}: node {n} leads");
                    assert!(at("kaelix_raft_campaigns_total", n) >= 1.0, "seed {seed}: node {n} leads");
                    assert_eq!(at("kaelix_cluster_partition_leader", n), n as f64);
                }
                assert!(at("kaelix_raft_sent_messages_total", n) > 0.0, "seed {seed}: node {n} sent nothing");
            }
        }
        // Each term a member led is a (group, term) the oracle saw led;
        // restarts reset a member's count, so at most that many.
        assert!(led >= 1.0 && led <= elected as f64, "seed {seed}: {led} terms led, oracle saw {elected}\n{text}");
        assert!(report.workload.1 > 0, "seed {seed}: nothing acknowledged");
        renders.push(text);
    }
    assert_ne!(renders[0], renders[1], "another seed, same metrics");
}

#[test]
fn membership_metrics_show_every_view_converged() {
    for seed in [0, 1] {
        let (report, _, metrics) = checked("membership-5", seed);
        let text = metrics.render();
        // One member of five is lost for good at the liveness phase; the
        // oracle ended the run once every live node saw every live node
        // alive at its current incarnation and no longer held the lost one
        // live. The live nodes' own tables must say the same; the lost
        // node's table stopped when it crashed, so it is not judged.
        assert_eq!(report.workload, (4, 4), "seed {seed}");
        let mut converged = 0;
        for node in 1..=5u64 {
            let n = node.to_string();
            let members = |state: &str| {
                metrics
                    .value("kaelix_swim_members", &[("node", &n), ("state", state)])
                    .unwrap_or_else(|| panic!("seed {seed}: no {state} members of node {node}:\n{text}"))
            };
            if members("alive") == 4.0 && members("suspect") == 0.0 {
                converged += 1;
            }
            assert!(metrics.value("kaelix_swim_incarnation", &[("node", &n)]).is_some_and(|i| i >= 1.0));
            let sent = metrics.value("kaelix_swim_messages_total", &[("node", &n), ("direction", "sent")]);
            assert!(sent.is_some_and(|s| s > 0.0), "seed {seed} node {node}");
        }
        assert!(converged >= 4, "seed {seed}: {converged} nodes see the 4 live members alive and none suspect\n{text}");
        // A node restarted just before the end may not have probed yet;
        // the cluster as a whole has.
        assert!(metrics.sum("kaelix_swim_probes_total", &[]) > 0.0, "seed {seed}:\n{text}");
    }
}

#[test]
fn broadcast_metrics_hold_every_acknowledged_value() {
    for seed in [0, 1] {
        let (report, _, metrics) = checked("broadcast", seed);
        let text = metrics.render();
        // The run ended with every server holding every value a client saw
        // acknowledged; servers hold nothing no client sent.
        let (sent, acked) = report.workload;
        for node in 1..=5u64 {
            let n = node.to_string();
            let held = metrics.value("kaelix_broadcast_values", &[("node", &n)]).expect("held values");
            assert!(held >= acked as f64 && held <= sent as f64, "seed {seed} node {node}: {held} of {sent}/{acked}");
            assert!(metrics.value("kaelix_broadcast_acknowledged_values_total", &[("node", &n)]).is_some(), "{text}");
        }
    }
}

#[test]
fn broker_scenarios_export_the_broker_figures() {
    for seed in [0, 1] {
        // Backpressure: every publish the publishers saw succeed, appended.
        let (report, _, metrics) = checked("broker-backpressure", seed);
        let published = metrics.value("kaelix_broker_published_messages_total", &[NODE1]);
        assert_eq!(published, Some(report.workload.0 as f64), "seed {seed}: backpressure published");
        let delivered = metrics.value("kaelix_broker_delivered_messages_total", &[NODE1, ("to", "stream")]);
        assert!(delivered.is_some_and(|d| d >= report.workload.1 as f64), "seed {seed}: delivered {delivered:?}");

        // Plugins: what the plugins dead-lettered, as the publishers saw.
        let (_, tallies, metrics) = checked("broker-plugins", seed);
        let dead = metrics.value("kaelix_broker_dead_lettered_messages_total", &[NODE1]);
        assert_eq!(dead, Some(tally(&tallies, "dead-lettered") as f64), "seed {seed}: plugins dead letters");
        let published = metrics.value("kaelix_broker_published_messages_total", &[NODE1]).expect("published");
        let stored = tally(&tallies, "stored") + tally(&tallies, "dead-lettered");
        assert!(published >= stored as f64, "seed {seed}: plugins published {published} < {stored}");

        // Durable: the last incarnation's broker, counting from its boot.
        let (report, _, metrics) = checked("broker-durable", seed);
        let published = metrics.value("kaelix_broker_published_messages_total", &[NODE1]).expect("published");
        assert!(published <= report.workload.0 as f64, "seed {seed}: durable published {published}");
        assert!(metrics.value("kaelix_broker_topics", &[NODE1]).is_some_and(|t| t > 0.0), "seed {seed}");
    }
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

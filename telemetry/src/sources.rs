//! Scrape-time exporters: the counters the executor, the server and the
//! broker keep for themselves, copied into metrics when `/metrics` is read
//! (see [`crate::collector`] for why nothing is added to their hot paths).
//!
//! Naming follows Prometheus' conventions: `kaelix_<component>_<what>`,
//! base units (`_seconds`, `_bytes`), `_total` on counters, a label per
//! dimension (`worker`, `protocol`, `reason`, …) rather than a name per
//! value. A component's own counter that only grows is exported as a
//! counter set to its absolute value.
//!
//! The simulator exports the broker's figures of a run under these same
//! names and labels (`scenarios/src/metrics.rs`, `kaelix sim run --seed N
//! --metrics`): a name changed here is changed there too.

use std::sync::Arc;

use kaelix_broker::Broker;
use kaelix_core::runtime::Runtime;
use kaelix_runtime_real::ExecutorHandle;
use kaelix_runtime_real::executor::metrics::HealthStatus;
use kaelix_runtime_real::storage::StorageStats;
use kaelix_server::ServerObserver;
use metrics::{Unit, counter, gauge};

use crate::collector::{Kind, MetricsCollector};
use crate::endpoint::{HealthReport, health_name};

const HEALTH_STATES: [HealthStatus; 4] =
    [HealthStatus::Healthy, HealthStatus::Degraded, HealthStatus::Unhealthy, HealthStatus::Unknown];

fn describe_all(collector: &MetricsCollector, list: &[(Kind, &'static str, Option<Unit>, &'static str)]) {
    for &(kind, name, unit, help) in list {
        collector.describe(kind, name, unit, help);
    }
}

/// Exports the executor's per-worker counters, wake-to-poll latency and
/// health (labels `worker`, `numa_node`).
pub fn add_executor(collector: &MetricsCollector, executor: ExecutorHandle) {
    use Kind::*;
    describe_all(
        collector,
        &[
            (Gauge, "kaelix_executor_workers", None, "Worker threads of the executor."),
            (Gauge, "kaelix_executor_live_tasks", None, "Tasks spawned and not yet finished."),
            (
                Counter,
                "kaelix_executor_spawns_refused_total",
                None,
                "Spawns refused because the live-task bound (runtime.task_queue_depth) was reached.",
            ),
            (Counter, "kaelix_executor_polls_total", None, "Task polls, per worker."),
            (
                Counter,
                "kaelix_executor_steals_total",
                None,
                "Tasks taken from other workers or other pools' injectors.",
            ),
            (Counter, "kaelix_executor_parks_total", None, "Times a worker parked for lack of work."),
            (
                Counter,
                "kaelix_executor_spin_hits_total",
                None,
                "Times work showed up while an idle worker spun before parking.",
            ),
            (
                Counter,
                "kaelix_executor_tasks_completed_total",
                None,
                "Tasks that finished on a worker (panics included).",
            ),
            (Counter, "kaelix_executor_tasks_panicked_total", None, "Tasks that panicked on a worker."),
            (Gauge, "kaelix_executor_queue_depth", None, "Tasks in a worker's local queues at its last poll."),
            (
                Gauge,
                "kaelix_executor_wake_to_poll_p50_seconds",
                Some(Unit::Seconds),
                "Median time from a task's wake to its poll since start (upper bound of a 25 % bucket).",
            ),
            (
                Gauge,
                "kaelix_executor_wake_to_poll_p99_seconds",
                Some(Unit::Seconds),
                "99th percentile time from a task's wake to its poll since start (upper bound of a 25 % bucket).",
            ),
            (
                Gauge,
                "kaelix_executor_worker_health",
                None,
                "1 for the worker's current health status, 0 for the others.",
            ),
            (
                Gauge,
                "kaelix_executor_health",
                None,
                "1 for the executor's health status (its worst worker's), 0 for the others.",
            ),
        ],
    );
    collector.add_source("executor", move || {
        let snapshots = executor.worker_metrics();
        let health = executor.worker_health();
        let layout = executor.layout();
        gauge!("kaelix_executor_workers").set(snapshots.len() as f64);
        gauge!("kaelix_executor_live_tasks").set(executor.live_tasks() as f64);
        counter!("kaelix_executor_spawns_refused_total").absolute(executor.spawns_refused());
        for (i, s) in snapshots.iter().enumerate() {
            let worker = i.to_string();
            let node = layout.get(i).map_or_else(String::new, |(node, _)| node.to_string());
            let labels = [("worker", worker.clone()), ("numa_node", node)];
            counter!("kaelix_executor_polls_total", &labels).absolute(s.polls);
            counter!("kaelix_executor_steals_total", &labels).absolute(s.steals);
            counter!("kaelix_executor_parks_total", &labels).absolute(s.parks);
            counter!("kaelix_executor_spin_hits_total", &labels).absolute(s.spin_hits);
            counter!("kaelix_executor_tasks_completed_total", &labels).absolute(s.completed);
            counter!("kaelix_executor_tasks_panicked_total", &labels).absolute(s.panicked);
            gauge!("kaelix_executor_queue_depth", &labels).set(s.queue_depth as f64);
            if let Some(p50) = s.wake_to_poll_p50 {
                gauge!("kaelix_executor_wake_to_poll_p50_seconds", &labels).set(p50.as_secs_f64());
            }
            if let Some(p99) = s.wake_to_poll_p99 {
                gauge!("kaelix_executor_wake_to_poll_p99_seconds", &labels).set(p99.as_secs_f64());
            }
            let current = health.get(i).copied().unwrap_or(HealthStatus::Unknown);
            for state in HEALTH_STATES {
                let value = if state == current { 1.0 } else { 0.0 };
                gauge!("kaelix_executor_worker_health", "worker" => worker.clone(), "status" => health_name(state))
                    .set(value);
            }
        }
        let overall = executor.health();
        for state in HEALTH_STATES {
            gauge!("kaelix_executor_health", "status" => health_name(state)).set(if state == overall {
                1.0
            } else {
                0.0
            });
        }
    });
}

/// What `/healthz` says about `executor`: its overall health, one line per worker.
pub fn executor_health(executor: &ExecutorHandle) -> HealthReport {
    let per_worker = executor.worker_health();
    let layout = executor.layout();
    let detail = per_worker
        .iter()
        .enumerate()
        .map(|(i, h)| match layout.get(i) {
            Some((node, Some(cpu))) => format!("worker {i} (numa node {node}, cpu {cpu}): {}", health_name(*h)),
            Some((node, None)) => format!("worker {i} (numa node {node}): {}", health_name(*h)),
            None => format!("worker {i}: {}", health_name(*h)),
        })
        .collect();
    HealthReport { status: executor.health(), detail }
}

/// Exports the server's connection and traffic counters and everything of
/// its broker (see [`add_broker`]).
pub fn add_server<R: Runtime + Send + Sync>(collector: &MetricsCollector, server: ServerObserver<R>)
where
    ServerObserver<R>: Send + Sync + 'static,
{
    use Kind::*;
    describe_all(
        collector,
        &[
            (Gauge, "kaelix_server_connections", None, "Client connections open now (NATS and native)."),
            (Counter, "kaelix_server_connections_accepted_total", None, "Client connections accepted."),
            (
                Counter,
                "kaelix_server_connections_refused_total",
                None,
                "Connections refused at max_connections or while draining.",
            ),
            (
                Counter,
                "kaelix_server_received_bytes_total",
                Some(Unit::Bytes),
                "Bytes read from clients, per protocol.",
            ),
            (Counter, "kaelix_server_sent_bytes_total", Some(Unit::Bytes), "Bytes written to clients, per protocol."),
            (Counter, "kaelix_server_slow_consumer_closes_total", None, "Connections closed as slow consumers."),
            (
                Counter,
                "kaelix_server_slow_consumer_dropped_messages_total",
                None,
                "Messages dropped for slow consumers (policy drop).",
            ),
            (Counter, "kaelix_server_protocol_error_closes_total", None, "Connections closed for protocol errors."),
            (Counter, "kaelix_server_stale_closes_total", None, "Connections closed for unanswered PINGs."),
            (Gauge, "kaelix_server_group_members", None, "Consumer-group members native clients hold."),
        ],
    );
    add_broker_descriptions(collector);
    collector.add_source("server", move || {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = server.stats();
        gauge!("kaelix_server_connections").set(server.connection_count() as f64);
        gauge!("kaelix_server_group_members").set(server.group_member_count() as f64);
        counter!("kaelix_server_connections_accepted_total").absolute(stats.accepted.load(Relaxed));
        counter!("kaelix_server_connections_refused_total").absolute(stats.refused.load(Relaxed));
        for (protocol, traffic) in [("nats", &stats.nats), ("native", &stats.native)] {
            counter!("kaelix_server_received_bytes_total", "protocol" => protocol)
                .absolute(traffic.bytes_in.load(Relaxed));
            counter!("kaelix_server_sent_bytes_total", "protocol" => protocol)
                .absolute(traffic.bytes_out.load(Relaxed));
        }
        counter!("kaelix_server_slow_consumer_closes_total").absolute(stats.slow_consumer_closes.load(Relaxed));
        counter!("kaelix_server_slow_consumer_dropped_messages_total")
            .absolute(stats.slow_consumer_drops.load(Relaxed));
        counter!("kaelix_server_protocol_error_closes_total").absolute(stats.protocol_errors.load(Relaxed));
        counter!("kaelix_server_stale_closes_total").absolute(stats.stale_closes.load(Relaxed));
        record_broker(server.broker());
    });
}

/// Exports a broker that no server owns (embedded use).
pub fn add_broker<R: Runtime>(collector: &MetricsCollector, broker: Broker<R>)
where
    Broker<R>: Send + Sync + 'static,
{
    add_broker_descriptions(collector);
    collector.add_source("broker", move || record_broker(&broker));
}

fn add_broker_descriptions(collector: &MetricsCollector) {
    use Kind::*;
    describe_all(
        collector,
        &[
            (Gauge, "kaelix_broker_topics", None, "Topics."),
            (Gauge, "kaelix_broker_partitions", None, "Partitions over all topics."),
            (
                Counter,
                "kaelix_broker_published_messages_total",
                None,
                "Messages appended to topics (dead letters included).",
            ),
            (
                Counter,
                "kaelix_broker_relayed_messages_total",
                None,
                "Messages relayed to live streams without a topic.",
            ),
            (Counter, "kaelix_broker_blocked_publishes_total", None, "Publishes that waited for a blocking stream."),
            (
                Counter,
                "kaelix_broker_delivered_messages_total",
                None,
                "Messages handed to consumers (to: stream or group).",
            ),
            (
                Counter,
                "kaelix_broker_dropped_messages_total",
                None,
                "Messages dropped by a stream, by reason: oldest (drop-oldest or shedding at full), newest (grow at its cap, or block), shed (low priority under pressure), closed, expired (removed by retention unread).",
            ),
            (Counter, "kaelix_broker_dead_lettered_messages_total", None, "Messages sent to dead-letter topics."),
            (Gauge, "kaelix_broker_streams", None, "Open streams (subscriptions inside the broker)."),
            (
                Gauge,
                "kaelix_broker_sink_subscriptions",
                None,
                "Subscriptions on sinks (each NATS connection's subscriptions: no stream, no buffer).",
            ),
            (Gauge, "kaelix_broker_stream_buffered_messages", None, "Messages buffered in open streams."),
            (Counter, "kaelix_broker_idle_closed_streams_total", None, "Streams closed for idleness."),
            (Gauge, "kaelix_broker_consumer_groups", None, "Consumer groups."),
            (
                Gauge,
                "kaelix_broker_consumer_group_lag_messages",
                None,
                "Messages of a partition not yet committed by a group.",
            ),
            (Counter, "kaelix_broker_retention_removed_records_total", None, "Records removed by retention."),
            (
                Counter,
                "kaelix_broker_match_cache_lookups_total",
                None,
                "Subscription match-cache lookups, by result (hit, miss).",
            ),
            (Counter, "kaelix_broker_match_cache_evictions_total", None, "Match-cache entries evicted to make room."),
            (Gauge, "kaelix_broker_match_cache_hit_ratio", None, "Hits over lookups of the match cache since start."),
        ],
    );
}

fn record_broker<R: Runtime>(broker: &Broker<R>) {
    let stats = broker.stats();
    gauge!("kaelix_broker_topics").set(stats.topics as f64);
    gauge!("kaelix_broker_partitions").set(stats.partitions as f64);
    counter!("kaelix_broker_published_messages_total").absolute(stats.published);
    counter!("kaelix_broker_relayed_messages_total").absolute(stats.relayed);
    counter!("kaelix_broker_blocked_publishes_total").absolute(stats.blocked_publishes);
    counter!("kaelix_broker_delivered_messages_total", "to" => "stream").absolute(stats.delivered);
    counter!("kaelix_broker_delivered_messages_total", "to" => "group").absolute(stats.group_delivered);
    let d = stats.dropped;
    for (reason, n) in
        [("oldest", d.oldest), ("newest", d.newest), ("shed", d.shed), ("closed", d.closed), ("expired", d.expired)]
    {
        counter!("kaelix_broker_dropped_messages_total", "reason" => reason).absolute(n);
    }
    counter!("kaelix_broker_dead_lettered_messages_total").absolute(stats.dead_lettered);
    gauge!("kaelix_broker_streams").set(stats.streams as f64);
    gauge!("kaelix_broker_sink_subscriptions").set(stats.sink_subscriptions as f64);
    let buffered: usize = broker.active_streams().iter().map(|s| s.buffered).sum();
    gauge!("kaelix_broker_stream_buffered_messages").set(buffered as f64);
    counter!("kaelix_broker_idle_closed_streams_total").absolute(stats.idle_closed);
    gauge!("kaelix_broker_consumer_groups").set(stats.groups as f64);
    for lag in broker.group_lags() {
        gauge!(
            "kaelix_broker_consumer_group_lag_messages",
            "group" => lag.group.to_string(),
            "topic" => lag.topic.as_str().to_owned(),
            "partition" => lag.partition.to_string()
        )
        .set(lag.lag as f64);
    }
    counter!("kaelix_broker_retention_removed_records_total").absolute(stats.retention_removed);
    let cache = broker.match_cache_stats();
    counter!("kaelix_broker_match_cache_lookups_total", "result" => "hit").absolute(cache.hits);
    counter!("kaelix_broker_match_cache_lookups_total", "result" => "miss").absolute(cache.misses);
    counter!("kaelix_broker_match_cache_evictions_total").absolute(cache.evictions);
    let lookups = cache.hits + cache.misses;
    if lookups > 0 {
        gauge!("kaelix_broker_match_cache_hit_ratio").set(cache.hits as f64 / lookups as f64);
    }
}

/// Exports the IO counters of the node's data directory (bytes, writes,
/// syncs and their latency).
pub fn add_storage(collector: &MetricsCollector, stats: Arc<StorageStats>) {
    use Kind::*;
    describe_all(
        collector,
        &[
            (
                Counter,
                "kaelix_storage_read_bytes_total",
                Some(Unit::Bytes),
                "Bytes read from the data directory's files.",
            ),
            (
                Counter,
                "kaelix_storage_written_bytes_total",
                Some(Unit::Bytes),
                "Bytes written to the data directory's files.",
            ),
            (Counter, "kaelix_storage_writes_total", None, "Writes and appends to the data directory's files."),
            (Counter, "kaelix_storage_syncs_total", None, "Syncs (fdatasync, or fsync after a truncate) by result."),
            (
                Gauge,
                "kaelix_storage_sync_p50_seconds",
                Some(Unit::Seconds),
                "Median sync duration since start (upper bound of a 25 % bucket).",
            ),
            (
                Gauge,
                "kaelix_storage_sync_p99_seconds",
                Some(Unit::Seconds),
                "99th percentile sync duration since start (upper bound of a 25 % bucket).",
            ),
        ],
    );
    collector.add_source("storage", move || {
        use std::sync::atomic::Ordering::Relaxed;
        counter!("kaelix_storage_read_bytes_total").absolute(stats.bytes_read.load(Relaxed));
        counter!("kaelix_storage_written_bytes_total").absolute(stats.bytes_written.load(Relaxed));
        counter!("kaelix_storage_writes_total").absolute(stats.writes.load(Relaxed));
        counter!("kaelix_storage_syncs_total", "result" => "ok").absolute(stats.syncs.load(Relaxed));
        counter!("kaelix_storage_syncs_total", "result" => "failed").absolute(stats.sync_failures.load(Relaxed));
        if let Some(p50) = stats.sync_latency.quantile(0.5) {
            gauge!("kaelix_storage_sync_p50_seconds").set(p50.as_secs_f64());
        }
        if let Some(p99) = stats.sync_latency.quantile(0.99) {
            gauge!("kaelix_storage_sync_p99_seconds").set(p99.as_secs_f64());
        }
    });
}

/// Counts a configuration reload (the configuration work calls this once
/// hot reload exists): `ok` false for a file that was refused.
pub fn config_reloaded(ok: bool) {
    counter!("kaelix_config_reloads_total", "result" => if ok { "ok" } else { "refused" }).increment(1);
}

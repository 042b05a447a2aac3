//! The pure side of `kaelix top`: a scrape parsed into a [`Snapshot`], two
//! snapshots turned into rates, and the screen as text lines
//! ([`screen`]). No clock, socket or terminal here: the caller hands in the
//! page and the seconds between two scrapes, so every figure is testable.
//!
//! # Model
//!
//! * A counter's rate is its increase over the scrape interval divided by
//!   the interval, summed over the series picked (labels). A series whose
//!   value went down was reset (the server restarted): its increase is its
//!   whole current value, as Prometheus' `rate()` counts it, never a
//!   negative rate; the screen says a reset was seen. A series absent from
//!   the previous scrape has no rate yet.
//! * Gauges are shown as scraped.
//! * Latencies: the exporter's own quantile gauges (`<name>_p50_seconds`,
//!   `<name>_p99_seconds`), summaries' `quantile` series, and histograms'
//!   quantiles estimated from their buckets (linear within a bucket, like
//!   PromQL's `histogram_quantile`) over the interval's observations when
//!   there are any, else over all since start.
//! * Partitions and their leaders come from the `kaelix_cluster_partition_*`
//!   gauges a cluster member exports; a server that exports none gets a line
//!   saying so, nothing invented.
//!
//! Only metrics present in the scrape are shown; names the screen does not
//! know are ignored.

use std::collections::BTreeMap;

use prometheus_parse::{Scrape, Value};

/// Labels of one series, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// One series' value.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// A counter: only grows until the process restarts.
    Counter(f64),
    /// A gauge or an untyped sample.
    Gauge(f64),
    /// Cumulative buckets: (upper bound, observations at or below it).
    Histogram(Vec<(f64, f64)>),
    /// (quantile, value).
    Summary(Vec<(f64, f64)>),
}

/// One scrape: metric name → its series.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    metrics: BTreeMap<String, Vec<(Labels, Data)>>,
}

impl Snapshot {
    /// Parses a Prometheus text-format page.
    pub fn parse(page: &str) -> Result<Snapshot, String> {
        let scrape = Scrape::parse(page.lines().map(|l| Ok(l.to_owned()))).map_err(|e| e.to_string())?;
        let mut metrics: BTreeMap<String, Vec<(Labels, Data)>> = BTreeMap::new();
        for sample in scrape.samples {
            let labels: Labels = sample.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let data = match sample.value {
                Value::Counter(v) => Data::Counter(v),
                Value::Gauge(v) | Value::Untyped(v) => Data::Gauge(v),
                Value::Histogram(buckets) => {
                    let mut b: Vec<(f64, f64)> = buckets.iter().map(|h| (h.less_than, h.count)).collect();
                    b.sort_by(|x, y| x.0.total_cmp(&y.0));
                    Data::Histogram(b)
                }
                Value::Summary(qs) => {
                    let mut q: Vec<(f64, f64)> = qs.iter().map(|s| (s.quantile, s.count)).collect();
                    q.sort_by(|x, y| x.0.total_cmp(&y.0));
                    Data::Summary(q)
                }
            };
            metrics.entry(sample.metric).or_default().push((labels, data));
        }
        for series in metrics.values_mut() {
            series.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(Snapshot { metrics })
    }

    /// The series of `name` (empty if absent).
    pub fn series(&self, name: &str) -> &[(Labels, Data)] {
        self.metrics.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether the scrape has `name`.
    pub fn has(&self, name: &str) -> bool {
        self.metrics.contains_key(name)
    }

    /// The sum of the counter or gauge series of `name` whose labels match
    /// every `(label, value)` of `filter`; None if none does.
    pub fn value(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (labels, data) in self.series(name) {
            if !matches(labels, filter) {
                continue;
            }
            if let Data::Counter(v) | Data::Gauge(v) = data {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// Distinct values of `label` over the series of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self.series(name).iter().filter_map(|(l, _)| l.get(label).cloned()).collect();
        values.sort();
        values.dedup();
        values
    }
}

fn matches(labels: &Labels, filter: &[(&str, &str)]) -> bool {
    filter.iter().all(|(k, v)| labels.get(*k).is_some_and(|have| have == v))
}

/// A counter's movement between two scrapes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Increase per second.
    pub per_second: f64,
    /// Whether some series went down (a restart) and was counted from zero.
    pub reset: bool,
}

/// The per-second rate of the counter series of `name` matching `filter`
/// between `prev` and `cur`, `seconds` apart. None if `cur` lacks them, if
/// none of them was in `prev` (no rate yet) or if `seconds` is not positive.
pub fn rate(prev: &Snapshot, cur: &Snapshot, name: &str, filter: &[(&str, &str)], seconds: f64) -> Option<Rate> {
    if seconds <= 0.0 {
        return None;
    }
    let before: BTreeMap<&Labels, f64> = prev
        .series(name)
        .iter()
        .filter_map(|(l, d)| match d {
            Data::Counter(v) | Data::Gauge(v) => Some((l, *v)),
            _ => None,
        })
        .collect();
    let (mut increase, mut reset, mut any) = (0.0, false, false);
    for (labels, data) in cur.series(name) {
        let (Data::Counter(now) | Data::Gauge(now)) = data else { continue };
        if !matches(labels, filter) {
            continue;
        }
        let Some(&then) = before.get(labels) else { continue };
        any = true;
        if *now < then {
            // Counted again from zero since a restart.
            reset = true;
            increase += now;
        } else {
            increase += now - then;
        }
    }
    any.then_some(Rate { per_second: increase / seconds, reset })
}

/// The `q` quantile of cumulative `buckets` (upper bound, count), linear
/// within the bucket it falls in (the first bucket starts at 0; a quantile
/// in the `+Inf` bucket is the highest finite bound). None without
/// observations.
pub fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let share = if inside > 0.0 { (rank - below) / inside } else { 1.0 };
            return Some(lower + (bound - lower) * share);
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

/// `cur` minus `prev`, bucket by bucket, when both have the same bounds
/// and no count went down (else None: use `cur` alone).
fn bucket_delta(prev: &[(f64, f64)], cur: &[(f64, f64)]) -> Option<Vec<(f64, f64)>> {
    if prev.len() != cur.len() {
        return None;
    }
    prev.iter().zip(cur).map(|(&(b0, c0), &(b1, c1))| (b0 == b1 && c1 >= c0).then_some((b1, c1 - c0))).collect()
}

/// Counters shown with their rate: (metric, label to split by, caption).
const RATES: &[(&str, Option<&str>, &str)] = &[
    ("kaelix_broker_published_messages_total", None, "published messages"),
    ("kaelix_broker_relayed_messages_total", None, "relayed messages"),
    ("kaelix_broker_delivered_messages_total", Some("to"), "delivered messages"),
    ("kaelix_broker_dropped_messages_total", Some("reason"), "dropped messages"),
    ("kaelix_broker_dead_lettered_messages_total", None, "dead-lettered messages"),
    ("kaelix_broker_blocked_publishes_total", None, "blocked publishes"),
    ("kaelix_server_received_bytes_total", Some("protocol"), "bytes in"),
    ("kaelix_server_sent_bytes_total", Some("protocol"), "bytes out"),
    ("kaelix_server_connections_accepted_total", None, "connections opened"),
    ("kaelix_server_connections_refused_total", None, "connections refused"),
    ("kaelix_server_slow_consumer_closes_total", None, "slow-consumer closes"),
    ("kaelix_server_slow_consumer_dropped_messages_total", None, "slow-consumer drops"),
    ("kaelix_server_protocol_error_closes_total", None, "protocol-error closes"),
    ("kaelix_storage_written_bytes_total", None, "storage bytes written"),
    ("kaelix_storage_syncs_total", Some("result"), "storage syncs"),
    ("kaelix_executor_polls_total", None, "executor polls"),
    ("kaelix_executor_steals_total", None, "executor steals"),
];

/// Counters shown even at zero.
const ALWAYS: &[&str] = &[
    "kaelix_broker_published_messages_total",
    "kaelix_broker_delivered_messages_total",
    "kaelix_broker_dropped_messages_total",
];

/// Gauges shown as they are: (metric, caption).
const GAUGES: &[(&str, &str)] = &[
    ("kaelix_server_connections", "connections open"),
    ("kaelix_broker_topics", "topics"),
    ("kaelix_broker_partitions", "partitions"),
    ("kaelix_broker_streams", "streams"),
    ("kaelix_broker_stream_buffered_messages", "buffered in streams"),
    ("kaelix_broker_consumer_groups", "consumer groups"),
    ("kaelix_server_group_members", "group members"),
    ("kaelix_executor_workers", "executor workers"),
    ("kaelix_executor_live_tasks", "live tasks"),
    ("kaelix_executor_queue_depth", "run-queue depth"),
    ("kaelix_process_heap_live_bytes", "heap live bytes"),
    ("kaelix_broker_match_cache_hit_ratio", "match-cache hit ratio"),
];

/// Pretty names of quantile-gauge families (`<base>_p50_seconds`).
const LATENCY_NAMES: &[(&str, &str)] = &[
    ("kaelix_storage_sync", "fsync (storage sync)"),
    ("kaelix_executor_wake_to_poll", "wake to poll"),
    ("kaelix_telemetry_render", "/metrics render"),
];

/// Consumer-group lags shown, largest first.
const MAX_LAG_ROWS: usize = 5;
/// Partitions shown.
const MAX_PARTITION_ROWS: usize = 12;

fn number(v: f64) -> String {
    // Whole numbers and large ones without decimals.
    if (v.fract() == 0.0 && v.abs() < 1e15) || v.abs() >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

fn duration(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.1} µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}

fn rate_cell(r: Option<Rate>) -> String {
    match r {
        Some(r) => format!("{:.1}{}", r.per_second, if r.reset { "*" } else { "" }),
        None => "-".to_owned(),
    }
}

/// The screen for `cur`, with rates against `prev` (the scrape before it
/// and the seconds between them) when there is one.
pub fn screen(cur: &Snapshot, prev: Option<(&Snapshot, f64)>) -> Vec<String> {
    let mut out = Vec::new();
    let mut any_reset = false;

    out.push(format!("{:<36} {:>14} {:>16}", "RATES", "per second", "total"));
    let (mut shown, mut zero) = (0, 0);
    for &(name, split, caption) in RATES {
        if !cur.has(name) {
            continue;
        }
        let mut rows: Vec<(String, Vec<(&str, &str)>)> = vec![(caption.to_owned(), vec![])];
        let values = split.map(|l| cur.label_values(name, l)).unwrap_or_default();
        let mut labelled: Vec<(String, String)> = Vec::new();
        if let Some(label) = split {
            for v in &values {
                labelled.push((label.to_owned(), v.clone()));
            }
        }
        // One row per label value that moved since start, under the sum,
        // when more than one did (else the sum's row says it all).
        let moved: Vec<Vec<(&str, &str)>> = labelled
            .iter()
            .map(|(label, v)| vec![(label.as_str(), v.as_str())])
            .filter(|filter| cur.value(name, filter).is_some_and(|t| t > 0.0))
            .collect();
        if moved.len() > 1 {
            for filter in moved {
                rows.push((format!("  {caption} {}={}", filter[0].0, filter[0].1), filter));
            }
        }
        for (caption, filter) in rows {
            let Some(total) = cur.value(name, &filter) else { continue };
            // A screen fits a terminal: counters that never moved are left
            // out, except the headline ones.
            if total == 0.0 && !ALWAYS.contains(&name) {
                zero += 1;
                continue;
            }
            let r = prev.and_then(|(p, s)| rate(p, cur, name, &filter, s));
            any_reset |= r.is_some_and(|r| r.reset);
            out.push(format!("  {caption:<34} {:>14} {:>16}", rate_cell(r), number(total)));
            shown += 1;
        }
    }
    if shown + zero == 0 {
        out.push("  (the server exports none of the counters kaelix top knows)".to_owned());
    }
    if zero > 0 {
        out.push(format!("  ({zero} more counters still at zero)"));
    }
    if prev.is_none() {
        out.push("  (rates from the second scrape on)".to_owned());
    }
    if any_reset {
        out.push("  * a counter went down: the server restarted; counted from zero".to_owned());
    }

    out.push(String::new());
    out.push("NOW".to_owned());
    // Two cells a line: 80 columns hold them.
    let mut cells: Vec<String> = Vec::new();
    for &(name, caption) in GAUGES {
        if let Some(v) = cur.value(name, &[]) {
            cells.push(format!("{caption:<27}{:>10}", number(v)));
        }
    }
    if let Some(status) = cur
        .series("kaelix_executor_health")
        .iter()
        .find(|(_, d)| *d == Data::Gauge(1.0))
        .and_then(|(l, _)| l.get("status"))
    {
        cells.push(format!("{:<27}{status:>10}", "executor health"));
    }
    let slow: Vec<String> =
        ["kaelix_server_slow_consumer_closes_total", "kaelix_server_slow_consumer_dropped_messages_total"]
            .iter()
            .filter_map(|n| cur.value(n, &[]))
            .map(number)
            .collect();
    if slow.len() == 2 {
        cells.push(format!("{:<27}{:>10}", "slow-consumer closes/drops", format!("{}/{}", slow[0], slow[1])));
    }
    for pair in cells.chunks(2) {
        out.push(format!("  {}", pair.join("  ")));
    }

    out.push(String::new());
    out.extend(latencies(cur, prev.map(|(p, _)| p)));
    out.push(String::new());
    let lags = lags(cur);
    if !lags.is_empty() {
        out.extend(lags);
        out.push(String::new());
    }
    out.extend(partitions(cur));
    out
}

fn latencies(cur: &Snapshot, prev: Option<&Snapshot>) -> Vec<String> {
    let mut rows = Vec::new();
    for (name, series) in &cur.metrics {
        // The exporter's quantile gauges, one family per base name.
        if let Some(base) = name.strip_suffix("_p50_seconds") {
            let p99 = cur.series(&format!("{base}_p99_seconds"));
            // Per-worker families are one row: the worst worker's.
            let mut workers: Option<(usize, f64, Option<f64>)> = None;
            for (labels, data) in series {
                let Data::Gauge(p50) = data else { continue };
                let p99 = p99.iter().find(|(l, _)| l == labels).and_then(|(_, d)| match d {
                    Data::Gauge(v) => Some(*v),
                    _ => None,
                });
                if labels.contains_key("worker") {
                    let w = workers.get_or_insert((0, 0.0, None));
                    w.0 += 1;
                    w.1 = w.1.max(*p50);
                    w.2 = match (w.2, p99) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                } else {
                    rows.push((caption(base, labels), Some(*p50), p99, "since start"));
                }
            }
            if let Some((n, p50, p99)) = workers {
                let caption = format!("{} (worst of {n} workers)", caption(base, &Labels::new()));
                rows.push((caption, Some(p50), p99, "since start"));
            }
        }
        for (labels, data) in series {
            match data {
                Data::Summary(qs) if name.ends_with("_seconds") => {
                    let q = |want: f64| qs.iter().find(|(q, _)| (q - want).abs() < 1e-9).map(|(_, v)| *v);
                    rows.push((caption(name.trim_end_matches("_seconds"), labels), q(0.5), q(0.99), "summary"));
                }
                Data::Histogram(buckets) if name.ends_with("_seconds") => {
                    let before = prev.and_then(|p| {
                        p.series(name).iter().find(|(l, _)| l == labels).and_then(|(_, d)| match d {
                            Data::Histogram(b) => Some(b.clone()),
                            _ => None,
                        })
                    });
                    let delta =
                        before.and_then(|b| bucket_delta(&b, buckets)).filter(|d| d.last().is_some_and(|l| l.1 > 0.0));
                    let (b, over) = match &delta {
                        Some(d) => (d.as_slice(), "last interval"),
                        None => (buckets.as_slice(), "since start"),
                    };
                    rows.push((
                        caption(name.trim_end_matches("_seconds"), labels),
                        histogram_quantile(b, 0.5),
                        histogram_quantile(b, 0.99),
                        over,
                    ));
                }
                _ => {}
            }
        }
    }
    let mut out = vec![format!("{:<36} {:>14} {:>16}  {}", "LATENCY", "p50", "p99", "over")];
    if rows.is_empty() {
        out.push("  (the server exports no latency quantiles or histograms)".to_owned());
    }
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), duration);
    for (caption, p50, p99, over) in rows {
        out.push(format!("  {caption:<34} {:>14} {:>16}  {over}", cell(p50), cell(p99)));
    }
    out
}

fn caption(base: &str, labels: &Labels) -> String {
    let name = LATENCY_NAMES.iter().find(|(n, _)| *n == base).map_or(base, |&(_, c)| c);
    let labels: Vec<String> =
        labels.iter().filter(|(k, _)| k.as_str() != "numa_node").map(|(k, v)| format!("{k}={v}")).collect();
    if labels.is_empty() { name.to_owned() } else { format!("{name} {}", labels.join(" ")) }
}

fn lags(cur: &Snapshot) -> Vec<String> {
    let name = "kaelix_broker_consumer_group_lag_messages";
    if !cur.has(name) {
        return Vec::new();
    }
    let mut lags: Vec<(f64, String)> = cur
        .series(name)
        .iter()
        .filter_map(|(l, d)| match d {
            Data::Gauge(v) => Some((
                *v,
                format!(
                    "{} on {}/{}",
                    l.get("group").map_or("?", String::as_str),
                    l.get("topic").map_or("?", String::as_str),
                    l.get("partition").map_or("?", String::as_str)
                ),
            )),
            _ => None,
        })
        .collect();
    lags.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let total: f64 = lags.iter().map(|(v, _)| v).sum();
    let mut out = vec![format!("{:<36} {:>14}", "CONSUMER-GROUP LAG (messages)", number(total))];
    for (lag, what) in lags.iter().take(MAX_LAG_ROWS) {
        out.push(format!("  {what:<34} {:>14}", number(*lag)));
    }
    if lags.len() > MAX_LAG_ROWS {
        out.push(format!("  … and {} more", lags.len() - MAX_LAG_ROWS));
    }
    out
}

/// The partition table from a cluster member's `kaelix_cluster_partition_*`
/// gauges (role: 0 follower, 1 candidate, 2 leader; leader: node id, 0 for
/// none known).
fn partitions(cur: &Snapshot) -> Vec<String> {
    let field = |name: &str| -> BTreeMap<(String, String), f64> {
        cur.series(name)
            .iter()
            .filter_map(|(l, d)| match d {
                Data::Gauge(v) => Some(((l.get("topic")?.clone(), l.get("partition")?.clone()), *v)),
                _ => None,
            })
            .collect()
    };
    let roles = field("kaelix_cluster_partition_role");
    if roles.is_empty() {
        let count = cur.value("kaelix_broker_partitions", &[]).map_or_else(String::new, |n| format!("{} ", number(n)));
        return vec![
            format!("PARTITIONS {count}"),
            "  leaders and roles: not exported (no kaelix_cluster_partition_* metrics: not a cluster member)"
                .to_owned(),
        ];
    }
    let (leaders, terms, commits) = (
        field("kaelix_cluster_partition_leader"),
        field("kaelix_cluster_partition_term"),
        field("kaelix_cluster_partition_commit_index"),
    );
    let node = cur.value("kaelix_cluster_node_id", &[]).map_or_else(|| "?".to_owned(), number);
    let mut out = vec![format!(
        "PARTITIONS as node {node} sees them   {:>8} {:>10} {:>8} {:>12}",
        "leader", "this node", "term", "commit"
    )];
    let mut keys: Vec<&(String, String)> = roles.keys().collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.parse::<u64>().ok().cmp(&b.1.parse::<u64>().ok())));
    for key in keys.iter().take(MAX_PARTITION_ROWS) {
        let role = match roles[*key] as u64 {
            0 => "follower",
            1 => "candidate",
            2 => "leader",
            _ => "?",
        };
        let leader = match leaders.get(*key) {
            Some(&l) if l > 0.0 => number(l),
            Some(_) => "none".to_owned(),
            None => "?".to_owned(),
        };
        let cell = |m: &BTreeMap<(String, String), f64>| m.get(*key).map_or_else(|| "?".to_owned(), |v| number(*v));
        out.push(format!(
            "  {:<34} {leader:>8} {role:>10} {:>8} {:>12}",
            format!("{}/{}", key.0, key.1),
            cell(&terms),
            cell(&commits)
        ));
    }
    if keys.len() > MAX_PARTITION_ROWS {
        out.push(format!("  … and {} more", keys.len() - MAX_PARTITION_ROWS));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = "\
# TYPE kaelix_broker_published_messages_total counter
kaelix_broker_published_messages_total 100
# TYPE kaelix_broker_dropped_messages_total counter
kaelix_broker_dropped_messages_total{reason=\"oldest\"} 10
kaelix_broker_dropped_messages_total{reason=\"newest\"} 0
# TYPE kaelix_server_connections gauge
kaelix_server_connections 3
# TYPE kaelix_storage_sync_p50_seconds gauge
kaelix_storage_sync_p50_seconds 0.002
# TYPE kaelix_storage_sync_p99_seconds gauge
kaelix_storage_sync_p99_seconds 0.008
# TYPE kaelix_telemetry_render_seconds histogram
kaelix_telemetry_render_seconds_bucket{le=\"0.001\"} 4
kaelix_telemetry_render_seconds_bucket{le=\"0.01\"} 4
kaelix_telemetry_render_seconds_bucket{le=\"+Inf\"} 4
kaelix_telemetry_render_seconds_sum 0.002
kaelix_telemetry_render_seconds_count 4
";

    const SECOND: &str = "\
# TYPE kaelix_broker_published_messages_total counter
kaelix_broker_published_messages_total 350
# TYPE kaelix_broker_dropped_messages_total counter
kaelix_broker_dropped_messages_total{reason=\"oldest\"} 14
kaelix_broker_dropped_messages_total{reason=\"newest\"} 2
# TYPE kaelix_server_connections gauge
kaelix_server_connections 5
# TYPE kaelix_telemetry_render_seconds histogram
kaelix_telemetry_render_seconds_bucket{le=\"0.001\"} 4
kaelix_telemetry_render_seconds_bucket{le=\"0.01\"} 6
kaelix_telemetry_render_seconds_bucket{le=\"+Inf\"} 6
kaelix_telemetry_render_seconds_sum 0.012
kaelix_telemetry_render_seconds_count 6
";

    fn snap(page: &str) -> Snapshot {
        Snapshot::parse(page).unwrap()
    }

    #[test]
    fn two_scrapes_give_per_second_rates() {
        let (a, b) = (snap(FIRST), snap(SECOND));
        let published = rate(&a, &b, "kaelix_broker_published_messages_total", &[], 0.5).unwrap();
        assert_eq!(published, Rate { per_second: 500.0, reset: false });
        // Summed over labels, or one label value.
        let dropped = rate(&a, &b, "kaelix_broker_dropped_messages_total", &[], 2.0).unwrap();
        assert_eq!(dropped.per_second, 3.0);
        let newest = rate(&a, &b, "kaelix_broker_dropped_messages_total", &[("reason", "newest")], 2.0).unwrap();
        assert_eq!(newest.per_second, 1.0);
        assert_eq!(b.value("kaelix_broker_dropped_messages_total", &[]), Some(16.0));
        assert_eq!(b.value("kaelix_server_connections", &[]), Some(5.0));
        let lines = screen(&b, Some((&a, 0.5))).join("\n");
        assert!(lines.contains("published messages"), "{lines}");
        assert!(lines.contains("500.0"), "{lines}");
        assert!(lines.contains("dropped messages reason=newest"), "{lines}");
    }

    #[test]
    fn a_counter_that_goes_down_is_a_restart_not_a_negative_rate() {
        let before = snap("# TYPE c_total counter\nc_total{k=\"a\"} 1000\nc_total{k=\"b\"} 10\n");
        let after = snap("# TYPE c_total counter\nc_total{k=\"a\"} 30\nc_total{k=\"b\"} 20\n");
        let r = rate(&before, &after, "c_total", &[], 1.0).unwrap();
        // a restarted and counted 30 since; b grew by 10.
        assert_eq!(r, Rate { per_second: 40.0, reset: true });
        let page = "# TYPE kaelix_broker_published_messages_total counter\nkaelix_broker_published_messages_total ";
        let lines = screen(&snap(&format!("{page}5\n")), Some((&snap(&format!("{page}900\n")), 1.0))).join("\n");
        assert!(lines.contains("5.0*"), "{lines}");
        assert!(lines.contains("the server restarted"), "{lines}");
        assert!(!lines.contains("-895"), "{lines}");
    }

    #[test]
    fn missing_metrics_give_no_rate_and_no_row() {
        let (a, b) = (snap(FIRST), snap(SECOND));
        assert_eq!(rate(&a, &b, "kaelix_broker_delivered_messages_total", &[], 1.0), None);
        // New in the second scrape: no rate yet.
        let empty = snap("");
        assert_eq!(rate(&empty, &b, "kaelix_broker_published_messages_total", &[], 1.0), None);
        assert_eq!(rate(&a, &b, "kaelix_broker_published_messages_total", &[], 0.0), None);
        assert_eq!(b.value("kaelix_broker_streams", &[]), None);
        let lines = screen(&b, Some((&a, 1.0))).join("\n");
        assert!(!lines.contains("delivered"), "{lines}");
        assert!(!lines.contains("streams"), "{lines}");
        // The quantile gauges vanished in the second scrape: not shown.
        assert!(!lines.contains("fsync"), "{lines}");
        // Unknown metrics are ignored; nothing known: said so.
        let lines = screen(&snap("# TYPE foo_total counter\nfoo_total 3\n"), None).join("\n");
        assert!(lines.contains("none of the counters"), "{lines}");
        assert!(lines.contains("no latency"), "{lines}");
        assert!(!lines.contains("foo"), "{lines}");
        assert!(Snapshot::parse("garbage line\n").unwrap().metrics.is_empty());
    }

    #[test]
    fn latencies_come_from_quantile_gauges_and_histograms() {
        let (a, b) = (snap(FIRST), snap(SECOND));
        let lines = screen(&a, None).join("\n");
        assert!(lines.contains("fsync (storage sync)"), "{lines}");
        assert!(lines.contains("2.00 ms") && lines.contains("8.00 ms"), "{lines}");
        // The interval's two observations fell in (1 ms, 10 ms]: the median
        // is halfway through that bucket.
        let lines = screen(&b, Some((&a, 1.0))).join("\n");
        let render = lines.lines().find(|l| l.contains("/metrics render")).unwrap();
        assert!(render.contains("5.50 ms") && render.contains("last interval"), "{render}");
        assert_eq!(histogram_quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(histogram_quantile(&[(1.0, 2.0), (f64::INFINITY, 4.0)], 0.99), Some(1.0));
        assert_eq!(histogram_quantile(&[(1.0, 2.0), (2.0, 4.0), (f64::INFINITY, 4.0)], 0.25), Some(0.5));
    }

    #[test]
    fn partitions_and_leaders_come_from_cluster_gauges_or_are_said_missing() {
        let lines =
            screen(&snap("# TYPE kaelix_broker_partitions gauge\nkaelix_broker_partitions 4\n"), None).join("\n");
        assert!(lines.contains("PARTITIONS 4"), "{lines}");
        assert!(lines.contains("leaders and roles: not exported"), "{lines}");
        let page = "kaelix_cluster_node_id 2\n\
            kaelix_cluster_partition_role{topic=\"orders\",partition=\"10\"} 0\n\
            kaelix_cluster_partition_leader{topic=\"orders\",partition=\"10\"} 3\n\
            kaelix_cluster_partition_term{topic=\"orders\",partition=\"10\"} 7\n\
            kaelix_cluster_partition_role{topic=\"orders\",partition=\"2\"} 2\n\
            kaelix_cluster_partition_leader{topic=\"orders\",partition=\"2\"} 2\n\
            kaelix_cluster_partition_commit_index{topic=\"orders\",partition=\"2\"} 42\n";
        let lines = screen(&snap(page), None);
        let at = lines.iter().position(|l| l.starts_with("PARTITIONS as node 2")).unwrap();
        let (p2, p10) = (&lines[at + 1], &lines[at + 2]);
        assert!(p2.contains("orders/2") && p2.contains("leader") && p2.contains("42"), "{p2}");
        assert!(p10.contains("orders/10") && p10.contains("follower") && p10.contains(" 3 "), "{p10}");
    }

    #[test]
    fn group_lag_lists_the_largest_first() {
        let page = "# TYPE kaelix_broker_consumer_group_lag_messages gauge\n\
            kaelix_broker_consumer_group_lag_messages{group=\"g\",topic=\"t\",partition=\"0\"} 5\n\
            kaelix_broker_consumer_group_lag_messages{group=\"g\",topic=\"t\",partition=\"1\"} 50\n";
        let lines = screen(&snap(page), None);
        let at = lines.iter().position(|l| l.starts_with("CONSUMER-GROUP LAG")).unwrap();
        assert!(lines[at].ends_with("55"), "{}", lines[at]);
        assert!(lines[at + 1].contains("g on t/1"), "{}", lines[at + 1]);
        assert!(lines[at + 2].contains("g on t/0"), "{}", lines[at + 2]);
    }
}

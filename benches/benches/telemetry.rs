//! What recording a metric costs on a hot path: a handle kept from
//! `MetricsCollector` against the facade's macro (a registry lookup per call)
//! and against the plain relaxed atomic the components keep themselves
//! (what the scrape-time sources read); and what one scrape costs.
//!
//! `cargo bench -p kaelix-benches --bench telemetry`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use kaelix_telemetry::{MetricsCollector, MetricsConfig};

fn counters(c: &mut Criterion) {
    let collector = MetricsCollector::install(&MetricsConfig::default()).expect("the only recorder in this process");
    let mut group = c.benchmark_group("telemetry/counter_increment");
    let atomic = AtomicU64::new(0);
    group.bench_function("relaxed_atomic", |b| b.iter(|| atomic.fetch_add(black_box(1), Ordering::Relaxed)));
    let kept = collector.counter("kaelix_bench_kept_total", &[("protocol", "nats".to_owned())]);
    group.bench_function("kept_handle", |b| b.iter(|| kept.increment(black_box(1))));
    group.bench_function("macro_with_label", |b| {
        b.iter(|| metrics::counter!("kaelix_bench_macro_total", "protocol" => "nats").increment(black_box(1)))
    });
    group.finish();

    let mut group = c.benchmark_group("telemetry/histogram_record");
    let latency = collector.histogram("kaelix_bench_latency_seconds", &[]);
    group.bench_function("kept_handle", |b| b.iter(|| latency.record(black_box(0.000_25))));
    group.finish();

    // A scrape of a registry the size of a serving node's (about 150 series).
    for worker in 0..8 {
        for name in ["kaelix_bench_polls_total", "kaelix_bench_steals_total", "kaelix_bench_parks_total"] {
            collector.counter(name, &[("worker", worker.to_string())]).increment(worker);
        }
    }
    for i in 0..120u64 {
        collector.gauge("kaelix_bench_lag_messages", &[("partition", i.to_string())]).set(i as f64);
    }
    let mut group = c.benchmark_group("telemetry/scrape");
    group.bench_function("render_150_series", |b| b.iter(|| black_box(collector.render().len())));
    group.finish();
}

criterion_group!(benches, counters);
criterion_main!(benches);

//! [`MetricsCollector`]: one Prometheus recorder behind the `metrics` facade.
//!
//! Two ways a number reaches `/metrics`:
//!
//! * **Recorded as it happens**, through the facade (`metrics::counter!`,
//!   …) or, on hot paths, through a handle registered once and kept
//!   ([`MetricsCollector::counter`], [`MetricsCollector::gauge`],
//!   [`MetricsCollector::histogram`]): a kept handle costs one atomic
//!   operation per update, a macro call a map lookup besides.
//! * **Read at scrape time** from counters a component already keeps
//!   ([`MetricsCollector::add_source`]): the executor's per-worker atomics,
//!   the broker's [`kaelix_broker::BrokerStats`], the server's
//!   [`kaelix_server::ServerStats`]. Nothing is added to their hot paths,
//!   and the sans-IO cores under the simulator never see the recorder.
//!
//! Kinds: counters and gauges as usual. A histogram whose name ends in
//! `_seconds` is exported as a Prometheus histogram with the latency
//! buckets of [`LATENCY_BUCKETS`] (or those given to
//! [`MetricsConfig::histogram_buckets`]); any other histogram is exported
//! as a Prometheus **summary** (quantiles of [`MetricsConfig::quantiles`]
//! over a sliding window of [`MetricsConfig::summary_window`]).
//!
//! The recorder does not fold histogram samples by itself: [`Upkeep`] (or
//! each render) calls `run_upkeep`, otherwise samples pile up between
//! scrapes. Known exporter behaviour (0.18.3): a summary's window opens at
//! the newest sample of the first fold, and samples of that fold older than
//! it are counted (`_count`, `_sum`) but left out of the quantiles; with
//! upkeep every second that is at most the first second of a summary.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Buckets (seconds) of every `_seconds` histogram without buckets of its own:
/// 10 µs to 10 s, about three per decade.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Why the collector could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter refused a setting (empty bucket list, quantile out of range).
    #[error("metrics exporter setting: {0}")]
    Exporter(String),
    /// The trace exporter could not be built.
    #[error("trace export: {0}")]
    Tracing(String),
    /// Another recorder is already installed in this process.
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled,
    /// The HTTP endpoint could not bind.
    #[error("metrics endpoint on {addr}: {why}")]
    Bind {
        /// Where.
        addr: std::net::SocketAddr,
        /// Why.
        why: String,
    },
    /// A thread could not be started.
    #[error("starting thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// How the recorder renders.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Labels on every series (e.g. `("node", "1")`).
    pub global_labels: Vec<(String, String)>,
    /// Buckets of histograms named exactly so (seconds or any unit); a
    /// `_seconds` histogram not listed gets [`LATENCY_BUCKETS`].
    pub histogram_buckets: Vec<(String, Vec<f64>)>,
    /// Quantiles rendered for summaries.
    pub quantiles: Vec<f64>,
    /// The sliding window a summary's quantiles cover.
    pub summary_window: Duration,
    /// A gauge not set for this long leaves the output (checked at each
    /// render). Sources set theirs at every render, so this removes only
    /// series whose subject is gone — a consumer group's lag after the group
    /// is deleted, a thread that exited. `None`: gauges stay forever.
    pub gauge_idle_timeout: Option<Duration>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            global_labels: Vec::new(),
            histogram_buckets: Vec::new(),
            quantiles: vec![0.0, 0.5, 0.9, 0.99, 0.999, 1.0],
            summary_window: Duration::from_secs(60),
            gauge_idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

type Source = Box<dyn Fn() + Send + Sync>;

/// The process's metrics (see the module docs).
pub struct MetricsCollector {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    sources: Mutex<Vec<(&'static str, Source)>>,
}

impl std::fmt::Debug for MetricsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sources: Vec<&str> = self.sources.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|s| s.0).collect();
        f.debug_struct("MetricsCollector").field("sources", &sources).finish()
    }
}

impl MetricsCollector {
    /// A collector that is not the process's global recorder: only handles
    /// taken from it, sources, and code run in [`MetricsCollector::scope`]
    /// record into it (tests, several servers in one process).
    pub fn new(config: &MetricsConfig) -> Result<Arc<MetricsCollector>, TelemetryError> {
        let exporter = |e: metrics_exporter_prometheus::BuildError| TelemetryError::Exporter(e.to_string());
        let window_buckets = 6;
        let mut builder = PrometheusBuilder::new()
            .set_quantiles(&config.quantiles)
            .map_err(exporter)?
            .set_bucket_duration(config.summary_window / window_buckets)
            .map_err(exporter)?
            .set_bucket_count(std::num::NonZeroU32::new(window_buckets).expect("six buckets"))
            .idle_timeout(metrics_util::MetricKindMask::GAUGE, config.gauge_idle_timeout);
        for (name, buckets) in &config.histogram_buckets {
            builder = builder.set_buckets_for_metric(Matcher::Full(name.clone()), buckets).map_err(exporter)?;
        }
        builder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .map_err(exporter)?;
        for (key, value) in &config.global_labels {
            builder = builder.add_global_label(key.clone(), value.clone());
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Ok(Arc::new(MetricsCollector { recorder: Arc::new(recorder), handle, sources: Mutex::new(Vec::new()) }))
    }

    /// [`MetricsCollector::new`], installed as the process's global recorder
    /// so that every `metrics::counter!` and friends anywhere record here.
    pub fn install(config: &MetricsConfig) -> Result<Arc<MetricsCollector>, TelemetryError> {
        let collector = MetricsCollector::new(config)?;
        metrics::set_global_recorder(SharedRecorder(collector.recorder.clone()))
            .map_err(|_| TelemetryError::AlreadyInstalled)?;
        Ok(collector)
    }

    /// Runs `f` with this collector as the current recorder (the facade's
    /// macros inside record here even if it is not installed globally).
    pub fn scope<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&*self.recorder, f)
    }

    /// A counter handle to keep on a hot path (one atomic add per increment).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, String)]) -> Counter {
        self.recorder.register_counter(&key(name, labels), &metadata())
    }

    /// A gauge handle to keep.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, String)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &metadata())
    }

    /// A histogram handle to keep (a histogram if `name` ends in `_seconds`
    /// or has configured buckets, a summary otherwise).
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, String)]) -> Histogram {
        self.recorder.register_histogram(&key(name, labels), &metadata())
    }

    /// Adds `HELP` text (and a unit) for `name`, whatever its kind.
    pub fn describe(&self, kind: Kind, name: &'static str, unit: Option<Unit>, help: &'static str) {
        let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
        match kind {
            Kind::Counter => self.recorder.describe_counter(name, unit, help),
            Kind::Gauge => self.recorder.describe_gauge(name, unit, help),
            Kind::Histogram => self.recorder.describe_histogram(name, unit, help),
        }
    }

    /// Registers `source`, run before every render to copy counters that a
    /// component keeps itself into metrics (inside [`MetricsCollector::scope`],
    /// so it uses the facade's macros).
    pub fn add_source(&self, name: &'static str, source: impl Fn() + Send + Sync + 'static) {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).push((name, Box::new(source)));
    }

    /// Folds histogram samples into their windows (see the module docs).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Runs every source, then renders everything in the Prometheus text
    /// exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        self.scope(|| {
            for (_, source) in self.sources.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                source();
            }
        });
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// The kind of a metric (for [`MetricsCollector::describe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution (histogram or summary, see the module docs).
    Histogram,
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect();
    Key::from_parts(name, labels)
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

/// The recorder shared between the global slot and the collector (which
/// renders from it and records sources into it).
struct SharedRecorder(Arc<PrometheusRecorder>);

impl Recorder for SharedRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description)
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description)
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description)
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.0.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.0.register_histogram(key, metadata)
    }
}

/// A thread that runs `tick` every interval until dropped (histogram
/// upkeep, the performance monitor's samples).
pub struct Upkeep {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Upkeep {
    /// Starts the thread; the first tick is one `interval` from now.
    pub fn start(
        name: &'static str,
        interval: Duration,
        mut tick: impl FnMut() + Send + 'static,
    ) -> Result<Upkeep, TelemetryError> {
        assert!(!interval.is_zero(), "an upkeep interval must be positive");
        let (stop, stopped) = mpsc::channel::<()>();
        #[allow(clippy::disallowed_methods, reason = "telemetry runs on its own OS thread beside the executor")]
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    tick();
                }
            })
            .map_err(|source| TelemetryError::Thread { name, source })?;
        Ok(Upkeep { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "the tests wait on real threads")]
mod tests {
    use super::*;

    fn collector() -> Arc<MetricsCollector> {
        MetricsCollector::new(&MetricsConfig::default()).expect("default config builds")
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn kept_handles_and_macros_reach_the_render() {
        let c = collector();
        let sent = c.counter("kaelix_test_sent_total", &[("protocol", "nats".to_owned())]);
        sent.increment(3);
        sent.increment(4);
        c.gauge("kaelix_test_open", &[]).set(5.0);
        c.scope(|| metrics::counter!("kaelix_test_macro_total", "kind" => "a").increment(2));
        let text = c.render();
        assert_eq!(
            line(&text, "kaelix_test_sent_total{"),
            Some("kaelix_test_sent_total{protocol=\"nats\"} 7"),
            "{text}"
        );
        assert_eq!(line(&text, "kaelix_test_open "), Some("kaelix_test_open 5"), "{text}");
        assert_eq!(line(&text, "kaelix_test_macro_total{"), Some("kaelix_test_macro_total{kind=\"a\"} 2"), "{text}");
        assert!(text.contains("# TYPE kaelix_test_sent_total counter"), "{text}");
        assert!(text.contains("# TYPE kaelix_test_open gauge"), "{text}");
    }

    #[test]
    fn seconds_are_histograms_and_other_distributions_summaries() {
        let c = collector();
        let latency = c.histogram("kaelix_test_latency_seconds", &[]);
        let sizes = c.histogram("kaelix_test_batch_messages", &[]);
        for v in 1..=100u32 {
            latency.record(f64::from(v) / 1000.0);
            sizes.record(f64::from(v));
            if v == 1 {
                // See the module docs: a summary's first window starts at
                // the first sample folded, and older ones are not kept.
                c.run_upkeep();
            }
        }
        let text = c.render();
        assert!(text.contains("# TYPE kaelix_test_latency_seconds histogram"), "{text}");
        assert_eq!(
            line(&text, "kaelix_test_latency_seconds_bucket{le=\"0.05\"}"),
            Some("kaelix_test_latency_seconds_bucket{le=\"0.05\"} 50"),
            "{text}"
        );
        assert_eq!(line(&text, "kaelix_test_latency_seconds_count"), Some("kaelix_test_latency_seconds_count 100"));
        assert!(text.contains("# TYPE kaelix_test_batch_messages summary"), "{text}");
        let median: f64 = line(&text, "kaelix_test_batch_messages{quantile=\"0.5\"}")
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .expect("a median line");
        assert!((49.0..=51.0).contains(&median), "median {median}: {text}");
    }

    #[test]
    fn sources_run_at_every_render_and_help_text_is_kept() {
        let c = collector();
        let value = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let seen = value.clone();
        c.describe(Kind::Counter, "kaelix_test_read_total", None, "Counted elsewhere, copied at scrape time.");
        c.add_source("test", move || {
            metrics::counter!("kaelix_test_read_total").absolute(seen.load(std::sync::atomic::Ordering::Relaxed));
        });
        assert!(c.render().contains("kaelix_test_read_total 1\n"));
        value.store(42, std::sync::atomic::Ordering::Relaxed);
        let text = c.render();
        assert!(text.contains("kaelix_test_read_total 42\n"), "{text}");
        assert!(text.contains("# HELP kaelix_test_read_total Counted elsewhere, copied at scrape time."), "{text}");
    }

    #[test]
    fn gauges_no_source_sets_any_more_leave_the_output() {
        let config = MetricsConfig { gauge_idle_timeout: Some(Duration::from_millis(50)), ..MetricsConfig::default() };
        let c = MetricsCollector::new(&config).unwrap();
        let groups = Arc::new(Mutex::new(vec!["a", "b"]));
        let current = groups.clone();
        c.add_source("groups", move || {
            for g in current.lock().unwrap().iter() {
                metrics::gauge!("kaelix_test_lag", "group" => *g).set(1.0);
            }
        });
        c.counter("kaelix_test_once_total", &[]).increment(1);
        let text = c.render();
        assert!(text.contains("kaelix_test_lag{group=\"a\"} 1") && text.contains("kaelix_test_lag{group=\"b\"} 1"));
        groups.lock().unwrap().retain(|g| *g != "a");
        thread::sleep(Duration::from_millis(150));
        let text = c.render();
        assert!(!text.contains("group=\"a\""), "the deleted group's series is gone: {text}");
        assert!(text.contains("kaelix_test_lag{group=\"b\"} 1"), "{text}");
        assert!(text.contains("kaelix_test_once_total 1"), "counters never expire: {text}");
    }

    #[test]
    fn global_labels_are_on_every_series() {
        let config = MetricsConfig { global_labels: vec![("node".into(), "7".into())], ..MetricsConfig::default() };
        let c = MetricsCollector::new(&config).unwrap();
        c.counter("kaelix_test_x_total", &[]).increment(1);
        assert!(c.render().contains("kaelix_test_x_total{node=\"7\"} 1"));
    }

    #[test]
    fn bad_settings_are_refused() {
        let config = MetricsConfig { quantiles: vec![], ..MetricsConfig::default() };
        assert!(matches!(MetricsCollector::new(&config), Err(TelemetryError::Exporter(_))));
        let config = MetricsConfig { histogram_buckets: vec![("x".into(), vec![])], ..MetricsConfig::default() };
        assert!(matches!(MetricsCollector::new(&config), Err(TelemetryError::Exporter(_))));
    }

    #[test]
    fn upkeep_ticks_until_dropped() {
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = ticks.clone();
        let upkeep = Upkeep::start("test-upkeep", Duration::from_millis(1), move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        while ticks.load(std::sync::atomic::Ordering::Relaxed) < 3 {
            thread::yield_now();
        }
        drop(upkeep);
        let after = ticks.load(std::sync::atomic::Ordering::Relaxed);
        thread::sleep(Duration::from_millis(20));
        assert_eq!(ticks.load(std::sync::atomic::Ordering::Relaxed), after, "no tick after drop");
    }
}

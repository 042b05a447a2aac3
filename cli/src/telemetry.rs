//! The metrics side of `kaelix serve`: the global recorder, the executor's
//! storage's and (once started) the server's sources, the `/metrics` +
//! `/healthz` endpoint, and the upkeep thread that samples the performance
//! monitor (see `kaelix-telemetry`).

use std::sync::Arc;

use kaelix_runtime_real::{ExecutorHandle, RealRuntime};
use kaelix_server::config::TelemetrySettings;
use kaelix_telemetry::perf::PerformanceMonitor;
use kaelix_telemetry::{MetricsCollector, MetricsConfig, MetricsEndpoint, TelemetryError, Upkeep, sources};

/// What runs while the server serves; dropping it stops the endpoint and
/// the upkeep thread.
pub struct Telemetry {
    /// The process's recorder.
    pub collector: Arc<MetricsCollector>,
    /// The HTTP endpoint.
    pub endpoint: MetricsEndpoint,
    _upkeep: Upkeep,
}

/// Starts the endpoint if `settings` ask for it (None: metrics are off).
pub fn start(
    settings: &TelemetrySettings,
    executor: ExecutorHandle,
    rt: &RealRuntime,
) -> Result<Option<Telemetry>, TelemetryError> {
    if !settings.metrics {
        return Ok(None);
    }
    let collector = MetricsCollector::install(&MetricsConfig::default())?;
    sources::add_executor(&collector, executor.clone());
    sources::add_storage(&collector, rt.storage_stats().clone());
    let worker_nodes = executor
        .worker_thread_names()
        .into_iter()
        .zip(executor.layout())
        .map(|(name, (node, _cpu))| (name, node))
        .collect();
    let health: kaelix_telemetry::endpoint::HealthFn = Arc::new(move || sources::executor_health(&executor));
    let endpoint = MetricsEndpoint::start(settings.metrics_listen, collector.clone(), health)?;
    let interval = std::time::Duration::from_millis(settings.sample_interval_ms);
    let upkept = collector.clone();
    let mut monitor = PerformanceMonitor::new(&collector, interval, worker_nodes);
    let upkeep = Upkeep::start("kaelix-metrics-upkeep", interval, move || {
        upkept.scope(|| monitor.sample());
        upkept.run_upkeep();
    })?;
    Ok(Some(Telemetry { collector, endpoint, _upkeep: upkeep }))
}

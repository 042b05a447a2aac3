//! Kaelix telemetry: what an operator running Prometheus scrapes.
//!
//! * [`collector`]: [`MetricsCollector`], one Prometheus recorder behind
//!   the `metrics` facade — counters, gauges, histograms (`_seconds`
//!   names) and summaries (other distributions), handles to keep on hot
//!   paths, and sources read at scrape time.
//! * [`endpoint`]: [`MetricsEndpoint`], `GET /metrics` and `GET /healthz`
//!   on a thread of their own.
//! * [`sources`]: the executor's, the server's and the broker's own
//!   counters exported as metrics when scraped.
//! * [`otlp`]: [`OtlpTracing`], distributed tracing for operators who run
//!   an OpenTelemetry collector: the server's spans (`kaelix_server::trace`)
//!   exported as OTLP/HTTP protobuf, sampled parent-based with a ratio.
//!
//! Why the `metrics` facade with `metrics-exporter-prometheus` rather than
//! `prometheus-client`: the facade lets any crate record without depending
//! on an exporter (or on this crate) and costs nothing where no recorder is
//! installed, which is the case under the simulator; its exporter renders
//! summaries, which `prometheus-client` does not have; and a registered
//! handle is one atomic operation per update.
//!
//! This crate is the OS edge of telemetry (threads, sockets, the real
//! clock for render times); the protocol cores never call it.

pub mod collector;
pub mod endpoint;
pub mod otlp;
pub mod perf;
pub mod sources;

pub use collector::{Kind, MetricsCollector, MetricsConfig, TelemetryError, Upkeep};
pub use endpoint::{HealthReport, MetricsEndpoint};
pub use otlp::OtlpTracing;

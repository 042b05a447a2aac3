//! The HTTP endpoint Prometheus scrapes: `GET /metrics` (text format
//! 0.0.4) and `GET /healthz` (200 unless the executor is unhealthy, then
//! 503; the body names each worker's health).
//!
//! It runs on a thread of its own, not on the executor: a scrape must be
//! answered when the executor is the thing that is stuck (that is when
//! `/healthz` matters), and rendering must not steal a worker from the
//! data path. One thread serves requests one at a time, which is what a
//! scrape endpoint sees (one Prometheus, one health prober).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use kaelix_runtime_real::executor::metrics::HealthStatus;

use crate::collector::{Kind, MetricsCollector, TelemetryError};

/// The content type of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/healthz` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// The overall status (HTTP 503 when [`HealthStatus::Unhealthy`]).
    pub status: HealthStatus,
    /// Lines explaining it (one per worker).
    pub detail: Vec<String>,
}

/// Reads the current health.
pub type HealthFn = Arc<dyn Fn() -> HealthReport + Send + Sync>;

/// A running endpoint; stops and joins its thread when dropped.
pub struct MetricsEndpoint {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<thread::JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Binds `addr` and serves `collector` and `health` there.
    pub fn start(
        addr: SocketAddr,
        collector: Arc<MetricsCollector>,
        health: HealthFn,
    ) -> Result<MetricsEndpoint, TelemetryError> {
        let server = tiny_http::Server::http(addr).map_err(|e| TelemetryError::Bind { addr, why: e.to_string() })?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| TelemetryError::Bind { addr, why: "not an IP listener".to_owned() })?;
        let server = Arc::new(server);
        let serving = server.clone();
        collector.describe(Kind::Counter, "kaelix_telemetry_scrapes_total", None, "Requests of /metrics answered.");
        collector.describe(
            Kind::Histogram,
            "kaelix_telemetry_render_seconds",
            Some(metrics::Unit::Seconds),
            "Time to collect and render /metrics.",
        );
        let scrapes = collector.counter("kaelix_telemetry_scrapes_total", &[]);
        let render_time = collector.histogram("kaelix_telemetry_render_seconds", &[]);
        #[allow(clippy::disallowed_methods, reason = "the endpoint is an OS thread beside the executor (module docs)")]
        let thread = thread::Builder::new()
            .name("kaelix-metrics-http".to_owned())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    let response = respond(&request, &collector, &health, &scrapes, &render_time);
                    if let Err(e) = request.respond(response) {
                        tracing::debug!(error = %e, "metrics endpoint: the client went away");
                    }
                }
            })
            .map_err(|source| TelemetryError::Thread { name: "kaelix-metrics-http", source })?;
        Ok(MetricsEndpoint { server, addr: bound, thread: Some(thread) })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header names and values are valid")
}

fn text(status: u16, content_type: &str, body: String) -> Response {
    tiny_http::Response::from_string(body).with_status_code(status).with_header(header("Content-Type", content_type))
}

fn respond(
    request: &tiny_http::Request,
    collector: &MetricsCollector,
    health: &HealthFn,
    scrapes: &metrics::Counter,
    render_time: &metrics::Histogram,
) -> Response {
    let plain = "text/plain; charset=utf-8";
    let method = request.method();
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return text(405, plain, format!("method {method} not allowed: use GET\n"))
            .with_header(header("Allow", "GET, HEAD"));
    }
    // The query string (Prometheus may add one) does not select anything.
    let path = request.url().split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            scrapes.increment(1);
            let body = timed(render_time, || collector.render());
            text(200, TEXT_FORMAT, body)
        }
        "/healthz" => {
            let report = health();
            let status = if report.status == HealthStatus::Unhealthy { 503 } else { 200 };
            let mut body = format!("{}\n", health_name(report.status));
            for line in &report.detail {
                body.push_str(line);
                body.push('\n');
            }
            text(status, plain, body)
        }
        "/" => text(200, plain, "kaelix metrics endpoint: /metrics (Prometheus text format), /healthz\n".to_owned()),
        other => text(404, plain, format!("no such path {other:?}: try /metrics or /healthz\n")),
    }
}

#[allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "the render time is the real time a scrape costs"
)]
fn timed<T>(histogram: &metrics::Histogram, f: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let value = f();
    histogram.record(started.elapsed().as_secs_f64());
    value
}

/// Lower-case name of a health status (as `/healthz` and the metrics say it).
pub fn health_name(health: HealthStatus) -> &'static str {
    match health {
        HealthStatus::Healthy => "healthy",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Unhealthy => "unhealthy",
        HealthStatus::Unknown => "unknown",
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "real sockets against the real endpoint")]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Mutex;

    use super::*;
    use crate::collector::MetricsConfig;

    /// One raw HTTP/1.0 request; returns (status, head, body).
    fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut s = std::net::TcpStream::connect(addr).expect("the endpoint accepts");
        write!(s, "{method} {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").expect("a header block");
        let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
        (status, head.to_owned(), body.to_owned())
    }

    #[test]
    fn serves_metrics_and_health_over_http() {
        let collector = MetricsCollector::new(&MetricsConfig::default()).unwrap();
        collector.counter("kaelix_test_things_total", &[]).increment(9);
        let status = Arc::new(Mutex::new(HealthStatus::Healthy));
        let read = status.clone();
        let health: HealthFn = Arc::new(move || HealthReport {
            status: *read.lock().unwrap(),
            detail: vec!["worker 0: as set by the test".to_owned()],
        });
        let endpoint = MetricsEndpoint::start("127.0.0.1:0".parse().unwrap(), collector, health).unwrap();
        let addr = endpoint.local_addr();
        assert_ne!(addr.port(), 0);

        let (code, head, body) = get(addr, "GET", "/metrics");
        assert_eq!(code, 200);
        assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
        assert!(body.contains("kaelix_test_things_total 9\n"), "{body}");
        let (_, _, body) = get(addr, "GET", "/metrics?x=1");
        assert!(body.contains("kaelix_telemetry_scrapes_total 2\n"), "the endpoint counts its scrapes: {body}");
        assert!(body.contains("kaelix_telemetry_render_seconds_count 1\n"), "{body}");

        let (code, _, body) = get(addr, "GET", "/healthz");
        assert_eq!((code, body.as_str()), (200, "healthy\nworker 0: as set by the test\n"));
        *status.lock().unwrap() = HealthStatus::Degraded;
        assert_eq!(get(addr, "GET", "/healthz").0, 200, "degraded still serves");
        *status.lock().unwrap() = HealthStatus::Unhealthy;
        let (code, _, body) = get(addr, "GET", "/healthz");
        assert_eq!((code, body.lines().next()), (503, Some("unhealthy")));

        assert_eq!(get(addr, "GET", "/nope").0, 404);
        let (code, head, _) = get(addr, "POST", "/metrics");
        assert_eq!(code, 405);
        assert!(head.contains("Allow: GET, HEAD"), "{head}");
        drop(endpoint); // returns once the serving thread is joined
    }

    #[test]
    fn a_taken_port_is_a_bind_error_naming_the_address() {
        let collector = MetricsCollector::new(&MetricsConfig::default()).unwrap();
        let health: HealthFn = Arc::new(|| HealthReport { status: HealthStatus::Unknown, detail: vec![] });
        let first = MetricsEndpoint::start("127.0.0.1:0".parse().unwrap(), collector.clone(), health.clone()).unwrap();
        let err = MetricsEndpoint::start(first.local_addr(), collector, health).err().expect("the port is taken");
        assert!(err.to_string().contains(&first.local_addr().to_string()), "{err}");
    }
}

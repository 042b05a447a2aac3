//! Trace export for operators who run an OpenTelemetry collector: the
//! spans of `kaelix_server::trace` sent as OTLP over HTTP (protobuf
//! bodies) to `[tracing] endpoint`.
//!
//! The pipeline: `tracing` spans of target `kaelix::trace` → the
//! `tracing-opentelemetry` layer ([`OtlpTracing::layer`], beside the log
//! layer) → the SDK's tracer (sampler `ParentBased(TraceIdRatioBased(r))`,
//! resource `service.name`, `service.version`, `service.instance.id` and
//! `kaelix.node.id`) → a batch span processor on its own thread → the
//! OTLP/HTTP exporter → [`StdHttpClient`]. The batch processor's settings
//! follow the standard `OTEL_BSP_*` variables (schedule delay 5 s, queue
//! 2048, batch 512 by default); [`OtlpTracing::shutdown`] flushes what is
//! queued, and `kaelix serve` calls it after the drain.
//!
//! **Sampling before spans.** `kaelix_server::trace` decides whether a
//! root publish is traced before it creates any span, through
//! [`RatioRootSampler`]: it draws a trace id, applies the same
//! `TraceIdRatioBased` rule to it, and on a yes leaves the id with
//! [`HandOffIdGenerator`], the tracer's id generator, which gives it to
//! the root span built next on that thread. The exporter's sampler then
//! sees the id that was decided on and says the same: the decision is
//! the SDK's rule, made once per publish, and spans exist only for the
//! publishes that are exported.
//!
//! **The HTTP client.** The exporter runs on the batch processor's own
//! thread and blocks on each export; [`StdHttpClient`] sends one POST per
//! batch over a std socket with timeouts (HTTP/1.1, `Connection: close`,
//! the answer parsed by `httparse`). A collector is plain HTTP here (on
//! the same host or network; TLS is refused by the configuration's rules).
//! reqwest's blocking client would do the same with hyper and tokio
//! underneath; its async client panics on the processor's thread.
//!
//! This is the OS edge (clock, random ids, a thread, sockets): the
//! protocol cores and the simulator never reach it.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "the exporter's thread, socket and ids are the OS edge"
)]

use std::cell::Cell;
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;
use kaelix_server::config::{HttpEndpoint, TracingSettings};
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SdkTracerProvider, ShouldSample,
};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::TelemetryError;

/// How long one export may take: connecting, sending, reading the answer.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The installed trace pipeline of a `kaelix serve` process.
pub struct OtlpTracing {
    provider: SdkTracerProvider,
    ratio: f64,
}

impl OtlpTracing {
    /// Builds the pipeline for `settings` (`node_id`: the cluster member's
    /// id, 1 for a single node). Nothing is exported until spans are.
    pub fn start(settings: &TracingSettings, node_id: u64) -> Result<OtlpTracing, TelemetryError> {
        // Validated with the configuration; checked again for callers
        // that build settings by hand.
        HttpEndpoint::parse(&settings.endpoint)
            .map_err(|why| TelemetryError::Tracing(format!("tracing.endpoint {:?}: {why}", settings.endpoint)))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(StdHttpClient { timeout: EXPORT_TIMEOUT })
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TelemetryError::Tracing(format!("the OTLP exporter for {}: {e}", settings.endpoint)))?;
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("service.instance.id", format!("node-{node_id}")),
                KeyValue::new("kaelix.node.id", node_id as i64),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sampling_ratio))))
            .with_id_generator(HandOffIdGenerator::default())
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build();
        // Anything else in the process that propagates uses W3C too.
        global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(OtlpTracing { provider, ratio: settings.sampling_ratio })
    }

    /// The `tracing` layer that turns the `kaelix::trace` spans into
    /// OpenTelemetry spans (it sees no other span and no event).
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let tracer = self.provider.tracer("kaelix");
        // No source location, thread or busy/idle attributes: a span carries
        // what an operator looks for (the messaging attributes) and costs
        // less to record and encode.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| meta.target() == kaelix_server::trace::TARGET))
    }

    /// The root sampler `kaelix_server::trace` consults (install it with
    /// `kaelix_server::trace::install`).
    pub fn root_sampler(&self) -> RatioRootSampler {
        RatioRootSampler::new(self.ratio)
    }

    /// Exports what is queued and stops the processor's thread.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing spans");
        }
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "stopping the trace exporter");
        }
    }
}

thread_local! {
    /// The trace id [`RatioRootSampler`] decided on, for the root span
    /// built next on this thread.
    static DECIDED: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The tracer's id generator: random ids, except that the next root on a
/// thread where [`RatioRootSampler`] just said yes gets the id it decided
/// on.
#[derive(Debug, Default)]
pub struct HandOffIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for HandOffIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        DECIDED.with(Cell::take).unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.random.new_span_id()
    }
}

/// Decides roots by `TraceIdRatioBased` on a freshly drawn trace id (see
/// the module docs).
///
/// It runs on every publish without a trace context, so it applies the
/// rule itself rather than through `Sampler::should_sample` (whose result
/// carries a vector and a trace state: about 3% of a publish in a
/// profile): the SDK's rule samples a trace id whose low 64 bits, shifted
/// right by one, are below `ratio * 2^63`. So the low half is drawn first
/// and the high half only for a yes. `decides` equals the SDK's decision
/// on every id (tested against `Sampler::should_sample`).
pub struct RatioRootSampler {
    ratio: f64,
    /// `ratio * 2^63`, as the SDK computes it (unused at ratio 1).
    bound: u64,
    ids: RandomIdGenerator,
}

impl RatioRootSampler {
    /// A root sampler at `ratio` (0.0..=1.0).
    pub fn new(ratio: f64) -> RatioRootSampler {
        let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
        RatioRootSampler { ratio, bound, ids: RandomIdGenerator::default() }
    }

    /// The decision for a trace id whose low 64 bits are `low`.
    #[inline]
    pub fn decides(&self, low: u64) -> bool {
        self.ratio >= 1.0 || (low >> 1) < self.bound
    }

    /// The decision for `trace_id` as the tracer's own sampler makes it for
    /// a root (the reference `decides` is tested against).
    pub fn samples(&self, trace_id: TraceId) -> bool {
        let sampler = Sampler::TraceIdRatioBased(self.ratio);
        let result = sampler.should_sample(None, trace_id, "", &SpanKind::Server, &[], &[]);
        result.decision == SamplingDecision::RecordAndSample
    }

    /// 64 random bits from the SDK's generator (a span id is one draw).
    fn draw(&self) -> u64 {
        u64::from_be_bytes(self.ids.new_span_id().to_bytes())
    }
}

impl kaelix_server::trace::RootSampler for RatioRootSampler {
    fn sample_root(&self) -> bool {
        let low = self.draw();
        if !self.decides(low) {
            return false;
        }
        let id = TraceId::from((u128::from(self.draw()) << 64) | u128::from(low));
        DECIDED.with(|d| d.set(Some(id)));
        true
    }
}

/// The exporter's HTTP client: one blocking POST per batch over a std
/// socket (plain HTTP/1.1), with a timeout on connecting, writing and
/// reading. Any status comes back as a response (the exporter judges
/// it); failing to talk to the collector is an error.
#[derive(Clone)]
pub struct StdHttpClient {
    /// Bound on each of connect, write and read.
    pub timeout: Duration,
}

impl fmt::Debug for StdHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdHttpClient").field("timeout", &self.timeout).finish()
    }
}

/// The most of a collector's answer that is read (its body is a small
/// protobuf, an error text at most).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

impl StdHttpClient {
    /// Sends `request` and reads the whole answer (blocking).
    pub fn send(&self, request: &Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let uri = request.uri();
        if uri.scheme_str() != Some("http") {
            return Err(format!("{uri}: only plain http:// collectors are supported").into());
        }
        let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = (host, port).to_socket_addrs()?;
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(format!("connecting to {host}:{port}: {e}").into()),
            (None, None) => return Err(format!("{host}: no address").into()),
        };
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let body = request.body();
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            request.method(),
            uri.authority().map_or(host, |a| a.as_str()),
            body.len()
        );
        for (name, value) in request.headers() {
            if let Ok(v) = value.to_str()
                && !matches!(name.as_str(), "host" | "content-length" | "connection")
            {
                head.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE_BYTES as u64).read_to_end(&mut raw)?;
        parse_response(&raw)
    }
}

/// A collector's whole answer (the connection closed after it).
fn parse_response(raw: &[u8]) -> Result<Response<Bytes>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let body_at = match parsed.parse(raw)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Err("the collector's answer ended inside its header".into()),
    };
    let code = parsed.code.ok_or("no status code")?;
    let mut builder = Response::builder().status(code);
    let mut chunked = false;
    let mut length = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = std::str::from_utf8(h.value).is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
        }
        builder = builder.header(h.name, h.value);
    }
    let rest = &raw[body_at..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(n) => return Err(format!("the collector's answer has {} of its {n} body bytes", rest.len()).into()),
            None => rest.to_vec(),
        }
    };
    Ok(builder.body(Bytes::from(body))?)
}

/// A chunked body, decoded (chunk extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or("a chunk size line without its end")?;
        let size_text = std::str::from_utf8(&rest[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| format!("chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size + 2 {
            return Err("a chunk cut short".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[async_trait::async_trait]
impl HttpClient for StdHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // The batch processor polls this on its own thread (block_on):
        // blocking here blocks nothing else.
        self.send(&request)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "a real socket against the real client")]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn answers_are_parsed_with_a_length_chunked_or_to_the_close() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!((r.status().as_u16(), r.body().as_ref()), (200, &b"abc"[..]));
        let r = parse_response(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status().as_u16(), r.body().as_ref()), (400, &b"abcde"[..]));
        let r = parse_response(b"HTTP/1.0 503 Busy\r\n\r\nlater").unwrap();
        assert_eq!((r.status().as_u16(), r.body().as_ref()), (503, &b"later"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
    }

    #[test]
    fn a_post_reaches_the_listener_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Read until the header and its 5 body bytes are in.
            while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"hello")) {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
            String::from_utf8(got).unwrap()
        });
        let request = Request::post(format!("http://{addr}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(Bytes::from_static(b"hello"))
            .unwrap();
        let client = StdHttpClient { timeout: Duration::from_secs(5) };
        let response = client.send(&request).unwrap();
        assert_eq!((response.status().as_u16(), response.body().as_ref()), (200, &b"ok"[..]));
        let seen = server.join().unwrap();
        assert!(seen.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("content-type: application/x-protobuf\r\n"), "{seen}");
        assert!(seen.contains("Content-Length: 5\r\n"), "{seen}");
    }

    #[test]
    fn an_unreachable_collector_is_an_error_not_a_hang() {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let request = Request::post(format!("http://{addr}/v1/traces")).body(Bytes::new()).unwrap();
        let client = StdHttpClient { timeout: Duration::from_secs(2) };
        assert!(client.send(&request).is_err());
    }

    #[test]
    fn the_root_sampler_hands_its_id_to_the_next_root() {
        use kaelix_server::trace::RootSampler;
        let always = RatioRootSampler::new(1.0);
        let never = RatioRootSampler::new(0.0);
        let ids = HandOffIdGenerator::default();
        assert!(!never.sample_root());
        let a = ids.new_trace_id();
        assert!(always.sample_root());
        let decided = DECIDED.with(Cell::get).expect("a yes leaves its id");
        assert_eq!(ids.new_trace_id(), decided, "the next root takes it");
        assert_ne!(ids.new_trace_id(), decided, "only once");
        assert_ne!(a, decided);
        // About a quarter of roots pass 0.25.
        let quarter = RatioRootSampler::new(0.25);
        let yes = (0..20_000).filter(|_| quarter.sample_root()).count();
        // Binomial(20000, 0.25): sd ≈ 61; 6 sd either side.
        assert!((4_634..=5_366).contains(&yes), "{yes} of 20000");
    }

    #[test]
    fn the_fast_decision_is_the_sdks_on_every_id() {
        let ids = RandomIdGenerator::default();
        for ratio in [0.0, 1e-4, 0.001, 0.01, 0.25, 0.5, 0.999, 1.0] {
            let sampler = RatioRootSampler::new(ratio);
            let mut edge = vec![0u64, 1, 2, u64::MAX, u64::MAX - 1, sampler.bound << 1, (sampler.bound << 1) | 1];
            edge.extend([(sampler.bound.wrapping_sub(1)) << 1, (sampler.bound + 1) << 1]);
            let random = (0..20_000).map(|_| u64::from_be_bytes(ids.new_span_id().to_bytes()));
            for low in edge.into_iter().chain(random) {
                let id = TraceId::from((u128::from(ids.new_span_id().to_bytes()[0]) << 64) | u128::from(low));
                assert_eq!(sampler.decides(low), sampler.samples(id), "ratio {ratio}, low {low:#x}");
            }
        }
    }
}

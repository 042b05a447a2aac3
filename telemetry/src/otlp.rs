//! Trace export for operators who run an OpenTelemetry collector: the
//! spans of `kaelix_server::trace` sent as OTLP over HTTP (protobuf
//! bodies) to `[tracing] endpoint`.
//!
//! The pipeline: the SDK's tracer ([`OtlpTracing::tracer`], installed in
//! `kaelix_server::trace`, which builds its spans with it directly; sampler
//! `ParentBased(TraceIdRatioBased(r))`, resource `service.name`,
//! `service.version`, `service.instance.id` and `kaelix.node.id`) → a
//! batch span processor on its own thread → the OTLP/HTTP exporter →
//! [`StdHttpClient`]. The batch processor's settings
//! follow the standard `OTEL_BSP_*` variables (schedule delay 5 s, queue
//! 2048, batch 512 by default); [`OtlpTracing::shutdown`] flushes what is
//! queued, and `kaelix serve` calls it after the drain.
//!
//! **Sampling before spans.** `kaelix_server::trace` decides whether a
//! root publish is traced before it creates any span, by the
//! `TraceIdRatioBased` rule applied to the low half of a trace id drawn
//! from a per-thread generator of its own. [`RatioRootSampler`] is what it
//! is installed with: the ratio, the seeds of those generators (drawn from
//! the SDK's random generator, once per thread), and the hand-off of a
//! sampled root's trace id to [`HandOffIdGenerator`], the tracer's id
//! generator, which gives it to the root span built next on that thread.
//! The exporter's sampler then sees the id that was decided on and says
//! the same: the decision is the SDK's rule, made once per publish, and
//! spans exist only for the publishes that are exported.
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
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider};

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

    /// The tracer the server builds its spans with (install it with
    /// `kaelix_server::trace::install`, beside [`OtlpTracing::root_sampler`]).
    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("kaelix")
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
/// thread where a sampled root's id was just handed off
/// ([`RatioRootSampler`]) gets that id.
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

/// The root sampler installed in `kaelix_server::trace` (see the module
/// docs): the configured ratio, thread seeds from the SDK's random
/// generator, and sampled roots' ids handed to [`HandOffIdGenerator`].
/// It is consulted once per thread (the seed) and once per sampled root
/// (the hand-off), not per publish: the per-publish decision is inlined
/// in the server.
pub struct RatioRootSampler {
    ratio: f64,
    ids: RandomIdGenerator,
}

impl RatioRootSampler {
    /// A root sampler at `ratio` (0.0..=1.0).
    pub fn new(ratio: f64) -> RatioRootSampler {
        RatioRootSampler { ratio, ids: RandomIdGenerator::default() }
    }
}

impl kaelix_server::trace::RootSampler for RatioRootSampler {
    fn ratio(&self) -> f64 {
        self.ratio
    }

    fn seed(&self) -> u64 {
        // The SDK's generator (OS-seeded, per thread): a span id is 64 bits.
        u64::from_be_bytes(self.ids.new_span_id().to_bytes())
    }

    fn hand_off(&self, trace_id: TraceId) {
        DECIDED.with(|d| d.set(Some(trace_id)));
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

    use opentelemetry::trace::SpanKind;
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

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
    fn a_handed_off_id_goes_to_the_next_root_only() {
        use kaelix_server::trace::RootSampler;
        let sampler = RatioRootSampler::new(0.25);
        assert_eq!(sampler.ratio(), 0.25);
        let ids = HandOffIdGenerator::default();
        let before = ids.new_trace_id();
        let decided = TraceId::from(0x1234_5678_9abc_def0_0fed_cba9_8765_4321u128);
        sampler.hand_off(decided);
        assert_eq!(ids.new_trace_id(), decided, "the next root takes it");
        let after = ids.new_trace_id();
        assert_ne!(after, decided, "only once");
        assert!(before != TraceId::INVALID && after != TraceId::INVALID && before != after);
        // Seeds differ from one to the next (random, not a constant).
        let seeds: std::collections::BTreeSet<u64> = (0..100).map(|_| sampler.seed()).collect();
        assert_eq!(seeds.len(), 100);
    }

    #[test]
    fn the_installed_decision_is_the_tracers_on_the_handed_off_id() {
        // The server's rule, seeded and handed off through this sampler,
        // against the tracer's sampler on the ids its generator then gives.
        use kaelix_server::trace::{Decision, Sampling};
        let sampling = Sampling::new(Box::new(RatioRootSampler::new(0.01)));
        let ids = HandOffIdGenerator::default();
        let sdk = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.01)));
        let mut roots = 0;
        for _ in 0..100_000 {
            if let Some(Decision::Root(id)) = sampling.decide(None) {
                roots += 1;
                let given = ids.new_trace_id();
                assert_eq!(given, id);
                let result = sdk.should_sample(None, given, "nats.publish", &SpanKind::Server, &[], &[]);
                assert_eq!(result.decision, SamplingDecision::RecordAndSample);
            }
        }
        // Binomial(100000, 0.01): sd ≈ 31.5; 6 sd either side.
        assert!((811..=1189).contains(&roots), "{roots} of 100000");
    }
}

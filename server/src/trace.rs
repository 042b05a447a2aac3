//! Distributed tracing of publishes: which spans exist, how a trace
//! crosses nodes, and what decides whether a publish is traced at all.
//!
//! **Spans** (all `tracing` spans of target [`TARGET`], so the binary can
//! route them to its OpenTelemetry layer alone and keep them out of the
//! log lines):
//!
//! ```text
//! nats.publish | native.produce     (kind server: one client request)
//! └── broker.publish                (kind producer: its context goes into the message)
//!     └── raft.commit               (replicated topics, on the proposing node:
//!                                    proposal → forward → commit → outcome; kaelix-broker)
//! nats.deliver | native.deliver     (kind consumer, wherever the message is
//!                                    delivered, parent = the message's traceparent)
//! ```
//!
//! **Propagation.** The W3C `traceparent` (and `tracestate`) headers of a
//! message are its trace context. A publish that carries a sampled
//! `traceparent` continues that trace (its request span's parent is the
//! caller's span); one without starts a trace. When the publish is traced,
//! the front end sets the message's `traceparent` to its `broker.publish`
//! span before handing it to the broker, so the header is stored,
//! forwarded to the partition's leader, replicated and applied with the
//! record, and the delivery on any node — another cluster member's
//! subscriber included — is a child of that span in the same trace. The
//! propagator is OpenTelemetry's `TraceContextPropagator` (no hand-made
//! parsing).
//!
//! **Sampling, decided before any span exists.** Head sampling is
//! parent-based with a ratio for roots (the exporter's sampler is
//! `ParentBased(TraceIdRatioBased(r))`). A span per publish costs
//! microseconds, more than a publish itself, so the front end asks first
//! and creates spans only for a publish that will be exported: a carried
//! `traceparent` decides by its sampled flag (an unsampled caller gets no
//! spans and its header is passed on untouched); without one the installed
//! [`RootSampler`] draws the trace id and applies the ratio to it, and the
//! exporter's id generator then hands that same id to the root span (see
//! `kaelix_telemetry::otlp`), so the decision made here and the exporter's
//! own sampler agree on every trace. An untraced publish costs one load
//! of [`sampler`] and, with tracing on, one header lookup and one draw.
//!
//! **Determinism.** Nothing here reads a clock or draws a random number:
//! the sampler and the OpenTelemetry SDK (clock, ids, export) are
//! installed by `kaelix serve` only. The simulator installs neither, so
//! [`sampler`] is `None`, no span is created and no header is changed:
//! simulated runs are exactly what they were without tracing.

use std::sync::OnceLock;

use kaelix_broker::message::Message;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span of the trace model.
pub const TARGET: &str = "kaelix::trace";

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// Decides whether a publish without a trace context starts a sampled
/// trace (installed once per process by `kaelix serve`).
pub trait RootSampler: Send + Sync + 'static {
    /// `true`: start a sampled trace now. The span created next on this
    /// thread as a root must be built before another call on this thread
    /// (the implementation may hand it the trace id it decided on).
    fn sample_root(&self) -> bool;
}

static SAMPLER: OnceLock<Box<dyn RootSampler>> = OnceLock::new();

/// Installs the process's root sampler: from now on publishes are traced.
/// It goes with the global `tracing` subscriber that carries the
/// OpenTelemetry layer, installed once per process the same way; `false`
/// if one was installed already.
pub fn install(sampler: Box<dyn RootSampler>) -> bool {
    SAMPLER.set(sampler).is_ok()
}

/// The installed root sampler (`None`: tracing is off).
#[inline]
pub fn sampler() -> Option<&'static dyn RootSampler> {
    SAMPLER.get().map(|b| &**b)
}

/// A message's headers as an OpenTelemetry carrier.
struct HeaderCarrier<'a>(&'a kaelix_broker::message::Headers);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

/// Collects what the propagator injects (then set on the message).
#[derive(Default)]
struct Collected(Vec<(String, String)>);

impl Injector for Collected {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// The trace context a message carries, if it carries a sampled one.
fn sampled_parent(message: &Message) -> Option<opentelemetry::Context> {
    message.headers().get(TRACEPARENT)?;
    let cx = TraceContextPropagator::new().extract(&HeaderCarrier(message.headers()));
    cx.span().span_context().is_sampled().then_some(cx)
}

/// The spans of one traced publish: the request, and the broker publish
/// under it (the future handing the message to the broker runs in it).
pub struct PublishTrace {
    /// `nats.publish` or `native.produce`.
    pub request: Span,
    /// `broker.publish`, the message's producer span.
    pub broker: Span,
}

/// Which front end a request came through.
#[derive(Clone, Copy, Debug)]
pub enum FrontEnd {
    /// NATS `PUB` / `HPUB`.
    Nats,
    /// Native `Produce`.
    Native,
}

/// Opens the spans of a publish to `subject` if it is to be traced (see
/// the module docs), continuing `carrier`'s sampled `traceparent` if it
/// has one. `None`: not traced (tracing off, an unsampled caller, or a
/// root the ratio left out).
pub fn begin_publish(front: FrontEnd, subject: &str, carrier: Option<&Message>) -> Option<PublishTrace> {
    let sampler = sampler()?;
    let parent = match carrier {
        // An unsampled caller: nothing to trace (parent-based).
        Some(m) if m.headers().get(TRACEPARENT).is_some() => Some(sampled_parent(m)?),
        _ => None,
    };
    if parent.is_none() && !sampler.sample_root() {
        return None;
    }
    let request = match front {
        FrontEnd::Nats => tracing::info_span!(
            target: TARGET,
            parent: None,
            "nats.publish",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kaelix",
            messaging.operation.type = "publish",
            messaging.destination.name = subject,
            network.protocol.name = "nats",
        ),
        FrontEnd::Native => tracing::info_span!(
            target: TARGET,
            parent: None,
            "native.produce",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kaelix",
            messaging.operation.type = "publish",
            messaging.destination.name = subject,
            network.protocol.name = "kaelix",
        ),
    };
    match parent {
        Some(cx) => {
            let _ = request.set_parent(cx);
        }
        // Built now, on this thread: the root takes the trace id the
        // sampler decided on (see `RootSampler::sample_root`).
        None => {
            let _ = request.context();
        }
    }
    let broker = tracing::info_span!(
        target: TARGET,
        parent: &request,
        "broker.publish",
        otel.kind = "producer",
        messaging.destination.name = subject,
    );
    Some(PublishTrace { request, broker })
}

impl PublishTrace {
    /// Sets `message`'s `traceparent` (and `tracestate`, if any) to the
    /// broker publish span, so whoever stores, forwards or delivers it
    /// continues this trace. A header that does not fit (the message
    /// already has the most headers allowed) is left out: the trace then
    /// ends at this node, the publish goes on.
    pub fn inject(&self, message: &mut Message) {
        let mut carrier = Collected::default();
        TraceContextPropagator::new().inject_context(&self.broker.context(), &mut carrier);
        // An empty `tracestate` (none was carried) is not a header.
        for (name, value) in carrier.0.into_iter().filter(|(_, v)| !v.is_empty()) {
            if let Err(e) = message.set_header(&name, value) {
                tracing::debug!(error = %e, "trace context not carried");
            }
        }
    }
}

/// The span of one delivery of `message` to a subscriber (`name`:
/// `nats.deliver` or `native.deliver`), a child of the span whose
/// context the message carries; `None` when tracing is off or the
/// message carries no sampled trace context.
pub fn begin_delivery(front: FrontEnd, message: &Message) -> Option<Span> {
    sampler()?;
    let cx = sampled_parent(message)?;
    let subject = message.topic().as_str();
    let span = match front {
        FrontEnd::Nats => tracing::info_span!(
            target: TARGET,
            parent: None,
            "nats.deliver",
            otel.kind = "consumer",
            messaging.system = "kaelix",
            messaging.operation.type = "deliver",
            messaging.destination.name = subject,
        ),
        FrontEnd::Native => tracing::info_span!(
            target: TARGET,
            parent: None,
            "native.deliver",
            otel.kind = "consumer",
            messaging.system = "kaelix",
            messaging.operation.type = "deliver",
            messaging.destination.name = subject,
        ),
    };
    let _ = span.set_parent(cx);
    Some(span)
}

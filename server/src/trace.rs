//! Distributed tracing of publishes: which spans exist, how a trace
//! crosses nodes, and what decides whether a publish is traced at all.
//!
//! **Spans** (OpenTelemetry SDK spans, built here directly with the
//! installed tracer):
//!
//! ```text
//! nats.publish | native.produce     (kind server: one client request)
//! └── broker.publish                (kind producer: its context goes into the message)
//!     └── raft.commit               (replicated topics, on the proposing node:
//!                                    proposal → forward → commit → outcome;
//!                                    kaelix-broker's `commit_trace` hook)
//! nats.deliver | native.deliver     (kind consumer, wherever the message is
//!                                    delivered, parent = the message's traceparent)
//! ```
//!
//! A span is an SDK span from the start: its name, kind and the messaging
//! attributes (static keys, static values but for the subject) go into a
//! `SpanBuilder`, and the tracer builds it under its parent's context; it
//! ends when it is dropped (or at the step that ends it). Nothing goes
//! through the `tracing` registry or a subscriber layer, and no parent is
//! looked up as "the current span": every parent is named — the request
//! for `broker.publish`, the message's `traceparent` for `raft.commit`
//! (the broker gets the message, not the front end's span) and for the
//! deliveries.
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
//! microseconds, more than a publish itself, so the front end decides
//! first and creates spans only for a publish that will be exported: a
//! carried `traceparent` decides by its sampled flag (an unsampled caller
//! gets no spans and its header is passed on untouched); without one the
//! ratio decides on a freshly drawn trace id, and the exporter's id
//! generator is then handed that same id for the root span (see
//! `kaelix_telemetry::otlp`), so the decision made here and the
//! exporter's own sampler agree on every trace.
//!
//! **What an untraced publish costs.** The decision runs on every publish,
//! so it is inlined and does no more than it must: one load of the
//! installed [`Tracing`], one draw of 64 bits from this thread's own
//! generator (a `SplitMix64` whose state sits in a thread-local `Cell`,
//! seeded once per thread by the installed [`RootSampler`]), one compare
//! of those bits against a threshold computed at install
//! ([`RootRatio`], the SDK's `TraceIdRatioBased` rule), and a look for a
//! `traceparent` header. Only a traced publish goes further (out of line):
//! parsing the carried context, or drawing the trace id's other half and
//! handing the id over through the one dynamic call, then the spans.
//!
//! **Determinism.** Nothing here reads a clock or the OS's randomness:
//! the sampler (the seed of the draws) and the OpenTelemetry SDK's tracer
//! (clock, ids, export) are installed by `kaelix serve` only. The
//! simulator installs neither, so [`installed`] is `None`, nothing is
//! drawn, no span is created and no header is changed: simulated runs are
//! exactly what they were without tracing.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};

use kaelix_broker::message::Message;
use kaelix_broker::{CommitSpan, CommitTracer};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};
use rand_xoshiro::SplitMix64;
use rand_xoshiro::rand_core::{Rng, SeedableRng};

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// What `kaelix serve` installs to turn tracing on: the ratio of roots to
/// sample, the seed of each thread's draws, and where the trace id of a
/// sampled root goes (the exporter's id generator).
pub trait RootSampler: Send + Sync + 'static {
    /// The fraction of publishes without a trace context that start a
    /// sampled trace, `0.0..=1.0` (read once, at [`install`]).
    fn ratio(&self) -> f64;

    /// 64 random bits seeding one thread's draws (called once per thread
    /// that decides a root).
    fn seed(&self) -> u64;

    /// A root was sampled with `trace_id`: the span created next on this
    /// thread as a root must get it (it is built before the next
    /// decision on this thread).
    fn hand_off(&self, trace_id: TraceId);
}

/// The `TraceIdRatioBased` rule of the OpenTelemetry SDK as one compare:
/// a trace id is sampled when its low 64 bits (big-endian, the id's last
/// 8 bytes), shifted right by one, are below `ratio * 2^63`. Equal to the
/// SDK's sampler on every id and ratio (tested against it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootRatio {
    /// `ratio * 2^63` as the SDK computes it; `u64::MAX` from ratio 1 on
    /// (the SDK samples everything there: every `low >> 1` is below it).
    bound: u64,
}

impl RootRatio {
    /// The rule at `ratio` (below 0 or NaN: nothing; 1 and above: all).
    pub fn new(ratio: f64) -> RootRatio {
        let bound = if ratio >= 1.0 { u64::MAX } else { (ratio.max(0.0) * (1u64 << 63) as f64) as u64 };
        RootRatio { bound }
    }

    /// Whether a trace id whose low 64 bits are `low` is sampled.
    #[inline]
    pub fn samples(self, low: u64) -> bool {
        (low >> 1) < self.bound
    }
}

/// The installed decision: the rule with its threshold precomputed, and
/// the sampler it came from (seeds and hand-offs).
pub struct Sampling {
    rule: RootRatio,
    source: Box<dyn RootSampler>,
}

impl Sampling {
    /// The decision `source` describes.
    pub fn new(source: Box<dyn RootSampler>) -> Sampling {
        Sampling { rule: RootRatio::new(source.ratio()), source }
    }

    /// The installed sampler.
    pub fn source(&self) -> &dyn RootSampler {
        &*self.source
    }

    /// 64 bits from this thread's generator, seeded from the installed
    /// sampler on the thread's first draw.
    #[inline]
    fn draw(&self) -> u64 {
        DRAWS.with(|cell| {
            // The generator itself moves out and back (a u64 and a tag):
            // no borrow flag, and nothing of rand_xoshiro's left out of line.
            let mut rng = cell.take().unwrap_or_else(|| self.seed_thread());
            let bits = rng.next_u64();
            cell.set(Some(rng));
            bits
        })
    }

    #[cold]
    #[inline(never)]
    fn seed_thread(&self) -> SplitMix64 {
        SplitMix64::seed_from_u64(self.source.seed())
    }

    /// Whether a publish whose first message is `carrier` is traced, and
    /// as what (see the module docs). Inlined: a publish the ratio leaves
    /// out and that carries no `traceparent` costs a draw, a compare and
    /// a header look-up.
    #[inline]
    pub fn decide(&self, carrier: Option<&Message>) -> Option<Decision> {
        let low = self.draw();
        let root = self.rule.samples(low);
        let carried = carrier.is_some_and(|m| !m.headers().is_empty() && m.headers().get(TRACEPARENT).is_some());
        if !root && !carried {
            return None;
        }
        self.decide_traced(carrier.filter(|_| carried), low)
    }

    /// The rest of [`Sampling::decide`], out of line: a carried context
    /// decides by its flag (parent-based, whatever the draw said); a root
    /// the ratio chose gets its trace id's high half and hands the id over.
    #[cold]
    #[inline(never)]
    fn decide_traced(&self, carrier: Option<&Message>, low: u64) -> Option<Decision> {
        if let Some(m) = carrier {
            // An unsampled (or unreadable) caller: nothing to trace.
            return sampled_parent(m).map(Decision::Child);
        }
        // A trace id is never all zero (W3C: invalid); the high half is
        // not part of the rule, so keeping it nonzero changes no decision.
        let high = self.draw().max(1);
        let id = TraceId::from((u128::from(high) << 64) | u128::from(low));
        self.source.hand_off(id);
        Some(Decision::Root(id))
    }
}

/// How a traced publish is traced.
#[derive(Debug)]
pub enum Decision {
    /// A new sampled trace with this id (handed to the id generator).
    Root(TraceId),
    /// Continuing the carried sampled context.
    Child(opentelemetry::Context),
}

thread_local! {
    /// This thread's generator for root decisions (`None`: not yet
    /// seeded). A `Cell` of a plain value: no borrow flag, no destructor,
    /// a TLS slot read and written in place.
    static DRAWS: Cell<Option<SplitMix64>> = const { Cell::new(None) };
}

/// The messaging attributes' keys (OpenTelemetry semantic conventions).
const SYSTEM: &str = "messaging.system";
const OPERATION: &str = "messaging.operation.type";
const DESTINATION: &str = "messaging.destination.name";
const PARTITION: &str = "messaging.destination.partition.id";
const OFFSET: &str = "messaging.message.offset";
const PROTOCOL: &str = "network.protocol.name";

/// Tracing as `kaelix serve` installs it: the root decision and the
/// OpenTelemetry SDK's tracer every span is built with.
pub struct Tracing {
    sampling: Sampling,
    tracer: SdkTracer,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// Installs the process's tracing: from now on publishes are traced,
/// their roots decided by `sampler` and their spans built by `tracer`
/// (the exporter's; its id generator takes the trace ids `sampler` hands
/// off). `false` if tracing was installed already.
pub fn install(sampler: Box<dyn RootSampler>, tracer: SdkTracer) -> bool {
    TRACING.set(Tracing::new(sampler, tracer)).is_ok()
}

/// The installed tracing (`None`: tracing is off).
#[inline]
pub fn installed() -> Option<&'static Tracing> {
    TRACING.get()
}

/// The installed decision (`None`: tracing is off).
#[inline]
pub fn sampler() -> Option<&'static Sampling> {
    installed().map(|t| &t.sampling)
}

/// Opens the spans of a publish to `subject` if it is to be traced (see
/// the module docs), continuing `carrier`'s sampled `traceparent` if it
/// has one. `None`: not traced (tracing off, an unsampled caller, or a
/// root the ratio left out).
#[inline]
pub fn begin_publish(front: FrontEnd, subject: &str, carrier: Option<&Message>) -> Option<PublishTrace> {
    installed()?.begin_publish(front, subject, carrier)
}

/// The span of one delivery of `message` to a subscriber, a child of the
/// span whose context the message carries; `None` when tracing is off or
/// the message carries no sampled trace context.
#[inline]
pub fn begin_delivery(front: FrontEnd, message: &Message) -> Option<Span> {
    installed()?.begin_delivery(front, message)
}

/// What the broker traces replicated publishes with (its `raft.commit`
/// spans), when tracing is installed.
pub fn commit_tracer() -> Option<Arc<dyn CommitTracer>> {
    installed().map(|t| Arc::new(Commits(t)) as Arc<dyn CommitTracer>)
}

impl Tracing {
    /// Tracing with roots decided by `sampler` and spans built by `tracer`.
    pub fn new(sampler: Box<dyn RootSampler>, tracer: SdkTracer) -> Tracing {
        Tracing { sampling: Sampling::new(sampler), tracer }
    }

    /// The root decision.
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// [`begin_publish`] with this tracing.
    #[inline]
    pub fn begin_publish(&self, front: FrontEnd, subject: &str, carrier: Option<&Message>) -> Option<PublishTrace> {
        let decision = self.sampling.decide(carrier)?;
        Some(self.open_publish(front, subject, decision))
    }

    /// The spans of a publish [`Sampling::decide`] chose (out of line: one
    /// publish in many).
    #[cold]
    #[inline(never)]
    fn open_publish(&self, front: FrontEnd, subject: &str, decision: Decision) -> PublishTrace {
        let (name, protocol) = match front {
            FrontEnd::Nats => ("nats.publish", "nats"),
            FrontEnd::Native => ("native.produce", "kaelix"),
        };
        // A root is built now, on this thread, with an empty parent: the
        // tracer's id generator gives it the trace id that was decided on
        // (see `RootSampler::hand_off`).
        let parent = match decision {
            Decision::Child(cx) => cx,
            Decision::Root(_) => Context::new(),
        };
        let request = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new(SYSTEM, "kaelix"),
                KeyValue::new(OPERATION, "publish"),
                KeyValue::new(DESTINATION, subject.to_owned()),
                KeyValue::new(PROTOCOL, protocol),
            ])
            .start_with_context(&self.tracer, &parent);
        let broker = SpanBuilder::from_name("broker.publish")
            .with_kind(SpanKind::Producer)
            .with_attributes([KeyValue::new(DESTINATION, subject.to_owned())])
            .start_with_context(&self.tracer, &local(request.span_context()));
        let context = local(broker.span_context());
        PublishTrace(Box::new(PublishSpans { request, broker, context }))
    }

    /// [`begin_delivery`] with this tracing.
    pub fn begin_delivery(&self, front: FrontEnd, message: &Message) -> Option<Span> {
        let parent = sampled_parent(message)?;
        let name = match front {
            FrontEnd::Nats => "nats.deliver",
            FrontEnd::Native => "native.deliver",
        };
        let span = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new(SYSTEM, "kaelix"),
                KeyValue::new(OPERATION, "deliver"),
                KeyValue::new(DESTINATION, message.topic().as_str().to_owned()),
            ])
            .start_with_context(&self.tracer, &parent);
        Some(span)
    }

    /// The `raft.commit` span of a replicated publish of `message`, if it
    /// carries a sampled context: the `broker.publish` span this node's
    /// front end set in it, so the parent is local (the header is how it
    /// reached the broker, not a hop between processes).
    pub fn begin_commit(&self, message: &Message) -> Option<Span> {
        let carried = sampled_parent(message)?;
        let sc = carried.span().span_context().clone();
        let parent =
            local(&SpanContext::new(sc.trace_id(), sc.span_id(), sc.trace_flags(), false, sc.trace_state().clone()));
        let span = SpanBuilder::from_name("raft.commit")
            .with_attributes([KeyValue::new(DESTINATION, message.topic().as_str().to_owned())])
            .start_with_context(&self.tracer, &parent);
        Some(span)
    }
}

/// A context whose span is `span` (a span of this process, or a carried
/// one), to build children under or inject.
fn local(span: &SpanContext) -> Context {
    Context::new().with_remote_span_context(span.clone())
}

/// The broker's [`CommitTracer`]: `raft.commit` spans from the installed
/// tracing.
struct Commits(&'static Tracing);

impl CommitTracer for Commits {
    fn begin(&self, message: &Message) -> Option<Box<dyn CommitSpan>> {
        self.0.begin_commit(message).map(|s| Box::new(Commit(s)) as Box<dyn CommitSpan>)
    }
}

/// An open `raft.commit` span.
struct Commit(Span);

impl CommitSpan for Commit {
    fn committed(mut self: Box<Self>, partition: u32, offset: u64) {
        self.0.set_attributes([
            KeyValue::new(PARTITION, i64::from(partition)),
            KeyValue::new(OFFSET, i64::try_from(offset).unwrap_or(i64::MAX)),
        ]);
        self.0.end();
    }

    fn failed(mut self: Box<Self>) {
        self.0.set_status(Status::error(""));
        self.0.end();
    }
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

/// Sets what the propagator injects as the message's headers. An empty
/// value (`tracestate` when none was carried) is not a header; a header
/// that does not fit (the message already has the most headers allowed)
/// is left out: the trace then ends at this node, the publish goes on.
struct MessageInjector<'a>(&'a mut Message);

impl Injector for MessageInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let Err(e) = self.0.set_header(key, value) {
            tracing::debug!(error = %e, "trace context not carried");
        }
    }
}

/// The trace context a message carries, if it carries a sampled one.
fn sampled_parent(message: &Message) -> Option<Context> {
    if message.headers().is_empty() {
        return None;
    }
    message.headers().get(TRACEPARENT)?;
    let cx = TraceContextPropagator::new().extract(&HeaderCarrier(message.headers()));
    cx.span().span_context().is_sampled().then_some(cx)
}

/// The spans of one traced publish: the request, and the broker publish
/// under it. The request span ends when this is dropped (the front end
/// keeps it until the request is answered); the broker publish at
/// [`PublishTrace::routed`] or then.
///
/// One pointer: a front end holds an `Option<PublishTrace>` across its
/// awaits, and dropping a `None` of it is then a null check inlined where
/// it is dropped. With the spans inline the `Option`'s drop glue was an
/// out-of-line call on every untraced publish (0.1 % of the server's
/// profile samples with tracing off).
pub struct PublishTrace(Box<PublishSpans>);

struct PublishSpans {
    /// `nats.publish` or `native.produce`.
    request: Span,
    /// `broker.publish`, the message's producer span.
    broker: Span,
    /// `broker.publish`'s context, injected into the messages.
    context: Context,
}

/// Which front end a request came through.
#[derive(Clone, Copy, Debug)]
pub enum FrontEnd {
    /// NATS `PUB` / `HPUB`.
    Nats,
    /// Native `Produce`.
    Native,
}

impl PublishTrace {
    /// Sets `message`'s `traceparent` (and `tracestate`, if any) to the
    /// broker publish span, so whoever stores, forwards or delivers it
    /// continues this trace.
    pub fn inject(&self, message: &mut Message) {
        TraceContextPropagator::new().inject_context(&self.0.context, &mut MessageInjector(message));
    }

    /// The broker has taken the message (`ok`) or refused it: the broker
    /// publish ends, and a refusal marks the request as failed.
    pub fn routed(&mut self, ok: bool) {
        self.0.broker.end();
        if !ok {
            self.0.request.set_status(Status::error(""));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use opentelemetry::Value;
    use opentelemetry::trace::{SpanId, SpanKind, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{
        IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SdkTracerProvider, ShouldSample, SpanData,
        SpanProcessor,
    };

    use super::*;

    /// A sampler that records its seeds and hand-offs.
    #[derive(Clone, Default)]
    struct Recorder {
        ratio: f64,
        seeds: Arc<AtomicUsize>,
        handed: Arc<Mutex<Vec<TraceId>>>,
    }

    impl RootSampler for Recorder {
        fn ratio(&self) -> f64 {
            self.ratio
        }
        fn seed(&self) -> u64 {
            // Distinct fixed seeds: the tests are repeatable.
            0x5eed_0000 + self.seeds.fetch_add(1, Ordering::Relaxed) as u64
        }
        fn hand_off(&self, trace_id: TraceId) {
            self.handed.lock().unwrap().push(trace_id);
        }
    }

    fn sampling(ratio: f64) -> (Sampling, Recorder) {
        let recorder = Recorder { ratio, ..Recorder::default() };
        (Sampling::new(Box::new(recorder.clone())), recorder)
    }

    fn sdk_samples(ratio: f64, id: TraceId) -> bool {
        let result = Sampler::TraceIdRatioBased(ratio).should_sample(None, id, "", &SpanKind::Server, &[], &[]);
        result.decision == SamplingDecision::RecordAndSample
    }

    fn message(traceparent: Option<&str>) -> Message {
        let builder = Message::builder().topic("orders").payload("x");
        match traceparent {
            Some(t) => builder.header(TRACEPARENT, t.to_owned()).build().unwrap(),
            None => builder.build().unwrap(),
        }
    }

    #[test]
    fn the_rule_is_the_sdks_on_every_id() {
        let mut rng = SplitMix64::seed_from_u64(7);
        for ratio in [-0.5, 0.0, 1e-4, 0.001, 0.01, 0.25, 0.5, 0.999, 1.0, 1.5] {
            let rule = RootRatio::new(ratio);
            let b = rule.bound;
            let mut lows = vec![0u64, 1, 2, u64::MAX, u64::MAX - 1, b << 1, (b << 1) | 1];
            lows.extend([b.wrapping_sub(1) << 1, b.wrapping_add(1) << 1]);
            lows.extend((0..20_000).map(|_| rng.next_u64()));
            for low in lows {
                let id = TraceId::from((u128::from(rng.next_u64()) << 64) | u128::from(low));
                assert_eq!(rule.samples(low), sdk_samples(ratio, id), "ratio {ratio}, low {low:#x}");
            }
        }
    }

    #[test]
    fn the_fraction_of_roots_sampled_is_the_ratio() {
        const N: u64 = 400_000;
        for ratio in [0.001, 0.25] {
            let (s, recorder) = sampling(ratio);
            let mut roots = Vec::new();
            for _ in 0..N {
                match s.decide(None) {
                    Some(Decision::Root(id)) => roots.push(id),
                    Some(Decision::Child(_)) => panic!("no carrier, no parent"),
                    None => {}
                }
            }
            // Binomial(N, ratio): 6 standard deviations either side.
            let (mean, sd) = (N as f64 * ratio, (N as f64 * ratio * (1.0 - ratio)).sqrt());
            let yes = roots.len() as f64;
            assert!((mean - 6.0 * sd..=mean + 6.0 * sd).contains(&yes), "ratio {ratio}: {yes} of {N}");
            // Every root's id went to the id generator, and the SDK's own
            // sampler, seeing that id, says yes too.
            assert_eq!(*recorder.handed.lock().unwrap(), roots);
            assert!(roots.iter().all(|&id| sdk_samples(ratio, id) && id != TraceId::INVALID));
            let distinct: std::collections::BTreeSet<u128> =
                roots.iter().map(|id| u128::from_be_bytes(id.to_bytes())).collect();
            assert_eq!(distinct.len(), roots.len(), "trace ids repeat");
        }
    }

    #[test]
    fn ratio_zero_samples_no_root_and_ratio_one_every_root() {
        let (never, recorder) = sampling(0.0);
        assert!((0..100_000).all(|_| never.decide(None).is_none()));
        assert!(never.decide(Some(&message(None))).is_none(), "a carrier without a context is a root");
        assert!(recorder.handed.lock().unwrap().is_empty());
        let (always, recorder) = sampling(1.0);
        assert!((0..10_000).all(|_| matches!(always.decide(Some(&message(None))), Some(Decision::Root(_)))));
        assert_eq!(recorder.handed.lock().unwrap().len(), 10_000);
    }

    #[test]
    fn a_carried_context_decides_by_its_flag_whatever_the_ratio() {
        let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let (never, recorder) = sampling(0.0);
        for _ in 0..1000 {
            let Some(Decision::Child(cx)) = never.decide(Some(&message(Some(sampled)))) else {
                panic!("a sampled parent is traced at ratio 0");
            };
            let parent = cx.span().span_context().clone();
            assert_eq!(parent.trace_id(), TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap());
            assert!(parent.is_sampled() && parent.is_remote());
        }
        let (always, _) = sampling(1.0);
        for _ in 0..1000 {
            assert!(always.decide(Some(&message(Some(unsampled)))).is_none(), "an unsampled parent is not");
            assert!(always.decide(Some(&message(Some("not a context")))).is_none(), "nor an unreadable one");
        }
        assert!(recorder.handed.lock().unwrap().is_empty(), "a child takes its parent's trace id");
    }

    #[test]
    #[allow(clippy::disallowed_methods, reason = "threads, to see one seed per thread")]
    fn each_thread_is_seeded_once() {
        let (s, recorder) = sampling(0.5);
        let s = Arc::new(s);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                let s = Arc::clone(&s);
                scope.spawn(move || (0..1000).for_each(|_| drop(s.decide(None))));
            }
        });
        assert_eq!(recorder.seeds.load(Ordering::Relaxed), 3);
    }

    /// The spans the SDK ended, in order (a span processor).
    #[derive(Clone, Debug, Default)]
    struct Ended(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Ended {
        fn on_start(&self, _: &mut Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: std::time::Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    /// The tracer's id generator here, as the exporter's: a root takes the
    /// trace id the sampler handed off last; every id it gave is kept.
    #[derive(Debug)]
    struct TakesHandedIds {
        handed: Arc<Mutex<Vec<TraceId>>>,
        given: Arc<Mutex<Vec<TraceId>>>,
        random: RandomIdGenerator,
    }

    impl IdGenerator for TakesHandedIds {
        fn new_trace_id(&self) -> TraceId {
            let id = self.handed.lock().unwrap().pop().unwrap_or_else(|| self.random.new_trace_id());
            self.given.lock().unwrap().push(id);
            id
        }
        fn new_span_id(&self) -> SpanId {
            self.random.new_span_id()
        }
    }

    /// Tracing at `ratio` over a real SDK tracer (sampler
    /// `ParentBased(TraceIdRatioBased(ratio))`, as `kaelix serve` builds
    /// it); leaked, as the installed one lives for the process.
    struct Traced {
        tracing: &'static Tracing,
        ended: Ended,
        given: Arc<Mutex<Vec<TraceId>>>,
        _provider: SdkTracerProvider,
    }

    fn traced(ratio: f64) -> Traced {
        let recorder = Recorder { ratio, ..Recorder::default() };
        let ended = Ended::default();
        let given = Arc::new(Mutex::new(Vec::new()));
        let ids = TakesHandedIds {
            handed: recorder.handed.clone(),
            given: given.clone(),
            random: RandomIdGenerator::default(),
        };
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
            .with_id_generator(ids)
            .with_span_processor(ended.clone())
            .build();
        let tracing = Box::leak(Box::new(Tracing::new(Box::new(recorder), provider.tracer("test"))));
        Traced { tracing, ended, given, _provider: provider }
    }

    impl Traced {
        fn spans(&self) -> Vec<SpanData> {
            self.ended.0.lock().unwrap().clone()
        }
    }

    fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
        let found: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} among {spans:#?}");
        found[0]
    }

    fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
    }

    fn header(m: &Message, name: &str) -> Option<String> {
        m.headers().get(name).map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    fn ids(span: &SpanData) -> (String, String) {
        (span.span_context.trace_id().to_string(), span.span_context.span_id().to_string())
    }

    /// A root publish, the replication of its message and its delivery:
    /// one trace, each span under the one it names as parent — the
    /// commit and the delivery found through the message's header alone —,
    /// the header the broker publish's context, kinds and attributes as
    /// documented, the broker publish ended when the broker took the
    /// message, before the request.
    #[test]
    fn a_publish_its_commit_and_its_delivery_are_one_linked_trace() {
        let t = traced(1.0);
        let mut m = message(None);
        let mut publish = t.tracing.begin_publish(FrontEnd::Nats, "orders", Some(&m)).expect("ratio 1: traced");
        publish.inject(&mut m);
        let commit = Commits(t.tracing).begin(&m).expect("the message carries a sampled context");
        publish.routed(true);
        commit.committed(2, 41);
        drop(publish);
        drop(t.tracing.begin_delivery(FrontEnd::Native, &m).expect("a delivery of a traced message"));

        let spans = t.spans();
        assert_eq!(spans.len(), 4, "{spans:#?}");
        let request = named(&spans, "nats.publish");
        let broker = named(&spans, "broker.publish");
        let raft = named(&spans, "raft.commit");
        let deliver = named(&spans, "native.deliver");
        let (trace, broker_span) = ids(broker);
        assert!(spans.iter().all(|s| ids(s).0 == trace && s.span_context.is_sampled()), "one sampled trace");
        assert_eq!(t.given.lock().unwrap().as_slice(), [request.span_context.trace_id()], "the decided id");
        assert_eq!((request.parent_span_id, &request.span_kind), (SpanId::INVALID, &SpanKind::Server));
        assert_eq!(attribute(request, "messaging.destination.name"), Some(&Value::from("orders")));
        assert_eq!(attribute(request, "network.protocol.name"), Some(&Value::from("nats")));
        assert_eq!(attribute(request, "messaging.operation.type"), Some(&Value::from("publish")));
        assert_eq!(
            (broker.parent_span_id, broker.parent_span_is_remote, &broker.span_kind),
            (request.span_context.span_id(), false, &SpanKind::Producer)
        );
        assert_eq!(header(&m, TRACEPARENT), Some(format!("00-{trace}-{broker_span}-01")));
        assert_eq!(header(&m, "tracestate"), None, "no state carried, none set");
        assert_eq!(
            (raft.parent_span_id, raft.parent_span_is_remote, &raft.span_kind),
            (broker.span_context.span_id(), false, &SpanKind::Internal),
            "the commit's parent is this node's broker publish"
        );
        assert_eq!(attribute(raft, "messaging.destination.partition.id"), Some(&Value::I64(2)));
        assert_eq!(attribute(raft, "messaging.message.offset"), Some(&Value::I64(41)));
        assert_eq!(
            (deliver.parent_span_id, deliver.parent_span_is_remote, &deliver.span_kind),
            (broker.span_context.span_id(), true, &SpanKind::Consumer),
            "a delivery continues the carried context, wherever it happens"
        );
        assert!(broker.end_time <= request.end_time && request.start_time <= broker.start_time);
        assert_eq!((&request.status, &raft.status), (&Status::Unset, &Status::Unset));
    }

    /// A carried sampled context is continued (the caller's span is the
    /// request's parent, its trace and state go on in the header); an
    /// unsampled one gets no span and keeps its header; a message without
    /// a sampled context gets no commit or delivery span; failures mark
    /// the request and the commit.
    #[test]
    fn carried_contexts_are_continued_or_left_alone_and_failures_are_marked() {
        let t = traced(0.0);
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut m = Message::builder()
            .topic("orders")
            .payload("x")
            .header(TRACEPARENT, caller)
            .header("tracestate", "vendor=abc")
            .build()
            .unwrap();
        let mut publish = t.tracing.begin_publish(FrontEnd::Native, "orders", Some(&m)).expect("a sampled caller");
        publish.inject(&mut m);
        let commit = Commits(t.tracing).begin(&m).unwrap();
        publish.routed(false);
        commit.failed();
        drop(publish);
        let spans = t.spans();
        let request = named(&spans, "native.produce");
        let broker = named(&spans, "broker.publish");
        assert_eq!(ids(request).0, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(request.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert!(request.parent_span_is_remote);
        assert_eq!(attribute(request, "network.protocol.name"), Some(&Value::from("kaelix")));
        assert_eq!(header(&m, TRACEPARENT), Some(format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", ids(broker).1)));
        assert_eq!(header(&m, "tracestate").as_deref(), Some("vendor=abc"));
        assert_eq!(request.status, Status::error(""));
        assert_eq!(broker.status, Status::Unset);
        assert_eq!(named(&spans, "raft.commit").status, Status::error(""));
        assert!(t.given.lock().unwrap().is_empty(), "a continued trace draws no trace id");

        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let m = message(Some(unsampled));
        assert!(t.tracing.begin_publish(FrontEnd::Nats, "orders", Some(&m)).is_none());
        assert!(Commits(t.tracing).begin(&m).is_none());
        assert!(t.tracing.begin_delivery(FrontEnd::Nats, &m).is_none());
        assert_eq!(header(&m, TRACEPARENT).as_deref(), Some(unsampled));
        let plain = message(None);
        assert!(t.tracing.begin_publish(FrontEnd::Nats, "orders", Some(&plain)).is_none(), "ratio 0: no root");
        assert!(
            Commits(t.tracing).begin(&plain).is_none() && t.tracing.begin_delivery(FrontEnd::Nats, &plain).is_none()
        );
        assert_eq!(t.spans().len(), 3, "nothing more was exported");
    }

    /// Every traced root is exported with the trace id decided for it —
    /// had the tracer's sampler, seeing that id, disagreed, the span would
    /// not be recorded — and no other publish makes a span.
    #[test]
    fn every_root_decided_is_exported_with_its_decided_id() {
        let t = traced(0.3);
        let mut traced_publishes = 0;
        for _ in 0..2000 {
            if let Some(p) = t.tracing.begin_publish(FrontEnd::Nats, "orders", None) {
                traced_publishes += 1;
                drop(p);
            }
        }
        let spans = t.spans();
        let roots: Vec<TraceId> =
            spans.iter().filter(|s| s.name == "nats.publish").map(|s| s.span_context.trace_id()).collect();
        assert!((450..=750).contains(&traced_publishes), "{traced_publishes} of 2000 at 0.3");
        assert_eq!(roots.len(), traced_publishes, "every decided root is recorded");
        assert_eq!(*t.given.lock().unwrap(), roots, "each with the id handed off for it");
        assert!(roots.iter().all(|&id| sdk_samples(0.3, id)));
        assert_eq!(spans.len(), 2 * traced_publishes);
    }
}

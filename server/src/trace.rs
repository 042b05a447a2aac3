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
//! installed [`Sampling`], one draw of 64 bits from this thread's own
//! generator (a `SplitMix64` whose state sits in a thread-local `Cell`,
//! seeded once per thread by the installed [`RootSampler`]), one compare
//! of those bits against a threshold computed at install
//! ([`RootRatio`], the SDK's `TraceIdRatioBased` rule), and a look for a
//! `traceparent` header. Only a traced publish goes further (out of line):
//! parsing the carried context, or drawing the trace id's other half and
//! handing the id over through the one dynamic call, then the spans.
//!
//! **Determinism.** Nothing here reads a clock or the OS's randomness:
//! the sampler (the seed of the draws) and the OpenTelemetry SDK (clock,
//! ids, export) are installed by `kaelix serve` only. The simulator
//! installs neither, so [`sampler`] is `None`, nothing is drawn, no span
//! is created and no header is changed: simulated runs are exactly what
//! they were without tracing.

use std::cell::Cell;
use std::sync::OnceLock;

use kaelix_broker::message::Message;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rand_xoshiro::SplitMix64;
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span of the trace model.
pub const TARGET: &str = "kaelix::trace";

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

static SAMPLING: OnceLock<Sampling> = OnceLock::new();

/// Installs the process's root sampler: from now on publishes are traced.
/// It goes with the global `tracing` subscriber that carries the
/// OpenTelemetry layer, installed once per process the same way; `false`
/// if one was installed already.
pub fn install(sampler: Box<dyn RootSampler>) -> bool {
    SAMPLING.set(Sampling::new(sampler)).is_ok()
}

/// The installed decision (`None`: tracing is off).
#[inline]
pub fn sampler() -> Option<&'static Sampling> {
    SAMPLING.get()
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
#[inline]
pub fn begin_publish(front: FrontEnd, subject: &str, carrier: Option<&Message>) -> Option<PublishTrace> {
    let decision = sampler()?.decide(carrier)?;
    Some(open_publish(front, subject, decision))
}

/// The spans of a publish [`Sampling::decide`] chose (out of line: one
/// publish in many).
#[cold]
#[inline(never)]
fn open_publish(front: FrontEnd, subject: &str, decision: Decision) -> PublishTrace {
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
    match decision {
        Decision::Child(cx) => {
            let _ = request.set_parent(cx);
        }
        // Built now, on this thread: the root takes the trace id that
        // was decided on (see `RootSampler::hand_off`).
        Decision::Root(_) => {
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
    PublishTrace { request, broker }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::SpanKind;
    use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};

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
}

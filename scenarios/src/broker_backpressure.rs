//! Scenario `broker-backpressure`: every backpressure strategy against its
//! specification, judged from what publishers and consumers saw.
//!
//! * **Node**: one node hosting the embedded broker (memory topics); its
//!   clock may be skewed, drift or step, and it may pause. Nothing crashes.
//! * **Workload**: 2–4 publishers publish numbered messages one at a time
//!   (random topic among `feed.a` / `feed.b`, random priority, bursts and
//!   pauses; each publisher's messages a recorded list drawn before it
//!   starts, `crate::workload`, which `sim shrink` cuts); four subscribers, one per strategy with a capacity drawn per
//!   seed, and a queue group of three consume with random delays, some
//!   slower than the publishers.
//!   Then the broker shuts down and every subscriber drains its buffer.
//!
//! # The check: each stream behaves as its strategy's specification
//!
//! The simulator runs one task at a time and a publish or a delivery takes
//! effect inside one poll, so the order in which publishers and consumers
//! *record* their calls is the order in which the broker applied them. The
//! checker replays that log through a reference model of each stream's
//! buffer — written from the strategy's documented rules, sharing no code
//! with the broker — and demands that every delivery is the message the
//! model says comes next, that a blocking stream never lets a publish
//! through while full, and that nothing the model still holds is missing
//! when the stream ends:
//!
//! * **drop-oldest** (capacity C): full → the oldest buffered message is
//!   dropped; the newest always arrive;
//! * **block** (capacity C): nothing is ever dropped, no publish passes a
//!   full buffer;
//! * **grow** (initial, max): nothing is dropped below `max` buffered; at
//!   `max` the newest is refused;
//! * **shed-low-priority** (capacity C): at or above 75 % full, `low` and
//!   `normal` messages are shed; `high` and `critical` are buffered until
//!   full, when the oldest message below `high` (else the oldest) makes room;
//! * **queue group** (three members, each growing to its own cap): each
//!   message reaches at most one member, in order there; no member holds
//!   more than its cap; a message is dropped only if, when it was
//!   published, no member had room.
//!
//! No broker counter is read: drops are inferred by the model, not taken
//! from `DropCounts`.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_broker::message::Message;
use kaelix_broker::topic::{Pattern, Topic};
use kaelix_broker::{Broker, BrokerConfig, Strategy, SubscribeOptions, Subscription, TopicConfig};
use kaelix_core::NodeId;
use kaelix_core::planted::{Planted, PlantedBug};
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::{Clock, Priority, Runtime, Spawner};
use kaelix_core::time::Duration;
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::trace::TraceSink;
use kaelix_sim::{FaultProfile, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig, Tolerance};

use crate::checker::Observations;
use crate::metrics::RunMetrics;
use crate::{RunReport, Scenario, Tallies};

/// The backpressure scenario (or a planted-bug variant of it).
pub struct BrokerBackpressureScenario {
    name: &'static str,
    description: &'static str,
    planted: Option<PlantedBug>,
}

/// The registered instance.
pub static BROKER_BACKPRESSURE: BrokerBackpressureScenario = BrokerBackpressureScenario {
    name: "broker-backpressure",
    description: "every backpressure strategy replayed against a reference model of its specification (drop-oldest, block, grow, shed-low-priority)",
    planted: None,
};

/// Planted: a full drop-oldest buffer drops the arriving message instead.
#[cfg(feature = "planted-bugs")]
pub static BROKER_BACKPRESSURE_DROP_NEWEST: BrokerBackpressureScenario = BrokerBackpressureScenario {
    name: "broker-backpressure-drop-newest",
    description: "[planted bug] a full drop-oldest buffer drops the newest message",
    planted: Some(PlantedBug::BrokerDropOldestDropsNewest),
};

/// Planted: a full blocking buffer drops instead of making the publisher wait.
#[cfg(feature = "planted-bugs")]
pub static BROKER_BACKPRESSURE_BLOCK_DROPS: BrokerBackpressureScenario = BrokerBackpressureScenario {
    name: "broker-backpressure-block-drops",
    description: "[planted bug] a full blocking buffer drops the message instead of blocking the publisher",
    planted: Some(PlantedBug::BrokerBlockDropsWhenFull),
};

/// Planted: a growing buffer never grows past its initial capacity.
#[cfg(feature = "planted-bugs")]
pub static BROKER_BACKPRESSURE_GROW_STUCK: BrokerBackpressureScenario = BrokerBackpressureScenario {
    name: "broker-backpressure-grow-stuck",
    description: "[planted bug] a growing buffer refuses messages at its initial capacity",
    planted: Some(PlantedBug::BrokerGrowStuckAtInitial),
};

/// Planted: a queue group ignores which members have room.
#[cfg(feature = "planted-bugs")]
pub static BROKER_BACKPRESSURE_QUEUE_IGNORES_ROOM: BrokerBackpressureScenario = BrokerBackpressureScenario {
    name: "broker-backpressure-queue-ignores-room",
    description: "[planted bug] a queue group hands messages out in turn whether or not the member has room",
    planted: Some(PlantedBug::BrokerQueueGroupIgnoresRoom),
};

/// Planted: shedding also sheds `high` messages.
#[cfg(feature = "planted-bugs")]
pub static BROKER_BACKPRESSURE_SHED_HIGH: BrokerBackpressureScenario = BrokerBackpressureScenario {
    name: "broker-backpressure-shed-high",
    description: "[planted bug] shedding under pressure also sheds high-priority messages",
    planted: Some(PlantedBug::BrokerShedHighPriority),
};

const NODE: NodeId = NodeId(1);
const TOLERANCE: Tolerance = Tolerance { max_down: 0, faulty_disks: 0, power_loss: false };
const BOUND: Duration = Duration::from_secs(60);
const PRIORITIES: [&str; 4] = ["low", "normal", "high", "critical"];
/// Labels the generators the publishers' operation lists are drawn from.
const WORKLOAD_LABEL: u64 = 0xbac4_0a11;

/// (publisher, seq).
type Identity = (u32, u32);

/// The queue group `workers` on `feed.>`: each member a growing buffer
/// (initial 1) with its own cap. Member `j` is stream `STREAMS + j`.
fn queue_members(plan: &mut DetRng) -> Vec<usize> {
    (0..3).map(|_| plan.random_range(2..=5)).collect()
}

/// Plain streams before the queue members (their indices).
const STREAMS: usize = 4;

/// One call, in the order the broker applied it.
#[derive(Clone, Debug)]
enum Event {
    Published { id: Identity, topic: Topic, priority: usize },
    Delivered { stream: usize, id: Identity },
    Ended { stream: usize },
}

#[derive(Default)]
struct Observed {
    events: Vec<Event>,
    /// Whether the run is metered: then `broker` holds the broker, whose
    /// counters are read once the run ends.
    metered: bool,
    broker: Option<Broker<SimRuntime>>,
    violation: Option<String>,
}

impl Observations for Observed {
    fn violation(&mut self) -> &mut Option<String> {
        &mut self.violation
    }
}

type Checker = crate::checker::Checker<Observed>;

fn record(checker: &Checker, e: Event) {
    checker.lock().events.push(e);
}

/// The streams of one run: name, pattern, strategy.
fn streams(plan: &mut DetRng) -> Vec<(&'static str, &'static str, Strategy)> {
    let initial = plan.random_range(1..=3);
    vec![
        ("drop-oldest", "feed.>", Strategy::DropOldest { capacity: plan.random_range(2..=8) }),
        ("block", "feed.a", Strategy::Block { capacity: plan.random_range(2..=6) }),
        ("grow", "feed.*", Strategy::Grow { initial, max: initial * plan.random_range(2..=6) }),
        ("shed", "feed.>", Strategy::ShedLowPriority { capacity: plan.random_range(4..=12) }),
    ]
}

fn identity(m: &Message) -> Identity {
    let p = m.payload();
    (u32::from_le_bytes(p[..4].try_into().expect("4 bytes")), u32::from_le_bytes(p[4..8].try_into().expect("4 bytes")))
}

/// One operation of a publisher: after `pause` (zero inside a burst of
/// back-to-back publishes), publish one message to `feed.a` or `feed.b`
/// with priority `PRIORITIES[priority]`. Sequence numbers are given at run
/// time, in order.
#[derive(Clone, Debug)]
struct PublishOp {
    pause: Duration,
    feed_a: bool,
    priority: usize,
}

/// A publisher's operations: `count` messages in bursts of 1–11, each
/// burst after a pause of up to 4 ms.
fn draw_publishes(rng: &mut DetRng, count: u32) -> Vec<PublishOp> {
    let mut burst = 0u32;
    (0..count)
        .map(|_| {
            let mut pause = Duration::ZERO;
            if burst == 0 {
                pause = Duration::from_micros(rng.random_range(0..4000));
                burst = rng.random_range(1..12);
            }
            burst -= 1;
            let feed_a = rng.random_bool(0.5);
            let priority = rng.random_range(0..PRIORITIES.len());
            PublishOp { pause, feed_a, priority }
        })
        .collect()
}

async fn publisher(rt: SimRuntime, broker: Broker<SimRuntime>, id: u32, ops: Vec<PublishOp>, checker: Checker) {
    for (seq, op) in (1..).zip(ops) {
        if !op.pause.is_zero() {
            // A pause, then a burst of back-to-back publishes.
            rt.sleep(op.pause).await;
        }
        let topic = if op.feed_a { "feed.a" } else { "feed.b" };
        let priority = op.priority;
        let mut payload = BytesMut::with_capacity(8);
        payload.put_u32_le(id);
        payload.put_u32_le(seq);
        let message = Message::builder()
            .topic(topic)
            .payload(payload.freeze())
            .header("priority", Bytes::from_static(PRIORITIES[priority].as_bytes()))
            .build()
            .expect("valid message");
        // Recorded right after the call returns: nothing runs in between
        // (see the module docs), so the log order is the broker's order.
        match broker.publish(message).await {
            Ok(_) => {
                record(&checker, Event::Published { id: (id, seq), topic: Topic::new(topic).expect("valid"), priority })
            }
            Err(e) => return checker.fail(format!("publisher {id}: publish failed: {e}")),
        }
    }
}

async fn consumer(rt: SimRuntime, mut sub: Subscription<SimRuntime>, stream: usize, checker: Checker) {
    let mut rng = rt.rng();
    // Each consumer has its own pace: some keep up, some fall far behind.
    let slowest = rng.random_range(50..6000u64);
    while let Some(m) = sub.next().await {
        record(&checker, Event::Delivered { stream, id: identity(&m) });
        rt.sleep(Duration::from_micros(rng.random_range(0..slowest))).await;
    }
    record(&checker, Event::Ended { stream });
}

async fn workload(rt: SimRuntime, mut plan: DetRng, planted: Planted, checker: Checker) {
    let config = BrokerConfig { auto_create: None, planted, ..BrokerConfig::default() };
    let broker = Broker::new(rt.clone(), rt.rng(), config);
    {
        let mut o = checker.lock();
        if o.metered {
            o.broker = Some(broker.clone());
        }
    }
    for t in ["feed.a", "feed.b"] {
        broker.create_topic(t, TopicConfig { partitions: 2, ..TopicConfig::default() }).expect("creates");
    }
    let consumers: Vec<_> = streams(&mut plan)
        .into_iter()
        .enumerate()
        .map(|(i, (_, pattern, strategy))| {
            let sub = broker
                .subscribe(
                    pattern,
                    SubscribeOptions { strategy: Some(strategy), queue_group: None, ..SubscribeOptions::default() },
                )
                .expect("subscribes");
            rt.spawn(Priority::Normal, "consumer", consumer(rt.clone(), sub, i, checker.clone()))
        })
        .collect();
    let members: Vec<_> = queue_members(&mut plan)
        .into_iter()
        .enumerate()
        .map(|(j, max)| {
            let options = SubscribeOptions {
                strategy: Some(Strategy::Grow { initial: 1, max }),
                queue_group: Some("workers".into()),
                ..SubscribeOptions::default()
            };
            let sub = broker.subscribe("feed.>", options).expect("subscribes");
            rt.spawn(Priority::Normal, "queue-member", consumer(rt.clone(), sub, STREAMS + j, checker.clone()))
        })
        .collect();
    let base: u64 = plan.clone().random();
    let publishers: Vec<_> = (0..plan.random_range(2..=4u32))
        .map(|id| {
            let count = plan.random_range(40..200);
            let ops = crate::workload::recorded(base, WORKLOAD_LABEL, u64::from(id), |rng| draw_publishes(rng, count));
            rt.spawn(Priority::High, "publisher", publisher(rt.clone(), broker.clone(), id, ops, checker.clone()))
        })
        .collect();
    for p in publishers {
        let _ = p.await;
    }
    broker.shutdown();
    for c in consumers.into_iter().chain(members) {
        let _ = c.await;
    }
    checker.finish();
}

/// A reference model of one stream's buffer (see the module docs).
struct Model {
    name: &'static str,
    pattern: Pattern,
    strategy: Strategy,
    queue: VecDeque<(Identity, usize)>,
}

impl Model {
    fn publish(&mut self, id: Identity, priority: usize) -> Result<(), String> {
        let q = &mut self.queue;
        match self.strategy {
            Strategy::DropOldest { capacity } => {
                if q.len() == capacity {
                    q.pop_front();
                }
                q.push_back((id, priority));
            }
            Strategy::Block { capacity } => {
                if q.len() >= capacity {
                    return Err(format!(
                        "{}: publish of {id:?} went through while the blocking buffer held {} of {capacity}",
                        self.name,
                        q.len()
                    ));
                }
                q.push_back((id, priority));
            }
            Strategy::Grow { max, .. } => {
                if q.len() < max {
                    q.push_back((id, priority));
                }
            }
            Strategy::ShedLowPriority { capacity } => {
                let high = 2; // index of "high" in PRIORITIES
                let elevated = q.len() as f64 / capacity as f64 >= 0.75;
                if elevated && priority < high {
                    return Ok(());
                }
                if q.len() == capacity {
                    let victim = q.iter().position(|&(_, p)| p < high).unwrap_or(0);
                    q.remove(victim);
                }
                q.push_back((id, priority));
            }
        }
        Ok(())
    }

    fn deliver(&mut self, id: Identity) -> Result<(), String> {
        match self.queue.pop_front() {
            Some((want, _)) if want == id => Ok(()),
            Some((want, _)) => Err(format!(
                "{} ({:?}): delivered publisher {} seq {}, but by its rules the next message is publisher {} seq {}",
                self.name, self.strategy, id.0, id.1, want.0, want.1
            )),
            None => Err(format!(
                "{} ({:?}): delivered publisher {} seq {}, but by its rules nothing is buffered",
                self.name, self.strategy, id.0, id.1
            )),
        }
    }
}

fn check(o: &Observed, plan: &mut DetRng) -> Result<(), String> {
    if let Some(v) = &o.violation {
        return Err(v.clone());
    }
    let mut models: Vec<Model> = streams(plan)
        .into_iter()
        .map(|(name, pattern, strategy)| Model {
            name,
            pattern: Pattern::new(pattern).expect("valid"),
            strategy,
            queue: VecDeque::new(),
        })
        .collect();
    let mut group = QueueGroupModel::new(queue_members(plan), &o.events)?;
    let mut ended = vec![false; models.len() + group.caps.len()];
    for e in &o.events {
        match e {
            Event::Published { id, topic, priority } => {
                for m in models.iter_mut().filter(|m| m.pattern.matches(topic)) {
                    m.publish(*id, *priority)?;
                }
                group.publish(*id)?;
            }
            Event::Delivered { stream, id } if *stream >= STREAMS => group.deliver(*stream - STREAMS, *id)?,
            Event::Delivered { stream, id } => models[*stream].deliver(*id)?,
            Event::Ended { stream } if *stream >= STREAMS => {
                group.ended(*stream - STREAMS)?;
                ended[*stream] = true;
            }
            Event::Ended { stream } => {
                let m = &models[*stream];
                if let Some((id, _)) = m.queue.front() {
                    return Err(format!(
                        "{} ({:?}) ended with {} messages its rules still hold (first: publisher {} seq {})",
                        m.name,
                        m.strategy,
                        m.queue.len(),
                        id.0,
                        id.1
                    ));
                }
                ended[*stream] = true;
            }
        }
    }
    match ended.iter().position(|e| !e) {
        Some(i) => Err(format!("stream {i} never ended")),
        None => Ok(()),
    }
}

/// The queue group's rules: every message goes to at most one member, in
/// order there; a member never holds more than its cap; and a message is
/// dropped only if, when it was published, no member had room.
///
/// Which member got a message shows in the deliveries. A growing buffer
/// never evicts and drains at shutdown, so a message no member delivered
/// was refused when it was published, and a member's occupancy at any
/// moment is exactly the messages assigned to it and not yet delivered.
struct QueueGroupModel {
    caps: Vec<usize>,
    assigned: std::collections::BTreeMap<Identity, usize>,
    queues: Vec<VecDeque<Identity>>,
}

impl QueueGroupModel {
    fn new(caps: Vec<usize>, events: &[Event]) -> Result<Self, String> {
        let mut assigned = std::collections::BTreeMap::new();
        for e in events {
            if let Event::Delivered { stream, id } = e
                && *stream >= STREAMS
                && let Some(before) = assigned.insert(*id, *stream - STREAMS)
            {
                return Err(format!(
                    "queue group: publisher {} seq {} delivered to member {before} and to member {}",
                    id.0,
                    id.1,
                    *stream - STREAMS
                ));
            }
        }
        let queues = vec![VecDeque::new(); caps.len()];
        Ok(QueueGroupModel { caps, assigned, queues })
    }

    fn publish(&mut self, id: Identity) -> Result<(), String> {
        match self.assigned.get(&id) {
            Some(&member) => {
                let q = &mut self.queues[member];
                q.push_back(id);
                if q.len() > self.caps[member] {
                    return Err(format!(
                        "queue group: member {member} held {} messages, over its cap of {}",
                        q.len(),
                        self.caps[member]
                    ));
                }
            }
            None => {
                if let Some(j) = (0..self.caps.len()).find(|&j| self.queues[j].len() < self.caps[j]) {
                    return Err(format!(
                        "queue group: publisher {} seq {} was dropped while member {j} had room ({} of {})",
                        id.0,
                        id.1,
                        self.queues[j].len(),
                        self.caps[j]
                    ));
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, member: usize, id: Identity) -> Result<(), String> {
        match self.queues[member].pop_front() {
            Some(want) if want == id => Ok(()),
            other => Err(format!(
                "queue group: member {member} delivered publisher {} seq {}, but its next message is {other:?}",
                id.0, id.1
            )),
        }
    }

    fn ended(&self, member: usize) -> Result<(), String> {
        match self.queues[member].front() {
            None => Ok(()),
            Some(id) => {
                Err(format!("queue group: member {member} ended still holding publisher {} seq {}", id.0, id.1))
            }
        }
    }
}

impl Scenario for BrokerBackpressureScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn workload_units(&self) -> (&'static str, &'static str) {
        ("messages published", "deliveries to subscribers")
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn planted(&self) -> Planted {
        planted(self.planted)
    }

    fn run(&self, seed: u64, trace: Option<TraceSink>) -> RunReport {
        self.execute(seed, trace, false).0
    }

    fn run_metered(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies, Option<RunMetrics>) {
        let (report, metrics) = self.execute(seed, trace, true);
        (report, Vec::new(), metrics)
    }
}

impl BrokerBackpressureScenario {
    /// One run; with `meter`, the broker's metrics once it ended.
    fn execute(&self, seed: u64, trace: Option<TraceSink>, meter: bool) -> (RunReport, Option<RunMetrics>) {
        let mut setup = rng::derive(seed, 0xbac4_9e55);
        let mut profile = FaultProfile::swarm(&mut setup);
        profile.restrict(&TOLERANCE);
        let horizon = kaelix_core::Instant::ZERO + Duration::from_secs(3);
        let schedule = FaultSchedule::generate(&profile, &TOLERANCE, &[NODE], &[], horizon, &mut setup);
        let fault_mix = profile.mix();
        let plan = rng::fork(&mut setup);
        let planted = planted(self.planted);

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let checker = Checker::default();
        checker.lock().metered = meter;
        let (c, p) = (checker.clone(), plan.clone());
        let init = SimRuntime::init(move |rt| workload(rt, p.clone(), planted, c.clone()));
        sim.add_node(NODE, NodeSpec { kind: NodeKind::Server, name: "broker".into(), faulty_disk: false, init });
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(horizon);
        let verdict = checker.run_to_verdict(&sim, BOUND, |o| check(o, &mut plan.clone()));
        let o = checker.lock();
        let published = o.events.iter().filter(|e| matches!(e, Event::Published { .. })).count() as u64;
        let delivered = o.events.iter().filter(|e| matches!(e, Event::Delivered { .. })).count() as u64;
        let metrics = meter.then(|| {
            let mut m = RunMetrics::new();
            if let Some(broker) = &o.broker {
                m.record_broker(NODE, broker);
            }
            m.record_sim_time(sim.now().since_origin().as_secs_f64());
            m
        });
        drop(o);
        (RunReport::conclude(&sim, seed, verdict, fault_mix, (published, delivered)), metrics)
    }
}

/// The set of a scenario variant's planted bug (none for a correct one).
#[cfg(feature = "planted-bugs")]
pub(crate) fn planted(bug: Option<PlantedBug>) -> Planted {
    bug.map_or(Planted::NONE, Planted::only)
}

/// The set of a scenario variant's planted bug: always none without the
/// `planted-bugs` feature (planted variants are not registered then).
#[cfg(not(feature = "planted-bugs"))]
pub(crate) fn planted(bug: Option<PlantedBug>) -> Planted {
    assert!(bug.is_none(), "planted variants exist only with the planted-bugs feature");
    Planted::NONE
}

//! Scenario: the embedded broker under the simulator's scheduler.
//!
//! * **Node**: one node hosting a `kaelix_broker::Broker`. Its
//!   clock may be skewed, drift or step, and the node may pause; nothing
//!   crashes (the embedded broker keeps its logs in memory — replication
//!   under crashes is the Raft issue's).
//! * **Topics**: `orders.{eu,us,ap}` with 3 partitions, `metrics.{h1,h2}`
//!   with 1.
//! * **Workload** (sizes drawn per seed): 3–6 publishers, each publishing a
//!   numbered sequence — singly or in batches, keyed or not, with random
//!   priorities — with random pauses (each publisher's batches a recorded
//!   list drawn before it starts, `crate::workload`, which `sim shrink`
//!   cuts; sequence numbers are given as it publishes); subscribers under every backpressure
//!   strategy (`orders.>` drop-oldest and slow, `orders.eu` blocking, `metrics.*`
//!   growing, `*.*` shedding low priority); a queue group of 3 on
//!   `orders.*`; a consumer group on `orders.eu` whose members join and
//!   leave mid-run; a stream processor on `metrics.>` that rejects some
//!   messages and keeps failing others until they are dead-lettered; a
//!   subscriber on the dead-letter topics.
//! * **Checks**: conservation — every published message that a stream
//!   matches is delivered to it or counted as dropped under its strategy;
//!   each queue-group message reaches exactly one member (or is counted
//!   dropped there); the processor's input is accepted or dead-lettered,
//!   and every dead letter arrives with its reason, source topic,
//!   partition, offset and attempts; the consumer group processes every
//!   offset of `orders.eu` and commits to the end. Order — per publisher
//!   per partition, offsets grow with the publisher's sequence, and every
//!   stream sees each publisher's messages of a partition in that order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use kaelix_broker::message::{Message, MessageBatch};
use kaelix_broker::topic::{Pattern, Topic};
use kaelix_broker::{
    Broker, BrokerConfig, GroupMember, Strategy, SubscribeOptions, Subscription, TopicConfig, Verdict,
    dead_letter_headers as dlq,
};
use kaelix_core::NodeId;
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::{Clock, Priority, Runtime, Spawner, timeout};
use kaelix_core::time::Duration;
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::trace::TraceSink;
use kaelix_sim::{FaultProfile, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig, Tolerance};

use crate::checker::Observations;
use crate::metrics::RunMetrics;
use crate::{RunReport, Scenario, Tallies};

/// The broker scenario.
pub struct BrokerScenario;

/// The registered instance.
pub static BROKER: BrokerScenario = BrokerScenario;

const NODE: NodeId = NodeId(1);
const TOLERANCE: Tolerance = Tolerance { max_down: 0, faulty_disks: 0, power_loss: false };
const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const HOSTS: [&str; 2] = ["h1", "h2"];
const MAX_ATTEMPTS: u32 = 3;
/// Every task must be done by then (simulated).
const BOUND: Duration = Duration::from_secs(60);
/// Labels the generators the publishers' operation lists are drawn from.
const WORKLOAD_LABEL: u64 = 0xb70c_0a11;

/// One published message as its publisher saw it.
#[derive(Clone, Debug)]
struct Sent {
    topic: Topic,
    partition: u32,
    offset: u64,
}

/// A received message, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    publisher: u32,
    seq: u32,
    partition: u32,
    offset: u64,
}

fn seen(m: &Message) -> Seen {
    let p = m.payload();
    Seen {
        publisher: u32::from_le_bytes(p[..4].try_into().expect("publisher id")),
        seq: u32::from_le_bytes(p[4..8].try_into().expect("sequence")),
        partition: m.partition().expect("published messages have a partition"),
        offset: m.offset().expect("published messages have an offset"),
    }
}

/// A stream's final tally.
#[derive(Clone, Debug, Default)]
struct StreamTally {
    pattern: String,
    received: Vec<(Topic, Seen)>,
    dropped: u64,
}

#[derive(Default)]
struct Observed {
    sent: BTreeMap<(u32, u32), Sent>,
    streams: BTreeMap<String, StreamTally>,
    queue_members: Vec<StreamTally>,
    group_processed: BTreeSet<(u32, u64)>,
    group_final_commits: BTreeMap<u32, u64>,
    processor: (u64, u64),
    dead_letters: Vec<Message>,
    /// The broker, for its metrics when the run ends.
    broker: Option<Broker<SimRuntime>>,
    violation: Option<String>,
    finished: bool,
}

impl Observations for Observed {
    fn violation(&mut self) -> &mut Option<String> {
        &mut self.violation
    }
}

type Checker = crate::checker::Checker<Observed>;

/// Drains a subscription, checking per-(publisher, partition) order.
async fn consume(
    rt: SimRuntime,
    mut sub: Subscription<SimRuntime>,
    name: String,
    pattern: &'static str,
    slow: bool,
    checker: Checker,
) -> StreamTally {
    let mut rng = rt.rng();
    let mut last: BTreeMap<(u32, Topic, u32), u32> = BTreeMap::new();
    let mut tally = StreamTally { pattern: pattern.to_owned(), ..StreamTally::default() };
    while let Some(m) = sub.next().await {
        let s = seen(&m);
        let key = (s.publisher, m.topic().clone(), s.partition);
        if let Some(prev) = last.insert(key, s.seq)
            && prev >= s.seq
        {
            checker.fail(format!(
                "{name}: publisher {} seq {} after seq {prev} on {} partition {}",
                s.publisher,
                s.seq,
                m.topic(),
                s.partition
            ));
        }
        tally.received.push((m.topic().clone(), s));
        if slow {
            rt.sleep(Duration::from_micros(rng.random_range(100..3000))).await;
        }
    }
    tally.dropped = sub.drops().map_or(0, |d| d.total());
    let _ = name;
    tally
}

/// One message of a publisher's batch: its topic, the random bytes after
/// its identity, its key (a customer number) and its priority header.
#[derive(Clone, Debug)]
struct MessageOp {
    topic: String,
    extra: Bytes,
    key: Option<u32>,
    priority: &'static str,
}

/// One operation of a publisher: after `pause`, publish `messages` (one
/// alone, several as a batch). Sequence numbers are given at run time, in
/// order, so a cut list still numbers its messages 1, 2, 3…
#[derive(Clone, Debug)]
struct PublishOp {
    pause: Duration,
    messages: Vec<MessageOp>,
}

/// A publisher's operations: `count` messages, singly or in batches of
/// 2–5 (a fifth of the time), up to 2 ms apart.
fn draw_publishes(rng: &mut DetRng, count: u32) -> Vec<PublishOp> {
    let mut ops = Vec::new();
    let mut drawn = 0;
    while drawn < count {
        let pause = Duration::from_micros(rng.random_range(0..2000));
        let len = if rng.random_bool(0.2) { rng.random_range(2..6).min(count - drawn) } else { 1 };
        let messages = (0..len)
            .map(|_| {
                let topic = if rng.random_bool(0.7) {
                    format!("orders.{}", REGIONS[rng.random_range(0..REGIONS.len())])
                } else {
                    format!("metrics.{}", HOSTS[rng.random_range(0..HOSTS.len())])
                };
                let extra = crate::broker_durable::extra_bytes(rng, 16);
                let key = rng.random_bool(0.5).then(|| rng.random_range(0..20u32));
                let priority = ["low", "normal", "high", "critical"][rng.random_range(0..4)];
                MessageOp { topic, extra, key, priority }
            })
            .collect();
        drawn += len;
        ops.push(PublishOp { pause, messages });
    }
    ops
}

async fn publisher(rt: SimRuntime, broker: Broker<SimRuntime>, id: u32, ops: Vec<PublishOp>, checker: Checker) {
    let mut seq = 0;
    for op in ops {
        rt.sleep(op.pause).await;
        let mut batch = Vec::new();
        for m in op.messages {
            seq += 1;
            let data = crate::broker_durable::payload(id, seq, &m.extra);
            let mut b = Message::builder().topic(m.topic.as_str()).payload(data);
            if let Some(k) = m.key {
                b = b.key(Bytes::from(format!("customer-{k}")));
            }
            b = b.header("priority", Bytes::from_static(m.priority.as_bytes()));
            batch.push(b.build().expect("valid message"));
        }
        if batch.is_empty() {
            continue;
        }
        let first = seq - batch.len() as u32 + 1;
        let topics: Vec<Topic> = batch.iter().map(|m| m.topic().clone()).collect();
        let published = if batch.len() == 1 {
            broker.publish(batch.pop().expect("one")).await.map(|p| vec![p])
        } else {
            broker.publish_batch(batch.into_iter().collect::<MessageBatch>()).await
        };
        match published {
            Ok(ps) => {
                let mut o = checker.lock();
                for (i, (p, topic)) in ps.iter().zip(topics).enumerate() {
                    o.sent.insert((id, first + i as u32), Sent { topic, partition: p.partition, offset: p.offset });
                }
            }
            Err(e) => checker.fail(format!("publisher {id}: publish failed: {e}")),
        }
    }
}

async fn group_member(
    rt: SimRuntime,
    broker: Broker<SimRuntime>,
    leave_after: Option<usize>,
    publishers_done: Arc<AtomicBool>,
    checker: Checker,
) {
    let mut member: GroupMember<SimRuntime> = broker.join_group("billing", "orders.eu").expect("joins");
    let mut handled = 0;
    loop {
        match timeout(&rt, Duration::from_millis(20), member.poll(16)).await {
            Ok(Ok(batch)) if batch.messages.is_empty() => return, // shut down
            Ok(Ok(batch)) => {
                for m in &batch.messages {
                    let s = seen(m);
                    checker.lock().group_processed.insert((s.partition, s.offset));
                    // A commit refused as stale (a rebalance) is redelivered
                    // to the new owner: at least once.
                    let _ = member.commit(batch.generation, m);
                    handled += 1;
                }
                if leave_after.is_some_and(|n| handled >= n) {
                    return; // dropping the member leaves the group
                }
            }
            Ok(Err(e)) => {
                checker.fail(format!("consumer group poll failed: {e}"));
                return;
            }
            Err(_) => {
                let caught_up =
                    (0..3).all(|p| broker.next_offset("orders.eu", p) == broker.committed("billing", p).or(Some(0)));
                if publishers_done.load(Ordering::Relaxed) && caught_up {
                    return;
                }
            }
        }
    }
}

async fn workload(rt: SimRuntime, mut plan: DetRng, checker: Checker) {
    let broker = Broker::new(rt.clone(), rt.rng(), BrokerConfig { auto_create: None, ..BrokerConfig::default() });
    checker.lock().broker = Some(broker.clone());
    for r in REGIONS {
        broker.create_topic(&format!("orders.{r}"), TopicConfig { partitions: 3, ..TopicConfig::default() }).unwrap();
    }
    for h in HOSTS {
        broker.create_topic(&format!("metrics.{h}"), TopicConfig::default()).unwrap();
    }
    let spawn_consumer = |name: &str, pattern: &'static str, strategy: Strategy, group: Option<&str>, slow: bool| {
        let sub = broker
            .subscribe(
                pattern,
                SubscribeOptions {
                    strategy: Some(strategy),
                    queue_group: group.map(str::to_owned),
                    ..SubscribeOptions::default()
                },
            )
            .expect("subscribes");
        rt.spawn(
            Priority::Normal,
            "subscriber",
            consume(rt.clone(), sub, name.to_owned(), pattern, slow, checker.clone()),
        )
    };
    // Subscribe everything before the first publish: conservation counts
    // every message a stream's pattern matches.
    let streams = vec![
        (
            "orders-all/drop-oldest",
            spawn_consumer("orders-all", "orders.>", Strategy::DropOldest { capacity: 8 }, None, true),
        ),
        ("orders-eu/block", spawn_consumer("orders-eu", "orders.eu", Strategy::Block { capacity: 4 }, None, true)),
        ("metrics/grow", spawn_consumer("metrics", "metrics.*", Strategy::Grow { initial: 2, max: 16 }, None, true)),
        (
            "two-tokens/shed",
            spawn_consumer("two-tokens", "*.*", Strategy::ShedLowPriority { capacity: 12 }, None, true),
        ),
    ];
    let members: Vec<_> = (0..3)
        .map(|i| {
            let slow = i != 0;
            spawn_consumer(
                &format!("worker-{i}"),
                "orders.*",
                Strategy::DropOldest { capacity: 16 },
                Some("workers"),
                slow,
            )
        })
        .collect();

    // The stream processor on metrics: rejects, retries, dead letters.
    let processor = {
        let (broker, mut sub) = (
            broker.clone(),
            broker
                .subscribe(
                    "metrics.>",
                    SubscribeOptions {
                        strategy: Some(Strategy::Block { capacity: 8 }),
                        queue_group: None,
                        ..SubscribeOptions::default()
                    },
                )
                .unwrap(),
        );
        rt.spawn(Priority::Normal, "processor", async move {
            let mut tried: BTreeSet<(u32, u32)> = BTreeSet::new();
            let mut decide = move |m: &Message| {
                let s = seen(m);
                if s.seq.is_multiple_of(7) {
                    Verdict::Reject(format!("sequence {} is divisible by 7", s.seq))
                } else if s.seq.is_multiple_of(5) {
                    Verdict::Retry("downstream keeps failing".into())
                } else if s.seq.is_multiple_of(3) && tried.insert((s.publisher, s.seq)) {
                    Verdict::Retry("transient failure".into())
                } else {
                    Verdict::Accept
                }
            };
            broker.process(&mut sub, &mut decide, MAX_ATTEMPTS).await
        })
    };

    let publishers_done = Arc::new(AtomicBool::new(false));
    let group_members: Vec<_> = [None, Some(plan.random_range(10..40)), Some(plan.random_range(20..60))]
        .into_iter()
        .enumerate()
        .map(|(i, leave_after)| {
            let (rt2, broker, done, checker) = (rt.clone(), broker.clone(), publishers_done.clone(), checker.clone());
            let join_delay = Duration::from_millis(if i == 2 { plan.random_range(5..200) } else { 0 });
            rt.spawn(Priority::Normal, "group-member", async move {
                rt2.sleep(join_delay).await;
                group_member(rt2, broker, leave_after, done, checker).await
            })
        })
        .collect();

    let base: u64 = plan.clone().random();
    let publishers: Vec<_> = (0..plan.random_range(3..=6u32))
        .map(|id| {
            let count = plan.random_range(40..160);
            let ops = crate::workload::recorded(base, WORKLOAD_LABEL, u64::from(id), |rng| draw_publishes(rng, count));
            rt.spawn(Priority::High, "publisher", publisher(rt.clone(), broker.clone(), id, ops, checker.clone()))
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher finished");
    }
    publishers_done.store(true, Ordering::Relaxed);
    for m in group_members {
        m.await.expect("group member finished");
    }
    let commits: BTreeMap<u32, u64> = (0..3).filter_map(|p| broker.committed("billing", p).map(|c| (p, c))).collect();
    // Graceful shutdown: streams drain what they buffered, then end; the
    // processor dead-letters what it refuses on the way.
    broker.shutdown();
    let processor_report = processor.await;
    let mut tallies = BTreeMap::new();
    for (name, h) in streams {
        tallies.insert(name.to_owned(), h.await.expect("subscriber finished"));
    }
    let mut member_tallies = Vec::new();
    for h in members {
        member_tallies.push(h.await.expect("queue member finished"));
    }
    // Replay the dead-letter topics from their first offset.
    let mut dead_letters = Vec::new();
    for h in HOSTS {
        if let Ok(ms) = broker.read(&format!("_dlq.metrics.{h}"), 0, 0, usize::MAX) {
            dead_letters.extend(ms);
        }
    }
    let mut o = checker.lock();
    o.streams = tallies;
    o.queue_members = member_tallies;
    o.group_final_commits = commits;
    o.dead_letters = dead_letters;
    let processor_failed = match processor_report {
        Ok(r) => {
            o.processor = (r.accepted, r.dead_lettered);
            None
        }
        Err(e) => Some(format!("processor failed: {e}")),
    };
    o.finished = true;
    drop(o);
    if let Some(why) = processor_failed {
        checker.fail(why);
    }
    checker.finish();
}

fn header_str(m: &Message, name: &str) -> Option<String> {
    m.headers().get(name).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The end-of-run checks (see the module docs). `Err` names the first
/// broken rule.
fn check(o: &Observed) -> Result<(), String> {
    if let Some(v) = &o.violation {
        return Err(v.clone());
    }
    // Publisher order: per publisher and partition, offsets grow with seq.
    let mut last: BTreeMap<(u32, &Topic, u32), (u32, u64)> = BTreeMap::new();
    for (&(publisher, seq), s) in &o.sent {
        if let Some((prev_seq, prev_off)) = last.insert((publisher, &s.topic, s.partition), (seq, s.offset))
            && prev_off >= s.offset
        {
            return Err(format!(
                "publisher {publisher}: seq {seq} got offset {} on {} partition {}, after seq {prev_seq} at {prev_off}",
                s.offset, s.topic, s.partition
            ));
        }
    }
    let matched = |pattern: &str| {
        let p = Pattern::new(pattern).expect("valid pattern");
        o.sent.values().filter(|s| p.matches(&s.topic)).count() as u64
    };
    let genuine = |name: &str, topic: &Topic, s: &Seen| -> Result<(), String> {
        match o.sent.get(&(s.publisher, s.seq)) {
            Some(sent) if sent.topic == *topic && sent.partition == s.partition && sent.offset == s.offset => Ok(()),
            other => Err(format!(
                "{name} received publisher {} seq {} as {topic}/{}@{}, but it was sent as {other:?}",
                s.publisher, s.seq, s.partition, s.offset
            )),
        }
    };
    // Conservation per stream.
    for (name, t) in &o.streams {
        let want = matched(&t.pattern);
        let got = t.received.len() as u64 + t.dropped;
        if got != want {
            return Err(format!(
                "{name} ({}): {} delivered + {} dropped = {got}, but {want} published messages match",
                t.pattern,
                t.received.len(),
                t.dropped
            ));
        }
        for (topic, s) in &t.received {
            genuine(name, topic, s)?;
        }
    }
    // Queue group: exactly one member each, or dropped there.
    let mut once = BTreeSet::new();
    let (mut delivered, mut dropped) = (0u64, 0u64);
    for (i, t) in o.queue_members.iter().enumerate() {
        delivered += t.received.len() as u64;
        dropped += t.dropped;
        for (topic, s) in &t.received {
            genuine(&format!("worker-{i}"), topic, s)?;
            if !once.insert((s.publisher, s.seq)) {
                return Err(format!("queue group delivered publisher {} seq {} twice", s.publisher, s.seq));
            }
        }
    }
    let want = matched("orders.*");
    if delivered + dropped != want {
        return Err(format!(
            "queue group: {delivered} delivered + {dropped} dropped, but {want} messages match orders.*"
        ));
    }
    // Processor: accepted or dead-lettered, and dead letters are complete.
    let metrics = matched("metrics.>");
    let (accepted, dead) = o.processor;
    if accepted + dead != metrics {
        return Err(format!("processor: {accepted} accepted + {dead} dead-lettered, but {metrics} metrics messages"));
    }
    if o.dead_letters.len() as u64 != dead {
        return Err(format!("processor dead-lettered {dead}, dead-letter topics hold {}", o.dead_letters.len()));
    }
    for d in &o.dead_letters {
        let s = seen(d);
        let sent = o.sent.get(&(s.publisher, s.seq)).ok_or("a dead letter nobody published")?;
        let expect_attempts = if s.seq.is_multiple_of(7) { 1 } else { MAX_ATTEMPTS };
        let wants = [
            (dlq::SOURCE_TOPIC, sent.topic.to_string()),
            (dlq::SOURCE_PARTITION, sent.partition.to_string()),
            (dlq::SOURCE_OFFSET, sent.offset.to_string()),
            (dlq::ATTEMPTS, expect_attempts.to_string()),
        ];
        for (h, want) in wants {
            if header_str(d, h).as_deref() != Some(want.as_str()) {
                return Err(format!("dead letter of seq {}: header {h} is {:?}, want {want}", s.seq, header_str(d, h)));
            }
        }
        if header_str(d, dlq::REASON).is_none_or(|r| r.is_empty()) {
            return Err(format!("dead letter of seq {} has no reason", s.seq));
        }
        if !s.seq.is_multiple_of(7) && !s.seq.is_multiple_of(5) {
            return Err(format!("seq {} was dead-lettered but its processing succeeds", s.seq));
        }
    }
    // Consumer group: every offset of orders.eu processed, commits at the end.
    for (&(_, _), s) in o.sent.iter().filter(|(_, s)| s.topic.as_str() == "orders.eu") {
        if !o.group_processed.contains(&(s.partition, s.offset)) {
            return Err(format!("consumer group never processed orders.eu/{}@{}", s.partition, s.offset));
        }
    }
    for p in 0..3u32 {
        let end = o.sent.values().filter(|s| s.topic.as_str() == "orders.eu" && s.partition == p).count() as u64;
        let committed = o.group_final_commits.get(&p).copied().unwrap_or(0);
        if committed != end {
            return Err(format!("consumer group committed {committed} on orders.eu/{p}, the partition ends at {end}"));
        }
    }
    Ok(())
}

impl Scenario for BrokerScenario {
    fn name(&self) -> &'static str {
        "broker"
    }

    fn workload_units(&self) -> (&'static str, &'static str) {
        ("messages published", "deliveries to streams and queue members")
    }

    fn description(&self) -> &'static str {
        "embedded broker on one node: publishers, every backpressure strategy, queue and consumer groups, dead letters; conservation and order"
    }

    fn run(&self, seed: u64, trace: Option<TraceSink>) -> RunReport {
        self.execute(seed, trace, false).0
    }

    fn run_tallied(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies) {
        let (report, tallies, _) = self.execute(seed, trace, false);
        (report, tallies)
    }

    fn run_metered(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies, Option<RunMetrics>) {
        self.execute(seed, trace, true)
    }
}

impl BrokerScenario {
    /// One run; with `meter`, the broker's metrics once it ended.
    fn execute(&self, seed: u64, trace: Option<TraceSink>, meter: bool) -> (RunReport, Tallies, Option<RunMetrics>) {
        let mut setup = rng::derive(seed, 0xb70c_e125);
        let mut profile = FaultProfile::swarm(&mut setup);
        profile.restrict(&TOLERANCE);
        let node = [NODE];
        let horizon = kaelix_core::Instant::ZERO + Duration::from_secs(5);
        let schedule = FaultSchedule::generate(&profile, &TOLERANCE, &node, &[], horizon, &mut setup);
        let fault_mix = profile.mix();
        let plan = rng::fork(&mut setup);

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let checker = Checker::default();
        let c = checker.clone();
        let init = SimRuntime::init(move |rt| workload(rt, plan.clone(), c.clone()));
        sim.add_node(NODE, NodeSpec { kind: NodeKind::Server, name: "broker".into(), faulty_disk: false, init });
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(horizon);

        let verdict = checker.run_to_verdict(&sim, BOUND, check);
        let o = checker.lock();
        let sent = o.sent.len() as u64;
        let delivered: u64 = o.streams.values().chain(&o.queue_members).map(|t| t.received.len() as u64).sum();
        // Counted from what the clients saw and from the dead-letter topics'
        // records, never from the broker's counters.
        let tallies = vec![
            ("dead letters read back", o.dead_letters.len() as u64),
            ("processor: accepted", o.processor.0),
            ("processor: dead-lettered", o.processor.1),
        ];
        let metrics = meter.then(|| {
            let mut m = RunMetrics::new();
            if let Some(broker) = &o.broker {
                m.record_broker(NODE, broker);
            }
            m.record_sim_time(sim.now().since_origin().as_secs_f64());
            m
        });
        drop(o);
        (RunReport::conclude(&sim, seed, verdict, fault_mix, (sent, delivered)), tallies, metrics)
    }
}

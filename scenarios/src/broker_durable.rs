//! Scenario `broker-durable`: the embedded broker over durable topics on a
//! node that crashes, loses power and restarts.
//!
//! * **Node**: one node; every incarnation opens the broker from its disk
//!   (`Broker::open_durable`). Faults: crashes and restarts, power loss,
//!   lost and torn unsynced writes, slow disks, pauses, clock skew, drift
//!   and steps (a disk that loses *synced* data is out: no single-node log
//!   survives that, and the broker says so by refusing to open).
//! * **Topics**: `orders.eu` (3 partitions, sync every batch, 2 KiB
//!   segments, so segments roll) and `metrics.h1` (1 partition, sync every
//!   3 ms or 4 KiB).
//! * **Workload**, per incarnation: 2–4 publishers (fresh ids per
//!   incarnation) publish numbered messages, singly or in batches, keyed or
//!   not (each publisher's batches are a recorded list drawn when it
//!   starts, `crate::workload`, which `sim shrink` cuts; sequence numbers
//!   are given as it publishes); a consumer group `billing` on `orders.eu` processes and commits as
//!   it goes. Once the faults stop (liveness), the incarnation then alive
//!   finishes its quota, lets the group catch up, and reads every partition
//!   back from offset 0.
//!
//! # Checks (properties, judged from what clients saw, not from counters)
//!
//! * **Durability**: every acknowledged publish is in the final log at the
//!   partition and offset its acknowledgement named.
//! * **Integrity**: the final log is dense from offset 0, no message appears
//!   twice, and every record is one some publisher sent.
//! * **Order**: per publisher, within a partition, offsets grow with the
//!   publisher's sequence.
//! * **Log-backed subscriber**: each incarnation's subscriber to
//!   `orders.eu` from the earliest offset (reading slowly) reads every
//!   partition as a prefix of the final log, offsets consecutive from 0;
//!   the last incarnation's reads all of it.
//! * **Consumer group, no gap**: every record of `orders.eu` in the final
//!   log was processed by the group at least once (across restarts); a
//!   record the group processed is in the final log at the same place (the
//!   group never sees a record a crash can take back). Duplicates (processed
//!   again after a restart from the last commit) are counted, not errors.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_broker::message::{Message, MessageBatch};
use kaelix_broker::partition::RetentionPolicy;
use kaelix_broker::storage::{DurableConfig, FlushPolicy, StorageKind};
use kaelix_broker::{Broker, BrokerConfig, StartPosition, SubscribeOptions, Subscription, TopicConfig};
use kaelix_core::NodeId;
use kaelix_core::planted::{Planted, PlantedBug};
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::{Clock, Priority, Runtime, Spawner, timeout};
use kaelix_core::time::Duration;
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::trace::TraceSink;
use kaelix_sim::{FaultProfile, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig, Tolerance};

use crate::checker::Observations;
use crate::metrics::RunMetrics;
use crate::{RunReport, Scenario, Tallies};

/// The durable-broker scenario (or a planted-bug variant of it).
pub struct BrokerDurableScenario {
    name: &'static str,
    description: &'static str,
    planted: Option<PlantedBug>,
}

/// The registered instance.
pub static BROKER_DURABLE: BrokerDurableScenario = BrokerDurableScenario {
    name: "broker-durable",
    description: "embedded broker on durable topics, one node crashing and losing power: acknowledged publishes survive, the log stays dense and ordered, the consumer group resumes without a gap",
    planted: None,
};

/// Planted: publishes are acknowledged before their records are synced.
#[cfg(feature = "planted-bugs")]
pub static BROKER_DURABLE_ACK_BEFORE_SYNC: BrokerDurableScenario = BrokerDurableScenario {
    name: "broker-durable-ack-before-sync",
    description: "[planted bug] durable publishes acknowledged before their records are synced",
    planted: Some(PlantedBug::BrokerAckBeforeSync),
};

/// Planted: consumer groups read records that are not synced yet.
#[cfg(feature = "planted-bugs")]
pub static BROKER_DURABLE_GROUP_READS_UNSYNCED: BrokerDurableScenario = BrokerDurableScenario {
    name: "broker-durable-group-reads-unsynced",
    description: "[planted bug] consumer groups of durable topics read records before they are synced",
    planted: Some(PlantedBug::BrokerGroupReadsUnsynced),
};

const NODE: NodeId = NodeId(1);
/// One node that may crash and lose power; its disk keeps what it synced.
const TOLERANCE: Tolerance = Tolerance { max_down: 1, faulty_disks: 0, power_loss: true };
const GROUP: &str = "billing";
/// Every incarnation's work and the final read-back must be done by then.
const BOUND: Duration = Duration::from_secs(90);
/// Labels the generators the publishers' operation lists are drawn from.
const WORKLOAD_LABEL: u64 = 0xd07a_0a11;

/// (publisher, seq): a message's identity, from its payload.
pub(crate) type Identity = (u32, u32);

/// A read-back: (topic, partition) → (offset, identity) in offset order.
type ReadBack = BTreeMap<(String, u32), Vec<(u64, Identity)>>;

/// Where an acknowledgement or a read placed a message.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    topic: String,
    partition: u32,
    offset: u64,
}

#[derive(Default)]
struct Observed {
    /// Acknowledged publishes.
    acked: BTreeMap<Identity, Place>,
    /// Every message any publisher sent (acknowledged or not).
    sent: BTreeSet<Identity>,
    /// What the group processed: identity → places (more than one place is
    /// already wrong; more than one time is a duplicate).
    processed: BTreeMap<Identity, Vec<Place>>,
    /// What each incarnation's log-backed subscriber (from the earliest
    /// offset) read: incarnation → (partition, offset, identity) in order.
    log_reads: BTreeMap<u64, Vec<(u32, u64, Identity)>>,
    /// The incarnation that did the final read-back.
    final_incarnation: u64,
    /// The final read-back: (topic, partition) → records in offset order.
    final_log: Option<ReadBack>,
    incarnations: u64,
    /// Whether the run is metered: then `broker` holds the current
    /// incarnation's broker, whose counters are read once the run ends.
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

fn topics() -> [(&'static str, TopicConfig); 2] {
    [
        (
            "orders.eu",
            TopicConfig {
                partitions: 3,
                retention: RetentionPolicy::default(),
                storage: StorageKind::Durable(DurableConfig { flush: FlushPolicy::EveryBatch, segment_bytes: 2048 }),
            },
        ),
        (
            "metrics.h1",
            TopicConfig {
                partitions: 1,
                retention: RetentionPolicy::default(),
                storage: StorageKind::Durable(DurableConfig {
                    flush: FlushPolicy::Interval { max_delay: Duration::from_millis(3), max_bytes: 4096 },
                    segment_bytes: 4096,
                }),
            },
        ),
    ]
}

/// A unique payload: publisher and sequence number, then `extra` (random
/// bytes drawn with the operation).
pub(crate) fn payload(publisher: u32, seq: u32, extra: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + extra.len());
    b.put_u32_le(publisher);
    b.put_u32_le(seq);
    b.put_slice(extra);
    b.freeze()
}

/// 0 to `max - 1` random bytes, a payload's tail.
pub(crate) fn extra_bytes(rng: &mut DetRng, max: usize) -> Bytes {
    (0..rng.random_range(0..max)).map(|_| rng.random::<u8>()).collect::<Vec<u8>>().into()
}

/// The identity a [`payload`] carries (`None`: not one of ours).
pub(crate) fn identity(m: &Message) -> Option<Identity> {
    let p = m.payload();
    (p.len() >= 8).then(|| {
        (u32::from_le_bytes(p[..4].try_into().expect("4 bytes")), u32::from_le_bytes(p[4..8].try_into().expect("4")))
    })
}

fn place(m: &Message) -> Place {
    Place {
        topic: m.topic().to_string(),
        partition: m.partition().expect("stored messages have a partition"),
        offset: m.offset().expect("stored messages have an offset"),
    }
}

/// One message of a publisher's batch: its topic (`orders.eu` or
/// `metrics.h1`), the random bytes after its identity, and its key.
#[derive(Clone, Debug)]
pub(crate) struct MessageOp {
    orders: bool,
    extra: Bytes,
    key: Option<u32>,
}

/// One operation of a publisher: after `pause`, publish `messages` (one
/// alone, several as a batch). Sequence numbers are given at run time, in
/// order, so a cut list still numbers its messages 1, 2, 3…
#[derive(Clone, Debug)]
pub(crate) struct PublishOp {
    pause: Duration,
    messages: Vec<MessageOp>,
}

/// A publisher's operations: `count` messages, singly or in batches of
/// 2–5 (a quarter of the time), 0–3 ms apart.
fn draw_publishes(rng: &mut DetRng, count: u32) -> Vec<PublishOp> {
    let mut ops = Vec::new();
    let mut drawn = 0;
    while drawn < count {
        let pause = Duration::from_micros(rng.random_range(0..3000));
        let len = if rng.random_bool(0.25) { rng.random_range(2..6).min(count - drawn) } else { 1 };
        let messages = (0..len)
            .map(|_| {
                let orders = rng.random_bool(0.75);
                let extra = extra_bytes(rng, 24);
                let key = rng.random_bool(0.5).then(|| rng.random_range(0..12u32));
                MessageOp { orders, extra, key }
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
            let topic = if m.orders { "orders.eu" } else { "metrics.h1" };
            let mut b = Message::builder().topic(topic).payload(payload(id, seq, &m.extra));
            if let Some(k) = m.key {
                b = b.key(Bytes::from(format!("customer-{k}")));
            }
            batch.push(b.build().expect("valid message"));
        }
        if batch.is_empty() {
            continue;
        }
        let first = seq - batch.len() as u32 + 1;
        {
            let mut o = checker.lock();
            for s in first..=seq {
                o.sent.insert((id, s));
            }
        }
        let topics: Vec<String> = batch.iter().map(|m| m.topic().to_string()).collect();
        let published = if batch.len() == 1 {
            broker.publish(batch.pop().expect("one")).await.map(|p| vec![p])
        } else {
            broker.publish_batch(batch.into_iter().collect::<MessageBatch>()).await
        };
        match published {
            Ok(ps) => {
                let mut o = checker.lock();
                for (i, (p, topic)) in ps.iter().zip(topics).enumerate() {
                    let place = Place { topic, partition: p.partition, offset: p.offset };
                    o.acked.insert((id, first + i as u32), place);
                }
            }
            Err(e) => checker.fail(format!("publisher {id}: publish failed: {e}")),
        }
    }
}

/// The group member of one incarnation: processes, records, commits.
async fn group_member(rt: SimRuntime, broker: Broker<SimRuntime>, checker: Checker) {
    let mut member = match broker.join_group(GROUP, "orders.eu") {
        Ok(m) => m,
        Err(e) => return checker.fail(format!("joining the group failed: {e}")),
    };
    loop {
        match timeout(&rt, Duration::from_millis(20), member.poll(16)).await {
            Ok(Ok(batch)) if batch.messages.is_empty() => return, // shut down
            Ok(Ok(batch)) => {
                {
                    let mut o = checker.lock();
                    for m in &batch.messages {
                        match identity(m) {
                            Some(id) => o.processed.entry(id).or_default().push(place(m)),
                            None => {
                                drop(o);
                                return checker.fail(format!("the group read a record nobody sent: {m}"));
                            }
                        }
                    }
                }
                // Commit the last message of each partition in the batch.
                let mut last: BTreeMap<u32, &Message> = BTreeMap::new();
                for m in &batch.messages {
                    last.insert(m.partition().expect("partition"), m);
                }
                for m in last.values() {
                    if let Err(e) = member.commit(batch.generation, m) {
                        return checker.fail(format!("commit of {m} refused: {e}"));
                    }
                }
            }
            Ok(Err(e)) => return checker.fail(format!("group poll failed: {e}")),
            Err(_) => {} // nothing new for 20 ms
        }
    }
}

/// A slow subscriber reading `orders.eu` from its earliest offset.
async fn log_reader(rt: SimRuntime, mut sub: Subscription<SimRuntime>, incarnation: u64, checker: Checker) {
    let mut rng = rt.rng();
    while let Some(m) = sub.next().await {
        let Some(id) = identity(&m) else {
            return checker.fail(format!("the log-backed subscriber read a record nobody sent: {m}"));
        };
        let p = place(&m);
        checker.lock().log_reads.entry(incarnation).or_default().push((p.partition, p.offset, id));
        rt.sleep(Duration::from_micros(rng.random_range(0..2500))).await;
    }
}

async fn workload(rt: SimRuntime, plan: DetRng, planted: Planted, checker: Checker) {
    let incarnation = rt.handle().incarnation();
    checker.lock().incarnations += 1;
    let config = BrokerConfig { auto_create: None, planted, ..BrokerConfig::default() };
    let broker = match Broker::open_durable(rt.clone(), config).await {
        Ok(b) => b,
        Err(e) => return checker.fail(format!("incarnation {incarnation}: opening the durable broker failed: {e}")),
    };
    {
        let mut o = checker.lock();
        if o.metered {
            o.broker = Some(broker.clone());
        }
    }
    for (topic, config) in topics() {
        if let Err(e) = broker.create_topic(topic, config) {
            return checker.fail(format!("creating {topic}: {e}"));
        }
    }
    let group = rt.spawn(Priority::Normal, "group-member", group_member(rt.clone(), broker.clone(), checker.clone()));
    let from_earliest = SubscribeOptions { start: Some(StartPosition::Earliest), ..SubscribeOptions::default() };
    let reader = match broker.subscribe("orders.eu", from_earliest) {
        Ok(sub) => rt.spawn(Priority::Normal, "log-reader", log_reader(rt.clone(), sub, incarnation, checker.clone())),
        Err(e) => return checker.fail(format!("subscribing from the earliest offset failed: {e}")),
    };
    // Each incarnation draws its own sizes from the plan and its number.
    let base: u64 = plan.clone().random();
    let mut plan = rng::derive(base, incarnation);
    let publishers: Vec<_> = (0..plan.random_range(2..=4u32))
        .map(|i| {
            let id = u32::try_from(incarnation).expect("few incarnations") * 16 + i;
            let count = plan.random_range(20..90);
            // The publisher's operations, drawn before it starts; its id is
            // unique in the run, so it names the recorded list.
            let ops = crate::workload::recorded(base, WORKLOAD_LABEL, u64::from(id), |rng| draw_publishes(rng, count));
            rt.spawn(Priority::High, "publisher", publisher(rt.clone(), broker.clone(), id, ops, checker.clone()))
        })
        .collect();
    for p in publishers {
        if p.await.is_err() {
            return checker.fail("a publisher task failed".into());
        }
    }
    // Wait for the fault-free phase: only then can a read-back be final.
    while !rt.sim().in_liveness() {
        rt.sleep(Duration::from_millis(50)).await;
    }
    // Let the group catch up with everything synced.
    loop {
        let caught_up =
            (0..3).all(|p| broker.committed(GROUP, p).unwrap_or(0) >= broker.next_offset("orders.eu", p).unwrap_or(0));
        if caught_up {
            break;
        }
        rt.sleep(Duration::from_millis(10)).await;
    }
    let mut log = BTreeMap::new();
    for (topic, config) in topics() {
        for p in 0..config.partitions {
            let end = broker.next_offset(topic, p).unwrap_or(0);
            let records = match broker.read(topic, p, 0, usize::MAX) {
                Ok(r) => r,
                Err(e) => return checker.fail(format!("reading {topic}/{p} back from 0 failed: {e}")),
            };
            if records.len() as u64 != end {
                return checker.fail(format!(
                    "{topic}/{p}: the read-back holds {} records, the high watermark is {end}",
                    records.len()
                ));
            }
            let mut entries = Vec::new();
            for m in &records {
                match identity(m) {
                    Some(id) => entries.push((m.offset().expect("offset"), id)),
                    None => return checker.fail(format!("{topic}/{p} holds a record nobody sent: {m}")),
                }
            }
            log.insert((topic.to_owned(), p), entries);
        }
    }
    broker.shutdown();
    let _ = group.await;
    // After shutdown a log-backed stream still delivers up to the end.
    let _ = reader.await;
    let mut o = checker.lock();
    o.final_log = Some(log);
    o.final_incarnation = incarnation;
    drop(o);
    checker.finish();
}

/// The end-of-run checks (see the module docs).
fn check(o: &Observed) -> Result<(), String> {
    if let Some(v) = &o.violation {
        return Err(v.clone());
    }
    let log = o.final_log.as_ref().ok_or("no final read-back")?;
    let mut found: BTreeMap<Identity, Place> = BTreeMap::new();
    for ((topic, partition), entries) in log {
        let mut last_seq: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
        for (i, &(offset, id)) in entries.iter().enumerate() {
            if offset != i as u64 {
                return Err(format!("{topic}/{partition}: record {i} of the read-back is at offset {offset}"));
            }
            if !o.sent.contains(&id) {
                return Err(format!("{topic}/{partition}@{offset} holds {id:?}, which no publisher sent"));
            }
            let here = Place { topic: topic.clone(), partition: *partition, offset };
            if let Some(before) = found.insert(id, here.clone()) {
                return Err(format!("publisher {} seq {} is stored twice: {before:?} and {here:?}", id.0, id.1));
            }
            if let Some((prev_seq, prev_offset)) = last_seq.insert(id.0, (id.1, offset))
                && prev_seq > id.1
            {
                return Err(format!(
                    "{topic}/{partition}: publisher {} seq {} at offset {offset}, after seq {prev_seq} at {prev_offset}",
                    id.0, id.1
                ));
            }
        }
    }
    for (id, acked) in &o.acked {
        match found.get(id) {
            Some(place) if place == acked => {}
            Some(place) => {
                return Err(format!(
                    "publisher {} seq {} was acknowledged at {acked:?} but is stored at {place:?}",
                    id.0, id.1
                ));
            }
            None => return Err(format!("publisher {} seq {} was acknowledged at {acked:?} and is lost", id.0, id.1)),
        }
    }
    for (id, places) in &o.processed {
        for p in places {
            if found.get(id) != Some(p) {
                return Err(format!(
                    "the group processed publisher {} seq {} at {p:?}, but the final log has it at {:?}",
                    id.0,
                    id.1,
                    found.get(id)
                ));
            }
        }
    }
    for (incarnation, reads) in &o.log_reads {
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        for &(partition, offset, id) in reads {
            let want = next.entry(partition).or_insert(0);
            if offset != *want {
                return Err(format!(
                    "incarnation {incarnation}: the subscriber from the earliest offset read orders.eu/{partition}@{offset} after @{}",
                    *want as i64 - 1
                ));
            }
            *want += 1;
            let stored = log.get(&("orders.eu".to_owned(), partition)).and_then(|e| e.get(offset as usize));
            if stored.map(|&(_, s)| s) != Some(id) {
                return Err(format!(
                    "incarnation {incarnation}: the subscriber read publisher {} seq {} at orders.eu/{partition}@{offset}, the final log has {stored:?}",
                    id.0, id.1
                ));
            }
        }
        if *incarnation == o.final_incarnation {
            for p in 0..3u32 {
                let len = log.get(&("orders.eu".to_owned(), p)).map_or(0, Vec::len) as u64;
                let read = next.get(&p).copied().unwrap_or(0);
                if read != len {
                    return Err(format!(
                        "the last subscriber from the earliest offset read {read} of orders.eu/{p}'s {len} records"
                    ));
                }
            }
        }
    }
    for (id, place) in found.iter().filter(|(_, p)| p.topic == "orders.eu") {
        if !o.processed.contains_key(id) {
            return Err(format!("the group never processed {place:?} (publisher {} seq {}): a gap", id.0, id.1));
        }
    }
    Ok(())
}

impl BrokerDurableScenario {
    /// One run; with `meter`, the broker's metrics once it ended (the last
    /// incarnation's: a restarted broker counts from its boot).
    fn execute(&self, seed: u64, trace: Option<TraceSink>, meter: bool) -> (RunReport, Tallies, Option<RunMetrics>) {
        let mut setup = rng::derive(seed, 0xd07a_b1e5);
        let mut profile = FaultProfile::swarm(&mut setup);
        profile.restrict(&TOLERANCE);
        let horizon = kaelix_core::Instant::ZERO + Duration::from_secs(5);
        let schedule = FaultSchedule::generate(&profile, &TOLERANCE, &[NODE], &[], horizon, &mut setup);
        let fault_mix = profile.mix();
        let plan = rng::fork(&mut setup);

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let checker = Checker::default();
        checker.lock().metered = meter;
        let c = checker.clone();
        let planted = self.planted();
        let init = SimRuntime::init(move |rt| workload(rt, plan.clone(), planted, c.clone()));
        sim.add_node(NODE, NodeSpec { kind: NodeKind::Server, name: "broker".into(), faulty_disk: false, init });
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(horizon);

        let verdict = checker.run_to_verdict(&sim, BOUND, check);
        let o = checker.lock();
        let sent = o.sent.len() as u64;
        let acked = o.acked.len() as u64;
        let reprocessed: u64 = o.processed.values().map(|p| p.len() as u64 - 1).sum();
        let tallies = vec![("incarnations", o.incarnations), ("reprocessed by the group", reprocessed)];
        let metrics = meter.then(|| {
            let mut m = RunMetrics::new();
            if let Some(broker) = &o.broker {
                m.record_broker(NODE, broker);
            }
            m.record_sim_time(sim.now().since_origin().as_secs_f64());
            m
        });
        drop(o);
        (RunReport::conclude(&sim, seed, verdict, fault_mix, (sent, acked)), tallies, metrics)
    }
}

impl Scenario for BrokerDurableScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn workload_units(&self) -> (&'static str, &'static str) {
        ("messages sent", "acknowledged as durable")
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn planted(&self) -> Planted {
        crate::broker_backpressure::planted(self.planted)
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

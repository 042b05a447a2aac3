//! Scenario `broker-replicated`: the broker over replicated topics on 3
//! or 5 nodes under every fault.
//!
//! * **Cluster**: 3 or 5 servers (the seed picks), each running
//!   `kaelix_cluster::replicated::broker_node::start_broker_node`: a broker
//!   whose replicated topics `orders.eu` (2 partitions) and `audit.log`
//!   (1 partition) are three Raft groups over every server (replication
//!   factor = cluster size); snapshots every 40 entries, so compaction,
//!   snapshot transfer and a broker caught up from a snapshot happen in
//!   most runs.
//! * **Workload**, per server incarnation, during the 5 s of faults: 2
//!   publishers publish numbered messages one at a time through the
//!   node's own broker (keyed or not; each publisher's messages and pauses
//!   are a recorded list drawn as it starts, `crate::workload`, which `sim
//!   shrink` cuts; sequence numbers and retries are its own); a refusal because the node does not
//!   lead the partition is retried after a pause, as is an unknown outcome
//!   (leadership moved before the commit: the record may land twice). A
//!   log-backed subscriber reads `orders.eu` from the earliest offset and a
//!   live subscriber (a drop-oldest buffer of 4, and slow at times, so it
//!   falls behind and spills onto the log) takes what the node applies. A member of consumer
//!   group `workers` (one per incarnation, on the node's own broker) polls
//!   `orders.eu`, processes each batch (records it, takes a little time)
//!   and then commits each partition's progress through the partition's
//!   Raft group (`GroupMember::commit_acknowledged`); a node that does not
//!   lead the partition is refused, and its group carries on uncommitted
//!   there until a later commit or another node's commit covers it.
//! * **Faults** (swarm-drawn per seed): crashes and restarts of a minority,
//!   wiped disks on a minority of "faulty" nodes, whole-cluster power loss,
//!   partitions of every kind, loss, duplication, reordering, delay,
//!   pauses, clock skew / drift / steps, torn and lost unsynced writes,
//!   slow syncs, corrupt reads, `buggify!` points (leaders hand leadership
//!   away under load). Bit rot and misdirected writes are off, as in
//!   `raft-partitions` (synced data lost silently is outside Raft's model).
//! * **End**: after the faults, an auditor waits until the cluster is
//!   quiet — every server up, each group led by a member that committed an
//!   entry of its own term, every member at that commit and applied to it
//!   — and takes every server's broker log of every partition.
//!
//! # Checks (judged from what publishers and subscribers saw and from the
//! brokers' logs, never from the brokers' counters)
//!
//! * **Agreement**: every server's broker holds the same records at the
//!   same offsets, dense from 0.
//! * **Durability**: every acknowledged publish is in the final log at the
//!   partition and offset its acknowledgement named.
//! * **Integrity**: every record is one some publisher sent; a message is
//!   stored more than once only if its publisher retried it after an
//!   unknown outcome (duplicates are counted).
//! * **Order**: per publisher, within a partition, sequence numbers never
//!   go down.
//! * **Committed reads**: each log-backed subscriber reads every partition
//!   as a prefix of the final log, offsets consecutive from 0; each live
//!   subscriber's records are in the final log at the offsets they came
//!   with, consecutive per partition from the first it got: a live stream
//!   on a stored topic that falls behind reads on from the log, it never
//!   skips. A record taken back after a reader saw it (a read of something
//!   not committed) breaks both.
//! * **Consumer group, no gap**: whenever a member of `workers` reads a
//!   partition at an offset beyond the next one it expected (its first
//!   read of the partition expects offset 0), every offset it skipped was
//!   already processed by some member of the group, on any node, in any
//!   incarnation: a group resumes from committed progress only, never
//!   past what it processed (re-reads are duplicates, counted). What the
//!   members process is the final log's record at that offset.
//! * **Group commits are durable and agreed**: once quiet, every server's
//!   broker holds the same committed offset of `workers` on each
//!   partition, at least the highest commit any member had acknowledged.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kaelix_broker::backpressure::Strategy;
use kaelix_broker::groups::GroupError;
use kaelix_broker::message::Message;
use kaelix_broker::partition::RetentionPolicy;
use kaelix_broker::storage::{ReplicationConfig, StorageKind};
use kaelix_broker::topic::Topic;
use kaelix_broker::{Broker, BrokerConfig, BrokerError, StartPosition, SubscribeOptions, Subscription, TopicConfig};
use kaelix_cluster::raft::{Raft, Role};
use kaelix_cluster::replicated::broker_node::start_broker_node;
use kaelix_cluster::replicated::node::{ReplicaObserver, ReplicatedConfig};
use kaelix_core::NodeId;
use kaelix_core::planted::Planted;
#[cfg(feature = "planted-bugs")]
use kaelix_core::planted::PlantedBug;
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::{Clock, Priority, Runtime, Spawner};
use kaelix_core::time::Duration;
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::trace::TraceSink;
use kaelix_sim::{Fault, FaultSchedule, NodeKind, NodeSpec, NodeStatus, Sim, SimConfig};

use crate::broker_durable::{Identity, extra_bytes, identity, payload};
use crate::checker::Observations;
use crate::metrics::{PartitionMember, RunMetrics};
use crate::raft::{ClusterPlan, plan_cluster};
use crate::{RunReport, Scenario, Tallies, Verdict};

/// The replicated-broker scenario (or a planted-bug variant of it).
pub struct BrokerReplicatedScenario {
    name: &'static str,
    description: &'static str,
    planted: Planted,
}

/// The registered instance.
pub static BROKER_REPLICATED: BrokerReplicatedScenario = BrokerReplicatedScenario {
    name: "broker-replicated",
    description: "broker over Raft-replicated topics on 3 or 5 nodes, every fault: replicas agree, acknowledged publishes survive, order per publisher, readers see committed records only, consumer groups resume without gaps and keep acknowledged commits",
    planted: Planted::NONE,
};

/// Planted: a replicated publish acknowledged when proposed, before commit.
#[cfg(feature = "planted-bugs")]
pub static BROKER_REPLICATED_ACK_BEFORE_COMMIT: BrokerReplicatedScenario = BrokerReplicatedScenario {
    name: "broker-replicated-ack-before-commit",
    description: "[planted bug] replicated publishes acknowledged when proposed, before they commit",
    planted: Planted::only(PlantedBug::ReplicatedAckBeforeCommit),
};

/// Planted: a replicated group commit raises every partition's offset.
#[cfg(feature = "planted-bugs")]
pub static BROKER_REPLICATED_COMMIT_ALL_PARTITIONS: BrokerReplicatedScenario = BrokerReplicatedScenario {
    name: "broker-replicated-commit-all-partitions",
    description: "[planted bug] a replicated consumer-group commit raises the group's offset on every partition of the topic",
    planted: Planted::only(PlantedBug::BrokerGroupCommitAllPartitions),
};

/// Planted: a live stream spilling onto the log forgets what it buffered.
#[cfg(feature = "planted-bugs")]
pub static BROKER_REPLICATED_SPILL_FORGETS: BrokerReplicatedScenario = BrokerReplicatedScenario {
    name: "broker-replicated-spill-forgets",
    description: "[planted bug] a live stream that falls behind spills onto the log after the records it had buffered, losing them",
    planted: Planted::only(PlantedBug::BrokerSpillForgetsBuffered),
};

/// Planted: replicated publishes delivered to subscribers when proposed.
#[cfg(feature = "planted-bugs")]
pub static BROKER_REPLICATED_DELIVER_UNCOMMITTED: BrokerReplicatedScenario = BrokerReplicatedScenario {
    name: "broker-replicated-deliver-uncommitted",
    description: "[planted bug] replicated publishes delivered to the node's live subscribers when proposed, before they commit",
    planted: Planted::only(PlantedBug::BrokerDeliverUncommitted),
};

const SAFETY: Duration = Duration::from_secs(5);
const LIVENESS_BOUND: Duration = Duration::from_secs(25);
const AUDITOR: NodeId = NodeId(200);
const ORDERS: &str = "orders.eu";
/// The consumer group over `orders.eu`.
const WORKERS: &str = "workers";
const AUDIT: &str = "audit.log";
/// Labels the generators the publishers' operation lists are drawn from.
const WORKLOAD_LABEL: u64 = 0xb40c_0a11;

/// A partition: (topic, partition).
type Part = (String, u32);

/// What one subscriber took, in order: (partition, offset, identity).
type Reads = Vec<(u32, u64, Identity)>;

/// One server's broker log: partition → (offset, identity) in offset order.
type Logs = BTreeMap<Part, Vec<(u64, Identity)>>;

/// The last state seen of one member of one group.
#[derive(Clone, Copy, Debug)]
struct MemberState {
    role: Role,
    term: u64,
    commit: u64,
    /// The term of the entry at `commit` (if the member's log has it).
    commit_term: Option<u64>,
    applied: u64,
}

#[derive(Default)]
struct Observed {
    /// Every message any publisher sent.
    sent: BTreeSet<Identity>,
    /// Acknowledged publishes: identity → (partition, offset).
    acked: BTreeMap<Identity, (Part, u64)>,
    /// Messages retried after an unknown outcome (may be stored twice).
    retried_unknown: BTreeSet<Identity>,
    /// Each server's current incarnation and its broker.
    brokers: BTreeMap<NodeId, (u64, Broker<SimRuntime>)>,
    /// (server, group) → the member's last state, this incarnation.
    members: BTreeMap<(NodeId, u32), MemberState>,
    /// (server, group) → the member's figures for the run's metrics, this
    /// incarnation (kept only by a metered run).
    exported: Option<BTreeMap<(NodeId, u32), PartitionMember>>,
    /// Log-backed reads: (server, incarnation) → (partition, offset, identity) in order.
    log_reads: BTreeMap<(NodeId, u64), Reads>,
    /// Live reads: (server, incarnation) → (partition, offset, identity) in order.
    live_reads: BTreeMap<(NodeId, u64), Reads>,
    /// Every server's broker log once the cluster was quiet.
    final_logs: Option<BTreeMap<NodeId, Logs>>,
    /// Consumer group `workers`: what its members processed, in order:
    /// (server, incarnation) → (partition, offset, identity).
    group_reads: BTreeMap<(NodeId, u64), Reads>,
    /// Offsets of `orders.eu` some member of `workers` processed, by partition.
    group_processed: BTreeMap<u32, BTreeSet<u64>>,
    /// Each member's next expected offset: (server, incarnation, partition) → offset.
    group_expected: BTreeMap<(NodeId, u64, u32), u64>,
    /// Offsets processed again (by any member), counted.
    group_reprocessed: u64,
    /// Acknowledged group commits: partition → highest next offset.
    commits_acked: BTreeMap<u32, u64>,
    /// Group commits refused because the node did not lead the partition.
    commits_refused: u64,
    /// Every server's committed offsets of `workers` once quiet: server → partition → next.
    final_commits: Option<BTreeMap<NodeId, BTreeMap<u32, Option<u64>>>>,
    refusals: u64,
    unknown: u64,
    /// Why the auditor last found the cluster not quiet.
    not_quiet: String,
    violation: Option<String>,
}

impl Observations for Observed {
    fn violation(&mut self) -> &mut Option<String> {
        &mut self.violation
    }
}

type Checker = crate::checker::Checker<Observed>;

fn topics(factor: u8) -> Vec<(Topic, TopicConfig)> {
    let storage = StorageKind::Replicated(ReplicationConfig::new(factor).expect("3 or 5"));
    [(ORDERS, 2), (AUDIT, 1)]
        .into_iter()
        .map(|(name, partitions)| {
            let config = TopicConfig { partitions, retention: RetentionPolicy::default(), storage };
            (Topic::new(name).expect("valid topic"), config)
        })
        .collect()
}

/// Group `g` is the `g`-th (topic, partition) of [`topics`].
fn groups() -> Vec<Part> {
    vec![(ORDERS.to_owned(), 0), (ORDERS.to_owned(), 1), (AUDIT.to_owned(), 0)]
}

/// Watches every member of every group (for the auditor's "quiet" test).
#[derive(Clone)]
struct MemberWatch {
    checker: Checker,
    rt: SimRuntime,
}

impl ReplicaObserver for MemberWatch {
    fn booted(&self, node: NodeId) {
        let mut o = self.checker.lock();
        o.members.retain(|(n, _), _| *n != node);
        if let Some(exported) = &mut o.exported {
            exported.retain(|(n, _), _| *n != node);
        }
    }

    fn stepped(&self, node: NodeId, group: u32, raft: &Raft) {
        let commit = raft.commit();
        let state = MemberState {
            role: raft.role(),
            term: raft.term(),
            commit,
            commit_term: raft.log().term(commit),
            applied: raft.applied(),
        };
        let before = {
            let mut o = self.checker.lock();
            if let Some(exported) = &mut o.exported {
                exported.insert((node, group), PartitionMember::of(raft));
            }
            o.members.insert((node, group), state)
        };
        if before.is_none_or(|b| (b.role, b.term) != (state.role, state.term)) {
            let digest = (u64::from(group) << 56) ^ (state.term << 2) ^ state.role as u64;
            self.rt.sim().trace_event(Some(node), "raft-role", digest, || {
                format!(
                    "group {group}: {:?} in term {}, leader {:?}, commit {commit}",
                    state.role,
                    state.term,
                    raft.leader()
                )
            });
        }
    }

    fn sent(&self, node: NodeId, group: u32, to: NodeId, message: &kaelix_cluster::raft::Message) {
        self.rt.sim().trace_event(Some(node), "raft-send", 0, || format!("group {group} -> {to}: {message:?}"));
    }
}

/// One operation of a publisher: after `pause`, publish one message —
/// to `orders` (keyed by customer `key`, or not) or to `audit` — whose
/// payload ends with `extra`. Its sequence number, the retries of an
/// unknown or refused outcome and their pauses are the publisher's at run
/// time.
#[derive(Clone, Debug)]
struct PublishOp {
    pause: Duration,
    orders: bool,
    key: Option<u32>,
    extra: Bytes,
}

/// A publisher's operations: enough that their pauses alone fill the
/// safety phase (see `crate::workload`).
fn draw_publishes(rng: &mut DetRng) -> Vec<PublishOp> {
    crate::workload::filling(
        rng,
        SAFETY,
        |op: &PublishOp| op.pause,
        |rng| {
            let extra = extra_bytes(rng, 24);
            let orders = rng.random_bool(0.75);
            let key = (orders && rng.random_bool(0.5)).then(|| rng.random_range(0..12u32));
            let pause = Duration::from_micros(rng.random_range(200..4000));
            PublishOp { pause, orders, key, extra }
        },
    )
}

/// Publishes its operations one at a time until the faults stop.
async fn publisher(rt: SimRuntime, broker: Broker<SimRuntime>, id: u32, ops: Vec<PublishOp>, checker: Checker) {
    let mut rng = rt.rng();
    let mut seq = 0;
    for op in ops {
        if rt.sim().in_liveness() {
            return;
        }
        seq += 1;
        let identity = (id, seq);
        let data = payload(id, seq, &op.extra);
        let (topic, key) =
            if op.orders { (ORDERS, op.key.map(|k| Bytes::from(format!("customer-{k}")))) } else { (AUDIT, None) };
        checker.lock().sent.insert(identity);
        let mut pause = op.pause;
        loop {
            rt.sleep(pause).await;
            let mut b = Message::builder().topic(topic).payload(data.clone());
            if let Some(key) = &key {
                b = b.key(key.clone());
            }
            let message = b.build().expect("valid message");
            match broker.publish(message).await {
                Ok(p) => {
                    let part = (topic.to_owned(), p.partition);
                    checker.lock().acked.insert(identity, (part, p.offset));
                    break;
                }
                Err(BrokerError::NotLeader { .. }) => checker.lock().refusals += 1,
                Err(BrokerError::ReplicationUnknown { .. }) => {
                    let mut o = checker.lock();
                    o.unknown += 1;
                    o.retried_unknown.insert(identity);
                }
                Err(e) => return checker.fail(format!("publisher {id}: publish failed: {e}")),
            }
            if rt.sim().in_liveness() {
                return;
            }
            rt.sleep(Duration::from_millis(rng.random_range(5..30))).await;
            pause = Duration::from_micros(rng.random_range(200..4000));
        }
    }
}

/// Records what a subscription delivers, in order, under `key`.
async fn reader(rt: SimRuntime, mut sub: Subscription<SimRuntime>, key: (NodeId, u64), live: bool, checker: Checker) {
    let mut rng = rt.rng();
    while let Some(m) = sub.next().await {
        let (Some(id), Some(partition), Some(offset)) = (identity(&m), m.partition(), m.offset()) else {
            return checker.fail(format!("{}: a subscriber got {m}, not a stored record of a publisher", key.0));
        };
        {
            let mut o = checker.lock();
            let reads = if live { &mut o.live_reads } else { &mut o.log_reads };
            reads.entry(key).or_default().push((partition, offset, id));
        }
        // Both fall behind at times: the log-backed one reads on, the live
        // one (a small drop-oldest buffer) spills onto the log.
        let pause = if live { rng.random_range(0..600) } else { rng.random_range(0..1500) };
        rt.sleep(Duration::from_micros(pause)).await;
    }
}

/// A member of consumer group `workers` on `broker`: polls `orders.eu`,
/// processes (records) each batch, then commits each partition's progress
/// through the partition's group; until the faults stop.
async fn group_worker(rt: SimRuntime, broker: Broker<SimRuntime>, key: (NodeId, u64), checker: Checker) {
    let mut rng = rt.rng();
    let mut member = match broker.join_group(WORKERS, ORDERS) {
        Ok(m) => m,
        Err(e) => return checker.fail(format!("{}: joining group {WORKERS} failed: {e}", key.0)),
    };
    while !rt.sim().in_liveness() {
        let batch = match member.poll(1 + rng.random_range(0..8)).await {
            Ok(b) if b.messages.is_empty() => return,
            Ok(b) => b,
            Err(e) => return checker.fail(format!("{}: group poll failed: {e}", key.0)),
        };
        let mut progress: BTreeMap<u32, u64> = BTreeMap::new();
        for m in &batch.messages {
            let (Some(id), Some(partition), Some(offset)) = (identity(m), m.partition(), m.offset()) else {
                return checker.fail(format!("{}: group {WORKERS} got {m}, not a stored record of a publisher", key.0));
            };
            let mut o = checker.lock();
            let expected = o.group_expected.insert((key.0, key.1, partition), offset + 1).unwrap_or(0);
            if offset > expected {
                let processed = o.group_processed.entry(partition).or_default();
                if let Some(skipped) = (expected..offset).find(|x| !processed.contains(x)) {
                    let was = match expected {
                        0 => "as its first read of the partition".to_owned(),
                        e => format!("after @{}", e - 1),
                    };
                    let why = format!(
                        "{} incarnation {}: group {WORKERS} read {ORDERS}/{partition}@{offset} {was}, but nobody in the group processed @{skipped}",
                        key.0, key.1
                    );
                    drop(o);
                    return checker.fail(why);
                }
            }
            if !o.group_processed.entry(partition).or_default().insert(offset) {
                o.group_reprocessed += 1;
            }
            o.group_reads.entry(key).or_default().push((partition, offset, id));
            progress.insert(partition, offset + 1);
        }
        // Processing takes a while; the commit comes after it.
        rt.sleep(Duration::from_micros(rng.random_range(100..3000))).await;
        for (partition, next) in progress {
            match member.commit_acknowledged(batch.generation, partition, next).await {
                Ok(()) => {
                    let mut o = checker.lock();
                    let acked = o.commits_acked.entry(partition).or_insert(next);
                    *acked = (*acked).max(next);
                }
                // Not the leader, leadership moved, or another node's
                // commit went further meanwhile (the group is past it).
                Err(
                    BrokerError::NotLeader { .. }
                    | BrokerError::ReplicationUnknown { .. }
                    | BrokerError::Group(GroupError::Backwards { .. }),
                ) => {
                    checker.lock().commits_refused += 1;
                }
                Err(BrokerError::ShutDown) => return,
                Err(e) => return checker.fail(format!("{}: group commit failed: {e}", key.0)),
            }
        }
    }
}

async fn server(rt: SimRuntime, seed: u64, me: NodeId, config: ReplicatedConfig, factor: u8, checker: Checker) {
    let incarnation = rt.handle().incarnation();
    let broker_config = BrokerConfig { auto_create: None, planted: config.planted, ..BrokerConfig::default() };
    let watch = MemberWatch { checker: checker.clone(), rt: rt.clone() };
    let broker = match start_broker_node(rt.clone(), broker_config, &topics(factor), config, watch) {
        Ok(b) => b,
        Err(e) => return checker.fail(format!("{me}: starting the broker node failed: {e}")),
    };
    checker.lock().brokers.insert(me, (incarnation, broker.clone()));
    let from_earliest = SubscribeOptions { start: Some(StartPosition::Earliest), ..SubscribeOptions::default() };
    let live = SubscribeOptions { strategy: Some(Strategy::DropOldest { capacity: 4 }), ..SubscribeOptions::default() };
    for (options, live) in [(from_earliest, false), (live, true)] {
        match broker.subscribe(ORDERS, options) {
            Ok(sub) => {
                let task = reader(rt.clone(), sub, (me, incarnation), live, checker.clone());
                drop(rt.spawn(Priority::Normal, "reader", task));
            }
            Err(e) => return checker.fail(format!("{me}: subscribing failed: {e}")),
        }
    }
    drop(rt.spawn(
        Priority::Normal,
        "group-worker",
        group_worker(rt.clone(), broker.clone(), (me, incarnation), checker.clone()),
    ));
    for i in 0..2u32 {
        let id = u32::try_from(me.0 * 1000 + incarnation * 10).expect("small ids") + i;
        // Its operations, drawn as it starts; its id is unique in the run,
        // so it names the recorded list.
        let ops = crate::workload::recorded(seed, WORKLOAD_LABEL, u64::from(id), draw_publishes);
        drop(rt.spawn(Priority::High, "publisher", publisher(rt.clone(), broker.clone(), id, ops, checker.clone())));
    }
}

/// Whether the cluster is quiet: every server up with a broker, and each
/// group led by a member that committed an entry of its term, with every
/// member at that commit and applied to it.
fn quiet(o: &Observed, rt: &SimRuntime, servers: &[NodeId]) -> Result<(), String> {
    let sim = rt.sim();
    for &s in servers {
        if sim.status(s) != NodeStatus::Up || o.brokers.get(&s).is_none_or(|(inc, _)| *inc != sim.incarnation(s)) {
            return Err(format!("{s} is not up with a broker"));
        }
    }
    for g in 0..groups().len() as u32 {
        let states: Vec<(NodeId, MemberState)> =
            servers.iter().filter_map(|&s| o.members.get(&(s, g)).map(|m| (s, *m))).collect();
        let Some((_, leader)) = states.iter().find(|(_, m)| m.role == Role::Leader) else {
            return Err(format!("group {g} has no leader: {states:?}"));
        };
        let settled = states.len() == servers.len()
            && leader.commit_term == Some(leader.term)
            && states
                .iter()
                .all(|(_, m)| m.term == leader.term && m.commit == leader.commit && m.applied == leader.commit);
        if !settled {
            return Err(format!("group {g} is not settled: {states:?}"));
        }
    }
    Ok(())
}

/// After the faults: waits for a quiet cluster, takes every broker's logs.
async fn auditor(rt: SimRuntime, servers: Vec<NodeId>, checker: Checker) {
    loop {
        rt.sleep(Duration::from_millis(50)).await;
        if !rt.sim().in_liveness() {
            continue;
        }
        let mut o = checker.lock();
        if let Err(why) = quiet(&o, &rt, &servers) {
            o.not_quiet = why;
            continue;
        }
        let mut logs = BTreeMap::new();
        let mut commits = BTreeMap::new();
        for (&node, (_, broker)) in &o.brokers {
            commits.insert(node, (0..2).map(|p| (p, broker.committed(WORKERS, p))).collect());
            let mut parts = BTreeMap::new();
            for (topic, partition) in groups() {
                let records = match broker.read(&topic, partition, 0, usize::MAX) {
                    Ok(r) => r,
                    Err(e) => {
                        drop(o);
                        return checker.fail(format!("{node}: reading {topic}/{partition} from 0 failed: {e}"));
                    }
                };
                let mut entries = Vec::new();
                for m in &records {
                    match identity(m) {
                        Some(id) => entries.push((m.offset().expect("stored records have offsets"), id)),
                        None => {
                            drop(o);
                            return checker.fail(format!("{node}: {topic}/{partition} holds {m}, nobody sent it"));
                        }
                    }
                }
                parts.insert((topic, partition), entries);
            }
            logs.insert(node, parts);
        }
        drop(o);
        let mut o = checker.lock();
        o.final_logs = Some(logs);
        o.final_commits = Some(commits);
        drop(o);
        checker.finish();
        return;
    }
}

/// The end-of-run checks (see the module docs).
fn check(o: &Observed) -> Result<(), String> {
    if let Some(v) = &o.violation {
        return Err(v.clone());
    }
    let logs = o.final_logs.as_ref().ok_or("no final logs")?;
    let (&first, reference) = logs.iter().next().ok_or("no servers")?;
    for (&node, parts) in logs {
        for (part, entries) in parts {
            let theirs = &reference[part];
            if entries != theirs {
                let at =
                    entries.iter().zip(theirs).position(|(a, b)| a != b).unwrap_or(entries.len().min(theirs.len()));
                return Err(format!(
                    "replicas disagree on {}/{}: {node} holds {} records, {first} holds {}; first difference at position {at}: {:?} vs {:?}",
                    part.0,
                    part.1,
                    entries.len(),
                    theirs.len(),
                    entries.get(at),
                    theirs.get(at)
                ));
            }
        }
    }
    let mut places: BTreeMap<Identity, Vec<(Part, u64)>> = BTreeMap::new();
    for (part, entries) in reference {
        let mut last_seq: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
        for (i, &(offset, id)) in entries.iter().enumerate() {
            if offset != i as u64 {
                return Err(format!("{}/{}: record {i} is at offset {offset}", part.0, part.1));
            }
            if !o.sent.contains(&id) {
                return Err(format!("{}/{}@{offset} holds {id:?}, which no publisher sent", part.0, part.1));
            }
            places.entry(id).or_default().push((part.clone(), offset));
            if let Some((prev_seq, prev_offset)) = last_seq.insert(id.0, (id.1, offset))
                && prev_seq > id.1
            {
                return Err(format!(
                    "{}/{}: publisher {} seq {} at offset {offset}, after its seq {prev_seq} at {prev_offset}",
                    part.0, part.1, id.0, id.1
                ));
            }
        }
    }
    for (id, at) in &places {
        if at.len() > 1 && !o.retried_unknown.contains(id) {
            return Err(format!(
                "publisher {} seq {} is stored {} times ({at:?}) but was never retried after an unknown outcome",
                id.0,
                id.1,
                at.len()
            ));
        }
    }
    for (id, (part, offset)) in &o.acked {
        let stored = reference.get(part).and_then(|e| e.get(*offset as usize)).map(|&(_, s)| s);
        if stored != Some(*id) {
            return Err(format!(
                "publisher {} seq {} was acknowledged at {}/{}@{offset}, where the final log holds {stored:?}",
                id.0, id.1, part.0, part.1
            ));
        }
    }
    let orders = |p: u32| reference.get(&(ORDERS.to_owned(), p));
    for ((node, incarnation), reads) in &o.log_reads {
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        for &(partition, offset, id) in reads {
            let want = next.entry(partition).or_insert(0);
            if offset != *want {
                return Err(format!(
                    "{node} incarnation {incarnation}: the subscriber from the earliest offset read {ORDERS}/{partition}@{offset}, expected @{want}"
                ));
            }
            *want += 1;
            let stored = orders(partition).and_then(|e| e.get(offset as usize)).map(|&(_, s)| s);
            if stored != Some(id) {
                return Err(format!(
                    "{node} incarnation {incarnation}: the log-backed subscriber read {id:?} at {ORDERS}/{partition}@{offset}, the final log has {stored:?}"
                ));
            }
        }
    }
    for ((node, incarnation), reads) in &o.group_reads {
        for &(partition, offset, id) in reads {
            let stored = orders(partition).and_then(|e| e.get(offset as usize)).map(|&(_, s)| s);
            if stored != Some(id) {
                return Err(format!(
                    "{node} incarnation {incarnation}: group {WORKERS} processed {id:?} at {ORDERS}/{partition}@{offset}, the final log has {stored:?}"
                ));
            }
        }
    }
    let commits = o.final_commits.as_ref().ok_or("no final commits")?;
    let (&first, reference_commits) = commits.iter().next().ok_or("no servers")?;
    for (&node, theirs) in commits {
        if theirs != reference_commits {
            return Err(format!(
                "servers disagree on group {WORKERS}'s committed offsets: {node} has {theirs:?}, {first} has {reference_commits:?}"
            ));
        }
    }
    for (&partition, &acked) in &o.commits_acked {
        let committed = reference_commits.get(&partition).copied().flatten();
        if committed.is_none_or(|c| c < acked) {
            return Err(format!(
                "group {WORKERS} had a commit of {ORDERS}/{partition} at {acked} acknowledged, the servers hold {committed:?}"
            ));
        }
    }
    for ((node, incarnation), reads) in &o.live_reads {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for &(partition, offset, id) in reads {
            if let Some(prev) = last.insert(partition, offset)
                && prev + 1 != offset
            {
                return Err(format!(
                    "{node} incarnation {incarnation}: the live subscriber got {ORDERS}/{partition}@{offset} after @{prev} (a stored topic's live stream neither skips nor repeats)"
                ));
            }
            let stored = orders(partition).and_then(|e| e.get(offset as usize)).map(|&(_, s)| s);
            if stored != Some(id) {
                return Err(format!(
                    "{node} incarnation {incarnation}: the live subscriber got {id:?} at {ORDERS}/{partition}@{offset}, the final log has {stored:?}"
                ));
            }
        }
    }
    Ok(())
}

impl BrokerReplicatedScenario {
    /// One run; with `meter`, the brokers' and Raft members' metrics once
    /// it ended.
    fn execute(&self, seed: u64, trace: Option<TraceSink>, meter: bool) -> (RunReport, Tallies, Option<RunMetrics>) {
        let mut setup = rng::derive(seed, 0xb40c_e401);
        let ClusterPlan { servers, tolerance, profile, faulty } = plan_cluster(&mut setup);
        let n = servers.len() as u64;
        let safety_end = kaelix_core::Instant::ZERO + SAFETY;
        let schedule = FaultSchedule::generate(&profile, &tolerance, &servers, &faulty, safety_end, &mut setup);
        let fault_mix = profile.mix();

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let checker = Checker::default();
        if meter {
            checker.lock().exported = Some(BTreeMap::new());
        }
        let mut config = ReplicatedConfig::new(servers.clone(), 0);
        config.snapshot_every = 40;
        // Half the seeds snapshot on the count alone (many snapshots, many
        // installs on lagging members), half by the deployments' rule too
        // (also once the entries hold the snapshot's size in bytes).
        config.snapshot_log_percent = if setup.random_bool(0.5) { 0 } else { 100 };
        config.planted = self.planted;
        let factor = n as u8;
        for &id in &servers {
            let (config, checker) = (config.clone(), checker.clone());
            let init = SimRuntime::init(move |rt| {
                let mut config = config.clone();
                // A node whose disk was ever replaced must not take an
                // empty disk for a new cluster.
                let wiped = rt
                    .sim()
                    .fault_log()
                    .iter()
                    .any(|(_, f)| matches!(f, Fault::Restart { node, wipe: true } if *node == id));
                config.bootstrap = !wiped;
                server(rt, seed, id, config, factor, checker.clone())
            });
            let spec = NodeSpec {
                kind: NodeKind::Server,
                name: format!("server-{}", id.0),
                faulty_disk: faulty.contains(&id),
                init,
            };
            sim.add_node(id, spec);
        }
        {
            let (checker, servers) = (checker.clone(), servers.clone());
            let init = SimRuntime::init(move |rt| auditor(rt, servers.clone(), checker.clone()));
            let spec = NodeSpec { kind: NodeKind::Client, name: "auditor".into(), faulty_disk: false, init };
            sim.add_node(AUDITOR, spec);
        }
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(safety_end);

        let verdict = match checker.run_to_verdict(&sim, SAFETY + LIVENESS_BOUND, check) {
            Verdict::LivenessViolation(v) => Verdict::LivenessViolation(format!("{v}: {}", checker.lock().not_quiet)),
            other => other,
        };
        let o = checker.lock();
        // Every replica holds the same log at the end (checked): count one.
        let log = o.final_logs.as_ref().and_then(|l| l.values().next());
        let stored: u64 = log.map_or(0, |parts| parts.values().map(|e| e.len() as u64).sum());
        let unique = log.map_or(0, |parts| parts.values().flatten().map(|(_, id)| *id).collect::<BTreeSet<_>>().len());
        let tallies = vec![
            ("servers", n),
            ("refused (not the leader)", o.refusals),
            ("unknown outcomes", o.unknown),
            ("stored twice or more", stored - unique as u64),
            ("group: processed", o.group_reads.values().map(|r| r.len() as u64).sum()),
            ("group: offsets processed again (any node, any incarnation)", o.group_reprocessed),
            ("group: commits acknowledged (highest, summed)", o.commits_acked.values().sum()),
            ("group: commits refused", o.commits_refused),
        ];
        let workload = (o.sent.len() as u64, o.acked.len() as u64);
        let metrics = meter.then(|| {
            let mut m = RunMetrics::new();
            for (&node, (_, broker)) in &o.brokers {
                m.record_broker(node, broker);
            }
            let parts = groups();
            for (&(node, group), &member) in o.exported.iter().flatten() {
                let (topic, partition) = &parts[group as usize];
                m.record_partition(node, topic, *partition, member);
            }
            m.record_sim_time(sim.now().since_origin().as_secs_f64());
            m
        });
        drop(o);
        (RunReport::conclude(&sim, seed, verdict, fault_mix, workload), tallies, metrics)
    }
}

impl Scenario for BrokerReplicatedScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn workload_units(&self) -> (&'static str, &'static str) {
        ("messages sent", "acknowledged as committed")
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn planted(&self) -> Planted {
        self.planted
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

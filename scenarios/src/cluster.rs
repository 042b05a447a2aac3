//! Scenario `cluster`: whole cluster members — `kaelix serve --cluster`'s
//! very composition — under every fault, with native clients on any member.
//!
//! * **Members**: 3 or 5 (the seed picks, as `raft-partitions` does); every
//!   incarnation of each runs `kaelix_server::cluster_member::start` on the
//!   simulated runtime: the replicated partitions (Raft groups of all
//!   members — 3 voters each, placed by the members alike, so on 5 members
//!   each partition has 2 learners —, a voter SWIM has held dead for 1 s
//!   swapped with a live learner by its leader, a publish for a group led
//!   elsewhere forwarded to its leader, `forward_timeout_ms = 500`), SWIM on its own datagram channel
//!   (`SimRuntime::channel`, as `RealRuntime::channel` in `kaelix serve`),
//!   and the NATS and native front ends on the member's broker. `orders`
//!   is a replicated topic of 2 partitions. A member restarted on a
//!   replaced disk is started with `bootstrap = false`, so it recovers
//!   instead of voting as a fresh member (the operator's knowledge).
//! * **Clients**: 3 client nodes speaking the native protocol
//!   (`kaelix-client`: `Producer` with acks `committed`, `Consumer::fetch`)
//!   over simulated TCP. Every 2–25 ms each picks a member at random — any
//!   member, so most publishes are forwarded — and produces a unique
//!   payload to a random partition (65 %) or fetches one offset near the
//!   highest it saw acknowledged (35 %), with a 1 s deadline. A produce
//!   answered `NotLeader` (the member knew no leader: nothing was proposed)
//!   failed definitely and is left out of the history; `Timeout`, a broken
//!   connection or the deadline leave it unknown. A fetch answered
//!   `Unavailable` (no leader confirmed the read) read nothing and is left
//!   out; a broken connection or the deadline leave it unknown. Each client's operations
//!   are a recorded list (`crate::workload`), cut by `sim shrink`.
//! * **Faults** (`raft::plan_cluster`: swarm-drawn, a minority down at
//!   once): crashes and restarts, power loss, wiped disks on a minority,
//!   partitions of every kind, loss, duplication, reordering, delay,
//!   pauses, clock skew / drift / steps, torn and lost unsynced writes,
//!   slow syncs, corrupt reads, `buggify!` points. Disk faults (wipes
//!   among them) hit one member only, also on 5 members: two wiped
//!   members could be two of a partition's 3 voters. On every 5-member seed
//!   and half the 3-member ones, one member (one whose disk may be wiped)
//!   is **lost for good** when the faults stop (`Sim::retire_at_liveness`):
//!   a majority of every group is still there, so everything must go on.
//! * **Checked at every step** (an observer on every member): at most one
//!   leader per group and term, and no two members apply different entries
//!   at one index.
//! * **Liveness**: the safety phase lasts 5 s; then faults stop, members
//!   come back (but the lost one), and within 30 s an auditor client must
//!   produce a marker to every partition through the live members and read
//!   each partition back from offset 0 through a member whose log holds
//!   the marker; every live member's SWIM view must hold every other
//!   live member alive; and every partition must be back to 3 voters, all
//!   of them live when at least 3 members are (the lost member's voter
//!   slots taken over by learners), as every live member's Raft
//!   configuration says.
//! * **Durability**: every acknowledged produce is at its offset in the
//!   read-back; no produce refused as "not done" is in it.
//! * **The history**: produces and fetches are recorded
//!   (`crate::history`; `sim replay --history FILE` writes them as JSON
//!   lines) and checked by `crate::linearizability` — linearizability and
//!   the offset rules — exactly as recorded, what `sim check-history`
//!   applies to the exported file: fetches are linearizable through any
//!   member (PROTOCOL.md §8.2), so a fetch that found a value must find
//!   the value linearizably at that offset, and a fetch that found
//!   *nothing* at offset `o` (an empty answer, or `OffsetOutOfRange` past
//!   the end) is a read that the log held fewer than `o + 1` records — in
//!   a dense log, nothing at or after `o` — at some instant within the
//!   fetch. How many fetches found nothing at an offset already
//!   acknowledged before they were called ("stale fetches", each one a
//!   violation the check reports) is a tally.
//!
//! Planted-bug variants: `cluster-forward-unknown-as-refused` — the
//! forwarder refuses (`NotLeader`) a forwarded publish whose outcome it
//! does not know; the record may still commit, which the durability check
//! ("refused but stored") and the history (a value read that no produce
//! wrote) catch. `cluster-fetch-skips-read-index` — a member serves a
//! fetch from its own log without a read index confirmed by the leader; a
//! lagging member's "nothing there" about a record acknowledged before the
//! fetch is caught by the history check. `cluster-replacement-shrinks-group`
//! — a leader drops a dead voter without promoting a learner; the
//! partition's voters fall below 3, which the liveness check catches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kaelix_broker::message::Message;
use kaelix_broker::topic::Topic;
use kaelix_client::{AckLevel, Connection, Consumer, ErrorCode, FetchOptions, Producer};
use kaelix_cluster::membership::Membership;
use kaelix_cluster::raft::{Configuration, Entry, EntryPayload, Raft, RaftStats, Role};
use kaelix_cluster::replicated::node::{ReplicaObserver, ReplicatedConfig};
use kaelix_cluster::swim::MemberState;
use kaelix_core::planted::Planted;
#[cfg(feature = "planted-bugs")]
use kaelix_core::planted::PlantedBug;
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::{Clock, Runtime, timeout};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_runtime_sim::SimRuntime;
use kaelix_server::ServerConfig;
use kaelix_server::cluster_member::{self, SWIM_CHANNEL};
use kaelix_server::config::{StorageChoice, TopicSpec};
use kaelix_sim::trace::{TraceSink, digest};
use kaelix_sim::{Fault, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig};

use crate::history::{History, HistoryRecorder, OpKind, Output};
use crate::linearizability::{CheckConfig, check_history};
use crate::metrics::{PartitionMember, RunMetrics};
use crate::raft::{ClusterPlan, plan_cluster};
use crate::{RunReport, Scenario, Tallies, Verdict};

/// One variant of the cluster scenario.
pub struct ClusterScenario {
    name: &'static str,
    description: &'static str,
    planted: Planted,
}

/// The correct members.
pub static CLUSTER: ClusterScenario = ClusterScenario {
    name: "cluster",
    description: "kaelix serve --cluster members (partitions, forwarding, SWIM, front ends) on 3 or 5 nodes, native clients on any member; every fault, a member lost for good, wiped disks; durable, linearizable produces and fetches",
    planted: Planted::NONE,
};

/// Planted bug: a forwarded publish of unknown outcome refused as not done.
#[cfg(feature = "planted-bugs")]
pub static CLUSTER_FORWARD_UNKNOWN_AS_REFUSED: ClusterScenario = ClusterScenario {
    name: "cluster-forward-unknown-as-refused",
    description: "[planted bug] cluster members whose forwarder refuses (NotLeader) a forwarded publish whose outcome it does not know",
    planted: Planted::only(PlantedBug::ForwardUnknownAsRefused),
};

/// Planted bug: a dead voter removed, no learner promoted in its place.
#[cfg(feature = "planted-bugs")]
pub static CLUSTER_REPLACEMENT_SHRINKS_GROUP: ClusterScenario = ClusterScenario {
    name: "cluster-replacement-shrinks-group",
    description: "[planted bug] cluster members whose partition leaders drop a voter SWIM holds dead without promoting a learner in its place",
    planted: Planted::only(PlantedBug::ReplacementShrinksGroup),
};

/// Planted bug: fetches served from the member's own log, no read index.
#[cfg(feature = "planted-bugs")]
pub static CLUSTER_FETCH_SKIPS_READ_INDEX: ClusterScenario = ClusterScenario {
    name: "cluster-fetch-skips-read-index",
    description: "[planted bug] cluster members that serve a fetch from their own copy of the log without a read index confirmed by the partition's leader",
    planted: Planted::only(PlantedBug::FetchSkipsReadIndex),
};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 2;
const CLIENTS: u64 = 3;
const AUDITOR: NodeId = NodeId(200);
const NATS_PORT: u16 = 4222;
const NATIVE_PORT: u16 = 7422;
/// Each member's node-to-node port (forwarding: the next one).
const CLUSTER_PORT: u16 = 7111;
const SAFETY: Duration = Duration::from_secs(5);
const LIVENESS_BOUND: Duration = Duration::from_secs(30);
const OP_DEADLINE: Duration = Duration::from_secs(1);
/// Shorter than a client's deadline, so a forward's unknown outcome
/// reaches the client as such.
const FORWARD_TIMEOUT_MS: u64 = 500;
/// Voters per partition: on 5 members, each partition has 2 learners to
/// replace a dead voter with; on 3, every member is a voter.
const REPLICATION_FACTOR: u32 = 3;
/// How long SWIM must hold a voter dead before its leader replaces it:
/// short, so the replacement of the member lost for good lands within the
/// liveness bound (SWIM's completeness bound plus this plus a commit).
const REPLACE_DEAD_AFTER_MS: u64 = 1_000;
/// Entries between snapshots, at the least: the fewest the configuration
/// allows, so members snapshot, lagging and wiped ones install snapshots,
/// and restarts recover from a snapshot and a log after it (by the
/// deployments' rule: the log must also hold the snapshot's bytes).
const SNAPSHOT_ENTRIES: u64 = 16;
/// Labels the generators the clients' operation lists are drawn from.
const WORKLOAD_LABEL: u64 = 0xc1a5_7e11;

fn partition_name(p: u32) -> String {
    format!("{TOPIC}/{p}")
}

fn true_now(rt: &SimRuntime) -> Instant {
    rt.sim().now()
}

/// The configuration every member starts from (`kaelix serve --cluster
/// --node-id ID --peers ...` with a replicated `orders`).
fn member_config(servers: &[NodeId], me: NodeId, planted: Planted) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.nats.listen = SocketAddr::from(([0, 0, 0, 0], NATS_PORT));
    config.native.listen = SocketAddr::from(([0, 0, 0, 0], NATIVE_PORT));
    config.cluster.enabled = true;
    config.cluster.node_id = me.0;
    config.cluster.peers =
        servers.iter().map(|s| format!("{}={}", s.0, kaelix_sim::node_addr(*s, CLUSTER_PORT))).collect();
    config.cluster.forward_timeout_ms = FORWARD_TIMEOUT_MS;
    config.cluster.replication_factor = REPLICATION_FACTOR;
    config.cluster.replace_dead_after_ms = REPLACE_DEAD_AFTER_MS;
    config.cluster.snapshot_entries = SNAPSHOT_ENTRIES;
    config.topics.push(TopicSpec {
        name: TOPIC.into(),
        partitions: PARTITIONS,
        storage: StorageChoice::Replicated,
        flush_interval_ms: None,
        max_bytes: None,
        max_records: None,
        max_age_secs: None,
    });
    config.planted = planted;
    config
}

/// Everything the checks have seen.
#[derive(Default)]
struct Observed {
    /// (group, term) → leader.
    leaders: BTreeMap<(u32, u64), NodeId>,
    /// group → index → (term, digest) of entries applied anywhere.
    applied: BTreeMap<u32, BTreeMap<u64, (u64, u64)>>,
    /// (node, group) → digest of (role, term) last traced.
    roles: BTreeMap<(NodeId, u32), u64>,
    /// Each member's SWIM view, of its latest incarnation.
    swim: BTreeMap<NodeId, Membership>,
    /// (node, group) → the member's newest configuration (voters, outgoing
    /// voters while joint, learners), as its Raft holds it.
    configs: BTreeMap<(NodeId, u32), Configuration>,
    /// (partition, offset) → payload, of acknowledged produces.
    acked: BTreeMap<(u32, u64), String>,
    /// Payloads of produces refused as not done.
    refused: BTreeSet<String>,
    /// What the auditor read back, per partition, once done.
    read_back: Option<BTreeMap<u32, Vec<String>>>,
    submitted: u64,
    /// Produces the front end answered through a member that did not lead
    /// the partition (so forwarded), acknowledged.
    forwarded_acks: u64,
    clients_done: u64,
    /// (node, group) → the member's figures and counters for the run's
    /// metrics (kept only by a metered run).
    exported: Option<BTreeMap<(NodeId, u32), (PartitionMember, RaftStats)>>,
    violation: Option<String>,
}

#[derive(Clone, Default)]
struct Checker {
    observed: Arc<Mutex<Observed>>,
}

impl Checker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, o: &mut Observed, message: String) {
        if o.violation.is_none() {
            o.violation = Some(message);
        }
    }
}

fn entry_digest(e: &Entry) -> u64 {
    match &e.payload {
        EntryPayload::Noop => 0,
        EntryPayload::Normal(b) => digest(b) | 1,
        EntryPayload::Config(c) => digest(format!("{c:?}").as_bytes()) | 2,
    }
}

/// One member's view of the shared [`Checker`].
#[derive(Clone)]
struct MemberObserver {
    checker: Checker,
    rt: SimRuntime,
}

impl ReplicaObserver for MemberObserver {
    fn booted(&self, node: NodeId) {
        if let Some(exported) = &mut self.checker.lock().exported {
            exported.retain(|(n, _), _| *n != node);
        }
    }

    fn stepped(&self, node: NodeId, group: u32, raft: &Raft) {
        let mut o = self.checker.lock();
        if let Some(exported) = &mut o.exported {
            exported.insert((node, group), (PartitionMember::of(raft), raft.stats()));
        }
        if o.configs.get(&(node, group)) != Some(raft.configuration()) {
            o.configs.insert((node, group), raft.configuration().clone());
        }
        let (term, commit) = (raft.term(), raft.commit());
        let role_digest = (u64::from(group) << 56) ^ (term << 2) ^ raft.role() as u64;
        if o.roles.insert((node, group), role_digest) != Some(role_digest) {
            self.rt.sim().trace_event(Some(node), "raft-role", role_digest, || {
                format!("group {group}: {:?} in term {term}, leader {:?}, commit {commit}", raft.role(), raft.leader())
            });
        }
        if raft.role() != Role::Leader {
            return;
        }
        match o.leaders.get(&(group, term)).copied() {
            Some(other) if other != node => {
                let m = format!("election safety: group {group} has two leaders in term {term}: {other} and {node}");
                self.checker.fail(&mut o, m);
            }
            Some(_) => {}
            None => {
                o.leaders.insert((group, term), node);
            }
        }
    }

    fn applied(&self, node: NodeId, group: u32, entry: &Entry) {
        let mut o = self.checker.lock();
        let seen = (entry.term, entry_digest(entry));
        let earlier = *o.applied.entry(group).or_default().entry(entry.index).or_insert(seen);
        if earlier != seen {
            let m = format!(
                "state machine safety: group {group} index {}: {node} applied an entry of term {} where another member applied one of term {}",
                entry.index, seen.0, earlier.0
            );
            self.checker.fail(&mut o, m);
        }
    }
}

/// One incarnation of a member: the composition `kaelix serve --cluster`
/// runs, on the simulated runtime; it lives as long as the incarnation.
async fn member(rt: SimRuntime, config: ServerConfig, bootstrap: bool, checker: Checker) {
    let observer = MemberObserver { checker: checker.clone(), rt: rt.clone() };
    let swim_rt = rt.channel(SWIM_CHANNEL);
    match cluster_member::start(rt.channel(0), &swim_rt, config, None, observer, bootstrap, &[]) {
        Ok(member) => {
            checker.lock().swim.insert(rt.node_id(), member.membership.clone());
            // The member's tasks run on; this one only keeps it.
            std::future::pending::<()>().await;
            drop(member);
        }
        Err(e) => {
            let mut o = checker.lock();
            checker.fail(&mut o, format!("member {} did not start: {e}", rt.node_id()));
        }
    }
}

/// One client operation (drawn before the run; payloads, offsets and the
/// outcome handling are the client's at run time).
#[derive(Clone, Debug)]
enum ClientOp {
    /// After `pause`, produce a fresh payload to `partition` through member
    /// number `member` (modulo the member count).
    Produce { pause: Duration, partition: u32, member: usize },
    /// After `pause`, fetch `partition` at `ahead` past `back` before the
    /// highest offset seen acknowledged, through member number `member`.
    Fetch { pause: Duration, partition: u32, member: usize, back: u64, ahead: u64 },
}

impl ClientOp {
    fn pause(&self) -> Duration {
        match self {
            ClientOp::Produce { pause, .. } | ClientOp::Fetch { pause, .. } => *pause,
        }
    }
}

/// A client's operations: every 2–25 ms a produce (65 %) or a fetch,
/// through a random member, enough to fill the safety phase.
fn draw_client_ops(rng: &mut DetRng) -> Vec<ClientOp> {
    crate::workload::filling(rng, SAFETY, ClientOp::pause, |rng| {
        let pause = Duration::from_millis(rng.random_range(2..25));
        let partition = rng.random_range(0..PARTITIONS);
        let member = rng.random_range(0..5);
        if rng.random_range(0..100) < 65 {
            ClientOp::Produce { pause, partition, member }
        } else {
            ClientOp::Fetch { pause, partition, member, back: rng.random_range(0..4), ahead: rng.random_range(0..3) }
        }
    })
}

/// The client's open connections, one per member, reopened after a break.
struct Connections {
    rt: SimRuntime,
    open: BTreeMap<NodeId, Connection<SimRuntime>>,
}

impl Connections {
    async fn to(&mut self, member: NodeId) -> Option<Connection<SimRuntime>> {
        if let Some(c) = self.open.get(&member).filter(|c| !c.is_closed()) {
            return Some(c.clone());
        }
        let addr = kaelix_sim::node_addr(member, NATIVE_PORT);
        match timeout(&self.rt, OP_DEADLINE, Connection::connect(&self.rt, addr)).await {
            Ok(Ok(c)) => {
                self.open.insert(member, c.clone());
                Some(c)
            }
            _ => None,
        }
    }

    /// Forgets a connection whose request timed out (a frozen or cut-off
    /// member): the next operation through it connects again.
    fn drop_stuck(&mut self, member: NodeId) {
        if let Some(c) = self.open.remove(&member) {
            c.close();
        }
    }
}

/// How a produce ended.
enum Produced {
    Acked(u64),
    Refused,
    Unknown,
}

/// One produce of `payload` to partition `p` through `conn`, recorded.
async fn produce(
    rt: &SimRuntime,
    conn: &Connection<SimRuntime>,
    history: &HistoryRecorder,
    client: u64,
    p: u32,
    payload: &str,
    deadline: Duration,
) -> Produced {
    let message = Message::builder()
        .topic(Topic::new(TOPIC).expect("valid"))
        .partition(p)
        .payload(Bytes::from(payload.to_owned()))
        .build()
        .expect("valid");
    let op = history.call_produce(client, &partition_name(p), payload, true_now(rt));
    let producer = Producer::new(conn.clone()).with_acks(AckLevel::Committed);
    match timeout(rt, deadline, producer.send(message)).await {
        Ok(Ok(position)) => {
            assert_eq!(position.partition, p, "a produce to a chosen partition lands there");
            history.return_produce(op, position.offset, true_now(rt));
            Produced::Acked(position.offset)
        }
        // The member knew no leader: nothing was proposed.
        Ok(Err(e)) if e.code() == Some(ErrorCode::NotLeader) => {
            history.fail(op);
            Produced::Refused
        }
        // Timeout (the outcome is unknown), a broken connection, the deadline.
        _ => Produced::Unknown,
    }
}

/// How a fetch ended.
enum Fetched {
    Found(String),
    Nothing,
    /// No leader confirmed the read (`Unavailable`): nothing was read.
    Unconfirmed,
    Unknown,
}

/// One fetch of offset `offset` of partition `p` through `conn`, recorded.
async fn fetch(
    rt: &SimRuntime,
    conn: &Connection<SimRuntime>,
    history: &HistoryRecorder,
    client: u64,
    p: u32,
    offset: u64,
) -> Result<Fetched, String> {
    let op = history.call_read(client, &partition_name(p), offset, true_now(rt));
    let consumer = Consumer::new(conn.clone());
    let options = FetchOptions { max_messages: 1, ..FetchOptions::default() };
    let topic = Topic::new(TOPIC).expect("valid");
    match timeout(rt, OP_DEADLINE, consumer.fetch(&topic, p, offset, options)).await {
        Ok(Ok(fetched)) => match fetched.messages.first() {
            Some(m) if m.offset() == Some(offset) => {
                let text = String::from_utf8_lossy(m.payload()).into_owned();
                history.return_read(op, Some(&text), true_now(rt));
                Ok(Fetched::Found(text))
            }
            Some(m) => Err(format!("a fetch of {}@{offset} returned a record at {:?}", partition_name(p), m.offset())),
            None => {
                history.return_read(op, None, true_now(rt));
                Ok(Fetched::Nothing)
            }
        },
        // Past the member's high watermark: nothing there (yet).
        Ok(Err(e)) if e.code() == Some(ErrorCode::OffsetOutOfRange) => {
            history.return_read(op, None, true_now(rt));
            Ok(Fetched::Nothing)
        }
        // A read that was not served observed nothing: out of the history.
        Ok(Err(e)) if e.code() == Some(ErrorCode::Unavailable) => {
            history.fail(op);
            Ok(Fetched::Unconfirmed)
        }
        _ => Ok(Fetched::Unknown),
    }
}

async fn client(
    rt: SimRuntime,
    me: u64,
    ops: Arc<Vec<ClientOp>>,
    servers: Vec<NodeId>,
    checker: Checker,
    history: HistoryRecorder,
) {
    let mut conns = Connections { rt: rt.clone(), open: BTreeMap::new() };
    let safety_end = Instant::ZERO + SAFETY;
    let mut produced = 0u64;
    let mut high: BTreeMap<u32, u64> = BTreeMap::new();
    for op in ops.iter() {
        if true_now(&rt) >= safety_end {
            break;
        }
        rt.sleep(op.pause()).await;
        match *op {
            ClientOp::Produce { partition: p, member, .. } => {
                let member = servers[member % servers.len()];
                let Some(conn) = conns.to(member).await else { continue };
                produced += 1;
                let payload = format!("c{me}-{produced}");
                checker.lock().submitted += 1;
                match produce(&rt, &conn, &history, me, p, &payload, OP_DEADLINE).await {
                    Produced::Acked(offset) => {
                        let h = high.entry(p).or_default();
                        *h = (*h).max(offset);
                        let mut o = checker.lock();
                        let leader = o.leaders.range((p, 0)..=(p, u64::MAX)).next_back().map(|(_, &n)| n);
                        if leader != Some(member) {
                            o.forwarded_acks += 1;
                        }
                        o.acked.insert((p, offset), payload);
                    }
                    Produced::Refused => {
                        checker.lock().refused.insert(payload);
                    }
                    Produced::Unknown => conns.drop_stuck(member),
                }
            }
            ClientOp::Fetch { partition: p, member, back, ahead, .. } => {
                let member = servers[member % servers.len()];
                let Some(conn) = conns.to(member).await else { continue };
                let offset = high.get(&p).map_or(0, |h| h.saturating_sub(back) + ahead);
                match fetch(&rt, &conn, &history, me, p, offset).await {
                    Ok(Fetched::Unknown) => conns.drop_stuck(member),
                    Ok(_) => {}
                    Err(violation) => {
                        let mut o = checker.lock();
                        checker.fail(&mut o, violation);
                    }
                }
            }
        }
    }
    checker.lock().clients_done += 1;
}

/// After heal and after the clients finished: a marker produce to every
/// partition through the live members, then the partition read back from
/// offset 0 through a member whose log holds the marker (so every
/// produce acknowledged before it).
async fn auditor(rt: SimRuntime, live: Vec<NodeId>, checker: Checker, history: HistoryRecorder) {
    while true_now(&rt) < Instant::ZERO + SAFETY || checker.lock().clients_done < CLIENTS {
        rt.sleep(Duration::from_millis(50)).await;
    }
    let me = 100;
    let mut conns = Connections { rt: rt.clone(), open: BTreeMap::new() };
    let mut turn = 0usize;
    let mut next_member = || {
        turn += 1;
        live[turn % live.len()]
    };
    let mut read_back = BTreeMap::new();
    for p in 0..PARTITIONS {
        let mut attempt = 0;
        let (marker, at) = loop {
            let member = next_member();
            let Some(conn) = conns.to(member).await else {
                rt.sleep(Duration::from_millis(100)).await;
                continue;
            };
            attempt += 1;
            let marker = format!("audit-{p}-{attempt}");
            match produce(&rt, &conn, &history, me, p, &marker, Duration::from_secs(2)).await {
                Produced::Acked(offset) => break (marker, offset),
                Produced::Refused => {}
                Produced::Unknown => conns.drop_stuck(member),
            }
            rt.sleep(Duration::from_millis(100)).await;
        };
        let records = 'members: loop {
            let member = next_member();
            let mut records = Vec::new();
            loop {
                let Some(conn) = conns.to(member).await else { break };
                match fetch(&rt, &conn, &history, me, p, records.len() as u64).await {
                    Ok(Fetched::Found(text)) => records.push(text),
                    Ok(Fetched::Nothing) => {
                        if records.get(at as usize) == Some(&marker) {
                            break 'members records;
                        }
                        // This member has not applied the marker yet.
                        break;
                    }
                    Ok(Fetched::Unknown) => {
                        conns.drop_stuck(member);
                        break;
                    }
                    Ok(Fetched::Unconfirmed) => break,
                    Err(violation) => {
                        let mut o = checker.lock();
                        return checker.fail(&mut o, violation);
                    }
                }
            }
            rt.sleep(Duration::from_millis(200)).await;
        };
        read_back.insert(p, records);
    }
    checker.lock().read_back = Some(read_back);
}

/// Whether every live member's SWIM view holds every other live member
/// alive.
fn swim_converged(o: &Observed, live: &[NodeId]) -> Result<(), String> {
    for &viewer in live {
        let Some(membership) = o.swim.get(&viewer) else {
            return Err(format!("member {viewer} has no SWIM view"));
        };
        let members = membership.members();
        for &other in live.iter().filter(|&&m| m != viewer) {
            let state = members.iter().find(|m| m.id == other).map(|m| m.state);
            if state != Some(MemberState::Alive) {
                return Err(format!("member {viewer} sees member {other} as {state:?}"));
            }
        }
    }
    Ok(())
}

/// Whether every group is back to its replication factor on live members:
/// every live member holds the same configuration of the group, not joint,
/// with `REPLICATION_FACTOR` voters — all of them live whenever enough
/// members are (a voter lost for good was replaced by a live learner).
/// Judged from the members' Raft configurations, not from what the
/// replacement code says it did.
fn replicas_placed(o: &Observed, live: &[NodeId]) -> Result<(), String> {
    let want = REPLICATION_FACTOR as usize;
    for g in 0..PARTITIONS {
        let mut agreed: Option<(NodeId, &Configuration)> = None;
        for &m in live {
            let Some(config) = o.configs.get(&(m, g)) else {
                return Err(format!("member {m} holds no configuration of group {g}"));
            };
            if let Some((first, other)) = agreed
                && other != config
            {
                return Err(format!(
                    "group {g}: member {first} holds voters {:?} learners {:?}, member {m} voters {:?} learners {:?}",
                    other.voters, other.learners, config.voters, config.learners
                ));
            }
            agreed = Some((m, config));
        }
        let Some((_, config)) = agreed else { continue };
        if config.is_joint() {
            return Err(format!("group {g} is still joint: {:?} → {:?}", config.outgoing, config.voters));
        }
        if config.voters.len() != want {
            return Err(format!(
                "group {g} has {} voters {:?}, not its replication factor {want}",
                config.voters.len(),
                config.voters
            ));
        }
        if live.len() >= want
            && let Some(gone) = config.voters.iter().find(|v| !live.contains(v))
        {
            return Err(format!(
                "group {g}'s voters {:?} still count member {gone}, lost for good, though {} members are live",
                config.voters,
                live.len()
            ));
        }
    }
    Ok(())
}

/// Groups whose newest voters, as any member holds them, differ from the
/// initial placement (a replacement happened).
fn voters_changed(o: &Observed, servers: &[NodeId]) -> u64 {
    let mut placed = ReplicatedConfig::new(servers.to_vec(), PARTITIONS);
    placed.replicas = (REPLICATION_FACTOR as usize).min(servers.len());
    (0..PARTITIONS)
        .filter(|&g| {
            let initial = placed.placement(g).voters;
            o.configs.iter().any(|(&(_, group), c)| group == g && c.voters != initial)
        })
        .count() as u64
}

/// Fetches that found nothing at an offset whose produce was acknowledged
/// before the fetch was called (a lagging member's answer).
fn stale_fetches(history: &History) -> u64 {
    // (partition, offset) → when its produce was acknowledged.
    let mut acked: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    for op in history.ops() {
        if let (Some(offset), Some(c)) = (op.produced_offset(), &op.completion) {
            acked.insert((op.partition.as_str(), offset), c.at);
        }
    }
    history
        .ops()
        .iter()
        .filter(|op| match (&op.kind, &op.completion) {
            (OpKind::Read { offset }, Some(c)) if c.output == Output::Nothing => {
                acked.get(&(op.partition.as_str(), *offset)).is_some_and(|&at| at < op.call)
            }
            _ => false,
        })
        .count() as u64
}

/// What one run produced.
struct Run {
    report: RunReport,
    history: History,
    tallies: Tallies,
    metrics: Option<RunMetrics>,
}

impl ClusterScenario {
    /// Durability: every acknowledged produce is where it was acknowledged,
    /// and no refused one is anywhere.
    fn durability(o: &Observed) -> Option<String> {
        let read_back = o.read_back.as_ref()?;
        let lost: Vec<String> = o
            .acked
            .iter()
            .filter(|((p, off), payload)| read_back.get(p).and_then(|r| r.get(*off as usize)) != Some(payload))
            .map(|((p, off), payload)| {
                let now = read_back.get(p).and_then(|r| r.get(*off as usize));
                format!("{payload:?} acknowledged at {} offset {off}, now {now:?}", partition_name(*p))
            })
            .collect();
        if !lost.is_empty() {
            return Some(format!(
                "{} acknowledged produce(s) lost: {}",
                lost.len(),
                lost.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
        let stored: Vec<String> = read_back
            .iter()
            .flat_map(|(p, records)| {
                records
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| o.refused.contains(*r))
                    .map(move |(off, r)| format!("{r:?} at {} offset {off}", partition_name(*p)))
            })
            .collect();
        (!stored.is_empty()).then(|| {
            format!(
                "{} produce(s) refused as not done were stored: {}",
                stored.len(),
                stored.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            )
        })
    }

    fn run_inner(&self, seed: u64, trace: Option<TraceSink>, meter: bool) -> Run {
        let mut setup = rng::derive(seed, 0xc1a5_0001);
        let ClusterPlan { servers, mut tolerance, profile, mut faulty } = plan_cluster(&mut setup);
        // Disks that may be wiped: a minority of every group's voters. With
        // 3 voters per partition on 5 members, two wiped members could be
        // two voters of one partition — a majority of it, more than
        // `REPLICATION_FACTOR` promises to survive — so one.
        let wipeable = (REPLICATION_FACTOR as usize - 1) / 2;
        faulty.truncate(wipeable.min(faulty.len()));
        tolerance.faulty_disks = tolerance.faulty_disks.min(wipeable);
        // A member lost for good when the faults stop: one of those whose
        // disk may be wiped, so the others are never short of a recovering
        // voter as well (5 members: one lost, one recovering, 3 voters).
        let lost = (servers.len() == 5 || setup.random_bool(0.5)).then(|| faulty[0]);
        let live: Vec<NodeId> = servers.iter().copied().filter(|&s| Some(s) != lost).collect();
        let safety_end = Instant::ZERO + SAFETY;
        let schedule = FaultSchedule::generate(&profile, &tolerance, &servers, &faulty, safety_end, &mut setup);
        let fault_mix = profile.mix();

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let checker = Checker::default();
        if meter {
            checker.lock().exported = Some(BTreeMap::new());
        }
        let history = HistoryRecorder::new();
        for &id in &servers {
            let (config, checker) = (member_config(&servers, id, self.planted), checker.clone());
            let init = SimRuntime::init(move |rt| {
                // The operator's knowledge: a member whose disk was ever
                // replaced must not take an empty disk for a new cluster.
                let wiped = rt
                    .sim()
                    .fault_log()
                    .iter()
                    .any(|(_, f)| matches!(f, Fault::Restart { node, wipe: true } if *node == id));
                member(rt, config.clone(), !wiped, checker.clone())
            });
            let spec = NodeSpec {
                kind: NodeKind::Server,
                name: format!("member-{}", id.0),
                faulty_disk: faulty.contains(&id),
                init,
            };
            sim.add_node(id, spec);
        }
        for c in 0..CLIENTS {
            let (checker, history, servers) = (checker.clone(), history.clone(), servers.clone());
            let ops = Arc::new(crate::workload::recorded(seed, WORKLOAD_LABEL, c, draw_client_ops));
            let init = SimRuntime::init(move |rt| {
                client(rt, c, ops.clone(), servers.clone(), checker.clone(), history.clone())
            });
            let spec = NodeSpec { kind: NodeKind::Client, name: format!("client-{c}"), faulty_disk: false, init };
            sim.add_node(NodeId(100 + c), spec);
        }
        {
            let (checker, history, live) = (checker.clone(), history.clone(), live.clone());
            let init = SimRuntime::init(move |rt| auditor(rt, live.clone(), checker.clone(), history.clone()));
            let spec = NodeSpec { kind: NodeKind::Client, name: "auditor".into(), faulty_disk: false, init };
            sim.add_node(AUDITOR, spec);
        }
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        if let Some(lost) = lost {
            sim.retire_at_liveness(lost);
        }
        sim.schedule_liveness(safety_end);

        let deadline = safety_end + LIVENESS_BOUND;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.run_until_done(
                deadline,
                |_| {
                    let o = checker.lock();
                    o.read_back.is_some() && swim_converged(&o, &live).is_ok() && replicas_placed(&o, &live).is_ok()
                },
                |_| match &checker.lock().violation {
                    Some(v) => Err(v.clone()),
                    None => Ok(()),
                },
            )
        }));
        let recorded = history.history();
        let verdict = match outcome {
            Ok(Ok(true)) => match Self::durability(&checker.lock()) {
                Some(lost) => Verdict::SafetyViolation(lost),
                None => {
                    let report = check_history(&recorded, &CheckConfig::default());
                    match report.first_violation() {
                        Some(v) => Verdict::SafetyViolation(format!("client history: {v}")),
                        None if !report.passed() => {
                            Verdict::SafetyViolation(format!("client history check inconclusive: {report}"))
                        }
                        None => Verdict::Pass,
                    }
                }
            },
            Ok(Ok(false)) => {
                let o = checker.lock();
                let why = match (&o.read_back, swim_converged(&o, &live), replicas_placed(&o, &live)) {
                    (None, _, _) => "the auditor did not finish".to_owned(),
                    (Some(_), Err(swim), _) => format!("SWIM did not converge ({swim})"),
                    (Some(_), Ok(()), Err(placed)) => format!("the replicas were not restored ({placed})"),
                    (Some(_), Ok(()), Ok(())) => "the run did not end".to_owned(),
                };
                let leaders: Vec<String> = (0..PARTITIONS)
                    .map(|g| {
                        let newest = o.leaders.range((g, 0)..=(g, u64::MAX)).next_back();
                        format!("group {g}: newest leader {:?}", newest.map(|((_, t), n)| (n, t)))
                    })
                    .collect();
                Verdict::LivenessViolation(format!(
                    "{why} within {LIVENESS_BOUND:?} of heal (lost member {lost:?}; {})",
                    leaders.join(", ")
                ))
            }
            Ok(Err(violation)) => Verdict::SafetyViolation(violation),
            Err(panic) => Verdict::from_panic(panic),
        };
        let o = checker.lock();
        let workload = (o.submitted, o.acked.len() as u64);
        let tallies: Tallies = vec![
            ("members", servers.len() as u64),
            ("seeds with a member lost for good", u64::from(lost.is_some())),
            ("leaders elected (group, term)", o.leaders.len() as u64),
            ("produces acknowledged through a member other than the newest leader", o.forwarded_acks),
            ("produces refused as not done", o.refused.len() as u64),
            ("stale fetches (nothing at an offset acknowledged before)", stale_fetches(&recorded)),
            ("groups whose voters changed (replacements)", voters_changed(&o, &servers)),
        ];
        let metrics = meter.then(|| {
            let mut m = RunMetrics::new();
            for (&(node, group), &(member, stats)) in o.exported.iter().flatten() {
                m.record_partition(node, TOPIC, group, member);
                m.record_raft_stats(node, TOPIC, group, stats);
            }
            for (&node, membership) in &o.swim {
                m.record_membership(node, membership);
            }
            m.record_sim_time(sim.now().since_origin().as_secs_f64());
            m
        });
        drop(o);
        let report = RunReport::conclude(&sim, seed, verdict, fault_mix, workload);
        {
            // The SWIM handles kept for the checks hold the senders of the
            // members' event subscriptions, whose receivers' tasks left
            // wakers of this simulation behind: drop them while it is
            // entered (the run is over; the wakes change nothing).
            let _entered = sim.enter();
            drop(std::mem::take(&mut checker.lock().swim));
        }
        Run { report, history: recorded, tallies, metrics }
    }
}

impl Scenario for ClusterScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn workload_units(&self) -> (&'static str, &'static str) {
        ("produces submitted", "acknowledged")
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn planted(&self) -> Planted {
        self.planted
    }

    fn run(&self, seed: u64, trace: Option<TraceSink>) -> RunReport {
        self.run_inner(seed, trace, false).report
    }

    fn run_recording(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Option<History>) {
        let run = self.run_inner(seed, trace, false);
        (run.report, Some(run.history))
    }

    fn run_tallied(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies) {
        let run = self.run_inner(seed, trace, false);
        (run.report, run.tallies)
    }

    fn run_metered(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies, Option<RunMetrics>) {
        let run = self.run_inner(seed, trace, true);
        (run.report, run.tallies, run.metrics)
    }
}

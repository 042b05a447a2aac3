//! Scenario family: Raft-replicated partitions under every fault.
//!
//! * **Cluster**: 3 or 5 servers (the seed picks) running
//!   `kaelix_cluster::replicated::node::run_node`, 2 partitions (`orders/0`,
//!   `orders/1`), each its own Raft group; snapshots every 40 entries, so
//!   compaction and snapshot transfer happen in most runs.
//! * **Workload**: 3 clients, each every 2–25 ms producing a unique payload
//!   to a random partition (65 %) or reading a random offset near the end
//!   (35 %), through `PartitionClient` (leader discovery, retries with the
//!   same session sequence number, 1 s deadline: after it the outcome is
//!   **unknown**), until 3 s after the safety phase ends (after it at most
//!   one operation per 100 ms). Every operation is recorded
//!   in a client history. Each client's operations (pause, produce or read,
//!   partition, how far from the end a read asks) are a recorded list drawn
//!   before the run (`crate::workload`), which `sim shrink` cuts; payloads,
//!   read offsets and retries are decided at run time.
//! * **Faults** (swarm-drawn per seed, `kaelix_sim::faults`): crashes and
//!   restarts of a minority, wiped disks on a minority of "faulty" nodes,
//!   whole-cluster power loss, partitions of every kind, loss, duplication,
//!   reordering, delay, pauses, clock skew / drift / steps, torn and lost
//!   unsynced writes, slow syncs, corrupt reads, `buggify!` fault points
//!   (which also make leaders hand leadership away at random). Bit rot and
//!   misdirected writes are off: they lose *synced* data on nodes that do
//!   not know it, which no Raft survives without protocol-aware recovery.
//! * **Safety, checked at every step** (an observer on every member):
//!   - *election safety*: at most one leader per group and term;
//!   - *vote uniqueness and durability*: no member grants its vote (on the
//!     wire) to two candidates in one term, and after a crash its state
//!     still reflects the newest vote it granted (unless its disk was
//!     replaced);
//!   - *log matching*: no two writes anywhere put different entries at the
//!     same index and term;
//!   - *leader completeness*: a new leader of term T holds every entry
//!     committed in a term before T (committed by the leader of that term);
//!   - *state machine safety*: no two members apply different entries at
//!     one index;
//!   - *monotonic state*: within an incarnation a member's term and commit
//!     index never decrease, and its vote in a term never changes;
//!   - *current-term commitment*: a leader's commit index only ever moves
//!     onto an entry of its own term.
//! * **Availability during faults** (`crate::availability`, judged from the
//!   simulator's ground truth and the clients' acknowledgements): whenever
//!   a majority of the servers is up, unpaused, connected with each other
//!   and the clients, with no crash, pause or partition anywhere, for a
//!   bound `B` derived there from the Raft and client configuration (2.31 s
//!   with perfect clocks), every partition acknowledges a produce within
//!   `B` of that window's start.
//! * **Liveness**: the safety phase lasts 5 s; then faults stop, nodes come
//!   back and an auditor client must, within 20 s, produce a marker to every
//!   partition and read each back from offset 0 to its end.
//! * **Durability and the history**: every acknowledged produce must be at
//!   its offset in the auditor's read-back, and the whole client history
//!   (with unknown operations) must be linearizable per partition with no
//!   lost, skipped, duplicated or non-monotonic offsets
//!   (`crate::linearizability`).
//!
//! Planted-bug variants (vote answered before it is durable; commit of an
//! earlier term's entry by counting replicas; produce acknowledged before
//! commit; lost appends never presumed lost, which strands followers and
//! breaks only availability) must fail.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kaelix_cluster::raft::{Body, Entry, EntryPayload, Message, Raft, RaftStats, Role, Write};
use kaelix_cluster::replicated::client::{ClientError, DEFAULT_ATTEMPT_TIMEOUT, PartitionClient};
use kaelix_cluster::replicated::node::{ReplicaObserver, ReplicatedConfig, run_node};
use kaelix_core::planted::Planted;
#[cfg(feature = "planted-bugs")]
use kaelix_core::planted::PlantedBug;
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::{Clock, Runtime};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::trace::{TraceSink, digest};
use kaelix_sim::{Fault, FaultProfile, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig, Tolerance};

use crate::availability::{self, Availability};
use crate::history::{History, HistoryRecorder};
use crate::linearizability::{CheckConfig, check_history};
use crate::metrics::{PartitionMember, RunMetrics};
use crate::{RunReport, Scenario, Tallies, Verdict};

/// One variant of the Raft scenario.
pub struct RaftScenario {
    name: &'static str,
    description: &'static str,
    planted: Planted,
}

/// The correct protocol.
pub static RAFT_PARTITIONS: RaftScenario = RaftScenario {
    name: "raft-partitions",
    description: "Raft-replicated partitions, 3 or 5 nodes, 2 partitions, 3 clients; every fault; linearizable history",
    planted: Planted::NONE,
};

/// Planted bug: a vote is answered before it is on disk.
#[cfg(feature = "planted-bugs")]
pub static RAFT_VOTE_BEFORE_PERSIST: RaftScenario = RaftScenario {
    name: "raft-partitions-vote-before-persist",
    description: "[planted bug] Raft partitions whose members answer a vote before persisting it",
    planted: Planted::only(PlantedBug::RaftVoteBeforePersist),
};

/// Planted bug: commit an earlier term's entry by counting replicas.
#[cfg(feature = "planted-bugs")]
pub static RAFT_COMMIT_PREVIOUS_TERM: RaftScenario = RaftScenario {
    name: "raft-partitions-commit-previous-term",
    description: "[planted bug] Raft partitions whose leaders commit earlier-term entries by counting replicas",
    planted: Planted::only(PlantedBug::RaftCommitPreviousTerm),
};

/// Planted bug: acknowledge a produce before it commits.
#[cfg(feature = "planted-bugs")]
pub static RAFT_ACK_BEFORE_COMMIT: RaftScenario = RaftScenario {
    name: "raft-partitions-ack-before-commit",
    description: "[planted bug] Raft partitions that acknowledge a produce when proposed, before commit",
    planted: Planted::only(PlantedBug::ReplicatedAckBeforeCommit),
};

/// Planted bug: a lost append is never sent again, so one loss strands a
/// follower for the rest of its leader's term (a liveness bug: no safety
/// check can see it).
#[cfg(feature = "planted-bugs")]
pub static RAFT_STRAND_FOLLOWER: RaftScenario = RaftScenario {
    name: "raft-partitions-strand-follower",
    description: "[planted bug] Raft partitions whose leaders never resend a lost append (refusal ignored, etcd raft#52), stranding followers",
    planted: Planted::only(PlantedBug::RaftLostAppendNeverResent),
};

const PARTITIONS: u32 = 2;
/// The tally of each partition's acknowledged produces (one per partition:
/// the array's length is checked against [`PARTITIONS`]).
const ACKED_TALLIES: [&str; PARTITIONS as usize] =
    ["acknowledged produces, partition 0", "acknowledged produces, partition 1"];
const CLIENTS: u64 = 3;
const AUDITOR: NodeId = NodeId(200);
const SAFETY: Duration = Duration::from_secs(5);
/// How long the clients keep producing into the liveness phase, so that
/// the availability window opening at heal is judged in every seed (the
/// bound, at most 2.4 s, fits: asserted).
const CLIENTS_AFTER_HEAL: Duration = Duration::from_secs(3);
/// After heal a client pauses at least this long between operations: the
/// window at heal needs produces asked for, not thousands more records for
/// the auditor to read back one by one.
const PAUSE_AFTER_HEAL: Duration = Duration::from_millis(100);
const LIVENESS_BOUND: Duration = Duration::from_secs(20);
const OP_DEADLINE: Duration = Duration::from_secs(1);
/// Labels the generators the clients' operation lists are drawn from.
const WORKLOAD_LABEL: u64 = 0x4af7_0a11;

fn partition_name(p: u32) -> String {
    format!("orders/{p}")
}

/// Everything the checker has seen.
#[derive(Default)]
struct Observed {
    /// (group, term) → leader.
    leaders: BTreeMap<(u32, u64), NodeId>,
    /// (group, term, voter) → the candidate it granted its vote to.
    votes: BTreeMap<(u32, u64, NodeId), NodeId>,
    /// (voter, group) → its newest vote granted on the wire: (term, candidate).
    newest_grant: BTreeMap<(NodeId, u32), (u64, NodeId)>,
    /// (group, index, term) → digest of an entry ever written.
    written: BTreeMap<(u32, u64, u64), u64>,
    /// group → index → (term, digest) of entries applied anywhere.
    applied: BTreeMap<u32, BTreeMap<u64, (u64, u64)>>,
    /// group → index → (term of the leader that committed it, entry term).
    committed_in: BTreeMap<u32, BTreeMap<u64, (u64, u64)>>,
    /// (node, group, term) → commit index last seen while it led that term.
    leader_commit: BTreeMap<(NodeId, u32, u64), u64>,
    /// (node, group) → digest of (role, term) last traced.
    roles: BTreeMap<(NodeId, u32), u64>,
    /// (node, group) → (term, vote, commit) last seen in this incarnation.
    last: BTreeMap<(NodeId, u32), (u64, Option<NodeId>, u64)>,
    /// (partition, offset) → payload, of acknowledged produces.
    acked: BTreeMap<(u32, u64), String>,
    /// What the auditor read back, per partition, once done.
    read_back: Option<BTreeMap<u32, Vec<String>>>,
    submitted: u64,
    /// Clients whose workload ended (no operation of theirs in flight).
    clients_done: u64,
    /// The availability oracle (`crate::availability`), fed every
    /// acknowledged produce and stepped after every simulator step.
    availability: Option<Availability>,
    /// (node, group) → the member's figures and counters for the run's
    /// metrics, this incarnation (kept only by a metered run).
    exported: Option<BTreeMap<(NodeId, u32), (PartitionMember, RaftStats)>>,
    violation: Option<String>,
}

#[derive(Clone)]
struct Checker {
    observed: Arc<Mutex<Observed>>,
    /// Set with `Observed::violation`, so the per-step check is one load.
    violated: Arc<AtomicBool>,
}

impl Checker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn violate(&self, o: &mut Observed, message: String) {
        if o.violation.is_none() {
            o.violation = Some(message);
            self.violated.store(true, Ordering::Relaxed);
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

/// One node's view of the shared [`Checker`]: it can also trace, through
/// the node's runtime.
#[derive(Clone)]
struct NodeObserver {
    checker: Checker,
    rt: SimRuntime,
}

impl ReplicaObserver for NodeObserver {
    fn booted(&self, node: NodeId) {
        let wiped = self.rt.sim().fault_log().iter().rev().find_map(|(_, f)| match f {
            Fault::Restart { node: n, wipe } if *n == node => Some(*wipe),
            _ => None,
        });
        let mut o = self.checker.lock();
        o.last.retain(|(n, _), _| *n != node);
        if let Some(exported) = &mut o.exported {
            exported.retain(|(n, _), _| *n != node);
        }
        if wiped == Some(true) {
            // A replaced disk forgets its votes by definition; the member
            // recovers instead (it votes again only once caught up).
            o.newest_grant.retain(|(n, _), _| *n != node);
        }
    }

    fn stepped(&self, node: NodeId, group: u32, raft: &Raft) {
        self.checker.stepped(&self.rt, node, group, raft);
    }

    fn sent(&self, node: NodeId, group: u32, to: NodeId, message: &Message) {
        self.checker.sent(node, group, to, message);
    }

    fn persisting(&self, node: NodeId, group: u32, write: &Write) {
        self.checker.persisting(node, group, write);
    }

    fn applied(&self, node: NodeId, group: u32, entry: &Entry) {
        self.checker.applied(node, group, entry);
    }
}

impl Checker {
    fn stepped(&self, rt: &SimRuntime, node: NodeId, group: u32, raft: &Raft) {
        let mut o = self.lock();
        if let Some(exported) = &mut o.exported {
            exported.insert((node, group), (PartitionMember::of(raft), raft.stats()));
        }
        let (term, vote, commit) = (raft.term(), raft.vote(), raft.commit());
        let role_digest = (u64::from(group) << 56) ^ (term << 2) ^ raft.role() as u64;
        if o.roles.insert((node, group), role_digest) != Some(role_digest) {
            rt.sim().trace_event(Some(node), "raft-role", role_digest, || {
                format!("group {group}: {:?} in term {term}, leader {:?}, commit {commit}", raft.role(), raft.leader())
            });
        }
        // Votes are durable: what a member granted on the wire survives
        // its crashes (Figure 2: persistent state is on stable storage
        // before responding).
        if let Some(&(t, candidate)) = o.newest_grant.get(&(node, group))
            && !(term > t || (term == t && vote == Some(candidate)))
        {
            let m = format!(
                "group {group}: {node} granted its vote to {candidate} in term {t}, now holds term {term} vote {vote:?}: a granted vote was not durable"
            );
            self.violate(&mut o, m);
        }
        if let Some(&(t0, v0, c0)) = o.last.get(&(node, group)) {
            if term < t0 {
                let m = format!("group {group}: {node}'s term went back from {t0} to {term}");
                self.violate(&mut o, m);
            } else if term == t0 && v0.is_some() && vote != v0 {
                let m = format!("group {group}: {node} changed its vote in term {term} from {v0:?} to {vote:?}");
                self.violate(&mut o, m);
            }
            if commit < c0 {
                let m = format!("group {group}: {node}'s commit index went back from {c0} to {commit}");
                self.violate(&mut o, m);
            }
        }
        o.last.insert((node, group), (term, vote, commit));
        if raft.role() != Role::Leader {
            return;
        }
        // A leader commits by counting replicas only entries of its own term
        // (§5.4.2); earlier entries commit with them.
        let leading_since = *o.leader_commit.entry((node, group, term)).or_insert(commit);
        if commit > leading_since && raft.log().term(commit).is_some_and(|t| t != term) {
            let t = raft.log().term(commit).unwrap_or_default();
            let m = format!(
                "group {group}: {node}, leader in term {term}, committed index {commit} of term {t} by counting replicas"
            );
            self.violate(&mut o, m);
        }
        o.leader_commit.insert((node, group, term), commit);
        // Entries a leader's commit index covers were committed in its term.
        let committed = o.committed_in.entry(group).or_default();
        let from = committed.last_key_value().map_or(raft.log().snapshot_point().0, |(&i, _)| i) + 1;
        for i in from..=commit {
            if let Some(t) = raft.log().term(i) {
                committed.insert(i, (term, t));
            }
        }
        match o.leaders.get(&(group, term)).copied() {
            Some(other) if other != node => {
                let m = format!("election safety: group {group} has two leaders in term {term}: {other} and {node}");
                self.violate(&mut o, m);
            }
            Some(_) => {}
            None => {
                o.leaders.insert((group, term), node);
                // Leader completeness: it holds every entry committed in an
                // earlier term (a leader of an older term elected late, by
                // delayed votes, need not hold newer terms' entries).
                let (snap, _) = raft.log().snapshot_point();
                let missing = o.committed_in.get(&group).and_then(|c| {
                    c.range(snap + 1..)
                        .find(|&(&i, &(u, t))| u < term && raft.log().term(i) != Some(t))
                        .map(|(&i, &(u, t))| (i, t, u))
                });
                if let Some((i, t, u)) = missing {
                    let m = format!(
                        "leader completeness: {node}, leader of group {group} in term {term}, lacks entry {i} (term {t}) committed in term {u}"
                    );
                    self.violate(&mut o, m);
                }
            }
        }
    }

    fn sent(&self, node: NodeId, group: u32, to: NodeId, message: &Message) {
        if let Body::VoteResponse { granted: true } = message.body {
            let mut o = self.lock();
            match o.votes.get(&(group, message.term, node)).copied() {
                Some(earlier) if earlier != to => {
                    let m = format!(
                        "group {group}: {node} granted its vote in term {} to both {earlier} and {to}",
                        message.term
                    );
                    self.violate(&mut o, m);
                }
                _ => {
                    o.votes.insert((group, message.term, node), to);
                }
            }
            let newest = o.newest_grant.entry((node, group)).or_insert((message.term, to));
            if message.term >= newest.0 {
                *newest = (message.term, to);
            }
        }
    }

    fn persisting(&self, node: NodeId, group: u32, write: &Write) {
        let mut o = self.lock();
        for e in &write.entries {
            let d = entry_digest(e);
            match o.written.get(&(group, e.index, e.term)).copied() {
                Some(other) if other != d => {
                    let m = format!(
                        "log matching: {node} wrote a different entry at index {} term {} of group {group}",
                        e.index, e.term
                    );
                    self.violate(&mut o, m);
                }
                Some(_) => {}
                None => {
                    o.written.insert((group, e.index, e.term), d);
                }
            }
        }
    }

    fn applied(&self, node: NodeId, group: u32, entry: &Entry) {
        let mut o = self.lock();
        let d = entry_digest(entry);
        let earlier = o.applied.entry(group).or_default().insert(entry.index, (entry.term, d));
        if let Some((t, ed)) = earlier
            && (t, ed) != (entry.term, d)
        {
            let m = format!(
                "state machine safety: {node} applied entry {} of group {group} with term {}, another member applied term {t}",
                entry.index, entry.term
            );
            self.violate(&mut o, m);
        }
    }
}

/// The time every client's history uses: the simulator's true time.
fn true_now(rt: &SimRuntime) -> Instant {
    rt.sim().now()
}

/// One operation of a client, after its pause. What depends on the
/// answers — the payload's sequence number, the offset a read asks for
/// (near the highest offset this client saw acknowledged), leader
/// discovery and retries — is the client's at run time.
#[derive(Clone, Debug)]
enum ClientOp {
    /// Produce a unique payload to partition `partition`.
    Produce { pause: Duration, partition: u32 },
    /// Read partition `partition` at `ahead` past `back` before the highest
    /// offset seen acknowledged (offset 0 before any).
    Read { pause: Duration, partition: u32, back: u64, ahead: u64 },
}

impl ClientOp {
    fn pause(&self) -> Duration {
        match self {
            ClientOp::Produce { pause, .. } | ClientOp::Read { pause, .. } => *pause,
        }
    }
}

/// A client's operations: every 2–25 ms a produce (65 %) or a read, enough
/// to fill the safety phase (see `crate::workload`).
fn draw_client_ops(rng: &mut DetRng) -> Vec<ClientOp> {
    crate::workload::filling(rng, SAFETY + CLIENTS_AFTER_HEAL, ClientOp::pause, |rng| {
        let pause = Duration::from_millis(rng.random_range(2..25));
        let partition = rng.random_range(0..PARTITIONS);
        if rng.random_range(0..100) < 65 {
            ClientOp::Produce { pause, partition }
        } else {
            ClientOp::Read { pause, partition, back: rng.random_range(0..4), ahead: rng.random_range(0..3) }
        }
    })
}

async fn client(
    rt: SimRuntime,
    me: u64,
    ops: Arc<Vec<ClientOp>>,
    servers: Vec<NodeId>,
    checker: Checker,
    history: HistoryRecorder,
) {
    let mut client = PartitionClient::new(rt.clone(), servers, me + 1);
    let clients_end = Instant::ZERO + SAFETY + CLIENTS_AFTER_HEAL;
    let mut produced = 0u64;
    let mut high: BTreeMap<u32, u64> = BTreeMap::new();
    for op in ops.iter() {
        if true_now(&rt) >= clients_end {
            break;
        }
        let pause = match true_now(&rt) >= Instant::ZERO + SAFETY {
            true => op.pause().max(PAUSE_AFTER_HEAL),
            false => op.pause(),
        };
        rt.sleep(pause).await;
        match *op {
            ClientOp::Produce { partition: p, .. } => {
                let name = partition_name(p);
                produced += 1;
                let payload = format!("c{me}-{produced}");
                checker.lock().submitted += 1;
                let op = history.call_produce(me, &name, &payload, true_now(&rt));
                match client.produce(p, Bytes::from(payload.clone()), OP_DEADLINE).await {
                    Ok(offset) => {
                        history.return_produce(op, offset, true_now(&rt));
                        let h = high.entry(p).or_default();
                        *h = (*h).max(offset);
                        let mut o = checker.lock();
                        o.acked.insert((p, offset), payload);
                        if let Some(a) = &mut o.availability {
                            a.acknowledged(p, true_now(&rt));
                        }
                        drop(o);
                        rt.sim().trace_event(Some(rt.node_id()), "client-ack", offset, || {
                            format!("{name} offset {offset}")
                        });
                    }
                    // Unknown: the produce may or may not have happened.
                    Err(ClientError::Unknown) | Err(ClientError::Refused(_)) => {}
                }
            }
            ClientOp::Read { partition: p, back, ahead, .. } => {
                let name = partition_name(p);
                let offset = high.get(&p).map_or(0, |h| h.saturating_sub(back) + ahead);
                let op = history.call_read(me, &name, offset, true_now(&rt));
                // An error leaves the read unknown.
                if let Ok(payload) = client.read(p, offset, OP_DEADLINE).await {
                    let text = payload.map(|b| String::from_utf8_lossy(&b).into_owned());
                    history.return_read(op, text.as_deref(), true_now(&rt));
                }
            }
        }
    }
    checker.lock().clients_done += 1;
}

/// After heal and after the clients finished: a marker produce to every
/// partition, then every offset read back from 0 until nothing is there.
async fn auditor(rt: SimRuntime, servers: Vec<NodeId>, checker: Checker, history: HistoryRecorder) {
    // The read-back must start after every client operation ended, so that
    // every acknowledged produce precedes it.
    while true_now(&rt) < Instant::ZERO + SAFETY || checker.lock().clients_done < CLIENTS {
        rt.sleep(Duration::from_millis(50)).await;
    }
    let me = 100;
    let mut client = PartitionClient::new(rt.clone(), servers, 1000);
    let mut read_back = BTreeMap::new();
    for p in 0..PARTITIONS {
        let name = partition_name(p);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let payload = format!("audit-{p}-{attempt}");
            let op = history.call_produce(me, &name, &payload, true_now(&rt));
            if let Ok(offset) = client.produce(p, Bytes::from(payload), Duration::from_secs(2)).await {
                history.return_produce(op, offset, true_now(&rt));
                break;
            }
        }
        let mut records = Vec::new();
        loop {
            let offset = records.len() as u64;
            let op = history.call_read(me, &name, offset, true_now(&rt));
            match client.read(p, offset, Duration::from_secs(2)).await {
                Ok(Some(payload)) => {
                    let text = String::from_utf8_lossy(&payload).into_owned();
                    history.return_read(op, Some(&text), true_now(&rt));
                    records.push(text);
                }
                Ok(None) => {
                    history.return_read(op, None, true_now(&rt));
                    break;
                }
                Err(_) => {}
            }
        }
        read_back.insert(p, records);
    }
    checker.lock().read_back = Some(read_back);
}

/// What one run produced.
struct Run {
    report: RunReport,
    history: History,
    tallies: Tallies,
    metrics: Option<RunMetrics>,
}

/// One seed's Raft cluster: its servers, the faults it must survive and
/// which servers' disks may be replaced.
pub(crate) struct ClusterPlan {
    /// 3 or 5 servers, `NodeId(1)` up.
    pub(crate) servers: Vec<NodeId>,
    /// A minority down at once, a minority of replaced disks, power loss.
    pub(crate) tolerance: Tolerance,
    /// The swarm-drawn fault profile, restricted to the tolerance.
    pub(crate) profile: FaultProfile,
    /// The servers whose disks may be replaced.
    pub(crate) faulty: Vec<NodeId>,
}

/// Draws a [`ClusterPlan`] from `setup`. Bit rot and misdirected writes are
/// off: synced data lost silently is outside what Raft claims (module docs).
pub(crate) fn plan_cluster(setup: &mut DetRng) -> ClusterPlan {
    let n: u64 = if setup.random_bool(0.5) { 3 } else { 5 };
    let servers: Vec<NodeId> = (1..=n).map(NodeId).collect();
    let minority = ((n - 1) / 2) as usize;
    let tolerance = Tolerance { max_down: minority, faulty_disks: minority, power_loss: true };
    let mut profile = FaultProfile::swarm(setup);
    profile.restrict(&tolerance);
    profile.bitrot_rate = 0.0;
    profile.disk.misdirect = 0.0;
    let mut faulty: Vec<NodeId> = Vec::new();
    while faulty.len() < minority {
        let candidate = servers[setup.random_range(0..servers.len())];
        if !faulty.contains(&candidate) {
            faulty.push(candidate);
        }
    }
    ClusterPlan { servers, tolerance, profile, faulty }
}

impl RaftScenario {
    /// Durability: every acknowledged produce is where it was acknowledged.
    fn lost(&self, checker: &Checker) -> Option<String> {
        let o = checker.lock();
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
        (!lost.is_empty()).then(|| {
            format!(
                "{} acknowledged produce(s) lost: {}",
                lost.len(),
                lost.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            )
        })
    }

    /// One run: its report, client history and tallies, and with `meter`
    /// every Raft member's metrics once it ended.
    fn run_inner(&self, seed: u64, trace: Option<TraceSink>, meter: bool) -> Run {
        let mut setup = rng::derive(seed, 0x4af7_0001);
        let ClusterPlan { servers, tolerance, profile, faulty } = plan_cluster(&mut setup);
        let safety_end = Instant::ZERO + SAFETY;
        let schedule = FaultSchedule::generate(&profile, &tolerance, &servers, &faulty, safety_end, &mut setup);
        let fault_mix = profile.mix();
        let max_drift_ppm = profile.max_drift_ppm;

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let checker = Checker { observed: Arc::default(), violated: Arc::default() };
        if meter {
            checker.lock().exported = Some(BTreeMap::new());
        }
        let history = HistoryRecorder::new();
        let mut config = ReplicatedConfig::new(servers.clone(), PARTITIONS);
        config.snapshot_every = 40;
        // Half the seeds snapshot on the count alone (many snapshots, many
        // installs on lagging members), half by the deployments' rule too
        // (also once the entries hold the snapshot's size in bytes).
        config.snapshot_log_percent = if setup.random_bool(0.5) { 0 } else { 100 };
        config.planted = self.planted;
        for &id in &servers {
            let (config, checker) = (config.clone(), checker.clone());
            let init = SimRuntime::init(move |rt| {
                let mut config = config.clone();
                // The operator's knowledge: a node whose disk was ever
                // replaced must not take an empty disk for a new cluster.
                let wiped = rt
                    .sim()
                    .fault_log()
                    .iter()
                    .any(|(_, f)| matches!(f, Fault::Restart { node, wipe: true } if *node == id));
                config.bootstrap = !wiped;
                let observer = NodeObserver { checker: checker.clone(), rt: rt.clone() };
                // A fresh incarnation always listens in the simulator.
                async move { run_node(rt, config, observer).expect("a simulated node listens").await }
            });
            let spec = NodeSpec {
                kind: NodeKind::Server,
                name: format!("server-{}", id.0),
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
            let (checker, history, servers) = (checker.clone(), history.clone(), servers.clone());
            let init = SimRuntime::init(move |rt| auditor(rt, servers.clone(), checker.clone(), history.clone()));
            let spec = NodeSpec { kind: NodeKind::Client, name: "auditor".into(), faulty_disk: false, init };
            sim.add_node(AUDITOR, spec);
        }
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(safety_end);
        let clients: Vec<NodeId> = (0..CLIENTS).map(|c| NodeId(100 + c)).collect();
        let bound = availability::bound(&config.raft, DEFAULT_ATTEMPT_TIMEOUT, max_drift_ppm);
        assert!(bound < CLIENTS_AFTER_HEAL, "the window opening at heal is judged while the clients produce");
        let clients_end = safety_end + CLIENTS_AFTER_HEAL;
        checker.lock().availability =
            Some(Availability::new(&sim, servers.clone(), clients, PARTITIONS, bound, clients_end));

        let deadline = safety_end + LIVENESS_BOUND;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.run_until_done(
                deadline,
                |_| checker.lock().read_back.is_some(),
                |sim| {
                    if checker.violated.load(Ordering::Relaxed) {
                        return Err(checker.lock().violation.clone().expect("set before the flag"));
                    }
                    if let Some(a) = &mut checker.lock().availability {
                        a.step(sim);
                    }
                    Ok(())
                },
            )
        }));
        let recorded = history.history();
        // Availability is judged after the safety checks (a safety
        // violation is the graver finding) and before the auditor's
        // end-of-run liveness check, whose outcome it names: a planted
        // liveness bug caught only here is one the older checks miss.
        let unavailable = checker.lock().availability.as_ref().and_then(|a| a.violation().map(str::to_owned));
        let verdict = match outcome {
            Ok(Ok(true)) => match self.lost(&checker) {
                Some(lost) => Verdict::SafetyViolation(lost),
                None => {
                    let report = check_history(&recorded, &CheckConfig::default());
                    match report.first_violation() {
                        Some(v) => Verdict::SafetyViolation(format!("client history: {v}")),
                        None if !report.passed() => {
                            Verdict::SafetyViolation(format!("client history check inconclusive: {report}"))
                        }
                        None => match unavailable {
                            Some(u) => Verdict::LivenessViolation(format!(
                                "{u} (the auditor did finish after heal, and durability and the client history hold)"
                            )),
                            None => Verdict::Pass,
                        },
                    }
                }
            },
            Ok(Ok(false)) if unavailable.is_some() => Verdict::LivenessViolation(format!(
                "{} (and the auditor did not finish within {LIVENESS_BOUND:?} of heal)",
                unavailable.unwrap_or_default()
            )),
            Ok(Ok(false)) => {
                let o = checker.lock();
                let leaders: Vec<String> = (0..PARTITIONS)
                    .map(|g| {
                        let newest = o.leaders.range((g, 0)..=(g, u64::MAX)).next_back();
                        format!("group {g}: newest leader {:?}", newest.map(|((_, t), n)| (n, t)))
                    })
                    .collect();
                Verdict::LivenessViolation(format!(
                    "the auditor did not finish within {LIVENESS_BOUND:?} of heal ({})",
                    leaders.join(", ")
                ))
            }
            Ok(Err(violation)) => Verdict::SafetyViolation(violation),
            Err(panic) => Verdict::from_panic(panic),
        };
        let o = checker.lock();
        let workload = (o.submitted, o.acked.len() as u64);
        let mut tallies: Tallies =
            vec![("servers", servers.len() as u64), ("leaders elected (group, term)", o.leaders.len() as u64)];
        for (p, name) in (0..PARTITIONS).zip(ACKED_TALLIES) {
            tallies.push((name, o.acked.range((p, 0)..=(p, u64::MAX)).count() as u64));
        }
        if let Some(a) = &o.availability {
            let t = a.tally();
            tallies.push(("available windows judged", t.windows_judged));
            tallies.push(("available windows cut short by a fault", t.windows_too_short));
            tallies.extend(availability::TALLY_NAMES.into_iter().zip(t.first_produce));
        }
        let metrics = meter.then(|| {
            let mut m = RunMetrics::new();
            for (&(node, group), &(member, stats)) in o.exported.iter().flatten() {
                m.record_partition(node, "orders", group, member);
                m.record_raft_stats(node, "orders", group, stats);
            }
            m.record_sim_time(sim.now().since_origin().as_secs_f64());
            m
        });
        drop(o);
        Run {
            report: RunReport::conclude(&sim, seed, verdict, fault_mix, workload),
            history: recorded,
            tallies,
            metrics,
        }
    }
}

impl Scenario for RaftScenario {
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

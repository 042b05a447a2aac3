//! A broker node: the embedded broker whose replicated topics are this
//! node's Raft groups (the `replicated` storage kind of
//! `kaelix_broker::storage`, seen from the cluster's side).
//!
//! # Model
//!
//! [`start_broker_node`] opens a broker with a replicator attached
//! (`Broker::with_replication`), creates the replicated topics, and spawns
//! the replicated-partition node ([`super::node`]'s driver) with a
//! [`Mirror`] between the two:
//!
//! * **Groups.** The topics' partitions, in the order given, are the
//!   node's groups: group `g` is the `g`-th (topic, partition). Every
//!   member must be started with the same topics in the same order (the
//!   controller that will assign them is the cluster issue's).
//! * **Publish.** The broker turns a publish to a replicated topic into a
//!   proposal; the mirror proposes it to the partition's group as a
//!   produce of session `session` (drawn per incarnation) with the
//!   proposal's number as its sequence number, the broker's encoding of
//!   the message as the record. A node that does not lead the group
//!   refuses at once (`BrokerError::NotLeader`, with the leader if known);
//!   a proposal whose leader lost its leadership before the commit is
//!   refused as unknown (`BrokerError::ReplicationUnknown`: it may still
//!   commit under the next leader).
//! * **Forwarding** ([`start_forwarding_broker_node`], what `kaelix serve
//!   --cluster` runs). A member that does not lead the group but knows its
//!   leader hands the publish to a forwarder task, which sends it as a
//!   produce of the member's session (the proposal's number as sequence
//!   number) over a client stream to the leader — one stream per leader,
//!   opened on first use and again after it broke — and settles the
//!   proposal with the leader's answer, given after the commit like any
//!   client's. The record reaches this member's broker as every committed
//!   record does, through its own group member's apply. A stream that
//!   breaks (or cannot be opened) before the answer leaves the publish
//!   unknown (`BrokerError::ReplicationUnknown`: it may still commit), and
//!   so does a leader that has not answered within
//!   [`ReplicatedConfig::forward_timeout`] (a frozen or partitioned leader
//!   keeps its stream open and says nothing); its stream is then closed.
//!   Group commits are not forwarded (`NotLeader`). [`start_broker_node`]
//!   refuses instead, and is what the simulated scenarios run: forwarding
//!   touches neither the driver nor its fault points.
//! * **Read rounds** (linearizable reads: `kaelix_broker::replication`,
//!   "Linearizable reads"). The broker hands over a read round of a
//!   partition (`ProposalOp::ReadIndex`); the group's leader confirms the
//!   committed prefix with Raft's ReadIndex (a heartbeat round answered by
//!   a majority, after the round was asked for) and answers, once it has
//!   applied the read index, with the partition's next offset then
//!   (`Request::ReadIndex` → `Response::ReadPrefix`). A member that leads
//!   the group asks its own core; a forwarding member that does not sends
//!   the request over its stream to the leader it knows, like a forwarded
//!   publish — a new request rather than a `Read` of one offset, because
//!   the member needs the length of the committed prefix (to serve a whole
//!   batch from its own log, and to know when that log has caught up), not
//!   one record's bytes. The broker waits until its own log holds the
//!   prefix before it serves. With no leader known (or, without
//!   forwarding, a leader elsewhere), an answer lost with its stream, or
//!   none within `forward_timeout`, the round is refused
//!   (`BrokerError::ReadUnconfirmed`): nothing changed, the reader
//!   retries.
//! * **Graceful stop** ([`StepDown`], forwarding nodes). Asked to step
//!   down, the driver hands each group it leads to the most caught-up
//!   other voter (Raft's leadership transfer: catch it up, then
//!   `TimeoutNow`), retries transfers that time out, and answers once it
//!   leads no group. `kaelix serve --cluster` does this on SIGTERM after
//!   draining its clients, so the others go on without waiting out an
//!   election timeout.
//! * **Group commits.** A consumer-group commit on a replicated topic
//!   becomes a proposal too; the mirror proposes it as a commit command of
//!   the same session (the group's name and next offset).
//! * **Apply.** Every committed record, on every member, is appended to
//!   the member's broker at the offset the group's state machine gave it,
//!   and delivered there to subscribers, log-backed streams and consumer
//!   groups; every committed group commit raises the group's committed
//!   offset in the member's broker. A snapshot installed (a lagging or
//!   restarted member) is caught up record by record from the machine, and
//!   its groups' commits with it.
//! * **Acknowledge.** The leader answers the proposal with the record's
//!   offset (a commit: the group's committed offset) once the entry has
//!   applied (so after commit): the publish or commit returns.
//!
//! The broker itself keeps no file: the Raft log (write-ahead log and
//! snapshots of `raft::disk`) is the partition's durable storage, and a
//! restarted member rebuilds its broker's log by re-applying it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures_channel::{mpsc, oneshot};
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use kaelix_broker::message::Message;
use kaelix_broker::replication::{Proposal, ProposalId, ProposalOp};
use kaelix_broker::storage::StorageKind;
use kaelix_broker::topic::Topic;
use kaelix_broker::{Broker, BrokerConfig, BrokerError, TopicConfig};
use kaelix_core::planted::{Planted, PlantedBug};
use kaelix_core::rng::RngExt;
use kaelix_core::runtime::{ClientNetwork, ClientStream, Priority, Runtime};
use kaelix_core::time::{Duration, Instant};
use kaelix_core::{NodeId, WallTime};

use super::node::{LivenessFeed, ReplicaObserver, ReplicatedConfig, StartError, listen, run};
use super::protocol::{Request, Response};
use super::replica::{ClientRef, Output, ReplicaCore};
use crate::raft::Role;

/// The connection name the mirror's proposals are answered on (client
/// connections count up from 1 and never reach it).
const BROKER_CLIENT: ClientRef = ClientRef(u64::MAX);

/// Why a broker node could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerNodeError {
    /// A topic given is not replicated.
    #[error("topic {0} is not replicated: a broker node's groups are replicated topics")]
    NotReplicated(Topic),
    /// The broker refused a topic.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The node cannot listen for clients (the other members' forwarded
    /// publishes).
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Starts node `rt.node_id()` of a replicated broker: a broker whose
/// replicated `topics` (each [`StorageKind::Replicated`]; the same list, in
/// the same order, on every member) are Raft groups over
/// `config.members`, and returns the broker (see the module docs).
/// `config.partitions` is set to the total partition count. Memory topics
/// may be created on the broker later as on any broker.
pub fn start_broker_node<R: Runtime, O: ReplicaObserver>(
    rt: R,
    broker_config: BrokerConfig,
    topics: &[(Topic, TopicConfig)],
    config: ReplicatedConfig,
    observer: O,
) -> Result<Broker<R>, BrokerNodeError> {
    start(rt, broker_config, topics, config, observer, None)
}

/// [`start_broker_node`], forwarding a publish to a group this node does
/// not lead to the group's leader (see the module docs) instead of
/// refusing it, and with a [`StepDown`] for a graceful stop. The members'
/// client addresses (`ClientNetwork::connect`) must be reachable.
/// `membership`: SWIM's word on the members ([`LivenessFeed::of`]), from
/// which a leader learns which voters are dead and replaces them
/// (`ReplicatedConfig::replace_dead_after`); without it none is.
pub fn start_forwarding_broker_node<R: Runtime, O: ReplicaObserver>(
    rt: R,
    broker_config: BrokerConfig,
    topics: &[(Topic, TopicConfig)],
    config: ReplicatedConfig,
    observer: O,
    membership: Option<LivenessFeed>,
) -> Result<(Broker<R>, StepDown), BrokerNodeError> {
    let (requests, step_down) = mpsc::unbounded();
    let broker = start(rt, broker_config, topics, config, observer, Some((step_down, membership)))?;
    Ok((broker, StepDown { requests }))
}

fn start<R: Runtime, O: ReplicaObserver>(
    rt: R,
    broker_config: BrokerConfig,
    topics: &[(Topic, TopicConfig)],
    mut config: ReplicatedConfig,
    observer: O,
    // Forwarding, with the graceful-stop requests and SWIM's events.
    forward: Option<(mpsc::UnboundedReceiver<oneshot::Sender<()>>, Option<LivenessFeed>)>,
) -> Result<Broker<R>, BrokerNodeError> {
    // First, so that a node that cannot listen starts nothing.
    let listener = listen(&rt)?;
    let broker = Broker::with_replication(rt.clone(), rt.rng(), broker_config);
    let mut groups = Vec::new();
    for (topic, topic_config) in topics {
        if !matches!(topic_config.storage, StorageKind::Replicated(_)) {
            return Err(BrokerNodeError::NotReplicated(topic.clone()));
        }
        broker.create_new_topic(topic, topic_config.clone())?;
        groups.extend((0..topic_config.partitions).map(|p| (topic.clone(), p)));
    }
    config.partitions = u32::try_from(groups.len()).expect("group count fits");
    let mut mirror = Mirror::new(broker.clone(), groups, rt.rng().random(), rt.node_id(), config.planted);
    if let Some((step_down, membership)) = forward {
        mirror.step_down = Some(step_down);
        mirror.membership = membership;
        let (tx, rx) = mpsc::unbounded();
        let task = forwarder(rt.clone(), broker.clone(), config.forward_timeout, config.planted, rx, tx.clone());
        drop(rt.spawn(Priority::High, "broker-forwarder", task));
        mirror.forward = Some(tx);
    }
    drop(rt.spawn(Priority::Critical, "replica-main", run(rt.clone(), config, observer, listener, Some(mirror))));
    Ok(broker)
}

/// Between a node's groups and its broker (see the module docs).
pub(super) struct Mirror<R: Runtime> {
    broker: Broker<R>,
    /// Group → (topic, partition).
    groups: Vec<(Topic, u32)>,
    /// (topic, partition) → group.
    group_of: BTreeMap<(Topic, u32), u32>,
    /// This incarnation's produce session.
    session: u64,
    /// Proposals and read rounds handed to a group this member leads,
    /// waiting for their answer: id → (group, what was asked).
    proposed: BTreeMap<ProposalId, (u32, Asked)>,
    /// This node.
    me: NodeId,
    /// The forwarder's queue, when publishes to groups led elsewhere are
    /// forwarded.
    forward: Option<mpsc::UnboundedSender<Job>>,
    /// Graceful-stop requests ([`StepDown`]), taken by the driver.
    pub(super) step_down: Option<mpsc::UnboundedReceiver<oneshot::Sender<()>>>,
    /// SWIM's word on the members, taken by the driver.
    pub(super) membership: Option<LivenessFeed>,
    /// Planted bugs switched on (`FetchSkipsReadIndex`).
    planted: Planted,
}

/// What a proposal handed to a leader asks: a write (a publish or a group
/// commit: of unknown outcome when its answer is lost) or a read round
/// (nothing changes: a lost answer leaves the read unconfirmed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asked {
    Write,
    Read,
}

/// Asks a forwarding broker node to hand away the leadership of every
/// group it leads, before its process stops: the other members then go on
/// at once instead of waiting an election timeout to notice the leader is
/// gone, and nothing acknowledged is at stake (a stopping leader's
/// committed entries are on a majority already).
#[derive(Clone, Debug)]
pub struct StepDown {
    requests: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl StepDown {
    /// Completes once the member leads no group (or its driver is gone).
    /// A transfer needs a reachable, caught-up member to take over: bound
    /// the wait with a timeout.
    pub async fn hand_off(&self) {
        let (done, handed_off) = oneshot::channel();
        if self.requests.unbounded_send(done).is_ok() {
            let _ = handed_off.await;
        }
    }
}

impl<R: Runtime> Mirror<R> {
    fn new(broker: Broker<R>, groups: Vec<(Topic, u32)>, session: u64, me: NodeId, planted: Planted) -> Self {
        let group_of = groups.iter().enumerate().map(|(g, tp)| (tp.clone(), g as u32)).collect();
        Mirror {
            broker,
            groups,
            group_of,
            session,
            proposed: BTreeMap::new(),
            me,
            forward: None,
            step_down: None,
            membership: None,
            planted,
        }
    }

    pub(super) fn broker(&self) -> &Broker<R> {
        &self.broker
    }

    /// Proposes a publish to its partition's group, or refuses it at once
    /// where this member does not lead the group.
    pub(super) fn propose<O: ReplicaObserver>(
        &mut self,
        core: &mut ReplicaCore<O>,
        now: Instant,
        wall: WallTime,
        proposal: Proposal,
    ) {
        let Proposal { id, topic, partition, op } = proposal;
        let group = *self.group_of.get(&(topic.clone(), partition)).expect("replicated partitions are groups");
        if op == ProposalOp::ReadIndex {
            return self.read_round(core, now, wall, id, topic, partition, group);
        }
        let raft = core.raft(group);
        if raft.role() != Role::Leader {
            if let (Some(queue), Some(to), ProposalOp::Publish(message)) = (&self.forward, raft.leader(), &op)
                && to != self.me
            {
                let (client, seq, payload) = (self.session, id.0, message.encode_to_bytes());
                let frame = Request::Produce { req: id.0, partition: group, client, seq, payload }.encode();
                let job = Job::Send { to, id, asked: Asked::Write, topic: topic.clone(), partition, frame };
                if queue.unbounded_send(job).is_ok() {
                    return;
                }
            }
            let leader = raft.leader().map(|n| n.0);
            self.broker.proposal_done(id, Err(BrokerError::NotLeader { topic, partition, leader }));
            return;
        }
        self.proposed.insert(id, (group, Asked::Write));
        let (req, client, seq) = (id.0, self.session, id.0);
        let request = match op {
            ProposalOp::Publish(message) => {
                Request::Produce { req, partition: group, client, seq, payload: message.encode_to_bytes() }
            }
            ProposalOp::Commit { group: consumer_group, next } => {
                Request::Commit { req, partition: group, client, seq, group: consumer_group, next }
            }
            ProposalOp::ReadIndex => unreachable!("read rounds are handled above"),
        };
        core.handle_request(now, wall, BROKER_CLIENT, request);
    }

    /// A read round of the broker (see `kaelix_broker::replication`,
    /// "Linearizable reads"): the group's leader confirms the committed
    /// prefix — this member's own core if it leads (a ReadIndex round),
    /// else, when forwarding, the leader it knows over the forwarder's
    /// stream (a `ReadIndex` request). Without a leader to ask the round is
    /// refused at once: the reader retries.
    #[allow(clippy::too_many_arguments)]
    fn read_round<O: ReplicaObserver>(
        &mut self,
        core: &mut ReplicaCore<O>,
        now: Instant,
        wall: WallTime,
        id: ProposalId,
        topic: Topic,
        partition: u32,
        group: u32,
    ) {
        if self.planted.is_on(PlantedBug::FetchSkipsReadIndex) {
            // Planted: "confirmed" at whatever this member holds now.
            let local = self.broker.next_offset(topic.as_str(), partition).unwrap_or(0);
            self.broker.proposal_done(id, Ok(local));
            return;
        }
        let request = Request::ReadIndex { req: id.0, partition: group };
        let raft = core.raft(group);
        if raft.role() == Role::Leader {
            self.proposed.insert(id, (group, Asked::Read));
            core.handle_request(now, wall, BROKER_CLIENT, request);
            return;
        }
        let leader = raft.leader().filter(|&l| l != self.me);
        if let (Some(queue), Some(to)) = (&self.forward, leader) {
            let job =
                Job::Send { to, id, asked: Asked::Read, topic: topic.clone(), partition, frame: request.encode() };
            if queue.unbounded_send(job).is_ok() {
                return;
            }
        }
        let reason = match leader {
            Some(l) => format!("this member does not forward to the leader, node {}", l.0),
            None => "no leader is known".to_owned(),
        };
        self.broker.proposal_done(id, Err(BrokerError::ReadUnconfirmed { topic, partition, reason }));
    }

    /// Takes the outputs that are the mirror's (records applied, snapshots
    /// installed, answers to its proposals); hands the others back.
    pub(super) fn take<O: ReplicaObserver>(&mut self, core: &ReplicaCore<O>, out: Output) -> Option<Output> {
        match out {
            Output::Applied { group, offset, record } => {
                self.apply(group, offset, &record.payload);
                None
            }
            Output::GroupCommitted { group, consumer_group, next } => {
                let (topic, partition) = &self.groups[group as usize];
                self.broker.replicated_commit(topic, *partition, &consumer_group, next);
                None
            }
            Output::Restored { group } => {
                let (topic, partition) = &self.groups[group as usize];
                let machine = core.machine(group);
                let from = self.broker.next_offset(topic.as_str(), *partition).unwrap_or(0);
                for offset in from..machine.next_offset() {
                    let record = machine.get(offset).expect("a machine keeps every record");
                    self.apply(group, offset, &record.payload);
                }
                for (consumer_group, &next) in machine.commits() {
                    self.broker.replicated_commit(topic, *partition, consumer_group, next);
                }
                None
            }
            Output::Reply { client, response } if client == BROKER_CLIENT => {
                self.answer(response);
                None
            }
            other => Some(other),
        }
    }

    fn apply(&self, group: u32, offset: u64, payload: &bytes::Bytes) {
        let (topic, partition) = &self.groups[group as usize];
        let message = Message::decode(payload).expect("records hold messages a broker encoded");
        self.broker.replicated_append(topic, *partition, offset, message);
    }

    fn answer(&mut self, response: Response) {
        let id = ProposalId(response.req());
        let Some((group, asked)) = self.proposed.remove(&id) else { return };
        let (topic, partition) = self.groups[group as usize].clone();
        self.broker.proposal_done(id, outcome_of(response, asked, topic, partition));
    }
}

/// A proposal's or read round's outcome from the answer of its group's
/// leader.
fn outcome_of(response: Response, asked: Asked, topic: Topic, partition: u32) -> Result<u64, BrokerError> {
    if asked == Asked::Read {
        let reason = match response {
            Response::ReadPrefix { next, .. } => return Ok(next),
            Response::NotLeader { leader: Some(l), .. } => format!("it no longer leads (node {} does)", l.0),
            Response::NotLeader { leader: None, .. } => "it no longer leads".to_owned(),
            Response::Error { reason, .. } => reason,
            other => unreachable!("a read round is answered with a prefix or a refusal, not {other:?}"),
        };
        return Err(BrokerError::ReadUnconfirmed { topic, partition, reason });
    }
    match response {
        Response::Produced { offset, .. } => Ok(offset),
        Response::Committed { next, .. } => Ok(next),
        Response::NotLeader { leader, .. } => Err(BrokerError::ReplicationUnknown {
            topic,
            partition,
            reason: match leader {
                Some(l) => format!("leadership moved to node {} before the commit", l.0),
                None => "leadership was lost before the commit".to_owned(),
            },
        }),
        Response::Error { reason, .. } => Err(BrokerError::ReplicationUnknown { topic, partition, reason }),
        Response::ReadResult { .. } | Response::ReadPrefix { .. } => {
            unreachable!("a write is answered with its outcome, not {response:?}")
        }
    }
}

/// What the forwarder task is given.
pub(super) enum Job {
    /// Send this produce (or read-index) frame to `to` (the group's leader)
    /// for proposal (or read round) `id`.
    Send { to: NodeId, id: ProposalId, asked: Asked, topic: Topic, partition: u32, frame: Bytes },
    /// A leader's answer, read from the stream to it.
    Answer(Response),
    /// The stream of this generation to that leader ended.
    Lost(NodeId, u64),
}

/// A forwarded publish waiting for its leader's answer.
struct Forwarded {
    /// The leader it was sent to, and the generation of the stream it
    /// went out on.
    leader: NodeId,
    generation: u64,
    /// A publish, or a read round.
    asked: Asked,
    topic: Topic,
    partition: u32,
    /// When it is given up as unknown (see [`ReplicatedConfig::forward_timeout`]).
    deadline: Instant,
}

/// The forwarded publishes waiting for an answer, by proposal and by
/// deadline: the forwarder sleeps until the earliest deadline on every
/// turn, so that one is read off an ordered index (O(log n)) rather than
/// found by scanning every waiting publish.
#[derive(Default)]
struct Waiting {
    by_id: BTreeMap<ProposalId, Forwarded>,
    /// `(deadline, id)` of every entry of `by_id`.
    by_deadline: BTreeSet<(Instant, ProposalId)>,
}

impl Waiting {
    fn insert(&mut self, id: ProposalId, forwarded: Forwarded) {
        // The old entry's index goes first: with the same deadline, removing
        // it after indexing the new one would unindex the new one.
        if let Some(old) = self.by_id.remove(&id) {
            self.by_deadline.remove(&(old.deadline, id));
        }
        self.by_deadline.insert((forwarded.deadline, id));
        self.by_id.insert(id, forwarded);
    }

    fn remove(&mut self, id: ProposalId) -> Option<Forwarded> {
        let forwarded = self.by_id.remove(&id)?;
        self.by_deadline.remove(&(forwarded.deadline, id));
        Some(forwarded)
    }

    /// The earliest deadline, if any publish waits.
    fn next_deadline(&self) -> Option<Instant> {
        self.by_deadline.first().map(|&(deadline, _)| deadline)
    }

    /// Removes every publish whose deadline is at or before `now`, in
    /// proposal order (the order they are settled in).
    fn take_expired(&mut self, now: Instant) -> Vec<(ProposalId, Forwarded)> {
        let mut ids = Vec::new();
        while let Some(&(deadline, id)) = self.by_deadline.first()
            && deadline <= now
        {
            self.by_deadline.pop_first();
            ids.push(id);
        }
        ids.sort_unstable();
        ids.into_iter().map(|id| (id, self.by_id.remove(&id).expect("indexed"))).collect()
    }

    /// Removes every publish that went out on `leader`'s stream of
    /// `generation`, in proposal order.
    fn take_sent_on(&mut self, leader: NodeId, generation: u64) -> Vec<(ProposalId, Forwarded)> {
        let ids: Vec<ProposalId> = self
            .by_id
            .iter()
            .filter(|(_, w)| w.leader == leader && w.generation == generation)
            .map(|(&id, _)| id)
            .collect();
        ids.into_iter().map(|id| (id, self.remove(id).expect("listed"))).collect()
    }
}

/// Forwards publishes to their groups' leaders and settles them with the
/// answers (see the module docs).
///
/// Nothing waits forever: connecting to a leader and handing it a frame
/// are bounded by `timeout`, and so is its answer — a leader that is
/// partitioned away keeps its TCP stream open and never answers. A
/// publish past its deadline is settled as unknown (it may still commit)
/// and the stream it went out on is closed, so the next publish to that
/// node connects afresh (and fails fast while the node stays unreachable)
/// instead of queueing behind a silent peer.
async fn forwarder<R: Runtime>(
    rt: R,
    broker: Broker<R>,
    timeout: Duration,
    planted: Planted,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    to_self: mpsc::UnboundedSender<Job>,
) {
    let mut streams: BTreeMap<NodeId, (u64, <R as ClientNetwork>::Stream)> = BTreeMap::new();
    let mut waiting = Waiting::default();
    let mut generation = 0u64;
    // A forwarded publish whose answer is lost is of unknown outcome; a read
    // round is merely unconfirmed (it changed nothing).
    let unknown = |asked: Asked, topic: Topic, partition: u32, reason: String| {
        if asked == Asked::Read {
            return BrokerError::ReadUnconfirmed { topic, partition, reason };
        }
        if planted.is_on(PlantedBug::ForwardUnknownAsRefused) {
            // Planted: "not done" about a publish that may still commit.
            return BrokerError::NotLeader { topic, partition, leader: None };
        }
        BrokerError::ReplicationUnknown { topic, partition, reason }
    };
    loop {
        let job = match waiting.next_deadline() {
            None => jobs.next().await,
            Some(deadline) => {
                let sleep = std::pin::pin!(rt.sleep_until(deadline));
                match select(jobs.next(), sleep).await {
                    Either::Left((job, _)) => job,
                    Either::Right(((), _)) => {
                        for (id, w) in waiting.take_expired(rt.now()) {
                            if let Some((g, stream)) = streams.get(&w.leader)
                                && *g == w.generation
                            {
                                // Its reader reports the stream lost, which
                                // settles what else went out on it.
                                stream.close();
                                streams.remove(&w.leader);
                            }
                            let reason = format!(
                                "node {}, the leader it was forwarded to, did not answer within {timeout:?}",
                                w.leader.0
                            );
                            broker.proposal_done(id, Err(unknown(w.asked, w.topic, w.partition, reason)));
                        }
                        continue;
                    }
                }
            }
        };
        let Some(job) = job else { break };
        match job {
            Job::Answer(response) => {
                let id = ProposalId(response.req());
                if let Some(w) = waiting.remove(id) {
                    broker.proposal_done(id, outcome_of(response, w.asked, w.topic, w.partition));
                }
            }
            Job::Lost(node, g) => {
                if streams.get(&node).is_some_and(|(current, _)| *current == g) {
                    streams.remove(&node);
                }
                // Only what went out on that stream: a newer stream to the
                // same node may carry others.
                for (id, w) in waiting.take_sent_on(node, g) {
                    let reason = format!("the stream to node {} (the leader it was forwarded to) broke", node.0);
                    broker.proposal_done(id, Err(unknown(w.asked, w.topic, w.partition, reason)));
                }
            }
            Job::Send { to, id, asked, topic, partition, frame } => {
                let (g, stream) = match streams.get(&to) {
                    Some((g, stream)) => (*g, stream.clone()),
                    None => match kaelix_core::runtime::timeout(&rt, timeout, rt.connect(to)).await {
                        Ok(Ok(stream)) => {
                            generation += 1;
                            let (g, reader, answers) = (generation, stream.clone(), to_self.clone());
                            drop(rt.spawn(Priority::High, "broker-forward-reader", async move {
                                while let Ok(Some(frame)) = reader.recv().await {
                                    if let Ok(response) = Response::decode(frame) {
                                        let _ = answers.unbounded_send(Job::Answer(response));
                                    }
                                }
                                let _ = answers.unbounded_send(Job::Lost(to, g));
                            }));
                            streams.insert(to, (g, stream.clone()));
                            (g, stream)
                        }
                        Ok(Err(e)) => {
                            let reason = format!("the leader, node {}, is unreachable: {e}", to.0);
                            broker.proposal_done(id, Err(unknown(asked, topic, partition, reason)));
                            continue;
                        }
                        Err(_) => {
                            let reason =
                                format!("the leader, node {}, did not accept a connection within {timeout:?}", to.0);
                            broker.proposal_done(id, Err(unknown(asked, topic, partition, reason)));
                            continue;
                        }
                    },
                };
                let deadline = rt.now() + timeout;
                waiting.insert(id, Forwarded { leader: to, generation: g, asked, topic, partition, deadline });
                let sent = kaelix_core::runtime::timeout(&rt, timeout, stream.send(frame)).await;
                if !matches!(sent, Ok(Ok(_))) {
                    // A failed or stuck send: the reader sees the stream
                    // end and reports it lost, settling this proposal with
                    // the others sent on it.
                    stream.close();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(leader: u64, generation: u64, deadline_ms: u64) -> Forwarded {
        Forwarded {
            leader: NodeId(leader),
            generation,
            asked: Asked::Write,
            topic: Topic::new("orders").unwrap(),
            partition: 0,
            deadline: Instant::ZERO + Duration::from_millis(deadline_ms),
        }
    }

    fn ids(taken: &[(ProposalId, Forwarded)]) -> Vec<u64> {
        taken.iter().map(|(id, _)| id.0).collect()
    }

    #[test]
    fn the_next_deadline_is_the_earliest_of_those_still_waiting() {
        let mut w = Waiting::default();
        assert_eq!(w.next_deadline(), None);
        // Ids and deadlines in different orders (a connect can delay a send).
        w.insert(ProposalId(3), forwarded(1, 1, 300));
        w.insert(ProposalId(1), forwarded(1, 1, 200));
        w.insert(ProposalId(2), forwarded(2, 1, 100));
        assert_eq!(w.next_deadline(), Some(Instant::ZERO + Duration::from_millis(100)));
        assert_eq!(w.remove(ProposalId(2)).map(|f| f.leader), Some(NodeId(2)));
        assert!(w.remove(ProposalId(2)).is_none(), "answered once");
        assert_eq!(w.next_deadline(), Some(Instant::ZERO + Duration::from_millis(200)));
        // The same id again replaces its entry and its deadline.
        w.insert(ProposalId(1), forwarded(1, 1, 400));
        assert_eq!(w.next_deadline(), Some(Instant::ZERO + Duration::from_millis(300)));
        assert_eq!(w.by_deadline.len(), w.by_id.len());
        // ... also with the same deadline: the entry stays indexed.
        w.insert(ProposalId(3), forwarded(2, 1, 300));
        assert_eq!(w.by_deadline.len(), w.by_id.len());
        assert_eq!(ids(&w.take_expired(Instant::ZERO + Duration::from_millis(300))), [3]);
    }

    #[test]
    fn expired_publishes_are_taken_in_proposal_order() {
        let mut w = Waiting::default();
        for (id, deadline) in [(5, 100), (4, 100), (9, 150), (1, 200), (7, 250)] {
            w.insert(ProposalId(id), forwarded(1, 1, deadline));
        }
        assert!(w.take_expired(Instant::ZERO + Duration::from_millis(99)).is_empty());
        let at = |ms| Instant::ZERO + Duration::from_millis(ms);
        assert_eq!(ids(&w.take_expired(at(200))), [1, 4, 5, 9], "at or before now, by id");
        assert_eq!(w.next_deadline(), Some(at(250)));
        assert_eq!(ids(&w.take_expired(at(1000))), [7]);
        assert_eq!((w.next_deadline(), w.by_id.len()), (None, 0));
    }

    /// A refusal of a read round changed nothing — the read is unconfirmed,
    /// retried — while the same refusal of a write leaves its outcome
    /// unknown (it may still commit); a prefix confirms the read.
    #[test]
    fn a_refused_read_round_is_unconfirmed_and_a_refused_write_unknown() {
        let t = || Topic::new("orders").unwrap();
        let not_leader = || Response::NotLeader { req: 1, leader: Some(NodeId(3)) };
        let error = || Response::Error { req: 1, reason: "partition 9 does not exist".into() };
        assert_eq!(outcome_of(Response::ReadPrefix { req: 1, next: 7 }, Asked::Read, t(), 0), Ok(7));
        for refusal in [not_leader(), error()] {
            assert!(
                matches!(outcome_of(refusal.clone(), Asked::Read, t(), 0), Err(BrokerError::ReadUnconfirmed { .. })),
                "{refusal:?}"
            );
            assert!(
                matches!(
                    outcome_of(refusal.clone(), Asked::Write, t(), 0),
                    Err(BrokerError::ReplicationUnknown { .. })
                ),
                "{refusal:?}"
            );
        }
        assert_eq!(outcome_of(Response::Produced { req: 1, offset: 4 }, Asked::Write, t(), 0), Ok(4));
    }

    #[test]
    fn a_lost_stream_takes_only_what_went_out_on_it() {
        let mut w = Waiting::default();
        w.insert(ProposalId(1), forwarded(1, 1, 100));
        w.insert(ProposalId(2), forwarded(1, 2, 50));
        w.insert(ProposalId(3), forwarded(2, 1, 150));
        w.insert(ProposalId(4), forwarded(1, 1, 120));
        assert_eq!(ids(&w.take_sent_on(NodeId(1), 1)), [1, 4]);
        assert_eq!(w.next_deadline(), Some(Instant::ZERO + Duration::from_millis(50)));
        assert_eq!(ids(&w.take_sent_on(NodeId(1), 2)), [2]);
        assert_eq!(w.next_deadline(), Some(Instant::ZERO + Duration::from_millis(150)));
        assert_eq!(w.by_deadline.len(), 1);
    }
}

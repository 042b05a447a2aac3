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
//! * **Forwarding** (`ReplicatedConfig::forward`, on in `kaelix serve
//!   --cluster`). A member that does not lead the group but knows its
//!   leader sends the produce (same session and sequence number) over a
//!   client stream to the leader, which answers it after the commit like
//!   any client's; the answer settles the proposal here. The record
//!   reaches this member's broker as every committed record does, through
//!   its own group member's apply. A stream that breaks before the answer
//!   leaves the publish unknown (`ReplicationUnknown`: it may still
//!   commit). Group commits are never forwarded (a consumer group's
//!   members are on the leader's node or are told `NotLeader`).
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

use std::collections::BTreeMap;

use kaelix_broker::message::Message;
use kaelix_broker::replication::{Proposal, ProposalId, ProposalOp};
use kaelix_broker::storage::StorageKind;
use kaelix_broker::topic::Topic;
use kaelix_broker::{Broker, BrokerConfig, BrokerError, TopicConfig};
use kaelix_core::WallTime;
use kaelix_core::rng::RngExt;
use kaelix_core::runtime::{Priority, Runtime};
use kaelix_core::time::Instant;

use super::node::{ReplicaObserver, ReplicatedConfig, run};
use super::protocol::{Request, Response};
use super::replica::{ClientRef, Output, ReplicaCore};
use crate::raft::Role;
use kaelix_core::NodeId;

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
    mut config: ReplicatedConfig,
    observer: O,
) -> Result<Broker<R>, BrokerNodeError> {
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
    let mirror = Mirror::new(broker.clone(), groups, rt.rng().random());
    drop(rt.spawn(Priority::Critical, "replica-main", run(rt.clone(), config, observer, Some(mirror))));
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
    /// Proposals handed to a group, waiting for their answer: proposal → group.
    proposed: BTreeMap<ProposalId, u32>,
    /// Whether publishes to groups led elsewhere are forwarded.
    forward: bool,
    /// Forwarded proposals waiting for the leader's answer: proposal → leader.
    forwarded: BTreeMap<ProposalId, NodeId>,
    /// Frames to forward, taken by the driver: (leader, produce request).
    outbox: Vec<(NodeId, bytes::Bytes)>,
}

impl<R: Runtime> Mirror<R> {
    fn new(broker: Broker<R>, groups: Vec<(Topic, u32)>, session: u64) -> Self {
        let group_of = groups.iter().enumerate().map(|(g, tp)| (tp.clone(), g as u32)).collect();
        Mirror {
            broker,
            groups,
            group_of,
            session,
            proposed: BTreeMap::new(),
            forward: false,
            forwarded: BTreeMap::new(),
            outbox: Vec::new(),
        }
    }

    pub(super) fn set_forwarding(&mut self, forward: bool) {
        self.forward = forward;
    }

    /// The produce frames to send to leaders since the last call.
    pub(super) fn take_forwards(&mut self) -> Vec<(NodeId, bytes::Bytes)> {
        std::mem::take(&mut self.outbox)
    }

    /// A leader's answer to a forwarded publish.
    pub(super) fn answer_forwarded(&mut self, response: Response) {
        if self.forwarded.remove(&ProposalId(response_req(&response))).is_some() {
            self.answer(response);
        }
    }

    /// The stream to `leader` broke: every publish forwarded to it and not
    /// answered has an unknown outcome.
    pub(super) fn forward_lost(&mut self, leader: NodeId) {
        let lost: Vec<ProposalId> = self.forwarded.iter().filter(|&(_, &to)| to == leader).map(|(&id, _)| id).collect();
        for id in lost {
            self.forwarded.remove(&id);
            if let Some(group) = self.proposed.remove(&id) {
                let (topic, partition) = self.groups[group as usize].clone();
                let reason = format!("the stream to node {} (the leader it was forwarded to) broke", leader.0);
                self.broker.proposal_done(id, Err(BrokerError::ReplicationUnknown { topic, partition, reason }));
            }
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
        let raft = core.raft(group);
        if raft.role() != Role::Leader {
            let leader = raft.leader();
            if self.forward
                && let (Some(to), ProposalOp::Publish(message)) = (leader, &op)
                && to != core.node()
            {
                let request = Request::Produce {
                    req: id.0,
                    partition: group,
                    client: self.session,
                    seq: id.0,
                    payload: message.encode_to_bytes(),
                };
                self.proposed.insert(id, group);
                self.forwarded.insert(id, to);
                self.outbox.push((to, request.encode()));
                return;
            }
            let leader = leader.map(|n| n.0);
            self.broker.proposal_done(id, Err(BrokerError::NotLeader { topic, partition, leader }));
            return;
        }
        self.proposed.insert(id, group);
        let (req, client, seq) = (id.0, self.session, id.0);
        let request = match op {
            ProposalOp::Publish(message) => {
                Request::Produce { req, partition: group, client, seq, payload: message.encode_to_bytes() }
            }
            ProposalOp::Commit { group: consumer_group, next } => {
                Request::Commit { req, partition: group, client, seq, group: consumer_group, next }
            }
        };
        core.handle_request(now, wall, BROKER_CLIENT, request);
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
        let id = ProposalId(response_req(&response));
        let Some(group) = self.proposed.remove(&id) else { return };
        let (topic, partition) = self.groups[group as usize].clone();
        let outcome = match response {
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
            Response::ReadResult { .. } => unreachable!("the mirror never reads"),
        };
        self.broker.proposal_done(id, outcome);
    }
}

/// The request a response answers.
fn response_req(response: &Response) -> u64 {
    match response {
        Response::Produced { req, .. }
        | Response::Committed { req, .. }
        | Response::NotLeader { req, .. }
        | Response::Error { req, .. }
        | Response::ReadResult { req, .. } => *req,
    }
}

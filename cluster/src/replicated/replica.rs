//! The sans-IO core of a replicated-partition node: every partition's
//! [`Raft`] member and [`PartitionMachine`], and the requests waiting on
//! them. The driver ([`super::node::run_node`]) owns sockets, files, client
//! streams and timers; this core owns the bookkeeping.
//!
//! # Inputs and outputs
//!
//! The call order is `kaelix_core::sansio`'s: feed an input with the
//! current time, drain [`ReplicaCore::poll_output`] until `None`, sleep
//! until [`ReplicaCore::poll_timeout`] or the next input. Time only moves
//! forward; every input asserts it.
//!
//! * [`ReplicaCore::handle_request`]: a client's produce, consumer-group
//!   commit or read;
//! * [`ReplicaCore::handle_message`]: a peer's Raft message for one group;
//! * [`ReplicaCore::handle_write_complete`]: a batch of one group's writes
//!   is durable (its log writer performs them in order);
//! * [`ReplicaCore::handle_timeout`] (every group whose deadline passed) or
//!   [`ReplicaCore::handle_group_timeout`] (one group);
//! * [`ReplicaCore::transfer_leadership`]: hand a group's leadership away;
//! * [`ReplicaCore::handle_member`]: SWIM's word that a member is up, or
//!   dead (or gone).
//!
//! # Replacing a dead voter
//!
//! Every member holds every group: `replicas` of them as voters, the rest
//! as learners ([`ReplicatedConfig::placement`]), so a learner is a warm
//! spare. Once SWIM has held a voter dead (or never told of it) for
//! `replace_dead_after`, and the group's leader has had no Raft message
//! from it for as long either, the leader (if this node is it, on its
//! next timer) proposes the configuration with the dead voter and its most
//! caught-up live learner swapped — through a joint configuration, which Raft leaves once
//! committed — one change per group at a time. The dead voter stays a
//! learner: if it comes back it catches up and may be promoted again. No
//! state of this bookkeeping is durable: a new leader derives the same
//! decision from its own view and the configuration in its log.
//!
//! Outputs ([`Output`]): a datagram for a peer, a write for a group's log
//! writer, an answer for a client.
//!
//! # The waiting tables
//!
//! * A **produce** (or a consumer-group **commit**) on the leader is
//!   proposed and waits, keyed by its entry's index, until that entry
//!   applies: it is answered with the offset the state machine gave it (a
//!   commit: the group's committed offset after it; a retry of an applied
//!   `(client, seq)` gets the answer it already has). Anywhere else it is
//!   answered `NotLeader` with the member's leader hint.
//! * A **read** goes through ReadIndex: it waits for its round (keyed by a
//!   context number), then, confirmed at a read index, until the machine
//!   has applied that index; then it is answered from the machine — the
//!   record at its offset ([`Request::Read`]), or the machine's next offset
//!   ([`Request::ReadIndex`]: the committed prefix a member serving reads
//!   from its own log must hold first).
//! * When a member stops leading, every produce and read still waiting in
//!   its group is answered `NotLeader` (the client retries at the new
//!   leader; the session table makes a retried produce land once). So is a
//!   produce whose index a snapshot covered, or whose index another term's
//!   entry took.
//!
//! # Order
//!
//! A driver performs outputs in the order they come out, and watchers see
//! the members exactly between them: the work an input causes (draining the
//! member's outputs, applying entries, snapshotting when enough was
//! applied since the last snapshot: `snapshot_every` entries holding at
//! least `snapshot_log_percent` of the snapshot's bytes) is done lazily by
//! `poll_output`, one member output at a time, so a [`ReplicaObserver`] is
//! told about each step just before the IO it causes is performed.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use kaelix_core::NodeId;
use kaelix_core::WallTime;
use kaelix_core::planted::PlantedBug;
use kaelix_core::rng::DetRng;
use kaelix_core::sansio::WriteId;
use kaelix_core::time::Instant;

use super::node::{NoObserver, ReplicaObserver, ReplicatedConfig};
use super::protocol::{Request, Response};
use super::{Command, Commit, Effect, PartitionMachine, Produce, Record};
use crate::raft::{self, EntryPayload, Output as RaftOutput, ProposeError, Raft, Recovered, Role, Write};

/// Names a client connection (the driver's choice; answers go back to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientRef(pub u64);

impl fmt::Display for ClientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// What the core asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `group`'s `message` to `to` (`raft::wire` carries the group).
    Send {
        /// Destination member.
        to: NodeId,
        /// The group (partition).
        group: u32,
        /// The message.
        message: raft::Message,
    },
    /// Hand `write` to `group`'s log writer; report it with
    /// [`ReplicaCore::handle_write_complete`] once it is durable. A group's
    /// writes are performed in the order they come out.
    Persist {
        /// The group (partition).
        group: u32,
        /// The write.
        write: Write,
    },
    /// A record of `group` was committed and applied at `offset`. Every
    /// replica emits these, for every record, in offset order (a retried
    /// produce that was applied before emits nothing). A driver that mirrors
    /// the partition elsewhere — the broker of `broker_node` — applies them;
    /// others ignore them.
    Applied {
        /// The group (partition).
        group: u32,
        /// The record's offset.
        offset: u64,
        /// The record.
        record: Record,
    },
    /// A consumer-group commit of `group` was committed and applied: the
    /// consumer group's committed offset on the partition is now `next`.
    /// Every replica emits these, in log order, like `Applied`.
    GroupCommitted {
        /// The group (partition).
        group: u32,
        /// The consumer group.
        consumer_group: String,
        /// Its committed offset (next to read).
        next: u64,
    },
    /// `group`'s machine was replaced by a snapshot (its records and
    /// consumer-group commits are [`ReplicaCore::machine`]'s when this
    /// output is taken): a mirror catches up from the machine; `Applied`
    /// and `GroupCommitted` follow for later entries.
    Restored {
        /// The group (partition).
        group: u32,
    },
    /// Answer a client.
    Reply {
        /// The connection the request came on.
        client: ClientRef,
        /// The answer.
        response: Response,
    },
}

/// What one group's member boots from: the driver reads the disk, the core
/// builds the member.
pub struct GroupBoot {
    /// What the group's log held.
    pub recovered: Recovered,
    /// The member's generator.
    pub rng: DetRng,
    /// When the group finished booting (at or before the core's creation).
    pub at: Instant,
}

/// A produce waiting for its entry to apply.
#[derive(Clone, Copy, Debug)]
struct Waiting {
    client: ClientRef,
    req: u64,
    term: u64,
}

/// A read waiting for its ReadIndex round, or for the machine to apply.
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    client: ClientRef,
    req: u64,
    what: ReadOf,
}

/// What a read answers once its index has applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadOf {
    /// The record at this offset ([`Request::Read`]).
    Record(u64),
    /// The partition's next offset ([`Request::ReadIndex`]): the prefix
    /// another member must hold before it serves a read from its own log.
    Prefix,
}

impl fmt::Display for ReadOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadOf::Record(offset) => write!(f, "offset={offset}"),
            ReadOf::Prefix => f.write_str("prefix"),
        }
    }
}

struct Group {
    raft: Raft,
    machine: PartitionMachine,
    /// The newest entry the machine holds (applied, or covered by the
    /// snapshot it was restored from). The member's own `applied()` runs
    /// ahead of it: it counts entries handed out, not yet taken.
    applied: u64,
    /// Bytes of the entries applied since the member's snapshot (or since
    /// this incarnation booted): with the snapshot's size, when to take
    /// the next one (`ReplicatedConfig::snapshot_log_percent`).
    applied_bytes: u64,
    /// This member's share of the log, in percent of the snapshot's size,
    /// before its next snapshot: `snapshot_log_percent` raised by 0 to
    /// 4/8 of itself by the member's id and the group. Members that apply
    /// the same entries would otherwise snapshot at the same entry and
    /// write their base images at once; staggered, a majority keeps
    /// committing while one member writes its image.
    snapshot_log_percent: u64,
    /// Produces waiting for the entry at this index to apply.
    produces: BTreeMap<u64, Vec<Waiting>>,
    /// Reads waiting for their ReadIndex round, by context.
    reads: BTreeMap<u64, PendingRead>,
    /// Confirmed reads waiting for `applied ≥ index`.
    ready: Vec<(u64, PendingRead)>,
    next_ctx: u64,
}

/// Work an input left for `poll_output`, in order.
#[derive(Clone, Copy, Debug)]
enum Work {
    /// Tell the observer the group's member stepped.
    Stepped(u32),
    /// Handle the group's member outputs (and snapshot) until none is left.
    Drain(u32),
}

/// The sans-IO core of one replicated-partition node (see the module docs).
pub struct ReplicaCore<O: ReplicaObserver = NoObserver> {
    me: NodeId,
    config: ReplicatedConfig,
    observer: O,
    groups: Vec<Group>,
    now: Instant,
    work: VecDeque<Work>,
    outputs: VecDeque<Output>,
    /// Members SWIM holds dead or gone, since when (as this core heard).
    down_since: BTreeMap<NodeId, Instant>,
    /// When each member's latest Raft message (of any group) arrived.
    heard_from: BTreeMap<NodeId, Instant>,
}

impl<O: ReplicaObserver> ReplicaCore<O> {
    /// Builds node `me`'s core at `now`, one member per group from what
    /// each group's disk held (`groups[g]` is group `g`; there must be
    /// `config.partitions` of them). Booting may already have outputs.
    pub fn new(me: NodeId, config: ReplicatedConfig, observer: O, now: Instant, groups: Vec<GroupBoot>) -> Self {
        assert!(config.members.contains(&me), "{me} is not a member");
        assert_eq!(groups.len(), config.partitions as usize, "one boot per partition");
        let groups: Vec<Group> = groups
            .into_iter()
            .zip(0..)
            .map(|(boot, g)| {
                assert!(boot.at <= now, "time went backwards: {} after {}", now, boot.at);
                // One of five steps, 0 to 4/8, by member id and group:
                // consecutive ids take different steps.
                let stagger = (me.0.wrapping_mul(31).wrapping_add(u64::from(g))) % 5;
                let snapshot_log_percent = config.snapshot_log_percent + config.snapshot_log_percent * stagger / 8;
                Group {
                    raft: Raft::new(config.raft_config(me, g), boot.rng, boot.at, boot.recovered),
                    machine: PartitionMachine::new(),
                    applied: 0,
                    applied_bytes: 0,
                    snapshot_log_percent,
                    produces: BTreeMap::new(),
                    reads: BTreeMap::new(),
                    ready: Vec::new(),
                    next_ctx: 1,
                }
            })
            .collect();
        let work = (0..config.partitions).map(Work::Drain).collect();
        // Until SWIM says otherwise, a member is not known to be up: one
        // that never shows up (dead before this node booted, its tombstone
        // collected) must be replaceable too. A live voter SWIM has not
        // told of yet is kept by Raft's own evidence: its messages (see
        // `replace_dead_voter`).
        let down_since = match config.replace_dead_after {
            Some(_) => config.members.iter().filter(|&&m| m != me).map(|&m| (m, now)).collect(),
            None => BTreeMap::new(),
        };
        let heard_from = BTreeMap::new();
        ReplicaCore { me, config, observer, groups, now, work, outputs: VecDeque::new(), down_since, heard_from }
    }

    // ----- accessors -----------------------------------------------------

    /// This node.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// How many groups (partitions) there are.
    pub fn partitions(&self) -> u32 {
        self.config.partitions
    }

    /// `group`'s member.
    pub fn raft(&self, group: u32) -> &Raft {
        &self.groups[group as usize].raft
    }

    /// `group`'s state machine.
    pub fn machine(&self, group: u32) -> &PartitionMachine {
        &self.groups[group as usize].machine
    }

    /// The newest entry `group`'s machine holds (applied, or covered by the
    /// snapshot it was restored from).
    pub fn applied(&self, group: u32) -> u64 {
        self.groups[group as usize].applied
    }

    /// `group`'s waiting requests, printable.
    pub fn waiting(&self, group: u32) -> WaitingTables<'_> {
        let g = &self.groups[group as usize];
        WaitingTables { produces: &g.produces, reads: &g.reads, ready: &g.ready }
    }

    // ----- sans-IO surface -----------------------------------------------

    /// The next output, if any (doing the work inputs left, see the module
    /// docs).
    pub fn poll_output(&mut self) -> Option<Output> {
        loop {
            if let Some(out) = self.outputs.pop_front() {
                return Some(out);
            }
            match *self.work.front()? {
                Work::Stepped(g) => {
                    self.work.pop_front();
                    self.observer.stepped(self.me, g, &self.groups[g as usize].raft);
                }
                Work::Drain(g) => {
                    if !self.step_drain(g) {
                        self.work.pop_front();
                    }
                }
            }
        }
    }

    /// The earliest deadline of any group (`None`: nothing scheduled).
    /// Ask after draining the outputs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.groups.iter().filter_map(|g| g.raft.poll_timeout()).min()
    }

    /// Handles every group whose deadline passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for g in 0..self.config.partitions {
            self.handle_group_timeout(now, g);
        }
    }

    /// Handles `group`'s deadline if it passed at `now` (nothing otherwise).
    pub fn handle_group_timeout(&mut self, now: Instant, group: u32) {
        self.advance(now);
        let raft = &mut self.groups[group as usize].raft;
        if raft.poll_timeout().is_some_and(|t| t <= now) {
            raft.handle_timeout(now);
            // A leader's timer fires every heartbeat: often enough to act
            // within one heartbeat of a voter's replacement deadline.
            self.replace_dead_voter(now, group);
            self.stepped(group);
        }
    }

    /// SWIM's word about `member`: up (`true`: alive or suspect — a
    /// suspect is not replaced) or dead or gone (`false`). A member this
    /// core already holds down keeps its first time.
    pub fn handle_member(&mut self, now: Instant, member: NodeId, up: bool) {
        self.advance(now);
        if up {
            self.down_since.remove(&member);
        } else if member != self.me {
            self.down_since.entry(member).or_insert(now);
        }
    }

    /// A peer's message for `group` (the driver drops datagrams for groups
    /// that do not exist: see [`ReplicaCore::partitions`]).
    pub fn handle_message(&mut self, now: Instant, from: NodeId, group: u32, message: raft::Message) {
        self.advance(now);
        self.heard_from.insert(from, now);
        self.groups[group as usize].raft.handle_message(now, from, message);
        self.stepped(group);
    }

    /// `group`'s writes `ids` are durable (a batch of its log writer, in
    /// the order they were issued).
    pub fn handle_write_complete(&mut self, now: Instant, group: u32, ids: impl IntoIterator<Item = WriteId>) {
        self.advance(now);
        let raft = &mut self.groups[group as usize].raft;
        for id in ids {
            raft.handle_write_complete(now, id);
        }
        self.stepped(group);
    }

    /// A client's request; `wall` is this node's wall clock, the timestamp a
    /// produced record gets.
    pub fn handle_request(&mut self, now: Instant, wall: WallTime, client: ClientRef, request: Request) {
        self.advance(now);
        let req = request.req();
        let partition = request.partition();
        let Some(group) = self.groups.get_mut(partition as usize) else {
            let reason =
                format!("partition {partition} does not exist: there are {} partitions", self.config.partitions);
            self.outputs.push_back(Output::Reply { client, response: Response::Error { req, reason } });
            return;
        };
        match request {
            Request::Produce { client: session, seq, payload, .. } => {
                let command = Command::Produce(Produce { client: session, seq, timestamp: wall, payload });
                match group.raft.propose(now, command.encode()) {
                    Ok((index, term)) => {
                        if self.config.planted.is_on(PlantedBug::ReplicatedAckBeforeCommit) {
                            // Planted bug: predict the offset and answer now.
                            let applied = group.raft.applied();
                            let pending = group
                                .raft
                                .log()
                                .iter()
                                .filter(|e| e.index > applied && e.index < index)
                                .filter(|e| matches!(e.payload, EntryPayload::Normal(_)))
                                .count() as u64;
                            let offset = group.machine.next_offset() + pending;
                            self.reply(client, Response::Produced { req, offset });
                        } else {
                            group.produces.entry(index).or_default().push(Waiting { client, req, term });
                        }
                    }
                    Err(e) => self.refuse(client, req, e),
                }
            }
            Request::Commit { client: session, seq, group: consumer_group, next, .. } => {
                let command = Command::Commit(Commit { client: session, seq, group: consumer_group, next });
                match group.raft.propose(now, command.encode()) {
                    Ok((index, term)) => group.produces.entry(index).or_default().push(Waiting { client, req, term }),
                    Err(e) => self.refuse(client, req, e),
                }
            }
            Request::Read { .. } | Request::ReadIndex { .. } => {
                let what = match request {
                    Request::Read { offset, .. } => ReadOf::Record(offset),
                    _ => ReadOf::Prefix,
                };
                let ctx = group.next_ctx;
                group.next_ctx += 1;
                match group.raft.read_index(now, ctx) {
                    Ok(()) => {
                        group.reads.insert(ctx, PendingRead { client, req, what });
                    }
                    Err(e) => self.refuse(client, req, e),
                }
            }
        }
        self.stepped(partition);
    }

    /// Asks `group`'s member to hand leadership to `to` (see
    /// [`Raft::transfer_leadership`]).
    pub fn transfer_leadership(&mut self, now: Instant, group: u32, to: NodeId) -> Result<(), ProposeError> {
        self.advance(now);
        let result = self.groups[group as usize].raft.transfer_leadership(now, to);
        self.stepped(group);
        result
    }

    // ----- internals -----------------------------------------------------

    /// If this node leads `group`, no configuration change is under way,
    /// and a voter has been down `replace_dead_after` (and sent this node
    /// no Raft message for as long), proposes swapping it with the most
    /// caught-up live learner heard from lately (see the module docs). A refusal (a change pending, leadership moving) is
    /// tried again at the next timer.
    fn replace_dead_voter(&mut self, now: Instant, group: u32) {
        let Some(after) = self.config.replace_dead_after else { return };
        let raft = &self.groups[group as usize].raft;
        if raft.role() != Role::Leader || raft.transferring_to().is_some() {
            return;
        }
        let config = raft.configuration();
        if config.is_joint() {
            return;
        }
        // Down for SWIM for that long, and silent to this node as long.
        let dead_for_long = |id: &NodeId| {
            self.down_since.get(id).is_some_and(|&since| since + after <= now)
                && self.heard_from.get(id).is_none_or(|&heard| heard + after <= now)
        };
        let Some(&dead) = config.voters.iter().find(|id| **id != self.me && dead_for_long(id)) else { return };
        let live_learners = config.learners.iter().copied().filter(|id| !self.down_since.contains_key(id));
        // The most caught-up learner heard from lately; ties go to the one
        // after the group's number, so replacements spread.
        let rotate = |id: NodeId| id.0.wrapping_sub(u64::from(group)).wrapping_sub(1);
        let Some(spare) = live_learners
            .filter(|&id| raft.progress(id).is_some_and(|p| p.recent_active))
            .max_by_key(|&id| (raft.progress(id).map_or(0, |p| p.match_index), std::cmp::Reverse(rotate(id))))
        else {
            return;
        };
        let mut voters = config.voters.clone();
        let mut learners = config.learners.clone();
        voters.remove(&dead);
        learners.remove(&spare);
        learners.insert(dead);
        if !self.config.planted.is_on(PlantedBug::ReplacementShrinksGroup) {
            voters.insert(spare);
        } else {
            // Planted bug: the dead voter is dropped, nobody is promoted.
            learners.insert(spare);
        }
        let _ = self.groups[group as usize].raft.propose_config(now, voters, learners);
    }

    /// Moves to `now` (never backwards) and finishes the work earlier inputs
    /// left, so a new input never overtakes it.
    fn advance(&mut self, now: Instant) {
        assert!(now >= self.now, "time went backwards: {} after {}", now, self.now);
        self.now = now;
        while let Some(&work) = self.work.front() {
            match work {
                Work::Stepped(g) => self.observer.stepped(self.me, g, &self.groups[g as usize].raft),
                Work::Drain(g) => while self.step_drain(g) {},
            }
            self.work.pop_front();
        }
    }

    /// After an input to `group`: tell the observer, then drain the member.
    fn stepped(&mut self, group: u32) {
        self.work.push_back(Work::Stepped(group));
        self.work.push_back(Work::Drain(group));
    }

    fn reply(&mut self, client: ClientRef, response: Response) {
        self.outputs.push_back(Output::Reply { client, response });
    }

    fn refuse(&mut self, client: ClientRef, req: u64, e: ProposeError) {
        let response = match e {
            ProposeError::NotLeader { leader } => Response::NotLeader { req, leader },
            ProposeError::Transferring(to) => Response::NotLeader { req, leader: Some(to) },
            other => Response::Error { req, reason: other.to_string() },
        };
        self.reply(client, response);
    }

    /// Handles one output of `group`'s member, or takes a snapshot once
    /// enough was applied since the last one; `false` when neither is left.
    fn step_drain(&mut self, group: u32) -> bool {
        let g = &mut self.groups[group as usize];
        if let Some(out) = g.raft.poll_output() {
            self.perform(group, out);
            return true;
        }
        let applied = g.raft.applied();
        let (snapshot_index, _) = g.raft.log().snapshot_point();
        let snapshot_bytes = g.raft.snapshot().map_or(0, |s| s.data.len() as u64);
        if applied >= snapshot_index + self.config.snapshot_every
            && g.applied_bytes * 100 >= snapshot_bytes * g.snapshot_log_percent
        {
            g.raft.compact(self.now, applied, g.machine.snapshot());
            g.applied_bytes = 0;
            self.observer.stepped(self.me, group, &g.raft);
            return true;
        }
        false
    }

    fn perform(&mut self, group: u32, out: RaftOutput) {
        let me = self.me;
        let g = &mut self.groups[group as usize];
        match out {
            RaftOutput::Send { to, message } => {
                self.observer.sent(me, group, to, &message);
                self.outputs.push_back(Output::Send { to, group, message });
            }
            RaftOutput::Persist(write) => {
                self.observer.persisting(me, group, &write);
                self.outputs.push_back(Output::Persist { group, write });
            }
            RaftOutput::Apply(entry) => {
                self.observer.applied(me, group, &entry);
                g.applied_bytes += entry.payload_len() as u64;
                let effect = match &entry.payload {
                    EntryPayload::Normal(bytes) => {
                        let command = Command::decode(bytes.clone()).expect("entries hold commands this node encoded");
                        let applied = g.machine.apply(command);
                        match applied.as_ref().filter(|a| !a.duplicate).map(|a| &a.effect) {
                            Some(&Effect::Appended { offset }) => {
                                let record = g.machine.get(offset).expect("just appended").clone();
                                self.outputs.push_back(Output::Applied { group, offset, record });
                            }
                            Some(Effect::Committed { group: consumer_group, next }) => {
                                let (consumer_group, next) = (consumer_group.clone(), *next);
                                self.outputs.push_back(Output::GroupCommitted { group, consumer_group, next });
                            }
                            None => {}
                        }
                        applied.map(|a| a.effect)
                    }
                    EntryPayload::Noop | EntryPayload::Config(_) => None,
                };
                g.applied = entry.index;
                for w in g.produces.remove(&entry.index).unwrap_or_default() {
                    let response = match &effect {
                        Some(Effect::Appended { offset }) if w.term == entry.term => {
                            Response::Produced { req: w.req, offset: *offset }
                        }
                        Some(Effect::Committed { next, .. }) if w.term == entry.term => {
                            Response::Committed { req: w.req, next: *next }
                        }
                        // Another entry took the index: the produce was lost
                        // with a leader; the client retries.
                        _ => Response::NotLeader { req: w.req, leader: g.raft.leader() },
                    };
                    self.outputs.push_back(Output::Reply { client: w.client, response });
                }
                self.serve_ready_reads(group);
            }
            RaftOutput::ApplySnapshot(snapshot) => {
                self.observer.restored(me, group, &snapshot);
                g.machine =
                    PartitionMachine::restore(snapshot.data.clone()).expect("snapshots hold state this code encoded");
                g.applied = snapshot.index;
                g.applied_bytes = 0;
                self.outputs.push_back(Output::Restored { group });
                let covered: Vec<u64> = g.produces.range(..=snapshot.index).map(|(&i, _)| i).collect();
                for index in covered {
                    for w in g.produces.remove(&index).unwrap_or_default() {
                        let response = Response::NotLeader { req: w.req, leader: g.raft.leader() };
                        self.outputs.push_back(Output::Reply { client: w.client, response });
                    }
                }
                self.serve_ready_reads(group);
            }
            RaftOutput::ReadReady { ctx, index } => {
                if let Some(read) = g.reads.remove(&ctx) {
                    g.ready.push((index, read));
                    self.serve_ready_reads(group);
                }
            }
            RaftOutput::ReadFailed { ctx } => {
                if let Some(read) = g.reads.remove(&ctx) {
                    let response = Response::NotLeader { req: read.req, leader: g.raft.leader() };
                    self.outputs.push_back(Output::Reply { client: read.client, response });
                }
            }
            RaftOutput::RoleChanged { role, leader, .. } => {
                if role != Role::Leader {
                    let leader = leader.filter(|&l| l != me);
                    let produces = std::mem::take(&mut g.produces).into_values().flatten().map(|w| (w.client, w.req));
                    let reads = std::mem::take(&mut g.reads).into_values().map(|r| (r.client, r.req));
                    let ready = std::mem::take(&mut g.ready).into_iter().map(|(_, r)| (r.client, r.req));
                    for (client, req) in produces.chain(reads).chain(ready) {
                        self.outputs.push_back(Output::Reply { client, response: Response::NotLeader { req, leader } });
                    }
                }
            }
        }
    }

    /// Answers the confirmed reads whose index the machine has applied.
    /// (Not the member's `applied()`: a read confirmed in the step that
    /// committed its index comes out before that step's entries to apply,
    /// as in a group of one.)
    fn serve_ready_reads(&mut self, group: u32) {
        let g = &mut self.groups[group as usize];
        let applied = g.applied;
        let (serve, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut g.ready).into_iter().partition(|(i, _)| *i <= applied);
        g.ready = wait;
        for (_, read) in serve {
            let response = match read.what {
                ReadOf::Record(offset) => {
                    let payload = g.machine.get(offset).map(|r| r.payload.clone());
                    Response::ReadResult { req: read.req, payload }
                }
                ReadOf::Prefix => Response::ReadPrefix { req: read.req, next: g.machine.next_offset() },
            };
            self.outputs.push_back(Output::Reply { client: read.client, response });
        }
    }
}

/// A group's waiting requests ([`ReplicaCore::waiting`]), one line each:
/// `produce index=I c1 req=R term=T`, `read ctx=C c1 req=R offset=O`
/// (waiting for its round), `read index=I c1 req=R offset=O` (confirmed,
/// waiting to apply) — `prefix` instead of `offset=O` for a
/// [`Request::ReadIndex`]; `none` when nothing waits.
pub struct WaitingTables<'a> {
    produces: &'a BTreeMap<u64, Vec<Waiting>>,
    reads: &'a BTreeMap<u64, PendingRead>,
    ready: &'a [(u64, PendingRead)],
}

impl fmt::Display for WaitingTables<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = Vec::new();
        for (index, waiting) in self.produces {
            for w in waiting {
                lines.push(format!("produce index={index} {} req={} term={}", w.client, w.req, w.term));
            }
        }
        for (ctx, r) in self.reads {
            lines.push(format!("read ctx={ctx} {} req={} {}", r.client, r.req, r.what));
        }
        for (index, r) in self.ready {
            lines.push(format!("read index={index} {} req={} {}", r.client, r.req, r.what));
        }
        if lines.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kaelix_core::rng::seeded;
    use kaelix_core::time::Duration;

    use super::*;
    use crate::raft::disk::DiskState;

    fn core() -> ReplicaCore {
        let config = ReplicatedConfig::new(vec![NodeId(1), NodeId(2), NodeId(3)], 2);
        let boots = (0..2)
            .map(|g| GroupBoot { recovered: DiskState::default().recovered(true), rng: seeded(g), at: Instant::ZERO })
            .collect();
        ReplicaCore::new(NodeId(1), config, NoObserver, Instant::ZERO, boots)
    }

    #[test]
    fn deadline_is_the_earliest_group_deadline() {
        let c = core();
        let earliest = (0..2).filter_map(|g| c.raft(g).poll_timeout()).min();
        assert_eq!(c.poll_timeout(), earliest);
    }

    #[test]
    #[should_panic(expected = "time went backwards")]
    fn time_never_moves_backwards() {
        let mut c = core();
        c.handle_timeout(Instant::ZERO + Duration::from_millis(10));
        c.handle_timeout(Instant::ZERO + Duration::from_millis(5));
    }

    #[test]
    fn unknown_partition_is_an_error() {
        let mut c = core();
        while c.poll_output().is_some() {}
        let request = Request::Read { req: 9, partition: 2, offset: 0 };
        c.handle_request(Instant::ZERO, WallTime(0), ClientRef(4), request);
        match c.poll_output() {
            Some(Output::Reply { client: ClientRef(4), response: Response::Error { req: 9, .. } }) => {}
            other => panic!("expected an error reply, got {other:?}"),
        }
        assert_eq!(c.poll_output(), None);
    }

    /// Performs every write the core asks for at once, until it asks for
    /// none.
    fn settle(c: &mut ReplicaCore, now: Instant) {
        loop {
            let mut done = Vec::new();
            while let Some(out) = c.poll_output() {
                if let Output::Persist { group, write } = out {
                    done.push((group, write.id));
                }
            }
            if done.is_empty() {
                return;
            }
            for (group, id) in done {
                c.handle_write_complete(now, group, [id]);
            }
        }
    }

    /// The snapshot indexes a lone member takes over `records` produces of
    /// `size` bytes each.
    fn snapshots_taken(me: NodeId, log_percent: u64, records: u64, size: usize) -> Vec<u64> {
        let mut config = ReplicatedConfig::new(vec![me], 1);
        config.snapshot_every = 10;
        config.snapshot_log_percent = log_percent;
        let boot = GroupBoot { recovered: DiskState::default().recovered(true), rng: seeded(1), at: Instant::ZERO };
        let mut c = ReplicaCore::new(me, config, NoObserver, Instant::ZERO, vec![boot]);
        let mut now = Instant::ZERO;
        while c.raft(0).role() != crate::raft::Role::Leader {
            now = c.poll_timeout().expect("a follower has an election deadline");
            c.handle_timeout(now);
            settle(&mut c, now);
        }
        let mut taken = Vec::new();
        for seq in 1..=records {
            let payload = Bytes::from(vec![b'x'; size]);
            let request = Request::Produce { req: seq, partition: 0, client: 7, seq, payload };
            c.handle_request(now, WallTime(seq), ClientRef(1), request);
            settle(&mut c, now);
            let (index, _) = c.raft(0).log().snapshot_point();
            if taken.last() != Some(&index) && index > 0 {
                taken.push(index);
            }
        }
        assert_eq!(c.raft(0).commit(), records + 1, "every produce (and the leader's no-op) committed");
        taken
    }

    #[test]
    fn snapshots_follow_the_count_alone_at_zero_percent() {
        let taken = snapshots_taken(NodeId(1), 0, 200, 100);
        assert_eq!(taken.len(), 20, "one snapshot per 10 entries: {taken:?}");
        assert!(taken.windows(2).all(|w| w[1] - w[0] == 10), "{taken:?}");
    }

    /// A snapshot holds every record, so at 100 % the entries between two
    /// snapshots must hold the earlier snapshot's bytes: the gaps grow with
    /// the partition, and the snapshots of n records number O(log n), not
    /// n / `snapshot_every` (the bytes written for snapshots stay linear in
    /// the bytes produced).
    #[test]
    fn snapshots_spread_out_as_the_partition_grows_at_100_percent() {
        let taken = snapshots_taken(NodeId(1), 100, 2000, 100);
        assert!(taken.len() >= 4 && taken.len() <= 12, "{} snapshots: {taken:?}", taken.len());
        assert_eq!(taken[0], 10, "the first after `snapshot_every` entries: {taken:?}");
        for w in taken.windows(2) {
            let gap = w[1] - w[0];
            assert!(gap >= 10, "never closer than `snapshot_every`: {taken:?}");
            // The entries in the gap (about 100 bytes of record and 25 of
            // command each) hold at least the snapshot at w[0] (about 112
            // bytes per record it covers).
            assert!(gap * 125 >= w[0] * 112 * 9 / 10, "gap {gap} after a snapshot at {}: {taken:?}", w[0]);
        }
    }

    /// Members applying the same entries do not write their snapshots at
    /// the same entries (past the first, which the count decides).
    #[test]
    fn members_stagger_their_snapshots() {
        let taken: Vec<Vec<u64>> = (1..=3).map(|id| snapshots_taken(NodeId(id), 100, 2000, 100)).collect();
        for a in 0..3 {
            for b in a + 1..3 {
                let shared: Vec<&u64> = taken[a][1..].iter().filter(|i| taken[b][1..].contains(i)).collect();
                assert!(shared.is_empty(), "members {} and {} both snapshot at {shared:?}: {taken:?}", a + 1, b + 1);
            }
        }
    }
}

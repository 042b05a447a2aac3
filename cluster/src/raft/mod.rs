//! Raft consensus (Ongaro & Ousterhout, and the Raft dissertation), sans-IO.
//!
//! [`Raft`] is one member of one Raft group. It owns no socket, file, timer,
//! clock or thread (see `kaelix_core::sansio` for the call order):
//!
//! * inputs: [`Raft::handle_message`], [`Raft::handle_timeout`],
//!   [`Raft::handle_write_complete`], [`Raft::propose`],
//!   [`Raft::propose_config`], [`Raft::read_index`],
//!   [`Raft::transfer_leadership`], [`Raft::compact`] — each with `now`;
//! * outputs, drained with [`Raft::poll_output`]: messages to send, disk
//!   writes ([`Write`]), committed entries to apply, installed snapshots,
//!   ReadIndex answers and role changes; [`Raft::poll_timeout`] is the next
//!   deadline. Spurious or early timeouts are no-ops.
//!
//! Randomness (the election timeout) comes from the `DetRng` handed to the
//! constructor, so one seed replays one run.
//!
//! # What is built
//!
//! * **Elections** with randomized timeouts in `[T, 2T)`, **PreVote**
//!   (a node that cannot win does not raise terms and disrupt the group)
//!   and **CheckQuorum** (a leader that has not heard from a quorum within
//!   an election timeout steps down; a follower that heard from its leader
//!   within one ignores votes — the *leader lease* — except for a
//!   leadership transfer). A campaign resends its requests to voters that
//!   have not answered every heartbeat interval (§5.1: servers retry RPCs),
//!   so one lost request does not cost a whole election timeout.
//! * **Replication** with conflict back-off (a refusal carries a hint that
//!   skips a whole conflicting term) and **flow control** (at most
//!   `max_inflight` appends unacknowledged, at most `max_append_bytes` of
//!   payload each; see [`progress`]).
//! * **Commitment** only of entries of the leader's current term, by
//!   quorum (§5.4.2); earlier entries commit with them. A new leader appends
//!   a no-op so this happens at once.
//! * **Snapshots**: the application hands in its state as of an applied
//!   index ([`Raft::compact`]); the log before it is dropped; a follower
//!   that needs compacted entries gets the snapshot in chunks.
//! * **Leadership transfer** (catch the target up, then `TimeoutNow`),
//!   **ReadIndex** reads (confirmed by a heartbeat round to a quorum, and
//!   only after the leader committed an entry of its term; there are no
//!   lease-based reads, so no clock can make a read stale), and
//!   **membership change** by joint consensus with **learners**.
//!
//! # Durability: nothing is claimed before it is on disk
//!
//! Term, vote, commit index, entries and snapshots reach the disk only as
//! [`Output::Persist`] writes; the driver performs each (in order), syncs,
//! and reports [`Raft::handle_write_complete`]. A message that asserts
//! something durable — a granted vote, a successful append, an installed
//! snapshot, and a candidate's own vote requests — is held until every
//! write issued before it has completed. A leader counts its own log
//! toward commitment only up to what its disk holds.
//!
//! # Restart with a wiped disk
//!
//! A node that boots with an empty disk but is not bootstrapping a new group
//! ([`RaftConfig::bootstrap`] false) knows it may have voted or acknowledged
//! entries it no longer has. It starts **recovering**: it never votes or
//! campaigns until it holds, durably, a committed entry of the current
//! leader's term (so it holds everything committed before), and then it
//! records its vote for that leader. A group survives a wiped minority this
//! way as long as a quorum of the other members holds every committed entry.
//! Not closed: a vote the node cast, before the wipe, in a term *higher*
//! than any it sees on rejoining is forgotten.
//!
//! # Invariants asserted after every input
//!
//! `applied ≤ commit ≤ last_index`; the snapshot point ≤ commit; a leader
//! voted for itself in its term; committed entries are never truncated.

pub mod disk;
pub mod log;
pub mod message;
pub mod progress;
pub mod quorum;
pub mod text;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use kaelix_core::NodeId;
use kaelix_core::planted::{Planted, PlantedBug};
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::sansio::{WriteId, WriteIds};
use kaelix_core::time::{Duration, Instant};

pub use log::RaftLog;
pub use message::{Body, Message};
pub use progress::{Progress, ProgressState};
pub use quorum::{Configuration, VoteResult};

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPayload {
    /// Appended by a new leader so that it commits an entry of its term.
    Noop,
    /// An application command.
    Normal(Bytes),
    /// A new configuration; takes effect as soon as it is in the log.
    Config(Configuration),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position, from 1.
    pub index: u64,
    /// Term of the leader that created it.
    pub term: u64,
    /// What it carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Bytes of application payload (for the append byte budget).
    pub fn payload_len(&self) -> usize {
        match &self.payload {
            EntryPayload::Normal(b) => b.len(),
            EntryPayload::Noop => 0,
            EntryPayload::Config(c) => 8 * c.members().len(),
        }
    }
}

/// The persistent scalars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Whom this node voted for in `term`.
    pub vote: Option<NodeId>,
    /// Commit index (a hint on restart: commitment is re-learned anyway).
    pub commit: u64,
    /// Rejoined with a wiped disk and not caught up yet (see module docs).
    pub recovering: bool,
}

/// The application's state as of `index`, and the configuration then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Last index the state includes.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The configuration as of `index`.
    pub config: Configuration,
    /// The application's state.
    pub data: Bytes,
}

/// One disk write. The driver applies it in this order — `snapshot` (drop
/// every entry up to its index, and all entries if the log does not hold
/// its index with its term), then `entries` (drop any held entry at or
/// after the first one's index, then append), then `hard_state` — syncs,
/// and reports [`Raft::handle_write_complete`] with `id`. Writes complete
/// in the order issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// Completion key.
    pub id: WriteId,
    /// A snapshot to store.
    pub snapshot: Option<Snapshot>,
    /// Entries to store (dense, ascending).
    pub entries: Vec<Entry>,
    /// New persistent scalars.
    pub hard_state: Option<HardState>,
}

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether it could win, without raising its term.
    PreCandidate,
    /// Campaigning in its term.
    Candidate,
    /// Leads its term.
    Leader,
}

/// Something the driver must do or know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `message` to `to`.
    Send {
        /// Destination member.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Perform this write (see [`Write`]).
    Persist(Write),
    /// Apply this committed entry (in index order, each exactly once per
    /// incarnation).
    Apply(Entry),
    /// Replace the application's state by this snapshot's.
    ApplySnapshot(Snapshot),
    /// A ReadIndex read: once the application has applied `index`, a read
    /// reflects every write committed before the request.
    ReadReady {
        /// The caller's context.
        ctx: u64,
        /// Apply up to here, then read.
        index: u64,
    },
    /// A ReadIndex read that can no longer be confirmed (lost leadership).
    ReadFailed {
        /// The caller's context.
        ctx: u64,
    },
    /// Role, term or known leader changed.
    RoleChanged {
        /// New role.
        role: Role,
        /// Current term.
        term: u64,
        /// Known leader.
        leader: Option<NodeId>,
    },
}

/// Configuration of one member.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This member.
    pub id: NodeId,
    /// The group's configuration when the disk holds none.
    pub initial: Configuration,
    /// Whether an empty disk means a new group (true) or a wiped disk
    /// (false: start recovering).
    pub bootstrap: bool,
    /// Minimum election timeout `T`; the actual one is drawn from `[T, 2T)`.
    pub election_timeout: Duration,
    /// Leader heartbeat interval (well below `T`).
    pub heartbeat_interval: Duration,
    /// PreVote.
    pub pre_vote: bool,
    /// CheckQuorum and the leader lease for votes.
    pub check_quorum: bool,
    /// Unacknowledged appends per follower.
    pub max_inflight: usize,
    /// Payload bytes per append (at least one entry is always sent).
    pub max_append_bytes: usize,
    /// Bytes per snapshot chunk.
    pub max_snapshot_chunk: usize,
    /// Planted bugs switched on (Raft checks `RaftVoteBeforePersist`,
    /// `RaftCommitPreviousTerm` and `RaftLostAppendNeverResent`); none in
    /// production, see
    /// [`kaelix_core::planted`].
    pub planted: Planted,
}

impl RaftConfig {
    /// Defaults for member `id` of a group of `voters`: 150 ms election
    /// timeout, 30 ms heartbeats, PreVote and CheckQuorum on, 8 appends of
    /// 64 KiB in flight, 64 KiB snapshot chunks.
    pub fn new(id: NodeId, voters: impl IntoIterator<Item = NodeId>) -> Self {
        RaftConfig {
            id,
            initial: Configuration::new(voters),
            bootstrap: true,
            election_timeout: Duration::from_millis(150),
            heartbeat_interval: Duration::from_millis(30),
            pre_vote: true,
            check_quorum: true,
            max_inflight: 8,
            max_append_bytes: 64 << 10,
            max_snapshot_chunk: 64 << 10,
            planted: Planted::NONE,
        }
    }
}

/// What a disk held at boot.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The persistent scalars (default when the disk was empty).
    pub hard_state: HardState,
    /// The newest snapshot.
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot.
    pub entries: Vec<Entry>,
    /// Whether the disk held anything at all.
    pub empty: bool,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes requests.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way.
    #[error("leadership transfer to {0} in progress")]
    Transferring(NodeId),
    /// A configuration change is not finished.
    #[error("a configuration change is still in progress")]
    ConfigChangePending,
    /// The requested configuration or target is invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RaftStats {
    /// Pre-campaigns and campaigns started.
    pub campaigns: u64,
    /// Terms this member led.
    pub terms_led: u64,
    /// Messages sent.
    pub sent: u64,
    /// Writes issued.
    pub writes: u64,
    /// Snapshots sent (whole).
    pub snapshots_sent: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
}

struct PendingRead {
    ctx: u64,
    index: u64,
    round: u64,
}

struct IncomingSnapshot {
    from: NodeId,
    index: u64,
    term: u64,
    config: Configuration,
    data: Vec<u8>,
}

/// A write in flight: what becomes durable when it completes.
struct PendingWrite {
    id: WriteId,
    /// Highest log index it makes durable (clamped when a later write
    /// truncates below it).
    last_index: u64,
    /// It carries the candidate's own vote for `term`.
    self_vote_term: Option<u64>,
}

/// One member of one Raft group (see the module docs).
pub struct Raft {
    config: RaftConfig,
    rng: DetRng,
    now: Instant,

    // Persistent state (as this node sees it; the disk lags by the
    // writes in flight).
    term: u64,
    vote: Option<NodeId>,
    log: RaftLog,
    snapshot: Option<Snapshot>,
    recovering: bool,

    // Volatile state.
    commit: u64,
    applied: u64,
    role: Role,
    leader: Option<NodeId>,
    /// Configuration entries in the log (and the snapshot's), by index;
    /// the newest is in effect.
    configs: BTreeMap<u64, Configuration>,
    election_deadline: Instant,
    /// When this node last heard from (or, as leader, confirmed) a leader.
    leader_contact: Option<Instant>,
    granted: BTreeSet<NodeId>,
    refused: BTreeSet<NodeId>,
    /// When a campaign resends its unanswered requests.
    vote_retry_deadline: Instant,
    /// Whether the current campaign is a leadership transfer.
    campaign_transfer: bool,

    // Leader state.
    progress: BTreeMap<NodeId, Progress>,
    heartbeat_deadline: Instant,
    check_quorum_deadline: Instant,
    transfer: Option<(NodeId, Instant)>,
    waiting_reads: Vec<u64>,
    reads: VecDeque<PendingRead>,
    read_round: u64,
    acked_round: BTreeMap<NodeId, u64>,

    // Follower state.
    incoming: Option<IncomingSnapshot>,

    // Persistence.
    write_ids: WriteIds,
    pending_writes: VecDeque<PendingWrite>,
    persisted_index: u64,
    persisted_hard_state: HardState,
    unstable_from: Option<u64>,
    unstable_snapshot: Option<Snapshot>,
    self_vote_pending: Option<u64>,
    /// Messages held until the write with this id (and all before) is durable.
    held: VecDeque<(WriteId, NodeId, Message)>,
    /// Messages of the current input, sent (or held) at the end of it.
    unsent: Vec<(NodeId, Message)>,

    outputs: VecDeque<Output>,
    stats: RaftStats,
}

impl Raft {
    /// Builds a member from what its disk held.
    pub fn new(config: RaftConfig, rng: DetRng, now: Instant, disk: Recovered) -> Self {
        let (snap_index, snap_term) = disk.snapshot.as_ref().map_or((0, 0), |s| (s.index, s.term));
        let log = RaftLog::new(snap_index, snap_term, disk.entries);
        let mut configs = BTreeMap::new();
        configs.insert(snap_index, disk.snapshot.as_ref().map_or_else(|| config.initial.clone(), |s| s.config.clone()));
        for e in log.iter() {
            if let EntryPayload::Config(c) = &e.payload {
                configs.insert(e.index, c.clone());
            }
        }
        let recovering = disk.hard_state.recovering || (disk.empty && !config.bootstrap);
        let hs = disk.hard_state;
        let commit = hs.commit.clamp(snap_index, log.last_index());
        let persisted_index = log.last_index();
        let mut raft = Raft {
            rng,
            now,
            term: hs.term,
            vote: hs.vote,
            log,
            snapshot: disk.snapshot.clone(),
            recovering,
            commit,
            applied: snap_index,
            role: Role::Follower,
            leader: None,
            configs,
            election_deadline: now,
            leader_contact: None,
            granted: BTreeSet::new(),
            refused: BTreeSet::new(),
            vote_retry_deadline: Instant::MAX,
            campaign_transfer: false,
            progress: BTreeMap::new(),
            heartbeat_deadline: Instant::MAX,
            check_quorum_deadline: Instant::MAX,
            transfer: None,
            waiting_reads: Vec::new(),
            reads: VecDeque::new(),
            read_round: 0,
            acked_round: BTreeMap::new(),
            incoming: None,
            write_ids: WriteIds::default(),
            pending_writes: VecDeque::new(),
            persisted_index,
            persisted_hard_state: hs,
            unstable_from: None,
            unstable_snapshot: None,
            self_vote_pending: None,
            held: VecDeque::new(),
            unsent: Vec::new(),
            outputs: VecDeque::new(),
            stats: RaftStats::default(),
            config,
        };
        if let Some(s) = disk.snapshot {
            raft.outputs.push_back(Output::ApplySnapshot(s));
        }
        raft.reset_election_deadline();
        raft.finish();
        raft
    }

    // ----- accessors -------------------------------------------------------

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }
    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }
    /// Vote in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The leader, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Where a leadership transfer under way hands leadership (until it
    /// succeeds or an election timeout passes).
    pub fn transferring_to(&self) -> Option<NodeId> {
        self.transfer.map(|(to, _)| to)
    }
    /// Commit index.
    pub fn commit(&self) -> u64 {
        self.commit
    }
    /// Highest index handed out as [`Output::Apply`] (or by a snapshot).
    pub fn applied(&self) -> u64 {
        self.applied
    }
    /// The log.
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    /// Highest log index known durable here.
    pub fn persisted_index(&self) -> u64 {
        self.persisted_index
    }
    /// The configuration in effect.
    pub fn configuration(&self) -> &Configuration {
        self.configs.values().next_back().expect("a configuration is always in effect")
    }
    /// Whether this node is still recovering from a wiped disk.
    pub fn is_recovering(&self) -> bool {
        self.recovering
    }
    /// A follower's replication progress (leader only).
    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }
    /// The newest snapshot.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }
    /// When this member (if not leading) next starts a campaign, unless a
    /// leader is heard from first.
    pub fn election_deadline(&self) -> Instant {
        self.election_deadline
    }
    /// Counters.
    pub fn stats(&self) -> RaftStats {
        self.stats
    }

    // ----- sans-IO surface -------------------------------------------------

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next deadline (`None`: nothing scheduled).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = match self.role {
            Role::Leader => {
                let mut t = self.heartbeat_deadline.min(self.check_quorum_deadline);
                if let Some((_, deadline)) = self.transfer {
                    t = t.min(deadline);
                }
                t
            }
            Role::PreCandidate | Role::Candidate => self.election_deadline.min(self.vote_retry_deadline),
            Role::Follower => self.election_deadline,
        };
        // The deadline fields use `Instant::MAX` for "not armed".
        Some(t).filter(|&t| t != Instant::MAX)
    }

    /// Acts on every deadline that has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        match self.role {
            Role::Leader => {
                if now >= self.heartbeat_deadline {
                    self.heartbeat_deadline = now + self.config.heartbeat_interval;
                    self.broadcast_heartbeat(0);
                }
                if let Some((to, deadline)) = self.transfer
                    && now >= deadline
                {
                    let _ = to;
                    self.transfer = None;
                }
                if now >= self.check_quorum_deadline {
                    self.check_quorum_deadline = now + self.config.election_timeout;
                    self.check_quorum();
                }
            }
            _ => {
                if now >= self.election_deadline {
                    self.reset_election_deadline();
                    if self.can_campaign() {
                        self.campaign(self.config.pre_vote, false);
                    }
                } else if self.role != Role::Follower && now >= self.vote_retry_deadline {
                    self.request_votes();
                }
            }
        }
        self.finish();
    }

    /// A message from `from`. One that claims to come from this member
    /// itself (misrouted or forged) is ignored: no member talks to itself.
    pub fn handle_message(&mut self, now: Instant, from: NodeId, message: Message) {
        self.advance(now);
        if from != self.config.id {
            self.step(from, message);
        }
        self.finish();
    }

    /// The write `id` is durable.
    pub fn handle_write_complete(&mut self, now: Instant, id: WriteId) {
        self.advance(now);
        let done = self.pending_writes.pop_front().expect("a completion matches an issued write");
        assert_eq!(done.id, id, "writes complete in the order issued");
        self.persisted_index = self.persisted_index.max(done.last_index).min(self.log.last_index());
        if let Some(term) = done.self_vote_term
            && self.role == Role::Candidate
            && self.term == term
            && self.self_vote_pending == Some(term)
        {
            self.self_vote_pending = None;
            self.granted.insert(self.config.id);
            self.tally();
        }
        while self.held.front().is_some_and(|(w, _, _)| *w <= id) {
            let (_, to, message) = self.held.pop_front().expect("checked");
            self.emit_send(to, message);
        }
        if self.role == Role::Leader {
            self.maybe_commit();
        }
        self.finish();
    }

    /// Proposes an application command. Returns its (index, term): it is
    /// committed if an entry with this index *and term* is applied.
    pub fn propose(&mut self, now: Instant, data: Bytes) -> Result<(u64, u64), ProposeError> {
        self.advance(now);
        self.check_proposable()?;
        let at = self.append_entry(EntryPayload::Normal(data));
        self.broadcast_append(false);
        self.finish();
        Ok(at)
    }

    /// Proposes a new set of voters and learners. Changing voters goes
    /// through a joint configuration, left automatically once committed.
    pub fn propose_config(
        &mut self,
        now: Instant,
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
    ) -> Result<(u64, u64), ProposeError> {
        self.advance(now);
        self.check_proposable()?;
        if voters.is_empty() {
            return Err(ProposeError::Invalid("a configuration needs at least one voter".into()));
        }
        if let Some(both) = voters.intersection(&learners).next() {
            return Err(ProposeError::Invalid(format!("{both} cannot be both a voter and a learner")));
        }
        let (config_index, current) = self.configs.last_key_value().map(|(i, c)| (*i, c.clone())).expect("always one");
        if current.is_joint() || config_index > self.commit {
            return Err(ProposeError::ConfigChangePending);
        }
        let next = if voters == current.voters {
            Configuration { voters, outgoing: BTreeSet::new(), learners }
        } else {
            Configuration { voters, outgoing: current.voters, learners }
        };
        let at = self.append_entry(EntryPayload::Config(next));
        self.broadcast_append(false);
        self.finish();
        Ok(at)
    }

    /// Starts a linearizable read; answered by [`Output::ReadReady`] (or
    /// [`Output::ReadFailed`]) with `ctx`.
    pub fn read_index(&mut self, now: Instant, ctx: u64) -> Result<(), ProposeError> {
        self.advance(now);
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if self.log.term(self.commit) == Some(self.term) {
            self.start_read(ctx);
        } else {
            // Until an entry of this term commits, the commit index may lag
            // what earlier leaders committed.
            self.waiting_reads.push(ctx);
        }
        self.finish();
        Ok(())
    }

    /// Hands leadership to `to` (a voter): catch it up, then tell it to
    /// campaign. Proposals are refused until it succeeds or an election
    /// timeout passes.
    pub fn transfer_leadership(&mut self, now: Instant, to: NodeId) -> Result<(), ProposeError> {
        self.advance(now);
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if to == self.config.id || !self.configuration().is_voter(to) {
            return Err(ProposeError::Invalid(format!("{to} is not another voter")));
        }
        self.transfer = Some((to, now + self.config.election_timeout));
        let caught_up = self.progress.get(&to).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            self.send(to, Body::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        self.finish();
        Ok(())
    }

    /// The application's state as of applied index `index`: drop the log
    /// up to it. `index` must be applied and above the current snapshot.
    pub fn compact(&mut self, now: Instant, index: u64, data: Bytes) {
        self.advance(now);
        assert!(index <= self.applied, "only applied state can be snapshotted");
        if index <= self.log.snapshot_point().0 {
            return;
        }
        let term = self.log.term(index).expect("an applied index above the snapshot is in the log");
        let config = self.config_at(index);
        let snapshot = Snapshot { index, term, config, data };
        self.log.compact_to(index, term);
        self.prune_configs();
        self.snapshot = Some(snapshot.clone());
        self.unstable_snapshot = Some(snapshot);
        self.finish();
    }

    // ----- message handling -------------------------------------------------

    fn step(&mut self, from: NodeId, m: Message) {
        if m.term > self.term {
            match &m.body {
                Body::PreVote { .. } => {}
                Body::PreVoteResponse { granted: true } => {}
                Body::Vote { transfer, .. } if self.in_lease() && !transfer => return,
                body => {
                    let leader = matches!(body, Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. })
                        .then_some(from);
                    self.become_follower(m.term, leader);
                }
            }
        } else if m.term < self.term {
            match m.body {
                Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. } => {
                    // Tell a stale leader the term moved on, or it would keep
                    // its followers' timers quiet forever under PreVote.
                    self.send(from, Body::AppendResponse { success: false, index: 0, hint: 0 });
                }
                Body::PreVote { .. } => self.send(from, Body::PreVoteResponse { granted: false }),
                // RequestVote receiver rule 1: reply false (with our term,
                // so the stale candidate steps down at once).
                Body::Vote { .. } => self.send(from, Body::VoteResponse { granted: false }),
                _ => {}
            }
            return;
        }
        if self.role == Role::Leader
            && matches!(m.body, Body::Append { .. } | Body::Heartbeat { .. } | Body::Snapshot { .. })
        {
            // Only this term's leader sends these, and that is us (election
            // safety): the message is forged or misrouted, not a reason to
            // crash. Checkers of the whole group catch real double leaders.
            return;
        }
        match m.body {
            Body::PreVote { last_index, last_term } => {
                let granted = !self.recovering
                    && m.term > self.term
                    && self.log.is_up_to_date(last_index, last_term)
                    && !self.in_lease();
                let term = if granted { m.term } else { self.term };
                self.send_with_term(from, term, Body::PreVoteResponse { granted });
            }
            Body::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate && m.term == self.term + 1 {
                    self.record_vote(from, granted);
                }
            }
            Body::Vote { last_index, last_term, .. } => {
                let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
                let granted = !self.recovering && can_vote && self.log.is_up_to_date(last_index, last_term);
                if granted {
                    self.vote = Some(from);
                    self.reset_election_deadline();
                }
                self.send(from, Body::VoteResponse { granted });
            }
            Body::VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.record_vote(from, granted);
                }
            }
            Body::Append { prev_index, prev_term, entries, commit } => {
                self.follow(from);
                self.handle_append(from, prev_index, prev_term, entries, commit);
            }
            Body::AppendResponse { success, index, hint } => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, success, index, hint);
                }
            }
            Body::Heartbeat { commit, round } => {
                self.follow(from);
                let last = self.log.last_index();
                if commit > last {
                    // The leader counts entries up to `commit` as ours, and
                    // we no longer hold them (a replaced or rotten disk).
                    // With nothing new to send it would never find out:
                    // refuse, so it backs up to what we have.
                    self.send(
                        from,
                        Body::AppendResponse { success: false, index: commit, hint: last.max(self.commit) },
                    );
                }
                let commit = commit.min(last);
                self.advance_commit_to(commit);
                self.send(from, Body::HeartbeatResponse { round });
            }
            Body::HeartbeatResponse { round } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, round);
                }
            }
            Body::Snapshot { index, snapshot_term, config, offset, data, done } => {
                self.follow(from);
                self.handle_snapshot_chunk(from, index, snapshot_term, config, offset, data, done);
            }
            Body::SnapshotResponse { index, offset, done } => {
                if self.role == Role::Leader {
                    self.handle_snapshot_response(from, index, offset, done);
                }
            }
            Body::TimeoutNow => {
                if self.can_campaign() {
                    self.campaign(false, true);
                }
            }
        }
    }

    /// A message from the leader of the current term.
    fn follow(&mut self, leader: NodeId) {
        assert_ne!(self.role, Role::Leader, "two leaders in term {}", self.term);
        if self.role != Role::Follower || self.leader != Some(leader) {
            self.become_follower(self.term, Some(leader));
        }
        self.leader_contact = Some(self.now);
        self.reset_election_deadline();
    }

    fn handle_append(&mut self, from: NodeId, prev_index: u64, prev_term: u64, entries: Vec<Entry>, commit: u64) {
        let well_formed =
            entries.iter().enumerate().all(|(k, e)| e.index == prev_index + 1 + k as u64 && e.term <= self.term)
                && entries.windows(2).all(|w| w[0].term <= w[1].term)
                && entries.first().is_none_or(|e| e.term >= prev_term);
        if !well_formed {
            return;
        }
        if prev_index < self.commit {
            // Everything up to our commit index matches the leader already.
            let last = prev_index + entries.len() as u64;
            if last <= self.commit {
                self.send(from, Body::AppendResponse { success: true, index: self.commit, hint: 0 });
                return;
            }
            let skip = usize::try_from(self.commit - prev_index).expect("small");
            let prev_term = entries[skip - 1].term;
            let rest = entries[skip..].to_vec();
            return self.handle_append(from, self.commit, prev_term, rest, commit);
        }
        if self.log.term(prev_index) != Some(prev_term) {
            let hint = if prev_index > self.log.last_index() {
                self.log.last_index()
            } else {
                self.log.first_index_of_term_at(prev_index).saturating_sub(1)
            };
            let hint = hint.max(self.commit);
            self.send(from, Body::AppendResponse { success: false, index: prev_index, hint });
            return;
        }
        let last_new = prev_index + entries.len() as u64;
        for e in entries {
            match self.log.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    assert!(e.index > self.commit, "a committed entry ({}) conflicts with the leader's", e.index);
                    self.truncate_from(e.index);
                    self.store_entry(e);
                }
                None => self.store_entry(e),
            }
        }
        self.advance_commit_to(commit.min(last_new));
        self.send(from, Body::AppendResponse { success: true, index: last_new, hint: 0 });
    }

    fn handle_append_response(&mut self, from: NodeId, success: bool, index: u64, hint: u64) {
        let max_inflight = self.config.max_inflight;
        let last_index = self.log.last_index();
        if index > last_index {
            // No correct follower acknowledges or refuses what this leader
            // never sent (its log only grows within its term): ignore, or
            // next_index would point past the log.
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        if success {
            if pr.acknowledged(index) {
                self.maybe_commit();
            }
            // The commit above may have left a joint configuration and so
            // dropped `from`'s progress: look it up again.
            if let Some((to, _)) = self.transfer
                && to == from
                && self.progress.get(&from).is_some_and(|p| p.match_index == self.log.last_index())
            {
                self.send(from, Body::TimeoutNow);
            }
            while self
                .progress
                .get(&from)
                .is_some_and(|p| p.can_send(max_inflight) && p.next_index <= self.log.last_index())
            {
                self.send_append(from, false);
            }
        } else if pr.state == ProgressState::Replicate
            && self.config.planted.is_on(PlantedBug::RaftLostAppendNeverResent)
        {
            // Planted bug: the refusal that follows a lost append is taken
            // for a stale one, so the lost append is never sent again.
        } else if pr.refused(index, hint) {
            self.send_append(from, true);
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, round: u64) {
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        pr.heartbeat_answered(!self.config.planted.is_on(PlantedBug::RaftLostAppendNeverResent));
        let (state, matched) = (pr.state, pr.match_index);
        match state {
            ProgressState::Snapshot { .. } => self.send_snapshot_chunk(from),
            _ if matched < self.log.last_index() => self.send_append(from, false),
            _ => {}
        }
        if round > 0 {
            let r = self.acked_round.entry(from).or_default();
            *r = (*r).max(round);
            self.release_reads();
        }
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one Snapshot message")]
    fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        index: u64,
        term: u64,
        config: Configuration,
        offset: u64,
        data: Bytes,
        done: bool,
    ) {
        if index <= self.commit {
            // Our log already covers it (the answer waits for our disk).
            self.send(from, Body::SnapshotResponse { index, offset: 0, done: true });
            return;
        }
        let fits = self
            .incoming
            .as_ref()
            .is_some_and(|s| s.from == from && s.index == index && s.term == term && s.data.len() as u64 == offset);
        if offset == 0 {
            self.incoming = Some(IncomingSnapshot { from, index, term, config, data: Vec::new() });
        } else if !fits {
            let want =
                self.incoming.as_ref().filter(|s| s.index == index && s.term == term).map_or(0, |s| s.data.len());
            self.send(from, Body::SnapshotResponse { index, offset: want as u64, done: false });
            return;
        }
        let s = self.incoming.as_mut().expect("set above");
        s.data.extend_from_slice(&data);
        if !done {
            let next = s.data.len() as u64;
            self.send(from, Body::SnapshotResponse { index, offset: next, done: false });
            return;
        }
        let s = self.incoming.take().expect("set above");
        let snapshot = Snapshot { index, term, config: s.config, data: Bytes::from(s.data) };
        self.log.compact_to(index, term);
        let log = &self.log;
        self.configs.retain(|&i, _| i > index && log.term(i).is_some());
        self.configs.insert(index, snapshot.config.clone());
        self.persisted_index = self.persisted_index.min(index);
        self.commit = index;
        self.applied = index;
        self.snapshot = Some(snapshot.clone());
        self.unstable_snapshot = Some(snapshot.clone());
        self.unstable_from = None;
        self.outputs.push_back(Output::ApplySnapshot(snapshot));
        self.stats.snapshots_installed += 1;
        self.send(from, Body::SnapshotResponse { index, offset: 0, done: true });
    }

    fn handle_snapshot_response(&mut self, from: NodeId, index: u64, offset: u64, done: bool) {
        if index > self.log.last_index() {
            // Not a snapshot this leader sent (see handle_append_response).
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        let ProgressState::Snapshot { index: sending, .. } = pr.state else {
            if done {
                // A duplicate, or an answer meaning "already covered".
                if pr.acknowledged(index) {
                    self.maybe_commit();
                }
            }
            return;
        };
        if done && index >= sending {
            pr.match_index = pr.match_index.max(index);
            pr.become_probe();
            self.stats.snapshots_sent += 1;
            self.maybe_commit();
            self.send_append(from, true);
        } else if done {
            // It covers an older snapshot; keep sending ours.
        } else if index == sending {
            pr.state = ProgressState::Snapshot { index, offset };
            self.send_snapshot_chunk(from);
        }
    }

    // ----- elections ----------------------------------------------------------

    fn can_campaign(&self) -> bool {
        !self.recovering && self.configuration().is_voter(self.config.id)
    }

    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.leader_contact.is_some_and(|t| self.now < t + self.config.election_timeout)
    }

    fn campaign(&mut self, pre: bool, transfer: bool) {
        self.stats.campaigns += 1;
        self.granted.clear();
        self.refused.clear();
        self.leader = None;
        self.campaign_transfer = transfer;
        if pre {
            self.set_role(Role::PreCandidate);
            self.granted.insert(self.config.id);
        } else {
            self.term += 1;
            self.vote = Some(self.config.id);
            self.set_role(Role::Candidate);
            // Our own vote counts once it is on disk (handle_write_complete).
            self.self_vote_pending = Some(self.term);
        }
        self.request_votes();
        self.tally();
    }

    /// (Re)sends this campaign's requests to every voter that has not
    /// answered: servers retry RPCs that got no response (§5.1), so a lost
    /// request does not cost a whole election timeout.
    fn request_votes(&mut self) {
        self.vote_retry_deadline = self.now + self.config.heartbeat_interval;
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let pending: Vec<NodeId> = self
            .configuration()
            .all_voters()
            .into_iter()
            .filter(|n| *n != self.config.id && !self.granted.contains(n) && !self.refused.contains(n))
            .collect();
        for to in pending {
            if self.role == Role::PreCandidate {
                let term = self.term + 1;
                self.send_with_term(to, term, Body::PreVote { last_index, last_term });
            } else {
                let transfer = self.campaign_transfer;
                self.send(to, Body::Vote { last_index, last_term, transfer });
            }
        }
    }

    fn record_vote(&mut self, from: NodeId, granted: bool) {
        if !self.configuration().is_voter(from) {
            return;
        }
        if granted {
            self.granted.insert(from);
        } else {
            self.refused.insert(from);
        }
        self.tally();
    }

    fn tally(&mut self) {
        match self.configuration().tally(&self.granted, &self.refused) {
            VoteResult::Won => match self.role {
                Role::PreCandidate => self.campaign(false, false),
                Role::Candidate => self.become_leader(),
                _ => {}
            },
            VoteResult::Lost => self.become_follower(self.term, None),
            VoteResult::Pending => {}
        }
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        let was_leader = self.role == Role::Leader;
        self.leader = leader;
        self.set_role(Role::Follower);
        self.self_vote_pending = None;
        if was_leader {
            self.progress.clear();
            self.transfer = None;
            self.heartbeat_deadline = Instant::MAX;
            self.check_quorum_deadline = Instant::MAX;
            for ctx in self.waiting_reads.drain(..) {
                self.outputs.push_back(Output::ReadFailed { ctx });
            }
            for r in self.reads.drain(..) {
                self.outputs.push_back(Output::ReadFailed { ctx: r.ctx });
            }
            self.acked_round.clear();
        }
        self.reset_election_deadline();
    }

    fn become_leader(&mut self) {
        assert_eq!(self.vote, Some(self.config.id), "a leader voted for itself");
        self.stats.terms_led += 1;
        self.leader = Some(self.config.id);
        self.leader_contact = Some(self.now);
        self.set_role(Role::Leader);
        let next = self.log.last_index() + 1;
        self.progress = self
            .configuration()
            .members()
            .into_iter()
            .filter(|&n| n != self.config.id)
            .map(|n| (n, Progress::new(next)))
            .collect();
        self.heartbeat_deadline = self.now + self.config.heartbeat_interval;
        self.check_quorum_deadline = self.now + self.config.election_timeout;
        self.append_entry(EntryPayload::Noop);
        self.broadcast_append(true);
        self.maybe_commit();
    }

    fn set_role(&mut self, role: Role) {
        self.role = role;
        self.outputs.push_back(Output::RoleChanged { role, term: self.term, leader: self.leader });
    }

    fn reset_election_deadline(&mut self) {
        let t = self.config.election_timeout;
        let jitter = self.rng.random_range(0..t.as_nanos().max(1) as u64);
        self.election_deadline = self.now + t + Duration::from_nanos(jitter);
    }

    fn check_quorum(&mut self) {
        if !self.config.check_quorum {
            return;
        }
        let me = self.config.id;
        let active: BTreeSet<NodeId> =
            self.progress.iter().filter(|(_, p)| p.recent_active).map(|(&n, _)| n).chain([me]).collect();
        if !self.configuration().has_quorum(|n| active.contains(&n)) {
            self.become_follower(self.term, None);
            return;
        }
        self.leader_contact = Some(self.now);
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
    }

    // ----- replication --------------------------------------------------------

    fn check_proposable(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if let Some((to, _)) = self.transfer {
            return Err(ProposeError::Transferring(to));
        }
        Ok(())
    }

    fn append_entry(&mut self, payload: EntryPayload) -> (u64, u64) {
        let entry = Entry { index: self.log.last_index() + 1, term: self.term, payload };
        let at = (entry.index, entry.term);
        self.store_entry(entry);
        at
    }

    /// Puts `entry` in the log (to be persisted at the end of this input).
    fn store_entry(&mut self, entry: Entry) {
        if let EntryPayload::Config(c) = &entry.payload {
            self.configs.insert(entry.index, c.clone());
            self.on_config_change();
        }
        self.unstable_from.get_or_insert(entry.index);
        self.log.push(entry);
    }

    fn truncate_from(&mut self, index: u64) {
        self.log.truncate_from(index);
        self.persisted_index = self.persisted_index.min(index - 1);
        for w in &mut self.pending_writes {
            w.last_index = w.last_index.min(index - 1);
        }
        self.unstable_from = Some(self.unstable_from.map_or(index, |u| u.min(index)));
        let before = self.configs.len();
        self.configs.retain(|&i, _| i < index);
        if self.configs.len() != before {
            self.on_config_change();
        }
    }

    fn config_at(&self, index: u64) -> Configuration {
        self.configs.range(..=index).next_back().map(|(_, c)| c.clone()).expect("the base configuration")
    }

    /// Keeps the configuration in effect at the snapshot point and later ones.
    fn prune_configs(&mut self) {
        let (snap, _) = self.log.snapshot_point();
        let base = self.config_at(snap);
        self.configs.retain(|&i, _| i > snap);
        self.configs.insert(snap, base);
    }

    fn on_config_change(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let members = self.configuration().members();
        let next = self.log.last_index() + 1;
        self.progress.retain(|n, _| members.contains(n));
        for n in members {
            if n != self.config.id {
                self.progress.entry(n).or_insert_with(|| Progress::new(next));
            }
        }
    }

    fn broadcast_append(&mut self, allow_empty: bool) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.send_append(to, allow_empty);
        }
    }

    fn send_append(&mut self, to: NodeId, allow_empty: bool) {
        let (max_inflight, max_bytes) = (self.config.max_inflight, self.config.max_append_bytes);
        let last = self.log.last_index();
        let Some(pr) = self.progress.get(&to) else { return };
        if !pr.can_send(max_inflight) {
            return;
        }
        if pr.next_index < self.log.first_index() {
            if let Some(s) = &self.snapshot {
                let index = s.index;
                self.progress.get_mut(&to).expect("checked").become_snapshot(index);
                self.send_snapshot_chunk(to);
            }
            return;
        }
        if pr.next_index > last && !allow_empty && pr.state == ProgressState::Replicate {
            return;
        }
        let prev_index = pr.next_index - 1;
        let prev_term = self.log.term(prev_index).expect("next_index is within the log");
        let entries = self.log.slice(pr.next_index, last, max_bytes);
        let sent_last = prev_index + entries.len() as u64;
        self.progress.get_mut(&to).expect("checked").sent(sent_last);
        let commit = self.commit;
        self.send(to, Body::Append { prev_index, prev_term, entries, commit });
    }

    fn send_snapshot_chunk(&mut self, to: NodeId) {
        let Some(s) = &self.snapshot else { return };
        let Some(pr) = self.progress.get(&to) else { return };
        let ProgressState::Snapshot { index, offset } = pr.state else { return };
        if index != s.index {
            // Compacted again meanwhile: start over with the newer one.
            let newer = s.index;
            self.progress.get_mut(&to).expect("checked").become_snapshot(newer);
            return self.send_snapshot_chunk(to);
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(s.data.len());
        let end = (start + self.config.max_snapshot_chunk).min(s.data.len());
        let body = Body::Snapshot {
            index: s.index,
            snapshot_term: s.term,
            config: s.config.clone(),
            offset: start as u64,
            data: s.data.slice(start..end),
            done: end == s.data.len(),
        };
        self.send(to, body);
    }

    fn broadcast_heartbeat(&mut self, round: u64) {
        let peers: Vec<(NodeId, u64)> = self.progress.iter().map(|(&n, p)| (n, p.match_index)).collect();
        for (to, matched) in peers {
            let commit = self.commit.min(matched);
            self.send(to, Body::Heartbeat { commit, round });
        }
    }

    fn maybe_commit(&mut self) {
        let me = self.config.id;
        let persisted = self.persisted_index;
        let progress = &self.progress;
        let quorum_index = self
            .configuration()
            .committed_index(|n| if n == me { persisted } else { progress.get(&n).map_or(0, |p| p.match_index) });
        if quorum_index <= self.commit {
            return;
        }
        let current_term = self.log.term(quorum_index) == Some(self.term);
        if !current_term && !self.config.planted.is_on(PlantedBug::RaftCommitPreviousTerm) {
            return;
        }
        self.advance_commit_to(quorum_index);
        self.on_leader_commit();
        self.broadcast_append(true);
    }

    fn on_leader_commit(&mut self) {
        if self.log.term(self.commit) == Some(self.term) {
            for ctx in std::mem::take(&mut self.waiting_reads) {
                self.start_read(ctx);
            }
        }
        let (index, config) = self.configs.last_key_value().map(|(i, c)| (*i, c.clone())).expect("always one");
        if index > self.commit {
            return;
        }
        if config.is_joint() {
            // C(old,new) committed: move to C(new).
            let next = Configuration { voters: config.voters, outgoing: BTreeSet::new(), learners: config.learners };
            self.append_entry(EntryPayload::Config(next));
        } else if !config.is_voter(self.config.id) {
            // Committed a configuration without us: hand over by stepping down.
            self.become_follower(self.term, None);
        }
    }

    fn advance_commit_to(&mut self, commit: u64) {
        if commit > self.commit {
            self.commit = commit;
        }
    }

    // ----- reads --------------------------------------------------------------

    fn start_read(&mut self, ctx: u64) {
        let me = self.config.id;
        if self.configuration().has_quorum(|n| n == me) {
            self.outputs.push_back(Output::ReadReady { ctx, index: self.commit });
            return;
        }
        self.read_round += 1;
        let round = self.read_round;
        self.reads.push_back(PendingRead { ctx, index: self.commit, round });
        self.broadcast_heartbeat(round);
    }

    fn release_reads(&mut self) {
        let me = self.config.id;
        while let Some(front) = self.reads.front() {
            let round = front.round;
            let acked = &self.acked_round;
            if !self.configuration().has_quorum(|n| n == me || acked.get(&n).is_some_and(|&r| r >= round)) {
                break;
            }
            let r = self.reads.pop_front().expect("checked");
            self.outputs.push_back(Output::ReadReady { ctx: r.ctx, index: r.index });
        }
    }

    // ----- output plumbing ----------------------------------------------------

    fn send(&mut self, to: NodeId, body: Body) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: u64, body: Body) {
        self.unsent.push((to, Message { term, body }));
    }

    /// Whether `m` claims something that must be on disk first.
    fn needs_durability(&self, m: &Message) -> bool {
        match m.body {
            Body::VoteResponse { granted } => granted && !self.config.planted.is_on(PlantedBug::RaftVoteBeforePersist),
            Body::Vote { .. } => true,
            Body::AppendResponse { success, .. } => success,
            Body::SnapshotResponse { done, .. } => done,
            _ => false,
        }
    }

    fn emit_send(&mut self, to: NodeId, message: Message) {
        self.stats.sent += 1;
        self.outputs.push_back(Output::Send { to, message });
    }

    fn advance(&mut self, now: Instant) {
        assert!(now >= self.now, "time moves forward");
        self.now = now;
    }

    /// End of every input: issue the write this input needs, send or hold
    /// its messages, hand out newly committed entries, check invariants.
    fn finish(&mut self) {
        self.maybe_finish_recovery();
        let hs = HardState { term: self.term, vote: self.vote, commit: self.commit, recovering: self.recovering };
        let entries: Vec<Entry> = match self.unstable_from.take() {
            Some(from) => self.log.slice(from, self.log.last_index(), usize::MAX),
            None => Vec::new(),
        };
        let snapshot = self.unstable_snapshot.take();
        // A changed commit index alone is not worth a write: it is
        // re-learned after a restart. It rides along with the next one.
        let scalars_changed = (hs.term, hs.vote, hs.recovering)
            != (self.persisted_hard_state.term, self.persisted_hard_state.vote, self.persisted_hard_state.recovering);
        if scalars_changed || !entries.is_empty() || snapshot.is_some() {
            let id = self.write_ids.next_id();
            let last_index = entries.last().map(|e| e.index).or(snapshot.as_ref().map(|s| s.index)).unwrap_or(0);
            let self_vote_term =
                self.self_vote_pending.filter(|_| scalars_changed && self.vote == Some(self.config.id));
            self.pending_writes.push_back(PendingWrite { id, last_index, self_vote_term });
            let hard_state = (hs != self.persisted_hard_state).then_some(hs);
            self.persisted_hard_state = hs;
            self.stats.writes += 1;
            self.outputs.push_back(Output::Persist(Write { id, snapshot, entries, hard_state }));
        }
        let latest_write = self.pending_writes.back().map(|w| w.id);
        for (to, message) in std::mem::take(&mut self.unsent) {
            match latest_write {
                Some(w) if self.needs_durability(&message) => self.held.push_back((w, to, message)),
                _ => self.emit_send(to, message),
            }
        }
        while self.applied < self.commit {
            let next = self.applied + 1;
            let entry = self.log.entry(next).expect("committed entries above the snapshot are in the log").clone();
            self.applied = next;
            self.outputs.push_back(Output::Apply(entry));
        }
        self.assert_invariants();
    }

    fn maybe_finish_recovery(&mut self) {
        if !self.recovering || self.role != Role::Follower {
            return;
        }
        let Some(leader) = self.leader else { return };
        if self.commit > 0 && self.persisted_index >= self.commit && self.log.term(self.commit) == Some(self.term) {
            self.recovering = false;
            // Whoever we voted for in this term before the wipe, the leader
            // won it: voting for anyone else now could elect a second one.
            self.vote = Some(leader);
        }
    }

    fn assert_invariants(&self) {
        assert!(self.applied <= self.commit, "applied {} > commit {}", self.applied, self.commit);
        assert!(
            self.commit <= self.log.last_index(),
            "commit {} beyond the log {}",
            self.commit,
            self.log.last_index()
        );
        assert!(self.log.snapshot_point().0 <= self.commit, "snapshot beyond commit");
        assert!(self.persisted_index <= self.log.last_index(), "persisted beyond the log");
        if self.role == Role::Leader {
            assert_eq!(self.leader, Some(self.config.id));
            assert_eq!(self.vote, Some(self.config.id), "a leader voted for itself");
        }
    }
}

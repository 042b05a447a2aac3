//! Replicated topics: the broker's side of a partition replicated by a
//! Raft group.
//!
//! # Model
//!
//! The broker does not run Raft (that is `kaelix-cluster`'s
//! `replicated` module, which depends on this crate, not the other way).
//! A broker opened with replication ([`crate::Broker::with_replication`])
//! has a **replicator** — a driver task of the cluster crate — attached,
//! and a replicated topic's partition logs are written only by it:
//!
//! 1. A publish to a replicated topic picks its partition and stamps the
//!    message as any publish does, then becomes a [`Proposal`] queued for
//!    the replicator (`BrokerCore::propose`); nothing is appended and
//!    nobody is delivered anything yet.
//! 2. The replicator proposes it to the partition's Raft group. Every
//!    replica — this node's broker and the brokers of the other members —
//!    appends each **committed** record, in commit order, at the offset
//!    the group's state machine gave it (`BrokerCore::handle_replicated_append`);
//!    that append delivers it to the node's subscribers, log-backed streams
//!    and consumer groups, as a memory topic's publish would.
//! 3. The proposal's outcome comes back (`BrokerCore::handle_proposal_done`):
//!    the offset it was committed at — the publish is acknowledged — or a
//!    refusal (this node does not lead the partition: the caller retries
//!    with the leader; leadership was lost before commit: the outcome is
//!    unknown, the record may still commit).
//!
//! Consumer-group commits of a replicated topic take the same road
//! (`BrokerCore::propose_commit`): checked against the member's generation
//! and assignment, proposed, and applied on every replica when committed
//! (`BrokerCore::handle_replicated_commit`, which only ever raises the
//! group's committed offset), so a group resumes from its last commit on
//! any node, after any crash. The caller's
//! [`crate::GroupMember::commit_acknowledged`] returns once it committed.
//!
//! Hence the invariants: a replicated partition's log holds committed
//! records only, in the same order at the same offsets on every replica
//! (reads and consumer groups see committed offsets only), a publish or a
//! group commit is acknowledged only once committed, and a group's
//! committed offset on a replica comes only from committed commits.
//!
//! A subscriber cannot hold back a commit that already happened: a live
//! stream that falls behind on a replicated topic (a full buffer, `block`
//! included) spills onto the partition log and reads on from there, as on
//! a durable topic (see `BrokerCore::offer_to`), so it misses nothing.
//!
//! What is not here: only the partition's leader proposes (a follower
//! refuses with the leader's id: forwarding is the cluster's front end).
//!
//! # Linearizable reads
//!
//! A replica's log lags the group's commits (it applies them when its own
//! group member learns of them), so a read served from it alone could miss
//! a record acknowledged before the read began. [`crate::Broker::confirm_read`]
//! closes that gap: it asks the replicator for a **read round**
//! ([`ProposalOp::ReadIndex`]) — the group's leader confirms, after the
//! request, that it still leads (Raft's ReadIndex) and names the
//! partition's next offset `n` at that read index — then waits until this
//! replica's log holds every offset below `n`. A read served from the log
//! after that sees every record committed before it began (the read is
//! linearizable at the read index, or later).
//!
//! Rounds are shared: concurrent readers of one partition on one broker
//! ride one round (`BrokerCore::propose_read`). A reader joins the round
//! not yet handed to the replicator; once it has been handed over (its read
//! index may be fixed before a newer reader began), newer readers gather
//! for the next round, which starts when that one ends. So a partition has
//! at most one round in flight per broker, however many fetches wait.

use crate::message::Message;
use crate::topic::Topic;

/// Names a proposal of this broker (unique for the broker's life).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(pub u64);

/// A publish or a consumer-group commit on a replicated topic, waiting for
/// the replicator to propose it to the partition's group.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// Its id; the outcome is reported under it (a read round's id names
    /// the round: its readers have ids of their own).
    pub id: ProposalId,
    /// The topic.
    pub topic: Topic,
    /// The partition (a publish's: chosen by key, explicit, or round robin).
    pub partition: u32,
    /// What to replicate.
    pub op: ProposalOp,
}

/// What a [`Proposal`] replicates.
#[derive(Clone, Debug, PartialEq)]
pub enum ProposalOp {
    /// A publish. The message is stamped (id and timestamp); the replica
    /// that applies it sets its partition and offset. Its outcome is the
    /// record's offset.
    Publish(Message),
    /// Consumer group `group` has processed the partition below `next`. Its
    /// outcome is the group's committed offset after it.
    Commit {
        /// The consumer group.
        group: String,
        /// The next offset the group reads.
        next: u64,
    },
    /// Not a write: confirm the partition's committed prefix for a
    /// linearizable read (a **read round**, see the module docs). The
    /// replicator has the partition's leader confirm its leadership
    /// (Raft's ReadIndex) and answers with the partition's next offset at
    /// the confirmed read index; a refusal is
    /// [`crate::BrokerError::ReadUnconfirmed`].
    ReadIndex,
}

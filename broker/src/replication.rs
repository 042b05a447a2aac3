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
//! Hence the invariants: a replicated partition's log holds committed
//! records only, in the same order at the same offsets on every replica
//! (reads and consumer groups see committed offsets only), and a publish is
//! acknowledged only once committed.
//!
//! What is not here yet: consumer-group commits of replicated topics live
//! in the memory of each node (they are not replicated, so a group resumes
//! from its last commit only while its node stays up), and a blocking
//! subscriber cannot hold back a commit that already happened — a full
//! `block` stream on a replicated topic counts the record as refused
//! instead; log-backed subscriptions never miss a retained record.

use crate::message::Message;
use crate::topic::Topic;

/// Names a proposal of this broker (unique for the broker's life).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(pub u64);

/// A publish to a replicated topic, waiting for the replicator to propose
/// it to the partition's group.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// Its id; the outcome is reported under it.
    pub id: ProposalId,
    /// The topic.
    pub topic: Topic,
    /// The partition (chosen by key, explicit, or round robin).
    pub partition: u32,
    /// The message, stamped (id and timestamp); the replica that applies it
    /// sets its partition and offset.
    pub message: Message,
}

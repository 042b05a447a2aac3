//! Planted bugs: known-wrong behaviours that simulation scenarios switch on
//! to prove that the simulator's checkers catch them.
//!
//! # The model
//!
//! A checker that never fails proves nothing: it may be checking the wrong
//! thing, or the faults may never reach the code it guards. So each protocol
//! carries a few deliberate mistakes at the exact places where a real bug
//! would hide (answering a vote before it is on disk, acknowledging a write
//! before its sync, …), and scenario variants switch one on and demand that
//! some seed fails with the violation the mistake should cause.
//!
//! Every planted bug of every crate is one variant of [`PlantedBug`], named
//! by the component that carries it. A protocol's configuration holds a
//! [`Planted`] (the set switched on; [`Planted::default`] is none), and the
//! wrong path is taken only where `config.planted.is_on(PlantedBug::X)`.
//! Nothing else about a run depends on the set: with no bug on, a run draws
//! the same random numbers and produces the same trace hash as a build that
//! never had planted bugs.
//!
//! # Why behind a feature
//!
//! Production must not carry the switches. Without the cargo feature
//! `planted-bugs` (off by default), [`Planted`] is an empty type,
//! [`Planted::is_on`] is the constant `false`, so every wrong path is dead
//! code the optimiser removes, and the constructors that switch a bug on
//! (`Planted::only`, `Planted::with`) do not exist: production code
//! cannot even name a way to enable one. The feature is switched on by
//! `kaelix-scenarios/planted-bugs` (which also registers the planted
//! scenario variants), by `kaelix/planted-bugs` for the CLI used in CI, and
//! by the dev-dependencies of the crates whose tests plant bugs. Production
//! builds (the library crates, and the `kaelix` binary that will carry
//! `kaelix serve`) leave it off; CI builds the release binary without it and
//! checks that `kaelix sim list` shows no planted scenario.

/// Every planted bug in the workspace. Each is a known-wrong behaviour of
/// one component, named after it; see the module docs for how they are
/// switched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlantedBug {
    /// Broadcast: count a value as durable (for client acks and `Stored`)
    /// as soon as its write is issued, before the sync completes.
    BroadcastAckBeforeSync,
    /// Broadcast: recover the log at boot without verifying its checksums.
    BroadcastSkipChecksum,
    /// SWIM: refute a suspicion without raising the incarnation, so the
    /// refutation loses to the suspicion it answers.
    SwimRefuteWithoutIncarnation,
    /// SWIM: a failed probe accuses the incarnation after the one probed (an
    /// off-by-one), so records hold an incarnation the member never had.
    SwimAccuseNextIncarnation,
    /// SWIM: ignore deaths and leaves declared about ourselves
    /// (memberlist#345), so a node restarted below its tombstone never
    /// jumps above it.
    SwimIgnoreOwnTombstone,
    /// Raft: answer a granted vote before the vote is on disk.
    RaftVoteBeforePersist,
    /// Raft: commit an entry of an earlier term by counting replicas (the
    /// Figure 8 bug of the Raft paper, §5.4.2).
    RaftCommitPreviousTerm,
    /// Replicated partitions: answer a produce with a predicted offset as
    /// soon as it is proposed, before it commits.
    ReplicatedAckBeforeCommit,
    /// Broker: a full drop-oldest buffer drops the arriving (newest) message
    /// instead of the oldest.
    BrokerDropOldestDropsNewest,
    /// Broker: a full blocking buffer drops the message instead of making
    /// its publisher wait.
    BrokerBlockDropsWhenFull,
    /// Broker: a growing buffer never grows past its initial capacity and
    /// refuses messages there.
    BrokerGrowStuckAtInitial,
    /// Broker: shedding under pressure also sheds `high` messages.
    BrokerShedHighPriority,
    /// Broker: acknowledge durable publishes when their records are written,
    /// before the sync.
    BrokerAckBeforeSync,
    /// Broker: consumer groups and reads of durable topics see records
    /// before they are synced.
    BrokerGroupReadsUnsynced,
    /// Broker: a queue group hands each message to the next member in turn
    /// whether or not it has room.
    BrokerQueueGroupIgnoresRoom,
    /// Server (NATS front end): answer a client's `PING` at once, without
    /// waiting for its earlier publishes to stored topics to be synced.
    ServerPongBeforeStored,
    /// Broker: a publish to a replicated topic is delivered to the node's
    /// live subscribers when proposed (at the offset it is expected to
    /// get), not when it commits.
    BrokerDeliverUncommitted,
    /// Broker: a consumer-group commit of a replicated topic, when it
    /// applies, raises the group's committed offset on every partition of
    /// the topic, not only on its own.
    BrokerGroupCommitAllPartitions,
    /// Broker: a live stream that spills onto the log after falling behind
    /// resumes each partition after the newest record it had buffered, so
    /// the buffered records it took out are never delivered.
    BrokerSpillForgetsBuffered,
    /// Plugins: a quarantined processor is passed around (fail-open), so
    /// messages skip the stage instead of being dead-lettered.
    PluginQuarantineBypass,
    /// SWIM: an `Alive` at the incarnation we hold replaces a `Suspect` or
    /// `Dead` record (the merge rule's `>` taken as `≥`), so stale gossip
    /// revives a suspect or a dead member without any refutation.
    SwimAliveIgnoresIncarnation,
    /// Raft: a leader pipelining appends to a follower takes the follower's
    /// refusal of the append after a lost one for a stale answer, and a
    /// heartbeat answer no longer makes it presume unacknowledged appends
    /// lost (etcd raft#52): after one lost append the follower is never
    /// sent another for the rest of the term. Safety holds (nothing counts
    /// as replicated that was not acknowledged); the group stalls once too
    /// few followers are left.
    RaftLostAppendNeverResent,
    /// Replicated partitions: a forwarded publish whose outcome the
    /// forwarding member does not know (the stream to the leader broke, or
    /// the leader did not answer in time) is refused as `NotLeader` (a
    /// publish that was never proposed) instead of settled as unknown, so
    /// the publisher is told "not done" about a record that may commit.
    ForwardUnknownAsRefused,
    /// Replicated partitions: a member serves a fetch from its own copy of
    /// the log without a read index confirmed by the group's leader (the
    /// read round answers at once with the member's own next offset), so a
    /// lagging member can answer "nothing there" about a record
    /// acknowledged before the fetch began.
    FetchSkipsReadIndex,
    /// Replicated partitions: the leader replacing a voter SWIM has held
    /// dead removes it without promoting a learner in its place, so the
    /// group shrinks below its replication factor.
    ReplacementShrinksGroup,
}

impl PlantedBug {
    /// Every planted bug, in declaration order.
    pub const ALL: [PlantedBug; 25] = [
        PlantedBug::BroadcastAckBeforeSync,
        PlantedBug::BroadcastSkipChecksum,
        PlantedBug::SwimRefuteWithoutIncarnation,
        PlantedBug::SwimAccuseNextIncarnation,
        PlantedBug::SwimIgnoreOwnTombstone,
        PlantedBug::RaftVoteBeforePersist,
        PlantedBug::RaftCommitPreviousTerm,
        PlantedBug::ReplicatedAckBeforeCommit,
        PlantedBug::BrokerDropOldestDropsNewest,
        PlantedBug::BrokerBlockDropsWhenFull,
        PlantedBug::BrokerGrowStuckAtInitial,
        PlantedBug::BrokerShedHighPriority,
        PlantedBug::BrokerAckBeforeSync,
        PlantedBug::BrokerGroupReadsUnsynced,
        PlantedBug::BrokerQueueGroupIgnoresRoom,
        PlantedBug::ServerPongBeforeStored,
        PlantedBug::BrokerDeliverUncommitted,
        PlantedBug::BrokerGroupCommitAllPartitions,
        PlantedBug::BrokerSpillForgetsBuffered,
        PlantedBug::PluginQuarantineBypass,
        PlantedBug::SwimAliveIgnoresIncarnation,
        PlantedBug::RaftLostAppendNeverResent,
        PlantedBug::ForwardUnknownAsRefused,
        PlantedBug::FetchSkipsReadIndex,
        PlantedBug::ReplacementShrinksGroup,
    ];

    /// This bug's bit in a [`Planted`] set.
    #[cfg(feature = "planted-bugs")]
    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

// Every bug must have its own bit.
const _: () = assert!(PlantedBug::ALL.len() <= u32::BITS as usize);

/// The set of planted bugs switched on; [`Planted::default`] (and
/// [`Planted::NONE`]) is none. Without the `planted-bugs` feature it is
/// always empty (a zero-sized type).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Planted {
    #[cfg(feature = "planted-bugs")]
    bits: u32,
}

impl Planted {
    /// No planted bug: the correct protocol.
    pub const NONE: Planted = Planted {
        #[cfg(feature = "planted-bugs")]
        bits: 0,
    };

    /// Whether `bug` is switched on.
    #[cfg(feature = "planted-bugs")]
    #[inline]
    pub const fn is_on(self, bug: PlantedBug) -> bool {
        self.bits & bug.bit() != 0
    }

    /// Whether `bug` is switched on: never, without the `planted-bugs`
    /// feature, so the wrong path behind the check is dead code.
    #[cfg(not(feature = "planted-bugs"))]
    #[inline]
    pub const fn is_on(self, bug: PlantedBug) -> bool {
        let _ = (self, bug);
        false
    }

    /// Whether any bug is switched on.
    #[inline]
    pub const fn any(self) -> bool {
        #[cfg(feature = "planted-bugs")]
        let any = self.bits != 0;
        #[cfg(not(feature = "planted-bugs"))]
        let any = false;
        any
    }

    /// The bugs switched on, in [`PlantedBug::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = PlantedBug> {
        PlantedBug::ALL.into_iter().filter(move |&bug| self.is_on(bug))
    }

    /// Only `bug` switched on.
    #[cfg(feature = "planted-bugs")]
    pub const fn only(bug: PlantedBug) -> Planted {
        Planted { bits: bug.bit() }
    }

    /// This set with `bug` switched on too.
    #[cfg(feature = "planted-bugs")]
    pub const fn with(self, bug: PlantedBug) -> Planted {
        Planted { bits: self.bits | bug.bit() }
    }
}

impl std::fmt::Debug for Planted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_switches_nothing_on() {
        for p in [Planted::NONE, Planted::default()] {
            assert!(!p.any());
            assert_eq!(p.iter().count(), 0);
            for bug in PlantedBug::ALL {
                assert!(!p.is_on(bug), "{bug:?}");
            }
        }
        assert_eq!(format!("{:?}", Planted::NONE), "{}");
    }

    #[cfg(feature = "planted-bugs")]
    #[test]
    fn only_switches_exactly_one_bug_on() {
        for bug in PlantedBug::ALL {
            let p = Planted::only(bug);
            assert!(p.any());
            assert_eq!(p.iter().collect::<Vec<_>>(), [bug]);
            for other in PlantedBug::ALL {
                assert_eq!(p.is_on(other), other == bug, "{bug:?} on, asked {other:?}");
            }
        }
        let two = Planted::only(PlantedBug::RaftVoteBeforePersist).with(PlantedBug::BroadcastSkipChecksum);
        assert_eq!(format!("{two:?}"), "{BroadcastSkipChecksum, RaftVoteBeforePersist}");
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[test]
    fn without_the_feature_the_set_is_empty_and_carries_nothing() {
        assert_eq!(std::mem::size_of::<Planted>(), 0);
    }
}

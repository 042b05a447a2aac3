//! Consumer groups: the partitions of one topic divided among the group's
//! members, with committed offsets.
//!
//! Every join or leave is a **rebalance**: the generation number grows, the
//! partitions are dealt to the members in id order (partition `p` to member
//! `p mod n`), and every member resumes each of its partitions at the
//! group's committed offset — delivery is at least once: what was read but
//! not committed before a rebalance is read again by the new owner. A
//! commit carries the generation it was made in; a commit from an older
//! generation (a member that has not yet seen the rebalance) is refused, so
//! a partition's committed offset only ever comes from its current owner.

use std::collections::BTreeMap;

use crate::topic::Topic;

/// Identifies a member of a consumer group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(pub u64);

/// Why a group operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The member left (or never joined).
    #[error("member {0:?} is not in the group")]
    NotMember(MemberId),
    /// The commit was made in an older generation.
    #[error("commit from generation {given}; the group is at generation {current} (a rebalance happened)")]
    StaleGeneration {
        /// The commit's generation.
        given: u64,
        /// The group's.
        current: u64,
    },
    /// The partition belongs to another member.
    #[error("partition {partition} is not assigned to member {member:?}")]
    NotAssigned {
        /// The member.
        member: MemberId,
        /// The partition.
        partition: u32,
    },
    /// The committed offset would move backwards.
    #[error("commit of offset {offset} on partition {partition} is below the committed {committed}")]
    Backwards {
        /// The partition.
        partition: u32,
        /// The offending offset.
        offset: u64,
        /// What is committed.
        committed: u64,
    },
}

/// One consumer group over one topic.
#[derive(Debug)]
pub struct ConsumerGroup {
    topic: Topic,
    partitions: u32,
    generation: u64,
    members: BTreeMap<MemberId, Vec<u32>>,
    /// Next offset to read, per partition, for its current owner.
    positions: BTreeMap<u32, u64>,
    /// Next offset the group has committed to read, per partition.
    committed: BTreeMap<u32, u64>,
}

impl ConsumerGroup {
    /// An empty group over `topic` with `partitions` partitions.
    pub fn new(topic: Topic, partitions: u32) -> Self {
        ConsumerGroup {
            topic,
            partitions,
            generation: 0,
            members: BTreeMap::new(),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The current generation (grows with every rebalance).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds `member` and rebalances.
    pub fn join(&mut self, member: MemberId) {
        self.members.insert(member, Vec::new());
        self.rebalance();
    }

    /// Removes `member` and rebalances. Returns whether it was a member.
    pub fn leave(&mut self, member: MemberId) -> bool {
        let was = self.members.remove(&member).is_some();
        if was {
            self.rebalance();
        }
        was
    }

    /// The topic gained partitions: deal them out.
    pub fn set_partitions(&mut self, partitions: u32) {
        assert!(partitions >= self.partitions, "partitions are never removed");
        if partitions != self.partitions {
            self.partitions = partitions;
            self.rebalance();
        }
    }

    fn rebalance(&mut self) {
        self.generation += 1;
        let ids: Vec<MemberId> = self.members.keys().copied().collect();
        for assigned in self.members.values_mut() {
            assigned.clear();
        }
        if !ids.is_empty() {
            for p in 0..self.partitions {
                let owner = ids[p as usize % ids.len()];
                self.members.get_mut(&owner).expect("listed").push(p);
            }
        }
        // New owners resume at the committed offsets.
        self.positions = self.committed.clone();
    }

    /// The partitions assigned to `member`.
    pub fn assignment(&self, member: MemberId) -> Result<&[u32], GroupError> {
        self.members.get(&member).map(Vec::as_slice).ok_or(GroupError::NotMember(member))
    }

    /// Where the owner of `partition` reads next (`None`: from the earliest
    /// retained offset).
    pub fn position(&self, partition: u32) -> Option<u64> {
        self.positions.get(&partition).copied()
    }

    /// The owner of `partition` read up to (not including) `next`.
    pub fn advance(&mut self, partition: u32, next: u64) {
        let position = self.positions.entry(partition).or_insert(next);
        debug_assert!(next >= *position, "positions only move forward");
        *position = next;
    }

    /// Commits that the group has processed `partition` below `next`.
    pub fn commit(&mut self, member: MemberId, generation: u64, partition: u32, next: u64) -> Result<(), GroupError> {
        self.check_commit(member, generation, partition, next)?;
        self.committed.insert(partition, next);
        Ok(())
    }

    /// Whether `member` may commit `next` on `partition` in `generation`
    /// (what [`ConsumerGroup::commit`] checks before it commits).
    pub fn check_commit(&self, member: MemberId, generation: u64, partition: u32, next: u64) -> Result<(), GroupError> {
        let assigned = self.assignment(member)?;
        if generation != self.generation {
            return Err(GroupError::StaleGeneration { given: generation, current: self.generation });
        }
        if !assigned.contains(&partition) {
            return Err(GroupError::NotAssigned { member, partition });
        }
        let committed = self.committed.get(&partition).copied().unwrap_or(0);
        if next < committed {
            return Err(GroupError::Backwards { partition, offset: next, committed });
        }
        Ok(())
    }

    /// A commit of `partition` that came through the partition's replicated
    /// log (from a member here or on another node): the committed offset
    /// rises to `next` if it is behind, and so does the owner's read
    /// position (what the group committed elsewhere is not read again
    /// here). Never lowers either.
    pub fn apply_replicated_commit(&mut self, partition: u32, next: u64) {
        let committed = self.committed.entry(partition).or_insert(next);
        *committed = (*committed).max(next);
        let committed = *committed;
        let position = self.positions.entry(partition).or_insert(committed);
        *position = (*position).max(committed);
    }

    /// Sets the committed offset of `partition` from storage (start-up,
    /// before any member joins); the newest commit wins.
    pub fn restore_committed(&mut self, partition: u32, next: u64) {
        let committed = self.committed.entry(partition).or_insert(next);
        *committed = (*committed).max(next);
        self.positions.insert(partition, *committed);
    }

    /// The committed offset of `partition` (next to read), if any.
    pub fn committed(&self, partition: u32) -> Option<u64> {
        self.committed.get(&partition).copied()
    }

    /// Members, in id order.
    pub fn members(&self) -> impl Iterator<Item = MemberId> + '_ {
        self.members.keys().copied()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the group has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(partitions: u32) -> ConsumerGroup {
        ConsumerGroup::new(Topic::new("orders").unwrap(), partitions)
    }

    #[test]
    fn partitions_are_dealt_to_members_and_rebalanced_on_join_and_leave() {
        let mut g = group(5);
        g.join(MemberId(1));
        assert_eq!(g.assignment(MemberId(1)).unwrap(), &[0, 1, 2, 3, 4]);
        g.join(MemberId(2));
        assert_eq!(g.assignment(MemberId(1)).unwrap(), &[0, 2, 4]);
        assert_eq!(g.assignment(MemberId(2)).unwrap(), &[1, 3]);
        assert_eq!(g.generation(), 2);
        assert!(g.leave(MemberId(1)));
        assert_eq!(g.assignment(MemberId(2)).unwrap(), &[0, 1, 2, 3, 4]);
        assert_eq!(g.assignment(MemberId(1)), Err(GroupError::NotMember(MemberId(1))));
    }

    #[test]
    fn new_owner_resumes_at_the_committed_offset() {
        let mut g = group(1);
        g.join(MemberId(1));
        g.advance(0, 10);
        g.commit(MemberId(1), 1, 0, 7).unwrap();
        g.join(MemberId(2)); // partition 0 stays with member 1 but the generation changes
        assert_eq!(g.position(0), Some(7), "uncommitted reads are redelivered");
    }

    #[test]
    fn stale_foreign_and_backward_commits_are_refused() {
        let mut g = group(2);
        g.join(MemberId(1));
        let old = g.generation();
        g.join(MemberId(2));
        assert_eq!(g.commit(MemberId(1), old, 0, 1), Err(GroupError::StaleGeneration { given: old, current: old + 1 }));
        let gen_now = g.generation();
        assert_eq!(
            g.commit(MemberId(1), gen_now, 1, 1),
            Err(GroupError::NotAssigned { member: MemberId(1), partition: 1 })
        );
        g.commit(MemberId(1), gen_now, 0, 5).unwrap();
        assert_eq!(
            g.commit(MemberId(1), gen_now, 0, 3),
            Err(GroupError::Backwards { partition: 0, offset: 3, committed: 5 })
        );
    }
}

//! The dissemination queue: updates waiting to be piggybacked, each with a
//! transmit count (memberlist's `TransmitLimitedQueue`).
//!
//! * At most one update per member is queued: a newer statement about a
//!   member replaces the older one (it supersedes it under the merge rules,
//!   or it would not have been queued).
//! * A packet takes the least-transmitted updates first, the newest first
//!   among equals, as many as fit its byte budget; each taken update counts a
//!   transmission and leaves the queue once it reached the retransmit limit.

use std::collections::BTreeMap;

use kaelix_core::NodeId;

use super::wire::{MAX_UPDATES, Update};

#[derive(Debug)]
struct Entry {
    update: Update,
    transmits: u32,
    /// Queue order: larger is newer.
    id: u64,
}

/// Updates waiting to be piggybacked.
#[derive(Debug, Default)]
pub(crate) struct Broadcasts {
    entries: BTreeMap<NodeId, Entry>,
    next_id: u64,
}

impl Broadcasts {
    /// Queues `update`, replacing any queued update about the same member.
    pub(crate) fn push(&mut self, update: Update) {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(update.member, Entry { update, transmits: 0, id });
    }

    /// Forgets any queued update about `member`.
    pub(crate) fn remove(&mut self, member: NodeId) {
        self.entries.remove(&member);
    }

    /// Updates waiting.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether an update about `member` is queued.
    pub(crate) fn contains(&self, member: NodeId) -> bool {
        self.entries.contains_key(&member)
    }

    /// The update queued about `member`, if any.
    #[cfg(test)]
    pub(crate) fn get(&self, member: NodeId) -> Option<&Update> {
        self.entries.get(&member).map(|e| &e.update)
    }

    /// Takes updates for one packet: least-transmitted first, newest first
    /// among equals, skipping any about `skip` and any that does not fit in
    /// the remaining `budget` bytes. Each taken update counts one transmission;
    /// those that reach `limit` transmissions leave the queue.
    pub(crate) fn take(&mut self, mut budget: usize, limit: u32, skip: Option<NodeId>, max: usize) -> Vec<Update> {
        let mut order: Vec<(u32, std::cmp::Reverse<u64>, NodeId)> = self
            .entries
            .iter()
            .filter(|(member, _)| Some(**member) != skip)
            .map(|(member, e)| (e.transmits, std::cmp::Reverse(e.id), *member))
            .collect();
        order.sort_unstable();
        let mut taken = Vec::new();
        for (_, _, member) in order {
            if taken.len() >= max.min(MAX_UPDATES) {
                break;
            }
            let entry = self.entries.get_mut(&member).expect("listed above");
            let len = entry.update.encoded_len();
            if len > budget {
                continue;
            }
            budget -= len;
            taken.push(entry.update.clone());
            entry.transmits += 1;
            if entry.transmits >= limit {
                self.entries.remove(&member);
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::UpdateKind;
    use super::*;

    fn dead(member: u64, incarnation: u64) -> Update {
        Update { member: NodeId(member), incarnation, kind: UpdateKind::Dead }
    }

    fn members(us: &[Update]) -> Vec<u64> {
        us.iter().map(|u| u.member.0).collect()
    }

    #[test]
    fn newest_first_then_least_sent_first() {
        let mut q = Broadcasts::default();
        q.push(dead(1, 1));
        q.push(dead(2, 1));
        assert_eq!(members(&q.take(1000, 10, None, usize::MAX)), vec![2, 1]);
        q.push(dead(3, 1));
        // 3 was never sent: it goes first, then the others newest first.
        assert_eq!(members(&q.take(1000, 10, None, usize::MAX)), vec![3, 2, 1]);
    }

    #[test]
    fn a_newer_update_replaces_the_older_and_restarts_its_count() {
        let mut q = Broadcasts::default();
        q.push(dead(1, 1));
        q.take(1000, 10, None, usize::MAX);
        q.push(dead(1, 2));
        assert_eq!(q.len(), 1);
        assert_eq!(q.get(NodeId(1)), Some(&dead(1, 2)));
    }

    #[test]
    fn updates_leave_after_the_retransmit_limit() {
        let mut q = Broadcasts::default();
        q.push(dead(1, 1));
        for _ in 0..3 {
            assert_eq!(q.take(1000, 3, None, usize::MAX).len(), 1);
        }
        assert_eq!(q.len(), 0);
        assert!(q.take(1000, 3, None, usize::MAX).is_empty());
    }

    #[test]
    fn budget_and_skip_are_respected() {
        let mut q = Broadcasts::default();
        for m in 1..=5 {
            q.push(dead(m, 1));
        }
        let one = dead(1, 1).encoded_len();
        let taken = q.take(2 * one + one / 2, 10, Some(NodeId(5)), usize::MAX);
        assert_eq!(members(&taken), vec![4, 3], "two fit, the one about 5 is skipped");
        assert_eq!(q.take(1000, 10, None, 1).len(), 1, "count limit");
    }
}

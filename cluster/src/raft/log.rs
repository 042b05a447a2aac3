//! The in-memory Raft log: entries after the last snapshot.
//!
//! Indexes start at 1; index 0 (term 0) is the empty prefix every log
//! shares. After compaction the log starts at `snapshot_index + 1` and
//! remembers the term of `snapshot_index`, so `term(snapshot_index)` still
//! answers (the consistency check of the first append after it needs it).
//!
//! Invariants (asserted): entries are dense (`entries[k].index ==
//! snapshot_index + 1 + k`) and their terms never decrease.

use std::collections::VecDeque;

use super::{Entry, EntryPayload};

/// Entries after the snapshot.
#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    snapshot_index: u64,
    snapshot_term: u64,
    entries: VecDeque<Entry>,
}

impl RaftLog {
    /// A log whose prefix up to `snapshot_index` (of `snapshot_term`) was
    /// compacted, followed by `entries`.
    pub fn new(snapshot_index: u64, snapshot_term: u64, entries: Vec<Entry>) -> Self {
        let log = RaftLog { snapshot_index, snapshot_term, entries: entries.into() };
        log.assert_invariants();
        log
    }

    fn assert_invariants(&self) {
        let mut term = self.snapshot_term;
        for (k, e) in self.entries.iter().enumerate() {
            assert_eq!(e.index, self.snapshot_index + 1 + k as u64, "log entries are dense");
            assert!(e.term >= term, "log terms never decrease (index {})", e.index);
            term = e.term;
        }
    }

    /// Index of the last entry (the snapshot's index when empty).
    pub fn last_index(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> u64 {
        self.entries.back().map_or(self.snapshot_term, |e| e.term)
    }

    /// The first index held as an entry (one past the snapshot).
    pub fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }

    /// The compacted prefix's last index and term.
    pub fn snapshot_point(&self) -> (u64, u64) {
        (self.snapshot_index, self.snapshot_term)
    }

    /// The term of `index`, if known (compacted indexes below the snapshot
    /// point are not).
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index {
            return None;
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let k = index.checked_sub(self.first_index())?;
        self.entries.get(usize::try_from(k).ok()?)
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as
    /// up to date as this one (§5.4.1).
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// Entries `from..=to`, at most `max_bytes` of payload (always at least
    /// one entry when the range is non-empty). `from` must be held.
    pub fn slice(&self, from: u64, to: u64, max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut i = from;
        while i <= to {
            let Some(e) = self.entry(i) else { break };
            let size = e.payload_len();
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(e.clone());
            i += 1;
        }
        out
    }

    /// Appends `entry`, which must follow the last one.
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "appends are dense");
        assert!(entry.term >= self.last_term(), "terms never decrease");
        self.entries.push_back(entry);
    }

    /// Removes every entry at `index` and after. Must not cut into the
    /// snapshot.
    pub fn truncate_from(&mut self, index: u64) {
        assert!(index > self.snapshot_index, "cannot truncate into the snapshot");
        let keep = usize::try_from(index - self.first_index()).expect("index fits");
        self.entries.truncate(keep);
    }

    /// Drops entries up to `index` (of `term`), which become the snapshot
    /// point. If the log does not hold `index` with `term` (an installed
    /// snapshot from the leader that is ahead or conflicts), every entry
    /// goes.
    pub fn compact_to(&mut self, index: u64, term: u64) {
        if index <= self.snapshot_index {
            return;
        }
        if self.term(index) == Some(term) {
            let drop = usize::try_from(index - self.snapshot_index).expect("index fits");
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.assert_invariants();
    }

    /// The first index of `term`'s run that ends at or before `index`:
    /// walks back over entries of the same term (the conflict hint of a
    /// rejected append).
    pub fn first_index_of_term_at(&self, index: u64) -> u64 {
        let Some(term) = self.term(index) else { return index };
        let mut i = index;
        while i > self.first_index() && self.term(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// Every held entry, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// The newest configuration entry held, if any.
    pub fn last_config(&self) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| matches!(e.payload, EntryPayload::Config(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn e(index: u64, term: u64) -> Entry {
        Entry { index, term, payload: EntryPayload::Normal(Bytes::from(vec![0; 10])) }
    }

    #[test]
    fn terms_and_bounds() {
        let log = RaftLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 2)]);
        assert_eq!((log.first_index(), log.last_index(), log.last_term()), (1, 3, 2));
        assert_eq!(log.term(0), Some(0));
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(4), None);
        assert!(log.is_up_to_date(3, 2));
        assert!(log.is_up_to_date(1, 3));
        assert!(!log.is_up_to_date(9, 1));
    }

    #[test]
    fn compaction_keeps_the_snapshot_term() {
        let mut log = RaftLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 2)]);
        log.compact_to(2, 1);
        assert_eq!((log.first_index(), log.term(2), log.term(1)), (3, Some(1), None));
        // A conflicting snapshot drops everything.
        log.compact_to(5, 4);
        assert_eq!((log.last_index(), log.last_term()), (5, 4));
    }

    #[test]
    fn slice_respects_the_byte_budget_but_sends_one() {
        let log = RaftLog::new(0, 0, (1..=5).map(|i| e(i, 1)).collect());
        assert_eq!(log.slice(1, 5, 25).len(), 2);
        assert_eq!(log.slice(1, 5, 1).len(), 1);
        assert_eq!(log.slice(4, 9, 1000).len(), 2);
    }

    #[test]
    fn conflict_hints() {
        let log = RaftLog::new(0, 0, vec![e(1, 1), e(2, 2), e(3, 2), e(4, 2), e(5, 3)]);
        assert_eq!(log.first_index_of_term_at(4), 2);
    }

    #[test]
    #[should_panic(expected = "dense")]
    fn gaps_are_refused() {
        let mut log = RaftLog::default();
        log.push(e(2, 1));
    }
}

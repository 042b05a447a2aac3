//! What the leader knows of each follower's log, and how much it may send.
//!
//! A follower's progress is in one of three states (etcd raft's model):
//!
//! * **Probe**: the leader does not know where the follower's log matches.
//!   It sends one append at a time and pauses until an answer or the next
//!   heartbeat round, so a follower that is unreachable costs one message
//!   per heartbeat, not a stream.
//! * **Replicate**: the follower is known to match up to `match_index`;
//!   appends are pipelined optimistically, at most `max_inflight` messages
//!   unacknowledged.
//! * **Snapshot**: the entries the follower needs were compacted; a
//!   snapshot is being sent in chunks.
//!
//! Flow control never strands a follower (etcd raft#52): a heartbeat answer
//! proves the follower is reachable, so if appends are outstanding and
//! nothing was acknowledged during a whole heartbeat round, they are
//! presumed lost and the follower goes back to Probe, which sends again at
//! once from the match point.

use std::collections::VecDeque;

/// Replication state of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Finding the match point, one message at a time.
    Probe,
    /// Pipelining appends.
    Replicate,
    /// Sending a snapshot of `index`.
    Snapshot {
        /// The snapshot's last index.
        index: u64,
        /// Next byte offset the follower asked for.
        offset: u64,
    },
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// Replication state.
    pub state: ProgressState,
    /// Probe: an append is outstanding; wait for an answer or a heartbeat.
    pub paused: bool,
    /// Last index of each unacknowledged append (Replicate).
    inflight: VecDeque<u64>,
    /// Whether anything was acknowledged since the last heartbeat round.
    pub progressed: bool,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
}

impl Progress {
    /// Progress of a follower the leader knows nothing about: probe from
    /// just past the leader's last index.
    pub fn new(next_index: u64) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            paused: false,
            inflight: VecDeque::new(),
            progressed: false,
            recent_active: true,
        }
    }

    /// Whether another append may go out now.
    pub fn can_send(&self, max_inflight: usize) -> bool {
        match self.state {
            ProgressState::Probe => !self.paused,
            ProgressState::Replicate => self.inflight.len() < max_inflight,
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Records an append of entries up to `last` (Replicate: optimistic
    /// `next_index`; Probe: pause).
    pub fn sent(&mut self, last: u64) {
        match self.state {
            ProgressState::Replicate => {
                if last >= self.next_index {
                    self.next_index = last + 1;
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Probe => self.paused = true,
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// The follower holds the leader's log up to `index`. Returns whether
    /// that was news.
    pub fn acknowledged(&mut self, index: u64) -> bool {
        let news = index > self.match_index;
        if news {
            self.match_index = index;
            self.progressed = true;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.inflight.front().is_some_and(|&l| l <= index) {
            self.inflight.pop_front();
        }
        self.paused = false;
        if self.state == ProgressState::Probe {
            self.become_replicate();
        }
        news
    }

    /// The follower refused an append whose previous index was `rejected`;
    /// it suggests `hint` as the last index that may match. Returns whether
    /// the refusal was current (stale ones, answering an older append, are
    /// ignored).
    pub fn refused(&mut self, rejected: u64, hint: u64) -> bool {
        match self.state {
            ProgressState::Replicate => {
                let lost = rejected == self.match_index && hint < self.match_index;
                if lost {
                    // A refusal at exactly the match point, naming less:
                    // the follower no longer holds what it acknowledged (a
                    // replaced or rotten disk; it says so when a heartbeat
                    // counts entries it lacks). Match from what it has.
                    // Lowering the match point never moves the commit
                    // index back.
                    self.match_index = hint;
                } else if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                self.next_index = (hint + 1).min(rejected).max(self.match_index + 1);
                true
            }
            ProgressState::Probe => {
                if rejected + 1 != self.next_index {
                    return false;
                }
                if hint < self.match_index {
                    // The follower no longer holds what it acknowledged (a
                    // wiped or rotten disk): match from what it still has.
                    self.match_index = hint;
                }
                self.next_index = (hint + 1).min(rejected).max(self.match_index + 1);
                self.paused = false;
                true
            }
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Back to probing from just past the match point.
    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.next_index = self.match_index + 1;
        self.paused = false;
        self.inflight.clear();
    }

    /// Start pipelining.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.inflight.clear();
    }

    /// Start sending the snapshot of `index`.
    pub fn become_snapshot(&mut self, index: u64) {
        self.state = ProgressState::Snapshot { index, offset: 0 };
        self.inflight.clear();
        self.paused = false;
    }

    /// A heartbeat answer arrived: the follower is reachable. Unpauses a
    /// probe; outstanding appends with no progress for a whole round are
    /// presumed lost (see the module docs) — unless `presume_lost` is false,
    /// which only the planted bug `RaftLostAppendNeverResent` passes.
    pub fn heartbeat_answered(&mut self, presume_lost: bool) {
        self.paused = false;
        if presume_lost && self.state == ProgressState::Replicate && !self.inflight.is_empty() && !self.progressed {
            self.become_probe();
        }
        self.progressed = false;
    }

    /// Unacknowledged appends in the window.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_then_pauses() {
        let mut p = Progress::new(5);
        assert!(p.can_send(4));
        p.sent(7);
        assert!(!p.can_send(4));
        p.heartbeat_answered(true);
        assert!(p.can_send(4), "a heartbeat answer unpauses a probe");
    }

    #[test]
    fn replicate_pipelines_up_to_the_window() {
        let mut p = Progress::new(1);
        p.acknowledged(0);
        assert_eq!(p.state, ProgressState::Replicate);
        for last in [2, 4, 6] {
            assert!(p.can_send(3));
            p.sent(last);
        }
        assert!(!p.can_send(3));
        assert_eq!(p.next_index, 7);
        p.acknowledged(4);
        assert_eq!((p.inflight(), p.match_index), (1, 4));
        assert!(p.can_send(3));
    }

    #[test]
    fn outstanding_appends_without_progress_fall_back_to_probe() {
        let mut p = Progress::new(1);
        p.acknowledged(0);
        p.heartbeat_answered(true);
        p.sent(3);
        p.sent(6);
        // Every append (or its answer) was lost; a heartbeat gets through.
        p.heartbeat_answered(true);
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next_index, 1);
        assert!(p.can_send(2));
    }

    #[test]
    fn a_follower_that_lost_acknowledged_entries_is_probed_from_what_it_has() {
        let mut p = Progress::new(1);
        p.acknowledged(10);
        p.become_probe();
        assert_eq!(p.next_index, 11);
        // Its disk was wiped: it refuses prev 10 and says it holds nothing.
        assert!(p.refused(10, 0));
        assert_eq!((p.match_index, p.next_index), (0, 1));
    }

    #[test]
    fn stale_refusals_are_ignored() {
        let mut p = Progress::new(10);
        p.acknowledged(8);
        p.sent(12);
        assert!(!p.refused(7, 3), "answers an append older than the match point");
        assert!(p.refused(9, 8));
        assert_eq!((p.state, p.next_index), (ProgressState::Probe, 9));
    }

    #[test]
    fn a_follower_that_lost_its_log_is_matched_from_what_it_has() {
        let mut p = Progress::new(10);
        p.acknowledged(8);
        assert_eq!(p.state, ProgressState::Replicate);
        // Refused at the match point, with a hint below it: entries gone.
        assert!(p.refused(8, 2));
        assert_eq!((p.state, p.match_index, p.next_index), (ProgressState::Probe, 2, 3));
    }
}

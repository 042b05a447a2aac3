//! The scheduling state of one task: the lock-free heart of the executor.
//!
//! ```text
//!            wake                 worker takes it
//!   IDLE ───────────▶ SCHEDULED ─────────────────▶ RUNNING
//!    ▲                    ▲                          │  │ wake
//!    │ poll → Pending     │ poll → Pending           │  ▼
//!    └────────────────────┼──────────────────────────┘ NOTIFIED
//!                         └────────────────────────────┘
//!   any state ── completes or is cancelled ──▶ COMPLETE (wakes ignored)
//! ```
//!
//! Invariants (checked by the loom models):
//! * a task is in at most one run queue at a time — only the wake that moves
//!   it out of IDLE, or the worker that sees NOTIFIED, enqueues it;
//! * a wake at any moment after a poll starts leads to another poll — a
//!   wake during the poll leaves NOTIFIED, which the worker turns into a
//!   re-queue instead of going IDLE;
//! * only one worker polls a task at a time — polling starts only from
//!   SCHEDULED, and only the enqueuer put it there.

use crate::sync::{AtomicUsize, Ordering};

const IDLE: usize = 0;
const SCHEDULED: usize = 1;
const RUNNING: usize = 2;
const NOTIFIED: usize = 3;
const COMPLETE: usize = 4;

/// What a worker must do after a poll returned `Pending`.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterPoll {
    /// Nobody woke it: leave it until its waker fires.
    Idle,
    /// It was woken during the poll: queue it again.
    Requeue,
}

/// A task's scheduling state (see the module docs).
#[derive(Debug)]
pub struct TaskState(AtomicUsize);

impl Default for TaskState {
    fn default() -> Self {
        Self::new_scheduled()
    }
}

impl TaskState {
    /// A freshly spawned task, about to be queued by its spawner.
    pub fn new_scheduled() -> Self {
        TaskState(AtomicUsize::new(SCHEDULED))
    }

    /// A wake. Returns true when the caller must enqueue the task.
    pub fn wake(&self) -> bool {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let next = match current {
                IDLE => SCHEDULED,
                RUNNING => NOTIFIED,
                _ => return false, // already queued, already notified, or complete
            };
            match self.0.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return current == IDLE,
                Err(actual) => current = actual,
            }
        }
    }

    /// A worker dequeued the task. Returns false if it completed meanwhile
    /// (cancelled): the worker just drops its reference.
    pub fn start_poll(&self) -> bool {
        match self.0.compare_exchange(SCHEDULED, RUNNING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(COMPLETE) => false,
            Err(other) => panic!("task dequeued in state {other}: it was queued twice"),
        }
    }

    /// The poll returned `Pending`.
    pub fn end_poll_pending(&self) -> AfterPoll {
        match self.0.compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => AfterPoll::Idle,
            Err(NOTIFIED) => {
                // Only this worker moves a task out of NOTIFIED to a queue;
                // a CAS (not a store) so that a concurrent `complete` wins.
                match self.0.compare_exchange(NOTIFIED, SCHEDULED, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => AfterPoll::Requeue,
                    Err(COMPLETE) => AfterPoll::Idle,
                    Err(other) => panic!("NOTIFIED task moved to state {other} during its poll"),
                }
            }
            Err(COMPLETE) => AfterPoll::Idle,
            Err(other) => panic!("poll ended in state {other}"),
        }
    }

    /// The task finished or was cancelled; later wakes do nothing. Called
    /// by the polling worker, for a refused spawn, or at shutdown; a swap
    /// (not a store) so it is ordered with the wakers' CAS loops.
    pub fn complete(&self) {
        self.0.swap(COMPLETE, Ordering::AcqRel);
    }

    /// Whether the task is complete.
    pub fn is_complete(&self) -> bool {
        self.0.load(Ordering::Acquire) == COMPLETE
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn wake_while_idle_enqueues_once() {
        let s = TaskState::new_scheduled();
        assert!(s.start_poll());
        assert_eq!(s.end_poll_pending(), AfterPoll::Idle);
        assert!(s.wake(), "first wake enqueues");
        assert!(!s.wake(), "second wake finds it queued");
    }

    #[test]
    fn wake_during_poll_requeues_after() {
        let s = TaskState::new_scheduled();
        assert!(s.start_poll());
        assert!(!s.wake(), "the running worker, not the waker, re-queues");
        assert!(!s.wake());
        assert_eq!(s.end_poll_pending(), AfterPoll::Requeue);
        assert!(s.start_poll());
    }

    #[test]
    fn complete_ignores_wakes_and_skips_queued_copies() {
        let s = TaskState::new_scheduled();
        s.complete();
        assert!(!s.wake());
        assert!(!s.start_poll());
        assert!(s.is_complete());
    }
}

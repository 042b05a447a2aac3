//! The live-task count and its bound (the seed's `task_queue_depth`; see
//! "Bounded queues" in the executor's docs).
//!
//! A spawn reserves its place with one `fetch_add` before anything else
//! and gives it back if it is refused, so concurrent spawns can never
//! admit more than the bound together: the count may pass the bound for an
//! instant, but only by spawns that then see it passed and back out. The
//! atomics come from `crate::sync`, so `tests/loom.rs` explores this exact
//! code.

use crate::sync::{AtomicUsize, Ordering};

/// Live tasks, and the most that may be live at once.
#[derive(Debug)]
pub struct LiveCount {
    live: AtomicUsize,
    bound: Option<usize>,
}

impl LiveCount {
    /// No task live yet; `bound`: `None` admits any number.
    pub fn new(bound: Option<usize>) -> Self {
        assert!(bound != Some(0), "a bound of zero live tasks would refuse every spawn");
        LiveCount { live: AtomicUsize::new(0), bound }
    }

    /// Takes a place for one more live task: false (and nothing taken) when
    /// the bound is reached.
    pub fn try_admit(&self) -> bool {
        let before = self.live.fetch_add(1, Ordering::AcqRel);
        if self.bound.is_some_and(|bound| before >= bound) {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives back the place of a task that finished, was cancelled, or was
    /// admitted but then not started.
    pub fn release(&self) {
        let before = self.live.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "released a live-task place nobody held");
    }

    /// Live tasks now (may briefly count a spawn that is backing out).
    pub fn get(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// The bound, if any.
    pub fn bound(&self) -> Option<usize> {
        self.bound
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_bound_and_again_after_a_release() {
        let live = LiveCount::new(Some(2));
        assert!(live.try_admit());
        assert!(live.try_admit());
        assert!(!live.try_admit(), "the third of a bound of two");
        assert_eq!(live.get(), 2, "a refusal takes nothing");
        live.release();
        assert!(live.try_admit());
        assert_eq!(live.get(), 2);
    }

    #[test]
    fn unbounded_admits_everything() {
        let live = LiveCount::new(None);
        for _ in 0..10_000 {
            assert!(live.try_admit());
        }
        assert_eq!(live.get(), 10_000);
    }
}

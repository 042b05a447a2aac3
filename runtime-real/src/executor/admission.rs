//! The live-task count and its bound (the seed's `task_queue_depth`; see
//! "Bounded queues" in the executor's docs).
//!
//! A spawn reserves its place with one `fetch_add` before anything else
//! and gives it back if it is refused, so concurrent spawns can never
//! admit more than the bound together: the count may pass the bound for an
//! instant, but only by spawns that then see it passed and back out. The
//! atomics come from `crate::sync`, so `tests/loom.rs` explores this exact
//! code.
//!
//! A worker gives back the places of the tasks it ends in batches of up to
//! [`LiveCount::release_batch`] ([`LiveCount::release_many`]), and all of
//! them before it parks or spins: a task is usually spawned on one worker
//! and ended on another, and one shared counter written by both for every
//! task moved its cache line between the cores twice per task (measured in
//! `benches/RESULTS.md`, "Spawn cost"). The count then runs ahead of the
//! tasks really live by at most `workers × (batch − 1)` while workers are
//! busy, never behind: the bound still admits no more than its number of
//! live tasks (it may refuse that many spawns early), and once the workers
//! are idle the count is exact again (shutdown waits on it). The batch is
//! a quarter of the bound per worker, so a small bound stays exact.

use crate::sync::{AtomicUsize, Ordering};

/// The most places a worker holds back (see the module docs).
pub const MAX_RELEASE_BATCH: usize = 64;

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

    /// Gives back `n` places at once (a worker's batch, see the module
    /// docs).
    pub fn release_many(&self, n: usize) {
        let before = self.live.fetch_sub(n, Ordering::AcqRel);
        assert!(before >= n, "released {n} live-task places, {before} were held");
    }

    /// How many ended tasks a worker of `workers` may hold back before it
    /// gives their places back: a quarter of the bound per worker, 1 to
    /// [`MAX_RELEASE_BATCH`].
    pub fn release_batch(&self, workers: usize) -> usize {
        self.bound.map_or(MAX_RELEASE_BATCH, |bound| (bound / (4 * workers.max(1))).clamp(1, MAX_RELEASE_BATCH))
    }

    /// Live tasks now (may briefly count a spawn that is backing out, and
    /// tasks a busy worker ended but has not given back yet).
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
    fn a_batch_gives_back_its_places_at_once_and_stays_exact_for_small_bounds() {
        let live = LiveCount::new(Some(2));
        assert_eq!(live.release_batch(2), 1, "a bound of 2 over 2 workers: no place held back");
        assert_eq!(LiveCount::new(Some(1 << 22)).release_batch(2), MAX_RELEASE_BATCH);
        assert_eq!(LiveCount::new(Some(800)).release_batch(2), 100.min(MAX_RELEASE_BATCH));
        assert_eq!(LiveCount::new(None).release_batch(8), MAX_RELEASE_BATCH);
        assert!(live.try_admit());
        assert!(live.try_admit());
        assert!(!live.try_admit());
        live.release_many(2);
        assert_eq!(live.get(), 0);
        assert!(live.try_admit());
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

//! The live-task registry: every task spawned and not yet ended, so that
//! shutdown can cancel the tasks no queue holds (a task waiting for IO, a
//! timer or a channel is held only by its wakers) and report their names.
//!
//! # Cost on the spawn path
//!
//! The registry is split in one shard per worker and one for every other
//! thread. A spawn registers its task in the shard of the thread that
//! spawns it: on a worker that is the worker's own lock, which only that
//! worker takes (shutdown aside), on a cache line no other thread writes —
//! an uncontended lock whose line stays in the worker's cache. Ending a
//! task does not touch the registry at all: a shard holds `Weak`
//! references, and a sweep drops the entries of ended tasks later. So a
//! task spawned on one worker and stolen by another costs no cross-core
//! lock, where an eager removal would take the spawner's lock from the
//! other core for every stolen task (the registry's removal measured as
//! the largest single item of the spawn+join profile before this design:
//! `benches/RESULTS.md`, "Spawn cost").
//!
//! # Sweeps
//!
//! An entry of an ended task keeps its allocation's memory (not its future
//! or output: those go with the last strong reference) until its shard is
//! swept. A shard is swept
//! * when a registration finds its vector full; if the sweep leaves it
//!   more than half full the vector doubles, so a sweep of `n` entries
//!   follows at least `n / 2` registrations (amortised O(1) per spawn);
//! * when its worker runs out of work and at least half its entries are
//!   known to have ended since the last sweep, so that the dead entries of
//!   a burst do not outlive the burst while the worker idles.
//!
//! "Known to have ended": each worker counts the registered tasks it ended,
//! per shard, in cells only it writes (a relaxed load and store, no atomic
//! read-modify-write); a shard's owner sums its column when it goes idle.
//! The counts only decide when a sweep pays; what a sweep removes is
//! decided by each task's own state, so a stale count costs a sweep too
//! early or too late, never a wrong removal.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What the registry needs of a task.
pub trait Registered: Send + Sync {
    /// Whether the task has ended (finished or cancelled): its entry may go.
    fn has_ended(&self) -> bool;
}

/// Aligned to two cache lines (the adjacent-line prefetcher pairs them), so
/// that what one thread writes shares no line with what others write.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Ended-task counters per line: one line of a worker's row.
const CELLS_PER_LINE: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct CounterLine([AtomicU64; CELLS_PER_LINE]);

struct Shard<T: ?Sized> {
    entries: Vec<Weak<T>>,
    /// The shard's ended-task count (the sum of its column) at its last
    /// sweep.
    ended_at_sweep: u64,
}

/// The registry (see the module docs).
pub(crate) struct LiveTasks<T: ?Sized> {
    /// Shard `w` for worker `w`; the last one for every other thread.
    shards: Box<[Padded<Mutex<Shard<T>>>]>,
    /// Row `w` (lines `w * lines_per_row ..`) is written by worker `w`
    /// only: cell `s` counts the tasks of shard `s` it ended.
    ended: Box<[CounterLine]>,
    lines_per_row: usize,
    workers: usize,
    /// Set by shutdown before it drains the shards: a registration that
    /// finds it set under its shard's lock is refused.
    closed: AtomicBool,
}

impl<T: ?Sized + Registered> LiveTasks<T> {
    /// A registry for `workers` workers (plus the shard for other threads).
    pub(crate) fn new(workers: usize) -> Self {
        let shards = workers + 1;
        let lines_per_row = shards.div_ceil(CELLS_PER_LINE);
        LiveTasks {
            shards: (0..shards).map(|_| Padded(Mutex::new(Shard { entries: Vec::new(), ended_at_sweep: 0 }))).collect(),
            ended: (0..workers * lines_per_row).map(|_| CounterLine::default()).collect(),
            lines_per_row,
            workers,
            closed: AtomicBool::new(false),
        }
    }

    /// The shard of a spawn on worker `worker` (`None`: another thread).
    pub(crate) fn shard_of(&self, worker: Option<usize>) -> usize {
        worker.unwrap_or(self.workers)
    }

    fn cell(&self, worker: usize, shard: usize) -> &AtomicU64 {
        &self.ended[worker * self.lines_per_row + shard / CELLS_PER_LINE].0[shard % CELLS_PER_LINE]
    }

    /// Tasks of `shard` ended so far, by every worker.
    fn ended_in(&self, shard: usize) -> u64 {
        (0..self.workers).map(|w| self.cell(w, shard).load(Ordering::Relaxed)).sum()
    }

    /// Registers `task` in `shard`; false once shutdown has begun.
    pub(crate) fn insert(&self, shard: usize, task: &Arc<T>) -> bool {
        let mut guard = self.shards[shard].lock().expect("live shard lock");
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        if guard.entries.len() == guard.entries.capacity() && !guard.entries.is_empty() {
            self.sweep(shard, &mut guard);
            let len = guard.entries.len();
            if len > guard.entries.capacity() / 2 {
                guard.entries.reserve(len);
            }
        }
        guard.entries.push(Arc::downgrade(task));
        true
    }

    /// Worker `worker` ended a task registered in `shard`. Only that
    /// worker calls this for its row: a load and a store, not an atomic
    /// increment.
    pub(crate) fn ended(&self, worker: usize, shard: usize) {
        let cell = self.cell(worker, shard);
        cell.store(cell.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Worker `worker` ran out of work: sweeps its shard, and the other
    /// threads' shard if nobody holds it, where at least half the entries
    /// are known to have ended since their last sweep.
    pub(crate) fn sweep_if_due(&self, worker: usize) {
        for shard in [worker, self.workers] {
            let Ok(mut guard) = self.shards[shard].try_lock() else { continue };
            let dead = self.ended_in(shard).saturating_sub(guard.ended_at_sweep);
            if dead > 0 && dead.saturating_mul(2) >= guard.entries.len() as u64 {
                self.sweep(shard, &mut guard);
            }
        }
    }

    fn sweep(&self, shard: usize, guard: &mut Shard<T>) {
        // Read before the scan: a task ending during it is counted after
        // this reading, so it triggers a later sweep if this one missed it.
        guard.ended_at_sweep = self.ended_in(shard);
        guard.entries.retain(|entry| entry.upgrade().is_some_and(|task| !task.has_ended()));
    }

    /// Stops registration and takes every task that has not ended.
    pub(crate) fn close(&self) -> Vec<Arc<T>> {
        self.closed.store(true, Ordering::Release);
        let mut all = Vec::new();
        for shard in &self.shards {
            let mut guard = shard.lock().expect("live shard lock");
            all.extend(guard.entries.drain(..).filter_map(|entry| entry.upgrade()).filter(|task| !task.has_ended()));
        }
        all
    }

    /// Entries held now, ended or not (for tests of the sweeps).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.shards.iter().map(|s| s.lock().expect("live shard lock").entries.len()).sum()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Fake(AtomicBool);

    impl Registered for Fake {
        fn has_ended(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn task() -> Arc<Fake> {
        Arc::new(Fake(AtomicBool::new(false)))
    }

    #[test]
    fn close_returns_exactly_the_tasks_that_have_not_ended() {
        let live = LiveTasks::new(2);
        let tasks: Vec<_> = (0..30).map(|_| task()).collect();
        for (i, t) in tasks.iter().enumerate() {
            assert!(live.insert(live.shard_of([Some(0), Some(1), None][i % 3]), t));
        }
        for t in tasks.iter().step_by(2) {
            t.0.store(true, Ordering::Relaxed);
        }
        let mut dropped: Vec<Arc<Fake>> = (0..5).map(|_| task()).collect();
        for t in &dropped {
            assert!(live.insert(0, t));
        }
        dropped.clear(); // ended and gone: only a Weak is left
        let open = live.close();
        assert_eq!(open.len(), 15);
        assert!(open.iter().all(|t| tasks.iter().skip(1).step_by(2).any(|u| Arc::ptr_eq(t, u))));
        assert!(!live.insert(0, &task()), "closed: refused");
    }

    #[test]
    fn a_full_vector_is_swept_before_it_grows_and_growth_is_amortised() {
        let live = LiveTasks::new(1);
        let mut kept = Vec::new();
        // Many short-lived tasks, a few long-lived: the shard stays near the
        // number alive, not the number ever spawned.
        for i in 0..10_000 {
            let t = task();
            assert!(live.insert(0, &t));
            if i % 100 == 0 {
                kept.push(t);
            }
        }
        let entries = live.entries();
        assert!(entries <= 4 * kept.len().max(16), "{entries} entries for {} alive", kept.len());
        assert_eq!(live.close().len(), kept.len());
    }

    #[test]
    fn an_idle_worker_sweeps_once_half_its_entries_ended() {
        let live = LiveTasks::new(2);
        let tasks: Vec<_> = (0..10).map(|_| task()).collect();
        for t in &tasks {
            assert!(live.insert(1, t));
        }
        for t in &tasks[..4] {
            t.0.store(true, Ordering::Relaxed);
            live.ended(0, 1); // ended on the other worker
        }
        live.sweep_if_due(1);
        assert_eq!(live.entries(), 10, "4 of 10 ended: not yet worth a sweep");
        tasks[4].0.store(true, Ordering::Relaxed);
        live.ended(1, 1);
        live.sweep_if_due(0);
        assert_eq!(live.entries(), 10, "worker 0 does not sweep worker 1's shard");
        live.sweep_if_due(1);
        assert_eq!(live.entries(), 5, "5 of 10 ended: swept");
        live.sweep_if_due(1);
        assert_eq!(live.entries(), 5, "nothing ended since: no sweep");
    }
}

//! What a task costs the executor in heap allocations, counted by this test
//! binary's global allocator on the thread that allocates.
//!
//! A spawn allocates its task once (`Arc<Task<F>>`: header, output slot and
//! the handle's share of it) and its pinned future once (`Pin<Box<F>>`): see
//! `executor::task`, "Layout". Queues, the live-task registry, wakers and
//! the join handle share that allocation; they never copy the task.
//!
//! Both tests run on an executor with one worker, inside a task, so that the
//! spawns and everything the executor does for them (queueing, polling,
//! waking, completing the handles) happen on that worker's thread, which is
//! the thread whose allocations are counted. What grows and then keeps its
//! room is warmed first: the worker's shard of the live-task registry (a
//! vector of entries, swept when full before it may grow), and the worker's deque (a round queues at most [`ROUND`] + 1
//! tasks, below its initial room of 64, so it never grows or shrinks).
//! After that every allocation on the thread is a task's own. (A spawn from
//! a thread outside the executor also pushes to a pool's injector, which
//! allocates a block every 63 pushes; that is not the spawn's cost.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use kaelix_core::runtime::Priority;
use kaelix_runtime_real::{Executor, ExecutorHandle, JoinHandle};

/// Heap allocations per spawn: the task and its future's box.
const ALLOCATIONS_PER_SPAWN: u64 = 2;
/// Tasks spawned per round.
const ROUND: usize = 32;

thread_local! {
    /// Allocations (and reallocations) made on this thread so far.
    /// Const-initialised, no destructor: reading it never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// `System`, counting each allocation on the thread that makes it.
struct CountingAllocator;

impl CountingAllocator {
    fn count() {
        // A thread being torn down has no counter left: not counted.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every method forwards its arguments to `System` unchanged and
// returns its result unchanged; the counting only touches a thread-local
// `Cell`, which neither allocates nor reenters the allocator.
#[allow(unsafe_code, reason = "a GlobalAlloc is unsafe by definition; this one only counts and forwards to System")]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count();
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (every allocation here does) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count();
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations_here() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn one_worker() -> Executor {
    crate::support::executor("alloc", 1)
}

/// Fails the test unless this thread's allocations are counted (so that a
/// count of zero could not pass by the allocator not being there).
fn assert_counting() {
    let before = allocations_here();
    let probe = std::hint::black_box(Box::new(7u64));
    assert_eq!(allocations_here() - before, 1, "the counting allocator counts this thread");
    drop(probe);
}

/// Returns `Pending` once (waking itself during the poll), then `Ready`.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Spawns [`ROUND`] tasks that each yield once, then joins them all.
/// `handles` has room for them, so the round itself allocates nothing.
async fn round(spawner: &ExecutorHandle, handles: &mut Vec<JoinHandle<u64>>) {
    assert!(handles.is_empty() && handles.capacity() >= ROUND);
    for i in 0..ROUND as u64 {
        handles.push(spawner.spawn(Priority::Normal, "counted", async move {
            YieldOnce(false).await;
            i
        }));
    }
    for (i, handle) in handles.drain(..).enumerate() {
        assert_eq!(handle.await.expect("the task finished"), i as u64);
    }
}

#[test]
fn a_spawn_allocates_its_task_and_its_future_only() {
    let ex = one_worker();
    let spawner = ex.handle();
    let counts = ex.block_on(async move {
        assert_counting();
        let mut handles = Vec::with_capacity(ROUND);
        for _ in 0..2 {
            round(&spawner, &mut handles).await;
        }
        let mut counts = Vec::with_capacity(ROUND);
        for i in 0..ROUND as u64 {
            let before = allocations_here();
            let handle = spawner.spawn(Priority::Normal, "counted", async move { i });
            counts.push(allocations_here() - before);
            assert_eq!(handle.await.expect("the task finished"), i);
        }
        counts
    });
    assert_eq!(counts, vec![ALLOCATIONS_PER_SPAWN; ROUND], "allocations of each spawn on the spawning thread");
}

/// Spawning, polling, a wake during a poll (re-queue), a wake of an idle
/// task (the joiner, when a task it awaits completes), completing and
/// joining: the worker's thread allocates for the tasks themselves and for
/// nothing else — a poll's waker, in particular, is a reference to the task.
#[test]
fn polling_waking_and_joining_allocate_nothing_beyond_the_spawns() {
    let ex = one_worker();
    let spawner = ex.handle();
    let per_round = ex.block_on(async move {
        assert_counting();
        let mut handles = Vec::with_capacity(ROUND);
        for _ in 0..2 {
            round(&spawner, &mut handles).await;
        }
        let mut per_round = [0; 5];
        for count in &mut per_round {
            let before = allocations_here();
            round(&spawner, &mut handles).await;
            *count = allocations_here() - before;
        }
        per_round
    });
    assert_eq!(per_round, [ROUND as u64 * ALLOCATIONS_PER_SPAWN; 5], "allocations of a round of {ROUND} tasks");
}

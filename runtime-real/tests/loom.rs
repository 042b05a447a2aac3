//! Loom models of the executor's lock-free parts: the task scheduling state
//! machine (`executor::state`), the park/notify protocol with the idle spin
//! (`executor::idle`) and the live-task bound (`executor::admission`). `src/sync.rs` swaps their atomics and mutex for
//! loom's, so these models explore exactly the code that ships.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" cargo test -p kaelix-runtime-real --release --test loom`
//! (without `--cfg loom` this file is empty).
//!
//! Every model counts the executions loom explores and fails if it saw only
//! one: loom can silently explore a single interleaving (loom#392), which
//! would make a model pass without checking anything. The larger models cap
//! preemptions per execution (`preemption_bound`, noted at each) to keep the
//! whole file to seconds in release mode.
//!
//! `TaskState::complete` is a `swap`, not a plain store: loom 0.7 can
//! produce executions no C11 machine allows when a plain store races a CAS
//! on the same atomic (tokio-rs/loom#254, #389), which made the models where
//! `complete` races a `wake` report false failures. The swap means the same
//! in C11 and lets every model here run.
#![cfg(loom)]

use kaelix_runtime_real::executor::admission::LiveCount;
use kaelix_runtime_real::executor::idle::Sleepers;
use kaelix_runtime_real::executor::state::{AfterPoll, TaskState};
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::AtomicUsize;
use loom::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use loom::thread;

/// Explores `model` under loom; `preemption_bound` caps the preemptions per
/// execution (None: exhaustive). Returns the number of executions explored.
fn explore(name: &str, preemption_bound: Option<usize>, model: impl Fn() + Sync + Send + 'static) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let mut builder = loom::model::Builder::new();
    if preemption_bound.is_some() {
        builder.preemption_bound = preemption_bound;
    }
    builder.check(move || {
        counter.fetch_add(1, Relaxed);
        model();
    });
    let runs = runs.load(Relaxed);
    eprintln!("loom model {name}: {runs} executions explored");
    assert!(runs > 1, "loom model {name} explored a single execution: it checks nothing (loom#392?)");
    runs
}

// ---------------------------------------------------------------------------
// TaskState
// ---------------------------------------------------------------------------

/// One task, its run queue and its future's readiness, as the executor uses
/// them.
struct Task {
    state: TaskState,
    /// Copies of the task in the run queue: must never exceed 1.
    queued: AtomicUsize,
    /// Events published by wakers that no poll has consumed yet. The future
    /// reads them with an RMW, like any real future whose readiness lives in
    /// a mutex or an `AtomicWaker`.
    ready: AtomicUsize,
    /// The future itself: every poll takes `&mut` of it, so loom reports two
    /// polls that are not ordered by happens-before (two workers polling at
    /// once, or a hand-off between workers that does not synchronize).
    future: UnsafeCell<()>,
}

impl Task {
    /// A freshly spawned task: SCHEDULED and in the queue.
    fn spawned() -> Self {
        Task {
            state: TaskState::new_scheduled(),
            queued: AtomicUsize::new(1),
            ready: AtomicUsize::new(0),
            future: UnsafeCell::new(()),
        }
    }

    fn enqueue(&self) {
        let before = self.queued.fetch_add(1, AcqRel);
        assert_eq!(before, 0, "task queued twice at once");
    }

    fn dequeue(&self) -> bool {
        self.queued.compare_exchange(1, 0, AcqRel, Acquire).is_ok()
    }

    /// A waker: the event source publishes readiness, then wakes the task,
    /// enqueueing it when told to. Returns what `wake` returned.
    fn wake(&self) -> bool {
        self.ready.fetch_add(1, AcqRel);
        let enqueue = self.state.wake();
        if enqueue {
            self.enqueue();
        }
        enqueue
    }

    /// A worker: polls the task until the queue is empty. A poll consumes
    /// the published events; if `complete_on_event` and it saw one, the
    /// future returns `Ready` and the task completes, else it is `Pending`.
    /// Returns how many polls ran.
    fn work(&self, complete_on_event: bool) -> usize {
        let mut polls = 0;
        while self.dequeue() {
            if !self.state.start_poll() {
                assert!(self.state.is_complete());
                continue; // a completed task's stale queue entry: dropped
            }
            polls += 1;
            let events = self.ready.swap(0, AcqRel);
            // After the RMW on `ready`, so that only the state machine and
            // the queue can order this access after the previous poll's.
            self.future.with_mut(|_| ());
            if complete_on_event && events > 0 {
                self.state.complete();
            } else if self.state.end_poll_pending() == AfterPoll::Requeue {
                self.enqueue();
            }
        }
        polls
    }
}

/// `workers` workers poll the task (re-queueing on `Requeue`) while
/// `wakers` threads each call `wake` `wakes_each` times.
///
/// Checks: the task is never queued twice (`enqueue` asserts); `start_poll`
/// never panics on a dequeued copy; polls never overlap and each one
/// happens-after the previous (the future cell); and no wake is lost: after
/// every thread joined, either the task is in the queue (a poll is owed, and
/// `start_poll` accepts it), or it is IDLE and the last poll consumed every
/// event — i.e. no wake happened after the last poll began without another
/// poll following it.
fn wake_race(workers: usize, wakers: usize, wakes_each: usize) {
    let task = Arc::new(Task::spawned());
    let workers: Vec<_> = (0..workers)
        .map(|_| {
            let task = task.clone();
            thread::spawn(move || task.work(false))
        })
        .collect();
    let wakers: Vec<_> = (0..wakers)
        .map(|_| {
            let task = task.clone();
            thread::spawn(move || {
                for _ in 0..wakes_each {
                    task.wake();
                }
            })
        })
        .collect();
    for w in wakers {
        w.join().unwrap();
    }
    let polls: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();

    if polls == 0 {
        assert_eq!(task.queued.load(Acquire), 1, "the spawned task vanished unpolled");
    }
    if task.queued.load(Acquire) == 0 {
        assert_eq!(task.ready.load(Acquire), 0, "lost wake-up: a wake after the last poll began led to no poll");
    }
    // A queued copy is owed a poll: it must be accepted and drain the rest.
    task.work(false);
    assert_eq!(task.ready.load(Acquire), 0);
    assert!(task.state.wake(), "after its last poll the task must be IDLE");
}

#[test]
fn task_state_worker_vs_one_waker() {
    explore("1 worker vs 1 waker x1", None, || wake_race(1, 1, 1));
}

#[test]
fn task_state_worker_vs_one_waker_waking_twice() {
    explore("1 worker vs 1 waker x2", None, || wake_race(1, 1, 2));
}

#[test]
fn task_state_worker_vs_two_wakers() {
    // Exhaustive takes minutes; bounded to 3 preemptions per execution.
    explore("1 worker vs 2 wakers x1 (preemption bound 3)", Some(3), || wake_race(1, 2, 1));
}

#[test]
fn task_state_two_workers_vs_one_waker() {
    // The re-queued task may be taken by the other worker: the hand-off must
    // order the two polls.
    explore("2 workers vs 1 waker x2 (preemption bound 3)", Some(3), || wake_race(2, 1, 2));
}

/// The future completes on the poll that sees an event, racing wakers that
/// keep waking it. After `complete` no wake enqueues (so no queue entry is
/// left behind), and later wakes are ignored.
fn complete_while_woken(wakers: usize, wakes_each: usize) {
    let task = Arc::new(Task::spawned());
    let worker = {
        let task = task.clone();
        thread::spawn(move || task.work(true))
    };
    let wakers: Vec<_> = (0..wakers)
        .map(|_| {
            let task = task.clone();
            thread::spawn(move || {
                for _ in 0..wakes_each {
                    task.wake();
                }
                if task.state.is_complete() {
                    assert!(!task.wake(), "wake enqueued a completed task");
                }
            })
        })
        .collect();
    for w in wakers {
        w.join().unwrap();
    }
    worker.join().unwrap();
    // A copy queued after the worker found the queue empty: poll it here.
    task.work(true);
    assert!(task.state.is_complete(), "every waker published an event, so some poll must complete the task");
    assert_eq!(task.queued.load(Acquire), 0, "a completed task left a queue entry behind");
    assert!(!task.wake(), "wake enqueued a completed task");
    assert!(!task.state.start_poll(), "a completed task must not be polled");
}

#[test]
fn task_state_complete_vs_one_waker() {
    explore("complete vs 1 waker x2", None, || complete_while_woken(1, 2));
}

#[test]
fn task_state_complete_vs_two_wakers() {
    explore("complete vs 2 wakers x1 (preemption bound 3)", Some(3), || complete_while_woken(2, 1));
}

/// Cancellation from outside the polling worker (the shutdown path and a
/// spawn refused during shutdown: `complete` while no poll is in flight),
/// racing a waker. A wake after `complete` never enqueues, and a queued copy
/// — whether queued before or by the racing wake — is skipped: `start_poll`
/// returns false.
fn cancel_vs_wake(start_idle: bool) {
    let task = Arc::new(Task::spawned());
    if start_idle {
        assert!(task.dequeue());
        assert!(task.state.start_poll());
        assert_eq!(task.state.end_poll_pending(), AfterPoll::Idle);
    }
    let canceller = {
        let task = task.clone();
        thread::spawn(move || {
            task.state.complete();
            assert!(!task.wake(), "wake after complete enqueued the task");
        })
    };
    let waker = {
        let task = task.clone();
        thread::spawn(move || {
            task.wake();
        })
    };
    canceller.join().unwrap();
    waker.join().unwrap();
    let entries = task.queued.load(Acquire);
    assert!(entries <= 1);
    assert_eq!(task.work(false), 0, "a queued copy of a completed task was polled");
    assert!(task.state.is_complete());
    assert!(!task.wake());
}

#[test]
// Sound under loom: from SCHEDULED, `wake` only loads, so no CAS races the
// store.
fn task_state_cancel_queued_vs_wake() {
    explore("cancel queued task vs wake", None, || cancel_vs_wake(false));
}

#[test]
fn task_state_cancel_idle_vs_wake() {
    explore("cancel idle task vs wake", None, || cancel_vs_wake(true));
}

// ---------------------------------------------------------------------------
// Sleepers
// ---------------------------------------------------------------------------

fn take_one(work: &AtomicUsize) -> bool {
    let mut n = work.load(Acquire);
    while n > 0 {
        match work.compare_exchange(n, n - 1, AcqRel, Acquire) {
            Ok(_) => return true,
            Err(actual) => n = actual,
        }
    }
    false
}

/// One worker (index 0) takes `publishers` items, parking when it finds
/// none, exactly as the executor's worker loop does: register, re-check,
/// park, unregister. Each publisher pushes one item then pops an idle worker
/// to unpark. The work counter is accessed with acquire/release only, so the
/// protocol's SeqCst fences are what must keep a wake-up from being lost; a
/// lost wake-up leaves the worker parked forever, which loom reports as a
/// deadlock.
fn park_notify(publishers: usize) {
    let sleepers = Arc::new(Sleepers::default());
    let work = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (sleepers, work) = (sleepers.clone(), work.clone());
        thread::spawn(move || {
            let mut taken = 0;
            while taken < publishers {
                if take_one(&work) {
                    taken += 1;
                    continue;
                }
                sleepers.register(0);
                if work.load(Acquire) > 0 {
                    sleepers.unregister(0);
                    continue;
                }
                thread::park();
                sleepers.unregister(0);
            }
        })
    };
    let worker_thread = worker.thread().clone();
    let publishers: Vec<_> = (0..publishers)
        .map(|_| {
            let (sleepers, work, worker_thread) = (sleepers.clone(), work.clone(), worker_thread.clone());
            thread::spawn(move || {
                work.fetch_add(1, Release);
                if let Some(index) = sleepers.pop_one() {
                    assert_eq!(index, 0);
                    worker_thread.unpark();
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    worker.join().unwrap();
    assert_eq!(work.load(Acquire), 0);
    assert_eq!(sleepers.len(), 0, "idle count out of step: nobody is parked");
    assert!(sleepers.is_empty());
    assert_eq!(sleepers.pop_one(), None, "a worker left registered");
}

#[test]
fn sleepers_one_publisher() {
    explore("park/notify, 1 publisher", None, || park_notify(1));
}

#[test]
fn sleepers_two_publishers() {
    // Exhaustive takes minutes; bounded to 3 preemptions per execution.
    explore("park/notify, 2 publishers (preemption bound 3)", Some(3), || park_notify(2));
}

/// Two workers and `publishers` publishers, with the spin: worker 0 spins
/// (up to `spin_looks` looks at the queue) before it registers, as the
/// executor's worker loop does after running a task; worker 1 never spins.
/// A publisher that sees a spinner unparks nobody, so the spinner must see
/// the work, either while spinning or when it stops; a worker that comes
/// back from idle with a task hands further work on
/// (`WorkerLoop::hand_off_after_idle`). A wake-up lost leaves work queued
/// with both workers parked: loom reports the deadlock. Once every item is
/// taken, the worker that took the last one stops the other (like the
/// executor's shutdown: `done` is re-checked after registering).
fn spin_park_notify(publishers: usize, spin_looks: usize) {
    use loom::sync::Mutex;
    use loom::sync::atomic::AtomicBool;
    let sleepers = Arc::new(Sleepers::default());
    let work = Arc::new(AtomicUsize::new(0));
    let taken = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let threads: Arc<Mutex<Vec<Option<thread::Thread>>>> = Arc::new(Mutex::new(vec![None, None]));
    let unpark = |threads: &Mutex<Vec<Option<thread::Thread>>>, index: usize| {
        threads.lock().unwrap()[index].as_ref().expect("a worker publishes its handle before it registers").unpark();
    };
    let workers: Vec<_> = (0..2)
        .map(|index| {
            let (sleepers, work, taken, done, threads) =
                (sleepers.clone(), work.clone(), taken.clone(), done.clone(), threads.clone());
            thread::spawn(move || {
                threads.lock().unwrap()[index] = Some(thread::current());
                let spins = index == 0;
                let mut spin_armed = spins; // as if it had just run a task
                let mut back_from_idle = false;
                loop {
                    if take_one(&work) {
                        if std::mem::take(&mut back_from_idle)
                            && work.load(Acquire) > 0
                            && let Some(other) = sleepers.pop_one()
                        {
                            unpark(&threads, other);
                        }
                        if taken.fetch_add(1, AcqRel) + 1 == publishers {
                            done.store(true, Release);
                            for other in sleepers.pop_all() {
                                unpark(&threads, other);
                            }
                        }
                        spin_armed = spins;
                        continue;
                    }
                    back_from_idle = false;
                    if done.load(Acquire) {
                        return;
                    }
                    if std::mem::take(&mut spin_armed) && sleepers.try_start_spinning(1) {
                        let found = (0..spin_looks).any(|_| work.load(Acquire) > 0);
                        sleepers.stop_spinning();
                        if found {
                            back_from_idle = true;
                            continue;
                        }
                    }
                    sleepers.register(index);
                    if work.load(Acquire) > 0 || done.load(Acquire) {
                        sleepers.unregister(index);
                        continue;
                    }
                    thread::park();
                    sleepers.unregister(index);
                    back_from_idle = true;
                }
            })
        })
        .collect();
    let publisher_threads: Vec<_> = (0..publishers)
        .map(|_| {
            let (sleepers, work, threads) = (sleepers.clone(), work.clone(), threads.clone());
            thread::spawn(move || {
                work.fetch_add(1, Release);
                if let Some(index) = sleepers.pop_one() {
                    unpark(&threads, index);
                }
            })
        })
        .collect();
    for p in publisher_threads {
        p.join().unwrap();
    }
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(work.load(Acquire), 0, "work left behind");
    assert_eq!(taken.load(Acquire), publishers);
    assert!(sleepers.is_empty(), "a worker left registered");
    assert!(sleepers.try_start_spinning(1), "a spin left counted");
}

#[test]
fn sleepers_spinner_one_publisher() {
    // Bound 3 passed but took minutes on a loaded 2-core machine; bounded
    // to 2 preemptions per execution (a subset of what bound 3 explored).
    explore("spin/park/notify, 2 workers, 1 publisher (preemption bound 2)", Some(2), || spin_park_notify(1, 1));
}

#[test]
fn sleepers_spinner_two_publishers() {
    // The hand-off: two items published while worker 0 spins. Bound 2
    // passed in 689 s on a loaded 2-core machine; bounded to 1 preemption
    // per execution (a subset of it) to keep the file short.
    explore("spin/park/notify, 2 workers, 2 publishers (preemption bound 1)", Some(1), || spin_park_notify(2, 2));
}

// ---------------------------------------------------------------------------
// LiveCount
// ---------------------------------------------------------------------------

/// `spawners` threads each try to admit one task under a bound of `bound`;
/// the first `releasers` of them that get in finish again at once (their
/// place is released). Places held at once never exceed the bound, and
/// when nobody releases, exactly `min(spawners, bound)` get in.
fn admission_race(spawners: usize, bound: usize, releasers: usize) {
    let live = Arc::new(LiveCount::new(Some(bound)));
    // Ground truth beside the count under test: places held right now.
    let held = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..spawners)
        .map(|i| {
            let (live, held, admitted) = (live.clone(), held.clone(), admitted.clone());
            thread::spawn(move || {
                if live.try_admit() {
                    let now_held = held.fetch_add(1, AcqRel) + 1;
                    assert!(now_held <= bound, "{now_held} live tasks under a bound of {bound}");
                    admitted.fetch_add(1, AcqRel);
                    if i < releasers {
                        held.fetch_sub(1, AcqRel);
                        live.release();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let admitted = admitted.load(Acquire);
    if releasers == 0 {
        assert_eq!(admitted, spawners.min(bound), "a spawn was refused with room left, or let past the bound");
    }
    assert_eq!(live.get(), held.load(Acquire), "the count disagrees with the places held");
}

#[test]
fn live_count_two_spawners_bound_one() {
    explore("2 spawns under a bound of 1", None, || admission_race(2, 1, 0));
}

#[test]
fn live_count_two_spawners_bound_one_one_finishing() {
    explore("2 spawns under a bound of 1, one finishing", None, || admission_race(2, 1, 1));
}

#[test]
fn live_count_three_spawners_bound_two() {
    // Exhaustive takes minutes; bounded to 2 preemptions per execution.
    explore("3 spawns under a bound of 2 (preemption bound 2)", Some(2), || admission_race(3, 2, 0));
}

/// A worker gives back the places of two tasks it ended in one batch
/// (`release_many`) while two spawners try to get in under a bound of 2
/// that those two tasks fill: a spawner gets in only once the batch is
/// given back, the places held never exceed the bound, and the count ends
/// equal to the places held.
fn batched_release(spawners: usize) {
    let bound = 2;
    let live = Arc::new(LiveCount::new(Some(bound)));
    let held = Arc::new(AtomicUsize::new(0));
    for _ in 0..bound {
        assert!(live.try_admit());
        held.fetch_add(1, AcqRel);
    }
    let worker = {
        let (live, held) = (live.clone(), held.clone());
        thread::spawn(move || {
            // Both tasks end (their places are free in truth), then the
            // worker gives them back at once.
            held.fetch_sub(bound, AcqRel);
            live.release_many(bound);
        })
    };
    let threads: Vec<_> = (0..spawners)
        .map(|_| {
            let (live, held) = (live.clone(), held.clone());
            thread::spawn(move || {
                if live.try_admit() {
                    let now_held = held.fetch_add(1, AcqRel) + 1;
                    assert!(now_held <= bound, "{now_held} live tasks under a bound of {bound}");
                }
            })
        })
        .collect();
    worker.join().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(live.get(), held.load(Acquire), "the count disagrees with the places held");
}

#[test]
fn live_count_batched_release_two_spawners() {
    explore("a batch of 2 given back beside 2 spawns under a bound of 2", None, || batched_release(2));
}

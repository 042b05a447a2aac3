//! Spawned tasks and their join handles.
//!
//! # Layout
//!
//! A spawn of `future: F` makes one [`Task<F>`], allocated once as an
//! `Arc<Task<F>>`: the scheduling [`Header`] (id, name, priority, pool,
//! state, cancellation flag, wake stamp, registry shard), the slot where the
//! output waits for its [`JoinHandle`] (with the handle's waker), and the
//! future. Everything else refers to that allocation without allocating
//! again: the queues and the polling worker hold it
//! as a [`TaskRef`] (`Arc<dyn Schedulable>`, an unsized coercion), the
//! handle as an `Arc<dyn JoinTarget<T>>`, and a poll's waker is
//! `Waker::from(arc)` through [`Wake`] (a reference count, no allocation).
//! The live-task registry holds a `Weak` to it (see `registry`).
//!
//! The future itself is the one other allocation of a spawn: it sits in
//! `Pin<Box<F>>` inside the task. Polling needs `Pin<&mut F>`, and safe Rust
//! cannot project a pin through the shared `Arc` and the lock that guards
//! the future (`Pin::new_unchecked` would be the one line of `unsafe`, and
//! the workspace has none); a `Box` is pinned by construction. A spawn is
//! therefore two allocations, where it used to be three (a join slot of its
//! own, a boxed wrapper future around the user's, and the task).
//!
//! # Ending
//!
//! Every way a task ends goes through [`Schedulable::finish`]: the state
//! becomes COMPLETE (later wakes do nothing), the future is dropped, and a
//! handle still waiting gets `Cancelled` — after the future is dropped, and
//! even if dropping it panics. A poll that returns `Ready` or panics
//! (caught around each poll) delivers the output or the panic's message to
//! the handle first and then drops the future itself (under the lock that
//! poll holds), so `finish` finds the handle served and only marks the
//! task COMPLETE.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use kaelix_core::runtime::{JoinError, Priority, TaskHandle};

use super::metrics::WorkerMetrics;
use super::registry::Registered;
use super::state::TaskState;
use super::{Queued, Shared};

/// A task as the queues, and the workers hold it: the same
/// allocation as the typed [`Task<F>`], its future's type erased.
pub(crate) type TaskRef = Arc<dyn Schedulable>;

/// How a task's poll ended it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Finished,
    Panicked,
}

/// What the scheduler knows of a task, whatever its future's type.
pub(crate) struct Header {
    /// Unique within its executor (a worker hands out ids from blocks of
    /// its own, so they are not in spawn order across workers).
    pub(crate) id: u64,
    pub(crate) name: &'static str,
    pub(crate) priority: Priority,
    /// The pool (NUMA node) it was spawned on: where it is injected when
    /// woken from outside any worker.
    pub(crate) pool: usize,
    pub(crate) state: TaskState,
    pub(crate) cancelled: AtomicBool,
    /// Executor-clock nanoseconds of the wake that queued it, when that
    /// wake is one the wake-to-poll histogram samples; 0 otherwise (the
    /// poll that takes a stamp clears it).
    pub(crate) woken_at: AtomicU64,
    /// Its shard of the executor's live-task registry (the spawning
    /// thread's).
    pub(crate) registry_shard: usize,
    pub(crate) shared: Arc<Shared>,
}

impl Header {
    pub(crate) fn priority_index(&self) -> usize {
        self.priority as usize
    }
}

/// The scheduler's view of a [`Task<F>`] (object safe: it is used as
/// `dyn Schedulable`).
pub(crate) trait Schedulable: Send + Sync + 'static {
    fn header(&self) -> &Header;

    /// A waker for this task: the same allocation, one more reference.
    fn into_waker(self: Arc<Self>) -> Waker;

    /// Polls the future once, catching a panic. `Ready` means the outcome
    /// is recorded in `metrics` (the polling worker's) and then the output
    /// (or the panic's message) is with the handle, in that order, so a
    /// joiner that has the result also sees the completion in the
    /// executor's health; the caller then [`finish`](Schedulable::finish)es
    /// the task. Only the worker that moved the state to RUNNING may call it.
    fn poll_future(&self, cx: &mut Context<'_>, metrics: &WorkerMetrics) -> Poll<Outcome>;

    /// Ends the task (see the module docs, "Ending"): COMPLETE, future
    /// dropped, a handle still waiting gets `Cancelled`. Called by the
    /// polling worker, for a refused spawn, or by shutdown once the workers
    /// have stopped.
    fn finish(&self);
}

impl Registered for dyn Schedulable {
    fn has_ended(&self) -> bool {
        self.header().state.is_complete()
    }
}

/// The handle's view of a [`Task<F>`] whose output is `T`.
pub(crate) trait JoinTarget<T>: Schedulable {
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>>;
    fn is_finished(&self) -> bool;
}

/// One spawned task: header, future and output in one allocation (see the
/// module docs, "Layout").
pub(crate) struct Task<F: Future> {
    header: Header,
    /// Only the worker that moved the state to RUNNING touches it (and
    /// `finish`, once no worker can poll it): the lock is never contended.
    future: Mutex<Option<Pin<Box<F>>>>,
    join: Mutex<JoinSlot<F::Output>>,
    /// Set once the join slot has its result, so that `finish` after an
    /// output skips the lock (set under it; read without it only by the
    /// thread that set it or one that saw COMPLETE after it).
    join_served: AtomicBool,
}

/// Where a task's result waits for its handle.
struct JoinSlot<T> {
    result: Option<Result<T, JoinError>>,
    waker: Option<Waker>,
    finished: bool,
}

impl<F> Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    pub(crate) fn new(header: Header, future: F) -> Self {
        Task {
            header,
            future: Mutex::new(Some(Box::pin(future))),
            join: Mutex::new(JoinSlot { result: None, waker: None, finished: false }),
            join_served: AtomicBool::new(false),
        }
    }

    /// Hands `result` to the handle; a second call (the `Cancelled` of
    /// `finish` after an output) does nothing.
    fn complete_join(&self, result: Result<F::Output, JoinError>) {
        let mut join = self.join.lock().expect("join slot lock");
        if join.finished {
            return;
        }
        join.finished = true;
        join.result = Some(result);
        self.join_served.store(true, Ordering::Release);
        let waker = join.waker.take();
        drop(join);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Gives the handle `Cancelled` when dropped, so that it does so even if
/// dropping the future panics.
struct CancelJoin<'a, F>(&'a Task<F>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static;

impl<F> Drop for CancelJoin<'_, F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if self.0.join_served.load(Ordering::Acquire) {
            return; // the output (or the panic) is already with the handle
        }
        self.0.complete_join(Err(JoinError::Cancelled));
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

impl<F> Schedulable for Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn header(&self) -> &Header {
        &self.header
    }

    fn into_waker(self: Arc<Self>) -> Waker {
        Waker::from(self)
    }

    fn poll_future(&self, cx: &mut Context<'_>, metrics: &WorkerMetrics) -> Poll<Outcome> {
        let mut slot = self.future.lock().expect("task future lock");
        let Some(future) = slot.as_mut() else {
            unreachable!("a RUNNING task has its future until it completes");
        };
        let (result, outcome) = match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(output)) => (Ok(output), Outcome::Finished),
            Err(payload) => (Err(JoinError::Panicked(panic_message(payload))), Outcome::Panicked),
        };
        // Taken here, under the lock this poll already holds, so that
        // `finish` need not take it again (it skips the future once the
        // handle is served); dropped after the handle has its result, as
        // `finish` would (a panic in the drop leaves the handle served).
        let done = slot.take();
        drop(slot);
        metrics.record_outcome(outcome == Outcome::Finished);
        self.complete_join(result);
        drop(done);
        Poll::Ready(outcome)
    }

    fn finish(&self) {
        self.header.state.complete();
        if self.join_served.load(Ordering::Acquire) {
            // Served by a poll that returned `Ready`: that poll took the
            // future (`poll_future`); nothing else serves the handle
            // before the future is taken.
            return;
        }
        let future = self.future.lock().unwrap_or_else(PoisonError::into_inner).take();
        let _cancel = CancelJoin(self);
        drop(future);
    }
}

impl<F> JoinTarget<F::Output> for Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<F::Output, JoinError>> {
        let mut join = self.join.lock().expect("join slot lock");
        if let Some(result) = join.result.take() {
            return Poll::Ready(result);
        }
        assert!(!join.finished, "JoinHandle polled after it returned its result");
        match &mut join.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn is_finished(&self) -> bool {
        self.join.lock().expect("join slot lock").finished
    }
}

impl<F> Wake for Task<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.header.state.wake() {
            self.header.shared.schedule(self.clone(), Queued::Woken);
        }
    }
}

/// A handle to a task of the real executor. Dropping it detaches the task.
pub struct JoinHandle<T> {
    task: Arc<dyn JoinTarget<T>>,
}

impl<T: 'static> JoinHandle<T> {
    pub(crate) fn new(task: Arc<dyn JoinTarget<T>>) -> Self {
        JoinHandle { task }
    }

    /// Whether the task has finished (or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl<T: 'static> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header = self.task.header();
        f.debug_struct("JoinHandle").field("task", &header.name).field("id", &header.id).finish()
    }
}

impl<T: 'static> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.task.poll_join(cx)
    }
}

impl<T: Send + 'static> TaskHandle<T> for JoinHandle<T> {
    fn abort(&self) {
        let header = self.task.header();
        header.cancelled.store(true, Ordering::Release);
        if header.state.wake() {
            header.shared.schedule(self.task.clone(), Queued::Woken);
        }
    }
}

//! Spawned tasks and their join handles.
//!
//! # One task, two allocations
//!
//! A task is one `Arc<Task<TypedBody<F>>>`: the scheduling header (state,
//! priority, pool, …) and a typed body holding the future and the slot its
//! output waits in for the [`JoinHandle`]. The executor's queues see it as
//! `Arc<Task>` (`Task<dyn Body>`), the handle as `Arc<Task<dyn Join<T>>>`;
//! both are the same allocation, reached through unsizing coercions. The
//! future itself is boxed (`Pin<Box<F>>`): polling a future that lives
//! inline behind the body's lock would need an unsafe pin projection, and
//! this crate has no `unsafe`. So a spawn costs two allocations (it was
//! three: the task, the boxed future, the join slot).
//!
//! The task's waker is built once, at spawn, from the typed `Arc` (a
//! `Waker` needs a sized `Wake` type) and kept beside the future. The
//! waker holds the task, so the two form a cycle that is broken when the
//! future is dropped — on completion, on cancellation, at shutdown — which
//! every path that ends a task does ([`Body::drop_future`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use kaelix_core::runtime::{JoinError, Priority, TaskHandle};

use super::Shared;
use super::state::TaskState;

/// How a task's future ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Finished,
    Panicked,
}

/// One spawned task: the header every part of the executor reads, then
/// its typed body (`B` is `dyn Body` wherever the type is erased).
pub(crate) struct Task<B: ?Sized = dyn Body> {
    pub(crate) id: u64,
    pub(crate) name: &'static str,
    pub(crate) priority: Priority,
    /// The pool (NUMA node) it was spawned on: where it is injected when
    /// woken from outside any worker.
    pub(crate) pool: usize,
    pub(crate) state: TaskState,
    pub(crate) cancelled: AtomicBool,
    /// Executor-clock nanoseconds of the wake that queued it (wake-to-poll).
    pub(crate) woken_at: AtomicU64,
    /// Its slot in the executor's live-task registry.
    pub(crate) live_slot: AtomicUsize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) body: B,
}

impl<B: ?Sized> Task<B> {
    pub(crate) fn priority_index(&self) -> usize {
        self.priority as usize
    }
}

/// The type-erased body the executor polls.
pub(crate) trait Body: Send + Sync {
    /// Polls the future once; only the worker that moved the state to
    /// RUNNING calls it. On `Ready` the output (or the panic) is already in
    /// the join slot; the future stays until [`Body::drop_future`].
    fn poll(&self) -> Poll<Outcome>;

    /// Drops the future and its waker (call after `state.complete()`, so
    /// that a wake from the future's destructor finds the task complete);
    /// a handle still waiting then gets `Cancelled`. Idempotent.
    fn drop_future(&self);
}

/// The body's half the [`JoinHandle`] reads.
pub(crate) trait Join<T>: Body {
    fn poll_join(&self, cx: &mut Context<'_>) -> Poll<Result<T, JoinError>>;
    fn is_finished(&self) -> bool;
}

/// The future with the waker that schedules its task.
struct Running<F> {
    future: Pin<Box<F>>,
    waker: Waker,
}

/// A task's typed body.
pub(crate) struct TypedBody<F: Future> {
    /// `None` before spawn installs it and after the task ended. Only the
    /// polling worker (or shutdown, after the workers stopped) locks it:
    /// the lock is never contended.
    running: Mutex<Option<Running<F>>>,
    join: Mutex<JoinSlot<F::Output>>,
}

/// Where a task's result waits for its handle.
struct JoinSlot<T> {
    result: Option<Result<T, JoinError>>,
    waker: Option<Waker>,
    finished: bool,
}

impl<F: Future> TypedBody<F> {
    fn complete(&self, result: Result<F::Output, JoinError>) {
        let mut join = self.join.lock().expect("join slot lock");
        if join.finished {
            return;
        }
        join.finished = true;
        join.result = Some(result);
        let waker = join.waker.take();
        drop(join);
        if let Some(w) = waker {
            w.wake();
        }
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

impl<F> Body for TypedBody<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn poll(&self) -> Poll<Outcome> {
        let mut running = self.running.lock().expect("task future lock");
        let Some(Running { future, waker }) = running.as_mut() else {
            unreachable!("a RUNNING task has its future until it completes");
        };
        let mut cx = Context::from_waker(waker);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        drop(running);
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                self.complete(Ok(output));
                Poll::Ready(Outcome::Finished)
            }
            Err(payload) => {
                self.complete(Err(JoinError::Panicked(panic_message(payload))));
                Poll::Ready(Outcome::Panicked)
            }
        }
    }

    fn drop_future(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(running);
        self.complete(Err(JoinError::Cancelled));
    }
}

impl<F> Join<F::Output> for TypedBody<F>
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

impl<F> Wake for Task<TypedBody<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.wake() {
            self.shared.schedule(self.clone(), true);
        }
    }
}

/// A new task's header fields (everything but the body).
pub(crate) struct Header {
    pub(crate) id: u64,
    pub(crate) name: &'static str,
    pub(crate) priority: Priority,
    pub(crate) pool: usize,
    pub(crate) woken_at: u64,
    pub(crate) shared: Arc<Shared>,
}

/// Builds the task for `future` (SCHEDULED, not yet queued) and its handle.
pub(crate) fn new_task<F>(header: Header, future: F) -> (Arc<Task>, JoinHandle<F::Output>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = Arc::new(Task {
        id: header.id,
        name: header.name,
        priority: header.priority,
        pool: header.pool,
        state: TaskState::new_scheduled(),
        cancelled: AtomicBool::new(false),
        woken_at: AtomicU64::new(header.woken_at),
        live_slot: AtomicUsize::new(usize::MAX),
        shared: header.shared,
        body: TypedBody {
            running: Mutex::new(None),
            join: Mutex::new(JoinSlot { result: None, waker: None, finished: false }),
        },
    });
    let waker = Waker::from(task.clone());
    *task.body.running.lock().expect("task future lock") = Some(Running { future: Box::pin(future), waker });
    let handle = JoinHandle { task: task.clone() };
    (task, handle)
}

/// A handle to a task of the real executor. Dropping it detaches the task.
pub struct JoinHandle<T> {
    task: Arc<Task<dyn Join<T>>>,
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle").field("task", &self.task.name).field("id", &self.task.id).finish()
    }
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished (or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.task.body.is_finished()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.task.body.poll_join(cx)
    }
}

impl<T: Send + 'static> TaskHandle<T> for JoinHandle<T> {
    fn abort(&self) {
        self.task.cancelled.store(true, Ordering::Release);
        if self.task.state.wake() {
            let task: Arc<Task> = self.task.clone();
            self.task.shared.schedule(task, true);
        }
    }
}

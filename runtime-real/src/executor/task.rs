//! Spawned tasks and their join handles.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::FutureExt;
use kaelix_core::runtime::{JoinError, Priority, TaskHandle};

use super::Shared;
use super::state::TaskState;

/// A task's future, type-erased; its output says whether it panicked.
pub(crate) type TaskFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// How a task's future ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Finished,
    Panicked,
}

/// One spawned task.
pub(crate) struct Task {
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
    pub(crate) live_slot: std::sync::atomic::AtomicUsize,
    /// Only the worker that moved the state to RUNNING touches it (and
    /// shutdown, after workers stopped): the lock is never contended.
    pub(crate) future: Mutex<Option<TaskFuture>>,
    pub(crate) shared: Arc<Shared>,
}

impl Task {
    pub(crate) fn priority_index(&self) -> usize {
        self.priority as usize
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.state.wake() {
            self.shared.schedule(self.clone(), true);
        }
    }
}

/// Where a task's result waits for its handle.
struct JoinSlot<T> {
    inner: Mutex<JoinInner<T>>,
}

struct JoinInner<T> {
    result: Option<Result<T, JoinError>>,
    waker: Option<Waker>,
    finished: bool,
}

impl<T> JoinSlot<T> {
    fn complete(&self, result: Result<T, JoinError>) {
        let mut inner = self.inner.lock().expect("join slot lock");
        if inner.finished {
            return;
        }
        inner.finished = true;
        inner.result = Some(result);
        let waker = inner.waker.take();
        drop(inner);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Completes the slot with `Cancelled` if the future is dropped unfinished.
struct CompletionGuard<T> {
    slot: Arc<JoinSlot<T>>,
}

impl<T> Drop for CompletionGuard<T> {
    fn drop(&mut self) {
        self.slot.complete(Err(JoinError::Cancelled));
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

/// Wraps `future` so that its output (or panic) lands in a slot; returns
/// the erased future and the handle's half.
pub(crate) fn wrap<F>(future: F) -> (TaskFuture, JoinHandleParts<F::Output>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let slot = Arc::new(JoinSlot { inner: Mutex::new(JoinInner { result: None, waker: None, finished: false }) });
    let guard = CompletionGuard { slot: slot.clone() };
    let erased = async move {
        let guard = guard;
        match AssertUnwindSafe(future).catch_unwind().await {
            Ok(v) => {
                guard.slot.complete(Ok(v));
                Outcome::Finished
            }
            Err(payload) => {
                guard.slot.complete(Err(JoinError::Panicked(panic_message(payload))));
                Outcome::Panicked
            }
        }
    };
    (Box::pin(erased), JoinHandleParts { slot })
}

/// The handle's half of [`wrap`], completed into a [`JoinHandle`] once the
/// task exists.
pub(crate) struct JoinHandleParts<T> {
    slot: Arc<JoinSlot<T>>,
}

impl<T> JoinHandleParts<T> {
    pub(crate) fn into_handle(self, task: Arc<Task>) -> JoinHandle<T> {
        JoinHandle { slot: self.slot, task }
    }
}

/// A handle to a task of the real executor. Dropping it detaches the task.
pub struct JoinHandle<T> {
    slot: Arc<JoinSlot<T>>,
    task: Arc<Task>,
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle").field("task", &self.task.name).field("id", &self.task.id).finish()
    }
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished (or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.slot.inner.lock().expect("join slot lock").finished
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.slot.inner.lock().expect("join slot lock");
        if let Some(result) = inner.result.take() {
            return Poll::Ready(result);
        }
        assert!(!inner.finished, "JoinHandle polled after it returned its result");
        match &mut inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T: Send + 'static> TaskHandle<T> for JoinHandle<T> {
    fn abort(&self) {
        self.task.cancelled.store(true, Ordering::Release);
        if self.task.state.wake() {
            self.task.shared.schedule(self.task.clone(), true);
        }
    }
}

//! A small pool of OS threads for blocking work (file IO, `fsync`), so
//! executor workers never wait on the disk.
//!
//! # Model
//!
//! [`BlockingPool::run`] queues a closure on a FIFO queue (a `Mutex<VecDeque>`
//! and a `Condvar`) and returns a future of its result, delivered through a
//! `futures_channel::oneshot`. The job is queued **when `run` is called**, not
//! when the future is first polled, and it runs to completion even if the
//! future is dropped: storage relies on that (an append reserves its offset
//! at call time and must then write it).
//!
//! Threads start lazily, one whenever a job is queued and more jobs wait
//! than threads are idle, up to the bound given to [`BlockingPool::new`];
//! they then live until shutdown. Jobs run concurrently up to that bound.
//!
//! # Panics
//!
//! A panicking job does not kill its thread: the panic is caught there and
//! **resumed in the task awaiting the job's future**, as if the closure had
//! run inline, so the executor reports it like any other task panic.
//!
//! # Shutdown
//!
//! [`BlockingPool::shutdown`] (also run when the last handle is dropped)
//! refuses new jobs, lets the queued ones finish, and joins the threads.
//! Awaiting a job submitted after shutdown panics: that is a lifecycle bug
//! in the caller, and there is no value of `T` to return.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "the blocking pool is where the real runtime owns OS threads"
)]

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use futures_channel::oneshot;

/// A queued unit of blocking work (already wrapped to report its result).
type Job = Box<dyn FnOnce() + Send + 'static>;

/// What a job sends back: its value, or the payload of its panic.
type JobResult<T> = thread::Result<T>;

/// A cloneable handle to a bounded pool of threads for blocking work. See the
/// module docs for the queueing, panic and shutdown model.
#[derive(Clone)]
pub struct BlockingPool {
    handle: Arc<PoolHandle>,
}

/// Shuts the pool down when the last [`BlockingPool`] clone goes away.
/// Worker threads hold only [`Shared`], so they do not keep it alive.
struct PoolHandle {
    shared: Arc<Shared>,
}

/// State shared by the handles and the worker threads.
struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is queued or shutdown starts.
    work_available: Condvar,
    max_threads: usize,
    name_prefix: String,
}

struct State {
    jobs: VecDeque<Job>,
    /// Workers blocked on `work_available`.
    idle: usize,
    /// Workers started so far (never more than `max_threads`).
    started: usize,
    threads: Vec<JoinHandle<()>>,
    shutting_down: bool,
}

impl BlockingPool {
    /// A pool of at most `threads` threads (at least one), named
    /// `{name_prefix}-{n}`. Threads start lazily, on demand.
    pub fn new(threads: usize, name_prefix: &str) -> BlockingPool {
        let shared = Shared {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                idle: 0,
                started: 0,
                threads: Vec::new(),
                shutting_down: false,
            }),
            work_available: Condvar::new(),
            max_threads: threads.max(1),
            name_prefix: name_prefix.to_owned(),
        };
        BlockingPool { handle: Arc::new(PoolHandle { shared: Arc::new(shared) }) }
    }

    /// Runs `f` on a pool thread; the future yields its result. The job is
    /// queued now and runs even if the future is dropped. If `f` panics, the
    /// panic resumes in the task awaiting the future.
    ///
    /// # Panics
    ///
    /// Awaiting the future panics if the pool was shut down before `run`.
    pub fn run<F, T>(&self, f: F) -> impl Future<Output = T> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (result_tx, result_rx) = oneshot::channel::<JobResult<T>>();
        let job: Job = Box::new(move || {
            let result = panic::catch_unwind(AssertUnwindSafe(f));
            // The awaiting future may have been dropped; nobody wants the value then.
            let _ = result_tx.send(result);
        });
        // Refused after shutdown: the job (and its sender) is dropped here, so
        // the receiver below reports cancellation.
        self.handle.shared.submit(job);
        async move {
            match result_rx.await {
                Ok(Ok(value)) => value,
                Ok(Err(panic_payload)) => panic::resume_unwind(panic_payload),
                Err(oneshot::Canceled) => panic!("blocking pool job submitted after shutdown"),
            }
        }
    }

    /// Refuses new jobs, lets queued jobs finish and joins the threads.
    /// Idempotent. Called from a pool thread (a job dropping the last
    /// handle), that thread is left to exit on its own.
    pub fn shutdown(&self) {
        self.handle.shared.shutdown();
    }

    /// The most threads this pool runs at once.
    pub fn max_threads(&self) -> usize {
        self.handle.shared.max_threads
    }
}

impl fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("BlockingPool")
            .field("name_prefix", &shared.name_prefix)
            .field("max_threads", &shared.max_threads)
            .finish_non_exhaustive()
    }
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock and catch their panics, so poisoning
        // cannot leave the queue half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn submit(self: &Arc<Self>, job: Job) {
        let mut state = self.lock();
        if state.shutting_down {
            return;
        }
        state.jobs.push_back(job);
        // `idle` only drops when a woken worker re-takes the lock, so jobs
        // queued faster than workers wake still start new threads.
        if state.jobs.len() > state.idle && state.started < self.max_threads {
            self.start_worker(&mut state);
        }
        self.work_available.notify_one();
    }

    fn start_worker(self: &Arc<Self>, state: &mut State) {
        let shared = Arc::clone(self);
        let name = format!("{}-{}", self.name_prefix, state.started);
        match thread::Builder::new().name(name).spawn(move || shared.work()) {
            Ok(thread) => {
                state.started += 1;
                state.threads.push(thread);
            }
            // Running threads will drain the queue; with none, jobs would wait forever.
            Err(e) if state.started == 0 => panic!("cannot start a blocking-pool thread: {e}"),
            Err(_) => {}
        }
    }

    /// A worker's loop: take the oldest job, run it, repeat; exit once
    /// shutdown has started and the queue is empty.
    fn work(&self) {
        loop {
            let job = {
                let mut state = self.lock();
                loop {
                    if let Some(job) = state.jobs.pop_front() {
                        break job;
                    }
                    if state.shutting_down {
                        return;
                    }
                    state.idle += 1;
                    state = self.work_available.wait(state).unwrap_or_else(PoisonError::into_inner);
                    state.idle -= 1;
                }
            };
            job();
        }
    }

    fn shutdown(&self) {
        let threads = {
            let mut state = self.lock();
            state.shutting_down = true;
            std::mem::take(&mut state.threads)
        };
        self.work_available.notify_all();
        let me = thread::current().id();
        for thread in threads {
            if thread.thread().id() != me {
                // Jobs catch their panics, so a worker never ends in one.
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;

    use super::*;

    /// Wakes the thread blocked in [`block_on`].
    struct ThreadWaker(thread::Thread);

    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    /// Drives `future` to completion on the calling thread (futures-util is
    /// built without its executor).
    pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(out) => return out,
                Poll::Pending => thread::park(),
            }
        }
    }

    #[test]
    fn results_come_back() {
        let pool = BlockingPool::new(2, "test-results");
        let pending: Vec<_> = (0..20u64).map(|i| pool.run(move || i * i)).collect();
        let got: Vec<u64> = pending.into_iter().map(block_on).collect();
        assert_eq!(got, (0..20u64).map(|i| i * i).collect::<Vec<_>>());
        assert_eq!(block_on(pool.run(|| String::from("owned"))), "owned");
    }

    #[test]
    fn jobs_run_concurrently_up_to_the_thread_count() {
        const THREADS: usize = 3;
        struct Gauge {
            active: AtomicUsize,
            peak: AtomicUsize,
            arrived: Mutex<usize>,
            all_arrived: Condvar,
        }
        let gauge = Arc::new(Gauge {
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            arrived: Mutex::new(0),
            all_arrived: Condvar::new(),
        });
        let pool = BlockingPool::new(THREADS, "test-concurrency");
        let pending: Vec<_> = (0..4 * THREADS)
            .map(|_| {
                let gauge = Arc::clone(&gauge);
                pool.run(move || {
                    let now_active = gauge.active.fetch_add(1, Ordering::SeqCst) + 1;
                    gauge.peak.fetch_max(now_active, Ordering::SeqCst);
                    // The first THREADS jobs only all get here if they run at once.
                    let mut arrived = gauge.arrived.lock().unwrap();
                    *arrived += 1;
                    gauge.all_arrived.notify_all();
                    let (arrived, timeout) = gauge
                        .all_arrived
                        .wait_timeout_while(arrived, Duration::from_secs(10), |n| *n < THREADS)
                        .unwrap();
                    drop(arrived);
                    thread::sleep(Duration::from_millis(2));
                    gauge.active.fetch_sub(1, Ordering::SeqCst);
                    !timeout.timed_out()
                })
            })
            .collect();
        for met in pending.into_iter().map(block_on) {
            assert!(met, "jobs did not run {THREADS} at a time");
        }
        assert_eq!(gauge.peak.load(Ordering::SeqCst), THREADS);
        assert_eq!(pool.handle.shared.lock().started, THREADS);
    }

    #[test]
    fn a_panicking_job_resumes_in_the_awaiter_and_the_pool_survives() {
        let pool = BlockingPool::new(1, "test-panic");
        let failing = pool.run(|| -> u32 { panic!("job failed on purpose") });
        let caught = panic::catch_unwind(AssertUnwindSafe(|| block_on(failing)));
        let payload = caught.expect_err("the panic reached the awaiter");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"job failed on purpose"));
        // The single thread is still there and still takes jobs.
        assert_eq!(block_on(pool.run(|| 7)), 7);
        assert_eq!(pool.handle.shared.lock().started, 1);
    }

    #[test]
    fn shutdown_finishes_queued_jobs_then_refuses_new_ones() {
        let pool = BlockingPool::new(1, "test-shutdown");
        let done = Arc::new(AtomicUsize::new(0));
        let pending: Vec<_> = (0..10)
            .map(|_| {
                let done = Arc::clone(&done);
                pool.run(move || {
                    thread::sleep(Duration::from_millis(1));
                    done.fetch_add(1, Ordering::SeqCst)
                })
            })
            .collect();
        pool.shutdown();
        assert_eq!(done.load(Ordering::SeqCst), 10, "shutdown returned before the queue drained");
        assert!(pool.handle.shared.lock().threads.is_empty());
        for job in pending {
            block_on(job);
        }
        let late = pool.run(|| ());
        assert!(panic::catch_unwind(AssertUnwindSafe(|| block_on(late))).is_err());
    }

    #[test]
    fn dropping_the_last_handle_joins_the_threads() {
        let pool = BlockingPool::new(2, "test-drop");
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            let done = Arc::clone(&done);
            drop(pool.run(move || done.fetch_add(1, Ordering::SeqCst)));
        }
        let clone = pool.clone();
        drop(pool);
        assert_eq!(block_on(clone.run(|| 1)), 1, "a clone keeps the pool alive");
        drop(clone);
        assert_eq!(done.load(Ordering::SeqCst), 4);
    }
}

//! The priority executor: pools of pinned workers per NUMA node.
//!
//! # Queues
//!
//! Every worker owns four lock-free deques (crossbeam's Chase-Lev), one per
//! [`Priority`]; every pool (NUMA node) has four lock-free injectors for
//! tasks woken or spawned from outside its workers. A wake on a worker
//! pushes to that worker's own deque (the task's data is warm in its
//! cache); any other wake goes to the injector of the task's home pool.
//! A push to a worker's own deque unparks another worker only if the deque
//! then holds a backlog (more than the one task the worker runs next); a
//! task requeued after waking itself during its poll (a yield) is the
//! worker's own continuation and counts as a backlog only behind tasks
//! that were queued before that poll began (see [`Shared::schedule`]).
//!
//! A task is one allocation shared by everything that refers to it — the
//! queues, its wakers and its handle, and weakly the live-task registry —
//! plus the box that pins its future (see the `task` module's docs,
//! "Layout").
//!
//! # The spawn and poll paths
//!
//! What a spawn, a wake and a poll touch is kept to the worker's own cache
//! lines where it can be (measured in `benches/RESULTS.md`, "Spawn cost"):
//! the registry shard a spawn locks is the spawning worker's own, and
//! ending a task does not touch it (see [`registry`]); the worker's
//! counters have one writer and lines of their own (see [`metrics`]); the
//! precise clock is read only for a sampled wake-to-poll stamp and when a
//! pool's injector holds work (to decide whether it is due first), the
//! stall detector's poll stamp is the coarse clock; an empty queue of
//! another worker is seen as empty without pinning the deque's epoch.
//!
//! # Choosing the next task
//!
//! Tiers are tried highest first; within a tier: own deque, own pool's
//! injector, siblings in the same pool, then other pools (their injectors,
//! then their workers) — stealing crosses a NUMA boundary only when the
//! local node has nothing of that tier. Deques are FIFO, so a task that
//! wakes itself goes behind the others, and every 31st pick — or the first
//! pick 50 µs after the last such — serves the injector before the own
//! deque, so outside wakes are not starved by a worker that keeps feeding
//! itself. Starvation bound: every
//! `starvation_bound`-th pick starts from one lower tier instead (rotating
//! High, Normal, Background), so a tier with work waits at most
//! 3 × `starvation_bound` picks of higher tiers.
//!
//! # Parking
//!
//! A worker that has just run a task and finds no more may first spin for
//! `idle_spin` (the seed's `target_latency_us`), looking at every queue
//! between `spin_loop` hints, so that a wake within that window is served
//! without a futex wake-up. While a worker spins, publishers unpark
//! nobody: the spinner takes the work (see [`idle`] for why that loses no
//! wake-up), and a worker back from a spin or a park with a task wakes one
//! more if work is still queued. At most half the workers (at least one)
//! spin at a time, and only after running a task: an executor without work
//! parks every worker and uses no CPU, and a worker woken for work another
//! took parks again at once. Past the window the worker parks (see
//! [`idle`]); publishing work unparks one parked worker when none spins.
//!
//! Why the spin first measured as useless (`benches/RESULTS.md`, "Idle
//! wake-to-poll"): the benchmark's wakes came 130 µs or more apart, not
//! the 20 µs it names (its waking thread's sleeps overran by the 50 µs
//! timer slack), so a 50 µs window expired before nearly every wake — 10
//! of 10 000 were caught — and every wake still unparked a worker. The
//! code also let a publisher unpark a parked worker while another spun (it
//! woke for nothing, then spun in turn); that run rarely hit it, as the
//! spin seldom overlapped a wake. With the gap measured, a window
//! longer than it catches most wakes (the executor's own counters: spin
//! hits against parks) and the P50 falls (about 22 µs to 1–9 µs). It
//! stays off by default: on the shared 2-core VM it was measured on (load
//! average 4 to 10 from other builds), the P99 rose instead, to about 4 ms
//! — one scheduler tick (HZ 250), as if a spinning pinned worker once
//! preempted waits for the tick where a woken parked one preempts at once
//! (not traced) — and a spinner whose window outlasts the gap between
//! wakes keeps a core busy.
//! No window met a P99 under 10 µs there; a quiet machine with a spare
//! core was not measured.
//!
//! Priorities: [`ExecutorConfig::priority_levels`] keeps the first N tiers
//! apart and folds the lower priorities into the last kept one (1: one
//! FIFO tier for everything). Pools: one per NUMA node, or one over the
//! whole machine when [`ExecutorConfig::numa_aware`] is off.
//!
//! # Bounded queues
//!
//! A task sits in at most one queue at a time (its state machine admits one
//! wake-up per poll), so the live tasks bound what every queue holds
//! together. [`ExecutorConfig::max_live_tasks`] (the seed's
//! `task_queue_depth`) is that bound: a spawn that finds it reached is
//! refused — its future is dropped unpolled, its handle yields
//! [`JoinError::Cancelled`](kaelix_core::runtime::JoinError), the refusal
//! is counted ([`ExecutorHandle::spawns_refused`], exported as
//! `kaelix_executor_spawns_refused_total`) and logged at most once a
//! second. Wake-ups are never refused: a task already admitted always runs
//! again. A server whose accept loop is refused a connection task thus
//! closes that connection and goes on serving the others. A worker gives
//! back the places of the tasks it ends in small batches, all before it
//! idles (see [`admission`]): while workers are busy the count, and
//! [`ExecutorHandle::live_tasks`], may run ahead of the tasks really live
//! by a few dozen per worker, so a spawn may be refused that much early,
//! never admitted past the bound.
//!
//! # Shutdown
//!
//! [`Executor::shutdown`] stops accepting spawns (later spawns are
//! cancelled at once), waits up to a grace period for live tasks to finish,
//! cancels the rest (their futures are dropped, their handles yield
//! `Cancelled`) and reports their names, then stops and joins the workers
//! and the driver.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // threads and the OS clock are this module's job

pub mod admission;
pub mod idle;
pub mod metrics;
mod registry;
pub mod state;
mod task;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use crossbeam_deque::{Injector, Steal, Stealer, Worker as Deque};
use kaelix_core::runtime::{Priority, SpawnRefused};
use kaelix_core::time::Duration;

use self::idle::Sleepers;
use self::metrics::{HealthStatus, LatencyHistogram, WAKE_SAMPLE_INTERVAL, WorkerMetrics, WorkerSnapshot, bump};
use self::registry::{LiveTasks, Padded};
use self::state::AfterPoll;
pub use self::task::JoinHandle;
use self::task::{Header, Schedulable, Task, TaskRef};
use crate::driver::Driver;
use crate::topology::Topology;

const TIERS: usize = Priority::ALL.len();
/// How often (in picks) a worker serves its pool's injector before its own deque.
const INJECTOR_INTERVAL: u32 = 31;
/// ... and at least this often in time, so that outside wakes wait for one
/// poll at most, not 31 long ones.
const INJECTOR_MAX_WAIT_NANOS: u64 = 50_000;

/// How to build an [`Executor`].
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Workers per NUMA node; `None`: one per CPU of the node.
    pub workers_per_node: Option<usize>,
    /// Cap on the total number of workers (at least one per pool remains).
    pub max_workers: Option<usize>,
    /// Stack size of each worker thread.
    pub stack_size: usize,
    /// Pin each worker to one CPU of its node.
    pub pin_workers: bool,
    /// See the module docs: how often a lower tier is served first.
    pub starvation_bound: u32,
    /// A poll running longer than this makes its worker Unhealthy.
    pub stall_threshold: Duration,
    /// How long a worker that ran out of work keeps looking before it parks
    /// (the seed's `target_latency_us`; see the module docs). Zero (the
    /// default) parks at once. The cost: after each burst of work one
    /// worker burns up to this much CPU; an executor with no work uses none.
    pub idle_spin: Duration,
    /// Thread name prefix.
    pub name: String,
    /// The machine's layout; `None`: detect it.
    pub topology: Option<Topology>,
    /// One pool per NUMA node (true), or one pool over every CPU of the
    /// machine, as if it had a single node (false).
    pub numa_aware: bool,
    /// How many of the four [`Priority`] tiers are kept apart (1 to 4): a
    /// task of a lower priority runs in the lowest kept tier, so 1 means
    /// first come, first served for everything.
    pub priority_levels: usize,
    /// The most live tasks (spawned, not yet finished or cancelled) the
    /// executor holds; see the module docs ("Bounded queues"). `None`: no
    /// bound.
    pub max_live_tasks: Option<usize>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            workers_per_node: None,
            max_workers: None,
            stack_size: 2 << 20,
            pin_workers: true,
            starvation_bound: 32,
            stall_threshold: Duration::from_secs(1),
            idle_spin: Duration::ZERO,
            name: "kaelix".to_owned(),
            topology: None,
            numa_aware: true,
            priority_levels: TIERS,
            max_live_tasks: None,
        }
    }
}

/// The seed's `RuntimeConfig`: the executor's settings as an operator
/// states them (`[runtime]` in `kaelix serve`'s configuration). Everything
/// else in [`ExecutorConfig`] keeps its default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Worker threads in all; `None`: one per CPU.
    pub worker_threads: Option<usize>,
    /// The most live tasks, each queued at most once, so also the most
    /// queued ones ([`ExecutorConfig::max_live_tasks`]).
    pub task_queue_depth: usize,
    /// How long an idle worker keeps looking for work before it parks, in
    /// microseconds ([`ExecutorConfig::idle_spin`]).
    pub target_latency_us: u64,
    /// Pools per NUMA node ([`ExecutorConfig::numa_aware`]).
    pub numa_aware: bool,
    /// Priority tiers kept apart, 1 to 4 ([`ExecutorConfig::priority_levels`]).
    pub priority_levels: usize,
}

impl RuntimeConfig {
    /// The default bound on live tasks: a million NATS subscriptions (a
    /// task each) fit four times over, and a runaway spawner is stopped
    /// before its tasks exhaust memory (a parked task with a small future is
    /// a few hundred bytes).
    pub const DEFAULT_TASK_QUEUE_DEPTH: usize = 1 << 22;
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            worker_threads: None,
            task_queue_depth: Self::DEFAULT_TASK_QUEUE_DEPTH,
            target_latency_us: 0,
            numa_aware: true,
            priority_levels: TIERS,
        }
    }
}

impl From<&RuntimeConfig> for ExecutorConfig {
    fn from(runtime: &RuntimeConfig) -> Self {
        assert!(
            (1..=TIERS).contains(&runtime.priority_levels),
            "priority_levels must be 1 to {TIERS}, not {}",
            runtime.priority_levels
        );
        assert!(runtime.task_queue_depth >= 1, "task_queue_depth must be at least 1");
        ExecutorConfig {
            max_workers: runtime.worker_threads,
            max_live_tasks: Some(runtime.task_queue_depth),
            idle_spin: Duration::from_micros(runtime.target_latency_us),
            numa_aware: runtime.numa_aware,
            priority_levels: runtime.priority_levels,
            ..ExecutorConfig::default()
        }
    }
}

/// What a shutdown did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Tasks that finished by themselves during the grace period.
    pub finished_in_grace: usize,
    /// Names of the tasks cancelled at the deadline (sorted).
    pub cancelled: Vec<&'static str>,
}

struct Pool {
    numa_node: usize,
    workers: Vec<usize>,
    injectors: [Injector<TaskRef>; TIERS],
}

struct WorkerSlot {
    pool: usize,
    cpu: Option<usize>,
    stealers: [Stealer<TaskRef>; TIERS],
    thread: OnceLock<Thread>,
    /// Written by this slot's worker only; on lines of their own, apart
    /// from the stealers and thread handle other workers read.
    metrics: Padded<WorkerMetrics>,
}

pub(crate) struct Shared {
    id: u64,
    pools: Vec<Pool>,
    workers: Vec<WorkerSlot>,
    // The atomics every spawn or completion writes, each on lines of its
    // own: next to the `Arc`'s reference count (the allocation's first
    // line) or to what the workers read, every write would also evict
    // those from the other cores.
    /// Parked and spinning workers (see [`idle`]).
    sleepers: Padded<Sleepers>,
    live: LiveTasks<dyn Schedulable>,
    live_count: Padded<admission::LiveCount>,
    next_task: Padded<AtomicU64>,
    next_pool: AtomicUsize,
    stopping: AtomicBool,
    /// Spawns refused at `config.max_live_tasks`.
    spawns_refused: AtomicU64,
    /// Executor-clock nanoseconds of the last refusal logged (0: none).
    refusal_logged_at: AtomicU64,
    config: ExecutorConfig,
    pub(crate) driver: Arc<Driver>,
}

/// Why a task is queued (see [`Shared::schedule`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// A new task.
    Spawned,
    /// A wake from its waker (or an abort).
    Woken,
    /// Its poll returned `Pending` after it woke itself during the poll (a
    /// yield): the worker that polled it requeues it.
    Yielded,
    /// Shutdown's cancellation: not a wake the histogram samples.
    Unsampled,
}

thread_local! {
    /// The deques of the worker running on this thread, if any.
    static LOCAL: RefCell<Option<LocalWorker>> = const { RefCell::new(None) };
}

struct LocalWorker {
    executor: u64,
    index: usize,
    deques: [Deque<TaskRef>; TIERS],
    /// Wakes and spawns on this worker until the next one is stamped for
    /// the wake-to-poll histogram (see [`metrics`]).
    until_sample: Cell<u32>,
    /// Tasks left in the deques when the task being polled was picked.
    queued_at_pick: Cell<usize>,
    /// Task ids this worker hands out before it takes another block from
    /// the executor's counter: the next one, and the end of the block.
    ids: Cell<(u64, u64)>,
}

/// Task ids a worker takes from the executor's counter at once, so that a
/// spawn on a worker writes no shared line for its id.
const ID_BLOCK: u64 = 1024;

static NEXT_EXECUTOR: AtomicU64 = AtomicU64::new(1);

impl Shared {
    fn now_nanos(&self) -> u64 {
        self.driver.now_nanos()
    }

    /// Queues a task that is SCHEDULED (spawned, woken, or requeued after a
    /// poll during which it woke itself); `why` says which, for the
    /// wake-to-poll sample and the unpark decision.
    pub(crate) fn schedule(&self, task: TaskRef, why: Queued) {
        LOCAL.with(|local| self.schedule_on(local.borrow().as_ref().filter(|w| w.executor == self.id), task, why));
    }

    /// [`Shared::schedule`] from `local`, the worker of this executor
    /// running on this thread (`None`: any other thread).
    fn schedule_on(&self, local: Option<&LocalWorker>, task: TaskRef, why: Queued) {
        let tier = task.header().priority_index();
        let sampled = why != Queued::Unsampled;
        // On one of our workers: its own deque. That worker runs the task
        // next unless it already has a backlog, so only then is a parked
        // worker worth an unpark (a futex syscall on the waker's path, and
        // a woken worker that finds the task already taken parks again).
        let (task, backlog) = match local {
            Some(w) => {
                if sampled {
                    let left = w.until_sample.get();
                    if left == 0 {
                        task.header().woken_at.store(self.now_nanos().max(1), Ordering::Relaxed);
                        w.until_sample.set(WAKE_SAMPLE_INTERVAL - 1);
                    } else {
                        w.until_sample.set(left - 1);
                    }
                }
                w.deques[tier].push(task);
                let backlog = match why {
                    // A yield is the worker's own continuation: the worker
                    // was busy with it and stays as busy. It counts as a
                    // backlog only behind tasks that were already queued
                    // when this poll began (those did not get a worker of
                    // their own either); the tasks this poll woke had their
                    // own wake decide, and counting them would unpark a
                    // worker on every wake-and-yield, in front of the woken
                    // task (`benches/RESULTS.md`, "Task to task latency").
                    Queued::Yielded => w.queued_at_pick.get() + 1,
                    _ => w.deques.iter().map(|d| d.len()).sum::<usize>(),
                };
                (None, backlog)
            }
            None => (Some(task), usize::MAX),
        };
        if let Some(task) = task {
            debug_assert!(why != Queued::Yielded, "a yield is requeued by the worker that polled it");
            if sampled {
                task.header().woken_at.store(self.now_nanos().max(1), Ordering::Relaxed);
            }
            self.pools[task.header().pool].injectors[tier].push(task);
        }
        if backlog > 1 {
            self.notify_one();
        }
    }

    fn notify_one(&self) {
        if let Some(index) = self.sleepers.pop_one() {
            self.workers[index].thread.get().expect("worker started before it can park").unpark();
        }
    }

    /// Worker `index` ended `task` (a registered one); its place in the
    /// live count is given back by the worker loop, in batches (see
    /// `admission`).
    fn remove_live(&self, index: usize, task: &Header) {
        self.live.ended(index, task.registry_shard);
    }

    /// Spawns `future`; the flag says whether it was admitted (see
    /// "Bounded queues" and "Shutdown" in the module docs).
    fn spawn<F>(self: &Arc<Self>, priority: Priority, name: &'static str, future: F) -> (JoinHandle<F::Output>, bool)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Tiers beyond `priority_levels` fold into the lowest kept one.
        let priority = Priority::ALL[(priority as usize).min(self.config.priority_levels - 1)];
        // One look at the thread-local for the whole spawn (it is borrowed
        // shared throughout: a future dropped below may spawn again).
        LOCAL.with(|local| {
            let local = local.borrow();
            let local = local.as_ref().filter(|w| w.executor == self.id);
            let (pool, worker, id) = match local {
                Some(w) => {
                    let (mut next, mut end) = w.ids.get();
                    if next == end {
                        next = self.next_task.fetch_add(ID_BLOCK, Ordering::Relaxed);
                        end = next + ID_BLOCK;
                    }
                    w.ids.set((next + 1, end));
                    (self.workers[w.index].pool, Some(w.index), next)
                }
                None => (
                    self.next_pool.fetch_add(1, Ordering::Relaxed) % self.pools.len(),
                    None,
                    self.next_task.fetch_add(1, Ordering::Relaxed),
                ),
            };
            let registry_shard = self.live.shard_of(worker);
            let header = Header {
                id,
                name,
                priority,
                pool,
                state: state::TaskState::new_scheduled(),
                cancelled: AtomicBool::new(false),
                woken_at: AtomicU64::new(0),
                registry_shard,
                shared: self.clone(),
            };
            // The spawn's allocations: this `Arc` (header, output slot and
            // the pinned future's box, which is the other one); the handle
            // and the queues share it, the registry holds a `Weak` (see
            // `task`, "Layout").
            let task = Arc::new(Task::new(header, future));
            let handle: JoinHandle<F::Output> = JoinHandle::new(task.clone());
            let task: TaskRef = task;
            let within_bound = self.live_count.try_admit();
            let accepted = within_bound && self.live.insert(registry_shard, &task);
            if accepted {
                self.schedule_on(local, task, Queued::Spawned);
            } else {
                if within_bound {
                    self.live_count.release();
                } else {
                    self.refuse(task.header());
                }
                // Shutting down or full: the future is dropped unpolled;
                // the handle yields Cancelled.
                task.finish();
            }
            (handle, accepted)
        })
    }

    /// Counts a spawn refused at the live-task bound and says so in the log
    /// at most once a second (a refusal storm must not become a log storm;
    /// the counter has the full count).
    fn refuse(&self, task: &Header) {
        let refused = self.spawns_refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now_nanos().max(1);
        let last = self.refusal_logged_at.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1_000_000_000)
            && self.refusal_logged_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                task = task.name,
                live_tasks = self.live_count.get(),
                bound = self.live_count.bound().unwrap_or(usize::MAX),
                refused_so_far = refused,
                "executor: spawn refused, the live-task bound (task_queue_depth) is reached; the task is cancelled unpolled"
            );
        }
    }

    /// Polls `task` on worker `index`; true if that ended it (its place in
    /// the live count is then the caller's to give back).
    #[must_use]
    fn run_task(&self, index: usize, task: TaskRef) -> bool {
        let header = task.header();
        if !header.state.start_poll() {
            return false; // cancelled while queued: its canceller ended it
        }
        let metrics = &self.workers[index].metrics;
        let woken_at = header.woken_at.load(Ordering::Relaxed);
        if woken_at != 0 {
            // A sampled wake (see `metrics`): the only poll that reads the
            // precise clock.
            header.woken_at.store(0, Ordering::Relaxed);
            metrics.wake_to_poll.record(self.now_nanos().saturating_sub(woken_at));
        }
        bump(&metrics.polls);
        // RUNNING is this worker's: no other poll, and `abort`'s store of
        // the flag comes before its wake (see `state`), so a cancellation
        // is seen here or leads to another poll.
        if header.cancelled.load(Ordering::Acquire) {
            task.finish(); // the future is dropped, the handle yields Cancelled
            self.remove_live(index, header);
            return true;
        }
        // One more reference to the task's allocation, not a new one.
        let waker = task.clone().into_waker();
        metrics.poll_started.store(self.driver.now_coarse().as_nanos().max(1), Ordering::Relaxed);
        let poll = task.poll_future(&mut Context::from_waker(&waker), metrics);
        metrics.poll_started.store(0, Ordering::Relaxed);
        match poll {
            Poll::Ready(_) => {
                // The outcome is recorded: `poll_future` did it before it
                // served the handle.
                task.finish();
                self.remove_live(index, header);
                true
            }
            Poll::Pending => {
                if header.state.end_poll_pending() == AfterPoll::Requeue {
                    self.schedule(task, Queued::Yielded);
                }
                false
            }
        }
    }
}

/// Steals one task of `tier` from `worker`'s deque, moving a batch into
/// `dest`. An empty deque is seen as empty by two loads: a steal attempt
/// would pin the deque's epoch first (a fence), on every pick and every
/// tier above the one with work.
fn steal_from_worker(dest: &Deque<TaskRef>, worker: &WorkerSlot, tier: usize) -> Option<TaskRef> {
    let stealer = &worker.stealers[tier];
    if stealer.is_empty() {
        return None;
    }
    steal_into(dest, |d| stealer.steal_batch_and_pop(d))
}

/// Steals one task for `tier` from `source`, moving a batch into `dest`.
fn steal_into(dest: &Deque<TaskRef>, source: impl Fn(&Deque<TaskRef>) -> Steal<TaskRef>) -> Option<TaskRef> {
    loop {
        match source(dest) {
            Steal::Success(t) => return Some(t),
            Steal::Empty => return None,
            Steal::Retry => continue,
        }
    }
}

struct WorkerLoop {
    shared: Arc<Shared>,
    index: usize,
    picks: u32,
    fair_tier: usize,
    /// Executor-clock time of the last injector-first pick.
    injector_checked_at: u64,
    /// A task ran since the last spin began or the last park: the next
    /// time the worker runs out of work it may spin (so an executor that
    /// has no work at all, or a worker woken for work another took, parks
    /// at once).
    spin_armed: bool,
    /// The worker just came back from a spin that saw work or from a park:
    /// once it has a task, it hands any further work on.
    back_from_idle: bool,
}

impl WorkerLoop {
    /// The tiers in the order this pick tries them.
    fn tier_order(&mut self) -> [usize; TIERS] {
        self.picks = self.picks.wrapping_add(1);
        if !self.picks.is_multiple_of(self.shared.config.starvation_bound.max(1)) {
            return [0, 1, 2, 3];
        }
        // Rotate over High, Normal, Background.
        self.fair_tier = if self.fair_tier <= 1 { TIERS - 1 } else { self.fair_tier - 1 };
        let first = self.fair_tier;
        let mut order = [first, 0, 0, 0];
        let mut rest = (0..TIERS).filter(|&t| t != first);
        for slot in order.iter_mut().skip(1) {
            *slot = rest.next().expect("four tiers");
        }
        order
    }

    /// Whether this pick serves the pool's injector before the own deque
    /// (see the module docs). Asked only when the injector holds work, so
    /// that a worker fed by its own deque alone never reads the clock here.
    fn injector_due(shared: &Shared, picks: u32, checked_at: &mut u64) -> bool {
        let now = shared.now_nanos();
        let due = picks.is_multiple_of(INJECTOR_INTERVAL) || now.saturating_sub(*checked_at) >= INJECTOR_MAX_WAIT_NANOS;
        if due {
            *checked_at = now;
        }
        due
    }

    fn find_task(&mut self, deques: &[Deque<TaskRef>; TIERS]) -> Option<TaskRef> {
        let order = self.tier_order();
        let (shared, picks, checked_at) = (&*self.shared, self.picks, &mut self.injector_checked_at);
        let me = &shared.workers[self.index];
        let pool = &shared.pools[me.pool];
        // Decided at the first tier whose injector holds work, for the
        // whole pick (as if decided at its start: an injector that was
        // empty had nothing to serve first).
        let mut injector_due: Option<bool> = None;
        for tier in order {
            let dest = &deques[tier];
            let injector = &pool.injectors[tier];
            // Every INJECTOR_INTERVAL-th pick, or the first 50 µs after the
            // last such, looks at the pool's injector before the worker's
            // own deque: wakes from outside the workers (IO, timers, other
            // threads) land there and must not wait behind a worker that
            // keeps feeding itself.
            let injector_first = !injector.is_empty()
                && *injector_due.get_or_insert_with(|| Self::injector_due(shared, picks, checked_at));
            if injector_first && let Some(t) = steal_into(dest, |d| injector.steal_batch_and_pop(d)) {
                return Some(t);
            }
            if let Some(t) = dest.pop() {
                return Some(t);
            }
            if !injector_first
                && !injector.is_empty()
                && let Some(t) = steal_into(dest, |d| injector.steal_batch_and_pop(d))
            {
                return Some(t);
            }
            let siblings = pool.workers.iter().copied().filter(|&w| w != self.index);
            if let Some(t) = siblings.into_iter().find_map(|w| steal_from_worker(dest, &shared.workers[w], tier)) {
                bump(&me.metrics.steals);
                return Some(t);
            }
            for (p, other) in shared.pools.iter().enumerate() {
                if p == me.pool {
                    continue;
                }
                let found = (!other.injectors[tier].is_empty())
                    .then(|| steal_into(dest, |d| other.injectors[tier].steal_batch_and_pop(d)))
                    .flatten()
                    .or_else(|| other.workers.iter().find_map(|&w| steal_from_worker(dest, &shared.workers[w], tier)));
                if found.is_some() {
                    bump(&me.metrics.steals);
                    return found;
                }
            }
        }
        None
    }

    fn any_work(&self, deques: &[Deque<TaskRef>; TIERS]) -> bool {
        let s = &self.shared;
        deques.iter().any(|d| !d.is_empty())
            || s.pools.iter().any(|p| p.injectors.iter().any(|i| !i.is_empty()))
            || s.workers.iter().any(|w| w.stealers.iter().any(|st| !st.is_empty()))
    }

    /// Looks at the queues for up to `idle_spin` before the worker parks;
    /// true when work showed up (the caller picks it as usual). False at
    /// once when the spin is off, not armed (no task ran since the last
    /// spin or park) or enough other workers already spin.
    fn spin_for_work(&mut self) -> bool {
        /// Looks between two reads of the clock.
        const LOOKS_PER_CLOCK_READ: u32 = 32;
        let shared = self.shared.clone();
        let window = u64::try_from(shared.config.idle_spin.as_nanos()).unwrap_or(u64::MAX);
        if window == 0 || !std::mem::take(&mut self.spin_armed) {
            return false;
        }
        let allowed = (shared.workers.len() / 2).max(1);
        if !shared.sleepers.try_start_spinning(allowed) {
            return false;
        }
        let deadline = shared.now_nanos().saturating_add(window);
        let mut looks: u32 = 0;
        let found = loop {
            if LOCAL.with(|local| self.any_work(&local.borrow().as_ref().expect("worker's deques").deques)) {
                break true;
            }
            if shared.stopping.load(Ordering::Acquire) {
                break false;
            }
            looks = looks.wrapping_add(1);
            std::hint::spin_loop();
            if looks.is_multiple_of(LOOKS_PER_CLOCK_READ) && shared.now_nanos() >= deadline {
                break false;
            }
        };
        // Publishers that saw this worker spinning woke nobody: after this
        // the worker looks at the queues again (takes what it found, or
        // registers and re-checks before parking), see `idle`.
        shared.sleepers.stop_spinning();
        if found {
            bump(&shared.workers[self.index].metrics.spin_hits);
        }
        found
    }

    /// Called with the first task after a spin that saw work or a park:
    /// if more work is queued, wakes another worker for it. Publishers
    /// that found a worker spinning unparked nobody, so a burst published
    /// during a spin would otherwise wait for this one worker; and a worker
    /// unparked for a burst passes the wake-up on the same way.
    fn hand_off_after_idle(&mut self, deques: &[Deque<TaskRef>; TIERS]) {
        if std::mem::take(&mut self.back_from_idle) && self.any_work(deques) {
            self.shared.notify_one();
        }
    }

    fn run(mut self, deques: [Deque<TaskRef>; TIERS]) {
        let shared = self.shared.clone();
        // The deques live in the thread-local so that wakes on this thread
        // can push to them; the loop borrows them only while picking a task,
        // never while polling one (a poll may wake tasks onto them).
        LOCAL.with(|local| {
            *local.borrow_mut() = Some(LocalWorker {
                executor: shared.id,
                index: self.index,
                deques,
                until_sample: Cell::new(0),
                queued_at_pick: Cell::new(0),
                ids: Cell::new((0, 0)),
            })
        });
        // Tasks this worker ended whose places it has not given back yet
        // (see `admission`).
        let mut unreleased = 0;
        let release_batch = shared.live_count.release_batch(shared.workers.len());
        loop {
            let next = LOCAL.with(|local| {
                let local = local.borrow();
                let w = local.as_ref().expect("set above");
                let found = self.find_task(&w.deques);
                let depth: usize = w.deques.iter().map(|d| d.len()).sum();
                shared.workers[self.index].metrics.queue_depth.store(depth as u64, Ordering::Relaxed);
                w.queued_at_pick.set(depth);
                if found.is_some() {
                    self.hand_off_after_idle(&w.deques);
                }
                found
            });
            if let Some(task) = next {
                if shared.run_task(self.index, task) {
                    unreleased += 1;
                    if unreleased >= release_batch {
                        shared.live_count.release_many(std::mem::take(&mut unreleased));
                    }
                }
                self.spin_armed = true;
                continue;
            }
            // Out of work: every place held back goes back before this
            // worker spins or parks, so an idle executor's count is exact.
            if unreleased > 0 {
                shared.live_count.release_many(std::mem::take(&mut unreleased));
            }
            self.back_from_idle = false;
            if shared.stopping.load(Ordering::Acquire) {
                break;
            }
            shared.live.sweep_if_due(self.index);
            if self.spin_for_work() {
                self.back_from_idle = true;
                continue;
            }
            shared.sleepers.register(self.index);
            let work = LOCAL.with(|local| self.any_work(&local.borrow().as_ref().expect("set above").deques));
            if work || shared.stopping.load(Ordering::Acquire) {
                shared.sleepers.unregister(self.index);
                continue;
            }
            bump(&shared.workers[self.index].metrics.parks);
            thread::park();
            shared.sleepers.unregister(self.index);
            self.back_from_idle = true;
        }
        LOCAL.with(|local| local.borrow_mut().take());
    }
}

/// The real executor. It dereferences to its [`ExecutorHandle`], whose
/// `spawn`, `block_on`, `now` and `sleep_until` it offers; clone the
/// handle ([`Executor::handle`]) to spawn from elsewhere.
pub struct Executor {
    handle: ExecutorHandle,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    shut_down: AtomicBool,
}

/// A cloneable handle that spawns onto an [`Executor`].
#[derive(Clone)]
pub struct ExecutorHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ExecutorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorHandle").field("executor", &self.shared.id).finish()
    }
}

/// Why an executor could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The topology could not be read.
    #[error("reading the machine topology: {0}")]
    Topology(String),
    /// A thread could not be started.
    #[error("starting thread {name}: {source}")]
    Thread {
        /// The thread's name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Executor {
    /// Starts the workers and the driver.
    pub fn new(config: ExecutorConfig) -> Result<Executor, ExecutorError> {
        assert!(
            (1..=TIERS).contains(&config.priority_levels),
            "priority_levels must be 1 to {TIERS}, not {}",
            config.priority_levels
        );
        let mut topology = match &config.topology {
            Some(t) => t.clone(),
            None => Topology::detect().map_err(|e| ExecutorError::Topology(e.to_string()))?,
        };
        if !config.numa_aware {
            topology = Topology::single_node(topology.cpus().collect::<Vec<_>>());
        }
        let driver = Driver::start(&config.name)
            .map_err(|source| ExecutorError::Thread { name: format!("{}-driver", config.name), source })?;

        // Lay out workers: per node, capped in total, at least one per node.
        let mut layout: Vec<(usize, Option<usize>)> = Vec::new(); // (pool, cpu)
        let mut pools = Vec::new();
        let nodes: Vec<_> = topology.nodes.iter().filter(|n| !n.cpus.is_empty()).collect();
        let per_node_cap = config.max_workers.map(|m| m.div_ceil(nodes.len().max(1)).max(1));
        for (pool_index, node) in nodes.iter().enumerate() {
            let mut count = config.workers_per_node.unwrap_or(node.cpus.len()).max(1);
            if let Some(cap) = per_node_cap {
                count = count.min(cap);
            }
            let mut members = Vec::new();
            for i in 0..count {
                members.push(layout.len());
                let cpu = config.pin_workers.then(|| node.cpus[i % node.cpus.len()]);
                layout.push((pool_index, cpu));
            }
            pools.push(Pool { numa_node: node.id, workers: members, injectors: Default::default() });
        }
        if pools.is_empty() {
            // No CPU information at all: one unpinned pool.
            pools.push(Pool { numa_node: 0, workers: vec![0], injectors: Default::default() });
            layout.push((0, None));
        }

        let deques: Vec<[Deque<TaskRef>; TIERS]> =
            layout.iter().map(|_| std::array::from_fn(|_| Deque::new_fifo())).collect();
        let workers = layout
            .iter()
            .zip(&deques)
            .map(|(&(pool, cpu), d)| WorkerSlot {
                pool,
                cpu,
                stealers: std::array::from_fn(|t| d[t].stealer()),
                thread: OnceLock::new(),
                metrics: Padded(WorkerMetrics::default()),
            })
            .collect();
        let shared = Arc::new(Shared {
            id: NEXT_EXECUTOR.fetch_add(1, Ordering::Relaxed),
            pools,
            workers,
            sleepers: Padded(Sleepers::default()),
            live: LiveTasks::new(layout.len()),
            live_count: Padded(admission::LiveCount::new(config.max_live_tasks)),
            next_task: Padded(AtomicU64::new(0)),
            next_pool: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            spawns_refused: AtomicU64::new(0),
            refusal_logged_at: AtomicU64::new(0),
            config: config.clone(),
            driver,
        });

        let executor = Executor {
            handle: ExecutorHandle { shared: shared.clone() },
            threads: Mutex::new(Vec::new()),
            shut_down: AtomicBool::new(false),
        };
        for (index, deques) in deques.into_iter().enumerate() {
            let worker_shared = shared.clone();
            let name = worker_thread_name(&config.name, index);
            let cpu = shared.workers[index].cpu;
            let spawned = thread::Builder::new().name(name.clone()).stack_size(config.stack_size).spawn(move || {
                if let Some(cpu) = cpu {
                    // Pinning is best effort: a CPU outside this process's
                    // affinity mask just leaves the thread unpinned.
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                }
                // Published by the worker itself, before it can ever park:
                // whoever pops it from the sleepers finds a handle to unpark.
                let _ = worker_shared.workers[index].thread.set(thread::current());
                WorkerLoop {
                    shared: worker_shared,
                    index,
                    picks: 0,
                    fair_tier: 0,
                    injector_checked_at: 0,
                    spin_armed: false,
                    back_from_idle: false,
                }
                .run(deques);
            });
            match spawned {
                Ok(handle) => executor.threads.lock().expect("threads lock").push(handle),
                Err(source) => {
                    executor.shutdown(Duration::ZERO);
                    return Err(ExecutorError::Thread { name, source });
                }
            }
        }
        Ok(executor)
    }

    /// A handle for spawning (and for the drivers).
    pub fn handle(&self) -> ExecutorHandle {
        self.handle.clone()
    }

    /// Graceful shutdown (see the module docs). Must not be called from a
    /// worker of this executor. Later calls report nothing.
    pub fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let shared = &self.handle.shared;
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return ShutdownReport::default();
        }
        LOCAL.with(|l| {
            assert!(
                l.borrow().as_ref().is_none_or(|w| w.executor != shared.id),
                "shutdown called from one of the executor's own workers"
            )
        });
        let at_start = shared.live_count.get();
        let deadline = std::time::Instant::now() + grace;
        while shared.live_count.get() > 0 && std::time::Instant::now() < deadline {
            thread::sleep(std::time::Duration::from_micros(200));
        }
        // Stop accepting, and cancel whatever is left.
        let remaining: Vec<TaskRef> = shared.live.close();
        let mut cancelled: Vec<&'static str> = remaining.iter().map(|t| t.header().name).collect();
        cancelled.sort_unstable();
        for task in &remaining {
            task.header().cancelled.store(true, Ordering::Release);
            if task.header().state.wake() {
                shared.schedule(task.clone(), Queued::Unsampled);
            }
        }
        // Workers drop the cancelled futures; wait for them briefly.
        let drain_deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while remaining.iter().any(|t| !t.header().state.is_complete()) && std::time::Instant::now() < drain_deadline {
            thread::sleep(std::time::Duration::from_micros(200));
        }
        shared.stopping.store(true, Ordering::Release);
        for w in &shared.workers {
            if let Some(t) = w.thread.get() {
                t.unpark();
            }
        }
        let _ = shared.sleepers.pop_all();
        for handle in self.threads.lock().expect("threads lock").drain(..) {
            // A worker that panicked outside a task poll has nothing left
            // to report here.
            let _ = handle.join();
        }
        // Anything a stuck worker never reached: drop it here.
        for task in &remaining {
            task.finish();
        }
        shared.driver.stop();
        ShutdownReport { finished_in_grace: at_start.saturating_sub(remaining.len()), cancelled }
    }
}

fn worker_thread_name(executor: &str, index: usize) -> String {
    format!("{executor}-w{index}")
}

impl std::ops::Deref for Executor {
    type Target = ExecutorHandle;

    fn deref(&self) -> &ExecutorHandle {
        &self.handle
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

impl ExecutorHandle {
    /// Number of worker threads (metrics and health live on the handle so
    /// that an exporter holding a clone can read them at scrape time).
    pub fn worker_count(&self) -> usize {
        self.shared.workers.len()
    }

    /// Per-worker counters.
    pub fn worker_metrics(&self) -> Vec<WorkerSnapshot> {
        self.shared.workers.iter().map(|w| w.metrics.snapshot()).collect()
    }

    /// Wake-to-poll latency over all workers.
    pub fn wake_to_poll(&self) -> LatencyHistogram {
        let all = LatencyHistogram::default();
        for w in &self.shared.workers {
            all.merge_from(&w.metrics.wake_to_poll);
        }
        all
    }

    /// Each worker's health.
    pub fn worker_health(&self) -> Vec<HealthStatus> {
        let now = self.shared.driver.now_coarse().as_nanos();
        let stall = self.shared.config.stall_threshold;
        self.shared.workers.iter().map(|w| w.metrics.health(now, stall)).collect()
    }

    /// The executor's health: the worst of its workers' (Unknown only if
    /// every worker is).
    pub fn health(&self) -> HealthStatus {
        let all = self.worker_health();
        let known: Vec<HealthStatus> = all.iter().copied().filter(|h| *h != HealthStatus::Unknown).collect();
        known.into_iter().max().unwrap_or(HealthStatus::Unknown)
    }

    /// Each worker's thread name, in worker order (what `/proc` and
    /// debuggers show; the performance monitor matches threads by it).
    pub fn worker_thread_names(&self) -> Vec<String> {
        (0..self.shared.workers.len()).map(|i| worker_thread_name(&self.shared.config.name, i)).collect()
    }

    /// Which NUMA node each worker belongs to and the CPU it is pinned to.
    pub fn layout(&self) -> Vec<(usize, Option<usize>)> {
        self.shared.workers.iter().map(|w| (self.shared.pools[w.pool].numa_node, w.cpu)).collect()
    }

    /// Spawns refused because the live-task bound was reached (see the
    /// module docs, "Bounded queues").
    pub fn spawns_refused(&self) -> u64 {
        self.shared.spawns_refused.load(Ordering::Relaxed)
    }

    /// Tasks spawned and not yet finished or cancelled (while workers are
    /// busy, plus the ended ones whose places they have not given back yet:
    /// see the module docs, "Bounded queues").
    pub fn live_tasks(&self) -> usize {
        self.shared.live_count.get()
    }

    /// Spawns `future` at `priority` (a refused task's handle yields
    /// `Cancelled` at once).
    pub fn spawn<F>(&self, priority: Priority, name: &'static str, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.shared.spawn(priority, name, future).0
    }

    /// Spawns `future` at `priority`, or says it was refused: the live-task
    /// bound is reached or the executor is shutting down (the future was
    /// dropped unpolled).
    pub fn try_spawn<F>(
        &self,
        priority: Priority,
        name: &'static str,
        future: F,
    ) -> Result<JoinHandle<F::Output>, SpawnRefused>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.shared.spawn(priority, name, future) {
            (handle, true) => Ok(handle),
            (_, false) => Err(SpawnRefused { name }),
        }
    }

    /// Runs `future` on the executor and blocks this (non-worker) thread
    /// until it finishes. Panics if the future was cancelled (the executor
    /// shut down, or refused it at the live-task bound) or panicked.
    pub fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        LOCAL.with(|l| {
            assert!(
                l.borrow().as_ref().is_none_or(|w| w.executor != self.shared.id),
                "block_on called from one of the executor's own workers (it would wait on itself)"
            )
        });
        let mut handle = self.spawn(Priority::Normal, "block_on", future);
        let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            match std::pin::Pin::new(&mut handle).poll(&mut cx) {
                Poll::Ready(Ok(v)) => return v,
                Poll::Ready(Err(e)) => panic!("block_on: {e}"),
                Poll::Pending => thread::park(),
            }
        }
    }

    /// The executor's timer and IO driver.
    pub(crate) fn driver(&self) -> &Arc<Driver> {
        &self.shared.driver
    }

    /// The executor's monotonic clock.
    pub fn now(&self) -> kaelix_core::Instant {
        self.shared.driver.now()
    }

    /// [`ExecutorHandle::now`] at the kernel tick's resolution, cheaper to
    /// read (see `kaelix_core::runtime::Clock::now_coarse`).
    pub fn now_coarse(&self) -> kaelix_core::Instant {
        self.shared.driver.now_coarse()
    }

    /// A future that completes at `deadline` on [`ExecutorHandle::now`]'s clock.
    pub fn sleep_until(&self, deadline: kaelix_core::Instant) -> crate::Sleep {
        self.shared.driver.sleep_until(deadline)
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

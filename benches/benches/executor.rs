//! The real executor against tokio's multi-thread runtime, both with two
//! workers, in the same run.
//!
//! * `executor/spawn-join-10k` (criterion): a task spawns 10 000 trivial
//!   tasks and awaits them all; throughput is tasks per second. This is the
//!   cost of the spawn path, the queues and the join handles.
//! * Wake-to-poll latency (table only; hdrhistogram): a task waits on a
//!   `futures_channel::oneshot` (the same primitive for both runtimes); an
//!   OS thread outside the runtime stamps the instant and sends it; the
//!   task stamps the instant it is polled. Latency = polled − fired, which
//!   covers the wake path, the queue and (when idle) unparking a worker.
//!   Measured three ways:
//!   - idle: nothing else runs;
//!   - saturated: CPU-bound tasks keep every worker busy, each spinning
//!     ~50 µs between yields; measured task and load are both Normal;
//!   - Critical over Background: the same load at `Priority::Background`
//!     and the measured task at `Priority::Critical` (tokio has no
//!     priorities: its run is the saturated one again).
//!
//!   A wake left unserved for [`STARVATION_LIMIT`] ends the run as starved.
//!   Beside each scenario: the process's CPU use over it, and the mean gap
//!   between two wakes as it really was (the pause plus the waking
//!   thread's own delays) — what an idle worker's spin has to outlast.
//! * CPU with no task at all, over [`FULLY_IDLE`] after the scenarios.
//!
//! After criterion, a table prints the medians over [`REPETITIONS`] fresh
//! runtimes (throughput and each percentile), and kaelix / tokio. Kaelix
//! runs with its default config (workers pinned to CPUs); tokio's workers
//! are not pinned. Last, one more kaelix run of each idle scenario prints
//! what each worker did by the executor's own counters (polls, parks, wakes
//! found while spinning): why the latency is what it is, not a measurement.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // a benchmark of threads measures real time

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use futures_channel::oneshot;
use hdrhistogram::Histogram;
use kaelix_core::runtime::Priority;
use kaelix_runtime_real::{Executor, ExecutorConfig, ExecutorHandle};

/// The allocator the `kaelix` binary uses, so these figures match its.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WORKERS: usize = 2;
const SPAWNED_TASKS: u64 = 10_000;
/// Fresh runtimes per table cell; the table shows medians.
const REPETITIONS: usize = 5;
const WAKES_PER_RUN: usize = 10_000;
/// Between the task starting to wait and the wake, in the `idle` scenario:
/// a wake soon after the last (the mean gap row shows how soon it really
/// was; an `idle_spin` longer than that catches it).
const PAUSE_BEFORE_WAKE: Duration = Duration::from_micros(20);
/// ... and in the `idle, parked` scenario: past such a spin window, so
/// every wake unparks a worker on both runtimes.
const PAUSE_PARKED: Duration = Duration::from_micros(200);
/// Load tasks per worker, so that every worker always has one queued.
const LOAD_TASKS_PER_WORKER: usize = 4;
const LOAD_SLICE: Duration = Duration::from_micros(50);
/// A measured task not polled within this is reported as starved.
const STARVATION_LIMIT: Duration = Duration::from_secs(1);

/// What the benchmarks need from an executor.
trait Runtime: Clone + Send + Sync + 'static {
    /// A join handle resolving to the task's output.
    type Join<T: Send + 'static>: Future<Output = T> + Send + Unpin;

    /// Spawns at `priority` (ignored where there are no priorities).
    fn spawn<F>(&self, priority: Priority, future: F) -> Self::Join<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;

    /// Runs `future` as a task on a worker and waits for it on this thread.
    fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;

    /// Each worker's (polls, parks, spin hits) so far, where the runtime
    /// counts them.
    fn worker_counters(&self) -> Option<Vec<WorkerCounters>> {
        None
    }
}

/// What one worker did, from the runtime's own counters: these explain a
/// latency figure (who served the wake, did a worker park), they are not
/// the measurement.
#[derive(Clone, Copy, Debug, Default)]
struct WorkerCounters {
    polls: u64,
    parks: u64,
    spin_hits: u64,
}

/// A join handle whose error is a benchmark bug: unwraps it.
struct Joined<H>(H);

impl<H, T, E> Future for Joined<H>
where
    H: Future<Output = Result<T, E>> + Unpin,
    E: std::fmt::Debug,
{
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        Pin::new(&mut self.0).poll(cx).map(|result| result.expect("benchmark task finished"))
    }
}

#[derive(Clone)]
struct Kaelix(ExecutorHandle);

impl Runtime for Kaelix {
    type Join<T: Send + 'static> = Joined<kaelix_runtime_real::JoinHandle<T>>;

    fn spawn<F>(&self, priority: Priority, future: F) -> Self::Join<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Joined(self.0.spawn(priority, "bench", future))
    }

    fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.block_on(future)
    }

    fn worker_counters(&self) -> Option<Vec<WorkerCounters>> {
        Some(
            self.0
                .worker_metrics()
                .iter()
                .map(|m| WorkerCounters { polls: m.polls, parks: m.parks, spin_hits: m.spin_hits })
                .collect(),
        )
    }
}

#[derive(Clone)]
struct Tokio(tokio::runtime::Handle);

impl Runtime for Tokio {
    type Join<T: Send + 'static> = Joined<tokio::task::JoinHandle<T>>;

    fn spawn<F>(&self, _priority: Priority, future: F) -> Self::Join<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Joined(self.0.spawn(future))
    }

    fn block_on<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // `Handle::block_on` would poll on this thread: spawn onto a worker.
        self.0.block_on(self.0.spawn(future)).expect("benchmark task finished")
    }
}

/// Kaelix with its defaults; `KAELIX_IDLE_SPIN_US` sets `idle_spin` (the
/// seed's `target_latency_us`) to measure what spinning buys and costs.
fn start_kaelix() -> Executor {
    let mut config = ExecutorConfig { workers_per_node: Some(WORKERS), ..Default::default() };
    if let Some(micros) = std::env::var("KAELIX_IDLE_SPIN_US").ok().and_then(|v| v.parse().ok()) {
        config.idle_spin = Duration::from_micros(micros);
    }
    Executor::new(config).expect("kaelix starts")
}

fn start_tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(WORKERS).enable_time().build().expect("tokio starts")
}

// ---------------------------------------------------------------------------
// Spawn throughput

fn spawn_and_join<R: Runtime>(rt: &R, tasks: u64) -> u64 {
    let inner = rt.clone();
    rt.block_on(async move {
        let handles: Vec<_> = (0..tasks).map(|i| inner.spawn(Priority::Normal, async move { black_box(i) })).collect();
        let mut sum = 0;
        for handle in handles {
            sum += handle.await;
        }
        sum
    })
}

fn tasks_per_second<R: Runtime>(rt: &R) -> f64 {
    let start = Instant::now();
    black_box(spawn_and_join(rt, SPAWNED_TASKS));
    SPAWNED_TASKS as f64 / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------
// Wake-to-poll latency

/// CPU-bound tasks that keep every worker busy until stopped.
struct Load<R: Runtime> {
    runtime: R,
    stop: Arc<AtomicBool>,
    tasks: Vec<R::Join<()>>,
}

impl<R: Runtime> Load<R> {
    fn start(runtime: &R, priority: Priority) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..WORKERS * LOAD_TASKS_PER_WORKER)
            .map(|_| {
                let stop = stop.clone();
                runtime.spawn(priority, async move {
                    while !stop.load(Ordering::Relaxed) {
                        kaelix_benches::spin_for(LOAD_SLICE);
                        kaelix_benches::yield_now().await;
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(10)); // let the workers pick it up
        Load { runtime: runtime.clone(), stop, tasks }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = self.tasks;
        self.runtime.block_on(async move {
            for task in tasks {
                task.await;
            }
        });
    }
}

/// Where the waiting task leaves its sender once its waker is registered.
type Mailbox = Arc<Mutex<Option<oneshot::Sender<Instant>>>>;

/// Waits for the fire instant; on the first Pending poll (the waker is
/// registered), posts the sender to the mailbox. Yields polled − fired, or
/// `None` if the sender was dropped.
struct ArmedWait {
    receiver: oneshot::Receiver<Instant>,
    sender: Option<oneshot::Sender<Instant>>,
    mailbox: Mailbox,
}

impl Future for ArmedWait {
    type Output = Option<Duration>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let polled_at = Instant::now();
        match Pin::new(&mut self.receiver).poll(cx) {
            Poll::Ready(fired_at) => Poll::Ready(fired_at.ok().map(|fired_at| polled_at - fired_at)),
            Poll::Pending => {
                if let Some(sender) = self.sender.take() {
                    *self.mailbox.lock().expect("mailbox lock") = Some(sender);
                }
                Poll::Pending
            }
        }
    }
}

/// The percentiles reported for wake-to-poll latency.
const QUANTILES: [(&str, f64); 3] = [("P50", 0.50), ("P99", 0.99), ("P99.9", 0.999)];

/// One wake-to-poll run: [`QUANTILES`] and the worst latency in
/// nanoseconds, the wakes served, and whether one went unserved for
/// [`STARVATION_LIMIT`].
#[derive(Clone, Debug)]
struct WakeRun {
    nanos: [u64; QUANTILES.len()],
    worst: u64,
    served: usize,
    starved: bool,
    /// CPU the whole process used over the run, in cores (1.0: one core
    /// busy all along): the price of spinning, next to what it buys.
    cpu_cores: f64,
    /// Mean time from one wake to the next (what the worker waits between
    /// wakes: the pause plus the waking thread's own delays).
    mean_gap_nanos: u64,
    /// Per worker, what its counters moved by over the run (kaelix only).
    workers: Option<Vec<WorkerCounters>>,
}

/// CPU seconds this process has used (user + system), from
/// `/proc/self/stat` in clock ticks of 10 ms.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

/// Makes this thread's sleeps as long as asked, until dropped. Linux lets
/// a normal thread's timed sleep overrun by its timer slack (50 µs by
/// default, to batch timer interrupts): with it, the `idle` scenario's
/// 20 µs pause and 10 µs polls for the next sender put its wakes about
/// 150 µs apart (measured, mean), far from the soon-after-the-last wake it
/// is about. With a slack of 1 ns the pauses are the named ones plus the
/// kernel's own wake-up delay. Only the waking thread is changed; both
/// runtimes' workers keep theirs.
struct ExactSleeps(Option<std::num::NonZeroU64>);

impl ExactSleeps {
    fn on_this_thread() -> Self {
        let previous = rustix::thread::current_timer_slack().ok().and_then(std::num::NonZeroU64::new);
        rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1)).expect("PR_SET_TIMERSLACK");
        ExactSleeps(previous)
    }
}

impl Drop for ExactSleeps {
    fn drop(&mut self) {
        // `None` restores the thread's default slack.
        let _ = rustix::thread::set_current_timer_slack(self.0);
    }
}

fn take_sender(mailbox: &Mailbox, limit: Duration) -> Option<oneshot::Sender<Instant>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(sender) = mailbox.lock().expect("mailbox lock").take() {
            return Some(sender);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_micros(10));
    }
}

/// One run: [`WAKES_PER_RUN`] wakes of a task at `measured`, fired from
/// this thread, with CPU load at `load` if any.
fn wake_to_poll<R: Runtime>(rt: &R, measured: Priority, load: Option<Priority>, pause: Duration) -> WakeRun {
    let _slack = ExactSleeps::on_this_thread();
    let mailbox = Mailbox::default();
    let task_mailbox = mailbox.clone();
    let waiter = rt.spawn(measured, async move {
        let mut latencies = Vec::with_capacity(WAKES_PER_RUN);
        for _ in 0..WAKES_PER_RUN {
            let (sender, receiver) = oneshot::channel();
            let wait = ArmedWait { receiver, sender: Some(sender), mailbox: task_mailbox.clone() };
            match wait.await {
                Some(latency) => latencies.push(latency),
                None => break,
            }
        }
        latencies
    });

    // The task starts waiting before the load starts: a starved run then
    // shows a wake, not a spawn, going unserved.
    let first = take_sender(&mailbox, STARVATION_LIMIT).expect("the measured task starts on an idle runtime");
    let load = load.map(|priority| Load::start(rt, priority));
    let senders =
        std::iter::once(Some(first)).chain(std::iter::repeat_with(|| take_sender(&mailbox, STARVATION_LIMIT)));
    let mut starved = false;
    let counters_before = rt.worker_counters();
    let (cpu_before, wall_before) = (process_cpu_seconds(), Instant::now());
    let mut fired = 0u64;
    for sender in senders.take(WAKES_PER_RUN) {
        let Some(sender) = sender else {
            starved = true;
            break;
        };
        thread::sleep(pause);
        let _ = sender.send(Instant::now());
        fired += 1;
    }
    let wall = wall_before.elapsed();
    let cpu_cores = (process_cpu_seconds() - cpu_before) / wall.as_secs_f64();
    let mean_gap_nanos = (wall.as_nanos() / u128::from(fired.max(1))) as u64;
    let workers = rt.worker_counters().zip(counters_before).map(|(after, before)| {
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| WorkerCounters {
                polls: a.polls - b.polls,
                parks: a.parks - b.parks,
                spin_hits: a.spin_hits - b.spin_hits,
            })
            .collect()
    });
    if let Some(load) = load {
        load.stop();
    }
    if starved {
        // The task runs again now that the load is gone: end its loop.
        drop(take_sender(&mailbox, Duration::from_secs(10)).expect("measured task resumes without load"));
    }
    let latencies = rt.block_on(waiter);

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    for latency in &latencies {
        histogram.saturating_record(latency.as_nanos() as u64);
    }
    WakeRun {
        nanos: QUANTILES.map(|(_, q)| histogram.value_at_quantile(q)),
        worst: histogram.max(),
        served: latencies.len(),
        starved,
        cpu_cores,
        mean_gap_nanos,
        workers,
    }
}

// ---------------------------------------------------------------------------
// Criterion and the table

fn benches(c: &mut Criterion) {
    let kaelix_executor = start_kaelix();
    let kaelix = Kaelix(kaelix_executor.handle());
    let tokio_runtime = start_tokio();
    let tokio = Tokio(tokio_runtime.handle().clone());

    let mut g = c.benchmark_group("executor");
    g.throughput(Throughput::Elements(SPAWNED_TASKS));
    g.bench_function("spawn-join-10k/kaelix", |b| b.iter(|| spawn_and_join(&kaelix, SPAWNED_TASKS)));
    g.bench_function("spawn-join-10k/tokio", |b| b.iter(|| spawn_and_join(&tokio, SPAWNED_TASKS)));
    g.finish();

    kaelix_executor.shutdown(Duration::from_secs(1));
}

/// The wake-to-poll scenarios: (name, measured task, load, pause before
/// each wake).
const SCENARIOS: [(&str, Priority, Option<Priority>, Duration); 4] = [
    ("idle", Priority::Normal, None, PAUSE_BEFORE_WAKE),
    ("idle, parked", Priority::Normal, None, PAUSE_PARKED),
    ("saturated (Normal load)", Priority::Normal, Some(Priority::Normal), PAUSE_BEFORE_WAKE),
    ("Critical, Background load", Priority::Critical, Some(Priority::Background), PAUSE_BEFORE_WAKE),
];

/// How long the runtime is left without any task to measure its idle CPU.
const FULLY_IDLE: Duration = Duration::from_secs(2);

/// Everything one fresh runtime measures.
struct Run {
    tasks_per_second: f64,
    wakes: [WakeRun; SCENARIOS.len()],
    /// CPU in cores over [`FULLY_IDLE`] with no task at all (after the
    /// scenarios: any spin after the last work is included).
    idle_cpu_cores: f64,
}

fn measure<R: Runtime>(rt: &R) -> Run {
    tasks_per_second(rt); // warm-up
    let tasks_per_second = tasks_per_second(rt);
    let wakes = SCENARIOS.map(|(_, measured, load, pause)| wake_to_poll(rt, measured, load, pause));
    let (cpu_before, wall_before) = (process_cpu_seconds(), Instant::now());
    thread::sleep(FULLY_IDLE);
    let idle_cpu_cores = (process_cpu_seconds() - cpu_before) / wall_before.elapsed().as_secs_f64();
    Run { tasks_per_second, wakes, idle_cpu_cores }
}

/// The median, or `None` for no values.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn print_row(metric: &str, unit: &str, kaelix: Option<f64>, tokio: Option<f64>) {
    let cell = |v: Option<f64>| v.map_or("starved".to_owned(), |v| format!("{v:.2}"));
    let ratio = kaelix.zip(tokio).filter(|&(_, t)| t > 0.0).map_or("-".to_owned(), |(k, t)| format!("{:.2}", k / t));
    println!("{metric:<44} {:>10} {:>10} {unit:<4} {ratio:>12}", cell(kaelix), cell(tokio));
}

fn table() {
    let mut kaelix_runs = Vec::new();
    let mut tokio_runs = Vec::new();
    for _ in 0..REPETITIONS {
        let executor = start_kaelix();
        kaelix_runs.push(measure(&Kaelix(executor.handle())));
        executor.shutdown(Duration::from_secs(1));
        let runtime = start_tokio();
        tokio_runs.push(measure(&Tokio(runtime.handle().clone())));
        drop(runtime);
    }

    println!();
    println!(
        "executor: {WORKERS} workers each (kaelix pinned, its default; tokio unpinned); \
         medians of {REPETITIONS} fresh runtimes, {WAKES_PER_RUN} wakes per run"
    );
    println!("targets: P99 wake-to-poll < 10 µs; throughput ≥ tokio");
    println!("{:<44} {:>10} {:>10} {:<4} {:>12}", "metric", "kaelix", "tokio", "unit", "kaelix/tokio");
    let throughput = |runs: &[Run]| median(runs.iter().map(|r| r.tasks_per_second / 1e6).collect());
    print_row("spawn+join 10k tasks", "M/s", throughput(&kaelix_runs), throughput(&tokio_runs));
    for (i, (scenario, ..)) in SCENARIOS.iter().enumerate() {
        for (q, (name, _)) in QUANTILES.iter().enumerate() {
            // Starved runs have no meaningful percentiles: they are reported below.
            let micros = |runs: &[Run]| {
                median(
                    runs.iter().map(|r| &r.wakes[i]).filter(|w| !w.starved).map(|w| w.nanos[q] as f64 / 1e3).collect(),
                )
            };
            print_row(&format!("wake-to-poll {scenario} {name}"), "µs", micros(&kaelix_runs), micros(&tokio_runs));
        }
        let cpu = |runs: &[Run]| median(runs.iter().map(|r| r.wakes[i].cpu_cores * 100.0).collect());
        print_row(&format!("CPU during {scenario}"), "%", cpu(&kaelix_runs), cpu(&tokio_runs));
        let gap = |runs: &[Run]| median(runs.iter().map(|r| r.wakes[i].mean_gap_nanos as f64 / 1e3).collect());
        print_row(&format!("wake gap {scenario} (mean)"), "µs", gap(&kaelix_runs), gap(&tokio_runs));
        for (runtime, runs) in [("kaelix", &kaelix_runs), ("tokio", &tokio_runs)] {
            let starved: Vec<&WakeRun> = runs.iter().map(|r| &r.wakes[i]).filter(|w| w.starved).collect();
            if !starved.is_empty() {
                let served: Vec<usize> = starved.iter().map(|w| w.served).collect();
                let worst: Vec<String> = starved.iter().map(|w| format!("{:.2} s", w.worst as f64 / 1e9)).collect();
                println!(
                    "  ! {runtime}: {}/{REPETITIONS} runs starved: a wake unserved for {STARVATION_LIMIT:?} \
                     until the load stopped (wakes served {served:?}, worst {worst:?})",
                    starved.len()
                );
            }
        }
    }

    let idle_cpu = |runs: &[Run]| median(runs.iter().map(|r| r.idle_cpu_cores * 100.0).collect());
    print_row(&format!("CPU with no task at all ({FULLY_IDLE:?})"), "%", idle_cpu(&kaelix_runs), idle_cpu(&tokio_runs));

    // Cross-check: the executor's own wake-to-poll histogram on an idle run,
    // and what each worker did in the two idle scenarios (who polled the
    // measured task, how often each parked, how many wakes a spin caught).
    let executor = start_kaelix();
    let measured = wake_to_poll(&Kaelix(executor.handle()), Priority::Normal, None, PAUSE_BEFORE_WAKE);
    let internal = executor.wake_to_poll();
    let quantile = |q| internal.quantile(q).map_or(0.0, |d| d.as_nanos() as f64 / 1e3);
    println!(
        "kaelix idle, one run: measured P50 {:.2} / P99 {:.2} µs; executor's own histogram P50 {:.2} / P99 {:.2} µs \
         ({} polls)",
        measured.nanos[0] as f64 / 1e3,
        measured.nanos[1] as f64 / 1e3,
        quantile(0.50),
        quantile(0.99),
        internal.count(),
    );
    let parked = wake_to_poll(&Kaelix(executor.handle()), Priority::Normal, None, PAUSE_PARKED);
    for (scenario, run) in [("idle", &measured), ("idle, parked", &parked)] {
        let per_worker: Vec<String> = run
            .workers
            .iter()
            .flatten()
            .enumerate()
            .map(|(w, c)| format!("w{w} polls {} parks {} spin hits {}", c.polls, c.parks, c.spin_hits))
            .collect();
        println!("kaelix {scenario}, {} wakes: {}", run.served, per_worker.join("; "));
    }
    executor.shutdown(Duration::from_secs(1));
}

/// `executor --spawn-join-only kaelix|tokio ROUNDS`: only spawn+join, ROUNDS
/// rounds of [`SPAWNED_TASKS`] on one fresh runtime, then exit — for
/// `perf stat` / `perf record`, whose counts divide by the tasks printed
/// (the runtime's start and stop are in them too, a small constant).
fn spawn_join_only(runtime: &str, rounds: u64) {
    let start = Instant::now();
    match runtime {
        "kaelix" => {
            let executor = start_kaelix();
            let rt = Kaelix(executor.handle());
            for _ in 0..rounds {
                black_box(spawn_and_join(&rt, SPAWNED_TASKS));
            }
            executor.shutdown(Duration::from_secs(1));
        }
        "tokio" => {
            let runtime = start_tokio();
            let rt = Tokio(runtime.handle().clone());
            for _ in 0..rounds {
                black_box(spawn_and_join(&rt, SPAWNED_TASKS));
            }
        }
        other => panic!("--spawn-join-only kaelix|tokio ROUNDS, not {other}"),
    }
    let tasks = rounds * SPAWNED_TASKS;
    println!(
        "{runtime}: {tasks} tasks spawned and joined in {:.3} s ({:.3} M/s)",
        start.elapsed().as_secs_f64(),
        tasks as f64 / start.elapsed().as_secs_f64() / 1e6
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--spawn-join-only") {
        let runtime = args.get(at + 1).map_or("kaelix", String::as_str);
        let rounds = args.get(at + 2).and_then(|r| r.parse().ok()).unwrap_or(100);
        spawn_join_only(runtime, rounds);
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    table();
}

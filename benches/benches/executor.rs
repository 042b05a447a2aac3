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
//!
//! After criterion, a table prints the medians over [`REPETITIONS`] fresh
//! runtimes (throughput and each percentile), and kaelix / tokio. Kaelix
//! runs with its default config (workers pinned to CPUs); tokio's workers
//! are not pinned.

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
/// a wake soon after the last (inside a 50 µs `idle_spin`, when
/// `KAELIX_IDLE_SPIN_US=50` turns kaelix's spin on).
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

/// Kaelix with its defaults; `KAELIX_IDLE_SPIN_US` sets `idle_spin` (off
/// by default) to measure what spinning buys and costs.
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
#[derive(Clone, Copy, Debug)]
struct WakeRun {
    nanos: [u64; QUANTILES.len()],
    worst: u64,
    served: usize,
    starved: bool,
    /// CPU the whole process used over the run, in cores (1.0: one core
    /// busy all along): the price of spinning, next to what it buys.
    cpu_cores: f64,
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
    let (cpu_before, wall_before) = (process_cpu_seconds(), Instant::now());
    for sender in senders.take(WAKES_PER_RUN) {
        let Some(sender) = sender else {
            starved = true;
            break;
        };
        thread::sleep(pause);
        let _ = sender.send(Instant::now());
    }
    let cpu_cores = (process_cpu_seconds() - cpu_before) / wall_before.elapsed().as_secs_f64();
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

/// Everything one fresh runtime measures.
struct Run {
    tasks_per_second: f64,
    wakes: [WakeRun; SCENARIOS.len()],
}

fn measure<R: Runtime>(rt: &R) -> Run {
    tasks_per_second(rt); // warm-up
    Run {
        tasks_per_second: tasks_per_second(rt),
        wakes: SCENARIOS.map(|(_, measured, load, pause)| wake_to_poll(rt, measured, load, pause)),
    }
}

/// The median, or `None` for no values.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn print_row(metric: &str, unit: &str, kaelix: Option<f64>, tokio: Option<f64>) {
    let cell = |v: Option<f64>| v.map_or("starved".to_owned(), |v| format!("{v:.2}"));
    let ratio = kaelix.zip(tokio).map_or("-".to_owned(), |(k, t)| format!("{:.2}", k / t));
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

    // Cross-check: the executor's own wake-to-poll histogram on an idle run.
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
    executor.shutdown(Duration::from_secs(1));
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    table();
}

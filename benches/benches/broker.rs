//! The embedded broker against `tokio::sync::broadcast` and
//! `crossbeam-channel`, side by side in one run.
//!
//! * `broker/message/*` (criterion): building a message with the builder
//!   (topic validated from text, payload, key), and the stamp the broker
//!   adds on publish (a UUID v7 from the seeded rng).
//! * `broker/deliver/*` (criterion): publish → deliver on one thread, no
//!   executor. Kaelix runs on a [`ManualClock`] with `try_publish` and
//!   `try_next` (the broker is synchronous underneath); tokio broadcast
//!   with `send` / `try_recv`; crossbeam with `bounded` channels (for the
//!   fan-out, one channel per subscriber and the publisher sends to each).
//!   Each iteration publishes [`ROUND`] messages then drains every
//!   subscriber; throughput is messages *delivered* per second.
//!   Kaelix also runs `publish_batch` of [`BATCH`].
//!
//! After criterion, a table prints (medians of [`REPETITIONS`] samples):
//!
//! 1. message creation cost;
//! 2. delivered messages per second for the cases above, plus a
//!    cross-thread run (publisher task and subscriber task on a 2-worker
//!    runtime, backpressure instead of drops: Kaelix `Strategy::Block`,
//!    tokio `mpsc` — broadcast has no backpressure — crossbeam `bounded`
//!    between two threads);
//! 3. publish → deliver latency (hdrhistogram): a publisher stamps
//!    `std::time::Instant` and publishes every [`PAUSE`]; the subscriber
//!    (Kaelix `next().await` on the real executor, tokio `recv().await`,
//!    crossbeam blocking `recv` on a thread) records now − stamp. Twice:
//!    publisher on an OS thread outside the runtime, and publisher as a
//!    task on the same runtime (it yields after each publish);
//! 4. memory per idle subscription with [`IDLE_SUBS`] subscriptions on
//!    distinct patterns, as process RSS delta / count, each measured in a
//!    fresh child process (this binary re-run with [`PROBE_FLAG`]);
//! 5. topics matched per second against a [`IDLE_SUBS`]-subscription
//!    `SubscriptionIndex` (cached hot set, cache churn, uncached), and the
//!    cost of an insert beside many literal siblings.
//!
//! Topics are created with a bounded retention ([`RETAINED`] records): the
//! default retention keeps every message forever.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a benchmark measures real time, runs threads and reads /proc"
)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use hdrhistogram::Histogram;
use kaelix_broker::message::{Message, MessageBatch, new_message_id};
use kaelix_broker::partition::RetentionPolicy;
use kaelix_broker::registry::{StreamEntry, StreamId};
use kaelix_broker::subscription::SubscriptionIndex;
use kaelix_broker::testing::ManualClock;
use kaelix_broker::topic::{Pattern, Topic};
use kaelix_broker::{Broker, BrokerConfig, PublishOutcome, Strategy, SubscribeOptions, Subscription, TopicConfig};
use kaelix_core::runtime::Priority;
use kaelix_core::{WallTime, rng};
use kaelix_runtime_real::{Executor, ExecutorConfig};
use tokio::sync::{broadcast, mpsc};

/// The allocator the `kaelix` binary uses, so these figures match its.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPIC: &str = "orders.eu";
const PATTERN: &str = "orders.>";
const PAYLOAD: &[u8] = b"{\"order\":17,\"sku\":\"widget-9000\",\"qty\":42,\"eur\":1234}";
const KEY: &[u8] = b"customer-42";
/// Messages published per round before the subscribers drain (below every
/// buffer's capacity: nothing is dropped).
const ROUND: usize = 256;
const FANOUT: usize = 8;
const BATCH: usize = 64;
/// Buffer capacity of every channel and subscription.
const CAPACITY: usize = 1024;
/// Records a partition keeps.
const RETAINED: u64 = 4096;
const WORKERS: usize = 2;
const REPETITIONS: usize = 5;
const SAMPLE: Duration = Duration::from_millis(100);
/// Messages per cross-thread throughput run.
const STREAMED: usize = 200_000;
/// Latency: messages per run, the first ones ignored, one every PAUSE.
const LATENCY_MESSAGES: usize = 20_000;
const LATENCY_WARMUP: usize = 1_000;
const PAUSE: Duration = Duration::from_micros(20);
/// Subscriptions for the memory and match-rate measurements.
const IDLE_SUBS: usize = 1_000_000;
/// Distinct topics looked up when the cache cannot hold them all.
const WIDE_TOPICS: usize = 64 * 1024;
/// First argument that makes this binary a memory probe (see `rss_probe`).
const PROBE_FLAG: &str = "--broker-rss-probe";
const PROBE_TAG: &str = "RSS_PROBE";
/// An argument that runs only the latency section of the table (no
/// criterion, no other section).
const LATENCY_FLAG: &str = "--latency-only";

// ---------------------------------------------------------------------------
// Helpers

fn template() -> Message {
    Message::builder()
        .topic(TOPIC)
        .payload(Bytes::from_static(PAYLOAD))
        .key(Bytes::from_static(KEY))
        .build()
        .expect("a valid message")
}

fn bounded_topic() -> TopicConfig {
    TopicConfig {
        partitions: 1,
        retention: RetentionPolicy { max_records: Some(RETAINED), ..Default::default() },
        ..TopicConfig::default()
    }
}

fn manual_broker() -> Broker<ManualClock> {
    let broker = Broker::new(ManualClock::default(), rng::seeded(7), BrokerConfig::default());
    broker.create_topic(TOPIC, bounded_topic()).expect("topic");
    broker
}

fn subscribe(broker: &Broker<ManualClock>, strategy: Strategy) -> Subscription<ManualClock> {
    broker
        .subscribe(
            PATTERN,
            SubscribeOptions { strategy: Some(strategy), queue_group: None, ..SubscribeOptions::default() },
        )
        .expect("subscribe")
}

/// Polls `future` once: for futures that cannot wait here (a publish no
/// subscriber can block).
fn ready_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("would have waited"),
    }
}

/// Median over `REPETITIONS` samples of items per second, `f` returning the
/// items it did; each sample runs `f` for at least `sample`.
fn rate(sample: Duration, mut f: impl FnMut() -> u64) -> f64 {
    let mut rates: Vec<f64> = (0..REPETITIONS)
        .map(|_| {
            let start = Instant::now();
            let mut items = 0;
            while start.elapsed() < sample {
                items += f();
            }
            items as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut rates)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Kaelix's executor: `pinned` is its default (workers pinned to CPUs).
fn kaelix_executor(pinned: bool) -> Executor {
    Executor::new(ExecutorConfig { workers_per_node: Some(WORKERS), pin_workers: pinned, ..Default::default() })
        .expect("kaelix starts")
}

/// Polls, steals and parks over every worker.
fn executor_counters(executor: &Executor) -> [u64; 3] {
    executor.worker_metrics().iter().fold([0; 3], |[p, s, k], w| [p + w.polls, s + w.steals, k + w.parks])
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(WORKERS).build().expect("tokio starts")
}

// ---------------------------------------------------------------------------
// Single-thread publish → deliver

/// One publisher and its subscribers, driven by hand.
trait Fanout {
    /// Publishes `ROUND` messages, drains every subscriber; returns deliveries.
    fn round(&mut self) -> u64;
}

struct KaelixFanout {
    broker: Broker<ManualClock>,
    subs: Vec<Subscription<ManualClock>>,
    message: Message,
    batched: bool,
}

impl KaelixFanout {
    fn new(subscribers: usize, batched: bool) -> Self {
        let broker = manual_broker();
        let subs = (0..subscribers).map(|_| subscribe(&broker, Strategy::DropOldest { capacity: CAPACITY })).collect();
        KaelixFanout { broker, subs, message: template(), batched }
    }
}

impl Fanout for KaelixFanout {
    fn round(&mut self) -> u64 {
        if self.batched {
            for _ in 0..ROUND / BATCH {
                let batch: MessageBatch = (0..BATCH).map(|_| self.message.clone()).collect();
                black_box(ready_now(self.broker.publish_batch(batch)).expect("published"));
            }
        } else {
            for _ in 0..ROUND {
                match self.broker.try_publish(self.message.clone()) {
                    Ok(PublishOutcome::Published(p)) => _ = black_box(p),
                    other => panic!("publish failed: {other:?}"),
                }
            }
        }
        let mut delivered = 0;
        for sub in &mut self.subs {
            while let Some(m) = sub.try_next() {
                black_box(m);
                delivered += 1;
            }
        }
        assert_eq!(delivered, (ROUND * self.subs.len()) as u64, "nothing dropped");
        delivered
    }
}

struct BroadcastFanout {
    tx: broadcast::Sender<Message>,
    rxs: Vec<broadcast::Receiver<Message>>,
    message: Message,
}

impl BroadcastFanout {
    fn new(subscribers: usize) -> Self {
        let (tx, rx) = broadcast::channel(CAPACITY);
        let rxs = (0..subscribers).map(|_| rx.resubscribe()).collect();
        BroadcastFanout { tx, rxs, message: template() }
    }
}

impl Fanout for BroadcastFanout {
    fn round(&mut self) -> u64 {
        for _ in 0..ROUND {
            self.tx.send(self.message.clone()).expect("receivers exist");
        }
        let mut delivered = 0;
        for rx in &mut self.rxs {
            while let Ok(m) = rx.try_recv() {
                black_box(m);
                delivered += 1;
            }
        }
        assert_eq!(delivered, (ROUND * self.rxs.len()) as u64, "nothing lagged");
        delivered
    }
}

/// One bounded channel per subscriber; the publisher sends to each.
struct CrossbeamFanout {
    channels: Vec<(crossbeam_channel::Sender<Message>, crossbeam_channel::Receiver<Message>)>,
    message: Message,
}

impl CrossbeamFanout {
    fn new(subscribers: usize) -> Self {
        let channels = (0..subscribers).map(|_| crossbeam_channel::bounded(CAPACITY)).collect();
        CrossbeamFanout { channels, message: template() }
    }
}

impl Fanout for CrossbeamFanout {
    fn round(&mut self) -> u64 {
        for _ in 0..ROUND {
            for (tx, _) in &self.channels {
                tx.try_send(self.message.clone()).expect("room");
            }
        }
        let mut delivered = 0;
        for (_, rx) in &self.channels {
            while let Ok(m) = rx.try_recv() {
                black_box(m);
                delivered += 1;
            }
        }
        delivered
    }
}

/// The single-thread cases: (label, subscribers, constructor).
type FanoutCase = (&'static str, usize, fn(usize) -> Box<dyn Fanout>);

const FANOUT_CASES: [FanoutCase; 8] = [
    ("kaelix/1to1", 1, |n| Box::new(KaelixFanout::new(n, false))),
    ("tokio-broadcast/1to1", 1, |n| Box::new(BroadcastFanout::new(n))),
    ("crossbeam/1to1", 1, |n| Box::new(CrossbeamFanout::new(n))),
    ("kaelix/1to8", FANOUT, |n| Box::new(KaelixFanout::new(n, false))),
    ("tokio-broadcast/1to8", FANOUT, |n| Box::new(BroadcastFanout::new(n))),
    ("crossbeam/1to8", FANOUT, |n| Box::new(CrossbeamFanout::new(n))),
    ("kaelix-batch64/1to1", 1, |n| Box::new(KaelixFanout::new(n, true))),
    ("kaelix-batch64/1to8", FANOUT, |n| Box::new(KaelixFanout::new(n, true))),
];

// ---------------------------------------------------------------------------
// Cross-thread throughput (backpressure, no drops)

/// Delivered per second, and per message: publishes that waited, task
/// polls, worker parks.
fn kaelix_streamed() -> (f64, [f64; 3]) {
    let executor = kaelix_executor(true);
    let broker = manual_broker();
    let mut sub = subscribe(&broker, Strategy::Block { capacity: CAPACITY });
    let start = Instant::now();
    let consumer = executor.spawn(Priority::Normal, "bench-subscriber", async move {
        for _ in 0..STREAMED {
            black_box(sub.next().await.expect("open"));
        }
    });
    let message = template();
    let stats = broker.clone();
    let publisher = executor.spawn(Priority::Normal, "bench-publisher", async move {
        for _ in 0..STREAMED {
            broker.publish(message.clone()).await.expect("published");
        }
    });
    executor.block_on(async move {
        publisher.await.expect("publisher");
        consumer.await.expect("subscriber");
    });
    let rate = STREAMED as f64 / start.elapsed().as_secs_f64();
    let [polls, _, parks] = executor_counters(&executor);
    executor.shutdown(Duration::from_secs(1));
    let per_message = |n: u64| n as f64 / STREAMED as f64;
    (rate, [per_message(stats.stats().blocked_publishes), per_message(polls), per_message(parks)])
}

fn tokio_streamed() -> (f64, [f64; 3]) {
    let runtime = tokio_runtime();
    let (tx, mut rx) = mpsc::channel::<Message>(CAPACITY);
    let start = Instant::now();
    let consumer = runtime.spawn(async move {
        for _ in 0..STREAMED {
            black_box(rx.recv().await.expect("open"));
        }
    });
    let message = template();
    let publisher = runtime.spawn(async move {
        for _ in 0..STREAMED {
            tx.send(message.clone()).await.expect("open");
        }
    });
    runtime.block_on(async move {
        publisher.await.expect("publisher");
        consumer.await.expect("subscriber");
    });
    (STREAMED as f64 / start.elapsed().as_secs_f64(), [0.0; 3])
}

fn crossbeam_streamed() -> (f64, [f64; 3]) {
    let (tx, rx) = crossbeam_channel::bounded::<Message>(CAPACITY);
    let start = Instant::now();
    let consumer = thread::spawn(move || {
        for _ in 0..STREAMED {
            black_box(rx.recv().expect("open"));
        }
    });
    let message = template();
    for _ in 0..STREAMED {
        tx.send(message.clone()).expect("open");
    }
    consumer.join().expect("subscriber");
    (STREAMED as f64 / start.elapsed().as_secs_f64(), [0.0; 3])
}

/// Median of three runs, with its counters.
fn streamed(f: fn() -> (f64, [f64; 3])) -> (f64, [f64; 3]) {
    let mut runs: Vec<(f64, [f64; 3])> = (0..3).map(|_| f()).collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs[1]
}

// ---------------------------------------------------------------------------
// Latency

/// Send instants by sequence number (the message's offset), as nanoseconds
/// since `base`.
struct Stamps {
    base: Instant,
    sent: Vec<AtomicU64>,
}

impl Stamps {
    fn new() -> Arc<Self> {
        Arc::new(Stamps { base: Instant::now(), sent: (0..LATENCY_MESSAGES).map(|_| AtomicU64::new(0)).collect() })
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn stamp(&self, seq: usize) {
        self.sent[seq].store(self.now(), Ordering::Release);
    }

    /// Records the latency of `message` (delivered now); true after the last.
    fn received(&self, message: &Message, hist: &mut Histogram<u64>) -> bool {
        let now = self.now();
        let seq = message.offset().expect("sequenced") as usize;
        if seq >= LATENCY_WARMUP {
            hist.record(now.saturating_sub(self.sent[seq].load(Ordering::Acquire)).max(1)).expect("in range");
        }
        seq + 1 == LATENCY_MESSAGES
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("bounds")
}

/// The message of sequence number `seq` for the peers (Kaelix's broker
/// assigns the offset itself).
fn sequenced(message: &Message, seq: usize) -> Message {
    message.clone().with_partition_offset(0, seq as u64)
}

/// The latencies, and worker (steals, parks) per message.
fn kaelix_latency(publisher_task: bool, pinned: bool) -> (Histogram<u64>, (f64, f64)) {
    let executor = kaelix_executor(pinned);
    let broker = manual_broker();
    let mut sub = subscribe(&broker, Strategy::DropOldest { capacity: CAPACITY });
    let stamps = Stamps::new();
    let waiting = Arc::new(AtomicBool::new(false));
    let consumer = executor.spawn(Priority::Normal, "bench-subscriber", {
        let (stamps, waiting) = (stamps.clone(), waiting.clone());
        async move {
            let mut hist = histogram();
            waiting.store(true, Ordering::Release);
            while let Some(m) = sub.next().await {
                if stamps.received(&m, &mut hist) {
                    break;
                }
            }
            hist
        }
    });
    while !waiting.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let message = template();
    if publisher_task {
        let publisher = executor.spawn(Priority::Normal, "bench-publisher", {
            let stamps = stamps.clone();
            async move {
                for seq in 0..LATENCY_MESSAGES {
                    kaelix_benches::spin_for(PAUSE);
                    stamps.stamp(seq);
                    broker.publish(message.clone()).await.expect("published");
                    kaelix_benches::yield_now().await;
                }
            }
        });
        executor.block_on(publisher).expect("publisher");
    } else {
        for seq in 0..LATENCY_MESSAGES {
            kaelix_benches::spin_for(PAUSE);
            stamps.stamp(seq);
            ready_now(broker.publish(message.clone())).expect("published");
        }
    }
    let hist = executor.block_on(consumer).expect("subscriber");
    let [_, steals, parks] = executor_counters(&executor);
    executor.shutdown(Duration::from_secs(1));
    let per_message = |n: u64| n as f64 / LATENCY_MESSAGES as f64;
    (hist, (per_message(steals), per_message(parks)))
}

fn tokio_latency(publisher_task: bool) -> Histogram<u64> {
    let runtime = tokio_runtime();
    let (tx, mut rx) = broadcast::channel::<Message>(CAPACITY);
    let stamps = Stamps::new();
    let waiting = Arc::new(AtomicBool::new(false));
    let consumer = runtime.spawn({
        let (stamps, waiting) = (stamps.clone(), waiting.clone());
        async move {
            let mut hist = histogram();
            waiting.store(true, Ordering::Release);
            loop {
                match rx.recv().await {
                    Ok(m) if stamps.received(&m, &mut hist) => break,
                    Ok(_) => {}
                    Err(e) => panic!("broadcast: {e}"),
                }
            }
            hist
        }
    });
    while !waiting.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let message = template();
    if publisher_task {
        let publisher = runtime.spawn({
            let stamps = stamps.clone();
            async move {
                for seq in 0..LATENCY_MESSAGES {
                    kaelix_benches::spin_for(PAUSE);
                    stamps.stamp(seq);
                    tx.send(sequenced(&message, seq)).expect("receiver");
                    tokio::task::yield_now().await;
                }
            }
        });
        runtime.block_on(publisher).expect("publisher");
    } else {
        for seq in 0..LATENCY_MESSAGES {
            kaelix_benches::spin_for(PAUSE);
            stamps.stamp(seq);
            tx.send(sequenced(&message, seq)).expect("receiver");
        }
    }
    runtime.block_on(consumer).expect("subscriber")
}

fn crossbeam_latency() -> Histogram<u64> {
    let (tx, rx) = crossbeam_channel::bounded::<Message>(CAPACITY);
    let stamps = Stamps::new();
    let consumer = thread::spawn({
        let stamps = stamps.clone();
        move || {
            let mut hist = histogram();
            while let Ok(m) = rx.recv() {
                if stamps.received(&m, &mut hist) {
                    break;
                }
            }
            hist
        }
    });
    let message = template();
    for seq in 0..LATENCY_MESSAGES {
        kaelix_benches::spin_for(PAUSE);
        stamps.stamp(seq);
        tx.send(sequenced(&message, seq)).expect("receiver");
    }
    consumer.join().expect("subscriber")
}

// ---------------------------------------------------------------------------
// Memory per idle subscription (child processes)

fn idle_pattern(i: usize) -> String {
    format!("tenant{}.device{i}.>", i % 1000)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Creates `IDLE_SUBS` idle subscriptions of one kind, prints
/// `RSS_PROBE <rss before KiB> <rss after KiB> <ns per subscribe> <extra>`
/// and exits without tearing them down.
fn rss_probe(kind: &str) -> ! {
    let before;
    let start;
    let mut extra = 0;
    // Held until the second reading.
    let alive: Box<dyn std::any::Any> = match kind {
        "kaelix" => {
            let broker = Broker::new(ManualClock::default(), rng::seeded(3), BrokerConfig::default());
            let mut subs = Vec::with_capacity(IDLE_SUBS);
            before = rss_kib();
            start = Instant::now();
            for i in 0..IDLE_SUBS {
                subs.push(broker.subscribe(&idle_pattern(i), SubscribeOptions::default()).expect("subscribe"));
            }
            Box::new((broker, subs))
        }
        "index" => {
            let mut index = SubscriptionIndex::<StreamId>::new();
            before = rss_kib();
            start = Instant::now();
            for i in 0..IDLE_SUBS {
                index.insert(&Pattern::new(idle_pattern(i)).expect("pattern"), StreamId(i as u64));
            }
            extra = index.approx_heap_bytes();
            Box::new(index)
        }
        "tokio-broadcast" => {
            let mut channels = Vec::with_capacity(IDLE_SUBS);
            before = rss_kib();
            start = Instant::now();
            for _ in 0..IDLE_SUBS {
                channels.push(broadcast::channel::<Message>(16));
            }
            Box::new(channels)
        }
        "crossbeam" => {
            let mut channels = Vec::with_capacity(IDLE_SUBS);
            before = rss_kib();
            start = Instant::now();
            for _ in 0..IDLE_SUBS {
                channels.push(crossbeam_channel::bounded::<Message>(16));
            }
            Box::new(channels)
        }
        other => panic!("unknown probe {other}"),
    };
    let ns = start.elapsed().as_nanos() / IDLE_SUBS as u128;
    let after = rss_kib();
    black_box(&alive);
    println!("{PROBE_TAG} {before} {after} {ns} {extra}");
    // Exit without tearing a million subscriptions down.
    std::process::exit(0)
}

struct Probe {
    bytes_per_sub: f64,
    ns_per_sub: u64,
    extra: usize,
}

fn run_probe(kind: &str) -> Option<Probe> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe).args([PROBE_FLAG, kind]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix(PROBE_TAG))?;
    let f: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let [before, after, ns, extra] = f[..] else { return None };
    Some(Probe {
        bytes_per_sub: after.saturating_sub(before) as f64 * 1024.0 / IDLE_SUBS as f64,
        ns_per_sub: ns,
        extra: extra as usize,
    })
}

// ---------------------------------------------------------------------------
// Match rate against the 1M-subscription index

struct MatchRates {
    insert_ns: f64,
    hot: f64,
    hot_hit_ratio: f64,
    churn: f64,
    churn_hit_ratio: f64,
    uncached: f64,
    matched_fraction: f64,
    heap_bytes: usize,
}

/// `n` literal topics: half match one subscription (one or two tokens under
/// its `>`), a quarter share a tenant but miss, a quarter have no prefix in
/// the index.
fn topic_mix(n: usize, mut seed: u64) -> Vec<Topic> {
    (0..n)
        .map(|j| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let d = (seed % IDLE_SUBS as u64) as usize;
            let text = match j % 4 {
                0 => format!("tenant{}.device{d}.telemetry", d % 1000),
                1 => format!("tenant{}.device{d}.telemetry.temp", d % 1000),
                2 => format!("tenant{}.device{d}.telemetry", (d + 1) % 1000),
                _ => format!("fleet{d}.status"),
            };
            Topic::new(text).expect("topic")
        })
        .collect()
}

fn match_rates() -> MatchRates {
    let mut index = SubscriptionIndex::<u64>::new();
    let start = Instant::now();
    for i in 0..IDLE_SUBS {
        index.insert(&Pattern::new(idle_pattern(i)).expect("pattern"), i as u64);
    }
    let insert_ns = start.elapsed().as_nanos() as f64 / IDLE_SUBS as f64;
    let hot = topic_mix(index.cache_capacity() / 2, 0x9e37_79b9_7f4a_7c15);
    let wide = topic_mix(WIDE_TOPICS, 0xd1b5_4a32_d192_ed03);
    let matched_fraction =
        wide.iter().filter(|t| !index.matches_uncached(t).is_empty()).count() as f64 / wide.len() as f64;
    // Uniform random picks: a cyclic scan of a set larger than the cache
    // would be CLOCK's worst case (no hit at all).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let wide: Vec<Topic> = (0..4 * WIDE_TOPICS)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            wide[(seed % WIDE_TOPICS as u64) as usize].clone()
        })
        .collect();

    let lookups = |index: &mut SubscriptionIndex<u64>, topics: &[Topic], cached: bool| {
        let before = index.cache_stats();
        let rate = rate(SAMPLE * 2, || {
            for t in topics {
                if cached {
                    black_box(index.matches(t));
                } else {
                    black_box(index.matches_uncached(t));
                }
            }
            topics.len() as u64
        });
        let after = index.cache_stats();
        let (hits, misses) = (after.hits - before.hits, after.misses - before.misses);
        (rate, hits as f64 / (hits + misses).max(1) as f64)
    };
    let (hot_rate, hot_hit_ratio) = lookups(&mut index, &hot, true);
    let (churn, churn_hit_ratio) = lookups(&mut index, &wide, true);
    let (uncached, _) = lookups(&mut index, &wide, false);
    MatchRates {
        insert_ns,
        hot: hot_rate,
        hot_hit_ratio,
        churn,
        churn_hit_ratio,
        uncached,
        matched_fraction,
        heap_bytes: index.approx_heap_bytes(),
    }
}

/// Nanoseconds per insert into a trie node that already has `siblings`
/// literal children, at spread-out positions of its sorted child list.
fn wide_node_insert_ns(siblings: usize) -> f64 {
    let mut index = SubscriptionIndex::<u64>::new();
    for i in 0..siblings {
        // Ascending: each lands at the end of the list.
        index.insert(&Pattern::new(format!("fleet.d{i:08}.>")).expect("pattern"), i as u64);
    }
    let probes = 100;
    let patterns: Vec<Pattern> = (0..probes)
        .map(|j| Pattern::new(format!("fleet.d{:08}x.>", (j * 7919) % siblings)).expect("pattern"))
        .collect();
    let start = Instant::now();
    for (j, p) in patterns.iter().enumerate() {
        index.insert(p, (siblings + j) as u64);
    }
    start.elapsed().as_nanos() as f64 / probes as f64
}

// ---------------------------------------------------------------------------
// Criterion

fn stamped(message: &Message, rng: &mut kaelix_core::DetRng, wall: WallTime) -> Message {
    let mut m = message.clone();
    m.stamp(new_message_id(rng, wall), wall);
    m
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("broker/message");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    g.bench_function("build", |b| b.iter(|| black_box(template())));
    let message = template();
    let mut rng = rng::seeded(11);
    let wall = WallTime(1_767_225_600_000_000_000);
    g.bench_function("stamp", |b| b.iter(|| black_box(stamped(black_box(&message), &mut rng, wall))));
    g.bench_function("clone", |b| b.iter(|| black_box(black_box(&message).clone())));
    g.finish();

    let mut g = c.benchmark_group("broker/deliver");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(1));
    for (name, subscribers, new) in FANOUT_CASES {
        let mut fanout = new(subscribers);
        g.throughput(Throughput::Elements((ROUND * subscribers) as u64));
        g.bench_function(name, |b| b.iter(|| black_box(fanout.round())));
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// The table

/// The first three fields of /proc/loadavg: other work skews the latencies.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn per_sec(r: f64) -> String {
    if r >= 1e6 { format!("{:.2}M/s", r / 1e6) } else { format!("{:.0}k/s", r / 1e3) }
}

fn nanos(ns: f64) -> String {
    if ns >= 10_000.0 { format!("{:.1} µs", ns / 1e3) } else { format!("{ns:.0} ns") }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn row(label: &str, cells: [&str; 3], note: &str) {
    println!("  {label:<36} {:>24} {:>24} {:>24}  {note}", cells[0], cells[1], cells[2]);
}

fn table() {
    let width = 36 + 3 * 25;
    println!();
    println!("broker, side by side ({WORKERS} workers where a runtime runs; medians of {REPETITIONS} samples)");
    println!("  load average at start: {}", load_average());
    row("", ["kaelix", "tokio broadcast", "crossbeam"], "");
    println!("  {}", "-".repeat(width));

    println!("1. message creation (per message)");
    let message = template();
    let build_ns = 1e9
        / rate(SAMPLE, || {
            for _ in 0..1000 {
                black_box(template());
            }
            1000
        });
    let mut rng = rng::seeded(5);
    let wall = WallTime(1_767_225_600_000_000_000);
    let stamp_ns = 1e9
        / rate(SAMPLE, || {
            for _ in 0..1000 {
                black_box(stamped(&message, &mut rng, wall));
            }
            1000
        });
    row("build (topic text, payload, key)", [&nanos(build_ns), "-", "-"], "");
    row("clone + stamp (uuid v7 from rng)", [&nanos(stamp_ns), "-", "-"], "");
    println!(
        "  target < 1 µs to build: {} (size_of::<Message>() = {} B: a handle to a shared body, cloned into log and buffers)",
        met(build_ns < 1000.0),
        size_of::<Message>()
    );

    println!("2. publish -> deliver, messages delivered per second");
    let mut rates = Vec::new();
    for (name, subscribers, new) in FANOUT_CASES {
        let mut fanout = new(subscribers);
        rates.push((name, rate(SAMPLE, || fanout.round())));
    }
    let find = |name: &str| rates.iter().find(|(n, _)| *n == name).map_or(0.0, |(_, r)| *r);
    let cells = |a: &str, b: &str, c: &str| [per_sec(find(a)), per_sec(find(b)), per_sec(find(c))];
    let one = cells("kaelix/1to1", "tokio-broadcast/1to1", "crossbeam/1to1");
    row("1->1, one thread (try_*)", [&one[0], &one[1], &one[2]], "");
    let eight = cells("kaelix/1to8", "tokio-broadcast/1to8", "crossbeam/1to8");
    row("1->8 fan-out, one thread", [&eight[0], &eight[1], &eight[2]], "crossbeam: 8 channels, send to each");
    let b1 = per_sec(find("kaelix-batch64/1to1"));
    let b8 = per_sec(find("kaelix-batch64/1to8"));
    row("1->1 publish_batch(64)", [&b1, "-", "-"], "");
    row("1->8 publish_batch(64)", [&b8, "-", "-"], "");
    let ((k, [blocked, polls, parks]), (t, _), (x, _)) =
        (streamed(kaelix_streamed), streamed(tokio_streamed), streamed(crossbeam_streamed));
    row(
        "1->1 cross-thread, backpressure",
        [&per_sec(k), &per_sec(t), &per_sec(x)],
        "kaelix: Block(1024), publisher + subscriber tasks; tokio: mpsc tasks; crossbeam: 2 threads",
    );
    println!(
        "  {:<36} kaelix per message: {:.3} publishes waited, {:.3} task polls, {:.3} worker parks",
        "", blocked, polls, parks
    );
    let best = rates.iter().filter(|(n, _)| n.starts_with("kaelix")).map(|(_, r)| *r).fold(k, f64::max);
    println!(
        "  target >= 10M msg/s: {} (best kaelix {}; 1->1 {})",
        met(best >= 1e7),
        per_sec(best),
        per_sec(find("kaelix/1to1"))
    );

    latency_table();

    println!("4. memory per idle subscription, {IDLE_SUBS} on distinct patterns (RSS delta / count, fresh process)");
    let probes: Vec<Option<Probe>> =
        ["kaelix", "tokio-broadcast", "crossbeam", "index"].into_iter().map(run_probe).collect();
    let bytes =
        |p: &Option<Probe>| p.as_ref().map_or("probe failed".to_owned(), |p| format!("{:.0} B", p.bytes_per_sub));
    let ns = |p: &Option<Probe>| p.as_ref().map_or("-".to_owned(), |p| nanos(p.ns_per_sub as f64));
    row(
        "per subscription (RSS)",
        [&bytes(&probes[0]), &bytes(&probes[1]), &bytes(&probes[2])],
        &format!(
            "peers: one channel(16) per topic, pattern not stored; kaelix StreamEntry is {} B in a BTreeMap",
            size_of::<StreamEntry>()
        ),
    );
    row("time to create one", [&ns(&probes[0]), &ns(&probes[1]), &ns(&probes[2])], "");
    if let Some(p) = &probes[3] {
        row(
            "  of which routing index (RSS)",
            [&format!("{:.0} B", p.bytes_per_sub), "-", "-"],
            &format!("approx_heap_bytes: {:.0} B/sub", p.extra as f64 / IDLE_SUBS as f64),
        );
    }
    if let Some(p) = &probes[0] {
        println!("  target < 1 KB per idle stream: {}", met(p.bytes_per_sub < 1024.0));
    }

    println!("5. topics matched per second against {IDLE_SUBS} subscriptions (SubscriptionIndex)");
    let m = match_rates();
    row(
        "matches, hot set (cache)",
        [&per_sec(m.hot), "-", "-"],
        &format!("{} topics, hit ratio {:.2}", SubscriptionIndex::<u64>::new().cache_capacity() / 2, m.hot_hit_ratio),
    );
    row(
        "matches, 64Ki topics random (churn)",
        [&per_sec(m.churn), "-", "-"],
        &format!("hit ratio {:.2}", m.churn_hit_ratio),
    );
    row(
        "matches_uncached, 64Ki topics random",
        [&per_sec(m.uncached), "-", "-"],
        &format!("{:.0}% of topics match", m.matched_fraction * 100.0),
    );
    row(
        "insert (build the index)",
        [&nanos(m.insert_ns), "-", "-"],
        &format!("approx_heap_bytes {:.0} B/sub", m.heap_bytes as f64 / IDLE_SUBS as f64),
    );
    for siblings in [1_000, IDLE_SUBS] {
        row(
            &format!("insert beside {siblings} literal siblings"),
            [&nanos(wide_node_insert_ns(siblings)), "-", "-"],
            "one trie node's sorted children: cost grows with its width",
        );
    }
}

/// Section 3 of the table: publish → deliver latency (also run alone with
/// [`LATENCY_FLAG`], for repeated runs and profiles).
fn latency_table() {
    println!(
        "3. publish -> deliver latency, {} messages one every {} µs (p50 / p99 / p99.9 / max)",
        LATENCY_MESSAGES - LATENCY_WARMUP,
        PAUSE.as_micros()
    );
    let show = |h: &Histogram<u64>| {
        format!(
            "{:.1}/{:.1}/{:.0}/{:.0}",
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.value_at_quantile(0.999) as f64 / 1e3,
            h.max() as f64 / 1e3
        )
    };
    let ((k_thread, thread_counters), t_thread, x_thread) =
        (kaelix_latency(false, true), tokio_latency(false), crossbeam_latency());
    row(
        "thread -> awaiting task (µs)",
        [&show(&k_thread), &show(&t_thread), &show(&x_thread)],
        &format!(
            "crossbeam: thread -> blocking recv; kaelix per message: {:.2} steals, {:.2} parks",
            thread_counters.0, thread_counters.1
        ),
    );
    let ((k_task, steals), t_task) = (kaelix_latency(true, true), tokio_latency(true));
    row(
        "task -> task, same runtime (µs)",
        [&show(&k_task), &show(&t_task), "-"],
        &format!("publisher yields after each; kaelix per message: {:.2} steals, {:.2} parks", steals.0, steals.1),
    );
    let ((k_thread_unpinned, _), (k_task_unpinned, steals)) =
        (kaelix_latency(false, false), kaelix_latency(true, false));
    row("thread -> task, kaelix unpinned (µs)", [&show(&k_thread_unpinned), "-", "-"], "pin_workers: false");
    row(
        "task -> task, kaelix unpinned (µs)",
        [&show(&k_task_unpinned), "-", "-"],
        &format!("pin_workers: false; per message: {:.2} steals, {:.2} parks", steals.0, steals.1),
    );
    let p99 = k_thread.value_at_quantile(0.99).max(k_task.value_at_quantile(0.99));
    println!("  target p99 < 10 µs: {} (worst kaelix p99 {:.1} µs)", met(p99 < 10_000), p99 as f64 / 1e3);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(PROBE_FLAG) {
        rss_probe(args.get(2).map_or("", String::as_str));
    }
    if args.iter().any(|a| a == LATENCY_FLAG) {
        latency_table();
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    table();
}

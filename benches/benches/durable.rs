//! Durable produce throughput: the broker's durable topics on the real
//! runtime (files in a temporary directory, real `fsync`), side by side in
//! one run with the ceiling for the same bytes — a plain file appended
//! with `std::fs` and synced as often.
//!
//! Rows (medians of [`REPETITIONS`] runs of [`MESSAGES`] messages of
//! [`PAYLOAD`] bytes each; every publish awaited until acknowledged, i.e.
//! synced):
//!
//! 1. `EveryBatch`, one publisher sending `publish_batch` of 64: one sync
//!    per 64 records. Peer: one `write_all` of 64 framed records, then
//!    `sync_data`.
//! 2. `Interval { 1 ms }`, 64 concurrent publishers each publishing single
//!    messages and waiting for each acknowledgement: records written as
//!    they come, one sync per millisecond. Peer: rounds of 64 single-record
//!    writes, a sync no sooner than 1 ms after the previous one.
//! 3. A memory topic with the same publishers, for scale (no disk).
//!
//! Run: `cargo bench -p kaelix-benches --bench durable`.

#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a benchmark measures real time and writes real files"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration as StdDuration, Instant};

use bytes::Bytes;
use kaelix_broker::message::{Message, MessageBatch};
use kaelix_broker::partition::RetentionPolicy;
use kaelix_broker::storage::{DurableConfig, FlushPolicy, StorageKind};
use kaelix_broker::{Broker, BrokerConfig, TopicConfig};
use kaelix_core::NodeId;
use kaelix_core::runtime::{Priority, Spawner};
use kaelix_core::time::Duration;
use kaelix_runtime_real::{Executor, ExecutorConfig, NodeConfig, RealRuntime};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MESSAGES: usize = 64 * 256;
const PAYLOAD: usize = 128;
const REPETITIONS: usize = 5;
const PUBLISHERS: usize = 64;

fn scratch(tag: &str, rep: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kaelix-bench-durable-{}-{tag}-{rep}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn message(i: usize) -> Message {
    let mut payload = vec![0u8; PAYLOAD];
    payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Message::builder().topic("bench.durable").payload(Bytes::from(payload)).build().expect("valid")
}

fn topic(storage: StorageKind) -> TopicConfig {
    TopicConfig { partitions: 1, retention: RetentionPolicy::default(), storage }
}

/// Messages per second through the broker.
fn kaelix(storage: StorageKind, batched: bool, dir: &Path) -> f64 {
    let exec = Executor::new(ExecutorConfig::default()).expect("executor");
    let rt = RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(1), dir)).expect("runtime");
    let rate = exec.block_on({
        let rt = rt.clone();
        async move {
            let broker = Broker::open_durable(rt.clone(), BrokerConfig::default()).await.expect("opens");
            broker.create_topic("bench.durable", topic(storage)).expect("topic");
            let start = Instant::now();
            if batched {
                for chunk in 0..MESSAGES / 64 {
                    let batch: MessageBatch = (0..64).map(|i| message(chunk * 64 + i)).collect();
                    broker.publish_batch(batch).await.expect("published");
                }
            } else {
                let tasks: Vec<_> = (0..PUBLISHERS)
                    .map(|p| {
                        let broker = broker.clone();
                        rt.spawn(Priority::Normal, "publisher", async move {
                            for i in (p..MESSAGES).step_by(PUBLISHERS) {
                                broker.publish(message(i)).await.expect("published");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("publisher");
                }
            }
            let rate = MESSAGES as f64 / start.elapsed().as_secs_f64();
            broker.shutdown();
            rate
        }
    });
    drop(rt);
    exec.shutdown(Duration::from_secs(5));
    rate
}

/// The same bytes (framed records) appended to a plain file with
/// `std::fs`, under the same constraint as the broker's case.
///
/// * `Batch(n)`: one `write_all` of `n` framed records, then `sync_data`
///   (one producer sending batches and waiting for each).
/// * `Interval(clients, every)`: `clients` producers with one record
///   outstanding each: a round appends one record per producer (one write
///   each), waits until `every` has passed since the previous sync, then
///   `sync_data` acknowledges the whole round.
enum Peer {
    Batch(usize),
    Interval(usize, StdDuration),
}

fn plain_file(peer: Peer, dir: &Path) -> f64 {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("peer")).expect("file");
    let body = message(0).encode_to_bytes();
    let mut frame = Vec::with_capacity(body.len() + 8);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc(&body).to_le_bytes());
    frame.extend_from_slice(&body);
    let start = Instant::now();
    match peer {
        Peer::Batch(n) => {
            let mut buf = Vec::with_capacity(frame.len() * n);
            for _ in 0..MESSAGES / n {
                buf.clear();
                for _ in 0..n {
                    buf.extend_from_slice(&frame);
                }
                file.write_all(&buf).expect("write");
                file.sync_data().expect("sync");
            }
        }
        Peer::Interval(clients, every) => {
            let mut last_sync = Instant::now();
            for _ in 0..MESSAGES / clients {
                for _ in 0..clients {
                    file.write_all(&frame).expect("write");
                }
                let since = last_sync.elapsed();
                if since < every {
                    std::thread::sleep(every - since);
                }
                file.sync_data().expect("sync");
                last_sync = Instant::now();
            }
        }
    }
    MESSAGES as f64 / start.elapsed().as_secs_f64()
}

/// A checksum over the record, as the broker frames carry (CRC-32 of the
/// bytes, a cheap stand-in that costs about as much).
fn crc(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |h, &b| h.rotate_left(5) ^ u32::from(b))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probes
    }
    let every_batch =
        StorageKind::Durable(DurableConfig { flush: FlushPolicy::EveryBatch, ..DurableConfig::default() });
    let interval = StorageKind::Durable(DurableConfig {
        flush: FlushPolicy::Interval { max_delay: Duration::from_millis(1), max_bytes: 1 << 30 },
        ..DurableConfig::default()
    });
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("sync per batch of 64", Vec::new(), Vec::new()),
        ("sync every 1 ms, 64 publishers", Vec::new(), Vec::new()),
        ("memory topic, 64 publishers", Vec::new(), Vec::new()),
    ];
    for rep in 0..REPETITIONS {
        let dir = scratch("batch", rep);
        rows[0].1.push(kaelix(every_batch, true, &dir));
        rows[0].2.push(plain_file(Peer::Batch(64), &dir));
        let dir = scratch("interval", rep);
        rows[1].1.push(kaelix(interval, false, &dir));
        rows[1].2.push(plain_file(Peer::Interval(PUBLISHERS, StdDuration::from_millis(1)), &dir));
        let dir = scratch("memory", rep);
        rows[2].1.push(kaelix(StorageKind::Memory, false, &dir));
        let _ =
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("kaelix-bench-durable-{}", std::process::id())));
    }
    println!("\ndurable produce, {MESSAGES} messages of {PAYLOAD} B, medians of {REPETITIONS} runs");
    println!("{:<34} {:>16} {:>22} {:>8}", "case", "kaelix msg/s", "plain file msg/s", "ratio");
    for (name, k, p) in rows {
        let k = median(k);
        if p.is_empty() {
            println!("{name:<34} {k:>16.0} {:>22} {:>8}", "-", "-");
        } else {
            let p = median(p);
            println!("{name:<34} {k:>16.0} {p:>22.0} {:>7.2}x", k / p);
        }
    }
    for tag in ["batch", "interval", "memory"] {
        for rep in 0..REPETITIONS {
            let _ = std::fs::remove_dir_all(scratch(tag, rep));
        }
    }
}

//! Per-worker metrics and health.
//!
//! Every counter is a relaxed atomic written by its own worker only and
//! read by anyone (a snapshot may mix two instants; each number is exact).
//! Having one writer, a counter is bumped with a plain load and store
//! ([`bump`]), not an atomic read-modify-write, and the executor keeps each
//! worker's metrics on cache lines of their own.
//!
//! The wake-to-poll histogram has four buckets per power of two of
//! nanoseconds (≤ 25 % bucket width), which is enough to watch a P99 of a
//! few µs without a lock on the hot path; the benchmarks measure exact
//! latencies separately with hdrhistogram. It is sampled, so that a wake
//! and a poll need no clock reading in general: every wake from outside
//! the workers (IO, timers, other threads: the wakes whose latency
//! includes a queue hand-off and perhaps an unpark) and one in
//! [`WAKE_SAMPLE_INTERVAL`] wakes and spawns on a worker.
//!
//! A poll's start is stamped with the coarse clock (the kernel tick: a
//! few nanoseconds to read instead of tens), which is ample to see a
//! poll past a stall threshold of the order of a second.
//!
//! Health ([`HealthStatus`], the seed's name) is judged from a worker's recent operations — task
//! completions, where a panic counts as a failure — over the last one to two
//! windows of [`OUTCOME_WINDOW`] completions, and from whether its current
//! poll has run past the stall threshold.

use std::sync::atomic::{AtomicU64, Ordering};

use kaelix_core::time::Duration;

/// Completions per health window.
pub const OUTCOME_WINDOW: u64 = 1024;
/// One wake or spawn on a worker in this many is stamped for the
/// wake-to-poll histogram (see the module docs).
pub const WAKE_SAMPLE_INTERVAL: u32 = 16;

/// Adds one to a counter that only the calling thread writes.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}
const SUB_BUCKET_BITS: u32 = 2;
const BUCKETS: usize = 64 << SUB_BUCKET_BITS;

/// A lock-free latency histogram in nanoseconds (log-linear buckets).
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

fn bucket_of(nanos: u64) -> usize {
    if nanos < (1 << SUB_BUCKET_BITS) {
        return nanos as usize;
    }
    let magnitude = 63 - nanos.leading_zeros();
    let sub = (nanos >> (magnitude - SUB_BUCKET_BITS)) & ((1 << SUB_BUCKET_BITS) - 1);
    (((magnitude - SUB_BUCKET_BITS + 1) << SUB_BUCKET_BITS) as u64 + sub) as usize
}

/// The largest value that falls in `bucket` (what percentiles report).
fn bucket_upper(bucket: usize) -> u64 {
    let sub_count = 1usize << SUB_BUCKET_BITS;
    if bucket < sub_count {
        return bucket as u64;
    }
    let magnitude = (bucket >> SUB_BUCKET_BITS) as u32 + SUB_BUCKET_BITS - 1;
    let sub = (bucket & (sub_count - 1)) as u64;
    let low = (1u64 << magnitude) | (sub << (magnitude - SUB_BUCKET_BITS));
    low + (1u64 << (magnitude - SUB_BUCKET_BITS)) - 1
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn record(&self, nanos: u64) {
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The value at quantile `q` (0..=1): an upper bound within one bucket.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_nanos(bucket_upper(bucket)));
            }
        }
        unreachable!("rank {rank} is at most the total {total}")
    }

    /// Adds every sample of `other`.
    pub fn merge_from(&self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter().zip(other.buckets.iter()) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// Health of a worker or of the whole executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthStatus {
    /// Recent operations mostly succeed.
    Healthy,
    /// More than 10 % of recent operations failed.
    Degraded,
    /// More than half of recent operations failed, or a poll is stalled.
    Unhealthy,
    /// No operation yet to judge by.
    Unknown,
}

/// One worker's counters (see the module docs).
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    pub(crate) polls: AtomicU64,
    pub(crate) steals: AtomicU64,
    pub(crate) parks: AtomicU64,
    pub(crate) spin_hits: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) queue_depth: AtomicU64,
    pub(crate) wake_to_poll: LatencyHistogram,
    /// Coarse executor-clock nanoseconds at which the current poll began
    /// (0: none).
    pub(crate) poll_started: AtomicU64,
    window_ops: AtomicU64,
    window_failures: AtomicU64,
    previous_ops: AtomicU64,
    previous_failures: AtomicU64,
}

impl WorkerMetrics {
    /// A task finished: `ok` unless it panicked. Called by the owning worker only.
    pub(crate) fn record_outcome(&self, ok: bool) {
        bump(&self.completed);
        if !ok {
            bump(&self.panicked);
            bump(&self.window_failures);
        }
        let ops = self.window_ops.load(Ordering::Relaxed) + 1;
        if ops >= OUTCOME_WINDOW {
            self.previous_ops.store(ops, Ordering::Relaxed);
            self.previous_failures.store(self.window_failures.load(Ordering::Relaxed), Ordering::Relaxed);
            self.window_failures.store(0, Ordering::Relaxed);
            self.window_ops.store(0, Ordering::Relaxed);
        } else {
            self.window_ops.store(ops, Ordering::Relaxed);
        }
    }

    /// Failures and operations over the recent windows.
    fn recent(&self) -> (u64, u64) {
        let ops = self.window_ops.load(Ordering::Relaxed) + self.previous_ops.load(Ordering::Relaxed);
        let failures = self.window_failures.load(Ordering::Relaxed) + self.previous_failures.load(Ordering::Relaxed);
        (failures.min(ops), ops)
    }

    /// The worker's health at coarse executor time `now_nanos`.
    pub fn health(&self, now_nanos: u64, stall_threshold: Duration) -> HealthStatus {
        let started = self.poll_started.load(Ordering::Relaxed);
        if started != 0 && now_nanos.saturating_sub(started) > stall_threshold.as_nanos() as u64 {
            return HealthStatus::Unhealthy;
        }
        let (failures, ops) = self.recent();
        if ops == 0 {
            HealthStatus::Unknown
        } else if failures * 2 > ops {
            HealthStatus::Unhealthy
        } else if failures * 10 > ops {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }

    /// A snapshot of the counters.
    pub fn snapshot(&self) -> WorkerSnapshot {
        WorkerSnapshot {
            polls: self.polls.load(Ordering::Relaxed),
            steals: self.steals.load(Ordering::Relaxed),
            parks: self.parks.load(Ordering::Relaxed),
            spin_hits: self.spin_hits.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            panicked: self.panicked.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            wake_to_poll_p50: self.wake_to_poll.quantile(0.5),
            wake_to_poll_p99: self.wake_to_poll.quantile(0.99),
        }
    }
}

/// Counters of one worker at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSnapshot {
    /// Task polls.
    pub polls: u64,
    /// Tasks stolen from other workers or injectors of other pools.
    pub steals: u64,
    /// Times the worker parked for lack of work.
    pub parks: u64,
    /// Times work showed up while the worker spun before parking (each one
    /// a park and an unpark saved).
    pub spin_hits: u64,
    /// Tasks that finished here (panics included).
    pub completed: u64,
    /// Tasks that panicked here.
    pub panicked: u64,
    /// Tasks in the worker's local queues at its last poll.
    pub queue_depth: u64,
    /// Median wake-to-poll latency (bucket upper bound).
    pub wake_to_poll_p50: Option<Duration>,
    /// 99th percentile wake-to-poll latency (bucket upper bound).
    pub wake_to_poll_p99: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bound_their_values() {
        let mut last = 0;
        for v in (0..5000u64).chain([1 << 20, (1 << 20) + 12345, u64::MAX / 2]) {
            let b = bucket_of(v);
            assert!(b >= last || v < 5000, "bucket order");
            last = b;
            assert!(bucket_upper(b) >= v, "upper bound of {v}");
            assert!(bucket_upper(b) as f64 <= (v as f64) * 1.25 + 4.0, "bucket of {v} too wide");
            if b > 0 {
                assert!(bucket_upper(b - 1) < v, "{v} in the first bucket that can hold it");
            }
        }
    }

    #[test]
    fn quantiles_come_from_the_samples() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for v in 1..=100u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap().as_nanos() as u64;
        let p99 = h.quantile(0.99).unwrap().as_nanos() as u64;
        assert!((50_000..=62_500).contains(&p50), "p50 {p50}");
        assert!((99_000..=123_750).contains(&p99), "p99 {p99}");
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn health_follows_the_failure_rate() {
        let stall = Duration::from_secs(1);
        let m = WorkerMetrics::default();
        assert_eq!(m.health(1, stall), HealthStatus::Unknown);
        for _ in 0..95 {
            m.record_outcome(true);
        }
        assert_eq!(m.health(1, stall), HealthStatus::Healthy);
        for _ in 0..15 {
            m.record_outcome(false);
        }
        assert_eq!(m.health(1, stall), HealthStatus::Degraded, "15 of 110 failed");
        for _ in 0..200 {
            m.record_outcome(false);
        }
        assert_eq!(m.health(1, stall), HealthStatus::Unhealthy);
        // Old windows age out.
        for _ in 0..3 * OUTCOME_WINDOW {
            m.record_outcome(true);
        }
        assert_eq!(m.health(1, stall), HealthStatus::Healthy);
        m.poll_started.store(10, Ordering::Relaxed);
        assert_eq!(m.health(10 + 2_000_000_000, stall), HealthStatus::Unhealthy, "stalled poll");
    }
}

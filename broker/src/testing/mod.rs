//! Test support, behind the `testing` feature (not production API): a
//! clock set by hand, and the conformance checks every runtime runs the
//! broker through.

pub mod conformance;

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use kaelix_core::runtime::Clock;
use kaelix_core::time::{Duration, Instant, WallTime};

/// A clock set by hand, for tests, benchmarks and doc examples outside
/// any runtime (lock-free: reading it costs two atomic loads).
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    now: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
}

impl ManualClock {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let nanos = kaelix_core::time::duration_nanos(d);
        self.now.0.fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
        self.now.1.fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.now.0.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn wall_clock(&self) -> WallTime {
        WallTime(self.now.1.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Never completes unless the deadline already passed: a manual clock
    /// has no timer wheel.
    fn sleep_until(&self, deadline: Instant) -> impl std::future::Future<Output = ()> + Send + 'static {
        let clock = self.clone();
        poll_fn(move |_| if clock.now() >= deadline { Poll::Ready(()) } else { Poll::Pending })
    }
}

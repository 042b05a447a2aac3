//! Per-node clocks: skew, drift and wall-clock steps.
//!
//! # Fault model
//!
//! The simulator keeps one true virtual time. Each node reads it through its
//! own [`NodeClock`]:
//!
//! * **monotonic time** = `origin + (true - rebase_true) * (1 + drift)`,
//!   continuous and strictly non-decreasing; `drift` is in parts per million
//!   (real quartz: ±100 ppm; the simulator uses up to ±50 000 ppm to make
//!   timeout bugs show). Drift can change mid-run; the clock is rebased so
//!   it stays continuous.
//! * **wall time** = `epoch + skew + monotonic`, where `skew` is a per-node
//!   offset (nodes disagree on civil time) that can be **stepped** by an
//!   NTP-like correction, backwards too.
//!
//! Timers are set on a node's monotonic clock; [`NodeClock::true_deadline`]
//! converts a local deadline back to true time so the event queue can order
//! it. A node never observes its monotonic clock going backwards, but two
//! nodes measure the same interval differently.

use kaelix_core::{Instant, WallTime};

const PPM: i128 = 1_000_000;

/// The most negative drift accepted: the clock must still move forward.
pub const MIN_DRIFT_PPM: i64 = -500_000;
/// The largest drift accepted.
pub const MAX_DRIFT_PPM: i64 = 500_000;

/// One node's view of time.
#[derive(Clone, Debug)]
pub struct NodeClock {
    /// True time at which the current drift segment started.
    rebase_true: u64,
    /// Local monotonic time at `rebase_true`.
    rebase_local: u64,
    drift_ppm: i64,
    /// Wall time at local monotonic zero, plus the node's skew (signed nanos).
    wall_at_local_zero: i128,
}

impl NodeClock {
    /// A clock whose monotonic time starts at `mono_origin` when true time is
    /// zero, running `drift_ppm` fast (negative: slow), whose wall clock reads
    /// `epoch + skew_nanos` at monotonic zero.
    pub fn new(mono_origin: u64, drift_ppm: i64, epoch: WallTime, skew_nanos: i64) -> Self {
        assert!((MIN_DRIFT_PPM..=MAX_DRIFT_PPM).contains(&drift_ppm), "drift out of range");
        NodeClock {
            rebase_true: 0,
            rebase_local: mono_origin,
            drift_ppm,
            wall_at_local_zero: i128::from(epoch.0) + i128::from(skew_nanos),
        }
    }

    /// A perfect clock: local time equals true time, wall = epoch + time.
    pub fn perfect(epoch: WallTime) -> Self {
        Self::new(0, 0, epoch, 0)
    }

    /// The current drift.
    pub fn drift_ppm(&self) -> i64 {
        self.drift_ppm
    }

    /// The node's monotonic time when true time is `true_now`.
    pub fn local_now(&self, true_now: Instant) -> Instant {
        let t = true_now.as_nanos();
        debug_assert!(t >= self.rebase_true, "clock read before its last rebase");
        let elapsed = t.saturating_sub(self.rebase_true);
        if self.drift_ppm == 0 {
            // The common case, without 128-bit division.
            return Instant::from_nanos(self.rebase_local.saturating_add(elapsed));
        }
        let local_elapsed = i128::from(elapsed) * (PPM + i128::from(self.drift_ppm)) / PPM;
        Instant::from_nanos(self.rebase_local.saturating_add(clamp_u64(local_elapsed)))
    }

    /// The node's civil time when true time is `true_now`.
    pub fn wall_now(&self, true_now: Instant) -> WallTime {
        let local = i128::from(self.local_now(true_now).as_nanos());
        WallTime(clamp_u64(self.wall_at_local_zero + local))
    }

    /// The earliest true time at which [`NodeClock::local_now`] reaches
    /// `local_deadline` (at or after `true_now`).
    pub fn true_deadline(&self, local_deadline: Instant, true_now: Instant) -> Instant {
        if local_deadline <= self.local_now(true_now) {
            return true_now;
        }
        if self.drift_ppm == 0 {
            let at = self.rebase_true.saturating_add(local_deadline.as_nanos() - self.rebase_local);
            return Instant::from_nanos(at).max(true_now);
        }
        let local_delta = i128::from(local_deadline.as_nanos() - self.rebase_local);
        let rate = PPM + i128::from(self.drift_ppm);
        // ceil(local_delta * PPM / rate): the first true nanosecond at which
        // the local clock has reached the deadline.
        let true_delta = (local_delta * PPM + rate - 1) / rate;
        let at = Instant::from_nanos(self.rebase_true.saturating_add(clamp_u64(true_delta)));
        debug_assert!(self.local_now(at) >= local_deadline);
        at.max(true_now)
    }

    /// Changes the drift from `true_now` on, keeping monotonic time continuous.
    pub fn set_drift(&mut self, true_now: Instant, drift_ppm: i64) {
        assert!((MIN_DRIFT_PPM..=MAX_DRIFT_PPM).contains(&drift_ppm), "drift out of range");
        self.rebase_local = self.local_now(true_now).as_nanos();
        self.rebase_true = true_now.as_nanos();
        self.drift_ppm = drift_ppm;
    }

    /// Steps the wall clock by `delta_nanos` (an NTP correction; may be
    /// negative). Monotonic time is unaffected.
    pub fn step_wall(&mut self, delta_nanos: i64) {
        self.wall_at_local_zero += i128::from(delta_nanos);
    }
}

fn clamp_u64(v: i128) -> u64 {
    u64::try_from(v.max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EPOCH: WallTime = WallTime(1_700_000_000_000_000_000);

    #[test]
    fn perfect_clock_is_identity() {
        let c = NodeClock::perfect(EPOCH);
        let t = Instant::from_nanos(123_456);
        assert_eq!(c.local_now(t), t);
        assert_eq!(c.wall_now(t).0, EPOCH.0 + 123_456);
        assert_eq!(c.true_deadline(Instant::from_nanos(500), t), t);
        assert_eq!(c.true_deadline(Instant::from_nanos(200_000), t), Instant::from_nanos(200_000));
    }

    #[test]
    fn drift_measures_intervals_differently() {
        let fast = NodeClock::new(0, 10_000, EPOCH, 0); // 1% fast
        let slow = NodeClock::new(0, -10_000, EPOCH, 0);
        let t = Instant::from_nanos(1_000_000_000);
        assert_eq!(fast.local_now(t).as_nanos(), 1_010_000_000);
        assert_eq!(slow.local_now(t).as_nanos(), 990_000_000);
    }

    #[test]
    fn wall_step_leaves_monotonic_alone() {
        let mut c = NodeClock::new(0, 0, EPOCH, 5);
        let t = Instant::from_nanos(1000);
        let before = c.wall_now(t);
        c.step_wall(-1_000_000);
        assert_eq!(c.wall_now(t).0, before.0 - 1_000_000);
        assert_eq!(c.local_now(t).as_nanos(), 1000);
    }

    proptest! {
        /// Monotonic time never decreases, across drift changes too.
        #[test]
        fn monotonic_never_decreases(
            origin in 0u64..1_000_000_000,
            steps in proptest::collection::vec((0u64..10_000_000, MIN_DRIFT_PPM..=MAX_DRIFT_PPM, any::<bool>()), 1..100),
        ) {
            let mut c = NodeClock::new(origin, 0, EPOCH, 0);
            let mut t = 0u64;
            let mut last = c.local_now(Instant::from_nanos(0));
            for (dt, drift, change) in steps {
                t += dt;
                let now = Instant::from_nanos(t);
                if change {
                    c.set_drift(now, drift);
                }
                let local = c.local_now(now);
                prop_assert!(local >= last, "went back from {last} to {local}");
                last = local;
            }
        }

        /// A deadline converted to true time is the first instant at which
        /// the local clock has reached it.
        #[test]
        fn true_deadline_is_tight(
            drift in MIN_DRIFT_PPM..=MAX_DRIFT_PPM,
            now in 0u64..1_000_000_000,
            ahead in 1u64..1_000_000_000,
        ) {
            let c = NodeClock::new(7, drift, EPOCH, 0);
            let true_now = Instant::from_nanos(now);
            let deadline = Instant::from_nanos(c.local_now(true_now).as_nanos() + ahead);
            let at = c.true_deadline(deadline, true_now);
            prop_assert!(at >= true_now);
            prop_assert!(c.local_now(at) >= deadline);
            if at > true_now {
                prop_assert!(c.local_now(Instant::from_nanos(at.as_nanos() - 1)) < deadline);
            }
        }

        /// Drift bounds the error: after `t` true nanoseconds a clock with
        /// drift `d` has advanced `t * (1 + d/1e6)`, within one nanosecond.
        #[test]
        fn drift_error_is_bounded(drift in MIN_DRIFT_PPM..=MAX_DRIFT_PPM, t in 0u64..10_000_000_000) {
            let c = NodeClock::new(0, drift, EPOCH, 0);
            let local = c.local_now(Instant::from_nanos(t)).as_nanos() as f64;
            let ideal = t as f64 * (1.0 + drift as f64 / 1e6);
            prop_assert!((local - ideal).abs() <= 1.0 + ideal * 1e-12);
        }
    }
}

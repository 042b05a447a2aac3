//! Phi-accrual failure detection (Hayashibara et al.), sans-IO.
//!
//! Instead of a yes/no timeout, the detector keeps a sliding window of the
//! intervals between a member's successive signs of life (probe acks, or
//! their round-trip times — anything that arrives at a regular pace) and
//! answers, at time `now`, with **phi**: −log10 of the probability that a
//! sign of life would still be this late if the member were alive. Phi 1
//! means a 10 % chance of a false suspicion, 2 means 1 %, 8 means 10⁻⁸. The
//! distribution is a normal fitted to the window (mean, standard deviation
//! floored at `min_std_dev`, plus `acceptable_pause` for expected hiccups
//! such as GC), with the logistic approximation of its tail that Akka and
//! Cassandra use.
//!
//! How it combines with SWIM: the SWIM core keeps one detector per member,
//! fed with the times (the core's `now`, never the OS clock) of its
//! answered probe rounds of that member, and uses phi to **gate
//! suspicion**: a failed probe round accuses a member only when phi is at
//! or above the threshold, or when the gate has already deferred its
//! allowed number of failed rounds in a row (see the `swim` module,
//! *Phi gate*). The membership service shows the core's phi
//! (`Membership::phi`) from [`PhiSnapshot`]s the driver copies.
//!
//! All arithmetic uses `kaelix_core::math`, so phi is bit-identical on
//! every machine (simulator replays depend on it).

use std::collections::VecDeque;

use kaelix_core::Instant;
use kaelix_core::math::{portable_exp, portable_log10};
use kaelix_core::time::Duration;

/// Settings of a [`PhiAccrual`] detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhiConfig {
    /// Phi at or above which the member counts as failed (and, in SWIM, a
    /// failed probe round may accuse it at once).
    pub threshold: f64,
    /// Intervals remembered.
    pub window: usize,
    /// Floor of the fitted standard deviation (very regular members must
    /// not become hair-trigger).
    pub min_std_dev: Duration,
    /// Extra delay always tolerated.
    pub acceptable_pause: Duration,
    /// The interval assumed before any has been measured.
    pub first_interval: Duration,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            threshold: 8.0,
            window: 100,
            min_std_dev: Duration::from_millis(100),
            acceptable_pause: Duration::ZERO,
            first_interval: Duration::from_secs(1),
        }
    }
}

/// One member's detector.
#[derive(Clone, Debug)]
pub struct PhiAccrual {
    config: PhiConfig,
    /// Intervals, in milliseconds.
    intervals: VecDeque<f64>,
    sum: f64,
    sum_squares: f64,
    last: Option<Instant>,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl PhiAccrual {
    /// A detector with no history.
    pub fn new(config: PhiConfig) -> Self {
        assert!(config.window >= 1, "the window holds at least one interval");
        assert!(config.threshold > 0.0, "the threshold must be positive");
        PhiAccrual { config, intervals: VecDeque::new(), sum: 0.0, sum_squares: 0.0, last: None }
    }

    /// A sign of life at `now`.
    pub fn heartbeat(&mut self, now: Instant) {
        match self.last {
            None => {
                // Seed the window so phi is meaningful from the second beat.
                let first = millis(self.config.first_interval);
                self.push(first);
                self.push(first);
            }
            Some(last) => {
                assert!(now >= last, "heartbeats go forward in time");
                self.push(millis(now - last));
            }
        }
        self.last = Some(now);
    }

    fn push(&mut self, interval: f64) {
        if self.intervals.len() == self.config.window {
            let old = self.intervals.pop_front().expect("full");
            self.sum -= old;
            self.sum_squares -= old * old;
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_squares += interval * interval;
    }

    /// The last heartbeat and the fitted distribution: everything phi at a
    /// later time depends on (`None` before the first heartbeat).
    pub fn snapshot(&self) -> Option<PhiSnapshot> {
        let last = self.last?;
        let n = self.intervals.len() as f64;
        let mean = self.sum / n;
        let variance = (self.sum_squares / n - mean * mean).max(0.0);
        Some(PhiSnapshot {
            last,
            mean_ms: mean + millis(self.config.acceptable_pause),
            std_dev_ms: variance.sqrt().max(millis(self.config.min_std_dev)),
        })
    }

    /// Suspicion level at `now` (0 before the first heartbeat).
    pub fn phi(&self, now: Instant) -> f64 {
        self.snapshot().map_or(0.0, |s| s.phi(now))
    }

    /// Whether phi at `now` is at or above the threshold.
    pub fn is_suspect(&self, now: Instant) -> bool {
        self.phi(now) >= self.config.threshold
    }

    /// The settings.
    pub fn config(&self) -> &PhiConfig {
        &self.config
    }

    /// Intervals remembered.
    pub fn history_len(&self) -> usize {
        self.intervals.len()
    }
}

/// A detector's state as far as phi is concerned: the last heartbeat and
/// the fitted distribution (`acceptable_pause` already in the mean). Cheap
/// to copy, so a driver can show phi at any later time without holding
/// the detector; gives exactly the detector's phi.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhiSnapshot {
    last: Instant,
    mean_ms: f64,
    std_dev_ms: f64,
}

impl PhiSnapshot {
    /// Suspicion level at `now`.
    pub fn phi(&self, now: Instant) -> f64 {
        let elapsed = millis(now.saturating_duration_since(self.last));
        let (mean, std_dev) = (self.mean_ms, self.std_dev_ms);
        let y = (elapsed - mean) / std_dev;
        let e = portable_exp(-y * (1.5976 + 0.070566 * y * y));
        let p_later = if elapsed > mean { e / (1.0 + e) } else { 1.0 - 1.0 / (1.0 + e) };
        // Far in the tail p_later underflows: report a large finite phi.
        if p_later <= f64::MIN_POSITIVE { 308.0 } else { -portable_log10(p_later) }
    }

    /// The last heartbeat.
    pub fn last_heartbeat(&self) -> Instant {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn regular(period: u64, beats: u64, config: PhiConfig) -> PhiAccrual {
        let mut d = PhiAccrual::new(config);
        for i in 0..beats {
            d.heartbeat(ms(i * period));
        }
        d
    }

    #[test]
    fn phi_grows_with_silence_and_resets_on_a_heartbeat() {
        let d = regular(1000, 50, PhiConfig::default());
        let last = ms(49 * 1000);
        let phis: Vec<f64> =
            [0u64, 500, 1000, 1500, 2000, 3000].iter().map(|&t| d.phi(last + Duration::from_millis(t))).collect();
        assert!(phis.windows(2).all(|w| w[0] <= w[1]), "monotonic: {phis:?}");
        assert!(phis[2] < 1.0, "on time is not suspicious: {}", phis[2]);
        assert!(phis[5] > 8.0, "two periods late with a regular history is: {}", phis[5]);
        let mut d = d;
        d.heartbeat(last + Duration::from_millis(3000));
        assert!(d.phi(last + Duration::from_millis(3000)) < 1.0);
    }

    #[test]
    fn a_jittery_history_makes_the_detector_more_patient() {
        let steady = regular(1000, 60, PhiConfig::default());
        let mut jittery = PhiAccrual::new(PhiConfig::default());
        let mut t = 0;
        for i in 0..60u64 {
            t += if i % 2 == 0 { 500 } else { 1500 };
            jittery.heartbeat(ms(t));
        }
        let late = Duration::from_millis(2200);
        let steady_phi = steady.phi(ms(59 * 1000) + late);
        let jittery_phi = jittery.phi(ms(t) + late);
        assert!(jittery_phi < steady_phi, "jittery {jittery_phi} vs steady {steady_phi}");
    }

    #[test]
    fn acceptable_pause_and_floor_delay_suspicion() {
        let strict = regular(1000, 30, PhiConfig::default());
        let lenient = regular(1000, 30, PhiConfig { acceptable_pause: Duration::from_secs(2), ..PhiConfig::default() });
        let at = ms(29 * 1000) + Duration::from_millis(2500);
        assert!(strict.is_suspect(at));
        assert!(!lenient.is_suspect(at));
    }

    #[test]
    fn no_history_no_suspicion_and_window_is_bounded() {
        let d = PhiAccrual::new(PhiConfig::default());
        assert_eq!(d.phi(ms(1_000_000)), 0.0);
        let d = regular(10, 1000, PhiConfig { window: 16, ..PhiConfig::default() });
        assert_eq!(d.history_len(), 16);
        assert!(d.phi(ms(10 * 999) + Duration::from_secs(3600)).is_finite());
    }
}

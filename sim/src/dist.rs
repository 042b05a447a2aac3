//! Small distributions the fault models draw from.

use kaelix_core::math::portable_ln;
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::time::{Duration, duration_nanos};

/// A latency: a fixed floor plus an exponentially distributed tail (the
/// usual shape of network and device latency), capped at floor + 20 × mean
/// so one draw cannot stall a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    /// The minimum latency.
    pub min: Duration,
    /// Mean of the exponential part added to `min`.
    pub mean_extra: Duration,
}

impl Latency {
    /// A constant latency.
    pub const fn fixed(d: Duration) -> Self {
        Latency { min: d, mean_extra: Duration::ZERO }
    }

    /// `min` plus an exponential tail with mean `mean_extra`.
    pub const fn new(min: Duration, mean_extra: Duration) -> Self {
        Latency { min, mean_extra }
    }

    /// One draw.
    pub fn sample(&self, rng: &mut DetRng) -> Duration {
        let mean = duration_nanos(self.mean_extra);
        if mean == 0 {
            return self.min;
        }
        let extra = exponential(rng, mean as f64).min(mean as f64 * 20.0);
        self.min + Duration::from_nanos(extra as u64)
    }

    /// The mean of [`Latency::sample`] (ignoring the cap).
    pub fn mean(&self) -> Duration {
        self.min + self.mean_extra
    }
}

/// An exponential draw with the given mean.
pub fn exponential(rng: &mut DetRng, mean: f64) -> f64 {
    // 1 - u is in (0, 1], so ln is finite.
    let u: f64 = rng.random::<f64>();
    -portable_ln(1.0 - u) * mean
}

/// True with probability `p` (clamped to [0, 1]); draws nothing when `p` is 0
/// so that disabled faults leave the random stream untouched.
pub fn chance(rng: &mut DetRng, p: f64) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random_bool(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaelix_core::rng::seeded;

    #[test]
    fn latency_mean_within_tolerance() {
        let lat = Latency::new(Duration::from_micros(100), Duration::from_micros(400));
        let mut rng = seeded(1);
        let n = 20_000;
        let total: u128 = (0..n).map(|_| lat.sample(&mut rng).as_nanos()).sum();
        let mean = total as f64 / n as f64;
        // mean 500 µs; the 20× cap trims a negligible tail. 3% tolerance.
        assert!((mean - 500_000.0).abs() < 15_000.0, "mean {mean}");
        assert!((0..1000).all(|_| lat.sample(&mut rng) >= Duration::from_micros(100)));
    }

    #[test]
    fn zero_chance_draws_nothing() {
        let mut a = seeded(9);
        let mut b = seeded(9);
        assert!(!chance(&mut a, 0.0));
        assert_eq!(a.random::<u64>(), b.random::<u64>());
    }
}

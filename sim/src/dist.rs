//! Small distributions the fault models draw from.

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

/// Natural log of a positive normal `x`, from IEEE basic operations only.
///
/// libm's `ln` may differ in the last bit between C libraries and versions;
/// `+ - * /` are correctly rounded everywhere, so this gives the same bits on
/// every machine and a seed replays identically across them. Relative error
/// below 1e-12, plenty for drawing latencies.
pub fn portable_ln(x: f64) -> f64 {
    assert!(x.is_normal() && x > 0.0, "portable_ln needs a positive normal number, got {x}");
    const MANTISSA_BITS: u32 = 52;
    const EXPONENT_BIAS: i64 = 1023;
    const MANTISSA_MASK: u64 = (1 << MANTISSA_BITS) - 1;
    let bits = x.to_bits();
    let mut exponent = ((bits >> MANTISSA_BITS) as i64) - EXPONENT_BIAS;
    // x = m · 2^exponent with m in [1, 2); recentre m into [√½, √2).
    let mut m = f64::from_bits((bits & MANTISSA_MASK) | ((EXPONENT_BIAS as u64) << MANTISSA_BITS));
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        exponent += 1;
    }
    // ln m = 2·atanh(s) with s = (m − 1)/(m + 1), |s| < 0.172.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // 1/k for k = 21, 19, …, 3, evaluated at compile time.
    const INVERSE_ODD: [f64; 10] = [
        1.0 / 21.0,
        1.0 / 19.0,
        1.0 / 17.0,
        1.0 / 15.0,
        1.0 / 13.0,
        1.0 / 11.0,
        1.0 / 9.0,
        1.0 / 7.0,
        1.0 / 5.0,
        1.0 / 3.0,
    ];
    let mut series = 0.0;
    for inverse in INVERSE_ODD {
        series = s2 * (inverse + series);
    }
    let series = 1.0 + series;
    exponent as f64 * std::f64::consts::LN_2 + 2.0 * s * series
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
    fn portable_ln_matches_libm_closely() {
        let mut rng = seeded(7);
        for _ in 0..100_000 {
            let x = 1.0 - rng.random::<f64>();
            let (ours, libm) = (portable_ln(x), x.ln());
            assert!((ours - libm).abs() <= 1e-12 * libm.abs().max(1e-300) + 1e-15, "ln({x}): {ours} vs {libm}");
        }
        for x in [1.0, 0.5, 2.0_f64.powi(-53), 0.999_999_999, std::f64::consts::FRAC_1_SQRT_2, 1e300] {
            assert!((portable_ln(x) - x.ln()).abs() <= 1e-12 * x.ln().abs() + 1e-15, "ln({x})");
        }
        assert_eq!(portable_ln(1.0), 0.0);
    }

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

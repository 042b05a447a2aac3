//! Transcendental functions built only from IEEE basic operations.
//!
//! libm's `ln`/`exp` may differ in the last bit between C libraries and
//! versions; `+ - * /` are correctly rounded everywhere. Protocol logic and
//! the simulator use these so that one seed replays bit for bit on every
//! machine. Relative error is below 1e-12 — plenty for latency draws and
//! failure detectors, not a replacement for a numerics library.

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

/// `e^x`, from IEEE basic operations only (see the module docs). Saturates
/// to 0 below −745 and to infinity above 709.
pub fn portable_exp(x: f64) -> f64 {
    assert!(!x.is_nan(), "portable_exp of NaN");
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -745.0 {
        return 0.0;
    }
    // x = k·ln2 + r with |r| ≤ ln2/2; e^x = 2^k · e^r.
    let k = (x / std::f64::consts::LN_2).round();
    let r = x - k * std::f64::consts::LN_2;
    // Taylor series of e^r to r^14/14! (|r| < 0.35: error < 1e-16).
    const INVERSE_FACTORIAL: [f64; 15] = [
        1.0,
        1.0,
        1.0 / 2.0,
        1.0 / 6.0,
        1.0 / 24.0,
        1.0 / 120.0,
        1.0 / 720.0,
        1.0 / 5_040.0,
        1.0 / 40_320.0,
        1.0 / 362_880.0,
        1.0 / 3_628_800.0,
        1.0 / 39_916_800.0,
        1.0 / 479_001_600.0,
        1.0 / 6_227_020_800.0,
        1.0 / 87_178_291_200.0,
    ];
    let mut sum = 0.0;
    for c in INVERSE_FACTORIAL.iter().rev() {
        sum = sum * r + c;
    }
    // Scale by 2^k in two steps so that k near the limits stays finite.
    let k = k as i32;
    let half = k / 2;
    sum * pow2(half) * pow2(k - half)
}

fn pow2(k: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&k), "2^{k} is not a normal number");
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// `log10(x)` for a positive normal `x` (see [`portable_ln`]).
pub fn portable_log10(x: f64) -> f64 {
    portable_ln(x) / std::f64::consts::LN_10
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{RngExt, seeded};

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
    fn portable_exp_matches_libm_closely() {
        let mut rng = seeded(9);
        for _ in 0..100_000 {
            let x: f64 = rng.random_range(-700.0..700.0);
            let (ours, libm) = (portable_exp(x), x.exp());
            assert!((ours - libm).abs() <= 1e-12 * libm, "exp({x}): {ours} vs {libm}");
        }
        assert_eq!(portable_exp(0.0), 1.0);
        assert_eq!(portable_exp(800.0), f64::INFINITY);
        assert_eq!(portable_exp(-800.0), 0.0);
        assert!((portable_log10(1000.0) - 3.0).abs() < 1e-12);
    }
}

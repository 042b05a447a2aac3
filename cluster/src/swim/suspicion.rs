//! Lifeguard's dogpile suspicion timer, as memberlist computes it.
//!
//! A suspicion starts at `max` and shrinks towards `min` as independent
//! members confirm it, logarithmically in the number of confirmations:
//! `timeout(c) = max − (max − min) · ln(c + 1) / ln(k + 1)`, floored to the
//! millisecond and never below `min`, where `k = suspicion_mult − 2` is the
//! number of confirmations expected (0 when the cluster is too small to
//! provide them: then the timeout is `min` at once).
//! `min = suspicion_mult · max(1, log10(N)) · probe_interval` and
//! `max = suspicion_max_timeout_mult · min`, `N` the live members.
//!
//! The logarithms come from `kaelix_core::math` (IEEE basic operations
//! only), so a seed replays to the same deadlines on every machine.

use std::collections::BTreeSet;

use kaelix_core::NodeId;
use kaelix_core::math::{portable_ln, portable_log10};
use kaelix_core::time::{Duration, Instant, duration_nanos};

/// memberlist's `suspicionTimeout`: `mult · max(1, log10(n)) · interval`,
/// the node scale in thousandths (rounded, where memberlist truncates: the
/// portable log10 of a power of ten may fall a hair short of the integer).
pub fn min_timeout(mult: u32, n: usize, interval: Duration) -> Duration {
    let scale = portable_log10(n.max(1) as f64).max(1.0);
    let milli_scale = (scale * 1000.0).round() as u64;
    let nanos = u128::from(duration_nanos(interval)) * u128::from(mult) * u128::from(milli_scale) / 1000;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// memberlist's `remainingSuspicionTime` before subtracting the elapsed
/// time: the total timeout after `c` of `k` confirmations.
pub fn timeout(c: u32, k: u32, min: Duration, max: Duration) -> Duration {
    if k == 0 {
        return min;
    }
    let frac = portable_ln(f64::from(c) + 1.0) / portable_ln(f64::from(k) + 1.0);
    let raw = max.as_secs_f64() - frac * (max.as_secs_f64() - min.as_secs_f64());
    let ms = (1000.0 * raw).floor().max(0.0) as u64;
    Duration::from_millis(ms).max(min)
}

/// A running suspicion of one member.
#[derive(Clone, Debug)]
pub(crate) struct Suspicion {
    /// Who raised it (not counted as a confirmation).
    pub(crate) accuser: NodeId,
    started: Instant,
    k: u32,
    min: Duration,
    max: Duration,
    confirmations: BTreeSet<NodeId>,
    deadline: Instant,
}

impl Suspicion {
    /// A suspicion raised by `accuser` at `started` in a cluster of `n`
    /// live members.
    pub(crate) fn new(
        accuser: NodeId,
        started: Instant,
        n: usize,
        suspicion_mult: u32,
        max_mult: u32,
        interval: Duration,
    ) -> Self {
        let mut k = suspicion_mult.saturating_sub(2);
        if (n as u64).saturating_sub(2) < u64::from(k) {
            k = 0;
        }
        let min = min_timeout(suspicion_mult, n, interval);
        let max = min * max_mult.max(1);
        let deadline = started + timeout(0, k, min, max);
        Suspicion { accuser, started, k, min, max, confirmations: BTreeSet::new(), deadline }
    }

    /// Records an independent confirmation; returns whether it was new (and
    /// so shortened the timeout).
    pub(crate) fn confirm(&mut self, from: NodeId) -> bool {
        if self.confirmations.len() as u32 >= self.k || from == self.accuser || !self.confirmations.insert(from) {
            return false;
        }
        self.deadline = self.started + timeout(self.confirmations.len() as u32, self.k, self.min, self.max);
        true
    }

    /// When the suspect is declared dead unless refuted.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Confirmations counted so far.
    pub(crate) fn confirmations(&self) -> usize {
        self.confirmations.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn min_timeout_scales_with_log10_of_the_cluster() {
        assert_eq!(min_timeout(4, 1, S), Duration::from_secs(4));
        assert_eq!(min_timeout(4, 5, S), Duration::from_secs(4), "log10(5) < 1 counts as 1");
        assert_eq!(min_timeout(4, 100, S), Duration::from_secs(8));
        assert_eq!(min_timeout(4, 1000, S), Duration::from_secs(12));
    }

    #[test]
    fn timeout_falls_logarithmically_with_confirmations() {
        // memberlist's own table (suspicion_test.go: remaining time plus the
        // elapsed time of each row) for k = 3, min 2 s, max 30 s.
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(30));
        let got: Vec<u64> = (0..=4).map(|c| timeout(c, 3, min, max).as_millis() as u64).collect();
        assert_eq!(got, vec![30_000, 16_000, 7_810, 2_000, 2_000]);
        assert_eq!(timeout(0, 0, min, max), min, "no confirmations expected: min at once");
    }

    #[test]
    fn confirmations_count_once_each_and_never_the_accuser() {
        let t0 = Instant::from_nanos(0);
        let mut s = Suspicion::new(NodeId(1), t0, 10, 4, 6, S);
        assert_eq!(s.deadline(), t0 + Duration::from_secs(24));
        assert!(!s.confirm(NodeId(1)), "the accuser does not confirm itself");
        assert!(s.confirm(NodeId(2)));
        assert!(!s.confirm(NodeId(2)), "a confirmation counts once");
        assert_eq!(s.deadline(), t0 + Duration::from_millis(11_381));
        assert!(s.confirm(NodeId(3)));
        assert_eq!(s.deadline(), t0 + Duration::from_secs(4));
        assert!(!s.confirm(NodeId(4)), "k = 2 reached");
        assert_eq!(s.confirmations(), 2);
    }

    #[test]
    fn small_clusters_expect_no_confirmations() {
        let t0 = Instant::from_nanos(0);
        let s = Suspicion::new(NodeId(1), t0, 3, 4, 6, S);
        assert_eq!(s.deadline(), t0 + Duration::from_secs(4));
    }
}

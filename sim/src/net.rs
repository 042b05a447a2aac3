//! The simulated packet network between nodes.
//!
//! # Fault model
//!
//! Every node-to-node datagram is routed through [`NetModel::route`], which
//! decides its fate from the link's [`LinkConfig`] and the partition state:
//!
//! * **latency**: floor plus exponential tail, per link;
//! * **loss**: dropped with probability `loss`;
//! * **duplication**: delivered twice with probability `duplicate` (the copy
//!   gets its own latency, so it may arrive first);
//! * **reordering**: with probability `reorder` a packet is held back by up
//!   to `reorder_max` extra, letting later packets overtake it (plain latency
//!   jitter reorders too);
//! * **partitions**: a set of blocked *directed* links. A symmetric
//!   partition blocks both directions between groups; an asymmetric one
//!   blocks some directions; a one-way partition blocks one direction of one
//!   link. A packet is dropped if its link is blocked when it is sent **or**
//!   when it would arrive (a cut link loses what is in flight).
//!
//! Packets are never corrupted (real transports checksum) and never split.
//! Client streams are modelled separately (see `world`): they share the
//! partition state and the latency but not loss, duplication or reordering,
//! which TCP hides; a partition breaks the stream instead.

use std::collections::{BTreeMap, BTreeSet};

use kaelix_core::NodeId;
use kaelix_core::rng::DetRng;
use kaelix_core::time::{Duration, Instant};

use crate::dist::{Latency, chance};

/// Per-link behaviour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way latency.
    pub latency: Latency,
    /// Probability a packet is dropped.
    pub loss: f64,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// Probability a packet is held back by extra delay.
    pub reorder: f64,
    /// Upper bound of the extra delay of a held-back packet.
    pub reorder_max: Duration,
}

impl LinkConfig {
    /// A healthy datacenter link: 50 µs + ~100 µs tail, no faults.
    pub const fn healthy() -> Self {
        LinkConfig {
            latency: Latency::new(Duration::from_micros(50), Duration::from_micros(100)),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_max: Duration::ZERO,
        }
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self::healthy()
    }
}

/// What happens to one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The link is partitioned.
    Blocked,
    /// Lost to packet loss.
    Lost,
    /// Delivered at `at`, and a second time at `duplicate_at` if set.
    Deliver {
        /// Arrival time.
        at: Instant,
        /// Arrival time of a duplicate.
        duplicate_at: Option<Instant>,
    },
}

/// Links, partitions and the generator that decides packet fates.
#[derive(Debug)]
pub struct NetModel {
    default_link: LinkConfig,
    links: BTreeMap<(NodeId, NodeId), LinkConfig>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    rng: DetRng,
}

impl NetModel {
    /// A network where every link behaves like `default_link`.
    pub fn new(default_link: LinkConfig, rng: DetRng) -> Self {
        NetModel { default_link, links: BTreeMap::new(), blocked: BTreeSet::new(), rng }
    }

    /// The configuration of the directed link `from → to`.
    pub fn link(&self, from: NodeId, to: NodeId) -> LinkConfig {
        self.links.get(&(from, to)).copied().unwrap_or(self.default_link)
    }

    /// Overrides one directed link.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, config: LinkConfig) {
        self.links.insert((from, to), config);
    }

    /// Replaces the default link and clears per-link overrides.
    pub fn set_default_link(&mut self, config: LinkConfig) {
        self.default_link = config;
        self.links.clear();
    }

    /// The default link configuration.
    pub fn default_link(&self) -> LinkConfig {
        self.default_link
    }

    /// Whether `from → to` is cut.
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        from != to && self.blocked.contains(&(from, to))
    }

    /// Cuts one direction.
    pub fn block_one_way(&mut self, from: NodeId, to: NodeId) {
        if from != to {
            self.blocked.insert((from, to));
        }
    }

    /// Cuts both directions between `a` and `b`.
    pub fn block_both(&mut self, a: NodeId, b: NodeId) {
        self.block_one_way(a, b);
        self.block_one_way(b, a);
    }

    /// A symmetric partition: no traffic between nodes of different groups.
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        for (i, g) in groups.iter().enumerate() {
            for h in &groups[i + 1..] {
                for &a in g {
                    for &b in h {
                        self.block_both(a, b);
                    }
                }
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Number of cut directed links.
    pub fn blocked_links(&self) -> usize {
        self.blocked.len()
    }

    /// Every cut directed link `(from, to)`, in order.
    pub fn blocked(&self) -> impl Iterator<Item = (NodeId, NodeId)> + '_ {
        self.blocked.iter().copied()
    }

    /// Decides the fate of a packet sent `from → to` at `now`.
    pub fn route(&mut self, now: Instant, from: NodeId, to: NodeId) -> Route {
        if self.is_blocked(from, to) {
            return Route::Blocked;
        }
        let link = self.link(from, to);
        if chance(&mut self.rng, link.loss) {
            return Route::Lost;
        }
        let at = now + self.one_delay(&link);
        let duplicate_at = chance(&mut self.rng, link.duplicate).then(|| now + self.one_delay(&link));
        Route::Deliver { at, duplicate_at }
    }

    fn one_delay(&mut self, link: &LinkConfig) -> Duration {
        let mut d = link.latency.sample(&mut self.rng);
        if chance(&mut self.rng, link.reorder) && !link.reorder_max.is_zero() {
            let max = kaelix_core::time::duration_nanos(link.reorder_max);
            d += Duration::from_nanos(kaelix_core::rng::RngExt::random_range(&mut self.rng, 0..=max));
        }
        d
    }

    /// Latency for one frame of a client stream (no loss or duplication).
    pub fn stream_delay(&mut self, from: NodeId, to: NodeId) -> Duration {
        let link = self.link(from, to);
        link.latency.sample(&mut self.rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaelix_core::rng::seeded;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    fn faulty(loss: f64, duplicate: f64, reorder: f64) -> LinkConfig {
        LinkConfig {
            latency: Latency::fixed(Duration::from_millis(1)),
            loss,
            duplicate,
            reorder,
            reorder_max: Duration::from_millis(10),
        }
    }

    fn tally(model: &mut NetModel, n: usize) -> (usize, usize, usize) {
        let (mut lost, mut dup, mut delivered) = (0, 0, 0);
        for _ in 0..n {
            match model.route(Instant::ZERO, A, B) {
                Route::Lost => lost += 1,
                Route::Deliver { duplicate_at, .. } => {
                    delivered += 1;
                    dup += usize::from(duplicate_at.is_some());
                }
                Route::Blocked => unreachable!("not partitioned"),
            }
        }
        (lost, dup, delivered)
    }

    #[test]
    fn loss_and_duplication_rates_match_config() {
        let mut m = NetModel::new(faulty(0.2, 0.1, 0.0), seeded(42));
        let n = 50_000;
        let (lost, dup, delivered) = tally(&mut m, n);
        let loss_rate = lost as f64 / n as f64;
        let dup_rate = dup as f64 / delivered as f64;
        // ±1.5 percentage points: > 5 sigma at this n.
        assert!((loss_rate - 0.2).abs() < 0.015, "loss {loss_rate}");
        assert!((dup_rate - 0.1).abs() < 0.015, "dup {dup_rate}");
    }

    #[test]
    fn healthy_link_loses_nothing() {
        let mut m = NetModel::new(LinkConfig::healthy(), seeded(1));
        assert_eq!(tally(&mut m, 10_000).0, 0);
    }

    #[test]
    fn reordering_lets_later_packets_overtake() {
        let mut m = NetModel::new(faulty(0.0, 0.0, 0.3), seeded(7));
        let arrivals: Vec<Instant> = (0..10_000u64)
            .map(|i| match m.route(Instant::from_nanos(i * 100_000), A, B) {
                Route::Deliver { at, .. } => at,
                other => panic!("{other:?}"),
            })
            .collect();
        let inversions = arrivals.windows(2).filter(|w| w[1] < w[0]).count();
        // Sent 100 µs apart with fixed 1 ms latency: only held-back packets
        // can be overtaken, so inversions are frequent but below the
        // hold-back rate.
        assert!(inversions > 1_000 && inversions < 3_000, "{inversions} inversions");
    }

    #[test]
    fn partitions_block_the_right_directions() {
        let mut m = NetModel::new(LinkConfig::healthy(), seeded(3));
        m.block_one_way(A, B);
        assert_eq!(m.route(Instant::ZERO, A, B), Route::Blocked);
        assert!(matches!(m.route(Instant::ZERO, B, A), Route::Deliver { .. }));
        m.heal();
        m.partition(&[vec![A], vec![B, C]]);
        assert!(m.is_blocked(A, B) && m.is_blocked(B, A) && m.is_blocked(A, C) && m.is_blocked(C, A));
        assert!(!m.is_blocked(B, C) && !m.is_blocked(C, B));
        assert!(!m.is_blocked(A, A), "a node always reaches itself");
        m.heal();
        assert_eq!(m.blocked_links(), 0);
        m.block_one_way(C, A);
        m.block_one_way(B, A);
        assert_eq!(m.blocked().collect::<Vec<_>>(), vec![(B, A), (C, A)], "in order");
    }

    #[test]
    fn per_link_settings_override_default() {
        let mut m = NetModel::new(LinkConfig::healthy(), seeded(5));
        m.set_link(A, B, faulty(1.0, 0.0, 0.0));
        assert_eq!(m.route(Instant::ZERO, A, B), Route::Lost);
        assert!(matches!(m.route(Instant::ZERO, B, A), Route::Deliver { .. }));
    }
}

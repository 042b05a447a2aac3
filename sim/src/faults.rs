//! Fault profiles, swarm testing and fault schedules.
//!
//! # Model
//!
//! A run has two phases (as TigerBeetle's VOPR):
//!
//! 1. **Safety phase** (`[0, safety_end)`): faults are injected. Packet-level
//!    faults (loss, duplication, reordering, latency), disk-level faults
//!    (torn / lost unsynced writes, misdirected writes, read corruption) and
//!    clock drift are *rates* set on the network, disks and clocks. Discrete
//!    faults — crash, restart (possibly with a wiped disk), whole-cluster
//!    power loss, pause / resume, partitions (symmetric, asymmetric,
//!    one-way), wall-clock steps, bit rot — are drawn up front into a
//!    [`FaultSchedule`] of timed [`Fault`]s. Code-level fault points
//!    (`buggify!`) fire only in this phase.
//! 2. **Liveness phase**: every fault stops, partitions heal, down nodes
//!    restart, paused nodes resume, and the scenario must converge within its
//!    bound.
//!
//! **Swarm testing**: [`FaultProfile::swarm`] lets each seed switch every
//! fault kind on or off (each on with probability ½) and draw its intensity,
//! so some seeds hammer one fault in isolation and others mix many; bugs
//! masked by one fault (a partition hides a crash race) surface in seeds
//! where it is off.
//!
//! Scenarios state what their protocol tolerates in a [`Tolerance`]: how
//! many nodes may be down at once and how many nodes may have disks that
//! lose synced data (wipe, corruption). The generator never exceeds it, so
//! every failure is a real bug, not an impossible demand.

use std::collections::BTreeSet;
use std::fmt;

use kaelix_core::NodeId;
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::time::{Duration, Instant, duration_nanos};

use crate::disk::DiskConfig;
use crate::dist::{Latency, chance, exponential};
use crate::net::LinkConfig;

/// One discrete fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The node loses power: tasks and memory vanish, unsynced writes may be
    /// lost or torn.
    Crash(NodeId),
    /// The node boots again from its disk (erased first if `wipe`).
    Restart {
        /// The node.
        node: NodeId,
        /// Erase its disk first (a replaced machine).
        wipe: bool,
    },
    /// Every server node loses power at once.
    PowerLoss,
    /// The node's tasks stop being scheduled (GC pause, VM freeze); its
    /// clock and inbox keep going.
    Pause(NodeId),
    /// A paused node runs again.
    Resume(NodeId),
    /// No traffic between nodes of different groups.
    PartitionSymmetric(Vec<Vec<NodeId>>),
    /// `isolated` can send to the others but hears nothing back (or the
    /// reverse if `inbound_only` is false): an asymmetric partition.
    PartitionAsymmetric {
        /// The node cut off on one side.
        isolated: NodeId,
        /// If true, `isolated` still sends but cannot receive.
        inbound_blocked: bool,
    },
    /// One direction of one link is cut.
    PartitionOneWay {
        /// Sender side.
        from: NodeId,
        /// Receiver side.
        to: NodeId,
    },
    /// All partitions end.
    Heal,
    /// The node's wall clock jumps (NTP step), possibly backwards.
    ClockStep {
        /// The node.
        node: NodeId,
        /// Signed step in nanoseconds.
        delta_nanos: i64,
    },
    /// The node's clock drift changes.
    ClockDrift {
        /// The node.
        node: NodeId,
        /// New drift in parts per million.
        ppm: i64,
    },
    /// One bit of durable data flips on a faulty disk.
    BitRot(NodeId),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Crash(n) => write!(f, "crash {n}"),
            Fault::Restart { node, wipe } => write!(f, "restart {node}{}", if *wipe { " (wiped disk)" } else { "" }),
            Fault::PowerLoss => write!(f, "power loss (all servers)"),
            Fault::Pause(n) => write!(f, "pause {n}"),
            Fault::Resume(n) => write!(f, "resume {n}"),
            Fault::PartitionSymmetric(groups) => {
                write!(f, "partition")?;
                for g in groups {
                    let names: Vec<String> = g.iter().map(ToString::to_string).collect();
                    write!(f, " [{}]", names.join(" "))?;
                }
                Ok(())
            }
            Fault::PartitionAsymmetric { isolated, inbound_blocked } => {
                let dir = if *inbound_blocked { "cannot receive" } else { "cannot send" };
                write!(f, "asymmetric partition: {isolated} {dir}")
            }
            Fault::PartitionOneWay { from, to } => write!(f, "one-way partition {from} -/-> {to}"),
            Fault::Heal => write!(f, "heal partitions"),
            Fault::ClockStep { node, delta_nanos } => write!(f, "clock step {node} {:+}ms", delta_nanos / 1_000_000),
            Fault::ClockDrift { node, ppm } => write!(f, "clock drift {node} {ppm:+}ppm"),
            Fault::BitRot(n) => write!(f, "bit rot on {n}"),
        }
    }
}

/// What a scenario's protocol is built to survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tolerance {
    /// Most server nodes down (crashed) at once, power loss aside.
    pub max_down: usize,
    /// How many nodes may have disks that lose *synced* data (wipes,
    /// bit rot, misdirected writes, corrupt reads).
    pub faulty_disks: usize,
    /// Whether whole-cluster power loss is survivable (it is for any
    /// protocol that syncs before acknowledging).
    pub power_loss: bool,
}

/// Fault intensities for one run.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultProfile {
    /// Packet-level behaviour during the safety phase.
    pub link: LinkConfig,
    /// Disk behaviour during the safety phase.
    pub disk: DiskConfig,
    /// Crashes per second of simulated time (whole cluster).
    pub crash_rate: f64,
    /// Down time after a crash: uniform in this range.
    pub downtime: (Duration, Duration),
    /// Probability a restart of a faulty-disk node wipes its disk.
    pub wipe_probability: f64,
    /// Whole-cluster power losses per second.
    pub power_loss_rate: f64,
    /// Pauses per second.
    pub pause_rate: f64,
    /// Pause length: uniform in this range.
    pub pause_duration: (Duration, Duration),
    /// Partitions per second.
    pub partition_rate: f64,
    /// Partition length: uniform in this range.
    pub partition_duration: (Duration, Duration),
    /// Largest initial wall-clock skew between nodes.
    pub max_skew: Duration,
    /// Largest clock drift, parts per million.
    pub max_drift_ppm: i64,
    /// Wall-clock steps per second.
    pub clock_step_rate: f64,
    /// Drift changes per second.
    pub drift_change_rate: f64,
    /// Bit-rot events per second (faulty disks only).
    pub bitrot_rate: f64,
    /// Whether `buggify!` fault points may fire.
    pub buggify: bool,
}

impl FaultProfile {
    /// No faults at all: healthy links and disks, perfect clocks.
    pub fn calm() -> Self {
        FaultProfile {
            link: LinkConfig::healthy(),
            disk: DiskConfig::healthy(),
            crash_rate: 0.0,
            downtime: (Duration::from_millis(50), Duration::from_millis(500)),
            wipe_probability: 0.0,
            power_loss_rate: 0.0,
            pause_rate: 0.0,
            pause_duration: (Duration::from_millis(10), Duration::from_millis(300)),
            partition_rate: 0.0,
            partition_duration: (Duration::from_millis(100), Duration::from_secs(1)),
            max_skew: Duration::ZERO,
            max_drift_ppm: 0,
            clock_step_rate: 0.0,
            drift_change_rate: 0.0,
            bitrot_rate: 0.0,
            buggify: false,
        }
    }

    /// Swarm testing: each fault kind on with probability ½, with an
    /// intensity drawn from `rng`.
    pub fn swarm(rng: &mut DetRng) -> Self {
        let mut p = Self::calm();
        let on = |rng: &mut DetRng| rng.random_bool(0.5);
        if on(rng) {
            p.link.loss = rng.random_range(0.001..0.2);
        }
        if on(rng) {
            p.link.duplicate = rng.random_range(0.001..0.1);
        }
        if on(rng) {
            p.link.reorder = rng.random_range(0.01..0.3);
            p.link.reorder_max = Duration::from_micros(rng.random_range(100..20_000));
        }
        if on(rng) {
            p.link.latency = Latency::new(
                Duration::from_micros(rng.random_range(50..2_000)),
                Duration::from_micros(rng.random_range(50..10_000)),
            );
        }
        if on(rng) {
            p.disk.sync_latency = Latency::new(
                Duration::from_micros(rng.random_range(100..5_000)),
                Duration::from_micros(rng.random_range(100..20_000)),
            );
        }
        // What a crash does to unsynced writes: lost, torn, kept.
        p.disk.lost_write = rng.random_range(0.2..1.0);
        if on(rng) {
            p.disk.torn_write = rng.random_range(0.05..0.5);
        }
        if on(rng) {
            p.disk.misdirect = rng.random_range(0.001..0.02);
        }
        if on(rng) {
            p.disk.corrupt_read = rng.random_range(0.001..0.02);
        }
        if on(rng) {
            p.crash_rate = rng.random_range(0.2..5.0);
            p.wipe_probability = if on(rng) { rng.random_range(0.1..0.7) } else { 0.0 };
        }
        if on(rng) {
            p.power_loss_rate = rng.random_range(0.1..1.0);
        }
        if on(rng) {
            p.pause_rate = rng.random_range(0.2..4.0);
        }
        if on(rng) {
            p.partition_rate = rng.random_range(0.2..4.0);
        }
        if on(rng) {
            p.max_skew = Duration::from_millis(rng.random_range(1..5_000));
            p.max_drift_ppm = rng.random_range(1..50_000);
        }
        if on(rng) {
            p.clock_step_rate = rng.random_range(0.1..2.0);
        }
        if on(rng) {
            p.drift_change_rate = rng.random_range(0.1..2.0);
            p.max_drift_ppm = p.max_drift_ppm.max(1_000);
        }
        if on(rng) {
            p.bitrot_rate = rng.random_range(0.5..10.0);
        }
        p.buggify = on(rng);
        p
    }

    /// The names of the fault kinds switched on, for summaries.
    pub fn mix(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        let checks: [(&'static str, bool); 16] = [
            ("loss", self.link.loss > 0.0),
            ("duplication", self.link.duplicate > 0.0),
            ("reorder", self.link.reorder > 0.0),
            ("torn-writes", self.disk.torn_write > 0.0),
            ("misdirected-writes", self.disk.misdirect > 0.0),
            ("corrupt-reads", self.disk.corrupt_read > 0.0),
            ("crash", self.crash_rate > 0.0),
            ("wipe", self.crash_rate > 0.0 && self.wipe_probability > 0.0),
            ("power-loss", self.power_loss_rate > 0.0),
            ("pause", self.pause_rate > 0.0),
            ("partition", self.partition_rate > 0.0),
            ("clock-skew", self.max_skew > Duration::ZERO),
            ("clock-drift", self.max_drift_ppm > 0),
            ("clock-step", self.clock_step_rate > 0.0),
            ("bit-rot", self.bitrot_rate > 0.0),
            ("buggify", self.buggify),
        ];
        for (name, enabled) in checks {
            if enabled {
                m.push(name);
            }
        }
        m
    }

    /// Removes every fault the tolerance rules out.
    pub fn restrict(&mut self, tolerance: &Tolerance) {
        if tolerance.max_down == 0 {
            self.crash_rate = 0.0;
        }
        if tolerance.faulty_disks == 0 {
            self.wipe_probability = 0.0;
            self.bitrot_rate = 0.0;
            self.disk.misdirect = 0.0;
            self.disk.corrupt_read = 0.0;
        }
        if !tolerance.power_loss {
            self.power_loss_rate = 0.0;
        }
    }
}

/// Discrete faults at their times, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSchedule {
    /// `(time, fault)` in time order.
    pub faults: Vec<(Instant, Fault)>,
}

impl FaultSchedule {
    /// Number of faults.
    pub fn len(&self) -> usize {
        self.faults.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// Draws a schedule for `servers` over `[0, safety_end)`. Nodes in
    /// `faulty_disks` are the only ones whose restarts may wipe and that get
    /// bit rot. Every crashed node is restarted and every paused node resumed
    /// before `safety_end`; every partition heals by then.
    pub fn generate(
        profile: &FaultProfile,
        tolerance: &Tolerance,
        servers: &[NodeId],
        faulty_disks: &[NodeId],
        safety_end: Instant,
        rng: &mut DetRng,
    ) -> Self {
        let end = safety_end.as_nanos();
        let mut out: Vec<(u64, Fault)> = Vec::new();
        let uniform = |rng: &mut DetRng, (lo, hi): (Duration, Duration)| -> u64 {
            let (lo, hi) = (duration_nanos(lo), duration_nanos(hi));
            if hi <= lo { lo } else { rng.random_range(lo..=hi) }
        };
        let arrivals = |rng: &mut DetRng, rate: f64| -> Vec<u64> {
            let mut v = Vec::new();
            if rate <= 0.0 {
                return v;
            }
            let mut t = 0.0f64;
            loop {
                t += exponential(rng, 1e9 / rate);
                if t >= end as f64 {
                    return v;
                }
                v.push(t as u64);
            }
        };

        // Crashes and power losses share one timeline of "down" intervals so
        // the tolerance's max_down holds and no node crashes while down.
        let mut down_until: Vec<u64> = vec![0; servers.len()];
        let mut outages: Vec<(u64, bool)> = arrivals(rng, profile.crash_rate).into_iter().map(|t| (t, false)).collect();
        outages.extend(arrivals(rng, profile.power_loss_rate).into_iter().map(|t| (t, true)));
        outages.sort();
        for (t, power_loss) in outages {
            if power_loss {
                if down_until.iter().any(|&d| d > t) {
                    continue; // keep it simple: a power loss only from a fully-up cluster
                }
                out.push((t, Fault::PowerLoss));
                for (i, &node) in servers.iter().enumerate() {
                    let back = (t + uniform(rng, profile.downtime)).min(end.saturating_sub(1)).max(t);
                    down_until[i] = back + 1;
                    out.push((back, Fault::Restart { node, wipe: false }));
                }
                continue;
            }
            let down_now = down_until.iter().filter(|&&d| d > t).count();
            if down_now >= tolerance.max_down {
                continue;
            }
            let up: Vec<usize> = (0..servers.len()).filter(|&i| down_until[i] <= t).collect();
            if up.is_empty() {
                continue;
            }
            let i = up[rng.random_range(0..up.len())];
            let node = servers[i];
            let back = (t + uniform(rng, profile.downtime)).min(end.saturating_sub(1)).max(t);
            let wipe = faulty_disks.contains(&node) && chance(rng, profile.wipe_probability);
            down_until[i] = back + 1;
            out.push((t, Fault::Crash(node)));
            out.push((back, Fault::Restart { node, wipe }));
        }

        let mut paused_until: Vec<u64> = vec![0; servers.len()];
        for t in arrivals(rng, profile.pause_rate) {
            let i = rng.random_range(0..servers.len());
            if paused_until[i] > t {
                continue;
            }
            let back = (t + uniform(rng, profile.pause_duration)).min(end.saturating_sub(1)).max(t);
            paused_until[i] = back + 1;
            out.push((t, Fault::Pause(servers[i])));
            out.push((back, Fault::Resume(servers[i])));
        }

        let mut partitioned_until = 0u64;
        for t in arrivals(rng, profile.partition_rate) {
            if partitioned_until > t || servers.len() < 2 {
                continue;
            }
            let fault = match rng.random_range(0..3) {
                0 => {
                    let mut shuffled = servers.to_vec();
                    for k in (1..shuffled.len()).rev() {
                        shuffled.swap(k, rng.random_range(0..=k));
                    }
                    let cut = rng.random_range(1..shuffled.len());
                    let (a, b) = shuffled.split_at(cut);
                    let mut groups = vec![a.to_vec(), b.to_vec()];
                    for g in &mut groups {
                        g.sort();
                    }
                    groups.sort();
                    Fault::PartitionSymmetric(groups)
                }
                1 => Fault::PartitionAsymmetric {
                    isolated: servers[rng.random_range(0..servers.len())],
                    inbound_blocked: rng.random_bool(0.5),
                },
                _ => {
                    let from = servers[rng.random_range(0..servers.len())];
                    let others: Vec<NodeId> = servers.iter().copied().filter(|&n| n != from).collect();
                    let to = others[rng.random_range(0..others.len())];
                    Fault::PartitionOneWay { from, to }
                }
            };
            let back = (t + uniform(rng, profile.partition_duration)).min(end.saturating_sub(1)).max(t);
            partitioned_until = back + 1;
            out.push((t, fault));
            out.push((back, Fault::Heal));
        }

        for t in arrivals(rng, profile.clock_step_rate) {
            let node = servers[rng.random_range(0..servers.len())];
            let max = duration_nanos(profile.max_skew.max(Duration::from_millis(100))) as i64;
            out.push((t, Fault::ClockStep { node, delta_nanos: rng.random_range(-max..=max) }));
        }
        for t in arrivals(rng, profile.drift_change_rate) {
            let node = servers[rng.random_range(0..servers.len())];
            let max = profile.max_drift_ppm.max(1);
            out.push((t, Fault::ClockDrift { node, ppm: rng.random_range(-max..=max) }));
        }
        if !faulty_disks.is_empty() {
            for t in arrivals(rng, profile.bitrot_rate) {
                let node = faulty_disks[rng.random_range(0..faulty_disks.len())];
                out.push((t, Fault::BitRot(node)));
            }
        }

        // Stable sort keeps a crash before its restart when times tie.
        out.sort_by_key(|(t, _)| *t);
        FaultSchedule { faults: out.into_iter().map(|(t, f)| (Instant::from_nanos(t), f)).collect() }
    }

    /// The nodes this schedule ever crashes or wipes.
    pub fn crashed_nodes(&self) -> BTreeSet<NodeId> {
        self.faults
            .iter()
            .filter_map(|(_, f)| match f {
                Fault::Crash(n) => Some(*n),
                Fault::Restart { node, wipe: true } => Some(*node),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaelix_core::rng::seeded;

    fn nodes(n: u64) -> Vec<NodeId> {
        (0..n).map(NodeId).collect()
    }

    fn busy() -> FaultProfile {
        FaultProfile {
            crash_rate: 5.0,
            wipe_probability: 0.5,
            power_loss_rate: 0.5,
            pause_rate: 3.0,
            partition_rate: 3.0,
            clock_step_rate: 1.0,
            drift_change_rate: 1.0,
            max_drift_ppm: 1000,
            bitrot_rate: 2.0,
            ..FaultProfile::calm()
        }
    }

    /// Replays a schedule and checks the tolerance and phase rules hold.
    #[test]
    fn schedules_respect_tolerance_and_end_healed() {
        let tol = Tolerance { max_down: 2, faulty_disks: 1, power_loss: true };
        let servers = nodes(5);
        for seed in 0..200 {
            let mut rng = seeded(seed);
            let end = Instant::from_nanos(10_000_000_000);
            let s = FaultSchedule::generate(&busy(), &tol, &servers, &servers[..1], end, &mut rng);
            let mut down = BTreeSet::new();
            let mut paused = BTreeSet::new();
            let mut partitioned = false;
            for (t, f) in &s.faults {
                assert!(*t < end, "fault after the safety phase");
                match f {
                    Fault::Crash(n) => {
                        assert!(down.insert(*n), "crashed a down node");
                        assert!(down.len() <= tol.max_down, "too many down at once");
                    }
                    Fault::PowerLoss => {
                        assert!(down.is_empty());
                        down.extend(servers.iter().copied());
                    }
                    Fault::Restart { node, wipe } => {
                        assert!(down.remove(node), "restarted an up node");
                        assert!(!wipe || *node == servers[0], "wiped a healthy disk");
                    }
                    Fault::Pause(n) => assert!(paused.insert(*n)),
                    Fault::Resume(n) => assert!(paused.remove(n)),
                    Fault::Heal => partitioned = false,
                    Fault::PartitionSymmetric(_)
                    | Fault::PartitionAsymmetric { .. }
                    | Fault::PartitionOneWay { .. } => {
                        assert!(!partitioned);
                        partitioned = true;
                    }
                    Fault::BitRot(n) => assert_eq!(*n, servers[0]),
                    Fault::ClockStep { .. } | Fault::ClockDrift { .. } => {}
                }
            }
            assert!(down.is_empty() && paused.is_empty() && !partitioned, "seed {seed} ends unhealed");
        }
    }

    #[test]
    fn crash_rate_is_close_to_configured() {
        let tol = Tolerance { max_down: 5, faulty_disks: 0, power_loss: false };
        let profile = FaultProfile {
            crash_rate: 2.0,
            downtime: (Duration::from_millis(1), Duration::from_millis(1)),
            ..FaultProfile::calm()
        };
        let mut rng = seeded(11);
        let end = Instant::from_nanos(1_000_000_000_000); // 1000 s
        let s = FaultSchedule::generate(&profile, &tol, &nodes(5), &[], end, &mut rng);
        let crashes = s.faults.iter().filter(|(_, f)| matches!(f, Fault::Crash(_))).count();
        // Poisson(2000): sd ≈ 45; allow 5 sd.
        assert!((crashes as i64 - 2000).abs() < 225, "{crashes} crashes");
    }

    #[test]
    fn swarm_varies_the_mix_across_seeds() {
        let mixes: BTreeSet<Vec<&str>> = (0..100).map(|s| FaultProfile::swarm(&mut seeded(s)).mix()).collect();
        assert!(mixes.len() > 50, "only {} distinct mixes", mixes.len());
        let all_on = (0..200).any(|s| FaultProfile::swarm(&mut seeded(s)).mix().len() >= 10);
        let few_on = (0..200).any(|s| FaultProfile::swarm(&mut seeded(s)).mix().len() <= 4);
        assert!(all_on && few_on);
    }

    #[test]
    fn restrict_removes_untolerated_faults() {
        let mut p = busy();
        p.disk.misdirect = 0.1;
        p.restrict(&Tolerance { max_down: 0, faulty_disks: 0, power_loss: false });
        let mix = p.mix();
        for banned in ["crash", "wipe", "power-loss", "bit-rot", "misdirected-writes"] {
            assert!(!mix.contains(&banned), "{banned} left on");
        }
    }
}

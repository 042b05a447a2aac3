//! The availability oracle of Raft-replicated partitions: whenever a
//! majority of the servers is up, unpaused and mutually connected, and the
//! clients reach it, for long enough, produces complete.
//!
//! It judges from the simulator's ground truth (node status, cut links,
//! the applied faults: [`Sim::status`], [`Sim::blocked_links`],
//! [`Sim::faults_since`]) and from what the clients saw (when a produce was
//! acknowledged, in the simulator's true time); never from the servers'
//! roles, terms or counters. It sends, spawns and traces nothing, so
//! watching does not change a run.
//!
//! # Windows
//!
//! A server is **healthy** when it is up, not paused, and its disk was
//! never replaced in this run (a wiped member *recovers*: it neither votes
//! nor campaigns until a leader elected without it has caught it up, so it
//! cannot count toward the majority that elects one). A **healthy
//! majority** is a set `S` of healthy servers, more than half of them,
//! such that no link between two of `S` is cut in either direction and no
//! link between a client and a member of `S` is cut either way.
//!
//! Faults are **harmful** when they can take leadership away: a crash, a
//! power loss, a pause, the start of a partition. The others (restart,
//! resume, heal, clock steps and drift changes) only bring nodes and links
//! back. A **window** opens at time 0, at every fault after which a
//! healthy majority exists that did not exist before it (the largest
//! healthy majority changed), and at the start of the liveness phase
//! (everything healed, no fault from then on: judged in every seed, since
//! the clients keep producing for longer than `B` into it); every window
//! closes at the next harmful fault, wherever it strikes. Why a harmful fault outside `S` closes the
//! windows of `S`: a server outside `S` may lead `S` (it was elected with
//! `S`'s votes while it was reachable); crashing, pausing or cutting it off
//! costs `S` an election, so the time `S` is owed restarts there.
//!
//! # The property
//!
//! In every window `[a, b)` with `a + B ≤ b` that ends its bound before the
//! clients stop (the end of the safety phase), every group has a produce
//! acknowledged in `[a, a + B]`. The clients produce all the time: each of
//! the three is always in an operation or in a pause of at most 25 ms,
//! each operation is a produce to a given group with probability 0.325,
//! and an operation on a group that answers ends in milliseconds (one on a
//! group that does not, within the client's 1 s deadline), so a group
//! without an acknowledged produce for `B` was asked and did not answer.
//!
//! # The bound `B` ([`bound`])
//!
//! With `T` the minimum election timeout (timeouts are drawn from
//! `[T, 2T)`), `h` the heartbeat interval, `A` the client's attempt timeout
//! and `δ = 1 + max drift` (timers run on node clocks, at worst that much
//! slow), the worst case from a window's start, in order:
//!
//! 1. A leader outside `S` that `S` still hears but that no longer hears a
//!    quorum (an asymmetric or one-way cut) keeps `S`'s followers from
//!    campaigning until CheckQuorum deposes it: it checks every `T`, and
//!    steps down at the first check after a whole period without a quorum:
//!    `2T·δ`.
//! 2. Then `S`'s members time out: at most `2T·δ` after their last contact.
//! 3. The first PreVote may be refused by a member whose leader lease (`T`
//!    after its own last contact, which may be up to a heartbeat later than
//!    the candidate's) has not run out, and the real vote may split between
//!    two candidates: each costs another timeout, `2T·δ`; two of them are
//!    allowed. Lost requests are resent every `h`, so loss costs `h`s, not
//!    rounds (below).
//! 4. The new leader commits its no-op and the produce: round trips, syncs
//!    and the retransmission of what was lost, `4h`.
//! 5. The client: the attempt under way when the leader is known may sit
//!    at a dead end (a paused node, or a cut-off leader that accepted it)
//!    until its timeout `A`; a failed attempt sleeps at most 30 ms and tries
//!    a random member, which redirects to the leader unless it is another
//!    dead end: two such are allowed, `3·(A + 30 ms)`.
//!
//! `B = 8T·δ + 4h + 3(A + 30 ms)`: with the defaults (`T` = 150 ms, `h` =
//! 30 ms, `A` = 300 ms) 2.31 s with perfect clocks, 2.37 s at the largest
//! drift a seed draws (5 %).
//!
//! **What makes it probabilistic.** Steps 3 and 5 allow a fixed number of
//! unlucky rounds and picks: a third split vote, or a client choosing dead
//! ends three times in a row, is possible, only unlikely (a random pick is
//! a dead end with probability at most 2/5, and three clients pick
//! independently, so all of them failing three times is `(2/5)^9 < 3·10⁻⁴`
//! even before counting that any one success suffices). Loss (at most 20 %
//! per datagram in the scenario's profiles; client streams lose nothing)
//! only delays: votes are resent to silent voters every `h`, appends on the
//! next heartbeat round, so a message needs `k` resends with probability
//! `0.36^k` (request or answer lost), and step 4's `4h` plus the slack of
//! the other steps (they are worst cases that rarely add up) absorb it.
//! The fault point that hands leadership away now and then (`buggify`,
//! only in the safety phase) costs at most an election timeout per
//! transfer, and the leader keeps committing between transfers. The tallies
//! give the measured distribution of "window start → first acknowledged
//! produce" so the margin is visible.

use std::collections::BTreeSet;

use kaelix_cluster::raft::RaftConfig;
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_sim::{Fault, NodeStatus, Sim};

/// The bound `B` of the module docs for members configured as `raft`, a
/// client whose attempts time out after `attempt_timeout`, and clocks that
/// drift at most `max_drift_ppm`.
pub fn bound(raft: &RaftConfig, attempt_timeout: Duration, max_drift_ppm: i64) -> Duration {
    let t = raft.election_timeout;
    let stretch = |d: Duration| d + d * max_drift_ppm.unsigned_abs() as u32 / 1_000_000;
    // CheckQuorum step-down, the first timeout, two failed rounds.
    let election = stretch(t * 8);
    let commit = raft.heartbeat_interval * 4;
    let client = (attempt_timeout + Duration::from_millis(30)) * 3;
    election + commit + client
}

/// Upper ends of the tally buckets of "window start → first acknowledged
/// produce", in milliseconds (the last bucket is "up to `B`").
const BUCKETS_MS: [u64; 6] = [100, 250, 500, 1000, 1500, 2000];

/// The tally names, one per bucket of [`BUCKETS_MS`] and one for "up to B".
pub const TALLY_NAMES: [&str; 7] = [
    "available window: first produce <=100ms",
    "available window: first produce <=250ms",
    "available window: first produce <=500ms",
    "available window: first produce <=1s",
    "available window: first produce <=1.5s",
    "available window: first produce <=2s",
    "available window: first produce <=B",
];

/// One window: since when a healthy majority has been there with no
/// harmful fault anywhere.
struct Window {
    start: Instant,
    /// The largest healthy majority when it opened.
    majority: Vec<NodeId>,
    /// Per group, the first acknowledged produce at or after `start`.
    first: Vec<Option<Instant>>,
    judged: bool,
}

/// What the oracle measured, for the scenario's tallies.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// (window, group) pairs judged, by bucket of [`TALLY_NAMES`].
    pub first_produce: [u64; 7],
    /// Windows judged (each counts once, whatever its groups).
    pub windows_judged: u64,
    /// Windows closed by a harmful fault (or the clients' end) before `B`.
    pub windows_too_short: u64,
}

/// The oracle of one run (see the module docs).
pub struct Availability {
    servers: Vec<NodeId>,
    clients: Vec<NodeId>,
    groups: usize,
    bound: Duration,
    /// The clients stop producing here; windows must end their bound by it.
    clients_end: Instant,
    /// Faults already read from the simulator's log.
    faults_read: usize,
    wiped: BTreeSet<NodeId>,
    /// Whether the liveness phase was seen to start.
    healed: bool,
    open: Vec<Window>,
    tally: Tally,
    violation: Option<String>,
}

impl Availability {
    /// An oracle of `groups` groups replicated on every one of `servers`,
    /// produced to by `clients`, judged against `bound` until `clients_end`.
    /// Opens the first window if a healthy majority exists at `sim`'s start.
    pub fn new(
        sim: &Sim,
        servers: Vec<NodeId>,
        clients: Vec<NodeId>,
        groups: u32,
        bound: Duration,
        clients_end: Instant,
    ) -> Self {
        let mut oracle = Availability {
            servers,
            clients,
            groups: groups as usize,
            bound,
            clients_end,
            faults_read: 0,
            wiped: BTreeSet::new(),
            healed: false,
            open: Vec::new(),
            tally: Tally::default(),
            violation: None,
        };
        oracle.maybe_open(sim, sim.now());
        oracle
    }

    /// The bound windows are judged against.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// A client saw a produce to `group` acknowledged at (true) time `at`.
    pub fn acknowledged(&mut self, group: u32, at: Instant) {
        for w in &mut self.open {
            let first = &mut w.first[group as usize];
            if w.start <= at && first.is_none() {
                *first = Some(at);
            }
        }
    }

    /// After every simulator step: reads the faults applied since the last
    /// call, closes and opens windows, and judges every window whose bound
    /// has passed.
    pub fn step(&mut self, sim: &Sim) {
        let now = sim.now();
        let faults = sim.faults_since(self.faults_read);
        if !faults.is_empty() {
            self.faults_read += faults.len();
            for (at, fault) in &faults {
                // Judged before closing: a window whose bound passed
                // before the fault owed its produce already.
                self.judge(*at);
                match fault {
                    Fault::Restart { node, wipe: true } => {
                        self.wiped.insert(*node);
                    }
                    Fault::Crash(_)
                    | Fault::PowerLoss
                    | Fault::Pause(_)
                    | Fault::PartitionSymmetric(_)
                    | Fault::PartitionAsymmetric { .. }
                    | Fault::PartitionOneWay { .. } => self.close_all(),
                    Fault::Restart { .. }
                    | Fault::Resume(_)
                    | Fault::Heal
                    | Fault::ClockStep { .. }
                    | Fault::ClockDrift { .. }
                    | Fault::BitRot(_) => {}
                }
            }
            self.maybe_open(sim, now);
        }
        if !self.healed && sim.in_liveness() {
            // Heal: every node back (the retired aside), every link whole,
            // no fault from now on.
            self.healed = true;
            self.maybe_open(sim, now);
        }
        self.judge(now);
    }

    /// The first violation, if any.
    pub fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    /// What was measured; windows still open are counted as too short.
    pub fn tally(&self) -> Tally {
        let mut t = self.tally.clone();
        t.windows_too_short += self.open.iter().filter(|w| !w.judged).count() as u64;
        t
    }

    fn close_all(&mut self) {
        self.tally.windows_too_short += self.open.iter().filter(|w| !w.judged).count() as u64;
        self.open.clear();
    }

    /// Opens a window at `now` if the largest healthy majority is not the
    /// one the newest open window started with.
    fn maybe_open(&mut self, sim: &Sim, now: Instant) {
        let Some(majority) = self.healthy_majority(sim) else { return };
        if self.open.last().is_some_and(|w| w.majority == majority) {
            return;
        }
        self.open.push(Window { start: now, majority, first: vec![None; self.groups], judged: false });
    }

    /// The largest healthy majority (module docs), if any.
    fn healthy_majority(&self, sim: &Sim) -> Option<Vec<NodeId>> {
        let blocked = sim.blocked_links();
        let cut = |a: NodeId, b: NodeId| blocked.contains(&(a, b)) || blocked.contains(&(b, a));
        let healthy: Vec<NodeId> = self
            .servers
            .iter()
            .copied()
            .filter(|&s| sim.status(s) == NodeStatus::Up && !self.wiped.contains(&s))
            .filter(|&s| self.clients.iter().all(|&c| !cut(c, s)))
            .collect();
        let majority = self.servers.len() / 2 + 1;
        assert!(healthy.len() <= 16, "subsets of at most 16 servers are enumerated");
        let mut best: Option<Vec<NodeId>> = None;
        for mask in 0u32..(1 << healthy.len()) {
            let size = mask.count_ones() as usize;
            if size < majority || best.as_ref().is_some_and(|b| b.len() >= size) {
                continue;
            }
            let members: Vec<NodeId> =
                healthy.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, &s)| s).collect();
            let connected = members.iter().all(|&a| members.iter().all(|&b| a == b || !cut(a, b)));
            if connected {
                best = Some(members);
            }
        }
        best
    }

    /// Judges every open window whose bound ended before `now` (and before
    /// the clients' end).
    fn judge(&mut self, now: Instant) {
        let bound = self.bound;
        for w in &mut self.open {
            let due = w.start + bound;
            if w.judged || due >= now || due > self.clients_end {
                continue;
            }
            w.judged = true;
            self.tally.windows_judged += 1;
            for (group, first) in w.first.iter().enumerate() {
                match first {
                    Some(at) => {
                        let ms = at.saturating_duration_since(w.start).as_millis() as u64;
                        let bucket = BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(BUCKETS_MS.len());
                        self.tally.first_produce[bucket] += 1;
                    }
                    None if self.violation.is_none() => {
                        let members: Vec<String> = w.majority.iter().map(ToString::to_string).collect();
                        self.violation = Some(format!(
                            "availability: group {group} had no produce acknowledged within {bound:?} of {:?}, though {} (a majority) were up, unpaused and connected with each other and the clients from then on, with no crash, pause or partition anywhere",
                            w.start.since_origin(),
                            members.join(", "),
                        ));
                    }
                    None => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaelix_runtime_sim::SimRuntime;
    use kaelix_sim::{NodeKind, NodeSpec, SimConfig};

    const CLIENT: NodeId = NodeId(100);
    const B: Duration = Duration::from_secs(2);

    /// Three idle servers and one idle client: the oracle only reads the
    /// simulator's ground truth, which the tests move with faults.
    fn world() -> (Sim, Availability) {
        let sim = Sim::new(SimConfig::new(7));
        let servers: Vec<NodeId> = (1..=3).map(NodeId).collect();
        for &id in servers.iter().chain([&CLIENT]) {
            let kind = if id == CLIENT { NodeKind::Client } else { NodeKind::Server };
            let init = SimRuntime::init(|_| std::future::pending::<()>());
            sim.add_node(id, NodeSpec { kind, name: id.to_string(), faulty_disk: false, init });
        }
        let oracle = Availability::new(&sim, servers, vec![CLIENT], 2, B, Instant::ZERO + Duration::from_secs(60));
        (sim, oracle)
    }

    /// Moves the simulation to `at` (it has no events) and steps the oracle.
    fn advance(sim: &Sim, oracle: &mut Availability, at: Duration) {
        sim.run_until(Instant::ZERO + at, |_| Ok::<(), ()>(())).expect("no check");
        oracle.step(sim);
    }

    #[test]
    fn a_group_silent_for_the_bound_while_a_majority_is_up_is_a_violation() {
        let (sim, mut oracle) = world();
        oracle.acknowledged(0, Instant::ZERO + Duration::from_millis(300));
        advance(&sim, &mut oracle, B - Duration::from_millis(1));
        assert!(oracle.violation().is_none(), "judged before its bound");
        advance(&sim, &mut oracle, B + Duration::from_millis(1));
        let v = oracle.violation().expect("group 1 never answered");
        assert!(v.starts_with("availability: group 1 "), "{v}");
        // Group 0's answer was measured: one window, 300 ms.
        assert_eq!(oracle.tally().first_produce[2], 1);
        assert_eq!(oracle.tally().windows_judged, 1);
    }

    #[test]
    fn a_harmful_fault_anywhere_restarts_the_window() {
        let (sim, mut oracle) = world();
        oracle.acknowledged(0, Instant::ZERO + Duration::from_millis(10));
        oracle.acknowledged(1, Instant::ZERO + Duration::from_millis(10));
        advance(&sim, &mut oracle, Duration::from_secs(1));
        // Node 3 pauses: {1, 2} is still a healthy majority, but the time it
        // is owed starts again, and the earlier answers do not count.
        sim.apply_fault(Fault::Pause(NodeId(3)));
        advance(&sim, &mut oracle, Duration::from_secs(1));
        oracle.acknowledged(0, Instant::ZERO + Duration::from_millis(1500));
        advance(&sim, &mut oracle, Duration::from_secs(1) + B + Duration::from_millis(1));
        let v = oracle.violation().expect("group 1 silent since the pause");
        assert!(v.contains("group 1") && v.contains("n1, n2"), "{v}");
        // The first window (from 0) was cut at 1 s, before its bound.
        assert_eq!(oracle.tally().windows_judged, 1);
    }

    #[test]
    fn no_window_without_a_connected_majority_and_none_for_a_wiped_member() {
        let (sim, mut oracle) = world();
        sim.apply_fault(Fault::PartitionSymmetric(vec![vec![NodeId(1)], vec![NodeId(2)], vec![NodeId(3)]]));
        advance(&sim, &mut oracle, Duration::ZERO);
        advance(&sim, &mut oracle, B * 2);
        assert!(oracle.violation().is_none(), "three singletons are no majority");
        assert_eq!(oracle.tally().windows_judged, 0);
        // Heal, but with node 1 crashed and back on a replaced disk (it
        // recovers, so it counts for nothing) and node 2 down: no majority.
        sim.apply_fault(Fault::Crash(NodeId(1)));
        sim.apply_fault(Fault::Crash(NodeId(2)));
        sim.apply_fault(Fault::Restart { node: NodeId(1), wipe: true });
        sim.apply_fault(Fault::Heal);
        advance(&sim, &mut oracle, B * 2);
        advance(&sim, &mut oracle, B * 4);
        assert!(oracle.violation().is_none(), "a recovering member and one up member are no majority");
        // Node 2 back: {2, 3} is, and owes its produces from then on.
        sim.apply_fault(Fault::Restart { node: NodeId(2), wipe: false });
        advance(&sim, &mut oracle, B * 4);
        advance(&sim, &mut oracle, B * 5 + Duration::from_millis(1));
        assert!(oracle.violation().expect("owed since the restart").contains("n2, n3"));
    }
}

//! The membership oracle: watches every run of every node of a simulated
//! SWIM cluster from outside and judges it against the simulator's ground
//! truth (who is up, paused, partitioned from whom).
//!
//! It sees each node run's [`Membership`] handle (member list, own
//! incarnation, counters) and every event the run emits, and is stepped by
//! the harness after every simulator event ([`Oracle::observe`]). It never
//! sends, spawns or traces anything, so watching does not change a run.
//!
//! # What it checks
//!
//! **Incarnations only grow**, precisely (a restarted node starts fresh, so
//! the statements are per *run*, one boot of one node):
//!
//! 1. A run's own incarnation never decreases. A new run may start *below*
//!    an earlier run's (its incarnation comes from its wall clock, which may
//!    have been stepped back).
//! 2. The incarnation a run holds for a member never decreases while it
//!    holds a record of that member. The one exception is forgetting: a
//!    tombstone that was collected may be relearned lower (the oracle
//!    allows a decrease only from a tombstone, and only when the run's
//!    tombstone-collection counter moved since).
//! 3. Nobody invents incarnations: every incarnation anyone holds for `X`
//!    is at most the highest incarnation any run of `X` has held so far.
//! 4. After heal (the liveness condition) every run sees every node alive
//!    ([`Oracle::alive_sets_agree`]), and then — once anti-entropy has
//!    done its work — alive *at that node's current incarnation*
//!    ([`Oracle::converged`]): a restarted node that started below its
//!    tombstone has jumped above it and everyone has learned the new run
//!    (memberlist#345).
//!
//! 1–3 are checked on a sample of every run's state each `sample_every`
//! of simulated time; own incarnations are read at the same instant, so 3
//! is exact at each sample.
//!
//! **False positives.** A *death* is the first `Dead` event about one
//! member at one incarnation (later `Dead` events about it are gossip of
//! the same declaration). It is **false** when the declared incarnation
//! belongs to the member's current run (at least its first incarnation and
//! above everything its earlier runs held) and, throughout the window from
//! `probe_window` before the first suspicion of that incarnation to the
//! declaration, the member was up and never paused, and neither direction
//! of the link between it and the first declarer was cut. Packet loss,
//! duplication, reordering, latency and clock faults are allowed: they are
//! what the budget is for. `probe_window` is the longest protocol period
//! (`probe_interval · (lhm_max + 1)` with Lifeguard), so the probe that
//! failed is inside the window. The same judgement of the first `Suspect`
//! of each member incarnation gives the false *suspicions* (the first
//! suspecter is the accuser itself). Deaths and suspicions that name an
//! earlier run (the node restarted) are true.
//!
//! # What SWIM promises beyond that (checks 5–7)
//!
//! These are judged on every node run's *view* (its member list and own
//! incarnation) after **every simulator step** that changed it (the
//! handle's [`Membership::view_version`] says which did), and on the
//! simulator's ground truth; never on the nodes' counters or events.
//!
//! 5. **No revival without a higher incarnation.** A record a view holds as
//!    `Suspect`, `Dead` or `Left` at incarnation `i` becomes `Alive` only at
//!    an incarnation above `i`: only the member itself raises incarnations,
//!    so an `Alive` at `i` is old news and must lose. The one exception is
//!    forgetting: a tombstone the oracle has seen held for `gc_after` may
//!    have been collected, and the member relearned, within one step.
//!
//! 6. **Completeness.** A member that stays crashed is dropped (held
//!    `Dead`, `Left` or not at all) by every live node within the bound
//!    `B(n)` below. *Condition under which the bound applies:* the calm
//!    phase (the simulator's liveness phase: no loss, no partition, no
//!    pause, every node but the lost ones up); the window of an observer
//!    `O` and a crashed member `X` opens at the later of the calm phase's
//!    start and the moment `O` last started holding `X` live (a stale push-
//!    pull may teach `O` an old `Alive` of a member it had dropped and
//!    forgotten; then it must drop it again). Before the calm phase loss
//!    and partitions can raise local health without limit and a cut-off
//!    observer may hear nothing, so no bound is stated there. Derivation,
//!    with `T` the protocol period, `h` the local health multiplier
//!    (`0..=lhm_max`), `L ≤ n − 1` the members `O` knows:
//!    * `O` is in some protocol period when the window opens: at most
//!      `(lhm_max + 1)·T`.
//!    * `O` probes every member it holds live once per round, rounds in a
//!      fresh shuffle: `X` is probed within `2L − 1 ≤ 2n − 3` probes (it
//!      may have just been passed, and be last in the next round). It
//!      cannot answer, nor can anyone relay for it, so that probe fails.
//!    * The **phi gate** may defer that failure, and each deferral probes
//!      `X` again the very next period; after `G`
//!      (`phi_gate_max_deferrals`, 0 with the gate off) deferrals in a row
//!      the gate must let the next failure through, whatever phi says. So
//!      within `2n − 3 + G` probes a failed probe of `X` starts (or
//!      confirms) `O`'s suspicion of `X`, at the latest.
//!    * Those probes last `(h + 1)·T`. In the calm phase an answered probe
//!      lowers `h` by one and no probe raises it (a probe of `X` is nacked
//!      by the helpers, which are up and reachable; nobody's probe of `O`
//!      fails), so the probes' excess over `T` is at most
//!      `(1 + 2 + … + lhm_max)·T`, plus `lhm_max·T` for each of the
//!      `G + 1` probes of `X`, which lower nothing. (Refuting a suspicion of
//!      itself raises `h`; in the calm phase only a suspicion left over
//!      from before can reach `O`, and the other terms' slack covers a few
//!      of those.)
//!    * `O`'s suspicion lasts at most the longest Lifeguard allows:
//!      `suspicion_max_timeout_mult · suspicion_mult · max(1, log10 n) · T`
//!      (dogpile confirmations only shorten it; `n` bounds the live count
//!      it is computed at).
//!    * Timers run on node clocks, up to the profile's drift slow: the sum
//!      is stretched by `1 + max_drift`.
//!
//!    `B = (1 + drift)·[(lhm_max + 1)T + (2n − 3 + G)T + (lhm_max(lhm_max+1)/2 +
//!    (G + 1)·lhm_max)T + S_max(n)]`; with the default configuration
//!    (`G = 2`) 90 s at 5 nodes, 127.2 s at 20, 304 s at 100, before drift
//!    (74 s, 111.2 s and 288 s with the gate off). It is a worst case
//!    (one observer alone, every probe at the slowest scale its health
//!    allows, no dogpile): the cluster normally does far better, as the
//!    scenarios' tallies show (most lost nodes are dead everywhere within
//!    10 s), and the bound is there to catch a detector that does not
//!    complete, or completes only through anti-entropy.
//!
//! 7. **Refutation spread.** When a member refutes a suspicion the oracle
//!    judged false (its own incarnation rises from `a` to `b > a` while a
//!    false suspicion at an incarnation in `[a, b)` stands), every node
//!    that is up (the watched slow node aside) holds it at `≥ b` (or holds
//!    no record of it) within `R(n)`, the **shortest suspicion timeout**
//!    `suspicion_mult · max(1, log10 n) · T` (4 s at 5 nodes, 5.2 s at 20,
//!    8 s at 100): a refutation that has not outrun the suspicion it
//!    answers kills a healthy member somewhere. *Condition:* the spread is
//!    judged only if nothing but the watched node's pauses changed (no
//!    crash, restart, pause or partition) from the refutation until every
//!    node has it, and no link was cut; loss, duplication, reordering,
//!    latency and clock faults are allowed. Why the bound holds with room:
//!    the refutation is queued at the member, which gossips it every
//!    `gossip_interval` (200 ms) to `gossip_nodes` (3) members and
//!    piggybacks it on probes, `retransmit_mult · ⌈log2(n + 1)⌉` times (12
//!    at 5 nodes, 20 at 20, 28 at 100); every receiver does the same. An
//!    epidemic with fan-out 3 and loss `p ≤ 0.2` doubles at least every
//!    round, so it reaches all `n` in about `log2 n` rounds (≤ 1.4 s at 100
//!    nodes) plus the last transmissions (`⌈λ/3⌉` rounds, ≤ 2 s); a given
//!    node is missed by all `≈ λ·n` transmissions with probability about
//!    `e^(−λ(1−p))` (≤ 7·10⁻⁵ at 5 nodes, ≤ 10⁻⁷ at 20), and even then a
//!    suspect record it holds goes to the member with every packet to it
//!    (buddy system), which answers by queueing its `Alive` again. The
//!    tallies give the measured distribution.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::Stream;

use futures_channel::mpsc::UnboundedReceiver;
use kaelix_cluster::membership::{self, Membership, MembershipConfig};
use kaelix_cluster::swim::{MemberState, MembershipEvent, MembershipEventKind, SwimConfig, suspicion};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::world::NodeInit;
use kaelix_sim::{NodeStatus, Sim};

/// A node run that has started, as its init function reports it.
struct Started {
    node: NodeId,
    membership: Membership,
    events: UnboundedReceiver<MembershipEvent>,
}

/// Where node inits report their runs to the oracle.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<Vec<Started>>>);

impl Registry {
    fn push(&self, started: Started) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(started);
    }

    fn take(&self) -> Vec<Started> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The init function of a simulated node that runs the membership service
/// with `config` (built per boot by `config`) and reports each run to
/// `registry`.
pub fn membership_node(
    id: NodeId,
    registry: Registry,
    config: impl Fn() -> MembershipConfig + Send + Sync + 'static,
) -> NodeInit {
    let config = Arc::new(config);
    SimRuntime::init(move |rt| {
        let (registry, config) = (registry.clone(), config.clone());
        async move {
            let m = membership::start(&rt, config());
            // Subscribed before the driver's first step: no event is missed.
            let events = m.subscribe();
            registry.push(Started { node: id, membership: m, events });
            std::future::pending::<()>().await
        }
    })
}

/// One membership event as the oracle saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Simulated (true) time.
    pub at: Instant,
    /// The node whose run emitted it.
    pub observer: NodeId,
    /// What happened.
    pub kind: MembershipEventKind,
    /// To whom.
    pub member: NodeId,
    /// At which incarnation.
    pub incarnation: u64,
}

/// Tallies of what the oracle judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct member incarnations suspected.
    pub suspicions: u64,
    /// `Suspect` events, every observer's each (a suspicion raised or
    /// learned), about a member whose current run was up and not paused at
    /// that moment by the simulator's ground truth, at an incarnation of
    /// that run: suspicions of members that were alive, however they
    /// spread (what the phi gate is meant to cut under loss).
    pub suspect_events_of_up_members: u64,
    /// Of those, about a healthy, reachable member (see the module docs).
    pub false_suspicions: u64,
    /// False suspicions whose accuser was the watched node (see
    /// [`OracleConfig::watched`]).
    pub false_suspicions_by_watched: u64,
    /// Distinct member incarnations declared dead.
    pub deaths: u64,
    /// Of those, about a healthy, reachable member.
    pub false_deaths: u64,
    /// False deaths first declared by the watched node.
    pub false_deaths_by_watched: u64,
    /// `Dead` events over all observers (gossip of a death counts at each).
    pub dead_events: u64,
    /// Check 7: refutations of false suspicions whose spread was measured
    /// (no fault but the watched node's pauses while it spread).
    pub refutations_judged: u64,
    /// Refutations of false suspicions a fault interrupted (not judged).
    pub refutations_interrupted: u64,
    /// The judged refutations by how long they took to reach every live
    /// node: up to each of [`SPREAD_BUCKETS`], and beyond the last.
    pub refutation_spread: [u64; SPREAD_BUCKETS.len() + 1],
    /// Check 6: members that stayed crashed into the calm phase and were
    /// then dropped by every live node, by how long that took from the
    /// start of the calm phase: up to each of [`COMPLETENESS_BUCKETS`],
    /// and beyond the last.
    pub completeness: [u64; COMPLETENESS_BUCKETS.len() + 1],
}

/// Bucket bounds (ms) of [`Tally::refutation_spread`].
pub const SPREAD_BUCKETS: [u64; 5] = [250, 500, 1_000, 2_000, 4_000];
/// Bucket bounds (s) of [`Tally::completeness`].
pub const COMPLETENESS_BUCKETS: [u64; 5] = [5, 10, 20, 40, 80];

fn bucket(bounds: &[u64], value: u64) -> usize {
    bounds.iter().position(|&b| value <= b).unwrap_or(bounds.len())
}

/// How the oracle judges.
#[derive(Clone, Copy, Debug)]
pub struct OracleConfig {
    /// How far before a suspicion the failed probe may have started.
    pub probe_window: Duration,
    /// How often incarnations are sampled.
    pub sample_every: Duration,
    /// A node whose accusations are tallied apart (the slow node).
    pub watched: Option<NodeId>,
    /// Keep every event in [`Oracle::log`].
    pub keep_log: bool,
    /// The SWIM configuration's numbers the bounds of checks 5–7 are
    /// derived from.
    pub swim: SwimNumbers,
    /// The fastest a node's clock may run slow against true time, in parts
    /// per million (the scenario's fault profile: the swarm draws drift up
    /// to 50,000 ppm). Timers are set on node clocks; the bounds are in
    /// true time.
    pub max_drift_ppm: u64,
}

/// The numbers of a [`SwimConfig`] the oracle's bounds are derived from.
#[derive(Clone, Copy, Debug)]
pub struct SwimNumbers {
    /// Protocol period before local-health scaling (`T`).
    pub probe_interval: Duration,
    /// `suspicion_mult`.
    pub suspicion_mult: u32,
    /// The longest suspicion over the shortest (1 without Lifeguard).
    pub suspicion_max_mult: u32,
    /// The highest local health multiplier (0 without Lifeguard).
    pub lhm_max: u32,
    /// Tombstones are forgotten this long after the death.
    pub gc_after: Duration,
    /// Failed probe rounds of one member the phi gate may defer in a row
    /// (`G`; 0 with the gate off).
    pub phi_gate_max_deferrals: u32,
}

impl OracleConfig {
    /// The judgement for a cluster running `swim`.
    pub fn for_swim(swim: &SwimConfig) -> Self {
        let scale = if swim.lifeguard { swim.lhm_max + 1 } else { 1 };
        OracleConfig {
            probe_window: swim.probe_interval * scale,
            sample_every: Duration::from_millis(100),
            watched: None,
            keep_log: false,
            swim: SwimNumbers {
                probe_interval: swim.probe_interval,
                suspicion_mult: swim.suspicion_mult,
                suspicion_max_mult: if swim.lifeguard { swim.suspicion_max_timeout_mult.max(1) } else { 1 },
                lhm_max: if swim.lifeguard { swim.lhm_max } else { 0 },
                gc_after: swim.gc_after,
                phi_gate_max_deferrals: swim.phi_gate_max_deferrals,
            },
            max_drift_ppm: 50_000,
        }
    }
}

/// The bounds of checks 6 and 7 for one cluster size (see the module docs
/// for their derivations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Check 6: how long, in a calm cluster, a live node may go on holding
    /// a member that stays crashed as live.
    pub completeness: Duration,
    /// Check 7: how long after a refutation a live node may go on holding
    /// the refuted member below the refuting incarnation.
    pub refutation: Duration,
}

impl SwimNumbers {
    /// The bounds at `n` nodes, stretched by clocks running up to
    /// `drift_ppm` slow.
    pub fn bounds(&self, n: usize, drift_ppm: u64) -> Bounds {
        let t = self.probe_interval;
        let n = n.max(2);
        let l = u64::from(self.lhm_max);
        // The period the observer is in when the window opens, at the
        // longest scale.
        let opening_period = t * (self.lhm_max + 1);
        // The crashed member is probed within 2L − 1 of the observer's own
        // probes, L ≤ n − 1 the live members it knows (it may have just
        // passed it this round, and the next round's shuffle may put it
        // last); the phi gate may defer G failed rounds of it in a row,
        // each probing it again the next period.
        let g = u64::from(self.phi_gate_max_deferrals);
        let probes = u32::try_from(2 * (n as u64 - 1) - 1 + g).unwrap_or(u32::MAX);
        let round = t * probes;
        // Those probes are longer while local health decays from its
        // maximum: a probe at multiplier h lasts (h + 1)·T and an answered
        // one lowers h by one, so the extra over T is at most
        // 1 + 2 + … + lhm_max periods, plus lhm_max more for each of the
        // G + 1 probes of the crashed member itself, which are not
        // answered (its helpers nack, so they do not raise h either).
        let decay = t * u32::try_from(l * (l + 1) / 2 + (g + 1) * l).unwrap_or(u32::MAX);
        // The failed probe starts (or confirms) a suspicion at the
        // observer, which expires at most the longest suspicion later:
        // dogpile only ever shortens it.
        let shortest = suspicion::min_timeout(self.suspicion_mult, n, t);
        let longest = shortest * self.suspicion_max_mult;
        let stretch = |d: Duration| d + d * u32::try_from(drift_ppm).unwrap_or(u32::MAX) / 1_000_000;
        Bounds { completeness: stretch(opening_period + round + decay + longest), refutation: shortest }
    }
}

struct Run {
    node: NodeId,
    /// Whether this is its node's current run.
    current: bool,
    membership: Membership,
    events: Option<UnboundedReceiver<MembershipEvent>>,
    waker: Waker,
    /// The incarnation the run started with, once seen.
    first: Option<u64>,
    /// Its own incarnation at the last sample.
    own: u64,
    /// `(member, state, incarnation)` at the last sample, by member.
    records: Vec<(NodeId, MemberState, u64)>,
    /// Its tombstone-collection counter at the last sample.
    collected: u64,
    /// Its view after the last step that changed it (checks 5–7), by
    /// member id.
    view: Vec<(NodeId, Held)>,
    /// [`Membership::view_version`] when `view` was taken.
    view_version: u64,
    /// Its own incarnation after the last step that changed its view.
    own_step: Option<u64>,
}

/// One record of a run's view, with when the oracle saw it change.
#[derive(Clone, Copy, Debug)]
struct Held {
    state: MemberState,
    incarnation: u64,
    /// When the record entered `state`.
    since: Instant,
    /// When the record last became live (alive or suspect) from a
    /// tombstone or from no record.
    live_since: Instant,
}

fn held(view: &[(NodeId, Held)], member: NodeId) -> Option<&Held> {
    view.binary_search_by_key(&member, |&(id, _)| id).ok().map(|i| &view[i].1)
}

impl Run {
    fn own_now(&self) -> Option<u64> {
        self.membership.incarnation()
    }
}

/// Marks a run as having events to drain: the waker of its subscription,
/// woken by the driver's send. The oracle drains only marked runs instead
/// of polling every run at every simulator event.
struct Mark {
    run: usize,
    marked: Arc<Mutex<Vec<usize>>>,
}

impl Wake for Mark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.marked.lock().unwrap_or_else(|e| e.into_inner()).push(self.run);
    }
}

/// The simulator's ground truth, refreshed whenever a fault is applied.
#[derive(Default)]
struct Truth {
    status: BTreeMap<NodeId, NodeStatus>,
    /// When each node's latest pause ended (`Instant::MAX` while paused).
    paused_until: BTreeMap<NodeId, Instant>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// When each directed link's latest cut ended (`MAX` while cut).
    cut_until: BTreeMap<(NodeId, NodeId), Instant>,
    /// The latest time a node other than the watched one changed status or
    /// the cut links changed (check 7 judges only undisturbed spreads).
    disturbed_at: Option<Instant>,
    /// When the liveness phase (calm: no faults, no loss, no partitions,
    /// every node but the lost ones up) started.
    calm_since: Option<Instant>,
}

impl Truth {
    fn refresh(&mut self, sim: &Sim, nodes: &[NodeId], watched: Option<NodeId>, now: Instant) {
        if sim.in_liveness() && self.calm_since.is_none() {
            self.calm_since = Some(now);
        }
        for &n in nodes {
            let status = sim.status(n);
            let was = self.status.insert(n, status);
            if was != Some(status) && Some(n) != watched {
                self.disturbed_at = Some(now);
            }
            if status == NodeStatus::Paused {
                self.paused_until.insert(n, Instant::MAX);
            } else if was == Some(NodeStatus::Paused) {
                self.paused_until.insert(n, now);
            }
        }
        let blocked = sim.blocked_links();
        if blocked != self.blocked {
            self.disturbed_at = Some(now);
        }
        for link in self.blocked.difference(&blocked) {
            self.cut_until.insert(*link, now);
        }
        for link in &blocked {
            self.cut_until.insert(*link, Instant::MAX);
        }
        self.blocked = blocked;
    }

    /// Whether nothing but the watched node's pauses changed since `t`
    /// (inclusive) and no link is cut.
    fn undisturbed_since(&self, t: Instant) -> bool {
        self.blocked.is_empty() && self.disturbed_at.is_none_or(|d| d < t)
    }

    /// Whether `node` is up and scheduled (not crashed, not paused).
    fn up(&self, node: NodeId) -> bool {
        self.status.get(&node) == Some(&NodeStatus::Up)
    }

    /// Whether `member` was up, unpaused and mutually reachable with
    /// `observer` throughout `[since, now]`.
    fn healthy_and_reachable(&self, member: NodeId, observer: NodeId, since: Instant) -> bool {
        let clean = |t: Option<&Instant>| t.is_none_or(|&end| end < since);
        self.status.get(&member) == Some(&NodeStatus::Up)
            && clean(self.paused_until.get(&member))
            && clean(self.cut_until.get(&(member, observer)))
            && clean(self.cut_until.get(&(observer, member)))
    }
}

/// `d` before `t`, or the origin.
fn before(t: Instant, d: Duration) -> Instant {
    Instant::from_nanos(t.as_nanos().saturating_sub(kaelix_core::time::duration_nanos(d)))
}

/// A first declaration (suspicion or death) about one member incarnation.
#[derive(Clone, Copy, Debug)]
struct Declaration {
    at: Instant,
    by: NodeId,
}

/// A refutation of a false suspicion whose spread check 7 is timing.
#[derive(Clone, Copy, Debug)]
struct Spread {
    member: NodeId,
    /// The refuting run (index into `runs`).
    run: usize,
    from: u64,
    to: u64,
    at: Instant,
}

/// The oracle of one simulated membership run (see the module docs).
pub struct Oracle {
    config: OracleConfig,
    bounds: Bounds,
    /// Member incarnations whose first suspicion was false.
    false_suspected: BTreeSet<(NodeId, u64)>,
    /// Refutations whose spread is being timed (check 7).
    spreads: Vec<Spread>,
    /// Members that stayed crashed and that every live node has dropped
    /// (check 6's tally counts each once).
    dropped_everywhere: BTreeSet<NodeId>,
    nodes: Vec<NodeId>,
    registry: Registry,
    runs: Vec<Run>,
    /// Runs whose subscription was woken since the last drain.
    marked: Arc<Mutex<Vec<usize>>>,
    /// Each node's current run (index into `runs`).
    current: BTreeMap<NodeId, usize>,
    /// The highest incarnation any superseded run of each node held.
    earlier: BTreeMap<NodeId, u64>,
    truth: Truth,
    faults_seen: u64,
    liveness_seen: bool,
    suspected: BTreeMap<(NodeId, u64), Declaration>,
    died: BTreeMap<(NodeId, u64), Declaration>,
    tally: Tally,
    false_deaths: Vec<String>,
    violation: Option<String>,
    /// Time of the previous observation: events drained now were emitted
    /// by task polls since then, all at that time (polls do not move time).
    last_now: Instant,
    last_sample: Option<Instant>,
    log: Vec<Observed>,
}

impl Oracle {
    /// An oracle for `nodes`, whose inits report to `registry`.
    pub fn new(config: OracleConfig, nodes: &[NodeId], registry: Registry) -> Self {
        Oracle {
            config,
            bounds: config.swim.bounds(nodes.len(), config.max_drift_ppm),
            false_suspected: BTreeSet::new(),
            spreads: Vec::new(),
            dropped_everywhere: BTreeSet::new(),
            nodes: nodes.to_vec(),
            registry,
            runs: Vec::new(),
            marked: Arc::default(),
            current: BTreeMap::new(),
            earlier: BTreeMap::new(),
            truth: Truth::default(),
            faults_seen: u64::MAX,
            liveness_seen: false,
            suspected: BTreeMap::new(),
            died: BTreeMap::new(),
            tally: Tally::default(),
            false_deaths: Vec::new(),
            violation: None,
            last_now: Instant::ZERO,
            last_sample: None,
            log: Vec::new(),
        }
    }

    /// Adds a node that joins later (its init reports to the same registry).
    pub fn add_node(&mut self, id: NodeId) {
        assert!(!self.nodes.contains(&id), "{id} watched twice");
        self.nodes.push(id);
        self.bounds = self.config.swim.bounds(self.nodes.len(), self.config.max_drift_ppm);
        self.faults_seen = u64::MAX; // refresh its ground truth
    }

    /// The bounds of checks 6 and 7 at the current cluster size.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The first broken invariant, if any.
    pub fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    /// What was judged so far.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// Descriptions of the false deaths, in order.
    pub fn false_deaths(&self) -> &[String] {
        &self.false_deaths
    }

    /// Every event so far, if [`OracleConfig::keep_log`].
    pub fn log(&self) -> &[Observed] {
        &self.log
    }

    /// The current run's handle of `node`, if it has started.
    pub fn membership(&self, node: NodeId) -> Option<&Membership> {
        self.current.get(&node).map(|&i| &self.runs[i].membership)
    }

    fn fail(&mut self, message: String) {
        if self.violation.is_none() {
            self.violation = Some(message);
        }
    }

    /// Catches up with the simulation after a step: new runs, events,
    /// ground truth, and (every `sample_every`) the incarnation checks.
    pub fn observe(&mut self, sim: &Sim) {
        let now = sim.now();
        let emitted_at = self.last_now;
        self.last_now = now;
        for started in self.registry.take() {
            self.start_run(started);
        }
        for i in 0..self.runs.len() {
            if self.runs[i].first.is_none() {
                self.runs[i].first = self.runs[i].own_now();
                self.runs[i].own = self.runs[i].first.unwrap_or(0);
            }
        }
        // Judged against the world they were emitted in: before the fault
        // (if any) that this step applied.
        self.drain_events(emitted_at);
        let faults = sim.stats().faults;
        let liveness = sim.in_liveness();
        if faults != self.faults_seen || liveness != self.liveness_seen {
            self.faults_seen = faults;
            self.liveness_seen = liveness;
            self.truth.refresh(sim, &self.nodes, self.config.watched, now);
        }
        let changed = self.watch_views(now);
        self.judge_spreads(now, changed);
        if self.last_sample.is_none_or(|t| now >= t + self.config.sample_every) {
            self.last_sample = Some(now);
            self.sample();
            self.judge_completeness(now);
        }
    }

    fn start_run(&mut self, s: Started) {
        let index = self.runs.len();
        if let Some(&old) = self.current.get(&s.node) {
            // The old run is over: drain what it said, remember how high it got.
            self.drain_run(old, self.last_now);
            let run = &mut self.runs[old];
            run.events = None;
            run.current = false;
            let last = run.own_now().unwrap_or(run.own);
            let earlier = self.earlier.entry(s.node).or_default();
            *earlier = (*earlier).max(last);
        }
        self.current.insert(s.node, index);
        let waker = Waker::from(Arc::new(Mark { run: index, marked: self.marked.clone() }));
        // Drained once at the next observation, which registers the waker.
        self.marked.lock().unwrap_or_else(|e| e.into_inner()).push(index);
        self.runs.push(Run {
            node: s.node,
            current: true,
            membership: s.membership,
            events: Some(s.events),
            waker,
            first: None,
            own: 0,
            records: Vec::new(),
            collected: 0,
            view: Vec::new(),
            view_version: u64::MAX,
            own_step: None,
        });
    }

    fn drain_events(&mut self, at: Instant) {
        let mut marked = std::mem::take(&mut *self.marked.lock().unwrap_or_else(|e| e.into_inner()));
        marked.sort_unstable();
        marked.dedup();
        for run in marked {
            self.drain_run(run, at);
        }
    }

    /// Handles every event `run` has emitted, leaving its waker registered
    /// for the next.
    fn drain_run(&mut self, run: usize, at: Instant) {
        let observer = self.runs[run].node;
        let waker = self.runs[run].waker.clone();
        let mut cx = Context::from_waker(&waker);
        loop {
            let Some(rx) = self.runs[run].events.as_mut() else { return };
            match Pin::new(rx).poll_next(&mut cx) {
                Poll::Ready(Some(event)) => self.on_event(at, observer, &event),
                // The run's service is gone (its node crashed): nothing more.
                Poll::Ready(None) => {
                    self.runs[run].events = None;
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    fn on_event(&mut self, at: Instant, observer: NodeId, e: &MembershipEvent) {
        if self.config.keep_log {
            self.log.push(Observed { at, observer, kind: e.kind, member: e.member, incarnation: e.incarnation });
        }
        let key = (e.member, e.incarnation);
        match e.kind {
            MembershipEventKind::Suspect => {
                if self.names_current_run(e.member, e.incarnation) && self.truth.up(e.member) {
                    self.tally.suspect_events_of_up_members += 1;
                }
                if self.suspected.contains_key(&key) {
                    return;
                }
                self.suspected.insert(key, Declaration { at, by: observer });
                self.tally.suspicions += 1;
                if self.is_false(e.member, e.incarnation, observer, before(at, self.config.probe_window)) {
                    self.false_suspected.insert(key);
                    self.tally.false_suspicions += 1;
                    if self.config.watched == Some(observer) {
                        self.tally.false_suspicions_by_watched += 1;
                    }
                }
            }
            MembershipEventKind::Dead => {
                self.tally.dead_events += 1;
                if self.died.contains_key(&key) {
                    return;
                }
                self.died.insert(key, Declaration { at, by: observer });
                self.tally.deaths += 1;
                // A death always follows a suspicion somewhere; without one
                // seen, judge over the longest window a suspicion can take.
                let first = self.suspected.get(&key).copied();
                let suspected = first.map_or(Instant::ZERO, |d| d.at);
                let since = before(suspected, self.config.probe_window);
                if self.is_false(e.member, e.incarnation, observer, since) {
                    self.tally.false_deaths += 1;
                    if self.config.watched == Some(observer) {
                        self.tally.false_deaths_by_watched += 1;
                    }
                    self.false_deaths.push(format!(
                        "{observer} declared {} dead at incarnation {} at {at} (first suspected by {} at {suspected}), \
                         though it was up, unpaused and mutually reachable with {observer} since {since}",
                        e.member,
                        e.incarnation,
                        first.map_or_else(|| "nobody seen".to_string(), |d| d.by.to_string()),
                    ));
                }
            }
            MembershipEventKind::Joined
            | MembershipEventKind::Alive
            | MembershipEventKind::Left
            | MembershipEventKind::Updated => {}
        }
    }

    /// Whether `incarnation` belongs to `member`'s current run (at least its
    /// first, above everything its earlier runs held, at most its own).
    fn names_current_run(&self, member: NodeId, incarnation: u64) -> bool {
        let Some(&run) = self.current.get(&member) else { return false };
        let run = &self.runs[run];
        let (Some(first), Some(own)) = (run.first, run.own_now()) else { return false };
        let earlier = self.earlier.get(&member).copied();
        incarnation >= first && incarnation <= own && earlier.is_none_or(|e| incarnation > e)
    }

    /// Whether a declaration by `observer` about `member` at `incarnation`
    /// names the member's current run while it was healthy and reachable
    /// since `since`.
    fn is_false(&mut self, member: NodeId, incarnation: u64, observer: NodeId, since: Instant) -> bool {
        let Some(&run) = self.current.get(&member) else { return false };
        let run = &self.runs[run];
        let (Some(first), Some(own)) = (run.first, run.own_now()) else { return false };
        let earlier = self.earlier.get(&member).copied();
        if incarnation > own.max(earlier.unwrap_or(0)) {
            self.fail(format!(
                "{observer} declared {member} at incarnation {incarnation}, which no run of {member} has held \
                 (highest {})",
                own.max(earlier.unwrap_or(0))
            ));
            return false;
        }
        let names_current_run = incarnation >= first && earlier.is_none_or(|e| incarnation > e);
        names_current_run && self.truth.healthy_and_reachable(member, observer, since)
    }

    /// Check 5 on every view the last step changed, and the start of check
    /// 7 for every refutation it shows; returns whether any view changed.
    fn watch_views(&mut self, now: Instant) -> bool {
        let gc_after = self.config.swim.gc_after;
        let mut changed = false;
        for i in 0..self.runs.len() {
            let run = &mut self.runs[i];
            if !run.current {
                continue;
            }
            let version = run.membership.view_version();
            if version == run.view_version {
                continue;
            }
            run.view_version = version;
            changed = true;
            let me = run.node;
            let own = run.membership.incarnation();
            let raised = match (run.own_step, own) {
                (Some(from), Some(to)) if to > from => Some((from, to)),
                _ => None,
            };
            if own.is_some() {
                run.own_step = own;
            }
            let previous = std::mem::take(&mut run.view);
            let mut prev = previous.iter().peekable();
            let mut view = Vec::with_capacity(previous.len() + 1);
            let mut problem = None;
            run.membership.with_members(|members| {
                for m in members.iter().filter(|m| m.id != me) {
                    while prev.next_if(|p| p.0 < m.id).is_some() {}
                    let before = prev.peek().filter(|p| p.0 == m.id).map(|p| p.1);
                    if let Some(b) = before
                        && m.state == MemberState::Alive
                        && b.state != MemberState::Alive
                        && m.incarnation <= b.incarnation
                        // A tombstone held `gc_after` may have been forgotten
                        // and the member relearned within the step.
                        && (b.state.is_live() || now < b.since + gc_after)
                        && problem.is_none()
                    {
                        problem = Some(format!(
                            "no revival without a higher incarnation (check 5): at {now} {me}'s record of {} went \
                             from {:?} at incarnation {} (since {}) back to Alive at incarnation {}",
                            m.id, b.state, b.incarnation, b.since, m.incarnation
                        ));
                    }
                    let since = match before {
                        Some(b) if b.state == m.state => b.since,
                        _ => now,
                    };
                    let live_since = match before {
                        Some(b) if b.state.is_live() && m.state.is_live() => b.live_since,
                        _ => now,
                    };
                    view.push((m.id, Held { state: m.state, incarnation: m.incarnation, since, live_since }));
                }
            });
            run.view = view;
            if let Some(p) = problem {
                self.fail(p);
            }
            if let Some((from, to)) = raised
                && self.false_suspected.range((me, from)..(me, to)).next().is_some()
            {
                self.spreads.push(Spread { member: me, run: i, from, to, at: now });
            }
        }
        changed
    }

    /// Check 7: times every refutation being spread; `changed` says whether
    /// any view changed at this step (only then can a spread complete).
    fn judge_spreads(&mut self, now: Instant, changed: bool) {
        let bound = self.bounds.refutation;
        let mut i = 0;
        while i < self.spreads.len() {
            let s = self.spreads[i];
            if !self.truth.undisturbed_since(s.at) || self.current.get(&s.member) != Some(&s.run) {
                // A fault (or the refuter's end) interrupted it: not judged.
                self.tally.refutations_interrupted += 1;
                self.spreads.swap_remove(i);
                continue;
            }
            let late = now > s.at + bound;
            if !changed && !late {
                i += 1;
                continue;
            }
            match self.lagging(s.member, s.to) {
                None => {
                    self.tally.refutations_judged += 1;
                    let ms = u64::try_from((now - s.at).as_millis()).unwrap_or(u64::MAX);
                    self.tally.refutation_spread[bucket(&SPREAD_BUCKETS, ms)] += 1;
                    self.spreads.swap_remove(i);
                }
                Some((o, h)) if late => {
                    self.fail(format!(
                        "refutation spread (check 7): {} refuted a false suspicion at {} (incarnation {} -> {}), \
                         but {bound:?} later (the shortest suspicion timeout at {} nodes) {o}, up and connected \
                         throughout, still holds it {:?} at incarnation {}",
                        s.member,
                        s.at,
                        s.from,
                        s.to,
                        self.nodes.len(),
                        h.state,
                        h.incarnation
                    ));
                    self.spreads.swap_remove(i);
                }
                Some(_) => i += 1,
            }
        }
    }

    /// A live node (other than the watched one) whose view holds `member`
    /// below incarnation `to`, with that record.
    fn lagging(&self, member: NodeId, to: u64) -> Option<(NodeId, Held)> {
        self.runs
            .iter()
            .filter(|r| r.current && r.node != member && Some(r.node) != self.config.watched && self.truth.up(r.node))
            .find_map(|r| held(&r.view, member).filter(|h| h.incarnation < to).map(|h| (r.node, *h)))
    }

    /// Nodes that stay crashed: down once the calm phase has begun.
    fn lost(&self) -> BTreeSet<NodeId> {
        if self.truth.calm_since.is_none() {
            return BTreeSet::new();
        }
        self.nodes.iter().copied().filter(|n| self.truth.status.get(n) == Some(&NodeStatus::Down)).collect()
    }

    /// A live node that holds a lost member live: `(observer, member,
    /// record)`, the one holding it live the longest.
    fn holder_of_lost(&self) -> Option<(NodeId, NodeId, Held)> {
        let lost = self.lost();
        let mut longest: Option<(NodeId, NodeId, Held)> = None;
        for run in self.runs.iter().filter(|r| r.current && !lost.contains(&r.node) && self.truth.up(r.node)) {
            for &x in &lost {
                if let Some(h) = held(&run.view, x).filter(|h| h.state.is_live())
                    && longest.is_none_or(|(_, _, l)| h.live_since < l.live_since)
                {
                    longest = Some((run.node, x, *h));
                }
            }
        }
        longest
    }

    /// Whether no live node holds a member that stays crashed as live
    /// (check 6's end state; true before the calm phase), judging check 6
    /// at `now` on the way (so a run that ends on it has it tallied).
    pub fn lost_members_dropped(&mut self, now: Instant) -> bool {
        self.judge_completeness(now);
        self.holder_of_lost().is_none()
    }

    /// Check 6, in the calm phase: no live node holds a member that stays
    /// crashed as live for longer than the completeness bound.
    fn judge_completeness(&mut self, now: Instant) {
        let Some(calm) = self.truth.calm_since else { return };
        let bound = self.bounds.completeness;
        match self.holder_of_lost() {
            Some((o, x, h)) => {
                let start = h.live_since.max(calm);
                if now > start + bound {
                    self.fail(format!(
                        "completeness (check 6): {x} has stayed crashed since the calm phase began at {calm} at \
                         the latest, but at {now} {o}, up throughout, still holds it {:?} at incarnation {} (live \
                         in its view since {}), over the bound of {bound:?} derived for {} nodes",
                        h.state,
                        h.incarnation,
                        h.live_since,
                        self.nodes.len()
                    ));
                }
            }
            None => {
                for x in self.lost() {
                    if self.dropped_everywhere.insert(x) {
                        let ms = u64::try_from((now - calm).as_millis()).unwrap_or(u64::MAX);
                        self.tally.completeness[bucket(&COMPLETENESS_BUCKETS, ms.div_ceil(1000))] += 1;
                    }
                }
            }
        }
    }

    /// Checks 1–3 of the module docs on every current run's state.
    fn sample(&mut self) {
        let mut highest: BTreeMap<NodeId, u64> = self.earlier.clone();
        let mut problems = Vec::new();
        for &i in self.current.values() {
            let run = &mut self.runs[i];
            let Some(own) = run.own_now() else { continue };
            if own < run.own {
                problems.push(format!("{}'s own incarnation went from {} to {own}", run.node, run.own));
            }
            run.own = own;
            let h = highest.entry(run.node).or_default();
            *h = (*h).max(own);
        }
        for &i in self.current.values() {
            let run = &mut self.runs[i];
            if run.first.is_none() {
                continue;
            }
            let collected = run.membership.stats().tombstones_collected;
            let forgot = collected > run.collected;
            run.collected = collected;
            let me = run.node;
            let previous = std::mem::take(&mut run.records);
            let mut prev = previous.iter().peekable();
            let mut records = Vec::with_capacity(previous.len());
            run.membership.with_members(|members| {
                for m in members.iter().filter(|m| m.id != me) {
                    while prev.next_if(|p| p.0 < m.id).is_some() {}
                    if let Some(&&(_, state, inc)) = prev.peek().filter(|p| p.0 == m.id)
                        && m.incarnation < inc
                        && (!forgot || state.is_live())
                    {
                        problems.push(format!(
                            "{me} holds {} at incarnation {} after {inc} ({state:?}), without forgetting it",
                            m.id, m.incarnation
                        ));
                    }
                    if m.incarnation > highest.get(&m.id).copied().unwrap_or(0) {
                        problems.push(format!(
                            "{me} holds {} at incarnation {}, above anything {} has held ({})",
                            m.id,
                            m.incarnation,
                            m.id,
                            highest.get(&m.id).copied().unwrap_or(0)
                        ));
                    }
                    records.push((m.id, m.state, m.incarnation));
                }
            });
            run.records = records;
        }
        if let Some(p) = problems.into_iter().next() {
            self.fail(format!("incarnations: {p}"));
        }
    }

    /// How closely views must agree (check 4 of the module docs).
    fn agrees(&self, held: Option<(MemberState, u64)>, current: Option<u64>, exact: bool) -> bool {
        match held {
            Some((MemberState::Alive, inc)) => !exact || Some(inc) == current,
            _ => false,
        }
    }

    fn current_incarnations(&self) -> BTreeMap<NodeId, u64> {
        self.current.iter().filter_map(|(&n, &i)| self.runs[i].own_now().map(|inc| (n, inc))).collect()
    }

    /// Nodes (observer → how many nodes it does not see alive; at their
    /// current incarnation if `exact`), over the current runs; empty once
    /// every run agrees with every other. A node that is not up agrees with
    /// nobody. Nodes that stay crashed (down in the calm phase) are left
    /// out, as observers and as members: what the others must hold of them
    /// is check 6's ([`Oracle::lost_members_dropped`]).
    pub fn disagreements(&self, exact: bool) -> Vec<(NodeId, usize)> {
        let current = self.current_incarnations();
        let lost = self.lost();
        let expected = self.nodes.len() - lost.len();
        self.nodes
            .iter()
            .filter(|o| !lost.contains(o))
            .map(|&o| {
                let agreed = self.membership(o).map_or(0, |m| {
                    m.with_members(|members| {
                        members
                            .iter()
                            .filter(|m| !lost.contains(&m.id))
                            .filter(|m| self.agrees(Some((m.state, m.incarnation)), current.get(&m.id).copied(), exact))
                            .count()
                    })
                });
                let up = self.truth.status.get(&o) == Some(&NodeStatus::Up);
                (o, if up { expected - agreed.min(expected) } else { expected })
            })
            .filter(|(_, missing)| *missing > 0)
            .collect()
    }

    /// Why `observer` disagrees, for a failure message: the first member it
    /// does not hold alive (at that member's current incarnation if `exact`).
    pub fn explain(&self, observer: NodeId, exact: bool) -> String {
        if self.truth.status.get(&observer) != Some(&NodeStatus::Up) {
            return format!("{observer} is not up");
        }
        let Some(m) = self.membership(observer) else { return format!("{observer} never started") };
        let current = self.current_incarnations();
        let lost = self.lost();
        for &member in self.nodes.iter().filter(|n| !lost.contains(n)) {
            let held = m.with_members(|ms| ms.iter().find(|x| x.id == member).map(|x| (x.state, x.incarnation)));
            if !self.agrees(held, current.get(&member).copied(), exact) {
                return format!(
                    "{observer} holds {member} as {held:?}, its current incarnation is {:?}",
                    current.get(&member)
                );
            }
        }
        format!("{observer} agrees")
    }

    /// Whether every node is up and sees every node alive.
    pub fn alive_sets_agree(&self) -> bool {
        self.disagreements(false).is_empty()
    }

    /// Whether every node is up and sees every node alive at its current
    /// incarnation.
    pub fn converged(&self) -> bool {
        self.disagreements(true).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The completeness bound of the module docs, term by term, with and
    /// without the phi gate's deferrals (no drift).
    #[test]
    fn completeness_bound_counts_the_phi_gates_deferrals() {
        let gated = OracleConfig::for_swim(&SwimConfig::default()).swim;
        let plain = OracleConfig::for_swim(&SwimConfig::default().without_phi_gate()).swim;
        assert_eq!(gated.phi_gate_max_deferrals, 2);
        assert_eq!(plain.phi_gate_max_deferrals, 0);
        let secs = |b: Bounds| b.completeness.as_millis();
        assert_eq!(secs(plain.bounds(5, 0)), 74_000);
        assert_eq!(secs(gated.bounds(5, 0)), 90_000, "2 more probes, each up to 8 periods long");
        assert_eq!(secs(gated.bounds(100, 0)), 304_000);
        assert_eq!(secs(gated.bounds(100, 0)) - secs(plain.bounds(100, 0)), 16_000);
    }
}

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

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::Stream;

use futures_channel::mpsc::UnboundedReceiver;
use kaelix_cluster::membership::{self, Membership, MembershipConfig};
use kaelix_cluster::swim::{MemberState, MembershipEvent, MembershipEventKind, SwimConfig};
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
        }
    }
}

struct Run {
    node: NodeId,
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
}

impl Truth {
    fn refresh(&mut self, sim: &Sim, nodes: &[NodeId], now: Instant) {
        for &n in nodes {
            let status = sim.status(n);
            let was = self.status.insert(n, status);
            if status == NodeStatus::Paused {
                self.paused_until.insert(n, Instant::MAX);
            } else if was == Some(NodeStatus::Paused) {
                self.paused_until.insert(n, now);
            }
        }
        let blocked = sim.blocked_links();
        for link in self.blocked.difference(&blocked) {
            self.cut_until.insert(*link, now);
        }
        for link in &blocked {
            self.cut_until.insert(*link, Instant::MAX);
        }
        self.blocked = blocked;
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

/// The oracle of one simulated membership run (see the module docs).
pub struct Oracle {
    config: OracleConfig,
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
        self.faults_seen = u64::MAX; // refresh its ground truth
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
            self.truth.refresh(sim, &self.nodes, now);
        }
        if self.last_sample.is_none_or(|t| now >= t + self.config.sample_every) {
            self.last_sample = Some(now);
            self.sample();
        }
    }

    fn start_run(&mut self, s: Started) {
        let index = self.runs.len();
        if let Some(&old) = self.current.get(&s.node) {
            // The old run is over: drain what it said, remember how high it got.
            self.drain_run(old, self.last_now);
            let run = &mut self.runs[old];
            run.events = None;
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
            membership: s.membership,
            events: Some(s.events),
            waker,
            first: None,
            own: 0,
            records: Vec::new(),
            collected: 0,
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
                if self.suspected.contains_key(&key) {
                    return;
                }
                self.suspected.insert(key, Declaration { at, by: observer });
                self.tally.suspicions += 1;
                if self.is_false(e.member, e.incarnation, observer, before(at, self.config.probe_window)) {
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
    /// nobody.
    pub fn disagreements(&self, exact: bool) -> Vec<(NodeId, usize)> {
        let current = self.current_incarnations();
        self.nodes
            .iter()
            .map(|&o| {
                let agreed = self.membership(o).map_or(0, |m| {
                    m.with_members(|members| {
                        members
                            .iter()
                            .filter(|m| self.agrees(Some((m.state, m.incarnation)), current.get(&m.id).copied(), exact))
                            .count()
                    })
                });
                let up = self.truth.status.get(&o) == Some(&NodeStatus::Up);
                (o, if up { self.nodes.len() - agreed.min(self.nodes.len()) } else { self.nodes.len() })
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
        for &member in &self.nodes {
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

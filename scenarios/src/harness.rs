//! The simulator for other people's services: declare a scenario, run seeds,
//! replay, shrink and draw — without writing a [`Scenario`] by hand.
//!
//! A service written against the runtime contract (`kaelix_core::runtime::
//! Runtime`: clock, spawner, datagram network, client streams, storage) runs
//! unchanged in the simulator. A [`SimScenario`] declares what a run is:
//!
//! * **servers** — `n` nodes (`NodeId(1)..=NodeId(n)`), each booted by an
//!   async init function on its [`SimRuntime`] (called again on every
//!   restart, with only its disk kept);
//! * **clients** — the workload: `m` client nodes, each running an async
//!   function that drives the servers and records what it saw; with
//!   [`SimScenario::clients_with_workload`] each client's operations are a
//!   list drawn from the seed before the run, which the shrinker can cut
//!   (`kaelix_sim::shrink::workload_list`), as it cuts the built-in
//!   scenarios' recorded lists;
//! * **observations** — a state `S` shared by nodes, clients and checks
//!   ([`Observed`]), fresh for every run; any of them may record a safety
//!   violation with [`Observed::fail`];
//! * **checks** — an [`SimScenario::invariant`] evaluated after every step,
//!   and a [`SimScenario::converged`] condition that must hold within the
//!   liveness bound after the faults stop (else [`SimScenario::diagnose`]
//!   names what is missing);
//! * **a tolerance** ([`Tolerance`]) — the faults the service claims to
//!   survive; the seed's swarm-drawn fault profile is restricted to it.
//!
//! A run is decided by its seed. The scenario is a [`Scenario`], so
//! everything the `kaelix sim` commands do is a library call on it:
//! [`crate::run_checked`] (run twice, compare trace hashes),
//! [`run_seeds`], [`crate::shrink_seed`] (minimal failing fault schedule),
//! [`crate::run_with_schedule`] (replay under a given schedule) and
//! [`crate::picture::draw`] (the run as an HTML page).
//!
//! # Example
//!
//! An echo service whose client checks every echo; `planted` makes the
//! service answer wrongly so the check fails:
//!
//! ```
//! use bytes::Bytes;
//! use kaelix_core::runtime::{Clock, Network, Runtime};
//! use kaelix_core::time::Duration;
//! use kaelix_core::NodeId;
//! use kaelix_scenarios::harness::{SimScenario, run_seeds};
//! use kaelix_scenarios::{picture, run_checked, shrink_seed};
//! use kaelix_sim::Tolerance;
//!
//! #[derive(Default)]
//! struct Seen { sent: u64, echoed: u64 }
//!
//! // The service: written against the contract, not the simulator.
//! async fn echo<R: Runtime>(rt: R, planted: bool) {
//!     loop {
//!         let (from, msg) = rt.recv().await;
//!         let reply = if planted && msg.len() > 3 { Bytes::from_static(b"?") } else { msg };
//!         rt.send(from, reply);
//!     }
//! }
//!
//! fn scenario(planted: bool) -> SimScenario<Seen> {
//!     SimScenario::<Seen>::new("echo", "one echo server, two clients")
//!         .servers(1, move |rt, _ctx| echo(rt, planted))
//!         .clients(2, |rt, ctx| async move {
//!             let mut sent = Vec::new();
//!             for i in 0..5u8 {
//!                 let msg = Bytes::from(vec![i; usize::from(i)]);
//!                 rt.send(NodeId(1), msg.clone());
//!                 sent.push(msg);
//!                 ctx.observed.with(|s| s.sent += 1);
//!                 // Datagrams may be lost, duplicated or late: an echo must
//!                 // be of something this client sent.
//!                 let Ok((_, reply)) = kaelix_core::runtime::timeout(&rt, Duration::from_millis(500), rt.recv()).await
//!                 else { continue };
//!                 if !sent.contains(&reply) {
//!                     ctx.observed.fail(format!("echo of {reply:?}, which this client never sent"));
//!                 }
//!                 ctx.observed.with(|s| s.echoed += 1);
//!             }
//!             ctx.done();
//!         })
//!         .tolerance(Tolerance { max_down: 0, faulty_disks: 0, power_loss: false })
//!         .safety_phase(Duration::from_secs(1))
//!         .liveness_bound(Duration::from_secs(5))
//!         .converged(|_seen, done| done.clients_finished)
//!         .workload(("sent", "echoed"), |s| (s.sent, s.echoed))
//! }
//!
//! // Run seeds (each checked for determinism): the correct service passes.
//! let good = scenario(false);
//! let summary = run_seeds(&good, 0..20);
//! assert!(summary.failures.is_empty(), "{:?}", summary.failures);
//! assert!(summary.nondeterministic.is_empty());
//!
//! // The planted bug is caught, replays to the same trace, and can be
//! // shrunk and drawn.
//! let bad = scenario(true).planted(true);
//! let failing = run_seeds(&bad, 0..20).failures[0].0;
//! assert!(run_checked(&bad, failing).deterministic());
//! let shrunk = shrink_seed(&bad, failing, &mut || false, &mut |_| {}).expect("it fails");
//! assert!(shrunk.replay.verdict.check() == Some(shrunk.check.clone()));
//! let page = picture::draw(&bad, failing, Some(&shrunk.outcome.schedule), 1000);
//! assert!(page.html.contains("echo of"));
//! ```

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kaelix_core::rng::{self, RngExt};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::trace::TraceSink;
use kaelix_sim::{FaultProfile, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig, Tolerance};

use crate::{RunReport, Scenario, Verdict, run_checked};

/// What a run's nodes, clients and checks share: the scenario's state `S`
/// and the first safety violation anyone recorded. Fresh for every run.
pub struct Observed<S> {
    state: Arc<Mutex<S>>,
    violation: Arc<Mutex<Option<String>>>,
    violated: Arc<AtomicBool>,
    clients_finished: Arc<AtomicU64>,
}

impl<S> Clone for Observed<S> {
    fn clone(&self) -> Self {
        Observed {
            state: self.state.clone(),
            violation: self.violation.clone(),
            violated: self.violated.clone(),
            clients_finished: self.clients_finished.clone(),
        }
    }
}

impl<S: Default> Observed<S> {
    fn new() -> Self {
        Observed {
            state: Arc::default(),
            violation: Arc::default(),
            violated: Arc::default(),
            clients_finished: Arc::default(),
        }
    }
}

impl<S> Observed<S> {
    /// Runs `f` on the state (a run is one thread: this never waits).
    pub fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Records a safety violation; the run stops at the next step with it
    /// (the first one recorded wins).
    pub fn fail(&self, message: impl Into<String>) {
        let mut v = self.violation.lock().unwrap_or_else(|e| e.into_inner());
        if v.is_none() {
            *v = Some(message.into());
            self.violated.store(true, Ordering::Relaxed);
        }
    }
}

/// What a node or client is given besides its runtime.
pub struct Ctx<S> {
    /// The shared observations.
    pub observed: Observed<S>,
    /// The server nodes, `NodeId(1)..=NodeId(n)`.
    pub servers: Vec<NodeId>,
    /// This node's index among the servers or among the clients.
    pub index: u64,
}

impl<S> Ctx<S> {
    /// A client says it finished its workload (see [`Progress`]).
    pub fn done(&self) {
        self.observed.clients_finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the harness knows of a run's progress, for the convergence check.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Every client called [`Ctx::done`].
    pub clients_finished: bool,
}

type NodeBody<S> = Arc<dyn Fn(SimRuntime, Ctx<S>) -> kaelix_sim::world::BoxFuture + Send + Sync>;
type StateCheck<S> = Arc<dyn Fn(&S) -> Result<(), String> + Send + Sync>;
type Converged<S> = Arc<dyn Fn(&S, Progress) -> bool + Send + Sync>;
type Diagnose<S> = Arc<dyn Fn(&S, Progress) -> String + Send + Sync>;
type Workload<S> = Arc<dyn Fn(&S) -> (u64, u64) + Send + Sync>;
/// Per run and client: the client's body with its drawn operation list.
type ClientLists<S> = Arc<dyn Fn(u64, u64) -> NodeBody<S> + Send + Sync>;

/// A declared scenario (see the module header); a [`Scenario`] itself.
pub struct SimScenario<S> {
    name: &'static str,
    description: &'static str,
    servers: u64,
    server: Option<NodeBody<S>>,
    clients: u64,
    client: Option<NodeBody<S>>,
    client_lists: Option<ClientLists<S>>,
    tolerance: Tolerance,
    safety: Duration,
    liveness_bound: Duration,
    invariant: Option<StateCheck<S>>,
    converged: Option<Converged<S>>,
    diagnose: Option<Diagnose<S>>,
    workload: Option<((&'static str, &'static str), Workload<S>)>,
    planted: bool,
}

fn boxed<S, F, Fut>(body: F) -> NodeBody<S>
where
    F: Fn(SimRuntime, Ctx<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |rt, ctx| Box::pin(body(rt, ctx)))
}

impl<S: Default + Send + 'static> SimScenario<S> {
    /// A scenario with no node yet, tolerating nothing, a 5 s safety phase
    /// and a 10 s liveness bound.
    pub fn new(name: &'static str, description: &'static str) -> Self {
        SimScenario {
            name,
            description,
            servers: 0,
            server: None,
            clients: 0,
            client: None,
            client_lists: None,
            tolerance: Tolerance { max_down: 0, faulty_disks: 0, power_loss: false },
            safety: Duration::from_secs(5),
            liveness_bound: Duration::from_secs(10),
            invariant: None,
            converged: None,
            diagnose: None,
            workload: None,
            planted: false,
        }
    }

    /// `n` servers, `NodeId(1)..=NodeId(n)`, each booted (and rebooted
    /// after every restart) by `init`.
    pub fn servers<F, Fut>(mut self, n: u64, init: F) -> Self
    where
        F: Fn(SimRuntime, Ctx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        assert!(n > 0, "a scenario needs a server");
        self.servers = n;
        self.server = Some(boxed(init));
        self
    }

    /// `n` clients (node ids after the servers'), each running `workload`.
    /// Clients are never crashed; their disks are calm.
    pub fn clients<F, Fut>(mut self, n: u64, workload: F) -> Self
    where
        F: Fn(SimRuntime, Ctx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.clients = n;
        self.client = Some(boxed(workload));
        self.client_lists = None;
        self
    }

    /// `n` clients whose workload is a recorded list: `draw` makes client
    /// `i`'s operations from a generator derived from the seed and `i`
    /// (before the run, so the list is the same on every replay), and
    /// `body` runs them. [`crate::shrink_seed`] removes operations from
    /// these lists as it does faults from the schedule.
    pub fn clients_with_workload<Op, D, F, Fut>(mut self, n: u64, draw: D, body: F) -> Self
    where
        Op: Send + Sync + 'static,
        D: Fn(&mut kaelix_core::rng::DetRng, u64) -> Vec<Op> + Send + Sync + 'static,
        F: Fn(SimRuntime, Ctx<S>, Arc<Vec<Op>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.clients = n;
        let body = Arc::new(body);
        self.client = None;
        self.client_lists = Some(Arc::new(move |seed: u64, index: u64| -> NodeBody<S> {
            let mut rng = rng::derive(seed, 0x776f_726b_6c6f_6164 ^ index);
            let ops = Arc::new(kaelix_sim::shrink::workload_list(index, draw(&mut rng, index)));
            let body = body.clone();
            Arc::new(move |rt, ctx| Box::pin(body(rt, ctx, ops.clone())))
        }));
        self
    }

    /// The faults the service claims to survive.
    pub fn tolerance(mut self, tolerance: Tolerance) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// How long faults are injected (from time zero).
    pub fn safety_phase(mut self, d: Duration) -> Self {
        self.safety = d;
        self
    }

    /// How long after the faults stop the run may take to converge.
    pub fn liveness_bound(mut self, d: Duration) -> Self {
        self.liveness_bound = d;
        self
    }

    /// A safety check on the state after every step (keep it cheap).
    pub fn invariant(mut self, check: impl Fn(&S) -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.invariant = Some(Arc::new(check));
        self
    }

    /// When the run is done (checked after the safety phase). Without it,
    /// a run is done when every client called [`Ctx::done`].
    pub fn converged(mut self, done: impl Fn(&S, Progress) -> bool + Send + Sync + 'static) -> Self {
        self.converged = Some(Arc::new(done));
        self
    }

    /// The message of the liveness violation when the run did not converge.
    pub fn diagnose(mut self, why: impl Fn(&S, Progress) -> String + Send + Sync + 'static) -> Self {
        self.diagnose = Some(Arc::new(why));
        self
    }

    /// Two workload counters for reports, and their names.
    pub fn workload(
        mut self,
        units: (&'static str, &'static str),
        count: impl Fn(&S) -> (u64, u64) + Send + Sync + 'static,
    ) -> Self {
        self.workload = Some((units, Arc::new(count)));
        self
    }

    /// Marks a variant with a planted bug (it is expected to fail).
    pub fn planted(mut self, planted: bool) -> Self {
        self.planted = planted;
        self
    }

    fn server_ids(&self) -> Vec<NodeId> {
        (1..=self.servers).map(NodeId).collect()
    }

    fn progress(&self, observed: &Observed<S>) -> Progress {
        Progress { clients_finished: observed.clients_finished.load(Ordering::Relaxed) >= self.clients }
    }

    fn converged_now(&self, observed: &Observed<S>) -> bool {
        let progress = self.progress(observed);
        match &self.converged {
            Some(done) => observed.with(|s| done(s, progress)),
            None => progress.clients_finished,
        }
    }
}

impl<S: Default + Send + 'static> Scenario for SimScenario<S> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn planted_bug(&self) -> bool {
        self.planted
    }

    fn workload_units(&self) -> (&'static str, &'static str) {
        self.workload.as_ref().map_or(("", ""), |(units, _)| *units)
    }

    fn run(&self, seed: u64, trace: Option<TraceSink>) -> RunReport {
        let server = self.server.clone().expect("SimScenario::servers was not called");
        // The same draws as the built-in scenarios: profile, faulty disks,
        // schedule, from one generator derived from the seed.
        let mut setup = rng::derive(seed, 0x5ce7_a810);
        let mut profile = FaultProfile::swarm(&mut setup);
        profile.restrict(&self.tolerance);
        let servers = self.server_ids();
        let mut faulty = Vec::new();
        while faulty.len() < self.tolerance.faulty_disks.min(servers.len()) {
            let pick = servers[setup.random_range(0..servers.len())];
            if !faulty.contains(&pick) {
                faulty.push(pick);
            }
        }
        let safety_end = Instant::ZERO + self.safety;
        let schedule = FaultSchedule::generate(&profile, &self.tolerance, &servers, &faulty, safety_end, &mut setup);
        let fault_mix = profile.mix();

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let observed = Observed::<S>::new();
        for (index, &id) in servers.iter().enumerate() {
            let (body, observed, servers_list) = (server.clone(), observed.clone(), servers.clone());
            let init = SimRuntime::init(move |rt| {
                body(rt, Ctx { observed: observed.clone(), servers: servers_list.clone(), index: index as u64 })
            });
            let spec = NodeSpec {
                kind: NodeKind::Server,
                name: format!("server-{}", id.0),
                faulty_disk: faulty.contains(&id),
                init,
            };
            sim.add_node(id, spec);
        }
        if self.client.is_some() || self.client_lists.is_some() {
            for c in 0..self.clients {
                let client = match (&self.client, &self.client_lists) {
                    (Some(body), _) => body.clone(),
                    (None, Some(lists)) => lists(seed, c),
                    (None, None) => unreachable!("checked"),
                };
                let (body, observed, servers_list) = (client, observed.clone(), servers.clone());
                let init = SimRuntime::init(move |rt| {
                    body(rt, Ctx { observed: observed.clone(), servers: servers_list.clone(), index: c })
                });
                let spec = NodeSpec { kind: NodeKind::Client, name: format!("client-{c}"), faulty_disk: false, init };
                sim.add_node(NodeId(self.servers + 1 + c), spec);
            }
        }
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(safety_end);

        let deadline = safety_end + self.liveness_bound;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.run_until_done(
                deadline,
                // Asked when time moves and when nothing is left to run (so
                // not throttled: a run that goes idle is judged on this).
                |sim| sim.now() >= safety_end && self.converged_now(&observed),
                |_| {
                    if observed.violated.load(Ordering::Relaxed) {
                        return Err(observed.violation.lock().unwrap_or_else(|e| e.into_inner()).clone());
                    }
                    match &self.invariant {
                        Some(check) => observed.with(|s| check(s)).map_err(Some),
                        None => Ok(()),
                    }
                },
            )
        }));
        let verdict = match outcome {
            Ok(Ok(true)) if !observed.violated.load(Ordering::Relaxed) => Verdict::Pass,
            Ok(Ok(true)) => Verdict::SafetyViolation(
                observed.violation.lock().unwrap_or_else(|e| e.into_inner()).clone().expect("set with the flag"),
            ),
            Ok(Ok(false)) => {
                let progress = self.progress(&observed);
                let why = match &self.diagnose {
                    Some(d) => observed.with(|s| d(s, progress)),
                    None if !progress.clients_finished => "not every client finished its workload".to_string(),
                    None => "the convergence condition never held".to_string(),
                };
                Verdict::LivenessViolation(format!("{why} ({:?} after the faults stopped)", self.liveness_bound))
            }
            Ok(Err(violation)) => Verdict::SafetyViolation(violation.unwrap_or_default()),
            Err(panic) => Verdict::from_panic(panic),
        };
        let workload = self.workload.as_ref().map_or((0, 0), |(_, count)| observed.with(|s| count(s)));
        RunReport::conclude(&sim, seed, verdict, fault_mix, workload)
    }
}

/// What [`run_seeds`] found.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Failing seeds and their verdicts, in seed order.
    pub failures: Vec<(u64, Verdict)>,
    /// Seeds whose second run gave another trace hash.
    pub nondeterministic: Vec<u64>,
}

/// Runs every seed of `seeds` twice ([`run_checked`]): failures and
/// nondeterministic seeds.
pub fn run_seeds(scenario: &dyn Scenario, seeds: Range<u64>) -> Summary {
    let mut summary = Summary::default();
    for seed in seeds {
        let run = run_checked(scenario, seed);
        summary.seeds += 1;
        if !run.deterministic() {
            summary.nondeterministic.push(seed);
        }
        if !run.report.verdict.passed() {
            summary.failures.push((seed, run.report.verdict));
        }
    }
    summary
}

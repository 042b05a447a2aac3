//! Scenario: replicated broadcast among 5 nodes under faults.
//!
//! * **Cluster**: 5 servers running `kaelix_cluster::broadcast::node::run_node`
//!   (acknowledge once durable on 2 nodes), 3 simulated clients.
//! * **Workload**: each client, every 5–40 ms of its clock, submits a new
//!   value (unique id, random payload) to a random server over a kept-open
//!   stream, retrying on other servers when the outcome is unknown
//!   (timeout, refused, broken) and reconnecting after a failure, until
//!   the safety phase ends. Each client's values (pause, payload, first
//!   server) are a recorded list drawn before the run (`crate::workload`),
//!   which `sim shrink` cuts; the retries are the client's own.
//! * **Faults**: swarm-drawn per seed (see `kaelix_sim::faults`), limited to
//!   what the protocol claims to survive: at most 2 servers down at once,
//!   whole-cluster power loss, and one server (chosen by the seed) whose
//!   disk may lose synced data (wipe, bit rot, misdirected writes, corrupt
//!   reads).
//! * **Safety, at every step**: no node ever holds a value no client sent,
//!   byte for byte.
//! * **Durability and liveness**: the safety phase lasts 5 s; then faults
//!   stop and within 10 s every server must hold every acknowledged value.
//!   An acknowledged value that no server holds at the end is reported as
//!   lost (a durability violation), not as slowness.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kaelix_cluster::broadcast::BroadcastConfig;
use kaelix_cluster::broadcast::node::{BroadcastClient, BroadcastObserver, run_node};
use kaelix_cluster::broadcast::wire::Value;
use kaelix_core::planted::Planted;
#[cfg(feature = "planted-bugs")]
use kaelix_core::planted::PlantedBug;
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::{Clock, Runtime};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::trace::{TraceSink, digest};
use kaelix_sim::{FaultProfile, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig, Tolerance};

use crate::metrics::RunMetrics;
use crate::{RunReport, Scenario, Tallies, Verdict};

/// The broadcast scenario family.
pub struct Broadcast {
    name: &'static str,
    description: &'static str,
    planted: Planted,
}

/// The correct protocol.
pub static BROADCAST: Broadcast = Broadcast {
    name: "broadcast",
    description: "5-node replicated broadcast, 3 clients; faulty network, disks, clocks; values durable on 2 nodes before ack",
    planted: Planted::NONE,
};

/// Planted bug: acknowledge before the write is synced.
#[cfg(feature = "planted-bugs")]
pub static BROADCAST_ACK_BEFORE_SYNC: Broadcast = Broadcast {
    name: "broadcast-ack-before-sync",
    description: "[planted bug] broadcast that counts a write as durable before its sync completes",
    planted: Planted::only(PlantedBug::BroadcastAckBeforeSync),
};

/// Planted bug: recover without verifying checksums.
#[cfg(feature = "planted-bugs")]
pub static BROADCAST_SKIP_CHECKSUM: Broadcast = Broadcast {
    name: "broadcast-skip-checksum",
    description: "[planted bug] broadcast that recovers its log without verifying checksums",
    planted: Planted::only(PlantedBug::BroadcastSkipChecksum),
};

const SERVERS: u64 = 5;
const CLIENTS: u64 = 3;
const SAFETY: Duration = Duration::from_secs(5);
const LIVENESS_BOUND: Duration = Duration::from_secs(10);
const TOLERANCE: Tolerance = Tolerance { max_down: 2, faulty_disks: 1, power_loss: true };
/// Labels the generators the clients' operation lists are drawn from.
const WORKLOAD_LABEL: u64 = 0xb40a_dca5;

fn servers() -> Vec<NodeId> {
    (1..=SERVERS).map(NodeId).collect()
}

/// What the checker has seen.
#[derive(Default)]
struct Observed {
    /// Value id → digest of the payload its client sent.
    sent: BTreeMap<u64, u64>,
    /// Values clients saw acknowledged.
    acked: BTreeSet<u64>,
    /// What each server's current incarnation holds.
    held: BTreeMap<NodeId, BTreeSet<u64>>,
    /// Acknowledgements each server's current incarnation sent, as the
    /// node reported them (for the run's metrics).
    node_acks: BTreeMap<NodeId, u64>,
    /// First safety violation.
    violation: Option<String>,
    /// Clients that finished their workload.
    clients_done: u64,
    submitted: u64,
}

#[derive(Clone)]
struct Checker {
    observed: Arc<Mutex<Observed>>,
    /// Set with `Observed::violation`, so the per-step check is one load.
    violated: Arc<AtomicBool>,
}

impl Checker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BroadcastObserver for Checker {
    fn booted(&self, node: NodeId) {
        let mut o = self.lock();
        o.held.entry(node).or_default().clear();
        o.node_acks.insert(node, 0);
    }

    fn acked(&self, node: NodeId, _id: u64) {
        *self.lock().node_acks.entry(node).or_default() += 1;
    }

    fn learned(&self, node: NodeId, value: &Value) {
        let mut o = self.lock();
        let ok = o.sent.get(&value.id) == Some(&digest(&value.payload));
        if !ok && o.violation.is_none() {
            let what = if o.sent.contains_key(&value.id) { "with a payload nobody sent" } else { "that nobody sent" };
            o.violation = Some(format!("{node} holds value {:#x} {what}", value.id));
            self.violated.store(true, Ordering::Relaxed);
        }
        o.held.entry(node).or_default().insert(value.id);
    }
}

/// One operation of a client: after `pause`, submit a new value with
/// `payload`, first to server `first` (retries go to servers the client
/// picks at run time).
#[derive(Clone, Debug)]
struct Submit {
    pause: Duration,
    first: usize,
    payload: Bytes,
}

/// Client `me`'s operations: a new value every 5–40 ms, enough to fill the
/// safety phase (see `crate::workload`).
fn draw_submits(rng: &mut DetRng) -> Vec<Submit> {
    crate::workload::filling(
        rng,
        SAFETY,
        |op: &Submit| op.pause,
        |rng| {
            let pause = Duration::from_millis(rng.random_range(5..40));
            let first = rng.random_range(0..SERVERS as usize);
            let len = rng.random_range(8..64);
            let payload: Bytes = (0..len).map(|_| rng.random::<u8>()).collect::<Vec<u8>>().into();
            Submit { pause, first, payload }
        },
    )
}

async fn client(rt: SimRuntime, me: u64, ops: Arc<Vec<Submit>>, checker: Checker) {
    let mut rng = rt.rng();
    let start = rt.now();
    let servers = servers();
    let mut client = BroadcastClient::new(rt.clone());
    let mut seq = 0u64;
    for op in ops.iter() {
        if rt.now() - start >= SAFETY {
            break;
        }
        rt.sleep(op.pause).await;
        seq += 1;
        let id = (me << 32) | seq;
        let payload = op.payload.clone();
        {
            let mut o = checker.lock();
            o.sent.insert(id, digest(&payload));
            o.submitted += 1;
        }
        for attempt in 0..6 {
            let node = if attempt == 0 { servers[op.first] } else { servers[rng.random_range(0..servers.len())] };
            let value = Value { id, payload: payload.clone() };
            match client.submit(node, value, Duration::from_millis(300)).await {
                Ok(true) => {
                    checker.lock().acked.insert(id);
                    rt.sim().trace_event(Some(rt.node_id()), "client-ack", id, || format!("client acked {id:#x}"));
                    break;
                }
                Ok(false) | Err(_) => rt.sleep(Duration::from_millis(rng.random_range(1..20))).await,
            }
        }
    }
    checker.lock().clients_done += 1;
}

impl Broadcast {
    fn converged(&self, checker: &Checker) -> bool {
        let o = checker.lock();
        o.clients_done == CLIENTS
            && o.held.values().all(|h| h.len() >= o.acked.len())
            && servers().iter().all(|n| o.held.get(n).is_some_and(|h| o.acked.iter().all(|id| h.contains(id))))
    }

    fn diagnose(&self, checker: &Checker) -> Verdict {
        let o = checker.lock();
        let lost: Vec<String> =
            o.acked.iter().filter(|id| !o.held.values().any(|h| h.contains(id))).map(|id| format!("{id:#x}")).collect();
        if !lost.is_empty() {
            return Verdict::SafetyViolation(format!(
                "{} acknowledged value(s) lost from every node: {}",
                lost.len(),
                lost.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if o.clients_done < CLIENTS {
            return Verdict::LivenessViolation(format!("only {} of {CLIENTS} clients finished", o.clients_done));
        }
        let lagging: Vec<String> = servers()
            .iter()
            .filter_map(|n| {
                let h = o.held.get(n)?;
                let missing = o.acked.iter().filter(|id| !h.contains(id)).count();
                (missing > 0).then(|| format!("{n} lacks {missing}"))
            })
            .collect();
        Verdict::LivenessViolation(format!("not converged {LIVENESS_BOUND:?} after heal: {}", lagging.join(", ")))
    }
}

impl Scenario for Broadcast {
    fn name(&self) -> &'static str {
        self.name
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn planted(&self) -> Planted {
        self.planted
    }

    fn run(&self, seed: u64, trace: Option<TraceSink>) -> RunReport {
        self.execute(seed, trace, false).0
    }

    fn run_metered(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies, Option<RunMetrics>) {
        let (report, metrics) = self.execute(seed, trace, true);
        (report, Vec::new(), metrics)
    }
}

impl Broadcast {
    /// One run; with `meter`, what every node reported holding and
    /// acknowledging (its current incarnation) once it ended.
    fn execute(&self, seed: u64, trace: Option<TraceSink>, meter: bool) -> (RunReport, Option<RunMetrics>) {
        let mut setup = rng::derive(seed, 0x5ce7_a810);
        let mut profile = FaultProfile::swarm(&mut setup);
        profile.restrict(&TOLERANCE);
        let servers = servers();
        let faulty_disk = servers[setup.random_range(0..servers.len())];
        let safety_end = Instant::ZERO + SAFETY;
        let schedule = FaultSchedule::generate(&profile, &TOLERANCE, &servers, &[faulty_disk], safety_end, &mut setup);
        let fault_mix = profile.mix();

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let checker = Checker { observed: Arc::default(), violated: Arc::default() };
        let mut config = BroadcastConfig::new(servers.clone());
        config.planted = self.planted;
        for &id in &servers {
            let (config, checker) = (config.clone(), checker.clone());
            // A fresh incarnation always listens in the simulator.
            let init = SimRuntime::init(move |rt| {
                let node = run_node(rt, config.clone(), checker.clone());
                async move { node.expect("a simulated node listens").await }
            });
            sim.add_node(
                id,
                NodeSpec {
                    kind: NodeKind::Server,
                    name: format!("server-{}", id.0),
                    faulty_disk: id == faulty_disk,
                    init,
                },
            );
        }
        for c in 0..CLIENTS {
            let checker = checker.clone();
            let ops = Arc::new(crate::workload::recorded(seed, WORKLOAD_LABEL, c, draw_submits));
            let init = SimRuntime::init(move |rt| client(rt, c, ops.clone(), checker.clone()));
            sim.add_node(
                NodeId(100 + c),
                NodeSpec { kind: NodeKind::Client, name: format!("client-{c}"), faulty_disk: false, init },
            );
        }
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(safety_end);

        let deadline = safety_end + LIVENESS_BOUND;
        let mut last_convergence_check = Instant::ZERO;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.run_until_done(
                deadline,
                |sim| {
                    // Convergence is only possible after heal; checking it
                    // every 5 simulated milliseconds keeps runs fast.
                    let now = sim.now();
                    if now < safety_end || now < last_convergence_check + Duration::from_millis(5) {
                        return false;
                    }
                    last_convergence_check = now;
                    self.converged(&checker)
                },
                |_| match checker.violated.load(Ordering::Relaxed) {
                    true => Err(checker.lock().violation.clone().expect("set before the flag")),
                    false => Ok(()),
                },
            )
        }));
        let verdict = match outcome {
            Ok(Ok(true)) => Verdict::Pass,
            Ok(Ok(false)) => self.diagnose(&checker),
            Ok(Err(violation)) => Verdict::SafetyViolation(violation),
            Err(panic) => Verdict::from_panic(panic),
        };
        let o = checker.lock();
        let workload = (o.submitted, o.acked.len() as u64);
        let metrics = meter.then(|| {
            let mut m = RunMetrics::new();
            for (&node, held) in &o.held {
                let labels = [("node", node.0.to_string())];
                m.gauge(
                    "kaelix_broadcast_values",
                    "Values this node holds (recovered from its log or received), as it reported them.",
                    &labels,
                    held.len() as f64,
                );
                m.counter(
                    "kaelix_broadcast_acknowledged_values_total",
                    "Values this node acknowledged to clients (durable on enough nodes).",
                    &labels,
                    o.node_acks.get(&node).copied().unwrap_or_default(),
                );
            }
            m.record_sim_time(sim.now().since_origin().as_secs_f64());
            m
        });
        drop(o);
        (RunReport::conclude(&sim, seed, verdict, fault_mix, workload), metrics)
    }
}

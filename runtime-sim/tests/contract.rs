//! The runtime contract of `kaelix_core::runtime`, checked on the simulator.
//!
//! Section 0 runs the contract's conformance suite
//! (`kaelix_core::runtime::conformance`, shared with `kaelix-runtime-real`)
//! under calm simulations of several seeds. The other sections check what
//! only the simulator promises or can show: exact virtual times, drifting
//! clocks, crashes, partitions, wiped disks, determinism, fault points.
//!
//! Every test builds a small [`Sim`], runs node bodies written against the
//! contract traits through [`SimRuntime`], copies what the nodes observed out
//! through shared cells, and asserts concrete values in the test body.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::FutureExt;
use kaelix_core::rng::RngExt;
use kaelix_core::runtime::conformance;
use kaelix_core::runtime::{
    ByteListener, ByteNetwork, ByteStream, ClientNetwork, ClientStream, Clock, JoinError, Listener, NetError, Network,
    Priority, Runtime, Spawner, Storage, StorageFile, TaskHandle,
};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId, buggify};
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::net::LinkConfig;
use kaelix_sim::{Fault, FaultProfile, NodeKind, NodeSpec, NodeStatus, Sim, SimConfig, SimStats};

// ---------------------------------------------------------------- helpers

type Shared<T> = Arc<Mutex<T>>;

fn shared<T>(v: T) -> Shared<T> {
    Arc::new(Mutex::new(v))
}

fn get<T>(s: &Shared<T>) -> MutexGuard<'_, T> {
    s.lock().expect("a node task panicked while holding a shared cell")
}

/// Appends to a shared log. The value is computed (and awaited) before the
/// lock is taken, so no guard is ever held across an await.
fn push<T>(s: &Shared<Vec<T>>, v: T) {
    get(s).push(v);
}

fn snapshot<T: Clone>(s: &Shared<T>) -> T {
    get(s).clone()
}

const fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}

const fn us(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000)
}

fn calm(seed: u64) -> Sim {
    Sim::new(SimConfig::new(seed))
}

fn with_profile(seed: u64, profile: FaultProfile) -> Sim {
    Sim::new(SimConfig { seed, profile, ..SimConfig::new(seed) })
}

/// Adds a node whose body (run at boot and at every restart) gets the
/// node's runtime and its own clone of `state`: the shared cells it reports
/// through, a tuple of them, or `()`.
fn add<S, F, Fut>(sim: &Sim, id: u64, kind: NodeKind, state: S, body: F)
where
    S: Clone + Send + Sync + 'static,
    F: Fn(SimRuntime, S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let init = SimRuntime::init(move |rt| body(rt, state.clone()));
    sim.add_node(NodeId(id), NodeSpec { kind, name: format!("n{id}"), faulty_disk: false, init });
}

fn server<S, F, Fut>(sim: &Sim, id: u64, state: S, body: F)
where
    S: Clone + Send + Sync + 'static,
    F: Fn(SimRuntime, S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    add(sim, id, NodeKind::Server, state, body);
}

fn client<S, F, Fut>(sim: &Sim, id: u64, state: S, body: F)
where
    S: Clone + Send + Sync + 'static,
    F: Fn(SimRuntime, S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    add(sim, id, NodeKind::Client, state, body);
}

fn run(sim: &Sim, until: Instant) {
    sim.run_until(until, |_| Ok::<(), ()>(())).expect("no check fails");
}

/// Runs until `flag` is set; panics if virtual time would pass `deadline` first.
fn run_until_set(sim: &Sim, deadline: Instant, flag: &Shared<bool>) {
    let done = sim.run_until_done(deadline, |_| *get(flag), |_| Ok::<(), ()>(())).expect("no check fails");
    assert!(done, "nodes did not get there by {deadline} (now {})", sim.now());
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Counts how many times it was dropped (a future's captured state).
struct DropCounter(Shared<u32>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }
}

// ---------------------------------------------------------------- 0. conformance

/// Conformance checks the simulator cannot even run.
///
/// KNOWN CONTRACT VIOLATION — `a_panicking_task_yields_panicked`: the
/// contract says a task that panics yields `JoinError::Panicked`, but the
/// simulator does not catch panics of spawned tasks: the panic unwinds out
/// of `Sim::step` and ends the whole run (see
/// `known_violation_a_panicking_task_unwinds_through_the_simulator`, which
/// pins that behaviour down until it is resolved). Catching it in
/// `SimRuntime::spawn` is not a clear-cut fix: a detached task's panic would
/// then go unnoticed, where today it fails the seed.
const SIM_SKIPS: &[&str] = &["a_panicking_task_yields_panicked"];

/// Runs the conformance suite in a calm simulation: node 1 serves and runs
/// the single-node checks, node 2 is its peer and client, node 3 exists but
/// never listens, node 77 does not exist.
fn conformance_run(seed: u64) -> conformance::Report {
    let sim = calm(seed);
    let peer: Shared<Option<SimRuntime>> = shared(None);
    let report: Shared<Option<conformance::Report>> = shared(None);
    server(&sim, 2, peer.clone(), |rt, peer| async move {
        *get(&peer) = Some(rt);
        std::future::pending::<()>().await;
    });
    server(&sim, 3, (), |_rt, ()| async {});
    server(&sim, 1, (peer.clone(), report.clone()), |rt, (peer, report)| async move {
        let client = loop {
            if let Some(c) = snapshot(&peer) {
                break c;
            }
            rt.sleep(Duration::from_millis(1)).await;
        };
        let pair = conformance::Pair {
            server: rt,
            client,
            not_listening: vec![NodeId(3), NodeId(77)],
            server_ip: kaelix_sim::node_ip(NodeId(1)).into(),
        };
        let r = conformance::run_all(pair, SIM_SKIPS).await;
        *get(&report) = Some(r);
    });
    let done = sim
        .run_until_done(Instant::ZERO + Duration::from_secs(3_600), |_| get(&report).is_some(), |_| Ok::<(), ()>(()))
        .expect("no check fails");
    assert!(done, "seed {seed}: the conformance suite did not finish");
    sim.shutdown();
    snapshot(&report).expect("finished")
}

#[test]
fn conformance_suite_passes_under_the_simulator() {
    for seed in 0..4 {
        let report = conformance_run(seed);
        if let Err(e) = report.verdict(&[]) {
            panic!("seed {seed}:\n{e}");
        }
        let ran = report.outcomes.iter().filter(|(_, o)| *o == conformance::Outcome::Passed).count();
        assert_eq!(ran, conformance::NODE_CHECKS.len() + conformance::PAIR_CHECKS.len() - SIM_SKIPS.len());
    }
}

/// Pins down the known violation behind [`SIM_SKIPS`]: the conformance
/// check's deliberate panic in a spawned task unwinds out of the simulation
/// instead of reaching the task's handle as `JoinError::Panicked`. When this
/// test fails, the simulator honours the contract: take the check off
/// `SIM_SKIPS` and delete this test.
#[test]
fn known_violation_a_panicking_task_unwinds_through_the_simulator() {
    let sim = calm(1);
    let answer: Shared<Option<Result<(), String>>> = shared(None);
    server(&sim, 1, answer.clone(), |rt, answer| async move {
        let r = conformance::a_panicking_task_yields_panicked(&rt).await;
        *get(&answer) = Some(r);
    });
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&sim, ms(100))));
    let payload = unwound.expect_err("the simulator caught the task's panic: see SIM_SKIPS");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    assert!(message.contains(conformance::PANIC_MESSAGE), "unwound with another panic: {message:?}");
    assert_eq!(*get(&answer), None, "the check never got its answer");
}

// ---------------------------------------------------------------- 1. clock

/// Node-local elapsed time is what the sleep asked for; true time is that
/// divided by the clock's rate. The drift comes from the profile; it is
/// estimated on a separate, long interval and must predict the short one.
#[test]
fn sleep_runs_on_the_nodes_drifting_clock() {
    const MAX_PPM: i64 = 50_000;
    let profile = FaultProfile { max_drift_ppm: MAX_PPM, ..FaultProfile::calm() };
    let mut visible_drift = 0;
    for seed in 0..8 {
        let sim = with_profile(seed, profile.clone());
        // (local, true) elapsed for a 1 s sleep, then for a 10 ms sleep.
        let out = shared(Vec::<(Duration, Duration)>::new());
        server(&sim, 1, out.clone(), |rt, out| async move {
            for d in [Duration::from_secs(1), Duration::from_millis(10)] {
                let (l0, t0) = (rt.now(), rt.sim().now());
                rt.sleep(d).await;
                let (l1, t1) = (rt.now(), rt.sim().now());
                push(&out, (l1 - l0, t1 - t0));
            }
        });
        run(&sim, ms(2_000));
        let out = snapshot(&out);
        assert_eq!(out.len(), 2, "seed {seed}: both sleeps finish");
        let (long_local, long_true) = out[0];
        let (local, truth) = out[1];

        // The node measured at least what it asked for, and not more than a
        // couple of nanoseconds of rounding beyond.
        assert!(long_local >= Duration::from_secs(1) && long_local <= Duration::from_secs(1) + Duration::from_nanos(2));
        assert!(local >= Duration::from_millis(10), "seed {seed}: woke early: {local:?}");
        assert!(local <= Duration::from_millis(10) + Duration::from_nanos(2), "seed {seed}: woke late: {local:?}");

        // rate = 1 + drift, estimated on the 1 s interval (error < 1e-9).
        let rate = long_local.as_nanos() as f64 / long_true.as_nanos() as f64;
        let drift_ppm = (rate - 1.0) * 1e6;
        assert!(drift_ppm.abs() <= MAX_PPM as f64 + 0.01, "seed {seed}: drift {drift_ppm} ppm beyond the profile");
        let expected_true = 10_000_000.0 / rate;
        assert!(
            (truth.as_nanos() as f64 - expected_true).abs() <= 2.0,
            "seed {seed}: true time {truth:?} but 10ms/(1+drift) = {expected_true}ns (drift {drift_ppm} ppm)"
        );
        if drift_ppm.abs() > 1_000.0 {
            visible_drift += 1;
            assert_ne!(truth, Duration::from_millis(10), "seed {seed}: a drifting clock must not measure true time");
        }
        // The run advanced true time past both sleeps.
        assert_eq!(sim.now(), ms(2_000));
        sim.shutdown();
    }
    assert!(visible_drift >= 4, "only {visible_drift} of 8 seeds drew a drift above 1000 ppm");
}

/// An explicit drift gives exact numbers: a clock 2% fast sleeps 10 ms of its
/// own time in ceil(10 ms / 1.02) of true time; 2% slow in ceil(10 ms / 0.98).
#[test]
fn sleep_under_an_injected_drift_is_exact() {
    for (ppm, expected_true_nanos) in [(20_000i64, 9_803_922u64), (-20_000, 10_204_082), (0, 10_000_000)] {
        let sim = calm(3);
        let out = shared(None);
        server(&sim, 1, out.clone(), |rt, out| async move {
            let (l0, t0) = (rt.now(), rt.sim().now());
            rt.sleep(Duration::from_millis(10)).await;
            *get(&out) = Some((rt.now() - l0, rt.sim().now() - t0));
        });
        sim.apply_fault(Fault::ClockDrift { node: NodeId(1), ppm });
        run(&sim, ms(50));
        let (local, truth) = snapshot(&out).expect("sleep finished");
        assert_eq!(local, Duration::from_millis(10), "ppm {ppm}");
        assert_eq!(truth, Duration::from_nanos(expected_true_nanos), "ppm {ppm}");
        sim.shutdown();
    }
}

/// A drift change while a sleep is pending must not make the sleep late on
/// the node's own clock: 10 ms into a 100 ms sleep the clock turns 50% fast
/// (the sleep should end at true 10 + 90/1.5 = 70 ms) or 50% slow (10 +
/// 90/0.5 = 190 ms). Either way the node measures exactly 100 ms.
#[test]
fn sleep_follows_a_drift_change_mid_sleep() {
    for (ppm, expected_true) in [(500_000i64, 70u64), (-500_000, 190)] {
        let sim = calm(3);
        let out = shared(None);
        server(&sim, 1, out.clone(), |rt, out| async move {
            let (l0, t0) = (rt.now(), rt.sim().now());
            rt.sleep(Duration::from_millis(100)).await;
            *get(&out) = Some((rt.now() - l0, rt.sim().now() - t0));
        });
        sim.schedule_fault(ms(10), Fault::ClockDrift { node: NodeId(1), ppm });
        run(&sim, ms(500));
        let (local, truth) = snapshot(&out).expect("sleep finished");
        assert_eq!(local, Duration::from_millis(100), "ppm {ppm}: the node measured {local:?}");
        assert_eq!(truth, Duration::from_millis(expected_true), "ppm {ppm}");
        sim.shutdown();
    }
}

/// On the simulator's perfect clock, awaiting a past deadline (or the
/// current time) costs no virtual time at all, and a deadline even 1 ns
/// ahead does not complete on the first poll. (That past deadlines complete
/// at once is a conformance check.)
#[test]
fn a_past_deadline_costs_no_virtual_time() {
    let sim = calm(1);
    let out = shared(None);
    server(&sim, 1, out.clone(), |rt, out| async move {
        rt.sleep(Duration::from_millis(5)).await;
        let (now, t0) = (rt.now(), rt.sim().now());
        let one_ns_ready = rt.sleep(Duration::from_nanos(1)).now_or_never().is_some();
        rt.sleep_until(Instant::from_nanos(now.as_nanos() - 1_000_000)).await;
        rt.sleep_until(now).await;
        *get(&out) = Some((one_ns_ready, t0, rt.now() == now, rt.sim().now()));
    });
    run(&sim, ms(20));
    assert_eq!(snapshot(&out), Some((false, ms(5), true, ms(5))));
    sim.shutdown();
}

/// Sleepers spawned in a scrambled order wake in deadline order, each at its
/// deadline exactly (a perfect clock).
#[test]
fn many_sleepers_wake_in_deadline_order() {
    const N: u64 = 64;
    for seed in [1, 2, 3] {
        let sim = calm(seed);
        let woke = shared(Vec::<(u64, Instant, Instant)>::new());
        server(&sim, 1, woke.clone(), |rt, woke| async move {
            let base = rt.now();
            for i in 0..N {
                // A permutation of 0..N (37 is coprime with 64).
                let slot = (i * 37) % N;
                let deadline = base + Duration::from_micros(100 + slot * 50);
                let (rt2, woke) = (rt.clone(), woke.clone());
                drop(rt.spawn(Priority::Normal, "sleeper", async move {
                    rt2.sleep_until(deadline).await;
                    push(&woke, (slot, deadline, rt2.now()));
                }));
            }
        });
        run(&sim, ms(10));
        let woke = snapshot(&woke);
        assert_eq!(woke.len(), N as usize, "seed {seed}");
        let order: Vec<u64> = woke.iter().map(|(slot, _, _)| *slot).collect();
        assert_eq!(order, (0..N).collect::<Vec<_>>(), "seed {seed}: woke out of deadline order");
        for (slot, deadline, at) in woke {
            assert_eq!(at, deadline, "seed {seed}: sleeper {slot} woke at {at}, deadline {deadline}");
        }
        sim.shutdown();
    }
}

// ---------------------------------------------------------------- 2. spawn

/// The simulator cancels exactly: an aborted task's future is dropped at the
/// abort itself, and a task aborted before its first poll never runs at
/// all. (That abort yields `Cancelled`, also for a task that never ran, is
/// a conformance check.)
#[test]
fn abort_drops_the_future_at_once_and_an_unpolled_task_never_runs() {
    let sim = calm(6);
    let drops = shared(0u32);
    let ran = shared(Vec::<&'static str>::new());
    let seen = shared(Vec::<String>::new());
    server(&sim, 1, (drops.clone(), ran.clone(), seen.clone()), |rt, (drops, ran, seen)| async move {
        let (rt2, g, r) = (rt.clone(), DropCounter(drops.clone()), ran.clone());
        let sleeping = rt.spawn(Priority::Normal, "sleeping", async move {
            let _g = g;
            push(&r, "sleeping");
            rt2.sleep(Duration::from_secs(1)).await;
        });
        rt.sleep(Duration::from_millis(1)).await;
        sleeping.abort();
        let drops_right_after_abort = *get(&drops);
        push(&seen, format!("sleeping: {drops_right_after_abort} dropped at abort, {:?}", sleeping.await));

        let (g, r) = (DropCounter(drops.clone()), ran.clone());
        let unpolled = rt.spawn(Priority::Critical, "unpolled", async move {
            let _g = g;
            push(&r, "unpolled");
        });
        unpolled.abort();
        push(&seen, format!("unpolled: {:?}", unpolled.await));
    });
    run(&sim, ms(3_000));
    assert_eq!(
        snapshot(&seen),
        vec!["sleeping: 1 dropped at abort, Err(Cancelled)".to_owned(), "unpolled: Err(Cancelled)".to_owned()]
    );
    assert_eq!(snapshot(&ran), vec!["sleeping"], "the unpolled task's body never ran");
    assert_eq!(*get(&drops), 2);
    sim.shutdown();
}

/// A crash drops every task of the node (root, children, detached ones),
/// cancels their join handles wherever they are held, and a restart runs
/// init again with the next incarnation.
#[test]
fn crash_drops_every_task_and_restart_runs_init_again() {
    let sim = calm(7);
    let boots = shared(Vec::<u64>::new());
    let drops = shared(0u32);
    let handle_slot: Shared<Option<<SimRuntime as Spawner>::Handle<u32>>> = shared(None);
    let old_rt: Shared<Option<SimRuntime>> = shared(None);
    let observed = shared(Vec::<String>::new());

    server(
        &sim,
        1,
        (boots.clone(), drops.clone(), handle_slot.clone(), old_rt.clone()),
        |rt, (boots, drops, handle_slot, old_rt)| async move {
            let incarnation = rt.handle().incarnation();
            push(&boots, incarnation);
            if incarnation > 0 {
                return;
            }
            *get(&old_rt) = Some(rt.clone());
            let _root_guard = DropCounter(drops.clone());
            for i in 0..5u32 {
                let (rt2, g) = (rt.clone(), DropCounter(drops.clone()));
                let h = rt.spawn(Priority::ALL[i as usize % 4], "worker", async move {
                    let _g = g;
                    rt2.sleep(Duration::from_secs(10)).await;
                    i
                });
                if i == 0 {
                    // Handed to another node, which awaits it.
                    *get(&handle_slot) = Some(h);
                }
                // Others are detached by dropping the handle.
            }
            let g = DropCounter(drops.clone());
            drop(rt.spawn(Priority::Background, "pending", async move {
                let _g = g;
                std::future::pending::<()>().await;
            }));
            std::future::pending::<()>().await;
        },
    );
    server(&sim, 2, (handle_slot.clone(), observed.clone()), |rt, (handle_slot, observed)| async move {
        rt.sleep(Duration::from_millis(1)).await;
        let h = get(&handle_slot).take().expect("node 1 handed over its handle");
        let r = h.await;
        push(&observed, format!("{r:?} at {}", rt.sim().now()));
    });

    run(&sim, ms(5));
    assert_eq!(snapshot(&boots), vec![0]);
    assert_eq!(*get(&drops), 0, "nothing dropped before the crash");
    assert!(snapshot(&observed).is_empty());

    sim.apply_fault(Fault::Crash(NodeId(1)));
    // Dropped synchronously by the crash: root + 5 workers + 1 detached.
    assert_eq!(*get(&drops), 7);
    assert_eq!(sim.status(NodeId(1)), NodeStatus::Down);

    // A handle of the dead incarnation spawns nothing: the future is dropped
    // at once and its handle is cancelled. (Handles are used between steps
    // only inside `Sim::enter`.)
    let entered = sim.enter();
    let stale = snapshot(&old_rt).expect("init stored its runtime");
    assert!(!stale.handle().is_alive());
    let ran = shared(false);
    let (rn, g) = (ran.clone(), DropCounter(drops.clone()));
    let h = stale.spawn(Priority::Normal, "zombie", async move {
        let _g = g;
        *get(&rn) = true;
    });
    assert_eq!(*get(&drops), 8);
    assert_eq!(h.now_or_never(), Some(Err(JoinError::Cancelled)));
    drop(entered);

    run(&sim, ms(10));
    assert_eq!(snapshot(&observed), vec!["Err(Cancelled) at 0.005000000s".to_owned()]);
    assert!(!*get(&ran));
    assert_eq!(sim.stats().crashes, 1);

    sim.apply_fault(Fault::Restart { node: NodeId(1), wipe: false });
    assert_eq!(sim.status(NodeId(1)), NodeStatus::Up);
    run(&sim, ms(15));
    assert_eq!(snapshot(&boots), vec![0, 1]);
    // Restarting a node that is up does nothing.
    sim.apply_fault(Fault::Restart { node: NodeId(1), wipe: false });
    run(&sim, ms(20));
    assert_eq!(snapshot(&boots), vec![0, 1]);
    // Long after: the 10 s sleepers of incarnation 0 never come back.
    run(&sim, ms(20_000));
    assert_eq!(*get(&drops), 8);
    sim.shutdown();
}

// ---------------------------------------------------------------- 3. network

type Inbox = Shared<Vec<(NodeId, Bytes, Instant)>>;

/// Both nodes send three bursts to each other; `1 -/-> 2` is cut around the
/// second burst and healed before the third.
#[test]
fn datagrams_carry_the_sender_and_respect_one_way_partitions() {
    let sim = calm(11);
    let inboxes: [Inbox; 2] = [shared(Vec::new()), shared(Vec::new())];
    for id in [1u64, 2] {
        server(&sim, id, inboxes[id as usize - 1].clone(), move |rt, inbox| async move {
            let rx = rt.clone();
            drop(rt.spawn(Priority::High, "rx", async move {
                loop {
                    let (from, msg) = rx.recv().await;
                    push(&inbox, (from, msg, rx.sim().now()));
                }
            }));
            let peer = NodeId(3 - id);
            let start = rt.now();
            for burst in 0..3u8 {
                rt.sleep_until(start + Duration::from_millis(1 + 10 * u64::from(burst))).await;
                for i in 0..6u8 {
                    rt.send(peer, Bytes::from(vec![id as u8, burst, i]));
                    rt.sleep(Duration::from_micros(100)).await;
                }
            }
        });
    }
    sim.schedule_fault(ms(5), Fault::PartitionOneWay { from: NodeId(1), to: NodeId(2) });
    sim.schedule_fault(ms(15), Fault::Heal);
    run(&sim, ms(30));

    let got = |node: usize| {
        let mut v: Vec<(NodeId, Vec<u8>)> =
            snapshot(&inboxes[node]).into_iter().map(|(f, m, _)| (f, m.to_vec())).collect();
        v.sort();
        v
    };
    let expected = |from: u8, bursts: &[u8]| {
        let mut v = Vec::new();
        for &burst in bursts {
            for i in 0..6u8 {
                v.push((NodeId(u64::from(from)), vec![from, burst, i]));
            }
        }
        v
    };
    // Node 2 heard nothing from node 1 during the partition...
    assert_eq!(got(1), expected(1, &[0, 2]));
    // ...while node 1 heard every burst from node 2.
    assert_eq!(got(0), expected(2, &[0, 1, 2]));
    // Nothing crossed 1 -> 2 while it was cut.
    for (from, _, at) in snapshot(&inboxes[1]) {
        assert_eq!(from, NodeId(1));
        assert!(at < ms(5) || at >= ms(15), "delivered during the partition at {at}");
    }
    let stats = sim.stats();
    assert_eq!((stats.packets_sent, stats.packets_delivered, stats.packets_dropped), (36, 30, 6));
    sim.shutdown();
}

/// A link cut while a datagram is in flight loses it; after healing, the
/// same link delivers again.
#[test]
fn a_partition_drops_datagrams_in_flight() {
    let sim = calm(12);
    let inbox: Inbox = shared(Vec::new());
    server(&sim, 2, inbox.clone(), |rt, inbox| async move {
        loop {
            let (from, msg) = rt.recv().await;
            push(&inbox, (from, msg, rt.sim().now()));
        }
    });
    server(&sim, 1, (), |rt, ()| async move {
        rt.send(NodeId(2), b("in flight"));
        rt.sleep(Duration::from_millis(5)).await;
        rt.send(NodeId(2), b("after heal"));
        // Unknown destinations are silently dropped.
        rt.send(NodeId(99), b("nobody"));
    });
    // The minimum link latency is 50 µs: the first datagram is still in flight.
    sim.schedule_fault(us(10), Fault::PartitionOneWay { from: NodeId(1), to: NodeId(2) });
    sim.schedule_fault(ms(1), Fault::Heal);
    run(&sim, ms(10));
    let got: Vec<(NodeId, Bytes)> = snapshot(&inbox).into_iter().map(|(f, m, _)| (f, m)).collect();
    assert_eq!(got, vec![(NodeId(1), b("after heal"))]);
    assert_eq!(sim.stats().packets_dropped, 1);
    sim.shutdown();
}

// ---------------------------------------------------------------- 4. client streams

const SERVER: u64 = 1;
const CLIENT: u64 = 100;

/// The simulator's `close` ends only this end's sending, as a TCP half-close
/// does: the peer sees end of stream and can still answer, and the closing
/// end still reads that answer. (Order, end of stream after the frames, the
/// frame limit and `AlreadyListening` are conformance checks. The contract
/// does not say what a closed end reads; the real runtime's `close` shuts
/// both directions.)
#[test]
fn close_is_a_half_close() {
    let sim = calm(21);
    let server_saw = shared(Vec::<String>::new());
    let client_saw = shared(Vec::<String>::new());
    server(&sim, SERVER, server_saw.clone(), |rt, saw| async move {
        let mut listener = rt.listen().expect("listen");
        let s = listener.accept().await.expect("accept");
        push(&saw, format!("{:?}", s.recv().await));
        push(&saw, format!("end {:?}", s.recv().await));
        push(&saw, format!("reply {:?}", s.send(b("bye")).await));
        s.close();
        s.close();
    });
    client(&sim, CLIENT, client_saw.clone(), |rt, saw| async move {
        rt.sleep(Duration::from_millis(1)).await;
        let s = rt.connect(NodeId(SERVER)).await.expect("connect");
        s.send(b("hi")).await.expect("send");
        s.close();
        push(&saw, format!("{:?}", s.recv().await));
        push(&saw, format!("{:?}", s.recv().await));
    });
    run(&sim, ms(50));
    assert_eq!(
        snapshot(&server_saw),
        vec![r#"Ok(Some(b"hi"))"#.to_owned(), "end Ok(None)".to_owned(), "reply Ok(())".to_owned()]
    );
    assert_eq!(snapshot(&client_saw), vec![r#"Ok(Some(b"bye"))"#.to_owned(), "Ok(None)".to_owned()]);
    sim.shutdown();
}

/// After `close`, this end sends nothing more: the peer sees the frames sent
/// before, then end of stream, and never a frame after it.
#[test]
fn a_closed_stream_sends_nothing_more() {
    let sim = calm(25);
    let server_saw = shared(Vec::<String>::new());
    let client_saw = shared(Vec::<String>::new());
    server(&sim, SERVER, server_saw.clone(), |rt, saw| async move {
        let mut l = rt.listen().expect("listen");
        let s = l.accept().await.expect("accept");
        push(&saw, format!("{:?}", s.recv().await));
        push(&saw, format!("{:?}", s.recv().await));
        rt.sleep(Duration::from_millis(5)).await;
        push(&saw, format!("{:?}", s.recv().await));
    });
    client(&sim, CLIENT, client_saw.clone(), |rt, saw| async move {
        rt.sleep(Duration::from_millis(1)).await;
        let s = rt.connect(NodeId(SERVER)).await.expect("connect");
        s.send(b("a")).await.expect("send");
        s.clone().close();
        rt.sleep(Duration::from_millis(1)).await;
        push(&saw, format!("send after close {:?}", s.send(b("b")).await));
    });
    run(&sim, ms(20));
    assert_eq!(
        snapshot(&server_saw),
        vec![r#"Ok(Some(b"a"))"#.to_owned(), "Ok(None)".to_owned(), "Ok(None)".to_owned()]
    );
    assert_eq!(snapshot(&client_saw), vec!["send after close Err(Reset)".to_owned()]);
    sim.shutdown();
}

/// Dropping the listener stops accepting, as closing a listening socket
/// does: a stream still waiting to be accepted is reset, new connects are
/// refused, and the node can listen again.
#[test]
fn dropping_the_listener_stops_accepting() {
    let sim = calm(26);
    let server_saw = shared(Vec::<String>::new());
    let client_saw = shared(Vec::<String>::new());
    server(&sim, SERVER, server_saw.clone(), |rt, saw| async move {
        let start = rt.now();
        let listener = rt.listen().expect("listen");
        rt.sleep_until(start + Duration::from_millis(3)).await;
        drop(listener);
        rt.sleep_until(start + Duration::from_millis(5)).await;
        let relisten = rt.listen();
        push(&saw, format!("relisten {:?}", relisten.as_ref().map(|_| ())));
        let Ok(mut listener) = relisten else { return };
        let s = listener.accept().await.expect("accept");
        while let Ok(Some(f)) = s.recv().await {
            s.send(f).await.expect("echo");
        }
    });
    client(&sim, CLIENT, client_saw.clone(), |rt, saw| async move {
        let start = rt.now();
        rt.sleep(Duration::from_millis(1)).await;
        // Handshake done, but the server never accepts it.
        let first = rt.connect(NodeId(SERVER)).await.expect("connect while listening");
        push(&saw, format!("unaccepted {:?}", first.recv().await));
        rt.sleep_until(start + Duration::from_millis(4)).await;
        push(&saw, format!("not listening {:?}", rt.connect(NodeId(SERVER)).await.map(|_| ())));
        rt.sleep_until(start + Duration::from_millis(6)).await;
        let s = rt.connect(NodeId(SERVER)).await.expect("connect after relisten");
        s.send(b("hi")).await.expect("send");
        push(&saw, format!("echo {:?}", s.recv().await));
    });
    run(&sim, ms(20));
    assert_eq!(snapshot(&server_saw), vec!["relisten Ok(())".to_owned()]);
    assert_eq!(
        snapshot(&client_saw),
        vec![
            "unaccepted Err(Reset)".to_owned(),
            format!("not listening {:?}", Err::<(), _>(NetError::Refused(NodeId(SERVER)))),
            r#"echo Ok(Some(b"hi"))"#.to_owned(),
        ]
    );
    sim.shutdown();
}

/// Crashing the server resets the client's stream (recv and send fail);
/// while the server is down connects are refused; once it restarts and
/// listens again a new stream works.
#[test]
fn server_crash_resets_client_streams() {
    let sim = calm(23);
    let server_got = shared(Vec::<String>::new());
    let client_saw = shared(Vec::<String>::new());
    let ready = shared(false);
    server(&sim, SERVER, server_got.clone(), |rt, got| async move {
        let mut listener = rt.listen().expect("listen");
        loop {
            let s = listener.accept().await.expect("accept");
            let (got, inc) = (got.clone(), rt.handle().incarnation());
            drop(rt.spawn(Priority::High, "conn", async move {
                while let Ok(Some(f)) = s.recv().await {
                    push(&got, format!("#{inc} {}", String::from_utf8_lossy(&f)));
                    let _ = s.send(f).await;
                }
            }));
        }
    });
    client(&sim, CLIENT, (client_saw.clone(), ready.clone()), |rt, (saw, ready)| async move {
        rt.sleep(Duration::from_millis(1)).await;
        let s = rt.connect(NodeId(SERVER)).await.expect("connect");
        s.send(b("ping")).await.expect("send");
        push(&saw, format!("echo {:?}", s.recv().await));
        *get(&ready) = true;
        // Blocks until the server crashes.
        push(&saw, format!("recv {:?}", s.recv().await));
        push(&saw, format!("send {:?}", s.send(b("late")).await));
        push(&saw, format!("recv {:?}", s.recv().await));
        loop {
            match rt.connect(NodeId(SERVER)).await {
                Ok(s) => {
                    s.send(b("again")).await.expect("send");
                    push(&saw, format!("new stream echo {:?}", s.recv().await));
                    break;
                }
                Err(e) => {
                    let msg = format!("connect {e:?}");
                    if get(&saw).last() != Some(&msg) {
                        push(&saw, msg);
                    }
                    rt.sleep(Duration::from_millis(1)).await;
                }
            }
        }
    });
    run_until_set(&sim, ms(10), &ready);
    run(&sim, ms(10));
    sim.apply_fault(Fault::Crash(NodeId(SERVER)));
    run(&sim, ms(20));
    sim.apply_fault(Fault::Restart { node: NodeId(SERVER), wipe: false });
    run(&sim, ms(40));
    assert_eq!(snapshot(&server_got), vec!["#0 ping".to_owned(), "#1 again".to_owned()]);
    assert_eq!(
        snapshot(&client_saw),
        vec![
            r#"echo Ok(Some(b"ping"))"#.to_owned(),
            "recv Err(Reset)".to_owned(),
            "send Err(Reset)".to_owned(),
            "recv Err(Reset)".to_owned(),
            format!("connect {:?}", NetError::Refused(NodeId(SERVER))),
            r#"new stream echo Ok(Some(b"again"))"#.to_owned(),
        ]
    );
    sim.shutdown();
}

/// A partition between client and server breaks the stream on both ends.
#[test]
fn a_partition_breaks_client_streams() {
    let sim = calm(24);
    let saw = shared(Vec::<String>::new());
    server(&sim, SERVER, saw.clone(), |rt, saw| async move {
        let mut l = rt.listen().expect("listen");
        let s = l.accept().await.expect("accept");
        push(&saw, format!("server {:?}", s.recv().await));
    });
    client(&sim, CLIENT, saw.clone(), |rt, saw| async move {
        rt.sleep(Duration::from_millis(1)).await;
        let s = rt.connect(NodeId(SERVER)).await.expect("connect");
        push(&saw, format!("client {:?}", s.recv().await));
    });
    run(&sim, ms(5));
    assert!(snapshot(&saw).is_empty());
    sim.apply_fault(Fault::PartitionOneWay { from: NodeId(SERVER), to: NodeId(CLIENT) });
    run(&sim, ms(10));
    let mut got = snapshot(&saw);
    got.sort();
    assert_eq!(got, vec!["client Err(Reset)".to_owned(), "server Err(Reset)".to_owned()]);
    sim.shutdown();
}

// ---------------------------------------------------------------- 4b. byte streams

/// What only the simulator's byte streams show: the address plan (node
/// `n` is `10.x.y.z`, loopback is the node itself, a listener bound to
/// `127.0.0.1` is unreachable from elsewhere), deterministic ephemeral
/// ports, which addresses bind, and refusals naming the node.
#[test]
fn byte_streams_follow_the_address_plan() {
    assert_eq!(kaelix_sim::node_addr(NodeId(1), 4222).to_string(), "10.0.0.1:4222");
    assert_eq!(kaelix_sim::node_addr(NodeId(300), 80).to_string(), "10.0.1.44:80");
    assert_eq!(kaelix_sim::addr_node("10.0.1.44".parse().unwrap()), Some(NodeId(300)));
    assert_eq!(kaelix_sim::addr_node("127.0.0.1".parse().unwrap()), None);
    let sim = calm(31);
    let server_saw = shared(Vec::<String>::new());
    let client_saw = shared(Vec::<String>::new());
    server(&sim, SERVER, server_saw.clone(), |rt, saw| async move {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mut any = rt.bind_tcp(addr("0.0.0.0:4222")).expect("bind 0.0.0.0");
        let local = rt.bind_tcp(addr("127.0.0.1:4223")).expect("bind loopback");
        let own = rt.bind_tcp(addr("10.0.0.1:0")).expect("bind own ip");
        for l in [&any, &local, &own] {
            push(&saw, format!("bound {}", l.local_addr()));
        }
        for bad in ["10.0.0.1:4222", "10.0.0.2:0", "192.168.0.1:0"] {
            push(&saw, format!("bind {bad} {:?}", rt.bind_tcp(addr(bad)).map(|l| l.local_addr())));
        }
        let s = any.accept().await.expect("accept");
        push(&saw, format!("accepted from {}", s.peer_addr()));
        // Loopback reaches the node's own listeners.
        let me = rt.connect_tcp(addr("127.0.0.1:4223")).await.expect("connect to loopback");
        push(&saw, format!("loopback peer {}", me.peer_addr()));
        let me = rt.connect_tcp(addr("0.0.0.0:4222")).await.expect("connect to 0.0.0.0");
        push(&saw, format!("unspecified peer {}", me.peer_addr()));
        std::future::pending::<()>().await;
    });
    client(&sim, CLIENT, client_saw.clone(), |rt, saw| async move {
        rt.sleep(Duration::from_millis(1)).await;
        let s = rt.connect_tcp(kaelix_sim::node_addr(NodeId(SERVER), 4222)).await.expect("connect");
        push(&saw, format!("connected to {}", s.peer_addr()));
        for to in ["10.0.0.1:4223", "10.0.0.77:1", "192.168.0.1:1", "127.0.0.1:4222"] {
            let r = rt.connect_tcp(to.parse().unwrap()).await.map(|s| s.peer_addr());
            push(&saw, format!("{to} {r:?}"));
        }
    });
    run(&sim, ms(20));
    assert_eq!(
        snapshot(&server_saw),
        vec![
            "bound 0.0.0.0:4222",
            "bound 127.0.0.1:4223",
            "bound 10.0.0.1:49152",
            "bind 10.0.0.1:4222 Err(AddrInUse(10.0.0.1:4222))",
            "bind 10.0.0.2:0 Err(AddrNotAvailable(10.0.0.2:0))",
            "bind 192.168.0.1:0 Err(AddrNotAvailable(192.168.0.1:0))",
            "accepted from 10.0.0.100:49152",
            "loopback peer 127.0.0.1:4223",
            "unspecified peer 127.0.0.1:4222",
        ]
    );
    assert_eq!(
        snapshot(&client_saw),
        vec![
            "connected to 10.0.0.1:4222".to_owned(),
            format!("10.0.0.1:4223 {:?}", Err::<(), _>(NetError::Refused(NodeId(SERVER)))),
            format!("10.0.0.77:1 {:?}", Err::<(), _>(NetError::Refused(NodeId(77)))),
            "192.168.0.1:1 Err(AddrNotAvailable(192.168.0.1:1))".to_owned(),
            format!("127.0.0.1:4222 {:?}", Err::<(), _>(NetError::Refused(NodeId(CLIENT)))),
        ]
    );
    sim.shutdown();
}

/// The chunk sizes a reader saw for 200 writes of 100 bytes each.
fn byte_chunks(seed: u64) -> Vec<usize> {
    let sim = calm(seed);
    let chunks = shared(Vec::<usize>::new());
    server(&sim, SERVER, chunks.clone(), |rt, chunks| async move {
        let mut l = rt.bind_tcp(kaelix_sim::node_addr(NodeId(SERVER), 4222)).expect("bind");
        let s = l.accept().await.expect("accept");
        let mut got = Vec::new();
        while let Some(chunk) = s.read().await.expect("read") {
            push(&chunks, chunk.len());
            got.extend_from_slice(&chunk);
        }
        let want: Vec<u8> = (0..200u32).flat_map(|i| (0..100u32).map(move |j| (i * 7 + j) as u8)).collect();
        assert!(got == want, "the bytes arrived changed");
    });
    client(&sim, CLIENT, (), |rt, ()| async move {
        rt.sleep(Duration::from_millis(1)).await;
        let s = rt.connect_tcp(kaelix_sim::node_addr(NodeId(SERVER), 4222)).await.expect("connect");
        for i in 0..200u32 {
            s.write(Bytes::from((0..100u32).map(|j| (i * 7 + j) as u8).collect::<Vec<u8>>())).await.expect("write");
        }
        s.close();
    });
    run(&sim, ms(50));
    sim.shutdown();
    snapshot(&chunks)
}

/// Writes are cut at random points, deterministically per seed: some of
/// the 200 writes arrive in several chunks, none is empty, the same seed
/// cuts the same way and another seed otherwise.
#[test]
fn byte_stream_writes_are_cut_at_random_points_per_seed() {
    let a = byte_chunks(5);
    assert_eq!(a.iter().sum::<usize>(), 20_000);
    assert!(a.iter().all(|&n| n > 0 && n <= 100), "{a:?}");
    let split = a.len() - 200;
    assert!((10..=200).contains(&split), "{split} extra chunks from 200 writes");
    assert_eq!(a, byte_chunks(5));
    assert_ne!(a, byte_chunks(6));
}

/// A server crash resets the client's byte stream (reads and writes fail);
/// while the server is down connects are refused; bytes written to an end
/// that closed reset the stream.
#[test]
fn byte_streams_break_on_crash_and_reset_after_close() {
    let sim = calm(33);
    let saw = shared(Vec::<String>::new());
    let ready = shared(false);
    server(&sim, SERVER, (), |rt, ()| async move {
        let mut l = rt.bind_tcp(kaelix_sim::node_addr(NodeId(SERVER), 4222)).expect("bind");
        let first = l.accept().await.expect("accept");
        first.close();
        let held = l.accept().await.expect("accept");
        std::future::pending::<()>().await;
        drop(held);
    });
    client(&sim, CLIENT, (saw.clone(), ready.clone()), |rt, (saw, ready)| async move {
        rt.sleep(Duration::from_millis(1)).await;
        let to = kaelix_sim::node_addr(NodeId(SERVER), 4222);
        let closed = rt.connect_tcp(to).await.expect("connect");
        push(&saw, format!("after close {:?}", closed.read().await));
        push(&saw, format!("first write {:?}", closed.write(b("hello?")).await));
        rt.sleep(Duration::from_millis(1)).await;
        push(&saw, format!("later write {:?}", closed.write(b("hello?")).await));
        let s = rt.connect_tcp(to).await.expect("connect");
        *get(&ready) = true;
        push(&saw, format!("crash read {:?}", s.read().await));
        push(&saw, format!("crash write {:?}", s.write(b("late")).await));
        push(&saw, format!("down {:?}", rt.connect_tcp(to).await.map(|s| s.peer_addr())));
    });
    run_until_set(&sim, ms(10), &ready);
    run(&sim, ms(10));
    sim.apply_fault(Fault::Crash(NodeId(SERVER)));
    run(&sim, ms(20));
    assert_eq!(
        snapshot(&saw),
        vec![
            "after close Ok(None)".to_owned(),
            "first write Ok(())".to_owned(),
            "later write Err(Reset)".to_owned(),
            "crash read Err(Reset)".to_owned(),
            "crash write Err(Reset)".to_owned(),
            format!("down {:?}", Err::<(), _>(NetError::Refused(NodeId(SERVER)))),
        ]
    );
    sim.shutdown();
}

// ---------------------------------------------------------------- 5. storage

/// Incarnation 0 writes, syncs some of it and crashes; incarnation 1 reads
/// back what the contract promises: synced data survives, unsynced writes
/// are gone (the default disk loses every unsynced write), file creation is
/// durable.
#[test]
fn synced_writes_survive_a_crash_and_unsynced_ones_do_not() {
    let sim = calm(31);
    let wrote = shared(false);
    let read = shared(false);
    let before = shared(Vec::<String>::new());
    let after = shared(Vec::<String>::new());
    server(
        &sim,
        1,
        (wrote.clone(), read.clone(), before.clone(), after.clone()),
        |rt, (wrote, read, before, after)| async move {
            if rt.handle().incarnation() == 0 {
                let log = rt.open("synced.log").await.expect("open");
                let vol = rt.open("volatile.log").await.expect("open");
                let trunc = rt.open("trunc.log").await.expect("open");
                rt.open("empty.log").await.expect("open");
                log.append(b("hello")).await.expect("append");
                trunc.write_at(0, b("0123456789")).await.expect("write");
                trunc.sync().await.expect("sync");
                trunc.truncate(4).await.expect("truncate");
                log.sync().await.expect("sync");
                trunc.sync().await.expect("sync");
                log.append(b(" world")).await.expect("append");
                vol.write_at(3, b("lost")).await.expect("write");
                // Volatile writes are visible to reads before the crash.
                let mut v = Vec::new();
                v.push(format!("{}", log.len()));
                v.push(format!("{:?}", log.read_at(0, 11).await));
                v.push(format!("{:?}", vol.read_at(0, 7).await));
                v.push(format!("{}", trunc.len()));
                *get(&before) = v;
                *get(&wrote) = true;
                std::future::pending::<()>().await;
            } else {
                let mut v = Vec::new();
                v.push(format!("{:?}", rt.list().await));
                let log = rt.open("synced.log").await.expect("open");
                let vol = rt.open("volatile.log").await.expect("open");
                let trunc = rt.open("trunc.log").await.expect("open");
                v.push(format!("{} {:?}", log.len(), log.read_at(0, 5).await));
                v.push(format!("{} {:?}", vol.len(), vol.is_empty()));
                v.push(format!("{} {:?}", trunc.len(), trunc.read_at(0, 4).await));
                *get(&after) = v;
                *get(&read) = true;
            }
        },
    );
    run_until_set(&sim, ms(100), &wrote);
    assert_eq!(
        snapshot(&before),
        vec!["11".to_owned(), r#"Ok(b"hello world")"#.to_owned(), r#"Ok(b"\0\0\0lost")"#.to_owned(), "4".to_owned()]
    );
    sim.apply_fault(Fault::Crash(NodeId(1)));
    sim.apply_fault(Fault::Restart { node: NodeId(1), wipe: false });
    run_until_set(&sim, ms(200), &read);
    assert_eq!(
        snapshot(&after),
        vec![
            r#"Ok(["empty.log", "synced.log", "trunc.log", "volatile.log"])"#.to_owned(),
            r#"5 Ok(b"hello")"#.to_owned(),
            "0 true".to_owned(),
            r#"4 Ok(b"0123")"#.to_owned(),
        ]
    );
    sim.shutdown();
}

/// A restart with `wipe` erases the disk, synced data included.
#[test]
fn a_wiped_restart_loses_everything() {
    let sim = calm(32);
    let done = shared(false);
    let names = shared(None);
    server(&sim, 1, (done.clone(), names.clone()), |rt, (done, names)| async move {
        if rt.handle().incarnation() == 0 {
            let f = rt.open("a").await.expect("open");
            f.append(b("x")).await.expect("append");
            f.sync().await.expect("sync");
            *get(&done) = true;
        } else {
            *get(&names) = Some(rt.list().await);
        }
    });
    run_until_set(&sim, ms(100), &done);
    sim.apply_fault(Fault::Crash(NodeId(1)));
    sim.apply_fault(Fault::Restart { node: NodeId(1), wipe: true });
    run(&sim, ms(200));
    assert_eq!(snapshot(&names), Some(Ok(Vec::new())));
    sim.shutdown();
}

/// Invalid names are refused before anything reaches the disk, and the
/// handles of a removed file fail with `NotFound` (as the real runtime's
/// do). (The errors themselves are conformance checks.)
#[test]
fn invalid_names_never_reach_the_disk_and_removed_handles_fail() {
    let sim = calm(34);
    let out = shared(Vec::<String>::new());
    server(&sim, 1, out.clone(), |rt, out| async move {
        let f = rt.open("data.bin").await.expect("open");
        f.write_at(0, b("abc")).await.expect("write");
        let ops_before = rt.sim().stats().disk_ops;
        for bad in ["", ".", "..", "a/b", "x y", "ü", &"n".repeat(256)] {
            assert!(rt.open(bad).await.is_err());
            assert!(rt.remove(bad).await.is_err());
        }
        assert!(rt.remove("../data.bin").await.is_err());
        let ops_after = rt.sim().stats().disk_ops;
        let mut v = vec![format!("disk ops for invalid names: {}", ops_after - ops_before)];
        rt.remove("data.bin").await.expect("remove");
        v.push(format!("{:?}", f.read_at(0, 1).await));
        v.push(format!("{:?}", f.sync().await));
        v.push(format!("{:?}", f.append(b("x")).await));
        v.push(format!("{}", f.len()));
        *get(&out) = v;
    });
    run(&sim, ms(100));
    assert_eq!(
        snapshot(&out),
        vec![
            "disk ops for invalid names: 0".to_owned(),
            r#"Err(NotFound("data.bin"))"#.to_owned(),
            r#"Err(NotFound("data.bin"))"#.to_owned(),
            r#"Err(NotFound("data.bin"))"#.to_owned(),
            "0".to_owned(),
        ]
    );
    sim.shutdown();
}

// ---------------------------------------------------------------- 6. determinism

/// Two nodes ping each other after random delays drawn from `rt.rng()`,
/// answer pings, log every datagram to disk and sync now and then, over a
/// lossy, duplicating, reordering network with drifting, skewed clocks.
fn ping_workload(seed: u64) -> (u64, SimStats, Vec<String>) {
    let profile = FaultProfile {
        link: LinkConfig {
            loss: 0.05,
            duplicate: 0.05,
            reorder: 0.2,
            reorder_max: Duration::from_millis(1),
            ..LinkConfig::healthy()
        },
        max_drift_ppm: 20_000,
        max_skew: Duration::from_millis(50),
        ..FaultProfile::calm()
    };
    let sim = with_profile(seed, profile);
    let log = shared(Vec::<String>::new());
    for id in [1u64, 2] {
        server(&sim, id, log.clone(), move |rt, log| async move {
            let file = rt.open("pings.log").await.expect("open");
            let (rx, f, l) = (rt.clone(), file.clone(), log.clone());
            drop(rt.spawn(Priority::High, "rx", async move {
                loop {
                    let (from, msg) = rx.recv().await;
                    let at = f.append(msg.clone()).await.expect("append");
                    push(
                        &l,
                        format!(
                            "{} {} wall {} got {:?} from {from} at offset {at}",
                            rx.node_id(),
                            rx.now(),
                            rx.wall_clock().as_nanos(),
                            msg
                        ),
                    );
                    if msg.first() == Some(&b'p') {
                        let mut pong = msg.to_vec();
                        pong[0] = b'P';
                        rx.send(from, Bytes::from(pong));
                    }
                }
            }));
            let mut rng = rt.rng();
            let peer = NodeId(3 - id);
            for i in 0..30u32 {
                rt.sleep(Duration::from_micros(rng.random_range(0..2_000))).await;
                rt.send(peer, Bytes::from(format!("ping {id}.{i}")));
                if i % 5 == 4 {
                    file.sync().await.expect("sync");
                }
            }
        });
    }
    run(&sim, ms(200));
    let out = (sim.trace_hash(), sim.stats(), snapshot(&log));
    sim.shutdown();
    out
}

#[test]
fn same_seed_same_run_different_seed_different_run() {
    let a = ping_workload(42);
    let b = ping_workload(42);
    assert_eq!(a.0, b.0, "trace hash differs between runs of one seed");
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);
    // The workload really ran: pings, pongs, disk traffic.
    assert_eq!(a.1.packets_sent, 60 + a.2.iter().filter(|l| l.contains("got b\"ping")).count() as u64);
    assert!(a.1.packets_delivered >= 50, "{:?}", a.1);
    assert!(a.1.disk_ops >= 60, "{:?}", a.1);

    let mut hashes = std::collections::BTreeSet::new();
    for seed in [42, 43, 44, 45] {
        let (hash, _, log) = ping_workload(seed);
        assert!(hashes.insert(hash), "seed {seed} repeated another seed's trace hash");
        if seed != 42 {
            assert_ne!(log, a.2, "seed {seed} produced seed 42's log");
        }
    }
}

/// `rt.rng()` hands out generators derived from the run's seed: the same
/// seed gives the same draws, another seed other draws, and every call,
/// node and incarnation gets its own stream.
#[test]
fn node_generators_derive_from_the_seed() {
    fn draws(seed: u64) -> Vec<(u64, u64, u64)> {
        let sim = calm(seed);
        let out = shared(Vec::new());
        for id in [1u64, 2] {
            server(&sim, id, out.clone(), move |rt, out| async move {
                for _ in 0..2 {
                    let v: u64 = rt.rng().random();
                    push(&out, (id, rt.handle().incarnation(), v));
                }
            });
        }
        run(&sim, ms(1));
        sim.apply_fault(Fault::Crash(NodeId(1)));
        sim.apply_fault(Fault::Restart { node: NodeId(1), wipe: false });
        run(&sim, ms(2));
        let mut v = snapshot(&out);
        v.sort_unstable();
        sim.shutdown();
        v
    }
    let a = draws(1);
    assert_eq!(a.len(), 6);
    assert_eq!(a, draws(1));
    let values: std::collections::BTreeSet<u64> = a.iter().map(|(_, _, v)| *v).collect();
    assert_eq!(values.len(), 6, "streams repeat: {a:?}");
    let b = draws(2);
    assert_eq!(
        b.iter().map(|(n, i, _)| (*n, *i)).collect::<Vec<_>>(),
        a.iter().map(|(n, i, _)| (*n, *i)).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(&b) {
        assert_ne!(x.2, y.2, "seed 1 and seed 2 drew the same value for {:?}", (x.0, x.1));
    }
}

// ---------------------------------------------------------------- 7. buggify

/// Per-seed counts of how often two fault-point sites fired over 40 calls
/// each, and the run's `buggify_fired` counter.
fn buggify_run(seed: u64, on: bool, liveness_at: Option<Instant>) -> (u32, u32, u64, Vec<Instant>) {
    let sim = with_profile(seed, FaultProfile { buggify: on, ..FaultProfile::calm() });
    let out = shared((0u32, 0u32, Vec::<Instant>::new()));
    server(&sim, 1, out.clone(), |rt, out| async move {
        for _ in 0..40 {
            let a = buggify!(rt, "contract test: point a");
            let b = buggify!(rt, "contract test: point b");
            {
                let mut g = get(&out);
                g.0 += u32::from(a);
                g.1 += u32::from(b);
                if a || b {
                    g.2.push(rt.sim().now());
                }
            }
            rt.sleep(Duration::from_millis(1)).await;
        }
    });
    if let Some(at) = liveness_at {
        sim.schedule_liveness(at);
    }
    run(&sim, ms(100));
    let (a, b, times) = snapshot(&out);
    let fired = sim.stats().buggify_fired;
    sim.shutdown();
    (a, b, fired, times)
}

#[test]
fn buggify_sites_are_enabled_in_some_seeds_only() {
    const SEEDS: u64 = 50;
    let (mut seeds_a, mut seeds_b) = (Vec::new(), Vec::new());
    let (mut fires, mut calls) = (0u32, 0u32);
    for seed in 0..SEEDS {
        let (a, b, fired, _) = buggify_run(seed, true, None);
        assert_eq!(fired, u64::from(a + b), "seed {seed}: stats disagree with what the node saw");
        for (n, seeds) in [(a, &mut seeds_a), (b, &mut seeds_b)] {
            if n > 0 {
                seeds.push(seed);
                fires += n;
                calls += 40;
            }
        }
        // Same seed, same decisions.
        assert_eq!(buggify_run(seed, true, None).0, a, "seed {seed}: not reproducible");
    }
    for (site, seeds) in [("a", &seeds_a), ("b", &seeds_b)] {
        let fraction = seeds.len() as f64 / SEEDS as f64;
        assert!((0.1..=0.45).contains(&fraction), "site {site} fired in {fraction} of seeds: {seeds:?}");
    }
    // The two sites are decided independently.
    assert_ne!(seeds_a, seeds_b);
    // An enabled site fires on about a quarter of its calls.
    let rate = f64::from(fires) / f64::from(calls);
    assert!((0.15..=0.35).contains(&rate), "enabled sites fired on {rate} of calls");
}

#[test]
fn buggify_never_fires_when_off_or_in_the_liveness_phase() {
    for seed in 0..50 {
        assert_eq!(buggify_run(seed, false, None), (0, 0, 0, Vec::new()), "seed {seed}");
    }
    // In seeds where a site is enabled, nothing fires once liveness starts.
    let mut checked = 0;
    for seed in 0..50 {
        let (_, _, fired, times) = buggify_run(seed, true, Some(ms(20)));
        if fired > 0 {
            checked += 1;
            assert!(times.iter().all(|t| *t < ms(20)), "seed {seed}: fired in the liveness phase: {times:?}");
        }
    }
    assert!(checked >= 5, "only {checked} seeds enabled a site");
}

/// A node that sleeps 40 times, asking a fault point each time if `ask`;
/// returns how often it fired, the trace hash and the run's coverage.
fn fault_point_run(seed: u64, ask: bool) -> (u32, u64, kaelix_sim::Coverage) {
    let sim = with_profile(seed, FaultProfile { buggify: true, ..FaultProfile::calm() });
    let out = shared(0u32);
    server(&sim, 1, out.clone(), move |rt, out| async move {
        for i in 0..40u32 {
            if ask && buggify!(rt, "contract test: asked point") {
                *get(&out) += 1;
            }
            kaelix_core::sometimes!(rt, "an even iteration", i % 2 == 0);
            rt.sleep(Duration::from_millis(1)).await;
        }
    });
    run(&sim, ms(100));
    let fired = *get(&out);
    let (hash, coverage) = (sim.trace_hash(), sim.coverage());
    sim.shutdown();
    (fired, hash, coverage)
}

/// Coverage counts every evaluation, and a fault point that does not fire
/// leaves the run exactly as if it were not there (its decisions come from
/// generators of their own).
#[test]
fn coverage_counts_points_and_a_silent_fault_point_changes_nothing() {
    let (mut silent, mut fired_somewhere) = (0, 0);
    for seed in 0..60 {
        let (fired, hash, coverage) = fault_point_run(seed, true);
        let (_, hash_without, coverage_without) = fault_point_run(seed, false);
        let points: Vec<_> = coverage.points.values().copied().collect();
        // The fault point (reached 40 times) and the assertion (held 20).
        assert!(points.iter().any(|c| c.reached == 40 && c.fired == u64::from(fired)), "seed {seed}: {coverage:?}");
        assert!(points.iter().any(|c| c.reached == 40 && c.fired == 20), "seed {seed}: {coverage:?}");
        assert_eq!(coverage_without.points.len(), 1, "seed {seed}");
        if fired == 0 {
            silent += 1;
            assert_eq!(hash, hash_without, "seed {seed}: a fault point that never fired changed the run");
        } else {
            fired_somewhere += 1;
            assert_ne!(hash, hash_without, "seed {seed}: firing is in the trace");
        }
    }
    assert!(silent > 10 && fired_somewhere > 3, "{silent} silent seeds, {fired_somewhere} firing");
}

// ---------------------------------------------------------------- broker

/// The embedded broker's conformance checks, under the simulator (several
/// seeds: each explores other interleavings of publishers and consumers).
#[test]
fn embedded_broker_conformance() {
    for seed in 0..20 {
        let sim = calm(seed);
        let result: Shared<Option<Result<(), String>>> = shared(None);
        server(&sim, 1, result.clone(), |rt, result| async move {
            let r = kaelix_broker::testing::conformance::run(rt).await;
            *get(&result) = Some(r);
        });
        let done = sim
            .run_until_done(Instant::ZERO + Duration::from_secs(60), |_| get(&result).is_some(), |_| Ok::<(), ()>(()))
            .expect("no check fails");
        assert!(done, "seed {seed}: the conformance run did not finish");
        assert_eq!(snapshot(&result), Some(Ok(())), "seed {seed}");
    }
}

/// Two services of one node on channels of their own (a cluster member's
/// Raft groups and SWIM): each receives exactly what was sent on its
/// channel, whichever receiver took it from the node's inbox, and the
/// sender is kept.
#[test]
fn channels_share_the_inbox_but_not_the_datagrams() {
    let sim = calm(12);
    let inboxes: [Inbox; 2] = [shared(Vec::new()), shared(Vec::new())];
    server(&sim, 1, inboxes.clone(), |rt, inboxes| async move {
        for (c, inbox) in inboxes.into_iter().enumerate() {
            let rx = rt.channel(c as u8);
            drop(rt.spawn(Priority::High, "rx", async move {
                loop {
                    let (from, msg) = rx.recv().await;
                    push(&inbox, (from, msg, rx.sim().now()));
                }
            }));
        }
    });
    server(&sim, 2, (), |rt, ()| async move {
        let (raft, swim) = (rt.channel(0), rt.channel(1));
        for i in 0..20u8 {
            // Interleaved, so either receiver takes the other's datagrams.
            if i % 3 == 0 {
                swim.send(NodeId(1), Bytes::from(vec![1, i]))
            } else {
                raft.send(NodeId(1), Bytes::from(vec![0, i]))
            }
            rt.sleep(Duration::from_micros(50)).await;
        }
        // Untagged datagrams (a plain runtime's) reach no channel.
        rt.send(NodeId(1), b("plain"));
    });
    run(&sim, ms(50));
    for (c, inbox) in inboxes.iter().enumerate() {
        let got: Vec<(NodeId, Vec<u8>)> = snapshot(inbox).into_iter().map(|(f, m, _)| (f, m.to_vec())).collect();
        let sent: Vec<(NodeId, Vec<u8>)> =
            (0..20u8).filter(|i| (i % 3 == 0) == (c == 1)).map(|i| (NodeId(2), vec![c as u8, i])).collect();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, sent, "channel {c}");
    }
    sim.shutdown();
}

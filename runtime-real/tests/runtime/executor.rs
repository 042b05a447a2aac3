//! The executor: spawning, priorities, starvation bound, the panic counter,
//! health, timer precision and shutdown. (Abort, panics through handles and
//! many sleepers are conformance checks: `conformance.rs`.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use kaelix_core::runtime::{JoinError, Priority};
use kaelix_runtime_real::executor::metrics::HealthStatus;
use kaelix_runtime_real::topology::Topology;
use kaelix_runtime_real::{Executor, ExecutorConfig};

fn executor(workers: usize) -> Executor {
    crate::support::executor("test", workers)
}

#[test]
fn spawned_tasks_complete_and_return_values() {
    let ex = executor(2);
    let handles: Vec<_> = (0..100u64).map(|i| ex.spawn(Priority::Normal, "square", async move { i * i })).collect();
    let sum = ex.block_on(async move {
        let mut sum = 0;
        for h in handles {
            sum += h.await.expect("finished");
        }
        sum
    });
    assert_eq!(sum, (0..100u64).map(|i| i * i).sum());
    let polls: u64 = ex.worker_metrics().iter().map(|m| m.polls).sum();
    assert!(polls >= 101, "every task was polled: {polls}");
}

/// Holds the executor's only worker until released, so that tasks queue up.
fn gate(ex: &Executor) -> mpsc::Sender<()> {
    let (release, wait) = mpsc::channel::<()>();
    let (entered_tx, entered) = mpsc::channel::<()>();
    drop(ex.spawn(Priority::Critical, "gate", async move {
        entered_tx.send(()).unwrap();
        wait.recv().unwrap();
    }));
    entered.recv().unwrap();
    release
}

#[test]
fn higher_tiers_run_first() {
    // Strict priority only: no starvation-bound picks in 40 tasks.
    let ex = Executor::new(ExecutorConfig {
        workers_per_node: Some(1),
        pin_workers: false,
        topology: Some(Topology::single_node(0..1)),
        starvation_bound: u32::MAX,
        name: "strict".into(),
        ..ExecutorConfig::default()
    })
    .unwrap();
    let release = gate(&ex);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..10 {
        for prio in [Priority::Background, Priority::Normal, Priority::High, Priority::Critical] {
            let order = order.clone();
            handles.push(ex.spawn(prio, "record", async move { order.lock().unwrap().push((prio, i)) }));
        }
    }
    release.send(()).unwrap();
    ex.block_on(async move {
        for h in handles {
            h.await.unwrap();
        }
    });
    let order = order.lock().unwrap();
    let tiers: Vec<Priority> = order.iter().map(|(p, _)| *p).collect();
    let mut sorted = tiers.clone();
    sorted.sort();
    assert_eq!(tiers, sorted, "all Critical, then High, Normal, Background");
}

#[test]
fn a_lower_tier_is_not_starved_by_a_flood() {
    let ex = Arc::new(executor(1));
    let release = gate(&ex);
    let critical_polls = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // A Critical flood: each task spawns its successor until told to stop.
    fn flood(ex: Arc<Executor>, polls: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
        let ex2 = ex.clone();
        drop(ex.spawn(Priority::Critical, "flood", async move {
            polls.fetch_add(1, Ordering::Relaxed);
            if !stop.load(Ordering::Relaxed) {
                flood(ex2, polls, stop);
            }
        }));
    }
    for _ in 0..8 {
        flood(ex.clone(), critical_polls.clone(), stop.clone());
    }
    let seen_at = Arc::new(AtomicUsize::new(usize::MAX));
    let (polls, seen) = (critical_polls.clone(), seen_at.clone());
    let background = ex.spawn(Priority::Background, "starved?", async move {
        seen.store(polls.load(Ordering::Relaxed), Ordering::Relaxed);
    });
    release.send(()).unwrap();
    let bound = ExecutorConfig::default().starvation_bound as usize;
    ex.block_on(async move { background.await.unwrap() });
    stop.store(true, Ordering::Relaxed);
    let at = seen_at.load(Ordering::Relaxed);
    assert!(at <= 3 * bound + 8, "Background ran after {at} Critical polls; bound {}", 3 * bound);
    ex.shutdown(Duration::from_secs(1));
}

/// A panic is counted in the worker's metrics. (That abort yields
/// `Cancelled` and a panic `Panicked` are conformance checks.)
#[test]
fn a_panic_is_counted_in_the_metrics() {
    let ex = executor(2);
    let panicky = ex.spawn(Priority::Normal, "panicky", async { panic!("boom") });
    let r = ex.block_on(panicky);
    assert_eq!(r, Err(JoinError::Panicked("boom".into())));
    // The worker counts the panic just after the handle learns of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ex.worker_metrics().iter().map(|m| m.panicked).sum::<u64>() != 1 {
        assert!(std::time::Instant::now() < deadline, "the panic was never counted");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn health_degrades_with_failures() {
    let ex = executor(1);
    assert_eq!(ex.health(), HealthStatus::Unknown, "nothing ran yet");
    let run = |fail: bool| {
        ex.spawn(Priority::Normal, "op", async move {
            assert!(!fail, "operation failed");
        })
    };
    let oks: Vec<_> = (0..90).map(|_| run(false)).collect();
    ex.block_on(async move {
        for h in oks {
            h.await.unwrap();
        }
    });
    assert_eq!(ex.health(), HealthStatus::Healthy);
    let fails: Vec<_> = (0..20).map(|_| run(true)).collect();
    ex.block_on(async move {
        for h in fails {
            assert!(h.await.is_err());
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ex.health() != HealthStatus::Degraded {
        assert!(std::time::Instant::now() < deadline, "20 of 111 operations failed, yet {:?}", ex.health());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A poll stamped with the coarse clock is still seen past the stall
/// threshold, and the worker is healthy again once the poll returns.
#[test]
fn a_poll_past_the_stall_threshold_makes_the_worker_unhealthy_until_it_returns() {
    let ex = Executor::new(ExecutorConfig {
        workers_per_node: Some(1),
        pin_workers: false,
        topology: Some(Topology::single_node(0..1)),
        name: "stall".into(),
        stall_threshold: kaelix_core::time::Duration::from_millis(20),
        ..ExecutorConfig::default()
    })
    .expect("executor starts");
    ex.block_on(async {}); // one completion: the health is known
    assert_eq!(ex.health(), HealthStatus::Healthy);
    let (release, stalled) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let task = ex.spawn(Priority::Normal, "stuck", {
        let (release, stalled) = (release.clone(), stalled.clone());
        async move {
            stalled.store(true, Ordering::Release);
            while !release.load(Ordering::Acquire) {
                std::hint::spin_loop(); // a poll that never yields
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ex.health() != HealthStatus::Unhealthy {
        assert!(std::time::Instant::now() < deadline, "a poll stuck for 10 s, yet {:?}", ex.health());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(stalled.load(Ordering::Acquire), "unhealthy only once the stuck poll runs");
    release.store(true, Ordering::Release);
    ex.block_on(task).expect("the stuck task finished");
    assert_eq!(ex.health(), HealthStatus::Healthy, "no poll running, no failure");
}

#[test]
fn timers_fire_at_their_deadline_not_before() {
    let ex = executor(2);
    let h = ex.handle();
    let start = h.now();
    let slept = ex.block_on(async move {
        let mut waits = Vec::new();
        for ms in [1u64, 5, 20] {
            let before = h.now();
            h.sleep_until(before + Duration::from_millis(ms)).await;
            waits.push((ms, h.now() - before));
        }
        waits
    });
    for (ms, took) in slept {
        assert!(took >= Duration::from_millis(ms), "slept {took:?} for {ms} ms");
        assert!(took < Duration::from_millis(ms + 200), "slept {took:?} for {ms} ms");
    }
    assert!(ex.handle().now() > start);
}

#[test]
fn shutdown_lets_tasks_finish_then_cancels_and_reports_the_rest() {
    let ex = executor(2);
    let h = ex.handle();
    let finished = Arc::new(AtomicBool::new(false));
    let f2 = finished.clone();
    let h2 = h.clone();
    let quick = ex.spawn(Priority::Normal, "quick", async move {
        h2.sleep_until(h2.now() + Duration::from_millis(20)).await;
        f2.store(true, Ordering::Relaxed);
    });
    let stuck = ex.spawn(Priority::Normal, "stuck", std::future::pending::<()>());
    let report = ex.shutdown(Duration::from_millis(300));
    assert!(finished.load(Ordering::Relaxed), "the quick task finished within the grace period");
    assert_eq!(report.cancelled, vec!["stuck"]);
    assert_eq!(report.finished_in_grace, 1);
    assert!(quick.is_finished() && stuck.is_finished());
    let late = ex.spawn(Priority::Normal, "late", async {});
    assert!(late.is_finished(), "spawns after shutdown are cancelled at once");
}

#[test]
fn wakes_from_foreign_threads_reach_the_task() {
    let ex = executor(2);
    let (tx, rx) = futures_channel::oneshot::channel::<u32>();
    let task = ex.spawn(Priority::High, "waiter", async move { rx.await.unwrap() });
    std::thread::sleep(Duration::from_millis(5));
    tx.send(7).unwrap();
    assert_eq!(ex.block_on(task).unwrap(), 7);
}

#[test]
fn layout_follows_the_topology() {
    let topo = Topology {
        nodes: vec![
            kaelix_runtime_real::topology::NumaNode { id: 0, cpus: vec![0] },
            kaelix_runtime_real::topology::NumaNode { id: 1, cpus: vec![1] },
        ],
    };
    let ex = Executor::new(ExecutorConfig {
        topology: Some(topo),
        workers_per_node: Some(2),
        pin_workers: true,
        name: "layout".into(),
        ..ExecutorConfig::default()
    })
    .unwrap();
    assert_eq!(ex.layout(), vec![(0, Some(0)), (0, Some(0)), (1, Some(1)), (1, Some(1))]);
    // Work spawned from outside lands round-robin on both pools and completes.
    let hs: Vec<_> = (0..64).map(|i| ex.spawn(Priority::Normal, "n", async move { i })).collect();
    let total: i32 = ex.block_on(async move {
        let mut t = 0;
        for h in hs {
            t += h.await.unwrap();
        }
        t
    });
    assert_eq!(total, (0..64).sum());
}

/// On one gated worker with `priority_levels` tiers and no fairness picks,
/// spawns 40 tasks cycling Background, Normal, High, Critical, releases
/// the worker, and returns the (priority, spawn index) of each in the order
/// they ran.
fn run_order_with_levels(priority_levels: usize) -> Vec<(Priority, usize)> {
    let ex = Executor::new(ExecutorConfig {
        workers_per_node: Some(1),
        pin_workers: false,
        topology: Some(Topology::single_node(0..1)),
        starvation_bound: u32::MAX,
        priority_levels,
        name: "levels".into(),
        ..ExecutorConfig::default()
    })
    .unwrap();
    let release = gate(&ex);
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..40 {
        let prio = Priority::ALL[3 - i % 4];
        let order = order.clone();
        handles.push(ex.spawn(prio, "record", async move { order.lock().unwrap().push((prio, i)) }));
    }
    release.send(()).unwrap();
    ex.block_on(async move {
        for h in handles {
            h.await.unwrap();
        }
    });
    let order = order.lock().unwrap().clone();
    assert_eq!(order.len(), 40);
    order
}

#[test]
fn one_priority_level_runs_everything_in_spawn_order() {
    // In one tier the oldest task runs first whatever its priority (the
    // order after it is near spawn order, but the injector's fairness
    // picks may move a later one forward), where four tiers would run a
    // Critical one first.
    let order = run_order_with_levels(1);
    assert_eq!(order[0], (Priority::Background, 0), "first come, first served: {order:?}");
}

#[test]
fn two_priority_levels_keep_critical_apart_and_fold_the_rest() {
    let order = run_order_with_levels(2);
    let (critical, rest) = order.split_at(10);
    assert!(critical.iter().all(|(p, _)| *p == Priority::Critical), "Critical first: {order:?}");
    assert_eq!(rest[0], (Priority::Background, 0), "Background, Normal and High share one tier: {order:?}");
}

#[test]
fn a_spawn_past_the_live_task_bound_is_refused_and_counted() {
    let ex = Executor::new(ExecutorConfig {
        workers_per_node: Some(1),
        pin_workers: false,
        topology: Some(Topology::single_node(0..1)),
        max_live_tasks: Some(3),
        name: "bounded".into(),
        ..ExecutorConfig::default()
    })
    .unwrap();
    // The gate is one live task; two more fill the bound.
    let release = gate(&ex);
    let ran = Arc::new(AtomicUsize::new(0));
    let spawn = |ran: &Arc<AtomicUsize>| {
        let ran = ran.clone();
        ex.spawn(Priority::Normal, "counted", async move {
            ran.fetch_add(1, Ordering::SeqCst);
        })
    };
    let admitted: Vec<_> = (0..2).map(|_| spawn(&ran)).collect();
    assert_eq!(ex.live_tasks(), 3);
    let refused = spawn(&ran);
    assert_eq!(ex.spawns_refused(), 1);
    // (Not through block_on: it is a task too, and would be refused.)
    use futures_util::FutureExt;
    assert_eq!(refused.now_or_never(), Some(Err(JoinError::Cancelled)), "the refused task's handle says so at once");
    let refused_again = ex.try_spawn(Priority::Normal, "counted", async {});
    assert!(refused_again.is_err(), "try_spawn says so too");
    assert_eq!(ex.spawns_refused(), 2);
    assert_eq!(ex.live_tasks(), 3, "a refusal takes no place");
    release.send(()).unwrap();
    drop(admitted);
    // Places come back as tasks finish (the gate and the two admitted):
    // spawning works again.
    let start = std::time::Instant::now();
    while ex.live_tasks() > 0 {
        assert!(start.elapsed() < Duration::from_secs(5), "live tasks never drained");
        std::thread::sleep(Duration::from_millis(1));
    }
    ex.block_on(spawn(&ran)).unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 3, "the two admitted and the later one ran, the refused one never");
    assert_eq!(ex.spawns_refused(), 2);
}

#[test]
fn without_numa_awareness_one_pool_spans_every_node() {
    let topo = Topology {
        nodes: vec![
            kaelix_runtime_real::topology::NumaNode { id: 0, cpus: vec![0, 1] },
            kaelix_runtime_real::topology::NumaNode { id: 1, cpus: vec![2, 3] },
        ],
    };
    let ex = Executor::new(ExecutorConfig {
        topology: Some(topo),
        pin_workers: true,
        numa_aware: false,
        name: "flat".into(),
        ..ExecutorConfig::default()
    })
    .unwrap();
    assert_eq!(ex.layout(), vec![(0, Some(0)), (0, Some(1)), (0, Some(2)), (0, Some(3))], "one pool of four");
}

#[test]
fn runtime_config_maps_onto_the_executor() {
    use kaelix_runtime_real::RuntimeConfig;
    let runtime = RuntimeConfig {
        worker_threads: Some(3),
        task_queue_depth: 1000,
        target_latency_us: 25,
        numa_aware: false,
        priority_levels: 2,
    };
    let config = ExecutorConfig::from(&runtime);
    assert_eq!(config.max_workers, Some(3));
    assert_eq!(config.max_live_tasks, Some(1000));
    assert_eq!(config.idle_spin, Duration::from_micros(25));
    assert!(!config.numa_aware);
    assert_eq!(config.priority_levels, 2);
    let defaults = ExecutorConfig::from(&RuntimeConfig::default());
    assert_eq!(defaults.max_live_tasks, Some(RuntimeConfig::DEFAULT_TASK_QUEUE_DEPTH));
    assert_eq!(defaults.priority_levels, 4);
    assert!(defaults.numa_aware);
}

/// A future that yields once (wakes itself and returns Pending).
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[test]
fn outside_wakes_are_served_while_workers_feed_themselves() {
    let ex = executor(1);
    let stop = Arc::new(AtomicBool::new(false));
    // Same-tier load that keeps re-waking itself onto the worker's deque.
    for _ in 0..4 {
        let stop = stop.clone();
        drop(ex.spawn(Priority::Normal, "spinner", async move {
            while !stop.load(Ordering::Relaxed) {
                YieldNow(false).await;
            }
        }));
    }
    let (tx, rx) = futures_channel::oneshot::channel::<std::time::Instant>();
    let waiter = ex.spawn(Priority::Normal, "waiter", async move { rx.await.unwrap().elapsed() });
    std::thread::sleep(Duration::from_millis(20));
    tx.send(std::time::Instant::now()).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let handle = ex.handle();
    std::thread::spawn(move || done_tx.send(handle.block_on(waiter)).unwrap());
    let waited = done_rx.recv_timeout(Duration::from_secs(5)).expect("the outside wake was served").unwrap();
    stop.store(true, Ordering::Relaxed);
    assert!(waited < Duration::from_millis(500), "served after {waited:?}");
}

/// The coarse clock is the precise clock's timeline at a lower resolution:
/// it never goes backwards, never runs ahead of `now`, and lags it by less
/// than a kernel tick (generously bounded: the machine may be loaded).
#[test]
fn the_coarse_clock_follows_the_precise_one() {
    let ex = executor(1);
    let handle = ex.handle();
    let mut last = handle.now_coarse();
    for _ in 0..2_000 {
        let coarse = handle.now_coarse();
        let precise = handle.now();
        assert!(coarse >= last, "coarse went back: {coarse:?} after {last:?}");
        assert!(coarse <= precise, "coarse {coarse:?} ahead of now {precise:?}");
        let lag = precise.saturating_duration_since(coarse);
        assert!(lag < kaelix_core::time::Duration::from_millis(50), "coarse lags now by {lag:?}");
        last = coarse;
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Twenty timer wakes, 1 ms apart, of one task on a one-worker executor
/// with `idle_spin`; returns the worker's (spin hits, parks) over them.
fn timer_wakes_with_spin(idle_spin: Duration) -> (u64, u64) {
    let ex = Executor::new(ExecutorConfig {
        workers_per_node: Some(1),
        pin_workers: false,
        topology: Some(Topology::single_node(0..1)),
        idle_spin,
        name: "spin".into(),
        ..ExecutorConfig::default()
    })
    .unwrap();
    let h = ex.handle();
    let ticker = ex.spawn(Priority::Normal, "ticker", async move {
        for _ in 0..20 {
            h.sleep_until(h.now() + Duration::from_millis(1)).await;
        }
    });
    ex.block_on(ticker).unwrap();
    let m = ex.worker_metrics()[0];
    ex.shutdown(Duration::from_secs(1));
    (m.spin_hits, m.parks)
}

#[test]
fn an_idle_worker_spins_for_a_wake_before_it_parks() {
    // A window far longer than the 1 ms between wakes: each timer wake is
    // found by the spinning worker (a descheduled thread may miss a few).
    let (hits, _) = timer_wakes_with_spin(Duration::from_millis(200));
    assert!(hits >= 10, "{hits} of 20 wakes found while spinning");
    // No window: every wait parks, nothing is found spinning.
    let (hits, parks) = timer_wakes_with_spin(Duration::ZERO);
    assert_eq!(hits, 0);
    assert!(parks >= 20, "{parks} parks for 20 waits");
    // A window far shorter than the wait: the worker spins, then parks.
    let (_, parks) = timer_wakes_with_spin(Duration::from_micros(20));
    assert!(parks >= 10, "{parks} parks for 20 waits of 1 ms with a 20 µs window");
}

#[test]
fn finished_aborted_and_shut_down_tasks_release_what_their_futures_hold() {
    // A task's waker lives beside its future and points back at the task:
    // each way a task ends must drop the future (breaking that cycle), or
    // whatever the future holds leaks.
    use kaelix_core::runtime::TaskHandle;
    let ex = executor(2);
    let held = Arc::new(());
    let finished = {
        let held = held.clone();
        ex.spawn(Priority::Normal, "finishes", async move { drop(held) })
    };
    let aborted = {
        let held = held.clone();
        ex.spawn(Priority::Normal, "pending", async move {
            let _held = held;
            std::future::pending::<()>().await
        })
    };
    let stuck = {
        let held = held.clone();
        ex.spawn(Priority::Normal, "stuck", async move {
            let _held = held;
            std::future::pending::<()>().await
        })
    };
    ex.block_on(finished).unwrap();
    aborted.abort();
    assert!(matches!(ex.block_on(aborted), Err(JoinError::Cancelled)));
    assert_eq!(Arc::strong_count(&held), 2, "only the stuck task still holds it");
    let report = ex.shutdown(Duration::from_millis(50));
    assert_eq!(report.cancelled, vec!["stuck"]);
    assert!(stuck.is_finished());
    assert_eq!(Arc::strong_count(&held), 1, "shutdown dropped the stuck task's future");
}

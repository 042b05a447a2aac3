//! Simulator benchmarks.
//!
//! * `sim/ping-pong`: raw engine speed — two nodes bounce a datagram and
//!   sleep between rounds; throughput is simulator steps (events + task
//!   polls) per second.
//! * `sim/broadcast-seed`: one seed of the 5-node broadcast scenario under
//!   its swarm faults; throughput is simulated milliseconds per second, so
//!   the simulated-to-real ratio is that figure / 1000.
//!
//! After criterion, a table prints the simulated-to-real ratio over 50 seeds
//! (median and minimum per seed).

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use kaelix_core::runtime::{Clock, Network};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};
use kaelix_runtime_sim::SimRuntime;
use kaelix_scenarios::find;
use kaelix_sim::{NodeKind, NodeSpec, Sim, SimConfig};

/// The allocator the `kaelix` binary uses, so these figures match its.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: u64 = 2_000;

fn ping_pong(seed: u64) -> u64 {
    let sim = Sim::new(SimConfig::new(seed));
    let done = Arc::new(Mutex::new(false));
    for (me, peer) in [(1u64, 2u64), (2, 1)] {
        let done = done.clone();
        let init = SimRuntime::init(move |rt| {
            let done = done.clone();
            async move {
                if me == 1 {
                    rt.send(NodeId(peer), Bytes::from_static(b"ping"));
                }
                for _ in 0..ROUNDS {
                    let (from, msg) = rt.recv().await;
                    rt.sleep(Duration::from_micros(10)).await;
                    rt.send(from, msg);
                }
                *done.lock().unwrap() = true;
            }
        });
        sim.add_node(NodeId(me), NodeSpec { kind: NodeKind::Server, name: format!("n{me}"), faulty_disk: false, init });
    }
    sim.run_until(Instant::from_nanos(u64::MAX / 2), |_| Ok::<(), ()>(())).unwrap();
    assert!(*done.lock().unwrap(), "ping-pong did not finish");
    let stats = sim.stats();
    sim.shutdown();
    stats.events + stats.polls
}

fn benches(c: &mut Criterion) {
    let steps = ping_pong(0);
    let mut g = c.benchmark_group("sim");
    g.throughput(Throughput::Elements(steps));
    g.bench_function("ping-pong", |b| b.iter(|| black_box(ping_pong(black_box(1)))));

    let scenario = find("broadcast").expect("registered");
    let sim_ms = scenario.run(3, None).sim_time.as_millis() as u64;
    g.throughput(Throughput::Elements(sim_ms));
    g.bench_function("broadcast-seed", |b| b.iter(|| black_box(scenario.run(black_box(3), None))));
    g.finish();
}

#[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "a benchmark measures real time")]
fn ratio_table() {
    let scenario = find("broadcast").expect("registered");
    let mut ratios = Vec::new();
    let mut steps_per_sec = Vec::new();
    for seed in 0..50 {
        let t0 = std::time::Instant::now();
        let report = scenario.run(seed, None);
        let wall = t0.elapsed().as_secs_f64();
        ratios.push(report.sim_time.as_secs_f64() / wall);
        steps_per_sec.push((report.stats.events + report.stats.polls) as f64 / wall);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    println!();
    println!("broadcast scenario, 50 seeds (5 servers, 3 clients, swarm faults)");
    println!("{:<28} {:>12} {:>12}", "metric", "median", "min");
    println!("{:<28} {:>11.0}x {:>11.0}x", "simulated / real time", median(&mut ratios), min);
    println!("{:<28} {:>12.0} {:>12}", "steps (events+polls) / s", median(&mut steps_per_sec), "");
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    ratio_table();
}

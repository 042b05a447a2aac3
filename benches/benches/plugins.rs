//! What a plugin costs on the publish path: a native processor called
//! through a chain (the whole isolation wrapper: chain lookup, the plugin's
//! lock, `catch_unwind`, permission check, counters) against the bare
//! dynamic call — without a time budget, with one on a manual clock, and
//! with one on the real runtime's clock (`kaelix serve`'s default); a WebAssembly processor's call (fuel reset, payload copy
//! into the guest, the guest's `alloc` and `process`); and the resident
//! memory each sandboxed instance adds (printed before the timings).
//!
//! `cargo bench -p kaelix-benches --bench plugins`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use kaelix_broker::message::Message;
use kaelix_broker::testing::ManualClock;
use kaelix_broker::topic::Pattern;
use kaelix_core::NodeId;
use kaelix_core::runtime::Clock;
use kaelix_plugins::wasm::{PASS_THROUGH_WAT, WasmEngine, WasmLimits, WasmProcessor};
use kaelix_plugins::{
    Action, Chain, Chains, IsolationPolicy, Permissions, Plugin, PluginContext, PluginError, PluginRegistry,
    StreamProcessor,
};
use kaelix_runtime_real::{Executor, ExecutorConfig, NodeConfig, RealRuntime};

/// The cheapest useful plugin: looks at the payload, passes.
struct NonEmpty;

impl Plugin for NonEmpty {
    fn name(&self) -> &str {
        "non-empty"
    }
    fn version(&self) -> semver::Version {
        semver::Version::new(1, 0, 0)
    }
}

impl StreamProcessor for NonEmpty {
    fn process(&mut self, m: &Message) -> Result<Action, PluginError> {
        Ok(if m.payload().is_empty() { Action::Drop } else { Action::Pass })
    }
}

fn message() -> Message {
    Message::builder().topic("orders.eu").payload(vec![7u8; 100]).build().expect("valid")
}

#[allow(
    clippy::disallowed_methods,
    reason = "the real runtime's clock comes with a node, which needs a scratch data directory"
)]
fn native(c: &mut Criterion) {
    let m = message();
    let mut group = c.benchmark_group("plugins/native_call");
    let mut bare: Box<dyn StreamProcessor> = Box::new(NonEmpty);
    group.bench_function("bare_dyn_process", |b| b.iter(|| black_box(bare.process(black_box(&m)).is_ok())));
    // What the chain's caller pays around any call: the message handed over
    // (a clone of reference counts) and dropped after. The chain's own
    // overhead is the difference between a chain run and this.
    group.bench_function("bare_dyn_process_owned_message", |b| {
        b.iter(|| {
            let owned = black_box(m.clone());
            black_box(bare.process(&owned).is_ok())
        })
    });
    // The time budget reads the broker's clock twice per call: on a manual
    // clock that is an atomic load, on the real runtime's (what `kaelix
    // serve` uses, with the default 100 ms budget) a monotonic clock read.
    let budget = Some(std::time::Duration::from_millis(100));
    chain_bench(&mut group, "chain_no_budget", ManualClock::default(), None, &m);
    chain_bench(&mut group, "chain_with_time_budget", ManualClock::default(), budget, &m);
    let dir = std::env::temp_dir().join(format!("kaelix-bench-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let exec = Executor::new(ExecutorConfig::default()).expect("executor");
    let rt = RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(1), &dir)).expect("runtime");
    chain_bench(&mut group, "chain_with_time_budget_real_clock", rt, budget, &m);
    let _ = std::fs::remove_dir_all(&dir);
    group.finish();
}

/// One chain of [`NonEmpty`] on `orders.*`, timed on `clock`.
fn chain_bench<C: Clock>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    clock: C,
    budget: Option<std::time::Duration>,
    m: &Message,
) {
    let mut registry = PluginRegistry::new();
    let slot = registry.register(Box::new(NonEmpty), Permissions::all(), BTreeMap::new()).expect("registers");
    registry.start().expect("starts");
    let policy = IsolationPolicy { time_budget: budget, ..IsolationPolicy::default() };
    let chains = Chains::new(clock, policy);
    chains.set(vec![Chain { pattern: Pattern::new("orders.*").expect("valid"), stages: vec![slot] }]).expect("set");
    // `run` takes the message by value (it is what gets published):
    // the clone is a reference-count bump, part of the cost.
    group.bench_function(name, |b| b.iter(|| black_box(chains.run(black_box(m.clone())).publish.len())));
}

fn wasm_processor(engine: &WasmEngine) -> WasmProcessor {
    let module = engine.compile(PASS_THROUGH_WAT.as_bytes()).expect("compiles");
    let mut p = WasmProcessor::new(
        "pass",
        semver::Version::new(1, 0, 0),
        module,
        WasmLimits { fuel_per_message: 10_000, max_memory_bytes: 64 << 10 },
        Permissions::all(),
    );
    p.initialize(&PluginContext::default()).expect("instantiates");
    p
}

/// Resident set size of this process, from /proc/self/statm.
#[allow(clippy::disallowed_methods, reason = "the benchmark measures this process's memory")]
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("procfs");
    let pages: u64 = statm.split_whitespace().nth(1).expect("resident field").parse().expect("a number");
    pages * 4096
}

fn wasm(c: &mut Criterion) {
    let engine = WasmEngine::new().expect("engine");
    // Memory per instance: many live instances of one compiled module, each
    // having processed a message (its pages touched), against RSS.
    const INSTANCES: usize = 500;
    let before = rss_bytes();
    let mut live: Vec<WasmProcessor> = (0..INSTANCES).map(|_| wasm_processor(&engine)).collect();
    let m = message();
    for p in &mut live {
        p.process(&m).expect("passes");
    }
    let after = rss_bytes();
    let linear = live[0].memory_bytes();
    eprintln!(
        "plugins/wasm_instance_memory: {} bytes resident per instance over {INSTANCES} instances ({} KiB; of which linear memory {} KiB)",
        (after.saturating_sub(before)) / INSTANCES as u64,
        (after.saturating_sub(before)) / INSTANCES as u64 / 1024,
        linear / 1024
    );
    drop(live);

    let mut group = c.benchmark_group("plugins/wasm_call");
    let mut p = wasm_processor(&engine);
    group.bench_function("pass_through_100B", |b| b.iter(|| black_box(p.process(black_box(&m)).is_ok())));
    let mut registry = PluginRegistry::new();
    let slot =
        registry.register(Box::new(wasm_processor(&engine)), Permissions::all(), BTreeMap::new()).expect("registers");
    registry.start().expect("starts");
    let chains =
        Chains::new(ManualClock::default(), IsolationPolicy { time_budget: None, ..IsolationPolicy::default() });
    chains.set(vec![Chain { pattern: Pattern::new("orders.*").expect("valid"), stages: vec![slot] }]).expect("set");
    let chains = Arc::new(chains);
    group.bench_function("chain_pass_through_100B", |b| {
        b.iter(|| black_box(chains.run(black_box(m.clone())).publish.len()))
    });
    group.finish();
}

criterion_group!(benches, native, wasm);
criterion_main!(benches);

//! Scenario `broker-plugins`: processor chains in the broker's publish path
//! under faults, with failing, panicking and fuel-exhausting plugins that
//! are hot-swapped while messages flow.
//!
//! * **Node**: one node hosting a memory broker; its clock may be skewed,
//!   drift or step and the node may pause (nothing crashes: the broker
//!   keeps its logs in memory).
//! * **Chains** (`kaelix_plugins::Chains` as the broker's publish hook,
//!   quarantine after 3 consecutive failures):
//!   `orders.*` → `validate` → `enrich` (native), `sensors.*` → `filter`
//!   (WebAssembly, fuel-limited); `plain.*` has no chain. Each plugin is
//!   allowed only its own header and, for `enrich` and `filter`, publishing
//!   to `audit.>`.
//! * **Workload** (rates drawn per seed): 3–6 publishers, each publishing a
//!   numbered sequence; a message's first payload byte tells the plugins
//!   what to do: pass (`x`), drop (`d`), reject (`r`), fail with an error
//!   (`e`, a trap in the guest), panic (`b`), run forever (`l`: out of
//!   fuel in the guest, a pass for native plugins), or route a copy to
//!   `audit.*` (`p`). A hot-swapper replaces a random plugin with its next
//!   generation (for `filter`, the other of two modules) at random times,
//!   which also ends a quarantine. Subscribers on `orders.*`, `sensors.*`,
//!   `plain.*`, `audit.>` and `_dlq.>`. Each publisher's messages and the
//!   hot-swapper's swaps are recorded lists drawn before they start
//!   (`crate::workload`), which `sim shrink` cuts; sequence numbers are
//!   given as a publisher publishes.
//! * **Checks**, from what publishers and subscribers saw (not the broker's
//!   counters): **conservation** — every publish is stored and delivered
//!   exactly once at the offset it was given, having passed every stage of
//!   its chain (each stage's header present), or dropped by the plugin
//!   whose op it was, or dead-lettered exactly once naming the plugin and a
//!   reason that fits the op (or the plugin's quarantine); routed copies
//!   arrive once; nothing arrives that was not sent so. **Order** — each
//!   subscriber sees each publisher's messages of a partition in
//!   publishing order, through the chain and through hot swaps.
//!
//! Planted bug `broker-plugins-quarantine-bypass`: a quarantined stage is
//! passed around instead of dead-lettering — messages reach their topic
//! without the stage's header (and ops it would refuse get through).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_broker::intercept::Disposition;
use kaelix_broker::message::Message;
use kaelix_broker::topic::{Pattern, Topic};
use kaelix_broker::{
    Broker, BrokerConfig, BrokerError, Strategy, SubscribeOptions, Subscription, TopicConfig,
    dead_letter_headers as dlq,
};
use kaelix_core::NodeId;
use kaelix_core::planted::Planted;
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::{Clock, Priority, Runtime, Spawner};
use kaelix_core::time::Duration;
use kaelix_plugins::wasm::{WasmEngine, WasmLimits, WasmModule, WasmProcessor};
use kaelix_plugins::{
    Action, Chain, Chains, IsolationPolicy, Permissions, Plugin, PluginError, PluginRegistry, StreamProcessor, rebuild,
};
use kaelix_runtime_sim::SimRuntime;
use kaelix_sim::trace::TraceSink;
use kaelix_sim::{FaultProfile, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig, Tolerance};
use semver::Version;

use crate::checker::Observations;
use crate::metrics::RunMetrics;
use crate::{RunReport, Scenario, Tallies};

/// The plugin-chain scenario (and its planted variant).
pub struct PluginsScenario {
    name: &'static str,
    description: &'static str,
    planted: Planted,
}

/// The registered instance.
pub static BROKER_PLUGINS: PluginsScenario = PluginsScenario {
    name: "broker-plugins",
    description: "plugin chains in the publish path (native and WASM) failing, panicking, out of fuel, hot-swapped under faults; conservation and per-publisher order",
    planted: Planted::NONE,
};

/// Planted: a quarantined stage is bypassed (fail-open).
#[cfg(feature = "planted-bugs")]
pub static BROKER_PLUGINS_QUARANTINE_BYPASS: PluginsScenario = PluginsScenario {
    name: "broker-plugins-quarantine-bypass",
    description: "[planted bug] a quarantined plugin is passed around instead of dead-lettering",
    planted: Planted::only(kaelix_core::planted::PlantedBug::PluginQuarantineBypass),
};

const NODE: NodeId = NodeId(1);
const TOLERANCE: Tolerance = Tolerance { max_down: 0, faulty_disks: 0, power_loss: false };
const BOUND: Duration = Duration::from_secs(60);
const QUARANTINE_AFTER: u32 = 3;
/// Labels the generators the workload's operation lists are drawn from.
const WORKLOAD_LABEL: u64 = 0x9106_0a11;
const ORDER_TOPICS: [&str; 2] = ["orders.eu", "orders.us"];
const SENSOR_TOPICS: [&str; 2] = ["sensors.a", "sensors.b"];

/// A guest for `sensors.*`, deciding by the payload's first byte (`d` drop,
/// `r` reject, `l` spin, `e`/`b` trap, `p` publish a copy to
/// `audit.sensors`), marking what it lets through with header
/// `filter: <GEN>`; `GEN` is substituted to make the two module versions.
const FILTER_WAT: &str = r#"(module
  (import "kaelix" "publish" (func $publish (param i32 i32 i32 i32)))
  (import "kaelix" "set_header" (func $set_header (param i32 i32 i32 i32)))
  (import "kaelix" "reject" (func $reject (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "op r")
  (data (i32.const 16) "audit.sensors")
  (data (i32.const 48) "filter")
  (data (i32.const 64) "GEN")
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "process") (param $ptr i32) (param $len i32) (result i32)
    (local $c i32)
    (local.set $c (i32.load8_u (local.get $ptr)))
    (if (i32.eq (local.get $c) (i32.const 100)) (then (return (i32.const 1))))
    (if (i32.eq (local.get $c) (i32.const 114)) (then
      (call $reject (i32.const 0) (i32.const 4)) (return (i32.const 2))))
    (if (i32.eq (local.get $c) (i32.const 108)) (then (loop $spin (br $spin))))
    (if (i32.eq (local.get $c) (i32.const 101)) (then unreachable))
    (if (i32.eq (local.get $c) (i32.const 98)) (then unreachable))
    (if (i32.eq (local.get $c) (i32.const 112)) (then
      (call $publish (i32.const 16) (i32.const 13) (local.get $ptr) (local.get $len))))
    (call $set_header (i32.const 48) (i32.const 6) (i32.const 64) (i32.const 3))
    (i32.const 0)))"#;

/// The engine and the two `filter` modules, compiled once per process
/// (compilation is pure: every run gets the same code).
fn filter_modules() -> &'static (WasmModule, WasmModule) {
    static MODULES: OnceLock<(WasmModule, WasmModule)> = OnceLock::new();
    MODULES.get_or_init(|| {
        let engine = WasmEngine::new().expect("wasm engine");
        let compile = |generation: &str| {
            engine.compile(FILTER_WAT.replace("GEN", generation).as_bytes()).expect("the filter guest compiles")
        };
        (compile("v01"), compile("v02"))
    })
}

fn filter(generation: u32) -> WasmProcessor {
    let (v1, v2) = filter_modules();
    let module = if generation % 2 == 1 { v1.clone() } else { v2.clone() };
    WasmProcessor::new(
        "filter",
        Version::new(1, u64::from(generation), 0),
        module,
        WasmLimits { fuel_per_message: 20_000, max_memory_bytes: 1 << 20 },
        permissions("sensors.*", Some("audit.>"), "filter"),
    )
}

fn permissions(read: &str, publish: Option<&str>, header: &str) -> Permissions {
    Permissions {
        read: vec![Pattern::new(read).expect("valid")],
        publish: publish.map(|p| Pattern::new(p).expect("valid")).into_iter().collect(),
        headers: Some(vec![header.to_owned()]),
    }
}

/// A native stage of the `orders.*` chain: `validate` decides drops,
/// rejections, errors and panics; `enrich` routes copies. Both mark what
/// they pass with their header, valued by generation.
struct Native {
    name: &'static str,
    generation: u32,
}

impl Plugin for Native {
    fn name(&self) -> &str {
        self.name
    }
    fn version(&self) -> Version {
        Version::new(1, u64::from(self.generation), 0)
    }
}

impl StreamProcessor for Native {
    fn process(&mut self, m: &Message) -> Result<Action, PluginError> {
        let marked = || rebuild(m).header(self.name, self.generation.to_string()).build().expect("valid");
        let op = m.payload()[0];
        Ok(match (self.name, op) {
            ("validate", b'd') => Action::Drop,
            ("validate", b'r') => Action::DeadLetter("op r".into()),
            ("validate", b'e') => return Err(PluginError::new("op e")),
            // resume_unwind: a real unwind through the chain, without the
            // panic hook's message on every seed's stderr.
            ("validate", b'b') => std::panic::resume_unwind(Box::new("op b")),
            ("enrich", b'p') => {
                let copy = rebuild(m).topic("audit.orders").build().expect("valid");
                Action::Route(vec![marked(), copy])
            }
            _ => Action::Replace(marked()),
        })
    }
}

fn payload(op: u8, publisher: u32, seq: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(9);
    b.put_u8(op);
    b.put_u32_le(publisher);
    b.put_u32_le(seq);
    b.freeze()
}

/// (op, publisher, seq) of a payload.
fn decode(p: &[u8]) -> (u8, u32, u32) {
    (
        p[0],
        u32::from_le_bytes(p[1..5].try_into().expect("publisher id")),
        u32::from_le_bytes(p[5..9].try_into().expect("sequence")),
    )
}

/// What a publisher learned of one publish.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fate {
    Stored { partition: u32, offset: u64 },
    Dropped { plugin: String },
    DeadLettered { plugin: String, reason: String },
}

#[derive(Clone, Debug)]
struct Sent {
    op: u8,
    topic: Topic,
    fate: Fate,
}

/// One delivery to a subscriber.
#[derive(Clone, Debug)]
struct Got {
    topic: Topic,
    partition: u32,
    offset: u64,
    op: u8,
    publisher: u32,
    seq: u32,
    headers: BTreeMap<String, String>,
}

#[derive(Default)]
struct Observed {
    sent: BTreeMap<(u32, u32), Sent>,
    /// Deliveries per subscriber pattern.
    got: BTreeMap<&'static str, Vec<Got>>,
    dropped_by_streams: u64,
    swaps: u64,
    /// Whether the run is metered: then `broker` holds the broker, whose
    /// counters are read once the run ends.
    metered: bool,
    broker: Option<Broker<SimRuntime>>,
    violation: Option<String>,
}

impl Observations for Observed {
    fn violation(&mut self) -> &mut Option<String> {
        &mut self.violation
    }
}

type Checker = crate::checker::Checker<Observed>;

async fn consume(mut sub: Subscription<SimRuntime>, pattern: &'static str, checker: Checker) {
    let mut last: BTreeMap<(u32, Topic, u32), u32> = BTreeMap::new();
    let mut got = Vec::new();
    while let Some(m) = sub.next().await {
        let (op, publisher, seq) = decode(m.payload());
        let partition = m.partition().expect("stored messages have a partition");
        let key = (publisher, m.topic().clone(), partition);
        if let Some(prev) = last.insert(key, seq)
            && prev >= seq
        {
            checker.fail(format!(
                "{pattern}: publisher {publisher} seq {seq} after seq {prev} on {}/{partition}",
                m.topic()
            ));
        }
        let headers =
            m.headers().iter().map(|(n, v)| (n.to_owned(), String::from_utf8_lossy(v).into_owned())).collect();
        got.push(Got {
            topic: m.topic().clone(),
            partition,
            offset: m.offset().expect("stored messages have an offset"),
            op,
            publisher,
            seq,
            headers,
        });
    }
    let dropped = sub.drops().map_or(0, |d| d.total());
    let mut o = checker.lock();
    o.got.insert(pattern, got);
    o.dropped_by_streams += dropped;
}

struct Rates {
    /// Per-mille chances of each op; the rest pass.
    ops: [(u8, u32); 6],
}

impl Rates {
    fn draw(plan: &mut DetRng) -> Rates {
        let fail = plan.random_range(20..120);
        Rates {
            ops: [
                (b'd', plan.random_range(20..80)),
                (b'r', plan.random_range(20..80)),
                (b'e', fail),
                (b'b', fail / 2),
                (b'l', plan.random_range(10..60)),
                (b'p', plan.random_range(30..100)),
            ],
        }
    }

    fn pick(&self, rng: &mut DetRng) -> u8 {
        let mut roll = rng.random_range(0..1000u32);
        for (op, chance) in self.ops {
            if roll < chance {
                return op;
            }
            roll -= chance;
        }
        b'x'
    }
}

/// One operation of a publisher: after `pause`, publish one message to
/// `topic` whose payload asks the plugins for `op` (pass, drop, reject,
/// fail, …), keyed `k{key}` or not. Sequence numbers are given at run
/// time, in order.
#[derive(Clone, Debug)]
struct PublishOp {
    pause: Duration,
    topic: &'static str,
    op: u8,
    key: Option<u32>,
}

/// A publisher's operations: `count` messages up to 1.5 ms apart, half to
/// the order topics, 40 % to the sensor topics, the rest plain.
fn draw_publishes(rng: &mut DetRng, count: u32, rates: &Rates) -> Vec<PublishOp> {
    (0..count)
        .map(|_| {
            let pause = Duration::from_micros(rng.random_range(0..1500));
            let topic = match rng.random_range(0..10u32) {
                0..=4 => ORDER_TOPICS[rng.random_range(0..2)],
                5..=8 => SENSOR_TOPICS[rng.random_range(0..2)],
                _ => "plain.x",
            };
            let op = rates.pick(rng);
            let key = rng.random_bool(0.5).then(|| rng.random_range(0..8u32));
            PublishOp { pause, topic, op, key }
        })
        .collect()
}

async fn publisher(rt: SimRuntime, broker: Broker<SimRuntime>, id: u32, ops: Vec<PublishOp>, checker: Checker) {
    for (seq, op) in (1..).zip(ops) {
        rt.sleep(op.pause).await;
        let mut b = Message::builder().topic(op.topic).payload(payload(op.op, id, seq));
        if let Some(k) = op.key {
            b = b.key(Bytes::from(format!("k{k}")));
        }
        let message = b.build().expect("valid message");
        let topic = message.topic().clone();
        let fate = match broker.publish(message).await {
            Ok(p) => Fate::Stored { partition: p.partition, offset: p.offset },
            Err(BrokerError::Intercepted(Disposition::Dropped { plugin })) => Fate::Dropped { plugin },
            Err(BrokerError::Intercepted(Disposition::DeadLettered { plugin, reason })) => {
                Fate::DeadLettered { plugin, reason }
            }
            Err(e) => {
                checker.fail(format!("publisher {id} seq {seq}: publish failed, the message is lost: {e}"));
                return;
            }
        };
        checker.lock().sent.insert((id, seq), Sent { op: op.op, topic, fate });
    }
}

/// One hot swap: after `pause`, replace plugin `which` (validate, enrich,
/// the WASM filter) with its next generation.
#[derive(Clone, Debug)]
struct SwapOp {
    pause: Duration,
    which: u32,
}

/// The hot swapper's operations: every 5–60 ms, enough to outlast the
/// publishers (at most 200 messages 1.5 ms apart each).
fn draw_swaps(rng: &mut DetRng) -> Vec<SwapOp> {
    crate::workload::filling(
        rng,
        Duration::from_secs(2),
        |op: &SwapOp| op.pause,
        |rng| SwapOp { pause: Duration::from_millis(rng.random_range(5..60)), which: rng.random_range(0..3u32) },
    )
}

/// Replaces plugins with their next generation, as its operations say,
/// until `stop` is raised or they run out.
async fn hot_swapper(
    rt: SimRuntime,
    registry: Arc<Mutex<PluginRegistry>>,
    ops: Vec<SwapOp>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    checker: Checker,
) {
    let mut generation = 1;
    for op in ops {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        rt.sleep(op.pause).await;
        generation += 1;
        let (name, replacement): (&str, Box<dyn StreamProcessor>) = match op.which {
            0 => ("validate", Box::new(Native { name: "validate", generation })),
            1 => ("enrich", Box::new(Native { name: "enrich", generation })),
            _ => ("filter", Box::new(filter(generation))),
        };
        let result = registry.lock().unwrap_or_else(|e| e.into_inner()).replace(name, replacement, None);
        match result {
            Ok(()) => checker.lock().swaps += 1,
            Err(e) => checker.fail(format!("hot swap of {name} refused: {e}")),
        }
    }
}

async fn workload(rt: SimRuntime, mut plan: DetRng, planted: Planted, checker: Checker) {
    let broker = Broker::new(rt.clone(), rt.rng(), BrokerConfig { auto_create: None, ..BrokerConfig::default() });
    {
        let mut o = checker.lock();
        if o.metered {
            o.broker = Some(broker.clone());
        }
    }
    for t in ORDER_TOPICS {
        broker.create_topic(t, TopicConfig { partitions: 2, ..TopicConfig::default() }).expect("creates");
    }
    for t in SENSOR_TOPICS.iter().chain(&["plain.x", "audit.orders", "audit.sensors"]) {
        broker.create_topic(t, TopicConfig::default()).expect("creates");
    }
    let mut registry = PluginRegistry::new();
    let validate = registry
        .register(
            Box::new(Native { name: "validate", generation: 1 }),
            permissions("orders.*", None, "validate"),
            BTreeMap::new(),
        )
        .expect("registers");
    let enrich = registry
        .register(
            Box::new(Native { name: "enrich", generation: 1 }),
            permissions("orders.*", Some("audit.>"), "enrich"),
            BTreeMap::new(),
        )
        .expect("registers");
    let wasm = registry
        .register(Box::new(filter(1)), permissions("sensors.*", Some("audit.>"), "filter"), BTreeMap::new())
        .expect("registers");
    registry.start().expect("plugins start");
    let policy =
        IsolationPolicy { quarantine_after: QUARANTINE_AFTER, time_budget: Some(Duration::from_millis(50)), planted };
    let chains = Arc::new(Chains::new(rt.clone(), policy));
    chains
        .set(vec![
            Chain { pattern: Pattern::new("orders.*").expect("valid"), stages: vec![validate, enrich] },
            Chain { pattern: Pattern::new("sensors.*").expect("valid"), stages: vec![wasm] },
        ])
        .expect("chains are allowed");
    broker.set_publish_hook(Some(chains));
    let registry = Arc::new(Mutex::new(registry));

    let streams: Vec<_> = ["orders.*", "sensors.*", "plain.*", "audit.>", "_dlq.>"]
        .into_iter()
        .map(|pattern| {
            let options =
                SubscribeOptions { strategy: Some(Strategy::Grow { initial: 64, max: 1 << 20 }), ..Default::default() };
            let sub = broker.subscribe(pattern, options).expect("subscribes");
            rt.spawn(Priority::Normal, "subscriber", consume(sub, pattern, checker.clone()))
        })
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The recorded lists (`crate::workload`): list 0 is the hot swapper's,
    // list 1 + i publisher i's.
    let base: u64 = plan.clone().random();
    let swaps = crate::workload::recorded(base, WORKLOAD_LABEL, 0, draw_swaps);
    let swapper = rt.spawn(
        Priority::Normal,
        "hot-swapper",
        hot_swapper(rt.clone(), registry.clone(), swaps, stop.clone(), checker.clone()),
    );
    let rates = Rates::draw(&mut plan);
    let publishers: Vec<_> = (0..plan.random_range(3..=6u32))
        .map(|id| {
            let count = plan.random_range(60..200);
            let ops = crate::workload::recorded(base, WORKLOAD_LABEL, 1 + u64::from(id), |rng| {
                draw_publishes(rng, count, &rates)
            });
            rt.spawn(Priority::High, "publisher", publisher(rt.clone(), broker.clone(), id, ops, checker.clone()))
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher finished");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.await.expect("hot swapper finished");
    broker.shutdown();
    for s in streams {
        s.await.expect("subscriber finished");
    }
    registry.lock().unwrap_or_else(|e| e.into_inner()).shutdown_all();
    checker.finish();
}

/// Whether a dead letter's reason fits the op that caused it (or the
/// plugin's quarantine, which may catch any op).
fn reason_fits(op: u8, plugin: &str, reason: &str) -> bool {
    if reason.starts_with("quarantined after") {
        return true;
    }
    match (plugin, op) {
        (_, b'r') => reason == "rejected: op r",
        ("validate", b'e') => reason == "error: op e",
        ("validate", b'b') => reason == "panicked: op b",
        ("filter", b'e' | b'b') => reason.starts_with("error: wasm trap: ") && reason.contains("unreachable"),
        ("filter", b'l') => reason == "error: out of fuel",
        _ => false,
    }
}

/// The end-of-run checks (see the module docs).
fn check(o: &Observed) -> Result<(), String> {
    if let Some(v) = &o.violation {
        return Err(v.clone());
    }
    if o.dropped_by_streams != 0 {
        return Err(format!("subscribers dropped {} messages (they never should)", o.dropped_by_streams));
    }
    let got = |pattern: &str| o.got.get(pattern).map(Vec::as_slice).unwrap_or_default();
    // Index deliveries by (publisher, seq); each must be used exactly once.
    let mut index: BTreeMap<(&str, u32, u32), Vec<&Got>> = BTreeMap::new();
    for (pattern, gs) in &o.got {
        for g in gs {
            index.entry((pattern, g.publisher, g.seq)).or_default().push(g);
        }
    }
    let mut used: BTreeSet<(&str, u32, u32)> = BTreeSet::new();
    let mut take = |pattern: &'static str, publisher: u32, seq: u32| -> Result<&Got, String> {
        let list = index.get(&(pattern, publisher, seq)).map(Vec::as_slice).unwrap_or_default();
        match list {
            [one] if used.insert((pattern, publisher, seq)) => Ok(*one),
            [] | [_] => Err(format!("publisher {publisher} seq {seq}: not delivered to {pattern}")),
            many => Err(format!("publisher {publisher} seq {seq}: delivered {} times to {pattern}", many.len())),
        }
    };
    for (&(publisher, seq), sent) in &o.sent {
        let chained = sent.topic.as_str().starts_with("orders.") || sent.topic.as_str().starts_with("sensors.");
        let stages: &[&str] = if sent.topic.as_str().starts_with("orders.") {
            &["validate", "enrich"]
        } else if chained {
            &["filter"]
        } else {
            &[]
        };
        let subscriber: &'static str = match sent.topic.as_str() {
            t if t.starts_with("orders.") => "orders.*",
            t if t.starts_with("sensors.") => "sensors.*",
            _ => "plain.*",
        };
        let what = format!("publisher {publisher} seq {seq} (op {}, {})", sent.op as char, sent.topic);
        match &sent.fate {
            Fate::Stored { partition, offset } => {
                let g = take(subscriber, publisher, seq)?;
                if g.op != sent.op {
                    return Err(format!("{what}: delivered with op {}", g.op as char));
                }
                if (&g.topic, g.partition, g.offset) != (&sent.topic, *partition, *offset) {
                    return Err(format!(
                        "{what}: stored at {partition}@{offset} but delivered from {}/{}@{}",
                        g.topic, g.partition, g.offset
                    ));
                }
                for stage in stages {
                    if !g.headers.contains_key(*stage) {
                        return Err(format!("{what}: delivered without passing plugin {stage} (no {stage} header)"));
                    }
                }
                if chained && !matches!(sent.op, b'x' | b'p') && !(sent.op == b'l' && stages[0] == "validate") {
                    return Err(format!("{what}: stored, but its plugins refuse that op"));
                }
                if chained && sent.op == b'p' {
                    take("audit.>", publisher, seq)?;
                }
            }
            Fate::Dropped { plugin } => {
                let expected = if stages.first() == Some(&"validate") { "validate" } else { "filter" };
                if sent.op != b'd' || plugin != expected {
                    return Err(format!("{what}: dropped by {plugin}, which drops only op d on its chain"));
                }
            }
            Fate::DeadLettered { plugin, reason } => {
                if !stages.contains(&plugin.as_str()) {
                    return Err(format!("{what}: dead-lettered by {plugin}, not a plugin of its chain"));
                }
                if !reason_fits(sent.op, plugin, reason) {
                    return Err(format!(
                        "{what}: dead-lettered by {plugin} with reason {reason:?}, which does not fit"
                    ));
                }
                let d = take("_dlq.>", publisher, seq)?;
                let header = |h: &str| d.headers.get(h).map(String::as_str);
                if d.topic.as_str() != format!("_dlq.{}", sent.topic)
                    || header(dlq::PLUGIN) != Some(plugin.as_str())
                    || header(dlq::REASON) != Some(reason.as_str())
                    || header(dlq::SOURCE_TOPIC) != Some(sent.topic.as_str())
                {
                    return Err(format!("{what}: its dead letter {} carries {:?}", d.topic, d.headers));
                }
            }
        }
    }
    // Nothing arrived that was not sent so.
    for pattern in ["orders.*", "sensors.*", "plain.*", "audit.>", "_dlq.>"] {
        for g in got(pattern) {
            if !used.contains(&(pattern, g.publisher, g.seq)) {
                return Err(format!(
                    "{pattern} received publisher {} seq {} ({}/{}@{}), which its publisher was not told",
                    g.publisher, g.seq, g.topic, g.partition, g.offset
                ));
            }
        }
    }
    Ok(())
}

impl Scenario for PluginsScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn planted(&self) -> Planted {
        self.planted
    }

    fn workload_units(&self) -> (&'static str, &'static str) {
        ("messages published", "deliveries (topics, audit copies, dead letters)")
    }

    fn run(&self, seed: u64, trace: Option<TraceSink>) -> RunReport {
        self.run_tallied(seed, trace).0
    }

    fn run_tallied(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies) {
        let (report, tallies, _) = self.execute(seed, trace, false);
        (report, tallies)
    }

    fn run_metered(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies, Option<RunMetrics>) {
        self.execute(seed, trace, true)
    }
}

impl PluginsScenario {
    /// One run; with `meter`, the broker's metrics once it ended.
    fn execute(&self, seed: u64, trace: Option<TraceSink>, meter: bool) -> (RunReport, Tallies, Option<RunMetrics>) {
        let mut setup = rng::derive(seed, 0x9106_1a5e);
        let mut profile = FaultProfile::swarm(&mut setup);
        profile.restrict(&TOLERANCE);
        let node = [NODE];
        let horizon = kaelix_core::Instant::ZERO + Duration::from_secs(5);
        let schedule = FaultSchedule::generate(&profile, &TOLERANCE, &node, &[], horizon, &mut setup);
        let fault_mix = profile.mix();
        let plan = rng::fork(&mut setup);
        let planted = self.planted;

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let checker = Checker::default();
        checker.lock().metered = meter;
        let c = checker.clone();
        let init = SimRuntime::init(move |rt| workload(rt, plan.clone(), planted, c.clone()));
        sim.add_node(NODE, NodeSpec { kind: NodeKind::Server, name: "broker".into(), faulty_disk: false, init });
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(horizon);

        let verdict = checker.run_to_verdict(&sim, BOUND, check);
        let o = checker.lock();
        let sent = o.sent.len() as u64;
        let delivered: u64 = o.got.values().map(|g| g.len() as u64).sum();
        let count = |f: &dyn Fn(&Fate) -> bool| o.sent.values().filter(|s| f(&s.fate)).count() as u64;
        let tallies = vec![
            ("stored", count(&|f| matches!(f, Fate::Stored { .. }))),
            ("dropped by plugins", count(&|f| matches!(f, Fate::Dropped { .. }))),
            ("dead-lettered", count(&|f| matches!(f, Fate::DeadLettered { .. }))),
            (
                "dead-lettered by quarantine",
                count(&|f| matches!(f, Fate::DeadLettered { reason, .. } if reason.starts_with("quarantined"))),
            ),
            (
                "out of fuel",
                count(&|f| matches!(f, Fate::DeadLettered { reason, .. } if reason == "error: out of fuel")),
            ),
            ("hot swaps", o.swaps),
        ];
        let metrics = meter.then(|| {
            let mut m = RunMetrics::new();
            if let Some(broker) = &o.broker {
                m.record_broker(NODE, broker);
            }
            m.record_sim_time(sim.now().since_origin().as_secs_f64());
            m
        });
        drop(o);
        (RunReport::conclude(&sim, seed, verdict, fault_mix, (sent, delivered)), tallies, metrics)
    }
}

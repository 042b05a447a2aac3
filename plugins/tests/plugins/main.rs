//! kaelix-plugins against a real broker: chains in the publish path,
//! dead letters naming the plugin, isolation keeping the broker serving,
//! hot reload between messages without loss or reordering.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::FutureExt;
use kaelix_broker::intercept::Disposition;
use kaelix_broker::message::Message;
use kaelix_broker::testing::ManualClock;
use kaelix_broker::{Broker, BrokerConfig, BrokerError, SubscribeOptions, dead_letter_headers};
use kaelix_plugins::{
    Action, Chain, Chains, IsolationPolicy, Permissions, Plugin, PluginError, PluginRegistry, PluginState,
    StreamProcessor, rebuild,
};
use semver::Version;

/// Stamps `stage=<generation>` on every message, fails on payload `err`,
/// panics on `boom`, drops `skip`, routes `fwd` to `audit.<topic tail>`.
struct Stamp {
    generation: u32,
}

impl Plugin for Stamp {
    fn name(&self) -> &str {
        "stamp"
    }
    fn version(&self) -> Version {
        Version::new(1, self.generation as u64, 0)
    }
}

impl StreamProcessor for Stamp {
    fn process(&mut self, m: &Message) -> Result<Action, PluginError> {
        match m.payload().as_ref() {
            b"err" => Err(PluginError::new("cannot parse")),
            b"boom" => panic!("stamp exploded"),
            b"skip" => Ok(Action::Drop),
            b"fwd" => Ok(Action::Route(vec![rebuild(m).topic("audit.copy").build().expect("valid")])),
            _ => Ok(Action::Replace(rebuild(m).header("stage", self.generation.to_string()).build().expect("valid"))),
        }
    }
}

fn block_on<T>(f: impl Future<Output = T>) -> T {
    f.now_or_never().expect("memory broker never waits here")
}

fn msg(topic: &str, payload: &str) -> Message {
    Message::builder().topic(topic).payload(payload.to_owned()).build().unwrap()
}

struct Setup {
    broker: Broker<ManualClock>,
    registry: PluginRegistry,
}

fn setup(quarantine_after: u32) -> Setup {
    let clock = ManualClock::default();
    let broker = Broker::new(clock.clone(), kaelix_core::rng::seeded(3), BrokerConfig::default());
    let mut registry = PluginRegistry::new();
    let slot = registry.register(Box::new(Stamp { generation: 1 }), Permissions::all(), BTreeMap::new()).unwrap();
    registry.start().unwrap();
    let chains = Arc::new(Chains::new(
        clock,
        IsolationPolicy { quarantine_after, time_budget: None, ..IsolationPolicy::default() },
    ));
    chains.set(vec![Chain { pattern: "orders.*".parse().unwrap(), stages: vec![slot] }]).unwrap();
    broker.set_publish_hook(Some(chains));
    Setup { broker, registry }
}

#[test]
fn every_message_is_processed_dropped_routed_or_dead_lettered() {
    let s = setup(100);
    let mut orders = s.broker.subscribe("orders.*", SubscribeOptions::default()).unwrap();
    let mut audit = s.broker.subscribe("audit.>", SubscribeOptions::default()).unwrap();
    let mut dead = s.broker.subscribe("_dlq.>", SubscribeOptions::default()).unwrap();
    let mut plain = s.broker.subscribe("other", SubscribeOptions::default()).unwrap();

    let p = block_on(s.broker.publish(msg("orders.eu", "ok"))).unwrap();
    let got = orders.try_next().unwrap();
    assert_eq!((got.offset(), got.headers().get("stage").unwrap().as_ref()), (Some(p.offset), &b"1"[..]));

    let dropped = block_on(s.broker.publish(msg("orders.eu", "skip")));
    assert!(matches!(dropped, Err(BrokerError::Intercepted(Disposition::Dropped { ref plugin })) if plugin == "stamp"));

    block_on(s.broker.publish(msg("orders.eu", "fwd"))).unwrap();
    assert_eq!(audit.try_next().unwrap().topic().as_str(), "audit.copy");

    for (payload, reason) in [("err", "error: cannot parse"), ("boom", "panicked: stamp exploded")] {
        let r = block_on(s.broker.route(msg("orders.us", payload)));
        assert!(matches!(r, Err(BrokerError::Intercepted(Disposition::DeadLettered { .. }))), "{r:?}");
        let d = dead.try_next().unwrap();
        assert_eq!(d.topic().as_str(), "_dlq.orders.us");
        assert_eq!(d.payload().as_ref(), payload.as_bytes());
        assert_eq!(d.headers().get(dead_letter_headers::PLUGIN).unwrap().as_ref(), b"stamp");
        assert_eq!(d.headers().get(dead_letter_headers::REASON).unwrap().as_ref(), reason.as_bytes());
    }
    // Topics no chain covers are untouched, and the broker kept serving.
    block_on(s.broker.publish(msg("other", "boom"))).unwrap();
    assert_eq!(plain.try_next().unwrap().payload().as_ref(), b"boom");
    assert!(orders.try_next().is_none(), "nothing else reached orders");
    let stats = s.registry.get("stamp").unwrap().stats();
    assert_eq!((stats.processed, stats.failures, stats.dropped, stats.routed), (5, 2, 1, 1));
}

#[test]
fn quarantine_keeps_the_broker_serving_and_a_reload_ends_it() {
    let mut s = setup(2);
    let mut dead = s.broker.subscribe("_dlq.>", SubscribeOptions::default()).unwrap();
    for _ in 0..2 {
        let _ = block_on(s.broker.publish(msg("orders.eu", "boom")));
    }
    assert_eq!(s.registry.state("stamp"), Some(PluginState::Quarantined));
    let _ = block_on(s.broker.publish(msg("orders.eu", "fine")));
    let reasons: Vec<String> = std::iter::from_fn(|| dead.try_next())
        .map(|d| String::from_utf8_lossy(d.headers().get(dead_letter_headers::REASON).unwrap()).into_owned())
        .collect();
    assert_eq!(
        reasons,
        ["panicked: stamp exploded", "panicked: stamp exploded", "quarantined after 2 consecutive failures"]
    );
    s.registry.replace("stamp", Box::new(Stamp { generation: 2 }), None).unwrap();
    assert!(block_on(s.broker.publish(msg("orders.eu", "fine"))).is_ok());
}

#[test]
fn a_reload_between_messages_loses_and_reorders_nothing() {
    let mut s = setup(100);
    let mut orders = s.broker.subscribe("orders.*", SubscribeOptions::default()).unwrap();
    for i in 0..100u32 {
        if i % 25 == 24 {
            let generation = 2 + i / 25;
            s.registry.replace("stamp", Box::new(Stamp { generation }), None).unwrap();
        }
        block_on(s.broker.publish(msg("orders.eu", &format!("m{i}")))).unwrap();
    }
    let got: Vec<(String, String)> = std::iter::from_fn(|| orders.try_next())
        .map(|m| {
            let stage = String::from_utf8_lossy(m.headers().get("stage").unwrap()).into_owned();
            (String::from_utf8_lossy(m.payload()).into_owned(), stage)
        })
        .collect();
    assert_eq!(got.len(), 100);
    for (i, (payload, stage)) in got.iter().enumerate() {
        assert_eq!(payload, &format!("m{i}"), "publish order kept");
        let want = if i < 24 { 1 } else { 2 + (i - 24) / 25 };
        assert_eq!(stage, &want.to_string(), "message {i} processed by the instance current at its publish");
    }
    assert_eq!(s.registry.get("stamp").unwrap().stats().reloads, 4);
}

#[test]
fn batches_go_through_the_chain_in_order() {
    let s = setup(100);
    let mut orders = s.broker.subscribe("orders.*", SubscribeOptions::default()).unwrap();
    let batch: kaelix_broker::message::MessageBatch =
        ["a", "skip", "b", "err", "c"].iter().map(|p| msg("orders.eu", p)).collect();
    let published = block_on(s.broker.publish_batch(batch)).unwrap();
    assert_eq!(published.len(), 3, "the dropped and the dead-lettered have no placement");
    let got: Vec<_> = std::iter::from_fn(|| orders.try_next()).map(|m| m.payload().clone()).collect();
    assert_eq!(got, ["a", "b", "c"]);
    assert_eq!(s.broker.stats().dead_lettered, 1);
}

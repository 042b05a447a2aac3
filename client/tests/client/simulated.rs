//! The client API end to end under the simulator.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::future::join;
use kaelix_client::{
    AckLevel, Admin, ClientError, Connection, Consumer, ErrorCode, FetchOptions, Message, Pattern, Producer,
    StartPosition, SubscribeOptions, Topic, TopicSettings,
};
use kaelix_core::NodeId;
use kaelix_core::runtime::{Clock, timeout};
use kaelix_core::time::{Duration, Instant};
use kaelix_runtime_sim::SimRuntime;
use kaelix_server::config::{StorageChoice, TopicSpec};
use kaelix_server::{Server, ServerConfig};
use kaelix_sim::{NodeKind, NodeSpec, Sim, SimConfig};

const SERVER: NodeId = NodeId(1);
const CLIENT: NodeId = NodeId(2);
const PORT: u16 = 7422;

/// What the client node saw: the steps it completed, or the first failure.
#[derive(Default)]
struct Outcome {
    steps: Vec<String>,
    failure: Option<String>,
    done: bool,
}

type Shared = Arc<Mutex<Outcome>>;

fn server_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.nats.listen = SocketAddr::from(([0, 0, 0, 0], 4222));
    config.native.listen = SocketAddr::from(([0, 0, 0, 0], PORT));
    config.topics.push(TopicSpec {
        name: "durable".into(),
        partitions: 1,
        storage: StorageChoice::Durable,
        flush_interval_ms: None,
        max_bytes: None,
        max_records: None,
        max_age_secs: None,
    });
    config
}

async fn server_node(rt: SimRuntime) {
    let _server = Server::start(rt.clone(), server_config()).await.expect("the server starts");
    // Serve until the simulation ends (the run drops this task).
    std::future::pending::<()>().await;
}

fn payloads(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| String::from_utf8(m.payload().to_vec()).unwrap()).collect()
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.to_owned()) }
}

fn e(err: ClientError) -> String {
    err.to_string()
}

async fn script(rt: &SimRuntime, out: &Shared) -> Result<(), String> {
    let step = |s: &str| out.lock().unwrap().steps.push(s.to_owned());
    let addr = kaelix_sim::node_addr(SERVER, PORT);
    let conn = loop {
        match Connection::connect(rt, addr).await {
            Ok(c) => break c,
            // The server node may not listen yet.
            Err(_) => rt.sleep(Duration::from_millis(50)).await,
        }
    };
    step("connected");

    let admin = Admin::new(conn.clone());
    let t = Topic::new("events").unwrap();
    admin.create_topic(&t, TopicSettings { partitions: 3, ..TopicSettings::default() }).await.map_err(e)?;
    let listed: Vec<String> = admin.list_topics().await.map_err(e)?.iter().map(|s| s.topic.to_string()).collect();
    check(listed == ["durable", "events"], "list_topics")?;
    step("admin");

    let producer = Producer::new(conn.clone());
    let batch: Vec<Message> = (0..30)
        .map(|i| Message::builder().topic(&t).key(format!("k{}", i % 7)).payload(format!("e{i}")).build().unwrap())
        .collect();
    let positions = producer.send_batch(batch).await.map_err(e)?;
    check(positions.len() == 30, "one position per message")?;
    let durable = Topic::new("durable").unwrap();
    let synced = producer.send(Message::builder().topic(&durable).payload("d0").build().unwrap()).await.map_err(e)?;
    check(synced.offset == 0, "committed on the durable topic")?;
    step("produced");

    let consumer = Consumer::new(conn.clone());
    let mut fetched = Vec::new();
    for partition in 0..3 {
        let mut next = 0;
        loop {
            let options = FetchOptions { max_messages: 4, ..FetchOptions::default() };
            let f = consumer.fetch(&t, partition, next, options).await.map_err(e)?;
            if f.messages.is_empty() {
                break;
            }
            next = f.next_offset;
            fetched.extend(f.messages);
        }
    }
    let mut got = payloads(&fetched);
    got.sort_by_key(|p| p[1..].parse::<u32>().unwrap());
    check(got == (0..30).map(|i| format!("e{i}")).collect::<Vec<_>>(), "every message fetched once")?;
    let d = consumer.fetch(&durable, 0, 0, FetchOptions::default()).await.map_err(e)?;
    check(payloads(&d.messages) == ["d0"], "the durable message is readable")?;
    step("fetched");

    // A long poll at the head ends when a message arrives.
    let start = rt.now();
    let poll = consumer.fetch(&durable, 0, 1, FetchOptions::default().wait(Duration::from_secs(20)));
    let late = async {
        rt.sleep(Duration::from_millis(300)).await;
        conn.ping().await.map_err(e)?;
        let m = Message::builder().topic(&durable).payload("d1").build().unwrap();
        producer.clone().with_acks(AckLevel::Leader).send(m).await.map_err(e)
    };
    let (polled, sent) = join(poll, late).await;
    sent?;
    check(payloads(&polled.map_err(e)?.messages) == ["d1"], "the long poll returned the new message")?;
    check(rt.now().saturating_duration_since(start) < Duration::from_secs(10), "woken by the data")?;
    step("long poll");

    let options = SubscribeOptions { start: StartPosition::Earliest, window: 4, ..SubscribeOptions::default() };
    let mut sub = consumer.subscribe(&Pattern::new("events").unwrap(), options).await.map_err(e)?;
    let mut pushed = Vec::new();
    while pushed.len() < 30 {
        let next = timeout(rt, Duration::from_secs(10), sub.next()).await.map_err(|_| "subscription stalled")?;
        pushed.push(next.map_err(e)?.ok_or("the subscription ended")?);
        check(sub.buffered() < 4, "no more than the window")?;
    }
    for partition in 0..3 {
        let offsets: Vec<u64> =
            pushed.iter().filter(|m| m.partition() == Some(partition)).map(|m| m.offset().unwrap()).collect();
        check(offsets.windows(2).all(|w| w[1] == w[0] + 1), "pushed in offset order per partition")?;
    }
    sub.unsubscribe().await.map_err(e)?;
    step("subscribed");

    let mut member = consumer.join_group("workers", &t).await.map_err(e)?;
    check(member.partitions() == [0, 1, 2], "a lone member owns every partition")?;
    let mut read = 0;
    while read < 30 {
        let batch = member.poll(FetchOptions::default().wait(Duration::from_secs(2))).await.map_err(e)?;
        for m in &batch {
            member.commit(m).await.map_err(e)?;
        }
        read += batch.len();
    }
    let stale = member.generation();
    let other = consumer.join_group("workers", &t).await.map_err(e)?;
    let refused = member.commit_offset(0, 1).await;
    check(refused.map_err(|e| e.code()) == Err(Some(ErrorCode::StaleGeneration)), "a stale commit is refused")?;
    check(member.heartbeat().await.map_err(e)?.len() + other.partitions().len() == 3, "rebalanced")?;
    check(member.generation() > stale, "a new generation")?;
    other.leave().await.map_err(e)?;
    step("group");

    let unknown = producer.send(Message::builder().topic("nope").payload("x").build().unwrap()).await;
    check(unknown.map_err(|e| e.code()) == Err(Some(ErrorCode::UnknownTopic)), "unknown topic")?;
    step("errors");
    conn.close();
    Ok(())
}

async fn client_node(rt: SimRuntime, out: Shared) {
    // Give the server node a moment to boot.
    rt.sleep(Duration::from_millis(10)).await;
    let result = script(&rt, &out).await;
    let mut o = out.lock().unwrap();
    if let Err(why) = result {
        o.failure = Some(why);
    }
    o.done = true;
}

/// Runs one seed; the client's steps and the trace hash.
fn run(seed: u64) -> (Vec<String>, u64) {
    let sim = Sim::new(SimConfig::new(seed));
    let out: Shared = Shared::default();
    let init = SimRuntime::init(server_node);
    sim.add_node(SERVER, NodeSpec { kind: NodeKind::Server, name: "server".into(), faulty_disk: false, init });
    let o = out.clone();
    let init = SimRuntime::init(move |rt| client_node(rt, o.clone()));
    sim.add_node(CLIENT, NodeSpec { kind: NodeKind::Client, name: "client".into(), faulty_disk: false, init });
    let deadline = Instant::ZERO + Duration::from_secs(300);
    let finished = sim.run_until_done(deadline, |_| out.lock().unwrap().done, |_| Ok::<(), ()>(())).unwrap();
    let hash = sim.trace_hash();
    sim.shutdown();
    let o = out.lock().unwrap();
    assert!(finished, "seed {seed}: not finished by {deadline:?}; steps {:?}", o.steps);
    if let Some(why) = &o.failure {
        panic!("seed {seed}: {why} (after steps {:?})", o.steps);
    }
    (o.steps.clone(), hash)
}

#[test]
fn the_whole_client_api_works_in_the_simulator() {
    for seed in 0..16 {
        let (steps, hash) = run(seed);
        assert_eq!(
            steps,
            ["connected", "admin", "produced", "fetched", "long poll", "subscribed", "group", "errors"],
            "seed {seed}"
        );
        assert_eq!(run(seed).1, hash, "seed {seed} replays to the same trace");
    }
}

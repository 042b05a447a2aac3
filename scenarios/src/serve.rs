//! Scenario `serve`: the server (`kaelix serve`'s very code) on a node that
//! crashes, loses power and restarts, with NATS clients on other nodes
//! speaking the protocol over simulated TCP streams (split at random
//! points, broken by crashes).
//!
//! * **Server**: one node; every incarnation starts `kaelix_server::Server`
//!   on its disk. `orders` is a configured durable topic; subjects under
//!   `live.` name no topic and are relayed (core NATS). Faults: crashes and
//!   restarts, power loss, lost and torn unsynced writes, slow disks,
//!   pauses, clock faults.
//! * **Publishers** (client nodes): connect, publish numbered messages to
//!   `orders` and `live.<n>` in small bursts, each burst followed by a
//!   `PING`; the `PONG` acknowledges every publish sent before it (for
//!   `orders`, as stored: the server answers only once they are synced). A
//!   broken connection is reopened; sequence numbers go on (nothing is
//!   resent, so nothing may be stored twice).
//! * **Subscribers** (client nodes): connect, subscribe to `orders` and
//!   `live.>`, confirm with `PING`/`PONG` (the subscription is live from
//!   then), and record every delivery per connection ("session").
//! * **Native clients** (`kaelix-client` over the native protocol, same
//!   namespace): a producer sending numbered messages to `orders` in small
//!   batches with acks `committed` (acknowledged = stored), and a
//!   subscriber of `orders` from the latest offset (live once subscribed),
//!   recorded like the NATS ones — so NATS subscribers must see native
//!   publishes and the native subscriber NATS publishes.
//! * **Reloads** (`serve-reload` only): during the faults, a reloader on the
//!   server node reconfigures the running server (`Server::reconfigure`,
//!   what a file change or SIGHUP does in `kaelix serve`) every 50–400 ms:
//!   `max_payload` lowered below some messages' size or raised back,
//!   `max_pending` lowered (slow consumers) or raised, `max_connections`
//!   lowered to a few or raised. Each applied configuration is "the file":
//!   a restarted server starts from it. When the faults stop it restores
//!   the defaults. Clients take the refusals a real client would: `-ERR
//!   'Maximum Payload Violation'` (the connection closes, its unacknowledged
//!   burst is not acknowledged), `-ERR 'Slow Consumer'`, connections refused.
//! * **Recorded operations**: each publisher's bursts (or batches) and
//!   each server incarnation's reconfigurations are recorded lists drawn
//!   before they start (`crate::workload`), which `sim shrink` cuts;
//!   sequence numbers, reconnecting and subscribing are the clients' own.
//! * Once the faults stop, publishers finish their quota; the server's last
//!   incarnation waits for them, lets the subscribers drain, and reads
//!   `orders` back from offset 0.
//!
//! # Checks (from what the clients saw; no server counter is trusted)
//!
//! * **Durability**: every acknowledged publish to `orders` is in the final
//!   log.
//! * **Integrity**: the log holds only messages some publisher sent, none
//!   twice, and per publisher in sequence order.
//! * **Delivery order**: within a subscriber session, each publisher's
//!   messages arrive in sequence order, none twice, none unsent, each on
//!   the subject it was published to.
//! * **Delivery completeness**: a subscriber session that was live before
//!   a publish was sent and stayed open to the end received it, if it was
//!   acknowledged — for stored and relayed subjects alike.
//! * **Limits as announced** (`serve-reload`): a NATS publish larger than the
//!   `max_payload` its connection's `INFO` announced is never acknowledged,
//!   stored or delivered, and a connection is never refused a payload
//!   within the limit it announced.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use kaelix_broker::message::Message;
use kaelix_broker::topic::{Pattern, Topic};
use kaelix_client::{AckLevel, Connection, Consumer, Producer, SubscribeOptions as NativeSubscribeOptions};
use kaelix_core::NodeId;
use kaelix_core::planted::{Planted, PlantedBug};
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::{ByteNetwork, ByteStream, Clock, NetError, Priority, Runtime, Spawner, timeout};
use kaelix_core::time::{Duration, Instant};
use kaelix_nats::{Connect, ServerOp, ServerOpParser, write_connect, write_ping, write_pong, write_pub, write_sub};
use kaelix_runtime_sim::SimRuntime;
use kaelix_server::config::{StorageChoice, TopicSpec};
use kaelix_server::{Server, ServerConfig, ServerObserver};
use kaelix_sim::trace::TraceSink;
use kaelix_sim::{FaultProfile, FaultSchedule, NodeKind, NodeSpec, Sim, SimConfig, Tolerance};

use crate::checker::Observations;
use crate::metrics::RunMetrics;
use crate::{RunReport, Scenario, Tallies};

/// The serve scenario (or a planted-bug variant of it).
pub struct ServeScenario {
    name: &'static str,
    description: &'static str,
    planted: Option<PlantedBug>,
    /// Whether a reloader reconfigures the server during the faults.
    reloads: bool,
}

/// The registered instance.
pub static SERVE: ServeScenario = ServeScenario {
    name: "serve",
    description: "kaelix serve on a crashing node with NATS and native publishers and subscribers over simulated TCP: acknowledged publishes survive and reach every live subscriber in order",
    planted: None,
    reloads: false,
};

/// The serve scenario with the configuration reloaded under load.
pub static SERVE_RELOAD: ServeScenario = ServeScenario {
    name: "serve-reload",
    description: "serve with the server reconfigured while clients publish (payload, pending and connection limits lowered and raised): every serve check holds, and limits are enforced as each connection's INFO announced them",
    planted: None,
    reloads: true,
};

/// Planted: PONG answered before the publishes it covers are synced.
#[cfg(feature = "planted-bugs")]
pub static SERVE_PONG_BEFORE_STORED: ServeScenario = ServeScenario {
    name: "serve-pong-before-stored",
    description: "[planted bug] the NATS front end answers PING before earlier publishes to stored topics are synced",
    planted: Some(PlantedBug::ServerPongBeforeStored),
    reloads: false,
};

const SERVER: NodeId = NodeId(1);
const PORT: u16 = 4222;
const PUBLISHERS: u64 = 3;
const NATIVE_PORT: u16 = 7422;
/// The native producer's publisher number (NATS publishers are 1..=3).
const NATIVE_PRODUCER: u32 = 10;
/// The native subscriber's number (NATS subscribers are 1..=2).
const NATIVE_SUBSCRIBER: u64 = 10;
const SUBSCRIBERS: u64 = 2;
const TOLERANCE: Tolerance = Tolerance { max_down: 1, faulty_disks: 0, power_loss: true };
/// Everything must be done by then.
const BOUND: Duration = Duration::from_secs(120);
/// How long the faults last.
const SAFETY: Duration = Duration::from_secs(5);
/// Messages each publisher sends in total.
const QUOTA: u32 = 120;
/// Labels the generators the workload's operation lists are drawn from.
const WORKLOAD_LABEL: u64 = 0x5e7e_0a11;
/// The reloader's recorded list of incarnation `i` is `RELOADER_LIST + i`
/// (publishers' lists are their indices, the native producer's its id).
const RELOADER_LIST: u64 = 100;

/// (publisher, seq).
type Identity = (u32, u32);

#[derive(Default)]
struct Observed {
    /// Every publish sent: identity → (subject, true time sent).
    sent: BTreeMap<Identity, (String, Instant)>,
    /// NATS publishes larger than their connection's announced `max_payload`.
    oversize: BTreeSet<Identity>,
    /// The configuration last applied by the reloader ("the file"): a
    /// restarted server starts from it.
    config_file: Option<ServerConfig>,
    /// Reconfigurations applied.
    reloads: u64,
    /// Publishes a PONG acknowledged.
    acked: BTreeSet<Identity>,
    /// Subscriber sessions: (subscriber, session) → live-from time, open at
    /// the end, deliveries (subject, identity) in order.
    sessions: BTreeMap<(u64, u32), Session>,
    publishers_done: u64,
    /// The final read-back of `orders`.
    final_log: Option<Vec<Identity>>,
    incarnations: u64,
    /// The server of the latest incarnation, for its metrics when the run
    /// ends.
    server: Option<ServerObserver<SimRuntime>>,
    violation: Option<String>,
}

#[derive(Default)]
struct Session {
    /// What the session subscribed to.
    patterns: Vec<Pattern>,
    live_from: Option<Instant>,
    ended: bool,
    deliveries: Vec<(String, Identity)>,
}

impl Observations for Observed {
    fn violation(&mut self) -> &mut Option<String> {
        &mut self.violation
    }
}

type Checker = crate::checker::Checker<Observed>;

fn true_now(rt: &SimRuntime) -> Instant {
    rt.sim().now()
}

fn config(planted: Planted) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.nats.listen = SocketAddr::from(([0, 0, 0, 0], PORT));
    config.native.listen = SocketAddr::from(([0, 0, 0, 0], NATIVE_PORT));
    config.topics.push(TopicSpec {
        name: "orders".into(),
        partitions: 1,
        storage: StorageChoice::Durable,
        flush_interval_ms: None,
        max_bytes: None,
        max_records: None,
        max_age_secs: None,
    });
    config.planted = planted;
    config
}

/// A payload: the identity, then `pad` filler bytes.
fn encode_payload(id: Identity, pad: usize) -> Bytes {
    let mut text = format!("{}:{}:", id.0, id.1);
    text.extend(std::iter::repeat_n('x', pad));
    Bytes::from(text)
}

fn decode_payload(payload: &[u8]) -> Option<Identity> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split(':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A minimal NATS client connection over the simulated stream.
struct Client {
    stream: <SimRuntime as ByteNetwork>::ByteStream,
    parser: ServerOpParser,
    /// The `max_payload` the server's `INFO` announced.
    max_payload: u64,
}

impl Client {
    async fn connect(rt: &SimRuntime) -> Result<Client, NetError> {
        let stream = rt.connect_tcp(kaelix_sim::node_addr(SERVER, PORT)).await?;
        let mut client = Client { stream, parser: ServerOpParser::new(), max_payload: 0 };
        match client.next_op().await? {
            ServerOp::Info(info) => client.max_payload = info.max_payload,
            other => return Err(NetError::Io(format!("expected INFO, got {other:?}"))),
        }
        let mut buf = BytesMut::new();
        let connect = Connect { verbose: false, pedantic: false, headers: true, ..Connect::default() };
        write_connect(&mut buf, &connect);
        client.stream.write(buf.freeze()).await?;
        Ok(client)
    }

    /// The next operation from the server (answers server PINGs itself).
    async fn next_op(&mut self) -> Result<ServerOp, NetError> {
        loop {
            match self.parser.next() {
                Some(Ok(ServerOp::Ping)) => {
                    let mut buf = BytesMut::new();
                    write_pong(&mut buf);
                    self.stream.write(buf.freeze()).await?;
                }
                Some(Ok(op)) => return Ok(op),
                Some(Err(e)) => return Err(NetError::Io(format!("protocol error from the server: {e}"))),
                None => match self.stream.read().await? {
                    Some(chunk) => self.parser.push(&chunk),
                    None => return Err(NetError::Reset),
                },
            }
        }
    }
}

/// One message of a burst or batch: to `live.<publisher>` rather than
/// `orders` (NATS publishers only), and the payload's filler length.
#[derive(Clone, Copy, Debug)]
struct MessageOp {
    live: bool,
    pad: usize,
}

/// One operation of a publisher: send `messages` (a NATS burst and its
/// `PING`, or a native batch), then pause `after`. Sequence numbers are
/// given at run time, in order; a burst whose connection broke is not
/// resent, and reconnecting (with its pauses) is the publisher's own.
#[derive(Clone, Debug)]
struct SendOp {
    messages: Vec<MessageOp>,
    after: Duration,
}

/// A publisher's operations: `QUOTA` messages in bursts of 1 to
/// `largest`, each followed by 1–29 ms; `live` is the chance of a message
/// to `live.<n>`.
fn draw_sends(rng: &mut DetRng, largest: u32, live: f64) -> Vec<SendOp> {
    let mut ops = Vec::new();
    let mut drawn = 0;
    while drawn < QUOTA {
        let len = rng.random_range(1..largest + 1).min(QUOTA - drawn);
        let messages = (0..len)
            .map(|_| {
                // The draw of old (`orders` with 1 - live), and none for
                // the native producer, which publishes to `orders` only.
                let live = live > 0.0 && !rng.random_bool(1.0 - live);
                MessageOp { live, pad: rng.random_range(0..16) }
            })
            .collect();
        drawn += len;
        ops.push(SendOp { messages, after: Duration::from_millis(rng.random_range(1..30)) });
    }
    ops
}

async fn publisher(rt: SimRuntime, index: u32, ops: Vec<SendOp>, reloads: bool, checker: Checker) {
    let mut rng = rt.rng();
    let mut seq = 0u32;
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let mut client = match Client::connect(&rt).await {
            Ok(c) => c,
            Err(_) => {
                rt.sleep(Duration::from_millis(rng.random_range(20..200))).await;
                continue;
            }
        };
        // Bursts until the operations are done or the connection breaks.
        let broken = loop {
            let Some(op) = ops.next() else { break false };
            if op.messages.is_empty() {
                continue;
            }
            let mut buf = BytesMut::new();
            let mut ids = Vec::new();
            let mut oversize = false;
            {
                let mut o = checker.lock();
                for m in &op.messages {
                    seq += 1;
                    let id = (index, seq);
                    let subject = if m.live { format!("live.{index}") } else { "orders".to_owned() };
                    let payload = encode_payload(id, m.pad);
                    if payload.len() as u64 > client.max_payload {
                        o.oversize.insert(id);
                        oversize = true;
                    }
                    write_pub(&mut buf, subject.as_bytes(), None, &payload);
                    o.sent.insert(id, (subject, true_now(&rt)));
                    ids.push(id);
                }
            }
            write_ping(&mut buf);
            if client.stream.write(buf.freeze()).await.is_err() {
                break true;
            }
            match timeout(&rt, Duration::from_secs(5), client.next_op()).await {
                Ok(Ok(ServerOp::Pong)) => {
                    let mut o = checker.lock();
                    o.acked.extend(ids);
                }
                // The server closes a connection that sent too large a payload.
                Ok(Ok(ServerOp::Err(text))) if reloads && text == "Maximum Payload Violation" => {
                    if !oversize {
                        return checker.fail(format!(
                            "publisher {index}: refused a payload within the announced max_payload {}",
                            client.max_payload
                        ));
                    }
                    break true;
                }
                Ok(Ok(other)) => {
                    return checker.fail(format!("publisher {index}: expected PONG, got {other:?}"));
                }
                Ok(Err(_)) | Err(_) => break true,
            }
            rt.sleep(op.after).await;
        };
        client.stream.close();
        if !broken {
            break;
        }
    }
    checker.lock().publishers_done += 1;
}

async fn subscriber(rt: SimRuntime, index: u64, reloads: bool, checker: Checker) {
    let mut rng = rt.rng();
    let mut session = 0u32;
    loop {
        let mut client = match Client::connect(&rt).await {
            Ok(c) => c,
            Err(_) => {
                rt.sleep(Duration::from_millis(rng.random_range(20..200))).await;
                continue;
            }
        };
        session += 1;
        let key = (index, session);
        let patterns = vec![Pattern::new("orders").expect("valid"), Pattern::new("live.>").expect("valid")];
        checker.lock().sessions.insert(key, Session { patterns, ..Session::default() });
        let mut buf = BytesMut::new();
        write_sub(&mut buf, b"orders", None, b"1");
        write_sub(&mut buf, b"live.>", None, b"2");
        write_ping(&mut buf);
        if client.stream.write(buf.freeze()).await.is_ok() {
            loop {
                match client.next_op().await {
                    Ok(ServerOp::Pong) => {
                        let now = true_now(&rt);
                        let mut o = checker.lock();
                        let s = o.sessions.get_mut(&key).expect("registered");
                        s.live_from.get_or_insert(now);
                    }
                    Ok(ServerOp::Msg(m)) => {
                        let subject = String::from_utf8_lossy(&m.subject).into_owned();
                        let Some(id) = decode_payload(&m.payload) else {
                            return checker.fail(format!("subscriber {index}: a delivery nobody sent: {m:?}"));
                        };
                        let mut o = checker.lock();
                        o.sessions.get_mut(&key).expect("registered").deliveries.push((subject, id));
                    }
                    // A lowered max_pending makes a subscriber slow: the
                    // server closes its connection (the default policy).
                    Ok(ServerOp::Err(text)) if reloads && text == "Slow Consumer" => break,
                    Ok(ServerOp::Err(text)) => {
                        return checker.fail(format!("subscriber {index}: the server sent -ERR '{text}'"));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        checker.lock().sessions.get_mut(&key).expect("registered").ended = true;
        rt.sleep(Duration::from_millis(rng.random_range(10..100))).await;
    }
}

async fn native_producer(rt: SimRuntime, ops: Vec<SendOp>, checker: Checker) {
    let mut rng = rt.rng();
    let orders = Topic::new("orders").expect("valid");
    let mut seq = 0u32;
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let conn = match Connection::connect(&rt, kaelix_sim::node_addr(SERVER, NATIVE_PORT)).await {
            Ok(c) => c,
            Err(_) => {
                rt.sleep(Duration::from_millis(rng.random_range(20..200))).await;
                continue;
            }
        };
        let producer = Producer::new(conn.clone()).with_acks(AckLevel::Committed);
        for op in ops.by_ref() {
            if op.messages.is_empty() {
                continue;
            }
            let mut messages = Vec::new();
            let mut ids = Vec::new();
            {
                let mut o = checker.lock();
                for m in &op.messages {
                    seq += 1;
                    let id = (NATIVE_PRODUCER, seq);
                    let payload = encode_payload(id, m.pad);
                    messages.push(Message::builder().topic(&orders).payload(payload).build().expect("valid"));
                    o.sent.insert(id, ("orders".to_owned(), true_now(&rt)));
                    ids.push(id);
                }
            }
            match producer.send_batch(messages).await {
                Ok(_) => checker.lock().acked.extend(ids),
                Err(_) => break,
            }
            rt.sleep(op.after).await;
        }
        conn.close();
    }
    checker.lock().publishers_done += 1;
}

async fn native_subscriber(rt: SimRuntime, checker: Checker) {
    let mut rng = rt.rng();
    let orders = Pattern::new("orders").expect("valid");
    let mut session = 0u32;
    loop {
        let subscribed = async {
            let conn = Connection::connect(&rt, kaelix_sim::node_addr(SERVER, NATIVE_PORT)).await?;
            let sub = Consumer::new(conn.clone()).subscribe(&orders, NativeSubscribeOptions::default()).await?;
            Ok::<_, kaelix_client::ClientError>((conn, sub))
        };
        let Ok((conn, mut sub)) = subscribed.await else {
            rt.sleep(Duration::from_millis(rng.random_range(20..200))).await;
            continue;
        };
        session += 1;
        let key = (NATIVE_SUBSCRIBER, session);
        let live = Session { patterns: vec![orders.clone()], live_from: Some(true_now(&rt)), ..Session::default() };
        checker.lock().sessions.insert(key, live);
        while let Ok(Some(m)) = sub.next().await {
            let Some(id) = decode_payload(m.payload()) else {
                return checker.fail(format!("native subscriber: a delivery nobody sent: {m}"));
            };
            let subject = m.topic().as_str().to_owned();
            checker.lock().sessions.get_mut(&key).expect("registered").deliveries.push((subject, id));
        }
        conn.close();
        checker.lock().sessions.get_mut(&key).expect("registered").ended = true;
        rt.sleep(Duration::from_millis(rng.random_range(10..100))).await;
    }
}

/// One reconfiguration: after `pause`, the defaults with these limits
/// changed (`None`: the default's).
#[derive(Clone, Debug)]
struct ReloadOp {
    pause: Duration,
    max_payload: Option<usize>,
    max_pending: Option<usize>,
    max_connections: Option<usize>,
}

/// An incarnation's reconfigurations: every 50–400 ms, enough to fill the
/// safety phase. `base` is the default configuration they change.
fn draw_reloads(rng: &mut DetRng, base: &ServerConfig) -> Vec<ReloadOp> {
    crate::workload::filling(
        rng,
        SAFETY,
        |op: &ReloadOp| op.pause,
        |rng| {
            let pause = Duration::from_millis(rng.random_range(50..400));
            // Payloads are 4 to ~25 bytes: some go over.
            let max_payload = rng.random_bool(0.5).then(|| rng.random_range(8..32));
            // At least max_payload (the validator's rule), so only with a
            // lowered max_payload.
            let floor = max_payload.unwrap_or(base.limits.max_payload).max(64);
            let max_pending = (rng.random_bool(0.4) && floor < 4096).then(|| rng.random_range(floor..4096));
            let max_connections = rng.random_bool(0.3).then(|| rng.random_range(1..8));
            ReloadOp { pause, max_payload, max_pending, max_connections }
        },
    )
}

/// Reconfigures the running server as its operations say until the faults
/// stop, then restores `base` (see the module docs).
async fn reloader(
    rt: SimRuntime,
    server: Server<SimRuntime>,
    base: ServerConfig,
    ops: Vec<ReloadOp>,
    checker: Checker,
) {
    let apply = |next: ServerConfig| {
        let l = &next.limits;
        let what = format!(
            "max_payload {} max_pending {} max_connections {}",
            l.max_payload, l.max_pending, l.max_connections
        );
        if let Err(e) = server.reconfigure(&next) {
            checker.fail(format!("reconfiguring ({what}) failed: {e}"));
            return false;
        }
        rt.sim().trace_event(Some(SERVER), "config-reload", 0, || what.clone());
        let mut o = checker.lock();
        o.config_file = Some(next);
        o.reloads += 1;
        true
    };
    for op in ops {
        rt.sleep(op.pause).await;
        if rt.sim().in_liveness() {
            apply(base);
            return;
        }
        let mut next = base.clone();
        let limits = &mut next.limits;
        limits.max_payload = op.max_payload.unwrap_or(limits.max_payload);
        limits.max_pending = op.max_pending.unwrap_or(limits.max_pending);
        limits.max_connections = op.max_connections.unwrap_or(limits.max_connections);
        if !apply(next) {
            return;
        }
    }
    // Fewer operations than the faults last (a cut list): the defaults
    // come back when the faults stop all the same.
    while !rt.sim().in_liveness() {
        rt.sleep(Duration::from_millis(50)).await;
    }
    apply(base);
}

async fn server_node(rt: SimRuntime, seed: u64, planted: Planted, reloads: bool, checker: Checker) {
    let file = {
        let mut o = checker.lock();
        o.incarnations += 1;
        o.config_file.clone()
    };
    let server = match Server::start(rt.clone(), file.unwrap_or_else(|| config(planted))).await {
        Ok(s) => s,
        Err(e) => return checker.fail(format!("the server did not start: {e}")),
    };
    checker.lock().server = Some(server.observer());
    if reloads {
        // Each incarnation's reloader has its own recorded list.
        let base = config(planted);
        let list = RELOADER_LIST + rt.handle().incarnation();
        let ops = crate::workload::recorded(seed, WORKLOAD_LABEL, list, |rng| draw_reloads(rng, &base));
        let task = reloader(rt.clone(), server.clone(), base, ops, checker.clone());
        drop(rt.spawn(Priority::Normal, "reloader", task));
    }
    // Only a fault-free incarnation can do the final read-back.
    while !rt.sim().in_liveness() || checker.lock().publishers_done < PUBLISHERS + 1 {
        rt.sleep(Duration::from_millis(50)).await;
    }
    // Let the subscribers drain what is in flight.
    rt.sleep(Duration::from_secs(2)).await;
    let records = match server.broker().read("orders", 0, 0, usize::MAX) {
        Ok(r) => r,
        Err(e) => return checker.fail(format!("reading orders back failed: {e}")),
    };
    let mut log = Vec::new();
    for m in &records {
        match decode_payload(m.payload()) {
            Some(id) => log.push(id),
            None => return checker.fail(format!("orders holds a record nobody sent: {m}")),
        }
    }
    checker.lock().final_log = Some(log);
    checker.finish();
    server.shutdown(Duration::from_secs(1)).await;
}

fn check(o: &Observed) -> Result<(), String> {
    if let Some(v) = &o.violation {
        return Err(v.clone());
    }
    let log = o.final_log.as_ref().ok_or("no final read-back")?;
    let mut stored = BTreeSet::new();
    let mut last: BTreeMap<u32, u32> = BTreeMap::new();
    for (offset, &id) in log.iter().enumerate() {
        match o.sent.get(&id) {
            Some((subject, _)) if subject == "orders" => {}
            Some((subject, _)) => return Err(format!("orders@{offset} holds {id:?}, published to {subject}")),
            None => return Err(format!("orders@{offset} holds {id:?}, which nobody sent")),
        }
        if !stored.insert(id) {
            return Err(format!("publisher {} seq {} is stored twice (again at offset {offset})", id.0, id.1));
        }
        if let Some(prev) = last.insert(id.0, id.1)
            && prev > id.1
        {
            return Err(format!("orders@{offset}: publisher {} seq {} after seq {prev}", id.0, id.1));
        }
    }
    if let Some(id) = o.oversize.iter().find(|id| stored.contains(id) || o.acked.contains(id)) {
        return Err(format!(
            "publisher {} seq {} was larger than its connection's announced max_payload, yet acknowledged or stored",
            id.0, id.1
        ));
    }
    for id in &o.acked {
        if o.sent[id].0 == "orders" && !stored.contains(id) {
            return Err(format!("publisher {} seq {} was acknowledged (PONG) and is lost", id.0, id.1));
        }
    }
    for ((sub, session), s) in &o.sessions {
        let mut seen = BTreeSet::new();
        let mut last: BTreeMap<(String, u32), u32> = BTreeMap::new();
        for (subject, id) in &s.deliveries {
            match o.sent.get(id) {
                Some((sent_subject, _)) if sent_subject == subject => {}
                Some((sent_subject, _)) => {
                    return Err(format!(
                        "subscriber {sub} session {session}: {id:?} arrived on {subject}, published to {sent_subject}"
                    ));
                }
                None => return Err(format!("subscriber {sub} session {session}: {id:?} was never sent")),
            }
            if !seen.insert(*id) {
                return Err(format!("subscriber {sub} session {session}: {id:?} delivered twice"));
            }
            if o.oversize.contains(id) {
                return Err(format!(
                    "subscriber {sub} session {session}: {id:?} was delivered, though larger than its publisher's announced max_payload"
                ));
            }
            if let Some(prev) = last.insert((subject.clone(), id.0), id.1)
                && prev > id.1
            {
                return Err(format!(
                    "subscriber {sub} session {session}: publisher {} seq {} on {subject} after seq {prev}",
                    id.0, id.1
                ));
            }
        }
        if s.ended {
            continue;
        }
        let Some(live_from) = s.live_from else { continue };
        for id in &o.acked {
            let (subject, sent_at) = &o.sent[id];
            let topic = Topic::new(subject).expect("sent subjects are topics");
            if *sent_at > live_from && s.patterns.iter().any(|p| p.matches(&topic)) && !seen.contains(id) {
                return Err(format!(
                    "subscriber {sub} session {session} (live since {live_from:?}, open to the end) never received \
                     acknowledged publish {id:?} sent at {sent_at:?}"
                ));
            }
        }
    }
    Ok(())
}

impl ServeScenario {
    /// One run; with `meter`, the server's metrics once it ended.
    fn execute(&self, seed: u64, trace: Option<TraceSink>, meter: bool) -> (RunReport, Tallies, Option<RunMetrics>) {
        let mut setup = rng::derive(seed, 0x5e7e_0001);
        let mut profile = FaultProfile::swarm(&mut setup);
        profile.restrict(&TOLERANCE);
        let horizon = kaelix_core::Instant::ZERO + SAFETY;
        let schedule = FaultSchedule::generate(&profile, &TOLERANCE, &[SERVER], &[], horizon, &mut setup);
        let fault_mix = profile.mix();

        let sim = Sim::new(SimConfig { seed, profile, trace_sink: trace, ..SimConfig::new(seed) });
        let checker = Checker::default();
        let planted = self.planted();
        let c = checker.clone();
        let reloads = self.reloads;
        let init = SimRuntime::init(move |rt| server_node(rt, seed, planted, reloads, c.clone()));
        sim.add_node(SERVER, NodeSpec { kind: NodeKind::Server, name: "server".into(), faulty_disk: false, init });
        for p in 0..PUBLISHERS {
            let c = checker.clone();
            let index = u32::try_from(p).expect("few publishers") + 1;
            let ops = crate::workload::recorded(seed, WORKLOAD_LABEL, u64::from(index), |rng| draw_sends(rng, 7, 0.3));
            let init = SimRuntime::init(move |rt| publisher(rt, index, ops.clone(), reloads, c.clone()));
            let spec =
                NodeSpec { kind: NodeKind::Client, name: format!("publisher-{index}"), faulty_disk: false, init };
            sim.add_node(NodeId(100 + p), spec);
        }
        for s in 0..SUBSCRIBERS {
            let c = checker.clone();
            let init = SimRuntime::init(move |rt| subscriber(rt, s + 1, reloads, c.clone()));
            let spec =
                NodeSpec { kind: NodeKind::Client, name: format!("subscriber-{}", s + 1), faulty_disk: false, init };
            sim.add_node(NodeId(200 + s), spec);
        }
        let c = checker.clone();
        let list = u64::from(NATIVE_PRODUCER);
        let ops = crate::workload::recorded(seed, WORKLOAD_LABEL, list, |rng| draw_sends(rng, 4, 0.0));
        let init = SimRuntime::init(move |rt| native_producer(rt, ops.clone(), c.clone()));
        let spec = NodeSpec { kind: NodeKind::Client, name: "native-producer".into(), faulty_disk: false, init };
        sim.add_node(NodeId(150), spec);
        let c = checker.clone();
        let init = SimRuntime::init(move |rt| native_subscriber(rt, c.clone()));
        let spec = NodeSpec { kind: NodeKind::Client, name: "native-subscriber".into(), faulty_disk: false, init };
        sim.add_node(NodeId(250), spec);
        for (at, fault) in schedule.faults {
            sim.schedule_fault(at, fault);
        }
        sim.schedule_liveness(horizon);

        let verdict = checker.run_to_verdict(&sim, BOUND, check);
        let o = checker.lock();
        let (sent, acked) = (o.sent.len() as u64, o.acked.len() as u64);
        let delivered: u64 = o.sessions.values().map(|s| s.deliveries.len() as u64).sum();
        let tallies = vec![
            ("incarnations", o.incarnations),
            ("subscriber sessions", o.sessions.len() as u64),
            ("deliveries", delivered),
            ("reconfigurations", o.reloads),
            ("publishes over the announced max_payload", o.oversize.len() as u64),
        ];
        let metrics = meter.then(|| {
            let mut m = RunMetrics::new();
            if let Some(server) = &o.server {
                m.record_server(SERVER, server);
            }
            m.record_sim_time(sim.now().since_origin().as_secs_f64());
            m
        });
        drop(o);
        (RunReport::conclude(&sim, seed, verdict, fault_mix, (sent, acked)), tallies, metrics)
    }
}

impl Scenario for ServeScenario {
    fn name(&self) -> &'static str {
        self.name
    }

    fn workload_units(&self) -> (&'static str, &'static str) {
        ("messages published", "acknowledged (PONG or committed ack)")
    }

    fn description(&self) -> &'static str {
        self.description
    }

    fn planted(&self) -> Planted {
        crate::broker_backpressure::planted(self.planted)
    }

    fn run(&self, seed: u64, trace: Option<TraceSink>) -> RunReport {
        self.execute(seed, trace, false).0
    }

    fn run_tallied(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies) {
        let (report, tallies, _) = self.execute(seed, trace, false);
        (report, tallies)
    }

    fn run_metered(&self, seed: u64, trace: Option<TraceSink>) -> (RunReport, Tallies, Option<RunMetrics>) {
        self.execute(seed, trace, true)
    }
}

//! The NATS front end: the accept loop and each connection's driver.
//!
//! A connection is driven by one task that reads, feeds the sans-IO
//! [`session::Session`] and performs its [`session::Action`]s in order; a
//! writer task drains the connection's [`Outbound`] buffer; each
//! subscription has a pump task that moves messages from its broker
//! stream into that buffer (as `MSG`, or `HMSG` when the message has
//! headers and the client negotiated them).
//!
//! **Storage barrier.** A publish to a subject that names a stored topic
//! is performed without waiting for its sync; the connection remembers the
//! highest offset it published per partition, and a `PING` is answered
//! only once those are acknowledged. So a NATS client's `flush()` (a
//! PING/PONG round trip) is a durability barrier, and publishing does not
//! pay one sync per message. In verbose mode each `+OK` waits for its own
//! publish.
//!
//! **Slow consumers.** Appends that would take a connection's unsent bytes
//! past `max_pending` are refused; the subscription's pump then applies the
//! policy: `disconnect` sends `-ERR 'Slow Consumer'` and closes the
//! connection, `drop` drops the message. Either way the event is counted,
//! logged with the client and subject, and announced on
//! [`SLOW_CONSUMER_ADVISORY`]. Publishers and other subscribers never wait
//! for a slow connection.
//!
//! **Delivery is asynchronous to the publisher.** A `PONG` means the
//! connection's earlier publishes were routed (and stored, where the
//! subject is a topic); the pumps of the matching subscriptions move them
//! into their connections' buffers right after, not necessarily before the
//! `PONG` is written. Each subscription sees each publisher's messages in
//! order; two subscriptions of one connection are pumped independently.
//!
//! `CONNECT.echo = false`: every publish carries its connection as the
//! message's origin (in memory only), and that connection's pumps skip
//! messages of their own origin.
//!
//! Not supported yet: nkey/JWT logins (`sig`, `jwt`, `nkey`) are refused as
//! unknown users; TLS-first handshakes (the client must read `INFO` first).

pub mod session;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::future::{Either, select};
use kaelix_broker::message::Message;
use kaelix_broker::topic::Topic;
use kaelix_broker::{BrokerError, Routed, Strategy, SubscribeOptions, Subscription};
use kaelix_core::planted::PlantedBug;
use kaelix_core::runtime::{ByteListener, ByteStream, Priority, Runtime, SpawnRefused, TaskHandle};
use kaelix_core::time::Duration;
use kaelix_nats::{Info, write_err, write_hmsg, write_info, write_msg, write_ok, write_ping, write_pong};

use self::session::{Action, Reply, Session};
use crate::auth::Rules;
use crate::config::SlowConsumerPolicy;
use crate::outbound::Outbound;
use crate::shutdown::{Signal, unless};
use crate::tls::TlsStream;
use crate::trace::FrontEnd;
use crate::{ConnectionSlot, Shared};

/// The subject slow-consumer advisories are published on (relayed to
/// whoever subscribes; a JSON object naming the client, subject and policy).
pub const SLOW_CONSUMER_ADVISORY: &str = "$SYS.KAELIX.ADVISORY.SLOW_CONSUMER";

/// Messages a subscription's broker stream holds for its pump; past it the
/// oldest are dropped and the connection is a slow consumer.
pub const SUBSCRIPTION_BUFFER: usize = 16 * 1024;

/// Operations the reader performs before it lets other tasks (the pumps
/// delivering what it publishes) run: a client flooding one connection
/// must not starve the deliveries on its worker.
const OPS_PER_YIELD: usize = 64;

/// The version reported in `INFO` (clients gate features on it: headers
/// need 2.2 or later).
pub const NATS_COMPAT_VERSION: &str = "2.11.0";

/// Accepts NATS connections until the server stops.
pub(crate) async fn accept_loop<R: Runtime>(shared: Arc<Shared<R>>, mut listener: R::ByteListener) {
    let local = listener.local_addr();
    loop {
        let Some(accepted) = unless(&shared.stopping, listener.accept()).await else { break };
        match accepted {
            Ok(stream) => match shared.open_connection() {
                Some((slot, stop)) => {
                    let task = serve_connection(shared.clone(), slot, stop, local, stream.clone());
                    if let Err(refused) = shared.rt.try_spawn(Priority::High, "nats-connection", task) {
                        // Its slot went with the dropped task.
                        tracing::warn!(peer = %stream.peer_addr(), "refusing a NATS connection: {refused}");
                        let mut buf = BytesMut::new();
                        write_err(&mut buf, "server is at its task capacity");
                        let _ = stream.write(buf.freeze()).await;
                        stream.close();
                    }
                }
                None => {
                    tracing::warn!(peer = %stream.peer_addr(), "refusing a NATS connection: maximum connections reached");
                    let mut buf = BytesMut::new();
                    write_err(&mut buf, "maximum connections exceeded");
                    let _ = stream.write(buf.freeze()).await;
                    stream.close();
                }
            },
            Err(e) => {
                // Accept errors are transient (descriptors exhausted, a
                // connection reset before accept): pause instead of spinning.
                tracing::warn!(error = %e, "accepting a NATS connection failed");
                shared.rt.sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tracing::info!(addr = %local, "NATS listener closed");
}

/// One subscription's pump and its delivery limit.
struct Pump<R: Runtime> {
    task: R::Handle<()>,
    /// Total deliveries after which the pump ends (`u64::MAX`: none).
    limit: Arc<AtomicU64>,
}

/// Who a connection is, for logs and advisories.
#[derive(Clone, Debug)]
struct ClientId {
    id: u64,
    peer: SocketAddr,
}

async fn serve_connection<R: Runtime>(
    shared: Arc<Shared<R>>,
    slot: ConnectionSlot<R>,
    stop: Signal,
    local: SocketAddr,
    stream: R::ByteStream,
) {
    let id = slot.id;
    let limits = shared.config().limits.clone();
    let peer = stream.peer_addr();
    let info = Info {
        server_id: shared.server_id.clone(),
        server_name: shared.config().server_name.clone(),
        version: NATS_COMPAT_VERSION.to_owned(),
        proto: 1,
        go: None,
        host: local.ip().to_string(),
        port: local.port(),
        headers: true,
        max_payload: limits.max_payload as u64,
        client_id: id,
        client_ip: Some(peer.ip().to_string()),
        auth_required: shared.auth().required(),
        tls_required: shared.tls.is_some(),
        tls_available: shared.tls.is_some(),
        ..Info::default()
    };
    // INFO goes out in plaintext; with TLS the client starts its handshake
    // once it has read `tls_required`.
    let mut first = BytesMut::new();
    write_info(&mut first, &info);
    let info_len = first.len() as u64;
    if stream.write(first.freeze()).await.is_ok() {
        shared.stats.nats.bytes_out.fetch_add(info_len, Ordering::Relaxed);
        match &shared.tls {
            None => drive(&shared, id, &stop, stream.clone()).await,
            Some(config) => match TlsStream::accept(stream.clone(), config.clone()) {
                Ok(tls) => drive(&shared, id, &stop, tls).await,
                Err(e) => tracing::warn!(client = id, error = %e, "TLS session refused"),
            },
        }
    }
    stream.close();
    drop(slot);
}

/// Serves one connection (after `INFO`) until it closes.
async fn drive<R: Runtime, S: ByteStream>(shared: &Arc<Shared<R>>, id: u64, stop: &Signal, stream: S) {
    let limits = shared.config().limits.clone();
    let client = ClientId { id, peer: stream.peer_addr() };
    tracing::debug!(client = id, peer = %client.peer, "NATS connection open");
    let outbound = Outbound::new(limits.max_pending);
    let writer = {
        let (outbound, stream, shared) = (outbound.clone(), stream.clone(), shared.clone());
        shared.rt.clone().try_spawn(Priority::High, "nats-writer", async move {
            outbound.run_writer(stream, &shared.stats.nats.bytes_out).await
        })
    };
    let writer = match writer {
        Ok(writer) => writer,
        Err(refused) => {
            tracing::warn!(client = id, peer = %client.peer, "closing a NATS connection: {refused}");
            let mut buf = BytesMut::new();
            write_err(&mut buf, "server is at its task capacity");
            let _ = stream.write(buf.freeze()).await;
            return;
        }
    };
    let session_auth = shared.auth();
    let mut session = Session::new(shared.rt.now(), limits.clone(), session_auth.clone());
    let mut conn = Conn {
        shared: shared.clone(),
        client: client.clone(),
        outbound: outbound.clone(),
        stop: stop.clone(),
        pumps: BTreeMap::new(),
        unacknowledged: BTreeMap::new(),
        done: Arc::new(std::sync::Mutex::new(Vec::new())),
    };
    let reason = 'serve: loop {
        let mut performed = 0;
        while let Some(action) = session.poll_output() {
            if let Some(reason) = conn.perform(&mut session, action).await {
                break 'serve reason;
            }
            performed += 1;
            if performed % OPS_PER_YIELD == 0 {
                yield_now().await;
            }
        }
        for sid in conn.take_done() {
            conn.pumps.remove(&sid);
            session.handle_subscription_done(&sid);
        }
        if outbound.is_broken() {
            break 'serve "write failed".to_owned();
        }
        let deadline = session.poll_timeout();
        let event = {
            let read = std::pin::pin!(stream.read());
            let stopped = std::pin::pin!(stop.raised());
            let timer = std::pin::pin!(async {
                match deadline {
                    Some(d) => shared.rt.sleep_until(d).await,
                    None => std::future::pending().await,
                }
            });
            match select(read, select(stopped, timer)).await {
                Either::Left((read, _)) => Event::Read(read),
                Either::Right((Either::Left(_), _)) => Event::Stop,
                Either::Right((Either::Right(_), _)) => Event::Timer,
            }
        };
        match event {
            Event::Read(Ok(Some(chunk))) => {
                shared.stats.nats.bytes_in.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                session.handle_bytes(shared.rt.now(), &chunk);
                if let Some(login) = session.take_login() {
                    // Registered first, then compared with the rules in
                    // force: a reconfiguration either sees this login or
                    // swapped the rules before, and then it is checked here.
                    shared.logins.lock().unwrap_or_else(|e| e.into_inner()).insert(id, login.clone());
                    let current = shared.auth();
                    if !Arc::ptr_eq(&current, &session_auth)
                        && current.login(login.token.as_deref(), login.user.as_deref(), login.pass.as_deref())
                            != Ok(login.permissions)
                    {
                        shared.stats.revoked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        session.revoke();
                    }
                }
            }
            Event::Read(Ok(None)) => break 'serve "client closed the connection".to_owned(),
            Event::Read(Err(e)) => break 'serve format!("read failed: {e}"),
            Event::Timer => session.handle_timeout(shared.rt.now()),
            Event::Stop => {
                // Shutdown or slow consumer: what was read is answered
                // (publishes are stored before the close), nothing more.
                // A login a reload no longer permits is told why.
                let revoked = shared.revoked.lock().unwrap_or_else(|e| e.into_inner()).contains(&id);
                if revoked {
                    session.revoke();
                }
                while let Some(action) = session.poll_output() {
                    if conn.perform(&mut session, action).await.is_some() {
                        break;
                    }
                }
                break 'serve if revoked {
                    "login no longer permitted after a configuration reload"
                } else if shared.stopping.is_raised() {
                    "server shutting down"
                } else {
                    "closed by the server"
                }
                .to_owned();
            }
        }
    };
    tracing::debug!(client = id, peer = %client.peer, reason, "NATS connection closed");
    for pump in conn.pumps.values() {
        pump.task.abort();
    }
    conn.pumps.clear();
    outbound.close();
    // The writer sends what is queued (the final -ERR among it), then closes.
    let _ = kaelix_core::runtime::timeout(&shared.rt, Duration::from_secs(5), writer).await;
    stream.close();
}

/// Returns `Pending` once (waking itself), so the executor runs other
/// ready tasks before this one goes on.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

enum Event<E> {
    Read(Result<Option<Bytes>, E>),
    Stop,
    Timer,
}

/// The driver side of one connection.
struct Conn<R: Runtime> {
    shared: Arc<Shared<R>>,
    client: ClientId,
    outbound: Outbound,
    stop: Signal,
    pumps: BTreeMap<Bytes, Pump<R>>,
    /// Highest offset published per stored partition and not yet known
    /// acknowledged: what the next `PONG` waits for.
    unacknowledged: BTreeMap<(Topic, u32), u64>,
    /// Sids whose pumps ended by reaching their limit.
    done: Arc<std::sync::Mutex<Vec<Bytes>>>,
}

impl<R: Runtime> Conn<R> {
    fn take_done(&self) -> Vec<Bytes> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn reply(&self, reply: &Reply) {
        self.outbound.append_control(|buf| match reply {
            Reply::Ok => write_ok(buf),
            Reply::Ping => write_ping(buf),
            Reply::Pong => write_pong(buf),
            Reply::Err(text) => write_err(buf, text),
            Reply::PermissionViolation { what, subject } => {
                write_err(buf, &format!("Permissions Violation for {what} to \"{subject}\""));
            }
        });
    }

    /// Performs one action; `Some(reason)` closes the connection.
    async fn perform(&mut self, session: &mut Session, action: Action) -> Option<String> {
        match action {
            Action::Reply(r) => self.reply(&r),
            Action::Publish { topic, reply, headers, payload, ok } => {
                self.publish(session, topic, reply, headers, payload, ok).await;
            }
            Action::Subscribe { sid, pattern, queue, filter } => {
                // A deep buffer, and drops in it are a slow consumer like a
                // full outbound buffer (see PumpTask::run): never silent.
                let options = SubscribeOptions {
                    queue_group: queue,
                    strategy: Some(Strategy::DropOldest { capacity: SUBSCRIPTION_BUFFER }),
                    ..SubscribeOptions::default()
                };
                match self.shared.broker.subscribe(pattern.as_str(), options) {
                    Ok(sub) => {
                        if let Err(refused) =
                            self.start_pump(session, sid.clone(), pattern.as_str().to_owned(), sub, filter)
                        {
                            // The broker subscription went with the dropped
                            // pump; the connection keeps its others.
                            tracing::warn!(client = self.client.id, "subscribe refused: {refused}");
                            session.handle_subscription_done(&sid);
                            self.reply(&Reply::Err("Subscription Refused: server is at its task capacity"));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(client = self.client.id, error = %e, "subscribe refused");
                        session.handle_subscription_done(&sid);
                        self.reply(&Reply::Err(match e {
                            BrokerError::Registry(_) => "Maximum Subscriptions Exceeded",
                            _ => "Invalid Subject",
                        }));
                    }
                }
            }
            Action::Unsubscribe { sid, max } => match max {
                None => {
                    if let Some(pump) = self.pumps.remove(&sid) {
                        pump.task.abort();
                    }
                }
                Some(n) => {
                    if let Some(pump) = self.pumps.get(&sid) {
                        pump.limit.store(n, Ordering::Release);
                    }
                }
            },
            Action::PongWhenStored => {
                let planted = self.shared.config().planted.is_on(PlantedBug::ServerPongBeforeStored);
                for ((topic, partition), offset) in std::mem::take(&mut self.unacknowledged) {
                    if !planted {
                        self.shared.broker.wait_acknowledged(&topic, partition, offset).await;
                    }
                }
                self.reply(&Reply::Pong);
            }
            Action::Close { error, reason } => {
                if let Some(text) = error {
                    self.reply(&Reply::Err(text));
                    self.shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    if text == "Stale Connection" {
                        self.shared.stats.stale_closes.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::info!(client = self.client.id, peer = %self.client.peer, reason, "closing NATS connection");
                }
                return Some(reason);
            }
        }
        None
    }

    async fn publish(
        &mut self,
        session: &Session,
        topic: Topic,
        reply: Option<Topic>,
        headers: Option<Bytes>,
        payload: Bytes,
        ok: bool,
    ) {
        let mut builder = Message::builder().topic(topic.clone()).payload(payload).origin(self.client.id);
        if let Some(r) = &reply {
            builder = builder.reply_to(r.clone());
        }
        if let Some(block) = &headers {
            match nats_headers_to_broker(block, builder) {
                Ok(b) => builder = b,
                Err(text) => return self.reply(&Reply::Err(text)),
            }
        }
        let mut message = match builder.build() {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(client = self.client.id, error = %e, "publish refused");
                return self.reply(&Reply::Err("Invalid Message"));
            }
        };
        // Traced or not is decided here, before any span exists (see
        // `crate::trace`); the request span lives until this returns.
        let mut trace = crate::trace::begin_publish(FrontEnd::Nats, topic.as_str(), Some(&message));
        if let Some(t) = &trace {
            t.inject(&mut message);
        }
        let routed = self.shared.broker.route_unacknowledged(message).await;
        if let Some(t) = &mut trace {
            t.routed(routed.is_ok());
        }
        match routed {
            Ok(Routed::Stored(p)) => {
                if ok {
                    self.shared.broker.wait_acknowledged(&topic, p.partition, p.offset).await;
                    self.reply(&Reply::Ok);
                } else if !p.acknowledged {
                    let slot = self.unacknowledged.entry((topic, p.partition)).or_insert(p.offset);
                    *slot = (*slot).max(p.offset);
                }
            }
            Ok(Routed::Relayed { buffered_for }) => {
                if ok {
                    self.reply(&Reply::Ok);
                }
                let options = session.options();
                if buffered_for == 0
                    && options.no_responders
                    && options.headers
                    && let Some(reply) = &reply
                    && let Some(sid) = session.sid_matching(reply)
                {
                    // A request nobody can answer: tell the requester at
                    // once (status 503) instead of letting it time out.
                    let block = b"NATS/1.0 503\r\n\r\n";
                    self.outbound
                        .append_control(|buf| write_hmsg(buf, reply.as_str().as_bytes(), sid, None, block, b""));
                }
            }
            // A plugin chain dropped or dead-lettered it: accounted for,
            // as a publish to a subject nobody listens on is (core NATS
            // tells the publisher nothing more).
            Err(BrokerError::Intercepted(disposition)) => {
                tracing::debug!(client = self.client.id, %disposition, "publish intercepted by a plugin");
                if ok {
                    self.reply(&Reply::Ok);
                }
            }
            Err(e) => {
                tracing::warn!(client = self.client.id, error = %e, "publish failed");
                self.reply(&Reply::Err(match e {
                    BrokerError::ShutDown => "Server Shutting Down",
                    _ => "Publish Failed",
                }));
            }
        }
    }

    fn start_pump(
        &mut self,
        session: &Session,
        sid: Bytes,
        subject: String,
        sub: Subscription<R>,
        filter: Rules,
    ) -> Result<(), SpawnRefused> {
        let limit = Arc::new(AtomicU64::new(u64::MAX));
        let pump = PumpTask {
            shared: self.shared.clone(),
            client: self.client.clone(),
            outbound: self.outbound.clone(),
            stop: self.stop.clone(),
            sid: sid.clone(),
            subject,
            headers: session.options().headers,
            // `echo: false`: this connection's own publishes are not
            // delivered back to it.
            skip_origin: (!session.options().echo).then_some(self.client.id),
            limit: limit.clone(),
            done: self.done.clone(),
            filter,
        };
        let task = self.shared.rt.try_spawn(Priority::High, "nats-subscription", pump.run(sub))?;
        self.pumps.insert(sid, Pump { task, limit });
        Ok(())
    }
}

/// Moves one subscription's messages into the connection's buffer.
struct PumpTask<R: Runtime> {
    shared: Arc<Shared<R>>,
    client: ClientId,
    outbound: Outbound,
    /// Raised to close the connection (slow consumer, `disconnect`).
    stop: Signal,
    sid: Bytes,
    subject: String,
    headers: bool,
    /// Messages published by this connection are skipped (`echo: false`).
    skip_origin: Option<u64>,
    limit: Arc<AtomicU64>,
    done: Arc<std::sync::Mutex<Vec<Bytes>>>,
    /// The user's subscribe rules: denied subjects are not delivered.
    filter: Rules,
}

impl<R: Runtime> PumpTask<R> {
    async fn run(self, mut sub: Subscription<R>) {
        let mut delivered = 0u64;
        let mut dropping = false;
        let mut broker_drops = 0u64;
        while let Some(first) = sub.next().await {
            // Messages the broker stream dropped because this pump fell
            // behind: the same slow consumer as a full outbound buffer.
            let drops = sub.drops().map_or(0, |d| d.total());
            if drops > broker_drops {
                let lost = drops - broker_drops;
                broker_drops = drops;
                if self.slow_consumer(&first, self.outbound.pending(), lost, dropping) {
                    return;
                }
                dropping = true;
            }
            let mut next = Some(first);
            // Everything already buffered goes out in one pass (one wake of
            // the writer for a burst).
            while let Some(message) = next {
                if delivered >= self.limit.load(Ordering::Acquire) {
                    self.done.lock().unwrap_or_else(|e| e.into_inner()).push(self.sid.clone());
                    return;
                }
                let echo = self.skip_origin.is_some() && message.origin() == self.skip_origin;
                if echo || (!self.filter.is_open() && !self.filter.delivers(message.topic())) {
                    next = sub.try_next();
                    continue;
                }
                // A delivery of a traced message is a span of its trace.
                let _deliver = crate::trace::begin_delivery(FrontEnd::Nats, &message);
                let block = if self.headers && !message.headers().is_empty() {
                    Some(broker_headers_to_nats(&message))
                } else {
                    None
                };
                let subject = message.topic().as_str().as_bytes();
                let reply = message.reply_to().map(|r| r.as_str().as_bytes());
                let len = 48
                    + subject.len()
                    + self.sid.len()
                    + reply.map_or(0, <[u8]>::len)
                    + message.payload().len()
                    + block.as_ref().map_or(0, Bytes::len);
                let appended = self.outbound.append(len, |buf| match &block {
                    Some(b) => write_hmsg(buf, subject, &self.sid, reply, b, message.payload()),
                    None => write_msg(buf, subject, &self.sid, reply, message.payload()),
                });
                match appended {
                    Ok(true) => {
                        delivered += 1;
                        dropping = false;
                    }
                    Ok(false) => return,
                    Err(full) => {
                        if self.slow_consumer(&message, full.pending, 1, dropping) {
                            return;
                        }
                        dropping = true;
                    }
                }
                if delivered >= self.limit.load(Ordering::Acquire) {
                    self.done.lock().unwrap_or_else(|e| e.into_inner()).push(self.sid.clone());
                    return;
                }
                next = sub.try_next();
            }
        }
    }

    /// Applies the slow-consumer policy; `true` ends the pump.
    fn slow_consumer(&self, message: &Message, pending: usize, lost: u64, already_dropping: bool) -> bool {
        let policy = self.shared.config().limits.slow_consumer;
        let stats = &self.shared.stats;
        match policy {
            SlowConsumerPolicy::Disconnect => {
                stats.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
                self.outbound.append_control(|buf| write_err(buf, "Slow Consumer"));
                self.stop.raise();
            }
            SlowConsumerPolicy::Drop => {
                stats.slow_consumer_drops.fetch_add(lost, Ordering::Relaxed);
            }
        }
        if !already_dropping {
            // Once per episode (a run of refused appends), not per message.
            tracing::warn!(
                client = self.client.id,
                peer = %self.client.peer,
                subscription = %self.subject,
                subject = %message.topic(),
                pending,
                ?policy,
                "slow consumer"
            );
            let advisory = format!(
                "{{\"type\":\"slow_consumer\",\"client_id\":{},\"peer\":\"{}\",\"subscription\":{:?},\"subject\":{:?},\"pending_bytes\":{},\"policy\":\"{}\"}}",
                self.client.id,
                self.client.peer,
                self.subject,
                message.topic().as_str(),
                pending,
                match policy {
                    SlowConsumerPolicy::Disconnect => "disconnect",
                    SlowConsumerPolicy::Drop => "drop",
                }
            );
            if let Ok(m) = Message::builder().topic(SLOW_CONSUMER_ADVISORY).payload(advisory).build() {
                // Relayed (never blocks on a stored topic's sync); a full
                // advisory subscriber just misses it.
                let _ = self.shared.broker.try_route(m);
            }
        }
        policy == SlowConsumerPolicy::Disconnect
    }
}

/// Copies a NATS header block into the message's headers. Repeated names
/// are joined with ", " (HTTP's rule for combining field lines); the
/// status line of a client's block is not kept.
fn nats_headers_to_broker(
    block: &[u8],
    mut builder: kaelix_broker::message::MessageBuilder,
) -> Result<kaelix_broker::message::MessageBuilder, &'static str> {
    let headers = kaelix_nats::Headers::decode(block).map_err(|_| "Invalid Headers")?;
    let mut merged: BTreeMap<&str, String> = BTreeMap::new();
    let mut order = Vec::new();
    for (name, value) in headers.iter() {
        match merged.get_mut(name) {
            Some(v) => {
                v.push_str(", ");
                v.push_str(value);
            }
            None => {
                order.push(name);
                merged.insert(name, value.to_owned());
            }
        }
    }
    for name in order {
        let value = merged.remove(name).expect("inserted above");
        builder = builder.header(name, value);
    }
    Ok(builder)
}

/// The message's headers as a NATS header block.
fn broker_headers_to_nats(message: &Message) -> Bytes {
    let mut headers = kaelix_nats::Headers::new();
    for (name, value) in message.headers().iter() {
        // Values that are not UTF-8 cannot be NATS header values; they are
        // left out rather than mangled.
        if let Ok(v) = std::str::from_utf8(value) {
            let _ = headers.append(name, v);
        }
    }
    headers.to_bytes()
}

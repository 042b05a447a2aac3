//! The NATS front end: the accept loop and each connection's driver.
//!
//! A connection is driven by one task that reads, feeds the sans-IO
//! [`session::Session`] and performs its [`session::Action`]s in order; a
//! writer task drains the connection's [`Outbound`] buffer. Subscriptions
//! cost no task: every subscription of a connection is a subscription on
//! the connection's one broker sink ([`delivery::ConnSink`]), and the
//! broker, while routing a publish, has the sink encode the message into
//! that buffer (as `MSG`, or `HMSG` when the message has headers and the
//! client negotiated them). An idle subscription is a small record in the
//! broker and its routing-index entry.
//!
//! **Storage barrier.** A publish to a subject that names a stored topic
//! is performed without waiting for its sync; the connection remembers the
//! highest offset it published per partition, and a `PING` is answered
//! only once those are acknowledged. So a NATS client's `flush()` (a
//! PING/PONG round trip) is a durability barrier, and publishing does not
//! pay one sync per message. In verbose mode each `+OK` waits for its own
//! publish.
//!
//! **Replicated publishes in flight.** A publish to a replicated topic is
//! proposed at once (so one connection's records are proposed in the
//! order it sent them) and its outcome — the commit, or why it is refused
//! or unknown — is awaited later: the connection keeps up to
//! [`MAX_IN_FLIGHT`] of them in an ordered queue and settles them oldest
//! first (the `+OK` or `-ERR` each one's outcome calls for) while it waits
//! for input, and all of them before it writes any later reply. So replies
//! keep publish order, a `PONG` follows the commit of every publish before
//! its `PING`, and a client with a window of publishes keeps that many in
//! Raft instead of one.
//!
//! **Slow consumers.** Appends that would take a connection's unsent bytes
//! past `max_pending` are refused; the sink then applies the policy:
//! `disconnect` sends `-ERR 'Slow Consumer'` and closes the connection,
//! `drop` drops the message. Either way the event is counted, logged with
//! the client and subject, and announced on [`SLOW_CONSUMER_ADVISORY`]
//! (the last two by this connection's driver, outside the broker's lock).
//! Nothing is dropped anywhere else: the broker buffers nothing for a
//! NATS subscription. Publishers and other subscribers never wait for a
//! slow connection.
//!
//! **Delivery happens inside the publish.** A message is in every matching
//! connection's buffer when its publish returns, so a `PONG` follows the
//! deliveries of the publishes before its `PING`, and each connection sees
//! each publisher's messages in order, over all its subscriptions.
//!
//! **Publishing cheaply.** A `PUB` to a subject that no subscription,
//! stored topic or plugin chain is interested in is skipped before any
//! message is built (as core NATS drops it): the connection remembers the
//! broker's answer for its last subject with the broker's interest epoch,
//! and while the epoch stands — every new subscription, topic or hook moves
//! it — a repeat costs one atomic load (`Broker::interest`). The other
//! non-verbose `PUB`s of one read are gathered and routed in bursts, each
//! burst under one broker lock and one clock reading
//! (`Broker::try_route_many`); any other operation routes the burst first,
//! so replies keep their order.
//!
//! `CONNECT.echo = false`: every publish carries its connection as the
//! message's origin (in memory only), and that connection's sink skips
//! messages of their own origin.
//!
//! Not supported yet: nkey/JWT logins (`sig`, `jwt`, `nkey`) are refused as
//! unknown users; TLS-first handshakes (the client must read `INFO` first).

pub mod delivery;
pub mod session;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures_util::future::{Either, select};
use kaelix_broker::message::Message;
use kaelix_broker::registry::RegistryError;
use kaelix_broker::topic::{Pattern, Topic};
use kaelix_broker::{BrokerError, Pipelined, Proposed, Routed, SinkHandle};
use kaelix_core::planted::PlantedBug;
use kaelix_core::runtime::{ByteListener, ByteStream, Priority, Runtime};
use kaelix_core::time::Duration;
use kaelix_nats::{Info, write_err, write_hmsg, write_info, write_ok, write_ping, write_pong};

use self::delivery::{ConnSink, Event, ODD_SID, numeric_tag};
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

/// Operations the reader performs before it lets other tasks (the writers
/// sending what it publishes, other connections) run: a client flooding
/// one connection must not starve the rest of its worker.
const OPS_PER_YIELD: usize = 64;

/// Replicated publishes of one connection whose outcome may be awaited
/// at once (see `Conn::in_flight`); past it, the oldest is waited for.
const MAX_IN_FLIGHT: usize = 1024;

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

/// Who a connection is, for logs and advisories.
#[derive(Clone, Debug)]
pub struct ClientId {
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
        subscriptions: None,
        odd_tags: BTreeMap::new(),
        next_odd_tag: 0,
        max_subscriptions: limits.max_subscriptions,
        unacknowledged: BTreeMap::new(),
        interest: None,
        unheard: 0,
        burst: VecDeque::new(),
        burst_routing: VecDeque::new(),
        burst_routed: Vec::new(),
        in_flight: VecDeque::new(),
    };
    let reason = 'serve: loop {
        let mut performed = 0;
        let batching = conn.may_batch();
        while let Some(action) = session.poll_output() {
            match action {
                // Gathered and routed together; any other action routes
                // what was gathered first (the order is the protocol's).
                Action::Publish { topic, reply, headers, payload, ok: false } if batching => {
                    conn.queue_publish(&session, topic, reply, headers, payload).await;
                }
                action => {
                    conn.flush_publishes(&session).await;
                    if let Some(reason) = conn.perform(&mut session, action).await {
                        break 'serve reason;
                    }
                }
            }
            performed += 1;
            if performed % OPS_PER_YIELD == 0 {
                conn.flush_publishes(&session).await;
                yield_now().await;
            }
        }
        conn.flush_publishes(&session).await;
        conn.handle_events();
        conn.count_unheard();
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
            // The sink's slow-consumer and ended-subscription notices.
            let subscriptions = &conn.subscriptions;
            let noticed = std::pin::pin!(async move {
                match subscriptions {
                    Some(subs) => subs.sink.event().await,
                    None => std::future::pending().await,
                }
            });
            // The oldest replicated publish's outcome (settled in order).
            let oldest = conn.in_flight.front_mut().map(|(_, proposed)| proposed);
            let settled = std::pin::pin!(async move {
                match oldest {
                    Some(proposed) => proposed.await,
                    None => std::future::pending().await,
                }
            });
            match select(read, select(stopped, select(timer, select(noticed, settled)))).await {
                Either::Left((read, _)) => Wake::Read(read),
                Either::Right((Either::Left(_), _)) => Wake::Stop,
                Either::Right((Either::Right((Either::Left(_), _)), _)) => Wake::Timer,
                Either::Right((Either::Right((Either::Right((Either::Left(_), _)), _)), _)) => Wake::Notice,
                Either::Right((Either::Right((Either::Right((Either::Right((outcome, _)), _)), _)), _)) => {
                    Wake::Settled(outcome)
                }
            }
        };
        match event {
            Wake::Read(Ok(Some(chunk))) => {
                shared.stats.nats.bytes_in.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                session.handle_chunk(shared.rt.now(), chunk);
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
            Wake::Read(Ok(None)) => break 'serve "client closed the connection".to_owned(),
            Wake::Read(Err(e)) => break 'serve format!("read failed: {e}"),
            Wake::Timer => session.handle_timeout(shared.rt.now()),
            Wake::Notice => {}
            Wake::Settled(outcome) => {
                let (routing, _) = conn.in_flight.pop_front().expect("the outcome of the oldest");
                conn.routed(&session, routing, outcome.map(Routed::Stored)).await;
            }
            Wake::Stop => {
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
                conn.settle(&session).await;
                // A slow consumer closed by its policy is logged and
                // announced before it goes.
                conn.handle_events();
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
    conn.count_unheard();
    tracing::debug!(client = id, peer = %client.peer, reason, "NATS connection closed");
    // Its subscriptions leave the broker with the sink.
    conn.subscriptions = None;
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

enum Wake<E> {
    Read(Result<Option<Bytes>, E>),
    Stop,
    Timer,
    Notice,
    /// The oldest in-flight replicated publish's outcome.
    Settled(Result<kaelix_broker::Published, BrokerError>),
}

/// A connection's subscriptions: its sink and the broker's handle on it.
struct Subscriptions<R: Runtime> {
    sink: Arc<ConnSink<R>>,
    handle: SinkHandle<R>,
}

/// The driver side of one connection.
struct Conn<R: Runtime> {
    shared: Arc<Shared<R>>,
    client: ClientId,
    outbound: Outbound,
    stop: Signal,
    /// Opened at the first subscription (the CONNECT options are known then).
    subscriptions: Option<Subscriptions<R>>,
    /// Tags of the sids that are not their own tag (see [`delivery`]).
    odd_tags: BTreeMap<Bytes, u64>,
    /// The next odd sid's tag (without [`ODD_SID`]).
    next_odd_tag: u64,
    /// Subscriptions allowed at once (0: no limit).
    max_subscriptions: usize,
    /// Highest offset published per stored partition and not yet known
    /// acknowledged: what the next `PONG` waits for.
    unacknowledged: BTreeMap<(Topic, u32), u64>,
    /// The broker's last answer about the interest in a subject (see
    /// `Broker::interest`): the subject, the epoch the answer holds for,
    /// and whether anything was interested.
    interest: Option<(Topic, u64, bool)>,
    /// Publishes skipped for lack of interest, not yet counted by the broker.
    unheard: u64,
    /// Non-verbose publishes gathered to be routed together, and what
    /// follows each one's routing (see [`Conn::queue_publish`]).
    burst: VecDeque<Message>,
    burst_routing: VecDeque<Routing>,
    /// Reused for the results of routing a burst.
    burst_routed: Vec<Result<Routed, BrokerError>>,
    /// Replicated publishes proposed and not yet settled, oldest first,
    /// with what follows each one's outcome (at most [`MAX_IN_FLIGHT`]).
    /// Every reply written after a publish waits until they are settled
    /// ([`Conn::settle`]), so replies keep publish order.
    in_flight: VecDeque<(Routing, Proposed<R>)>,
}

impl<R: Runtime> Conn<R> {
    /// Whether a publish to `topic` would reach nothing (no subscription,
    /// no stored topic, no hook: see `Broker::interest`), so that it can be
    /// skipped. Asks the broker only when the subject changed or the
    /// broker's interest epoch moved since it last asked: a publisher
    /// repeating a subject nobody listens to costs one atomic load.
    fn unheard(&mut self, topic: &Topic) -> bool {
        let broker = &self.shared.broker;
        if let Some((known, epoch, any)) = &self.interest
            && known == topic
            && broker.interest_epoch() == *epoch
        {
            // `any` may be stale `true` (an unsubscribe does not move the
            // epoch): then the publish takes the full path, which is right.
            return !any;
        }
        let (any, epoch) = broker.interest(topic);
        self.interest = Some((topic.clone(), epoch, any));
        !any
    }

    /// Hands the count of skipped publishes to the broker's statistics.
    fn count_unheard(&mut self) {
        if self.unheard > 0 {
            self.shared.broker.count_unheard(std::mem::take(&mut self.unheard));
        }
    }

    /// The tag of an existing subscription's sid.
    fn tag_of(&self, sid: &[u8]) -> Option<u64> {
        numeric_tag(sid).or_else(|| self.odd_tags.get(sid).copied())
    }

    /// The sid of a subscription matching `topic` (where a no-responders
    /// status for a request with that reply subject goes).
    fn sid_matching(&self, topic: &Topic) -> Option<Bytes> {
        let subs = self.subscriptions.as_ref()?;
        subs.sink.sid(subs.handle.matching(topic)?)
    }

    /// Does what the sink noticed during deliveries: forgets the sids of
    /// subscriptions that ended, logs and announces slow consumers.
    fn handle_events(&mut self) {
        let Some(subs) = &self.subscriptions else { return };
        let events = subs.sink.take_events();
        for event in events {
            match event {
                Event::Ended(tag) => self.forget(tag),
                Event::Slow { subscription, subject, pending, policy } => {
                    self.announce_slow_consumer(&subscription, &subject, pending, policy);
                }
            }
        }
    }

    /// Forgets the odd sid of `tag`, if it has one.
    fn forget(&mut self, tag: u64) {
        if tag & ODD_SID != 0
            && let Some(subs) = &self.subscriptions
        {
            // The sid may have been subscribed again under a new tag
            // before this one's end was handled.
            if let Some(sid) = subs.sink.sid(tag)
                && self.odd_tags.get(&sid) == Some(&tag)
            {
                self.odd_tags.remove(&sid);
            }
            subs.sink.forget_odd_sid(tag);
        }
    }

    /// The log line and advisory of a slow-consumer episode.
    fn announce_slow_consumer(
        &self,
        subscription: &Pattern,
        subject: &str,
        pending: usize,
        policy: SlowConsumerPolicy,
    ) {
        tracing::warn!(
            client = self.client.id,
            peer = %self.client.peer,
            subscription = %subscription,
            subject = %subject,
            pending,
            ?policy,
            "slow consumer"
        );
        let advisory = format!(
            "{{\"type\":\"slow_consumer\",\"client_id\":{},\"peer\":\"{}\",\"subscription\":{:?},\"subject\":{:?},\"pending_bytes\":{},\"policy\":\"{}\"}}",
            self.client.id,
            self.client.peer,
            subscription.as_str(),
            subject,
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

    /// Subscribes `sid`; the error text to send if refused.
    fn subscribe(
        &mut self,
        session: &Session,
        sid: &Bytes,
        pattern: &Pattern,
        queue: Option<&str>,
        filter: Rules,
    ) -> Result<(), &'static str> {
        if self.subscriptions.is_none() {
            let options = session.options();
            let sink = Arc::new(ConnSink::new(
                self.shared.clone(),
                &self.client,
                self.outbound.clone(),
                self.stop.clone(),
                options.headers,
                options.echo,
                filter,
            ));
            let handle = self.shared.broker.open_sink(sink.clone()).map_err(|_| "Server Shutting Down")?;
            self.subscriptions = Some(Subscriptions { sink, handle });
        }
        let subs = self.subscriptions.as_ref().expect("opened above");
        if let Some(tag) = self.tag_of(sid)
            && subs.handle.contains(tag)
        {
            // nats-server replaces nothing on a duplicate sid; the old
            // subscription stays. Say so instead of silently merging two
            // subjects into one sid.
            return Err("Duplicate Subscription ID");
        }
        if self.max_subscriptions != 0 && subs.handle.len() >= self.max_subscriptions {
            return Err("Maximum Subscriptions Exceeded");
        }
        let tag = match numeric_tag(sid) {
            Some(tag) => tag,
            None => {
                // Never reused within the connection (2^63 of them).
                let tag = ODD_SID | self.next_odd_tag;
                self.next_odd_tag += 1;
                // A copy: the parsed sid points into the read buffer.
                let sid = Bytes::copy_from_slice(sid);
                subs.sink.register_odd_sid(tag, sid.clone());
                self.odd_tags.insert(sid, tag);
                tag
            }
        };
        let subs = self.subscriptions.as_ref().expect("opened above");
        match subs.handle.subscribe(pattern, queue, tag) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(client = self.client.id, error = %e, "subscribe refused");
                self.forget(tag);
                Err(match e {
                    BrokerError::Registry(RegistryError::DuplicateTag { .. }) => "Duplicate Subscription ID",
                    BrokerError::Registry(_) => "Maximum Subscriptions Exceeded",
                    BrokerError::ShutDown => "Server Shutting Down",
                    _ => "Invalid Subject",
                })
            }
        }
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
        if !matches!(action, Action::Publish { .. } | Action::PongWhenStored) {
            // Its reply (or the close) follows the publishes' replies.
            self.settle(session).await;
        }
        match action {
            Action::Reply(r) => self.reply(&r),
            Action::Publish { topic, reply, headers, payload, ok } => {
                self.publish(session, topic, reply, headers, payload, ok).await;
            }
            Action::Subscribe { sid, pattern, queue, filter, ok } => {
                match self.subscribe(session, &sid, &pattern, queue.as_deref(), filter) {
                    Ok(()) if ok => self.reply(&Reply::Ok),
                    Ok(()) => {}
                    Err(text) => self.reply(&Reply::Err(text)),
                }
            }
            Action::Unsubscribe { sid, max } => {
                if let (Some(tag), Some(subs)) = (self.tag_of(&sid), &self.subscriptions) {
                    let ended = match max {
                        None => subs.handle.unsubscribe(tag),
                        Some(n) => subs.handle.limit(tag, n) == Some(true),
                    };
                    if ended {
                        self.forget(tag);
                    }
                }
            }
            Action::PongWhenStored => {
                let planted = self.shared.config().planted.is_on(PlantedBug::ServerPongBeforeStored);
                if !planted {
                    self.settle(session).await;
                }
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

    /// Turns a `PUB` into the message to route, or handles it at once:
    /// skipped for lack of interest (`Ok(None)`, see [`Conn::unheard`]; a
    /// verbose one's `+OK` is the caller's to send in order), or refused
    /// with an error reply (`Err(text)`, for the caller to send in order).
    fn prepare_publish(
        &mut self,
        session: &Session,
        topic: Topic,
        reply: Option<Topic>,
        headers: Option<Bytes>,
        payload: Bytes,
        ok: bool,
    ) -> Result<Option<(Message, Routing)>, &'static str> {
        // Core NATS drops a message nobody listens to; so does this, before
        // any message is built. Not when something else must happen: the
        // headers must be checked, a request may need its no-responders
        // answer, a publish may be traced.
        let options = session.options();
        let may_need_no_responders = reply.is_some() && options.no_responders && options.headers;
        if headers.is_none() && !may_need_no_responders && crate::trace::installed().is_none() && self.unheard(&topic) {
            self.unheard += 1;
            return Ok(None);
        }
        let mut builder = Message::builder().topic(topic.clone()).payload(payload).origin(self.client.id);
        if let Some(r) = &reply {
            builder = builder.reply_to(r.clone());
        }
        if let Some(block) = &headers {
            builder = nats_headers_to_broker(block, builder)?;
        }
        match builder.build() {
            Ok(m) => Ok(Some((m, Routing { topic, reply, ok }))),
            Err(e) => {
                tracing::debug!(client = self.client.id, error = %e, "publish refused");
                Err("Invalid Message")
            }
        }
    }

    /// Publishes one `PUB` on its own (verbose mode, traced publishes, or
    /// where a burst cannot be routed at once).
    async fn publish(
        &mut self,
        session: &Session,
        topic: Topic,
        reply: Option<Topic>,
        headers: Option<Bytes>,
        payload: Bytes,
        ok: bool,
    ) {
        let (mut message, routing) = match self.prepare_publish(session, topic, reply, headers, payload, ok) {
            Ok(Some(prepared)) => prepared,
            Ok(None) => {
                if ok {
                    self.settle(session).await;
                    self.reply(&Reply::Ok);
                }
                return;
            }
            Err(text) => {
                self.settle(session).await;
                return self.reply(&Reply::Err(text));
            }
        };
        // Traced or not is decided here, before any span exists (see
        // `crate::trace`); the request span lives until this returns, so
        // a traced publish is routed and waited for on its own.
        match crate::trace::begin_publish(FrontEnd::Nats, routing.topic.as_str(), Some(&message)) {
            Some(mut trace) => {
                trace.inject(&mut message);
                self.settle(session).await;
                let routed = self.shared.broker.route_unacknowledged(message).await;
                trace.routed(routed.is_ok());
                self.routed(session, routing, routed).await;
            }
            None => self.route(session, routing, message).await,
        }
    }

    /// Routes one message: a replicated publish is proposed and joins the
    /// in-flight queue (after the oldest is settled, when full); anything
    /// else is routed now and settled after the publishes before it.
    async fn route(&mut self, session: &Session, routing: Routing, message: Message) {
        match self.shared.broker.route_pipelined(message).await {
            Ok(Pipelined::Proposed(proposed)) => {
                if self.in_flight.len() >= MAX_IN_FLIGHT {
                    self.settle_oldest(session).await;
                }
                self.in_flight.push_back((routing, proposed));
            }
            Ok(Pipelined::Routed(routed)) => {
                self.settle(session).await;
                self.routed(session, routing, Ok(routed)).await;
            }
            Err(e) => {
                self.settle(session).await;
                self.routed(session, routing, Err(e)).await;
            }
        }
    }

    /// Waits for the oldest in-flight publish's outcome and does what
    /// follows it (its `+OK` or `-ERR`, as if it had been awaited inline).
    async fn settle_oldest(&mut self, session: &Session) {
        if let Some((routing, proposed)) = self.in_flight.pop_front() {
            let outcome = proposed.await;
            self.routed(session, routing, outcome.map(Routed::Stored)).await;
        }
    }

    /// Settles every in-flight publish, oldest first: what must precede
    /// any later reply.
    async fn settle(&mut self, session: &Session) {
        while !self.in_flight.is_empty() {
            self.settle_oldest(session).await;
        }
    }

    /// Whether non-verbose `PUB`s may be gathered into bursts
    /// ([`Conn::queue_publish`]): not while publishes are traced (each
    /// gets its spans around its own routing).
    fn may_batch(&self) -> bool {
        crate::trace::installed().is_none()
    }

    /// Adds a non-verbose `PUB` to the burst being gathered (routed by
    /// [`Conn::flush_publishes`] before any other action, so order holds).
    async fn queue_publish(
        &mut self,
        session: &Session,
        topic: Topic,
        reply: Option<Topic>,
        headers: Option<Bytes>,
        payload: Bytes,
    ) {
        debug_assert!(self.may_batch());
        match self.prepare_publish(session, topic, reply, headers, payload, false) {
            Ok(Some((message, routing))) => {
                self.burst.push_back(message);
                self.burst_routing.push_back(routing);
                if self.burst.len() >= OPS_PER_YIELD {
                    self.flush_publishes(session).await;
                }
            }
            Ok(None) => {}
            Err(text) => {
                // After the publishes before it.
                self.flush_publishes(session).await;
                self.settle(session).await;
                self.reply(&Reply::Err(text));
            }
        }
    }

    /// Routes the gathered burst: as much as can go at once under one
    /// broker lock (`Broker::try_route_many`), a message that must wait
    /// for a full blocking subscriber on its own, and so on until done.
    async fn flush_publishes(&mut self, session: &Session) {
        let broker = self.shared.broker.clone();
        while !self.burst.is_empty() {
            let mut routed = std::mem::take(&mut self.burst_routed);
            if broker.try_route_many(&mut self.burst, &mut routed) {
                if !routed.is_empty() {
                    self.settle(session).await;
                }
                for result in routed.drain(..) {
                    let routing = self.burst_routing.pop_front().expect("one routing per message");
                    self.routed(session, routing, result).await;
                }
            }
            self.burst_routed = routed;
            // A message that would wait (or a broker that routes each
            // message itself): on its own.
            if let Some(message) = self.burst.pop_front() {
                let routing = self.burst_routing.pop_front().expect("one routing per message");
                self.route(session, routing, message).await;
            }
        }
        debug_assert!(self.burst_routing.is_empty());
    }

    /// What follows a publish's routing: its `+OK` (verbose), the storage
    /// barrier's bookkeeping, a no-responders answer, or its error.
    async fn routed(&mut self, session: &Session, routing: Routing, routed: Result<Routed, BrokerError>) {
        let Routing { topic, reply, ok } = routing;
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
                    && let Some(sid) = self.sid_matching(reply)
                {
                    // A request nobody can answer: tell the requester at
                    // once (status 503) instead of letting it time out.
                    let block = b"NATS/1.0 503\r\n\r\n";
                    self.outbound
                        .append_control(|buf| write_hmsg(buf, reply.as_str().as_bytes(), &sid, None, block, b""));
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
}

/// Where a publish came from and what follows its routing.
struct Routing {
    topic: Topic,
    reply: Option<Topic>,
    /// Verbose: `+OK` once stored.
    ok: bool,
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
pub(crate) fn broker_headers_to_nats(message: &Message) -> Bytes {
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

//! The native front end: Kaelix's own binary protocol (`PROTOCOL.md`,
//! codec in `kaelix-protocol`).
//!
//! A connection is driven by one task that reads, cuts the bytes into
//! frames with a [`FrameDecoder`] and answers each request; a writer task
//! drains the connection's [`Outbound`] buffer, which every producer of
//! output shares. What may take long runs in a task of its own and answers
//! from there, so responses can be out of order and a long-polling fetch
//! never holds up a `Ping`:
//!
//! * **Produce** appends in the driver, in the order the frames arrived
//!   (two produces to one partition are appended in send order), then
//!   answers at once (acks `leader`: appended, for a durable topic not yet
//!   synced) or from a task once every message is acknowledged (acks
//!   `committed`: synced; a memory topic is committed when appended). Acks
//!   `none` is never answered, not even with an error.
//! * **Fetch** and **GroupFetch** answer at once if something is readable
//!   (or the request does not wait); otherwise a task waits — woken by the
//!   broker when the partition becomes readable ([`Broker::wait_readable`]),
//!   or by the consumer group's own wake-up — until data arrives or the
//!   wait (capped by `native.max_wait_ms`) expires. A fetch of a
//!   replicated topic (a cluster member) is linearizable through any
//!   member: it is served only once the partition's leader confirmed a read
//!   index and this member's log holds what was committed there
//!   ([`Broker::confirm_read`]), else answered `Unavailable`.
//! * **Subscriptions** are pumps ([`subscription`]): one task per
//!   subscription moves messages from a broker stream into `Deliver`
//!   pushes, only while the subscription has credit. A subscription without
//!   a queue group reads the partition logs (a log-backed stream), so while
//!   its credit is 0 it pauses without losing anything retained.
//! * **Consumer groups** are kept in [`groups::Memberships`] beyond the
//!   connection, until the member leaves or its session times out.
//!
//! Refused with a typed error because the broker cannot do it (yet):
//! `DeleteTopic` (the broker cannot delete topics) and `CreateTopic` with
//! `replicated` storage (a cluster member's replicated topics are the ones
//! its file declares; placing new ones needs the controller), both
//! `InvalidRequest`.
//!
//! **Logins.** With an `[auth]` section the `Hello` must carry credentials
//! (a token, or a user and password) that the same rules as a NATS
//! `CONNECT` accept, or it is answered `Unauthorized` and the connection
//! closes. The user's permissions then apply per request: `Produce` and
//! `CreateTopic` need publish permission on the topic; `Fetch` and
//! `GroupJoin` need subscribe permission on it; a `Subscribe` pattern must
//! be covered by an allowed subject and overlap no denied one (a native
//! subscription hands over ranges of a log, so unlike NATS it cannot drop
//! single denied messages). Refusals are `Unauthorized` and the connection
//! stays open. A reconfiguration re-checks every login and closes the
//! connections whose login is refused or whose permissions changed. With a
//! `[tls]` section, native connections speak TLS from their first byte.
//!
//! **Shutdown.** When the server stops, the driver stops reading; long polls
//! answer at once with what they have, produces still waiting for their
//! sync are answered once synced, open subscriptions end with
//! `SubscriptionEnded` `ShuttingDown`, and the connection closes once its
//! buffer is sent.
//!
//! [`Broker::wait_readable`]: kaelix_broker::Broker::wait_readable
//! [`Broker::confirm_read`]: kaelix_broker::Broker::confirm_read

pub(crate) mod credit;
pub(crate) mod errors;
pub(crate) mod groups;
pub(crate) mod subscription;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::BytesMut;
use futures_util::FutureExt;
use futures_util::future::{Either, select};
use kaelix_broker::message::{Message, MessageBatch};
use kaelix_broker::partition::RetentionPolicy;
use kaelix_broker::storage::{DurableConfig, StorageKind};
use kaelix_broker::topic::{Pattern, Topic};
use kaelix_broker::{
    BrokerError, DEFAULT_RETAINED_BYTES, GroupMember, MemberId, StartPosition, SubscribeOptions, TopicConfig,
};
use kaelix_core::runtime::{ByteListener, ByteStream, Priority, Runtime, timeout};
use kaelix_core::time::Duration;
use kaelix_protocol::{
    Acks, Credentials, DEFAULT_MAX_FRAME_BYTES, ErrorCode, FetchLimits, FrameDecoder, FrameKind, Name, PartitionInfo,
    Position, Request, Response, Retention, SUPPORTED_VERSIONS, ServerInfo, StorageSpec, TopicDescription,
    TopicSummary,
};

use self::subscription::SubState;
use crate::auth::Permissions;
use crate::nats::session::Login;
use crate::outbound::Outbound;
use crate::shutdown::{Signal, unless};
use crate::tls::TlsStream;
use crate::trace::FrontEnd;
use crate::{ConnectionSlot, Shared};

/// The software version announced in `HelloOk`.
pub const SERVER_VERSION: &str = concat!("kaelix/", env!("CARGO_PKG_VERSION"));

/// Most bytes of messages one fetch or delivery returns: what fits a frame
/// of the default size (clients accept at least that much) with room for
/// the frame's own fields.
const FETCH_FRAME_BUDGET: usize = DEFAULT_MAX_FRAME_BYTES - (64 << 10);

/// How long a closing connection waits for its running operations (long
/// polls answer at once; produces wait for their sync) before it closes.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Accepts native connections until the server stops.
pub(crate) async fn accept_loop<R: Runtime>(shared: Arc<Shared<R>>, mut listener: R::ByteListener) {
    let local = listener.local_addr();
    loop {
        let Some(accepted) = unless(&shared.stopping, listener.accept()).await else { break };
        match accepted {
            Ok(stream) => match shared.open_connection() {
                Some((slot, stop)) => {
                    let task = serve_tcp(shared.clone(), slot, stop, stream.clone());
                    if let Err(refused) = shared.rt.try_spawn(Priority::High, "native-connection", task) {
                        // Its slot went with the dropped task.
                        tracing::warn!(peer = %stream.peer_addr(), "refusing a native connection: {refused}");
                        let mut buf = BytesMut::new();
                        Response::error(ErrorCode::Throttled, "the server is at its task capacity").encode(0, &mut buf);
                        let _ = stream.write(buf.freeze()).await;
                        stream.close();
                    }
                }
                None => {
                    tracing::warn!(peer = %stream.peer_addr(), "refusing a native connection: maximum connections reached");
                    let mut buf = BytesMut::new();
                    Response::error(ErrorCode::Throttled, "maximum connections reached").encode(0, &mut buf);
                    let _ = stream.write(buf.freeze()).await;
                    stream.close();
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "accepting a native connection failed");
                shared.rt.sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tracing::info!(addr = %local, "native listener closed");
}

/// Counts a connection's running operation tasks, so closing can wait for
/// them.
#[derive(Clone, Default)]
struct Tasks {
    inner: Arc<Mutex<(usize, Vec<Waker>)>>,
}

/// One running operation; dropping it (the task ended or was cancelled)
/// ends it.
struct TaskGuard(Tasks);

impl Tasks {
    fn lock(&self) -> MutexGuard<'_, (usize, Vec<Waker>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn enter(&self) -> TaskGuard {
        self.lock().0 += 1;
        TaskGuard(self.clone())
    }

    /// Completes once no operation runs.
    async fn idle(&self) {
        std::future::poll_fn(|cx| {
            let mut s = self.lock();
            if s.0 == 0 {
                Poll::Ready(())
            } else {
                s.1.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let wakers = {
            let mut s = self.0.lock();
            s.0 -= 1;
            if s.0 == 0 { std::mem::take(&mut s.1) } else { Vec::new() }
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// One connection, shared by its driver, its operation tasks and its pumps.
pub(crate) struct Conn<R: Runtime> {
    shared: Arc<Shared<R>>,
    id: u64,
    peer: SocketAddr,
    outbound: Outbound,
    /// Raised when the connection starts closing: long polls answer now.
    closing: Signal,
    /// Open subscriptions by the client's id.
    subs: Mutex<BTreeMap<u32, Arc<SubState>>>,
    tasks: Tasks,
    /// What the login of the `Hello` permits (set by the handshake).
    permissions: std::sync::OnceLock<Permissions>,
}

/// One accepted TCP connection: TLS from the first byte when the server has
/// a `[tls]` section, then the protocol.
async fn serve_tcp<R: Runtime>(shared: Arc<Shared<R>>, slot: ConnectionSlot<R>, stop: Signal, stream: R::ByteStream) {
    let id = slot.id;
    match &shared.tls {
        None => serve_connection(&shared, id, &stop, stream.clone()).await,
        Some(config) => match TlsStream::accept(stream.clone(), config.clone()) {
            Ok(tls) => serve_connection(&shared, id, &stop, tls).await,
            Err(e) => tracing::warn!(client = id, error = %e, "TLS session refused"),
        },
    }
    stream.close();
    drop(slot);
}

async fn serve_connection<R: Runtime, S: ByteStream>(shared: &Arc<Shared<R>>, id: u64, stop: &Signal, stream: S) {
    let peer = stream.peer_addr();
    tracing::debug!(client = id, %peer, "native connection open");
    let outbound = Outbound::new(shared.config().limits.max_pending);
    let writer = {
        let (outbound, stream, shared) = (outbound.clone(), stream.clone(), shared.clone());
        shared.rt.clone().try_spawn(Priority::High, "native-writer", async move {
            outbound.run_writer(stream, &shared.stats.native.bytes_out).await
        })
    };
    let writer = match writer {
        Ok(writer) => writer,
        Err(refused) => {
            tracing::warn!(client = id, %peer, "closing a native connection: {refused}");
            let mut buf = BytesMut::new();
            Response::error(ErrorCode::Throttled, "the server is at its task capacity").encode(0, &mut buf);
            let _ = stream.write(buf.freeze()).await;
            return;
        }
    };
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        id,
        peer,
        outbound: outbound.clone(),
        closing: Signal::new(),
        subs: Mutex::new(BTreeMap::new()),
        tasks: Tasks::default(),
        permissions: std::sync::OnceLock::new(),
    });
    let mut decoder = FrameDecoder::new(shared.config().native.max_frame_bytes as usize);
    let mut handshaken = false;
    let hello_deadline = shared.rt.now() + shared.config().limits.auth_timeout();
    let reason = 'serve: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let Some(reason) = conn.handle_frame(&mut handshaken, frame).await {
                        break 'serve reason;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The length prefix was out of range: where the next
                    // frame starts is unknown.
                    conn.protocol_error(0, e.code(), &e.to_string());
                    break 'serve format!("unframeable input: {e}");
                }
            }
        }
        if outbound.is_broken() {
            break 'serve "write failed".to_owned();
        }
        let event = {
            let read = std::pin::pin!(stream.read());
            let stopped = std::pin::pin!(stop.raised());
            let hello_timer = std::pin::pin!(async {
                if handshaken {
                    std::future::pending::<()>().await;
                }
                shared.rt.sleep_until(hello_deadline).await;
            });
            match select(read, select(stopped, hello_timer)).await {
                Either::Left((read, _)) => Event::Read(read),
                Either::Right((Either::Left(_), _)) => Event::Stop,
                Either::Right((Either::Right(_), _)) => Event::HelloTimeout,
            }
        };
        match event {
            Event::Read(Ok(Some(chunk))) => {
                shared.stats.native.bytes_in.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                decoder.extend(&chunk)
            }
            Event::Read(Ok(None)) => break 'serve "client closed the connection".to_owned(),
            Event::Read(Err(e)) => break 'serve format!("read failed: {e}"),
            Event::Stop => {
                if shared.revoked.lock().unwrap_or_else(|e| e.into_inner()).contains(&id) {
                    let text = "authorization violation: the server's credentials or permissions changed";
                    conn.protocol_error(0, ErrorCode::Unauthorized, text);
                    break 'serve text.to_owned();
                }
                break 'serve if shared.stopping.is_raised() { "server shutting down" } else { "closed by the server" }
                    .to_owned();
            }
            Event::HelloTimeout => {
                let text = format!("no Hello within {:?}", shared.config().limits.auth_timeout());
                conn.protocol_error(0, ErrorCode::HandshakeRequired, &text);
                break 'serve text;
            }
        }
    };
    tracing::debug!(client = id, %peer, reason, "native connection closing");
    conn.close().await;
    // The writer sends what is queued (a final error among it), then closes.
    let _ = timeout(&shared.rt, Duration::from_secs(5), writer).await;
    stream.close();
}

enum Event<E> {
    Read(Result<Option<bytes::Bytes>, E>),
    Stop,
    HelloTimeout,
}

impl<R: Runtime> Conn<R> {
    fn broker(&self) -> &kaelix_broker::Broker<R> {
        &self.shared.broker
    }

    fn subs(&self) -> MutexGuard<'_, BTreeMap<u32, Arc<SubState>>> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers with a small frame (never refused for a full buffer).
    fn respond(&self, correlation: u32, response: &Response) {
        self.outbound.append_control(|buf| response.encode(correlation, buf));
    }

    /// Answers `correlation` with an error.
    fn error(&self, correlation: u32, code: ErrorCode, message: impl Into<String>) {
        self.respond(correlation, &Response::error(code, message));
    }

    /// Answers with the code and text of a broker refusal.
    fn broker_error(&self, correlation: u32, e: &BrokerError) {
        self.error(correlation, errors::code_of(e), e.to_string());
    }

    /// An error about the byte stream or the handshake (counted, logged).
    fn protocol_error(&self, correlation: u32, code: ErrorCode, text: &str) {
        self.shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        tracing::info!(client = self.id, peer = %self.peer, %code, text, "native protocol error");
        self.error(correlation, code, text);
    }

    /// Appends a frame that may be large (fetch results), waiting while the
    /// connection's buffer is full instead of growing it past its limit.
    async fn send_large(&self, len: usize, write: impl Fn(&mut BytesMut)) {
        loop {
            match self.outbound.append(len, &write) {
                Ok(_) => return,
                // The frame alone is over the limit: send it anyway, once
                // everything before it went.
                Err(full) if full.pending == 0 => return self.outbound.append_control(&write),
                Err(_) => self.outbound.drained().await,
            }
        }
    }

    /// Runs `work`, which answers request `correlation`, in a task of its
    /// own, counted until it ends; if the runtime refuses the task, answers
    /// `Throttled` now instead.
    fn spawn_op(&self, correlation: u32, name: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        let guard = self.tasks.enter();
        let spawned = self.shared.rt.try_spawn(Priority::High, name, async move {
            let _guard = guard;
            work.await;
        });
        if let Err(refused) = spawned {
            tracing::warn!(client = self.id, "a request not carried out: {refused}");
            self.error(correlation, ErrorCode::Throttled, format!("the server is at its task capacity ({refused})"));
        }
    }

    /// Closing: long polls answer, running operations get a moment to
    /// finish, subscriptions end, the buffer closes.
    async fn close(&self) {
        self.closing.raise();
        if timeout(&self.shared.rt, DRAIN_WAIT, self.tasks.idle()).await.is_err() {
            tracing::warn!(client = self.id, "operations still running when the connection closed");
        }
        let subs = std::mem::take(&mut *self.subs());
        let stopping = self.shared.stopping.is_raised();
        for (id, sub) in subs {
            sub.end(|was_open| {
                if was_open && stopping {
                    self.outbound.append_control(|buf| {
                        subscription::ended(id, ErrorCode::ShuttingDown, "the server is shutting down").encode(buf);
                    });
                }
            });
        }
        self.outbound.close();
    }

    /// Handles one frame; `Some(reason)` closes the connection.
    async fn handle_frame(self: &Arc<Self>, handshaken: &mut bool, frame: kaelix_protocol::Frame) -> Option<String> {
        let correlation = frame.correlation;
        if !*handshaken {
            if frame.kind != FrameKind::Hello.as_u8() {
                let text = "the first frame of a connection must be a Hello";
                self.protocol_error(correlation, ErrorCode::HandshakeRequired, text);
                return Some(text.to_owned());
            }
            return match Request::decode(&frame) {
                Ok(Request::Hello { credentials, .. }) if let Err(text) = self.log_in(credentials.as_ref()) => {
                    self.protocol_error(correlation, ErrorCode::Unauthorized, &text);
                    Some(text)
                }
                Ok(Request::Hello { versions, client, .. }) => match kaelix_protocol::negotiate(&versions) {
                    Some(version) => {
                        *handshaken = true;
                        tracing::debug!(client = self.id, name = %client, version, "native handshake");
                        self.respond(correlation, &Response::HelloOk(self.server_info(version)));
                        None
                    }
                    None => {
                        let text = format!(
                            "no protocol version in common: the server speaks {SUPPORTED_VERSIONS:?}, the client offered {versions:?}"
                        );
                        self.protocol_error(correlation, ErrorCode::UnsupportedVersion, &text);
                        Some(text)
                    }
                },
                Ok(_) => unreachable!("a frame of kind Hello decodes as a Hello"),
                Err(e) => {
                    self.protocol_error(correlation, e.code(), &e.to_string());
                    e.closes_connection().then(|| e.to_string())
                }
            };
        }
        match Request::decode(&frame) {
            Ok(request) => {
                self.dispatch(correlation, request).await;
                None
            }
            Err(e) => {
                self.protocol_error(correlation, e.code(), &e.to_string());
                e.closes_connection().then(|| e.to_string())
            }
        }
    }

    /// Checks the `Hello`'s credentials against the `[auth]` rules in force
    /// and keeps the permissions; `Err` is the text of the refusal (the
    /// log gets why; the client only "authorization violation", as a NATS
    /// client does). The login is registered for reconfigurations to
    /// re-check, then compared with the rules in force once more: a
    /// reconfiguration either sees this login or swapped the rules before,
    /// and then it is caught here.
    fn log_in(&self, credentials: Option<&Credentials>) -> Result<(), String> {
        let (token, user, pass) = match credentials {
            None => (None, None, None),
            Some(Credentials::Token(token)) => (Some(token.clone()), None, None),
            Some(Credentials::User { user, password }) => {
                (None, Some(user.as_str().to_owned()), Some(password.clone()))
            }
        };
        let check = |auth: &crate::auth::Authenticator| auth.login(token.as_deref(), user.as_deref(), pass.as_deref());
        let auth = self.shared.auth();
        let refused = |why: crate::auth::Refusal| {
            tracing::warn!(client = self.id, peer = %self.peer, user = ?user, reason = ?why, "native login refused");
            match credentials {
                None => "authorization violation: this server requires credentials in the Hello".to_owned(),
                Some(_) => "authorization violation".to_owned(),
            }
        };
        let permissions = check(&auth).map_err(refused)?;
        let login =
            Login { token: token.clone(), user: user.clone(), pass: pass.clone(), permissions: permissions.clone() };
        self.shared.logins.lock().unwrap_or_else(|e| e.into_inner()).insert(self.id, login);
        let current = self.shared.auth();
        if !Arc::ptr_eq(&current, &auth) && check(&current) != Ok(permissions.clone()) {
            self.shared.logins.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
            return Err("authorization violation: the server's credentials changed during the login".to_owned());
        }
        let _ = self.permissions.set(permissions);
        Ok(())
    }

    /// The connection's permissions (open before the handshake, which no
    /// request but `Hello` passes anyway).
    fn permissions(&self) -> &Permissions {
        static OPEN: std::sync::OnceLock<Permissions> = std::sync::OnceLock::new();
        self.permissions.get().unwrap_or_else(|| OPEN.get_or_init(Permissions::default))
    }

    /// `Some(text)` when this login may not publish to `topic`.
    fn refuse_publish(&self, topic: &Topic) -> Option<String> {
        (!self.permissions().publish.permits_topic(topic))
            .then(|| format!("permissions violation: this login may not publish to {topic}"))
    }

    /// `Some(text)` when this login may not read `topic`.
    fn refuse_read(&self, topic: &Topic) -> Option<String> {
        (!self.permissions().subscribe.permits_topic(topic))
            .then(|| format!("permissions violation: this login may not read {topic}"))
    }

    fn server_info(&self, version: u16) -> ServerInfo {
        let name = Name::new(SERVER_VERSION).expect("a valid name");
        ServerInfo {
            version,
            server_id: self.shared.rt.node_id(),
            server_version: name,
            max_frame_bytes: self.shared.config().native.max_frame_bytes,
            max_batch: self.shared.config().native.max_batch,
        }
    }

    async fn dispatch(self: &Arc<Self>, correlation: u32, request: Request) {
        match request {
            Request::Hello { .. } => {
                self.error(correlation, ErrorCode::InvalidRequest, "the connection's handshake is already done");
            }
            Request::Ping => self.respond(correlation, &Response::Pong),
            Request::Produce { topic, acks, .. } if let Some(text) = self.refuse_publish(&topic) => {
                // Acks `none` is never answered, not even with an error.
                if acks != Acks::None {
                    self.error(correlation, ErrorCode::Unauthorized, text);
                }
            }
            Request::Produce { topic, partition, acks, messages } => {
                self.produce(correlation, topic, partition, acks, messages).await;
            }
            Request::Fetch { topic, .. } if let Some(text) = self.refuse_read(&topic) => {
                self.error(correlation, ErrorCode::Unauthorized, text);
            }
            Request::Fetch { topic, partition, offset, limits } => {
                self.fetch(correlation, topic, partition, offset, limits);
            }
            Request::Subscribe { pattern, .. } if !self.permissions().subscribe.permits_whole_pattern(&pattern) => {
                let text = format!(
                    "permissions violation: this login may not subscribe to {pattern} (a native subscription must be \
                     covered by an allowed subject and overlap no denied one)"
                );
                self.error(correlation, ErrorCode::Unauthorized, text);
            }
            Request::Subscribe { subscription, pattern, queue_group, start, credit } => {
                self.subscribe(correlation, subscription, &pattern, queue_group, start, credit);
            }
            Request::Credit { subscription, add } => match self.subs().get(&subscription) {
                Some(sub) => sub.grant(add),
                None => self.error(correlation, ErrorCode::UnknownSubscription, unknown_subscription(subscription)),
            },
            Request::Unsubscribe { subscription } => {
                let sub = self.subs().remove(&subscription);
                match sub {
                    Some(sub) => sub.end(|_| self.respond(correlation, &Response::Unsubscribed { subscription })),
                    None => {
                        self.error(correlation, ErrorCode::UnknownSubscription, unknown_subscription(subscription));
                    }
                }
            }
            Request::GroupJoin { topic, .. } if let Some(text) = self.refuse_read(&topic) => {
                self.error(correlation, ErrorCode::Unauthorized, text);
            }
            Request::GroupJoin { group, topic, member } => self.group_join(correlation, &group, &topic, member),
            Request::GroupHeartbeat { group, member } => {
                if let Some(m) = self.member(correlation, &group, member) {
                    self.assignment(correlation, &m);
                }
            }
            Request::GroupFetch { group, member, limits } => self.group_fetch(correlation, &group, member, limits),
            Request::GroupCommit { group, member, generation, topic, partition, offset } => {
                let Some(m) = self.member(correlation, &group, member) else { return };
                if let Some(consumed) = self.broker().group_topic(group.as_str())
                    && consumed != topic
                {
                    let text = format!("consumer group {group} consumes {consumed}, not {topic}");
                    return self.error(correlation, ErrorCode::InvalidRequest, text);
                }
                match m.commit_offset(generation, partition, offset) {
                    Ok(()) => self.respond(correlation, &Response::GroupCommitted),
                    Err(e) => self.broker_error(correlation, &e),
                }
            }
            Request::GroupLeave { group, member } => match self.shared.memberships.remove(group.as_str(), member) {
                Some(m) => {
                    drop(m);
                    self.respond(correlation, &Response::GroupLeft);
                }
                None => self.error(correlation, self.missing(&group).code(), missing_text(&group, member)),
            },
            Request::CreateTopic { topic, .. } if let Some(text) = self.refuse_publish(&topic) => {
                self.error(correlation, ErrorCode::Unauthorized, text);
            }
            Request::CreateTopic { topic, partitions, storage, retention } => {
                self.create_topic(correlation, &topic, partitions, storage, retention);
            }
            Request::DescribeTopic { topic } => self.describe_topic(correlation, &topic),
            Request::DeleteTopic { topic } => self.error(
                correlation,
                ErrorCode::InvalidRequest,
                format!(
                    "DeleteTopic is not supported by this server yet: the broker cannot delete topics ({topic} is kept)"
                ),
            ),
            Request::ListTopics => {
                let topics = self
                    .broker()
                    .topics()
                    .into_iter()
                    .map(|(topic, config)| TopicSummary {
                        topic,
                        partitions: config.partitions,
                        storage: storage_spec(&config.storage),
                    })
                    .collect();
                self.respond(correlation, &Response::TopicList { topics });
            }
        }
    }

    // ---- produce -------------------------------------------------------

    async fn produce(
        self: &Arc<Self>,
        correlation: u32,
        topic: Topic,
        partition: Option<u32>,
        acks: Acks,
        messages: Vec<Message>,
    ) {
        // Acks none: nothing is ever answered, not even an error.
        let refuse = |code: ErrorCode, text: String| {
            if acks != Acks::None {
                self.error(correlation, code, text);
            } else {
                tracing::debug!(client = self.id, %code, text, "fire-and-forget produce refused");
            }
        };
        let native = &self.shared.config().native;
        if messages.len() > native.max_batch as usize {
            let text = format!("{} messages in one Produce; the limit is {}", messages.len(), native.max_batch);
            return refuse(ErrorCode::BatchTooLarge, text);
        }
        let Some(config) = self.broker().topic_config(&topic) else {
            return refuse(ErrorCode::UnknownTopic, format!("unknown topic {topic}"));
        };
        if let Some(p) = partition
            && p >= config.partitions
        {
            let text = format!("topic {topic} has {} partitions; partition {p} does not exist", config.partitions);
            return refuse(ErrorCode::UnknownPartition, text);
        }
        let max_payload = self.shared.config().limits.max_payload;
        if let Some(m) = messages.iter().find(|m| m.payload().len() > max_payload) {
            let text = format!("a payload of {} bytes exceeds the limit of {max_payload} bytes", m.payload().len());
            return refuse(ErrorCode::PayloadTooLarge, text);
        }
        // One request, one trace decision (see `crate::trace`): the first
        // message's trace context, if sampled, is continued; the batch is
        // one broker publish, whose context every message then carries.
        let mut trace = crate::trace::begin_publish(FrontEnd::Native, topic.as_str(), messages.first());
        let batch: MessageBatch = messages
            .into_iter()
            .map(|m| {
                let mut m = match partition {
                    Some(p) if m.partition().is_none() => m.with_partition(p),
                    _ => m,
                };
                if let Some(t) = &trace {
                    t.inject(&mut m);
                }
                m
            })
            .collect();
        let published = self.broker().publish_batch_unacknowledged(batch).await;
        if let Some(t) = &mut trace {
            t.routed(published.is_ok());
        }
        let published = match published {
            Ok(published) => published,
            Err(e) => return refuse(errors::code_of(&e), e.to_string()),
        };
        let positions: Vec<Position> =
            published.iter().map(|p| Position { partition: p.partition, offset: p.offset }).collect();
        let mut unacknowledged: BTreeMap<u32, u64> = BTreeMap::new();
        for p in published.iter().filter(|p| !p.acknowledged) {
            let highest = unacknowledged.entry(p.partition).or_insert(p.offset);
            *highest = (*highest).max(p.offset);
        }
        match acks {
            Acks::None => {}
            Acks::Leader => self.respond(correlation, &Response::ProduceAck { positions }),
            Acks::Committed if unacknowledged.is_empty() => {
                self.respond(correlation, &Response::ProduceAck { positions });
            }
            Acks::Committed => {
                let conn = self.clone();
                self.spawn_op(correlation, "native-produce-ack", async move {
                    let broker = conn.broker();
                    let synced = async {
                        for (partition, offset) in unacknowledged {
                            broker.wait_acknowledged(&topic, partition, offset).await;
                        }
                    };
                    let limit = conn.shared.config().native.ack_timeout();
                    match timeout(&conn.shared.rt, limit, synced).await {
                        Ok(()) => conn.respond(correlation, &Response::ProduceAck { positions }),
                        Err(_) => conn.error(
                            correlation,
                            ErrorCode::Timeout,
                            format!("the messages were appended but not committed within {limit:?}"),
                        ),
                    }
                });
            }
        }
    }

    // ---- fetch ---------------------------------------------------------

    fn fetch(self: &Arc<Self>, correlation: u32, topic: Topic, partition: u32, offset: u64, limits: FetchLimits) {
        if limits.max_messages == 0 {
            return self.error(correlation, ErrorCode::InvalidRequest, "max messages must be at least 1");
        }
        if self.broker().is_replicated(&topic) {
            return self.fetch_confirmed(correlation, topic, partition, offset, limits);
        }
        let first = self.read(&topic, partition, offset, &limits);
        let wait = self.wait_for(&limits);
        match first {
            Err(e) => self.read_error(correlation, &topic, partition, &e),
            Ok(r) if !r.messages.is_empty() || wait.is_zero() || self.closing.is_raised() => {
                self.send_fetch_result(correlation, offset, r);
            }
            Ok(_) => {
                let conn = self.clone();
                self.spawn_op(correlation, "native-fetch", async move {
                    let readable = conn.broker().wait_readable(&topic, partition, offset);
                    let _ = unless(&conn.closing, timeout(&conn.shared.rt, wait, readable)).await;
                    match conn.read(&topic, partition, offset, &limits) {
                        Ok(r) => conn.send_fetch_result_large(correlation, offset, r).await,
                        Err(e) => conn.read_error(correlation, &topic, partition, &e),
                    }
                });
            }
        }
    }

    /// A fetch of a replicated topic, linearizable through any member: the
    /// partition's leader first confirms its committed prefix and this
    /// member's log catches up to it ([`Broker::confirm_read`], read rounds
    /// shared with the member's other fetches of the partition); only then
    /// is the fetch served from the log, long-polling as any fetch (the
    /// wait counted from the fetch's arrival, so confirming does not
    /// lengthen it). A record acknowledged before the fetch arrived is
    /// always seen, and "nothing at `offset`" is true at the confirmed
    /// read index or later. If no leader confirms within
    /// `cluster.forward_timeout_ms` (none known, unreachable, leadership
    /// lost) the answer is `Unavailable`: retry.
    ///
    /// [`Broker::confirm_read`]: kaelix_broker::Broker::confirm_read
    fn fetch_confirmed(
        self: &Arc<Self>,
        correlation: u32,
        topic: Topic,
        partition: u32,
        offset: u64,
        limits: FetchLimits,
    ) {
        let conn = self.clone();
        let rt = &self.shared.rt;
        let until = rt.now() + self.wait_for(&limits);
        let confirm_within = self.shared.config().cluster.forward_timeout();
        self.spawn_op(correlation, "native-fetch", async move {
            let rt = &conn.shared.rt;
            let confirmed = timeout(rt, confirm_within, conn.broker().confirm_read(&topic, partition));
            match unless(&conn.closing, confirmed).await {
                None => {
                    let text = "the server is shutting down";
                    return conn.error(correlation, ErrorCode::ShuttingDown, text);
                }
                Some(Err(_)) => {
                    let text =
                        format!("{topic}/{partition}: no leader confirmed the read within {confirm_within:?}; retry");
                    return conn.error(correlation, ErrorCode::Unavailable, text);
                }
                Some(Ok(Err(e))) => return conn.read_error(correlation, &topic, partition, &e),
                Some(Ok(Ok(_prefix))) => {}
            }
            let first = conn.read(&topic, partition, offset, &limits);
            let now = rt.now();
            let r = match first {
                Err(e) => return conn.read_error(correlation, &topic, partition, &e),
                Ok(r) if !r.messages.is_empty() || now >= until || conn.closing.is_raised() => r,
                Ok(_) => {
                    let readable = conn.broker().wait_readable(&topic, partition, offset);
                    let _ = unless(&conn.closing, timeout(rt, until.saturating_duration_since(now), readable)).await;
                    match conn.read(&topic, partition, offset, &limits) {
                        Ok(r) => r,
                        Err(e) => return conn.read_error(correlation, &topic, partition, &e),
                    }
                }
            };
            conn.send_fetch_result_large(correlation, offset, r).await;
        });
    }

    /// How long a fetch with `limits` may wait (capped by the server).
    fn wait_for(&self, limits: &FetchLimits) -> Duration {
        Duration::from_millis(u64::from(limits.max_wait_ms)).min(self.shared.config().native.max_wait())
    }

    fn read(
        &self,
        topic: &Topic,
        partition: u32,
        offset: u64,
        limits: &FetchLimits,
    ) -> Result<kaelix_broker::RangeRead, BrokerError> {
        let max = limits.max_messages.min(self.shared.config().native.max_batch) as usize;
        let max_bytes = (limits.max_bytes as usize).min(FETCH_FRAME_BUDGET);
        self.broker().read_range(topic, partition, offset, max, max_bytes)
    }

    fn read_error(&self, correlation: u32, topic: &Topic, partition: u32, e: &BrokerError) {
        match e {
            BrokerError::Read(read) => {
                let range = match self.broker().watermarks(topic, partition) {
                    Ok((low, high)) => format!("the readable range is [{low}, {high})"),
                    Err(_) => String::new(),
                };
                self.error(correlation, ErrorCode::OffsetOutOfRange, format!("{read}; {range}"));
            }
            e => self.broker_error(correlation, e),
        }
    }

    fn fetch_response(offset: u64, r: kaelix_broker::RangeRead) -> (usize, Response) {
        let next_offset = r.messages.last().and_then(Message::offset).map_or(offset, |o| o + 1);
        let len = messages_len(&r.messages);
        let response = Response::FetchResult {
            low_watermark: r.low_watermark,
            high_watermark: r.high_watermark,
            next_offset,
            messages: r.messages,
        };
        (len, response)
    }

    fn send_fetch_result(&self, correlation: u32, offset: u64, r: kaelix_broker::RangeRead) {
        let (_, response) = Self::fetch_response(offset, r);
        self.respond(correlation, &response);
    }

    async fn send_fetch_result_large(&self, correlation: u32, offset: u64, r: kaelix_broker::RangeRead) {
        let (len, response) = Self::fetch_response(offset, r);
        self.send_large(len, |buf| response.encode(correlation, buf)).await;
    }

    // ---- subscriptions -------------------------------------------------

    fn subscribe(
        self: &Arc<Self>,
        correlation: u32,
        id: u32,
        pattern: &Pattern,
        queue_group: Option<Name>,
        start: StartPosition,
        credit: u32,
    ) {
        let limit = self.shared.config().limits.max_subscriptions;
        {
            let subs = self.subs();
            if subs.contains_key(&id) {
                return self.error(
                    correlation,
                    ErrorCode::SubscriptionExists,
                    format!("subscription {id} is already open on this connection"),
                );
            }
            if limit != 0 && subs.len() >= limit {
                return self.error(
                    correlation,
                    ErrorCode::InvalidRequest,
                    format!("a connection may open at most {limit} subscriptions"),
                );
            }
        }
        let options = match queue_group {
            Some(_) if start != StartPosition::Latest => {
                let text = "a queue-group subscription starts at the latest position (it shares live messages)";
                return self.error(correlation, ErrorCode::InvalidRequest, text);
            }
            Some(group) => {
                SubscribeOptions { queue_group: Some(group.as_str().to_owned()), ..SubscribeOptions::default() }
            }
            None => SubscribeOptions { start: Some(start), ..SubscribeOptions::default() },
        };
        let sub = match self.broker().subscribe(pattern.as_str(), options) {
            Ok(sub) => sub,
            Err(e) => return self.broker_error(correlation, &e),
        };
        let state = Arc::new(SubState::new(credit));
        self.subs().insert(id, state.clone());
        // SubscribeOk goes out before the pump can push anything.
        self.respond(correlation, &Response::SubscribeOk { subscription: id });
        let pump = subscription::run_pump(self.clone(), id, state.clone(), sub);
        if let Err(refused) = self.shared.rt.try_spawn(Priority::High, "native-subscription", pump) {
            // SubscribeOk is out: end the subscription the way a pump that
            // stops does (the broker subscription went with the pump).
            tracing::warn!(client = self.id, "a subscription ended at once: {refused}");
            self.forget_subscription(id, &state);
            state.end(|was_open| {
                if was_open {
                    self.outbound.append_control(|buf| {
                        subscription::ended(id, ErrorCode::Throttled, "the server is at its task capacity").encode(buf);
                    });
                }
            });
        }
    }

    /// Forgets subscription `id` if it is still `state` (a pump that ended
    /// on its own).
    fn forget_subscription(&self, id: u32, state: &Arc<SubState>) {
        let mut subs = self.subs();
        if subs.get(&id).is_some_and(|s| Arc::ptr_eq(s, state)) {
            subs.remove(&id);
        }
    }

    // ---- consumer groups -----------------------------------------------

    /// Why `group` has no such member.
    fn missing(&self, group: &Name) -> groups::Missing {
        if self.broker().has_group(group.as_str()) { groups::Missing::Member } else { groups::Missing::Group }
    }

    /// The member, its session refreshed; answers the error if there is none.
    fn member(&self, correlation: u32, group: &Name, member: MemberId) -> Option<Arc<GroupMember<R>>> {
        let found = self.shared.memberships.touch(group.as_str(), member, self.shared.rt.now());
        if found.is_none() {
            self.error(correlation, self.missing(group).code(), missing_text(group, member));
        }
        found
    }

    fn assignment(&self, correlation: u32, member: &GroupMember<R>) {
        match member.assignment() {
            Ok((generation, partitions)) => {
                let response = Response::GroupAssignment { member: member.id(), generation, partitions };
                self.respond(correlation, &response);
            }
            Err(e) => self.broker_error(correlation, &e),
        }
    }

    fn group_join(&self, correlation: u32, group: &Name, topic: &Topic, member: Option<MemberId>) {
        if let Some(consumed) = self.broker().group_topic(group.as_str())
            && &consumed != topic
        {
            let text = format!("consumer group {group} consumes {consumed}, not {topic}");
            return self.error(correlation, ErrorCode::InvalidRequest, text);
        }
        let member = match member {
            Some(id) => match self.member(correlation, group, id) {
                Some(m) => m,
                None => return,
            },
            None => match self.broker().join_group(group.as_str(), topic.as_str()) {
                Ok(m) => {
                    tracing::debug!(client = self.id, %group, member = m.id().0, "consumer-group member joined");
                    self.shared.memberships.insert(group.as_str(), m, self.shared.rt.now())
                }
                Err(e) => return self.broker_error(correlation, &e),
            },
        };
        self.assignment(correlation, &member);
    }

    fn group_fetch(self: &Arc<Self>, correlation: u32, group: &Name, id: MemberId, limits: FetchLimits) {
        if limits.max_messages == 0 {
            return self.error(correlation, ErrorCode::InvalidRequest, "max messages must be at least 1");
        }
        let Some(member) = self.member(correlation, group, id) else { return };
        let max = limits.max_messages.min(self.shared.config().native.max_batch) as usize;
        let max_bytes = (limits.max_bytes as usize).min(FETCH_FRAME_BUDGET);
        let wait = self.wait_for(&limits);
        // What is readable now, without waiting (`None`: nothing yet).
        match member.poll_limited(max, max_bytes).now_or_never() {
            Some(Err(e)) => self.broker_error(correlation, &e),
            Some(Ok(batch)) => {
                let response = Response::GroupMessages { generation: batch.generation, messages: batch.messages };
                self.respond(correlation, &response);
            }
            None if wait.is_zero() || self.closing.is_raised() => self.group_messages_now(correlation, &member),
            None => {
                let conn = self.clone();
                let group = group.clone();
                self.spawn_op(correlation, "native-group-fetch", async move {
                    let poll = timeout(&conn.shared.rt, wait, member.poll_limited(max, max_bytes));
                    let batch = match unless(&conn.closing, poll).await {
                        Some(Ok(Ok(batch))) => batch,
                        Some(Ok(Err(e))) => return conn.broker_error(correlation, &e),
                        // The wait ran out (or the connection closes).
                        _ => match member.poll_limited(max, max_bytes).now_or_never() {
                            Some(Ok(batch)) => batch,
                            Some(Err(e)) => return conn.broker_error(correlation, &e),
                            None => return conn.group_messages_now(correlation, &member),
                        },
                    };
                    // The member was busy until now: its session counts from here.
                    let _ = conn.shared.memberships.touch(group.as_str(), id, conn.shared.rt.now());
                    let len = messages_len(&batch.messages);
                    let response = Response::GroupMessages { generation: batch.generation, messages: batch.messages };
                    conn.send_large(len, |buf| response.encode(correlation, buf)).await;
                });
            }
        }
    }

    /// Answers a group fetch that found nothing: no messages, in the
    /// group's current generation.
    fn group_messages_now(&self, correlation: u32, member: &GroupMember<R>) {
        match member.assignment() {
            Ok((generation, _)) => {
                self.respond(correlation, &Response::GroupMessages { generation, messages: Vec::new() });
            }
            Err(e) => self.broker_error(correlation, &e),
        }
    }

    // ---- administration ------------------------------------------------

    fn create_topic(
        &self,
        correlation: u32,
        topic: &Topic,
        partitions: u32,
        storage: StorageSpec,
        retention: Retention,
    ) {
        let max = self.shared.config().native.max_partitions;
        if partitions == 0 || partitions > max {
            let text = format!("a topic has 1..={max} partitions on this server; {partitions} asked");
            return self.error(correlation, ErrorCode::InvalidRequest, text);
        }
        let storage = match storage {
            StorageSpec::Memory => StorageKind::Memory,
            StorageSpec::Durable => StorageKind::Durable(DurableConfig::default()),
            StorageSpec::Replicated { replication_factor } => {
                let text = format!(
                    "replicated topics (replication factor {replication_factor}) cannot be created at run time: a cluster member's are the topics its configuration file declares with storage = \"replicated\" (placing new ones needs the cluster controller, not built yet)"
                );
                return self.error(correlation, ErrorCode::InvalidRequest, text);
            }
        };
        let retention = RetentionPolicy {
            max_records: retention.max_records,
            // Memory topics stay bounded unless they ask for a byte limit.
            max_bytes: retention.max_bytes.or(match storage {
                StorageKind::Memory => Some(DEFAULT_RETAINED_BYTES),
                StorageKind::Durable(_) | StorageKind::Replicated(_) => None,
            }),
            max_age: retention.max_age_ms.map(Duration::from_millis),
        };
        match self.broker().create_new_topic(topic, TopicConfig { partitions, retention, storage }) {
            Ok(()) => {
                tracing::info!(client = self.id, %topic, partitions, ?storage, "topic created");
                self.respond(correlation, &Response::TopicCreated);
            }
            Err(e) => self.broker_error(correlation, &e),
        }
    }

    fn describe_topic(&self, correlation: u32, topic: &Topic) {
        let Some(config) = self.broker().topic_config(topic) else {
            return self.error(correlation, ErrorCode::UnknownTopic, format!("unknown topic {topic}"));
        };
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for partition in 0..config.partitions {
            match self.broker().watermarks(topic, partition) {
                Ok((low_watermark, high_watermark)) => {
                    partitions.push(PartitionInfo { partition, low_watermark, high_watermark });
                }
                Err(e) => return self.broker_error(correlation, &e),
            }
        }
        let r = config.retention;
        let description = TopicDescription {
            topic: topic.clone(),
            storage: storage_spec(&config.storage),
            retention: Retention {
                max_records: r.max_records,
                max_bytes: r.max_bytes,
                max_age_ms: r.max_age.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
            partitions,
        };
        self.respond(correlation, &Response::TopicDescription(description));
    }
}

/// The protocol's storage kind of a topic.
fn storage_spec(storage: &StorageKind) -> StorageSpec {
    match storage {
        StorageKind::Memory => StorageSpec::Memory,
        StorageKind::Durable(_) => StorageSpec::Durable,
        StorageKind::Replicated(r) => StorageSpec::Replicated { replication_factor: r.factor },
    }
}

/// An upper bound of the bytes a frame of `messages` takes.
fn messages_len(messages: &[Message]) -> usize {
    64 + messages.iter().map(|m| 4 + m.encoded_len()).sum::<usize>()
}

fn unknown_subscription(id: u32) -> String {
    format!("no open subscription {id} on this connection")
}

fn missing_text(group: &Name, member: MemberId) -> String {
    format!("member {} is not in consumer group {group}", member.0)
}

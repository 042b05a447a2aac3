//! [`Connection`]: one TCP connection to a server speaking the native
//! protocol, shared by every producer, consumer and admin made from it.
//!
//! Connecting sends `Hello` and waits for `HelloOk`. Then two tasks run on
//! the runtime: a writer sending the frames queued by callers in order, and
//! a reader cutting the server's bytes into frames and routing each —
//! a response to the caller waiting for its correlation id, a push to its
//! subscription's channel. Requests are pipelined: any number may be
//! outstanding, and each one's answer arrives whenever the server sends it.
//!
//! When the connection ends (either side closed it, or it broke), every
//! outstanding request fails with [`ClientError::Closed`] and every
//! subscription ends. Dropping the last handle closes the connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures_channel::{mpsc, oneshot};
use futures_util::StreamExt;
use kaelix_core::runtime::{ByteStream, Priority, Runtime, timeout};
use kaelix_core::time::Duration;
use kaelix_protocol::{
    Credentials, DEFAULT_MAX_FRAME_BYTES, Frame, FrameDecoder, MAX_SECRET_BYTES, Message, Name, ProtocolError, Push,
    Request, Response, SUPPORTED_VERSIONS, ServerFrame, ServerInfo,
};

use crate::error::{ClientError, Result};

/// How a client connects and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The self-description sent in `Hello`.
    pub client_name: String,
    /// Longest the TCP connect plus the handshake may take.
    pub connect_timeout: Duration,
    /// Longest a request waits for its answer (a long-polling fetch waits
    /// this on top of its own wait).
    pub request_timeout: Duration,
    /// Largest frame accepted from the server (after the length prefix).
    pub max_frame_bytes: usize,
    /// What to log in with, for a server with an `[auth]` section (a token,
    /// or a user and password); `None` connects anonymously. `Debug`
    /// shows no secret.
    pub credentials: Option<Credentials>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_name: concat!("kaelix-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            credentials: None,
        }
    }
}

/// What a subscription's channel carries.
pub(crate) enum SubEvent {
    /// A `Deliver`.
    Messages(Vec<Message>),
    /// The server ended the subscription (`SubscriptionEnded`).
    Ended(ClientError),
}

/// The connection's routing table, shared with the reader task.
struct Routes {
    next_correlation: u32,
    pending: BTreeMap<u32, oneshot::Sender<Result<Response>>>,
    next_subscription: u32,
    subscriptions: BTreeMap<u32, mpsc::UnboundedSender<SubEvent>>,
    /// Set once the connection ended: why.
    closed: Option<String>,
}

type Shared = Arc<Mutex<Routes>>;

fn lock(routes: &Shared) -> MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner<R: Runtime> {
    rt: R,
    config: ClientConfig,
    server: ServerInfo,
    peer: SocketAddr,
    stream: R::ByteStream,
    outgoing: mpsc::UnboundedSender<Bytes>,
    routes: Shared,
}

impl<R: Runtime> Drop for Inner<R> {
    fn drop(&mut self) {
        // The writer ends with the last sender; closing the stream ends the
        // reader (and the server's side).
        self.outgoing.close_channel();
        self.stream.close();
    }
}

/// A connection to a server (cheap to clone: clones share it).
pub struct Connection<R: Runtime> {
    inner: Arc<Inner<R>>,
}

impl<R: Runtime> Clone for Connection<R> {
    fn clone(&self) -> Self {
        Connection { inner: self.inner.clone() }
    }
}

impl<R: Runtime> std::fmt::Debug for Connection<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("peer", &self.inner.peer).field("server", &self.inner.server).finish()
    }
}

impl<R: Runtime> Connection<R> {
    /// Connects to `addr` with the default [`ClientConfig`].
    pub async fn connect(rt: &R, addr: SocketAddr) -> Result<Connection<R>> {
        Self::connect_with(rt, addr, ClientConfig::default()).await
    }

    /// Connects to `addr` and performs the handshake.
    pub async fn connect_with(rt: &R, addr: SocketAddr, config: ClientConfig) -> Result<Connection<R>> {
        let name = Name::new(config.client_name.clone())
            .map_err(|e| ClientError::InvalidArgument(format!("client name: {e}")))?;
        if let Some(credentials) = &config.credentials
            && credentials.secret_len() > MAX_SECRET_BYTES
        {
            return Err(ClientError::InvalidArgument(format!(
                "credentials: a secret of {} bytes (at most {MAX_SECRET_BYTES})",
                credentials.secret_len()
            )));
        }
        let limit = config.connect_timeout;
        let hello = Request::Hello {
            versions: SUPPORTED_VERSIONS.to_vec(),
            client: name,
            credentials: config.credentials.clone(),
        };
        let (stream, decoder, server) = timeout(rt, limit, handshake(rt, addr, hello, config.max_frame_bytes))
            .await
            .map_err(|_| ClientError::Timeout(limit))??;
        let routes: Shared = Arc::new(Mutex::new(Routes {
            next_correlation: 0,
            pending: BTreeMap::new(),
            next_subscription: 0,
            subscriptions: BTreeMap::new(),
            closed: None,
        }));
        let (outgoing, queue) = mpsc::unbounded();
        drop(rt.spawn(Priority::High, "kaelix-client-writer", write_loop(stream.clone(), queue, routes.clone())));
        drop(rt.spawn(Priority::High, "kaelix-client-reader", read_loop(stream.clone(), decoder, routes.clone())));
        let inner = Inner { rt: rt.clone(), config, server, peer: addr, stream, outgoing, routes };
        Ok(Connection { inner: Arc::new(inner) })
    }

    /// What the server announced in its handshake: the protocol version,
    /// its id and software, and its limits.
    pub fn server_info(&self) -> &ServerInfo {
        &self.inner.server
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The settings the connection was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Whether the connection ended.
    pub fn is_closed(&self) -> bool {
        lock(&self.inner.routes).closed.is_some()
    }

    /// Closes the connection: outstanding requests fail, subscriptions end.
    pub fn close(&self) {
        close_routes(&self.inner.routes, "closed by the client");
        self.inner.outgoing.close_channel();
        self.inner.stream.close();
    }

    /// A round trip to the server (`Ping`), timed on the runtime's clock.
    pub async fn ping(&self) -> Result<Duration> {
        let start = self.inner.rt.now();
        match self.request(&Request::Ping).await? {
            Response::Pong => Ok(self.inner.rt.now().saturating_duration_since(start)),
            other => Err(unexpected("Pong", &other)),
        }
    }

    /// Sends `request` and waits up to the request timeout for its answer.
    /// An `Error` answer is [`ClientError::Server`].
    pub async fn request(&self, request: &Request) -> Result<Response> {
        self.request_within(request, self.inner.config.request_timeout).await
    }

    /// [`Connection::request`] waiting up to `wait`.
    pub async fn request_within(&self, request: &Request, wait: Duration) -> Result<Response> {
        debug_assert!(request.expects_response(), "{:?} is not answered", request.kind());
        let (tx, rx) = oneshot::channel();
        let correlation = {
            let mut routes = lock(&self.inner.routes);
            if let Some(reason) = &routes.closed {
                return Err(ClientError::Closed(reason.clone()));
            }
            let correlation = next_correlation(&mut routes);
            routes.pending.insert(correlation, tx);
            correlation
        };
        if let Err(e) = self.send_frame(request, correlation) {
            lock(&self.inner.routes).pending.remove(&correlation);
            return Err(e);
        }
        match timeout(&self.inner.rt, wait, rx).await {
            Ok(Ok(answer)) => match answer? {
                Response::Error { code, leader, message } => Err(ClientError::Server { code, message, leader }),
                response => Ok(response),
            },
            Ok(Err(oneshot::Canceled)) => Err(self.closed_error()),
            Err(_) => {
                lock(&self.inner.routes).pending.remove(&correlation);
                Err(ClientError::Timeout(wait))
            }
        }
    }

    /// Sends a request the server does not answer when it succeeds
    /// (`Credit`, `Produce` with acks `none`).
    pub fn send(&self, request: &Request) -> Result<()> {
        let correlation = {
            let mut routes = lock(&self.inner.routes);
            if let Some(reason) = &routes.closed {
                return Err(ClientError::Closed(reason.clone()));
            }
            next_correlation(&mut routes)
        };
        self.send_frame(request, correlation)
    }

    fn send_frame(&self, request: &Request, correlation: u32) -> Result<()> {
        let mut buf = BytesMut::new();
        request.encode(correlation, &mut buf);
        let max = self.inner.server.max_frame_bytes as usize;
        let len = buf.len() - kaelix_protocol::LENGTH_PREFIX_BYTES;
        if len > max {
            return Err(ClientError::InvalidArgument(format!(
                "a {} frame of {len} bytes exceeds the server's limit of {max} bytes",
                request.kind().name()
            )));
        }
        self.inner.outgoing.unbounded_send(buf.freeze()).map_err(|_| self.closed_error())
    }

    fn closed_error(&self) -> ClientError {
        let reason = lock(&self.inner.routes).closed.clone();
        ClientError::Closed(reason.unwrap_or_else(|| "the connection ended".to_owned()))
    }

    /// Registers a subscription channel under a fresh id.
    pub(crate) fn open_subscription(&self) -> Result<(u32, mpsc::UnboundedReceiver<SubEvent>)> {
        let mut routes = lock(&self.inner.routes);
        if let Some(reason) = &routes.closed {
            return Err(ClientError::Closed(reason.clone()));
        }
        let (tx, rx) = mpsc::unbounded();
        let mut id = routes.next_subscription;
        while routes.subscriptions.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        routes.next_subscription = id.wrapping_add(1);
        routes.subscriptions.insert(id, tx);
        Ok((id, rx))
    }

    /// Forgets a subscription's channel.
    pub(crate) fn forget_subscription(&self, id: u32) {
        lock(&self.inner.routes).subscriptions.remove(&id);
    }
}

/// A correlation id not in use, never 0 (the id of pushes).
fn next_correlation(routes: &mut Routes) -> u32 {
    loop {
        routes.next_correlation = routes.next_correlation.wrapping_add(1);
        let id = routes.next_correlation;
        if id != 0 && !routes.pending.contains_key(&id) {
            return id;
        }
    }
}

pub(crate) fn unexpected(expected: &str, got: &Response) -> ClientError {
    ClientError::Protocol(format!("expected {expected}, the server answered {}", got.kind().name()))
}

/// Connects, sends `hello`, waits for the answer.
async fn handshake<R: Runtime>(
    rt: &R,
    addr: SocketAddr,
    hello: Request,
    max_frame_bytes: usize,
) -> Result<(R::ByteStream, FrameDecoder, ServerInfo)> {
    let stream = rt.connect_tcp(addr).await.map_err(ClientError::Connect)?;
    let mut encoded = BytesMut::new();
    hello.encode(1, &mut encoded);
    let hello = encoded;
    stream.write(hello.freeze()).await.map_err(|e| ClientError::Closed(format!("sending Hello: {e}")))?;
    let mut decoder = FrameDecoder::new(max_frame_bytes);
    let frame = loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err(e) => return Err(ClientError::Protocol(format!("handshake answer: {e}"))),
        }
        match stream.read().await {
            Ok(Some(chunk)) => decoder.extend(&chunk),
            Ok(None) => {
                return Err(ClientError::Closed("the server closed the connection during the handshake".into()));
            }
            Err(e) => return Err(ClientError::Closed(format!("during the handshake: {e}"))),
        }
    };
    let answer = ServerFrame::decode(&frame).map_err(|e| ClientError::Protocol(format!("handshake answer: {e}")))?;
    match answer {
        ServerFrame::Response { response: Response::HelloOk(info), .. } => {
            if !SUPPORTED_VERSIONS.contains(&info.version) {
                stream.close();
                return Err(ClientError::Protocol(format!("the server chose version {}, not offered", info.version)));
            }
            Ok((stream, decoder, info))
        }
        ServerFrame::Response { response: Response::Error { code, leader, message }, .. } => {
            stream.close();
            Err(ClientError::Server { code, message, leader })
        }
        other => {
            stream.close();
            Err(ClientError::Protocol(format!("expected HelloOk, got {other:?}")))
        }
    }
}

/// Sends queued frames in order, several per write when they queued up.
async fn write_loop<S: ByteStream>(stream: S, mut queue: mpsc::UnboundedReceiver<Bytes>, routes: Shared) {
    while let Some(first) = queue.next().await {
        let mut chunk = BytesMut::from(first);
        while chunk.len() < (1 << 20) {
            match queue.try_recv() {
                Ok(more) => chunk.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = stream.write(chunk.freeze()).await {
            close_routes(&routes, &format!("write failed: {e}"));
            stream.close();
            return;
        }
    }
}

/// Reads frames and routes them until the connection ends.
async fn read_loop<S: ByteStream>(stream: S, mut decoder: FrameDecoder, routes: Shared) {
    let reason = 'read: loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let Some(reason) = route(&routes, &frame) {
                        break 'read reason;
                    }
                }
                Ok(None) => break,
                Err(e) => break 'read format!("undecodable input from the server: {e}"),
            }
        }
        match stream.read().await {
            Ok(Some(chunk)) => decoder.extend(&chunk),
            Ok(None) => break "the server closed the connection".to_owned(),
            Err(e) => break format!("read failed: {e}"),
        }
    };
    close_routes(&routes, &reason);
    stream.close();
}

/// Routes one frame; `Some(reason)` ends the connection.
fn route(routes: &Shared, frame: &Frame) -> Option<String> {
    let decoded = match ServerFrame::decode(frame) {
        Ok(decoded) => decoded,
        // A kind this version does not define: ignored (PROTOCOL.md §10).
        Err(ProtocolError::UnknownKind { .. }) => return None,
        Err(e) => {
            let error = ClientError::Protocol(format!("undecodable frame from the server: {e}"));
            let waiter = lock(routes).pending.remove(&frame.correlation);
            return match waiter {
                Some(tx) => {
                    let _ = tx.send(Err(error));
                    None
                }
                None => Some(error.to_string()),
            };
        }
    };
    match decoded {
        ServerFrame::Response { correlation, response } => {
            let waiter = lock(routes).pending.remove(&correlation);
            match (waiter, response) {
                (Some(tx), response) => {
                    let _ = tx.send(Ok(response));
                }
                // An error about the connection itself (the server closes
                // after it): the reason the connection ends.
                (None, Response::Error { code, message, .. }) if correlation == 0 => {
                    return Some(format!("the server reported {code}: {message}"));
                }
                // An answer nobody waits for (timed out, or to a request
                // sent without waiting, e.g. an unsubscribe on drop).
                (None, _) => {}
            }
        }
        ServerFrame::Push(Push::Deliver { subscription, messages }) => {
            let routes = lock(routes);
            if let Some(tx) = routes.subscriptions.get(&subscription) {
                let _ = tx.unbounded_send(SubEvent::Messages(messages));
            }
        }
        ServerFrame::Push(Push::SubscriptionEnded { subscription, code, message }) => {
            let tx = lock(routes).subscriptions.remove(&subscription);
            if let Some(tx) = tx {
                let _ = tx.unbounded_send(SubEvent::Ended(ClientError::Server { code, message, leader: None }));
            }
        }
    }
    None
}

/// Marks the connection ended: outstanding requests fail, subscriptions end.
fn close_routes(routes: &Shared, reason: &str) {
    let (pending, subscriptions) = {
        let mut r = lock(routes);
        if r.closed.is_none() {
            r.closed = Some(reason.to_owned());
        }
        (std::mem::take(&mut r.pending), std::mem::take(&mut r.subscriptions))
    };
    // Dropping the senders wakes the waiters (`Canceled` → `Closed`).
    drop(pending);
    for tx in subscriptions.into_values() {
        let _ = tx.unbounded_send(SubEvent::Ended(ClientError::Closed(reason.to_owned())));
    }
}

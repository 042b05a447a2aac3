//! TCP on the driver: framed connections, client streams, byte streams
//! (`byte_streams`: raw TCP to socket addresses), and the node-to-node
//! transport.
//!
//! # Client streams
//!
//! A connection starts with a hello ([`crate::frame`]) naming the
//! connecting node, then carries length-prefixed frames both ways. Sends
//! from several clones of a stream are queued in order into one buffer and
//! flushed by whichever sender is polled; a send completes once its bytes
//! are handed to the kernel. A listener accepts sockets and waits for each
//! one's hello concurrently (a client that never says hello is dropped after
//! [`HELLO_TIMEOUT`] without holding up others).
//!
//! # The node-to-node transport
//!
//! Best-effort datagrams, as the contract says, carried over one outbound
//! TCP connection per peer. Each peer has a bounded send queue (oldest
//! messages are dropped when it is full: fresher state is worth more to a
//! protocol that retransmits) and a link task that connects, pumps the
//! queue, and on failure reconnects with exponential backoff and jitter
//! ([`Backoff`]). Inbound connections are accepted on the node's peer
//! address; every frame goes to one bounded inbox (full: dropped and
//! counted). A peer that connects to us is up, so an inbound connection
//! **kicks** our link to it: a link waiting out its backoff retries at
//! once with the backoff reset. Without it a restarted peer would hear
//! nothing from us for up to [`TransportConfig::backoff_max`] (a Raft
//! follower that restarted would not learn its leader for that long), while
//! its own messages reach us at once. Messages in flight when a connection breaks are lost — the
//! protocols above retransmit, exactly as they must under the simulator's
//! lossy network.
//!
//! The transport has [`CHANNELS`] channels, each with its own inbox and
//! inbox bound: every datagram travels with its channel's number in its
//! frame ([`crate::frame::encode_channel_frame`]) over the one connection
//! per peer, and lands in that channel's inbox. Independent services of one
//! node (the Raft groups of a cluster member on channel 0, its SWIM
//! membership on another — see `RealRuntime::channel`) thus share the
//! connections without reading each other's datagrams, and a channel
//! nobody reads fills only its own inbox.
//!
//! Peers' addresses form an **address book** that grows at run time: it
//! starts as the configured peers, and [`Transport::learn`]
//! (`RealRuntime::learn_peer`) adds or moves an entry — how a member
//! learned through SWIM (whose record carries its address) becomes
//! reachable. A moved address takes effect at the link's next connection
//! attempt (a link waiting out a backoff retries at once). Inbound
//! connections are accepted from any node but ourselves, in the book or
//! not: a node joining by address is a stranger until its SWIM record
//! arrives, and its datagrams must reach the protocols (which decide what a
//! stranger's message is worth); answers to it are dropped as addressed to
//! an unknown peer until its address is learned, and retransmitted.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // sockets are this module's job

use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, poll_fn};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures_channel::mpsc;
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use kaelix_core::NodeId;
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::runtime::{ClientStream, Listener, MAX_DATAGRAM_BYTES, MAX_FRAME_BYTES, NetError, Priority};
use kaelix_core::time::Duration;

mod byte_streams;

pub(crate) use byte_streams::connect_bytes;
pub use byte_streams::{RealByteListener, RealByteStream, UNKNOWN_NODE};

use crate::driver::{Direction, Driver, IoSlot, Sleep};
use crate::executor::ExecutorHandle;
use crate::frame::{CLIENT_MAGIC, FrameDecoder, PEER_MAGIC, encode_channel_frame, encode_frame, encode_hello};

/// How long an accepted connection may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 64 * 1024;

fn net_err(e: io::Error) -> NetError {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => NetError::Reset,
        _ => NetError::Io(e.to_string()),
    }
}

/// A TCP socket registered with the driver; deregisters on drop.
struct Socket<S: mio::event::Source> {
    io: S,
    token: usize,
    slot: Arc<IoSlot>,
    driver: Arc<Driver>,
}

impl<S: mio::event::Source> Socket<S> {
    fn register(driver: &Arc<Driver>, mut io: S) -> io::Result<Self> {
        let (token, slot) = driver.register(&mut io)?;
        Ok(Socket { io, token, slot, driver: driver.clone() })
    }
}

impl<S: mio::event::Source> Drop for Socket<S> {
    fn drop(&mut self) {
        self.driver.deregister(self.token, &mut self.io);
    }
}

struct ReadHalf {
    decoder: FrameDecoder,
    eof: bool,
}

struct WriteHalf {
    out: BytesMut,
    enqueued: u64,
    flushed: u64,
    error: Option<NetError>,
    /// `close` was called with bytes still queued: shut the socket once
    /// they are written.
    shutdown_pending: bool,
}

/// A connected TCP socket with an ordered send queue: what framed streams
/// and byte streams share. Writes from any clone of a stream are queued in
/// order into one buffer and flushed by whichever writer is polled; a write
/// completes once its bytes are handed to the kernel.
pub(crate) struct TcpConn {
    socket: Socket<mio::net::TcpStream>,
    write: Mutex<WriteHalf>,
    closed: AtomicBool,
}

impl TcpConn {
    fn new(socket: Socket<mio::net::TcpStream>) -> Self {
        TcpConn {
            socket,
            write: Mutex::new(WriteHalf {
                out: BytesMut::new(),
                enqueued: 0,
                flushed: 0,
                error: None,
                shutdown_pending: false,
            }),
            closed: AtomicBool::new(false),
        }
    }

    /// Whether [`Self::close`] was called.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// One read syscall into `buf`; `Ok(0)` at end of stream.
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<Result<usize, NetError>> {
        let stream = &self.socket.io;
        self.socket.slot.poll_io(cx, Direction::Read, || (&*stream).read(buf)).map_err(net_err)
    }

    /// Queues what `encode` appends to the send buffer; returns the stream
    /// position it ends at.
    fn enqueue(&self, encode: impl FnOnce(&mut BytesMut)) -> Result<u64, NetError> {
        let mut write = self.write.lock().expect("write half lock");
        if let Some(e) = &write.error {
            return Err(e.clone());
        }
        if self.is_closed() {
            return Err(NetError::Reset);
        }
        let before = write.out.len();
        encode(&mut write.out);
        write.enqueued += (write.out.len() - before) as u64;
        Ok(write.enqueued)
    }

    /// Accounts for one write syscall's result.
    fn wrote(&self, write: &mut WriteHalf, result: io::Result<usize>) {
        match result {
            Ok(0) => write.error = Some(NetError::Reset),
            Ok(n) => {
                write.out.advance(n);
                write.flushed += n as u64;
            }
            Err(e) => write.error = Some(net_err(e)),
        }
        self.shutdown_if_drained(write);
    }

    /// Shuts the socket if a close waits for the buffer and it is drained
    /// (or can never be).
    fn shutdown_if_drained(&self, write: &mut WriteHalf) {
        if write.shutdown_pending && (write.out.is_empty() || write.error.is_some()) {
            write.shutdown_pending = false;
            let _ = self.socket.io.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Flushes until the stream position `until` is written.
    fn poll_flush(&self, cx: &mut Context<'_>, until: u64) -> Poll<Result<(), NetError>> {
        let mut write = self.write.lock().expect("write half lock");
        loop {
            if write.flushed >= until {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &write.error {
                return Poll::Ready(Err(e.clone()));
            }
            let stream = &self.socket.io;
            let out = &write.out;
            match self.socket.slot.poll_io(cx, Direction::Write, || (&*stream).write(out)) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => self.wrote(&mut write, r),
            }
        }
    }

    /// Queues `data` and waits until it is handed to the kernel.
    async fn write_all(&self, data: &[u8]) -> Result<(), NetError> {
        let until = self.enqueue(|out| out.extend_from_slice(data))?;
        poll_fn(|cx| self.poll_flush(cx, until)).await
    }

    /// Refuses further writes and shuts the socket (both directions) once
    /// what is queued is written — at once if the kernel takes it now,
    /// otherwise when a writer still waiting flushes the rest (or, should
    /// none be left, when the last handle drops the socket).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut write = self.write.lock().expect("write half lock");
        write.shutdown_pending = true;
        self.shutdown_if_drained(&mut write);
        while write.shutdown_pending {
            match (&self.socket.io).write(&write.out) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => self.wrote(&mut write, r),
            }
        }
    }
}

/// One framed TCP connection (shared by the clones of a stream).
struct FramedConn {
    conn: TcpConn,
    peer: NodeId,
    max_frame: usize,
    read: Mutex<ReadHalf>,
}

impl FramedConn {
    fn new(socket: Socket<mio::net::TcpStream>, max_frame: usize, hello: Option<[u8; 4]>) -> Self {
        FramedConn {
            conn: TcpConn::new(socket),
            peer: NodeId(u64::MAX),
            max_frame,
            read: Mutex::new(ReadHalf { decoder: FrameDecoder::new(max_frame, hello), eof: false }),
        }
    }

    /// Reads once more into the decoder; Ready(Ok(false)) at end of stream.
    fn poll_fill(&self, cx: &mut Context<'_>, read: &mut ReadHalf) -> Poll<Result<bool, NetError>> {
        let mut chunk = vec![0u8; READ_CHUNK];
        match self.conn.poll_read(cx, &mut chunk) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(0)) => {
                read.eof = true;
                Poll::Ready(Ok(false))
            }
            Poll::Ready(Ok(n)) => {
                read.decoder.extend(&chunk[..n]);
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn poll_hello(&self, cx: &mut Context<'_>) -> Poll<Result<NodeId, NetError>> {
        let mut read = self.read.lock().expect("read half lock");
        loop {
            match read.decoder.next_hello() {
                Ok(Some(node)) => return Poll::Ready(Ok(node)),
                Ok(None) if read.eof => return Poll::Ready(Err(NetError::Reset)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(NetError::Io(e.to_string()))),
            }
            match self.poll_fill(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, NetError>> {
        if self.conn.is_closed() {
            return Poll::Ready(Ok(None));
        }
        let mut read = self.read.lock().expect("read half lock");
        loop {
            match read.decoder.next_frame() {
                Ok(Some(frame)) => return Poll::Ready(Ok(Some(frame))),
                Ok(None) => {}
                Err(e) => {
                    // The stream is out of sync: nothing after this is a frame.
                    self.close();
                    return Poll::Ready(Err(NetError::Io(e.to_string())));
                }
            }
            if read.eof {
                let torn = read.decoder.pending_bytes() > 0;
                return Poll::Ready(if torn { Err(NetError::Reset) } else { Ok(None) });
            }
            match self.poll_fill(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn enqueue_frame(&self, frame: &[u8]) -> Result<u64, NetError> {
        if frame.len() > self.max_frame {
            return Err(NetError::FrameTooLarge { len: frame.len(), max: self.max_frame });
        }
        self.conn.enqueue(|out| encode_frame(out, frame))
    }

    /// Queues a node-to-node frame: `channel`, then `datagram`.
    fn enqueue_channel_frame(&self, channel: u8, datagram: &[u8]) -> Result<u64, NetError> {
        if datagram.len() + 1 > self.max_frame {
            return Err(NetError::FrameTooLarge { len: datagram.len() + 1, max: self.max_frame });
        }
        self.conn.enqueue(|out| encode_channel_frame(out, channel, datagram))
    }

    fn poll_flush(&self, cx: &mut Context<'_>, until: u64) -> Poll<Result<(), NetError>> {
        self.conn.poll_flush(cx, until)
    }

    async fn send_frame(&self, frame: &[u8]) -> Result<(), NetError> {
        let until = self.enqueue_frame(frame)?;
        poll_fn(|cx| self.poll_flush(cx, until)).await
    }

    fn close(&self) {
        self.conn.close();
    }
}

/// Connects a socket to `addr` and waits until the kernel reports it
/// connected, with `TCP_NODELAY` set.
async fn connect_socket(driver: &Arc<Driver>, addr: SocketAddr) -> io::Result<Socket<mio::net::TcpStream>> {
    let stream = mio::net::TcpStream::connect(addr)?;
    let socket = Socket::register(driver, stream)?;
    // Connected once writable and the kernel reports a peer (mio's recipe).
    poll_fn(|cx| {
        let stream = &socket.io;
        socket.slot.poll_io(cx, Direction::Write, || {
            if let Some(e) = stream.take_error()? {
                return Err(e);
            }
            match stream.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            }
        })
    })
    .await?;
    let _ = socket.io.set_nodelay(true);
    Ok(socket)
}

/// Connects to `addr`, says hello as `me`, and returns the connection.
async fn connect(
    driver: &Arc<Driver>,
    addr: SocketAddr,
    me: NodeId,
    magic: [u8; 4],
    max_frame: usize,
) -> Result<FramedConn, NetError> {
    let socket = connect_socket(driver, addr)
        .await
        .map_err(|e| if e.kind() == io::ErrorKind::ConnectionRefused { NetError::Reset } else { net_err(e) })?;
    let conn = FramedConn::new(socket, max_frame, None);
    conn.conn.write_all(&encode_hello(magic, me)).await?;
    Ok(conn)
}

/// Binds a listening socket on the driver.
fn bind_listener(driver: &Arc<Driver>, addr: SocketAddr) -> io::Result<Socket<mio::net::TcpListener>> {
    Socket::register(driver, mio::net::TcpListener::bind(addr)?)
}

/// Accepts one connection on `listener`, registered with the driver, with
/// `TCP_NODELAY` set; returns it with the peer's address.
fn poll_accept_socket(
    listener: &Socket<mio::net::TcpListener>,
    cx: &mut Context<'_>,
) -> Poll<Result<(Socket<mio::net::TcpStream>, SocketAddr), NetError>> {
    let io = &listener.io;
    listener.slot.poll_io(cx, Direction::Read, || io.accept()).map(|r| {
        let (stream, peer) = r.map_err(net_err)?;
        let _ = stream.set_nodelay(true);
        Ok((Socket::register(&listener.driver, stream).map_err(net_err)?, peer))
    })
}

/// A listening socket whose accepted connections must say hello first.
struct HelloListener {
    socket: Socket<mio::net::TcpListener>,
    magic: [u8; 4],
    max_frame: usize,
    pending: Vec<(FramedConn, kaelix_core::Instant)>,
    hello_timer: Option<Sleep>,
}

impl HelloListener {
    fn bind(driver: &Arc<Driver>, addr: SocketAddr, magic: [u8; 4], max_frame: usize) -> io::Result<Self> {
        Ok(HelloListener {
            socket: bind_listener(driver, addr)?,
            magic,
            max_frame,
            pending: Vec::new(),
            hello_timer: None,
        })
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Result<FramedConn, NetError>> {
        let driver = self.socket.driver.clone();
        loop {
            match poll_accept_socket(&self.socket, cx) {
                Poll::Ready(Ok((socket, _peer))) => self
                    .pending
                    .push((FramedConn::new(socket, self.max_frame, Some(self.magic)), driver.now() + HELLO_TIMEOUT)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        let now = driver.now();
        let mut i = 0;
        while i < self.pending.len() {
            match self.pending[i].0.poll_hello(cx) {
                Poll::Ready(Ok(node)) => {
                    let (mut conn, _) = self.pending.swap_remove(i);
                    conn.peer = node;
                    return Poll::Ready(Ok(conn));
                }
                // A connection that fails or dawdles is dropped (closing it).
                Poll::Ready(Err(_)) => drop(self.pending.swap_remove(i)),
                Poll::Pending if self.pending[i].1 <= now => drop(self.pending.swap_remove(i)),
                Poll::Pending => i += 1,
            }
        }
        // Wake at the earliest hello deadline to drop a silent connection.
        if let Some(earliest) = self.pending.iter().map(|(_, d)| *d).min() {
            let timer = self.hello_timer.insert(driver.sleep_until(earliest));
            let _ = std::pin::Pin::new(timer).poll(cx);
        } else {
            self.hello_timer = None;
        }
        Poll::Pending
    }
}

/// A client stream of the real runtime.
#[derive(Clone)]
pub struct RealStream {
    conn: Arc<FramedConn>,
}

impl std::fmt::Debug for RealStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealStream").field("peer", &self.conn.peer).finish()
    }
}

impl ClientStream for RealStream {
    async fn send(&self, frame: Bytes) -> Result<(), NetError> {
        self.conn.send_frame(&frame).await
    }

    async fn recv(&self) -> Result<Option<Bytes>, NetError> {
        poll_fn(|cx| self.conn.poll_recv(cx)).await
    }

    fn close(&self) {
        self.conn.close();
    }

    fn peer(&self) -> NodeId {
        self.conn.peer
    }
}

/// The client listener of the real runtime. Dropping it stops listening:
/// the socket closes, and then the node may listen again.
pub struct RealListener {
    inner: HelloListener,
    /// Declared after `inner`, so it is dropped after the socket is closed.
    _listening: ListeningFlag,
}

/// The node's "a listener is alive" flag, cleared on drop.
struct ListeningFlag(Arc<AtomicBool>);

impl Drop for ListeningFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl RealListener {
    /// Binds `addr`. `listening` is the node's flag, already set by the
    /// caller; the listener clears it when dropped (also if binding fails).
    pub(crate) fn bind(driver: &Arc<Driver>, addr: SocketAddr, listening: Arc<AtomicBool>) -> io::Result<Self> {
        let flag = ListeningFlag(listening);
        Ok(RealListener { inner: HelloListener::bind(driver, addr, CLIENT_MAGIC, MAX_FRAME_BYTES)?, _listening: flag })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.socket.io.local_addr()
    }
}

impl Listener for RealListener {
    type Stream = RealStream;

    async fn accept(&mut self) -> Result<RealStream, NetError> {
        let conn = poll_fn(|cx| self.inner.poll_accept(cx)).await?;
        Ok(RealStream { conn: Arc::new(conn) })
    }
}

pub(crate) async fn connect_client(
    driver: &Arc<Driver>,
    addr: SocketAddr,
    me: NodeId,
    to: NodeId,
) -> Result<RealStream, NetError> {
    let mut conn = connect(driver, addr, me, CLIENT_MAGIC, MAX_FRAME_BYTES)
        .await
        .map_err(|e| if e == NetError::Reset { NetError::Refused(to) } else { e })?;
    conn.peer = to;
    Ok(RealStream { conn: Arc::new(conn) })
}

/// Exponential backoff with jitter for reconnects (sans-IO: the rng is
/// handed in). Delays double from `initial` up to `max`; each is drawn
/// uniformly from its upper half, so peers that failed together do not
/// retry together.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        assert!(initial > Duration::ZERO && initial <= max, "backoff needs 0 < initial <= max");
        Backoff { initial, max, attempt: 0 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self, rng: &mut DetRng) -> Duration {
        let ceiling = self.initial.saturating_mul(1 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos() as u64;
        Duration::from_nanos(rng.random_range(nanos / 2..=nanos))
    }

    /// A connection succeeded: start over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A bounded queue of outgoing datagrams (sans-IO), each with its
/// channel. Full: the oldest message is dropped and counted.
#[derive(Debug)]
pub struct SendQueue {
    messages: VecDeque<(u8, Bytes)>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    dropped: u64,
}

impl SendQueue {
    /// A queue of at most `max_messages` messages and `max_bytes` bytes.
    pub fn new(max_messages: usize, max_bytes: usize) -> Self {
        assert!(max_messages > 0 && max_bytes >= MAX_DATAGRAM_BYTES, "a queue must hold one largest datagram");
        SendQueue { messages: VecDeque::new(), bytes: 0, max_messages, max_bytes, dropped: 0 }
    }

    /// Queues `message` of `channel`, dropping the oldest ones to make room.
    pub fn push(&mut self, channel: u8, message: Bytes) {
        assert!(message.len() <= MAX_DATAGRAM_BYTES, "oversize datagrams are refused before queueing");
        while self.messages.len() >= self.max_messages || self.bytes + message.len() > self.max_bytes {
            let (_, old) = self.messages.pop_front().expect("a full queue is not empty");
            self.bytes -= old.len();
            self.dropped += 1;
        }
        self.bytes += message.len();
        self.messages.push_back((channel, message));
    }

    /// Takes everything queued, each with its channel.
    pub fn take_all(&mut self) -> Vec<(u8, Bytes)> {
        self.bytes = 0;
        self.messages.drain(..).collect()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Messages dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Limits and timings of the node-to-node transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Per-peer send queue: messages.
    pub queue_messages: usize,
    /// Per-peer send queue: bytes.
    pub queue_bytes: usize,
    /// Inbox capacity (messages) of each channel, shared by all peers.
    pub inbox_messages: usize,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            queue_messages: 4096,
            queue_bytes: 16 << 20,
            inbox_messages: 16 * 1024,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Counters of the node-to-node transport.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages delivered to this node's inbox.
    pub received: AtomicU64,
    /// Dropped: a peer's send queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Dropped: the inbox was full.
    pub dropped_inbox_full: AtomicU64,
    /// Dropped: larger than the datagram limit.
    pub dropped_oversize: AtomicU64,
    /// Dropped: addressed to a node not in the address book.
    pub dropped_unknown_peer: AtomicU64,
    /// Dropped: in flight when a connection broke.
    pub dropped_in_flight: AtomicU64,
    /// Messages written to a connection and flushed into the kernel. TCP
    /// acknowledges nothing to the sender here: a connection the peer has
    /// already closed accepts writes until its reset arrives, so some of
    /// these may never be delivered (the transport is at most once).
    pub sent: AtomicU64,
    /// Outbound connections established.
    pub connects: AtomicU64,
    /// Outbound connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Inbound connections refused (a hello in our own name).
    pub refused_inbound: AtomicU64,
    /// Dropped: a received frame named no channel of this transport.
    pub dropped_bad_channel: AtomicU64,
}

/// Channels of the node-to-node transport (see the module docs).
pub const CHANNELS: u8 = 4;

/// One channel's inbox.
struct Inbox {
    tx: mpsc::UnboundedSender<(NodeId, Bytes)>,
    rx: Mutex<mpsc::UnboundedReceiver<(NodeId, Bytes)>>,
    len: AtomicUsize,
}

impl Inbox {
    fn new() -> Inbox {
        let (tx, rx) = mpsc::unbounded();
        Inbox { tx, rx: Mutex::new(rx), len: AtomicUsize::new(0) }
    }
}

struct Link {
    /// Where the link connects (moved by [`Transport::learn`]).
    addr: Mutex<SocketAddr>,
    state: Mutex<LinkState>,
}

struct LinkState {
    queue: SendQueue,
    waker: Option<Waker>,
    /// The peer connected to us since the link's last connection attempt.
    kicked: bool,
    /// The link task, while it waits out a backoff.
    kick_waker: Option<Waker>,
}

pub(crate) struct Transport {
    me: NodeId,
    /// The address book (see the module docs).
    peers: Mutex<BTreeMap<NodeId, SocketAddr>>,
    config: TransportConfig,
    exec: ExecutorHandle,
    links: Mutex<BTreeMap<NodeId, Arc<Link>>>,
    /// One per channel, indexed by channel.
    inboxes: Vec<Inbox>,
    rng: Mutex<DetRng>,
    pub(crate) stats: TransportStats,
}

impl Transport {
    /// Binds this node's peer address and starts accepting peers.
    pub(crate) fn start(
        exec: ExecutorHandle,
        me: NodeId,
        peers: BTreeMap<NodeId, SocketAddr>,
        config: TransportConfig,
        rng: DetRng,
    ) -> io::Result<Arc<Transport>> {
        let addr = *peers.get(&me).ok_or_else(|| io::Error::other(format!("{me} has no peer address")))?;
        let listener = HelloListener::bind(exec.driver(), addr, PEER_MAGIC, MAX_DATAGRAM_BYTES + 1)?;
        let transport = Arc::new(Transport {
            me,
            peers: Mutex::new(peers),
            config,
            exec: exec.clone(),
            links: Mutex::new(BTreeMap::new()),
            inboxes: (0..CHANNELS).map(|_| Inbox::new()).collect(),
            rng: Mutex::new(rng),
            stats: TransportStats::default(),
        });
        drop(exec.spawn(Priority::High, "transport-acceptor", accept_peers(Arc::downgrade(&transport), listener)));
        Ok(transport)
    }

    fn deliver(&self, channel: u8, from: NodeId, message: Bytes) {
        let Some(inbox) = self.inboxes.get(usize::from(channel)) else {
            self.stats.dropped_bad_channel.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if inbox.len.load(Ordering::Acquire) >= self.config.inbox_messages {
            self.stats.dropped_inbox_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        inbox.len.fetch_add(1, Ordering::AcqRel);
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let _ = inbox.tx.unbounded_send((from, message));
    }

    /// Sends `message` to `to`'s inbox of `channel` (best effort).
    pub(crate) fn send(self: &Arc<Self>, channel: u8, to: NodeId, message: Bytes) {
        assert!(channel < CHANNELS, "channel {channel} of {CHANNELS}");
        if message.len() > MAX_DATAGRAM_BYTES {
            self.stats.dropped_oversize.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if to == self.me {
            self.deliver(channel, to, message);
            return;
        }
        let Some(addr) = self.peer_addr(to) else {
            self.stats.dropped_unknown_peer.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let link = {
            let mut links = self.links.lock().expect("links lock");
            match links.get(&to) {
                Some(l) => l.clone(),
                None => {
                    let link = Arc::new(Link {
                        addr: Mutex::new(addr),
                        state: Mutex::new(LinkState {
                            queue: SendQueue::new(self.config.queue_messages, self.config.queue_bytes),
                            waker: None,
                            kicked: false,
                            kick_waker: None,
                        }),
                    });
                    links.insert(to, link.clone());
                    drop(self.exec.spawn(
                        Priority::High,
                        "transport-link",
                        run_link(Arc::downgrade(self), link.clone()),
                    ));
                    link
                }
            }
        };
        let mut state = link.state.lock().expect("link lock");
        let before = state.queue.dropped();
        state.queue.push(channel, message);
        let dropped = state.queue.dropped() - before;
        let waker = state.waker.take();
        drop(state);
        if dropped > 0 {
            self.stats.dropped_queue_full.fetch_add(dropped, Ordering::Relaxed);
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// `node`'s address in the book.
    pub(crate) fn peer_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.peers.lock().expect("peers lock").get(&node).copied()
    }

    /// Adds `node` at `addr` to the address book, or moves it there;
    /// whether anything changed. Our own entry is the address we listen
    /// on: it never moves.
    pub(crate) fn learn(&self, node: NodeId, addr: SocketAddr) -> bool {
        if node == self.me {
            return false;
        }
        let before = self.peers.lock().expect("peers lock").insert(node, addr);
        if before == Some(addr) {
            return false;
        }
        if let Some(link) = self.links.lock().expect("links lock").get(&node).cloned() {
            *link.addr.lock().expect("link address lock") = addr;
            // A link waiting out its backoff tries the new address now.
            self.kick(node);
        }
        true
    }

    /// `peer` connected to us: our link to it, if it is waiting out a
    /// backoff, retries now.
    fn kick(&self, peer: NodeId) {
        let Some(link) = self.links.lock().expect("links lock").get(&peer).cloned() else { return };
        let mut state = link.state.lock().expect("link lock");
        state.kicked = true;
        let waker = state.kick_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The next datagram of `channel`'s inbox.
    pub(crate) fn poll_recv(&self, channel: u8, cx: &mut Context<'_>) -> Poll<(NodeId, Bytes)> {
        let inbox = &self.inboxes[usize::from(channel)];
        let mut rx = inbox.rx.lock().expect("inbox lock");
        match rx.poll_next_unpin(cx) {
            Poll::Ready(Some(m)) => {
                inbox.len.fetch_sub(1, Ordering::AcqRel);
                Poll::Ready(m)
            }
            // The transport holds a sender: the stream never ends.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Waits until `link` has messages, then takes them all.
async fn next_batch(link: &Link) -> Vec<(u8, Bytes)> {
    poll_fn(|cx| {
        let mut state = link.state.lock().expect("link lock");
        if state.queue.is_empty() {
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(state.queue.take_all())
        }
    })
    .await
}

async fn run_link(transport: std::sync::Weak<Transport>, link: Arc<Link>) {
    let Some(t) = transport.upgrade() else { return };
    let (me, driver, config) = (t.me, t.exec.driver().clone(), t.config.clone());
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut rng = kaelix_core::rng::fork(&mut t.rng.lock().expect("rng lock"));
    drop(t);
    let mut pending: Vec<(u8, Bytes)> = Vec::new();
    loop {
        if pending.is_empty() {
            pending = next_batch(&link).await;
        }
        // A kick before this attempt is answered by this attempt.
        link.state.lock().expect("link lock").kicked = false;
        let addr = *link.addr.lock().expect("link address lock");
        let attempt = connect(&driver, addr, me, PEER_MAGIC, MAX_DATAGRAM_BYTES + 1);
        let connected =
            kaelix_core::runtime::timeout(&DriverClock(driver.clone()), config.connect_timeout, attempt).await;
        let Some(t) = transport.upgrade() else { return };
        let conn = match connected {
            Ok(Ok(conn)) => {
                t.stats.connects.fetch_add(1, Ordering::Relaxed);
                backoff.reset();
                conn
            }
            _ => {
                t.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                drop(t);
                let backoff_over = std::pin::pin!(driver.sleep_until(driver.now() + backoff.next_delay(&mut rng)));
                if let Either::Right(_) = select(backoff_over, std::pin::pin!(kicked(&link))).await {
                    backoff.reset();
                }
                continue;
            }
        };
        drop(t);
        // Pump until the connection breaks.
        loop {
            let mut until = 0;
            let mut failed = false;
            for (channel, m) in &pending {
                match conn.enqueue_channel_frame(*channel, m) {
                    Ok(u) => until = u,
                    Err(_) => failed = true,
                }
            }
            let sent = pending.len();
            pending.clear();
            if failed || poll_fn(|cx| conn.poll_flush(cx, until)).await.is_err() {
                if let Some(t) = transport.upgrade() {
                    t.stats.dropped_in_flight.fetch_add(sent as u64, Ordering::Relaxed);
                }
                break;
            }
            if let Some(t) = transport.upgrade() {
                t.stats.sent.fetch_add(sent as u64, Ordering::Relaxed);
            }
            // Wait for more to send, watching the connection: the peer never
            // writes on it, so readable means closed — reconnect at once
            // rather than on the next write, which the kernel may accept
            // into a dead socket.
            match next_batch_or_close(&link, &conn).await {
                Some(batch) => pending = batch,
                None => break,
            }
        }
    }
}

/// Resolves once the peer has connected to us since the last attempt
/// ([`Transport::kick`]).
async fn kicked(link: &Link) {
    poll_fn(|cx| {
        let mut state = link.state.lock().expect("link lock");
        if state.kicked {
            state.kick_waker = None;
            Poll::Ready(())
        } else {
            state.kick_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

/// Like [`next_batch`], but `None` as soon as `conn` is closed by the peer.
async fn next_batch_or_close(link: &Link, conn: &FramedConn) -> Option<Vec<(u8, Bytes)>> {
    poll_fn(|cx| {
        loop {
            match conn.poll_recv(cx) {
                Poll::Ready(Ok(Some(_))) => continue, // unexpected data: ignore it
                Poll::Ready(Ok(None) | Err(_)) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        let mut state = link.state.lock().expect("link lock");
        if state.queue.is_empty() {
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(Some(state.queue.take_all()))
        }
    })
    .await
}

async fn accept_peers(transport: std::sync::Weak<Transport>, mut listener: HelloListener) {
    loop {
        let accepted = poll_fn(|cx| listener.poll_accept(cx)).await;
        let Some(t) = transport.upgrade() else { return };
        match accepted {
            Ok(conn) if conn.peer != t.me => {
                t.kick(conn.peer);
                drop(t.exec.spawn(Priority::High, "transport-reader", read_peer(transport.clone(), conn)));
            }
            Ok(_) => {
                t.stats.refused_inbound.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                // Out of descriptors or similar: back off briefly.
                let driver = t.exec.driver().clone();
                drop(t);
                driver.sleep_until(driver.now() + Duration::from_millis(10)).await;
            }
        }
    }
}

async fn read_peer(transport: std::sync::Weak<Transport>, conn: FramedConn) {
    let from = conn.peer;
    while let Ok(Some(mut frame)) = poll_fn(|cx| conn.poll_recv(cx)).await {
        let Some(t) = transport.upgrade() else { return };
        if frame.is_empty() {
            // A frame without even its channel byte.
            t.stats.dropped_bad_channel.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let channel = frame.split_to(1)[0];
        t.deliver(channel, from, frame);
    }
}

/// The driver as a contract clock, for `timeout`.
#[derive(Clone)]
pub(crate) struct DriverClock(pub(crate) Arc<Driver>);

impl kaelix_core::runtime::Clock for DriverClock {
    fn now(&self) -> kaelix_core::Instant {
        self.0.now()
    }
    fn wall_clock(&self) -> kaelix_core::WallTime {
        crate::wall_clock_now()
    }
    fn sleep_until(&self, deadline: kaelix_core::Instant) -> impl Future<Output = ()> + Send + 'static {
        self.0.sleep_until(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaelix_core::rng::seeded;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let mut rng = seeded(1);
        let ceilings = [10u64, 20, 40, 80, 100, 100];
        for ceiling in ceilings {
            let d = b.next_delay(&mut rng).as_millis() as u64;
            assert!((ceiling / 2..=ceiling).contains(&d), "{d} ms not in [{}, {ceiling}]", ceiling / 2);
        }
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(10));
    }

    #[test]
    fn send_queue_drops_oldest_when_full() {
        let mut q = SendQueue::new(3, MAX_DATAGRAM_BYTES);
        for i in 0..5u8 {
            q.push(i % 2, Bytes::from(vec![i]));
        }
        assert_eq!(q.dropped(), 2);
        let left: Vec<(u8, u8)> = q.take_all().iter().map(|(c, b)| (*c, b[0])).collect();
        assert_eq!(left, vec![(0, 2), (1, 3), (0, 4)], "each message keeps its channel");
        assert!(q.is_empty());
    }

    #[test]
    fn send_queue_bounds_bytes() {
        let mut q = SendQueue::new(100, MAX_DATAGRAM_BYTES);
        q.push(0, Bytes::from(vec![0u8; MAX_DATAGRAM_BYTES / 2 + 1]));
        q.push(0, Bytes::from(vec![1u8; MAX_DATAGRAM_BYTES / 2 + 1]));
        assert_eq!(q.dropped(), 1, "two halves-plus do not fit in one datagram's worth");
        assert_eq!(q.take_all()[0].1[0], 1);
    }
}

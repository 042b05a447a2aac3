//! The Kaelix runtime contract implemented on the deterministic simulator.
//!
//! [`SimRuntime`] is a cheap, cloneable handle bound to one incarnation of
//! one simulated node. It implements every trait of
//! `kaelix_core::runtime` by forwarding to the node's [`NodeHandle`] in
//! `kaelix-sim`: time is the node's skewed, drifting virtual clock, spawned
//! tasks are scheduled by the seeded scheduler, datagrams cross the faulty
//! network, client and byte streams are the simulator's connections (byte
//! streams address nodes as `10.x.y.z`: `kaelix_sim::node_addr`), files
//! live on the node's faulty disk, and `buggify!` fires where the seed says.
//!
//! Nothing here is conditionally compiled: the node code that runs on this
//! runtime is the very code `kaelix-runtime-real` runs.
//!
//! # Channels
//!
//! Like `RealRuntime::channel`, [`SimRuntime::channel`] gives the same node
//! whose datagrams travel on a channel of their own, so two services of one
//! node (a cluster member's Raft groups and its SWIM membership) share the
//! network without reading each other's datagrams. The simulator has one
//! inbox per node; a channel runtime sends its channel number as one byte
//! before the datagram (the real transport frames each datagram with its
//! channel byte too) and a receiver on any channel routes what it takes from
//! the inbox to the channel named, in a queue per channel shared by the
//! incarnation's runtimes. A plain runtime (not made by `channel`) sends
//! and receives untagged datagrams exactly as before: a node uses either
//! the plain runtime's datagrams or channels, not both. The byte counts
//! toward the simulator's datagram limit, so a channel's datagram may be
//! at most `MAX_DATAGRAM_BYTES - 1` bytes long.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use kaelix_core::rng::DetRng;
use kaelix_core::runtime::{
    ByteListener, ByteNetwork, ByteStream, ClientNetwork, ClientStream, Clock, FaultPoints, JoinError, Listener,
    NetError, Network, Priority, Runtime, Spawner, Storage, StorageError, StorageFile, TaskHandle, validate_file_name,
};
use kaelix_core::{Instant, NodeId, WallTime};
use kaelix_sim::world::{ConnId, DiskRequest, End, OpId, OpResult, TaskId, TcpListenerId, TimerId};
use kaelix_sim::{NodeHandle, Sim};

/// The runtime contract on the simulator, for one node incarnation.
#[derive(Clone, Debug)]
pub struct SimRuntime {
    handle: NodeHandle,
    /// The datagram channel of this runtime (`None`: untagged datagrams).
    channel: Option<u8>,
    /// Datagrams taken from the inbox for other channels than the taker's,
    /// shared by every runtime of this incarnation.
    channels: Arc<Mutex<Demux>>,
}

/// Channels a simulated node's datagrams may use (as many as the real
/// transport's).
pub const CHANNELS: u8 = 4;

/// Per channel, the datagrams routed to it and the receivers waiting.
#[derive(Debug, Default)]
struct Demux {
    queues: [std::collections::VecDeque<(NodeId, Bytes)>; CHANNELS as usize],
    wakers: [Vec<Waker>; CHANNELS as usize],
}

impl SimRuntime {
    /// Wraps a node handle (what a node's init function receives).
    pub fn new(handle: NodeHandle) -> Self {
        SimRuntime { handle, channel: None, channels: Arc::default() }
    }

    /// The same node whose datagrams travel on channel `channel` (below
    /// [`CHANNELS`]): it receives only what was sent on that channel, and
    /// what it sends arrives on that channel (see the module docs).
    pub fn channel(&self, channel: u8) -> SimRuntime {
        assert!(channel < CHANNELS, "datagram channel {channel} of {CHANNELS}");
        SimRuntime { handle: self.handle.clone(), channel: Some(channel), channels: self.channels.clone() }
    }

    /// The underlying simulator handle.
    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// The simulator.
    pub fn sim(&self) -> Sim {
        self.handle.sim()
    }

    /// Adapts an async node body to the simulator's init signature:
    /// `Sim::add_node(id, NodeSpec { init: SimRuntime::init(|rt| async move { … }), … })`.
    pub fn init<F, Fut>(body: F) -> kaelix_sim::world::NodeInit
    where
        F: Fn(SimRuntime) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Arc::new(move |handle| Box::pin(body(SimRuntime::new(handle))))
    }
}

// ---------------------------------------------------------------- clock

/// A simulated sleep.
pub struct Sleep {
    handle: NodeHandle,
    deadline: Instant,
    timer: Option<TimerId>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        this.handle.poll_sleep(this.deadline, &mut this.timer, cx.waker())
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            self.handle.cancel_timer(t);
        }
    }
}

impl Clock for SimRuntime {
    fn now(&self) -> Instant {
        self.handle.now()
    }

    fn wall_clock(&self) -> WallTime {
        self.handle.wall_clock()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        Sleep { handle: self.handle.clone(), deadline, timer: None }
    }
}

// ---------------------------------------------------------------- spawn

struct JoinState<T> {
    result: Option<Result<T, JoinError>>,
    waker: Option<Waker>,
}

/// Handle to a simulated task.
pub struct SimJoinHandle<T> {
    state: Arc<Mutex<JoinState<T>>>,
    handle: NodeHandle,
    task: TaskId,
}

impl<T> Future for SimJoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T: Send + 'static> TaskHandle<T> for SimJoinHandle<T> {
    fn abort(&self) {
        self.handle.abort(self.task);
    }
}

/// Completes the join state when the task finishes or is dropped unfinished.
struct Completion<T> {
    state: Arc<Mutex<JoinState<T>>>,
    finished: bool,
}

impl<T> Completion<T> {
    fn complete(&mut self, r: Result<T, JoinError>) {
        self.finished = true;
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.result = Some(r);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        if !self.finished {
            self.complete(Err(JoinError::Cancelled));
        }
    }
}

impl Spawner for SimRuntime {
    type Handle<T: Send + 'static> = SimJoinHandle<T>;

    fn spawn<F>(&self, priority: Priority, name: &'static str, future: F) -> SimJoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let state = Arc::new(Mutex::new(JoinState { result: None, waker: None }));
        let mut completion = Completion { state: state.clone(), finished: false };
        let task = self.handle.spawn(
            priority,
            name,
            Box::pin(async move {
                let out = future.await;
                completion.complete(Ok(out));
            }),
        );
        SimJoinHandle { state, handle: self.handle.clone(), task }
    }
}

// ---------------------------------------------------------------- network

struct Recv<'a> {
    rt: &'a SimRuntime,
}

impl Future for Recv<'_> {
    type Output = (NodeId, Bytes);
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let rt = self.rt;
        let Some(mine) = rt.channel else {
            return rt.handle.poll_recv(cx);
        };
        let mine = usize::from(mine);
        loop {
            if let Some(m) = rt.demux().queues[mine].pop_front() {
                return Poll::Ready(m);
            }
            match rt.handle.poll_recv(cx) {
                Poll::Ready((from, datagram)) => {
                    // Untagged or of no channel: not for a channel runtime.
                    let Some(&tag) = datagram.first() else { continue };
                    let tag = usize::from(tag);
                    if tag >= usize::from(CHANNELS) {
                        continue;
                    }
                    let payload = datagram.slice(1..);
                    if tag == mine {
                        return Poll::Ready((from, payload));
                    }
                    let mut demux = rt.demux();
                    // A full queue drops, as a full inbox does.
                    if demux.queues[tag].len() < kaelix_sim::world::INBOX_CAPACITY {
                        demux.queues[tag].push_back((from, payload));
                    }
                    for w in demux.wakers[tag].drain(..) {
                        w.wake();
                    }
                }
                Poll::Pending => {
                    // Woken by the inbox (registered above) or by another
                    // channel's receiver routing a datagram here.
                    let mut demux = rt.demux();
                    if !demux.wakers[mine].iter().any(|w| w.will_wake(cx.waker())) {
                        demux.wakers[mine].push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl SimRuntime {
    fn demux(&self) -> std::sync::MutexGuard<'_, Demux> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Network for SimRuntime {
    fn local_node(&self) -> NodeId {
        self.handle.node()
    }

    fn send(&self, to: NodeId, message: Bytes) {
        match self.channel {
            None => self.handle.send(to, message),
            Some(channel) => {
                let mut tagged = bytes::BytesMut::with_capacity(message.len() + 1);
                tagged.extend_from_slice(&[channel]);
                tagged.extend_from_slice(&message);
                self.handle.send(to, tagged.freeze());
            }
        }
    }

    fn recv(&self) -> impl Future<Output = (NodeId, Bytes)> + Send {
        Recv { rt: self }
    }
}

/// A pending operation (disk op or connect) as a future.
struct Op {
    handle: NodeHandle,
    op: Option<OpId>,
}

impl Future for Op {
    type Output = OpResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<OpResult> {
        let op = self.op.expect("polled after completion");
        let r = self.handle.poll_op(op, cx);
        if r.is_ready() {
            self.op = None;
        }
        r
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            self.handle.drop_op(op);
        }
    }
}

fn op(handle: &NodeHandle, id: OpId) -> Op {
    Op { handle: handle.clone(), op: Some(id) }
}

/// One end of a simulated client stream.
#[derive(Clone)]
pub struct SimStream {
    handle: NodeHandle,
    conn: ConnId,
    end: End,
    peer: NodeId,
    closed: Arc<Mutex<bool>>,
}

struct StreamRecv<'a> {
    s: &'a SimStream,
}

impl Future for StreamRecv<'_> {
    type Output = Result<Option<Bytes>, NetError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.s.handle.stream_poll_recv(self.s.conn, self.s.end, cx)
    }
}

impl ClientStream for SimStream {
    fn send(&self, frame: Bytes) -> impl Future<Output = Result<(), NetError>> + Send {
        // After `close` the peer has (or will have) seen end of stream; a
        // frame behind it would break the stream's framing.
        let closed = *self.closed.lock().unwrap_or_else(|e| e.into_inner());
        let r = if closed { Err(NetError::Reset) } else { self.handle.stream_send(self.conn, self.end, Some(frame)) };
        std::future::ready(r)
    }

    fn recv(&self) -> impl Future<Output = Result<Option<Bytes>, NetError>> + Send {
        StreamRecv { s: self }
    }

    fn close(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if !*closed {
            *closed = true;
            // A broken stream cannot be closed cleanly; nothing to report.
            let _ = self.handle.stream_send(self.conn, self.end, None);
        }
    }

    fn peer(&self) -> NodeId {
        self.peer
    }
}

/// A simulated client listener. Dropping it stops accepting.
pub struct SimListener {
    handle: NodeHandle,
}

impl Drop for SimListener {
    fn drop(&mut self) {
        self.handle.unlisten();
    }
}

struct Accept<'a> {
    handle: &'a NodeHandle,
}

impl Future for Accept<'_> {
    type Output = ConnId;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ConnId> {
        self.handle.poll_accept(cx)
    }
}

impl Listener for SimListener {
    type Stream = SimStream;

    async fn accept(&mut self) -> Result<SimStream, NetError> {
        let conn = Accept { handle: &self.handle }.await;
        let peer = self.handle.conn_peer(conn, End::Acceptor).ok_or(NetError::Reset)?;
        Ok(SimStream {
            handle: self.handle.clone(),
            conn,
            end: End::Acceptor,
            peer,
            closed: Arc::new(Mutex::new(false)),
        })
    }
}

impl ClientNetwork for SimRuntime {
    type Stream = SimStream;
    type Listener = SimListener;

    fn listen(&self) -> Result<SimListener, NetError> {
        self.handle.listen()?;
        Ok(SimListener { handle: self.handle.clone() })
    }

    async fn connect(&self, node: NodeId) -> Result<SimStream, NetError> {
        match op(&self.handle, self.handle.connect(node)).await {
            OpResult::Connected(Ok(conn)) => Ok(SimStream {
                handle: self.handle.clone(),
                conn,
                end: End::Connector,
                peer: node,
                closed: Arc::new(Mutex::new(false)),
            }),
            OpResult::Connected(Err(e)) => Err(e),
            other => unreachable!("connect completed with {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- byte streams

/// One end of a simulated byte stream (see `kaelix_sim`'s `byte_streams`
/// module: addresses, segmentation, close). Dropping the last clone closes
/// the end.
#[derive(Clone)]
pub struct SimByteStream {
    end: Arc<ByteEnd>,
}

struct ByteEnd {
    handle: NodeHandle,
    conn: ConnId,
    end: End,
    peer: SocketAddr,
}

impl Drop for ByteEnd {
    fn drop(&mut self) {
        self.handle.tcp_release(self.conn, self.end);
    }
}

impl SimByteStream {
    fn new(handle: &NodeHandle, conn: ConnId, end: End) -> Result<Self, NetError> {
        let (_, peer) = handle.tcp_addrs(conn, end).ok_or(NetError::Reset)?;
        Ok(SimByteStream { end: Arc::new(ByteEnd { handle: handle.clone(), conn, end, peer }) })
    }
}

impl std::fmt::Debug for SimByteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimByteStream").field("peer", &self.end.peer).finish()
    }
}

impl ByteStream for SimByteStream {
    fn write(&self, data: Bytes) -> impl Future<Output = Result<(), NetError>> + Send {
        std::future::ready(self.end.handle.tcp_write(self.end.conn, self.end.end, data))
    }

    fn read(&self) -> impl Future<Output = Result<Option<Bytes>, NetError>> + Send {
        let end = &self.end;
        std::future::poll_fn(move |cx| end.handle.tcp_poll_read(end.conn, end.end, cx))
    }

    fn close(&self) {
        self.end.handle.tcp_close(self.end.conn, self.end.end);
    }

    fn peer_addr(&self) -> SocketAddr {
        self.end.peer
    }
}

/// A simulated byte-stream listener. Dropping it frees the port.
pub struct SimByteListener {
    handle: NodeHandle,
    id: TcpListenerId,
    local: SocketAddr,
}

impl Drop for SimByteListener {
    fn drop(&mut self) {
        self.handle.tcp_unbind(self.id);
    }
}

impl ByteListener for SimByteListener {
    type Stream = SimByteStream;

    async fn accept(&mut self) -> Result<SimByteStream, NetError> {
        let (handle, id) = (&self.handle, self.id);
        let conn = std::future::poll_fn(|cx| handle.tcp_poll_accept(id, cx)).await;
        SimByteStream::new(handle, conn, End::Acceptor)
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl ByteNetwork for SimRuntime {
    type ByteStream = SimByteStream;
    type ByteListener = SimByteListener;

    fn bind_tcp(&self, addr: SocketAddr) -> Result<SimByteListener, NetError> {
        let (id, local) = self.handle.tcp_bind(addr)?;
        Ok(SimByteListener { handle: self.handle.clone(), id, local })
    }

    async fn connect_tcp(&self, addr: SocketAddr) -> Result<SimByteStream, NetError> {
        match op(&self.handle, self.handle.tcp_connect(addr)).await {
            OpResult::Connected(Ok(conn)) => SimByteStream::new(&self.handle, conn, End::Connector),
            OpResult::Connected(Err(e)) => Err(e),
            other => unreachable!("connect completed with {other:?}"),
        }
    }
}

// ---------------------------------------------------------------- storage

/// A file on a simulated disk.
#[derive(Clone, Debug)]
pub struct SimFile {
    handle: NodeHandle,
    name: Arc<str>,
}

async fn unit(handle: &NodeHandle, req: DiskRequest) -> Result<(), StorageError> {
    match op(handle, handle.disk(req)).await {
        OpResult::Unit(r) => r,
        other => unreachable!("unexpected disk result {other:?}"),
    }
}

impl StorageFile for SimFile {
    fn len(&self) -> u64 {
        self.handle.file_len(&self.name)
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        let req = DiskRequest::Read { name: self.name.clone(), offset, len };
        match op(&self.handle, self.handle.disk(req)).await {
            OpResult::Data(r) => r,
            other => unreachable!("unexpected disk result {other:?}"),
        }
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), StorageError> {
        let req = DiskRequest::Write { name: self.name.clone(), offset: Some(offset), data };
        match op(&self.handle, self.handle.disk(req)).await {
            OpResult::Offset(r) => r.map(|_| ()),
            other => unreachable!("unexpected disk result {other:?}"),
        }
    }

    fn append(&self, data: Bytes) -> impl Future<Output = Result<u64, StorageError>> + Send {
        // The contract reserves the offset when `append` is called, not when
        // the future is first polled: issue the write now.
        let req = DiskRequest::Write { name: self.name.clone(), offset: None, data };
        let pending = op(&self.handle, self.handle.disk(req));
        async move {
            match pending.await {
                OpResult::Offset(r) => r,
                other => unreachable!("unexpected disk result {other:?}"),
            }
        }
    }

    async fn truncate(&self, len: u64) -> Result<(), StorageError> {
        unit(&self.handle, DiskRequest::Truncate { name: self.name.clone(), len }).await
    }

    async fn sync(&self) -> Result<(), StorageError> {
        unit(&self.handle, DiskRequest::Sync(self.name.clone())).await
    }
}

impl Storage for SimRuntime {
    type File = SimFile;

    async fn open(&self, name: &str) -> Result<SimFile, StorageError> {
        validate_file_name(name)?;
        unit(&self.handle, DiskRequest::Open(name.into())).await?;
        Ok(SimFile { handle: self.handle.clone(), name: name.into() })
    }

    async fn remove(&self, name: &str) -> Result<(), StorageError> {
        validate_file_name(name)?;
        unit(&self.handle, DiskRequest::Remove(name.into())).await
    }

    async fn list(&self) -> Result<Vec<String>, StorageError> {
        match op(&self.handle, self.handle.disk(DiskRequest::List)).await {
            OpResult::Names(r) => r,
            other => unreachable!("unexpected disk result {other:?}"),
        }
    }
}

impl FaultPoints for SimRuntime {
    fn buggify(&self, point: &'static kaelix_core::runtime::CoveragePoint) -> bool {
        self.handle.buggify(point)
    }

    fn sometimes(&self, point: &'static kaelix_core::runtime::CoveragePoint, condition: bool) {
        self.handle.sometimes(point, condition);
    }
}

impl Runtime for SimRuntime {
    fn node_id(&self) -> NodeId {
        self.handle.node()
    }

    fn rng(&self) -> DetRng {
        self.handle.rng()
    }
}

//! The runtime contract: the small traits that node services, client
//! connections and other *drivers* are written against.
//!
//! Protocol logic itself is sans-IO (see [`crate::sansio`]) and needs none of
//! this. Drivers are the thin async loops around it: they turn a state
//! machine's deadline into a timer, its outputs into sends and disk writes,
//! and arriving messages and completions into `handle_*` calls.
//!
//! Two implementations exist and the same driver code runs on both:
//! `kaelix-runtime-sim` (one thread, virtual time, one seed, injected faults)
//! and `kaelix-runtime-real` (pinned worker threads, sockets, files).
//!
//! Each concern is its own trait so a component can ask for only what it
//! uses; [`Runtime`] bundles them. Every method is statically dispatched:
//! async methods return `impl Future`, handles are associated types.
//!
//! # Semantics both runtimes honour
//!
//! * [`Clock::now`] is monotonic per node. [`Clock::wall_clock`] may jump.
//! * [`Network`] carries **datagrams** between nodes: best effort. A message
//!   may be lost, duplicated, delayed or reordered; it is never corrupted or
//!   split. Protocols retransmit.
//! * [`ClientNetwork`] carries **ordered, reliable frame streams** between a
//!   client and a node (TCP-like). A stream delivers frames in order without
//!   loss or duplication until it breaks; after a break every call fails.
//!   What the peer received before the break is unknown.
//! * [`ByteNetwork`] carries **ordered, reliable byte streams** to and from
//!   socket addresses (TCP on the real runtime): what servers speaking
//!   protocols others defined (NATS) and their clients use. Bytes arrive in
//!   order without loss until the stream breaks, but chunk boundaries are
//!   not kept: a write may be read in several pieces, several writes in one.
//!   The simulator maps addresses to nodes (see its `byte_streams` module) and
//!   splits writes at random points, as TCP segmentation does.
//! * [`Storage`] durability: see [`StorageFile::sync`].
//!
//! With the feature `testing`, the module `conformance` holds the suite that checks
//! these semantics; both runtimes' tests run it.

#[cfg(feature = "testing")]
pub mod conformance;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::ids::NodeId;
use crate::rng::DetRng;
use crate::time::{Duration, Instant, WallTime};

/// Scheduling priority of a spawned task. Higher tiers are polled first; the
/// real executor bounds how long lower tiers can be starved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Failure detection, consensus heartbeats: late means wrong.
    Critical = 0,
    /// Client-facing request paths.
    High = 1,
    /// Ordinary work.
    Normal = 2,
    /// Compaction, cleanup, telemetry export.
    Background = 3,
}

impl Priority {
    /// All tiers, highest first.
    pub const ALL: [Priority; 4] = [Priority::Critical, Priority::High, Priority::Normal, Priority::Background];
}

/// Monotonic and wall time, and timers.
pub trait Clock: Clone + Send + Sync + 'static {
    /// This node's monotonic time.
    fn now(&self) -> Instant;

    /// [`Clock::now`] at a coarser resolution (at most a few milliseconds
    /// behind it) and cheaper to read: for spans that matter in tens of
    /// milliseconds measured on a hot path (a plugin's time budget, read
    /// twice per call), where precise readings would cost more than the
    /// call. Monotonic like `now`. A virtual clock has nothing cheaper to
    /// offer: the default is `now`, so simulated runs see exact times.
    fn now_coarse(&self) -> Instant {
        self.now()
    }

    /// This node's civil time. May jump (also backwards); use only for
    /// timestamps, never for timeouts.
    fn wall_clock(&self) -> WallTime;

    /// Completes once [`Clock::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static;

    /// Completes after `duration` of this node's monotonic time.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        self.sleep_until(self.now() + duration)
    }
}

/// Why a spawned task produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The task was aborted, or its node crashed / shut down first.
    #[error("task was cancelled")]
    Cancelled,
    /// The task panicked.
    #[error("task panicked: {0}")]
    Panicked(String),
}

/// A handle to a spawned task: a future of its result. Dropping the handle
/// detaches the task; [`TaskHandle::abort`] cancels it.
pub trait TaskHandle<T>: Future<Output = Result<T, JoinError>> + Send + Unpin + 'static {
    /// Cancels the task; awaiting the handle then yields [`JoinError::Cancelled`]
    /// unless it had already finished.
    fn abort(&self);
}

/// Spawning concurrent tasks at one of four priorities.
pub trait Spawner: Clone + Send + Sync + 'static {
    /// The handle type returned by [`Spawner::spawn`].
    type Handle<T: Send + 'static>: TaskHandle<T>;

    /// Runs `future` concurrently on this node. `name` labels it in traces
    /// and metrics. A runtime may refuse the task (a bound on live tasks is
    /// reached, or it is shutting down): the future is then dropped
    /// unpolled and the handle yields [`JoinError::Cancelled`] at once.
    fn spawn<F>(&self, priority: Priority, name: &'static str, future: F) -> Self::Handle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;

    /// [`Spawner::spawn`] that says whether the task was refused, for
    /// callers that must answer for it (a connection to close, a request or
    /// subscription to refuse with an error) instead of finding out later.
    /// The default never refuses.
    fn try_spawn<F>(
        &self,
        priority: Priority,
        name: &'static str,
        future: F,
    ) -> Result<Self::Handle<F::Output>, SpawnRefused>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Ok(self.spawn(priority, name, future))
    }
}

/// A task the runtime would not start (see [`Spawner::try_spawn`]); its
/// future was dropped unpolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the runtime refused to start task {name}: its live-task bound is reached or it is shutting down")]
pub struct SpawnRefused {
    /// The refused task's name.
    pub name: &'static str,
}

/// The largest datagram [`Network::send`] accepts.
pub const MAX_DATAGRAM_BYTES: usize = 1 << 20;

/// Node-to-node datagrams (best effort; see the module docs).
pub trait Network: Clone + Send + Sync + 'static {
    /// The node this handle sends from.
    fn local_node(&self) -> NodeId;

    /// Queues `message` for `to`. Never blocks and never fails loudly: a
    /// message that cannot be delivered (peer down, partition, full queue,
    /// over [`MAX_DATAGRAM_BYTES`]) is dropped, as a lossy link would.
    fn send(&self, to: NodeId, message: Bytes);

    /// The next datagram addressed to this node, with its sender.
    fn recv(&self) -> impl Future<Output = (NodeId, Bytes)> + Send;
}

/// Errors of the client stream network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// Nobody listens there, or the node is down or unreachable. For a
    /// byte stream the simulator names the node the address maps to; the
    /// real runtime, which maps no address to a node, names
    /// `NodeId(u64::MAX)`.
    #[error("connection refused by {0}")]
    Refused(NodeId),
    /// The stream broke (peer crashed, partition, reset). Whether frames
    /// sent before the break arrived is unknown.
    #[error("connection reset")]
    Reset,
    /// This node already listens for clients.
    #[error("already listening")]
    AlreadyListening,
    /// A frame exceeded the stream's maximum frame size.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Offending length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The address is already bound by a listener.
    #[error("address {0} already in use")]
    AddrInUse(SocketAddr),
    /// The address cannot be bound or reached from here.
    #[error("address {0} not available")]
    AddrNotAvailable(SocketAddr),
    /// An OS-level error (real runtime only).
    #[error("io error: {0}")]
    Io(String),
}

/// The largest frame a [`ClientStream`] carries.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// One end of an ordered, reliable frame stream. Cloning gives another handle
/// to the same stream, so one task can read while another writes.
pub trait ClientStream: Clone + Send + Sync + 'static {
    /// Sends one frame. Completing means the frame was handed to the
    /// transport, not that the peer read it.
    fn send(&self, frame: Bytes) -> impl Future<Output = Result<(), NetError>> + Send;
    /// The next frame; `Ok(None)` when the peer closed the stream cleanly.
    fn recv(&self) -> impl Future<Output = Result<Option<Bytes>, NetError>> + Send;
    /// Closes the stream; the peer sees end of stream after the frames
    /// already sent.
    fn close(&self);
    /// The other end.
    fn peer(&self) -> NodeId;
}

/// Accepts client streams on a node.
pub trait Listener: Send + 'static {
    /// The stream type accepted.
    type Stream: ClientStream;
    /// The next incoming stream.
    fn accept(&mut self) -> impl Future<Output = Result<Self::Stream, NetError>> + Send;
}

/// Client-to-node streams.
pub trait ClientNetwork: Clone + Send + Sync + 'static {
    /// A stream end.
    type Stream: ClientStream;
    /// A listener producing streams.
    type Listener: Listener<Stream = Self::Stream>;
    /// Starts accepting client streams addressed to this node.
    fn listen(&self) -> Result<Self::Listener, NetError>;
    /// Opens a stream to `node`'s client listener.
    fn connect(&self, node: NodeId) -> impl Future<Output = Result<Self::Stream, NetError>> + Send;
}

/// One end of an ordered, reliable byte stream (see [`ByteNetwork`]).
/// Cloning gives another handle to the same stream, so one task can read
/// while another writes.
pub trait ByteStream: Clone + Send + Sync + 'static {
    /// Writes all of `data`. Completing means the bytes were handed to the
    /// transport, not that the peer read them.
    fn write(&self, data: Bytes) -> impl Future<Output = Result<(), NetError>> + Send;
    /// The next chunk of bytes (never empty); `Ok(None)` when the peer closed
    /// its side cleanly.
    fn read(&self) -> impl Future<Output = Result<Option<Bytes>, NetError>> + Send;
    /// Closes the stream; the peer reads end of stream after the bytes
    /// already written.
    fn close(&self);
    /// The other end's address.
    fn peer_addr(&self) -> SocketAddr;
}

/// Accepts byte streams on a bound address.
pub trait ByteListener: Send + 'static {
    /// The stream type accepted.
    type Stream: ByteStream;
    /// The next incoming stream.
    fn accept(&mut self) -> impl Future<Output = Result<Self::Stream, NetError>> + Send;
    /// The bound address (with the port chosen when bound to port 0).
    fn local_addr(&self) -> SocketAddr;
}

/// Byte streams between socket addresses. Dropping a listener stops
/// listening; the address can then be bound again.
pub trait ByteNetwork: Clone + Send + Sync + 'static {
    /// A stream end.
    type ByteStream: ByteStream;
    /// A listener producing streams.
    type ByteListener: ByteListener<Stream = Self::ByteStream>;
    /// Listens on `addr` (port 0: any free port).
    fn bind_tcp(&self, addr: SocketAddr) -> Result<Self::ByteListener, NetError>;
    /// Opens a stream to whoever listens on `addr`.
    fn connect_tcp(&self, addr: SocketAddr) -> impl Future<Output = Result<Self::ByteStream, NetError>> + Send;
}

/// Errors of storage operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// No such file.
    #[error("no such file: {0}")]
    NotFound(String),
    /// A read reached past the end of the file.
    #[error("read of {len} bytes at offset {offset} is past the end of the file ({file_len} bytes)")]
    OutOfBounds {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: usize,
        /// The file's length.
        file_len: u64,
    },
    /// The file name is not a plain name (`[A-Za-z0-9._-]+`, at most 255 bytes).
    #[error("invalid file name {0:?}: use 1-255 characters from [A-Za-z0-9._-]")]
    InvalidName(String),
    /// The device reported an error (real IO error, or an injected fault).
    #[error("io error: {0}")]
    Io(String),
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        StorageError::Io(e.to_string())
    }
}

/// Checks a storage file name: a flat namespace of plain names.
pub fn validate_file_name(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(StorageError::InvalidName(name.to_owned())) }
}

/// A node's local storage: a flat namespace of files.
pub trait Storage: Clone + Send + Sync + 'static {
    /// An open file.
    type File: StorageFile;
    /// Opens `name`, creating it empty if missing. Creation itself is durable
    /// once this completes (the directory entry is synced).
    fn open(&self, name: &str) -> impl Future<Output = Result<Self::File, StorageError>> + Send;
    /// Removes `name` durably.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// The names of all files, sorted.
    fn list(&self) -> impl Future<Output = Result<Vec<String>, StorageError>> + Send;
}

/// An open file. Cloning gives another handle to the same file.
///
/// # Durability
///
/// Writes ([`write_at`](StorageFile::write_at), [`append`](StorageFile::append),
/// [`truncate`](StorageFile::truncate)) are visible to reads as soon as they
/// complete, but are **volatile** until a later [`sync`](StorageFile::sync)
/// completes: `sync` makes every write to this file that completed before
/// `sync` was called durable, and returns only once it is. If the node
/// crashes, each volatile write may independently be lost, kept, or **torn**
/// (only some of its sectors kept) — in any combination, not necessarily in
/// the order issued. Durable data survives crashes but is not guaranteed
/// against corruption at rest: formats that must detect corruption carry
/// their own checksums.
pub trait StorageFile: Clone + Send + Sync + 'static {
    /// Current length (including volatile writes).
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `len` bytes at `offset`.
    fn read_at(&self, offset: u64, len: usize) -> impl Future<Output = Result<Bytes, StorageError>> + Send;
    /// Writes `data` at `offset`, extending the file (with zeros) if needed.
    fn write_at(&self, offset: u64, data: Bytes) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Appends `data`; the offset is reserved when called, so concurrent
    /// appends never overlap. Returns the offset written.
    fn append(&self, data: Bytes) -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// Shortens (or zero-extends) the file to `len` bytes.
    fn truncate(&self, len: u64) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Makes completed writes durable (see the trait docs).
    fn sync(&self) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// Code-level fault points (FoundationDB's BUGGIFY) and "sometimes"
/// assertions (FoundationDB's `TEST`, Antithesis' `sometimes`).
///
/// Code marks a place where an unusual-but-legal behaviour could happen
/// (a slow path, an early timeout, a small buffer) with [`buggify!`]. Under
/// simulation each site is enabled in only some seeds and, when enabled, fires
/// on some calls; the real runtime always answers `false`.
///
/// [`sometimes!`] states a condition a test campaign wants to see hold at
/// least once (a leader change under load, a torn tail recovered): the
/// simulator counts how often each was reached and held, the real runtime
/// ignores it. Neither changes what a run does when it does not fire: the
/// simulator draws a site's decisions from generators of their own.
///
/// Every site of either macro registers itself at link time in
/// [`COVERAGE_POINTS`], so a coverage report names the points a run never
/// reached, not only those it did.
pub trait FaultPoints: Clone + Send + Sync + 'static {
    /// Whether the fault point `point` fires now.
    fn buggify(&self, point: &'static CoveragePoint) -> bool;
    /// Counts one evaluation of a "sometimes" assertion (nothing else).
    fn sometimes(&self, point: &'static CoveragePoint, condition: bool) {
        let _ = (point, condition);
    }
}

/// Where `sometimes!` counts: every [`FaultPoints`] implementation, and
/// harnesses outside a node (the simulator itself, for checkers).
pub trait CoverageSink {
    /// Counts one evaluation of the assertion `point`.
    fn count_sometimes(&self, point: &'static CoveragePoint, condition: bool);
}

impl<T: FaultPoints> CoverageSink for T {
    fn count_sometimes(&self, point: &'static CoveragePoint, condition: bool) {
        FaultPoints::sometimes(self, point, condition);
    }
}

/// What a coverage point counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PointKind {
    /// A `buggify!` fault point: reached, and fired.
    Buggify,
    /// A `sometimes!` assertion: reached, and held.
    Sometimes,
}

/// One `buggify!` or `sometimes!` site, registered at link time.
#[derive(Debug)]
pub struct CoveragePoint {
    /// Which macro.
    pub kind: PointKind,
    /// `file:line` of the site, for reports (and a `sometimes!`'s key in
    /// the coverage counts).
    pub site: &'static str,
    /// What it means: the text of a `sometimes!`, or the fault of a
    /// `buggify!`. A `buggify!` point's name is its identity in the
    /// simulator (which seeds enable it), so editing the lines above a
    /// fault point does not change which seeds exercise it; two fault
    /// points may not share a name.
    pub name: &'static str,
}

/// Every coverage point linked into this binary (see [`FaultPoints`]).
#[linkme::distributed_slice]
pub static COVERAGE_POINTS: [CoveragePoint];

#[doc(hidden)]
pub use linkme as __linkme;

/// `buggify!(rt, "the fault")` is true when the simulator fires this fault
/// point. The name says what the fault is and identifies the point (see
/// [`CoveragePoint::name`]).
#[macro_export]
macro_rules! buggify {
    ($rt:expr, $name:literal) => {{
        #[$crate::runtime::__linkme::distributed_slice($crate::runtime::COVERAGE_POINTS)]
        #[linkme(crate = $crate::runtime::__linkme)]
        static POINT: $crate::runtime::CoveragePoint = $crate::runtime::CoveragePoint {
            kind: $crate::runtime::PointKind::Buggify,
            site: concat!(file!(), ":", line!()),
            name: $name,
        };
        $crate::runtime::FaultPoints::buggify(&$rt, &POINT)
    }};
}

/// `sometimes!(rt, "what", condition)`: counts whether `condition` holds
/// here (see [`FaultPoints`]); evaluates `condition` once and returns
/// nothing.
#[macro_export]
macro_rules! sometimes {
    ($rt:expr, $name:literal, $condition:expr) => {{
        #[$crate::runtime::__linkme::distributed_slice($crate::runtime::COVERAGE_POINTS)]
        #[linkme(crate = $crate::runtime::__linkme)]
        static POINT: $crate::runtime::CoveragePoint = $crate::runtime::CoveragePoint {
            kind: $crate::runtime::PointKind::Sometimes,
            site: concat!(file!(), ":", line!()),
            name: $name,
        };
        $crate::runtime::CoverageSink::count_sometimes(&$rt, &POINT, $condition)
    }};
}

/// Everything a node service needs, in one bound.
pub trait Runtime:
    Clock + Spawner + Network + ClientNetwork + ByteNetwork + Storage + FaultPoints + Clone + Send + Sync + 'static
{
    /// This node's id.
    fn node_id(&self) -> NodeId;

    /// A fresh generator for a new owner. Under simulation it derives from the
    /// run's seed (so it is reproducible); under the real runtime from the
    /// configured seed or OS entropy taken once at start-up.
    fn rng(&self) -> DetRng;
}

/// Races `future` against a timer; `Err(Elapsed)` if the timer wins.
pub async fn timeout<C, F>(clock: &C, duration: Duration, future: F) -> Result<F::Output, Elapsed>
where
    C: Clock,
    F: Future,
{
    use futures_util::future::{Either, select};
    let sleep = std::pin::pin!(clock.sleep(duration));
    let future = std::pin::pin!(future);
    match select(future, sleep).await {
        Either::Left((out, _)) => Ok(out),
        Either::Right(((), _)) => Err(Elapsed(duration)),
    }
}

/// A [`timeout`] ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {0:?}")]
pub struct Elapsed(pub Duration);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_plain() {
        assert!(validate_file_name("broadcast.log").is_ok());
        assert!(validate_file_name("a-b_c.1").is_ok());
        for bad in ["", ".", "..", "a/b", "x y", &"a".repeat(256)] {
            assert!(validate_file_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn priorities_order_highest_first() {
        let mut all = Priority::ALL;
        all.sort();
        assert_eq!(all, Priority::ALL);
        assert!(Priority::Critical < Priority::Background);
    }
}

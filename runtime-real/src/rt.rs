//! [`RealRuntime`]: the whole runtime contract for one node, on an
//! [`Executor`](crate::Executor) — the same node code that runs under the
//! simulator runs here unchanged.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // OS entropy and the wall clock are this module's job

use std::collections::BTreeMap;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use kaelix_core::rng::{self, DetRng};
use kaelix_core::runtime::{
    ByteNetwork, ClientNetwork, Clock, FaultPoints, NetError, Network, Priority, Runtime, SpawnRefused, Spawner,
    Storage, StorageError,
};
use kaelix_core::{Instant, NodeId, WallTime};

use crate::blocking::BlockingPool;
use crate::executor::{ExecutorHandle, JoinHandle};
use crate::net::{
    RealByteListener, RealByteStream, RealListener, RealStream, Transport, TransportConfig, TransportStats,
    connect_bytes, connect_client,
};
use crate::storage::{DiskFile, FileStorage};

/// Civil time from the OS.
pub(crate) fn wall_clock_now() -> WallTime {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    WallTime(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
}

/// Everything one node needs to know to run.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node.
    pub node: NodeId,
    /// Node-to-node addresses of every member, this node included.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Client-stream addresses of the nodes clients may connect to (this
    /// node's is where it listens).
    pub clients: BTreeMap<NodeId, SocketAddr>,
    /// Where this node's files live.
    pub data_dir: PathBuf,
    /// Seed of the node's rng; `None`: drawn from the OS.
    pub seed: Option<u64>,
    /// Transport limits and timings.
    pub transport: TransportConfig,
    /// Threads for blocking file IO.
    pub blocking_threads: usize,
}

impl NodeConfig {
    /// A node with the default transport and two blocking threads.
    pub fn new(node: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            node,
            peers: BTreeMap::new(),
            clients: BTreeMap::new(),
            data_dir: data_dir.into(),
            seed: None,
            transport: TransportConfig::default(),
            blocking_threads: 2,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be used.
    #[error("data directory: {0}")]
    Storage(#[from] StorageError),
    /// The peer address could not be bound.
    #[error("binding the node-to-node address of {node}: {source}")]
    Bind {
        /// The node.
        node: NodeId,
        /// The OS error.
        source: std::io::Error,
    },
    /// No OS entropy for the seed.
    #[error("drawing a seed from the OS: {0}")]
    Entropy(String),
}

struct Inner {
    node: NodeId,
    exec: ExecutorHandle,
    transport: Option<Arc<Transport>>,
    storage: FileStorage,
    blocking: BlockingPool,
    clients: BTreeMap<NodeId, SocketAddr>,
    /// Set while a [`RealListener`] of this node is alive (it clears the
    /// flag when dropped).
    listening: Arc<AtomicBool>,
    seed: u64,
    rng_draws: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.blocking.shutdown();
    }
}

/// The runtime contract on real threads, sockets and files, for one node.
///
/// Its datagrams ([`Network`]) go on one channel of the node's transport:
/// channel 0 for the runtime [`RealRuntime::start`] returns, another for a
/// [`RealRuntime::channel`] view, so two services of the node that each
/// read every datagram they are sent (a cluster member's Raft groups and
/// its SWIM membership) can share the node's connections.
#[derive(Clone)]
pub struct RealRuntime {
    inner: Arc<Inner>,
    channel: u8,
}

impl std::fmt::Debug for RealRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealRuntime").field("node", &self.inner.node).field("channel", &self.channel).finish()
    }
}

impl RealRuntime {
    /// Starts `config.node` on `exec`: opens the data directory and, if the
    /// node has a peer address, binds it and starts the transport.
    pub fn start(exec: ExecutorHandle, config: NodeConfig) -> Result<RealRuntime, StartError> {
        let seed = match config.seed {
            Some(s) => s,
            None => getrandom::u64().map_err(|e| StartError::Entropy(e.to_string()))?,
        };
        let blocking = BlockingPool::new(config.blocking_threads.max(1), &format!("kaelix-io-{}", config.node.0));
        let storage = FileStorage::open_dir(&config.data_dir, blocking.clone())?;
        let transport = if config.peers.contains_key(&config.node) {
            let rng = rng::derive(seed, u64::MAX);
            Some(
                Transport::start(exec.clone(), config.node, config.peers.clone(), config.transport.clone(), rng)
                    .map_err(|source| StartError::Bind { node: config.node, source })?,
            )
        } else {
            None
        };
        Ok(RealRuntime {
            inner: Arc::new(Inner {
                node: config.node,
                exec,
                transport,
                storage,
                blocking,
                clients: config.clients,
                listening: Arc::new(AtomicBool::new(false)),
                seed,
                rng_draws: AtomicU64::new(0),
            }),
            channel: 0,
        })
    }

    /// The same node (executor, storage, client streams, rng) whose
    /// datagrams travel on transport channel `channel` (below
    /// [`crate::net::CHANNELS`]): it receives only what is sent on that
    /// channel, and what it sends arrives on that channel at the peer.
    pub fn channel(&self, channel: u8) -> RealRuntime {
        assert!(channel < crate::net::CHANNELS, "transport channel {channel} of {}", crate::net::CHANNELS);
        RealRuntime { inner: self.inner.clone(), channel }
    }

    /// Adds `node` at `addr` to the node-to-node transport's address book,
    /// or moves it there (see `net`'s module docs); whether anything
    /// changed. Shared by every channel. A node without a transport learns
    /// nothing.
    pub fn learn_peer(&self, node: NodeId, addr: SocketAddr) -> bool {
        self.inner.transport.as_ref().is_some_and(|t| t.learn(node, addr))
    }

    /// `node`'s node-to-node address in the transport's address book.
    pub fn peer_addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.inner.transport.as_ref().and_then(|t| t.peer_addr(node))
    }

    /// The transport's counters (`None` for a node without a peer address).
    pub fn transport_stats(&self) -> Option<&TransportStats> {
        self.inner.transport.as_ref().map(|t| &t.stats)
    }

    /// IO counters of the node's data directory.
    pub fn storage_stats(&self) -> &Arc<crate::storage::StorageStats> {
        self.inner.storage.stats()
    }

    /// The seed this node's rngs derive from (to reproduce a run's draws).
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }
}

impl Clock for RealRuntime {
    fn now(&self) -> Instant {
        self.inner.exec.now()
    }

    fn now_coarse(&self) -> Instant {
        self.inner.exec.now_coarse()
    }

    fn wall_clock(&self) -> WallTime {
        wall_clock_now()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        self.inner.exec.sleep_until(deadline)
    }
}

impl Spawner for RealRuntime {
    type Handle<T: Send + 'static> = JoinHandle<T>;

    fn spawn<F>(&self, priority: Priority, name: &'static str, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.exec.spawn(priority, name, future)
    }

    fn try_spawn<F>(
        &self,
        priority: Priority,
        name: &'static str,
        future: F,
    ) -> Result<JoinHandle<F::Output>, SpawnRefused>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.exec.try_spawn(priority, name, future)
    }
}

impl Network for RealRuntime {
    fn local_node(&self) -> NodeId {
        self.inner.node
    }

    fn send(&self, to: NodeId, message: Bytes) {
        if let Some(t) = &self.inner.transport {
            t.send(self.channel, to, message);
        }
    }

    fn recv(&self) -> impl Future<Output = (NodeId, Bytes)> + Send {
        let transport = self.inner.transport.clone();
        let channel = self.channel;
        poll_fn(move |cx| match &transport {
            Some(t) => t.poll_recv(channel, cx),
            None => std::task::Poll::Pending, // a node without peers never receives
        })
    }
}

impl ClientNetwork for RealRuntime {
    type Stream = RealStream;
    type Listener = RealListener;

    fn listen(&self) -> Result<RealListener, NetError> {
        let addr = self
            .inner
            .clients
            .get(&self.inner.node)
            .ok_or_else(|| NetError::Io(format!("{} has no client address", self.inner.node)))?;
        if self.inner.listening.swap(true, Ordering::AcqRel) {
            return Err(NetError::AlreadyListening);
        }
        RealListener::bind(self.inner.exec.driver(), *addr, self.inner.listening.clone())
            .map_err(|e| NetError::Io(format!("binding {addr}: {e}")))
    }

    fn connect(&self, node: NodeId) -> impl Future<Output = Result<RealStream, NetError>> + Send {
        let driver = self.inner.exec.driver().clone();
        let me = self.inner.node;
        let addr = self.inner.clients.get(&node).copied();
        async move {
            let addr = addr.ok_or(NetError::Refused(node))?;
            connect_client(&driver, addr, me, node).await
        }
    }
}

impl ByteNetwork for RealRuntime {
    type ByteStream = RealByteStream;
    type ByteListener = RealByteListener;

    fn bind_tcp(&self, addr: SocketAddr) -> Result<RealByteListener, NetError> {
        RealByteListener::bind(self.inner.exec.driver(), addr)
    }

    fn connect_tcp(&self, addr: SocketAddr) -> impl Future<Output = Result<RealByteStream, NetError>> + Send {
        let driver = self.inner.exec.driver().clone();
        async move { connect_bytes(&driver, addr).await }
    }
}

impl Storage for RealRuntime {
    type File = DiskFile;

    fn open(&self, name: &str) -> impl Future<Output = Result<DiskFile, StorageError>> + Send {
        self.inner.storage.open(name)
    }

    fn remove(&self, name: &str) -> impl Future<Output = Result<(), StorageError>> + Send {
        self.inner.storage.remove(name)
    }

    fn list(&self) -> impl Future<Output = Result<Vec<String>, StorageError>> + Send {
        self.inner.storage.list()
    }
}

impl FaultPoints for RealRuntime {
    /// Production never injects faults.
    fn buggify(&self, _point: &'static kaelix_core::runtime::CoveragePoint) -> bool {
        false
    }
}

impl Runtime for RealRuntime {
    fn node_id(&self) -> NodeId {
        self.inner.node
    }

    /// A fresh stream per call, derived from the node's seed.
    fn rng(&self) -> DetRng {
        rng::derive(self.inner.seed, self.inner.rng_draws.fetch_add(1, Ordering::Relaxed))
    }
}

//! The simulated world: virtual time, the event queue, the seeded task
//! scheduler, and every node's clock, disk, inbox, client streams and byte
//! streams.
//!
//! # Execution model
//!
//! One thread runs everything. [`Sim::step`] does one thing:
//!
//! * if any task is ready (was woken), it picks one **uniformly at random**
//!   with the run's generator and polls it — so different seeds explore
//!   different interleavings of tasks that are ready at the same instant;
//! * otherwise it pops the earliest event (timer, packet arrival, disk
//!   completion, stream frame, fault), advances virtual time to it and
//!   applies it, which usually wakes a task.
//!
//! The world is owned by the thread that runs it (`Rc` + `RefCell`): node
//! handles and wakers reach it through a thread-local set while the
//! simulation is entered (every step enters it), so the hot path takes no
//! locks.
//!
//! Time never advances while a task is ready, so a busy task cannot starve
//! timers in virtual time — but virtual time only moves when everything is
//! idle.
//!
//! # Nodes
//!
//! A node is a restartable unit: an init function builds its tasks from its
//! disk. [`Fault::Crash`] drops every task of the node at once, every
//! in-flight operation, its inbox and its client streams, and lets the disk
//! lose or tear what was not synced; [`Fault::Restart`] bumps the node's
//! incarnation and runs init again. Nothing of a crashed incarnation
//! survives except the disk: completions addressed to an old incarnation are
//! discarded. Clients are nodes too (with their own clock and address); the
//! fault schedule only targets servers.
//!
//! # Layout
//!
//! * `mod.rs` — the world's state ([`Sim`] and its `World`), the event
//!   enum, the thread-local "current simulation", ids, config and counters;
//! * `scheduler` — tasks, the ready set, wakers and [`Sim::step`];
//! * `nodes` — adding and booting nodes, incarnations and the faults
//!   applied to them (crash, restart, wipe, pause, partitions, clocks);
//! * `datagrams` — node-to-node packets: send, delivery into the inbox,
//!   receive;
//! * `disk_ops` — disk requests, the op slots their results wait in;
//! * `streams` — client streams: listen, accept, connect, frames;
//! * `byte_streams` — byte streams between socket addresses (the address
//!   plan, binding, segmentation), on the client streams' connections;
//! * `handle` — [`NodeHandle`], the per-node API the runtime is built on.

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;

use bytes::Bytes;
use kaelix_core::rng::{self, DetRng};
use kaelix_core::runtime::{CoveragePoint, CoverageSink};
use kaelix_core::{Instant, NodeId};

use crate::coverage::Coverage;
use crate::disk::DiskConfig;
use crate::faults::{Fault, FaultProfile};
use crate::net::{LinkConfig, NetModel};
use crate::queue::EventQueue;
use crate::table::{Key, Table, TableKey};
use crate::trace::{Trace, TraceSink};

mod byte_streams;
mod datagrams;
mod disk_ops;
mod handle;
mod nodes;
mod scheduler;
mod streams;

pub use byte_streams::{TcpListenerId, addr_node, node_addr, node_ip};
pub use datagrams::INBOX_CAPACITY;
pub use disk_ops::{DiskRequest, OpResult};
pub use handle::NodeHandle;
pub use nodes::{NodeInit, NodeKind, NodeSpec, NodeStatus, SIM_EPOCH};
pub use scheduler::{BoxFuture, Step};
pub use streams::{ConnId, End};

use disk_ops::{OpSlot, PendingSync};
use nodes::Node;
use scheduler::Task;
use streams::Conn;

macro_rules! table_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Key);

        impl TableKey for $name {
            fn from_key(key: Key) -> Self {
                $name(key)
            }
            fn key(self) -> Key {
                self.0
            }
        }
    };
}

table_id!(
    /// Identifies a task: unique in a run, ordered by spawn. A late wake of
    /// a finished task finds nothing (see [`crate::table`]).
    TaskId
);
table_id!(
    /// Identifies a pending asynchronous operation (disk op or connect).
    OpId
);
table_id!(
    /// Identifies a pending timer.
    TimerId
);

enum Event {
    Timer(TimerId),
    /// `digest` is the payload's trace digest, computed once at send.
    Packet {
        from: NodeId,
        to: NodeId,
        payload: Bytes,
        digest: u64,
        /// When it was sent (for the picture of the run; never hashed).
        sent: Instant,
    },
    OpDone {
        op: OpId,
        sync: PendingSync,
    },
    Frame {
        conn: ConnId,
        to: End,
        frame: Option<Bytes>,
        /// When it was sent (for the picture of the run; never hashed).
        sent: Instant,
    },
    Connect {
        op: OpId,
        conn: ConnId,
    },
    Fault(Fault),
    Liveness,
}

/// Everything of one simulation, owned by its thread. Node handles and
/// wakers reach it through [`CURRENT`] while the simulation runs, so the hot
/// path takes no locks and performs no atomic read-modify-writes.
struct Shared {
    /// Distinguishes simulations on one thread (handles check it).
    id: u64,
    world: RefCell<World>,
    /// Tasks woken since the scheduler last looked.
    woken: RefCell<Vec<TaskId>>,
}

impl Shared {
    fn world(&self) -> RefMut<'_, World> {
        self.world.borrow_mut()
    }
}

thread_local! {
    /// The simulation being stepped on this thread.
    static CURRENT: RefCell<Option<Rc<Shared>>> = const { RefCell::new(None) };
}

/// Source of simulation identities (identity only: never reaches behaviour).
static NEXT_SIM_ID: AtomicU64 = AtomicU64::new(1);

/// Makes a simulation current on this thread until dropped, restoring the
/// previous one (so nested entries of the same simulation are harmless).
/// See [`Sim::enter`].
pub struct Entered {
    previous: Option<Rc<Shared>>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Counters of what happened in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events popped from the queue.
    pub events: u64,
    /// Task polls.
    pub polls: u64,
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Datagrams delivered (duplicates included).
    pub packets_delivered: u64,
    /// Datagrams dropped (loss, partition, dead receiver, full inbox).
    pub packets_dropped: u64,
    /// Disk operations submitted.
    pub disk_ops: u64,
    /// Faults applied.
    pub faults: u64,
    /// Crashes (power losses count each node).
    pub crashes: u64,
    /// Code-level fault points that fired.
    pub buggify_fired: u64,
}

struct World {
    seed: u64,
    now: Instant,
    rng: DetRng,
    events: EventQueue<Event>,
    tasks: Table<TaskId, Task>,
    ready: Vec<TaskId>,
    nodes: BTreeMap<NodeId, Node>,
    net: NetModel,
    ops: Table<OpId, OpSlot>,
    /// Pending timers: the node whose clock they run on, and whom to wake.
    timers: Table<TimerId, (NodeId, Waker)>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: u64,
    /// Ids of byte-stream listeners.
    next_tcp_listener: u64,
    /// Cuts byte-stream writes into chunks; derived from the seed apart from
    /// `rng`, so byte streams never shift the run's other draws.
    tcp_rng: DetRng,
    /// Fault points reached, by name: their site and whether this seed
    /// enables them.
    buggify_sites: BTreeMap<&'static str, (&'static str, bool)>,
    buggify_enabled: bool,
    /// Decides whether an enabled fault point fires; derived from the seed
    /// apart from `rng`, so adding a fault point (or reaching one that does
    /// not fire) never shifts the scheduler's or the faults' draws.
    buggify_rng: DetRng,
    /// Fault points and `sometimes!` assertions reached (changes no run).
    coverage: Coverage,
    liveness: bool,
    calm_disk: DiskConfig,
    trace: Trace,
    stats: SimStats,
    fault_log: Vec<(Instant, Fault)>,
    profile: FaultProfile,
    calm_link: LinkConfig,
    boots: Vec<NodeId>,
    /// Nodes lost for good at the liveness phase (see
    /// [`Sim::retire_at_liveness`]).
    retired: BTreeSet<NodeId>,
}

/// The stream label of [`World::buggify_rng`] ("buggify!").
const BUGGIFY_RNG_LABEL: u64 = 0x6275_6767_6966_7921;

/// The stream label of [`World::tcp_rng`] ("tcp-cuts").
const TCP_RNG_LABEL: u64 = 0x7463_702d_6375_7473;

/// Configuration of a simulation.
pub struct SimConfig {
    /// The one seed that decides everything.
    pub seed: u64,
    /// Fault intensities for the safety phase.
    pub profile: FaultProfile,
    /// Link behaviour for the liveness phase (and a calm run).
    pub calm_link: LinkConfig,
    /// Disk behaviour for the liveness phase.
    pub calm_disk: DiskConfig,
    /// Readable trace output, if wanted.
    pub trace_sink: Option<TraceSink>,
}

impl SimConfig {
    /// A calm simulation with the given seed.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            profile: FaultProfile::calm(),
            calm_link: LinkConfig::healthy(),
            calm_disk: DiskConfig::healthy(),
            trace_sink: None,
        }
    }
}

/// The simulator. It lives on one thread; node handles reach it while it
/// runs (see [`Sim::step`]).
#[derive(Clone)]
pub struct Sim {
    shared: Rc<Shared>,
}

impl Sim {
    /// A new world. Per-node clocks and disks are drawn when nodes are added.
    pub fn new(config: SimConfig) -> Self {
        let mut root = rng::seeded(config.seed);
        let net = NetModel::new(config.profile.link, rng::fork(&mut root));
        let world = World {
            seed: config.seed,
            now: Instant::ZERO,
            rng: rng::fork(&mut root),
            events: EventQueue::new(),
            tasks: Table::default(),
            ready: Vec::new(),
            nodes: BTreeMap::new(),
            net,
            ops: Table::default(),
            timers: Table::default(),
            conns: BTreeMap::new(),
            next_conn: 0,
            next_tcp_listener: 0,
            tcp_rng: rng::derive(config.seed, TCP_RNG_LABEL),
            buggify_sites: BTreeMap::new(),
            buggify_enabled: config.profile.buggify,
            buggify_rng: rng::derive(config.seed, BUGGIFY_RNG_LABEL),
            coverage: Coverage::default(),
            liveness: false,
            calm_disk: config.calm_disk,
            trace: Trace::new(config.trace_sink),
            stats: SimStats::default(),
            fault_log: Vec::new(),
            profile: config.profile,
            calm_link: config.calm_link,
            boots: Vec::new(),
            retired: BTreeSet::new(),
        };
        let id = NEXT_SIM_ID.fetch_add(1, Ordering::Relaxed);
        Sim { shared: Rc::new(Shared { id, world: RefCell::new(world), woken: RefCell::new(Vec::new()) }) }
    }

    fn world(&self) -> RefMut<'_, World> {
        self.shared.world()
    }

    /// Makes this simulation the one node handles and wakers reach, until
    /// the guard drops. Stepping does this by itself; harness code that uses
    /// a node handle between steps enters first.
    pub fn enter(&self) -> Entered {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(self.shared.clone()));
        Entered { previous }
    }

    /// True virtual time.
    pub fn now(&self) -> Instant {
        self.world().now
    }

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.world().seed
    }

    /// The running trace hash.
    pub fn trace_hash(&self) -> u64 {
        self.world().trace.hash()
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.world().stats
    }

    /// Faults applied so far, with their times.
    pub fn fault_log(&self) -> Vec<(Instant, Fault)> {
        self.world().fault_log.clone()
    }

    /// The faults applied since the first `from` of them (`fault_log()[from..]`),
    /// with their times: what a checker stepped after every event reads to
    /// learn what changed without copying the whole log. Records nothing.
    pub fn faults_since(&self, from: usize) -> Vec<(Instant, Fault)> {
        self.world().fault_log.get(from..).map_or_else(Vec::new, <[_]>::to_vec)
    }

    /// The fault points and `sometimes!` assertions this run reached so far.
    pub fn coverage(&self) -> Coverage {
        self.world().coverage.clone()
    }

    /// Counts one evaluation of a `sometimes!` assertion made by harness
    /// code (checkers); nodes count theirs through their runtime.
    pub fn sometimes(&self, point: &'static CoveragePoint, condition: bool) {
        self.world().coverage.record(point.site, condition);
    }

    /// Whether the liveness phase has started.
    pub fn in_liveness(&self) -> bool {
        self.world().liveness
    }

    /// The directed links `(from, to)` that partitions cut right now. A
    /// query for checkers that judge whether two nodes could talk; it
    /// records nothing in the trace and changes nothing in the run.
    pub fn blocked_links(&self) -> BTreeSet<(NodeId, NodeId)> {
        self.world().net.blocked().collect()
    }

    /// Records a scenario-level event in the trace.
    pub fn trace_event(&self, node: Option<NodeId>, kind: &'static str, digest: u64, detail: impl FnOnce() -> String) {
        let mut w = self.world();
        let now = w.now;
        w.trace.record(now, node, kind, digest, detail);
    }

    /// Drops every task and pending event (end of run), without holding the
    /// world lock while futures drop.
    pub fn shutdown(&self) {
        let _entered = self.enter();
        let (tasks, events) = {
            let mut w = self.world();
            let tasks: Vec<Task> = w.tasks.take_all();
            let events = std::mem::take(&mut w.events);
            w.timers.clear();
            w.ops.clear();
            w.conns.clear();
            for n in w.nodes.values_mut() {
                n.recv_wakers.clear();
                n.accept_waker = None;
                n.tcp_listeners.clear();
            }
            (tasks, events)
        };
        drop(tasks);
        drop(events);
    }
}

/// `kaelix_core::sometimes!(sim, "…", condition)` in checkers.
impl CoverageSink for Sim {
    fn count_sometimes(&self, point: &'static CoveragePoint, condition: bool) {
        self.sometimes(point, condition);
    }
}

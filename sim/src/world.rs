//! The simulated world: virtual time, the event queue, the seeded task
//! scheduler, and every node's clock, disk, inbox and client streams.
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

use std::cell::{RefCell, RefMut};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::{MAX_DATAGRAM_BYTES, MAX_FRAME_BYTES, NetError, Priority, StorageError};
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId, WallTime};

use crate::clock::NodeClock;
use crate::disk::{DiskConfig, OpKind, SimDisk};
use crate::faults::{Fault, FaultProfile};
use crate::net::{LinkConfig, NetModel, Route};
use crate::queue::EventQueue;
use crate::table::{Key, Table, TableKey};
use crate::trace::{Trace, TraceSink, digest};

/// A boxed task future.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Builds a node's root task from a handle; run at boot and at every restart.
pub type NodeInit = Arc<dyn Fn(NodeHandle) -> BoxFuture + Send + Sync>;

/// The Unix time at which every simulated wall clock starts (before skew):
/// 2026-01-01T00:00:00Z.
pub const SIM_EPOCH: WallTime = WallTime(1_767_225_600_000_000_000);

/// Most datagrams a node's inbox holds; more are dropped (a full socket
/// buffer).
pub const INBOX_CAPACITY: usize = 65_536;

/// Whether a node is a server (subject to faults) or a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A cluster member; the fault schedule targets these.
    Server,
    /// A simulated client participant.
    Client,
}

/// A node's liveness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    /// Running.
    Up,
    /// Crashed; waiting for a restart.
    Down,
    /// Running but not scheduled.
    Paused,
}

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

/// Identifies a client stream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

/// Which end of a connection: the connecting client or the accepting node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    /// The side that called connect.
    Connector = 0,
    /// The side that accepted.
    Acceptor = 1,
}

impl End {
    fn other(self) -> End {
        match self {
            End::Connector => End::Acceptor,
            End::Acceptor => End::Connector,
        }
    }
}

/// A disk request from a node. File names are shared (`Arc<str>`): a file
/// handle issues many requests and none of them copies its name.
#[derive(Clone, Debug)]
pub enum DiskRequest {
    /// Open (create if missing).
    Open(Arc<str>),
    /// Remove.
    Remove(Arc<str>),
    /// List files.
    List,
    /// Read `len` at `offset`.
    Read {
        /// File.
        name: Arc<str>,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// Write at `offset`; `None` appends at the current end.
    Write {
        /// File.
        name: Arc<str>,
        /// Offset, or append.
        offset: Option<u64>,
        /// Data.
        data: Bytes,
    },
    /// Truncate to `len`.
    Truncate {
        /// File.
        name: Arc<str>,
        /// New length.
        len: u64,
    },
    /// Sync.
    Sync(Arc<str>),
}

/// The result of a completed operation.
#[derive(Clone, Debug)]
pub enum OpResult {
    /// Nothing to return.
    Unit(Result<(), StorageError>),
    /// An offset (appends).
    Offset(Result<u64, StorageError>),
    /// Data read.
    Data(Result<Bytes, StorageError>),
    /// File names.
    Names(Result<Vec<String>, StorageError>),
    /// A connection (for the connector).
    Connected(Result<ConnId, NetError>),
}

/// A sync to complete with an op: the file and the barrier taken at issue.
type PendingSync = Option<(Arc<str>, u64)>;

enum Event {
    Timer(TimerId),
    /// `digest` is the payload's trace digest, computed once at send.
    Packet {
        from: NodeId,
        to: NodeId,
        payload: Bytes,
        digest: u64,
    },
    OpDone {
        op: OpId,
        sync: PendingSync,
    },
    Frame {
        conn: ConnId,
        to: End,
        frame: Option<Bytes>,
    },
    Connect {
        op: OpId,
        conn: ConnId,
    },
    Fault(Fault),
    Liveness,
}

struct Task {
    node: NodeId,
    incarnation: u64,
    priority: Priority,
    name: &'static str,
    future: Option<BoxFuture>,
    queued: bool,
    /// Built once per task: polls reuse it.
    waker: Option<Waker>,
}

struct Node {
    kind: NodeKind,
    name: String,
    status: NodeStatus,
    incarnation: u64,
    clock: NodeClock,
    disk: SimDisk,
    init: NodeInit,
    tasks: BTreeSet<TaskId>,
    paused_ready: Vec<TaskId>,
    inbox: VecDeque<(NodeId, Bytes)>,
    recv_wakers: Vec<Waker>,
    listening: bool,
    accept_queue: VecDeque<ConnId>,
    accept_waker: Option<Waker>,
    rng_streams: u64,
}

struct OpSlot {
    node: NodeId,
    incarnation: u64,
    result: Option<OpResult>,
    /// Set when the completion event has run (latency has passed).
    done: bool,
    waker: Option<Waker>,
}

struct Conn {
    nodes: [NodeId; 2],
    incarnations: [u64; 2],
    inbox: [VecDeque<Bytes>; 2],
    eof: [bool; 2],
    wakers: [Option<Waker>; 2],
    last_arrival: [Instant; 2],
    broken: bool,
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

/// Wakes a task by pushing its id onto the current simulation's list. A
/// simulated task is only ever woken from inside its own simulation's step;
/// a wake from anywhere else would be a simulator bug, so it is asserted.
struct TaskWaker {
    sim: u64,
    id: TaskId,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        CURRENT.with(|c| match &*c.borrow() {
            Some(shared) if shared.id == self.sim => shared.woken.borrow_mut().push(self.id),
            _ => debug_assert!(false, "a simulated task was woken outside its simulation"),
        });
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
    buggify_sites: BTreeMap<&'static str, bool>,
    buggify_enabled: bool,
    liveness: bool,
    calm_disk: DiskConfig,
    trace: Trace,
    stats: SimStats,
    fault_log: Vec<(Instant, Fault)>,
    profile: FaultProfile,
    calm_link: LinkConfig,
    boots: Vec<NodeId>,
}

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

/// A node's configuration at creation.
pub struct NodeSpec {
    /// Server or client.
    pub kind: NodeKind,
    /// A label for traces.
    pub name: String,
    /// Whether its disk may lose synced data (see the disk fault model).
    pub faulty_disk: bool,
    /// Builds the node's tasks.
    pub init: NodeInit,
}

/// Outcome of one [`Sim::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A task was polled.
    Polled,
    /// An event was applied.
    Event,
    /// Nothing is ready and no event is due by the deadline.
    Idle,
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
            buggify_sites: BTreeMap::new(),
            buggify_enabled: config.profile.buggify,
            liveness: false,
            calm_disk: config.calm_disk,
            trace: Trace::new(config.trace_sink),
            stats: SimStats::default(),
            fault_log: Vec::new(),
            profile: config.profile,
            calm_link: config.calm_link,
            boots: Vec::new(),
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

    /// Adds a node with id `id` and boots it now.
    pub fn add_node(&self, id: NodeId, spec: NodeSpec) {
        let mut w = self.world();
        assert!(!w.nodes.contains_key(&id), "node {id} added twice");
        let profile = w.profile.clone();
        let mut node_rng = rng::derive(w.seed, 0x6e6f_6465_0000_0000 ^ id.0);
        let is_server = spec.kind == NodeKind::Server;
        let skew_max = kaelix_core::time::duration_nanos(profile.max_skew) as i64;
        let skew = if skew_max > 0 && is_server { node_rng.random_range(-skew_max..=skew_max) } else { 0 };
        let drift = if profile.max_drift_ppm > 0 && is_server {
            node_rng.random_range(-profile.max_drift_ppm..=profile.max_drift_ppm)
        } else {
            0
        };
        let mono_origin = node_rng.random_range(0..1_000_000_000_000u64);
        let disk_config = if is_server { profile.disk } else { w.calm_disk };
        let disk = SimDisk::new(disk_config, spec.faulty_disk && is_server, rng::fork(&mut node_rng));
        w.nodes.insert(
            id,
            Node {
                kind: spec.kind,
                name: spec.name,
                status: NodeStatus::Up,
                incarnation: 0,
                clock: NodeClock::new(mono_origin, drift, SIM_EPOCH, skew),
                disk,
                init: spec.init,
                tasks: BTreeSet::new(),
                paused_ready: Vec::new(),
                inbox: VecDeque::new(),
                recv_wakers: Vec::new(),
                listening: false,
                accept_queue: VecDeque::new(),
                accept_waker: None,
                rng_streams: 0,
            },
        );
        drop(w);
        self.boot(id);
    }

    fn boot(&self, id: NodeId) {
        let _entered = self.enter();
        let (init, handle) = {
            let w = self.world();
            let node = &w.nodes[&id];
            let handle = NodeHandle { sim: self.shared.id, node: id, incarnation: node.incarnation };
            (node.init.clone(), handle)
        };
        let fut = init(handle.clone());
        handle.spawn(Priority::Normal, "init", fut);
    }

    /// Schedules `fault` at true time `at`.
    pub fn schedule_fault(&self, at: Instant, fault: Fault) {
        self.world().events.push(at, Event::Fault(fault));
    }

    /// Schedules the start of the liveness phase at `at` (see the faults
    /// module): faults stop, partitions heal, nodes come back.
    pub fn schedule_liveness(&self, at: Instant) {
        self.world().events.push(at, Event::Liveness);
    }

    /// Applies `fault` now.
    pub fn apply_fault(&self, fault: Fault) {
        let _entered = self.enter();
        let dropped = self.world().apply_fault(fault);
        self.finish_event(dropped);
    }

    /// After an event: drops the tasks it killed and boots the nodes it
    /// restarted.
    fn finish_event(&self, dropped: Dropped) {
        // Futures are dropped outside the world borrow: their destructors
        // may call back into the world.
        drop(dropped);
        let restart: Vec<NodeId> = std::mem::take(&mut self.world().boots);
        for id in restart {
            self.boot(id);
        }
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

    /// Whether the liveness phase has started.
    pub fn in_liveness(&self) -> bool {
        self.world().liveness
    }

    /// A node's status.
    pub fn status(&self, id: NodeId) -> NodeStatus {
        self.world().nodes[&id].status
    }

    /// The directed links `(from, to)` that partitions cut right now. A
    /// query for checkers that judge whether two nodes could talk; it
    /// records nothing in the trace and changes nothing in the run.
    pub fn blocked_links(&self) -> BTreeSet<(NodeId, NodeId)> {
        self.world().net.blocked().collect()
    }

    /// Every node and its status.
    pub fn nodes(&self) -> Vec<(NodeId, NodeKind, NodeStatus)> {
        self.world().nodes.iter().map(|(id, n)| (*id, n.kind, n.status)).collect()
    }

    /// Records a scenario-level event in the trace.
    pub fn trace_event(&self, node: Option<NodeId>, kind: &'static str, digest: u64, detail: impl FnOnce() -> String) {
        let mut w = self.world();
        let now = w.now;
        w.trace.record(now, node, kind, digest, detail);
    }

    /// Runs one step (see the module docs), not advancing time past `limit`.
    pub fn step(&self, limit: Instant) -> Step {
        let _entered = self.enter();
        let mut w = self.world();
        w.collect_wakes(&self.shared.woken);
        while !w.ready.is_empty() {
            let len = w.ready.len();
            let i = w.rng.random_range(0..len);
            let id = w.ready.swap_remove(i);
            let Some(task) = w.tasks.get_mut(&id) else { continue };
            task.queued = false;
            let node = task.node;
            if w.nodes[&node].status == NodeStatus::Paused {
                w.nodes.get_mut(&node).expect("exists").paused_ready.push(id);
                continue;
            }
            let task = w.tasks.get_mut(&id).expect("checked above");
            let Some(mut fut) = task.future.take() else { continue };
            let (name, prio) = (task.name, task.priority);
            // Lent out for the poll and put back with the future: no
            // reference-count traffic per poll.
            let waker =
                task.waker.take().unwrap_or_else(|| Waker::from(Arc::new(TaskWaker { sim: self.shared.id, id })));
            w.stats.polls += 1;
            let now = w.now;
            w.trace.record(now, Some(node), "poll", id.0.seq() ^ ((prio as u64) << 56), || {
                format!("poll {name} ({prio:?})")
            });
            drop(w);

            let done = fut.as_mut().poll(&mut Context::from_waker(&waker)).is_ready();

            let mut w = self.world();
            let keep = !done && w.tasks.contains_key(&id);
            if keep {
                let task = w.tasks.get_mut(&id).expect("checked");
                task.future = Some(fut);
                task.waker = Some(waker);
            } else {
                if done {
                    w.remove_task(id);
                }
                drop(w);
                drop(fut);
            }
            return Step::Polled;
        }
        loop {
            match w.events.peek_time() {
                Some(t) if t <= limit => {
                    let (t, event) = w.events.pop().expect("peeked");
                    debug_assert!(t >= w.now, "event in the past");
                    if let Event::Timer(id) = &event
                        && !w.timers.contains_key(id)
                    {
                        continue; // cancelled: not an event of the run
                    }
                    w.now = t;
                    w.stats.events += 1;
                    let dropped = w.apply_event(event);
                    if dropped.is_empty() && w.boots.is_empty() {
                        return Step::Event;
                    }
                    drop(w);
                    self.finish_event(dropped);
                    return Step::Event;
                }
                _ => return Step::Idle,
            }
        }
    }

    /// Steps until virtual time would pass `deadline` or nothing remains,
    /// calling `check` after every step; stops early with `check`'s error.
    pub fn run_until<E>(&self, deadline: Instant, mut check: impl FnMut(&Sim) -> Result<(), E>) -> Result<(), E> {
        loop {
            match self.step(deadline) {
                Step::Idle => {
                    let mut w = self.world();
                    if w.now < deadline {
                        w.now = deadline;
                    }
                    return Ok(());
                }
                Step::Polled | Step::Event => check(self)?,
            }
        }
    }

    /// Steps until `done` returns true, virtual time would pass `deadline`,
    /// or `check` fails. Returns whether `done` became true. `check` runs
    /// after every step; `done` after every event (and at start and end).
    pub fn run_until_done<E>(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&Sim) -> bool,
        mut check: impl FnMut(&Sim) -> Result<(), E>,
    ) -> Result<bool, E> {
        if done(self) {
            return Ok(true);
        }
        loop {
            match self.step(deadline) {
                Step::Idle => return Ok(done(self)),
                Step::Polled => check(self)?,
                Step::Event => {
                    check(self)?;
                    // Time only moves at events, so this is where a
                    // time-bounded condition can change its answer.
                    if done(self) {
                        return Ok(true);
                    }
                }
            }
        }
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
            }
            (tasks, events)
        };
        drop(tasks);
        drop(events);
    }
}

type Dropped = Vec<Task>;

impl World {
    fn collect_wakes(&mut self, woken: &RefCell<Vec<TaskId>>) {
        let mut woken = woken.borrow_mut();
        // Drained in place: the buffer keeps its capacity across steps.
        for id in woken.drain(..) {
            self.make_ready(id);
        }
    }

    fn make_ready(&mut self, id: TaskId) {
        if let Some(t) = self.tasks.get_mut(&id)
            && !t.queued
        {
            t.queued = true;
            self.ready.push(id);
        }
    }

    fn remove_task(&mut self, id: TaskId) -> Option<Task> {
        let task = self.tasks.remove(&id)?;
        if let Some(n) = self.nodes.get_mut(&task.node) {
            n.tasks.remove(&id);
        }
        Some(task)
    }

    fn alive(&self, node: NodeId, incarnation: u64) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.incarnation == incarnation && n.status != NodeStatus::Down)
    }

    fn local_now(&self, node: NodeId) -> Instant {
        self.nodes[&node].clock.local_now(self.now)
    }

    fn apply_event(&mut self, event: Event) -> Dropped {
        let now = self.now;
        match event {
            Event::Timer(id) => {
                if let Some((_, w)) = self.timers.remove(&id) {
                    self.trace.record(now, None, "timer", id.0.seq(), || format!("timer {} fires", id.0.seq()));
                    w.wake();
                }
            }
            Event::Packet { from, to, payload, digest: d } => {
                let node = self.nodes.get_mut(&to).expect("packets go to known nodes");
                let blocked = self.net.is_blocked(from, to);
                if blocked || node.status == NodeStatus::Down || node.inbox.len() >= INBOX_CAPACITY {
                    self.stats.packets_dropped += 1;
                    let why = if blocked {
                        "partition"
                    } else if node.status == NodeStatus::Down {
                        "receiver down"
                    } else {
                        "inbox full"
                    };
                    self.trace.record(now, Some(to), "packet-drop", d, || format!("drop {from}->{to} ({why})"));
                } else {
                    self.stats.packets_delivered += 1;
                    node.inbox.push_back((from, payload));
                    for w in node.recv_wakers.drain(..) {
                        w.wake();
                    }
                    self.trace.record(now, Some(to), "packet-deliver", d, || format!("deliver {from}->{to}"));
                }
            }
            Event::OpDone { op, sync } => {
                let Some(slot) = self.ops.get_mut(&op) else { return Vec::new() };
                let (node, inc) = (slot.node, slot.incarnation);
                if !self.alive(node, inc) {
                    self.ops.remove(&op);
                    return Vec::new();
                }
                if let Some((name, barrier)) = sync {
                    let n = self.nodes.get_mut(&node).expect("alive");
                    let result = n.disk.complete_sync(&name, barrier);
                    let slot = self.ops.get_mut(&op).expect("checked");
                    slot.result = Some(OpResult::Unit(result));
                }
                let slot = self.ops.get_mut(&op).expect("checked");
                slot.done = true;
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
                self.trace.record(now, Some(node), "disk-done", op.0.seq(), || format!("disk op {} done", op.0.seq()));
            }
            Event::Frame { conn, to, frame } => self.deliver_frame(conn, to, frame),
            Event::Connect { op, conn } => self.finish_connect(op, conn),
            Event::Fault(f) => return self.apply_fault(f),
            Event::Liveness => return self.start_liveness(),
        }
        Vec::new()
    }

    fn break_conn(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id)
            && !c.broken
        {
            c.broken = true;
            for w in c.wakers.iter_mut().filter_map(Option::take) {
                w.wake();
            }
        }
    }

    fn deliver_frame(&mut self, id: ConnId, to: End, frame: Option<Bytes>) {
        let now = self.now;
        let Some(c) = self.conns.get(&id) else { return };
        if c.broken {
            return;
        }
        let (src, dst) = (c.nodes[to.other() as usize], c.nodes[to as usize]);
        if self.net.is_blocked(src, dst) {
            self.break_conn(id);
            self.trace.record(now, Some(dst), "stream-break", id.0, || format!("stream {} broken by partition", id.0));
            return;
        }
        let c = self.conns.get_mut(&id).expect("checked");
        let d = frame.as_deref().map_or(0, digest);
        match frame {
            Some(f) => c.inbox[to as usize].push_back(f),
            None => c.eof[to as usize] = true,
        }
        if let Some(w) = c.wakers[to as usize].take() {
            w.wake();
        }
        self.trace.record(now, Some(dst), "stream-frame", d ^ id.0, || format!("stream {} frame {src}->{dst}", id.0));
    }

    fn finish_connect(&mut self, op: OpId, conn: ConnId) {
        let now = self.now;
        let Some(slot) = self.ops.get(&op) else {
            self.conns.remove(&conn);
            return;
        };
        let client = slot.node;
        let c = self.conns.get(&conn).expect("created with the op");
        let server = c.nodes[End::Acceptor as usize];
        let reachable = !self.net.is_blocked(client, server) && !self.net.is_blocked(server, client);
        let target = &self.nodes[&server];
        let ok =
            reachable && target.status != NodeStatus::Down && target.listening && self.alive(client, slot.incarnation);
        let result = if ok {
            let inc = target.incarnation;
            let c = self.conns.get_mut(&conn).expect("exists");
            c.incarnations[End::Acceptor as usize] = inc;
            let t = self.nodes.get_mut(&server).expect("exists");
            t.accept_queue.push_back(conn);
            if let Some(w) = t.accept_waker.take() {
                w.wake();
            }
            Ok(conn)
        } else {
            self.conns.remove(&conn);
            Err(NetError::Refused(server))
        };
        self.trace.record(now, Some(client), "connect", conn.0 ^ u64::from(ok), || {
            format!("connect {client}->{server}: {}", if ok { "ok" } else { "refused" })
        });
        let slot = self.ops.get_mut(&op).expect("checked");
        slot.result = Some(OpResult::Connected(result));
        slot.done = true;
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }

    /// Breaks client streams whose link is now cut.
    fn break_partitioned_conns(&mut self) {
        let cut: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.broken
                    && (self.net.is_blocked(c.nodes[0], c.nodes[1]) || self.net.is_blocked(c.nodes[1], c.nodes[0]))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in cut {
            self.break_conn(id);
        }
    }

    fn crash_node(&mut self, id: NodeId) -> Dropped {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.status == NodeStatus::Down {
            return Vec::new();
        }
        node.status = NodeStatus::Down;
        node.inbox.clear();
        node.recv_wakers.clear();
        node.listening = false;
        node.accept_queue.clear();
        node.accept_waker = None;
        node.paused_ready.clear();
        let report = node.disk.crash();
        let task_ids: Vec<TaskId> = std::mem::take(&mut node.tasks).into_iter().collect();
        let mut dropped = Vec::with_capacity(task_ids.len());
        for t in task_ids {
            if let Some(task) = self.tasks.remove(&t) {
                dropped.push(task);
            }
        }
        self.ops.retain(|s| s.node != id);
        let conns: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.nodes.contains(&id)).map(|(k, _)| *k).collect();
        for c in conns {
            self.break_conn(c);
        }
        self.stats.crashes += 1;
        self.trace.record(now, Some(id), "crash", u64::from(report.lost) << 32 | u64::from(report.torn), || {
            format!(
                "crash {id}: {} tasks dropped, unsynced writes kept {} lost {} torn {}",
                dropped.len(),
                report.kept,
                report.lost,
                report.torn
            )
        });
        dropped
    }

    fn apply_fault(&mut self, fault: Fault) -> Dropped {
        let now = self.now;
        if self.liveness && !matches!(fault, Fault::Restart { .. } | Fault::Resume(_) | Fault::Heal) {
            // Faults stop in the liveness phase.
            return Vec::new();
        }
        self.stats.faults += 1;
        let d = digest(fault.to_string().as_bytes());
        self.trace.record(now, None, "fault", d, || format!("FAULT {fault}"));
        self.fault_log.push((now, fault.clone()));
        let mut dropped = Vec::new();
        match fault {
            Fault::Crash(n) => dropped = self.crash_node(n),
            Fault::PowerLoss => {
                let servers: Vec<NodeId> =
                    self.nodes.iter().filter(|(_, n)| n.kind == NodeKind::Server).map(|(id, _)| *id).collect();
                for n in servers {
                    dropped.extend(self.crash_node(n));
                }
            }
            Fault::Restart { node, wipe } => {
                let n = self.nodes.get_mut(&node).expect("known node");
                if n.status == NodeStatus::Down {
                    if wipe {
                        n.disk.wipe();
                    }
                    n.status = NodeStatus::Up;
                    n.incarnation += 1;
                    self.boots.push(node);
                }
            }
            Fault::Pause(node) => {
                let n = self.nodes.get_mut(&node).expect("known node");
                if n.status == NodeStatus::Up {
                    n.status = NodeStatus::Paused;
                }
            }
            Fault::Resume(node) => {
                let n = self.nodes.get_mut(&node).expect("known node");
                if n.status == NodeStatus::Paused {
                    n.status = NodeStatus::Up;
                    let woken = std::mem::take(&mut n.paused_ready);
                    for t in woken {
                        self.make_ready(t);
                    }
                }
            }
            Fault::PartitionSymmetric(groups) => {
                self.net.partition(&groups);
                self.break_partitioned_conns();
            }
            Fault::PartitionAsymmetric { isolated, inbound_blocked } => {
                let others: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(id, n)| **id != isolated && n.kind == NodeKind::Server)
                    .map(|(id, _)| *id)
                    .collect();
                for o in others {
                    if inbound_blocked {
                        self.net.block_one_way(o, isolated);
                    } else {
                        self.net.block_one_way(isolated, o);
                    }
                }
                self.break_partitioned_conns();
            }
            Fault::PartitionOneWay { from, to } => {
                self.net.block_one_way(from, to);
                self.break_partitioned_conns();
            }
            Fault::Heal => self.net.heal(),
            Fault::ClockStep { node, delta_nanos } => {
                self.nodes.get_mut(&node).expect("known node").clock.step_wall(delta_nanos);
            }
            Fault::ClockDrift { node, ppm } => {
                self.nodes.get_mut(&node).expect("known node").clock.set_drift(now, ppm);
                // The node's pending timers were converted to true time at the
                // old rate: cancel them and wake their sleepers, which re-arm
                // at the new one (else a clock that speeds up wakes them late).
                let stale: Vec<TimerId> =
                    self.timers.iter().filter(|(_, (n, _))| *n == node).map(|(id, _)| id).collect();
                for id in stale {
                    if let Some((_, w)) = self.timers.remove(&id) {
                        w.wake();
                    }
                }
            }
            Fault::BitRot(node) => {
                let n = self.nodes.get_mut(&node).expect("known node");
                if let Some((file, offset)) = n.disk.corrupt_at_rest() {
                    self.trace.record(now, Some(node), "bit-rot", offset, || format!("bit rot {node} {file}@{offset}"));
                }
            }
        }
        dropped
    }

    fn start_liveness(&mut self) -> Dropped {
        let now = self.now;
        self.liveness = true;
        self.buggify_enabled = false;
        self.net.heal();
        self.net.set_default_link(self.calm_link);
        let calm_disk = self.calm_disk;
        for (id, n) in self.nodes.iter_mut() {
            n.disk.set_corruption_enabled(false);
            n.disk.set_config(DiskConfig { lost_write: n.disk.config().lost_write, ..calm_disk });
            match n.status {
                NodeStatus::Down => {
                    n.status = NodeStatus::Up;
                    n.incarnation += 1;
                    self.boots.push(*id);
                }
                NodeStatus::Paused => {
                    n.status = NodeStatus::Up;
                    for t in std::mem::take(&mut n.paused_ready) {
                        if let Some(task) = self.tasks.get_mut(&t)
                            && !task.queued
                        {
                            task.queued = true;
                            self.ready.push(t);
                        }
                    }
                }
                NodeStatus::Up => {}
            }
        }
        self.trace
            .record(now, None, "liveness", 0, || "LIVENESS PHASE: faults stop, partitions heal, nodes restart".into());
        Vec::new()
    }

    fn new_op(&mut self, node: NodeId, incarnation: u64) -> OpId {
        self.ops.insert(OpSlot { node, incarnation, result: None, done: false, waker: None })
    }
}

/// A node's window into the simulator, used by `kaelix-runtime-sim` to
/// implement the runtime contract. Every call acts on behalf of one
/// incarnation of one node; calls from an incarnation that has crashed are
/// ignored (its futures are being dropped anyway). The handle holds only
/// ids: it reaches the world through the thread's current simulation, so it
/// is `Send` while the world itself never leaves its thread.
#[derive(Clone)]
pub struct NodeHandle {
    sim: u64,
    node: NodeId,
    incarnation: u64,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeHandle({}#{})", self.node, self.incarnation)
    }
}

impl NodeHandle {
    /// The simulation this handle belongs to. Handles are used by the
    /// simulation's own tasks, which run inside [`Sim::step`], or by harness
    /// code inside [`Sim::enter`].
    fn shared(&self) -> Rc<Shared> {
        let shared =
            CURRENT.with(|c| c.borrow().clone()).expect("a simulated node handle was used outside its simulation");
        assert_eq!(shared.id, self.sim, "a simulated node handle was used inside another simulation");
        shared
    }

    /// The node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Which boot of the node this handle belongs to.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The simulator.
    pub fn sim(&self) -> Sim {
        Sim { shared: self.shared() }
    }

    /// The node's label.
    pub fn name(&self) -> String {
        self.shared().world().nodes[&self.node].name.clone()
    }

    /// Whether this incarnation is still running.
    pub fn is_alive(&self) -> bool {
        self.shared().world().alive(self.node, self.incarnation)
    }

    /// The node's monotonic time.
    pub fn now(&self) -> Instant {
        self.shared().world().local_now(self.node)
    }

    /// The node's wall clock.
    pub fn wall_clock(&self) -> WallTime {
        let shared = self.shared();
        let w = shared.world();
        w.nodes[&self.node].clock.wall_now(w.now)
    }

    /// Polls a sleep until the node's monotonic clock reaches
    /// `local_deadline`, under one lock: ready if it has; otherwise keeps
    /// `timer` armed with `waker` (re-arming it if it fired early or a drift
    /// change cancelled it).
    pub fn poll_sleep(&self, local_deadline: Instant, timer: &mut Option<TimerId>, waker: &Waker) -> Poll<()> {
        let shared = self.shared();
        let mut w = shared.world();
        if w.local_now(self.node) >= local_deadline {
            if let Some(t) = timer.take() {
                w.timers.remove(&t);
            }
            return Poll::Ready(());
        }
        if let Some(t) = *timer
            && let Some((_, armed)) = w.timers.get_mut(&t)
        {
            armed.clone_from(waker);
            return Poll::Pending;
        }
        let now = w.now;
        let at = w.nodes[&self.node].clock.true_deadline(local_deadline, now);
        let id = w.timers.insert((self.node, waker.clone()));
        w.events.push(at, Event::Timer(id));
        *timer = Some(id);
        Poll::Pending
    }

    /// Cancels a timer.
    pub fn cancel_timer(&self, id: TimerId) {
        self.shared().world().timers.remove(&id);
    }

    /// Spawns a task on this node. A task spawned by a dead incarnation is
    /// dropped at once.
    pub fn spawn(&self, priority: Priority, name: &'static str, future: BoxFuture) -> TaskId {
        let shared = self.shared();
        let mut w = shared.world();
        if !w.alive(self.node, self.incarnation) {
            let id = w.tasks.unused_key();
            drop(w);
            drop(future);
            return id;
        }
        let id = w.tasks.insert(Task {
            node: self.node,
            incarnation: self.incarnation,
            priority,
            name,
            future: Some(future),
            queued: false,
            waker: None,
        });
        w.nodes.get_mut(&self.node).expect("alive").tasks.insert(id);
        w.make_ready(id);
        id
    }

    /// Cancels a task of this node (dropping its future).
    pub fn abort(&self, id: TaskId) {
        let task = {
            let shared = self.shared();
            let mut w = shared.world();
            match w.tasks.get(&id) {
                Some(t) if t.node == self.node && t.incarnation == self.incarnation => w.remove_task(id),
                _ => None,
            }
        };
        drop(task);
    }

    /// Sends a datagram (see the network fault model).
    pub fn send(&self, to: NodeId, payload: Bytes) {
        let shared = self.shared();
        let mut w = shared.world();
        if !w.alive(self.node, self.incarnation) || !w.nodes.contains_key(&to) {
            return;
        }
        let now = w.now;
        let from = self.node;
        w.stats.packets_sent += 1;
        let d = digest(&payload);
        if payload.len() > MAX_DATAGRAM_BYTES {
            w.stats.packets_dropped += 1;
            w.trace.record(now, Some(from), "packet-drop", d, || format!("drop {from}->{to} (oversize)"));
            return;
        }
        match w.net.route(now, from, to) {
            Route::Blocked | Route::Lost => {
                w.stats.packets_dropped += 1;
                w.trace
                    .record(now, Some(from), "packet-drop", d, || format!("drop {from}->{to} (lost or partitioned)"));
            }
            Route::Deliver { at, duplicate_at } => {
                w.trace
                    .record(now, Some(from), "packet-send", d, || format!("send {from}->{to} {} bytes", payload.len()));
                if let Some(dup) = duplicate_at {
                    w.events.push(dup, Event::Packet { from, to, payload: payload.clone(), digest: d });
                }
                w.events.push(at, Event::Packet { from, to, payload, digest: d });
            }
        }
    }

    /// Takes the next datagram from the inbox, or registers `cx`'s waker.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<(NodeId, Bytes)> {
        let shared = self.shared();
        let mut w = shared.world();
        if !w.alive(self.node, self.incarnation) {
            return Poll::Pending;
        }
        let node = w.nodes.get_mut(&self.node).expect("alive");
        match node.inbox.pop_front() {
            Some(m) => Poll::Ready(m),
            None => {
                if !node.recv_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    node.recv_wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// Whether a code-level fault point fires (see `kaelix_core::buggify!`).
    /// Each site is enabled in a seed with probability ¼ the first time it is
    /// reached, and then fires on ¼ of its calls; never in the liveness
    /// phase or when the profile turned buggify off.
    pub fn buggify(&self, site: &'static str) -> bool {
        let shared = self.shared();
        let mut w = shared.world();
        if !w.buggify_enabled {
            return false;
        }
        let enabled = match w.buggify_sites.get(site) {
            Some(&e) => e,
            None => {
                let mut site_rng = rng::derive(w.seed, digest(site.as_bytes()));
                let e = site_rng.random_bool(0.25);
                w.buggify_sites.insert(site, e);
                e
            }
        };
        let fire = enabled && w.rng.random_bool(0.25);
        if fire {
            w.stats.buggify_fired += 1;
            let now = w.now;
            w.trace.record(now, Some(self.node), "buggify", digest(site.as_bytes()), || {
                format!("buggify fired at {site}")
            });
        }
        fire
    }

    /// A fresh generator for this node, derived from the seed, the node and
    /// how many generators it has asked for: reproducible and independent.
    pub fn rng(&self) -> DetRng {
        let shared = self.shared();
        let mut w = shared.world();
        let seed = w.seed;
        let node = w.nodes.get_mut(&self.node).expect("known node");
        node.rng_streams += 1;
        rng::derive(seed, (self.node.0 << 40) ^ (self.incarnation << 20) ^ node.rng_streams)
    }

    /// Starts a disk operation; its result is fetched with [`Self::poll_op`].
    pub fn disk(&self, request: DiskRequest) -> OpId {
        let shared = self.shared();
        let mut w = shared.world();
        let op = w.new_op(self.node, self.incarnation);
        if !w.alive(self.node, self.incarnation) {
            return op; // never completes; the caller is being dropped
        }
        w.stats.disk_ops += 1;
        let now = w.now;
        let node = w.nodes.get_mut(&self.node).expect("alive");
        let disk = &mut node.disk;
        let (kind, result, sync, what): (OpKind, Option<OpResult>, PendingSync, &str) = match &request {
            DiskRequest::Open(name) => {
                let r = kaelix_core::runtime::validate_file_name(name).map(|()| disk.open(name));
                (OpKind::Read, Some(OpResult::Unit(r)), None, "open")
            }
            DiskRequest::Remove(name) => (OpKind::Write, Some(OpResult::Unit(disk.remove(name))), None, "remove"),
            DiskRequest::List => (OpKind::Read, Some(OpResult::Names(Ok(disk.list()))), None, "list"),
            DiskRequest::Read { name, offset, len } => {
                (OpKind::Read, Some(OpResult::Data(disk.read(name, *offset, *len))), None, "read")
            }
            DiskRequest::Write { name, offset, data } => {
                let at = offset.unwrap_or_else(|| disk.len(name));
                let r = disk.write(name, at, data.clone()).map(|()| at);
                (OpKind::Write, Some(OpResult::Offset(r)), None, "write")
            }
            DiskRequest::Truncate { name, len } => {
                (OpKind::Write, Some(OpResult::Unit(disk.truncate(name, *len))), None, "truncate")
            }
            DiskRequest::Sync(name) => {
                if disk.exists(name) {
                    (OpKind::Sync, None, Some((name.clone(), disk.sync_barrier())), "sync")
                } else {
                    (OpKind::Sync, Some(OpResult::Unit(Err(StorageError::NotFound(name.to_string())))), None, "sync")
                }
            }
        };
        let latency: Duration = disk.latency(kind);
        w.ops.get_mut(&op).expect("just created").result = result;
        w.events.push(now + latency, Event::OpDone { op, sync });
        let node = self.node;
        w.trace.record(now, Some(node), "disk-op", op.0.seq(), || format!("disk {what} (op {})", op.0.seq()));
        op
    }

    /// The volatile length of a file on this node's disk.
    pub fn file_len(&self, name: &str) -> u64 {
        self.shared().world().nodes[&self.node].disk.len(name)
    }

    /// Polls an operation started with [`Self::disk`] or [`Self::connect`].
    pub fn poll_op(&self, op: OpId, cx: &mut Context<'_>) -> Poll<OpResult> {
        let shared = self.shared();
        let mut w = shared.world();
        let Some(slot) = w.ops.get_mut(&op) else { return Poll::Pending };
        // The result is computed at issue for most ops but only handed out
        // once the completion event (the op's latency) has run.
        if slot.done {
            let slot = w.ops.remove(&op).expect("present");
            return Poll::Ready(slot.result.expect("checked"));
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Forgets an operation whose future was dropped.
    pub fn drop_op(&self, op: OpId) {
        self.shared().world().ops.remove(&op);
    }

    /// Starts accepting client streams on this node.
    pub fn listen(&self) -> Result<(), NetError> {
        let shared = self.shared();
        let mut w = shared.world();
        if !w.alive(self.node, self.incarnation) {
            return Err(NetError::Refused(self.node));
        }
        let node = w.nodes.get_mut(&self.node).expect("known node");
        if node.listening {
            return Err(NetError::AlreadyListening);
        }
        node.listening = true;
        Ok(())
    }

    /// Stops accepting client streams (the listener was dropped), as closing
    /// a listening socket does: later connects are refused and streams not
    /// yet accepted are reset. Ignored from a dead incarnation.
    pub fn unlisten(&self) {
        let shared = self.shared();
        let mut w = shared.world();
        if !w.alive(self.node, self.incarnation) {
            return;
        }
        let node = w.nodes.get_mut(&self.node).expect("alive");
        node.listening = false;
        node.accept_waker = None;
        let pending: Vec<ConnId> = node.accept_queue.drain(..).collect();
        for c in pending {
            w.break_conn(c);
        }
    }

    /// Takes the next accepted connection, or registers the waker.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<ConnId> {
        let shared = self.shared();
        let mut w = shared.world();
        if !w.alive(self.node, self.incarnation) {
            return Poll::Pending;
        }
        let node = w.nodes.get_mut(&self.node).expect("alive");
        match node.accept_queue.pop_front() {
            Some(c) => Poll::Ready(c),
            None => {
                node.accept_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Starts connecting to `server`'s client listener; poll with [`Self::poll_op`].
    pub fn connect(&self, server: NodeId) -> OpId {
        let shared = self.shared();
        let mut w = shared.world();
        let op = w.new_op(self.node, self.incarnation);
        if !w.alive(self.node, self.incarnation) || !w.nodes.contains_key(&server) {
            let slot = w.ops.get_mut(&op).expect("just created");
            slot.result = Some(OpResult::Connected(Err(NetError::Refused(server))));
            slot.done = true;
            return op;
        }
        let conn = ConnId(w.next_conn);
        w.next_conn += 1;
        let now = w.now;
        w.conns.insert(
            conn,
            Conn {
                nodes: [self.node, server],
                incarnations: [self.incarnation, 0],
                inbox: [VecDeque::new(), VecDeque::new()],
                eof: [false, false],
                wakers: [None, None],
                last_arrival: [now, now],
                broken: false,
            },
        );
        // A handshake is a round trip.
        let rtt = w.net.stream_delay(self.node, server) + w.net.stream_delay(server, self.node);
        w.events.push(now + rtt, Event::Connect { op, conn });
        op
    }

    /// Which node is at the other end of `conn` from `end`.
    pub fn conn_peer(&self, conn: ConnId, end: End) -> Option<NodeId> {
        self.shared().world().conns.get(&conn).map(|c| c.nodes[end.other() as usize])
    }

    /// Sends a frame (or end-of-stream with `None`) from `end` of `conn`.
    pub fn stream_send(&self, conn: ConnId, end: End, frame: Option<Bytes>) -> Result<(), NetError> {
        let shared = self.shared();
        let mut w = shared.world();
        if let Some(f) = &frame
            && f.len() > MAX_FRAME_BYTES
        {
            return Err(NetError::FrameTooLarge { len: f.len(), max: MAX_FRAME_BYTES });
        }
        let now = w.now;
        let Some(c) = w.conns.get(&conn) else { return Err(NetError::Reset) };
        if c.broken || !w.alive(self.node, self.incarnation) {
            return Err(NetError::Reset);
        }
        let (src, dst) = (c.nodes[end as usize], c.nodes[end.other() as usize]);
        let delay = w.net.stream_delay(src, dst);
        let c = w.conns.get_mut(&conn).expect("checked");
        // In-order delivery: never earlier than the previous frame.
        let at = (now + delay).max(c.last_arrival[end.other() as usize]);
        c.last_arrival[end.other() as usize] = at;
        w.events.push(at, Event::Frame { conn, to: end.other(), frame });
        Ok(())
    }

    /// Receives the next frame at `end` of `conn`.
    pub fn stream_poll_recv(
        &self,
        conn: ConnId,
        end: End,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, NetError>> {
        let shared = self.shared();
        let mut w = shared.world();
        let Some(c) = w.conns.get_mut(&conn) else { return Poll::Ready(Err(NetError::Reset)) };
        if let Some(f) = c.inbox[end as usize].pop_front() {
            return Poll::Ready(Ok(Some(f)));
        }
        if c.broken {
            return Poll::Ready(Err(NetError::Reset));
        }
        if c.eof[end as usize] {
            return Poll::Ready(Ok(None));
        }
        c.wakers[end as usize] = Some(cx.waker().clone());
        Poll::Pending
    }
}

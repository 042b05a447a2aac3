//! The scheduler: tasks, the ready set, wakers and [`Sim::step`].
//!
//! A task belongs to one incarnation of one node. Waking it pushes its id
//! onto the simulation's woken list (no locks: see [`super`]); a step moves
//! woken tasks into the ready set and polls one of them chosen by the run's
//! generator, or, when none is ready, pops the earliest event, advances
//! virtual time to it and dispatches it to the part of the world it
//! concerns. Tasks of a paused node are parked until it resumes.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use kaelix_core::rng::RngExt;
use kaelix_core::runtime::Priority;
use kaelix_core::{Instant, NodeId};

use super::handle::NodeHandle;
use super::nodes::NodeStatus;
use super::{CURRENT, Event, Sim, TaskId, World};

/// A boxed task future.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

pub(super) struct Task {
    pub(super) node: NodeId,
    pub(super) incarnation: u64,
    pub(super) priority: Priority,
    pub(super) name: &'static str,
    pub(super) future: Option<BoxFuture>,
    pub(super) queued: bool,
    /// Built once per task: polls reuse it.
    pub(super) waker: Option<Waker>,
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

impl Sim {
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
}

/// Tasks an event killed: dropped by the caller outside the world borrow.
pub(super) type Dropped = Vec<Task>;

impl World {
    fn collect_wakes(&mut self, woken: &RefCell<Vec<TaskId>>) {
        let mut woken = woken.borrow_mut();
        // Drained in place: the buffer keeps its capacity across steps.
        for id in woken.drain(..) {
            self.make_ready(id);
        }
    }

    pub(super) fn make_ready(&mut self, id: TaskId) {
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

    fn apply_event(&mut self, event: Event) -> Dropped {
        let now = self.now;
        match event {
            Event::Timer(id) => {
                if let Some((_, w)) = self.timers.remove(&id) {
                    self.trace.record(now, None, "timer", id.0.seq(), || format!("timer {} fires", id.0.seq()));
                    w.wake();
                }
            }
            Event::Packet { from, to, payload, digest: d, sent } => self.deliver_packet(from, to, payload, d, sent),
            Event::OpDone { op, sync } => self.complete_op(op, sync),
            Event::Frame { conn, to, frame, sent } => self.deliver_frame(conn, to, frame, sent),
            Event::Connect { op, conn } => self.finish_connect(op, conn),
            Event::Fault(f) => return self.apply_fault(f),
            Event::Liveness => return self.start_liveness(),
        }
        Vec::new()
    }
}

impl NodeHandle {
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
}

//! Nodes as restartable units.
//!
//! A node is added with a [`NodeSpec`]; its clock and disk are drawn from
//! the seed and the node id, and its init function builds its tasks at boot
//! and again at every restart. Each boot is a new incarnation: calls and
//! completions from an older one are ignored. This module applies the
//! fault schedule to nodes — crash (tasks, ops, inbox and streams dropped;
//! unsynced writes lost or torn), restart with or without a wiped disk,
//! pause / resume, partitions, clock steps and drift, bit rot — and the
//! liveness phase that stops faults and brings every node back, but those
//! retired for good ([`Sim::retire_at_liveness`]), which it crashes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;
use kaelix_core::rng::{self, RngExt};
use kaelix_core::runtime::Priority;
use kaelix_core::{Instant, NodeId, WallTime};

use crate::clock::NodeClock;
use crate::disk::{DiskConfig, SimDisk};
use crate::faults::Fault;
use crate::trace::{EventInfo, digest};

use super::byte_streams::{EPHEMERAL_FIRST, TcpListener};
use super::handle::NodeHandle;
use super::scheduler::{BoxFuture, Dropped};
use super::streams::ConnId;
use super::{Event, Sim, TaskId, TimerId, World};

/// Builds a node's root task from a handle; run at boot and at every restart.
pub type NodeInit = Arc<dyn Fn(NodeHandle) -> BoxFuture + Send + Sync>;

/// The Unix time at which every simulated wall clock starts (before skew):
/// 2026-01-01T00:00:00Z.
pub const SIM_EPOCH: WallTime = WallTime(1_767_225_600_000_000_000);

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

pub(super) struct Node {
    pub(super) kind: NodeKind,
    pub(super) name: String,
    pub(super) status: NodeStatus,
    pub(super) incarnation: u64,
    pub(super) clock: NodeClock,
    pub(super) disk: SimDisk,
    pub(super) init: NodeInit,
    pub(super) tasks: BTreeSet<TaskId>,
    pub(super) paused_ready: Vec<TaskId>,
    pub(super) inbox: VecDeque<(NodeId, Bytes)>,
    pub(super) recv_wakers: Vec<Waker>,
    pub(super) listening: bool,
    pub(super) accept_queue: VecDeque<ConnId>,
    pub(super) accept_waker: Option<Waker>,
    pub(super) rng_streams: u64,
    /// Byte-stream listeners by port (see `byte_streams`).
    pub(super) tcp_listeners: BTreeMap<u16, TcpListener>,
    /// Where the search for a free ephemeral port starts.
    pub(super) next_ephemeral: u16,
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

impl Sim {
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
        let now = w.now;
        let name = spec.name.clone();
        w.trace.note(
            now,
            Some(id),
            "node",
            || format!("node {id} added: {name} ({})", if is_server { "server" } else { "client" }),
            || EventInfo::Node { name: spec.name.clone(), client: !is_server },
        );
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
                tcp_listeners: BTreeMap::new(),
                next_ephemeral: EPHEMERAL_FIRST,
            },
        );
        drop(w);
        self.boot(id);
    }

    pub(super) fn boot(&self, id: NodeId) {
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
    /// Under [`crate::shrink::with_schedule`] the fault is recorded and may
    /// be replaced by a given schedule.
    pub fn schedule_fault(&self, at: Instant, fault: Fault) {
        for (at, fault) in crate::shrink::intercept(at, fault) {
            self.world().events.push(at, Event::Fault(fault));
        }
    }

    /// Schedules the start of the liveness phase at `at` (see the faults
    /// module): faults stop, partitions heal, nodes come back.
    pub fn schedule_liveness(&self, at: Instant) {
        self.world().events.push(at, Event::Liveness);
    }

    /// Marks `id` as lost for good: when the liveness phase starts it is
    /// crashed (if up) and, unlike every other node, never restarted; a
    /// scheduled restart of it after that is ignored. The failure a
    /// membership protocol must *complete* on: a member that never comes
    /// back has to be declared dead by everyone.
    pub fn retire_at_liveness(&self, id: NodeId) {
        let mut w = self.world();
        assert!(w.nodes.contains_key(&id), "retiring unknown node {id}");
        assert!(!w.liveness, "the liveness phase has started already");
        w.retired.insert(id);
    }

    /// Applies `fault` now.
    pub fn apply_fault(&self, fault: Fault) {
        let _entered = self.enter();
        let dropped = self.world().apply_fault(fault);
        self.finish_event(dropped);
    }

    /// After an event: drops the tasks it killed and boots the nodes it
    /// restarted.
    pub(super) fn finish_event(&self, dropped: Dropped) {
        // Futures are dropped outside the world borrow: their destructors
        // may call back into the world.
        drop(dropped);
        let restart: Vec<NodeId> = std::mem::take(&mut self.world().boots);
        for id in restart {
            self.boot(id);
        }
    }

    /// A node's status.
    pub fn status(&self, id: NodeId) -> NodeStatus {
        self.world().nodes[&id].status
    }

    /// A node's current incarnation (bumped by every restart).
    pub fn incarnation(&self, id: NodeId) -> u64 {
        self.world().nodes[&id].incarnation
    }

    /// Every node and its status.
    pub fn nodes(&self) -> Vec<(NodeId, NodeKind, NodeStatus)> {
        self.world().nodes.iter().map(|(id, n)| (*id, n.kind, n.status)).collect()
    }
}

impl World {
    pub(super) fn alive(&self, node: NodeId, incarnation: u64) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.incarnation == incarnation && n.status != NodeStatus::Down)
    }

    pub(super) fn local_now(&self, node: NodeId) -> Instant {
        self.nodes[&node].clock.local_now(self.now)
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
        let tcp_listeners = std::mem::take(&mut node.tcp_listeners);
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
        for l in tcp_listeners.into_values() {
            self.close_tcp_listener(l);
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

    pub(super) fn apply_fault(&mut self, fault: Fault) -> Dropped {
        let now = self.now;
        if self.liveness && !matches!(fault, Fault::Restart { .. } | Fault::Resume(_) | Fault::Heal) {
            // Faults stop in the liveness phase.
            return Vec::new();
        }
        self.stats.faults += 1;
        let d = digest(fault.to_string().as_bytes());
        self.trace.record_with(now, None, "fault", d, || format!("FAULT {fault}"), || EventInfo::Fault(fault.clone()));
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
                let retired = self.liveness && self.retired.contains(&node);
                let n = self.nodes.get_mut(&node).expect("known node");
                if n.status == NodeStatus::Down && !retired {
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

    pub(super) fn start_liveness(&mut self) -> Dropped {
        let now = self.now;
        self.liveness = true;
        self.buggify_enabled = false;
        self.net.heal();
        self.net.set_default_link(self.calm_link);
        let calm_disk = self.calm_disk;
        let mut dropped = Vec::new();
        for id in self.retired.clone() {
            dropped.extend(self.crash_node(id));
        }
        for (id, n) in self.nodes.iter_mut() {
            if self.retired.contains(id) {
                continue;
            }
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
        dropped
    }
}

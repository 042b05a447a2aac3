//! Disk operations. A request is applied to the node's simulated disk at
//! issue (syncs take their barrier then), and its result waits in an op
//! slot until the completion event — the disk's latency later — marks it
//! done and wakes the caller; a sync completes at that event. Op slots also
//! carry connects (see `streams`). A completion for a crashed incarnation
//! is discarded.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use kaelix_core::NodeId;
use kaelix_core::runtime::{NetError, StorageError};
use kaelix_core::time::Duration;

use crate::disk::OpKind;

use super::handle::NodeHandle;
use super::streams::ConnId;
use super::{Event, OpId, World};

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
pub(super) type PendingSync = Option<(Arc<str>, u64)>;

pub(super) struct OpSlot {
    pub(super) node: NodeId,
    pub(super) incarnation: u64,
    pub(super) result: Option<OpResult>,
    /// Set when the completion event has run (latency has passed).
    pub(super) done: bool,
    pub(super) waker: Option<Waker>,
}

impl World {
    /// Applies an op's completion event: finishes a sync, marks the op done
    /// and wakes its caller.
    pub(super) fn complete_op(&mut self, op: OpId, sync: PendingSync) {
        let now = self.now;
        let Some(slot) = self.ops.get_mut(&op) else { return };
        let (node, inc) = (slot.node, slot.incarnation);
        if !self.alive(node, inc) {
            self.ops.remove(&op);
            return;
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

    pub(super) fn new_op(&mut self, node: NodeId, incarnation: u64) -> OpId {
        self.ops.insert(OpSlot { node, incarnation, result: None, done: false, waker: None })
    }
}

impl NodeHandle {
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
}

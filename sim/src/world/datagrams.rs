//! Datagrams between nodes: a send is routed through the network fault
//! model (loss, duplication, latency, partitions) and becomes a packet
//! event; delivery puts it in the receiver's inbox — unless the link was cut
//! meanwhile, the receiver is down or its inbox is full — and wakes the
//! receivers.

use std::task::{Context, Poll};

use bytes::Bytes;
use kaelix_core::runtime::MAX_DATAGRAM_BYTES;
use kaelix_core::{Instant, NodeId};

use crate::net::Route;
use crate::trace::{EventInfo, digest};

use super::handle::NodeHandle;
use super::nodes::NodeStatus;
use super::{Event, World};

/// Most datagrams a node's inbox holds; more are dropped (a full socket
/// buffer).
pub const INBOX_CAPACITY: usize = 65_536;

impl World {
    /// Applies a packet event: delivers the datagram or drops it.
    pub(super) fn deliver_packet(&mut self, from: NodeId, to: NodeId, payload: Bytes, d: u64, sent: Instant) {
        let now = self.now;
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
            self.trace.record_with(
                now,
                Some(to),
                "packet-drop",
                d,
                || format!("drop {from}->{to} ({why})"),
                || EventInfo::Message { from, to, sent_at: sent, delivered: false },
            );
        } else {
            self.stats.packets_delivered += 1;
            node.inbox.push_back((from, payload));
            for w in node.recv_wakers.drain(..) {
                w.wake();
            }
            self.trace.record_with(
                now,
                Some(to),
                "packet-deliver",
                d,
                || format!("deliver {from}->{to}"),
                || EventInfo::Message { from, to, sent_at: sent, delivered: true },
            );
        }
    }
}

impl NodeHandle {
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
            w.trace.record_with(
                now,
                Some(from),
                "packet-drop",
                d,
                || format!("drop {from}->{to} (oversize)"),
                || EventInfo::Message { from, to, sent_at: now, delivered: false },
            );
            return;
        }
        match w.net.route(now, from, to) {
            Route::Blocked | Route::Lost => {
                w.stats.packets_dropped += 1;
                w.trace.record_with(
                    now,
                    Some(from),
                    "packet-drop",
                    d,
                    || format!("drop {from}->{to} (lost or partitioned)"),
                    || EventInfo::Message { from, to, sent_at: now, delivered: false },
                );
            }
            Route::Deliver { at, duplicate_at } => {
                w.trace
                    .record(now, Some(from), "packet-send", d, || format!("send {from}->{to} {} bytes", payload.len()));
                if let Some(dup) = duplicate_at {
                    w.events.push(dup, Event::Packet { from, to, payload: payload.clone(), digest: d, sent: now });
                }
                w.events.push(at, Event::Packet { from, to, payload, digest: d, sent: now });
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
}

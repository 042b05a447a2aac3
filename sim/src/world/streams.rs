//! Client streams: ordered, reliable connections between a client and a
//! listening node. A connect takes a round trip and is refused if the
//! server is down, not listening or cut off; frames arrive in order, each
//! after the link's delay. A partition, a crash of either end, or the
//! listener closing before the stream was accepted breaks it: both ends
//! see a reset and frames still in flight are dropped.
//!
//! Byte streams (`byte_streams`) are connections of this same kind: they
//! share the handshake, the in-order delivery, and the crash and partition
//! rules; only addressing, segmentation and close differ.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use kaelix_core::runtime::{MAX_FRAME_BYTES, NetError};
use kaelix_core::{Instant, NodeId};

use crate::trace::{EventInfo, digest};

use super::byte_streams::TcpEnds;
use super::disk_ops::OpResult;
use super::handle::NodeHandle;
use super::nodes::NodeStatus;
use super::{Event, OpId, World};

/// Identifies a client stream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub(super) u64);

/// Which end of a connection: the connecting client or the accepting node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    /// The side that called connect.
    Connector = 0,
    /// The side that accepted.
    Acceptor = 1,
}

impl End {
    pub(super) fn other(self) -> End {
        match self {
            End::Connector => End::Acceptor,
            End::Acceptor => End::Connector,
        }
    }
}

pub(super) struct Conn {
    pub(super) nodes: [NodeId; 2],
    pub(super) incarnations: [u64; 2],
    pub(super) inbox: [VecDeque<Bytes>; 2],
    pub(super) eof: [bool; 2],
    pub(super) wakers: [Option<Waker>; 2],
    pub(super) last_arrival: [Instant; 2],
    pub(super) broken: bool,
    /// Set for a byte stream (see `byte_streams`); `None` for a frame stream.
    pub(super) tcp: Option<TcpEnds>,
}

impl World {
    pub(super) fn break_conn(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(&id)
            && !c.broken
        {
            c.broken = true;
            for w in c.wakers.iter_mut().filter_map(Option::take) {
                w.wake();
            }
        }
    }

    pub(super) fn deliver_frame(&mut self, id: ConnId, to: End, frame: Option<Bytes>, sent: Instant) {
        let now = self.now;
        let Some(c) = self.conns.get(&id) else { return };
        if c.broken {
            return;
        }
        let (src, dst) = (c.nodes[to.other() as usize], c.nodes[to as usize]);
        if self.net.is_blocked(src, dst) {
            self.break_conn(id);
            self.trace.record_with(
                now,
                Some(dst),
                "stream-break",
                id.0,
                || format!("stream {} broken by partition", id.0),
                || EventInfo::Message { from: src, to: dst, sent_at: sent, delivered: false },
            );
            return;
        }
        if frame.is_some() && c.tcp.as_ref().is_some_and(|t| t.closed[to as usize]) {
            // Data for a closed socket: its kernel answers with a reset.
            self.break_conn(id);
            self.trace.record_with(
                now,
                Some(dst),
                "stream-break",
                id.0,
                || format!("stream {} reset: data after close", id.0),
                || EventInfo::Message { from: src, to: dst, sent_at: sent, delivered: false },
            );
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
        self.trace.record_with(
            now,
            Some(dst),
            "stream-frame",
            d ^ id.0,
            || format!("stream {} frame {src}->{dst}", id.0),
            || EventInfo::Message { from: src, to: dst, sent_at: sent, delivered: true },
        );
    }

    pub(super) fn finish_connect(&mut self, op: OpId, conn: ConnId) {
        let now = self.now;
        let Some(slot) = self.ops.get(&op) else {
            self.conns.remove(&conn);
            return;
        };
        let client = slot.node;
        let c = self.conns.get(&conn).expect("created with the op");
        let server = c.nodes[End::Acceptor as usize];
        let tcp_to = c.tcp.as_ref().map(|t| t.addrs[End::Acceptor as usize]);
        let reachable = !self.net.is_blocked(client, server) && !self.net.is_blocked(server, client);
        let target = &self.nodes[&server];
        let ok = reachable
            && target.status != NodeStatus::Down
            && self.alive(client, slot.incarnation)
            && match tcp_to {
                None => target.listening,
                Some(to) => target.tcp_listener_for(to).is_some(),
            };
        let result = if ok {
            let inc = target.incarnation;
            let c = self.conns.get_mut(&conn).expect("exists");
            c.incarnations[End::Acceptor as usize] = inc;
            let t = self.nodes.get_mut(&server).expect("exists");
            let (queue, waker) = match tcp_to {
                None => (&mut t.accept_queue, &mut t.accept_waker),
                Some(to) => {
                    let l = t.tcp_listener_for_mut(to).expect("checked");
                    (&mut l.accept_queue, &mut l.accept_waker)
                }
            };
            queue.push_back(conn);
            if let Some(w) = waker.take() {
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

    /// Completes connect `op` at once with `error`.
    pub(super) fn fail_connect(&mut self, op: OpId, error: NetError) -> OpId {
        let slot = self.ops.get_mut(&op).expect("just created");
        slot.result = Some(OpResult::Connected(Err(error)));
        slot.done = true;
        op
    }

    /// Opens a connection from `client` (incarnation `incarnation`) to
    /// `server` for connect `op` (a byte stream if `tcp` is set); the
    /// handshake completes a round trip later.
    pub(super) fn start_connect(
        &mut self,
        op: OpId,
        client: NodeId,
        incarnation: u64,
        server: NodeId,
        tcp: Option<TcpEnds>,
    ) -> OpId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let now = self.now;
        self.conns.insert(
            conn,
            Conn {
                nodes: [client, server],
                incarnations: [incarnation, 0],
                inbox: [VecDeque::new(), VecDeque::new()],
                eof: [false, false],
                wakers: [None, None],
                last_arrival: [now, now],
                broken: false,
                tcp,
            },
        );
        // A handshake is a round trip.
        let rtt = self.net.stream_delay(client, server) + self.net.stream_delay(server, client);
        self.events.push(now + rtt, Event::Connect { op, conn });
        op
    }

    /// Schedules `frames` (`None`: end of stream) from `end` of `conn`, in
    /// order, all after one draw of the link's delay and never before what
    /// was sent earlier. The caller checked that the stream is open.
    pub(super) fn push_frames(&mut self, conn: ConnId, end: End, frames: impl IntoIterator<Item = Option<Bytes>>) {
        let now = self.now;
        let c = &self.conns[&conn];
        let (src, dst) = (c.nodes[end as usize], c.nodes[end.other() as usize]);
        let delay = self.net.stream_delay(src, dst);
        let c = self.conns.get_mut(&conn).expect("checked");
        // In-order delivery: never earlier than the previous frame.
        let at = (now + delay).max(c.last_arrival[end.other() as usize]);
        c.last_arrival[end.other() as usize] = at;
        for frame in frames {
            self.events.push(at, Event::Frame { conn, to: end.other(), frame, sent: now });
        }
    }

    /// The next frame (or chunk) at `end` of `conn`, or registers the waker.
    pub(super) fn poll_inbox(
        &mut self,
        conn: ConnId,
        end: End,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, NetError>> {
        let Some(c) = self.conns.get_mut(&conn) else { return Poll::Ready(Err(NetError::Reset)) };
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

    /// Breaks client streams whose link is now cut.
    pub(super) fn break_partitioned_conns(&mut self) {
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
}

impl NodeHandle {
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
            return w.fail_connect(op, NetError::Refused(server));
        }
        w.start_connect(op, self.node, self.incarnation, server, None)
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
        let Some(c) = w.conns.get(&conn) else { return Err(NetError::Reset) };
        if c.broken || !w.alive(self.node, self.incarnation) {
            return Err(NetError::Reset);
        }
        w.push_frames(conn, end, [frame]);
        Ok(())
    }

    /// Receives the next frame at `end` of `conn`.
    pub fn stream_poll_recv(
        &self,
        conn: ConnId,
        end: End,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, NetError>> {
        self.shared().world().poll_inbox(conn, end, cx)
    }
}

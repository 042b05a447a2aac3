//! Byte streams: ordered, reliable byte streams between socket addresses
//! (the contract's `ByteNetwork`), as TCP carries them. They are
//! connections of the same kind as client streams (`streams`): the same
//! handshake (a round trip, refused if the target is down, does not listen
//! there or is cut off), the same in-order delivery after the link's delay,
//! and the same breaks (a crash of either node, a partition, or the
//! listener closing before the stream was accepted resets both ends).
//!
//! # Address plan
//!
//! Node `NodeId(n)` has the IPv4 address `10.x.y.z`, where `x.y.z` are the
//! low 24 bits of `n` (big-endian): `NodeId(1)` is `10.0.0.1`, `NodeId(300)`
//! is `10.0.1.44`. [`node_addr`] builds a node's socket address,
//! [`node_ip`] its IP and [`addr_node`] maps an address back. Ids are meant
//! to stay below 2^24; above, nodes share addresses, and an address reaches
//! the node whose id is its 24 bits. Connecting to `127.0.0.1` (or any
//! `127.x.y.z`), or to `0.0.0.0` as Linux allows, reaches the node itself;
//! `10.x.y.z` reaches that node (itself included); any other address
//! (IPv6 included) is [`NetError::AddrNotAvailable`].
//!
//! # Binding
//!
//! A node binds `0.0.0.0` (every address of the node), `127.0.0.1` (reached
//! only from the node itself) or its own `10.x.y.z` (reached from anywhere);
//! anything else is [`NetError::AddrNotAvailable`]. A port is bound at most
//! once per node whatever the IP — stricter than Linux, which lets
//! `127.0.0.1:p` and `10.0.0.1:p` coexist: a second bind is
//! [`NetError::AddrInUse`]. Port 0 takes the next free port of the node's
//! ephemeral range 49152-65535, counting up from the last one handed out
//! (the connecting ends of streams draw their ports from the same counter).
//! A node has any number of listeners, besides its one client-stream
//! listener. A dropped listener frees its port at once (no `TIME_WAIT`); a
//! crash drops every listener of the node.
//!
//! # Segmentation
//!
//! Bytes arrive in order, but a write is not necessarily read in one piece:
//! a quarter of the writes of two bytes or more are cut at random points
//! into 2-4 chunks, each delivered as its own event (so a reader can be
//! polled between them). The cuts are drawn from a generator of their own,
//! derived from the seed, so they are deterministic per seed and never
//! shift the draws of the rest of the run. Chunks are not coalesced: a read
//! returns one chunk.
//!
//! # Close
//!
//! `close` shuts both directions, like the real runtime's: the peer reads
//! end of stream after the bytes written before; the closing end reads end
//! of stream from then on, and its writes fail. Bytes that reach a closed
//! end reset the stream, as a closed socket's kernel answers data with a
//! reset: the writer's later calls fail with [`NetError::Reset`]. Dropping
//! the last handle of an end closes it. Once both ends are dropped the
//! connection is forgotten.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use kaelix_core::NodeId;
use kaelix_core::rng::RngExt;
use kaelix_core::runtime::NetError;

use super::handle::NodeHandle;
use super::nodes::Node;
use super::streams::{ConnId, End};
use super::{OpId, World};

/// The first port of the ephemeral range (the last is 65535).
pub(super) const EPHEMERAL_FIRST: u16 = 49152;

/// The IPv4 address of `node` (see the module docs: `10.x.y.z` from the
/// id's low 24 bits).
pub fn node_ip(node: NodeId) -> Ipv4Addr {
    let [_, _, _, _, _, x, y, z] = node.0.to_be_bytes();
    Ipv4Addr::new(10, x, y, z)
}

/// The socket address of `port` on `node`.
pub fn node_addr(node: NodeId, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(node_ip(node)), port)
}

/// The node an address of the plan belongs to: `10.x.y.z` is the node whose
/// id is `x.y.z`; any other address is `None` (loopback means "this node",
/// which only the caller knows).
pub fn addr_node(ip: IpAddr) -> Option<NodeId> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[0] == 10 => Some(NodeId(u64::from(u32::from(v4) & 0x00ff_ffff))),
        _ => None,
    }
}

/// Identifies a byte-stream listener of a node (its port and which binding
/// of that port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpListenerId {
    port: u16,
    id: u64,
}

/// A bound port of a node.
pub(super) struct TcpListener {
    id: u64,
    /// The IP as bound: unspecified, loopback or the node's own.
    ip: IpAddr,
    pub(super) accept_queue: VecDeque<ConnId>,
    pub(super) accept_waker: Option<Waker>,
}

/// What a byte stream adds to a connection.
pub(super) struct TcpEnds {
    /// Each end's own address, indexed by [`End`].
    pub(super) addrs: [SocketAddr; 2],
    /// Which ends have closed.
    pub(super) closed: [bool; 2],
    /// Which ends have no handle any more.
    released: [bool; 2],
}

impl Node {
    /// The listener a stream to `to` (an address of this node) reaches.
    pub(super) fn tcp_listener_for(&self, to: SocketAddr) -> Option<&TcpListener> {
        self.tcp_listeners.get(&to.port()).filter(|l| l.ip.is_unspecified() || l.ip == to.ip())
    }

    pub(super) fn tcp_listener_for_mut(&mut self, to: SocketAddr) -> Option<&mut TcpListener> {
        self.tcp_listeners.get_mut(&to.port()).filter(|l| l.ip.is_unspecified() || l.ip == to.ip())
    }

    /// The next ephemeral port no listener holds, counting up with
    /// wrap-around; `None` if listeners hold them all.
    fn ephemeral_port(&mut self) -> Option<u16> {
        let range = u32::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        for _ in 0..range {
            let port = self.next_ephemeral;
            self.next_ephemeral = if port == u16::MAX { EPHEMERAL_FIRST } else { port + 1 };
            if !self.tcp_listeners.contains_key(&port) {
                return Some(port);
            }
        }
        None
    }
}

impl World {
    /// Drops a listener: streams it had not accepted yet are reset.
    pub(super) fn close_tcp_listener(&mut self, listener: TcpListener) {
        for conn in listener.accept_queue {
            self.break_conn(conn);
            self.release_end(conn, End::Acceptor);
        }
    }

    /// `end` of `conn` has no handle any more; forgets the connection once
    /// neither has.
    fn release_end(&mut self, conn: ConnId, end: End) {
        if let Some(c) = self.conns.get_mut(&conn)
            && let Some(t) = &mut c.tcp
        {
            t.released[end as usize] = true;
            if t.released == [true, true] {
                self.conns.remove(&conn);
            }
        }
    }

    /// Cuts a write into the chunks it is delivered as (see the module docs).
    fn segment(&mut self, data: Bytes) -> Vec<Bytes> {
        let len = data.len();
        if len < 2 || !self.tcp_rng.random_ratio(1, 4) {
            return vec![data];
        }
        let pieces = self.tcp_rng.random_range(2..=4usize);
        let mut cuts: Vec<usize> = (1..pieces).map(|_| self.tcp_rng.random_range(1..len)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut chunks = Vec::with_capacity(cuts.len() + 1);
        let mut from = 0;
        for cut in cuts.into_iter().chain([len]) {
            chunks.push(data.slice(from..cut));
            from = cut;
        }
        chunks
    }

    /// Whether `end` of byte stream `conn` can still send, for a call of
    /// `node`'s incarnation `incarnation`.
    fn tcp_can_send(&self, conn: ConnId, end: End, node: NodeId, incarnation: u64) -> Result<(), NetError> {
        let Some(c) = self.conns.get(&conn) else { return Err(NetError::Reset) };
        let closed = c.tcp.as_ref().is_none_or(|t| t.closed[end as usize]);
        if c.broken || closed || !self.alive(node, incarnation) { Err(NetError::Reset) } else { Ok(()) }
    }
}

/// Where a connect to `to` from `from` goes: the node, and the address it is
/// reached at there.
fn resolve(from: NodeId, to: SocketAddr) -> Result<(NodeId, SocketAddr), NetError> {
    match to.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => Ok((from, SocketAddr::new(Ipv4Addr::LOCALHOST.into(), to.port()))),
        IpAddr::V4(ip) if ip.is_loopback() => Ok((from, to)),
        ip => addr_node(ip).map(|node| (node, to)).ok_or(NetError::AddrNotAvailable(to)),
    }
}

impl NodeHandle {
    /// Binds a byte-stream listener to `addr` (see the module docs for the
    /// addresses and ports allowed). Returns the listener and the address
    /// it is bound to (its port chosen if `addr`'s is 0).
    pub fn tcp_bind(&self, addr: SocketAddr) -> Result<(TcpListenerId, SocketAddr), NetError> {
        let shared = self.shared();
        let mut w = shared.world();
        if !w.alive(self.node, self.incarnation) {
            return Err(NetError::Refused(self.node));
        }
        let ip = addr.ip();
        let own = IpAddr::V4(node_ip(self.node));
        if !(ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) || ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == own) {
            return Err(NetError::AddrNotAvailable(addr));
        }
        let id = w.next_tcp_listener;
        let node = w.nodes.get_mut(&self.node).expect("alive");
        let port = match addr.port() {
            0 => node.ephemeral_port().ok_or(NetError::AddrInUse(addr))?,
            p if node.tcp_listeners.contains_key(&p) => return Err(NetError::AddrInUse(addr)),
            p => p,
        };
        node.tcp_listeners.insert(port, TcpListener { id, ip, accept_queue: VecDeque::new(), accept_waker: None });
        w.next_tcp_listener += 1;
        let now = w.now;
        let bound = SocketAddr::new(ip, port);
        w.trace.record(now, Some(self.node), "tcp-bind", u64::from(port), || format!("bind {bound}"));
        Ok((TcpListenerId { port, id }, bound))
    }

    /// Drops a listener: its port is free again, later connects to it are
    /// refused and the streams it had not accepted are reset. Ignored from
    /// a dead incarnation (a crash dropped it already).
    pub fn tcp_unbind(&self, listener: TcpListenerId) {
        let shared = self.shared();
        let mut w = shared.world();
        if !w.alive(self.node, self.incarnation) {
            return;
        }
        let node = w.nodes.get_mut(&self.node).expect("alive");
        if node.tcp_listeners.get(&listener.port).is_some_and(|l| l.id == listener.id) {
            let l = node.tcp_listeners.remove(&listener.port).expect("checked");
            w.close_tcp_listener(l);
        }
    }

    /// Takes the next stream `listener` accepted, or registers the waker.
    pub fn tcp_poll_accept(&self, listener: TcpListenerId, cx: &mut Context<'_>) -> Poll<ConnId> {
        let shared = self.shared();
        let mut w = shared.world();
        if !w.alive(self.node, self.incarnation) {
            return Poll::Pending;
        }
        let node = w.nodes.get_mut(&self.node).expect("alive");
        match node.tcp_listeners.get_mut(&listener.port) {
            Some(l) if l.id == listener.id => match l.accept_queue.pop_front() {
                Some(conn) => Poll::Ready(conn),
                None => {
                    l.accept_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
            _ => Poll::Pending,
        }
    }

    /// Starts connecting a byte stream to `addr`; poll with
    /// [`Self::poll_op`], which yields [`OpResult::Connected`](super::OpResult::Connected).
    pub fn tcp_connect(&self, addr: SocketAddr) -> OpId {
        let shared = self.shared();
        let mut w = shared.world();
        let op = w.new_op(self.node, self.incarnation);
        let (server, to) = match resolve(self.node, addr) {
            Ok(target) => target,
            Err(e) => return w.fail_connect(op, e),
        };
        if !w.alive(self.node, self.incarnation) || !w.nodes.contains_key(&server) {
            return w.fail_connect(op, NetError::Refused(server));
        }
        let Some(port) = w.nodes.get_mut(&self.node).expect("alive").ephemeral_port() else {
            return w.fail_connect(op, NetError::AddrNotAvailable(addr));
        };
        let local_ip = if to.ip().is_loopback() { to.ip() } else { IpAddr::V4(node_ip(self.node)) };
        let ends =
            TcpEnds { addrs: [SocketAddr::new(local_ip, port), to], closed: [false, false], released: [false, false] };
        w.start_connect(op, self.node, self.incarnation, server, Some(ends))
    }

    /// The addresses of byte stream `conn` seen from `end`: its own, then
    /// the peer's.
    pub fn tcp_addrs(&self, conn: ConnId, end: End) -> Option<(SocketAddr, SocketAddr)> {
        let shared = self.shared();
        let w = shared.world();
        let t = w.conns.get(&conn)?.tcp.as_ref()?;
        Some((t.addrs[end as usize], t.addrs[end.other() as usize]))
    }

    /// Writes `data` from `end` of byte stream `conn`, maybe cut into chunks
    /// (see the module docs).
    pub fn tcp_write(&self, conn: ConnId, end: End, data: Bytes) -> Result<(), NetError> {
        let shared = self.shared();
        let mut w = shared.world();
        w.tcp_can_send(conn, end, self.node, self.incarnation)?;
        if data.is_empty() {
            return Ok(());
        }
        let chunks = w.segment(data);
        w.push_frames(conn, end, chunks.into_iter().map(Some));
        Ok(())
    }

    /// The next chunk at `end` of byte stream `conn`: end of stream once
    /// this end closed.
    pub fn tcp_poll_read(&self, conn: ConnId, end: End, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, NetError>> {
        let shared = self.shared();
        let mut w = shared.world();
        if w.conns.get(&conn).and_then(|c| c.tcp.as_ref()).is_some_and(|t| t.closed[end as usize]) {
            return Poll::Ready(Ok(None));
        }
        w.poll_inbox(conn, end, cx)
    }

    /// Closes `end` of byte stream `conn`: the peer reads end of stream
    /// after what was written. Closing twice, or a broken stream, does
    /// nothing.
    pub fn tcp_close(&self, conn: ConnId, end: End) {
        let shared = self.shared();
        let mut w = shared.world();
        let open = w.tcp_can_send(conn, end, self.node, self.incarnation).is_ok();
        if let Some(t) = w.conns.get_mut(&conn).and_then(|c| c.tcp.as_mut()) {
            t.closed[end as usize] = true;
        }
        if open {
            w.push_frames(conn, end, [None]);
        }
    }

    /// The last handle of `end` of byte stream `conn` was dropped: closes
    /// it, and forgets the connection once both ends are gone. Does nothing
    /// outside the simulation (a handle dropped after the run).
    pub fn tcp_release(&self, conn: ConnId, end: End) {
        if self.try_shared().is_none() {
            return;
        }
        self.tcp_close(conn, end);
        self.shared().world().release_end(conn, end);
    }
}

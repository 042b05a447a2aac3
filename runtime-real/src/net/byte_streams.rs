//! Byte streams: raw TCP to and from socket addresses (the contract's
//! `ByteNetwork`), for servers speaking protocols others defined and their
//! clients. No hello, no framing: a listener accepts any connection (with
//! `TCP_NODELAY`), a read returns what one read syscall gave (at most
//! 64 KiB), and writes share the framed streams' ordered send queue
//! ([`TcpConn`]). `close` shuts both directions once the queued bytes are
//! written, so the peer reads end of stream behind them.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kaelix_core::NodeId;
use kaelix_core::runtime::{ByteListener, ByteStream, NetError};

use super::{READ_CHUNK, Socket, TcpConn, bind_listener, connect_socket, net_err, poll_accept_socket};
use crate::driver::Driver;

/// The node [`NetError::Refused`] names for a byte stream: the real runtime
/// maps no addresses to nodes.
pub const UNKNOWN_NODE: NodeId = NodeId(u64::MAX);

struct ByteConn {
    conn: TcpConn,
    peer: SocketAddr,
    /// The buffer reads land in before they are copied out at their size;
    /// its lock also keeps concurrent readers from interleaving.
    scratch: Mutex<Vec<u8>>,
}

/// One end of a TCP byte stream of the real runtime. Clones share the
/// socket; dropping the last one closes it.
#[derive(Clone)]
pub struct RealByteStream {
    conn: Arc<ByteConn>,
}

impl RealByteStream {
    fn new(socket: Socket<mio::net::TcpStream>, peer: SocketAddr) -> Self {
        RealByteStream {
            conn: Arc::new(ByteConn { conn: TcpConn::new(socket), peer, scratch: Mutex::new(Vec::new()) }),
        }
    }
}

impl std::fmt::Debug for RealByteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealByteStream").field("peer", &self.conn.peer).finish()
    }
}

impl ByteStream for RealByteStream {
    async fn write(&self, data: Bytes) -> Result<(), NetError> {
        self.conn.conn.write_all(&data).await
    }

    async fn read(&self) -> Result<Option<Bytes>, NetError> {
        let c = &self.conn;
        if c.conn.is_closed() {
            return Ok(None);
        }
        poll_fn(|cx| {
            let mut scratch = c.scratch.lock().expect("read buffer lock");
            scratch.resize(READ_CHUNK, 0);
            c.conn.poll_read(cx, &mut scratch).map_ok(|n| (n > 0).then(|| Bytes::copy_from_slice(&scratch[..n])))
        })
        .await
    }

    fn close(&self) {
        self.conn.conn.close();
    }

    fn peer_addr(&self) -> SocketAddr {
        self.conn.peer
    }
}

/// A TCP listener of the real runtime. Dropping it closes the socket:
/// connections not accepted yet are reset, later connects refused.
pub struct RealByteListener {
    socket: Socket<mio::net::TcpListener>,
    local: SocketAddr,
}

impl RealByteListener {
    /// Binds `addr` (port 0: a free port the kernel picks).
    pub(crate) fn bind(driver: &Arc<Driver>, addr: SocketAddr) -> Result<Self, NetError> {
        let bound = bind_listener(driver, addr).and_then(|socket| Ok((socket.io.local_addr()?, socket)));
        match bound {
            Ok((local, socket)) => Ok(RealByteListener { socket, local }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(NetError::AddrInUse(addr)),
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Err(NetError::AddrNotAvailable(addr)),
            Err(e) => Err(NetError::Io(format!("binding {addr}: {e}"))),
        }
    }
}

impl ByteListener for RealByteListener {
    type Stream = RealByteStream;

    async fn accept(&mut self) -> Result<RealByteStream, NetError> {
        let (socket, peer) = poll_fn(|cx| poll_accept_socket(&self.socket, cx)).await?;
        Ok(RealByteStream::new(socket, peer))
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Opens a TCP byte stream to `addr`. Nobody listening there is
/// [`NetError::Refused`] naming [`UNKNOWN_NODE`].
pub(crate) async fn connect_bytes(driver: &Arc<Driver>, addr: SocketAddr) -> Result<RealByteStream, NetError> {
    match connect_socket(driver, addr).await {
        Ok(socket) => Ok(RealByteStream::new(socket, addr)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Err(NetError::Refused(UNKNOWN_NODE)),
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Err(NetError::AddrNotAvailable(addr)),
        Err(e) => Err(net_err(e)),
    }
}

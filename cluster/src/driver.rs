//! Pieces every node driver shares: listening for clients before anything
//! else of a node starts, waiting for the next event of a main loop, and
//! accepting client streams (a writer and a reader task each).
//!
//! A node that cannot listen for clients must not start: as a member it
//! would vote and could lead, and then every client request to it — the
//! others only redirect to it — would go unanswered (a port another
//! process took while the node was down is the usual cause).
//!
//! A driver's main task owns its sans-IO core and waits on three sources:
//! its own input channel (client requests, write completions — polled
//! first, so local work never starves behind the network), the node's
//! datagrams, and the core's deadline. The order is part of the
//! simulator's determinism: the same inputs are always taken in the same
//! order.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;

use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::StreamExt;
use kaelix_core::NodeId;
use kaelix_core::runtime::{ClientNetwork, ClientStream, Listener, NetError, Network, Priority, Runtime};

/// Why a node did not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The node cannot listen for clients (see the module docs).
    #[error("{node} cannot listen for clients: {error}")]
    Listen {
        /// The node.
        node: NodeId,
        /// What listening answered.
        error: NetError,
    },
}

/// Opens `rt`'s client listener: the first step of a node's start.
pub fn listen<R: Runtime>(rt: &R) -> Result<<R as ClientNetwork>::Listener, StartError> {
    rt.listen().map_err(|error| StartError::Listen { node: rt.node_id(), error })
}

/// What woke a driver's main task.
pub enum Event<I> {
    /// An input of its own channel (`None`: every sender is gone).
    Input(Option<I>),
    /// A datagram from a peer.
    Message(NodeId, Bytes),
    /// The core's deadline passed.
    Timeout,
}

/// The next event: inputs first, then a datagram, then the timer.
pub async fn next_event<I, N: Network>(
    inputs: &mut mpsc::UnboundedReceiver<I>,
    net: &N,
    mut sleep: Pin<&mut (impl Future<Output = ()> + ?Sized)>,
) -> Event<I> {
    let mut recv = pin!(net.recv());
    poll_fn(|cx| {
        if let Poll::Ready(i) = inputs.poll_next_unpin(cx) {
            return Poll::Ready(Event::Input(i));
        }
        if let Poll::Ready((from, bytes)) = recv.as_mut().poll(cx) {
            return Poll::Ready(Event::Message(from, bytes));
        }
        if let Poll::Ready(()) = sleep.as_mut().poll(cx) {
            return Poll::Ready(Event::Timeout);
        }
        Poll::Pending
    })
    .await
}

/// Sends every queued frame on `stream` until the queue closes or the
/// stream breaks.
pub async fn client_writer<S: ClientStream>(stream: S, mut frames: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(f) = frames.next().await {
        if stream.send(f).await.is_err() {
            return;
        }
    }
}

/// Accepts client streams forever. Each gets the next id, a reply queue
/// drained by a writer task, and the reader task `on_accept` returns (after
/// telling the main task about the client); `None` means the node is gone.
pub async fn accept_clients<R, Reader>(
    rt: R,
    mut listener: <R as ClientNetwork>::Listener,
    names: (&'static str, &'static str),
    mut on_accept: impl FnMut(u64, <R as ClientNetwork>::Stream, mpsc::UnboundedSender<Bytes>) -> Option<Reader>,
) where
    R: Runtime,
    Reader: Future<Output = ()> + Send + 'static,
{
    let (writer_name, reader_name) = names;
    let mut next = 0u64;
    loop {
        let Ok(stream) = listener.accept().await else { continue };
        let client = next;
        next += 1;
        let (tx, rx) = mpsc::unbounded::<Bytes>();
        let writer_stream = stream.clone();
        let Some(reader) = on_accept(client, stream, tx) else { return };
        // Detached: they end with the connection or the node.
        drop(rt.spawn(Priority::Normal, writer_name, client_writer(writer_stream, rx)));
        drop(rt.spawn(Priority::Normal, reader_name, reader));
    }
}

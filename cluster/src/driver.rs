//! Pieces every node driver shares: waiting for the next event of a main
//! loop, and a client stream's writer task.
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
use kaelix_core::runtime::{ClientStream, Network};

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

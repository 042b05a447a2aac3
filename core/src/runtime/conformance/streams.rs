//! [`ClientNetwork`]: listening, ordered reliable frame streams, end of
//! stream, the frame limit, refused connects.
//!
//! The stream checks share one listener of the server (a node listens once):
//! each takes it, runs the server's side in a task on the server and the
//! client's side in a task on the client, and hands it back.

use std::future::Future;

use bytes::Bytes;

use super::{ensure, pattern};
use crate::NodeId;
use crate::runtime::{ClientNetwork, ClientStream, Listener, MAX_FRAME_BYTES, NetError, Priority, Runtime, timeout};
use crate::time::Duration;

/// How long one side of a stream check may take.
const SIDE_LIMIT: Duration = Duration::from_secs(30);

/// The server's listener the stream checks share, or why there is none.
pub type Held<R> = Result<<R as ClientNetwork>::Listener, String>;

/// Accepts one stream on `server` and runs `server_side` on it, while
/// `client_side` runs on a stream `client` connected; both sides run in
/// tasks of their own node. The listener goes back into `listener`.
async fn one_stream<R, S, SF, C, CF>(
    server: &R,
    client: &R,
    listener: &mut Held<R>,
    server_side: S,
    client_side: C,
) -> Result<(), String>
where
    R: Runtime,
    S: FnOnce(R::Stream) -> SF + Send + 'static,
    SF: Future<Output = Result<(), String>> + Send + 'static,
    C: FnOnce(R::Stream) -> CF + Send + 'static,
    CF: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut l = std::mem::replace(listener, Err("an earlier stream check lost the listener".to_owned()))?;
    let (server_id, client_id) = (server.node_id(), client.node_id());
    let clock = server.clone();
    let serving = async move {
        let r = match timeout(&clock, SIDE_LIMIT, l.accept()).await {
            Err(_) => Err(format!("the server accepted no stream within {SIDE_LIMIT:?}")),
            Ok(Err(e)) => Err(format!("accept: {e}")),
            Ok(Ok(s)) if s.peer() != client_id => {
                Err(format!("the accepted stream names {} as its peer, not the client {client_id}", s.peer()))
            }
            Ok(Ok(s)) => within(&clock, "server", server_side(s)).await,
        };
        (l, r)
    };
    let clock = client.clone();
    let connecting = async move {
        let s = clock.connect(server_id).await.map_err(|e| format!("connect to {server_id}: {e}"))?;
        ensure(s.peer() == server_id, || format!("the stream to {server_id} names {} as its peer", s.peer()))?;
        within(&clock, "client", client_side(s)).await
    };
    let (l, result) = two_sides(server, client, serving, connecting).await;
    if let Some(l) = l {
        *listener = Ok(l);
    }
    result
}

/// Runs `side` (named `who` in the error), bounded by [`SIDE_LIMIT`].
pub(super) async fn within<R: Runtime>(
    clock: &R,
    who: &str,
    side: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    timeout(clock, SIDE_LIMIT, side)
        .await
        .unwrap_or_else(|_| Err(format!("the {who}'s side did not finish within {SIDE_LIMIT:?}")))
}

/// Runs `serving` in a task on `server` and `connecting` in a task on
/// `client`, at once, and waits for both. Returns what the server's task
/// hands back (if it finished) and the verdict, each side's error prefixed
/// with its name.
pub(super) async fn two_sides<R, T, SF, CF>(
    server: &R,
    client: &R,
    serving: SF,
    connecting: CF,
) -> (Option<T>, Result<(), String>)
where
    R: Runtime,
    T: Send + 'static,
    SF: Future<Output = (T, Result<(), String>)> + Send + 'static,
    CF: Future<Output = Result<(), String>> + Send + 'static,
{
    let serving = server.spawn(Priority::Normal, "conformance-stream-server", serving);
    let connecting = client.spawn(Priority::Normal, "conformance-stream-client", connecting);
    let client_result = match connecting.await {
        Ok(r) => r.map_err(|e| format!("client: {e}")),
        Err(e) => Err(format!("the client's task: {e}")),
    };
    let (held, server_result) = match serving.await {
        Ok((held, r)) => (Some(held), r.map_err(|e| format!("server: {e}"))),
        Err(e) => (None, Err(format!("the server's task: {e}"))),
    };
    let result = match (client_result, server_result) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(c), Err(s)) => Err(format!("{c}; {s}")),
    };
    (held, result)
}

/// Receives one frame, which must be `want`.
async fn expect_frame<S: ClientStream>(s: &S, want: &[u8], what: &str) -> Result<(), String> {
    match s.recv().await {
        Ok(Some(f)) if f[..] == *want => Ok(()),
        Ok(Some(f)) => Err(format!("{what}: got a frame of {} bytes, expected {} bytes", f.len(), want.len())),
        other => Err(format!("{what}: expected a frame of {} bytes, got {other:?}", want.len())),
    }
}

/// Receives end of stream (`Ok(None)`).
async fn expect_end<S: ClientStream>(s: &S, what: &str) -> Result<(), String> {
    match s.recv().await {
        Ok(None) => Ok(()),
        Ok(Some(f)) => Err(format!("{what}: expected end of stream, got a frame of {} bytes", f.len())),
        Err(e) => Err(format!("{what}: expected end of stream, got {e:?}")),
    }
}

/// While a node listens, a second `listen` fails with
/// [`NetError::AlreadyListening`].
pub async fn listen_twice_is_already_listening<R: Runtime>(server: &R, listener: &Held<R>) -> Result<(), String> {
    listener.as_ref().map_err(Clone::clone)?;
    let again = server.listen().map(|_| ());
    ensure(again == Err(NetError::AlreadyListening), || format!("a second listen gave {again:?}"))
}

/// The frames of [`stream_frames_arrive_in_order_both_ways`]: empty ones,
/// small ones, a few large ones.
fn frames() -> Vec<Bytes> {
    (0..200u64)
        .map(|i| {
            let len = match i {
                0 | 100 => 0,
                50 => 1 << 20,
                150 => 200_000,
                _ => ((i * 389) % 5_000) as usize,
            };
            Bytes::from(pattern(i, len))
        })
        .collect()
}

/// A stream carries frames in order, whole, without loss or duplication,
/// both ways at once (the client writes while another task of it reads the
/// echoes), and both ends name each other as the peer. After the client
/// closes, the server sees end of stream behind the last frame.
pub async fn stream_frames_arrive_in_order_both_ways<R: Runtime>(
    server: &R,
    client: &R,
    listener: &mut Held<R>,
) -> Result<(), String> {
    let rt = client.clone();
    let server_side = |s: R::Stream| async move {
        let mut echoed = 0;
        loop {
            match s.recv().await {
                Ok(Some(f)) => {
                    s.send(f).await.map_err(|e| format!("echo of frame {echoed}: {e}"))?;
                    echoed += 1;
                }
                Ok(None) => break,
                Err(e) => return Err(format!("recv after {echoed} frames: {e}")),
            }
        }
        let sent = frames().len();
        ensure(echoed == sent, || format!("end of stream after {echoed} frames; the client sent {sent}"))?;
        expect_end(&s, "recv again after end of stream").await
    };
    let client_side = move |s: R::Stream| async move {
        let reader = s.clone();
        let reading = rt.spawn(Priority::Normal, "conformance-stream-reader", async move {
            for (i, want) in frames().iter().enumerate() {
                expect_frame(&reader, want, &format!("echo {i}")).await?;
            }
            Ok::<(), String>(())
        });
        for (i, f) in frames().into_iter().enumerate() {
            s.send(f).await.map_err(|e| format!("send of frame {i}: {e}"))?;
        }
        reading.await.map_err(|e| format!("the reader task: {e}"))??;
        s.close();
        Ok(())
    };
    one_stream(server, client, listener, server_side, client_side).await
}

/// When one end closes, the other receives every frame sent before, then
/// end of stream — and end of stream again on every later `recv`.
pub async fn stream_ends_after_the_peer_closes<R: Runtime>(
    server: &R,
    client: &R,
    listener: &mut Held<R>,
) -> Result<(), String> {
    const FRAMES: u64 = 20;
    let server_side = |s: R::Stream| async move {
        for i in 0..FRAMES {
            s.send(Bytes::from(pattern(i, 10 * i as usize))).await.map_err(|e| format!("send of frame {i}: {e}"))?;
        }
        s.close();
        Ok(())
    };
    let client_side = |s: R::Stream| async move {
        for i in 0..FRAMES {
            expect_frame(&s, &pattern(i, 10 * i as usize), &format!("frame {i} before the close")).await?;
        }
        expect_end(&s, "after the server's close").await?;
        expect_end(&s, "a second recv after the server's close").await
    };
    one_stream(server, client, listener, server_side, client_side).await
}

/// A frame over [`MAX_FRAME_BYTES`] is refused with
/// [`NetError::FrameTooLarge`] naming its length and the limit; it does not
/// reach the peer nor break the stream: a frame of exactly the limit and a
/// small one after it arrive whole.
pub async fn stream_refuses_a_frame_over_the_limit<R: Runtime>(
    server: &R,
    client: &R,
    listener: &mut Held<R>,
) -> Result<(), String> {
    let server_side = |s: R::Stream| async move {
        expect_frame(&s, &pattern(1, MAX_FRAME_BYTES), "the frame of exactly MAX_FRAME_BYTES").await?;
        expect_frame(&s, b"after", "the frame after it").await?;
        s.send(Bytes::from_static(b"got them")).await.map_err(|e| format!("send: {e}"))?;
        expect_end(&s, "after the client's close").await
    };
    let client_side = |s: R::Stream| async move {
        let r = s.send(Bytes::from(vec![0u8; MAX_FRAME_BYTES + 1])).await;
        let refused = Err(NetError::FrameTooLarge { len: MAX_FRAME_BYTES + 1, max: MAX_FRAME_BYTES });
        ensure(r == refused, || format!("sending MAX_FRAME_BYTES + 1 bytes gave {r:?}"))?;
        s.send(Bytes::from(pattern(1, MAX_FRAME_BYTES)))
            .await
            .map_err(|e| format!("sending exactly MAX_FRAME_BYTES after a refused frame: {e}"))?;
        s.send(Bytes::from_static(b"after")).await.map_err(|e| format!("send: {e}"))?;
        expect_frame(&s, b"got them", "the server's answer").await?;
        s.close();
        Ok(())
    };
    one_stream(server, client, listener, server_side, client_side).await
}

/// Connecting to a node that does not listen for client streams is
/// [`NetError::Refused`] naming that node.
pub async fn connect_to_a_node_that_does_not_listen_is_refused<R: Runtime>(
    client: &R,
    not_listening: &[NodeId],
) -> Result<(), String> {
    ensure(!not_listening.is_empty(), || "the harness named no node that does not listen".to_owned())?;
    for &node in not_listening {
        let rt = client.clone();
        let r = client
            .spawn(Priority::Normal, "conformance-refused", async move { rt.connect(node).await.map(|s| s.peer()) })
            .await
            .map_err(|e| format!("the connecting task: {e}"))?;
        ensure(r == Err(NetError::Refused(node)), || {
            format!("connecting to {node}, which does not listen, gave {r:?}")
        })?;
    }
    Ok(())
}

/// Dropping the listener stops listening: the node can listen again (a
/// second `listen` is refused only while the node *already listens*), and
/// the new listener accepts streams.
pub async fn listen_again_after_dropping_the_listener<R: Runtime>(
    server: &R,
    client: &R,
    listener: &mut Held<R>,
) -> Result<(), String> {
    let old = std::mem::replace(listener, Err("dropped by listen_again_after_dropping_the_listener".to_owned()));
    drop(old?);
    *listener = server.listen().map_err(|e| format!("listen after dropping the listener: {e}"));
    listener.as_ref().map_err(Clone::clone)?;
    let server_side = |s: R::Stream| async move {
        expect_frame(&s, b"hello again", "the first frame").await?;
        expect_end(&s, "after the client's close").await
    };
    let client_side = |s: R::Stream| async move {
        s.send(Bytes::from_static(b"hello again")).await.map_err(|e| format!("send: {e}"))?;
        s.close();
        Ok(())
    };
    one_stream(server, client, listener, server_side, client_side).await
}

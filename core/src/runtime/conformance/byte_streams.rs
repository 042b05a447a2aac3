//! [`ByteNetwork`]: binding (port 0, ports in use, foreign addresses),
//! ordered reliable byte streams whose chunk boundaries are not kept, end
//! of stream, refused connects, dropped listeners.
//!
//! Every check binds its own listeners on [`Pair::server_ip`] with port 0
//! (so the checks never collide with each other nor with other programs on
//! a real machine), runs the server's side in a task on the server and the
//! client's side in a task on the client. Readers reassemble what arrives
//! and compare content: how the bytes are cut into chunks is the
//! transport's business, only that no chunk is empty is checked.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;

use super::streams::{two_sides, within};
use super::{Pair, ensure, pattern};
use crate::runtime::{ByteListener, ByteStream, NetError, Priority, Runtime, timeout};
use crate::time::Duration;

/// How long a server waits for a stream to accept.
const ACCEPT_LIMIT: Duration = Duration::from_secs(30);

/// Binds a listener on the server's address with port 0.
fn bind_any<R: Runtime>(pair: &Pair<R>) -> Result<R::ByteListener, String> {
    let addr = SocketAddr::new(pair.server_ip, 0);
    pair.server.bind_tcp(addr).map_err(|e| format!("binding {addr}: {e}"))
}

/// Accepts one stream on `listener` within [`ACCEPT_LIMIT`], checking that
/// it names a peer address with a port.
async fn accept_one<R: Runtime>(clock: &R, listener: &mut R::ByteListener) -> Result<R::ByteStream, String> {
    match timeout(clock, ACCEPT_LIMIT, listener.accept()).await {
        Err(_) => Err(format!("accepted no stream within {ACCEPT_LIMIT:?}")),
        Ok(Err(e)) => Err(format!("accept: {e}")),
        Ok(Ok(s)) if s.peer_addr().port() == 0 => {
            Err(format!("the accepted stream's peer {} has no port", s.peer_addr()))
        }
        Ok(Ok(s)) => Ok(s),
    }
}

/// Connects to `addr`, checking that the stream names it as its peer.
async fn connect_to<R: Runtime>(client: &R, addr: SocketAddr) -> Result<R::ByteStream, String> {
    let s = client.connect_tcp(addr).await.map_err(|e| format!("connect to {addr}: {e}"))?;
    ensure(s.peer_addr() == addr, || format!("the stream to {addr} names {} as its peer", s.peer_addr()))?;
    Ok(s)
}

/// Binds a listener on the server, accepts one stream and runs
/// `server_side` on it, while `client_side` runs on a stream the client
/// connected to the listener's address; each side in a task of its node.
async fn one_byte_stream<R, S, SF, C, CF>(pair: &Pair<R>, server_side: S, client_side: C) -> Result<(), String>
where
    R: Runtime,
    S: FnOnce(R::ByteStream) -> SF + Send + 'static,
    SF: Future<Output = Result<(), String>> + Send + 'static,
    C: FnOnce(R::ByteStream) -> CF + Send + 'static,
    CF: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut listener = bind_any(pair)?;
    let addr = listener.local_addr();
    let clock = pair.server.clone();
    let serving = async move {
        let r = match accept_one(&clock, &mut listener).await {
            Ok(s) => within(&clock, "server", server_side(s)).await,
            Err(e) => Err(e),
        };
        ((), r)
    };
    let clock = pair.client.clone();
    let connecting = async move {
        let s = connect_to(&clock, addr).await?;
        within(&clock, "client", client_side(s)).await
    };
    two_sides(&pair.server, &pair.client, serving, connecting).await.1
}

/// Reads until `want.len()` bytes arrived; they must be `want`. No chunk
/// may be empty, none may run past `want`.
async fn expect_bytes<S: ByteStream>(s: &S, want: &[u8], what: &str) -> Result<(), String> {
    let mut got = Vec::with_capacity(want.len());
    while got.len() < want.len() {
        match s.read().await {
            Ok(Some(chunk)) if chunk.is_empty() => {
                return Err(format!("{what}: an empty chunk after {} bytes", got.len()));
            }
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => return Err(format!("{what}: end of stream after {} of {} bytes", got.len(), want.len())),
            Err(e) => return Err(format!("{what}: {e} after {} of {} bytes", got.len(), want.len())),
        }
    }
    ensure(got.len() == want.len(), || format!("{what}: {} bytes arrived, {} were written", got.len(), want.len()))?;
    match got.iter().zip(want).position(|(g, w)| g != w) {
        Some(at) => Err(format!("{what}: byte {at} of {} differs", want.len())),
        None => Ok(()),
    }
}

/// Reads end of stream (`Ok(None)`).
async fn expect_end<S: ByteStream>(s: &S, what: &str) -> Result<(), String> {
    match s.read().await {
        Ok(None) => Ok(()),
        Ok(Some(chunk)) => Err(format!("{what}: expected end of stream, got {} bytes", chunk.len())),
        Err(e) => Err(format!("{what}: expected end of stream, got {e:?}")),
    }
}

/// The writes of [`byte_stream_carries_every_byte_in_order`]: empty ones,
/// single bytes, small ones, a few large ones.
fn writes() -> Vec<Bytes> {
    (0..300u64)
        .map(|i| {
            let len = match i {
                0 | 150 => 0,
                7..=9 => 1,
                50 => 1 << 20,
                100 => 64 * 1024 + 1,
                200 => 300_000,
                _ => ((i * 389) % 3_000) as usize,
            };
            Bytes::from(pattern(i, len))
        })
        .collect()
}

/// Everything [`writes`] writes, in order.
fn written() -> Vec<u8> {
    writes().concat()
}

/// A byte stream carries every byte, in order, without loss or duplication,
/// across many writes of varied sizes (empty ones included), both ways at
/// once: the server echoes every chunk it reads while the client still
/// writes and another task of the client reassembles the echo. No read
/// returns an empty chunk; after the client closes, the server reads end of
/// stream behind the last byte. The client's stream names the listener's
/// address as its peer.
pub async fn byte_stream_carries_every_byte_in_order<R: Runtime>(pair: &Pair<R>) -> Result<(), String> {
    let rt = pair.client.clone();
    let server_side = |s: R::ByteStream| async move {
        let mut got = Vec::new();
        loop {
            match s.read().await {
                Ok(Some(chunk)) if chunk.is_empty() => return Err(format!("an empty chunk after {} bytes", got.len())),
                Ok(Some(chunk)) => {
                    got.extend_from_slice(&chunk);
                    s.write(chunk).await.map_err(|e| format!("echo after {} bytes: {e}", got.len()))?;
                }
                Ok(None) => break,
                Err(e) => return Err(format!("read after {} bytes: {e}", got.len())),
            }
        }
        let want = written();
        ensure(got == want, || {
            format!("read {} bytes before end of stream; the client wrote {}", got.len(), want.len())
        })?;
        expect_end(&s, "read again after end of stream").await
    };
    let client_side = move |s: R::ByteStream| async move {
        let reader = s.clone();
        let reading = rt.spawn(Priority::Normal, "conformance-byte-reader", async move {
            expect_bytes(&reader, &written(), "the echo").await
        });
        for (i, w) in writes().into_iter().enumerate() {
            s.write(w).await.map_err(|e| format!("write {i}: {e}"))?;
        }
        reading.await.map_err(|e| format!("the reader task: {e}"))??;
        s.close();
        Ok(())
    };
    one_byte_stream(pair, server_side, client_side).await
}

/// When one end closes, the other reads every byte written before, then end
/// of stream — and end of stream again on every later read.
pub async fn byte_stream_ends_after_the_peer_closes<R: Runtime>(pair: &Pair<R>) -> Result<(), String> {
    const WRITES: u64 = 20;
    let want: Vec<u8> = (0..WRITES).flat_map(|i| pattern(i, 100 * i as usize)).collect();
    let server_side = |s: R::ByteStream| async move {
        for i in 0..WRITES {
            s.write(Bytes::from(pattern(i, 100 * i as usize))).await.map_err(|e| format!("write {i}: {e}"))?;
        }
        s.close();
        Ok(())
    };
    let client_side = |s: R::ByteStream| async move {
        expect_bytes(&s, &want, "the bytes before the close").await?;
        expect_end(&s, "after the server's close").await?;
        expect_end(&s, "a second read after the server's close").await
    };
    one_byte_stream(pair, server_side, client_side).await
}

/// Connects from the client to `addr` in a task of the client.
async fn connect_from_client<R: Runtime>(
    pair: &Pair<R>,
    addr: SocketAddr,
) -> Result<Result<R::ByteStream, NetError>, String> {
    let rt = pair.client.clone();
    pair.client
        .spawn(Priority::Normal, "conformance-byte-connect", async move { rt.connect_tcp(addr).await })
        .await
        .map_err(|e| format!("the connecting task: {e}"))
}

/// Connecting to a port nobody is bound to (one just bound with port 0 and
/// dropped at once) is [`NetError::Refused`].
pub async fn byte_connect_to_an_unbound_port_is_refused<R: Runtime>(pair: &Pair<R>) -> Result<(), String> {
    let addr = bind_any(pair)?.local_addr();
    let r = connect_from_client(pair, addr).await?;
    ensure(matches!(r, Err(NetError::Refused(_))), || {
        format!("connecting to {addr}, where nobody listens, gave {:?}", r.map(|s| s.peer_addr()))
    })
}

/// Binding a port a listener holds is [`NetError::AddrInUse`] naming the
/// address asked for, with the same IP or with the unspecified one; the
/// listener still works after.
pub async fn binding_a_bound_port_is_addr_in_use<R: Runtime>(pair: &Pair<R>) -> Result<(), String> {
    let listener = bind_any(pair)?;
    let addr = listener.local_addr();
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
    for again in [addr, any] {
        let r = pair.server.bind_tcp(again).map(|l| l.local_addr());
        ensure(r == Err(NetError::AddrInUse(again)), || format!("binding {again} while {addr} is bound gave {r:?}"))?;
    }
    let mut listener = listener;
    let clock = pair.server.clone();
    let serving = async move {
        let r = match accept_one(&clock, &mut listener).await {
            Ok(s) => expect_bytes(&s, b"still here", "after the refused binds").await,
            Err(e) => Err(e),
        };
        ((), r)
    };
    let clock = pair.client.clone();
    let connecting = async move {
        let s = connect_to(&clock, addr).await?;
        s.write(Bytes::from_static(b"still here")).await.map_err(|e| format!("write: {e}"))
    };
    two_sides(&pair.server, &pair.client, serving, connecting).await.1
}

/// Binding an address that is not the node's is
/// [`NetError::AddrNotAvailable`] naming it.
pub async fn binding_a_foreign_address_is_not_available<R: Runtime>(pair: &Pair<R>) -> Result<(), String> {
    // TEST-NET-3 (RFC 5737): never a local address.
    let foreign = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 0);
    let r = pair.server.bind_tcp(foreign).map(|l| l.local_addr());
    ensure(r == Err(NetError::AddrNotAvailable(foreign)), || format!("binding {foreign} gave {r:?}"))
}

/// Binding port 0 picks a free port, reported by `local_addr` with the IP
/// bound; two such listeners get distinct ports, and two listeners of one
/// node serve streams at once: the client connects to both before either
/// is accepted, and each accepted stream carries what was written to its
/// listener.
pub async fn two_port_zero_listeners_serve_at_once<R: Runtime>(pair: &Pair<R>) -> Result<(), String> {
    let listeners = [bind_any(pair)?, bind_any(pair)?];
    let addrs = [listeners[0].local_addr(), listeners[1].local_addr()];
    for addr in addrs {
        ensure(addr.port() != 0 && addr.ip() == pair.server_ip, || {
            format!("a listener bound to {}:0 reports {addr}", pair.server_ip)
        })?;
    }
    ensure(addrs[0].port() != addrs[1].port(), || format!("two binds of port 0 both got {}", addrs[0]))?;
    let clock = pair.server.clone();
    let serving = async move {
        let mut accepted = Vec::new();
        let mut r = Ok(());
        for (i, mut l) in listeners.into_iter().enumerate() {
            let rt = clock.clone();
            accepted.push(clock.spawn(Priority::Normal, "conformance-byte-accept", async move {
                let s = accept_one(&rt, &mut l).await?;
                let tag = format!("to listener {i}");
                expect_bytes(&s, tag.as_bytes(), &tag).await?;
                s.write(Bytes::from(tag)).await.map_err(|e| format!("answer of listener {i}: {e}"))?;
                expect_end(&s, "after the client's close").await
            }));
        }
        for task in accepted {
            let done = task.await.unwrap_or_else(|e| Err(format!("an accepting task: {e}")));
            r = r.and(done);
        }
        ((), r)
    };
    let clock = pair.client.clone();
    let connecting = async move {
        let streams = [connect_to(&clock, addrs[0]).await?, connect_to(&clock, addrs[1]).await?];
        for (i, s) in streams.iter().enumerate().rev() {
            s.write(Bytes::from(format!("to listener {i}"))).await.map_err(|e| format!("write to {i}: {e}"))?;
        }
        for (i, s) in streams.iter().enumerate() {
            expect_bytes(s, format!("to listener {i}").as_bytes(), &format!("the answer of listener {i}")).await?;
            s.close();
        }
        Ok(())
    };
    two_sides(&pair.server, &pair.client, serving, connecting).await.1
}

/// Dropping a listener stops listening: a stream connected but not yet
/// accepted breaks (its reads end or fail) and later connects are
/// [`NetError::Refused`].
pub async fn dropping_a_byte_listener_refuses_later_connects<R: Runtime>(pair: &Pair<R>) -> Result<(), String> {
    let listener = bind_any(pair)?;
    let addr = listener.local_addr();
    let pending = connect_from_client(pair, addr).await?.map_err(|e| format!("connect while bound: {e}"))?;
    drop(listener);
    let rt = pair.client.clone();
    pair.client
        .spawn(Priority::Normal, "conformance-byte-dropped", async move {
            match pending.read().await {
                Ok(None) | Err(_) => {}
                Ok(Some(chunk)) => return Err(format!("a never-accepted stream read {} bytes", chunk.len())),
            }
            let r = rt.connect_tcp(addr).await;
            ensure(matches!(r, Err(NetError::Refused(_))), || {
                format!("connecting to {addr} after its listener was dropped gave {:?}", r.map(|s| s.peer_addr()))
            })
        })
        .await
        .map_err(|e| format!("the client's task: {e}"))?
}

/// After one end closed, the other's writes eventually fail, or its reads
/// see end of stream: a write never vanishes into a stream that seems open
/// forever.
pub async fn writes_after_the_peer_closed_fail_or_read_end<R: Runtime>(pair: &Pair<R>) -> Result<(), String> {
    let server_side = |s: R::ByteStream| async move {
        s.close();
        Ok(())
    };
    let rt = pair.client.clone();
    let client_side = move |s: R::ByteStream| async move {
        for _ in 0..20 {
            if s.write(Bytes::from_static(b"anyone there?")).await.is_err() {
                return Ok(());
            }
            rt.sleep(Duration::from_millis(5)).await;
        }
        match s.read().await {
            Ok(None) | Err(_) => Ok(()),
            Ok(Some(chunk)) => Err(format!("read {} bytes from a peer that closed without writing", chunk.len())),
        }
    };
    one_byte_stream(pair, server_side, client_side).await
}

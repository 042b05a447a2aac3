//! [`Network`]: best-effort datagrams, never corrupted or split.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::{ensure, pattern};
use crate::NodeId;
use crate::rng::RngExt;
use crate::runtime::{Clock, MAX_DATAGRAM_BYTES, Network, Priority, Runtime, TaskHandle, timeout};
use crate::time::Duration;

/// Datagrams each side sends.
const COUNT: u32 = 200;
/// The index the oversize datagram carries (it must never arrive).
const OVERSIZE: u32 = u32::MAX;
/// Bytes of the header: nonce, index, total length.
const HEADER: usize = 16;
/// A receiver gives up once nothing new arrived for this long.
const QUIET: Duration = Duration::from_secs(3);

/// The size of datagram `i`: mostly small, a few large, one of exactly
/// [`MAX_DATAGRAM_BYTES`].
fn size(i: u32) -> usize {
    match i {
        10 => MAX_DATAGRAM_BYTES,
        20 => 64 * 1024,
        30 => 256 * 1024,
        _ => HEADER + (i as usize * 997) % 8_000,
    }
}

/// Datagram `i` of the run `nonce`, `len` bytes: header, then a pattern.
fn datagram(nonce: u64, i: u32, len: usize) -> Bytes {
    let mut m = BytesMut::with_capacity(len);
    m.put_u64_le(nonce);
    m.put_u32_le(i);
    m.put_u32_le(len as u32);
    m.extend_from_slice(&pattern(nonce ^ u64::from(i), len - HEADER));
    m.freeze()
}

/// Sends `COUNT` datagrams to `to`, with an oversize one and one to an
/// unknown node among them (both must be dropped silently).
async fn send_all<R: Network + Clock>(rt: R, to: NodeId, nonce: u64) {
    for i in 0..COUNT {
        rt.send(to, datagram(nonce, i, size(i)));
        if i == COUNT / 2 {
            rt.send(to, datagram(nonce, OVERSIZE, MAX_DATAGRAM_BYTES + 1));
            rt.send(NodeId(u64::MAX - 7), datagram(nonce, i, 64));
        }
        if i % 10 == 9 {
            rt.sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Receives until every datagram of the run arrived or nothing new came
/// for [`QUIET`]; checks each one; returns how many distinct ones arrived.
async fn receive_all<R: Network + Clock>(rt: R, from: NodeId, nonce: u64) -> Result<usize, String> {
    let me = rt.local_node();
    let mut seen = BTreeSet::new();
    while seen.len() < COUNT as usize {
        let Ok((sender, mut m)) = timeout(&rt, QUIET, rt.recv()).await else { break };
        let len = m.len();
        if len >= 8 && m[..8] != nonce.to_le_bytes() {
            continue; // a datagram of some other run
        }
        ensure(len >= HEADER, || format!("{me} received {len} bytes from {sender}: not a datagram we sent (split?)"))?;
        ensure(sender == from, || format!("{me} received a datagram of {from} as sent by {sender}"))?;
        let whole = m.clone();
        m.advance(8);
        let (i, total) = (m.get_u32_le(), m.get_u32_le() as usize);
        ensure(i != OVERSIZE, || format!("{me} received a datagram over MAX_DATAGRAM_BYTES ({len} bytes)"))?;
        ensure(i < COUNT && total == size(i) && len == total, || {
            format!(
                "{me} received datagram {i} from {from} with {len} bytes, sent with {}: split or corrupted",
                size(i)
            )
        })?;
        ensure(whole == datagram(nonce, i, total), || format!("{me} received datagram {i} from {from} corrupted"))?;
        seen.insert(i);
    }
    Ok(seen.len())
}

/// Datagrams between two nodes, both ways at once (sizes up to
/// [`MAX_DATAGRAM_BYTES`]): whatever arrives is intact, whole and names its
/// sender; one over the limit, or addressed to an unknown node, is dropped
/// without a fuss. Delivery is best effort, but on this suite's fault-free
/// links most datagrams must arrive.
pub async fn datagrams_arrive_intact_from_their_sender<R: Runtime>(a: &R, b: &R) -> Result<(), String> {
    let nonce = a.rng().random::<u64>();
    let (ida, idb) = (a.node_id(), b.node_id());
    let rx_b = b.spawn(Priority::High, "conformance-datagram-rx", receive_all(b.clone(), ida, nonce));
    let rx_a = a.spawn(Priority::High, "conformance-datagram-rx", receive_all(a.clone(), idb, nonce));
    let tx_a = a.spawn(Priority::Normal, "conformance-datagram-tx", send_all(a.clone(), idb, nonce));
    let tx_b = b.spawn(Priority::Normal, "conformance-datagram-tx", send_all(b.clone(), ida, nonce));
    let mut result = Ok(());
    for (dir, rx) in [(format!("{ida} -> {idb}"), rx_b), (format!("{idb} -> {ida}"), rx_a)] {
        let r = match rx.await {
            Ok(Ok(n)) if n * 2 > COUNT as usize => Ok(()),
            Ok(Ok(n)) => Err(format!("{dir}: only {n} of {COUNT} datagrams arrived on a fault-free link")),
            Ok(Err(e)) => Err(format!("{dir}: {e}")),
            Err(e) => Err(format!("{dir}: the receiver task: {e}")),
        };
        result = result.and(r);
    }
    for tx in [tx_a, tx_b] {
        tx.abort();
        let _ = tx.await;
    }
    result
}

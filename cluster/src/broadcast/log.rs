//! The broadcast service's on-disk log.
//!
//! An append-only file of records `[len: u32][crc32: u32][id: u64][payload]`
//! where `len` counts `id + payload` and the CRC covers `len`, `id` and
//! `payload`. Recovery scans from the start and stops at the first record
//! that is truncated, has an impossible length or fails its checksum: that
//! is a torn or lost tail (or corruption), and everything from there is cut
//! off so that new appends never land after garbage. Values lost that way
//! come back from peers through anti-entropy. Records are read through
//! [`kaelix_core::codec::Reader`].

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_core::codec::Reader;

use super::wire::{MAX_VALUE_BYTES, Value};

/// Bytes of header before each record's body.
pub const HEADER: usize = 8;

/// Encodes one record.
pub fn encode_record(v: &Value) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + 8 + v.payload.len());
    encode_record_into(&mut out, v);
    out.freeze()
}

/// Appends one record to `out` (for group commit).
pub fn encode_record_into(out: &mut BytesMut, v: &Value) {
    let body_len = 8 + v.payload.len();
    out.reserve(HEADER + body_len);
    out.put_u32_le(body_len as u32);
    out.put_u32_le(checksum(body_len as u32, v.id, &v.payload));
    out.put_u64_le(v.id);
    out.put_slice(&v.payload);
}

fn checksum(len: u32, id: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&id.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Why a scan stopped before the end of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The file ended exactly at a record boundary.
    Clean,
    /// A record was cut short.
    Truncated,
    /// A record's length field was impossible (zero or over the limit).
    BadLength,
    /// A record's checksum did not match.
    BadChecksum,
}

/// The result of scanning a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Valid records, in order.
    pub values: Vec<Value>,
    /// Length of the valid prefix.
    pub valid_len: u64,
    /// Why the scan stopped.
    pub stop: StopReason,
}

/// Scans `data` (a whole log). With `verify_checksums` false the checksum is
/// ignored — only the planted bug `BroadcastSkipChecksum` does that.
pub fn scan(data: Bytes, verify_checksums: bool) -> Scan {
    let mut r = Reader::new(&data);
    let mut values = Vec::new();
    let mut valid_len = 0u64;
    let stop = loop {
        if r.remaining() == 0 {
            break StopReason::Clean;
        }
        match next_record(&mut r, verify_checksums) {
            Ok(value) => {
                values.push(value);
                valid_len = r.position() as u64;
            }
            Err(stop) => break stop,
        }
    };
    Scan { values, valid_len, stop }
}

fn next_record(r: &mut Reader<'_>, verify_checksums: bool) -> Result<Value, StopReason> {
    // The reader's only failure here is running out of bytes.
    let truncated = |_| StopReason::Truncated;
    let len = r.u32("record length").map_err(truncated)?;
    let crc = r.u32("record checksum").map_err(truncated)?;
    let body_len = len as usize;
    if !(8..=8 + MAX_VALUE_BYTES).contains(&body_len) {
        return Err(StopReason::BadLength);
    }
    r.need(body_len, "record body").map_err(truncated)?;
    let id = r.u64("value id").map_err(truncated)?;
    let payload = r.bytes(body_len - 8, "value payload").map_err(truncated)?;
    if verify_checksums && checksum(len, id, &payload) != crc {
        return Err(StopReason::BadChecksum);
    }
    Ok(Value { id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log_of(values: &[Value]) -> Vec<u8> {
        values.iter().flat_map(|v| encode_record(v).to_vec()).collect()
    }

    fn values() -> impl Strategy<Value = Vec<Value>> {
        proptest::collection::vec(
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(id, p)| Value { id, payload: Bytes::from(p) }),
            0..20,
        )
    }

    proptest! {
        #[test]
        fn round_trip(vs in values()) {
            let data = log_of(&vs);
            let s = scan(Bytes::from(data.clone()), true);
            prop_assert_eq!(s.stop, StopReason::Clean);
            prop_assert_eq!(s.valid_len as usize, data.len());
            prop_assert_eq!(s.values, vs);
        }

        /// A torn tail yields exactly the records before it.
        #[test]
        fn torn_tail_keeps_prefix(vs in values(), cut in any::<prop::sample::Index>()) {
            let data = log_of(&vs);
            if data.is_empty() { return Ok(()); }
            let cut = cut.index(data.len());
            let s = scan(Bytes::from(data[..cut].to_vec()), true);
            prop_assert!(s.valid_len as usize <= cut);
            prop_assert_eq!(&s.values[..], &vs[..s.values.len()]);
        }

        /// Any single bit flip is detected: the scan never returns a value
        /// that was not written.
        #[test]
        fn bit_flips_never_yield_wrong_values(vs in values(), bit in any::<prop::sample::Index>()) {
            let mut data = log_of(&vs);
            if data.is_empty() { return Ok(()); }
            let b = bit.index(data.len() * 8);
            data[b / 8] ^= 1 << (b % 8);
            let s = scan(Bytes::from(data), true);
            for v in &s.values {
                prop_assert!(vs.contains(v), "invented {:?}", v);
            }
        }
    }
}

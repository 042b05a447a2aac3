//! Wire formats of the broadcast service: node-to-node datagrams and
//! client frames. Little-endian, length-checked (through
//! [`kaelix_core::codec::Reader`]); decoding never panics and names what is
//! wrong.

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_core::codec::{self, CodecError, Reader};

/// The largest payload a broadcast value may carry.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The most ids one `Have`/`Want` message carries.
pub const MAX_IDS: usize = 65_536;
/// The longest error reason a client frame carries (longer ones are cut).
const MAX_REASON_BYTES: usize = 1024;
/// Anti-entropy splits the id space into this many buckets (by id hash), so
/// a mismatch costs an exchange of one bucket's ids, not all of them.
pub const DIGEST_BUCKETS: usize = 16;
const _: () = assert!(DIGEST_BUCKETS.is_power_of_two() && DIGEST_BUCKETS <= u16::BITS as usize, "Have's mask is a u16");

/// An order-independent summary of a set of ids: how many, and the XOR of
/// a hash of each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetDigest {
    /// Number of ids.
    pub count: u64,
    /// XOR of [`id_hash`] of every id.
    pub hash: u64,
}

impl SetDigest {
    /// Adds `id` to the summary (each id at most once).
    pub fn add(&mut self, id: u64) {
        self.count += 1;
        self.hash ^= id_hash(id);
    }
}

/// Spreads ids so that XOR-of-hashes is a good set digest and the top bits
/// pick a bucket uniformly (the SplitMix64 finaliser).
pub fn id_hash(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The anti-entropy bucket of `id`.
pub fn bucket_of(id: u64) -> usize {
    const SHIFT: u32 = 64 - DIGEST_BUCKETS.trailing_zeros();
    (id_hash(id) >> SHIFT) as usize
}

/// A value being broadcast: a client-chosen unique id and an opaque payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// Unique id chosen by the submitting client.
    pub id: u64,
    /// The payload (never copied: slices of the received buffer).
    pub payload: Bytes,
}

/// Node-to-node messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// Please store this value durably and answer `Stored`.
    Replicate(Value),
    /// I have this value durably.
    Stored(u64),
    /// Anti-entropy: summary of my settled ids.
    Digest(SetDigest),
    /// Anti-entropy: summary of my settled ids per bucket (answer to a
    /// mismatching digest).
    Buckets(Box<[SetDigest; DIGEST_BUCKETS]>),
    /// Anti-entropy: every id I hold in the buckets whose bits are set in
    /// `buckets` (answer to mismatching buckets), sorted.
    Have {
        /// Bit `i` set: bucket `i` is covered.
        buckets: u16,
        /// The ids.
        ids: Vec<u64>,
    },
    /// Anti-entropy: send me these values.
    Want(Vec<u64>),
}

/// Client ↔ node frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// Client → node: broadcast this value.
    Submit(Value),
    /// Node → client: the value is durable on enough nodes.
    Ack(u64),
    /// Node → client: the request was refused.
    Error {
        /// The value concerned (0 if unknown).
        id: u64,
        /// Why.
        reason: String,
    },
}

/// A decoding failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field cut short, a length over its limit, text that is not UTF-8
    /// or bytes after a complete message (each names the field).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// An unknown message tag.
    #[error("unknown {kind} tag {tag}")]
    UnknownTag {
        /// Message family.
        kind: &'static str,
        /// The tag.
        tag: u8,
    },
}

fn get_value(r: &mut Reader<'_>) -> Result<Value, CodecError> {
    let id = r.u64("value id")?;
    let len = r.len_u32("value payload length", MAX_VALUE_BYTES)?;
    Ok(Value { id, payload: r.bytes(len, "value payload")? })
}

fn put_value(out: &mut BytesMut, v: &Value) {
    out.put_u64_le(v.id);
    codec::put_bytes_u32(out, &v.payload);
}

fn get_ids(r: &mut Reader<'_>) -> Result<Vec<u64>, CodecError> {
    let n = r.len_u32("id count", MAX_IDS)?;
    Ok(r.u64s(n, "id list")?.collect())
}

fn put_ids(out: &mut BytesMut, ids: &[u64]) {
    assert!(ids.len() <= MAX_IDS, "id list over the wire limit");
    out.put_u32_le(ids.len() as u32);
    for id in ids {
        out.put_u64_le(*id);
    }
}

fn get_digest(r: &mut Reader<'_>) -> Result<SetDigest, CodecError> {
    Ok(SetDigest { count: r.u64("digest count")?, hash: r.u64("digest hash")? })
}

fn put_digest(out: &mut BytesMut, d: &SetDigest) {
    out.put_u64_le(d.count);
    out.put_u64_le(d.hash);
}

impl PeerMessage {
    /// The exact length of [`PeerMessage::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            PeerMessage::Replicate(v) => 12 + v.payload.len(),
            PeerMessage::Stored(_) => 8,
            PeerMessage::Digest(_) => 16,
            PeerMessage::Buckets(_) => 16 * DIGEST_BUCKETS,
            PeerMessage::Have { ids, .. } => 2 + 4 + 8 * ids.len(),
            PeerMessage::Want(ids) => 4 + 8 * ids.len(),
        }
    }

    /// Encodes the message.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        match self {
            PeerMessage::Replicate(v) => {
                out.put_u8(1);
                put_value(&mut out, v);
            }
            PeerMessage::Stored(id) => {
                out.put_u8(2);
                out.put_u64_le(*id);
            }
            PeerMessage::Digest(d) => {
                out.put_u8(3);
                put_digest(&mut out, d);
            }
            PeerMessage::Have { buckets, ids } => {
                out.put_u8(4);
                out.put_u16_le(*buckets);
                put_ids(&mut out, ids);
            }
            PeerMessage::Want(ids) => {
                out.put_u8(5);
                put_ids(&mut out, ids);
            }
            PeerMessage::Buckets(digests) => {
                out.put_u8(6);
                for d in digests.iter() {
                    put_digest(&mut out, d);
                }
            }
        }
        debug_assert_eq!(out.len(), self.encoded_len());
        out.freeze()
    }

    /// Decodes a message, borrowing payloads from `buf`.
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&buf);
        let msg = match r.u8("peer message tag")? {
            1 => PeerMessage::Replicate(get_value(&mut r)?),
            2 => PeerMessage::Stored(r.u64("stored id")?),
            3 => PeerMessage::Digest(get_digest(&mut r)?),
            4 => {
                let buckets = r.u16("have bucket mask")?;
                PeerMessage::Have { buckets, ids: get_ids(&mut r)? }
            }
            5 => PeerMessage::Want(get_ids(&mut r)?),
            6 => {
                let mut digests = [SetDigest::default(); DIGEST_BUCKETS];
                for d in &mut digests {
                    *d = get_digest(&mut r)?;
                }
                PeerMessage::Buckets(Box::new(digests))
            }
            tag => return Err(DecodeError::UnknownTag { kind: "peer message", tag }),
        };
        r.finish("message")?;
        Ok(msg)
    }
}

impl ClientFrame {
    /// Encodes the frame.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            ClientFrame::Submit(v) => {
                out.put_u8(1);
                put_value(&mut out, v);
            }
            ClientFrame::Ack(id) => {
                out.put_u8(2);
                out.put_u64_le(*id);
            }
            ClientFrame::Error { id, reason } => {
                out.put_u8(3);
                out.put_u64_le(*id);
                codec::put_bytes_u32(&mut out, &reason.as_bytes()[..reason.len().min(MAX_REASON_BYTES)]);
            }
        }
        out.freeze()
    }

    /// Decodes a frame.
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&buf);
        let frame = match r.u8("client frame tag")? {
            1 => ClientFrame::Submit(get_value(&mut r)?),
            2 => ClientFrame::Ack(r.u64("ack id")?),
            3 => {
                let id = r.u64("error id")?;
                let len = r.len_u32("error reason length", MAX_REASON_BYTES)?;
                ClientFrame::Error { id, reason: r.str(len, "error reason")?.to_owned() }
            }
            tag => return Err(DecodeError::UnknownTag { kind: "client frame", tag }),
        };
        r.finish("message")?;
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..256))
            .prop_map(|(id, p)| Value { id, payload: Bytes::from(p) })
    }

    fn digest() -> impl Strategy<Value = SetDigest> {
        (any::<u64>(), any::<u64>()).prop_map(|(count, hash)| SetDigest { count, hash })
    }

    fn peer_message() -> impl Strategy<Value = PeerMessage> {
        prop_oneof![
            value().prop_map(PeerMessage::Replicate),
            any::<u64>().prop_map(PeerMessage::Stored),
            digest().prop_map(PeerMessage::Digest),
            proptest::array::uniform16(digest()).prop_map(|d| PeerMessage::Buckets(Box::new(d))),
            (any::<u16>(), proptest::collection::vec(any::<u64>(), 0..50))
                .prop_map(|(buckets, ids)| PeerMessage::Have { buckets, ids }),
            proptest::collection::vec(any::<u64>(), 0..50).prop_map(PeerMessage::Want),
        ]
    }

    fn client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            value().prop_map(ClientFrame::Submit),
            any::<u64>().prop_map(ClientFrame::Ack),
            (any::<u64>(), "[a-z ]{0,40}").prop_map(|(id, reason)| ClientFrame::Error { id, reason }),
        ]
    }

    proptest! {
        #[test]
        fn peer_messages_round_trip(m in peer_message()) {
            prop_assert_eq!(PeerMessage::decode(m.encode()), Ok(m));
        }

        #[test]
        fn client_frames_round_trip(f in client_frame()) {
            prop_assert_eq!(ClientFrame::decode(f.encode()), Ok(f));
        }

        /// Every strict prefix of a valid message is rejected, never
        /// misread, and arbitrary bytes never panic.
        #[test]
        fn prefixes_are_rejected(m in peer_message()) {
            let full = m.encode();
            for cut in 0..full.len() {
                prop_assert!(PeerMessage::decode(full.slice(..cut)).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = PeerMessage::decode(Bytes::from(bytes.clone()));
            let _ = ClientFrame::decode(Bytes::from(bytes));
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let e = PeerMessage::decode(Bytes::from_static(&[9])).unwrap_err();
        assert_eq!(e.to_string(), "unknown peer message tag 9");
        let mut big = BytesMut::new();
        big.put_u8(1);
        big.put_u64_le(1);
        big.put_u32_le(u32::MAX);
        let e = PeerMessage::decode(big.freeze()).unwrap_err();
        assert!(e.to_string().contains("value payload length of 4294967295 exceeds the limit of 65536"), "{e}");
    }

    #[test]
    fn payload_is_zero_copy() {
        let v = Value { id: 1, payload: Bytes::from(vec![7u8; 100]) };
        let wire = PeerMessage::Replicate(v).encode();
        let PeerMessage::Replicate(back) = PeerMessage::decode(wire.clone()).unwrap() else { panic!() };
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        assert!(range.contains(&(back.payload.as_ptr() as usize)), "payload was copied");
    }
}

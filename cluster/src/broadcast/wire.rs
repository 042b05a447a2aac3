//! Wire formats of the broadcast service: node-to-node datagrams and
//! client frames. Little-endian, length-checked; decoding never panics and
//! names what is wrong.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest payload a broadcast value may carry.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The most ids one `Have`/`Want` message carries.
pub const MAX_IDS: usize = 65_536;

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
    /// Anti-entropy: summary of what I hold.
    Digest {
        /// Number of values held.
        count: u64,
        /// XOR of a hash of every held id.
        hash: u64,
    },
    /// Anti-entropy: every id I hold (answer to a mismatching digest).
    Have(Vec<u64>),
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
    /// The buffer ended early.
    #[error("truncated {what}: needed {needed} more bytes")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// How many more bytes were needed.
        needed: usize,
    },
    /// An unknown message tag.
    #[error("unknown {kind} tag {tag}")]
    UnknownTag {
        /// Message family.
        kind: &'static str,
        /// The tag.
        tag: u8,
    },
    /// A length field exceeded its limit.
    #[error("{what} of {len} exceeds the limit of {max}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Claimed length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Bytes left after a complete message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// Text that is not UTF-8.
    #[error("error reason is not valid UTF-8")]
    BadUtf8,
}

fn need(buf: &Bytes, n: usize, what: &'static str) -> Result<(), DecodeError> {
    if buf.remaining() < n { Err(DecodeError::Truncated { what, needed: n - buf.remaining() }) } else { Ok(()) }
}

fn get_u64(buf: &mut Bytes, what: &'static str) -> Result<u64, DecodeError> {
    need(buf, 8, what)?;
    Ok(buf.get_u64_le())
}

fn get_len(buf: &mut Bytes, what: &'static str, max: usize) -> Result<usize, DecodeError> {
    need(buf, 4, what)?;
    let len = buf.get_u32_le() as usize;
    if len > max {
        return Err(DecodeError::TooLarge { what, len, max });
    }
    Ok(len)
}

fn get_value(buf: &mut Bytes) -> Result<Value, DecodeError> {
    let id = get_u64(buf, "value id")?;
    let len = get_len(buf, "value payload length", MAX_VALUE_BYTES)?;
    need(buf, len, "value payload")?;
    Ok(Value { id, payload: buf.split_to(len) })
}

fn put_value(out: &mut BytesMut, v: &Value) {
    out.put_u64_le(v.id);
    out.put_u32_le(u32::try_from(v.payload.len()).expect("payload length checked by callers"));
    out.put_slice(&v.payload);
}

fn get_ids(buf: &mut Bytes) -> Result<Vec<u64>, DecodeError> {
    let n = get_len(buf, "id count", MAX_IDS)?;
    need(buf, n * 8, "id list")?;
    Ok((0..n).map(|_| buf.get_u64_le()).collect())
}

fn done(buf: &Bytes) -> Result<(), DecodeError> {
    if buf.has_remaining() { Err(DecodeError::Trailing(buf.remaining())) } else { Ok(()) }
}

impl PeerMessage {
    /// The exact length of [`PeerMessage::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            PeerMessage::Replicate(v) => 12 + v.payload.len(),
            PeerMessage::Stored(_) => 8,
            PeerMessage::Digest { .. } => 16,
            PeerMessage::Have(ids) | PeerMessage::Want(ids) => 4 + 8 * ids.len(),
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
            PeerMessage::Digest { count, hash } => {
                out.put_u8(3);
                out.put_u64_le(*count);
                out.put_u64_le(*hash);
            }
            PeerMessage::Have(ids) | PeerMessage::Want(ids) => {
                out.put_u8(if matches!(self, PeerMessage::Have(_)) { 4 } else { 5 });
                assert!(ids.len() <= MAX_IDS, "id list over the wire limit");
                out.put_u32_le(ids.len() as u32);
                for id in ids {
                    out.put_u64_le(*id);
                }
            }
        }
        debug_assert_eq!(out.len(), self.encoded_len());
        out.freeze()
    }

    /// Decodes a message, borrowing payloads from `buf`.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        need(&buf, 1, "peer message tag")?;
        let msg = match buf.get_u8() {
            1 => PeerMessage::Replicate(get_value(&mut buf)?),
            2 => PeerMessage::Stored(get_u64(&mut buf, "stored id")?),
            3 => PeerMessage::Digest {
                count: get_u64(&mut buf, "digest count")?,
                hash: get_u64(&mut buf, "digest hash")?,
            },
            4 => PeerMessage::Have(get_ids(&mut buf)?),
            5 => PeerMessage::Want(get_ids(&mut buf)?),
            tag => return Err(DecodeError::UnknownTag { kind: "peer message", tag }),
        };
        done(&buf)?;
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
                let r = &reason.as_bytes()[..reason.len().min(1024)];
                out.put_u32_le(r.len() as u32);
                out.put_slice(r);
            }
        }
        out.freeze()
    }

    /// Decodes a frame.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        need(&buf, 1, "client frame tag")?;
        let frame = match buf.get_u8() {
            1 => ClientFrame::Submit(get_value(&mut buf)?),
            2 => ClientFrame::Ack(get_u64(&mut buf, "ack id")?),
            3 => {
                let id = get_u64(&mut buf, "error id")?;
                let len = get_len(&mut buf, "error reason length", 1024)?;
                need(&buf, len, "error reason")?;
                let reason = String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| DecodeError::BadUtf8)?;
                ClientFrame::Error { id, reason }
            }
            tag => return Err(DecodeError::UnknownTag { kind: "client frame", tag }),
        };
        done(&buf)?;
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

    fn peer_message() -> impl Strategy<Value = PeerMessage> {
        prop_oneof![
            value().prop_map(PeerMessage::Replicate),
            any::<u64>().prop_map(PeerMessage::Stored),
            (any::<u64>(), any::<u64>()).prop_map(|(count, hash)| PeerMessage::Digest { count, hash }),
            proptest::collection::vec(any::<u64>(), 0..50).prop_map(PeerMessage::Have),
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

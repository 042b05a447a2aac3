//! The client protocol of replicated partitions, version 1: one frame of a
//! client stream is one [`Request`] or [`Response`].
//!
//! ```text
//! frame    := version:u8 (= 1) kind:u8 req:u64 body
//! Produce    (1): partition:u32 client:u64 seq:u64 payload[rest]
//! Read       (2): partition:u32 offset:u64
//! Produced   (3): offset:u64
//! ReadResult (4): found:u8 payload[rest]      (found 0: nothing there yet; rest empty)
//! NotLeader  (5): known:u8 leader:u64
//! Error      (6): reason[rest] (UTF-8)
//! Commit     (7): partition:u32 client:u64 seq:u64 next:u64 group[rest] (UTF-8, 1..=255 bytes)
//! Committed  (8): next:u64                     (the group's committed offset now)
//! ReadIndex  (9): partition:u32
//! ReadPrefix (10): next:u64                    (offsets below it were committed at a confirmed read index)
//! ```
//!
//! Integers are little-endian; `req` is the client's request id, echoed.
//! Payloads are sliced from the frame, never copied. Decoding reads through
//! [`kaelix_core::codec::Reader`]: it never panics and names what is wrong;
//! a server answers a malformed frame with an `Error` and keeps the
//! connection.

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_core::NodeId;
use kaelix_core::codec::{CodecError, Reader};

/// The version byte this module speaks.
pub const VERSION: u8 = 1;

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Append `payload` to `partition`, once, as operation `seq` of session `client`.
    Produce {
        /// Request id.
        req: u64,
        /// Partition (Raft group).
        partition: u32,
        /// Session id.
        client: u64,
        /// Operation number within the session (retries repeat it).
        seq: u64,
        /// The record.
        payload: Bytes,
    },
    /// Raise consumer group `group`'s committed offset on `partition` to
    /// `next`, as operation `seq` of session `client`.
    Commit {
        /// Request id.
        req: u64,
        /// Partition.
        partition: u32,
        /// Session id.
        client: u64,
        /// Operation number within the session.
        seq: u64,
        /// The consumer group.
        group: String,
        /// The next offset the group reads.
        next: u64,
    },
    /// Read the record at `offset` of `partition`.
    Read {
        /// Request id.
        req: u64,
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
    },
    /// Confirm `partition`'s committed prefix: the leader runs a ReadIndex
    /// round, waits until it has applied the read index, and answers
    /// [`Response::ReadPrefix`] with its partition's next offset then. A
    /// member that serves reads from its own copy of the log asks this
    /// first, and serves once its copy holds that prefix (a linearizable
    /// read through any member; see `broker_node`'s module docs).
    ReadIndex {
        /// Request id.
        req: u64,
        /// Partition.
        partition: u32,
    },
}

/// A server's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The produce committed at `offset`.
    Produced {
        /// Request id.
        req: u64,
        /// Its offset.
        offset: u64,
    },
    /// The record at the offset read, or `None` if nothing is there yet.
    ReadResult {
        /// Request id.
        req: u64,
        /// The record's bytes.
        payload: Option<Bytes>,
    },
    /// The commit applied: the group's committed offset is `next` (the
    /// commit's, or a newer one it already had).
    Committed {
        /// Request id.
        req: u64,
        /// The committed offset.
        next: u64,
    },
    /// Answers [`Request::ReadIndex`]: every offset below `next` was
    /// committed when the leader confirmed the read (after the request
    /// arrived), and none at or after it had been applied by the leader
    /// at that point.
    ReadPrefix {
        /// Request id.
        req: u64,
        /// The partition's next offset at the confirmed read index.
        next: u64,
    },
    /// This node does not lead the partition; try `leader`.
    NotLeader {
        /// Request id.
        req: u64,
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// The request was refused; retrying it unchanged will not help.
    Error {
        /// Request id (0 if the frame did not parse that far).
        req: u64,
        /// What was wrong.
        reason: String,
    },
}

/// Why a frame does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A field cut short, text that is not UTF-8 or bytes after the frame
    /// (each names the field).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A version this node does not speak.
    #[error("unknown protocol version {0}")]
    UnknownVersion(u8),
    /// Not a kind this direction carries.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A field holds an impossible value.
    #[error("invalid frame: {0}")]
    Invalid(&'static str),
}

fn header(kind: u8, req: u64, extra: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(10 + extra);
    b.put_u8(VERSION);
    b.put_u8(kind);
    b.put_u64_le(req);
    b
}

/// The frame header: kind and request id (a frame too short for a whole
/// header is truncated whatever its version byte says).
fn open(r: &mut Reader<'_>) -> Result<(u8, u64), ProtocolError> {
    r.need(10, "frame header")?;
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(ProtocolError::UnknownVersion(version));
    }
    Ok((r.u8("frame kind")?, r.u64("request id")?))
}

impl Request {
    /// The request id.
    pub fn req(&self) -> u64 {
        match self {
            Request::Produce { req, .. }
            | Request::Commit { req, .. }
            | Request::Read { req, .. }
            | Request::ReadIndex { req, .. } => *req,
        }
    }

    /// The partition the request is for.
    pub fn partition(&self) -> u32 {
        match self {
            Request::Produce { partition, .. }
            | Request::Commit { partition, .. }
            | Request::Read { partition, .. }
            | Request::ReadIndex { partition, .. } => *partition,
        }
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Bytes {
        match self {
            Request::Produce { req, partition, client, seq, payload } => {
                let mut b = header(1, *req, 20 + payload.len());
                b.put_u32_le(*partition);
                b.put_u64_le(*client);
                b.put_u64_le(*seq);
                b.put_slice(payload);
                b.freeze()
            }
            Request::Commit { req, partition, client, seq, group, next } => {
                let mut b = header(7, *req, 28 + group.len());
                b.put_u32_le(*partition);
                b.put_u64_le(*client);
                b.put_u64_le(*seq);
                b.put_u64_le(*next);
                b.put_slice(group.as_bytes());
                b.freeze()
            }
            Request::Read { req, partition, offset } => {
                let mut b = header(2, *req, 12);
                b.put_u32_le(*partition);
                b.put_u64_le(*offset);
                b.freeze()
            }
            Request::ReadIndex { req, partition } => {
                let mut b = header(9, *req, 4);
                b.put_u32_le(*partition);
                b.freeze()
            }
        }
    }

    /// Decodes a frame.
    pub fn decode(b: Bytes) -> Result<Request, ProtocolError> {
        let mut r = Reader::new(&b);
        let (kind, req) = open(&mut r)?;
        match kind {
            1 => {
                let partition = r.u32("produce partition")?;
                let client = r.u64("produce client")?;
                let seq = r.u64("produce seq")?;
                Ok(Request::Produce { req, partition, client, seq, payload: r.rest() })
            }
            2 => {
                let partition = r.u32("read partition")?;
                let offset = r.u64("read offset")?;
                r.finish("frame")?;
                Ok(Request::Read { req, partition, offset })
            }
            7 => {
                let partition = r.u32("commit partition")?;
                let client = r.u64("commit client")?;
                let seq = r.u64("commit seq")?;
                let next = r.u64("commit next")?;
                let group = r.str(r.remaining(), "commit group")?.to_owned();
                if group.is_empty() || group.len() > super::MAX_GROUP_NAME {
                    return Err(ProtocolError::Invalid("a consumer group name is 1 to 255 bytes"));
                }
                Ok(Request::Commit { req, partition, client, seq, group, next })
            }
            9 => {
                let partition = r.u32("read-index partition")?;
                r.finish("frame")?;
                Ok(Request::ReadIndex { req, partition })
            }
            k => Err(ProtocolError::UnknownKind(k)),
        }
    }
}

impl Response {
    /// The request id this response answers.
    pub fn req(&self) -> u64 {
        match self {
            Response::Produced { req, .. }
            | Response::Committed { req, .. }
            | Response::ReadPrefix { req, .. }
            | Response::ReadResult { req, .. }
            | Response::NotLeader { req, .. }
            | Response::Error { req, .. } => *req,
        }
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Bytes {
        match self {
            Response::Produced { req, offset } => {
                let mut b = header(3, *req, 8);
                b.put_u64_le(*offset);
                b.freeze()
            }
            Response::ReadResult { req, payload } => {
                let mut b = header(4, *req, 1 + payload.as_ref().map_or(0, Bytes::len));
                b.put_u8(u8::from(payload.is_some()));
                if let Some(p) = payload {
                    b.put_slice(p);
                }
                b.freeze()
            }
            Response::Committed { req, next } => {
                let mut b = header(8, *req, 8);
                b.put_u64_le(*next);
                b.freeze()
            }
            Response::ReadPrefix { req, next } => {
                let mut b = header(10, *req, 8);
                b.put_u64_le(*next);
                b.freeze()
            }
            Response::NotLeader { req, leader } => {
                let mut b = header(5, *req, 9);
                b.put_u8(u8::from(leader.is_some()));
                b.put_u64_le(leader.map_or(0, |l| l.0));
                b.freeze()
            }
            Response::Error { req, reason } => {
                let mut b = header(6, *req, reason.len());
                b.put_slice(reason.as_bytes());
                b.freeze()
            }
        }
    }

    /// Decodes a frame.
    pub fn decode(b: Bytes) -> Result<Response, ProtocolError> {
        let mut r = Reader::new(&b);
        let (kind, req) = open(&mut r)?;
        match kind {
            3 => {
                let offset = r.u64("produced offset")?;
                r.finish("frame")?;
                Ok(Response::Produced { req, offset })
            }
            4 => {
                let payload = match r.u8("read result found")? {
                    0 => {
                        r.finish("frame")?;
                        None
                    }
                    1 => Some(r.rest()),
                    _ => return Err(ProtocolError::Invalid("found flag is not 0 or 1")),
                };
                Ok(Response::ReadResult { req, payload })
            }
            5 => {
                let known = r.u8("not-leader known")?;
                let id = r.u64("not-leader leader")?;
                r.finish("frame")?;
                let leader = match known {
                    0 if id == 0 => None,
                    1 => Some(NodeId(id)),
                    _ => return Err(ProtocolError::Invalid("leader flag is not 0 or 1 (or unknown with an id)")),
                };
                Ok(Response::NotLeader { req, leader })
            }
            6 => {
                let reason = r.str(r.remaining(), "error reason")?.to_owned();
                Ok(Response::Error { req, reason })
            }
            8 => {
                let next = r.u64("committed next")?;
                r.finish("frame")?;
                Ok(Response::Committed { req, next })
            }
            10 => {
                let next = r.u64("read-prefix next")?;
                r.finish("frame")?;
                Ok(Response::ReadPrefix { req, next })
            }
            k => Err(ProtocolError::UnknownKind(k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn requests() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(req, partition, client, seq, p)| Request::Produce {
                    req,
                    partition,
                    client,
                    seq,
                    payload: p.into()
                }),
            (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>(), "[a-z.]{1,20}", any::<u64>()).prop_map(
                |(req, partition, client, seq, group, next)| Request::Commit {
                    req,
                    partition,
                    client,
                    seq,
                    group,
                    next
                }
            ),
            (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(req, partition, offset)| Request::Read {
                req,
                partition,
                offset
            }),
            (any::<u64>(), any::<u32>()).prop_map(|(req, partition)| Request::ReadIndex { req, partition }),
        ]
    }

    fn responses() -> impl Strategy<Value = Response> {
        prop_oneof![
            (any::<u64>(), any::<u64>()).prop_map(|(req, offset)| Response::Produced { req, offset }),
            (any::<u64>(), any::<u64>()).prop_map(|(req, next)| Response::Committed { req, next }),
            (any::<u64>(), any::<u64>()).prop_map(|(req, next)| Response::ReadPrefix { req, next }),
            (any::<u64>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)))
                .prop_map(|(req, p)| Response::ReadResult { req, payload: p.map(Bytes::from) }),
            (any::<u64>(), proptest::option::of(any::<u64>()))
                .prop_map(|(req, l)| Response::NotLeader { req, leader: l.map(NodeId) }),
            (any::<u64>(), "[a-z ]{0,20}").prop_map(|(req, reason)| Response::Error { req, reason }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(r in requests()) {
            let b = r.encode();
            prop_assert_eq!(Request::decode(b.clone()), Ok(r));
            prop_assert!(Request::decode(b.slice(..9)).is_err());
        }

        #[test]
        fn responses_round_trip(r in responses()) {
            prop_assert_eq!(Response::decode(r.encode()), Ok(r));
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let b = Bytes::from(data);
            if let Ok(r) = Request::decode(b.clone()) {
                prop_assert_eq!(r.encode(), b.clone());
            }
            if let Ok(r) = Response::decode(b.clone()) {
                prop_assert_eq!(r.encode(), b);
            }
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            Request::decode(Bytes::from_static(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(ProtocolError::UnknownVersion(2))
        );
        assert_eq!(
            Request::decode(Bytes::from_static(&[1, 11, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(ProtocolError::UnknownKind(11))
        );
        assert_eq!(
            Request::decode(Bytes::from_static(&[1, 2, 0, 0, 0, 0, 0, 0, 0, 0])),
            Err(CodecError::Truncated { field: "read partition", needed: 4 }.into())
        );
        // A frame too short for its header is truncated, whatever its version.
        assert_eq!(
            Response::decode(Bytes::from_static(&[2, 3])),
            Err(CodecError::Truncated { field: "frame header", needed: 8 }.into())
        );
        let e = Response::decode(Bytes::from_static(&[1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9]))
            .unwrap_err();
        assert_eq!(e.to_string(), "1 trailing bytes after the frame");
        let mut empty_group = vec![1, 7, 0, 0, 0, 0, 0, 0, 0, 0];
        empty_group.extend([0; 28]);
        assert_eq!(
            Request::decode(Bytes::from(empty_group)),
            Err(ProtocolError::Invalid("a consumer group name is 1 to 255 bytes"))
        );
        let e = Response::decode(Bytes::from_static(&[1, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0xff])).unwrap_err();
        assert!(matches!(e, ProtocolError::Codec(CodecError::Invalid { field: "error reason", .. })), "{e}");
    }
}

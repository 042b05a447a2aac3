//! SWIM wire format, version 1: one datagram is one [`Packet`].
//!
//! ```text
//! packet  := version:u8 (= 1)  kind:u8  body  count:u16  update{count}
//! body    := Ping    (kind 1): seq:u64
//!          | PingReq (kind 2): seq:u64 target:u64 flags:u8 (bit 0: answer with Nack; other bits 0)
//!          | Ack     (kind 3): seq:u64
//!          | Nack    (kind 4): seq:u64
//!          | Join    (kind 5), Sync (kind 6), Gossip (kind 7): empty
//! update  := member:u64 incarnation:u64 state:u8 detail
//! detail  := Alive   (state 1): len:u16 (≤ MAX_METADATA) metadata[len]
//!          | Suspect (state 2): accuser:u64
//!          | Dead    (state 3), Left (state 4): empty
//! ```
//!
//! Integers are little-endian. The encoding is canonical: every packet has
//! exactly one encoding, so `decode(b)` succeeding implies `encode(decode(b)) == b`
//! (the fuzz target checks it). Decoding reads through
//! [`kaelix_core::codec::Reader`]: it never panics and names what is wrong;
//! metadata is sliced from the received buffer, not copied.
//!
//! A new version gets a new version byte; a node drops (and counts) packets
//! of a version it does not speak, as it drops any malformed packet.

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_core::NodeId;
use kaelix_core::codec::{self, CodecError, Reader};

/// The version byte this module writes and reads.
pub const VERSION: u8 = 1;
/// The largest metadata a member may carry.
pub const MAX_METADATA: usize = 512;
/// The most updates one packet may carry.
pub const MAX_UPDATES: usize = 4096;
/// Bytes of a packet before its updates, at most (a `PingReq`).
pub const MAX_HEADER_BYTES: usize = 2 + 17 + 2;
/// Bytes of the largest update (an `Alive` with [`MAX_METADATA`] bytes).
pub const MAX_UPDATE_BYTES: usize = 17 + 2 + MAX_METADATA;

/// What a packet asks for; piggybacked updates travel in [`Packet::updates`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// A direct probe: answer `Ack { seq }`.
    Ping {
        /// The prober's sequence number.
        seq: u64,
    },
    /// An indirect probe: ping `target` for me and relay its `Ack { seq }`.
    PingReq {
        /// The requester's sequence number (echoed in the relayed Ack/Nack).
        seq: u64,
        /// The member to probe.
        target: NodeId,
        /// Answer `Nack { seq }` if the target stays silent (Lifeguard).
        nack: bool,
    },
    /// Answer to a `Ping` (or relayed answer to a `PingReq`).
    Ack {
        /// The sequence number being answered.
        seq: u64,
    },
    /// A relay's report that the target did not answer in time: the path
    /// requester → relay works (Lifeguard).
    Nack {
        /// The requester's sequence number.
        seq: u64,
    },
    /// Push-pull request: the updates are the sender's whole member list;
    /// merge them and answer with `Sync`. Sent to seeds on join and on
    /// announce.
    Join,
    /// Push-pull answer: the updates are the sender's whole member list.
    Sync,
    /// Updates only, no answer expected (sent on leave).
    Gossip,
}

/// The state an update claims for a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateKind {
    /// The member is alive and carries this metadata.
    Alive {
        /// At most [`MAX_METADATA`] bytes.
        metadata: Bytes,
    },
    /// `accuser` failed to probe the member.
    Suspect {
        /// Who raised or confirms the suspicion.
        accuser: NodeId,
    },
    /// The member is declared failed.
    Dead,
    /// The member left gracefully.
    Left,
}

/// A statement about one member at one incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// Whom it is about.
    pub member: NodeId,
    /// The member's incarnation the statement refers to.
    pub incarnation: u64,
    /// What it says.
    pub kind: UpdateKind,
}

impl Update {
    /// The exact encoded length.
    pub fn encoded_len(&self) -> usize {
        17 + match &self.kind {
            UpdateKind::Alive { metadata } => 2 + metadata.len(),
            UpdateKind::Suspect { .. } => 8,
            UpdateKind::Dead | UpdateKind::Left => 0,
        }
    }

    fn put(&self, out: &mut BytesMut) {
        out.put_u64_le(self.member.0);
        out.put_u64_le(self.incarnation);
        match &self.kind {
            UpdateKind::Alive { metadata } => {
                assert!(metadata.len() <= MAX_METADATA, "metadata over the wire limit");
                out.put_u8(1);
                codec::put_bytes_u16(out, metadata);
            }
            UpdateKind::Suspect { accuser } => {
                out.put_u8(2);
                out.put_u64_le(accuser.0);
            }
            UpdateKind::Dead => out.put_u8(3),
            UpdateKind::Left => out.put_u8(4),
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let member = NodeId(r.u64("update member")?);
        let incarnation = r.u64("update incarnation")?;
        let kind = match r.u8("update state")? {
            1 => {
                let len = codec::check_len("metadata", r.u16("metadata length")?.into(), MAX_METADATA)?;
                UpdateKind::Alive { metadata: r.bytes(len, "metadata")? }
            }
            2 => UpdateKind::Suspect { accuser: NodeId(r.u64("suspect accuser")?) },
            3 => UpdateKind::Dead,
            4 => UpdateKind::Left,
            tag => return Err(DecodeError::UnknownTag { kind: "update state", tag }),
        };
        Ok(Update { member, incarnation, kind })
    }
}

/// One datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// What the packet asks for.
    pub message: Message,
    /// Piggybacked updates (for `Join`/`Sync`: the sender's member list).
    pub updates: Vec<Update>,
}

/// A decoding failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field cut short, a length or count over its limit, or bytes after
    /// a complete packet (each names the field).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A version this node does not speak.
    #[error("unsupported wire version {0} (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// An unknown tag.
    #[error("unknown {kind} tag {tag}")]
    UnknownTag {
        /// Which tag.
        kind: &'static str,
        /// Its value.
        tag: u8,
    },
    /// Flag bits that version 1 does not define.
    #[error("undefined ping-req flag bits {0:#04x}")]
    BadFlags(u8),
}

impl Message {
    fn tag(self) -> u8 {
        match self {
            Message::Ping { .. } => 1,
            Message::PingReq { .. } => 2,
            Message::Ack { .. } => 3,
            Message::Nack { .. } => 4,
            Message::Join => 5,
            Message::Sync => 6,
            Message::Gossip => 7,
        }
    }

    fn body_len(self) -> usize {
        match self {
            Message::Ping { .. } | Message::Ack { .. } | Message::Nack { .. } => 8,
            Message::PingReq { .. } => 17,
            Message::Join | Message::Sync | Message::Gossip => 0,
        }
    }
}

impl Packet {
    /// A packet with no updates.
    pub fn new(message: Message) -> Self {
        Packet { message, updates: Vec::new() }
    }

    /// Bytes of the encoding before the updates.
    pub fn header_len(message: Message) -> usize {
        2 + message.body_len() + 2
    }

    /// The exact length of [`Packet::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        Self::header_len(self.message) + self.updates.iter().map(Update::encoded_len).sum::<usize>()
    }

    /// Encodes the packet. Panics if it breaks a wire limit (callers bound
    /// metadata and update counts).
    pub fn encode(&self) -> Bytes {
        assert!(self.updates.len() <= MAX_UPDATES, "too many updates for one packet");
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_u8(VERSION);
        out.put_u8(self.message.tag());
        match self.message {
            Message::Ping { seq } | Message::Ack { seq } | Message::Nack { seq } => out.put_u64_le(seq),
            Message::PingReq { seq, target, nack } => {
                out.put_u64_le(seq);
                out.put_u64_le(target.0);
                out.put_u8(u8::from(nack));
            }
            Message::Join | Message::Sync | Message::Gossip => {}
        }
        out.put_u16_le(self.updates.len() as u16);
        for u in &self.updates {
            u.put(&mut out);
        }
        debug_assert_eq!(out.len(), self.encoded_len());
        out.freeze()
    }

    /// Decodes a packet, borrowing metadata from `buf`.
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(&buf);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let message = match r.u8("message kind")? {
            1 => Message::Ping { seq: r.u64("ping seq")? },
            2 => {
                let seq = r.u64("ping-req seq")?;
                let target = NodeId(r.u64("ping-req target")?);
                let flags = r.u8("ping-req flags")?;
                if flags > 1 {
                    return Err(DecodeError::BadFlags(flags));
                }
                Message::PingReq { seq, target, nack: flags == 1 }
            }
            3 => Message::Ack { seq: r.u64("ack seq")? },
            4 => Message::Nack { seq: r.u64("nack seq")? },
            5 => Message::Join,
            6 => Message::Sync,
            7 => Message::Gossip,
            tag => return Err(DecodeError::UnknownTag { kind: "message kind", tag }),
        };
        let count = r.len_u16("update count", MAX_UPDATES)?;
        // Every update takes at least 17 bytes: refuse early instead of
        // reserving for a count the buffer cannot hold.
        r.need(count * 17, "updates")?;
        let mut updates = Vec::with_capacity(count);
        for _ in 0..count {
            updates.push(Update::get(&mut r)?);
        }
        r.finish("packet")?;
        Ok(Packet { message, updates })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = NodeId> {
        prop_oneof![0u64..8, any::<u64>()].prop_map(NodeId)
    }

    pub(crate) fn update() -> impl Strategy<Value = Update> {
        let kind = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..=MAX_METADATA)
                .prop_map(|m| UpdateKind::Alive { metadata: Bytes::from(m) }),
            node().prop_map(|accuser| UpdateKind::Suspect { accuser }),
            Just(UpdateKind::Dead),
            Just(UpdateKind::Left),
        ];
        (node(), any::<u64>(), kind).prop_map(|(member, incarnation, kind)| Update { member, incarnation, kind })
    }

    pub(crate) fn packet() -> impl Strategy<Value = Packet> {
        let message = prop_oneof![
            any::<u64>().prop_map(|seq| Message::Ping { seq }),
            (any::<u64>(), node(), any::<bool>()).prop_map(|(seq, target, nack)| Message::PingReq {
                seq,
                target,
                nack
            }),
            any::<u64>().prop_map(|seq| Message::Ack { seq }),
            any::<u64>().prop_map(|seq| Message::Nack { seq }),
            Just(Message::Join),
            Just(Message::Sync),
            Just(Message::Gossip),
        ];
        (message, proptest::collection::vec(update(), 0..6)).prop_map(|(message, updates)| Packet { message, updates })
    }

    proptest! {
        #[test]
        fn packets_round_trip(p in packet()) {
            let wire = p.encode();
            prop_assert_eq!(wire.len(), p.encoded_len());
            prop_assert_eq!(Packet::decode(wire), Ok(p));
        }

        /// Every strict prefix of a valid packet is rejected, never misread.
        #[test]
        fn prefixes_are_rejected(p in packet()) {
            let full = p.encode();
            for cut in 0..full.len() {
                prop_assert!(Packet::decode(full.slice(..cut)).is_err(), "prefix of {} bytes accepted", cut);
            }
        }

        /// Arbitrary bytes never panic, and whatever decodes re-encodes to
        /// the same bytes (the encoding is canonical).
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..96), valid_header in any::<bool>()) {
            if valid_header && !bytes.is_empty() {
                bytes[0] = VERSION;
            }
            if let Ok(p) = Packet::decode(Bytes::from(bytes.clone())) {
                prop_assert_eq!(&p.encode()[..], &bytes[..]);
            }
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Packet::decode(Bytes::from_static(&[2, 1])).unwrap_err();
        assert_eq!(e.to_string(), "unsupported wire version 2 (this node speaks 1)");
        let e = Packet::decode(Bytes::from_static(&[1, 9])).unwrap_err();
        assert_eq!(e.to_string(), "unknown message kind tag 9");
        let e = Packet::decode(Bytes::from_static(&[1, 1, 0, 0])).unwrap_err();
        assert_eq!(e.to_string(), "truncated ping seq: needed 6 more bytes");
        let mut b = BytesMut::new();
        b.put_slice(&[1, 2]);
        b.put_u64_le(1);
        b.put_u64_le(2);
        b.put_u8(2);
        b.put_u16_le(0);
        assert_eq!(Packet::decode(b.freeze()).unwrap_err(), DecodeError::BadFlags(2));
        let mut b = BytesMut::new();
        b.put_slice(&[1, 5]);
        b.put_u16_le(1);
        b.put_u64_le(1);
        b.put_u64_le(1);
        b.put_u8(1);
        b.put_u16_le(513);
        let e = Packet::decode(b.freeze()).unwrap_err();
        assert_eq!(e.to_string(), "metadata of 513 exceeds the limit of 512");
        let mut b = BytesMut::new();
        b.put_slice(&[1, 7]);
        b.put_u16_le(u16::MAX);
        let e = Packet::decode(b.freeze()).unwrap_err();
        assert_eq!(e.to_string(), "update count of 65535 exceeds the limit of 4096");
        let mut wire = Packet::new(Message::Gossip).encode().to_vec();
        wire.push(0);
        let e = Packet::decode(Bytes::from(wire)).unwrap_err();
        assert_eq!(e, DecodeError::Codec(CodecError::Trailing { kind: "packet", len: 1 }));
        assert_eq!(e.to_string(), "1 trailing bytes after the packet");
    }

    #[test]
    fn layout_is_as_documented() {
        let p = Packet {
            message: Message::Ping { seq: 0x0102 },
            updates: vec![Update {
                member: NodeId(3),
                incarnation: 4,
                kind: UpdateKind::Alive { metadata: Bytes::from_static(b"ab") },
            }],
        };
        let expected: Vec<u8> = [
            &[1u8, 1][..],
            &0x0102u64.to_le_bytes(),
            &1u16.to_le_bytes(),
            &3u64.to_le_bytes(),
            &4u64.to_le_bytes(),
            &[1],
            &2u16.to_le_bytes(),
            b"ab",
        ]
        .concat();
        assert_eq!(&p.encode()[..], &expected[..]);
        assert_eq!(Packet::header_len(Message::PingReq { seq: 0, target: NodeId(0), nack: false }), MAX_HEADER_BYTES);
        let biggest = Update {
            member: NodeId(0),
            incarnation: 0,
            kind: UpdateKind::Alive { metadata: Bytes::from(vec![0; MAX_METADATA]) },
        };
        assert_eq!(biggest.encoded_len(), MAX_UPDATE_BYTES);
    }

    #[test]
    fn metadata_is_zero_copy() {
        let p = Packet {
            message: Message::Sync,
            updates: vec![Update {
                member: NodeId(1),
                incarnation: 1,
                kind: UpdateKind::Alive { metadata: Bytes::from(vec![7u8; 100]) },
            }],
        };
        let wire = p.encode();
        let back = Packet::decode(wire.clone()).unwrap();
        let UpdateKind::Alive { metadata } = &back.updates[0].kind else { panic!() };
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        assert!(range.contains(&(metadata.as_ptr() as usize)), "metadata was copied");
    }
}

//! Errors: [`ProtocolError`] (bytes that are not a valid frame, found by
//! the decoders) and [`ErrorCode`] (the stable numeric codes an `Error`
//! frame carries to the peer).
//!
//! A receiver that cannot decode a frame answers with an `Error` frame whose
//! code is [`ProtocolError::code`], and closes the connection only if
//! [`ProtocolError::closes_connection`] says the byte stream itself can no
//! longer be trusted (a frame length out of range): every other problem is
//! confined to one frame, whose length told the decoder where the next one
//! starts.

use std::fmt;

use kaelix_broker::message::DecodeError;
use kaelix_broker::topic::{Topic, TopicError};
use kaelix_core::codec::CodecError;

use crate::types::NameError;
use crate::{FRAME_HEADER_BYTES, HELLO_MAGIC};

/// Why bytes are not a valid frame of protocol version 1. Each variant names
/// the field or the rule that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A field cut short, a length over its limit, bytes after the last
    /// field, text that is not UTF-8 (each names the field).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The length prefix announces more than the receiver accepts. The
    /// frame is refused before any of it is buffered.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced length (bytes after the length prefix).
        len: u64,
        /// The receiver's limit.
        max: usize,
    },
    /// The length prefix announces less than the kind and correlation id.
    #[error("frame of {len} bytes is shorter than the {FRAME_HEADER_BYTES}-byte frame header")]
    FrameTooShort {
        /// The announced length.
        len: usize,
    },
    /// A kind this version does not define in this direction.
    #[error("frame kind {kind:#04x} is not a {direction} kind of protocol version 1")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
        /// `"request"` or `"server frame"`.
        direction: &'static str,
    },
    /// A `Hello` without the protocol's magic: the peer speaks something else.
    #[error("hello magic {found:02x?} is not {HELLO_MAGIC:02x?}: not a Kaelix native client")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// An enumeration field holds a value the version does not define.
    #[error("invalid {field}: {value} is not a defined value")]
    BadEnum {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// A topic or pattern field is not a valid topic or pattern.
    #[error("invalid {field}: {source}")]
    Topic {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        source: TopicError,
    },
    /// A name field (group, queue group, client, address) is invalid.
    #[error("invalid {field}: {source}")]
    Name {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        source: NameError,
    },
    /// A message inside the frame does not decode.
    #[error("invalid message in {field}: {source}")]
    Message {
        /// The field (which list the message is in).
        field: &'static str,
        /// The message codec's error.
        source: DecodeError,
    },
    /// A message in a `Produce` names another topic than the request.
    #[error("produce to {expected} carries a message for {found}")]
    TopicMismatch {
        /// The request's topic.
        expected: Topic,
        /// The message's.
        found: Topic,
    },
    /// A message's partition or offset is present where the frame forbids
    /// it, missing where the frame requires it, or contradicts the frame.
    #[error("{frame}: {why}")]
    MessagePosition {
        /// The frame kind.
        frame: &'static str,
        /// The rule broken.
        why: &'static str,
    },
    /// A server push (which always carries correlation id 0) with another id.
    #[error("{frame} push carries correlation id {correlation}; pushes carry 0")]
    PushCorrelation {
        /// The frame kind.
        frame: &'static str,
        /// The id found.
        correlation: u32,
    },
}

impl ProtocolError {
    /// The code an `Error` frame answering this problem carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ProtocolError::UnknownKind { .. } => ErrorCode::UnsupportedFrame,
            ProtocolError::Topic { .. } | ProtocolError::TopicMismatch { .. } => ErrorCode::InvalidTopic,
            ProtocolError::Message { source: DecodeError::Topic(_), .. } => ErrorCode::InvalidTopic,
            ProtocolError::Message {
                source: DecodeError::Codec(CodecError::TooLarge { field: "payload length", .. }),
                ..
            }
            | ProtocolError::Codec(CodecError::TooLarge { field: "message length", .. }) => ErrorCode::PayloadTooLarge,
            ProtocolError::Codec(_)
            | ProtocolError::FrameTooShort { .. }
            | ProtocolError::BadMagic { .. }
            | ProtocolError::BadEnum { .. }
            | ProtocolError::Name { .. }
            | ProtocolError::Message { .. }
            | ProtocolError::MessagePosition { .. }
            | ProtocolError::PushCorrelation { .. } => ErrorCode::MalformedFrame,
        }
    }

    /// Whether the connection must be closed after answering: the length
    /// prefix was out of range, so where the next frame starts is unknown
    /// (or the peer does not speak this protocol at all).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::FrameTooShort { .. } | ProtocolError::BadMagic { .. }
        )
    }
}

/// The stable numeric codes of `Error` frames (see PROTOCOL.md, "Errors").
/// A code's number never changes; new codes come with a new protocol
/// version, so a peer only ever sees codes of the version it negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame's body does not decode (the connection stays open).
    MalformedFrame,
    /// A frame's length prefix is over the receiver's limit (closes).
    FrameTooLarge,
    /// No protocol version in common (closes).
    UnsupportedVersion,
    /// A frame kind the receiver does not know (the connection stays open).
    UnsupportedFrame,
    /// A frame other than `Hello` before the handshake completed (closes).
    HandshakeRequired,
    /// A request that decodes but asks for something impossible (a zero
    /// partition count, a second `Hello`, `max_messages` of 0, …).
    InvalidRequest,
    /// The connection may not do this.
    Unauthorized,
    /// The server is shedding load or a buffer is full: retry later.
    Throttled,
    /// The topic does not exist.
    UnknownTopic,
    /// `CreateTopic` of a topic that exists.
    TopicExists,
    /// A topic or pattern is not valid.
    InvalidTopic,
    /// The topic has no such partition.
    UnknownPartition,
    /// A message is over the payload (or encoded message) limit.
    PayloadTooLarge,
    /// More messages in one request than the server's `max_batch`.
    BatchTooLarge,
    /// A fetch offset below the low watermark or above the high watermark.
    OffsetOutOfRange,
    /// This server does not lead the partition (the error may carry a hint).
    NotLeader,
    /// The partition cannot serve now (no quorum, recovering): retry.
    Unavailable,
    /// The acknowledgement did not arrive in time; the outcome is unknown.
    Timeout,
    /// No subscription with this id on the connection.
    UnknownSubscription,
    /// A subscription with this id is already open on the connection.
    SubscriptionExists,
    /// No such consumer group.
    UnknownGroup,
    /// The member is not (or no longer) in the group: join again.
    UnknownMember,
    /// A commit from an older generation: a rebalance happened.
    StaleGeneration,
    /// The partition is assigned to another member.
    NotAssigned,
    /// The server is shutting down.
    ShuttingDown,
    /// A bug or an unexpected failure on the server.
    Internal,
}

/// Every code with its number, in numeric order (the single table both
/// directions of the mapping are read from).
const CODES: [(ErrorCode, u16); 26] = [
    (ErrorCode::MalformedFrame, 1),
    (ErrorCode::FrameTooLarge, 2),
    (ErrorCode::UnsupportedVersion, 3),
    (ErrorCode::UnsupportedFrame, 4),
    (ErrorCode::HandshakeRequired, 5),
    (ErrorCode::InvalidRequest, 6),
    (ErrorCode::Unauthorized, 10),
    (ErrorCode::Throttled, 11),
    (ErrorCode::UnknownTopic, 20),
    (ErrorCode::TopicExists, 21),
    (ErrorCode::InvalidTopic, 22),
    (ErrorCode::UnknownPartition, 23),
    (ErrorCode::PayloadTooLarge, 30),
    (ErrorCode::BatchTooLarge, 31),
    (ErrorCode::OffsetOutOfRange, 32),
    (ErrorCode::NotLeader, 40),
    (ErrorCode::Unavailable, 41),
    (ErrorCode::Timeout, 42),
    (ErrorCode::UnknownSubscription, 50),
    (ErrorCode::SubscriptionExists, 51),
    (ErrorCode::UnknownGroup, 60),
    (ErrorCode::UnknownMember, 61),
    (ErrorCode::StaleGeneration, 62),
    (ErrorCode::NotAssigned, 63),
    (ErrorCode::ShuttingDown, 90),
    (ErrorCode::Internal, 99),
];

impl ErrorCode {
    /// Every code, in numeric order.
    pub fn all() -> impl ExactSizeIterator<Item = ErrorCode> {
        CODES.iter().map(|&(c, _)| c)
    }

    /// The code's number on the wire.
    pub fn as_u16(self) -> u16 {
        CODES.iter().find(|&&(c, _)| c == self).map(|&(_, n)| n).expect("every code is in the table")
    }

    /// The code numbered `n`, if version 1 defines one.
    pub fn from_u16(n: u16) -> Option<ErrorCode> {
        CODES.iter().find(|&&(_, m)| m == n).map(|&(c, _)| c)
    }

    /// Whether the same request may succeed if retried later unchanged
    /// (after following a `NotLeader` hint, backing off, or reconnecting).
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::Throttled
                | ErrorCode::NotLeader
                | ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::ShuttingDown
        )
    }
}

impl fmt::Display for ErrorCode {
    /// The variant's name and number, e.g. `UnknownTopic (20)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} ({})", self.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_distinct() {
        // Pinned: these numbers are the wire contract (PROTOCOL.md).
        assert_eq!(ErrorCode::MalformedFrame.as_u16(), 1);
        assert_eq!(ErrorCode::NotLeader.as_u16(), 40);
        assert_eq!(ErrorCode::Internal.as_u16(), 99);
        let numbers: Vec<u16> = ErrorCode::all().map(ErrorCode::as_u16).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "table in strictly increasing order: {numbers:?}");
        for code in ErrorCode::all() {
            assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(7), None);
        assert_eq!(ErrorCode::UnknownTopic.to_string(), "UnknownTopic (20)");
    }

    #[test]
    fn only_framing_errors_close_the_connection() {
        assert!(ProtocolError::FrameTooLarge { len: 1 << 30, max: 1 << 24 }.closes_connection());
        assert!(ProtocolError::FrameTooShort { len: 2 }.closes_connection());
        assert!(!ProtocolError::UnknownKind { kind: 0x7e, direction: "request" }.closes_connection());
        assert_eq!(ProtocolError::UnknownKind { kind: 0x7e, direction: "request" }.code(), ErrorCode::UnsupportedFrame);
        let truncated = ProtocolError::from(CodecError::Truncated { field: "fetch offset", needed: 3 });
        assert!(!truncated.closes_connection());
        assert_eq!(truncated.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn retriable_codes() {
        let retriable: Vec<ErrorCode> = ErrorCode::all().filter(|c| c.is_retriable()).collect();
        assert_eq!(
            retriable,
            [
                ErrorCode::Throttled,
                ErrorCode::NotLeader,
                ErrorCode::Unavailable,
                ErrorCode::Timeout,
                ErrorCode::ShuttingDown
            ]
        );
    }
}

//! Kaelix's native protocol: the binary frames a client and a server
//! exchange over one TCP connection. `PROTOCOL.md` at the repository root
//! is the normative specification; this crate implements exactly it and is
//! shared by the server and `kaelix-client`.
//!
//! # The model
//!
//! A connection is a byte stream of **frames**: a big-endian `u32` length,
//! then a kind byte, a `u32` correlation id and the kind's body
//! ([`Frame`]). The client opens with [`Request::Hello`] naming the
//! versions it speaks; the server answers [`Response::HelloOk`] with the
//! chosen version and its limits ([`ServerInfo`]), or an `Error` and closes.
//!
//! After that the client sends [`Request`]s, each with a correlation id of
//! its choosing; the server answers each with one [`Response`] echoing the
//! id (in any order: a long-polling fetch does not hold up a ping), and
//! sends [`Push`]es for push subscriptions on its own. A client decodes
//! both as a [`ServerFrame`].
//!
//! Messages travel in the broker's own encoding
//! ([`kaelix_broker::message::Message`]), so the server hands decoded
//! messages to the broker as they are, and a payload is never copied
//! between the socket buffer and the partition log.
//!
//! # Decoding
//!
//! [`FrameDecoder`] cuts the stream into [`Frame`]s, refusing an oversize
//! length before it buffers the frame. [`Request::decode`] and
//! [`ServerFrame::decode`] turn a frame into a typed value, reading every
//! field through [`kaelix_core::codec::Reader`]: lengths and counts are
//! checked before anything is sliced or reserved, enumerations and text are
//! validated, and bytes after the last field are an error — decoding never
//! panics, and every value has exactly one encoding. A problem is a
//! [`ProtocolError`]; its [`ProtocolError::code`] is what the server answers
//! with, and [`ProtocolError::closes_connection`] whether it must hang up.
//!
//! ```
//! use bytes::BytesMut;
//! use kaelix_protocol::{Acks, FrameDecoder, Message, Request, Topic, DEFAULT_MAX_FRAME_BYTES};
//!
//! let topic = Topic::new("orders.eu").unwrap();
//! let message = Message::builder().topic(&topic).payload("42 widgets").key("customer-7").build().unwrap();
//! let produce = Request::Produce { topic, partition: None, acks: Acks::Leader, messages: vec![message] };
//! let mut wire = BytesMut::new();
//! produce.encode(17, &mut wire);
//!
//! // The server's side: bytes arrive in pieces.
//! let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
//! decoder.extend(&wire[..10]);
//! assert_eq!(decoder.next_frame().unwrap(), None);
//! decoder.extend(&wire[10..]);
//! let frame = decoder.next_frame().unwrap().expect("a whole frame");
//! assert_eq!(frame.correlation, 17);
//! assert_eq!(Request::decode(&frame).unwrap(), produce);
//! ```

mod error;
mod frame;
mod request;
mod response;
mod types;
mod wire;

#[cfg(test)]
mod tests;

pub use self::error::{ErrorCode, ProtocolError};
pub use self::frame::{Frame, FrameDecoder, FrameKind, LENGTH_PREFIX_BYTES};
pub use self::request::Request;
pub use self::response::{Push, Response, ServerFrame};
pub use self::types::{
    Acks, Credentials, FetchLimits, LeaderHint, Name, NameError, PartitionInfo, Position, Retention, ServerInfo,
    StorageSpec, TopicDescription, TopicSummary,
};
pub use self::wire::MAX_MESSAGE_BYTES;
pub use kaelix_broker::message::Message;
pub use kaelix_broker::topic::{Pattern, Topic};
pub use kaelix_broker::{MemberId, StartPosition};
pub use kaelix_core::NodeId;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Every version this crate speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[u16] = &[PROTOCOL_VERSION];

/// The first four bytes of a `Hello` body: "KXNP" (Kaelix native protocol).
pub const HELLO_MAGIC: [u8; 4] = *b"KXNP";

/// The default limit on a frame, counted after its length prefix (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Bytes of every frame after its length prefix and before its body: the
/// kind (1) and the correlation id (4).
pub const FRAME_HEADER_BYTES: usize = 5;

/// Longest name (group, queue group, client, server version, address).
pub const MAX_NAME_BYTES: usize = 255;

/// Longest error message; longer ones are cut when encoded.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// Longest token or password a `Hello` may carry.
pub const MAX_SECRET_BYTES: usize = 4096;

/// Most versions a `Hello` may offer.
pub const MAX_HELLO_VERSIONS: usize = 16;

/// The version a server speaking [`SUPPORTED_VERSIONS`] chooses from the
/// client's `offered` ones: the highest both speak, `None` if there is none
/// (the server then answers `UnsupportedVersion` and closes).
pub fn negotiate(offered: &[u16]) -> Option<u16> {
    offered.iter().copied().filter(|v| SUPPORTED_VERSIONS.contains(v)).max()
}

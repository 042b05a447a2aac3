//! The message model: what producers publish, the broker stores and
//! consumers read, and its binary encoding.
//!
//! # Life of a message
//!
//! 1. A producer builds a [`Message`] with [`Message::builder`]: a [`Topic`],
//!    an opaque payload, optionally a partitioning key and [`Headers`]. Every
//!    limit is checked once, there; a `Message` that exists is valid.
//! 2. Until it is *stamped* it has no identity: its id is [`Uuid::nil`] and
//!    its timestamp `WallTime(0)`. Whoever accepts it (normally the broker)
//!    calls [`Message::stamp`] with an id from [`new_message_id`] and the
//!    runtime's wall clock. Core never reads a clock or draws OS randomness,
//!    so both are handed in; under the simulator the id is a function of the
//!    seed.
//! 3. On append the broker records where the message landed with
//!    [`Message::with_partition_offset`].
//!
//! [`CompactMessage`] is the same record without key, reply-to and headers, for paths
//! that only need the payload. [`MessageBatch`] groups messages for
//! transfer and splits them to fit a byte or count budget.
//!
//! # Zero copy
//!
//! A [`Message`] is one pointer to a shared body: cloning it (into a log, a
//! subscriber's buffer, a delivery) copies nothing. Payload, key and header
//! values are [`Bytes`], and [`Message::decode`] returns slices of the input
//! buffer rather than copies. Only the topic and header names (short,
//! validated text) are copied out.
//!
//! # Encoding (format version 1)
//!
//! Little-endian, no padding. Decoding reads through
//! [`kaelix_core::codec::Reader`]: lengths are checked against the input and
//! against the limits of this module before anything is sliced, and bytes
//! after the last field are an error, so decoding never panics and every
//! valid message has exactly one encoding.
//!
//! | size | field |
//! |---|---|
//! | 1 | format: [`MESSAGE_FORMAT_V1`] (`0x01`) or [`COMPACT_FORMAT_V1`] (`0x81`) |
//! | 16 | id (RFC 9562 byte order) |
//! | 8 | timestamp, ns since the Unix epoch |
//! | 1 | flags: bit 0 partition, bit 1 offset, bit 2 key, bit 3 reply-to (messages only); other bits zero |
//! | 4 | partition, if flagged |
//! | 8 | offset, if flagged |
//! | 1 + n | topic length (1..=255), topic |
//! | 4 + n | key length (≤ [`MAX_KEY_BYTES`]), key, if flagged |
//! | 1 + n | reply-to topic length (1..=255), reply-to topic, if flagged |
//! | 4 + n | payload length (≤ [`MAX_PAYLOAD_BYTES`]), payload |
//! | 1 | header count (≤ [`MAX_HEADERS`]); messages only |
//! | per header: 1 + n, 4 + m | name length, name, value length, value |
//!
//! A compact message stops after the payload.

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::topic::{Topic, TopicError};
use kaelix_core::codec::{self, CodecError, Reader};
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::time::WallTime;

/// Largest payload of one message, in bytes (8 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;
/// Largest partitioning key, in bytes (64 KiB).
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Most headers on one message.
pub const MAX_HEADERS: usize = 64;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 255;
/// Most bytes of header names plus header values on one message (64 KiB).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// First byte of an encoded [`Message`]: format version 1.
pub const MESSAGE_FORMAT_V1: u8 = 0x01;
/// First byte of an encoded [`CompactMessage`]: the high bit marks the
/// compact kind, the low bits are the version (1).
pub const COMPACT_FORMAT_V1: u8 = 0x81;

const FLAG_PARTITION: u8 = 1 << 0;
const FLAG_OFFSET: u8 = 1 << 1;
const FLAG_KEY: u8 = 1 << 2;
const FLAG_REPLY: u8 = 1 << 3;

/// Format byte, id, timestamp, flags, topic length.
const FIXED_HEAD_BYTES: usize = 1 + 16 + 8 + 1 + 1;
/// Name length byte plus value length word, per header.
const PER_HEADER_BYTES: usize = 1 + 4;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a header cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The name is empty.
    #[error("header name is empty")]
    EmptyName,
    /// The name is longer than [`MAX_HEADER_NAME_BYTES`].
    #[error("header name {name:?} is {len} bytes; the limit is {MAX_HEADER_NAME_BYTES}")]
    NameTooLong {
        /// The start of the name (truncated for display).
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The name contains a byte outside printable ASCII, a space or a `:`.
    #[error("header name {name:?}: byte {byte:#04x} at {at} is not allowed (printable ASCII, no space, no ':')")]
    BadNameByte {
        /// The name (lossy if it was not UTF-8).
        name: String,
        /// The offending byte.
        byte: u8,
        /// Its offset in the name.
        at: usize,
    },
    /// Adding a header would exceed [`MAX_HEADERS`].
    #[error("too many headers; the limit is {max}")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// Names plus values would exceed [`MAX_HEADER_BYTES`].
    #[error("headers would total {len} bytes; the limit is {max}")]
    TooLarge {
        /// The total the change would have produced.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why [`MessageBuilder::build`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// No topic was given.
    #[error("message has no topic")]
    MissingTopic,
    /// The topic is invalid.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("payload is {len} bytes; the limit is {max}")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key is larger than [`MAX_KEY_BYTES`].
    #[error("key is {len} bytes; the limit is {max}")]
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A header was refused (the first such error).
    #[error("invalid header: {0}")]
    Header(#[from] HeaderError),
}

/// Why bytes are not a valid encoding. Each variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The framing failed: a field cut short, a length over its limit,
    /// trailing bytes (each names the field).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The first byte is no format version this build reads.
    #[error("unknown {kind} format version {version:#04x} (this build reads {supported:#04x})")]
    UnknownVersion {
        /// What was being decoded ("message" or "compact message").
        kind: &'static str,
        /// The byte found.
        version: u8,
        /// The byte expected.
        supported: u8,
    },
    /// A message where a compact message was expected, or the reverse.
    #[error("expected a {expected} encoding, found a {found} encoding")]
    WrongKind {
        /// What was being decoded.
        expected: &'static str,
        /// What the format byte says it is.
        found: &'static str,
    },
    /// Flag bits this format does not define.
    #[error("{kind} flags {flags:#04x} set undefined bits {undefined:#04x}")]
    UnknownFlags {
        /// What was being decoded.
        kind: &'static str,
        /// The flags byte.
        flags: u8,
        /// The bits that are not allowed.
        undefined: u8,
    },
    /// The topic is invalid (bytes that are not UTF-8 show as U+FFFD).
    #[error("invalid topic: {0}")]
    Topic(TopicError),
    /// A header name or the header total is invalid.
    #[error("invalid header: {0}")]
    Header(HeaderError),
    /// The same header name twice (names are unique in [`Headers`]).
    #[error("duplicate header {name:?}")]
    DuplicateHeader {
        /// The name.
        name: String,
    },
}

// ---------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------

/// Checks a header name: 1..=255 bytes of printable ASCII, no space, no `:`
/// (so names print unambiguously as `name: value`).
fn validate_header_name(name: &[u8]) -> Result<(), HeaderError> {
    if name.is_empty() {
        return Err(HeaderError::EmptyName);
    }
    if name.len() > MAX_HEADER_NAME_BYTES {
        let shown = String::from_utf8_lossy(&name[..64]).into_owned();
        return Err(HeaderError::NameTooLong { name: shown, len: name.len() });
    }
    if let Some(at) = name.iter().position(|&b| !b.is_ascii_graphic() || b == b':') {
        let shown = String::from_utf8_lossy(name).into_owned();
        return Err(HeaderError::BadNameByte { name: shown, byte: name[at], at });
    }
    Ok(())
}

/// A message's headers: a small list of `(name, value)` pairs, in insertion
/// order, names unique (compared byte for byte).
///
/// Limits ([`MAX_HEADERS`], [`MAX_HEADER_BYTES`]) are enforced on every
/// change, so a `Headers` value is always encodable. A linear scan beats a
/// map at these sizes and keeps the order deterministic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Bytes)>,
    /// Sum of name and value lengths, kept so limit checks and
    /// [`Message::encoded_len`] are O(1).
    total_bytes: usize,
}

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// The value of header `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Sets header `name` to `value`. An existing header keeps its position
    /// and its old value is returned; a new one goes last.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Result<Option<Bytes>, HeaderError> {
        let name = name.into();
        let value = value.into();
        validate_header_name(name.as_bytes())?;
        match self.entries.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                let total = self.total_bytes - self.entries[i].1.len() + value.len();
                check_header_total(total)?;
                self.total_bytes = total;
                Ok(Some(std::mem::replace(&mut self.entries[i].1, value)))
            }
            None => {
                if self.entries.len() >= MAX_HEADERS {
                    return Err(HeaderError::TooMany { max: MAX_HEADERS });
                }
                let total = self.total_bytes + name.len() + value.len();
                check_header_total(total)?;
                self.total_bytes = total;
                self.entries.push((name, value));
                Ok(None)
            }
        }
    }

    /// Removes header `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Bytes> {
        let i = self.entries.iter().position(|(n, _)| n == name)?;
        let (name, value) = self.entries.remove(i);
        self.total_bytes -= name.len() + value.len();
        Some(value)
    }

    /// The headers in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Bytes)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// How many headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of names plus values (what [`MAX_HEADER_BYTES`] limits).
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    fn encoded_len(&self) -> usize {
        1 + self.entries.len() * PER_HEADER_BYTES + self.total_bytes
    }
}

fn check_header_total(total: usize) -> Result<(), HeaderError> {
    if total > MAX_HEADER_BYTES { Err(HeaderError::TooLarge { len: total, max: MAX_HEADER_BYTES }) } else { Ok(()) }
}

// ---------------------------------------------------------------------------
// Message and builder
// ---------------------------------------------------------------------------

/// A new message id: a UUID v7 from `now`'s milliseconds and 10 bytes drawn
/// from `rng`.
///
/// Ids sort by millisecond; within one millisecond their order is random.
/// A v7 id is never nil, so a stamped message is always recognisable.
pub fn new_message_id(rng: &mut DetRng, now: WallTime) -> Uuid {
    let random: [u8; 10] = rng.random();
    uuid::Builder::from_unix_timestamp_millis(now.as_millis(), &random).into_uuid()
}

/// One message. Valid by construction: built by [`Message::builder`] or
/// [`Message::decode`], both of which enforce every limit of this module.
///
/// A handle to a shared, immutable body: a clone is one reference-count
/// increment and the handle is one pointer wide, so the broker keeps one
/// body per publish however many logs, buffers and subscribers hold it
/// (fan-out costs a pointer per subscriber, not a copy of every field).
/// The few changes a message gets after it is built (its stamp, its
/// partition and offset) happen before it is shared; on a shared body they
/// copy it first ([`Arc::make_mut`]), so no holder ever sees another's
/// change.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    body: Arc<MessageBody>,
}

/// The fields of a [`Message`].
#[derive(Clone, PartialEq, Eq)]
struct MessageBody {
    id: Uuid,
    topic: Topic,
    payload: Bytes,
    timestamp: WallTime,
    partition: Option<u32>,
    offset: Option<u64>,
    key: Option<Bytes>,
    /// Where an answer to this message goes (NATS request-reply).
    reply_to: Option<Topic>,
    headers: Headers,
    /// The connection that published it, as its front end numbers them
    /// (NATS `echo: false` suppresses deliveries back to it). Not encoded:
    /// it means something only while the message is in flight in one
    /// process, so a stored or replicated copy has none.
    origin: Option<u64>,
}

impl Message {
    fn from_body(body: MessageBody) -> Message {
        Message { body: Arc::new(body) }
    }

    /// The body to change: this handle's own (copied first if shared).
    fn body_mut(&mut self) -> &mut MessageBody {
        Arc::make_mut(&mut self.body)
    }
}

impl fmt::Debug for Message {
    /// As a plain struct of its fields (the handle is not shown).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &*self.body;
        f.debug_struct("Message")
            .field("id", &b.id)
            .field("topic", &b.topic)
            .field("payload", &b.payload)
            .field("timestamp", &b.timestamp)
            .field("partition", &b.partition)
            .field("offset", &b.offset)
            .field("key", &b.key)
            .field("reply_to", &b.reply_to)
            .field("headers", &b.headers)
            .field("origin", &b.origin)
            .finish()
    }
}

/// Anything [`MessageBuilder::topic`] accepts: a [`Topic`], or text that is
/// validated when the message is built.
pub trait IntoTopic {
    /// The topic, or why the text is not one.
    fn into_topic(self) -> Result<Topic, TopicError>;
}

impl IntoTopic for Topic {
    fn into_topic(self) -> Result<Topic, TopicError> {
        Ok(self)
    }
}

impl IntoTopic for &Topic {
    fn into_topic(self) -> Result<Topic, TopicError> {
        Ok(self.clone())
    }
}

impl IntoTopic for &str {
    fn into_topic(self) -> Result<Topic, TopicError> {
        Topic::new(self)
    }
}

impl IntoTopic for String {
    fn into_topic(self) -> Result<Topic, TopicError> {
        Topic::new(self)
    }
}

impl IntoTopic for &String {
    fn into_topic(self) -> Result<Topic, TopicError> {
        Topic::new(self)
    }
}

/// Assembles a [`Message`]; see [`Message::builder`]. Every setter is
/// infallible: problems are reported once, by [`MessageBuilder::build`].
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct MessageBuilder {
    topic: Option<Result<Topic, TopicError>>,
    payload: Bytes,
    partition: Option<u32>,
    key: Option<Bytes>,
    reply_to: Option<Result<Topic, TopicError>>,
    headers: Headers,
    /// The first refused header; later headers are ignored once one fails.
    header_error: Option<HeaderError>,
    id: Option<Uuid>,
    timestamp: Option<WallTime>,
    origin: Option<u64>,
}

impl MessageBuilder {
    /// The topic (required): a [`Topic`], `&str` or `String`.
    pub fn topic(mut self, topic: impl IntoTopic) -> Self {
        self.topic = Some(topic.into_topic());
        self
    }

    /// The payload (empty if not set). Not copied.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// An explicit partition (otherwise the broker chooses, e.g. by key).
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// The partitioning key: messages with equal keys go to one partition.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The publishing connection (see [`Message::origin`]).
    pub fn origin(mut self, connection: u64) -> Self {
        self.origin = Some(connection);
        self
    }

    /// The topic an answer should be published to (a request's inbox).
    pub fn reply_to(mut self, topic: impl IntoTopic) -> Self {
        self.reply_to = Some(topic.into_topic());
        self
    }

    /// Adds or replaces a header (see [`Headers::insert`]).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        if self.header_error.is_none()
            && let Err(e) = self.headers.insert(name, value)
        {
            self.header_error = Some(e);
        }
        self
    }

    /// The message id; normally left unset for the broker to stamp.
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// The timestamp; normally left unset for the broker to stamp.
    pub fn timestamp(mut self, timestamp: WallTime) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// The message, or the first problem in the order topic, payload, key,
    /// headers.
    pub fn build(self) -> Result<Message, MessageError> {
        let topic = self.topic.ok_or(MessageError::MissingTopic)??;
        let reply_to = self.reply_to.transpose()?;
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(MessageError::PayloadTooLarge { len: self.payload.len(), max: MAX_PAYLOAD_BYTES });
        }
        if let Some(key) = &self.key
            && key.len() > MAX_KEY_BYTES
        {
            return Err(MessageError::KeyTooLarge { len: key.len(), max: MAX_KEY_BYTES });
        }
        if let Some(e) = self.header_error {
            return Err(e.into());
        }
        Ok(Message::from_body(MessageBody {
            id: self.id.unwrap_or(Uuid::nil()),
            topic,
            payload: self.payload,
            timestamp: self.timestamp.unwrap_or(WallTime(0)),
            partition: self.partition,
            offset: None,
            key: self.key,
            reply_to,
            headers: self.headers,
            origin: self.origin,
        }))
    }
}

impl Message {
    /// Starts a message. Only the topic is required; without `id` and
    /// `timestamp` the message is unstamped.
    ///
    /// ```
    /// use kaelix_broker::message::{Message, MessageError, new_message_id};
    /// use kaelix_core::{WallTime, rng};
    ///
    /// let mut msg = Message::builder()
    ///     .topic("orders.eu")
    ///     .payload("order #17")
    ///     .key("customer-42")
    ///     .header("content-type", "text/plain")
    ///     .build()?;
    /// assert_eq!(msg.topic().as_str(), "orders.eu");
    /// assert!(!msg.is_stamped());
    ///
    /// // The broker stamps it with its runtime's clock and seeded rng.
    /// let now = WallTime(1_767_225_600_000_000_000);
    /// msg.stamp(new_message_id(&mut rng::seeded(7), now), now);
    /// assert!(msg.is_stamped());
    ///
    /// // The encoding round-trips; the payload is a slice of the buffer.
    /// let wire = msg.encode_to_bytes();
    /// assert_eq!(Message::decode(&wire).unwrap(), msg);
    ///
    /// // Invalid input surfaces at `build`.
    /// let bad = Message::builder().topic("orders..eu").build();
    /// assert!(matches!(bad, Err(MessageError::Topic(_))));
    /// # Ok::<(), MessageError>(())
    /// ```
    pub fn builder() -> MessageBuilder {
        MessageBuilder::default()
    }

    /// The id ([`Uuid::nil`] until stamped).
    pub fn id(&self) -> Uuid {
        self.body.id
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.body.topic
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.body.payload
    }

    /// When the message was stamped, on the stamping node's wall clock
    /// (`WallTime(0)` until stamped, unless the producer set it).
    pub fn timestamp(&self) -> WallTime {
        self.body.timestamp
    }

    /// The partition, once chosen.
    pub fn partition(&self) -> Option<u32> {
        self.body.partition
    }

    /// The offset in its partition, once appended.
    pub fn offset(&self) -> Option<u64> {
        self.body.offset
    }

    /// The partitioning key.
    pub fn key(&self) -> Option<&Bytes> {
        self.body.key.as_ref()
    }

    /// The topic an answer should be published to, if the sender wants one.
    pub fn reply_to(&self) -> Option<&Topic> {
        self.body.reply_to.as_ref()
    }

    /// The connection that published the message, if its front end said
    /// (never encoded; see the field).
    pub fn origin(&self) -> Option<u64> {
        self.body.origin
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.body.headers
    }

    /// Sets header `name` before the message is shared (a front end adding
    /// the W3C `traceparent` of the span that publishes it); on a shared
    /// body it copies it first, like [`Message::stamp`].
    pub fn set_header(&mut self, name: &str, value: impl Into<Bytes>) -> Result<Option<Bytes>, HeaderError> {
        self.body_mut().headers.insert(name, value)
    }

    /// Whether the message has an id (see [`Message::stamp`]).
    pub fn is_stamped(&self) -> bool {
        !self.body.id.is_nil()
    }

    /// Gives the message its identity: `id` (from [`new_message_id`]) and
    /// `timestamp` (the runtime's wall clock). A nil `id` leaves it unstamped.
    pub fn stamp(&mut self, id: Uuid, timestamp: WallTime) {
        let body = self.body_mut();
        body.id = id;
        body.timestamp = timestamp;
    }

    /// The message bound for `partition` (its offset unset): a producer
    /// naming the partition, before the broker appends it.
    #[must_use]
    pub fn with_partition(mut self, partition: u32) -> Message {
        let body = self.body_mut();
        body.partition = Some(partition);
        body.offset = None;
        self
    }

    /// The message as appended at `offset` of `partition`.
    #[must_use]
    pub fn with_partition_offset(mut self, partition: u32, offset: u64) -> Message {
        let body = self.body_mut();
        body.partition = Some(partition);
        body.offset = Some(offset);
        self
    }

    /// The exact length of [`Message::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        head_len(&self.body.topic, self.body.partition, self.body.offset)
            + self.body.key.as_ref().map_or(0, |k| 4 + k.len())
            + self.body.reply_to.as_ref().map_or(0, |t| 1 + t.as_str().len())
            + 4
            + self.body.payload.len()
            + self.body.headers.encoded_len()
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        let key_flag = if self.body.key.is_some() { FLAG_KEY } else { 0 };
        let reply_flag = if self.body.reply_to.is_some() { FLAG_REPLY } else { 0 };
        put_head(
            out,
            MESSAGE_FORMAT_V1,
            key_flag | reply_flag,
            self.body.id,
            self.body.timestamp,
            self.body.partition,
            self.body.offset,
            &self.body.topic,
        );
        if let Some(key) = &self.body.key {
            codec::put_bytes_u32(out, key);
        }
        if let Some(reply_to) = &self.body.reply_to {
            put_topic(out, reply_to);
        }
        codec::put_bytes_u32(out, &self.body.payload);
        out.put_u8(u8::try_from(self.body.headers.len()).expect("at most MAX_HEADERS headers"));
        for (name, value) in self.body.headers.iter() {
            out.put_u8(u8::try_from(name.len()).expect("header names are at most 255 bytes"));
            out.put_slice(name.as_bytes());
            codec::put_bytes_u32(out, value);
        }
    }

    /// The encoding as one buffer.
    pub fn encode_to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out.freeze()
    }

    /// Decodes exactly one message from `buf`. Payload, key and header
    /// values are slices of `buf`, not copies.
    pub fn decode(buf: &Bytes) -> Result<Message, DecodeError> {
        let mut r = Reader::new(buf);
        let (head, flags) = read_head(&mut r, Format::Message, FLAG_KEY | FLAG_REPLY)?;
        let key = if flags & FLAG_KEY != 0 {
            let len = r.len_u32("key length", MAX_KEY_BYTES)?;
            Some(r.bytes(len, "key")?)
        } else {
            None
        };
        let reply_to = if flags & FLAG_REPLY != 0 { Some(read_topic(&mut r, "reply-to")?) } else { None };
        let payload = read_payload(&mut r)?;
        let count = r.len_u8("header count", MAX_HEADERS)?;
        let mut headers = Headers { entries: Vec::with_capacity(count), total_bytes: 0 };
        for _ in 0..count {
            let name_len = usize::from(r.u8("header name length")?);
            let name = r.slice(name_len, "header name")?;
            validate_header_name(name).map_err(DecodeError::Header)?;
            // Validated as ASCII just above, so this cannot fail.
            let name = std::str::from_utf8(name).expect("header names are ASCII").to_owned();
            if headers.get(&name).is_some() {
                return Err(DecodeError::DuplicateHeader { name });
            }
            let value_len = r.u32("header value length")? as usize;
            // Saturating: a hostile length must not overflow a 32-bit usize.
            let total = (headers.total_bytes + name_len).saturating_add(value_len);
            check_header_total(total).map_err(DecodeError::Header)?;
            let value = r.bytes(value_len, "header value")?;
            headers.total_bytes = total;
            headers.entries.push((name, value));
        }
        r.finish(Format::Message.name())?;
        Ok(Message::from_body(MessageBody {
            id: head.id,
            topic: head.topic,
            payload,
            timestamp: head.timestamp,
            partition: head.partition,
            offset: head.offset,
            key,
            reply_to,
            headers,
            origin: None,
        }))
    }
}

impl fmt::Display for Message {
    /// `topic[partition@offset] id (n bytes)`, for logs and traces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.body.topic)?;
        match (self.body.partition, self.body.offset) {
            (Some(p), Some(o)) => write!(f, "[{p}@{o}]")?,
            (Some(p), None) => write!(f, "[{p}]")?,
            _ => {}
        }
        write!(f, " {} ({} bytes)", self.body.id, self.body.payload.len())
    }
}

// ---------------------------------------------------------------------------
// CompactMessage
// ---------------------------------------------------------------------------

/// A [`Message`] without key, reply-to and headers: what a consumer that only wants
/// the payload stores and receives. Smaller to keep and to encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactMessage {
    id: Uuid,
    topic: Topic,
    payload: Bytes,
    timestamp: WallTime,
    partition: Option<u32>,
    offset: Option<u64>,
}

impl From<Message> for CompactMessage {
    /// Drops the key, the reply-to and the headers.
    fn from(m: Message) -> Self {
        let m = &*m.body;
        CompactMessage {
            id: m.id,
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            timestamp: m.timestamp,
            partition: m.partition,
            offset: m.offset,
        }
    }
}

impl CompactMessage {
    /// The full form, with no key and no headers.
    pub fn into_message(self) -> Message {
        Message::from_body(MessageBody {
            id: self.id,
            topic: self.topic,
            payload: self.payload,
            timestamp: self.timestamp,
            partition: self.partition,
            offset: self.offset,
            key: None,
            reply_to: None,
            headers: Headers::new(),
            origin: None,
        })
    }

    /// The id ([`Uuid::nil`] if never stamped).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The timestamp (see [`Message::timestamp`]).
    pub fn timestamp(&self) -> WallTime {
        self.timestamp
    }

    /// The partition, once chosen.
    pub fn partition(&self) -> Option<u32> {
        self.partition
    }

    /// The offset in its partition, once appended.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The exact length of [`CompactMessage::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        head_len(&self.topic, self.partition, self.offset) + 4 + self.payload.len()
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        put_head(out, COMPACT_FORMAT_V1, 0, self.id, self.timestamp, self.partition, self.offset, &self.topic);
        codec::put_bytes_u32(out, &self.payload);
    }

    /// The encoding as one buffer.
    pub fn encode_to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out.freeze()
    }

    /// Decodes exactly one compact message from `buf` (payload not copied).
    pub fn decode(buf: &Bytes) -> Result<CompactMessage, DecodeError> {
        let mut r = Reader::new(buf);
        let (head, _) = read_head(&mut r, Format::Compact, 0)?;
        let payload = read_payload(&mut r)?;
        r.finish(Format::Compact.name())?;
        Ok(CompactMessage {
            id: head.id,
            topic: head.topic,
            payload,
            timestamp: head.timestamp,
            partition: head.partition,
            offset: head.offset,
        })
    }
}

// ---------------------------------------------------------------------------
// Codec helpers shared by both kinds
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Message,
    Compact,
}

impl Format {
    fn tag(self) -> u8 {
        match self {
            Format::Message => MESSAGE_FORMAT_V1,
            Format::Compact => COMPACT_FORMAT_V1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Message => "message",
            Format::Compact => "compact message",
        }
    }
}

/// The fields both kinds start with.
struct Head {
    id: Uuid,
    timestamp: WallTime,
    partition: Option<u32>,
    offset: Option<u64>,
    topic: Topic,
}

fn head_len(topic: &Topic, partition: Option<u32>, offset: Option<u64>) -> usize {
    FIXED_HEAD_BYTES + partition.map_or(0, |_| 4) + offset.map_or(0, |_| 8) + topic.as_str().len()
}

#[allow(clippy::too_many_arguments, reason = "the head's fields, written in layout order")]
fn put_head(
    out: &mut BytesMut,
    format: u8,
    extra_flags: u8,
    id: Uuid,
    timestamp: WallTime,
    partition: Option<u32>,
    offset: Option<u64>,
    topic: &Topic,
) {
    let mut flags = extra_flags;
    if partition.is_some() {
        flags |= FLAG_PARTITION;
    }
    if offset.is_some() {
        flags |= FLAG_OFFSET;
    }
    out.put_u8(format);
    out.put_slice(id.as_bytes());
    out.put_u64_le(timestamp.as_nanos());
    out.put_u8(flags);
    if let Some(p) = partition {
        out.put_u32_le(p);
    }
    if let Some(o) = offset {
        out.put_u64_le(o);
    }
    put_topic(out, topic);
}

fn put_topic(out: &mut BytesMut, topic: &Topic) {
    let topic = topic.as_str();
    out.put_u8(u8::try_from(topic.len()).expect("topics are at most 255 bytes"));
    out.put_slice(topic.as_bytes());
}

/// A length-prefixed topic (`field` names it in errors).
fn read_topic(r: &mut Reader<'_>, field: &'static str) -> Result<Topic, DecodeError> {
    let len = usize::from(r.u8(field)?);
    // Invalid UTF-8 becomes U+FFFD, which `Topic::new` names as a bad character.
    Topic::new(String::from_utf8_lossy(r.slice(len, field)?)).map_err(DecodeError::Topic)
}

fn read_head(r: &mut Reader<'_>, format: Format, extra_flags: u8) -> Result<(Head, u8), DecodeError> {
    let found = r.u8("format version")?;
    if found != format.tag() {
        let other = if format == Format::Message { Format::Compact } else { Format::Message };
        if found == other.tag() {
            return Err(DecodeError::WrongKind { expected: format.name(), found: other.name() });
        }
        return Err(DecodeError::UnknownVersion { kind: format.name(), version: found, supported: format.tag() });
    }
    let id = Uuid::from_bytes(r.array::<16>("id")?);
    let timestamp = WallTime(r.u64("timestamp")?);
    let flags = r.u8("flags")?;
    let undefined = flags & !(FLAG_PARTITION | FLAG_OFFSET | extra_flags);
    if undefined != 0 {
        return Err(DecodeError::UnknownFlags { kind: format.name(), flags, undefined });
    }
    let partition = if flags & FLAG_PARTITION != 0 { Some(r.u32("partition")?) } else { None };
    let offset = if flags & FLAG_OFFSET != 0 { Some(r.u64("offset")?) } else { None };
    let topic = read_topic(r, "topic")?;
    Ok((Head { id, timestamp, partition, offset, topic }, flags))
}

fn read_payload(r: &mut Reader<'_>) -> Result<Bytes, CodecError> {
    let len = r.len_u32("payload length", MAX_PAYLOAD_BYTES)?;
    r.bytes(len, "payload")
}

// ---------------------------------------------------------------------------
// MessageBatch
// ---------------------------------------------------------------------------

/// Messages travelling together, in order.
///
/// The batch keeps the sum of its messages' [`Message::encoded_len`], so
/// [`MessageBatch::estimated_size`] is O(1); messages cannot be changed in
/// place, which keeps that sum right.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageBatch {
    messages: Vec<Message>,
    encoded_bytes: usize,
}

impl MessageBatch {
    /// An empty batch.
    pub fn new() -> MessageBatch {
        MessageBatch::default()
    }

    /// Appends a message.
    pub fn push(&mut self, message: Message) {
        self.encoded_bytes += message.encoded_len();
        self.messages.push(message);
    }

    /// How many messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Message> {
        self.messages.iter()
    }

    /// The messages as a slice.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The encoded size of all messages: the sum of their
    /// [`Message::encoded_len`].
    pub fn estimated_size(&self) -> usize {
        self.encoded_bytes
    }

    /// Appends `other`'s messages after this batch's.
    pub fn merge(&mut self, other: MessageBatch) {
        self.encoded_bytes += other.encoded_bytes;
        self.messages.extend(other.messages);
    }

    /// Splits into consecutive non-empty batches of at most `max_bytes`
    /// estimated size each; a message larger than `max_bytes` on its own
    /// travels alone. Greedy: a part is closed only when the next message
    /// would not fit. An empty batch gives no parts.
    pub fn split_by_bytes(self, max_bytes: usize) -> Vec<MessageBatch> {
        let mut parts = Vec::new();
        let mut current = MessageBatch::new();
        for message in self.messages {
            let len = message.encoded_len();
            if !current.is_empty() && current.encoded_bytes + len > max_bytes {
                parts.push(std::mem::take(&mut current));
            }
            current.encoded_bytes += len;
            current.messages.push(message);
        }
        if !current.is_empty() {
            parts.push(current);
        }
        parts
    }

    /// Splits into consecutive batches of `max_count` messages (the last may
    /// be shorter). An empty batch gives no parts.
    ///
    /// # Panics
    ///
    /// If `max_count` is zero.
    pub fn split_by_count(self, max_count: usize) -> Vec<MessageBatch> {
        assert!(max_count > 0, "split_by_count needs a positive count");
        let mut rest = self.messages.into_iter();
        let mut parts = Vec::new();
        loop {
            let part: MessageBatch = rest.by_ref().take(max_count).collect();
            if part.is_empty() {
                return parts;
            }
            parts.push(part);
        }
    }
}

impl FromIterator<Message> for MessageBatch {
    fn from_iter<I: IntoIterator<Item = Message>>(iter: I) -> Self {
        let mut batch = MessageBatch::new();
        batch.extend(iter);
        batch
    }
}

impl Extend<Message> for MessageBatch {
    fn extend<I: IntoIterator<Item = Message>>(&mut self, iter: I) {
        for message in iter {
            self.push(message);
        }
    }
}

impl IntoIterator for MessageBatch {
    type Item = Message;
    type IntoIter = std::vec::IntoIter<Message>;
    fn into_iter(self) -> Self::IntoIter {
        self.messages.into_iter()
    }
}

impl<'a> IntoIterator for &'a MessageBatch {
    type Item = &'a Message;
    type IntoIter = std::slice::Iter<'a, Message>;
    fn into_iter(self) -> Self::IntoIter {
        self.messages.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaelix_core::rng;
    use proptest::prelude::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn sample() -> Message {
        Message::builder()
            .topic("orders.eu")
            .payload(&b"hello"[..])
            .key("k1")
            .header("trace-id", "abc")
            .header("content-type", "text/plain")
            .build()
            .unwrap()
    }

    // -- builder -----------------------------------------------------------

    #[test]
    fn builder_builds_an_unstamped_message() {
        let m = sample();
        assert_eq!(m.topic(), &topic("orders.eu"));
        assert_eq!(&m.payload()[..], b"hello");
        assert_eq!(m.key().map(|k| &k[..]), Some(&b"k1"[..]));
        assert_eq!(m.headers().get("trace-id").map(|v| &v[..]), Some(&b"abc"[..]));
        assert_eq!((m.partition(), m.offset()), (None, None));
        assert_eq!((m.id(), m.timestamp()), (Uuid::nil(), WallTime(0)));
        assert!(!m.is_stamped());
    }

    #[test]
    fn builder_accepts_topic_str_string_and_topic() {
        let a = Message::builder().topic("a.b").build().unwrap();
        let b = Message::builder().topic(String::from("a.b")).build().unwrap();
        let t = topic("a.b");
        let c = Message::builder().topic(&t).build().unwrap();
        let d = Message::builder().topic(t).build().unwrap();
        assert!(a == b && b == c && c == d);
    }

    #[test]
    fn builder_sets_partition_id_and_timestamp() {
        let id = Uuid::from_u128(99);
        let m = Message::builder().topic("t").partition(3).id(id).timestamp(WallTime(5)).build().unwrap();
        assert_eq!((m.partition(), m.id(), m.timestamp()), (Some(3), id, WallTime(5)));
        assert!(m.is_stamped());
    }

    #[test]
    fn builder_reports_missing_topic() {
        assert_eq!(Message::builder().payload("x").build(), Err(MessageError::MissingTopic));
    }

    #[test]
    fn builder_surfaces_topic_errors_at_build() {
        let err = Message::builder().topic("orders..eu").payload("x").build().unwrap_err();
        assert!(matches!(err, MessageError::Topic(TopicError::EmptyToken { position: 1, .. })));
        assert_eq!(err.to_string(), "invalid topic: topic \"orders..eu\" has an empty token at position 1");
    }

    #[test]
    fn builder_enforces_payload_limit() {
        let at_limit = Bytes::from(vec![0u8; MAX_PAYLOAD_BYTES]);
        assert!(Message::builder().topic("t").payload(at_limit).build().is_ok());
        let over = Bytes::from(vec![0u8; MAX_PAYLOAD_BYTES + 1]);
        assert_eq!(
            Message::builder().topic("t").payload(over).build(),
            Err(MessageError::PayloadTooLarge { len: MAX_PAYLOAD_BYTES + 1, max: MAX_PAYLOAD_BYTES })
        );
    }

    #[test]
    fn builder_enforces_key_limit() {
        assert!(Message::builder().topic("t").key(vec![0u8; MAX_KEY_BYTES]).build().is_ok());
        assert_eq!(
            Message::builder().topic("t").key(vec![0u8; MAX_KEY_BYTES + 1]).build(),
            Err(MessageError::KeyTooLarge { len: MAX_KEY_BYTES + 1, max: MAX_KEY_BYTES })
        );
    }

    #[test]
    fn builder_reports_the_first_header_error() {
        let err = Message::builder().topic("t").header("ok", "1").header("", "2").header("a:b", "3").build();
        assert_eq!(err, Err(MessageError::Header(HeaderError::EmptyName)));
        assert_eq!(err.unwrap_err().to_string(), "invalid header: header name is empty");
    }

    #[test]
    fn builder_header_replaces_same_name() {
        let m = Message::builder().topic("t").header("a", "1").header("b", "2").header("a", "3").build().unwrap();
        let pairs: Vec<_> = m.headers().iter().map(|(n, v)| (n.to_owned(), v.clone())).collect();
        assert_eq!(pairs, vec![("a".to_owned(), Bytes::from("3")), ("b".to_owned(), Bytes::from("2"))]);
    }

    // -- stamping ----------------------------------------------------------

    #[test]
    fn new_message_id_is_a_deterministic_v7_from_the_clock() {
        let now = WallTime(1_767_225_600_123_456_789);
        let a = new_message_id(&mut rng::seeded(1), now);
        assert_eq!(a, new_message_id(&mut rng::seeded(1), now), "same seed, same id");
        assert_ne!(a, new_message_id(&mut rng::seeded(2), now));
        assert_eq!(a.get_version(), Some(uuid::Version::SortRand));
        let (secs, nanos) = a.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos), (1_767_225_600, 123_000_000), "millisecond precision");
        let later = new_message_id(&mut rng::seeded(1), WallTime(now.0 + 1_000_000));
        assert!(later > a, "ids sort by millisecond");
    }

    #[test]
    fn stamp_and_placement() {
        let mut m = sample();
        let id = new_message_id(&mut rng::seeded(3), WallTime(10_000_000));
        m.stamp(id, WallTime(10_000_000));
        assert!(m.is_stamped());
        assert_eq!((m.id(), m.timestamp()), (id, WallTime(10_000_000)));
        let m = m.with_partition_offset(4, 17);
        assert_eq!((m.partition(), m.offset()), (Some(4), Some(17)));
        assert_eq!(m.to_string(), format!("orders.eu[4@17] {id} (5 bytes)"));
    }

    // -- headers -----------------------------------------------------------

    #[test]
    fn header_names_are_validated() {
        let mut h = Headers::new();
        assert_eq!(h.insert("", "v"), Err(HeaderError::EmptyName));
        assert!(matches!(h.insert("n".repeat(256), "v"), Err(HeaderError::NameTooLong { len: 256, .. })));
        assert!(h.insert("n".repeat(255), "v").is_ok());
        assert_eq!(h.insert("a:b", "v"), Err(HeaderError::BadNameByte { name: "a:b".into(), byte: b':', at: 1 }));
        assert!(matches!(h.insert("a b", "v"), Err(HeaderError::BadNameByte { byte: b' ', at: 1, .. })));
        assert!(matches!(h.insert("tab\t", "v"), Err(HeaderError::BadNameByte { byte: b'\t', at: 3, .. })));
        assert!(matches!(h.insert("é", "v"), Err(HeaderError::BadNameByte { byte: 0xc3, at: 0, .. })));
        assert_eq!(
            h.insert("a:b", "v").unwrap_err().to_string(),
            "header name \"a:b\": byte 0x3a at 1 is not allowed (printable ASCII, no space, no ':')"
        );
        assert_eq!(h.len(), 1, "refused inserts change nothing");
    }

    #[test]
    fn headers_insert_replace_remove() {
        let mut h = Headers::new();
        assert_eq!(h.insert("a", "1"), Ok(None));
        assert_eq!(h.insert("b", "22"), Ok(None));
        assert_eq!(h.insert("a", "333"), Ok(Some(Bytes::from("1"))));
        assert_eq!(h.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["a", "b"], "replace keeps the position");
        assert_eq!(h.total_bytes(), 1 + 3 + 1 + 2);
        assert_eq!(h.get("A"), None, "names are case-sensitive");
        assert_eq!(h.remove("a"), Some(Bytes::from("333")));
        assert_eq!((h.len(), h.total_bytes(), h.is_empty()), (1, 3, false));
        assert_eq!(h.remove("a"), None);
    }

    #[test]
    fn headers_enforce_count_and_size_limits() {
        let mut h = Headers::new();
        for i in 0..MAX_HEADERS {
            h.insert(format!("h{i}"), "").unwrap();
        }
        assert_eq!(h.insert("one-more", ""), Err(HeaderError::TooMany { max: MAX_HEADERS }));
        assert!(h.insert("h0", "replacing is fine").is_ok());

        let mut h = Headers::new();
        h.insert("big", vec![0u8; MAX_HEADER_BYTES - 3]).unwrap();
        assert_eq!(h.total_bytes(), MAX_HEADER_BYTES);
        assert_eq!(h.insert("x", ""), Err(HeaderError::TooLarge { len: MAX_HEADER_BYTES + 1, max: MAX_HEADER_BYTES }));
        assert_eq!(
            h.insert("big", vec![0u8; MAX_HEADER_BYTES - 2]),
            Err(HeaderError::TooLarge { len: MAX_HEADER_BYTES + 1, max: MAX_HEADER_BYTES })
        );
        assert_eq!(h.total_bytes(), MAX_HEADER_BYTES, "refused replace changes nothing");
    }

    // -- compact -----------------------------------------------------------

    #[test]
    fn compact_message_drops_key_and_headers() {
        let m = sample().with_partition_offset(1, 2);
        let c = CompactMessage::from(m.clone());
        assert_eq!((c.id(), c.topic(), c.payload(), c.timestamp()), (m.id(), m.topic(), m.payload(), m.timestamp()));
        assert_eq!((c.partition(), c.offset()), (Some(1), Some(2)));
        let back = c.into_message();
        assert_eq!((back.key(), back.headers().len()), (None, 0));
        assert_eq!(back.payload(), m.payload());
    }

    // -- codec -------------------------------------------------------------

    #[test]
    fn encoding_layout_is_pinned() {
        let m = Message::builder()
            .topic("ab")
            .payload("P")
            .key("K")
            .header("h", "V")
            .id(Uuid::from_u128(0x0102))
            .timestamp(WallTime(0x0304))
            .build()
            .unwrap()
            .with_partition_offset(5, 6);
        let mut want = vec![0x01];
        want.extend_from_slice(&0x0102u128.to_be_bytes());
        want.extend_from_slice(&0x0304u64.to_le_bytes());
        want.push(0b111);
        want.extend_from_slice(&5u32.to_le_bytes());
        want.extend_from_slice(&6u64.to_le_bytes());
        want.extend_from_slice(b"\x02ab");
        want.extend_from_slice(b"\x01\0\0\0K");
        want.extend_from_slice(b"\x01\0\0\0P");
        want.extend_from_slice(b"\x01\x01h\x01\0\0\0V");
        assert_eq!(&m.encode_to_bytes()[..], &want[..]);
        assert_eq!(m.encoded_len(), want.len());

        let c = CompactMessage::from(m);
        let mut want = vec![0x81];
        want.extend_from_slice(&0x0102u128.to_be_bytes());
        want.extend_from_slice(&0x0304u64.to_le_bytes());
        want.push(0b011);
        want.extend_from_slice(&5u32.to_le_bytes());
        want.extend_from_slice(&6u64.to_le_bytes());
        want.extend_from_slice(b"\x02ab\x01\0\0\0P");
        assert_eq!(&c.encode_to_bytes()[..], &want[..]);
        assert_eq!(c.encoded_len(), want.len());
    }

    #[test]
    fn encode_appends_to_the_buffer() {
        let m = sample();
        let mut out = BytesMut::from(&b"prefix"[..]);
        m.encode(&mut out);
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(Message::decode(&out.freeze().slice(6..)), Ok(m));
    }

    /// Whether `inner`'s bytes lie inside `outer`'s.
    fn points_into(inner: &Bytes, outer: &Bytes) -> bool {
        let outer = outer.as_ptr_range();
        let inner = inner.as_ptr_range();
        !inner.is_empty() && outer.start <= inner.start && inner.end <= outer.end
    }

    #[test]
    fn decode_is_zero_copy() {
        let wire = sample().encode_to_bytes();
        let m = Message::decode(&wire).unwrap();
        assert!(points_into(m.payload(), &wire));
        assert!(points_into(m.key().unwrap(), &wire));
        for (_, value) in m.headers().iter() {
            assert!(points_into(value, &wire));
        }
        let wire = CompactMessage::from(sample()).encode_to_bytes();
        assert!(points_into(CompactMessage::decode(&wire).unwrap().payload(), &wire));
    }

    /// Hand-built message encodings: id 7s, timestamp 42, then `flags`,
    /// topic, and whatever `rest` writes.
    fn raw(format: u8, flags: u8, topic: &[u8], rest: impl FnOnce(&mut BytesMut)) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(format);
        b.put_slice(&[7; 16]);
        b.put_u64_le(42);
        b.put_u8(flags);
        b.put_u8(topic.len() as u8);
        b.put_slice(topic);
        rest(&mut b);
        b.freeze()
    }

    /// Payload `p`, then the header count and headers.
    fn payload_then(p: &[u8], headers: &[(&[u8], &[u8])]) -> impl FnOnce(&mut BytesMut) {
        move |b| {
            b.put_u32_le(p.len() as u32);
            b.put_slice(p);
            b.put_u8(headers.len() as u8);
            for (n, v) in headers {
                b.put_u8(n.len() as u8);
                b.put_slice(n);
                b.put_u32_le(v.len() as u32);
                b.put_slice(v);
            }
        }
    }

    #[test]
    fn raw_helper_makes_valid_encodings() {
        let m = Message::decode(&raw(1, 0, b"t", payload_then(b"p", &[(b"h", b"v")]))).unwrap();
        assert_eq!((m.topic().as_str(), &m.payload()[..], m.timestamp()), ("t", &b"p"[..], WallTime(42)));
        let c = CompactMessage::decode(&raw(0x81, 0, b"t", |b| b.put_slice(b"\x01\0\0\0p"))).unwrap();
        assert_eq!(&c.payload()[..], b"p");
    }

    #[test]
    fn decode_rejects_empty_and_truncated_input() {
        assert_eq!(
            Message::decode(&Bytes::new()),
            Err(CodecError::Truncated { field: "format version", needed: 1 }.into())
        );
        assert_eq!(
            Message::decode(&Bytes::from_static(&[1, 0, 0])),
            Err(CodecError::Truncated { field: "id", needed: 14 }.into())
        );
        let cut = raw(1, 0, b"t", |b| b.put_slice(b"\x05\0\0\0ab"));
        let err = Message::decode(&cut).unwrap_err();
        assert_eq!(err, CodecError::Truncated { field: "payload", needed: 3 }.into());
        assert_eq!(err.to_string(), "truncated payload: needed 3 more bytes");
        let cut = raw(1, FLAG_PARTITION, b"", |_| {});
        assert_eq!(Message::decode(&cut), Err(CodecError::Truncated { field: "partition", needed: 3 }.into()));
    }

    #[test]
    fn decode_names_unknown_versions_and_wrong_kinds() {
        let err = Message::decode(&raw(2, 0, b"t", payload_then(b"", &[]))).unwrap_err();
        assert_eq!(err, DecodeError::UnknownVersion { kind: "message", version: 2, supported: 1 });
        assert_eq!(err.to_string(), "unknown message format version 0x02 (this build reads 0x01)");
        assert_eq!(
            CompactMessage::decode(&Bytes::from_static(&[0x82])),
            Err(DecodeError::UnknownVersion { kind: "compact message", version: 0x82, supported: 0x81 })
        );
        let compact = CompactMessage::from(sample()).encode_to_bytes();
        assert_eq!(
            Message::decode(&compact),
            Err(DecodeError::WrongKind { expected: "message", found: "compact message" })
        );
        assert_eq!(
            CompactMessage::decode(&sample().encode_to_bytes()),
            Err(DecodeError::WrongKind { expected: "compact message", found: "message" })
        );
    }

    #[test]
    fn decode_rejects_undefined_flags() {
        let err = Message::decode(&raw(1, 0x10, b"t", payload_then(b"", &[]))).unwrap_err();
        assert_eq!(err, DecodeError::UnknownFlags { kind: "message", flags: 0x10, undefined: 0x10 });
        assert_eq!(err.to_string(), "message flags 0x10 set undefined bits 0x10");
        // A compact message has no reply-to.
        let err = CompactMessage::decode(&raw(0x81, FLAG_REPLY, b"t", |_| {})).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnknownFlags { kind: "compact message", flags: FLAG_REPLY, undefined: FLAG_REPLY }
        );
        // A compact message has no key.
        let err = CompactMessage::decode(&raw(0x81, FLAG_KEY | FLAG_OFFSET, b"t", |_| {})).unwrap_err();
        assert_eq!(err, DecodeError::UnknownFlags { kind: "compact message", flags: 0x06, undefined: FLAG_KEY });
    }

    #[test]
    fn decode_validates_the_topic() {
        let err = Message::decode(&raw(1, 0, b"", payload_then(b"", &[]))).unwrap_err();
        assert_eq!(err, DecodeError::Topic(TopicError::Empty));
        let err = Message::decode(&raw(1, 0, b"a..b", payload_then(b"", &[]))).unwrap_err();
        assert!(matches!(err, DecodeError::Topic(TopicError::EmptyToken { position: 1, .. })));
        let err = CompactMessage::decode(&raw(0x81, 0, b"a\xff", |_| {})).unwrap_err();
        assert!(matches!(err, DecodeError::Topic(TopicError::BadChar { ch: '\u{fffd}', at: 1, .. })), "{err}");
    }

    #[test]
    fn decode_enforces_key_and_payload_limits() {
        let huge = u32::MAX;
        let err = Message::decode(&raw(1, FLAG_KEY, b"t", |b| b.put_u32_le(huge))).unwrap_err();
        assert_eq!(
            err,
            CodecError::TooLarge { field: "key length", len: u64::from(huge), max: MAX_KEY_BYTES as u64 }.into()
        );
        let over = MAX_PAYLOAD_BYTES as u32 + 1;
        let err = Message::decode(&raw(1, 0, b"t", |b| b.put_u32_le(over))).unwrap_err();
        assert_eq!(
            err,
            CodecError::TooLarge { field: "payload length", len: u64::from(over), max: MAX_PAYLOAD_BYTES as u64 }
                .into()
        );
        assert_eq!(err.to_string(), format!("payload length of {over} exceeds the limit of {MAX_PAYLOAD_BYTES}"));
        let err = CompactMessage::decode(&raw(0x81, 0, b"t", |b| b.put_u32_le(over))).unwrap_err();
        assert!(matches!(err, DecodeError::Codec(CodecError::TooLarge { field: "payload length", .. })));
    }

    #[test]
    fn decode_enforces_header_rules() {
        let decode = |headers: &[(&[u8], &[u8])]| Message::decode(&raw(1, 0, b"t", payload_then(b"", headers)));
        assert_eq!(decode(&[(b"", b"v")]), Err(DecodeError::Header(HeaderError::EmptyName)));
        assert!(matches!(decode(&[(b"a:b", b"v")]), Err(DecodeError::Header(HeaderError::BadNameByte { at: 1, .. }))));
        assert!(matches!(
            decode(&[(b"\xff", b"v")]),
            Err(DecodeError::Header(HeaderError::BadNameByte { byte: 0xff, .. }))
        ));
        assert_eq!(decode(&[(b"a", b"1"), (b"a", b"2")]), Err(DecodeError::DuplicateHeader { name: "a".into() }));

        let too_many = raw(1, 0, b"t", |b| {
            b.put_u32_le(0);
            b.put_u8(MAX_HEADERS as u8 + 1);
        });
        assert_eq!(
            Message::decode(&too_many),
            Err(CodecError::TooLarge { field: "header count", len: MAX_HEADERS as u64 + 1, max: MAX_HEADERS as u64 }
                .into())
        );
        // A value length past the header budget is refused before slicing.
        let too_big = raw(1, 0, b"t", |b| {
            b.put_u32_le(0);
            b.put_u8(1);
            b.put_slice(b"\x01h");
            b.put_u32_le(MAX_HEADER_BYTES as u32);
        });
        assert_eq!(
            Message::decode(&too_big),
            Err(DecodeError::Header(HeaderError::TooLarge { len: MAX_HEADER_BYTES + 1, max: MAX_HEADER_BYTES }))
        );
    }

    #[test]
    fn decode_rejects_trailing_bytes() {
        let mut wire = BytesMut::new();
        sample().encode(&mut wire);
        wire.put_slice(b"xy");
        let err = Message::decode(&wire.freeze()).unwrap_err();
        assert_eq!(err, CodecError::Trailing { kind: "message", len: 2 }.into());
        assert_eq!(err.to_string(), "2 trailing bytes after the message");
        let mut wire = BytesMut::new();
        CompactMessage::from(sample()).encode(&mut wire);
        wire.put_u8(0);
        assert_eq!(
            CompactMessage::decode(&wire.freeze()),
            Err(CodecError::Trailing { kind: "compact message", len: 1 }.into())
        );
    }

    // -- batches -----------------------------------------------------------

    fn numbered(n: usize, payload_len: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                Message::builder()
                    .topic("t")
                    .payload(vec![i as u8; payload_len])
                    .build()
                    .unwrap()
                    .with_partition_offset(0, i as u64)
            })
            .collect()
    }

    #[test]
    fn batch_size_is_the_sum_of_encodings() {
        let batch: MessageBatch = numbered(3, 10).into_iter().chain([sample()]).collect();
        let mut wire = BytesMut::new();
        batch.iter().for_each(|m| m.encode(&mut wire));
        assert_eq!(batch.estimated_size(), wire.len());
        assert_eq!(batch.len(), 4);
    }

    #[test]
    fn oversized_message_travels_alone() {
        let mut batch: MessageBatch = numbered(2, 10).into_iter().collect();
        batch.push(Message::builder().topic("t").payload(vec![0u8; 1000]).build().unwrap());
        batch.extend(numbered(2, 10));
        let small = numbered(1, 10)[0].encoded_len();
        let sizes: Vec<usize> = batch.split_by_bytes(3 * small).iter().map(MessageBatch::len).collect();
        assert_eq!(sizes, [2, 1, 2]);
    }

    #[test]
    fn splitting_an_empty_batch_gives_no_parts() {
        assert!(MessageBatch::new().split_by_bytes(100).is_empty());
        assert!(MessageBatch::new().split_by_count(3).is_empty());
    }

    #[test]
    #[should_panic(expected = "positive count")]
    fn split_by_count_zero_panics() {
        let _ = MessageBatch::from_iter(numbered(1, 1)).split_by_count(0);
    }

    // -- properties ----------------------------------------------------------

    fn arb_topic() -> impl Strategy<Value = Topic> {
        let token = prop::sample::select(vec!["orders", "eu", "us", "a", "x-1", "_tmp", "Z9", "$SYS", "a/b:c"]);
        prop::collection::vec(token, 1..6).prop_map(|tokens| topic(&tokens.join(".")))
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let name = prop::sample::select(vec!["trace-id", "content-type", "x", "X_Y", "retry.count", "a/b~"]);
        let bytes = |max: usize| prop::collection::vec(any::<u8>(), 0..max);
        (
            any::<u128>(),
            any::<u64>(),
            arb_topic(),
            bytes(64),
            any::<Option<u32>>(),
            any::<Option<u64>>(),
            prop::option::of(bytes(16)),
            prop::option::of(arb_topic()),
            prop::collection::vec((name, bytes(16)), 0..5),
        )
            .prop_map(|(id, ts, topic, payload, partition, offset, key, reply_to, headers)| {
                let mut b =
                    Message::builder().topic(topic).payload(payload).id(Uuid::from_u128(id)).timestamp(WallTime(ts));
                if let Some(k) = key {
                    b = b.key(k);
                }
                if let Some(r) = reply_to {
                    b = b.reply_to(r);
                }
                for (n, v) in headers {
                    b = b.header(n, v);
                }
                // The builder only sets a partition; decoding can meet any combination.
                let built = b.build().unwrap();
                Message::from_body(MessageBody { partition, offset, ..(*built.body).clone() })
            })
    }

    proptest! {
        #[test]
        fn message_round_trips_with_exact_encoded_len(m in arb_message()) {
            let wire = m.encode_to_bytes();
            prop_assert_eq!(wire.len(), m.encoded_len());
            prop_assert_eq!(Message::decode(&wire), Ok(m));
        }

        #[test]
        fn compact_message_round_trips_with_exact_encoded_len(m in arb_message()) {
            let c = CompactMessage::from(m);
            let wire = c.encode_to_bytes();
            prop_assert_eq!(wire.len(), c.encoded_len());
            prop_assert_eq!(CompactMessage::decode(&wire), Ok(c));
        }

        #[test]
        fn every_strict_prefix_is_rejected(m in arb_message()) {
            let wire = m.encode_to_bytes();
            for end in 0..wire.len() {
                prop_assert!(Message::decode(&wire.slice(..end)).is_err(), "prefix of {} bytes accepted", end);
            }
            let wire = CompactMessage::from(m).encode_to_bytes();
            for end in 0..wire.len() {
                prop_assert!(CompactMessage::decode(&wire.slice(..end)).is_err(), "prefix of {} bytes accepted", end);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            format in prop::sample::select(vec![MESSAGE_FORMAT_V1, COMPACT_FORMAT_V1, 0]),
            tail in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut data = tail.clone();
            data.insert(0, format);
            for input in [Bytes::from(tail), Bytes::from(data)] {
                if let Ok(m) = Message::decode(&input) {
                    prop_assert_eq!(m.encode_to_bytes(), input.clone());
                }
                if let Ok(c) = CompactMessage::decode(&input) {
                    prop_assert_eq!(c.encode_to_bytes(), input);
                }
            }
        }

        /// Corrupting one byte of a valid encoding gives either an error or
        /// another valid message, whose encoding is exactly the input.
        #[test]
        fn corrupted_encodings_never_panic_and_stay_canonical(
            m in arb_message(),
            at in any::<prop::sample::Index>(),
            xor in 1u8..,
        ) {
            let mut wire = m.encode_to_bytes().to_vec();
            let i = at.index(wire.len());
            wire[i] ^= xor;
            let wire = Bytes::from(wire);
            if let Ok(decoded) = Message::decode(&wire) {
                prop_assert_eq!(decoded.encode_to_bytes(), wire);
            }
        }

        #[test]
        fn split_by_bytes_then_merge_is_identity(
            messages in prop::collection::vec(arb_message(), 0..20),
            max_bytes in 0usize..600,
        ) {
            let batch: MessageBatch = messages.clone().into_iter().collect();
            let parts = batch.clone().split_by_bytes(max_bytes);
            for (i, part) in parts.iter().enumerate() {
                prop_assert!(!part.is_empty());
                prop_assert!(part.estimated_size() <= max_bytes || part.len() == 1, "part {} over the limit", i);
                if let Some(next) = parts.get(i + 1) {
                    // Greedy: the next part's first message did not fit here.
                    prop_assert!(part.estimated_size() + next.messages()[0].encoded_len() > max_bytes);
                }
            }
            let mut merged = MessageBatch::new();
            parts.into_iter().for_each(|p| merged.merge(p));
            prop_assert_eq!(merged.estimated_size(), batch.estimated_size());
            prop_assert_eq!(merged.into_iter().collect::<Vec<_>>(), messages);
        }

        #[test]
        fn split_by_count_then_merge_is_identity(
            messages in prop::collection::vec(arb_message(), 0..20),
            max_count in 1usize..7,
        ) {
            let batch: MessageBatch = messages.clone().into_iter().collect();
            let parts = batch.split_by_count(max_count);
            prop_assert_eq!(parts.len(), messages.len().div_ceil(max_count));
            for part in &parts {
                prop_assert!(!part.is_empty() && part.len() <= max_count);
            }
            let merged: Vec<Message> = parts.into_iter().flatten().collect();
            prop_assert_eq!(merged, messages);
        }
    }
}

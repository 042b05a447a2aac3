//! Field encodings shared by the request and server-frame bodies (the
//! "Field encodings" table of PROTOCOL.md), each a writer and a reader.
//! Readers go through [`kaelix_core::codec::Reader`]; every length and
//! count is checked before anything is sliced or reserved.

use bytes::{BufMut, BytesMut};
use kaelix_broker::StartPosition;
use kaelix_broker::message::{MAX_HEADER_BYTES, MAX_KEY_BYTES, MAX_PAYLOAD_BYTES, Message};
use kaelix_broker::topic::{MAX_TOPIC_BYTES, Pattern, Topic};
use kaelix_core::WallTime;
use kaelix_core::codec::{self, Reader};

use crate::error::{ErrorCode, ProtocolError};
use crate::types::{Credentials, Name, Retention, StorageSpec};
use crate::{MAX_ERROR_MESSAGE_BYTES, MAX_NAME_BYTES, MAX_SECRET_BYTES};

/// Largest encoding of one message: a payload, key and headers at their
/// limits plus the fixed fields (under 1 KiB even with a 255-byte topic
/// and 64 headers).
pub const MAX_MESSAGE_BYTES: usize = MAX_PAYLOAD_BYTES + MAX_KEY_BYTES + MAX_HEADER_BYTES + 1024;

/// The smallest message encoding (one-byte topic, empty payload, no key,
/// no headers) plus its length prefix: what a hostile message count is
/// checked against before anything is reserved.
const MIN_FRAMED_MESSAGE_BYTES: usize = 4 + 1 + 16 + 8 + 1 + 1 + 1 + 4 + 1;

/// Entries reserved up front for a list, whatever its count claims (the
/// list grows past it only as entries actually decode).
const MAX_PREALLOCATED: usize = 1024;

// -- counts -------------------------------------------------------------

/// Writes a list's count as a `u32`.
///
/// # Panics
/// If the list has 2^32 or more entries (a frame cannot hold them).
pub fn put_count(out: &mut BytesMut, n: usize) {
    out.put_u32_le(u32::try_from(n).expect("lists have fewer than 2^32 entries"));
}

/// Reads a `u32` count of entries of at least `min_bytes` each, refusing
/// one the rest of the body cannot hold.
pub fn read_count(r: &mut Reader<'_>, field: &'static str, min_bytes: usize) -> Result<usize, ProtocolError> {
    let count = r.u32(field)? as usize;
    r.need(count.saturating_mul(min_bytes), field)?;
    Ok(count)
}

/// An empty vector with room for `count` entries, at most [`MAX_PREALLOCATED`].
pub fn vec_for<T>(count: usize) -> Vec<T> {
    Vec::with_capacity(count.min(MAX_PREALLOCATED))
}

// -- scalars ------------------------------------------------------------

/// An optional `u32`: presence byte, then the value.
pub fn put_opt_u32(out: &mut BytesMut, v: Option<u32>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            out.put_u32_le(v);
        }
        None => out.put_u8(0),
    }
}

/// Reads [`put_opt_u32`]'s encoding.
pub fn read_opt_u32(r: &mut Reader<'_>, field: &'static str) -> Result<Option<u32>, ProtocolError> {
    Ok(if r.bool(field)? { Some(r.u32(field)?) } else { None })
}

/// A `u8` enumeration value, refused if `decode` does not define it.
pub fn read_enum<T>(r: &mut Reader<'_>, field: &'static str, decode: fn(u8) -> Option<T>) -> Result<T, ProtocolError> {
    let v = r.u8(field)?;
    decode(v).ok_or(ProtocolError::BadEnum { field, value: u64::from(v) })
}

// -- text ---------------------------------------------------------------

/// A topic: `u8` length, then the validated text.
pub fn put_topic(out: &mut BytesMut, topic: &Topic) {
    put_str8(out, topic.as_str());
}

/// Reads a topic; invalid UTF-8 is a codec error naming `field`.
pub fn read_topic(r: &mut Reader<'_>, field: &'static str) -> Result<Topic, ProtocolError> {
    let len = r.len_u8(field, MAX_TOPIC_BYTES)?;
    Topic::new(r.str(len, field)?).map_err(|source| ProtocolError::Topic { field, source })
}

/// A subscription pattern, encoded as a topic.
pub fn put_pattern(out: &mut BytesMut, pattern: &Pattern) {
    put_str8(out, pattern.as_str());
}

/// Reads a pattern.
pub fn read_pattern(r: &mut Reader<'_>, field: &'static str) -> Result<Pattern, ProtocolError> {
    let len = r.len_u8(field, MAX_TOPIC_BYTES)?;
    Pattern::new(r.str(len, field)?).map_err(|source| ProtocolError::Topic { field, source })
}

/// A name: `u8` length, then the text.
pub fn put_name(out: &mut BytesMut, name: &Name) {
    put_str8(out, name.as_str());
}

/// Reads a name.
pub fn read_name(r: &mut Reader<'_>, field: &'static str) -> Result<Name, ProtocolError> {
    let len = r.len_u8(field, MAX_NAME_BYTES)?;
    Name::new(r.str(len, field)?).map_err(|source| ProtocolError::Name { field, source })
}

/// An optional name: presence byte, then the name.
pub fn put_opt_name(out: &mut BytesMut, name: Option<&Name>) {
    out.put_u8(u8::from(name.is_some()));
    if let Some(n) = name {
        put_name(out, n);
    }
}

/// Reads [`put_opt_name`]'s encoding.
pub fn read_opt_name(r: &mut Reader<'_>, field: &'static str) -> Result<Option<Name>, ProtocolError> {
    Ok(if r.bool(field)? { Some(read_name(r, field)?) } else { None })
}

fn put_str8(out: &mut BytesMut, s: &str) {
    out.put_u8(u8::try_from(s.len()).expect("topics, patterns and names are at most 255 bytes"));
    out.put_slice(s.as_bytes());
}

/// Free text (error messages): `u16` length, then UTF-8, cut at a
/// character boundary to [`MAX_ERROR_MESSAGE_BYTES`].
pub fn put_text(out: &mut BytesMut, text: &str) {
    let mut end = text.len().min(MAX_ERROR_MESSAGE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    codec::put_bytes_u16(out, &text.as_bytes()[..end]);
}

/// Reads [`put_text`]'s encoding.
pub fn read_text(r: &mut Reader<'_>, field: &'static str) -> Result<String, ProtocolError> {
    let len = r.len_u16(field, MAX_ERROR_MESSAGE_BYTES)?;
    Ok(r.str(len, field)?.to_owned())
}

/// An error code: its `u16` number.
pub fn put_code(out: &mut BytesMut, code: ErrorCode) {
    out.put_u16_le(code.as_u16());
}

/// Reads an error code, refusing numbers version 1 does not define.
pub fn read_code(r: &mut Reader<'_>, field: &'static str) -> Result<ErrorCode, ProtocolError> {
    let n = r.u16(field)?;
    ErrorCode::from_u16(n).ok_or(ProtocolError::BadEnum { field, value: u64::from(n) })
}

// -- settings -----------------------------------------------------------

/// A start position: a tag (0 latest, 1 earliest, 2 offset, 3 timestamp),
/// then the offset or the time in ns since the Unix epoch.
pub fn put_start(out: &mut BytesMut, start: StartPosition) {
    match start {
        StartPosition::Latest => out.put_u8(0),
        StartPosition::Earliest => out.put_u8(1),
        StartPosition::Offset(o) => {
            out.put_u8(2);
            out.put_u64_le(o);
        }
        StartPosition::Time(t) => {
            out.put_u8(3);
            out.put_u64_le(t.as_nanos());
        }
    }
}

/// Reads [`put_start`]'s encoding.
pub fn read_start(r: &mut Reader<'_>, field: &'static str) -> Result<StartPosition, ProtocolError> {
    Ok(match r.u8(field)? {
        0 => StartPosition::Latest,
        1 => StartPosition::Earliest,
        2 => StartPosition::Offset(r.u64(field)?),
        3 => StartPosition::Time(WallTime(r.u64(field)?)),
        tag => return Err(ProtocolError::BadEnum { field, value: u64::from(tag) }),
    })
}

/// A storage kind: a tag (0 memory, 1 durable, 2 replicated), then for
/// replicated the replication factor as a `u8`.
pub fn put_storage(out: &mut BytesMut, storage: StorageSpec) {
    match storage {
        StorageSpec::Memory => out.put_u8(0),
        StorageSpec::Durable => out.put_u8(1),
        StorageSpec::Replicated { replication_factor } => {
            out.put_u8(2);
            out.put_u8(replication_factor);
        }
    }
}

/// Reads [`put_storage`]'s encoding.
pub fn read_storage(r: &mut Reader<'_>, field: &'static str) -> Result<StorageSpec, ProtocolError> {
    Ok(match r.u8(field)? {
        0 => StorageSpec::Memory,
        1 => StorageSpec::Durable,
        2 => StorageSpec::Replicated { replication_factor: r.u8(field)? },
        tag => return Err(ProtocolError::BadEnum { field, value: u64::from(tag) }),
    })
}

/// Retention: three optional `u64`s (records, bytes, age in ms).
pub fn put_retention(out: &mut BytesMut, retention: &Retention) {
    codec::put_opt_u64(out, retention.max_records);
    codec::put_opt_u64(out, retention.max_bytes);
    codec::put_opt_u64(out, retention.max_age_ms);
}

/// Reads [`put_retention`]'s encoding.
pub fn read_retention(r: &mut Reader<'_>) -> Result<Retention, ProtocolError> {
    Ok(Retention {
        max_records: r.opt_u64("retention max records")?,
        max_bytes: r.opt_u64("retention max bytes")?,
        max_age_ms: r.opt_u64("retention max age")?,
    })
}

// -- messages -----------------------------------------------------------

/// A list of messages: a `u32` count, then each message's encoding
/// ([`Message::encode`]) after its `u32` length.
pub fn put_messages(out: &mut BytesMut, messages: &[Message]) {
    put_count(out, messages.len());
    for m in messages {
        let len = m.encoded_len();
        out.reserve(4 + len);
        out.put_u32_le(u32::try_from(len).expect("a message encodes under MAX_MESSAGE_BYTES"));
        m.encode(out);
    }
}

/// Reads [`put_messages`]'s encoding. Each message is decoded from a slice
/// of the frame (payloads, keys and header values are not copied), then
/// handed to `check`, which enforces the frame's rules about it.
pub fn read_messages(
    r: &mut Reader<'_>,
    field: &'static str,
    mut check: impl FnMut(&Message) -> Result<(), ProtocolError>,
) -> Result<Vec<Message>, ProtocolError> {
    let count = read_count(r, field, MIN_FRAMED_MESSAGE_BYTES)?;
    let mut messages = vec_for(count);
    for _ in 0..count {
        let len = r.len_u32("message length", MAX_MESSAGE_BYTES)?;
        let raw = r.bytes(len, field)?;
        let message = Message::decode(&raw).map_err(|source| ProtocolError::Message { field, source })?;
        check(&message)?;
        messages.push(message);
    }
    Ok(messages)
}

/// The check of messages a server sends (fetched, delivered): each carries
/// the partition and offset it was read from.
pub fn positioned(frame: &'static str) -> impl FnMut(&Message) -> Result<(), ProtocolError> {
    move |m| match (m.partition(), m.offset()) {
        (Some(_), Some(_)) => Ok(()),
        _ => Err(ProtocolError::MessagePosition {
            frame,
            why: "a message read from a partition lacks its partition or offset",
        }),
    }
}

/// A list of `u32`s: a count, then the values.
pub fn put_u32s(out: &mut BytesMut, values: &[u32]) {
    put_count(out, values.len());
    values.iter().for_each(|&v| out.put_u32_le(v));
}

/// Reads [`put_u32s`]'s encoding.
pub fn read_u32s(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<u32>, ProtocolError> {
    let count = read_count(r, field, 4)?;
    (0..count).map(|_| r.u32(field).map_err(ProtocolError::from)).collect()
}

/// A secret (token, password): `u16` length, then UTF-8, at most
/// [`MAX_SECRET_BYTES`]. Never cut: a cut secret would be a wrong one.
fn put_secret(out: &mut BytesMut, secret: &str) {
    assert!(secret.len() <= MAX_SECRET_BYTES, "a secret of {} bytes (at most {MAX_SECRET_BYTES})", secret.len());
    codec::put_bytes_u16(out, secret.as_bytes());
}

fn read_secret(r: &mut Reader<'_>, field: &'static str) -> Result<String, ProtocolError> {
    let len = r.len_u16(field, MAX_SECRET_BYTES)?;
    Ok(r.str(len, field)?.to_owned())
}

/// A Hello's credentials: a `u8` tag (1 token, 2 user and password), then
/// the token, or the user's name and the password.
pub fn put_credentials(out: &mut BytesMut, credentials: &Credentials) {
    match credentials {
        Credentials::Token(token) => {
            out.put_u8(1);
            put_secret(out, token);
        }
        Credentials::User { user, password } => {
            out.put_u8(2);
            put_name(out, user);
            put_secret(out, password);
        }
    }
}

/// Reads [`put_credentials`]' encoding.
pub fn read_credentials(r: &mut Reader<'_>) -> Result<Credentials, ProtocolError> {
    match r.u8("hello credentials")? {
        1 => Ok(Credentials::Token(read_secret(r, "hello token")?)),
        2 => {
            let user = read_name(r, "hello user")?;
            Ok(Credentials::User { user, password: read_secret(r, "hello password")? })
        }
        tag => Err(ProtocolError::BadEnum { field: "hello credentials", value: u64::from(tag) }),
    }
}

/// Fails with a codec error unless the body is fully consumed.
pub fn finish(r: Reader<'_>, kind: &'static str) -> Result<(), ProtocolError> {
    r.finish(kind).map_err(ProtocolError::from)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kaelix_broker::message::MAX_HEADERS;
    use kaelix_core::codec::CodecError;

    use super::*;

    #[test]
    fn the_smallest_message_matches_the_count_check() {
        let m = Message::builder().topic("t").build().unwrap();
        assert_eq!(4 + m.encoded_len(), MIN_FRAMED_MESSAGE_BYTES);
        let most = Message::builder()
            .topic("t".repeat(MAX_TOPIC_BYTES))
            .payload(vec![0u8; MAX_PAYLOAD_BYTES])
            .key(vec![0u8; MAX_KEY_BYTES])
            .build()
            .unwrap()
            .with_partition_offset(u32::MAX, u64::MAX);
        assert!(most.encoded_len() + (MAX_HEADERS * 5 + MAX_HEADER_BYTES) <= MAX_MESSAGE_BYTES);
        assert_eq!(MAX_MESSAGE_BYTES, 8_520_704, "the value PROTOCOL.md states");
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        let mut out = BytesMut::new();
        put_text(&mut out, &"é".repeat(MAX_ERROR_MESSAGE_BYTES));
        let buf = out.freeze();
        let mut r = Reader::new(&buf);
        let text = read_text(&mut r, "text").unwrap();
        assert_eq!(text.len(), MAX_ERROR_MESSAGE_BYTES);
        assert!(text.chars().all(|c| c == 'é'));
        let buf = Bytes::from_static(b"\x01\x00\xff");
        assert!(matches!(
            read_text(&mut Reader::new(&buf), "error message"),
            Err(ProtocolError::Codec(CodecError::Invalid { field: "error message", .. }))
        ));
    }

    #[test]
    fn hostile_counts_fail_before_reserving() {
        let buf = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
        let err = read_messages(&mut Reader::new(&buf), "messages", |_| Ok(())).unwrap_err();
        assert!(matches!(err, ProtocolError::Codec(CodecError::Truncated { field: "messages", .. })), "{err}");
        let err = read_u32s(&mut Reader::new(&buf), "partitions").unwrap_err();
        assert!(matches!(err, ProtocolError::Codec(CodecError::Truncated { field: "partitions", .. })), "{err}");
    }
}

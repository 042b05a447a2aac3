//! Framing: the frame header, the kinds, and [`FrameDecoder`], which cuts a
//! connection's byte stream into [`Frame`]s.
//!
//! ```text
//! length       u32 big-endian   bytes after this field: 5 ..= max frame bytes
//! kind         u8
//! correlation  u32 little-endian
//! body         length - 5 bytes
//! ```
//!
//! The decoder is sans-IO: bytes go in as they arrive, in chunks split
//! anywhere, and whole frames come out. The length prefix is checked
//! against the limit as soon as its four bytes are there, before any of the
//! body is waited for; memory is never reserved for an announced length,
//! only used by bytes that arrived. A frame is a zero-copy slice of the
//! receive buffer, and so is every payload decoded from it.

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_core::codec::Reader;

use crate::FRAME_HEADER_BYTES;
use crate::error::ProtocolError;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

macro_rules! frame_kinds {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// Every frame kind of protocol version 1, with its kind byte.
        /// Requests are `0x01..=0x7f`; server frames (responses and pushes)
        /// have the high bit set.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum FrameKind {
            $($(#[$doc])* $name = $value,)*
        }

        impl FrameKind {
            /// Every kind, in kind-byte order.
            pub const ALL: &'static [FrameKind] = &[$(FrameKind::$name,)*];

            /// The kind with byte `kind`, if version 1 defines it.
            pub fn from_u8(kind: u8) -> Option<FrameKind> {
                match kind {
                    $($value => Some(FrameKind::$name),)*
                    _ => None,
                }
            }

            /// The kind's name, as PROTOCOL.md spells it.
            pub fn name(self) -> &'static str {
                match self {
                    $(FrameKind::$name => stringify!($name),)*
                }
            }
        }
    };
}

frame_kinds! {
    /// Client handshake: magic, versions spoken, client name.
    Hello = 0x01,
    /// Liveness probe.
    Ping = 0x02,
    /// Append messages to a topic.
    Produce = 0x10,
    /// Read a partition from an offset (long poll).
    Fetch = 0x11,
    /// Open a push subscription.
    Subscribe = 0x20,
    /// Grant a subscription more messages.
    Credit = 0x21,
    /// Close a push subscription.
    Unsubscribe = 0x22,
    /// Join (or rejoin) a consumer group.
    GroupJoin = 0x30,
    /// Keep a group membership alive and learn the assignment.
    GroupHeartbeat = 0x31,
    /// Read the member's assigned partitions (long poll).
    GroupFetch = 0x32,
    /// Commit a group's offset on a partition.
    GroupCommit = 0x33,
    /// Leave a consumer group.
    GroupLeave = 0x34,
    /// Create a topic.
    CreateTopic = 0x40,
    /// Describe a topic.
    DescribeTopic = 0x41,
    /// Delete a topic.
    DeleteTopic = 0x42,
    /// List the topics.
    ListTopics = 0x43,
    /// Server handshake answer: chosen version, server info.
    HelloOk = 0x81,
    /// Answer to `Ping`.
    Pong = 0x82,
    /// Where produced messages landed.
    ProduceAck = 0x90,
    /// Messages fetched.
    FetchResult = 0x91,
    /// The subscription is open.
    SubscribeOk = 0xa0,
    /// The subscription is closed; no more deliveries follow.
    Unsubscribed = 0xa1,
    /// Push: messages for a subscription.
    Deliver = 0xa8,
    /// Push: the server closed a subscription.
    SubscriptionEnded = 0xa9,
    /// The member's id, generation and partitions.
    GroupAssignment = 0xb0,
    /// Messages read for a group member.
    GroupMessages = 0xb1,
    /// The commit is recorded.
    GroupCommitted = 0xb2,
    /// The member left.
    GroupLeft = 0xb3,
    /// The topic was created.
    TopicCreated = 0xc0,
    /// A topic's settings and partitions.
    TopicDescription = 0xc1,
    /// The topic was deleted.
    TopicDeleted = 0xc2,
    /// The topics.
    TopicList = 0xc3,
    /// The request failed.
    Error = 0xff,
}

impl FrameKind {
    /// The kind byte.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether clients send this kind.
    pub fn is_request(self) -> bool {
        self.as_u8() & 0x80 == 0
    }

    /// Whether this is a server push (not an answer to a request).
    pub fn is_push(self) -> bool {
        matches!(self, FrameKind::Deliver | FrameKind::SubscriptionEnded)
    }
}

/// One frame, cut from the stream but not yet decoded: the receiver picks
/// [`crate::Request::decode`] or [`crate::ServerFrame::decode`] by the side
/// it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The kind byte (possibly one this version does not define).
    pub kind: u8,
    /// The correlation id: chosen by the client, echoed by the response;
    /// 0 on server pushes.
    pub correlation: u32,
    /// The body (a slice of the receive buffer).
    pub body: Bytes,
}

impl Frame {
    /// Appends the frame, length prefix included, to `out` (the typed
    /// encoders write frames directly; this one re-frames raw frames).
    ///
    /// # Panics
    /// If the frame is 4 GiB or larger.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin(out, self.kind, self.correlation);
        out.put_slice(&self.body);
        end(out, start);
    }
}

/// Starts a frame in `out`: a placeholder length, the kind, the correlation
/// id. Returns where the frame starts, for [`end`].
pub(crate) fn begin(out: &mut BytesMut, kind: u8, correlation: u32) -> usize {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(kind);
    out.put_u32_le(correlation);
    start
}

/// Writes the length of the frame started at `start` into its prefix.
pub(crate) fn end(out: &mut BytesMut, start: usize) {
    let len = out.len() - start - LENGTH_PREFIX_BYTES;
    let len = u32::try_from(len).expect("frames are under 4 GiB");
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
}

/// Cuts a byte stream into frames (see the module docs).
///
/// After every [`FrameDecoder::extend`], call [`FrameDecoder::next_frame`]
/// until it returns `Ok(None)`: the buffer then never holds more than one
/// partial frame (at most the limit) plus the last chunk. An error is
/// final: the stream has lost its framing, the decoder keeps returning the
/// error and ignores further input.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_bytes: usize,
    /// The length of the frame being received, once its prefix was read.
    frame_len: Option<usize>,
    failed: Option<ProtocolError>,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_frame_bytes` (counted
    /// after the length prefix; see [`crate::DEFAULT_MAX_FRAME_BYTES`]).
    pub fn new(max_frame_bytes: usize) -> FrameDecoder {
        FrameDecoder { buf: BytesMut::new(), max_frame_bytes, frame_len: None, failed: None }
    }

    /// The limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Bytes received (ignored once the decoder has failed).
    pub fn extend(&mut self, chunk: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(chunk);
        }
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let len = match self.frame_len {
            Some(len) => len,
            None => {
                if self.buf.len() < LENGTH_PREFIX_BYTES {
                    return Ok(None);
                }
                let prefix = self.buf.split_to(LENGTH_PREFIX_BYTES).freeze();
                let len = u32::from_be_bytes(Reader::new(&prefix).array("frame length")?) as usize;
                if let Err(e) = self.check_len(len) {
                    self.buf = BytesMut::new();
                    self.failed = Some(e.clone());
                    return Err(e);
                }
                // Nothing is reserved for the announced length: the buffer
                // grows only with bytes that actually arrive, so a peer
                // announcing large frames and stalling costs nothing.
                self.frame_len = Some(len);
                len
            }
        };
        if self.buf.len() < len {
            return Ok(None);
        }
        self.frame_len = None;
        let raw = self.buf.split_to(len).freeze();
        let mut r = Reader::new(&raw);
        let kind = r.u8("frame kind")?;
        let correlation = r.u32("correlation id")?;
        Ok(Some(Frame { kind, correlation, body: r.rest() }))
    }

    fn check_len(&self, len: usize) -> Result<(), ProtocolError> {
        if len > self.max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge { len: len as u64, max: self.max_frame_bytes });
        }
        if len < FRAME_HEADER_BYTES {
            return Err(ProtocolError::FrameTooShort { len });
        }
        Ok(())
    }

    /// Bytes received but not yet returned as frames (non-zero at the end
    /// of a stream: the peer stopped mid-frame).
    pub fn buffered(&self) -> usize {
        self.buf.len() + if self.frame_len.is_some() { LENGTH_PREFIX_BYTES } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(kind: u8, correlation: u32, body: &[u8]) -> Frame {
        Frame { kind, correlation, body: Bytes::copy_from_slice(body) }
    }

    #[test]
    fn header_layout() {
        let mut out = BytesMut::new();
        frame(0x11, 0x0102_0304, b"xy").encode(&mut out);
        assert_eq!(&out[..], &[0, 0, 0, 7, 0x11, 4, 3, 2, 1, b'x', b'y']);
    }

    #[test]
    fn kinds_are_partitioned_by_direction() {
        for &kind in FrameKind::ALL {
            assert_eq!(FrameKind::from_u8(kind.as_u8()), Some(kind));
            assert_eq!(kind.is_request(), kind.as_u8() < 0x80, "{kind:?}");
            assert!(!kind.is_push() || !kind.is_request());
        }
        assert!(FrameKind::ALL.windows(2).all(|w| w[0].as_u8() < w[1].as_u8()));
        assert_eq!(FrameKind::from_u8(0x00), None);
        assert_eq!(FrameKind::from_u8(0x7f), None);
        assert_eq!(FrameKind::GroupCommit.name(), "GroupCommit");
    }

    #[test]
    fn an_oversize_length_fails_before_the_body_is_buffered() {
        let mut dec = FrameDecoder::new(100);
        dec.extend(&101u32.to_be_bytes()[..3]);
        assert_eq!(dec.next_frame(), Ok(None));
        dec.extend(&101u32.to_be_bytes()[3..]);
        let err = dec.next_frame().unwrap_err();
        assert_eq!(err, ProtocolError::FrameTooLarge { len: 101, max: 100 });
        assert_eq!(err.to_string(), "frame of 101 bytes exceeds the limit of 100 bytes");
        // The error is final; more bytes are not kept.
        dec.extend(&[0; 50]);
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.next_frame(), Err(err));
        // A huge length (a text protocol on this port) reserves nothing.
        let mut dec = FrameDecoder::new(crate::DEFAULT_MAX_FRAME_BYTES);
        dec.extend(b"GET / HTTP/1.1\r\n");
        assert!(matches!(dec.next_frame(), Err(ProtocolError::FrameTooLarge { len: 0x4745_5420, .. })));
        assert!(dec.buf.capacity() < 1024);
    }

    #[test]
    fn an_announced_length_reserves_nothing() {
        let mut dec = FrameDecoder::new(crate::DEFAULT_MAX_FRAME_BYTES);
        dec.extend(&(crate::DEFAULT_MAX_FRAME_BYTES as u32).to_be_bytes());
        dec.extend(&[0x02, 0, 0]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.buffered(), 7);
        assert!(dec.buf.capacity() < 4096, "{} bytes reserved", dec.buf.capacity());
    }

    #[test]
    fn a_length_below_the_header_is_refused() {
        let mut dec = FrameDecoder::new(100);
        dec.extend(&[0, 0, 0, 4, 1, 0, 0, 0]);
        assert_eq!(dec.next_frame(), Err(ProtocolError::FrameTooShort { len: 4 }));
        assert!(dec.next_frame().unwrap_err().closes_connection());
    }

    #[test]
    fn frames_wait_for_their_last_byte() {
        let mut wire = BytesMut::new();
        frame(2, 9, b"").encode(&mut wire);
        frame(0x10, 10, b"abc").encode(&mut wire);
        let mut dec = FrameDecoder::new(100);
        dec.extend(&wire[..wire.len() - 1]);
        assert_eq!(dec.next_frame(), Ok(Some(frame(2, 9, b""))));
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.buffered(), 11);
        dec.extend(&wire[wire.len() - 1..]);
        assert_eq!(dec.next_frame(), Ok(Some(frame(0x10, 10, b"abc"))));
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.buffered(), 0);
    }

    proptest! {
        #[test]
        fn raw_frames_survive_any_split(
            frames in prop::collection::vec((any::<u8>(), any::<u32>(), prop::collection::vec(any::<u8>(), 0..64)), 0..12),
            cuts in prop::collection::vec(1usize..40, 1..20),
        ) {
            let frames: Vec<Frame> = frames.iter().map(|(k, c, b)| frame(*k, *c, b)).collect();
            let mut wire = BytesMut::new();
            frames.iter().for_each(|f| f.encode(&mut wire));
            let mut dec = FrameDecoder::new(FRAME_HEADER_BYTES + 64);
            let mut got = Vec::new();
            let mut rest = &wire[..];
            for &cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = cut.min(rest.len());
                dec.extend(&rest[..n]);
                rest = &rest[n..];
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(dec.buffered(), 0);
        }

        /// Whatever the bytes, the decoder never panics, and the frames it
        /// returns re-encode to exactly the bytes they consumed.
        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..64) {
            let mut dec = FrameDecoder::new(max);
            dec.extend(&data);
            let mut again = BytesMut::new();
            while let Ok(Some(f)) = dec.next_frame() {
                prop_assert!(FRAME_HEADER_BYTES + f.body.len() <= max);
                f.encode(&mut again);
            }
            prop_assert_eq!(&again[..], &data[..again.len()]);
        }
    }
}

//! Length-prefixed framing for TCP: a 4-byte little-endian length, then
//! that many bytes. Sans-IO: bytes go in as they arrive, whole frames come
//! out, zero-copy (each frame is a slice of the receive buffer).
//!
//! Connections open with a 12-byte hello: a 4-byte magic naming the
//! protocol (peer transport or client stream) and the sender's node id.
//!
//! A frame of the node-to-node transport carries one datagram and starts
//! with a channel byte ([`encode_channel_frame`]): services of one node that
//! share the transport (Raft groups on channel 0, SWIM on its own) each
//! receive only their own datagrams. The peer magic's version (`KXP2`) says
//! so: a member speaking the earlier, channel-less frames (`KXP1`) is
//! refused at its hello instead of having its datagrams misread.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kaelix_core::NodeId;

/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 4;
/// Bytes of a hello.
pub const HELLO_BYTES: usize = 12;
/// Hello magic of the node-to-node transport.
pub const PEER_MAGIC: [u8; 4] = *b"KXP2";
/// Hello magic of client streams.
pub const CLIENT_MAGIC: [u8; 4] = *b"KXC1";

/// What is wrong with received bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame header announced more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The hello did not start with the expected magic.
    #[error("bad hello: expected magic {expected:?}, got {got:?}")]
    BadHello {
        /// Expected magic.
        expected: [u8; 4],
        /// Received bytes.
        got: [u8; 4],
    },
}

/// Appends `frame` with its header to `out`.
pub fn encode_frame(out: &mut BytesMut, frame: &[u8]) {
    let len = u32::try_from(frame.len()).expect("frame length checked by the caller");
    out.reserve(HEADER_BYTES + frame.len());
    out.put_u32_le(len);
    out.put_slice(frame);
}

/// Appends a node-to-node frame: its header, `channel`, then `datagram`.
pub fn encode_channel_frame(out: &mut BytesMut, channel: u8, datagram: &[u8]) {
    let len = u32::try_from(datagram.len() + 1).expect("frame length checked by the caller");
    out.reserve(HEADER_BYTES + 1 + datagram.len());
    out.put_u32_le(len);
    out.put_u8(channel);
    out.put_slice(datagram);
}

/// A hello for `magic` from `node`.
pub fn encode_hello(magic: [u8; 4], node: NodeId) -> [u8; HELLO_BYTES] {
    let mut hello = [0u8; HELLO_BYTES];
    hello[..4].copy_from_slice(&magic);
    hello[4..].copy_from_slice(&node.0.to_le_bytes());
    hello
}

/// Incremental decoder of one connection's byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame: usize,
    hello: Option<[u8; 4]>,
}

impl FrameDecoder {
    /// A decoder of frames up to `max_frame` bytes; if `hello` is given, the
    /// stream must start with a hello carrying that magic.
    pub fn new(max_frame: usize, hello: Option<[u8; 4]>) -> Self {
        FrameDecoder { buf: BytesMut::new(), max_frame, hello }
    }

    /// Received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Space to read into (avoids a copy): call [`FrameDecoder::commit`] after.
    pub fn read_buffer(&mut self, at_least: usize) -> &mut BytesMut {
        self.buf.reserve(at_least);
        &mut self.buf
    }

    /// The hello's node id once it has arrived (only with a hello magic).
    pub fn next_hello(&mut self) -> Result<Option<NodeId>, FrameError> {
        let Some(expected) = self.hello else { return Ok(None) };
        if self.buf.len() < HELLO_BYTES {
            let got_prefix = &self.buf[..self.buf.len().min(4)];
            if got_prefix != &expected[..got_prefix.len()] {
                let mut got = [0u8; 4];
                got[..got_prefix.len()].copy_from_slice(got_prefix);
                return Err(FrameError::BadHello { expected, got });
            }
            return Ok(None);
        }
        let mut got = [0u8; 4];
        got.copy_from_slice(&self.buf[..4]);
        if got != expected {
            return Err(FrameError::BadHello { expected, got });
        }
        self.buf.advance(4);
        let node = NodeId(self.buf.get_u64_le());
        self.hello = None;
        Ok(Some(node))
    }

    /// Whether the hello (if one is expected) has been consumed.
    pub fn hello_done(&self) -> bool {
        self.hello.is_none()
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        assert!(self.hello.is_none(), "frames before the hello was read");
        if self.buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[..HEADER_BYTES].try_into().expect("4 bytes")) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge { len, max: self.max_frame });
        }
        if self.buf.len() < HEADER_BYTES + len {
            self.buf.reserve(HEADER_BYTES + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_BYTES);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Bytes received but not yet returned as frames (a partial frame at
    /// end of stream means the peer died mid-frame).
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Frames survive any split of the byte stream into reads.
        #[test]
        fn frames_round_trip_across_arbitrary_splits(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            cuts in proptest::collection::vec(1usize..64, 1..50),
        ) {
            let mut wire = BytesMut::new();
            wire.extend_from_slice(&encode_hello(PEER_MAGIC, NodeId(9)));
            for f in &frames {
                encode_frame(&mut wire, f);
            }
            let mut dec = FrameDecoder::new(1024, Some(PEER_MAGIC));
            let mut got = Vec::new();
            let mut hello = None;
            let mut rest = &wire[..];
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                dec.extend(&rest[..n]);
                rest = &rest[n..];
                if hello.is_none() {
                    hello = dec.next_hello().unwrap();
                }
                if dec.hello_done() {
                    while let Some(f) = dec.next_frame().unwrap() {
                        got.push(f.to_vec());
                    }
                }
            }
            prop_assert_eq!(hello, Some(NodeId(9)));
            prop_assert_eq!(got, frames);
            prop_assert_eq!(dec.pending_bytes(), 0);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut dec = FrameDecoder::new(64, Some(CLIENT_MAGIC));
            dec.extend(&data);
            if let Ok(Some(_)) = dec.next_hello() {
                while let Ok(Some(_)) = dec.next_frame() {}
            }
        }
    }

    #[test]
    fn a_channel_frame_is_its_channel_byte_then_the_datagram() {
        let mut wire = BytesMut::new();
        encode_channel_frame(&mut wire, 1, b"swim");
        encode_channel_frame(&mut wire, 0, b"");
        let mut dec = FrameDecoder::new(16, None);
        dec.extend(&wire);
        assert_eq!(&dec.next_frame().unwrap().unwrap()[..], b"\x01swim");
        assert_eq!(&dec.next_frame().unwrap().unwrap()[..], b"\x00");
        assert_eq!(dec.next_frame(), Ok(None));
    }

    #[test]
    fn oversize_and_bad_hello_are_named() {
        let mut dec = FrameDecoder::new(10, None);
        dec.extend(&100u32.to_le_bytes());
        assert_eq!(dec.next_frame().unwrap_err().to_string(), "frame of 100 bytes exceeds the limit of 10 bytes");
        let mut dec = FrameDecoder::new(10, Some(PEER_MAGIC));
        dec.extend(b"GET / HTTP/1.1");
        let err = dec.next_hello().unwrap_err();
        assert!(err.to_string().starts_with("bad hello"), "{err}");
        let mut dec = FrameDecoder::new(10, Some(PEER_MAGIC));
        dec.extend(b"KX");
        assert_eq!(dec.next_hello(), Ok(None), "a correct prefix waits for more");
        dec.extend(b"C1");
        assert!(dec.next_hello().is_err(), "client magic on the peer port");
    }
}

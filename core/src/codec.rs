//! The checked byte reader and writer helpers every wire and disk format
//! is built from.
//!
//! Formats in Kaelix are little-endian with explicit lengths. Decoding must
//! never panic and never allocate what a hostile length claims, so every
//! read goes through [`Reader`]: it checks that the bytes exist before it
//! slices, checks a claimed length against the format's limit *before*
//! looking for that many bytes (a huge claim reports the limit, not a
//! truncation), hands out zero-copy [`Bytes`] slices of the input, and
//! insists that a whole input is consumed ([`Reader::finish`]), so every
//! value has exactly one encoding.
//!
//! Errors name the field being read ([`CodecError`]); a format wraps them in
//! its own error type when it needs more variants.

use bytes::{BufMut, Bytes, BytesMut};

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input ended inside a field.
    #[error("truncated {field}: needed {needed} more bytes")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// How many more bytes it needed.
        needed: usize,
    },
    /// A length or count above its limit.
    #[error("{field} of {len} exceeds the limit of {max}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// The value found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Bytes left after the last field.
    #[error("{len} trailing bytes after the {kind}")]
    Trailing {
        /// What was decoded.
        kind: &'static str,
        /// How many bytes were left.
        len: usize,
    },
    /// A field holds a value the format does not define.
    #[error("invalid {field}: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A varint longer than 10 bytes or overflowing 64 bits.
    #[error("{field}: malformed varint")]
    Varint {
        /// The field.
        field: &'static str,
    },
}

/// A cursor over one input buffer (see the module docs).
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// How far the reader has come.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<std::ops::Range<usize>, CodecError> {
        let remaining = self.remaining();
        if remaining < n {
            return Err(CodecError::Truncated { field, needed: n - remaining });
        }
        let range = self.pos..self.pos + n;
        self.pos += n;
        Ok(range)
    }

    /// The next `n` bytes, borrowed.
    pub fn slice(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        let range = self.take(n, field)?;
        Ok(&self.buf[range])
    }

    /// The next `n` bytes as a zero-copy slice of the input.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, CodecError> {
        let range = self.take(n, field)?;
        Ok(self.buf.slice(range))
    }

    /// Everything not read yet, as a zero-copy slice.
    pub fn rest(&mut self) -> Bytes {
        let range = self.pos..self.buf.len();
        self.pos = self.buf.len();
        self.buf.slice(range)
    }

    /// Fails unless at least `n` bytes remain, reading nothing: a format
    /// refuses a count the input cannot hold (`count * smallest element`)
    /// before it reserves memory for it.
    pub fn need(&self, n: usize, field: &'static str) -> Result<(), CodecError> {
        match n.checked_sub(self.remaining()) {
            Some(needed) if needed > 0 => Err(CodecError::Truncated { field, needed }),
            _ => Ok(()),
        }
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], CodecError> {
        Ok(self.slice(N, field)?.try_into().expect("slice of length N"))
    }

    /// One byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// `count` little-endian `u64`s. All `8 * count` bytes are checked to be
    /// there before the first is read, so a hostile count fails at once.
    pub fn u64s(
        &mut self,
        count: usize,
        field: &'static str,
    ) -> Result<impl ExactSizeIterator<Item = u64> + use<'a>, CodecError> {
        let raw = self.slice(count.saturating_mul(8), field)?;
        Ok(raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8"))))
    }

    /// A byte that must be 0 or 1.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, CodecError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(CodecError::Invalid { field, why: format!("{b} is neither 0 nor 1") }),
        }
    }

    /// An LEB128 varint (at most 10 bytes; the canonical, shortest form).
    pub fn varint(&mut self, field: &'static str) -> Result<u64, CodecError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.u8(field)?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(CodecError::Varint { field });
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    // A trailing zero group: not the shortest form.
                    return Err(CodecError::Varint { field });
                }
                return Ok(value);
            }
        }
        Err(CodecError::Varint { field })
    }

    /// A `u32` length checked against `max` before anything is sliced.
    pub fn len_u32(&mut self, field: &'static str, max: usize) -> Result<usize, CodecError> {
        let len = self.u32(field)?;
        check_len(field, u64::from(len), max)
    }

    /// A `u16` length checked against `max`.
    pub fn len_u16(&mut self, field: &'static str, max: usize) -> Result<usize, CodecError> {
        let len = self.u16(field)?;
        check_len(field, u64::from(len), max)
    }

    /// A `u8` length checked against `max`.
    pub fn len_u8(&mut self, field: &'static str, max: usize) -> Result<usize, CodecError> {
        let len = self.u8(field)?;
        check_len(field, u64::from(len), max)
    }

    /// A varint length checked against `max`.
    pub fn len_varint(&mut self, field: &'static str, max: usize) -> Result<usize, CodecError> {
        let len = self.varint(field)?;
        check_len(field, len, max)
    }

    /// An optional `u64`: a presence byte (0 or 1), then the value.
    pub fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, CodecError> {
        Ok(if self.bool(field)? { Some(self.u64(field)?) } else { None })
    }

    /// UTF-8 text of `len` bytes.
    pub fn str(&mut self, len: usize, field: &'static str) -> Result<&'a str, CodecError> {
        let raw = self.slice(len, field)?;
        std::str::from_utf8(raw).map_err(|e| CodecError::Invalid { field, why: e.to_string() })
    }

    /// Ends decoding: nothing may be left.
    pub fn finish(self, kind: &'static str) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            len => Err(CodecError::Trailing { kind, len }),
        }
    }
}

/// `len` as a `usize` if it is at most `max` (for a length read under one
/// field name and limited under another).
pub fn check_len(field: &'static str, len: u64, max: usize) -> Result<usize, CodecError> {
    if len > max as u64 {
        return Err(CodecError::TooLarge { field, len, max: max as u64 });
    }
    Ok(len as usize)
}

/// Appends an LEB128 varint (shortest form).
pub fn put_varint(out: &mut BytesMut, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

/// Appends an optional `u64` as [`Reader::opt_u64`] reads it.
pub fn put_opt_u64(out: &mut BytesMut, value: Option<u64>) {
    match value {
        Some(v) => {
            out.put_u8(1);
            out.put_u64_le(v);
        }
        None => out.put_u8(0),
    }
}

/// Appends `bytes` after its length as a `u32`.
///
/// # Panics
/// If `bytes` is 4 GiB or longer (callers bound their fields far below).
pub fn put_bytes_u32(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32_le(u32::try_from(bytes.len()).expect("field under 4 GiB"));
    out.put_slice(bytes);
}

/// Appends `bytes` after its length as a `u16`.
///
/// # Panics
/// If `bytes` is 64 KiB or longer.
pub fn put_bytes_u16(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16_le(u16::try_from(bytes.len()).expect("field under 64 KiB"));
    out.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn lengths_are_checked_before_slicing() {
        let buf = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1, 2]);
        let mut r = Reader::new(&buf);
        let err = r.len_u32("payload length", 1024).unwrap_err();
        assert_eq!(err, CodecError::TooLarge { field: "payload length", len: u64::from(u32::MAX), max: 1024 });
        let mut r = Reader::new(&buf);
        r.u32("x").unwrap();
        assert_eq!(r.bytes(3, "payload").unwrap_err(), CodecError::Truncated { field: "payload", needed: 1 });
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let buf = Bytes::from_static(&[1, 2]);
        let mut r = Reader::new(&buf);
        r.u8("a").unwrap();
        assert_eq!(r.finish("thing"), Err(CodecError::Trailing { kind: "thing", len: 1 }));
    }

    #[test]
    fn need_checks_without_reading() {
        let buf = Bytes::from_static(&[1, 2, 3]);
        let mut r = Reader::new(&buf);
        r.need(3, "three").unwrap();
        assert_eq!(r.need(usize::MAX, "all"), Err(CodecError::Truncated { field: "all", needed: usize::MAX - 3 }));
        assert_eq!(r.position(), 0);
        assert_eq!(r.array::<2>("pair").unwrap(), [1, 2]);
        assert_eq!(r.need(2, "pair"), Err(CodecError::Truncated { field: "pair", needed: 1 }));
    }

    #[test]
    fn u64_lists_are_checked_whole_before_reading() {
        let buf = Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9]);
        let mut r = Reader::new(&buf);
        assert_eq!(r.u64s(3, "ids").err(), Some(CodecError::Truncated { field: "ids", needed: 7 }));
        assert_eq!(
            r.u64s(usize::MAX, "ids").err(),
            Some(CodecError::Truncated { field: "ids", needed: usize::MAX - 17 })
        );
        assert_eq!(r.position(), 0, "a failed list reads nothing");
        assert_eq!(r.u64s(2, "ids").unwrap().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(r.u64s(0, "ids").unwrap().len(), 0);
        assert_eq!(r.finish("list").unwrap_err().to_string(), "1 trailing bytes after the list");
        assert_eq!(
            check_len("metadata", 513, 512).unwrap_err().to_string(),
            "metadata of 513 exceeds the limit of 512"
        );
    }

    #[test]
    fn varints_are_canonical() {
        for bad in [&[0x80u8, 0x00][..], &[0xff; 11][..], &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]]
        {
            let buf = Bytes::copy_from_slice(bad);
            let mut r = Reader::new(&buf);
            assert!(r.varint("v").is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn varints_round_trip(v: u64) {
            let mut out = BytesMut::new();
            put_varint(&mut out, v);
            let buf = out.freeze();
            let mut r = Reader::new(&buf);
            prop_assert_eq!(r.varint("v").unwrap(), v);
            r.finish("varint").unwrap();
        }

        #[test]
        fn fields_round_trip(a: u8, b: u16, c: u32, d: u64, o: Option<u64>, s in "[a-z]{0,40}", blob in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = BytesMut::new();
            out.put_u8(a);
            out.put_u16_le(b);
            out.put_u32_le(c);
            out.put_u64_le(d);
            put_opt_u64(&mut out, o);
            put_bytes_u16(&mut out, s.as_bytes());
            put_bytes_u32(&mut out, &blob);
            let buf = out.freeze();
            let mut r = Reader::new(&buf);
            prop_assert_eq!(r.u8("a").unwrap(), a);
            prop_assert_eq!(r.u16("b").unwrap(), b);
            prop_assert_eq!(r.u32("c").unwrap(), c);
            prop_assert_eq!(r.u64("d").unwrap(), d);
            prop_assert_eq!(r.opt_u64("o").unwrap(), o);
            let n = r.len_u16("s", 64).unwrap();
            prop_assert_eq!(r.str(n, "s").unwrap(), s.as_str());
            let n = r.len_u32("blob", 64).unwrap();
            let got = r.bytes(n, "blob").unwrap();
            prop_assert_eq!(got.as_ref(), &blob[..]);
            r.finish("fields").unwrap();
        }

        #[test]
        fn u64_lists_round_trip(ids in proptest::collection::vec(any::<u64>(), 0..20), extra in 0usize..8) {
            let mut out = BytesMut::new();
            for id in &ids {
                out.put_u64_le(*id);
            }
            out.put_slice(&[0xab; 8][..extra]);
            let buf = out.freeze();
            let mut r = Reader::new(&buf);
            prop_assert_eq!(r.u64s(ids.len(), "ids").unwrap().collect::<Vec<_>>(), ids.clone());
            prop_assert_eq!(r.remaining(), extra);
            let mut r = Reader::new(&buf);
            prop_assert!(r.u64s(ids.len() + 1, "ids").is_err());
        }

        #[test]
        fn decoding_garbage_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let buf = Bytes::from(raw);
            let mut r = Reader::new(&buf);
            let _ = r.varint("v");
            let _ = r.len_u32("l", 16);
            let _ = r.opt_u64("o");
            let _ = r.bool("b");
            let _ = r.need(usize::MAX, "n");
            let _ = r.u64s(usize::MAX / 4, "l").map(Iterator::count);
            let _ = r.array::<3>("a");
        }
    }
}

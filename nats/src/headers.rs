//! NATS message headers: the block in front of the payload of `HPUB` and
//! `HMSG`.
//!
//! ```text
//! NATS/1.0[ <status>[ <description>]]\r\n
//! <name>: <value>\r\n
//! ...
//! \r\n
//! ```
//!
//! The first line is the version, optionally followed by a three-digit
//! status code and a description (servers use them for no-responders
//! `503` and request timeouts `408`). Names are case-sensitive (as in
//! current NATS clients) and may repeat; values are stored trimmed of
//! surrounding spaces and tabs. The parser only validates a block
//! ([`validate`]) and hands the raw bytes on, so a server can forward it
//! unchanged; [`Headers::decode`] builds the map when someone needs it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::HeaderError;

const VERSION: &[u8] = b"NATS/1.0";

/// A decoded header block: optional status line and an ordered multi-map of
/// names to values.
///
/// Names keep the order of their first appearance, values the order they
/// were added in. Two maps compare equal when they have the same status,
/// description, names in the same order and the same values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    status: Option<u16>,
    description: Option<String>,
    entries: Vec<(String, Vec<String>)>,
}

impl Headers {
    /// An empty block (`NATS/1.0\r\n\r\n`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The status code of the version line, if any.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The description after the status code, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Sets the status line: a code up to 999 (written as three digits)
    /// and an optional description (trimmed; empty means none), or removes
    /// it with `None`.
    pub fn set_status(&mut self, status: Option<(u16, Option<&str>)>) -> Result<(), HeaderError> {
        match status {
            None => {
                self.status = None;
                self.description = None;
            }
            Some((code, description)) => {
                if code > 999 {
                    return Err(HeaderError::BadStatus);
                }
                let description = description.map(trim_str).filter(|d| !d.is_empty());
                if let Some(d) = description {
                    check_value(d.as_bytes()).map_err(|_| HeaderError::BadStatus)?;
                }
                self.status = Some(code);
                self.description = description.map(str::to_owned);
            }
        }
        Ok(())
    }

    /// Adds a value to `name` (after its existing values). The value is
    /// trimmed of surrounding spaces and tabs.
    pub fn append(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        check_name(name.as_bytes())?;
        let value = trim_str(value);
        check_value(value.as_bytes())?;
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, values)) => values.push(value.to_owned()),
            None => self.entries.push((name.to_owned(), vec![value.to_owned()])),
        }
        Ok(())
    }

    /// Replaces the values of `name` by `value` (keeping its position if it
    /// was present).
    pub fn insert(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        check_name(name.as_bytes())?;
        let value = trim_str(value);
        check_value(value.as_bytes())?;
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, values)) => *values = vec![value.to_owned()],
            None => self.entries.push((name.to_owned(), vec![value.to_owned()])),
        }
        Ok(())
    }

    /// Removes `name`, returning its values.
    pub fn remove(&mut self, name: &str) -> Option<Vec<String>> {
        let at = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(at).1)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).first().map(String::as_str)
    }

    /// All values of `name`, in order (empty if absent).
    pub fn get_all(&self, name: &str) -> &[String] {
        self.entries.iter().find(|(n, _)| n == name).map_or(&[], |(_, v)| v.as_slice())
    }

    /// Whether there is no header (the status line does not count).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every `(name, value)` pair, names in order, each name's values in
    /// order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().flat_map(|(n, vs)| vs.iter().map(move |v| (n.as_str(), v.as_str())))
    }

    /// The size of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        let status = match (self.status, &self.description) {
            (None, _) => 0,
            (Some(_), None) => 4,
            (Some(_), Some(d)) => 5 + d.len(),
        };
        let entries: usize = self.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        VERSION.len() + status + 2 + entries + 2
    }

    /// Appends the block to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        buf.put_slice(VERSION);
        if let Some(code) = self.status {
            // Three digits, as clients read exactly three.
            buf.put_slice(&[b' ', b'0' + (code / 100) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8]);
            if let Some(d) = &self.description {
                buf.put_u8(b' ');
                buf.put_slice(d.as_bytes());
            }
        }
        buf.put_slice(b"\r\n");
        for (name, value) in self.iter() {
            buf.put_slice(name.as_bytes());
            buf.put_slice(b": ");
            buf.put_slice(value.as_bytes());
            buf.put_slice(b"\r\n");
        }
        buf.put_slice(b"\r\n");
    }

    /// The encoded block.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Decodes a whole block (exactly the `#hdr` bytes).
    pub fn decode(block: &[u8]) -> Result<Self, HeaderError> {
        let mut headers = Self::default();
        let status = walk(block, |name, value| match headers.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, values)) => values.push(value.to_owned()),
            None => headers.entries.push((name.to_owned(), vec![value.to_owned()])),
        })?;
        if let Some((code, description)) = status {
            headers.status = Some(code);
            headers.description = description.map(str::to_owned);
        }
        Ok(headers)
    }
}

/// Checks a header block without building the map (what the parser does
/// for every `HPUB`/`HMSG`).
pub fn validate(block: &[u8]) -> Result<(), HeaderError> {
    walk(block, |_, _| {}).map(drop)
}

type StatusLine<'a> = Option<(u16, Option<&'a str>)>;

/// Walks a block, calling `entry` for each header line, and returns the
/// status line. Shared by [`validate`] and [`Headers::decode`] so they
/// accept exactly the same blocks.
fn walk<'a>(block: &'a [u8], mut entry: impl FnMut(&'a str, &'a str)) -> Result<StatusLine<'a>, HeaderError> {
    let rest = block.strip_prefix(VERSION).ok_or(HeaderError::MissingVersion)?;
    let (first, mut rest) = split_line(rest).ok_or(HeaderError::NotTerminated)?;
    let status = match first {
        [] => None,
        // `NATS/1.01` or the like: not our version.
        [b, ..] if *b != b' ' && *b != b'\t' => return Err(HeaderError::MissingVersion),
        _ => parse_status(trim(first))?,
    };
    loop {
        let (line, after) = split_line(rest).ok_or(HeaderError::NotTerminated)?;
        if line.is_empty() {
            if !after.is_empty() {
                return Err(HeaderError::TrailingBytes);
            }
            return Ok(status);
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(HeaderError::MissingColon)?;
        let name = check_name(&line[..colon])?;
        let value = check_value(trim(&line[colon + 1..]))?;
        entry(name, value);
        rest = after;
    }
}

fn parse_status(s: &[u8]) -> Result<StatusLine<'_>, HeaderError> {
    if s.is_empty() {
        return Ok(None);
    }
    let (code, description) = match s {
        [a, b, c, rest @ ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => ([*a, *b, *c], rest),
        _ => return Err(HeaderError::BadStatus),
    };
    if !matches!(description.first(), None | Some(b' ' | b'\t')) {
        return Err(HeaderError::BadStatus);
    }
    let code = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let description = trim(description);
    let description = match check_value(description) {
        Ok("") => None,
        Ok(d) => Some(d),
        Err(HeaderError::NotUtf8) => return Err(HeaderError::NotUtf8),
        Err(_) => return Err(HeaderError::BadStatus),
    };
    Ok(Some((code, description)))
}

/// Splits at the first `\r\n`.
fn split_line(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = s.windows(2).position(|w| w == b"\r\n")?;
    Some((&s[..at], &s[at + 2..]))
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_blank(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_blank(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

fn trim_str(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

fn check_name(name: &[u8]) -> Result<&str, HeaderError> {
    if name.is_empty() || name.iter().any(|&b| b.is_ascii_control() || b == b' ' || b == b':') {
        return Err(HeaderError::InvalidName);
    }
    std::str::from_utf8(name).map_err(|_| HeaderError::NotUtf8)
}

fn check_value(value: &[u8]) -> Result<&str, HeaderError> {
    if value.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(HeaderError::InvalidValue);
    }
    std::str::from_utf8(value).map_err(|_| HeaderError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode() {
        let mut h = Headers::new();
        h.append("Nats-Msg-Id", "abc").unwrap();
        h.append("X", " 1 ").unwrap();
        h.append("Nats-Msg-Id", "def").unwrap();
        let bytes = h.to_bytes();
        assert_eq!(&bytes[..], b"NATS/1.0\r\nNats-Msg-Id: abc\r\nNats-Msg-Id: def\r\nX: 1\r\n\r\n");
        assert_eq!(bytes.len(), h.encoded_len());
        let back = Headers::decode(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.get("Nats-Msg-Id"), Some("abc"));
        assert_eq!(back.get_all("Nats-Msg-Id"), ["abc", "def"]);
        assert_eq!(back.get("nats-msg-id"), None, "names are case-sensitive");
        assert_eq!(back.iter().count(), 3);
    }

    #[test]
    fn status_lines() {
        let h = Headers::decode(b"NATS/1.0 503\r\n\r\n").unwrap();
        assert_eq!((h.status(), h.description()), (Some(503), None));
        assert!(h.is_empty());
        let h = Headers::decode(b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n").unwrap();
        assert_eq!((h.status(), h.description()), (Some(408), Some("Request Timeout")));
        assert_eq!(h.get("Nats-Pending-Messages"), Some("1"));
        assert_eq!(h.to_bytes(), &b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n"[..]);
        let h = Headers::decode(b"NATS/1.0  \r\n\r\n").unwrap();
        assert_eq!(h, Headers::new());

        let mut h = Headers::new();
        h.set_status(Some((7, Some("  x y ")))).unwrap();
        assert_eq!(h.to_bytes(), &b"NATS/1.0 007 x y\r\n\r\n"[..]);
        assert_eq!(Headers::decode(&h.to_bytes()).unwrap(), h);
        assert_eq!(h.encoded_len(), h.to_bytes().len());
        assert_eq!(h.set_status(Some((1000, None))), Err(HeaderError::BadStatus));
        assert_eq!(h.set_status(Some((200, Some("a\r\nb")))), Err(HeaderError::BadStatus));
        h.set_status(None).unwrap();
        assert_eq!(h, Headers::new());
    }

    #[test]
    fn insert_remove() {
        let mut h = Headers::new();
        h.append("A", "1").unwrap();
        h.append("B", "2").unwrap();
        h.append("A", "3").unwrap();
        h.insert("A", "4").unwrap();
        assert_eq!(h.iter().collect::<Vec<_>>(), [("A", "4"), ("B", "2")]);
        assert_eq!(h.remove("A"), Some(vec!["4".to_owned()]));
        assert_eq!(h.remove("A"), None);
        assert_eq!(h.append("", "x"), Err(HeaderError::InvalidName));
        assert_eq!(h.append("a b", "x"), Err(HeaderError::InvalidName));
        assert_eq!(h.append("a:b", "x"), Err(HeaderError::InvalidName));
        assert_eq!(h.insert("a", "x\r\nInjected: 1"), Err(HeaderError::InvalidValue));
        assert_eq!(h.append("a", "x\ny"), Err(HeaderError::InvalidValue));
    }

    #[test]
    fn malformed_blocks() {
        let cases: &[(&[u8], HeaderError)] = &[
            (b"", HeaderError::MissingVersion),
            (b"HTTP/1.1\r\n\r\n", HeaderError::MissingVersion),
            (b"NATS/1.01\r\n\r\n", HeaderError::MissingVersion),
            (b"NATS/1.0", HeaderError::NotTerminated),
            (b"NATS/1.0\r\n", HeaderError::NotTerminated),
            (b"NATS/1.0\r\nA: 1\r\n", HeaderError::NotTerminated),
            (b"NATS/1.0\r\n\r\nx", HeaderError::TrailingBytes),
            (b"NATS/1.0 50\r\n\r\n", HeaderError::BadStatus),
            (b"NATS/1.0 5031\r\n\r\n", HeaderError::BadStatus),
            (b"NATS/1.0 abc\r\n\r\n", HeaderError::BadStatus),
            (b"NATS/1.0 503 a\x01b\r\n\r\n", HeaderError::BadStatus),
            (b"NATS/1.0 503 \xff\r\n\r\n", HeaderError::NotUtf8),
            (b"NATS/1.0\r\nNoColon\r\n\r\n", HeaderError::MissingColon),
            (b"NATS/1.0\r\n: v\r\n\r\n", HeaderError::InvalidName),
            (b"NATS/1.0\r\nA B: v\r\n\r\n", HeaderError::InvalidName),
            (b"NATS/1.0\r\nA: v\nB: w\r\n\r\n", HeaderError::InvalidValue),
            (b"NATS/1.0\r\nA: v\rw\r\n\r\n", HeaderError::InvalidValue),
            (b"NATS/1.0\r\n\xff: v\r\n\r\n", HeaderError::NotUtf8),
            (b"NATS/1.0\r\nA: \xff\r\n\r\n", HeaderError::NotUtf8),
        ];
        for (block, err) in cases {
            assert_eq!(Headers::decode(block), Err(*err), "{:?}", String::from_utf8_lossy(block));
            assert_eq!(validate(block), Err(*err));
        }
        assert_eq!(validate(b"NATS/1.0\r\nA:\r\n\r\n"), Ok(()));
        assert_eq!(Headers::decode(b"NATS/1.0\r\nA:\t x \t\r\n\r\n").unwrap().get("A"), Some("x"));
    }
}

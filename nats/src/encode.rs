//! Writing operations into a `BytesMut`: the server side (`INFO`, `MSG`,
//! `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`) and the client side (`CONNECT`,
//! `PUB`, `HPUB`, `SUB`, `UNSUB`, `PING`, `PONG`).
//!
//! The writers do not validate: subjects, reply subjects, queue names and
//! sids must be tokens (non-empty, no whitespace or control character; use
//! [`crate::subject`] on untrusted ones) and a header block must come from
//! [`crate::Headers::encode`] or a parsed operation. Debug builds assert
//! the token rule, since a space in a subject would shift every field
//! after it.

use bytes::{BufMut, BytesMut};

use crate::json::{Connect, Info};

/// `INFO {json}\r\n`.
pub fn write_info(buf: &mut BytesMut, info: &Info) {
    write_json(buf, b"INFO ", info);
}

/// `MSG <subject> <sid> [reply] <#bytes>\r\n<payload>\r\n`.
pub fn write_msg(buf: &mut BytesMut, subject: &[u8], sid: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
    write_message(buf, b"MSG ", subject, Some(sid), reply, None, payload);
}

/// `HMSG <subject> <sid> [reply] <#hdr> <#total>\r\n<headers><payload>\r\n`.
pub fn write_hmsg(
    buf: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    headers: &[u8],
    payload: &[u8],
) {
    write_message(buf, b"HMSG ", subject, Some(sid), reply, Some(headers), payload);
}

/// `PING\r\n`.
pub fn write_ping(buf: &mut BytesMut) {
    buf.put_slice(b"PING\r\n");
}

/// `PONG\r\n`.
pub fn write_pong(buf: &mut BytesMut) {
    buf.put_slice(b"PONG\r\n");
}

/// `+OK\r\n`.
pub fn write_ok(buf: &mut BytesMut) {
    buf.put_slice(b"+OK\r\n");
}

/// `-ERR '<text>'\r\n`. CR and LF in `text` are written as spaces, so the
/// text cannot end the line early.
pub fn write_err(buf: &mut BytesMut, text: &str) {
    buf.reserve(text.len() + 9);
    buf.put_slice(b"-ERR '");
    for &b in text.as_bytes() {
        buf.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    buf.put_slice(b"'\r\n");
}

/// `CONNECT {json}\r\n`.
pub fn write_connect(buf: &mut BytesMut, connect: &Connect) {
    write_json(buf, b"CONNECT ", connect);
}

/// `PUB <subject> [reply] <#bytes>\r\n<payload>\r\n`.
pub fn write_pub(buf: &mut BytesMut, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
    write_message(buf, b"PUB ", subject, None, reply, None, payload);
}

/// `HPUB <subject> [reply] <#hdr> <#total>\r\n<headers><payload>\r\n`.
pub fn write_hpub(buf: &mut BytesMut, subject: &[u8], reply: Option<&[u8]>, headers: &[u8], payload: &[u8]) {
    write_message(buf, b"HPUB ", subject, None, reply, Some(headers), payload);
}

/// `SUB <subject> [queue] <sid>\r\n`.
pub fn write_sub(buf: &mut BytesMut, subject: &[u8], queue: Option<&[u8]>, sid: &[u8]) {
    buf.reserve(subject.len() + queue.map_or(0, <[u8]>::len) + sid.len() + 8);
    buf.put_slice(b"SUB ");
    put_token(buf, subject);
    if let Some(queue) = queue {
        put_token(buf, queue);
    }
    put_token(buf, sid);
    end_line(buf);
}

/// `UNSUB <sid> [max_msgs]\r\n`.
pub fn write_unsub(buf: &mut BytesMut, sid: &[u8], max_msgs: Option<u64>) {
    buf.reserve(sid.len() + 30);
    buf.put_slice(b"UNSUB ");
    put_token(buf, sid);
    if let Some(max) = max_msgs {
        put_decimal(buf, max);
        buf.put_u8(b' ');
    }
    end_line(buf);
}

fn write_json<T: serde::Serialize>(buf: &mut BytesMut, op: &[u8], value: &T) {
    buf.put_slice(op);
    // Compact JSON escapes every control character, so it holds no line end.
    serde_json::to_writer(buf.writer(), value).expect("a struct with string keys always serializes");
    buf.put_slice(b"\r\n");
}

/// The shared shape of `PUB`, `HPUB`, `MSG` and `HMSG`.
fn write_message(
    buf: &mut BytesMut,
    op: &[u8],
    subject: &[u8],
    sid: Option<&[u8]>,
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    let header_len = headers.map_or(0, <[u8]>::len);
    let line = op.len() + subject.len() + sid.map_or(0, <[u8]>::len) + reply.map_or(0, <[u8]>::len) + 48;
    buf.reserve(line + header_len + payload.len());
    buf.put_slice(op);
    put_token(buf, subject);
    if let Some(sid) = sid {
        put_token(buf, sid);
    }
    if let Some(reply) = reply {
        put_token(buf, reply);
    }
    if headers.is_some() {
        put_decimal(buf, header_len as u64);
        buf.put_u8(b' ');
    }
    put_decimal(buf, (header_len + payload.len()) as u64);
    buf.put_slice(b"\r\n");
    if let Some(headers) = headers {
        buf.put_slice(headers);
    }
    buf.put_slice(payload);
    buf.put_slice(b"\r\n");
}

/// A token followed by a space.
fn put_token(buf: &mut BytesMut, token: &[u8]) {
    debug_assert!(
        !token.is_empty() && !token.iter().any(|b| b.is_ascii_control() || *b == b' '),
        "not a protocol token: {:?}",
        String::from_utf8_lossy(token)
    );
    buf.put_slice(token);
    buf.put_u8(b' ');
}

/// Replaces the space after the last token by the line end.
fn end_line(buf: &mut BytesMut) {
    buf.truncate(buf.len() - 1);
    buf.put_slice(b"\r\n");
}

fn put_decimal(buf: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(f: impl FnOnce(&mut BytesMut)) -> String {
        let mut buf = BytesMut::new();
        f(&mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn server_ops() {
        assert_eq!(out(|b| write_msg(b, b"foo.bar", b"9", None, b"hello")), "MSG foo.bar 9 5\r\nhello\r\n");
        assert_eq!(out(|b| write_msg(b, b"a", b"1", Some(b"_INBOX.x"), b"")), "MSG a 1 _INBOX.x 0\r\n\r\n");
        assert_eq!(
            out(|b| write_hmsg(b, b"a", b"1", Some(b"r"), b"NATS/1.0\r\n\r\n", b"hi")),
            "HMSG a 1 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
        );
        assert_eq!(
            out(|b| write_hmsg(b, b"a", b"1", None, b"NATS/1.0 503\r\n\r\n", b"")),
            "HMSG a 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        );
        assert_eq!(out(write_ping), "PING\r\n");
        assert_eq!(out(write_pong), "PONG\r\n");
        assert_eq!(out(write_ok), "+OK\r\n");
        assert_eq!(out(|b| write_err(b, "Unknown Protocol Operation")), "-ERR 'Unknown Protocol Operation'\r\n");
        assert_eq!(out(|b| write_err(b, "a\r\nPING")), "-ERR 'a  PING'\r\n");
        let info = Info { server_id: "X".into(), ..Info::default() };
        assert_eq!(
            out(|b| write_info(b, &info)),
            r#"INFO {"server_id":"X","server_name":"","version":"","proto":1,"host":"","port":0,"headers":false,"max_payload":1048576}"#.to_owned() + "\r\n"
        );
    }

    #[test]
    fn client_ops() {
        assert_eq!(out(|b| write_pub(b, b"foo", None, b"hello")), "PUB foo 5\r\nhello\r\n");
        assert_eq!(out(|b| write_pub(b, b"foo", Some(b"r.1"), b"")), "PUB foo r.1 0\r\n\r\n");
        assert_eq!(
            out(|b| write_hpub(b, b"foo", None, b"NATS/1.0\r\nA: 1\r\n\r\n", b"xy")),
            "HPUB foo 18 20\r\nNATS/1.0\r\nA: 1\r\n\r\nxy\r\n"
        );
        assert_eq!(out(|b| write_sub(b, b"foo.*", None, b"1")), "SUB foo.* 1\r\n");
        assert_eq!(out(|b| write_sub(b, b"foo.>", Some(b"q"), b"22")), "SUB foo.> q 22\r\n");
        assert_eq!(out(|b| write_unsub(b, b"1", None)), "UNSUB 1\r\n");
        assert_eq!(out(|b| write_unsub(b, b"1", Some(u64::MAX))), "UNSUB 1 18446744073709551615\r\n");
        let connect = Connect { verbose: false, name: Some("bench".into()), ..Connect::default() };
        assert_eq!(
            out(|b| write_connect(b, &connect)),
            r#"CONNECT {"verbose":false,"pedantic":true,"tls_required":false,"name":"bench","protocol":0,"echo":true,"headers":false,"no_responders":false}"#.to_owned() + "\r\n"
        );
    }

    #[test]
    fn decimals() {
        for n in [0u64, 1, 9, 10, 99, 100, 1_048_576, u64::MAX] {
            assert_eq!(out(|b| put_decimal(b, n)), n.to_string());
        }
    }
}

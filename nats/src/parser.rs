//! The incremental parsers: [`Parser`] (client operations, server side) and
//! [`ServerOpParser`] (server operations, client side), sharing one framing
//! state machine.
//!
//! The framer alternates between two states:
//!
//! * **line**: looking for the `\n` that ends a control line. It remembers
//!   how far it has already looked, so a line trickling in byte by byte is
//!   scanned once. If more than `max_control_line` bytes are buffered
//!   without a line end, that is an error right away: a peer cannot make
//!   the server buffer an endless line.
//! * **payload**: a `PUB`/`HPUB`/`MSG`/`HMSG` line announced `n` bytes; wait
//!   until `n + 2` bytes are buffered, check that the last two are `\r\n`,
//!   and hand the `n` bytes out as a `Bytes` slice of the buffer (no copy).
//!   The size was checked against `max_payload` before entering this
//!   state, so the buffer never grows beyond the limits.
//!
//! A control line ends at `\n`; a `\r` in front of it is dropped. So bare
//! `\n` is tolerated, as nats-server does (handy with telnet), while the
//! payload terminator must be exactly `\r\n` (as in nats-server: that is
//! the only check that the announced size was right).

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ProtoError;
use crate::headers;
use crate::json::{Connect, Info};
use crate::ops::{ClientOp, Msg, Pub, ServerOp, Sub, Unsub};
use crate::subject::{validate_publish_subject, validate_queue, validate_subscribe_subject};

/// Default [`Limits::max_control_line`]: 4 KiB, as nats-server.
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;

/// Default [`Limits::max_payload`]: 1 MiB, as nats-server.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// The size limits a parser enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest control line, in bytes, without its line end.
    pub max_control_line: usize,
    /// The largest payload (header block included) an operation may
    /// announce.
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_control_line: DEFAULT_MAX_CONTROL_LINE, max_payload: DEFAULT_MAX_PAYLOAD }
    }
}

/// The control line of a message operation whose payload is awaited.
#[derive(Debug)]
struct Pending {
    subject: Bytes,
    /// Empty for `PUB`/`HPUB`.
    sid: Bytes,
    reply: Option<Bytes>,
    header_len: Option<usize>,
    total: usize,
    /// A validation error of the control line, reported once the payload
    /// has been consumed so that the stream stays in sync (non-fatal).
    invalid: Option<ProtoError>,
}

/// What a control line is.
enum Step<T> {
    /// A whole operation.
    Op(T),
    /// The start of a message; its payload follows.
    Payload(Pending),
}

/// The side-specific part of a parser: which operations exist.
trait Grammar {
    type Op;
    /// Parses a control line (without its line end).
    fn line(line: Bytes, limits: &Limits) -> Result<Step<Self::Op>, ProtoError>;
    /// Builds the message operation from its control line and payload
    /// (both checked).
    fn message(pending: Pending, data: Bytes) -> Self::Op;
}

#[derive(Debug)]
enum State {
    /// Looking for a line end; the first `scanned` bytes have none.
    Line {
        scanned: usize,
    },
    Payload(Pending),
}

/// The framing state machine shared by both parsers.
#[derive(Debug)]
struct Framer {
    buf: BytesMut,
    limits: Limits,
    state: State,
    failed: bool,
}

impl Framer {
    fn new(limits: Limits) -> Self {
        Self { buf: BytesMut::new(), limits, state: State::Line { scanned: 0 }, failed: false }
    }

    fn push(&mut self, chunk: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(chunk);
        }
    }

    fn push_bytes(&mut self, chunk: Bytes) {
        if self.failed {
            return;
        }
        if self.buf.is_empty() {
            // Nothing left over: the chunk itself becomes the buffer
            // (no copy when it is not shared).
            match chunk.try_into_mut() {
                Ok(owned) => self.buf = owned,
                Err(shared) => self.buf.extend_from_slice(&shared),
            }
        } else {
            self.buf.extend_from_slice(&chunk);
        }
    }

    fn fail<T>(&mut self, err: ProtoError) -> Option<Result<T, ProtoError>> {
        self.failed = true;
        self.buf = BytesMut::new();
        self.state = State::Line { scanned: 0 };
        Some(Err(err))
    }

    fn next<G: Grammar>(&mut self) -> Option<Result<G::Op, ProtoError>> {
        if self.failed {
            return None;
        }
        loop {
            match &mut self.state {
                State::Line { scanned } => {
                    let Some(at) = self.buf[*scanned..].iter().position(|&b| b == b'\n') else {
                        // A trailing `\r` may be the start of the line end.
                        let len = self.buf.len() - usize::from(self.buf.last() == Some(&b'\r'));
                        if len > self.limits.max_control_line {
                            return self.fail(ProtoError::ControlLineTooLong { max: self.limits.max_control_line });
                        }
                        *scanned = self.buf.len();
                        return None;
                    };
                    let end = *scanned + at;
                    let len = end - usize::from(end > 0 && self.buf[end - 1] == b'\r');
                    if len > self.limits.max_control_line {
                        return self.fail(ProtoError::ControlLineTooLong { max: self.limits.max_control_line });
                    }
                    let mut line = self.buf.split_to(end + 1).freeze();
                    line.truncate(len);
                    *scanned = 0;
                    match G::line(line, &self.limits) {
                        Ok(Step::Op(op)) => return Some(Ok(op)),
                        Ok(Step::Payload(pending)) => self.state = State::Payload(pending),
                        Err(e) if e.is_fatal() => return self.fail(e),
                        Err(e) => return Some(Err(e)),
                    }
                }
                State::Payload(pending) => {
                    let total = pending.total;
                    // Saturating: `max_payload` may be `usize::MAX`.
                    if self.buf.len() < total.saturating_add(2) {
                        // Catch an overlong payload as soon as possible.
                        if self.buf.len() > total && self.buf[total] != b'\r' {
                            return self.fail(ProtoError::PayloadNotTerminated);
                        }
                        // No reserving `total` bytes here: a line alone must
                        // not make us allocate a whole payload.
                        return None;
                    }
                    if &self.buf[total..total + 2] != b"\r\n" {
                        return self.fail(ProtoError::PayloadNotTerminated);
                    }
                    let State::Payload(pending) = std::mem::replace(&mut self.state, State::Line { scanned: 0 }) else {
                        unreachable!("in the payload state")
                    };
                    let data = self.buf.split_to(total).freeze();
                    self.buf.advance(2);
                    if let Some(err) = pending.invalid {
                        return Some(Err(err));
                    }
                    if let Some(h) = pending.header_len
                        && let Err(e) = headers::validate(&data[..h])
                    {
                        return Some(Err(ProtoError::InvalidHeaders(e)));
                    }
                    return Some(Ok(G::message(pending, data)));
                }
            }
        }
    }
}

macro_rules! parser {
    ($(#[$doc:meta])* $name:ident, $grammar:ty, $op:ty) => {
        $(#[$doc])*
        ///
        /// Feed bytes with [`push`](Self::push) as they arrive, then drain
        /// the operations by iterating: `None` means "need more bytes" (the
        /// iterator resumes after the next push). Drain after every push:
        /// the limits are checked while iterating, so they bound the
        /// buffer only if pushes and drains alternate. After a fatal error
        /// ([`ProtoError::is_fatal`]) the parser is done: it returns `None`
        /// and ignores input from then on; close the connection.
        #[derive(Debug)]
        pub struct $name {
            framer: Framer,
        }

        impl $name {
            /// A parser with the default [`Limits`].
            pub fn new() -> Self {
                Self::with_limits(Limits::default())
            }

            /// A parser with the given limits.
            pub fn with_limits(limits: Limits) -> Self {
                Self { framer: Framer::new(limits) }
            }

            /// The limits in force.
            pub fn limits(&self) -> Limits {
                self.framer.limits
            }

            /// Changes the limits, from the next control line on (e.g. a
            /// client adopting the server's `max_payload`).
            pub fn set_limits(&mut self, limits: Limits) {
                self.framer.limits = limits;
            }

            /// Appends received bytes.
            pub fn push(&mut self, chunk: &[u8]) {
                self.framer.push(chunk);
            }

            /// Appends received bytes the caller owns: [`push`](Self::push)
            /// without copying them when nothing is left over from
            /// earlier pushes and `chunk` is not shared.
            pub fn push_bytes(&mut self, chunk: Bytes) {
                self.framer.push_bytes(chunk);
            }

            /// Bytes received but not yet returned as operations.
            pub fn buffered(&self) -> usize {
                self.framer.buf.len()
            }

            /// Whether a fatal error ended the stream.
            pub fn is_failed(&self) -> bool {
                self.framer.failed
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl Iterator for $name {
            type Item = Result<$op, ProtoError>;

            fn next(&mut self) -> Option<Self::Item> {
                self.framer.next::<$grammar>()
            }
        }
    };
}

parser!(
    /// Parses the operations a client sends: `CONNECT`, `PUB`, `HPUB`,
    /// `SUB`, `UNSUB`, `PING`, `PONG` (what a server runs).
    Parser,
    ClientGrammar,
    ClientOp
);

parser!(
    /// Parses the operations a server sends: `INFO`, `MSG`, `HMSG`, `PING`,
    /// `PONG`, `+OK`, `-ERR` (what a client runs).
    ServerOpParser,
    ServerGrammar,
    ServerOp
);

struct ClientGrammar;

impl Grammar for ClientGrammar {
    type Op = ClientOp;

    fn line(line: Bytes, limits: &Limits) -> Result<Step<ClientOp>, ProtoError> {
        let (op, rest) = op_name(&line);
        if op.eq_ignore_ascii_case(b"PUB") {
            message_line(&line, rest, &PUB, limits).map(Step::Payload)
        } else if op.eq_ignore_ascii_case(b"HPUB") {
            message_line(&line, rest, &HPUB, limits).map(Step::Payload)
        } else if op.eq_ignore_ascii_case(b"PING") {
            no_args(&line, rest, "PING").map(|()| Step::Op(ClientOp::Ping))
        } else if op.eq_ignore_ascii_case(b"PONG") {
            no_args(&line, rest, "PONG").map(|()| Step::Op(ClientOp::Pong))
        } else if op.eq_ignore_ascii_case(b"SUB") {
            sub_line(&line, rest).map(Step::Op)
        } else if op.eq_ignore_ascii_case(b"UNSUB") {
            unsub_line(&line, rest).map(Step::Op)
        } else if op.eq_ignore_ascii_case(b"CONNECT") {
            json_object::<Connect>(&line[rest..])
                .map(|c| Step::Op(ClientOp::Connect(Box::new(c))))
                .map_err(ProtoError::InvalidConnect)
        } else {
            Err(ProtoError::UnknownOp)
        }
    }

    fn message(p: Pending, data: Bytes) -> ClientOp {
        let (headers, payload) = split_headers(p.header_len, data);
        ClientOp::Pub(Pub { subject: p.subject, reply: p.reply, headers, payload })
    }
}

struct ServerGrammar;

impl Grammar for ServerGrammar {
    type Op = ServerOp;

    fn line(line: Bytes, limits: &Limits) -> Result<Step<ServerOp>, ProtoError> {
        let (op, rest) = op_name(&line);
        if op.eq_ignore_ascii_case(b"MSG") {
            message_line(&line, rest, &MSG, limits).map(Step::Payload)
        } else if op.eq_ignore_ascii_case(b"HMSG") {
            message_line(&line, rest, &HMSG, limits).map(Step::Payload)
        } else if op.eq_ignore_ascii_case(b"PING") {
            no_args(&line, rest, "PING").map(|()| Step::Op(ServerOp::Ping))
        } else if op.eq_ignore_ascii_case(b"PONG") {
            no_args(&line, rest, "PONG").map(|()| Step::Op(ServerOp::Pong))
        } else if op.eq_ignore_ascii_case(b"+OK") {
            no_args(&line, rest, "+OK").map(|()| Step::Op(ServerOp::Ok))
        } else if op.eq_ignore_ascii_case(b"-ERR") {
            Ok(Step::Op(ServerOp::Err(err_text(&line[rest..]))))
        } else if op.eq_ignore_ascii_case(b"INFO") {
            json_object::<Info>(&line[rest..])
                .map(|i| Step::Op(ServerOp::Info(Box::new(i))))
                .map_err(ProtoError::InvalidInfo)
        } else {
            Err(ProtoError::UnknownOp)
        }
    }

    fn message(p: Pending, data: Bytes) -> ServerOp {
        let (headers, payload) = split_headers(p.header_len, data);
        ServerOp::Msg(Msg { subject: p.subject, sid: p.sid, reply: p.reply, headers, payload })
    }
}

/// Decodes the JSON argument of `CONNECT`/`INFO`. It must be an object:
/// serde would also take an array of the fields in order (the derived
/// visitor accepts sequences), which no peer sends and Go servers reject.
fn json_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, String> {
    if json.first() != Some(&b'{') {
        return Err("expected a JSON object".to_owned());
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

fn split_headers(header_len: Option<usize>, mut data: Bytes) -> (Option<Bytes>, Bytes) {
    match header_len {
        Some(h) => (Some(data.split_to(h)), data),
        None => (None, data),
    }
}

/// Fields are separated by any run of spaces and tabs.
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The operation name (up to the first blank, so a line starting with a
/// blank has an empty one, like nats-server rejects) and where the
/// arguments start.
fn op_name(line: &[u8]) -> (&[u8], usize) {
    let end = line.iter().position(|&b| is_blank(b)).unwrap_or(line.len());
    let rest = line[end..].iter().position(|&b| !is_blank(b)).map_or(line.len(), |i| end + i);
    (&line[..end], rest)
}

/// The most arguments any operation takes (`HMSG`).
const MAX_ARGS: usize = 5;

/// The blank-separated arguments of a line from `from` on: up to
/// [`MAX_ARGS`] ranges and the total count.
fn split_args(line: &[u8], from: usize) -> ([(usize, usize); MAX_ARGS], usize) {
    let mut ranges = [(0, 0); MAX_ARGS];
    let mut n = 0;
    let mut i = from;
    while i < line.len() {
        if is_blank(line[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < line.len() && !is_blank(line[i]) {
            i += 1;
        }
        if n < MAX_ARGS {
            ranges[n] = (start, i);
        }
        n += 1;
    }
    (ranges, n)
}

fn no_args(line: &[u8], from: usize, op: &'static str) -> Result<(), ProtoError> {
    match split_args(line, from).1 {
        0 => Ok(()),
        found => Err(ProtoError::WrongArgCount { op, found }),
    }
}

/// A non-negative decimal number (leading zeros allowed, as nats-server).
fn parse_number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A sid is any token, but control characters are refused so that every
/// parsed operation re-encodes safely.
fn check_sid(sid: &[u8]) -> Result<(), ProtoError> {
    match sid.iter().any(u8::is_ascii_control) {
        true => Err(ProtoError::InvalidSid),
        false => Ok(()),
    }
}

/// The shape of a message operation's control line.
struct Shape {
    op: &'static str,
    sid: bool,
    headers: bool,
}

const PUB: Shape = Shape { op: "PUB", sid: false, headers: false };
const HPUB: Shape = Shape { op: "HPUB", sid: false, headers: true };
const MSG: Shape = Shape { op: "MSG", sid: true, headers: false };
const HMSG: Shape = Shape { op: "HMSG", sid: true, headers: true };

/// `<subject> [sid] [reply] [#hdr] <#total>`.
fn message_line(line: &Bytes, from: usize, shape: &Shape, limits: &Limits) -> Result<Pending, ProtoError> {
    let (args, n) = split_args(line, from);
    let fixed = 2 + usize::from(shape.sid) + usize::from(shape.headers);
    if n != fixed && n != fixed + 1 {
        return Err(ProtoError::WrongArgCount { op: shape.op, found: n });
    }
    let arg = |i: usize| line.slice(args[i].0..args[i].1);
    let mut next = 0;
    let mut take = || {
        next += 1;
        arg(next - 1)
    };
    let subject = take();
    let sid = if shape.sid { take() } else { Bytes::new() };
    let reply = (n == fixed + 1).then(&mut take);
    // The sizes are read in place (no slice handle for them).
    let (first_size, last) = (next, n - 1);
    let number = |i: usize| parse_number(&line[args[i].0..args[i].1]);
    let (header_len, total) = if shape.headers {
        let header = number(first_size).ok_or(ProtoError::BadSize { op: shape.op, field: "header size" })?;
        let total = number(last).ok_or(ProtoError::BadSize { op: shape.op, field: "total size" })?;
        if header > total {
            return Err(ProtoError::HeaderSizeExceedsTotal { op: shape.op, header, total });
        }
        (Some(header), total)
    } else {
        (None, number(last).ok_or(ProtoError::BadSize { op: shape.op, field: "size" })?)
    };
    if total > limits.max_payload as u64 {
        return Err(ProtoError::PayloadTooLarge { size: total, max: limits.max_payload });
    }
    // Sizes are at most `max_payload` from here on: the casts are lossless.
    let invalid = validate_publish_subject(&subject)
        .map_err(ProtoError::InvalidPublishSubject)
        .and_then(|()| check_sid(&sid))
        .and_then(|()| {
            reply.as_deref().map_or(Ok(()), validate_publish_subject).map_err(ProtoError::InvalidReplySubject)
        })
        .err();
    Ok(Pending { subject, sid, reply, header_len: header_len.map(|h| h as usize), total: total as usize, invalid })
}

/// `SUB <subject> [queue] <sid>`.
fn sub_line(line: &Bytes, from: usize) -> Result<ClientOp, ProtoError> {
    let (args, n) = split_args(line, from);
    let arg = |i: usize| line.slice(args[i].0..args[i].1);
    let (subject, queue, sid) = match n {
        2 => (arg(0), None, arg(1)),
        3 => (arg(0), Some(arg(1)), arg(2)),
        found => return Err(ProtoError::WrongArgCount { op: "SUB", found }),
    };
    validate_subscribe_subject(&subject).map_err(ProtoError::InvalidSubject)?;
    if let Some(q) = &queue {
        validate_queue(q).map_err(ProtoError::InvalidQueue)?;
    }
    check_sid(&sid)?;
    Ok(ClientOp::Sub(Sub { subject, queue, sid }))
}

/// `UNSUB <sid> [max_msgs]`.
fn unsub_line(line: &Bytes, from: usize) -> Result<ClientOp, ProtoError> {
    let (args, n) = split_args(line, from);
    let arg = |i: usize| line.slice(args[i].0..args[i].1);
    let (sid, max_msgs) = match n {
        1 => (arg(0), None),
        2 => (arg(0), Some(parse_number(&arg(1)).ok_or(ProtoError::BadMaxMsgs)?)),
        found => return Err(ProtoError::WrongArgCount { op: "UNSUB", found }),
    };
    check_sid(&sid)?;
    Ok(ClientOp::Unsub(Unsub { sid, max_msgs }))
}

/// The text of `-ERR`: CR (the only line-end byte a line can still hold)
/// becomes a space, as the encoder does, then blanks around and one pair
/// of enclosing single quotes are removed. Not UTF-8 is replaced, not
/// refused: the text is for humans.
fn err_text(rest: &[u8]) -> String {
    let text = String::from_utf8_lossy(rest).replace('\r', " ");
    let text = text.trim_matches(|c| c == ' ' || c == '\t');
    let text = match text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        Some(inner) => inner,
        None => text,
    };
    text.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{HeaderError, SubjectError};

    fn client_ops(input: &[u8]) -> Vec<Result<ClientOp, ProtoError>> {
        let mut p = Parser::new();
        p.push(input);
        p.collect()
    }

    /// The same input fed one byte at a time.
    fn client_ops_bytewise(input: &[u8]) -> Vec<Result<ClientOp, ProtoError>> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for b in input {
            p.push(std::slice::from_ref(b));
            out.extend(p.by_ref());
        }
        out
    }

    fn server_ops(input: &[u8]) -> Vec<Result<ServerOp, ProtoError>> {
        let mut p = ServerOpParser::new();
        let mut out = Vec::new();
        for b in input {
            p.push(std::slice::from_ref(b));
            out.extend(p.by_ref());
        }
        let mut whole = ServerOpParser::new();
        whole.push(input);
        assert_eq!(whole.collect::<Vec<_>>(), out, "chunking changed the result");
        out
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn publ(subject: &str, reply: Option<&str>, headers: Option<&str>, payload: &str) -> ClientOp {
        ClientOp::Pub(Pub { subject: b(subject), reply: reply.map(b), headers: headers.map(b), payload: b(payload) })
    }

    fn sub(subject: &str, queue: Option<&str>, sid: &str) -> ClientOp {
        ClientOp::Sub(Sub { subject: b(subject), queue: queue.map(b), sid: b(sid) })
    }

    fn msg(subject: &str, sid: &str, reply: Option<&str>, headers: Option<&str>, payload: &str) -> ServerOp {
        ServerOp::Msg(Msg {
            subject: b(subject),
            sid: b(sid),
            reply: reply.map(b),
            headers: headers.map(b),
            payload: b(payload),
        })
    }

    #[test]
    fn every_client_op() {
        let input = concat!(
            "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"t\",\"headers\":true}\r\n",
            "PUB foo 5\r\nhello\r\n",
            "PUB foo.bar _INBOX.1 0\r\n\r\n",
            "HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
            "HPUB foo r 18 18\r\nNATS/1.0\r\nA: b\r\n\r\n\r\n",
            "SUB foo.* 1\r\n",
            "SUB foo.> q 2\r\n",
            "UNSUB 1\r\n",
            "UNSUB 2 10\r\n",
            "PING\r\n",
            "PONG\r\n",
        );
        let expected = vec![
            ClientOp::Connect(Box::new(Connect {
                verbose: false,
                pedantic: false,
                name: Some("t".into()),
                headers: true,
                ..Connect::default()
            })),
            publ("foo", None, None, "hello"),
            publ("foo.bar", Some("_INBOX.1"), None, ""),
            publ("foo", None, Some("NATS/1.0\r\n\r\n"), "hi"),
            publ("foo", Some("r"), Some("NATS/1.0\r\nA: b\r\n\r\n"), ""),
            sub("foo.*", None, "1"),
            sub("foo.>", Some("q"), "2"),
            ClientOp::Unsub(Unsub { sid: b("1"), max_msgs: None }),
            ClientOp::Unsub(Unsub { sid: b("2"), max_msgs: Some(10) }),
            ClientOp::Ping,
            ClientOp::Pong,
        ];
        let expected: Vec<_> = expected.into_iter().map(Ok).collect();
        assert_eq!(client_ops(input.as_bytes()), expected);
        assert_eq!(client_ops_bytewise(input.as_bytes()), expected);
        // What was parsed re-encodes to the input.
        let mut again = BytesMut::new();
        for op in &expected {
            op.as_ref().unwrap().encode(&mut again);
        }
        assert_eq!(client_ops(&again), expected);
    }

    #[test]
    fn lenient_syntax() {
        let input = "pub foo 1\r\na\r\nPuB\tfoo \t 1\r\nb\r\nSUB subj  1\r\nsub a q\t\t2  \r\nping\r\nPONG\nunsub 1 \r\nPUB foo 001\r\nc\r\n";
        let expected = vec![
            publ("foo", None, None, "a"),
            publ("foo", None, None, "b"),
            sub("subj", None, "1"),
            sub("a", Some("q"), "2"),
            ClientOp::Ping,
            ClientOp::Pong,
            ClientOp::Unsub(Unsub { sid: b("1"), max_msgs: None }),
            publ("foo", None, None, "c"),
        ];
        let expected: Vec<_> = expected.into_iter().map(Ok).collect();
        assert_eq!(client_ops(input.as_bytes()), expected);
        assert_eq!(client_ops_bytewise(input.as_bytes()), expected);
    }

    #[test]
    fn payload_is_a_slice_of_the_input() {
        let mut p = Parser::new();
        p.push(b"PUB foo 5\r\nhello\r\n");
        let Some(Ok(ClientOp::Pub(op))) = p.next() else { panic!("a PUB") };
        // One buffer: the payload sits 7 bytes after the subject.
        assert_eq!(op.payload.as_ptr() as usize - op.subject.as_ptr() as usize, 7);
        assert_eq!(p.buffered(), 0);
    }

    /// Chunks handed over as owned `Bytes` (taken as the buffer when
    /// nothing is left over) parse exactly as copied ones, wherever the
    /// chunk boundaries fall.
    #[test]
    fn owned_chunks_parse_as_copied_ones() {
        let input: &[u8] =
            b"PUB a 5\r\nhello\r\nPING\r\nHPUB b r 12 14\r\nNATS/1.0\r\n\r\nhi\r\nSUB c 1\r\nPUB d 0\r\n\r\n";
        let expected = client_ops(input);
        assert_eq!(expected.len(), 5);
        assert!(expected.iter().all(Result::is_ok));
        for size in 1..=input.len() {
            let mut p = Parser::new();
            let mut got = Vec::new();
            for chunk in input.chunks(size) {
                p.push_bytes(Bytes::copy_from_slice(chunk));
                got.extend(p.by_ref());
            }
            assert_eq!(got, expected, "chunks of {size}");
            assert_eq!(p.buffered(), 0);
        }
        // A shared chunk is copied, not taken: the caller's view stays.
        let shared = Bytes::copy_from_slice(input);
        let mut p = Parser::new();
        p.push_bytes(shared.clone());
        assert_eq!(p.by_ref().collect::<Vec<_>>(), expected);
        assert_eq!(&shared[..], input);
    }

    #[test]
    fn payloads_hold_line_ends() {
        let ops = client_ops(b"PUB a 6\r\nPING\r\n\r\nPING\r\n");
        assert_eq!(ops, vec![Ok(publ("a", None, None, "PING\r\n")), Ok(ClientOp::Ping)]);
    }

    #[test]
    fn every_server_op() {
        let input = concat!(
            "INFO {\"server_id\":\"S\",\"version\":\"2.10.0\",\"proto\":1,\"headers\":true,\"max_payload\":1048576}\r\n",
            "MSG foo 1 5\r\nhello\r\n",
            "MSG foo 1 _INBOX.x 0\r\n\r\n",
            "HMSG foo 2 16 18\r\nNATS/1.0 503\r\n\r\nhi\r\n",
            "hmsg foo 2 r 12 12\r\nNATS/1.0\r\n\r\n\r\n",
            "PING\r\nPONG\r\n+OK\r\n+ok\n",
            "-ERR 'Unknown Protocol Operation'\r\n",
            "-ERR  'Permissions Violation for Publish to \"a\"' \r\n",
            "-ERR Stale Connection\r\n",
            "-ERR\r\n",
        );
        let info = Info { server_id: "S".into(), version: "2.10.0".into(), headers: true, ..Info::default() };
        let expected = vec![
            ServerOp::Info(Box::new(info)),
            msg("foo", "1", None, None, "hello"),
            msg("foo", "1", Some("_INBOX.x"), None, ""),
            msg("foo", "2", None, Some("NATS/1.0 503\r\n\r\n"), "hi"),
            msg("foo", "2", Some("r"), Some("NATS/1.0\r\n\r\n"), ""),
            ServerOp::Ping,
            ServerOp::Pong,
            ServerOp::Ok,
            ServerOp::Ok,
            ServerOp::Err("Unknown Protocol Operation".into()),
            ServerOp::Err("Permissions Violation for Publish to \"a\"".into()),
            ServerOp::Err("Stale Connection".into()),
            ServerOp::Err(String::new()),
        ];
        let expected: Vec<_> = expected.into_iter().map(Ok).collect();
        assert_eq!(server_ops(input.as_bytes()), expected);
        let ServerOp::Msg(m) = expected[3].clone().unwrap() else { unreachable!() };
        assert_eq!(m.decode_headers().unwrap().unwrap().status(), Some(503));
    }

    #[test]
    fn server_errors() {
        assert_eq!(server_ops(b"PUB a 1\r\n"), vec![Err(ProtoError::UnknownOp)]);
        assert_eq!(server_ops(b"+OK now\r\n"), vec![Err(ProtoError::WrongArgCount { op: "+OK", found: 1 })]);
        assert!(matches!(server_ops(b"INFO {\r\n")[..], [Err(ProtoError::InvalidInfo(_))]));
        assert!(matches!(server_ops(b"INFO\r\n")[..], [Err(ProtoError::InvalidInfo(_))]));
        assert_eq!(server_ops(b"MSG a 1\r\n"), vec![Err(ProtoError::WrongArgCount { op: "MSG", found: 2 })]);
        assert_eq!(server_ops(b"HMSG a 1 5\r\n"), vec![Err(ProtoError::WrongArgCount { op: "HMSG", found: 3 })]);
        assert_eq!(
            server_ops(b"HMSG a 1 5 4\r\n"),
            vec![Err(ProtoError::HeaderSizeExceedsTotal { op: "HMSG", header: 5, total: 4 })]
        );
        assert_eq!(server_ops(b"MSG a 1 x\r\n"), vec![Err(ProtoError::BadSize { op: "MSG", field: "size" })]);
        assert_eq!(
            server_ops(b"MSG a.* 1 1\r\nx\r\nMSG a \x01 1\r\nx\r\nPING\r\n"),
            vec![
                Err(ProtoError::InvalidPublishSubject(SubjectError::Wildcard)),
                Err(ProtoError::InvalidSid),
                Ok(ServerOp::Ping)
            ]
        );
        assert_eq!(
            server_ops(b"HMSG a 1 2 2\r\nab\r\nPING\r\n"),
            vec![Err(ProtoError::InvalidHeaders(HeaderError::MissingVersion)), Ok(ServerOp::Ping)]
        );
    }

    #[test]
    fn err_texts() {
        let cases: [(&[u8], &str); 8] = [
            (b"-ERR 'x'", "x"),
            (b"-ERR ''", ""),
            (b"-ERR '", "'"),
            (b"-ERR '''", "'"),
            (b"-ERR ' x '", " x "),
            (b"-ERR \t'a'b' ", "a'b"),
            (b"-ERR a\rb", "a b"),
            (b"-err \xff", "\u{fffd}"),
        ];
        for (line, text) in cases {
            let mut p = ServerOpParser::new();
            p.push(line);
            p.push(b"\r\n");
            assert_eq!(p.next(), Some(Ok(ServerOp::Err(text.into()))), "{line:?}");
        }
    }

    #[test]
    fn control_line_limit() {
        let limits = Limits { max_control_line: 16, max_payload: 8 };
        // Exactly at the limit: fine, even with the `\r` already there.
        let mut p = Parser::with_limits(limits);
        p.push(b"PUB abcdefghij 1\r");
        assert_eq!(p.next(), None);
        p.push(b"\nx\r\n");
        assert_eq!(p.next(), Some(Ok(publ("abcdefghij", None, None, "x"))));
        // One more byte and no line end yet: refused before the line ends.
        let mut p = Parser::with_limits(limits);
        p.push(b"PUB abcdefghijk ");
        assert_eq!(p.next(), None);
        p.push(b"1");
        assert_eq!(p.next(), Some(Err(ProtoError::ControlLineTooLong { max: 16 })));
        assert!(p.is_failed());
        assert_eq!(p.buffered(), 0);
        p.push(b"\r\nPING\r\n");
        assert_eq!(p.next(), None);
        // One more byte in a complete line.
        let mut p = Parser::with_limits(limits);
        p.push(b"PUB abcdefghijk 1\r\nx\r\n");
        assert_eq!(p.next(), Some(Err(ProtoError::ControlLineTooLong { max: 16 })));
        // The default: 4096.
        let mut p = Parser::new();
        p.push(&[b'x'; 4096]);
        assert_eq!(p.next(), None);
        p.push(b"x");
        assert_eq!(p.next(), Some(Err(ProtoError::ControlLineTooLong { max: 4096 })));
    }

    #[test]
    fn payload_limit() {
        let limits = Limits { max_control_line: 64, max_payload: 8 };
        let mut p = Parser::with_limits(limits);
        p.push(b"PUB a 8\r\n12345678\r\nHPUB a 5 9\r\n");
        assert_eq!(p.next(), Some(Ok(publ("a", None, None, "12345678"))));
        assert_eq!(p.next(), Some(Err(ProtoError::PayloadTooLarge { size: 9, max: 8 })));
        assert_eq!(p.next(), None);
        // Refused on the control line, before any payload arrives.
        let mut p = Parser::new();
        p.push(b"PUB a 1048577\r\n");
        assert_eq!(p.next(), Some(Err(ProtoError::PayloadTooLarge { size: 1_048_577, max: DEFAULT_MAX_PAYLOAD })));
        // Limits can change between operations.
        let mut p = Parser::with_limits(limits);
        p.set_limits(Limits { max_payload: 100, ..limits });
        assert_eq!(p.limits().max_payload, 100);
        p.push(b"PUB a 9\r\n123456789\r\n");
        assert_eq!(p.next(), Some(Ok(publ("a", None, None, "123456789"))));
        // No limit at all: a huge size just waits (no overflow, no
        // allocation of the announced size).
        let mut p = Parser::with_limits(Limits { max_control_line: 64, max_payload: usize::MAX });
        p.push(b"PUB a 18446744073709551615\r\nabc");
        assert_eq!(p.next(), None);
        assert!(p.framer.buf.capacity() < 4096);
    }

    #[test]
    fn payload_framing() {
        // Longer than announced: caught at the first extra byte.
        let mut p = Parser::new();
        p.push(b"PUB a 3\r\nabcd");
        assert_eq!(p.next(), Some(Err(ProtoError::PayloadNotTerminated)));
        // Shorter than announced: the terminator is swallowed and the next
        // bytes take its place.
        let mut p = Parser::new();
        p.push(b"PUB a 3\r\nab\r\nPING\r\n");
        assert_eq!(p.next(), Some(Err(ProtoError::PayloadNotTerminated)));
        // Bare `\n` after a payload is not enough.
        assert_eq!(client_ops(b"PUB a 1\r\nx\nPING\r\n"), vec![Err(ProtoError::PayloadNotTerminated)]);
        assert_eq!(client_ops(b"PUB a 1\r\nx\r\r"), vec![Err(ProtoError::PayloadNotTerminated)]);
        // Incomplete: waits.
        let mut p = Parser::new();
        p.push(b"PUB a 3\r\nabc\r");
        assert_eq!(p.next(), None);
        assert!(!p.is_failed());
        p.push(b"\n");
        assert_eq!(p.next(), Some(Ok(publ("a", None, None, "abc"))));
    }

    #[test]
    fn client_errors_and_fatality() {
        let cases: Vec<(&[u8], ProtoError)> = vec![
            (b"FOO\r\n", ProtoError::UnknownOp),
            (b"\r\n", ProtoError::UnknownOp),
            (b" PING\r\n", ProtoError::UnknownOp),
            (b"MSG a 1 1\r\n", ProtoError::UnknownOp),
            (b"PUB\r\n", ProtoError::WrongArgCount { op: "PUB", found: 0 }),
            (b"PUB a b c 1\r\n", ProtoError::WrongArgCount { op: "PUB", found: 4 }),
            (b"HPUB a 1\r\n", ProtoError::WrongArgCount { op: "HPUB", found: 2 }),
            (b"SUB a\r\n", ProtoError::WrongArgCount { op: "SUB", found: 1 }),
            (b"UNSUB\r\n", ProtoError::WrongArgCount { op: "UNSUB", found: 0 }),
            (b"PING x\r\n", ProtoError::WrongArgCount { op: "PING", found: 1 }),
            (b"PONG x y\r\n", ProtoError::WrongArgCount { op: "PONG", found: 2 }),
            (b"PUB a -1\r\n", ProtoError::BadSize { op: "PUB", field: "size" }),
            (b"HPUB a x 1\r\n", ProtoError::BadSize { op: "HPUB", field: "header size" }),
            (b"HPUB a 1 x\r\n", ProtoError::BadSize { op: "HPUB", field: "total size" }),
            (b"HPUB a 2 1\r\n", ProtoError::HeaderSizeExceedsTotal { op: "HPUB", header: 2, total: 1 }),
            (b"UNSUB 1 x\r\n", ProtoError::BadMaxMsgs),
        ];
        for (input, err) in cases {
            assert!(err.is_fatal(), "{err:?}");
            assert_eq!(client_ops(input), vec![Err(err.clone())], "{:?}", String::from_utf8_lossy(input));
            // Fatal: nothing after it is parsed.
            let mut more = input.to_vec();
            more.extend_from_slice(b"PING\r\n");
            assert_eq!(client_ops_bytewise(&more), vec![Err(err)]);
        }
        assert!(matches!(client_ops(b"CONNECT {]\r\n")[..], [Err(ProtoError::InvalidConnect(_))]));
        assert!(matches!(client_ops(b"CONNECT\r\n")[..], [Err(ProtoError::InvalidConnect(_))]));
    }

    #[test]
    fn validation_errors_are_not_fatal() {
        let cases: Vec<(&[u8], ProtoError)> = vec![
            (b"PUB a..b 1\r\nx\r\n", ProtoError::InvalidPublishSubject(SubjectError::EmptyToken)),
            (b"PUB a.> 1\r\nx\r\n", ProtoError::InvalidPublishSubject(SubjectError::Wildcard)),
            (b"PUB a b.* 1\r\nx\r\n", ProtoError::InvalidReplySubject(SubjectError::Wildcard)),
            (b"HPUB \xff 12 12\r\nNATS/1.0\r\n\r\n\r\n", ProtoError::InvalidPublishSubject(SubjectError::NotUtf8)),
            (b"HPUB a 3 3\r\nabc\r\n", ProtoError::InvalidHeaders(HeaderError::MissingVersion)),
            (b"SUB a.>.b 1\r\n", ProtoError::InvalidSubject(SubjectError::FullWildcardNotLast)),
            (b"SUB a \xff 1\r\n", ProtoError::InvalidQueue(SubjectError::NotUtf8)),
            (b"SUB a \x01\r\n", ProtoError::InvalidSid),
            (b"UNSUB \x01\r\n", ProtoError::InvalidSid),
        ];
        for (input, err) in cases {
            assert!(!err.is_fatal(), "{err:?}");
            let mut more = input.to_vec();
            more.extend_from_slice(b"PING\r\n");
            let expected = vec![Err(err), Ok(ClientOp::Ping)];
            assert_eq!(client_ops(&more), expected, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(client_ops_bytewise(&more), expected);
        }
    }

    #[test]
    fn err_texts_of_every_error() {
        let all = [
            (ProtoError::UnknownOp, "Unknown Protocol Operation"),
            (ProtoError::ControlLineTooLong { max: 1 }, "Maximum Control Line Exceeded"),
            (ProtoError::PayloadTooLarge { size: 2, max: 1 }, "Maximum Payload Violation"),
            (ProtoError::PayloadNotTerminated, "Unknown Protocol Operation"),
            (ProtoError::WrongArgCount { op: "PUB", found: 0 }, "Wrong Number of Arguments"),
            (ProtoError::BadSize { op: "PUB", field: "size" }, "Bad or Missing Size"),
            (
                ProtoError::HeaderSizeExceedsTotal { op: "HPUB", header: 2, total: 1 },
                "Header Size Larger Than Total Size",
            ),
            (ProtoError::BadMaxMsgs, "Bad or Missing Max Msgs"),
            (ProtoError::InvalidPublishSubject(SubjectError::Empty), "Invalid Publish Subject"),
            (ProtoError::InvalidSubject(SubjectError::Empty), "Invalid Subject"),
            (ProtoError::InvalidReplySubject(SubjectError::Empty), "Invalid Reply Subject"),
            (ProtoError::InvalidQueue(SubjectError::Empty), "Invalid Queue Name"),
            (ProtoError::InvalidSid, "Invalid Subscription ID"),
            (ProtoError::InvalidHeaders(HeaderError::NotTerminated), "Invalid Headers"),
            (ProtoError::InvalidConnect(String::new()), "Invalid CONNECT"),
            (ProtoError::InvalidInfo(String::new()), "Invalid INFO"),
        ];
        for (err, text) in all {
            assert_eq!(err.err_text(), text);
            assert!(!err.to_string().is_empty());
        }
    }
}

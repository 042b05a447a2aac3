//! The operations of the protocol, as parsed and as encoded.

use bytes::{Bytes, BytesMut};

use crate::encode;
use crate::headers::Headers;
use crate::json::{Connect, Info};

/// A publication from a client: `PUB` (no headers) or `HPUB` (headers).
///
/// As parsed: `subject` is a valid literal subject, `reply` too, and
/// `headers` a valid header block (see [`crate::headers::validate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pub {
    /// Where to publish.
    pub subject: Bytes,
    /// Where responders should answer.
    pub reply: Option<Bytes>,
    /// The raw header block (`HPUB`), forwarded as-is in `HMSG`.
    pub headers: Option<Bytes>,
    /// The message body.
    pub payload: Bytes,
}

/// A subscription: `SUB <subject> [queue] <sid>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sub {
    /// The subject, wildcards allowed.
    pub subject: Bytes,
    /// The queue group: each message goes to one member of the group.
    pub queue: Option<Bytes>,
    /// The client's id for the subscription (any token; usually digits).
    pub sid: Bytes,
}

/// An unsubscription: `UNSUB <sid> [max_msgs]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsub {
    /// The subscription.
    pub sid: Bytes,
    /// Unsubscribe after this many messages in total instead of now.
    pub max_msgs: Option<u64>,
}

/// A message delivered to a client: `MSG` (no headers) or `HMSG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    /// The subject it was published to.
    pub subject: Bytes,
    /// The subscription it is delivered for.
    pub sid: Bytes,
    /// The reply subject of the publication.
    pub reply: Option<Bytes>,
    /// The raw header block (`HMSG`).
    pub headers: Option<Bytes>,
    /// The message body.
    pub payload: Bytes,
}

impl Pub {
    /// Decodes the header block, if any (a parsed one always decodes).
    pub fn decode_headers(&self) -> Option<Result<Headers, crate::HeaderError>> {
        self.headers.as_deref().map(Headers::decode)
    }
}

impl Msg {
    /// Decodes the header block, if any (a parsed one always decodes).
    pub fn decode_headers(&self) -> Option<Result<Headers, crate::HeaderError>> {
        self.headers.as_deref().map(Headers::decode)
    }
}

/// An operation a client sends (what a server parses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    /// `CONNECT {json}`.
    Connect(Box<Connect>),
    /// `PUB` or `HPUB`.
    Pub(Pub),
    /// `SUB`.
    Sub(Sub),
    /// `UNSUB`.
    Unsub(Unsub),
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
}

/// An operation a server sends (what a client parses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOp {
    /// `INFO {json}`.
    Info(Box<Info>),
    /// `MSG` or `HMSG`.
    Msg(Msg),
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR '<text>'`: the text without the quotes.
    Err(String),
}

impl ClientOp {
    /// Appends the operation's wire form to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Self::Connect(c) => encode::write_connect(buf, c),
            Self::Pub(p) => match &p.headers {
                None => encode::write_pub(buf, &p.subject, p.reply.as_deref(), &p.payload),
                Some(h) => encode::write_hpub(buf, &p.subject, p.reply.as_deref(), h, &p.payload),
            },
            Self::Sub(s) => encode::write_sub(buf, &s.subject, s.queue.as_deref(), &s.sid),
            Self::Unsub(u) => encode::write_unsub(buf, &u.sid, u.max_msgs),
            Self::Ping => encode::write_ping(buf),
            Self::Pong => encode::write_pong(buf),
        }
    }
}

impl ServerOp {
    /// Appends the operation's wire form to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Self::Info(i) => encode::write_info(buf, i),
            Self::Msg(m) => match &m.headers {
                None => encode::write_msg(buf, &m.subject, &m.sid, m.reply.as_deref(), &m.payload),
                Some(h) => encode::write_hmsg(buf, &m.subject, &m.sid, m.reply.as_deref(), h, &m.payload),
            },
            Self::Ping => encode::write_ping(buf),
            Self::Pong => encode::write_pong(buf),
            Self::Ok => encode::write_ok(buf),
            Self::Err(text) => encode::write_err(buf, text),
        }
    }
}

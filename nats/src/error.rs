//! Errors of the codec: what went wrong, the `-ERR` text a server sends for
//! it, and whether the connection can go on.

/// Why a subject, reply subject or queue group name is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject is empty.
    #[error("empty subject")]
    Empty,
    /// Two consecutive dots, or a dot at the start or the end (`a..b`,
    /// `.a`, `a.`).
    #[error("empty token")]
    EmptyToken,
    /// Whitespace or another ASCII control character.
    #[error("whitespace or control character")]
    BadCharacter,
    /// The bytes are not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    /// A `*` or `>` token where only literal subjects are allowed (publish
    /// and reply subjects).
    #[error("wildcard in a literal subject")]
    Wildcard,
    /// A `>` token that is not the last token.
    #[error("'>' is not the last token")]
    FullWildcardNotLast,
}

/// Why a header block (the first `#hdr` bytes of an `HPUB` or `HMSG`
/// payload) is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The block does not start with `NATS/1.0`.
    #[error("header block does not start with NATS/1.0")]
    MissingVersion,
    /// The status line has something after `NATS/1.0` that is not a
    /// three-digit status code, or a status or description that cannot be
    /// encoded.
    #[error("malformed status line")]
    BadStatus,
    /// The block does not end with an empty line (`\r\n\r\n`).
    #[error("header block not terminated by an empty line")]
    NotTerminated,
    /// Bytes after the empty line that ends the block.
    #[error("bytes after the end of the header block")]
    TrailingBytes,
    /// A header line without a `:`.
    #[error("header line without ':'")]
    MissingColon,
    /// A header name that is empty or holds whitespace, a control character
    /// or `:`.
    #[error("invalid header name")]
    InvalidName,
    /// A header value (or status description) holding a bare CR or LF or
    /// another control character than tab.
    #[error("invalid header value")]
    InvalidValue,
    /// A name, value or description that is not UTF-8.
    #[error("header not UTF-8")]
    NotUtf8,
}

/// A protocol error found while parsing a stream of operations.
///
/// Each error knows the text a server answers with
/// ([`err_text`](Self::err_text), the exact nats-server text where
/// nats-server has one) and whether it is fatal
/// ([`is_fatal`](Self::is_fatal)): after a fatal error the framing of the
/// stream is lost (or, as with nats-server, the peer is considered broken)
/// and the connection must be closed; after a non-fatal one the parser has
/// consumed the whole offending operation and goes on with the next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The line does not start with a known operation name (this includes
    /// an empty line and a line starting with whitespace).
    #[error("unknown protocol operation")]
    UnknownOp,
    /// A control line longer than the limit (detected as soon as that many
    /// bytes arrived without a line end).
    #[error("control line exceeds the limit of {max} bytes")]
    ControlLineTooLong {
        /// The limit.
        max: usize,
    },
    /// A message announcing more bytes than the maximum payload.
    #[error("payload of {size} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// The announced size (headers included).
        size: u64,
        /// The limit.
        max: usize,
    },
    /// The payload is not followed by exactly `\r\n` (it is longer than
    /// announced, or the terminator is wrong).
    #[error("payload not followed by CRLF")]
    PayloadNotTerminated,
    /// An operation with too few or too many arguments.
    #[error("{op}: wrong number of arguments ({found})")]
    WrongArgCount {
        /// The operation (upper case).
        op: &'static str,
        /// How many arguments the line had.
        found: usize,
    },
    /// A byte count that is not a non-negative decimal number fitting 64
    /// bits.
    #[error("{op}: bad {field}")]
    BadSize {
        /// The operation (upper case).
        op: &'static str,
        /// Which count (`size`, `header size`, `total size`).
        field: &'static str,
    },
    /// `HPUB`/`HMSG` announcing more header bytes than total bytes.
    #[error("{op}: header size {header} larger than total size {total}")]
    HeaderSizeExceedsTotal {
        /// The operation (upper case).
        op: &'static str,
        /// The announced header size.
        header: u64,
        /// The announced total size.
        total: u64,
    },
    /// `UNSUB` with a maximum that is not a non-negative decimal number.
    #[error("UNSUB: bad max_msgs")]
    BadMaxMsgs,
    /// The subject of a `PUB`/`HPUB`/`MSG`/`HMSG` is not a valid literal
    /// subject. Not fatal: the whole operation was consumed.
    #[error("invalid publish subject: {0}")]
    InvalidPublishSubject(SubjectError),
    /// The subject of a `SUB` is not a valid subject. Not fatal.
    #[error("invalid subject: {0}")]
    InvalidSubject(SubjectError),
    /// The reply subject is not a valid literal subject. Not fatal.
    #[error("invalid reply subject: {0}")]
    InvalidReplySubject(SubjectError),
    /// The queue group name of a `SUB` is not valid. Not fatal.
    #[error("invalid queue group name: {0}")]
    InvalidQueue(SubjectError),
    /// A sid holding a control character (any other token is a valid sid,
    /// as in nats-server). Not fatal.
    #[error("invalid sid")]
    InvalidSid,
    /// The header block of an `HPUB`/`HMSG` is malformed. Not fatal.
    #[error("invalid headers: {0}")]
    InvalidHeaders(HeaderError),
    /// The `CONNECT` JSON is missing, malformed or has fields of the wrong
    /// type.
    #[error("invalid CONNECT: {0}")]
    InvalidConnect(String),
    /// The `INFO` JSON is missing, malformed or has fields of the wrong
    /// type.
    #[error("invalid INFO: {0}")]
    InvalidInfo(String),
}

impl ProtoError {
    /// Whether the connection must be closed after this error.
    ///
    /// Framing and syntax errors are fatal, as in nats-server: once a
    /// control line or a size cannot be trusted, neither can anything after
    /// it. Validation errors on a fully consumed operation (bad subject,
    /// queue or headers) are not: the server answers `-ERR` and goes on.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Self::InvalidPublishSubject(_)
                | Self::InvalidSubject(_)
                | Self::InvalidReplySubject(_)
                | Self::InvalidQueue(_)
                | Self::InvalidSid
                | Self::InvalidHeaders(_)
        )
    }

    /// The text a server sends for this error, as `-ERR '<text>'`.
    ///
    /// Where nats-server sends a specific text, this is exactly that text
    /// (clients match on some of them). nats-server closes the connection
    /// without a specific text on argument errors; for those the text is
    /// ours, in the same style. The text never contains bytes from the
    /// input, so it cannot break the `-ERR` line.
    pub fn err_text(&self) -> &'static str {
        match self {
            Self::UnknownOp | Self::PayloadNotTerminated => "Unknown Protocol Operation",
            Self::ControlLineTooLong { .. } => "Maximum Control Line Exceeded",
            Self::PayloadTooLarge { .. } => "Maximum Payload Violation",
            Self::WrongArgCount { .. } => "Wrong Number of Arguments",
            Self::BadSize { .. } => "Bad or Missing Size",
            Self::HeaderSizeExceedsTotal { .. } => "Header Size Larger Than Total Size",
            Self::BadMaxMsgs => "Bad or Missing Max Msgs",
            Self::InvalidPublishSubject(_) => "Invalid Publish Subject",
            Self::InvalidSubject(_) => "Invalid Subject",
            Self::InvalidReplySubject(_) => "Invalid Reply Subject",
            Self::InvalidQueue(_) => "Invalid Queue Name",
            Self::InvalidSid => "Invalid Subscription ID",
            Self::InvalidHeaders(_) => "Invalid Headers",
            Self::InvalidConnect(_) => "Invalid CONNECT",
            Self::InvalidInfo(_) => "Invalid INFO",
        }
    }
}

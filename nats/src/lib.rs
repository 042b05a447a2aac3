//! The NATS client protocol, sans-IO: parsers and encoders for the text
//! protocol NATS clients and servers speak over TCP.
//!
//! Kaelix's NATS front end uses the server side — [`Parser`] for what
//! clients send (`CONNECT`, `PUB`, `HPUB`, `SUB`, `UNSUB`, `PING`, `PONG`)
//! and the `write_*` functions for what it answers (`INFO`, `MSG`, `HMSG`,
//! `PING`, `PONG`, `+OK`, `-ERR`) — so that unchanged clients (nats.go,
//! nats-py, async-nats) work against it. The `kaelix bench` load generator
//! uses the client side: [`ServerOpParser`] and the client-op writers.
//! Nothing here does IO; bytes go in and operations come out.
//!
//! # The model
//!
//! The protocol is a sequence of `\r\n`-terminated control lines
//! (`OP arg arg ...`); `PUB`, `HPUB`, `MSG` and `HMSG` announce a byte count
//! and are followed by that many payload bytes and `\r\n`. Both parsers run
//! the same incremental framing state machine (see [`parser`]): bytes are
//! pushed in chunks split anywhere, a control line is looked for up to its
//! `\n`, then a payload is awaited until it is complete, and every field
//! of the returned operation is a zero-copy [`bytes::Bytes`] slice of the
//! received bytes. Operation names are case-insensitive and fields are
//! separated by any run of spaces and tabs, as nats-server accepts.
//!
//! ```
//! use bytes::BytesMut;
//! use kaelix_nats::{ClientOp, Parser, write_err, write_msg};
//!
//! let mut parser = Parser::new();
//! let mut out = BytesMut::new();
//! // Bytes arrive split anywhere.
//! for chunk in [&b"SUB foo 1\r\nPUB foo 5\r\nhel"[..], b"lo\r\nPUB foo.* 1\r\nx\r\n"] {
//!     parser.push(chunk);
//!     for op in parser.by_ref() {
//!         match op {
//!             Ok(ClientOp::Pub(p)) => write_msg(&mut out, &p.subject, b"1", p.reply.as_deref(), &p.payload),
//!             Ok(_) => {}
//!             Err(e) => write_err(&mut out, e.err_text()), // close if `e.is_fatal()`
//!         }
//!     }
//! }
//! assert_eq!(&out[..], b"MSG foo 1 5\r\nhello\r\n-ERR 'Invalid Publish Subject'\r\n");
//! ```
//!
//! # Limits
//!
//! [`Limits`] bounds what a peer can make a parser buffer: a control line
//! longer than `max_control_line` (4 KiB by default) is an error as soon as
//! that many bytes arrived without a line end, and a message announcing
//! more than `max_payload` (1 MiB by default) is an error before any of its
//! payload is read.
//!
//! # Errors
//!
//! A [`ProtoError`] carries the `-ERR` text a server answers with
//! ([`ProtoError::err_text`], nats-server's exact text where it has one)
//! and whether it is fatal ([`ProtoError::is_fatal`]). Framing and syntax
//! errors are fatal, as in nats-server: once a line or a byte count cannot
//! be trusted, the position of the next operation is unknown, and guessing
//! would let a confused or hostile peer smuggle operations; the parser
//! stops and the connection must be closed. Validation errors of an
//! operation that was consumed whole (an invalid subject, queue name, sid
//! or header block) are not: the parser goes on with the next operation.
//!
//! # Validation
//!
//! Subjects, reply subjects and queue names are checked ([`subject`]),
//! including that they are UTF-8; header blocks are checked and can be
//! decoded into [`Headers`]; `CONNECT` and `INFO` JSON decode into
//! [`Connect`] and [`Info`].

pub mod encode;
mod error;
pub mod headers;
mod json;
mod ops;
pub mod parser;
pub mod subject;

pub use encode::{
    write_connect, write_err, write_hmsg, write_hpub, write_info, write_msg, write_ok, write_ping, write_pong,
    write_pub, write_sub, write_unsub,
};
pub use error::{HeaderError, ProtoError, SubjectError};
pub use headers::Headers;
pub use json::{Connect, Info};
pub use ops::{ClientOp, Msg, Pub, ServerOp, Sub, Unsub};
pub use parser::{DEFAULT_MAX_CONTROL_LINE, DEFAULT_MAX_PAYLOAD, Limits, Parser, ServerOpParser};

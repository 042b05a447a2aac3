//! A catalog of malformed inputs, each with the specific error it must
//! produce, whatever the chunking, and whether the stream goes on after it.

use kaelix_nats::{HeaderError, Limits, Parser, ProtoError, ServerOpParser, SubjectError};

/// The first error a parser reports for `input` fed in chunks of `chunk`
/// bytes, and whether an op follows it (the input is followed by `PING`).
fn first_error<P, T>(mut parser: P, input: &[u8], chunk: usize) -> Option<(ProtoError, bool)>
where
    P: Iterator<Item = Result<T, ProtoError>> + Feed,
    T: std::fmt::Debug,
{
    let mut stream = input.to_vec();
    stream.extend_from_slice(b"PING\r\n");
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        parser.feed(piece);
        out.extend(parser.by_ref());
    }
    let at = out.iter().position(Result::is_err)?;
    let continued = out.len() > at + 1;
    out.swap_remove(at).err().map(|e| (e, continued))
}

trait Feed {
    fn feed(&mut self, chunk: &[u8]);
}

impl Feed for Parser {
    fn feed(&mut self, chunk: &[u8]) {
        self.push(chunk);
    }
}

impl Feed for ServerOpParser {
    fn feed(&mut self, chunk: &[u8]) {
        self.push(chunk);
    }
}

/// Same error, ignoring the JSON error's wording.
fn same_kind(found: &ProtoError, expected: &ProtoError) -> bool {
    match (found, expected) {
        (ProtoError::InvalidConnect(_), ProtoError::InvalidConnect(_)) => true,
        (ProtoError::InvalidInfo(_), ProtoError::InvalidInfo(_)) => true,
        _ => found == expected,
    }
}

fn hpub(block: &[u8]) -> Vec<u8> {
    let mut v = format!("HPUB a {} {}\r\n", block.len(), block.len() + 2).into_bytes();
    v.extend_from_slice(block);
    v.extend_from_slice(b"xy\r\n");
    v
}

fn connect_err() -> ProtoError {
    ProtoError::InvalidConnect(String::new())
}

fn args(op: &'static str, found: usize) -> ProtoError {
    ProtoError::WrongArgCount { op, found }
}

fn size(op: &'static str, field: &'static str) -> ProtoError {
    ProtoError::BadSize { op, field }
}

#[test]
fn client_catalog() {
    use ProtoError::*;
    let long_line = [b"PUB ".as_slice(), &[b'a'; 5000]].concat();
    let long_sub = [b"SUB ".as_slice(), &[b'a'; 4100], b" 1\r\n"].concat();
    let max = kaelix_nats::DEFAULT_MAX_PAYLOAD;
    let cases: Vec<(Vec<u8>, ProtoError)> = vec![
        // bad operation names
        (b"FOO bar\r\n".to_vec(), UnknownOp),
        (b"PUBX a 1\r\n".to_vec(), UnknownOp),
        (b"PU\r\n".to_vec(), UnknownOp),
        (b"\r\n".to_vec(), UnknownOp),
        (b" PUB a 1\r\n".to_vec(), UnknownOp),
        (b"CONNECT{}\r\n".to_vec(), UnknownOp),
        (b"MSG a 1 1\r\nx\r\n".to_vec(), UnknownOp),
        (b"INFO {}\r\n".to_vec(), UnknownOp),
        // missing or extra fields
        (b"PUB\r\n".to_vec(), args("PUB", 0)),
        (b"PUB a\r\n".to_vec(), args("PUB", 1)),
        (b"PUB a b c 1\r\n".to_vec(), args("PUB", 4)),
        (b"HPUB a 1\r\n".to_vec(), args("HPUB", 2)),
        (b"HPUB a b c 1 2\r\n".to_vec(), args("HPUB", 5)),
        (b"SUB a\r\n".to_vec(), args("SUB", 1)),
        (b"SUB a b c d\r\n".to_vec(), args("SUB", 4)),
        (b"UNSUB\r\n".to_vec(), args("UNSUB", 0)),
        (b"UNSUB 1 2 3\r\n".to_vec(), args("UNSUB", 3)),
        (b"PING now\r\n".to_vec(), args("PING", 1)),
        (b"PONG x\r\n".to_vec(), args("PONG", 1)),
        // sizes
        (b"PUB a -1\r\n".to_vec(), size("PUB", "size")),
        (b"PUB a x\r\n".to_vec(), size("PUB", "size")),
        (b"PUB a 1.5\r\n".to_vec(), size("PUB", "size")),
        (b"PUB a +5\r\n".to_vec(), size("PUB", "size")),
        (b"PUB a 0x10\r\n".to_vec(), size("PUB", "size")),
        (b"PUB a 99999999999999999999\r\n".to_vec(), size("PUB", "size")),
        (b"HPUB a -1 5\r\n".to_vec(), size("HPUB", "header size")),
        (b"HPUB a 1 -5\r\n".to_vec(), size("HPUB", "total size")),
        (b"HPUB a 10 5\r\n".to_vec(), HeaderSizeExceedsTotal { op: "HPUB", header: 10, total: 5 }),
        (b"UNSUB 1 x\r\n".to_vec(), BadMaxMsgs),
        (b"UNSUB 1 -1\r\n".to_vec(), BadMaxMsgs),
        (b"UNSUB 1 99999999999999999999\r\n".to_vec(), BadMaxMsgs),
        // limits
        (b"PUB a 2000000\r\n".to_vec(), PayloadTooLarge { size: 2_000_000, max }),
        (b"HPUB a 10 1048577\r\n".to_vec(), PayloadTooLarge { size: 1_048_577, max }),
        (long_line, ControlLineTooLong { max: 4096 }),
        (long_sub, ControlLineTooLong { max: 4096 }),
        // payload framing
        (b"PUB a 3\r\nabcdef\r\n".to_vec(), PayloadNotTerminated),
        (b"PUB a 5\r\nabc\r\n".to_vec(), PayloadNotTerminated),
        (b"PUB a 1\r\nx\n".to_vec(), PayloadNotTerminated),
        (b"PUB a 1\r\nxyz".to_vec(), PayloadNotTerminated),
        (b"HPUB a 12 12\r\nNATS/1.0\r\n\r\n".to_vec(), PayloadNotTerminated),
        // subjects (not fatal)
        (b"PUB a..b 1\r\nx\r\n".to_vec(), InvalidPublishSubject(SubjectError::EmptyToken)),
        (b"PUB .a 1\r\nx\r\n".to_vec(), InvalidPublishSubject(SubjectError::EmptyToken)),
        (b"PUB a. 1\r\nx\r\n".to_vec(), InvalidPublishSubject(SubjectError::EmptyToken)),
        (b"PUB a\x0cb 1\r\nx\r\n".to_vec(), InvalidPublishSubject(SubjectError::BadCharacter)),
        (b"PUB a\rb 1\r\nx\r\n".to_vec(), InvalidPublishSubject(SubjectError::BadCharacter)),
        (b"PUB a.* 1\r\nx\r\n".to_vec(), InvalidPublishSubject(SubjectError::Wildcard)),
        (b"PUB > 1\r\nx\r\n".to_vec(), InvalidPublishSubject(SubjectError::Wildcard)),
        (b"HPUB a.> 12 12\r\nNATS/1.0\r\n\r\n\r\n".to_vec(), InvalidPublishSubject(SubjectError::Wildcard)),
        (b"PUB \xc3\x28 1\r\nx\r\n".to_vec(), InvalidPublishSubject(SubjectError::NotUtf8)),
        (b"PUB a r.> 1\r\nx\r\n".to_vec(), InvalidReplySubject(SubjectError::Wildcard)),
        (b"PUB a r..s 1\r\nx\r\n".to_vec(), InvalidReplySubject(SubjectError::EmptyToken)),
        (b"SUB a.>.b 1\r\n".to_vec(), InvalidSubject(SubjectError::FullWildcardNotLast)),
        (b"SUB >.a 1\r\n".to_vec(), InvalidSubject(SubjectError::FullWildcardNotLast)),
        (b"SUB a.. 1\r\n".to_vec(), InvalidSubject(SubjectError::EmptyToken)),
        (b"SUB a.\xff 1\r\n".to_vec(), InvalidSubject(SubjectError::NotUtf8)),
        (b"SUB a \xff 1\r\n".to_vec(), InvalidQueue(SubjectError::NotUtf8)),
        (b"SUB a q\x7f 1\r\n".to_vec(), InvalidQueue(SubjectError::BadCharacter)),
        (b"SUB a 1\x00\r\n".to_vec(), InvalidSid),
        // header blocks (not fatal)
        (hpub(b"abcdefghijkl"), InvalidHeaders(HeaderError::MissingVersion)),
        (hpub(b"NATS/2.0\r\n\r\n"), InvalidHeaders(HeaderError::MissingVersion)),
        (hpub(b"NATS/1.0\r\n"), InvalidHeaders(HeaderError::NotTerminated)),
        (hpub(b"NATS/1.0\r\nA\r\n\r\n"), InvalidHeaders(HeaderError::MissingColon)),
        (hpub(b"NATS/1.0\r\nA B: c\r\n\r\n"), InvalidHeaders(HeaderError::InvalidName)),
        (hpub(b"NATS/1.0 5x3\r\n\r\n"), InvalidHeaders(HeaderError::BadStatus)),
        (hpub(b"NATS/1.0\r\n\r\nA: b\r\n"), InvalidHeaders(HeaderError::TrailingBytes)),
        (hpub(b"NATS/1.0\r\nA: \xff\r\n\r\n"), InvalidHeaders(HeaderError::NotUtf8)),
        // CONNECT
        (b"CONNECT {\r\n".to_vec(), connect_err()),
        (b"CONNECT\r\n".to_vec(), connect_err()),
        (b"CONNECT {} x\r\n".to_vec(), connect_err()),
        (b"CONNECT []\r\n".to_vec(), connect_err()),
        (b"CONNECT {\"verbose\":\"yes\"}\r\n".to_vec(), connect_err()),
        (b"CONNECT {\"protocol\":-1}\r\n".to_vec(), connect_err()),
        (b"CONNECT {\"user\":5}\r\n".to_vec(), connect_err()),
        (b"CONNECT {\"name\":\"\xff\"}\r\n".to_vec(), connect_err()),
    ];
    assert!(cases.len() >= 30);
    for (input, expected) in &cases {
        let shown = String::from_utf8_lossy(&input[..input.len().min(60)]).into_owned();
        for chunk in [input.len() + 6, 1, 2, 7] {
            let (found, continued) =
                first_error(Parser::new(), input, chunk).unwrap_or_else(|| panic!("no error for {shown:?}"));
            assert!(same_kind(&found, expected), "{shown:?} (chunks of {chunk}): {found:?}, expected {expected:?}");
            assert_eq!(continued, !found.is_fatal(), "{shown:?}: the stream goes on iff the error is not fatal");
            assert!(!found.err_text().is_empty());
        }
    }
}

#[test]
fn server_catalog() {
    use ProtoError::*;
    let cases: Vec<(&[u8], ProtoError)> = vec![
        (b"PUB a 1\r\nx\r\n", UnknownOp),
        (b"OK\r\n", UnknownOp),
        (b"MSG a 1\r\n", args("MSG", 2)),
        (b"MSG a 1 r s 5\r\n", args("MSG", 5)),
        (b"HMSG a 1 5\r\n", args("HMSG", 3)),
        (b"+OK x\r\n", args("+OK", 1)),
        (b"MSG a 1 -5\r\n", size("MSG", "size")),
        (b"HMSG a 1 x 5\r\n", size("HMSG", "header size")),
        (b"HMSG a 1 5 4\r\n", HeaderSizeExceedsTotal { op: "HMSG", header: 5, total: 4 }),
        (b"MSG a 1 3\r\nabcd\r\n", PayloadNotTerminated),
        (b"MSG a.* 1 1\r\nx\r\n", InvalidPublishSubject(SubjectError::Wildcard)),
        (b"MSG a 1 r.* 1\r\nx\r\n", InvalidReplySubject(SubjectError::Wildcard)),
        (b"MSG a \x01 1\r\nx\r\n", InvalidSid),
        (b"HMSG a 1 2 2\r\nab\r\n", InvalidHeaders(HeaderError::MissingVersion)),
        (b"INFO\r\n", InvalidInfo(String::new())),
        (b"INFO {\"port\":\"x\"}\r\n", InvalidInfo(String::new())),
    ];
    for (input, expected) in &cases {
        for chunk in [input.len() + 6, 1, 3] {
            let (found, continued) = first_error(ServerOpParser::new(), input, chunk).expect("an error");
            assert!(same_kind(&found, expected), "{input:?}: {found:?}, expected {expected:?}");
            assert_eq!(continued, !found.is_fatal());
        }
    }
    // The payload limit on the client side too.
    let limits = Limits { max_control_line: 4096, max_payload: 10 };
    let found = first_error(ServerOpParser::with_limits(limits), b"MSG a 1 11\r\n", 4).expect("an error");
    assert_eq!(found, (PayloadTooLarge { size: 11, max: 10 }, false));
}

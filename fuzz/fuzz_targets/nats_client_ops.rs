//! Bytes from any NATS client reach the server's parser (and bytes from the
//! server reach the bench tool's): fed in arbitrary chunks, neither parser
//! may panic, nothing may follow a fatal error, and every operation that
//! parses must re-encode to bytes that parse back to the same operation.
#![no_main]

use bytes::BytesMut;
use kaelix_nats::{Limits, Parser, ServerOpParser};
use libfuzzer_sys::fuzz_target;

/// Small limits, so that the fuzzer reaches them.
const LIMITS: Limits = Limits { max_control_line: 256, max_payload: 512 };
const UNLIMITED: Limits = Limits { max_control_line: usize::MAX, max_payload: usize::MAX };

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let chunk = usize::from(chunk % 32) + 1;

    let mut parser = Parser::with_limits(LIMITS);
    let mut fatal = false;
    for piece in rest.chunks(chunk) {
        parser.push(piece);
        for result in parser.by_ref() {
            assert!(!fatal, "output after a fatal error");
            match result {
                Ok(op) => {
                    let mut buf = BytesMut::new();
                    op.encode(&mut buf);
                    let mut again = Parser::with_limits(UNLIMITED);
                    again.push(&buf);
                    assert_eq!(again.next(), Some(Ok(op)), "re-encoding does not parse back");
                    assert_eq!(again.next(), None);
                    assert_eq!(again.buffered(), 0);
                }
                Err(e) => fatal = e.is_fatal(),
            }
        }
    }
    assert_eq!(fatal, parser.is_failed());

    let mut parser = ServerOpParser::with_limits(LIMITS);
    let mut fatal = false;
    for piece in rest.chunks(chunk) {
        parser.push(piece);
        for result in parser.by_ref() {
            assert!(!fatal, "output after a fatal error");
            match result {
                Ok(op) => {
                    let mut buf = BytesMut::new();
                    op.encode(&mut buf);
                    let mut again = ServerOpParser::with_limits(UNLIMITED);
                    again.push(&buf);
                    assert_eq!(again.next(), Some(Ok(op)), "re-encoding does not parse back");
                    assert_eq!(again.next(), None);
                }
                Err(e) => fatal = e.is_fatal(),
            }
        }
    }
    assert_eq!(fatal, parser.is_failed());
});

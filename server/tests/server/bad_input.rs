//! A catalog of malformed input: each case gets its precise `-ERR`, fatal
//! ones close only their own connection, and a well-behaved client on the
//! same server keeps working throughout.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real sockets and time

use crate::support::{Raw, TestServer};

/// (name, bytes after a good CONNECT, expected -ERR text, connection closed)
const CASES: &[(&str, &[u8], &str, bool)] = &[
    ("unknown op", b"FOO bar\r\n", "Unknown Protocol Operation", true),
    ("empty line", b"\r\n", "Unknown Protocol Operation", true),
    ("leading space", b" PING\r\n", "Unknown Protocol Operation", true),
    ("binary garbage", b"\x00\x01\x02\x03\r\n", "Unknown Protocol Operation", true),
    ("PUB without size", b"PUB a\r\n", "Wrong Number of Arguments", true),
    ("PUB too many args", b"PUB a b c 1\r\nx\r\n", "Wrong Number of Arguments", true),
    ("PUB non-numeric size", b"PUB a x\r\n", "Bad or Missing Size", true),
    ("PUB negative size", b"PUB a -1\r\n", "Bad or Missing Size", true),
    ("PUB overflowing size", b"PUB a 99999999999999999999999\r\n", "Bad or Missing Size", true),
    ("PUB over max payload", b"PUB a 2000000\r\n", "Maximum Payload Violation", true),
    ("payload longer than announced", b"PUB a 2\r\nabc\r\n", "Unknown Protocol Operation", true),
    ("payload without CRLF", b"PUB a 2\r\nabXY", "Unknown Protocol Operation", true),
    ("HPUB header > total", b"HPUB a 10 5\r\n", "Header Size Larger Than Total Size", true),
    ("HPUB missing total", b"HPUB a 10\r\n", "Wrong Number of Arguments", true),
    ("SUB without sid", b"SUB a\r\n", "Wrong Number of Arguments", true),
    ("UNSUB bad max", b"UNSUB 1 x\r\n", "Bad or Missing Max Msgs", true),
    ("UNSUB no sid", b"UNSUB\r\n", "Wrong Number of Arguments", true),
    ("CONNECT bad JSON", b"CONNECT {nope\r\n", "Invalid CONNECT", true),
    ("over-long control line", &[b'P'; 5000], "Maximum Control Line Exceeded", true),
    ("PUB empty token", b"PUB a..b 1\r\nx\r\n", "Invalid Publish Subject", false),
    ("PUB leading dot", b"PUB .a 1\r\nx\r\n", "Invalid Publish Subject", false),
    ("PUB trailing dot", b"PUB a. 1\r\nx\r\n", "Invalid Publish Subject", false),
    ("PUB wildcard *", b"PUB a.* 1\r\nx\r\n", "Invalid Publish Subject", false),
    ("PUB wildcard >", b"PUB a.> 1\r\nx\r\n", "Invalid Publish Subject", false),
    ("PUB bad UTF-8 subject", b"PUB a\xff 1\r\nx\r\n", "Invalid Publish Subject", false),
    ("PUB bad reply", b"PUB a r.* 1\r\nx\r\n", "Invalid Reply Subject", false),
    ("SUB > not last", b"SUB a.>.b 1\r\n", "Invalid Subject", false),
    ("SUB partial wildcard", b"SUB a.b* 1\r\n", "Invalid Subject", false),
    ("SUB empty token", b"SUB a..b 1\r\n", "Invalid Subject", false),
    ("SUB bad UTF-8", b"SUB \xc3\x28 1\r\n", "Invalid Subject", false),
    ("HPUB bad header block", b"HPUB a 6 7\r\nHTTP\r\nx\r\n", "Invalid Headers", false),
    ("SUB duplicate sid", b"SUB a 7\r\nSUB b 7\r\n", "Duplicate Subscription ID", false),
    (
        "PUB subject with 33 tokens",
        b"PUB a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a 1\r\nx\r\n",
        "Invalid Publish Subject",
        false,
    ),
];

#[test]
fn every_malformed_input_gets_its_error_and_the_server_keeps_serving() {
    let server = TestServer::start("bad-input");
    assert!(CASES.len() >= 30, "the catalog has {} cases", CASES.len());
    // A healthy subscriber that must keep receiving throughout.
    let mut healthy = Raw::connected(server.addr);
    healthy.send(b"SUB healthy.check 1\r\nPING\r\n");
    assert_eq!(healthy.line(), "PONG");
    let mut failures = Vec::new();
    for (i, (name, input, err, fatal)) in CASES.iter().enumerate() {
        let mut raw = Raw::connected(server.addr);
        raw.send(input);
        if !fatal {
            // A non-fatal error leaves the connection usable: PING answers.
            raw.send(b"PING\r\n");
        }
        let got = raw.line();
        let want = format!("-ERR '{err}'");
        if got != want {
            failures.push(format!("{name}: expected {want:?}, got {got:?}"));
            continue;
        }
        if *fatal {
            if !raw.closed() {
                failures.push(format!("{name}: the connection stayed open after a fatal error"));
            }
        } else {
            let pong = raw.line();
            if pong != "PONG" {
                failures.push(format!("{name}: after a non-fatal error, PING got {pong:?}"));
            }
        }
        // The healthy client still gets messages, published by someone else.
        let mut publisher = Raw::connected(server.addr);
        publisher.send(format!("PUB healthy.check {}\r\n{i:03}\r\nPING\r\n", 3).as_bytes());
        assert_eq!(publisher.line(), "PONG");
        let msg = healthy.line();
        assert_eq!(msg, "MSG healthy.check 1 3", "after case {name}");
        assert_eq!(healthy.payload(3), format!("{i:03}").into_bytes());
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn operations_before_connect_and_silence_are_refused() {
    let server = TestServer::start("before-connect");
    let (mut raw, _) = Raw::connect(server.addr);
    raw.send(b"PUB a 1\r\nx\r\n");
    assert_eq!(raw.line(), "-ERR 'Authorization Violation'");
    assert!(raw.closed());
    // PING before CONNECT is answered (clients probe with it).
    let (mut raw, _) = Raw::connect(server.addr);
    raw.send(b"PING\r\n");
    assert_eq!(raw.line(), "PONG");
}

#[test]
fn a_slowloris_writer_does_not_hold_up_others() {
    let server = TestServer::start("slowloris");
    let (mut slow, _) = Raw::connect(server.addr);
    slow.send(b"CONNECT {\"verbose\":false}\r\nPUB a");
    let mut other = Raw::connected(server.addr);
    other.send(b"SUB x 1\r\nPING\r\n");
    assert_eq!(other.line(), "PONG");
    other.send(b"PUB x 2\r\nhi\r\n");
    assert_eq!(other.line(), "MSG x 1 2");
    assert_eq!(other.payload(2), b"hi");
}

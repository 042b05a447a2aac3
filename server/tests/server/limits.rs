//! Connection limits and keep-alive.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real sockets and time

use crate::support::{Raw, TestServer, config, temp_dir};

#[test]
fn connections_past_the_limit_are_refused_with_a_reason() {
    let mut c = config();
    c.limits.max_connections = 2;
    let server = TestServer::start_in(temp_dir("max-conns"), c);
    let _a = Raw::connected(server.addr);
    let mut b = Raw::connected(server.addr);
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut third = Raw { reader: std::io::BufReader::new(stream.try_clone().unwrap()), writer: stream };
    assert_eq!(third.line(), "-ERR 'maximum connections exceeded'");
    assert!(third.closed());
    b.send(b"PING\r\n");
    assert_eq!(b.line(), "PONG", "the open connections are unaffected");
}

#[test]
fn a_client_that_stops_answering_pings_is_closed_as_stale() {
    let mut c = config();
    c.limits.ping_interval_ms = 100;
    c.limits.max_pings_out = 2;
    let server = TestServer::start_in(temp_dir("stale"), c);
    let mut silent = Raw::connected(server.addr);
    assert_eq!(silent.line(), "PING");
    assert_eq!(silent.line(), "PING");
    assert_eq!(silent.line(), "-ERR 'Stale Connection'");
    assert!(silent.closed());
    // One that answers stays.
    let mut polite = Raw::connected(server.addr);
    for _ in 0..4 {
        assert_eq!(polite.line(), "PING");
        polite.send(b"PONG\r\n");
    }
    polite.send(b"PING\r\n");
    assert_eq!(polite.line(), "PONG");
}

#[test]
fn a_client_that_never_sends_connect_is_closed() {
    let mut c = config();
    c.limits.auth_timeout_ms = 200;
    let server = TestServer::start_in(temp_dir("auth-timeout"), c);
    let (mut idle, _) = Raw::connect(server.addr);
    assert_eq!(idle.line(), "-ERR 'Authentication Timeout'");
    assert!(idle.closed());
}

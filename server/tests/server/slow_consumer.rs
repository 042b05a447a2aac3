//! A subscriber that stops reading: the policy applies to it alone, it is
//! announced on the advisory subject, and a fast subscriber of the same
//! messages gets every one of them.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real sockets and time

use std::io::Read;
use std::time::{Duration, Instant};

use kaelix_server::config::SlowConsumerPolicy;
use kaelix_server::nats::SLOW_CONSUMER_ADVISORY;

use crate::support::{Raw, TestServer, config, temp_dir};

const MESSAGES: usize = 20_000;
const SIZE: usize = 1024;
const BATCH: usize = 100;

fn flood(server: &TestServer, policy: SlowConsumerPolicy) -> (Raw, Raw, Raw) {
    let _ = server;
    let mut advisory = Raw::connected(server.addr);
    advisory.send(format!("SUB {SLOW_CONSUMER_ADVISORY} 9\r\nPING\r\n").as_bytes());
    assert_eq!(advisory.line(), "PONG");
    let mut slow = Raw::connected(server.addr);
    slow.send(b"SUB flood 1\r\nPING\r\n");
    assert_eq!(slow.line(), "PONG");
    let mut fast = Raw::connected(server.addr);
    fast.send(b"SUB flood 1\r\nPING\r\n");
    assert_eq!(fast.line(), "PONG");
    // The fast reader drains on its own thread and reports its progress;
    // the publisher sends batches, each once the fast reader has the last
    // (so the fast subscriber is never far behind), while the slow one reads
    // nothing.
    let payload = vec![b'x'; SIZE];
    let mut publisher = Raw::connected(server.addr);
    let (progress_tx, progress) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        while got < MESSAGES {
            let line = fast.line();
            assert_eq!(line, format!("MSG flood 1 {SIZE}"), "after {got} messages");
            fast.payload(SIZE);
            got += 1;
            if got % BATCH == 0 {
                progress_tx.send(got).unwrap();
            }
        }
        fast
    });
    for batch_start in (0..MESSAGES).step_by(BATCH) {
        let mut batch = Vec::new();
        for _ in 0..BATCH {
            batch.extend_from_slice(format!("PUB flood {SIZE}\r\n").as_bytes());
            batch.extend_from_slice(&payload);
            batch.extend_from_slice(b"\r\n");
        }
        batch.extend_from_slice(b"PING\r\n");
        publisher.send(&batch);
        assert_eq!(publisher.line(), "PONG", "the publisher is never held up");
        let done = progress.recv_timeout(Duration::from_secs(10)).expect("the fast subscriber keeps up");
        assert_eq!(done, batch_start + BATCH);
    }
    let fast = reader.join().expect("the fast subscriber got every message");
    let _ = policy;
    (slow, fast, advisory)
}

#[test]
fn disconnect_policy_closes_only_the_slow_consumer_and_announces_it() {
    let mut c = config();
    c.limits.max_pending = 256 * 1024;
    c.limits.max_payload = 64 * 1024;
    c.limits.slow_consumer = SlowConsumerPolicy::Disconnect;
    let server = TestServer::start_in(temp_dir("slow-disconnect"), c);
    let (mut slow, _fast, mut advisory) = flood(&server, SlowConsumerPolicy::Disconnect);
    let line = advisory.line();
    assert!(line.starts_with(&format!("MSG {SLOW_CONSUMER_ADVISORY} 9 ")), "{line}");
    let n: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
    let body = String::from_utf8(advisory.payload(n)).unwrap();
    assert!(body.contains("\"policy\":\"disconnect\"") && body.contains("\"subject\":\"flood\""), "{body}");
    // The slow client finds, after what was sent before, the error and the end.
    let mut rest = Vec::new();
    slow.reader.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    slow.reader.read_to_end(&mut rest).expect("the server closes the connection");
    let tail = String::from_utf8_lossy(&rest[rest.len().saturating_sub(64)..]).into_owned();
    assert!(tail.ends_with("-ERR 'Slow Consumer'\r\n"), "{tail:?}");
    assert!(rest.len() < MESSAGES * SIZE, "the slow consumer did not get everything");
}

#[test]
fn drop_policy_keeps_the_slow_consumer_connected() {
    let mut c = config();
    c.limits.max_pending = 256 * 1024;
    c.limits.max_payload = 64 * 1024;
    c.limits.slow_consumer = SlowConsumerPolicy::Drop;
    let server = TestServer::start_in(temp_dir("slow-drop"), c);
    let (mut slow, _fast, mut advisory) = flood(&server, SlowConsumerPolicy::Drop);
    let line = advisory.line();
    assert!(line.starts_with(&format!("MSG {SLOW_CONSUMER_ADVISORY} 9 ")), "{line}");
    // Catch up: read everything the server kept, then PING must answer.
    slow.send(b"PING\r\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut received = 0;
    loop {
        assert!(Instant::now() < deadline, "no PONG after {received} messages");
        let line = slow.line();
        if line == "PONG" {
            break;
        }
        assert_eq!(line, format!("MSG flood 1 {SIZE}"));
        slow.payload(SIZE);
        received += 1;
    }
    assert!(received < MESSAGES, "some messages were dropped ({received} of {MESSAGES} kept)");
    // Still subscribed and served.
    let mut publisher = Raw::connected(server.addr);
    publisher.send(b"PUB flood 2\r\nok\r\nPING\r\n");
    assert_eq!(publisher.line(), "PONG");
    assert_eq!(slow.line(), "MSG flood 1 2");
}

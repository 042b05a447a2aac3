//! What a NATS subscription costs and how its sid travels: an idle
//! subscription is a record on its connection's broker sink — no task, no
//! broker stream — and deliveries, limits and duplicates still follow the
//! sid, decimal or not.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real sockets and time

use std::fmt::Write as _;

use crate::support::{Raw, TestServer};

const SUBSCRIPTIONS: usize = 2_000;

#[test]
fn idle_subscriptions_spawn_no_task_and_open_no_stream() {
    let ts = TestServer::start("subs-cost");
    let mut client = Raw::connected(ts.addr);
    // The connection's own tasks (reader, writer) exist from here on.
    let tasks_before = ts.exec.live_tasks();
    let streams_before = ts.server().broker().stats().streams;
    let mut subs = String::new();
    for i in 0..SUBSCRIPTIONS {
        write!(subs, "SUB cost.{i} {i}\r\n").unwrap();
    }
    subs.push_str("PING\r\n");
    client.send(subs.as_bytes());
    assert_eq!(client.line(), "PONG");
    let stats = ts.server().broker().stats();
    assert_eq!(stats.sink_subscriptions, SUBSCRIPTIONS, "every subscription is on the connection's sink");
    assert_eq!(stats.streams, streams_before, "no broker stream (and no buffer) per subscription");
    let tasks_after = ts.exec.live_tasks();
    assert!(
        tasks_after <= tasks_before,
        "{SUBSCRIPTIONS} subscriptions took {} tasks more",
        tasks_after.saturating_sub(tasks_before)
    );

    // Still routed, to the right sid.
    let mut publisher = Raw::connected(ts.addr);
    publisher.send(b"PUB cost.1234 2\r\nhi\r\nPING\r\n");
    assert_eq!(publisher.line(), "PONG");
    assert_eq!(client.line(), "MSG cost.1234 1234 2");
    assert_eq!(client.payload(2), b"hi");

    // A closed connection takes its subscriptions out of the broker.
    drop(client);
    let gone = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        ts.server().broker().stats().sink_subscriptions == 0
    });
    assert!(gone, "the sink's subscriptions left with the connection");
}

#[test]
fn odd_sids_limits_and_duplicates_follow_the_sid() {
    let ts = TestServer::start("subs-sids");
    let mut client = Raw::connected(ts.addr);
    client.send(b"SUB a inbox-x\r\nSUB a 007\r\nSUB b 7\r\nSUB c inbox-x\r\nSUB c 7\r\nPING\r\n");
    assert_eq!(client.line(), "-ERR 'Duplicate Subscription ID'", "inbox-x twice");
    assert_eq!(client.line(), "-ERR 'Duplicate Subscription ID'", "7 twice");
    assert_eq!(client.line(), "PONG");
    // `007` is not `7`: both exist, each delivered under its own text.
    let mut publisher = Raw::connected(ts.addr);
    publisher.send(b"PUB a 1\r\nx\r\nPUB b 1\r\ny\r\nPING\r\n");
    assert_eq!(publisher.line(), "PONG");
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(client.line());
        assert_eq!(client.payload(1), b"x");
    }
    got.sort();
    assert_eq!(got, ["MSG a 007 1", "MSG a inbox-x 1"]);
    assert_eq!(client.line(), "MSG b 7 1");
    assert_eq!(client.payload(1), b"y");
    // The sid ended after its limit may be reused.
    client.send(b"UNSUB inbox-x 1\r\nPING\r\n");
    assert_eq!(client.line(), "PONG", "inbox-x already had its 1 delivery: it ended at once");
    client.send(b"SUB z inbox-x\r\nPING\r\n");
    assert_eq!(client.line(), "PONG", "no duplicate: the old inbox-x is gone");
    publisher.send(b"PUB z 1\r\nq\r\nPUB a 1\r\nr\r\nPING\r\n");
    assert_eq!(publisher.line(), "PONG");
    assert_eq!(client.line(), "MSG z inbox-x 1");
    assert_eq!(client.payload(1), b"q");
    assert_eq!(client.line(), "MSG a 007 1", "only 007 is left on a");
    assert_eq!(client.payload(1), b"r");
}

/// A publish to a subject nobody listens to is skipped before any broker
/// work (see `Broker::interest`): that must never hide a subscription made
/// since. Whatever the publisher sent before, a subscriber whose `SUB` was
/// answered (its `PONG`) gets every later publish to the subject, in
/// order, and none once unsubscribed; the skipped publishes are counted
/// as relayed to nobody.
#[test]
fn a_subject_nobody_listened_to_reaches_whoever_subscribes_later() {
    let ts = TestServer::start("subs-late");
    let relayed_before = ts.server().broker().stats().relayed;
    let mut publisher = Raw::connected(ts.addr);
    let mut burst = String::new();
    for i in 0..1_000 {
        write!(burst, "PUB late.x 1\r\n{}\r\n", i % 10).unwrap();
    }
    burst.push_str("PING\r\n");
    publisher.send(burst.as_bytes());
    assert_eq!(publisher.line(), "PONG");
    assert_eq!(ts.server().broker().stats().relayed - relayed_before, 1_000, "each counted as a relay to nobody");

    let mut subscriber = Raw::connected(ts.addr);
    subscriber.send(b"SUB late.* 1\r\nPING\r\n");
    assert_eq!(subscriber.line(), "PONG");
    publisher.send(b"PUB late.x 1\r\na\r\nPUB early.y 1\r\nb\r\nPUB late.x 1\r\nc\r\nPING\r\n");
    assert_eq!(publisher.line(), "PONG");
    for payload in [b"a", b"c"] {
        assert_eq!(subscriber.line(), "MSG late.x 1 1");
        assert_eq!(subscriber.payload(1), payload);
    }

    // Gone again: the next publishes reach nobody, and a subscription on
    // another subject, published to after them, shows that they were
    // routed (each connection sees a publisher's messages in order).
    subscriber.send(b"UNSUB 1\r\nSUB other 2\r\nPING\r\n");
    assert_eq!(subscriber.line(), "PONG");
    publisher.send(b"PUB late.x 1\r\nd\r\nPUB other 1\r\ne\r\nPING\r\n");
    assert_eq!(publisher.line(), "PONG");
    assert_eq!(subscriber.line(), "MSG other 2 1");
    assert_eq!(subscriber.payload(1), b"e");

    // Verbose: a skipped publish is still answered `+OK`.
    let (mut verbose, _) = Raw::connect(ts.addr);
    verbose.send(b"CONNECT {\"verbose\":true}\r\nPUB nobody 1\r\nz\r\nPING\r\n");
    assert_eq!(verbose.line(), "+OK", "CONNECT");
    assert_eq!(verbose.line(), "+OK", "the publish");
    assert_eq!(verbose.line(), "PONG");
}

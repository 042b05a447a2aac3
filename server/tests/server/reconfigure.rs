//! `Server::reconfigure` while clients are connected: logins the new rules
//! refuse are told and closed, others stay; lowered limits apply to the
//! next connection; retention applies at once.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real sockets

use kaelix_broker::topic::Topic;
use kaelix_server::auth::{AuthConfig, SubjectRules, UserConfig};
use kaelix_server::config::{StorageChoice, TopicSpec};

use crate::support::{Raw, TestServer, config, temp_dir};

fn user(name: &str, password: &str, publish: Option<Vec<&str>>) -> UserConfig {
    UserConfig {
        user: name.into(),
        password: bcrypt::hash(password, 4).unwrap(),
        publish: publish
            .map(|allow| SubjectRules { allow: Some(allow.into_iter().map(str::to_owned).collect()), deny: vec![] }),
        subscribe: None,
    }
}

fn login(server: &TestServer, name: &str, password: &str) -> Raw {
    let (mut raw, _) = Raw::connect(server.addr);
    raw.send(
        format!("CONNECT {{\"verbose\":false,\"user\":\"{name}\",\"pass\":\"{password}\"}}\r\nPING\r\n").as_bytes(),
    );
    assert_eq!(raw.line(), "PONG", "{name} logs in");
    raw
}

#[test]
fn a_reload_closes_exactly_the_logins_it_no_longer_permits() {
    let mut c = config();
    let (alice, bob, carol) =
        (user("alice", "a-pass", None), user("bob", "b-pass", None), user("carol", "c-pass", Some(vec!["c.>"])));
    c.auth = AuthConfig { token: None, users: vec![alice.clone(), bob.clone(), carol.clone()] };
    let server = TestServer::start_in(temp_dir("reconfigure-auth"), c.clone());
    let mut alice_conn = login(&server, "alice", "a-pass");
    let mut bob_conn = login(&server, "bob", "b-pass");
    let mut carol_conn = login(&server, "carol", "c-pass");

    // Bob is removed, Carol's permissions change, Alice is untouched.
    let mut next = c.clone();
    let carol_wider =
        UserConfig { publish: Some(SubjectRules { allow: Some(vec![">".into()]), deny: vec![] }), ..carol.clone() };
    next.auth = AuthConfig { token: None, users: vec![alice.clone(), carol_wider] };
    let report = server.server().reconfigure(&next).unwrap();
    assert_eq!(report.disconnected, 2);
    assert_eq!(bob_conn.line(), "-ERR 'Authorization Violation'");
    assert!(bob_conn.closed());
    assert_eq!(carol_conn.line(), "-ERR 'Authorization Violation'");
    assert!(carol_conn.closed());
    alice_conn.send(b"PING\r\n");
    assert_eq!(alice_conn.line(), "PONG", "a login the new rules grant the same stays connected");
    // The new rules hold for new logins.
    let (mut bob_again, _) = Raw::connect(server.addr);
    bob_again.send(b"CONNECT {\"verbose\":false,\"user\":\"bob\",\"pass\":\"b-pass\"}\r\nPING\r\n");
    assert_eq!(bob_again.line(), "-ERR 'Authorization Violation'");
    let mut carol_again = login(&server, "carol", "c-pass");
    carol_again.send(b"PUB anywhere 1\r\nx\r\nPING\r\n");
    assert_eq!(carol_again.line(), "PONG", "Carol's wider permissions apply after she reconnects");
    assert_eq!(server.server().stats().revoked.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn lowered_limits_apply_to_the_next_connection_and_an_invalid_one_changes_nothing() {
    let c = config();
    let server = TestServer::start_in(temp_dir("reconfigure-limits"), c.clone());
    let mut first = Raw::connected(server.addr);
    let mut lower = c.clone();
    lower.limits.max_connections = 1;
    lower.limits.max_payload = 512;
    lower.limits.max_pending = 1 << 20;
    server.server().reconfigure(&lower).unwrap();
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut refused = String::new();
    std::io::Read::read_to_string(&mut &stream, &mut refused).unwrap();
    assert_eq!(refused, "-ERR 'maximum connections exceeded'\r\n", "max_connections lowered to 1");
    first.send(b"PING\r\n");
    assert_eq!(first.line(), "PONG", "open connections stay");
    drop(first);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (_, info) = Raw::connect(server.addr);
    assert!(info.contains("\"max_payload\":512"), "a new connection is told the new payload limit: {info}");
    let mut invalid = lower.clone();
    invalid.limits.max_payload = 0;
    assert!(server.server().reconfigure(&invalid).is_err());
    assert_eq!(server.server().config().limits.max_payload, 512, "an invalid configuration changes nothing");
}

#[test]
fn retention_applies_at_once() {
    let mut c = config();
    c.topics = vec![TopicSpec {
        name: "kept".into(),
        partitions: 1,
        storage: StorageChoice::Memory,
        flush_interval_ms: None,
        max_bytes: None,
        max_records: Some(100),
        max_age_secs: None,
    }];
    let server = TestServer::start_in(temp_dir("reconfigure-retention"), c.clone());
    let mut raw = Raw::connected(server.addr);
    for _ in 0..10 {
        raw.send(b"PUB kept 1\r\nx\r\n");
    }
    raw.send(b"PING\r\n");
    assert_eq!(raw.line(), "PONG");
    let topic = Topic::new("kept").unwrap();
    assert_eq!(server.server().broker().watermarks(&topic, 0).unwrap(), (0, 10));
    let mut next = c.clone();
    next.topics[0].max_records = Some(4);
    let report = server.server().reconfigure(&next).unwrap();
    assert_eq!((report.retention_changed, report.records_removed), (1, 6));
    assert_eq!(server.server().broker().watermarks(&topic, 0).unwrap(), (6, 10));
}

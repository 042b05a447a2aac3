//! The native front end with `kaelix-client` (and raw frames where the test
//! is about the bytes): produce and fetch with long poll, subscriptions with
//! credit, consumer groups, administration, typed errors, malformed input,
//! and messages crossing between NATS and native clients.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real time, real sockets

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use bytes::BytesMut;
use futures_util::future::join;
use kaelix_client::{
    AckLevel, Admin, ClientConfig, ClientError, Connection, Consumer, Credentials, ErrorCode, FetchOptions, Message,
    Pattern, Producer, Retention, StartPosition, StorageSpec, SubscribeOptions, Topic, TopicSettings,
};
use kaelix_core::runtime::Clock;
use kaelix_core::time::Duration;
use kaelix_protocol::{FetchLimits, FrameDecoder, HELLO_MAGIC, Name, Push, Request, Response, ServerFrame, ServerInfo};
use kaelix_runtime_real::RealRuntime;

use kaelix_server::auth::{AuthConfig, SubjectRules, UserConfig};

use crate::support::{Raw, TestServer, config, temp_dir};

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn message(t: &str, payload: &str) -> Message {
    Message::builder().topic(t).payload(payload.to_owned()).build().unwrap()
}

fn payloads(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| String::from_utf8(m.payload().to_vec()).unwrap()).collect()
}

fn code<T>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("not a server error: {e}")),
        Ok(_) => panic!("expected an error, the request succeeded"),
    }
}

async fn connect(rt: &RealRuntime, addr: SocketAddr) -> Connection<RealRuntime> {
    Connection::connect(rt, addr).await.expect("connects")
}

/// A native connection driven frame by frame over a plain socket.
struct NativeRaw {
    stream: TcpStream,
    decoder: FrameDecoder,
}

#[derive(Debug, PartialEq)]
enum Got {
    Frame(ServerFrame),
    Timeout,
    Closed,
}

impl NativeRaw {
    fn connect(addr: SocketAddr) -> NativeRaw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        NativeRaw { stream, decoder: FrameDecoder::new(64 << 20) }
    }

    /// Connects and completes the handshake.
    fn ready(addr: SocketAddr) -> (NativeRaw, ServerInfo) {
        let mut raw = NativeRaw::connect(addr);
        raw.send(1, &Request::Hello { versions: vec![1], client: Name::new("raw-test").unwrap(), credentials: None });
        match raw.next() {
            Got::Frame(ServerFrame::Response { correlation: 1, response: Response::HelloOk(info) }) => (raw, info),
            other => panic!("expected HelloOk, got {other:?}"),
        }
    }

    fn send(&mut self, correlation: u32, request: &Request) {
        let mut buf = BytesMut::new();
        request.encode(correlation, &mut buf);
        self.stream.write_all(&buf).unwrap();
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn next_within(&mut self, wait: std::time::Duration) -> Got {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 64 << 10];
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => return Got::Frame(ServerFrame::decode(&frame).expect("a valid server frame")),
                Ok(None) => {}
                Err(e) => panic!("undecodable server bytes: {e}"),
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Got::Closed,
                Ok(n) => self.decoder.extend(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Got::Timeout;
                }
                Err(_) => return Got::Closed,
            }
        }
    }

    fn next(&mut self) -> Got {
        self.next_within(std::time::Duration::from_secs(5))
    }

    /// The next frame, which must answer `correlation`.
    fn response(&mut self, correlation: u32) -> Response {
        match self.next() {
            Got::Frame(ServerFrame::Response { correlation: c, response }) if c == correlation => response,
            other => panic!("expected the answer to {correlation}, got {other:?}"),
        }
    }

    /// The next frame, which must be an error answering `correlation`.
    fn error(&mut self, correlation: u32) -> ErrorCode {
        match self.response(correlation) {
            Response::Error { code, .. } => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Waits for the server to close (after any frames it still sends).
    fn closed(&mut self) -> bool {
        loop {
            match self.next() {
                Got::Closed => return true,
                Got::Timeout => return false,
                Got::Frame(_) => {}
            }
        }
    }
}

#[test]
fn produce_fetch_and_a_long_poll_that_returns_when_data_arrives() {
    let server = TestServer::start("native-produce-fetch");
    let (rt, addr) = (server.rt.clone(), server.native_addr);
    server.exec.block_on(async move {
        let conn = connect(&rt, addr).await;
        assert_eq!(conn.server_info().version, 1);
        let orders = topic("orders");
        let producer = Producer::new(conn.clone());
        let batch = (0..3).map(|i| message("orders", &format!("o{i}"))).collect();
        let positions = producer.send_batch(batch).await.unwrap();
        assert_eq!(positions.iter().map(|p| (p.partition, p.offset)).collect::<Vec<_>>(), [(0, 0), (0, 1), (0, 2)]);
        let leader = producer.clone().with_acks(AckLevel::Leader).send(message("orders", "o3")).await.unwrap();
        assert_eq!(leader.offset, 3);
        let consumer = Consumer::new(conn.clone());
        // Acks leader on a durable topic: appended, readable once synced.
        let mut all = Vec::new();
        let mut next = 0;
        while all.len() < 4 {
            let f =
                consumer.fetch(&orders, 0, next, FetchOptions::default().wait(Duration::from_secs(2))).await.unwrap();
            next = f.next_offset;
            all.extend(f.messages);
        }
        assert_eq!(payloads(&all), ["o0", "o1", "o2", "o3"]);
        assert_eq!(all.iter().map(|m| m.offset().unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3]);
        let limited =
            consumer.fetch(&orders, 0, 1, FetchOptions { max_messages: 2, ..FetchOptions::default() }).await.unwrap();
        assert_eq!((payloads(&limited.messages).len(), limited.next_offset, limited.high_watermark), (2, 3, 4));

        // A long poll at the head: a Ping is answered meanwhile, and the
        // produce that follows ends the wait.
        let start = rt.now();
        let fetch = consumer.fetch(&orders, 0, 4, FetchOptions::default().wait(Duration::from_secs(10)));
        let meanwhile = async {
            rt.sleep(Duration::from_millis(200)).await;
            conn.ping().await.expect("a ping is not held up by the long poll");
            let pinged = rt.now();
            producer.send(message("orders", "late")).await.unwrap();
            pinged
        };
        let (fetched, pinged) = join(fetch, meanwhile).await;
        let fetched = fetched.unwrap();
        assert_eq!(payloads(&fetched.messages), ["late"]);
        assert!(pinged < rt.now(), "the ping was answered before the fetch");
        assert!(rt.now().saturating_duration_since(start) < Duration::from_secs(5), "woken by the data, not the timer");

        // Nothing arrives: the wait expires with an empty answer.
        let start = rt.now();
        let empty =
            consumer.fetch(&orders, 0, 5, FetchOptions::default().wait(Duration::from_millis(300))).await.unwrap();
        let waited = rt.now().saturating_duration_since(start);
        assert!(empty.messages.is_empty());
        assert_eq!(empty.next_offset, 5);
        assert!(waited >= Duration::from_millis(250), "waited {waited:?}");

        // Fire and forget: nothing is answered, the message is stored.
        producer.send_and_forget(message("orders", "quiet")).unwrap();
        let f = consumer.fetch(&orders, 0, 5, FetchOptions::default().wait(Duration::from_secs(5))).await.unwrap();
        assert_eq!(payloads(&f.messages), ["quiet"]);
    });
}

#[test]
fn keyed_messages_keep_their_partition_and_requests_name_partitions() {
    let server = TestServer::start("native-partitions");
    let (rt, addr) = (server.rt.clone(), server.native_addr);
    server.exec.block_on(async move {
        let conn = connect(&rt, addr).await;
        let admin = Admin::new(conn.clone());
        let t = topic("keyed");
        admin.create_topic(&t, TopicSettings { partitions: 4, ..TopicSettings::default() }).await.unwrap();
        let producer = Producer::new(conn.clone());
        let keyed = |k: &str| Message::builder().topic(&t).key(k.to_owned()).payload("x").build().unwrap();
        let a = producer.send_batch(vec![keyed("a"), keyed("a"), keyed("b")]).await.unwrap();
        assert_eq!(a[0].partition, a[1].partition, "one key, one partition");
        assert_eq!(a[1].offset, a[0].offset + 1);
        let pinned = Message::builder().topic(&t).partition(3).payload("p").build().unwrap();
        assert_eq!(producer.send(pinned).await.unwrap().partition, 3);
        let nowhere = Message::builder().topic(&t).partition(9).payload("p").build().unwrap();
        assert_eq!(code(producer.send(nowhere).await), ErrorCode::UnknownPartition);
    });
}

#[test]
fn subscriptions_deliver_no_more_than_their_credit() {
    let server = TestServer::start("native-credit");
    let (mut raw, _) = NativeRaw::ready(server.native_addr);
    let t = topic("ticks");
    raw.send(
        2,
        &Request::CreateTopic {
            topic: t.clone(),
            partitions: 1,
            storage: StorageSpec::Memory,
            retention: Retention::default(),
        },
    );
    assert_eq!(raw.response(2), Response::TopicCreated);
    let messages: Vec<Message> = (0..10).map(|i| message("ticks", &i.to_string())).collect();
    raw.send(
        3,
        &Request::Produce { topic: t.clone(), partition: None, acks: kaelix_protocol::Acks::Committed, messages },
    );
    assert!(matches!(raw.response(3), Response::ProduceAck { .. }));
    let subscribe = Request::Subscribe {
        subscription: 7,
        pattern: Pattern::new("ticks").unwrap(),
        queue_group: None,
        start: StartPosition::Earliest,
        credit: 3,
    };
    raw.send(4, &subscribe);
    assert_eq!(raw.response(4), Response::SubscribeOk { subscription: 7 });
    let mut delivered = Vec::new();
    let mut take = |raw: &mut NativeRaw, expect: usize| {
        let before = delivered.len();
        while delivered.len() - before < expect {
            match raw.next() {
                Got::Frame(ServerFrame::Push(Push::Deliver { subscription: 7, messages })) => {
                    assert!(delivered.len() - before + messages.len() <= expect, "a Deliver past the credit");
                    delivered.extend(payloads(&messages));
                }
                other => panic!("expected a Deliver, got {other:?}"),
            }
        }
        // And nothing more until more credit is granted.
        assert_eq!(raw.next_within(std::time::Duration::from_millis(300)), Got::Timeout, "delivered past the credit");
    };
    take(&mut raw, 3);
    raw.send(5, &Request::Credit { subscription: 7, add: 4 });
    take(&mut raw, 4);
    raw.send(6, &Request::Credit { subscription: 7, add: 100 });
    take(&mut raw, 3);
    assert_eq!(delivered, (0..10).map(|i| i.to_string()).collect::<Vec<_>>(), "every message once, in order");
    // Credit for an unknown subscription is refused; unsubscribing confirms.
    raw.send(8, &Request::Credit { subscription: 99, add: 1 });
    assert_eq!(raw.error(8), ErrorCode::UnknownSubscription);
    raw.send(
        9,
        &Request::Subscribe {
            subscription: 7,
            pattern: Pattern::new("ticks").unwrap(),
            queue_group: None,
            start: StartPosition::Latest,
            credit: 1,
        },
    );
    assert_eq!(raw.error(9), ErrorCode::SubscriptionExists);
    raw.send(10, &Request::Unsubscribe { subscription: 7 });
    assert_eq!(raw.response(10), Response::Unsubscribed { subscription: 7 });
    raw.send(11, &Request::Unsubscribe { subscription: 7 });
    assert_eq!(raw.error(11), ErrorCode::UnknownSubscription);
    raw.send(
        12,
        &Request::Subscribe {
            subscription: 8,
            pattern: Pattern::new("ticks").unwrap(),
            queue_group: Some(Name::new("q").unwrap()),
            start: StartPosition::Earliest,
            credit: 1,
        },
    );
    assert_eq!(raw.error(12), ErrorCode::InvalidRequest, "queue groups start at the latest position");
}

#[test]
fn a_client_subscription_replenishes_its_window_as_it_consumes() {
    let server = TestServer::start("native-window");
    let (rt, addr) = (server.rt.clone(), server.native_addr);
    server.exec.block_on(async move {
        let conn = connect(&rt, addr).await;
        let admin = Admin::new(conn.clone());
        for name in ["metrics.cpu", "metrics.mem"] {
            admin.create_topic(&topic(name), TopicSettings::default()).await.unwrap();
        }
        let consumer = Consumer::new(conn.clone());
        let options = SubscribeOptions { window: 4, ..SubscribeOptions::default() };
        let mut sub = consumer.subscribe(&Pattern::new("metrics.*").unwrap(), options).await.unwrap();
        let producer = Producer::new(conn.clone());
        let batch = (0..50).map(|i| message(if i % 2 == 0 { "metrics.cpu" } else { "metrics.mem" }, &i.to_string()));
        producer.send_batch(batch.collect()).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 50 {
            let m = kaelix_core::runtime::timeout(&rt, Duration::from_secs(5), sub.next())
                .await
                .expect("the window is replenished")
                .unwrap()
                .unwrap();
            assert!(sub.buffered() < 4, "never more than the window buffered");
            got.push(m);
        }
        let cpu: Vec<String> = payloads(&got).into_iter().filter(|p| p.parse::<u32>().unwrap() % 2 == 0).collect();
        assert_eq!(cpu, (0..50).step_by(2).map(|i| i.to_string()).collect::<Vec<_>>(), "in order per partition");
        sub.unsubscribe().await.unwrap();
    });
}

#[test]
fn consumer_groups_share_partitions_commit_and_rebalance() {
    let server = TestServer::start("native-groups");
    let (rt, addr) = (server.rt.clone(), server.native_addr);
    let broker = server.server().broker().clone();
    server.exec.block_on(async move {
        let conn = connect(&rt, addr).await;
        let jobs = topic("jobs");
        Admin::new(conn.clone())
            .create_topic(&jobs, TopicSettings { partitions: 2, ..TopicSettings::default() })
            .await
            .unwrap();
        let batch = (0..10).map(|i| message("jobs", &i.to_string())).collect();
        Producer::new(conn.clone()).send_batch(batch).await.unwrap();
        let consumer = Consumer::new(conn.clone());
        let mut a = consumer.join_group("workers", &jobs).await.unwrap();
        assert_eq!(a.partitions(), [0, 1]);
        let other = connect(&rt, addr).await;
        let mut b = Consumer::new(other.clone()).join_group("workers", &jobs).await.unwrap();
        assert_eq!(b.partitions(), [1]);
        assert_eq!(a.heartbeat().await.unwrap(), [0], "a rebalance dealt partition 1 to b");
        assert_eq!(a.generation(), b.generation());
        let wait = FetchOptions::default().wait(Duration::from_secs(2));
        let from_a = a.poll(wait).await.unwrap();
        let from_b = b.poll(wait).await.unwrap();
        assert!(from_a.iter().all(|m| m.partition() == Some(0)) && from_a.len() == 5);
        assert!(from_b.iter().all(|m| m.partition() == Some(1)) && from_b.len() == 5);
        a.commit(&from_a[2]).await.unwrap();
        assert_eq!(broker.committed("workers", 0), Some(3));
        assert_eq!(code(a.commit_offset(1, 1).await), ErrorCode::NotAssigned);
        assert_eq!(code(a.commit_offset(0, 1).await), ErrorCode::OffsetOutOfRange, "commits never move back");
        // A long poll ends when a message arrives on the member's partition.
        let poll = b.poll(FetchOptions::default().wait(Duration::from_secs(10)));
        let produce = async {
            rt.sleep(Duration::from_millis(100)).await;
            let m = Message::builder().topic("jobs").partition(1).payload("late").build().unwrap();
            Producer::new(conn.clone()).send(m).await.unwrap()
        };
        let (late, _) = join(poll, produce).await;
        assert_eq!(payloads(&late.unwrap()), ["late"]);
        // b's connection goes; the membership stays and b rejoins under its id.
        let member = b.detach();
        other.close();
        let again = connect(&rt, addr).await;
        let b = Consumer::new(again.clone()).rejoin_group("workers", &jobs, member).await.unwrap();
        assert_eq!(b.partitions(), [1]);
        // b leaves: a gets everything, from the committed offsets (a
        // committed 3 on partition 0; partition 1 was never committed).
        let stale = a.generation();
        b.leave().await.unwrap();
        assert_eq!(code(a.commit_offset(0, 4).await), ErrorCode::StaleGeneration);
        assert_eq!(a.heartbeat().await.unwrap(), [0, 1]);
        assert!(a.generation() > stale);
        let mut again_read = Vec::new();
        while again_read.len() < 8 {
            again_read.extend(a.poll(wait).await.unwrap());
        }
        let mut offsets: Vec<(u32, u64)> =
            again_read.iter().map(|m| (m.partition().unwrap(), m.offset().unwrap())).collect();
        offsets.sort();
        let expected: Vec<(u32, u64)> = (3..5).map(|o| (0, o)).chain((0..6).map(|o| (1, o))).collect();
        assert_eq!(offsets, expected, "uncommitted messages are read again");
        // Typed errors of groups.
        let c = Consumer::new(conn.clone());
        assert_eq!(code(c.rejoin_group("nobody", &jobs, member).await), ErrorCode::UnknownGroup);
        assert_eq!(code(c.rejoin_group("workers", &jobs, member).await), ErrorCode::UnknownMember);
        assert_eq!(code(c.join_group("workers", &topic("orders")).await), ErrorCode::InvalidRequest);
        assert_eq!(code(c.join_group("fresh", &topic("missing")).await), ErrorCode::UnknownTopic);
    });
}

#[test]
fn group_sessions_time_out_without_requests() {
    let mut c = config();
    c.native.group_session_timeout_ms = 1000;
    let server = TestServer::start_in(temp_dir("native-sessions"), c);
    let (rt, addr) = (server.rt.clone(), server.native_addr);
    server.exec.block_on(async move {
        let conn = connect(&rt, addr).await;
        let consumer = Consumer::new(conn);
        let mut member = consumer.join_group("g", &topic("orders")).await.unwrap();
        for _ in 0..8 {
            rt.sleep(Duration::from_millis(200)).await;
            member.heartbeat().await.expect("heartbeats keep the session");
        }
        rt.sleep(Duration::from_millis(2500)).await;
        assert_eq!(code(member.heartbeat().await), ErrorCode::UnknownMember);
    });
}

#[test]
fn topics_are_created_described_and_listed() {
    let server = TestServer::start("native-admin");
    let (rt, addr) = (server.rt.clone(), server.native_addr);
    server.exec.block_on(async move {
        let admin = Admin::new(connect(&rt, addr).await);
        let t = topic("events.eu");
        let retention = Retention { max_records: Some(100), max_bytes: Some(1 << 20), max_age_ms: Some(60_000) };
        admin
            .create_topic(&t, TopicSettings { partitions: 3, storage: StorageSpec::Durable, retention })
            .await
            .unwrap();
        let d = admin.describe_topic(&t).await.unwrap();
        assert_eq!((d.storage, d.retention, d.partitions.len()), (StorageSpec::Durable, retention, 3));
        assert!(d.partitions.iter().enumerate().all(|(i, p)| p.partition == i as u32 && p.high_watermark == 0));
        let listed: Vec<(String, u32)> =
            admin.list_topics().await.unwrap().into_iter().map(|s| (s.topic.to_string(), s.partitions)).collect();
        assert_eq!(listed, [("events.eu".to_owned(), 3), ("orders".to_owned(), 1)]);
        assert_eq!(code(admin.create_topic(&t, TopicSettings::default()).await), ErrorCode::TopicExists);
        let replicated =
            TopicSettings { storage: StorageSpec::Replicated { replication_factor: 3 }, ..TopicSettings::default() };
        assert_eq!(code(admin.create_topic(&topic("r"), replicated).await), ErrorCode::InvalidRequest);
        let none = TopicSettings { partitions: 0, ..TopicSettings::default() };
        assert_eq!(code(admin.create_topic(&topic("z"), none).await), ErrorCode::InvalidRequest);
        assert_eq!(code(admin.delete_topic(&t).await), ErrorCode::InvalidRequest, "not supported yet");
        assert_eq!(code(admin.describe_topic(&topic("missing")).await), ErrorCode::UnknownTopic);
        // A memory topic without limits gets the server's byte bound.
        admin.create_topic(&topic("mem"), TopicSettings::default()).await.unwrap();
        assert!(admin.describe_topic(&topic("mem")).await.unwrap().retention.max_bytes.is_some());
    });
}

#[test]
fn refusals_carry_their_typed_errors() {
    let mut c = config();
    c.native.max_batch = 5;
    let server = TestServer::start_in(temp_dir("native-errors"), c);
    let rt = server.rt.clone();
    let addr = server.native_addr;
    server.exec.block_on(async move {
        let conn = connect(&rt, addr).await;
        let producer = Producer::new(conn.clone());
        assert_eq!(code(producer.send(message("nope", "x")).await), ErrorCode::UnknownTopic);
        let big = Message::builder().topic("orders").payload(vec![0u8; (1 << 20) + 1]).build().unwrap();
        assert_eq!(code(producer.send(big).await), ErrorCode::PayloadTooLarge);
        let consumer = Consumer::new(conn.clone());
        assert_eq!(
            code(consumer.fetch(&topic("orders"), 0, 7, FetchOptions::default()).await),
            ErrorCode::OffsetOutOfRange
        );
        assert_eq!(
            code(consumer.fetch(&topic("orders"), 3, 0, FetchOptions::default()).await),
            ErrorCode::UnknownPartition
        );
        assert_eq!(code(consumer.fetch(&topic("nope"), 0, 0, FetchOptions::default()).await), ErrorCode::UnknownTopic);
        let zero = FetchOptions { max_messages: 0, ..FetchOptions::default() };
        assert_eq!(code(consumer.fetch(&topic("orders"), 0, 0, zero).await), ErrorCode::InvalidRequest);
        // The client splits batches by the announced max batch.
        assert_eq!(conn.server_info().max_batch, 5);
        let positions =
            producer.send_batch((0..12).map(|i| message("orders", &i.to_string())).collect()).await.unwrap();
        assert_eq!(positions.last().unwrap().offset, 11);
        conn.ping().await.unwrap();
    });
    // What the client does not let through, raw.
    let (mut raw, info) = NativeRaw::ready(addr);
    assert_eq!(info.max_batch, 5);
    let six = (0..6).map(|i| message("orders", &i.to_string())).collect();
    raw.send(
        2,
        &Request::Produce {
            topic: topic("orders"),
            partition: None,
            acks: kaelix_protocol::Acks::Leader,
            messages: six,
        },
    );
    assert_eq!(raw.error(2), ErrorCode::BatchTooLarge);
    // A topic name breaking the rules: the body of a DescribeTopic by hand.
    let mut frame = BytesMut::new();
    Request::DescribeTopic { topic: topic("abc") }.encode(3, &mut frame);
    let at = frame.len() - 3;
    frame[at + 1] = b'.';
    frame[at + 2] = b'.';
    raw.send_bytes(&frame);
    assert_eq!(raw.error(3), ErrorCode::InvalidTopic);
    raw.send(
        4,
        &Request::Fetch {
            topic: topic("orders"),
            partition: 0,
            offset: 0,
            limits: FetchLimits { max_messages: 1, max_bytes: 1, max_wait_ms: 0 },
        },
    );
    assert!(
        matches!(raw.response(4), Response::FetchResult { messages, .. } if messages.len() == 1),
        "the first message comes whatever max bytes says"
    );
    raw.send(5, &Request::Hello { versions: vec![1], client: Name::new("again").unwrap(), credentials: None });
    assert_eq!(raw.error(5), ErrorCode::InvalidRequest, "a second Hello");
    // Acks none: not even an error.
    raw.send(
        6,
        &Request::Produce {
            topic: topic("nope"),
            partition: None,
            acks: kaelix_protocol::Acks::None,
            messages: vec![message("nope", "x")],
        },
    );
    raw.send(7, &Request::Ping);
    assert_eq!(raw.response(7), Response::Pong, "nothing answered the fire-and-forget produce");
}

#[test]
fn malformed_frames_get_an_error_and_a_close_where_the_spec_says_and_others_keep_working() {
    let server = TestServer::start("native-malformed");
    let addr = server.native_addr;
    let rt = server.rt.clone();
    let conn = server.exec.block_on(async move { connect(&rt, addr).await });
    let ping = |conn: &Connection<RealRuntime>| {
        let conn = conn.clone();
        server.exec.block_on(async move { conn.ping().await }).unwrap();
    };
    ping(&conn);
    let hello = |raw: &mut NativeRaw| {
        raw.send(1, &Request::Hello { versions: vec![1], client: Name::new("t").unwrap(), credentials: None })
    };

    // A length below the frame header: MalformedFrame (id 0), closed.
    let (mut raw, _) = NativeRaw::ready(addr);
    raw.send_bytes(&[0, 0, 0, 3, 2, 0, 0]);
    assert_eq!(raw.error(0), ErrorCode::MalformedFrame);
    assert!(raw.closed());
    // An oversize length: FrameTooLarge before the body arrives, closed.
    let (mut raw, _) = NativeRaw::ready(addr);
    raw.send_bytes(&(64u32 << 20).to_be_bytes());
    assert_eq!(raw.error(0), ErrorCode::FrameTooLarge);
    assert!(raw.closed());
    // Trailing bytes after a Ping's (empty) body: MalformedFrame for that
    // frame only; an undefined kind: UnsupportedFrame; the connection stays.
    let (mut raw, _) = NativeRaw::ready(addr);
    raw.send_bytes(&[0, 0, 0, 6, 0x02, 9, 0, 0, 0, 0xee]);
    assert_eq!(raw.error(9), ErrorCode::MalformedFrame);
    raw.send_bytes(&[0, 0, 0, 5, 0x7e, 10, 0, 0, 0]);
    assert_eq!(raw.error(10), ErrorCode::UnsupportedFrame);
    raw.send(11, &Request::Ping);
    assert_eq!(raw.response(11), Response::Pong);
    // Before the handshake: HandshakeRequired, closed.
    let mut raw = NativeRaw::connect(addr);
    raw.send(4, &Request::Ping);
    assert_eq!(raw.error(4), ErrorCode::HandshakeRequired);
    assert!(raw.closed());
    // Another protocol on the port (a Hello without the magic).
    let mut raw = NativeRaw::connect(addr);
    let mut frame = BytesMut::new();
    Request::Hello { versions: vec![1], client: Name::new("t").unwrap(), credentials: None }.encode(1, &mut frame);
    let at = frame.iter().position(|b| *b == HELLO_MAGIC[0]).unwrap();
    frame[at] = b'X';
    raw.send_bytes(&frame);
    assert_eq!(raw.error(1), ErrorCode::MalformedFrame);
    assert!(raw.closed());
    // No version in common.
    let mut raw = NativeRaw::connect(addr);
    raw.send(1, &Request::Hello { versions: vec![7, 9], client: Name::new("future").unwrap(), credentials: None });
    assert_eq!(raw.error(1), ErrorCode::UnsupportedVersion);
    assert!(raw.closed());
    // HTTP on the native port: an absurd length, refused and closed.
    let mut raw = NativeRaw::connect(addr);
    raw.send_bytes(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(raw.error(0), ErrorCode::FrameTooLarge);
    assert!(raw.closed());
    // Through all of it, the other connection kept working.
    let mut raw = NativeRaw::connect(addr);
    hello(&mut raw);
    assert!(matches!(raw.response(1), Response::HelloOk(_)));
    ping(&conn);
    assert!(server.server().stats().protocol_errors.load(std::sync::atomic::Ordering::Relaxed) >= 7);
}

#[test]
fn nats_and_native_clients_see_each_others_messages() {
    let server = TestServer::start("native-cross");
    let rt = server.rt.clone();
    let (nats_addr, native_addr) = (server.addr, server.native_addr);
    // A NATS subscriber on the durable topic, live before anything is sent.
    let mut nats_sub = Raw::connected(nats_addr);
    nats_sub.send(b"SUB orders 1\r\nPING\r\n");
    assert_eq!(nats_sub.line(), "PONG");
    // A NATS publisher: the PONG after the PUB means stored (and synced).
    let mut nats_pub = Raw::connected(nats_addr);
    nats_pub.send(b"PUB orders 10\r\nfrom-nats!\r\nPING\r\n");
    assert_eq!(nats_pub.line(), "PONG");
    assert_eq!(nats_sub.line(), "MSG orders 1 10");
    assert_eq!(nats_sub.payload(10), b"from-nats!");
    server.exec.block_on(async move {
        let conn = connect(&rt, native_addr).await;
        let orders = topic("orders");
        let consumer = Consumer::new(conn.clone());
        let fetched = consumer.fetch(&orders, 0, 0, FetchOptions::default()).await.unwrap();
        assert_eq!(payloads(&fetched.messages), ["from-nats!"], "a native fetch sees the NATS publish");
        let options = SubscribeOptions { start: StartPosition::Earliest, ..SubscribeOptions::default() };
        let mut sub = consumer.subscribe(&Pattern::new("orders").unwrap(), options).await.unwrap();
        let first =
            kaelix_core::runtime::timeout(&rt, Duration::from_secs(5), sub.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(first.payload().as_ref(), b"from-nats!");
        let at = Producer::new(conn).send(message("orders", "from-native")).await.unwrap();
        assert_eq!(at.offset, 1);
        let second =
            kaelix_core::runtime::timeout(&rt, Duration::from_secs(5), sub.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(second.payload().as_ref(), b"from-native");
    });
    assert_eq!(nats_sub.line(), "MSG orders 1 11", "the NATS subscriber sees the native produce");
    assert_eq!(nats_sub.payload(11), b"from-native");
}

#[test]
fn shutdown_ends_subscriptions_and_answers_long_polls() {
    let mut server = TestServer::start("native-shutdown");
    let (rt, addr) = (server.rt.clone(), server.native_addr);
    let stopping = server.server.take().unwrap();
    let stopped = server.exec.block_on(async move {
        let conn = connect(&rt, addr).await;
        let consumer = Consumer::new(conn.clone());
        let mut sub = consumer.subscribe(&Pattern::new("orders").unwrap(), SubscribeOptions::default()).await.unwrap();
        let orders = topic("orders");
        let fetch = consumer.fetch(&orders, 0, 0, FetchOptions::default().wait(Duration::from_secs(20)));
        let stop = async {
            rt.sleep(Duration::from_millis(200)).await;
            stopping.shutdown(Duration::from_secs(5)).await;
        };
        let start = rt.now();
        let (fetched, ()) = join(fetch, stop).await;
        assert!(fetched.unwrap().messages.is_empty(), "the long poll answered at once");
        assert!(rt.now().saturating_duration_since(start) < Duration::from_secs(10));
        let end = sub.next().await;
        assert!(
            matches!(&end, Err(e) if e.code() == Some(ErrorCode::ShuttingDown) || matches!(e, ClientError::Closed(_))),
            "{end:?}"
        );
        assert!(matches!(conn.ping().await, Err(ClientError::Closed(_))));
        stopping
    });
    server.server = Some(stopped);
}

#[test]
fn the_connection_limit_applies_to_native_clients() {
    let mut c = config();
    c.limits.max_connections = 1;
    let server = TestServer::start_in(temp_dir("native-limits"), c);
    let rt = server.rt.clone();
    let addr = server.native_addr;
    server.exec.block_on(async move {
        let first = connect(&rt, addr).await;
        let refused = Connection::connect(&rt, addr).await;
        assert_eq!(refused.map(|_| ()).unwrap_err().code(), Some(ErrorCode::Throttled));
        first.ping().await.unwrap();
    });
}

/// Connects with `credentials` (no retry: a refusal is the answer).
async fn connect_as(
    rt: &RealRuntime,
    addr: SocketAddr,
    credentials: Option<Credentials>,
) -> Result<Connection<RealRuntime>, ClientError> {
    Connection::connect_with(rt, addr, ClientConfig { credentials, ..ClientConfig::default() }).await
}

#[test]
fn a_token_server_admits_native_clients_with_the_token_only() {
    let mut c = config();
    c.auth = AuthConfig { token: Some("s3cret".into()), users: vec![] };
    let server = TestServer::start_in(temp_dir("native-token"), c);
    let rt = server.rt.clone();
    let addr = server.native_addr;
    server.exec.block_on(async move {
        assert_eq!(code(connect_as(&rt, addr, None).await), ErrorCode::Unauthorized);
        let wrong = Some(Credentials::Token("guess".into()));
        assert_eq!(code(connect_as(&rt, addr, wrong).await), ErrorCode::Unauthorized);
        let right = connect_as(&rt, addr, Some(Credentials::Token("s3cret".into()))).await.unwrap();
        right.ping().await.unwrap();
        Producer::new(right).send(message("orders", "with the token")).await.unwrap();
    });
}

/// A user who may publish to `orders` only and read everything but
/// `secret.>`.
fn writer() -> UserConfig {
    UserConfig {
        user: "writer".into(),
        password: bcrypt::hash("pw", 4).unwrap(),
        publish: Some(SubjectRules { allow: Some(vec!["orders".into()]), deny: vec![] }),
        subscribe: Some(SubjectRules { allow: Some(vec![">".into()]), deny: vec!["secret.>".into()] }),
    }
}

fn as_writer(password: &str) -> Option<Credentials> {
    Some(Credentials::User { user: Name::new("writer").unwrap(), password: password.into() })
}

#[test]
fn native_users_log_in_with_passwords_and_are_held_to_their_permissions() {
    let mut c = config();
    c.auth = AuthConfig { token: None, users: vec![writer()] };
    let server = TestServer::start_in(temp_dir("native-users"), c);
    let rt = server.rt.clone();
    let addr = server.native_addr;
    server.exec.block_on(async move {
        assert_eq!(code(connect_as(&rt, addr, as_writer("nope")).await), ErrorCode::Unauthorized);
        let nobody = Some(Credentials::User { user: Name::new("nobody").unwrap(), password: "pw".into() });
        assert_eq!(code(connect_as(&rt, addr, nobody).await), ErrorCode::Unauthorized);
        let conn = connect_as(&rt, addr, as_writer("pw")).await.unwrap();
        let producer = Producer::new(conn.clone());
        let stored = producer.send(message("orders", "allowed")).await.unwrap();
        // Refusals name the rule and leave the connection open.
        let admin = Admin::new(conn.clone());
        assert_eq!(code(admin.create_topic(&topic("audit"), TopicSettings::default()).await), ErrorCode::Unauthorized);
        let consumer = Consumer::new(conn.clone());
        let secret = consumer.fetch(&topic("secret.plans"), 0, 0, FetchOptions::default()).await;
        assert_eq!(code(secret), ErrorCode::Unauthorized);
        let wide = consumer.subscribe(&Pattern::new(">").unwrap(), SubscribeOptions::default()).await;
        assert_eq!(code(wide), ErrorCode::Unauthorized, "> overlaps the denied secret.>");
        conn.ping().await.unwrap();
        let fetched = consumer.fetch(&topic("orders"), stored.partition, stored.offset, FetchOptions::default()).await;
        assert_eq!(payloads(&fetched.unwrap().messages), ["allowed"]);
        let mut sub = consumer
            .subscribe(
                &Pattern::new("orders").unwrap(),
                SubscribeOptions { start: StartPosition::Earliest, ..Default::default() },
            )
            .await
            .unwrap();
        assert_eq!(payloads(&[sub.next().await.unwrap().unwrap()]), ["allowed"]);
    });
}

#[test]
fn a_reconfiguration_closes_native_logins_it_refuses_and_keeps_the_others() {
    let mut c = config();
    let reader = UserConfig { user: "reader".into(), publish: None, subscribe: None, ..writer() };
    c.auth = AuthConfig { token: None, users: vec![writer(), reader.clone()] };
    let server = TestServer::start_in(temp_dir("native-reauth"), c.clone());
    let rt = server.rt.clone();
    let addr = server.native_addr;
    let (writer_conn, reader_conn) = server.exec.block_on({
        let rt = rt.clone();
        async move {
            let w = connect_as(&rt, addr, as_writer("pw")).await.unwrap();
            let reader = Some(Credentials::User { user: Name::new("reader").unwrap(), password: "pw".into() });
            let r = connect_as(&rt, addr, reader).await.unwrap();
            (w, r)
        }
    });
    // The writer's password changes; the reader is untouched.
    let mut next = c.clone();
    next.auth = AuthConfig {
        token: None,
        users: vec![UserConfig { password: bcrypt::hash("new", 4).unwrap(), ..writer() }, reader],
    };
    let report = server.server().reconfigure(&next).unwrap();
    assert_eq!(report.disconnected, 1);
    server.exec.block_on({
        let rt = rt.clone();
        async move {
            let start = rt.now();
            loop {
                match writer_conn.ping().await {
                    Err(e) => {
                        assert!(
                            e.code() == Some(ErrorCode::Unauthorized) || matches!(e, ClientError::Closed(_)),
                            "{e}"
                        );
                        break;
                    }
                    Ok(_) => assert!(rt.now().saturating_duration_since(start) < Duration::from_secs(5), "still open"),
                }
                rt.sleep(Duration::from_millis(10)).await;
            }
            reader_conn.ping().await.unwrap();
            assert_eq!(code(connect_as(&rt, addr, as_writer("pw")).await), ErrorCode::Unauthorized);
            connect_as(&rt, addr, as_writer("new")).await.unwrap().ping().await.unwrap();
        }
    });
    // Authentication turned off, then on again: anonymous native
    // connections made meanwhile are closed by the second change.
    let mut open = c.clone();
    open.auth = AuthConfig::default();
    server.server().reconfigure(&open).unwrap();
    let anonymous = server.exec.block_on({
        let rt = rt.clone();
        async move { connect_as(&rt, addr, None).await.unwrap() }
    });
    let report = server.server().reconfigure(&next).unwrap();
    assert!(report.disconnected >= 1, "{report:?}");
    server.exec.block_on(async move {
        let start = rt.now();
        while anonymous.ping().await.is_ok() {
            assert!(rt.now().saturating_duration_since(start) < Duration::from_secs(5), "anonymous still open");
            rt.sleep(Duration::from_millis(10)).await;
        }
    });
}

#[test]
fn with_tls_configured_native_connections_speak_tls_from_the_first_byte() {
    use std::sync::Arc;

    use kaelix_server::tls::TlsConfig;
    use rustls::pki_types::ServerName;

    let dir = temp_dir("native-tls-certs");
    std::fs::create_dir_all(&dir).unwrap();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    let mut c = config();
    c.tls =
        Some(TlsConfig { cert: cert_path.display().to_string(), key: key_path.display().to_string(), client_ca: None });
    let server = TestServer::start_in(temp_dir("native-tls"), c);

    // A plaintext Hello is not a TLS ClientHello: at most a TLS alert comes
    // back (record type 0x15), never a frame, and the connection closes.
    let mut plain = NativeRaw::connect(server.native_addr);
    plain.send(1, &Request::Hello { versions: vec![1], client: Name::new("plain").unwrap(), credentials: None });
    let mut answer = Vec::new();
    plain.stream.read_to_end(&mut answer).unwrap();
    assert!(answer.is_empty() || answer[0] == 0x15, "{answer:02x?}");

    // Inside TLS, the protocol as usual.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    // ring, as the server uses (see kaelix_server::tls).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let session = rustls::ClientConnection::new(Arc::new(tls), ServerName::try_from("localhost").unwrap()).unwrap();
    let tcp = TcpStream::connect(server.native_addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut stream = rustls::StreamOwned::new(session, tcp);
    let mut wire = BytesMut::new();
    Request::Hello { versions: vec![1], client: Name::new("tls").unwrap(), credentials: None }.encode(1, &mut wire);
    Request::Ping.encode(2, &mut wire);
    stream.write_all(&wire).unwrap();
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut answers = Vec::new();
    let mut buf = [0u8; 4096];
    while answers.len() < 2 {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before answering");
        decoder.extend(&buf[..n]);
        while let Some(frame) = decoder.next_frame().unwrap() {
            answers.push(ServerFrame::decode(&frame).unwrap());
        }
    }
    assert!(matches!(&answers[0], ServerFrame::Response { correlation: 1, response: Response::HelloOk(_) }));
    assert_eq!(answers[1], ServerFrame::Response { correlation: 2, response: Response::Pong });
    let _ = std::fs::remove_dir_all(dir);
}

//! async-nats, the client Rust applications use, against the server:
//! pub/sub with wildcards, queue groups, headers, request-reply,
//! no-responders, and durable topics across a restart.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real time, real sockets

use std::time::Duration;

use futures_util::StreamExt;

use crate::support::{TestServer, config, temp_dir};

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next()).await.expect("a message within 5 s").expect("open")
}

#[test]
fn publish_subscribe_with_wildcards_and_headers() {
    let server = TestServer::start("async-nats-pubsub");
    tokio().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut star = client.subscribe("prices.*.eur").await.unwrap();
        let mut tail = client.subscribe("prices.>").await.unwrap();
        client.flush().await.unwrap();
        client.publish("prices.btc.eur", "101".into()).await.unwrap();
        client.publish("prices.btc.usd", "99".into()).await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("trace-id", "abc");
        headers.append("tag", "a");
        headers.append("tag", "b");
        client.publish_with_headers("prices.eth.eur", headers, "7".into()).await.unwrap();
        client.flush().await.unwrap();
        let a = next(&mut star).await;
        assert_eq!((a.subject.as_str(), &a.payload[..]), ("prices.btc.eur", &b"101"[..]));
        let b = next(&mut star).await;
        assert_eq!(b.subject.as_str(), "prices.eth.eur");
        let h = b.headers.expect("headers arrive as HMSG");
        assert_eq!(h.get("trace-id").map(|v| v.as_str()), Some("abc"));
        assert_eq!(h.get("tag").map(|v| v.as_str()), Some("a, b"), "repeated names are joined");
        let got: Vec<String> = [next(&mut tail).await, next(&mut tail).await, next(&mut tail).await]
            .iter()
            .map(|m| m.subject.to_string())
            .collect();
        assert_eq!(got, ["prices.btc.eur", "prices.btc.usd", "prices.eth.eur"], "in publish order");
    });
}

#[test]
fn queue_groups_deliver_each_message_to_one_member() {
    let server = TestServer::start("async-nats-queue");
    tokio().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut a = client.queue_subscribe("jobs", "workers".into()).await.unwrap();
        let mut b = client.queue_subscribe("jobs", "workers".into()).await.unwrap();
        let mut watcher = client.subscribe("jobs").await.unwrap();
        client.flush().await.unwrap();
        for i in 0..100 {
            client.publish("jobs", format!("{i}").into()).await.unwrap();
        }
        client.flush().await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..100 {
            assert!(!next(&mut watcher).await.payload.is_empty());
        }
        // Both members drain until 100 in total arrived.
        while seen.len() < 100 {
            tokio::select! {
                Some(m) = a.next() => seen.push(String::from_utf8(m.payload.to_vec()).unwrap()),
                Some(m) = b.next() => seen.push(String::from_utf8(m.payload.to_vec()).unwrap()),
                _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("only {} of 100 jobs arrived", seen.len()),
            }
        }
        seen.sort_by_key(|s| s.parse::<u32>().unwrap());
        assert_eq!(seen, (0..100).map(|i| i.to_string()).collect::<Vec<_>>(), "each exactly once");
    });
}

#[test]
fn request_reply_and_no_responders() {
    let server = TestServer::start("async-nats-request");
    tokio().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut service = client.subscribe("time.now").await.unwrap();
        let responder = client.clone();
        tokio::spawn(async move {
            while let Some(m) = service.next().await {
                let reply = m.reply.expect("requests carry a reply subject");
                responder.publish(reply, format!("echo {}", String::from_utf8_lossy(&m.payload)).into()).await.unwrap();
            }
        });
        client.flush().await.unwrap();
        let answer = client.request("time.now", "q1".into()).await.unwrap();
        assert_eq!(&answer.payload[..], b"echo q1");
        let err = client.request("nobody.home", "q".into()).await.unwrap_err();
        assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders, "{err}");
    });
}

#[test]
fn durable_topic_keeps_flushed_publishes_across_a_restart() {
    let dir = temp_dir("async-nats-durable");
    let mut server = TestServer::start_in(dir.clone(), config());
    tokio().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut marker = client.subscribe("marker").await.unwrap();
        for i in 0..500 {
            client.publish("orders", format!("order-{i}").into()).await.unwrap();
        }
        // async-nats' flush only empties its socket buffer (no PING/PONG),
        // so a relayed marker published after the orders proves the server
        // has taken all 500 (one connection is served in order); the
        // graceful stop then keeps everything taken. (The PONG-after-sync
        // barrier is checked by the serve scenario and nats-py.)
        client.publish("marker", "after the orders".into()).await.unwrap();
        client.flush().await.unwrap();
        next(&mut marker).await;
    });
    server.stop();
    let server = TestServer::start_in(dir, config());
    let read = server.server().broker().read("orders", 0, 0, 1000).unwrap();
    let payloads: Vec<String> = read.iter().map(|m| String::from_utf8(m.payload().to_vec()).unwrap()).collect();
    assert_eq!(payloads, (0..500).map(|i| format!("order-{i}")).collect::<Vec<_>>());
    // And the restarted server serves the topic to NATS subscribers again.
    tokio().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let mut sub = client.subscribe("orders").await.unwrap();
        client.flush().await.unwrap();
        client.publish("orders", "after-restart".into()).await.unwrap();
        assert_eq!(&next(&mut sub).await.payload[..], b"after-restart");
    });
}

/// `echo: false`: a connection does not get its own publishes back, while
/// another connection's subscription on the same subjects gets everything.
///
/// async-nats' `flush` only empties the socket buffer (no PING/PONG round
/// trip), and the server serves connections independently, so nothing
/// orders one connection's SUB before another's PUB unless the test waits
/// for a message that proves it. Each step below waits for such a message.
#[test]
fn no_echo_connections_do_not_receive_their_own_publishes() {
    let server = TestServer::start("async-nats-no-echo");
    tokio().block_on(async {
        let quiet = async_nats::ConnectOptions::new().no_echo().connect(server.url()).await.unwrap();
        let other = async_nats::connect(server.url()).await.unwrap();
        let mut own = quiet.subscribe("chat.>").await.unwrap();
        // Subscribed after `chat.>` on the same connection: once it gets a
        // message, the server has registered `chat.>` too.
        let mut quiet_ready = quiet.subscribe("ready.quiet").await.unwrap();
        let mut theirs = other.subscribe("chat.>").await.unwrap();
        other.flush().await.unwrap();
        // Published by `other` after its SUB: a probe delivered to `quiet`
        // proves both connections' subscriptions are live. Repeated because
        // a probe routed before `quiet`'s SUB reaches nobody.
        loop {
            other.publish("ready.quiet", "probe".into()).await.unwrap();
            other.flush().await.unwrap();
            if tokio::time::timeout(Duration::from_millis(100), quiet_ready.next()).await.is_ok() {
                break;
            }
        }
        quiet.publish("chat.room1", "from quiet".into()).await.unwrap();
        quiet.flush().await.unwrap();
        assert_eq!(&next(&mut theirs).await.payload[..], b"from quiet", "another connection gets it");
        // `from quiet` has been routed; `from other` is routed after it, so
        // an echo would reach `own` first.
        other.publish("chat.room1", "from other".into()).await.unwrap();
        other.flush().await.unwrap();
        assert_eq!(&next(&mut theirs).await.payload[..], b"from other");
        assert_eq!(&next(&mut own).await.payload[..], b"from other", "no echo of its own publish");
        let nothing = tokio::time::timeout(Duration::from_millis(200), own.next()).await;
        assert!(nothing.is_err(), "nothing more for the quiet connection: {nothing:?}");
    });
}

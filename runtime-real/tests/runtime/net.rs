//! Client streams and the node-to-node transport on real sockets: what the
//! conformance suite (`conformance.rs`) does not cover — a listener facing
//! garbage and silent connections, a transport reconnecting to a restarted
//! peer, the transport's counters.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use kaelix_core::NodeId;
use kaelix_core::runtime::{ClientNetwork, ClientStream, Clock, Listener, Network, Priority, Spawner};
use kaelix_runtime_real::{NodeConfig, RealRuntime};

use crate::support::{executor, free_addr, temp_dir};

fn node(
    exec: &kaelix_runtime_real::Executor,
    id: u64,
    peers: &BTreeMap<NodeId, std::net::SocketAddr>,
    clients: &BTreeMap<NodeId, std::net::SocketAddr>,
) -> RealRuntime {
    let mut cfg = NodeConfig::new(NodeId(id), temp_dir("net"));
    cfg.peers = peers.clone();
    cfg.clients = clients.clone();
    cfg.seed = Some(id);
    RealRuntime::start(exec.handle(), cfg).expect("node starts")
}

#[test]
fn garbage_and_silent_connections_do_not_stop_the_listener() {
    let exec = executor("garbage", 2);
    let addr = free_addr();
    let clients = BTreeMap::from([(NodeId(1), addr)]);
    let server = node(&exec, 1, &BTreeMap::new(), &clients);
    let client = node(&exec, 100, &BTreeMap::new(), &clients);
    let mut listener = server.listen().unwrap();
    let accepted = server.spawn(Priority::Normal, "accept-one", async move {
        let s = listener.accept().await.unwrap();
        let frame = s.recv().await.unwrap().unwrap();
        (s.peer(), frame)
    });
    // A raw socket that speaks HTTP, and one that says nothing.
    let mut garbage = std::net::TcpStream::connect(addr).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    let mut buf = [0u8; 16];
    garbage.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(garbage.read(&mut buf).unwrap_or(0), 0, "the bad-hello connection is closed");
    let (peer, frame) = exec.block_on(async move {
        let s = client.connect(NodeId(1)).await.unwrap();
        s.send(Bytes::from_static(b"hello")).await.unwrap();
        accepted.await.unwrap()
    });
    assert_eq!((peer, frame), (NodeId(100), Bytes::from_static(b"hello")));
}

#[test]
fn transport_delivers_and_reconnects_after_the_peer_restarts() {
    let peers = BTreeMap::from([(NodeId(1), free_addr()), (NodeId(2), free_addr())]);
    let ex1 = executor("t1", 1);
    let a = node(&ex1, 1, &peers, &BTreeMap::new());
    let mut ex2 = executor("t2", 1);
    let mut b = node(&ex2, 2, &peers, &BTreeMap::new());

    let send_until_received = |a: &RealRuntime, b: &RealRuntime, exec: &kaelix_runtime_real::Executor, tag: u8| {
        let (a, b) = (a.clone(), b.clone());
        exec.block_on(async move {
            let deadline = b.now() + Duration::from_secs(10);
            loop {
                a.send(NodeId(2), Bytes::from(vec![tag]));
                let got = kaelix_core::runtime::timeout(&b, Duration::from_millis(50), b.recv()).await;
                match got {
                    Ok((from, m)) if m[..] == [tag] => return from,
                    _ => assert!(b.now() < deadline, "no delivery within 10 s"),
                }
            }
        })
    };
    assert_eq!(send_until_received(&a, &b, &ex2, 1), NodeId(1));
    // Self-sends loop back; unknown peers and oversize messages are dropped and counted.
    a.send(NodeId(9), Bytes::from_static(b"x"));
    a.send(NodeId(2), Bytes::from(vec![0u8; kaelix_core::runtime::MAX_DATAGRAM_BYTES + 1]));
    let stats = a.transport_stats().unwrap();
    assert_eq!(stats.dropped_unknown_peer.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.dropped_oversize.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Kill node 2: its executor stops, its sockets close.
    let report = ex2.shutdown(Duration::from_millis(50));
    assert!(!report.cancelled.is_empty(), "the transport's tasks were running");
    drop(b);
    drop(ex2);
    for _ in 0..20 {
        a.send(NodeId(2), Bytes::from_static(b"lost"));
    }
    std::thread::sleep(Duration::from_millis(200));
    // Restart it on the same address: the link reconnects with backoff.
    ex2 = executor("t2b", 1);
    b = node(&ex2, 2, &peers, &BTreeMap::new());
    assert_eq!(send_until_received(&a, &b, &ex2, 2), NodeId(1));
    assert!(stats.connects.load(std::sync::atomic::Ordering::Relaxed) >= 2, "a second connection was made");
}

#[test]
fn a_peer_that_connects_to_us_cuts_our_backoff_to_it_short() {
    // Node 1 retries its link to node 2 only every 30 to 60 s: without the
    // kick, a node 2 that comes up after the first failed attempt would
    // hear nothing from node 1 for that long.
    let peers = BTreeMap::from([(NodeId(1), free_addr()), (NodeId(2), free_addr())]);
    let ex1 = executor("kick1", 1);
    let mut cfg = NodeConfig::new(NodeId(1), temp_dir("net"));
    cfg.peers = peers.clone();
    cfg.seed = Some(1);
    cfg.transport.backoff_initial = Duration::from_secs(60);
    cfg.transport.backoff_max = Duration::from_secs(60);
    let a = RealRuntime::start(ex1.handle(), cfg).expect("node starts");
    a.send(NodeId(2), Bytes::from_static(b"early"));
    let stats = a.transport_stats().unwrap();
    let failed = std::time::Instant::now() + Duration::from_secs(5);
    while stats.connect_failures.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < failed, "node 2 is down, yet node 1's first attempt did not fail");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Node 2 comes up and speaks first; node 1's next message must reach it
    // long before the backoff would have let the link retry.
    let ex2 = executor("kick2", 1);
    let b = node(&ex2, 2, &peers, &BTreeMap::new());
    b.send(NodeId(1), Bytes::from_static(b"up"));
    let (a2, b2) = (a.clone(), b.clone());
    let delivered = ex2.block_on(async move {
        let deadline = b2.now() + Duration::from_secs(10);
        loop {
            a2.send(NodeId(2), Bytes::from_static(b"after"));
            match kaelix_core::runtime::timeout(&b2, Duration::from_millis(50), b2.recv()).await {
                Ok((from, m)) if m[..] == *b"after" => return Some(from),
                _ if b2.now() >= deadline => return None,
                _ => {}
            }
        }
    });
    assert_eq!(delivered, Some(NodeId(1)), "node 1 reached the restarted node 2 only after its backoff (60 s)");
}

#[test]
fn channels_share_the_connection_but_not_the_inbox() {
    let peers = BTreeMap::from([(NodeId(1), free_addr()), (NodeId(2), free_addr())]);
    let ex1 = executor("chan1", 1);
    let a = node(&ex1, 1, &peers, &BTreeMap::new());
    let ex2 = executor("chan2", 1);
    let b = node(&ex2, 2, &peers, &BTreeMap::new());
    let (a1, b1, b2, spare) = (a.channel(1), b.channel(1), b.channel(2), a.clone());
    let got = ex2.block_on(async move {
        // Interleaved sends on channels 0 and 1 until both have arrived;
        // each inbox must hold only its own channel's datagrams.
        let deadline = b.now() + Duration::from_secs(10);
        let (mut zero, mut one) = (Vec::new(), Vec::new());
        while zero.is_empty() || one.is_empty() {
            assert!(b.now() < deadline, "no delivery on both channels within 10 s");
            a.send(NodeId(2), Bytes::from_static(b"raft"));
            a1.send(NodeId(2), Bytes::from_static(b"swim"));
            if let Ok(m) = kaelix_core::runtime::timeout(&b, Duration::from_millis(20), b.recv()).await {
                zero.push(m);
            }
            if let Ok(m) = kaelix_core::runtime::timeout(&b1, Duration::from_millis(20), b1.recv()).await {
                one.push(m);
            }
        }
        // A self-send loops back on its own channel too.
        b2.send(NodeId(2), Bytes::from_static(b"me"));
        let mine = b2.recv().await;
        (zero, one, mine)
    });
    let (zero, one, mine) = got;
    assert!(zero.iter().all(|(from, m)| *from == NodeId(1) && &m[..] == b"raft"), "{zero:?}");
    assert!(one.iter().all(|(from, m)| *from == NodeId(1) && &m[..] == b"swim"), "{one:?}");
    assert_eq!(mine, (NodeId(2), Bytes::from_static(b"me")));
    // A channel beyond the transport's is refused loudly, not misdelivered.
    let refused =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| spare.channel(kaelix_runtime_real::net::CHANNELS)));
    assert!(refused.is_err());
}

#[test]
fn a_stranger_is_heard_and_reachable_once_its_address_is_learned() {
    let (addr1, addr2) = (free_addr(), free_addr());
    let ex1 = executor("book1", 1);
    // Node 1 knows node 2; node 2 knows only itself.
    let a = node(&ex1, 1, &BTreeMap::from([(NodeId(1), addr1), (NodeId(2), addr2)]), &BTreeMap::new());
    let ex2 = executor("book2", 1);
    let b = node(&ex2, 2, &BTreeMap::from([(NodeId(2), addr2)]), &BTreeMap::new());
    assert_eq!(b.peer_addr(NodeId(1)), None);
    let (a2, b2) = (a.clone(), b.clone());
    let heard = ex2.block_on(async move {
        let deadline = b2.now() + Duration::from_secs(10);
        loop {
            a2.send(NodeId(2), Bytes::from_static(b"hi"));
            match kaelix_core::runtime::timeout(&b2, Duration::from_millis(50), b2.recv()).await {
                Ok(m) => return m,
                Err(_) => assert!(b2.now() < deadline, "the stranger's datagram never arrived"),
            }
        }
    });
    assert_eq!(heard, (NodeId(1), Bytes::from_static(b"hi")), "a node not in the book is heard");
    // Answers to it are dropped until its address is learned.
    b.send(NodeId(1), Bytes::from_static(b"lost"));
    let stats = b.transport_stats().unwrap();
    assert_eq!(stats.dropped_unknown_peer.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(b.learn_peer(NodeId(1), addr1), "a new entry");
    assert!(!b.learn_peer(NodeId(1), addr1), "learning it again changes nothing");
    assert!(!b.learn_peer(NodeId(2), addr1), "our own entry never moves");
    assert_eq!(b.peer_addr(NodeId(1)), Some(addr1));
    let (a3, b3) = (a.clone(), b.clone());
    let answered = ex1.block_on(async move {
        let deadline = a3.now() + Duration::from_secs(10);
        loop {
            b3.send(NodeId(1), Bytes::from_static(b"back"));
            match kaelix_core::runtime::timeout(&a3, Duration::from_millis(50), a3.recv()).await {
                Ok((from, m)) if m[..] == *b"back" => return from,
                _ => assert!(a3.now() < deadline, "the learned address was never used"),
            }
        }
    });
    assert_eq!(answered, NodeId(2));
}

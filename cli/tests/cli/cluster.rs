//! Three real `kaelix serve --cluster` processes on loopback: publish
//! (NATS, verbose) through a member that does not lead (forwarded),
//! receive on every member, `kill -9` the leader, measure the time until
//! publishes are acknowledged again (failover), produce with the native
//! client (`acks = committed`), restart the killed member and check that
//! every member's log ends identical, holding every acknowledged message
//! once, in acknowledgement order. On the way, the leader and another
//! member are frozen (SIGSTOP: sockets open, nothing answered) and a
//! publish forwarded to the frozen leader must be refused within the
//! forward timeout the members' file sets, not hang.
//!
//! What is checked comes from the clients' own records (the payloads the
//! publisher had acknowledged, what the subscriber received, what a native
//! fetch reads from each member), never from the members' counters; the
//! leader is found with `kaelix cluster status`, whose output is checked
//! too. Bounded: every wait has a deadline (about 20 s in all here).

#![allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "real processes, sockets, clocks")]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kaelix_client::{AckLevel, Connection, Consumer, FetchOptions, Message, Producer, Topic};
use kaelix_core::NodeId;
use kaelix_runtime_real::{Executor, ExecutorConfig, NodeConfig, RealRuntime};

/// Every member's file: the replicated topic, and a forward timeout
/// shorter than the 5 s default, so the frozen leader's refusal also shows
/// that `[cluster] forward_timeout_ms` reaches the forwarder.
const CONFIG: &str = "[[topics]]\nname = \"orders\"\nstorage = \"replicated\"\n[cluster]\nforward_timeout_ms = 1500\n";

/// A port `p` with `p + 1` free too (a member's cluster and forwarding
/// ports), distinct from `taken`. Drawn below the kernel's ephemeral range
/// (`ip_local_port_range`, 32768 and up by default): a port the OS handed
/// out for `127.0.0.1:0` and released would be handed to the next such
/// bind — another test's listener — before this member binds it. Tests run
/// as separate processes, so the process id spreads their draws.
fn free_port_pair(taken: &[u16]) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static DRAWS: AtomicU32 = AtomicU32::new(0);
    let (low, span) = (20_000u32, 12_000u32);
    for _ in 0..500 {
        let draw = DRAWS.fetch_add(1, Ordering::Relaxed);
        let p = (low + (std::process::id().wrapping_mul(7919).wrapping_add(draw.wrapping_mul(104_729)) % span)) as u16;
        if !taken.iter().any(|&t| t == p || t == p + 1 || t + 1 == p)
            && TcpListener::bind(("127.0.0.1", p)).is_ok()
            && TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
        {
            return p;
        }
    }
    panic!("no free pair of ports on loopback between 20000 and 32000");
}

/// One member process, killed (SIGKILL) when dropped.
pub(super) struct Member {
    child: Child,
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    pub(super) nats: SocketAddr,
    native: SocketAddr,
    metrics: SocketAddr,
}

impl Member {
    /// SIGTERM, then waits (up to 15 s) for the drain to end and the
    /// process to exit; its exit status.
    pub(super) fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(status.success(), "kill -TERM {pid}");
        wait_for("the member to exit", Duration::from_secs(15), || self.child.try_wait().unwrap())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_member(id: u64, port: u16, peers: &str, dir: &Path, config: &Path) -> Member {
    spawn_member(id, port, &["--peers", peers], dir, config)
}

/// `kaelix serve --cluster` as member `id` on `port` with `cluster` (its
/// `--peers` or `--join`).
fn spawn_member(id: u64, port: u16, cluster: &[&str], dir: &Path, config: &Path) -> Member {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kaelix"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KAELIX_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["serve", "--cluster", "--node-id", &id.to_string()])
        .args(["--cluster-listen", &format!("127.0.0.1:{port}")])
        .args(cluster)
        .args(["--nats-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--log-level", "error", "--workers", "1", "--config", config.to_str().unwrap()])
        .args(["--data-dir", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kaelix serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut nats, mut native, mut metrics) = (None, None, None);
    while nats.is_none() || native.is_none() || metrics.is_none() {
        let line = lines.next().expect("kaelix serve prints its addresses").unwrap();
        if let Some(rest) = line.strip_prefix("kaelix serve: NATS clients on nats://") {
            nats = Some(rest.parse().unwrap());
        } else if let Some(rest) = line.strip_prefix("kaelix serve: native clients on ") {
            native = Some(rest.parse().unwrap());
        } else if let Some(rest) = line.strip_prefix("kaelix serve: metrics on http://") {
            metrics = Some(rest.trim_end_matches("/metrics").parse().unwrap());
        }
    }
    Member { child, _stdout: lines, nats: nats.unwrap(), native: native.unwrap(), metrics: metrics.unwrap() }
}

/// Sends `kill SIGNAL` (`-STOP`, `-CONT`) to a member's process.
fn signal(member: &Option<Member>, signal: &str) {
    let pid = member.as_ref().expect("running").child.id().to_string();
    let status = Command::new("kill").args([signal, &pid]).status().expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

/// `kaelix cluster status` over `members`; the leader of orders/0 once
/// every one of them names the same one.
pub(super) fn leader_by_status(members: &[&Member]) -> Option<u64> {
    let nodes = members.iter().map(|m| m.metrics.to_string()).collect::<Vec<_>>().join(",");
    let out = super::kaelix(&["cluster", "status", "--nodes", &nodes]);
    let stdout = super::text(&out.stdout);
    if out.status.code() != Some(0) {
        return None;
    }
    assert_eq!(stdout.lines().filter(|l| l.contains(" up")).count(), members.len(), "{stdout}");
    let row = stdout.lines().find(|l| l.trim_start().starts_with("orders/0"))?;
    let leader: u64 = row.split_whitespace().nth(1)?.parse().ok()?;
    // Every member follows that leader: "N: follower T C" / "N: leader T C".
    let roles = row.matches(": leader ").count();
    (roles == 1).then_some(leader)
}

/// Three members on loopback: their cluster ports, the peer list, one data
/// directory each under a fresh temporary base, and the file they share.
pub(super) struct Layout {
    pub(super) base: PathBuf,
    ports: Vec<u16>,
    peers: String,
    config: PathBuf,
}

impl Layout {
    /// Fresh directories for the test `tag`; every member reads `config`.
    pub(super) fn new(tag: &str, config: &str) -> Layout {
        Layout::with_members(tag, config, 3)
    }

    /// [`Layout::new`] with `n` members.
    pub(super) fn with_members(tag: &str, config: &str, n: usize) -> Layout {
        let base = std::env::temp_dir().join(format!("kaelix-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let config = super::temp_file(&format!("{tag}.toml"), config);
        let mut ports = Vec::new();
        for _ in 0..n {
            let p = free_port_pair(&ports);
            ports.push(p);
        }
        let peers = (1..=n).map(|id| format!("{id}=127.0.0.1:{}", ports[id - 1])).collect::<Vec<_>>().join(",");
        Layout { base, ports, peers, config }
    }

    /// Starts member `id` (1 to 3) on its data directory, again after a stop.
    pub(super) fn start(&self, id: u64) -> Member {
        let dir = self.base.join(format!("node{id}"));
        start_member(id, self.ports[id as usize - 1], &self.peers, &dir, &self.config)
    }

    /// Starts member `id` with `extra` arguments after its `--peers`.
    fn start_with(&self, id: u64, extra: &[&str]) -> Member {
        let dir = self.base.join(format!("node{id}"));
        let mut cluster = vec!["--peers", &self.peers];
        cluster.extend_from_slice(extra);
        spawn_member(id, self.ports[id as usize - 1], &cluster, &dir, &self.config)
    }

    /// Every member, member `id` at index `id - 1`.
    pub(super) fn start_all(&self) -> Vec<Option<Member>> {
        (1..=self.ports.len() as u64).map(|id| Some(self.start(id))).collect()
    }
}

/// The leader of orders/0 once every running member names it (15 s at most).
fn leader_of(members: &[Option<Member>]) -> u64 {
    wait_for("a leader every member names", Duration::from_secs(15), || {
        leader_by_status(&members.iter().flatten().collect::<Vec<_>>())
    })
}

pub(super) fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A raw NATS connection (verbose: every PUB is answered `+OK` or `-ERR`).
struct Nats {
    conn: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Nats {
    fn connect(addr: SocketAddr) -> Nats {
        let conn = TcpStream::connect(addr).expect("NATS listener accepts");
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO "), "{info}");
        let mut n = Nats { conn, reader };
        n.conn.write_all(b"CONNECT {\"verbose\":true}\r\n").unwrap();
        assert_eq!(n.line(), "+OK", "CONNECT is acknowledged");
        n
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        assert_ne!(self.reader.read_line(&mut line).expect("the server answers in time"), 0, "connection closed");
        line.trim_end().to_owned()
    }

    /// Publishes and returns whether it was acknowledged (`+OK`).
    fn publish(&mut self, subject: &str, payload: &str) -> bool {
        write!(self.conn, "PUB {subject} {}\r\n{payload}\r\n", payload.len()).unwrap();
        loop {
            match self.line().as_str() {
                "+OK" => return true,
                l if l.starts_with("-ERR") => return false,
                "PING" => self.conn.write_all(b"PONG\r\n").unwrap(),
                other => panic!("unexpected reply to PUB: {other}"),
            }
        }
    }

    fn subscribe(&mut self, subject: &str) {
        write!(self.conn, "SUB {subject} 1\r\n").unwrap();
        assert_eq!(self.line(), "+OK");
    }

    /// Next delivered payload (`None` once `timeout` passes without one).
    fn next_message(&mut self, timeout: Duration) -> Option<String> {
        self.conn.set_read_timeout(Some(timeout)).unwrap();
        let mut line = String::new();
        let got = match self.reader.read_line(&mut line) {
            Ok(0) => panic!("subscriber connection closed"),
            Ok(_) => {
                if line.starts_with("PING") {
                    self.conn.write_all(b"PONG\r\n").unwrap();
                    return self.next_message(timeout);
                }
                assert!(line.starts_with("MSG orders 1 "), "{line}");
                Some(self.line())
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
            Err(e) => panic!("subscriber: {e}"),
        };
        self.conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        got
    }
}

/// Publishes `NAME-0`, `NAME-1`, ... until one is acknowledged; a refusal
/// (a leader change on a loaded machine) leaves that attempt's outcome
/// unknown.
fn publish_acked(publisher: &mut Nats, name: &str, acked: &mut Vec<String>, unknown: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        let payload = format!("{name}-{attempt}");
        if publisher.publish("orders", &payload) {
            acked.push(payload);
            return;
        }
        unknown.push(payload);
        assert!(Instant::now() < deadline, "{name}: no publish acknowledged within 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Produces `NAME-0`, `NAME-1`, ... with the native client and `acks =
/// committed` until `count` are acknowledged, each at an offset above the
/// previous one; a refused produce leaves that attempt unknown.
fn produce_acked(
    exec: &Executor,
    rt: &RealRuntime,
    native: SocketAddr,
    (name, count): (&str, usize),
    acked: &mut Vec<String>,
    unknown: &mut Vec<String>,
) {
    let (rt, name) = (rt.clone(), name.to_owned());
    let (mut ok, mut failed) = exec.block_on(async move {
        let conn = Connection::connect(&rt, native).await.expect("native listener accepts");
        let producer = Producer::new(conn).with_acks(AckLevel::Committed);
        let topic = Topic::new("orders").unwrap();
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        let mut last = None;
        for attempt in 0..count * 20 {
            if ok.len() == count {
                break;
            }
            let payload = format!("{name}-{attempt}");
            let message = Message::builder().topic(&topic).payload(payload.clone()).build().unwrap();
            match producer.send(message).await {
                Ok(at) => {
                    assert!(last.is_none_or(|l| at.offset > l), "offsets grow: {at:?} after {last:?}");
                    last = Some(at.offset);
                    ok.push(payload);
                }
                Err(_) => failed.push(payload),
            }
        }
        (ok, failed)
    });
    assert_eq!(ok.len(), count, "native produces acknowledged");
    acked.append(&mut ok);
    unknown.append(&mut failed);
}

/// What a partition's final `log` must be, from what its clients saw:
/// every `acked` record once, in acknowledgement order, and nothing that
/// was not produced (`unknown`: attempts whose outcome was not learned).
fn assert_log_of(log: &[String], acked: &[String], unknown: &[String]) {
    let positions: Vec<usize> = acked.iter().map(|a| log.iter().position(|r| r == a).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "acknowledged records out of order: {log:?}");
    for r in log {
        assert_eq!(log.iter().filter(|x| *x == r).count(), 1, "{r} is in the log twice");
        assert!(acked.contains(r) || unknown.contains(r), "{r} was never produced");
    }
}

/// Every record of orders/0 on the member at `native`, read with the
/// native client's fetch.
fn read_log(exec: &Executor, rt: &RealRuntime, native: SocketAddr) -> Vec<String> {
    let rt = rt.clone();
    exec.block_on(async move {
        let conn = Connection::connect(&rt, native).await.expect("native listener accepts");
        let consumer = Consumer::new(conn);
        let topic = Topic::new("orders").unwrap();
        let mut out = Vec::new();
        let mut next = 0;
        loop {
            let f = consumer.fetch(&topic, 0, next, FetchOptions::default()).await.expect("fetch");
            for m in &f.messages {
                assert_eq!(m.offset(), Some(next), "offsets are dense from 0");
                next += 1;
                out.push(String::from_utf8(m.payload().to_vec()).unwrap());
            }
            if f.messages.is_empty() || next >= f.high_watermark {
                return out;
            }
        }
    })
}

#[test]
fn three_processes_fail_over_and_the_restarted_member_catches_up() {
    let layout = Layout::new("cluster", CONFIG);
    let base = layout.base.clone();
    let mut members = layout.start_all();
    let status = |members: &Vec<Option<Member>>| leader_of(members);
    let nats_of = |members: &Vec<Option<Member>>, id: u64| members[id as usize - 1].as_ref().unwrap().nats;
    let first_leader = status(&members);
    // A subscriber on every member; a publisher on a member that does not
    // lead: its publishes are forwarded to the leader and acknowledged
    // after the commit.
    let mut subscribers: Vec<(u64, Nats)> = (1..=3)
        .map(|id| {
            let mut s = Nats::connect(nats_of(&members, id));
            s.subscribe("orders");
            (id, s)
        })
        .collect();
    let mut pub_node = (1..=3).find(|&n| n != first_leader).unwrap();
    let mut publisher = Nats::connect(nats_of(&members, pub_node));
    let mut acked = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..50 {
        publish_acked(&mut publisher, &format!("before{i}"), &mut acked, &mut unknown);
    }

    // kill -9 the leader (as the members say now); publish until one is
    // acknowledged again.
    let leader = status(&members);
    let killed = members[leader as usize - 1].take().unwrap();
    let killed_at = Instant::now();
    drop(killed);
    if pub_node == leader {
        pub_node = (1..=3).find(|&n| n != leader).unwrap();
        publisher = Nats::connect(nats_of(&members, pub_node));
    }
    let mut attempts = 0;
    let failover = loop {
        let payload = format!("failover-{attempts}");
        attempts += 1;
        if publisher.publish("orders", &payload) {
            acked.push(payload);
            break killed_at.elapsed();
        }
        unknown.push(payload);
        assert!(killed_at.elapsed() < Duration::from_secs(20), "no publish acknowledged 20 s after the kill");
        std::thread::sleep(Duration::from_millis(5));
    };
    println!(
        "failover: {failover:?} from kill -9 of leader {leader} to the first publish acknowledged through member {pub_node} ({attempts} attempts)"
    );
    for i in 0..50 {
        publish_acked(&mut publisher, &format!("after{i}"), &mut acked, &mut unknown);
    }

    // Native produces, acknowledged once committed, through a survivor.
    let exec = Executor::new(ExecutorConfig { max_workers: Some(1), ..ExecutorConfig::default() }).unwrap();
    let rt = RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(99), base.join("client"))).unwrap();
    let native = members[pub_node as usize - 1].as_ref().unwrap().native;
    produce_acked(&exec, &rt, native, ("native", 20), &mut acked, &mut unknown);

    // The killed member comes back on its data directory and catches up.
    members[leader as usize - 1] = Some(layout.start(leader));

    // A leader that stops answering without closing anything (SIGSTOP: its
    // sockets stay open, as behind a partition that drops packets), and the
    // third member frozen too, so no other leader can be elected and
    // nothing can commit. A publish through the member left, which still
    // names the frozen leader, is forwarded to it: it must be answered —
    // refused, since nothing can commit — once the forward times out, not
    // left hanging. Then both resume and publishes are acknowledged again.
    let frozen = status(&members);
    // A member that stayed up throughout: it has followed the leader long
    // enough to name it (the restarted one may still be finding it).
    let via = (1..=3).find(|&n| n != frozen && n != leader).unwrap();
    let third = (1..=3).find(|&n| n != frozen && n != via).unwrap();
    let mut publisher = Nats::connect(nats_of(&members, via));
    signal(&members[frozen as usize - 1], "-STOP");
    signal(&members[third as usize - 1], "-STOP");
    let stopped_at = Instant::now();
    let refused = !publisher.publish("orders", "frozen-first");
    let answered_in = stopped_at.elapsed();
    unknown.push("frozen-first".to_owned());
    assert!(refused, "a publish was acknowledged while two of three members were frozen");
    // 1.5 s configured; 4.5 s is below the default, with room for a loaded machine.
    assert!(
        answered_in < Duration::from_millis(4500),
        "a publish through member {via} took {answered_in:?} to be answered (forward_timeout_ms = 1500)"
    );
    signal(&members[frozen as usize - 1], "-CONT");
    signal(&members[third as usize - 1], "-CONT");
    publish_acked(&mut publisher, "resumed", &mut acked, &mut unknown);
    println!(
        "frozen leader {frozen} and member {third}: a publish through member {via} was refused after {answered_in:?}"
    );
    let logs = wait_for("every member's log to hold every acknowledged message", Duration::from_secs(15), || {
        let logs: Vec<Vec<String>> =
            (1..=3).map(|id| read_log(&exec, &rt, members[id as usize - 1].as_ref().unwrap().native)).collect();
        let complete = logs.iter().all(|l| acked.iter().all(|a| l.contains(a)) && *l == logs[0]);
        complete.then_some(logs)
    });
    let log = &logs[0];
    // Each acknowledged message once, in acknowledgement order; anything
    // else is a publish whose outcome the publisher was not told.
    let positions: Vec<usize> = acked.iter().map(|a| log.iter().position(|r| r == a).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "acknowledged messages out of order: {log:?}");
    for r in log {
        assert_eq!(log.iter().filter(|x| *x == r).count(), 1, "{r} is in the log twice");
        assert!(acked.contains(r) || unknown.contains(r), "{r} was never published");
    }
    // The subscribers on the members that were not killed (the frozen ones
    // too) got the whole log, in order.
    for (id, subscriber) in subscribers.iter_mut().filter(|(id, _)| *id != leader) {
        let mut received = Vec::new();
        while received.len() < log.len() {
            match subscriber.next_message(Duration::from_secs(5)) {
                Some(p) => received.push(p),
                None => break,
            }
        }
        assert_eq!(&received, log, "the subscriber on member {id} received the committed log in order");
    }
    println!(
        "cluster: {} records on each of 3 members ({} acknowledged, {} unknown during failover); failover {failover:?}",
        log.len(),
        acked.len(),
        log.len() - acked.len()
    );
    drop(members);
    exec.shutdown(kaelix_core::time::Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&base);
}

/// A member whose disk is lost and that comes back with
/// `--initial-cluster-state existing` recovers from the others before it
/// votes, so the records its lost disk helped commit survive.
///
/// The setting is put where it matters: the third member `lagging` is
/// frozen (SIGSTOP) while the leader and `wiped` commit a batch, so those
/// records are on those two disks only. Then the leader is killed, `wiped`
/// is killed and its data directory removed, `lagging` resumes and `wiped`
/// restarts on the empty directory. Were `wiped` a fresh voter, it would
/// elect `lagging`, whose log lacks the batch, and the batch would be
/// overwritten once the old leader came back. Recovering, it grants no
/// vote, so nothing is elected until the old leader returns with the
/// batch. Checked from the producer's acknowledgements and every member's
/// log as a native fetch reads it: every acknowledged record, once, in
/// acknowledgement order, on all three members.
#[test]
fn a_member_whose_disk_was_wiped_rejoins_as_existing_and_no_acknowledged_record_is_lost() {
    let layout = Layout::new("wiped", CONFIG);
    let base = layout.base.clone();
    let mut members = layout.start_all();
    let exec = Executor::new(ExecutorConfig { max_workers: Some(1), ..ExecutorConfig::default() }).unwrap();
    let rt = RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(99), base.join("client"))).unwrap();
    let native_of = |members: &Vec<Option<Member>>, id: u64| members[id as usize - 1].as_ref().unwrap().native;
    let (mut acked, mut unknown) = (Vec::new(), Vec::new());

    let leader = leader_of(&members);
    let wiped = (1..=3).find(|&n| n != leader).unwrap();
    let lagging = (1..=3).find(|&n| n != leader && n != wiped).unwrap();
    produce_acked(&exec, &rt, native_of(&members, leader), ("before", 10), &mut acked, &mut unknown);
    signal(&members[lagging as usize - 1], "-STOP");
    produce_acked(&exec, &rt, native_of(&members, leader), ("held-by-two", 30), &mut acked, &mut unknown);

    // The leader and the disk of the other member that holds the batch are lost.
    members[leader as usize - 1] = None;
    members[wiped as usize - 1] = None;
    std::fs::remove_dir_all(base.join(format!("node{wiped}"))).expect("the wiped member's data directory is removed");
    signal(&members[lagging as usize - 1], "-CONT");
    members[wiped as usize - 1] = Some(layout.start_with(wiped, &["--initial-cluster-state", "existing"]));
    // Many election timeouts with only `lagging` and `wiped` up: time for
    // them to elect a leader if `wiped` voted.
    std::thread::sleep(Duration::from_secs(3));

    members[leader as usize - 1] = Some(layout.start(leader));
    let now_leading = leader_of(&members);
    produce_acked(&exec, &rt, native_of(&members, now_leading), ("after", 10), &mut acked, &mut unknown);
    let deadline = Instant::now() + Duration::from_secs(20);
    let logs = loop {
        let logs: Vec<Vec<String>> = (1..=3).map(|id| read_log(&exec, &rt, native_of(&members, id))).collect();
        if logs.iter().all(|l| acked.iter().all(|a| l.contains(a))) && logs.iter().all(|l| *l == logs[0]) {
            break logs;
        }
        if Instant::now() > deadline {
            for (id, l) in (1..=3).zip(&logs) {
                let missing: Vec<&String> = acked.iter().filter(|a| !l.contains(a)).collect();
                assert!(
                    missing.is_empty(),
                    "member {id} lacks {} acknowledged records 20 s on: {missing:?}",
                    missing.len()
                );
            }
            panic!("the members' logs still differ 20 s on: {logs:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = &logs[0];
    assert_log_of(log, &acked, &unknown);
    println!(
        "wiped member {wiped} rejoined as existing: {} records on each member, {} acknowledged; leader {leader} then {now_leading}",
        log.len(),
        acked.len()
    );
    drop(members);
    exec.shutdown(kaelix_core::time::Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&base);
}

/// A NATS client that writes 200 verbose `PUB`s to the replicated topic
/// in one go, through the leader and through a member that forwards, then
/// reads the answers: up to 1024 publishes of a connection are in flight
/// at once, yet the `+OK`s (or `-ERR`s) come back one per publish, in
/// publish order, and a `PING` written after them is answered only once
/// all of them are acknowledged — then every member's log holds every
/// acknowledged payload once, in each connection's order.
#[test]
fn pipelined_verbose_publishes_are_acknowledged_and_stored_in_publish_order() {
    let layout = Layout::new("pipelined", CONFIG);
    let base = layout.base.clone();
    let members = layout.start_all();
    let exec = Executor::new(ExecutorConfig { max_workers: Some(1), ..ExecutorConfig::default() }).unwrap();
    let rt = RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(99), base.join("client"))).unwrap();
    let leader = leader_of(&members);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let (mut acked, mut unknown): (Vec<Vec<String>>, Vec<String>) = (Vec::new(), Vec::new());
    for (name, via) in [("lead", leader), ("fwd", follower)] {
        let mut conn = Nats::connect(members[via as usize - 1].as_ref().unwrap().nats);
        let payloads: Vec<String> = (0..200).map(|i| format!("{name}-{i}")).collect();
        let mut burst = String::new();
        for p in &payloads {
            burst += &format!("PUB orders {}\r\n{p}\r\n", p.len());
        }
        burst += "PING\r\n";
        conn.conn.write_all(burst.as_bytes()).unwrap();
        let mut ok = Vec::new();
        for p in &payloads {
            match conn.line().as_str() {
                "+OK" => ok.push(p.clone()),
                l if l.starts_with("-ERR") => unknown.push(p.clone()),
                other => panic!("answer to {p}: {other}"),
            }
        }
        assert_eq!(conn.line(), "PONG", "the PING after the burst is answered after its 200 answers");
        assert!(ok.len() >= 150, "{name}: only {} of 200 pipelined publishes acknowledged", ok.len());
        acked.push(ok);
    }
    let all: Vec<String> = acked.iter().flatten().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in 1..=3 {
        let log = loop {
            let log = read_log(&exec, &rt, members[id as usize - 1].as_ref().unwrap().native);
            if all.iter().all(|a| log.contains(a)) {
                break log;
            }
            assert!(Instant::now() < deadline, "member {id} lacks acknowledged records 20 s on");
            std::thread::sleep(Duration::from_millis(50));
        };
        for per_connection in &acked {
            assert_log_of(
                &log.iter().filter(|r| r.starts_with(&per_connection[0][..3])).cloned().collect::<Vec<_>>(),
                per_connection,
                &unknown,
            );
        }
    }
    println!(
        "pipelined: {} and {} of 200 acknowledged through the leader and a forwarding member",
        acked[0].len(),
        acked[1].len()
    );
    drop(members);
    exec.shutdown(kaelix_core::time::Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&base);
}

/// The members running.
fn running(members: &[Option<Member>]) -> Vec<&Member> {
    members.iter().flatten().collect()
}

/// Each member's role in orders/0 by `kaelix cluster status` over
/// `members` ("leader", "follower", "learner", …), once every one answers.
fn roles_by_status(members: &[&Member]) -> Option<Vec<(u64, String)>> {
    let nodes = members.iter().map(|m| m.metrics.to_string()).collect::<Vec<_>>().join(",");
    let out = super::kaelix(&["cluster", "status", "--nodes", &nodes]);
    let stdout = super::text(&out.stdout);
    if stdout.lines().filter(|l| l.contains(" up")).count() != members.len() {
        return None;
    }
    // "  orders/0   LEADER TERM COMMIT  1: leader 3 10, 2: follower 3 10, 4: learner 3 10"
    let row = stdout.lines().find(|l| l.trim_start().starts_with("orders/0"))?;
    let views = row.split_whitespace().skip(4).collect::<Vec<_>>().join(" ");
    views
        .split(", ")
        .map(|view| {
            let (node, rest) = view.trim().split_once(": ")?;
            Some((node.parse().ok()?, rest.split_whitespace().next()?.to_owned()))
        })
        .collect()
}

/// Four members, 3 voters per partition (`replication_factor`, the
/// default), so orders/0 has one learner. A voter is `kill -9`ed for good:
/// once SWIM has held it dead for `replace_dead_after_ms`, the partition's
/// leader swaps it with the learner by joint consensus, and `cluster
/// status` shows all three survivors as voters. Then a second voter is
/// killed: 2 of the 3 voters are left, so produces are still
/// acknowledged — without the replacement only 1 of the partition's 3
/// voters would be up and nothing could commit. Every acknowledged record
/// is on both last survivors, once, in order.
#[test]
fn a_voter_lost_for_good_is_replaced_by_a_learner_and_the_partition_survives_a_second_loss() {
    let config = format!("{CONFIG}replace_dead_after_ms = 1000\n");
    let layout = Layout::with_members("replace", &config, 4);
    let base = layout.base.clone();
    let mut members = layout.start_all();
    let exec = Executor::new(ExecutorConfig { max_workers: Some(1), ..ExecutorConfig::default() }).unwrap();
    let rt = RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(99), base.join("client"))).unwrap();
    let native_of = |members: &Vec<Option<Member>>, id: u64| members[id as usize - 1].as_ref().unwrap().native;
    let (mut acked, mut unknown) = (Vec::new(), Vec::new());

    let leader = leader_of(&members);
    let roles =
        wait_for("every member's role in orders/0", Duration::from_secs(15), || roles_by_status(&running(&members)));
    let learners: Vec<u64> = roles.iter().filter(|(_, r)| r == "learner").map(|(n, _)| *n).collect();
    assert_eq!(learners.len(), 1, "4 members, 3 voters: one learner, by status: {roles:?}");
    let voter = |not: &[u64]| roles.iter().map(|(n, _)| *n).find(|n| !learners.contains(n) && !not.contains(n));
    let first = voter(&[leader]).expect("a voter besides the leader");
    produce_acked(&exec, &rt, native_of(&members, leader), ("before", 10), &mut acked, &mut unknown);

    members[first as usize - 1] = None;
    let killed = Instant::now();
    let roles = wait_for("the killed voter's replacement", Duration::from_secs(40), || {
        roles_by_status(&running(&members))
            .filter(|roles| roles.len() == 3 && roles.iter().all(|(_, r)| r == "leader" || r == "follower"))
    });
    let replaced_after = killed.elapsed();
    let leader = leader_of(&members);
    produce_acked(&exec, &rt, native_of(&members, leader), ("replaced", 10), &mut acked, &mut unknown);

    let second = roles.iter().map(|(n, _)| *n).find(|&n| n != leader).expect("another voter");
    members[second as usize - 1] = None;
    produce_acked(&exec, &rt, native_of(&members, leader), ("second-loss", 10), &mut acked, &mut unknown);

    let survivors: Vec<u64> = (1..=4).filter(|&n| n != first && n != second).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let logs = loop {
        let logs: Vec<Vec<String>> =
            survivors.iter().map(|&id| read_log(&exec, &rt, native_of(&members, id))).collect();
        if logs.iter().all(|l| acked.iter().all(|a| l.contains(a))) && logs.iter().all(|l| *l == logs[0]) {
            break logs;
        }
        assert!(Instant::now() < deadline, "the survivors' logs lack acknowledged records 20 s on: {logs:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = &logs[0];
    assert_log_of(log, &acked, &unknown);
    println!(
        "voter {first} killed, replaced by learner {} after {replaced_after:?}; voter {second} killed; {} acknowledged records on members {survivors:?}",
        learners[0],
        acked.len()
    );
    drop(members);
    exec.shutdown(kaelix_core::time::Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&base);
}

/// SIGTERM to the leader: it drains, hands the partition's leadership to
/// another member and exits 0. The survivors therefore have a leader the
/// moment it is gone: the first publish through a survivor right after the
/// exit is acknowledged (after a `kill -9` it would be forwarded to the dead
/// leader and refused until an election timeout passed). Then the stopped
/// member comes back, and publishes through it are acknowledged too.
#[test]
fn a_leader_stopped_with_sigterm_hands_its_partitions_over_first() {
    let layout = Layout::new("handoff", CONFIG);
    let mut members = layout.start_all();
    let leader = leader_of(&members);
    let survivor = (1..=3).find(|&n| n != leader).unwrap();
    let mut publisher = Nats::connect(members[survivor as usize - 1].as_ref().unwrap().nats);
    let (mut acked, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..20 {
        publish_acked(&mut publisher, &format!("before{i}"), &mut acked, &mut unknown);
    }

    let mut stopping = members[leader as usize - 1].take().unwrap();
    let signalled = Instant::now();
    let pid = stopping.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exit = loop {
        if let Some(exit) = stopping.child.try_wait().unwrap() {
            break exit;
        }
        assert!(signalled.elapsed() < Duration::from_secs(15), "member {leader} still running 15 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(2));
    };
    let stopped_in = signalled.elapsed();
    assert!(exit.success(), "member {leader} exited with {exit} on SIGTERM");
    let first = publisher.publish("orders", "right-after-the-stop");
    let answered_in = signalled.elapsed() - stopped_in;
    assert!(
        first,
        "the first publish through member {survivor} after leader {leader} stopped was refused: the leadership was not handed over before the exit"
    );
    acked.push("right-after-the-stop".to_owned());
    println!(
        "SIGTERM to leader {leader}: exited 0 after {stopped_in:?}; a publish through member {survivor} was acknowledged {answered_in:?} later"
    );
    drop(stopping);

    // Back on its data directory; publishes through it are acknowledged.
    members[leader as usize - 1] = Some(layout.start(leader));
    let restarted_at = Instant::now();
    leader_of(&members);
    let mut through_restarted = Nats::connect(members[leader as usize - 1].as_ref().unwrap().nats);
    let before = unknown.len();
    for i in 0..10 {
        publish_acked(&mut through_restarted, &format!("restarted{i}"), &mut acked, &mut unknown);
    }
    println!(
        "member {leader} restarted: 10 publishes through it acknowledged {:?} after its start ({} refused on the way)",
        restarted_at.elapsed(),
        unknown.len() - before
    );
    let exec = Executor::new(ExecutorConfig { max_workers: Some(1), ..ExecutorConfig::default() }).unwrap();
    let rt = RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(99), layout.base.join("client"))).unwrap();
    let logs = wait_for("every member's log to hold every acknowledged message", Duration::from_secs(15), || {
        let logs: Vec<Vec<String>> =
            (1..=3).map(|id| read_log(&exec, &rt, members[id as usize - 1].as_ref().unwrap().native)).collect();
        let complete = logs.iter().all(|l| acked.iter().all(|a| l.contains(a)) && *l == logs[0]);
        complete.then_some(logs)
    });
    for r in &logs[0] {
        assert_eq!(logs[0].iter().filter(|x| *x == r).count(), 1, "{r} is in the log twice");
        assert!(acked.contains(r) || unknown.contains(r), "{r} was never published");
    }
    drop(members);
    exec.shutdown(kaelix_core::time::Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&layout.base);
}

/// Each member's SWIM view as `kaelix cluster status` prints it over
/// `members`: member → [(seen by node, state, incarnation, phi)].
type SwimViews = std::collections::BTreeMap<u64, Vec<(u64, String, u64, f64)>>;

fn swim_by_status(members: &[&Member]) -> SwimViews {
    let nodes = members.iter().map(|m| m.metrics.to_string()).collect::<Vec<_>>().join(",");
    let out = super::kaelix(&["cluster", "status", "--nodes", &nodes]);
    let stdout = super::text(&out.stdout);
    let mut views = SwimViews::new();
    // "  member   3  1: alive 1765… 0.12, 2: dead 1765… 8.31"
    for row in stdout.lines().filter_map(|l| l.trim_start().strip_prefix("member ")) {
        let (member, cells) = row.trim_start().split_once("  ").unwrap_or_else(|| panic!("{stdout}"));
        let member: u64 = member.trim().parse().unwrap_or_else(|_| panic!("{stdout}"));
        for cell in cells.split(", ") {
            let (node, rest) = cell.split_once(": ").unwrap_or_else(|| panic!("{stdout}"));
            let f: Vec<&str> = rest.split_whitespace().collect();
            assert_eq!(f.len(), 3, "{stdout}");
            views.entry(member).or_default().push((
                node.trim().parse().unwrap(),
                f[0].to_owned(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            ));
        }
    }
    views
}

/// Whether every node in `seen_by` holds `member` in `state` (and, with
/// `above`, at an incarnation higher than that).
fn all_see(views: &SwimViews, member: u64, seen_by: &[u64], state: &str, above: Option<u64>) -> bool {
    let Some(row) = views.get(&member) else { return false };
    seen_by.iter().all(|n| row.iter().any(|(by, s, inc, _)| by == n && s == state && above.is_none_or(|a| *inc > a)))
}

/// SWIM on three real processes: every member sees every member alive;
/// after `kill -9` of one, both survivors declare it dead within a bound
/// derived from the SWIM configuration the members run
/// (`SwimConfig::default`), and `kaelix cluster status` shows it; restarted
/// on its data directory, it is alive again on every member at a higher
/// incarnation than before.
#[test]
fn swim_declares_a_killed_member_dead_and_its_restart_alive_at_a_higher_incarnation() {
    use kaelix_cluster::swim::SwimConfig;
    use kaelix_cluster::swim::suspicion::min_timeout;

    let layout = Layout::new("swim", CONFIG);
    let mut members = layout.start_all();
    let running = |members: &Vec<Option<Member>>| swim_by_status(&members.iter().flatten().collect::<Vec<_>>());
    let views = wait_for("every member alive on every member", Duration::from_secs(20), || {
        let v = running(&members);
        (1..=3).all(|m| all_see(&v, m, &[1, 2, 3], "alive", None)).then_some(v)
    });
    let before = views[&3].iter().map(|(_, _, inc, _)| *inc).max().unwrap();
    assert!(views.values().flatten().all(|(_, _, _, phi)| phi.is_finite()), "{views:?}");

    // The bound: the survivors probe the killed member within one round of
    // the other n − 1 members (its place in the shuffled order may move to
    // the end of the next round: 2 · (n − 1) periods), the failed probe
    // takes one period, the phi gate may defer that failure
    // `phi_gate_max_deferrals` times (each a re-probe the next period:
    // one period each), its suspicion lasts the minimum timeout for n = 3
    // (too few members to confirm it: Lifeguard's k is 0, so no longer
    // timeout), and the Dead spreads by gossip (200 ms rounds) or each
    // survivor's own timer; 2 s cover gossip and process scheduling.
    let swim = SwimConfig::default();
    let n = 3u32;
    let round = swim.probe_interval * (2 * (n - 1) + 1 + swim.phi_gate_max_deferrals);
    // Phi has history only once a probe of the member was answered: let
    // every member probe every other one first (two rounds: Lifeguard may
    // stretch the first periods while the members were still starting).
    std::thread::sleep(round * 2);
    let bound = round + min_timeout(swim.suspicion_mult, n as usize, swim.probe_interval) + Duration::from_secs(2);
    let killed_at = Instant::now();
    drop(members[2].take());
    let views = wait_for("both survivors to declare member 3 dead", bound, || {
        let v = running(&members);
        all_see(&v, 3, &[1, 2], "dead", None).then_some(v)
    });
    let declared = killed_at.elapsed();
    eprintln!("swim: member 3 declared dead by both survivors {declared:?} after kill -9 (bound {bound:?})");
    assert!(all_see(&views, 1, &[1, 2], "alive", None) && all_see(&views, 2, &[1, 2], "alive", None), "{views:?}");
    // The survivors' phi for the silent member passes the detector's
    // threshold (it grows with the silence: SWIM's verdict may come first,
    // so allow the silence a few more seconds); for each other (probed
    // every other period) it stays below.
    let threshold = kaelix_cluster::phi::PhiConfig::default().threshold;
    let phi_of = |views: &SwimViews, member: u64, by: u64| views[&member].iter().find(|v| v.0 == by).unwrap().3;
    let views = wait_for("both survivors' phi of member 3 past the threshold", Duration::from_secs(10), || {
        let v = running(&members);
        (phi_of(&v, 3, 1) > threshold && phi_of(&v, 3, 2) > threshold).then_some(v)
    });
    assert!(phi_of(&views, 2, 1) < threshold && phi_of(&views, 1, 2) < threshold, "{views:?}");
    drop(views);

    members[2] = Some(layout.start(3));
    let views = wait_for("the restarted member 3 alive on every member", Duration::from_secs(20), || {
        let v = running(&members);
        all_see(&v, 3, &[1, 2, 3], "alive", Some(before)).then_some(v)
    });
    assert!((1..=3).all(|m| all_see(&views, m, &[1, 2, 3], "alive", None)), "{views:?}");
}

/// Joining by address: member 1 starts alone (no peers, nothing to join),
/// member 2 joins through member 1's address, member 3 through member 2's
/// only; SWIM makes each a member on every node, each learning the others'
/// addresses from their records (member 1 never hears member 3's address
/// from its configuration). They hold no replicated topics (only
/// `cluster.peers` members do).
#[test]
fn members_that_know_one_address_join_and_become_alive_everywhere() {
    let layout = Layout::new("join", "");
    let port = |id: u64| layout.ports[id as usize - 1];
    let addr = |id: u64| format!("127.0.0.1:{}", port(id));
    let dir = |id: u64| layout.base.join(format!("node{id}"));
    let first = spawn_member(1, port(1), &[], &dir(1), &layout.config);
    let second = spawn_member(2, port(2), &["--join", &addr(1)], &dir(2), &layout.config);
    let started = Instant::now();
    let third = spawn_member(3, port(3), &["--join", &addr(2)], &dir(3), &layout.config);
    let members = [&first, &second, &third];
    // Joins are retried every announce interval (5 s): a few rounds.
    let views = wait_for("all three alive on all three", Duration::from_secs(30), || {
        let v = swim_by_status(&members);
        (1..=3).all(|m| all_see(&v, m, &[1, 2, 3], "alive", None)).then_some(v)
    });
    eprintln!(
        "join: member 3 (knowing only member 2's address) alive on all three {:?} after its start",
        started.elapsed()
    );
    assert_eq!(views.len(), 3, "no provisional join id shows as a member: {views:?}");
    let nodes = members.iter().map(|m| m.metrics.to_string()).collect::<Vec<_>>().join(",");
    let out = super::kaelix(&["cluster", "status", "--nodes", &nodes]);
    let stdout = super::text(&out.stdout);
    assert_eq!(stdout.lines().filter(|l| l.contains(" up")).count(), 3, "{stdout}");
    assert_eq!(out.status.code(), Some(0), "no partition, every member answers: {stdout}");
}

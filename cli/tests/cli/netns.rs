//! Three real `kaelix serve --cluster` processes, each in a network
//! namespace of its own, under real network faults while clients write and
//! read; the clients' history is judged by the same checker as `kaelix sim
//! check-history`.
//!
//! # The network
//!
//! Every name starts with `kxnf<pid>` (this test process's id), so parallel
//! runs never meet and a crashed run's leftovers are recognised: at the
//! start, namespaces of the prefix whose process is gone are emptied (their
//! processes killed) and deleted. The test creates
//!
//! * `kxnf<pid>-br`: a bridge `br0`, one port per endpoint (`kxnf<pid>p<x>`);
//! * `kxnf<pid>-n1` .. `-n3`: member `i`'s `eth0` at `10.77.0.i/24`, the
//!   other end of a veth pair on the bridge;
//! * `kxnf<pid>-c`: the clients' `eth0` at `10.77.0.100/24`;
//! * `kxnf<pid>-px`: the fault proxy's `eth0` at `10.77.0.201` to `.203/24`
//!   (`netns_proxy.rs`).
//!
//! Addresses exist only inside these namespaces (the veth ends are created
//! directly in them); nothing is added to the machine's own namespace.
//! Member `i` runs as `ip netns exec kxnf<pid>-ni kaelix serve --cluster`
//! (`ip netns exec` execs, so the child's pid is the member's: `kill -9`,
//! SIGSTOP and SIGCONT reach it), Raft and SWIM on `0.0.0.0:7000`,
//! forwarding on 7001, native clients on `10.77.0.i:7422`, metrics on 9464;
//! topic `orders` has 2 replicated partitions (two Raft groups). Member
//! `i`'s entry in every member's `--peers` is the proxy's `10.77.0.20i:7000`,
//! which passes to `10.77.0.i:7000` (and 7001 to 7001): every connection
//! between members goes through the proxy; clients connect directly.
//!
//! # The clients
//!
//! A thread of this process moves itself into the clients' namespace
//! (`setns`) and only then creates its executor, whose threads inherit the
//! namespace, so every client socket lives there. One process rather than
//! re-invoking the test binary under `ip netns exec`: the history is shared
//! memory on one clock (`Instant`, nanoseconds since the test started), and
//! the cleanup guard below covers the clients too, with no second process to
//! lose track of. Three workers, each on one member (a failed operation
//! moves it to the next member), repeat: produce a unique payload to
//! partition `seq % 2` with `acks = committed`, then read one offset of a
//! partition — its own last acknowledged offset, or an offset below the
//! highest any worker saw acknowledged — with a native fetch.
//!
//! What goes into the history (`kaelix_scenarios::history`):
//!
//! * an acknowledged produce, with its offset;
//! * a produce that failed in any way after it was sent — timeout, broken
//!   connection, or a refusal (a refused proposal may still be committed by
//!   a later leader; the members themselves say a refused forward's outcome
//!   is unknown) — as **unknown**, never as failed;
//! * a read that returned the record at its offset, with the payload;
//! * a read that found nothing (an empty answer, or `OffsetOutOfRange`
//!   past the member's high watermark), as a read of nothing at that
//!   offset;
//! * a read that timed out, broke or was refused (`Unavailable`: no
//!   leader confirmed it), as unknown.
//!
//! Every read is held to linearizability (PROTOCOL.md §8.2: fetches of a
//! replicated topic are linearizable through any member): a record read
//! must be the one produced at that offset, and no earlier than its
//! produce; "nothing at offset o" must hold at some instant of the fetch,
//! so it is a violation once o (or any offset above) was acknowledged
//! before the fetch was sent.
//!
//! # The faults
//!
//! One cycle (about 90 s), each fault held 6 s and followed by 2 s healed:
//!
//! 1. symmetric partition: the target member drops everything from and to
//!    the other members and the proxy, that is every address but the
//!    clients' (nftables in its namespace; clients still reach it);
//! 2. one-way partition: the target's packets to the other members are
//!    dropped (it hears them, they do not hear it);
//! 3. the reverse: the target hears nothing from the other members;
//! 4. random loss: every member drops 25 % of the packets it receives
//!    (`numgen random mod 100 < 25`);
//! 5. bandwidth: `tc tbf` at 96 kbit/s on both directions of the target's
//!    link;
//! 6. `kill -9` of the target, down 6 s, restarted on the same data
//!    directory;
//! 7. SIGSTOP of the target for 6 s, then SIGCONT;
//! 8. the proxy delays the datagrams between every pair of members
//!    (order kept),
//! 9. reorders them,
//! 10. duplicates them;
//! 11. the proxy holds every connection to the target (open, nothing
//!     passed either way), releasing what it kept at the heal.
//!
//! Targets alternate between the leader of `orders/0` (asked with `kaelix
//! cluster status` just before the fault) and one of its followers. The
//! default run is one cycle (88 s of faults); `KAELIX_NETNS_SECONDS=600`
//! runs as many cycles as end within that many seconds (roles swap every
//! cycle).
//!
//! # What is checked
//!
//! * after the last heal, every worker has a produce acknowledged within
//!   30 s (the cluster recovers);
//! * the history is linearizable with its offsets consistent
//!   (`linearizability::check_history`, the library function behind `kaelix
//!   sim check-history`), and the command, run on the written file, agrees;
//! * at least 200 acknowledged produces and 100 reads that returned a
//!   record, so a run in which nothing succeeds cannot pass;
//! * the proxy did delay, reorder (a frame released before one that
//!   arrived earlier) and duplicate frames.
//!
//! The history file (`$TMPDIR/kaelix-netns-<pid>.jsonl`) and the fault
//! schedule (`.schedule.txt` beside it) are always kept; the data
//! directories and member logs only when the test fails. A `Lab` guard
//! kills every member and deletes every namespace when dropped, so a failing
//! or panicking test leaves nothing behind.
//!
//! Without root, `ip`, `nft` or `tc` the test prints why and passes, unless
//! `CI_REQUIRE_NETNS=1`, when it fails.

#![allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "real processes, namespaces, sockets, clocks")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kaelix_client::{
    AckLevel, ClientConfig, ClientError, Connection, Consumer, ErrorCode, FetchOptions, Message, Producer, Topic,
};
use kaelix_core::NodeId;
use kaelix_core::runtime::Clock;
use kaelix_core::time::Duration as RtDuration;
use kaelix_runtime_real::{Executor, ExecutorConfig, NodeConfig, RealRuntime};
use kaelix_scenarios::history::{Completion, History, HistoryOp, OpKind, Output};
use kaelix_scenarios::linearizability::{CheckConfig, check_history};

use super::netns_proxy::{Mode, Proxy, Route};

/// Every name this test creates starts with it (then the process id).
const PREFIX: &str = "kxnf";
const MEMBERS: u64 = 3;
const PARTITIONS: u32 = 2;
const WORKERS: u64 = 3;
const CLUSTER_PORT: u16 = 7000;
const NATIVE_PORT: u16 = 7422;
const METRICS_PORT: u16 = 9464;
const CLIENT_IP: &str = "10.77.0.100";
/// The members' file: the replicated topic, and a forward timeout below
/// the clients' request timeout, so a forward to a frozen or cut-off leader
/// is answered before the client gives up on it.
const CONFIG: &str =
    "[[topics]]\nname = \"orders\"\npartitions = 2\nstorage = \"replicated\"\n[cluster]\nforward_timeout_ms = 1500\n";
/// How long each fault is held, and how long the cluster runs healed after it.
const HOLD: Duration = Duration::from_secs(6);
const SETTLE: Duration = Duration::from_secs(2);
/// Bounds of the run: at least this many acknowledged produces and reads
/// that returned a record.
const MIN_ACKED_PRODUCES: usize = 200;
const MIN_VALUE_READS: usize = 100;

fn member_ip(id: u64) -> String {
    format!("10.77.0.{id}")
}

/// The proxy's address for member `id`: its `--peers` entry.
fn proxy_ip(id: u64) -> String {
    format!("10.77.0.{}", 200 + id)
}

/// `Err` with the command and its stderr unless it exits 0.
fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Why this machine cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    match run(&["id", "-u"]) {
        Ok(uid) if uid.trim() == "0" => {}
        Ok(uid) => return Some(format!("not root (uid {}): ip netns needs CAP_SYS_ADMIN", uid.trim())),
        Err(e) => return Some(e),
    }
    for (tool, version) in [("ip", "-V"), ("tc", "-V"), ("nft", "-v")] {
        if let Err(e) = run(&[tool, version]) {
            return Some(format!("`{tool}` is not usable ({e}); apt-get install -y iproute2 nftables"));
        }
    }
    None
}

/// The namespaces of this test's prefix whose creating process is gone:
/// their processes killed, the namespaces deleted.
fn delete_stale_namespaces() {
    let Ok(list) = run(&["ip", "netns", "list"]) else { return };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("netns: deleting stale namespace {name} (process {pid} is gone)");
        kill_and_delete(name);
    }
}

fn kill_and_delete(ns: &str) {
    if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run(&["kill", "-CONT", pid]);
            let _ = run(&["kill", "-KILL", pid]);
        }
    }
    let _ = run(&["ip", "netns", "del", ns]);
}

/// Everything the test creates; dropping it kills every member and deletes
/// every namespace (their nftables tables and qdiscs go with them).
struct Lab {
    /// `kxnf<pid>`: interface names (at most 15 bytes) and namespace names.
    prefix: String,
    namespaces: Vec<String>,
    members: Vec<Option<Child>>,
    paused: Vec<bool>,
    /// Data directories, member logs, the members' file.
    dir: PathBuf,
    /// Removed at the end only once the test passed.
    keep_dir: bool,
    /// Tells the client workers to stop.
    stop_clients: Arc<AtomicBool>,
    proxy: Option<Proxy>,
}

impl Lab {
    fn new() -> Lab {
        let prefix = format!("{PREFIX}{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("kaelix-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kaelix.toml"), CONFIG).unwrap();
        Lab {
            prefix,
            namespaces: Vec::new(),
            members: (0..MEMBERS).map(|_| None).collect(),
            paused: vec![false; MEMBERS as usize],
            dir,
            keep_dir: true,
            stop_clients: Arc::new(AtomicBool::new(false)),
            proxy: None,
        }
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn member_ns(&self, id: u64) -> String {
        self.ns(&format!("n{id}"))
    }

    fn add_namespace(&mut self, name: &str) -> Result<String, String> {
        let ns = self.ns(name);
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The bridge, the members', the clients' and the proxy's namespaces,
    /// wired.
    fn build_network(&mut self) -> Result<(), String> {
        let br = self.add_namespace("br")?;
        run(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &br, "link", "set", "br0", "up"])?;
        let mut endpoints: Vec<(String, String, Vec<String>)> =
            (1..=MEMBERS).map(|id| (format!("n{id}"), id.to_string(), vec![member_ip(id)])).collect();
        endpoints.push(("c".to_owned(), "c".to_owned(), vec![CLIENT_IP.to_owned()]));
        endpoints.push(("px".to_owned(), "x".to_owned(), (1..=MEMBERS).map(proxy_ip).collect()));
        for (name, x, ips) in endpoints {
            let ns = self.add_namespace(&name)?;
            let (inner, port) = (format!("{}v{x}", self.prefix), format!("{}p{x}", self.prefix));
            // Both ends created directly in their namespaces.
            run(&["ip", "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &br])?;
            run(&["ip", "-n", &ns, "link", "set", &inner, "name", "eth0"])?;
            for ip in ips {
                run(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            }
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &br, "link", "set", &port, "master", "br0"])?;
            run(&["ip", "-n", &br, "link", "set", &port, "up"])?;
        }
        Ok(())
    }

    fn bridge_port(&self, id: u64) -> String {
        format!("{}p{id}", self.prefix)
    }

    /// Starts member `id` on its data directory (again after a kill) and
    /// waits until it listens for native clients.
    fn start_member(&mut self, id: u64) {
        assert!(self.members[id as usize - 1].is_none(), "member {id} is running");
        let peers = (1..=MEMBERS).map(|p| format!("{p}={}:{CLUSTER_PORT}", proxy_ip(p))).collect::<Vec<_>>().join(",");
        let ip = member_ip(id);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("node{id}.log"))).unwrap();
        let mut command = Command::new("ip");
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KAELIX_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .args(["netns", "exec", &self.member_ns(id), env!("CARGO_BIN_EXE_kaelix")])
            .args(["serve", "--cluster", "--node-id", &id.to_string()])
            .args(["--cluster-listen", &format!("0.0.0.0:{CLUSTER_PORT}"), "--peers", &peers])
            .args(["--listen", &format!("{ip}:{NATIVE_PORT}"), "--nats-listen", "127.0.0.1:4222"])
            .args(["--metrics-listen", &format!("{ip}:{METRICS_PORT}")])
            .args(["--log-level", "warn", "--workers", "1"])
            .args(["--config", self.dir.join("kaelix.toml").to_str().unwrap()])
            .args(["--data-dir", self.dir.join(format!("node{id}")).to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("ip netns exec kaelix serve starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = format!("kaelix serve: native clients on {ip}:{NATIVE_PORT}");
        loop {
            match lines.next() {
                Some(Ok(line)) if line == ready => break,
                Some(Ok(_)) => {}
                _ => {
                    let log = std::fs::read_to_string(self.dir.join(format!("node{id}.log"))).unwrap_or_default();
                    panic!("member {id} exited before listening: {:?}\n{log}", child.try_wait());
                }
            }
        }
        // The rest of its stdout, read so the pipe never fills.
        std::thread::spawn(move || lines.for_each(drop));
        self.members[id as usize - 1] = Some(child);
    }

    fn pid(&self, id: u64) -> String {
        self.members[id as usize - 1].as_ref().expect("member running").id().to_string()
    }

    fn kill9(&mut self, id: u64) {
        let mut child = self.members[id as usize - 1].take().expect("member running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn signal(&mut self, id: u64, signal: &str) {
        must(&["kill", signal, &self.pid(id)]);
        self.paused[id as usize - 1] = signal == "-STOP";
    }

    /// Loads `rules` (nft syntax) into member `id`'s namespace.
    fn nft(&self, id: u64, rules: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.member_ns(id), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "nft in member {id}: {}\n{rules}", String::from_utf8_lossy(&out.stderr));
    }

    fn nft_flush(&self, id: u64) {
        must(&["ip", "netns", "exec", &self.member_ns(id), "nft", "flush", "ruleset"]);
    }

    /// The leader of each partition as `kaelix cluster status` prints it
    /// (run in the clients' namespace), or `None` if it could not tell.
    fn leaders(&self) -> Option<BTreeMap<u32, u64>> {
        let nodes = (1..=MEMBERS).map(|p| format!("{}:{METRICS_PORT}", member_ip(p))).collect::<Vec<_>>().join(",");
        let kaelix = env!("CARGO_BIN_EXE_kaelix");
        let out = run(&["ip", "netns", "exec", &self.ns("c"), kaelix, "cluster", "status", "--nodes", &nodes]).ok()?;
        let mut leaders = BTreeMap::new();
        for p in 0..PARTITIONS {
            let row = out.lines().find(|l| l.trim_start().starts_with(&format!("orders/{p} ")))?;
            leaders.insert(p, row.split_whitespace().nth(1)?.parse().ok()?);
        }
        Some(leaders)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_clients.store(true, Ordering::Relaxed);
        drop(self.proxy.take());
        for (i, member) in self.members.iter_mut().enumerate() {
            if let Some(mut child) = member.take() {
                if self.paused[i] {
                    let _ = run(&["kill", "-CONT", &child.id().to_string()]);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for ns in self.namespaces.iter().rev() {
            kill_and_delete(ns);
        }
        if self.keep_dir {
            eprintln!("netns: data directories and member logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fault of the schedule, on member ids.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Symmetric partition of the member from the other members.
    Isolate(u64),
    /// The member's packets to the other members are dropped.
    Mute(u64),
    /// The other members' packets to the member are dropped.
    Deafen(u64),
    /// Every member drops this percentage of the packets it receives.
    Loss(u32),
    /// tc tbf on both directions of the member's link.
    Throttle(u64),
    /// kill -9, restarted on its data directory at the heal.
    Kill(u64),
    /// SIGSTOP, SIGCONT at the heal.
    Pause(u64),
    /// The proxy in this mode on the connections to one member or all.
    Proxy(Mode, Option<u64>),
}

const TBF: [&str; 8] = ["root", "tbf", "rate", "96kbit", "burst", "8kb", "latency", "200ms"];

impl Fault {
    fn apply(self, lab: &mut Lab) {
        let chain = |hook: &str, rule: &str| {
            format!(
                "table inet kaelix_fault {{\n  chain {hook} {{\n    type filter hook {hook} priority 0; policy accept;\n    {rule}\n  }}\n}}\n"
            )
        };
        match self {
            // The other members reach a member through the proxy: every
            // address but the clients' is a member's or the proxy's.
            Fault::Isolate(id) => {
                lab.nft(id, &chain("input", &format!("iifname \"eth0\" ip saddr != {CLIENT_IP} drop")));
                lab.nft(id, &chain("output", &format!("oifname \"eth0\" ip daddr != {CLIENT_IP} drop")));
            }
            Fault::Mute(id) => {
                lab.nft(id, &chain("output", &format!("oifname \"eth0\" ip daddr != {CLIENT_IP} drop")));
            }
            Fault::Deafen(id) => {
                lab.nft(id, &chain("input", &format!("iifname \"eth0\" ip saddr != {CLIENT_IP} drop")));
            }
            Fault::Loss(percent) => {
                for id in 1..=MEMBERS {
                    lab.nft(id, &chain("input", &format!("iifname \"eth0\" numgen random mod 100 < {percent} drop")));
                }
            }
            Fault::Throttle(id) => {
                let port = lab.bridge_port(id);
                let tbf = &TBF[..];
                must(&[&["ip", "netns", "exec", &lab.ns("br"), "tc", "qdisc", "add", "dev", &port][..], tbf].concat());
                let ns = lab.member_ns(id);
                must(&[&["ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0"][..], tbf].concat());
            }
            Fault::Kill(id) => lab.kill9(id),
            Fault::Pause(id) => lab.signal(id, "-STOP"),
            Fault::Proxy(mode, member) => lab.proxy.as_ref().unwrap().set_mode(member, mode),
        }
    }

    fn heal(self, lab: &mut Lab) {
        match self {
            Fault::Isolate(id) | Fault::Mute(id) | Fault::Deafen(id) => lab.nft_flush(id),
            Fault::Loss(_) => (1..=MEMBERS).for_each(|id| lab.nft_flush(id)),
            Fault::Throttle(id) => {
                let port = lab.bridge_port(id);
                must(&["ip", "netns", "exec", &lab.ns("br"), "tc", "qdisc", "del", "dev", &port, "root"]);
                must(&["ip", "netns", "exec", &lab.member_ns(id), "tc", "qdisc", "del", "dev", "eth0", "root"]);
            }
            Fault::Kill(id) => lab.start_member(id),
            Fault::Pause(id) => lab.signal(id, "-CONT"),
            Fault::Proxy(_, member) => lab.proxy.as_ref().unwrap().set_mode(member, Mode::Pass),
        }
    }

    fn describe(self) -> String {
        match self {
            Fault::Isolate(id) => format!("symmetric partition of member {id} from the other members (nft)"),
            Fault::Mute(id) => format!("one-way: member {id}'s packets to the other members dropped (nft)"),
            Fault::Deafen(id) => format!("one-way: the other members' packets to member {id} dropped (nft)"),
            Fault::Loss(p) => format!("random loss: every member drops {p} % of what it receives (nft numgen)"),
            Fault::Throttle(id) => format!("tc tbf 96 kbit/s on both directions of member {id}'s link"),
            Fault::Kill(id) => format!("kill -9 of member {id}, restarted on its data directory at the heal"),
            Fault::Pause(id) => format!("SIGSTOP of member {id}, SIGCONT at the heal"),
            Fault::Proxy(mode, member) => {
                let to = member.map_or("every member".to_owned(), |id| format!("member {id}"));
                match mode {
                    Mode::Delay => format!("proxy: datagrams to {to} delayed 20-250 ms, order kept"),
                    Mode::Reorder => format!("proxy: datagrams to {to} held 0-200 ms each, reordered"),
                    Mode::Duplicate => format!("proxy: 30 % of the datagrams to {to} duplicated"),
                    Mode::Hold => format!("proxy: connections to {to} held open, nothing passed"),
                    Mode::Pass => format!("proxy: connections to {to} passed"),
                }
            }
        }
    }
}

/// What the clients share: the history, the clock, the stop flag, figures.
struct Shared {
    start: Instant,
    stop: Arc<AtomicBool>,
    ops: Mutex<Vec<HistoryOp>>,
    /// Per partition: one past the highest offset any worker saw acknowledged.
    high: [AtomicU64; PARTITIONS as usize],
    /// Per worker: nanoseconds of its last acknowledged produce.
    last_ack: Vec<AtomicU64>,
    /// Reads that found nothing (in the history as such; see the header).
    empty_reads: AtomicU64,
    /// Failures by kind ("produce Timeout", "read Closed", ...).
    errors: Mutex<BTreeMap<String, u64>>,
    /// Reads whose record was not at the offset asked for.
    misplaced: Mutex<Vec<String>>,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap()
    }

    fn record(&self, op: HistoryOp) {
        self.ops.lock().unwrap().push(op);
    }

    fn error(&self, what: &str, e: &ClientError) {
        let kind = match e {
            ClientError::Server { code, .. } => format!("{code:?}"),
            ClientError::Timeout(_) => "Timeout".to_owned(),
            ClientError::Closed(_) => "Closed".to_owned(),
            ClientError::Connect(_) => "Connect".to_owned(),
            other => format!("{other}"),
        };
        *self.errors.lock().unwrap().entry(format!("{what} {kind}")).or_default() += 1;
    }
}

/// One client: produce, read, repeat, until told to stop.
async fn worker(rt: RealRuntime, shared: Arc<Shared>, w: u64) {
    let topic = Topic::new("orders").unwrap();
    let config = ClientConfig {
        client_name: format!("netns-worker-{w}"),
        connect_timeout: RtDuration::from_secs(2),
        request_timeout: RtDuration::from_secs(3),
        ..ClientConfig::default()
    };
    let mut member = w % MEMBERS + 1;
    let mut conn: Option<Connection<RealRuntime>> = None;
    let mut own: [Option<u64>; PARTITIONS as usize] = [None; PARTITIONS as usize];
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let c = match conn.as_ref().filter(|c| !c.is_closed()) {
            Some(c) => c.clone(),
            None => {
                let addr = format!("{}:{NATIVE_PORT}", member_ip(member)).parse().unwrap();
                match Connection::connect_with(&rt, addr, config.clone()).await {
                    Ok(c) => {
                        conn = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        // Nothing was sent: no operation to record.
                        shared.error("connect", &e);
                        member = member % MEMBERS + 1;
                        rt.sleep(RtDuration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        let mut failed = false;

        let partition = (seq % u64::from(PARTITIONS)) as u32;
        let name = format!("orders/{partition}");
        let payload = format!("w{w}-{seq}");
        let message = Message::builder().topic(&topic).partition(partition).payload(payload.clone()).build().unwrap();
        let call = shared.now();
        let sent = Producer::new(c.clone()).with_acks(AckLevel::Committed).send(message).await;
        let at = shared.now();
        let completion = match sent {
            Ok(position) => {
                assert_eq!(position.partition, partition, "a produce to partition {partition} landed elsewhere");
                shared.high[partition as usize].fetch_max(position.offset + 1, Ordering::Relaxed);
                shared.last_ack[w as usize].store(at, Ordering::Relaxed);
                own[partition as usize] = Some(position.offset);
                Some(Completion { at, output: Output::Offset(position.offset) })
            }
            Err(e) => {
                shared.error("produce", &e);
                failed = true;
                None
            }
        };
        shared.record(HistoryOp {
            client: w + 1,
            partition: name,
            kind: OpKind::Produce { payload },
            call,
            completion,
        });

        // Every other read is of the worker's own last acknowledged offset
        // of a partition; the others spread over what anyone saw acknowledged.
        let partition = ((seq / 2) % u64::from(PARTITIONS)) as u32;
        let high = shared.high[partition as usize].load(Ordering::Relaxed);
        let offset = match own[partition as usize] {
            Some(o) if seq.is_multiple_of(2) => Some(o),
            _ if high > 0 => Some(seq.wrapping_mul(7919) % high),
            _ => None,
        };
        if let Some(offset) = offset {
            let options =
                FetchOptions { max_messages: 1, ..FetchOptions::default() }.wait(RtDuration::from_millis(500));
            let call = shared.now();
            let fetched = Consumer::new(c.clone()).fetch(&topic, partition, offset, options).await;
            let at = shared.now();
            let completion = match fetched {
                Ok(f) => match f.messages.first() {
                    Some(m) => {
                        if m.offset() != Some(offset) {
                            shared.misplaced.lock().unwrap().push(format!(
                                "a fetch of orders/{partition} at {offset} returned offset {:?} first",
                                m.offset()
                            ));
                        }
                        Some(Some(Completion {
                            at,
                            output: Output::Payload(String::from_utf8_lossy(m.payload()).into_owned()),
                        }))
                    }
                    None => None,
                },
                // Past the member's high watermark.
                Err(ClientError::Server { code: ErrorCode::OffsetOutOfRange, .. }) => None,
                Err(e) => {
                    shared.error("read", &e);
                    failed = true;
                    Some(None)
                }
            };
            let completion = completion.unwrap_or_else(|| {
                shared.empty_reads.fetch_add(1, Ordering::Relaxed);
                Some(Completion { at, output: Output::Nothing })
            });
            shared.record(HistoryOp {
                client: w + 1,
                partition: format!("orders/{partition}"),
                kind: OpKind::Read { offset },
                call,
                completion,
            });
        }
        if failed {
            // The member may be cut off, frozen or dead: try the next one.
            conn = None;
            member = member % MEMBERS + 1;
        }
        seq += 1;
        rt.sleep(RtDuration::from_millis(5)).await;
    }
}

/// Starts the client workers on a thread that first moves into `ns`.
fn start_clients(ns: &str, dir: &Path, shared: Arc<Shared>) -> std::thread::JoinHandle<()> {
    let (ns_path, dir) = (format!("/run/netns/{ns}"), dir.join("client"));
    std::thread::Builder::new()
        .name("netns-clients".into())
        .spawn(move || {
            let ns = std::fs::File::open(&ns_path).unwrap_or_else(|e| panic!("{ns_path}: {e}"));
            rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                .expect("setns into the clients' namespace");
            // Created after the move: the executor's threads inherit the namespace.
            let exec = Executor::new(ExecutorConfig { max_workers: Some(2), ..ExecutorConfig::default() }).unwrap();
            let rt = RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(99), dir)).unwrap();
            let workers = (0..WORKERS).map(|w| worker(rt.clone(), shared.clone(), w));
            exec.block_on(futures_util::future::join_all(workers));
            exec.shutdown(RtDuration::from_secs(1));
        })
        .unwrap()
}

/// A fault of a cycle: whether it targets the leader, and the fault on a target.
type Step = (bool, fn(u64) -> Fault);

/// The faults of cycle `cycle`: targets alternate between the leader
/// (`true`) and a follower, swapped every cycle.
fn cycle(cycle: u32) -> Vec<Step> {
    let on_leader = cycle.is_multiple_of(2);
    vec![
        (on_leader, Fault::Isolate),
        (on_leader, Fault::Mute),
        (!on_leader, Fault::Deafen),
        (on_leader, |_| Fault::Loss(25)),
        (!on_leader, Fault::Throttle),
        (on_leader, Fault::Kill),
        (!on_leader, Fault::Pause),
        (on_leader, |_| Fault::Proxy(Mode::Delay, None)),
        (on_leader, |_| Fault::Proxy(Mode::Reorder, None)),
        (on_leader, |_| Fault::Proxy(Mode::Duplicate, None)),
        (on_leader, |id| Fault::Proxy(Mode::Hold, Some(id))),
    ]
}

#[test]
fn a_three_member_cluster_in_network_namespaces_stays_linearizable_under_real_faults() {
    let required = std::env::var("CI_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    if let Some(why) = missing_prerequisite() {
        assert!(!required, "CI_REQUIRE_NETNS=1 but the network-namespace test cannot run: {why}");
        eprintln!("netns: SKIPPED: {why}");
        return;
    }
    delete_stale_namespaces();
    let fault_seconds: u64 = std::env::var("KAELIX_NETNS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(90);
    let started = Instant::now();
    let mut lab = Lab::new();
    if let Err(e) = lab.build_network() {
        assert!(!required, "CI_REQUIRE_NETNS=1 but the namespaces cannot be built: {e}");
        eprintln!("netns: SKIPPED: the namespaces cannot be built: {e}");
        return;
    }
    let proxy_seed = u64::from(std::process::id());
    let routes = (1..=MEMBERS)
        .flat_map(|id| {
            [(CLUSTER_PORT, true), (CLUSTER_PORT + 1, false)].map(|(port, frames)| Route {
                member: id,
                listen: format!("{}:{port}", proxy_ip(id)).parse().unwrap(),
                upstream: format!("{}:{port}", member_ip(id)).parse().unwrap(),
                frames,
            })
        })
        .collect();
    lab.proxy = Some(Proxy::start(&lab.ns("px"), routes, proxy_seed));
    for id in 1..=MEMBERS {
        lab.start_member(id);
    }
    let shared = Arc::new(Shared {
        start: started,
        stop: lab.stop_clients.clone(),
        ops: Mutex::new(Vec::new()),
        high: std::array::from_fn(|_| AtomicU64::new(0)),
        last_ack: (0..WORKERS).map(|_| AtomicU64::new(0)).collect(),
        empty_reads: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        misplaced: Mutex::new(Vec::new()),
    });
    let clients = start_clients(&lab.ns("c"), &lab.dir, shared.clone());
    let mut schedule = String::new();
    let mut note = |line: String| {
        let line = format!("{:7.1} s  {line}", started.elapsed().as_secs_f64());
        eprintln!("netns: {line}");
        writeln!(schedule, "{line}").unwrap();
    };
    note("members up; clients started".to_owned());
    std::thread::sleep(SETTLE);

    let faults_from = Instant::now();
    let mut faults = 0;
    for c in 0.. {
        // One cycle at least; another only if it ends within the budget.
        let steps = cycle(c);
        let length = (HOLD + SETTLE) * steps.len() as u32;
        if c > 0 && faults_from.elapsed() + length > Duration::from_secs(fault_seconds) {
            break;
        }
        for (on_leader, make) in steps {
            let leaders = lab.leaders();
            let leader = leaders.as_ref().map(|l| l[&0]);
            let target = match leader {
                Some(l) if on_leader => l,
                Some(l) => l % MEMBERS + 1,
                None => (faults % MEMBERS) + 1,
            };
            let fault = make(target);
            let named = leaders.as_ref().map_or("unknown".to_owned(), |l| {
                l.iter().map(|(p, id)| format!("orders/{p}: {id}")).collect::<Vec<_>>().join(", ")
            });
            note(format!("{} [leaders {named}]", fault.describe()));
            fault.apply(&mut lab);
            std::thread::sleep(HOLD);
            fault.heal(&mut lab);
            note("healed".to_owned());
            faults += 1;
            std::thread::sleep(SETTLE);
        }
    }

    // Every worker gets a produce acknowledged after the last heal.
    let healed = shared.now();
    super::cluster::wait_for(
        "every worker's produce acknowledged after the last heal",
        Duration::from_secs(30),
        || shared.last_ack.iter().all(|t| t.load(Ordering::Relaxed) > healed).then_some(()),
    );
    note(format!("every worker acknowledged again {:.1} s after the last heal", (shared.now() - healed) as f64 / 1e9));
    note(format!("final leaders {:?}", lab.leaders().unwrap_or_default()));
    shared.stop.store(true, Ordering::Relaxed);
    clients.join().expect("the client thread ends");

    let history = History::new(std::mem::take(&mut *shared.ops.lock().unwrap())).expect("a valid history");
    let path = std::env::temp_dir().join(format!("kaelix-netns-{}.jsonl", std::process::id()));
    std::fs::write(&path, history.to_json_lines()).unwrap();
    std::fs::write(path.with_extension("schedule.txt"), &schedule).unwrap();
    let report = check_history(&history, &CheckConfig::default());
    let ops = history.ops();
    let acked = ops.iter().filter(|o| o.produced_offset().is_some()).count();
    let produces = ops.iter().filter(|o| matches!(o.kind, OpKind::Produce { .. })).count();
    let value_reads = ops.iter().filter(|o| matches!(o.read_result(), Some(Some(_)))).count();
    let reads = ops.len() - produces;
    println!(
        "netns: {faults} faults over {:.0} s; {} operations: {produces} produces ({acked} acknowledged, {} unknown), \
         {reads} reads ({value_reads} returned a record, {} found nothing, {} unknown); failures {:?}; \
         whole test {:.0} s\n{report}history: {}\nschedule:\n{schedule}",
        faults_from.elapsed().as_secs_f64(),
        ops.len(),
        produces - acked,
        shared.empty_reads.load(Ordering::Relaxed),
        reads - value_reads - shared.empty_reads.load(Ordering::Relaxed) as usize,
        shared.errors.lock().unwrap(),
        started.elapsed().as_secs_f64(),
        path.display(),
    );
    let counts = lab.proxy.as_ref().unwrap().counts();
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (delayed, overtaking, duplicated) =
        (count(&counts.delayed), count(&counts.overtaking), count(&counts.duplicated));
    println!(
        "proxy (seed {proxy_seed}): {} connections, {} frames; {delayed} items delayed, {overtaking} frames overtook \
         an earlier one, {duplicated} duplicated",
        count(&counts.connections),
        count(&counts.frames),
    );
    let misplaced = shared.misplaced.lock().unwrap();
    assert!(misplaced.is_empty(), "fetches returned records at other offsets than asked: {misplaced:?}");
    assert!(
        report.passed(),
        "the history is not linearizable: {}\nhistory: {}\nschedule:\n{schedule}",
        report.first_violation().unwrap_or_else(|| report.to_string()),
        path.display()
    );
    let cli = super::kaelix(&["sim", "check-history", path.to_str().unwrap()]);
    assert_eq!(cli.status.code(), Some(0), "kaelix sim check-history disagrees:\n{}", super::text(&cli.stdout));
    assert!(acked >= MIN_ACKED_PRODUCES, "only {acked} produces acknowledged (at least {MIN_ACKED_PRODUCES} needed)");
    assert!(value_reads >= MIN_VALUE_READS, "only {value_reads} reads returned a record (at least {MIN_VALUE_READS})");
    assert!(
        delayed > 0 && overtaking > 0 && duplicated > 0,
        "the proxy's faults did not happen: {delayed} delayed, {overtaking} overtaking, {duplicated} duplicated"
    );
    lab.keep_dir = false;
}

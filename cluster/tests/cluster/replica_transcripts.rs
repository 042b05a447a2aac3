//! Transcript (data-driven) tests of the replicated-partition core
//! (`kaelix_cluster::replicated::replica::ReplicaCore`): each file in
//! `tests/replica_transcripts/` scripts the inputs of one node — the script
//! plays its peers, its clients and its log writers — and records, below
//! each step, every output it produced (file format, replay and
//! `KAELIX_BLESS=1`: see [`crate::transcript`]). A transcript must show
//! correct behaviour, not merely what the code did: read the diff of every
//! bless.
//!
//! Commands (`T` a time, `nX` a member, `pG` a group, `cN` a client
//! connection; messages in the text form of `kaelix_cluster::raft::text`;
//! `time`, `timeout`, `tick`, `run-until` and `deadline` are the runner's):
//!
//! * `config key=value…` before `start`: `partitions`, `snapshot_every`,
//!   `election_timeout`, `heartbeat_interval`, `pre_vote`, `check_quorum`,
//!   `replicas` (voters per group when started with `members=`),
//!   `replace_dead_after`;
//! * `start nX voters=nA,nB… [seed=N]`: the node under test, at the current
//!   time, every group on an empty disk (a new cluster), every member a
//!   voter; `start nX members=nA,nB…`: `replicas` voters per group by the
//!   placement, the other members learners;
//! * `member nX up|down`: SWIM's word about `nX` (alive, or dead; with
//!   `replace_dead_after` set, every member counts as down until told up);
//! * `configuration [pG]`: the member's configuration of each group;
//! * `recv nX pG <message>`: a message from `nX` for group `G`;
//! * `produce cN req=R [p=G] [session=K] seq=S data=D`: a client's produce
//!   (partition 0 and session `N` unless given); the record's timestamp is
//!   the current time;
//! * `read cN req=R [p=G] offset=O`: a client's read;
//! * `read-index cN req=R [p=G]`: a member's request for the committed
//!   prefix at a confirmed read index (answered `read-prefix req=R next=N`);
//! * `write-done [pG] [N]`: the oldest `N` (default: all) writes in flight
//!   of group `G` (default: of every group, group by group) complete, as
//!   one batch of its log writer;
//! * `elect pG nX…`: `G`'s member wins an election — its timer fires (the
//!   time moves to its deadline), each `nX` grants the pre-vote (if PreVote
//!   is on) and the vote, and every write completes;
//! * `transfer pG nX`: hand `G`'s leadership to `nX`;
//! * `restart`: crash (writes in flight are lost) and boot again from what
//!   the writes that completed left on each group's disk;
//! * `state [pG]`: the member's role, term, leader and commit index, the
//!   newest entry its machine applied, the machine's next offset, then the
//!   waiting requests;
//!   `records [pG]`: the partition's records.
//!
//! Outputs print as `send nX pG <message>`, `persist pG wN …`, `reply cN
//! <response>` (`produced req=R offset=O`, `not-leader req=R leader=nX|-`,
//! `read req=R data=D|none`, `error req=R <reason>`). Entries that hold a
//! produce print as `I/T produce session=K seq=S data=D`. Between them, as
//! it happens, what the core's observer is told: `role pG <role> term=T
//! leader=nX|-` at boot and when one of them changed after an input, `applied pG
//! <entry>`, `restored pG at=I/T`. Every message sent is also checked to survive
//! the wire codec.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kaelix_cluster::raft::text::{Data, parse_data, parse_message, parse_node, parse_nodes};
use kaelix_cluster::raft::{Body, Entry, EntryPayload, Message, Raft, Snapshot, Write, wire};
use kaelix_cluster::replicated::node::{ReplicaObserver, ReplicatedConfig};
use kaelix_cluster::replicated::protocol::{Request, Response};
use kaelix_cluster::replicated::replica::{ClientRef, GroupBoot, Output, ReplicaCore};
use kaelix_cluster::replicated::{Command, Commit, Produce};
use kaelix_core::rng::seeded;
use kaelix_core::time::Instant;
use kaelix_core::{NodeId, WallTime};

use crate::raft_harness::Disk;
use crate::transcript::{self, Harness, kv, parse_duration, transcripts};

/// Collects what the core tells its observer, for printing between
/// outputs: applied entries, restored snapshots, and each member's role,
/// term and leader whenever one of them changed.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Heard>>);

#[derive(Default)]
struct Heard {
    lines: Vec<String>,
    roles: BTreeMap<u32, String>,
}

impl Log {
    fn heard(&self) -> std::sync::MutexGuard<'_, Heard> {
        self.0.lock().expect("not poisoned")
    }

    fn push(&self, line: String) {
        self.heard().lines.push(line);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.heard().lines)
    }
}

impl ReplicaObserver for Log {
    fn stepped(&self, _node: NodeId, group: u32, raft: &Raft) {
        let leader = raft.leader().map_or("-".to_string(), |l| l.to_string());
        let role = format!("role p{group} {} term={} leader={leader}", raft.role(), raft.term());
        let mut heard = self.heard();
        if heard.roles.get(&group) != Some(&role) {
            heard.roles.insert(group, role.clone());
            heard.lines.push(role);
        }
    }

    fn applied(&self, _node: NodeId, group: u32, entry: &Entry) {
        self.push(format!("applied p{group} {}", ShowEntry(entry)));
    }

    fn restored(&self, _node: NodeId, group: u32, snapshot: &Snapshot) {
        self.push(format!("restored p{group} at={}/{}", snapshot.index, snapshot.term));
    }
}

/// An entry, with a produce or commit command shown as one.
struct ShowEntry<'a>(&'a Entry);

impl std::fmt::Display for ShowEntry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0;
        match &e.payload {
            EntryPayload::Normal(bytes) => match Command::decode(bytes.clone()) {
                Ok(Command::Commit(c)) => {
                    write!(
                        f,
                        "{}/{} commit session={} seq={} group={} next={}",
                        e.index, e.term, c.client, c.seq, c.group, c.next
                    )
                }
                Ok(Command::Produce(p)) => {
                    write!(
                        f,
                        "{}/{} produce session={} seq={} data={}",
                        e.index,
                        e.term,
                        p.client,
                        p.seq,
                        Data(&p.payload)
                    )
                }
                Err(_) => write!(f, "{e}"),
            },
            _ => write!(f, "{e}"),
        }
    }
}

fn show_entries(entries: &[Entry]) -> String {
    let shown: Vec<String> = entries.iter().map(|e| ShowEntry(e).to_string()).collect();
    format!("[{}]", shown.join("; "))
}

/// A message in `raft::text`'s form, entries shown by [`ShowEntry`].
fn show_message(message: &Message) -> String {
    match &message.body {
        Body::Append { prev_index, prev_term, entries, commit } if !entries.is_empty() => {
            let head = Message {
                term: message.term,
                body: Body::Append {
                    prev_index: *prev_index,
                    prev_term: *prev_term,
                    entries: Vec::new(),
                    commit: *commit,
                },
            };
            format!("{head} entries={}", show_entries(entries))
        }
        _ => message.to_string(),
    }
}

/// A write in `raft::text`'s form, entries shown by [`ShowEntry`] and a
/// snapshot by its position and size.
fn show_write(w: &Write) -> String {
    let mut s = format!("w{}", w.id.0);
    if let Some(hs) = &w.hard_state {
        write!(s, " {hs}").unwrap();
    }
    if !w.entries.is_empty() {
        write!(s, " entries={}", show_entries(&w.entries)).unwrap();
    }
    if let Some(snap) = &w.snapshot {
        write!(s, " snapshot=(at={}/{} {} {} bytes)", snap.index, snap.term, snap.config, snap.data.len()).unwrap();
    }
    s
}

fn show_response(response: &Response) -> String {
    match response {
        Response::Produced { req, offset } => format!("produced req={req} offset={offset}"),
        Response::Committed { req, next } => format!("committed req={req} next={next}"),
        Response::ReadPrefix { req, next } => format!("read-prefix req={req} next={next}"),
        Response::ReadResult { req, payload: Some(p) } => format!("read req={req} data={}", Data(p)),
        Response::ReadResult { req, payload: None } => format!("read req={req} none"),
        Response::NotLeader { req, leader: Some(l) } => format!("not-leader req={req} leader={l}"),
        Response::NotLeader { req, leader: None } => format!("not-leader req={req} leader=-"),
        Response::Error { req, reason } => format!("error req={req} {reason}"),
    }
}

fn number(words: &[&str], key: &str) -> Result<Option<u64>, String> {
    kv(words, key).map(|v| v.parse().map_err(|_| format!("bad number {key}={v}"))).transpose()
}

fn required(words: &[&str], key: &str) -> Result<u64, String> {
    number(words, key)?.ok_or_else(|| format!("missing {key}="))
}

fn boolean(value: &str) -> Result<bool, String> {
    value.parse().map_err(|_| format!("want true or false, got {value:?}"))
}

fn parse_group(s: &str) -> Result<u32, String> {
    s.strip_prefix('p').and_then(|g| g.parse().ok()).ok_or_else(|| format!("bad group {s:?} (want pG)"))
}

fn parse_client(s: &str) -> Result<ClientRef, String> {
    s.strip_prefix('c').and_then(|c| c.parse().ok()).map(ClientRef).ok_or_else(|| format!("bad client {s:?} (want cN)"))
}

/// The node under test, its disks and its writes in flight.
struct Node {
    core: ReplicaCore<Log>,
    log: Log,
    me: NodeId,
    seed: u64,
    boots: u64,
    /// What completed writes left, per group.
    disks: Vec<Disk>,
    /// Writes handed out and not completed yet, per group.
    pending: Vec<VecDeque<Write>>,
}

impl Node {
    fn boot(me: NodeId, config: &ReplicatedConfig, seed: u64, now: Instant, disks: Vec<Disk>) -> Self {
        let log = Log::default();
        let boots = disks
            .iter()
            .enumerate()
            .map(|(g, d)| GroupBoot { recovered: d.recovered(), rng: seeded(seed + g as u64), at: now })
            .collect();
        let core = ReplicaCore::new(me, config.clone(), log.clone(), now, boots);
        for g in 0..config.partitions {
            log.stepped(me, g, core.raft(g));
        }
        let pending = vec![VecDeque::new(); disks.len()];
        Node { core, log, me, seed, boots: 1, disks, pending }
    }

    /// Every output so far, with what the observer heard in between.
    fn drain(&mut self, out: &mut Vec<String>) {
        loop {
            let next = self.core.poll_output();
            out.extend(self.log.take());
            let Some(o) = next else { return };
            out.push(match o {
                Output::Send { to, group, message } => {
                    let datagram = wire::encode(u64::from(group), &message);
                    assert_eq!(wire::decode(datagram), Ok((u64::from(group), message.clone())), "survives the wire");
                    format!("send {to} p{group} {}", show_message(&message))
                }
                Output::Persist { group, write } => {
                    let line = format!("persist p{group} {}", show_write(&write));
                    self.pending[group as usize].push_back(write);
                    line
                }
                Output::Applied { group, offset, record } => {
                    format!("applied p{group} offset={offset} {:?}", String::from_utf8_lossy(&record.payload))
                }
                Output::GroupCommitted { group, consumer_group, next } => {
                    format!("group-committed p{group} group={consumer_group} next={next}")
                }
                Output::Restored { group } => format!("restored p{group}"),
                Output::Reply { client, response } => format!("reply {client} {}", show_response(&response)),
            });
        }
    }

    /// Completes the oldest `n` writes in flight of `group`, as one batch.
    fn write_done(&mut self, now: Instant, group: u32, n: usize, out: &mut Vec<String>) {
        let queue = &mut self.pending[group as usize];
        let batch: Vec<Write> = queue.drain(..n.min(queue.len())).collect();
        if batch.is_empty() {
            return;
        }
        for w in &batch {
            self.disks[group as usize].apply(w);
        }
        self.core.handle_write_complete(now, group, batch.iter().map(|w| w.id));
        self.drain(out);
    }

    /// Completes every write in flight, and those the completions cause.
    fn settle(&mut self, now: Instant, out: &mut Vec<String>) {
        while let Some(g) = self.pending.iter().position(|q| !q.is_empty()) {
            self.write_done(now, g as u32, usize::MAX, out);
        }
    }
}

struct Env {
    config: ReplicatedConfig,
    node: Option<Node>,
}

impl Env {
    fn node(&mut self) -> Result<&mut Node, String> {
        self.node.as_mut().ok_or_else(|| "no node: `start` first".to_string())
    }

    fn start(&mut self, now: Instant, words: &[&str]) -> Result<Vec<String>, String> {
        let me = parse_node(words.first().ok_or("start needs a node")?)?;
        // `voters=`: every member a voter; `members=`: `config replicas=`
        // of them per group (the placement), the others learners.
        let (members, all_vote) = match (kv(words, "members"), kv(words, "voters")) {
            (Some(m), None) => (m, false),
            (None, Some(v)) => (v, true),
            _ => return Err("start needs voters= or members=".into()),
        };
        self.config.members = parse_nodes(members)?.into_iter().collect();
        if all_vote {
            self.config.replicas = self.config.members.len();
        } else if !(1..=self.config.members.len()).contains(&self.config.replicas) {
            return Err(format!("{} replicas of {} members", self.config.replicas, self.config.members.len()));
        }
        if !self.config.members.contains(&me) {
            return Err(format!("{me} is not among the members"));
        }
        let seed = number(words, "seed")?.unwrap_or(1);
        let disks = vec![Disk::default(); self.config.partitions as usize];
        let mut node = Node::boot(me, &self.config, seed, now, disks);
        let mut out = Vec::new();
        node.drain(&mut out);
        self.node = Some(node);
        Ok(out)
    }

    fn groups(&mut self, words: &[&str]) -> Result<Vec<u32>, String> {
        let partitions = self.node()?.core.partitions();
        match words.first().filter(|w| w.starts_with('p')) {
            Some(g) => {
                let g = parse_group(g)?;
                if g >= partitions {
                    return Err(format!("no group p{g}"));
                }
                Ok(vec![g])
            }
            None => Ok((0..partitions).collect()),
        }
    }

    fn request(&mut self, now: Instant, request: &str, words: &[&str]) -> Result<Vec<String>, String> {
        let [client, rest @ ..] = words else { return Err(format!("{request} cN …")) };
        let client = parse_client(client)?;
        let req = required(rest, "req")?;
        let partition = number(rest, "p")?.unwrap_or(0) as u32;
        let request = match request {
            "produce" => Request::Produce {
                req,
                partition,
                client: number(rest, "session")?.unwrap_or(client.0),
                seq: required(rest, "seq")?,
                payload: parse_data(kv(rest, "data").ok_or("missing data=")?)?,
            },
            "commit" => Request::Commit {
                req,
                partition,
                client: number(rest, "session")?.unwrap_or(client.0),
                seq: required(rest, "seq")?,
                group: kv(rest, "group").ok_or("missing group=")?.to_owned(),
                next: required(rest, "next")?,
            },
            "read-index" => Request::ReadIndex { req, partition },
            _ => Request::Read { req, partition, offset: required(rest, "offset")? },
        };
        let node = self.node()?;
        node.core.handle_request(now, WallTime(now.as_nanos()), client, request);
        let mut out = Vec::new();
        node.drain(&mut out);
        Ok(out)
    }

    fn elect(&mut self, now: &mut Instant, words: &[&str]) -> Result<Vec<String>, String> {
        let [group, voters @ ..] = words else { return Err("elect pG nX…".into()) };
        let group = parse_group(group)?;
        let voters = voters.iter().map(|w| parse_node(w)).collect::<Result<Vec<_>, _>>()?;
        let pre_vote = self.config.raft.pre_vote;
        let node = self.node()?;
        let mut out = Vec::new();
        *now = (*now).max(node.core.raft(group).poll_timeout().ok_or("the group has nothing scheduled")?);
        out.push(format!("@{}", transcript::fmt_time(now.as_nanos())));
        node.core.handle_group_timeout(*now, group);
        node.drain(&mut out);
        let term = node.core.raft(group).term() + 1;
        if pre_vote {
            for &v in &voters {
                let granted = Message { term, body: Body::PreVoteResponse { granted: true } };
                node.core.handle_message(*now, v, group, granted);
                node.drain(&mut out);
            }
        }
        node.settle(*now, &mut out);
        for &v in &voters {
            node.core.handle_message(*now, v, group, Message { term, body: Body::VoteResponse { granted: true } });
            node.drain(&mut out);
        }
        node.settle(*now, &mut out);
        Ok(out)
    }

    fn state(&mut self, words: &[&str], out: &mut Vec<String>) -> Result<(), String> {
        for g in self.groups(words)? {
            let core = &self.node()?.core;
            let r = core.raft(g);
            let leader = r.leader().map_or("-".to_string(), |l| l.to_string());
            out.push(format!(
                "{} p{g} {} term={} leader={leader} commit={} applied={} next-offset={}",
                r.id(),
                r.role(),
                r.term(),
                r.commit(),
                core.applied(g),
                core.machine(g).next_offset()
            ));
            out.extend(core.waiting(g).to_string().lines().map(|l| format!("  {l}")));
        }
        Ok(())
    }

    fn records(&mut self, words: &[&str], out: &mut Vec<String>) -> Result<(), String> {
        for g in self.groups(words)? {
            let machine = self.node()?.core.machine(g);
            for offset in 0..machine.next_offset() {
                let r = machine.get(offset).expect("dense offsets");
                out.push(format!("p{g} {offset} data={}", Data(&r.payload)));
            }
        }
        Ok(())
    }
}

impl Harness for Env {
    const DIR: &'static str = "replica_transcripts";

    fn new() -> Self {
        Env { config: ReplicatedConfig::new(vec![NodeId(1)], 1), node: None }
    }

    fn started(&self) -> bool {
        self.node.is_some()
    }

    fn configure(&mut self, key: &str, value: &str) -> Result<(), String> {
        let num = || value.parse::<u64>().map_err(|_| format!("bad number {value:?} for {key}"));
        let c = &mut self.config;
        match key {
            "partitions" => c.partitions = u32::try_from(num()?).map_err(|_| "too many partitions")?,
            "snapshot_every" => c.snapshot_every = num()?,
            "election_timeout" => c.raft.election_timeout = parse_duration(value)?,
            "heartbeat_interval" => c.raft.heartbeat_interval = parse_duration(value)?,
            "pre_vote" => c.raft.pre_vote = boolean(value)?,
            "check_quorum" => c.raft.check_quorum = boolean(value)?,
            "replicas" => c.replicas = usize::try_from(num()?).map_err(|_| "too many replicas")?,
            "replace_dead_after" => c.replace_dead_after = Some(parse_duration(value)?),
            _ => return Err(format!("unknown config key {key:?}")),
        }
        Ok(())
    }

    fn deadline(&mut self) -> Result<Option<Instant>, String> {
        Ok(self.node()?.core.poll_timeout())
    }

    fn timeout(&mut self, now: Instant) -> Result<Vec<String>, String> {
        let node = self.node()?;
        node.core.handle_timeout(now);
        let mut out = Vec::new();
        node.drain(&mut out);
        Ok(out)
    }

    fn exec(&mut self, now: &mut Instant, verb: &str, rest: &str) -> Result<Vec<String>, String> {
        let words: Vec<&str> = rest.split_whitespace().collect();
        let mut out = Vec::new();
        match verb {
            "start" => return self.start(*now, &words),
            "recv" => {
                let mut parts = rest.trim().splitn(3, ' ');
                let (Some(from), Some(group), Some(message)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err("recv nX pG <message>".into());
                };
                let (from, group, message) = (parse_node(from)?, parse_group(group)?, parse_message(message)?);
                let node = self.node()?;
                node.core.handle_message(*now, from, group, message);
                node.drain(&mut out);
            }
            "produce" | "commit" | "read" | "read-index" => return self.request(*now, verb, &words),
            "write-done" => {
                let groups = self.groups(&words)?;
                let n = match words.iter().find(|w| !w.starts_with('p')) {
                    Some(n) => n.parse().map_err(|_| format!("bad count {n:?}"))?,
                    None => usize::MAX,
                };
                let node = self.node()?;
                for g in groups {
                    node.write_done(*now, g, n, &mut out);
                }
            }
            "elect" => return self.elect(now, &words),
            "transfer" => {
                let [group, to] = &words[..] else { return Err("transfer pG nX".into()) };
                let (group, to) = (parse_group(group)?, parse_node(to)?);
                let node = self.node()?;
                if let Err(e) = node.core.transfer_leadership(*now, group, to) {
                    out.push(format!("error: {e}"));
                }
                node.drain(&mut out);
            }
            "restart" => {
                let config = self.config.clone();
                let node = self.node()?;
                let boots = node.boots + 1;
                let disks = std::mem::take(&mut node.disks);
                let mut fresh = Node::boot(node.me, &config, node.seed.wrapping_add(boots * 1000), *now, disks);
                fresh.boots = boots;
                fresh.drain(&mut out);
                self.node = Some(fresh);
            }
            "member" => {
                let [who, state] = &words[..] else { return Err("member nX up|down".into()) };
                let up = match *state {
                    "up" => true,
                    "down" => false,
                    other => return Err(format!("member nX up|down, not {other:?}")),
                };
                let who = parse_node(who)?;
                let node = self.node()?;
                node.core.handle_member(*now, who, up);
                node.drain(&mut out);
            }
            "configuration" => {
                for g in self.groups(&words)? {
                    let c = self.node()?.core.raft(g).configuration();
                    let names = |set: &std::collections::BTreeSet<NodeId>| {
                        set.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                    };
                    let mut line = format!("p{g} voters={}", names(&c.voters));
                    if c.is_joint() {
                        line += &format!(" outgoing={}", names(&c.outgoing));
                    }
                    if !c.learners.is_empty() {
                        line += &format!(" learners={}", names(&c.learners));
                    }
                    out.push(line);
                }
            }
            "state" => self.state(&words, &mut out)?,
            "records" => self.records(&words, &mut out)?,
            _ => return Err(format!("unknown command {verb:?}")),
        }
        Ok(out)
    }
}

/// The payload of a record as a transcript writes it.
#[test]
fn produce_entries_print_readably() {
    let command = Produce { client: 7, seq: 2, timestamp: WallTime(5), payload: Bytes::from_static(b"a") };
    let entry = Entry { index: 3, term: 1, payload: EntryPayload::Normal(Command::Produce(command).encode()) };
    assert_eq!(ShowEntry(&entry).to_string(), "3/1 produce session=7 seq=2 data=a");
    let command = Commit { client: 7, seq: 3, group: "billing".into(), next: 4 };
    let entry = Entry { index: 4, term: 1, payload: EntryPayload::Normal(Command::Commit(command).encode()) };
    assert_eq!(ShowEntry(&entry).to_string(), "4/1 commit session=7 seq=3 group=billing next=4");
}

transcripts! {
    replica, super::Env;
    produce_on_leader => "produce-on-leader.txt",
    produce_on_follower => "produce-on-follower.txt",
    retried_produce => "retried-produce.txt",
    group_commit => "group-commit.txt",
    read_index => "read-index.txt",
    read_prefix => "read-prefix.txt",
    read_after_apply => "read-after-apply.txt",
    leadership_lost => "leadership-lost.txt",
    step_down_no_hint => "step-down-no-hint.txt",
    two_groups => "two-groups.txt",
    replace_dead_voter => "replace-dead-voter.txt",
}

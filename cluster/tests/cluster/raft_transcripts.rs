//! Transcript (data-driven) tests of the Raft core: each file in
//! `tests/raft_transcripts/` scripts the inputs of one member — the script
//! plays its peers — and records, below each step, every output it produced
//! (file format, replay and `KAELIX_BLESS=1`: see [`crate::transcript`]).
//! A transcript must show correct Raft, not merely what the code did: read
//! the diff of every bless.
//!
//! Commands (`T` is a time such as `450ms`, `nX` a member, messages and
//! entries in the text form of `kaelix_cluster::raft::text`; `time`,
//! `timeout`, `tick`, `run-until` and `deadline` are the runner's):
//!
//! * `config key=value…` before `start`: `election_timeout`,
//!   `heartbeat_interval`, `pre_vote`, `check_quorum`, `max_inflight`,
//!   `max_append_bytes`, `max_snapshot_chunk`;
//! * `start nX voters=nA,nB… [learners=…] [seed=N] [wiped] [term=T]
//!   [vote=nY] [commit=C] [log=[entries]]`: the member under test, at the
//!   current time, on a disk holding that state (empty if none is given;
//!   `wiped`: empty and not bootstrapping, so it recovers);
//! * `recv nX <message>`: a message from `nX`; `recv-raw nX <hex>`: a
//!   datagram in the wire format (the runner prints why it does not
//!   decode, if it does not, and drops it as a driver would);
//! * `write-done [N]`: the oldest `N` (default: all) writes in flight
//!   complete, in order;
//! * `elect nX…`: win an election — the election timer fires (the time
//!   moves to the deadline), each `nX` grants the pre-vote (if PreVote is
//!   on) and the vote, and every write completes (as `election.txt` shows
//!   step by step);
//! * `propose D`, `propose-config voters=… [learners=…]`, `read-index CTX`,
//!   `transfer nX`, `compact I D`: client requests (a refusal prints
//!   `error: …`);
//! * `restart [wiped]`: crash (writes in flight are lost) and boot again;
//! * `state`, `log`, `progress`, `disk`: print state.
//!
//! Outputs print in `text`'s form: `send nX <message>`, `persist wN …`,
//! `apply I/T …`, `apply-snapshot …`, `read-ready …`, `read-failed …`,
//! `role <role> term=T leader=nX`. Every message sent is also checked to
//! survive the wire codec.

use bytes::Bytes;
use kaelix_cluster::raft::text::{Entries, parse_data, parse_entries, parse_message, parse_node, parse_nodes};
use kaelix_cluster::raft::{Body, Configuration, HardState, Message, Output, ProgressState, RaftConfig, wire};
use kaelix_core::NodeId;
use kaelix_core::time::Instant;

use crate::raft_harness::{Disk, Member};
use crate::transcript::{self, Harness, hex, kv, parse_duration, transcripts};

struct Env {
    config: RaftConfig,
    member: Option<Member>,
}

fn print(outputs: Vec<Output>, out: &mut Vec<String>) {
    out.extend(outputs.iter().map(Output::to_string));
}

fn number(words: &[&str], key: &str) -> Result<Option<u64>, String> {
    kv(words, key).map(|v| v.parse().map_err(|_| format!("bad number {key}={v}"))).transpose()
}

fn boolean(value: &str) -> Result<bool, String> {
    value.parse().map_err(|_| format!("want true or false, got {value:?}"))
}

impl Harness for Env {
    const DIR: &'static str = "raft_transcripts";

    fn new() -> Self {
        Env { config: RaftConfig::new(NodeId(0), []), member: None }
    }

    fn started(&self) -> bool {
        self.member.is_some()
    }

    fn configure(&mut self, key: &str, value: &str) -> Result<(), String> {
        let c = &mut self.config;
        let num = || value.parse::<usize>().map_err(|_| format!("bad number {value:?} for {key}"));
        match key {
            "election_timeout" => c.election_timeout = parse_duration(value)?,
            "heartbeat_interval" => c.heartbeat_interval = parse_duration(value)?,
            "pre_vote" => c.pre_vote = boolean(value)?,
            "check_quorum" => c.check_quorum = boolean(value)?,
            "max_inflight" => c.max_inflight = num()?,
            "max_append_bytes" => c.max_append_bytes = num()?,
            "max_snapshot_chunk" => c.max_snapshot_chunk = num()?,
            _ => return Err(format!("unknown config key {key:?}")),
        }
        Ok(())
    }

    fn deadline(&mut self) -> Result<Option<Instant>, String> {
        Ok(self.started_member()?.raft.poll_timeout())
    }

    fn timeout(&mut self, now: Instant) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        print(self.member(now)?.timeout(), &mut out);
        Ok(out)
    }

    fn exec(&mut self, now: &mut Instant, verb: &str, rest: &str) -> Result<Vec<String>, String> {
        let words: Vec<&str> = rest.split_whitespace().collect();
        let mut out = Vec::new();
        match verb {
            "start" => return self.start(*now, rest),
            "recv" => {
                let (from, message) = rest.trim().split_once(' ').ok_or("recv nX <message>")?;
                let message = parse_message(message)?;
                let from = parse_node(from)?;
                print(self.member(*now)?.recv(from, message), &mut out);
            }
            "recv-raw" => {
                let [from, bytes] = &words[..] else { return Err("recv-raw nX <hex>".into()) };
                let from = parse_node(from)?;
                match wire::decode(hex(bytes)?) {
                    Ok((_, message)) => print(self.member(*now)?.recv(from, message), &mut out),
                    Err(e) => out.push(format!("(undecodable: {e})")),
                }
            }
            "elect" => {
                let voters = words.iter().map(|w| parse_node(w)).collect::<Result<Vec<_>, _>>()?;
                transcript::tick(self, now, &mut out)?;
                let m = self.member(*now)?;
                let term = m.raft.term() + 1;
                if m.config.pre_vote {
                    for &v in &voters {
                        print(m.recv(v, Message { term, body: Body::PreVoteResponse { granted: true } }), &mut out);
                    }
                }
                print(m.settle(), &mut out);
                for &v in &voters {
                    print(m.recv(v, Message { term, body: Body::VoteResponse { granted: true } }), &mut out);
                }
                print(m.settle(), &mut out);
            }
            "write-done" => {
                let n = match words.first() {
                    Some(n) => n.parse().map_err(|_| format!("bad count {n:?}"))?,
                    None => usize::MAX,
                };
                print(self.member(*now)?.write_done(n), &mut out);
            }
            "propose" => {
                let data = parse_data(rest.trim())?;
                let m = self.member(*now)?;
                match m.raft.propose(m.now, data) {
                    Ok((index, term)) => out.push(format!("proposed {index}/{term}")),
                    Err(e) => out.push(format!("error: {e}")),
                }
                print(m.drain(), &mut out);
            }
            "propose-config" => {
                let voters = parse_nodes(kv(&words, "voters").ok_or("propose-config needs voters=")?)?;
                let learners = kv(&words, "learners").map_or(Ok(Default::default()), parse_nodes)?;
                let m = self.member(*now)?;
                match m.raft.propose_config(m.now, voters, learners) {
                    Ok((index, term)) => out.push(format!("proposed {index}/{term}")),
                    Err(e) => out.push(format!("error: {e}")),
                }
                print(m.drain(), &mut out);
            }
            "read-index" => {
                let ctx = rest.trim().parse().map_err(|_| format!("bad context {rest:?}"))?;
                let m = self.member(*now)?;
                if let Err(e) = m.raft.read_index(m.now, ctx) {
                    out.push(format!("error: {e}"));
                }
                print(m.drain(), &mut out);
            }
            "transfer" => {
                let to = parse_node(rest.trim())?;
                let m = self.member(*now)?;
                if let Err(e) = m.raft.transfer_leadership(m.now, to) {
                    out.push(format!("error: {e}"));
                }
                print(m.drain(), &mut out);
            }
            "compact" => {
                let [index, data] = &words[..] else { return Err("compact I D".into()) };
                let index = index.parse().map_err(|_| format!("bad index {index:?}"))?;
                let data: Bytes = parse_data(data)?;
                let m = self.member(*now)?;
                m.raft.compact(m.now, index, data);
                print(m.drain(), &mut out);
            }
            "restart" => {
                let wiped = match rest.trim() {
                    "" => false,
                    "wiped" => true,
                    other => return Err(format!("restart [wiped], got {other:?}")),
                };
                print(self.member(*now)?.restart(wiped), &mut out);
            }
            "state" => self.state(&mut out)?,
            "log" => {
                let r = &self.member(*now)?.raft;
                let (si, st) = r.log().snapshot_point();
                out.push(format!("snapshot at {si}/{st}"));
                out.extend(r.log().iter().map(|e| e.to_string()));
            }
            "progress" => self.progress(&mut out)?,
            "disk" => {
                let d = &self.member(*now)?.disk.state;
                out.push(format!("hard-state {}", d.hard_state));
                if let Some(s) = &d.snapshot {
                    out.push(format!("snapshot {s}"));
                }
                out.push(format!("entries {}", Entries(&d.entries)));
            }
            _ => return Err(format!("unknown command {verb:?}")),
        }
        Ok(out)
    }
}

impl Env {
    fn member(&mut self, now: Instant) -> Result<&mut Member, String> {
        let m = self.member.as_mut().ok_or_else(|| "no member: `start` first".to_string())?;
        m.now = now;
        Ok(m)
    }

    fn start(&mut self, now: Instant, rest: &str) -> Result<Vec<String>, String> {
        let (head, log) = match rest.find(" log=") {
            Some(at) => (&rest[..at], Some(parse_entries(rest[at + " log=".len()..].trim())?)),
            None => (rest, None),
        };
        let words: Vec<&str> = head.split_whitespace().collect();
        let me = parse_node(words.first().ok_or("start needs a member")?)?;
        let voters = parse_nodes(kv(&words, "voters").ok_or("start needs voters=")?)?;
        let learners = kv(&words, "learners").map_or(Ok(Default::default()), parse_nodes)?;
        let mut config = self.config.clone();
        config.id = me;
        config.initial = Configuration { voters, outgoing: Default::default(), learners };
        config.bootstrap = !words.contains(&"wiped");
        let hard_state = HardState {
            term: number(&words, "term")?.unwrap_or(0),
            vote: kv(&words, "vote").map(parse_node).transpose()?,
            commit: number(&words, "commit")?.unwrap_or(0),
            recovering: false,
        };
        let disk = if hard_state == HardState::default() && log.is_none() {
            Disk::default()
        } else {
            Disk::holding(hard_state, log.unwrap_or_default())
        };
        let seed = number(&words, "seed")?.unwrap_or(1);
        let (member, outputs) = Member::boot(config, seed, now, disk);
        self.member = Some(member);
        let mut out = Vec::new();
        print(outputs, &mut out);
        Ok(out)
    }

    fn state(&self, out: &mut Vec<String>) -> Result<(), String> {
        let r = &self.started_member()?.raft;
        let leader = r.leader().map_or("-".to_string(), |l| l.to_string());
        let vote = r.vote().map_or("-".to_string(), |v| v.to_string());
        out.push(format!(
            "{} {} term={} vote={vote} leader={leader} commit={} applied={} last={}/{} persisted={}{}",
            r.id(),
            r.role(),
            r.term(),
            r.commit(),
            r.applied(),
            r.log().last_index(),
            r.log().last_term(),
            r.persisted_index(),
            if r.is_recovering() { " recovering" } else { "" },
        ));
        out.push(format!("config {}", r.configuration()));
        Ok(())
    }

    fn started_member(&self) -> Result<&Member, String> {
        self.member.as_ref().ok_or_else(|| "no member: `start` first".to_string())
    }

    fn progress(&self, out: &mut Vec<String>) -> Result<(), String> {
        let r = &self.started_member()?.raft;
        for n in r.configuration().members() {
            let Some(p) = r.progress(n) else { continue };
            let state = match p.state {
                ProgressState::Probe => "probe".to_string(),
                ProgressState::Replicate => "replicate".to_string(),
                ProgressState::Snapshot { index, offset } => format!("snapshot index={index} offset={offset}"),
            };
            out.push(format!(
                "{n} match={} next={} {state} inflight={}{}",
                p.match_index,
                p.next_index,
                p.inflight(),
                if p.paused { " paused" } else { "" }
            ));
        }
        Ok(())
    }
}

transcripts! {
    raft, super::Env;
    election => "election.txt",
    vote_refused => "vote-refused.txt",
    vote_held_until_durable => "vote-held-until-durable.txt",
    append_accept => "append-accept.txt",
    append_conflict => "append-conflict.txt",
    append_reject_hint => "append-reject-hint.txt",
    append_backoff_leader => "append-backoff-leader.txt",
    figure_8 => "figure-8.txt",
    heartbeats_leader => "heartbeats-leader.txt",
    heartbeats_follower => "heartbeats-follower.txt",
    check_quorum => "check-quorum.txt",
    stale_leader => "stale-leader.txt",
    snapshot_send => "snapshot-send.txt",
    snapshot_install => "snapshot-install.txt",
    leader_transfer => "leader-transfer.txt",
    read_index => "read-index.txt",
    config_change => "config-change.txt",
    malformed => "malformed.txt",
    wiped_disk => "wiped-disk.txt",
}

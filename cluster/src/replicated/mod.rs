//! Replicated partitions: each partition of a topic is a Raft group across
//! the same 3 or 5 nodes, and a produce is acknowledged only once its
//! entry is committed.
//!
//! # Model
//!
//! * **One group per partition.** Group `g` replicates partition `g`; every
//!   node runs a member of every group ([`replica::ReplicaCore`], the
//!   sans-IO core, driven by [`node::run_node`]). Groups elect,
//!   replicate and snapshot independently; their datagrams carry the group
//!   id (`raft::wire`).
//! * **The state machine** ([`PartitionMachine`]) is a partition log
//!   (`kaelix_broker::partition::PartitionLog`: dense offsets from 0), the
//!   consumer groups' committed offsets on the partition, and a session
//!   table. A committed [`Command::Produce`] appends the payload and its
//!   offset is the answer; a committed [`Command::Commit`] raises a consumer
//!   group's committed offset (never lowers it: the newest commit in log
//!   order wins unless it is behind). Clients retry an operation with the
//!   same `(client, seq)` whenever its outcome is unknown (timeout, broken
//!   connection, leader change); the session table answers a retry of an
//!   applied command with what it already got, so every produce lands
//!   **exactly once** (Raft dissertation §6.3).
//! * **Produce** goes to the leader, which proposes it and answers when the
//!   entry applies (so after commit); a follower answers `NotLeader` with
//!   its leader hint.
//! * **Read** of an offset goes to the leader, which confirms its
//!   leadership with a ReadIndex round and waits until it has applied the
//!   read index: a read sees every produce acknowledged before it started,
//!   and only committed offsets exist to be read.
//! * **Leader changes** are invisible to clients except as latency: an
//!   outstanding request gets `NotLeader` and the client retries at the new
//!   leader; the session table makes the retry safe.
//! * **Restart** recovers each group from its write-ahead log and snapshot
//!   (`raft::disk`); committed entries re-apply from the snapshot on.
//!
//! [`protocol`] is the client wire format; [`client::PartitionClient`] the
//! retrying client.

pub mod broker_node;
pub mod client;
pub mod node;
pub mod protocol;
pub mod replica;

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_broker::partition::{LogRecord, PartitionLog, RetentionPolicy};
use kaelix_core::WallTime;
use kaelix_core::codec::{self, CodecError, Reader};

/// One record of a replicated partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The producer's bytes.
    pub payload: Bytes,
    /// The leader's wall clock when it proposed the record.
    pub timestamp: WallTime,
}

impl LogRecord for Record {
    fn size_bytes(&self) -> usize {
        self.payload.len()
    }
    fn timestamp(&self) -> WallTime {
        self.timestamp
    }
}

/// A command in a Raft entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Append a record.
    Produce(Produce),
    /// Raise a consumer group's committed offset.
    Commit(Commit),
}

/// Append `payload` to the partition, once per `(client, seq)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Produce {
    /// The producing client's session id.
    pub client: u64,
    /// The client's sequence number for this operation (retries repeat it).
    pub seq: u64,
    /// When the leader proposed it.
    pub timestamp: WallTime,
    /// The record's bytes.
    pub payload: Bytes,
}

/// Consumer group `group` has processed the partition below `next`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The committing client's session id.
    pub client: u64,
    /// The client's sequence number for this operation.
    pub seq: u64,
    /// The consumer group's name (1 to [`MAX_GROUP_NAME`] bytes of UTF-8).
    pub group: String,
    /// The next offset the group reads.
    pub next: u64,
}

/// The longest consumer-group name a commit carries.
pub const MAX_GROUP_NAME: usize = 255;

/// Why bytes are not a command or a snapshot: a field cut short, an
/// unknown command tag, or bytes left over (each names the field). Both
/// formats are read through [`kaelix_core::codec::Reader`] and need no
/// error of their own.
pub type DecodeError = CodecError;

impl Command {
    /// Encodes the command:
    /// `1 client:u64 seq:u64 timestamp:u64 payload[rest]` (produce) or
    /// `2 client:u64 seq:u64 next:u64 group[rest]` (commit).
    pub fn encode(&self) -> Bytes {
        match self {
            Command::Produce(p) => {
                let mut b = BytesMut::with_capacity(25 + p.payload.len());
                b.put_u8(1);
                b.put_u64_le(p.client);
                b.put_u64_le(p.seq);
                b.put_u64_le(p.timestamp.as_nanos());
                b.put_slice(&p.payload);
                b.freeze()
            }
            Command::Commit(c) => {
                let mut b = BytesMut::with_capacity(25 + c.group.len());
                b.put_u8(2);
                b.put_u64_le(c.client);
                b.put_u64_le(c.seq);
                b.put_u64_le(c.next);
                b.put_slice(c.group.as_bytes());
                b.freeze()
            }
        }
    }

    /// Decodes a command (a produce's payload is sliced, not copied).
    pub fn decode(b: Bytes) -> Result<Command, DecodeError> {
        let mut r = Reader::new(&b);
        match r.u8("command tag")? {
            1 => {
                let client = r.u64("produce client")?;
                let seq = r.u64("produce seq")?;
                let timestamp = WallTime(r.u64("produce timestamp")?);
                Ok(Command::Produce(Produce { client, seq, timestamp, payload: r.rest() }))
            }
            2 => {
                let client = r.u64("commit client")?;
                let seq = r.u64("commit seq")?;
                let next = r.u64("commit next")?;
                let group = r.str(r.remaining(), "commit group")?.to_owned();
                Ok(Command::Commit(Commit { client, seq, group, next }))
            }
            tag => Err(CodecError::Invalid { field: "command tag", why: format!("unknown command {tag}") }),
        }
    }

    fn session(&self) -> (u64, u64) {
        match self {
            Command::Produce(p) => (p.client, p.seq),
            Command::Commit(c) => (c.client, c.seq),
        }
    }
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A produce's record is at `offset`.
    Appended {
        /// The record's offset.
        offset: u64,
    },
    /// A commit left `group`'s committed offset at `next` (the commit's, or
    /// a newer one the group already had).
    Committed {
        /// The consumer group.
        group: String,
        /// Its committed offset now.
        next: u64,
    },
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The command's session.
    pub client: u64,
    /// Its sequence number.
    pub seq: u64,
    /// What it did (for a retry: what it did the first time).
    pub effect: Effect,
    /// A retry of a command applied before (nothing changed).
    pub duplicate: bool,
}

/// The state machine of one replicated partition (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct PartitionMachine {
    log: PartitionLog<Record>,
    /// Consumer group → committed offset (next to read).
    commits: BTreeMap<String, u64>,
    /// client → (newest seq applied, its answer: the produce's offset or
    /// the commit's resulting offset).
    sessions: BTreeMap<u64, (u64, u64)>,
}

impl PartitionMachine {
    /// An empty partition, keeping everything.
    pub fn new() -> Self {
        PartitionMachine {
            log: PartitionLog::new(RetentionPolicy::default()),
            commits: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }

    /// Applies a committed command. A command older than the session's
    /// newest is answered with nothing (its client has moved on).
    pub fn apply(&mut self, command: Command) -> Option<Applied> {
        let (client, seq) = command.session();
        let effect_of = |command: &Command, answer: u64| match command {
            Command::Produce(_) => Effect::Appended { offset: answer },
            Command::Commit(c) => Effect::Committed { group: c.group.clone(), next: answer },
        };
        match self.sessions.get(&client) {
            Some(&(last, answer)) if last == seq => {
                return Some(Applied { client, seq, effect: effect_of(&command, answer), duplicate: true });
            }
            Some(&(last, _)) if last > seq => return None,
            _ => {}
        }
        let answer = match &command {
            Command::Produce(p) => self.log.append(Record { payload: p.payload.clone(), timestamp: p.timestamp }),
            Command::Commit(c) => {
                let committed = self.commits.entry(c.group.clone()).or_insert(c.next);
                *committed = (*committed).max(c.next);
                *committed
            }
        };
        self.sessions.insert(client, (seq, answer));
        Some(Applied { client, seq, effect: effect_of(&command, answer), duplicate: false })
    }

    /// The record at `offset`, if it exists.
    pub fn get(&self, offset: u64) -> Option<&Record> {
        self.log.get(offset)
    }

    /// The next offset a produce would get.
    pub fn next_offset(&self) -> u64 {
        self.log.next_offset()
    }

    /// The consumer groups' committed offsets, by group name.
    pub fn commits(&self) -> &BTreeMap<String, u64> {
        &self.commits
    }

    /// The state as bytes (a Raft snapshot):
    /// `sessions:u32 (client seq answer){n} records:u64 (timestamp len:u32 payload){n}
    /// commits:u32 (next:u64 len:u32 group){n}`.
    pub fn snapshot(&self) -> Bytes {
        // Sized up front: it holds every record, and growing it would copy
        // them again and again.
        let records: usize =
            (0..self.log.next_offset()).filter_map(|o| self.log.get(o)).map(|r| 12 + r.payload.len()).sum();
        let commits: usize = self.commits.keys().map(|g| 12 + g.len()).sum();
        let mut b = BytesMut::with_capacity(4 + 24 * self.sessions.len() + 8 + records + 4 + commits);
        b.put_u32_le(u32::try_from(self.sessions.len()).expect("sessions fit"));
        for (&client, &(seq, answer)) in &self.sessions {
            b.put_u64_le(client);
            b.put_u64_le(seq);
            b.put_u64_le(answer);
        }
        b.put_u64_le(self.log.next_offset());
        for offset in 0..self.log.next_offset() {
            let r = self.log.get(offset).expect("nothing is dropped from a replicated partition");
            b.put_u64_le(r.timestamp.as_nanos());
            codec::put_bytes_u32(&mut b, &r.payload);
        }
        b.put_u32_le(u32::try_from(self.commits.len()).expect("groups fit"));
        for (group, &next) in &self.commits {
            b.put_u64_le(next);
            codec::put_bytes_u32(&mut b, group.as_bytes());
        }
        b.freeze()
    }

    /// Rebuilds the state from [`PartitionMachine::snapshot`] bytes.
    pub fn restore(b: Bytes) -> Result<PartitionMachine, DecodeError> {
        let mut r = Reader::new(&b);
        let n = r.u32("session count")?;
        let mut m = PartitionMachine::new();
        for _ in 0..n {
            let client = r.u64("session client")?;
            let seq = r.u64("session seq")?;
            let answer = r.u64("session answer")?;
            m.sessions.insert(client, (seq, answer));
        }
        let records = r.u64("record count")?;
        for _ in 0..records {
            let timestamp = WallTime(r.u64("record timestamp")?);
            let len = r.u32("record length")? as usize;
            let payload = r.bytes(len, "record payload")?;
            m.log.append(Record { payload, timestamp });
        }
        let groups = r.u32("commit count")?;
        for _ in 0..groups {
            let next = r.u64("commit next")?;
            let len = r.u32("commit group length")? as usize;
            let group = r.str(len, "commit group")?.to_owned();
            m.commits.insert(group, next);
        }
        r.finish("partition snapshot")?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(client: u64, seq: u64, payload: &'static str) -> Command {
        Command::Produce(Produce {
            client,
            seq,
            timestamp: WallTime(seq),
            payload: Bytes::from_static(payload.as_bytes()),
        })
    }

    fn commit(client: u64, seq: u64, group: &str, next: u64) -> Command {
        Command::Commit(Commit { client, seq, group: group.to_owned(), next })
    }

    fn offset(applied: Option<Applied>) -> Option<u64> {
        match applied?.effect {
            Effect::Appended { offset } => Some(offset),
            Effect::Committed { .. } => panic!("a produce appends"),
        }
    }

    #[test]
    fn retries_land_once() {
        let mut m = PartitionMachine::new();
        assert_eq!(offset(m.apply(produce(1, 1, "a"))), Some(0));
        assert_eq!(offset(m.apply(produce(2, 1, "b"))), Some(1));
        let again = m.apply(produce(1, 1, "a")).expect("answered");
        assert!(again.duplicate);
        assert_eq!(again.effect, Effect::Appended { offset: 0 });
        assert_eq!(m.next_offset(), 2);
        assert_eq!(m.apply(produce(1, 0, "old")), None, "older than the session");
    }

    #[test]
    fn commits_only_move_forward_and_retries_answer_the_first_outcome() {
        let mut m = PartitionMachine::new();
        let first = m.apply(commit(1, 1, "billing", 10)).expect("applied");
        assert_eq!(first.effect, Effect::Committed { group: "billing".into(), next: 10 });
        let behind = m.apply(commit(2, 1, "billing", 4)).expect("applied");
        assert_eq!(behind.effect, Effect::Committed { group: "billing".into(), next: 10 }, "never lowered");
        m.apply(commit(1, 2, "audit", 3));
        assert_eq!(m.commits().get("billing"), Some(&10));
        assert_eq!(m.commits().get("audit"), Some(&3));
        let retry = m.apply(commit(1, 2, "audit", 3)).expect("answered");
        assert!(retry.duplicate);
        assert_eq!(retry.effect, Effect::Committed { group: "audit".into(), next: 3 });
        assert_eq!(m.next_offset(), 0, "commits append no record");
    }

    #[test]
    fn snapshots_round_trip() {
        let mut m = PartitionMachine::new();
        for i in 0..5 {
            m.apply(produce(i % 2, i, "x"));
        }
        m.apply(commit(3, 1, "billing", 2));
        m.apply(commit(3, 2, "grüße", 4));
        let back = PartitionMachine::restore(m.snapshot()).expect("valid");
        assert_eq!(back.snapshot(), m.snapshot());
        assert_eq!(back.commits(), m.commits());
        assert_eq!(back.get(3).map(|r| r.payload.clone()), Some(Bytes::from_static(b"x")));
        let s = m.snapshot();
        for cut in 0..s.len() {
            assert!(PartitionMachine::restore(s.slice(..cut)).is_err());
        }
    }

    #[test]
    fn commands_round_trip() {
        for c in [produce(7, 9, "payload"), produce(1, 2, ""), commit(7, 10, "billing", 42)] {
            assert_eq!(Command::decode(c.encode()), Ok(c));
        }
        assert!(Command::decode(Bytes::from_static(b"\x01short")).is_err());
        let e = Command::decode(Bytes::from_static(b"\x09")).unwrap_err();
        assert_eq!(e, CodecError::Invalid { field: "command tag", why: "unknown command 9".into() });
    }
}

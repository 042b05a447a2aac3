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
//!   (`kaelix_broker::partition::PartitionLog`: dense offsets from 0) plus a
//!   session table. A committed `Produce { client, seq, payload }` appends
//!   the payload and its offset is the answer. Clients retry an operation
//!   with the same `(client, seq)` whenever its outcome is unknown (timeout,
//!   broken connection, leader change); the session table answers a retry
//!   of an applied command with the offset it already got, so every produce
//!   lands **exactly once** (Raft dissertation §6.3).
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

/// Why bytes are not a command or a snapshot: a field cut short or bytes
/// left over (each names the field). Both formats are read through
/// [`kaelix_core::codec::Reader`] and need no error of their own.
pub type DecodeError = CodecError;

impl Produce {
    /// Encodes the command: `client:u64 seq:u64 timestamp:u64 payload`.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(24 + self.payload.len());
        b.put_u64_le(self.client);
        b.put_u64_le(self.seq);
        b.put_u64_le(self.timestamp.as_nanos());
        b.put_slice(&self.payload);
        b.freeze()
    }

    /// Decodes a command (the payload is sliced, not copied).
    pub fn decode(b: Bytes) -> Result<Produce, DecodeError> {
        let mut r = Reader::new(&b);
        let client = r.u64("produce client")?;
        let seq = r.u64("produce seq")?;
        let timestamp = WallTime(r.u64("produce timestamp")?);
        Ok(Produce { client, seq, timestamp, payload: r.rest() })
    }
}

/// The result of applying one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The command's session.
    pub client: u64,
    /// Its sequence number.
    pub seq: u64,
    /// The offset its record holds.
    pub offset: u64,
    /// A retry of a command applied before (nothing was appended).
    pub duplicate: bool,
}

/// The state machine of one replicated partition (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct PartitionMachine {
    log: PartitionLog<Record>,
    /// client → (newest seq applied, its offset).
    sessions: BTreeMap<u64, (u64, u64)>,
}

impl PartitionMachine {
    /// An empty partition, keeping everything.
    pub fn new() -> Self {
        PartitionMachine { log: PartitionLog::new(RetentionPolicy::default()), sessions: BTreeMap::new() }
    }

    /// Applies a committed command. A command older than the session's
    /// newest is answered with nothing (its client has moved on).
    pub fn apply(&mut self, command: Produce) -> Option<Applied> {
        let (client, seq) = (command.client, command.seq);
        match self.sessions.get(&client) {
            Some(&(last, offset)) if last == seq => return Some(Applied { client, seq, offset, duplicate: true }),
            Some(&(last, _)) if last > seq => return None,
            _ => {}
        }
        let offset = self.log.append(Record { payload: command.payload, timestamp: command.timestamp });
        self.sessions.insert(client, (seq, offset));
        Some(Applied { client, seq, offset, duplicate: false })
    }

    /// The record at `offset`, if it exists.
    pub fn get(&self, offset: u64) -> Option<&Record> {
        self.log.get(offset)
    }

    /// The next offset a produce would get.
    pub fn next_offset(&self) -> u64 {
        self.log.next_offset()
    }

    /// The state as bytes (a Raft snapshot):
    /// `sessions:u32 (client seq offset){n} records:u64 (timestamp len:u32 payload){n}`.
    pub fn snapshot(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u32_le(u32::try_from(self.sessions.len()).expect("sessions fit"));
        for (&client, &(seq, offset)) in &self.sessions {
            b.put_u64_le(client);
            b.put_u64_le(seq);
            b.put_u64_le(offset);
        }
        b.put_u64_le(self.log.next_offset());
        for offset in 0..self.log.next_offset() {
            let r = self.log.get(offset).expect("nothing is dropped from a replicated partition");
            b.put_u64_le(r.timestamp.as_nanos());
            codec::put_bytes_u32(&mut b, &r.payload);
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
            let offset = r.u64("session offset")?;
            m.sessions.insert(client, (seq, offset));
        }
        let records = r.u64("record count")?;
        for _ in 0..records {
            let timestamp = WallTime(r.u64("record timestamp")?);
            let len = r.u32("record length")? as usize;
            let payload = r.bytes(len, "record payload")?;
            m.log.append(Record { payload, timestamp });
        }
        r.finish("partition snapshot")?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(client: u64, seq: u64, payload: &'static str) -> Produce {
        Produce { client, seq, timestamp: WallTime(seq), payload: Bytes::from_static(payload.as_bytes()) }
    }

    #[test]
    fn retries_land_once() {
        let mut m = PartitionMachine::new();
        assert_eq!(m.apply(produce(1, 1, "a")).map(|a| a.offset), Some(0));
        assert_eq!(m.apply(produce(2, 1, "b")).map(|a| a.offset), Some(1));
        let again = m.apply(produce(1, 1, "a")).expect("answered");
        assert!(again.duplicate);
        assert_eq!(again.offset, 0);
        assert_eq!(m.next_offset(), 2);
        assert_eq!(m.apply(produce(1, 0, "old")), None, "older than the session");
    }

    #[test]
    fn snapshots_round_trip() {
        let mut m = PartitionMachine::new();
        for i in 0..5 {
            m.apply(produce(i % 2, i, "x"));
        }
        let back = PartitionMachine::restore(m.snapshot()).expect("valid");
        assert_eq!(back.snapshot(), m.snapshot());
        assert_eq!(back.get(3).map(|r| r.payload.clone()), Some(Bytes::from_static(b"x")));
        let s = m.snapshot();
        for cut in 0..s.len() {
            assert!(PartitionMachine::restore(s.slice(..cut)).is_err());
        }
    }

    #[test]
    fn commands_round_trip() {
        let p = produce(7, 9, "payload");
        assert_eq!(Produce::decode(p.encode()), Ok(p));
        assert!(Produce::decode(Bytes::from_static(b"short")).is_err());
    }
}

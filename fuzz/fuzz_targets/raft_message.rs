//! Raft datagrams come from the network. Decoding must never panic, and
//! whatever decodes must re-encode to exactly the input (the encoding is
//! canonical).
//!
//! Then the input is read as a script that drives one member (n1 of the
//! voters n1, n2, n3) with messages from any peer — voters, a stranger
//! (n4) and itself — at any term, interleaved with timeouts, write
//! completions, crashes and every client request. A message is either raw
//! bytes that decode, or one built from a few script bytes near the
//! member's own term and log (so the fuzzer reaches leadership, conflicts,
//! snapshots and configuration changes quickly) and passed through the
//! codec. The core asserts its own invariants after each input; this
//! target adds what can be seen from outside:
//!
//! * no panic, for any well-formed message in any state;
//! * durability before claims: a granted vote, a successful append, an
//!   installed snapshot and the candidate's own vote request leave only
//!   once the disk (what completed writes left) holds what they assert;
//! * committed entries are handed out once each, in index order;
//! * the term never goes backwards within an incarnation, and a restart
//!   resumes the durable one.
//!
//! Script: the first byte picks the start (bit 0: win an election for
//! term 1 first; bit 1: PreVote off; bit 2: CheckQuorum off), then records
//! `op:u8 …` until the input ends (see [`Harness::step`]).
#![no_main]

use std::collections::BTreeSet;

use bytes::Bytes;
use kaelix_cluster::raft::disk::DiskState;
use kaelix_cluster::raft::wire::{decode, encode};
use kaelix_cluster::raft::{
    Body, Configuration, Entry, EntryPayload, Message, Output, Raft, RaftConfig, Recovered, Write,
};
use kaelix_core::NodeId;
use kaelix_core::rng::seeded;
use kaelix_core::time::{Duration, Instant};
use libfuzzer_sys::fuzz_target;

const ME: NodeId = NodeId(1);
const GROUP: u64 = 9;

/// What completed writes left (applied by the rules of `Write`, as the
/// real driver's mirror does), and whether any write ever landed.
#[derive(Default)]
struct Disk {
    state: DiskState,
    used: bool,
}

impl Disk {
    fn apply(&mut self, w: &Write) {
        self.used = true;
        self.state.apply(w);
    }

    fn recovered(&self) -> Recovered {
        self.state.recovered(!self.used)
    }

    /// Whether the disk holds index `index` (as an entry or in the snapshot).
    fn covers(&self, index: u64) -> bool {
        index == 0
            || self.state.snapshot.as_ref().is_some_and(|s| s.index >= index)
            || self.state.entries.iter().any(|e| e.index == index)
    }
}

struct Harness {
    config: RaftConfig,
    raft: Raft,
    disk: Disk,
    pending: Vec<Write>,
    now: Instant,
    applied: u64,
    max_term: u64,
    boots: u64,
}

impl Harness {
    fn new(flags: u8) -> Self {
        let mut config = RaftConfig::new(ME, [NodeId(1), NodeId(2), NodeId(3)]);
        config.pre_vote = flags & 2 == 0;
        config.check_quorum = flags & 4 == 0;
        config.max_snapshot_chunk = 16;
        config.max_append_bytes = 64;
        config.max_inflight = 2;
        let disk = Disk::default();
        let raft = Raft::new(config.clone(), seeded(1), Instant::ZERO, disk.recovered());
        let mut h =
            Harness { config, raft, disk, pending: Vec::new(), now: Instant::ZERO, applied: 0, max_term: 0, boots: 1 };
        h.drain();
        if flags & 1 == 1 {
            h.win_election();
        }
        h
    }

    /// n2 grants the pre-vote and the vote for term 1.
    fn win_election(&mut self) {
        self.now += Duration::from_millis(400);
        self.raft.handle_timeout(self.now);
        self.drain();
        if self.config.pre_vote {
            self.deliver(NodeId(2), Message { term: 1, body: Body::PreVoteResponse { granted: true } });
        }
        self.complete_writes(usize::MAX);
        self.deliver(NodeId(2), Message { term: 1, body: Body::VoteResponse { granted: true } });
        self.complete_writes(usize::MAX);
    }

    fn deliver(&mut self, from: NodeId, m: Message) {
        self.raft.handle_message(self.now, from, m);
        self.drain();
    }

    fn complete_writes(&mut self, n: usize) {
        let k = n.min(self.pending.len());
        for w in self.pending.drain(..k).collect::<Vec<_>>() {
            self.disk.apply(&w);
            self.raft.handle_write_complete(self.now, w.id);
            self.drain();
        }
    }

    fn drain(&mut self) {
        assert!(self.raft.term() >= self.max_term, "the term went backwards");
        self.max_term = self.raft.term();
        while let Some(out) = self.raft.poll_output() {
            match out {
                Output::Send { to, message } => self.check_send(to, &message),
                Output::Persist(w) => self.pending.push(w),
                Output::Apply(e) => {
                    assert_eq!(e.index, self.applied + 1, "applies are dense and in order");
                    self.applied = e.index;
                }
                Output::ApplySnapshot(s) => self.applied = s.index,
                Output::ReadReady { .. } | Output::ReadFailed { .. } | Output::RoleChanged { .. } => {}
            }
        }
    }

    fn check_send(&self, to: NodeId, m: &Message) {
        assert_ne!(to, ME, "a member never sends to itself");
        let (group, back) = decode(encode(GROUP, m)).expect("what the core sends decodes");
        assert_eq!((group, &back), (GROUP, m), "what the core sends survives the wire");
        let hs = self.disk.state.hard_state;
        match m.body {
            Body::VoteResponse { granted: true } => {
                assert_eq!((hs.term, hs.vote), (m.term, Some(to)), "vote for {to} granted before it was durable")
            }
            Body::Vote { .. } => {
                assert_eq!((hs.term, hs.vote), (m.term, Some(ME)), "vote requested before our own vote was durable")
            }
            Body::AppendResponse { success: true, index, .. } => {
                // Held until the write that stored the entries completed:
                // the disk covers them now (a later leader's entries may
                // already have replaced them in memory; that is allowed).
                assert!(self.disk.covers(index), "acknowledged index {index} before it was durable");
            }
            Body::SnapshotResponse { done: true, index, .. } => {
                assert!(self.disk.covers(index), "snapshot {index} reported installed before it was durable");
            }
            _ => {}
        }
    }

    fn crash_and_restart(&mut self) {
        // Writes still in flight are lost, as a crash may lose them.
        self.pending.clear();
        self.boots += 1;
        self.applied = self.disk.state.snapshot.as_ref().map_or(0, |s| s.index);
        self.raft = Raft::new(self.config.clone(), seeded(self.boots), self.now, self.disk.recovered());
        // A term only this incarnation had seen may be forgotten (nothing
        // was claimed in it before it was durable); the durable one not.
        assert_eq!(self.raft.term(), self.disk.state.hard_state.term, "a restart resumes the durable term");
        self.max_term = self.raft.term();
        self.drain();
    }

    /// One record. `op % 8`: 0 a raw datagram `len:u8 bytes[len]`; 1–3 a
    /// message built from the next bytes relative to the member's state
    /// (see [`Harness::message`]), encoded and decoded again; both from
    /// n1..n4 (`op / 8 % 4`). 4 time passes (`ms:u8`, doubled) and the
    /// timeout fires; 5 the oldest `n:u8 % 4 + 1` writes complete; 6 a
    /// client request (`which:u8 arg:u8`); 7 crash and restart.
    fn step(&mut self, input: &mut Input<'_>) -> Option<()> {
        let op = input.byte()?;
        let from = NodeId(u64::from(op / 8 % 4) + 1);
        match op % 8 {
            0 => {
                let len = usize::from(input.byte()?);
                let datagram = input.take(len)?;
                if let Ok((group, m)) = decode(Bytes::copy_from_slice(datagram)) {
                    assert_eq!(&encode(group, &m)[..], datagram, "decode/encode is not a bijection");
                    self.deliver(from, m);
                }
            }
            1..=3 => {
                let m = self.message(input)?;
                let datagram = encode(GROUP, &m);
                // Only what decodes reaches the core; the builder may
                // produce structure the codec refuses, and that is tested too.
                if let Ok((group, back)) = decode(datagram.clone()) {
                    assert_eq!((group, &back), (GROUP, &m), "decode inverts encode");
                    self.deliver(from, back);
                }
            }
            4 => {
                self.now += Duration::from_millis(2 * u64::from(input.byte()?));
                self.raft.handle_timeout(self.now);
                self.drain();
            }
            5 => {
                let n = usize::from(input.byte()? % 4) + 1;
                self.complete_writes(n);
            }
            6 => {
                let which = input.byte()?;
                let arg = input.byte()?;
                self.request(which, arg);
            }
            _ => self.crash_and_restart(),
        }
        Some(())
    }

    /// A message whose numbers are near the member's own (terms from one
    /// below to two above its term, indexes within 8 of its last one, log
    /// terms it holds or others), so the script reaches deep states.
    fn message(&self, input: &mut Input<'_>) -> Option<Message> {
        let kind = input.byte()?;
        let t = input.byte()?;
        let log = self.raft.log();
        let term = (self.raft.term() + u64::from(t % 4)).saturating_sub(1);
        let index = |b: u8| (log.last_index() + u64::from(b % 16)).saturating_sub(8);
        // The term of `i` in our log, or another one in 1..=term (index 0
        // has term 0).
        let term_at = |i: u64, b: u8| match log.term(i) {
            _ if i == 0 => 0,
            Some(held) if b % 3 != 0 => held,
            _ => 1 + u64::from(b) % term.max(1),
        };
        let body = match kind % 11 {
            0 => {
                let i = index(input.byte()?);
                Body::PreVote { last_index: i, last_term: term_at(i, input.byte()?) }
            }
            1 => Body::PreVoteResponse { granted: t & 16 != 0 },
            2 => {
                let i = index(input.byte()?);
                Body::Vote { last_index: i, last_term: term_at(i, input.byte()?), transfer: t & 32 != 0 }
            }
            3 => Body::VoteResponse { granted: t & 16 != 0 },
            4 => {
                let prev_index = index(input.byte()?);
                let prev_term = term_at(prev_index, input.byte()?);
                let shape = input.byte()?;
                let mut entry_term = prev_term.max(1);
                let entries = (0..u64::from(shape % 5))
                    .map(|k| {
                        if shape >> (3 + k) & 1 == 1 {
                            entry_term = term;
                        }
                        let payload = match (shape >> k) % 3 {
                            0 => EntryPayload::Noop,
                            1 => EntryPayload::Normal(Bytes::from(vec![shape; usize::from(shape % 32)])),
                            _ => EntryPayload::Config(Configuration::new([NodeId(1), NodeId(2), NodeId(3)])),
                        };
                        Entry { index: prev_index + 1 + k, term: entry_term, payload }
                    })
                    .collect();
                Body::Append { prev_index, prev_term, entries, commit: index(input.byte()?) }
            }
            5 => Body::AppendResponse { success: t & 16 != 0, index: index(input.byte()?), hint: index(input.byte()?) },
            6 => Body::Heartbeat { commit: index(input.byte()?), round: u64::from(t >> 4) },
            7 => Body::HeartbeatResponse { round: u64::from(t >> 4) },
            8 => {
                let at = index(input.byte()?);
                let shape = input.byte()?;
                let mut config = Configuration::new([NodeId(1), NodeId(2), NodeId(3)]);
                if shape & 1 == 1 {
                    config.learners.insert(NodeId(4));
                }
                if shape & 2 == 2 {
                    config.outgoing = [NodeId(1), NodeId(2)].into();
                }
                Body::Snapshot {
                    index: at,
                    snapshot_term: term_at(at, input.byte()?),
                    config,
                    offset: 16 * u64::from(shape >> 2 & 3),
                    data: Bytes::from(vec![shape; usize::from(shape >> 4)]),
                    done: shape & 128 != 0,
                }
            }
            9 => Body::SnapshotResponse {
                index: index(input.byte()?),
                offset: 16 * u64::from(t >> 4 & 3),
                done: t & 64 != 0,
            },
            _ => Body::TimeoutNow,
        };
        Some(Message { term, body })
    }

    fn request(&mut self, which: u8, arg: u8) {
        let now = self.now;
        let peer = NodeId(u64::from(arg % 4) + 1);
        match which % 5 {
            0 => {
                let _ = self.raft.propose(now, Bytes::from(vec![arg; usize::from(arg % 40)]));
            }
            1 => {
                let _ = self.raft.read_index(now, u64::from(arg));
            }
            2 => {
                let _ = self.raft.transfer_leadership(now, peer);
            }
            3 => {
                // Snapshot some applied prefix (the application's state is
                // whatever bytes; chunked at 16 bytes).
                let (snap, _) = self.raft.log().snapshot_point();
                let applied = self.raft.applied();
                if applied > snap {
                    let index = snap + 1 + u64::from(arg) % (applied - snap);
                    self.raft.compact(now, index, Bytes::from(vec![arg; usize::from(arg % 64)]));
                }
            }
            _ => {
                // Bits 0–3 of arg: voters among n1..n4; bits 4–7: learners.
                let set = |bits: u8| -> BTreeSet<NodeId> {
                    (0..4).filter(|b| bits >> b & 1 == 1).map(|b| NodeId(b + 1)).collect()
                };
                let voters = set(arg & 0xf);
                let learners = set(arg >> 4).difference(&voters).copied().collect();
                let _ = self.raft.propose_config(now, voters, learners);
            }
        }
        self.drain();
    }
}

struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((group, m)) = decode(Bytes::copy_from_slice(data)) {
        assert_eq!(&encode(group, &m)[..], data, "decode/encode is not a bijection");
    }

    let mut input = Input { data };
    let Some(flags) = input.byte() else { return };
    let mut h = Harness::new(flags);
    while h.step(&mut input).is_some() {}
    // Whatever happened, the member keeps working: writes complete and
    // time passes without a panic.
    h.complete_writes(usize::MAX);
    for _ in 0..4 {
        h.now += Duration::from_millis(100);
        h.raft.handle_timeout(h.now);
        h.drain();
        h.complete_writes(usize::MAX);
    }
});

//! Drives one Raft member through its public API, the way a node's driver
//! does: outputs are drained after every input, disk writes queue until the
//! test completes them (in order, as the contract says) and land on an
//! in-memory disk, and a crash loses whatever writes were still queued.
//! Shared by the Raft transcripts and the Figure 2 tests.

use std::collections::VecDeque;

use kaelix_cluster::raft::disk::DiskState;
use kaelix_cluster::raft::wire;
use kaelix_cluster::raft::{Entry, HardState, Message, Output, Raft, RaftConfig, Recovered, Write};
use kaelix_core::NodeId;
use kaelix_core::rng::seeded;
use kaelix_core::time::{Duration, Instant};

/// What completed writes left: the member's durable state (applied by the
/// rules of [`Write`], as the real driver's mirror does), and whether any
/// write ever landed.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub state: DiskState,
    pub used: bool,
}

impl Disk {
    /// A disk that already holds `hard_state` and `entries`.
    pub fn holding(hard_state: HardState, entries: Vec<Entry>) -> Self {
        Disk { state: DiskState { hard_state, snapshot: None, entries }, used: true }
    }

    pub fn apply(&mut self, w: &Write) {
        self.used = true;
        self.state.apply(w);
    }

    pub fn recovered(&self) -> Recovered {
        self.state.recovered(!self.used)
    }
}

/// One member, its disk and its queue of writes in flight.
pub struct Member {
    pub raft: Raft,
    pub config: RaftConfig,
    pub disk: Disk,
    pub pending: VecDeque<Write>,
    pub now: Instant,
    seed: u64,
    boots: u64,
}

impl Member {
    /// Boots `config` on `disk` at `now`; returns the member and what booting
    /// output.
    pub fn boot(config: RaftConfig, seed: u64, now: Instant, disk: Disk) -> (Self, Vec<Output>) {
        let raft = Raft::new(config.clone(), seeded(seed), now, disk.recovered());
        let mut m = Member { raft, config, disk, pending: VecDeque::new(), now, seed, boots: 1 };
        let out = m.drain();
        (m, out)
    }

    /// Every output so far. Writes also join the queue; every message sent
    /// must survive the wire codec unchanged.
    pub fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(o) = self.raft.poll_output() {
            match &o {
                Output::Persist(w) => self.pending.push_back(w.clone()),
                Output::Send { message, .. } => {
                    let datagram = wire::encode(7, message);
                    assert_eq!(wire::decode(datagram), Ok((7, message.clone())), "{message} survives the wire");
                }
                _ => {}
            }
            out.push(o);
        }
        out
    }

    pub fn recv(&mut self, from: NodeId, message: Message) -> Vec<Output> {
        self.raft.handle_message(self.now, from, message);
        self.drain()
    }

    /// `handle_timeout` at the current time (a no-op unless a deadline passed).
    pub fn timeout(&mut self) -> Vec<Output> {
        self.raft.handle_timeout(self.now);
        self.drain()
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Completes the oldest `n` writes in flight (each lands on the disk
    /// first), with what each completion released (and any outputs not
    /// drained yet, say after a direct call on `raft`).
    pub fn write_done(&mut self, n: usize) -> Vec<Output> {
        let mut out = self.drain();
        for _ in 0..n.min(self.pending.len()) {
            let w = self.pending.pop_front().expect("counted");
            self.disk.apply(&w);
            self.raft.handle_write_complete(self.now, w.id);
            out.extend(self.drain());
        }
        out
    }

    /// Completes every write in flight, and those the completions cause.
    pub fn settle(&mut self) -> Vec<Output> {
        let mut out = self.drain();
        while !self.pending.is_empty() {
            out.extend(self.write_done(usize::MAX));
        }
        out
    }

    /// Crash (writes in flight are lost) and boot again from the disk, or
    /// from an empty disk as a non-bootstrapping member when `wiped`.
    pub fn restart(&mut self, wiped: bool) -> Vec<Output> {
        self.pending.clear();
        self.boots += 1;
        if wiped {
            self.disk = Disk::default();
            self.config.bootstrap = false;
        }
        let seed = self.seed.wrapping_add(self.boots);
        self.raft = Raft::new(self.config.clone(), seeded(seed), self.now, self.disk.recovered());
        self.drain()
    }
}

/// The messages among `outputs`, as (to, message).
pub fn sends(outputs: &[Output]) -> Vec<(NodeId, Message)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, message } => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

/// The entries among `outputs` handed out to apply.
pub fn applied(outputs: &[Output]) -> Vec<Entry> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Apply(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

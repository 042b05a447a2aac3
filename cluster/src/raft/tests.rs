//! Unit tests of the Raft core on an in-memory network and disks.
//!
//! [`Net`] owns every member, a queue of messages in flight and each
//! member's disk. Writes complete when the harness says so (by default at
//! once, after each input), so a test can hold them back and crash a node
//! with writes outstanding: the crash loses them, exactly as the contract
//! allows.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kaelix_core::NodeId;
use kaelix_core::rng::{self, RngExt};
use kaelix_core::time::{Duration, Instant};

use super::*;

/// One member's disk: what completed writes left.
#[derive(Clone, Default)]
pub(super) struct MemDisk {
    pub state: disk::DiskState,
    pub used: bool,
}

impl MemDisk {
    pub fn apply(&mut self, w: &Write) {
        self.used = true;
        self.state.apply(w);
    }

    pub fn recovered(&self) -> Recovered {
        self.state.recovered(!self.used)
    }
}

pub(super) struct Node {
    pub raft: Raft,
    pub disk: MemDisk,
    pub pending: Vec<Write>,
    pub applied: Vec<Entry>,
    pub reads: Vec<(u64, u64)>,
}

pub(super) struct Net {
    pub now: Instant,
    pub nodes: BTreeMap<NodeId, Node>,
    pub down: BTreeSet<NodeId>,
    /// Messages in flight: (from, to, message).
    pub wire: Vec<(NodeId, NodeId, Message)>,
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub hold_writes: bool,
    pub rng: DetRng,
    pub config: fn(NodeId, &[NodeId]) -> RaftConfig,
    pub ids: Vec<NodeId>,
    /// (term → leader) ever seen: election safety.
    pub leaders: BTreeMap<u64, NodeId>,
    /// index → (term, payload) of every applied entry: state machine safety.
    pub applied_at: BTreeMap<u64, (u64, EntryPayload)>,
}

pub(super) fn ids(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

fn default_config(id: NodeId, voters: &[NodeId]) -> RaftConfig {
    RaftConfig::new(id, voters.iter().copied())
}

impl Net {
    pub fn new(n: u64, seed: u64) -> Self {
        Net::with_config(n, seed, default_config)
    }

    pub fn with_config(n: u64, seed: u64, config: fn(NodeId, &[NodeId]) -> RaftConfig) -> Self {
        let ids = ids(n);
        let mut net = Net {
            now: Instant::ZERO,
            nodes: BTreeMap::new(),
            down: BTreeSet::new(),
            wire: Vec::new(),
            cut: BTreeSet::new(),
            hold_writes: false,
            rng: rng::seeded(seed),
            config,
            ids: ids.clone(),
            leaders: BTreeMap::new(),
            applied_at: BTreeMap::new(),
        };
        for &id in &ids {
            net.boot(id, MemDisk::default(), true);
        }
        net
    }

    pub fn boot(&mut self, id: NodeId, disk: MemDisk, bootstrap: bool) {
        let mut config = (self.config)(id, &self.ids);
        config.bootstrap = bootstrap;
        let raft = Raft::new(config, rng::fork(&mut self.rng), self.now, disk.recovered());
        self.nodes.insert(id, Node { raft, disk, pending: Vec::new(), applied: Vec::new(), reads: Vec::new() });
        self.down.remove(&id);
        self.drain(id);
    }

    pub fn raft(&self, id: NodeId) -> &Raft {
        &self.nodes[&id].raft
    }

    pub fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes.get_mut(&id).expect("known node")
    }

    /// Moves the outputs of `id` into the wire, its disk queue and its
    /// applied list; completes writes unless held.
    pub fn drain(&mut self, id: NodeId) {
        loop {
            let mut progressed = false;
            while let Some(out) = self.node(id).raft.poll_output() {
                progressed = true;
                match out {
                    Output::Send { to, message } => self.wire.push((id, to, message)),
                    Output::Persist(w) => self.node(id).pending.push(w),
                    Output::Apply(e) => {
                        match self.applied_at.get(&e.index) {
                            Some((t, p)) => assert!(
                                *t == e.term && *p == e.payload,
                                "state machine safety: {id} applied {:?} at {}, another node applied term {t}",
                                e.payload,
                                e.index
                            ),
                            None => {
                                self.applied_at.insert(e.index, (e.term, e.payload.clone()));
                            }
                        }
                        self.node(id).applied.push(e);
                    }
                    Output::ApplySnapshot(s) => {
                        let n = self.node(id);
                        n.applied.retain(|e| e.index <= s.index);
                    }
                    Output::ReadReady { ctx, index } => self.node(id).reads.push((ctx, index)),
                    Output::ReadFailed { .. } => {}
                    Output::RoleChanged { role: Role::Leader, term, .. } => {
                        if let Some(prev) = self.leaders.insert(term, id) {
                            assert_eq!(prev, id, "election safety: two leaders in term {term}");
                        }
                    }
                    Output::RoleChanged { .. } => {}
                }
            }
            if !self.hold_writes && !self.node(id).pending.is_empty() {
                progressed = true;
                self.complete_writes(id);
            }
            if !progressed {
                return;
            }
        }
    }

    pub fn complete_writes(&mut self, id: NodeId) {
        let now = self.now;
        let writes = std::mem::take(&mut self.node(id).pending);
        for w in writes {
            self.node(id).disk.apply(&w);
            self.node(id).raft.handle_write_complete(now, w.id);
        }
    }

    /// Delivers every message in flight (and what they cause) until quiet.
    pub fn deliver_all(&mut self) {
        let mut rounds = 0;
        while !self.wire.is_empty() {
            rounds += 1;
            assert!(rounds < 10_000, "messages never quiesce");
            let batch = std::mem::take(&mut self.wire);
            for (from, to, m) in batch {
                self.deliver(from, to, m);
            }
        }
    }

    pub fn deliver(&mut self, from: NodeId, to: NodeId, m: Message) {
        if self.down.contains(&to) || self.cut.contains(&(from, to)) || !self.nodes.contains_key(&to) {
            return;
        }
        let now = self.now;
        self.node(to).raft.handle_message(now, from, m);
        self.drain(to);
    }

    /// Advances time by `d` in 1 ms steps, firing timeouts and delivering.
    pub fn tick(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(1);
            let live: Vec<NodeId> = self.nodes.keys().copied().filter(|n| !self.down.contains(n)).collect();
            for id in live {
                let now = self.now;
                if self.raft(id).poll_timeout().is_some_and(|t| t <= now) {
                    self.node(id).raft.handle_timeout(now);
                    self.drain(id);
                }
            }
            self.deliver_all();
        }
    }

    pub fn leader(&self) -> Option<NodeId> {
        let mut leaders: Vec<(u64, NodeId)> = self
            .nodes
            .iter()
            .filter(|(n, node)| !self.down.contains(n) && node.raft.role() == Role::Leader)
            .map(|(&n, node)| (node.raft.term(), n))
            .collect();
        leaders.sort();
        leaders.last().map(|&(_, n)| n)
    }

    pub fn elect(&mut self) -> NodeId {
        for _ in 0..100 {
            self.tick(Duration::from_millis(50));
            if let Some(l) = self.leader() {
                // Let its no-op commit.
                self.tick(Duration::from_millis(50));
                return l;
            }
        }
        panic!("no leader elected");
    }

    pub fn propose(&mut self, id: NodeId, data: &str) -> Result<(u64, u64), ProposeError> {
        let now = self.now;
        let r = self.node(id).raft.propose(now, Bytes::copy_from_slice(data.as_bytes()));
        self.drain(id);
        r
    }

    pub fn crash(&mut self, id: NodeId) {
        self.down.insert(id);
        self.node(id).pending.clear();
    }

    pub fn restart(&mut self, id: NodeId) {
        let disk = self.nodes[&id].disk.clone();
        self.boot(id, disk, true);
    }

    pub fn isolate(&mut self, id: NodeId) {
        for &other in &self.ids.clone() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn payloads(&self, id: NodeId) -> Vec<String> {
        self.nodes[&id]
            .applied
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_single_node_elects_itself_and_commits() {
    let mut net = Net::new(1, 1);
    let l = net.elect();
    assert_eq!(l, NodeId(1));
    net.propose(l, "a").expect("leader");
    net.tick(Duration::from_millis(1));
    assert_eq!(net.payloads(l), ["a"]);
}

#[test]
fn three_nodes_elect_one_leader_and_replicate_in_order() {
    let mut net = Net::new(3, 2);
    let l = net.elect();
    for i in 0..20 {
        net.propose(l, &format!("v{i}")).expect("leader");
    }
    net.tick(Duration::from_millis(100));
    let expected: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    for id in ids(3) {
        assert_eq!(net.payloads(id), expected, "{id}");
    }
}

#[test]
fn followers_refuse_proposals_and_name_the_leader() {
    let mut net = Net::new(3, 3);
    let l = net.elect();
    let f = ids(3).into_iter().find(|&n| n != l).expect("a follower");
    assert_eq!(net.propose(f, "x"), Err(ProposeError::NotLeader { leader: Some(l) }));
}

#[test]
fn a_new_leader_keeps_every_committed_entry() {
    let mut net = Net::new(5, 4);
    let l = net.elect();
    for i in 0..10 {
        net.propose(l, &format!("v{i}")).expect("leader");
    }
    net.tick(Duration::from_millis(50));
    net.crash(l);
    let l2 = net.elect();
    assert_ne!(l, l2);
    net.propose(l2, "after").expect("leader");
    net.tick(Duration::from_millis(100));
    let p = net.payloads(l2);
    assert_eq!(p.len(), 11);
    assert_eq!(p.last().map(String::as_str), Some("after"));
    net.restart(l);
    net.tick(Duration::from_millis(300));
    assert_eq!(net.payloads(l), p, "the old leader catches up after restart");
}

#[test]
fn a_partitioned_leader_cannot_commit_and_steps_down() {
    let mut net = Net::new(3, 5);
    let l = net.elect();
    net.isolate(l);
    let r = net.propose(l, "lost").expect("still thinks it leads");
    net.tick(Duration::from_millis(400));
    assert_ne!(net.raft(l).role(), Role::Leader, "CheckQuorum: no quorum heard, step down");
    assert!(net.raft(l).commit() < r.0, "nothing committed without a quorum");
    let l2 = net.leader().expect("the majority elected a leader");
    net.heal();
    net.propose(l2, "kept").expect("leader");
    net.tick(Duration::from_millis(300));
    assert_eq!(net.payloads(l), ["kept"], "the uncommitted entry was overwritten");
}

#[test]
fn prevote_keeps_a_rejoining_node_from_raising_terms() {
    let mut net = Net::new(3, 6);
    let l = net.elect();
    let f = ids(3).into_iter().find(|&n| n != l).expect("a follower");
    let term = net.raft(l).term();
    net.isolate(f);
    net.tick(Duration::from_millis(2_000));
    assert_eq!(net.raft(f).term(), term, "pre-votes failed, so the term never rose");
    net.heal();
    net.tick(Duration::from_millis(200));
    assert_eq!(net.leader(), Some(l), "no disruption on rejoin");
    assert_eq!(net.raft(l).term(), term);
}

#[test]
fn without_prevote_a_rejoining_node_disrupts() {
    fn no_prevote(id: NodeId, voters: &[NodeId]) -> RaftConfig {
        RaftConfig { pre_vote: false, check_quorum: false, ..RaftConfig::new(id, voters.iter().copied()) }
    }
    let mut net = Net::with_config(3, 7, no_prevote);
    let l = net.elect();
    let f = ids(3).into_iter().find(|&n| n != l).expect("a follower");
    let term = net.raft(l).term();
    net.isolate(f);
    net.tick(Duration::from_millis(2_000));
    assert!(net.raft(f).term() > term + 3, "the isolated node kept raising its term");
}

#[test]
fn a_lagging_follower_gets_a_snapshot() {
    let mut net = Net::new(3, 8);
    let l = net.elect();
    let f = ids(3).into_iter().find(|&n| n != l).expect("a follower");
    net.crash(f);
    for i in 0..30 {
        net.propose(l, &format!("v{i}")).expect("leader");
    }
    net.tick(Duration::from_millis(50));
    let applied = net.raft(l).applied();
    let now = net.now;
    net.node(l).raft.compact(now, applied, Bytes::from_static(b"state"));
    net.drain(l);
    assert_eq!(net.raft(l).log().first_index(), applied + 1);
    net.restart(f);
    net.tick(Duration::from_millis(300));
    assert_eq!(net.raft(f).log().snapshot_point().0, applied);
    assert_eq!(net.nodes[&f].disk.state.snapshot.as_ref().map(|s| s.data.clone()), Some(Bytes::from_static(b"state")));
    net.propose(l, "next").expect("leader");
    net.tick(Duration::from_millis(100));
    assert_eq!(net.raft(f).commit(), net.raft(l).commit());
}

#[test]
fn a_large_snapshot_travels_in_chunks() {
    fn small_chunks(id: NodeId, voters: &[NodeId]) -> RaftConfig {
        RaftConfig { max_snapshot_chunk: 100, ..RaftConfig::new(id, voters.iter().copied()) }
    }
    let mut net = Net::with_config(3, 9, small_chunks);
    let l = net.elect();
    let f = ids(3).into_iter().find(|&n| n != l).expect("a follower");
    net.crash(f);
    net.propose(l, "x").expect("leader");
    net.tick(Duration::from_millis(50));
    let state: Bytes = (0..1000u32).map(|i| i as u8).collect::<Vec<u8>>().into();
    let (now, applied) = (net.now, net.raft(l).applied());
    net.node(l).raft.compact(now, applied, state.clone());
    net.drain(l);
    net.restart(f);
    net.tick(Duration::from_millis(500));
    assert_eq!(net.nodes[&f].disk.state.snapshot.as_ref().map(|s| s.data.clone()), Some(state));
}

#[test]
fn leadership_moves_on_request() {
    let mut net = Net::new(3, 10);
    let l = net.elect();
    let target = ids(3).into_iter().find(|&n| n != l).expect("a follower");
    let now = net.now;
    net.node(l).raft.transfer_leadership(now, target).expect("leader");
    net.drain(l);
    assert!(matches!(net.propose(l, "x"), Err(ProposeError::Transferring(_)) | Err(ProposeError::NotLeader { .. })));
    net.tick(Duration::from_millis(50));
    assert_eq!(net.leader(), Some(target));
}

#[test]
fn read_index_waits_for_a_quorum_heartbeat() {
    let mut net = Net::new(3, 11);
    let l = net.elect();
    net.propose(l, "w").expect("leader");
    net.tick(Duration::from_millis(20));
    let now = net.now;
    net.node(l).raft.read_index(now, 42).expect("leader");
    net.drain(l);
    assert!(net.nodes[&l].reads.is_empty(), "not before a quorum confirmed leadership");
    net.deliver_all();
    let reads = net.nodes[&l].reads.clone();
    assert_eq!(reads, [(42, net.raft(l).commit())]);
}

#[test]
fn an_isolated_leader_cannot_serve_reads() {
    let mut net = Net::new(3, 12);
    let l = net.elect();
    net.isolate(l);
    let now = net.now;
    net.node(l).raft.read_index(now, 7).expect("still leader");
    net.drain(l);
    net.tick(Duration::from_millis(500));
    assert!(net.nodes[&l].reads.is_empty());
}

#[test]
fn joint_consensus_adds_and_removes_voters() {
    let mut net = Net::new(3, 13);
    // Nodes 4 and 5 exist but are not in the initial configuration.
    net.ids = ids(5);
    for id in [NodeId(4), NodeId(5)] {
        let mut config = RaftConfig::new(id, ids(3));
        config.bootstrap = false;
        let raft = Raft::new(config, rng::seeded(id.0), net.now, Recovered { empty: true, ..Default::default() });
        net.nodes.insert(
            id,
            Node { raft, disk: MemDisk::default(), pending: Vec::new(), applied: Vec::new(), reads: Vec::new() },
        );
    }
    let l = net.elect();
    let now = net.now;
    // Learners first.
    let learners: BTreeSet<NodeId> = [NodeId(4), NodeId(5)].into();
    net.node(l).raft.propose_config(now, ids(3).into_iter().collect(), learners).expect("leader");
    net.drain(l);
    net.tick(Duration::from_millis(200));
    assert!(net.raft(NodeId(4)).configuration().learners.contains(&NodeId(4)));
    // Then swap voters {1,2,3} → {3,4,5} (through a joint configuration).
    let now = net.now;
    let l = net.leader().expect("leader");
    net.node(l).raft.propose_config(now, [NodeId(3), NodeId(4), NodeId(5)].into(), BTreeSet::new()).expect("leader");
    net.drain(l);
    assert!(net.raft(l).configuration().is_joint());
    net.tick(Duration::from_millis(500));
    let final_config = net.raft(NodeId(3)).configuration().clone();
    assert!(!final_config.is_joint());
    assert_eq!(final_config.voters, [NodeId(3), NodeId(4), NodeId(5)].into());
    net.crash(NodeId(1));
    net.crash(NodeId(2));
    let l = net.elect();
    assert!([3, 4, 5].contains(&l.0));
    net.propose(l, "new config works").expect("leader");
    net.tick(Duration::from_millis(100));
    assert_eq!(net.payloads(NodeId(4)).last().map(String::as_str), Some("new config works"));
}

#[test]
fn a_vote_is_not_granted_before_it_is_durable() {
    let mut net = Net::new(3, 14);
    net.hold_writes = true;
    // Force node 1 to campaign directly.
    let now = net.now + Duration::from_millis(400);
    net.now = now;
    net.node(NodeId(1)).raft.handle_timeout(now);
    net.drain(NodeId(1));
    // Pre-votes go out at once; the real votes need node 1's disk.
    net.deliver_all();
    net.complete_writes(NodeId(1));
    net.drain(NodeId(1));
    net.deliver_all();
    let responses_before: usize = net.wire.len();
    assert_eq!(responses_before, 0, "no VoteResponse leaves before the voter's write");
    assert!(!net.nodes[&NodeId(2)].pending.is_empty(), "node 2 must persist its vote first");
    net.complete_writes(NodeId(2));
    net.drain(NodeId(2));
    net.deliver_all();
    assert_eq!(net.raft(NodeId(1)).role(), Role::Leader);
}

#[test]
fn a_wiped_node_does_not_vote_until_it_caught_up() {
    let mut net = Net::new(3, 15);
    let l = net.elect();
    for i in 0..5 {
        net.propose(l, &format!("v{i}")).expect("leader");
    }
    net.tick(Duration::from_millis(50));
    let f = ids(3).into_iter().find(|&n| n != l).expect("a follower");
    net.crash(f);
    net.boot(f, MemDisk::default(), false);
    assert!(net.raft(f).is_recovering());
    let now = net.now;
    net.node(f).raft.handle_message(
        now,
        NodeId(99),
        Message { term: 50, body: Body::Vote { last_index: 100, last_term: 50, transfer: true } },
    );
    net.drain(f);
    let granted = net.wire.iter().any(|(_, _, m)| matches!(m.body, Body::VoteResponse { granted: true }));
    assert!(!granted, "a recovering node never votes");
    net.wire.clear();
    net.tick(Duration::from_millis(300));
    assert!(!net.raft(f).is_recovering(), "caught up with the leader's committed entries");
    assert_eq!(net.payloads(f).len(), 5);
}

/// Random faults (loss, duplication, reordering, crashes with lost writes,
/// partitions) over many seeds; the harness checks election safety and
/// state machine safety at every output, and the core its own invariants.
#[test]
fn randomized_faults_never_break_safety() {
    for seed in 0..40 {
        let mut net = Net::new(5, 1000 + seed);
        let mut rng = rng::seeded(seed);
        let mut proposed = 0;
        for _ in 0..400 {
            net.now += Duration::from_millis(rng.random_range(1..8));
            let now = net.now;
            let live: Vec<NodeId> = net.nodes.keys().copied().filter(|n| !net.down.contains(n)).collect();
            for id in live {
                if net.raft(id).poll_timeout().is_some_and(|t| t <= now) {
                    net.node(id).raft.handle_timeout(now);
                    net.drain(id);
                }
            }
            // Deliver a random subset, in random order, some twice.
            let mut batch = std::mem::take(&mut net.wire);
            for i in (1..batch.len()).rev() {
                batch.swap(i, rng.random_range(0..=i));
            }
            for (from, to, m) in batch {
                match rng.random_range(0..20) {
                    0 | 1 => {}
                    2 => net.wire.push((from, to, m)),
                    3 => {
                        net.deliver(from, to, m.clone());
                        net.deliver(from, to, m);
                    }
                    _ => net.deliver(from, to, m),
                }
            }
            match rng.random_range(0..100) {
                0 => {
                    let id = NodeId(rng.random_range(1..=5));
                    if net.down.len() < 2 {
                        net.crash(id);
                    }
                }
                1 => {
                    if let Some(&id) = net.down.iter().next() {
                        net.restart(id);
                    }
                }
                2 => net.isolate(NodeId(rng.random_range(1..=5))),
                3 | 4 => net.heal(),
                _ => {}
            }
            net.hold_writes = rng.random_range(0..4) == 0;
            if let Some(l) = net.leader()
                && rng.random_range(0..3) == 0
            {
                proposed += 1;
                let _ = net.propose(l, &format!("s{seed}-{proposed}"));
            }
        }
        net.hold_writes = false;
        for id in ids(5) {
            if net.down.contains(&id) {
                net.restart(id);
            } else {
                net.complete_writes(id);
                net.drain(id);
            }
        }
        net.heal();
        let l = net.elect();
        net.propose(l, "final").expect("leader");
        net.tick(Duration::from_millis(500));
        let reference = net.payloads(l);
        assert!(reference.len() > proposed / 4, "seed {seed}: the group made progress under faults");
        for id in ids(5) {
            assert_eq!(net.payloads(id), reference, "seed {seed}: {id} converged");
        }
    }
}

/// Found by the `raft_message` fuzz target: a datagram that claims to come
/// from the member itself (misrouted or forged) was answered to itself, and
/// a heartbeat "from itself" made a leader panic on "two leaders".
#[test]
fn a_message_claiming_to_come_from_itself_is_ignored() {
    let mut net = Net::new(3, 16);
    let l = net.elect();
    let term = net.raft(l).term();
    let now = net.now;
    net.node(l).raft.handle_message(now, l, Message { term, body: Body::Heartbeat { commit: 0, round: 0 } });
    net.node(l).raft.handle_message(
        now,
        l,
        Message { term: term + 1, body: Body::Vote { last_index: 99, last_term: term, transfer: true } },
    );
    net.drain(l);
    assert_eq!((net.raft(l).role(), net.raft(l).term()), (Role::Leader, term));
    assert!(net.wire.iter().all(|(_, to, _)| *to != l), "no member talks to itself");
}

/// Found by the `raft_message` fuzz target: an acknowledgement (append or
/// snapshot) of an index beyond the leader's log tripped an assertion or
/// moved `next_index` past the log, and the next append panicked.
#[test]
fn a_leader_ignores_acknowledgements_beyond_its_log() {
    let mut net = Net::new(3, 17);
    let l = net.elect();
    let f = ids(3).into_iter().find(|&n| n != l).expect("a follower");
    let (term, last) = (net.raft(l).term(), net.raft(l).log().last_index());
    let now = net.now;
    for body in [
        Body::AppendResponse { success: true, index: last + 100, hint: 0 },
        Body::SnapshotResponse { index: last + 100, offset: 0, done: true },
    ] {
        net.node(l).raft.handle_message(now, f, Message { term, body });
        net.drain(l);
        let p = net.raft(l).progress(f).expect("a follower's progress");
        assert!(p.match_index <= last && p.next_index <= last + 1, "{p:?}");
    }
    net.wire.clear();
    net.propose(l, "still works").expect("leader");
    net.tick(Duration::from_millis(100));
    assert_eq!(net.payloads(f), ["still works"]);
}

/// Found by the `raft_message` fuzz target: an append, heartbeat or
/// snapshot chunk of the leader's own term from another member (which no
/// correct member sends) hit the "two leaders" assertion: one bad datagram
/// crashed the leader.
#[test]
fn a_leader_ignores_leader_messages_of_its_own_term() {
    let mut net = Net::new(3, 18);
    let l = net.elect();
    let f = ids(3).into_iter().find(|&n| n != l).expect("a follower");
    let (term, last, commit) = (net.raft(l).term(), net.raft(l).log().last_index(), net.raft(l).commit());
    let now = net.now;
    for body in [
        Body::Append { prev_index: 0, prev_term: 0, entries: vec![], commit: 0 },
        Body::Heartbeat { commit: 0, round: 0 },
        Body::Snapshot {
            index: 50,
            snapshot_term: term,
            config: Configuration::new(ids(3)),
            offset: 0,
            data: Bytes::from_static(b"x"),
            done: true,
        },
    ] {
        net.node(l).raft.handle_message(now, f, Message { term, body });
        net.drain(l);
        assert_eq!(net.raft(l).role(), Role::Leader);
    }
    assert_eq!((net.raft(l).log().last_index(), net.raft(l).commit()), (last, commit), "nothing changed");
}

/// Found by the `raft_message` fuzz target: a refusal of a `prev_index`
/// beyond the leader's log (which the leader never sent) moved
/// `next_index` past the log, and the retry panicked.
#[test]
fn a_leader_ignores_refusals_beyond_its_log() {
    let mut net = Net::new(3, 19);
    let l = net.elect();
    let f = ids(3).into_iter().find(|&n| n != l).expect("a follower");
    let (term, last) = (net.raft(l).term(), net.raft(l).log().last_index());
    let now = net.now;
    let refusal = Body::AppendResponse { success: false, index: last + 2, hint: last + 3 };
    net.node(l).raft.handle_message(now, f, Message { term, body: refusal });
    net.drain(l);
    let p = net.raft(l).progress(f).expect("a follower's progress");
    assert!(p.next_index <= last + 1, "{p:?}");
    net.wire.clear();
    net.propose(l, "still works").expect("leader");
    net.tick(Duration::from_millis(100));
    assert_eq!(net.payloads(f), ["still works"]);
}

/// Found by the `raft_message` fuzz target: while a leader transferred
/// leadership to an outgoing voter of a joint configuration, that voter's
/// acknowledgement committed the joint entry, the leader moved on to the new
/// configuration (dropping the voter's progress) and then looked the
/// progress up by index: a panic on a correct sequence of messages.
#[test]
fn an_acknowledgement_that_drops_the_transfer_target_from_the_configuration_does_not_panic() {
    let mut net = Net::new(3, 20);
    let l = net.elect();
    let mut others = ids(3).into_iter().filter(|&n| n != l);
    let (target, cut_off) = (others.next().expect("two followers"), others.next().expect("two followers"));
    let newcomer = NodeId(4);
    let now = net.now;
    // {1,2,3} → {l, n4}: joint until committed by a majority of each half.
    let (joint, _) = net.node(l).raft.propose_config(now, [l, newcomer].into(), BTreeSet::new()).expect("leader");
    net.node(l).raft.transfer_leadership(now, target).expect("target is an outgoing voter");
    net.drain(l);
    net.wire.clear();
    let term = net.raft(l).term();
    let ack = Message { term, body: Body::AppendResponse { success: true, index: joint, hint: 0 } };
    net.node(l).raft.handle_message(now, newcomer, ack.clone());
    net.drain(l);
    assert_eq!(net.raft(l).commit(), joint - 1, "the old half has only the leader");
    // The target's acknowledgement completes the old half's majority.
    net.node(l).raft.handle_message(now, target, ack);
    net.drain(l);
    assert!(net.raft(l).commit() >= joint);
    assert!(net.raft(l).progress(target).is_none(), "the new configuration has no place for the target");
    assert!(net.raft(l).progress(cut_off).is_none());
}

#[test]
fn a_campaign_resends_its_requests_to_voters_that_did_not_answer() {
    let mut net = Net::new(3, 16);
    // Node 1 campaigns; every request it sends is lost.
    let now = net.raft(NodeId(1)).election_deadline();
    net.now = now;
    net.node(NodeId(1)).raft.handle_timeout(now);
    net.drain(NodeId(1));
    assert_eq!(net.raft(NodeId(1)).role(), Role::PreCandidate);
    let first: Vec<NodeId> = net.wire.drain(..).map(|(_, to, _)| to).collect();
    assert_eq!(first, [NodeId(2), NodeId(3)]);
    // One heartbeat interval later, before the election timeout: again.
    let retry = now + Duration::from_millis(30);
    assert_eq!(net.raft(NodeId(1)).poll_timeout(), Some(retry));
    net.now = retry;
    net.node(NodeId(1)).raft.handle_timeout(retry);
    net.drain(NodeId(1));
    let again: Vec<(NodeId, &'static str)> = net.wire.iter().map(|(_, to, m)| (*to, m.body.kind())).collect();
    assert_eq!(again, [(NodeId(2), "pre-vote"), (NodeId(3), "pre-vote")]);
    // Answers arrive now: it wins without waiting for another timeout.
    net.deliver_all();
    assert_eq!(net.raft(NodeId(1)).role(), Role::Leader);
}

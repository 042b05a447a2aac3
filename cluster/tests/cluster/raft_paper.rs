//! One test per rule of Figure 2 of the Raft paper ("In Search of an
//! Understandable Consensus Algorithm", Ongaro & Ousterhout, 2014), each
//! named after its rule, with the rule's text as its doc comment. Every
//! test drives one member through its public API (the script plays the
//! peers), as raft-rs's `test_raft_paper.rs` does.
//!
//! Where Kaelix deliberately differs, the test says how and checks the
//! Kaelix equivalent instead:
//!
//! * **PreVote**: a member whose election timer fires first asks, without
//!   raising its term, whether it could win; it becomes a candidate only
//!   when a majority would vote for it (tests use `pre_vote: false` where
//!   the paper's exact rule is checked).
//! * **A no-op on election**: a new leader's first append carries a no-op
//!   of its term, not nothing, so it commits an entry of its term at once.
//! * **Fast back-off**: a refusal carries a hint that skips a whole
//!   conflicting term instead of decrementing `nextIndex` by one.
//! * **Leader lease** (with CheckQuorum): a member that heard from a
//!   leader less than an election timeout ago ignores vote requests.
//! * **Durability is claimed, not assumed**: the paper persists before
//!   answering any RPC; Kaelix holds exactly the messages that assert
//!   something durable until the disk has it.

use bytes::Bytes;
use kaelix_cluster::raft::{
    Body, Configuration, Entry, EntryPayload, HardState, Message, Output, ProgressState, ProposeError, RaftConfig, Role,
};
use kaelix_core::NodeId;
use kaelix_core::time::{Duration, Instant};

use crate::raft_harness::{Disk, Member, applied, sends};

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);

fn config(id: NodeId, voters: u64) -> RaftConfig {
    RaftConfig::new(id, (1..=voters).map(NodeId))
}

/// The paper's elections: no PreVote, no lease.
fn classic(id: NodeId, voters: u64) -> RaftConfig {
    RaftConfig { pre_vote: false, check_quorum: false, ..config(id, voters) }
}

fn boot(config: RaftConfig) -> Member {
    Member::boot(config, 7, Instant::ZERO, Disk::default()).0
}

/// A member whose disk holds `term` and `entries` (as `index/term` pairs).
fn boot_with(config: RaftConfig, term: u64, entries: &[(u64, u64)]) -> Member {
    let hs = HardState { term, ..HardState::default() };
    Member::boot(config, 7, Instant::ZERO, Disk::holding(hs, entries.iter().map(|&(i, t)| entry(i, t)).collect())).0
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, payload: EntryPayload::Normal(Bytes::from(format!("{index}/{term}"))) }
}

fn msg(term: u64, body: Body) -> Message {
    Message { term, body }
}

fn append(term: u64, prev: (u64, u64), entries: &[(u64, u64)], commit: u64) -> Message {
    let entries = entries.iter().map(|&(i, t)| entry(i, t)).collect();
    msg(term, Body::Append { prev_index: prev.0, prev_term: prev.1, entries, commit })
}

fn ack(term: u64, index: u64) -> Message {
    msg(term, Body::AppendResponse { success: true, index, hint: 0 })
}

/// Fires the election timer at its deadline.
/// Moves to the member's next election (or, leading, its next deadline)
/// and handles it; a campaign's vote-request retries before it are folded in.
fn fire(m: &mut Member) -> Vec<Output> {
    m.now = if m.raft.role() == Role::Leader {
        m.raft.poll_timeout().expect("a leader always has a heartbeat due")
    } else {
        m.raft.election_deadline()
    };
    m.timeout()
}

/// Wins an election (the next term): the timer fires and `grantors` grant
/// the pre-vote (if on) and the vote; every write completes.
fn elect(m: &mut Member, grantors: &[NodeId]) -> Vec<Output> {
    let mut out = fire(m);
    let term = m.raft.term() + 1;
    if m.config.pre_vote {
        for &g in grantors {
            out.extend(m.recv(g, msg(term, Body::PreVoteResponse { granted: true })));
        }
    }
    out.extend(m.settle());
    for &g in grantors {
        out.extend(m.recv(g, msg(term, Body::VoteResponse { granted: true })));
    }
    out.extend(m.settle());
    assert_eq!(m.raft.role(), Role::Leader, "won the election");
    out
}

/// The messages among `out` to `to`.
fn to(out: &[Output], to: NodeId) -> Vec<Message> {
    sends(out).into_iter().filter(|(n, _)| *n == to).map(|(_, m)| m).collect()
}

fn log_of(m: &Member) -> Vec<(u64, u64)> {
    m.raft.log().iter().map(|e| (e.index, e.term)).collect()
}

fn timer_is_reset(m: &Member) {
    let t = m.config.election_timeout;
    let deadline = m.raft.election_deadline();
    assert!(deadline >= m.now + t && deadline < m.now + t + t, "deadline {deadline} not in [now+T, now+2T)");
}

// ----- Rules for all servers ----------------------------------------------

/// Rules for all servers: "If commitIndex > lastApplied: increment
/// lastApplied, apply log[lastApplied] to state machine (§5.3)."
#[test]
fn all_servers_apply_entries_up_to_the_commit_index() {
    let mut f = boot(config(N2, 3));
    let out = f.recv(N1, append(1, (0, 0), &[(1, 1), (2, 1), (3, 1)], 0));
    assert!(applied(&out).is_empty(), "nothing committed, nothing applied");
    f.settle();
    let out = f.recv(N1, append(1, (3, 1), &[], 2));
    let got: Vec<u64> = applied(&out).iter().map(|e| e.index).collect();
    assert_eq!(got, [1, 2], "applied in index order up to the commit index");
    assert_eq!((f.raft.commit(), f.raft.applied()), (2, 2));
    let out = f.recv(N1, msg(1, Body::Heartbeat { commit: 3, round: 0 }));
    assert_eq!(applied(&out), [entry(3, 1)]);
    let out = f.recv(N1, msg(1, Body::Heartbeat { commit: 3, round: 0 }));
    assert!(applied(&out).is_empty(), "each entry is applied once");
}

/// Rules for all servers: "If RPC request or response contains term T >
/// currentTerm: set currentTerm = T, convert to follower (§5.1)."
///
/// Kaelix: a `PreVote` (and a granted `PreVoteResponse`) names the term a
/// candidate *would* run in, changes nothing and is exempt; so is a vote
/// request that arrives inside the leader lease.
#[test]
fn all_servers_adopt_a_higher_term_and_become_followers() {
    // A leader, on a response.
    let mut l = boot(config(N1, 3));
    elect(&mut l, &[N2]);
    l.recv(N2, msg(5, Body::AppendResponse { success: false, index: 0, hint: 0 }));
    assert_eq!((l.raft.role(), l.raft.term(), l.raft.vote()), (Role::Follower, 5, None));
    // A candidate, on a refused vote.
    let mut c = boot(classic(N1, 3));
    fire(&mut c);
    assert_eq!(c.raft.role(), Role::Candidate);
    c.recv(N2, msg(3, Body::VoteResponse { granted: false }));
    assert_eq!((c.raft.role(), c.raft.term()), (Role::Follower, 3));
    // A follower, on a request.
    let mut f = boot(config(N2, 3));
    f.recv(N3, msg(4, Body::Heartbeat { commit: 0, round: 0 }));
    assert_eq!((f.raft.role(), f.raft.term(), f.raft.leader()), (Role::Follower, 4, Some(N3)));
    // Kaelix: pre-votes do not raise the term...
    f.recv(N1, msg(9, Body::PreVote { last_index: 0, last_term: 0 }));
    assert_eq!(f.raft.term(), 4);
    // ...and neither does a vote request inside the lease (just heard n3).
    f.recv(N1, msg(9, Body::Vote { last_index: 0, last_term: 0, transfer: false }));
    assert_eq!((f.raft.term(), f.raft.leader()), (4, Some(N3)));
}

// ----- Followers --------------------------------------------------------------

/// Followers: "Respond to RPCs from candidates and leaders."
#[test]
fn followers_respond_to_rpcs_from_candidates_and_leaders() {
    let mut f = boot(config(N2, 3));
    let mut answers = |from: NodeId, m: Message| {
        let mut out = f.recv(from, m);
        out.extend(f.settle());
        let replies = sends(&out);
        assert_eq!(replies.len(), 1, "exactly one answer: {replies:?}");
        assert_eq!(replies[0].0, from, "to the sender");
        replies[0].1.body.kind()
    };
    assert_eq!(answers(N1, msg(1, Body::PreVote { last_index: 0, last_term: 0 })), "pre-vote-resp");
    assert_eq!(answers(N1, msg(1, Body::Vote { last_index: 0, last_term: 0, transfer: false })), "vote-resp");
    assert_eq!(answers(N1, append(1, (0, 0), &[(1, 1)], 0)), "append-resp");
    assert_eq!(answers(N1, msg(1, Body::Heartbeat { commit: 1, round: 0 })), "heartbeat-resp");
    let chunk = Body::Snapshot {
        index: 5,
        snapshot_term: 1,
        config: Configuration::new([N1, N2, N3]),
        offset: 0,
        data: Bytes::from_static(b"state"),
        done: true,
    };
    assert_eq!(answers(N1, msg(1, chunk)), "snapshot-resp");
}

/// Followers: "If election timeout elapses without receiving AppendEntries
/// RPC from current leader or granting vote to candidate: convert to
/// candidate."
///
/// Kaelix: heartbeats are their own message; with PreVote the member first
/// becomes a pre-candidate (same term), checked at the end.
#[test]
fn followers_become_candidates_when_the_election_timeout_elapses_without_contact() {
    let mut f = boot(classic(N2, 3));
    // Heard from the leader every 100ms for a second: never campaigns.
    for k in 1..=10 {
        f.now = Instant::ZERO + Duration::from_millis(100 * k);
        f.timeout();
        f.recv(N1, msg(1, Body::Heartbeat { commit: 0, round: 0 }));
        assert_eq!(f.raft.role(), Role::Follower);
        timer_is_reset(&f);
    }
    // Granting a vote resets the timer too.
    f.advance(Duration::from_millis(200));
    f.recv(N3, msg(2, Body::Vote { last_index: 0, last_term: 0, transfer: false }));
    f.settle();
    assert_eq!(f.raft.vote(), Some(N3));
    timer_is_reset(&f);
    // Silence: at the deadline, a candidate of the next term.
    let term = f.raft.term();
    fire(&mut f);
    assert_eq!((f.raft.role(), f.raft.term()), (Role::Candidate, term + 1));

    // Kaelix with PreVote: a pre-candidate, term unchanged.
    let mut p = boot(config(N2, 3));
    fire(&mut p);
    assert_eq!((p.raft.role(), p.raft.term()), (Role::PreCandidate, 0));
}

// ----- Candidates -------------------------------------------------------------

/// Candidates (§5.2): "On conversion to candidate, start election:
/// increment currentTerm, vote for self, reset election timer, send
/// RequestVote RPCs to all other servers."
///
/// Kaelix: the vote requests leave once the candidate's own vote is on disk.
#[test]
fn candidates_increment_the_term_vote_for_themselves_reset_the_timer_and_request_votes() {
    let mut c = boot(classic(N1, 3));
    let out = fire(&mut c);
    assert_eq!((c.raft.role(), c.raft.term(), c.raft.vote()), (Role::Candidate, 1, Some(N1)));
    timer_is_reset(&c);
    let persisted: Vec<HardState> = out
        .iter()
        .filter_map(|o| match o {
            Output::Persist(w) => w.hard_state,
            _ => None,
        })
        .collect();
    assert_eq!(persisted, [HardState { term: 1, vote: Some(N1), commit: 0, recovering: false }]);
    assert!(sends(&out).is_empty(), "no request before our own vote is durable");
    let out = c.settle();
    let requests = sends(&out);
    assert_eq!(requests.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [N2, N3], "every other server");
    for (_, m) in requests {
        assert_eq!(m, msg(1, Body::Vote { last_index: 0, last_term: 0, transfer: false }));
    }
}

/// Candidates: "If votes received from majority of servers: become leader."
#[test]
fn candidates_become_leaders_with_votes_from_a_majority() {
    let mut c = boot(classic(N1, 5));
    fire(&mut c);
    c.settle();
    c.recv(N2, msg(1, Body::VoteResponse { granted: true }));
    c.recv(N3, msg(1, Body::VoteResponse { granted: false }));
    assert_eq!(c.raft.role(), Role::Candidate, "two of five");
    c.recv(NodeId(4), msg(1, Body::VoteResponse { granted: true }));
    assert_eq!(c.raft.role(), Role::Leader, "three of five");

    // Kaelix: our own vote counts once it is durable.
    let mut c = boot(classic(N1, 3));
    fire(&mut c);
    c.recv(N2, msg(1, Body::VoteResponse { granted: true }));
    assert_eq!(c.raft.role(), Role::Candidate, "own vote not on disk yet");
    c.settle();
    assert_eq!(c.raft.role(), Role::Leader);
}

/// Candidates: "If AppendEntries RPC received from new leader: convert to
/// follower."
#[test]
fn candidates_become_followers_on_append_entries_from_a_new_leader() {
    let mut c = boot(classic(N1, 3));
    fire(&mut c);
    c.settle();
    let out = c.recv(N3, append(1, (0, 0), &[(1, 1)], 0));
    assert_eq!((c.raft.role(), c.raft.term(), c.raft.leader()), (Role::Follower, 1, Some(N3)));
    c.settle();
    assert!(out.iter().any(|o| matches!(o, Output::RoleChanged { role: Role::Follower, .. })));
    assert_eq!(log_of(&c), [(1, 1)], "and takes the leader's entries");
}

/// Candidates: "If election timeout elapses: start new election."
///
/// Kaelix with PreVote: the candidate starts over with a pre-vote, raising
/// its term again only if a majority would vote for it.
#[test]
fn candidates_start_a_new_election_when_the_election_timeout_elapses() {
    let mut c = boot(classic(N1, 5));
    fire(&mut c);
    c.settle();
    // A split vote: two grants of five, the rest silent.
    c.recv(N2, msg(1, Body::VoteResponse { granted: true }));
    assert_eq!(c.raft.role(), Role::Candidate);
    let out = fire(&mut c);
    assert_eq!((c.raft.role(), c.raft.term(), c.raft.vote()), (Role::Candidate, 2, Some(N1)));
    let out = [out, c.settle()].concat();
    assert_eq!(sends(&out).len(), 4, "new vote requests to all");
    assert!(sends(&out).iter().all(|(_, m)| m.term == 2));

    let mut p = boot(config(N1, 3));
    fire(&mut p);
    p.recv(N2, msg(1, Body::PreVoteResponse { granted: true }));
    p.settle();
    assert_eq!((p.raft.role(), p.raft.term()), (Role::Candidate, 1));
    let out = fire(&mut p);
    assert_eq!((p.raft.role(), p.raft.term()), (Role::PreCandidate, 1));
    assert!(sends(&out).iter().all(|(_, m)| m.body == Body::PreVote { last_index: 0, last_term: 0 } && m.term == 2));
}

// ----- Leaders ------------------------------------------------------------------

/// Leaders: "Upon election: send initial empty AppendEntries RPCs
/// (heartbeat) to each server; repeat during idle periods to prevent
/// election timeouts (§5.2)."
///
/// Kaelix: the initial append carries the leader's no-op; idle periods get
/// `Heartbeat` messages every heartbeat interval (well below the election
/// timeout).
#[test]
fn leaders_send_an_initial_append_to_each_server_and_heartbeats_when_idle() {
    let mut l = boot(config(N1, 3));
    let out = elect(&mut l, &[N2]);
    for peer in [N2, N3] {
        let appends: Vec<Message> =
            to(&out, peer).into_iter().filter(|m| matches!(m.body, Body::Append { .. })).collect();
        assert_eq!(appends.len(), 1, "one initial append to {peer}");
        let Body::Append { prev_index: 0, entries, .. } = &appends[0].body else { panic!("{:?}", appends[0]) };
        assert_eq!(entries.iter().map(|e| (&e.payload, e.term)).collect::<Vec<_>>(), [(&EntryPayload::Noop, 1)]);
    }
    let interval = l.config.heartbeat_interval;
    assert!(interval < l.config.election_timeout);
    let start = l.now;
    for k in 1..=5 {
        let out = fire(&mut l);
        assert_eq!(l.now, start + interval * k, "every heartbeat interval");
        for peer in [N2, N3] {
            assert!(to(&out, peer).iter().any(|m| matches!(m.body, Body::Heartbeat { .. })), "{peer}");
        }
        l.recv(N2, msg(1, Body::HeartbeatResponse { round: 0 }));
    }
}

/// Leaders: "If command received from client: append entry to local log,
/// respond after entry applied to state machine (§5.3)."
///
/// Kaelix: `propose` returns the entry's (index, term); the driver answers
/// the client when that entry comes out as `Output::Apply`.
#[test]
fn leaders_append_client_commands_and_answer_once_they_are_applied() {
    let mut l = boot(config(N1, 3));
    elect(&mut l, &[N2]);
    l.recv(N2, ack(1, 1));
    let (index, term) = l.raft.propose(l.now, Bytes::from_static(b"cmd")).expect("leader");
    let out = l.drain();
    assert_eq!((index, term), (2, 1));
    assert_eq!(l.raft.log().entry(2).map(|e| e.payload.clone()), Some(EntryPayload::Normal(Bytes::from("cmd"))));
    assert!(applied(&out).is_empty(), "not applied before it is committed");
    l.settle();
    let out = l.recv(N2, ack(1, 2));
    let done = applied(&out);
    assert_eq!(done.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), [(index, term)], "now answer");
    // Only the leader takes commands.
    let mut f = boot(config(N2, 3));
    f.recv(N1, msg(1, Body::Heartbeat { commit: 0, round: 0 }));
    assert_eq!(f.raft.propose(f.now, Bytes::new()), Err(ProposeError::NotLeader { leader: Some(N1) }));
}

/// Leaders: "If last log index ≥ nextIndex for a follower: send
/// AppendEntries RPC with log entries starting at nextIndex."
#[test]
fn leaders_send_entries_starting_at_next_index() {
    let mut l = boot(config(N1, 3));
    elect(&mut l, &[N2]);
    l.recv(N2, ack(1, 1));
    assert_eq!(l.raft.progress(N2).map(|p| p.next_index), Some(2));
    l.raft.propose(l.now, Bytes::from_static(b"a")).expect("leader");
    l.raft.propose(l.now, Bytes::from_static(b"b")).expect("leader");
    let out = l.drain();
    let firsts: Vec<(u64, u64)> = to(&out, N2)
        .iter()
        .filter_map(|m| match &m.body {
            Body::Append { prev_index, entries, .. } => Some((*prev_index, entries[0].index)),
            _ => None,
        })
        .collect();
    assert_eq!(firsts, [(1, 2), (2, 3)], "each from the follower's nextIndex, pipelined");
}

/// Leaders: "If successful: update nextIndex and matchIndex for follower
/// (§5.3)."
#[test]
fn leaders_update_next_and_match_index_on_success() {
    let mut l = boot(config(N1, 3));
    elect(&mut l, &[N2]);
    for data in ["a", "b"] {
        l.raft.propose(l.now, Bytes::from(data)).expect("leader");
    }
    l.settle();
    l.recv(N2, ack(1, 3));
    let p = l.raft.progress(N2).expect("a follower");
    assert_eq!((p.match_index, p.next_index, p.state), (3, 4, ProgressState::Replicate));
    // A stale, smaller acknowledgement moves nothing back.
    l.recv(N2, ack(1, 1));
    let p = l.raft.progress(N2).expect("a follower");
    assert_eq!((p.match_index, p.next_index), (3, 4));
}

/// Leaders: "If AppendEntries fails because of log inconsistency: decrement
/// nextIndex and retry (§5.3)."
///
/// Kaelix: the refusal's hint (the last index that may match) lets the
/// leader skip a whole conflicting term; with no better hint than
/// `prevLogIndex − 1` this is exactly the paper's decrement.
#[test]
fn leaders_back_off_next_index_on_a_refusal_and_retry() {
    let log = [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)];
    let mut l = boot_with(config(N1, 3), 3, &log);
    elect(&mut l, &[N2]);
    let term = l.raft.term();
    assert_eq!(l.raft.progress(N3).map(|p| p.next_index), Some(7));
    // The paper's decrement: refused at 6, no better hint.
    let out = l.recv(N3, msg(term, Body::AppendResponse { success: false, index: 6, hint: 5 }));
    assert_eq!(l.raft.progress(N3).map(|p| p.next_index), Some(6));
    let retry = to(&out, N3);
    assert!(matches!(retry[..], [Message { body: Body::Append { prev_index: 5, prev_term: 3, .. }, .. }]), "{retry:?}");
    // Fast back-off: refused at 5 with a hint of 2 (n3 diverged after 2).
    let out = l.recv(N3, msg(term, Body::AppendResponse { success: false, index: 5, hint: 2 }));
    assert_eq!(l.raft.progress(N3).map(|p| p.next_index), Some(3));
    let retry = to(&out, N3);
    let [Message { body: Body::Append { prev_index: 2, prev_term: 1, entries, .. }, .. }] = &retry[..] else {
        panic!("{retry:?}")
    };
    assert_eq!(entries.first().map(|e| e.index), Some(3), "retry from the new nextIndex");
}

/// Leaders: "If there exists an N such that N > commitIndex, a majority of
/// matchIndex[i] ≥ N, and log[N].term == currentTerm: set commitIndex = N
/// (§5.3, §5.4)."
#[test]
fn leaders_commit_the_highest_index_a_majority_holds_if_it_is_of_their_term() {
    // Entries of earlier terms are not committed by counting (Figure 8).
    let mut l = boot_with(config(N1, 5), 3, &[(1, 1), (2, 2)]);
    elect(&mut l, &[N2, N3]);
    let term = l.raft.term();
    assert_eq!(log_of(&l), [(1, 1), (2, 2), (3, term)], "the no-op of its term");
    for peer in [N2, N3] {
        l.recv(peer, ack(term, 2));
    }
    assert_eq!(l.raft.commit(), 0, "2/2 is on a majority but of an older term");
    // Once an entry of its term is on a majority, it and all before commit.
    l.recv(N2, ack(term, 3));
    assert_eq!(l.raft.commit(), 0, "3 is on two of five");
    l.recv(N3, ack(term, 3));
    assert_eq!(l.raft.commit(), 3);

    // N is the highest such index: matchIndex 5, 5, 4, 3, 1 commits 4.
    let mut l = boot(config(N1, 5));
    elect(&mut l, &[N2, N3]);
    for data in ["a", "b", "c", "d"] {
        l.raft.propose(l.now, Bytes::from(data)).expect("leader");
    }
    l.settle();
    for (peer, index) in [(N2, 5), (N3, 4), (NodeId(4), 3), (NodeId(5), 1)] {
        l.recv(peer, ack(1, index));
    }
    assert_eq!(l.raft.commit(), 4);
}

// ----- AppendEntries receiver -----------------------------------------------------

/// AppendEntries RPC, receiver implementation 1: "Reply false if term <
/// currentTerm (§5.1)."
#[test]
fn append_receiver_1_refuses_a_stale_term() {
    let mut f = boot_with(config(N2, 3), 3, &[(1, 1)]);
    let out = f.recv(N1, append(2, (1, 1), &[(2, 2)], 1));
    assert_eq!(to(&out, N1), [msg(3, Body::AppendResponse { success: false, index: 0, hint: 0 })]);
    assert_eq!((log_of(&f), f.raft.term(), f.raft.commit()), (vec![(1, 1)], 3, 0));
}

/// AppendEntries receiver 2: "Reply false if log doesn't contain an entry
/// at prevLogIndex whose term matches prevLogTerm (§5.3)."
#[test]
fn append_receiver_2_refuses_when_the_previous_entry_is_missing_or_of_another_term() {
    let mut f = boot_with(config(N2, 3), 2, &[(1, 1), (2, 1)]);
    for prev in [(3, 2), (2, 2)] {
        let out = f.recv(N1, append(2, prev, &[(prev.0 + 1, 2)], 0));
        let [Message { body: Body::AppendResponse { success: false, index, .. }, .. }] = to(&out, N1)[..] else {
            panic!("a refusal for prev {prev:?}")
        };
        assert_eq!(index, prev.0, "names the refused prevLogIndex");
    }
    assert_eq!(log_of(&f), [(1, 1), (2, 1)], "nothing stored");
}

/// AppendEntries receiver 3: "If an existing entry conflicts with a new
/// one (same index but different terms), delete the existing entry and all
/// that follow it (§5.3)."
#[test]
fn append_receiver_3_deletes_a_conflicting_entry_and_all_that_follow() {
    let mut f = boot_with(config(N2, 3), 2, &[(1, 1), (2, 1), (3, 2), (4, 2)]);
    f.recv(N1, append(3, (2, 1), &[(3, 3)], 0));
    assert_eq!(log_of(&f), [(1, 1), (2, 1), (3, 3)]);
    f.settle();
    assert_eq!(f.disk.state.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), log_of(&f), "on disk too");
    // An append that agrees with what is held deletes nothing.
    f.recv(N1, append(3, (3, 3), &[(4, 3)], 0));
    f.recv(N1, append(3, (1, 1), &[(2, 1), (3, 3)], 0));
    assert_eq!(log_of(&f), [(1, 1), (2, 1), (3, 3), (4, 3)]);
}

/// AppendEntries receiver 4: "Append any new entries not already in the
/// log."
#[test]
fn append_receiver_4_appends_new_entries_not_already_in_the_log() {
    let mut f = boot(config(N2, 3));
    f.recv(N1, append(1, (0, 0), &[(1, 1), (2, 1)], 0));
    f.recv(N1, append(1, (1, 1), &[(2, 1), (3, 1)], 0));
    assert_eq!(log_of(&f), [(1, 1), (2, 1), (3, 1)], "2 once, 3 added");
    let out = f.settle();
    let written: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                message: Message { body: Body::AppendResponse { success: true, index, .. }, .. }, ..
            } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(written, [2, 3]);
}

/// AppendEntries receiver 5: "If leaderCommit > commitIndex, set
/// commitIndex = min(leaderCommit, index of last new entry)."
#[test]
fn append_receiver_5_commits_up_to_the_leader_commit_or_the_last_new_entry() {
    let mut f = boot(config(N2, 3));
    f.recv(N1, append(1, (0, 0), &[(1, 1), (2, 1)], 1));
    assert_eq!(f.raft.commit(), 1, "leaderCommit");
    f.recv(N1, append(1, (2, 1), &[], 5));
    assert_eq!(f.raft.commit(), 2, "the last new entry");
    // A stale entry beyond what the append vouches for is not committed.
    let mut f = boot_with(config(N2, 3), 2, &[(1, 1), (2, 1), (3, 2)]);
    f.recv(N1, append(3, (1, 1), &[(2, 1)], 3));
    assert_eq!(f.raft.commit(), 2, "3/2 may not be the leader's entry 3");
}

// ----- RequestVote receiver ----------------------------------------------------------

/// RequestVote RPC, receiver implementation 1: "Reply false if term <
/// currentTerm (§5.1)."
///
/// Kaelix does not answer a stale vote request at all (the stale candidate
/// learns the newer term from the group's leader, or — with PreVote, under
/// which it could not even be a candidate unnoticed — from pre-vote
/// refusals); it certainly never grants one.
#[test]
fn vote_receiver_1_never_grants_a_stale_term() {
    let mut f = boot_with(classic(N2, 3), 4, &[]);
    let mut out = f.recv(N1, msg(3, Body::Vote { last_index: 9, last_term: 3, transfer: false }));
    out.extend(f.settle());
    assert!(!sends(&out).iter().any(|(_, m)| m.body == Body::VoteResponse { granted: true }));
    assert_eq!((f.raft.term(), f.raft.vote()), (4, None));
}

/// RequestVote receiver 2: "If votedFor is null or candidateId, and
/// candidate's log is at least as up-to-date as receiver's log, grant vote
/// (§5.2, §5.4)."
///
/// Kaelix adds: a follower that knows the leader of the current term votes
/// for nobody else in it, and the leader lease (with CheckQuorum) ignores
/// vote requests for an election timeout after hearing from a leader.
#[test]
fn vote_receiver_2_grants_one_candidate_per_term_whose_log_is_up_to_date() {
    let vote = |f: &mut Member, from: NodeId, term: u64, last: (u64, u64)| -> bool {
        let mut out = f.recv(from, msg(term, Body::Vote { last_index: last.0, last_term: last.1, transfer: false }));
        out.extend(f.settle());
        match to(&out, from)[..] {
            [Message { body: Body::VoteResponse { granted }, .. }] => granted,
            ref other => panic!("one answer, got {other:?}"),
        }
    };
    let mut f = boot_with(classic(N2, 3), 1, &[(1, 1), (2, 1), (3, 2)]);
    assert!(!vote(&mut f, N1, 3, (9, 1)), "older last term");
    assert!(!vote(&mut f, N1, 3, (2, 2)), "same last term, shorter");
    assert!(vote(&mut f, N1, 3, (3, 2)), "as up to date");
    assert!(!vote(&mut f, N3, 3, (5, 2)), "already voted for n1 in term 3");
    assert!(vote(&mut f, N1, 3, (3, 2)), "votedFor is the candidate: again");
    assert!(vote(&mut f, N3, 4, (4, 3)), "a new term, a new vote");

    // Kaelix: knowing this term's leader, no vote for another in it.
    let mut f = boot(classic(N2, 3));
    f.recv(N1, msg(1, Body::Heartbeat { commit: 0, round: 0 }));
    assert!(!vote(&mut f, N3, 1, (0, 0)));
    // Kaelix: the lease ignores a request (no answer) within a timeout.
    let mut f = boot(config(N2, 3));
    f.recv(N1, msg(1, Body::Heartbeat { commit: 0, round: 0 }));
    let out = f.recv(N3, msg(2, Body::Vote { last_index: 0, last_term: 0, transfer: false }));
    assert!(sends(&out).is_empty() && f.raft.term() == 1);
    f.advance(f.config.election_timeout);
    assert!(vote(&mut f, N3, 2, (0, 0)), "after the lease");
}

// ----- Persistent state ---------------------------------------------------------------

/// State, persistent on all servers: "(Updated on stable storage before
/// responding to RPCs) currentTerm, votedFor, log[]."
///
/// Kaelix persists the same state as `Output::Persist` writes, and holds
/// exactly the messages that assert it — a granted vote, a successful
/// append, an installed snapshot, a candidate's vote request — until the
/// write has completed; refusals assert nothing and go at once. A crash
/// before the write completes loses only state nobody was told of.
#[test]
fn persistent_state_is_on_stable_storage_before_an_answer_relies_on_it() {
    let mut f = boot(classic(N2, 3));
    // A vote.
    let out = f.recv(N1, msg(1, Body::Vote { last_index: 0, last_term: 0, transfer: false }));
    assert!(sends(&out).is_empty(), "the grant waits");
    assert_eq!(f.disk.state.hard_state.vote, None);
    let out = f.write_done(1);
    assert_eq!((f.disk.state.hard_state.term, f.disk.state.hard_state.vote), (1, Some(N1)));
    assert_eq!(to(&out, N1), [msg(1, Body::VoteResponse { granted: true })]);
    // Entries.
    let out = f.recv(N1, append(1, (0, 0), &[(1, 1), (2, 1)], 0));
    assert!(sends(&out).is_empty(), "the acknowledgement waits");
    let out = f.write_done(1);
    assert_eq!(f.disk.state.entries.len(), 2);
    assert_eq!(to(&out, N1), [ack(1, 2)]);
    // A refusal does not wait (it claims nothing), even with a write in
    // flight: n3 is granted term 2 (pending), n1 refused at once.
    let out = f.recv(N3, msg(2, Body::Vote { last_index: 2, last_term: 1, transfer: false }));
    assert!(sends(&out).is_empty());
    let out = f.recv(N1, msg(2, Body::Vote { last_index: 2, last_term: 1, transfer: false }));
    assert_eq!(to(&out, N1), [msg(2, Body::VoteResponse { granted: false })]);
    let out = f.settle();
    assert_eq!(to(&out, N3), [msg(2, Body::VoteResponse { granted: true })]);
    // A snapshot.
    let chunk = Body::Snapshot {
        index: 5,
        snapshot_term: 2,
        config: Configuration::new([N1, N2, N3]),
        offset: 0,
        data: Bytes::from_static(b"state"),
        done: true,
    };
    let out = f.recv(N3, msg(2, chunk));
    assert!(sends(&out).is_empty(), "installed, but not yet durably");
    let out = f.settle();
    assert_eq!(f.disk.state.snapshot.as_ref().map(|s| s.index), Some(5));
    assert_eq!(to(&out, N3), [msg(2, Body::SnapshotResponse { index: 5, offset: 0, done: true })]);
    // A crash before a vote is durable forgets it, and no one heard of it.
    let out = f.recv(N1, msg(3, Body::Vote { last_index: 5, last_term: 2, transfer: false }));
    assert!(sends(&out).is_empty());
    assert_eq!(f.raft.vote(), Some(N1));
    f.restart(false);
    assert_eq!((f.raft.term(), f.raft.vote()), (2, Some(N3)));
}

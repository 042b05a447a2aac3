//! Raft's messages between members of one group.

use bytes::Bytes;

use super::{Configuration, Entry};

/// One message; `term` is the sender's term (for `PreVote`, the term the
/// sender would campaign in; for a granted `PreVoteResponse`, that term
/// echoed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sender's term (see the type docs).
    pub term: u64,
    /// What it says.
    pub body: Body,
}

/// The kinds of Raft message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Would you vote for me in `term` (nothing changes state yet)?
    PreVote {
        /// Candidate's last log index.
        last_index: u64,
        /// Candidate's last log term.
        last_term: u64,
    },
    /// Answer to a `PreVote`.
    PreVoteResponse {
        /// Whether the vote would be granted.
        granted: bool,
    },
    /// RequestVote (§5.2).
    Vote {
        /// Candidate's last log index.
        last_index: u64,
        /// Candidate's last log term.
        last_term: u64,
        /// A leadership transfer: voters ignore their leader lease.
        transfer: bool,
    },
    /// Answer to a `Vote`.
    VoteResponse {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (§5.3).
    Append {
        /// Index of the entry before `entries`.
        prev_index: u64,
        /// Its term.
        prev_term: u64,
        /// Entries to store (may be empty).
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: u64,
    },
    /// Answer to an `Append`.
    AppendResponse {
        /// Whether the entries were stored (durably).
        success: bool,
        /// On success, the last index now known to match; on refusal, the
        /// `prev_index` that was refused.
        index: u64,
        /// On refusal, the last index that may match (fast back-off).
        hint: u64,
    },
    /// Keeps followers' election timers quiet and confirms leadership for
    /// ReadIndex rounds.
    Heartbeat {
        /// min(the follower's match index, the leader's commit).
        commit: u64,
        /// The ReadIndex round this heartbeat confirms (0: none).
        round: u64,
    },
    /// Answer to a `Heartbeat`.
    HeartbeatResponse {
        /// The round echoed.
        round: u64,
    },
    /// One chunk of a snapshot (InstallSnapshot, §7).
    Snapshot {
        /// The snapshot's last included index.
        index: u64,
        /// Its term.
        snapshot_term: u64,
        /// The configuration as of `index`.
        config: Configuration,
        /// Byte offset of `data` in the snapshot.
        offset: u64,
        /// The chunk.
        data: Bytes,
        /// Whether this is the last chunk.
        done: bool,
    },
    /// Answer to a `Snapshot` chunk.
    SnapshotResponse {
        /// The snapshot's index.
        index: u64,
        /// The next byte offset wanted; with `done`, the snapshot is
        /// installed durably.
        offset: u64,
        /// Installed.
        done: bool,
    },
    /// Leadership transfer: campaign now.
    TimeoutNow,
}

impl Body {
    /// A short name for traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::PreVote { .. } => "pre-vote",
            Body::PreVoteResponse { .. } => "pre-vote-resp",
            Body::Vote { .. } => "vote",
            Body::VoteResponse { .. } => "vote-resp",
            Body::Append { .. } => "append",
            Body::AppendResponse { .. } => "append-resp",
            Body::Heartbeat { .. } => "heartbeat",
            Body::HeartbeatResponse { .. } => "heartbeat-resp",
            Body::Snapshot { .. } => "snapshot",
            Body::SnapshotResponse { .. } => "snapshot-resp",
            Body::TimeoutNow => "timeout-now",
        }
    }
}

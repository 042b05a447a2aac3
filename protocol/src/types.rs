//! The value types frames carry besides messages: names, acknowledgement
//! levels, storage and retention settings, positions, topic descriptions,
//! the server's handshake information.

use std::fmt;

use kaelix_broker::topic::Topic;
use kaelix_core::NodeId;

use crate::MAX_NAME_BYTES;

/// Why text is not a [`Name`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing at all.
    #[error("name is empty")]
    Empty,
    /// Longer than [`MAX_NAME_BYTES`].
    #[error("name is {len} bytes; the limit is {MAX_NAME_BYTES}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A control character (names are printed in logs and errors).
    #[error("name has a control character at byte {at}")]
    Control {
        /// Its byte offset.
        at: usize,
    },
}

/// A short identifier: group and queue-group names, the client's and the
/// server's self-descriptions, a leader's address. 1..=[`MAX_NAME_BYTES`]
/// bytes of UTF-8 without control characters; valid by construction, so
/// every frame holding one is encodable.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// What a client logs in with (the `Hello`'s optional tail), checked
/// against the server's `[auth]` section as a NATS `CONNECT` is. A token
/// or password is at most [`crate::MAX_SECRET_BYTES`] of UTF-8 (encoding
/// a longer one panics; the client refuses it first). `Debug` never
/// prints a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// The server's shared token.
    Token(String),
    /// A configured user and its password.
    User {
        /// The user's name.
        user: Name,
        /// The password, in clear over the connection (use TLS).
        password: String,
    },
}

impl Credentials {
    /// The secret's length, to check against [`crate::MAX_SECRET_BYTES`].
    pub fn secret_len(&self) -> usize {
        match self {
            Credentials::Token(token) => token.len(),
            Credentials::User { password, .. } => password.len(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::User { user, .. } => {
                f.debug_struct("User").field("user", user).field("password", &"<redacted>").finish()
            }
        }
    }
}

impl Name {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Name, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(NameError::TooLong { len: name.len() });
        }
        if let Some((at, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
            return Err(NameError::Control { at });
        }
        Ok(Name(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({:?})", self.0)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Name, NameError> {
        Name::new(s)
    }
}

impl std::str::FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Name, NameError> {
        Name::new(s)
    }
}

/// When the server answers a `Produce` (see PROTOCOL.md, "Acknowledgements").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Acks {
    /// No answer at all, not even an error: fire and forget.
    None,
    /// Once the messages are appended to the partition leader's log.
    Leader,
    /// Once the messages are committed: synced to disk (durable topics) or
    /// replicated to a majority (replicated topics); the same as `Leader`
    /// for memory topics.
    #[default]
    Committed,
}

impl Acks {
    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::Committed => 2,
        }
    }

    /// The level with wire value `v`, if defined.
    pub fn from_u8(v: u8) -> Option<Acks> {
        match v {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            2 => Some(Acks::Committed),
            _ => None,
        }
    }
}

/// Where a topic's partitions live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StorageSpec {
    /// In memory only: a restart starts empty.
    #[default]
    Memory,
    /// Segment files on the server's disk; committed once synced.
    Durable,
    /// Each partition replicated by a Raft group of `replication_factor`
    /// servers; committed once a majority has it.
    Replicated {
        /// Replicas per partition (the server refuses 0).
        replication_factor: u8,
    },
}

/// How much each partition of a topic retains. `None` leaves a dimension
/// unbounded (the server may apply its own defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Retention {
    /// Most records kept per partition.
    pub max_records: Option<u64>,
    /// Most bytes kept per partition.
    pub max_bytes: Option<u64>,
    /// Records older than this many milliseconds expire.
    pub max_age_ms: Option<u64>,
}

/// Where an appended message landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The partition.
    pub partition: u32,
    /// The offset in it.
    pub offset: u64,
}

/// How many messages and bytes one read returns, and how long it may wait
/// for the first message (long poll).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FetchLimits {
    /// Most messages (the server refuses 0 and caps it at its `max_batch`).
    pub max_messages: u32,
    /// Most bytes of encoded messages; the first message is returned even
    /// if it alone is larger, so a reader always progresses.
    pub max_bytes: u32,
    /// Longest the server holds the request while nothing is available;
    /// 0 answers at once.
    pub max_wait_ms: u32,
}

/// One partition of a topic, as `DescribeTopic` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PartitionInfo {
    /// The partition.
    pub partition: u32,
    /// The oldest retained offset (equal to `high_watermark` when empty).
    pub low_watermark: u64,
    /// The next offset to be read from the end: everything below it is
    /// committed and readable.
    pub high_watermark: u64,
}

/// A topic's settings and partitions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicDescription {
    /// The topic.
    pub topic: Topic,
    /// Where it is stored.
    pub storage: StorageSpec,
    /// What it retains.
    pub retention: Retention,
    /// Its partitions, in partition order.
    pub partitions: Vec<PartitionInfo>,
}

/// One entry of `ListTopics`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicSummary {
    /// The topic.
    pub topic: Topic,
    /// Its partition count.
    pub partitions: u32,
    /// Where it is stored.
    pub storage: StorageSpec,
}

/// What the server says about itself in its handshake answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerInfo {
    /// The protocol version chosen for the connection.
    pub version: u16,
    /// The server's node id.
    pub server_id: NodeId,
    /// The server's software version, e.g. `kaelix/0.1.0`.
    pub server_version: Name,
    /// Largest frame the server accepts (bytes after the length prefix).
    pub max_frame_bytes: u32,
    /// Most messages the server accepts in one `Produce` and returns in one
    /// fetch.
    pub max_batch: u32,
}

/// Where the leader of a partition is, as a `NotLeader` error knows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaderHint {
    /// The leader's node id.
    pub node: NodeId,
    /// Its native-protocol address (`host:port`), if known.
    pub address: Option<Name>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert_eq!(Name::new("orders-eu").unwrap().as_str(), "orders-eu");
        assert_eq!(Name::new("kaelix/0.1.0 (linux)").unwrap().to_string(), "kaelix/0.1.0 (linux)");
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("x".repeat(256)), Err(NameError::TooLong { len: 256 }));
        assert!(Name::new("é".repeat(127)).is_ok(), "254 bytes");
        assert_eq!(Name::new("a\nb"), Err(NameError::Control { at: 1 }));
        assert_eq!("g".parse::<Name>().unwrap(), Name::try_from("g").unwrap());
    }

    #[test]
    fn acks_wire_values() {
        for acks in [Acks::None, Acks::Leader, Acks::Committed] {
            assert_eq!(Acks::from_u8(acks.as_u8()), Some(acks));
        }
        assert_eq!(Acks::from_u8(3), None);
        assert_eq!(Acks::default(), Acks::Committed);
    }
}

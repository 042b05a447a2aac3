//! How a topic's partitions are stored, and the on-disk formats of the
//! `durable` kind.
//!
//! # Kinds
//!
//! * [`StorageKind::Memory`]: the partition log lives in memory only
//!   (bounded by its retention); a restart starts empty. The default for the
//!   embedded library.
//! * [`StorageKind::Durable`]: the in-memory log is mirrored to segment
//!   files on the runtime's [`Storage`](kaelix_core::runtime::Storage). A
//!   publish is acknowledged once its record is synced, as the topic's
//!   [`FlushPolicy`] schedules syncs; consumer-group commits are written
//!   too, so a group resumes after a restart where it left off.
//! * [`StorageKind::Replicated`]: each partition is a Raft group across
//!   `factor` nodes; the broker's log holds committed records only, applied
//!   in commit order on every replica (see [`crate::replication`]).
//!
//! # The sans-IO boundary
//!
//! [`BrokerCore`](crate::BrokerCore) never touches a file. For durable
//! topics it queues [`StorageOutput`]s (records to append, a new retention
//! floor, a commit, a topic's settings), drained with
//! `BrokerCore::poll_storage_output`; the driver ([`crate::durable`])
//! performs them and reports what is synced back with
//! `BrokerCore::handle_persisted`. Only then are the records visible to
//! consumer groups and reads, and only then is the publish acknowledged.
//! Push subscriptions see a record at once (they are live feeds, not
//! positions in the log).
//!
//! Why reads stop at the synced end: an offset a consumer group commits
//! must name a record that survives a crash. If a group could read past the
//! synced end and commit there, a crash would lose those records, the next
//! publishes would reuse their offsets, and the group would skip them.
//!
//! # Files
//!
//! One flat namespace (the contract's). Every file is a sequence of frames:
//!
//! | size | field |
//! |---|---|
//! | 4 | body length `n` (1 ..= [`MAX_FRAME_BODY`]) |
//! | 4 | CRC-32 of the length and the body |
//! | n | body |
//!
//! * `seg-<topic id:016x>-<partition:08x>-<base offset:020>`: a segment of a
//!   partition: frame bodies are [`Message`] encodings (with partition and
//!   offset), offsets dense from the base. A partition's segments are
//!   consecutive; the newest is appended to until it passes the topic's
//!   `segment_bytes`, then a new one starts. Retention deletes a segment
//!   whole once every record in it is below the retention floor.
//! * `meta-<generation:020>`: topics (id, name, settings) and group commits,
//!   as [`MetaRecord`]s; the last record for a key wins. At every start the
//!   broker writes the current state as a new generation, syncs it, and
//!   removes the older ones, so the file stays as small as the state.
//!
//! **Recovery** reads each file and keeps its frames up to the first one
//! that is incomplete or fails its checksum (or, in a segment, is not the
//! next offset): everything after that point was never synced — writes to a
//! file are appended and synced in order, so synced data is a prefix —
//! and the file is cut there durably. Synced data is not protected against
//! corruption at rest here (no replica to repair from): a checksum failure
//! inside synced data loses the records after it, which is reported.

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_core::codec::{self, CodecError, Reader};
use kaelix_core::time::{Duration, duration_nanos};

use crate::message::Message;
use crate::partition::RetentionPolicy;
use crate::topic::Topic;

/// How a topic's partitions are stored (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StorageKind {
    /// In memory only.
    #[default]
    Memory,
    /// Segment files, acknowledged once synced.
    Durable(DurableConfig),
    /// A Raft group per partition, acknowledged once committed (see
    /// [`crate::replication`]).
    Replicated(ReplicationConfig),
}

/// Settings of a replicated topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// Replicas of each partition: 3 or 5 (a majority survives one or two
    /// failures).
    pub factor: u8,
}

impl ReplicationConfig {
    /// `factor` replicas, which must be 3 or 5.
    pub fn new(factor: u8) -> Result<Self, String> {
        match factor {
            3 | 5 => Ok(ReplicationConfig { factor }),
            other => Err(format!("replication factor must be 3 or 5, not {other}")),
        }
    }
}

/// Settings of a durable topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurableConfig {
    /// When records are synced (and so acknowledged).
    pub flush: FlushPolicy,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
}

/// The default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

impl Default for DurableConfig {
    fn default() -> Self {
        DurableConfig { flush: FlushPolicy::EveryBatch, segment_bytes: DEFAULT_SEGMENT_BYTES }
    }
}

/// When a durable topic's writes are synced. A publish is acknowledged only
/// after the sync that covers it, so the policy trades publish latency for
/// fewer syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Sync after every batch the writer takes (everything queued when it
    /// wakes): the lowest latency; under load, batches grow by themselves.
    EveryBatch,
    /// Sync once the oldest unsynced write is `max_delay` old or `max_bytes`
    /// are unsynced, whichever comes first.
    Interval {
        /// Longest a write waits for its sync.
        max_delay: Duration,
        /// Most bytes written but not synced.
        max_bytes: u64,
    },
}

/// A storage effect of a [`BrokerCore`](crate::BrokerCore) call, performed
/// by the driver in the order drained.
#[derive(Clone, Debug, PartialEq)]
pub enum StorageOutput {
    /// Record a durable topic's settings (it was created or grew) or a
    /// consumer group's commit in the metadata file.
    Meta(MetaRecord),
    /// Append these records, at consecutive offsets, to the partition.
    Append {
        /// The topic's id.
        id: u64,
        /// The partition.
        partition: u32,
        /// The records, each with its partition and offset set.
        records: Vec<Message>,
    },
    /// Retention removed every record below `earliest`.
    Trim {
        /// The topic's id.
        id: u64,
        /// The partition.
        partition: u32,
        /// The new earliest retained offset.
        earliest: u64,
    },
}

/// Largest frame body: a message at its largest plus headroom.
pub const MAX_FRAME_BODY: usize = 64 << 20;

/// Appends one frame around `body` to `out`.
pub fn put_frame(out: &mut BytesMut, body: &[u8]) {
    assert!(!body.is_empty() && body.len() <= MAX_FRAME_BODY, "frame bodies are 1..=MAX_FRAME_BODY bytes");
    let len = (body.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(body);
    out.put_slice(&len);
    out.put_u32_le(crc.finalize());
    out.put_slice(body);
}

/// The frames of a file, up to the first damaged one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameScan {
    /// Bodies of the intact frames, in order (slices of the input).
    pub bodies: Vec<Bytes>,
    /// Bytes the intact frames span: the length to cut the file to.
    pub valid_len: u64,
    /// Why the scan stopped early, if it did.
    pub damage: Option<String>,
}

/// Reads frames from `file` (see the module docs).
pub fn scan_frames(file: &Bytes) -> FrameScan {
    let mut bodies = Vec::new();
    let mut pos = 0usize;
    let damage = loop {
        if pos == file.len() {
            break None;
        }
        let rest = file.slice(pos..);
        let mut r = Reader::new(&rest);
        let header = (r.len_u32("frame length", MAX_FRAME_BODY), r.u32("frame checksum"));
        let (len, crc) = match header {
            (Ok(0), _) => break Some(format!("empty frame at byte {pos}")),
            (Ok(len), Ok(crc)) => (len, crc),
            (Err(e), _) | (_, Err(e)) => break Some(format!("at byte {pos}: {e}")),
        };
        let body = match r.bytes(len, "frame body") {
            Ok(b) => b,
            Err(e) => break Some(format!("at byte {pos}: {e}")),
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&(len as u32).to_le_bytes());
        h.update(&body);
        if h.finalize() != crc {
            break Some(format!("checksum mismatch in the frame at byte {pos}"));
        }
        bodies.push(body);
        pos += 8 + len;
    };
    FrameScan { bodies, valid_len: pos as u64, damage }
}

/// The name of the segment of topic `id`, `partition`, starting at `base`.
pub fn segment_name(id: u64, partition: u32, base: u64) -> String {
    format!("seg-{id:016x}-{partition:08x}-{base:020}")
}

/// Parses a [`segment_name`]: `(topic id, partition, base offset)`.
pub fn parse_segment_name(name: &str) -> Option<(u64, u32, u64)> {
    let rest = name.strip_prefix("seg-")?;
    let mut parts = rest.split('-');
    let id = parts.next().filter(|s| s.len() == 16)?;
    let partition = parts.next().filter(|s| s.len() == 8)?;
    let base = parts.next().filter(|s| s.len() == 20)?;
    if parts.next().is_some() {
        return None;
    }
    Some((u64::from_str_radix(id, 16).ok()?, u32::from_str_radix(partition, 16).ok()?, base.parse().ok()?))
}

/// The name of metadata generation `generation`.
pub fn meta_name(generation: u64) -> String {
    format!("meta-{generation:020}")
}

/// Parses a [`meta_name`].
pub fn parse_meta_name(name: &str) -> Option<u64> {
    name.strip_prefix("meta-").filter(|s| s.len() == 20)?.parse().ok()
}

/// A record of the metadata file.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaRecord {
    /// A durable topic's settings.
    Topic {
        /// Its id.
        id: u64,
        /// Its name.
        topic: Topic,
        /// Partition count.
        partitions: u32,
        /// Retention.
        retention: RetentionPolicy,
        /// Durable settings.
        durable: DurableConfig,
    },
    /// A group's committed offset.
    Commit {
        /// The group.
        group: String,
        /// The topic's id.
        id: u64,
        /// The partition.
        partition: u32,
        /// Next offset to read.
        next: u64,
    },
}

const META_TOPIC: u8 = 1;
const META_COMMIT: u8 = 2;
const FLUSH_EVERY_BATCH: u8 = 0;
const FLUSH_INTERVAL: u8 = 1;
/// Longest consumer-group name stored.
pub const MAX_GROUP_NAME: usize = 1024;

impl MetaRecord {
    /// The record's bytes (a frame body).
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        match self {
            MetaRecord::Topic { id, topic, partitions, retention, durable } => {
                b.put_u8(META_TOPIC);
                b.put_u64_le(*id);
                b.put_u32_le(*partitions);
                codec::put_opt_u64(&mut b, retention.max_records);
                codec::put_opt_u64(&mut b, retention.max_bytes);
                codec::put_opt_u64(&mut b, retention.max_age.map(duration_nanos));
                match durable.flush {
                    FlushPolicy::EveryBatch => b.put_u8(FLUSH_EVERY_BATCH),
                    FlushPolicy::Interval { max_delay, max_bytes } => {
                        b.put_u8(FLUSH_INTERVAL);
                        b.put_u64_le(duration_nanos(max_delay));
                        b.put_u64_le(max_bytes);
                    }
                }
                b.put_u64_le(durable.segment_bytes);
                codec::put_bytes_u16(&mut b, topic.as_str().as_bytes());
            }
            MetaRecord::Commit { group, id, partition, next } => {
                b.put_u8(META_COMMIT);
                b.put_u64_le(*id);
                b.put_u32_le(*partition);
                b.put_u64_le(*next);
                codec::put_bytes_u16(&mut b, group.as_bytes());
            }
        }
        b.freeze()
    }

    /// Decodes a record.
    pub fn decode(body: &Bytes) -> Result<MetaRecord, CodecError> {
        let mut r = Reader::new(body);
        let record = match r.u8("meta record kind")? {
            META_TOPIC => {
                let id = r.u64("topic id")?;
                let partitions = r.u32("partitions")?;
                if partitions == 0 {
                    return Err(CodecError::Invalid { field: "partitions", why: "zero".into() });
                }
                let retention = RetentionPolicy {
                    max_records: r.opt_u64("retained records")?,
                    max_bytes: r.opt_u64("retained bytes")?,
                    max_age: r.opt_u64("retained age")?.map(Duration::from_nanos),
                };
                let flush = match r.u8("flush policy")? {
                    FLUSH_EVERY_BATCH => FlushPolicy::EveryBatch,
                    FLUSH_INTERVAL => FlushPolicy::Interval {
                        max_delay: Duration::from_nanos(r.u64("flush delay")?),
                        max_bytes: r.u64("flush bytes")?,
                    },
                    other => return Err(CodecError::Invalid { field: "flush policy", why: format!("tag {other}") }),
                };
                let segment_bytes = r.u64("segment bytes")?;
                let len = r.len_u16("topic name length", crate::topic::MAX_TOPIC_BYTES)?;
                let name = r.str(len, "topic name")?;
                let topic =
                    Topic::new(name).map_err(|e| CodecError::Invalid { field: "topic name", why: e.to_string() })?;
                MetaRecord::Topic { id, topic, partitions, retention, durable: DurableConfig { flush, segment_bytes } }
            }
            META_COMMIT => {
                let id = r.u64("topic id")?;
                let partition = r.u32("partition")?;
                let next = r.u64("committed offset")?;
                let len = r.len_u16("group name length", MAX_GROUP_NAME)?;
                let group = r.str(len, "group name")?.to_owned();
                MetaRecord::Commit { group, id, partition, next }
            }
            other => return Err(CodecError::Invalid { field: "meta record kind", why: format!("tag {other}") }),
        };
        r.finish("meta record")?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frames(bodies: &[&[u8]]) -> Bytes {
        let mut out = BytesMut::new();
        for b in bodies {
            put_frame(&mut out, b);
        }
        out.freeze()
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_frame() {
        let file = frames(&[b"one", b"two", b"three"]);
        let whole = scan_frames(&file);
        assert_eq!(whole.bodies.len(), 3);
        assert_eq!(whole.valid_len, file.len() as u64);
        assert_eq!(whole.damage, None);
        let two = frames(&[b"one", b"two"]).len();
        for cut in two..file.len() {
            let s = scan_frames(&file.slice(..cut));
            assert_eq!(s.bodies.len(), 2, "cut at {cut}");
            assert_eq!(s.valid_len, two as u64);
            assert_eq!(s.damage.is_some(), cut > two);
        }
    }

    #[test]
    fn zeros_and_flipped_bits_end_the_scan() {
        let mut raw = frames(&[b"one", b"two"]).to_vec();
        let first = raw.len();
        raw.extend_from_slice(&[0u8; 16]);
        raw.extend_from_slice(&frames(&[b"after a lost write"]));
        let s = scan_frames(&Bytes::from(raw.clone()));
        assert_eq!((s.bodies.len(), s.valid_len), (2, first as u64));
        raw[9] ^= 0x10;
        let s = scan_frames(&Bytes::from(raw));
        assert_eq!(s.bodies.len(), 0);
        assert!(s.damage.unwrap().contains("checksum"));
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(7, 3, 12_345)), Some((7, 3, 12_345)));
        assert_eq!(parse_meta_name(&meta_name(9)), Some(9));
        assert_eq!(parse_segment_name("seg-1-2-3"), None);
        assert_eq!(parse_meta_name("meta-x"), None);
        kaelix_core::runtime::validate_file_name(&segment_name(u64::MAX, u32::MAX, u64::MAX)).unwrap();
    }

    fn arb_meta() -> impl Strategy<Value = MetaRecord> {
        let topic = prop_oneof![Just("orders.eu"), Just("a"), Just("metrics.host-1.cpu")];
        prop_oneof![
            (
                any::<u64>(),
                topic,
                1..64u32,
                any::<Option<u64>>(),
                any::<Option<u64>>(),
                any::<Option<u32>>(),
                any::<Option<(u32, u64)>>(),
                any::<u64>()
            )
                .prop_map(|(id, t, partitions, max_records, max_bytes, age, flush, segment_bytes)| {
                    MetaRecord::Topic {
                        id,
                        topic: Topic::new(t).unwrap(),
                        partitions,
                        retention: RetentionPolicy {
                            max_records,
                            max_bytes,
                            max_age: age.map(|s| Duration::from_millis(u64::from(s))),
                        },
                        durable: DurableConfig {
                            flush: match flush {
                                None => FlushPolicy::EveryBatch,
                                Some((ms, max_bytes)) => {
                                    FlushPolicy::Interval { max_delay: Duration::from_millis(u64::from(ms)), max_bytes }
                                }
                            },
                            segment_bytes,
                        },
                    }
                }),
            ("[a-z-]{0,30}", any::<u64>(), any::<u32>(), any::<u64>())
                .prop_map(|(group, id, partition, next)| MetaRecord::Commit { group, id, partition, next }),
        ]
    }

    proptest! {
        #[test]
        fn meta_records_round_trip(record in arb_meta()) {
            let bytes = record.encode();
            prop_assert_eq!(MetaRecord::decode(&bytes).unwrap(), record);
            for cut in 0..bytes.len() {
                prop_assert!(MetaRecord::decode(&bytes.slice(..cut)).is_err());
            }
        }

        #[test]
        fn scanning_garbage_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let s = scan_frames(&Bytes::from(raw.clone()));
            prop_assert!(s.valid_len as usize <= raw.len());
        }
    }
}

//! [`BrokerCore`]: the broker's sans-IO state — topics and their partition
//! logs, the stream registry and router, consumer groups, dead letters.
//!
//! Every method takes the time it needs (`now` for activity, `wall` for
//! message timestamps and retention age) and the rng it needs; nothing here
//! waits. Waiting (a blocked publisher, a consumer with an empty buffer) is
//! the async layer's job: calls report *who* may now make progress
//! ([`BrokerCore::take_woken`]) and *why* a call could not complete
//! ([`PublishOutcome::WouldBlock`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::backpressure::{DropCounts, Offer, Strategy, Thresholds};
use crate::groups::{ConsumerGroup, GroupError, MemberId};
use crate::message::{Message, MessageBatch, new_message_id};
use crate::partition::{LogRecord, PartitionLog, ReadError, RetentionPolicy};
use crate::registry::{LogCursor, RegistryError, StartPosition, StreamEntry, StreamId, StreamInfo, StreamRegistry};
use crate::replication::{Proposal, ProposalId, ProposalOp};
use crate::sink::{Delivery, Sink, SinkId, is_sink_subscription};
use crate::storage::{DurableConfig, MetaRecord, StorageKind, StorageOutput};
use crate::topic::{Pattern, Topic, TopicError};
use kaelix_core::planted::{Planted, PlantedBug};
use kaelix_core::rng::DetRng;
use kaelix_core::time::{Duration, Instant, WallTime};

/// Headers a dead-lettered message carries.
pub mod dead_letter_headers {
    /// Why it was dead-lettered.
    pub const REASON: &str = "dlq-reason";
    /// The topic it was published to.
    pub const SOURCE_TOPIC: &str = "dlq-source-topic";
    /// Its partition there.
    pub const SOURCE_PARTITION: &str = "dlq-source-partition";
    /// Its offset there.
    pub const SOURCE_OFFSET: &str = "dlq-source-offset";
    /// Delivery attempts made.
    pub const ATTEMPTS: &str = "dlq-attempts";
    /// The plugin that refused or failed on it (messages dead-lettered by a
    /// processor chain).
    pub const PLUGIN: &str = "dlq-plugin";
}

/// A topic's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicConfig {
    /// Number of partitions (at least 1).
    pub partitions: u32,
    /// What each partition retains.
    pub retention: RetentionPolicy,
    /// Where the partitions live (see [`crate::storage`]).
    pub storage: StorageKind,
}

/// Bytes a partition of a topic with default settings retains (the oldest
/// messages go first): memory stays bounded unless a topic asks otherwise.
pub const DEFAULT_RETAINED_BYTES: u64 = 64 << 20;

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            retention: RetentionPolicy { max_bytes: Some(DEFAULT_RETAINED_BYTES), ..RetentionPolicy::default() },
            storage: StorageKind::Memory,
        }
    }
}

/// The broker's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerConfig {
    /// Settings of topics created on first publish (`None`: publishing to an
    /// unknown topic is an error).
    pub auto_create: Option<TopicConfig>,
    /// Most streams open at once.
    pub max_streams: usize,
    /// Streams whose consumer has not read for this long are closed.
    pub idle_timeout: Option<Duration>,
    /// How often housekeeping runs (idle streams closed, retention by age
    /// enforced) in a broker started on a runtime ([`crate::Broker::start`],
    /// [`crate::Broker::open_durable`]).
    pub housekeeping_interval: Duration,
    /// Buffer pressure thresholds.
    pub thresholds: Thresholds,
    /// Dead letters of topic `t` go to `<prefix>.t`.
    pub dead_letter_prefix: String,
    /// Most messages one consumer-group poll returns.
    pub max_poll_records: usize,
    /// Planted bugs switched on (simulation tests only; see
    /// `kaelix_core::planted`).
    pub planted: Planted,
    /// Backpressure per topic: a subscription that names no strategy gets
    /// the first rule that covers it — for a literal pattern, the first rule
    /// whose pattern matches that topic; for a wildcard pattern, the first
    /// rule with exactly that pattern — else [`Strategy::default`].
    pub topic_strategies: Vec<(Pattern, Strategy)>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            auto_create: Some(TopicConfig::default()),
            max_streams: 1 << 20,
            idle_timeout: None,
            housekeeping_interval: Duration::from_secs(1),
            thresholds: Thresholds::default(),
            dead_letter_prefix: "_dlq".to_owned(),
            max_poll_records: 512,
            topic_strategies: Vec::new(),
            planted: Planted::NONE,
        }
    }
}

/// Why a broker call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// A topic or pattern is invalid.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The topic does not exist and auto-creation is off.
    #[error("unknown topic {0}")]
    UnknownTopic(Topic),
    /// The topic exists with other settings.
    #[error("topic {topic} already exists with {existing} partitions")]
    TopicExists {
        /// The topic.
        topic: Topic,
        /// Its partitions.
        existing: u32,
    },
    /// A partition count of zero, or fewer than the topic has.
    #[error("invalid partition count {requested} for topic {topic}: {why}")]
    BadPartitionCount {
        /// The topic.
        topic: Topic,
        /// The count asked for.
        requested: u32,
        /// Why it is refused.
        why: &'static str,
    },
    /// The message names a partition the topic does not have.
    #[error("topic {topic} has {partitions} partitions; partition {requested} does not exist")]
    NoSuchPartition {
        /// The topic.
        topic: Topic,
        /// Its partitions.
        partitions: u32,
        /// The partition named.
        requested: u32,
    },
    /// The stream limit is reached.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A consumer-group operation was refused.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A read asked for an offset that is not retained.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A consumer group is bound to another topic.
    #[error("consumer group {group:?} consumes {existing}, not {requested}")]
    GroupTopicMismatch {
        /// The group.
        group: String,
        /// Its topic.
        existing: Topic,
        /// The topic asked for.
        requested: Topic,
    },
    /// A message could not be built (dead letters).
    #[error("building a message: {0}")]
    Message(String),
    /// The stream is closed (unsubscribed, idle, or the broker shut down).
    #[error("stream {0:?} is closed")]
    StreamClosed(StreamId),
    /// The broker is shutting down.
    #[error("the broker is shut down")]
    ShutDown,
    /// The topic's publish hook (a plugin chain) kept the message from its
    /// topic: a plugin dropped it or it was dead-lettered. Not a failure of
    /// the publish: the message is accounted for as the disposition says.
    #[error("message {0}")]
    Intercepted(crate::intercept::Disposition),
    /// Subscription options that do not go together.
    #[error("invalid subscription: {0}")]
    InvalidSubscription(&'static str),
    /// A durable topic on a broker opened without storage.
    #[error("topic {0} is durable, but this broker has no storage (open it with Broker::open_durable)")]
    NoDurableStorage(Topic),
    /// A replicated topic on a broker without a replicator.
    #[error(
        "topic {0} is replicated, but this broker has no replicator (it runs replicated topics only as a cluster node)"
    )]
    NoReplication(Topic),
    /// A publish to a replicated topic through a call that cannot wait for
    /// its commit.
    #[error(
        "topic {0} is replicated: its publishes and group commits are acknowledged at commit, through Broker::publish and GroupMember::commit_acknowledged"
    )]
    ReplicatedNeedsCommit(Topic),
    /// This node does not lead the partition's group: publish to the leader.
    #[error("this node does not lead {topic}/{partition}{}", leader.map(|l| format!(" (the leader is node {l})")).unwrap_or_default())]
    NotLeader {
        /// The topic.
        topic: Topic,
        /// The partition.
        partition: u32,
        /// The leader, if known.
        leader: Option<u64>,
    },
    /// No leader confirmed a read of the partition (none known, it could
    /// not be reached or answer in time, or it lost its leadership): a
    /// linearizable read cannot be served now. Nothing changed: retry.
    #[error("{topic}/{partition}: no leader confirmed the read ({reason})")]
    ReadUnconfirmed {
        /// The topic.
        topic: Topic,
        /// The partition.
        partition: u32,
        /// Why.
        reason: String,
    },
    /// Leadership moved while the proposal waited: it may or may not
    /// commit (retry; a duplicate is possible).
    #[error("{topic}/{partition}: the outcome is unknown ({reason})")]
    ReplicationUnknown {
        /// The topic.
        topic: Topic,
        /// The partition.
        partition: u32,
        /// Why.
        reason: String,
    },
    /// A topic exists with another storage kind.
    #[error("topic {topic} already exists with storage {existing:?}")]
    StorageMismatch {
        /// The topic.
        topic: Topic,
        /// Its storage.
        existing: StorageKind,
    },
}

/// Where a published message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Its partition.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// Streams it was buffered for.
    pub buffered_for: usize,
    /// Whether the publish is acknowledged already: always on a memory
    /// topic; on a durable one only once its record is synced
    /// ([`crate::Broker::publish`] waits for that).
    pub acknowledged: bool,
}

/// Where [`BrokerCore::route_or_return`] sent a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    /// The topic exists (or was auto-created): stored and fanned out.
    Stored(Published),
    /// No such topic and auto-creation is off: handed to the live streams
    /// that match, stored nowhere, no offset (core NATS: at most once).
    Relayed {
        /// Streams it was buffered for.
        buffered_for: usize,
    },
}

/// What [`BrokerCore::read_range`] read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeRead {
    /// The partition's oldest retained offset.
    pub low_watermark: u64,
    /// The end of its readable range.
    pub high_watermark: u64,
    /// The records, in offset order.
    pub messages: Vec<Message>,
}

/// What [`BrokerCore::publish`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Appended and fanned out.
    Published(Published),
    /// Nothing happened: these streams block and are full. Retry once one
    /// of them is woken by a read.
    WouldBlock(Vec<StreamId>),
}

/// What [`BrokerCore::publish_batch`] did: the messages published, and the
/// rest of the batch with the streams it waits on if one would block.
pub type BatchOutcome = (Vec<Published>, Option<(MessageBatch, Vec<StreamId>)>);

/// One consumer group's position on one partition (see [`BrokerCore::group_lags`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLag {
    /// The group.
    pub group: Arc<str>,
    /// Its topic.
    pub topic: Topic,
    /// The partition.
    pub partition: u32,
    /// The committed offset (next to read), if any.
    pub committed: Option<u64>,
    /// The partition's visible end.
    pub end: u64,
    /// Messages not yet committed.
    pub lag: u64,
}

/// Broker-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Topics.
    pub topics: usize,
    /// Partitions over all topics.
    pub partitions: usize,
    /// Messages appended (dead letters included).
    pub published: u64,
    /// Messages relayed to live streams without a topic (see [`Routed`]).
    pub relayed: u64,
    /// Publishes that had to wait for a blocking stream.
    pub blocked_publishes: u64,
    /// Messages handed to stream consumers.
    pub delivered: u64,
    /// Messages handed to consumer-group members.
    pub group_delivered: u64,
    /// Drops over every stream, open or closed, by reason.
    pub dropped: DropCounts,
    /// Messages sent to dead-letter topics.
    pub dead_lettered: u64,
    /// Open streams.
    pub streams: usize,
    /// Sink subscriptions (see [`crate::sink`]), over every sink.
    pub sink_subscriptions: usize,
    /// Streams closed for idleness.
    pub idle_closed: u64,
    /// Consumer groups.
    pub groups: usize,
    /// Records removed by retention.
    pub retention_removed: u64,
}

impl LogRecord for Message {
    fn size_bytes(&self) -> usize {
        self.encoded_len()
    }

    fn timestamp(&self) -> WallTime {
        Message::timestamp(self)
    }
}

struct TopicState {
    /// Stable id (durable file names use it).
    id: u64,
    config: TopicConfig,
    partitions: Vec<PartitionLog<Message>>,
    /// Per partition: offsets below this are synced (durable topics) and
    /// visible to reads and consumer groups. Memory topics keep it unused.
    durable_end: Vec<u64>,
    round_robin: u64,
    /// Planted [`PlantedBug::BrokerGroupReadsUnsynced`].
    planted_unsynced: bool,
}

impl TopicState {
    /// The partition `message` goes to: the one it names, its key's, or the
    /// next in round robin.
    fn choose_partition(&mut self, topic: &Topic, message: &Message) -> Result<u32, BrokerError> {
        let partitions = self.config.partitions;
        Ok(match (message.partition(), message.key()) {
            (Some(p), _) if p >= partitions => {
                return Err(BrokerError::NoSuchPartition { topic: topic.clone(), partitions, requested: p });
            }
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => {
                let p = (self.round_robin % u64::from(partitions)) as u32;
                self.round_robin += 1;
                p
            }
        })
    }

    fn durable(&self) -> Option<DurableConfig> {
        match self.config.storage {
            StorageKind::Durable(d) => Some(d),
            StorageKind::Memory | StorageKind::Replicated(_) => None,
        }
    }

    /// The end of what reads and groups may see on `partition`.
    fn visible_end(&self, partition: usize) -> u64 {
        match self.config.storage {
            // A replicated log holds committed records only.
            StorageKind::Memory | StorageKind::Replicated(_) => self.partitions[partition].next_offset(),
            StorageKind::Durable(_) if self.planted_unsynced => self.partitions[partition].next_offset(),
            StorageKind::Durable(_) => self.durable_end[partition],
        }
    }

    fn output(&self, topic: &Topic) -> StorageOutput {
        StorageOutput::Meta(MetaRecord::Topic {
            id: self.id,
            topic: topic.clone(),
            partitions: self.config.partitions,
            retention: self.config.retention,
            durable: self.durable().expect("only durable topics are recorded"),
        })
    }
}

/// The broker's state (see the module docs).
pub struct BrokerCore {
    config: BrokerConfig,
    topics: BTreeMap<Topic, TopicState>,
    registry: StreamRegistry,
    groups: BTreeMap<Arc<str>, ConsumerGroup>,
    member_groups: BTreeMap<MemberId, Arc<str>>,
    next_member: u64,
    woken_streams: Vec<StreamId>,
    woken_members: Vec<MemberId>,
    /// Reused buffer for routing one message.
    route_scratch: Vec<StreamId>,
    stats: BrokerStats,
    closed_drops: DropCounts,
    shut_down: bool,
    /// Whether a driver performs [`StorageOutput`]s (durable topics allowed).
    has_storage: bool,
    storage_outputs: VecDeque<StorageOutput>,
    next_topic_id: u64,
    /// Topic by id (the writer reports syncs by id).
    topic_ids: BTreeMap<u64, Topic>,
    /// Grows whenever a topic or partition appears (log-backed streams
    /// refresh their partition lists when it moved).
    topology_version: u64,
    /// Grows whenever a publish may start reaching something it did not
    /// (a topic appears, a subscription opens, the broker shuts down): a
    /// front end that found no interest in a subject may skip publishing
    /// to it while this has not moved (see [`BrokerCore::has_interest`]).
    /// Shared so that it is read without the broker's lock.
    interest_epoch: Arc<AtomicU64>,
    /// Open log-backed streams (publishes wake them only if there are any).
    log_streams: usize,
    /// The latest `now` seen: time only moves forward.
    last_now: Instant,
    /// Whether a replicator is attached (replicated topics allowed; see
    /// [`crate::replication`]).
    has_replication: bool,
    /// Proposals waiting for the replicator to take them.
    replication_outputs: VecDeque<Proposal>,
    /// Proposals taken or queued, until their caller takes the outcome (a
    /// read round's readers too, each under its own id).
    proposals: BTreeMap<ProposalId, ProposalState>,
    next_proposal: u64,
    /// Read rounds per partition (see `crate::replication`).
    read_rounds: BTreeMap<(Topic, u32), ReadRounds>,
    /// The partition of each read round handed out (queued or taken).
    round_partition: BTreeMap<ProposalId, (Topic, u32)>,
    /// Planted [`PlantedBug::BrokerDeliverUncommitted`]: ids delivered at
    /// proposal (empty otherwise).
    delivered_early: std::collections::BTreeSet<uuid::Uuid>,
}

/// A partition's read rounds on this broker: at most one in flight, and
/// the readers gathering for the next.
#[derive(Clone, Debug, Default)]
struct ReadRounds {
    /// The round handed out: its id, whether the replicator has taken it
    /// (until then a new reader may still join it), and its readers.
    in_flight: Option<(ProposalId, bool, Vec<ProposalId>)>,
    /// Readers that came after the round in flight was taken.
    next: Vec<ProposalId>,
}

/// Where a proposal stands.
#[derive(Clone, Debug)]
enum ProposalState {
    Pending { topic: Topic, partition: u32 },
    Done(Result<Published, BrokerError>),
}

/// Jump consistent hash (Lamping & Veach): `key_hash` → bucket in
/// `0..buckets`. Growing `buckets` only moves keys into the new buckets.
pub fn jump_hash(mut key_hash: u64, buckets: u32) -> u32 {
    assert!(buckets > 0, "at least one bucket");
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key_hash = key_hash.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key_hash >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The partition a keyed message goes to among `partitions`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    jump_hash(xxhash_rust::xxh3::xxh3_64(key), partitions)
}

impl BrokerCore {
    /// An empty broker.
    pub fn new(config: BrokerConfig) -> Self {
        let registry = StreamRegistry::new(config.max_streams, config.idle_timeout, config.thresholds)
            .with_planted(config.planted);
        BrokerCore {
            config,
            topics: BTreeMap::new(),
            registry,
            groups: BTreeMap::new(),
            member_groups: BTreeMap::new(),
            next_member: 1,
            woken_streams: Vec::new(),
            woken_members: Vec::new(),
            route_scratch: Vec::new(),
            stats: BrokerStats::default(),
            closed_drops: DropCounts::default(),
            shut_down: false,
            has_storage: false,
            storage_outputs: VecDeque::new(),
            next_topic_id: 1,
            topic_ids: BTreeMap::new(),
            topology_version: 0,
            interest_epoch: Arc::new(AtomicU64::new(0)),
            log_streams: 0,
            last_now: Instant::ZERO,
            has_replication: false,
            replication_outputs: VecDeque::new(),
            proposals: BTreeMap::new(),
            next_proposal: 1,
            read_rounds: BTreeMap::new(),
            round_partition: BTreeMap::new(),
            delivered_early: std::collections::BTreeSet::new(),
        }
    }

    /// Every call that takes `now` states the invariant that time does not
    /// move backwards (the async layer hands in a clamped clock reading).
    fn observe(&mut self, now: Instant) {
        assert!(now >= self.last_now, "time moved backwards: {now:?} after {:?}", self.last_now);
        self.last_now = now;
    }

    /// A broker whose [`StorageOutput`]s a driver performs, so durable
    /// topics are allowed (see [`crate::storage`]).
    pub fn with_storage(config: BrokerConfig) -> Self {
        let mut core = BrokerCore::new(config);
        core.has_storage = true;
        core
    }

    /// Attaches a replicator: replicated topics are allowed, their publishes
    /// become [`Proposal`]s (see [`crate::replication`]).
    pub fn enable_replication(&mut self) {
        self.has_replication = true;
    }

    /// Notes that publishes may reach more than before (see
    /// `interest_epoch`). Release: whoever reads the new value also sees
    /// the state change made before it under the broker's lock.
    fn interest_grew(&self) {
        self.interest_epoch.fetch_add(1, Ordering::Release);
    }

    /// The interest epoch (see [`BrokerCore::has_interest`]), shared: it
    /// may be read without the broker's lock.
    pub fn interest_epoch(&self) -> Arc<AtomicU64> {
        self.interest_epoch.clone()
    }

    /// Whether a publish to `topic` ([`BrokerCore::route_or_return`]) would
    /// do anything beyond counting a relay to nobody: the topic is stored
    /// (or would be created), a live subscription matches it, or the broker
    /// is shut down (the publish fails). `false` stays true until the
    /// interest epoch moves: every change that could make it `true` moves
    /// it. (Publish hooks are the async layer's; see `Broker::interest`.)
    pub fn has_interest(&mut self, topic: &Topic) -> bool {
        if self.shut_down || self.config.auto_create.is_some() || self.topics.contains_key(topic) {
            return true;
        }
        let mut targets = std::mem::take(&mut self.route_scratch);
        self.registry.route_into(topic, &mut targets);
        let any = !targets.is_empty();
        targets.clear();
        self.route_scratch = targets;
        any
    }

    /// Whether a replicator is attached.
    pub fn has_replication(&self) -> bool {
        self.has_replication
    }

    /// Whether a driver performs storage outputs (durable topics allowed).
    pub fn has_storage(&self) -> bool {
        self.has_storage
    }

    /// The settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Creates `topic`, or grows its partition count (partitions are never
    /// removed; keyed messages stay put except those that move to the new
    /// partitions, by consistent hashing).
    pub fn create_topic(&mut self, topic: Topic, config: TopicConfig) -> Result<(), BrokerError> {
        if config.partitions == 0 {
            return Err(BrokerError::BadPartitionCount { topic, requested: 0, why: "at least one is needed" });
        }
        if matches!(config.storage, StorageKind::Durable(_)) && !self.has_storage {
            return Err(BrokerError::NoDurableStorage(topic));
        }
        if matches!(config.storage, StorageKind::Replicated(_)) && !self.has_replication {
            return Err(BrokerError::NoReplication(topic));
        }
        match self.topics.get_mut(&topic) {
            None => {
                let id = self.next_topic_id;
                self.next_topic_id += 1;
                let partitions = (0..config.partitions).map(|_| PartitionLog::new(config.retention)).collect();
                let durable_end = vec![0; config.partitions as usize];
                let planted_unsynced = self.config.planted.is_on(PlantedBug::BrokerGroupReadsUnsynced);
                let state = TopicState { id, config, partitions, durable_end, round_robin: 0, planted_unsynced };
                if state.durable().is_some() {
                    self.storage_outputs.push_back(state.output(&topic));
                }
                self.topic_ids.insert(id, topic.clone());
                self.topics.insert(topic, state);
                self.topology_version += 1;
                self.interest_grew();
                Ok(())
            }
            Some(state) if state.config.storage != config.storage => {
                Err(BrokerError::StorageMismatch { topic, existing: state.config.storage })
            }
            Some(state) if config.partitions < state.config.partitions => Err(BrokerError::BadPartitionCount {
                topic,
                requested: config.partitions,
                why: "partitions cannot be removed",
            }),
            Some(state) => {
                let grew = state.config.partitions != config.partitions;
                while (state.partitions.len() as u32) < config.partitions {
                    state.partitions.push(PartitionLog::new(state.config.retention));
                    state.durable_end.push(0);
                }
                state.config.partitions = config.partitions;
                if grew && state.durable().is_some() {
                    self.storage_outputs.push_back(state.output(&topic));
                }
                if grew {
                    self.topology_version += 1;
                }
                for g in self.groups.values_mut().filter(|g| *g.topic() == topic) {
                    g.set_partitions(config.partitions);
                }
                Ok(())
            }
        }
    }

    /// Replaces a topic's retention and applies it at once (count, bytes,
    /// and age against `wall`); a durable topic records the new policy in
    /// its metadata (so a restart keeps it) and trims its segments. Returns
    /// the records removed.
    pub fn set_retention(
        &mut self,
        topic: &Topic,
        policy: RetentionPolicy,
        wall: WallTime,
    ) -> Result<u64, BrokerError> {
        let state = self.topic_state(topic)?;
        state.config.retention = policy;
        let durable = state.durable().is_some();
        let mut outputs = Vec::new();
        if durable {
            outputs.push(state.output(topic));
        }
        let mut removed = 0;
        for (partition, log) in state.partitions.iter_mut().enumerate() {
            log.set_retention(policy);
            let r = log.enforce_retention(wall).removed_records;
            removed += r;
            if durable && r > 0 {
                outputs.push(StorageOutput::Trim {
                    id: state.id,
                    partition: partition as u32,
                    earliest: log.earliest_offset(),
                });
            }
        }
        self.stats.retention_removed += removed;
        self.storage_outputs.extend(outputs);
        Ok(removed)
    }

    /// The topic's partition count.
    pub fn partitions(&self, topic: &Topic) -> Option<u32> {
        self.topics.get(topic).map(|t| t.config.partitions)
    }

    fn topic_state(&mut self, topic: &Topic) -> Result<&mut TopicState, BrokerError> {
        if !self.topics.contains_key(topic) {
            match self.config.auto_create.clone() {
                Some(config) => self.create_topic(topic.clone(), config)?,
                None => return Err(BrokerError::UnknownTopic(topic.clone())),
            }
        }
        Ok(self.topics.get_mut(topic).expect("exists"))
    }

    /// Publishes one message (see [`PublishOutcome`]). An unstamped message
    /// gets an id from `rng` and the timestamp `wall`.
    pub fn publish(
        &mut self,
        now: Instant,
        wall: WallTime,
        rng: &mut DetRng,
        message: Message,
    ) -> Result<PublishOutcome, BrokerError> {
        Ok(match self.publish_or_return(now, wall, rng, message)? {
            Ok(p) => PublishOutcome::Published(p),
            Err((_, ids)) => PublishOutcome::WouldBlock(ids),
        })
    }

    /// [`BrokerCore::publish`], handing the message back when it would block
    /// (so a caller can retry without cloning it).
    #[allow(clippy::type_complexity)]
    pub fn publish_or_return(
        &mut self,
        now: Instant,
        wall: WallTime,
        rng: &mut DetRng,
        message: Message,
    ) -> Result<Result<Published, (Message, Vec<StreamId>)>, BrokerError> {
        self.observe(now);
        if self.shut_down {
            return Err(BrokerError::ShutDown);
        }
        self.publish_inner(now, wall, rng, message, true)
    }

    /// Publishes `message` if its topic exists (or auto-creation is on),
    /// else relays it: delivers it to the live streams matching its topic
    /// and stores it nowhere. One call, so a topic created concurrently
    /// cannot split a publisher's messages between the two paths. Hands
    /// the message back when a matching blocking stream is full.
    #[allow(clippy::type_complexity)]
    pub fn route_or_return(
        &mut self,
        now: Instant,
        wall: WallTime,
        rng: &mut DetRng,
        mut message: Message,
    ) -> Result<Result<Routed, (Message, Vec<StreamId>)>, BrokerError> {
        self.observe(now);
        if self.shut_down {
            return Err(BrokerError::ShutDown);
        }
        if self.topics.contains_key(message.topic()) || self.config.auto_create.is_some() {
            return Ok(self.publish_inner(now, wall, rng, message, true)?.map(Routed::Stored));
        }
        if message.partition().is_some() {
            // A relayed message has no partition to name.
            return Err(BrokerError::UnknownTopic(message.topic().clone()));
        }
        let mut targets = std::mem::take(&mut self.route_scratch);
        self.registry.route_into(message.topic(), &mut targets);
        let blocked: Vec<StreamId> = targets
            .iter()
            .copied()
            .filter(|id| self.registry.get(*id).is_some_and(|e| e.buffer.would_block()))
            .collect();
        if !blocked.is_empty() {
            self.stats.blocked_publishes += 1;
            self.route_scratch = targets;
            return Ok(Err((message, blocked)));
        }
        if !message.is_stamped() {
            message.stamp(new_message_id(rng, wall), wall);
        }
        let buffered_for = self.offer_to(&targets, &message, true);
        self.route_scratch = targets;
        self.stats.relayed += 1;
        Ok(Ok(Routed::Relayed { buffered_for }))
    }

    /// Offers `message` to each stream of `targets`; returns how many
    /// buffered it (or will read it from the log). With `may_wait`, no
    /// target may be a full blocking stream (the caller checked).
    ///
    /// **Spilling.** A plain live stream that falls behind on a stored
    /// (durable or replicated) topic does not drop: when an offer would drop
    /// something (or be refused by a full `block` stream that cannot make
    /// the publisher wait) and the message or anything buffered is a stored
    /// record, the stream's stored records leave the buffer and the stream
    /// reads those partitions from the logs from its first undelivered
    /// offset on ([`LogCursor::spilled`]), as a log-backed stream does: a
    /// slow consumer costs log reads, not data. Records of memory topics and
    /// relayed messages still go through the buffer and its strategy.
    /// Queue-group members keep their strategy (a message is one member's).
    fn offer_to(&mut self, targets: &[StreamId], message: &Message, may_wait: bool) -> usize {
        let mut buffered_for = 0;
        // Only a broker with storage or a replicator has stored topics: a
        // memory broker never looks.
        let may_spill = self.has_storage || self.has_replication;
        for &id in targets {
            if is_sink_subscription(id) {
                // Handed over at once; a refusal is the sink's to account
                // for (see `crate::sink`), never buffered here.
                match self.registry.deliver_to_sink(id, message) {
                    Delivery::Delivered => {
                        buffered_for += 1;
                        self.stats.delivered += 1;
                    }
                    Delivery::Skipped => buffered_for += 1,
                    Delivery::Refused => {}
                }
                continue;
            }
            let entry = self.registry.get_mut(id).expect("routed streams are open");
            if let (Some(cursor), Some(partition)) = (&entry.log, message.partition())
                && cursor.covers(message.topic(), partition)
            {
                // It reads this partition from the log.
                buffered_for += 1;
                self.woken_streams.push(id);
                continue;
            }
            if may_spill && entry.queue_group.is_none() && entry.buffer.would_drop(message) {
                let forget = self.config.planted.is_on(PlantedBug::BrokerSpillForgetsBuffered);
                let (took_message, new_cursor) = spill_stored(&self.topics, entry, message, forget);
                if new_cursor {
                    self.log_streams += 1;
                }
                if took_message {
                    buffered_for += 1;
                    self.woken_streams.push(id);
                    continue;
                }
            }
            let entry = self.registry.get_mut(id).expect("routed streams are open");
            match entry.buffer.offer(message.clone()) {
                Offer::Accepted | Offer::AcceptedDropping(_) => {
                    buffered_for += 1;
                    self.woken_streams.push(id);
                }
                Offer::Dropped => {}
                Offer::WouldBlock => {
                    debug_assert!(!may_wait, "a publish that may wait was checked above");
                    entry.buffer.count_refused();
                }
            }
        }
        buffered_for
    }

    /// The one publish path. With `may_wait` false (dead letters, which
    /// must land even while a processor's own stream is full), a full
    /// blocking stream does not receive the message and counts it as
    /// refused instead of blocking the publisher.
    #[allow(clippy::type_complexity)]
    fn publish_inner(
        &mut self,
        now: Instant,
        wall: WallTime,
        rng: &mut DetRng,
        mut message: Message,
        may_wait: bool,
    ) -> Result<Result<Published, (Message, Vec<StreamId>)>, BrokerError> {
        let topic = message.topic().clone();
        let state = self.topic_state(&topic)?;
        if matches!(state.config.storage, StorageKind::Replicated(_)) {
            return Err(BrokerError::ReplicatedNeedsCommit(topic));
        }
        let partition = state.choose_partition(&topic, &message)?;
        let mut targets = std::mem::take(&mut self.route_scratch);
        self.registry.route_into(&topic, &mut targets);
        let blocked: Vec<StreamId> = targets
            .iter()
            .copied()
            .filter(|id| self.registry.get(*id).is_some_and(|e| e.buffer.would_block()))
            .collect();
        if may_wait && !blocked.is_empty() {
            self.stats.blocked_publishes += 1;
            self.route_scratch = targets;
            return Ok(Err((message, blocked)));
        }
        if !message.is_stamped() {
            message.stamp(new_message_id(rng, wall), wall);
        }
        let state = self.topics.get_mut(&topic).expect("exists");
        let (durable, id) = (state.durable().is_some(), state.id);
        let log = &mut state.partitions[partition as usize];
        let offset = log.next_offset();
        let message = message.with_partition_offset(partition, offset);
        let earliest_before = if durable { log.earliest_offset() } else { 0 };
        let appended = log.append(message.clone());
        debug_assert_eq!(appended, offset, "offsets are dense");
        if durable {
            let earliest = log.earliest_offset();
            self.queue_append(id, partition, message.clone());
            if earliest != earliest_before {
                self.storage_outputs.push_back(StorageOutput::Trim { id, partition, earliest });
            }
        } else if self.log_streams > 0 {
            self.wake_log_streams(&topic);
        }
        self.stats.published += 1;
        let buffered_for = self.offer_to(&targets, &message, may_wait);
        self.route_scratch = targets;
        for (member, group) in &self.member_groups {
            if self.groups[group].topic() == &topic {
                self.woken_members.push(*member);
            }
        }
        let _ = now;
        Ok(Ok(Published { partition, offset, buffered_for, acknowledged: !durable }))
    }

    /// Publishes a batch in order; stops at the first message that would
    /// block (returning what was published so far and the blocking streams).
    pub fn publish_batch(
        &mut self,
        now: Instant,
        wall: WallTime,
        rng: &mut DetRng,
        batch: MessageBatch,
    ) -> Result<BatchOutcome, BrokerError> {
        let mut done = Vec::with_capacity(batch.len());
        let mut rest = batch.into_iter();
        while let Some(m) = rest.next() {
            match self.publish_or_return(now, wall, rng, m)? {
                Ok(p) => done.push(p),
                Err((m, ids)) => {
                    let remaining: MessageBatch = std::iter::once(m).chain(rest).collect();
                    return Ok((done, Some((remaining, ids))));
                }
            }
        }
        Ok((done, None))
    }

    /// The strategy a subscription on `pattern` gets when it names none
    /// (see [`BrokerConfig::topic_strategies`]).
    pub fn strategy_for(&self, pattern: &Pattern) -> Strategy {
        let rules = &self.config.topic_strategies;
        let found = if pattern.is_literal() {
            let topic = Topic::new(pattern.as_str()).expect("a literal pattern is a topic");
            rules.iter().find(|(rule, _)| rule.matches(&topic))
        } else {
            rules.iter().find(|(rule, _)| rule == pattern)
        };
        found.map(|(_, s)| *s).unwrap_or_default()
    }

    /// Opens a push stream on `pattern`, optionally in a queue group, with
    /// `strategy` or (if `None`) the topic's (see [`BrokerCore::strategy_for`]).
    pub fn subscribe(
        &mut self,
        now: Instant,
        pattern: Pattern,
        queue_group: Option<&str>,
        strategy: Option<Strategy>,
    ) -> Result<StreamId, BrokerError> {
        self.observe(now);
        if self.shut_down {
            return Err(BrokerError::ShutDown);
        }
        let strategy = strategy.unwrap_or_else(|| self.strategy_for(&pattern));
        let id = self.registry.open(now, pattern, queue_group.map(Arc::from), strategy)?;
        self.interest_grew();
        Ok(id)
    }

    /// Opens a sink: one delivery path for many subscriptions (see
    /// [`crate::sink`]).
    pub fn open_sink(&mut self, sink: Arc<dyn Sink>) -> Result<SinkId, BrokerError> {
        if self.shut_down {
            return Err(BrokerError::ShutDown);
        }
        Ok(self.registry.open_sink(sink))
    }

    /// Closes `sink` and its subscriptions; returns how many it had.
    pub fn close_sink(&mut self, sink: SinkId) -> usize {
        self.registry.close_sink(sink)
    }

    /// Subscribes `pattern` on `sink` under `tag`, optionally in a queue
    /// group. Counts toward [`BrokerConfig::max_streams`].
    pub fn subscribe_sink(
        &mut self,
        now: Instant,
        sink: SinkId,
        pattern: Pattern,
        queue_group: Option<&str>,
        tag: u64,
    ) -> Result<StreamId, BrokerError> {
        self.observe(now);
        if self.shut_down {
            return Err(BrokerError::ShutDown);
        }
        let id = self.registry.subscribe_sink(sink, pattern, queue_group.map(Arc::from), tag)?;
        self.interest_grew();
        Ok(id)
    }

    /// Removes `sink`'s subscription `tag`; false if it has none.
    pub fn unsubscribe_sink(&mut self, sink: SinkId, tag: u64) -> bool {
        self.registry.unsubscribe_sink(sink, tag)
    }

    /// Ends `sink`'s subscription `tag` after `max` deliveries in total
    /// (at once, `Some(true)`, if it had that many); `None` if it has none.
    pub fn limit_sink(&mut self, sink: SinkId, tag: u64, max: u64) -> Option<bool> {
        self.registry.limit_sink(sink, tag, max)
    }

    /// Opens a **log-backed** stream on `pattern`: instead of a buffer fed
    /// by publishes, it reads the partition logs of every matching topic
    /// (and of topics created later) from `start`, each partition in offset
    /// order, partitions taking turns. It never drops a record while the
    /// record is retained: a slow consumer costs retained log, not data.
    /// For durable topics it sees synced records only. Records retention
    /// removed before the stream reached them are skipped and counted
    /// (`DropCounts::expired`).
    pub fn subscribe_from(
        &mut self,
        now: Instant,
        pattern: Pattern,
        start: StartPosition,
    ) -> Result<StreamId, BrokerError> {
        self.observe(now);
        if self.shut_down {
            return Err(BrokerError::ShutDown);
        }
        let mut positions = BTreeMap::new();
        for (topic, state) in self.topics.iter().filter(|(t, _)| pattern.matches(t)) {
            for p in 0..state.partitions.len() {
                positions.insert((topic.clone(), p as u32), initial_position(state, p, start));
            }
        }
        let id = self.registry.open(now, pattern, None, Strategy::default())?;
        self.interest_grew();
        let cursor = LogCursor {
            start,
            positions,
            seen_version: self.topology_version,
            last: None,
            spilled: false,
            buffer_turn: false,
        };
        self.registry.get_mut(id).expect("just opened").log = Some(Box::new(cursor));
        self.log_streams += 1;
        // It may have records to read at once.
        self.woken_streams.push(id);
        Ok(id)
    }

    fn wake_log_streams(&mut self, topic: &Topic) {
        let matched = self.registry.index_matches(topic);
        for &id in matched.iter() {
            if self.registry.get(id).is_some_and(|e| e.log.is_some()) {
                self.woken_streams.push(id);
            }
        }
    }

    /// The next record of a log-backed stream (see [`BrokerCore::subscribe_from`]).
    fn poll_log_stream(&mut self, id: StreamId) -> Option<Message> {
        let entry = self.registry.get_mut(id).expect("polled streams are open");
        let cursor = entry.log.as_mut().expect("a log-backed stream");
        // A spilled stream reads only the partitions it spilled.
        if !cursor.spilled && cursor.seen_version != self.topology_version {
            // New topics or partitions: read them from their first record.
            for (topic, state) in self.topics.iter().filter(|(t, _)| entry.pattern.matches(t)) {
                for p in 0..state.partitions.len() {
                    cursor
                        .positions
                        .entry((topic.clone(), p as u32))
                        .or_insert_with(|| state.partitions[p].earliest_offset());
                }
            }
            cursor.seen_version = self.topology_version;
        }
        // Partitions take turns: look after the one served last, wrapping.
        // Find the first that needs attention without allocating, then act.
        let topics = &self.topics;
        let needs = |(key, &position): (&(Topic, u32), &u64)| {
            let state = &topics[&key.0];
            let p = key.1 as usize;
            (position < state.partitions[p].earliest_offset() || position < state.visible_end(p)).then(|| key.clone())
        };
        let mut expired = 0;
        let mut found = None;
        while found.is_none() {
            let next = match &cursor.last {
                Some(last) => cursor
                    .positions
                    .range((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                    .chain(cursor.positions.range(..=last))
                    .find_map(needs),
                None => cursor.positions.iter().find_map(needs),
            };
            let Some(key) = next else { break };
            let state = &topics[&key.0];
            let log = &state.partitions[key.1 as usize];
            let position = cursor.positions.get_mut(&key).expect("listed");
            if *position < log.earliest_offset() {
                expired += log.earliest_offset() - *position;
                *position = log.earliest_offset();
            }
            if *position < state.visible_end(key.1 as usize) {
                found = log.get(*position).cloned();
                debug_assert!(found.is_some(), "retained offsets below the visible end exist");
                *position += 1;
                cursor.last = Some(key);
            }
        }
        if expired > 0 {
            entry.buffer.count_expired(expired);
        }
        found
    }

    /// Closes a stream, counting what it still buffered as dropped.
    pub fn unsubscribe(&mut self, id: StreamId) -> bool {
        match self.registry.close(id) {
            Some(mut entry) => {
                if entry.log.is_some() {
                    self.log_streams -= 1;
                }
                entry.buffer.close();
                self.absorb_drops(entry.buffer.drops());
                // A publisher blocked on it may now proceed.
                self.woken_streams.push(id);
                true
            }
            None => false,
        }
    }

    fn absorb_drops(&mut self, d: DropCounts) {
        self.closed_drops.absorb(d);
    }

    /// The next message of a stream; `Ok(None)` when its buffer is empty.
    pub fn poll_stream(&mut self, now: Instant, id: StreamId) -> Result<Option<Message>, BrokerError> {
        self.observe(now);
        let entry = self.registry.get_mut(id).ok_or(BrokerError::StreamClosed(id))?;
        entry.last_active = now;
        if let Some(cursor) = entry.log.as_mut() {
            // A spilled stream takes from its buffer and the logs in turn.
            let buffer_first = cursor.spilled && {
                cursor.buffer_turn = !cursor.buffer_turn;
                cursor.buffer_turn
            };
            let spilled = cursor.spilled;
            let was_full = entry.buffer.would_block();
            let mut m = if buffer_first { entry.buffer.pop() } else { None };
            if m.is_none() {
                m = self.poll_log_stream(id);
            }
            let entry = self.registry.get_mut(id).expect("open");
            if m.is_none() && spilled && !buffer_first {
                m = entry.buffer.pop();
            }
            if m.is_some() {
                entry.delivered += 1;
                self.stats.delivered += 1;
                if was_full && !entry.buffer.would_block() {
                    self.woken_streams.push(id);
                }
            }
            return Ok(m);
        }
        let was_full = entry.buffer.would_block();
        let m = entry.buffer.pop();
        if m.is_some() {
            entry.delivered += 1;
            self.stats.delivered += 1;
            if was_full {
                // Room again: blocked publishers may retry.
                self.woken_streams.push(id);
            }
        }
        Ok(m)
    }

    /// Joins `group` (created on first join) over `topic`.
    pub fn join_group(&mut self, group: &str, topic: &Topic) -> Result<(MemberId, u64), BrokerError> {
        if self.shut_down {
            return Err(BrokerError::ShutDown);
        }
        let partitions = self.topic_state(topic)?.config.partitions;
        let key: Arc<str> = Arc::from(group);
        let g = self.groups.entry(key.clone()).or_insert_with(|| ConsumerGroup::new(topic.clone(), partitions));
        if g.topic() != topic {
            return Err(BrokerError::GroupTopicMismatch {
                group: group.to_owned(),
                existing: g.topic().clone(),
                requested: topic.clone(),
            });
        }
        let member = MemberId(self.next_member);
        self.next_member += 1;
        g.join(member);
        let generation = g.generation();
        self.member_groups.insert(member, key);
        // Every member's assignment changed.
        self.woken_members.extend(self.groups_members_of(member));
        Ok((member, generation))
    }

    fn groups_members_of(&self, member: MemberId) -> Vec<MemberId> {
        let group = &self.member_groups[&member];
        self.groups[group].members().collect()
    }

    /// Leaves a consumer group (a rebalance).
    pub fn leave_group(&mut self, member: MemberId) -> bool {
        let Some(group) = self.member_groups.remove(&member) else { return false };
        let g = self.groups.get_mut(&group).expect("member's group exists");
        g.leave(member);
        let others: Vec<MemberId> = g.members().collect();
        self.woken_members.extend(others);
        true
    }

    /// Up to `max` messages for `member` from its partitions, from where it
    /// last read (the committed offset after a rebalance). Returns the
    /// generation they were read in, for [`BrokerCore::commit`].
    pub fn poll_group(&mut self, member: MemberId, max: usize) -> Result<(u64, Vec<Message>), BrokerError> {
        self.poll_group_limited(member, max, usize::MAX)
    }

    /// [`BrokerCore::poll_group`] returning at most `max_bytes` of encoded
    /// messages — but always one message if one is readable, so a member
    /// always progresses.
    pub fn poll_group_limited(
        &mut self,
        member: MemberId,
        max: usize,
        max_bytes: usize,
    ) -> Result<(u64, Vec<Message>), BrokerError> {
        let group_name = self.member_groups.get(&member).ok_or(GroupError::NotMember(member))?.clone();
        let g = self.groups.get_mut(&group_name).expect("member's group exists");
        let generation = g.generation();
        let topic = g.topic().clone();
        let assigned: Vec<u32> = g.assignment(member)?.to_vec();
        let state = self.topics.get(&topic).expect("group topics exist");
        let max = max.min(self.config.max_poll_records).max(1);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for p in assigned {
            if out.len() >= max {
                break;
            }
            let log = &state.partitions[p as usize];
            // Below the retained range (retention overtook the group): skip
            // ahead to what is retained rather than stall.
            let from = g.position(p).unwrap_or(0).max(log.earliest_offset());
            // Only synced records: a commit must name a record that survives
            // a crash (see `storage`).
            let end = state.visible_end(p as usize);
            if from >= end {
                continue;
            }
            let want = (max - out.len()).min(usize::try_from(end - from).unwrap_or(usize::MAX));
            let budget = max_bytes.saturating_sub(bytes);
            if budget == 0 && !out.is_empty() {
                break;
            }
            // The first message of the poll comes whatever its size; later
            // partitions contribute only what fits the rest of the budget.
            let batch = log.read(from, want, budget)?;
            let mut records = batch.records;
            if !out.is_empty() {
                let mut fits = 0;
                for r in &records {
                    if bytes.saturating_add(r.encoded_len()) > max_bytes {
                        break;
                    }
                    bytes = bytes.saturating_add(r.encoded_len());
                    fits += 1;
                }
                records.truncate(fits);
            } else {
                bytes = records.iter().map(Message::encoded_len).fold(bytes, usize::saturating_add);
            }
            let Some(last) = records.last() else { break };
            g.advance(p, last.offset().expect("logged records have offsets") + 1);
            out.extend(records);
        }
        self.stats.group_delivered += out.len() as u64;
        Ok((generation, out))
    }

    /// A group's committed offset on `partition`.
    pub fn group_committed(&self, group: &str, partition: u32) -> Option<u64> {
        self.groups.get(group)?.committed(partition)
    }

    /// Commits `member`'s progress on `partition` (next offset to read).
    pub fn commit(&mut self, member: MemberId, generation: u64, partition: u32, next: u64) -> Result<(), BrokerError> {
        let group = self.member_groups.get(&member).ok_or(GroupError::NotMember(member))?;
        let g = self.groups.get_mut(group).expect("exists");
        if self.topics.get(g.topic()).is_some_and(|t| matches!(t.config.storage, StorageKind::Replicated(_))) {
            return Err(BrokerError::ReplicatedNeedsCommit(g.topic().clone()));
        }
        g.commit(member, generation, partition, next)?;
        let state = &self.topics[g.topic()];
        if state.durable().is_some() {
            let id = state.id;
            let commit = MetaRecord::Commit { group: group.to_string(), id, partition, next };
            self.storage_outputs.push_back(StorageOutput::Meta(commit));
        }
        Ok(())
    }

    /// Sends `message` to its topic's dead-letter topic with headers giving
    /// the reason, source topic, partition, offset and attempts.
    pub fn dead_letter(
        &mut self,
        now: Instant,
        wall: WallTime,
        rng: &mut DetRng,
        message: &Message,
        reason: &str,
        attempts: u32,
    ) -> Result<Published, BrokerError> {
        self.dead_letter_from(now, wall, rng, message, reason, attempts, None)
    }

    /// [`Self::dead_letter`], naming the plugin that refused the message
    /// (header [`dead_letter_headers::PLUGIN`]).
    #[allow(clippy::too_many_arguments)]
    pub fn dead_letter_from(
        &mut self,
        now: Instant,
        wall: WallTime,
        rng: &mut DetRng,
        message: &Message,
        reason: &str,
        attempts: u32,
        plugin: Option<&str>,
    ) -> Result<Published, BrokerError> {
        use dead_letter_headers as h;
        self.observe(now);
        let dlq = Topic::new(format!("{}.{}", self.config.dead_letter_prefix, message.topic()))?;
        if !self.topics.contains_key(&dlq) {
            // Dead-letter topics exist on demand, whatever auto_create says.
            self.create_topic(dlq.clone(), TopicConfig::default())?;
        }
        let mut builder = Message::builder()
            .topic(dlq)
            .payload(message.payload().clone())
            .header(h::REASON, Bytes::from(reason.to_owned()))
            .header(h::SOURCE_TOPIC, Bytes::from(message.topic().to_string()))
            .header(h::ATTEMPTS, Bytes::from(attempts.to_string()));
        if let Some(p) = message.partition() {
            builder = builder.header(h::SOURCE_PARTITION, Bytes::from(p.to_string()));
        }
        if let Some(o) = message.offset() {
            builder = builder.header(h::SOURCE_OFFSET, Bytes::from(o.to_string()));
        }
        if let Some(plugin) = plugin {
            builder = builder.header(h::PLUGIN, Bytes::from(plugin.to_owned()));
        }
        for (name, value) in message.headers().iter() {
            if !name.starts_with("dlq-") {
                builder = builder.header(name, value.clone());
            }
        }
        let dead = builder.build().map_err(|e| BrokerError::Message(e.to_string()))?;
        // Dead letters never block and still land during a graceful
        // shutdown (processors drain their streams into them).
        let published = match self.publish_inner(now, wall, rng, dead, false)? {
            Ok(p) => p,
            Err(_) => unreachable!("a publish that may not wait never blocks"),
        };
        self.stats.dead_lettered += 1;
        Ok(published)
    }

    /// Housekeeping: closes idle streams, enforces retention by age.
    /// Returns the streams it closed.
    pub fn handle_timeout(&mut self, now: Instant, wall: WallTime) -> Vec<StreamId> {
        self.observe(now);
        let idle = self.registry.close_idle(now);
        let mut closed = Vec::new();
        for (id, mut entry) in idle {
            if entry.log.is_some() {
                self.log_streams -= 1;
            }
            entry.buffer.close();
            self.absorb_drops(entry.buffer.drops());
            self.stats.idle_closed += 1;
            self.woken_streams.push(id);
            closed.push(id);
        }
        for state in self.topics.values_mut() {
            let durable = state.durable().is_some();
            for (partition, log) in state.partitions.iter_mut().enumerate() {
                let removed = log.enforce_retention(wall).removed_records;
                self.stats.retention_removed += removed;
                if durable && removed > 0 {
                    let partition = partition as u32;
                    let earliest = log.earliest_offset();
                    self.storage_outputs.push_back(StorageOutput::Trim { id: state.id, partition, earliest });
                }
            }
        }
        closed
    }

    /// When [`BrokerCore::handle_timeout`] next has work (idle streams;
    /// retention by age is checked on the same schedule).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.registry.next_idle_deadline()
    }

    /// Streams and members that may now make progress (drained).
    pub fn take_woken(&mut self) -> (Vec<StreamId>, Vec<MemberId>) {
        let (mut streams, mut members) = (Vec::new(), Vec::new());
        self.drain_woken_into(&mut streams, &mut members);
        (streams, members)
    }

    /// [`BrokerCore::take_woken`] into the caller's buffers (replacing their
    /// contents), so a hot loop allocates nothing: the buffers swap places.
    pub fn drain_woken_into(&mut self, streams: &mut Vec<StreamId>, members: &mut Vec<MemberId>) {
        streams.clear();
        members.clear();
        std::mem::swap(&mut self.woken_streams, streams);
        std::mem::swap(&mut self.woken_members, members);
        if streams.len() > 1 {
            streams.sort_unstable();
            streams.dedup();
        }
        if members.len() > 1 {
            members.sort_unstable();
            members.dedup();
        }
    }

    /// Whether a stream is open.
    pub fn stream_open(&self, id: StreamId) -> bool {
        self.registry.get(id).is_some()
    }

    /// Whether a publish blocked on `ids` may retry (one of them has room
    /// or is gone).
    pub fn blocked_on_any_free(&self, ids: &[StreamId]) -> bool {
        ids.iter().any(|id| self.registry.get(*id).is_none_or(|e| !e.buffer.would_block()))
    }

    /// The subscription match cache's counters.
    pub fn match_cache_stats(&self) -> crate::subscription::CacheStats {
        self.registry.index().cache_stats()
    }

    /// Active streams (the registry's view).
    pub fn active_streams(&self) -> Vec<StreamInfo> {
        self.registry.active_streams()
    }

    /// A stream's drop counts.
    pub fn stream_drops(&self, id: StreamId) -> Option<DropCounts> {
        self.registry.get(id).map(|e| e.buffer.drops())
    }

    /// Reads a partition directly (replay from any retained offset).
    pub fn read(&self, topic: &Topic, partition: u32, offset: u64, max: usize) -> Result<Vec<Message>, BrokerError> {
        let state = self.topics.get(topic).ok_or_else(|| BrokerError::UnknownTopic(topic.clone()))?;
        let partitions = state.config.partitions;
        let log = state.partitions.get(partition as usize).ok_or_else(|| BrokerError::NoSuchPartition {
            topic: topic.clone(),
            partitions,
            requested: partition,
        })?;
        let end = state.visible_end(partition as usize);
        if offset >= end && offset <= log.next_offset() {
            // At (or past only unsynced records of) the head: nothing yet.
            return Ok(Vec::new());
        }
        let max = max.min(usize::try_from(end.saturating_sub(offset)).unwrap_or(usize::MAX));
        Ok(log.read(offset, max, usize::MAX)?.records)
    }

    /// The next offset of a partition (its high watermark: for a durable
    /// topic, the end of what is synced).
    pub fn next_offset(&self, topic: &Topic, partition: u32) -> Option<u64> {
        let state = self.topics.get(topic)?;
        ((partition as usize) < state.partitions.len()).then(|| state.visible_end(partition as usize))
    }

    /// The earliest retained offset of a partition.
    pub fn earliest_offset(&self, topic: &Topic, partition: u32) -> Option<u64> {
        self.topics.get(topic)?.partitions.get(partition as usize).map(PartitionLog::earliest_offset)
    }

    /// A topic's settings.
    pub fn topic_config(&self, topic: &Topic) -> Option<&TopicConfig> {
        self.topics.get(topic).map(|t| &t.config)
    }

    /// Every topic with its settings, in name order.
    pub fn topics(&self) -> impl Iterator<Item = (&Topic, &TopicConfig)> + '_ {
        self.topics.iter().map(|(t, s)| (t, &s.config))
    }

    /// A partition's readable range `(low, high)`: the oldest retained
    /// offset and the end of what is visible (synced, for a durable topic).
    /// `low == high` when nothing is readable.
    pub fn watermarks(&self, topic: &Topic, partition: u32) -> Result<(u64, u64), BrokerError> {
        let state = self.topics.get(topic).ok_or_else(|| BrokerError::UnknownTopic(topic.clone()))?;
        let log = state.partitions.get(partition as usize).ok_or_else(|| BrokerError::NoSuchPartition {
            topic: topic.clone(),
            partitions: state.config.partitions,
            requested: partition,
        })?;
        let high = state.visible_end(partition as usize);
        Ok((log.earliest_offset().min(high), high))
    }

    /// Reads `partition` from `offset` within its readable range (see
    /// [`BrokerCore::watermarks`]): at most `max_records` records and
    /// `max_bytes` of encoded records, but always the first one if there is
    /// one. An offset outside `[low, high]` is [`ReadError`]; at `high` the
    /// read is empty. The watermarks returned are those the read saw.
    pub fn read_range(
        &self,
        topic: &Topic,
        partition: u32,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<RangeRead, BrokerError> {
        let (low, high) = self.watermarks(topic, partition)?;
        if offset < low {
            let latest = high.checked_sub(1).filter(|&l| l >= low);
            return Err(ReadError::OffsetBelowRetained { requested: offset, earliest: low, latest }.into());
        }
        if offset > high {
            return Err(ReadError::OffsetBeyondEnd { requested: offset, next: high }.into());
        }
        let log = &self.topics[topic].partitions[partition as usize];
        let want = max_records.min(usize::try_from(high - offset).unwrap_or(usize::MAX));
        let messages = if want == 0 { Vec::new() } else { log.read(offset, want, max_bytes)?.records };
        Ok(RangeRead { low_watermark: low, high_watermark: high, messages })
    }

    /// Whether consumer group `group` exists (it was joined, or a commit of
    /// it was restored; groups are not removed when their last member leaves).
    pub fn has_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// The topic consumer group `group` consumes.
    pub fn group_topic(&self, group: &str) -> Option<&Topic> {
        self.groups.get(group).map(ConsumerGroup::topic)
    }

    /// Every consumer group's lag on every partition of its topic: the
    /// visible end minus the committed offset (a partition never committed
    /// counts from the earliest retained offset). For operators' metrics.
    pub fn group_lags(&self) -> Vec<GroupLag> {
        let mut lags = Vec::new();
        for (group, g) in &self.groups {
            let Some(state) = self.topics.get(g.topic()) else { continue };
            for (partition, log) in state.partitions.iter().enumerate() {
                let end = state.visible_end(partition);
                let from = g.committed(partition as u32).unwrap_or_else(|| log.earliest_offset());
                lags.push(GroupLag {
                    group: group.clone(),
                    topic: g.topic().clone(),
                    partition: partition as u32,
                    committed: g.committed(partition as u32),
                    end,
                    lag: end.saturating_sub(from),
                });
            }
        }
        lags
    }

    /// `member`'s group, the group's generation and the partitions assigned
    /// to the member (increasing).
    pub fn group_assignment(&self, member: MemberId) -> Result<(&str, u64, Vec<u32>), BrokerError> {
        let group = self.member_groups.get(&member).ok_or(GroupError::NotMember(member))?;
        let g = &self.groups[group];
        let mut assigned = g.assignment(member)?.to_vec();
        assigned.sort_unstable();
        Ok((group, g.generation(), assigned))
    }

    fn queue_append(&mut self, id: u64, partition: u32, message: Message) {
        if let Some(StorageOutput::Append { id: last_id, partition: last_partition, records }) =
            self.storage_outputs.back_mut()
            && *last_id == id
            && *last_partition == partition
        {
            records.push(message);
            return;
        }
        self.storage_outputs.push_back(StorageOutput::Append { id, partition, records: vec![message] });
    }

    /// The next storage effect to perform, in order (see [`crate::storage`]).
    pub fn poll_storage_output(&mut self) -> Option<StorageOutput> {
        self.storage_outputs.pop_front()
    }

    /// Whether storage effects are queued.
    pub fn has_storage_output(&self) -> bool {
        !self.storage_outputs.is_empty()
    }

    /// The driver synced every record of topic `id`'s `partition` below
    /// `end`: they become visible to reads and groups, and their publishes
    /// are acknowledged. Reports only ever move forward.
    pub fn handle_persisted(&mut self, id: u64, partition: u32, end: u64) {
        let Some(topic) = self.topic_ids.get(&id).cloned() else { return };
        let state = self.topics.get_mut(&topic).expect("indexed topics exist");
        let Some(durable_end) = state.durable_end.get_mut(partition as usize) else { return };
        assert!(
            end <= state.partitions[partition as usize].next_offset(),
            "{topic}/{partition}: synced end {end} is past the log's end"
        );
        if end <= *durable_end {
            return;
        }
        *durable_end = end;
        if self.log_streams > 0 {
            self.wake_log_streams(&topic);
        }
        for (member, group) in &self.member_groups {
            if self.groups[group].topic() == &topic {
                self.woken_members.push(*member);
            }
        }
    }

    /// Whether the publish that got `offset` on `partition` is acknowledged:
    /// always for a memory topic; once synced for a durable one.
    pub fn is_acknowledged(&self, topic: &Topic, partition: u32, offset: u64) -> bool {
        self.topics.get(topic).is_none_or(|t| match t.config.storage {
            // A replicated log holds committed (acknowledged) records only.
            StorageKind::Memory | StorageKind::Replicated(_) => true,
            StorageKind::Durable(_) => t.durable_end.get(partition as usize).is_none_or(|&end| offset < end),
        })
    }

    /// Rebuilds a durable topic from its files at start-up: each partition's
    /// first offset and its records (dense from there). Records beyond the
    /// retention policy are trimmed now (and the trim is queued for the
    /// driver). Everything restored is synced, hence visible.
    pub fn restore_topic(&mut self, id: u64, topic: Topic, config: TopicConfig, partitions: Vec<(u64, Vec<Message>)>) {
        assert!(self.has_storage, "restoring needs a broker with storage");
        assert!(!self.topics.contains_key(&topic), "{topic} restored twice");
        assert_eq!(partitions.len(), config.partitions as usize, "every partition of {topic} restored");
        let mut logs = Vec::with_capacity(partitions.len());
        for (partition, (start, records)) in partitions.into_iter().enumerate() {
            let mut log = PartitionLog::with_start_offset(config.retention, start);
            for (i, record) in records.into_iter().enumerate() {
                assert_eq!(record.offset(), Some(start + i as u64), "{topic}/{partition}: restored offsets are dense");
                log.append(record);
            }
            if log.earliest_offset() != start {
                let (partition, earliest) = (partition as u32, log.earliest_offset());
                self.storage_outputs.push_back(StorageOutput::Trim { id, partition, earliest });
            }
            logs.push(log);
        }
        let durable_end = logs.iter().map(PartitionLog::next_offset).collect();
        self.next_topic_id = self.next_topic_id.max(id + 1);
        let planted_unsynced = self.config.planted.is_on(PlantedBug::BrokerGroupReadsUnsynced);
        let state = TopicState { id, config, partitions: logs, durable_end, round_robin: 0, planted_unsynced };
        self.topic_ids.insert(id, topic.clone());
        self.topics.insert(topic, state);
        self.topology_version += 1;
        self.interest_grew();
    }

    /// Restores a consumer group's commit at start-up (`id`: the topic's).
    pub fn restore_commit(&mut self, group: &str, id: u64, partition: u32, next: u64) {
        let Some((topic, state)) = self.topic_ids.get(&id).and_then(|t| self.topics.get_key_value(t)) else {
            return;
        };
        let partitions = state.config.partitions;
        let g = self.groups.entry(Arc::from(group)).or_insert_with(|| ConsumerGroup::new(topic.clone(), partitions));
        if g.topic() == topic && partition < partitions {
            g.restore_committed(partition, next);
        }
    }

    /// Counters.
    pub fn stats(&self) -> BrokerStats {
        let mut s = self.stats.clone();
        s.topics = self.topics.len();
        s.partitions = self.topics.values().map(|t| t.partitions.len()).sum();
        s.streams = self.registry.len();
        s.sink_subscriptions = self.registry.sink_subscriptions();
        s.groups = self.groups.len();
        let mut dropped = self.closed_drops;
        for info in self.registry.ids() {
            let d = self.registry.get(info).expect("listed").buffer.drops();
            dropped.absorb(d);
        }
        s.dropped = dropped;
        s
    }

    /// Stops accepting publishes and subscriptions; open streams keep what
    /// they buffered for their consumers to drain.
    pub fn shutdown(&mut self) {
        self.shut_down = true;
        // A publish must now fail, not be skipped.
        self.interest_grew();
        self.replication_outputs.clear();
        self.read_rounds.clear();
        self.round_partition.clear();
        self.woken_streams.extend(self.registry.ids());
        let members: Vec<MemberId> = self.member_groups.keys().copied().collect();
        self.woken_members.extend(members);
    }

    /// Whether [`BrokerCore::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    // ----- replicated topics (see `crate::replication`) -----------------

    /// Whether `topic` is replicated.
    pub fn is_replicated(&self, topic: &Topic) -> bool {
        self.topics.get(topic).is_some_and(|t| matches!(t.config.storage, StorageKind::Replicated(_)))
    }

    /// Turns a publish to a replicated topic into a [`Proposal`] for the
    /// replicator: picks the partition, stamps the message (id from `rng`,
    /// timestamp `wall`), and queues it. Nothing is stored or delivered
    /// until the record commits.
    pub fn propose(
        &mut self,
        now: Instant,
        wall: WallTime,
        rng: &mut DetRng,
        mut message: Message,
    ) -> Result<ProposalId, BrokerError> {
        self.observe(now);
        if self.shut_down {
            return Err(BrokerError::ShutDown);
        }
        let topic = message.topic().clone();
        let state = self.topics.get_mut(&topic).ok_or_else(|| BrokerError::UnknownTopic(topic.clone()))?;
        assert!(matches!(state.config.storage, StorageKind::Replicated(_)), "{topic} is not replicated");
        let partition = state.choose_partition(&topic, &message)?;
        if !message.is_stamped() {
            message.stamp(new_message_id(rng, wall), wall);
        }
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        if self.config.planted.is_on(PlantedBug::BrokerDeliverUncommitted) {
            // Planted bug: deliver now, at the offset it should get if
            // every proposal before it commits, and not again at commit.
            let pending = self.proposals.values().filter(|p| matches!(p, ProposalState::Pending { topic: t, partition: q } if *t == topic && *q == partition)).count() as u64;
            let state = self.topics.get(&topic).expect("exists");
            let offset = state.partitions[partition as usize].next_offset() + pending;
            let early = message.clone().with_partition_offset(partition, offset);
            let mut targets = std::mem::take(&mut self.route_scratch);
            self.registry.route_into(&topic, &mut targets);
            self.offer_to(&targets, &early, false);
            self.route_scratch = targets;
            self.delivered_early.insert(message.id());
        }
        self.proposals.insert(id, ProposalState::Pending { topic: topic.clone(), partition });
        self.replication_outputs.push_back(Proposal { id, topic, partition, op: ProposalOp::Publish(message) });
        Ok(id)
    }

    /// Turns `member`'s commit on a replicated topic's `partition` into a
    /// [`Proposal`] for the replicator, once it passes the checks of a
    /// commit (member, generation, assignment, not backwards). The group's
    /// committed offset changes only when the commit applies
    /// ([`BrokerCore::handle_replicated_commit`]); the outcome is the
    /// committed offset then.
    pub fn propose_commit(
        &mut self,
        now: Instant,
        member: MemberId,
        generation: u64,
        partition: u32,
        next: u64,
    ) -> Result<ProposalId, BrokerError> {
        self.observe(now);
        if self.shut_down {
            return Err(BrokerError::ShutDown);
        }
        let group = self.member_groups.get(&member).ok_or(GroupError::NotMember(member))?;
        let g = &self.groups[group];
        let topic = g.topic().clone();
        assert!(self.is_replicated(&topic), "{topic} is not replicated");
        g.check_commit(member, generation, partition, next)?;
        let id = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        self.proposals.insert(id, ProposalState::Pending { topic: topic.clone(), partition });
        let op = ProposalOp::Commit { group: group.to_string(), next };
        self.replication_outputs.push_back(Proposal { id, topic, partition, op });
        Ok(id)
    }

    /// A committed consumer-group commit of replicated `topic`'s
    /// `partition`: group `group` (created here if this node has not seen
    /// it) has processed it below `next`. Raises the group's committed
    /// offset and its read position, never lowers them (see
    /// [`ConsumerGroup::apply_replicated_commit`]). A group this node
    /// already has over another topic keeps its own commits: names are per
    /// node, and the other topic's commits are not this one's.
    pub fn handle_replicated_commit(&mut self, now: Instant, topic: &Topic, partition: u32, group: &str, next: u64) {
        self.observe(now);
        let state = self.topics.get(topic).unwrap_or_else(|| panic!("replicated topic {topic} exists"));
        assert!(matches!(state.config.storage, StorageKind::Replicated(_)), "{topic} is replicated");
        let partitions = state.config.partitions;
        assert!(partition < partitions, "{topic} has no partition {partition}");
        let g = self.groups.entry(Arc::from(group)).or_insert_with(|| ConsumerGroup::new(topic.clone(), partitions));
        if g.topic() != topic {
            return;
        }
        if self.config.planted.is_on(PlantedBug::BrokerGroupCommitAllPartitions) {
            // Planted bug: the commit lands on every partition of the topic.
            (0..partitions).for_each(|p| g.apply_replicated_commit(p, next));
        } else {
            g.apply_replicated_commit(partition, next);
        }
        // Members polling the partition may now start further on.
        for (member, name) in &self.member_groups {
            if &**name == group {
                self.woken_members.push(*member);
            }
        }
    }

    /// A reader of replicated `topic`'s `partition` wants a linearizable
    /// read: it rides a read round (see [`crate::replication`]) — the one
    /// not yet taken by the replicator if there is one, else the next,
    /// which starts when the round in flight ends. The outcome, under the
    /// returned id, is the partition's next offset at the round's
    /// confirmed read index (as [`Published::offset`]), or
    /// [`BrokerError::ReadUnconfirmed`].
    pub fn propose_read(&mut self, now: Instant, topic: &Topic, partition: u32) -> Result<ProposalId, BrokerError> {
        self.observe(now);
        if self.shut_down {
            return Err(BrokerError::ShutDown);
        }
        let state = self.topics.get(topic).ok_or_else(|| BrokerError::UnknownTopic(topic.clone()))?;
        if !matches!(state.config.storage, StorageKind::Replicated(_)) {
            return Err(BrokerError::NoReplication(topic.clone()));
        }
        let partitions = state.config.partitions;
        if partition >= partitions {
            return Err(BrokerError::NoSuchPartition { topic: topic.clone(), partitions, requested: partition });
        }
        let reader = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        self.proposals.insert(reader, ProposalState::Pending { topic: topic.clone(), partition });
        let key = (topic.clone(), partition);
        let rounds = self.read_rounds.entry(key.clone()).or_default();
        match &mut rounds.in_flight {
            Some((_, false, readers)) => readers.push(reader),
            Some((_, true, _)) => rounds.next.push(reader),
            None => self.start_read_round(key, vec![reader]),
        }
        Ok(reader)
    }

    /// Hands a read round for `readers` of `key` to the replicator.
    fn start_read_round(&mut self, key: (Topic, u32), readers: Vec<ProposalId>) {
        let round = ProposalId(self.next_proposal);
        self.next_proposal += 1;
        let rounds = self.read_rounds.entry(key.clone()).or_default();
        assert!(rounds.in_flight.is_none(), "one read round in flight per partition");
        rounds.in_flight = Some((round, false, readers));
        self.round_partition.insert(round, key.clone());
        let (topic, partition) = key;
        self.replication_outputs.push_back(Proposal { id: round, topic, partition, op: ProposalOp::ReadIndex });
    }

    /// The next proposal for the replicator, in order.
    pub fn poll_replication_output(&mut self) -> Option<Proposal> {
        let proposal = self.replication_outputs.pop_front()?;
        if proposal.op == ProposalOp::ReadIndex {
            let key = (proposal.topic.clone(), proposal.partition);
            if let Some(ReadRounds { in_flight: Some((round, taken, _)), .. }) = self.read_rounds.get_mut(&key) {
                assert_eq!(*round, proposal.id, "the round queued is the round in flight");
                *taken = true;
            }
        }
        Some(proposal)
    }

    /// Whether proposals wait for the replicator.
    pub fn has_replication_output(&self) -> bool {
        !self.replication_outputs.is_empty()
    }

    /// The replicator learned a proposal's outcome: `Ok(offset)`, the offset
    /// it was committed at (it is acknowledged), or the refusal; for a read
    /// round, the prefix it confirmed (every reader of the round gets it,
    /// and the readers gathered since start the next round). Unknown ids
    /// (the caller gave up) are ignored. Returns the callers settled.
    pub fn handle_proposal_done(&mut self, id: ProposalId, outcome: Result<u64, BrokerError>) -> Vec<ProposalId> {
        if let Some(key) = self.round_partition.remove(&id) {
            let rounds = self.read_rounds.get_mut(&key).expect("a round's partition has rounds");
            let Some((round, _, readers)) = rounds.in_flight.take() else { unreachable!("round {id:?} in flight") };
            assert_eq!(round, id, "one read round in flight per partition");
            let next = std::mem::take(&mut rounds.next);
            let mut settled = Vec::with_capacity(readers.len());
            for reader in readers {
                if self.settle(reader, outcome.clone()) {
                    settled.push(reader);
                }
            }
            // Readers that gave up meanwhile need no round.
            let next: Vec<ProposalId> = next.into_iter().filter(|r| self.proposals.contains_key(r)).collect();
            if next.is_empty() {
                self.read_rounds.remove(&key);
            } else {
                self.start_read_round(key, next);
            }
            return settled;
        }
        if self.settle(id, outcome) { vec![id] } else { Vec::new() }
    }

    /// Records `id`'s outcome if its caller still waits for it.
    fn settle(&mut self, id: ProposalId, outcome: Result<u64, BrokerError>) -> bool {
        let Some(state) = self.proposals.get_mut(&id) else { return false };
        let ProposalState::Pending { partition, .. } = *state else {
            panic!("proposal {id:?} reported twice");
        };
        let result = outcome.map(|offset| Published { partition, offset, buffered_for: 0, acknowledged: true });
        *state = ProposalState::Done(result);
        true
    }

    /// The outcome of proposal `id` once known (taken: asked once); `None`
    /// while it is pending.
    pub fn take_proposal_outcome(&mut self, id: ProposalId) -> Option<Result<Published, BrokerError>> {
        match self.proposals.get(&id)? {
            ProposalState::Pending { .. } if self.shut_down => {
                self.proposals.remove(&id);
                Some(Err(BrokerError::ShutDown))
            }
            ProposalState::Pending { .. } => None,
            ProposalState::Done(_) => match self.proposals.remove(&id) {
                Some(ProposalState::Done(result)) => Some(result),
                _ => unreachable!("checked above"),
            },
        }
    }

    /// The caller of proposal `id` stopped waiting: forget its outcome.
    pub fn forget_proposal(&mut self, id: ProposalId) {
        self.proposals.remove(&id);
    }

    /// The topic and partition proposal `id` waits on, while pending.
    pub fn proposal_target(&self, id: ProposalId) -> Option<(&Topic, u32)> {
        match self.proposals.get(&id)? {
            ProposalState::Pending { topic, partition } => Some((topic, *partition)),
            ProposalState::Done(_) => None,
        }
    }

    /// A committed record of replicated `topic`'s `partition`, applied at
    /// `offset` — which must be the partition's next offset: every replica
    /// applies the same records in the same order. It is stored and
    /// delivered like a memory topic's publish (a commit cannot wait for a
    /// reader: a stream without room spills onto the log, see
    /// [`BrokerCore::offer_to`]).
    pub fn handle_replicated_append(
        &mut self,
        now: Instant,
        topic: &Topic,
        partition: u32,
        offset: u64,
        message: Message,
    ) {
        self.observe(now);
        let state = self.topics.get_mut(topic).unwrap_or_else(|| panic!("replicated topic {topic} exists"));
        assert!(matches!(state.config.storage, StorageKind::Replicated(_)), "{topic} is replicated");
        assert_eq!(message.topic(), topic, "a record applied to {topic}/{partition} names its topic");
        let log = &mut state.partitions[partition as usize];
        assert_eq!(log.next_offset(), offset, "{topic}/{partition}: committed records apply densely, in order");
        let message = message.with_partition_offset(partition, offset);
        log.append(message.clone());
        self.stats.published += 1;
        if self.log_streams > 0 {
            self.wake_log_streams(topic);
        }
        if self.delivered_early.is_empty() || !self.delivered_early.remove(&message.id()) {
            let mut targets = std::mem::take(&mut self.route_scratch);
            self.registry.route_into(topic, &mut targets);
            self.offer_to(&targets, &message, false);
            self.route_scratch = targets;
        }
        for (member, group) in &self.member_groups {
            if self.groups[group].topic() == topic {
                self.woken_members.push(*member);
            }
        }
    }

    /// The registry (for inspection and benchmarks).
    pub fn registry(&self) -> &StreamRegistry {
        &self.registry
    }
}

/// Spills `entry`'s stored records onto the logs (see
/// [`BrokerCore::offer_to`]): every buffered record of a durable or
/// replicated topic, and `incoming` if it is one, leaves the buffer; their
/// partitions are read from the logs from the lowest such offset on.
/// Returns whether `incoming` was taken that way and whether the stream
/// got its cursor now. Nothing stored at stake: nothing happens.
/// `planted_forget`: [`PlantedBug::BrokerSpillForgetsBuffered`].
fn spill_stored(
    topics: &BTreeMap<Topic, TopicState>,
    entry: &mut StreamEntry,
    incoming: &Message,
    planted_forget: bool,
) -> (bool, bool) {
    let stored = |m: &Message| {
        m.offset().is_some() && topics.get(m.topic()).is_some_and(|t| !matches!(t.config.storage, StorageKind::Memory))
    };
    let incoming_stored = stored(incoming);
    if !incoming_stored && !entry.buffer.holds_any(stored) {
        return (false, false);
    }
    let new_cursor = entry.log.is_none();
    let cursor = entry.log.get_or_insert_with(|| Box::new(LogCursor::spilled()));
    debug_assert!(cursor.spilled, "a log-backed stream is never offered messages");
    let taken = entry.buffer.take_where(stored);
    for m in taken.iter().chain(incoming_stored.then_some(incoming)) {
        let partition = m.partition().expect("stored records have partitions");
        let offset = m.offset().expect("stored records have offsets");
        let position = cursor.positions.entry((m.topic().clone(), partition)).or_insert(offset);
        *position = if planted_forget { (*position).max(offset + 1) } else { (*position).min(offset) };
    }
    (incoming_stored, new_cursor)
}

/// Where a log-backed stream starting at `start` begins on partition `p`.
fn initial_position(state: &TopicState, p: usize, start: StartPosition) -> u64 {
    let log = &state.partitions[p];
    let end = state.visible_end(p);
    match start {
        StartPosition::Earliest => log.earliest_offset(),
        StartPosition::Latest => end,
        StartPosition::Offset(offset) => offset.max(log.earliest_offset()),
        StartPosition::Time(t) => {
            (log.earliest_offset()..end).find(|&o| log.get(o).is_some_and(|m| m.timestamp() >= t)).unwrap_or(end)
        }
    }
}

//! The driver of durable topics: recovery at start-up and the writer task
//! that performs [`StorageOutput`]s on the runtime's [`Storage`].
//!
//! The formats, and why reads stop at the synced end, are in
//! [`crate::storage`]. This module is the IO around them:
//!
//! * [`recover`] lists the files, replays every metadata generation in
//!   order (so a newest generation torn by a crash is covered by the older
//!   ones, removed only after the new one is synced), reads each
//!   partition's segments in base-offset order, cuts a torn tail durably,
//!   and removes segments of topics whose creation never reached the disk.
//!   Damage anywhere but the tail of a partition's newest segment is synced
//!   data lost, and opening fails with [`DurableError::Corrupt`] naming the
//!   file rather than serving a log with a hole in it.
//! * [`run_writer`] takes the core's outputs in order, appends each batch of
//!   records to its partition's newest segment with one write, starts a new
//!   segment (after syncing the old one) once the old one passed
//!   `segment_bytes`, deletes segments retention emptied, and appends topic
//!   settings and group commits to the metadata file. It syncs every dirty
//!   file when the flush policies ask (a batch of an `EveryBatch` topic, or
//!   the oldest unsynced write of an `Interval` topic reaching its delay or
//!   bytes) and then reports each partition's synced end to the core,
//!   which acknowledges the publishes. An IO error is retried (after a
//!   pause) until the operation succeeds: nothing is reported synced that
//!   is not.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kaelix_core::codec::CodecError;
use kaelix_core::planted::PlantedBug;
use kaelix_core::runtime::{Priority, Runtime, Storage, StorageError, StorageFile};
use kaelix_core::time::{Duration, Instant};

use crate::message::Message;
use crate::storage::{
    DurableConfig, FlushPolicy, MetaRecord, StorageKind, StorageOutput, meta_name, parse_meta_name, parse_segment_name,
    put_frame, scan_frames, segment_name,
};
use crate::topic::Topic;
use crate::{Broker, BrokerConfig, BrokerCore, TopicConfig};

/// Why a durable broker could not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Synced data is damaged.
    #[error("file {file} is damaged: {detail}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A metadata record does not decode.
    #[error("metadata file {file}: {error}")]
    Meta {
        /// The file.
        file: String,
        /// The decoding error.
        error: CodecError,
    },
}

/// Pause before retrying a failed IO operation.
const IO_RETRY: Duration = Duration::from_millis(10);

/// One segment file of a partition.
struct Segment<F> {
    base: u64,
    name: String,
    file: F,
    /// Bytes written (the append position).
    len: u64,
    /// One past the last offset written.
    end: u64,
}

/// What the writer knows of one partition's files.
struct PartitionFiles<F> {
    /// Oldest first; the last one is appended to.
    segments: Vec<Segment<F>>,
}

/// What recovery found: the files the writer continues, and the state the
/// core is rebuilt from.
pub(crate) struct Recovered<F> {
    meta_generation: u64,
    topics: BTreeMap<u64, (Topic, TopicConfig)>,
    files: BTreeMap<(u64, u32), PartitionFiles<F>>,
    records: BTreeMap<(u64, u32), (u64, Vec<Message>)>,
    commits: BTreeMap<(String, u64, u32), u64>,
}

async fn read_all<F: StorageFile>(file: &F) -> Result<Bytes, StorageError> {
    let len = file.len();
    file.read_at(0, usize::try_from(len).expect("file fits in memory")).await
}

/// Reads the durable state (see the module docs).
pub(crate) async fn recover<S: Storage>(storage: &S) -> Result<Recovered<S::File>, DurableError> {
    let names = storage.list().await?;
    let mut metas: Vec<(u64, String)> =
        names.iter().filter_map(|n| parse_meta_name(n).map(|g| (g, n.clone()))).collect();
    metas.sort();
    let mut topics: BTreeMap<u64, (Topic, TopicConfig)> = BTreeMap::new();
    let mut commits: BTreeMap<(String, u64, u32), u64> = BTreeMap::new();
    for (_, name) in &metas {
        let file = storage.open(name).await?;
        let scan = scan_frames(&read_all(&file).await?);
        for body in &scan.bodies {
            match MetaRecord::decode(body).map_err(|error| DurableError::Meta { file: name.clone(), error })? {
                MetaRecord::Topic { id, topic, partitions, retention, durable } => {
                    let config = TopicConfig { partitions, retention, storage: StorageKind::Durable(durable) };
                    topics.insert(id, (topic, config));
                }
                MetaRecord::Commit { group, id, partition, next } => {
                    let c = commits.entry((group, id, partition)).or_insert(next);
                    *c = (*c).max(next);
                }
            }
        }
    }
    let meta_generation = metas.last().map_or(0, |(g, _)| *g);

    let mut by_partition: BTreeMap<(u64, u32), Vec<(u64, String)>> = BTreeMap::new();
    for name in &names {
        if let Some((id, partition, base)) = parse_segment_name(name) {
            let known = topics.get(&id).is_some_and(|(_, c)| partition < c.partitions);
            if known {
                by_partition.entry((id, partition)).or_default().push((base, name.clone()));
            } else {
                // Its topic's creation never reached the disk, so nothing
                // in it was ever acknowledged.
                storage.remove(name).await?;
            }
        }
    }
    let mut files = BTreeMap::new();
    let mut records = BTreeMap::new();
    for (key, mut segs) in by_partition {
        segs.sort();
        let count = segs.len();
        let mut kept: Vec<Segment<S::File>> = Vec::new();
        let mut messages = Vec::new();
        let start = segs[0].0;
        let mut next = start;
        for (i, (base, name)) in segs.into_iter().enumerate() {
            let newest = i + 1 == count;
            if base != next {
                return Err(DurableError::Corrupt {
                    file: name,
                    detail: format!("starts at offset {base}, but the previous segment ends at {next}"),
                });
            }
            let file = storage.open(&name).await?;
            let raw = read_all(&file).await?;
            let scan = scan_frames(&raw);
            let mut valid_len = 0u64;
            let mut damage = scan.damage.clone();
            for body in &scan.bodies {
                match Message::decode(body) {
                    Ok(m) if m.offset() == Some(next) && m.partition() == Some(key.1) => {
                        valid_len += 8 + body.len() as u64;
                        next += 1;
                        messages.push(m);
                    }
                    Ok(m) => {
                        damage = Some(format!("record at offset {:?} where {next} belongs", m.offset()));
                        break;
                    }
                    Err(e) => {
                        damage = Some(format!("record at offset {next} does not decode: {e}"));
                        break;
                    }
                }
            }
            if let Some(detail) = damage {
                if !newest {
                    return Err(DurableError::Corrupt { file: name, detail });
                }
                // The unsynced tail of the newest segment: cut it durably.
                file.truncate(valid_len).await?;
                file.sync().await?;
            }
            kept.push(Segment { base, name, file, len: valid_len, end: next });
        }
        files.insert(key, PartitionFiles { segments: kept });
        records.insert(key, (start, messages));
    }
    Ok(Recovered { meta_generation, topics, files, records, commits })
}

/// Opens the durable broker: recovery, the core rebuilt, a fresh metadata
/// generation, and the writer task spawned on `rt`.
pub(crate) async fn open<R: Runtime>(rt: R, config: BrokerConfig) -> Result<Broker<R>, DurableError> {
    let recovered = recover(&rt).await?;
    let Recovered { meta_generation, topics, mut files, mut records, commits } = recovered;
    let mut core = BrokerCore::with_storage(config);
    for (&id, (topic, config)) in &topics {
        let partitions = (0..config.partitions).map(|p| records.remove(&(id, p)).unwrap_or((0, Vec::new()))).collect();
        core.restore_topic(id, topic.clone(), config.clone(), partitions);
    }
    for ((group, id, partition), next) in &commits {
        core.restore_commit(group, *id, *partition, *next);
    }
    // The state as one new metadata generation; older ones go once it is synced.
    let mut snapshot = BytesMut::new();
    for (&id, (topic, config)) in &topics {
        let StorageKind::Durable(durable) = config.storage else { unreachable!("only durable topics are recorded") };
        let record = MetaRecord::Topic {
            id,
            topic: topic.clone(),
            partitions: config.partitions,
            retention: config.retention,
            durable,
        };
        put_frame(&mut snapshot, &record.encode());
    }
    for ((group, id, partition), next) in &commits {
        let record = MetaRecord::Commit { group: group.clone(), id: *id, partition: *partition, next: *next };
        put_frame(&mut snapshot, &record.encode());
    }
    let generation = meta_generation + 1;
    let meta = rt.open(&meta_name(generation)).await?;
    meta.truncate(0).await?;
    let meta_len = snapshot.len() as u64;
    if !snapshot.is_empty() {
        meta.write_at(0, snapshot.freeze()).await?;
    }
    meta.sync().await?;
    for name in rt.list().await? {
        if parse_meta_name(&name).is_some_and(|g| g < generation) {
            rt.remove(&name).await?;
        }
    }
    let mut durable_configs = BTreeMap::new();
    for (&id, (_, config)) in &topics {
        if let StorageKind::Durable(d) = config.storage {
            durable_configs.insert(id, d);
        }
        for p in 0..config.partitions {
            files.entry((id, p)).or_insert_with(|| PartitionFiles { segments: Vec::new() });
        }
    }
    let broker = Broker::from_core(rt.clone(), rt.rng(), core);
    broker.spawn_housekeeping(&rt);
    let writer = Writer {
        rt: rt.clone(),
        broker: broker.clone(),
        meta,
        meta_len,
        meta_dirty: false,
        configs: durable_configs,
        files,
        dirty: Vec::new(),
        sync_deadline: None,
        unsynced_bytes: 0,
        sync_now: false,
        written_end: BTreeMap::new(),
    };
    // Detached: the writer ends by itself once the broker shuts down and
    // everything queued is synced.
    drop(rt.spawn(Priority::High, "broker-writer", writer.run()));
    Ok(broker)
}

/// The writer task's state (see the module docs).
struct Writer<R: Runtime> {
    rt: R,
    broker: Broker<R>,
    meta: <R as Storage>::File,
    meta_len: u64,
    meta_dirty: bool,
    configs: BTreeMap<u64, DurableConfig>,
    files: BTreeMap<(u64, u32), PartitionFiles<<R as Storage>::File>>,
    /// Segments written since the last sync: (topic id, partition, segment base).
    dirty: Vec<(u64, u32, u64)>,
    /// When the oldest unsynced write of an `Interval` topic must be synced.
    sync_deadline: Option<Instant>,
    unsynced_bytes: u64,
    /// An `EveryBatch` topic (or a commit) was written in this batch.
    sync_now: bool,
    /// Per partition: one past the last offset written (reported at sync).
    written_end: BTreeMap<(u64, u32), u64>,
}

impl<R: Runtime> Writer<R> {
    async fn run(mut self) {
        loop {
            let deadline = self.sync_deadline;
            let outputs = self.broker.next_storage_outputs(deadline).await;
            let shut_down = outputs.is_none();
            for output in outputs.unwrap_or_default() {
                self.perform(output).await;
            }
            let due = deadline.is_some_and(|d| self.rt.now() >= d);
            let over_bytes = self.interval_bytes_exceeded();
            if self.sync_now || due || over_bytes || (shut_down && !self.dirty.is_empty()) {
                self.sync_all().await;
            }
            if shut_down && !self.broker.has_storage_output() {
                return;
            }
        }
    }

    fn interval_bytes_exceeded(&self) -> bool {
        self.dirty.iter().any(|(id, _, _)| match self.configs.get(id).map(|c| c.flush) {
            Some(FlushPolicy::Interval { max_bytes, .. }) => self.unsynced_bytes >= max_bytes,
            _ => false,
        })
    }

    /// Retries `op` until it succeeds (see the module docs).
    async fn retry<T, Fut>(rt: &R, mut op: impl FnMut() -> Fut) -> T
    where
        Fut: Future<Output = Result<T, StorageError>>,
    {
        loop {
            match op().await {
                Ok(v) => return v,
                Err(_) => rt.sleep(IO_RETRY).await,
            }
        }
    }

    async fn perform(&mut self, output: StorageOutput) {
        match output {
            StorageOutput::Meta(record) => {
                if let MetaRecord::Topic { id, partitions, durable, .. } = &record {
                    self.configs.insert(*id, *durable);
                    for p in 0..*partitions {
                        self.files.entry((*id, p)).or_insert_with(|| PartitionFiles { segments: Vec::new() });
                    }
                }
                self.append_meta(record).await;
            }
            StorageOutput::Append { id, partition, records } => self.append(id, partition, records).await,
            StorageOutput::Trim { id, partition, earliest } => self.trim(id, partition, earliest).await,
        }
    }

    async fn append_meta(&mut self, record: MetaRecord) {
        let mut frame = BytesMut::new();
        put_frame(&mut frame, &record.encode());
        let (frame, at) = (frame.freeze(), self.meta_len);
        let meta = self.meta.clone();
        Self::retry(&self.rt, || meta.write_at(at, frame.clone())).await;
        self.meta_len += frame.len() as u64;
        self.meta_dirty = true;
        self.sync_now = true;
    }

    async fn append(&mut self, id: u64, partition: u32, records: Vec<Message>) {
        let config = *self.configs.get(&id).expect("a topic's settings are written before its records");
        let mut pending = records.into_iter().peekable();
        while let Some(first) = pending.peek() {
            let first_offset = first.offset().expect("appended records have offsets");
            let needs_new = self.files[&(id, partition)].segments.last().is_none_or(|s| s.len >= config.segment_bytes);
            if needs_new {
                self.roll(id, partition, first_offset).await;
            }
            // Frame records into the newest segment until it is full.
            let seg = self.files.get_mut(&(id, partition)).expect("exists").segments.last_mut().expect("rolled");
            assert_eq!(seg.end, first_offset, "{id}/{partition}: records reach the writer in offset order");
            let mut buf = BytesMut::new();
            while let Some(m) = pending.next_if(|_| seg.len + (buf.len() as u64) < config.segment_bytes) {
                put_frame(&mut buf, &m.encode_to_bytes());
                seg.end += 1;
            }
            let (at, data) = (seg.len, buf.freeze());
            seg.len += data.len() as u64;
            let (file, base, end) = (seg.file.clone(), seg.base, seg.end);
            Self::retry(&self.rt, || file.write_at(at, data.clone())).await;
            if !self.dirty.contains(&(id, partition, base)) {
                self.dirty.push((id, partition, base));
            }
            self.written_end.insert((id, partition), end);
            self.unsynced_bytes += data.len() as u64;
            match config.flush {
                FlushPolicy::EveryBatch => self.sync_now = true,
                FlushPolicy::Interval { max_delay, .. } => {
                    let due = self.rt.now() + max_delay;
                    self.sync_deadline = Some(self.sync_deadline.map_or(due, |d| d.min(due)));
                }
            }
        }
    }

    /// Starts a new segment at `base`, after syncing the current one (so a
    /// later segment on disk implies the earlier ones are whole).
    async fn roll(&mut self, id: u64, partition: u32, base: u64) {
        if let Some(seg) = self.files[&(id, partition)].segments.last()
            && self.dirty.contains(&(id, partition, seg.base))
        {
            let file = seg.file.clone();
            Self::retry(&self.rt, || file.sync()).await;
        }
        let name = segment_name(id, partition, base);
        let rt = self.rt.clone();
        let file = Self::retry(&self.rt, || rt.open(&name)).await;
        kaelix_core::sometimes!(self.rt, "broker rolled onto a segment left by a crashed run", file.len() > 0);
        // A file left by a run whose records never synced: start it empty.
        if file.len() > 0 {
            Self::retry(&self.rt, || file.truncate(0)).await;
        }
        self.files.get_mut(&(id, partition)).expect("exists").segments.push(Segment {
            base,
            name,
            file,
            len: 0,
            end: base,
        });
    }

    /// Deletes segments whose every record is below `earliest` (never the
    /// newest, which later records extend).
    async fn trim(&mut self, id: u64, partition: u32, earliest: u64) {
        loop {
            let segs = &self.files[&(id, partition)].segments;
            if segs.len() < 2 || segs[0].end > earliest {
                return;
            }
            let seg = self.files.get_mut(&(id, partition)).expect("exists").segments.remove(0);
            self.dirty.retain(|d| *d != (id, partition, seg.base));
            let rt = self.rt.clone();
            Self::retry(&self.rt, || rt.remove(&seg.name)).await;
        }
    }

    async fn sync_all(&mut self) {
        let planted = self.broker.planted();
        if planted.is_on(PlantedBug::BrokerAckBeforeSync) {
            for (&(id, partition), &end) in &self.written_end {
                self.broker.persisted(id, partition, end);
            }
        }
        // Fault point: a slow fsync. Publishes waiting on it stay
        // unacknowledged for longer; a crash inside the window must lose
        // nothing acknowledged.
        if kaelix_core::buggify!(self.rt, "durable broker: a slow fsync") {
            self.rt.sleep(Duration::from_millis(15)).await;
        }
        kaelix_core::sometimes!(self.rt, "broker sync covered several partitions", self.dirty.len() > 1);
        if self.meta_dirty {
            let meta = self.meta.clone();
            Self::retry(&self.rt, || meta.sync()).await;
            self.meta_dirty = false;
        }
        for (id, partition, base) in std::mem::take(&mut self.dirty) {
            let seg = self.files[&(id, partition)].segments.iter().find(|s| s.base == base);
            if let Some(seg) = seg {
                let file = seg.file.clone();
                Self::retry(&self.rt, || file.sync()).await;
            }
        }
        self.sync_deadline = None;
        self.unsynced_bytes = 0;
        self.sync_now = false;
        for ((id, partition), end) in std::mem::take(&mut self.written_end) {
            self.broker.persisted(id, partition, end);
        }
    }
}

//! The seed's `StreamRegistry` and `StreamRouter`.
//!
//! The **registry** owns every active stream (a push subscription, plain or
//! in a queue group): its pattern, its buffer, its activity. It enforces the
//! capacity limit, answers "which streams does this topic reach", and closes
//! streams whose consumer has not read for the idle timeout.
//!
//! The **router** turns a topic into the streams one message goes to: every
//! matching plain stream, plus exactly one member of each matching queue
//! group — chosen round-robin among members with room, so a slow member
//! does not receive more than its share.
//!
//! The registry also holds **sink subscriptions** (see [`crate::sink`]):
//! many subscriptions delivered through one [`Sink`] each, with no buffer
//! of their own, in a slab beside the streams. The router treats them as
//! it treats plain streams and queue-group members.

use std::collections::BTreeMap;
use std::sync::Arc;

use kaelix_core::planted::{Planted, PlantedBug};

use crate::backpressure::{Strategy, SubscriptionBuffer, Thresholds};
use crate::message::Message;
use crate::sink::{Delivery, SINK_BIT, Sink, SinkId, SinkSubscription, Slab, is_sink_subscription};
use crate::subscription::SubscriptionIndex;
use crate::topic::{Pattern, Topic};
use kaelix_core::WallTime;
use kaelix_core::time::{Duration, Instant};

/// Identifies one stream (subscription) of a broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

/// Where a log-backed stream starts reading each partition (see
/// `BrokerCore::subscribe_from`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest retained record.
    Earliest,
    /// The end: only records published after subscribing.
    Latest,
    /// This offset (or the oldest retained, if retention removed it).
    Offset(u64),
    /// The first retained record stamped at or after this time.
    Time(WallTime),
}

/// A log-backed stream's positions: the next offset to deliver of every
/// partition its pattern matches. Its consumer reads the partition logs
/// themselves, so it never drops a record while the record is retained.
#[derive(Debug)]
pub struct LogCursor {
    /// Where partitions known at subscription start.
    pub start: StartPosition,
    /// Next offset per matching (topic, partition).
    pub positions: BTreeMap<(Topic, u32), u64>,
    /// The broker's topology version `positions` covers (topics and
    /// partitions created later are added, from their earliest record).
    pub seen_version: u64,
    /// The partition served last (the next poll looks after it first, so
    /// partitions take turns).
    pub last: Option<(Topic, u32)>,
    /// A live stream that spilled onto the logs (see
    /// `BrokerCore::offer_to`): `positions` covers only the stored
    /// partitions it fell behind on, which it reads from the logs from then
    /// on; everything else still comes through its buffer.
    pub spilled: bool,
    /// A spilled stream's turn: the buffer (true) or the logs go first.
    pub buffer_turn: bool,
}

impl LogCursor {
    /// A spilled stream's cursor (see [`LogCursor::spilled`]), covering nothing yet.
    pub fn spilled() -> Self {
        LogCursor {
            start: StartPosition::Latest,
            positions: BTreeMap::new(),
            seen_version: 0,
            last: None,
            spilled: true,
            buffer_turn: false,
        }
    }

    /// Whether a spilled stream reads `topic`'s `partition` from the log.
    pub fn covers(&self, topic: &Topic, partition: u32) -> bool {
        self.positions.contains_key(&(topic.clone(), partition))
    }
}

/// One active stream.
#[derive(Debug)]
pub struct StreamEntry {
    /// What it subscribed to.
    pub pattern: Pattern,
    /// Its queue group, if any.
    pub queue_group: Option<Arc<str>>,
    /// Its buffer.
    pub buffer: SubscriptionBuffer,
    /// When it was opened.
    pub opened: Instant,
    /// When its consumer last read (or when it was opened).
    pub last_active: Instant,
    /// Messages handed to its consumer.
    pub delivered: u64,
    /// Set for a log-backed stream (it buffers nothing; it reads the logs).
    /// Boxed: plain streams, the common case, stay small.
    pub log: Option<Box<LogCursor>>,
}

/// A stream as the registry reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream.
    pub id: StreamId,
    /// Its pattern.
    pub pattern: Pattern,
    /// Its queue group.
    pub queue_group: Option<Arc<str>>,
    /// Buffered messages.
    pub buffered: usize,
    /// Delivered messages.
    pub delivered: u64,
    /// Dropped messages (every reason).
    pub dropped: u64,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The capacity limit is reached.
    #[error("stream limit reached: {limit} streams are open")]
    TooManyStreams {
        /// The limit.
        limit: usize,
    },
    /// The sink already has a subscription with this tag.
    #[error("the sink already has a subscription tagged {tag}")]
    DuplicateTag {
        /// The tag.
        tag: u64,
    },
    /// The sink is closed (or never was opened).
    #[error("unknown sink {0:?}")]
    UnknownSink(SinkId),
}

/// One open sink: the delivery path and its subscriptions by tag.
struct SinkEntry {
    sink: Arc<dyn Sink>,
    /// Tag → the subscription's id.
    subscriptions: BTreeMap<u64, StreamId>,
}

impl std::fmt::Debug for SinkEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkEntry").field("subscriptions", &self.subscriptions.len()).finish_non_exhaustive()
    }
}

/// Active streams (see the module docs).
#[derive(Debug)]
pub struct StreamRegistry {
    streams: BTreeMap<StreamId, StreamEntry>,
    index: SubscriptionIndex<StreamId>,
    next_id: u64,
    max_streams: usize,
    idle_timeout: Option<Duration>,
    thresholds: Thresholds,
    /// Planted bugs the buffers carry (none outside simulation tests).
    planted: Planted,
    /// Round-robin cursor per queue group.
    group_cursors: BTreeMap<Arc<str>, u64>,
    /// Open sinks, by [`SinkId`].
    sinks: Slab<SinkEntry>,
    /// Sink subscriptions, by the slot their id names (id without [`SINK_BIT`]).
    sink_subscriptions: Slab<SinkSubscription>,
}

impl StreamRegistry {
    /// An empty registry.
    pub fn new(max_streams: usize, idle_timeout: Option<Duration>, thresholds: Thresholds) -> Self {
        StreamRegistry {
            streams: BTreeMap::new(),
            index: SubscriptionIndex::new(),
            next_id: 1,
            max_streams,
            idle_timeout,
            thresholds,
            planted: Planted::NONE,
            group_cursors: BTreeMap::new(),
            sinks: Slab::new(),
            sink_subscriptions: Slab::new(),
        }
    }

    /// The registry with planted bugs switched on in its buffers (see
    /// `kaelix_core::planted`).
    #[must_use]
    pub fn with_planted(mut self, planted: Planted) -> Self {
        self.planted = planted;
        self
    }

    /// Opens a stream.
    pub fn open(
        &mut self,
        now: Instant,
        pattern: Pattern,
        queue_group: Option<Arc<str>>,
        strategy: Strategy,
    ) -> Result<StreamId, RegistryError> {
        self.check_capacity()?;
        let id = StreamId(self.next_id);
        self.next_id += 1;
        self.index.insert(&pattern, id);
        let buffer = SubscriptionBuffer::new(strategy, self.thresholds).with_planted(self.planted);
        self.streams.insert(
            id,
            StreamEntry { pattern, queue_group, buffer, opened: now, last_active: now, delivered: 0, log: None },
        );
        Ok(id)
    }

    /// Closes a stream; returns its entry (with whatever it still buffered).
    pub fn close(&mut self, id: StreamId) -> Option<StreamEntry> {
        let entry = self.streams.remove(&id)?;
        let removed = self.index.remove(&entry.pattern, id);
        debug_assert!(removed, "an open stream is in the index");
        Some(entry)
    }

    /// A stream.
    pub fn get(&self, id: StreamId) -> Option<&StreamEntry> {
        self.streams.get(&id)
    }

    /// A stream, mutably.
    pub fn get_mut(&mut self, id: StreamId) -> Option<&mut StreamEntry> {
        self.streams.get_mut(&id)
    }

    /// Every stream whose pattern matches `topic` (by-topic lookup).
    pub fn streams_for(&mut self, topic: &Topic) -> Arc<[StreamId]> {
        self.index.matches(topic)
    }

    /// The router's choice for one message on `topic`: every matching plain
    /// stream and one member per matching queue group (see module docs).
    pub fn route(&mut self, topic: &Topic) -> Vec<StreamId> {
        let mut targets = Vec::new();
        self.route_into(topic, &mut targets);
        targets
    }

    /// [`StreamRegistry::route`] into `targets` (cleared first), so a hot
    /// loop reuses one buffer.
    pub fn route_into(&mut self, topic: &Topic, targets: &mut Vec<StreamId>) {
        targets.clear();
        let matched = self.index.matches(topic);
        let mut groups: BTreeMap<Arc<str>, Vec<StreamId>> = BTreeMap::new();
        for &id in matched.iter() {
            if is_sink_subscription(id) {
                let sub = self.sink_subscription(id);
                match &sub.queue_group {
                    None => targets.push(id),
                    Some(g) => groups.entry(g.clone()).or_default().push(id),
                }
                continue;
            }
            let entry = &self.streams[&id];
            match &entry.queue_group {
                // Log-backed streams read the logs; they are woken, not fed
                // (a live stream that spilled onto the logs is still fed
                // what it does not read from them).
                None if entry.log.as_ref().is_some_and(|c| !c.spilled) => {}
                None => targets.push(id),
                Some(g) => groups.entry(g.clone()).or_default().push(id),
            }
        }
        for (group, members) in groups {
            let cursor = self.group_cursors.entry(group).or_insert(0);
            let start = (*cursor % members.len() as u64) as usize;
            *cursor = cursor.wrapping_add(1);
            // First member from the cursor with room; if none has room, the
            // cursor's member (its strategy decides what happens). Room is
            // what the buffer may still take without dropping: a growing
            // buffer below its cap has room even when it would have to grow.
            let has_room = |id: &StreamId| {
                if is_sink_subscription(*id) {
                    let sink = self.sink_subscription(*id).sink;
                    return self.sinks.get(sink.0).expect("a subscribed sink is open").sink.has_room();
                }
                let b = &self.streams[id].buffer;
                b.len() < b.strategy().max_capacity()
            };
            let ignore_room = self.planted.is_on(PlantedBug::BrokerQueueGroupIgnoresRoom);
            let chosen = (0..members.len())
                .map(|i| members[(start + i) % members.len()])
                .find(|id| has_room(id) && !ignore_room)
                .unwrap_or(members[start]);
            targets.push(chosen);
        }
    }

    /// The streams whose pattern matches `topic` (plain, queue-group and
    /// log-backed alike).
    pub fn index_matches(&mut self, topic: &Topic) -> Arc<[StreamId]> {
        self.index.matches(topic)
    }

    fn check_capacity(&self) -> Result<(), RegistryError> {
        if self.streams.len() + self.sink_subscriptions.len() >= self.max_streams {
            return Err(RegistryError::TooManyStreams { limit: self.max_streams });
        }
        Ok(())
    }

    fn sink_subscription(&self, id: StreamId) -> &SinkSubscription {
        debug_assert!(is_sink_subscription(id));
        self.sink_subscriptions.get((id.0 & !SINK_BIT) as u32).expect("an indexed sink subscription exists")
    }

    /// Opens a sink (see [`crate::sink`]).
    pub fn open_sink(&mut self, sink: Arc<dyn Sink>) -> SinkId {
        SinkId(self.sinks.insert(SinkEntry { sink, subscriptions: BTreeMap::new() }))
    }

    /// Closes a sink and every subscription on it; returns how many there were.
    pub fn close_sink(&mut self, sink: SinkId) -> usize {
        let Some(entry) = self.sinks.remove(sink.0) else { return 0 };
        for &id in entry.subscriptions.values() {
            let sub = self.sink_subscriptions.remove((id.0 & !SINK_BIT) as u32).expect("listed subscriptions exist");
            let removed = self.index.remove(&sub.pattern, id);
            debug_assert!(removed, "a sink subscription is in the index");
        }
        entry.subscriptions.len()
    }

    /// Subscribes `pattern` on `sink` as `tag` (optionally in a queue group).
    pub fn subscribe_sink(
        &mut self,
        sink: SinkId,
        pattern: Pattern,
        queue_group: Option<Arc<str>>,
        tag: u64,
    ) -> Result<StreamId, RegistryError> {
        self.check_capacity()?;
        let entry = self.sinks.get(sink.0).ok_or(RegistryError::UnknownSink(sink))?;
        if entry.subscriptions.contains_key(&tag) {
            return Err(RegistryError::DuplicateTag { tag });
        }
        let slot = self.sink_subscriptions.insert(SinkSubscription {
            pattern: pattern.clone(),
            queue_group,
            sink,
            tag,
            delivered: 0,
            max: u64::MAX,
        });
        let id = StreamId(SINK_BIT | u64::from(slot));
        self.sinks.get_mut(sink.0).expect("checked").subscriptions.insert(tag, id);
        let inserted = self.index.insert(&pattern, id);
        debug_assert!(inserted, "a new id is not in the index yet");
        Ok(id)
    }

    /// Removes `sink`'s subscription `tag`; false if there is none.
    pub fn unsubscribe_sink(&mut self, sink: SinkId, tag: u64) -> bool {
        let Some(id) = self.sinks.get_mut(sink.0).and_then(|e| e.subscriptions.remove(&tag)) else { return false };
        let sub = self.sink_subscriptions.remove((id.0 & !SINK_BIT) as u32).expect("listed subscriptions exist");
        let removed = self.index.remove(&sub.pattern, id);
        debug_assert!(removed, "a sink subscription is in the index");
        true
    }

    /// Ends `sink`'s subscription `tag` once `max` messages in total were
    /// delivered to it: at once (removed, `Some(true)`) if that many were
    /// already; `None` if there is no such subscription.
    pub fn limit_sink(&mut self, sink: SinkId, tag: u64, max: u64) -> Option<bool> {
        let id = *self.sinks.get(sink.0)?.subscriptions.get(&tag)?;
        let sub = self.sink_subscriptions.get_mut((id.0 & !SINK_BIT) as u32).expect("listed subscriptions exist");
        sub.max = max;
        if sub.delivered >= max {
            self.unsubscribe_sink(sink, tag);
            return Some(true);
        }
        Some(false)
    }

    /// Hands `message` to the sink subscription `id` (routed to it); after
    /// its last allowed delivery the subscription is removed and its sink
    /// told ([`Sink::ended`]).
    pub fn deliver_to_sink(&mut self, id: StreamId, message: &Message) -> Delivery {
        let slot = (id.0 & !SINK_BIT) as u32;
        let sub = self.sink_subscriptions.get_mut(slot).expect("routed sink subscriptions exist");
        debug_assert!(sub.delivered < sub.max, "a subscription past its limit was removed");
        let entry = self.sinks.get(sub.sink.0).expect("a subscribed sink is open");
        let outcome = entry.sink.deliver(sub.tag, &sub.pattern, message);
        if outcome == Delivery::Delivered {
            sub.delivered += 1;
            if sub.delivered >= sub.max {
                let (sink, tag) = (sub.sink, sub.tag);
                let sink_ref = entry.sink.clone();
                self.unsubscribe_sink(sink, tag);
                sink_ref.ended(tag);
            }
        }
        outcome
    }

    /// The tag of a subscription of `sink` whose pattern matches `topic`
    /// (the lowest id's, so the answer is deterministic), if any. Leaves
    /// the match cache alone (one-off topics such as reply inboxes).
    pub fn sink_tag_matching(&self, sink: SinkId, topic: &Topic) -> Option<u64> {
        self.index
            .matches_uncached(topic)
            .into_iter()
            .filter(|id| is_sink_subscription(*id))
            .map(|id| self.sink_subscription(id))
            .find(|sub| sub.sink == sink)
            .map(|sub| sub.tag)
    }

    /// How many subscriptions `sink` has.
    pub fn sink_len(&self, sink: SinkId) -> usize {
        self.sinks.get(sink.0).map_or(0, |e| e.subscriptions.len())
    }

    /// Whether `sink` has a subscription tagged `tag`.
    pub fn sink_contains(&self, sink: SinkId, tag: u64) -> bool {
        self.sinks.get(sink.0).is_some_and(|e| e.subscriptions.contains_key(&tag))
    }

    /// Sink subscriptions over every sink.
    pub fn sink_subscriptions(&self) -> usize {
        self.sink_subscriptions.len()
    }

    /// Heap bytes of the sink subscriptions' slab (benchmarks, tests).
    pub fn sink_subscription_heap_bytes(&self) -> usize {
        self.sink_subscriptions.heap_bytes()
    }

    /// Closes streams idle for longer than the idle timeout; returns them.
    pub fn close_idle(&mut self, now: Instant) -> Vec<(StreamId, StreamEntry)> {
        let Some(timeout) = self.idle_timeout else { return Vec::new() };
        let idle: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_active) > timeout)
            .map(|(id, _)| *id)
            .collect();
        idle.into_iter().filter_map(|id| self.close(id).map(|e| (id, e))).collect()
    }

    /// When the next stream would become idle, if an idle timeout is set.
    pub fn next_idle_deadline(&self) -> Option<Instant> {
        let timeout = self.idle_timeout?;
        self.streams.values().map(|e| e.last_active + timeout).min()
    }

    /// Open streams (sink subscriptions not counted: [`StreamRegistry::sink_subscriptions`]).
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Every open stream.
    pub fn active_streams(&self) -> Vec<StreamInfo> {
        self.streams
            .iter()
            .map(|(id, e)| StreamInfo {
                id: *id,
                pattern: e.pattern.clone(),
                queue_group: e.queue_group.clone(),
                buffered: e.buffer.len(),
                delivered: e.delivered,
                dropped: e.buffer.drops().total(),
            })
            .collect()
    }

    /// Ids of every open stream.
    pub fn ids(&self) -> Vec<StreamId> {
        self.streams.keys().copied().collect()
    }

    /// The routing index's approximate heap use (benchmarks).
    pub fn index(&self) -> &SubscriptionIndex<StreamId> {
        &self.index
    }
}

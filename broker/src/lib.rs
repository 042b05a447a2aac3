//! The embedded broker: topics with partitions, publish (one or a batch,
//! by key with consistent hashing or round-robin), push subscriptions by
//! pattern (fan-out), queue groups, consumer groups with committed offsets,
//! backpressure per subscription, dead letters — usable under the simulator
//! and the real executor alike.
//!
//! Two layers, as everywhere in Kaelix:
//!
//! * [`BrokerCore`] (sans-IO): the partition logs and routing state. Time
//!   and rng are handed in; it never waits.
//! * [`Broker`] (this module): the async API over a [`Clock`]. It keeps the
//!   core behind a mutex and the wakers of waiting consumers and blocked
//!   publishers beside it; after every call it wakes whoever the core says
//!   may now make progress.
//!
//! ```
//! use kaelix_broker::{Broker, SubscribeOptions};
//! use kaelix_broker::message::Message;
//! # use kaelix_broker::testing::ManualClock;
//! # let clock = ManualClock::default();
//! # futures_util::FutureExt::now_or_never(async {
//! let broker = Broker::new(clock, kaelix_core::rng::seeded(7), Default::default());
//! let mut orders = broker.subscribe("orders.>", SubscribeOptions::default())?;
//! let msg = Message::builder().topic("orders.eu").payload("42 widgets").build()?;
//! let published = broker.publish(msg).await?;
//! let got = orders.next().await.expect("delivered");
//! assert_eq!(got.payload().as_ref(), b"42 widgets");
//! assert_eq!(got.offset(), Some(published.offset));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap().unwrap();
//! ```

pub mod backpressure;
mod broker_core;
pub mod commit_trace;
pub mod durable;
pub mod groups;
pub mod intercept;
pub mod message;
pub mod partition;
pub mod registry;
pub mod replication;
pub mod sink;
pub mod storage;
pub mod subscription;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod topic;

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::task::{Poll, Waker};

pub use self::backpressure::{DropCounts, MessagePriority, PressureLevel, Strategy, Thresholds};
pub use self::broker_core::{
    BatchOutcome, BrokerConfig, BrokerCore, BrokerError, BrokerStats, DEFAULT_RETAINED_BYTES, GroupLag, PublishOutcome,
    Published, RangeRead, Routed, TopicConfig, dead_letter_headers, jump_hash, partition_for_key,
};
pub use self::commit_trace::{CommitSpan, CommitTracer};
pub use self::groups::{GroupError, MemberId};
pub use self::registry::{StartPosition, StreamId, StreamInfo};
pub use self::sink::{Delivery, Sink, SinkId};
use kaelix_core::rng::DetRng;
use kaelix_core::runtime::Clock;
use kaelix_core::time::{Duration, Instant, WallTime};

use crate::intercept::{Disposition, HookOutcome, PublishHook};
use crate::message::{Message, MessageBatch};
use crate::replication::{Proposal, ProposalId};
use crate::topic::{Pattern, Topic};

/// How to subscribe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The buffer's backpressure strategy (`None`: the topic's, see
    /// [`BrokerConfig::topic_strategies`]).
    pub strategy: Option<Strategy>,
    /// Join this queue group: each message goes to one of its members.
    pub queue_group: Option<String>,
    /// Read the partition logs from here instead of being fed a buffer (a
    /// log-backed stream: never drops a retained record; see
    /// [`BrokerCore::subscribe_from`]). Not with a queue group or a strategy.
    pub start: Option<StartPosition>,
}

struct State {
    core: BrokerCore,
    rng: DetRng,
    /// The durable writer, waiting for storage outputs.
    writer_waker: Option<Waker>,
    /// The housekeeping task, sleeping until its next round.
    housekeeping_waker: Option<Waker>,
    /// The replicator, waiting for proposals.
    replicator_waker: Option<Waker>,
    /// Publishers waiting for their proposal's outcome.
    proposal_wakers: BTreeMap<ProposalId, Waker>,
    /// The latest clock reading handed to the core.
    last_now: Instant,
    /// Publishers waiting for their record to be synced: (topic, partition, offset).
    ack_waiters: Vec<(Topic, u32, u64, Waker)>,
    /// Readers waiting for a partition to become readable at an offset
    /// ([`Broker::wait_readable`]), by waiter id.
    read_waiters: BTreeMap<u64, ReadWaiter>,
    next_read_waiter: u64,
    stream_wakers: BTreeMap<StreamId, Waker>,
    member_wakers: BTreeMap<MemberId, Waker>,
    blocked_publishers: Vec<(Vec<StreamId>, Waker)>,
    /// Reused buffers for the woken lists (no allocation per call).
    scratch_streams: Vec<StreamId>,
    scratch_members: Vec<MemberId>,
}

/// A reader waiting in [`Broker::wait_readable`].
struct ReadWaiter {
    topic: Topic,
    partition: u32,
    offset: u64,
    waker: Waker,
}

/// Whether a reader at `offset` of `partition` has something to do: the
/// offset is no longer the head of the readable range (a record is readable
/// there, or the offset is out of range), the partition is gone, or the
/// broker shut down.
fn readable(core: &BrokerCore, topic: &Topic, partition: u32, offset: u64) -> bool {
    core.is_shut_down() || core.watermarks(topic, partition).ok().is_none_or(|(_, high)| offset != high)
}

impl State {
    /// Wakers of everyone the last core call unblocked.
    fn collect_wakers(&mut self) -> Vec<Waker> {
        let (mut streams, mut members) =
            (std::mem::take(&mut self.scratch_streams), std::mem::take(&mut self.scratch_members));
        self.core.drain_woken_into(&mut streams, &mut members);
        let mut wakers = Vec::new();
        if !self.stream_wakers.is_empty() {
            wakers.extend(streams.iter().filter_map(|id| self.stream_wakers.remove(id)));
        }
        if !self.member_wakers.is_empty() {
            wakers.extend(members.iter().filter_map(|m| self.member_wakers.remove(m)));
        }
        if (self.core.has_storage_output() || self.core.is_shut_down())
            && let Some(w) = self.writer_waker.take()
        {
            wakers.push(w);
        }
        if self.core.is_shut_down()
            && let Some(w) = self.housekeeping_waker.take()
        {
            wakers.push(w);
        }
        if (self.core.has_replication_output() || self.core.is_shut_down())
            && let Some(w) = self.replicator_waker.take()
        {
            wakers.push(w);
        }
        if self.core.is_shut_down() {
            wakers.extend(std::mem::take(&mut self.proposal_wakers).into_values());
        }
        if !self.read_waiters.is_empty() {
            let core = &self.core;
            self.read_waiters.retain(|_, w| {
                let ready = readable(core, &w.topic, w.partition, w.offset);
                if ready {
                    wakers.push(w.waker.clone());
                }
                !ready
            });
        }
        let any_stream = !streams.is_empty();
        self.scratch_streams = streams;
        self.scratch_members = members;
        if !self.blocked_publishers.is_empty() && (any_stream || self.core.is_shut_down()) {
            let core = &self.core;
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.blocked_publishers)
                .into_iter()
                .partition(|(ids, _)| core.is_shut_down() || core.blocked_on_any_free(ids));
            self.blocked_publishers = waiting;
            wakers.extend(ready.into_iter().map(|(_, w)| w));
        }
        wakers
    }
}

/// The embedded broker (cheap to clone; clones share one broker).
pub struct Broker<C: Clock> {
    state: Arc<Mutex<State>>,
    clock: C,
    /// Whether durable topics are possible (opened with storage): a memory
    /// broker skips every acknowledgement bookkeeping.
    has_storage: bool,
    /// Whether replicated topics are possible (a replicator is attached):
    /// only then does a publish look up whether its topic is replicated.
    has_replication: bool,
    /// The publish hook (processor chains), shared by every clone; see
    /// [`intercept`]. Read on every publish, replaced rarely.
    hook: Arc<RwLock<Option<Arc<dyn PublishHook>>>>,
    /// Whether `hook` holds one: a publish without hooks takes no lock for
    /// them. Changed only under `hook`'s write lock.
    has_hook: Arc<AtomicBool>,
    /// What traces replicated publishes (see [`commit_trace`]), shared by
    /// every clone; installed at most once.
    commit_tracer: Arc<OnceLock<Arc<dyn CommitTracer>>>,
    /// The core's interest epoch (see [`Broker::interest`]), moved also
    /// when the hook changes.
    interest_epoch: Arc<AtomicU64>,
    /// Publishes front ends skipped for lack of interest (counted as
    /// relayed in [`Broker::stats`]).
    unheard: Arc<AtomicU64>,
}

impl<C: Clock> Clone for Broker<C> {
    fn clone(&self) -> Self {
        Broker {
            state: self.state.clone(),
            clock: self.clock.clone(),
            has_storage: self.has_storage,
            has_replication: self.has_replication,
            hook: self.hook.clone(),
            has_hook: self.has_hook.clone(),
            commit_tracer: self.commit_tracer.clone(),
            interest_epoch: self.interest_epoch.clone(),
            unheard: self.unheard.clone(),
        }
    }
}

/// A publish after the hook: what to publish, or what became of it.
enum Hooked {
    /// No hook covers the topic: publish the message as it is.
    Untouched(Message),
    /// The hook's outputs, in order (at least one).
    Outputs(intercept::HookOutputs),
}

impl<C: Clock> Broker<C> {
    /// A broker whose timestamps come from `clock` and ids from `rng`.
    pub fn new(clock: C, rng: DetRng, config: BrokerConfig) -> Self {
        Self::from_core(clock, rng, BrokerCore::new(config))
    }

    /// A memory broker to which a replicator attaches (see
    /// [`replication`]): replicated topics may be created, and the
    /// replicator takes their proposals with [`Broker::next_proposals`].
    pub fn with_replication(clock: C, rng: DetRng, config: BrokerConfig) -> Self {
        let mut core = BrokerCore::new(config);
        core.enable_replication();
        Self::from_core(clock, rng, core)
    }

    fn from_core(clock: C, rng: DetRng, core: BrokerCore) -> Self {
        let (has_storage, has_replication) = (core.has_storage(), core.has_replication());
        let interest_epoch = core.interest_epoch();
        let state = State {
            core,
            rng,
            writer_waker: None,
            housekeeping_waker: None,
            replicator_waker: None,
            proposal_wakers: BTreeMap::new(),
            last_now: Instant::ZERO,
            ack_waiters: Vec::new(),
            read_waiters: BTreeMap::new(),
            next_read_waiter: 0,
            stream_wakers: BTreeMap::new(),
            member_wakers: BTreeMap::new(),
            blocked_publishers: Vec::new(),
            scratch_streams: Vec::new(),
            scratch_members: Vec::new(),
        };
        Broker {
            state: Arc::new(Mutex::new(state)),
            clock,
            has_storage,
            has_replication,
            hook: Arc::new(RwLock::new(None)),
            has_hook: Arc::new(AtomicBool::new(false)),
            commit_tracer: Arc::new(OnceLock::new()),
            interest_epoch,
            unheard: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Installs what traces this broker's replicated publishes (see
    /// [`commit_trace`]), for it and its clones; `false` if one was
    /// installed already (it stays).
    pub fn set_commit_tracer(&self, tracer: Arc<dyn CommitTracer>) -> bool {
        self.commit_tracer.set(tracer).is_ok()
    }

    /// Installs `hook` in the publish path of this broker and its clones
    /// (replacing the previous one; `None` removes it). Publishes already
    /// past the hook finish as they were; later ones see the new hook.
    pub fn set_publish_hook(&self, hook: Option<Arc<dyn PublishHook>>) {
        {
            let mut slot = self.hook.write().unwrap_or_else(|e| e.into_inner());
            self.has_hook.store(hook.is_some(), Ordering::Release);
            *slot = hook;
        }
        // A subject nobody was interested in may be the hook's now.
        self.interest_epoch.fetch_add(1, Ordering::Release);
    }

    /// The interest epoch now: see [`Broker::interest`].
    pub fn interest_epoch(&self) -> u64 {
        self.interest_epoch.load(Ordering::Acquire)
    }

    /// Whether a publish to `topic` ([`Broker::route`] and its variants)
    /// would do anything but count a relay to nobody — a hook covers the
    /// topic, it is stored (or would be created), a live subscription
    /// matches it, or the broker is shut down — and the epoch this answer
    /// holds for. A `false` stays true while [`Broker::interest_epoch`]
    /// returns that epoch (every change that could make it `true` moves
    /// the epoch), so a front end may skip such publishes without the
    /// broker's lock until then, counting them with
    /// [`Broker::count_unheard`].
    pub fn interest(&self, topic: &Topic) -> (bool, u64) {
        // Read before looking: a change after this moves the epoch past it.
        let epoch = self.interest_epoch();
        if self.has_hook.load(Ordering::Acquire) {
            let guard = self.hook.read().unwrap_or_else(|e| e.into_inner());
            if guard.as_ref().is_some_and(|h| h.applies_to(topic)) {
                return (true, epoch);
            }
        }
        (self.lock().core.has_interest(topic), epoch)
    }

    /// Counts `n` publishes skipped for lack of interest (see
    /// [`Broker::interest`]) as relayed.
    pub fn count_unheard(&self, n: u64) {
        self.unheard.fetch_add(n, Ordering::Relaxed);
    }

    /// Runs the hook on `message` if one covers its topic: writes the dead
    /// letters it asks for and returns what is left to publish, or the
    /// message's disposition as [`BrokerError::Intercepted`].
    fn run_hook(&self, message: Message) -> Result<Hooked, BrokerError> {
        if !self.has_hook.load(Ordering::Acquire) {
            return Ok(Hooked::Untouched(message));
        }
        let hook = {
            let guard = self.hook.read().unwrap_or_else(|e| e.into_inner());
            match &*guard {
                Some(h) if h.applies_to(message.topic()) => h.clone(),
                _ => return Ok(Hooked::Untouched(message)),
            }
        };
        let HookOutcome { publish, dead_letters, dropped_by } = hook.on_publish(message);
        let mut disposition = None;
        for dead in &dead_letters {
            self.with(|s, now, wall| {
                let State { core, rng, .. } = &mut *s;
                core.dead_letter_from(now, wall, rng, &dead.message, &dead.reason, 1, Some(&dead.plugin))
            })?;
            disposition.get_or_insert_with(|| Disposition::DeadLettered {
                plugin: dead.plugin.clone(),
                reason: dead.reason.clone(),
            });
        }
        if !publish.is_empty() {
            return Ok(Hooked::Outputs(publish));
        }
        let disposition = disposition
            .unwrap_or_else(|| Disposition::Dropped { plugin: dropped_by.unwrap_or_else(|| "(unnamed)".to_owned()) });
        Err(BrokerError::Intercepted(disposition))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then wakes whoever it unblocked (outside the lock).
    fn with<T>(&self, f: impl FnOnce(&mut State, Instant, WallTime) -> T) -> T {
        let (now, wall) = (self.clock.now(), self.clock.wall_clock());
        let mut state = self.lock();
        // Two threads may read the clock in one order and take the lock in
        // the other: the core sees the later of the two readings.
        let now = now.max(state.last_now);
        state.last_now = now;
        let out = f(&mut state, now, wall);
        let wakers = state.collect_wakers();
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
        out
    }

    /// Creates a topic (or grows its partitions).
    pub fn create_topic(&self, topic: &str, config: TopicConfig) -> Result<(), BrokerError> {
        let topic = Topic::new(topic)?;
        self.with(|s, _, _| s.core.create_topic(topic, config))
    }

    /// Replaces a topic's retention and applies it now (see
    /// [`BrokerCore::set_retention`]); returns the records removed.
    pub fn set_retention(&self, topic: &Topic, policy: partition::RetentionPolicy) -> Result<u64, BrokerError> {
        self.with(|s, _, wall| s.core.set_retention(topic, policy, wall))
    }

    /// Publishes `message`, waiting while a blocking subscriber is full and,
    /// on a durable topic, until the record is synced (the acknowledgement).
    ///
    /// A [`PublishHook`] covering the topic sees the message first (see
    /// [`intercept`]): the result is its first output's, or
    /// [`BrokerError::Intercepted`] when no output is left.
    pub async fn publish(&self, message: Message) -> Result<Published, BrokerError> {
        match self.run_hook(message)? {
            Hooked::Untouched(m) => self.publish_direct(m).await,
            Hooked::Outputs(outputs) => {
                let mut first = None;
                for m in outputs {
                    let p = self.publish_direct(m).await?;
                    first.get_or_insert(p);
                }
                Ok(first.expect("at least one output"))
            }
        }
    }

    async fn publish_direct(&self, message: Message) -> Result<Published, BrokerError> {
        if self.is_replicated(message.topic()) {
            return self.publish_replicated(message).await;
        }
        let topic = message.topic().clone();
        let mut published = self.publish_unacknowledged_direct(message).await?;
        if !published.acknowledged {
            self.acknowledged(&topic, published.partition, published.offset).await;
            published.acknowledged = true;
        }
        Ok(published)
    }

    /// Waits until the record at `offset` of `partition` is acknowledged
    /// (at once for a memory topic; once synced for a durable one).
    async fn acknowledged(&self, topic: &Topic, partition: u32, offset: u64) {
        poll_fn(|cx| {
            let mut s = self.lock();
            if s.core.is_acknowledged(topic, partition, offset) {
                Poll::Ready(())
            } else {
                s.ack_waiters.push((topic.clone(), partition, offset, cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
    }

    /// [`Broker::publish`] without waiting for the sync of a durable topic:
    /// `p.acknowledged` false is acknowledged once
    /// [`Broker::wait_acknowledged`] returns for it. Still waits while a
    /// blocking subscriber is full. Goes through the publish hook as
    /// [`Broker::publish`] does.
    pub async fn publish_unacknowledged(&self, message: Message) -> Result<Published, BrokerError> {
        match self.run_hook(message)? {
            Hooked::Untouched(m) => self.publish_unacknowledged_direct(m).await,
            Hooked::Outputs(outputs) => {
                let mut first = None;
                for m in outputs {
                    let p = self.publish_unacknowledged_direct(m).await?;
                    first.get_or_insert(p);
                }
                Ok(first.expect("at least one output"))
            }
        }
    }

    async fn publish_unacknowledged_direct(&self, message: Message) -> Result<Published, BrokerError> {
        if self.is_replicated(message.topic()) {
            return self.publish_replicated(message).await;
        }
        self.until_unblocked(message, BrokerCore::publish_or_return).await
    }

    /// Runs `op` on the core with `message`, and again each time a full
    /// blocking stream that refused it is read from, until it goes through.
    #[allow(clippy::type_complexity)]
    async fn until_unblocked<T>(
        &self,
        message: Message,
        op: fn(
            &mut BrokerCore,
            Instant,
            WallTime,
            &mut DetRng,
            Message,
        ) -> Result<Result<T, (Message, Vec<StreamId>)>, BrokerError>,
    ) -> Result<T, BrokerError> {
        let mut pending = Some(message);
        poll_fn(|cx| {
            self.with(|s, now, wall| {
                let State { core, rng, .. } = &mut *s;
                let message = pending.take().expect("polled after completion");
                match op(core, now, wall, rng, message) {
                    Ok(Ok(done)) => Poll::Ready(Ok(done)),
                    Ok(Err((message, ids))) => {
                        pending = Some(message);
                        s.blocked_publishers.push((ids, cx.waker().clone()));
                        Poll::Pending
                    }
                    Err(e) => Poll::Ready(Err(e)),
                }
            })
        })
        .await
    }

    /// Publishes `message` if its topic exists (or auto-creation is on),
    /// else relays it to the matching live subscriptions without storing
    /// it (see [`Routed`]). Waits while a matching blocking subscriber is
    /// full and, when stored on a durable topic, until synced.
    /// Goes through the publish hook as [`Broker::publish`] does.
    pub async fn route(&self, message: Message) -> Result<Routed, BrokerError> {
        match self.run_hook(message)? {
            Hooked::Untouched(m) => self.route_direct(m).await,
            Hooked::Outputs(outputs) => {
                let mut first = None;
                for m in outputs {
                    let r = self.route_direct(m).await?;
                    first.get_or_insert(r);
                }
                Ok(first.expect("at least one output"))
            }
        }
    }

    async fn route_direct(&self, message: Message) -> Result<Routed, BrokerError> {
        if self.is_replicated(message.topic()) {
            return self.publish_replicated(message).await.map(Routed::Stored);
        }
        let topic = message.topic().clone();
        Ok(match self.route_unacknowledged_direct(message).await? {
            Routed::Stored(mut published) if !published.acknowledged => {
                self.acknowledged(&topic, published.partition, published.offset).await;
                published.acknowledged = true;
                Routed::Stored(published)
            }
            other => other,
        })
    }

    /// [`Broker::route`] without waiting for the sync of a durable topic:
    /// `Stored(p)` with `p.acknowledged` false is acknowledged once
    /// [`Broker::wait_acknowledged`] returns for it (or for a later offset
    /// of the same partition: a partition is synced in offset order).
    /// Goes through the publish hook as [`Broker::publish`] does.
    pub async fn route_unacknowledged(&self, message: Message) -> Result<Routed, BrokerError> {
        match self.run_hook(message)? {
            Hooked::Untouched(m) => self.route_unacknowledged_direct(m).await,
            Hooked::Outputs(outputs) => {
                let mut first = None;
                for m in outputs {
                    let r = self.route_unacknowledged_direct(m).await?;
                    first.get_or_insert(r);
                }
                Ok(first.expect("at least one output"))
            }
        }
    }

    async fn route_unacknowledged_direct(&self, message: Message) -> Result<Routed, BrokerError> {
        if self.is_replicated(message.topic()) {
            return self.publish_replicated(message).await.map(Routed::Stored);
        }
        self.until_unblocked(message, BrokerCore::route_or_return).await
    }

    /// [`Broker::route_unacknowledged`] without waiting: `Ok(None)` when a
    /// matching blocking subscriber is full (nothing happened).
    ///
    /// Through a publish hook, the chain has run once the call returns, so
    /// its outputs are never left undone: an output that would block is
    /// dead-lettered instead (reason `would block`), and `Ok(None)` is not
    /// returned for them.
    pub fn try_route(&self, message: Message) -> Result<Option<Routed>, BrokerError> {
        let outputs = match self.run_hook(message)? {
            Hooked::Untouched(m) => return self.try_route_direct(m),
            Hooked::Outputs(outputs) => outputs,
        };
        let mut first = None;
        for m in outputs {
            let r = match self.try_route_direct(m.clone())? {
                Some(r) => Ok(r),
                None => {
                    Err(self.dead_letter(&m, "would block: a full blocking subscriber after the plugin chain", 1)?)
                }
            };
            first.get_or_insert(r);
        }
        match first.expect("at least one output") {
            Ok(r) => Ok(Some(r)),
            Err(_) => Err(BrokerError::Intercepted(Disposition::DeadLettered {
                plugin: "(broker)".to_owned(),
                reason: "would block".to_owned(),
            })),
        }
    }

    /// [`Broker::try_route`] for many messages, in order, under one lock
    /// and one clock reading: each routed message's result is pushed to
    /// `routed` and the message taken from the front of `messages`. Stops
    /// at the first message that would block on a full blocking stream
    /// (it stays at the front, for the caller to route and wait with
    /// [`Broker::route_unacknowledged`]). A front end reading a burst of
    /// publishes pays the lock, the clocks and the wake-ups once per burst.
    ///
    /// Only for what needs nothing but the core: returns `false` (nothing
    /// done) when a publish hook is installed or a replicator attached,
    /// whose paths take each message on its own.
    pub fn try_route_many(
        &self,
        messages: &mut std::collections::VecDeque<Message>,
        routed: &mut Vec<Result<Routed, BrokerError>>,
    ) -> bool {
        if self.has_replication || self.has_hook.load(Ordering::Acquire) {
            return false;
        }
        self.with(|s, now, wall| {
            let State { core, rng, .. } = &mut *s;
            while let Some(message) = messages.pop_front() {
                match core.route_or_return(now, wall, rng, message) {
                    Ok(Ok(r)) => routed.push(Ok(r)),
                    Ok(Err((message, _))) => {
                        messages.push_front(message);
                        break;
                    }
                    Err(e) => routed.push(Err(e)),
                }
            }
        });
        true
    }

    fn try_route_direct(&self, message: Message) -> Result<Option<Routed>, BrokerError> {
        self.with(|s, now, wall| {
            let State { core, rng, .. } = &mut *s;
            Ok(core.route_or_return(now, wall, rng, message)?.ok())
        })
    }

    /// Waits until the record at `offset` of `topic`'s `partition`, and so
    /// every earlier one, is acknowledged (at once on a memory topic).
    pub async fn wait_acknowledged(&self, topic: &Topic, partition: u32, offset: u64) {
        self.acknowledged(topic, partition, offset).await;
    }

    /// Whether `topic` is replicated (always false without a replicator:
    /// no lock taken).
    pub fn is_replicated(&self, topic: &Topic) -> bool {
        self.has_replication && self.lock().core.is_replicated(topic)
    }

    /// A batch on a broker with a replicator: each message in order, each
    /// acknowledged (committed, or synced) before the next is published.
    async fn publish_batch_replicating(&self, batch: MessageBatch) -> Result<Vec<Published>, BrokerError> {
        let mut all = Vec::with_capacity(batch.len());
        for message in batch {
            all.push(self.publish(message).await?);
        }
        Ok(all)
    }

    /// Publishes to a replicated topic: proposes, then waits for the outcome
    /// (see [`replication`]). Dropping the future forgets the proposal's
    /// outcome (the record may still commit).
    async fn publish_replicated(&self, message: Message) -> Result<Published, BrokerError> {
        self.propose_replicated(message)?.await
    }

    /// Proposes `message` to its replicated topic now, in call order, and
    /// returns the wait for its outcome (see [`Proposed`]).
    fn propose_replicated(&self, message: Message) -> Result<Proposed<C>, BrokerError> {
        // A traced publish's message carries its `broker.publish` span's
        // context: the installed tracer follows the replication from
        // proposal to outcome — forwarded to the leader or not — as that
        // span's child (see [`commit_trace`]).
        let span = self.commit_tracer.get().and_then(|t| t.begin(&message));
        let id = self.with(|s, now, wall| {
            let State { core, rng, .. } = &mut *s;
            core.propose(now, wall, rng, message)
        });
        // A refused proposal's span is dropped, as before the split.
        id.map(|id| Proposed { broker: self.clone(), id: Some(id), span })
    }

    /// [`Broker::route_unacknowledged`] that does not wait for a replicated
    /// topic's commit: the message is proposed before this returns (so the
    /// proposals of one caller keep its call order), and
    /// [`Pipelined::Proposed`] is the wait for the outcome, which the
    /// caller may hold while it proposes more. Anything else is routed as
    /// [`Broker::route_unacknowledged`] routes it. A message a publish hook
    /// turned into outputs is routed output by output, each one waited for.
    pub async fn route_pipelined(&self, message: Message) -> Result<Pipelined<C>, BrokerError> {
        match self.run_hook(message)? {
            Hooked::Untouched(m) if self.is_replicated(m.topic()) => {
                self.propose_replicated(m).map(Pipelined::Proposed)
            }
            Hooked::Untouched(m) => self.until_unblocked(m, BrokerCore::route_or_return).await.map(Pipelined::Routed),
            Hooked::Outputs(outputs) => {
                let mut first = None;
                for m in outputs {
                    let r = self.route_unacknowledged_direct(m).await?;
                    first.get_or_insert(r);
                }
                Ok(Pipelined::Routed(first.expect("at least one output")))
            }
        }
    }

    /// Polls proposal `id`'s outcome: taken once ready (the waker is then
    /// dropped), else the waker is registered for [`Broker::proposal_done`].
    fn poll_proposal_outcome(&self, id: ProposalId, waker: &Waker) -> Poll<Result<Published, BrokerError>> {
        let mut s = self.lock();
        match s.core.take_proposal_outcome(id) {
            Some(outcome) => {
                s.proposal_wakers.remove(&id);
                Poll::Ready(outcome)
            }
            None => {
                s.proposal_wakers.insert(id, waker.clone());
                Poll::Pending
            }
        }
    }

    /// Forgets proposal `id`'s outcome (nobody waits for it any more).
    fn forget_proposal(&self, id: ProposalId) {
        let mut s = self.lock();
        s.core.forget_proposal(id);
        s.proposal_wakers.remove(&id);
    }

    /// Waits for proposal `id`'s outcome. Dropping the future forgets it
    /// (the proposal may still commit).
    async fn proposal_outcome(&self, id: ProposalId) -> Result<Published, BrokerError> {
        Proposed { broker: self.clone(), id: Some(id), span: None }.await
    }

    /// The replicator's next proposals, in order (see [`replication`]);
    /// `None` once the broker is shut down.
    pub async fn next_proposals(&self) -> Option<Vec<Proposal>> {
        poll_fn(|cx| {
            let mut s = self.lock();
            if s.core.is_shut_down() {
                return Poll::Ready(None);
            }
            if s.core.has_replication_output() {
                let mut out = Vec::new();
                while let Some(p) = s.core.poll_replication_output() {
                    out.push(p);
                }
                return Poll::Ready(Some(out));
            }
            s.replicator_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The replicator applies a committed record of `topic`'s `partition`
    /// at `offset` (see [`BrokerCore::handle_replicated_append`]).
    pub fn replicated_append(&self, topic: &Topic, partition: u32, offset: u64, message: Message) {
        self.with(|s, now, _| s.core.handle_replicated_append(now, topic, partition, offset, message));
    }

    /// The replicator applies a committed consumer-group commit of
    /// `topic`'s `partition` (see [`BrokerCore::handle_replicated_commit`]).
    pub fn replicated_commit(&self, topic: &Topic, partition: u32, group: &str, next: u64) {
        self.with(|s, now, _| s.core.handle_replicated_commit(now, topic, partition, group, next));
    }

    /// The replicator reports proposal `id`'s outcome (see
    /// [`BrokerCore::handle_proposal_done`]).
    pub fn proposal_done(&self, id: ProposalId, outcome: Result<u64, BrokerError>) {
        let wakers: Vec<Waker> = self.with(|s, _, _| {
            let settled = s.core.handle_proposal_done(id, outcome);
            settled.iter().filter_map(|id| s.proposal_wakers.remove(id)).collect()
        });
        for w in wakers {
            w.wake();
        }
    }

    /// A linearizable read's barrier on replicated `topic`'s `partition`
    /// (see [`replication`]'s "Linearizable reads"): the group's leader
    /// confirms the partition's committed prefix, `n` offsets, after this
    /// call began, and this returns `n` once this broker's log holds all
    /// of them. A read of the log served after it returns sees every
    /// record committed before the call. Concurrent calls share rounds.
    /// Refused with [`BrokerError::ReadUnconfirmed`] when no leader
    /// confirms (retry), and with the topic's errors. It waits as long as
    /// the replicator does: bound it with a timeout. Dropping the future
    /// forgets the wait.
    pub async fn confirm_read(&self, topic: &Topic, partition: u32) -> Result<u64, BrokerError> {
        let id = self.with(|s, now, _| s.core.propose_read(now, topic, partition))?;
        let prefix = self.proposal_outcome(id).await?.offset;
        loop {
            let next = {
                let s = self.lock();
                if s.core.is_shut_down() {
                    return Err(BrokerError::ShutDown);
                }
                s.core.next_offset(topic, partition).unwrap_or(0)
            };
            if next >= prefix {
                return Ok(prefix);
            }
            // Woken when the replicator appends the record at `next`.
            self.wait_readable(topic, partition, next).await;
        }
    }

    /// Where proposal `id` waits: its topic and partition (`None` once
    /// answered or forgotten).
    pub fn proposal_target(&self, id: ProposalId) -> Option<(Topic, u32)> {
        self.lock().core.proposal_target(id).map(|(t, p)| (t.clone(), p))
    }

    /// Whether `topic` exists.
    pub fn has_topic(&self, topic: &Topic) -> bool {
        self.with(|s, _, _| s.core.partitions(topic).is_some())
    }

    /// Creates `topic`, refusing one that exists ([`BrokerError::TopicExists`])
    /// instead of growing it as [`Broker::create_topic`] does.
    pub fn create_new_topic(&self, topic: &Topic, config: TopicConfig) -> Result<(), BrokerError> {
        self.with(|s, _, _| match s.core.partitions(topic) {
            Some(existing) => Err(BrokerError::TopicExists { topic: topic.clone(), existing }),
            None => s.core.create_topic(topic.clone(), config),
        })
    }

    /// Every topic with its settings, in name order.
    pub fn topics(&self) -> Vec<(Topic, TopicConfig)> {
        self.lock().core.topics().map(|(t, c)| (t.clone(), c.clone())).collect()
    }

    /// A topic's settings.
    pub fn topic_config(&self, topic: &Topic) -> Option<TopicConfig> {
        self.lock().core.topic_config(topic).cloned()
    }

    /// A partition's readable range `(low, high)` (see [`BrokerCore::watermarks`]).
    pub fn watermarks(&self, topic: &Topic, partition: u32) -> Result<(u64, u64), BrokerError> {
        self.lock().core.watermarks(topic, partition)
    }

    /// Reads a partition within its readable range, with a record and a
    /// byte limit (see [`BrokerCore::read_range`]).
    pub fn read_range(
        &self,
        topic: &Topic,
        partition: u32,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<RangeRead, BrokerError> {
        self.lock().core.read_range(topic, partition, offset, max_records, max_bytes)
    }

    /// Waits until a record is readable at `offset` of `topic`'s `partition`
    /// — or the offset is outside the readable range, the partition does
    /// not exist, or the broker shut down: whatever a reader at `offset`
    /// should look at again. Woken by the append (memory topics) or the
    /// sync (durable ones), not by polling. Dropping the future forgets
    /// the wait.
    pub async fn wait_readable(&self, topic: &Topic, partition: u32, offset: u64) {
        struct Registration<'a, C: Clock> {
            broker: &'a Broker<C>,
            id: Option<u64>,
        }
        impl<C: Clock> Drop for Registration<'_, C> {
            fn drop(&mut self) {
                if let Some(id) = self.id {
                    self.broker.lock().read_waiters.remove(&id);
                }
            }
        }
        let mut registration = Registration { broker: self, id: None };
        poll_fn(|cx| {
            let mut s = self.lock();
            if readable(&s.core, topic, partition, offset) {
                if let Some(id) = registration.id.take() {
                    s.read_waiters.remove(&id);
                }
                return Poll::Ready(());
            }
            let id = *registration.id.get_or_insert_with(|| {
                s.next_read_waiter += 1;
                s.next_read_waiter
            });
            let waiter = ReadWaiter { topic: topic.clone(), partition, offset, waker: cx.waker().clone() };
            s.read_waiters.insert(id, waiter);
            Poll::Pending
        })
        .await;
    }

    /// Whether consumer group `group` exists (see [`BrokerCore::has_group`]).
    pub fn has_group(&self, group: &str) -> bool {
        self.lock().core.has_group(group)
    }

    /// The topic consumer group `group` consumes, if the group exists.
    pub fn group_topic(&self, group: &str) -> Option<Topic> {
        self.lock().core.group_topic(group).cloned()
    }

    /// Publishes without waiting: a full blocking subscriber is reported as
    /// [`PublishOutcome::WouldBlock`]. On a durable topic the outcome is not
    /// an acknowledgement: the record is synced later (use
    /// [`Broker::publish`] to wait for it).
    ///
    /// Through a publish hook: the outcome of its first output; later
    /// outputs that would block are dead-lettered (reason `would block`).
    pub fn try_publish(&self, message: Message) -> Result<PublishOutcome, BrokerError> {
        let outputs = match self.run_hook(message)? {
            Hooked::Untouched(m) => return self.try_publish_direct(m),
            Hooked::Outputs(outputs) => outputs,
        };
        let mut first = None;
        for m in outputs {
            let outcome = self.try_publish_direct(m.clone())?;
            if first.is_some() && matches!(outcome, PublishOutcome::WouldBlock(_)) {
                self.dead_letter(&m, "would block: a full blocking subscriber after the plugin chain", 1)?;
            }
            first.get_or_insert(outcome);
        }
        Ok(first.expect("at least one output"))
    }

    fn try_publish_direct(&self, message: Message) -> Result<PublishOutcome, BrokerError> {
        self.with(|s, now, wall| {
            let State { core, rng, .. } = &mut *s;
            core.publish(now, wall, rng, message)
        })
    }

    /// Publishes a batch in order, waiting where a message would block and,
    /// on durable topics, until every record is synced.
    ///
    /// When a publish hook covers any of its topics, the batch is published
    /// message by message through the hook (same order); a message the
    /// chain kept from its topic has no entry in the result.
    pub async fn publish_batch(&self, batch: MessageBatch) -> Result<Vec<Published>, BrokerError> {
        if self.hook_covers_any(&batch) {
            let mut all = Vec::with_capacity(batch.len());
            for m in batch {
                match self.publish(m).await {
                    Ok(p) => all.push(p),
                    Err(BrokerError::Intercepted(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(all);
        }
        if self.has_replication {
            return self.publish_batch_replicating(batch).await;
        }
        if !self.has_storage {
            // Every topic is in memory: published means acknowledged.
            return self.publish_batch_unacknowledged(batch).await;
        }
        let topics: Vec<Topic> = batch.iter().map(|m| m.topic().clone()).collect();
        let mut published = self.publish_batch_unacknowledged(batch).await?;
        for (topic, p) in topics.iter().zip(published.iter_mut()) {
            if !p.acknowledged {
                self.acknowledged(topic, p.partition, p.offset).await;
                p.acknowledged = true;
            }
        }
        Ok(published)
    }

    /// [`Broker::publish_batch`] without waiting for the syncs of durable
    /// topics (see [`Broker::publish_unacknowledged`]). On an error, the
    /// messages before the failing one are published.
    pub async fn publish_batch_unacknowledged(&self, batch: MessageBatch) -> Result<Vec<Published>, BrokerError> {
        if self.hook_covers_any(&batch) {
            let mut all = Vec::with_capacity(batch.len());
            for m in batch {
                match self.publish_unacknowledged(m).await {
                    Ok(p) => all.push(p),
                    Err(BrokerError::Intercepted(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(all);
        }
        if self.has_replication {
            return self.publish_batch_replicating(batch).await;
        }
        let mut all = Vec::with_capacity(batch.len());
        let mut pending = Some(batch);
        poll_fn(|cx| {
            self.with(|s, now, wall| {
                let State { core, rng, .. } = &mut *s;
                let batch = pending.take().expect("polled after completion");
                match core.publish_batch(now, wall, rng, batch) {
                    Ok((done, None)) => {
                        all.extend(done);
                        Poll::Ready(Ok(()))
                    }
                    Ok((done, Some((rest, ids)))) => {
                        all.extend(done);
                        pending = Some(rest);
                        s.blocked_publishers.push((ids, cx.waker().clone()));
                        Poll::Pending
                    }
                    Err(e) => Poll::Ready(Err(e)),
                }
            })
        })
        .await?;
        Ok(all)
    }

    /// Whether the publish hook covers a topic of `batch`.
    fn hook_covers_any(&self, batch: &MessageBatch) -> bool {
        let guard = self.hook.read().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().is_some_and(|h| batch.iter().any(|m| h.applies_to(m.topic())))
    }

    /// Subscribes to `pattern`.
    pub fn subscribe(&self, pattern: &str, options: SubscribeOptions) -> Result<Subscription<C>, BrokerError> {
        let pattern = Pattern::new(pattern)?;
        let id = match options.start {
            Some(_) if options.queue_group.is_some() || options.strategy.is_some() => {
                return Err(BrokerError::InvalidSubscription(
                    "a subscription with a start position reads the logs: it takes no queue group and no backpressure strategy",
                ));
            }
            Some(start) => self.with(|s, now, _| s.core.subscribe_from(now, pattern, start))?,
            None => {
                self.with(|s, now, _| s.core.subscribe(now, pattern, options.queue_group.as_deref(), options.strategy))?
            }
        };
        Ok(Subscription { broker: self.clone(), id })
    }

    /// Opens a sink: one delivery path for many subscriptions, each only a
    /// small record (see [`sink`]). Dropping the handle closes the sink and
    /// its subscriptions.
    pub fn open_sink(&self, sink: Arc<dyn Sink>) -> Result<SinkHandle<C>, BrokerError> {
        let id = self.with(|s, _, _| s.core.open_sink(sink))?;
        Ok(SinkHandle { broker: self.clone(), id })
    }

    /// Joins consumer group `group` over `topic`.
    pub fn join_group(&self, group: &str, topic: &str) -> Result<GroupMember<C>, BrokerError> {
        let topic = Topic::new(topic)?;
        let (member, _) = self.with(|s, _, _| s.core.join_group(group, &topic))?;
        Ok(GroupMember { broker: self.clone(), member })
    }

    /// Reads a partition from `offset` (replay).
    pub fn read(&self, topic: &str, partition: u32, offset: u64, max: usize) -> Result<Vec<Message>, BrokerError> {
        let topic = Topic::new(topic)?;
        self.lock().core.read(&topic, partition, offset, max)
    }

    /// A partition's next offset (its high watermark).
    pub fn next_offset(&self, topic: &str, partition: u32) -> Option<u64> {
        let topic = Topic::new(topic).ok()?;
        self.lock().core.next_offset(&topic, partition)
    }

    /// A consumer group's committed offset on `partition` (next to read).
    pub fn committed(&self, group: &str, partition: u32) -> Option<u64> {
        self.lock().core.group_committed(group, partition)
    }

    /// Counters.
    pub fn stats(&self) -> BrokerStats {
        let mut stats = self.lock().core.stats();
        stats.relayed += self.unheard.load(Ordering::Relaxed);
        stats
    }

    /// The subscription match cache's counters (hits, misses, evictions).
    pub fn match_cache_stats(&self) -> subscription::CacheStats {
        self.lock().core.match_cache_stats()
    }

    /// Every consumer group's lag per partition.
    pub fn group_lags(&self) -> Vec<GroupLag> {
        self.lock().core.group_lags()
    }

    /// The registry's view of every open stream.
    pub fn active_streams(&self) -> Vec<StreamInfo> {
        self.lock().core.active_streams()
    }

    /// Sends `message` to its dead-letter topic (see [`dead_letter_headers`]).
    pub fn dead_letter(&self, message: &Message, reason: &str, attempts: u32) -> Result<Published, BrokerError> {
        self.with(|s, now, wall| {
            let State { core, rng, .. } = &mut *s;
            core.dead_letter(now, wall, rng, message, reason, attempts)
        })
    }

    /// Feeds `subscription` to `processor` until the subscription ends:
    /// rejected messages, and messages still refused after `max_attempts`
    /// deliveries, go to the dead-letter topic.
    pub async fn process<P: StreamProcessor>(
        &self,
        subscription: &mut Subscription<C>,
        processor: &mut P,
        max_attempts: u32,
    ) -> ProcessReport {
        assert!(max_attempts >= 1, "at least one delivery attempt");
        let mut report = ProcessReport::default();
        while let Some(message) = subscription.next().await {
            let mut attempts = 0;
            loop {
                attempts += 1;
                let dead = match processor.process(&message) {
                    Verdict::Accept => {
                        report.accepted += 1;
                        None
                    }
                    Verdict::Reject(reason) => Some(format!("rejected: {reason}")),
                    Verdict::Retry(_) if attempts < max_attempts => {
                        report.retried += 1;
                        continue;
                    }
                    Verdict::Retry(reason) => Some(format!("exceeded {max_attempts} delivery attempts: {reason}")),
                };
                if let Some(reason) = dead {
                    // The dead-letter topic auto-creates; a refusal here is a
                    // broker shutting down, and the message stays unacked.
                    if self.dead_letter(&message, &reason, attempts).is_ok() {
                        report.dead_lettered += 1;
                    }
                }
                break;
            }
        }
        report
    }

    /// Closes idle streams and enforces retention by age, every `interval`,
    /// until the broker shuts down. Spawn it on the runtime.
    pub async fn run_housekeeping(&self, interval: Duration) {
        use futures_util::future::{Either, select};
        loop {
            // Sleep, but end at once when the broker shuts down (a task left
            // sleeping would outlive the broker by up to an interval).
            let stopped = poll_fn(|cx| {
                let mut s = self.lock();
                if s.core.is_shut_down() {
                    Poll::Ready(())
                } else {
                    s.housekeeping_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            });
            let sleep = std::pin::pin!(self.clock.sleep(interval));
            if let Either::Right(_) = select(sleep, std::pin::pin!(stopped)).await {
                return;
            }
            let done = self.with(|s, now, wall| {
                s.core.handle_timeout(now, wall);
                s.core.is_shut_down()
            });
            if done {
                return;
            }
        }
    }

    /// The writer's next batch of storage outputs: `Some(empty)` once
    /// `deadline` passes with nothing queued, `None` once the broker is shut
    /// down and nothing is left.
    async fn next_storage_outputs(&self, deadline: Option<Instant>) -> Option<Vec<storage::StorageOutput>> {
        use futures_util::future::{Either, select};
        let wait = poll_fn(|cx| {
            let mut s = self.lock();
            if s.core.has_storage_output() {
                let mut out = Vec::new();
                while let Some(o) = s.core.poll_storage_output() {
                    out.push(o);
                }
                return Poll::Ready(Some(out));
            }
            if s.core.is_shut_down() {
                return Poll::Ready(None);
            }
            s.writer_waker = Some(cx.waker().clone());
            Poll::Pending
        });
        match deadline {
            None => wait.await,
            Some(deadline) => {
                let sleep = std::pin::pin!(self.clock.sleep_until(deadline));
                match select(std::pin::pin!(wait), sleep).await {
                    Either::Left((outputs, _)) => outputs,
                    Either::Right(((), _)) => Some(Vec::new()),
                }
            }
        }
    }

    fn planted(&self) -> kaelix_core::planted::Planted {
        self.lock().core.config().planted
    }

    fn has_storage_output(&self) -> bool {
        self.lock().core.has_storage_output()
    }

    /// The writer synced topic `id`'s `partition` below `end`: acknowledge.
    fn persisted(&self, id: u64, partition: u32, end: u64) {
        let acked = self.with(|s, _, _| {
            s.core.handle_persisted(id, partition, end);
            let State { core, ack_waiters, .. } = &mut *s;
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(ack_waiters)
                .into_iter()
                .partition(|(topic, partition, offset, _)| core.is_acknowledged(topic, *partition, *offset));
            *ack_waiters = waiting;
            ready
        });
        acked.into_iter().for_each(|(_, _, _, w)| w.wake());
    }

    /// Graceful shutdown: no new publishes or subscriptions; subscribers
    /// drain what is buffered, then see the end of their stream; blocked
    /// publishers get [`BrokerError::ShutDown`].
    pub fn shutdown(&self) {
        self.with(|s, _, _| s.core.shutdown());
    }
}

impl<R: kaelix_core::runtime::Runtime> Broker<R> {
    /// A memory-only broker on `rt` with its housekeeping task running
    /// (idle streams closed and retention by age enforced every
    /// [`BrokerConfig::housekeeping_interval`]). [`Broker::new`] leaves
    /// housekeeping to the caller ([`Broker::run_housekeeping`]).
    pub fn start(rt: R, config: BrokerConfig) -> Broker<R> {
        let broker = Broker::new(rt.clone(), rt.rng(), config);
        broker.spawn_housekeeping(&rt);
        broker
    }

    /// Spawns [`Broker::run_housekeeping`] at the configured interval; it
    /// ends when the broker shuts down.
    fn spawn_housekeeping(&self, rt: &R) {
        use kaelix_core::runtime::Priority;
        let (broker, interval) = (self.clone(), self.lock().core.config().housekeeping_interval);
        drop(rt.spawn(Priority::Background, "broker-housekeeping", async move {
            broker.run_housekeeping(interval).await;
        }));
    }

    /// Opens a broker whose durable topics live on `rt`'s storage: recovers
    /// every durable topic and consumer-group commit found there, and spawns
    /// the writer task (see [`durable`]). Memory topics work as with
    /// [`Broker::new`].
    pub async fn open_durable(rt: R, config: BrokerConfig) -> Result<Broker<R>, durable::DurableError> {
        durable::open(rt, config).await
    }
}

/// A push subscription. Dropping it unsubscribes.
pub struct Subscription<C: Clock> {
    broker: Broker<C>,
    id: StreamId,
}

impl<C: Clock> Subscription<C> {
    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The next message; `None` once the stream is closed (unsubscribed,
    /// idle-closed, or the broker shut down and the buffer is drained).
    pub async fn next(&mut self) -> Option<Message> {
        let id = self.id;
        poll_fn(|cx| {
            self.broker.with(|s, now, _| match s.core.poll_stream(now, id) {
                Ok(Some(m)) => Poll::Ready(Some(m)),
                Ok(None) if s.core.is_shut_down() => Poll::Ready(None),
                Ok(None) => {
                    s.stream_wakers.insert(id, cx.waker().clone());
                    Poll::Pending
                }
                Err(_) => Poll::Ready(None),
            })
        })
        .await
    }

    /// The next message if one is buffered.
    pub fn try_next(&mut self) -> Option<Message> {
        let id = self.id;
        self.broker.with(|s, now, _| s.core.poll_stream(now, id).ok().flatten())
    }

    /// What this stream has dropped, by reason (`None` once closed).
    pub fn drops(&self) -> Option<DropCounts> {
        self.broker.lock().core.stream_drops(self.id)
    }
}

impl<C: Clock> Drop for Subscription<C> {
    fn drop(&mut self) {
        let id = self.id;
        self.broker.with(|s, _, _| {
            s.stream_wakers.remove(&id);
            s.core.unsubscribe(id);
        });
    }
}

/// An open sink (see [`sink`]). Dropping it closes the sink and every
/// subscription on it.
pub struct SinkHandle<C: Clock> {
    broker: Broker<C>,
    id: SinkId,
}

impl<C: Clock> SinkHandle<C> {
    /// The sink's id.
    pub fn id(&self) -> SinkId {
        self.id
    }

    /// Subscribes `pattern` on this sink as `tag`, optionally in a queue
    /// group: from now on every message routed to it goes to
    /// [`Sink::deliver`] with `tag`. A tag in use is refused
    /// ([`registry::RegistryError::DuplicateTag`]).
    pub fn subscribe(&self, pattern: &Pattern, queue_group: Option<&str>, tag: u64) -> Result<(), BrokerError> {
        let id = self.id;
        self.broker.with(|s, now, _| s.core.subscribe_sink(now, id, pattern.clone(), queue_group, tag)).map(|_| ())
    }

    /// Removes the subscription `tag`; false if there is none.
    pub fn unsubscribe(&self, tag: u64) -> bool {
        let id = self.id;
        self.broker.with(|s, _, _| s.core.unsubscribe_sink(id, tag))
    }

    /// Ends the subscription `tag` once `max` messages in total were
    /// delivered to it (NATS `UNSUB <sid> <max>`): `Some(true)` if it
    /// ended at once (it had that many), `None` if there is none.
    pub fn limit(&self, tag: u64, max: u64) -> Option<bool> {
        let id = self.id;
        self.broker.with(|s, _, _| s.core.limit_sink(id, tag, max))
    }

    /// The tag of a subscription on this sink matching `topic`, if any.
    pub fn matching(&self, topic: &Topic) -> Option<u64> {
        self.broker.lock().core.registry().sink_tag_matching(self.id, topic)
    }

    /// Subscriptions on this sink.
    pub fn len(&self) -> usize {
        self.broker.lock().core.registry().sink_len(self.id)
    }

    /// Whether this sink has no subscription.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the subscription `tag` exists.
    pub fn contains(&self, tag: u64) -> bool {
        self.broker.lock().core.registry().sink_contains(self.id, tag)
    }
}

impl<C: Clock> Drop for SinkHandle<C> {
    fn drop(&mut self) {
        let id = self.id;
        self.broker.with(|s, _, _| s.core.close_sink(id));
    }
}

/// A member of a consumer group. Dropping it leaves the group.
pub struct GroupMember<C: Clock> {
    broker: Broker<C>,
    member: MemberId,
}

/// Messages from one consumer-group poll, with the generation to commit in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupBatch {
    /// The group generation the messages were read in.
    pub generation: u64,
    /// The messages (each with its partition and offset).
    pub messages: Vec<Message>,
}

impl<C: Clock> GroupMember<C> {
    /// This member's id.
    pub fn id(&self) -> MemberId {
        self.member
    }

    /// Waits for messages on this member's partitions (empty once the
    /// broker shut down).
    pub async fn poll(&mut self, max: usize) -> Result<GroupBatch, BrokerError> {
        self.poll_limited(max, usize::MAX).await
    }

    /// [`GroupMember::poll`] returning at most `max_bytes` of encoded
    /// messages (but always one, if one is readable). Takes `&self`, so a
    /// member shared by several tasks can be polled; two polls at once wait
    /// for one wake-up between them, so keep to one at a time.
    pub async fn poll_limited(&self, max: usize, max_bytes: usize) -> Result<GroupBatch, BrokerError> {
        let member = self.member;
        poll_fn(|cx| {
            self.broker.with(|s, _, _| match s.core.poll_group_limited(member, max, max_bytes) {
                Ok((generation, messages)) if !messages.is_empty() || s.core.is_shut_down() => {
                    Poll::Ready(Ok(GroupBatch { generation, messages }))
                }
                Ok(_) => {
                    s.member_wakers.insert(member, cx.waker().clone());
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            })
        })
        .await
    }

    /// The group's generation and the partitions assigned to this member
    /// (increasing); [`GroupError::NotMember`] once it left.
    pub fn assignment(&self) -> Result<(u64, Vec<u32>), BrokerError> {
        self.broker.lock().core.group_assignment(self.member).map(|(_, generation, assigned)| (generation, assigned))
    }

    /// Commits that the group has processed `partition` below `next` (the
    /// next offset to read), in `generation`.
    pub fn commit_offset(&self, generation: u64, partition: u32, next: u64) -> Result<(), BrokerError> {
        self.broker.with(|s, _, _| s.core.commit(self.member, generation, partition, next))
    }

    /// Commits like [`GroupMember::commit_offset`], and on a replicated
    /// topic (where `commit_offset` refuses) proposes the commit to the
    /// partition's Raft group and returns once it committed (see
    /// [`replication`]): the group resumes there on any node, after any
    /// crash. Refusals are the publish's: `NotLeader` (this node does not
    /// lead the partition; nothing was proposed) and `ReplicationUnknown`
    /// (leadership moved: the commit may still apply). On memory and
    /// durable topics it returns at once (a durable topic's commit is
    /// written with the broker's next metadata sync).
    pub async fn commit_acknowledged(&self, generation: u64, partition: u32, next: u64) -> Result<(), BrokerError> {
        let member = self.member;
        let replicated = self.broker.has_replication
            && self.broker.with(|s, _, _| {
                let (group, _, _) = s.core.group_assignment(member)?;
                let topic = s.core.group_topic(group).expect("a member's group exists").clone();
                Ok::<bool, BrokerError>(s.core.is_replicated(&topic))
            })?;
        if !replicated {
            return self.commit_offset(generation, partition, next);
        }
        let id = self.broker.with(|s, now, _| s.core.propose_commit(now, member, generation, partition, next))?;
        self.broker.proposal_outcome(id).await.map(|_| ())
    }

    /// Commits that everything up to and including `message` is processed.
    pub fn commit(&self, generation: u64, message: &Message) -> Result<(), BrokerError> {
        let (Some(partition), Some(offset)) = (message.partition(), message.offset()) else {
            return Err(BrokerError::Message("a committed message must come from a partition".into()));
        };
        self.broker.with(|s, _, _| s.core.commit(self.member, generation, partition, offset + 1))
    }
}

impl<C: Clock> Drop for GroupMember<C> {
    fn drop(&mut self) {
        let member = self.member;
        self.broker.with(|s, _, _| {
            s.member_wakers.remove(&member);
            s.core.leave_group(member);
        });
    }
}

/// What a [`StreamProcessor`] decided about a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Processed.
    Accept,
    /// Never processable: dead-letter it now, with the reason.
    Reject(String),
    /// Failed this time: deliver again (up to the attempt limit).
    Retry(String),
}

/// Processes a stream's messages (see [`Broker::process`]).
pub trait StreamProcessor: Send {
    /// Decides about one message.
    fn process(&mut self, message: &Message) -> Verdict;
}

impl<F: FnMut(&Message) -> Verdict + Send> StreamProcessor for F {
    fn process(&mut self, message: &Message) -> Verdict {
        self(message)
    }
}

/// What [`Broker::process`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessReport {
    /// Messages accepted.
    pub accepted: u64,
    /// Redeliveries after a `Retry`.
    pub retried: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
}

/// What [`Broker::route_pipelined`] did with a message.
pub enum Pipelined<C: Clock> {
    /// Routed as [`Broker::route_unacknowledged`] routes it.
    Routed(Routed),
    /// Proposed to a replicated topic; its outcome is still to come.
    Proposed(Proposed<C>),
}

/// A replicated publish that was proposed and whose outcome (the commit's
/// placement, or why it was refused or is unknown) is still to come: a
/// future for that outcome, the same as awaiting the publish would have
/// given. Dropping it forgets the outcome (the record may still commit).
/// It does not borrow the broker, so a front end can keep many of them.
#[must_use = "dropping it forgets the publish's outcome"]
pub struct Proposed<C: Clock> {
    broker: Broker<C>,
    /// `None` once the outcome was taken.
    id: Option<ProposalId>,
    /// The traced publish's commit span, closed with the outcome.
    span: Option<Box<dyn CommitSpan>>,
}

// Nothing in it is pinned (the broker is a handle of `Arc`s).
impl<C: Clock> Unpin for Proposed<C> {}

impl<C: Clock> std::future::Future for Proposed<C> {
    type Output = Result<Published, BrokerError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let id = self.id.expect("a Proposed polled after it was ready");
        let outcome = std::task::ready!(self.broker.poll_proposal_outcome(id, cx.waker()));
        self.id = None;
        match (self.span.take(), &outcome) {
            (Some(span), Ok(p)) => span.committed(p.partition, p.offset),
            (Some(span), Err(_)) => span.failed(),
            (None, _) => {}
        }
        Poll::Ready(outcome)
    }
}

impl<C: Clock> Drop for Proposed<C> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.broker.forget_proposal(id);
        }
    }
}

#[cfg(test)]
mod async_tests {
    use std::task::{Context, Poll};

    use super::*;
    use crate::testing::ManualClock;

    fn broker() -> Broker<ManualClock> {
        Broker::new(
            ManualClock::default(),
            kaelix_core::rng::seeded(5),
            BrokerConfig { auto_create: None, ..Default::default() },
        )
    }

    #[test]
    fn new_topics_are_refused_when_they_exist() {
        let b = broker();
        let t = Topic::new("t").unwrap();
        b.create_new_topic(&t, TopicConfig::default()).unwrap();
        assert!(matches!(
            b.create_new_topic(&t, TopicConfig::default()),
            Err(BrokerError::TopicExists { existing: 1, .. })
        ));
        assert_eq!(b.topics().len(), 1);
        assert_eq!(b.topic_config(&t).unwrap().partitions, 1);
    }

    #[test]
    fn a_reader_waiting_at_the_head_is_woken_by_the_append_and_forgotten_when_dropped() {
        let b = broker();
        let t = Topic::new("t").unwrap();
        b.create_topic("t", TopicConfig::default()).unwrap();
        let waker = std::sync::Arc::new(Flag::default());
        let std_waker = Waker::from(waker.clone());
        let mut cx = Context::from_waker(&std_waker);
        let mut wait = Box::pin(b.wait_readable(&t, 0, 0));
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(b.lock().read_waiters.len(), 1);
        // Polled again (a spurious wake): still one registration.
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(b.lock().read_waiters.len(), 1);
        b.try_publish(Message::builder().topic("t").payload("x").build().unwrap()).unwrap();
        assert!(waker.0.load(std::sync::atomic::Ordering::SeqCst), "the append woke the reader");
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(()));
        // A wait that is dropped unfinished leaves nothing behind.
        let mut idle = Box::pin(b.wait_readable(&t, 0, 1));
        assert!(idle.as_mut().poll(&mut cx).is_pending());
        drop(idle);
        assert!(b.lock().read_waiters.is_empty());
        // Past the head, or an unknown partition: nothing to wait for.
        assert!(futures_util::FutureExt::now_or_never(b.wait_readable(&t, 0, 5)).is_some());
        assert!(futures_util::FutureExt::now_or_never(b.wait_readable(&t, 3, 0)).is_some());
    }

    /// A hook that covers topics starting with `prefix` and drops them.
    struct PrefixHook(&'static str);

    impl PublishHook for PrefixHook {
        fn applies_to(&self, topic: &Topic) -> bool {
            topic.as_str().starts_with(self.0)
        }

        fn on_publish(&self, _message: Message) -> HookOutcome {
            HookOutcome { dropped_by: Some("test".into()), ..HookOutcome::default() }
        }
    }

    struct Nowhere;

    impl Sink for Nowhere {
        fn deliver(&self, _tag: u64, _pattern: &Pattern, _message: &Message) -> Delivery {
            Delivery::Delivered
        }

        fn has_room(&self) -> bool {
            true
        }

        fn ended(&self, _tag: u64) {}
    }

    /// The contract front ends rely on to skip publishes: a "no interest"
    /// answer is invalidated (the epoch moves) by every change that could
    /// make a publish to the subject reach something, and the answer then
    /// says so.
    #[test]
    fn no_interest_holds_until_the_epoch_moves_and_every_new_interest_moves_it() {
        let b = broker();
        let t = Topic::new("a.b").unwrap();
        let (any, epoch) = b.interest(&t);
        assert!(!any, "nothing listens yet");
        assert_eq!(b.interest_epoch(), epoch);
        // Unrelated subscriptions and publishes may move it, but a later
        // "no" answer is again a "no".
        let other = b.open_sink(std::sync::Arc::new(Nowhere)).unwrap();
        other.subscribe(&Pattern::new("x.>").unwrap(), None, 1).unwrap();
        let (any, epoch) = b.interest(&t);
        assert!(!any);

        // Each kind of interest, checked on its own broker state.
        let sink = b.open_sink(std::sync::Arc::new(Nowhere)).unwrap();
        sink.subscribe(&Pattern::new("a.*").unwrap(), None, 1).unwrap();
        assert_ne!(b.interest_epoch(), epoch, "a matching subscription moves the epoch");
        assert!(b.interest(&t).0);
        assert!(sink.unsubscribe(1));
        let (any, epoch) = b.interest(&t);
        assert!(!any, "the subscription left");

        b.set_publish_hook(Some(std::sync::Arc::new(PrefixHook("a."))));
        assert_ne!(b.interest_epoch(), epoch, "a hook moves the epoch");
        assert!(b.interest(&t).0, "the hook covers the subject");
        assert!(!b.interest(&Topic::new("z").unwrap()).0, "but not this one");
        b.set_publish_hook(None);
        let (any, epoch) = b.interest(&t);
        assert!(!any);

        b.create_topic("a.b", TopicConfig::default()).unwrap();
        assert_ne!(b.interest_epoch(), epoch, "a topic moves the epoch");
        assert!(b.interest(&t).0, "a stored topic is interest");
        let u = Topic::new("u").unwrap();
        let (any, epoch) = b.interest(&u);
        assert!(!any);

        b.shutdown();
        assert_ne!(b.interest_epoch(), epoch, "shutting down moves the epoch");
        assert!(b.interest(&u).0, "a publish must fail now, not be skipped");
    }

    /// A burst is routed in order, each message as `try_route` would, and
    /// stops (keeping the rest, in order) at the first message that would
    /// block; nothing routes in a batch past a hook.
    #[test]
    fn a_burst_routes_in_order_and_stops_where_a_publisher_would_wait() {
        let b = broker();
        let msg = |t: &str, p: u8| Message::builder().topic(t).payload(vec![p]).build().unwrap();
        let mut blocking = b
            .subscribe(
                "slow",
                SubscribeOptions { strategy: Some(Strategy::Block { capacity: 1 }), ..Default::default() },
            )
            .unwrap();
        let mut fast = b.subscribe("a.*", SubscribeOptions::default()).unwrap();
        b.create_topic("stored", TopicConfig::default()).unwrap();
        let mut burst: std::collections::VecDeque<Message> =
            [msg("a.x", 0), msg("stored", 1), msg("a.y", 2), msg("slow", 3), msg("slow", 4), msg("a.z", 5)].into();
        let mut routed = Vec::new();
        assert!(b.try_route_many(&mut burst, &mut routed));
        assert_eq!(routed.len(), 4, "up to the first full blocking stream");
        assert!(matches!(routed[0], Ok(Routed::Relayed { buffered_for: 1 })));
        assert!(matches!(routed[1], Ok(Routed::Stored(Published { offset: 0, .. }))));
        assert!(matches!(routed[3], Ok(Routed::Relayed { buffered_for: 1 })));
        let left: Vec<u8> = burst.iter().map(|m| m.payload()[0]).collect();
        assert_eq!(left, vec![4, 5], "the rest stays, in order");
        let got: Vec<u8> = std::iter::from_fn(|| fast.try_next()).map(|m| m.payload()[0]).collect();
        assert_eq!(got, vec![0, 2]);
        assert_eq!(blocking.try_next().map(|m| m.payload()[0]), Some(3));
        // Room again: the rest goes through.
        routed.clear();
        assert!(b.try_route_many(&mut burst, &mut routed));
        assert!(burst.is_empty() && routed.len() == 2);
        assert_eq!(fast.try_next().map(|m| m.payload()[0]), Some(5));

        b.set_publish_hook(Some(std::sync::Arc::new(PrefixHook("a."))));
        let mut burst: std::collections::VecDeque<Message> = [msg("a.x", 6)].into();
        assert!(!b.try_route_many(&mut burst, &mut routed), "a hook takes each message itself");
        assert_eq!(burst.len(), 1);
    }

    #[test]
    fn skipped_publishes_count_as_relayed() {
        let b = broker();
        b.try_route(Message::builder().topic("q").payload("x").build().unwrap()).unwrap();
        b.count_unheard(41);
        assert_eq!(b.stats().relayed, 42);
    }

    /// `route_pipelined` proposes at once, in call order, without waiting:
    /// each `Proposed` then yields its own proposal's outcome whatever
    /// order the outcomes come in, and one dropped unfinished forgets its
    /// proposal (the broker keeps no outcome or waker for it).
    #[test]
    fn pipelined_publishes_are_proposed_in_order_and_each_settles_with_its_own_outcome() {
        use crate::storage::{ReplicationConfig, StorageKind};
        use futures_util::FutureExt;
        let b = Broker::with_replication(ManualClock::default(), kaelix_core::rng::seeded(5), BrokerConfig::default());
        let storage = StorageKind::Replicated(ReplicationConfig::new(3).unwrap());
        b.create_topic("r", TopicConfig { storage, ..TopicConfig::default() }).unwrap();
        let publish = |n: u8| {
            let m = Message::builder().topic("r").payload(vec![n]).build().unwrap();
            match b.route_pipelined(m).now_or_never().expect("proposing does not wait") {
                Ok(Pipelined::Proposed(p)) => p,
                Ok(Pipelined::Routed(r)) => panic!("a replicated publish was routed: {r:?}"),
                Err(e) => panic!("refused: {e}"),
            }
        };
        let mut waits: Vec<Proposed<ManualClock>> = (0..4).map(publish).collect();
        let proposals = b.next_proposals().now_or_never().flatten().expect("queued for the replicator");
        let payloads: Vec<u8> = proposals
            .iter()
            .map(|p| match &p.op {
                crate::replication::ProposalOp::Publish(m) => m.payload()[0],
                other => panic!("not a publish: {other:?}"),
            })
            .collect();
        assert_eq!(payloads, [0, 1, 2, 3], "proposed in call order");
        let ids: Vec<ProposalId> = proposals.iter().map(|p| p.id).collect();

        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        for w in &mut waits {
            assert!(std::pin::Pin::new(w).poll(&mut cx).is_pending(), "nothing committed yet");
        }
        // Outcomes in another order than the proposals, one refused.
        let t = Topic::new("r").unwrap();
        b.proposal_done(ids[2], Ok(0));
        assert!(flag.0.swap(false, Ordering::SeqCst), "the outcome wakes its waiter");
        let unknown = BrokerError::ReplicationUnknown { topic: t.clone(), partition: 0, reason: "test".into() };
        b.proposal_done(ids[1], Err(unknown));
        b.proposal_done(ids[0], Ok(1));
        let third = waits.pop().unwrap();
        drop(third);
        assert!(b.lock().core.proposal_target(ids[3]).is_none(), "a dropped wait forgets its proposal");
        assert!(!b.lock().proposal_wakers.contains_key(&ids[3]));
        let outcomes: Vec<_> = waits.into_iter().map(|w| w.now_or_never().expect("settled")).collect();
        assert_eq!(outcomes[0].as_ref().unwrap().offset, 1);
        assert!(matches!(outcomes[1], Err(BrokerError::ReplicationUnknown { .. })));
        assert_eq!(outcomes[2].as_ref().unwrap().offset, 0);
        assert!(b.lock().proposal_wakers.is_empty());
    }

    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

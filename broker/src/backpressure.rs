//! Backpressure: what a subscription's buffer does when its consumer is
//! slower than its publishers (the seed's `BackpressureManager`).
//!
//! Every subscription has a bounded buffer and one [`Strategy`]:
//!
//! * [`Strategy::DropOldest`]: full → the oldest buffered message is dropped
//!   to make room (a live feed: newest data wins);
//! * [`Strategy::Block`]: full → publishers of matching messages wait until
//!   there is room (nothing is dropped; the slowest consumer paces them);
//! * [`Strategy::Grow`]: the buffer starts small and doubles up to a cap;
//!   at the cap the *newest* message is refused (nothing buffered is lost);
//! * [`Strategy::ShedLowPriority`]: above the pressure threshold, messages
//!   below [`MessagePriority::High`] are shed; High and Critical are still
//!   buffered until the buffer is full, when the oldest low-priority message
//!   (else the oldest) makes room.
//!
//! Memory is bounded in every strategy: no buffer ever holds more than its
//! capacity (or cap). Every message that does not reach the consumer is
//! counted under the reason it was dropped. [`PressureLevel`] tells how full
//! a buffer is against two thresholds, for stats and for shedding.

use std::collections::VecDeque;

use kaelix_core::planted::{Planted, PlantedBug};

use crate::message::Message;

/// How important a message is (read from its `priority` header:
/// `low`, `normal`, `high`, `critical`; absent or unknown = normal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessagePriority {
    /// Sheddable first.
    Low,
    /// The default.
    Normal,
    /// Kept under pressure.
    High,
    /// Kept under pressure.
    Critical,
}

/// The header that carries a message's priority.
pub const PRIORITY_HEADER: &str = "priority";

impl MessagePriority {
    /// The priority of `message`.
    pub fn of(message: &Message) -> MessagePriority {
        match message.headers().get(PRIORITY_HEADER).map(|v| &v[..]) {
            Some(b"low") => MessagePriority::Low,
            Some(b"high") => MessagePriority::High,
            Some(b"critical") => MessagePriority::Critical,
            _ => MessagePriority::Normal,
        }
    }
}

/// A buffer's backpressure strategy (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Fixed capacity; full drops the oldest.
    DropOldest {
        /// Messages buffered at most.
        capacity: usize,
    },
    /// Fixed capacity; full blocks publishers.
    Block {
        /// Messages buffered at most.
        capacity: usize,
    },
    /// Starts at `initial`, doubles up to `max`; at `max` refuses the newest.
    Grow {
        /// Starting capacity.
        initial: usize,
        /// The cap.
        max: usize,
    },
    /// Fixed capacity; above the pressure threshold, low priority is shed.
    ShedLowPriority {
        /// Messages buffered at most.
        capacity: usize,
    },
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::DropOldest { capacity: 1024 }
    }
}

impl Strategy {
    /// The most messages the buffer may ever hold.
    pub fn max_capacity(&self) -> usize {
        match *self {
            Strategy::DropOldest { capacity }
            | Strategy::Block { capacity }
            | Strategy::ShedLowPriority { capacity } => capacity,
            Strategy::Grow { max, .. } => max,
        }
    }

    fn initial_capacity(&self) -> usize {
        match *self {
            Strategy::Grow { initial, .. } => initial,
            other => other.max_capacity(),
        }
    }
}

/// Fill thresholds, as fractions of the buffer's current capacity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// At or above: [`PressureLevel::Elevated`] (and shedding starts).
    pub elevated: f64,
    /// At or above: [`PressureLevel::Critical`].
    pub critical: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { elevated: 0.75, critical: 0.95 }
    }
}

/// How full a buffer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PressureLevel {
    /// Below the elevated threshold.
    Normal,
    /// Between the thresholds.
    Elevated,
    /// At or above the critical threshold.
    Critical,
}

/// Why messages did not reach a consumer, counted per buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Dropped to make room ([`Strategy::DropOldest`], or shedding at full).
    pub oldest: u64,
    /// Refused at the cap ([`Strategy::Grow`]), or a dead letter that
    /// could not wait for room in a full [`Strategy::Block`] buffer.
    pub newest: u64,
    /// Shed for low priority under pressure.
    pub shed: u64,
    /// Dropped because the subscription closed with messages still buffered.
    pub closed: u64,
    /// Skipped by a log-backed stream because retention removed them before
    /// it read them.
    pub expired: u64,
}

impl DropCounts {
    /// Every drop.
    pub fn total(&self) -> u64 {
        self.oldest + self.newest + self.shed + self.closed + self.expired
    }

    /// Adds `other`'s counts to these.
    pub fn absorb(&mut self, other: DropCounts) {
        self.oldest += other.oldest;
        self.newest += other.newest;
        self.shed += other.shed;
        self.closed += other.closed;
        self.expired += other.expired;
    }
}

/// What [`SubscriptionBuffer::offer`] did with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Buffered.
    Accepted,
    /// Buffered; `dropped` (an older message) was dropped to make room.
    AcceptedDropping(Box<Message>),
    /// Not buffered; counted as dropped.
    Dropped,
    /// Not buffered: the buffer is full and its strategy blocks; the caller
    /// must wait and offer again. Nothing is counted.
    WouldBlock,
}

/// A subscription's bounded buffer under one strategy.
#[derive(Debug)]
pub struct SubscriptionBuffer {
    queue: VecDeque<Message>,
    strategy: Strategy,
    thresholds: Thresholds,
    capacity: usize,
    drops: DropCounts,
    high_water: usize,
    planted: Planted,
}

impl SubscriptionBuffer {
    /// An empty buffer.
    pub fn new(strategy: Strategy, thresholds: Thresholds) -> Self {
        let capacity = strategy.initial_capacity();
        assert!(capacity >= 1 && capacity <= strategy.max_capacity(), "a buffer holds at least one message");
        assert!(
            0.0 < thresholds.elevated && thresholds.elevated <= thresholds.critical && thresholds.critical <= 1.0,
            "thresholds must satisfy 0 < elevated <= critical <= 1"
        );
        SubscriptionBuffer {
            queue: VecDeque::new(),
            strategy,
            thresholds,
            capacity,
            drops: DropCounts::default(),
            high_water: 0,
            planted: Planted::NONE,
        }
    }

    /// The buffer with planted bugs switched on (see `kaelix_core::planted`).
    #[must_use]
    pub fn with_planted(mut self, planted: Planted) -> Self {
        self.planted = planted;
        self
    }

    /// Whether an offer now would be refused with [`Offer::WouldBlock`].
    pub fn would_block(&self) -> bool {
        matches!(self.strategy, Strategy::Block { .. })
            && self.queue.len() >= self.capacity
            && !self.planted.is_on(PlantedBug::BrokerBlockDropsWhenFull)
    }

    /// Offers `message` to the buffer (see [`Offer`]).
    pub fn offer(&mut self, message: Message) -> Offer {
        let outcome = self.offer_inner(message);
        self.high_water = self.high_water.max(self.queue.len());
        debug_assert!(self.queue.len() <= self.strategy.max_capacity(), "buffer over its bound");
        outcome
    }

    fn offer_inner(&mut self, message: Message) -> Offer {
        match self.strategy {
            Strategy::DropOldest { .. } => {
                if self.queue.len() < self.capacity {
                    self.queue.push_back(message);
                    return Offer::Accepted;
                }
                if self.planted.is_on(PlantedBug::BrokerDropOldestDropsNewest) {
                    self.drops.oldest += 1;
                    return Offer::Dropped;
                }
                let old = self.queue.pop_front().expect("full");
                self.drops.oldest += 1;
                self.queue.push_back(message);
                Offer::AcceptedDropping(Box::new(old))
            }
            Strategy::Block { .. } => {
                if self.queue.len() >= self.capacity {
                    if self.planted.is_on(PlantedBug::BrokerBlockDropsWhenFull) {
                        self.drops.newest += 1;
                        return Offer::Dropped;
                    }
                    return Offer::WouldBlock;
                }
                self.queue.push_back(message);
                Offer::Accepted
            }
            Strategy::Grow { max, .. } => {
                let stuck = self.planted.is_on(PlantedBug::BrokerGrowStuckAtInitial);
                if self.queue.len() >= self.capacity && self.capacity < max && !stuck {
                    self.capacity = (self.capacity * 2).min(max);
                }
                if self.queue.len() >= self.capacity {
                    self.drops.newest += 1;
                    return Offer::Dropped;
                }
                self.queue.push_back(message);
                Offer::Accepted
            }
            Strategy::ShedLowPriority { .. } => {
                let priority = MessagePriority::of(&message);
                let sheddable = if self.planted.is_on(PlantedBug::BrokerShedHighPriority) {
                    priority <= MessagePriority::High
                } else {
                    priority < MessagePriority::High
                };
                if self.pressure() >= PressureLevel::Elevated && sheddable {
                    self.drops.shed += 1;
                    return Offer::Dropped;
                }
                if self.queue.len() < self.capacity {
                    self.queue.push_back(message);
                    return Offer::Accepted;
                }
                // Full of what survived shedding: evict the oldest low-priority
                // message, else the oldest.
                let victim =
                    self.queue.iter().position(|m| MessagePriority::of(m) < MessagePriority::High).unwrap_or(0);
                let old = self.queue.remove(victim).expect("index in range");
                self.drops.oldest += 1;
                self.queue.push_back(message);
                Offer::AcceptedDropping(Box::new(old))
            }
        }
    }

    /// Whether offering `message` now would drop something (it, or a
    /// buffered message) or be refused because the buffer is full: what
    /// [`SubscriptionBuffer::offer`] would decide, without doing it.
    pub fn would_drop(&self, message: &Message) -> bool {
        let full = self.queue.len() >= self.capacity;
        match self.strategy {
            Strategy::DropOldest { .. } | Strategy::Block { .. } => full,
            Strategy::Grow { max, .. } => {
                full && (self.capacity >= max || self.planted.is_on(PlantedBug::BrokerGrowStuckAtInitial))
            }
            Strategy::ShedLowPriority { .. } => {
                let sheddable = if self.planted.is_on(PlantedBug::BrokerShedHighPriority) {
                    MessagePriority::of(message) <= MessagePriority::High
                } else {
                    MessagePriority::of(message) < MessagePriority::High
                };
                full || (sheddable && self.pressure() >= PressureLevel::Elevated)
            }
        }
    }

    /// Whether any buffered message satisfies `pred`.
    pub fn holds_any(&self, pred: impl Fn(&Message) -> bool) -> bool {
        self.queue.iter().any(pred)
    }

    /// Removes and returns the buffered messages satisfying `pred`, in
    /// order (handed elsewhere, not dropped: nothing is counted).
    pub fn take_where(&mut self, pred: impl Fn(&Message) -> bool) -> Vec<Message> {
        let mut taken = Vec::new();
        self.queue.retain(|m| {
            let take = pred(m);
            if take {
                taken.push(m.clone());
            }
            !take
        });
        taken
    }

    /// A message that could not wait for room (a dead letter) passed this
    /// full buffer by: counted as refused, under `newest`.
    pub fn count_refused(&mut self) {
        self.drops.newest += 1;
    }

    /// A log-backed stream skipped `n` records retention had removed.
    pub fn count_expired(&mut self, n: u64) {
        self.drops.expired += n;
    }

    /// The next buffered message.
    pub fn pop(&mut self) -> Option<Message> {
        self.queue.pop_front()
    }

    /// Messages buffered.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The current capacity (grows under [`Strategy::Grow`]).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The most messages ever buffered at once.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// How full the buffer is against the thresholds (of its maximum
    /// capacity, so a growing buffer is not "critical" just after growing).
    pub fn pressure(&self) -> PressureLevel {
        let fill = self.queue.len() as f64 / self.strategy.max_capacity() as f64;
        if fill >= self.thresholds.critical {
            PressureLevel::Critical
        } else if fill >= self.thresholds.elevated {
            PressureLevel::Elevated
        } else {
            PressureLevel::Normal
        }
    }

    /// Drops counted so far.
    pub fn drops(&self) -> DropCounts {
        self.drops
    }

    /// Empties the buffer, counting what it held as dropped (closed).
    pub fn close(&mut self) -> Vec<Message> {
        self.drops.closed += self.queue.len() as u64;
        self.queue.drain(..).collect()
    }
}

//! Sink subscriptions: many subscriptions delivered through one handle.
//!
//! A push stream ([`crate::Subscription`]) owns a buffer and needs a
//! consumer task to read it. That is the right model for one consumer of
//! one stream, and the wrong one for a network front end holding a
//! million idle subscriptions over a few connections (NATS clients
//! subscribe to an inbox per request, a subject per device, ...): a
//! buffer and a task per subscription cost kilobytes each.
//!
//! A **sink** is one delivery path for many subscriptions — in the server,
//! one per connection. The front end registers it once
//! ([`crate::BrokerCore::open_sink`]) and then subscribes patterns *on the
//! sink*, each under a `tag` of its choosing (the NATS front end uses the
//! client's sid). A subscription is then only a small record —
//! [`SinkSubscription`]: pattern, queue group, sink, tag, deliveries so far
//! and the delivery limit — plus its entry in the routing index. Nothing
//! is buffered in the broker: a routed message is handed to
//! [`Sink::deliver`] at once, under the broker's lock, and the sink puts
//! it wherever its connection's bytes wait (it must not call the broker
//! back). Routing is unchanged: every matching subscription gets the
//! message, one member of each matching queue group (members of sinks and
//! plain streams alike, preferring members with room: [`Sink::has_room`]).
//!
//! **No silent loss.** A sink that cannot take a message answers
//! [`Delivery::Refused`] and is responsible for saying so (the NATS front
//! end applies its slow-consumer policy: counter, log line, advisory);
//! the broker buffers nothing it could drop quietly.
//!
//! **Delivery limits.** A subscription may end after a number of
//! deliveries (NATS `UNSUB <sid> <max>`): the broker counts the messages
//! the sink accepted and removes the subscription after the last one,
//! telling the sink ([`Sink::ended`]) under the same lock, so no later
//! message is routed to it.
//!
//! **Ids.** Sink subscriptions share the routing index with push streams;
//! their [`StreamId`]s have [`SINK_BIT`] set and name a slot of the
//! registry's slab (slots are reused after an unsubscribe, which is safe
//! because an id leaves the index before its slot is freed).

use std::sync::Arc;

use crate::message::Message;
use crate::registry::StreamId;
use crate::topic::Pattern;

/// The high bit of a [`StreamId`] that names a sink subscription.
pub const SINK_BIT: u64 = 1 << 63;

/// Whether `id` names a sink subscription.
pub fn is_sink_subscription(id: StreamId) -> bool {
    id.0 & SINK_BIT != 0
}

/// Identifies one sink of a broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SinkId(pub u32);

/// What became of one message handed to a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Taken: counted toward the subscription's delivery limit.
    Delivered,
    /// Deliberately not delivered (the sink's own filter: a connection
    /// that does not want its own messages, a subject its permissions
    /// hide). Not a loss, not counted toward the limit.
    Skipped,
    /// The sink could not take it (full, or closing). The sink accounts for
    /// it (a slow consumer); the broker keeps nothing.
    Refused,
}

/// One delivery path for many subscriptions; see the [module docs](self).
///
/// Every method is called with the broker's lock held: an implementation
/// must be quick and must not call the broker (it may take its own locks
/// and wake tasks).
pub trait Sink: Send + Sync {
    /// Delivers `message`, which matched the sink's subscription `tag`
    /// (subscribed to `pattern`).
    fn deliver(&self, tag: u64, pattern: &Pattern, message: &Message) -> Delivery;

    /// Whether a queue group should prefer this sink's member: it can take
    /// a message now.
    fn has_room(&self) -> bool;

    /// The subscription `tag` reached its delivery limit and was removed.
    fn ended(&self, tag: u64);
}

/// One subscription of a sink: all a sink subscription costs besides its
/// entry in the routing index (see the [module docs](self)).
#[derive(Debug)]
pub struct SinkSubscription {
    /// What it matches.
    pub pattern: Pattern,
    /// Its queue group, if any.
    pub queue_group: Option<Arc<str>>,
    /// The sink it delivers through.
    pub sink: SinkId,
    /// The sink's name for it.
    pub tag: u64,
    /// Messages the sink accepted ([`Delivery::Delivered`]).
    pub delivered: u64,
    /// Deliveries after which it ends (`u64::MAX`: none).
    pub max: u64,
}

/// A slab: values in slots named by index, freed slots reused first, so a
/// million entries cost one contiguous vector (no tree nodes, no per-entry
/// allocation). The vector keeps its length until the slab is empty (then
/// it is released): churn reuses slots, it does not grow it.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Slab<T> {
    pub(crate) const fn new() -> Self {
        Slab { slots: Vec::new(), free: Vec::new(), len: 0 }
    }

    /// Stores `value`; returns its slot.
    pub(crate) fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        match self.free.pop() {
            Some(slot) => {
                debug_assert!(self.slots[slot as usize].is_none(), "a free slot is empty");
                self.slots[slot as usize] = Some(value);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 entries");
                self.slots.push(Some(value));
                slot
            }
        }
    }

    pub(crate) fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    pub(crate) fn remove(&mut self, slot: u32) -> Option<T> {
        let value = self.slots.get_mut(slot as usize)?.take()?;
        self.len -= 1;
        self.free.push(slot);
        if self.len == 0 {
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        Some(value)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes held (capacity, not length).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<T>>() + self.free.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_reuses_freed_slots_and_releases_its_memory_when_empty() {
        let mut s = Slab::new();
        let a = s.insert("a");
        let b = s.insert("b");
        let c = s.insert("c");
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(s.remove(b), Some("b"));
        assert_eq!(s.remove(b), None, "removed once");
        assert_eq!(s.insert("d"), 1, "a freed slot is reused");
        assert_eq!(s.insert("e"), 3, "no free slot: appended");
        assert_eq!(s.len(), 4);
        for slot in [0, 1, 2, 3] {
            assert!(s.remove(slot).is_some());
        }
        assert_eq!(s.len(), 0);
        assert_eq!(s.heap_bytes(), 0, "an emptied slab gives its memory back");
    }

    #[test]
    fn a_sink_subscription_record_stays_small() {
        // The budget is 256 bytes per idle NATS subscription over
        // everything; this record is the broker's share besides the index.
        assert!(std::mem::size_of::<Option<SinkSubscription>>() <= 64);
    }
}

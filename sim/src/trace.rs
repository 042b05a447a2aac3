//! The run's trace: every event folded into one running hash.
//!
//! Each simulated event (a task poll, a packet sent or delivered or dropped,
//! a disk operation, a fault, a scenario-level happening) is reduced to its
//! virtual time, node, kind and a 64-bit digest of its payload, and these four
//! words are folded into a 64-bit state. Each fold step is a bijection of the
//! state for a fixed word and of the word for a fixed state, so the first
//! divergence — any one word that differs — always changes the final hash;
//! and it costs a few multiplies per event, on the hottest path of the
//! simulator. Two runs with the same seed and binary must end with the same
//! [`Trace::hash`]. With a sink attached, the same events are also rendered
//! readably (`kaelix sim replay --trace`). Payload digests use XXH3.
//!
//! Some events also carry structured [`EventInfo`] for the sink (the two
//! ends of a message, the fault applied, a node's name): the picture of a
//! run ([`crate::picture`]) is drawn from it. It is never folded into the
//! hash, and [`Trace::note`] events (a node joining the world) reach only
//! the sink, so drawing a run cannot change its hash.

use kaelix_core::{Instant, NodeId};

use crate::faults::Fault;

/// Structured facts about a trace event, for sinks that draw rather than
/// print (never part of the hash).
#[derive(Clone, Debug, Default)]
pub enum EventInfo {
    /// Nothing beyond the readable detail.
    #[default]
    None,
    /// A message between two nodes arrived (`delivered`) or was dropped, at
    /// the event's time; it was sent at `sent_at`.
    Message {
        /// The sender.
        from: NodeId,
        /// The receiver.
        to: NodeId,
        /// When it was sent (true time).
        sent_at: Instant,
        /// Whether it reached the receiver.
        delivered: bool,
    },
    /// A node joined the world.
    Node {
        /// Its trace label.
        name: String,
        /// Whether it is a client participant (else a server).
        client: bool,
    },
    /// A scheduled fault was applied.
    Fault(Fault),
}

/// One readable trace line.
#[derive(Clone, Debug)]
pub struct TraceEvent {
    /// True virtual time.
    pub time: Instant,
    /// The node concerned, if any.
    pub node: Option<NodeId>,
    /// What happened.
    pub kind: &'static str,
    /// Details.
    pub detail: String,
    /// Structured facts, where the event has them.
    pub info: EventInfo,
}

/// Receives readable trace events.
pub type TraceSink = Box<dyn FnMut(&TraceEvent) + Send>;

/// The running trace hash and optional readable sink.
pub struct Trace {
    state: u64,
    events: u64,
    kind_cache: [(usize, usize, u64); KIND_CACHE],
    sink: Option<TraceSink>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace").field("events", &self.events).field("hash", &self.hash()).finish()
    }
}

impl Default for Trace {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Trace {
    /// A fresh trace, optionally rendering events into `sink`.
    pub fn new(sink: Option<TraceSink>) -> Self {
        Trace { state: TRACE_SEED, events: 0, kind_cache: [(0, 0, 0); KIND_CACHE], sink }
    }

    /// Whether a readable sink is attached (so callers can skip formatting).
    pub fn is_verbose(&self) -> bool {
        self.sink.is_some()
    }

    /// Folds one event into the hash; renders it if a sink is attached.
    pub fn record(
        &mut self,
        time: Instant,
        node: Option<NodeId>,
        kind: &'static str,
        digest: u64,
        detail: impl FnOnce() -> String,
    ) {
        self.record_with(time, node, kind, digest, detail, EventInfo::default);
    }

    /// [`Trace::record`] with structured facts for the sink (built only if
    /// a sink is attached; never hashed).
    pub fn record_with(
        &mut self,
        time: Instant,
        node: Option<NodeId>,
        kind: &'static str,
        digest: u64,
        detail: impl FnOnce() -> String,
        info: impl FnOnce() -> EventInfo,
    ) {
        self.events += 1;
        let node_bits = node.map_or(u64::MAX, |n| n.0);
        let kind_word = self.kind_word_cached(kind);
        let mut h = self.state;
        for word in [time.as_nanos(), node_bits, kind_word, digest] {
            h = fold(h, word);
        }
        self.state = h;
        if let Some(sink) = &mut self.sink {
            sink(&TraceEvent { time, node, kind, detail: detail(), info: info() });
        }
    }

    /// An event for the sink only: neither hashed nor counted, so runs with
    /// and without a sink stay identical.
    pub fn note(
        &mut self,
        time: Instant,
        node: Option<NodeId>,
        kind: &'static str,
        detail: impl FnOnce() -> String,
        info: impl FnOnce() -> EventInfo,
    ) {
        if let Some(sink) = &mut self.sink {
            sink(&TraceEvent { time, node, kind, detail: detail(), info: info() });
        }
    }

    /// [`kind_word`] through a small cache keyed by the literal's address:
    /// kinds are a handful of `&'static str`s, and the word depends only on
    /// the text, so the cache changes speed, never a hash.
    fn kind_word_cached(&mut self, kind: &'static str) -> u64 {
        let address = kind.as_ptr() as usize;
        let slot = &mut self.kind_cache[(address >> 3) % KIND_CACHE];
        if slot.0 == address && slot.1 == kind.len() {
            return slot.2;
        }
        let word = kind_word(kind);
        *slot = (address, kind.len(), word);
        word
    }

    /// The hash of every event so far.
    pub fn hash(&self) -> u64 {
        // A final avalanche so that nearby states print far apart.
        let mut z = self.state ^ self.events;
        z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        z = (z ^ (z >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        z ^ (z >> 33)
    }

    /// Number of events recorded.
    pub fn events(&self) -> u64 {
        self.events
    }
}

const TRACE_SEED: u64 = 0x6B61_656C_6978_2E74;
const KIND_CACHE: usize = 16;

/// One fold step: for a fixed `state` a bijection of `word`, for a fixed
/// `word` a bijection of `state` (xor, odd multiply and rotate all are).
fn fold(state: u64, word: u64) -> u64 {
    (state ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// The kind string as one word (kinds are short literals).
fn kind_word(kind: &str) -> u64 {
    kind.as_bytes().chunks(8).fold(kind.len() as u64, |h, chunk| {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        fold(h, u64::from_le_bytes(word))
    })
}

/// A digest of a payload, for [`Trace::record`].
pub fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_events_same_hash_and_any_change_differs() {
        let run = |d: u64, t: u64| {
            let mut tr = Trace::default();
            tr.record(Instant::from_nanos(1), Some(NodeId(1)), "a", 5, String::new);
            tr.record(Instant::from_nanos(t), None, "b", d, String::new);
            tr.hash()
        };
        assert_eq!(run(1, 2), run(1, 2));
        assert_ne!(run(1, 2), run(2, 2));
        assert_ne!(run(1, 2), run(1, 3));
    }

    proptest::proptest! {
        /// The fold's guarantee: changing any one event's digest anywhere in
        /// a run changes the final hash.
        #[test]
        fn any_single_change_changes_the_hash(
            digests in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..40),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            delta in 1u64..,
        ) {
            let hash = |ds: &[u64]| {
                let mut tr = Trace::default();
                for (i, d) in ds.iter().enumerate() {
                    tr.record(Instant::from_nanos(i as u64), Some(NodeId(1)), "e", *d, String::new);
                }
                tr.hash()
            };
            let mut changed = digests.clone();
            let i = at.index(changed.len());
            changed[i] = changed[i].wrapping_add(delta);
            proptest::prop_assert_ne!(hash(&digests), hash(&changed));
        }
    }

    #[test]
    fn kinds_differ_by_content_and_length() {
        assert_ne!(kind_word("poll"), kind_word("poll\0"));
        assert_ne!(kind_word("packet-sent"), kind_word("packet-lost"));
        assert_eq!(kind_word("timer"), kind_word(&String::from("timer")));
    }

    #[test]
    fn sink_sees_rendered_events() {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let mut tr = Trace::new(Some(Box::new(move |e: &TraceEvent| l2.lock().unwrap().push(e.detail.clone()))));
        tr.record(Instant::ZERO, None, "x", 0, || "hello".into());
        assert_eq!(*lines.lock().unwrap(), vec!["hello".to_string()]);
    }
}

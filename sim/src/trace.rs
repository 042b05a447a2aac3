//! The run's trace: every event folded into one running hash.
//!
//! Each simulated event (a task poll, a packet sent or delivered or dropped,
//! a disk operation, a fault, a scenario-level happening) is reduced to its
//! virtual time, node, kind and a 64-bit digest of its payload, and fed to an
//! XXH3 hasher. Two runs with the same seed and binary must end with the same
//! [`Trace::hash`]; the first divergence changes it. With a sink attached,
//! the same events are also rendered readably (`kaelix sim replay --trace`).

use kaelix_core::{Instant, NodeId};
use xxhash_rust::xxh3::Xxh3;

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
}

/// Receives readable trace events.
pub type TraceSink = Box<dyn FnMut(&TraceEvent) + Send>;

/// The running trace hash and optional readable sink.
pub struct Trace {
    hasher: Xxh3,
    events: u64,
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
        Trace { hasher: Xxh3::new(), events: 0, sink }
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
        self.events += 1;
        let node_bits = node.map_or(u64::MAX, |n| n.0);
        let mut buf = [0u8; 32];
        buf[..8].copy_from_slice(&time.as_nanos().to_le_bytes());
        buf[8..16].copy_from_slice(&node_bits.to_le_bytes());
        buf[16..24].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(kind.as_bytes()).to_le_bytes());
        buf[24..].copy_from_slice(&digest.to_le_bytes());
        self.hasher.update(&buf);
        if let Some(sink) = &mut self.sink {
            sink(&TraceEvent { time, node, kind, detail: detail() });
        }
    }

    /// The hash of every event so far.
    pub fn hash(&self) -> u64 {
        self.hasher.digest()
    }

    /// Number of events recorded.
    pub fn events(&self) -> u64 {
        self.events
    }
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

    #[test]
    fn sink_sees_rendered_events() {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let mut tr = Trace::new(Some(Box::new(move |e: &TraceEvent| l2.lock().unwrap().push(e.detail.clone()))));
        tr.record(Instant::ZERO, None, "x", 0, || "hello".into());
        assert_eq!(*lines.lock().unwrap(), vec!["hello".to_string()]);
    }
}

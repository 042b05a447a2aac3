//! A picture of one run: a space-time diagram as one self-contained HTML page.
//!
//! The page is drawn from the run's own trace: a [`PictureRecorder`] is a
//! [`TraceSink`] that keeps the events with structured facts
//! ([`EventInfo`]) — nodes joining (one lane each, servers then clients),
//! messages (datagrams and stream frames, from their send to their delivery
//! or drop: one arrow each), faults (crash, restart, pause, resume,
//! partitions and heal, clock steps and drift, bit rot, power loss), fault
//! points that fired, the liveness phase, scenario events that name a node,
//! and the verdict. Callers add client operations as spans
//! ([`PictureRecorder::add_span`]). [`Picture::to_html`] serializes what is
//! inside a time window into the page (JSON in a `<script
//! type="application/json">` element, read by the page's own script); the
//! page has no external resource of any kind.
//!
//! **Large runs.** A run can hold millions of messages. By default the page
//! embeds the window that ends just after the failure (or the run's end)
//! and holds the last [`DEFAULT_MAX_MESSAGES`] messages before it; faults
//! of the whole run are always embedded (they are few), so the page's fault
//! list is complete. The page says which window it holds and how many of
//! the run's messages that is. Inside it, the reader zooms (drag across the
//! diagram, or the from/to fields) and filters by lane and by message kind;
//! at most [`MAX_DRAWN`] arrows are drawn at once (the page says when it
//! thins them; zooming in shows every arrow).
//!
//! Drawing never changes a run: sinks see events after they are hashed, and
//! the events only sinks see ([`crate::trace::Trace::note`]) are not hashed.

use std::sync::{Arc, Mutex};

use kaelix_core::NodeId;
use serde::Serialize;

use crate::faults::Fault;
use crate::trace::{EventInfo, TraceEvent, TraceSink};

/// Messages the default window holds (the last ones before the failure).
pub const DEFAULT_MAX_MESSAGES: usize = 5_000;

/// Arrows the page draws at once; more in view are thinned evenly.
pub const MAX_DRAWN: usize = 4_000;

/// One lane: a node or client participant.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Lane {
    /// The node id.
    pub id: u64,
    /// Its trace label.
    pub name: String,
    /// Whether it is a client participant.
    pub client: bool,
}

/// One message: an arrow from its send to its delivery or drop.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Arrow {
    /// Sender lane.
    pub from: u64,
    /// Receiver lane.
    pub to: u64,
    /// Sent at (ns of true time).
    pub sent: u64,
    /// Delivered or dropped at (ns).
    pub at: u64,
    /// `datagram` or `stream`.
    pub kind: &'static str,
    /// Whether it arrived.
    pub delivered: bool,
}

/// Something that happened at one moment, on one lane or on all of them.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Mark {
    /// The lane, or `None` for the whole world (partitions, heal, power
    /// loss, the liveness phase).
    pub node: Option<u64>,
    /// When (ns).
    pub at: u64,
    /// `crash`, `restart`, `pause`, `resume`, `partition`, `heal`,
    /// `power-loss`, `clock`, `disk`, `buggify`, `liveness`, or `note` for a
    /// scenario's own event.
    pub kind: &'static str,
    /// What the trace said.
    pub text: String,
    /// Whether this is one of the run's faults (listed even outside the
    /// window).
    pub fault: bool,
}

/// A client operation: from its call to its return (`end: None` when its
/// outcome is unknown).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Span {
    /// The lane it belongs to, if the client is a node of the run; else
    /// the page gives `label` a lane of its own.
    pub node: Option<u64>,
    /// The lane label when `node` is `None` (e.g. `client 2`).
    pub label: String,
    /// Called at (ns).
    pub start: u64,
    /// Returned at (ns), or `None` if the outcome is unknown.
    pub end: Option<u64>,
    /// What the operation was and what it returned.
    pub text: String,
    /// Whether the failed check names this operation (drawn highlighted).
    pub cited: bool,
}

/// The failed check, at its moment.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Failure {
    /// When the run concluded it failed (ns).
    pub at: u64,
    /// The verdict.
    pub text: String,
}

/// Everything recorded of one run (see the module header).
#[derive(Clone, Debug, Default)]
pub struct Picture {
    /// Every lane, in the order nodes joined.
    pub lanes: Vec<Lane>,
    /// Every message, in order of arrival.
    pub arrows: Vec<Arrow>,
    /// Every mark, in time order.
    pub marks: Vec<Mark>,
    /// Client operations.
    pub spans: Vec<Span>,
    /// The failure, if the run failed.
    pub failure: Option<Failure>,
    /// The last event's time (ns).
    pub end: u64,
}

/// Collects a [`Picture`] from a run's trace: pass [`PictureRecorder::sink`]
/// as the run's trace sink, then take [`PictureRecorder::picture`].
#[derive(Clone, Debug, Default)]
pub struct PictureRecorder {
    inner: Arc<Mutex<Picture>>,
}

impl PictureRecorder {
    /// An empty recorder.
    pub fn new() -> PictureRecorder {
        PictureRecorder::default()
    }

    /// A trace sink feeding this recorder.
    pub fn sink(&self) -> TraceSink {
        let inner = self.inner.clone();
        Box::new(move |e: &TraceEvent| inner.lock().unwrap_or_else(|p| p.into_inner()).take(e))
    }

    /// Adds a client operation.
    pub fn add_span(&self, span: Span) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).spans.push(span);
    }

    /// What was recorded so far.
    pub fn picture(&self) -> Picture {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Picture {
    /// Takes one trace event.
    pub fn take(&mut self, e: &TraceEvent) {
        let at = e.time.as_nanos();
        self.end = self.end.max(at);
        let on = |kind: &'static str, node: Option<NodeId>, fault: bool| Mark {
            node: node.map(|n| n.0),
            at,
            kind,
            text: e.detail.clone(),
            fault,
        };
        match (&e.info, e.kind) {
            (EventInfo::Node { name, client }, _) => {
                let id = e.node.expect("a node event names its node").0;
                if !self.lanes.iter().any(|l| l.id == id) {
                    self.lanes.push(Lane { id, name: name.clone(), client: *client });
                }
            }
            (EventInfo::Message { from, to, sent_at, delivered }, kind) => self.arrows.push(Arrow {
                from: from.0,
                to: to.0,
                sent: sent_at.as_nanos(),
                at,
                kind: if kind.starts_with("stream") { "stream" } else { "datagram" },
                delivered: *delivered,
            }),
            (EventInfo::Fault(fault), _) => {
                let mark = match fault {
                    // The crash itself is drawn from the node's `crash`
                    // event, which says what its disk lost.
                    Fault::Crash(_) => None,
                    Fault::PowerLoss => Some(on("power-loss", None, true)),
                    Fault::Restart { node, .. } => Some(on("restart", Some(*node), true)),
                    Fault::Pause(node) => Some(on("pause", Some(*node), true)),
                    Fault::Resume(node) => Some(on("resume", Some(*node), true)),
                    Fault::PartitionSymmetric(_)
                    | Fault::PartitionAsymmetric { .. }
                    | Fault::PartitionOneWay { .. } => Some(on("partition", None, true)),
                    Fault::Heal => Some(on("heal", None, true)),
                    Fault::ClockStep { node, .. } | Fault::ClockDrift { node, .. } => {
                        Some(on("clock", Some(*node), true))
                    }
                    Fault::BitRot(node) => Some(on("disk", Some(*node), true)),
                };
                self.marks.extend(mark);
            }
            (EventInfo::None, "crash") => self.marks.push(on("crash", e.node, true)),
            (EventInfo::None, "bit-rot") => self.marks.push(on("disk", e.node, false)),
            (EventInfo::None, "buggify") => self.marks.push(on("buggify", e.node, false)),
            (EventInfo::None, "liveness") => self.marks.push(on("liveness", None, false)),
            (EventInfo::None, "verdict") => {
                let text = e.detail.strip_prefix("VERDICT ").unwrap_or(&e.detail);
                if text != "pass" {
                    self.failure = Some(Failure { at, text: text.to_owned() });
                }
            }
            // The simulator's own bookkeeping: too many to draw, and shown
            // by the arrows and marks already.
            (EventInfo::None, "poll" | "timer" | "disk-op" | "disk-done" | "packet-send" | "tcp-bind") => {}
            (EventInfo::None, _) => {
                // A scenario's own event on a lane (a role change, a client
                // acknowledgement, a connect): a small tick with its text.
                if e.node.is_some() {
                    let mut mark = on("note", e.node, false);
                    mark.text = format!("{}: {}", e.kind, e.detail);
                    self.marks.push(mark);
                }
            }
        }
    }

    /// The default window: ends just after the failure (or at the run's
    /// end) and holds the last `max_messages` messages that arrived before
    /// that moment (`0`: the whole run).
    pub fn default_window(&self, max_messages: usize) -> (u64, u64) {
        let focus = self.failure.as_ref().map_or(self.end, |f| f.at);
        if max_messages == 0 {
            return (0, self.end.max(1));
        }
        let before = self.arrows.partition_point(|a| a.at <= focus);
        let first = before.saturating_sub(max_messages);
        let start = self.arrows[first..before].iter().map(|a| a.sent).min().unwrap_or(0);
        let start = if first == 0 { 0 } else { start };
        // A margin after the focus so the failure is not on the edge.
        let margin = ((focus - start.min(focus)) / 20).max(1_000_000);
        (start, (focus + margin).min(self.end.max(focus)).max(start + 1))
    }

    /// The page for the window `from..=to` (ns); `title` heads it.
    pub fn to_html(&self, title: &str, from: u64, to: u64) -> String {
        assert!(from < to, "an empty window {from}..{to}");
        let inside = |a: u64, b: u64| a <= to && b >= from;
        let arrows: Vec<&Arrow> = self.arrows.iter().filter(|a| inside(a.sent, a.at)).collect();
        let marks: Vec<&Mark> = self.marks.iter().filter(|m| m.fault || inside(m.at, m.at)).collect();
        let spans: Vec<&Span> = self.spans.iter().filter(|s| inside(s.start, s.end.unwrap_or(u64::MAX))).collect();
        let data = PageData {
            title,
            lanes: &self.lanes,
            window: (from, to),
            run_end: self.end,
            total_messages: self.arrows.len(),
            arrows,
            marks,
            spans,
            failure: self.failure.as_ref(),
            max_drawn: MAX_DRAWN,
        };
        let json = serde_json::to_string(&data).expect("page data serializes");
        // Inside <script>, only "</" can end the element early.
        let json = json.replace("</", "<\\/");
        PAGE.replace("{{TITLE}}", &escape_html(title)).replace("{{DATA}}", &json)
    }
}

#[derive(Serialize)]
struct PageData<'a> {
    title: &'a str,
    lanes: &'a [Lane],
    window: (u64, u64),
    run_end: u64,
    total_messages: usize,
    arrows: Vec<&'a Arrow>,
    marks: Vec<&'a Mark>,
    spans: Vec<&'a Span>,
    failure: Option<&'a Failure>,
    max_drawn: usize,
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page: style, script, and the data placeholder.
const PAGE: &str = include_str!("picture.html");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Trace;
    use kaelix_core::Instant;

    fn ev(t: u64, node: Option<u64>, kind: &'static str, detail: &str, info: EventInfo) -> TraceEvent {
        TraceEvent { time: Instant::from_nanos(t), node: node.map(NodeId), kind, detail: detail.into(), info }
    }

    #[test]
    fn events_become_lanes_arrows_marks_and_the_failure() {
        let mut p = Picture::default();
        p.take(&ev(0, Some(1), "node", "", EventInfo::Node { name: "n1".into(), client: false }));
        p.take(&ev(0, Some(9), "node", "", EventInfo::Node { name: "c".into(), client: true }));
        p.take(&ev(5, Some(1), "poll", "poll x", EventInfo::None));
        let msg =
            EventInfo::Message { from: NodeId(9), to: NodeId(1), sent_at: Instant::from_nanos(3), delivered: true };
        p.take(&ev(7, Some(1), "stream-frame", "", msg));
        p.take(&ev(8, None, "fault", "FAULT crash n1", EventInfo::Fault(Fault::Crash(NodeId(1)))));
        p.take(&ev(8, Some(1), "crash", "crash n1: lost 2", EventInfo::None));
        p.take(&ev(9, None, "fault", "FAULT heal", EventInfo::Fault(Fault::Heal)));
        p.take(&ev(10, Some(1), "raft-role", "leader", EventInfo::None));
        p.take(&ev(11, None, "verdict", "VERDICT SAFETY VIOLATION: x", EventInfo::None));
        assert_eq!(p.lanes.len(), 2);
        assert_eq!(p.arrows, vec![Arrow { from: 9, to: 1, sent: 3, at: 7, kind: "stream", delivered: true }]);
        let kinds: Vec<&str> = p.marks.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, ["crash", "heal", "note"]);
        assert_eq!(p.failure, Some(Failure { at: 11, text: "SAFETY VIOLATION: x".into() }));
        assert_eq!(p.end, 11);
    }

    #[test]
    fn the_default_window_holds_the_last_messages_before_the_failure() {
        let mut p = Picture::default();
        for i in 0..100u64 {
            let info = EventInfo::Message {
                from: NodeId(1),
                to: NodeId(2),
                sent_at: Instant::from_nanos(i * 1_000_000_000),
                delivered: true,
            };
            p.take(&ev(i * 1_000_000_000 + 10, Some(2), "packet-deliver", "", info));
        }
        p.take(&ev(50_000_000_000, None, "verdict", "VERDICT LIVENESS VIOLATION: y", EventInfo::None));
        let (from, to) = p.default_window(10);
        // Messages 0..=49 arrived by the failure at 50 s: the window holds
        // 40..=49, from the send of 40.
        assert_eq!(from, 40_000_000_000);
        assert!(to > 50_000_000_000 && to < 51_000_000_000, "{to}");
        assert_eq!(p.default_window(0), (0, p.end));
        let html = p.to_html("t</script>", from, to);
        assert!(!html.contains("t</script>"), "the title is escaped");
        assert!(html.contains("\"total_messages\":100"));
    }

    #[test]
    fn a_sink_never_changes_the_hash() {
        let recorder = PictureRecorder::new();
        let mut with = Trace::new(Some(recorder.sink()));
        let mut without = Trace::default();
        for tr in [&mut with, &mut without] {
            tr.note(Instant::ZERO, Some(NodeId(1)), "node", String::new, || EventInfo::Node {
                name: "a".into(),
                client: false,
            });
            tr.record(Instant::from_nanos(3), Some(NodeId(1)), "crash", 1, || "crash".into());
        }
        assert_eq!(with.hash(), without.hash());
        assert_eq!(with.events(), without.events());
        assert_eq!(recorder.picture().lanes.len(), 1);
    }
}

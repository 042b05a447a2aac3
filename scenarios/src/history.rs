//! Client histories of replicated partitions: the model, a recorder for
//! simulated clients, and the JSON-lines export.
//!
//! # Model
//!
//! A history is the list of operations that clients invoked on partition
//! logs, each with the simulated time it was **called** and, if the client
//! learned its outcome, the time it **returned** and its output:
//!
//! * `produce(payload)` appends `payload` to the partition's log; its output
//!   is the offset the log gave it.
//! * `read(offset)` returns the payload at `offset`, or nothing when the log
//!   has no entry there yet.
//!
//! An operation whose outcome the client never learned (it timed out, or the
//! client or the node it talked to crashed) is **unknown**: it may have taken
//! effect at any moment after its call, or never. Its output and return time
//! are absent. An operation that ended in a *definite* failure (refused before
//! anything could have happened) is left out of the history altogether
//! ([`HistoryRecorder::fail`]); recording it as unknown would also be sound,
//! only weaker.
//!
//! Times are nanoseconds on **one clock shared by every client**: the
//! simulator's true virtual time (`Sim::now`, reachable from a task as
//! `handle.sim().now()`), never a node's own skewed and drifting clock —
//! real-time order between two clients' operations is what
//! linearizability is about.
//!
//! Payloads should be unique per produce operation (a client that retries a
//! produce does so inside one operation, keeping its payload): the checkers
//! stay exact without that, but their diagnoses are sharpest with it.
//!
//! # JSON lines
//!
//! [`History::to_json_lines`] writes one object per operation, in call
//! order, keys in this order:
//!
//! ```text
//! {"client": 3, "partition": "orders/0", "op": "produce", "input": "v17", "output": 42, "call": 1200000, "return": 1900000}
//! {"client": 1, "partition": "orders/0", "op": "read", "input": 42, "output": "v17", "call": 1950000, "return": 2300000}
//! {"client": 2, "partition": "orders/1", "op": "read", "input": 7, "output": null, "call": 2000000, "return": 2100000}
//! {"client": 4, "partition": "orders/0", "op": "produce", "input": "v18", "output": null, "call": 2500000, "return": null}
//! ```
//!
//! | key | value |
//! |---|---|
//! | `client` | the client's number (unsigned integer) |
//! | `partition` | the partition's name (string), e.g. `"orders/0"` |
//! | `op` | `"produce"` or `"read"` |
//! | `input` | `produce`: the payload (string); `read`: the offset (unsigned integer) |
//! | `output` | `produce`: the offset assigned; `read`: the payload read, or `null` when nothing is at that offset yet; `null` for both when the outcome is unknown |
//! | `call` | simulated nanoseconds when the client invoked it |
//! | `return` | simulated nanoseconds when the client learned the outcome, `null` when unknown |
//!
//! [`History::from_json_lines`] reads the same format back and rejects any
//! malformed line with its (1-based) number and the problem: a missing,
//! repeated or unknown key, a value of the wrong type, an output that does
//! not fit the operation, or a return before the call.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};

use kaelix_core::time::Instant;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an operation asked the partition to do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// Append `payload`.
    Produce {
        /// The payload (the JSON `input`).
        payload: String,
    },
    /// Read the entry at `offset`.
    Read {
        /// The offset (the JSON `input`).
        offset: u64,
    },
}

/// What a returned operation reported.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Output {
    /// A produce's assigned offset.
    Offset(u64),
    /// A read found this payload.
    Payload(String),
    /// A read found nothing at its offset (the JSON `null` of a returned read).
    Nothing,
}

/// The outcome of an operation whose client learned it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Completion {
    /// Simulated nanoseconds when the client learned the outcome.
    pub at: u64,
    /// What the operation reported.
    pub output: Output,
}

/// One client operation on one partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistoryOp {
    /// The client that invoked it.
    pub client: u64,
    /// The partition it addressed, e.g. `"orders/0"`.
    pub partition: String,
    /// What it asked for.
    pub kind: OpKind,
    /// Simulated nanoseconds when it was invoked.
    pub call: u64,
    /// Its outcome, or `None` when unknown (timed out, crashed).
    pub completion: Option<Completion>,
}

impl HistoryOp {
    /// Checks that the output fits the operation and that it returned no
    /// earlier than it was called.
    pub fn validate(&self) -> Result<(), String> {
        let Some(done) = &self.completion else { return Ok(()) };
        match (&self.kind, &done.output) {
            (OpKind::Produce { .. }, Output::Offset(_)) => {}
            (OpKind::Produce { .. }, _) => {
                return Err("a returned produce must output the offset it was given (an integer)".into());
            }
            (OpKind::Read { .. }, Output::Payload(_) | Output::Nothing) => {}
            (OpKind::Read { .. }, Output::Offset(_)) => {
                return Err("a read must output a payload (a string) or null".into());
            }
        }
        if done.at < self.call {
            return Err(format!("returned at {} before it was called at {}", done.at, self.call));
        }
        Ok(())
    }

    /// When it returned, or `None` when its outcome is unknown.
    pub fn returned(&self) -> Option<u64> {
        self.completion.as_ref().map(|c| c.at)
    }

    /// Whether its outcome is unknown.
    pub fn is_unknown(&self) -> bool {
        self.completion.is_none()
    }

    /// The offset an acknowledged produce was given.
    pub fn produced_offset(&self) -> Option<u64> {
        match self.completion.as_ref().map(|c| &c.output) {
            Some(Output::Offset(o)) => Some(*o),
            _ => None,
        }
    }

    /// A returned read's result: `Some(Some(payload))`, `Some(None)` for
    /// nothing there, `None` when it is not a returned read.
    pub fn read_result(&self) -> Option<Option<&str>> {
        match self.completion.as_ref().map(|c| &c.output) {
            Some(Output::Payload(p)) => Some(Some(p)),
            Some(Output::Nothing) => Some(None),
            _ => None,
        }
    }

    /// A one-line description naming the operation by its index (`#i`, the
    /// JSON line `i + 1`), client, input, output and interval, for checker
    /// diagnoses.
    pub fn describe(&self, index: usize) -> String {
        let what = match &self.kind {
            OpKind::Produce { payload } => format!("produce {payload:?}"),
            OpKind::Read { offset } => format!("read offset {offset}"),
        };
        let outcome = match &self.completion {
            None => format!("[{}, -] outcome unknown", self.call),
            Some(Completion { at, output: Output::Offset(o) }) => format!("[{}, {at}] -> offset {o}", self.call),
            Some(Completion { at, output: Output::Payload(p) }) => format!("[{}, {at}] -> {p:?}", self.call),
            Some(Completion { at, output: Output::Nothing }) => format!("[{}, {at}] -> nothing", self.call),
        };
        format!("#{index} (client {}: {what} {outcome})", self.client)
    }

    /// The operation as one JSON line (no newline), in the module's format.
    pub fn to_json_line(&self) -> String {
        let input = match &self.kind {
            OpKind::Produce { payload } => Scalar::Text(payload),
            OpKind::Read { offset } => Scalar::Number(*offset),
        };
        let output = self.completion.as_ref().and_then(|c| match &c.output {
            Output::Offset(o) => Some(Scalar::Number(*o)),
            Output::Payload(p) => Some(Scalar::Text(p)),
            Output::Nothing => None,
        });
        let line = LineOut {
            client: self.client,
            partition: &self.partition,
            op: match self.kind {
                OpKind::Produce { .. } => "produce",
                OpKind::Read { .. } => "read",
            },
            input,
            output,
            call: self.call,
            ret: self.returned(),
        };
        let mut bytes = Vec::with_capacity(128);
        let mut ser = serde_json::Serializer::with_formatter(&mut bytes, SpacedLine);
        line.serialize(&mut ser).expect("serialising to memory cannot fail");
        String::from_utf8(bytes).expect("serde_json writes UTF-8")
    }

    /// Parses one JSON line of the module's format.
    pub fn from_json_line(line: &str) -> Result<HistoryOp, String> {
        // serde would also take the fields as a JSON array; the format is objects.
        if !line.trim_start().starts_with('{') {
            return Err(format!("not a history object: expected a JSON object, got {line:?}"));
        }
        let raw: LineIn = serde_json::from_str(line).map_err(|e| format!("not a history object: {e}"))?;
        let client = unsigned(&raw.client, "client")?;
        let Value::String(partition) = raw.partition else {
            return Err(format!("\"partition\" must be a string, got {}", raw.partition));
        };
        let ret = match &raw.ret {
            Value::Null => None,
            v => Some(unsigned(v, "return")?),
        };
        let call = unsigned(&raw.call, "call")?;
        let (kind, output) = match raw.op.as_str() {
            Some("produce") => {
                let Value::String(payload) = raw.input else {
                    return Err(format!("a produce's \"input\" must be its payload (a string), got {}", raw.input));
                };
                let output = match &raw.output {
                    Value::Null => None,
                    v => Some(Output::Offset(unsigned(v, "output")?)),
                };
                (OpKind::Produce { payload }, output)
            }
            Some("read") => {
                let offset = unsigned(&raw.input, "input")?;
                let output = match raw.output {
                    Value::Null => Output::Nothing,
                    Value::String(p) => Output::Payload(p),
                    other => {
                        return Err(format!("a read's \"output\" must be the payload (a string) or null, got {other}"));
                    }
                };
                (OpKind::Read { offset }, Some(output))
            }
            _ => return Err(format!("\"op\" must be \"produce\" or \"read\", got {}", raw.op)),
        };
        let completion = match (ret, output) {
            (None, None) => None,
            // An unknown read's null output is not "nothing there".
            (None, Some(Output::Nothing)) => None,
            (None, Some(_)) => {
                return Err("\"output\" is set but \"return\" is null (an unknown outcome has a null output)".into());
            }
            (Some(_), None) => {
                return Err("a returned produce must output the offset it was given, got null".into());
            }
            (Some(at), Some(output)) => Some(Completion { at, output }),
        };
        let op = HistoryOp { client, partition, kind, call, completion };
        op.validate()?;
        Ok(op)
    }
}

fn unsigned(v: &Value, key: &str) -> Result<u64, String> {
    v.as_u64().ok_or_else(|| format!("{key:?} must be an unsigned integer, got {v}"))
}

/// The on-disk shape of a line, fields in key order.
#[derive(Serialize)]
struct LineOut<'a> {
    client: u64,
    partition: &'a str,
    op: &'static str,
    input: Scalar<'a>,
    output: Option<Scalar<'a>>,
    call: u64,
    #[serde(rename = "return")]
    ret: Option<u64>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Scalar<'a> {
    Text(&'a str),
    Number(u64),
}

/// What a line must contain: every key present (null allowed), none
/// repeated, no other key; the values are checked by hand for precise errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    client: Value,
    partition: Value,
    op: Value,
    input: Value,
    output: Value,
    call: Value,
    #[serde(rename = "return")]
    ret: Value,
}

/// serde_json's compact output with a space after every `:` and `,`: the
/// issue's example line, byte for byte.
struct SpacedLine;

impl serde_json::ser::Formatter for SpacedLine {
    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}

/// A malformed line of a JSON-lines history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

impl std::error::Error for ParseError {}

/// A complete client history, operations in call order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<HistoryOp>,
}

impl History {
    /// A history of `ops` (any order; kept stably sorted by call time).
    /// Fails on the first invalid operation, naming its index.
    pub fn new(mut ops: Vec<HistoryOp>) -> Result<History, String> {
        for (i, op) in ops.iter().enumerate() {
            op.validate().map_err(|e| format!("operation {i}: {e}"))?;
        }
        ops.sort_by_key(|op| op.call);
        Ok(History { ops })
    }

    /// Every operation, in call order; an operation's index here is the
    /// `#i` in checker diagnoses and line `i + 1` of the JSON export.
    pub fn ops(&self) -> &[HistoryOp] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The indices of each partition's operations, partitions by name.
    pub fn partitions(&self) -> BTreeMap<&str, Vec<usize>> {
        let mut by_partition: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, op) in self.ops.iter().enumerate() {
            by_partition.entry(op.partition.as_str()).or_default().push(i);
        }
        by_partition
    }

    /// The whole history as JSON lines, each ending in a newline.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::with_capacity(self.ops.len() * 128);
        for op in &self.ops {
            out.push_str(&op.to_json_line());
            out.push('\n');
        }
        out
    }

    /// Writes [`History::to_json_lines`] to `out`.
    pub fn write_json_lines(&self, out: &mut impl io::Write) -> io::Result<()> {
        for op in &self.ops {
            out.write_all(op.to_json_line().as_bytes())?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Reads a JSON-lines history. Every line must be one operation (a
    /// final newline is fine; an empty line in between is an error).
    pub fn from_json_lines(text: &str) -> Result<History, ParseError> {
        let mut ops = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let error = |problem: String| ParseError { line: i + 1, problem };
            if line.trim().is_empty() {
                return Err(error("empty line (expected one operation per line)".into()));
            }
            ops.push(HistoryOp::from_json_line(line).map_err(error)?);
        }
        // Already validated line by line; `new` only orders by call time.
        Ok(History::new(ops).expect("every line was validated"))
    }
}

/// Names one recorded operation until it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(usize);

#[derive(Debug)]
struct Slot {
    op: HistoryOp,
    /// Ended in a definite failure: no effect, left out of the history.
    failed: bool,
}

#[derive(Debug, Default)]
struct Log {
    slots: Vec<Slot>,
    last_call: u64,
}

/// A cheap, cloneable recorder shared by every simulated client task.
///
/// A client calls [`call_produce`](Self::call_produce) or
/// [`call_read`](Self::call_read) when it invokes an operation (getting an
/// [`OpId`]) and [`return_produce`](Self::return_produce) /
/// [`return_read`](Self::return_read) when it learns the outcome, or
/// [`fail`](Self::fail) on a definite failure. An operation never completed
/// — the task timed out and gave up, or was dropped by a crash — stays
/// unknown. The lock is uncontended: the simulator runs every task on one
/// thread.
///
/// ```
/// use kaelix_core::time::Instant;
/// use kaelix_scenarios::history::HistoryRecorder;
///
/// let recorder = HistoryRecorder::new();
/// let client = recorder.clone(); // one per client task
/// let id = client.call_produce(3, "orders/0", "v17", Instant::from_nanos(1_200_000));
/// client.return_produce(id, 42, Instant::from_nanos(1_900_000));
/// let lost = client.call_produce(3, "orders/0", "v18", Instant::from_nanos(2_000_000));
/// let _ = lost; // timed out: never completed, so unknown
/// let history = recorder.history();
/// assert_eq!(
///     history.to_json_lines().lines().next().unwrap(),
///     r#"{"client": 3, "partition": "orders/0", "op": "produce", "input": "v17", "output": 42, "call": 1200000, "return": 1900000}"#
/// );
/// assert!(history.ops()[1].is_unknown());
/// ```
#[derive(Clone, Debug, Default)]
pub struct HistoryRecorder {
    log: Arc<Mutex<Log>>,
}

impl HistoryRecorder {
    /// An empty recorder.
    pub fn new() -> HistoryRecorder {
        HistoryRecorder::default()
    }

    /// Records the call of `produce(payload)` on `partition` by `client`.
    pub fn call_produce(&self, client: u64, partition: &str, payload: &str, now: Instant) -> OpId {
        self.call(client, partition, OpKind::Produce { payload: payload.to_owned() }, now)
    }

    /// Records the call of `read(offset)` on `partition` by `client`.
    pub fn call_read(&self, client: u64, partition: &str, offset: u64, now: Instant) -> OpId {
        self.call(client, partition, OpKind::Read { offset }, now)
    }

    /// Records that produce `id` was acknowledged with `offset`.
    ///
    /// # Panics
    /// If `id` is not an open produce, or `now` is before its call.
    pub fn return_produce(&self, id: OpId, offset: u64, now: Instant) {
        self.complete(id, Output::Offset(offset), now);
    }

    /// Records that read `id` found `payload` (`None`: nothing at the offset).
    ///
    /// # Panics
    /// If `id` is not an open read, or `now` is before its call.
    pub fn return_read(&self, id: OpId, payload: Option<&str>, now: Instant) {
        let output = payload.map_or(Output::Nothing, |p| Output::Payload(p.to_owned()));
        self.complete(id, output, now);
    }

    /// Records that `id` failed definitely (refused before it could take
    /// effect): it is left out of the history. Use only when the outcome is
    /// *known* to be "nothing happened"; a timeout is unknown, not failed.
    ///
    /// # Panics
    /// If `id` already completed or failed.
    pub fn fail(&self, id: OpId) {
        let mut log = self.log.lock().expect("recorder lock");
        let slot = &mut log.slots[id.0];
        assert!(slot.op.completion.is_none() && !slot.failed, "operation {} completed twice", id.0);
        slot.failed = true;
    }

    /// Operations recorded so far (failed ones included).
    pub fn len(&self) -> usize {
        self.log.lock().expect("recorder lock").slots.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The history so far: every operation not failed, open ones unknown.
    pub fn history(&self) -> History {
        let log = self.log.lock().expect("recorder lock");
        let ops = log.slots.iter().filter(|s| !s.failed).map(|s| s.op.clone()).collect();
        History::new(ops).expect("the recorder only builds valid operations")
    }

    fn call(&self, client: u64, partition: &str, kind: OpKind, now: Instant) -> OpId {
        let mut log = self.log.lock().expect("recorder lock");
        let call = now.as_nanos();
        // Calls are recorded as they happen, so on one clock they arrive in
        // order; an earlier one means a node's skewed clock was used.
        assert!(
            call >= log.last_call,
            "history call at {call} ns after one at {} ns: record the simulator's true time, not a node's clock",
            log.last_call
        );
        log.last_call = call;
        let id = OpId(log.slots.len());
        log.slots.push(Slot {
            op: HistoryOp { client, partition: partition.to_owned(), kind, call, completion: None },
            failed: false,
        });
        id
    }

    fn complete(&self, id: OpId, output: Output, now: Instant) {
        let mut log = self.log.lock().expect("recorder lock");
        let slot = &mut log.slots[id.0];
        assert!(slot.op.completion.is_none() && !slot.failed, "operation {} completed twice", id.0);
        slot.op.completion = Some(Completion { at: now.as_nanos(), output });
        if let Err(e) = slot.op.validate() {
            panic!("operation {}: {e}", id.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"{"client": 3, "partition": "orders/0", "op": "produce", "input": "v17", "output": 42, "call": 1200000, "return": 1900000}"#;

    fn at(ns: u64) -> Instant {
        Instant::from_nanos(ns)
    }

    #[test]
    fn issue_example_parses_and_reserialises_identically() {
        let op = HistoryOp::from_json_line(ISSUE_EXAMPLE).unwrap();
        assert_eq!(
            op,
            HistoryOp {
                client: 3,
                partition: "orders/0".into(),
                kind: OpKind::Produce { payload: "v17".into() },
                call: 1_200_000,
                completion: Some(Completion { at: 1_900_000, output: Output::Offset(42) }),
            }
        );
        assert_eq!(op.to_json_line(), ISSUE_EXAMPLE);
    }

    #[test]
    fn every_shape_round_trips() {
        let recorder = HistoryRecorder::new();
        let p = recorder.call_produce(1, "orders/0", "a \"quoted\"\npayload ü", at(10));
        let r = recorder.call_read(2, "orders/0", 0, at(11));
        let miss = recorder.call_read(2, "orders/1", 5, at(12));
        let _unknown_produce = recorder.call_produce(3, "orders/1", "lost?", at(13));
        let _unknown_read = recorder.call_read(4, "orders/1", 0, at(14));
        let refused = recorder.call_produce(5, "orders/1", "refused", at(15));
        recorder.return_produce(p, 0, at(20));
        recorder.return_read(r, Some("a \"quoted\"\npayload ü"), at(21));
        recorder.return_read(miss, None, at(22));
        recorder.fail(refused);
        let history = recorder.history();
        assert_eq!(history.len(), 5, "the refused produce is left out");
        let text = history.to_json_lines();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            r#"{"client": 2, "partition": "orders/1", "op": "read", "input": 5, "output": null, "call": 12, "return": 22}"#
        );
        assert_eq!(
            lines[3],
            r#"{"client": 3, "partition": "orders/1", "op": "produce", "input": "lost?", "output": null, "call": 13, "return": null}"#
        );
        assert_eq!(
            lines[4],
            r#"{"client": 4, "partition": "orders/1", "op": "read", "input": 0, "output": null, "call": 14, "return": null}"#
        );
        let back = History::from_json_lines(&text).unwrap();
        assert_eq!(back, history);
        assert_eq!(back.to_json_lines(), text);
        assert!(back.ops()[3].is_unknown() && back.ops()[4].is_unknown());
        assert_eq!(back.ops()[2].read_result(), Some(None));

        let mut written = Vec::new();
        history.write_json_lines(&mut written).unwrap();
        assert_eq!(String::from_utf8(written).unwrap(), text);
    }

    fn line_error(text: &str) -> ParseError {
        History::from_json_lines(text).expect_err("must be rejected")
    }

    #[test]
    fn malformed_lines_are_rejected_with_line_number_and_problem() {
        let good = ISSUE_EXAMPLE;
        let cases: &[(&str, &str)] = &[
            ("{not json", "not a history object"),
            ("[1, 2]", "not a history object"),
            (r#"[3, "orders/0", "produce", "v17", 42, 1200000, 1900000]"#, "expected a JSON object"),
            (
                r#"{"client": 3, "partition": "orders/0", "op": "produce", "input": "v17", "output": 42, "call": 1200000}"#,
                "missing field `return`",
            ),
            (
                r#"{"client": 3, "client": 4, "partition": "orders/0", "op": "produce", "input": "v17", "output": 42, "call": 1, "return": 2}"#,
                "duplicate field `client`",
            ),
            (
                r#"{"client": 3, "partition": "orders/0", "op": "produce", "input": "v17", "output": 42, "call": 1, "return": 2, "extra": 0}"#,
                "unknown field `extra`",
            ),
            (
                r#"{"client": -3, "partition": "orders/0", "op": "produce", "input": "v17", "output": 42, "call": 1, "return": 2}"#,
                "\"client\" must be an unsigned integer",
            ),
            (
                r#"{"client": 3, "partition": 0, "op": "produce", "input": "v17", "output": 42, "call": 1, "return": 2}"#,
                "\"partition\" must be a string",
            ),
            (
                r#"{"client": 3, "partition": "p", "op": "append", "input": "v17", "output": 42, "call": 1, "return": 2}"#,
                "\"op\" must be \"produce\" or \"read\"",
            ),
            (
                r#"{"client": 3, "partition": "p", "op": "produce", "input": 17, "output": 42, "call": 1, "return": 2}"#,
                "payload (a string)",
            ),
            (
                r#"{"client": 3, "partition": "p", "op": "produce", "input": "v", "output": "x", "call": 1, "return": 2}"#,
                "\"output\" must be an unsigned integer",
            ),
            (
                r#"{"client": 3, "partition": "p", "op": "produce", "input": "v", "output": null, "call": 1, "return": 2}"#,
                "must output the offset",
            ),
            (
                r#"{"client": 3, "partition": "p", "op": "produce", "input": "v", "output": 4, "call": 1, "return": null}"#,
                "\"return\" is null",
            ),
            (
                r#"{"client": 3, "partition": "p", "op": "read", "input": "v", "output": null, "call": 1, "return": 2}"#,
                "\"input\" must be an unsigned integer",
            ),
            (
                r#"{"client": 3, "partition": "p", "op": "read", "input": 1, "output": 5, "call": 1, "return": 2}"#,
                "payload (a string) or null",
            ),
            (
                r#"{"client": 3, "partition": "p", "op": "read", "input": 1, "output": null, "call": 1.5, "return": 2}"#,
                "\"call\" must be an unsigned integer",
            ),
            (
                r#"{"client": 3, "partition": "p", "op": "read", "input": 1, "output": null, "call": 5, "return": 2}"#,
                "returned at 2 before it was called at 5",
            ),
            ("", "empty line"),
        ];
        for (bad, problem) in cases {
            let text = format!("{good}\n{good}\n{bad}\n{good}\n");
            let err = line_error(&text);
            assert_eq!(err.line, 3, "{bad}: {err}");
            assert!(err.problem.contains(problem), "{bad}: got {err}, expected {problem:?}");
            assert!(err.to_string().starts_with("line 3: "));
        }
    }

    #[test]
    fn history_orders_by_call_and_groups_partitions() {
        let op = |client, partition: &str, call| HistoryOp {
            client,
            partition: partition.into(),
            kind: OpKind::Read { offset: 0 },
            call,
            completion: None,
        };
        let h = History::new(vec![op(1, "b", 30), op(2, "a", 10), op(3, "b", 20)]).unwrap();
        assert_eq!(h.ops().iter().map(|o| o.client).collect::<Vec<_>>(), vec![2, 3, 1]);
        let parts = h.partitions();
        assert_eq!(parts.keys().copied().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(parts["b"], vec![1, 2]);
        let bad = HistoryOp { completion: Some(Completion { at: 5, output: Output::Offset(1) }), ..op(1, "a", 0) };
        assert!(History::new(vec![bad]).unwrap_err().contains("operation 0"));
    }

    #[test]
    #[should_panic(expected = "completed twice")]
    fn completing_twice_panics() {
        let r = HistoryRecorder::new();
        let id = r.call_produce(1, "p", "v", at(1));
        r.return_produce(id, 0, at(2));
        r.return_produce(id, 1, at(3));
    }

    #[test]
    #[should_panic(expected = "must output the offset")]
    fn completing_with_the_wrong_output_panics() {
        let r = HistoryRecorder::new();
        let id = r.call_produce(1, "p", "v", at(1));
        r.return_read(id, None, at(2));
    }

    #[test]
    #[should_panic(expected = "true time")]
    fn calls_out_of_order_panic() {
        let r = HistoryRecorder::new();
        r.call_read(1, "p", 0, at(10));
        r.call_read(2, "p", 0, at(5));
    }

    #[test]
    fn describe_names_everything_a_diagnosis_needs() {
        let op = HistoryOp::from_json_line(ISSUE_EXAMPLE).unwrap();
        assert_eq!(op.describe(7), "#7 (client 3: produce \"v17\" [1200000, 1900000] -> offset 42)");
        let unknown = HistoryOp { completion: None, ..op };
        assert_eq!(unknown.describe(8), "#8 (client 3: produce \"v17\" [1200000, -] outcome unknown)");
    }
}

//! Offset rules: named diagnoses for the common ways a partition log breaks.
//!
//! The linearizability check says *whether* a partition's history fits the
//! log; these rules say *what kind* of break it is. Each rule below is
//! implied by linearizability of the log model with unknown operations (an
//! unknown operation may have taken effect at any moment after its call, or
//! never), so a history that breaks one is never linearizable, and a
//! linearizable history breaks none (the property tests check both). "Before"
//! is real time: `a` returned strictly before `b` was called.
//!
//! A position `o` of the log is written exactly once, by one produce, and
//! positions are written in order. **Evidence that `o` is present** by time
//! `T` is an acknowledged produce given `o` that returned at `T`, or a read
//! of `o` that found a value and returned at `T`.
//!
//! * **Duplicated**
//!   * two acknowledged produces were given the same offset (each produce
//!     takes effect once, at its own position);
//!   * one payload was seen (given to an acknowledged produce, or found by
//!     a read) at more distinct offsets than there are produce operations
//!     carrying it — with unique payloads, at two offsets. Each offset it
//!     was seen at was written by its own produce of that payload.
//! * **Lost**
//!   * a read of offset `o` found a value other than the payload of the
//!     acknowledged produce given `o` — at any time, since `o` holds nothing
//!     before that produce and its payload after;
//!   * two reads of `o` found different values (one write was replaced);
//!   * a read of `o` called after the acknowledged produce given `o`
//!     returned found nothing. The final read-back of a scenario is such a
//!     read.
//! * **Skipped**: a read of offset `o'` found nothing although it was called
//!   after evidence that a higher offset `o > o'` was present (offsets
//!   below a present one are present). A gap in a final read-back started
//!   after the produces were acknowledged is this case. (Nothing at `o'`
//!   *before* a value at `o > o'` is not a break: both may have been written
//!   in between, by unknown produces too.)
//! * **Non-monotonic**
//!   * *present, then absent*: a read of `o` found nothing although it was
//!     called after a read of `o` had returned a value;
//!   * *offsets going backwards*: an acknowledged produce was given `o'`
//!     although it was called after evidence that some `o >= o'` was present
//!     (a produce appends after everything already present). This includes a
//!     client's successive produces getting decreasing offsets, and a produce
//!     given an offset whose value someone had read before it was called.
//!
//! A read that found a payload no produce carries is no offset rule; the
//! linearizability check reports it. Each read that found nothing and each
//! acknowledged produce is blamed at most once (the most direct rule
//! first: lost, then present-then-absent, then skipped), so a report is as
//! long as the number of victims, not of pairs.

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{History, OpKind, Output};

/// Which rule an offset violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OffsetViolationKind {
    /// An offset given twice, or a payload at too many offsets.
    Duplicated,
    /// An acknowledged or read value not at its offset any more.
    Lost,
    /// Nothing found below an offset known to be present.
    Skipped,
    /// Reads or produce offsets going back in time.
    NonMonotonic,
}

impl fmt::Display for OffsetViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OffsetViolationKind::Duplicated => "duplicated",
            OffsetViolationKind::Lost => "lost",
            OffsetViolationKind::Skipped => "skipped",
            OffsetViolationKind::NonMonotonic => "non-monotonic",
        })
    }
}

/// One broken offset rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetViolation {
    /// The rule.
    pub kind: OffsetViolationKind,
    /// The operations that break it (indices into [`History::ops`]).
    pub ops: Vec<usize>,
    /// What they show.
    pub explanation: String,
}

impl fmt::Display for OffsetViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.explanation)
    }
}

/// Checks every offset rule on every partition, partitions by name.
pub fn check(history: &History) -> BTreeMap<String, Vec<OffsetViolation>> {
    history
        .partitions()
        .into_iter()
        .map(|(name, indices)| (name.to_owned(), check_partition(history, &indices)))
        .collect()
}

/// Evidence that an offset is present from some time on.
#[derive(Clone, Copy, Debug)]
struct Present {
    offset: u64,
    /// When the evidence returned.
    since: u64,
    op: usize,
    by_produce: bool,
}

/// Checks the rules on one partition's operations (`indices` into
/// `history.ops()`).
pub fn check_partition(history: &History, indices: &[usize]) -> Vec<OffsetViolation> {
    let ops = history.ops();
    let describe = |i: usize| ops[i].describe(i);
    let mut found = Vec::new();
    let mut report =
        |kind, ops: Vec<usize>, explanation: String| found.push(OffsetViolation { kind, ops, explanation });

    let mut acknowledged: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    let mut value_reads: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    let mut nothing_reads: Vec<usize> = Vec::new();
    let mut produces_of: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in indices {
        let op = &ops[i];
        if let OpKind::Produce { payload } = &op.kind {
            *produces_of.entry(payload).or_default() += 1;
        }
        match (&op.kind, op.completion.as_ref().map(|c| &c.output)) {
            (OpKind::Produce { .. }, Some(Output::Offset(o))) => acknowledged.entry(*o).or_default().push(i),
            (OpKind::Read { offset }, Some(Output::Payload(_))) => value_reads.entry(*offset).or_default().push(i),
            (OpKind::Read { .. }, Some(Output::Nothing)) => nothing_reads.push(i),
            _ => {}
        }
    }
    let payload = |i: usize| -> &str {
        match (&ops[i].kind, ops[i].read_result()) {
            (OpKind::Produce { payload }, _) => payload,
            (OpKind::Read { .. }, Some(Some(found))) => found,
            _ => unreachable!("only produces and value reads carry a payload"),
        }
    };

    // Duplicated: an offset given twice.
    for (o, given) in &acknowledged {
        if given.len() > 1 {
            let names: Vec<String> = given.iter().map(|&i| describe(i)).collect();
            report(
                OffsetViolationKind::Duplicated,
                given.clone(),
                format!("offset {o} was given to {} acknowledged produces: {}", given.len(), names.join(", ")),
            );
        }
    }
    // Duplicated: a payload at more offsets than produces carry it.
    let mut seen_at: BTreeMap<&str, BTreeMap<u64, usize>> = BTreeMap::new();
    for (&o, given) in &acknowledged {
        for &i in given {
            seen_at.entry(payload(i)).or_default().entry(o).or_insert(i);
        }
    }
    for (&o, reads) in &value_reads {
        for &r in reads {
            seen_at.entry(payload(r)).or_default().entry(o).or_insert(r);
        }
    }
    for (v, at) in &seen_at {
        let carriers = produces_of.get(v).copied().unwrap_or(0);
        if carriers > 0 && at.len() > carriers {
            let names: Vec<String> = at.iter().map(|(o, &i)| format!("offset {o} by {}", describe(i))).collect();
            report(
                OffsetViolationKind::Duplicated,
                at.values().copied().collect(),
                format!(
                    "{v:?} is at {} offsets but only {carriers} produce(s) carry it: {}",
                    at.len(),
                    names.join("; ")
                ),
            );
        }
    }
    // Lost: a value at an acknowledged offset that is not its produce's, or
    // two values at one offset.
    for (&o, reads) in &value_reads {
        if let Some(&writer) = acknowledged.get(&o).and_then(|g| g.first()) {
            let mut blamed: Vec<&str> = Vec::new();
            for &r in reads {
                let v = payload(r);
                if v != payload(writer) && !blamed.contains(&v) {
                    blamed.push(v);
                    report(
                        OffsetViolationKind::Lost,
                        vec![writer, r],
                        format!(
                            "{} was acknowledged at offset {o}, but {} found {v:?} there",
                            describe(writer),
                            describe(r)
                        ),
                    );
                }
            }
        } else if let Some(&other) = reads.iter().find(|&&r| payload(r) != payload(reads[0])) {
            report(
                OffsetViolationKind::Lost,
                vec![reads[0], other],
                format!(
                    "{} and {} found different values at offset {o}, which is written once: one write was lost",
                    describe(reads[0]),
                    describe(other)
                ),
            );
        }
    }

    // Evidence of presence, by when it returned.
    let mut evidence: Vec<Present> = Vec::new();
    for (&offset, given) in &acknowledged {
        for &i in given {
            evidence.push(Present { offset, since: ops[i].returned().expect("acknowledged"), op: i, by_produce: true });
        }
    }
    for (&offset, reads) in &value_reads {
        for &r in reads {
            evidence.push(Present { offset, since: ops[r].returned().expect("returned"), op: r, by_produce: false });
        }
    }
    evidence.sort_by_key(|e| (e.since, e.op));
    // Earliest evidence at each exact offset, by kind.
    let mut earliest_produce: BTreeMap<u64, Present> = BTreeMap::new();
    let mut earliest_read: BTreeMap<u64, Present> = BTreeMap::new();
    for e in &evidence {
        let map = if e.by_produce { &mut earliest_produce } else { &mut earliest_read };
        map.entry(e.offset).or_insert(*e);
    }

    // Victims (reads that found nothing, acknowledged produces) in call
    // order, against the highest offset present before each was called.
    let mut victims: Vec<usize> = nothing_reads.clone();
    victims.extend(acknowledged.values().flatten().copied());
    victims.sort_by_key(|&i| (ops[i].call, i));
    let mut next_evidence = 0;
    let mut highest_by_produce: Option<Present> = None;
    let mut highest_by_read: Option<Present> = None;
    for v in victims {
        let call = ops[v].call;
        while next_evidence < evidence.len() && evidence[next_evidence].since < call {
            let e = evidence[next_evidence];
            let slot = if e.by_produce { &mut highest_by_produce } else { &mut highest_by_read };
            if slot.is_none_or(|h| e.offset > h.offset) {
                *slot = Some(e);
            }
            next_evidence += 1;
        }
        let before = |e: &Present| e.since < call;
        let same_client = |e: &Present| {
            if ops[e.op].client == ops[v].client {
                format!(" (both by client {})", ops[v].client)
            } else {
                String::new()
            }
        };
        match &ops[v].kind {
            OpKind::Read { offset } => {
                let o = *offset;
                if let Some(e) = earliest_produce.get(&o).filter(|e| before(e)) {
                    report(
                        OffsetViolationKind::Lost,
                        vec![e.op, v],
                        format!(
                            "{} was acknowledged at offset {o} (returned at {}), but {}, called later at {call}, found nothing there",
                            describe(e.op),
                            e.since,
                            describe(v)
                        ),
                    );
                } else if let Some(e) = earliest_read.get(&o).filter(|e| before(e)) {
                    report(
                        OffsetViolationKind::NonMonotonic,
                        vec![e.op, v],
                        format!(
                            "offset {o} was present, then absent: {} found a value there (returned at {}), then {}, \
                             called later at {call}, found nothing{}",
                            describe(e.op),
                            e.since,
                            describe(v),
                            same_client(e)
                        ),
                    );
                } else if let Some(e) = [highest_by_produce, highest_by_read]
                    .into_iter()
                    .flatten()
                    .filter(|e| e.offset > o)
                    .max_by_key(|e| (e.offset, std::cmp::Reverse(e.since)))
                {
                    report(
                        OffsetViolationKind::Skipped,
                        vec![e.op, v],
                        format!(
                            "{} found nothing at offset {o}, although offset {} was present before it was called at \
                             {call}: {} returned at {}",
                            describe(v),
                            e.offset,
                            describe(e.op),
                            e.since
                        ),
                    );
                }
            }
            OpKind::Produce { .. } => {
                let o = ops[v].produced_offset().expect("acknowledged");
                // An equal offset by another produce is the duplicate rule's.
                let by_produce = highest_by_produce.filter(|e| e.offset > o);
                let by_read = highest_by_read.filter(|e| e.offset >= o);
                if let Some(e) =
                    [by_produce, by_read].into_iter().flatten().max_by_key(|e| (e.offset, std::cmp::Reverse(e.since)))
                {
                    report(
                        OffsetViolationKind::NonMonotonic,
                        vec![e.op, v],
                        format!(
                            "{} was given offset {o} although offset {} was already present before it was called at \
                             {call}: {} returned at {}{}",
                            describe(v),
                            e.offset,
                            describe(e.op),
                            e.since,
                            same_client(&e)
                        ),
                    );
                }
            }
        }
    }
    found
}

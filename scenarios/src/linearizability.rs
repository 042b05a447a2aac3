//! A linearizability checker for partition logs, with unknown operations.
//!
//! # The sequential specification
//!
//! Each partition is a log with dense offsets from 0. `produce(v)` appends
//! `v` and returns its offset (the log's length before the append);
//! `read(o)` returns the value at `o`, or nothing when `o >= len`. A history
//! is **linearizable** when every operation can be given a point in time
//! inside its interval `[call, return]` — unknown operations (no return)
//! anywhere after their call, or no point at all — such that applying the
//! operations in the order of their points to an empty log gives every
//! known operation its recorded output. Partitions share nothing, so each is
//! checked on its own (linearizability is compositional).
//!
//! # From a search to a chain of positions
//!
//! The general algorithm (Wing & Gong, Lowe; Porcupine) searches orders of
//! operations. This model allows something much cheaper and still exact.
//! A linearization is determined by which produce fills each position of
//! the log, and by the points:
//!
//! * an acknowledged produce with offset `o` fills position `o`: its point
//!   `t_o` lies in its interval;
//! * positions are filled in order: `t_0 <= t_1 <= …` (ties in any order);
//! * a read of `o` that returned `v` needs `log[o] = v` and `t_o` before its
//!   point, so `t_o <= return`;
//! * a read of `o` that found nothing needs its point before `t_o` (or `o`
//!   never filled), so `t_o >= call`;
//! * a read whose outcome is unknown constrains nothing (it changes no
//!   state, so it can be left out), and an unknown produce that is never
//!   given a position simply never happened.
//!
//! Real-time order needs nothing more: a total order extending "`a` returned
//! before `b` was called" can always be realised by points in closed
//! intervals (take each point as late as the order forces, `max(call, previous
//! point)`, which is at most the return since no later-ordered op returned
//! before it was called), and points give such an order. Reads never
//! constrain each other, so the precedences are acyclic whatever the ties.
//!
//! The number of positions is `N = 1 + ` the largest offset that an
//! acknowledged produce was given or that a read found a value at; more
//! positions only add constraints. Positions no acknowledged produce was
//! given are **free**: each needs a distinct unknown produce, whose only
//! constraint is `t_p >= its call` — with the payload the reads found there,
//! if any did. For a fixed choice of fillers the points are found greedily
//! (`t_p = max(t_{p-1}, lower bounds of p)`, fail when above an upper
//! bound), in one pass. Choosing fillers: among unknown produces that are
//! interchangeable for the positions they may fill, giving the earliest
//! called to the lowest position is never worse (an exchange argument: the
//! `k`-th such position needs `t >= ` the `k`-th smallest call however they
//! are dealt), so
//!
//! * with **unique payloads** there is no choice at all — a free position
//!   read as `v` takes the one produce of `v`; the others take the unknown
//!   produces of never-read payloads, earliest first — and a partition is
//!   checked in `O(n log n)`;
//! * with **repeated payloads** an unread free position may take a produce
//!   of a payload that reads need elsewhere, if that payload has produces to
//!   spare. Those choices are searched depth-first, earliest call first,
//!   memoising (position, produces used per such payload) with the earliest
//!   point reached, which dominates any later one. Two bounds that hold for
//!   every assignment prune it: before searching, the `k`-th free position
//!   needs a point no earlier than the `k`-th earliest call of all unknown
//!   produces (and the `j`-th position read as `v` the `j`-th earliest of
//!   `v`'s), which settles most violations at once; while searching, a path
//!   dies as soon as its point passes the earliest upper bound ahead of it
//!   (points only grow). A step budget ([`CheckConfig::max_search_steps`])
//!   turns a search that would still run too long into
//!   [`Linearizability::Inconclusive`] instead of hanging.
//!
//! Measured (release, one partition, `history_checker_speed` in
//! `scenarios/tests/scenarios.rs`, both checks): ~0.5 µs per operation —
//! about 2 ms for 3,000 operations by 8 clients plus their read-back
//! (4,400 in all), with or without repeated payloads.
//!
//! The checker is therefore sound and complete for this model; the property
//! tests compare it with an exhaustive search over every order and subset of
//! operations.
//!
//! # Explanations
//!
//! A violation names the smallest set of operations that proves it: two
//! produces given one offset; a read of a value no produce can have written
//! there; or one operation bounding a position from below (a produce's or an
//! unknown filler's call, a read that found nothing) and one bounding the
//! same or a later position from above (a produce's or a value read's
//! return), the lower bound later than the upper — e.g. a read that returned
//! a value before its produce was called. The offset checks of
//! [`offsets`] name the common kinds of violation more directly.

pub mod offsets;
#[cfg(test)]
mod reference;
pub mod synthetic;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{Completion, History, HistoryOp, OpKind, Output};

/// Limits of the checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// Positions the search may visit per partition before it gives up
    /// with [`Linearizability::Inconclusive`]. A history with unique
    /// payloads needs one step per position; only repeated payloads branch.
    pub max_search_steps: u64,
}

impl Default for CheckConfig {
    fn default() -> CheckConfig {
        CheckConfig { max_search_steps: 2_000_000 }
    }
}

/// The verdict for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Linearizability {
    /// Some linearization explains every known operation.
    Linearizable,
    /// None does.
    Violation(Violation),
    /// The search hit [`CheckConfig::max_search_steps`].
    Inconclusive(String),
}

impl Linearizability {
    /// Whether the partition is linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Linearizability::Linearizable)
    }
}

impl fmt::Display for Linearizability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Linearizability::Linearizable => write!(f, "linearizable"),
            Linearizability::Violation(v) => write!(f, "NOT LINEARIZABLE: {}", v.explanation),
            Linearizability::Inconclusive(why) => write!(f, "inconclusive: {why}"),
        }
    }
}

/// Why a partition is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The operations that prove it (indices into [`History::ops`]).
    pub ops: Vec<usize>,
    /// What they prove, naming each as [`HistoryOp::describe`] does.
    pub explanation: String,
}

/// Checks one partition's operations (`indices` into `history.ops()`, as
/// [`History::partitions`] gives them).
pub fn check_partition(history: &History, indices: &[usize], config: &CheckConfig) -> Linearizability {
    match Partition::build(history.ops(), indices) {
        Err(violation) => Linearizability::Violation(violation),
        Ok(partition) => partition.search(config),
    }
}

/// Checks every partition of `history`.
pub fn check_linearizability(history: &History, config: &CheckConfig) -> BTreeMap<String, Linearizability> {
    history
        .partitions()
        .into_iter()
        .map(|(name, indices)| (name.to_owned(), check_partition(history, &indices, config)))
        .collect()
}

/// Both checks for one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionReport {
    /// Operations recorded on the partition.
    pub operations: usize,
    /// Of which produces.
    pub produces: usize,
    /// Of which operations with an unknown outcome.
    pub unknown: usize,
    /// The linearizability verdict.
    pub linearizability: Linearizability,
    /// Every offset rule broken ([`offsets`]).
    pub offsets: Vec<offsets::OffsetViolation>,
}

impl PartitionReport {
    /// Linearizable and no offset rule broken.
    pub fn passed(&self) -> bool {
        self.linearizability.is_linearizable() && self.offsets.is_empty()
    }

    /// A violation was found (an inconclusive search with clean offsets is not one).
    pub fn violated(&self) -> bool {
        matches!(self.linearizability, Linearizability::Violation(_)) || !self.offsets.is_empty()
    }
}

/// [`check_history`]'s result: a report per partition, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryReport {
    /// Each partition's report.
    pub partitions: BTreeMap<String, PartitionReport>,
}

impl HistoryReport {
    /// Every partition passed.
    pub fn passed(&self) -> bool {
        self.partitions.values().all(PartitionReport::passed)
    }

    /// Some partition has a violation.
    pub fn violated(&self) -> bool {
        self.partitions.values().any(PartitionReport::violated)
    }

    /// The first violation, as one line for a scenario verdict.
    pub fn first_violation(&self) -> Option<String> {
        self.partitions.iter().find(|(_, r)| r.violated()).map(|(name, r)| {
            match (&r.linearizability, r.offsets.first()) {
                (_, Some(o)) => format!("partition {name}: {o}"),
                (l, None) => format!("partition {name}: {l}"),
            }
        })
    }
}

impl fmt::Display for HistoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, r) in &self.partitions {
            let offsets = if r.offsets.is_empty() {
                "offsets ok".to_owned()
            } else {
                format!("{} offset violation(s)", r.offsets.len())
            };
            writeln!(
                f,
                "{name}: {}; {offsets} ({} operations: {} produces, {} reads, {} unknown)",
                r.linearizability,
                r.operations,
                r.produces,
                r.operations - r.produces,
                r.unknown
            )?;
            for o in &r.offsets {
                writeln!(f, "  {o}")?;
            }
        }
        Ok(())
    }
}

/// Checks every partition of `history` for linearizability and for the
/// offset rules.
pub fn check_history(history: &History, config: &CheckConfig) -> HistoryReport {
    let mut partitions = BTreeMap::new();
    for (name, indices) in history.partitions() {
        let ops = history.ops();
        let report = PartitionReport {
            operations: indices.len(),
            produces: indices.iter().filter(|&&i| matches!(ops[i].kind, OpKind::Produce { .. })).count(),
            unknown: indices.iter().filter(|&&i| ops[i].is_unknown()).count(),
            linearizability: check_partition(history, &indices, config),
            offsets: offsets::check_partition(history, &indices),
        };
        partitions.insert(name.to_owned(), report);
    }
    HistoryReport { partitions }
}

/// A bound on one position's point, and the operation that imposes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bound {
    time: u64,
    position: usize,
    op: usize,
    why: Why,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// An acknowledged produce's call (lower) or return (upper).
    Produce,
    /// A read that found nothing at the position: lower bound, its call.
    NothingRead,
    /// A read that found a value at the position: upper bound, its return.
    ValueRead,
    /// An unknown produce filling a free position that a read found its
    /// payload at: lower bound, its call.
    UnknownForRead,
    /// The `rank`-th (1-based) unknown produce dealt to unread free positions.
    UnknownForGap { rank: usize },
    /// The `rank`-th earliest call of all unknown produces, bounding the
    /// `rank`-th free position whatever the assignment.
    AnyUnknown { rank: usize },
    /// The `rank`-th earliest call of the unknown produces of the value
    /// read at the `rank`-th free position read as it.
    UnknownOfValue { rank: usize },
}

/// What fills a position.
#[derive(Clone, Debug)]
enum Filler {
    /// The acknowledged produce given this offset.
    Known,
    /// An unknown produce of this class (see `Partition::classes`).
    Class(usize),
    /// Any unknown produce (no read found a value here).
    Any,
}

#[derive(Clone, Debug)]
struct Position {
    filler: Filler,
    /// Latest lower bound from the position's own operations.
    lower: Option<Bound>,
    /// Earliest upper bound.
    upper: Option<Bound>,
}

/// Unknown produces that are interchangeable for the positions they may
/// fill, earliest call first. Class 0 holds the payloads no read needs; one
/// class per payload that some free position was read as.
#[derive(Clone, Debug, Default)]
struct Class {
    /// (call, op), sorted.
    produces: Vec<(u64, usize)>,
    /// The free positions that must take one of these.
    demand: usize,
    payload: Option<String>,
}

struct Partition<'h> {
    ops: &'h [HistoryOp],
    positions: Vec<Position>,
    classes: Vec<Class>,
}

fn lower_of(slot: &mut Option<Bound>, b: Bound) {
    if slot.is_none_or(|s| b.time > s.time) {
        *slot = Some(b);
    }
}

fn upper_of(slot: &mut Option<Bound>, b: Bound) {
    if slot.is_none_or(|s| b.time < s.time) {
        *slot = Some(b);
    }
}

fn payload_of(op: &HistoryOp) -> &str {
    match &op.kind {
        OpKind::Produce { payload } => payload,
        OpKind::Read { .. } => unreachable!("not a produce"),
    }
}

impl<'h> Partition<'h> {
    /// Lays out positions and classes, or finds a violation that needs no
    /// search (an offset given twice, a value no produce can have written
    /// there, too few produces for the offsets in use).
    fn build(ops: &'h [HistoryOp], indices: &[usize]) -> Result<Partition<'h>, Violation> {
        let describe = |i: usize| ops[i].describe(i);
        let mut acknowledged: BTreeMap<u64, usize> = BTreeMap::new();
        let mut unknown_produces: Vec<usize> = Vec::new();
        let mut value_reads: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut nothing_reads: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut produce_count = 0usize;
        for &i in indices {
            let op = &ops[i];
            match (&op.kind, &op.completion) {
                (OpKind::Produce { .. }, None) => {
                    produce_count += 1;
                    unknown_produces.push(i);
                }
                (OpKind::Produce { .. }, Some(Completion { output: Output::Offset(o), .. })) => {
                    produce_count += 1;
                    if let Some(&first) = acknowledged.get(o) {
                        return Err(Violation {
                            ops: vec![first, i],
                            explanation: format!(
                                "{} and {} were both given offset {o}, which a log writes once",
                                describe(first),
                                describe(i)
                            ),
                        });
                    }
                    acknowledged.insert(*o, i);
                }
                (OpKind::Read { offset }, Some(Completion { output: Output::Payload(_), .. })) => {
                    value_reads.entry(*offset).or_default().push(i);
                }
                (OpKind::Read { offset }, Some(Completion { output: Output::Nothing, .. })) => {
                    nothing_reads.entry(*offset).or_default().push(i);
                }
                // An unknown read changes nothing and may be left out.
                (OpKind::Read { .. }, None) => {}
                (_, Some(_)) => unreachable!("History validates outputs"),
            }
        }
        let highest_known = acknowledged.keys().next_back().copied();
        let highest_read = value_reads.keys().next_back().copied();
        let Some(highest) = highest_known.max(highest_read) else {
            // No offset is known to be written: the empty log explains every
            // read that found nothing, and unknown produces need not happen.
            return Ok(Partition { ops, positions: Vec::new(), classes: vec![Class::default()] });
        };
        // Each position needs its own produce; checked before anything is
        // sized by `highest` (an absurd offset must not allocate).
        if highest >= produce_count as u64 {
            let witness =
                if highest_known == Some(highest) { acknowledged[&highest] } else { value_reads[&highest][0] };
            return Err(Violation {
                ops: vec![witness],
                explanation: format!(
                    "{} shows offset {highest} written, so offsets 0..={highest} were, each by its own produce, \
                     but the partition has only {produce_count} produce(s)",
                    describe(witness)
                ),
            });
        }
        let len = highest as usize + 1;

        let mut positions: Vec<Position> =
            (0..len).map(|_| Position { filler: Filler::Any, lower: None, upper: None }).collect();
        for (&o, &i) in &acknowledged {
            let p = &mut positions[o as usize];
            p.filler = Filler::Known;
            let done = ops[i].returned().expect("acknowledged");
            p.lower = Some(Bound { time: ops[i].call, position: o as usize, op: i, why: Why::Produce });
            p.upper = Some(Bound { time: done, position: o as usize, op: i, why: Why::Produce });
        }

        // Payloads that free positions were read as: one class each.
        let mut class_of_payload: BTreeMap<&str, usize> = BTreeMap::new();
        let mut classes = vec![Class::default()];
        for (&o, reads) in &value_reads {
            let p = o as usize;
            let read_payload = |r: usize| ops[r].read_result().flatten().expect("value read");
            let first = reads[0];
            let v = read_payload(first);
            if let Some(&other) = reads.iter().find(|&&r| read_payload(r) != v) {
                return Err(Violation {
                    ops: vec![first, other],
                    explanation: format!(
                        "{} and {} read different values at offset {o}, which a log writes once",
                        describe(first),
                        describe(other)
                    ),
                });
            }
            if let Some(&writer) = acknowledged.get(&o) {
                if payload_of(&ops[writer]) != v {
                    return Err(Violation {
                        ops: vec![writer, first],
                        explanation: format!(
                            "{} read {v:?} at offset {o}, but {} was given that offset",
                            describe(first),
                            describe(writer)
                        ),
                    });
                }
            } else {
                let next = classes.len();
                let c = *class_of_payload.entry(v).or_insert(next);
                if c == next {
                    classes.push(Class { payload: Some(v.to_owned()), ..Class::default() });
                }
                classes[c].demand += 1;
                positions[p].filler = Filler::Class(c);
            }
            for &r in reads {
                let done = ops[r].returned().expect("returned read");
                upper_of(&mut positions[p].upper, Bound { time: done, position: p, op: r, why: Why::ValueRead });
            }
        }
        for (&o, reads) in nothing_reads.range(..len as u64) {
            let p = o as usize;
            for &r in reads {
                lower_of(
                    &mut positions[p].lower,
                    Bound { time: ops[r].call, position: p, op: r, why: Why::NothingRead },
                );
            }
        }
        for &u in &unknown_produces {
            let c = class_of_payload.get(payload_of(&ops[u])).copied().unwrap_or(0);
            classes[c].produces.push((ops[u].call, u));
        }
        for class in &mut classes {
            class.produces.sort_unstable();
        }

        // Counting: every read payload needs its produces, every gap one more.
        for class in &classes[1..] {
            if class.produces.len() < class.demand {
                let v = class.payload.as_deref().expect("demanded class");
                let read_at: Vec<usize> = positions
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| matches!(p.filler, Filler::Class(c) if classes[c].payload.as_deref() == Some(v)))
                    .map(|(i, _)| i)
                    .collect();
                let readers: Vec<usize> = read_at.iter().map(|&p| value_reads[&(p as u64)][0]).collect();
                let elsewhere: Vec<usize> =
                    acknowledged.values().copied().filter(|&i| payload_of(&ops[i]) == v).collect();
                let mut named = readers.clone();
                named.extend(class.produces.iter().map(|&(_, i)| i));
                named.extend(&elsewhere);
                let produced = if elsewhere.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; acknowledged elsewhere: {}",
                        elsewhere.iter().map(|&i| describe(i)).collect::<Vec<_>>().join(", ")
                    )
                };
                return Err(Violation {
                    ops: named,
                    explanation: format!(
                        "{v:?} was read at offset(s) {read_at:?} ({}), which no acknowledged produce was given, so \
                         only produces of {v:?} whose outcome is unknown can have written it, and there are {} of them{produced}",
                        readers.iter().map(|&i| describe(i)).collect::<Vec<_>>().join(", "),
                        class.produces.len()
                    ),
                });
            }
        }
        // Every gap has a produce to spare: the positions number at most
        // the produces, and each read payload has as many as it needs.
        let gaps = positions.iter().filter(|p| matches!(p.filler, Filler::Any)).count();
        let spare: usize =
            classes[0].produces.len() + classes[1..].iter().map(|c| c.produces.len() - c.demand).sum::<usize>();
        assert!(gaps <= spare, "{gaps} gaps but {spare} spare unknown produces after the counting checks");
        Ok(Partition { ops, positions, classes })
    }

    /// Deals fillers to free positions and places the points (see the
    /// module header), searching only where repeated payloads leave a choice.
    fn search(&self, config: &CheckConfig) -> Linearizability {
        // Classes of read payloads with produces to spare: the only ones
        // that can fill a gap, hence the only choices. Their use counts
        // (with the position) determine every other class's.
        let spare_classes: Vec<usize> =
            (1..self.classes.len()).filter(|&c| self.classes[c].produces.len() > self.classes[c].demand).collect();
        let forced_at: BTreeMap<usize, Vec<usize>> = spare_classes
            .iter()
            .map(|&c| {
                let at = (0..self.positions.len())
                    .filter(|&p| matches!(self.positions[p].filler, Filler::Class(k) if k == c))
                    .collect();
                (c, at)
            })
            .collect();
        // Positions read as `c`'s payload at or after `p`.
        let demand_from = |c: usize, p: usize| -> u32 {
            let at = &forced_at[&c];
            (at.len() - at.partition_point(|&q| q < p)) as u32
        };

        let branching = !spare_classes.is_empty();
        // The earliest upper bound at or after each position: a path whose
        // point already passed it is dead (points only grow).
        let mut ahead: Vec<Option<Bound>> = vec![None; self.positions.len() + 1];
        for p in (0..self.positions.len()).rev() {
            ahead[p] = ahead[p + 1];
            if let Some(u) = self.positions[p].upper {
                upper_of(&mut ahead[p], u);
            }
        }
        if branching && let Some(violation) = self.relaxed_violation() {
            return Linearizability::Violation(violation);
        }

        let mut steps: u64 = 0;
        let mut first_failure: Option<Violation> = None;
        let mut branched = false;
        // Earliest point reached at (position, uses of each spare class).
        let mut best: BTreeMap<(usize, Vec<u32>), u64> = BTreeMap::new();
        let start = State { position: 0, point: None, used: vec![0; self.classes.len()], gaps_filled: 0 };
        // Each entry: a state and, for a branch taken later, the class
        // chosen for its current position.
        let mut stack: Vec<(State, Option<usize>)> = vec![(start, None)];
        'paths: while let Some((mut state, mut chosen)) = stack.pop() {
            loop {
                let p = state.position;
                if p == self.positions.len() {
                    return Linearizability::Linearizable;
                }
                steps += 1;
                if steps > config.max_search_steps {
                    return Linearizability::Inconclusive(format!(
                        "the search over unknown produces with repeated payloads visited {} positions without \
                         deciding (raise CheckConfig::max_search_steps)",
                        config.max_search_steps
                    ));
                }
                let filler = match self.positions[p].filler {
                    Filler::Known => None,
                    Filler::Class(c) => Some(c),
                    Filler::Any => match chosen.take() {
                        Some(c) => Some(c),
                        None => {
                            let mut options: Vec<(u64, usize)> = Vec::new();
                            if (state.used[0] as usize) < self.classes[0].produces.len() {
                                options.push((self.classes[0].produces[state.used[0] as usize].0, 0));
                            }
                            for &c in &spare_classes {
                                let left = self.classes[c].produces.len() as u32 - state.used[c];
                                if left > demand_from(c, p) {
                                    options.push((self.classes[c].produces[state.used[c] as usize].0, c));
                                }
                            }
                            assert!(!options.is_empty(), "the counting check leaves a filler for every gap");
                            options.sort_unstable();
                            if options.len() > 1 {
                                let key = (p, spare_classes.iter().map(|&c| state.used[c]).collect::<Vec<u32>>());
                                let point = state.point.map_or(0, |b| b.time);
                                if best.get(&key).is_some_and(|&seen| seen <= point) {
                                    continue 'paths;
                                }
                                best.insert(key, point);
                                branched = true;
                                // Tried in order of call: the latest is pushed first.
                                for &(_, c) in options[1..].iter().rev() {
                                    stack.push((state.clone(), Some(c)));
                                }
                            }
                            Some(options[0].1)
                        }
                    },
                };
                if let Err(violation) = self.place(&mut state, filler) {
                    first_failure.get_or_insert(violation);
                    continue 'paths;
                }
                if branching
                    && let (Some(point), Some(upper)) = (state.point, ahead[state.position])
                    && point.time > upper.time
                {
                    first_failure.get_or_insert_with(|| self.explain(point, upper));
                    continue 'paths;
                }
            }
        }
        let mut violation = first_failure.expect("the first path runs until it succeeds or fails");
        if branched {
            violation.explanation = format!(
                "no way of dealing the unknown produces with repeated payloads to the offsets no acknowledged \
                 produce was given works; dealt earliest-called first: {}",
                violation.explanation
            );
        }
        Linearizability::Violation(violation)
    }

    /// Places `state.position`, filled by the next produce of `filler`
    /// (`None`: the acknowledged produce given that offset).
    fn place(&self, state: &mut State, filler: Option<usize>) -> Result<(), Violation> {
        let p = state.position;
        let position = &self.positions[p];
        let raise = |point: &mut Option<Bound>, b: Bound| lower_of(point, b);
        if let Some(c) = filler {
            let (call, op) = self.classes[c].produces[state.used[c] as usize];
            state.used[c] += 1;
            let why = if matches!(position.filler, Filler::Any) {
                state.gaps_filled += 1;
                Why::UnknownForGap { rank: state.gaps_filled }
            } else {
                Why::UnknownForRead
            };
            raise(&mut state.point, Bound { time: call, position: p, op, why });
        }
        if let Some(lower) = position.lower {
            raise(&mut state.point, lower);
        }
        if let (Some(point), Some(upper)) = (state.point, position.upper)
            && point.time > upper.time
        {
            return Err(self.explain(point, upper));
        }
        state.position += 1;
        Ok(())
    }

    /// A violation that no way of dealing unknown produces avoids, found
    /// without searching: the `k`-th offset no acknowledged produce was given
    /// needs a point no earlier than the `k`-th earliest call of all unknown
    /// produces, and the `j`-th read as `v` the `j`-th earliest of `v`'s —
    /// whatever the assignment, since those offsets take distinct produces.
    fn relaxed_violation(&self) -> Option<Violation> {
        let mut all_unknown: Vec<(u64, usize)> = self.classes.iter().flat_map(|c| c.produces.iter().copied()).collect();
        all_unknown.sort_unstable();
        let mut free_seen = 0usize;
        let mut read_as: Vec<usize> = vec![0; self.classes.len()];
        let mut point: Option<Bound> = None;
        for (p, position) in self.positions.iter().enumerate() {
            if let Some(lower) = position.lower {
                lower_of(&mut point, lower);
            }
            if !matches!(position.filler, Filler::Known) {
                free_seen += 1;
                let (call, op) = all_unknown[free_seen - 1];
                lower_of(&mut point, Bound { time: call, position: p, op, why: Why::AnyUnknown { rank: free_seen } });
            }
            if let Filler::Class(c) = position.filler {
                read_as[c] += 1;
                let (call, op) = self.classes[c].produces[read_as[c] - 1];
                lower_of(
                    &mut point,
                    Bound { time: call, position: p, op, why: Why::UnknownOfValue { rank: read_as[c] } },
                );
            }
            if let (Some(lower), Some(upper)) = (point, position.upper)
                && lower.time > upper.time
            {
                return Some(self.explain(lower, upper));
            }
        }
        None
    }

    fn explain(&self, lower: Bound, upper: Bound) -> Violation {
        let ops = self.ops;
        let describe = |i: usize| ops[i].describe(i);
        let q = lower.position;
        let p = upper.position;
        let since = match lower.why {
            Why::Produce => {
                format!(
                    "{} was given offset {q}, so offset {q} was written no earlier than its call at {}",
                    describe(lower.op),
                    lower.time
                )
            }
            Why::NothingRead => format!(
                "{} found nothing at offset {q}, so offset {q} was still unwritten when it was called at {}",
                describe(lower.op),
                lower.time
            ),
            Why::UnknownForRead => format!(
                "no acknowledged produce was given offset {q}, so the value read there was written by a produce \
                 whose outcome is unknown, at the earliest (of those left) by {}, so offset {q} was written no \
                 earlier than its call at {}",
                describe(lower.op),
                lower.time
            ),
            Why::UnknownForGap { rank } => {
                let gaps: Vec<usize> = (0..=q).filter(|&i| matches!(self.positions[i].filler, Filler::Any)).collect();
                format!(
                    "offsets {} were given to no acknowledged produce and nobody read a value there, so {rank} \
                     produce(s) whose outcome is unknown wrote them, and of those (the ones no read needs elsewhere) \
                     the {rank} earliest called include {}, so offset {q} was written no earlier than its call at {}",
                    list_offsets(&gaps),
                    describe(lower.op),
                    lower.time
                )
            }
            Why::AnyUnknown { rank } => {
                let free: Vec<usize> =
                    (0..=q).filter(|&i| !matches!(self.positions[i].filler, Filler::Known)).collect();
                format!(
                    "offsets {} were given to no acknowledged produce, so {rank} distinct produces whose outcome is \
                     unknown wrote them, and the {rank} earliest called of all of those include {} (called at {}), so \
                     offset {q} was written no earlier than {}",
                    list_offsets(&free),
                    describe(lower.op),
                    lower.time,
                    lower.time
                )
            }
            Why::UnknownOfValue { rank } => format!(
                "{rank} offset(s) up to {q} that no acknowledged produce was given were read as the value found at \
                 {q}, so {rank} distinct produces of it whose outcome is unknown wrote them, and the {rank} earliest \
                 called include {} (called at {}), so offset {q} was written no earlier than {}",
                describe(lower.op),
                lower.time,
                lower.time
            ),
            Why::ValueRead => unreachable!("a value read bounds from above"),
        };
        let by = match upper.why {
            Why::Produce => format!(
                "{} was given offset {p}, so offset {p} was written by its return at {}",
                describe(upper.op),
                upper.time
            ),
            Why::ValueRead => {
                format!(
                    "{} found a value at offset {p}, so offset {p} was written by its return at {}",
                    describe(upper.op),
                    upper.time
                )
            }
            _ => unreachable!("only returns bound from above"),
        };
        let order = if q == p { String::new() } else { format!("offset {q} is written before offset {p}, and ") };
        Violation {
            ops: vec![lower.op, upper.op],
            explanation: format!("{since}; {by}; but {order}{} > {}", lower.time, upper.time),
        }
    }
}

/// `[1, 2, 3, 7]` as "1..=3, 7", long lists cut.
fn list_offsets(offsets: &[usize]) -> String {
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < offsets.len() {
        let mut j = i;
        while j + 1 < offsets.len() && offsets[j + 1] == offsets[j] + 1 {
            j += 1;
        }
        runs.push(if i == j { offsets[i].to_string() } else { format!("{}..={}", offsets[i], offsets[j]) });
        i = j + 1;
    }
    if runs.len() > 8 {
        let more = runs.len() - 8;
        runs.truncate(8);
        runs.push(format!("and {more} more runs"));
    }
    runs.join(", ")
}

/// One path of the search: positions before `position` are placed.
#[derive(Clone, Debug)]
struct State {
    position: usize,
    /// The latest point so far (positions are filled in order).
    point: Option<Bound>,
    /// Produces used per class (earliest first).
    used: Vec<u32>,
    /// Gaps dealt a filler so far.
    gaps_filled: usize,
}

//! The definition, executed: an exhaustive search over every order and
//! every subset of unknown operations, for tiny histories. The fast checker
//! is tested against it. The only shortcut: a (set of operations left, log)
//! already known to lead nowhere is not explored again — what can follow
//! depends on nothing else.

use std::collections::BTreeSet;

use crate::history::{HistoryOp, OpKind, Output};

/// Whether some order of `ops` (one partition) is legal for the log and
/// extends real-time order, with each unknown produce placed anywhere after
/// its call or nowhere, and unknown reads left out.
pub(super) fn linearizable(ops: &[HistoryOp]) -> bool {
    let considered: Vec<&HistoryOp> =
        ops.iter().filter(|op| !(op.is_unknown() && matches!(op.kind, OpKind::Read { .. }))).collect();
    assert!(considered.len() <= 20, "the exhaustive search is for tiny histories");
    let all: u32 = (1u32 << considered.len()) - 1;
    let mut log: Vec<&str> = Vec::new();
    extend(&considered, all, &mut log, &mut BTreeSet::new())
}

/// Tries every operation of `remaining` that may go next.
fn extend<'a>(
    ops: &[&'a HistoryOp],
    remaining: u32,
    log: &mut Vec<&'a str>,
    dead: &mut BTreeSet<(u32, Vec<&'a str>)>,
) -> bool {
    if dead.contains(&(remaining, log.clone())) {
        return false;
    }
    let known_left = (0..ops.len()).any(|i| remaining & (1 << i) != 0 && !ops[i].is_unknown());
    if !known_left {
        // Unknown produces still left simply never took effect.
        return true;
    }
    for i in 0..ops.len() {
        if remaining & (1 << i) == 0 {
            continue;
        }
        // `i` may go next only if nothing left had to precede it.
        let preceded =
            (0..ops.len()).any(|j| remaining & (1 << j) != 0 && ops[j].returned().is_some_and(|ret| ret < ops[i].call));
        if preceded {
            continue;
        }
        let rest = remaining & !(1 << i);
        let op = ops[i];
        let ok = match (&op.kind, op.completion.as_ref().map(|c| &c.output)) {
            (OpKind::Produce { payload }, output) => {
                if output.is_some_and(|o| *o != Output::Offset(log.len() as u64)) {
                    false
                } else {
                    log.push(payload);
                    let ok = extend(ops, rest, log, dead);
                    log.pop();
                    ok
                }
            }
            (OpKind::Read { offset }, Some(output)) => {
                let here = log.get(*offset as usize).copied();
                let matches = match output {
                    Output::Payload(v) => here == Some(v.as_str()),
                    Output::Nothing => here.is_none(),
                    Output::Offset(_) => unreachable!("validated"),
                };
                matches && extend(ops, rest, log, dead)
            }
            (OpKind::Read { .. }, None) => unreachable!("unknown reads are left out"),
        };
        if ok {
            return true;
        }
    }
    dead.insert((remaining, log.clone()));
    false
}

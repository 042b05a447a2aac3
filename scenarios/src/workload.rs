//! The built-in scenarios' workloads as recorded lists of operations.
//!
//! A client (or a workload task) of a built-in scenario does not draw what
//! it does while it runs: before the run, each draws its whole list of
//! operations — plain values saying what to do (publish this to that topic,
//! pause so long, read near the end of this partition…) — from a generator
//! derived from the seed and the list's id, and passes it through
//! [`kaelix_sim::shrink::workload_list`]. Under
//! [`kaelix_sim::shrink::with_workload`] the list is recorded and may be
//! cut to a subset of its operations, which is how
//! [`crate::shrink_seed`] shrinks a failing seed's workload and how
//! `sim replay --schedule` replays a shrunk one.
//!
//! What depends on the run's answers — offsets returned, which node
//! answers, retries after an unknown outcome, when the safety phase is
//! over — stays with the client body, which draws it (if at all) from its
//! node's own generator at run time. So a list cut to any subset of its
//! operations is still a valid workload, and the scenarios' checks, which
//! judge the clients' own records, stay correct on it.
//!
//! Time-bounded clients draw their list long enough that its pauses alone
//! fill the safety phase, and stop when the phase ends as before: which
//! operations a run reaches depends on how long the system took to answer.

use kaelix_core::rng::{self, DetRng};

/// List `list` of a scenario's workload: drawn by `draw` from a generator
/// derived from `seed`, `label` (the scenario's) and `list`, before the
/// run, and cut to the kept operations under
/// [`kaelix_sim::shrink::with_workload`]. A list id is drawn at most once
/// per run.
pub(crate) fn recorded<Op>(seed: u64, label: u64, list: u64, draw: impl FnOnce(&mut DetRng) -> Vec<Op>) -> Vec<Op> {
    let mut rng = rng::derive(seed, label ^ list.wrapping_mul(0x2545_f491_4f6c_dd1d));
    kaelix_sim::shrink::workload_list(list, draw(&mut rng))
}

/// Draws operations with `op` until their pauses (as `pause` reads them)
/// add up to `span`: the list a time-bounded client can at most reach.
pub(crate) fn filling<Op>(
    rng: &mut DetRng,
    span: kaelix_core::time::Duration,
    pause: impl Fn(&Op) -> kaelix_core::time::Duration,
    mut op: impl FnMut(&mut DetRng) -> Op,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut total = kaelix_core::time::Duration::ZERO;
    while total < span {
        let next = op(rng);
        total += pause(&next);
        ops.push(next);
    }
    ops
}

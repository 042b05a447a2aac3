//! Histories that a correct log produced, for tests and for measuring the
//! checkers.
//!
//! Clients invoke operations on their own schedules (several at a time
//! overlap); every operation that takes effect is given a point inside its
//! interval, and the outputs are computed by applying those operations to a
//! real sequential log in the order of their points — so every generated
//! history is linearizable by construction. Some operations become unknown:
//! their output and return are dropped, and an unknown produce takes effect
//! at a point anywhere after its call (possibly after everything else) or
//! never. Each partition ends with a read-back of every offset up to the
//! first empty one, called after every other operation returned, as a
//! scenario's final check does.

use kaelix_core::rng::{DetRng, RngExt};

use crate::history::{Completion, History, HistoryOp, OpKind, Output};

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Partitions, named `orders/0`, `orders/1`, ….
    pub partitions: usize,
    /// Clients per partition (each with at most one operation in flight).
    pub clients: u64,
    /// Operations per partition, before the read-back.
    pub ops_per_partition: usize,
    /// Chance in a thousand that an operation's outcome is unknown.
    pub unknown_per_mille: u32,
    /// Chance in a thousand that a produce reuses the payload of its
    /// client's last unknown produce (a retry recorded as a new operation),
    /// so payloads repeat.
    pub retry_per_mille: u32,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape { partitions: 1, clients: 5, ops_per_partition: 1000, unknown_per_mille: 50, retry_per_mille: 0 }
    }
}

/// Typical latency of one operation, in nanoseconds.
const LATENCY: u64 = 200_000;
/// When a client gives up on an operation.
const TIMEOUT: u64 = 5 * LATENCY;

struct Planned {
    op: HistoryOp,
    /// When it takes effect on the log, if it does.
    point: Option<u64>,
    /// The return time if its outcome is known.
    returns: Option<u64>,
}

/// A linearizable history of the given shape, decided by `rng`.
pub fn correct_history(rng: &mut DetRng, shape: &Shape) -> History {
    let mut ops = Vec::new();
    for p in 0..shape.partitions {
        ops.extend(partition_history(rng, shape, &format!("orders/{p}")));
    }
    History::new(ops).expect("generated operations are valid")
}

fn partition_history(rng: &mut DetRng, shape: &Shape, partition: &str) -> Vec<HistoryOp> {
    assert!(shape.clients > 0, "a history needs a client");
    let mut free_at: Vec<u64> = (0..shape.clients).map(|_| rng.random_range(0..LATENCY)).collect();
    let mut last_unknown_payload: Vec<Option<String>> = vec![None; shape.clients as usize];
    let mut produces_called = 0u64;
    let mut planned: Vec<Planned> = Vec::with_capacity(shape.ops_per_partition + 64);
    for seq in 0..shape.ops_per_partition {
        // The client free soonest goes next: several are in flight at once.
        let client = (0..shape.clients).min_by_key(|&c| (free_at[c as usize], c)).expect("clients > 0");
        let slot = client as usize;
        let call = free_at[slot] + rng.random_range(0..LATENCY / 2);
        let unknown = rng.random_range(0..1000) < shape.unknown_per_mille;
        let kind = if rng.random_bool(0.5) {
            produces_called += 1;
            let retry = rng.random_range(0..1000) < shape.retry_per_mille;
            let payload = match (&last_unknown_payload[slot], retry) {
                (Some(previous), true) => previous.clone(),
                _ => format!("c{client}-{seq}"),
            };
            if unknown {
                last_unknown_payload[slot] = Some(payload.clone());
            }
            OpKind::Produce { payload }
        } else {
            // Mostly near the end of the log, where reads race produces.
            let near_end = produces_called.saturating_sub(rng.random_range(0..4));
            let offset = if rng.random_bool(0.8) {
                near_end + rng.random_range(0..3)
            } else {
                rng.random_range(0..near_end + 1)
            };
            OpKind::Read { offset }
        };
        let point_at = call + rng.random_range(0..LATENCY);
        let (point, returns) = if unknown {
            let takes_effect = matches!(kind, OpKind::Produce { .. }) && rng.random_bool(0.5);
            // An unknown produce may take effect long after its client gave up.
            (takes_effect.then(|| call + rng.random_range(0..4 * TIMEOUT)), None)
        } else {
            (Some(point_at), Some(point_at + rng.random_range(0..LATENCY)))
        };
        free_at[slot] = returns.unwrap_or(call + TIMEOUT);
        let op = HistoryOp { client, partition: partition.to_owned(), kind, call, completion: None };
        planned.push(Planned { op, point, returns });
    }

    // Apply in point order to a real log to learn the outputs.
    let mut order: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].point.is_some()).collect();
    order.sort_by_key(|&i| (planned[i].point, i));
    let mut log: Vec<String> = Vec::new();
    for i in order {
        let output = match &planned[i].op.kind {
            OpKind::Produce { payload } => {
                log.push(payload.clone());
                Output::Offset(log.len() as u64 - 1)
            }
            OpKind::Read { offset } => {
                log.get(*offset as usize).map_or(Output::Nothing, |v| Output::Payload(v.clone()))
            }
        };
        if let Some(at) = planned[i].returns {
            planned[i].op.completion = Some(Completion { at, output });
        }
    }

    // The final read-back, after everything (unknown produces included) took effect.
    let mut t = planned.iter().flat_map(|p| [p.point, p.returns]).flatten().max().unwrap_or(0) + LATENCY;
    let mut ops: Vec<HistoryOp> = planned.into_iter().map(|p| p.op).collect();
    for offset in 0..=log.len() as u64 {
        let output = log.get(offset as usize).map_or(Output::Nothing, |v| Output::Payload(v.clone()));
        let call = t;
        t += LATENCY / 4;
        ops.push(HistoryOp {
            client: shape.clients,
            partition: partition.to_owned(),
            kind: OpKind::Read { offset },
            call,
            completion: Some(Completion { at: t, output }),
        });
        t += 1;
    }
    ops
}

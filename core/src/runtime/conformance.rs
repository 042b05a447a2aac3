//! The conformance suite of the runtime contract (feature `testing`; not
//! production API).
//!
//! Each check is an async function generic over the contract's traits that
//! exercises one property the [module docs](super) or a trait's docs state,
//! and returns `Err` naming what broke. Expected failures are reported, never
//! panicked (the panic check panics inside a spawned task on purpose: that is
//! the property under test). The suite is written once and run by both
//! runtimes' tests: `kaelix-runtime-sim` under the simulator (several seeds,
//! no faults) and `kaelix-runtime-real` on threads, sockets and temporary
//! directories. Properties only one runtime has (a simulated clock's drift,
//! crashes, partitions, determinism; the real executor's priorities and
//! metrics) stay in that runtime's own tests.
//!
//! Only properties both runtimes share are checked: a sleep lasts *at least*
//! its duration (how much longer is the executor's business), datagrams that
//! arrive are intact and from their sender (how many arrive is best effort;
//! on the fault-free links of this suite most must).
//!
//! # Running it
//!
//! [`run_node`] runs the single-node checks (clock, spawner, storage) on one
//! runtime; [`run_pair`] the checks that need two nodes (datagrams both
//! ways, client streams and byte streams from [`Pair::client`] to
//! [`Pair::server`], the latter on listeners bound at [`Pair::server_ip`]
//! with port 0);
//! [`run_all`] both, the single-node ones on the server. Each check is
//! bounded by [`CHECK_LIMIT`] of the runtime's own time, so a hang is a
//! failure too. Storage checks use file names starting with `conformance-`
//! and clean up after themselves; they tolerate other files.
//!
//! The harness names checks (function names) it must skip — a check that
//! cannot even run on that runtime — and, through
//! [`Report::verdict`], the ones known to fail there: a known failure that
//! starts passing is reported, so the list cannot go stale.

mod byte_streams;
mod clock;
mod datagrams;
mod spawn;
mod storage;
mod streams;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::NodeId;
use crate::time::Duration;

use super::{Runtime, timeout};

pub use byte_streams::{
    binding_a_bound_port_is_addr_in_use, binding_a_foreign_address_is_not_available,
    byte_connect_to_an_unbound_port_is_refused, byte_stream_carries_every_byte_in_order,
    byte_stream_ends_after_the_peer_closes, dropping_a_byte_listener_refuses_later_connects,
    two_port_zero_listeners_serve_at_once, writes_after_the_peer_closed_fail_or_read_end,
};
pub use clock::{
    many_sleepers_wake_none_early, now_is_monotonic, sleep_lasts_at_least_its_duration,
    sleep_until_a_past_deadline_completes_at_once, timeout_elapses_or_passes_the_value,
};
pub use datagrams::datagrams_arrive_intact_from_their_sender;
pub use spawn::{
    PANIC_MESSAGE, a_panicking_task_yields_panicked, abort_cancels_the_task, many_tasks_all_complete,
    tasks_return_their_values_at_every_priority,
};
pub use storage::{
    append_offsets_are_reserved_at_call, concurrent_appends_never_overlap, invalid_names_are_refused, list_is_sorted,
    open_creates_an_empty_file, reads_past_the_end_are_out_of_bounds, reads_see_completed_writes,
    remove_deletes_the_name, sync_succeeds, truncate_shortens_and_zero_extends,
};
pub use streams::{
    Held, connect_to_a_node_that_does_not_listen_is_refused, listen_again_after_dropping_the_listener,
    listen_twice_is_already_listening, stream_ends_after_the_peer_closes, stream_frames_arrive_in_order_both_ways,
    stream_refuses_a_frame_over_the_limit,
};

/// How long one check may take, on the runtime's own clock.
pub const CHECK_LIMIT: Duration = Duration::from_secs(60);

/// The single-node checks, in the order [`run_node`] runs them.
pub const NODE_CHECKS: &[&str] = &[
    "now_is_monotonic",
    "sleep_lasts_at_least_its_duration",
    "sleep_until_a_past_deadline_completes_at_once",
    "timeout_elapses_or_passes_the_value",
    "many_sleepers_wake_none_early",
    "tasks_return_their_values_at_every_priority",
    "abort_cancels_the_task",
    "a_panicking_task_yields_panicked",
    "many_tasks_all_complete",
    "open_creates_an_empty_file",
    "reads_see_completed_writes",
    "append_offsets_are_reserved_at_call",
    "concurrent_appends_never_overlap",
    "truncate_shortens_and_zero_extends",
    "reads_past_the_end_are_out_of_bounds",
    "list_is_sorted",
    "remove_deletes_the_name",
    "invalid_names_are_refused",
    "sync_succeeds",
];

/// The two-node checks, in the order [`run_pair`] runs them.
pub const PAIR_CHECKS: &[&str] = &[
    "datagrams_arrive_intact_from_their_sender",
    "listen_twice_is_already_listening",
    "stream_frames_arrive_in_order_both_ways",
    "stream_ends_after_the_peer_closes",
    "stream_refuses_a_frame_over_the_limit",
    "connect_to_a_node_that_does_not_listen_is_refused",
    "listen_again_after_dropping_the_listener",
    "byte_stream_carries_every_byte_in_order",
    "byte_stream_ends_after_the_peer_closes",
    "byte_connect_to_an_unbound_port_is_refused",
    "binding_a_bound_port_is_addr_in_use",
    "binding_a_foreign_address_is_not_available",
    "two_port_zero_listeners_serve_at_once",
    "dropping_a_byte_listener_refuses_later_connects",
    "writes_after_the_peer_closed_fail_or_read_end",
];

/// Two nodes of one runtime that can reach each other, for the checks that
/// need a peer.
#[derive(Clone, Debug)]
pub struct Pair<R> {
    /// Listens for client streams; runs the single-node checks in
    /// [`run_all`]. Exchanges datagrams with `client`.
    pub server: R,
    /// Connects to `server`. Exchanges datagrams with `server`.
    pub client: R,
    /// Nodes `client` may address that do not listen for client streams
    /// (a node that exists but never listens, an address nobody is bound
    /// to, an unknown node): connecting to each must be refused.
    pub not_listening: Vec<NodeId>,
    /// The IP at which `client` reaches byte-stream listeners `server` binds
    /// there (the byte-stream checks bind it with port 0): the server's own
    /// address under the simulator, `127.0.0.1` for two real nodes on one
    /// machine.
    pub server_ip: IpAddr,
}

/// How one check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The property held.
    Passed,
    /// The property did not hold: what broke.
    Failed(String),
    /// The harness asked not to run it.
    Skipped,
}

/// What a run of the suite saw, check by check, in run order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Every check run or skipped, with its outcome.
    pub outcomes: Vec<(&'static str, Outcome)>,
}

impl Report {
    /// The outcome of `check`, if it was part of the run.
    pub fn outcome(&self, check: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|(name, _)| *name == check).map(|(_, o)| o)
    }

    /// `Ok` if every check passed or was skipped, except `known_failing`,
    /// each of which must have failed: a known failure that passes (fixed?)
    /// or that names no check of the run is an error too, so the list stays
    /// true.
    pub fn verdict(&self, known_failing: &[&str]) -> Result<(), String> {
        let mut problems = Vec::new();
        for &name in known_failing {
            match self.outcome(name) {
                None => problems.push(format!("known failure {name:?} names no check of this run")),
                Some(Outcome::Passed) => {
                    problems.push(format!("{name} is listed as known to fail but passed: take it off the list"))
                }
                Some(Outcome::Failed(_) | Outcome::Skipped) => {}
            }
        }
        for (name, outcome) in &self.outcomes {
            if let Outcome::Failed(why) = outcome
                && !known_failing.contains(name)
            {
                problems.push(format!("{name}: {why}"));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(format!("{}\n\n{self}", problems.join("\n"))) }
    }

    fn record(&mut self, check: &'static str, result: Result<(), String>) {
        let outcome = match result {
            Ok(()) => Outcome::Passed,
            Err(why) => Outcome::Failed(why),
        };
        self.outcomes.push((check, outcome));
    }

    /// Checks named in `skip` that are not checks at all.
    fn unknown_skips(&mut self, skip: &[&'static str], known: &[&[&str]]) {
        for &name in skip {
            if !known.iter().any(|list| list.contains(&name)) {
                self.outcomes.push((name, Outcome::Failed("the skip list names no such check".to_owned())));
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, outcome) in &self.outcomes {
            match outcome {
                Outcome::Passed => writeln!(f, "ok      {name}")?,
                Outcome::Failed(why) => writeln!(f, "FAILED  {name}: {why}")?,
                Outcome::Skipped => writeln!(f, "skipped {name}")?,
            }
        }
        Ok(())
    }
}

/// Runs one check unless skipped, bounded by [`CHECK_LIMIT`] on `$clock`.
macro_rules! check {
    ($report:expr, $skip:expr, $clock:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let name: &'static str = stringify!($name);
        debug_assert!(NODE_CHECKS.contains(&name) || PAIR_CHECKS.contains(&name), "{name} is not listed");
        if $skip.contains(&name) {
            $report.outcomes.push((name, Outcome::Skipped));
        } else {
            let result = match timeout($clock, CHECK_LIMIT, $name($($arg),*)).await {
                Ok(r) => r,
                Err(_) => Err(format!("did not finish within {CHECK_LIMIT:?}")),
            };
            $report.record(name, result);
        }
    }};
}

/// Runs the single-node checks on `rt`, except those named in `skip`.
pub async fn run_node<R: Runtime>(rt: R, skip: &'static [&'static str]) -> Report {
    let mut report = Report::default();
    node_checks(&mut report, &rt, skip).await;
    report.unknown_skips(skip, &[NODE_CHECKS]);
    report
}

/// Runs the two-node checks on `pair`, except those named in `skip`.
pub async fn run_pair<R: Runtime>(pair: Pair<R>, skip: &'static [&'static str]) -> Report {
    let mut report = Report::default();
    pair_checks(&mut report, &pair, skip).await;
    report.unknown_skips(skip, &[PAIR_CHECKS]);
    report
}

/// Runs every check: the single-node ones on `pair.server`, then the
/// two-node ones, except those named in `skip`.
pub async fn run_all<R: Runtime>(pair: Pair<R>, skip: &'static [&'static str]) -> Report {
    let mut report = Report::default();
    node_checks(&mut report, &pair.server, skip).await;
    pair_checks(&mut report, &pair, skip).await;
    report.unknown_skips(skip, &[NODE_CHECKS, PAIR_CHECKS]);
    report
}

async fn node_checks<R: Runtime>(report: &mut Report, rt: &R, skip: &[&str]) {
    // Clock.
    check!(report, skip, rt, now_is_monotonic(rt));
    check!(report, skip, rt, sleep_lasts_at_least_its_duration(rt));
    check!(report, skip, rt, sleep_until_a_past_deadline_completes_at_once(rt));
    check!(report, skip, rt, timeout_elapses_or_passes_the_value(rt));
    check!(report, skip, rt, many_sleepers_wake_none_early(rt));
    // Spawner.
    check!(report, skip, rt, tasks_return_their_values_at_every_priority(rt));
    check!(report, skip, rt, abort_cancels_the_task(rt));
    check!(report, skip, rt, a_panicking_task_yields_panicked(rt));
    check!(report, skip, rt, many_tasks_all_complete(rt));
    // Storage.
    check!(report, skip, rt, open_creates_an_empty_file(rt));
    check!(report, skip, rt, reads_see_completed_writes(rt));
    check!(report, skip, rt, append_offsets_are_reserved_at_call(rt));
    check!(report, skip, rt, concurrent_appends_never_overlap(rt));
    check!(report, skip, rt, truncate_shortens_and_zero_extends(rt));
    check!(report, skip, rt, reads_past_the_end_are_out_of_bounds(rt));
    check!(report, skip, rt, list_is_sorted(rt));
    check!(report, skip, rt, remove_deletes_the_name(rt));
    check!(report, skip, rt, invalid_names_are_refused(rt));
    check!(report, skip, rt, sync_succeeds(rt));
}

async fn pair_checks<R: Runtime>(report: &mut Report, pair: &Pair<R>, skip: &[&str]) {
    let (server, client) = (&pair.server, &pair.client);
    check!(report, skip, server, datagrams_arrive_intact_from_their_sender(server, client));
    // One listener serves every stream check; each hands it back.
    let mut listener = server.listen().map_err(|e| format!("the server's first listen failed: {e}"));
    check!(report, skip, server, listen_twice_is_already_listening(server, &listener));
    check!(report, skip, server, stream_frames_arrive_in_order_both_ways(server, client, &mut listener));
    check!(report, skip, server, stream_ends_after_the_peer_closes(server, client, &mut listener));
    check!(report, skip, server, stream_refuses_a_frame_over_the_limit(server, client, &mut listener));
    check!(report, skip, server, connect_to_a_node_that_does_not_listen_is_refused(client, &pair.not_listening));
    check!(report, skip, server, listen_again_after_dropping_the_listener(server, client, &mut listener));
    // Byte streams: each check binds listeners of its own.
    check!(report, skip, server, byte_stream_carries_every_byte_in_order(pair));
    check!(report, skip, server, byte_stream_ends_after_the_peer_closes(pair));
    check!(report, skip, server, byte_connect_to_an_unbound_port_is_refused(pair));
    check!(report, skip, server, binding_a_bound_port_is_addr_in_use(pair));
    check!(report, skip, server, binding_a_foreign_address_is_not_available(pair));
    check!(report, skip, server, two_port_zero_listeners_serve_at_once(pair));
    check!(report, skip, server, dropping_a_byte_listener_refuses_later_connects(pair));
    check!(report, skip, server, writes_after_the_peer_closed_fail_or_read_end(pair));
}

// ---------------------------------------------------------------- helpers

/// `Ok` if `cond`, else `Err(what())`.
fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

/// Yields once to the scheduler (wakes itself and returns `Pending`).
fn yield_now() -> impl Future<Output = ()> + Send {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false)
}

/// Bytes `0..len` of a deterministic pattern picked by `seed` (to tell
/// apart payloads and to notice corruption).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|j| ((seed.wrapping_mul(131).wrapping_add(j.wrapping_mul(7))) % 251) as u8).collect()
}

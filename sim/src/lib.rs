//! The Kaelix deterministic simulator.
//!
//! A whole cluster — server nodes and client participants — runs in one
//! thread under virtual time, driven by one 64-bit seed. The seed decides
//! the scheduler's choice among ready tasks, every latency, every packet and
//! disk fault, every clock's skew and drift, and the fault schedule. Same
//! seed + same binary ⇒ same run, checked by folding every event into a
//! trace hash ([`trace`]).
//!
//! Modules and their fault models (each module header documents its model):
//!
//! * [`world`] — execution model: virtual time, the event queue, the seeded
//!   scheduler, nodes as restartable units (crash / restart / wipe / pause);
//!   client streams, and byte streams between socket addresses (node
//!   `NodeId(n)` is `10.x.y.z` from n's low 24 bits: [`node_addr`]);
//! * [`net`] — datagrams: latency, loss, duplication, reordering, symmetric /
//!   asymmetric / one-way partitions, per-link settings;
//! * [`clock`] — per-node skew, drift and wall-clock steps;
//! * [`disk`] — latency, lost and torn unsynced writes on crash, bit rot,
//!   misdirected writes, corrupt reads;
//! * [`faults`] — fault profiles, swarm testing, the safety / liveness
//!   phases and fault schedules;
//! * [`trace`] — the running trace hash and readable trace;
//! * [`picture`] — the run as a space-time diagram in one HTML page, drawn
//!   from the trace;
//! * [`shrink`] — running a scenario under a given fault schedule, and
//!   shrinking a failing one by delta debugging;
//! * [`coverage`] — how often each `buggify!` fault point and `sometimes!`
//!   assertion was reached and fired, per run and over many runs.
//!
//! The runtime contract of `kaelix-core` is implemented on top of this in
//! `kaelix-runtime-sim`; scenarios live in `kaelix-scenarios`.

pub mod clock;
pub mod coverage;
pub mod disk;
pub mod dist;
pub mod faults;
pub mod net;
pub mod picture;
pub mod queue;
pub mod shrink;
pub mod table;
pub mod trace;
pub mod world;

pub use coverage::{Coverage, CoverageTotals};
pub use faults::{Fault, FaultProfile, FaultSchedule, Tolerance};
pub use world::{
    NodeHandle, NodeKind, NodeSpec, NodeStatus, Sim, SimConfig, SimStats, Step, addr_node, node_addr, node_ip,
};

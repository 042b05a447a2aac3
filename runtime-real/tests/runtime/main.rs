//! Integration tests of the real runtime: the runtime contract's conformance
//! suite (clock, spawner, storage, datagrams, client streams; shared with the
//! simulator), then what only the real runtime has — executor (and what a
//! task costs it in heap allocations: `allocations.rs` installs a counting
//! global allocator for this binary), timers, transport — and the broadcast
//! and replicated-partition nodes on real sockets.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real threads and clocks are what is under test

mod allocations;
mod broadcast;
mod broker;
mod conformance;
mod executor;
mod net;
mod partition;
mod replicated;
mod support;

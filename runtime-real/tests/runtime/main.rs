//! Integration tests of the real runtime: executor, timers, storage,
//! network, and the broadcast and replicated-partition nodes on real sockets.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // real threads and clocks are what is under test

mod broadcast;
mod broker;
mod executor;
mod net;
mod partition;
mod replicated;
mod support;

//! The Kaelix runtime contract (`kaelix_core::runtime`) on real threads,
//! sockets and files: a NUMA-pinned priority executor, TCP transports and
//! file storage with real `fsync` behind `sync`.
//!
//! This crate is the one place (with `kaelix`, the cli) allowed to touch
//! the operating system; each such use is allowed explicitly at its site
//! against the workspace's determinism lints. It is built by the issue
//! "Real runtime: NUMA-pinned priority executor, real network and storage".
//!
//! Layers, bottom up: [`topology`] (what CPUs and NUMA nodes exist),
//! [`executor`] (pinned worker pools, priority queues, parking, metrics,
//! health, shutdown), `driver` (timers and the epoll reactor), [`blocking`]
//! (threads for file IO), [`storage`] (files), [`net`] (TCP framing, client
//! streams, the node-to-node transport) and [`RealRuntime`], which bundles
//! them into the contract's `Runtime`.

pub mod blocking;
mod driver;
pub mod executor;
pub mod frame;
pub mod net;
mod rt;
pub mod storage;
mod sync;
pub mod topology;

pub use driver::Sleep;
pub use executor::{Executor, ExecutorConfig, ExecutorHandle, JoinHandle, RuntimeConfig, ShutdownReport};
pub(crate) use rt::wall_clock_now;
pub use rt::{NodeConfig, RealRuntime, StartError};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

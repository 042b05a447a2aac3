//! Atomics and parking for the executor's lock-free parts, swapped for
//! loom's under `--cfg loom` so the models in `tests/loom.rs` explore every
//! interleaving of exactly the code that ships.

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering, fence};

#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicUsize, Ordering, fence};

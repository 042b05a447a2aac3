//! The Kaelix runtime contract (`kaelix_core::runtime`) on real threads,
//! sockets and files: a NUMA-pinned priority executor, TCP transports and
//! file storage with real `fsync` behind `sync`.
//!
//! This crate is the one place (with `kaelix`, the cli) allowed to touch
//! the operating system; each such use is allowed explicitly at its site
//! against the workspace's determinism lints. It is built by the issue
//! "Real runtime: NUMA-pinned priority executor, real network and storage";
//! until then it contains no code.

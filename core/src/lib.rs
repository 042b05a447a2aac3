//! Kaelix core: the runtime contract every other crate is written against
//! (time, rng, math, the sans-IO call order, the driver traits). The message
//! model and the broker live in `kaelix-broker`.
//!
//! # Determinism contract
//!
//! Nothing in this crate observes the operating system. It never reads the
//! OS clock, never spawns a thread, never draws OS randomness, never iterates
//! a randomly seeded hash map, never touches a socket or a file. `clippy.toml`
//! at the workspace root turns each of those into a lint error.
//!
//! * **Time is an input.** Sans-IO state machines take `now: Instant` as an
//!   argument to every `handle_*` call and say when they next want to be
//!   called through `poll_timeout()`. Async drivers get time from
//!   [`runtime::Clock`].
//! * **Randomness is handed in** as a seeded [`rng::DetRng`] owned by the
//!   machine that uses it.
//! * **Effects are outputs.** A state machine never performs IO: it queues an
//!   output (`poll_output()`), including disk writes, and the completion of a
//!   write comes back as an input (`handle_*_complete`). That lets the
//!   simulator delay, tear or lose the write.
//!
//! Under these rules the same code runs on the deterministic simulator
//! (`kaelix-runtime-sim`) and on the real executor (`kaelix-runtime-real`),
//! and one seed reproduces a simulated run bit for bit.
//!
//! See [`sansio`] for the call order every protocol core follows and
//! [`runtime`] for the driver traits. [`planted`] holds the planted bugs the
//! simulation scenarios switch on (only with the `planted-bugs` feature).
//! With the `testing` feature (test support, not production API),
//! `runtime::conformance` is the contract's conformance suite, which both
//! runtimes' tests run.

pub mod codec;
pub mod ids;
pub mod math;
pub mod planted;
pub mod rng;
pub mod runtime;
pub mod sansio;
pub mod time;

pub use ids::NodeId;
pub use rng::DetRng;
pub use time::{Instant, WallTime};

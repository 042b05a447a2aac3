//! Conventions for sans-IO protocol cores.
//!
//! Raft, SWIM, partition replication, the broker's routing state and the
//! wire codecs are plain state machines. They own no sockets, files, timers,
//! threads or clocks; a driver (see [`crate::runtime`]) owns those. This is
//! the shape quinn-proto, foca and etcd-raft use, and it is what lets the
//! simulator explore every interleaving of inputs.
//!
//! # Call order
//!
//! A driver loops:
//!
//! 1. feed every input that arrived, each with the current time:
//!    `handle_message(now, from, msg)`, `handle_client_request(now, …)`,
//!    `handle_write_complete(now, id)`, `handle_timeout(now)`;
//! 2. drain `poll_output()` until it returns `None`, performing each output
//!    (send a message, start a disk write, answer a client);
//! 3. ask `poll_timeout() -> Option<Instant>` for the next deadline and sleep
//!    until it or until the next input, whichever comes first (`None`:
//!    nothing is scheduled, wait for the next input).
//!
//! Rules every core follows:
//!
//! * `now` only moves forward between calls; a core asserts it.
//! * `handle_timeout` may be called early or spuriously; it acts only on
//!   deadlines that have passed.
//! * "Nothing scheduled" is `None` from `poll_timeout`, never a sentinel
//!   instant such as `Instant::MAX`.
//! * A disk write is an output carrying a [`WriteId`]; the core must not
//!   assume the write is durable until `handle_write_complete(id)` comes
//!   back. A crash loses the machine entirely: on restart, a new core is
//!   built from what the disk kept.
//! * Randomness comes from a [`crate::rng::DetRng`] passed to the constructor.

/// Identifies a disk write a core asked for, so its completion can be
/// matched. Unique within one incarnation of a core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub u64);

/// Allocates [`WriteId`]s in order.
#[derive(Debug, Default)]
pub struct WriteIds {
    next: u64,
}

impl WriteIds {
    /// The next unused id.
    pub fn next_id(&mut self) -> WriteId {
        let id = WriteId(self.next);
        self.next += 1;
        id
    }
}

//! Kaelix benchmarks. The criterion benchmarks live in `benches/`; run them
//! with `cargo bench -p kaelix-benches`. Each benchmark that has a natural
//! peer measures it side by side in the same run. This library holds the
//! helpers the benchmarks share.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // benchmarks spin on the OS clock

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A future that is pending once, after asking to be polled again: the
/// executor-agnostic way for a task to give its worker back.
pub fn yield_now() -> impl Future<Output = ()> {
    YieldNow(false)
}

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

/// Keeps this thread busy for `duration` (simulated CPU-bound work).
pub fn spin_for(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

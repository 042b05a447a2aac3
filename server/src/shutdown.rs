//! A one-way "stop now" signal that any number of tasks wait on.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

/// Set once; every waiter wakes. Clones share the signal.
#[derive(Clone, Default)]
pub struct Signal {
    inner: Arc<Mutex<(bool, Vec<Waker>)>>,
}

impl Signal {
    /// A signal not yet raised.
    pub fn new() -> Self {
        Signal::default()
    }

    /// Raises the signal (idempotent).
    pub fn raise(&self) {
        let wakers = {
            let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            s.0 = true;
            std::mem::take(&mut s.1)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Whether the signal was raised.
    pub fn is_raised(&self) -> bool {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Completes once the signal is raised.
    pub async fn raised(&self) {
        poll_fn(|cx| {
            let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if s.0 {
                Poll::Ready(())
            } else {
                if !s.1.iter().any(|w| w.will_wake(cx.waker())) {
                    s.1.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await;
    }
}

/// Runs `work` until it completes or `signal` is raised; `None` if the
/// signal came first (the work future is dropped).
pub async fn unless<F: std::future::Future>(signal: &Signal, work: F) -> Option<F::Output> {
    let work = std::pin::pin!(work);
    let stop = std::pin::pin!(signal.raised());
    match futures_util::future::select(work, stop).await {
        futures_util::future::Either::Left((out, _)) => Some(out),
        futures_util::future::Either::Right(((), _)) => None,
    }
}

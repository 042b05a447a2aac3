//! Push subscriptions of a native connection (PROTOCOL.md §8.3).
//!
//! Each subscription is a pump task that waits for credit, takes messages
//! from its broker stream — at most as many as the credit allows — and
//! appends them to the connection's buffer as one `Deliver`. The credit and
//! the "closed" flag live under one lock with the append, so:
//!
//! * a `Deliver` never carries more messages than the credit that remained
//!   when it was appended, and nothing is delivered at credit 0;
//! * once `Unsubscribed` (or `SubscriptionEnded`) is appended under that
//!   lock, no `Deliver` of the subscription can follow it.
//!
//! A subscription without a queue group reads the partition logs, so a
//! pump waiting for credit loses nothing that stays retained; a queue-group
//! subscription is fed live by the broker, whose buffer applies the topic's
//! backpressure strategy while the pump waits. When the connection's buffer
//! is full the pump waits for the socket to drain (credit bounds what it
//! may queue; the buffer bounds the bytes).

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use kaelix_broker::Subscription;
use kaelix_broker::message::Message;
use kaelix_core::runtime::Runtime;
use kaelix_protocol::{ErrorCode, Push};

use super::credit::Credit;
use super::{Conn, FETCH_FRAME_BUDGET, messages_len};
use crate::shutdown::{Signal, unless};
use crate::trace::FrontEnd;

/// Bytes of messages after which a `Deliver` is sent without waiting for
/// more already-buffered messages (a larger first message goes alone).
const DELIVER_BATCH_BYTES: usize = 1 << 20;

/// A subscription's credit and state, shared by the driver and the pump.
pub(crate) struct SubState {
    inner: Mutex<Inner>,
    /// Raised when the subscription ends: the pump stops waiting.
    stop: Signal,
}

struct Inner {
    credit: Credit,
    closed: bool,
    /// The pump, waiting for credit.
    waker: Option<Waker>,
}

impl SubState {
    /// An open subscription with `credit`.
    pub(crate) fn new(credit: u32) -> SubState {
        let inner = Inner { credit: Credit::new(credit), closed: false, waker: None };
        SubState { inner: Mutex::new(inner), stop: Signal::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds credit (a `Credit` frame).
    pub(crate) fn grant(&self, add: u32) {
        let waker = {
            let mut s = self.lock();
            s.credit.grant(add);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the subscription. `last` runs under the subscription's lock
    /// with whether it was still open (not ended by its pump already): what
    /// it appends is the last frame of the subscription.
    pub(crate) fn end(&self, last: impl FnOnce(bool)) {
        let waker = {
            let mut s = self.lock();
            let was_open = !s.closed;
            s.closed = true;
            last(was_open);
            s.waker.take()
        };
        self.stop.raise();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits until the subscription has credit; the credit then, or `None`
    /// once it ended.
    async fn wait_credit(&self) -> Option<u32> {
        poll_fn(|cx| {
            let mut s = self.lock();
            if s.closed {
                Poll::Ready(None)
            } else if s.credit.available() > 0 {
                Poll::Ready(Some(s.credit.available()))
            } else {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// The credit left (tests and logs).
    #[cfg(test)]
    pub(crate) fn credit(&self) -> u32 {
        self.lock().credit.available()
    }
}

/// The `SubscriptionEnded` push.
pub(crate) fn ended(subscription: u32, code: ErrorCode, message: &str) -> Push {
    Push::SubscriptionEnded { subscription, code, message: message.to_owned() }
}

/// Moves messages of `sub` into `Deliver` pushes while credit remains,
/// until the subscription or the connection ends.
pub(crate) async fn run_pump<R: Runtime>(conn: Arc<Conn<R>>, id: u32, state: Arc<SubState>, mut sub: Subscription<R>) {
    loop {
        let Some(credit) = state.wait_credit().await else { return };
        let first = match unless(&state.stop, sub.next()).await {
            None => return,
            Some(Some(message)) => message,
            Some(None) => {
                // The broker closed the stream.
                let (code, text) = if conn.shared.stopping.is_raised() {
                    (ErrorCode::ShuttingDown, "the server is shutting down")
                } else {
                    (ErrorCode::Internal, "the broker closed the subscription's stream")
                };
                state.end(|was_open| {
                    if was_open {
                        conn.outbound.append_control(|buf| ended(id, code, text).encode(buf));
                    }
                });
                conn.forget_subscription(id, &state);
                return;
            }
        };
        let mut bytes = first.encoded_len();
        let mut batch = vec![first];
        while batch.len() < credit as usize && bytes < DELIVER_BATCH_BYTES {
            match sub.try_next() {
                Some(m) if bytes + m.encoded_len() <= FETCH_FRAME_BUDGET => {
                    bytes += m.encoded_len();
                    batch.push(m);
                }
                Some(m) => {
                    // Does not fit this frame: it opens the next one.
                    if !deliver(&conn, id, &state, batch).await {
                        return;
                    }
                    batch = vec![m];
                    break;
                }
                None => break,
            }
        }
        if !deliver(&conn, id, &state, batch).await {
            return;
        }
    }
}

/// Appends one `Deliver` of `messages` (no more than the credit left),
/// waiting while the connection's buffer is full. `false` once the
/// subscription or the connection ended (the messages are not delivered).
async fn deliver<R: Runtime>(conn: &Conn<R>, id: u32, state: &SubState, messages: Vec<Message>) -> bool {
    let count = messages.len();
    let len = messages_len(&messages);
    // Each traced message's delivery is a span of its trace (open until
    // the push is appended or given up).
    let _traced: Vec<_> = match crate::trace::installed() {
        Some(t) => messages.iter().filter_map(|m| t.begin_delivery(FrontEnd::Native, m)).collect(),
        None => Vec::new(),
    };
    let push = Push::Deliver { subscription: id, messages };
    loop {
        {
            let mut s = state.lock();
            if s.closed {
                return false;
            }
            assert_eq!(s.credit.allows(count), count, "a pump takes no more messages than its credit");
            match conn.outbound.append(len, |buf| push.encode(buf)) {
                Ok(true) => {
                    s.credit.consume(count);
                    return true;
                }
                Ok(false) => return false,
                // The frame alone is over the buffer's limit: send it once
                // everything before it went.
                Err(full) if full.pending == 0 => {
                    conn.outbound.append_control(|buf| push.encode(buf));
                    s.credit.consume(count);
                    return true;
                }
                Err(_) => {}
            }
        }
        if unless(&state.stop, conn.outbound.drained()).await.is_none() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ending_runs_the_last_append_once_and_wakes_nothing_after() {
        let s = SubState::new(2);
        s.grant(3);
        assert_eq!(s.credit(), 5);
        let mut calls = Vec::new();
        s.end(|open| calls.push(open));
        s.end(|open| calls.push(open));
        assert_eq!(calls, [true, false], "only the first end finds it open");
        assert!(s.stop.is_raised());
        assert_eq!(
            futures_util::FutureExt::now_or_never(s.wait_credit()),
            Some(None),
            "a closed subscription waits for nothing"
        );
    }

    #[test]
    fn waiting_for_credit_ends_with_a_grant() {
        let s = SubState::new(0);
        let mut wait = std::pin::pin!(s.wait_credit());
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending(), "no delivery at credit 0");
        s.grant(4);
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(Some(4)));
    }
}

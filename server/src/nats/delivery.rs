//! Delivery to one NATS connection: its broker [`Sink`].
//!
//! Every subscription of a connection is a subscription on the
//! connection's one sink (see `kaelix_broker::sink`): the broker hands
//! each routed message to [`ConnSink::deliver`] under its lock, and the
//! sink encodes it as `MSG` / `HMSG` straight into the connection's
//! [`Outbound`] buffer. A subscription is therefore only its record in the
//! broker (pattern, queue group, tag, deliveries, limit) and its entry in
//! the routing index — no task, no buffer, nothing in the session.
//!
//! **Sids as tags.** The broker names a sink's subscriptions by a `u64`
//! tag. Clients almost always use decimal sids (`1`, `2`, ...): such a sid
//! *is* its tag (written back in decimal on delivery), so it is stored
//! nowhere else. Any other sid gets a tag with [`ODD_SID`] set and is kept
//! in the sink's small table.
//!
//! **Slow consumers.** An append refused because the connection's unsent
//! bytes would pass `max_pending` is a slow consumer: counted at once,
//! and with `disconnect` the connection gets `-ERR 'Slow Consumer'` and
//! is stopped. The log line and the advisory need the broker (which is
//! locked during a delivery), so they are queued as an [`Event`] for the
//! connection's driver, once per episode (a run of refusals). Publishers
//! and other connections never wait for this one.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
use kaelix_broker::message::Message;
use kaelix_broker::topic::Pattern;
use kaelix_broker::{Delivery, Sink};
use kaelix_core::runtime::Runtime;
use kaelix_nats::{write_err, write_hmsg, write_msg};

use super::{ClientId, broker_headers_to_nats};
use crate::Shared;
use crate::auth::Rules;
use crate::config::SlowConsumerPolicy;
use crate::outbound::Outbound;
use crate::shutdown::Signal;
use crate::trace::FrontEnd;

/// Set in the tag of a sid that is not a plain decimal number.
pub const ODD_SID: u64 = 1 << 63;

/// Longest decimal sid that is its own tag (19 digits may pass 2^63).
const MAX_NUMERIC_SID_DIGITS: usize = 18;

/// The tag of a decimal sid without leading zeros (`None`: an odd sid).
pub fn numeric_tag(sid: &[u8]) -> Option<u64> {
    if sid.is_empty() || sid.len() > MAX_NUMERIC_SID_DIGITS || (sid[0] == b'0' && sid.len() > 1) {
        return None;
    }
    sid.iter().try_fold(0u64, |n, &b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

/// `n` in decimal, into `buf`; returns the digits.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Something the connection's driver must do outside the broker's lock.
#[derive(Debug)]
pub enum Event {
    /// A slow-consumer episode began: log it and publish the advisory.
    Slow {
        /// The subscription's pattern.
        subscription: Pattern,
        /// The message's subject.
        subject: String,
        /// Unsent bytes when the append was refused.
        pending: usize,
        /// The policy applied.
        policy: SlowConsumerPolicy,
    },
    /// The subscription with this tag reached its delivery limit.
    Ended(u64),
}

struct State {
    /// Tag → sid, for sids that are not their own tag.
    odd_sids: BTreeMap<u64, Bytes>,
    events: Vec<Event>,
    driver: Option<Waker>,
}

/// One connection's delivery path (see the module docs).
pub struct ConnSink<R: Runtime> {
    shared: Arc<Shared<R>>,
    outbound: Outbound,
    /// Raised to close the connection (slow consumer, `disconnect`).
    stop: Signal,
    /// The client negotiated headers: `HMSG` for messages with headers.
    headers: bool,
    /// Messages published by this connection are skipped (`echo: false`).
    skip_origin: Option<u64>,
    /// The user's subscribe rules: denied subjects are not delivered.
    filter: Rules,
    /// In a slow-consumer episode (the last append was refused).
    dropping: AtomicBool,
    state: Mutex<State>,
}

impl<R: Runtime> ConnSink<R> {
    /// A sink for the connection `client` with its CONNECT options.
    pub(super) fn new(
        shared: Arc<Shared<R>>,
        client: &ClientId,
        outbound: Outbound,
        stop: Signal,
        headers: bool,
        echo: bool,
        filter: Rules,
    ) -> Self {
        ConnSink {
            shared,
            skip_origin: (!echo).then_some(client.id),
            outbound,
            stop,
            headers,
            filter,
            dropping: AtomicBool::new(false),
            state: Mutex::new(State { odd_sids: BTreeMap::new(), events: Vec::new(), driver: None }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers an odd sid under `tag` (see the module docs).
    pub fn register_odd_sid(&self, tag: u64, sid: Bytes) {
        debug_assert!(tag & ODD_SID != 0);
        self.lock().odd_sids.insert(tag, sid);
    }

    /// Forgets the odd sid of `tag` (its subscription ended).
    pub fn forget_odd_sid(&self, tag: u64) {
        if tag & ODD_SID != 0 {
            self.lock().odd_sids.remove(&tag);
        }
    }

    /// The sid of `tag`.
    pub fn sid(&self, tag: u64) -> Option<Bytes> {
        if tag & ODD_SID == 0 {
            let mut buf = [0; 20];
            Some(Bytes::copy_from_slice(decimal(tag, &mut buf)))
        } else {
            self.lock().odd_sids.get(&tag).cloned()
        }
    }

    /// What the driver must do now (taken).
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut self.lock().events)
    }

    /// Completes once there is an event to take.
    pub async fn event(&self) {
        poll_fn(|cx| {
            let mut s = self.lock();
            if s.events.is_empty() {
                s.driver = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    fn push_event(&self, event: Event) {
        let waker = {
            let mut s = self.lock();
            s.events.push(event);
            s.driver.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Applies the slow-consumer policy to a refused append.
    fn slow_consumer(&self, pattern: &Pattern, message: &Message, pending: usize) {
        let policy = self.shared.config().limits.slow_consumer;
        let stats = &self.shared.stats;
        // Logged and announced once per episode, not per message. The
        // notice goes in before the stop is raised: the driver, woken by
        // the stop on another worker, handles the notices it finds and
        // leaves, so a notice pushed after the stop could be lost.
        if !self.dropping.swap(true, Ordering::Relaxed) {
            self.push_event(Event::Slow {
                subscription: pattern.clone(),
                subject: message.topic().as_str().to_owned(),
                pending,
                policy,
            });
        }
        match policy {
            SlowConsumerPolicy::Disconnect => {
                stats.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
                self.outbound.append_control(|buf| write_err(buf, "Slow Consumer"));
                self.stop.raise();
            }
            SlowConsumerPolicy::Drop => {
                stats.slow_consumer_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<R: Runtime> Sink for ConnSink<R> {
    fn deliver(&self, tag: u64, pattern: &Pattern, message: &Message) -> Delivery {
        let echo = self.skip_origin.is_some() && message.origin() == self.skip_origin;
        if echo || (!self.filter.is_open() && !self.filter.delivers(message.topic())) {
            return Delivery::Skipped;
        }
        let mut digits = [0; 20];
        let odd;
        let sid: &[u8] = if tag & ODD_SID == 0 {
            decimal(tag, &mut digits)
        } else {
            odd = self.lock().odd_sids.get(&tag).cloned();
            match &odd {
                Some(sid) => sid,
                // Forgotten only after its subscription left the broker.
                None => return Delivery::Skipped,
            }
        };
        // A delivery of a traced message is a span of its trace.
        let _deliver = crate::trace::begin_delivery(FrontEnd::Nats, message);
        let block =
            if self.headers && !message.headers().is_empty() { Some(broker_headers_to_nats(message)) } else { None };
        let subject = message.topic().as_str().as_bytes();
        let reply = message.reply_to().map(|r| r.as_str().as_bytes());
        let len = 48
            + subject.len()
            + sid.len()
            + reply.map_or(0, <[u8]>::len)
            + message.payload().len()
            + block.as_ref().map_or(0, Bytes::len);
        let appended = self.outbound.append(len, |buf: &mut BytesMut| match &block {
            Some(b) => write_hmsg(buf, subject, sid, reply, b, message.payload()),
            None => write_msg(buf, subject, sid, reply, message.payload()),
        });
        match appended {
            Ok(true) => {
                if self.dropping.load(Ordering::Relaxed) {
                    self.dropping.store(false, Ordering::Relaxed);
                }
                Delivery::Delivered
            }
            // Closing: the connection is going away, nothing to account for.
            Ok(false) => Delivery::Refused,
            Err(full) => {
                self.slow_consumer(pattern, message, full.pending);
                Delivery::Refused
            }
        }
    }

    fn has_room(&self) -> bool {
        !self.dropping.load(Ordering::Relaxed) && self.outbound.pending() < self.outbound.max_pending()
    }

    fn ended(&self, tag: u64) {
        self.push_event(Event::Ended(tag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_sids_are_their_own_tags_and_others_are_odd() {
        assert_eq!(numeric_tag(b"0"), Some(0));
        assert_eq!(numeric_tag(b"1234567"), Some(1_234_567));
        assert_eq!(numeric_tag(b"999999999999999999"), Some(999_999_999_999_999_999));
        for odd in [&b""[..], b"01", b"1a", b"-1", b"abc", b"1234567890123456789"] {
            assert_eq!(numeric_tag(odd), None, "{odd:?}");
        }
        for n in [0, 7, 10, 1_000_000, u64::MAX] {
            let mut buf = [0; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}

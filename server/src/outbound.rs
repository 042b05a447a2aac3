//! A connection's outbound bytes: one buffer that every producer of output
//! (the reader answering PINGs, the broker delivering into a NATS
//! connection's sink, a native subscription's pump) appends to under a
//! short lock, and one writer task that drains it onto the stream.
//!
//! Appends never wait: a connection whose unsent bytes would pass the
//! limit is refused the append ([`Full`]) and the caller applies the slow
//! consumer policy. Refusing, not blocking, is what keeps one slow reader
//! from delaying the publishers and the other subscribers that share its
//! messages. The writer takes everything queued in one write, so a burst
//! of small messages costs one system call.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::BytesMut;
use kaelix_core::runtime::{ByteStream, NetError};

/// The append would take the unsent bytes past the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full {
    /// Bytes unsent when the append was refused.
    pub pending: usize,
}

/// The shared outbound buffer of one connection.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Mutex<State>>,
    max_pending: usize,
}

struct State {
    buf: BytesMut,
    /// Bytes taken by the writer whose write has not completed.
    in_flight: usize,
    /// No more appends; the writer closes the stream once the buffer is sent.
    closing: bool,
    /// Set when the writer failed: appends are dropped.
    broken: bool,
    writer: Option<Waker>,
    /// Wakers of tasks waiting for the buffer to drain ([`Outbound::drained`]).
    drain_waiters: Vec<Waker>,
}

impl Outbound {
    /// An empty buffer refusing appends past `max_pending` unsent bytes.
    pub fn new(max_pending: usize) -> Self {
        let state = State {
            buf: BytesMut::with_capacity(4096),
            in_flight: 0,
            closing: false,
            broken: false,
            writer: None,
            drain_waiters: Vec::new(),
        };
        Outbound { inner: Arc::new(Mutex::new(state)), max_pending }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends what `write` puts into the buffer, if the buffer has room for
    /// `len` more bytes (the caller's exact or upper estimate). Returns
    /// `Ok(false)` when the connection is closing or broken (nothing appended).
    pub fn append(&self, len: usize, write: impl FnOnce(&mut BytesMut)) -> Result<bool, Full> {
        let mut s = self.lock();
        if s.closing || s.broken {
            return Ok(false);
        }
        let pending = s.buf.len() + s.in_flight;
        if pending + len > self.max_pending {
            return Err(Full { pending });
        }
        write(&mut s.buf);
        let waker = s.writer.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(true)
    }

    /// Appends even past the limit (control replies and the final error:
    /// small, and the client must see them).
    pub fn append_control(&self, write: impl FnOnce(&mut BytesMut)) {
        let mut s = self.lock();
        if s.closing || s.broken {
            return;
        }
        write(&mut s.buf);
        let waker = s.writer.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The limit on unsent bytes.
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Unsent bytes (buffered and in flight).
    pub fn pending(&self) -> usize {
        let s = self.lock();
        s.buf.len() + s.in_flight
    }

    /// Stops accepting appends; the writer sends what is buffered, then
    /// closes the stream.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closing = true;
        let waker = s.writer.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the writer failed (the peer is gone).
    pub fn is_broken(&self) -> bool {
        self.lock().broken
    }

    /// Waits until everything appended so far has been handed to the
    /// transport (or the stream broke).
    pub async fn drained(&self) {
        poll_fn(|cx| {
            let mut s = self.lock();
            if (s.buf.is_empty() && s.in_flight == 0) || s.broken {
                Poll::Ready(())
            } else {
                s.drain_waiters.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
    }

    /// The writer: sends the buffer as it fills until closed or broken,
    /// adding every byte written to `sent` (the server's traffic counter).
    /// Returns the error that broke the stream, if any.
    pub async fn run_writer<S: ByteStream>(&self, stream: S, sent: &AtomicU64) -> Result<(), NetError> {
        loop {
            let chunk = poll_fn(|cx| {
                let mut s = self.lock();
                if !s.buf.is_empty() {
                    let chunk = s.buf.split().freeze();
                    s.in_flight = chunk.len();
                    Poll::Ready(Some(chunk))
                } else if s.closing {
                    Poll::Ready(None)
                } else {
                    s.writer = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            let Some(chunk) = chunk else {
                stream.close();
                self.wake_drain_waiters();
                return Ok(());
            };
            let len = chunk.len() as u64;
            let result = stream.write(chunk).await;
            if result.is_ok() {
                sent.fetch_add(len, Ordering::Relaxed);
            }
            let mut s = self.lock();
            s.in_flight = 0;
            if let Err(e) = result {
                s.broken = true;
                s.buf.clear();
                drop(s);
                self.wake_drain_waiters();
                stream.close();
                return Err(e);
            }
            let drained = s.buf.is_empty();
            drop(s);
            if drained {
                self.wake_drain_waiters();
            }
        }
    }

    fn wake_drain_waiters(&self) {
        let waiters = std::mem::take(&mut self.lock().drain_waiters);
        waiters.into_iter().for_each(Waker::wake);
    }
}

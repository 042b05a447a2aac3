//! The timer and IO driver: one thread per executor blocked in `epoll`
//! (through mio) with a timeout equal to the earliest timer.
//!
//! Why one driver thread rather than timers and polling on the workers: a
//! worker that blocks in `epoll` cannot run tasks, and one that polls
//! `epoll` between tasks adds a syscall to every scheduling decision; a
//! dedicated thread keeps the workers' loop free of syscalls except
//! park/unpark, and wakes tasks through the same queues as any other wake.
//! Timers live in one ordered map (not a thread per timer); registering an
//! earlier deadline than the current earliest interrupts `epoll` through a
//! mio waker. Timer resolution is epoll's: one millisecond.
//!
//! IO readiness is edge-triggered. A socket future tries its operation
//! first; on `WouldBlock` it checks the readiness flag the driver sets:
//! set means an edge arrived since the attempt (clear it, retry), clear
//! means park the waker — so an edge is never missed between the attempt
//! and the registration.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // the OS clock and epoll are this module's job

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Instant as OsInstant;

use kaelix_core::Instant;
use mio::{Events, Interest, Poll as MioPoll, Registry, Token};
use rustix::time::{ClockId, Timespec, clock_gettime};

const WAKER_TOKEN: Token = Token(usize::MAX);

/// The driver shared by an executor's workers and IO objects.
pub(crate) struct Driver {
    epoch: OsInstant,
    /// `epoch` on the kernel's monotonic clock, which the coarse clock
    /// shares (see [`Driver::now_coarse`]).
    epoch_monotonic: Timespec,
    registry: Registry,
    interrupt: mio::Waker,
    state: Mutex<DriverState>,
    stop: AtomicBool,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct DriverState {
    /// Pending timers by (deadline nanos, sequence).
    timers: BTreeMap<(u64, u64), Waker>,
    next_timer: u64,
    ios: BTreeMap<usize, Arc<IoSlot>>,
    next_token: usize,
}

/// Readiness and parked wakers of one registered socket.
#[derive(Default)]
pub(crate) struct IoSlot {
    inner: Mutex<IoInner>,
}

#[derive(Default)]
struct IoInner {
    read_ready: bool,
    write_ready: bool,
    /// Every task waiting on a direction (several clones of a stream may
    /// wait to write at once); all are woken on an edge.
    read_wakers: Vec<Waker>,
    write_wakers: Vec<Waker>,
}

/// Which half of a socket an operation uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

impl Driver {
    /// Starts the driver thread.
    pub(crate) fn start(name: &str) -> io::Result<Arc<Driver>> {
        let poll = MioPoll::new()?;
        let registry = poll.registry().try_clone()?;
        let interrupt = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
        let driver = Arc::new(Driver {
            epoch: OsInstant::now(),
            epoch_monotonic: clock_gettime(ClockId::Monotonic),
            registry,
            interrupt,
            state: Mutex::new(DriverState::default()),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let d = driver.clone();
        let handle = thread::Builder::new().name(format!("{name}-driver")).spawn(move || d.run(poll))?;
        *driver.thread.lock().expect("driver thread lock") = Some(handle);
        Ok(driver)
    }

    /// Nanoseconds since the driver started (the executor's clock; never 0
    /// after the first nanosecond, which the metrics rely on).
    pub(crate) fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The executor's clock read from the kernel's coarse monotonic clock:
    /// the same timeline at the resolution of the kernel's tick (1-4 ms),
    /// read without the TSC (a few nanoseconds instead of tens). Saturates
    /// at the epoch (a reading in the first tick may precede it).
    pub(crate) fn now_coarse(&self) -> Instant {
        let (now, epoch) = (clock_gettime(ClockId::MonotonicCoarse), self.epoch_monotonic);
        // i64 nanoseconds cover 292 years of uptime; no wider type needed.
        let nanos = (now.tv_sec - epoch.tv_sec) * 1_000_000_000 + (now.tv_nsec - epoch.tv_nsec);
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(0))
    }

    /// The executor's monotonic clock as a contract [`Instant`].
    pub(crate) fn now(&self) -> Instant {
        Instant::from_nanos(self.now_nanos())
    }

    fn run(&self, mut poll: MioPoll) {
        let mut events = Events::with_capacity(1024);
        let mut due: Vec<Waker> = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            let timeout =
                {
                    let state = self.state.lock().expect("driver lock");
                    state.timers.keys().next().map(|&(deadline, _)| {
                        std::time::Duration::from_nanos(deadline.saturating_sub(self.now_nanos()))
                    })
                };
            if let Err(e) = poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                panic!("epoll failed: {e}");
            }
            for event in events.iter() {
                if event.token() == WAKER_TOKEN {
                    continue;
                }
                let slot = self.state.lock().expect("driver lock").ios.get(&event.token().0).cloned();
                let Some(slot) = slot else { continue };
                let mut inner = slot.inner.lock().expect("io slot lock");
                let closed = event.is_error() || event.is_read_closed() || event.is_write_closed();
                if event.is_readable() || closed {
                    inner.read_ready = true;
                    due.append(&mut inner.read_wakers);
                }
                if event.is_writable() || closed {
                    inner.write_ready = true;
                    due.append(&mut inner.write_wakers);
                }
            }
            {
                let now = self.now_nanos();
                let mut state = self.state.lock().expect("driver lock");
                let later = state.timers.split_off(&(now + 1, 0));
                let expired = std::mem::replace(&mut state.timers, later);
                due.extend(expired.into_values());
            }
            for waker in due.drain(..) {
                waker.wake();
            }
        }
    }

    /// Stops and joins the driver thread (idempotent).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.interrupt.wake();
        if let Some(handle) = self.thread.lock().expect("driver thread lock").take()
            && handle.thread().id() != thread::current().id()
        {
            let _ = handle.join();
        }
        // Wake everything still parked on the driver so no task waits forever.
        let mut state = self.state.lock().expect("driver lock");
        let timers = std::mem::take(&mut state.timers);
        let ios = std::mem::take(&mut state.ios);
        drop(state);
        timers.into_values().for_each(Waker::wake);
        for slot in ios.values() {
            let mut inner = slot.inner.lock().expect("io slot lock");
            inner.read_ready = true;
            inner.write_ready = true;
            let mut wakers = std::mem::take(&mut inner.read_wakers);
            wakers.append(&mut inner.write_wakers);
            drop(inner);
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    /// Registers a socket; the returned registration deregisters on drop.
    pub(crate) fn register<S: mio::event::Source>(
        self: &Arc<Self>,
        source: &mut S,
    ) -> io::Result<(usize, Arc<IoSlot>)> {
        let slot = Arc::new(IoSlot::default());
        let token = {
            let mut state = self.state.lock().expect("driver lock");
            let token = state.next_token;
            state.next_token += 1;
            state.ios.insert(token, slot.clone());
            token
        };
        if let Err(e) = self.registry.register(source, Token(token), Interest::READABLE | Interest::WRITABLE) {
            self.state.lock().expect("driver lock").ios.remove(&token);
            return Err(e);
        }
        Ok((token, slot))
    }

    /// Undoes [`Driver::register`].
    pub(crate) fn deregister<S: mio::event::Source>(&self, token: usize, source: &mut S) {
        let _ = self.registry.deregister(source);
        self.state.lock().expect("driver lock").ios.remove(&token);
    }

    fn add_timer(&self, deadline: u64, waker: Waker) -> (u64, u64) {
        let mut state = self.state.lock().expect("driver lock");
        let key = (deadline, state.next_timer);
        state.next_timer += 1;
        let earliest = state.timers.keys().next().is_none_or(|first| key < *first);
        state.timers.insert(key, waker);
        drop(state);
        if earliest {
            let _ = self.interrupt.wake();
        }
        key
    }

    fn update_timer(&self, key: (u64, u64), waker: &Waker) -> bool {
        let mut state = self.state.lock().expect("driver lock");
        match state.timers.get_mut(&key) {
            Some(w) => {
                if !w.will_wake(waker) {
                    w.clone_from(waker);
                }
                true
            }
            None => false,
        }
    }

    fn cancel_timer(&self, key: (u64, u64)) {
        self.state.lock().expect("driver lock").timers.remove(&key);
    }

    /// A future that completes at executor time `deadline`.
    pub(crate) fn sleep_until(self: &Arc<Self>, deadline: Instant) -> Sleep {
        Sleep { driver: self.clone(), deadline: deadline.as_nanos(), key: None }
    }
}

impl IoSlot {
    /// Runs `op` until it does not return `WouldBlock`, parking the task
    /// between readiness edges (see the module docs).
    pub(crate) fn poll_io<T>(
        &self,
        cx: &mut Context<'_>,
        direction: Direction,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            match op() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut guard = self.inner.lock().expect("io slot lock");
                    let inner = &mut *guard;
                    let (ready, wakers) = match direction {
                        Direction::Read => (&mut inner.read_ready, &mut inner.read_wakers),
                        Direction::Write => (&mut inner.write_ready, &mut inner.write_wakers),
                    };
                    if std::mem::take(ready) {
                        continue; // an edge arrived since the attempt
                    }
                    if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                        wakers.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

/// The future of [`Driver::sleep_until`].
pub struct Sleep {
    driver: Arc<Driver>,
    deadline: u64,
    key: Option<(u64, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.driver.now_nanos() >= self.deadline || self.driver.stop.load(Ordering::Acquire) {
            if let Some(key) = self.key.take() {
                self.driver.cancel_timer(key);
            }
            return Poll::Ready(());
        }
        match self.key {
            Some(key) if self.driver.update_timer(key, cx.waker()) => {}
            _ => {
                // First poll, or the driver fired it just before the
                // deadline by its clock but after by ours: arm (again).
                let key = self.driver.add_timer(self.deadline, cx.waker().clone());
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.driver.cancel_timer(key);
        }
    }
}

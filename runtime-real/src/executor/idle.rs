//! Which workers are parked, and the protocol that never loses a wake-up.
//!
//! A worker with nothing to do **registers** as idle, **re-checks** every
//! queue, and only then parks. Whoever publishes work pushes it first and
//! then **pops** an idle worker to unpark. Both sides put a SeqCst fence
//! between their write and their read (a Dekker pair): either the publisher
//! sees the registration and unparks the worker, or the worker sees the
//! work and takes it. An unpark that arrives before `park` is kept by the
//! thread (the park token), so it is never lost either.
//!
//! A worker may **spin** (look at the queues without parking) before it
//! registers. While any worker spins, a publisher unparks nobody: the
//! spinner will see the work, so the futex wake-up — a syscall on the
//! publisher's path and a parked thread woken only to find the work gone —
//! is saved. The same Dekker pair makes that safe: a spinner that stops
//! decrements the spin count, fences, and then looks at the queues again
//! (as part of registering, or because it found work); a publisher pushes,
//! fences, and reads the count. Either the publisher sees no spinner and
//! unparks as usual, or the stopping spinner sees the work. A spinner that
//! found work must hand any further work on (see
//! `WorkerLoop::hand_off_after_idle`), since publishers that saw it spin
//! woke nobody. Modelled in `tests/loom.rs`.

use crate::sync::{AtomicUsize, Mutex, Ordering, fence};

/// The set of parked (or about to park) workers.
#[derive(Debug, Default)]
pub struct Sleepers {
    idle: Mutex<Vec<usize>>,
    count: AtomicUsize,
    /// Workers spinning for work right now.
    spinning: AtomicUsize,
}

impl Sleepers {
    /// Worker `index` is about to park. It must re-check its queues after
    /// this, then either park or call [`Sleepers::unregister`].
    pub fn register(&self, index: usize) {
        let mut idle = self.idle.lock().expect("sleepers lock");
        debug_assert!(!idle.contains(&index), "worker {index} registered twice");
        idle.push(index);
        self.count.fetch_add(1, Ordering::SeqCst);
        drop(idle);
        fence(Ordering::SeqCst);
    }

    /// Worker `index` found work after registering. Returns false if a
    /// publisher already popped it (an unpark is on its way: harmless).
    pub fn unregister(&self, index: usize) -> bool {
        let mut idle = self.idle.lock().expect("sleepers lock");
        match idle.iter().position(|&i| i == index) {
            Some(pos) => {
                idle.swap_remove(pos);
                self.count.fetch_sub(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Starts a spin unless `allowed` workers already spin; true if this
    /// worker may spin (it must then call [`Sleepers::stop_spinning`]).
    pub fn try_start_spinning(&self, allowed: usize) -> bool {
        if self.spinning.fetch_add(1, Ordering::SeqCst) >= allowed {
            self.spinning.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Ends a spin. The caller must look at the queues after this (take
    /// work, or register and re-check): publishers that saw it spinning
    /// unparked nobody.
    pub fn stop_spinning(&self) {
        let before = self.spinning.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "stop_spinning without a spin");
        fence(Ordering::SeqCst);
    }

    /// Work was just published: the worker to unpark, if any is idle and
    /// none is spinning (a spinner will take the work, or see it when it
    /// stops spinning).
    pub fn pop_one(&self) -> Option<usize> {
        fence(Ordering::SeqCst);
        if self.spinning.load(Ordering::SeqCst) > 0 || self.count.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut idle = self.idle.lock().expect("sleepers lock");
        let index = idle.pop()?;
        self.count.fetch_sub(1, Ordering::SeqCst);
        Some(index)
    }

    /// Every idle worker (shutdown wakes them all).
    pub fn pop_all(&self) -> Vec<usize> {
        let mut idle = self.idle.lock().expect("sleepers lock");
        self.count.fetch_sub(idle.len(), Ordering::SeqCst);
        std::mem::take(&mut *idle)
    }

    /// How many workers are idle.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether no worker is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pop_returns_registered_workers_once() {
        let s = Sleepers::default();
        assert_eq!(s.pop_one(), None);
        s.register(3);
        s.register(5);
        assert_eq!(s.len(), 2);
        assert_eq!(s.pop_one(), Some(5));
        assert!(!s.unregister(5), "already popped");
        assert!(s.unregister(3));
        assert!(s.is_empty());
    }

    #[test]
    fn nobody_is_unparked_while_a_worker_spins() {
        let s = Sleepers::default();
        s.register(1);
        assert!(s.try_start_spinning(1));
        assert!(!s.try_start_spinning(1), "one spinner allowed");
        assert_eq!(s.pop_one(), None, "the spinner takes the work");
        s.stop_spinning();
        assert_eq!(s.pop_one(), Some(1), "no spinner left: the parked worker is woken");
    }
}

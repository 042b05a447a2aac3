//! What a scenario's simulated tasks share with its end-of-run checks.
//!
//! Tasks record what clients saw into an observation record `O`; the first
//! violation they notice mid-run is kept (later ones are consequences) and
//! raises a flag the simulation loop polls, so the run stops at the
//! moment the rule broke; the workload raises `finished` once everything it
//! set out to do is done. The record lives outside the simulated nodes, so
//! it survives their crashes, as a test oracle must.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// An observation record with a slot for the first violation seen mid-run.
pub trait Observations: Default + Send + 'static {
    /// The first violation recorded, if any.
    fn violation(&mut self) -> &mut Option<String>;
}

/// Shared handle to a run's observations (cheap to clone).
pub struct Checker<O> {
    observed: Arc<Mutex<O>>,
    violated: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
}

impl<O> Clone for Checker<O> {
    fn clone(&self) -> Self {
        Checker { observed: self.observed.clone(), violated: self.violated.clone(), finished: self.finished.clone() }
    }
}

impl<O: Observations> Default for Checker<O> {
    fn default() -> Self {
        Checker { observed: Arc::default(), violated: Arc::default(), finished: Arc::default() }
    }
}

impl<O: Observations> Checker<O> {
    /// The observations (a task that panicked while holding them cannot
    /// hide them).
    pub fn lock(&self) -> MutexGuard<'_, O> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a violation (only the first is kept) and stops the run.
    pub fn fail(&self, why: String) {
        let mut o = self.lock();
        let slot = o.violation();
        if slot.is_none() {
            *slot = Some(why);
            self.violated.store(true, Ordering::Relaxed);
        }
    }

    /// The workload is done.
    pub fn finish(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    /// Whether the workload is done.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Whether a violation was recorded.
    pub fn is_violated(&self) -> bool {
        self.violated.load(Ordering::Relaxed)
    }
}

impl<O: Observations> Checker<O> {
    /// Runs `sim` until the workload finishes, a violation is recorded, or
    /// `bound` (simulated, from the origin) passes, then judges: a recorded
    /// violation or a failed end-of-run `check` is a safety violation, not
    /// finishing is a liveness violation, a panic is a panic.
    pub fn run_to_verdict(
        &self,
        sim: &kaelix_sim::Sim,
        bound: kaelix_core::time::Duration,
        check: impl FnOnce(&O) -> Result<(), String>,
    ) -> crate::Verdict {
        use crate::Verdict;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.run_until_done(
                kaelix_core::Instant::ZERO + bound,
                |_| self.is_finished(),
                |_| if self.is_violated() { Err(()) } else { Ok(()) },
            )
        }));
        match outcome {
            Ok(Ok(true)) => match check(&self.lock()) {
                Ok(()) => Verdict::Pass,
                Err(why) => Verdict::SafetyViolation(why),
            },
            Ok(Ok(false)) => Verdict::LivenessViolation(format!("the workload did not finish within {bound:?}")),
            Ok(Err(())) => Verdict::SafetyViolation(self.lock().violation().clone().unwrap_or_default()),
            Err(panic) => Verdict::from_panic(panic),
        }
    }
}

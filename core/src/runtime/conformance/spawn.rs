//! [`Spawner`] and [`TaskHandle`]: values, abort, panics, many tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{ensure, yield_now};
use crate::runtime::{Clock, JoinError, Priority, Spawner, TaskHandle};
use crate::time::Duration;

/// Sets its flag when dropped (a task's captured state going away).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Waits (polling every millisecond, up to 5 s) until `flag` is set.
async fn wait_for<C: Clock>(clock: &C, flag: &AtomicBool) -> bool {
    let until = clock.now() + Duration::from_secs(5);
    while !flag.load(Ordering::Acquire) {
        if clock.now() >= until {
            return false;
        }
        clock.sleep(Duration::from_millis(1)).await;
    }
    true
}

/// A handle yields its task's value, at every priority, also for a task
/// that spawns and awaits a task of its own.
pub async fn tasks_return_their_values_at_every_priority<R: Clock + Spawner>(rt: &R) -> Result<(), String> {
    let handles: Vec<_> = Priority::ALL
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let rt2 = rt.clone();
            let h = rt.spawn(p, "conformance-value", async move {
                rt2.sleep(Duration::from_micros(10 * (4 - i as u64))).await;
                format!("{p:?}-{}", i * 10)
            });
            (p, i, h)
        })
        .collect();
    for (p, i, h) in handles {
        let got = h.await;
        let want = format!("{p:?}-{}", i * 10);
        ensure(got.as_ref() == Ok(&want), || format!("a {p:?} task returned {got:?}, expected Ok({want:?})"))?;
    }
    let rt2 = rt.clone();
    let nested = rt.spawn(Priority::High, "conformance-parent", async move {
        let inner = rt2.spawn(Priority::Background, "conformance-child", async { 40u32 + 2 });
        inner.await.map(|v| v * 2)
    });
    let got = nested.await;
    ensure(got == Ok(Ok(84)), || format!("a task awaiting its child returned {got:?}, expected Ok(Ok(84))"))
}

/// `abort` cancels: the handle yields [`JoinError::Cancelled`], the body
/// never runs to its end and its future is dropped. Aborting a task that
/// already finished changes nothing; aborting twice is harmless.
pub async fn abort_cancels_the_task<R: Clock + Spawner>(rt: &R) -> Result<(), String> {
    // Aborted while it sleeps.
    let (started, finished, dropped) = (flag(), flag(), flag());
    let (rt2, s, f, guard) = (rt.clone(), started.clone(), finished.clone(), SetOnDrop(dropped.clone()));
    let sleeping = rt.spawn(Priority::Normal, "conformance-sleeping", async move {
        let _guard = guard;
        s.store(true, Ordering::Release);
        rt2.sleep(Duration::from_secs(3600)).await;
        f.store(true, Ordering::Release);
        1u32
    });
    ensure(wait_for(rt, &started).await, || "the task to abort never started".to_owned())?;
    sleeping.abort();
    let got = sleeping.await;
    ensure(got == Err(JoinError::Cancelled), || format!("a sleeping task aborted: handle gave {got:?}"))?;
    ensure(wait_for(rt, &dropped).await, || "an aborted task's future was never dropped".to_owned())?;
    ensure(!finished.load(Ordering::Acquire), || "an aborted task ran to its end".to_owned())?;

    // Aborted right after spawn (before or while it first runs: it cannot
    // finish either way).
    let (finished, dropped) = (flag(), flag());
    let (rt2, f, guard) = (rt.clone(), finished.clone(), SetOnDrop(dropped.clone()));
    let fresh = rt.spawn(Priority::Critical, "conformance-fresh", async move {
        let _guard = guard;
        rt2.sleep(Duration::from_secs(3600)).await;
        f.store(true, Ordering::Release);
        2u32
    });
    fresh.abort();
    let got = fresh.await;
    ensure(got == Err(JoinError::Cancelled), || format!("a task aborted at once: handle gave {got:?}"))?;
    ensure(wait_for(rt, &dropped).await, || "a task aborted at once was never dropped".to_owned())?;
    ensure(!finished.load(Ordering::Acquire), || "a task aborted at once ran to its end".to_owned())?;

    // Already finished: abort is a no-op. Its last statement ran; give the
    // runtime ample time to record the result before aborting.
    let done_flag = flag();
    let d = done_flag.clone();
    let done = rt.spawn(Priority::Normal, "conformance-done", async move {
        d.store(true, Ordering::Release);
        3u32
    });
    ensure(wait_for(rt, &done_flag).await, || "a trivial task never ran".to_owned())?;
    rt.sleep(Duration::from_millis(50)).await;
    done.abort();
    let got = done.await;
    ensure(got == Ok(3), || format!("aborting a finished task: handle gave {got:?}, expected Ok(3)"))?;

    // Twice.
    let twice = rt.spawn(Priority::Background, "conformance-twice", std::future::pending::<u32>());
    twice.abort();
    twice.abort();
    let got = twice.await;
    ensure(got == Err(JoinError::Cancelled), || format!("a task aborted twice: handle gave {got:?}"))
}

/// The message every panic of [`a_panicking_task_yields_panicked`] carries.
pub const PANIC_MESSAGE: &str = "conformance: a deliberate panic";

/// A task that panics — on its first poll or after an await — yields
/// [`JoinError::Panicked`] with the panic's message, and the runtime keeps
/// running tasks.
pub async fn a_panicking_task_yields_panicked<R: Clock + Spawner>(rt: &R) -> Result<(), String> {
    let at_once = rt.spawn(Priority::Normal, "conformance-panic", async { panic!("{PANIC_MESSAGE}") });
    let rt2 = rt.clone();
    let later = rt.spawn(Priority::High, "conformance-panic-later", async move {
        rt2.sleep(Duration::from_millis(1)).await;
        panic!("{PANIC_MESSAGE} (after an await)")
    });
    for (what, h) in [("on its first poll", at_once), ("after an await", later)] {
        match h.await {
            Err(JoinError::Panicked(m)) if m.contains(PANIC_MESSAGE) => {}
            other => return Err(format!("a task that panicked {what}: handle gave {other:?}")),
        }
    }
    let after = rt.spawn(Priority::Normal, "conformance-after-panic", async { 5u32 }).await;
    ensure(after == Ok(5), || format!("a task spawned after the panics returned {after:?}"))
}

/// A thousand tasks at every priority — some returning at once, some
/// yielding, some sleeping, some awaiting a child — all complete with their
/// own value.
pub async fn many_tasks_all_complete<R: Clock + Spawner>(rt: &R) -> Result<(), String> {
    const N: u64 = 1_000;
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let rt2 = rt.clone();
            rt.spawn(Priority::ALL[(i % 4) as usize], "conformance-many", async move {
                match i % 4 {
                    0 => i,
                    1 => {
                        yield_now().await;
                        yield_now().await;
                        i
                    }
                    2 => {
                        rt2.sleep(Duration::from_micros(i % 300)).await;
                        i
                    }
                    _ => rt2
                        .spawn(Priority::Normal, "conformance-many-child", async move { i })
                        .await
                        .unwrap_or(u64::MAX),
                }
            })
        })
        .collect();
    for (i, h) in (0..N).zip(handles) {
        let got = h.await;
        ensure(got == Ok(i), || format!("task {i} of {N} returned {got:?}"))?;
    }
    Ok(())
}

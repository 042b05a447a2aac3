//! [`Clock`]: monotonic time, sleeps, [`timeout`].

use futures_util::FutureExt;

use super::{ensure, yield_now};
use crate::runtime::{Clock, Elapsed, Priority, Spawner, timeout};
use crate::time::{Duration, Instant};

/// [`Clock::now`] never goes backwards: not within a task across yields and
/// sleeps, and not between tasks (a read ordered after another by a join
/// is not earlier).
pub async fn now_is_monotonic<R: Clock + Spawner>(rt: &R) -> Result<(), String> {
    let mut last = rt.now();
    for i in 0..300u32 {
        match i % 3 {
            0 => yield_now().await,
            1 => rt.sleep(Duration::from_micros(u64::from(i % 7) * 20)).await,
            _ => {}
        }
        let t = rt.now();
        ensure(t >= last, || format!("now went back from {last} to {t} (read {i})"))?;
        last = t;
    }
    let before = rt.now();
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let rt2 = rt.clone();
            rt.spawn(Priority::ALL[i % 4], "conformance-clock-reader", async move {
                let a = rt2.now();
                yield_now().await;
                (a, rt2.now())
            })
        })
        .collect();
    for (i, h) in readers.into_iter().enumerate() {
        let (a, b) = h.await.map_err(|e| format!("reader {i}: {e}"))?;
        let after = rt.now();
        ensure(before <= a && a <= b && b <= after, || {
            format!("reader {i}: spawned at {before}, read {a} then {b}, joined at {after}: not monotonic")
        })?;
    }
    Ok(())
}

/// A sleep lasts at least its duration, and `sleep_until` does not return
/// before its deadline (measured on the same node's [`Clock::now`]).
pub async fn sleep_lasts_at_least_its_duration<R: Clock>(rt: &R) -> Result<(), String> {
    for micros in [0u64, 1, 50, 1_000, 3_000, 10_000] {
        let d = Duration::from_micros(micros);
        let t0 = rt.now();
        rt.sleep(d).await;
        let t1 = rt.now();
        ensure(t1 >= t0 && t1 - t0 >= d, || format!("sleep({d:?}) returned after {:?}", t1 - t0))?;
    }
    for micros in [1u64, 2_000, 7_000] {
        let deadline = rt.now() + Duration::from_micros(micros);
        rt.sleep_until(deadline).await;
        let t = rt.now();
        ensure(t >= deadline, || format!("sleep_until({deadline}) returned at {t}"))?;
    }
    Ok(())
}

/// A deadline that has passed (or is now) completes on the first poll; one
/// a second away does not.
pub async fn sleep_until_a_past_deadline_completes_at_once<R: Clock>(rt: &R) -> Result<(), String> {
    rt.sleep(Duration::from_millis(2)).await;
    let now = rt.now();
    let past = Instant::from_nanos(now.as_nanos().saturating_sub(1_000_000));
    let cases = [
        ("a deadline 1 ms ago", rt.sleep_until(past).now_or_never().is_some()),
        ("the clock's origin", rt.sleep_until(Instant::ZERO).now_or_never().is_some()),
        ("the current time", rt.sleep_until(now).now_or_never().is_some()),
        ("a zero sleep", rt.sleep(Duration::ZERO).now_or_never().is_some()),
    ];
    for (what, ready) in cases {
        ensure(ready, || format!("sleeping until {what} did not complete on the first poll"))?;
    }
    let future = rt.sleep_until(rt.now() + Duration::from_secs(1)).now_or_never();
    ensure(future.is_none(), || "sleeping 1 s into the future completed on the first poll".to_owned())?;
    // Awaiting (not just polling) a past deadline completes too.
    rt.sleep_until(past).await;
    Ok(())
}

/// [`timeout`] elapses after its duration when the future does not finish,
/// and passes the value through when it does.
pub async fn timeout_elapses_or_passes_the_value<R: Clock>(rt: &R) -> Result<(), String> {
    let d = Duration::from_millis(5);
    let t0 = rt.now();
    let r = timeout(rt, d, std::future::pending::<()>()).await;
    let took = rt.now() - t0;
    ensure(r == Err(Elapsed(d)), || format!("a pending future under a 5 ms timeout gave {r:?}"))?;
    ensure(took >= d, || format!("the 5 ms timeout elapsed after {took:?}"))?;

    let r = timeout(rt, Duration::from_secs(30), std::future::ready(7)).await;
    ensure(r == Ok(7), || format!("a ready future under a timeout gave {r:?}"))?;
    let r = timeout(rt, Duration::from_secs(30), async {
        rt.sleep(Duration::from_millis(1)).await;
        8
    })
    .await;
    ensure(r == Ok(8), || format!("a 1 ms sleep under a 30 s timeout gave {r:?}"))
}

/// Many concurrent sleepers all wake, none before its deadline.
pub async fn many_sleepers_wake_none_early<R: Clock + Spawner>(rt: &R) -> Result<(), String> {
    const N: u64 = 500;
    let base = rt.now();
    let sleepers: Vec<_> = (0..N)
        .map(|i| {
            let rt2 = rt.clone();
            // A permutation of the deadlines, so they are not armed in order.
            let deadline = base + Duration::from_micros(100 + ((i * 37) % 50) * 100);
            rt.spawn(Priority::ALL[(i % 4) as usize], "conformance-sleeper", async move {
                rt2.sleep_until(deadline).await;
                let woke = rt2.now();
                if woke >= deadline { Ok(()) } else { Err(format!("sleeper {i} woke at {woke}, deadline {deadline}")) }
            })
        })
        .collect();
    for (i, h) in sleepers.into_iter().enumerate() {
        h.await.map_err(|e| format!("sleeper {i}: {e}"))??;
    }
    Ok(())
}

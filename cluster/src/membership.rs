//! The membership service (the seed's `MembershipManager`): a sans-IO
//! [`Swim`] core wired to a [`Runtime`]. The core keeps a phi-accrual
//! detector per member and gates its suspicions with it (the `swim`
//! module's *Phi gate*); this service shows that phi ([`Membership::phi`])
//! from copies of the detectors' state taken whenever one changed.
//!
//! [`start`] spawns the driver loop and returns a [`Membership`] handle:
//! the current member list, a stream of [`MembershipEvent`]s per
//! subscriber, each member's phi, and a graceful [`Membership::leave`]. A
//! node's incarnation at boot is its wall clock in milliseconds (or a fixed
//! [`MembershipConfig::boot_incarnation`]), so a restarted node starts
//! above what it had before in practice; SWIM's refutation settles any
//! conflict either way.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::FutureExt;
use kaelix_core::NodeId;
use kaelix_core::runtime::{Priority, Runtime};

use crate::phi::PhiSnapshot;
use crate::swim::{MemberInfo, MembershipEvent, Output, Swim, SwimConfig, SwimStats};

/// How to run the membership service.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// The SWIM tunables.
    pub swim: SwimConfig,
    /// Members to join through (may include this node; it is skipped).
    pub seeds: Vec<NodeId>,
    /// This node's metadata (e.g. its addresses and roles).
    pub metadata: Bytes,
    /// The incarnation to boot with; `None` (the default) takes the wall
    /// clock in milliseconds, so a restart starts above its earlier runs
    /// unless the clock was stepped back. `Some(1)` is memberlist's way:
    /// every restart starts low and must outbid its own tombstone.
    pub boot_incarnation: Option<u64>,
}

impl MembershipConfig {
    /// memberlist's LAN defaults, joining through `seeds`.
    pub fn new(seeds: Vec<NodeId>, metadata: Bytes) -> Self {
        MembershipConfig { swim: SwimConfig::default(), seeds, metadata, boot_incarnation: None }
    }
}

#[derive(Default)]
struct Shared {
    members: Vec<MemberInfo>,
    incarnation: Option<u64>,
    stats: SwimStats,
    local_health: u32,
    subscribers: Vec<mpsc::UnboundedSender<MembershipEvent>>,
    /// The core's detectors as of its last change.
    phi: BTreeMap<NodeId, PhiSnapshot>,
    now: Option<kaelix_core::Instant>,
    leave_requested: bool,
    driver: Option<Waker>,
}

/// A handle on a running membership service (cheap to clone).
#[derive(Clone, Default)]
pub struct Membership {
    shared: Arc<Mutex<Shared>>,
    /// Bumped whenever the driver replaces the member list (or this node's
    /// incarnation changes), so an observer that looks after every step
    /// re-reads only the lists that changed, without taking the lock.
    version: Arc<AtomicU64>,
}

impl Membership {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every member this node knows, itself included, with state,
    /// incarnation and metadata.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.lock().members.clone()
    }

    /// Runs `f` on the member list in place (no copy): for observers that
    /// look at every member often.
    pub fn with_members<T>(&self, f: impl FnOnce(&[MemberInfo]) -> T) -> T {
        f(&self.lock().members)
    }

    /// This node's own incarnation, once the service has taken its first
    /// step (`None` before). Cheaper than finding ourselves in
    /// [`Membership::members`].
    pub fn incarnation(&self) -> Option<u64> {
        self.lock().incarnation
    }

    /// A number that changes whenever [`Membership::members`] or
    /// [`Membership::incarnation`] changes: a cheap test of "anything new?"
    /// for observers that look very often (the simulator's oracle looks
    /// after every step).
    pub fn view_version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Events about other members from now on.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<MembershipEvent> {
        let (tx, rx) = mpsc::unbounded();
        self.lock().subscribers.push(tx);
        rx
    }

    /// The phi-accrual suspicion level of `member` (0 without history), as
    /// the core's detector gives it at the driver's latest step: the phi
    /// that gates this node's suspicions of `member`.
    pub fn phi(&self, member: NodeId) -> f64 {
        let shared = self.lock();
        match (shared.phi.get(&member), shared.now) {
            (Some(d), Some(now)) => d.phi(now),
            _ => 0.0,
        }
    }

    /// The core's counters.
    pub fn stats(&self) -> SwimStats {
        self.lock().stats
    }

    /// This node's Lifeguard local health multiplier.
    pub fn local_health(&self) -> u32 {
        self.lock().local_health
    }

    /// Leaves the cluster gracefully (the driver gossips it, then stops
    /// probing).
    pub fn leave(&self) {
        let waker = {
            let mut shared = self.lock();
            shared.leave_requested = true;
            shared.driver.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Starts the membership service of `rt`'s node.
pub fn start<R: Runtime>(rt: &R, config: MembershipConfig) -> Membership {
    let membership = Membership::default();
    drop(rt.spawn(Priority::High, "membership", run(rt.clone(), config, membership.clone())));
    membership
}

async fn run<R: Runtime>(rt: R, config: MembershipConfig, membership: Membership) {
    let me = rt.node_id();
    let incarnation = config.boot_incarnation.unwrap_or_else(|| rt.wall_clock().0 / 1_000_000);
    let mut swim = Swim::new(me, config.swim.clone(), rt.rng(), rt.now(), incarnation, config.metadata.clone());
    let seeds: Vec<NodeId> = config.seeds.iter().copied().filter(|&s| s != me).collect();
    swim.join(rt.now(), &seeds);
    let mut left = false;
    let mut copied_revision = u64::MAX;
    let mut copied_phi = u64::MAX;
    loop {
        let now = rt.now();
        while let Some(out) = swim.poll_output() {
            match out {
                Output::Send { to, message } => rt.send(to, message),
                Output::Event(event) => {
                    let mut shared = membership.lock();
                    shared.subscribers.retain(|s| s.unbounded_send(event.clone()).is_ok());
                }
                // The core feeds its own detectors (read below).
                Output::ProbeRtt { .. } => {}
            }
        }
        {
            let mut shared = membership.lock();
            let changed = swim.revision() != copied_revision || shared.incarnation != Some(swim.incarnation());
            if swim.revision() != copied_revision {
                copied_revision = swim.revision();
                shared.members = swim.members();
            }
            shared.incarnation = Some(swim.incarnation());
            if changed {
                membership.version.fetch_add(1, Ordering::Release);
            }
            if swim.phi_revision() != copied_phi {
                copied_phi = swim.phi_revision();
                shared.phi = swim.phi_snapshots();
            }
            shared.stats = swim.stats();
            shared.local_health = swim.local_health();
            shared.now = Some(now);
            if shared.leave_requested && !left {
                left = true;
                drop(shared);
                swim.leave(now);
                continue;
            }
        }
        // Nothing scheduled is a sleep that never ends.
        let mut deadline = swim.poll_timeout().unwrap_or(kaelix_core::Instant::MAX);
        // Fault point: the timer fires late (a descheduled thread, a busy
        // event loop); SWIM's timeouts must absorb it.
        if deadline != kaelix_core::Instant::MAX && kaelix_core::buggify!(rt, "SWIM: the timer fires 10 ms late") {
            deadline += kaelix_core::time::Duration::from_millis(10);
        }
        let mut sleep = pin!(rt.sleep_until(deadline));
        let mut recv = pin!(rt.recv());
        enum Event {
            Message(NodeId, Bytes),
            Timeout,
            Leave,
        }
        let event = poll_fn(|cx| {
            if let Poll::Ready((from, bytes)) = recv.poll_unpin(cx) {
                return Poll::Ready(Event::Message(from, bytes));
            }
            if let Poll::Ready(()) = sleep.poll_unpin(cx) {
                return Poll::Ready(Event::Timeout);
            }
            let mut shared = membership.lock();
            if shared.leave_requested && !left {
                return Poll::Ready(Event::Leave);
            }
            shared.driver = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let now = rt.now();
        match event {
            Event::Message(from, bytes) => swim.handle_message(now, from, bytes),
            Event::Timeout => {
                let stats = swim.stats();
                kaelix_core::sometimes!(rt, "a SWIM probe went unanswered", stats.probes_failed > 0);
                kaelix_core::sometimes!(rt, "a member refuted a statement about itself", stats.refutations > 0);
                swim.handle_timeout(now)
            }
            Event::Leave => {}
        }
    }
}

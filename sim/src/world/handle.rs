//! [`NodeHandle`]: one node incarnation's window into the world, the API
//! `kaelix-runtime-sim` implements the runtime contract on. This file holds
//! the handle itself and the node-local services — identity, the node's
//! clock and timers, code-level fault points, seeded generators; tasks,
//! datagrams, disk operations, client streams and byte streams add their calls to it in
//! their own modules.

use std::rc::Rc;
use std::task::{Poll, Waker};

use kaelix_core::rng::{self, DetRng, RngExt};
use kaelix_core::runtime::CoveragePoint;
use kaelix_core::{Instant, NodeId, WallTime};

use crate::trace::digest;

use super::{CURRENT, Event, Shared, Sim, TimerId};

/// A node's window into the simulator, used by `kaelix-runtime-sim` to
/// implement the runtime contract. Every call acts on behalf of one
/// incarnation of one node; calls from an incarnation that has crashed are
/// ignored (its futures are being dropped anyway). The handle holds only
/// ids: it reaches the world through the thread's current simulation, so it
/// is `Send` while the world itself never leaves its thread.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) sim: u64,
    pub(super) node: NodeId,
    pub(super) incarnation: u64,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeHandle({}#{})", self.node, self.incarnation)
    }
}

impl NodeHandle {
    /// The simulation this handle belongs to. Handles are used by the
    /// simulation's own tasks, which run inside [`Sim::step`], or by harness
    /// code inside [`Sim::enter`].
    pub(super) fn shared(&self) -> Rc<Shared> {
        let shared =
            CURRENT.with(|c| c.borrow().clone()).expect("a simulated node handle was used outside its simulation");
        assert_eq!(shared.id, self.sim, "a simulated node handle was used inside another simulation");
        shared
    }

    /// The simulation this handle belongs to if it is the current one, for
    /// cleanups that may run after the run (a handle dropped late).
    pub(super) fn try_shared(&self) -> Option<Rc<Shared>> {
        CURRENT.with(|c| c.borrow().clone()).filter(|shared| shared.id == self.sim)
    }

    /// The node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Which boot of the node this handle belongs to.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The simulator.
    pub fn sim(&self) -> Sim {
        Sim { shared: self.shared() }
    }

    /// The node's label.
    pub fn name(&self) -> String {
        self.shared().world().nodes[&self.node].name.clone()
    }

    /// Whether this incarnation is still running.
    pub fn is_alive(&self) -> bool {
        self.shared().world().alive(self.node, self.incarnation)
    }

    /// The node's monotonic time.
    pub fn now(&self) -> Instant {
        self.shared().world().local_now(self.node)
    }

    /// The node's wall clock.
    pub fn wall_clock(&self) -> WallTime {
        let shared = self.shared();
        let w = shared.world();
        w.nodes[&self.node].clock.wall_now(w.now)
    }

    /// Polls a sleep until the node's monotonic clock reaches
    /// `local_deadline`, under one lock: ready if it has; otherwise keeps
    /// `timer` armed with `waker` (re-arming it if it fired early or a drift
    /// change cancelled it).
    pub fn poll_sleep(&self, local_deadline: Instant, timer: &mut Option<TimerId>, waker: &Waker) -> Poll<()> {
        let shared = self.shared();
        let mut w = shared.world();
        if w.local_now(self.node) >= local_deadline {
            if let Some(t) = timer.take() {
                w.timers.remove(&t);
            }
            return Poll::Ready(());
        }
        if let Some(t) = *timer
            && let Some((_, armed)) = w.timers.get_mut(&t)
        {
            armed.clone_from(waker);
            return Poll::Pending;
        }
        let now = w.now;
        let at = w.nodes[&self.node].clock.true_deadline(local_deadline, now);
        let id = w.timers.insert((self.node, waker.clone()));
        w.events.push(at, Event::Timer(id));
        *timer = Some(id);
        Poll::Pending
    }

    /// Cancels a timer.
    pub fn cancel_timer(&self, id: TimerId) {
        self.shared().world().timers.remove(&id);
    }

    /// Whether a code-level fault point fires (see `kaelix_core::buggify!`).
    /// Each point is enabled in a seed with probability ¼ the first time it
    /// is reached, and then fires on ¼ of its calls; never in the liveness
    /// phase or when the profile turned buggify off. Both decisions come
    /// from generators of their own (per point, derived from the seed and
    /// the point's *name*, not its line, and the world's `buggify_rng`), so
    /// a point that does not fire leaves the run as if it were absent, and
    /// code moving around a point leaves its seeds alone. Every call is
    /// counted in the run's coverage.
    pub fn buggify(&self, point: &'static kaelix_core::runtime::CoveragePoint) -> bool {
        let (site, name) = (point.site, point.name);
        let shared = self.shared();
        let mut w = shared.world();
        if !w.buggify_enabled {
            w.coverage.record(site, false);
            return false;
        }
        let enabled = match w.buggify_sites.get(name) {
            Some(&(at, e)) => {
                assert_eq!(at, site, "two fault points are named {name:?}: a name identifies one point");
                e
            }
            None => {
                let mut site_rng = rng::derive(w.seed, digest(name.as_bytes()));
                let e = site_rng.random_bool(0.25);
                w.buggify_sites.insert(name, (site, e));
                e
            }
        };
        let fire = enabled && w.buggify_rng.random_bool(0.25);
        w.coverage.record(site, fire);
        if fire {
            w.stats.buggify_fired += 1;
            let now = w.now;
            w.trace.record(now, Some(self.node), "buggify", digest(name.as_bytes()), || {
                format!("buggify fired: {name} ({site})")
            });
        }
        fire
    }

    /// Counts one evaluation of a `sometimes!` assertion on this node.
    pub fn sometimes(&self, point: &'static CoveragePoint, condition: bool) {
        self.shared().world().coverage.record(point.site, condition);
    }

    /// A fresh generator for this node, derived from the seed, the node and
    /// how many generators it has asked for: reproducible and independent.
    pub fn rng(&self) -> DetRng {
        let shared = self.shared();
        let mut w = shared.world();
        let seed = w.seed;
        let node = w.nodes.get_mut(&self.node).expect("known node");
        node.rng_streams += 1;
        rng::derive(seed, (self.node.0 << 40) ^ (self.incarnation << 20) ^ node.rng_streams)
    }
}

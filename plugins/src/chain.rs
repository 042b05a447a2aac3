//! Processor chains on topic patterns, in the broker's publish path.
//!
//! A [`Chain`] is a pattern and an ordered list of registered processors.
//! [`Chains`] holds the chains of one broker and is its
//! [`PublishHook`]: a message published to a topic takes the **first**
//! chain (in the order given) whose pattern matches it, and goes through
//! its processors in order. What comes out:
//!
//! * every processor passed or replaced it: the (possibly changed) message
//!   is published to its topic — *processed*;
//! * a processor dropped it — *dropped*, naming the plugin;
//! * a processor routed it — the routed messages are published instead;
//! * a processor rejected it, failed on it, or was not running — it goes to
//!   the dead-letter topic with the plugin's name (header `dlq-plugin`) and
//!   the reason (`dlq-reason`: `rejected: …`, `error: …`, `panicked: …`,
//!   `ran … over its … budget`, `out of fuel`, `may not publish to …`,
//!   `quarantined …`, `not running (stopped)`).
//!
//! # Isolation
//!
//! A processor's call is wrapped in `catch_unwind`: a panic is a failure of
//! that plugin like an error, the broker keeps serving. So is an action
//! outside its [`crate::Permissions`] (refused, not applied) and, when the
//! policy sets a time budget, a call that ran longer than the budget on the
//! broker's clock (its result is discarded). A plugin whose consecutive
//! failures reach [`IsolationPolicy::quarantine_after`] is quarantined:
//! until it is replaced or released, messages reaching it are dead-lettered
//! (never passed around it: a chain's filter must not be skipped).
//!
//! A native plugin is trusted code: a call cannot be interrupted, so a
//! budget overrun is detected when the call returns. A WebAssembly plugin
//! (feature `wasm`) is *stopped* by its fuel running out, which is
//! deterministic (the same message costs the same fuel under the
//! simulator and in production).
//!
//! # Hot reload
//!
//! [`Chains::set`] replaces the chains: a message already in a chain
//! finishes in the chains it started in (each call holds its own snapshot);
//! later ones take the new chains. Replacing a plugin's instance is the
//! registry's ([`crate::PluginRegistry::replace`]). Both happen between two
//! messages of any one publisher, so no message is lost or reordered.

use std::sync::Arc;

use arc_swap::ArcSwap;

use kaelix_broker::intercept::{HookDeadLetter, HookOutcome, PublishHook, smallvec};
use kaelix_broker::message::Message;
use kaelix_broker::topic::{Pattern, Topic};
use kaelix_core::planted::{Planted, PlantedBug};
use kaelix_core::runtime::Clock;
use kaelix_core::time::Duration;

use crate::plugin::Action;
use crate::registry::{PluginSlot, PluginState};

/// How failures are isolated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsolationPolicy {
    /// Consecutive failures after which a plugin is quarantined (≥ 1).
    pub quarantine_after: u32,
    /// A native call running longer than this (on the broker's clock, read
    /// coarsely: `Clock::now_coarse`, a few milliseconds of resolution on
    /// the real runtime) is a failure and its result discarded. `None`: no
    /// budget (no clock read).
    pub time_budget: Option<Duration>,
    /// Planted bugs (scenario variants only; see `kaelix_core::planted`).
    pub planted: Planted,
}

impl Default for IsolationPolicy {
    fn default() -> Self {
        IsolationPolicy { quarantine_after: 5, time_budget: Some(Duration::from_millis(100)), planted: Planted::NONE }
    }
}

/// An ordered list of processors on the topics a pattern matches.
#[derive(Clone, Debug)]
pub struct Chain {
    /// Topics it applies to.
    pub pattern: Pattern,
    /// Its processors, in order.
    pub stages: Vec<Arc<PluginSlot>>,
}

/// Why a chain was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A processor may not read every topic of the chain's pattern.
    #[error("chain {pattern}: plugin {plugin:?} may not read {pattern}")]
    MayNotRead {
        /// The chain's pattern.
        pattern: String,
        /// The plugin.
        plugin: String,
    },
    /// A chain without processors.
    #[error("chain {0}: no processors")]
    Empty(String),
}

/// The chains of one broker: its publish hook (see the module docs).
pub struct Chains<C: Clock> {
    /// Read on every publish without a lock or a reference-count bump
    /// (`ArcSwap::load`); `set` swaps in a new list.
    chains: ArcSwap<Vec<Chain>>,
    policy: IsolationPolicy,
    clock: C,
}

/// What one stage did.
enum Stage {
    Done(Decision),
    Failed(String),
}

/// A processor's [`Action`], made small the moment it returns: an `Action`
/// holds a whole `Message` inline (about 200 bytes) even when it says
/// `Pass`, and the isolation wrapper moves the answer several times per
/// call, so a pass would cost a few hundred bytes of copying. A replacement
/// is boxed instead (one allocation, only when a plugin changes a message).
enum Decision {
    Pass,
    Replace(Box<Message>),
    Drop,
    Route(Vec<Message>),
    DeadLetter(String),
}

impl From<Action> for Decision {
    fn from(action: Action) -> Self {
        match action {
            Action::Pass => Decision::Pass,
            Action::Replace(m) => Decision::Replace(Box::new(m)),
            Action::Drop => Decision::Drop,
            Action::Route(ms) => Decision::Route(ms),
            Action::DeadLetter(reason) => Decision::DeadLetter(reason),
        }
    }
}

impl<C: Clock> Chains<C> {
    /// No chains yet; `clock` times calls against the policy's budget.
    pub fn new(clock: C, policy: IsolationPolicy) -> Self {
        assert!(policy.quarantine_after >= 1, "quarantine after at least one failure");
        Chains { chains: ArcSwap::from_pointee(Vec::new()), policy, clock }
    }

    /// Replaces the chains (hot reload; see the module docs). Refuses a
    /// chain whose processors may not read its pattern, or that is empty.
    pub fn set(&self, chains: Vec<Chain>) -> Result<(), ChainError> {
        for chain in &chains {
            if chain.stages.is_empty() {
                return Err(ChainError::Empty(chain.pattern.as_str().to_owned()));
            }
            for stage in &chain.stages {
                if !stage.permissions().may_read_pattern(&chain.pattern) {
                    return Err(ChainError::MayNotRead {
                        pattern: chain.pattern.as_str().to_owned(),
                        plugin: stage.name().to_owned(),
                    });
                }
            }
        }
        self.chains.store(Arc::new(chains));
        Ok(())
    }

    /// The current chains.
    pub fn current(&self) -> Arc<Vec<Chain>> {
        self.chains.load_full()
    }

    /// Runs `message` through the first chain matching its topic (see the
    /// module docs); a topic no chain matches passes unchanged.
    pub fn run(&self, message: Message) -> HookOutcome {
        // This message's snapshot of the chains (see "Hot reload").
        let chains = self.chains.load();
        let Some(chain) = chains.iter().find(|c| c.pattern.matches(message.topic())) else {
            return HookOutcome { publish: smallvec![message], ..HookOutcome::default() };
        };
        let mut current = message;
        for slot in &chain.stages {
            // A reason is one header line: a plugin's multi-line error
            // text is folded.
            let dead = |message: Message, reason: String| HookOutcome {
                dead_letters: vec![HookDeadLetter {
                    message,
                    plugin: slot.name().to_owned(),
                    reason: reason.replace(['\r', '\n'], " "),
                }],
                ..HookOutcome::default()
            };
            let stage = self.call(slot, &current);
            if self.policy.planted.is_on(PlantedBug::PluginQuarantineBypass)
                && let Stage::Failed(reason) = &stage
                && reason.starts_with("quarantined")
            {
                continue;
            }
            match stage {
                Stage::Done(Decision::Pass) => {}
                Stage::Done(Decision::Replace(m)) => current = *m,
                Stage::Done(Decision::Drop) => {
                    return HookOutcome { dropped_by: Some(slot.name().to_owned()), ..HookOutcome::default() };
                }
                Stage::Done(Decision::Route(messages)) => {
                    let dropped_by = messages.is_empty().then(|| slot.name().to_owned());
                    return HookOutcome { publish: messages.into(), dropped_by, ..HookOutcome::default() };
                }
                Stage::Done(Decision::DeadLetter(reason)) => return dead(current, format!("rejected: {reason}")),
                Stage::Failed(reason) => return dead(current, reason),
            }
        }
        HookOutcome { publish: smallvec![current], ..HookOutcome::default() }
    }

    /// One processor's call, isolated: state and permission checks, panics
    /// caught, the budget applied, counters and quarantine updated.
    fn call(&self, slot: &PluginSlot, message: &Message) -> Stage {
        let mut inner = slot.lock();
        if inner.state != PluginState::Running {
            inner.stats.refused_not_running += 1;
            return Stage::Failed(match inner.state {
                PluginState::Quarantined => {
                    format!("quarantined after {} consecutive failures", inner.stats.consecutive_failures)
                }
                state => format!("not running ({state})"),
            });
        }
        if !inner.permissions.may_read(message.topic()) {
            inner.stats.refused_not_running += 1;
            return Stage::Failed(format!("may not read {}", message.topic()));
        }
        // The coarse clock: two precise readings would cost more than a
        // cheap plugin's call, and a budget is tens of milliseconds.
        let started = self.policy.time_budget.map(|_| self.clock.now_coarse());
        let processor = &mut inner.processor;
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| processor.process(message).map(Decision::from)));
        let mut outcome = match result {
            Ok(Ok(action)) => match forbidden(&inner.permissions, message, &action) {
                None => Ok(action),
                Some(refusal) => Err(refusal),
            },
            Ok(Err(e)) => Err(format!("error: {e}")),
            Err(panic) => Err(format!("panicked: {}", panic_text(&panic))),
        };
        if let (Some(budget), Some(started)) = (self.policy.time_budget, started) {
            let ran = self.clock.now_coarse().saturating_duration_since(started);
            if ran > budget && outcome.is_ok() {
                outcome = Err(format!("ran {ran:?}, over its {budget:?} budget"));
            }
        }
        let stats = &mut inner.stats;
        stats.processed += 1;
        match outcome {
            Ok(action) => {
                stats.consecutive_failures = 0;
                match &action {
                    Decision::Drop => stats.dropped += 1,
                    Decision::DeadLetter(_) => stats.rejected += 1,
                    Decision::Route(_) => stats.routed += 1,
                    Decision::Pass | Decision::Replace(_) => {}
                }
                Stage::Done(action)
            }
            Err(reason) => {
                stats.failures += 1;
                stats.consecutive_failures += 1;
                if stats.consecutive_failures >= self.policy.quarantine_after {
                    inner.state = PluginState::Quarantined;
                }
                Stage::Failed(reason)
            }
        }
    }
}

/// Why `action` on `message` is outside `permissions`, if it is.
fn forbidden(permissions: &crate::Permissions, message: &Message, action: &Decision) -> Option<String> {
    let check = |out: &Message| -> Option<String> {
        if out.topic() != message.topic() && !permissions.may_publish(out.topic()) {
            return Some(format!("may not publish to {}", out.topic()));
        }
        permissions.forbidden_header_change(message, out).map(|h| format!("may not touch header {h:?}"))
    };
    match action {
        Decision::Replace(m) => check(m),
        Decision::Route(ms) => ms.iter().find_map(check),
        Decision::Pass | Decision::Drop | Decision::DeadLetter(_) => None,
    }
}

/// The text of a caught panic (`&str` and `String` payloads; anything else
/// is named as such).
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a non-text panic payload)".to_owned()
    }
}

impl<C: Clock> PublishHook for Chains<C> {
    fn applies_to(&self, topic: &Topic) -> bool {
        self.chains.load().iter().any(|c| c.pattern.matches(topic))
    }

    fn on_publish(&self, message: Message) -> HookOutcome {
        self.run(message)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kaelix_broker::testing::ManualClock;
    use semver::Version;

    use super::*;
    use crate::plugin::{Permissions, Plugin, PluginError, StreamProcessor, rebuild};
    use crate::registry::PluginRegistry;

    /// A processor whose behaviour is a closure (and a clock to burn time on).
    struct Fn<F>(&'static str, F);

    impl<F: FnMut(&Message) -> Result<Action, PluginError> + Send> Plugin for Fn<F> {
        fn name(&self) -> &str {
            self.0
        }
        fn version(&self) -> Version {
            Version::new(1, 0, 0)
        }
    }

    impl<F: FnMut(&Message) -> Result<Action, PluginError> + Send> StreamProcessor for Fn<F> {
        fn process(&mut self, m: &Message) -> Result<Action, PluginError> {
            (self.1)(m)
        }
    }

    fn msg(topic: &str, payload: &str) -> Message {
        Message::builder().topic(topic).payload(payload.to_owned()).build().unwrap()
    }

    fn setup(
        policy: IsolationPolicy,
        plugins: Vec<(Box<dyn StreamProcessor>, Permissions)>,
    ) -> (PluginRegistry, Chains<ManualClock>, ManualClock) {
        let clock = ManualClock::default();
        let mut registry = PluginRegistry::new();
        let mut stages = Vec::new();
        for (p, perms) in plugins {
            stages.push(registry.register(p, perms, BTreeMap::new()).unwrap());
        }
        registry.start().unwrap();
        let chains = Chains::new(clock.clone(), policy);
        chains.set(vec![Chain { pattern: Pattern::new("in.>").unwrap(), stages }]).unwrap();
        (registry, chains, clock)
    }

    fn dead_reason(out: &HookOutcome) -> (String, String) {
        assert!(out.publish.is_empty(), "nothing published");
        let d = &out.dead_letters[0];
        (d.plugin.clone(), d.reason.clone())
    }

    #[test]
    fn stages_run_in_order_and_unmatched_topics_pass() {
        let upper = Fn("upper", |m: &Message| {
            let text = String::from_utf8_lossy(m.payload()).to_uppercase();
            Ok(Action::Replace(rebuild(m).payload(text).build().unwrap()))
        });
        let tag = Fn("tag", |m: &Message| {
            let seen = String::from_utf8_lossy(m.payload()).into_owned();
            Ok(Action::Replace(rebuild(m).header("seen", seen).build().unwrap()))
        });
        let (_r, chains, _) = setup(
            IsolationPolicy::default(),
            vec![(Box::new(upper), Permissions::all()), (Box::new(tag), Permissions::all())],
        );
        let out = chains.run(msg("in.a", "hi"));
        assert_eq!(out.publish.len(), 1);
        assert_eq!(out.publish[0].payload().as_ref(), b"HI");
        assert_eq!(out.publish[0].headers().get("seen").unwrap().as_ref(), b"HI", "tag saw upper's output");
        assert!(!chains.applies_to(&Topic::new("other").unwrap()));
        let out = chains.run(msg("other", "x"));
        assert_eq!(out.publish[0].payload().as_ref(), b"x");
    }

    #[test]
    fn drop_route_and_reject_end_the_chain() {
        let decide = Fn("decide", |m: &Message| {
            Ok(match m.payload().as_ref() {
                b"drop" => Action::Drop,
                b"route" => Action::Route(vec![rebuild(m).topic("out.x").build().unwrap()]),
                b"bad" => Action::DeadLetter("malformed".into()),
                _ => Action::Pass,
            })
        });
        let never = Fn("after", |_: &Message| -> Result<Action, PluginError> { Ok(Action::Drop) });
        let (r, chains, _) = setup(
            IsolationPolicy::default(),
            vec![(Box::new(decide), Permissions::all()), (Box::new(never), Permissions::all())],
        );
        assert_eq!(chains.run(msg("in.a", "drop")).dropped_by.as_deref(), Some("decide"));
        let routed = chains.run(msg("in.a", "route"));
        assert_eq!(routed.publish[0].topic().as_str(), "out.x");
        assert_eq!(dead_reason(&chains.run(msg("in.a", "bad"))), ("decide".into(), "rejected: malformed".into()));
        assert_eq!(chains.run(msg("in.a", "ok")).dropped_by.as_deref(), Some("after"));
        assert_eq!(r.get("after").unwrap().stats().processed, 1, "only the message that passed reached it");
        let s = r.get("decide").unwrap().stats();
        assert_eq!((s.processed, s.dropped, s.routed, s.rejected, s.failures), (4, 1, 1, 1, 0));
    }

    #[test]
    fn errors_and_panics_are_dead_lettered_then_quarantined() {
        let flaky = Fn("flaky", |m: &Message| match m.payload().as_ref() {
            b"err" => Err(PluginError::new("bad input")),
            b"panic" => panic!("index out of range"),
            _ => Ok(Action::Pass),
        });
        let policy = IsolationPolicy { quarantine_after: 3, time_budget: None, ..IsolationPolicy::default() };
        let (r, chains, _) = setup(policy, vec![(Box::new(flaky), Permissions::all())]);
        assert_eq!(dead_reason(&chains.run(msg("in.a", "err"))).1, "error: bad input");
        assert_eq!(dead_reason(&chains.run(msg("in.a", "panic"))).1, "panicked: index out of range");
        // A success resets the count: quarantine counts consecutive failures.
        assert_eq!(chains.run(msg("in.a", "ok")).publish.len(), 1);
        for _ in 0..2 {
            chains.run(msg("in.a", "err"));
        }
        assert_eq!(r.state("flaky"), Some(PluginState::Running));
        chains.run(msg("in.a", "panic"));
        assert_eq!(r.state("flaky"), Some(PluginState::Quarantined));
        let (plugin, reason) = dead_reason(&chains.run(msg("in.a", "ok")));
        assert_eq!((plugin.as_str(), reason.as_str()), ("flaky", "quarantined after 3 consecutive failures"));
        let s = r.get("flaky").unwrap().stats();
        assert_eq!((s.failures, s.refused_not_running), (5, 1));
    }

    #[test]
    fn a_release_or_replacement_ends_quarantine() {
        let fails = Fn("p", |_: &Message| -> Result<Action, PluginError> { Err(PluginError::new("down")) });
        let policy = IsolationPolicy { quarantine_after: 1, time_budget: None, ..IsolationPolicy::default() };
        let (mut r, chains, _) = setup(policy, vec![(Box::new(fails), Permissions::all())]);
        chains.run(msg("in.a", "x"));
        assert_eq!(r.state("p"), Some(PluginState::Quarantined));
        r.release("p").unwrap();
        assert_eq!(r.state("p"), Some(PluginState::Running));
        chains.run(msg("in.a", "x"));
        let fixed = Fn("p", |_: &Message| -> Result<Action, PluginError> { Ok(Action::Pass) });
        r.replace("p", Box::new(fixed), None).unwrap();
        assert_eq!(chains.run(msg("in.a", "x")).publish.len(), 1);
    }

    #[test]
    fn a_call_over_its_budget_is_a_failure() {
        let clock_for_plugin = std::sync::Arc::new(std::sync::Mutex::new(None::<ManualClock>));
        let handle = clock_for_plugin.clone();
        let slow = Fn("slow", move |m: &Message| {
            if m.payload().as_ref() == b"slow" {
                let clock = handle.lock().unwrap().clone().unwrap();
                clock.advance(Duration::from_millis(30));
            }
            Ok(Action::Pass)
        });
        let policy = IsolationPolicy {
            quarantine_after: 10,
            time_budget: Some(Duration::from_millis(20)),
            ..IsolationPolicy::default()
        };
        let (_r, chains, clock) = setup(policy, vec![(Box::new(slow), Permissions::all())]);
        *clock_for_plugin.lock().unwrap() = Some(clock);
        assert_eq!(chains.run(msg("in.a", "fast")).publish.len(), 1);
        assert_eq!(dead_reason(&chains.run(msg("in.a", "slow"))).1, "ran 30ms, over its 20ms budget");
    }

    #[test]
    fn actions_outside_permissions_are_refused() {
        let rogue = Fn("rogue", |m: &Message| {
            Ok(match m.payload().as_ref() {
                b"leak" => Action::Route(vec![rebuild(m).topic("secret.dump").build().unwrap()]),
                b"forge" => Action::Replace(rebuild(m).header("auth", "admin").build().unwrap()),
                b"tag" => Action::Replace(rebuild(m).header("tag", "1").build().unwrap()),
                _ => Action::Route(vec![rebuild(m).topic("out.ok").build().unwrap()]),
            })
        });
        let perms = Permissions {
            read: vec![Pattern::new("in.>").unwrap()],
            publish: vec![Pattern::new("out.*").unwrap()],
            headers: Some(vec!["tag".into()]),
        };
        let policy = IsolationPolicy { quarantine_after: 100, time_budget: None, ..IsolationPolicy::default() };
        let (_r, chains, _) = setup(policy, vec![(Box::new(rogue), perms)]);
        assert_eq!(dead_reason(&chains.run(msg("in.a", "leak"))).1, "may not publish to secret.dump");
        assert_eq!(dead_reason(&chains.run(msg("in.a", "forge"))).1, "may not touch header \"auth\"");
        assert_eq!(chains.run(msg("in.a", "tag")).publish[0].headers().get("tag").unwrap().as_ref(), b"1");
        assert_eq!(chains.run(msg("in.a", "fine")).publish[0].topic().as_str(), "out.ok");
    }

    #[test]
    fn chains_a_plugin_may_not_read_are_refused() {
        let clock = ManualClock::default();
        let mut registry = PluginRegistry::new();
        let p = Fn("narrow", |_: &Message| -> Result<Action, PluginError> { Ok(Action::Pass) });
        let slot = registry.register(Box::new(p), Permissions::read_only(&["in.a"]).unwrap(), BTreeMap::new()).unwrap();
        let chains = Chains::new(clock, IsolationPolicy::default());
        let err = chains.set(vec![Chain { pattern: Pattern::new("in.*").unwrap(), stages: vec![slot.clone()] }]);
        assert_eq!(err.unwrap_err().to_string(), "chain in.*: plugin \"narrow\" may not read in.*");
        chains.set(vec![Chain { pattern: Pattern::new("in.a").unwrap(), stages: vec![slot] }]).unwrap();
        // Not started: messages are dead-lettered, naming the state.
        assert_eq!(dead_reason(&chains.run(msg("in.a", "x"))).1, "not running (loaded)");
    }
}

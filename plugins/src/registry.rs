//! The plugin registry: plugins by name, their dependency graph, and their
//! lifecycle.
//!
//! # Lifecycle
//!
//! ```text
//! Loaded ──initialize──▶ Initialized ──start──▶ Running ──N failures──▶ Quarantined
//!    │                        │                    │                        │
//!    └─init error─▶ Failed    └──────shutdown──────┴──▶ Stopped ◀───────────┘
//! ```
//!
//! [`PluginRegistry::initialize_all`] initializes every loaded plugin in
//! dependency order (a dependency before its dependents; ties by name, so
//! the order is the same on every run). Before initializing anything it
//! checks the whole graph: a missing dependency, a dependency whose version
//! does not satisfy the requirement, or a cycle is refused, spelled out
//! (`a -> b -> a`). If a plugin's `initialize` fails, it is marked failed
//! and every plugin initialized before it in this call is shut down again
//! in reverse order (rolled back to stopped), so nothing half-started
//! serves. [`PluginRegistry::shutdown_all`] stops in reverse
//! initialization order.
//!
//! Only `Running` plugins process messages; a chain that reaches a plugin in
//! any other state dead-letters the message naming the plugin and its
//! state (see [`crate::chain`]). Quarantine is left by
//! [`PluginRegistry::replace`] (hot reload) or [`PluginRegistry::release`].
//!
//! # Hot reload
//!
//! [`PluginRegistry::replace`] initializes the new instance while the old
//! one keeps serving, then takes the plugin's slot lock — which waits for
//! the call in progress, so the old instance drains — swaps, and shuts the
//! old instance down. Messages arriving meanwhile wait for the lock and are
//! processed by the new instance; none is lost, and one publisher's
//! messages keep their order (each waits for its predecessor's call).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use semver::{Version, VersionReq};

use crate::plugin::{Permissions, PluginContext, PluginError, StreamProcessor};

/// Where a plugin is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PluginState {
    /// Registered, not initialized.
    Loaded,
    /// Initialized, not yet serving.
    Initialized,
    /// Serving messages.
    Running,
    /// Its initialization failed.
    Failed,
    /// Isolated after too many consecutive failures: serves nothing until
    /// replaced or released.
    Quarantined,
    /// Shut down.
    Stopped,
}

impl std::fmt::Display for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginState::Loaded => "loaded",
            PluginState::Initialized => "initialized",
            PluginState::Running => "running",
            PluginState::Failed => "failed",
            PluginState::Quarantined => "quarantined",
            PluginState::Stopped => "stopped",
        })
    }
}

/// Why the registry refused something.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A plugin of that name is already registered.
    #[error("plugin {0:?} is already registered")]
    Duplicate(String),
    /// No plugin of that name.
    #[error("no plugin named {0:?}")]
    Unknown(String),
    /// A dependency is not registered.
    #[error("plugin {plugin:?} depends on {dependency:?} ({requirement}), which is not registered")]
    MissingDependency {
        /// The dependent.
        plugin: String,
        /// The missing plugin.
        dependency: String,
        /// The versions it would accept.
        requirement: VersionReq,
    },
    /// A dependency's version does not satisfy the requirement.
    #[error("plugin {plugin:?} needs {dependency:?} {requirement}, but version {found} is registered")]
    IncompatibleDependency {
        /// The dependent.
        plugin: String,
        /// The dependency.
        dependency: String,
        /// The versions it would accept.
        requirement: VersionReq,
        /// The version registered.
        found: Version,
    },
    /// The dependencies form a cycle (spelled `a -> b -> a`).
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A plugin's initialization failed; what was initialized before it in
    /// the same call was shut down again.
    #[error("plugin {plugin:?} failed to initialize: {error}{}", rolled_back_text(.rolled_back))]
    InitFailed {
        /// The plugin.
        plugin: String,
        /// Its error.
        error: String,
        /// The plugins shut down again, in the order they were.
        rolled_back: Vec<String>,
    },
    /// A replacement has another name than the plugin it replaces.
    #[error("replacement for {expected:?} is named {found:?}")]
    NameMismatch {
        /// The plugin being replaced.
        expected: String,
        /// The replacement's name.
        found: String,
    },
    /// The plugin is not in a state that allows the operation.
    #[error("plugin {plugin:?} is {state}: {why}")]
    BadState {
        /// The plugin.
        plugin: String,
        /// Its state.
        state: PluginState,
        /// What was refused.
        why: &'static str,
    },
}

fn rolled_back_text(rolled: &[String]) -> String {
    if rolled.is_empty() { String::new() } else { format!(" (rolled back: {})", rolled.join(", ")) }
}

/// One plugin's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// Messages it decided about (any action).
    pub processed: u64,
    /// Messages it dropped by its own decision.
    pub dropped: u64,
    /// Messages it dead-lettered by its own decision.
    pub rejected: u64,
    /// Messages it routed (the chain ended there).
    pub routed: u64,
    /// Failures: errors, panics, over-budget runs, permission refusals.
    pub failures: u64,
    /// Failures since its last success (what quarantine counts).
    pub consecutive_failures: u32,
    /// Messages refused because it was not running (quarantined, stopped…).
    pub refused_not_running: u64,
    /// Times it was replaced by a new instance (hot reloads).
    pub reloads: u64,
}

/// A registered plugin: its instance, state and counters behind one lock
/// (the instance is `&mut` while it processes; the lock is what makes a
/// replacement wait for the call in progress).
pub struct PluginSlot {
    name: String,
    inner: Mutex<SlotInner>,
}

pub(crate) struct SlotInner {
    pub(crate) processor: Box<dyn StreamProcessor>,
    pub(crate) state: PluginState,
    pub(crate) permissions: Permissions,
    pub(crate) context: PluginContext,
    pub(crate) stats: PluginStats,
}

impl PluginSlot {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SlotInner> {
        // A panic inside `process` is caught under the lock and never
        // poisons it; a poisoned lock would come from a bug of ours, and the
        // state inside is still consistent (updated after each call).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its state.
    pub fn state(&self) -> PluginState {
        self.lock().state
    }

    /// Its counters.
    pub fn stats(&self) -> PluginStats {
        self.lock().stats
    }

    /// Its permissions.
    pub fn permissions(&self) -> Permissions {
        self.lock().permissions.clone()
    }
}

impl std::fmt::Debug for PluginSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSlot").field("name", &self.name).field("state", &self.state()).finish()
    }
}

/// Plugins by name, their dependencies and lifecycle (see the module docs).
#[derive(Default)]
pub struct PluginRegistry {
    slots: BTreeMap<String, Arc<PluginSlot>>,
    /// Initialization order of the plugins currently initialized or running
    /// (shutdown goes in reverse).
    initialized: Vec<String>,
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `plugin` (state loaded) with `permissions` and the
    /// configuration it will be initialized with.
    pub fn register(
        &mut self,
        plugin: Box<dyn StreamProcessor>,
        permissions: Permissions,
        config: BTreeMap<String, String>,
    ) -> Result<Arc<PluginSlot>, RegistryError> {
        let name = plugin.name().to_owned();
        if self.slots.contains_key(&name) {
            return Err(RegistryError::Duplicate(name));
        }
        let slot = Arc::new(PluginSlot {
            name: name.clone(),
            inner: Mutex::new(SlotInner {
                processor: plugin,
                state: PluginState::Loaded,
                permissions,
                context: PluginContext { config, dependencies: BTreeMap::new() },
                stats: PluginStats::default(),
            }),
        });
        self.slots.insert(name, slot.clone());
        Ok(slot)
    }

    /// The plugin named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<PluginSlot>> {
        self.slots.get(name).cloned()
    }

    /// A plugin's state.
    pub fn state(&self, name: &str) -> Option<PluginState> {
        self.slots.get(name).map(|s| s.state())
    }

    /// Every plugin's state, by name.
    pub fn states(&self) -> Vec<(String, PluginState)> {
        self.slots.iter().map(|(n, s)| (n.clone(), s.state())).collect()
    }

    /// The names and versions of every plugin and what each depends on.
    fn graph(&self) -> BTreeMap<String, (Version, Vec<crate::plugin::Dependency>)> {
        self.slots
            .iter()
            .map(|(n, s)| {
                let inner = s.lock();
                (n.clone(), (inner.processor.version(), inner.processor.dependencies()))
            })
            .collect()
    }

    /// The order plugins are initialized in: every dependency before its
    /// dependents, ties by name. Refuses missing or incompatible
    /// dependencies and cycles.
    pub fn initialization_order(&self) -> Result<Vec<String>, RegistryError> {
        let graph = self.graph();
        for (name, (_, deps)) in &graph {
            for dep in deps {
                match graph.get(&dep.name) {
                    None => {
                        return Err(RegistryError::MissingDependency {
                            plugin: name.clone(),
                            dependency: dep.name.clone(),
                            requirement: dep.requirement.clone(),
                        });
                    }
                    Some((version, _)) if !dep.requirement.matches(version) => {
                        return Err(RegistryError::IncompatibleDependency {
                            plugin: name.clone(),
                            dependency: dep.name.clone(),
                            requirement: dep.requirement.clone(),
                            found: version.clone(),
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        // Kahn's algorithm; the ready set is ordered, so ties go by name.
        let mut waiting_on: BTreeMap<&str, usize> = graph
            .iter()
            .map(|(n, (_, deps))| (n.as_str(), deps.iter().map(|d| &d.name).collect::<BTreeSet<_>>().len()))
            .collect();
        let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, (_, deps)) in &graph {
            for dep in deps.iter().map(|d| d.name.as_str()).collect::<BTreeSet<_>>() {
                dependents.entry(dep).or_default().push(name);
            }
        }
        let mut ready: BTreeSet<&str> = waiting_on.iter().filter(|(_, n)| **n == 0).map(|(k, _)| *k).collect();
        let mut order = Vec::with_capacity(graph.len());
        while let Some(next) = ready.pop_first() {
            order.push(next.to_owned());
            for d in dependents.get(next).into_iter().flatten() {
                let n = waiting_on.get_mut(d).expect("every dependent is a node");
                *n -= 1;
                if *n == 0 {
                    ready.insert(d);
                }
            }
        }
        if order.len() < graph.len() {
            let left: BTreeSet<&str> = waiting_on.iter().filter(|(_, n)| **n > 0).map(|(k, _)| *k).collect();
            return Err(RegistryError::Cycle(find_cycle(&graph, &left)));
        }
        Ok(order)
    }

    /// Initializes every loaded plugin in dependency order (see the module
    /// docs). Plugins already initialized or running are left as they are.
    pub fn initialize_all(&mut self) -> Result<(), RegistryError> {
        let order = self.initialization_order()?;
        let mut done_now: Vec<String> = Vec::new();
        for name in order {
            let slot = self.slots[&name].clone();
            let mut inner = slot.lock();
            if inner.state != PluginState::Loaded {
                continue;
            }
            let mut versions = BTreeMap::new();
            for dep in inner.processor.dependencies() {
                versions.insert(dep.name.clone(), self.slots[&dep.name].lock().processor.version());
            }
            inner.context.dependencies = versions;
            let context = inner.context.clone();
            let result = catch(|| inner.processor.initialize(&context));
            match result {
                Ok(()) => {
                    inner.state = PluginState::Initialized;
                    done_now.push(name.clone());
                    self.initialized.push(name);
                }
                Err(error) => {
                    inner.state = PluginState::Failed;
                    drop(inner);
                    for undo in done_now.iter().rev() {
                        let mut i = self.slots[undo].lock();
                        let _ = catch(|| {
                            i.processor.shutdown();
                            Ok(())
                        });
                        i.state = PluginState::Stopped;
                    }
                    self.initialized.retain(|n| !done_now.contains(n));
                    done_now.reverse();
                    return Err(RegistryError::InitFailed { plugin: name, error: error.0, rolled_back: done_now });
                }
            }
        }
        Ok(())
    }

    /// Starts serving with every initialized plugin.
    pub fn start_all(&mut self) {
        for name in &self.initialized {
            let mut inner = self.slots[name].lock();
            if inner.state == PluginState::Initialized {
                inner.state = PluginState::Running;
            }
        }
    }

    /// Initializes and starts everything loaded ([`Self::initialize_all`]
    /// then [`Self::start_all`]).
    pub fn start(&mut self) -> Result<(), RegistryError> {
        self.initialize_all()?;
        self.start_all();
        Ok(())
    }

    /// Shuts every initialized plugin down, in reverse initialization order
    /// (each waits for its call in progress). Returns the order used.
    pub fn shutdown_all(&mut self) -> Vec<String> {
        let order: Vec<String> = self.initialized.drain(..).rev().collect();
        for name in &order {
            let mut inner = self.slots[name].lock();
            let _ = catch(|| {
                inner.processor.shutdown();
                Ok(())
            });
            inner.state = PluginState::Stopped;
        }
        order
    }

    /// Hot reload: replaces the running (or quarantined) plugin `name` with
    /// `replacement` (same name; its version must still satisfy every
    /// dependent), initialized with `config` (`None`: the current one).
    /// The old instance finishes its call in progress, then is shut down;
    /// counters are kept, consecutive failures reset, quarantine left.
    /// On any error the old instance stays in place, untouched.
    pub fn replace(
        &mut self,
        name: &str,
        mut replacement: Box<dyn StreamProcessor>,
        config: Option<BTreeMap<String, String>>,
    ) -> Result<(), RegistryError> {
        let slot = self.slots.get(name).cloned().ok_or_else(|| RegistryError::Unknown(name.to_owned()))?;
        if replacement.name() != name {
            return Err(RegistryError::NameMismatch {
                expected: name.to_owned(),
                found: replacement.name().to_owned(),
            });
        }
        let version = replacement.version();
        for (dependent, (_, deps)) in self.graph() {
            for dep in deps.iter().filter(|d| d.name == name) {
                if !dep.requirement.matches(&version) {
                    return Err(RegistryError::IncompatibleDependency {
                        plugin: dependent.clone(),
                        dependency: name.to_owned(),
                        requirement: dep.requirement.clone(),
                        found: version.clone(),
                    });
                }
            }
        }
        let mut context = {
            let inner = slot.lock();
            if !matches!(inner.state, PluginState::Running | PluginState::Quarantined) {
                return Err(RegistryError::BadState {
                    plugin: name.to_owned(),
                    state: inner.state,
                    why: "only a running or quarantined plugin is replaced",
                });
            }
            inner.context.clone()
        };
        if let Some(config) = config {
            context.config = config;
        }
        // Initialized while the old instance keeps serving.
        catch(|| replacement.initialize(&context)).map_err(|e| RegistryError::InitFailed {
            plugin: name.to_owned(),
            error: e.0,
            rolled_back: Vec::new(),
        })?;
        let mut old = {
            let mut inner = slot.lock();
            inner.context = context;
            inner.state = PluginState::Running;
            inner.stats.consecutive_failures = 0;
            inner.stats.reloads += 1;
            std::mem::replace(&mut inner.processor, replacement)
        };
        let _ = catch(|| {
            old.shutdown();
            Ok(())
        });
        Ok(())
    }

    /// Lets a quarantined plugin serve again (same instance).
    pub fn release(&mut self, name: &str) -> Result<(), RegistryError> {
        let slot = self.slots.get(name).ok_or_else(|| RegistryError::Unknown(name.to_owned()))?;
        let mut inner = slot.lock();
        if inner.state != PluginState::Quarantined {
            return Err(RegistryError::BadState {
                plugin: name.to_owned(),
                state: inner.state,
                why: "only a quarantined plugin is released",
            });
        }
        inner.state = PluginState::Running;
        inner.stats.consecutive_failures = 0;
        Ok(())
    }

    /// Changes a plugin's permissions (takes effect from its next message).
    pub fn set_permissions(&mut self, name: &str, permissions: Permissions) -> Result<(), RegistryError> {
        let slot = self.slots.get(name).ok_or_else(|| RegistryError::Unknown(name.to_owned()))?;
        slot.lock().permissions = permissions;
        Ok(())
    }
}

/// Runs a plugin's lifecycle call, turning a panic into an error.
fn catch(f: impl FnOnce() -> Result<(), PluginError>) -> Result<(), PluginError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => Err(PluginError(format!("panicked: {}", crate::chain::panic_text(&panic)))),
    }
}

/// A cycle among `left` (nodes that Kahn's algorithm could not order), as
/// `a -> b -> … -> a`, starting from the smallest name on it.
fn find_cycle(
    graph: &BTreeMap<String, (Version, Vec<crate::plugin::Dependency>)>,
    left: &BTreeSet<&str>,
) -> Vec<String> {
    // Every node left has a dependency left, so walking dependencies from
    // any of them must revisit a node: the first revisit closes a cycle.
    let start = *left.iter().next().expect("a cycle leaves nodes");
    let mut path: Vec<&str> = vec![start];
    loop {
        let here = *path.last().expect("non-empty");
        let next = graph[here]
            .1
            .iter()
            .map(|d| d.name.as_str())
            .filter(|d| left.contains(d))
            .min()
            .expect("a node left by Kahn's algorithm has a dependency left");
        if let Some(i) = path.iter().position(|p| *p == next) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| (*s).to_owned()).collect();
            // Start at the smallest name so the message is the same
            // whichever node the walk began at.
            let min = cycle.iter().enumerate().min_by_key(|(_, n)| n.as_str()).map(|(i, _)| i).expect("non-empty");
            cycle.rotate_left(min);
            cycle.push(cycle[0].clone());
            return cycle;
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use kaelix_broker::message::Message;

    use super::*;
    use crate::plugin::{Action, Dependency, Plugin};

    /// A plugin that records its lifecycle calls in a shared journal.
    struct Probe {
        name: &'static str,
        version: Version,
        deps: Vec<Dependency>,
        fail_init: bool,
        journal: Arc<StdMutex<Vec<String>>>,
    }

    impl Plugin for Probe {
        fn name(&self) -> &str {
            self.name
        }
        fn version(&self) -> Version {
            self.version.clone()
        }
        fn dependencies(&self) -> Vec<Dependency> {
            self.deps.clone()
        }
        fn initialize(&mut self, context: &PluginContext) -> Result<(), PluginError> {
            let deps: Vec<String> = context.dependencies.iter().map(|(n, v)| format!("{n}@{v}")).collect();
            self.journal.lock().unwrap().push(format!("init {} [{}]", self.name, deps.join(",")));
            if self.fail_init { Err(PluginError::new("no licence")) } else { Ok(()) }
        }
        fn shutdown(&mut self) {
            self.journal.lock().unwrap().push(format!("stop {}", self.name));
        }
    }

    impl StreamProcessor for Probe {
        fn process(&mut self, _: &Message) -> Result<Action, PluginError> {
            Ok(Action::Pass)
        }
    }

    struct Setup {
        registry: PluginRegistry,
        journal: Arc<StdMutex<Vec<String>>>,
    }

    impl Setup {
        fn new() -> Self {
            Setup { registry: PluginRegistry::new(), journal: Arc::default() }
        }
        fn probe(&self, name: &'static str, version: &str, deps: &[(&str, &str)]) -> Box<Probe> {
            Box::new(Probe {
                name,
                version: Version::parse(version).unwrap(),
                deps: deps.iter().map(|(n, r)| Dependency::new(*n, r)).collect(),
                fail_init: false,
                journal: self.journal.clone(),
            })
        }
        fn add(&mut self, name: &'static str, version: &str, deps: &[(&str, &str)]) {
            let p = self.probe(name, version, deps);
            self.registry.register(p, Permissions::all(), BTreeMap::new()).unwrap();
        }
        fn journal(&self) -> Vec<String> {
            std::mem::take(&mut *self.journal.lock().unwrap())
        }
    }

    #[test]
    fn initializes_dependencies_first_and_stops_in_reverse() {
        let mut s = Setup::new();
        s.add("enrich", "1.0.0", &[("geo", "^2"), ("auth", ">=1.1")]);
        s.add("geo", "2.3.0", &[("auth", "1")]);
        s.add("auth", "1.4.2", &[]);
        s.add("audit", "0.1.0", &[]);
        assert_eq!(s.registry.initialization_order().unwrap(), ["audit", "auth", "geo", "enrich"]);
        s.registry.start().unwrap();
        assert_eq!(
            s.journal(),
            ["init audit []", "init auth []", "init geo [auth@1.4.2]", "init enrich [auth@1.4.2,geo@2.3.0]"]
        );
        assert!(s.registry.states().iter().all(|(_, st)| *st == PluginState::Running));
        assert_eq!(s.registry.shutdown_all(), ["enrich", "geo", "auth", "audit"]);
        assert_eq!(s.journal(), ["stop enrich", "stop geo", "stop auth", "stop audit"]);
        assert_eq!(s.registry.state("geo"), Some(PluginState::Stopped));
    }

    #[test]
    fn a_cycle_is_refused_and_spelled_out() {
        let mut s = Setup::new();
        s.add("a", "1.0.0", &[("b", "*")]);
        s.add("b", "1.0.0", &[("c", "*")]);
        s.add("c", "1.0.0", &[("a", "*")]);
        s.add("d", "1.0.0", &[("a", "*")]);
        let err = s.registry.initialize_all().unwrap_err();
        assert_eq!(err, RegistryError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
        assert_eq!(err.to_string(), "dependency cycle: a -> b -> c -> a");
        assert!(s.journal().is_empty(), "nothing initialized");
        let mut own = Setup::new();
        own.add("self", "1.0.0", &[("self", "*")]);
        assert_eq!(own.registry.initialize_all().unwrap_err().to_string(), "dependency cycle: self -> self");
    }

    #[test]
    fn missing_and_incompatible_dependencies_are_named() {
        let mut s = Setup::new();
        s.add("a", "1.0.0", &[("ghost", "^1")]);
        assert_eq!(
            s.registry.initialize_all().unwrap_err().to_string(),
            "plugin \"a\" depends on \"ghost\" (^1), which is not registered"
        );
        let mut s = Setup::new();
        s.add("a", "1.0.0", &[("b", "^2.1")]);
        s.add("b", "2.0.5", &[]);
        assert_eq!(
            s.registry.initialize_all().unwrap_err().to_string(),
            "plugin \"a\" needs \"b\" ^2.1, but version 2.0.5 is registered"
        );
        assert_eq!(s.registry.state("b"), Some(PluginState::Loaded), "nothing initialized");
    }

    #[test]
    fn a_failed_initialization_rolls_back_what_was_initialized() {
        let mut s = Setup::new();
        s.add("base", "1.0.0", &[]);
        s.add("mid", "1.0.0", &[("base", "1")]);
        let mut bad = s.probe("top", "1.0.0", &[("mid", "1")]);
        bad.fail_init = true;
        s.registry.register(bad, Permissions::all(), BTreeMap::new()).unwrap();
        let err = s.registry.initialize_all().unwrap_err();
        assert_eq!(
            err,
            RegistryError::InitFailed {
                plugin: "top".into(),
                error: "no licence".into(),
                rolled_back: vec!["mid".into(), "base".into()],
            }
        );
        assert_eq!(
            s.journal(),
            ["init base []", "init mid [base@1.0.0]", "init top [mid@1.0.0]", "stop mid", "stop base"]
        );
        assert_eq!(s.registry.state("top"), Some(PluginState::Failed));
        assert_eq!(s.registry.state("mid"), Some(PluginState::Stopped));
        assert!(s.registry.shutdown_all().is_empty(), "nothing left to stop");
    }

    #[test]
    fn duplicates_are_refused() {
        let mut s = Setup::new();
        s.add("a", "1.0.0", &[]);
        let again = s.probe("a", "2.0.0", &[]);
        assert_eq!(
            s.registry.register(again, Permissions::all(), BTreeMap::new()).unwrap_err(),
            RegistryError::Duplicate("a".into())
        );
    }

    #[test]
    fn replace_checks_dependents_and_swaps_the_instance() {
        let mut s = Setup::new();
        s.add("lib", "1.2.0", &[]);
        s.add("app", "1.0.0", &[("lib", "^1.2")]);
        s.registry.start().unwrap();
        s.journal();
        let too_new = s.probe("lib", "2.0.0", &[]);
        assert_eq!(
            s.registry.replace("lib", too_new, None).unwrap_err().to_string(),
            "plugin \"app\" needs \"lib\" ^1.2, but version 2.0.0 is registered"
        );
        let wrong = s.probe("other", "1.3.0", &[]);
        assert!(matches!(s.registry.replace("lib", wrong, None), Err(RegistryError::NameMismatch { .. })));
        let newer = s.probe("lib", "1.3.0", &[]);
        s.registry.replace("lib", newer, None).unwrap();
        // The new instance is initialized before the old one stops.
        assert_eq!(s.journal(), ["init lib []", "stop lib"]);
        assert_eq!(s.registry.get("lib").unwrap().stats().reloads, 1);
        assert_eq!(s.registry.state("lib"), Some(PluginState::Running));
        let mut failing = s.probe("lib", "1.4.0", &[]);
        failing.fail_init = true;
        assert!(matches!(s.registry.replace("lib", failing, None), Err(RegistryError::InitFailed { .. })));
        assert_eq!(s.registry.state("lib"), Some(PluginState::Running), "the old instance stays");
    }
}

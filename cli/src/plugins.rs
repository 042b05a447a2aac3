//! `kaelix serve`'s plugins: the `[plugins]` section made real — module
//! files read and compiled, a registry of sandboxed instances, the chains
//! installed as the broker's publish hook — and applied again on reload.
//!
//! On reload, a plugin whose settings or module bytes changed is replaced
//! through `PluginRegistry::replace` (its old instance finishes the call in
//! progress, then is shut down; no message is lost or reordered), new
//! plugins are registered and started, and the chains are swapped (a
//! message already in a chain finishes there). A change of
//! `quarantine_after` or `time_budget_ms` installs fresh chains with the
//! new policy. Plugins removed from the file leave every chain; their
//! instances stay registered, idle. A module file changed on disk is picked
//! up by the next reload (a change to the configuration file, or SIGHUP).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kaelix_broker::Broker;
use kaelix_broker::intercept::PublishHook;
use kaelix_broker::topic::Pattern;
use kaelix_core::time::Duration;
use kaelix_plugins::wasm::{WasmEngine, WasmLimits, WasmProcessor};
use kaelix_plugins::{Chain, Chains, IsolationPolicy, PluginRegistry, StreamProcessor};
use kaelix_runtime_real::RealRuntime;
use kaelix_server::plugins::{PluginsConfig, WasmPluginSpec};

/// The running plugins of one server.
pub struct ServePlugins {
    engine: WasmEngine,
    rt: RealRuntime,
    state: Mutex<State>,
}

struct State {
    registry: PluginRegistry,
    chains: Arc<Chains<RealRuntime>>,
    policy: IsolationPolicy,
    /// What each registered plugin was built from.
    built: BTreeMap<String, (WasmPluginSpec, Vec<u8>)>,
}

fn policy(config: &PluginsConfig) -> IsolationPolicy {
    IsolationPolicy {
        quarantine_after: config.quarantine_after,
        time_budget: (config.time_budget_ms > 0).then(|| Duration::from_millis(config.time_budget_ms)),
        ..IsolationPolicy::default()
    }
}

#[allow(clippy::disallowed_methods, reason = "kaelix serve reads the plugin modules its configuration names")]
fn read_module(path: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

impl ServePlugins {
    /// Builds everything `config` declares (errors name the key path).
    pub fn build(rt: &RealRuntime, config: &PluginsConfig) -> Result<ServePlugins, String> {
        let engine = WasmEngine::new().map_err(|e| e.to_string())?;
        let policy = policy(config);
        let state = State {
            registry: PluginRegistry::new(),
            chains: Arc::new(Chains::new(rt.clone(), policy)),
            policy,
            built: BTreeMap::new(),
        };
        let plugins = ServePlugins { engine, rt: rt.clone(), state: Mutex::new(state) };
        plugins.apply(config, None)?;
        Ok(plugins)
    }

    /// The publish hook to install in the broker: `None` while no chain is
    /// configured (then a publish takes no look at the plugins at all).
    pub fn hook(&self) -> Option<Arc<dyn PublishHook>> {
        let chains = self.state.lock().unwrap_or_else(|e| e.into_inner()).chains.clone();
        installed_hook(chains)
    }

    fn processor(&self, key: &str, spec: &WasmPluginSpec, bytes: &[u8]) -> Result<Box<dyn StreamProcessor>, String> {
        let module = self.engine.compile(bytes).map_err(|e| format!("{key}.module: {}: {e}", spec.module))?;
        let version = semver::Version::parse(&spec.version).map_err(|e| format!("{key}.version: {e}"))?;
        let permissions = spec.permissions().map_err(|e| format!("{key}: {e}"))?;
        let limits = WasmLimits { fuel_per_message: spec.fuel_per_message, max_memory_bytes: spec.max_memory_bytes };
        Ok(Box::new(WasmProcessor::new(spec.name.clone(), version, module, limits, permissions)))
    }

    /// Makes the running plugins and chains what `config` says (see the
    /// module docs); `broker` receives fresh chains when the policy
    /// changed. Returns what it did, one line per plugin or chain change.
    pub fn apply(&self, config: &PluginsConfig, broker: Option<&Broker<RealRuntime>>) -> Result<Vec<String>, String> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut done = Vec::new();
        // Read and compile everything first: a bad module changes nothing.
        let mut fresh = Vec::new();
        for (i, spec) in config.wasm.iter().enumerate() {
            let key = format!("plugins.wasm[{i}]");
            let bytes = read_module(&spec.module).map_err(|e| format!("{key}.module: reading {}: {e}", spec.module))?;
            let unchanged = state.built.get(&spec.name).is_some_and(|(s, b)| s == spec && *b == bytes);
            if !unchanged {
                fresh.push((spec.clone(), bytes.clone(), self.processor(&key, spec, &bytes)?));
            }
        }
        for (spec, bytes, processor) in fresh {
            let name = spec.name.clone();
            if state.built.contains_key(&name) {
                state
                    .registry
                    .replace(&name, processor, Some(spec.config.clone()))
                    .map_err(|e| format!("plugins: replacing {name}: {e}"))?;
                done.push(format!("plugin {name} replaced (version {})", spec.version));
            } else {
                let permissions = spec.permissions().map_err(|e| format!("plugins: {name}: {e}"))?;
                state
                    .registry
                    .register(processor, permissions, spec.config.clone())
                    .map_err(|e| format!("plugins: {e}"))?;
                state.registry.start().map_err(|e| format!("plugins: {e}"))?;
                done.push(format!("plugin {name} started (version {})", spec.version));
            }
            state.built.insert(name, (spec, bytes));
        }
        let mut chains = Vec::new();
        for (i, spec) in config.chains.iter().enumerate() {
            let pattern = Pattern::new(&spec.pattern).map_err(|e| format!("plugins.chains[{i}].pattern: {e}"))?;
            let stages = spec
                .stages
                .iter()
                .map(|s| state.registry.get(s).ok_or_else(|| format!("plugins.chains[{i}].stages: no plugin {s:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            chains.push(Chain { pattern, stages });
        }
        let new_policy = policy(config);
        if new_policy != state.policy {
            state.chains = Arc::new(Chains::new(self.rt.clone(), new_policy));
            state.policy = new_policy;
            done.push(format!(
                "isolation policy: quarantine after {}, time budget {} ms",
                config.quarantine_after, config.time_budget_ms
            ));
        }
        state.chains.set(chains).map_err(|e| format!("plugins.chains: {e}"))?;
        if let Some(broker) = broker {
            // After `set`: the broker's interest epoch moves with the new
            // hook, so a subject no chain covered before is looked at again.
            broker.set_publish_hook(installed_hook(state.chains.clone()));
        }
        done.push(format!("{} chain(s) in force", config.chains.len()));
        Ok(done)
    }
}

/// `chains` as the broker's publish hook, or `None` when it has no chain:
/// an empty hook applies to nothing, and no hook costs a publish nothing.
fn installed_hook(chains: Arc<Chains<RealRuntime>>) -> Option<Arc<dyn PublishHook>> {
    if chains.current().is_empty() { None } else { Some(chains) }
}

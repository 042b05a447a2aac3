//! The `[plugins]` section: WebAssembly plugins and the chains they form
//! on topic patterns (see `kaelix_plugins`).
//!
//! ```toml
//! [plugins]
//! quarantine_after = 5      # consecutive failures before a plugin is isolated
//! time_budget_ms = 100      # a call running longer is a failure (0: none)
//!
//! [[plugins.wasm]]
//! name = "redact"
//! module = "plugins/redact.wasm"   # binary or WAT text; relative to the working directory
//! version = "1.2.0"
//! fuel_per_message = 1000000
//! max_memory_bytes = 1048576
//! read = ["orders.>"]              # topics it may process
//! publish = ["audit.>"]            # topics it may route to
//! headers = ["redacted"]           # headers it may read and change (absent: any)
//! config = { mode = "strict" }     # handed to the plugin at initialization
//!
//! [[plugins.chains]]
//! pattern = "orders.*"
//! stages = ["redact"]
//! ```
//!
//! This module only describes and validates; `kaelix serve` reads the
//! modules, builds the registry and chains, and installs them as the
//! broker's publish hook before the listeners accept. The section is
//! reloadable: a changed module file, plugin setting or chain takes effect
//! on reload without a restart (the old instances drain first). Native
//! plugins are Rust types: embedders register them through
//! `kaelix_plugins` and [`crate::Server::start_with_hook`].

use std::collections::{BTreeMap, BTreeSet};

use kaelix_broker::topic::Pattern;
use kaelix_config::validate::{Category, Findings};
use serde::{Deserialize, Serialize};

/// The `[plugins]` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Consecutive failures after which a plugin is quarantined.
    pub quarantine_after: u32,
    /// A call running longer than this is a failure (0: no budget).
    pub time_budget_ms: u64,
    /// WebAssembly plugins.
    pub wasm: Vec<WasmPluginSpec>,
    /// Chains: the first whose pattern matches a topic processes it.
    pub chains: Vec<ChainSpec>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig { quarantine_after: 5, time_budget_ms: 100, wasm: Vec::new(), chains: Vec::new() }
    }
}

/// One WebAssembly plugin.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WasmPluginSpec {
    /// Its name (what chains and dead letters name).
    pub name: String,
    /// The module file (WebAssembly binary or WAT text).
    pub module: String,
    /// Its version (semver).
    #[serde(default = "default_version")]
    pub version: String,
    /// Fuel each message starts with.
    #[serde(default = "default_fuel")]
    pub fuel_per_message: u64,
    /// Most bytes of linear memory.
    #[serde(default = "default_memory")]
    pub max_memory_bytes: usize,
    /// Patterns of the topics it may process.
    #[serde(default = "any_topic")]
    pub read: Vec<String>,
    /// Patterns of the topics it may route to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Headers it may read and change (absent: any).
    #[serde(default)]
    pub headers: Option<Vec<String>>,
    /// Its configuration.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn default_version() -> String {
    "1.0.0".to_owned()
}
fn default_fuel() -> u64 {
    1_000_000
}
fn default_memory() -> usize {
    1 << 20
}
fn any_topic() -> Vec<String> {
    vec![">".to_owned()]
}

/// A chain of plugins on a topic pattern.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    /// The topics it applies to.
    pub pattern: String,
    /// Plugin names, in processing order.
    pub stages: Vec<String>,
}

/// The smallest linear memory a module can have (one page).
pub const MIN_MEMORY_BYTES: usize = 64 << 10;

impl WasmPluginSpec {
    /// Its permissions (the patterns must be valid: see [`PluginsConfig::rules`]).
    pub fn permissions(&self) -> Result<kaelix_plugins::Permissions, kaelix_broker::topic::TopicError> {
        Ok(kaelix_plugins::Permissions {
            read: self.read.iter().map(Pattern::new).collect::<Result<_, _>>()?,
            publish: self.publish.iter().map(Pattern::new).collect::<Result<_, _>>()?,
            headers: self.headers.clone(),
        })
    }
}

impl PluginsConfig {
    /// The section's rules (errors name `plugins.…` key paths).
    pub fn rules(&self, f: &mut Findings) {
        use Category::Integration;
        if self.quarantine_after == 0 {
            f.error(Integration, "plugins.quarantine_after", "must be at least 1");
        }
        let mut names = BTreeSet::new();
        for (i, p) in self.wasm.iter().enumerate() {
            let key = format!("plugins.wasm[{i}]");
            if p.name.is_empty() {
                f.error(Integration, format!("{key}.name"), "must not be empty");
            } else if !names.insert(p.name.as_str()) {
                f.error(Integration, format!("{key}.name"), format!("plugin {:?} is declared twice", p.name));
            }
            if p.module.is_empty() {
                f.error(Integration, format!("{key}.module"), "must name a module file");
            }
            if let Err(e) = semver::Version::parse(&p.version) {
                f.error(
                    Integration,
                    format!("{key}.version"),
                    format!("{:?} is not a semantic version: {e}", p.version),
                );
            }
            if p.fuel_per_message == 0 {
                f.error(Integration, format!("{key}.fuel_per_message"), "must be at least 1");
            }
            if p.max_memory_bytes < MIN_MEMORY_BYTES {
                f.error(
                    Integration,
                    format!("{key}.max_memory_bytes"),
                    format!("{} is below one WebAssembly page ({MIN_MEMORY_BYTES})", p.max_memory_bytes),
                );
            }
            for (field, patterns) in [("read", &p.read), ("publish", &p.publish)] {
                for (j, pattern) in patterns.iter().enumerate() {
                    if let Err(e) = Pattern::new(pattern) {
                        f.error(Integration, format!("{key}.{field}"), format!("entry {j}, {pattern:?}: {e}"));
                    }
                }
            }
        }
        let declared: Vec<&str> = names.iter().copied().collect();
        for (i, chain) in self.chains.iter().enumerate() {
            let key = format!("plugins.chains[{i}]");
            let pattern = match Pattern::new(&chain.pattern) {
                Ok(p) => Some(p),
                Err(e) => {
                    f.error(Integration, format!("{key}.pattern"), format!("{:?}: {e}", chain.pattern));
                    None
                }
            };
            if chain.stages.is_empty() {
                f.error(Integration, format!("{key}.stages"), "a chain needs at least one plugin");
            }
            for (j, stage) in chain.stages.iter().enumerate() {
                match self.wasm.iter().find(|p| &p.name == stage) {
                    None => f.error(
                        Integration,
                        format!("{key}.stages"),
                        format!("stage {j}: no plugin named {stage:?} (declared: {})", declared.join(", ")),
                    ),
                    Some(spec) => {
                        if let (Some(pattern), Ok(perms)) = (&pattern, spec.permissions())
                            && !perms.may_read_pattern(pattern)
                        {
                            f.error(
                                Integration,
                                format!("{key}.stages"),
                                format!(
                                    "stage {j}: plugin {stage:?} may not read {pattern} (its read permission: {:?})",
                                    spec.read
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<(String, String)> {
        let config: PluginsConfig = toml::from_str(text).unwrap();
        let mut f = Findings::default();
        config.rules(&mut f);
        f.iter().map(|x| (x.key.clone(), x.message.clone())).collect()
    }

    #[test]
    fn a_good_section_has_no_findings() {
        let text = r#"
            [[wasm]]
            name = "redact"
            module = "redact.wasm"
            read = ["orders.>"]
            [[chains]]
            pattern = "orders.*"
            stages = ["redact"]
        "#;
        assert_eq!(errors(text), []);
    }

    #[test]
    fn findings_name_the_key_and_the_problem() {
        let text = r#"
            quarantine_after = 0
            [[wasm]]
            name = "a"
            module = "a.wasm"
            version = "one"
            read = ["orders.eu"]
            [[wasm]]
            name = "a"
            module = ""
            max_memory_bytes = 10
            publish = ["bad..pattern"]
            [[chains]]
            pattern = "orders.*"
            stages = ["a", "ghost"]
            [[chains]]
            pattern = "x"
            stages = []
        "#;
        let got = errors(text);
        let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "plugins.quarantine_after",
                "plugins.wasm[0].version",
                "plugins.wasm[1].name",
                "plugins.wasm[1].module",
                "plugins.wasm[1].max_memory_bytes",
                "plugins.wasm[1].publish",
                "plugins.chains[0].stages",
                "plugins.chains[0].stages",
                "plugins.chains[1].stages",
            ]
        );
        assert!(got[6].1.contains("may not read orders.*"), "{}", got[6].1);
        assert_eq!(got[7].1, "stage 1: no plugin named \"ghost\" (declared: a)");
    }
}

//! Plugins: stream processors in the broker's message path.
//!
//! * [`plugin`]: the [`Plugin`] and [`StreamProcessor`] traits, the
//!   [`Action`] a processor takes on a message, [`Permissions`],
//!   [`PluginContext`].
//! * [`registry`]: [`PluginRegistry`] — plugins by name, dependencies with
//!   version requirements (initialization in dependency order, shutdown in
//!   reverse, cycles and missing dependencies refused by name, rollback of
//!   a failed initialization), lifecycle states, hot reload.
//! * [`chain`]: [`Chains`], ordered processors on topic patterns — the
//!   broker's [`kaelix_broker::intercept::PublishHook`] — with isolation
//!   (panics and errors dead-lettered naming the plugin, quarantine after
//!   consecutive failures, a time budget).
//! * `wasm` (feature `wasm`): WebAssembly processors in a wasmtime sandbox
//!   with fuel, a memory limit and the same permissions.
//!
//! ```
//! use std::sync::Arc;
//! use kaelix_broker::{Broker, BrokerError, SubscribeOptions};
//! use kaelix_broker::message::Message;
//! use kaelix_plugins::{Action, Chain, Chains, IsolationPolicy, Permissions, Plugin, PluginError, PluginRegistry, StreamProcessor};
//! # use kaelix_broker::testing::ManualClock;
//!
//! /// Drops messages whose payload is empty.
//! struct NonEmpty;
//! impl Plugin for NonEmpty {
//!     fn name(&self) -> &str { "non-empty" }
//!     fn version(&self) -> semver::Version { semver::Version::new(1, 0, 0) }
//! }
//! impl StreamProcessor for NonEmpty {
//!     fn process(&mut self, m: &Message) -> Result<Action, PluginError> {
//!         Ok(if m.payload().is_empty() { Action::Drop } else { Action::Pass })
//!     }
//! }
//!
//! # let clock = ManualClock::default();
//! let broker = Broker::new(clock.clone(), kaelix_core::rng::seeded(1), Default::default());
//! let mut registry = PluginRegistry::new();
//! let slot = registry.register(Box::new(NonEmpty), Permissions::all(), Default::default())?;
//! registry.start()?;
//! let chains = Arc::new(Chains::new(clock, IsolationPolicy::default()));
//! chains.set(vec![Chain { pattern: "orders.>".parse()?, stages: vec![slot] }])?;
//! broker.set_publish_hook(Some(chains));
//! # futures_util::FutureExt::now_or_never(async {
//! let empty = Message::builder().topic("orders.eu").payload("").build()?;
//! assert!(matches!(broker.publish(empty).await, Err(BrokerError::Intercepted(_))));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod chain;
pub mod plugin;
pub mod registry;
#[cfg(feature = "wasm")]
pub mod wasm;

pub use chain::{Chain, ChainError, Chains, IsolationPolicy};
pub use plugin::{Action, Dependency, Permissions, Plugin, PluginContext, PluginError, StreamProcessor, rebuild};
pub use registry::{PluginRegistry, PluginSlot, PluginState, PluginStats, RegistryError};

//! The publish hook: where processor chains (the `kaelix-plugins` crate)
//! enter the broker's message path.
//!
//! The broker knows nothing of plugins (crates depend downward only): it
//! holds at most one [`PublishHook`], asks it whether a topic concerns it,
//! and if so hands it each message published there **before** the message
//! is stored or routed. The hook answers with a [`HookOutcome`]: the
//! messages to publish instead (the original, modified, and/or copies
//! routed to other topics), the dead letters to write (each naming the
//! plugin that refused the message and why), and who dropped it if nothing
//! is left. So every message published to a hooked topic is accounted for:
//! stored (processed), routed, dropped by a plugin's decision, or
//! dead-lettered with a reason.
//!
//! Order: the hook runs inside the publisher's own call, before the
//! append, so one publisher's messages reach the log in the order it
//! published them (a sequential publisher waits for each call). Outputs
//! are published in the order the hook lists them and are not hooked again
//! (a chain cannot loop through its own outputs); dead letters bypass the
//! hook too.

pub use smallvec::{SmallVec, smallvec};

use crate::message::Message;
use crate::topic::Topic;

/// The messages a hook lets through, in order. One message inline: the
/// common outcome (passed or replaced) costs no allocation per publish.
pub type HookOutputs = SmallVec<[Message; 1]>;

/// Decides what becomes of messages published to the topics it covers.
/// Called outside the broker's lock, from the publisher's task.
pub trait PublishHook: Send + Sync {
    /// Whether messages published to `topic` go through [`Self::on_publish`]
    /// (cheap: called on every publish).
    fn applies_to(&self, topic: &Topic) -> bool;

    /// What to do with `message`, published to a topic it applies to.
    fn on_publish(&self, message: Message) -> HookOutcome;
}

/// What a [`PublishHook`] decided about one message.
#[derive(Clone, Debug, Default)]
pub struct HookOutcome {
    /// Publish these, in this order (the first one's result answers the
    /// publisher). Empty: the message goes nowhere but `dead_letters`.
    pub publish: HookOutputs,
    /// Write these to their topics' dead-letter topics.
    pub dead_letters: Vec<HookDeadLetter>,
    /// When `publish` and `dead_letters` are empty: the plugin that dropped
    /// the message by its own decision.
    pub dropped_by: Option<String>,
}

/// A message a plugin refused or failed on.
#[derive(Clone, Debug)]
pub struct HookDeadLetter {
    /// The message as the failing plugin received it.
    pub message: Message,
    /// The plugin's name.
    pub plugin: String,
    /// Why (the plugin's error, its panic message, a quarantine, …).
    pub reason: String,
}

/// What became of a published message that a hook did not let through to
/// any topic (the error [`crate::BrokerError::Intercepted`] carries it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// A plugin decided to drop it.
    Dropped {
        /// The plugin.
        plugin: String,
    },
    /// It went to the dead-letter topic.
    DeadLettered {
        /// The plugin that refused or failed on it.
        plugin: String,
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for Disposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disposition::Dropped { plugin } => write!(f, "dropped by plugin {plugin}"),
            Disposition::DeadLettered { plugin, reason } => {
                write!(f, "dead-lettered by plugin {plugin}: {reason}")
            }
        }
    }
}

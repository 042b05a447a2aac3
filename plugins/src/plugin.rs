//! The plugin model: what a plugin is ([`Plugin`]), what a stream processor
//! does with a message ([`StreamProcessor`], [`Action`]), what it may touch
//! ([`Permissions`]) and what it is handed at initialization
//! ([`PluginContext`]).
//!
//! A processor sees each message by reference and answers with an
//! [`Action`]: pass it on unchanged, replace it (modified), drop it, route
//! it (to other topics, ending the chain), or dead-letter it with a reason.
//! Errors ([`PluginError`]) and panics are not actions: the chain isolates
//! them (see [`crate::chain`]). Native plugins are Rust types registered
//! in-process; WebAssembly plugins (feature `wasm`) implement the same
//! traits over a sandboxed module.

use std::collections::BTreeMap;

use kaelix_broker::message::{Message, MessageBuilder};
use kaelix_broker::topic::{Pattern, Topic};
use semver::{Version, VersionReq};

/// A plugin: named, versioned, initialized once before it serves and shut
/// down once after.
pub trait Plugin: Send {
    /// Its unique name (the registry's key, and what dead letters name).
    fn name(&self) -> &str;

    /// Its version (what dependents' requirements are checked against).
    fn version(&self) -> Version;

    /// The plugins it needs initialized before itself.
    fn dependencies(&self) -> Vec<Dependency> {
        Vec::new()
    }

    /// Prepares it to serve. An error marks it failed and rolls back the
    /// registry's initialization (see [`crate::registry`]).
    fn initialize(&mut self, context: &PluginContext) -> Result<(), PluginError> {
        let _ = context;
        Ok(())
    }

    /// Releases what it holds; called once, after its last message.
    fn shutdown(&mut self) {}
}

/// A plugin in the message path.
pub trait StreamProcessor: Plugin {
    /// Decides about one message. An `Err` (or a panic) is a failure of the
    /// plugin, not a decision: the chain dead-letters the message naming the
    /// plugin and the error, and counts it toward quarantine.
    fn process(&mut self, message: &Message) -> Result<Action, PluginError>;
}

/// What a processor decided about a message.
#[derive(Clone, Debug)]
pub enum Action {
    /// Unchanged: on to the next processor (or to its topic).
    Pass,
    /// Changed: this message goes on instead (same topic unless the plugin
    /// may publish to the new one).
    Replace(Message),
    /// Dropped by the plugin's decision (counted, never delivered).
    Drop,
    /// Ends the chain: these messages are published instead (to topics the
    /// plugin may publish to). May include the original.
    Route(Vec<Message>),
    /// Never processable: to the dead-letter topic with this reason.
    DeadLetter(String),
}

/// A plugin's failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PluginError(pub String);

impl PluginError {
    /// An error with this text.
    pub fn new(text: impl Into<String>) -> Self {
        PluginError(text.into())
    }
}

/// A dependency on another plugin, with the versions accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    /// The plugin needed.
    pub name: String,
    /// The versions accepted (e.g. `^1.2`).
    pub requirement: VersionReq,
}

impl Dependency {
    /// A dependency on `name` at versions matching `requirement` (semver
    /// syntax; panics on a malformed requirement, which is a programming
    /// error in the plugin declaring it).
    pub fn new(name: impl Into<String>, requirement: &str) -> Self {
        let requirement = VersionReq::parse(requirement)
            .unwrap_or_else(|e| panic!("malformed version requirement {requirement:?}: {e}"));
        Dependency { name: name.into(), requirement }
    }
}

/// What a plugin may touch. Checked by the chain on every action, for native
/// and sandboxed plugins alike: an action outside the set is refused (the
/// message is dead-lettered naming the plugin and the refusal, and the
/// refusal counts as a failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    /// Topics whose messages it may process (a chain placing it on a topic
    /// outside these is refused when the chain is built).
    pub read: Vec<Pattern>,
    /// Topics it may publish to (a replaced message whose topic changed, a
    /// routed message).
    pub publish: Vec<Pattern>,
    /// Headers it may add, change or remove (`None`: any).
    pub headers: Option<Vec<String>>,
}

impl Permissions {
    /// Everything: any topic, any header.
    pub fn all() -> Self {
        let any = Pattern::new(">").expect("valid pattern");
        Permissions { read: vec![any.clone()], publish: vec![any], headers: None }
    }

    /// Reads `read`, publishes nowhere else, touches no header.
    pub fn read_only(read: &[&str]) -> Result<Self, kaelix_broker::topic::TopicError> {
        Ok(Permissions {
            read: read.iter().map(Pattern::new).collect::<Result<_, _>>()?,
            publish: Vec::new(),
            headers: Some(Vec::new()),
        })
    }

    /// Whether it may process messages of `topic`.
    pub fn may_read(&self, topic: &Topic) -> bool {
        self.read.iter().any(|p| p.matches(topic))
    }

    /// Whether it may read every topic `pattern` matches (a chain's pattern).
    pub fn may_read_pattern(&self, pattern: &Pattern) -> bool {
        self.read.iter().any(|p| covers(p, pattern))
    }

    /// Whether it may publish to `topic`.
    pub fn may_publish(&self, topic: &Topic) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }

    /// Whether it may touch header `name`.
    pub fn may_touch_header(&self, name: &str) -> bool {
        self.headers.as_ref().is_none_or(|allowed| allowed.iter().any(|h| h == name))
    }

    /// The first header that differs between `before` and `after` and that
    /// it may not touch.
    pub fn forbidden_header_change(&self, before: &Message, after: &Message) -> Option<String> {
        // Any header may change: nothing to compare.
        self.headers.as_ref()?;
        let (b, a) = (before.headers(), after.headers());
        for (name, value) in a.iter() {
            if b.get(name) != Some(value) && !self.may_touch_header(name) {
                return Some(name.to_owned());
            }
        }
        b.iter().find(|(name, _)| a.get(name).is_none() && !self.may_touch_header(name)).map(|(n, _)| n.to_owned())
    }
}

/// Whether every topic `inner` matches is matched by `outer` (token by
/// token: `>` covers any tail, `*` covers one token or a `*`).
fn covers(outer: &Pattern, inner: &Pattern) -> bool {
    let mut o = outer.tokens();
    let mut i = inner.tokens();
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// What a plugin is handed at initialization.
#[derive(Clone, Debug, Default)]
pub struct PluginContext {
    /// Its configuration (key → value, from the server's configuration or
    /// the embedding program).
    pub config: BTreeMap<String, String>,
    /// The versions of the plugins it depends on, as resolved.
    pub dependencies: BTreeMap<String, Version>,
}

/// A builder holding every field of `message` (topic, payload, key,
/// headers, reply subject, origin, id, timestamp), to change some and build
/// the replacement.
pub fn rebuild(message: &Message) -> MessageBuilder {
    let mut b = Message::builder()
        .topic(message.topic().clone())
        .payload(message.payload().clone())
        .id(message.id())
        .timestamp(message.timestamp());
    if let Some(k) = message.key() {
        b = b.key(k.clone());
    }
    if let Some(r) = message.reply_to() {
        b = b.reply_to(r.clone());
    }
    if let Some(o) = message.origin() {
        b = b.origin(o);
    }
    if let Some(p) = message.partition() {
        b = b.partition(p);
    }
    for (name, value) in message.headers().iter() {
        b = b.header(name, value.clone());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn pattern_cover_is_token_wise() {
        assert!(covers(&p(">"), &p("a.b")));
        assert!(covers(&p("a.>"), &p("a.*.c")));
        assert!(covers(&p("a.*"), &p("a.b")));
        assert!(covers(&p("a.*"), &p("a.*")));
        assert!(!covers(&p("a.*"), &p("a.>")));
        assert!(!covers(&p("a.b"), &p("a.*")));
        assert!(!covers(&p("a.b"), &p("a.b.c")));
        assert!(!covers(&p("a.>"), &p("a")));
    }

    #[test]
    fn header_permissions_name_the_forbidden_header() {
        let perms = Permissions { headers: Some(vec!["tag".into()]), ..Permissions::all() };
        let before = Message::builder().topic("t").payload("x").header("keep", "1").build().unwrap();
        let tagged = rebuild(&before).header("tag", "2").build().unwrap();
        assert_eq!(perms.forbidden_header_change(&before, &tagged), None);
        let changed = rebuild(&before).header("keep", "2").build().unwrap();
        assert_eq!(perms.forbidden_header_change(&before, &changed), Some("keep".into()));
        let removed = Message::builder().topic("t").payload("x").build().unwrap();
        assert_eq!(perms.forbidden_header_change(&before, &removed), Some("keep".into()));
        assert_eq!(Permissions::all().forbidden_header_change(&before, &removed), None);
    }

    #[test]
    fn rebuild_keeps_every_field() {
        let m = Message::builder()
            .topic("t")
            .payload("x")
            .key("k")
            .reply_to("r")
            .origin(4)
            .header("h", "v")
            .build()
            .unwrap();
        let r = rebuild(&m).build().unwrap();
        assert_eq!(
            (r.id(), r.topic(), r.payload(), r.key(), r.reply_to(), r.origin()),
            (m.id(), m.topic(), m.payload(), m.key(), m.reply_to(), m.origin())
        );
        assert_eq!(r.headers().get("h"), Some(&bytes::Bytes::from_static(b"v")));
    }
}

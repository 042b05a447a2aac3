//! Topics and subscription patterns.
//!
//! A **topic** is a literal subject: dot-separated tokens, each 1 or more
//! printable ASCII characters other than `.`, `*` and `>` (so every subject
//! NATS clients commonly use — `_INBOX.x`, `$SYS.req`, `a/b:c` — is a
//! topic; spaces, control bytes and non-ASCII are not), at most [`MAX_TOPIC_BYTES`] bytes and
//! [`MAX_TOKENS`] tokens (`orders.eu.created`). A **pattern** may also use
//! `*` for exactly one token and, as its last token only, `>` for one or more
//! trailing tokens — the NATS rules (`orders.*.created`, `orders.>`).

use std::fmt;
use std::sync::Arc;

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;
/// Most tokens in a topic or pattern.
pub const MAX_TOKENS: usize = 32;

/// Why a topic or pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Nothing at all.
    #[error("topic is empty")]
    Empty,
    /// Too long.
    #[error("topic {topic:?} is {len} bytes; the limit is {MAX_TOPIC_BYTES}")]
    TooLong {
        /// The start of the topic (truncated for display).
        topic: String,
        /// Its length.
        len: usize,
    },
    /// Too many tokens.
    #[error("topic {topic:?} has {count} tokens; the limit is {MAX_TOKENS}")]
    TooManyTokens {
        /// The topic.
        topic: String,
        /// Its token count.
        count: usize,
    },
    /// Two dots in a row, or a leading / trailing dot.
    #[error("topic {topic:?} has an empty token at position {position}")]
    EmptyToken {
        /// The topic.
        topic: String,
        /// Zero-based token index.
        position: usize,
    },
    /// A character that is not printable ASCII, or `.`/`*`/`>` inside a token (a misplaced wildcard).
    #[error(
        "topic {topic:?}: character {ch:?} at byte {at} is not allowed (tokens are printable ASCII without . * >{wildcards})"
    )]
    BadChar {
        /// The topic.
        topic: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
        /// Which wildcards would have been allowed here.
        wildcards: &'static str,
    },
    /// `>` somewhere other than the last token.
    #[error("pattern {pattern:?}: '>' may only be the last token")]
    TailNotLast {
        /// The pattern.
        pattern: String,
    },
}

fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

fn token_char_ok(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'*' && b != b'>'
}

/// Checks `s` as a topic (`wildcards` false) or a pattern (true).
fn validate(s: &str, wildcards: bool) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { topic: shorten(s), len: s.len() });
    }
    let count = s.split('.').count();
    if count > MAX_TOKENS {
        return Err(TopicError::TooManyTokens { topic: s.to_owned(), count });
    }
    let mut offset = 0;
    for (position, token) in s.split('.').enumerate() {
        if token.is_empty() {
            return Err(TopicError::EmptyToken { topic: s.to_owned(), position });
        }
        let wildcard = wildcards && (token == "*" || token == ">");
        if token == ">" && wildcards && position + 1 != count {
            return Err(TopicError::TailNotLast { pattern: s.to_owned() });
        }
        if !wildcard
            && let Some((i, ch)) = token.char_indices().find(|&(_, c)| !c.is_ascii() || !token_char_ok(c as u8))
        {
            let allowed = if wildcards { ", or a whole token * or a final >" } else { "" };
            return Err(TopicError::BadChar { topic: s.to_owned(), ch, at: offset + i, wildcards: allowed });
        }
        offset += token.len() + 1;
    }
    Ok(())
}

/// A validated literal topic. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `s` as a topic.
    pub fn new(s: impl AsRef<str>) -> Result<Topic, TopicError> {
        let s = s.as_ref();
        validate(s, false)?;
        Ok(Topic(Arc::from(s)))
    }

    /// The topic as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tokens, in order.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.0)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Topic {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topic::new(s)
    }
}

/// A validated subscription pattern (a topic, or one with `*` / `>`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pattern(Arc<str>);

/// Ordered, compared and hashed as its text (the derives above), so maps
/// keyed by patterns are looked up by `&str`.
impl std::borrow::Borrow<str> for Pattern {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Pattern {
    /// Validates `s` as a pattern.
    pub fn new(s: impl AsRef<str>) -> Result<Pattern, TopicError> {
        let s = s.as_ref();
        validate(s, true)?;
        Ok(Pattern(Arc::from(s)))
    }

    /// The pattern as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tokens, in order.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// Whether the pattern has no wildcard (matches exactly one topic).
    pub fn is_literal(&self) -> bool {
        self.tokens().all(|t| t != "*" && t != ">")
    }

    /// Whether `topic` matches: token by token, `*` matching any one token
    /// and a final `>` one or more. Called per message on hot paths (chains,
    /// permissions, routing), so it walks both strings once, byte by byte,
    /// with no token slicing: validation guarantees `*` and `>` only ever
    /// stand as whole tokens, so meeting one at a token start is enough.
    pub fn matches(&self, topic: &Topic) -> bool {
        let (p, t) = (self.0.as_bytes(), topic.0.as_bytes());
        let (mut i, mut j) = (0, 0);
        // Invariant at the top of the loop: `i` and `j` start a token of
        // the pattern and of the topic, and every earlier token matched.
        loop {
            match p[i] {
                b'>' => return true,
                b'*' => {
                    i += 1;
                    while j < t.len() && t[j] != b'.' {
                        j += 1;
                    }
                }
                _ => {
                    while i < p.len() && p[i] != b'.' {
                        if j == t.len() || t[j] != p[i] {
                            return false;
                        }
                        i += 1;
                        j += 1;
                    }
                    if j < t.len() && t[j] != b'.' {
                        return false;
                    }
                }
            }
            // Both at a dot or at their end.
            match (i == p.len(), j == t.len()) {
                (true, true) => return true,
                (false, false) => (i, j) = (i + 1, j + 1),
                _ => return false,
            }
        }
    }
}

impl From<Topic> for Pattern {
    fn from(t: Topic) -> Self {
        Pattern(t.0)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({})", self.0)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Pattern {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_validate_with_clear_errors() {
        assert!(Topic::new("orders.eu.created").is_ok());
        assert!(Topic::new("a_b-c.D9").is_ok());
        assert_eq!(Topic::new("").unwrap_err(), TopicError::Empty);
        assert_eq!(
            Topic::new("orders..created").unwrap_err().to_string(),
            "topic \"orders..created\" has an empty token at position 1"
        );
        assert_eq!(
            Topic::new("orders.*").unwrap_err().to_string(),
            "topic \"orders.*\": character '*' at byte 7 is not allowed (tokens are printable ASCII without . * >)"
        );
        assert!(matches!(Topic::new("a".repeat(256)), Err(TopicError::TooLong { len: 256, .. })));
        assert!(matches!(Topic::new(vec!["a"; 33].join(".")), Err(TopicError::TooManyTokens { count: 33, .. })));
        assert!(matches!(Topic::new("é"), Err(TopicError::BadChar { ch: 'é', .. })));
        assert!(matches!(Topic::new("a b"), Err(TopicError::BadChar { ch: ' ', at: 1, .. })));
        assert!(matches!(Topic::new("a\tb"), Err(TopicError::BadChar { ch: '\t', .. })));
        // Subjects NATS clients use every day are topics.
        for subject in ["_INBOX.Xy12.3", "$SYS.REQ.SERVER.PING", "a/b:c", "ns=1.k@v", "x#y"] {
            assert!(Topic::new(subject).is_ok(), "{subject}");
        }
    }

    #[test]
    fn patterns_follow_nats_rules() {
        let p = |s| Pattern::new(s).unwrap();
        let t = |s| Topic::new(s).unwrap();
        assert!(p("orders.*.created").matches(&t("orders.eu.created")));
        assert!(!p("orders.*.created").matches(&t("orders.eu.west.created")));
        assert!(p("orders.>").matches(&t("orders.eu")));
        assert!(p("orders.>").matches(&t("orders.eu.west.created")));
        assert!(!p("orders.>").matches(&t("orders")), "> needs at least one token");
        assert!(p(">").matches(&t("anything.at.all")));
        assert!(!p("orders").matches(&t("orders.eu")));
        assert!(p("orders").is_literal() && !p("orders.*").is_literal());
        assert_eq!(Pattern::new("a.>.b").unwrap_err(), TopicError::TailNotLast { pattern: "a.>.b".into() });
        assert!(Pattern::new("a.b*").is_err(), "a wildcard must be a whole token");
    }

    /// The definition, token by token over split strings (what `matches`
    /// computes without splitting).
    fn matches_by_tokens(pattern: &Pattern, topic: &Topic) -> bool {
        let mut topic_tokens = topic.tokens();
        for p in pattern.tokens() {
            match (p, topic_tokens.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (p, Some(t)) if p == t => {}
                _ => return false,
            }
        }
        topic_tokens.next().is_none()
    }

    proptest::proptest! {
        /// Over small alphabets (so tokens collide often) and every
        /// wildcard position, `matches` agrees with the definition.
        #[test]
        fn matches_agrees_with_the_token_definition(
            topic in proptest::collection::vec("[ab]{1,2}", 1..5),
            pattern in proptest::collection::vec("[ab]{1,2}|\\*", 1..5),
            tail in proptest::bool::ANY,
        ) {
            let topic = Topic::new(topic.join(".")).unwrap();
            let mut pattern = pattern.join(".");
            if tail {
                pattern.push_str(".>");
            }
            let pattern = Pattern::new(pattern).unwrap();
            proptest::prop_assert_eq!(pattern.matches(&topic), matches_by_tokens(&pattern, &topic), "{} vs {}", pattern, topic);
        }
    }
}

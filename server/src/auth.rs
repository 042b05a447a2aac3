//! Who may connect, and what each user may publish and subscribe to.
//!
//! Three modes, from the `[auth]` section of the configuration:
//! * none configured: anyone connects and may do anything;
//! * `token`: a client must send that token (`CONNECT.auth_token`);
//! * `users`: a client must name a configured user and its password
//!   (stored as a bcrypt hash, never in clear). Once users are configured
//!   nobody connects anonymously (deny by default).
//!
//! A user may carry permissions: `publish` and `subscribe`, each with
//! `allow` and `deny` lists of subjects with wildcards. A subject is
//! permitted when the allow list is absent or one of its entries covers it,
//! and no deny entry covers it; deny wins. For a subscription with
//! wildcards, "covers" means every subject the subscription could match is
//! matched by the entry (`orders.>` covers `orders.*.eu`); deliveries of
//! subjects a deny entry matches are filtered out of wider subscriptions,
//! so `subscribe = { allow = [">"], deny = ["secret.>"] }` never shows a
//! `secret.x` message.

use kaelix_broker::topic::{Pattern, Topic};
use serde::{Deserialize, Serialize};

/// The `[auth]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A shared token (mutually exclusive with `users`).
    #[serde(default)]
    pub token: Option<String>,
    /// Users with bcrypt-hashed passwords.
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

/// One user.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name (`CONNECT.user`).
    pub user: String,
    /// The password's bcrypt hash (`$2b$...`; make one with any bcrypt tool).
    pub password: String,
    /// What the user may publish to (absent: anything).
    #[serde(default)]
    pub publish: Option<SubjectRules>,
    /// What the user may subscribe to (absent: anything).
    #[serde(default)]
    pub subscribe: Option<SubjectRules>,
}

/// Allow and deny lists of subjects (wildcards allowed).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubjectRules {
    /// Permitted subjects (absent: everything not denied).
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Refused subjects (wins over `allow`).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Rules compiled to patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    allow: Option<Vec<Pattern>>,
    deny: Vec<Pattern>,
}

/// What an authenticated connection may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Publishing.
    pub publish: Rules,
    /// Subscribing.
    pub subscribe: Rules,
}

/// Whether every subject `inner` matches is matched by `outer`.
pub fn covers(outer: &Pattern, inner: &Pattern) -> bool {
    let mut o = outer.as_str().split('.');
    let mut i = inner.as_str().split('.');
    loop {
        match (o.next(), i.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(a), Some(b)) if a == b && a != "*" && a != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both `a` and `b`.
pub fn overlaps(a: &Pattern, b: &Pattern) -> bool {
    let mut a = a.as_str().split('.');
    let mut b = b.as_str().split('.');
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Rules {
    fn compile(rules: &SubjectRules, key: &str) -> Result<Rules, String> {
        let parse = |s: &String| Pattern::new(s).map_err(|e| format!("{key}: {e}"));
        Ok(Rules {
            allow: rules.allow.as_ref().map(|a| a.iter().map(parse).collect()).transpose()?,
            deny: rules.deny.iter().map(parse).collect::<Result<_, _>>()?,
        })
    }

    /// Whether publishing to `topic` is permitted.
    pub fn permits_topic(&self, topic: &Topic) -> bool {
        self.allow.as_ref().is_none_or(|a| a.iter().any(|p| p.matches(topic)))
            && !self.deny.iter().any(|p| p.matches(topic))
    }

    /// Whether subscribing to `pattern` is permitted.
    pub fn permits_pattern(&self, pattern: &Pattern) -> bool {
        self.allow.as_ref().is_none_or(|a| a.iter().any(|p| covers(p, pattern)))
            && !self.deny.iter().any(|p| covers(p, pattern))
    }

    /// Whether subscribing to `pattern` is permitted with nothing to
    /// filter: covered by an allow entry and overlapping no deny entry (the
    /// native protocol's rule; it delivers whole ranges of a log, so it
    /// cannot drop single denied messages as a NATS delivery does).
    pub fn permits_whole_pattern(&self, pattern: &Pattern) -> bool {
        self.allow.as_ref().is_none_or(|a| a.iter().any(|p| covers(p, pattern)))
            && !self.deny.iter().any(|p| overlaps(p, pattern))
    }

    /// Whether a delivery of `topic` passes the deny list (for wide
    /// subscriptions that a deny entry narrows).
    pub fn delivers(&self, topic: &Topic) -> bool {
        !self.deny.iter().any(|p| p.matches(topic))
    }

    /// Whether there is anything to check at all.
    pub fn is_open(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }
}

/// Why a login failed (the client only ever sees "Authorization
/// Violation"; the log gets this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No or wrong token.
    BadToken,
    /// No such user, or no user given.
    UnknownUser,
    /// Wrong password.
    BadPassword,
}

/// The compiled `[auth]` section.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    token: Option<String>,
    users: Vec<(String, String, Permissions)>,
}

impl Authenticator {
    /// Checks and compiles the configuration.
    pub fn new(config: &AuthConfig) -> Result<Authenticator, String> {
        if config.token.is_some() && !config.users.is_empty() {
            return Err("auth: configure either token or users, not both".into());
        }
        let mut users = Vec::new();
        for (i, u) in config.users.iter().enumerate() {
            if !u.password.starts_with("$2") {
                return Err(format!("auth.users[{i}].password: not a bcrypt hash (it must start with $2)"));
            }
            if users.iter().any(|(name, _, _)| *name == u.user) {
                return Err(format!("auth.users[{i}].user: {:?} is configured twice", u.user));
            }
            let permissions = Permissions {
                publish: Rules::compile(&u.publish.clone().unwrap_or_default(), &format!("auth.users[{i}].publish"))?,
                subscribe: Rules::compile(
                    &u.subscribe.clone().unwrap_or_default(),
                    &format!("auth.users[{i}].subscribe"),
                )?,
            };
            users.push((u.user.clone(), u.password.clone(), permissions));
        }
        Ok(Authenticator { token: config.token.clone(), users })
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        self.token.is_some() || !self.users.is_empty()
    }

    /// Checks a `CONNECT`'s credentials.
    pub fn login(&self, token: Option<&str>, user: Option<&str>, pass: Option<&str>) -> Result<Permissions, Refusal> {
        if let Some(expected) = &self.token {
            return if token.is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes())) {
                Ok(Permissions::default())
            } else {
                Err(Refusal::BadToken)
            };
        }
        if self.users.is_empty() {
            return Ok(Permissions::default());
        }
        let user = user.ok_or(Refusal::UnknownUser)?;
        let (_, hash, permissions) = self.users.iter().find(|(name, _, _)| name == user).ok_or(Refusal::UnknownUser)?;
        match bcrypt::verify(pass.unwrap_or(""), hash) {
            Ok(true) => Ok(permissions.clone()),
            _ => Err(Refusal::BadPassword),
        }
    }
}

/// Compares without an early exit on the first differing byte, so the time
/// taken does not tell an attacker how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn overlap_means_a_subject_matches_both() {
        assert!(overlaps(&p(">"), &p("a.b")));
        assert!(overlaps(&p("a.*"), &p("*.b")));
        assert!(overlaps(&p("a.>"), &p("a.b.c")));
        assert!(overlaps(&p("secret.>"), &p("*.x")));
        assert!(!overlaps(&p("a.*"), &p("b.*")));
        assert!(!overlaps(&p("a.*"), &p("a.b.c")));
        assert!(!overlaps(&p("a.>"), &p("a")));
        let rules = Rules { allow: None, deny: vec![p("secret.>")] };
        assert!(rules.permits_pattern(&p(">")), "NATS filters the denied deliveries");
        assert!(!rules.permits_whole_pattern(&p(">")), "the native protocol cannot");
        assert!(rules.permits_whole_pattern(&p("orders.>")));
    }

    #[test]
    fn coverage_follows_wildcards() {
        assert!(covers(&p(">"), &p("a.b")));
        assert!(covers(&p("orders.>"), &p("orders.*.eu")));
        assert!(covers(&p("orders.*"), &p("orders.eu")));
        assert!(covers(&p("orders.*"), &p("orders.*")));
        assert!(!covers(&p("orders.*"), &p("orders.>")), "* is one token, > may be many");
        assert!(!covers(&p("orders.eu"), &p("orders.*")));
        assert!(!covers(&p("orders.>"), &p("orders")), "> needs a token");
        assert!(!covers(&p("a.b"), &p("a.b.c")));
    }

    #[test]
    fn deny_wins_and_filters_wide_subscriptions() {
        let rules = Rules::compile(&SubjectRules { allow: Some(vec![">".into()]), deny: vec!["secret.>".into()] }, "k")
            .unwrap();
        assert!(rules.permits_topic(&Topic::new("public.x").unwrap()));
        assert!(!rules.permits_topic(&Topic::new("secret.x").unwrap()));
        assert!(rules.permits_pattern(&p(">")), "a wide subscription is allowed…");
        assert!(!rules.delivers(&Topic::new("secret.plans").unwrap()), "…but denied subjects are filtered");
        assert!(!rules.permits_pattern(&p("secret.*")));
    }

    #[test]
    fn logins_check_tokens_and_bcrypt_passwords() {
        let token = Authenticator::new(&AuthConfig { token: Some("s3cret".into()), users: vec![] }).unwrap();
        assert!(token.required());
        assert!(token.login(Some("s3cret"), None, None).is_ok());
        assert_eq!(token.login(Some("s3cre"), None, None), Err(Refusal::BadToken));
        assert_eq!(token.login(None, None, None), Err(Refusal::BadToken));
        let hash = bcrypt::hash("pw", 4).unwrap();
        let users = Authenticator::new(&AuthConfig {
            token: None,
            users: vec![UserConfig {
                user: "alice".into(),
                password: hash,
                publish: Some(SubjectRules { allow: Some(vec!["orders.>".into()]), deny: vec![] }),
                subscribe: None,
            }],
        })
        .unwrap();
        let perms = users.login(None, Some("alice"), Some("pw")).unwrap();
        assert!(perms.publish.permits_topic(&Topic::new("orders.eu").unwrap()));
        assert!(!perms.publish.permits_topic(&Topic::new("payments").unwrap()));
        assert!(perms.subscribe.is_open());
        assert_eq!(users.login(None, Some("alice"), Some("nope")), Err(Refusal::BadPassword));
        assert_eq!(users.login(None, Some("bob"), Some("pw")), Err(Refusal::UnknownUser));
        assert_eq!(users.login(None, None, None), Err(Refusal::UnknownUser), "no anonymous access with users");
        assert!(Authenticator::new(&AuthConfig { token: Some("t".into()), users: users_cfg() }).is_err());
    }

    fn users_cfg() -> Vec<UserConfig> {
        vec![UserConfig { user: "u".into(), password: "$2b$04$x".into(), publish: None, subscribe: None }]
    }
}

//! One NATS connection's protocol state, sans-IO.
//!
//! The driver ([`super::serve_connection`]) feeds it what the client sent
//! ([`Session::handle_bytes`]) and the passing of time
//! ([`Session::handle_timeout`]); the session answers with [`Action`]s
//! ([`Session::poll_output`]), which the driver performs **in order** —
//! that order is the protocol's: a `PONG` follows every publish read
//! before its `PING`, a `+OK` follows its operation.
//!
//! The session knows the client's options (`CONNECT`) and its keep-alive
//! state (subscriptions live in the broker, on the connection's sink: see
//! [`super::delivery`]; the driver checks the subscription limit and
//! duplicate sids there): a `PING` every `ping_interval`, and after
//! `max_pings_out` unanswered ones the connection is stale. Before
//! `CONNECT` only `CONNECT` (and `PING`) is accepted, within the auth
//! timeout.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use kaelix_broker::topic::{Pattern, Topic};
use kaelix_core::time::Instant;
use kaelix_nats::{ClientOp, Connect, Parser, ProtoError};

use crate::auth::{Authenticator, Permissions, Rules};
use crate::config::Limits;

/// What the driver must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a control reply.
    Reply(Reply),
    /// Publish (store or relay); then, if `ok`, send `+OK` once stored.
    Publish {
        /// The subject as a topic.
        topic: Topic,
        /// Where answers go.
        reply: Option<Topic>,
        /// The raw NATS header block (`HPUB`).
        headers: Option<Bytes>,
        /// The body.
        payload: Bytes,
        /// Verbose mode: answer `+OK` once the publish is stored.
        ok: bool,
    },
    /// Start delivering `pattern` (to one member of `queue`) as `sid`;
    /// then, if `ok`, send `+OK` (unless the subscription is refused).
    Subscribe {
        /// The client's subscription id.
        sid: Bytes,
        /// What to match.
        pattern: Pattern,
        /// The queue group.
        queue: Option<String>,
        /// Deliveries of subjects these rules deny are filtered out.
        filter: Rules,
        /// Verbose mode.
        ok: bool,
    },
    /// Stop `sid` after `max` deliveries in total (`None`: now).
    Unsubscribe {
        /// The subscription.
        sid: Bytes,
        /// Total deliveries after which it ends.
        max: Option<u64>,
    },
    /// Send `PONG` once every publish performed so far is stored.
    PongWhenStored,
    /// Send `-ERR '<text>'` (if any) and close the connection.
    Close {
        /// The error text.
        error: Option<&'static str>,
        /// Why, for the log.
        reason: String,
    },
}

/// A control reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// `PING` (keep-alive).
    Ping,
    /// `PONG` (to a client `PING` before `CONNECT`, which needs no barrier).
    Pong,
    /// `-ERR '<text>'`, connection stays open.
    Err(&'static str),
    /// `-ERR 'Permissions Violation for <what> to "<subject>"'`, connection
    /// stays open (nats-server's text).
    PermissionViolation {
        /// `Publish` or `Subscription`.
        what: &'static str,
        /// The refused subject.
        subject: String,
    },
}

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `INFO` sent, `CONNECT` due before the deadline.
    AwaitingConnect { deadline: Instant },
    /// Connected.
    Open,
    /// Closing: nothing more is read.
    Closed,
}

/// One connection's protocol state.
pub struct Session {
    parser: Parser,
    limits: Limits,
    phase: Phase,
    options: Connect,
    pings_out: u32,
    next_ping: Instant,
    outputs: VecDeque<Action>,
    auth: Arc<Authenticator>,
    permissions: Permissions,
    /// Set by a successful CONNECT until the driver takes it (the server
    /// re-checks it when the configuration is reloaded).
    new_login: Option<Login>,
    /// The subject of the last valid `PUB` as a topic, and whether the
    /// client may publish to it: a publisher usually repeats its subject,
    /// and then it is neither validated nor allocated again.
    last_subject: Option<(Topic, bool)>,
}

/// The credentials a client logged in with and what they granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// CONNECT `auth_token`.
    pub token: Option<String>,
    /// CONNECT `user`.
    pub user: Option<String>,
    /// CONNECT `pass`.
    pub pass: Option<String>,
    /// The permissions granted.
    pub permissions: Permissions,
}

impl Session {
    /// A session whose `INFO` was just sent at `now`.
    pub fn new(now: Instant, limits: Limits, auth: Arc<Authenticator>) -> Self {
        let parser = Parser::with_limits(kaelix_nats::Limits {
            max_control_line: limits.max_control_line,
            max_payload: limits.max_payload,
        });
        Session {
            parser,
            phase: Phase::AwaitingConnect { deadline: now + limits.auth_timeout() },
            next_ping: now + limits.ping_interval(),
            limits,
            options: Connect::default(),
            pings_out: 0,
            outputs: VecDeque::new(),
            auth,
            permissions: Permissions::default(),
            new_login: None,
            last_subject: None,
        }
    }

    /// The client's `CONNECT` options (defaults until it arrives).
    pub fn options(&self) -> &Connect {
        &self.options
    }

    /// The login of a CONNECT just accepted (once).
    pub fn take_login(&mut self) -> Option<Login> {
        self.new_login.take()
    }

    /// The configuration changed and this client's login is refused or
    /// grants other permissions now: tell it and close (it reconnects
    /// under the new rules).
    pub fn revoke(&mut self) {
        if !self.is_closed() {
            self.close(
                Some("Authorization Violation"),
                "login no longer permitted after a configuration reload".into(),
            );
        }
    }

    /// Whether the session is closing (the driver stops reading).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Bytes the client sent.
    pub fn handle_bytes(&mut self, now: Instant, chunk: &[u8]) {
        self.handle_chunk(now, Bytes::copy_from_slice(chunk));
    }

    /// [`Session::handle_bytes`] for a chunk the caller hands over (parsed
    /// in place when it can be).
    pub fn handle_chunk(&mut self, _now: Instant, chunk: Bytes) {
        if self.is_closed() {
            return;
        }
        self.parser.push_bytes(chunk);
        while let Some(parsed) = self.parser.next() {
            match parsed {
                Ok(op) => self.handle_op(op),
                Err(e) => self.handle_error(&e),
            }
            if self.is_closed() {
                return;
            }
        }
    }

    fn handle_error(&mut self, e: &ProtoError) {
        if e.is_fatal() {
            self.close(Some(e.err_text()), format!("protocol error: {e}"));
        } else {
            self.outputs.push_back(Action::Reply(Reply::Err(e.err_text())));
        }
    }

    fn close(&mut self, error: Option<&'static str>, reason: String) {
        self.phase = Phase::Closed;
        self.outputs.push_back(Action::Close { error, reason });
    }

    fn handle_op(&mut self, op: ClientOp) {
        if let Phase::AwaitingConnect { .. } = self.phase {
            match op {
                ClientOp::Connect(connect) => {
                    if connect.no_responders && !connect.headers {
                        // nats-server refuses this combination: the 503
                        // status needs headers.
                        self.close(
                            Some("no responders requires headers support"),
                            "CONNECT: no_responders without headers".into(),
                        );
                        return;
                    }
                    let login = self.auth.login(
                        connect.auth_token.as_deref(),
                        connect.user.as_deref(),
                        connect.pass.as_deref(),
                    );
                    match login {
                        Ok(permissions) => {
                            self.new_login = Some(Login {
                                token: connect.auth_token.clone(),
                                user: connect.user.clone(),
                                pass: connect.pass.clone(),
                                permissions: permissions.clone(),
                            });
                            self.permissions = permissions;
                        }
                        Err(refusal) => {
                            let who = connect.user.clone().unwrap_or_default();
                            self.close(
                                Some("Authorization Violation"),
                                format!("login refused ({refusal:?}) user {who:?}"),
                            );
                            return;
                        }
                    }
                    self.options = *connect;
                    self.phase = Phase::Open;
                    self.ok();
                }
                ClientOp::Ping => self.outputs.push_back(Action::Reply(Reply::Pong)),
                _ => self.close(Some("Authorization Violation"), "operation before CONNECT".into()),
            }
            return;
        }
        match op {
            ClientOp::Connect(_) => {
                // A second CONNECT changes nothing we honour; accept it as
                // nats-server does.
                self.ok();
            }
            ClientOp::Pub(p) => {
                let (topic, permitted) = match &self.last_subject {
                    Some((topic, permitted)) if topic.as_str().as_bytes() == &p.subject[..] => {
                        (topic.clone(), *permitted)
                    }
                    _ => {
                        let topic = match std::str::from_utf8(&p.subject)
                            .map_err(|e| e.to_string())
                            .and_then(|s| Topic::new(s).map_err(|e| e.to_string()))
                        {
                            Ok(t) => t,
                            Err(_) => {
                                return self.outputs.push_back(Action::Reply(Reply::Err("Invalid Publish Subject")));
                            }
                        };
                        // The permissions are fixed for the session (a
                        // reload that changes them closes it).
                        let permitted = self.permissions.publish.permits_topic(&topic);
                        self.last_subject = Some((topic.clone(), permitted));
                        (topic, permitted)
                    }
                };
                let reply =
                    match p.reply.as_deref().map(|r| std::str::from_utf8(r).ok().and_then(|s| Topic::new(s).ok())) {
                        None => None,
                        Some(Some(r)) => Some(r),
                        Some(None) => {
                            return self.outputs.push_back(Action::Reply(Reply::Err("Invalid Reply Subject")));
                        }
                    };
                if !permitted {
                    let subject = topic.as_str().to_owned();
                    return self
                        .outputs
                        .push_back(Action::Reply(Reply::PermissionViolation { what: "Publish", subject }));
                }
                if p.headers.is_some() && !self.options.headers {
                    // The client did not negotiate headers.
                    return self.outputs.push_back(Action::Reply(Reply::Err("Headers Not Negotiated")));
                }
                self.outputs.push_back(Action::Publish {
                    topic,
                    reply,
                    headers: p.headers,
                    payload: p.payload,
                    ok: self.options.verbose,
                });
            }
            ClientOp::Sub(s) => {
                let pattern = match std::str::from_utf8(&s.subject).ok().and_then(|s| Pattern::new(s).ok()) {
                    Some(p) => p,
                    None => return self.outputs.push_back(Action::Reply(Reply::Err("Invalid Subject"))),
                };
                let queue = match s.queue.as_deref().map(|q| std::str::from_utf8(q).map(str::to_owned)) {
                    None => None,
                    Some(Ok(q)) => Some(q),
                    Some(Err(_)) => return self.outputs.push_back(Action::Reply(Reply::Err("Invalid Queue Name"))),
                };
                if !self.permissions.subscribe.permits_pattern(&pattern) {
                    let subject = pattern.as_str().to_owned();
                    return self
                        .outputs
                        .push_back(Action::Reply(Reply::PermissionViolation { what: "Subscription", subject }));
                }
                let filter = self.permissions.subscribe.clone();
                let ok = self.options.verbose;
                self.outputs.push_back(Action::Subscribe { sid: s.sid, pattern, queue, filter, ok });
            }
            ClientOp::Unsub(u) => {
                // UNSUB of an unknown sid is not an error (the
                // subscription may have ended by itself).
                self.outputs.push_back(Action::Unsubscribe { sid: u.sid, max: u.max_msgs.filter(|&m| m > 0) });
                self.ok();
            }
            ClientOp::Ping => self.outputs.push_back(Action::PongWhenStored),
            ClientOp::Pong => self.pings_out = 0,
        }
    }

    fn ok(&mut self) {
        if self.options.verbose && self.phase == Phase::Open {
            self.outputs.push_back(Action::Reply(Reply::Ok));
        }
    }

    /// Time passed: the auth deadline and the keep-alive.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingConnect { deadline } if now >= deadline => {
                self.close(Some("Authentication Timeout"), "no CONNECT within the auth timeout".into());
            }
            Phase::Open if now >= self.next_ping => {
                if self.pings_out >= self.limits.max_pings_out {
                    self.close(Some("Stale Connection"), format!("{} PINGs unanswered", self.pings_out));
                } else {
                    self.pings_out += 1;
                    self.next_ping = now + self.limits.ping_interval();
                    self.outputs.push_back(Action::Reply(Reply::Ping));
                }
            }
            _ => {}
        }
    }

    /// The next deadline ([`Session::handle_timeout`] is due then).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingConnect { deadline } => Some(deadline),
            Phase::Open => Some(self.next_ping),
            Phase::Closed => None,
        }
    }

    /// The next action.
    pub fn poll_output(&mut self) -> Option<Action> {
        self.outputs.pop_front()
    }
}

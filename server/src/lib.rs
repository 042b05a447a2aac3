//! The Kaelix server: the broker behind network front ends.
//!
//! [`Server::start`] opens the broker on the runtime's storage (recovering
//! every durable topic), creates the configured topics, binds the
//! listeners and accepts clients until [`Server::shutdown`]. It is written
//! against the runtime contract only, so the same server runs on the real
//! executor (`kaelix serve`) and inside the simulator (the `serve`
//! scenario).
//!
//! Front ends:
//! * [`nats`]: the NATS client protocol, so unchanged NATS clients publish
//!   and subscribe. NATS subjects and broker topics are one namespace: a
//!   subject that names a configured topic is stored there (and the
//!   connection's next `PONG` or `+OK` waits until it is), any other subject
//!   is relayed to live subscribers only, as core NATS does.
//! * [`native`]: Kaelix's own protocol (`PROTOCOL.md`), spoken by
//!   `kaelix-client`: produce with acknowledgement levels, fetch with long
//!   poll, push subscriptions with credit, consumer groups, topic
//!   administration. Both front ends share the broker, so a message a NATS
//!   client publishes on a topic is fetched by a native consumer and the
//!   other way round.
//!
//! Each connection is a few tasks: a reader that parses and acts, a writer
//! that drains the connection's [`outbound::Outbound`] buffer, and one pump
//! per subscription that moves messages from the broker into that buffer.
//! A slow reader fills only its own buffer (see [`config::SlowConsumerPolicy`]).
//!
//! **Reconfiguration.** [`Server::reconfigure`] takes the reloadable part of
//! a new configuration ([`ServerConfig::RELOADABLE`]) while serving: the
//! limits (read through an `ArcSwap`, so the hot path takes no lock; a new
//! connection gets the new limits, an open one keeps those its `INFO`
//! announced, except `max_connections` and `max_subscriptions`, checked at
//! each accept and subscribe), users and permissions (every open NATS login
//! is checked again: one the new rules refuse, or whose permissions
//! changed, is told `-ERR 'Authorization Violation'` and closed, and
//! reconnects under the new rules; native logins alike, told with an
//! `Unauthorized` error frame), and topics' retention (applied at once).

pub mod auth;
pub mod cluster_member;
pub mod config;
pub mod native;
pub mod nats;
pub mod outbound;
pub mod plugins;
pub mod shutdown;
pub mod tls;
pub mod trace;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use kaelix_broker::{Broker, BrokerConfig, BrokerError, durable::DurableError};
use kaelix_core::runtime::{ByteListener, NetError, Priority, Runtime};
use kaelix_core::time::Duration;

pub use self::config::ServerConfig;
use self::shutdown::Signal;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    /// The data directory could not be recovered.
    #[error("recovering the data directory: {0}")]
    Storage(#[from] DurableError),
    /// A configured topic could not be created.
    #[error("configured topic {topic}: {error}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        error: BrokerError,
    },
    /// The TLS certificate, key or CA could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    /// A listener could not bind.
    #[error("{listener} listener on {addr}: {error}")]
    Bind {
        /// Which listener.
        listener: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        error: NetError,
    },
}

/// Counters of the server (telemetry exports them).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed as slow consumers.
    pub slow_consumer_closes: AtomicU64,
    /// Messages dropped for slow consumers (policy `drop`).
    pub slow_consumer_drops: AtomicU64,
    /// Connections closed for protocol errors.
    pub protocol_errors: AtomicU64,
    /// Connections closed as stale (unanswered PINGs).
    pub stale_closes: AtomicU64,
    /// Connections closed because a reloaded configuration no longer
    /// permits their login.
    pub revoked: AtomicU64,
    /// Reconfigurations applied.
    pub reconfigurations: AtomicU64,
    /// Bytes to and from NATS clients.
    pub nats: Traffic,
    /// Bytes to and from native clients.
    pub native: Traffic,
}

/// Bytes through one front end's connections: protocol bytes as the
/// connection's reader and writer see them (with TLS, the plaintext inside
/// the records; the plaintext NATS `INFO` included).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes read from clients.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients (counted once the write completed).
    pub bytes_out: AtomicU64,
}

/// What every connection task shares.
pub(crate) struct Shared<R: Runtime> {
    pub(crate) rt: R,
    pub(crate) broker: Broker<R>,
    /// The configuration in force (reloadable parts swap atomically).
    pub(crate) config: ArcSwap<ServerConfig>,
    pub(crate) stats: ServerStats,
    /// Raised by [`Server::shutdown`]: stop accepting, stop reading.
    pub(crate) stopping: Signal,
    /// Open connections: id → the signal that closes it.
    pub(crate) connections: Mutex<BTreeMap<u64, Signal>>,
    /// Raised whenever the last connection closes during shutdown.
    pub(crate) all_closed: Signal,
    pub(crate) next_connection: AtomicU64,
    /// This server's id (NATS `INFO.server_id`).
    pub(crate) server_id: String,
    /// Consumer-group members of native clients (they outlive connections).
    pub(crate) memberships: native::groups::Memberships<R>,
    /// Logins and permissions (swapped by a reconfiguration).
    pub(crate) auth: ArcSwap<auth::Authenticator>,
    /// Open NATS connections' logins, re-checked by a reconfiguration.
    pub(crate) logins: Mutex<BTreeMap<u64, nats::session::Login>>,
    /// Connections a reconfiguration closes for their login.
    pub(crate) revoked: Mutex<BTreeSet<u64>>,
    /// TLS for client connections.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

impl<R: Runtime> Shared<R> {
    /// The configuration in force (no lock).
    pub(crate) fn config(&self) -> Guard<Arc<ServerConfig>> {
        self.config.load()
    }

    /// The authenticator in force.
    pub(crate) fn auth(&self) -> Arc<auth::Authenticator> {
        self.auth.load_full()
    }

    /// Registers a new connection unless `max_connections` are open. The
    /// slot forgets it when dropped, so a connection task that never runs
    /// (refused by a full executor, cancelled at shutdown) frees its place.
    pub(crate) fn open_connection(self: &Arc<Self>) -> Option<(ConnectionSlot<R>, Signal)> {
        let mut open = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= self.config().limits.max_connections || self.stopping.is_raised() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed) + 1;
        let signal = Signal::new();
        open.insert(id, signal.clone());
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some((ConnectionSlot { shared: self.clone(), id }, signal))
    }

    /// Forgets a closed connection.
    fn close_connection(&self, id: u64) {
        let mut open = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&id);
        self.logins.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.revoked.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if open.is_empty() && self.stopping.is_raised() {
            self.all_closed.raise();
        }
    }
}

/// An open connection's place among `max_connections`; dropping it closes
/// the books on the connection.
pub(crate) struct ConnectionSlot<R: Runtime> {
    shared: Arc<Shared<R>>,
    pub(crate) id: u64,
}

impl<R: Runtime> Drop for ConnectionSlot<R> {
    fn drop(&mut self) {
        self.shared.close_connection(self.id);
    }
}

/// What [`Server::reconfigure`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Connections closed because their login is no longer permitted (or
    /// grants other permissions now).
    pub disconnected: usize,
    /// Topics whose retention changed.
    pub retention_changed: usize,
    /// Records removed by the new retention.
    pub records_removed: u64,
}

/// A running server (cheap to clone: a handle on shared state).
#[derive(Clone)]
pub struct Server<R: Runtime> {
    shared: Arc<Shared<R>>,
    nats_addr: SocketAddr,
    native_addr: SocketAddr,
}

impl<R: Runtime> Server<R> {
    /// Opens the broker on `rt`'s storage, creates the configured topics,
    /// binds the listeners and starts accepting.
    pub async fn start(rt: R, config: ServerConfig) -> Result<Server<R>, ServerError> {
        Self::start_with_hook(rt, config, None).await
    }

    /// [`Server::start`] with `hook` (plugin chains, see
    /// `kaelix_plugins::Chains`) in the broker's publish path from before
    /// the listeners accept: no client publish escapes it.
    pub async fn start_with_hook(
        rt: R,
        config: ServerConfig,
        hook: Option<Arc<dyn kaelix_broker::intercept::PublishHook>>,
    ) -> Result<Server<R>, ServerError> {
        config.validate()?;
        let broker = Broker::open_durable(rt.clone(), Self::broker_config(&config)).await?;
        Self::start_on(rt, config, hook, broker)
    }

    /// The broker settings a server's broker is opened with: subjects that
    /// name no configured topic are relayed, not stored (no auto-creation).
    pub fn broker_config(config: &ServerConfig) -> BrokerConfig {
        BrokerConfig { auto_create: None, planted: config.planted, ..BrokerConfig::default() }
    }

    /// [`Server::start_with_hook`] on a broker opened by the caller with
    /// [`Server::broker_config`] — a cluster member's, whose replicated
    /// topics are its Raft groups (`kaelix serve --cluster`). The
    /// configured topics it lacks are created on it; those it has (the
    /// replicated ones) are kept as they are.
    pub fn start_on(
        rt: R,
        config: ServerConfig,
        hook: Option<Arc<dyn kaelix_broker::intercept::PublishHook>>,
        broker: Broker<R>,
    ) -> Result<Server<R>, ServerError> {
        config.validate()?;
        broker.set_publish_hook(hook);
        if let Some(tracer) = trace::commit_tracer() {
            // Tracing is installed (`kaelix serve` only): a traced
            // replicated publish gets its `raft.commit` span.
            broker.set_commit_tracer(tracer);
        }
        for spec in &config.topics {
            if spec.storage == config::StorageChoice::Replicated {
                if broker.topic_config(&spec.topic()).is_none() {
                    return Err(ServerError::Topic {
                        topic: spec.name.clone(),
                        error: BrokerError::Message("a replicated topic is created by the cluster node".into()),
                    });
                }
                continue;
            }
            let topic_config = spec.topic_config();
            broker
                .create_topic(&spec.name, topic_config.clone())
                .map_err(|error| ServerError::Topic { topic: spec.name.clone(), error })?;
            // An existing durable topic keeps its recorded retention unless
            // the configuration says otherwise now.
            if broker.topic_config(&spec.topic()).is_some_and(|c| c.retention != topic_config.retention) {
                broker
                    .set_retention(&spec.topic(), topic_config.retention)
                    .map_err(|error| ServerError::Topic { topic: spec.name.clone(), error })?;
            }
        }
        let nats_listener = rt.bind_tcp(config.nats.listen).map_err(|error| ServerError::Bind {
            listener: "NATS",
            addr: config.nats.listen,
            error,
        })?;
        let nats_addr = nats_listener.local_addr();
        let native_listener = rt.bind_tcp(config.native.listen).map_err(|error| ServerError::Bind {
            listener: "native",
            addr: config.native.listen,
            error,
        })?;
        let native_addr = native_listener.local_addr();
        let mut id_rng = rt.rng();
        let server_id = format!("K{:016X}", kaelix_core::rng::RngExt::random::<u64>(&mut id_rng));
        let auth = ArcSwap::from_pointee(
            auth::Authenticator::new(&config.auth)
                .map_err(|why| ServerError::Config(config::ConfigError::Invalid { key: "auth".to_owned(), why }))?,
        );
        let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
        let shared = Arc::new(Shared {
            rt: rt.clone(),
            broker,
            config: ArcSwap::from_pointee(config),
            stats: ServerStats::default(),
            stopping: Signal::new(),
            connections: Mutex::new(BTreeMap::new()),
            all_closed: Signal::new(),
            next_connection: AtomicU64::new(0),
            server_id,
            memberships: native::groups::Memberships::default(),
            auth,
            logins: Mutex::new(BTreeMap::new()),
            revoked: Mutex::new(BTreeSet::new()),
            tls,
        });
        drop(rt.spawn(Priority::High, "nats-accept", nats::accept_loop(shared.clone(), nats_listener)));
        tracing::info!(addr = %nats_addr, "NATS listener ready");
        drop(rt.spawn(Priority::High, "native-accept", native::accept_loop(shared.clone(), native_listener)));
        drop(rt.spawn(Priority::Background, "native-group-sessions", native::groups::expire_sessions(shared.clone())));
        tracing::info!(addr = %native_addr, "native listener ready");
        Ok(Server { shared, nats_addr, native_addr })
    }

    /// Where the NATS listener is bound.
    pub fn nats_addr(&self) -> SocketAddr {
        self.nats_addr
    }

    /// Where the native-protocol listener is bound.
    pub fn native_addr(&self) -> SocketAddr {
        self.native_addr
    }

    /// The broker behind the server.
    pub fn broker(&self) -> &Broker<R> {
        &self.shared.broker
    }

    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    /// A cloneable view of the server for observers on other threads (the
    /// metrics exporter reads counters through it at scrape time).
    pub fn observer(&self) -> ServerObserver<R> {
        ServerObserver { shared: self.shared.clone() }
    }

    /// Consumer-group members native clients hold now.
    pub fn group_member_count(&self) -> usize {
        self.shared.memberships.len()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.shared.config.load_full()
    }

    /// Takes the reloadable part of `new` (see the crate docs and
    /// [`ServerConfig::RELOADABLE`]): limits, users and permissions, topics'
    /// retention. Everything else of `new` is ignored (it needs a
    /// restart). Open logins the new rules refuse, or to which they grant
    /// other permissions, are closed. An invalid `new` changes nothing.
    pub fn reconfigure(&self, new: &ServerConfig) -> Result<Reconfigured, ServerError> {
        new.validate()?;
        let authenticator = auth::Authenticator::new(&new.auth)
            .map_err(|why| ServerError::Config(config::ConfigError::Invalid { key: "auth".to_owned(), why }))?;
        let shared = &self.shared;
        let mut report = Reconfigured::default();
        let mut next = ServerConfig::clone(&shared.config());
        next.limits = new.limits.clone();
        next.auth = new.auth.clone();
        next.log = new.log.clone();
        for spec in &new.topics {
            let Some(current) = next.topics.iter_mut().find(|t| t.name == spec.name) else { continue };
            if (current.max_bytes, current.max_records, current.max_age_secs)
                != (spec.max_bytes, spec.max_records, spec.max_age_secs)
            {
                current.max_bytes = spec.max_bytes;
                current.max_records = spec.max_records;
                current.max_age_secs = spec.max_age_secs;
                report.records_removed += shared
                    .broker
                    .set_retention(&current.topic(), current.topic_config().retention)
                    .map_err(|error| ServerError::Topic { topic: spec.name.clone(), error })?;
                report.retention_changed += 1;
            }
        }
        let auth_changed = shared.config().auth != new.auth;
        shared.config.store(Arc::new(next));
        if !auth_changed {
            // Logins stand as they are (re-checking each costs a bcrypt
            // verification).
            shared.stats.reconfigurations.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                retention_changed = report.retention_changed,
                records_removed = report.records_removed,
                "reconfigured"
            );
            return Ok(report);
        }
        shared.auth.store(Arc::new(authenticator));
        let auth = shared.auth();
        // Who must go: logins (NATS and native) refused or changed.
        let gone: Vec<u64> = shared
            .logins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, login)| {
                auth.login(login.token.as_deref(), login.user.as_deref(), login.pass.as_deref())
                    .map_or(true, |p| p != login.permissions)
            })
            .map(|(id, _)| *id)
            .collect();
        if !gone.is_empty() {
            shared.revoked.lock().unwrap_or_else(|e| e.into_inner()).extend(gone.iter().copied());
            let open = shared.connections.lock().unwrap_or_else(|e| e.into_inner());
            for id in &gone {
                if let Some(signal) = open.get(id) {
                    signal.raise();
                    report.disconnected += 1;
                }
            }
        }
        shared.stats.revoked.fetch_add(report.disconnected as u64, Ordering::Relaxed);
        shared.stats.reconfigurations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            disconnected = report.disconnected,
            retention_changed = report.retention_changed,
            records_removed = report.records_removed,
            "reconfigured"
        );
        Ok(report)
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Drains: stops accepting, lets every connection finish the operation
    /// it is in (publishes it read are stored and answered), flushes and
    /// closes them, waiting at most `grace`; then shuts the broker down.
    pub async fn shutdown(&self, grace: Duration) {
        let shared = &self.shared;
        shared.stopping.raise();
        let open: Vec<Signal> =
            shared.connections.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        if open.is_empty() {
            shared.all_closed.raise();
        }
        open.iter().for_each(Signal::raise);
        let closed = kaelix_core::runtime::timeout(&shared.rt, grace, shared.all_closed.raised()).await;
        if closed.is_err() {
            tracing::warn!(open = self.connection_count(), ?grace, "connections still open after the grace period");
        }
        shared.broker.shutdown();
        tracing::info!(now = ?shared.rt.now(), "server stopped");
    }
}

/// A read-only view of a running server that outlives borrows of it
/// (see [`Server::observer`]).
pub struct ServerObserver<R: Runtime> {
    shared: Arc<Shared<R>>,
}

impl<R: Runtime> Clone for ServerObserver<R> {
    fn clone(&self) -> Self {
        ServerObserver { shared: self.shared.clone() }
    }
}

impl<R: Runtime> ServerObserver<R> {
    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    /// The broker behind the server.
    pub fn broker(&self) -> &Broker<R> {
        &self.shared.broker
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Consumer-group members native clients hold now.
    pub fn group_member_count(&self) -> usize {
        self.shared.memberships.len()
    }
}

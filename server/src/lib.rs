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

pub mod auth;
pub mod config;
pub mod native;
pub mod nats;
pub mod outbound;
pub mod shutdown;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    pub(crate) config: ServerConfig,
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
    /// Logins and permissions.
    pub(crate) auth: Arc<auth::Authenticator>,
    /// TLS for client connections.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

impl<R: Runtime> Shared<R> {
    /// Registers a new connection unless `max_connections` are open.
    pub(crate) fn open_connection(&self) -> Option<(u64, Signal)> {
        let mut open = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= self.config.limits.max_connections || self.stopping.is_raised() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed) + 1;
        let signal = Signal::new();
        open.insert(id, signal.clone());
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some((id, signal))
    }

    /// Forgets a closed connection.
    pub(crate) fn close_connection(&self, id: u64) {
        let mut open = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&id);
        if open.is_empty() && self.stopping.is_raised() {
            self.all_closed.raise();
        }
    }
}

/// A running server.
pub struct Server<R: Runtime> {
    shared: Arc<Shared<R>>,
    nats_addr: SocketAddr,
    native_addr: SocketAddr,
}

impl<R: Runtime> Server<R> {
    /// Opens the broker on `rt`'s storage, creates the configured topics,
    /// binds the listeners and starts accepting.
    pub async fn start(rt: R, config: ServerConfig) -> Result<Server<R>, ServerError> {
        config.validate()?;
        // Subjects that name no configured topic are relayed, not stored:
        // no auto-creation.
        let broker_config = BrokerConfig { auto_create: None, planted: config.planted, ..BrokerConfig::default() };
        let broker = Broker::open_durable(rt.clone(), broker_config).await?;
        for spec in &config.topics {
            broker
                .create_topic(&spec.name, spec.topic_config())
                .map_err(|error| ServerError::Topic { topic: spec.name.clone(), error })?;
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
        let auth = Arc::new(
            auth::Authenticator::new(&config.auth)
                .map_err(|why| ServerError::Config(config::ConfigError::Invalid { key: "auth".to_owned(), why }))?,
        );
        let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
        let shared = Arc::new(Shared {
            rt: rt.clone(),
            broker,
            config,
            stats: ServerStats::default(),
            stopping: Signal::new(),
            connections: Mutex::new(BTreeMap::new()),
            all_closed: Signal::new(),
            next_connection: AtomicU64::new(0),
            server_id,
            memberships: native::groups::Memberships::default(),
            auth,
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

//! The server's settings and their TOML form.
//!
//! `kaelix serve --config FILE` reads this shape; command-line flags then
//! override single values (the configuration issue adds environment
//! variables and hot reload on top). Unknown keys are errors, and every
//! error names the file position and key path (`toml` reports both).
//!
//! ```toml
//! server_name = "kaelix-1"
//!
//! [nats]
//! listen = "127.0.0.1:4222"
//!
//! [native]
//! listen = "127.0.0.1:7422"
//! max_batch = 1000
//! group_session_timeout_ms = 30000
//!
//! [limits]
//! max_payload = 1048576
//! slow_consumer = "disconnect"   # or "drop"
//!
//! [[topics]]
//! name = "orders"
//! storage = "durable"            # or "memory"
//! partitions = 1
//!
//! [auth]                         # see `crate::auth`
//! token = "s3cret"
//!
//! [tls]                          # see `crate::tls`
//! cert = "server.pem"
//! key = "server.key"
//!
//! [telemetry]                    # served by `kaelix serve` (kaelix-telemetry)
//! metrics = true
//! metrics_listen = "127.0.0.1:9464"
//! sample_interval_ms = 1000
//!
//! [tracing]                      # OTLP trace export (see `TracingSettings`)
//! enabled = true
//! service_name = "kaelix"
//! endpoint = "http://127.0.0.1:4318/v1/traces"
//! sampling_ratio = 0.001
//!
//! [[plugins.wasm]]               # see `crate::plugins`
//! name = "redact"
//! module = "redact.wasm"
//!
//! [[plugins.chains]]
//! pattern = "orders.*"
//! stages = ["redact"]
//!
//! [cluster]                      # see `ClusterSettings`
//! enabled = true
//! node_id = 1
//! listen = "127.0.0.1:7101"
//! peers = ["1=127.0.0.1:7101", "2=127.0.0.1:7111", "3=127.0.0.1:7121"]
//! forward_timeout_ms = 5000
//! ```
//!
//! A NATS subject that names a configured topic is stored there; every
//! other subject is relayed to live subscribers only, as core NATS does.

use std::net::SocketAddr;

use kaelix_broker::TopicConfig;
use kaelix_broker::partition::RetentionPolicy;
use kaelix_broker::storage::{DurableConfig, FlushPolicy, ReplicationConfig, StorageKind};
use kaelix_broker::topic::Topic;
use kaelix_config::validate::{Category, Findings, Phase, Validate, ValidationContext};
use kaelix_core::time::Duration;
use serde::{Deserialize, Serialize};

/// Everything `kaelix serve` needs besides its data directory.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name reported to clients (NATS `INFO.server_name`).
    pub server_name: String,
    /// The NATS-protocol listener.
    pub nats: ListenerConfig,
    /// The native-protocol listener and its limits.
    pub native: NativeConfig,
    /// Connection limits and keep-alive.
    pub limits: Limits,
    /// Topics created at start (existing ones are kept).
    pub topics: Vec<TopicSpec>,
    /// Who may connect and what they may do (see [`crate::auth`]).
    pub auth: crate::auth::AuthConfig,
    /// TLS for client connections (absent: plaintext).
    pub tls: Option<crate::tls::TlsConfig>,
    /// Logging (read by the binary: `kaelix serve` installs the subscriber).
    pub log: LogConfig,
    /// The process around the server: data directory and drain grace
    /// (read by `kaelix serve`; the server itself runs on whatever runtime
    /// it is given).
    pub node: NodeSettings,
    /// The executor `kaelix serve` runs the server on.
    pub runtime: RuntimeSettings,
    /// The metrics endpoint (`/metrics`, `/healthz`).
    pub telemetry: TelemetrySettings,
    /// Distributed tracing: spans exported over OTLP (read by `kaelix serve`).
    pub tracing: TracingSettings,
    /// WebAssembly plugins and their chains (see [`crate::plugins`]).
    pub plugins: crate::plugins::PluginsConfig,
    /// Static cluster membership (read by `kaelix serve --cluster`).
    pub cluster: ClusterSettings,
    /// Planted bugs switched on (simulation tests only; never in a file).
    #[serde(skip)]
    pub planted: kaelix_core::planted::Planted,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            server_name: "kaelix".to_owned(),
            nats: ListenerConfig { listen: SocketAddr::from(([127, 0, 0, 1], 4222)) },
            native: NativeConfig::default(),
            limits: Limits::default(),
            topics: Vec::new(),
            auth: crate::auth::AuthConfig::default(),
            tls: None,
            log: LogConfig::default(),
            node: NodeSettings::default(),
            runtime: RuntimeSettings::default(),
            telemetry: TelemetrySettings::default(),
            tracing: TracingSettings::default(),
            plugins: crate::plugins::PluginsConfig::default(),
            cluster: ClusterSettings::default(),
            planted: kaelix_core::planted::Planted::NONE,
        }
    }
}

/// A cluster member: this node's id, where it listens for its peers, and
/// every member (`[cluster]`; `kaelix serve --cluster --node-id N
/// --cluster-listen ADDR --peers 1=ADDR,2=ADDR,3=ADDR`), or the addresses
/// of members to join through (`--join ADDR,...`).
///
/// Replication is static: every member lists the same peers (3 to 9), and
/// every replicated topic's partitions are Raft groups of all of them:
/// `replication_factor` voters placed alike by every member, the others
/// learners; a voter SWIM has held dead for `replace_dead_after_ms` is
/// swapped with a live learner. Every member also runs SWIM membership, whose seeds are the
/// peers and the `join` addresses; a member with `join` and no `peers`
/// needs to know only one member's address: SWIM makes it a member on
/// every node and teaches every node its address (and it theirs), but it
/// holds no replicated partitions (placing partitions on members that join
/// is not built yet), so it may not configure replicated topics. A member's address `ADDR` carries Raft's messages between
/// nodes; the port after it (`ADDR`'s port + 1) carries the publishes a
/// member that does not lead a partition forwards to its leader. Both
/// ports of every member must be free and distinct.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// Run as a cluster member (off: a single node, the rest is ignored).
    pub enabled: bool,
    /// This member's id (1 or more), one of `peers`.
    pub node_id: u64,
    /// Where this member accepts its peers' connections (default: its own
    /// entry in `peers`). A wildcard address (`0.0.0.0:P`) may stand for
    /// the entry's; the port must be the entry's.
    pub listen: Option<SocketAddr>,
    /// Every member, this one included: `"ID=HOST:PORT"`. Empty: a member
    /// that only joins by address (see above), which needs `listen`.
    pub peers: Vec<String>,
    /// Cluster addresses (`"HOST:PORT"`, another member's `listen` or
    /// `peers` entry) of members to join the SWIM membership through; one
    /// member that is up is enough. Tried again every 5 s (SWIM's
    /// announce) while none has answered, and after, as anti-entropy.
    pub join: Vec<String>,
    /// How long a publish this member forwards to its partition's leader
    /// may wait to connect, to be handed over, and for the leader's
    /// answer before it is refused as unknown (it may still commit), in
    /// milliseconds (see `ReplicatedConfig::forward_timeout`). It bounds
    /// how long a frozen or partitioned leader holds a publisher; it
    /// should exceed a commit's worst latency under load. Fixed at start.
    pub forward_timeout_ms: u64,
    /// What an empty data directory means at start (`"new"`, the default:
    /// a member of a cluster starting for the first time; `"existing"`: a
    /// member of a running cluster whose disk was lost or replaced). A
    /// data directory that holds a member's state is used as it is,
    /// whatever this says. See [`InitialState`].
    pub initial_state: InitialState,
    /// Voters of each replicated partition (3 or 5, at most the member
    /// count; default 3): placed on consecutive members from the
    /// partition's group number on, so they and the leaders spread; the
    /// other members are the partition's learners — they hold and serve
    /// it, and replace a dead voter. A commit waits for a majority of the
    /// voters only. Fixed for the cluster's life: every member must give
    /// the same at every start (a partition without a snapshot yet takes
    /// its voters from the placement, so changing it would change voters
    /// without a joint consensus).
    pub replication_factor: u32,
    /// How long SWIM must have held a voter dead (or gone) before the
    /// partition's leader swaps it with a live learner by joint consensus,
    /// in milliseconds (default 60000; 100 to 86400000). The dead member
    /// stays a learner and catches up if it returns. Short: a member's
    /// restart may move its voter slots; long: a group runs that long one
    /// failure from unavailability. Fixed at start.
    pub replace_dead_after_ms: u64,
    /// Raft's election timeout of every replicated partition, in
    /// milliseconds (default 150; 50 to 60000): a follower that heard no
    /// leader for this long (randomized up to twice it) campaigns. Short:
    /// fast failover; long: fewer needless elections on a loaded machine
    /// or a slow network. Fixed at start; every member should give the
    /// same.
    pub election_timeout_ms: u64,
    /// How often a partition's leader sends heartbeats, in milliseconds
    /// (default 30; at least 5, and under half the election timeout so a
    /// lost heartbeat does not start an election). Fixed at start.
    pub heartbeat_interval_ms: u64,
    /// A replicated partition's member snapshots its state (and starts a
    /// new write-ahead log generation) once at least this many entries
    /// applied since its last snapshot (default 1024; 16 to 10000000)...
    pub snapshot_entries: u64,
    /// ...and those entries hold at least this percentage of the last
    /// snapshot's bytes (default 100; 0 to 1000; 0: the count alone). A
    /// snapshot holds the whole partition, so on a count alone its cost
    /// grows with the partition; tied to its size, every byte is
    /// snapshotted a bounded number of times and a restart replays at
    /// most about this share of the state from the log. Each member
    /// raises it by up to half, by its id, so a partition's members
    /// do not all write a snapshot at once. Fixed at start.
    pub snapshot_log_percent: u64,
}

/// What an empty data directory means to a cluster member
/// ([`ClusterSettings::initial_state`]; `RaftConfig::bootstrap`).
///
/// Raft's safety rests on a member never forgetting what it voted for or
/// acknowledged. A member whose disk was wiped that came back as a fresh
/// voter could elect a leader lacking entries the lost disk helped
/// commit, and those entries would be overwritten. Started `existing`, it
/// is **recovering** instead: it neither votes nor campaigns in a group
/// until it durably holds a committed entry of the group's current
/// leader's term, so the others' majorities decide until it has caught
/// up. The cost of the mark: a cluster whose members all start
/// `existing` on empty disks has no voter and never elects a leader, so a
/// new cluster starts `new`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum InitialState {
    /// An empty data directory is a new member of a new cluster: it votes
    /// at once.
    #[default]
    New,
    /// An empty data directory is a member of a running cluster whose
    /// disk was lost: it recovers from the others before it votes.
    Existing,
}

impl InitialState {
    /// `RaftConfig::bootstrap` for this state: whether an empty disk may
    /// vote at once.
    pub fn bootstrap(self) -> bool {
        self == InitialState::New
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            enabled: false,
            node_id: 0,
            listen: None,
            peers: Vec::new(),
            join: Vec::new(),
            forward_timeout_ms: DEFAULT_FORWARD_TIMEOUT_MS,
            initial_state: InitialState::New,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            replace_dead_after_ms: DEFAULT_REPLACE_DEAD_AFTER_MS,
            election_timeout_ms: DEFAULT_ELECTION_TIMEOUT_MS,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            snapshot_entries: DEFAULT_SNAPSHOT_ENTRIES,
            snapshot_log_percent: DEFAULT_SNAPSHOT_LOG_PERCENT,
        }
    }
}

/// [`ClusterSettings::election_timeout_ms`] by default (Raft's own).
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 150;

/// [`ClusterSettings::heartbeat_interval_ms`] by default (Raft's own).
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 30;

/// The range of [`ClusterSettings::election_timeout_ms`]: below 50 ms a
/// scheduling hiccup would start elections; above a minute a dead leader
/// would stop its partitions longer than any client waits.
pub const ELECTION_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 50..=60_000;

/// [`ClusterSettings::snapshot_entries`] by default.
pub const DEFAULT_SNAPSHOT_ENTRIES: u64 = 1024;

/// The range of [`ClusterSettings::snapshot_entries`]: below 16 a member
/// would snapshot about as often as it appends; above ten million a
/// restart would replay a log that long.
pub const SNAPSHOT_ENTRIES: std::ops::RangeInclusive<u64> = 16..=10_000_000;

/// [`ClusterSettings::snapshot_log_percent`] by default: the Raft
/// dissertation's rule (§5.1.3), snapshot when the log holds the
/// snapshot's size.
pub const DEFAULT_SNAPSHOT_LOG_PERCENT: u64 = 100;

/// The range of [`ClusterSettings::snapshot_log_percent`]: above 1000 a
/// restart would replay ten times the state from the log.
pub const SNAPSHOT_LOG_PERCENT: std::ops::RangeInclusive<u64> = 0..=1000;

/// [`ClusterSettings::replication_factor`] by default.
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// [`ClusterSettings::replace_dead_after_ms`] by default: a minute, longer
/// than a member's restart, so a restart does not move voters.
pub const DEFAULT_REPLACE_DEAD_AFTER_MS: u64 = 60_000;

/// The range of [`ClusterSettings::replace_dead_after_ms`]: below 100 ms
/// a voter would be replaced about as soon as SWIM declared it, above a day
/// a group would run one failure from unavailability for longer than any
/// operator waits.
pub const REPLACE_DEAD_AFTER_MS: std::ops::RangeInclusive<u64> = 100..=86_400_000;

/// How many members a cluster with peers may list: every member holds
/// every partition (as a voter or a learner), so each leader sends to all
/// of them.
pub const CLUSTER_MEMBERS: std::ops::RangeInclusive<usize> = 3..=9;

/// [`ClusterSettings::forward_timeout_ms`] by default.
pub const DEFAULT_FORWARD_TIMEOUT_MS: u64 = 5_000;

/// The range of [`ClusterSettings::forward_timeout_ms`]: below 100 ms a
/// publish forwarded across a loaded network would be refused before a
/// healthy leader could commit it; above 10 minutes a frozen leader would
/// hold publishers longer than any client waits.
pub const FORWARD_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=600_000;

/// The port after a member's address carries forwarded publishes.
pub fn forward_addr(peer: SocketAddr) -> Option<SocketAddr> {
    peer.port().checked_add(1).map(|p| SocketAddr::new(peer.ip(), p))
}

impl ClusterSettings {
    /// The members by id, or the first malformed entry (key path, why).
    pub fn members(&self) -> Result<std::collections::BTreeMap<u64, SocketAddr>, (String, String)> {
        let mut members = std::collections::BTreeMap::new();
        // (ip, port) → (member, which of its ports).
        let mut ports = std::collections::BTreeMap::new();
        for (i, entry) in self.peers.iter().enumerate() {
            let key = format!("cluster.peers[{i}]");
            let malformed = || (key.clone(), format!("{entry:?} is not ID=HOST:PORT (e.g. \"2=127.0.0.1:7111\")"));
            let (id, addr) = entry.split_once('=').ok_or_else(malformed)?;
            let id: u64 = id.trim().parse().map_err(|_| malformed())?;
            let addr: SocketAddr = addr.trim().parse().map_err(|_| malformed())?;
            if id == 0 {
                return Err((key, "member ids start at 1".to_owned()));
            }
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err((key, format!("{addr} is not an address peers can connect to")));
            }
            if forward_addr(addr).is_none() {
                return Err((key, format!("port {} leaves no port after it for forwarded publishes", addr.port())));
            }
            if members.insert(id, addr).is_some() {
                return Err((key, format!("member {id} is listed twice")));
            }
            for (port, what) in [(addr.port(), "address"), (addr.port() + 1, "forwarding port")] {
                if let Some((other, theirs)) = ports.insert((addr.ip(), port), (id, what)) {
                    return Err((
                        key,
                        format!("member {id}'s {what} {}:{port} is also member {other}'s {theirs}", addr.ip()),
                    ));
                }
            }
        }
        Ok(members)
    }

    /// Where this member binds for its peers (`listen`, else its entry).
    pub fn bind_addr(&self) -> Option<SocketAddr> {
        self.listen.or_else(|| self.members().ok()?.get(&self.node_id).copied())
    }

    /// The `join` addresses, or the first malformed entry (key path, why).
    pub fn join_addrs(&self) -> Result<Vec<SocketAddr>, (String, String)> {
        let mut addrs = Vec::new();
        for (i, entry) in self.join.iter().enumerate() {
            let key = format!("cluster.join[{i}]");
            let addr: SocketAddr = entry
                .trim()
                .parse()
                .map_err(|_| (key.clone(), format!("{entry:?} is not HOST:PORT (e.g. \"127.0.0.1:7111\")")))?;
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err((key, format!("{addr} is not an address a member can be reached at")));
            }
            addrs.push(addr);
        }
        Ok(addrs)
    }

    /// [`ClusterSettings::forward_timeout_ms`] as a duration.
    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms)
    }

    /// [`ClusterSettings::election_timeout_ms`] as a duration.
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }

    /// [`ClusterSettings::heartbeat_interval_ms`] as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// [`ClusterSettings::replace_dead_after_ms`] as a duration.
    pub fn replace_dead_after(&self) -> Duration {
        Duration::from_millis(self.replace_dead_after_ms)
    }

    /// Voters per replicated partition: the replication factor, capped by
    /// the member count (validation refuses a larger one; a member that
    /// only joins by address holds no partitions).
    pub fn replicas(&self) -> usize {
        let members = self.members().map_or(0, |m| m.len());
        (self.replication_factor as usize).min(members).max(1)
    }

    /// The rules of a member without `peers` (see [`ClusterSettings`]).
    fn join_only_rules(&self, config: &ServerConfig, f: &mut Findings) {
        use Category::*;
        match self.listen {
            None => f.error(
                Integration,
                "cluster.listen",
                "must be set when cluster.peers is empty: it is the address the other members reach this one at",
            ),
            Some(l) if l.ip().is_unspecified() || forward_addr(l).is_none() => f.error(
                Network,
                "cluster.listen",
                format!("{l}: a member without cluster.peers gives the others its listen address: name one they can connect to"),
            ),
            Some(_) => {}
        }
        if config.topics.iter().any(|t| t.storage == StorageChoice::Replicated) {
            f.error(
                Integration,
                "cluster.peers",
                "empty, yet replicated topics are configured: their Raft groups are the members cluster.peers lists (a member that only joins by address holds no replicated partitions yet)",
            );
        }
    }

    /// The cluster's rules (only when enabled; see [`ClusterSettings`]).
    fn rules(&self, config: &ServerConfig, f: &mut Findings) {
        use Category::*;
        // Checked even when off: a file that would fail once the cluster is
        // switched on is refused now.
        let ms = " (milliseconds)";
        for (category, key, value, range, unit) in [
            (Network, "cluster.forward_timeout_ms", self.forward_timeout_ms, &FORWARD_TIMEOUT_MS, ms),
            (Integration, "cluster.replace_dead_after_ms", self.replace_dead_after_ms, &REPLACE_DEAD_AFTER_MS, ms),
            (Performance, "cluster.election_timeout_ms", self.election_timeout_ms, &ELECTION_TIMEOUT_MS, ms),
            (Performance, "cluster.snapshot_entries", self.snapshot_entries, &SNAPSHOT_ENTRIES, ""),
            (Performance, "cluster.snapshot_log_percent", self.snapshot_log_percent, &SNAPSHOT_LOG_PERCENT, ""),
        ] {
            if !range.contains(&value) {
                f.error(category, key, format!("{value} is outside {}..={}{unit}", range.start(), range.end()));
            }
        }
        if ELECTION_TIMEOUT_MS.contains(&self.election_timeout_ms)
            && (self.heartbeat_interval_ms < 5 || self.heartbeat_interval_ms * 2 >= self.election_timeout_ms)
        {
            f.error(
                Performance,
                "cluster.heartbeat_interval_ms",
                format!(
                    "{} ms: at least 5 and under half of cluster.election_timeout_ms ({} ms), so one lost heartbeat does not start an election",
                    self.heartbeat_interval_ms, self.election_timeout_ms
                ),
            );
        }
        if self.replication_factor != 3 && self.replication_factor != 5 {
            f.error(
                Integration,
                "cluster.replication_factor",
                format!(
                    "{} voters per partition: 3 or 5 (a majority of an even number tolerates no more failures than of one fewer; 1 is not replicated)",
                    self.replication_factor
                ),
            );
        }
        if !self.enabled {
            // Anything but the defaults is a setting that does nothing.
            if *self != ClusterSettings::default() {
                f.warn(
                    Integration,
                    "cluster.enabled",
                    "false: node_id, listen, peers, join, forward_timeout_ms, initial_state, replication_factor, replace_dead_after_ms, election_timeout_ms, heartbeat_interval_ms, snapshot_entries and snapshot_log_percent are ignored (a single node)",
                );
            }
            return;
        }
        if self.node_id == 0 {
            f.error(Integration, "cluster.node_id", "must be set (1 or more) to run as a cluster member");
        }
        if let Err((key, why)) = self.join_addrs() {
            return f.error(Integration, key, why);
        }
        if self.peers.is_empty() {
            return self.join_only_rules(config, f);
        }
        let members = match self.members() {
            Ok(m) => m,
            Err((key, why)) => return f.error(Integration, key, why),
        };
        if !CLUSTER_MEMBERS.contains(&members.len()) {
            f.error(
                Integration,
                "cluster.peers",
                format!(
                    "{} members listed: a cluster has {} to {} (every member holds every replicated partition)",
                    members.len(),
                    CLUSTER_MEMBERS.start(),
                    CLUSTER_MEMBERS.end()
                ),
            );
        } else if matches!(self.replication_factor, 3 | 5) && self.replication_factor as usize > members.len() {
            f.error(
                Integration,
                "cluster.replication_factor",
                format!(
                    "{} voters per partition, but cluster.peers lists {} members",
                    self.replication_factor,
                    members.len()
                ),
            );
        }
        let ids = members.keys().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let Some(&own) = members.get(&self.node_id) else {
            if self.node_id != 0 {
                f.error(
                    Integration,
                    "cluster.node_id",
                    format!("member {} is not among cluster.peers (members {ids})", self.node_id),
                );
            }
            return;
        };
        if let Some(listen) = self.listen
            && (listen.port() != own.port() || !(listen.ip() == own.ip() || listen.ip().is_unspecified()))
        {
            f.error(
                Network,
                "cluster.listen",
                format!(
                    "{listen} is not member {}'s address in cluster.peers ({own}): peers would connect elsewhere",
                    self.node_id
                ),
            );
        }
        for (key, addr) in [("nats.listen", config.nats.listen), ("native.listen", config.native.listen)] {
            for (what, port) in [("address", own.port()), ("forwarding port", own.port() + 1)] {
                if addr.port() == port && (addr.ip() == own.ip() || addr.ip().is_unspecified()) {
                    f.error(Network, key, format!("{addr} is this member's cluster {what}"));
                }
            }
        }
    }
}

/// Least severe level logged.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default: lifecycle events, refusals, slow consumers.
    #[default]
    Info,
    /// Per-connection events.
    Debug,
    /// Everything.
    Trace,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Least severe level logged (reloadable).
    pub level: LogLevel,
    /// Line format (fixed at start).
    pub format: LogFormat,
}

/// `[node]`: the process around the server.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// Where durable topics live (created if missing).
    pub data_dir: String,
    /// Seconds a drain waits for connections to finish.
    pub shutdown_grace_secs: u64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings { data_dir: "./kaelix-data".to_owned(), shutdown_grace_secs: 10 }
    }
}

/// `[runtime]`: the seed's `RuntimeConfig`, the executor's settings
/// (`kaelix_runtime_real::RuntimeConfig`, which `kaelix serve` builds from
/// this; read at start, a change needs a restart).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Worker threads in all (absent: one per CPU; `--workers`).
    pub worker_threads: Option<usize>,
    /// The most live tasks — each connection, subscription and stream is
    /// one — and so the most the run queues hold: a spawn past it is
    /// refused (counted as `kaelix_executor_spawns_refused_total` and
    /// logged; a refused connection is closed, the others go on).
    pub task_queue_depth: usize,
    /// Microseconds an idle worker keeps looking for work before it parks:
    /// a wake within it is served without a futex wake-up, at the cost of
    /// that much CPU after each burst of work (0: park at once).
    pub target_latency_us: u64,
    /// One worker pool per NUMA node (false: one pool over all CPUs).
    pub numa_aware: bool,
    /// Priority tiers kept apart, 1 to 4 (Critical, High, Normal,
    /// Background; lower ones fold into the last kept tier).
    pub priority_levels: usize,
}

impl RuntimeSettings {
    /// Equal to `kaelix_runtime_real::RuntimeConfig::DEFAULT_TASK_QUEUE_DEPTH`
    /// (a test holds them together; this crate does not link the real
    /// runtime).
    pub const DEFAULT_TASK_QUEUE_DEPTH: usize = 1 << 22;
    /// Above this a spinning worker is mostly burning a core.
    pub const MAX_TARGET_LATENCY_US: u64 = 10_000;
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            worker_threads: None,
            task_queue_depth: Self::DEFAULT_TASK_QUEUE_DEPTH,
            target_latency_us: 0,
            numa_aware: true,
            priority_levels: 4,
        }
    }
}

/// The metrics endpoint `kaelix serve` runs beside the server (the server
/// itself only keeps counters; `kaelix-telemetry` exports them).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// Serve `/metrics` (Prometheus text format) and `/healthz`.
    pub metrics: bool,
    /// Where the endpoint listens (port 0: any free port).
    pub metrics_listen: SocketAddr,
    /// How often the performance monitor samples and histogram windows
    /// are folded (milliseconds).
    pub sample_interval_ms: u64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            metrics: true,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            sample_interval_ms: 1000,
        }
    }
}

/// `[tracing]`: distributed tracing exported to an OpenTelemetry collector
/// (OTLP over HTTP, protobuf bodies; `kaelix serve` runs the exporter, see
/// `kaelix_telemetry::otlp` and `crate::trace` for the span model).
///
/// Sampling is parent-based: a publish that carries a W3C `traceparent`
/// is traced exactly when its flags say the caller sampled it; a publish
/// without one starts a new trace with probability `sampling_ratio`
/// (decided from the new trace id, as OpenTelemetry's `TraceIdRatioBased`
/// does, so every node agrees). The default ratio, 0.001, is chosen by
/// cost: a sampled publish costs several microseconds of CPU (its spans
/// built, batched, encoded and sent), several publishes' worth, so at 0.01
/// the spans alone would take several percent of a loaded server's CPU;
/// at 0.001 tracing measured about 2% in all, most of it the per-publish
/// decision (`benches/tracing/RESULTS.md`); a server publishing 100,000
/// messages a second still exports 100 traces a second. A client
/// that samples its own requests gets every one of them traced regardless.
/// Not reloadable: the exporter and its sampler are installed once at
/// start.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// Export spans (off by default).
    pub enabled: bool,
    /// The `service.name` resource attribute of every span.
    pub service_name: String,
    /// The collector's OTLP/HTTP traces URL, used as given: plain
    /// `http://HOST:PORT/PATH` (a collector's HTTP receiver listens on
    /// 4318, path `/v1/traces`). TLS to the collector is not supported:
    /// point it at a collector or agent on the same host or network.
    pub endpoint: String,
    /// Probability that a publish without a trace context starts a
    /// sampled trace, 0.0..=1.0.
    pub sampling_ratio: f64,
}

/// [`TracingSettings::sampling_ratio`] by default.
pub const DEFAULT_SAMPLING_RATIO: f64 = 0.001;

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            enabled: false,
            service_name: "kaelix".to_owned(),
            endpoint: "http://127.0.0.1:4318/v1/traces".to_owned(),
            sampling_ratio: DEFAULT_SAMPLING_RATIO,
        }
    }
}

/// A plain-HTTP URL taken apart: `http://HOST[:PORT]/PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// Host name or address (IPv6 without its brackets).
    pub host: String,
    /// Port (80 when the URL names none).
    pub port: u16,
    /// Path with its query, starting with `/`.
    pub path: String,
}

impl HttpEndpoint {
    /// Parses `url`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<HttpEndpoint, String> {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(match url.split_once("://") {
                Some(("https", _)) => {
                    "https is not supported: use the collector's plain-HTTP OTLP receiver (http://HOST:4318/v1/traces)"
                        .to_owned()
                }
                Some((scheme, _)) => format!("scheme {scheme:?} is not http"),
                None => format!("{url:?} is not an http:// URL"),
            });
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.len() <= 1 {
            return Err("has no path: the collector's OTLP/HTTP traces path is /v1/traces".to_owned());
        }
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".to_owned());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| "unclosed [ in the host".to_owned())?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("has no host".to_owned());
        }
        let port = match port {
            None => 80,
            Some(p) => {
                p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| format!("port {p:?} is not 1..=65535"))?
            }
        };
        Ok(HttpEndpoint { host: host.to_owned(), port, path: path.to_owned() })
    }
}

impl TracingSettings {
    /// The `[tracing]` rules (checked even when off: a file that would
    /// fail once tracing is switched on is refused now).
    fn rules(&self, f: &mut Findings) {
        use Category::Telemetry;
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            f.error(
                Telemetry,
                "tracing.sampling_ratio",
                format!("{} is outside 0.0..=1.0 (a probability)", self.sampling_ratio),
            );
        }
        if self.service_name.trim().is_empty() {
            f.error(Telemetry, "tracing.service_name", "must not be empty (it names this service in every trace)");
        }
        if let Err(why) = HttpEndpoint::parse(&self.endpoint) {
            f.error(Telemetry, "tracing.endpoint", format!("{:?}: {why}", self.endpoint));
        }
        if self.enabled && self.sampling_ratio == 0.0 {
            f.warn(
                Telemetry,
                "tracing.sampling_ratio",
                "0: only publishes whose traceparent says sampled are traced (no trace starts here)",
            );
        }
    }
}

/// Where a listener binds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port (port 0: any free port).
    pub listen: SocketAddr,
}

/// The native-protocol listener (see `PROTOCOL.md`) and its limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NativeConfig {
    /// Address and port (port 0: any free port).
    pub listen: SocketAddr,
    /// Largest frame accepted, counted after the length prefix (announced
    /// in `HelloOk`). It must hold a message of `limits.max_payload`.
    pub max_frame_bytes: u32,
    /// Most messages in one `Produce`, and returned by one fetch
    /// (announced in `HelloOk`).
    pub max_batch: u32,
    /// Longest a `Fetch` or `GroupFetch` long-polls, whatever it asks
    /// (milliseconds).
    pub max_wait_ms: u64,
    /// Longest a `Produce` with acks `committed` waits for its commit
    /// before it is answered `Timeout` (milliseconds).
    pub ack_timeout_ms: u64,
    /// A consumer-group member that sends no request of its group for this
    /// long is removed (milliseconds).
    pub group_session_timeout_ms: u64,
    /// Most partitions a `CreateTopic` may ask for.
    pub max_partitions: u32,
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7422)),
            max_frame_bytes: 16 << 20,
            max_batch: 1000,
            max_wait_ms: 30_000,
            ack_timeout_ms: 30_000,
            group_session_timeout_ms: 30_000,
            max_partitions: 1024,
        }
    }
}

impl NativeConfig {
    /// [`NativeConfig::max_wait_ms`] as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }

    /// [`NativeConfig::ack_timeout_ms`] as a duration.
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    /// [`NativeConfig::group_session_timeout_ms`] as a duration.
    pub fn group_session_timeout(&self) -> Duration {
        Duration::from_millis(self.group_session_timeout_ms)
    }
}

/// What happens to a connection whose unsent bytes pass
/// [`Limits::max_pending`].
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SlowConsumerPolicy {
    /// Tell the client (`-ERR 'Slow Consumer'`), close the connection.
    #[default]
    Disconnect,
    /// Drop the messages that do not fit and keep the connection; each drop
    /// is counted and reported.
    Drop,
}

/// Connection limits and keep-alive. The defaults are nats-server's.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most client connections at once (NATS and native together).
    pub max_connections: usize,
    /// Most subscriptions per connection (0: unlimited).
    pub max_subscriptions: usize,
    /// Largest message payload (headers included) in bytes.
    pub max_payload: usize,
    /// Longest NATS control line in bytes.
    pub max_control_line: usize,
    /// Most bytes queued for one connection before it is a slow consumer.
    pub max_pending: usize,
    /// What happens to a slow consumer.
    pub slow_consumer: SlowConsumerPolicy,
    /// The server PINGs a connection this often (milliseconds).
    pub ping_interval_ms: u64,
    /// Unanswered server PINGs before the connection is stale and closed.
    pub max_pings_out: u32,
    /// A client must finish CONNECT within this (milliseconds).
    pub auth_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64 * 1024,
            max_subscriptions: 0,
            max_payload: 1 << 20,
            max_control_line: 4096,
            max_pending: 64 << 20,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            ping_interval_ms: 120_000,
            max_pings_out: 2,
            auth_timeout_ms: 2_000,
        }
    }
}

impl Limits {
    /// [`Limits::ping_interval_ms`] as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// [`Limits::auth_timeout_ms`] as a duration.
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }
}

/// Where a configured topic's partitions live.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StorageChoice {
    /// In memory: lost on restart.
    Memory,
    /// Segment files in the data directory; a publish is acknowledged once
    /// synced.
    #[default]
    Durable,
    /// One Raft group per partition across every cluster member
    /// (`[cluster]` only): acknowledged once committed by a majority.
    Replicated,
}

/// A topic the server creates at start.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The topic (a literal NATS subject).
    pub name: String,
    /// Partitions (at least 1).
    #[serde(default = "one")]
    pub partitions: u32,
    /// Memory or durable.
    #[serde(default)]
    pub storage: StorageChoice,
    /// Durable topics: sync at most this long after a write (milliseconds);
    /// absent: sync after every batch the writer takes.
    #[serde(default)]
    pub flush_interval_ms: Option<u64>,
    /// Most bytes each partition retains (absent: no limit).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Most records each partition retains (absent: no limit).
    #[serde(default)]
    pub max_records: Option<u64>,
    /// Records older than this many seconds expire (absent: never).
    #[serde(default)]
    pub max_age_secs: Option<u64>,
}

fn one() -> u32 {
    1
}

/// A configuration that parses but cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The TOML text is malformed or has unknown or mistyped keys.
    #[error("{0}")]
    Parse(String),
    /// A value is out of range; names the key path.
    #[error("{key}: {why}")]
    Invalid {
        /// Key path, e.g. `topics[2].name`.
        key: String,
        /// What is wrong.
        why: String,
    },
}

impl ServerConfig {
    /// Parses TOML text (`origin` names it in errors, e.g. the file path)
    /// and validates it.
    pub fn from_toml(text: &str, origin: &str) -> Result<ServerConfig, ConfigError> {
        let config: ServerConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(located(origin, text, &e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value that the types alone do not, without asking the
    /// machine: the first error of [`ServerConfig::rules`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut findings = Findings::default();
        self.rules(&mut findings);
        match findings.first_error() {
            Some(f) => Err(ConfigError::Invalid { key: f.key.clone(), why: f.message.clone() }),
            None => Ok(()),
        }
    }

    /// The rules that need only the configuration (every error and
    /// warning, in this order: performance, network, integration,
    /// security, storage, telemetry).
    pub fn rules(&self, f: &mut Findings) {
        use Category::*;
        let l = &self.limits;
        if l.max_payload == 0 || l.max_payload > kaelix_broker::message::MAX_PAYLOAD_BYTES {
            f.error(
                Performance,
                "limits.max_payload",
                format!("{} is outside 1..={}", l.max_payload, kaelix_broker::message::MAX_PAYLOAD_BYTES),
            );
        }
        if l.max_control_line < 64 {
            f.error(Performance, "limits.max_control_line", format!("{} is below 64 bytes", l.max_control_line));
        }
        if l.max_pending < l.max_payload {
            f.error(
                Performance,
                "limits.max_pending",
                format!("{} is smaller than limits.max_payload ({})", l.max_pending, l.max_payload),
            );
        }
        self.plugins.rules(f);
        if self.telemetry.sample_interval_ms == 0 {
            f.error(Telemetry, "telemetry.sample_interval_ms", "must be at least 1");
        }
        self.tracing.rules(f);
        if l.max_connections == 0 {
            f.error(Network, "limits.max_connections", "must be at least 1");
        }
        if l.ping_interval_ms == 0 || l.max_pings_out == 0 {
            f.error(Network, "limits.ping_interval_ms", "ping interval and max_pings_out must be positive");
        }
        if l.auth_timeout_ms == 0 {
            f.error(Network, "limits.auth_timeout_ms", "must be positive: no client could finish CONNECT");
        }
        let n = &self.native;
        // A message of max_payload with a key, headers and the frame around it.
        let smallest_frame = l.max_payload + (256 << 10);
        if (n.max_frame_bytes as usize) < smallest_frame {
            f.error(
                Integration,
                "native.max_frame_bytes",
                format!(
                    "{} cannot hold a message of limits.max_payload ({}): at least {smallest_frame} is needed",
                    n.max_frame_bytes, l.max_payload
                ),
            );
        }
        if n.max_batch == 0 {
            f.error(Performance, "native.max_batch", "must be at least 1");
        }
        if n.max_partitions == 0 {
            f.error(Storage, "native.max_partitions", "must be at least 1");
        }
        if n.group_session_timeout_ms == 0 || n.ack_timeout_ms == 0 {
            f.error(
                Network,
                "native.group_session_timeout_ms",
                "session and acknowledgement timeouts must be positive",
            );
        }
        if n.max_wait_ms == 0 {
            f.error(Network, "native.max_wait_ms", "must be positive: a long poll could not wait at all");
        }
        if self.nats.listen.port() != 0 && self.nats.listen == n.listen {
            f.error(
                Network,
                "native.listen",
                format!("{} is also nats.listen: the two listeners need distinct ports", n.listen),
            );
        } else if self.nats.listen.port() != 0
            && self.nats.listen.port() == n.listen.port()
            && (self.nats.listen.ip().is_unspecified() || n.listen.ip().is_unspecified())
        {
            f.error(
                Network,
                "native.listen",
                format!(
                    "{} overlaps nats.listen {}: the two listeners need distinct ports",
                    n.listen, self.nats.listen
                ),
            );
        }
        if let Err(why) = crate::auth::Authenticator::new(&self.auth) {
            // The authenticator names the key in its message ("auth.users[1].user: …").
            match why.split_once(": ") {
                Some((key, rest)) if key.starts_with("auth") && !key.contains(' ') => f.error(Security, key, rest),
                _ => f.error(Security, "auth", why),
            }
        }
        let open = self.auth.token.is_none() && self.auth.users.is_empty();
        if open && !self.nats.listen.ip().is_loopback() {
            f.warn(
                Security,
                "nats.listen",
                format!(
                    "no [auth] token or users: anyone who can reach {} may publish and subscribe",
                    self.nats.listen
                ),
            );
        }
        if self.auth.token.as_ref().is_some_and(|t| t.len() < 8) {
            f.warn(Security, "auth.token", "shorter than 8 characters: easy to guess");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.topics.iter().enumerate() {
            let key = format!("topics[{i}]");
            if let Err(e) = Topic::new(&t.name) {
                f.error(Storage, format!("{key}.name"), e.to_string());
            } else if !seen.insert(t.name.as_str()) {
                f.error(Storage, format!("{key}.name"), format!("topic {:?} is configured twice", t.name));
            }
            if t.partitions == 0 {
                f.error(Storage, format!("{key}.partitions"), "must be at least 1");
            } else if n.max_partitions != 0 && t.partitions > n.max_partitions {
                f.error(
                    Integration,
                    format!("{key}.partitions"),
                    format!("{} is more than native.max_partitions ({})", t.partitions, n.max_partitions),
                );
            }
            if t.storage != StorageChoice::Durable && t.flush_interval_ms.is_some() {
                f.error(Integration, format!("{key}.flush_interval_ms"), "only durable topics are flushed");
            }
            match (t.storage, self.cluster.enabled) {
                (StorageChoice::Replicated, false) => f.error(
                    Storage,
                    format!("{key}.storage"),
                    "a replicated topic needs a cluster ([cluster] enabled = true, or kaelix serve --cluster)",
                ),
                (StorageChoice::Durable, true) => f.error(
                    Storage,
                    format!("{key}.storage"),
                    "a cluster member stores topics only as \"replicated\" (Raft groups of every member; \
                     durable is per node) or keeps them in \"memory\"",
                ),
                _ => {}
            }
            if t.flush_interval_ms == Some(0) {
                f.error(
                    Storage,
                    format!("{key}.flush_interval_ms"),
                    "must be positive (leave it out to sync every batch)",
                );
            }
            for (field, value) in
                [("max_bytes", t.max_bytes), ("max_records", t.max_records), ("max_age_secs", t.max_age_secs)]
            {
                if value == Some(0) {
                    f.error(Storage, format!("{key}.{field}"), "0 would retain nothing (leave it out for no limit)");
                }
            }
            if let Some(bytes) = t.max_bytes
                && bytes != 0
                && bytes < l.max_payload as u64
            {
                f.warn(
                    Storage,
                    format!("{key}.max_bytes"),
                    format!(
                        "{bytes} is smaller than limits.max_payload ({}): one message may evict all others",
                        l.max_payload
                    ),
                );
            }
            if t.storage == StorageChoice::Memory && t.max_bytes.is_none() && t.max_records.is_none() {
                f.warn(
                    Storage,
                    format!("{key}.storage"),
                    "a memory topic without max_bytes or max_records grows without bound",
                );
            }
        }
        self.cluster.rules(self, f);
        let r = &self.runtime;
        if r.worker_threads == Some(0) {
            f.error(Performance, "runtime.worker_threads", "must be at least 1 (leave it out for one per CPU)");
        }
        if r.task_queue_depth == 0 {
            f.error(Performance, "runtime.task_queue_depth", "must be at least 1: every connection needs a task");
        } else if r.task_queue_depth < 1024 {
            f.warn(
                Performance,
                "runtime.task_queue_depth",
                format!(
                    "{} live tasks: each connection, subscription and stream takes one, so few clients fit",
                    r.task_queue_depth
                ),
            );
        }
        if !(1..=4).contains(&r.priority_levels) {
            f.error(Performance, "runtime.priority_levels", format!("must be 1 to 4, not {}", r.priority_levels));
        }
        if r.target_latency_us > RuntimeSettings::MAX_TARGET_LATENCY_US {
            f.error(
                Performance,
                "runtime.target_latency_us",
                format!(
                    "{} µs of spinning per idle worker is more than {} µs: that is a core burnt, not a latency target",
                    r.target_latency_us,
                    RuntimeSettings::MAX_TARGET_LATENCY_US
                ),
            );
        }
        if self.node.data_dir.is_empty() {
            f.error(Storage, "node.data_dir", "must not be empty");
        }
        if matches!(self.log.level, LogLevel::Trace) {
            f.warn(Telemetry, "log.level", "trace logs every operation: expect it to cost throughput");
        }
    }

    /// The replicated topics in configuration order, each with the
    /// cluster's voters per partition as its replication factor (every
    /// member of the cluster must list the same ones in the same order:
    /// they are the Raft groups, numbered in that order).
    pub fn replicated_topics(&self) -> Vec<(Topic, kaelix_broker::TopicConfig)> {
        let factor = u8::try_from(self.cluster.replicas()).unwrap_or(u8::MAX);
        self.topics
            .iter()
            .filter(|t| t.storage == StorageChoice::Replicated)
            .map(|t| {
                let mut config = t.topic_config();
                config.storage = StorageKind::Replicated(ReplicationConfig { factor });
                (t.topic(), config)
            })
            .collect()
    }

    /// Keys a running server takes from a reloaded file (see
    /// `kaelix_config::ReloadPolicy`): limits, users and permissions, the
    /// log level and topics' retention. Listeners, TLS, the data directory,
    /// workers and the set of topics need a restart.
    pub const RELOADABLE: &'static [&'static str] = &[
        "limits",
        "auth",
        "log.level",
        "plugins",
        "topics[*].max_bytes",
        "topics[*].max_records",
        "topics[*].max_age_secs",
    ];
}

impl Validate for ServerConfig {
    fn validate(&self, ctx: &ValidationContext<'_>, f: &mut Findings) {
        use Category::*;
        self.rules(f);
        let probe = ctx.probe;
        // Network: the listeners must be able to bind here.
        for (key, addr) in [("nats.listen", self.nats.listen), ("native.listen", self.native.listen)] {
            if !probe.is_local_address(addr.ip()) {
                f.error(Network, key, format!("{} is not an address of this machine", addr.ip()));
            } else if ctx.phase == Phase::Start && !probe.port_is_free(addr) {
                f.error(Network, key, format!("{addr} is already in use by another process"));
            }
        }
        if self.cluster.enabled
            && let Some(bind) = self.cluster.bind_addr()
        {
            let forward = forward_addr(bind).expect("checked by the rules");
            // Blame where the address came from: the flag or key that set
            // `listen`, else the member's entry in `peers`.
            let key = if self.cluster.listen.is_some() { "cluster.listen" } else { "cluster.peers" };
            for (addr, what) in [(bind, "cluster address"), (forward, "forwarding port")] {
                if !addr.ip().is_unspecified() && !probe.is_local_address(addr.ip()) {
                    f.error(Network, key, format!("{} is not an address of this machine", addr.ip()));
                } else if ctx.phase == Phase::Start && !probe.port_is_free(addr) {
                    f.error(
                        Network,
                        key,
                        format!("{addr} (this member's {what}) is already in use by another process"),
                    );
                }
            }
        }
        // Performance: threads against cores, buffers against memory.
        let cores = probe.cpu_cores();
        if let Some(workers) = self.runtime.worker_threads
            && workers > cores
        {
            f.warn(
                Performance,
                "runtime.worker_threads",
                format!("{workers} worker threads on {cores} cores: threads will contend for CPUs"),
            );
        }
        if let Some(memory) = probe.total_memory_bytes() {
            let l = &self.limits;
            if l.max_pending as u64 > memory {
                f.error(
                    Performance,
                    "limits.max_pending",
                    format!("{} bytes for one connection is more than this machine's memory ({memory})", l.max_pending),
                );
            } else if l.max_pending as u64 > memory / 8 {
                f.warn(
                    Performance,
                    "limits.max_pending",
                    format!(
                        "{} bytes for one connection is over an eighth of this machine's memory ({memory}): a few slow consumers could exhaust it",
                        l.max_pending
                    ),
                );
            }
            let in_memory: u64 = self
                .topics
                .iter()
                .filter(|t| t.storage == StorageChoice::Memory)
                .filter_map(|t| t.max_bytes.map(|b| b.saturating_mul(u64::from(t.partitions))))
                .fold(0, u64::saturating_add);
            if in_memory > memory {
                f.error(
                    Storage,
                    "topics",
                    format!("memory topics may retain {in_memory} bytes, more than this machine's memory ({memory})"),
                );
            }
        }
        // Storage: retention by bytes against the free disk.
        let on_disk: u64 = self
            .topics
            .iter()
            .filter(|t| t.storage == StorageChoice::Durable)
            .filter_map(|t| t.max_bytes.map(|b| b.saturating_mul(u64::from(t.partitions))))
            .fold(0, u64::saturating_add);
        if on_disk > 0
            && let Some(free) = probe.free_disk_bytes(std::path::Path::new(&self.node.data_dir))
        {
            if on_disk > free {
                f.error(
                    Storage,
                    "topics",
                    format!(
                        "durable topics may retain {on_disk} bytes, more than the {free} bytes free for {}",
                        self.node.data_dir
                    ),
                );
            } else if on_disk > free / 10 * 8 {
                f.warn(
                    Storage,
                    "topics",
                    format!(
                        "durable topics may retain {on_disk} bytes, over 80% of the {free} bytes free for {}",
                        self.node.data_dir
                    ),
                );
            }
        }
    }
}

impl TopicSpec {
    /// The validated topic name.
    pub fn topic(&self) -> Topic {
        Topic::new(&self.name).expect("validated by ServerConfig::validate")
    }

    /// The broker settings of this topic.
    pub fn topic_config(&self) -> TopicConfig {
        let storage = match self.storage {
            StorageChoice::Memory => StorageKind::Memory,
            // The factor is the cluster's member count:
            // `ServerConfig::replicated_topics` sets it.
            StorageChoice::Replicated => StorageKind::Replicated(ReplicationConfig { factor: 3 }),
            StorageChoice::Durable => StorageKind::Durable(DurableConfig {
                flush: match self.flush_interval_ms {
                    None => FlushPolicy::EveryBatch,
                    Some(ms) => FlushPolicy::Interval { max_delay: Duration::from_millis(ms), max_bytes: 4 << 20 },
                },
                ..DurableConfig::default()
            }),
        };
        TopicConfig {
            partitions: self.partitions,
            retention: RetentionPolicy {
                max_records: self.max_records,
                max_bytes: self.max_bytes,
                max_age: self.max_age_secs.map(Duration::from_secs),
            },
            storage,
        }
    }
}

/// `origin:line:column: message`, from a toml error's byte span.
fn located(origin: &str, text: &str, e: &toml::de::Error) -> String {
    let message = e.message();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{origin}:{line}:{column}: {message}")
        }
        None => format!("{origin}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(ServerConfig::from_toml("", "f").unwrap(), ServerConfig::default());
    }

    #[test]
    fn a_full_file_parses() {
        let c = ServerConfig::from_toml(
            r#"
            server_name = "n1"
            [nats]
            listen = "0.0.0.0:4333"
            [limits]
            max_payload = 2048
            slow_consumer = "drop"
            [[topics]]
            name = "orders"
            partitions = 3
            flush_interval_ms = 5
            [[topics]]
            name = "metrics.cpu"
            storage = "memory"
            max_records = 100
            "#,
            "f",
        )
        .unwrap();
        assert_eq!(c.nats.listen, "0.0.0.0:4333".parse().unwrap());
        assert_eq!(c.limits.slow_consumer, SlowConsumerPolicy::Drop);
        assert_eq!(c.topics[0].topic_config().partitions, 3);
        assert!(matches!(c.topics[0].topic_config().storage, StorageKind::Durable(_)));
        assert_eq!(c.topics[1].topic_config().retention.max_records, Some(100));
    }

    #[test]
    fn the_native_section_parses_and_is_checked() {
        let c = ServerConfig::from_toml(
            "[native]\nlisten = \"0.0.0.0:7500\"\nmax_batch = 50\ngroup_session_timeout_ms = 5000\n",
            "f",
        )
        .unwrap();
        assert_eq!(c.native.listen, "0.0.0.0:7500".parse().unwrap());
        assert_eq!((c.native.max_batch, c.native.group_session_timeout()), (50, Duration::from_secs(5)));
        assert_eq!(c.native.max_frame_bytes, NativeConfig::default().max_frame_bytes, "the rest defaults");
        let e = ServerConfig::from_toml("[native]\nmax_batch = 0\n", "k").unwrap_err();
        assert_eq!(e.to_string(), "native.max_batch: must be at least 1");
        let e = ServerConfig::from_toml("[native]\nmax_frame_bytes = 1000\n", "k").unwrap_err();
        assert!(e.to_string().starts_with("native.max_frame_bytes: 1000 cannot hold a message"), "{e}");
        let e = ServerConfig::from_toml("[native]\nlisten = \"127.0.0.1:1\"\nretry = 1\n", "k").unwrap_err();
        assert!(e.to_string().contains("unknown field `retry`"), "{e}");
    }

    #[test]
    fn the_telemetry_section_parses_and_is_checked() {
        let c = ServerConfig::from_toml("[telemetry]\nmetrics_listen = \"0.0.0.0:9100\"\n", "f").unwrap();
        assert_eq!(c.telemetry.metrics_listen, "0.0.0.0:9100".parse().unwrap());
        assert!(c.telemetry.metrics, "on unless switched off");
        assert_eq!(ServerConfig::default().telemetry.metrics_listen, "127.0.0.1:9464".parse().unwrap());
        let c = ServerConfig::from_toml("[telemetry]\nmetrics = false\n", "f").unwrap();
        assert!(!c.telemetry.metrics);
        let e = ServerConfig::from_toml("[telemetry]\nsample_interval_ms = 0\n", "k").unwrap_err();
        assert_eq!(e.to_string(), "telemetry.sample_interval_ms: must be at least 1");
        let e = ServerConfig::from_toml("[telemetry]\nmetrics_listen = \"nowhere\"\n", "k.toml").unwrap_err();
        assert!(e.to_string().starts_with("k.toml:2:18: invalid socket address"), "{e}");
    }

    #[test]
    fn the_tracing_section_parses_and_is_checked() {
        let d = ServerConfig::default().tracing;
        assert!(!d.enabled, "off unless switched on");
        assert_eq!((d.service_name.as_str(), d.sampling_ratio), ("kaelix", 0.001));
        let c = ServerConfig::from_toml(
            "[tracing]\nenabled = true\nendpoint = \"http://[::1]:4318/v1/traces\"\nsampling_ratio = 1\n",
            "f",
        )
        .unwrap();
        assert!(c.tracing.enabled);
        assert_eq!(c.tracing.sampling_ratio, 1.0, "an integer ratio reads as a float");
        let e = HttpEndpoint::parse(&c.tracing.endpoint).unwrap();
        assert_eq!(e, HttpEndpoint { host: "::1".into(), port: 4318, path: "/v1/traces".into() });
        assert_eq!(HttpEndpoint::parse("http://otel/v1/traces").unwrap().port, 80);
        for (text, message) in [
            ("sampling_ratio = 1.5", "tracing.sampling_ratio: 1.5 is outside 0.0..=1.0 (a probability)"),
            ("sampling_ratio = -0.1", "tracing.sampling_ratio: -0.1 is outside 0.0..=1.0 (a probability)"),
            ("sampling_ratio = nan", "tracing.sampling_ratio: NaN is outside 0.0..=1.0 (a probability)"),
            ("service_name = \" \"", "tracing.service_name: must not be empty (it names this service in every trace)"),
            (
                "endpoint = \"http://127.0.0.1:4318\"",
                "tracing.endpoint: \"http://127.0.0.1:4318\": has no path: the collector's OTLP/HTTP traces path is /v1/traces",
            ),
            (
                "endpoint = \"http://h:0/v1/traces\"",
                "tracing.endpoint: \"http://h:0/v1/traces\": port \"0\" is not 1..=65535",
            ),
        ] {
            let e = ServerConfig::from_toml(&format!("[tracing]\n{text}\n"), "k").unwrap_err();
            assert_eq!(e.to_string(), message, "{text}");
        }
    }

    #[test]
    fn a_cluster_section_parses_and_names_its_groups() {
        let peers: Vec<String> = (1..=5).map(|i| format!("\"{i}=127.0.0.1:{}\"", 7000 + 10 * i)).collect();
        let text = format!(
            "[cluster]\nenabled = true\nnode_id = 3\nlisten = \"0.0.0.0:7030\"\npeers = [{}]\n\
             [[topics]]\nname = \"orders\"\nstorage = \"replicated\"\npartitions = 2\n\
             [[topics]]\nname = \"scratch\"\nstorage = \"memory\"\nmax_records = 10\n\
             [[topics]]\nname = \"audit\"\nstorage = \"replicated\"\n",
            peers.join(", ")
        );
        let c = ServerConfig::from_toml(&text, "f").unwrap();
        assert_eq!(c.cluster.members().unwrap().len(), 5);
        assert_eq!(c.cluster.bind_addr(), Some("0.0.0.0:7030".parse().unwrap()));
        assert_eq!(forward_addr("127.0.0.1:7030".parse().unwrap()), Some("127.0.0.1:7031".parse().unwrap()));
        let groups = c.replicated_topics();
        let names: Vec<&str> = groups.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["orders", "audit"], "configuration order, memory topics left out");
        // 3 voters by default, whatever the member count; 5 when asked.
        assert!(groups.iter().all(|(_, tc)| tc.storage == StorageKind::Replicated(ReplicationConfig { factor: 3 })));
        let five = ServerConfig::from_toml(&text.replace("[cluster]\n", "[cluster]\nreplication_factor = 5\n"), "f");
        let five = five.unwrap().replicated_topics();
        assert!(five.iter().all(|(_, tc)| tc.storage == StorageKind::Replicated(ReplicationConfig { factor: 5 })));
        assert_eq!(groups[0].1.partitions, 2);
        assert_eq!(c.cluster.forward_timeout(), Duration::from_secs(5), "the default");
        let c = ServerConfig::from_toml(&text.replace("[cluster]\n", "[cluster]\nforward_timeout_ms = 1500\n"), "f");
        assert_eq!(c.unwrap().cluster.forward_timeout(), Duration::from_millis(1500));
        for (ms, ok) in [(0, false), (99, false), (100, true), (600_000, true), (600_001, false)] {
            let c = ServerConfig::from_toml(&format!("[cluster]\nforward_timeout_ms = {ms}\n"), "f");
            match c {
                Ok(c) => assert!(ok, "{ms} ms accepted: {:?}", c.cluster),
                Err(e) => {
                    assert!(!ok, "{ms} ms refused: {e}");
                    assert_eq!(
                        e.to_string(),
                        format!("cluster.forward_timeout_ms: {ms} is outside 100..=600000 (milliseconds)")
                    );
                }
            }
        }
        // Off: the rest is ignored with a warning, and nothing is replicated.
        let off = ServerConfig::from_toml("[cluster]\nnode_id = 2\n", "f").unwrap();
        assert!(!off.cluster.enabled && off.replicated_topics().is_empty());
    }

    #[test]
    fn errors_name_position_and_key() {
        let e = ServerConfig::from_toml("[limits]\nmax_payloadd = 3\n", "kaelix.toml").unwrap_err();
        assert!(e.to_string().starts_with("kaelix.toml:2:1: unknown field `max_payloadd`"), "{e}");
        let e = ServerConfig::from_toml("[limits]\nmax_payload = \"big\"\n", "k.toml").unwrap_err();
        assert!(e.to_string().starts_with("k.toml:2:15: invalid type"), "{e}");
        let e = ServerConfig::from_toml("[[topics]]\nname = \"a..b\"\n", "k").unwrap_err();
        assert!(e.to_string().starts_with("topics[0].name: topic \"a..b\" has an empty token"), "{e}");
        let e = ServerConfig::from_toml("[limits]\nmax_payload = 0\n", "k").unwrap_err();
        assert_eq!(e.to_string(), "limits.max_payload: 0 is outside 1..=8388608");
        let e = ServerConfig::from_toml("[[topics]]\nname = \"a\"\n[[topics]]\nname = \"a\"\n", "k").unwrap_err();
        assert_eq!(e.to_string(), "topics[1].name: topic \"a\" is configured twice");
    }
}

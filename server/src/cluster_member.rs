//! A cluster member: what `kaelix serve --cluster` runs, composed once for
//! every runtime.
//!
//! # Model
//!
//! A member of a static cluster (`[cluster]`, see
//! [`crate::config::ClusterSettings`]) is three services on one node:
//!
//! * **Replicated partitions**: every topic with `storage = "replicated"`
//!   is, partition by partition, a Raft group of all the configured members
//!   (groups numbered in configuration order): `cluster.replication_factor`
//!   of them voters, spread over the members, the others learners, so
//!   every member holds every partition; a voter SWIM has held dead for
//!   `cluster.replace_dead_after_ms` is swapped with a live learner by the
//!   group's leader (joint consensus). Run by
//!   `kaelix_cluster::replicated::broker_node::start_forwarding_broker_node`
//!   on the member's broker: a publish this member does not lead is
//!   forwarded to the group's leader and answered after the commit; every
//!   committed record is appended to every member's broker.
//! * **Membership**: SWIM (`kaelix_cluster::membership`) on a datagram
//!   channel of its own ([`SWIM_CHANNEL`]; the runtime given for it must be
//!   the member's runtime on that channel), the configured members as
//!   seeds, `cluster=ADDR` (the member's node-to-node address) as metadata,
//!   the wall clock in milliseconds as boot incarnation.
//! * **Front ends**: [`Server::start_on`] (NATS and native listeners) on
//!   the member's broker.
//!
//! [`start`] composes them, generic over the runtime, so the `kaelix`
//! binary (on the real runtime) and the simulator's `cluster` scenario run
//! the very same composition. What only a real process does stays with the
//! binary: seeds known only by address (given here as extra seed ids the
//! caller put in its transport's address book), learning the members'
//! addresses from their metadata, metrics, signals and the drain.

use std::sync::Arc;

use kaelix_broker::Broker;
use kaelix_broker::intercept::PublishHook;
use kaelix_broker::topic::Topic;
use kaelix_cluster::membership::{self, Membership, MembershipConfig};
use kaelix_cluster::replicated::broker_node::{BrokerNodeError, StepDown, start_forwarding_broker_node};
use kaelix_cluster::replicated::node::{LivenessFeed, ReplicaObserver, ReplicatedConfig};
use kaelix_core::NodeId;
use kaelix_core::runtime::Runtime;

use crate::config::ClusterSettings;
use crate::{Server, ServerConfig, ServerError};

/// The datagram channel of SWIM (the Raft groups use 0).
pub const SWIM_CHANNEL: u8 = 1;

/// A member's groups in order: (topic, partition); group `g` is the `g`-th.
pub type Groups = Vec<(Topic, u32)>;

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// `[cluster]` is malformed (key path, why).
    #[error("{0}: {1}")]
    Cluster(String, String),
    /// The replicated partitions could not start.
    #[error("starting the cluster member: {0}")]
    Partitions(#[from] BrokerNodeError),
    /// The front ends could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// A started member (see the module docs).
pub struct ClusterMember<R: Runtime> {
    /// The front ends, on [`ClusterMember::broker`].
    pub server: Server<R>,
    /// The member's broker: its replicated topics are its groups.
    pub broker: Broker<R>,
    /// The member's groups in order.
    pub groups: Groups,
    /// Hands the member's leaderships away before a graceful stop.
    pub step_down: StepDown,
    /// The member's SWIM view.
    pub membership: Membership,
}

/// Starts the member's replicated partitions on `rt` (see the module docs):
/// its broker, its groups and the handle of a graceful stop. `bootstrap`:
/// whether an empty disk means a new cluster (`RaftConfig::bootstrap`); a
/// member whose disk was replaced must start with `false`, so it recovers
/// (votes again only once caught up) instead of counting as a fresh voter.
/// `membership`: SWIM's word on the members, from which its groups learn
/// which voters to replace.
pub fn start_partitions<R: Runtime, O: ReplicaObserver>(
    rt: &R,
    config: &ServerConfig,
    bootstrap: bool,
    observer: O,
    membership: Option<LivenessFeed>,
) -> Result<(Broker<R>, Groups, StepDown), MemberError> {
    let members = config.cluster.members().map_err(|(key, why)| MemberError::Cluster(key, why))?;
    let ids: Vec<NodeId> = members.keys().map(|&id| NodeId(id)).collect();
    let topics = config.replicated_topics();
    let groups = topics.iter().flat_map(|(t, c)| (0..c.partitions).map(move |p| (t.clone(), p))).collect();
    let mut replicated = ReplicatedConfig::new(ids, 0);
    replicated.replicas = config.cluster.replicas();
    replicated.replace_dead_after = Some(config.cluster.replace_dead_after());
    replicated.raft.election_timeout = config.cluster.election_timeout();
    replicated.raft.heartbeat_interval = config.cluster.heartbeat_interval();
    replicated.forward_timeout = config.cluster.forward_timeout();
    replicated.snapshot_every = config.cluster.snapshot_entries;
    replicated.snapshot_log_percent = config.cluster.snapshot_log_percent;
    replicated.planted = config.planted;
    replicated.bootstrap = bootstrap;
    let (broker, step_down) = start_forwarding_broker_node(
        rt.clone(),
        Server::<R>::broker_config(config),
        &topics,
        replicated,
        observer,
        membership,
    )?;
    Ok((broker, groups, step_down))
}

/// Starts the member's SWIM membership on `swim_rt` (the member's runtime
/// on [`SWIM_CHANNEL`]): the configured members and `extra_seeds` as seeds,
/// its node-to-node address (`cluster.peers`' entry, else `cluster.listen`)
/// as metadata `cluster=ADDR`.
pub fn start_membership<R: Runtime>(
    swim_rt: &R,
    cluster: &ClusterSettings,
    extra_seeds: &[NodeId],
) -> Result<Membership, MemberError> {
    let members = cluster.members().map_err(|(key, why)| MemberError::Cluster(key, why))?;
    let me = members.get(&cluster.node_id).copied().or(cluster.listen).ok_or_else(|| {
        MemberError::Cluster("cluster.node_id".into(), format!("member {} has no address", cluster.node_id))
    })?;
    let mut seeds: Vec<NodeId> = members.keys().map(|&id| NodeId(id)).collect();
    seeds.extend_from_slice(extra_seeds);
    let config = MembershipConfig::new(seeds, bytes::Bytes::from(format!("cluster={me}")));
    Ok(membership::start(swim_rt, config))
}

/// Starts a member of a static cluster with peers (see the module docs):
/// SWIM on `swim_rt` ([`start_membership`], with `extra_seeds`), its
/// partitions on `rt` ([`start_partitions`], with `bootstrap` and SWIM's
/// events), then the front ends on its broker with `hook` installed.
pub fn start<R: Runtime, O: ReplicaObserver>(
    rt: R,
    swim_rt: &R,
    config: ServerConfig,
    hook: Option<Arc<dyn PublishHook>>,
    observer: O,
    bootstrap: bool,
    extra_seeds: &[NodeId],
) -> Result<ClusterMember<R>, MemberError> {
    let membership = start_membership(swim_rt, &config.cluster, extra_seeds)?;
    let (broker, groups, step_down) =
        start_partitions(&rt, &config, bootstrap, observer, Some(LivenessFeed::of(&membership)))?;
    let server = Server::start_on(rt, config, hook, broker.clone())?;
    Ok(ClusterMember { server, broker, groups, step_down, membership })
}

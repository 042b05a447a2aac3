//! `kaelix serve --cluster` and `kaelix cluster status`.
//!
//! # Model
//!
//! A static cluster (`[cluster]`, see `kaelix_server::config::ClusterSettings`):
//! every member is started with the same peers and the same configured
//! topics. Each topic with `storage = "replicated"` is, partition by
//! partition, a Raft group of all the members — `cluster.replication_factor`
//! voters spread over them, the others learners, a voter SWIM has held dead
//! for `cluster.replace_dead_after_ms` swapped with a live learner —
//! (`kaelix_cluster::replicated::broker_node::start_forwarding_broker_node`
//! on the real runtime; groups numbered in configuration order), and the
//! server (NATS and native listeners) runs on that node's broker. That
//! composition is `kaelix_server::cluster_member::start`, generic over the
//! runtime, which the simulator's `cluster` scenario runs too; what stays
//! here is what only a real process does (join addresses, learning
//! addresses, metrics, status). So:
//!
//! * a publish to a replicated topic on the partition's leader is proposed
//!   there; on any other member it is **forwarded** to the leader over the
//!   cluster's forwarding port (the member's cluster port + 1), as a
//!   produce of the member's session; either way the publisher is
//!   acknowledged (NATS `+OK` with `verbose`, native `acks = committed`)
//!   only once the record is committed;
//! * every member appends every committed record to its broker, so a
//!   subscriber on any member receives it;
//! * a publish while no leader is known is refused (NATS `-ERR`), and one
//!   whose forwarding stream broke has an unknown outcome: the publisher
//!   retries.
//!
//! Memory topics stay local to each member (a NATS subject with no
//! configured topic is relayed to that member's subscribers only).
//! Durable topics are refused in cluster mode: stored data is replicated.
//!
//! # Membership
//!
//! Every member also runs SWIM (`kaelix_cluster::membership`, the driver
//! the simulator's membership scenarios prove) on the real runtime: its
//! datagrams travel over the same node-to-node transport as the Raft
//! groups' but on a channel of their own ([`SWIM_CHANNEL`], see
//! `RealRuntime::channel`), the configured peers are its seeds, and its
//! metadata is `cluster=ADDR`, the member's node-to-node address. It boots
//! with its wall clock in milliseconds as incarnation, so a member restarted
//! on its data directory comes back above the incarnation the others hold
//! for it. A member stopped by SIGTERM leaves (the others mark it `left`);
//! one killed is suspected, then declared dead (memberlist's LAN timings,
//! `SwimConfig::default`). `--join ADDR,...` (`cluster.join`) adds seeds
//! known only by address: each gets a provisional id (from `u64::MAX`
//! down, [`join_seed_id`]) in the transport's address book, so SWIM's
//! `Join` reaches it and whoever answers is learned under its real id;
//! every member's `cluster=ADDR` metadata goes into the address book as it
//! arrives ([`learn_addresses`]), which is how members that know only one
//! address reach every other (answers to a stranger are dropped until its
//! record has arrived; SWIM retries the join every announce interval). The
//! provisional seeds never become members: SWIM keeps announcing to them
//! (a push-pull every 5 s), which also merges a partitioned member back.
//! A member with `join` and no `peers` runs membership only: its broker is
//! local, it holds no replicated partitions (they are Raft groups of the
//! configured peers; placement on joined members is not built), and it
//! forwards nothing. Its view — each member's state, incarnation and
//! the phi of its accrual detector — is exported as `kaelix_swim_*` metrics,
//! the names the simulator's membership scenarios use
//! (`RunMetrics::record_swim`, `record_swim_members`). SWIM does not yet
//! decide anything here: Raft groups keep the configured members, and a
//! member SWIM declares dead stays in every group (placement on live
//! members is a later step of the cluster work).
//!
//! # Status
//!
//! `kaelix cluster status --nodes ADDR,...` reads each member's metrics
//! endpoint (`kaelix_cluster_*` gauges, written by the observer below at
//! every Raft step, and the `kaelix_swim_member_*` gauges) and prints
//! members, each member's SWIM state, incarnation and phi as each node sees
//! it, and each partition's leader, term and commit index as each member
//! sees them.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // the binary's edge: a status table, HTTP scrapes

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kaelix_broker::topic::Topic;
use kaelix_cluster::membership::Membership;
use kaelix_cluster::raft::Raft;
use kaelix_cluster::replicated::node::ReplicaObserver;
use kaelix_core::NodeId;
use kaelix_core::runtime::{Priority, Spawner};
use kaelix_runtime_real::{NodeConfig, RealRuntime};
use kaelix_server::ServerConfig;
use kaelix_server::cluster_member::{self, ClusterMember};
use kaelix_server::config::{ClusterSettings, forward_addr};
use kaelix_telemetry::MetricsCollector;

use kaelix_scenarios::metrics::{Kind, PartitionMember, RunMetrics};

use crate::http_get::{self, Endpoint};

/// The observer that keeps each group's state for the metrics endpoint.
#[derive(Clone, Default)]
pub struct ClusterView {
    groups: Arc<Mutex<Vec<PartitionMember>>>,
}

impl ReplicaObserver for ClusterView {
    fn stepped(&self, _node: NodeId, group: u32, raft: &Raft) {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let g = group as usize;
        if groups.len() <= g {
            groups.resize(g + 1, PartitionMember::default());
        }
        // The same figures, and role code, as a simulated run's metrics.
        groups[g] = PartitionMember::of(raft);
    }
}

/// The real runtime's node configuration of this member: the peers'
/// addresses (this member's own bound where `cluster.listen` says) and
/// their forwarding addresses.
pub fn node_config(cluster: &ClusterSettings, data_dir: &std::path::Path) -> Result<NodeConfig, String> {
    // A member joining by address knows only itself; the rest is learned.
    let members = cluster.members().map_err(|(key, why)| format!("{key}: {why}"))?;
    let me = NodeId(cluster.node_id);
    let mut config = NodeConfig::new(me, data_dir);
    for (&id, &addr) in &members {
        let forward = forward_addr(addr).ok_or_else(|| format!("member {id}: no forwarding port"))?;
        config.peers.insert(NodeId(id), addr);
        config.clients.insert(NodeId(id), forward);
    }
    if let Some(listen) = cluster.listen {
        config.peers.insert(me, listen);
        config.clients.insert(me, forward_addr(listen).ok_or("cluster.listen: no forwarding port")?);
    }
    Ok(config)
}

/// The transport channel of SWIM's datagrams (the Raft groups use 0).
pub use kaelix_server::cluster_member::SWIM_CHANNEL;

/// The provisional id of the `i`-th join address: from `u64::MAX` down,
/// far above any configured member id.
pub fn join_seed_id(i: usize) -> NodeId {
    NodeId(u64::MAX - i as u64)
}

/// The join addresses (`cluster.join`) put into the transport's address
/// book under provisional ids: the extra seeds of this member's SWIM.
pub fn join_seeds(rt: &RealRuntime, cluster: &ClusterSettings) -> Result<Vec<NodeId>, String> {
    let joins = cluster.join_addrs().map_err(|(key, why)| format!("{key}: {why}"))?;
    Ok(joins
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let id = join_seed_id(i);
            rt.learn_peer(id, addr);
            id
        })
        .collect())
}

/// Learns every member's address from `membership` as it arrives (see the
/// module docs), in a task of its own.
pub fn learn_member_addresses(rt: &RealRuntime, membership: &Membership) {
    let events = membership.subscribe();
    drop(rt.spawn(Priority::Normal, "swim-addresses", learn_addresses(rt.clone(), membership.clone(), events)));
}

/// Starts the SWIM membership of a member with `join` and no `peers`
/// (membership only; see the module docs).
pub fn start_membership(rt: &RealRuntime, cluster: &ClusterSettings) -> Result<Membership, String> {
    let seeds = join_seeds(rt, cluster)?;
    let membership =
        cluster_member::start_membership(&rt.channel(SWIM_CHANNEL), cluster, &seeds).map_err(|e| e.to_string())?;
    learn_member_addresses(rt, &membership);
    Ok(membership)
}

/// The node-to-node address a member's SWIM metadata names.
pub fn metadata_addr(metadata: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(metadata).ok()?.split(',').find_map(|kv| kv.strip_prefix("cluster="))?.parse().ok()
}

/// Puts every member's address (its metadata) into the transport's
/// address book, now and after every membership event, until the service
/// stops.
async fn learn_addresses(
    rt: RealRuntime,
    membership: Membership,
    mut events: futures_channel::mpsc::UnboundedReceiver<kaelix_cluster::swim::MembershipEvent>,
) {
    use futures_util::StreamExt;
    loop {
        membership.with_members(|members| {
            for m in members {
                if let Some(addr) = metadata_addr(&m.metadata)
                    && rt.learn_peer(m.id, addr)
                {
                    tracing::info!(member = m.id.0, %addr, "learned a member's cluster address");
                }
            }
        });
        if events.next().await.is_none() {
            return;
        }
    }
}

/// Publishes the membership service's view at scrape time, under the
/// names of the simulator's membership metrics (no `node` label: one node
/// per process; `kaelix_cluster_node_id` names it).
pub fn add_membership_metrics(collector: &Arc<MetricsCollector>, membership: Membership) {
    // The collector owns its sources: a strong reference would be a cycle.
    let weak = Arc::downgrade(collector);
    collector.add_source("swim", move || {
        let Some(collector) = weak.upgrade() else { return };
        let mut figures = RunMetrics::new();
        figures.record_swim(&[], &membership);
        figures.record_swim_members(&[], &membership);
        for (kind, name, help, labels, value) in figures.samples() {
            match kind {
                Kind::Counter => {
                    collector.describe(kaelix_telemetry::Kind::Counter, name, None, help);
                    collector.counter(name, labels).absolute(value as u64);
                }
                Kind::Gauge => {
                    collector.describe(kaelix_telemetry::Kind::Gauge, name, None, help);
                    collector.gauge(name, labels).set(value);
                }
            }
        }
    });
}

/// One member's view of a partition: (member, [role, term, leader, commit, applied]).
type Views = Vec<(u64, [u64; 5])>;

/// Starts this member (`kaelix_server::cluster_member::start`, the
/// composition the simulator's `cluster` scenario runs): its replicated
/// groups, SWIM on [`SWIM_CHANNEL`] with the join addresses as extra seeds,
/// and the front ends on its broker; then learns the members' addresses
/// from their SWIM metadata (see the module docs).
pub fn start_member(
    rt: &RealRuntime,
    config: ServerConfig,
    hook: Option<Arc<dyn kaelix_broker::intercept::PublishHook>>,
    view: ClusterView,
) -> Result<ClusterMember<RealRuntime>, String> {
    let seeds = join_seeds(rt, &config.cluster)?;
    // An empty data directory is what `cluster.initial_state` says: a new
    // member of a new cluster, or a member whose disk was lost (recovering).
    let bootstrap = config.cluster.initial_state.bootstrap();
    let member = cluster_member::start(rt.clone(), &rt.channel(SWIM_CHANNEL), config, hook, view, bootstrap, &seeds)
        .map_err(|e| e.to_string())?;
    learn_member_addresses(rt, &member.membership);
    Ok(member)
}

/// Publishes the member's groups as gauges at scrape time.
pub fn add_metrics(collector: &MetricsCollector, node: u64, view: ClusterView, groups: Vec<(Topic, u32)>) {
    let node_gauge = collector.gauge("kaelix_cluster_node_id", &[]);
    let handles: Vec<_> = groups
        .iter()
        .map(|(topic, partition)| {
            let labels = [("topic", topic.as_str().to_owned()), ("partition", partition.to_string())];
            [
                collector.gauge("kaelix_cluster_partition_role", &labels),
                collector.gauge("kaelix_cluster_partition_term", &labels),
                collector.gauge("kaelix_cluster_partition_leader", &labels),
                collector.gauge("kaelix_cluster_partition_commit_index", &labels),
                collector.gauge("kaelix_cluster_partition_applied_index", &labels),
            ]
        })
        .collect();
    collector.add_source("cluster", move || {
        node_gauge.set(node as f64);
        let seen = view.groups.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (g, gauges) in handles.iter().enumerate() {
            let v = seen.get(g).cloned().unwrap_or_default();
            for (gauge, value) in gauges.iter().zip([v.role, v.term, v.leader, v.commit, v.applied]) {
                gauge.set(value as f64);
            }
        }
    });
}

/// What one member's endpoint said.
struct MemberReport {
    node: Option<u64>,
    /// (topic, partition) → (role, term, leader, commit, applied).
    partitions: BTreeMap<(String, u32), [u64; 5]>,
    /// SWIM member → its view of it.
    swim: BTreeMap<u64, SwimView>,
}

/// One node's SWIM view of one member.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct SwimView {
    /// `kaelix_swim_member_state`'s code.
    state: u64,
    incarnation: u64,
    phi: f64,
}

impl SwimView {
    fn state_name(&self) -> &'static str {
        ["alive", "suspect", "dead", "left"].get(self.state as usize).copied().unwrap_or("?")
    }
}

/// One GET of a member's `/metrics` ([`crate::http_get`]), read for its
/// cluster gauges; errors name the address.
fn scrape(addr: &str) -> Result<MemberReport, String> {
    let endpoint = Endpoint::parse(addr).map_err(|e| format!("{addr}: {e}"))?;
    let page = http_get::get(&endpoint, std::time::Duration::from_secs(2), "kaelix-cluster-status")
        .map_err(|e| format!("{addr}: {e}"))?;
    parse_metrics(&page).ok_or_else(|| format!("{addr}: no kaelix_cluster_node_id: not a cluster member's metrics"))
}

/// Reads the `kaelix_cluster_*` samples of a Prometheus text page.
fn parse_metrics(page: &str) -> Option<MemberReport> {
    let mut report = MemberReport { node: None, partitions: BTreeMap::new(), swim: BTreeMap::new() };
    for line in page.lines().filter(|l| l.starts_with("kaelix_swim_member_")) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Some((name, labels)) = series.split_once('{') else { continue };
        // Rust's float parser reads the text format's "+Inf" too.
        let Ok(value) = value.parse::<f64>() else { continue };
        let member = labels
            .trim_end_matches('}')
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "member")
            .and_then(|(_, v)| v.trim_matches('"').parse::<u64>().ok());
        let Some(member) = member else { continue };
        let view = report.swim.entry(member).or_default();
        match name {
            "kaelix_swim_member_state" => view.state = value as u64,
            "kaelix_swim_member_incarnation" => view.incarnation = value as u64,
            "kaelix_swim_member_phi" => view.phi = value,
            _ => {}
        }
    }
    for line in page.lines().filter(|l| l.starts_with("kaelix_cluster_")) {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse::<f64>().ok()? as u64;
        if series == "kaelix_cluster_node_id" {
            report.node = Some(value);
            continue;
        }
        let Some((name, labels)) = series.split_once('{') else { continue };
        let field = match name {
            "kaelix_cluster_partition_role" => 0,
            "kaelix_cluster_partition_term" => 1,
            "kaelix_cluster_partition_leader" => 2,
            "kaelix_cluster_partition_commit_index" => 3,
            "kaelix_cluster_partition_applied_index" => 4,
            _ => continue,
        };
        let mut topic = None;
        let mut partition = None;
        for pair in labels.trim_end_matches('}').split(',') {
            let Some((k, v)) = pair.split_once('=') else { continue };
            let v = v.trim_matches('"');
            match k {
                "topic" => topic = Some(v.to_owned()),
                "partition" => partition = v.parse().ok(),
                _ => {}
            }
        }
        if let (Some(t), Some(p)) = (topic, partition) {
            report.partitions.entry((t, p)).or_insert([0; 5])[field] = value;
        }
    }
    report.node.map(|_| report)
}

/// `kaelix cluster status`: prints members and partitions; exit code 1 if
/// a member did not answer or no partition has one agreed leader.
pub fn status(nodes: &[String]) -> std::process::ExitCode {
    let mut reports = Vec::new();
    println!("members:");
    for addr in nodes {
        match scrape(addr) {
            Ok(r) => {
                println!("  node {:>3}  {addr:<22} up", r.node.unwrap_or(0));
                reports.push(r);
            }
            Err(e) => println!("  node   ?  {addr:<22} unreachable ({e})"),
        }
    }
    // One row per member, one "node: state incarnation phi" per node that
    // answered (a killed member stays listed as the others saw it last).
    let mut swim: BTreeMap<u64, Vec<(u64, SwimView)>> = BTreeMap::new();
    for r in &reports {
        for (&member, &view) in &r.swim {
            swim.entry(member).or_default().push((r.node.unwrap_or(0), view));
        }
    }
    println!("swim (seen by node: state incarnation phi):");
    for (member, views) in &swim {
        let each: Vec<String> = views
            .iter()
            .map(|(node, v)| format!("{node}: {} {} {:.2}", v.state_name(), v.incarnation, v.phi))
            .collect();
        println!("  member {member:>3}  {}", each.join(", "));
    }
    let mut partitions: BTreeMap<(String, u32), Views> = BTreeMap::new();
    for r in &reports {
        for (tp, v) in &r.partitions {
            partitions.entry(tp.clone()).or_default().push((r.node.unwrap_or(0), *v));
        }
    }
    println!("partitions:");
    println!(
        "  {:<24} {:>6} {:>6} {:>8}  members (node: role term commit)",
        "topic/partition", "leader", "term", "commit"
    );
    let mut healthy = reports.len() == nodes.len();
    for ((topic, partition), views) in &partitions {
        // The leader is the member that says it leads in the highest term.
        let leading = views.iter().filter(|(_, v)| v[0] == 2).max_by_key(|(_, v)| v[1]);
        let (leader, term, commit) = match leading {
            Some((node, v)) => (node.to_string(), v[1].to_string(), v[3].to_string()),
            None => {
                healthy = false;
                ("none".into(), "-".into(), "-".into())
            }
        };
        let each: Vec<String> = views
            .iter()
            .map(|(node, v)| {
                let role = ["follower", "candidate", "leader", "learner"].get(v[0] as usize).copied().unwrap_or("?");
                format!("{node}: {role} {} {}", v[1], v[3])
            })
            .collect();
        println!("  {:<24} {leader:>6} {term:>6} {commit:>8}  {}", format!("{topic}/{partition}"), each.join(", "));
    }
    if healthy { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE }
}

/// The addresses `--nodes` names, each `HOST:PORT`.
pub fn parse_nodes(list: &str) -> Result<Vec<String>, String> {
    let nodes: Vec<String> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if nodes.is_empty() {
        return Err("--nodes: give at least one metrics address (HOST:PORT)".into());
    }
    for n in &nodes {
        if n.parse::<SocketAddr>().is_err() && n.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
            return Err(format!("--nodes: {n:?} is not HOST:PORT"));
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cluster_gauges_of_a_metrics_page() {
        let page = "# TYPE kaelix_cluster_node_id gauge\nkaelix_cluster_node_id 2\n\
            kaelix_cluster_partition_term{topic=\"orders\",partition=\"1\"} 7\n\
            kaelix_cluster_partition_leader{topic=\"orders\",partition=\"1\"} 3\n\
            kaelix_cluster_partition_commit_index{topic=\"orders\",partition=\"1\"} 42\n\
            kaelix_server_connections 4\n";
        let r = parse_metrics(page).expect("a member's page");
        assert_eq!(r.node, Some(2));
        assert_eq!(r.partitions[&("orders".to_owned(), 1)], [0, 7, 3, 42, 0]);
        assert!(parse_metrics("kaelix_server_connections 4\n").is_none(), "not a cluster member");
        assert!(r.swim.is_empty());
    }

    #[test]
    fn reads_each_members_swim_view() {
        let page = "kaelix_cluster_node_id 1\n\
            kaelix_swim_members{state=\"alive\"} 2\n\
            kaelix_swim_member_state{member=\"2\"} 0\n\
            kaelix_swim_member_incarnation{member=\"2\"} 1765000000123\n\
            kaelix_swim_member_phi{member=\"2\"} 0.25\n\
            kaelix_swim_member_state{member=\"3\"} 2\n\
            kaelix_swim_member_phi{member=\"3\"} +Inf\n";
        let r = parse_metrics(page).expect("a member's page");
        assert_eq!(r.swim[&2], SwimView { state: 0, incarnation: 1_765_000_000_123, phi: 0.25 });
        assert_eq!(r.swim[&3].state_name(), "dead");
        assert!(r.swim[&3].phi.is_infinite());
        assert_eq!(r.swim.len(), 2, "kaelix_swim_members is no member");
    }

    #[test]
    fn node_lists_are_checked() {
        assert_eq!(parse_nodes("127.0.0.1:9464, localhost:9465").unwrap().len(), 2);
        assert!(parse_nodes("").is_err());
        assert!(parse_nodes("127.0.0.1").unwrap_err().contains("not HOST:PORT"));
    }

    #[test]
    fn a_members_address_is_read_from_its_metadata() {
        assert_eq!(metadata_addr(b"cluster=127.0.0.1:7111"), Some("127.0.0.1:7111".parse().unwrap()));
        assert_eq!(metadata_addr(b"role=x,cluster=[::1]:7"), Some("[::1]:7".parse().unwrap()));
        assert_eq!(metadata_addr(b"node=3"), None);
        assert_eq!(metadata_addr(b"cluster=nowhere"), None);
        assert!(join_seed_id(0).0 > join_seed_id(1).0 && join_seed_id(1).0 > 1 << 60);
    }
}

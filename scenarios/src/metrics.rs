//! A run's metrics: what the system's components counted during one
//! simulated run, in the Prometheus text format, for `kaelix sim run --seed
//! N --metrics` and for tests.
//!
//! # Why not the `kaelix-telemetry` collector
//!
//! `kaelix serve` renders `/metrics` with `kaelix_telemetry::MetricsCollector`
//! (a `metrics-exporter-prometheus` recorder). That crate is the OS edge of
//! telemetry (threads, sockets, the real runtime, the wall clock for summary
//! windows), so the simulator cannot depend on it; and no protocol crate
//! records through the `metrics` facade anyway: every figure `/metrics`
//! shows for the broker, the server and the cluster is a component's own
//! counter read at scrape time (`telemetry/src/sources.rs`,
//! `cli/src/cluster.rs`). A run's metrics are therefore those same counters
//! read once, at the end of the run, inside the simulation — a scrape taken
//! when the run ends — under the **same names, labels and meanings** as
//! `serve`'s scrape, plus a `node` label because one simulation holds many
//! nodes.
//!
//! # Deterministic by construction
//!
//! Every value is a counter or gauge the component kept under the
//! simulator's scheduler and clock (nothing here reads the OS clock: there
//! is no histogram or summary with a wall-clock window); families are kept
//! in a `BTreeMap` by name and samples by their sorted label set, and floats
//! are printed with Rust's shortest round-trip form. The same seed gives
//! byte-identical text; `scenarios/tests/scenarios/metrics.rs` checks it.
//!
//! What a node's figures cover: the component alive when the run ended (a
//! restarted node's broker or server starts counting from zero, as a
//! restarted `kaelix serve` does).
//!
//! # What each scenario exports
//!
//! Every scenario of the catalog ([`crate::Scenario::run_metered`] returns
//! `Some`; the trait's default, `None`, is left for scenarios built on the
//! harness):
//!
//! * `broker`, `broker-durable`, `broker-backpressure`, `broker-plugins`:
//!   the broker ([`RunMetrics::record_broker`]).
//! * `broker-replicated`: every node's broker and its member of each
//!   partition's Raft group ([`RunMetrics::record_partition`]).
//! * `serve`, `serve-reload`: the server and its broker
//!   ([`RunMetrics::record_server`]).
//! * `raft-partitions`: every node's member of each partition's Raft group
//!   (topic `orders`), as `broker-replicated`, plus the member's own
//!   counters ([`RunMetrics::record_raft_stats`], `kaelix_raft_*`: `serve`
//!   exports none of them, so the names are this module's).
//! * `membership-*`: every node's SWIM service as its handle reports it
//!   ([`RunMetrics::record_membership`], `kaelix_swim_*`): its view of the
//!   members by state, its incarnation and local health, and the SWIM
//!   core's own counters. Nothing is counted by the scenario itself.
//! * `broadcast`: what each node reported through its observer — the
//!   values it holds and the values it acknowledged
//!   (`kaelix_broadcast_*`); the broadcast core's own counters
//!   (retransmits, anti-entropy rounds) stay inside the node, which does
//!   not expose them.
//!
//! All add `kaelix_sim_time_seconds`. Reading the figures never changes the
//! run: a scenario keeps component handles (or their figures, copied at
//! every Raft step) only when metered, through its observers and
//! checkers, which neither schedule nor draw anything, and reads them once
//! the run has ended; so a metered run has the trace hash of a plain one
//! (checked by the tests).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kaelix_broker::Broker;
use kaelix_cluster::membership::Membership;
use kaelix_cluster::raft::{Raft, RaftStats, Role};
use kaelix_cluster::swim::MemberState;
use kaelix_core::NodeId;
use kaelix_core::runtime::Runtime;
use kaelix_server::ServerObserver;

/// A metric family's type, as the `# TYPE` line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (the component's own monotonic counter).
    Counter,
    /// Any value.
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sorted label set: `(name, value)` by name.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug)]
struct Family {
    kind: Kind,
    help: &'static str,
    samples: BTreeMap<Labels, f64>,
}

/// The metrics of one run (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunMetrics {
    families: BTreeMap<&'static str, FamilyCmp>,
}

/// [`Family`] with equality (floats compared by bits, so a NaN equals
/// itself and two renders agree exactly when the values do).
#[derive(Clone, Debug)]
struct FamilyCmp(Family);

impl PartialEq for FamilyCmp {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        a.kind == b.kind
            && a.help == b.help
            && a.samples.len() == b.samples.len()
            && a.samples.iter().zip(&b.samples).all(|((la, va), (lb, vb))| la == lb && va.to_bits() == vb.to_bits())
    }
}

impl RunMetrics {
    /// No metric yet.
    pub fn new() -> Self {
        RunMetrics::default()
    }

    /// Sets one sample of `name` (a later set of the same labels replaces it).
    ///
    /// # Panics
    /// If `name` was set before as the other kind or with another help text
    /// (two sources disagreeing about one family is a bug here).
    pub fn set(
        &mut self,
        kind: Kind,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, String)],
        value: f64,
    ) {
        let family = &mut self
            .families
            .entry(name)
            .or_insert_with(|| FamilyCmp(Family { kind, help, samples: BTreeMap::new() }))
            .0;
        assert!(family.kind == kind && family.help == help, "metric {name} defined twice differently");
        let mut labels = labels.to_vec();
        labels.sort();
        family.samples.insert(labels, value);
    }

    /// Sets a counter sample to the component's absolute count.
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: &[(&'static str, String)], value: u64) {
        self.set(Kind::Counter, name, help, labels, value as f64);
    }

    /// Sets a gauge sample.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: &[(&'static str, String)], value: f64) {
        self.set(Kind::Gauge, name, help, labels, value);
    }

    /// The value of `name` with exactly `labels` (any order), if set.
    pub fn value(&self, name: &str, labels: &[(&'static str, &str)]) -> Option<f64> {
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.sort();
        self.families.get(name)?.0.samples.iter().find_map(|(l, v)| {
            let have: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
            (have == want).then_some(*v)
        })
    }

    /// The sum of every sample of `name` whose labels include all of
    /// `labels` (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&'static str, &str)]) -> f64 {
        self.families.get(name).map_or(0.0, |f| {
            f.0.samples
                .iter()
                .filter(|(l, _)| labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
                .map(|(_, v)| v)
                .sum()
        })
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    /// Every family name, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.families.keys().copied().collect()
    }

    /// The Prometheus text format (0.0.4): per family, sorted by name,
    /// `# HELP`, `# TYPE`, then its samples sorted by label set.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            let family = &family.0;
            let _ = writeln!(out, "# HELP {name} {}", escape_help(family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.name());
            for (labels, value) in &family.samples {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {}", number(*value));
            }
        }
        out
    }

    /// The figures of `broker`, as `telemetry/src/sources.rs` exports them
    /// for `serve` (same names and labels), with `node` added.
    pub fn record_broker<R: Runtime>(&mut self, node: NodeId, broker: &Broker<R>) {
        let n = ("node", node.0.to_string());
        let one = std::slice::from_ref(&n);
        let with = |k: &'static str, v: String| [n.clone(), (k, v)];
        let stats = broker.stats();
        self.gauge("kaelix_broker_topics", "Topics.", one, stats.topics as f64);
        self.gauge("kaelix_broker_partitions", "Partitions over all topics.", one, stats.partitions as f64);
        self.counter(
            "kaelix_broker_published_messages_total",
            "Messages appended to topics (dead letters included).",
            one,
            stats.published,
        );
        self.counter(
            "kaelix_broker_relayed_messages_total",
            "Messages relayed to live streams without a topic.",
            one,
            stats.relayed,
        );
        self.counter(
            "kaelix_broker_blocked_publishes_total",
            "Publishes that waited for a blocking stream.",
            one,
            stats.blocked_publishes,
        );
        const DELIVERED: &str = "Messages handed to consumers (to: stream or group).";
        self.counter(
            "kaelix_broker_delivered_messages_total",
            DELIVERED,
            &with("to", "stream".into()),
            stats.delivered,
        );
        self.counter(
            "kaelix_broker_delivered_messages_total",
            DELIVERED,
            &with("to", "group".into()),
            stats.group_delivered,
        );
        let d = stats.dropped;
        for (reason, count) in
            [("oldest", d.oldest), ("newest", d.newest), ("shed", d.shed), ("closed", d.closed), ("expired", d.expired)]
        {
            self.counter(
                "kaelix_broker_dropped_messages_total",
                "Messages dropped by a stream, by reason: oldest (drop-oldest or shedding at full), newest (grow at its cap, or block), shed (low priority under pressure), closed, expired (removed by retention unread).",
                &with("reason", reason.into()),
                count,
            );
        }
        self.counter(
            "kaelix_broker_dead_lettered_messages_total",
            "Messages sent to dead-letter topics.",
            one,
            stats.dead_lettered,
        );
        self.gauge(
            "kaelix_broker_streams",
            "Open streams (subscriptions inside the broker).",
            one,
            stats.streams as f64,
        );
        let buffered: usize = broker.active_streams().iter().map(|s| s.buffered).sum();
        self.gauge(
            "kaelix_broker_stream_buffered_messages",
            "Messages buffered in open streams.",
            one,
            buffered as f64,
        );
        self.counter("kaelix_broker_idle_closed_streams_total", "Streams closed for idleness.", one, stats.idle_closed);
        self.gauge("kaelix_broker_consumer_groups", "Consumer groups.", one, stats.groups as f64);
        for lag in broker.group_lags() {
            let labels = [
                n.clone(),
                ("group", lag.group.to_string()),
                ("topic", lag.topic.as_str().to_owned()),
                ("partition", lag.partition.to_string()),
            ];
            self.gauge(
                "kaelix_broker_consumer_group_lag_messages",
                "Messages of a partition not yet committed by a group.",
                &labels,
                lag.lag as f64,
            );
        }
        self.counter(
            "kaelix_broker_retention_removed_records_total",
            "Records removed by retention.",
            one,
            stats.retention_removed,
        );
        let cache = broker.match_cache_stats();
        const LOOKUPS: &str = "Subscription match-cache lookups, by result (hit, miss).";
        self.counter("kaelix_broker_match_cache_lookups_total", LOOKUPS, &with("result", "hit".into()), cache.hits);
        self.counter("kaelix_broker_match_cache_lookups_total", LOOKUPS, &with("result", "miss".into()), cache.misses);
        self.counter(
            "kaelix_broker_match_cache_evictions_total",
            "Match-cache entries evicted to make room.",
            one,
            cache.evictions,
        );
        let lookups = cache.hits + cache.misses;
        if lookups > 0 {
            self.gauge(
                "kaelix_broker_match_cache_hit_ratio",
                "Hits over lookups of the match cache since start.",
                one,
                cache.hits as f64 / lookups as f64,
            );
        }
    }

    /// The server's connection and traffic figures and its broker's
    /// ([`RunMetrics::record_broker`]), as `telemetry/src/sources.rs`
    /// exports them for `serve`, with `node` added.
    pub fn record_server<R: Runtime>(&mut self, node: NodeId, server: &ServerObserver<R>) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = ("node", node.0.to_string());
        let one = std::slice::from_ref(&n);
        let stats = server.stats();
        self.gauge(
            "kaelix_server_connections",
            "Client connections open now (NATS and native).",
            one,
            server.connection_count() as f64,
        );
        self.gauge(
            "kaelix_server_group_members",
            "Consumer-group members native clients hold.",
            one,
            server.group_member_count() as f64,
        );
        self.counter(
            "kaelix_server_connections_accepted_total",
            "Client connections accepted.",
            one,
            stats.accepted.load(Relaxed),
        );
        self.counter(
            "kaelix_server_connections_refused_total",
            "Connections refused at max_connections or while draining.",
            one,
            stats.refused.load(Relaxed),
        );
        for (protocol, traffic) in [("nats", &stats.nats), ("native", &stats.native)] {
            let labels = [n.clone(), ("protocol", protocol.to_owned())];
            self.counter(
                "kaelix_server_received_bytes_total",
                "Bytes read from clients, per protocol.",
                &labels,
                traffic.bytes_in.load(Relaxed),
            );
            self.counter(
                "kaelix_server_sent_bytes_total",
                "Bytes written to clients, per protocol.",
                &labels,
                traffic.bytes_out.load(Relaxed),
            );
        }
        for (name, help, value) in [
            (
                "kaelix_server_slow_consumer_closes_total",
                "Connections closed as slow consumers.",
                &stats.slow_consumer_closes,
            ),
            (
                "kaelix_server_slow_consumer_dropped_messages_total",
                "Messages dropped for slow consumers (policy drop).",
                &stats.slow_consumer_drops,
            ),
            (
                "kaelix_server_protocol_error_closes_total",
                "Connections closed for protocol errors.",
                &stats.protocol_errors,
            ),
            ("kaelix_server_stale_closes_total", "Connections closed for unanswered PINGs.", &stats.stale_closes),
        ] {
            self.counter(name, help, one, value.load(Relaxed));
        }
        self.record_broker(node, server.broker());
    }

    /// One Raft group's member as `kaelix serve --cluster` exports it
    /// (`cli/src/cluster.rs`: role 0 follower, 1 candidate, 2 leader; term,
    /// leader node id or 0, commit and applied index), with `node` added.
    pub fn record_partition(&mut self, node: NodeId, topic: &str, partition: u32, member: PartitionMember) {
        let labels = [("node", node.0.to_string()), ("topic", topic.to_owned()), ("partition", partition.to_string())];
        let figures = [
            (
                "kaelix_cluster_partition_role",
                "This member's role in the partition's Raft group (0 follower, 1 candidate, 2 leader).",
                member.role,
            ),
            ("kaelix_cluster_partition_term", "The member's current Raft term.", member.term),
            ("kaelix_cluster_partition_leader", "The leader this member knows (node id, 0 for none).", member.leader),
            ("kaelix_cluster_partition_commit_index", "The member's commit index.", member.commit),
            (
                "kaelix_cluster_partition_applied_index",
                "The last index applied to the member's broker.",
                member.applied,
            ),
        ];
        for (name, help, value) in figures {
            self.gauge(name, help, &labels, value as f64);
        }
    }

    /// One Raft member's own counters ([`Raft::stats`]; `serve` exports
    /// none of them, hence `kaelix_raft_*` names of their own), labelled
    /// like [`RunMetrics::record_partition`]. They count since the member
    /// booted: a restarted node starts again from zero.
    pub fn record_raft_stats(&mut self, node: NodeId, topic: &str, partition: u32, stats: RaftStats) {
        let labels = [("node", node.0.to_string()), ("topic", topic.to_owned()), ("partition", partition.to_string())];
        let figures = [
            ("kaelix_raft_campaigns_total", "Pre-campaigns and campaigns this member started.", stats.campaigns),
            ("kaelix_raft_terms_led_total", "Terms this member became leader in.", stats.terms_led),
            ("kaelix_raft_sent_messages_total", "Raft messages this member sent.", stats.sent),
            ("kaelix_raft_writes_total", "Log and state writes this member issued.", stats.writes),
            ("kaelix_raft_snapshots_sent_total", "Whole snapshots this member sent as leader.", stats.snapshots_sent),
            (
                "kaelix_raft_snapshots_installed_total",
                "Snapshots this member installed from a leader.",
                stats.snapshots_installed,
            ),
        ];
        for (name, help, value) in figures {
            self.counter(name, help, &labels, value);
        }
    }

    /// One node's SWIM membership service as its own handle reports it:
    /// the members it holds by state (itself included), its incarnation,
    /// its Lifeguard local health and the core's counters ([`kaelix_cluster::swim::SwimStats`]).
    /// The simulated `serve` exports no membership figures, hence
    /// `kaelix_swim_*` names of their own (which `kaelix serve --cluster`
    /// exports too, through [`RunMetrics::record_swim`]). Counters count
    /// since the node's run booted.
    pub fn record_membership(&mut self, node: NodeId, membership: &Membership) {
        self.record_swim(&[("node", node.0.to_string())], membership);
    }

    /// [`RunMetrics::record_membership`]'s figures with `labels` on every
    /// sample: `kaelix serve --cluster`, one node per process, exports them
    /// with none (it copies them into its metrics endpoint at scrape time).
    pub fn record_swim(&mut self, labels: &[(&'static str, String)], membership: &Membership) {
        let with = |extra: Option<(&'static str, String)>| -> Labels { labels.iter().cloned().chain(extra).collect() };
        let plain = with(None);
        let one = &plain[..];
        let mut by_state =
            [(MemberState::Alive, 0u64), (MemberState::Suspect, 0), (MemberState::Dead, 0), (MemberState::Left, 0)];
        membership.with_members(|members| {
            for m in members {
                if let Some((_, count)) = by_state.iter_mut().find(|(s, _)| *s == m.state) {
                    *count += 1;
                }
            }
        });
        for (state, count) in by_state {
            let name = match state {
                MemberState::Alive => "alive",
                MemberState::Suspect => "suspect",
                MemberState::Dead => "dead",
                MemberState::Left => "left",
            };
            self.gauge(
                "kaelix_swim_members",
                "Members this node holds (itself included), by state: alive, suspect, dead and left (tombstones not yet collected).",
                &with(Some(("state", name.into()))),
                count as f64,
            );
        }
        if let Some(incarnation) = membership.incarnation() {
            self.gauge("kaelix_swim_incarnation", "This node's own incarnation.", one, incarnation as f64);
        }
        self.gauge(
            "kaelix_swim_local_health",
            "The Lifeguard local health multiplier (0 = healthy).",
            one,
            f64::from(membership.local_health()),
        );
        let s = membership.stats();
        const MESSAGES: &str = "SWIM datagrams, by direction (sent: queued for sending, received: handled).";
        const BYTES: &str = "Bytes of SWIM datagrams, by direction.";
        for (direction, messages, bytes) in
            [("sent", s.messages_sent, s.bytes_sent), ("received", s.messages_received, s.bytes_received)]
        {
            let labels = with(Some(("direction", direction.to_owned())));
            self.counter("kaelix_swim_messages_total", MESSAGES, &labels, messages);
            self.counter("kaelix_swim_bytes_total", BYTES, &labels, bytes);
        }
        const NACKS: &str = "Nacks, by direction (sent as a relay, received for our probes).";
        self.counter("kaelix_swim_nacks_total", NACKS, &with(Some(("direction", "sent".into()))), s.nacks_sent);
        self.counter("kaelix_swim_nacks_total", NACKS, &with(Some(("direction", "received".into()))), s.nacks_received);
        for (name, help, value) in [
            (
                "kaelix_swim_malformed_messages_total",
                "Datagrams dropped as undecodable (or from ourselves).",
                s.malformed,
            ),
            ("kaelix_swim_probes_total", "Probes started.", s.probes),
            ("kaelix_swim_failed_probes_total", "Probes that ended with no Ack.", s.probes_failed),
            ("kaelix_swim_ping_reqs_sent_total", "Indirect probe requests (PingReq) sent.", s.ping_reqs_sent),
            (
                "kaelix_swim_suspicions_deferred_total",
                "Failed probe rounds the phi gate deferred instead of suspecting the member.",
                s.suspicions_deferred,
            ),
            (
                "kaelix_swim_relays_dropped_total",
                "PingReqs refused because too many relays were running.",
                s.relays_dropped,
            ),
            (
                "kaelix_swim_refutations_total",
                "Times this node raised its incarnation to refute a statement about it.",
                s.refutations,
            ),
            (
                "kaelix_swim_unrefutable_total",
                "Statements about this node it could not outbid (incarnation at its maximum).",
                s.unrefutable,
            ),
            (
                "kaelix_swim_reasserted_total",
                "Stale statements about this node answered by gossiping its current Alive again.",
                s.reasserted,
            ),
            ("kaelix_swim_strangers_met_total", "Push-pulls with senders this node had no record of.", s.strangers_met),
            ("kaelix_swim_announces_total", "Push-pulls started by announce (joining).", s.announces),
            ("kaelix_swim_push_pulls_total", "Periodic push-pulls (anti-entropy) with an alive member.", s.push_pulls),
            (
                "kaelix_swim_tombstones_collected_total",
                "Tombstones (dead or left members) forgotten.",
                s.tombstones_collected,
            ),
        ] {
            self.counter(name, help, one, value);
        }
    }

    /// Each member as this node's membership service sees it, with
    /// `labels` and `member` on every sample: its state
    /// (`kaelix_swim_member_state`: 0 alive, 1 suspect, 2 dead, 3 left —
    /// [`member_state_code`]), its incarnation and the phi of this node's
    /// accrual detector for it (0 without probe history; it grows while a
    /// member stays silent). `kaelix serve --cluster` exports them for
    /// `kaelix cluster status`; the membership scenarios do not (a
    /// 100-node run would hold 10,000 samples of each).
    pub fn record_swim_members(&mut self, labels: &[(&'static str, String)], membership: &Membership) {
        for m in membership.members() {
            let mut l: Labels = labels.to_vec();
            l.push(("member", m.id.0.to_string()));
            self.gauge(
                "kaelix_swim_member_state",
                "Each member's state as this node sees it: 0 alive, 1 suspect, 2 dead, 3 left.",
                &l,
                member_state_code(m.state) as f64,
            );
            self.gauge(
                "kaelix_swim_member_incarnation",
                "Each member's incarnation as this node knows it.",
                &l,
                m.incarnation as f64,
            );
            self.gauge(
                "kaelix_swim_member_phi",
                "This node's phi-accrual suspicion of each member (0 without history).",
                &l,
                membership.phi(m.id),
            );
        }
    }

    /// The samples set so far: (kind, name, help, labels, value), by name
    /// then labels (for copying them into another exporter).
    pub fn samples(&self) -> impl Iterator<Item = (Kind, &'static str, &'static str, &Labels, f64)> + '_ {
        self.families
            .iter()
            .flat_map(|(name, f)| f.0.samples.iter().map(move |(l, v)| (f.0.kind, *name, f.0.help, l, *v)))
    }

    /// The simulated time the run covered, so a reader can turn counters
    /// into rates over virtual time.
    pub fn record_sim_time(&mut self, seconds: f64) {
        self.gauge("kaelix_sim_time_seconds", "Simulated (virtual) time the run covered.", &[], seconds);
    }
}

/// The code of a member state in `kaelix_swim_member_state`.
pub fn member_state_code(state: MemberState) -> u64 {
    match state {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Dead => 2,
        MemberState::Left => 3,
    }
}

/// What [`RunMetrics::record_partition`] exports of one member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionMember {
    /// 0 follower, 1 candidate (pre-candidates too), 2 leader, 3 learner
    /// (a follower its configuration does not count as a voter).
    pub role: u64,
    /// Current term.
    pub term: u64,
    /// Known leader's node id, 0 for none.
    pub leader: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
}

impl PartitionMember {
    /// `raft`'s figures now.
    pub fn of(raft: &Raft) -> Self {
        PartitionMember {
            role: match raft.role() {
                Role::Follower if !raft.configuration().is_voter(raft.id()) => 3,
                Role::Follower => 0,
                Role::PreCandidate | Role::Candidate => 1,
                Role::Leader => 2,
            },
            term: raft.term(),
            leader: raft.leader().map_or(0, |n| n.0),
            commit: raft.commit(),
            applied: raft.applied(),
        }
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sorted_families_and_label_sets_with_escapes() {
        let mut m = RunMetrics::new();
        m.counter("b_total", "B.", &[("z", "1".into()), ("a", "x\"y".into())], 3);
        m.gauge("a", "A\nline.", &[], 0.25);
        m.counter("b_total", "B.", &[("a", "a".into()), ("z", "0".into())], 7);
        assert_eq!(
            m.render(),
            "# HELP a A\\nline.\n# TYPE a gauge\na 0.25\n# HELP b_total B.\n# TYPE b_total counter\nb_total{a=\"a\",z=\"0\"} 7\nb_total{a=\"x\\\"y\",z=\"1\"} 3\n"
        );
        assert_eq!(m.value("b_total", &[("z", "0"), ("a", "a")]), Some(7.0));
        assert_eq!(m.sum("b_total", &[]), 10.0);
        assert_eq!(m.sum("b_total", &[("z", "1")]), 3.0);
        assert_eq!(m.value("b_total", &[("a", "a")]), None);
    }

    #[test]
    #[should_panic(expected = "defined twice differently")]
    fn one_name_one_kind() {
        let mut m = RunMetrics::new();
        m.counter("x", "X.", &[], 1);
        m.gauge("x", "X.", &[], 1.0);
    }
}

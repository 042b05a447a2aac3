//! The replicated-partition node: the driver of a [`ReplicaCore`] (one
//! [`Raft`] member per partition, the requests waiting on them) wired to a
//! [`Runtime`]. The same function runs under the simulator and the real
//! executor.
//!
//! Tasks of one node incarnation:
//!
//! * **main** (Critical): owns the core; feeds it datagrams, client
//!   requests, write completions and timeouts; performs its outputs (sends
//!   datagrams, hands writes to the log writers, answers clients);
//! * one **log writer** per group (High): performs the group's writes in
//!   order — records appended at the known end of the current generation
//!   file, then one sync for the batch; a write with a snapshot starts a new
//!   generation (base image, sync, then the old file is removed) — and
//!   reports them durable. IO errors are retried: a write is reported only
//!   once it is durable;
//! * the **acceptor** and per-client **reader** / **writer** tasks.
//!
//! Listening for clients comes first, before anything else of the node
//! exists ([`run_node`] returns the error): a node that cannot listen must
//! not become a member, for once it led a group every client request to
//! that group — the others only redirect to it — would go unanswered until
//! a leader change (a port another process took while the node was down is
//! the usual cause).
//!
//! Boot, per group: list the group's generation files, take the newest
//! whose base image is complete (reading it until two reads agree, so a
//! corrupt read is not mistaken for a torn tail), remove the others, cut a
//! torn tail durably, and hand what survived to the core, which builds the
//! member. An empty disk on a node that is not bootstrapping, or synced
//! data found rotten, makes the member start recovering (see `raft`'s
//! module docs).
//!
//! Fault points: the log writer sleeps before a batch now and then (a slow
//! disk), on a timeout the main loop, between groups, hands a leading
//! group's leadership to a random member (leader changes under load), and
//! a send is now and then refused (a full socket buffer). The simulator
//! knows each `buggify!` point by its name, not its line, so editing this
//! file does not change which seeds switch a point on.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use futures_channel::{mpsc, oneshot};
use futures_util::{FutureExt, StreamExt};
use kaelix_broker::replication::Proposal;
use kaelix_core::NodeId;
use kaelix_core::planted::Planted;
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::runtime::{ClientNetwork, ClientStream, Priority, Runtime, Storage, StorageFile};
use kaelix_core::sansio::WriteId;
use kaelix_core::time::{Duration, Instant};

use super::broker_node::Mirror;
use super::protocol::{Request, Response};
use super::replica::{ClientRef, GroupBoot, Output, ReplicaCore};
use crate::driver::{Event, accept_clients, next_event};
use crate::membership::Membership;
use crate::raft::disk::{self, DiskState};
use crate::raft::{self, Entry, Raft, RaftConfig, Role, Snapshot, Write, wire};
use crate::swim::{MemberState, MembershipEvent, MembershipEventKind};

/// Configuration of one node.
#[derive(Clone, Debug)]
pub struct ReplicatedConfig {
    /// Every member, this node included: each partition's initial voters
    /// are `replicas` of them ([`ReplicatedConfig::placement`]), the others
    /// its learners, so every member holds every partition.
    pub members: Vec<NodeId>,
    /// Voters per partition (the replication factor), at most the member
    /// count.
    pub replicas: usize,
    /// How long SWIM must have held a voter dead (or gone) before the
    /// partition's leader replaces it with its most caught-up live learner
    /// by joint consensus (the dead voter stays a learner). `None`: never.
    pub replace_dead_after: Option<Duration>,
    /// Partitions, each its own Raft group.
    pub partitions: u32,
    /// Whether an empty disk means a new cluster (see `RaftConfig::bootstrap`).
    pub bootstrap: bool,
    /// Raft tuning; `id`, `initial`, `bootstrap` and `planted` are set per
    /// node and group (`planted` from [`ReplicatedConfig::planted`]).
    pub raft: RaftConfig,
    /// Snapshot a group's state once at least this many entries applied
    /// since its last snapshot...
    pub snapshot_every: u64,
    /// ...and once those entries' bytes reach this percentage of the last
    /// snapshot's size. A partition's snapshot holds all of its records,
    /// so snapshotting on a count alone costs time and disk writes that
    /// grow with the partition: quadratic over its life, and stalls of
    /// the main task long enough to cost elections. Tied to the snapshot's
    /// size (the Raft dissertation's §5.1.3 rule), every byte is
    /// snapshotted a bounded number of times on average, and the log
    /// replayed at a restart is at most about this share of the state.
    /// Each member raises it by up to half, by its id, so a group's
    /// members do not all write their snapshots at the same entry (see
    /// `replica`). 0: the count alone decides.
    pub snapshot_log_percent: u64,
    /// How long a member forwarding a publish to its group's leader (see
    /// `start_forwarding_broker_node`) waits to connect, to hand the
    /// publish over, and for the answer, before it settles the publish as
    /// unknown (it may still commit). Above a commit's worst latency under
    /// load; below what a client waits for an acknowledgement.
    pub forward_timeout: Duration,
    /// Planted bugs switched on, for this node's core
    /// (`ReplicatedAckBeforeCommit`) and for every group's Raft; none in
    /// production, see [`kaelix_core::planted`].
    pub planted: Planted,
}

impl ReplicatedConfig {
    /// Defaults: every member a voter of every partition (no learners, so
    /// nothing to replace a voter with), Raft's defaults, a snapshot after
    /// 1024 entries that hold as many bytes as the last snapshot,
    /// forwarded publishes given up after 5 s.
    pub fn new(members: Vec<NodeId>, partitions: u32) -> Self {
        let raft = RaftConfig::new(members[0], members.iter().copied());
        ReplicatedConfig {
            replicas: members.len(),
            replace_dead_after: None,
            members,
            partitions,
            bootstrap: true,
            raft,
            snapshot_every: 1024,
            snapshot_log_percent: 100,
            forward_timeout: Duration::from_secs(5),
            planted: Planted::NONE,
        }
    }

    /// `group`'s initial configuration: `replicas` voters, the members in
    /// id order from the `group`-th on (wrapping), so consecutive groups
    /// start on consecutive members and the voter slots, and with them the
    /// leaders, spread evenly; every other member a learner. Every member
    /// computes it alike from the same member list, and a group's member
    /// holds it until its snapshot or a configuration entry in its log says
    /// otherwise — so the member list and `replicas` must not change over
    /// a cluster's life.
    pub fn placement(&self, group: u32) -> raft::Configuration {
        assert!(
            (1..=self.members.len()).contains(&self.replicas),
            "{} replicas of {} members",
            self.replicas,
            self.members.len()
        );
        let mut sorted = self.members.clone();
        sorted.sort_unstable();
        let first = group as usize % sorted.len();
        let voters: Vec<NodeId> = (0..self.replicas).map(|k| sorted[(first + k) % sorted.len()]).collect();
        let mut config = raft::Configuration::new(voters);
        config.learners = sorted.iter().copied().filter(|m| !config.voters.contains(m)).collect();
        config
    }

    /// The configuration of this node's member of `group`.
    pub fn raft_config(&self, me: NodeId, group: u32) -> RaftConfig {
        let mut config = self.raft.clone();
        config.id = me;
        config.initial = self.placement(group);
        config.bootstrap = self.bootstrap;
        config.planted = self.planted;
        config
    }
}

/// Hooks through which a scenario watches a node; deployments pass
/// [`NoObserver`].
pub trait ReplicaObserver: Clone + Send + Sync + 'static {
    /// A new incarnation of `node` started.
    fn booted(&self, _node: NodeId) {}
    /// `group`'s member on `node` handled one input (state after it).
    fn stepped(&self, _node: NodeId, _group: u32, _raft: &Raft) {}
    /// `group`'s member on `node` sent `message` to `to`.
    fn sent(&self, _node: NodeId, _group: u32, _to: NodeId, _message: &raft::Message) {}
    /// `group`'s member on `node` issued this write.
    fn persisting(&self, _node: NodeId, _group: u32, _write: &Write) {}
    /// `group`'s member on `node` applied this committed entry.
    fn applied(&self, _node: NodeId, _group: u32, _entry: &Entry) {}
    /// `group`'s member on `node` replaced its state by this snapshot.
    fn restored(&self, _node: NodeId, _group: u32, _snapshot: &Snapshot) {}
}

/// SWIM's word on the members, for a node's driver: the view when the
/// node started, then every change (`Membership::subscribe`). The driver
/// hands both to its core (`ReplicaCore::handle_member`), from which a
/// leader learns which voters to replace.
pub struct LivenessFeed {
    /// Each member SWIM knew when the feed was taken: up (alive or
    /// suspect) or not (dead or gone).
    pub initial: Vec<(NodeId, bool)>,
    /// Every change since.
    pub events: mpsc::UnboundedReceiver<MembershipEvent>,
}

impl LivenessFeed {
    /// Subscribes to `membership`, then reads its view (an event between
    /// the two is seen twice, which changes nothing).
    pub fn of(membership: &Membership) -> LivenessFeed {
        let events = membership.subscribe();
        let initial = membership
            .members()
            .into_iter()
            .map(|m| (m.id, matches!(m.state, MemberState::Alive | MemberState::Suspect)))
            .collect();
        LivenessFeed { initial, events }
    }
}

/// An observer that does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;
impl ReplicaObserver for NoObserver {}

/// What the main task hears from the other tasks.
enum Input {
    /// Publishes of the node's broker to propose (a broker node only).
    Proposals(Vec<Proposal>),
    Request(ClientRef, Request),
    Malformed(ClientRef, String),
    ClientConnected(ClientRef, mpsc::UnboundedSender<Bytes>),
    ClientGone(ClientRef),
    WritesDone(u32, Vec<WriteId>),
    /// Hand every group this member leads to another member, then answer
    /// (a broker node's graceful stop: `broker_node::StepDown`).
    StepDown(oneshot::Sender<()>),
    /// SWIM's word about a member: up, or dead or gone.
    Member(NodeId, bool),
}

/// Counters of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Datagrams that did not decode (dropped).
    pub malformed_datagrams: u64,
}

const RETRY: Duration = Duration::from_millis(10);

fn file_name(group: u32, generation: u64) -> String {
    format!("raft-p{group}.{generation}")
}

/// The main task's IO besides the core: the log writers' queues and the
/// clients' reply queues.
struct Io {
    /// Each group's log writer queue, by group.
    writes: Vec<mpsc::UnboundedSender<Write>>,
    /// The reply queue of every connected client.
    clients: BTreeMap<ClientRef, mpsc::UnboundedSender<Bytes>>,
    /// Counters.
    stats: NodeStats,
}

/// Reads a whole file until two reads agree (a faulty disk may return a
/// corrupt copy once; the stored data is intact).
async fn read_stable<F: StorageFile, R: Runtime>(rt: &R, file: &F) -> Bytes {
    let mut previous: Option<Bytes> = None;
    loop {
        let len = usize::try_from(file.len()).expect("file fits in memory");
        match file.read_at(0, len).await {
            Ok(data) if previous.as_ref() == Some(&data) => return data,
            Ok(data) => previous = Some(data),
            Err(_) => rt.sleep(RETRY).await,
        }
    }
}

async fn retry<T, E, Fut: Future<Output = Result<T, E>>, R: Runtime>(rt: &R, mut op: impl FnMut() -> Fut) -> T {
    loop {
        match op().await {
            Ok(v) => return v,
            Err(_) => rt.sleep(RETRY).await,
        }
    }
}

/// What booting a group found.
struct Booted<F> {
    state: DiskState,
    empty: bool,
    lost_synced: bool,
    file: F,
    generation: u64,
}

/// Boots `group` from the disk. An empty disk on a node that is not
/// bootstrapping starts its first generation already marked recovering:
/// the mark must be durable before anything else, or a crash right after
/// this boot would leave a generation file that looks like an ordinary
/// empty member, and the next boot would vote with a log that lost
/// acknowledged entries.
async fn recover_group<R: Runtime>(rt: &R, group: u32, bootstrap: bool) -> Booted<<R as Storage>::File> {
    let prefix = format!("raft-p{group}.");
    let names = retry(rt, || rt.list()).await;
    let mut generations: Vec<u64> =
        names.iter().filter_map(|n| n.strip_prefix(&prefix)).filter_map(|g| g.parse().ok()).collect();
    generations.sort_unstable_by(|a, b| b.cmp(a));
    let mut chosen = None;
    for &generation in &generations {
        let name = file_name(group, generation);
        let file = retry(rt, || rt.open(&name)).await;
        let data = read_stable(rt, &file).await;
        if let Some(scan) = disk::scan(data) {
            chosen = Some((generation, file, scan));
            break;
        }
    }
    let keep = chosen.as_ref().map(|(g, _, _)| *g);
    for &generation in generations.iter().filter(|&&g| Some(g) != keep) {
        let name = file_name(group, generation);
        retry(rt, || rt.remove(&name)).await;
    }
    match chosen {
        Some((generation, file, scan)) => {
            if scan.valid_len < file.len() {
                retry(rt, || async {
                    file.truncate(scan.valid_len).await?;
                    file.sync().await
                })
                .await;
            }
            Booted { state: scan.state, empty: false, lost_synced: scan.lost_synced, file, generation }
        }
        None => {
            let generation = generations.first().map_or(1, |g| g + 1);
            let mut state = DiskState::default();
            state.hard_state.recovering = !bootstrap;
            let file = start_generation(rt, group, generation, &state).await;
            Booted { state, empty: true, lost_synced: false, file, generation }
        }
    }
}

/// Writes a new generation file holding `state` as its base image, durably.
async fn start_generation<R: Runtime>(rt: &R, group: u32, generation: u64, state: &DiskState) -> <R as Storage>::File {
    let name = file_name(group, generation);
    let file = retry(rt, || rt.open(&name)).await;
    let mut image = BytesMut::new();
    image.extend_from_slice(&disk::encode_header(generation));
    image.extend_from_slice(&disk::encode_write(&state.as_write()));
    let image = image.freeze();
    retry(rt, || async {
        file.truncate(0).await?;
        file.write_at(0, image.clone()).await?;
        file.sync().await
    })
    .await;
    file
}

/// Performs one group's writes in order (see the module docs).
async fn log_writer<R: Runtime>(
    rt: R,
    group: u32,
    mut file: <R as Storage>::File,
    mut generation: u64,
    mut mirror: DiskState,
    mut queue: mpsc::UnboundedReceiver<Write>,
    done: mpsc::UnboundedSender<Input>,
) {
    let mut end = file.len();
    while let Some(first) = queue.next().await {
        let mut batch = vec![first];
        while let Some(Some(more)) = queue.next().now_or_never() {
            batch.push(more);
        }
        for w in &batch {
            mirror.apply(w);
        }
        // Fault point: a slow disk. Everything claimed waits for this write,
        // so a crash inside the window must lose nothing claimed.
        if kaelix_core::buggify!(rt, "replicated partition: a slow log write") {
            rt.sleep(Duration::from_millis(20)).await;
        }
        let snapshot = batch.iter().any(|w| w.snapshot.is_some());
        kaelix_core::sometimes!(rt, "a replicated partition log began a generation with a snapshot", snapshot);
        if snapshot {
            let old = generation;
            generation += 1;
            file = start_generation(&rt, group, generation, &mirror).await;
            end = file.len();
            let name = file_name(group, old);
            retry(&rt, || rt.remove(&name)).await;
        } else {
            let mut records = BytesMut::new();
            for w in &batch {
                records.extend_from_slice(&disk::encode_write(w));
            }
            let records = records.freeze();
            let at = end;
            retry(&rt, || async {
                if file.len() != at {
                    file.truncate(at).await?;
                }
                file.write_at(at, records.clone()).await?;
                file.sync().await
            })
            .await;
            end = at + records.len() as u64;
        }
        let ids = batch.into_iter().map(|w| w.id).collect();
        if done.unbounded_send(Input::WritesDone(group, ids)).is_err() {
            return;
        }
    }
}

/// Feeds one client's requests to the main task until its stream ends.
async fn client_reader<S: ClientStream>(stream: S, client: ClientRef, inputs: mpsc::UnboundedSender<Input>) {
    loop {
        let input = match stream.recv().await {
            Ok(Some(frame)) => match Request::decode(frame) {
                Ok(request) => Input::Request(client, request),
                Err(e) => Input::Malformed(client, format!("malformed request: {e}")),
            },
            Ok(None) | Err(_) => {
                let _ = inputs.unbounded_send(Input::ClientGone(client));
                return;
            }
        };
        if inputs.unbounded_send(input).is_err() {
            return;
        }
    }
}

pub use crate::driver::StartError;
pub(super) use crate::driver::listen;

/// Starts one incarnation of a replicated-partition node: listens for
/// clients at once, or returns why it cannot (then nothing of the node
/// runs: see the module docs), and returns the node, which runs until it is
/// dropped (crash or shutdown). `config.members` must include
/// `rt.node_id()`.
///
/// Each event becomes one input of the core, whose outputs are performed
/// before the next event is taken; a timeout is handled group by group,
/// with the leadership fault point after each group.
pub fn run_node<R: Runtime, O: ReplicaObserver>(
    rt: R,
    config: ReplicatedConfig,
    observer: O,
) -> Result<impl Future<Output = ()> + Send + 'static, StartError> {
    let listener = listen(&rt)?;
    Ok(run(rt, config, observer, listener, None))
}

/// [`run_node`] from its open client `listener`, mirroring the groups into
/// a broker when `mirror` is given (see [`super::broker_node`]).
pub(super) async fn run<R: Runtime, O: ReplicaObserver>(
    rt: R,
    config: ReplicatedConfig,
    observer: O,
    listener: <R as ClientNetwork>::Listener,
    mut mirror: Option<Mirror<R>>,
) {
    let me = rt.node_id();
    assert!(config.members.contains(&me), "{me} is not a member");
    observer.booted(me);
    let (input_tx, mut inputs) = mpsc::unbounded::<Input>();
    let mut rng: DetRng = rt.rng();

    let mut boots = Vec::new();
    let mut writes = Vec::new();
    let mut writers = Vec::new();
    for g in 0..config.partitions {
        let booted = recover_group(&rt, g, config.bootstrap).await;
        let mut recovered = booted.state.recovered(booted.empty);
        recovered.hard_state.recovering |= booted.lost_synced;
        boots.push(GroupBoot { recovered, rng: rt.rng(), at: rt.now() });
        let (tx, rx) = mpsc::unbounded();
        writers.push(rt.spawn(
            Priority::High,
            "raft-log-writer",
            log_writer(rt.clone(), g, booted.file, booted.generation, booted.state, rx, input_tx.clone()),
        ));
        writes.push(tx);
    }
    let _acceptor = {
        let inputs = input_tx.clone();
        let accept = accept_clients(
            rt.clone(),
            listener,
            ("raft-client-writer", "raft-client-reader"),
            move |id, stream, tx| {
                let client = ClientRef(id);
                inputs.unbounded_send(Input::ClientConnected(client, tx)).ok()?;
                Some(client_reader(stream, client, inputs.clone()))
            },
        );
        rt.spawn(Priority::High, "raft-acceptor", accept)
    };

    let _proposals = mirror.as_ref().map(|m| {
        let (broker, inputs) = (m.broker().clone(), input_tx.clone());
        rt.spawn(Priority::Critical, "broker-proposals", async move {
            while let Some(proposals) = broker.next_proposals().await {
                if inputs.unbounded_send(Input::Proposals(proposals)).is_err() {
                    return;
                }
            }
        })
    });
    let _step_down = mirror.as_mut().and_then(|m| m.step_down.take()).map(|mut requests| {
        let inputs = input_tx.clone();
        rt.spawn(Priority::Critical, "member-step-down", async move {
            while let Some(done) = requests.next().await {
                if inputs.unbounded_send(Input::StepDown(done)).is_err() {
                    return;
                }
            }
        })
    });
    let _membership = mirror.as_mut().and_then(|m| m.membership.take()).map(|LivenessFeed { initial, mut events }| {
        let inputs = input_tx.clone();
        for (member, up) in initial {
            let _ = inputs.unbounded_send(Input::Member(member, up));
        }
        rt.spawn(Priority::Critical, "member-liveness", async move {
            while let Some(event) = events.next().await {
                let up = match event.kind {
                    MembershipEventKind::Dead | MembershipEventKind::Left => false,
                    MembershipEventKind::Joined | MembershipEventKind::Alive | MembershipEventKind::Suspect => true,
                    MembershipEventKind::Updated => continue,
                };
                if inputs.unbounded_send(Input::Member(event.member, up)).is_err() {
                    return;
                }
            }
        })
    });
    let mut stepping_down: Vec<oneshot::Sender<()>> = Vec::new();
    let others: Vec<NodeId> = config.members.iter().copied().filter(|&n| n != me).collect();
    let mut core = ReplicaCore::new(me, config, observer, rt.now(), boots);
    let mut io = Io { writes, clients: BTreeMap::new(), stats: NodeStats::default() };
    io.drain(&rt, &mut core, &mut mirror);
    let deadline_of = |core: &ReplicaCore<O>| core.poll_timeout().unwrap_or(Instant::MAX);
    let mut timer_deadline = deadline_of(&core);
    let mut sleep = Box::pin(rt.sleep_until(timer_deadline));
    loop {
        let deadline = deadline_of(&core);
        if deadline != timer_deadline {
            timer_deadline = deadline;
            sleep = Box::pin(rt.sleep_until(deadline));
        }
        let event = next_event(&mut inputs, &rt, sleep.as_mut()).await;
        let now = rt.now();
        match event {
            Event::Input(None) => return,
            Event::Input(Some(Input::WritesDone(g, ids))) => core.handle_write_complete(now, g, ids),
            Event::Input(Some(Input::StepDown(done))) => stepping_down.push(done),
            Event::Input(Some(Input::Member(member, up))) => core.handle_member(now, member, up),
            Event::Input(Some(Input::Proposals(proposals))) => {
                let mirror = mirror.as_mut().expect("only a broker node has proposals");
                for proposal in proposals {
                    mirror.propose(&mut core, now, rt.wall_clock(), proposal);
                    io.drain(&rt, &mut core, &mut Some(&mut *mirror));
                }
            }
            Event::Input(Some(Input::Request(client, request))) => {
                core.handle_request(now, rt.wall_clock(), client, request)
            }
            Event::Input(Some(Input::Malformed(client, reason))) => {
                io.reply(client, Response::Error { req: 0, reason })
            }
            Event::Input(Some(Input::ClientConnected(client, tx))) => {
                io.clients.insert(client, tx);
            }
            Event::Input(Some(Input::ClientGone(client))) => {
                io.clients.remove(&client);
            }
            Event::Message(from, bytes) => match wire::decode(bytes) {
                Ok((g, message)) if g < u64::from(core.partitions()) => {
                    core.handle_message(now, from, g as u32, message)
                }
                _ => io.stats.malformed_datagrams += 1,
            },
            Event::Timeout => {
                for g in 0..core.partitions() {
                    core.handle_group_timeout(now, g);
                    io.drain(&rt, &mut core, &mut mirror);
                    // Fault point: hand leadership away now and then, so
                    // leader changes happen under load, not only on failure.
                    if core.raft(g).role() == Role::Leader
                        && kaelix_core::buggify!(rt, "replicated partition: the leader hands leadership away")
                        && !others.is_empty()
                    {
                        let to = others[rng.random_range(0..others.len())];
                        let moved = core.transfer_leadership(now, g, to).is_ok();
                        kaelix_core::sometimes!(rt, "a fault point handed Raft leadership away", moved);
                        io.drain(&rt, &mut core, &mut mirror);
                    }
                }
                timer_deadline = Instant::MAX;
            }
        }
        io.drain(&rt, &mut core, &mut mirror);
        if !stepping_down.is_empty() {
            let handed_off = hand_off_leadership(now, &mut core, &others);
            io.drain(&rt, &mut core, &mut mirror);
            if handed_off {
                for done in stepping_down.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// One turn of a graceful stop: each group this member leads, and that is
/// not being handed away already, is handed to the most caught-up other
/// voter among those it heard from lately (ties broken by the group's
/// number, so a stopping member's groups spread over the others). Called after every event until it returns
/// true: this member leads no group (a transfer that timed out is tried
/// again). A member alone in its groups has no one to hand them to.
fn hand_off_leadership<O: ReplicaObserver>(now: Instant, core: &mut ReplicaCore<O>, others: &[NodeId]) -> bool {
    if others.is_empty() {
        return true;
    }
    let mut leads_any = false;
    for g in 0..core.partitions() {
        let raft = core.raft(g);
        if raft.role() != Role::Leader {
            continue;
        }
        leads_any = true;
        if raft.transferring_to().is_some() {
            continue;
        }
        let successor = (0..others.len())
            .map(|k| others[(g as usize + k) % others.len()])
            .filter(|&id| raft.configuration().is_voter(id))
            // Heard from lately first (a dead member would only time the
            // transfer out), then the longest matching log.
            .max_by_key(|&id| raft.progress(id).map(|p| (p.recent_active, p.match_index)));
        if let Some(to) = successor {
            let _ = core.transfer_leadership(now, g, to);
        }
    }
    !leads_any
}

impl Io {
    fn reply(&self, client: ClientRef, response: Response) {
        if let Some(tx) = self.clients.get(&client) {
            let _ = tx.unbounded_send(response.encode());
        }
    }

    /// Performs the core's outputs until it has none (a broker node's
    /// mirror takes the records applied and the answers to its proposals).
    fn drain<R: Runtime, O: ReplicaObserver, M: std::borrow::BorrowMut<Mirror<R>>>(
        &self,
        rt: &R,
        core: &mut ReplicaCore<O>,
        mirror: &mut Option<M>,
    ) {
        while let Some(out) = core.poll_output() {
            kaelix_core::sometimes!(
                *rt,
                "a replicated partition member installed a snapshot",
                matches!(out, Output::Restored { .. })
            );
            let out = match mirror.as_mut() {
                Some(m) => match m.borrow_mut().take(core, out) {
                    Some(out) => out,
                    None => continue,
                },
                None => out,
            };
            match out {
                Output::Send { to, group, message } => {
                    // Fault point: a send the OS refused (full socket
                    // buffer); Raft retransmits.
                    if !kaelix_core::buggify!(*rt, "replicated partition: the OS refuses a send") {
                        rt.send(to, wire::encode(u64::from(group), &message));
                    }
                }
                // The writer lives as long as this task.
                Output::Persist { group, write } => drop(self.writes[group as usize].unbounded_send(write)),
                Output::Reply { client, response } => self.reply(client, response),
                // Nothing mirrors the partitions here.
                Output::Applied { .. } | Output::GroupCommitted { .. } | Output::Restored { .. } => {}
            }
        }
    }
}

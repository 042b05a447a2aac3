//! The replicated-partition node: one [`Raft`] member per partition, wired
//! to a [`Runtime`]. The same function runs under the simulator and the
//! real executor.
//!
//! Tasks of one node incarnation:
//!
//! * **main** (Critical): owns every group's [`Raft`] and state machine;
//!   feeds them datagrams, client requests, write completions and timeouts;
//!   performs their outputs; answers clients;
//! * one **log writer** per group (High): performs the group's writes in
//!   order — records appended at the known end of the current generation
//!   file, then one sync for the batch; a write with a snapshot starts a new
//!   generation (base image, sync, then the old file is removed) — and
//!   reports them durable. IO errors are retried: a write is reported only
//!   once it is durable;
//! * the **acceptor** and per-client **reader** / **writer** tasks.
//!
//! Boot, per group: list the group's generation files, take the newest
//! whose base image is complete (reading it until two reads agree, so a
//! corrupt read is not mistaken for a torn tail), remove the others, cut a
//! torn tail durably, and build the member from what survived. An empty
//! disk on a node that is not bootstrapping, or synced data found rotten,
//! makes the member start recovering (see `raft`'s module docs).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_util::{FutureExt, StreamExt};
use kaelix_core::NodeId;
use kaelix_core::planted::{Planted, PlantedBug};
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::runtime::{ClientStream, Priority, Runtime, Storage, StorageFile};
use kaelix_core::sansio::WriteId;
use kaelix_core::time::{Duration, Instant};

use super::protocol::{Request, Response};
use super::{PartitionMachine, Produce};
use crate::driver::{Event, accept_clients, next_event};
use crate::raft::disk::{self, DiskState};
use crate::raft::{self, Entry, EntryPayload, Output, ProposeError, Raft, RaftConfig, Role, Snapshot, Write, wire};

/// Configuration of one node.
#[derive(Clone, Debug)]
pub struct ReplicatedConfig {
    /// Every member (each partition's initial voters), this node included.
    pub members: Vec<NodeId>,
    /// Partitions, each its own Raft group.
    pub partitions: u32,
    /// Whether an empty disk means a new cluster (see `RaftConfig::bootstrap`).
    pub bootstrap: bool,
    /// Raft tuning; `id`, `initial`, `bootstrap` and `planted` are set per
    /// node and group (`planted` from [`ReplicatedConfig::planted`]).
    pub raft: RaftConfig,
    /// Snapshot a group's state after this many applied entries.
    pub snapshot_every: u64,
    /// Planted bugs switched on, for this driver
    /// (`ReplicatedAckBeforeCommit`) and for every group's Raft; none in
    /// production, see [`kaelix_core::planted`].
    pub planted: Planted,
}

impl ReplicatedConfig {
    /// Defaults: Raft's defaults, a snapshot every 1024 entries.
    pub fn new(members: Vec<NodeId>, partitions: u32) -> Self {
        let raft = RaftConfig::new(members[0], members.iter().copied());
        ReplicatedConfig { members, partitions, bootstrap: true, raft, snapshot_every: 1024, planted: Planted::NONE }
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

/// An observer that does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;
impl ReplicaObserver for NoObserver {}

/// Names a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ClientRef(u64);

enum Input {
    Request(ClientRef, Request),
    Malformed(ClientRef, String),
    ClientConnected(ClientRef, mpsc::UnboundedSender<Bytes>),
    ClientGone(ClientRef),
    WritesDone(u32, Vec<WriteId>),
}

struct Waiting {
    client: ClientRef,
    req: u64,
    term: u64,
}

struct PendingRead {
    client: ClientRef,
    req: u64,
    offset: u64,
}

struct Group {
    id: u32,
    raft: Raft,
    machine: PartitionMachine,
    writes: mpsc::UnboundedSender<Write>,
    /// Produces waiting for the entry at this index to apply.
    produces: BTreeMap<u64, Vec<Waiting>>,
    /// Reads waiting for their ReadIndex round.
    reads: BTreeMap<u64, PendingRead>,
    /// Confirmed reads waiting for `applied ≥ index`.
    ready: Vec<(u64, PendingRead)>,
    next_ctx: u64,
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

async fn recover_group<R: Runtime>(rt: &R, group: u32) -> Booted<<R as Storage>::File> {
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
            let state = DiskState::default();
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
        if kaelix_core::buggify!(rt) {
            rt.sleep(Duration::from_millis(20)).await;
        }
        if batch.iter().any(|w| w.snapshot.is_some()) {
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

/// Runs one incarnation of a replicated-partition node until it is dropped
/// (crash or shutdown). `config.members` must include `rt.node_id()`.
pub async fn run_node<R: Runtime, O: ReplicaObserver>(rt: R, config: ReplicatedConfig, observer: O) {
    let me = rt.node_id();
    assert!(config.members.contains(&me), "{me} is not a member");
    observer.booted(me);
    let (input_tx, mut inputs) = mpsc::unbounded::<Input>();
    let mut rng: DetRng = rt.rng();

    let mut groups = Vec::new();
    let mut writers = Vec::new();
    for g in 0..config.partitions {
        let booted = recover_group(&rt, g).await;
        let mut raft_config = config.raft.clone();
        raft_config.id = me;
        raft_config.initial = raft::Configuration::new(config.members.iter().copied());
        raft_config.bootstrap = config.bootstrap;
        raft_config.planted = config.planted;
        let mut recovered = booted.state.recovered(booted.empty);
        recovered.hard_state.recovering |= booted.lost_synced;
        let raft = Raft::new(raft_config, rt.rng(), rt.now(), recovered);
        let (tx, rx) = mpsc::unbounded();
        writers.push(rt.spawn(
            Priority::High,
            "raft-log-writer",
            log_writer(rt.clone(), g, booted.file, booted.generation, booted.state, rx, input_tx.clone()),
        ));
        groups.push(Group {
            id: g,
            raft,
            machine: PartitionMachine::new(),
            writes: tx,
            produces: BTreeMap::new(),
            reads: BTreeMap::new(),
            ready: Vec::new(),
            next_ctx: 1,
        });
    }
    let _acceptor = match rt.listen() {
        Ok(listener) => {
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
            Some(rt.spawn(Priority::High, "raft-acceptor", accept))
        }
        Err(_) => None,
    };

    let mut node = NodeState { me, config, observer, clients: BTreeMap::new(), stats: NodeStats::default() };
    for g in &mut groups {
        node.drain(&rt, g);
    }
    let deadline_of = |groups: &[Group]| groups.iter().map(|g| g.raft.poll_timeout()).min().unwrap_or(Instant::MAX);
    let mut timer_deadline = deadline_of(&groups);
    let mut sleep = Box::pin(rt.sleep_until(timer_deadline));
    loop {
        let deadline = deadline_of(&groups);
        if deadline != timer_deadline {
            timer_deadline = deadline;
            sleep = Box::pin(rt.sleep_until(deadline));
        }
        let event = next_event(&mut inputs, &rt, sleep.as_mut()).await;
        let now = rt.now();
        match event {
            Event::Input(None) => return,
            Event::Input(Some(Input::WritesDone(g, ids))) => {
                let group = &mut groups[g as usize];
                for id in ids {
                    group.raft.handle_write_complete(now, id);
                }
                node.stepped_and_drain(&rt, group);
            }
            Event::Input(Some(Input::Request(client, request))) => {
                node.handle_request(&rt, &mut groups, client, request)
            }
            Event::Input(Some(Input::Malformed(client, reason))) => {
                node.reply(client, Response::Error { req: 0, reason })
            }
            Event::Input(Some(Input::ClientConnected(client, tx))) => {
                node.clients.insert(client, tx);
            }
            Event::Input(Some(Input::ClientGone(client))) => {
                node.clients.remove(&client);
            }
            Event::Message(from, bytes) => match wire::decode(bytes) {
                Ok((g, message)) if g < u64::from(node.config.partitions) => {
                    let group = &mut groups[g as usize];
                    group.raft.handle_message(now, from, message);
                    node.stepped_and_drain(&rt, group);
                }
                _ => node.stats.malformed_datagrams += 1,
            },
            Event::Timeout => {
                for group in &mut groups {
                    if group.raft.poll_timeout() <= now {
                        group.raft.handle_timeout(now);
                        node.stepped_and_drain(&rt, group);
                    }
                    // Fault point: hand leadership away now and then, so
                    // leader changes happen under load, not only on failure.
                    if group.raft.role() == Role::Leader && kaelix_core::buggify!(rt) {
                        let others: Vec<NodeId> = node.config.members.iter().copied().filter(|&n| n != me).collect();
                        if !others.is_empty() {
                            let to = others[rng.random_range(0..others.len())];
                            let _ = group.raft.transfer_leadership(now, to);
                            node.stepped_and_drain(&rt, group);
                        }
                    }
                }
                timer_deadline = Instant::MAX;
            }
        }
    }
}

/// The main task's state besides the groups.
struct NodeState<O> {
    me: NodeId,
    config: ReplicatedConfig,
    observer: O,
    clients: BTreeMap<ClientRef, mpsc::UnboundedSender<Bytes>>,
    stats: NodeStats,
}

impl<O: ReplicaObserver> NodeState<O> {
    fn reply(&self, client: ClientRef, response: Response) {
        if let Some(tx) = self.clients.get(&client) {
            let _ = tx.unbounded_send(response.encode());
        }
    }

    fn handle_request<R: Runtime>(&mut self, rt: &R, groups: &mut [Group], client: ClientRef, request: Request) {
        let now = rt.now();
        let req = request.req();
        let partition = match &request {
            Request::Produce { partition, .. } | Request::Read { partition, .. } => *partition,
        };
        let Some(group) = groups.get_mut(partition as usize) else {
            let reason =
                format!("partition {partition} does not exist: there are {} partitions", self.config.partitions);
            return self.reply(client, Response::Error { req, reason });
        };
        match request {
            Request::Produce { client: session, seq, payload, .. } => {
                let command = Produce { client: session, seq, timestamp: rt.wall_clock(), payload };
                match group.raft.propose(now, command.encode()) {
                    Ok((index, term)) => {
                        if self.config.planted.is_on(PlantedBug::ReplicatedAckBeforeCommit) {
                            // Planted bug: predict the offset and answer now.
                            let applied = group.raft.applied();
                            let pending = group
                                .raft
                                .log()
                                .iter()
                                .filter(|e| e.index > applied && e.index < index)
                                .filter(|e| matches!(e.payload, EntryPayload::Normal(_)))
                                .count() as u64;
                            let offset = group.machine.next_offset() + pending;
                            self.reply(client, Response::Produced { req, offset });
                        } else {
                            group.produces.entry(index).or_default().push(Waiting { client, req, term });
                        }
                    }
                    Err(e) => self.refuse(client, req, e),
                }
            }
            Request::Read { offset, .. } => {
                let ctx = group.next_ctx;
                group.next_ctx += 1;
                match group.raft.read_index(now, ctx) {
                    Ok(()) => {
                        group.reads.insert(ctx, PendingRead { client, req, offset });
                    }
                    Err(e) => self.refuse(client, req, e),
                }
            }
        }
        self.stepped_and_drain(rt, group);
    }

    fn refuse(&self, client: ClientRef, req: u64, e: ProposeError) {
        let response = match e {
            ProposeError::NotLeader { leader } => Response::NotLeader { req, leader },
            ProposeError::Transferring(to) => Response::NotLeader { req, leader: Some(to) },
            other => Response::Error { req, reason: other.to_string() },
        };
        self.reply(client, response);
    }

    fn stepped_and_drain<R: Runtime>(&mut self, rt: &R, group: &mut Group) {
        self.observer.stepped(self.me, group.id, &group.raft);
        self.drain(rt, group);
    }

    /// Performs a group's outputs until it has none.
    fn drain<R: Runtime>(&mut self, rt: &R, group: &mut Group) {
        let now = rt.now();
        loop {
            while let Some(out) = group.raft.poll_output() {
                self.perform(rt, group, out);
            }
            // Snapshot once enough was applied since the last one.
            let applied = group.raft.applied();
            let (snapshot_index, _) = group.raft.log().snapshot_point();
            if applied >= snapshot_index + self.config.snapshot_every {
                group.raft.compact(now, applied, group.machine.snapshot());
                self.observer.stepped(self.me, group.id, &group.raft);
                continue;
            }
            return;
        }
    }

    fn perform<R: Runtime>(&mut self, rt: &R, group: &mut Group, out: Output) {
        match out {
            Output::Send { to, message } => {
                self.observer.sent(self.me, group.id, to, &message);
                rt.send(to, wire::encode(u64::from(group.id), &message));
            }
            Output::Persist(w) => {
                self.observer.persisting(self.me, group.id, &w);
                // The writer lives as long as this task.
                let _ = group.writes.unbounded_send(w);
            }
            Output::Apply(entry) => {
                self.observer.applied(self.me, group.id, &entry);
                let offset = match &entry.payload {
                    EntryPayload::Normal(bytes) => {
                        let command = Produce::decode(bytes.clone()).expect("entries hold commands this node encoded");
                        group.machine.apply(command).map(|a| a.offset)
                    }
                    EntryPayload::Noop | EntryPayload::Config(_) => None,
                };
                for w in group.produces.remove(&entry.index).unwrap_or_default() {
                    let response = match offset {
                        Some(offset) if w.term == entry.term => Response::Produced { req: w.req, offset },
                        // Another entry took the index: the produce was lost
                        // with a leader; the client retries.
                        _ => Response::NotLeader { req: w.req, leader: group.raft.leader() },
                    };
                    self.reply(w.client, response);
                }
                self.serve_ready_reads(group);
            }
            Output::ApplySnapshot(snapshot) => {
                self.observer.restored(self.me, group.id, &snapshot);
                group.machine =
                    PartitionMachine::restore(snapshot.data.clone()).expect("snapshots hold state this code encoded");
                let covered: Vec<u64> = group.produces.range(..=snapshot.index).map(|(&i, _)| i).collect();
                for index in covered {
                    for w in group.produces.remove(&index).unwrap_or_default() {
                        self.reply(w.client, Response::NotLeader { req: w.req, leader: group.raft.leader() });
                    }
                }
                self.serve_ready_reads(group);
            }
            Output::ReadReady { ctx, index } => {
                if let Some(read) = group.reads.remove(&ctx) {
                    group.ready.push((index, read));
                    self.serve_ready_reads(group);
                }
            }
            Output::ReadFailed { ctx } => {
                if let Some(read) = group.reads.remove(&ctx) {
                    self.reply(read.client, Response::NotLeader { req: read.req, leader: group.raft.leader() });
                }
            }
            Output::RoleChanged { role, leader, .. } => {
                if role != Role::Leader {
                    let leader = leader.filter(|&l| l != self.me);
                    for (_, waiting) in std::mem::take(&mut group.produces) {
                        for w in waiting {
                            self.reply(w.client, Response::NotLeader { req: w.req, leader });
                        }
                    }
                    for (_, read) in std::mem::take(&mut group.reads) {
                        self.reply(read.client, Response::NotLeader { req: read.req, leader });
                    }
                    for (_, read) in std::mem::take(&mut group.ready) {
                        self.reply(read.client, Response::NotLeader { req: read.req, leader });
                    }
                }
            }
        }
    }

    fn serve_ready_reads(&self, group: &mut Group) {
        let applied = group.raft.applied();
        let (serve, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut group.ready).into_iter().partition(|(i, _)| *i <= applied);
        group.ready = wait;
        for (_, read) in serve {
            let payload = group.machine.get(read.offset).map(|r| r.payload.clone());
            self.reply(read.client, Response::ReadResult { req: read.req, payload });
        }
    }
}

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

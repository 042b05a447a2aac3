//! The broadcast node driver: [`BroadcastCore`] wired to a
//! [`Runtime`]. The same function runs under the simulator and the real
//! executor.
//!
//! Tasks of one node incarnation:
//!
//! * **main** (Critical): owns the core; feeds it datagrams, client
//!   requests, write completions and timeouts; performs its outputs;
//! * **log writer** (High): group commit — appends every queued value, then
//!   syncs once, then reports all of them durable;
//! * **acceptor** (High) and per-client **reader** / **writer** tasks
//!   (Normal): decode client frames (a malformed frame gets an `Error`
//!   reply, the connection keeps serving), send acknowledgements.
//!
//! Listening for clients comes first: a node that cannot listen does not
//! start ([`run_node`] returns why; see `crate::driver`).
//!
//! Boot: open the log, scan it, cut off a torn or corrupt tail (durably),
//! then build the core from the values that survived.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use futures_channel::mpsc;
use futures_util::{FutureExt, StreamExt};
use kaelix_core::planted::PlantedBug;
use kaelix_core::runtime::{ClientNetwork, ClientStream, Priority, Runtime, StorageFile};
use kaelix_core::sansio::WriteId;
use kaelix_core::time::Duration;
use kaelix_core::{Instant, NodeId};

use super::log::{encode_record_into, scan};
use super::wire::{ClientFrame, Value};
use super::{BroadcastConfig, BroadcastCore, ClientRef, Output};
use crate::driver::{Event, StartError, accept_clients, listen, next_event};

/// The log's file name.
pub const LOG_FILE: &str = "broadcast.log";

/// Hooks through which a scenario watches a node; the real deployment
/// passes [`NoObserver`].
pub trait BroadcastObserver: Clone + Send + Sync + 'static {
    /// A new incarnation of `node` started (its memory is empty).
    fn booted(&self, _node: NodeId) {}
    /// `node` holds `value` (recovered from disk or newly received).
    fn learned(&self, _node: NodeId, _value: &Value) {}
    /// `node` acknowledged `id` to a client.
    fn acked(&self, _node: NodeId, _id: u64) {}
}

/// An observer that does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;
impl BroadcastObserver for NoObserver {}

enum Input {
    Submit(ClientRef, Value),
    ClientConnected(ClientRef, mpsc::UnboundedSender<Bytes>),
    ClientGone(ClientRef),
    WritesDone(Vec<WriteId>, bool),
}

const RETRY: Duration = Duration::from_millis(10);

/// Starts one incarnation of a broadcast node: listens for clients at
/// once, or returns why it cannot (then nothing of the node runs: see
/// `crate::driver`), and returns the node, which runs until it is dropped
/// (crash or shutdown). `config.members` must include `rt.node_id()`.
pub fn run_node<R: Runtime, O: BroadcastObserver>(
    rt: R,
    config: BroadcastConfig,
    observer: O,
) -> Result<impl Future<Output = ()> + Send + 'static, StartError> {
    let listener = listen(&rt)?;
    Ok(run(rt, config, observer, listener))
}

async fn run<R: Runtime, O: BroadcastObserver>(
    rt: R,
    config: BroadcastConfig,
    observer: O,
    listener: <R as ClientNetwork>::Listener,
) {
    let me = rt.node_id();
    observer.booted(me);

    // Recover. Disk errors are retried: a node that cannot read its log
    // cannot serve.
    let file = loop {
        match rt.open(LOG_FILE).await {
            Ok(f) => break f,
            Err(_) => rt.sleep(RETRY).await,
        }
    };
    let values = loop {
        let len = file.len();
        let data = match file.read_at(0, usize::try_from(len).expect("log fits in memory")).await {
            Ok(d) => d,
            Err(_) => {
                rt.sleep(RETRY).await;
                continue;
            }
        };
        let s = scan(data, !config.planted.is_on(PlantedBug::BroadcastSkipChecksum));
        kaelix_core::sometimes!(rt, "broadcast recovery cut a torn or corrupt log tail", s.valid_len < len);
        kaelix_core::sometimes!(rt, "broadcast recovery found values on disk", !s.values.is_empty());
        if s.valid_len < len {
            // Cut the torn/corrupt tail durably before appending again.
            if file.truncate(s.valid_len).await.is_err() || file.sync().await.is_err() {
                rt.sleep(RETRY).await;
                continue;
            }
        }
        break s.values;
    };
    let mut core = BroadcastCore::new(me, config, rt.rng(), rt.now(), values);

    let (input_tx, mut inputs) = mpsc::unbounded::<Input>();
    let (persist_tx, persist_rx) = mpsc::unbounded::<(WriteId, Value)>();
    let _writer =
        rt.spawn(Priority::High, "broadcast-log-writer", log_writer(rt.clone(), file, persist_rx, input_tx.clone()));
    let _acceptor = {
        let inputs = input_tx.clone();
        let accept = accept_clients(
            rt.clone(),
            listener,
            ("broadcast-client-writer", "broadcast-client-reader"),
            move |id, stream, tx| {
                let client = ClientRef(id);
                inputs.unbounded_send(Input::ClientConnected(client, tx.clone())).ok()?;
                Some(client_reader(stream, client, tx, inputs.clone()))
            },
        );
        rt.spawn(Priority::High, "broadcast-acceptor", accept)
    };

    let mut clients: BTreeMap<ClientRef, mpsc::UnboundedSender<Bytes>> = BTreeMap::new();
    // The timer is kept across iterations and replaced only when the core's
    // deadline moves: most inputs leave it unchanged. Nothing scheduled is
    // a sleep that never ends.
    let deadline_of = |core: &BroadcastCore| core.poll_timeout().unwrap_or(Instant::MAX);
    let mut timer_deadline = deadline_of(&core);
    let mut sleep = Box::pin(rt.sleep_until(timer_deadline));
    loop {
        while let Some(out) = core.poll_output() {
            match out {
                Output::Send { to, message } => rt.send(to, message),
                Output::Persist { id, value } => {
                    // The writer lives as long as this loop.
                    let _ = persist_tx.unbounded_send((id, value));
                }
                Output::Ack { client, id } => {
                    observer.acked(me, id);
                    if let Some(tx) = clients.get(&client) {
                        let _ = tx.unbounded_send(ClientFrame::Ack(id).encode());
                    }
                }
                Output::Learned(v) => observer.learned(me, &v),
            }
        }

        let deadline = deadline_of(&core);
        if deadline != timer_deadline {
            timer_deadline = deadline;
            sleep = Box::pin(rt.sleep_until(deadline));
        }
        let event = next_event(&mut inputs, &rt, sleep.as_mut()).await;
        let now = rt.now();
        match event {
            Event::Input(None) => return,
            Event::Input(Some(Input::Submit(client, v))) => core.handle_client_submit(now, client, v),
            Event::Input(Some(Input::ClientConnected(client, tx))) => {
                clients.insert(client, tx);
            }
            Event::Input(Some(Input::ClientGone(client))) => {
                clients.remove(&client);
                core.handle_client_gone(client);
            }
            Event::Input(Some(Input::WritesDone(ids, ok))) => {
                for id in ids {
                    core.handle_write_complete(now, id, ok);
                }
            }
            Event::Message(from, bytes) => core.handle_message(now, from, bytes),
            Event::Timeout => {
                core.handle_timeout(now);
                // Re-arm even if the deadline did not move (a spurious wake).
                timer_deadline = Instant::MAX;
            }
        }
    }
}

/// Group commit: append everything queued, sync once, report.
async fn log_writer<R: Runtime, F: StorageFile>(
    rt: R,
    file: F,
    mut queue: mpsc::UnboundedReceiver<(WriteId, Value)>,
    done: mpsc::UnboundedSender<Input>,
) {
    while let Some(first) = queue.next().await {
        let mut batch = vec![first];
        while let Some(Some(more)) = queue.next().now_or_never() {
            batch.push(more);
        }
        // Fault point: a slow disk. Acknowledgements wait for this write, so
        // a crash inside the window must lose nothing acknowledged.
        if kaelix_core::buggify!(rt, "broadcast: a slow log write") {
            rt.sleep(Duration::from_millis(15)).await;
        }
        // One append and one sync for the whole batch.
        let mut records = BytesMut::new();
        for (_, v) in &batch {
            encode_record_into(&mut records, v);
        }
        let ok = file.append(records.freeze()).await.is_ok() && file.sync().await.is_ok();
        let ids = batch.into_iter().map(|(id, _)| id).collect();
        if done.unbounded_send(Input::WritesDone(ids, ok)).is_err() {
            return;
        }
    }
}

async fn client_reader<S: ClientStream>(
    stream: S,
    client: ClientRef,
    replies: mpsc::UnboundedSender<Bytes>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    loop {
        match stream.recv().await {
            Ok(Some(frame)) => match ClientFrame::decode(frame) {
                Ok(ClientFrame::Submit(v)) => {
                    if inputs.unbounded_send(Input::Submit(client, v)).is_err() {
                        return;
                    }
                }
                Ok(other) => {
                    let reason = format!("unexpected frame from a client: {other:?}");
                    let _ = replies.unbounded_send(ClientFrame::Error { id: 0, reason }.encode());
                }
                Err(e) => {
                    let reason = format!("malformed frame: {e}");
                    let _ = replies.unbounded_send(ClientFrame::Error { id: 0, reason }.encode());
                }
            },
            Ok(None) | Err(_) => {
                let _ = inputs.unbounded_send(Input::ClientGone(client));
                return;
            }
        }
    }
}

/// A broadcast client: keeps one stream per node it has talked to, and
/// reconnects when a stream fails.
pub struct BroadcastClient<R: Runtime> {
    rt: R,
    streams: BTreeMap<NodeId, <R as ClientNetwork>::Stream>,
}

impl<R: Runtime> BroadcastClient<R> {
    /// A client with no connections yet.
    pub fn new(rt: R) -> Self {
        BroadcastClient { rt, streams: BTreeMap::new() }
    }

    /// Submits `value` to `node` and waits for its acknowledgement.
    ///
    /// Returns `Ok(true)` when acknowledged, `Ok(false)` on an explicit
    /// error reply, and `Err` when the outcome is unknown (connection failed,
    /// broke or timed out) — the value may or may not have been stored. A
    /// stream that failed or timed out is dropped; the next submit to that
    /// node reconnects.
    pub async fn submit(&mut self, node: NodeId, value: Value, timeout: Duration) -> Result<bool, SubmitError> {
        let rt = self.rt.clone();
        let streams = &mut self.streams;
        let work = async {
            let stream = match streams.get(&node) {
                Some(s) => s.clone(),
                None => {
                    let s = rt.connect(node).await.map_err(|_| SubmitError::Unreachable)?;
                    streams.insert(node, s.clone());
                    s
                }
            };
            let id = value.id;
            stream.send(ClientFrame::Submit(value).encode()).await.map_err(|_| SubmitError::Broken)?;
            loop {
                match stream.recv().await {
                    Ok(Some(f)) => match ClientFrame::decode(f) {
                        Ok(ClientFrame::Ack(acked)) if acked == id => return Ok(true),
                        Ok(ClientFrame::Error { .. }) => return Ok(false),
                        // A late ack of an earlier submit that timed out.
                        _ => continue,
                    },
                    Ok(None) | Err(_) => return Err(SubmitError::Broken),
                }
            }
        };
        let result = kaelix_core::runtime::timeout(&rt, timeout, work).await.unwrap_or(Err(SubmitError::TimedOut));
        if result.is_err()
            && let Some(s) = self.streams.remove(&node)
        {
            s.close();
        }
        result
    }
}

/// Why a submit's outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Could not connect.
    #[error("node unreachable")]
    Unreachable,
    /// The connection broke before an answer.
    #[error("connection broke")]
    Broken,
    /// No answer in time.
    #[error("timed out")]
    TimedOut,
}

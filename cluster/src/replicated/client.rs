//! A client of replicated partitions: finds each partition's leader,
//! retries through leader changes, and makes retries safe with a session.
//!
//! Every produce is operation `seq` of session `session`; retries repeat
//! the pair, so the partition applies it once however often it is sent
//! (see the module docs of `replicated`). An operation ends in one of three
//! ways: success, an explicit refusal (`Refused`: retrying will not help),
//! or — when the deadline passes first — **unknown**: it may or may not
//! have taken effect.

use std::collections::BTreeMap;

use bytes::Bytes;
use kaelix_core::NodeId;
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::runtime::{ClientNetwork, ClientStream, Runtime};
use kaelix_core::time::{Duration, Instant};

use super::protocol::{Request, Response};

/// Why an operation has no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The deadline passed: the operation may or may not have happened.
    #[error("outcome unknown: no answer within the deadline")]
    Unknown,
    /// A node refused it for good.
    #[error("refused: {0}")]
    Refused(String),
}

/// The answer to one attempt.
enum Attempt {
    Done(Response),
    /// Try elsewhere (maybe the named leader).
    Redirect(Option<NodeId>),
}

/// How long one attempt of a [`PartitionClient`] waits for its answer
/// unless told otherwise ([`PartitionClient::attempt_timeout`]).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);

/// A retrying, leader-following client (see the module docs).
pub struct PartitionClient<R: Runtime> {
    rt: R,
    members: Vec<NodeId>,
    session: u64,
    seq: u64,
    next_req: u64,
    leaders: BTreeMap<u32, NodeId>,
    streams: BTreeMap<NodeId, <R as ClientNetwork>::Stream>,
    rng: DetRng,
    /// How long one attempt waits for its answer.
    pub attempt_timeout: Duration,
}

impl<R: Runtime> PartitionClient<R> {
    /// A client of the cluster `members`, with session id `session`
    /// (unique per client).
    pub fn new(rt: R, members: Vec<NodeId>, session: u64) -> Self {
        let rng = rt.rng();
        PartitionClient {
            rt,
            members,
            session,
            seq: 0,
            next_req: 1,
            leaders: BTreeMap::new(),
            streams: BTreeMap::new(),
            rng,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }

    /// Appends `payload` to `partition` exactly once; the offset it got.
    pub async fn produce(&mut self, partition: u32, payload: Bytes, deadline: Duration) -> Result<u64, ClientError> {
        self.seq += 1;
        let seq = self.seq;
        let session = self.session;
        let response = self
            .call(partition, deadline, move |req| Request::Produce {
                req,
                partition,
                client: session,
                seq,
                payload: payload.clone(),
            })
            .await?;
        match response {
            Response::Produced { offset, .. } => Ok(offset),
            other => Err(ClientError::Refused(format!("unexpected answer to a produce: {other:?}"))),
        }
    }

    /// Commits consumer group `group`'s progress on `partition` (`next`: the
    /// next offset it reads), once; the group's committed offset after it
    /// (never lower than `next`).
    pub async fn commit(
        &mut self,
        partition: u32,
        group: &str,
        next: u64,
        deadline: Duration,
    ) -> Result<u64, ClientError> {
        self.seq += 1;
        let seq = self.seq;
        let session = self.session;
        let group = group.to_owned();
        let response = self
            .call(partition, deadline, move |req| Request::Commit {
                req,
                partition,
                client: session,
                seq,
                group: group.clone(),
                next,
            })
            .await?;
        match response {
            Response::Committed { next, .. } => Ok(next),
            other => Err(ClientError::Refused(format!("unexpected answer to a commit: {other:?}"))),
        }
    }

    /// The record at `offset` of `partition` (`None`: nothing there yet),
    /// linearizably.
    pub async fn read(
        &mut self,
        partition: u32,
        offset: u64,
        deadline: Duration,
    ) -> Result<Option<Bytes>, ClientError> {
        match self.call(partition, deadline, move |req| Request::Read { req, partition, offset }).await? {
            Response::ReadResult { payload, .. } => Ok(payload),
            other => Err(ClientError::Refused(format!("unexpected answer to a read: {other:?}"))),
        }
    }

    async fn call(
        &mut self,
        partition: u32,
        deadline: Duration,
        request: impl Fn(u64) -> Request,
    ) -> Result<Response, ClientError> {
        let give_up = self.rt.now() + deadline;
        let mut target = self.leaders.get(&partition).copied();
        loop {
            let now = self.rt.now();
            if now >= give_up {
                return Err(ClientError::Unknown);
            }
            let node = match target {
                Some(n) => n,
                None => self.members[self.rng.random_range(0..self.members.len())],
            };
            let req = self.next_req;
            self.next_req += 1;
            let budget = self.attempt_timeout.min(give_up.saturating_duration_since(now));
            match self.attempt(node, request(req), budget).await {
                Some(Attempt::Done(Response::Error { reason, .. })) => return Err(ClientError::Refused(reason)),
                Some(Attempt::Done(response)) => {
                    self.leaders.insert(partition, node);
                    return Ok(response);
                }
                Some(Attempt::Redirect(leader)) => {
                    self.leaders.remove(&partition);
                    target = leader.filter(|&l| l != node);
                    if target.is_none() {
                        // No leader known yet: give the election a moment.
                        self.rt.sleep(Duration::from_millis(self.rng.random_range(5..30))).await;
                    }
                }
                None => {
                    self.leaders.remove(&partition);
                    target = None;
                    self.rt.sleep(Duration::from_millis(self.rng.random_range(1..10))).await;
                }
            }
        }
    }

    /// One attempt at `node`; `None` when the stream failed or timed out
    /// (the stream is dropped and the next attempt reconnects).
    async fn attempt(&mut self, node: NodeId, request: Request, budget: Duration) -> Option<Attempt> {
        let rt = self.rt.clone();
        let req = request.req();
        let streams = &mut self.streams;
        let work = async {
            let stream = match streams.get(&node) {
                Some(s) => s.clone(),
                None => {
                    let s = rt.connect(node).await.ok()?;
                    streams.insert(node, s.clone());
                    s
                }
            };
            stream.send(request.encode()).await.ok()?;
            loop {
                let frame = stream.recv().await.ok()??;
                match Response::decode(frame) {
                    Ok(Response::NotLeader { req: r, leader }) if r == req => return Some(Attempt::Redirect(leader)),
                    Ok(response) if response.req() == req => return Some(Attempt::Done(response)),
                    // A late answer to an earlier attempt, or an error about
                    // a frame we did not send: not ours.
                    _ => continue,
                }
            }
        };
        let result = kaelix_core::runtime::timeout(&rt, budget, work).await.ok().flatten();
        if result.is_none()
            && let Some(s) = self.streams.remove(&node)
        {
            s.close();
        }
        result
    }

    /// When the client's clock says it is now.
    pub fn now(&self) -> Instant {
        self.rt.now()
    }
}

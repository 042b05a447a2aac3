//! [`Consumer`]: reads topics — by fetching from offsets, through push
//! subscriptions with flow control, or as a member of a consumer group.

use std::collections::VecDeque;

use futures_channel::mpsc;
use futures_util::StreamExt;
use kaelix_core::runtime::Runtime;
use kaelix_core::time::Duration;
use kaelix_protocol::{FetchLimits, MemberId, Message, Name, Pattern, Request, Response, StartPosition, Topic};

use crate::connection::{Connection, SubEvent, unexpected};
use crate::error::{ClientError, Result};
use crate::window::CreditWindow;

/// How much one fetch returns and how long it may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchOptions {
    /// Most messages (at least 1; the server lowers it to its max batch).
    pub max_messages: u32,
    /// Most bytes of messages; the first message comes whatever its size.
    pub max_bytes: u32,
    /// How long the server holds the request while nothing is readable
    /// (long poll); zero answers at once. The server may cap it.
    pub max_wait: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions { max_messages: 500, max_bytes: 1 << 20, max_wait: Duration::ZERO }
    }
}

impl FetchOptions {
    /// The same options, long-polling up to `wait`.
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> FetchOptions {
        self.max_wait = wait;
        self
    }

    fn limits(&self) -> FetchLimits {
        FetchLimits {
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
            max_wait_ms: u32::try_from(self.max_wait.as_millis()).unwrap_or(u32::MAX),
        }
    }
}

/// What a fetch returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The partition's oldest retained offset.
    pub low_watermark: u64,
    /// The end of its readable (committed) range.
    pub high_watermark: u64,
    /// Where the next fetch continues.
    pub next_offset: u64,
    /// The messages, in offset order, each with its partition and offset.
    pub messages: Vec<Message>,
}

/// How to subscribe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Share the messages with the other subscriptions of this queue group
    /// (each message to one of them); live messages only, so `start` must
    /// be [`StartPosition::Latest`].
    pub queue_group: Option<String>,
    /// Where to start in every matching partition.
    pub start: StartPosition,
    /// The credit window: at most this many messages are in flight or
    /// buffered on the client; credit is granted back as the application
    /// consumes (half a window at a time).
    pub window: u32,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions { queue_group: None, start: StartPosition::Latest, window: 256 }
    }
}

/// Reads topics.
pub struct Consumer<R: Runtime> {
    conn: Connection<R>,
}

impl<R: Runtime> Clone for Consumer<R> {
    fn clone(&self) -> Self {
        Consumer { conn: self.conn.clone() }
    }
}

impl<R: Runtime> Consumer<R> {
    /// A consumer on `conn`.
    pub fn new(conn: Connection<R>) -> Consumer<R> {
        Consumer { conn }
    }

    /// The connection.
    pub fn connection(&self) -> &Connection<R> {
        &self.conn
    }

    /// Reads `partition` of `topic` from `offset`. With a wait in
    /// `options`, a fetch at the end of the partition returns as soon as a
    /// message arrives (or empty once the wait is over).
    pub async fn fetch(&self, topic: &Topic, partition: u32, offset: u64, options: FetchOptions) -> Result<Fetched> {
        let request = Request::Fetch { topic: topic.clone(), partition, offset, limits: options.limits() };
        let wait = self.conn.config().request_timeout + options.max_wait;
        match self.conn.request_within(&request, wait).await? {
            Response::FetchResult { low_watermark, high_watermark, next_offset, messages } => {
                Ok(Fetched { low_watermark, high_watermark, next_offset, messages })
            }
            other => Err(unexpected("FetchResult", &other)),
        }
    }

    /// Opens a push subscription on every topic matching `pattern`.
    pub async fn subscribe(&self, pattern: &Pattern, options: SubscribeOptions) -> Result<Subscription<R>> {
        let queue_group = match options.queue_group {
            Some(g) => Some(Name::new(g).map_err(|e| ClientError::InvalidArgument(format!("queue group: {e}")))?),
            None => None,
        };
        let window = CreditWindow::new(options.window);
        let (id, events) = self.conn.open_subscription()?;
        let request = Request::Subscribe {
            subscription: id,
            pattern: pattern.clone(),
            queue_group,
            start: options.start,
            credit: window.window(),
        };
        match self.conn.request(&request).await {
            Ok(Response::SubscribeOk { subscription }) if subscription == id => {
                Ok(Subscription { conn: self.conn.clone(), id, events, buffered: VecDeque::new(), window, end: None })
            }
            Ok(other) => {
                self.conn.forget_subscription(id);
                Err(unexpected("SubscribeOk", &other))
            }
            Err(e) => {
                self.conn.forget_subscription(id);
                Err(e)
            }
        }
    }

    /// Joins consumer group `group` over `topic` as a new member.
    pub async fn join_group(&self, group: &str, topic: &Topic) -> Result<GroupConsumer<R>> {
        self.join(group, topic, None).await
    }

    /// Rejoins consumer group `group` as `member` (after a reconnect: the
    /// membership outlives the connection until its session times out).
    pub async fn rejoin_group(&self, group: &str, topic: &Topic, member: MemberId) -> Result<GroupConsumer<R>> {
        self.join(group, topic, Some(member)).await
    }

    async fn join(&self, group: &str, topic: &Topic, member: Option<MemberId>) -> Result<GroupConsumer<R>> {
        let group = Name::new(group).map_err(|e| ClientError::InvalidArgument(format!("group: {e}")))?;
        let request = Request::GroupJoin { group: group.clone(), topic: topic.clone(), member };
        match self.conn.request(&request).await? {
            Response::GroupAssignment { member, generation, partitions } => Ok(GroupConsumer {
                conn: self.conn.clone(),
                group,
                topic: topic.clone(),
                member,
                generation,
                partitions,
                left: false,
            }),
            other => Err(unexpected("GroupAssignment", &other)),
        }
    }
}

/// A push subscription. Messages arrive while it has credit; credit is
/// granted back automatically as [`Subscription::next`] hands them out.
/// Dropping it unsubscribes (without waiting).
pub struct Subscription<R: Runtime> {
    conn: Connection<R>,
    id: u32,
    events: mpsc::UnboundedReceiver<SubEvent>,
    buffered: VecDeque<Message>,
    window: CreditWindow,
    /// Set once it ended: `None` inside when unsubscribed by us.
    end: Option<Option<ClientError>>,
}

impl<R: Runtime> Subscription<R> {
    /// The subscription's id on its connection.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next message, waiting for one; `Ok(None)` once the
    /// subscription was closed by [`Subscription::unsubscribe`]; an error
    /// once the server ended it (its code says why) or the connection closed.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some(message) = self.take_buffered() {
                return Ok(Some(message));
            }
            if let Some(end) = &self.end {
                return end.clone().map_or(Ok(None), Err);
            }
            match self.events.next().await {
                Some(event) => self.absorb(event),
                None => self.end = Some(Some(ClientError::Closed("the connection ended".into()))),
            }
        }
    }

    /// The next message if one has arrived, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Message>> {
        while let Ok(event) = self.events.try_recv() {
            self.absorb(event);
        }
        if let Some(message) = self.take_buffered() {
            return Ok(Some(message));
        }
        match &self.end {
            Some(Some(e)) => Err(e.clone()),
            _ => Ok(None),
        }
    }

    /// Messages received and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buffered.len()
    }

    fn absorb(&mut self, event: SubEvent) {
        match event {
            SubEvent::Messages(messages) => self.buffered.extend(messages),
            SubEvent::Ended(e) => self.end = Some(Some(e)),
        }
    }

    /// Hands out a buffered message, granting credit back as it goes.
    fn take_buffered(&mut self) -> Option<Message> {
        let message = self.buffered.pop_front()?;
        if self.end.is_none()
            && let Some(add) = self.window.consumed(1)
        {
            // A closed connection ends the subscription; the message is
            // still handed out.
            let _ = self.conn.send(&Request::Credit { subscription: self.id, add });
        }
        Some(message)
    }

    /// Closes the subscription and waits for the server to confirm: no
    /// message of it arrives afterwards. Messages not yet handed out are
    /// dropped.
    pub async fn unsubscribe(mut self) -> Result<()> {
        if self.end.is_some() {
            return Ok(());
        }
        self.end = Some(None);
        let answer = self.conn.request(&Request::Unsubscribe { subscription: self.id }).await;
        self.conn.forget_subscription(self.id);
        match answer? {
            Response::Unsubscribed { subscription } if subscription == self.id => Ok(()),
            other => Err(unexpected("Unsubscribed", &other)),
        }
    }
}

impl<R: Runtime> Drop for Subscription<R> {
    fn drop(&mut self) {
        if self.end.is_none() {
            self.conn.forget_subscription(self.id);
            // Answered with `Unsubscribed`, which nobody waits for.
            let request = Request::Unsubscribe { subscription: self.id };
            let _ = self.conn.send(&request);
        }
    }
}

/// A member of a consumer group: the group's partitions of its topic are
/// shared among the members; each reads its own from the group's committed
/// offsets and commits what it processed (at least once).
///
/// Every request of the member keeps its membership alive; a member silent
/// for the server's session timeout is removed. Dropping it leaves the
/// group (without waiting).
pub struct GroupConsumer<R: Runtime> {
    conn: Connection<R>,
    group: Name,
    topic: Topic,
    member: MemberId,
    generation: u64,
    partitions: Vec<u32>,
    left: bool,
}

impl<R: Runtime> GroupConsumer<R> {
    /// The member's id (to rejoin after a reconnect).
    pub fn member_id(&self) -> MemberId {
        self.member
    }

    /// The group's generation as last seen: it grows with every rebalance.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The partitions assigned to this member as last seen.
    pub fn partitions(&self) -> &[u32] {
        &self.partitions
    }

    /// The group.
    pub fn group(&self) -> &str {
        self.group.as_str()
    }

    /// Keeps the membership alive and refreshes the assignment.
    pub async fn heartbeat(&mut self) -> Result<&[u32]> {
        let request = Request::GroupHeartbeat { group: self.group.clone(), member: self.member };
        match self.conn.request(&request).await? {
            Response::GroupAssignment { generation, partitions, .. } => {
                self.generation = generation;
                self.partitions = partitions;
                Ok(&self.partitions)
            }
            other => Err(unexpected("GroupAssignment", &other)),
        }
    }

    /// Messages of the member's partitions from the group's positions
    /// (long-polling as `options` says). Their generation is what commits
    /// are made in.
    pub async fn poll(&mut self, options: FetchOptions) -> Result<Vec<Message>> {
        let request = Request::GroupFetch { group: self.group.clone(), member: self.member, limits: options.limits() };
        let wait = self.conn.config().request_timeout + options.max_wait;
        match self.conn.request_within(&request, wait).await? {
            Response::GroupMessages { generation, messages } => {
                self.generation = generation;
                Ok(messages)
            }
            other => Err(unexpected("GroupMessages", &other)),
        }
    }

    /// Commits that everything up to and including `message` is processed.
    pub async fn commit(&mut self, message: &Message) -> Result<()> {
        let (Some(partition), Some(offset)) = (message.partition(), message.offset()) else {
            return Err(ClientError::InvalidArgument("a committed message must come from a partition".into()));
        };
        self.commit_offset(partition, offset + 1).await
    }

    /// Commits that the group processed `partition` below `next` (the next
    /// offset to read), in the generation last seen. A rebalance since
    /// makes it `StaleGeneration`: poll again.
    pub async fn commit_offset(&mut self, partition: u32, next: u64) -> Result<()> {
        let request = Request::GroupCommit {
            group: self.group.clone(),
            member: self.member,
            generation: self.generation,
            topic: self.topic.clone(),
            partition,
            offset: next,
        };
        match self.conn.request(&request).await? {
            Response::GroupCommitted => Ok(()),
            other => Err(unexpected("GroupCommitted", &other)),
        }
    }

    /// Lets go of the member without leaving the group: the membership
    /// lives on (until its session times out) for
    /// [`Consumer::rejoin_group`] under the id returned, on this or another
    /// connection.
    pub fn detach(mut self) -> MemberId {
        self.left = true;
        self.member
    }

    /// Leaves the group now (its partitions go to the others).
    pub async fn leave(mut self) -> Result<()> {
        self.left = true;
        let request = Request::GroupLeave { group: self.group.clone(), member: self.member };
        match self.conn.request(&request).await? {
            Response::GroupLeft => Ok(()),
            other => Err(unexpected("GroupLeft", &other)),
        }
    }
}

impl<R: Runtime> Drop for GroupConsumer<R> {
    fn drop(&mut self) {
        if !self.left {
            let _ = self.conn.send(&Request::GroupLeave { group: self.group.clone(), member: self.member });
        }
    }
}

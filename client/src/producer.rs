//! [`Producer`]: appends messages to topics.

use futures_util::future::try_join_all;
use kaelix_core::runtime::Runtime;
use kaelix_protocol::{Acks, Message, Position, Request, Response, Topic};

use crate::connection::{Connection, unexpected};
use crate::error::{ClientError, Result};

/// When a send completes (PROTOCOL.md §8.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AckLevel {
    /// Once the messages are appended to the partition leader's log (on a
    /// durable topic: written, not necessarily synced). Appended messages
    /// become readable once committed.
    Leader,
    /// Once the messages are committed: synced to disk on a durable topic;
    /// the same as `Leader` on a memory topic.
    #[default]
    Committed,
}

impl AckLevel {
    fn acks(self) -> Acks {
        match self {
            AckLevel::Leader => Acks::Leader,
            AckLevel::Committed => Acks::Committed,
        }
    }
}

/// Sends messages: one at a time, in batches, or fire-and-forget.
///
/// A message's partition is the one it names, else its key's (the broker's
/// consistent hash), else the topic's round robin. Messages sent on one
/// connection to one partition are appended in send order.
pub struct Producer<R: Runtime> {
    conn: Connection<R>,
    acks: AckLevel,
}

impl<R: Runtime> Clone for Producer<R> {
    fn clone(&self) -> Self {
        Producer { conn: self.conn.clone(), acks: self.acks }
    }
}

impl<R: Runtime> Producer<R> {
    /// A producer on `conn` that waits for [`AckLevel::Committed`].
    pub fn new(conn: Connection<R>) -> Producer<R> {
        Producer { conn, acks: AckLevel::Committed }
    }

    /// The same producer waiting for `acks`.
    #[must_use]
    pub fn with_acks(mut self, acks: AckLevel) -> Producer<R> {
        self.acks = acks;
        self
    }

    /// The connection.
    pub fn connection(&self) -> &Connection<R> {
        &self.conn
    }

    /// Appends one message; where it landed.
    pub async fn send(&self, message: Message) -> Result<Position> {
        let mut positions = self.send_batch(vec![message]).await?;
        positions.pop().ok_or_else(|| ClientError::Protocol("an acknowledgement without a position".into()))
    }

    /// Appends `messages` in order (they may name different topics and
    /// partitions); one position per message, in order. Split into as few
    /// `Produce` requests as the server's limits allow, sent back to back.
    /// On an error, some of the messages may have been appended.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<Position>> {
        let requests = self.requests(messages, self.acks.acks())?;
        let answers = try_join_all(requests.iter().map(|(request, count)| async move {
            match self.conn.request(request).await? {
                Response::ProduceAck { positions } if positions.len() == *count => Ok(positions),
                Response::ProduceAck { positions } => Err(ClientError::Protocol(format!(
                    "{} positions acknowledged for {count} messages",
                    positions.len()
                ))),
                other => Err(unexpected("ProduceAck", &other)),
            }
        }))
        .await?;
        Ok(answers.into_iter().flatten().collect())
    }

    /// Sends one message with acks `none`: nothing is answered, not even an
    /// error (an unknown topic drops it silently). Returns once it is queued
    /// for sending.
    pub fn send_and_forget(&self, message: Message) -> Result<()> {
        self.send_batch_and_forget(vec![message])
    }

    /// [`Producer::send_and_forget`] for a batch.
    pub fn send_batch_and_forget(&self, messages: Vec<Message>) -> Result<()> {
        for (request, _) in self.requests(messages, Acks::None)? {
            self.conn.send(&request)?;
        }
        Ok(())
    }

    /// Cuts `messages` into `Produce` requests: one per run of messages of
    /// one topic and partition, at most `max_batch` messages and a frame's
    /// worth of bytes each.
    fn requests(&self, messages: Vec<Message>, acks: Acks) -> Result<Vec<(Request, usize)>> {
        let info = self.conn.server_info();
        let max_batch = (info.max_batch as usize).max(1);
        // Room for the frame's own fields (topic, counts).
        let max_bytes = (info.max_frame_bytes as usize).saturating_sub(1024);
        let mut requests = Vec::new();
        let mut run: Vec<Message> = Vec::new();
        let mut run_bytes = 0;
        let flush = |run: &mut Vec<Message>, requests: &mut Vec<(Request, usize)>| {
            if let Some(first) = run.first() {
                let (topic, partition): (Topic, Option<u32>) = (first.topic().clone(), first.partition());
                let messages = std::mem::take(run);
                let count = messages.len();
                requests.push((Request::Produce { topic, partition, acks, messages }, count));
            }
        };
        for message in messages {
            if message.offset().is_some() {
                return Err(ClientError::InvalidArgument(format!(
                    "a message to {} carries an offset; offsets are assigned by the server",
                    message.topic()
                )));
            }
            let size = 4 + message.encoded_len();
            if size > max_bytes {
                return Err(ClientError::InvalidArgument(format!(
                    "a message of {size} bytes does not fit the server's frames of {} bytes",
                    info.max_frame_bytes
                )));
            }
            let same_run =
                run.first().is_some_and(|f| f.topic() == message.topic() && f.partition() == message.partition());
            if !same_run || run.len() >= max_batch || run_bytes + size > max_bytes {
                flush(&mut run, &mut requests);
                run_bytes = 0;
            }
            run_bytes += size;
            run.push(message);
        }
        flush(&mut run, &mut requests);
        Ok(requests)
    }
}

//! What clients send: [`Request`], one variant per request kind, with its
//! encoder and decoder. Body layouts are in PROTOCOL.md ("Requests"); the
//! code below writes and reads the fields in exactly that order.

use bytes::{BufMut, BytesMut};
use kaelix_broker::message::Message;
use kaelix_broker::topic::{Pattern, Topic};
use kaelix_broker::{MemberId, StartPosition};
use kaelix_core::codec::{self, Reader};

use crate::error::ProtocolError;
use crate::frame::{self, Frame, FrameKind};
use crate::types::{Acks, Credentials, FetchLimits, Name, Retention, StorageSpec};
use crate::wire::{self, finish};
use crate::{HELLO_MAGIC, MAX_HELLO_VERSIONS};

/// A client's request. Every request is answered by exactly one server
/// frame with its correlation id, except a `Produce` with [`Acks::None`]
/// (never answered) and a `Credit` (answered only if it fails); see
/// [`Request::expects_response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The handshake: the first frame of every connection.
    Hello {
        /// Protocol versions the client speaks (at most [`MAX_HELLO_VERSIONS`]).
        versions: Vec<u16>,
        /// The client's self-description, e.g. `kaelix-client/0.1.0`.
        client: Name,
        /// What the client logs in with, for a server with an `[auth]`
        /// section; `None` encodes as nothing at all (the Hello of a client
        /// that predates credentials).
        credentials: Option<Credentials>,
    },
    /// Asks for a `Pong`.
    Ping,
    /// Appends `messages`, in order, to `topic`.
    Produce {
        /// The topic; every message names it too.
        topic: Topic,
        /// The partition for every message; `None`: each message's key
        /// picks it (keyless messages go round-robin). A message may carry
        /// a partition only if it equals this one.
        partition: Option<u32>,
        /// When the server answers.
        acks: Acks,
        /// The messages, without offsets. Unstamped ones (nil id) get an id
        /// and a timestamp from the server.
        messages: Vec<Message>,
    },
    /// Reads one partition from an offset.
    Fetch {
        /// The topic.
        topic: Topic,
        /// The partition.
        partition: u32,
        /// The first offset to read.
        offset: u64,
        /// How much to return and how long to wait for it.
        limits: FetchLimits,
    },
    /// Opens a push subscription: the server sends `Deliver` frames while
    /// the subscription has credit.
    Subscribe {
        /// The client's id for it, unique among its open subscriptions.
        subscription: u32,
        /// Which topics.
        pattern: Pattern,
        /// Share the messages with the group's other members (each message
        /// to one of them); live messages only (`start` must be `Latest`).
        queue_group: Option<Name>,
        /// Where to start in every matching partition.
        start: StartPosition,
        /// Messages the server may push before the client grants more.
        credit: u32,
    },
    /// Grants a subscription `add` more messages.
    Credit {
        /// The subscription.
        subscription: u32,
        /// Messages added to its credit.
        add: u32,
    },
    /// Closes a subscription.
    Unsubscribe {
        /// The subscription.
        subscription: u32,
    },
    /// Joins a consumer group over a topic, or refreshes a membership.
    GroupJoin {
        /// The group.
        group: Name,
        /// The topic the group consumes.
        topic: Topic,
        /// `None` to join as a new member; an id to rejoin as that member.
        member: Option<MemberId>,
    },
    /// Keeps a membership alive; answered with the current assignment.
    GroupHeartbeat {
        /// The group.
        group: Name,
        /// The member.
        member: MemberId,
    },
    /// Reads the member's assigned partitions from the group's positions.
    GroupFetch {
        /// The group.
        group: Name,
        /// The member.
        member: MemberId,
        /// How much to return and how long to wait for it.
        limits: FetchLimits,
    },
    /// Commits that the group has processed `partition` below `offset`.
    GroupCommit {
        /// The group.
        group: Name,
        /// The committing member (it must own the partition).
        member: MemberId,
        /// The generation the member read in.
        generation: u64,
        /// The group's topic.
        topic: Topic,
        /// The partition.
        partition: u32,
        /// The next offset to read (one past the last processed message).
        offset: u64,
    },
    /// Leaves a consumer group (its partitions are dealt to the others).
    GroupLeave {
        /// The group.
        group: Name,
        /// The member.
        member: MemberId,
    },
    /// Creates a topic.
    CreateTopic {
        /// The topic.
        topic: Topic,
        /// Its partition count (the server refuses 0).
        partitions: u32,
        /// Where its partitions live.
        storage: StorageSpec,
        /// What they retain.
        retention: Retention,
    },
    /// Describes a topic.
    DescribeTopic {
        /// The topic.
        topic: Topic,
    },
    /// Deletes a topic and its messages.
    DeleteTopic {
        /// The topic.
        topic: Topic,
    },
    /// Lists every topic.
    ListTopics,
}

impl Request {
    /// The request's frame kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Request::Hello { .. } => FrameKind::Hello,
            Request::Ping => FrameKind::Ping,
            Request::Produce { .. } => FrameKind::Produce,
            Request::Fetch { .. } => FrameKind::Fetch,
            Request::Subscribe { .. } => FrameKind::Subscribe,
            Request::Credit { .. } => FrameKind::Credit,
            Request::Unsubscribe { .. } => FrameKind::Unsubscribe,
            Request::GroupJoin { .. } => FrameKind::GroupJoin,
            Request::GroupHeartbeat { .. } => FrameKind::GroupHeartbeat,
            Request::GroupFetch { .. } => FrameKind::GroupFetch,
            Request::GroupCommit { .. } => FrameKind::GroupCommit,
            Request::GroupLeave { .. } => FrameKind::GroupLeave,
            Request::CreateTopic { .. } => FrameKind::CreateTopic,
            Request::DescribeTopic { .. } => FrameKind::DescribeTopic,
            Request::DeleteTopic { .. } => FrameKind::DeleteTopic,
            Request::ListTopics => FrameKind::ListTopics,
        }
    }

    /// Whether the server answers on success: not for a `Produce` with
    /// [`Acks::None`], nor for a `Credit`.
    pub fn expects_response(&self) -> bool {
        !matches!(self, Request::Produce { acks: Acks::None, .. } | Request::Credit { .. })
    }

    /// Appends the request as one frame (length prefix included) to `out`.
    ///
    /// # Panics
    /// If the frame is 4 GiB or larger, a list has 2^32 entries or more, or
    /// a `Hello` offers more than 255 versions.
    ///
    /// Frames over the server's `max_frame_bytes` encode, and the server
    /// refuses them: check `out`'s growth against it.
    pub fn encode(&self, correlation: u32, out: &mut BytesMut) {
        let start = frame::begin(out, self.kind().as_u8(), correlation);
        match self {
            Request::Hello { versions, client, credentials } => {
                out.put_slice(&HELLO_MAGIC);
                out.put_u8(u8::try_from(versions.len()).expect("at most 255 versions"));
                versions.iter().for_each(|&v| out.put_u16_le(v));
                wire::put_name(out, client);
                if let Some(credentials) = credentials {
                    wire::put_credentials(out, credentials);
                }
            }
            Request::Ping | Request::ListTopics => {}
            Request::Produce { topic, partition, acks, messages } => {
                wire::put_topic(out, topic);
                wire::put_opt_u32(out, *partition);
                out.put_u8(acks.as_u8());
                wire::put_messages(out, messages);
            }
            Request::Fetch { topic, partition, offset, limits } => {
                wire::put_topic(out, topic);
                out.put_u32_le(*partition);
                out.put_u64_le(*offset);
                put_limits(out, limits);
            }
            Request::Subscribe { subscription, pattern, queue_group, start, credit } => {
                out.put_u32_le(*subscription);
                wire::put_pattern(out, pattern);
                wire::put_opt_name(out, queue_group.as_ref());
                wire::put_start(out, *start);
                out.put_u32_le(*credit);
            }
            Request::Credit { subscription, add } => {
                out.put_u32_le(*subscription);
                out.put_u32_le(*add);
            }
            Request::Unsubscribe { subscription } => out.put_u32_le(*subscription),
            Request::GroupJoin { group, topic, member } => {
                wire::put_name(out, group);
                wire::put_topic(out, topic);
                codec::put_opt_u64(out, member.map(|m| m.0));
            }
            Request::GroupHeartbeat { group, member } | Request::GroupLeave { group, member } => {
                wire::put_name(out, group);
                out.put_u64_le(member.0);
            }
            Request::GroupFetch { group, member, limits } => {
                wire::put_name(out, group);
                out.put_u64_le(member.0);
                put_limits(out, limits);
            }
            Request::GroupCommit { group, member, generation, topic, partition, offset } => {
                wire::put_name(out, group);
                out.put_u64_le(member.0);
                out.put_u64_le(*generation);
                wire::put_topic(out, topic);
                out.put_u32_le(*partition);
                out.put_u64_le(*offset);
            }
            Request::CreateTopic { topic, partitions, storage, retention } => {
                wire::put_topic(out, topic);
                out.put_u32_le(*partitions);
                wire::put_storage(out, *storage);
                wire::put_retention(out, retention);
            }
            Request::DescribeTopic { topic } | Request::DeleteTopic { topic } => wire::put_topic(out, topic),
        }
        frame::end(out, start);
    }

    /// Decodes a request frame of protocol version 1. Message payloads,
    /// keys and header values are slices of `frame.body`.
    pub fn decode(frame: &Frame) -> Result<Request, ProtocolError> {
        let unknown = ProtocolError::UnknownKind { kind: frame.kind, direction: "request" };
        let kind = FrameKind::from_u8(frame.kind).ok_or_else(|| unknown.clone())?;
        let mut r = Reader::new(&frame.body);
        let request = match kind {
            FrameKind::Hello => {
                let found = r.array::<4>("hello magic")?;
                if found != HELLO_MAGIC {
                    return Err(ProtocolError::BadMagic { found });
                }
                let count = r.len_u8("hello versions", MAX_HELLO_VERSIONS)?;
                let versions = (0..count).map(|_| r.u16("hello versions")).collect::<Result<_, _>>()?;
                let client = wire::read_name(&mut r, "hello client")?;
                // Credentials are the Hello's optional tail: present iff
                // bytes remain.
                let credentials = if r.remaining() > 0 { Some(wire::read_credentials(&mut r)?) } else { None };
                Request::Hello { versions, client, credentials }
            }
            FrameKind::Ping => Request::Ping,
            FrameKind::Produce => {
                let topic = wire::read_topic(&mut r, "produce topic")?;
                let partition = wire::read_opt_u32(&mut r, "produce partition")?;
                let acks = wire::read_enum(&mut r, "produce acks", Acks::from_u8)?;
                let messages =
                    wire::read_messages(&mut r, "produce messages", |m| check_produced(m, &topic, partition))?;
                Request::Produce { topic, partition, acks, messages }
            }
            FrameKind::Fetch => Request::Fetch {
                topic: wire::read_topic(&mut r, "fetch topic")?,
                partition: r.u32("fetch partition")?,
                offset: r.u64("fetch offset")?,
                limits: read_limits(&mut r)?,
            },
            FrameKind::Subscribe => Request::Subscribe {
                subscription: r.u32("subscription id")?,
                pattern: wire::read_pattern(&mut r, "subscribe pattern")?,
                queue_group: wire::read_opt_name(&mut r, "queue group")?,
                start: wire::read_start(&mut r, "start position")?,
                credit: r.u32("initial credit")?,
            },
            FrameKind::Credit => {
                Request::Credit { subscription: r.u32("subscription id")?, add: r.u32("credit added")? }
            }
            FrameKind::Unsubscribe => Request::Unsubscribe { subscription: r.u32("subscription id")? },
            FrameKind::GroupJoin => Request::GroupJoin {
                group: wire::read_name(&mut r, "group")?,
                topic: wire::read_topic(&mut r, "group topic")?,
                member: r.opt_u64("member id")?.map(MemberId),
            },
            FrameKind::GroupHeartbeat => Request::GroupHeartbeat {
                group: wire::read_name(&mut r, "group")?,
                member: MemberId(r.u64("member id")?),
            },
            FrameKind::GroupFetch => Request::GroupFetch {
                group: wire::read_name(&mut r, "group")?,
                member: MemberId(r.u64("member id")?),
                limits: read_limits(&mut r)?,
            },
            FrameKind::GroupCommit => Request::GroupCommit {
                group: wire::read_name(&mut r, "group")?,
                member: MemberId(r.u64("member id")?),
                generation: r.u64("generation")?,
                topic: wire::read_topic(&mut r, "group topic")?,
                partition: r.u32("commit partition")?,
                offset: r.u64("commit offset")?,
            },
            FrameKind::GroupLeave => {
                Request::GroupLeave { group: wire::read_name(&mut r, "group")?, member: MemberId(r.u64("member id")?) }
            }
            FrameKind::CreateTopic => Request::CreateTopic {
                topic: wire::read_topic(&mut r, "topic")?,
                partitions: r.u32("partition count")?,
                storage: wire::read_storage(&mut r, "storage kind")?,
                retention: wire::read_retention(&mut r)?,
            },
            FrameKind::DescribeTopic => Request::DescribeTopic { topic: wire::read_topic(&mut r, "topic")? },
            FrameKind::DeleteTopic => Request::DeleteTopic { topic: wire::read_topic(&mut r, "topic")? },
            FrameKind::ListTopics => Request::ListTopics,
            // A server frame sent to the server.
            _ => return Err(unknown),
        };
        finish(r, kind.name())?;
        Ok(request)
    }
}

/// A produced message names the request's topic, carries no offset, and
/// carries a partition only if it is the request's.
fn check_produced(m: &Message, topic: &Topic, partition: Option<u32>) -> Result<(), ProtocolError> {
    if m.topic() != topic {
        return Err(ProtocolError::TopicMismatch { expected: topic.clone(), found: m.topic().clone() });
    }
    if m.offset().is_some() {
        return Err(ProtocolError::MessagePosition { frame: "Produce", why: "a produced message carries an offset" });
    }
    if m.partition().is_some() && m.partition() != partition {
        return Err(ProtocolError::MessagePosition {
            frame: "Produce",
            why: "a message's partition differs from the request's",
        });
    }
    Ok(())
}

fn put_limits(out: &mut BytesMut, limits: &FetchLimits) {
    out.put_u32_le(limits.max_messages);
    out.put_u32_le(limits.max_bytes);
    out.put_u32_le(limits.max_wait_ms);
}

fn read_limits(r: &mut Reader<'_>) -> Result<FetchLimits, ProtocolError> {
    Ok(FetchLimits {
        max_messages: r.u32("max messages")?,
        max_bytes: r.u32("max bytes")?,
        max_wait_ms: r.u32("max wait")?,
    })
}

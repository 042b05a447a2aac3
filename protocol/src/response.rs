//! What servers send: a [`Response`] answers one request and echoes its
//! correlation id; a [`Push`] belongs to a subscription and carries
//! correlation id 0. [`ServerFrame`] is either, as a client decodes it.
//! Body layouts are in PROTOCOL.md ("Responses", "Pushes").

use bytes::{BufMut, BytesMut};
use kaelix_broker::MemberId;
use kaelix_broker::message::Message;
use kaelix_core::NodeId;
use kaelix_core::codec::Reader;

use crate::error::{ErrorCode, ProtocolError};
use crate::frame::{self, Frame, FrameKind};
use crate::types::{LeaderHint, PartitionInfo, Position, ServerInfo, TopicDescription, TopicSummary};
use crate::wire::{self, finish};

/// The server's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The handshake succeeded.
    HelloOk(ServerInfo),
    /// Answers `Ping`.
    Pong,
    /// Where each produced message landed, in request order.
    ProduceAck {
        /// One position per message of the request.
        positions: Vec<Position>,
    },
    /// Messages of one partition, in offset order.
    FetchResult {
        /// The partition's oldest retained offset.
        low_watermark: u64,
        /// The partition's readable end (the next offset to be appended,
        /// of those committed).
        high_watermark: u64,
        /// Where the next fetch should start: one past the last message
        /// returned, or the requested offset if none was.
        next_offset: u64,
        /// The messages, each with its partition and offset.
        messages: Vec<Message>,
    },
    /// The subscription is open; `Deliver` pushes may follow.
    SubscribeOk {
        /// The subscription.
        subscription: u32,
    },
    /// The subscription is closed: no `Deliver` for it follows this frame.
    Unsubscribed {
        /// The subscription.
        subscription: u32,
    },
    /// A member's place in its group (answers `GroupJoin` and
    /// `GroupHeartbeat`).
    GroupAssignment {
        /// The member's id (assigned by the server on a first join).
        member: MemberId,
        /// The group's generation; it grows with every rebalance.
        generation: u64,
        /// The partitions assigned to the member, in increasing order.
        partitions: Vec<u32>,
    },
    /// Messages of the member's partitions.
    GroupMessages {
        /// The generation they were read in (to commit in).
        generation: u64,
        /// The messages, each with its partition and offset.
        messages: Vec<Message>,
    },
    /// The commit is recorded.
    GroupCommitted,
    /// The member left the group.
    GroupLeft,
    /// The topic was created.
    TopicCreated,
    /// The topic's settings and partitions.
    TopicDescription(TopicDescription),
    /// The topic was deleted.
    TopicDeleted,
    /// Every topic, in name order.
    TopicList {
        /// The topics.
        topics: Vec<TopicSummary>,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// Where the leader is (only with [`ErrorCode::NotLeader`]).
        leader: Option<LeaderHint>,
        /// Human-readable detail (cut to [`crate::MAX_ERROR_MESSAGE_BYTES`]).
        message: String,
    },
}

/// A frame the server sends on its own, for a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Push {
    /// Messages for a subscription; each consumed one unit of its credit.
    Deliver {
        /// The subscription.
        subscription: u32,
        /// The messages, each with its topic, partition and offset.
        messages: Vec<Message>,
    },
    /// The server closed the subscription (shutdown, topic deleted, …): no
    /// `Deliver` for it follows this frame.
    SubscriptionEnded {
        /// The subscription.
        subscription: u32,
        /// Why.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

/// A frame as a client receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// The answer to the request with this correlation id.
    Response {
        /// The request's correlation id.
        correlation: u32,
        /// The answer.
        response: Response,
    },
    /// A push.
    Push(Push),
}

impl Response {
    /// An `Error` response without a leader hint.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error { code, leader: None, message: message.into() }
    }

    /// The response's frame kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Response::HelloOk(_) => FrameKind::HelloOk,
            Response::Pong => FrameKind::Pong,
            Response::ProduceAck { .. } => FrameKind::ProduceAck,
            Response::FetchResult { .. } => FrameKind::FetchResult,
            Response::SubscribeOk { .. } => FrameKind::SubscribeOk,
            Response::Unsubscribed { .. } => FrameKind::Unsubscribed,
            Response::GroupAssignment { .. } => FrameKind::GroupAssignment,
            Response::GroupMessages { .. } => FrameKind::GroupMessages,
            Response::GroupCommitted => FrameKind::GroupCommitted,
            Response::GroupLeft => FrameKind::GroupLeft,
            Response::TopicCreated => FrameKind::TopicCreated,
            Response::TopicDescription(_) => FrameKind::TopicDescription,
            Response::TopicDeleted => FrameKind::TopicDeleted,
            Response::TopicList { .. } => FrameKind::TopicList,
            Response::Error { .. } => FrameKind::Error,
        }
    }

    /// Appends the response to the request `correlation` as one frame.
    ///
    /// # Panics
    /// If the frame is 4 GiB or larger, or a list has 2^32 entries or more.
    pub fn encode(&self, correlation: u32, out: &mut BytesMut) {
        let start = frame::begin(out, self.kind().as_u8(), correlation);
        match self {
            Response::HelloOk(info) => {
                out.put_u16_le(info.version);
                out.put_u64_le(info.server_id.0);
                wire::put_name(out, &info.server_version);
                out.put_u32_le(info.max_frame_bytes);
                out.put_u32_le(info.max_batch);
            }
            Response::Pong
            | Response::GroupCommitted
            | Response::GroupLeft
            | Response::TopicCreated
            | Response::TopicDeleted => {}
            Response::ProduceAck { positions } => {
                wire::put_count(out, positions.len());
                for p in positions {
                    out.put_u32_le(p.partition);
                    out.put_u64_le(p.offset);
                }
            }
            Response::FetchResult { low_watermark, high_watermark, next_offset, messages } => {
                out.put_u64_le(*low_watermark);
                out.put_u64_le(*high_watermark);
                out.put_u64_le(*next_offset);
                wire::put_messages(out, messages);
            }
            Response::SubscribeOk { subscription } | Response::Unsubscribed { subscription } => {
                out.put_u32_le(*subscription);
            }
            Response::GroupAssignment { member, generation, partitions } => {
                out.put_u64_le(member.0);
                out.put_u64_le(*generation);
                wire::put_u32s(out, partitions);
            }
            Response::GroupMessages { generation, messages } => {
                out.put_u64_le(*generation);
                wire::put_messages(out, messages);
            }
            Response::TopicDescription(d) => {
                wire::put_topic(out, &d.topic);
                wire::put_storage(out, d.storage);
                wire::put_retention(out, &d.retention);
                wire::put_count(out, d.partitions.len());
                for p in &d.partitions {
                    out.put_u32_le(p.partition);
                    out.put_u64_le(p.low_watermark);
                    out.put_u64_le(p.high_watermark);
                }
            }
            Response::TopicList { topics } => {
                wire::put_count(out, topics.len());
                for t in topics {
                    wire::put_topic(out, &t.topic);
                    out.put_u32_le(t.partitions);
                    wire::put_storage(out, t.storage);
                }
            }
            Response::Error { code, leader, message } => {
                wire::put_code(out, *code);
                out.put_u8(u8::from(leader.is_some()));
                if let Some(hint) = leader {
                    out.put_u64_le(hint.node.0);
                    wire::put_opt_name(out, hint.address.as_ref());
                }
                wire::put_text(out, message);
            }
        }
        frame::end(out, start);
    }

    fn decode_body(kind: FrameKind, r: &mut Reader<'_>) -> Result<Option<Response>, ProtocolError> {
        Ok(Some(match kind {
            FrameKind::HelloOk => Response::HelloOk(ServerInfo {
                version: r.u16("server version")?,
                server_id: NodeId(r.u64("server id")?),
                server_version: wire::read_name(r, "server software version")?,
                max_frame_bytes: r.u32("max frame bytes")?,
                max_batch: r.u32("max batch")?,
            }),
            FrameKind::Pong => Response::Pong,
            FrameKind::ProduceAck => {
                let count = wire::read_count(r, "produce positions", 12)?;
                let mut positions = wire::vec_for(count);
                for _ in 0..count {
                    positions
                        .push(Position { partition: r.u32("produce partition")?, offset: r.u64("produce offset")? });
                }
                Response::ProduceAck { positions }
            }
            FrameKind::FetchResult => Response::FetchResult {
                low_watermark: r.u64("low watermark")?,
                high_watermark: r.u64("high watermark")?,
                next_offset: r.u64("next offset")?,
                messages: wire::read_messages(r, "fetched messages", wire::positioned("FetchResult"))?,
            },
            FrameKind::SubscribeOk => Response::SubscribeOk { subscription: r.u32("subscription id")? },
            FrameKind::Unsubscribed => Response::Unsubscribed { subscription: r.u32("subscription id")? },
            FrameKind::GroupAssignment => Response::GroupAssignment {
                member: MemberId(r.u64("member id")?),
                generation: r.u64("generation")?,
                partitions: wire::read_u32s(r, "assigned partitions")?,
            },
            FrameKind::GroupMessages => Response::GroupMessages {
                generation: r.u64("generation")?,
                messages: wire::read_messages(r, "group messages", wire::positioned("GroupMessages"))?,
            },
            FrameKind::GroupCommitted => Response::GroupCommitted,
            FrameKind::GroupLeft => Response::GroupLeft,
            FrameKind::TopicCreated => Response::TopicCreated,
            FrameKind::TopicDescription => {
                let topic = wire::read_topic(r, "topic")?;
                let storage = wire::read_storage(r, "storage kind")?;
                let retention = wire::read_retention(r)?;
                let count = wire::read_count(r, "partitions", 20)?;
                let mut partitions = wire::vec_for(count);
                for _ in 0..count {
                    partitions.push(PartitionInfo {
                        partition: r.u32("partition")?,
                        low_watermark: r.u64("low watermark")?,
                        high_watermark: r.u64("high watermark")?,
                    });
                }
                Response::TopicDescription(TopicDescription { topic, storage, retention, partitions })
            }
            FrameKind::TopicDeleted => Response::TopicDeleted,
            FrameKind::TopicList => {
                // Smallest entry: a one-byte topic, the count, the storage tag.
                let count = wire::read_count(r, "topics", 2 + 4 + 1)?;
                let mut topics = wire::vec_for(count);
                for _ in 0..count {
                    topics.push(TopicSummary {
                        topic: wire::read_topic(r, "topic")?,
                        partitions: r.u32("partition count")?,
                        storage: wire::read_storage(r, "storage kind")?,
                    });
                }
                Response::TopicList { topics }
            }
            FrameKind::Error => {
                let code = wire::read_code(r, "error code")?;
                let leader = if r.bool("leader hint")? {
                    Some(LeaderHint {
                        node: NodeId(r.u64("leader node")?),
                        address: wire::read_opt_name(r, "leader address")?,
                    })
                } else {
                    None
                };
                Response::Error { code, leader, message: wire::read_text(r, "error message")? }
            }
            _ => return Ok(None),
        }))
    }
}

impl Push {
    /// The push's frame kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Push::Deliver { .. } => FrameKind::Deliver,
            Push::SubscriptionEnded { .. } => FrameKind::SubscriptionEnded,
        }
    }

    /// Appends the push as one frame (correlation id 0).
    ///
    /// # Panics
    /// If the frame is 4 GiB or larger.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = frame::begin(out, self.kind().as_u8(), 0);
        match self {
            Push::Deliver { subscription, messages } => {
                out.put_u32_le(*subscription);
                wire::put_messages(out, messages);
            }
            Push::SubscriptionEnded { subscription, code, message } => {
                out.put_u32_le(*subscription);
                wire::put_code(out, *code);
                wire::put_text(out, message);
            }
        }
        frame::end(out, start);
    }

    fn decode_body(kind: FrameKind, r: &mut Reader<'_>) -> Result<Option<Push>, ProtocolError> {
        Ok(Some(match kind {
            FrameKind::Deliver => Push::Deliver {
                subscription: r.u32("subscription id")?,
                messages: wire::read_messages(r, "delivered messages", wire::positioned("Deliver"))?,
            },
            FrameKind::SubscriptionEnded => Push::SubscriptionEnded {
                subscription: r.u32("subscription id")?,
                code: wire::read_code(r, "error code")?,
                message: wire::read_text(r, "error message")?,
            },
            _ => return Ok(None),
        }))
    }
}

impl ServerFrame {
    /// Appends the frame to `out`.
    ///
    /// # Panics
    /// As [`Response::encode`].
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            ServerFrame::Response { correlation, response } => response.encode(*correlation, out),
            ServerFrame::Push(push) => push.encode(out),
        }
    }

    /// Decodes a server frame of protocol version 1. Message payloads,
    /// keys and header values are slices of `frame.body`.
    pub fn decode(frame: &Frame) -> Result<ServerFrame, ProtocolError> {
        let unknown = ProtocolError::UnknownKind { kind: frame.kind, direction: "server frame" };
        let kind = FrameKind::from_u8(frame.kind).filter(|k| !k.is_request()).ok_or_else(|| unknown.clone())?;
        let mut r = Reader::new(&frame.body);
        let decoded = if kind.is_push() {
            if frame.correlation != 0 {
                return Err(ProtocolError::PushCorrelation { frame: kind.name(), correlation: frame.correlation });
            }
            Push::decode_body(kind, &mut r)?.map(ServerFrame::Push)
        } else {
            Response::decode_body(kind, &mut r)?
                .map(|response| ServerFrame::Response { correlation: frame.correlation, response })
        };
        let decoded = decoded.ok_or(unknown)?;
        finish(r, kind.name())?;
        Ok(decoded)
    }
}

impl From<Push> for ServerFrame {
    fn from(push: Push) -> ServerFrame {
        ServerFrame::Push(push)
    }
}

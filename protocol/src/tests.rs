//! Whole-frame tests: every request and server frame round-trips through
//! the stream decoder whatever the chunking, arbitrary and corrupted bytes
//! never panic a decoder (and what decodes re-encodes to exactly the
//! input), each malformed frame fails with its specific error, and a few
//! frames are pinned byte for byte to the layouts of PROTOCOL.md.

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_broker::message::{DecodeError, MAX_PAYLOAD_BYTES};
use kaelix_broker::topic::TopicError;
use kaelix_core::WallTime;
use kaelix_core::codec::CodecError;
use proptest::prelude::*;
use uuid::Uuid;

use crate::*;

// -- strategies ----------------------------------------------------------

fn arb_topic() -> impl Strategy<Value = Topic> {
    let token = prop::sample::select(vec!["orders", "eu", "us", "a", "x-1", "_tmp", "Z9"]);
    prop::collection::vec(token, 1..5).prop_map(|t| Topic::new(t.join(".")).unwrap())
}

fn arb_pattern() -> impl Strategy<Value = Pattern> {
    let token = prop::sample::select(vec!["orders", "eu", "*", "a"]);
    (prop::collection::vec(token, 1..4), any::<bool>()).prop_map(|(mut t, tail)| {
        if tail {
            t.push(">");
        }
        Pattern::new(t.join(".")).unwrap()
    })
}

fn arb_name() -> impl Strategy<Value = Name> {
    "[a-zA-Z0-9 ./:_é-]{1,40}".prop_map(|s| Name::new(s).unwrap())
}

fn arb_text() -> impl Strategy<Value = String> {
    "[a-z .:é]{0,60}"
}

fn arb_member() -> impl Strategy<Value = MemberId> {
    any::<u64>().prop_map(MemberId)
}

fn arb_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::all().collect::<Vec<_>>())
}

fn arb_storage() -> impl Strategy<Value = StorageSpec> {
    prop_oneof![
        Just(StorageSpec::Memory),
        Just(StorageSpec::Durable),
        any::<u8>().prop_map(|replication_factor| StorageSpec::Replicated { replication_factor }),
    ]
}

fn arb_retention() -> impl Strategy<Value = Retention> {
    (any::<Option<u64>>(), any::<Option<u64>>(), any::<Option<u64>>())
        .prop_map(|(max_records, max_bytes, max_age_ms)| Retention { max_records, max_bytes, max_age_ms })
}

fn arb_start() -> impl Strategy<Value = StartPosition> {
    prop_oneof![
        Just(StartPosition::Latest),
        Just(StartPosition::Earliest),
        any::<u64>().prop_map(StartPosition::Offset),
        any::<u64>().prop_map(|t| StartPosition::Time(WallTime(t))),
    ]
}

fn arb_limits() -> impl Strategy<Value = FetchLimits> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(max_messages, max_bytes, max_wait_ms)| FetchLimits {
        max_messages,
        max_bytes,
        max_wait_ms,
    })
}

/// A message of `topic` with random id, timestamp, payload, key, headers
/// (partition and offset are set by the caller).
fn arb_message_of(topic: Topic) -> impl Strategy<Value = Message> {
    let name = prop::sample::select(vec!["trace-id", "content-type", "x", "retry.count"]);
    let bytes = |max: usize| prop::collection::vec(any::<u8>(), 0..max);
    (
        any::<u128>(),
        any::<u64>(),
        bytes(48),
        prop::option::of(bytes(12)),
        prop::collection::vec((name, bytes(12)), 0..3),
    )
        .prop_map(move |(id, ts, payload, key, headers)| {
            let mut b =
                Message::builder().topic(&topic).payload(payload).id(Uuid::from_u128(id)).timestamp(WallTime(ts));
            if let Some(k) = key {
                b = b.key(k);
            }
            for (n, v) in headers {
                b = b.header(n, v);
            }
            b.build().unwrap()
        })
}

/// Messages as a server returns them: any topic, with partition and offset.
fn arb_read_messages() -> impl Strategy<Value = Vec<Message>> {
    let one = (arb_topic(), any::<u32>(), any::<u64>())
        .prop_flat_map(|(t, p, o)| arb_message_of(t).prop_map(move |m| m.with_partition_offset(p, o)));
    prop::collection::vec(one, 0..4)
}

fn arb_produce() -> impl Strategy<Value = Request> {
    (arb_topic(), any::<Option<u32>>(), prop::sample::select(vec![Acks::None, Acks::Leader, Acks::Committed]))
        .prop_flat_map(|(topic, partition, acks)| {
            let message = (arb_message_of(topic.clone()), any::<bool>()).prop_map(move |(m, keep)| match partition {
                // A message may repeat the request's partition.
                Some(p) if keep => Message::builder()
                    .topic(m.topic())
                    .payload(m.payload().clone())
                    .id(m.id())
                    .timestamp(m.timestamp())
                    .partition(p)
                    .build()
                    .unwrap(),
                _ => m,
            });
            prop::collection::vec(message, 0..4).prop_map(move |messages| Request::Produce {
                topic: topic.clone(),
                partition,
                acks,
                messages,
            })
        })
}

fn arb_credentials() -> impl Strategy<Value = Option<Credentials>> {
    prop_oneof![
        Just(None),
        "\\PC{0,64}".prop_map(|t| Some(Credentials::Token(t))),
        (arb_name(), "\\PC{0,64}").prop_map(|(user, password)| Some(Credentials::User { user, password })),
    ]
}

fn arb_request() -> impl Strategy<Value = Request> {
    let connection = prop_oneof![
        (prop::collection::vec(any::<u16>(), 0..=MAX_HELLO_VERSIONS), arb_name(), arb_credentials())
            .prop_map(|(versions, client, credentials)| Request::Hello { versions, client, credentials }),
        Just(Request::Ping),
    ];
    let data = prop_oneof![
        arb_produce(),
        (arb_topic(), any::<u32>(), any::<u64>(), arb_limits())
            .prop_map(|(topic, partition, offset, limits)| Request::Fetch { topic, partition, offset, limits }),
        (any::<u32>(), arb_pattern(), prop::option::of(arb_name()), arb_start(), any::<u32>()).prop_map(
            |(subscription, pattern, queue_group, start, credit)| Request::Subscribe {
                subscription,
                pattern,
                queue_group,
                start,
                credit
            }
        ),
        (any::<u32>(), any::<u32>()).prop_map(|(subscription, add)| Request::Credit { subscription, add }),
        any::<u32>().prop_map(|subscription| Request::Unsubscribe { subscription }),
    ];
    let groups = prop_oneof![
        (arb_name(), arb_topic(), prop::option::of(arb_member()))
            .prop_map(|(group, topic, member)| Request::GroupJoin { group, topic, member }),
        (arb_name(), arb_member()).prop_map(|(group, member)| Request::GroupHeartbeat { group, member }),
        (arb_name(), arb_member(), arb_limits()).prop_map(|(group, member, limits)| Request::GroupFetch {
            group,
            member,
            limits
        }),
        (arb_name(), arb_member(), any::<u64>(), arb_topic(), any::<u32>(), any::<u64>()).prop_map(
            |(group, member, generation, topic, partition, offset)| Request::GroupCommit {
                group,
                member,
                generation,
                topic,
                partition,
                offset
            }
        ),
        (arb_name(), arb_member()).prop_map(|(group, member)| Request::GroupLeave { group, member }),
    ];
    let admin = prop_oneof![
        (arb_topic(), any::<u32>(), arb_storage(), arb_retention()).prop_map(
            |(topic, partitions, storage, retention)| Request::CreateTopic { topic, partitions, storage, retention }
        ),
        arb_topic().prop_map(|topic| Request::DescribeTopic { topic }),
        arb_topic().prop_map(|topic| Request::DeleteTopic { topic }),
        Just(Request::ListTopics),
    ];
    prop_oneof![connection, data, groups, admin]
}

fn arb_response() -> impl Strategy<Value = Response> {
    let connection = prop_oneof![
        (any::<u16>(), any::<u64>(), arb_name(), any::<u32>(), any::<u32>()).prop_map(
            |(version, id, server_version, max_frame_bytes, max_batch)| Response::HelloOk(ServerInfo {
                version,
                server_id: NodeId(id),
                server_version,
                max_frame_bytes,
                max_batch
            })
        ),
        Just(Response::Pong),
        (arb_code(), prop::option::of((any::<u64>(), prop::option::of(arb_name()))), arb_text()).prop_map(
            |(code, leader, message)| Response::Error {
                code,
                leader: leader.map(|(node, address)| LeaderHint { node: NodeId(node), address }),
                message
            }
        ),
    ];
    let data = prop_oneof![
        prop::collection::vec((any::<u32>(), any::<u64>()), 0..6).prop_map(|p| Response::ProduceAck {
            positions: p.into_iter().map(|(partition, offset)| Position { partition, offset }).collect()
        }),
        (any::<u64>(), any::<u64>(), any::<u64>(), arb_read_messages()).prop_map(
            |(low_watermark, high_watermark, next_offset, messages)| Response::FetchResult {
                low_watermark,
                high_watermark,
                next_offset,
                messages
            }
        ),
        any::<u32>().prop_map(|subscription| Response::SubscribeOk { subscription }),
        any::<u32>().prop_map(|subscription| Response::Unsubscribed { subscription }),
    ];
    let groups = prop_oneof![
        (arb_member(), any::<u64>(), prop::collection::vec(any::<u32>(), 0..8))
            .prop_map(|(member, generation, partitions)| Response::GroupAssignment { member, generation, partitions }),
        (any::<u64>(), arb_read_messages())
            .prop_map(|(generation, messages)| Response::GroupMessages { generation, messages }),
        Just(Response::GroupCommitted),
        Just(Response::GroupLeft),
    ];
    let partition =
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(partition, low_watermark, high_watermark)| {
            PartitionInfo { partition, low_watermark, high_watermark }
        });
    let summary = (arb_topic(), any::<u32>(), arb_storage()).prop_map(|(topic, partitions, storage)| TopicSummary {
        topic,
        partitions,
        storage,
    });
    let admin = prop_oneof![
        Just(Response::TopicCreated),
        (arb_topic(), arb_storage(), arb_retention(), prop::collection::vec(partition, 0..5)).prop_map(
            |(topic, storage, retention, partitions)| Response::TopicDescription(TopicDescription {
                topic,
                storage,
                retention,
                partitions
            })
        ),
        Just(Response::TopicDeleted),
        prop::collection::vec(summary, 0..5).prop_map(|topics| Response::TopicList { topics }),
    ];
    prop_oneof![connection, data, groups, admin]
}

fn arb_server_frame() -> impl Strategy<Value = ServerFrame> {
    let push = prop_oneof![
        (any::<u32>(), arb_read_messages())
            .prop_map(|(subscription, messages)| Push::Deliver { subscription, messages }),
        (any::<u32>(), arb_code(), arb_text()).prop_map(|(subscription, code, message)| Push::SubscriptionEnded {
            subscription,
            code,
            message
        }),
    ];
    prop_oneof![
        3 => (any::<u32>(), arb_response()).prop_map(|(correlation, response)| ServerFrame::Response { correlation, response }),
        1 => push.prop_map(ServerFrame::Push),
    ]
}

/// Feeds `wire` to a decoder in chunks of the sizes in `cuts` (cycled) and
/// collects every frame.
fn decode_in_chunks(wire: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let mut frames = Vec::new();
    let mut rest = wire;
    for &cut in cuts.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = cut.min(rest.len());
        decoder.extend(&rest[..n]);
        rest = &rest[n..];
        while let Some(f) = decoder.next_frame().expect("valid stream") {
            frames.push(f);
        }
    }
    assert_eq!(decoder.buffered(), 0);
    frames
}

fn encode_frame(frame: &Frame) -> Bytes {
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    out.freeze()
}

// -- properties ----------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn requests_round_trip_through_any_chunking(
        requests in prop::collection::vec((any::<u32>(), arb_request()), 1..6),
        cuts in prop::collection::vec(1usize..48, 1..16),
    ) {
        let mut wire = BytesMut::new();
        for (correlation, request) in &requests {
            let before = wire.len();
            request.encode(*correlation, &mut wire);
            let len = u32::from_be_bytes(wire[before..before + 4].try_into().unwrap()) as usize;
            prop_assert_eq!(len, wire.len() - before - LENGTH_PREFIX_BYTES, "length prefix of {:?}", request.kind());
        }
        let frames = decode_in_chunks(&wire, &cuts);
        prop_assert_eq!(frames.len(), requests.len());
        for (frame, (correlation, request)) in frames.iter().zip(&requests) {
            prop_assert_eq!(frame.correlation, *correlation);
            prop_assert_eq!(frame.kind, request.kind().as_u8());
            prop_assert_eq!(&Request::decode(frame)?, request);
            // A request is never mistaken for a server frame.
            let is_unknown_kind = matches!(ServerFrame::decode(frame), Err(ProtocolError::UnknownKind { .. }));
            prop_assert!(is_unknown_kind);
        }
    }

    #[test]
    fn server_frames_round_trip_through_any_chunking(
        frames in prop::collection::vec(arb_server_frame(), 1..6),
        cuts in prop::collection::vec(1usize..48, 1..16),
    ) {
        let mut wire = BytesMut::new();
        frames.iter().for_each(|f| f.encode(&mut wire));
        let decoded = decode_in_chunks(&wire, &cuts);
        prop_assert_eq!(decoded.len(), frames.len());
        for (frame, expected) in decoded.iter().zip(&frames) {
            prop_assert_eq!(&ServerFrame::decode(frame)?, expected);
            let is_unknown_kind = matches!(Request::decode(frame), Err(ProtocolError::UnknownKind { .. }));
            prop_assert!(is_unknown_kind);
        }
    }

    /// Payloads decode as slices of the frame, not copies.
    #[test]
    fn payloads_are_not_copied(request in arb_produce()) {
        let mut wire = BytesMut::new();
        request.encode(1, &mut wire);
        let frame = decode_in_chunks(&wire, &[wire.len()]).remove(0);
        let body = frame.body.as_ptr_range();
        if let Request::Produce { messages, .. } = Request::decode(&frame)? {
            for m in messages.iter().filter(|m| !m.payload().is_empty()) {
                prop_assert!(body.contains(&m.payload().as_ptr()));
            }
        }
    }

    /// Arbitrary bytes never panic the stream decoder or the frame decoders;
    /// whatever decodes re-encodes to exactly its frame.
    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512), max in 0usize..256) {
        let mut decoder = FrameDecoder::new(max);
        decoder.extend(&data);
        while let Ok(Some(frame)) = decoder.next_frame() {
            check_canonical(&frame)?;
        }
    }

    /// The same with a well-formed header of every kind, so bodies reach
    /// each decoder.
    #[test]
    fn arbitrary_bodies_never_panic(
        kind in prop::sample::select(FrameKind::ALL.iter().map(|k| k.as_u8()).chain([0, 0x7f, 0x80, 0xfe]).collect::<Vec<_>>()),
        correlation in prop_oneof![Just(0u32), any::<u32>()],
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        check_canonical(&Frame { kind, correlation, body: body.into() })?;
    }

    /// Corrupting one byte of a valid frame's body gives an error or another
    /// valid frame whose encoding is exactly the corrupted bytes.
    #[test]
    fn corrupted_frames_never_panic_and_stay_canonical(
        frame in prop_oneof![
            (any::<u32>(), arb_request()).prop_map(|(c, r)| { let mut o = BytesMut::new(); r.encode(c, &mut o); o }),
            arb_server_frame().prop_map(|f| { let mut o = BytesMut::new(); f.encode(&mut o); o }),
        ],
        at in any::<prop::sample::Index>(),
        xor in 1u8..,
    ) {
        let frame = decode_in_chunks(&frame, &[usize::MAX]).remove(0);
        let mut body = frame.body.to_vec();
        if !body.is_empty() {
            let i = at.index(body.len());
            body[i] ^= xor;
        }
        check_canonical(&Frame { body: body.into(), ..frame })?;
    }
}

fn check_canonical(frame: &Frame) -> Result<(), TestCaseError> {
    let raw = encode_frame(frame);
    if let Ok(request) = Request::decode(frame) {
        let mut again = BytesMut::new();
        request.encode(frame.correlation, &mut again);
        prop_assert_eq!(&again[..], &raw[..], "request {:?} is not canonical", request);
    }
    if let Ok(server) = ServerFrame::decode(frame) {
        let mut again = BytesMut::new();
        server.encode(&mut again);
        prop_assert_eq!(&again[..], &raw[..], "server frame {:?} is not canonical", server);
    }
    Ok(())
}

// -- malformed frames ----------------------------------------------------

fn body(build: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut b = BytesMut::new();
    build(&mut b);
    b.freeze()
}

fn request(kind: FrameKind, body: Bytes) -> Result<Request, ProtocolError> {
    Request::decode(&Frame { kind: kind.as_u8(), correlation: 9, body })
}

fn server(kind: FrameKind, correlation: u32, body: Bytes) -> Result<ServerFrame, ProtocolError> {
    ServerFrame::decode(&Frame { kind: kind.as_u8(), correlation, body })
}

fn topic_field(b: &mut BytesMut, topic: &[u8]) {
    b.put_u8(topic.len() as u8);
    b.put_slice(topic);
}

/// A message's encoding after its length prefix.
fn framed_message(b: &mut BytesMut, m: &Message) {
    b.put_u32_le(m.encoded_len() as u32);
    m.encode(b);
}

fn msg(topic: &str) -> Message {
    Message::builder().topic(topic).payload("p").build().unwrap()
}

#[test]
fn malformed_frames_fail_with_their_specific_error() {
    let fetch_body = body(|b| {
        topic_field(b, b"t");
        b.put_u32_le(0);
        b.put_u64_le(0);
        b.put_slice(&[0; 12]);
    });
    let produce = |topic: &[u8], partition: Option<u32>, acks: u8, messages: &[Message]| {
        body(|b| {
            topic_field(b, topic);
            match partition {
                Some(p) => {
                    b.put_u8(1);
                    b.put_u32_le(p);
                }
                None => b.put_u8(0),
            }
            b.put_u8(acks);
            b.put_u32_le(messages.len() as u32);
            messages.iter().for_each(|m| framed_message(b, m));
        })
    };
    let huge_payload = body(|b| {
        topic_field(b, b"t");
        b.put_slice(&[0, 1]);
        b.put_u32_le(1);
        // A 33-byte message whose payload length claims 8 MiB + 1.
        b.put_u32_le(33);
        b.put_u8(1);
        b.put_slice(&[0; 24]);
        b.put_u8(0);
        topic_field(b, b"t");
        b.put_u32_le(MAX_PAYLOAD_BYTES as u32 + 1);
        b.put_u8(0);
    });

    let cases: Vec<(&str, Result<(), ProtocolError>, ProtocolError, ErrorCode)> = vec![
        (
            "truncated fetch",
            request(FrameKind::Fetch, fetch_body.slice(..fetch_body.len() - 2)).map(drop),
            CodecError::Truncated { field: "max wait", needed: 2 }.into(),
            ErrorCode::MalformedFrame,
        ),
        (
            "trailing bytes after a fetch",
            request(FrameKind::Fetch, body(|b| b.put_slice(&[&fetch_body[..], b"!"].concat()))).map(drop),
            CodecError::Trailing { kind: "Fetch", len: 1 }.into(),
            ErrorCode::MalformedFrame,
        ),
        (
            "trailing bytes after a ping",
            request(FrameKind::Ping, Bytes::from_static(&[0])).map(drop),
            CodecError::Trailing { kind: "Ping", len: 1 }.into(),
            ErrorCode::MalformedFrame,
        ),
        (
            "undefined kind",
            Request::decode(&Frame { kind: 0x7e, correlation: 1, body: Bytes::new() }).map(drop),
            ProtocolError::UnknownKind { kind: 0x7e, direction: "request" },
            ErrorCode::UnsupportedFrame,
        ),
        (
            "server kind sent as a request",
            request(FrameKind::Pong, Bytes::new()).map(drop),
            ProtocolError::UnknownKind { kind: 0x82, direction: "request" },
            ErrorCode::UnsupportedFrame,
        ),
        (
            "request kind sent as a server frame",
            server(FrameKind::Ping, 1, Bytes::new()).map(drop),
            ProtocolError::UnknownKind { kind: 0x02, direction: "server frame" },
            ErrorCode::UnsupportedFrame,
        ),
        (
            "acks 3",
            request(FrameKind::Produce, produce(b"t", None, 3, &[])).map(drop),
            ProtocolError::BadEnum { field: "produce acks", value: 3 },
            ErrorCode::MalformedFrame,
        ),
        (
            "storage kind 3",
            request(
                FrameKind::CreateTopic,
                body(|b| {
                    topic_field(b, b"t");
                    b.put_u32_le(1);
                    b.put_u8(3);
                    b.put_slice(&[0; 3]);
                }),
            )
            .map(drop),
            ProtocolError::BadEnum { field: "storage kind", value: 3 },
            ErrorCode::MalformedFrame,
        ),
        (
            "start position 4",
            request(
                FrameKind::Subscribe,
                body(|b| {
                    b.put_u32_le(1);
                    topic_field(b, b"t.>");
                    b.put_u8(0);
                    b.put_u8(4);
                    b.put_u32_le(10);
                }),
            )
            .map(drop),
            ProtocolError::BadEnum { field: "start position", value: 4 },
            ErrorCode::MalformedFrame,
        ),
        (
            "presence byte 2",
            request(
                FrameKind::Subscribe,
                body(|b| {
                    b.put_u32_le(1);
                    topic_field(b, b"t");
                    b.put_u8(2);
                }),
            )
            .map(drop),
            CodecError::Invalid { field: "queue group", why: "2 is neither 0 nor 1".into() }.into(),
            ErrorCode::MalformedFrame,
        ),
        (
            "undefined error code",
            server(
                FrameKind::Error,
                1,
                body(|b| {
                    b.put_u16_le(7);
                    b.put_u8(0);
                    b.put_u16_le(0);
                }),
            )
            .map(drop),
            ProtocolError::BadEnum { field: "error code", value: 7 },
            ErrorCode::MalformedFrame,
        ),
        (
            "bad magic",
            request(FrameKind::Hello, Bytes::from_static(b"GET / HTTP")).map(drop),
            ProtocolError::BadMagic { found: *b"GET " },
            ErrorCode::MalformedFrame,
        ),
        (
            "seventeen versions",
            request(
                FrameKind::Hello,
                body(|b| {
                    b.put_slice(&HELLO_MAGIC);
                    b.put_u8(17);
                }),
            )
            .map(drop),
            CodecError::TooLarge { field: "hello versions", len: 17, max: 16 }.into(),
            ErrorCode::MalformedFrame,
        ),
        (
            "invalid topic",
            request(FrameKind::DescribeTopic, body(|b| topic_field(b, b"a..b"))).map(drop),
            ProtocolError::Topic {
                field: "topic",
                source: TopicError::EmptyToken { topic: "a..b".into(), position: 1 },
            },
            ErrorCode::InvalidTopic,
        ),
        (
            "empty topic",
            request(FrameKind::DeleteTopic, body(|b| topic_field(b, b""))).map(drop),
            ProtocolError::Topic { field: "topic", source: TopicError::Empty },
            ErrorCode::InvalidTopic,
        ),
        (
            "control character in a group name",
            request(
                FrameKind::GroupLeave,
                body(|b| {
                    topic_field(b, b"g\x07");
                    b.put_u64_le(1);
                }),
            )
            .map(drop),
            ProtocolError::Name { field: "group", source: NameError::Control { at: 1 } },
            ErrorCode::MalformedFrame,
        ),
        (
            "produce carrying another topic's message",
            request(FrameKind::Produce, produce(b"a", None, 1, &[msg("a"), msg("b")])).map(drop),
            ProtocolError::TopicMismatch { expected: Topic::new("a").unwrap(), found: Topic::new("b").unwrap() },
            ErrorCode::InvalidTopic,
        ),
        (
            "produced message with an offset",
            request(FrameKind::Produce, produce(b"a", Some(0), 1, &[msg("a").with_partition_offset(0, 5)])).map(drop),
            ProtocolError::MessagePosition { frame: "Produce", why: "a produced message carries an offset" },
            ErrorCode::MalformedFrame,
        ),
        (
            "produced message for another partition",
            request(
                FrameKind::Produce,
                produce(b"a", Some(1), 1, &[Message::builder().topic("a").partition(2).build().unwrap()]),
            )
            .map(drop),
            ProtocolError::MessagePosition {
                frame: "Produce",
                why: "a message's partition differs from the request's",
            },
            ErrorCode::MalformedFrame,
        ),
        (
            "delivered message without an offset",
            server(
                FrameKind::Deliver,
                0,
                body(|b| {
                    b.put_u32_le(1);
                    b.put_u32_le(1);
                    framed_message(b, &msg("a"));
                }),
            )
            .map(drop),
            ProtocolError::MessagePosition {
                frame: "Deliver",
                why: "a message read from a partition lacks its partition or offset",
            },
            ErrorCode::MalformedFrame,
        ),
        (
            "push with a correlation id",
            server(
                FrameKind::SubscriptionEnded,
                3,
                body(|b| {
                    b.put_u32_le(1);
                    b.put_u16_le(90);
                    b.put_u16_le(0);
                }),
            )
            .map(drop),
            ProtocolError::PushCorrelation { frame: "SubscriptionEnded", correlation: 3 },
            ErrorCode::MalformedFrame,
        ),
        (
            "message length over the limit",
            request(
                FrameKind::Produce,
                body(|b| {
                    topic_field(b, b"t");
                    b.put_slice(&[0, 1]);
                    b.put_u32_le(1);
                    b.put_u32_le(u32::MAX);
                    b.put_slice(&[0; 40]);
                }),
            )
            .map(drop),
            CodecError::TooLarge { field: "message length", len: u64::from(u32::MAX), max: MAX_MESSAGE_BYTES as u64 }
                .into(),
            ErrorCode::PayloadTooLarge,
        ),
        (
            "payload over the limit",
            request(FrameKind::Produce, huge_payload).map(drop),
            ProtocolError::Message {
                field: "produce messages",
                source: DecodeError::Codec(CodecError::TooLarge {
                    field: "payload length",
                    len: MAX_PAYLOAD_BYTES as u64 + 1,
                    max: MAX_PAYLOAD_BYTES as u64,
                }),
            },
            ErrorCode::PayloadTooLarge,
        ),
        (
            "missing message count",
            request(FrameKind::Produce, produce(b"t", None, 1, &[]).slice(..4)).map(drop),
            CodecError::Truncated { field: "produce messages", needed: 4 }.into(),
            ErrorCode::MalformedFrame,
        ),
        (
            "hostile message count",
            request(
                FrameKind::Produce,
                body(|b| {
                    topic_field(b, b"t");
                    b.put_slice(&[0, 1]);
                    b.put_u32_le(1 << 30);
                }),
            )
            .map(drop),
            CodecError::Truncated { field: "produce messages", needed: (1 << 30) * 37 }.into(),
            ErrorCode::MalformedFrame,
        ),
        (
            "error message over the limit",
            server(
                FrameKind::Error,
                1,
                body(|b| {
                    b.put_u16_le(99);
                    b.put_u8(0);
                    b.put_u16_le(MAX_ERROR_MESSAGE_BYTES as u16 + 1);
                }),
            )
            .map(drop),
            CodecError::TooLarge {
                field: "error message",
                len: MAX_ERROR_MESSAGE_BYTES as u64 + 1,
                max: MAX_ERROR_MESSAGE_BYTES as u64,
            }
            .into(),
            ErrorCode::MalformedFrame,
        ),
    ];
    for (name, got, expected, code) in cases {
        assert_eq!(got, Err(expected.clone()), "{name}");
        assert_eq!(expected.code(), code, "{name}: code");
        assert!(!expected.closes_connection() || matches!(expected, ProtocolError::BadMagic { .. }), "{name}");
    }
}

#[test]
fn bad_utf8_in_a_topic_is_named() {
    let err = request(FrameKind::DescribeTopic, body(|b| topic_field(b, b"ab\xffc"))).unwrap_err();
    assert!(matches!(&err, ProtocolError::Codec(CodecError::Invalid { field: "topic", .. })), "{err}");
    assert!(err.to_string().starts_with("invalid topic: invalid utf-8"), "{err}");
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    // Inside a message the message codec reports it as a bad character.
    let mut raw = BytesMut::new();
    framed_message(&mut raw, &msg("ab"));
    let at = raw.iter().rposition(|&b| b == b'b').unwrap();
    raw[at] = 0xff;
    let err = server(
        FrameKind::FetchResult,
        1,
        body(|b| {
            b.put_slice(&[0; 24]);
            b.put_u32_le(1);
            b.put_slice(&raw);
        }),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ProtocolError::Message { field: "fetched messages", source: DecodeError::Topic(_) }),
        "{err}"
    );
    assert_eq!(err.code(), ErrorCode::InvalidTopic);
}

#[test]
fn oversize_and_undersize_lengths_close_the_connection() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    decoder.extend(&((DEFAULT_MAX_FRAME_BYTES + 1) as u32).to_be_bytes());
    let err = decoder.next_frame().unwrap_err();
    assert_eq!(
        err,
        ProtocolError::FrameTooLarge { len: DEFAULT_MAX_FRAME_BYTES as u64 + 1, max: DEFAULT_MAX_FRAME_BYTES }
    );
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert!(err.closes_connection());
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    decoder.extend(&[0, 0, 0, 0]);
    let err = decoder.next_frame().unwrap_err();
    assert_eq!(err, ProtocolError::FrameTooShort { len: 0 });
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    assert!(err.closes_connection());
}

// -- pinned layouts ------------------------------------------------------

fn encoded(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut out = BytesMut::new();
    f(&mut out);
    out.to_vec()
}

#[test]
fn layouts_match_the_specification() {
    assert_eq!(encoded(|o| Request::Ping.encode(7, o)), [0, 0, 0, 5, 0x02, 7, 0, 0, 0]);
    let hello = Request::Hello { versions: vec![1, 2], client: Name::new("c").unwrap(), credentials: None };
    assert_eq!(
        encoded(|o| hello.encode(1, o)),
        [&[0, 0, 0, 16, 0x01, 1, 0, 0, 0][..], b"KXNP", &[2, 1, 0, 2, 0, 1, b'c']].concat()
    );
    let token = Request::Hello {
        versions: vec![1],
        client: Name::new("c").unwrap(),
        credentials: Some(Credentials::Token("s3".into())),
    };
    assert_eq!(
        encoded(|o| token.encode(1, o)),
        [&[0, 0, 0, 19, 0x01, 1, 0, 0, 0][..], b"KXNP", &[1, 1, 0, 1, b'c', 1, 2, 0, b's', b'3']].concat()
    );
    let user = Request::Hello {
        versions: vec![1],
        client: Name::new("c").unwrap(),
        credentials: Some(Credentials::User { user: Name::new("al").unwrap(), password: "pw".into() }),
    };
    assert_eq!(
        encoded(|o| user.encode(1, o)),
        [&[0, 0, 0, 22, 0x01, 1, 0, 0, 0][..], b"KXNP", &[1, 1, 0, 1, b'c', 2, 2, b'a', b'l', 2, 0, b'p', b'w']]
            .concat()
    );
    assert!(!format!("{user:?}").contains("pw"), "Debug shows no password: {user:?}");
    let fetch = Request::Fetch {
        topic: Topic::new("t").unwrap(),
        partition: 1,
        offset: 2,
        limits: FetchLimits { max_messages: 3, max_bytes: 4, max_wait_ms: 5 },
    };
    assert_eq!(
        encoded(|o| fetch.encode(0x0102_0304, o)),
        [
            &[0, 0, 0, 31, 0x11, 4, 3, 2, 1, 1, b't'][..],
            &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
            &[3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0]
        ]
        .concat()
    );
    let subscribe = Request::Subscribe {
        subscription: 5,
        pattern: Pattern::new("a.*").unwrap(),
        queue_group: None,
        start: StartPosition::Offset(9),
        credit: 100,
    };
    assert_eq!(
        encoded(|o| subscribe.encode(2, o)),
        [&[0, 0, 0, 27, 0x20, 2, 0, 0, 0, 5, 0, 0, 0, 3][..], b"a.*", &[0, 2, 9, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0]]
            .concat()
    );
    let error = Response::Error {
        code: ErrorCode::NotLeader,
        leader: Some(LeaderHint { node: NodeId(3), address: Some(Name::new("h:1").unwrap()) }),
        message: "x".into(),
    };
    assert_eq!(
        encoded(|o| error.encode(8, o)),
        [&[0, 0, 0, 24, 0xff, 8, 0, 0, 0, 40, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 3][..], b"h:1", &[1, 0, b'x']].concat()
    );
    let ack = Response::ProduceAck { positions: vec![Position { partition: 2, offset: 7 }] };
    assert_eq!(
        encoded(|o| ack.encode(4, o)),
        [0, 0, 0, 21, 0x90, 4, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]
    );
    // A message travels as its length, then the broker's encoding of it.
    let m = msg("t").with_partition_offset(0, 1);
    let deliver = Push::Deliver { subscription: 6, messages: vec![m.clone()] };
    let mut expected = vec![0, 0, 0, 0, 0xa8, 0, 0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0];
    expected.extend_from_slice(&(m.encoded_len() as u32).to_le_bytes());
    expected.extend_from_slice(&m.encode_to_bytes());
    let len = (expected.len() - 4) as u32;
    expected[..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(encoded(|o| deliver.encode(o)), expected);
}

#[test]
fn acks_none_and_credit_expect_no_answer() {
    let produce = |acks| Request::Produce { topic: Topic::new("t").unwrap(), partition: None, acks, messages: vec![] };
    assert!(!produce(Acks::None).expects_response());
    assert!(produce(Acks::Leader).expects_response());
    assert!(!Request::Credit { subscription: 1, add: 1 }.expects_response());
    assert!(Request::Ping.expects_response());
}

#[test]
fn negotiation_picks_the_highest_common_version() {
    assert_eq!(negotiate(&[1]), Some(1));
    assert_eq!(negotiate(&[3, 1, 2]), Some(1));
    assert_eq!(negotiate(&[2, 3]), None);
    assert_eq!(negotiate(&[]), None);
}

#[test]
fn error_text_is_cut_when_encoded() {
    let long = Response::error(ErrorCode::Internal, "é".repeat(MAX_ERROR_MESSAGE_BYTES));
    let mut wire = BytesMut::new();
    long.encode(1, &mut wire);
    let frame = decode_in_chunks(&wire, &[64]).remove(0);
    match ServerFrame::decode(&frame).unwrap() {
        ServerFrame::Response { response: Response::Error { message, .. }, .. } => {
            assert_eq!(message.len(), MAX_ERROR_MESSAGE_BYTES);
        }
        other => panic!("{other:?}"),
    }
}

//! Unit tests of the broker's sans-IO parts: one per rule.

use bytes::Bytes;

use crate::backpressure::{MessagePriority, Offer, PressureLevel, Strategy, SubscriptionBuffer, Thresholds};
use crate::broker_core::{
    BrokerConfig, BrokerCore, BrokerError, PublishOutcome, Routed, TopicConfig, jump_hash, partition_for_key,
};
use crate::message::Message;
use crate::registry::{RegistryError, StreamRegistry};
use crate::topic::{Pattern, Topic};
use kaelix_core::rng::seeded;
use kaelix_core::time::{Duration, Instant, WallTime};

fn msg(topic: &str, n: u8) -> Message {
    Message::builder().topic(topic).payload(Bytes::from(vec![n])).build().unwrap()
}

fn prio(n: u8, p: &str) -> Message {
    Message::builder()
        .topic("t")
        .payload(Bytes::from(vec![n]))
        .header("priority", Bytes::from(p.to_owned()))
        .build()
        .unwrap()
}

fn n(m: &Message) -> u8 {
    m.payload()[0]
}

fn drain(b: &mut SubscriptionBuffer) -> Vec<u8> {
    std::iter::from_fn(|| b.pop()).map(|m| n(&m)).collect()
}

const T: Thresholds = Thresholds { elevated: 0.75, critical: 0.95 };

#[test]
fn drop_oldest_keeps_the_newest_and_counts() {
    let mut b = SubscriptionBuffer::new(Strategy::DropOldest { capacity: 3 }, T);
    for i in 0..5 {
        b.offer(msg("t", i));
    }
    assert_eq!(b.drops().oldest, 2);
    assert_eq!(drain(&mut b), vec![2, 3, 4]);
}

#[test]
fn block_refuses_without_dropping() {
    let mut b = SubscriptionBuffer::new(Strategy::Block { capacity: 2 }, T);
    assert_eq!(b.offer(msg("t", 0)), Offer::Accepted);
    assert_eq!(b.offer(msg("t", 1)), Offer::Accepted);
    assert!(b.would_block());
    assert_eq!(b.offer(msg("t", 2)), Offer::WouldBlock);
    assert_eq!(b.drops().total(), 0);
    b.pop();
    assert!(!b.would_block());
}

#[test]
fn grow_doubles_to_the_cap_then_refuses_the_newest() {
    let mut b = SubscriptionBuffer::new(Strategy::Grow { initial: 2, max: 8 }, T);
    for i in 0..10 {
        b.offer(msg("t", i));
    }
    assert_eq!(b.capacity(), 8);
    assert_eq!(b.drops().newest, 2);
    assert_eq!(drain(&mut b), (0..8).collect::<Vec<_>>(), "nothing buffered is lost");
}

#[test]
fn shedding_drops_low_priority_under_pressure_and_keeps_high() {
    let mut b = SubscriptionBuffer::new(Strategy::ShedLowPriority { capacity: 4 }, T);
    for i in 0..3 {
        b.offer(prio(i, "low"));
    }
    assert_eq!(b.pressure(), PressureLevel::Elevated, "3 of 4 is above 75 %");
    assert_eq!(b.offer(prio(3, "normal")), Offer::Dropped);
    assert_eq!(b.drops().shed, 1);
    assert_eq!(b.offer(prio(4, "high")), Offer::Accepted);
    // Full: a critical message evicts the oldest low-priority one.
    assert!(matches!(b.offer(prio(5, "critical")), Offer::AcceptedDropping(old) if n(&old) == 0));
    assert_eq!(drain(&mut b), vec![1, 2, 4, 5]);
    assert_eq!(MessagePriority::of(&msg("t", 0)), MessagePriority::Normal);
}

#[test]
fn every_strategy_stays_within_its_bound() {
    for strategy in [
        Strategy::DropOldest { capacity: 5 },
        Strategy::Block { capacity: 5 },
        Strategy::Grow { initial: 1, max: 5 },
        Strategy::ShedLowPriority { capacity: 5 },
    ] {
        let mut b = SubscriptionBuffer::new(strategy, T);
        for i in 0..100 {
            b.offer(prio(i, ["low", "high"][i as usize % 2]));
            assert!(b.len() <= 5, "{strategy:?}");
        }
        assert_eq!(b.high_water(), 5);
    }
}

#[test]
fn jump_hash_moves_keys_only_to_new_partitions() {
    let keys: Vec<u64> = (0..10_000u64).map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
    for buckets in 1..20u32 {
        for &k in &keys {
            let before = jump_hash(k, buckets);
            let after = jump_hash(k, buckets + 1);
            assert!(before < buckets);
            assert!(after == before || after == buckets, "key moved between old partitions");
        }
    }
    // Spread: every partition gets a fair share.
    let mut counts = [0u32; 8];
    for &k in &keys {
        counts[jump_hash(k, 8) as usize] += 1;
    }
    assert!(counts.iter().all(|&c| (1000..1500).contains(&c)), "{counts:?}");
    assert_eq!(partition_for_key(b"customer-7", 4), partition_for_key(b"customer-7", 4));
}

#[test]
fn registry_enforces_capacity_and_closes_idle_streams() {
    let t = |ms| Instant::ZERO + Duration::from_millis(ms);
    let mut r = StreamRegistry::new(2, Some(Duration::from_millis(100)), T);
    let p = Pattern::new("a.>").unwrap();
    let a = r.open(t(0), p.clone(), None, Strategy::default()).unwrap();
    let b = r.open(t(0), p.clone(), None, Strategy::default()).unwrap();
    assert_eq!(r.open(t(0), p.clone(), None, Strategy::default()), Err(RegistryError::TooManyStreams { limit: 2 }));
    assert_eq!(&*r.streams_for(&Topic::new("a.b").unwrap()), &[a, b]);
    r.get_mut(b).unwrap().last_active = t(90);
    assert_eq!(r.next_idle_deadline(), Some(t(100)));
    let closed: Vec<_> = r.close_idle(t(150)).into_iter().map(|(id, _)| id).collect();
    assert_eq!(closed, vec![a], "only the stream idle past the timeout");
    assert_eq!(r.active_streams().len(), 1);
}

fn core() -> BrokerCore {
    BrokerCore::new(BrokerConfig { auto_create: None, ..BrokerConfig::default() })
}

#[test]
fn publish_places_by_partition_key_or_round_robin_and_refuses_unknowns() {
    let mut c = core();
    let mut rng = seeded(1);
    let (now, wall) = (Instant::ZERO, WallTime(1_000));
    assert!(matches!(c.publish(now, wall, &mut rng, msg("x", 0)), Err(BrokerError::UnknownTopic(_))));
    c.create_topic(Topic::new("x").unwrap(), TopicConfig { partitions: 3, ..TopicConfig::default() }).unwrap();
    let placed: Vec<u32> = (0..6)
        .map(|i| match c.publish(now, wall, &mut rng, msg("x", i)).unwrap() {
            PublishOutcome::Published(p) => p.partition,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(placed, vec![0, 1, 2, 0, 1, 2], "round-robin without a key");
    let explicit = Message::builder().topic("x").payload("p").partition(7).build().unwrap();
    assert!(matches!(
        c.publish(now, wall, &mut rng, explicit),
        Err(BrokerError::NoSuchPartition { partitions: 3, requested: 7, .. })
    ));
    let read = c.read(&Topic::new("x").unwrap(), 0, 0, 10).unwrap();
    assert_eq!(read.len(), 2);
    assert!(read.iter().all(|m| m.is_stamped() && m.timestamp() == wall), "stamped from the handed-in clock");
    assert!(c.create_topic(Topic::new("x").unwrap(), TopicConfig { partitions: 2, ..TopicConfig::default() }).is_err());
}

#[test]
fn routing_stores_on_existing_topics_and_relays_the_rest_to_live_streams_only() {
    let mut c = core();
    let mut rng = seeded(3);
    let (now, wall) = (Instant::ZERO, WallTime(9));
    c.create_topic(Topic::new("stored").unwrap(), TopicConfig::default()).unwrap();
    let all = c.subscribe(now, Pattern::new(">").unwrap(), None, None).unwrap();
    let queue_a = c.subscribe(now, Pattern::new("relayed.*").unwrap(), Some("q"), None).unwrap();
    let queue_b = c.subscribe(now, Pattern::new("relayed.*").unwrap(), Some("q"), None).unwrap();
    let route = |c: &mut BrokerCore, rng: &mut _, m| c.route_or_return(now, wall, rng, m).unwrap().unwrap();
    assert!(matches!(route(&mut c, &mut rng, msg("stored", 0)), Routed::Stored(p) if p.offset == 0));
    for i in 1..=4 {
        // The wildcard stream and exactly one member of the queue group.
        assert_eq!(route(&mut c, &mut rng, msg("relayed.x", i)), Routed::Relayed { buffered_for: 2 });
    }
    assert_eq!(route(&mut c, &mut rng, msg("only.wildcard", 5)), Routed::Relayed { buffered_for: 1 });
    assert_eq!(c.partitions(&Topic::new("relayed.x").unwrap()), None, "relaying creates no topic");
    let got: Vec<Message> = std::iter::from_fn(|| c.poll_stream(now, all).unwrap()).collect();
    assert_eq!(got.iter().map(n).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(got[0].offset(), Some(0));
    assert!(got[1..].iter().all(|m| m.offset().is_none() && m.is_stamped()), "relayed: no offset, stamped");
    let mut queued = drain_stream(&mut c, queue_a);
    queued.extend(drain_stream(&mut c, queue_b));
    queued.sort_unstable();
    assert_eq!(queued, vec![1, 2, 3, 4], "each relayed message once per queue group");
    let explicit = Message::builder().topic("relayed.x").payload("p").partition(0).build().unwrap();
    assert!(matches!(c.route_or_return(now, wall, &mut rng, explicit), Err(BrokerError::UnknownTopic(_))));
}

#[test]
fn topic_strategy_rules_apply_when_a_subscription_names_none() {
    let rules = vec![
        (Pattern::new("metrics.>").unwrap(), Strategy::Grow { initial: 4, max: 64 }),
        (Pattern::new("orders.*").unwrap(), Strategy::Block { capacity: 16 }),
    ];
    let c = BrokerCore::new(BrokerConfig { topic_strategies: rules, ..BrokerConfig::default() });
    assert_eq!(c.strategy_for(&Pattern::new("metrics.cpu.h1").unwrap()), Strategy::Grow { initial: 4, max: 64 });
    assert_eq!(c.strategy_for(&Pattern::new("orders.*").unwrap()), Strategy::Block { capacity: 16 });
    assert_eq!(c.strategy_for(&Pattern::new("orders.>").unwrap()), Strategy::default(), "no rule with that pattern");
}

#[test]
fn a_full_blocking_stream_blocks_publishers_until_read() {
    let mut c = core();
    let mut rng = seeded(2);
    let (now, wall) = (Instant::ZERO, WallTime(5));
    c.create_topic(Topic::new("x").unwrap(), TopicConfig::default()).unwrap();
    let id = c.subscribe(now, Pattern::new("x").unwrap(), None, Some(Strategy::Block { capacity: 1 })).unwrap();
    assert!(matches!(c.publish(now, wall, &mut rng, msg("x", 0)).unwrap(), PublishOutcome::Published(_)));
    let blocked = c.publish(now, wall, &mut rng, msg("x", 1)).unwrap();
    assert_eq!(blocked, PublishOutcome::WouldBlock(vec![id]));
    assert_eq!(c.next_offset(&Topic::new("x").unwrap(), 0), Some(1), "a blocked message is not appended");
    assert!(!c.blocked_on_any_free(&[id]));
    assert_eq!(c.poll_stream(now, id).unwrap().map(|m| n(&m)), Some(0));
    assert!(c.blocked_on_any_free(&[id]));
    assert!(c.take_woken().0.contains(&id), "the read wakes blocked publishers");
}

#[test]
fn dead_letters_carry_their_provenance() {
    let mut c = core();
    let mut rng = seeded(3);
    let (now, wall) = (Instant::ZERO, WallTime(5));
    c.create_topic(Topic::new("jobs").unwrap(), TopicConfig::default()).unwrap();
    c.publish(now, wall, &mut rng, msg("jobs", 9)).unwrap();
    let original = c.read(&Topic::new("jobs").unwrap(), 0, 0, 1).unwrap().remove(0);
    c.dead_letter(now, wall, &mut rng, &original, "rejected: bad input", 3).unwrap();
    let dead = c.read(&Topic::new("_dlq.jobs").unwrap(), 0, 0, 1).unwrap().remove(0);
    let h = |name: &str| String::from_utf8(dead.headers().get(name).unwrap().to_vec()).unwrap();
    assert_eq!(h(super::dead_letter_headers::REASON), "rejected: bad input");
    assert_eq!(h(super::dead_letter_headers::SOURCE_TOPIC), "jobs");
    assert_eq!(h(super::dead_letter_headers::SOURCE_PARTITION), "0");
    assert_eq!(h(super::dead_letter_headers::SOURCE_OFFSET), "0");
    assert_eq!(h(super::dead_letter_headers::ATTEMPTS), "3");
    assert_eq!(dead.payload(), original.payload());
    assert_eq!(c.stats().dead_lettered, 1);
}

#[test]
fn dead_letters_land_past_a_full_blocking_stream_and_after_shutdown() {
    let mut c = core();
    let mut rng = seeded(4);
    let (now, wall) = (Instant::ZERO, WallTime(5));
    c.create_topic(Topic::new("jobs").unwrap(), TopicConfig::default()).unwrap();
    c.publish(now, wall, &mut rng, msg("jobs", 1)).unwrap();
    let original = c.read(&Topic::new("jobs").unwrap(), 0, 0, 1).unwrap().remove(0);
    let watcher =
        c.subscribe(now, Pattern::new("_dlq.>").unwrap(), None, Some(Strategy::Block { capacity: 1 })).unwrap();
    c.dead_letter(now, wall, &mut rng, &original, "first", 1).unwrap();
    c.shutdown();
    c.dead_letter(now, wall, &mut rng, &original, "second", 1).unwrap();
    let dlq = c.read(&Topic::new("_dlq.jobs").unwrap(), 0, 0, 10).unwrap();
    assert_eq!(dlq.len(), 2, "both dead letters are in the log");
    assert_eq!(c.stream_drops(watcher).unwrap().newest, 1, "the full blocking stream counts the one it refused");
    assert!(matches!(c.publish(now, wall, &mut rng, msg("jobs", 2)), Err(BrokerError::ShutDown)));
}

fn drain_stream(c: &mut BrokerCore, id: crate::registry::StreamId) -> Vec<u8> {
    std::iter::from_fn(|| c.poll_stream(Instant::ZERO, id).unwrap()).map(|m| n(&m)).collect()
}

#[test]
fn log_backed_streams_start_where_asked_and_never_drop_a_retained_record() {
    use crate::registry::StartPosition;
    let mut c = core();
    let mut rng = seeded(3);
    let now = Instant::ZERO;
    let x = Topic::new("x").unwrap();
    c.create_topic(x.clone(), TopicConfig::default()).unwrap();
    for i in 0..5 {
        c.publish(now, WallTime(100 + u64::from(i)), &mut rng, msg("x", i)).unwrap();
    }
    let pattern = Pattern::new("x").unwrap();
    let earliest = c.subscribe_from(now, pattern.clone(), StartPosition::Earliest).unwrap();
    let latest = c.subscribe_from(now, pattern.clone(), StartPosition::Latest).unwrap();
    let offset = c.subscribe_from(now, pattern.clone(), StartPosition::Offset(3)).unwrap();
    let time = c.subscribe_from(now, pattern.clone(), StartPosition::Time(WallTime(102))).unwrap();
    let live = c.subscribe(now, pattern, None, Some(Strategy::DropOldest { capacity: 2 })).unwrap();
    // Far more than any buffer holds, with nobody reading.
    for i in 5..40 {
        c.publish(now, WallTime(100 + u64::from(i)), &mut rng, msg("x", i)).unwrap();
    }
    assert!(c.take_woken().0.contains(&earliest), "publishes wake log-backed streams");
    assert_eq!(drain_stream(&mut c, earliest), (0..40).collect::<Vec<u8>>());
    assert_eq!(drain_stream(&mut c, latest), (5..40).collect::<Vec<u8>>());
    assert_eq!(drain_stream(&mut c, offset), (3..40).collect::<Vec<u8>>());
    assert_eq!(drain_stream(&mut c, time), (2..40).collect::<Vec<u8>>());
    assert_eq!(drain_stream(&mut c, live), vec![38, 39], "a live drop-oldest stream keeps only the newest");
    assert_eq!(c.stream_drops(earliest).unwrap().total(), 0);
}

#[test]
fn log_backed_streams_take_partitions_in_turn_follow_new_topics_and_count_expired_records() {
    use crate::partition::RetentionPolicy;
    use crate::registry::StartPosition;
    let mut c = core();
    let mut rng = seeded(4);
    let (now, wall) = (Instant::ZERO, WallTime(1));
    let keep_four = RetentionPolicy { max_records: Some(4), ..RetentionPolicy::default() };
    c.create_topic(
        Topic::new("a.one").unwrap(),
        TopicConfig { partitions: 2, retention: keep_four, ..TopicConfig::default() },
    )
    .unwrap();
    let id = c.subscribe_from(now, Pattern::new("a.*").unwrap(), StartPosition::Earliest).unwrap();
    for i in 0..4 {
        let m = Message::builder().topic("a.one").partition(u32::from(i % 2)).payload(Bytes::from(vec![i])).build();
        c.publish(now, wall, &mut rng, m.unwrap()).unwrap();
    }
    assert_eq!(drain_stream(&mut c, id), vec![0, 1, 2, 3], "partitions 0 and 1 alternate");
    c.create_topic(Topic::new("a.two").unwrap(), TopicConfig::default()).unwrap();
    c.publish(now, wall, &mut rng, msg("a.two", 9)).unwrap();
    assert_eq!(drain_stream(&mut c, id), vec![9], "a topic created later is read from its first record");
    // Retention overtakes the stream on partition 0: 10 more records, 4 kept.
    for i in 10..20 {
        let m = Message::builder().topic("a.one").partition(0).payload(Bytes::from(vec![i])).build();
        c.publish(now, wall, &mut rng, m.unwrap()).unwrap();
    }
    assert_eq!(drain_stream(&mut c, id), vec![16, 17, 18, 19]);
    assert_eq!(c.stream_drops(id).unwrap().expired, 6);
}

#[test]
#[should_panic(expected = "time moved backwards")]
fn the_core_refuses_time_moving_backwards() {
    let mut c = core();
    c.handle_timeout(Instant::ZERO + Duration::from_secs(2), WallTime(0));
    c.handle_timeout(Instant::ZERO + Duration::from_secs(1), WallTime(0));
}

fn publish_n(c: &mut BrokerCore, topic: &str, partition: u32, count: u8, payload_bytes: usize) {
    let mut rng = seeded(3);
    for i in 0..count {
        let m = Message::builder().topic(topic).partition(partition).payload(vec![i; payload_bytes]).build().unwrap();
        assert!(matches!(c.publish(Instant::ZERO, WallTime(1), &mut rng, m).unwrap(), PublishOutcome::Published(_)));
    }
}

#[test]
fn ranged_reads_report_watermarks_honour_limits_and_refuse_out_of_range() {
    use crate::partition::{ReadError, RetentionPolicy};
    let mut c = core();
    let t = Topic::new("r").unwrap();
    let retention = RetentionPolicy { max_records: Some(4), ..RetentionPolicy::default() };
    c.create_topic(t.clone(), TopicConfig { partitions: 2, retention, ..TopicConfig::default() }).unwrap();
    assert_eq!(c.watermarks(&t, 0).unwrap(), (0, 0));
    assert!(matches!(c.watermarks(&t, 2), Err(BrokerError::NoSuchPartition { requested: 2, .. })));
    assert!(matches!(c.watermarks(&Topic::new("nope").unwrap(), 0), Err(BrokerError::UnknownTopic(_))));
    publish_n(&mut c, "r", 0, 6, 100);
    assert_eq!(c.watermarks(&t, 0).unwrap(), (2, 6), "retention removed two");
    let size = c.read(&t, 0, 2, 1).unwrap()[0].encoded_len();
    let r = c.read_range(&t, 0, 2, 10, 2 * size).unwrap();
    assert_eq!((r.low_watermark, r.high_watermark), (2, 6));
    assert_eq!(r.messages.iter().map(|m| m.offset().unwrap()).collect::<Vec<_>>(), [2, 3], "two fit the bytes");
    assert_eq!(c.read_range(&t, 0, 3, 10, 1).unwrap().messages.len(), 1, "the first always comes");
    assert_eq!(c.read_range(&t, 0, 4, 1, usize::MAX).unwrap().messages.len(), 1, "the record limit");
    assert!(c.read_range(&t, 0, 6, 10, usize::MAX).unwrap().messages.is_empty(), "at the head: nothing yet");
    assert!(matches!(
        c.read_range(&t, 0, 1, 10, usize::MAX),
        Err(BrokerError::Read(ReadError::OffsetBelowRetained { requested: 1, earliest: 2, latest: Some(5) }))
    ));
    assert!(matches!(
        c.read_range(&t, 0, 7, 10, usize::MAX),
        Err(BrokerError::Read(ReadError::OffsetBeyondEnd { requested: 7, next: 6 }))
    ));
    assert_eq!(c.topics().map(|(t, cfg)| (t.as_str(), cfg.partitions)).collect::<Vec<_>>(), [("r", 2)]);
}

#[test]
fn group_polls_honour_a_byte_limit_but_always_progress() {
    let mut c = core();
    let t = Topic::new("g").unwrap();
    c.create_topic(t.clone(), TopicConfig { partitions: 2, ..TopicConfig::default() }).unwrap();
    publish_n(&mut c, "g", 0, 3, 1000);
    publish_n(&mut c, "g", 1, 3, 1000);
    let (member, _) = c.join_group("workers", &t).unwrap();
    assert!(c.has_group("workers") && !c.has_group("other"));
    assert_eq!(c.group_topic("workers"), Some(&t));
    let (group, generation, assigned) = c.group_assignment(member).unwrap();
    assert_eq!((group, generation, assigned), ("workers", 1, vec![0, 1]));
    let (_, first) = c.poll_group_limited(member, 100, 1).unwrap();
    assert_eq!(first.len(), 1, "one message even if it alone is over the limit");
    let (_, next) = c.poll_group_limited(member, 100, 2500).unwrap();
    let got: Vec<(u32, u64)> = next.iter().map(|m| (m.partition().unwrap(), m.offset().unwrap())).collect();
    assert_eq!(got, [(0, 1), (0, 2)], "what fits, from where the last poll stopped");
    let (_, rest) = c.poll_group_limited(member, 100, usize::MAX).unwrap();
    assert_eq!(rest.len(), 3, "partition 1 in full");
    assert!(c.poll_group_limited(member, 100, usize::MAX).unwrap().1.is_empty());
    c.leave_group(member);
    assert!(matches!(c.group_assignment(member), Err(BrokerError::Group(_))));
}

#[test]
fn retention_can_be_replaced_on_a_live_topic_and_applies_at_once() {
    use crate::partition::RetentionPolicy;
    let mut c = core();
    let topic = Topic::new("r").unwrap();
    c.create_topic(topic.clone(), TopicConfig { retention: RetentionPolicy::default(), ..TopicConfig::default() })
        .unwrap();
    publish_n(&mut c, "r", 0, 10, 8);
    let keep_three = RetentionPolicy { max_records: Some(3), ..RetentionPolicy::default() };
    assert_eq!(c.set_retention(&topic, keep_three, WallTime(1)).unwrap(), 7, "lowered: the oldest 7 go now");
    assert_eq!(c.topic_config(&topic).unwrap().retention, keep_three);
    assert_eq!(c.watermarks(&topic, 0).unwrap(), (7, 10));
    assert_eq!(c.set_retention(&topic, RetentionPolicy::default(), WallTime(1)).unwrap(), 0, "raised: nothing removed");
    publish_n(&mut c, "r", 0, 5, 8);
    assert_eq!(c.watermarks(&topic, 0).unwrap(), (7, 15), "and nothing trimmed on later appends");
    assert!(c.set_retention(&Topic::new("nope").unwrap(), keep_three, WallTime(1)).is_err());
}

#[test]
fn group_lags_count_from_the_commit_or_the_earliest_offset() {
    let mut c = core();
    let t = Topic::new("lag").unwrap();
    c.create_topic(t.clone(), TopicConfig { partitions: 2, ..TopicConfig::default() }).unwrap();
    publish_n(&mut c, "lag", 0, 5, 10);
    publish_n(&mut c, "lag", 1, 2, 10);
    assert!(c.group_lags().is_empty(), "no group, no lag");
    let (member, _) = c.join_group("workers", &t).unwrap();
    let (_, generation, _) = c.group_assignment(member).unwrap();
    c.commit(member, generation, 0, 3).unwrap();
    let lags: Vec<(&str, u32, Option<u64>, u64, u64)> = c
        .group_lags()
        .iter()
        .map(|l| (if l.topic == t { "lag" } else { "?" }, l.partition, l.committed, l.end, l.lag))
        .collect();
    assert_eq!(lags, [("lag", 0, Some(3), 5, 2), ("lag", 1, None, 2, 2)]);
    assert!(c.group_lags().iter().all(|l| &*l.group == "workers"));
}

/// A core with replication on and `r`, a replicated topic of 2 partitions.
fn replicated_core() -> (BrokerCore, Topic) {
    use crate::storage::{ReplicationConfig, StorageKind};
    let mut c = core();
    c.enable_replication();
    let t = Topic::new("r").unwrap();
    let storage = StorageKind::Replicated(ReplicationConfig::new(3).unwrap());
    c.create_topic(t.clone(), TopicConfig { partitions: 2, storage, ..TopicConfig::default() }).unwrap();
    (c, t)
}

/// A group commit on a replicated topic: refused by the plain commit,
/// proposed after the commit checks, applied only when committed, and a
/// committed commit only ever raises the group's offset and position (also
/// for a group this node first hears of through the log).
#[test]
fn replicated_group_commits_apply_when_committed_and_only_raise() {
    use crate::replication::ProposalOp;
    let (mut c, t) = replicated_core();
    let now = Instant::ZERO;
    for offset in 0..4 {
        c.handle_replicated_append(now, &t, 0, offset, msg("r", offset as u8));
    }
    let (member, generation) = c.join_group("workers", &t).unwrap();
    let (_, read) = c.poll_group(member, 2).unwrap();
    assert_eq!(read.len(), 2);
    assert!(matches!(c.commit(member, generation, 0, 2), Err(BrokerError::ReplicatedNeedsCommit(_))));
    assert!(matches!(c.propose_commit(now, member, generation + 1, 0, 2), Err(BrokerError::Group(_))), "stale");

    let id = c.propose_commit(now, member, generation, 0, 2).unwrap();
    let proposal = c.poll_replication_output().expect("queued for the replicator");
    assert_eq!((proposal.id, &proposal.topic, proposal.partition), (id, &t, 0));
    assert_eq!(proposal.op, ProposalOp::Commit { group: "workers".into(), next: 2 });
    assert_eq!(c.group_committed("workers", 0), None, "nothing changes before the commit applies");
    c.handle_replicated_commit(now, &t, 0, "workers", 2);
    c.handle_proposal_done(id, Ok(2));
    assert_eq!(c.take_proposal_outcome(id).unwrap().unwrap().offset, 2);
    assert_eq!(c.group_committed("workers", 0), Some(2));

    // Another node's commit went further: this member skips what it covers.
    c.handle_replicated_commit(now, &t, 0, "workers", 3);
    let (_, next) = c.poll_group(member, 10).unwrap();
    assert_eq!(next.iter().map(|m| m.offset().unwrap()).collect::<Vec<_>>(), [3]);
    // An older commit applied later lowers nothing.
    c.handle_replicated_commit(now, &t, 0, "workers", 1);
    assert_eq!(c.group_committed("workers", 0), Some(3));
    assert_eq!(c.group_committed("workers", 1), None, "the other partition is untouched");
    // A group known only from the log starts where it committed.
    c.handle_replicated_commit(now, &t, 0, "audit", 3);
    let (auditor, _) = c.join_group("audit", &t).unwrap();
    let (_, got) = c.poll_group(auditor, 10).unwrap();
    assert_eq!(got.iter().map(|m| m.offset().unwrap()).collect::<Vec<_>>(), [3]);
}

/// A live stream that falls behind on a stored topic spills onto the log
/// instead of dropping: every record arrives once, in offset order per
/// partition, while a memory topic's messages through the same stream keep
/// the stream's strategy; a full `block` stream refuses nothing a commit
/// already decided.
#[test]
fn live_streams_behind_on_stored_topics_read_the_log_instead_of_dropping() {
    use crate::backpressure::Strategy;
    use crate::storage::{ReplicationConfig, StorageKind};
    let mut c = core();
    c.enable_replication();
    let mut rng = seeded(4);
    let (now, wall) = (Instant::ZERO, WallTime(1_000));
    let stored = Topic::new("s.r").unwrap();
    let storage = StorageKind::Replicated(ReplicationConfig::new(3).unwrap());
    c.create_topic(stored.clone(), TopicConfig { partitions: 2, storage, ..TopicConfig::default() }).unwrap();
    c.create_topic(Topic::new("s.m").unwrap(), TopicConfig::default()).unwrap();
    let oldest =
        c.subscribe(now, Pattern::new("s.*").unwrap(), None, Some(Strategy::DropOldest { capacity: 2 })).unwrap();
    let block = c.subscribe(now, Pattern::new("s.r").unwrap(), None, Some(Strategy::Block { capacity: 1 })).unwrap();
    let mut next = [0u64; 2];
    for i in 0..12u8 {
        let p = u32::from(i % 3 == 0);
        c.handle_replicated_append(now, &stored, p, next[p as usize], msg("s.r", i));
        next[p as usize] += 1;
        if i % 4 == 0 {
            c.publish(now, wall, &mut rng, msg("s.m", 100 + i)).unwrap();
        }
    }
    let drain = |c: &mut BrokerCore, id| std::iter::from_fn(|| c.poll_stream(now, id).unwrap()).collect::<Vec<_>>();
    let got = drain(&mut c, oldest);
    let stored_got = |got: &[Message], p: u32| {
        got.iter().filter(|m| m.topic() == &stored && m.partition() == Some(p)).map(n).collect::<Vec<_>>()
    };
    let want = |p: u32| (0..12u8).filter(|i| u32::from(i % 3 == 0) == p).collect::<Vec<_>>();
    for p in 0..2 {
        assert_eq!(stored_got(&got, p), want(p), "partition {p}: every record, in order");
    }
    let memory: Vec<u8> = got.iter().filter(|m| m.topic().as_str() == "s.m").map(n).collect();
    assert_eq!(memory, [104, 108], "the memory topic keeps drop-oldest (capacity 2)");
    assert_eq!(c.stream_drops(oldest).unwrap().oldest, 1, "only the memory topic's oldest");
    let got = drain(&mut c, block);
    for p in 0..2 {
        assert_eq!(stored_got(&got, p), want(p));
    }
    assert_eq!(c.stream_drops(block).unwrap().total(), 0, "block: nothing refused");
    // Caught up, the spilled stream goes on reading new records from the log.
    c.handle_replicated_append(now, &stored, 0, next[0], msg("s.r", 50));
    assert_eq!(drain(&mut c, oldest).iter().map(n).collect::<Vec<_>>(), [50]);
}

/// On a durable topic a spilled stream reads on from the log, which shows
/// synced records only: what it had buffered comes back once synced, in
/// order, with nothing dropped.
#[test]
fn spilled_streams_on_durable_topics_read_synced_records() {
    use crate::backpressure::Strategy;
    use crate::storage::{DurableConfig, StorageKind, StorageOutput};
    let mut c = BrokerCore::with_storage(BrokerConfig { auto_create: None, ..BrokerConfig::default() });
    let mut rng = seeded(5);
    let (now, wall) = (Instant::ZERO, WallTime(1_000));
    let t = Topic::new("d").unwrap();
    let storage = StorageKind::Durable(DurableConfig::default());
    c.create_topic(t.clone(), TopicConfig { partitions: 1, storage, ..TopicConfig::default() }).unwrap();
    let s = c.subscribe(now, Pattern::new("d").unwrap(), None, Some(Strategy::DropOldest { capacity: 2 })).unwrap();
    for i in 0..6 {
        c.publish(now, wall, &mut rng, msg("d", i)).unwrap();
    }
    assert_eq!(c.poll_stream(now, s).unwrap(), None, "spilled: nothing synced to read yet");
    let id = std::iter::from_fn(|| c.poll_storage_output())
        .find_map(|o| match o {
            StorageOutput::Append { id, .. } => Some(id),
            _ => None,
        })
        .expect("appends to write");
    c.handle_persisted(id, 0, 4);
    let got: Vec<u8> = std::iter::from_fn(|| c.poll_stream(now, s).unwrap()).map(|m| n(&m)).collect();
    assert_eq!(got, [0, 1, 2, 3], "up to the synced end, in order");
    c.handle_persisted(id, 0, 6);
    let got: Vec<u8> = std::iter::from_fn(|| c.poll_stream(now, s).unwrap()).map(|m| n(&m)).collect();
    assert_eq!(got, [4, 5]);
    assert_eq!(c.stream_drops(s).unwrap().total(), 0);
}

// ------------------------------------------------------------ sink subscriptions

/// A sink recording what it is handed: (tag, payload byte). It refuses
/// once `room` messages are held, skips payloads in `skip`.
#[derive(Default)]
struct RecordingSink {
    got: std::sync::Mutex<Vec<(u64, u8)>>,
    ended: std::sync::Mutex<Vec<u64>>,
    room: std::sync::atomic::AtomicUsize,
    skip: Vec<u8>,
}

impl RecordingSink {
    fn with_room(room: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(RecordingSink { room: room.into(), ..RecordingSink::default() })
    }

    fn got(&self) -> Vec<(u64, u8)> {
        self.got.lock().unwrap().clone()
    }
}

impl crate::sink::Sink for RecordingSink {
    fn deliver(&self, tag: u64, _pattern: &Pattern, message: &Message) -> crate::sink::Delivery {
        use std::sync::atomic::Ordering::Relaxed;
        if self.skip.contains(&n(message)) {
            return crate::sink::Delivery::Skipped;
        }
        if self.room.load(Relaxed) == 0 {
            return crate::sink::Delivery::Refused;
        }
        self.room.fetch_sub(1, Relaxed);
        self.got.lock().unwrap().push((tag, n(message)));
        crate::sink::Delivery::Delivered
    }

    fn has_room(&self) -> bool {
        self.room.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    fn ended(&self, tag: u64) {
        self.ended.lock().unwrap().push(tag);
    }
}

fn relay(c: &mut BrokerCore, m: Message) -> Routed {
    c.route_or_return(Instant::ZERO, WallTime(1), &mut seeded(5), m).unwrap().unwrap()
}

#[test]
fn sink_subscriptions_receive_by_pattern_under_their_tags_and_buffer_nothing() {
    let mut c = core();
    let sink = RecordingSink::with_room(100);
    let id = c.open_sink(sink.clone()).unwrap();
    let now = Instant::ZERO;
    c.subscribe_sink(now, id, Pattern::new("a.*").unwrap(), None, 1).unwrap();
    c.subscribe_sink(now, id, Pattern::new("a.>").unwrap(), None, 2).unwrap();
    c.subscribe_sink(now, id, Pattern::new("b").unwrap(), None, 3).unwrap();
    assert!(matches!(
        c.subscribe_sink(now, id, Pattern::new("c").unwrap(), None, 3),
        Err(BrokerError::Registry(RegistryError::DuplicateTag { tag: 3 }))
    ));
    assert_eq!(relay(&mut c, msg("a.x", 0)), Routed::Relayed { buffered_for: 2 });
    assert_eq!(relay(&mut c, msg("a.x.y", 1)), Routed::Relayed { buffered_for: 1 });
    assert_eq!(relay(&mut c, msg("b", 2)), Routed::Relayed { buffered_for: 1 });
    assert_eq!(relay(&mut c, msg("c", 3)), Routed::Relayed { buffered_for: 0 });
    assert_eq!(sink.got(), vec![(1, 0), (2, 0), (2, 1), (3, 2)], "at once, in routing order");
    assert_eq!(c.stats().sink_subscriptions, 3);
    assert_eq!(c.stats().streams, 0, "no stream was opened");
    assert!(c.unsubscribe_sink(id, 2));
    assert!(!c.unsubscribe_sink(id, 2), "once");
    relay(&mut c, msg("a.x.y", 4));
    assert_eq!(c.registry().sink_tag_matching(id, &Topic::new("a.q").unwrap()), Some(1));
    assert_eq!(c.registry().sink_tag_matching(id, &Topic::new("a.q.r").unwrap()), None);
    assert_eq!(c.close_sink(id), 2);
    relay(&mut c, msg("b", 5));
    assert_eq!(sink.got().len(), 4, "nothing after the sink closed");
    assert_eq!(c.registry().index().len(), 0, "closing the sink left nothing in the index");
    assert_eq!(c.registry().sink_subscription_heap_bytes(), 0);
}

#[test]
fn a_sink_subscription_ends_after_its_limit_and_refusals_do_not_count() {
    let mut c = core();
    let sink = std::sync::Arc::new(RecordingSink { room: 2.into(), skip: vec![1], ..RecordingSink::default() });
    let id = c.open_sink(sink.clone()).unwrap();
    c.subscribe_sink(Instant::ZERO, id, Pattern::new("t").unwrap(), None, 9).unwrap();
    assert_eq!(c.limit_sink(id, 9, 3), Some(false));
    relay(&mut c, msg("t", 0)); // delivered (1 of 3)
    relay(&mut c, msg("t", 1)); // skipped: not counted
    relay(&mut c, msg("t", 2)); // delivered (2 of 3)
    assert_eq!(relay(&mut c, msg("t", 3)), Routed::Relayed { buffered_for: 0 }, "refused: the sink is full");
    assert!(c.registry().sink_contains(id, 9), "a refusal is not a delivery");
    sink.room.store(5, std::sync::atomic::Ordering::Relaxed);
    relay(&mut c, msg("t", 4)); // delivered (3 of 3): ends
    relay(&mut c, msg("t", 5));
    assert_eq!(sink.got(), vec![(9, 0), (9, 2), (9, 4)]);
    assert_eq!(*sink.ended.lock().unwrap(), vec![9], "told once, when it ended");
    assert!(!c.registry().sink_contains(id, 9));
    assert_eq!(c.limit_sink(id, 9, 1), None, "gone");
    // A limit already reached ends the subscription at once.
    c.subscribe_sink(Instant::ZERO, id, Pattern::new("t").unwrap(), None, 10).unwrap();
    relay(&mut c, msg("t", 6));
    assert_eq!(c.limit_sink(id, 10, 1), Some(true));
    assert!(!c.registry().sink_contains(id, 10));
}

#[test]
fn queue_groups_mix_sinks_and_streams_and_prefer_members_with_room() {
    let mut c = core();
    let now = Instant::ZERO;
    let full = RecordingSink::with_room(0);
    let roomy = RecordingSink::with_room(100);
    let (a, b) = (c.open_sink(full.clone()).unwrap(), c.open_sink(roomy.clone()).unwrap());
    c.subscribe_sink(now, a, Pattern::new("q.*").unwrap(), Some("g"), 1).unwrap();
    c.subscribe_sink(now, b, Pattern::new("q.*").unwrap(), Some("g"), 1).unwrap();
    let stream = c.subscribe(now, Pattern::new("q.>").unwrap(), Some("g"), None).unwrap();
    for i in 0..30 {
        assert_eq!(relay(&mut c, msg("q.x", i)), Routed::Relayed { buffered_for: 1 }, "one member each");
    }
    let streamed = drain_stream(&mut c, stream);
    let sunk: Vec<u8> = roomy.got().into_iter().map(|(_, m)| m).collect();
    assert!(full.got().is_empty(), "the full member is passed over while others have room");
    let mut all: Vec<u8> = streamed.iter().copied().chain(sunk.iter().copied()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..30).collect::<Vec<_>>(), "each message to exactly one member");
    assert!(!streamed.is_empty() && !sunk.is_empty(), "round-robin reaches both members with room");
}

#[test]
fn sink_subscriptions_count_toward_the_stream_limit() {
    let mut c = BrokerCore::new(BrokerConfig { max_streams: 2, ..BrokerConfig::default() });
    let id = c.open_sink(RecordingSink::with_room(1)).unwrap();
    c.subscribe_sink(Instant::ZERO, id, Pattern::new("a").unwrap(), None, 1).unwrap();
    c.subscribe(Instant::ZERO, Pattern::new("b").unwrap(), None, None).unwrap();
    assert!(matches!(
        c.subscribe_sink(Instant::ZERO, id, Pattern::new("c").unwrap(), None, 2),
        Err(BrokerError::Registry(RegistryError::TooManyStreams { limit: 2 }))
    ));
}

#[test]
fn a_sink_sees_stored_records_with_their_offsets() {
    let mut c = core();
    c.create_topic(Topic::new("s").unwrap(), TopicConfig::default()).unwrap();
    let sink = RecordingSink::with_room(10);
    let id = c.open_sink(sink.clone()).unwrap();
    c.subscribe_sink(Instant::ZERO, id, Pattern::new("s").unwrap(), None, 4).unwrap();
    assert!(matches!(relay(&mut c, msg("s", 7)), Routed::Stored(p) if p.buffered_for == 1));
    assert_eq!(sink.got(), vec![(4, 7)]);
    assert_eq!(c.read(&Topic::new("s").unwrap(), 0, 0, 10).unwrap().len(), 1, "and it is stored");
}

/// Read rounds (`crate::replication`, "Linearizable reads"): readers that
/// come before the replicator takes a round share it; readers after it
/// gather for the next, which starts only when the one in flight ends, so
/// a partition has one round in flight; every reader of a round gets its
/// outcome, a refusal included; readers that gave up are neither settled
/// nor given a round; partitions have rounds of their own.
#[test]
fn read_rounds_are_shared_and_one_is_in_flight_per_partition() {
    use crate::replication::{ProposalId, ProposalOp};
    let (mut c, t) = replicated_core();
    let now = Instant::ZERO;
    let memory = Topic::new("m").unwrap();
    c.create_topic(memory.clone(), TopicConfig::default()).unwrap();
    assert!(matches!(c.propose_read(now, &memory, 0), Err(BrokerError::NoReplication(_))));
    assert!(matches!(c.propose_read(now, &t, 2), Err(BrokerError::NoSuchPartition { .. })));

    // Two readers before the replicator looks: one round.
    let (a, b) = (c.propose_read(now, &t, 0).unwrap(), c.propose_read(now, &t, 0).unwrap());
    let other = c.propose_read(now, &t, 1).unwrap();
    let first = c.poll_replication_output().expect("a round");
    assert_eq!((first.op.clone(), first.partition), (ProposalOp::ReadIndex, 0));
    assert!(![a, b].contains(&first.id), "a round has an id of its own");
    let second = c.poll_replication_output().expect("partition 1's round");
    assert_eq!(second.partition, 1);
    assert!(c.poll_replication_output().is_none(), "a and b share partition 0's round");

    // Taken: newer readers wait for the next round, not yet handed out.
    let (d, gone) = (c.propose_read(now, &t, 0).unwrap(), c.propose_read(now, &t, 0).unwrap());
    assert!(c.poll_replication_output().is_none(), "one round in flight per partition");
    c.forget_proposal(gone);
    assert_eq!(c.take_proposal_outcome(a), None, "pending");

    // The round ends: both its readers get the prefix, the next starts.
    let mut settled = c.handle_proposal_done(first.id, Ok(7));
    settled.sort_unstable();
    assert_eq!(settled, [a, b]);
    assert_eq!(c.take_proposal_outcome(a).unwrap().unwrap().offset, 7);
    assert_eq!(c.take_proposal_outcome(b).unwrap().unwrap().offset, 7);
    let third = c.poll_replication_output().expect("the next round");
    assert_eq!((third.op.clone(), third.partition), (ProposalOp::ReadIndex, 0));
    assert_eq!(c.take_proposal_outcome(d), None, "d rides the third round, not the first");

    // A refusal reaches every reader of its round; nobody is left waiting.
    let refused = BrokerError::ReadUnconfirmed { topic: t.clone(), partition: 0, reason: "no leader".into() };
    assert_eq!(c.handle_proposal_done(third.id, Err(refused)), [d], "the reader that gave up is not settled");
    assert!(matches!(c.take_proposal_outcome(d), Some(Err(BrokerError::ReadUnconfirmed { .. }))));
    assert!(c.poll_replication_output().is_none(), "no one gathered: no round");
    assert_eq!(c.handle_proposal_done(second.id, Ok(0)), [other]);
    assert_eq!(c.handle_proposal_done(second.id, Ok(0)), Vec::<ProposalId>::new(), "a round ends once");

    // After all that, a new reader starts a fresh round at once.
    c.propose_read(now, &t, 0).unwrap();
    assert_eq!(c.poll_replication_output().map(|p| p.op), Some(ProposalOp::ReadIndex));
}

//! The embedded broker's behaviour that every runtime must show — run by
//! `kaelix-runtime-sim`'s and `kaelix-runtime-real`'s tests on their own
//! clocks, spawners and schedulers, so the same API is proven under both.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::message::Message;
use crate::partition::RetentionPolicy;
use crate::storage::{DurableConfig, FlushPolicy, StorageKind};
use crate::{Broker, BrokerConfig, Strategy, SubscribeOptions, TopicConfig, Verdict, dead_letter_headers};
use kaelix_core::runtime::{Priority, Runtime, timeout};
use kaelix_core::time::Duration;

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

fn msg(topic: &str, key: Option<&str>, n: u32) -> Message {
    let mut b = Message::builder().topic(topic).payload(Bytes::from(n.to_le_bytes().to_vec()));
    if let Some(k) = key {
        b = b.key(Bytes::from(k.to_owned()));
    }
    b.build().expect("valid message")
}

fn number(m: &Message) -> u32 {
    u32::from_le_bytes(m.payload()[..4].try_into().expect("four bytes"))
}

/// Runs the conformance checks on `rt`; `Err` names the first that failed.
pub async fn run<R: Runtime>(rt: R) -> Result<(), String> {
    let broker = Broker::new(rt.clone(), rt.rng(), BrokerConfig::default());
    broker
        .create_topic("orders.eu", TopicConfig { partitions: 4, ..TopicConfig::default() })
        .map_err(|e| e.to_string())?;

    // Fan-out, queue groups and keyed partitioning, with concurrent publishers.
    let mut all = broker.subscribe("orders.>", SubscribeOptions::default()).map_err(|e| e.to_string())?;
    let workers: Vec<_> = (0..2)
        .map(|_| {
            broker
                .subscribe(
                    "orders.*",
                    SubscribeOptions { queue_group: Some("w".into()), ..SubscribeOptions::default() },
                )
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let before = rt.wall_clock();
    let publishers: Vec<_> = (0..2u32)
        .map(|p| {
            let broker = broker.clone();
            rt.spawn(Priority::Normal, "conformance-publisher", async move {
                let mut placed = Vec::new();
                for i in 0..50u32 {
                    let key = format!("customer-{}", i % 5);
                    let published =
                        broker.publish(msg("orders.eu", Some(&key), p * 1000 + i)).await.expect("publishes");
                    placed.push((key, published.partition));
                }
                placed
            })
        })
        .collect();
    let mut partition_of_key: BTreeMap<String, u32> = BTreeMap::new();
    for h in publishers {
        for (key, partition) in h.await.map_err(|e| e.to_string())? {
            let first = *partition_of_key.entry(key.clone()).or_insert(partition);
            ensure(first == partition, || format!("key {key} went to partitions {first} and {partition}"))?;
        }
    }
    let after = rt.wall_clock();
    let mut seen = 0;
    while let Some(m) = all.try_next() {
        ensure(m.timestamp() >= before && m.timestamp() <= after, || {
            "timestamp not from the runtime's wall clock".into()
        })?;
        seen += 1;
    }
    ensure(seen == 100, || format!("fan-out delivered {seen} of 100"))?;
    let mut shares = Vec::new();
    for mut w in workers {
        let mut n = 0;
        while w.try_next().is_some() {
            n += 1;
        }
        shares.push(n);
    }
    ensure(shares.iter().sum::<u32>() == 100 && shares.iter().all(|&n| n > 0), || {
        format!("queue group shares {shares:?}: each message to exactly one member, load spread")
    })?;

    // A blocking subscriber paces its publisher instead of dropping.
    let mut slow = broker
        .subscribe(
            "slow.topic",
            SubscribeOptions {
                strategy: Some(Strategy::Block { capacity: 2 }),
                queue_group: None,
                ..SubscribeOptions::default()
            },
        )
        .map_err(|e| e.to_string())?;
    let publisher = {
        let broker = broker.clone();
        rt.spawn(Priority::Normal, "blocked-publisher", async move {
            for i in 0..6 {
                broker.publish(msg("slow.topic", None, i)).await.expect("publishes");
            }
        })
    };
    let mut got = Vec::new();
    while got.len() < 6 {
        match timeout(&rt, Duration::from_secs(5), slow.next()).await {
            Ok(Some(m)) => got.push(number(&m)),
            _ => return Err(format!("blocked publisher stalled after {got:?}")),
        }
        rt.sleep(Duration::from_millis(1)).await;
    }
    publisher.await.map_err(|e| e.to_string())?;
    ensure(got == vec![0, 1, 2, 3, 4, 5], || format!("blocking stream got {got:?}"))?;
    ensure(slow.drops().is_some_and(|d| d.total() == 0), || "a blocking stream dropped".into())?;
    ensure(broker.stats().blocked_publishes > 0, || "the publisher never had to wait".into())?;

    // Consumer group: every message once, commits at the end.
    let mut member = broker.join_group("billing", "orders.eu").map_err(|e| e.to_string())?;
    let mut consumed = 0;
    while consumed < 100 {
        let batch = timeout(&rt, Duration::from_secs(5), member.poll(32))
            .await
            .map_err(|_| format!("consumer group stalled at {consumed}"))?
            .map_err(|e| e.to_string())?;
        for m in &batch.messages {
            member.commit(batch.generation, m).map_err(|e| e.to_string())?;
        }
        consumed += batch.messages.len();
    }
    ensure(consumed == 100, || format!("consumer group read {consumed} of 100"))?;

    // Dead letters from a stream processor.
    let mut input = broker.subscribe("jobs", SubscribeOptions::default()).map_err(|e| e.to_string())?;
    for i in 0..4 {
        broker.publish(msg("jobs", None, i)).await.map_err(|e| e.to_string())?;
    }
    let processing = {
        let broker = broker.clone();
        rt.spawn(Priority::Normal, "processor", async move {
            let mut decide = |m: &Message| match number(m) {
                1 => Verdict::Reject("malformed job".into()),
                2 => Verdict::Retry("worker busy".into()),
                _ => Verdict::Accept,
            };
            broker.process(&mut input, &mut decide, 3).await
        })
    };
    rt.sleep(Duration::from_millis(10)).await;
    broker.shutdown();
    let report = processing.await.map_err(|e| e.to_string())?;
    ensure(report.accepted == 2 && report.dead_lettered == 2, || format!("processor report {report:?}"))?;
    let dead = broker.read("_dlq.jobs", 0, 0, 10).map_err(|e| e.to_string())?;
    let attempts: Vec<String> = dead
        .iter()
        .map(|m| {
            String::from_utf8_lossy(m.headers().get(dead_letter_headers::ATTEMPTS).expect("attempts")).into_owned()
        })
        .collect();
    ensure(attempts == ["1", "3"], || format!("dead-letter attempts {attempts:?}"))?;

    // After shutdown: streams end, publishes are refused.
    ensure(all.next().await.is_none(), || "a stream kept going after shutdown".into())?;
    ensure(broker.publish(msg("orders.eu", None, 0)).await.is_err(), || "publish accepted after shutdown".into())?;
    age_retention(rt.clone()).await?;
    durable(rt).await
}

/// Retention by age runs by itself on a started broker: records older
/// than `max_age` disappear without anyone calling housekeeping.
pub async fn age_retention<R: Runtime>(rt: R) -> Result<(), String> {
    let config = BrokerConfig { housekeeping_interval: Duration::from_millis(10), ..BrokerConfig::default() };
    let broker = Broker::start(rt.clone(), config);
    let short = TopicConfig {
        retention: RetentionPolicy { max_age: Some(Duration::from_millis(50)), ..RetentionPolicy::default() },
        ..TopicConfig::default()
    };
    broker.create_topic("ephemeral", short).map_err(|e| e.to_string())?;
    for n in 0..3 {
        broker.publish(msg("ephemeral", None, n)).await.map_err(|e| e.to_string())?;
    }
    ensure(broker.read("ephemeral", 0, 0, 10).map_err(|e| e.to_string())?.len() == 3, || {
        "fresh records are readable".into()
    })?;
    rt.sleep(Duration::from_millis(200)).await;
    let gone = broker.read("ephemeral", 0, 0, 10);
    ensure(gone.is_err(), || format!("records past max_age are still there: {gone:?}"))?;
    ensure(broker.next_offset("ephemeral", 0) == Some(3), || "offsets are kept after expiry".into())?;
    broker.shutdown();
    Ok(())
}

/// Durable topics on `rt`'s storage: a publish is readable once
/// acknowledged; after a shutdown and a reopen every record is back at its
/// offset, group commits are restored, publishing continues at the next
/// offset, retention deletes whole segments, and memory topics are gone.
pub async fn durable<R: Runtime>(rt: R) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let every_batch = TopicConfig {
        partitions: 2,
        retention: RetentionPolicy::default(),
        storage: StorageKind::Durable(DurableConfig { flush: FlushPolicy::EveryBatch, segment_bytes: 400 }),
    };
    let interval = TopicConfig {
        partitions: 1,
        retention: RetentionPolicy { max_records: Some(10), ..RetentionPolicy::default() },
        storage: StorageKind::Durable(DurableConfig {
            flush: FlushPolicy::Interval { max_delay: Duration::from_millis(5), max_bytes: 1 << 20 },
            segment_bytes: 300,
        }),
    };
    let config = BrokerConfig { auto_create: None, ..BrokerConfig::default() };
    let broker = Broker::open_durable(rt.clone(), config.clone()).await.map_err(|x| e(&x))?;
    ensure(
        matches!(
            Broker::new(rt.clone(), rt.rng(), BrokerConfig::default()).create_topic("audit.log", every_batch.clone()),
            Err(crate::BrokerError::NoDurableStorage(_))
        ),
        || "a broker without storage accepted a durable topic".into(),
    )?;
    broker.create_topic("audit.log", every_batch).map_err(|x| e(&x))?;
    broker.create_topic("audit.recent", interval).map_err(|x| e(&x))?;
    broker.create_topic("scratch", TopicConfig::default()).map_err(|x| e(&x))?;
    let mut placed = Vec::new();
    for n in 0..40u32 {
        let key = format!("k{}", n % 5);
        let p = broker.publish(msg("audit.log", Some(&key), n)).await.map_err(|x| e(&x))?;
        let back = broker.read("audit.log", p.partition, p.offset, 1).map_err(|x| e(&x))?;
        ensure(back.len() == 1 && number(&back[0]) == n, || format!("acknowledged record {n} is not readable"))?;
        placed.push((p.partition, p.offset, n));
        broker.publish(msg("audit.recent", None, n)).await.map_err(|x| e(&x))?;
        broker.publish(msg("scratch", None, n)).await.map_err(|x| e(&x))?;
    }
    let mut member = broker.join_group("auditors", "audit.log").map_err(|x| e(&x))?;
    let batch = member.poll(15).await.map_err(|x| e(&x))?;
    let last = batch.messages.last().ok_or("the group read nothing")?;
    member.commit(batch.generation, last).map_err(|x| e(&x))?;
    let committed = (last.partition().expect("partition"), last.offset().expect("offset") + 1);
    drop(member);
    let segments_before = rt.list().await.map_err(|x| e(&x))?.iter().filter(|n| n.starts_with("seg-")).count();
    broker.shutdown();
    // Let the writer sync what is queued and stop.
    rt.sleep(Duration::from_millis(50)).await;

    let broker = Broker::open_durable(rt.clone(), config).await.map_err(|x| e(&x))?;
    for &(partition, offset, n) in &placed {
        let back = broker.read("audit.log", partition, offset, 1).map_err(|x| e(&x))?;
        ensure(back.len() == 1 && number(&back[0]) == n, || {
            format!("after reopening, audit.log/{partition}@{offset} is {back:?}, want record {n}")
        })?;
    }
    ensure(broker.committed("auditors", committed.0) == Some(committed.1), || {
        format!("group commit {committed:?} not restored: {:?}", broker.committed("auditors", committed.0))
    })?;
    let recent = broker.read("audit.recent", 0, 30, 100).map_err(|x| e(&x))?;
    ensure(recent.iter().map(number).eq(30..40), || format!("audit.recent kept {recent:?}"))?;
    ensure(broker.read("audit.recent", 0, 0, 1).is_err(), || "retention did not survive the reopen".into())?;
    let segments_after = rt.list().await.map_err(|x| e(&x))?.iter().filter(|n| n.starts_with("seg-")).count();
    ensure(segments_after >= 2 && segments_after <= segments_before, || {
        format!("segments: {segments_before} before, {segments_after} after (rolled and trimmed?)")
    })?;
    ensure(broker.read("scratch", 0, 0, 1).is_err(), || "a memory topic survived a reopen".into())?;
    // A log-backed subscription replays the recovered log from an offset.
    let from_five = SubscribeOptions { start: Some(crate::StartPosition::Offset(5)), ..SubscribeOptions::default() };
    let mut replay = broker.subscribe("audit.log", from_five).map_err(|x| e(&x))?;
    let mut want: Vec<(u32, u64, u32)> = placed.iter().copied().filter(|&(_, offset, _)| offset >= 5).collect();
    want.sort();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let m = timeout(&rt, Duration::from_secs(1), replay.next())
            .await
            .map_err(|_| format!("the replay from offset 5 stalled after {} records", got.len()))?
            .ok_or("the replay ended early")?;
        got.push((m.partition().expect("partition"), m.offset().expect("offset"), number(&m)));
    }
    got.sort();
    ensure(got == want, || format!("replay from offset 5: {got:?}, want {want:?}"))?;
    drop(replay);
    let next = broker.next_offset("audit.log", 0).ok_or("audit.log/0 is gone")?;
    let p = broker
        .publish(Message::builder().topic("audit.log").partition(0).payload("after").build().map_err(|x| e(&x))?)
        .await
        .map_err(|x| e(&x))?;
    ensure(p.offset == next, || format!("publishing resumed at {} instead of {next}", p.offset))?;
    broker.shutdown();
    rt.sleep(Duration::from_millis(50)).await;
    Ok(())
}

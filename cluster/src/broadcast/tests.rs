//! Unit tests of the sans-IO core: one per rule of the protocol.

use super::*;
use kaelix_core::rng::seeded;

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);

fn t(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

fn core(me: NodeId, planted: Planted) -> BroadcastCore {
    let mut cfg = BroadcastConfig::new(vec![A, B, C]);
    cfg.planted = planted;
    BroadcastCore::new(me, cfg, seeded(1), t(0), Vec::new())
}

fn value(id: u64) -> Value {
    Value { id, payload: Bytes::from(format!("v{id}")) }
}

fn drain(c: &mut BroadcastCore) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn persist_id(outs: &[Output]) -> WriteId {
    outs.iter().find_map(|o| if let Output::Persist { id, .. } = o { Some(*id) } else { None }).expect("a persist")
}

fn sends(outs: &[Output]) -> Vec<(NodeId, PeerMessage)> {
    outs.iter()
        .filter_map(|o| {
            if let Output::Send { to, message } = o {
                Some((*to, PeerMessage::decode(message.clone()).unwrap()))
            } else {
                None
            }
        })
        .collect()
}

fn acks(outs: &[Output]) -> Vec<u64> {
    outs.iter().filter_map(|o| if let Output::Ack { id, .. } = o { Some(*id) } else { None }).collect()
}

#[test]
fn submit_persists_and_replicates_to_every_peer() {
    let mut a = core(A, Planted::NONE);
    a.handle_client_submit(t(1), ClientRef(0), value(7));
    let outs = drain(&mut a);
    persist_id(&outs);
    let to: Vec<NodeId> = sends(&outs).into_iter().map(|(n, _)| n).collect();
    assert_eq!(to, vec![B, C]);
    assert!(acks(&outs).is_empty(), "nothing durable yet");
}

#[test]
fn ack_needs_local_sync_and_one_peer_store() {
    let mut a = core(A, Planted::NONE);
    a.handle_client_submit(t(1), ClientRef(0), value(7));
    let w = persist_id(&drain(&mut a));
    a.handle_message(t(2), B, PeerMessage::Stored(7).encode());
    assert!(acks(&drain(&mut a)).is_empty(), "local copy not durable yet");
    a.handle_write_complete(t(3), w, true);
    assert_eq!(acks(&drain(&mut a)), vec![7]);
}

#[test]
fn stored_is_sent_only_after_sync() {
    let mut b = core(B, Planted::NONE);
    b.handle_message(t(1), A, PeerMessage::Replicate(value(7)).encode());
    let outs = drain(&mut b);
    assert!(sends(&outs).is_empty(), "no Stored before sync");
    b.handle_write_complete(t(2), persist_id(&outs), true);
    assert_eq!(sends(&drain(&mut b)), vec![(A, PeerMessage::Stored(7))]);
}

#[test]
fn planted_bug_acks_before_sync() {
    let mut a = core(A, Planted::only(PlantedBug::BroadcastAckBeforeSync));
    a.handle_client_submit(t(1), ClientRef(0), value(7));
    drain(&mut a);
    a.handle_message(t(2), B, PeerMessage::Stored(7).encode());
    assert_eq!(acks(&drain(&mut a)), vec![7], "the bug acks with no sync");
}

#[test]
fn failed_write_is_retried_and_never_counted() {
    let mut a = core(A, Planted::NONE);
    a.handle_client_submit(t(1), ClientRef(0), value(7));
    let w = persist_id(&drain(&mut a));
    a.handle_message(t(2), B, PeerMessage::Stored(7).encode());
    a.handle_write_complete(t(3), w, false);
    let outs = drain(&mut a);
    assert!(acks(&outs).is_empty());
    let retry = persist_id(&outs);
    a.handle_write_complete(t(4), retry, true);
    assert_eq!(acks(&drain(&mut a)), vec![7]);
}

#[test]
fn unanswered_replicates_are_retransmitted_to_missing_peers_only() {
    let mut a = core(A, Planted::NONE);
    a.handle_client_submit(t(0), ClientRef(0), value(7));
    drain(&mut a);
    a.handle_message(t(1), B, PeerMessage::Stored(7).encode());
    drain(&mut a);
    a.handle_timeout(t(10)); // early: no retransmit
    assert!(sends(&drain(&mut a)).iter().all(|(_, m)| !matches!(m, PeerMessage::Replicate(_))));
    a.handle_timeout(t(51));
    let re: Vec<NodeId> = sends(&drain(&mut a))
        .into_iter()
        .filter(|(_, m)| matches!(m, PeerMessage::Replicate(_)))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(re, vec![C]);
}

#[test]
fn anti_entropy_exchanges_missing_values() {
    let mut a = core(A, Planted::NONE);
    let mut b = core(B, Planted::NONE);
    a.handle_message(t(0), C, PeerMessage::Replicate(value(1)).encode());
    let w = persist_id(&drain(&mut a));
    a.handle_write_complete(t(0), w, true);
    drain(&mut a);
    b.handle_message(t(0), C, PeerMessage::Replicate(value(2)).encode());
    let w = persist_id(&drain(&mut b));
    b.handle_write_complete(t(0), w, true);
    drain(&mut b);

    // Values still settling are not in the digest: the digests agree.
    assert_eq!(a.digest(), PeerMessage::Digest(SetDigest::default()));
    b.handle_message(t(1), A, a.digest().encode());
    assert!(sends(&drain(&mut b)).is_empty(), "unsettled values must not trigger an exchange");

    // Once settled, A's digest reaches B; B answers with its bucket digests;
    // A answers Have for the buckets that differ; B sends what A lacks and
    // asks for what it lacks; A answers the Want.
    a.handle_timeout(t(250));
    drain(&mut a);
    let digest = a.digest();
    assert!(matches!(digest, PeerMessage::Digest(SetDigest { count: 1, .. })));
    b.handle_message(t(251), A, digest.encode());
    let buckets = sends(&drain(&mut b));
    assert!(matches!(&buckets[..], [(to, PeerMessage::Buckets(_))] if *to == A));
    a.handle_message(t(252), B, buckets[0].1.encode());
    let have = sends(&drain(&mut a));
    let expected_mask = (1u16 << bucket_of(1)) | (1u16 << bucket_of(2));
    assert!(
        matches!(&have[..], [(to, PeerMessage::Have { buckets, ids })]
            if *to == B && *buckets == expected_mask && ids == &vec![1]),
        "A lists its ids of the differing buckets only: {have:?}"
    );
    b.handle_message(t(253), A, have[0].1.encode());
    let from_b = sends(&drain(&mut b));
    assert!(from_b.contains(&(A, PeerMessage::Replicate(value(2)))));
    assert!(from_b.contains(&(A, PeerMessage::Want(vec![1]))));
    a.handle_message(t(254), B, PeerMessage::Want(vec![1]).encode());
    assert!(sends(&drain(&mut a)).contains(&(B, PeerMessage::Replicate(value(1)))));
}

#[test]
fn matching_buckets_are_left_out_of_the_exchange() {
    let mut a = core(A, Planted::NONE);
    let mut b = core(B, Planted::NONE);
    // Both hold the same 40 settled values; B also holds one more.
    for id in 0..40 {
        for n in [&mut a, &mut b] {
            n.handle_message(t(0), C, PeerMessage::Replicate(value(id)).encode());
            let w = persist_id(&drain(n));
            n.handle_write_complete(t(0), w, true);
            drain(n);
        }
    }
    b.handle_message(t(0), C, PeerMessage::Replicate(value(1000)).encode());
    let w = persist_id(&drain(&mut b));
    b.handle_write_complete(t(0), w, true);
    drain(&mut b);
    a.handle_timeout(t(300));
    b.handle_timeout(t(300));
    drain(&mut a);
    drain(&mut b);

    b.handle_message(t(301), A, a.digest().encode());
    let answer = sends(&drain(&mut b));
    let [(_, buckets @ PeerMessage::Buckets(_))] = &answer[..] else { panic!("B answers its buckets: {answer:?}") };
    a.handle_message(t(302), B, buckets.encode());
    let have = sends(&drain(&mut a));
    let [(_, PeerMessage::Have { buckets, ids })] = &have[..] else { panic!("one Have: {have:?}") };
    assert_eq!(*buckets, 1 << bucket_of(1000), "only the bucket of the extra value differs");
    let expected: Vec<u64> = (0..40).filter(|&id| bucket_of(id) == bucket_of(1000)).collect();
    assert_eq!(ids, &expected);
    b.handle_message(t(303), A, have[0].1.encode());
    assert_eq!(sends(&drain(&mut b)), vec![(A, PeerMessage::Replicate(value(1000)))]);
}

#[test]
fn malformed_and_foreign_messages_are_counted_not_fatal() {
    let mut a = core(A, Planted::NONE);
    a.handle_message(t(0), B, Bytes::from_static(&[99, 1, 2]));
    a.handle_message(t(0), NodeId(77), PeerMessage::Stored(1).encode());
    assert_eq!(a.stats().malformed, 2);
    a.handle_client_submit(t(1), ClientRef(0), value(1));
    assert!(!drain(&mut a).is_empty(), "still serving");
}

#[test]
fn recovered_values_are_durable_and_duplicates_ignored() {
    let cfg = BroadcastConfig { ack_replicas: 1, ..BroadcastConfig::new(vec![A, B]) };
    let mut a = BroadcastCore::new(A, cfg, seeded(1), t(0), vec![value(1), value(1), value(2)]);
    assert_eq!(a.len(), 2);
    a.handle_client_submit(t(1), ClientRef(3), value(1));
    assert_eq!(acks(&drain(&mut a)), vec![1], "already durable: ack at once");
}

#[test]
#[should_panic(expected = "time went backwards")]
fn time_must_not_go_backwards() {
    let mut a = core(A, Planted::NONE);
    a.handle_timeout(t(5));
    a.handle_timeout(t(4));
}

#[test]
fn poll_timeout_reports_earliest_deadline() {
    let mut a = core(A, Planted::NONE);
    assert_eq!(a.poll_timeout(), Some(t(100)));
    a.handle_client_submit(t(10), ClientRef(0), value(1));
    assert_eq!(a.poll_timeout(), Some(t(60)));
}

#[test]
fn have_exchange_finds_both_differences_even_from_an_unsorted_list() {
    let mut a = core(A, Planted::NONE);
    for id in [1, 3, 5, 7] {
        a.handle_message(t(0), C, PeerMessage::Replicate(value(id)).encode());
        let w = persist_id(&drain(&mut a));
        a.handle_write_complete(t(0), w, true);
        drain(&mut a);
    }
    // B claims 7, 2, 3, 9, 2 (unsorted, with a duplicate) over every bucket.
    a.handle_message(t(1), B, PeerMessage::Have { buckets: u16::MAX, ids: vec![7, 2, 3, 9, 2] }.encode());
    let out = sends(&drain(&mut a));
    let replicated: Vec<u64> =
        out.iter().filter_map(|(_, m)| if let PeerMessage::Replicate(v) = m { Some(v.id) } else { None }).collect();
    assert_eq!(replicated, vec![1, 5]);
    assert!(out.contains(&(B, PeerMessage::Want(vec![2, 9]))));
}

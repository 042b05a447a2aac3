//! Unit tests of the SWIM core: one per rule, then a few whole-cluster runs
//! on an in-memory network (instant-ish delivery, crashes, cut links) that
//! check the rules add up. The simulator scenarios are separate work.

use super::text::parse_packet;
use super::*;
use kaelix_core::rng::seeded;

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);
const N4: NodeId = NodeId(4);
const N5: NodeId = NodeId(5);

fn t(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

fn node_with(me: NodeId, config: SwimConfig, incarnation: u64) -> Swim {
    Swim::new(me, config, seeded(me.0), t(0), incarnation, Bytes::new())
}

/// The defaults without the gossip timer and without the phi gate: each
/// rule test sees only the outputs of the rule it is about (gossip rounds
/// and the gate have their own tests).
fn quiet() -> SwimConfig {
    gated().without_phi_gate()
}

/// The defaults without the gossip timer, phi gate on (as by default).
fn gated() -> SwimConfig {
    SwimConfig { gossip_interval: Duration::ZERO, ..SwimConfig::default() }
}

fn node(me: NodeId) -> Swim {
    node_with(me, quiet(), 1)
}

fn pkt(text: &str) -> Bytes {
    parse_packet(text).unwrap_or_else(|e| panic!("{e}: {text}")).encode()
}

fn drain(s: &mut Swim) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn sends(outs: &[Output]) -> Vec<(NodeId, Packet)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send { to, message } => Some((*to, Packet::decode(message.clone()).unwrap())),
            _ => None,
        })
        .collect()
}

fn sent_text(outs: &[Output]) -> Vec<String> {
    sends(outs).into_iter().map(|(to, p)| format!("{to} {p}")).collect()
}

fn events(outs: &[Output]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.to_string()),
            _ => None,
        })
        .collect()
}

/// `me` knowing `others` alive at incarnation 1 (learned from a `Sync`).
fn joined(me: NodeId, others: &[NodeId]) -> Swim {
    joined_with(me, others, quiet())
}

fn joined_with(me: NodeId, others: &[NodeId], config: SwimConfig) -> Swim {
    let mut s = node_with(me, config, 1);
    let state: Vec<String> = others.iter().map(|o| format!("alive {o} inc=1")).collect();
    s.handle_message(t(0), others[0], pkt(&format!("sync | {}", state.join(" | "))));
    drain(&mut s);
    s
}

fn state_of(s: &Swim, id: NodeId) -> Option<(MemberState, u64)> {
    s.member(id).map(|m| (m.state, m.incarnation))
}

/// Runs the first probe (at 1 s) and returns its target and seq.
fn first_probe(s: &mut Swim) -> (NodeId, u64, Vec<Output>) {
    s.handle_timeout(t(1000));
    let outs = drain(s);
    let (to, p) = sends(&outs).into_iter().next().expect("a ping");
    let Message::Ping { seq } = p.message else { panic!("expected a ping, got {p}") };
    (to, seq, outs)
}

// ----- membership basics -------------------------------------------------

#[test]
fn sync_adds_members_and_reports_them_joined() {
    let mut s = node(N1);
    s.handle_message(t(0), N2, pkt("sync | alive n2 inc=1 meta=web | alive n3 inc=4 | dead n4 inc=2"));
    assert_eq!(events(&drain(&mut s)), vec!["joined n2 inc=1 meta=web", "joined n3 inc=4"]);
    assert_eq!(state_of(&s, N4), None, "a dead statement about an unknown member is ignored");
    let ids: Vec<NodeId> = s.members().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![N1, N2, N3], "ourselves included, sorted");
    assert_eq!(s.live_count(), 3);
}

#[test]
fn defaults_are_memberlists_lan_config() {
    let c = SwimConfig::default();
    assert_eq!(c.probe_interval, Duration::from_secs(1));
    assert_eq!(c.probe_timeout, Duration::from_millis(500));
    assert_eq!((c.indirect_checks, c.suspicion_mult, c.retransmit_mult), (3, 4, 4));
    assert_eq!(c.lhm_max + 1, 8, "memberlist AwarenessMaxMultiplier");
    assert_eq!((c.gc_after, c.announce_interval), (Duration::from_secs(30), Duration::from_secs(5)));
    assert_eq!(
        (c.gossip_interval, c.gossip_nodes),
        (Duration::from_millis(200), 3),
        "memberlist GossipInterval, GossipNodes"
    );
}

// ----- probing -----------------------------------------------------------

#[test]
fn each_round_probes_every_live_member_once_in_a_shuffled_order() {
    let others = [N2, N3, N4, N5];
    let mut s = joined(N1, &others);
    let mut rounds = Vec::new();
    for round in 0..4u64 {
        let mut targets = Vec::new();
        for i in 0..4u64 {
            let now = t(1000 * (1 + round * 4 + i));
            s.handle_timeout(now);
            let outs = drain(&mut s);
            let (to, p) = sends(&outs).into_iter().next().expect("a ping each period");
            let Message::Ping { seq } = p.message else { panic!("{p}") };
            s.handle_message(now + Duration::from_millis(5), to, pkt(&format!("ack seq={seq}")));
            drain(&mut s);
            targets.push(to);
        }
        let mut sorted = targets.clone();
        sorted.sort();
        assert_eq!(sorted, others, "round {round} probes each member once: {targets:?}");
        rounds.push(targets);
    }
    assert!(rounds.windows(2).any(|w| w[0] != w[1]), "orders are reshuffled: {rounds:?}");
}

#[test]
fn acked_probe_reports_its_round_trip_and_suspects_nobody() {
    let mut s = joined(N1, &[N2, N3]);
    let (target, seq, _) = first_probe(&mut s);
    s.handle_message(t(1012), target, pkt(&format!("ack seq={seq}")));
    assert_eq!(drain(&mut s), vec![Output::ProbeRtt { member: target, rtt: Duration::from_millis(12) }]);
    s.handle_timeout(t(1500));
    assert!(sends(&drain(&mut s)).is_empty(), "no ping-req after an ack");
    s.handle_timeout(t(2000));
    assert!(events(&drain(&mut s)).is_empty());
    assert_eq!(s.stats().probes_failed, 0);
}

#[test]
fn silent_target_gets_indirect_probes_through_k_alive_others() {
    let mut s = joined(N1, &[N2, N3, N4, N5]);
    s.handle_message(t(0), N2, pkt("gossip | suspect n5 inc=1 by=n2"));
    drain(&mut s);
    let (target, seq, _) = first_probe(&mut s);
    assert_eq!(s.poll_timeout(), Some(t(1500)));
    s.handle_timeout(t(1499));
    assert!(drain(&mut s).is_empty(), "not yet");
    s.handle_timeout(t(1500));
    let reqs = sends(&drain(&mut s));
    let helpers: BTreeSet<NodeId> = reqs.iter().map(|(to, _)| *to).collect();
    assert!(!helpers.contains(&target) && !helpers.contains(&N5), "neither the target nor a suspect helps");
    assert_eq!(helpers.len(), if target == N5 { 3 } else { 2 });
    for (_, p) in &reqs {
        assert_eq!(p.message, Message::PingReq { seq, target, nack: true });
    }
}

#[test]
fn an_ack_relayed_by_a_helper_counts_as_success() {
    let mut s = joined(N1, &[N2, N3, N4]);
    let (target, seq, _) = first_probe(&mut s);
    s.handle_timeout(t(1500));
    let helper = sends(&drain(&mut s))[0].0;
    // An ack from a node we did not ask is not evidence.
    s.handle_message(t(1600), N5, pkt(&format!("ack seq={seq}")));
    s.handle_message(t(1700), helper, pkt(&format!("ack seq={seq}")));
    assert!(drain(&mut s).iter().all(|o| !matches!(o, Output::ProbeRtt { .. })), "no rtt for an indirect ack");
    s.handle_timeout(t(2000));
    assert!(events(&drain(&mut s)).is_empty(), "{target} is not suspected");
    assert_eq!(s.stats().probes_failed, 0);
}

#[test]
fn failed_probe_suspects_the_target_at_the_incarnation_it_was_probed_at() {
    let mut s = joined(N1, &[N2, N3, N4]);
    let (target, _, _) = first_probe(&mut s);
    s.handle_timeout(t(1500));
    drain(&mut s);
    s.handle_timeout(t(2000));
    let outs = drain(&mut s);
    assert_eq!(events(&outs), vec![format!("suspect {target} inc=1")]);
    // The suspicion is gossiped on the next probe.
    let next = sends(&outs);
    assert!(next[0].1.updates.iter().any(|u| u.member == target && matches!(u.kind, UpdateKind::Suspect { .. })));
}

#[test]
fn a_refutation_during_the_probe_is_not_overridden() {
    let mut s = joined(N1, &[N2, N3, N4]);
    let (target, _, _) = first_probe(&mut s);
    s.handle_message(t(1200), N2, pkt(&format!("gossip | alive {target} inc=2")));
    s.handle_timeout(t(1500));
    s.handle_timeout(t(2000));
    assert!(events(&drain(&mut s)).is_empty(), "the failed probe accused incarnation 1, the target is at 2");
    assert_eq!(state_of(&s, target), Some((MemberState::Alive, 2)));
}

// ----- phi gate ----------------------------------------------------------

/// One protocol period of `s` starting at `start` (local health 0, so 1 s):
/// returns the member it probed and the events its start produced (a round
/// that failed is judged there). `answer(target)` is the ack's delay in ms
/// (under the 500 ms probe timeout), or `None`: the round fails — no ack,
/// direct or relayed — and every helper nacks, so the prober's own health
/// is not blamed.
fn period(s: &mut Swim, start: Instant, answer: impl Fn(NodeId) -> Option<u64>) -> (NodeId, Vec<String>) {
    assert_eq!(s.local_health(), 0, "periods of 1 s");
    s.handle_timeout(start);
    let outs = drain(s);
    let (target, seq) = sends(&outs)
        .into_iter()
        .find_map(|(to, p)| match p.message {
            Message::Ping { seq } => Some((to, seq)),
            _ => None,
        })
        .expect("a ping each period");
    match answer(target) {
        Some(ms) => {
            assert!(ms < 500, "an ack within the probe timeout");
            s.handle_message(start + Duration::from_millis(ms), target, pkt(&format!("ack seq={seq}")));
        }
        None => {
            s.handle_timeout(start + Duration::from_millis(500));
            let helpers: Vec<NodeId> = sends(&drain(s))
                .into_iter()
                .filter(|(_, p)| matches!(p.message, Message::PingReq { .. }))
                .map(|(to, _)| to)
                .collect();
            assert!(!helpers.is_empty(), "indirect probes were asked for");
            for h in helpers {
                s.handle_message(start + Duration::from_millis(800), h, pkt(&format!("nack seq={seq}")));
            }
        }
    }
    drain(s);
    (target, events(&outs))
}

/// Round trips of 5 ms to 444 ms, in no regular pattern.
fn jitter(k: u64) -> u64 {
    5 + (k * 137) % 440
}

/// `n1` knowing `n2` and `n3`, after 40 periods of answered rounds with
/// jittery round trips (and rounds reshuffled, so each member's answered
/// rounds come 1 to 3 s apart): an alive history for both.
fn with_alive_history(config: SwimConfig) -> Swim {
    let mut s = joined_with(N1, &[N2, N3], config);
    for i in 1..=40 {
        let (_, ev) = period(&mut s, t(1000 * i), |_| Some(jitter(i)));
        assert!(ev.is_empty(), "{ev:?}");
    }
    s
}

#[test]
fn phi_gate_spares_a_jittery_but_alive_member_one_lost_round() {
    let mut s = with_alive_history(gated());
    let (lost, _) = period(&mut s, t(41_000), |_| None);
    let phi = s.phi(lost, t(42_000));
    assert!(phi < s.config().phi.threshold, "its history makes one lost round unremarkable: phi {phi}");
    let (again, ev) = period(&mut s, t(42_000), |_| Some(20));
    assert!(ev.is_empty(), "one lost round of a member alive by its history accuses nobody: {ev:?}");
    assert_eq!(again, lost, "the deferred member gets another round at once");
    assert_eq!((s.stats().probes_failed, s.stats().suspicions_deferred), (1, 1));
    // The answered round starts the count again: later single losses are
    // spared too.
    for i in 43..=60 {
        let (_, ev) = period(&mut s, t(1000 * i), |_| if i % 6 == 0 { None } else { Some(jitter(i)) });
        assert!(ev.is_empty(), "{ev:?}");
    }
    assert_eq!(s.stats().suspicions_deferred, s.stats().probes_failed);
    assert_eq!((state_of(&s, N2), state_of(&s, N3)), (Some((MemberState::Alive, 1)), Some((MemberState::Alive, 1))));
}

#[test]
fn with_the_phi_gate_off_one_lost_round_accuses_at_once() {
    let mut s = with_alive_history(gated().without_phi_gate());
    let (lost, _) = period(&mut s, t(41_000), |_| None);
    let (_, ev) = period(&mut s, t(42_000), |_| Some(20));
    assert_eq!(ev, vec![format!("suspect {lost} inc=1")], "plain SWIM: the failed round accuses");
    assert_eq!(s.stats().suspicions_deferred, 0);
}

#[test]
fn a_crashed_member_is_suspected_within_the_phi_gates_cap() {
    let mut s = with_alive_history(gated());
    let cap = s.config().phi_gate_max_deferrals;
    assert_eq!(cap, 2, "the documented default");
    // n2 crashes: from now on every round of it fails.
    let mut rounds_of_n2 = Vec::new();
    let mut suspected = None;
    for i in 41..=60 {
        let start = t(1000 * i);
        let phi = s.phi(N2, start);
        let (target, ev) = period(&mut s, start, |m| (m != N2).then_some(20));
        if ev.contains(&"suspect n2 inc=1".to_string()) {
            suspected = Some((i, phi));
            break;
        }
        if target == N2 {
            rounds_of_n2.push(i);
        }
    }
    let (at, phi) = suspected.expect("the crashed member is suspected");
    // Its first round failed, then the gate deferred `cap` failures, each
    // probing it again the next period; the round after that accuses.
    assert_eq!(rounds_of_n2.len() as u32, cap + 1, "{rounds_of_n2:?}");
    assert!(rounds_of_n2.windows(2).all(|w| w[1] == w[0] + 1), "consecutive periods: {rounds_of_n2:?}");
    assert_eq!(at, rounds_of_n2[cap as usize] + 1, "accused at the end of the last allowed round");
    assert!(phi < s.config().phi.threshold, "the cap decided, not phi ({phi}): a hard bound whatever the history");
    assert_eq!(s.stats().suspicions_deferred, u64::from(cap));
}

#[test]
fn phi_over_the_threshold_accuses_on_the_first_failed_round() {
    // One member, probed every period and always answering 10 ms later: a
    // history so regular that one missing answer is already damning.
    let mut s = joined_with(N1, &[N2], gated());
    for i in 1..=30 {
        s.handle_timeout(t(1000 * i));
        let (to, p) = sends(&drain(&mut s)).into_iter().next().expect("a ping");
        let Message::Ping { seq } = p.message else { panic!("{p}") };
        s.handle_message(t(1000 * i + 10), to, pkt(&format!("ack seq={seq}")));
        drain(&mut s);
    }
    s.handle_timeout(t(31_000));
    drain(&mut s);
    assert!(s.phi(N2, t(32_000)) >= s.config().phi.threshold, "phi {}", s.phi(N2, t(32_000)));
    s.handle_timeout(t(32_000));
    assert_eq!(events(&drain(&mut s)), vec!["suspect n2 inc=1"]);
    assert_eq!(s.stats().suspicions_deferred, 0);
}

#[test]
fn phi_is_fed_by_answered_rounds_only_and_read_at_the_given_time() {
    let mut s = joined_with(N1, &[N2, N3], gated());
    assert_eq!(s.phi(N2, t(5_000)), 0.0, "no history, no suspicion");
    let (target, seq, _) = first_probe(&mut s);
    s.handle_message(t(1_010), target, pkt(&format!("ack seq={seq}")));
    drain(&mut s);
    let snap = s.phi_snapshots()[&target];
    assert_eq!(snap.last_heartbeat(), t(1_010), "the core's now, not any other clock");
    assert!(s.phi(target, t(1_500)) < s.phi(target, t(4_000)), "phi grows with silence");
    assert_eq!(snap.phi(t(4_000)), s.phi(target, t(4_000)), "a snapshot gives the detector's phi");
}

#[test]
fn a_relay_pings_the_target_and_forwards_its_ack_under_the_requesters_seq() {
    let mut s = joined(N2, &[N1, N3]);
    s.handle_message(t(100), N1, pkt("ping-req seq=9 target=n3 nack"));
    let out = sends(&drain(&mut s));
    assert_eq!(out.len(), 1);
    let (to, ping) = &out[0];
    let Message::Ping { seq: local } = ping.message else { panic!("{ping}") };
    assert_eq!(*to, N3);
    assert_eq!(s.poll_timeout(), Some(t(500)), "nack due at 80 % of the probe timeout");
    s.handle_message(t(150), N3, pkt(&format!("ack seq={local}")));
    let out = sends(&drain(&mut s));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0, out[0].1.message), (N1, Message::Ack { seq: 9 }));
    s.handle_timeout(t(500));
    assert!(sends(&drain(&mut s)).is_empty(), "no nack after the ack");
}

#[test]
fn a_relay_whose_target_stays_silent_sends_a_nack() {
    let mut s = joined(N2, &[N1, N3]);
    s.handle_message(t(100), N1, pkt("ping-req seq=9 target=n3 nack"));
    drain(&mut s);
    s.handle_timeout(t(499));
    assert!(drain(&mut s).is_empty());
    s.handle_timeout(t(500));
    let out = sends(&drain(&mut s));
    assert_eq!((out[0].0, out[0].1.message), (N1, Message::Nack { seq: 9 }));
    assert_eq!(s.stats().nacks_sent, 1);
    // Without the nack flag there is none.
    s.handle_message(t(700), N1, pkt("ping-req seq=10 target=n3"));
    drain(&mut s);
    s.handle_timeout(t(1300));
    assert!(sends(&drain(&mut s)).iter().all(|(_, p)| !matches!(p.message, Message::Nack { .. })));
}

#[test]
fn a_ping_is_acked_with_piggybacked_updates() {
    let mut s = joined(N1, &[N2, N3]);
    s.handle_message(t(10), N2, pkt("ping seq=77"));
    let out = sent_text(&drain(&mut s));
    assert_eq!(out.len(), 1);
    assert!(out[0].starts_with("n2 ack seq=77 | "), "{out:?}");
    assert!(out[0].contains("alive n1 inc=1"), "our own alive is still being spread: {out:?}");
}

// ----- merge rules -------------------------------------------------------

/// Puts `n2` into `state` at `inc` on a fresh `n1` (knowing n3..n5 too).
fn with_n2(state: MemberState, inc: u64) -> Swim {
    let mut s = joined(N1, &[N3, N4, N5]);
    s.handle_message(t(0), N3, pkt(&format!("gossip | alive n2 inc={inc}")));
    let extra = match state {
        MemberState::Alive => None,
        MemberState::Suspect => Some(format!("suspect n2 inc={inc} by=n3")),
        MemberState::Dead => Some(format!("dead n2 inc={inc}")),
        MemberState::Left => Some(format!("left n2 inc={inc}")),
    };
    if let Some(u) = extra {
        s.handle_message(t(0), N3, pkt(&format!("gossip | {u}")));
    }
    drain(&mut s);
    assert_eq!(state_of(&s, N2), Some((state, inc)));
    s
}

#[test]
fn merge_rules_follow_swim() {
    use MemberState::*;
    #[rustfmt::skip]
    let table: &[(MemberState, &str, MemberState, u64, &str)] = &[
        // Alive(i) wins with a higher incarnation only.
        (Alive, "alive n2 inc=4", Alive, 5, ""),
        (Alive, "alive n2 inc=5 meta=x", Alive, 5, ""),
        (Alive, "alive n2 inc=6", Alive, 6, ""),
        (Alive, "alive n2 inc=6 meta=x", Alive, 6, "updated n2 inc=6 meta=x"),
        (Suspect, "alive n2 inc=5", Suspect, 5, ""),
        (Suspect, "alive n2 inc=6", Alive, 6, "alive n2 inc=6"),
        (Dead, "alive n2 inc=5", Dead, 5, ""),
        (Dead, "alive n2 inc=6", Alive, 6, "joined n2 inc=6"),
        (Left, "alive n2 inc=6", Alive, 6, "joined n2 inc=6"),
        // Suspect(i) wins over Alive(j ≤ i), over Suspect(j < i); never over a tombstone.
        (Alive, "suspect n2 inc=4 by=n3", Alive, 5, ""),
        (Alive, "suspect n2 inc=5 by=n3", Suspect, 5, "suspect n2 inc=5"),
        (Alive, "suspect n2 inc=7 by=n3", Suspect, 7, "suspect n2 inc=7"),
        (Suspect, "suspect n2 inc=5 by=n4", Suspect, 5, ""),
        (Suspect, "suspect n2 inc=6 by=n4", Suspect, 6, "suspect n2 inc=6"),
        (Dead, "suspect n2 inc=6 by=n3", Dead, 5, ""),
        // Dead(i) / Left(i) win over Alive/Suspect(j ≤ i); a tombstone stays one.
        (Alive, "dead n2 inc=4", Alive, 5, ""),
        (Alive, "dead n2 inc=5", Dead, 5, "dead n2 inc=5"),
        (Suspect, "dead n2 inc=6", Dead, 6, "dead n2 inc=6"),
        (Suspect, "dead n2 inc=4", Suspect, 5, ""),
        (Alive, "left n2 inc=5", Left, 5, "left n2 inc=5"),
        (Suspect, "left n2 inc=5", Left, 5, "left n2 inc=5"),
        (Dead, "left n2 inc=5", Dead, 5, ""),
        (Left, "dead n2 inc=5", Left, 5, ""),
        (Dead, "dead n2 inc=8", Dead, 8, ""),
    ];
    for (before, update, after, inc, event) in table {
        let mut s = with_n2(*before, 5);
        s.handle_message(t(1), N4, pkt(&format!("gossip | {update}")));
        let evs = events(&drain(&mut s));
        let what = format!("{before:?} at 5 + {update}");
        assert_eq!(state_of(&s, N2), Some((*after, *inc)), "{what}");
        let expected: Vec<&str> = if event.is_empty() { vec![] } else { vec![event] };
        assert_eq!(evs, expected, "{what}");
    }
}

#[test]
fn accepted_changes_are_queued_for_gossip_and_rejected_ones_are_not() {
    let mut s = with_n2(MemberState::Alive, 5);
    s.handle_message(t(1), N4, pkt("gossip | suspect n2 inc=4 by=n3"));
    assert_eq!(s.queue.get(N2).map(|u| u.to_string()), Some("alive n2 inc=5".into()));
    s.handle_message(t(1), N4, pkt("gossip | dead n2 inc=5"));
    assert_eq!(s.queue.get(N2).map(|u| u.to_string()), Some("dead n2 inc=5".into()));
}

#[test]
fn in_a_push_pull_dead_is_taken_as_suspect() {
    let mut s = with_n2(MemberState::Alive, 5);
    s.handle_message(t(1), N3, pkt("sync | dead n2 inc=5"));
    assert_eq!(events(&drain(&mut s)), vec!["suspect n2 inc=5"]);
    assert_eq!(s.queue.get(N2).map(|u| u.to_string()), Some("suspect n2 inc=5 by=n3".into()));
    // Left stays left.
    let mut s = with_n2(MemberState::Alive, 5);
    s.handle_message(t(1), N3, pkt("join | left n2 inc=5"));
    assert_eq!(events(&drain(&mut s)), vec!["left n2 inc=5"]);
}

#[test]
fn a_suspect_in_a_push_pull_list_is_adopted_a_dead_one_is_not() {
    let mut s = node(N1);
    s.handle_message(t(0), N2, pkt("sync | alive n2 inc=1 | suspect n3 inc=2 by=n2 | dead n4 inc=1 | left n5 inc=1"));
    assert_eq!(events(&drain(&mut s)), vec!["joined n2 inc=1", "joined n3 inc=2", "suspect n3 inc=2"]);
    assert_eq!(s.suspicion(N3).map(|x| x.deadline), Some(t(4000)), "3 live: the minimum timeout");
    // Piggybacked, an unknown suspect stays ignored (as in memberlist).
    s.handle_message(t(1), N2, pkt("gossip | suspect n6 inc=1 by=n2"));
    assert_eq!(state_of(&s, N6), None);
}

#[test]
fn periodic_push_pull_goes_to_one_alive_member() {
    let mut s = joined(N1, &[N2, N3]);
    s.handle_message(t(0), N2, pkt("gossip | dead n3 inc=1"));
    let mut joins = Vec::new();
    for ms in (500..=30_000).step_by(500) {
        s.handle_timeout(t(ms));
        for (to, p) in sends(&drain(&mut s)) {
            if let Message::Ping { seq } = p.message {
                s.handle_message(t(ms), to, pkt(&format!("ack seq={seq}")));
                drain(&mut s);
            }
            if p.message == Message::Join {
                joins.push((ms, to));
            }
        }
    }
    // Announces go to the tombstone n3 every 5 s until it is collected at
    // 30 s; the push-pull at 30 s goes to the one alive member, n2.
    assert_eq!(joins, vec![(5000, N3), (10_000, N3), (15_000, N3), (20_000, N3), (25_000, N3), (30_000, N2)]);
    assert_eq!(s.stats().push_pulls, 1);
    let mut off = node_with(N1, SwimConfig { push_pull_interval: Duration::ZERO, ..quiet() }, 1);
    off.handle_timeout(t(100_000));
    assert_eq!(off.stats().push_pulls, 0);
}

#[test]
#[should_panic(expected = "incarnation went backwards")]
fn a_record_never_moves_to_a_lower_incarnation() {
    let mut m = Member {
        incarnation: 5,
        state: MemberState::Alive,
        metadata: Bytes::new(),
        since: t(0),
        suspicion: None,
        deferred: 0,
    };
    m.set(4, MemberState::Dead, t(1));
}

// ----- suspicion, refutation, dogpile -------------------------------------

#[test]
fn a_suspect_is_declared_dead_after_the_suspicion_timeout() {
    // 3 live members: too few for confirmations, so the minimum, 4 s.
    let mut s = joined(N1, &[N2, N3]);
    s.handle_message(t(100), N2, pkt("gossip | suspect n3 inc=1 by=n2"));
    drain(&mut s);
    assert_eq!(s.members[&N3].suspicion.as_ref().unwrap().deadline(), t(4100));
    s.handle_timeout(t(4099));
    assert_eq!(state_of(&s, N3), Some((MemberState::Suspect, 1)));
    s.handle_timeout(t(4100));
    let evs = events(&drain(&mut s));
    assert!(evs.contains(&"dead n3 inc=1".to_string()), "{evs:?}");
    assert_eq!(s.queue.get(N3).map(|u| u.to_string()), Some("dead n3 inc=1".into()));
}

#[test]
fn dogpile_independent_confirmations_shorten_the_suspicion() {
    // 5 live members: k = suspicion_mult − 2 = 2 confirmations expected;
    // min = 4 s, max = 6 · 4 s.
    let mut s = joined(N1, &[N2, N3, N4, N5]);
    let deadline = |s: &Swim| s.members[&N5].suspicion.as_ref().unwrap().deadline();
    s.handle_message(t(0), N2, pkt("gossip | suspect n5 inc=1 by=n2"));
    assert_eq!(deadline(&s), t(24_000));
    s.handle_message(t(10), N2, pkt("gossip | suspect n5 inc=1 by=n2"));
    assert_eq!(deadline(&s), t(24_000), "the accuser does not confirm itself");
    s.handle_message(t(20), N3, pkt("gossip | suspect n5 inc=1 by=n3"));
    assert_eq!(deadline(&s), t(11_381));
    assert_eq!(s.queue.get(N5).map(|u| u.to_string()), Some("suspect n5 inc=1 by=n3".into()), "passed on");
    s.handle_message(t(30), N4, pkt("gossip | suspect n5 inc=1 by=n3"));
    assert_eq!(deadline(&s), t(11_381), "a confirmer counts once");
    s.handle_message(t(40), N4, pkt("gossip | suspect n5 inc=1 by=n4"));
    assert_eq!(deadline(&s), t(4_000));
    assert_eq!(s.members[&N5].suspicion.as_ref().unwrap().confirmations(), 2);
}

#[test]
fn a_node_refutes_a_suspicion_about_itself() {
    let mut s = joined(N1, &[N2, N3]);
    s.handle_message(t(10), N2, pkt("gossip | suspect n1 inc=1 by=n2"));
    assert_eq!(s.incarnation(), 2);
    assert_eq!(s.local_health(), 1, "being accused costs local health");
    assert_eq!(s.queue.get(N1).map(|u| u.to_string()), Some("alive n1 inc=2".into()));
    s.handle_message(t(20), N2, pkt("ping seq=1"));
    let out = sent_text(&drain(&mut s));
    assert!(out[0].contains("alive n1 inc=2"), "{out:?}");
    // An accusation of an older incarnation is stale.
    s.handle_message(t(30), N3, pkt("gossip | suspect n1 inc=1 by=n3 | dead n1 inc=1"));
    assert_eq!(s.incarnation(), 2);
    // Death at a higher incarnation than ours (an earlier run of us): jump above it.
    s.handle_message(t(40), N3, pkt("gossip | dead n1 inc=9"));
    assert_eq!(s.incarnation(), 10);
    assert_eq!(s.stats().refutations, 2);
}

#[test]
fn a_stale_accusation_is_answered_with_our_current_alive() {
    // n1 refuted a suspicion at 1 with 2 and its gossip got spent; n2 never
    // heard it and still holds n1 suspect at 1 (its pings say so, buddy
    // system). Without an answer the stale record would kill n1 at n2.
    let mut s = joined(N1, &[N2, N3]);
    s.handle_message(t(10), N3, pkt("gossip | suspect n1 inc=1 by=n3"));
    for i in 0..40 {
        s.handle_message(t(20), N3, pkt(&format!("ping seq={i}")));
    }
    drain(&mut s);
    assert_eq!((s.incarnation(), s.pending_broadcasts()), (2, 0));
    s.handle_message(t(30), N2, pkt("ping seq=7 | suspect n1 inc=1 by=n3"));
    let (to, ack) = sends(&drain(&mut s)).remove(0);
    assert_eq!(to, N2);
    assert_eq!(ack.updates[0].to_string(), "alive n1 inc=2", "{ack}");
    assert_eq!(s.incarnation(), 2, "stale: nothing to outbid");
    assert_eq!(s.local_health(), 1, "only the first (current) accusation cost health");
    assert_eq!(s.stats().reasserted, 1);
    // While that Alive is still queued, more stale statements add nothing.
    s.handle_message(t(40), N2, pkt("gossip | dead n1 inc=1"));
    assert_eq!(s.stats().reasserted, 1);
}

#[test]
fn a_stale_alive_about_us_is_answered_too() {
    // n2's push-pull list still has n1 at 1 (an earlier run, or a
    // refutation it missed): n1, at 5, gossips its current Alive again.
    let mut s = node_with(N1, quiet(), 5);
    s.handle_message(t(0), N2, pkt("sync | alive n2 inc=1"));
    for i in 0..40 {
        s.handle_message(t(0), N2, pkt(&format!("ping seq={i}")));
    }
    drain(&mut s);
    assert_eq!(s.pending_broadcasts(), 0);
    s.handle_message(t(10), N2, pkt("join | alive n2 inc=1 | alive n1 inc=1"));
    let out = sends(&drain(&mut s));
    assert_eq!(s.incarnation(), 5);
    assert_eq!(s.stats().reasserted, 1);
    let (_, sync) = &out[0];
    assert_eq!(sync.message, Message::Sync);
    assert!(sync.updates.iter().any(|u| u.to_string() == "alive n1 inc=5"), "{sync}");
    assert_eq!(s.queue.get(N1).map(|u| u.to_string()), Some("alive n1 inc=5".into()), "and gossiped");
}

#[test]
fn an_alive_about_us_that_we_did_not_say_is_outbid() {
    let mut s = joined(N1, &[N2]);
    s.handle_message(t(10), N2, pkt("gossip | alive n1 inc=1"));
    assert_eq!(s.incarnation(), 1, "our own statement");
    s.handle_message(t(10), N2, pkt("gossip | alive n1 inc=1 meta=old"));
    assert_eq!(s.incarnation(), 2, "same incarnation, other metadata: an earlier run");
    s.handle_message(t(10), N2, pkt("gossip | alive n1 inc=7"));
    assert_eq!(s.incarnation(), 8);
    assert_eq!(s.local_health(), 0, "not an accusation");
}

#[test]
fn an_unbeatable_incarnation_is_counted_not_a_panic() {
    let mut s = joined(N1, &[N2]);
    s.handle_message(t(10), N2, pkt(&format!("gossip | dead n1 inc={}", u64::MAX)));
    assert_eq!(s.incarnation(), 1);
    assert_eq!(s.stats().unrefutable, 1);
}

#[test]
fn buddy_system_tells_a_suspect_it_is_suspected() {
    let mut s = joined(N1, &[N2, N3]);
    s.handle_message(t(10), N3, pkt("gossip | suspect n2 inc=1 by=n3"));
    drain(&mut s);
    s.handle_message(t(20), N2, pkt("ping seq=4"));
    let out = sends(&drain(&mut s));
    assert_eq!(out[0].1.updates[0].to_string(), "suspect n2 inc=1 by=n3", "first, whatever else fits");
    // The probe of the suspect carries it too.
    let mut probed = false;
    for period in 1..=2 {
        s.handle_timeout(t(1000 * period));
        for (to, p) in sends(&drain(&mut s)) {
            if to == N2 && matches!(p.message, Message::Ping { .. }) {
                assert_eq!(p.updates[0].to_string(), "suspect n2 inc=1 by=n3");
                probed = true;
            }
        }
    }
    assert!(probed);
}

// ----- dissemination -----------------------------------------------------

#[test]
fn retransmit_limit_grows_with_log2_of_the_cluster() {
    let mut s = node(N1);
    assert_eq!(s.retransmit_limit(), 4, "alone: 4 · ⌈log2 2⌉");
    s.handle_message(t(0), N2, pkt("sync | alive n2 inc=1 | alive n3 inc=1"));
    assert_eq!(s.retransmit_limit(), 8, "3 live: 4 · ⌈log2 4⌉");
    let all: Vec<String> = (2..=8).map(|i| format!("alive n{i} inc=1")).collect();
    s.handle_message(t(0), N2, pkt(&format!("sync | {}", all.join(" | "))));
    assert_eq!(s.retransmit_limit(), 16, "8 live: 4 · ⌈log2 9⌉");
}

#[test]
fn an_update_is_piggybacked_exactly_retransmit_limit_times() {
    let mut s = joined(N1, &[N2, N3]);
    // Flush what the join queued.
    for i in 0..20 {
        s.handle_message(t(1), N2, pkt(&format!("ping seq={i}")));
    }
    drain(&mut s);
    s.handle_message(t(2), N2, pkt("gossip | alive n4 inc=1 meta=new"));
    drain(&mut s);
    let limit = s.retransmit_limit();
    let mut carried = 0;
    for i in 0..30 {
        s.handle_message(t(3), N3, pkt(&format!("ping seq={i}")));
        for (_, p) in sends(&drain(&mut s)) {
            carried += p.updates.iter().filter(|u| u.member == N4).count();
        }
    }
    assert_eq!(carried as u32, limit);
}

/// `me` knowing `others` alive, with the gossip timer on and the join's
/// updates already spent.
fn gossiping(me: NodeId, others: &[NodeId]) -> Swim {
    let mut s = node_with(me, SwimConfig::default(), 1);
    let state: Vec<String> = others.iter().map(|o| format!("alive {o} inc=1")).collect();
    s.handle_message(t(0), others[0], pkt(&format!("sync | {}", state.join(" | "))));
    for i in 0..40 {
        s.handle_message(t(0), others[0], pkt(&format!("ping seq={i}")));
    }
    drain(&mut s);
    assert_eq!(s.pending_broadcasts(), 0);
    s
}

#[test]
fn a_gossip_round_sends_queued_updates_to_gossip_nodes_members() {
    let mut s = gossiping(N1, &[N2, N3, N4, N5]);
    assert_eq!(s.poll_timeout(), Some(t(200)), "the first gossip round");
    s.handle_timeout(t(200));
    assert!(drain(&mut s).is_empty(), "nothing queued: nothing sent");
    s.handle_message(t(300), N2, pkt("gossip | suspect n5 inc=1 by=n2"));
    drain(&mut s);
    assert_eq!(s.poll_timeout(), Some(t(400)));
    s.handle_timeout(t(400));
    let out = sends(&drain(&mut s));
    let targets: BTreeSet<NodeId> = out.iter().map(|(to, _)| *to).collect();
    assert_eq!(out.len(), 3, "gossip_nodes members: {out:?}");
    assert_eq!(targets.len(), 3, "distinct");
    for (_, p) in &out {
        assert_eq!(p.message, Message::Gossip);
        assert_eq!(p.updates[0].to_string(), "suspect n5 inc=1 by=n2");
    }
    assert_eq!(s.poll_timeout(), Some(t(600)), "rounds repeat every gossip_interval");
}

#[test]
fn gossip_reaches_tombstones_with_their_record() {
    // n2 is dead: rounds still go to it, led by its tombstone, so a
    // wrongly-declared member learns of it and refutes.
    let mut s = gossiping(N1, &[N2, N3]);
    s.handle_message(t(100), N3, pkt("gossip | dead n2 inc=1"));
    for i in 0..40 {
        s.handle_message(t(100), N3, pkt(&format!("ping seq={i}")));
    }
    drain(&mut s);
    assert_eq!(state_of(&s, N2), Some((MemberState::Dead, 1)));
    assert_eq!(s.pending_broadcasts(), 0, "the news is spent");
    s.handle_timeout(t(200));
    assert!(drain(&mut s).is_empty(), "nothing queued: nothing sent, not even to the dead");
    // News: the round (3 of the 3 others) reaches n2 too, tombstone first.
    s.handle_message(t(300), N3, pkt("gossip | alive n4 inc=1"));
    drain(&mut s);
    s.handle_timeout(t(400));
    let out = sends(&drain(&mut s));
    assert_eq!(out.len(), 3, "{out:?}");
    let (_, to_n2) = out.iter().find(|(to, _)| *to == N2).expect("the dead member is a gossip target");
    assert_eq!(to_n2.message, Message::Gossip);
    assert_eq!(to_n2.updates[0].to_string(), "dead n2 inc=1");
}

#[test]
fn a_zero_gossip_interval_disables_the_rounds() {
    let mut s = joined(N1, &[N2, N3]);
    s.handle_message(t(300), N2, pkt("gossip | suspect n3 inc=1 by=n2"));
    drain(&mut s);
    assert_eq!(s.poll_timeout(), Some(t(1000)), "the next probe, no gossip round");
}

#[test]
fn piggyback_stays_within_the_packet_budget() {
    let mut s = node(N1);
    let meta = "m".repeat(400);
    let all: Vec<String> = (2..40).map(|i| format!("alive n{i} inc=1 meta={meta}")).collect();
    s.handle_message(t(0), N2, pkt(&format!("sync | {}", all.join(" | "))));
    drain(&mut s);
    s.handle_message(t(1), N2, pkt("ping seq=1"));
    let out = drain(&mut s);
    let Output::Send { message, .. } = &out[0] else { panic!() };
    assert!(message.len() <= s.config().max_packet_bytes, "{} bytes", message.len());
    let updates = Packet::decode(message.clone()).unwrap().updates;
    let big = updates.iter().filter(|u| u.encoded_len() > 400).count();
    assert_eq!(big, 3, "three 419-byte updates fit in 1400, then smaller ones: {updates:?}");
}

// ----- join, leave, metadata ---------------------------------------------

#[test]
fn join_pushes_our_state_to_each_seed_and_the_seed_answers_with_its_own() {
    let mut a = node(N1);
    a.join(t(0), &[N2, N2, N1, N3]);
    let out = sent_text(&drain(&mut a));
    assert_eq!(out, vec!["n2 join | alive n1 inc=1", "n3 join | alive n1 inc=1"]);

    let mut seed = joined(N2, &[N3]);
    seed.handle_message(t(5), N1, pkt("join | alive n1 inc=1"));
    let out = drain(&mut seed);
    assert_eq!(events(&out), vec!["joined n1 inc=1"]);
    assert_eq!(sent_text(&out), vec!["n1 sync | alive n2 inc=1 | alive n1 inc=1 | alive n3 inc=1"]);

    a.handle_message(t(10), N2, pkt("sync | alive n2 inc=1 | alive n1 inc=1 | alive n3 inc=1"));
    assert_eq!(events(&drain(&mut a)), vec!["joined n2 inc=1", "joined n3 inc=1"]);
}

#[test]
fn a_large_state_is_split_into_sync_packets() {
    let config = SwimConfig { max_sync_bytes: 2000, ..quiet() };
    let mut s = node_with(N1, config, 1);
    let meta = "m".repeat(300);
    let all: Vec<String> = (2..30).map(|i| format!("alive n{i} inc=1 meta={meta}")).collect();
    s.handle_message(t(0), N2, pkt(&format!("sync | {}", all.join(" | "))));
    drain(&mut s);
    s.handle_message(t(1), N9, pkt("join"));
    let out = sends(&drain(&mut s));
    assert!(out.len() > 1);
    assert!(out.iter().all(|(to, p)| *to == N9 && p.message == Message::Sync && p.encoded_len() <= 2000));
    let total: usize = out.iter().map(|(_, p)| p.updates.len()).sum();
    assert_eq!(total, 29, "every member and ourselves");
}

const N6: NodeId = NodeId(6);
const N9: NodeId = NodeId(9);

#[test]
fn leave_spreads_left_and_refutes_nothing_after() {
    let mut s = joined(N1, &[N2, N3, N4, N5]);
    s.leave(t(10));
    let out = sends(&drain(&mut s));
    assert_eq!(out.len(), 3, "pushed to indirect_checks members at once");
    for (_, p) in &out {
        assert_eq!(p.message, Message::Gossip);
        assert!(p.updates.iter().any(|u| u.to_string() == "left n1 inc=1"));
    }
    assert_eq!(s.member(N1).unwrap().state, MemberState::Left);
    s.handle_message(t(20), N2, pkt("gossip | suspect n1 inc=1 by=n2 | dead n1 inc=3"));
    assert_eq!(s.incarnation(), 1, "a leaving node does not refute");
    s.handle_timeout(t(5000));
    assert_eq!(s.stats().announces, 0);
    assert!(events(&drain(&mut s)).is_empty(), "nor accuse");
}

#[test]
fn metadata_updates_raise_the_incarnation_and_reach_others() {
    let mut s = joined(N1, &[N2]);
    s.set_metadata(t(5), Bytes::from_static(b"role=leader"));
    assert_eq!(s.incarnation(), 2);
    s.handle_message(t(6), N2, pkt("ping seq=1"));
    let out = sends(&drain(&mut s));
    let about_me = out[0].1.updates.iter().find(|u| u.member == N1).unwrap().clone();
    let mut other = joined(N2, &[N1]);
    let mut p = Packet::new(Message::Gossip);
    p.updates.push(about_me);
    other.handle_message(t(7), N1, p.encode());
    assert_eq!(events(&drain(&mut other)), vec!["updated n1 inc=2 meta=0x726f6c653d6c6561646572"]);
}

// ----- restart, announce, tombstones --------------------------------------

#[test]
fn a_restarted_node_with_a_lower_incarnation_learns_it_was_dead_and_jumps_above() {
    // memberlist#345: n1 holds n2 dead at incarnation 5.
    let mut seed = with_n2(MemberState::Dead, 5);
    let mut n2 = node_with(N2, quiet(), 1);
    n2.join(t(10), &[N1]);
    let (_, join) = sends(&drain(&mut n2)).remove(0);
    seed.handle_message(t(11), N2, join.encode());
    let out = drain(&mut seed);
    assert!(events(&out).is_empty(), "alive at 1 does not beat dead at 5");
    let (_, sync) = sends(&out).remove(0);
    assert!(sync.updates.iter().any(|u| u.to_string() == "dead n2 inc=5"), "the seed tells: {sync}");
    n2.handle_message(t(12), N1, sync.encode());
    assert_eq!(n2.incarnation(), 6);
    n2.handle_message(t(13), N1, pkt("ping seq=1"));
    let (_, ack) = sends(&drain(&mut n2)).remove(0);
    seed.handle_message(t(14), N2, ack.encode());
    assert_eq!(events(&drain(&mut seed)), vec!["joined n2 inc=6"]);
}

#[test]
fn any_packet_to_a_dead_member_carries_its_tombstone() {
    let mut s = with_n2(MemberState::Dead, 5);
    s.handle_message(t(1), N2, pkt("ping seq=3"));
    let (_, ack) = sends(&drain(&mut s)).remove(0);
    assert_eq!(ack.updates[0].to_string(), "dead n2 inc=5");
}

#[test]
fn announce_picks_a_tombstone_or_an_unseen_seed() {
    let mut s = with_n2(MemberState::Dead, 1);
    s.join(t(0), &[N9, N3]);
    drain(&mut s);
    let mut targets = BTreeSet::new();
    for i in 1..=12u64 {
        s.handle_timeout(t(5000 * i).min(t(29_999)));
        for (to, p) in sends(&drain(&mut s)) {
            if p.message == Message::Join {
                targets.insert(to);
                assert!(p.updates.iter().any(|u| u.member == N1), "our whole state");
            }
        }
    }
    assert_eq!(targets, BTreeSet::from([N2, N9]), "n3 is a seed we see alive: no need");
}

#[test]
fn a_join_is_retried_until_a_seed_answers_with_its_list() {
    // The Join to n2 was lost; n1 hears *of* n2 (gossip from n3, which
    // knows little) but never got a list: it must keep asking the seeds.
    let mut s = node(N1);
    s.join(t(0), &[N2]);
    drain(&mut s);
    s.handle_message(t(100), N3, pkt("gossip | alive n2 inc=1 | alive n3 inc=1"));
    drain(&mut s);
    let joins_to_n2 = |s: &mut Swim, at: u64| {
        s.handle_timeout(t(at));
        sends(&drain(s)).iter().filter(|(to, p)| *to == N2 && p.message == Message::Join).count()
    };
    assert_eq!(joins_to_n2(&mut s, 5000), 1, "n2 is alive to us, but we never had its list");
    s.handle_message(t(5001), N2, pkt("sync | alive n2 inc=1 | alive n4 inc=1"));
    drain(&mut s);
    assert_eq!(state_of(&s, N4), Some((MemberState::Alive, 1)), "the list brought n4");
    assert_eq!(joins_to_n2(&mut s, 10_000), 0, "joined: a seed we see alive needs no announce");
}

#[test]
fn a_stranger_that_talks_to_us_gets_a_push_pull() {
    // n7 pings us but we have no record of it (its join went to others).
    let mut s = joined(N1, &[N2, N3]);
    let n7 = NodeId(7);
    s.handle_message(t(10), n7, pkt("ping seq=1"));
    let out = sends(&drain(&mut s));
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!((out[0].0, out[0].1.message), (n7, Message::Ack { seq: 1 }));
    assert_eq!((out[1].0, out[1].1.message), (n7, Message::Join));
    assert!(out[1].1.updates.iter().any(|u| u.member == N1), "our whole state");
    assert_eq!(s.stats().strangers_met, 1);
    // Not again within announce_interval; its answer makes it a member.
    s.handle_message(t(20), n7, pkt("ping seq=2"));
    assert_eq!(sends(&drain(&mut s)).len(), 1, "just the ack");
    s.handle_message(t(30), n7, pkt("sync | alive n7 inc=3 | alive n8 inc=1"));
    let evs = events(&drain(&mut s));
    assert_eq!(evs, vec!["joined n7 inc=3", "joined n8 inc=1"]);
    s.handle_message(t(6000), n7, pkt("ping seq=3"));
    assert_eq!(sends(&drain(&mut s)).len(), 1, "a member now, not a stranger");
}

#[test]
fn tombstones_are_collected_and_never_gossiped_again() {
    // chitchat#161: dead incarnations must not circulate forever.
    let mut s = joined(N1, &[N2, N3]);
    s.handle_message(t(0), N3, pkt("gossip | dead n2 inc=1"));
    drain(&mut s);
    s.handle_message(t(100), N3, pkt("join"));
    assert!(sent_text(&drain(&mut s))[0].contains("dead n2 inc=1"), "kept while young");
    let mut now = 100;
    let ack_all = |s: &mut Swim, now: u64| -> Vec<Packet> {
        let mut seen = Vec::new();
        s.handle_timeout(t(now));
        for (to, p) in sends(&drain(s)) {
            if let Message::Ping { seq } = p.message {
                s.handle_message(t(now), to, pkt(&format!("ack seq={seq}")));
                drain(s);
            }
            seen.push(p);
        }
        seen
    };
    while now < 30_000 {
        now += 500;
        ack_all(&mut s, now);
    }
    assert_eq!(state_of(&s, N2), None, "collected after gc_after");
    assert_eq!(s.stats().tombstones_collected, 1);
    s.handle_message(t(now), N3, pkt("gossip | dead n2 inc=1 | suspect n2 inc=1 by=n3"));
    assert!(events(&drain(&mut s)).is_empty());
    assert_eq!(state_of(&s, N2), None, "a forgotten member's death is not news");
    s.handle_message(t(now), N3, pkt("join"));
    assert!(!sent_text(&drain(&mut s))[0].contains("n2"));
    for _ in 0..100 {
        now += 500;
        for p in ack_all(&mut s, now) {
            assert!(p.updates.iter().all(|u| u.member != N2), "n2 gossiped after collection: {p}");
        }
    }
}

// ----- Lifeguard local health ----------------------------------------------

#[test]
fn missing_nacks_raise_local_health_and_scale_the_probe_period() {
    let mut s = joined(N1, &[N2, N3, N4, N5]);
    let (_, seq, _) = first_probe(&mut s);
    s.handle_timeout(t(1500));
    let helpers: Vec<NodeId> = sends(&drain(&mut s)).iter().map(|(to, _)| *to).collect();
    assert_eq!(helpers.len(), 3);
    // One helper nacks (twice: counted once); two stay silent.
    s.handle_message(t(1900), helpers[0], pkt(&format!("nack seq={seq}")));
    s.handle_message(t(1901), helpers[0], pkt(&format!("nack seq={seq}")));
    s.handle_timeout(t(2000));
    drain(&mut s);
    assert_eq!(s.local_health(), 2);
    assert_eq!(s.scaled_probe_interval(), Duration::from_secs(3));
    assert_eq!(s.scaled_probe_timeout(), Duration::from_millis(1500));
    assert_eq!(s.next_probe, t(5000), "the period that just started is scaled");
    assert_eq!(s.probe.as_ref().unwrap().indirect_at, t(3500));
}

#[test]
fn a_failed_probe_whose_helpers_all_nack_costs_no_health() {
    let mut s = joined(N1, &[N2, N3, N4, N5]);
    let (_, seq, _) = first_probe(&mut s);
    s.handle_timeout(t(1500));
    for (h, _) in sends(&drain(&mut s)) {
        s.handle_message(t(1900), h, pkt(&format!("nack seq={seq}")));
    }
    s.handle_timeout(t(2000));
    assert_eq!(s.local_health(), 0, "the target is down, not us");
    assert_eq!(s.stats().probes_failed, 1);
}

#[test]
fn local_health_is_capped_and_recovers_with_successful_probes() {
    let mut s = joined(N1, &[N2, N3]);
    for i in 1..=20 {
        s.handle_message(t(0), N2, pkt(&format!("gossip | suspect n1 inc={i} by=n2")));
    }
    assert_eq!(s.local_health(), s.config().lhm_max);
    let mut now = 0;
    for _ in 0..40 {
        now = s.poll_timeout().expect("probes are always scheduled").as_nanos() / 1_000_000;
        s.handle_timeout(t(now));
        for (to, p) in sends(&drain(&mut s)) {
            if let Message::Ping { seq } = p.message {
                s.handle_message(t(now + 1), to, pkt(&format!("ack seq={seq}")));
            }
        }
        drain(&mut s);
    }
    assert_eq!(s.local_health(), 0, "at {now} ms");
}

#[test]
fn without_lifeguard_is_plain_swim() {
    assert_eq!(
        SwimConfig { lifeguard: true, ..SwimConfig::without_lifeguard() },
        SwimConfig::default(),
        "only the switch differs"
    );
    let config = SwimConfig { lifeguard: false, ..quiet() };
    let others = [N2, N3, N4, N5];
    let mut s = node_with(N1, config, 1);
    let state: Vec<String> = others.iter().map(|o| format!("alive {o} inc=1")).collect();
    s.handle_message(t(0), N2, pkt(&format!("sync | {}", state.join(" | "))));
    drain(&mut s);
    // A failed probe whose helpers stay silent: no nack asked, no health lost.
    let (target, seq, _) = first_probe(&mut s);
    s.handle_timeout(t(1500));
    for (_, p) in sends(&drain(&mut s)) {
        assert_eq!(p.message, Message::PingReq { seq, target, nack: false });
    }
    s.handle_timeout(t(2000));
    drain(&mut s);
    assert_eq!(s.local_health(), 0);
    assert_eq!(s.scaled_probe_interval(), Duration::from_secs(1));
    // The suspicion lasts its minimum (4 s at 5 members) and confirmations
    // neither shorten it nor are passed on.
    assert_eq!(s.suspicion(target).map(|i| i.deadline), Some(t(2000 + 4000)));
    let other = others.iter().copied().find(|&o| o != target).unwrap();
    s.handle_message(t(2100), other, pkt(&format!("gossip | suspect {target} inc=1 by={other}")));
    assert_eq!(s.suspicion(target).map(|i| (i.deadline, i.confirmations)), Some((t(6000), 0)));
    // Being accused costs no health either.
    s.handle_message(t(2300), other, pkt("gossip | suspect n1 inc=1 by=n2"));
    assert_eq!((s.incarnation(), s.local_health()), (2, 0));
    // No buddy record: once its gossip is spent, an ack to the suspect says
    // nothing about it (with Lifeguard it would lead with the suspicion).
    for seq in 10..40 {
        s.handle_message(t(2400), other, pkt(&format!("ping seq={seq}")));
    }
    drain(&mut s);
    assert!(s.queue.get(target).is_none(), "gossip about {target} spent");
    s.handle_message(t(2500), target, pkt("ping seq=9"));
    let (to, ack) = sends(&drain(&mut s)).remove(0);
    assert_eq!(to, target);
    assert!(ack.updates.iter().all(|u| u.member != target), "{ack}");
}

// ----- robustness ------------------------------------------------------------

#[test]
fn malformed_and_self_addressed_packets_are_counted_and_dropped() {
    let mut s = joined(N1, &[N2]);
    s.handle_message(t(1), N2, Bytes::from_static(&[1, 99]));
    s.handle_message(t(1), N2, Bytes::from_static(&[7, 1, 0]));
    s.handle_message(t(1), N1, pkt("ping seq=1"));
    assert_eq!(s.stats().malformed, 3);
    assert!(drain(&mut s).is_empty());
    s.handle_message(t(2), N2, pkt("ping seq=1"));
    assert_eq!(sends(&drain(&mut s)).len(), 1, "still serving");
    assert_eq!(s.stats().messages_received, 5, "the sync of `joined`, 3 dropped, 1 ping");
}

#[test]
fn stats_count_messages_and_bytes_both_ways() {
    let mut s = joined(N1, &[N2]);
    let before = s.stats();
    let ping = pkt("ping seq=1");
    s.handle_message(t(1), N2, ping.clone());
    let out = drain(&mut s);
    let Output::Send { message, .. } = &out[0] else { panic!() };
    let after = s.stats();
    assert_eq!(after.messages_received - before.messages_received, 1);
    assert_eq!(after.bytes_received - before.bytes_received, ping.len() as u64);
    assert_eq!(after.messages_sent - before.messages_sent, 1);
    assert_eq!(after.bytes_sent - before.bytes_sent, message.len() as u64);
}

#[test]
#[should_panic(expected = "time went backwards")]
fn time_must_not_go_backwards() {
    let mut s = node(N1);
    s.handle_timeout(t(5));
    s.handle_timeout(t(4));
}

#[test]
fn spurious_timeouts_do_nothing() {
    let mut s = joined(N1, &[N2, N3]);
    for ms in [0, 1, 500, 999] {
        s.handle_timeout(t(ms));
        assert!(drain(&mut s).is_empty());
    }
    assert_eq!(s.poll_timeout(), Some(t(1000)));
}

// ----- whole clusters on an in-memory network ---------------------------------

/// A tiny deterministic network: 1 ms latency, crashed nodes, cut links.
struct Net {
    nodes: BTreeMap<NodeId, Swim>,
    config: SwimConfig,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Extra delay for packets *to* a node (a slow node).
    slow: BTreeMap<NodeId, Duration>,
    inflight: BTreeMap<(Instant, u64), (NodeId, NodeId, Bytes)>,
    next: u64,
    now: Instant,
    events: Vec<(Instant, NodeId, MembershipEvent)>,
}

impl Net {
    fn new(n: u64, config: SwimConfig) -> Self {
        let mut net = Net {
            nodes: BTreeMap::new(),
            config,
            cut: BTreeSet::new(),
            slow: BTreeMap::new(),
            inflight: BTreeMap::new(),
            next: 0,
            now: t(0),
            events: Vec::new(),
        };
        for i in 1..=n {
            net.start(NodeId(i), 1, &[N1]);
        }
        net
    }

    fn start(&mut self, id: NodeId, incarnation: u64, seeds: &[NodeId]) {
        let mut s =
            Swim::new(id, self.config.clone(), seeded(id.0 * 1000 + incarnation), self.now, incarnation, Bytes::new());
        let seeds: Vec<NodeId> = seeds.iter().copied().filter(|&x| x != id).collect();
        if !seeds.is_empty() {
            s.join(self.now, &seeds);
        }
        self.nodes.insert(id, s);
        self.pump(id);
    }

    fn crash(&mut self, id: NodeId) {
        self.nodes.remove(&id);
    }

    fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    fn pump(&mut self, id: NodeId) {
        let s = self.nodes.get_mut(&id).expect("live");
        while let Some(o) = s.poll_output() {
            match o {
                Output::Send { to, message } => {
                    let delay = Duration::from_millis(1) + self.slow.get(&to).copied().unwrap_or_default();
                    self.inflight.insert((self.now + delay, self.next), (id, to, message));
                    self.next += 1;
                }
                Output::Event(e) => self.events.push((self.now, id, e)),
                Output::ProbeRtt { .. } => {}
            }
        }
    }

    fn run_until(&mut self, until: Instant) {
        loop {
            let timer = self.nodes.iter().filter_map(|(&id, s)| Some((s.poll_timeout()?, id))).min();
            let packet = self.inflight.keys().next().copied();
            match (packet, timer) {
                (Some(k), timer) if k.0 <= until && timer.is_none_or(|(tt, _)| k.0 <= tt) => {
                    let (from, to, bytes) = self.inflight.remove(&k).expect("listed");
                    self.now = k.0;
                    if self.cut.contains(&(from, to)) {
                        continue;
                    }
                    if let Some(s) = self.nodes.get_mut(&to) {
                        s.handle_message(k.0, from, bytes);
                        self.pump(to);
                    }
                }
                (_, Some((tt, id))) if tt <= until => {
                    // A deadline may lie in the past (a confirmation shortened it).
                    self.now = self.now.max(tt);
                    let now = self.now;
                    self.nodes.get_mut(&id).expect("live").handle_timeout(now);
                    self.pump(id);
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// What `id` believes: member → state.
    fn view(&self, id: NodeId) -> BTreeMap<NodeId, MemberState> {
        self.nodes[&id].members().into_iter().map(|m| (m.id, m.state)).collect()
    }

    fn alive(&self, id: NodeId) -> BTreeSet<NodeId> {
        self.view(id).into_iter().filter(|(_, s)| *s == MemberState::Alive).map(|(m, _)| m).collect()
    }

    fn all_see_alive(&self, expected: &BTreeSet<NodeId>) -> bool {
        self.nodes.keys().filter(|id| expected.contains(id)).all(|&id| &self.alive(id) == expected)
    }

    /// Suspect/Dead events about `about` since `since`.
    fn accusations(&self, since: Instant, about: impl Fn(NodeId) -> bool) -> usize {
        self.events
            .iter()
            .filter(|(at, _, e)| {
                *at >= since
                    && about(e.member)
                    && matches!(e.kind, MembershipEventKind::Suspect | MembershipEventKind::Dead)
            })
            .count()
    }
}

fn ids(range: std::ops::RangeInclusive<u64>) -> BTreeSet<NodeId> {
    range.map(NodeId).collect()
}

#[test]
fn cluster_five_nodes_converge_through_one_seed_without_accusations() {
    let mut net = Net::new(5, SwimConfig::default());
    net.run_for(Duration::from_secs(5));
    assert!(net.all_see_alive(&ids(1..=5)), "{:?}", net.view(N5));
    net.run_for(Duration::from_secs(60));
    assert_eq!(net.accusations(t(0), |_| true), 0);
}

#[test]
fn cluster_a_crash_is_detected_by_every_member() {
    let mut net = Net::new(5, SwimConfig::default());
    net.run_for(Duration::from_secs(10));
    net.crash(N5);
    let crashed_at = net.now;
    net.run_for(Duration::from_secs(30));
    for id in 1..=4 {
        let dead = net
            .events
            .iter()
            .find(|(_, by, e)| *by == NodeId(id) && e.member == N5 && e.kind == MembershipEventKind::Dead);
        let (when, _, _) = dead.unwrap_or_else(|| panic!("n{id} never declared n5 dead"));
        assert!(*when - crashed_at < Duration::from_secs(30), "n{id} took {:?}", *when - crashed_at);
    }
    assert_eq!(net.accusations(t(0), |m| m != N5), 0, "no false positives");
    assert!(net.all_see_alive(&ids(1..=4)));
}

#[test]
fn cluster_a_symmetric_partition_heals_before_and_after_tombstones_are_collected() {
    for (cut_for, label) in [(20, "tombstones kept"), (90, "tombstones collected")] {
        let mut net = Net::new(6, SwimConfig::default());
        net.run_for(Duration::from_secs(10));
        let (a, b): (Vec<NodeId>, Vec<NodeId>) = ((1..=3).map(NodeId).collect(), (4..=6).map(NodeId).collect());
        net.partition(&a, &b);
        net.run_for(Duration::from_secs(cut_for));
        assert_eq!(net.alive(N1), ids(1..=3), "{label}: each side sees only itself");
        assert_eq!(net.alive(N5), ids(4..=6), "{label}");
        net.cut.clear();
        net.run_for(Duration::from_secs(60));
        assert!(net.all_see_alive(&ids(1..=6)), "{label}: {:?} / {:?}", net.view(N1), net.view(N5));
    }
}

#[test]
fn cluster_an_isolated_seed_recovers_after_everyone_forgot_it() {
    // foca#15: the isolated node (here the seed itself) must come back even
    // once both sides have collected each other's tombstones.
    let mut net = Net::new(5, SwimConfig::default());
    net.run_for(Duration::from_secs(10));
    let rest: Vec<NodeId> = (2..=5).map(NodeId).collect();
    net.partition(&[N1], &rest);
    net.run_for(Duration::from_secs(120));
    assert_eq!(net.view(N1).len(), 1, "n1 forgot everyone: {:?}", net.view(N1));
    assert!(!net.view(N2).contains_key(&N1), "and was forgotten");
    net.cut.clear();
    net.run_for(Duration::from_secs(30));
    assert!(net.all_see_alive(&ids(1..=5)), "{:?} / {:?}", net.view(N1), net.view(N2));
}

#[test]
fn cluster_a_restart_with_a_lower_incarnation_rejoins() {
    let mut net = Net::new(5, SwimConfig::default());
    net.run_for(Duration::from_secs(5));
    for i in 0..3 {
        net.run_for(Duration::from_millis(1));
        let now = net.now;
        net.nodes.get_mut(&N5).unwrap().set_metadata(now, Bytes::from(format!("v{i}")));
        net.pump(N5);
    }
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.nodes[&N1].member(N5).unwrap().incarnation, 4);
    net.crash(N5);
    net.run_for(Duration::from_secs(25));
    assert_eq!(net.view(N1)[&N5], MemberState::Dead);
    net.start(N5, 1, &[N1]);
    net.run_for(Duration::from_secs(10));
    assert!(net.all_see_alive(&ids(1..=5)), "{:?}", net.view(N2));
    assert!(net.nodes[&N5].incarnation() > 4, "jumped above its tombstone");
}

#[test]
fn cluster_a_graceful_leave_is_seen_as_left_not_dead() {
    let mut net = Net::new(5, SwimConfig::default());
    net.run_for(Duration::from_secs(5));
    let now = net.now;
    net.nodes.get_mut(&N3).unwrap().leave(now);
    net.pump(N3);
    net.run_for(Duration::from_secs(3));
    net.crash(N3);
    net.run_for(Duration::from_secs(10));
    for id in [N1, N2, N4, N5] {
        assert_eq!(net.view(id).get(&N3), Some(&MemberState::Left), "{id}");
    }
    assert_eq!(net.accusations(t(0), |_| true), 0);
}

#[test]
fn cluster_lifeguard_keeps_a_slow_node_from_accusing_healthy_ones() {
    // n5 receives everything 1.2 s late (more than the protocol period): its
    // own probes look failed. Without Lifeguard it accuses healthy members;
    // with it, missing nacks raise its LHM and it slows down instead.
    let run = |lhm_max: u32| {
        let mut net = Net::new(8, SwimConfig { lhm_max, ..SwimConfig::default() });
        net.run_for(Duration::from_secs(5));
        net.slow.insert(N5, Duration::from_millis(1200));
        let since = net.now;
        net.run_for(Duration::from_secs(120));
        let from_slow = net
            .events
            .iter()
            .filter(|(at, by, e)| *at >= since && *by == N5 && e.kind == MembershipEventKind::Suspect)
            .count();
        (from_slow, net.nodes[&N5].local_health())
    };
    let (without, _) = run(0);
    let (with, lhm) = run(7);
    eprintln!("suspicions raised by the slow node: {with} with Lifeguard, {without} without; lhm {lhm}");
    assert!(with * 2 < without, "Lifeguard: {with} suspicions raised by the slow node, without: {without}");
}

#[test]
fn cluster_runs_are_deterministic() {
    let run = || {
        let mut net = Net::new(6, SwimConfig::default());
        net.run_for(Duration::from_secs(10));
        net.crash(N4);
        net.partition(&[N1, N2], &[N5, N6]);
        net.run_for(Duration::from_secs(20));
        net.cut.clear();
        net.run_for(Duration::from_secs(20));
        let stats: Vec<SwimStats> = net.nodes.values().map(Swim::stats).collect();
        (net.events.iter().map(|(at, by, e)| format!("{at} {by} {e}")).collect::<Vec<_>>(), stats)
    };
    assert_eq!(run(), run());
}

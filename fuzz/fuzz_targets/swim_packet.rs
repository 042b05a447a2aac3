//! SWIM datagrams come from the network. Decoding must never panic, and
//! whatever decodes must re-encode to exactly the input (the encoding is
//! canonical). Then the packet is fed to a state machine that knows a few
//! members, from one of a few senders (itself included), and a minute of
//! timeouts runs: no input may panic it or break its invariants (checked
//! after every input in debug builds).
#![no_main]

use bytes::Bytes;
use kaelix_cluster::swim::wire::{Message, Packet, Update, UpdateKind};
use kaelix_cluster::swim::{Swim, SwimConfig};
use kaelix_core::NodeId;
use kaelix_core::rng::seeded;
use kaelix_core::time::{Duration, Instant};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&from, packet)) = data.split_first() else { return };
    let input = Bytes::copy_from_slice(packet);
    if let Ok(p) = Packet::decode(input.clone()) {
        assert_eq!(p.encoded_len(), packet.len());
        assert_eq!(p.encode(), input, "decode/encode is not a bijection");
    }

    let mut swim = Swim::new(NodeId(1), SwimConfig::default(), seeded(7), Instant::ZERO, 3, Bytes::new());
    let known = Packet {
        message: Message::Sync,
        updates: (2..=4)
            .map(|m| Update { member: NodeId(m), incarnation: 2, kind: UpdateKind::Alive { metadata: Bytes::new() } })
            .collect(),
    };
    swim.handle_message(Instant::ZERO, NodeId(2), known.encode());
    let mut now = Instant::ZERO + Duration::from_millis(1);
    swim.handle_message(now, NodeId(u64::from(from % 6)), input);
    while swim.poll_output().is_some() {}
    for _ in 0..60 {
        now = swim.poll_timeout().map_or(now + Duration::from_secs(1), |t| t.min(now + Duration::from_secs(1))).max(now);
        swim.handle_timeout(now);
        while swim.poll_output().is_some() {}
    }
    assert!(swim.incarnation() >= 3, "our incarnation only grows");
});

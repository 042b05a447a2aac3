//! Raft wire format, version 1: one datagram is one [`Message`] between two
//! members of one Raft group.
//!
//! ```text
//! datagram := version:u8 (= 1)  group:u64  term:u64  kind:u8  body
//! body     := PreVote           (kind 1):  last_index:u64 last_term:u64
//!           | PreVoteResponse   (kind 2):  granted:bool
//!           | Vote              (kind 3):  last_index:u64 last_term:u64 transfer:bool
//!           | VoteResponse      (kind 4):  granted:bool
//!           | Append            (kind 5):  prev_index:u64 prev_term:u64 commit:u64 count:u32 entry{count}
//!           | AppendResponse    (kind 6):  success:bool index:u64 hint:u64
//!           | Heartbeat         (kind 7):  commit:u64 round:u64
//!           | HeartbeatResponse (kind 8):  round:u64
//!           | Snapshot          (kind 9):  index:u64 snapshot_term:u64 config offset:u64 done:bool len:u32 data[len]
//!           | SnapshotResponse  (kind 10): index:u64 offset:u64 done:bool
//!           | TimeoutNow        (kind 11): empty
//! entry    := term:u64 payload           (its index is implicit: prev_index + 1 + k)
//! payload  := Noop (tag 0) | Normal (tag 1): len:u32 data[len] | Config (tag 2): config
//! config   := nodes(voters) nodes(outgoing) nodes(learners)
//! nodes    := count:u16 id:u64{count}    (strictly ascending)
//! bool     := u8, 0 or 1
//! ```
//!
//! Integers are little-endian. `group` names the Raft group (one per
//! replicated partition), so one transport carries every group of a node.
//!
//! **Canonical**: every message has exactly one encoding, so `decode(b)`
//! succeeding implies `encode(decode(b)) == b` (proptest and the
//! `raft_message` fuzz target check it). That is why node sets must be
//! strictly ascending and booleans 0 or 1, and why entries carry no index
//! of their own: an `Append`'s entries are dense from `prev_index + 1` by
//! construction.
//!
//! **Structure is validated**, so the core only ever sees messages a correct
//! member could send: an `Append`'s entry terms never decrease, start at or
//! above `prev_term` and none is above the message's term; a log's last
//! term (`PreVote`, `Vote`) and a snapshot's term are at most the message's
//! term; only index 0 (the empty prefix) has term 0, so every entry and
//! snapshot has a term of at least 1; no index or offset overflows; no node
//! is both voter and learner.
//! Whether the *values* are right (is this sender the leader, does that
//! index exist here?) is the core's business, not the codec's.
//!
//! **Decoding never panics**, names what is wrong ([`WireError`]), and
//! never allocates more than the input can hold: it reads through
//! [`kaelix_core::codec::Reader`], and every count and length is checked
//! against the bytes that remain before anything is reserved.
//! Entry payloads and snapshot chunks are sliced from the received buffer,
//! not copied.
//!
//! A new version gets a new version byte; a member drops (and counts)
//! datagrams of a version it does not speak, as it drops any malformed one.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use kaelix_core::NodeId;
use kaelix_core::codec::{self, CodecError, Reader};

use super::{Body, Configuration, Entry, EntryPayload, Message};

/// The version byte this module writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the body: version, group, term, kind.
pub const HEADER_BYTES: usize = 1 + 8 + 8 + 1;
/// The fewest bytes one entry takes (a `Noop`: term and tag).
const MIN_ENTRY_BYTES: usize = 9;

/// Why a datagram does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A field cut short, or bytes after a complete message (each names the
    /// field).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A version this member does not speak.
    #[error("unknown wire version {0} (this member speaks {VERSION})")]
    UnknownVersion(u8),
    /// An unknown message kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// An unknown entry payload tag.
    #[error("unknown entry payload tag {0}")]
    UnknownPayload(u8),
    /// Well-formed bytes that no correct member sends.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

impl Body {
    fn wire_kind(&self) -> u8 {
        match self {
            Body::PreVote { .. } => 1,
            Body::PreVoteResponse { .. } => 2,
            Body::Vote { .. } => 3,
            Body::VoteResponse { .. } => 4,
            Body::Append { .. } => 5,
            Body::AppendResponse { .. } => 6,
            Body::Heartbeat { .. } => 7,
            Body::HeartbeatResponse { .. } => 8,
            Body::Snapshot { .. } => 9,
            Body::SnapshotResponse { .. } => 10,
            Body::TimeoutNow => 11,
        }
    }
}

fn nodes_len(set: &BTreeSet<NodeId>) -> usize {
    2 + 8 * set.len()
}

fn config_len(c: &Configuration) -> usize {
    nodes_len(&c.voters) + nodes_len(&c.outgoing) + nodes_len(&c.learners)
}

fn entry_len(e: &Entry) -> usize {
    8 + 1
        + match &e.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Normal(data) => 4 + data.len(),
            EntryPayload::Config(c) => config_len(c),
        }
}

/// The exact length of [`encode`]'s output for `message`.
pub fn encoded_len(message: &Message) -> usize {
    HEADER_BYTES
        + match &message.body {
            Body::PreVote { .. } => 16,
            Body::PreVoteResponse { .. } | Body::VoteResponse { .. } => 1,
            Body::Vote { .. } => 17,
            Body::Append { entries, .. } => 24 + 4 + entries.iter().map(entry_len).sum::<usize>(),
            Body::AppendResponse { .. } => 17,
            Body::Heartbeat { .. } => 16,
            Body::SnapshotResponse { .. } => 17,
            Body::HeartbeatResponse { .. } => 8,
            Body::Snapshot { config, data, .. } => 16 + config_len(config) + 8 + 1 + 4 + data.len(),
            Body::TimeoutNow => 0,
        }
}

fn put_nodes(out: &mut BytesMut, set: &BTreeSet<NodeId>) {
    let count = u16::try_from(set.len()).expect("at most 65535 nodes in one set");
    out.put_u16_le(count);
    // A BTreeSet iterates in ascending order: the canonical order.
    for n in set {
        out.put_u64_le(n.0);
    }
}

fn put_config(out: &mut BytesMut, c: &Configuration) {
    put_nodes(out, &c.voters);
    put_nodes(out, &c.outgoing);
    put_nodes(out, &c.learners);
}

fn put_len(out: &mut BytesMut, len: usize, what: &str) {
    out.put_u32_le(u32::try_from(len).unwrap_or_else(|_| panic!("{what} over 4 GiB")));
}

/// Encodes `message` of Raft group `group`. Panics on what the format
/// cannot carry: `Append` entries that are not dense from `prev_index + 1`,
/// more than 2³² entries or payload bytes, more than 65535 nodes in a set.
pub fn encode(group: u64, message: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(encoded_len(message));
    out.put_u8(VERSION);
    out.put_u64_le(group);
    out.put_u64_le(message.term);
    out.put_u8(message.body.wire_kind());
    match &message.body {
        Body::PreVote { last_index, last_term } => {
            out.put_u64_le(*last_index);
            out.put_u64_le(*last_term);
        }
        Body::PreVoteResponse { granted } | Body::VoteResponse { granted } => out.put_u8(u8::from(*granted)),
        Body::Vote { last_index, last_term, transfer } => {
            out.put_u64_le(*last_index);
            out.put_u64_le(*last_term);
            out.put_u8(u8::from(*transfer));
        }
        Body::Append { prev_index, prev_term, entries, commit } => {
            out.put_u64_le(*prev_index);
            out.put_u64_le(*prev_term);
            out.put_u64_le(*commit);
            put_len(&mut out, entries.len(), "entry count");
            for (k, e) in entries.iter().enumerate() {
                assert_eq!(
                    Some(e.index),
                    prev_index.checked_add(1 + k as u64),
                    "append entries are dense from prev_index + 1"
                );
                out.put_u64_le(e.term);
                match &e.payload {
                    EntryPayload::Noop => out.put_u8(0),
                    EntryPayload::Normal(data) => {
                        out.put_u8(1);
                        codec::put_bytes_u32(&mut out, data);
                    }
                    EntryPayload::Config(c) => {
                        out.put_u8(2);
                        put_config(&mut out, c);
                    }
                }
            }
        }
        Body::AppendResponse { success, index, hint } => {
            out.put_u8(u8::from(*success));
            out.put_u64_le(*index);
            out.put_u64_le(*hint);
        }
        Body::Heartbeat { commit, round } => {
            out.put_u64_le(*commit);
            out.put_u64_le(*round);
        }
        Body::HeartbeatResponse { round } => out.put_u64_le(*round),
        Body::Snapshot { index, snapshot_term, config, offset, data, done } => {
            out.put_u64_le(*index);
            out.put_u64_le(*snapshot_term);
            put_config(&mut out, config);
            out.put_u64_le(*offset);
            out.put_u8(u8::from(*done));
            codec::put_bytes_u32(&mut out, data);
        }
        Body::SnapshotResponse { index, offset, done } => {
            out.put_u64_le(*index);
            out.put_u64_le(*offset);
            out.put_u8(u8::from(*done));
        }
        Body::TimeoutNow => {}
    }
    debug_assert_eq!(out.len(), encoded_len(message));
    out.freeze()
}

/// A boolean byte; anything but 0 or 1 is `invalid`.
fn bool(r: &mut Reader<'_>, what: &'static str, invalid: &'static str) -> Result<bool, WireError> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(WireError::Invalid(invalid)),
    }
}

/// A `u32` length (payloads are limited by the datagram, not by a field).
fn read_len(r: &mut Reader<'_>, what: &'static str) -> Result<usize, WireError> {
    usize::try_from(r.u32(what)?).map_err(|_| WireError::Invalid("length does not fit in memory"))
}

fn nodes(r: &mut Reader<'_>, what: &'static str) -> Result<BTreeSet<NodeId>, WireError> {
    let count = usize::from(r.u16(what)?);
    let mut set = BTreeSet::new();
    let mut last = None;
    for id in r.u64s(count, what)? {
        if last.is_some_and(|l| id <= l) {
            return Err(WireError::Invalid("node set not strictly ascending"));
        }
        last = Some(id);
        set.insert(NodeId(id));
    }
    Ok(set)
}

fn config(r: &mut Reader<'_>) -> Result<Configuration, WireError> {
    let voters = nodes(r, "voters")?;
    let outgoing = nodes(r, "outgoing voters")?;
    let learners = nodes(r, "learners")?;
    if !voters.is_disjoint(&learners) {
        return Err(WireError::Invalid("a node is both voter and learner"));
    }
    Ok(Configuration { voters, outgoing, learners })
}

/// Decodes one datagram: the group it belongs to and the message. Payloads
/// are slices of `bytes`.
pub fn decode(bytes: Bytes) -> Result<(u64, Message), WireError> {
    let mut r = Reader::new(&bytes);
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let group = r.u64("group")?;
    let term = r.u64("term")?;
    let body = match r.u8("message kind")? {
        1 => {
            let last_index = r.u64("pre-vote last index")?;
            let last_term = r.u64("pre-vote last term")?;
            if last_term > term {
                return Err(WireError::Invalid("pre-vote log term above the message term"));
            }
            check_position(last_index, last_term)?;
            Body::PreVote { last_index, last_term }
        }
        2 => Body::PreVoteResponse { granted: bool(&mut r, "pre-vote granted", "pre-vote granted is not 0 or 1")? },
        3 => {
            let last_index = r.u64("vote last index")?;
            let last_term = r.u64("vote last term")?;
            let transfer = bool(&mut r, "vote transfer", "vote transfer is not 0 or 1")?;
            if last_term > term {
                return Err(WireError::Invalid("vote log term above the message term"));
            }
            check_position(last_index, last_term)?;
            Body::Vote { last_index, last_term, transfer }
        }
        4 => Body::VoteResponse { granted: bool(&mut r, "vote granted", "vote granted is not 0 or 1")? },
        5 => decode_append(&mut r, term)?,
        6 => Body::AppendResponse {
            success: bool(&mut r, "append success", "append success is not 0 or 1")?,
            index: r.u64("append response index")?,
            hint: r.u64("append response hint")?,
        },
        7 => Body::Heartbeat { commit: r.u64("heartbeat commit")?, round: r.u64("heartbeat round")? },
        8 => Body::HeartbeatResponse { round: r.u64("heartbeat response round")? },
        9 => {
            let index = r.u64("snapshot index")?;
            let snapshot_term = r.u64("snapshot term")?;
            if snapshot_term > term {
                return Err(WireError::Invalid("snapshot term above the message term"));
            }
            if index == 0 {
                return Err(WireError::Invalid("snapshot of index 0"));
            }
            check_position(index, snapshot_term)?;
            let config = config(&mut r)?;
            let offset = r.u64("snapshot offset")?;
            let done = bool(&mut r, "snapshot done", "snapshot done is not 0 or 1")?;
            let len = read_len(&mut r, "snapshot chunk length")?;
            if offset.checked_add(len as u64).is_none() {
                return Err(WireError::Invalid("snapshot chunk ends past 2^64"));
            }
            let data = r.bytes(len, "snapshot chunk")?;
            Body::Snapshot { index, snapshot_term, config, offset, data, done }
        }
        10 => Body::SnapshotResponse {
            index: r.u64("snapshot response index")?,
            offset: r.u64("snapshot response offset")?,
            done: bool(&mut r, "snapshot response done", "snapshot response done is not 0 or 1")?,
        },
        11 => Body::TimeoutNow,
        kind => return Err(WireError::UnknownKind(kind)),
    };
    r.finish("message")?;
    Ok((group, Message { term, body }))
}

/// A log position (index, term): only the empty prefix, index 0, has term 0.
fn check_position(index: u64, term: u64) -> Result<(), WireError> {
    if (index == 0) != (term == 0) {
        return Err(WireError::Invalid("only index 0 has term 0"));
    }
    Ok(())
}

fn decode_append(r: &mut Reader<'_>, term: u64) -> Result<Body, WireError> {
    let prev_index = r.u64("append prev index")?;
    let prev_term = r.u64("append prev term")?;
    let commit = r.u64("append commit")?;
    let count = read_len(r, "entry count")?;
    if prev_term > term {
        return Err(WireError::Invalid("append prev term above the message term"));
    }
    check_position(prev_index, prev_term)?;
    if prev_index.checked_add(count as u64).is_none() {
        return Err(WireError::Invalid("append entries run past index 2^64"));
    }
    // Refuse a count the input cannot hold before reserving for it.
    r.need(count.saturating_mul(MIN_ENTRY_BYTES), "entries")?;
    let mut entries = Vec::with_capacity(count);
    let mut last_term = prev_term;
    for k in 0..count {
        let entry_term = r.u64("entry term")?;
        if entry_term < last_term {
            return Err(WireError::Invalid("append entry terms decrease"));
        }
        if entry_term > term {
            return Err(WireError::Invalid("append entry term above the message term"));
        }
        if entry_term == 0 {
            return Err(WireError::Invalid("an entry of term 0"));
        }
        last_term = entry_term;
        let payload = match r.u8("entry payload tag")? {
            0 => EntryPayload::Noop,
            1 => {
                let len = read_len(r, "entry payload length")?;
                EntryPayload::Normal(r.bytes(len, "entry payload")?)
            }
            2 => EntryPayload::Config(config(r)?),
            tag => return Err(WireError::UnknownPayload(tag)),
        };
        entries.push(Entry { index: prev_index + 1 + k as u64, term: entry_term, payload });
    }
    Ok(Body::Append { prev_index, prev_term, entries, commit })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = NodeId> {
        prop_oneof![1u64..8, any::<u64>()].prop_map(NodeId)
    }

    fn nodes() -> impl Strategy<Value = BTreeSet<NodeId>> {
        proptest::collection::btree_set(node(), 0..5)
    }

    pub(crate) fn data() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            Just(Bytes::new()),
            "[a-z0-9]{1,12}".prop_map(Bytes::from),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from),
        ]
    }

    pub(crate) fn configuration() -> impl Strategy<Value = Configuration> {
        (nodes(), nodes(), nodes()).prop_map(|(voters, outgoing, learners)| {
            let learners = learners.difference(&voters).copied().collect();
            Configuration { voters, outgoing, learners }
        })
    }

    fn payload() -> impl Strategy<Value = EntryPayload> {
        prop_oneof![
            Just(EntryPayload::Noop),
            data().prop_map(EntryPayload::Normal),
            configuration().prop_map(EntryPayload::Config),
        ]
    }

    fn index() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..20, any::<u64>()]
    }

    /// A log position a member of `term` may name: the empty prefix, or an
    /// index from 1 with a term in `1..=term`.
    fn position(term: u64, max_index: u64) -> BoxedStrategy<(u64, u64)> {
        if term == 0 {
            return Just((0, 0)).boxed();
        }
        prop_oneof![Just((0, 0)), (1..=max_index, 1..=term)].boxed()
    }

    /// A well-formed `Append` of `term`: terms ascend from `prev_term`,
    /// none is 0 or above `term`.
    fn append(term: u64) -> impl Strategy<Value = Body> {
        let steps = proptest::collection::vec((any::<bool>(), payload()), 0..6);
        (position(term, 1_000), steps, index()).prop_map(move |((prev_index, prev_term), steps, commit)| {
            let mut t = prev_term.max(1);
            let count = if term == 0 { 0 } else { steps.len() };
            let entries = steps
                .into_iter()
                .take(count)
                .enumerate()
                .map(|(k, (bump, payload))| {
                    if bump && t < term {
                        t += 1;
                    }
                    Entry { index: prev_index + 1 + k as u64, term: t, payload }
                })
                .collect();
            Body::Append { prev_index, prev_term, entries, commit }
        })
    }

    fn message_of(term: u64) -> impl Strategy<Value = Message> {
        let at = move |body: Body| Message { term, body };
        // A snapshot has an index and so a term of at least 1.
        let snapshot_term = term.max(1);
        let snapshot = (position(snapshot_term, u64::MAX), configuration(), 0u64..1 << 40, data(), any::<bool>())
            .prop_filter("a snapshot of index 0", |(p, ..)| p.0 > 0)
            .prop_map(move |((index, st), config, offset, data, done)| Message {
                term: snapshot_term,
                body: Body::Snapshot { index, snapshot_term: st, config, offset, data, done },
            });
        prop_oneof![
            position(term, u64::MAX)
                .prop_map(move |(last_index, last_term)| at(Body::PreVote { last_index, last_term })),
            any::<bool>().prop_map(move |granted| at(Body::PreVoteResponse { granted })),
            (position(term, u64::MAX), any::<bool>()).prop_map(move |((last_index, last_term), transfer)| at(
                Body::Vote { last_index, last_term, transfer }
            )),
            any::<bool>().prop_map(move |granted| at(Body::VoteResponse { granted })),
            append(term).prop_map(at),
            (any::<bool>(), index(), index()).prop_map(move |(success, index, hint)| at(Body::AppendResponse {
                success,
                index,
                hint
            })),
            (index(), index()).prop_map(move |(commit, round)| at(Body::Heartbeat { commit, round })),
            index().prop_map(move |round| at(Body::HeartbeatResponse { round })),
            snapshot,
            (index(), index(), any::<bool>()).prop_map(move |(index, offset, done)| at(Body::SnapshotResponse {
                index,
                offset,
                done
            })),
            Just(at(Body::TimeoutNow)),
        ]
    }

    /// Any message a correct member could send.
    pub(crate) fn message() -> impl Strategy<Value = Message> {
        prop_oneof![0u64..10, any::<u64>()].prop_flat_map(message_of)
    }

    proptest! {
        #[test]
        fn messages_round_trip(group in any::<u64>(), m in message()) {
            let wire = encode(group, &m);
            prop_assert_eq!(wire.len(), encoded_len(&m));
            prop_assert_eq!(decode(wire), Ok((group, m)));
        }

        /// Every strict prefix of a valid datagram is rejected, never misread.
        #[test]
        fn prefixes_are_rejected(m in message()) {
            let full = encode(7, &m);
            for cut in 0..full.len() {
                prop_assert!(decode(full.slice(..cut)).is_err(), "prefix of {} bytes accepted", cut);
            }
        }

        /// Whatever decodes re-encodes to exactly the input, and arbitrary
        /// bytes never panic (starting from a valid header, so the fuzz
        /// reaches the bodies).
        #[test]
        fn decoding_is_canonical(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..160),
            kind in 1u8..=11,
            term in 0u64..4,
        ) {
            if bytes.len() >= HEADER_BYTES {
                bytes[0] = VERSION;
                bytes[9..17].copy_from_slice(&term.to_le_bytes());
                bytes[17] = kind;
            }
            if let Ok((group, m)) = decode(Bytes::from(bytes.clone())) {
                prop_assert_eq!(&encode(group, &m)[..], &bytes[..]);
            }
        }

        /// Flipping any one byte of a valid datagram either fails to decode
        /// or decodes to something that re-encodes to the flipped bytes.
        #[test]
        fn corrupted_datagrams_stay_canonical(m in message(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
            let mut bytes = encode(3, &m).to_vec();
            let at = at.index(bytes.len());
            bytes[at] ^= xor;
            if let Ok((group, back)) = decode(Bytes::from(bytes.clone())) {
                prop_assert_eq!(&encode(group, &back)[..], &bytes[..]);
            }
        }
    }

    fn header(term: u64, kind: u8) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(VERSION);
        b.put_u64_le(42);
        b.put_u64_le(term);
        b.put_u8(kind);
        b
    }

    fn err(b: BytesMut) -> WireError {
        decode(b.freeze()).expect_err("must not decode")
    }

    #[test]
    fn layout_is_as_documented() {
        let m = Message {
            term: 3,
            body: Body::Append {
                prev_index: 1,
                prev_term: 2,
                commit: 1,
                entries: vec![
                    Entry { index: 2, term: 2, payload: EntryPayload::Noop },
                    Entry { index: 3, term: 3, payload: EntryPayload::Normal(Bytes::from_static(b"ab")) },
                    Entry { index: 4, term: 3, payload: EntryPayload::Config(Configuration::new([NodeId(5)])) },
                ],
            },
        };
        let mut expected = header(3, 5);
        for v in [1u64, 2, 1] {
            expected.put_u64_le(v);
        }
        expected.put_u32_le(3);
        expected.put_u64_le(2);
        expected.put_u8(0);
        expected.put_u64_le(3);
        expected.put_u8(1);
        expected.put_u32_le(2);
        expected.put_slice(b"ab");
        expected.put_u64_le(3);
        expected.put_u8(2);
        expected.put_u16_le(1);
        expected.put_u64_le(5);
        expected.put_u16_le(0);
        expected.put_u16_le(0);
        assert_eq!(&encode(42, &m)[..], &expected[..]);
        let tn = Message { term: 9, body: Body::TimeoutNow };
        assert_eq!(encode(1, &tn).len(), HEADER_BYTES);
    }

    #[test]
    fn every_kind_has_its_documented_number() {
        let bodies = [
            Body::PreVote { last_index: 0, last_term: 0 },
            Body::PreVoteResponse { granted: true },
            Body::Vote { last_index: 0, last_term: 0, transfer: false },
            Body::VoteResponse { granted: false },
            Body::Append { prev_index: 0, prev_term: 0, entries: vec![], commit: 0 },
            Body::AppendResponse { success: true, index: 0, hint: 0 },
            Body::Heartbeat { commit: 0, round: 0 },
            Body::HeartbeatResponse { round: 0 },
            Body::Snapshot {
                index: 1,
                snapshot_term: 1,
                config: Configuration::default(),
                offset: 0,
                data: Bytes::new(),
                done: true,
            },
            Body::SnapshotResponse { index: 1, offset: 0, done: true },
            Body::TimeoutNow,
        ];
        for (k, body) in bodies.into_iter().enumerate() {
            let m = Message { term: 1, body };
            let wire = encode(0, &m);
            assert_eq!(usize::from(wire[17]), k + 1, "{}", m.body.kind());
            assert_eq!(wire.len(), encoded_len(&m), "{}", m.body.kind());
            assert_eq!(decode(wire), Ok((0, m)));
        }
    }

    #[test]
    fn framing_errors_name_the_problem() {
        assert_eq!(decode(Bytes::new()), Err(CodecError::Truncated { field: "version", needed: 1 }.into()));
        let e = decode(Bytes::from_static(&[2])).unwrap_err();
        assert_eq!(e, WireError::UnknownVersion(2));
        assert_eq!(e.to_string(), "unknown wire version 2 (this member speaks 1)");
        let e = decode(Bytes::from_static(&[1, 0, 0, 0])).unwrap_err();
        assert_eq!(e.to_string(), "truncated group: needed 5 more bytes");
        assert_eq!(err(header(1, 0)), WireError::UnknownKind(0));
        assert_eq!(err(header(1, 12)).to_string(), "unknown message kind 12");
        let mut b = header(1, 8);
        b.put_u32_le(0);
        assert_eq!(err(b), CodecError::Truncated { field: "heartbeat response round", needed: 4 }.into());
        let mut b = encode(0, &Message { term: 1, body: Body::TimeoutNow }).to_vec();
        b.extend_from_slice(&[0, 0]);
        let e = decode(Bytes::from(b)).unwrap_err();
        assert_eq!(
            (e.clone(), e.to_string()),
            (CodecError::Trailing { kind: "message", len: 2 }.into(), "2 trailing bytes after the message".into())
        );
    }

    #[test]
    fn booleans_are_zero_or_one() {
        let mut b = header(1, 2);
        b.put_u8(2);
        assert_eq!(err(b).to_string(), "invalid message: pre-vote granted is not 0 or 1");
        let mut b = header(1, 4);
        b.put_u8(0xff);
        assert_eq!(err(b), WireError::Invalid("vote granted is not 0 or 1"));
        let mut b = header(1, 3);
        b.put_u64_le(0);
        b.put_u64_le(0);
        b.put_u8(7);
        assert_eq!(err(b), WireError::Invalid("vote transfer is not 0 or 1"));
        let mut b = header(1, 6);
        b.put_u8(3);
        b.put_u64_le(0);
        b.put_u64_le(0);
        assert_eq!(err(b), WireError::Invalid("append success is not 0 or 1"));
        let mut b = header(1, 10);
        b.put_u64_le(1);
        b.put_u64_le(0);
        b.put_u8(9);
        assert_eq!(err(b), WireError::Invalid("snapshot response done is not 0 or 1"));
        let mut b = header(1, 9);
        b.put_u64_le(1);
        b.put_u64_le(1);
        b.put_slice(&[0; 6]);
        b.put_u64_le(0);
        b.put_u8(2);
        b.put_u32_le(0);
        assert_eq!(err(b), WireError::Invalid("snapshot done is not 0 or 1"));
    }

    #[test]
    fn log_terms_above_the_message_term_are_refused() {
        let mut b = header(3, 1);
        b.put_u64_le(10);
        b.put_u64_le(4);
        assert_eq!(err(b), WireError::Invalid("pre-vote log term above the message term"));
        let mut b = header(3, 3);
        b.put_u64_le(10);
        b.put_u64_le(4);
        b.put_u8(0);
        assert_eq!(err(b), WireError::Invalid("vote log term above the message term"));
        let mut b = header(3, 9);
        b.put_u64_le(10);
        b.put_u64_le(4);
        assert_eq!(err(b), WireError::Invalid("snapshot term above the message term"));
    }

    #[test]
    fn only_index_zero_has_term_zero() {
        let e = WireError::Invalid("only index 0 has term 0");
        let mut b = header(3, 1);
        b.put_u64_le(5);
        b.put_u64_le(0);
        assert_eq!(err(b), e, "pre-vote from a non-empty log of term 0");
        let mut b = header(3, 3);
        b.put_u64_le(0);
        b.put_u64_le(2);
        b.put_u8(0);
        assert_eq!(err(b), e, "vote from an empty log of term 2");
        assert_eq!(err(append_header(3, 0, 1, 0)), e, "append after the empty prefix of term 1");
        assert_eq!(err(append_header(3, 4, 0, 0)), e, "append after index 4 of term 0");
        let mut b = append_header(3, 0, 0, 1);
        b.put_u64_le(0);
        b.put_u8(0);
        assert_eq!(err(b), WireError::Invalid("an entry of term 0"));
        let mut b = header(3, 9);
        b.put_u64_le(0);
        b.put_u64_le(0);
        assert_eq!(err(b), WireError::Invalid("snapshot of index 0"));
        let mut b = header(3, 9);
        b.put_u64_le(7);
        b.put_u64_le(0);
        assert_eq!(err(b), e, "snapshot of term 0");
    }

    fn append_header(term: u64, prev_index: u64, prev_term: u64, count: u32) -> BytesMut {
        let mut b = header(term, 5);
        b.put_u64_le(prev_index);
        b.put_u64_le(prev_term);
        b.put_u64_le(0);
        b.put_u32_le(count);
        b
    }

    #[test]
    fn append_structure_is_validated() {
        assert_eq!(err(append_header(2, 5, 3, 0)), WireError::Invalid("append prev term above the message term"));
        let mut b = append_header(3, 5, 2, 1);
        b.put_u64_le(1);
        b.put_u8(0);
        assert_eq!(err(b), WireError::Invalid("append entry terms decrease"));
        let mut b = append_header(3, 5, 2, 2);
        b.put_u64_le(3);
        b.put_u8(0);
        b.put_u64_le(2);
        b.put_u8(0);
        assert_eq!(err(b), WireError::Invalid("append entry terms decrease"));
        let mut b = append_header(3, 5, 2, 1);
        b.put_u64_le(4);
        b.put_u8(0);
        assert_eq!(err(b), WireError::Invalid("append entry term above the message term"));
        let b = append_header(3, u64::MAX, 2, 1);
        assert_eq!(err(b), WireError::Invalid("append entries run past index 2^64"));
        let mut b = append_header(3, 5, 2, 1);
        b.put_u64_le(3);
        b.put_u8(3);
        assert_eq!(err(b), WireError::UnknownPayload(3));
        let mut b = append_header(3, 5, 2, 1);
        b.put_u64_le(3);
        b.put_u8(1);
        b.put_u32_le(10);
        b.put_slice(b"short");
        assert_eq!(err(b), CodecError::Truncated { field: "entry payload", needed: 5 }.into());
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        // Four billion entries claimed, nine bytes present: refused without
        // reserving room for them.
        let mut b = append_header(3, 5, 2, u32::MAX);
        b.put_u64_le(3);
        b.put_u8(0);
        assert!(matches!(err(b), WireError::Codec(CodecError::Truncated { field: "entries", .. })));
        let mut b = header(3, 9);
        b.put_u64_le(1);
        b.put_u64_le(1);
        b.put_u16_le(u16::MAX);
        assert!(matches!(err(b), WireError::Codec(CodecError::Truncated { field: "voters", .. })));
        let mut b = header(3, 9);
        b.put_u64_le(1);
        b.put_u64_le(1);
        b.put_slice(&[0; 6]);
        b.put_u64_le(0);
        b.put_u8(1);
        b.put_u32_le(u32::MAX);
        assert!(matches!(err(b), WireError::Codec(CodecError::Truncated { field: "snapshot chunk", .. })));
        let mut b = header(3, 9);
        b.put_u64_le(1);
        b.put_u64_le(1);
        b.put_slice(&[0; 6]);
        b.put_u64_le(u64::MAX);
        b.put_u8(1);
        b.put_u32_le(1);
        b.put_u8(0);
        assert_eq!(err(b), WireError::Invalid("snapshot chunk ends past 2^64"));
    }

    fn snapshot_with_sets(sets: [&[u64]; 3]) -> BytesMut {
        let mut b = header(3, 9);
        b.put_u64_le(1);
        b.put_u64_le(1);
        for set in sets {
            b.put_u16_le(set.len() as u16);
            for &n in set {
                b.put_u64_le(n);
            }
        }
        b.put_u64_le(0);
        b.put_u8(1);
        b.put_u32_le(0);
        b
    }

    #[test]
    fn node_sets_are_strictly_ascending_and_roles_disjoint() {
        assert!(decode(snapshot_with_sets([&[1, 2, 3], &[1, 2], &[4]]).freeze()).is_ok());
        let e = WireError::Invalid("node set not strictly ascending");
        assert_eq!(err(snapshot_with_sets([&[2, 1], &[], &[]])), e);
        assert_eq!(err(snapshot_with_sets([&[1], &[3, 3], &[]])), e);
        assert_eq!(err(snapshot_with_sets([&[1], &[], &[5, 4]])), e);
        assert_eq!(
            err(snapshot_with_sets([&[1, 2], &[], &[2]])),
            WireError::Invalid("a node is both voter and learner")
        );
        // An outgoing voter may be an incoming learner (demotion).
        assert!(decode(snapshot_with_sets([&[1, 2], &[1, 2, 3], &[3]]).freeze()).is_ok());
    }

    #[test]
    fn payloads_are_zero_copy() {
        let m = Message {
            term: 2,
            body: Body::Append {
                prev_index: 0,
                prev_term: 0,
                entries: vec![Entry { index: 1, term: 2, payload: EntryPayload::Normal(Bytes::from(vec![7u8; 100])) }],
                commit: 0,
            },
        };
        let wire = encode(1, &m);
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        let (_, back) = decode(wire.clone()).unwrap();
        let Body::Append { entries, .. } = &back.body else { panic!("an append") };
        let EntryPayload::Normal(data) = &entries[0].payload else { panic!("normal") };
        assert!(range.contains(&(data.as_ptr() as usize)), "entry payload was copied");
        let snap = Message {
            term: 2,
            body: Body::Snapshot {
                index: 4,
                snapshot_term: 1,
                config: Configuration::new([NodeId(1)]),
                offset: 0,
                data: Bytes::from(vec![1u8; 50]),
                done: false,
            },
        };
        let wire = encode(1, &snap);
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        let (_, back) = decode(wire.clone()).unwrap();
        let Body::Snapshot { data, .. } = &back.body else { panic!("a snapshot") };
        assert!(range.contains(&(data.as_ptr() as usize)), "snapshot chunk was copied");
    }

    #[test]
    #[should_panic(expected = "dense")]
    fn encoding_a_gapped_append_is_a_bug() {
        let m = Message {
            term: 1,
            body: Body::Append {
                prev_index: 3,
                prev_term: 1,
                entries: vec![Entry { index: 5, term: 1, payload: EntryPayload::Noop }],
                commit: 0,
            },
        };
        encode(0, &m);
    }
}

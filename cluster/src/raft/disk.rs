//! Raft's on-disk format: a write-ahead log of checksummed records, in
//! generation files, and the scan that recovers it.
//!
//! ```text
//! file    := record*                          (named by the driver: <prefix>.<gen>)
//! record  := len:u32 crc:u32 body[len]        crc = CRC-32 (IEEE) of body
//! body    := kind:u8 ...
//!   Header (1): gen:u64                        first record of every file
//!   Write  (2): flags:u8 [snapshot] [entries] [hard_state]
//!               flags bit 0 snapshot, bit 1 entries, bit 2 hard state
//! snapshot   := index:u64 term:u64 config data_len:u32 data
//! entries    := count:u32 entry{count}
//! entry      := index:u64 term:u64 kind:u8 (0 noop, 1 normal, 2 config) [len:u32 bytes | config]
//! config     := set(voters) set(outgoing) set(learners);  set := count:u32 id:u64{count}
//! hard_state := term:u64 has_vote:u8 vote:u64 commit:u64 recovering:u8
//! ```
//!
//! Integers are little-endian; records are read through
//! [`kaelix_core::codec::Reader`]. A file is valid once its header and first
//! `Write` (the **base image**: the whole state when the file was started)
//! parse; later records replay on top ([`DiskState::apply`], the same rules
//! as [`super::Write`]'s docs). A new generation is started whenever a
//! write carries a snapshot, so a file never holds entries a snapshot made
//! obsolete: the driver writes the new file's base image, syncs, then
//! removes the old file.
//!
//! # Recovery ([`scan`])
//!
//! Records are replayed until the first that does not parse or whose
//! checksum fails; the rest is a **torn or lost tail** of writes that were
//! never synced (and so never claimed): the driver cuts it off durably
//! before appending again. A complete record with a bad checksum that is
//! followed by a valid record is different: that is synced data gone bad,
//! and the scan reports it (`lost_synced`) so the member starts recovering
//! as after a wiped disk.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kaelix_core::NodeId;
use kaelix_core::codec::{self, CodecError, Reader};

use super::{Configuration, Entry, EntryPayload, HardState, Recovered, Snapshot, Write};

const HEADER: u8 = 1;
const WRITE: u8 = 2;

/// What the disk holds: the mirror of a member's durable state that the
/// driver keeps to write a new generation's base image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskState {
    /// Persistent scalars.
    pub hard_state: HardState,
    /// Newest snapshot.
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot.
    pub entries: Vec<Entry>,
}

impl DiskState {
    /// Applies one write, by the rules of [`Write`].
    ///
    /// The driver applies every write it performs here, so the cost must
    /// not grow with the log. Every write's entries are dense and
    /// ascending (as [`Write`] requires), so these rules keep the list
    /// strictly ascending, and contiguous unless a write skipped past its
    /// end: an entry is found by its index's distance from the first, and
    /// by a search where a gap makes that miss.
    pub fn apply(&mut self, w: &Write) {
        if let Some(s) = &w.snapshot {
            let holds = self
                .position(s.index)
                .map(|i| self.entries[i].term == s.term)
                .unwrap_or_else(|| self.entries.iter().any(|e| e.index == s.index && e.term == s.term));
            if !holds {
                self.entries.clear();
            } else if let Some(i) = self.position(s.index) {
                self.entries.drain(..=i);
            } else {
                self.entries.retain(|e| e.index > s.index);
            }
            self.snapshot = Some(s.clone());
        }
        if let Some(first) = w.entries.first() {
            let next = self.entries.last().map(|e| e.index + 1);
            if let Some(i) = self.position(first.index) {
                self.entries.truncate(i);
            } else if next != Some(first.index) {
                self.entries.retain(|e| e.index < first.index);
            }
            self.entries.extend(w.entries.iter().cloned());
        }
        if let Some(hs) = w.hard_state {
            self.hard_state = hs;
        }
    }

    /// Where the entry of `index` is, if the entries are contiguous there
    /// (the entry at that distance from the first has that index).
    fn position(&self, index: u64) -> Option<usize> {
        let first = self.entries.first()?.index;
        let i = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(i).filter(|e| e.index == index).map(|_| i)
    }

    /// The state as a write that recreates it (a base image).
    pub fn as_write(&self) -> Write {
        Write {
            id: kaelix_core::sansio::WriteId(0),
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            hard_state: Some(self.hard_state),
        }
    }

    /// What a member boots from.
    pub fn recovered(&self, empty: bool) -> Recovered {
        Recovered { hard_state: self.hard_state, snapshot: self.snapshot.clone(), entries: self.entries.clone(), empty }
    }
}

/// Why a record did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Ran out of bytes, a boolean that is not 0 or 1, or bytes after the
    /// record (each names the field).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Checksum mismatch (of a complete record of `framed_len` bytes).
    #[error("checksum mismatch")]
    Checksum {
        /// The record's length with its frame: where the next one starts.
        framed_len: usize,
    },
    /// A field holds an impossible value.
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// Encodes the header record of generation `gen`.
pub fn encode_header(generation: u64) -> Bytes {
    let mut body = BytesMut::with_capacity(9);
    body.put_u8(HEADER);
    body.put_u64_le(generation);
    frame(body)
}

/// Encodes `w` as one record.
pub fn encode_write(w: &Write) -> Bytes {
    // Sized up front and framed in place: a base image carries the whole
    // snapshot, and growing or copying it again would cost as much as
    // encoding it.
    let config_len = |c: &Configuration| 12 + 8 * (c.voters.len() + c.outgoing.len() + c.learners.len());
    let snapshot_len = w.snapshot.as_ref().map_or(0, |s| 20 + config_len(&s.config) + s.data.len());
    let entries_len: usize = w
        .entries
        .iter()
        .map(|e| {
            17 + match &e.payload {
                EntryPayload::Noop => 0,
                EntryPayload::Normal(b) => 4 + b.len(),
                EntryPayload::Config(c) => config_len(c),
            }
        })
        .sum();
    let mut body = BytesMut::with_capacity(FRAME_HEADER + 2 + snapshot_len + 4 + entries_len + 26);
    body.put_bytes(0, FRAME_HEADER);
    body.put_u8(WRITE);
    let flags =
        u8::from(w.snapshot.is_some()) | u8::from(!w.entries.is_empty()) << 1 | u8::from(w.hard_state.is_some()) << 2;
    body.put_u8(flags);
    if let Some(s) = &w.snapshot {
        body.put_u64_le(s.index);
        body.put_u64_le(s.term);
        put_config(&mut body, &s.config);
        codec::put_bytes_u32(&mut body, &s.data);
    }
    if !w.entries.is_empty() {
        body.put_u32_le(u32::try_from(w.entries.len()).expect("count fits"));
        for e in &w.entries {
            body.put_u64_le(e.index);
            body.put_u64_le(e.term);
            match &e.payload {
                EntryPayload::Noop => body.put_u8(0),
                EntryPayload::Normal(b) => {
                    body.put_u8(1);
                    codec::put_bytes_u32(&mut body, b);
                }
                EntryPayload::Config(c) => {
                    body.put_u8(2);
                    put_config(&mut body, c);
                }
            }
        }
    }
    if let Some(hs) = &w.hard_state {
        body.put_u64_le(hs.term);
        body.put_u8(u8::from(hs.vote.is_some()));
        body.put_u64_le(hs.vote.map_or(0, |v| v.0));
        body.put_u64_le(hs.commit);
        body.put_u8(u8::from(hs.recovering));
    }
    frame_in_place(body)
}

/// Bytes of a record's frame: `len:u32 crc:u32`.
const FRAME_HEADER: usize = 8;

/// Fills in the frame of a record whose body follows `FRAME_HEADER` bytes
/// left for it.
fn frame_in_place(mut record: BytesMut) -> Bytes {
    let body_len = u32::try_from(record.len() - FRAME_HEADER).expect("record under 4 GiB");
    let crc = crc32fast::hash(&record[FRAME_HEADER..]);
    record[..4].copy_from_slice(&body_len.to_le_bytes());
    record[4..FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    record.freeze()
}

fn frame(body: BytesMut) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + body.len());
    out.put_u32_le(u32::try_from(body.len()).expect("record under 4 GiB"));
    out.put_u32_le(crc32fast::hash(&body));
    out.put_slice(&body);
    out.freeze()
}

fn put_config(b: &mut BytesMut, c: &Configuration) {
    for set in [&c.voters, &c.outgoing, &c.learners] {
        b.put_u32_le(u32::try_from(set.len()).expect("count fits"));
        for id in set {
            b.put_u64_le(id.0);
        }
    }
}

/// Bytes after their `u32` length (sliced, not copied).
fn bytes(r: &mut Reader<'_>, what: &'static str) -> Result<Bytes, CodecError> {
    let len = r.u32(what)? as usize;
    r.bytes(len, what)
}

fn set(r: &mut Reader<'_>) -> Result<BTreeSet<NodeId>, CodecError> {
    let n = r.u32("set size")? as usize;
    Ok(r.u64s(n, "set members")?.map(NodeId).collect())
}

fn config(r: &mut Reader<'_>) -> Result<Configuration, CodecError> {
    Ok(Configuration { voters: set(r)?, outgoing: set(r)?, learners: set(r)? })
}

enum Record {
    Header(u64),
    Write(Write),
}

fn decode_body(body: Bytes) -> Result<Record, RecordError> {
    let mut r = Reader::new(&body);
    let record = match r.u8("kind")? {
        HEADER => Record::Header(r.u64("generation")?),
        WRITE => {
            let flags = r.u8("flags")?;
            if flags & !0b111 != 0 {
                return Err(RecordError::Invalid("unknown flag bits"));
            }
            let snapshot = if flags & 1 != 0 {
                let index = r.u64("snapshot index")?;
                let term = r.u64("snapshot term")?;
                let config = config(&mut r)?;
                let data = bytes(&mut r, "snapshot data")?;
                Some(Snapshot { index, term, config, data })
            } else {
                None
            };
            let mut entries = Vec::new();
            if flags & 2 != 0 {
                let n = r.u32("entry count")? as usize;
                for _ in 0..n {
                    let index = r.u64("entry index")?;
                    let term = r.u64("entry term")?;
                    let payload = match r.u8("entry kind")? {
                        0 => EntryPayload::Noop,
                        1 => EntryPayload::Normal(bytes(&mut r, "entry payload")?),
                        2 => EntryPayload::Config(config(&mut r)?),
                        _ => return Err(RecordError::Invalid("unknown entry kind")),
                    };
                    if entries.last().is_some_and(|p: &Entry| p.index.checked_add(1) != Some(index) || p.term > term) {
                        return Err(RecordError::Invalid("entries not dense and ordered"));
                    }
                    entries.push(Entry { index, term, payload });
                }
            }
            let hard_state = if flags & 4 != 0 {
                let term = r.u64("term")?;
                let has_vote = r.bool("has vote")?;
                let vote = r.u64("vote")?;
                let commit = r.u64("commit")?;
                let recovering = r.bool("recovering")?;
                Some(HardState { term, vote: has_vote.then_some(NodeId(vote)), commit, recovering })
            } else {
                None
            };
            Record::Write(Write { id: kaelix_core::sansio::WriteId(0), snapshot, entries, hard_state })
        }
        _ => return Err(RecordError::Invalid("unknown record kind")),
    };
    r.finish("record")?;
    Ok(record)
}

/// Reads one framed record at the start of `data`: the record and its
/// framed length.
fn next_record(data: &Bytes) -> Result<(Record, usize), RecordError> {
    let mut r = Reader::new(data);
    let len = r.u32("record length")? as usize;
    let crc = r.u32("record checksum")?;
    let body = r.bytes(len, "record body")?;
    if crc32fast::hash(&body) != crc {
        return Err(RecordError::Checksum { framed_len: r.position() });
    }
    Ok((decode_body(body)?, r.position()))
}

/// What a generation file held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The file's generation.
    pub generation: u64,
    /// The state its valid records replay to.
    pub state: DiskState,
    /// Bytes of valid records; anything after is a torn tail to cut.
    pub valid_len: u64,
    /// A complete record failed its checksum with valid data after it:
    /// synced data was lost (see the module docs).
    pub lost_synced: bool,
}

/// Scans one generation file. `None` if its base image is incomplete
/// (the file was being started when the node crashed).
pub fn scan(data: Bytes) -> Option<Scan> {
    let mut rest = data.clone();
    let Ok((Record::Header(generation), n)) = next_record(&rest) else { return None };
    rest.advance(n);
    let Ok((Record::Write(base), n)) = next_record(&rest) else { return None };
    rest.advance(n);
    let mut state = DiskState::default();
    state.apply(&base);
    let mut lost_synced = false;
    loop {
        match next_record(&rest) {
            Ok((Record::Write(w), n)) => {
                state.apply(&w);
                rest.advance(n);
            }
            Ok((Record::Header(_), _)) => break,
            Err(RecordError::Checksum { framed_len }) => {
                let after = rest.slice(framed_len..);
                lost_synced = next_record(&after).is_ok();
                break;
            }
            Err(_) => break,
        }
    }
    let valid_len = (data.len() - rest.len()) as u64;
    Some(Scan { generation, state, valid_len, lost_synced })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(index: u64, term: u64, kind: u8) -> Entry {
        let payload = match kind {
            0 => EntryPayload::Noop,
            1 => EntryPayload::Normal(Bytes::from(format!("v{index}"))),
            _ => EntryPayload::Config(Configuration {
                voters: [NodeId(1), NodeId(2)].into(),
                outgoing: [NodeId(3)].into(),
                learners: [NodeId(9)].into(),
            }),
        };
        Entry { index, term, payload }
    }

    fn file(writes: &[Write]) -> Vec<u8> {
        let mut f = encode_header(7).to_vec();
        f.extend_from_slice(&encode_write(&DiskState::default().as_write()));
        for w in writes {
            f.extend_from_slice(&encode_write(w));
        }
        f
    }

    fn w(entries: Vec<Entry>, hs: Option<HardState>) -> Write {
        Write { id: kaelix_core::sansio::WriteId(0), snapshot: None, entries, hard_state: hs }
    }

    #[test]
    fn replays_writes_and_truncations() {
        let hs = HardState { term: 3, vote: Some(NodeId(2)), commit: 1, recovering: false };
        let writes = [w(vec![entry(1, 1, 0), entry(2, 1, 1), entry(3, 1, 2)], Some(hs)), w(vec![entry(3, 2, 1)], None)];
        let s = scan(Bytes::from(file(&writes))).expect("valid base");
        assert_eq!(s.generation, 7);
        assert_eq!(s.state.entries, vec![entry(1, 1, 0), entry(2, 1, 1), entry(3, 2, 1)]);
        assert_eq!(s.state.hard_state, hs);
        assert!(!s.lost_synced);
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_rotten_middle_is_reported() {
        let writes = [w(vec![entry(1, 1, 1)], None), w(vec![entry(2, 1, 1)], None)];
        let full = file(&writes);
        let last = encode_write(&writes[1]).len();
        for cut in 1..last {
            let s = scan(Bytes::from(full[..full.len() - cut].to_vec())).expect("base intact");
            assert_eq!(s.state.entries.len(), 1);
            assert_eq!(s.valid_len as usize, full.len() - last);
            assert!(!s.lost_synced);
        }
        let mut rotten = full.clone();
        let first_write_at = full.len() - last - encode_write(&writes[0]).len();
        rotten[first_write_at + 12] ^= 0x40;
        let s = scan(Bytes::from(rotten)).expect("base intact");
        assert!(s.lost_synced, "a bad record followed by a good one is lost synced data");
        assert!(s.state.entries.is_empty());
    }

    #[test]
    fn malformed_bodies_are_refused_by_name() {
        // Entry indexes that would wrap past 2^64: refused, not an overflow.
        let wraps = encode_write(&w(vec![entry(u64::MAX, 1, 0), entry(0, 1, 0)], None));
        assert_eq!(next_record(&wraps).err(), Some(RecordError::Invalid("entries not dense and ordered")));
        let mut cut = encode_header(3).to_vec();
        cut.truncate(cut.len() - 2);
        assert_eq!(
            next_record(&Bytes::from(cut)).err(),
            Some(CodecError::Truncated { field: "record body", needed: 2 }.into())
        );
        let mut body = BytesMut::new();
        body.put_u8(HEADER);
        body.put_u64_le(3);
        body.put_u8(0);
        assert_eq!(next_record(&frame(body)).err(), Some(CodecError::Trailing { kind: "record", len: 1 }.into()));
    }

    #[test]
    fn an_incomplete_base_image_is_not_a_generation() {
        let f = file(&[]);
        assert!(scan(Bytes::from(f[..f.len() - 1].to_vec())).is_none());
        assert!(scan(Bytes::new()).is_none());
    }

    #[test]
    fn a_snapshot_write_replaces_covered_entries() {
        let mut d = DiskState::default();
        d.apply(&w(vec![entry(1, 1, 1), entry(2, 1, 1), entry(3, 2, 1)], None));
        let snap =
            Snapshot { index: 2, term: 1, config: Configuration::new([NodeId(1)]), data: Bytes::from_static(b"s") };
        d.apply(&Write { snapshot: Some(snap.clone()), ..w(Vec::new(), None) });
        assert_eq!(d.entries, vec![entry(3, 2, 1)]);
        let s = scan(Bytes::from({
            let mut f = encode_header(1).to_vec();
            f.extend_from_slice(&encode_write(&d.as_write()));
            f
        }))
        .expect("valid");
        assert_eq!(s.state, d);
    }

    proptest! {
        #[test]
        fn any_write_round_trips(
            n in 0usize..6, first in 1u64..100, term in 0u64..5, kinds in proptest::collection::vec(0u8..3, 6),
            hs in proptest::option::of((0u64..9, proptest::option::of(0u64..9), 0u64..50, any::<bool>())),
            snap in proptest::option::of((0u64..50, proptest::collection::vec(any::<u8>(), 0..40))),
        ) {
            let entries: Vec<Entry> = (0..n).map(|k| entry(first + k as u64, term, kinds[k])).collect();
            let hard_state = hs.map(|(term, vote, commit, recovering)| HardState { term, vote: vote.map(NodeId), commit, recovering });
            let snapshot = snap.map(|(index, data)| Snapshot { index, term, config: Configuration::new([NodeId(4)]), data: Bytes::from(data) });
            let write = Write { id: kaelix_core::sansio::WriteId(0), snapshot, entries, hard_state };
            let bytes = encode_write(&write);
            let Ok((Record::Write(back), len)) = next_record(&bytes) else { panic!("does not decode") };
            prop_assert_eq!(len, bytes.len());
            prop_assert_eq!(back, write);
            for cut in 0..bytes.len() {
                prop_assert!(next_record(&bytes.slice(..cut)).is_err());
            }
        }

        /// `apply` finds entries by position for speed; on any sequence of
        /// writes of dense ascending entries — overlapping, truncating,
        /// skipping past the end, snapshots held or not — it must do what
        /// `Write`'s rules say, written here as plain searches.
        #[test]
        fn apply_follows_the_write_rules(
            writes in proptest::collection::vec(
                (proptest::option::of((0u64..30, 0u64..4)), 1u64..30, 0usize..5, 0u64..4),
                1..12,
            ),
        ) {
            let mut fast = DiskState::default();
            let mut plain: Vec<Entry> = Vec::new();
            for (snap, first, n, term) in writes {
                let snapshot = snap.map(|(index, term)| Snapshot {
                    index, term, config: Configuration::new([NodeId(1)]), data: Bytes::new(),
                });
                let entries: Vec<Entry> = (0..n as u64).map(|k| entry(first + k, term, 1)).collect();
                let write = Write { id: kaelix_core::sansio::WriteId(0), snapshot: snapshot.clone(), entries: entries.clone(), hard_state: None };
                fast.apply(&write);
                if let Some(s) = &snapshot {
                    if plain.iter().any(|e| e.index == s.index && e.term == s.term) {
                        plain.retain(|e| e.index > s.index);
                    } else {
                        plain.clear();
                    }
                }
                if let Some(first) = entries.first() {
                    plain.retain(|e| e.index < first.index);
                    plain.extend(entries.iter().cloned());
                }
                prop_assert_eq!(&fast.entries, &plain);
            }
        }

        #[test]
        fn scanning_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = scan(Bytes::from(data));
        }
    }
}

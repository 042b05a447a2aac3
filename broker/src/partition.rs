//! An in-memory, append-only partition log.
//!
//! A partition is a sequence of records, each at an **offset**. Offsets are
//! assigned by [`PartitionLog::append`]: the first record ever appended gets
//! offset 0 (or the start offset given to
//! [`PartitionLog::with_start_offset`]), every later one the next integer.
//! Retention only ever removes the *oldest* records, so the retained records
//! are always one contiguous range `earliest..next` and an offset, once
//! assigned, is never reused: a consumer's position stays meaningful for the
//! life of the partition.
//!
//! # Storage
//!
//! A `VecDeque` holds the retained records, oldest first, with a running
//! total of their sizes. The record at offset `o` sits at index
//! `o - earliest`, so append, lookup by offset and trimming the oldest record
//! are all O(1).
//!
//! # Retention
//!
//! A [`RetentionPolicy`] bounds the log by record count, by bytes (as
//! reported by [`LogRecord::size_bytes`]) and by age (measured from
//! [`LogRecord::timestamp`]); any combination may be set.
//!
//! * **Count and bytes** are enforced on every append, so memory stays
//!   bounded with no timer at all. They never remove the record just
//!   appended: an append is always readable until something newer or its age
//!   pushes it out. Hence a record larger than `max_bytes` is kept, alone,
//!   and `max_records: Some(0)` keeps one record.
//! * **Age** needs the time, which this module never reads (see the crate's
//!   determinism contract): the driver calls
//!   [`PartitionLog::enforce_retention`] with `now`, at the deadline
//!   [`PartitionLog::poll_retention_deadline`] asked for.
//!
//! Age is civil time ([`WallTime`]), because retention is a promise in
//! civil terms ("keep seven days") and record timestamps must mean the same
//! thing on every replica and across restarts, which a node's monotonic
//! [`crate::Instant`] does not. Wall clocks may step backwards; then fewer
//! records have expired, which is never an error. Timestamps need not be
//! in order either: since only a prefix is ever removed, a record expires
//! once it *and every record before it* are older than `max_age`.
//!
//! # Reads
//!
//! [`PartitionLog::read`] replays from any retained offset:
//!
//! | requested offset        | result |
//! |-------------------------|--------|
//! | `earliest..next`        | records from that offset, within the read's limits |
//! | `next` (the head)       | an empty batch: a consumer that caught up polls here |
//! | below `earliest`        | [`ReadError::OffsetBelowRetained`]: retention removed it |
//! | above `next`            | [`ReadError::OffsetBeyondEnd`]: no such offset was ever assigned |
//!
//! A read that can make progress always does: it returns at least one record
//! whenever one exists at the offset, even if that record alone exceeds the
//! read's `max_bytes` (or `max_records` is 0), so a consumer with a small
//! buffer cannot stall behind a large record.
//!
//! Reads are zero-copy: a batch holds clones of the stored records, and
//! `LogRecord` implementors make cloning cheap (a reference-counted handle
//! such as [`bytes::Bytes`]), so no payload is copied.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;

use kaelix_core::WallTime;
use kaelix_core::time::{Duration, duration_nanos};

/// A record a [`PartitionLog`] can hold.
///
/// **Cloning must be cheap**: every read clones the records it returns, so a
/// record should be a handle to shared data (for example, a message whose
/// payload is a [`bytes::Bytes`]), never an owned buffer.
///
/// Both methods must give the same answer every time they are called on the
/// same record: the log accounts bytes at append and again at removal, and
/// compares timestamps whenever retention is enforced.
pub trait LogRecord: Clone {
    /// Bytes this record counts for, against [`RetentionPolicy::max_bytes`]
    /// and a read's `max_bytes`.
    fn size_bytes(&self) -> usize;

    /// When the record was produced; [`RetentionPolicy::max_age`] is
    /// measured from here.
    fn timestamp(&self) -> WallTime;
}

/// How much a partition keeps. `None` leaves a dimension unbounded; the
/// default keeps everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Most records retained (enforced on append; the newest is always kept).
    pub max_records: Option<u64>,
    /// Most bytes retained (enforced on append; the newest is always kept).
    pub max_bytes: Option<u64>,
    /// A record expires once `now >= timestamp + max_age` and every older
    /// record has expired (enforced by [`PartitionLog::enforce_retention`]).
    pub max_age: Option<Duration>,
}

/// What one retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Records removed.
    pub removed_records: u64,
    /// Bytes those records counted for.
    pub removed_bytes: u64,
}

/// Records read from a [`PartitionLog`], in offset order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBatch<R> {
    /// Offset of the first record (the offset that was requested).
    pub first_offset: u64,
    /// The records, at `first_offset`, `first_offset + 1`, …
    pub records: Vec<R>,
    /// The log's [`PartitionLog::next_offset`] when it was read;
    /// `high_watermark - next_offset()` is how far the reader lags.
    pub high_watermark: u64,
}

impl<R> ReadBatch<R> {
    /// The offset to read from next: one past the last record returned.
    pub fn next_offset(&self) -> u64 {
        self.first_offset + self.records.len() as u64
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no record was returned (the reader is at the head).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records paired with their offsets.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &R)> {
        (self.first_offset..).zip(&self.records)
    }
}

/// Why a read was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Retention removed the offset; the reader may restart at `earliest`.
    #[error("offset {requested} is no longer retained: {}", retained_range(.earliest, .latest))]
    OffsetBelowRetained {
        /// The offset asked for.
        requested: u64,
        /// The oldest retained offset (the next offset if nothing is retained).
        earliest: u64,
        /// The newest retained offset, `None` if nothing is retained.
        latest: Option<u64>,
    },
    /// The offset has not been assigned yet; the head is `next`.
    #[error("offset {requested} is beyond the end of the partition: the next offset to be written is {next}")]
    OffsetBeyondEnd {
        /// The offset asked for.
        requested: u64,
        /// The offset the next append will get.
        next: u64,
    },
}

fn retained_range(earliest: &u64, latest: &Option<u64>) -> RetainedRange {
    RetainedRange { earliest: *earliest, latest: *latest }
}

/// Displays what a partition retains, for [`ReadError::OffsetBelowRetained`].
struct RetainedRange {
    earliest: u64,
    latest: Option<u64>,
}

impl fmt::Display for RetainedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.latest {
            Some(latest) => write!(f, "the partition holds offsets {}..={latest}", self.earliest),
            None => write!(f, "the partition holds no records; the next offset is {}", self.earliest),
        }
    }
}

/// An in-memory partition: dense offsets, retention, replay from any
/// retained offset. See the [module docs](self) for the model.
///
/// ```
/// use bytes::Bytes;
/// use kaelix_core::WallTime;
/// use kaelix_broker::partition::{LogRecord, PartitionLog, ReadError, RetentionPolicy};
///
/// #[derive(Clone, Debug)]
/// struct Event {
///     payload: Bytes,
///     at: WallTime,
/// }
///
/// impl LogRecord for Event {
///     fn size_bytes(&self) -> usize {
///         self.payload.len()
///     }
///     fn timestamp(&self) -> WallTime {
///         self.at
///     }
/// }
///
/// let mut log = PartitionLog::new(RetentionPolicy { max_records: Some(3), ..Default::default() });
/// for i in 0..5u64 {
///     let offset = log.append(Event { payload: Bytes::from(format!("event {i}")), at: WallTime(i) });
///     assert_eq!(offset, i);
/// }
/// // Only the newest three are retained; their offsets did not move.
/// assert_eq!((log.earliest_offset(), log.next_offset()), (2, 5));
///
/// let batch = log.read(3, 10, 1024).unwrap();
/// assert_eq!(batch.records[0].payload, "event 3");
/// assert_eq!(batch.next_offset(), 5);
///
/// // At the head: nothing yet, not an error.
/// assert!(log.read(5, 10, 1024).unwrap().is_empty());
/// // Below the retained range: an error saying what is left.
/// let err = log.read(0, 10, 1024).unwrap_err();
/// assert!(matches!(err, ReadError::OffsetBelowRetained { earliest: 2, .. }));
/// assert_eq!(err.to_string(), "offset 0 is no longer retained: the partition holds offsets 2..=4");
/// ```
#[derive(Clone, Debug)]
pub struct PartitionLog<R: LogRecord> {
    /// Retained records, oldest first; `records[i]` is at offset `earliest + i`.
    records: VecDeque<R>,
    /// Offset of `records[0]`, or the next offset when `records` is empty.
    earliest: u64,
    /// Sum of `size_bytes` over `records`.
    bytes: u64,
    policy: RetentionPolicy,
}

impl<R: LogRecord> PartitionLog<R> {
    /// An empty log whose first append gets offset 0.
    pub fn new(policy: RetentionPolicy) -> Self {
        Self::with_start_offset(policy, 0)
    }

    /// An empty log whose first append gets `next_offset`: for a partition
    /// rebuilt after its older records are gone, so offsets are not reused.
    pub fn with_start_offset(policy: RetentionPolicy, next_offset: u64) -> Self {
        PartitionLog { records: VecDeque::new(), earliest: next_offset, bytes: 0, policy }
    }

    /// The retention policy in force.
    pub fn retention(&self) -> RetentionPolicy {
        self.policy
    }

    /// Replaces the retention policy. Nothing is removed until the next
    /// append or [`enforce_retention`](Self::enforce_retention).
    pub fn set_retention(&mut self, policy: RetentionPolicy) {
        self.policy = policy;
    }

    /// Appends `record` and returns its offset, then removes the oldest
    /// records beyond the count and byte limits (never this one).
    pub fn append(&mut self, record: R) -> u64 {
        let offset = self.next_offset();
        self.bytes += record_bytes(&record);
        self.records.push_back(record);
        self.trim_to_size();
        offset
    }

    /// Appends every record in order, exactly as repeated [`append`](Self::append)
    /// calls would (so a batch larger than the limits keeps only its tail),
    /// and returns the offsets assigned: empty, at the head, if there were
    /// no records.
    pub fn append_batch(&mut self, records: impl IntoIterator<Item = R>) -> Range<u64> {
        let first = self.next_offset();
        for record in records {
            self.append(record);
        }
        first..self.next_offset()
    }

    /// Applies the whole policy at `now`: first age (oldest records whose
    /// timestamp is at least `max_age` before `now`), then count and bytes.
    pub fn enforce_retention(&mut self, now: WallTime) -> RetentionReport {
        let before = (self.records.len(), self.bytes);
        if let Some(max_age) = self.policy.max_age {
            while self.records.front().is_some_and(|oldest| expires_at(oldest, max_age) <= now) {
                self.remove_oldest();
            }
        }
        self.trim_to_size();
        RetentionReport {
            removed_records: (before.0 - self.records.len()) as u64,
            removed_bytes: before.1 - self.bytes,
        }
    }

    /// When the oldest record expires, which is when
    /// [`enforce_retention`](Self::enforce_retention) next has something to
    /// remove by age; `None` without `max_age` or records. It is in the past
    /// if retention has not been enforced since. The driver sleeps until
    /// then on its wall clock (which may step; calling early or late is
    /// harmless).
    pub fn poll_retention_deadline(&self) -> Option<WallTime> {
        let max_age = self.policy.max_age?;
        self.records.front().map(|oldest| expires_at(oldest, max_age))
    }

    /// Up to `max_records` records starting at `offset`, stopping before the
    /// record that would take the batch past `max_bytes` — but always at
    /// least one record if `offset` holds one, so a reader never stalls.
    /// At the head (`offset == next_offset()`) the batch is empty; see the
    /// [module docs](self) for the errors.
    pub fn read(&self, offset: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch<R>, ReadError> {
        let next = self.next_offset();
        if offset < self.earliest {
            return Err(ReadError::OffsetBelowRetained {
                requested: offset,
                earliest: self.earliest,
                latest: self.latest_offset(),
            });
        }
        if offset > next {
            return Err(ReadError::OffsetBeyondEnd { requested: offset, next });
        }
        let mut records = Vec::new();
        let mut batch_bytes = 0usize;
        for record in self.records.range(self.index_of(offset)..) {
            let size = record.size_bytes();
            let within_limits = records.len() < max_records && batch_bytes.saturating_add(size) <= max_bytes;
            if !records.is_empty() && !within_limits {
                break;
            }
            batch_bytes = batch_bytes.saturating_add(size);
            records.push(record.clone());
        }
        Ok(ReadBatch { first_offset: offset, records, high_watermark: next })
    }

    /// The record at `offset`, if it is retained.
    pub fn get(&self, offset: u64) -> Option<&R> {
        if offset < self.earliest {
            return None;
        }
        self.records.get(self.index_of(offset))
    }

    /// The oldest retained offset; equal to [`next_offset`](Self::next_offset)
    /// when nothing is retained.
    pub fn earliest_offset(&self) -> u64 {
        self.earliest
    }

    /// The newest retained offset, if any.
    pub fn latest_offset(&self) -> Option<u64> {
        self.next_offset().checked_sub(1).filter(|_| !self.records.is_empty())
    }

    /// The offset the next append gets (the high watermark): one past the
    /// newest record ever appended.
    pub fn next_offset(&self) -> u64 {
        self.earliest + self.records.len() as u64
    }

    /// Number of retained records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no record is retained (offsets may still have been used).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Total [`LogRecord::size_bytes`] of the retained records.
    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }

    /// Index into `records` of `offset`, which must be `>= earliest`.
    fn index_of(&self, offset: u64) -> usize {
        // Past the end of the deque (or of usize) just means "not retained".
        usize::try_from(offset - self.earliest).unwrap_or(usize::MAX)
    }

    /// Removes the oldest records while a count or byte limit is exceeded,
    /// keeping the newest so the last append stays readable.
    fn trim_to_size(&mut self) {
        let RetentionPolicy { max_records, max_bytes, .. } = self.policy;
        while self.records.len() > 1
            && (max_records.is_some_and(|max| self.records.len() as u64 > max)
                || max_bytes.is_some_and(|max| self.bytes > max))
        {
            self.remove_oldest();
        }
    }

    fn remove_oldest(&mut self) {
        if let Some(oldest) = self.records.pop_front() {
            self.bytes -= record_bytes(&oldest);
            self.earliest += 1;
        }
    }
}

impl<R: LogRecord> Default for PartitionLog<R> {
    /// An empty log that keeps everything.
    fn default() -> Self {
        Self::new(RetentionPolicy::default())
    }
}

fn record_bytes(record: &impl LogRecord) -> u64 {
    record.size_bytes() as u64
}

/// The wall time at which `record` is `max_age` old (saturating).
fn expires_at(record: &impl LogRecord, max_age: Duration) -> WallTime {
    WallTime(record.timestamp().as_nanos().saturating_add(duration_nanos(max_age)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Rec {
        payload: Bytes,
        at: WallTime,
    }

    impl LogRecord for Rec {
        fn size_bytes(&self) -> usize {
            self.payload.len()
        }
        fn timestamp(&self) -> WallTime {
            self.at
        }
    }

    /// A record of `size` bytes stamped `at_secs` seconds after the epoch.
    fn rec(size: usize, at_secs: u64) -> Rec {
        Rec { payload: Bytes::from(vec![0xAB; size]), at: secs(at_secs) }
    }

    fn secs(s: u64) -> WallTime {
        WallTime(s * 1_000_000_000)
    }

    fn policy(max_records: Option<u64>, max_bytes: Option<u64>, max_age_secs: Option<u64>) -> RetentionPolicy {
        RetentionPolicy { max_records, max_bytes, max_age: max_age_secs.map(Duration::from_secs) }
    }

    /// A log holding offsets `0..n`, one byte each, stamped at second `i`.
    fn log_of(n: u64) -> PartitionLog<Rec> {
        let mut log = PartitionLog::default();
        log.append_batch((0..n).map(|i| rec(1, i)));
        log
    }

    #[test]
    fn offsets_are_dense_and_survive_retention() {
        let mut log = PartitionLog::new(policy(Some(4), None, None));
        for expected in 0..100 {
            assert_eq!(log.append(rec(1, 0)), expected);
            assert_eq!(log.next_offset(), expected + 1);
            assert_eq!(log.earliest_offset(), (expected + 1).saturating_sub(4));
        }
        assert_eq!(log.append_batch((0..3).map(|_| rec(1, 0))), 100..103);
        assert_eq!(log.append_batch(std::iter::empty()), 103..103);
        assert_eq!((log.earliest_offset(), log.latest_offset(), log.len()), (99, Some(102), 4));
        assert!(log.get(98).is_none() && log.get(99).is_some() && log.get(103).is_none());
    }

    #[test]
    fn offsets_are_not_reused_after_everything_expires() {
        let mut log = PartitionLog::new(policy(None, None, Some(10)));
        log.append_batch((0..5).map(|_| rec(1, 0)));
        assert_eq!(log.enforce_retention(secs(10)).removed_records, 5);
        assert!(log.is_empty());
        assert_eq!((log.earliest_offset(), log.latest_offset(), log.next_offset()), (5, None, 5));
        assert_eq!(log.append(rec(1, 10)), 5);
    }

    #[test]
    fn start_offset_is_honoured() {
        let mut log = PartitionLog::with_start_offset(RetentionPolicy::default(), 1_000);
        assert_eq!((log.earliest_offset(), log.next_offset()), (1_000, 1_000));
        assert_eq!(log.append(rec(1, 0)), 1_000);
        assert_eq!(log.get(1_000), Some(&rec(1, 0)));
    }

    #[test]
    fn max_records_keeps_the_newest() {
        let mut log = PartitionLog::new(policy(Some(3), None, None));
        log.append_batch((0..10).map(|i| rec(1, i)));
        assert_eq!(log.len(), 3);
        assert_eq!(log.earliest_offset(), 7);
        assert_eq!(log.get(7), Some(&rec(1, 7)));
    }

    #[test]
    fn max_bytes_trims_on_append_and_counts_bytes() {
        let mut log = PartitionLog::new(policy(None, Some(10), None));
        log.append_batch([rec(4, 0), rec(4, 1)]);
        assert_eq!((log.len(), log.size_bytes()), (2, 8));
        log.append(rec(4, 2)); // 12 > 10: the oldest goes
        assert_eq!((log.earliest_offset(), log.len(), log.size_bytes()), (1, 2, 8));
        log.append(rec(2, 3)); // exactly 10 fits
        assert_eq!((log.earliest_offset(), log.size_bytes()), (1, 10));
    }

    #[test]
    fn newest_record_is_kept_even_beyond_the_limits() {
        let mut log = PartitionLog::new(policy(Some(0), Some(5), None));
        log.append(rec(3, 0));
        assert_eq!(log.len(), 1, "max_records 0 still keeps the last append");
        log.append(rec(50, 1));
        assert_eq!((log.earliest_offset(), log.len(), log.size_bytes()), (1, 1, 50));
        assert_eq!(log.read(1, 10, 10).unwrap().len(), 1, "the oversized record is readable");
        log.append(rec(1, 2));
        assert_eq!((log.earliest_offset(), log.size_bytes()), (2, 1));
    }

    #[test]
    fn max_age_expires_from_the_oldest_and_reports() {
        let mut log = PartitionLog::new(policy(None, None, Some(60)));
        log.append_batch([rec(1, 0), rec(2, 10), rec(3, 20)]);
        assert_eq!(log.poll_retention_deadline(), Some(secs(60)));
        assert_eq!(log.enforce_retention(secs(59)), RetentionReport::default());
        // A record expires exactly at timestamp + max_age.
        let report = log.enforce_retention(secs(70));
        assert_eq!(report, RetentionReport { removed_records: 2, removed_bytes: 3 });
        assert_eq!((log.earliest_offset(), log.size_bytes()), (2, 3));
        assert_eq!(log.poll_retention_deadline(), Some(secs(80)));
        // Age is never enforced on append: it needs `now`.
        log.append(rec(1, 0));
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn age_only_removes_a_prefix_of_unordered_timestamps() {
        let mut log = PartitionLog::new(policy(None, None, Some(10)));
        log.append_batch([rec(1, 100), rec(1, 0), rec(1, 50)]);
        // Offset 1 is old, but offset 0 holds it back: offsets stay contiguous.
        assert_eq!(log.enforce_retention(secs(60)).removed_records, 0);
        assert_eq!(log.poll_retention_deadline(), Some(secs(110)));
        assert_eq!(log.enforce_retention(secs(110)).removed_records, 3);
    }

    #[test]
    fn wall_clock_stepping_back_removes_nothing() {
        let mut log = PartitionLog::new(policy(None, None, Some(10)));
        log.append_batch([rec(1, 100), rec(1, 101)]);
        assert_eq!(log.enforce_retention(secs(5)), RetentionReport::default());
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn deadline_is_in_the_future_after_enforcing() {
        let mut log = PartitionLog::new(policy(None, None, Some(30)));
        assert_eq!(log.poll_retention_deadline(), None, "nothing to expire");
        log.append_batch((0..20).map(|i| rec(1, i * 7)));
        let mut now = secs(0);
        while let Some(deadline) = log.poll_retention_deadline() {
            assert!(deadline > now);
            now = deadline;
            assert!(log.enforce_retention(now).removed_records > 0, "each deadline has work");
        }
        assert!(log.is_empty());
        assert_eq!(PartitionLog::<Rec>::default().poll_retention_deadline(), None, "no max_age");
    }

    #[test]
    fn max_age_saturates_instead_of_overflowing() {
        let mut log = PartitionLog::new(RetentionPolicy { max_age: Some(Duration::MAX), ..Default::default() });
        log.append(rec(1, 1));
        assert_eq!(log.poll_retention_deadline(), Some(WallTime(u64::MAX)));
        assert_eq!(log.enforce_retention(WallTime(u64::MAX - 1)).removed_records, 0);
    }

    #[test]
    fn combined_limits_apply_the_tightest() {
        let mut log = PartitionLog::new(policy(Some(5), Some(12), Some(100)));
        // Three-byte records: bytes (4 records) bind before count (5).
        log.append_batch((0..10).map(|i| rec(3, i * 10)));
        assert_eq!((log.earliest_offset(), log.len(), log.size_bytes()), (6, 4, 12));
        // One-byte records: count binds.
        log.append_batch((10..20).map(|i| rec(1, i * 10)));
        assert_eq!((log.earliest_offset(), log.len()), (15, 5));
        // Then age removes what is older than 100 s at t = 270 s (stamps 150..=190 → 170 and older).
        let report = log.enforce_retention(secs(270));
        assert_eq!(report, RetentionReport { removed_records: 3, removed_bytes: 3 });
        assert_eq!(log.earliest_offset(), 18);
    }

    #[test]
    fn enforce_applies_a_tightened_policy() {
        let mut log = log_of(10);
        log.set_retention(policy(Some(2), None, None));
        assert_eq!(log.retention().max_records, Some(2));
        assert_eq!(log.len(), 10, "a new policy takes effect at the next enforcement");
        assert_eq!(log.enforce_retention(secs(0)), RetentionReport { removed_records: 8, removed_bytes: 8 });
        assert_eq!(log.earliest_offset(), 8);
    }

    #[test]
    fn memory_stays_bounded_under_a_long_stream() {
        const MAX_BYTES: u64 = 10_000;
        let mut log = PartitionLog::new(policy(None, Some(MAX_BYTES), None));
        for i in 0..200_000u64 {
            let size = (i * 7919 % 500) as usize + 1; // 1..=500 bytes, never above the limit
            assert_eq!(log.append(rec(size, i)), i);
            assert!(log.size_bytes() <= MAX_BYTES);
            // Full up to one record's slack: only as much was removed as had to be.
            assert!(i < 100 || log.size_bytes() > MAX_BYTES - 500);
        }
        let held: u64 =
            (log.earliest_offset()..log.next_offset()).map(|o| log.get(o).unwrap().payload.len() as u64).sum();
        assert_eq!(held, log.size_bytes(), "the running byte count matches the records");
        assert!(log.len() <= MAX_BYTES as usize);
    }

    #[test]
    fn read_from_earliest_middle_and_head() {
        let mut log = log_of(10);
        log.set_retention(policy(Some(6), None, None));
        log.enforce_retention(secs(0));
        assert_eq!(log.earliest_offset(), 4);

        let from_earliest = log.read(4, 100, 100).unwrap();
        assert_eq!((from_earliest.first_offset, from_earliest.len(), from_earliest.next_offset()), (4, 6, 10));
        assert_eq!(from_earliest.high_watermark, 10);
        // `log_of` stamps offset `o` at second `o`: each record comes with its own offset.
        assert!(from_earliest.iter().all(|(offset, record)| record.at == secs(offset)));

        let middle = log.read(7, 100, 100).unwrap();
        assert_eq!((middle.first_offset, middle.len(), middle.records[0].at), (7, 3, secs(7)));

        let head = log.read(10, 100, 100).unwrap();
        assert!(head.is_empty());
        assert_eq!((head.first_offset, head.next_offset(), head.high_watermark), (10, 10, 10));
    }

    #[test]
    fn read_below_retained_says_what_is_left() {
        let mut log = PartitionLog::new(policy(Some(33), None, None));
        log.append_batch((0..43).map(|i| rec(1, i)));
        let err = log.read(3, 10, 10).unwrap_err();
        assert_eq!(err, ReadError::OffsetBelowRetained { requested: 3, earliest: 10, latest: Some(42) });
        assert_eq!(err.to_string(), "offset 3 is no longer retained: the partition holds offsets 10..=42");

        let mut expired = PartitionLog::new(policy(None, None, Some(1)));
        expired.append_batch((0..10).map(|_| rec(1, 0)));
        expired.enforce_retention(secs(1));
        assert_eq!(
            expired.read(3, 10, 10).unwrap_err().to_string(),
            "offset 3 is no longer retained: the partition holds no records; the next offset is 10"
        );
        assert!(expired.read(10, 10, 10).unwrap().is_empty(), "earliest is always a valid restart point");
    }

    #[test]
    fn read_beyond_head_is_an_error() {
        let log = log_of(5);
        let err = log.read(6, 10, 10).unwrap_err();
        assert_eq!(err, ReadError::OffsetBeyondEnd { requested: 6, next: 5 });
        assert_eq!(err.to_string(), "offset 6 is beyond the end of the partition: the next offset to be written is 5");
        assert!(PartitionLog::<Rec>::default().read(0, 1, 1).unwrap().is_empty(), "an empty log's head is 0");
        assert!(matches!(log.read(u64::MAX, 1, 1), Err(ReadError::OffsetBeyondEnd { .. })));
    }

    #[test]
    fn read_respects_max_records_and_max_bytes() {
        let mut log = PartitionLog::default();
        log.append_batch([rec(4, 0), rec(4, 1), rec(4, 2), rec(4, 3)]);
        assert_eq!(log.read(0, 2, 1_000).unwrap().len(), 2);
        assert_eq!(log.read(0, 100, 8).unwrap().len(), 2, "exactly at the limit fits");
        assert_eq!(log.read(0, 100, 11).unwrap().len(), 2, "a record that would cross the limit waits");
        assert_eq!(log.read(1, 100, 1_000).unwrap().len(), 3);
    }

    #[test]
    fn read_always_makes_progress() {
        let mut log = PartitionLog::default();
        log.append_batch([rec(100, 0), rec(1, 1)]);
        let batch = log.read(0, 10, 10).unwrap();
        assert_eq!((batch.len(), batch.next_offset()), (1, 1), "an oversized record comes alone");
        assert_eq!(log.read(0, 0, 0).unwrap().len(), 1, "even with zero limits");
        assert_eq!(log.read(1, 10, 0).unwrap().len(), 1);
    }

    #[test]
    fn reads_share_payloads_with_the_log() {
        let log = log_of(3);
        let batch = log.read(0, 10, 10).unwrap();
        for (offset, record) in batch.iter() {
            assert_eq!(record.payload.as_ptr(), log.get(offset).unwrap().payload.as_ptr(), "no payload copy");
        }
    }

    /// One step of the model-based test.
    #[derive(Clone, Debug)]
    enum Op {
        Append { size: usize, at: u64 },
        AppendBatch(Vec<(usize, u64)>),
        Enforce { now: u64 },
        SetPolicy(RetentionPolicy),
        Read { offset_past_earliest: i64, max_records: usize, max_bytes: usize },
    }

    fn policy_strategy() -> impl Strategy<Value = RetentionPolicy> {
        (
            proptest::option::of(0u64..8),
            proptest::option::of(0u64..40),
            proptest::option::of((0u64..50).prop_map(Duration::from_nanos)),
        )
            .prop_map(|(max_records, max_bytes, max_age)| RetentionPolicy { max_records, max_bytes, max_age })
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..12, 0u64..100).prop_map(|(size, at)| Op::Append { size, at }),
            1 => proptest::collection::vec((0usize..12, 0u64..100), 0..6).prop_map(Op::AppendBatch),
            2 => (0u64..200).prop_map(|now| Op::Enforce { now }),
            1 => policy_strategy().prop_map(Op::SetPolicy),
            3 => (-3i64..12, 0usize..6, 0usize..30).prop_map(|(offset_past_earliest, max_records, max_bytes)| {
                Op::Read { offset_past_earliest, max_records, max_bytes }
            }),
        ]
    }

    /// The obvious model: every record ever appended, and the index of the
    /// oldest one retained.
    struct Model {
        all: Vec<Rec>,
        earliest: usize,
        policy: RetentionPolicy,
    }

    impl Model {
        fn retained(&self) -> &[Rec] {
            &self.all[self.earliest..]
        }

        fn retained_bytes(&self) -> u64 {
            self.retained().iter().map(|r| r.payload.len() as u64).sum()
        }

        fn over_size(&self) -> bool {
            let n = self.retained().len() as u64;
            n > 1
                && (self.policy.max_records.is_some_and(|max| n > max)
                    || self.policy.max_bytes.is_some_and(|max| self.retained_bytes() > max))
        }

        fn append(&mut self, r: Rec) {
            self.all.push(r);
            while self.over_size() {
                self.earliest += 1;
            }
        }

        fn enforce(&mut self, now: WallTime) -> usize {
            let before = self.earliest;
            if let Some(age) = self.policy.max_age {
                while self.earliest < self.all.len() && self.all[self.earliest].at.0 + age.as_nanos() as u64 <= now.0 {
                    self.earliest += 1;
                }
            }
            while self.over_size() {
                self.earliest += 1;
            }
            self.earliest - before
        }

        fn read(&self, offset: u64, max_records: usize, max_bytes: usize) -> Vec<Rec> {
            let mut out = Vec::new();
            let mut bytes = 0;
            for r in &self.all[offset as usize..] {
                if !out.is_empty() && (out.len() >= max_records || bytes + r.payload.len() > max_bytes) {
                    break;
                }
                bytes += r.payload.len();
                out.push(r.clone());
            }
            out
        }
    }

    fn check_agrees(log: &PartitionLog<Rec>, model: &Model) -> Result<(), TestCaseError> {
        prop_assert_eq!(log.earliest_offset(), model.earliest as u64);
        prop_assert_eq!(log.next_offset(), model.all.len() as u64);
        prop_assert_eq!(log.len(), model.retained().len());
        prop_assert_eq!(log.size_bytes(), model.retained_bytes());
        prop_assert_eq!(log.is_empty(), model.retained().is_empty());
        for (offset, r) in model.all.iter().enumerate() {
            let expected = (offset >= model.earliest).then_some(r);
            prop_assert_eq!(log.get(offset as u64), expected);
        }
        let expected_deadline = model
            .policy
            .max_age
            .and_then(|age| model.retained().first().map(|r| WallTime(r.at.0 + age.as_nanos() as u64)));
        prop_assert_eq!(log.poll_retention_deadline(), expected_deadline);
        Ok(())
    }

    proptest! {
        /// A log and the model agree on offsets, contents, bytes, retention
        /// and every read, through any sequence of operations.
        #[test]
        fn log_agrees_with_model(
            initial in policy_strategy(),
            ops in proptest::collection::vec(op_strategy(), 0..80),
        ) {
            let mut log = PartitionLog::new(initial);
            let mut model = Model { all: Vec::new(), earliest: 0, policy: initial };
            for op in ops {
                match op {
                    Op::Append { size, at } => {
                        let r = Rec { payload: Bytes::from(vec![0; size]), at: WallTime(at) };
                        prop_assert_eq!(log.append(r.clone()), model.all.len() as u64);
                        model.append(r);
                    }
                    Op::AppendBatch(records) => {
                        let records: Vec<Rec> =
                            records.into_iter().map(|(size, at)| Rec { payload: Bytes::from(vec![0; size]), at: WallTime(at) }).collect();
                        let first = model.all.len() as u64;
                        prop_assert_eq!(log.append_batch(records.clone()), first..first + records.len() as u64);
                        records.into_iter().for_each(|r| model.append(r));
                    }
                    Op::Enforce { now } => {
                        let bytes_before = model.retained_bytes();
                        let removed = model.enforce(WallTime(now));
                        let report = log.enforce_retention(WallTime(now));
                        prop_assert_eq!(report.removed_records, removed as u64);
                        prop_assert_eq!(report.removed_bytes, bytes_before - model.retained_bytes());
                    }
                    Op::SetPolicy(p) => {
                        log.set_retention(p);
                        model.policy = p;
                    }
                    Op::Read { offset_past_earliest, max_records, max_bytes } => {
                        let Some(offset) = (model.earliest as u64).checked_add_signed(offset_past_earliest) else {
                            continue;
                        };
                        let next = model.all.len() as u64;
                        let got = log.read(offset, max_records, max_bytes);
                        if offset < model.earliest as u64 {
                            prop_assert!(matches!(got, Err(ReadError::OffsetBelowRetained { .. })), "{:?}", got);
                        } else if offset > next {
                            prop_assert_eq!(got, Err(ReadError::OffsetBeyondEnd { requested: offset, next }));
                        } else {
                            let batch = got.unwrap();
                            let expected = model.read(offset, max_records, max_bytes);
                            prop_assert_eq!(batch.first_offset, offset);
                            prop_assert_eq!(batch.high_watermark, next);
                            prop_assert_eq!(batch.records.is_empty(), offset == next, "progress whenever possible");
                            prop_assert_eq!(batch.records, expected);
                        }
                    }
                }
                check_agrees(&log, &model)?;
            }
        }
    }
}

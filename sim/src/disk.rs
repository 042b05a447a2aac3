//! The simulated disk of one node.
//!
//! # Fault model
//!
//! A [`SimDisk`] holds, per file, the **volatile** image that reads see and
//! the **durable** image that survives a crash, plus the list of writes not
//! yet made durable (in issue order).
//!
//! * **Latency**: every operation completes after a draw from its
//!   [`Latency`]; `sync` is the slow one.
//! * **Sync** makes every write issued on that file before the sync durable
//!   (the contract in `kaelix_core::runtime::StorageFile::sync`).
//! * **Crash** ([`SimDisk::crash`]): the volatile image is thrown away and
//!   rebuilt from the durable image plus each unsynced write, decided
//!   independently: **lost** (probability `lost_write`), **torn** (probability
//!   `torn_write`: a random subset of its 512-byte sectors lands), or kept.
//!   So later writes may survive while earlier ones vanish. Synced data is
//!   never touched by a crash.
//! * **Wipe** ([`SimDisk::wipe`]): everything is gone (a replaced machine).
//! * **Corruption** applies only to a disk marked `faulty` (the scenario
//!   decides how many such disks its protocol tolerates):
//!   - **bit rot** ([`SimDisk::corrupt_at_rest`]): one bit of durable data
//!     flips;
//!   - **misdirected writes**: with probability `misdirect` a write lands a
//!     few sectors away from where it was aimed;
//!   - **read corruption**: with probability `corrupt_read` a read returns a
//!     copy with one bit flipped (the stored data is intact).
//!
//! File creation and removal are durable when they complete (journalled
//! metadata). Formats that must notice corruption carry checksums; the
//! simulator's job is to make sure they do.

use std::collections::BTreeMap;

use bytes::Bytes;
use kaelix_core::rng::{DetRng, RngExt};
use kaelix_core::runtime::StorageError;
use kaelix_core::time::Duration;

use crate::dist::{Latency, chance};

/// Sector size for torn writes and misdirection.
pub const SECTOR: usize = 512;

/// Disk behaviour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiskConfig {
    /// Latency of reads and metadata operations.
    pub read_latency: Latency,
    /// Latency of writes (into the volatile cache).
    pub write_latency: Latency,
    /// Latency of `sync`.
    pub sync_latency: Latency,
    /// On crash, probability an unsynced write is lost entirely.
    pub lost_write: f64,
    /// On crash, probability an unsynced write is torn.
    pub torn_write: f64,
    /// Faulty disks only: probability a write lands at the wrong offset.
    pub misdirect: f64,
    /// Faulty disks only: probability a read returns a flipped bit.
    pub corrupt_read: f64,
}

impl DiskConfig {
    /// An SSD-like disk that loses every unsynced write on crash and
    /// corrupts nothing.
    pub const fn healthy() -> Self {
        DiskConfig {
            read_latency: Latency::new(Duration::from_micros(20), Duration::from_micros(30)),
            write_latency: Latency::new(Duration::from_micros(10), Duration::from_micros(20)),
            sync_latency: Latency::new(Duration::from_micros(500), Duration::from_micros(1500)),
            lost_write: 1.0,
            torn_write: 0.0,
            misdirect: 0.0,
            corrupt_read: 0.0,
        }
    }
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self::healthy()
    }
}

/// The kind of an operation, for latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Reads and metadata.
    Read,
    /// Writes and truncation.
    Write,
    /// `sync`.
    Sync,
}

#[derive(Clone, Debug)]
enum Pending {
    Write { seq: u64, offset: u64, data: Bytes },
    Truncate { seq: u64, len: u64 },
}

impl Pending {
    fn seq(&self) -> u64 {
        match self {
            Pending::Write { seq, .. } | Pending::Truncate { seq, .. } => *seq,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

/// What a crash did to unsynced writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced writes kept whole.
    pub kept: u32,
    /// Unsynced writes lost.
    pub lost: u32,
    /// Unsynced writes torn.
    pub torn: u32,
}

/// One node's disk.
#[derive(Debug)]
pub struct SimDisk {
    files: BTreeMap<String, SimFile>,
    config: DiskConfig,
    faulty: bool,
    rng: DetRng,
    next_seq: u64,
    /// Whether corruption faults are currently switched on (the liveness
    /// phase switches them off).
    corruption_enabled: bool,
}

fn write_into(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = usize::try_from(offset).expect("offset fits in memory");
    let end = start + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(data);
}

fn resize(image: &mut Vec<u8>, len: u64) {
    image.resize(usize::try_from(len).expect("length fits in memory"), 0);
}

impl SimDisk {
    /// An empty disk. A `faulty` disk is subject to corruption.
    pub fn new(config: DiskConfig, faulty: bool, rng: DetRng) -> Self {
        SimDisk { files: BTreeMap::new(), config, faulty, rng, next_seq: 0, corruption_enabled: true }
    }

    /// Whether this disk may corrupt data.
    pub fn is_faulty(&self) -> bool {
        self.faulty
    }

    /// The disk's configuration.
    pub fn config(&self) -> &DiskConfig {
        &self.config
    }

    /// Replaces the configuration (the liveness phase calms disks down).
    pub fn set_config(&mut self, config: DiskConfig) {
        self.config = config;
    }

    /// Switches corruption faults on or off.
    pub fn set_corruption_enabled(&mut self, on: bool) {
        self.corruption_enabled = on;
    }

    fn corrupting(&self) -> bool {
        self.faulty && self.corruption_enabled
    }

    /// A latency draw for an operation of `kind`.
    pub fn latency(&mut self, kind: OpKind) -> Duration {
        let l = match kind {
            OpKind::Read => self.config.read_latency,
            OpKind::Write => self.config.write_latency,
            OpKind::Sync => self.config.sync_latency,
        };
        l.sample(&mut self.rng)
    }

    /// Creates `name` if missing.
    pub fn open(&mut self, name: &str) {
        self.files.entry(name.to_owned()).or_default();
    }

    /// Whether `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.files.remove(name).map(|_| ()).ok_or_else(|| StorageError::NotFound(name.to_owned()))
    }

    /// File names, sorted.
    pub fn list(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }

    fn file(&mut self, name: &str) -> Result<&mut SimFile, StorageError> {
        self.files.get_mut(name).ok_or_else(|| StorageError::NotFound(name.to_owned()))
    }

    /// The volatile length of `name` (0 if missing).
    pub fn len(&self, name: &str) -> u64 {
        self.files.get(name).map_or(0, |f| f.volatile.len() as u64)
    }

    /// The durable length of `name` (0 if missing).
    pub fn durable_len(&self, name: &str) -> u64 {
        self.files.get(name).map_or(0, |f| f.durable.len() as u64)
    }

    /// Reads `len` bytes at `offset` from the volatile image.
    pub fn read(&mut self, name: &str, offset: u64, len: usize) -> Result<Bytes, StorageError> {
        let corrupt = self.corrupting() && chance(&mut self.rng, self.config.corrupt_read);
        let flip: u64 = if corrupt { self.rng.random() } else { 0 };
        let file = self.file(name)?;
        let file_len = file.volatile.len() as u64;
        let end = offset.checked_add(len as u64).filter(|&e| e <= file_len);
        let Some(end) = end else {
            return Err(StorageError::OutOfBounds { offset, len, file_len });
        };
        let mut out = file.volatile[offset as usize..end as usize].to_vec();
        if corrupt && !out.is_empty() {
            flip_bit(&mut out, flip);
        }
        Ok(Bytes::from(out))
    }

    /// Writes `data` at `offset` into the volatile image; durable after a sync.
    pub fn write(&mut self, name: &str, offset: u64, data: Bytes) -> Result<(), StorageError> {
        check_extent(offset, data.len() as u64)?;
        let misdirect = self.corrupting() && chance(&mut self.rng, self.config.misdirect);
        let shift: i64 = if misdirect { self.rng.random_range(-4i64..=4) * SECTOR as i64 } else { 0 };
        let seq = self.next_seq;
        self.next_seq += 1;
        let file = self.file(name)?;
        let offset = offset.saturating_add_signed(shift);
        write_into(&mut file.volatile, offset, &data);
        file.pending.push(Pending::Write { seq, offset, data });
        Ok(())
    }

    /// Truncates (or zero-extends) `name` to `len`; durable after a sync.
    pub fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        check_extent(len, 0)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let file = self.file(name)?;
        resize(&mut file.volatile, len);
        file.pending.push(Pending::Truncate { seq, len });
        Ok(())
    }

    /// The barrier a sync issued now must reach: every pending operation
    /// with a sequence number below it.
    pub fn sync_barrier(&self) -> u64 {
        self.next_seq
    }

    /// Completes a sync of `name` issued at `barrier`: operations issued
    /// before it become durable.
    pub fn complete_sync(&mut self, name: &str, barrier: u64) -> Result<(), StorageError> {
        let file = self.file(name)?;
        let split = file.pending.iter().position(|p| p.seq() >= barrier).unwrap_or(file.pending.len());
        for op in file.pending.drain(..split) {
            match op {
                Pending::Write { offset, data, .. } => write_into(&mut file.durable, offset, &data),
                Pending::Truncate { len, .. } => resize(&mut file.durable, len),
            }
        }
        Ok(())
    }

    /// Number of operations not yet durable, over all files.
    pub fn unsynced_ops(&self) -> usize {
        self.files.values().map(|f| f.pending.len()).sum()
    }

    /// The node lost power: rebuild every file from its durable image plus a
    /// random fate for each unsynced operation (see the module docs).
    pub fn crash(&mut self) -> CrashReport {
        let mut report = CrashReport::default();
        let SimDisk { files, config, rng, .. } = self;
        for file in files.values_mut() {
            let mut image = std::mem::take(&mut file.durable);
            for op in file.pending.drain(..) {
                if chance(rng, config.lost_write) {
                    report.lost += 1;
                    continue;
                }
                match op {
                    Pending::Truncate { len, .. } => {
                        report.kept += 1;
                        resize(&mut image, len);
                    }
                    Pending::Write { offset, data, .. } => {
                        if chance(rng, config.torn_write) && !data.is_empty() {
                            report.torn += 1;
                            for (i, sector) in data.chunks(SECTOR).enumerate() {
                                if rng.random_bool(0.5) {
                                    write_into(&mut image, offset + (i * SECTOR) as u64, sector);
                                }
                            }
                        } else {
                            report.kept += 1;
                            write_into(&mut image, offset, &data);
                        }
                    }
                }
            }
            file.volatile = image.clone();
            file.durable = image;
        }
        report
    }

    /// Erases the disk entirely.
    pub fn wipe(&mut self) {
        self.files.clear();
    }

    /// Faulty disks only: flips one random bit of durable data. Returns the
    /// file and offset hit, if any data exists.
    pub fn corrupt_at_rest(&mut self) -> Option<(String, u64)> {
        if !self.corrupting() {
            return None;
        }
        let candidates: Vec<&String> =
            self.files.iter().filter(|(_, f)| !f.durable.is_empty()).map(|(n, _)| n).collect();
        if candidates.is_empty() {
            return None;
        }
        let name = candidates[self.rng.random_range(0..candidates.len())].clone();
        let bit: u64 = self.rng.random();
        let file = self.files.get_mut(&name).expect("chosen from the map");
        let byte = (bit >> 3) % file.durable.len() as u64;
        let mask = 1u8 << (bit & 7);
        file.durable[byte as usize] ^= mask;
        if let Some(v) = file.volatile.get_mut(byte as usize) {
            *v ^= mask;
        }
        Some((name, byte))
    }
}

/// The largest file a simulated disk holds (files live in memory).
pub const MAX_FILE_BYTES: u64 = 1 << 32;

fn check_extent(offset: u64, len: u64) -> Result<(), StorageError> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_FILE_BYTES => Ok(()),
        _ => Err(StorageError::Io(format!(
            "write of {len} bytes at offset {offset} exceeds the simulated disk's {MAX_FILE_BYTES}-byte file limit"
        ))),
    }
}

fn flip_bit(buf: &mut [u8], random: u64) {
    let byte = ((random >> 3) % buf.len() as u64) as usize;
    buf[byte] ^= 1 << (random & 7);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaelix_core::rng::seeded;

    fn disk(config: DiskConfig, faulty: bool, seed: u64) -> SimDisk {
        let mut d = SimDisk::new(config, faulty, seeded(seed));
        d.open("f");
        d
    }

    #[test]
    fn synced_data_survives_crash_and_unsynced_is_lost() {
        let mut d = disk(DiskConfig::healthy(), false, 1);
        d.write("f", 0, Bytes::from_static(b"hello")).unwrap();
        let b = d.sync_barrier();
        d.write("f", 5, Bytes::from_static(b" world")).unwrap();
        d.complete_sync("f", b).unwrap();
        assert_eq!(&d.read("f", 0, 11).unwrap()[..], b"hello world");
        let report = d.crash();
        assert_eq!(report, CrashReport { kept: 0, lost: 1, torn: 0 });
        assert_eq!(d.len("f"), 5);
        assert_eq!(&d.read("f", 0, 5).unwrap()[..], b"hello");
    }

    #[test]
    fn crash_fates_follow_configured_rates() {
        let config = DiskConfig { lost_write: 0.3, torn_write: 0.2, ..DiskConfig::healthy() };
        let mut d = disk(config, false, 2);
        let mut total = CrashReport::default();
        for _round in 0..2_000u64 {
            d.wipe();
            d.open("f");
            for i in 0..10u64 {
                d.write("f", i * 4096, Bytes::from(vec![1u8; 4096])).unwrap();
            }
            let r = d.crash();
            total.kept += r.kept;
            total.lost += r.lost;
            total.torn += r.torn;
        }
        let n = f64::from(total.kept + total.lost + total.torn);
        assert_eq!(n, 20_000.0);
        let lost = f64::from(total.lost) / n;
        // torn applies to the writes that were not lost: 0.7 * 0.2 = 0.14
        let torn = f64::from(total.torn) / n;
        assert!((lost - 0.3).abs() < 0.02, "lost {lost}");
        assert!((torn - 0.14).abs() < 0.02, "torn {torn}");
    }

    #[test]
    fn torn_write_keeps_only_whole_sectors() {
        let config = DiskConfig { lost_write: 0.0, torn_write: 1.0, ..DiskConfig::healthy() };
        let mut d = disk(config, false, 3);
        d.write("f", 0, Bytes::from(vec![0xAB; SECTOR * 8])).unwrap();
        d.crash();
        let data = d.read("f", 0, d.len("f") as usize).unwrap();
        for sector in data.chunks(SECTOR) {
            assert!(sector.iter().all(|&b| b == 0xAB) || sector.iter().all(|&b| b == 0), "partial sector");
        }
    }

    #[test]
    fn later_write_may_survive_an_earlier_lost_one() {
        let config = DiskConfig { lost_write: 0.5, torn_write: 0.0, ..DiskConfig::healthy() };
        let mut seen_gap = false;
        for seed in 0..64 {
            let mut d = disk(config, false, seed);
            d.write("f", 0, Bytes::from_static(b"AAAA")).unwrap();
            d.write("f", 4, Bytes::from_static(b"BBBB")).unwrap();
            d.crash();
            if d.len("f") == 8 && &d.read("f", 0, 4).unwrap()[..] == b"\0\0\0\0" {
                seen_gap = true;
            }
        }
        assert!(seen_gap, "writes must not be forced to survive in order");
    }

    #[test]
    fn healthy_disk_never_corrupts() {
        let config = DiskConfig { misdirect: 1.0, corrupt_read: 1.0, ..DiskConfig::healthy() };
        let mut d = disk(config, false, 4);
        d.write("f", 0, Bytes::from_static(b"abcdef")).unwrap();
        d.complete_sync("f", d.sync_barrier()).unwrap();
        assert_eq!(&d.read("f", 0, 6).unwrap()[..], b"abcdef");
        assert_eq!(d.corrupt_at_rest(), None);
    }

    #[test]
    fn faulty_disk_corrupts_reads_at_configured_rate() {
        let config = DiskConfig { corrupt_read: 0.1, ..DiskConfig::healthy() };
        let mut d = disk(config, true, 5);
        d.write("f", 0, Bytes::from(vec![0u8; 64])).unwrap();
        let n = 20_000;
        let bad = (0..n).filter(|_| d.read("f", 0, 64).unwrap().iter().any(|&b| b != 0)).count();
        let rate = bad as f64 / n as f64;
        assert!((rate - 0.1).abs() < 0.01, "rate {rate}");
        // the stored data itself is intact
        d.set_corruption_enabled(false);
        assert!(d.read("f", 0, 64).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn bit_rot_flips_exactly_one_durable_bit() {
        let mut d = disk(DiskConfig::healthy(), true, 6);
        d.write("f", 0, Bytes::from(vec![0u8; 1000])).unwrap();
        d.complete_sync("f", d.sync_barrier()).unwrap();
        let (name, _) = d.corrupt_at_rest().expect("data exists");
        assert_eq!(name, "f");
        d.crash();
        let data = d.read("f", 0, 1000).unwrap();
        let ones: u32 = data.iter().map(|b| b.count_ones()).sum();
        assert_eq!(ones, 1);
    }

    #[test]
    fn misdirected_writes_land_elsewhere() {
        let config = DiskConfig { misdirect: 1.0, ..DiskConfig::healthy() };
        let mut moved = 0;
        for seed in 0..50 {
            let mut d = disk(config, true, seed);
            d.set_corruption_enabled(true);
            d.write("f", 8 * SECTOR as u64, Bytes::from(vec![7u8; SECTOR])).unwrap();
            let len = d.len("f");
            let at_target =
                len >= 9 * SECTOR as u64 && d.read("f", 8 * SECTOR as u64, SECTOR).unwrap().iter().all(|&b| b == 7);
            moved += usize::from(!at_target);
        }
        // shift is uniform in -4..=4 sectors: 8/9 of writes move.
        assert!(moved > 35, "only {moved} of 50 moved");
    }

    #[test]
    fn wipe_erases_everything_and_truncate_is_durable_after_sync() {
        let mut d = disk(DiskConfig::healthy(), false, 7);
        d.write("f", 0, Bytes::from_static(b"0123456789")).unwrap();
        d.truncate("f", 4).unwrap();
        d.complete_sync("f", d.sync_barrier()).unwrap();
        d.crash();
        assert_eq!(d.len("f"), 4);
        d.wipe();
        assert!(!d.exists("f"));
        assert!(matches!(d.read("f", 0, 1), Err(StorageError::NotFound(_))));
    }

    #[test]
    fn absurd_offsets_are_errors_not_panics() {
        let mut d = disk(DiskConfig::healthy(), false, 9);
        assert!(matches!(d.write("f", u64::MAX - 1, Bytes::from_static(b"abc")), Err(StorageError::Io(_))));
        assert!(matches!(d.truncate("f", u64::MAX), Err(StorageError::Io(_))));
        assert_eq!(d.len("f"), 0);
    }

    #[test]
    fn out_of_bounds_read_names_the_file_length() {
        let mut d = disk(DiskConfig::healthy(), false, 8);
        d.write("f", 0, Bytes::from_static(b"abc")).unwrap();
        assert_eq!(d.read("f", 2, 5), Err(StorageError::OutOfBounds { offset: 2, len: 5, file_len: 3 }));
    }
}

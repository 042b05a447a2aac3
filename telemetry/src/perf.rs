//! The performance monitor: what the process costs, sampled on an interval
//! and exported as metrics.
//!
//! * **CPU per thread** (`/proc/self/task/*/stat`): user + system seconds
//!   per thread name (the executor's workers are `<name>-w<index>`, its
//!   driver `<name>-driver`, the IO pool `kaelix-io-*`), and the share of
//!   one CPU each used over the last interval; per NUMA node, the workers'
//!   sum (from the executor's layout).
//! * **Allocation** ([`CountingAllocator`], when the binary installs it as
//!   its global allocator): allocations and bytes, as totals and as rates
//!   over the last interval, and the bytes live now.
//! * **Process IO** (`/proc/self/io`): bytes through read/write system
//!   calls and bytes that reached the block layer, and the call counts.
//!   The data directory's own bytes and syncs come from the storage layer
//!   (`sources::add_storage`).
//! * **NUMA nodes** (`/sys/devices/system/node/node*`): memory total and
//!   free, and the kernel's page placement counters (`numastat`).
//!
//! A sample that cannot read a file (no `/proc`, a node without
//! `numastat`) skips that family and logs once; it never stops the others.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Unit, counter, gauge};

use crate::collector::{Kind, MetricsCollector};

/// Off until a [`PerformanceMonitor`] starts (or [`count_allocations`]):
/// until then the allocator adds one relaxed load per call, nothing more,
/// so `kaelix sim` runs pay nothing for it.
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static DEALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);
static FREED_BYTES: AtomicU64 = AtomicU64::new(0);

/// A global allocator that counts what `A` allocates: two relaxed atomic
/// additions per allocation and per free while counting is on (see
/// [`count_allocations`]), one relaxed load otherwise. Install it in a binary:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: CountingAllocator<mimalloc::MiMalloc> = CountingAllocator::new(mimalloc::MiMalloc);
/// ```
#[derive(Debug)]
pub struct CountingAllocator<A> {
    inner: A,
}

impl<A> CountingAllocator<A> {
    /// Counts the allocations of `inner`.
    pub const fn new(inner: A) -> Self {
        CountingAllocator { inner }
    }
}

/// Starts counting allocations (frees and allocations from now on; the
/// live-bytes figure is then relative to this moment).
pub fn count_allocations() {
    COUNTING.store(true, Ordering::Relaxed);
}

fn counted_alloc(ptr: *mut u8, size: usize) -> *mut u8 {
    if !ptr.is_null() && COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
    ptr
}

fn counted_free(size: usize) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    DEALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    FREED_BYTES.fetch_add(size as u64, Ordering::Relaxed);
}

// SAFETY: every method forwards to `inner` with the caller's arguments
// unchanged and returns its result unchanged; the counting touches only
// static atomics (it never allocates), so `A`'s contract is this one's.
#[allow(unsafe_code, reason = "a GlobalAlloc implementation is unsafe by definition; it only forwards")]
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        counted_alloc(unsafe { self.inner.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        counted_alloc(unsafe { self.inner.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (so by `inner`) with `layout`.
        unsafe { self.inner.dealloc(ptr, layout) };
        counted_free(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `realloc`'s contract; forwarded unchanged.
        let new = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // A move: the old block is freed and a new one allocated.
            counted_free(layout.size());
            counted_alloc(new, new_size);
        }
        new
    }
}

/// What [`CountingAllocator`] counted since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocationTotals {
    /// Allocations (a `realloc` counts as one allocation and one free).
    pub allocations: u64,
    /// Frees.
    pub deallocations: u64,
    /// Bytes allocated.
    pub allocated_bytes: u64,
    /// Bytes freed.
    pub freed_bytes: u64,
}

impl AllocationTotals {
    /// The counters now (all zero when no [`CountingAllocator`] is installed).
    pub fn now() -> AllocationTotals {
        AllocationTotals {
            allocations: ALLOCATIONS.load(Ordering::Relaxed),
            deallocations: DEALLOCATIONS.load(Ordering::Relaxed),
            allocated_bytes: ALLOCATED_BYTES.load(Ordering::Relaxed),
            freed_bytes: FREED_BYTES.load(Ordering::Relaxed),
        }
    }

    /// Bytes allocated and not freed since counting began (saturating:
    /// frees and allocations are read at slightly different instants, and
    /// blocks allocated before counting began may be freed after).
    pub fn live_bytes(&self) -> u64 {
        self.allocated_bytes.saturating_sub(self.freed_bytes)
    }
}

/// Samples the figures of the module docs (see [`PerformanceMonitor::sample`]).
pub struct PerformanceMonitor {
    interval: Duration,
    /// Worker thread name → NUMA node, for the per-node sums.
    worker_nodes: BTreeMap<String, usize>,
    previous_alloc: Option<AllocationTotals>,
    previous_cpu: BTreeMap<i32, u64>,
    ticks_per_second: f64,
    numa_root: std::path::PathBuf,
    warned: std::collections::BTreeSet<&'static str>,
}

impl std::fmt::Debug for PerformanceMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerformanceMonitor").field("interval", &self.interval).finish()
    }
}

impl PerformanceMonitor {
    /// A monitor sampled every `interval`; `worker_nodes` names each
    /// executor worker thread and its NUMA node. Adds the metrics' help text.
    pub fn new(collector: &MetricsCollector, interval: Duration, worker_nodes: BTreeMap<String, usize>) -> Self {
        use Kind::*;
        for (kind, name, unit, help) in [
            (
                Gauge,
                "kaelix_thread_cpu_seconds",
                Some(Unit::Seconds),
                "User and system CPU time per thread name since it started (only grows; a gauge because it is fractional).",
            ),
            (
                Gauge,
                "kaelix_thread_cpu_utilization",
                None,
                "Share of one CPU a thread name used over the last interval.",
            ),
            (
                Gauge,
                "kaelix_numa_worker_cpu_seconds",
                Some(Unit::Seconds),
                "CPU time of the executor's workers per NUMA node (only grows).",
            ),
            (Counter, "kaelix_process_allocations_total", None, "Heap allocations (counting allocator)."),
            (
                Counter,
                "kaelix_process_allocated_bytes_total",
                Some(Unit::Bytes),
                "Heap bytes allocated (counting allocator).",
            ),
            (
                Gauge,
                "kaelix_process_allocations_per_second",
                None,
                "Heap allocations per second over the last interval.",
            ),
            (
                Gauge,
                "kaelix_process_allocated_bytes_per_second",
                None,
                "Heap bytes allocated per second over the last interval.",
            ),
            (
                Gauge,
                "kaelix_process_heap_live_bytes",
                Some(Unit::Bytes),
                "Heap bytes allocated since the monitor started and not freed.",
            ),
            (
                Counter,
                "kaelix_process_io_bytes_total",
                Some(Unit::Bytes),
                "Process IO bytes by direction (read, written) and layer (syscall: read/write calls; block: reached the block device).",
            ),
            (Counter, "kaelix_process_io_syscalls_total", None, "Read and write system calls, by direction."),
            (Gauge, "kaelix_numa_memory_bytes", Some(Unit::Bytes), "Memory of a NUMA node, by state (total, free)."),
            (
                Counter,
                "kaelix_numa_pages_total",
                None,
                "The kernel's page placement counters of a NUMA node (numastat), by event.",
            ),
        ] {
            collector.describe(kind, name, unit, help);
        }
        count_allocations();
        // The kernel keeps the first 15 bytes of a thread's name.
        let worker_nodes = worker_nodes.into_iter().map(|(name, node)| (comm_of(&name), node)).collect();
        PerformanceMonitor {
            interval,
            worker_nodes,
            previous_alloc: None,
            previous_cpu: BTreeMap::new(),
            ticks_per_second: procfs::ticks_per_second() as f64,
            numa_root: "/sys/devices/system/node".into(),
            warned: Default::default(),
        }
    }

    /// Takes one sample; call it every `interval` (from an [`crate::Upkeep`]
    /// thread) inside [`MetricsCollector::scope`] or with the collector
    /// installed globally.
    pub fn sample(&mut self) {
        self.sample_allocations();
        if let Err(e) = self.sample_threads() {
            self.warn_once("threads", &e);
        }
        if let Err(e) = sample_io() {
            self.warn_once("io", &e);
        }
        if let Err(e) = self.sample_numa() {
            self.warn_once("numa", &e);
        }
    }

    fn warn_once(&mut self, family: &'static str, error: &dyn std::fmt::Display) {
        if self.warned.insert(family) {
            tracing::warn!(family, error = %error, "performance monitor: skipping these figures");
        }
    }

    fn sample_allocations(&mut self) {
        let now = AllocationTotals::now();
        if now.allocations == 0 {
            return; // no counting allocator installed
        }
        counter!("kaelix_process_allocations_total").absolute(now.allocations);
        counter!("kaelix_process_allocated_bytes_total").absolute(now.allocated_bytes);
        gauge!("kaelix_process_heap_live_bytes").set(now.live_bytes() as f64);
        if let Some(before) = self.previous_alloc {
            let secs = self.interval.as_secs_f64();
            gauge!("kaelix_process_allocations_per_second")
                .set(now.allocations.saturating_sub(before.allocations) as f64 / secs);
            gauge!("kaelix_process_allocated_bytes_per_second")
                .set(now.allocated_bytes.saturating_sub(before.allocated_bytes) as f64 / secs);
        }
        self.previous_alloc = Some(now);
    }

    fn sample_threads(&mut self) -> procfs::ProcResult<()> {
        let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new(); // name → (ticks total, ticks this interval)
        let mut per_node: BTreeMap<usize, u64> = BTreeMap::new();
        let mut seen = BTreeMap::new();
        for task in procfs::process::Process::myself()?.tasks()? {
            let Ok(task) = task else { continue }; // a thread that just exited
            let Ok(stat) = task.stat() else { continue };
            let ticks = stat.utime + stat.stime;
            let delta = ticks.saturating_sub(self.previous_cpu.get(&task.tid).copied().unwrap_or(0));
            seen.insert(task.tid, ticks);
            let entry = by_name.entry(stat.comm.clone()).or_default();
            entry.0 += ticks;
            entry.1 += delta;
            if let Some(&node) = self.worker_nodes.get(&stat.comm) {
                *per_node.entry(node).or_default() += ticks;
            }
        }
        let first = self.previous_cpu.is_empty();
        self.previous_cpu = seen;
        for (name, (total, delta)) in by_name {
            gauge!("kaelix_thread_cpu_seconds", "thread" => name.clone()).set(total as f64 / self.ticks_per_second);
            if !first {
                let share = delta as f64 / self.ticks_per_second / self.interval.as_secs_f64();
                gauge!("kaelix_thread_cpu_utilization", "thread" => name).set(share);
            }
        }
        for (node, ticks) in per_node {
            gauge!("kaelix_numa_worker_cpu_seconds", "node" => node.to_string())
                .set(ticks as f64 / self.ticks_per_second);
        }
        Ok(())
    }

    #[allow(clippy::disallowed_methods, reason = "the monitor reads the kernel's NUMA figures from sysfs")]
    fn sample_numa(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.numa_root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(node) = name.strip_prefix("node").filter(|n| n.parse::<u32>().is_ok()) else { continue };
            let dir = entry.path();
            let meminfo = std::fs::read_to_string(dir.join("meminfo"))?;
            for (key, state) in [("MemTotal:", "total"), ("MemFree:", "free")] {
                if let Some(kib) = meminfo_kib(&meminfo, key) {
                    gauge!("kaelix_numa_memory_bytes", "node" => node.to_owned(), "state" => state)
                        .set((kib * 1024) as f64);
                }
            }
            let numastat = std::fs::read_to_string(dir.join("numastat"))?;
            for line in numastat.lines() {
                let mut parts = line.split_whitespace();
                if let (Some(event), Some(Ok(value))) = (parts.next(), parts.next().map(str::parse::<u64>)) {
                    counter!("kaelix_numa_pages_total", "node" => node.to_owned(), "event" => event.to_owned())
                        .absolute(value);
                }
            }
        }
        Ok(())
    }
}

fn sample_io() -> procfs::ProcResult<()> {
    let io = procfs::process::Process::myself()?.io()?;
    for (direction, layer, bytes) in [
        ("read", "syscall", io.rchar),
        ("written", "syscall", io.wchar),
        ("read", "block", io.read_bytes),
        ("written", "block", io.write_bytes),
    ] {
        counter!("kaelix_process_io_bytes_total", "direction" => direction, "layer" => layer).absolute(bytes);
    }
    counter!("kaelix_process_io_syscalls_total", "direction" => "read").absolute(io.syscr);
    counter!("kaelix_process_io_syscalls_total", "direction" => "written").absolute(io.syscw);
    Ok(())
}

/// A thread name as `/proc` shows it (at most 15 bytes, cut on a char boundary).
fn comm_of(name: &str) -> String {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// The value in KiB of `key` in a node's `meminfo` ("Node 0 MemTotal:  123 kB").
fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let mut words = line.split_whitespace().skip_while(|w| *w != key);
        words.next()?;
        words.next()?.parse().ok()
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "the monitor reads the real process")]
mod tests {
    use super::*;
    use crate::collector::MetricsConfig;

    #[test]
    fn meminfo_lines_parse() {
        let text = "Node 0 MemTotal:       24576000 kB\nNode 0 MemFree:        1000 kB\nNode 0 MemUsed: 5 kB\n";
        assert_eq!(meminfo_kib(text, "MemTotal:"), Some(24_576_000));
        assert_eq!(meminfo_kib(text, "MemFree:"), Some(1000));
        assert_eq!(meminfo_kib(text, "Active:"), None);
    }

    #[test]
    fn samples_this_process_threads_io_and_numa() {
        let collector = MetricsCollector::new(&MetricsConfig::default()).unwrap();
        let spinner = std::thread::Builder::new()
            .name("kaelix-test-spinner".to_owned())
            .spawn(|| {
                let started = std::time::Instant::now();
                let mut x = 0u64;
                while started.elapsed() < Duration::from_millis(800) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
                }
                x
            })
            .unwrap();
        let nodes = BTreeMap::from([("kaelix-test-spinner".to_owned(), 0)]);
        let mut monitor = PerformanceMonitor::new(&collector, Duration::from_millis(300), nodes);
        collector.scope(|| monitor.sample());
        std::fs::read_to_string("/proc/self/stat").unwrap(); // some syscall IO between samples
        std::thread::sleep(Duration::from_millis(300));
        collector.scope(|| monitor.sample());
        let text = collector.render();
        let share: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("kaelix_thread_cpu_utilization{thread=\"kaelix-test-spi\"} "))
            .unwrap_or_else(|| panic!("no utilization of the spinning thread:\n{text}"))
            .parse()
            .unwrap();
        // It spun through the whole interval: some CPU time was seen (ticks
        // are 10 ms; a busy machine may give it little), at most about one CPU.
        assert!(share > 0.0 && share < 2.0, "share {share}");
        let read: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("kaelix_process_io_bytes_total{direction=\"read\",layer=\"syscall\"} "))
            .unwrap_or_else(|| panic!("{text}"))
            .parse()
            .unwrap();
        assert!(read > 0.0);
        assert!(text.contains("kaelix_numa_memory_bytes{node=\"0\",state=\"total\"}"), "{text}");
        assert!(text.contains("kaelix_numa_worker_cpu_seconds{node=\"0\"}"), "{text}");
        spinner.join().unwrap();
    }

    #[test]
    fn the_counting_allocator_counts_what_it_forwards() {
        let a = CountingAllocator::new(std::alloc::System);
        count_allocations();
        let before = AllocationTotals::now();
        let layout = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: a valid non-zero layout; the block is freed with the same layout.
        #[allow(unsafe_code, reason = "exercising the allocator directly")]
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            let p = a.realloc(p, layout, 3000);
            assert!(!p.is_null());
            a.dealloc(p, Layout::from_size_align(3000, 8).unwrap());
        }
        let after = AllocationTotals::now();
        // Other tests' threads do not use this allocator (it is not global here).
        assert_eq!(after.allocations - before.allocations, 2);
        assert_eq!(after.deallocations - before.deallocations, 2);
        assert_eq!(after.allocated_bytes - before.allocated_bytes, 4000);
        assert_eq!(after.freed_bytes - before.freed_bytes, 4000);
    }
}

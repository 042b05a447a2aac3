//! The machine's topology: which logical CPUs sit on which NUMA node.
//!
//! # Model
//!
//! A [`Topology`] is a list of [`NumaNode`]s sorted by node id, each with the
//! OS indices of its logical CPUs (hwloc's "PUs", one per hardware thread),
//! sorted. Only nodes that have CPUs are listed: memory-only nodes (CXL,
//! persistent memory, HBM in flat mode) have nothing to pin a worker to. A
//! CPU belongs to exactly one node. The NUMA-pinned executor reads this once
//! at start-up to place one worker per CPU and group them by node.
//!
//! It is the *machine's* topology: the online CPUs, not the CPUs this process
//! may run on. A process restricted by `taskset` or a cgroup cpuset sees the
//! same topology; whoever pins threads must intersect it with the allowed
//! set (`sched_getaffinity`), so a restriction shows up as a clear pinning
//! error rather than as a silently smaller machine.
//!
//! # Sources
//!
//! * **sysfs** (default, Linux): `/sys/devices/system/node/node<N>/cpulist`
//!   for every node. Kernels built without NUMA have no
//!   `/sys/devices/system/node`; the machine is then one node 0 holding
//!   `/sys/devices/system/cpu/online`.
//! * **hwloc** (cargo feature `hwloc`, needs libhwloc): the NUMA node and PU
//!   objects of an hwloc topology built with disallowed resources included,
//!   so it answers the same question as sysfs.
//!
//! [`Topology::detect`] picks hwloc when the feature is on and falls back to
//! sysfs if hwloc fails.

// This module's job is to read the OS's description of the machine.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Largest CPU index accepted in a CPU list. Linux caps `NR_CPUS` at a few
/// thousand; the bound keeps a garbage range from allocating gigabytes.
pub const MAX_CPU_INDEX: usize = 1 << 16;

/// The machine: its NUMA nodes that have CPUs, sorted by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The nodes, sorted by [`NumaNode::id`], each with at least one CPU
    /// when built by this module's constructors.
    pub nodes: Vec<NumaNode>,
}

/// One NUMA node and the logical CPUs on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaNode {
    /// The OS's node number (`N` in `/sys/devices/system/node/node<N>`).
    pub id: usize,
    /// OS indices of the node's logical CPUs (PUs), sorted, no duplicates.
    pub cpus: Vec<usize>,
}

/// Why the topology could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// A sysfs file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A sysfs CPU list did not parse.
    #[error("malformed CPU list {content:?} in {}: {source}", path.display())]
    Cpulist {
        /// The file it was read from.
        path: PathBuf,
        /// The file's content, as read.
        content: String,
        /// What is wrong with it.
        source: CpulistError,
    },
    /// Two nodes claim the same CPU.
    #[error("CPU {cpu} is listed on both NUMA node {first_node} and node {second_node}")]
    DuplicateCpu {
        /// The CPU's OS index.
        cpu: usize,
        /// The lower node id claiming it.
        first_node: usize,
        /// The other node id claiming it.
        second_node: usize,
    },
    /// The source was read but lists no CPU at all.
    #[error("no CPUs found in {origin}")]
    NoCpus {
        /// What was read: a sysfs path or "hwloc".
        origin: String,
    },
    /// An hwloc call failed.
    #[cfg(feature = "hwloc")]
    #[error("hwloc: {call} failed: {source}")]
    Hwloc {
        /// The hwloc entry point.
        call: &'static str,
        /// hwloc's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What is wrong with a CPU list such as `0-3,8,10-11`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpulistError {
    /// Two commas in a row, or a leading or trailing comma.
    #[error("item {position} (counting from 0) is empty")]
    EmptyItem {
        /// Index of the item among the comma-separated items.
        position: usize,
    },
    /// An item is neither `N` nor `N-M` with decimal `N`, `M`.
    #[error("{item:?} is not a CPU number or a range N-M")]
    NotACpuOrRange {
        /// The offending item.
        item: String,
    },
    /// A range `N-M` with `M < N`.
    #[error("range {first}-{last} ends before it starts")]
    ReversedRange {
        /// Start of the range.
        first: usize,
        /// End of the range.
        last: usize,
    },
    /// A CPU index above [`MAX_CPU_INDEX`].
    #[error("CPU {cpu} is above the largest supported index {MAX_CPU_INDEX}")]
    CpuTooLarge {
        /// The index.
        cpu: usize,
    },
}

impl Topology {
    /// One node 0 holding `cpus` (sorted and deduplicated here).
    pub fn single_node(cpus: impl IntoIterator<Item = usize>) -> Self {
        Self { nodes: vec![NumaNode { id: 0, cpus: sorted_unique(cpus.into_iter().collect()) }] }
    }

    /// Number of logical CPUs on all nodes.
    pub fn cpu_count(&self) -> usize {
        self.nodes.iter().map(|node| node.cpus.len()).sum()
    }

    /// Every logical CPU, node by node.
    pub fn cpus(&self) -> impl Iterator<Item = usize> + '_ {
        self.nodes.iter().flat_map(|node| node.cpus.iter().copied())
    }

    /// The id of the node that holds `cpu`, if any does.
    pub fn node_of_cpu(&self, cpu: usize) -> Option<usize> {
        self.nodes.iter().find(|node| node.cpus.binary_search(&cpu).is_ok()).map(|node| node.id)
    }

    /// The best available description of this machine: hwloc when built with
    /// the `hwloc` feature (sysfs if hwloc fails), sysfs otherwise.
    pub fn detect() -> Result<Self, TopologyError> {
        #[cfg(feature = "hwloc")]
        if let Ok(topology) = Self::from_hwloc() {
            return Ok(topology);
        }
        Self::from_sysfs()
    }

    /// Reads the topology from this machine's sysfs (see the module docs).
    pub fn from_sysfs() -> Result<Self, TopologyError> {
        Self::from_sysfs_root(Path::new("/"))
    }

    /// Reads the topology from a sysfs tree under `root`, the directory that
    /// stands for `/` (so `root/sys/devices/system/node/...`). Tests point it
    /// at a fake tree.
    pub fn from_sysfs_root(root: &Path) -> Result<Self, TopologyError> {
        let node_dir = root.join("sys/devices/system/node");
        let entries = match std::fs::read_dir(&node_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return single_node_from_online(root);
            }
            Err(source) => return Err(read_error(&node_dir, source)),
        };
        let mut nodes = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| read_error(&node_dir, source))?;
            // Besides node<N> the directory holds has_cpu, online, power, ...
            let Some(id) =
                entry.file_name().to_str().and_then(|name| name.strip_prefix("node")).and_then(parse_decimal)
            else {
                continue;
            };
            let cpus = read_cpulist(&entry.path().join("cpulist"))?;
            nodes.push(NumaNode { id, cpus });
        }
        from_nodes(nodes, &node_dir.display().to_string())
    }

    /// Reads the topology with hwloc: NUMA node objects and the OS indices of
    /// their PU objects. If hwloc reports no NUMA node, the machine is one
    /// node 0 holding every PU.
    ///
    /// hwloc gives each NUMA node the cpuset of the object it is attached
    /// to, so a memory-only node shares CPUs with the node next to it. As the
    /// kernel does (`cpu_to_node`), each PU is given to one node: the one
    /// with the smallest cpuset containing it (the nearest), ties to the
    /// lowest id (DRAM nodes are numbered before the memory-only nodes
    /// attached beside them). Nodes left without PUs are dropped.
    #[cfg(feature = "hwloc")]
    pub fn from_hwloc() -> Result<Self, TopologyError> {
        use hwlocality::object::types::ObjectType;
        use hwlocality::topology::builder::BuildFlags;

        // Disallowed PUs included: the machine, not this process's cpuset.
        let topology = hwlocality::Topology::builder()
            .with_flags(BuildFlags::INCLUDE_DISALLOWED)
            .map_err(|error| hwloc_error("hwloc_topology_set_flags", error))?
            .build()
            .map_err(|error| hwloc_error("hwloc_topology_load", error))?;

        // hwloc always numbers PUs and NUMA nodes with their OS index; an
        // object without one could not be pinned to and is skipped.
        let pus: Vec<usize> = topology.objects_with_type(ObjectType::PU).filter_map(|pu| pu.os_index()).collect();
        let numa_nodes: Vec<_> = topology
            .objects_with_type(ObjectType::NUMANode)
            .filter_map(|node| Some((node.os_index()?, node.cpuset()?)))
            .collect();

        if numa_nodes.is_empty() {
            return from_nodes(vec![NumaNode { id: 0, cpus: sorted_unique(pus) }], "hwloc");
        }
        let mut cpus_by_node: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for pu in pus {
            let nearest = numa_nodes
                .iter()
                .filter(|(_, cpuset)| cpuset.is_set(pu))
                .min_by_key(|(id, cpuset)| (cpuset.weight().unwrap_or(usize::MAX), *id));
            if let Some((id, _)) = nearest {
                cpus_by_node.entry(*id).or_default().push(pu);
            }
        }
        let nodes = cpus_by_node.into_iter().map(|(id, cpus)| NumaNode { id, cpus }).collect();
        from_nodes(nodes, "hwloc")
    }
}

/// Parses a Linux CPU list (`cpulist` format: `0-3,8,10-11`) into sorted,
/// deduplicated CPU indices. Surrounding whitespace (sysfs's trailing
/// newline) is ignored; an empty list is valid (a memory-only node).
pub fn parse_cpulist(list: &str) -> Result<Vec<usize>, CpulistError> {
    let list = list.trim();
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let mut cpus = Vec::new();
    for (position, item) in list.split(',').enumerate() {
        if item.is_empty() {
            return Err(CpulistError::EmptyItem { position });
        }
        let not_a_cpu = || CpulistError::NotACpuOrRange { item: item.to_owned() };
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => {
                (parse_decimal(first).ok_or_else(not_a_cpu)?, parse_decimal(last).ok_or_else(not_a_cpu)?)
            }
            None => {
                let cpu = parse_decimal(item).ok_or_else(not_a_cpu)?;
                (cpu, cpu)
            }
        };
        if last < first {
            return Err(CpulistError::ReversedRange { first, last });
        }
        if last > MAX_CPU_INDEX {
            return Err(CpulistError::CpuTooLarge { cpu: last });
        }
        cpus.extend(first..=last);
    }
    Ok(sorted_unique(cpus))
}

/// A non-empty run of ASCII digits (`str::parse` alone would accept `+3`).
fn parse_decimal(text: &str) -> Option<usize> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn sorted_unique(mut cpus: Vec<usize>) -> Vec<usize> {
    cpus.sort_unstable();
    cpus.dedup();
    cpus
}

fn read_error(path: &Path, source: io::Error) -> TopologyError {
    TopologyError::Read { path: path.to_owned(), source }
}

#[cfg(feature = "hwloc")]
fn hwloc_error(call: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> TopologyError {
    TopologyError::Hwloc { call, source: Box::new(source) }
}

fn read_cpulist(path: &Path) -> Result<Vec<usize>, TopologyError> {
    let content = std::fs::read_to_string(path).map_err(|source| read_error(path, source))?;
    parse_cpulist(&content).map_err(|source| TopologyError::Cpulist { path: path.to_owned(), content, source })
}

/// The fallback for kernels without NUMA: every online CPU on node 0.
fn single_node_from_online(root: &Path) -> Result<Topology, TopologyError> {
    let online = root.join("sys/devices/system/cpu/online");
    let cpus = read_cpulist(&online)?;
    from_nodes(vec![NumaNode { id: 0, cpus }], &online.display().to_string())
}

/// Drops CPU-less nodes, sorts by id and checks that no CPU is listed twice
/// and that some CPU exists. `origin` names the source in errors.
fn from_nodes(mut nodes: Vec<NumaNode>, origin: &str) -> Result<Topology, TopologyError> {
    nodes.retain(|node| !node.cpus.is_empty());
    nodes.sort_by_key(|node| node.id);
    let mut owner: BTreeMap<usize, usize> = BTreeMap::new();
    for node in &nodes {
        for &cpu in &node.cpus {
            if let Some(first_node) = owner.insert(cpu, node.id) {
                return Err(TopologyError::DuplicateCpu { cpu, first_node, second_node: node.id });
            }
        }
    }
    if nodes.is_empty() {
        return Err(TopologyError::NoCpus { origin: origin.to_owned() });
    }
    Ok(Topology { nodes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A throw-away directory standing for `/`, removed on drop.
    struct FakeRoot(PathBuf);

    impl FakeRoot {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = format!("kaelix-topology-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let dir = std::env::temp_dir().join(unique);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, relative: &str, content: &str) -> &Self {
            let path = self.0.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
            self
        }

        fn node(&self, id: usize, cpulist: &str) -> &Self {
            self.write(&format!("sys/devices/system/node/node{id}/cpulist"), cpulist)
        }

        fn topology(&self) -> Result<Topology, TopologyError> {
            Topology::from_sysfs_root(&self.0)
        }
    }

    impl Drop for FakeRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn node(id: usize, cpus: &[usize]) -> NumaNode {
        NumaNode { id, cpus: cpus.to_vec() }
    }

    #[test]
    fn parse_cpulist_reads_ranges_and_single_cpus() {
        assert_eq!(parse_cpulist("0-3,8,10-11"), Ok(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpulist("5"), Ok(vec![5]));
        assert_eq!(parse_cpulist("0-1\n"), Ok(vec![0, 1]));
    }

    #[test]
    fn parse_cpulist_sorts_and_deduplicates() {
        assert_eq!(parse_cpulist("8,0-2,1"), Ok(vec![0, 1, 2, 8]));
    }

    #[test]
    fn parse_cpulist_accepts_an_empty_list() {
        assert_eq!(parse_cpulist(""), Ok(vec![]));
        assert_eq!(parse_cpulist("\n"), Ok(vec![]));
    }

    #[test]
    fn parse_cpulist_names_what_is_malformed() {
        let not_a_cpu = |item: &str| Err(CpulistError::NotACpuOrRange { item: item.to_owned() });
        assert_eq!(parse_cpulist("0,,2"), Err(CpulistError::EmptyItem { position: 1 }));
        assert_eq!(parse_cpulist("0,"), Err(CpulistError::EmptyItem { position: 1 }));
        assert_eq!(parse_cpulist("x"), not_a_cpu("x"));
        assert_eq!(parse_cpulist("0-"), not_a_cpu("0-"));
        assert_eq!(parse_cpulist("-1"), not_a_cpu("-1"));
        assert_eq!(parse_cpulist("+3"), not_a_cpu("+3"));
        assert_eq!(parse_cpulist("0 - 3"), not_a_cpu("0 - 3"));
        assert_eq!(parse_cpulist("1-2-3"), not_a_cpu("1-2-3"));
        // The kernel accepts strided ranges as input but never prints them.
        assert_eq!(parse_cpulist("0-7:2/4"), not_a_cpu("0-7:2/4"));
        assert_eq!(parse_cpulist("3-1"), Err(CpulistError::ReversedRange { first: 3, last: 1 }));
        assert_eq!(parse_cpulist("0-99999999999"), Err(CpulistError::CpuTooLarge { cpu: 99_999_999_999 }));
    }

    #[test]
    fn sysfs_lists_nodes_with_cpus_sorted_by_id() {
        let root = FakeRoot::new();
        root.node(10, "4-5\n")
            .node(2, "0-1,3\n")
            .node(3, "\n") // memory-only
            .write("sys/devices/system/node/online", "2-3,10\n")
            .write("sys/devices/system/node/has_cpu", "2,10\n")
            .write("sys/devices/system/node/power/async", "disabled\n");
        let topology = root.topology().unwrap();
        assert_eq!(topology.nodes, vec![node(2, &[0, 1, 3]), node(10, &[4, 5])]);
        assert_eq!(topology.cpu_count(), 5);
        assert_eq!(topology.cpus().collect::<Vec<_>>(), vec![0, 1, 3, 4, 5]);
        assert_eq!(topology.node_of_cpu(4), Some(10));
        assert_eq!(topology.node_of_cpu(2), None);
    }

    #[test]
    fn sysfs_without_numa_is_one_node_of_the_online_cpus() {
        let root = FakeRoot::new();
        root.write("sys/devices/system/cpu/online", "0-2,4\n");
        assert_eq!(root.topology().unwrap(), Topology::single_node([4, 0, 1, 2]));
    }

    #[test]
    fn sysfs_error_names_the_file_and_its_content() {
        let root = FakeRoot::new();
        root.node(0, "0-1\n").node(1, "2-x\n");
        let error = root.topology().unwrap_err();
        let TopologyError::Cpulist { path, content, source } = &error else {
            panic!("unexpected error {error}");
        };
        assert!(path.ends_with("sys/devices/system/node/node1/cpulist"));
        assert_eq!(content, "2-x\n");
        assert_eq!(*source, CpulistError::NotACpuOrRange { item: "2-x".to_owned() });
        let message = error.to_string();
        assert!(message.contains("node1/cpulist") && message.contains("\"2-x\\n\""));
    }

    #[test]
    fn sysfs_node_without_cpulist_is_a_read_error() {
        let root = FakeRoot::new();
        root.write("sys/devices/system/node/node0/meminfo", "");
        let error = root.topology().unwrap_err();
        let TopologyError::Read { path, source } = &error else {
            panic!("unexpected error {error}");
        };
        assert!(path.ends_with("node0/cpulist"));
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn sysfs_without_any_cpu_is_an_error() {
        let root = FakeRoot::new();
        root.node(0, "\n");
        assert!(matches!(root.topology(), Err(TopologyError::NoCpus { .. })));

        let empty = FakeRoot::new();
        empty.write("sys/devices/system/cpu/online", "\n");
        assert!(matches!(empty.topology(), Err(TopologyError::NoCpus { .. })));
    }

    #[test]
    fn sysfs_rejects_a_cpu_on_two_nodes() {
        let root = FakeRoot::new();
        root.node(1, "2-3\n").node(0, "0-2\n");
        assert!(matches!(root.topology(), Err(TopologyError::DuplicateCpu { cpu: 2, first_node: 0, second_node: 1 })));
    }

    #[test]
    fn single_node_sorts_and_deduplicates() {
        let topology = Topology::single_node([3, 1, 3, 0]);
        assert_eq!(topology.nodes, vec![node(0, &[0, 1, 3])]);
        assert_eq!(topology.cpu_count(), 3);
    }

    #[test]
    fn this_machine_has_cpus() {
        assert!(Topology::detect().unwrap().cpu_count() > 0);
    }

    #[cfg(feature = "hwloc")]
    #[test]
    fn hwloc_and_sysfs_agree_on_this_machine() {
        assert_eq!(Topology::from_hwloc().unwrap(), Topology::from_sysfs().unwrap());
    }
}

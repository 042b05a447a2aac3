//! The validator: rules by category, checked against the machine.
//!
//! A configuration type implements [`Validate`]: it pushes [`Finding`]s
//! (key path, category, severity, message) into [`Findings`]. Errors stop a
//! start or a reload; warnings are reported and the configuration applies.
//! Rules that need the machine ask the [`SystemProbe`] in the
//! [`ValidationContext`], never the OS directly, so a test hands in a
//! [`FixedProbe`] and gets the same findings on every machine.
//!
//! The [`Phase`] tells rules whether the process already runs with this
//! configuration's listeners: at a reload the ports are ours, so "port in
//! use" is no finding then.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::source::Origin;

/// Whether a finding stops the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The configuration cannot work; it is refused.
    Error,
    /// It works, but probably not as meant.
    Warning,
}

/// The seed's constraint categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// Listeners, addresses, ports, connection limits.
    Network,
    /// Threads, buffers and batch sizes against the machine.
    Performance,
    /// Authentication, TLS, permissions.
    Security,
    /// Logs and metrics.
    Telemetry,
    /// Topics, retention, disk.
    Storage,
    /// Constraints between sections.
    Integration,
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Category::Network => "network",
            Category::Performance => "performance",
            Category::Security => "security",
            Category::Telemetry => "telemetry",
            Category::Storage => "storage",
            Category::Integration => "integration",
        })
    }
}

/// One rule's verdict about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// The rule's category.
    pub category: Category,
    /// The key path it is about (`limits.max_payload`, `topics[2].name`,
    /// or a section such as `auth`).
    pub key: String,
    /// What is wrong, in the user's terms.
    pub message: String,
}

/// The findings of one validation, in the order the rules ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    items: Vec<Finding>,
}

impl Findings {
    /// Records an error.
    pub fn error(&mut self, category: Category, key: impl Into<String>, message: impl Into<String>) {
        self.items.push(Finding { severity: Severity::Error, category, key: key.into(), message: message.into() });
    }

    /// Records a warning.
    pub fn warn(&mut self, category: Category, key: impl Into<String>, message: impl Into<String>) {
        self.items.push(Finding { severity: Severity::Warning, category, key: key.into(), message: message.into() });
    }

    /// Every finding.
    pub fn iter(&self) -> impl Iterator<Item = &Finding> {
        self.items.iter()
    }

    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|f| f.severity == Severity::Error)
    }

    /// The first error, if any.
    pub fn first_error(&self) -> Option<&Finding> {
        self.items.iter().find(|f| f.severity == Severity::Error)
    }
}

/// A finding or a load error, placed at its source: what `kaelix config
/// check` prints, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where the offending value came from.
    pub origin: Origin,
    /// The key path (empty for a syntax error that names no key).
    pub key: String,
    /// The validator's category (none for syntax, type and unknown-key
    /// errors).
    pub category: Option<Category>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `file:line:column: key: message` (warnings say `warning:` after the
    /// place; values from the environment or a flag name the variable or
    /// flag; defaults say `default`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if self.severity == Severity::Warning {
            write!(f, "warning: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)
    }
}

/// When a validation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before starting, or `kaelix config check`: listeners are not bound
    /// yet, so ports must be free.
    Start,
    /// A reload of a running process: its own listeners hold the ports.
    Reload,
}

/// The machine, as the validator sees it.
pub trait SystemProbe: Send + Sync {
    /// CPUs this process may run on.
    fn cpu_cores(&self) -> usize;
    /// Physical memory in bytes (None: unknown).
    fn total_memory_bytes(&self) -> Option<u64>;
    /// Bytes free for an unprivileged writer on the file system holding
    /// `path` (or its nearest existing ancestor); None: unknown.
    fn free_disk_bytes(&self, path: &Path) -> Option<u64>;
    /// Whether `ip` is an address of this machine (or the unspecified
    /// address), i.e. a listener can bind it.
    fn is_local_address(&self, ip: IpAddr) -> bool;
    /// Whether a listener could bind `addr` now (port 0 is always free).
    fn port_is_free(&self, addr: SocketAddr) -> bool;
}

/// What a [`Validate`] implementation is given.
pub struct ValidationContext<'a> {
    /// The machine.
    pub probe: &'a dyn SystemProbe,
    /// Start or reload.
    pub phase: Phase,
}

/// A configuration type's rules.
pub trait Validate {
    /// Pushes a finding for everything wrong or doubtful.
    fn validate(&self, ctx: &ValidationContext<'_>, findings: &mut Findings);
}

/// Runs a configuration's rules against a probe.
pub struct ConfigValidator<'a> {
    probe: &'a dyn SystemProbe,
    phase: Phase,
}

impl<'a> ConfigValidator<'a> {
    /// A validator for a configuration about to start.
    pub fn new(probe: &'a dyn SystemProbe) -> Self {
        ConfigValidator { probe, phase: Phase::Start }
    }

    /// The same, for a reload of a running process.
    pub fn for_phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
        self
    }

    /// Every finding about `config`.
    pub fn validate<T: Validate + ?Sized>(&self, config: &T) -> Findings {
        let mut findings = Findings::default();
        config.validate(&ValidationContext { probe: self.probe, phase: self.phase }, &mut findings);
        findings
    }
}

/// The real machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsProbe;

#[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "the probe's job is to ask the OS")]
impl SystemProbe for OsProbe {
    fn cpu_cores(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    fn total_memory_bytes(&self) -> Option<u64> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    fn free_disk_bytes(&self, path: &Path) -> Option<u64> {
        // The data directory may not exist yet: ask about the nearest
        // ancestor that does (the file system it will be created on).
        let mut at: PathBuf =
            if path.is_absolute() { path.to_owned() } else { std::env::current_dir().ok()?.join(path) };
        while !at.exists() {
            at = at.parent()?.to_owned();
        }
        let stat = rustix::fs::statvfs(&at).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    fn is_local_address(&self, ip: IpAddr) -> bool {
        // Binding port 0 on the address succeeds exactly when the address
        // is configured on an interface here (or is unspecified).
        match std::net::TcpListener::bind(SocketAddr::new(ip, 0)) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::AddrNotAvailable,
        }
    }

    fn port_is_free(&self, addr: SocketAddr) -> bool {
        if addr.port() == 0 {
            return true;
        }
        match std::net::TcpListener::bind(addr) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::AddrInUse,
        }
    }
}

/// A machine described by values: what tests hand the validator.
#[derive(Clone, Debug)]
pub struct FixedProbe {
    /// CPUs.
    pub cores: usize,
    /// Physical memory.
    pub memory_bytes: Option<u64>,
    /// Free disk everywhere.
    pub free_disk_bytes: Option<u64>,
    /// Addresses of this machine (the unspecified addresses always are).
    pub local_addresses: Vec<IpAddr>,
    /// Addresses some other process listens on.
    pub busy: Vec<SocketAddr>,
}

impl Default for FixedProbe {
    /// 4 cores, 8 GiB, 100 GiB free, loopback only, nothing busy.
    fn default() -> Self {
        FixedProbe {
            cores: 4,
            memory_bytes: Some(8 << 30),
            free_disk_bytes: Some(100 << 30),
            local_addresses: vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)],
            busy: Vec::new(),
        }
    }
}

impl SystemProbe for FixedProbe {
    fn cpu_cores(&self) -> usize {
        self.cores
    }

    fn total_memory_bytes(&self) -> Option<u64> {
        self.memory_bytes
    }

    fn free_disk_bytes(&self, _path: &Path) -> Option<u64> {
        self.free_disk_bytes
    }

    fn is_local_address(&self, ip: IpAddr) -> bool {
        ip.is_unspecified() || self.local_addresses.contains(&ip)
    }

    fn port_is_free(&self, addr: SocketAddr) -> bool {
        addr.port() == 0
            || !self.busy.iter().any(|b| {
                b.port() == addr.port()
                    && (b.ip() == addr.ip() || b.ip().is_unspecified() || addr.ip().is_unspecified())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_print_place_key_and_message() {
        let d = Diagnostic {
            severity: Severity::Warning,
            origin: Origin::File { path: "k.toml".into(), line: 3, column: 7 },
            key: "limits.max_pending".into(),
            category: Some(Category::Performance),
            message: "big".into(),
        };
        assert_eq!(d.to_string(), "k.toml:3:7: warning: limits.max_pending: big");
        let d = Diagnostic { severity: Severity::Error, origin: Origin::Env { var: "K_X".into() }, ..d };
        assert_eq!(d.to_string(), "environment K_X: limits.max_pending: big");
    }

    #[test]
    fn the_fixed_probe_treats_wildcards_as_overlapping() {
        let p = FixedProbe { busy: vec!["0.0.0.0:4222".parse().unwrap()], ..FixedProbe::default() };
        assert!(!p.port_is_free("127.0.0.1:4222".parse().unwrap()));
        assert!(p.port_is_free("127.0.0.1:4223".parse().unwrap()));
        assert!(p.port_is_free("127.0.0.1:0".parse().unwrap()));
        assert!(!p.is_local_address("10.9.9.9".parse().unwrap()));
        assert!(p.is_local_address("0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn the_os_probe_sees_this_machine() {
        let p = OsProbe;
        assert!(p.cpu_cores() >= 1);
        assert!(p.total_memory_bytes().unwrap() > 0);
        assert!(p.free_disk_bytes(Path::new("./does/not/exist/yet")).is_some());
        assert!(p.is_local_address("127.0.0.1".parse().unwrap()));
        // TEST-NET-3: documentation addresses are on no interface.
        assert!(!p.is_local_address("203.0.113.7".parse().unwrap()));
        #[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "a real listener to see the port busy")]
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!p.port_is_free(held.local_addr().unwrap()));
    }
}

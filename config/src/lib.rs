//! Kaelix configuration: where every setting comes from, whether it can
//! work on this machine, and how it changes while the process runs.
//!
//! The crate is generic over the configuration type: the server owns its
//! settings (`kaelix_server::ServerConfig`) and the rules that only it
//! knows; this crate owns the machinery. That keeps the dependency
//! direction one way (`server` → `config`) and lets any other binary or
//! embedding use the same loader for its own type.
//!
//! * [`loader`] — [`ConfigLoader`]: defaults → a TOML file (search paths
//!   or an explicit path) → environment variables (`PREFIX_SECTION__KEY`)
//!   → command-line overrides → validation. Unknown keys are errors; every
//!   diagnostic names its source (`file:line:column` and key path, the
//!   variable, the flag); [`Loaded`] records the origin of every effective
//!   value.
//! * [`validate`] — [`ConfigValidator`], [`Validate`] (implemented by the
//!   configuration type), findings by [`Category`] and [`Severity`]
//!   (errors stop, warnings inform), and [`SystemProbe`]: the machine
//!   (cores, memory, free disk, local addresses, free ports) behind a trait
//!   so tests inject a fixed one ([`FixedProbe`]) and stay deterministic.
//! * [`reload`] — [`HotReloadManager`]: watches the file's directory,
//!   debounces, loads and validates, refuses changes to keys not declared
//!   reloadable, swaps atomically (readers take no lock), broadcasts a
//!   [`ConfigChange`] naming the changed keys, keeps a backup of the
//!   previous good file and counts what it did.
//!
//! This crate's job is the OS (files, environment, sockets for the port
//! probe, inotify, the wall clock for debouncing): each such use is allowed
//! at its site, as in the other OS-facing crates.

pub mod loader;
pub mod reload;
pub mod source;
pub mod validate;

pub use loader::{ConfigLoader, LoadError, Loaded};
pub use reload::{ConfigChange, HotReloadManager, ReloadPolicy, ReloadStats};
pub use source::{Location, Origin};
pub use validate::{
    Category, ConfigValidator, Diagnostic, Findings, FixedProbe, OsProbe, Phase, Severity, SystemProbe, Validate,
    ValidationContext,
};

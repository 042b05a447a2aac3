//! `kaelix config check [FILE]` and `kaelix config show`: the configuration
//! `kaelix serve` would run with, loaded the same way (defaults → file →
//! `KAELIX_` environment → validation against this machine; see
//! `kaelix_config::loader`).
//!
//! Without a FILE / `--config`, the search paths are tried in order:
//! `./kaelix.toml`, `$XDG_CONFIG_HOME/kaelix/kaelix.toml` (else
//! `~/.config/kaelix/kaelix.toml`), `/etc/kaelix/kaelix.toml`.

#![allow(clippy::disallowed_methods, reason = "the binary's edge: the environment names the search paths")]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kaelix_config::{ConfigLoader, Severity};
use kaelix_server::ServerConfig;

/// `kaelix config …`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Load and validate a configuration: every error and warning, one per
    /// line, placed at its file:line:column, variable or flag. Exit status
    /// 0 valid (warnings allowed), 1 invalid.
    Check {
        /// The file (default: the first of the search paths that exists).
        file: Option<PathBuf>,
    },
    /// Print the configuration as TOML: the values set by the file and the
    /// environment, or with --effective every value.
    Show(ShowArgs),
}

/// `kaelix config show` flags.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The file (default: the first of the search paths that exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Every effective value, defaults included.
    #[arg(long)]
    pub effective: bool,
    /// One `key = value  # origin` line per value instead of TOML.
    #[arg(long)]
    pub origin: bool,
}

/// Where `kaelix` looks for `kaelix.toml` when no file is named.
pub fn search_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("kaelix.toml")];
    match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => paths.push(PathBuf::from(dir).join("kaelix/kaelix.toml")),
        _ => {
            if let Some(home) = std::env::var_os("HOME") {
                paths.push(PathBuf::from(home).join(".config/kaelix/kaelix.toml"));
            }
        }
    }
    paths.push(PathBuf::from("/etc/kaelix/kaelix.toml"));
    paths
}

/// The loader `kaelix serve` and `kaelix config` share: the named file or
/// the search paths, then `KAELIX_` variables.
pub fn loader(file: Option<PathBuf>) -> ConfigLoader {
    let loader = match file {
        Some(f) => ConfigLoader::new().with_path(f),
        None => ConfigLoader::new().with_search_paths(search_paths()),
    };
    loader.with_env_prefix("KAELIX")
}

/// Runs a `kaelix config` command.
pub fn run(command: ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Check { file } => check(file),
        ConfigCommand::Show(args) => show(args),
    }
}

fn describe(loader: &ConfigLoader) -> String {
    match loader.file() {
        Some(f) => f.display().to_string(),
        None => format!(
            "no file (none of {} exists): defaults and environment",
            search_paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn check(file: Option<PathBuf>) -> ExitCode {
    let loader = loader(file);
    let what = describe(&loader);
    match loader.load::<ServerConfig>() {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("{w}");
            }
            println!("{what}: valid ({} warning{})", loaded.warnings.len(), plural(loaded.warnings.len()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            for d in &e.diagnostics {
                println!("{d}");
            }
            let errors = e.errors().count();
            let warnings = e.diagnostics.iter().filter(|d| d.severity == Severity::Warning).count();
            println!("{what}: invalid ({errors} error{}, {warnings} warning{})", plural(errors), plural(warnings));
            ExitCode::from(1)
        }
    }
}

fn show(args: ShowArgs) -> ExitCode {
    let loader = loader(args.config);
    match loader.load::<ServerConfig>() {
        Ok(loaded) => {
            if args.origin {
                println!("# {}", describe(&loader));
                for line in loaded.origin_lines(args.effective) {
                    println!("{line}");
                }
            } else if args.effective {
                print!("{}", loaded.effective_toml());
            } else {
                print!("{}", loaded.overrides_toml());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kaelix config show: invalid configuration:\n{e}");
            ExitCode::from(1)
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

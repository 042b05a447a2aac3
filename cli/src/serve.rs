//! `kaelix serve`: one node on the real executor.
//!
//! Loads the configuration (defaults → file → `KAELIX_` environment →
//! flags → validation against this machine; see `kaelix_config`) and
//! refuses to start on any error, naming each. Then opens the data
//! directory, starts the server and runs until SIGINT or SIGTERM. The file
//! is watched and reloaded on change (1 s debounce) and on SIGHUP: the
//! reloadable keys (`ServerConfig::RELOADABLE`) apply to the running server
//! and the log filter; any other change, or an invalid file, is refused
//! whole and logged, and the running configuration stays.
//! With `--cluster` (or `[cluster] enabled = true`) it is a member of a
//! static cluster: replicated topics are Raft groups of all the members
//! and the server runs on the member's broker (see `crate::cluster`); the
//! members also run SWIM membership, shown by `kaelix cluster status`.
//! The first signal drains (stop accepting, answer what was read, sync; a
//! cluster member then hands the leadership of its partitions to other
//! members, for at most 3 s, and leaves the SWIM membership; exit 0); a
//! second one exits at once.
//! With `[tracing] enabled = true` the publishes' spans are exported to an
//! OpenTelemetry collector over OTLP/HTTP (`kaelix_telemetry::otlp`; the
//! span model is `kaelix_server::trace`), flushed after the drain.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // the binary's edge: files, signals, threads

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use kaelix_config::{ConfigLoader, HotReloadManager, Loaded, ReloadPolicy};
use kaelix_core::NodeId;
use kaelix_core::runtime::Clock;
use kaelix_core::time::Duration;
use kaelix_runtime_real::{Executor, ExecutorConfig, NodeConfig, RealRuntime, RuntimeConfig};
use kaelix_server::config::{LogFormat, LogLevel};
use kaelix_server::{Server, ServerConfig};
use kaelix_telemetry::OtlpTracing;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

/// How log lines look.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormatArg {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// Least severe level logged.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogLevelArg {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Lifecycle events, refusals, slow consumers.
    Info,
    /// Per-connection events.
    Debug,
    /// Everything.
    Trace,
}

/// `kaelix serve` flags. Flags override the environment (`KAELIX_…`),
/// which overrides the configuration file, which overrides the defaults.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where durable topics live (created if missing) [default: ./kaelix-data; `node.data_dir`].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file (default: the first of ./kaelix.toml,
    /// $XDG_CONFIG_HOME/kaelix/kaelix.toml, /etc/kaelix/kaelix.toml that
    /// exists). Watched and reloaded on change and on SIGHUP.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// NATS-protocol listener address [default: 127.0.0.1:4222; `nats.listen`].
    #[arg(long)]
    pub nats_listen: Option<SocketAddr>,
    /// Native-protocol listener address [default: 127.0.0.1:7422; `native.listen`].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Log line format [default: human; `log.format`].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Least severe level logged [default: info; `log.level`, reloadable].
    #[arg(long, value_enum)]
    pub log_level: Option<LogLevelArg>,
    /// Worker threads [default: one per CPU; `runtime.worker_threads`].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seconds a drain waits for connections to finish [default: 10; `node.shutdown_grace_secs`].
    #[arg(long)]
    pub shutdown_grace_secs: Option<u64>,
    /// Address of the metrics endpoint, /metrics and /healthz
    /// [default: 127.0.0.1:9464; `telemetry.metrics_listen`].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve no metrics endpoint [`telemetry.metrics = false`].
    #[arg(long)]
    pub no_metrics: bool,
    /// Run as a member of a static cluster: replicated topics are Raft
    /// groups of every member [`cluster.enabled = true`].
    #[arg(long)]
    pub cluster: bool,
    /// This member's id, one of --peers [`cluster.node_id`].
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Where this member accepts its peers (its --peers entry, or a
    /// wildcard address with that port) [`cluster.listen`].
    #[arg(long)]
    pub cluster_listen: Option<SocketAddr>,
    /// Every member, this one included: ID=HOST:PORT,ID=HOST:PORT,...
    /// (each member also uses the port after its own for forwarded
    /// publishes) [`cluster.peers`].
    #[arg(long)]
    pub peers: Option<String>,
    /// Cluster addresses of members to join through (SWIM), HOST:PORT,...;
    /// without --peers this member holds no replicated partitions
    /// [`cluster.join`].
    #[arg(long)]
    pub join: Option<String>,
    /// What an empty --data-dir means: `new` (a member of a cluster
    /// starting for the first time) or `existing` (this member's disk was
    /// lost or replaced: it recovers from the others before it votes)
    /// [default: new; `cluster.initial_state`].
    #[arg(long, value_enum)]
    pub initial_cluster_state: Option<InitialStateArg>,
}

/// `--initial-cluster-state` (`cluster.initial_state`).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum InitialStateArg {
    /// An empty data directory is a new member of a new cluster.
    New,
    /// An empty data directory is a member whose disk was lost.
    Existing,
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

type LogHandle = reload::Handle<LevelFilter, tracing_subscriber::Registry>;

/// Installs the subscriber: the log lines, whose level the handle changes
/// on reload. (Trace spans do not go through it: `kaelix_server::trace`
/// builds them with the exporter's tracer directly.)
fn init_logging(format: LogFormat, level: LogLevel) -> LogHandle {
    // A per-layer filter, whose level hint is the log level: the process's
    // maximum level stays the log level, so a disabled `debug!`/`trace!`
    // fails one level compare.
    let (filter, handle) = reload::Layer::new(level_filter(level));
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Human => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter)).init()
        }
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter))
            .init(),
    }
    handle
}

/// Builds the OTLP pipeline of `[tracing]` (`None` when off).
fn start_tracing(config: &ServerConfig) -> Result<Option<OtlpTracing>, String> {
    if !config.tracing.enabled {
        return Ok(None);
    }
    let node = if config.cluster.enabled { config.cluster.node_id } else { 1 };
    OtlpTracing::start(&config.tracing, node).map(Some).map_err(|e| e.to_string())
}

/// The loader with the flags on top (what a reload reuses).
fn loader(args: &ServeArgs) -> ConfigLoader {
    let mut loader = crate::config_cmd::loader(args.config.clone());
    if let Some(dir) = &args.data_dir {
        loader = loader.with_override("node.data_dir", dir.display().to_string(), "--data-dir");
    }
    if let Some(addr) = args.nats_listen {
        loader = loader.with_override("nats.listen", addr.to_string(), "--nats-listen");
    }
    if let Some(addr) = args.listen {
        loader = loader.with_override("native.listen", addr.to_string(), "--listen");
    }
    if let Some(format) = args.log_format {
        let name = match format {
            LogFormatArg::Human => "human",
            LogFormatArg::Json => "json",
        };
        loader = loader.with_override("log.format", name, "--log-format");
    }
    if let Some(level) = args.log_level {
        let name = match level {
            LogLevelArg::Error => "error",
            LogLevelArg::Warn => "warn",
            LogLevelArg::Info => "info",
            LogLevelArg::Debug => "debug",
            LogLevelArg::Trace => "trace",
        };
        loader = loader.with_override("log.level", name, "--log-level");
    }
    if let Some(workers) = args.workers {
        loader = loader.with_override("runtime.worker_threads", workers as i64, "--workers");
    }
    if let Some(secs) = args.shutdown_grace_secs {
        loader = loader.with_override("node.shutdown_grace_secs", secs as i64, "--shutdown-grace-secs");
    }
    if let Some(addr) = args.metrics_listen {
        loader = loader.with_override("telemetry.metrics_listen", addr.to_string(), "--metrics-listen");
    }
    if args.no_metrics {
        loader = loader.with_override("telemetry.metrics", false, "--no-metrics");
    }
    if args.cluster {
        loader = loader.with_override("cluster.enabled", true, "--cluster");
    }
    if let Some(id) = args.node_id {
        loader = loader.with_override("cluster.node_id", i64::try_from(id).unwrap_or(i64::MAX), "--node-id");
    }
    if let Some(addr) = args.cluster_listen {
        loader = loader.with_override("cluster.listen", addr.to_string(), "--cluster-listen");
    }
    if let Some(peers) = &args.peers {
        let list: Vec<String> = peers.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect();
        loader = loader.with_override("cluster.peers", list, "--peers");
    }
    if let Some(join) = &args.join {
        let list: Vec<String> = join.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect();
        loader = loader.with_override("cluster.join", list, "--join");
    }
    if let Some(state) = args.initial_cluster_state {
        let name = match state {
            InitialStateArg::New => "new",
            InitialStateArg::Existing => "existing",
        };
        loader = loader.with_override("cluster.initial_state", name, "--initial-cluster-state");
    }
    loader
}

/// The executor's settings from `[runtime]` (validated by the loader).
fn runtime_config(settings: &kaelix_server::config::RuntimeSettings) -> RuntimeConfig {
    RuntimeConfig {
        worker_threads: settings.worker_threads,
        task_queue_depth: settings.task_queue_depth,
        target_latency_us: settings.target_latency_us,
        numa_aware: settings.numa_aware,
        priority_levels: settings.priority_levels,
    }
}

/// Turns transparent huge pages off for this process (the kernel's
/// `PR_SET_THP_DISABLE`, from now on and for every thread), unless
/// `MIMALLOC_ALLOW_THP` is set, which leaves the choice to mimalloc.
///
/// mimalloc advises its arenas `MADV_HUGEPAGE`, so where the kernel's THP
/// mode is `madvise` every fresh page it faults in is a 2 MiB huge page
/// the kernel zeroes whole; memory that comes and goes (the span
/// exporter's batches, buffers that grow under load) then costs page
/// clearing out of proportion to what is used. Measured both ways, with
/// tracing off and on, in `benches/tracing/RESULTS.md`.
fn without_huge_pages() -> rustix::io::Result<()> {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return Ok(());
    }
    rustix::thread::disable_transparent_huge_pages(true)
}

/// Runs the server until a signal; the exit code says how it ended.
pub fn run(args: ServeArgs) -> ExitCode {
    let huge_pages = without_huge_pages();
    let loader = loader(&args);
    let loaded: Loaded<ServerConfig> = match loader.load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kaelix serve: refusing to start: the configuration is invalid:\n{e}");
            return ExitCode::from(2);
        }
    };
    let otlp = match start_tracing(&loaded.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kaelix serve: refusing to start: {e}");
            return ExitCode::from(2);
        }
    };
    let log_handle = init_logging(loaded.config.log.format, loaded.config.log.level);
    if let Some(t) = &otlp {
        // From here on publishes are traced (see `kaelix_server::trace`).
        kaelix_server::trace::install(Box::new(t.root_sampler()), t.tracer());
        println!(
            "kaelix serve: traces to {} (sampling ratio {})",
            loaded.config.tracing.endpoint, loaded.config.tracing.sampling_ratio
        );
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = huge_pages {
        tracing::warn!(error = %e, "transparent huge pages could not be turned off");
    }
    let config = loaded.config.clone();
    let reloader = HotReloadManager::new(loader, loaded, ReloadPolicy::new(ServerConfig::RELOADABLE.iter().copied()));
    let data_dir = PathBuf::from(&config.node.data_dir);
    let args = (data_dir, runtime_config(&config.runtime), config.node.shutdown_grace_secs);
    let code = run_with(args, config, reloader, log_handle);
    if let Some(t) = otlp {
        // After the drain: the spans of the last requests go out too.
        t.shutdown();
    }
    code
}

fn run_with(
    (data_dir, runtime, grace_secs): (PathBuf, RuntimeConfig, u64),
    config: ServerConfig,
    reloader: Option<HotReloadManager<ServerConfig>>,
    log_handle: LogHandle,
) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        eprintln!("kaelix serve: creating data directory {}: {e}", data_dir.display());
        return ExitCode::from(2);
    }
    let exec = match Executor::new(ExecutorConfig::from(&runtime)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kaelix serve: starting the executor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node_config = if config.cluster.enabled {
        match crate::cluster::node_config(&config.cluster, &data_dir) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("kaelix serve: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        NodeConfig::new(NodeId(1), &data_dir)
    };
    let rt = match RealRuntime::start(exec.handle(), node_config) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kaelix serve: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match crate::telemetry::start(&config.telemetry, exec.handle(), &rt) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kaelix serve: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(t) = &telemetry {
        println!("kaelix serve: metrics on http://{}/metrics", t.endpoint.local_addr());
    }
    let collector = telemetry.as_ref().map(|t| t.collector.clone());
    let (stop_tx, stop_rx) = futures_channel::oneshot::channel::<i32>();
    if let Err(e) = watch_signals(stop_tx) {
        eprintln!("kaelix serve: installing signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    let grace = Duration::from_secs(grace_secs);
    let clock = rt.clone();
    let outcome = exec.block_on(async move {
        let plugins = match crate::plugins::ServePlugins::build(&rt, &config.plugins) {
            Ok(p) => Arc::new(p),
            Err(e) => return Err(e),
        };
        let hook = plugins.hook();
        let mut step_down = None;
        let mut membership = None;
        let started = if config.cluster.enabled && config.cluster.peers.is_empty() {
            // Joined by address: membership only, the broker local.
            let swim = crate::cluster::start_membership(&rt, &config.cluster)?;
            if let Some(collector) = &collector {
                let view = crate::cluster::ClusterView::default();
                crate::cluster::add_metrics(collector, config.cluster.node_id, view, Vec::new());
                crate::cluster::add_membership_metrics(collector, swim.clone());
            }
            membership = Some(swim);
            println!(
                "kaelix serve: cluster member {} joining through {} (membership only: no replicated partitions)",
                config.cluster.node_id,
                config.cluster.join.join(",")
            );
            Server::start_with_hook(rt, config, hook).await
        } else if config.cluster.enabled {
            let view = crate::cluster::ClusterView::default();
            let (node_id, peers) = (config.cluster.node_id, config.cluster.peers.join(","));
            let member = crate::cluster::start_member(&rt, config, hook, view.clone())?;
            step_down = Some(member.step_down);
            if let Some(collector) = &collector {
                crate::cluster::add_metrics(collector, node_id, view, member.groups.clone());
                crate::cluster::add_membership_metrics(collector, member.membership.clone());
            }
            membership = Some(member.membership);
            println!(
                "kaelix serve: cluster member {node_id} of {peers}: {} replicated partitions",
                member.groups.len()
            );
            Ok(member.server)
        } else {
            Server::start_with_hook(rt, config, hook).await
        };
        let server = match started {
            Ok(s) => s,
            Err(e) => return Err(e.to_string()),
        };
        if let Some(collector) = &collector {
            kaelix_telemetry::sources::add_server(collector, server.observer());
        }
        // Reloads from here on reach the running server.
        let _watch = match &reloader {
            Some(manager) => match start_reloading(manager, server.clone(), plugins.clone(), log_handle) {
                Ok(watch) => Some(watch),
                Err(e) => return Err(format!("watching {}: {e}", manager.path().display())),
            },
            None => {
                watch_sighup(None);
                None
            }
        };
        println!("kaelix serve: NATS clients on nats://{}", server.nats_addr());
        println!("kaelix serve: native clients on {}", server.native_addr());
        println!("kaelix serve: data in {}", data_dir.display());
        tracing::info!(nats = %server.nats_addr(), native = %server.native_addr(), data_dir = %data_dir.display(), "serving");
        let signal = stop_rx.await.unwrap_or(0);
        tracing::info!(signal, "draining: no new connections; answering what was read, then syncing");
        server.shutdown(grace).await;
        if let Some(step_down) = step_down {
            let started = clock.now();
            match kaelix_core::runtime::timeout(&clock, HAND_OFF_TIMEOUT, step_down.hand_off()).await {
                Ok(()) => tracing::info!(took = ?(clock.now() - started), "handed the leadership of every partition away"),
                Err(_) => tracing::warn!(
                    after = ?HAND_OFF_TIMEOUT,
                    "still leading a partition (no caught-up member took over); stopping anyway: the others elect a leader"
                ),
            }
        }
        if let Some(membership) = membership {
            // Gossiped at once; the executor's grace below lets the
            // transport hand it to the kernel, so the others mark this
            // member left rather than suspecting it.
            membership.leave();
            tracing::info!("left the SWIM membership");
        }
        Ok(())
    });
    // What is left (a cluster member's Raft driver, transport and SWIM
    // tasks) never ends by itself; everything acknowledged is synced by now,
    // so it is cancelled after a short grace rather than waited on.
    exec.shutdown(Duration::from_millis(200));
    drop(telemetry);
    match outcome {
        Ok(()) => {
            println!("kaelix serve: stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kaelix serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Applies every change the manager accepts to the running server and the
/// log filter; watches the file (1 s debounce) and SIGHUP.
fn start_reloading(
    manager: &HotReloadManager<ServerConfig>,
    server: Server<RealRuntime>,
    plugins: Arc<crate::plugins::ServePlugins>,
    log_handle: LogHandle,
) -> notify::Result<kaelix_config::reload::WatchHandle> {
    let changes = manager.subscribe();
    std::thread::Builder::new()
        .name("kaelix-reconfigure".into())
        .spawn(move || {
            for change in changes {
                if change.touches("log.level")
                    && let Err(e) = log_handle.modify(|f| *f = level_filter(change.new.log.level))
                {
                    tracing::warn!(error = %e, "changing the log level");
                }
                if change.touches("plugins") {
                    match plugins.apply(&change.new.plugins, Some(server.broker())) {
                        Ok(done) => tracing::info!(?done, "plugins reloaded"),
                        // The running plugins and chains stay as they were.
                        Err(e) => tracing::error!(error = %e, "plugins not reloaded"),
                    }
                }
                match server.reconfigure(&change.new) {
                    Ok(report) => tracing::info!(
                        generation = change.generation,
                        changed = ?change.changed,
                        disconnected = report.disconnected,
                        "configuration reloaded"
                    ),
                    // Validated before it was applied: this is a bug, but the
                    // server keeps its previous configuration.
                    Err(e) => tracing::error!(error = %e, "the server refused a validated configuration"),
                }
            }
        })
        .map_err(notify::Error::io)?;
    let watch = manager.watch(kaelix_config::reload::DEFAULT_DEBOUNCE)?;
    watch_sighup(Some(manager.clone()));
    tracing::info!(file = %manager.path().display(), "watching the configuration (reload also on SIGHUP)");
    Ok(watch)
}

/// SIGHUP reloads the configuration file now (without one, says so).
fn watch_sighup(manager: Option<HotReloadManager<ServerConfig>>) {
    let mut signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP will not reload: installing its handler failed");
            return;
        }
    };
    let spawned = std::thread::Builder::new().name("kaelix-sighup".into()).spawn(move || {
        for _ in signals.forever() {
            match &manager {
                Some(m) => {
                    let outcome = m.reload_now();
                    tracing::info!(?outcome, stats = ?m.stats(), "SIGHUP: configuration reload");
                }
                None => tracing::warn!("SIGHUP: no configuration file to reload (started without one)"),
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "SIGHUP will not reload");
    }
}

/// How long a stopping cluster member waits for its partitions' leadership
/// to move to other members (each transfer is one catch-up and one
/// election; a transfer that fails is retried).
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(3);

/// First SIGINT/SIGTERM: sends on `stop`. Second: exits at once.
fn watch_signals(stop: futures_channel::oneshot::Sender<i32>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new().name("kaelix-signals".into()).spawn(move || {
        let mut stop = Some(stop);
        for signal in signals.forever() {
            match stop.take() {
                Some(tx) => {
                    eprintln!("kaelix serve: signal {signal}: draining (send it again to exit at once)");
                    let _ = tx.send(signal);
                }
                None => {
                    eprintln!("kaelix serve: second signal {signal}: exiting now");
                    std::process::exit(130);
                }
            }
        }
    })?;
    Ok(())
}

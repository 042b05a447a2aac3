//! `kaelix serve`: one node on the real executor.
//!
//! Reads the configuration file (if any), applies the flags on top, opens
//! the data directory, starts the server and runs until SIGINT or SIGTERM.
//! The first signal drains (stop accepting, answer what was read, sync,
//! exit 0); a second one exits at once.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // the binary's edge: files, signals, threads

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use kaelix_core::NodeId;
use kaelix_core::time::Duration;
use kaelix_runtime_real::{Executor, ExecutorConfig, NodeConfig, RealRuntime};
use kaelix_server::{Server, ServerConfig};

/// How log lines look.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// `kaelix serve` flags. Flags override the configuration file.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Where durable topics live (created if missing).
    #[arg(long, default_value = "./kaelix-data")]
    pub data_dir: PathBuf,
    /// TOML configuration file (see `kaelix_server::config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// NATS-protocol listener address [default: 127.0.0.1:4222].
    #[arg(long)]
    pub nats_listen: Option<SocketAddr>,
    /// Native-protocol listener address [default: 127.0.0.1:7422].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Least severe level logged (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    pub log_level: tracing::Level,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seconds a drain waits for connections to finish.
    #[arg(long, default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// Address of the metrics endpoint, /metrics and /healthz
    /// [default: 127.0.0.1:9464].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve no metrics endpoint.
    #[arg(long)]
    pub no_metrics: bool,
}

fn init_logging(format: LogFormat, level: tracing::Level) {
    let builder = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(args: &ServeArgs) -> Result<ServerConfig, String> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("reading config {}: {e}", path.display()))?;
            ServerConfig::from_toml(&text, &path.display().to_string()).map_err(|e| e.to_string())?
        }
        None => ServerConfig::default(),
    };
    if let Some(addr) = args.nats_listen {
        config.nats.listen = addr;
    }
    if let Some(addr) = args.listen {
        config.native.listen = addr;
    }
    if let Some(addr) = args.metrics_listen {
        config.telemetry.metrics_listen = addr;
    }
    if args.no_metrics {
        config.telemetry.metrics = false;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Runs the server until a signal; the exit code says how it ended.
pub fn run(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format, args.log_level);
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kaelix serve: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.data_dir) {
        eprintln!("kaelix serve: creating data directory {}: {e}", args.data_dir.display());
        return ExitCode::from(2);
    }
    let exec_config = ExecutorConfig { max_workers: args.workers, ..ExecutorConfig::default() };
    let exec = match Executor::new(exec_config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kaelix serve: starting the executor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match RealRuntime::start(exec.handle(), NodeConfig::new(NodeId(1), &args.data_dir)) {
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
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let data_dir = args.data_dir.clone();
    let outcome = exec.block_on(async move {
        let server = match Server::start(rt, config).await {
            Ok(s) => s,
            Err(e) => return Err(e.to_string()),
        };
        if let Some(collector) = &collector {
            kaelix_telemetry::sources::add_server(collector, server.observer());
        }
        println!("kaelix serve: NATS clients on nats://{}", server.nats_addr());
        println!("kaelix serve: native clients on {}", server.native_addr());
        println!("kaelix serve: data in {}", data_dir.display());
        tracing::info!(nats = %server.nats_addr(), native = %server.native_addr(), data_dir = %data_dir.display(), "serving");
        let signal = stop_rx.await.unwrap_or(0);
        tracing::info!(signal, "draining: no new connections; answering what was read, then syncing");
        server.shutdown(grace).await;
        Ok(())
    });
    exec.shutdown(Duration::from_secs(2));
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

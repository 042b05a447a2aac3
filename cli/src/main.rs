//! `kaelix`: the one command users run.
//!
//! `kaelix serve` (see [`serve`]), `kaelix bench pub | pubsub | fanout |
//! req | subs` (a NATS load generator, see [`bench`]) and `kaelix sim list
//! | run [--jobs] | swarm | shrink | replay [--schedule] | check-history |
//! membership-table`, `kaelix config check | show` (see [`config_cmd`]),
//! `kaelix top` (a live view of a server's metrics, see [`top`]).
//!
//! This crate may read the OS clock (to report how fast the simulator and
//! the checkers ran) and files (client histories): each such use is allowed
//! explicitly at its site.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// mimalloc: the simulator allocates and frees small objects (futures,
/// packets, channel nodes) at a high rate, where it beats the system
/// allocator. Allocation never feeds back into a run, so this changes speed,
/// never a trace. Wrapped in the counting allocator of the performance
/// monitor, which counts only once `kaelix serve` starts it (one relaxed
/// load per call until then).
#[global_allocator]
static ALLOCATOR: kaelix_telemetry::perf::CountingAllocator<mimalloc::MiMalloc> =
    kaelix_telemetry::perf::CountingAllocator::new(mimalloc::MiMalloc);

mod bench;
mod cluster;
mod config_cmd;
mod http_get;
mod plugins;
mod serve;
mod telemetry;
mod top;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kaelix_scenarios::history::History;
use kaelix_scenarios::linearizability::{CheckConfig, check_history};
use kaelix_scenarios::membership::table::{self, JobResult, TablePlan};
use kaelix_scenarios::{Scenario, catalog, find, replay_command, run_checked};
use kaelix_sim::CoverageTotals;
use kaelix_sim::trace::TraceEvent;

#[derive(Parser)]
#[command(name = "kaelix", version, about = "Kaelix: a simulation-first streaming system")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve clients: NATS protocol (and the native protocol), durable
    /// topics in --data-dir.
    Serve(serve::ServeArgs),
    /// NATS load generator for any NATS server (Kaelix or nats-server):
    /// publish throughput, 1→1 and 1→K delivery, request-reply latency,
    /// subscription memory.
    Bench(bench::BenchArgs),
    /// Deterministic simulation.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Check or show the configuration `kaelix serve` would run with.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// A running cluster's state, read from its members' metrics endpoints.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// A live terminal view of a running server (rates, latencies,
    /// connections, slow consumers, partitions and their leaders), read
    /// from its metrics endpoint; q quits.
    Top(top::TopArgs),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Members (up or unreachable) and each replicated partition's leader,
    /// term and commit index as each member sees them. Exit code 1 when a
    /// member does not answer or a partition has no leader.
    Status {
        /// The members' metrics addresses (`telemetry.metrics_listen`),
        /// comma-separated: HOST:PORT,HOST:PORT,...
        #[arg(long)]
        nodes: String,
    },
}

#[derive(Subcommand)]
enum SimCommand {
    /// List every scenario, one per line: name, then description.
    List,
    /// Run a scenario over many seeds, each checked for determinism.
    Run {
        /// Scenario name (see `kaelix sim list`).
        #[arg(long, default_value = "broadcast")]
        scenario: String,
        /// Number of seeds to run, starting at --first-seed.
        #[arg(long, default_value_t = 100, conflicts_with = "seed")]
        seeds: u64,
        /// First seed of the range.
        #[arg(long, default_value_t = 0)]
        first_seed: u64,
        /// Run exactly this one seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Skip the run-twice determinism check (halves the time).
        #[arg(long)]
        no_determinism_check: bool,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
        /// Seeds run in parallel (each simulation is single-threaded and
        /// deterministic; results and report figures do not depend on this,
        /// only the wall time). Default: the machine's core count.
        #[arg(long)]
        jobs: Option<usize>,
        /// With --seed: the metrics the run's components recorded (read when
        /// the run ended, virtual time; `serve`'s names where `serve` has
        /// such a figure, with a `node` label; every scenario has some),
        /// sorted, in the Prometheus text format, printed after the report
        /// or written to FILE. The same seed gives byte-identical metrics
        /// (compared on the determinism check's second run).
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        metrics: Option<PathBuf>,
    },
    /// Run random seeds of every scenario until time is up, then write a
    /// report: seeds run per scenario, failures with replay commands, and
    /// the coverage of fault points and `sometimes!` assertions.
    Swarm {
        /// How long to run, in minutes (fractions allowed).
        #[arg(long)]
        minutes: f64,
        /// Seeds run in parallel. Default: the machine's core count.
        #[arg(long)]
        jobs: Option<usize>,
        /// Where to write the report (Markdown).
        #[arg(long, value_name = "FILE", default_value = "sim-swarm-report.md")]
        report: PathBuf,
        /// The seed the run's seeds are drawn from (default: from the
        /// clock; printed, so a swarm's seed list can be drawn again).
        #[arg(long)]
        master_seed: Option<u64>,
        /// Also run the planted-bug variants (which are expected to fail).
        #[arg(long)]
        include_planted: bool,
        /// Skip the run-twice determinism check.
        #[arg(long)]
        no_determinism_check: bool,
    },
    /// Measure SWIM membership at 5, 20 and 100 nodes, Kaelix's defaults
    /// against the reference configuration (see `kaelix_scenarios::membership::table`).
    MembershipTable {
        /// Seeds for the 5-node rows.
        #[arg(long, default_value_t = 60)]
        seeds_5: u64,
        /// Seeds for the 20-node rows.
        #[arg(long, default_value_t = 30)]
        seeds_20: u64,
        /// Seeds for the 100-node rows.
        #[arg(long, default_value_t = 10)]
        seeds_100: u64,
        /// Simulations run in parallel (each is single-threaded and
        /// deterministic; the table does not depend on this).
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Re-run one seed and print its trace hash (twice, to show it is stable).
    Replay {
        /// Scenario name.
        #[arg(long)]
        scenario: String,
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// Print every event readably.
        #[arg(long)]
        trace: bool,
        /// Write the client history to FILE as JSON lines (scenarios that
        /// record one; see the kaelix-scenarios crate docs for the format).
        #[arg(long, value_name = "FILE")]
        history: Option<PathBuf>,
        /// Replace the seed's fault schedule by the one in FILE (written by
        /// `kaelix sim shrink`); everything else is the seed's.
        #[arg(long, value_name = "FILE", conflicts_with = "history")]
        schedule: Option<PathBuf>,
        /// Draw the run as a space-time diagram into FILE: one self-contained
        /// HTML page (lanes per node and client, messages as arrows, faults
        /// marked, client operations as spans, the failed check at its
        /// moment; zoom and filters in the page).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// How many messages the page holds: the last N before the failure
        /// (or the run's end); 0 embeds the whole run.
        #[arg(long, value_name = "N", default_value_t = kaelix_sim::picture::DEFAULT_MAX_MESSAGES, requires = "html")]
        html_max_messages: usize,
    },
    /// Shrink a failing seed's fault schedule: remove and shorten faults
    /// (delta debugging), replaying each candidate under the same seed,
    /// until removing any one remaining fault makes the failure go away.
    /// Prints the minimal schedule and writes it for `sim replay --schedule`.
    Shrink {
        /// Scenario name.
        #[arg(long)]
        scenario: String,
        /// The failing seed.
        #[arg(long)]
        seed: u64,
        /// Where to write the minimal schedule (JSON).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Stop searching after this many seconds (the schedule found so
        /// far is kept, and reported as not proven 1-minimal).
        #[arg(long, default_value_t = 300)]
        max_seconds: u64,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Check a JSON-lines client history: linearizability per partition and
    /// the offset rules (duplicated, lost, skipped, non-monotonic).
    ///
    /// Exit status: 0 every partition passed, 1 a violation, 2 the file is
    /// unreadable or malformed, 3 a search hit its budget (inconclusive).
    CheckHistory {
        /// The history (one JSON object per line).
        file: PathBuf,
        /// Search budget per partition (positions visited) before a
        /// partition is declared inconclusive.
        #[arg(long, default_value_t = CheckConfig::default().max_search_steps)]
        max_search_steps: u64,
    },
}

/// `println!` that ends the process quietly when stdout is closed (`kaelix
/// sim run | head`), instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            // What a process killed by SIGPIPE reports (128 + 13).
            std::process::exit(141);
        }
    }};
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Config(command) => config_cmd::run(command),
        Command::Top(args) => top::run(args),
        Command::Cluster(ClusterCommand::Status { nodes }) => match cluster::parse_nodes(&nodes) {
            Ok(nodes) => cluster::status(&nodes),
            Err(e) => {
                eprintln!("kaelix cluster status: {e}");
                ExitCode::from(2)
            }
        },
        Command::Sim(SimCommand::List) => {
            for s in catalog().into_iter().chain(kaelix_scenarios::baselines()) {
                out!("{:<28} {}", s.name(), s.description());
            }
            ExitCode::SUCCESS
        }
        Command::Sim(SimCommand::Run {
            scenario,
            seeds,
            first_seed,
            seed,
            no_determinism_check,
            quiet,
            jobs,
            metrics,
        }) => {
            let Some(s) = lookup(&scenario) else { return ExitCode::from(2) };
            // Checked here: clap does not enforce `requires` on an option
            // given without its (optional) value.
            if metrics.is_some() && seed.is_none() {
                eprintln!("error: --metrics needs --seed N (the metrics of one run)");
                return ExitCode::from(2);
            }
            let range = match seed {
                Some(one) => one..one + 1,
                None => first_seed..first_seed + seeds,
            };
            sim_run(s, range, !no_determinism_check, quiet, jobs.unwrap_or_else(default_jobs), metrics.as_deref())
        }
        Command::Sim(SimCommand::Swarm {
            minutes,
            jobs,
            report,
            master_seed,
            include_planted,
            no_determinism_check,
        }) => {
            if !(minutes.is_finite() && minutes > 0.0) {
                eprintln!("error: --minutes must be a positive number, not {minutes}");
                return ExitCode::from(2);
            }
            let plan = SwarmPlan {
                minutes,
                jobs: jobs.unwrap_or_else(default_jobs),
                master_seed: master_seed.unwrap_or_else(clock_seed),
                include_planted,
                determinism_check: !no_determinism_check,
            };
            sim_swarm(&plan, &report)
        }
        Command::Sim(SimCommand::MembershipTable { seeds_5, seeds_20, seeds_100, threads }) => {
            membership_table(TablePlan { sizes: vec![(5, seeds_5), (20, seeds_20), (100, seeds_100)] }, threads)
        }
        Command::Sim(SimCommand::Replay { scenario, seed, trace, history, schedule, html, html_max_messages }) => {
            let Some(s) = lookup(&scenario) else { return ExitCode::from(2) };
            let html = html.as_deref().map(|path| (path, html_max_messages));
            match schedule {
                Some(file) => sim_replay_schedule(s, seed, trace, &file, html),
                None => sim_replay(s, seed, trace, history.as_deref(), html),
            }
        }
        Command::Sim(SimCommand::Shrink { scenario, seed, out, max_seconds, quiet }) => {
            let Some(s) = lookup(&scenario) else { return ExitCode::from(2) };
            let out = out.unwrap_or_else(|| PathBuf::from(format!("shrunk-{}-{seed}.json", s.name())));
            sim_shrink(s, seed, &out, std::time::Duration::from_secs(max_seconds), quiet)
        }
        Command::Sim(SimCommand::CheckHistory { file, max_search_steps }) => {
            sim_check_history(&file, &CheckConfig { max_search_steps })
        }
    }
}

fn lookup(name: &str) -> Option<&'static dyn Scenario> {
    let found = find(name);
    if found.is_none() {
        let names: Vec<&str> = catalog().iter().chain(&kaelix_scenarios::baselines()).map(|s| s.name()).collect();
        eprintln!("error: unknown scenario {name:?}; known scenarios: {}", names.join(", "));
        if !kaelix_scenarios::PLANTED_BUGS {
            eprintln!("(planted-bug variants exist only in a build with `--features planted-bugs`)");
        }
    }
    found
}

/// Real elapsed time, to report how fast the simulator and the checkers
/// run. The one place the cli reads the OS clock.
#[allow(clippy::disallowed_types, reason = "the cli measures real time to report simulator speed")]
struct WallTimer(std::time::Instant);

#[allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "the cli measures real time to report simulator speed"
)]
impl WallTimer {
    fn start() -> Self {
        WallTimer(std::time::Instant::now())
    }

    fn elapsed(&self) -> std::time::Duration {
        self.0.elapsed()
    }
}

struct Failure {
    seed: u64,
    message: String,
}

/// What one seed gave `kaelix sim run`.
struct SeedResult {
    report: kaelix_scenarios::RunReport,
    tallies: kaelix_scenarios::Tallies,
    replay_hash: Option<u64>,
    /// Wall time of one run of the seed.
    run_nanos: u128,
    /// A metered run's metrics in the text format (`None`: not metered,
    /// or the scenario exports none).
    metrics: Option<String>,
    /// A metered run checked for determinism: whether the second run's
    /// metrics were byte-identical.
    metrics_replayed_same: Option<bool>,
}

fn run_seed(s: &dyn Scenario, seed: u64, determinism_check: bool, metered: bool) -> SeedResult {
    let t0 = WallTimer::start();
    if metered {
        let (report, tallies, metrics) = s.run_metered(seed, None);
        let metrics = metrics.map(|m| m.render());
        let (replay_hash, metrics_replayed_same) = if determinism_check {
            let (replay, _, again) = s.run_metered(seed, None);
            (Some(replay.trace_hash), Some(again.map(|m| m.render()) == metrics))
        } else {
            (None, None)
        };
        let runs = if determinism_check { 2 } else { 1 };
        let run_nanos = t0.elapsed().as_nanos() / runs;
        return SeedResult { report, tallies, replay_hash, run_nanos, metrics, metrics_replayed_same };
    }
    let (report, tallies, replay_hash) = if determinism_check {
        let checked = run_checked(s, seed);
        (checked.report, checked.tallies, Some(checked.replay_hash))
    } else {
        let (report, tallies) = s.run_tallied(seed, None);
        (report, tallies, None)
    };
    let runs = if determinism_check { 2 } else { 1 };
    SeedResult {
        report,
        tallies,
        replay_hash,
        run_nanos: t0.elapsed().as_nanos() / runs,
        metrics: None,
        metrics_replayed_same: None,
    }
}

/// Runs `scenario` on every seed of `seeds` with `jobs` threads (each
/// simulation stays on the thread that started it) and returns the results
/// in seed order, so what is summed and reported does not depend on `jobs`.
#[allow(clippy::disallowed_methods, reason = "the cli runs independent simulations side by side on real threads")]
fn run_seeds(
    seeds: &[(&'static dyn Scenario, u64)],
    determinism_check: bool,
    metered: bool,
    jobs: usize,
    bar: &ProgressBar,
    on_result: &(dyn Fn(&SeedResult) + Sync),
) -> Vec<SeedResult> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<(usize, SeedResult)>> = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(seeds.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(s, seed)) = seeds.get(i) else { return };
                    let r = run_seed(s, seed, determinism_check, metered);
                    on_result(&r);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
                    bar.inc(1);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// The default of `--jobs`: the machine's cores.
#[allow(clippy::disallowed_methods, reason = "the default worker count is the machine's core count")]
fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A failure's one-line reason (determinism first).
fn failure_of(r: &SeedResult) -> Option<String> {
    match r.replay_hash {
        Some(h) if h != r.report.trace_hash => {
            Some(format!("NONDETERMINISM: trace hash {:016x} then {h:016x}", r.report.trace_hash))
        }
        _ if r.metrics_replayed_same == Some(false) => {
            Some("NONDETERMINISM: the second run's metrics differ from the first's".into())
        }
        _ if !r.report.verdict.passed() => Some(r.report.verdict.to_string()),
        _ => None,
    }
}

fn sim_run(
    s: &'static dyn Scenario,
    seeds: std::ops::Range<u64>,
    determinism_check: bool,
    quiet: bool,
    jobs: usize,
    metrics: Option<&Path>,
) -> ExitCode {
    let total = seeds.end - seeds.start;
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} seeds  {msg}")
            .expect("valid template"),
    );
    let started = WallTimer::start();
    let failed = std::sync::atomic::AtomicU64::new(0);
    let work: Vec<(&'static dyn Scenario, u64)> = seeds.map(|seed| (s, seed)).collect();
    let results = run_seeds(&work, determinism_check, metrics.is_some(), jobs, &bar, &|r| {
        if failure_of(r).is_some() {
            let n = failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            bar.set_message(format!("{n} failed"));
        }
    });
    bar.finish_and_clear();
    let wall = started.elapsed();

    let mut failures: Vec<Failure> = Vec::new();
    let mut sim_nanos: u128 = 0;
    let mut run_nanos: u128 = 0;
    let mut events: u64 = 0;
    let mut polls: u64 = 0;
    let mut faults: u64 = 0;
    let mut acked: u64 = 0;
    let mut submitted: u64 = 0;
    let mut mix: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut coverage = CoverageTotals::default();
    // In the scenario's own order.
    let mut counters: Vec<(&'static str, u64)> = Vec::new();
    for r in &results {
        let report = &r.report;
        run_nanos += r.run_nanos;
        sim_nanos += report.sim_time.as_nanos();
        events += report.stats.events;
        polls += report.stats.polls;
        faults += report.faults_applied as u64;
        submitted += report.workload.0;
        acked += report.workload.1;
        coverage.add(&report.coverage);
        for &(name, n) in &r.tallies {
            match counters.iter_mut().find(|(k, _)| *k == name) {
                Some((_, total)) => *total += n,
                None => counters.push((name, n)),
            }
        }
        for m in &report.fault_mix {
            *mix.entry(m).or_default() += 1;
        }
        if let Some(message) = failure_of(r) {
            failures.push(Failure { seed: report.seed, message });
        }
    }

    let secs = |n: u128| n as f64 / 1e9;
    out!("scenario        {}", s.name());
    out!("seeds           {total}");
    out!("failures        {}", failures.len());
    out!(
        "determinism     {}",
        if determinism_check { "every seed run twice, trace hashes compared" } else { "not checked" }
    );
    out!("wall time       {:.2} s  ({} job(s))", wall.as_secs_f64(), jobs.max(1));
    out!("simulated time  {:.1} s", secs(sim_nanos));
    out!(
        "sim/real ratio  {:.0}x  (simulated time / wall time of one run per seed)",
        secs(sim_nanos) / secs(run_nanos).max(1e-9)
    );
    out!(
        "events/s        {:.0}  ({} events + {} task polls)",
        (events + polls) as f64 / secs(run_nanos).max(1e-9),
        events,
        polls
    );
    let (first, second) = s.workload_units();
    out!("workload        {submitted} {first}, {acked} {second}  (summed over seeds)");
    out!("faults applied  {faults}");
    if !counters.is_empty() {
        let line: Vec<String> = counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out!("tallies         (summed over seeds) {}", line.join(", "));
    }
    let mix_line: Vec<String> = mix.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out!("fault mix       (seeds with each fault on) {}", mix_line.join(", "));
    out!("");
    print_text(&coverage.render());
    for f in failures.iter().take(20) {
        out!("\nFAILED seed {}: {}", f.seed, f.message);
        out!("  reproduce: {}", replay_command(s, f.seed));
    }
    if failures.len() > 20 {
        out!("\n… and {} more failing seeds", failures.len() - 20);
    }
    if let Some(path) = metrics
        && let Err(code) = print_metrics(s, &results, path)
    {
        return code;
    }
    if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The metrics of `sim run --seed N --metrics [FILE]`'s one seed: after the
/// report (`-`) or into FILE.
fn print_metrics(s: &dyn Scenario, results: &[SeedResult], path: &Path) -> Result<(), ExitCode> {
    let Some(r) = results.first() else { return Ok(()) };
    let Some(text) = &r.metrics else {
        eprintln!("error: scenario {:?} exports no metrics", s.name());
        return Err(ExitCode::from(2));
    };
    let replay = match r.metrics_replayed_same {
        Some(true) => "  (second run: identical)",
        Some(false) => "  (second run: DIFFERENT: nondeterminism)",
        None => "",
    };
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    if path == Path::new("-") {
        out!("metrics         {series} series of seed {}{replay}:", r.report.seed);
        out!("");
        print_text(text);
    } else {
        if let Err(e) = write_text(path, text) {
            eprintln!("error: cannot write the metrics to {}: {e}", path.display());
            return Err(ExitCode::from(2));
        }
        out!("metrics         {series} series of seed {} written to {}{replay}", r.report.seed, path.display());
    }
    Ok(())
}

/// Prints `text` (already line-terminated) through [`out!`]'s broken-pipe
/// handling.
fn print_text(text: &str) {
    for line in text.lines() {
        out!("{line}");
    }
}

/// A seed from the wall clock, for a swarm nobody gave a seed to.
#[allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "a swarm without --master-seed draws its seeds from the clock (printed)"
)]
fn clock_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// What `kaelix sim swarm` was asked to do.
struct SwarmPlan {
    minutes: f64,
    jobs: usize,
    master_seed: u64,
    include_planted: bool,
    determinism_check: bool,
}

/// Per scenario: seeds run, failures.
#[derive(Default)]
struct SwarmTally {
    seeds: u64,
    failures: Vec<Failure>,
}

fn sim_swarm(plan: &SwarmPlan, report_path: &Path) -> ExitCode {
    use kaelix_core::rng::RngExt;
    let scenarios: Vec<&'static dyn Scenario> =
        catalog().into_iter().filter(|s| plan.include_planted || !s.planted_bug()).collect();
    let budget = std::time::Duration::from_secs_f64(plan.minutes * 60.0);
    let mut seeds = kaelix_core::rng::seeded(plan.master_seed);
    let started = WallTimer::start();
    let bar = ProgressBar::new(budget.as_secs());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} swarm  {msg}").expect("valid template"),
    );
    let mut tallies: Vec<SwarmTally> = scenarios.iter().map(|_| SwarmTally::default()).collect();
    let mut coverage = CoverageTotals::default();
    let mut next_scenario = 0usize;
    let (mut total, mut failed) = (0u64, 0usize);
    // Batches of a few seeds per worker, round-robin over the scenarios,
    // until the budget is spent (a batch started before the end finishes)
    // and every scenario has run at least once.
    while started.elapsed() < budget || next_scenario < scenarios.len() {
        let batch: Vec<(&'static dyn Scenario, u64)> = (0..plan.jobs.max(1) * 2)
            .map(|_| {
                let s = scenarios[next_scenario % scenarios.len()];
                next_scenario += 1;
                (s, seeds.random::<u64>())
            })
            .collect();
        let results = run_seeds(&batch, plan.determinism_check, false, plan.jobs, &ProgressBar::hidden(), &|_| {});
        for ((s, _), r) in batch.iter().zip(&results) {
            let i = scenarios.iter().position(|x| std::ptr::eq(*x, *s)).expect("batch scenario is listed");
            tallies[i].seeds += 1;
            total += 1;
            coverage.add(&r.report.coverage);
            if let Some(message) = failure_of(r) {
                tallies[i].failures.push(Failure { seed: r.report.seed, message });
                failed += 1;
            }
        }
        bar.set_position(started.elapsed().as_secs().min(budget.as_secs()));
        bar.set_message(format!("{total} seeds, {failed} failed"));
    }
    bar.finish_and_clear();
    let wall = started.elapsed();

    let mut md = String::new();
    {
        use std::fmt::Write as _;
        let _ = writeln!(md, "# kaelix sim swarm\n");
        let _ = writeln!(
            md,
            "master seed {} · {:.1} min wall time · {} job(s) · {} seeds · {} failed · determinism {}\n",
            plan.master_seed,
            wall.as_secs_f64() / 60.0,
            plan.jobs.max(1),
            total,
            failed,
            if plan.determinism_check { "checked (every seed run twice)" } else { "not checked" }
        );
        let _ = writeln!(md, "| scenario | seeds | failures |\n|---|---:|---:|");
        for (s, t) in scenarios.iter().zip(&tallies) {
            let _ = writeln!(md, "| {} | {} | {} |", s.name(), t.seeds, t.failures.len());
        }
        if failed > 0 {
            let _ = writeln!(md, "\n## Failures\n");
            for (s, t) in scenarios.iter().zip(&tallies) {
                for f in &t.failures {
                    let _ = writeln!(
                        md,
                        "- `{}` seed {}: {}\n  `{}`",
                        s.name(),
                        f.seed,
                        f.message,
                        replay_command(*s, f.seed)
                    );
                }
            }
        }
        let _ = writeln!(md, "\n## Coverage\n\n```text\n{}```", coverage.render());
    }
    if let Err(e) = write_text(report_path, &md) {
        eprintln!("error: cannot write the report to {}: {e}", report_path.display());
        return ExitCode::from(2);
    }
    print_text(&md);
    out!("\nreport written to {}", report_path.display());
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

#[allow(clippy::disallowed_methods, reason = "the cli writes the report file it was asked for")]
fn write_text(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

fn trace_printer() -> kaelix_sim::trace::TraceSink {
    Box::new(|e: &TraceEvent| {
        let node = e.node.map_or_else(|| "-".to_string(), |n| n.to_string());
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) just ends the listing.
        let _ = writeln!(out, "{:>16} {:>5} {:<15} {}", e.time.to_string(), node, e.kind, e.detail);
    })
}

fn sim_shrink(s: &dyn Scenario, seed: u64, out_path: &Path, bound: std::time::Duration, quiet: bool) -> ExitCode {
    let started = WallTimer::start();
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] shrinking: {pos} candidates run  {msg}")
            .expect("valid template"),
    );
    let shrunk = kaelix_scenarios::shrink_seed(s, seed, &mut || started.elapsed() > bound, &mut |smallest| {
        bar.inc(1);
        bar.set_message(format!("smallest failing: {smallest} faults"));
    });
    bar.finish_and_clear();
    let shrunk = match shrunk {
        Ok(shrunk) => shrunk,
        Err(kaelix_scenarios::ShrinkError::Passes) => {
            eprintln!("error: seed {seed} of {} passes; there is no failure to shrink", s.name());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {} seed {seed}: {e}", s.name());
            return ExitCode::FAILURE;
        }
    };
    out!("scenario    {}", s.name());
    out!("seed        {seed}");
    out!("fails       {}", shrunk.first.verdict);
    out!("check       {}", shrunk.check);
    out!("schedule    {} faults drawn", shrunk.drawn.len());
    let outcome = &shrunk.outcome;
    let mut file = kaelix_sim::shrink::ScheduleFile::new(s.name(), seed, &shrunk.check, &outcome.schedule);
    file.workload = shrunk.workload.as_ref().map(|w| w.keep.clone());
    if let Err(e) = write_text(out_path, &file.to_json()) {
        eprintln!("error: cannot write the schedule to {}: {e}", out_path.display());
        return ExitCode::from(2);
    }
    out!(
        "shrunk      {} -> {} faults in {} candidate runs, {:.1} s{}",
        shrunk.drawn.len(),
        outcome.schedule.len(),
        outcome.runs,
        started.elapsed().as_secs_f64(),
        if outcome.one_minimal { " (1-minimal)" } else { " (time bound hit: not proven 1-minimal)" }
    );
    out!("minimal schedule:");
    print_text(&kaelix_sim::shrink::render(&outcome.schedule));
    match &shrunk.workload {
        Some(w) => out!(
            "workload    {} -> {} operations in {} candidate runs{}",
            shrunk.drawn_workload.len(),
            w.keep.len(),
            w.runs,
            if w.one_minimal { " (1-minimal)" } else { " (time bound hit)" }
        ),
        None => out!("workload    not shrunk ({} records no workload list: it has no client operations)", s.name()),
    }
    out!("replay fails {}", shrunk.replay.verdict);
    out!("written to  {}", out_path.display());
    let features = if s.planted_bug() { " --features planted-bugs" } else { "" };
    out!(
        "reproduce:  cargo run --release -p kaelix{features} -- sim replay --scenario {} --seed {seed} --schedule {}",
        s.name(),
        out_path.display()
    );
    if shrunk.still_fails() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

#[allow(clippy::disallowed_methods, reason = "the cli reads the schedule file it was given")]
fn read_schedule(path: &Path) -> Result<kaelix_sim::shrink::ScheduleFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    kaelix_sim::shrink::ScheduleFile::parse(&text)
}

/// Draws the run into `path` (see `kaelix_scenarios::picture`) and says
/// what the page holds. The drawn run must be the replayed one: its trace
/// hash is compared with `expected_hash`.
fn write_picture(
    s: &dyn Scenario,
    seed: u64,
    schedule: Option<&kaelix_sim::FaultSchedule>,
    workload: Option<&kaelix_sim::shrink::WorkloadKeep>,
    (path, max_messages): (&Path, usize),
    expected_hash: u64,
) -> Result<(), ExitCode> {
    let drawn = kaelix_scenarios::picture::draw_with(s, seed, schedule, workload, max_messages);
    if let Err(e) = write_text(path, &drawn.html) {
        eprintln!("error: cannot write the picture to {}: {e}", path.display());
        return Err(ExitCode::from(2));
    }
    out!(
        "picture     {} ({} KiB): {:.3} s to {:.3} s of the run, {} of its {} messages{}",
        path.display(),
        drawn.html.len().div_ceil(1024),
        drawn.window.0 as f64 / 1e9,
        drawn.window.1 as f64 / 1e9,
        drawn.messages.1,
        drawn.messages.0,
        if drawn.report.trace_hash == expected_hash { "" } else { "  (DIFFERENT run: nondeterminism)" }
    );
    if drawn.report.trace_hash != expected_hash {
        return Err(ExitCode::FAILURE);
    }
    Ok(())
}

fn sim_replay_schedule(
    s: &dyn Scenario,
    seed: u64,
    trace: bool,
    path: &Path,
    html: Option<(&Path, usize)>,
) -> ExitCode {
    let file = match read_schedule(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    if file.scenario != s.name() || file.seed != seed {
        eprintln!(
            "error: {} is a schedule of {} seed {}, not of {} seed {seed}",
            path.display(),
            file.scenario,
            file.seed,
            s.name()
        );
        return ExitCode::from(2);
    }
    let schedule = file.schedule().expect("checked when parsed");
    let workload = file.workload.as_ref();
    let (first, _) = kaelix_scenarios::run_with(s, seed, Some(&schedule), workload, trace.then(trace_printer));
    let (second, _) = kaelix_scenarios::run_with(s, seed, Some(&schedule), workload, None);
    out!("scenario    {}", s.name());
    out!("seed        {seed}");
    out!("schedule    {} faults from {}", schedule.len(), path.display());
    print_text(&kaelix_sim::shrink::render(&schedule));
    if let Some(w) = workload {
        out!(
            "workload    {} operations kept in {} recorded lists (a list the file does not name keeps all)",
            w.len(),
            w.lists.len()
        );
    }
    out!("verdict     {}", first.verdict);
    let same_check = first.verdict.check().as_deref() == Some(file.check.as_str());
    out!("check       {}  ({})", file.check, if same_check { "same check fails" } else { "NOT the recorded check" });
    out!("trace hash  {:016x}", first.trace_hash);
    out!(
        "replay hash {:016x}  ({})",
        second.trace_hash,
        if first.trace_hash == second.trace_hash { "identical" } else { "DIFFERENT: nondeterminism" }
    );
    if let Some(html) = html
        && let Err(code) = write_picture(s, seed, Some(&schedule), workload, html, first.trace_hash)
    {
        return code;
    }
    if first.trace_hash != second.trace_hash || !first.verdict.passed() { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn sim_replay(
    s: &dyn Scenario,
    seed: u64,
    trace: bool,
    history_file: Option<&Path>,
    html: Option<(&Path, usize)>,
) -> ExitCode {
    let sink: Option<kaelix_sim::trace::TraceSink> = trace.then(trace_printer);
    let (first, second, history) = if let Some(path) = history_file {
        let (first, recorded) = s.run_recording(seed, sink);
        let Some(history) = recorded else {
            eprintln!(
                "error: scenario {:?} records no client history, so there is nothing to write to {}",
                s.name(),
                path.display()
            );
            return ExitCode::from(2);
        };
        let (second, replayed) = s.run_recording(seed, None);
        let same = replayed.as_ref() == Some(&history);
        (first, second, Some((path, history, same)))
    } else {
        (s.run(seed, sink), s.run(seed, None), None)
    };
    out!("scenario    {}", s.name());
    out!("seed        {seed}");
    out!("verdict     {}", first.verdict);
    out!("fault mix   {}", first.fault_mix.join(", "));
    out!("faults      {} applied", first.faults_applied);
    out!("sim time    {:.3} s", first.sim_time.as_secs_f64());
    out!("trace hash  {:016x}", first.trace_hash);
    out!(
        "replay hash {:016x}  ({})",
        second.trace_hash,
        if first.trace_hash == second.trace_hash { "identical" } else { "DIFFERENT: nondeterminism" }
    );
    let mut history_ok = true;
    if let Some((path, history, same)) = history {
        if let Err(e) = write_history(path, &history) {
            eprintln!("error: cannot write the history to {}: {e}", path.display());
            return ExitCode::from(2);
        }
        out!(
            "history     {} operations written to {}  (replay {})",
            history.len(),
            path.display(),
            if same { "identical" } else { "DIFFERENT: nondeterminism" }
        );
        history_ok = same;
    }
    if let Some(html) = html
        && let Err(code) = write_picture(s, seed, None, None, html, first.trace_hash)
    {
        return code;
    }
    if first.trace_hash != second.trace_hash || !history_ok || !first.verdict.passed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "the cli writes the history file it was asked for"
)]
fn write_history(path: &Path, history: &History) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    history.write_json_lines(&mut out)?;
    out.flush()
}

#[allow(clippy::disallowed_methods, reason = "the cli reads the history file it was asked to check")]
fn read_history(path: &Path) -> Result<History, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    History::from_json_lines(&text).map_err(|e| e.to_string())
}

fn sim_check_history(path: &Path, config: &CheckConfig) -> ExitCode {
    let history = match read_history(path) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let started = WallTimer::start();
    let report = check_history(&history, config);
    let took = started.elapsed();
    print!("{report}");
    out!(
        "checked {} operations on {} partition(s) in {:.1} ms",
        history.len(),
        report.partitions.len(),
        took.as_secs_f64() * 1e3
    );
    if report.violated() {
        out!("verdict: VIOLATION");
        ExitCode::FAILURE
    } else if !report.passed() {
        out!("verdict: inconclusive (raise --max-search-steps)");
        ExitCode::from(3)
    } else {
        out!("verdict: pass");
        ExitCode::SUCCESS
    }
}

/// Runs the table's simulations on `threads` OS threads (each simulation
/// stays on one thread; results are put back in job order) and prints it.
#[allow(clippy::disallowed_methods, reason = "the cli runs independent simulations side by side on real threads")]
fn membership_table(plan: TablePlan, threads: usize) -> ExitCode {
    let started = WallTimer::start();
    let jobs = plan.jobs();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<(usize, JobResult)>> = std::sync::Mutex::new(Vec::new());
    let bar = ProgressBar::new(jobs.len() as u64);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&job) = jobs.get(i) else { return };
                    let r = table::run(job);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((i, r));
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<JobResult> = results.into_iter().map(|(_, r)| r).collect();
    print!("{}", table::render(&plan, &results));
    out!(
        "\n{} simulations in {:.1} s wall time on {} thread(s).",
        results.len(),
        started.elapsed().as_secs_f64(),
        threads.max(1)
    );
    if results.iter().any(|r| r.violation.is_some()) { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

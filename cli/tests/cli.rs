//! The `kaelix` binary end to end: history export, `sim check-history`,
//! `sim run --jobs`, `sim swarm`.

use std::path::PathBuf;
use std::process::{Command, Output};

use kaelix_scenarios::linearizability::synthetic::{self, Shape};

fn kaelix(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kaelix")).args(args).output().expect("the kaelix binary runs")
}

/// A file in the temp directory, unique to this test process and `name`.
#[allow(clippy::disallowed_methods, reason = "the tests hand the binary real files")]
fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("kaelix-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("temp dir is writable");
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_history_passes_a_correct_history() {
    let mut rng = kaelix_core::rng::seeded(5);
    let history =
        synthetic::correct_history(&mut rng, &Shape { partitions: 3, ops_per_partition: 400, ..Shape::default() });
    let path = temp_file("correct.jsonl", &history.to_json_lines());
    let out = kaelix(&["sim", "check-history", path.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for p in ["orders/0", "orders/1", "orders/2"] {
        assert!(stdout.contains(&format!("{p}: linearizable; offsets ok")), "{stdout}");
    }
    assert!(stdout.contains("verdict: pass"), "{stdout}");
}

#[test]
fn check_history_names_a_violation() {
    let lines = [
        r#"{"client": 1, "partition": "orders/0", "op": "produce", "input": "a", "output": 0, "call": 0, "return": 10}"#,
        r#"{"client": 2, "partition": "orders/0", "op": "read", "input": 0, "output": null, "call": 20, "return": 30}"#,
        r#"{"client": 1, "partition": "orders/1", "op": "produce", "input": "b", "output": 0, "call": 0, "return": 10}"#,
    ];
    let path = temp_file("lost.jsonl", &(lines.join("\n") + "\n"));
    let out = kaelix(&["sim", "check-history", path.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("orders/0: NOT LINEARIZABLE"), "{stdout}");
    assert!(
        stdout.contains("  lost: #0 (client 1: produce \"a\" [0, 10] -> offset 0) was acknowledged at offset 0"),
        "{stdout}"
    );
    assert!(stdout.contains("orders/1: linearizable; offsets ok"), "{stdout}");
    assert!(stdout.contains("verdict: VIOLATION"), "{stdout}");
}

#[test]
fn check_history_rejects_a_malformed_line() {
    let good =
        r#"{"client": 1, "partition": "orders/0", "op": "read", "input": 0, "output": null, "call": 0, "return": 10}"#;
    let bad =
        r#"{"client": 1, "partition": "orders/0", "op": "read", "input": 0, "output": 7, "call": 0, "return": 10}"#;
    let path = temp_file("malformed.jsonl", &format!("{good}\n{bad}\n"));
    let out = kaelix(&["sim", "check-history", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("line 2: a read's \"output\" must be the payload (a string) or null"), "{stderr}");
    let missing = kaelix(&["sim", "check-history", "/nonexistent/history.jsonl"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn replay_history_of_a_scenario_that_records_none_is_an_error() {
    let path = std::env::temp_dir().join(format!("kaelix-cli-{}-none.jsonl", std::process::id()));
    let out = kaelix(&["sim", "replay", "--scenario", "broker", "--seed", "1", "--history", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("scenario \"broker\" records no client history"), "{}", text(&out.stderr));
    assert!(!path.exists(), "nothing is written");
}

/// The lines of a `sim run` report that must not depend on `--jobs` (all
/// but the timings).
fn figures(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| !(l.starts_with("wall time") || l.starts_with("sim/real") || l.starts_with("events/s")))
        .collect()
}

#[test]
fn sim_run_in_parallel_reports_what_one_job_reports() {
    let args =
        |jobs: &'static str| ["sim", "run", "--scenario", "broker-durable", "--seeds", "24", "--quiet", "--jobs", jobs];
    let one = kaelix(&args("1"));
    let three = kaelix(&args("3"));
    let (one, three) = (text(&one.stdout), text(&three.stdout));
    assert_eq!(figures(&one), figures(&three), "--jobs 1:\n{one}\n--jobs 3:\n{three}");
    assert!(one.contains("(1 job(s))") && three.contains("(3 job(s))"));
    // The coverage table names the broker's fault point and assertions.
    assert!(one.contains("coverage over 24 run(s):"), "{one}");
    assert!(one.contains("broker/src/durable.rs:"), "{one}");
    assert!(one.contains("broker sync covered several partitions"), "{one}");
}

#[test]
fn swarm_writes_a_report_of_every_scenario() {
    let path = std::env::temp_dir().join(format!("kaelix-cli-{}-swarm.md", std::process::id()));
    let out = kaelix(&[
        "sim",
        "swarm",
        "--minutes",
        "0.01",
        "--master-seed",
        "7",
        "--jobs",
        "2",
        "--no-determinism-check",
        "--report",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    #[allow(clippy::disallowed_methods, reason = "the test reads the report the binary wrote")]
    let report = std::fs::read_to_string(&path).expect("the report is written");
    assert!(report.contains("master seed 7"), "{report}");
    for name in ["broadcast", "broker-durable", "raft-partitions", "serve"] {
        assert!(report.contains(&format!("| {name} | ")), "{name} missing:\n{report}");
    }
    assert!(report.contains("## Coverage"), "{report}");
    assert!(report.contains("never fired") || report.contains("every point fired"), "{report}");
    let bad = kaelix(&["sim", "swarm", "--minutes", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("--minutes must be a positive number"));
}

#[test]
fn shrink_refuses_a_passing_seed_and_replay_checks_the_schedule_file() {
    let out = kaelix(&["sim", "shrink", "--scenario", "broker", "--seed", "0", "--quiet"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("seed 0 of broker passes; there is no failure to shrink"),
        "{}",
        text(&out.stderr)
    );

    let other = temp_file("schedule-other.json", r#"{"scenario": "broadcast", "seed": 3, "check": "c", "faults": []}"#);
    let out = kaelix(&["sim", "replay", "--scenario", "broker", "--seed", "0", "--schedule", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is a schedule of broadcast seed 3, not of broker seed 0"),
        "{}",
        text(&out.stderr)
    );

    let bad = temp_file("schedule-bad.json", "{\"scenario\": \"broker\",\n \"seed\": \"zero\"}");
    let out = kaelix(&["sim", "replay", "--scenario", "broker", "--seed", "0", "--schedule", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("line 2, column"), "{}", text(&out.stderr));
}

/// `kaelix` with no `KAELIX_` variables from the test's environment.
fn kaelix_clean_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kaelix"));
    command.args(args).env_clear().env("PATH", "/usr/bin:/bin").env("HOME", std::env::temp_dir());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("the kaelix binary runs")
}

#[test]
fn config_check_lists_errors_and_warnings_and_exits_1_when_invalid() {
    let path = temp_file(
        "bad.toml",
        "[nats]\nlisten = \"127.0.0.1:0\"\n[native]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_payload = 0\n[log]\nlevel = \"trace\"\n",
    );
    let p = path.to_str().unwrap();
    let out = kaelix_clean_env(&["config", "check", p], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{p}:6:15: limits.max_payload: 0 is outside 1..=8388608\n\
             {p}:8:9: warning: log.level: trace logs every operation: expect it to cost throughput\n\
             {p}: invalid (1 error, 1 warning)\n"
        )
    );
}

#[test]
fn config_check_accepts_a_valid_file_and_show_names_origins() {
    let path = temp_file("good.toml", "[nats]\nlisten = \"127.0.0.1:0\"\n[native]\nlisten = \"127.0.0.1:0\"\n");
    let p = path.to_str().unwrap();
    let out = kaelix_clean_env(&["config", "check", p], &[("KAELIX_LIMITS__MAX_PAYLOAD", "2048")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout), format!("{p}: valid (0 warnings)\n"));
    let out =
        kaelix_clean_env(&["config", "show", "--config", p, "--origin"], &[("KAELIX_LIMITS__MAX_PAYLOAD", "2048")]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!(
            "# {p}\n\
             limits.max_payload = 2048  # environment KAELIX_LIMITS__MAX_PAYLOAD\n\
             native.listen = \"127.0.0.1:0\"  # {p}:4:10\n\
             nats.listen = \"127.0.0.1:0\"  # {p}:2:10\n"
        )
    );
}

#[test]
fn serve_refuses_an_invalid_configuration_and_says_why() {
    let out = kaelix_clean_env(
        &["serve", "--nats-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
        &[("KAELIX_LIMITS__MAX_PAYLOADD", "1")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with(
            "kaelix serve: refusing to start: the configuration is invalid:\n\
             environment KAELIX_LIMITS__MAX_PAYLOADD: limits.max_payloadd: unknown field `max_payloadd`"
        ),
        "{}",
        text(&out.stderr)
    );
}

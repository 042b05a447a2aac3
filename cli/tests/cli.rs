//! The `kaelix` binary end to end: history export and `sim check-history`.

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

//! The `kaelix` binary end to end: history export, `sim check-history`,
//! `sim run --jobs`, `sim run --seed N --metrics`, `sim swarm`; `cluster`: three `kaelix serve --cluster`
//! processes, failover and catch-up; `netns`: three of them in network
//! namespaces under nftables partitions and loss, tc bandwidth limits,
//! `kill -9` and SIGSTOP, their clients' history checked for
//! linearizability; `top`: `kaelix top` in a real terminal
//! (tmux); `tracing`: the OTLP export of `kaelix serve` received and
//! decoded by a test collector (one node and three).

#[path = "cli/cluster.rs"]
mod cluster;
#[path = "cli/netns.rs"]
mod netns;
#[path = "cli/netns_proxy.rs"]
mod netns_proxy;
#[path = "cli/top.rs"]
mod top;
#[path = "cli/tracing.rs"]
mod tracing;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

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

/// What follows the `metrics` line of a `sim run --metrics` report.
fn metrics_section(stdout: &str) -> &str {
    let at = stdout.find("\nmetrics ").unwrap_or_else(|| panic!("no metrics in\n{stdout}"));
    let rest = &stdout[at + 1..];
    rest.split_once("\n\n").map_or("", |(_, text)| text)
}

#[test]
fn sim_run_prints_a_seeds_metrics_byte_identically() {
    let run =
        |seed: &'static str| kaelix(&["sim", "run", "--scenario", "broker", "--seed", seed, "--quiet", "--metrics"]);
    let (a, b, other) = (run("2"), run("2"), run("3"));
    for out in [&a, &b, &other] {
        assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    }
    let (a, b, other) = (text(&a.stdout), text(&b.stdout), text(&other.stdout));
    assert!(a.contains("(second run: identical)"), "{a}");
    let text_a = metrics_section(&a);
    assert!(text_a.contains("# TYPE kaelix_broker_published_messages_total counter\n"), "{a}");
    assert!(text_a.contains("kaelix_broker_dropped_messages_total{node=\"1\",reason=\"oldest\"} "), "{a}");
    assert_eq!(text_a, metrics_section(&b), "same seed, other metrics");
    assert_ne!(text_a, metrics_section(&other), "another seed, same metrics");

    // Into a file: the same text.
    let path = std::env::temp_dir().join(format!("kaelix-cli-{}-metrics.prom", std::process::id()));
    let out =
        kaelix(&["sim", "run", "--scenario", "broker", "--seed", "2", "--quiet", "--metrics", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    #[allow(clippy::disallowed_methods, reason = "the test reads the file the binary wrote")]
    let written = std::fs::read_to_string(&path).expect("the metrics are written");
    assert_eq!(written, text_a);

    // Only for one seed.
    let many = kaelix(&["sim", "run", "--scenario", "broker", "--seeds", "2", "--metrics"]);
    assert_eq!(many.status.code(), Some(2), "{}", text(&many.stderr));
    assert!(text(&many.stderr).contains("--metrics needs --seed"), "{}", text(&many.stderr));
    // Every scenario exports its components' figures, the cluster ones too.
    let raft = kaelix(&["sim", "run", "--scenario", "raft-partitions", "--seed", "0", "--quiet", "--metrics"]);
    assert_eq!(raft.status.code(), Some(0), "{}{}", text(&raft.stdout), text(&raft.stderr));
    let raft = text(&raft.stdout);
    assert!(raft.contains("(second run: identical)"), "{raft}");
    let raft = metrics_section(&raft);
    assert!(raft.contains("# TYPE kaelix_cluster_partition_role gauge\n"), "{raft}");
    assert!(raft.contains("kaelix_raft_terms_led_total{node=\"1\",partition=\"0\",topic=\"orders\"} "), "{raft}");
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

#[test]
#[allow(clippy::disallowed_methods, reason = "the test reads the page the binary wrote")]
fn replay_draws_the_run_into_one_self_contained_page() {
    let page = std::env::temp_dir().join(format!("kaelix-cli-{}-broadcast.html", std::process::id()));
    let out = kaelix(&["sim", "replay", "--scenario", "broadcast", "--seed", "3", "--html", page.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&format!("picture     {}", page.display())), "{stdout}");
    let html = std::fs::read_to_string(&page).expect("the page was written");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains(r#"<script type="application/json" id="data">{"title":"broadcast seed 3: pass""#));
    assert!(html.contains(r#""failure":null"#), "a passing run has no failure");
    assert!(html.contains(r#""lanes":[{"id":"#), "lanes are embedded");

    // Fewer messages asked: a smaller window, said so.
    let out = kaelix(&[
        "sim",
        "replay",
        "--scenario",
        "broadcast",
        "--seed",
        "3",
        "--html",
        page.to_str().unwrap(),
        "--html-max-messages",
        "10",
    ]);
    let stdout = text(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("picture")).expect("a picture line");
    let held: usize =
        line.split(" of its ").next().and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse().ok()).expect("a count");
    // The last 10 arrivals, plus the messages in flight across the window.
    assert!((10..100).contains(&held), "{line}");
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

/// A `kaelix serve` child on free ports, killed when dropped.
struct Served {
    child: std::process::Child,
    /// Kept open: the server prints to it after its addresses.
    _stdout: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    nats: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kaelix serve` with `config` and reads its addresses from stdout.
#[allow(clippy::disallowed_methods, reason = "the test runs the real binary on real ports and files")]
fn serve(name: &str, config: &str) -> Served {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("kaelix-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = temp_file(&format!("{name}.toml"), config);
    let mut command = Command::new(env!("CARGO_BIN_EXE_kaelix"));
    // The loader reads every `KAELIX_` variable as configuration and refuses
    // unknown keys; a developer's or CI's own `KAELIX_` knobs (`KAELIX_BLESS`,
    // `KAELIX_PROMTOOL`) must not reach the server under test.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KAELIX_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["serve", "--nats-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--log-level", "warn", "--config", config.to_str().unwrap(), "--data-dir", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kaelix serve starts");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut nats, mut metrics) = (None, None);
    while nats.is_none() || metrics.is_none() {
        let line = lines.next().expect("kaelix serve prints its addresses").unwrap();
        if let Some(rest) = line.strip_prefix("kaelix serve: NATS clients on nats://") {
            nats = Some(rest.parse().unwrap());
        } else if let Some(rest) = line.strip_prefix("kaelix serve: metrics on http://") {
            metrics = Some(rest.trim_end_matches("/metrics").parse().unwrap());
        }
    }
    Served { child, _stdout: lines, nats: nats.unwrap(), metrics: metrics.unwrap() }
}

/// One real HTTP GET; returns (status, body).
#[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "a real HTTP client socket")]
fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("the metrics endpoint accepts");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a header block");
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_owned())
}

/// The value of the series named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
#[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "a real NATS client socket")]
fn serve_exports_metrics_and_health_over_http() {
    use std::io::{BufRead, Write};
    let served = serve("metrics", "[[topics]]\nname = \"orders\"\nstorage = \"memory\"\n");
    let (code, body) = http_get(served.metrics, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(["healthy", "unknown"].contains(&body.lines().next().unwrap()), "{body}");
    assert!(body.contains("worker 0 (numa node "), "one line per worker: {body}");

    // A NATS client: subscribe, publish three messages to the topic, and
    // wait for the PONG that says they are stored and delivered.
    let mut conn = std::net::TcpStream::connect(served.nats).unwrap();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    let sent = "CONNECT {\"verbose\":false}\r\nSUB orders 1\r\nPUB orders 5\r\nhello\r\nPUB orders 5\r\nhello\r\nPUB orders 5\r\nhello\r\nPING\r\n";
    conn.write_all(sent.as_bytes()).unwrap();
    // The PONG says the publishes are stored; the deliveries may come
    // before or after it.
    let mut received = info.len();
    let (mut msgs, mut pong) = (0, false);
    while msgs < 3 || !pong {
        let mut line = String::new();
        assert_ne!(reader.read_line(&mut line).unwrap(), 0, "the server closed the connection");
        received += line.len();
        if line.starts_with("MSG ") {
            msgs += 1;
            let mut payload = String::new();
            reader.read_line(&mut payload).unwrap();
            received += payload.len();
        } else {
            assert_eq!(line, "PONG\r\n");
            pong = true;
        }
    }

    // The server counts bytes it sent once its write returns, which can be
    // after this client has read them: scrape until the count catches up
    // (it must, and it must never pass what was received).
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    let mut scrapes = 0;
    let text = loop {
        let (code, text) = http_get(served.metrics, "/metrics");
        assert_eq!(code, 200);
        scrapes += 1;
        let sent_by_server = sample(&text, "kaelix_server_sent_bytes_total{protocol=\"nats\"}");
        assert!(sent_by_server <= received as f64, "the server counts more bytes sent than arrived:\n{text}");
        if sent_by_server == received as f64 || std::time::Instant::now() > give_up {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(sample(&text, "kaelix_server_connections"), 1.0);
    assert_eq!(sample(&text, "kaelix_server_connections_accepted_total"), 1.0);
    assert_eq!(sample(&text, "kaelix_server_received_bytes_total{protocol=\"nats\"}"), sent.len() as f64);
    assert_eq!(sample(&text, "kaelix_server_sent_bytes_total{protocol=\"nats\"}"), received as f64);
    assert_eq!(sample(&text, "kaelix_server_received_bytes_total{protocol=\"native\"}"), 0.0);
    assert_eq!(sample(&text, "kaelix_broker_topics"), 1.0);
    assert_eq!(sample(&text, "kaelix_broker_published_messages_total"), 3.0);
    assert_eq!(sample(&text, "kaelix_broker_delivered_messages_total{to=\"stream\"}"), 3.0);
    // The NATS subscription is on its connection's sink, not a stream.
    assert_eq!(sample(&text, "kaelix_broker_streams"), 0.0);
    assert_eq!(sample(&text, "kaelix_broker_sink_subscriptions"), 1.0);
    assert!(sample(&text, "kaelix_executor_workers") >= 1.0);
    let polls: f64 = text
        .lines()
        .filter(|l| l.starts_with("kaelix_executor_polls_total{worker="))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(polls > 0.0, "{text}");
    assert!(text.contains("# TYPE kaelix_executor_polls_total counter"), "{text}");
    assert_eq!(sample(&text, "kaelix_telemetry_scrapes_total"), f64::from(scrapes), "only this test's scrapes");
    assert_eq!(http_get(served.metrics, "/nothing").0, 404);

    // promtool's own check of the exposition when CI provides it (`.ci/run`
    // also checks a scrape taken under load).
    if let Some(promtool) = std::env::var_os("KAELIX_PROMTOOL") {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool runs");
        check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(out.status.success(), "promtool: {}{}", self::text(&out.stdout), self::text(&out.stderr));
    }
}

#[test]
#[allow(clippy::disallowed_methods, clippy::disallowed_types, reason = "real NATS client sockets")]
fn a_server_at_its_task_bound_refuses_new_work_with_errors_and_keeps_serving() {
    use std::io::{BufRead, BufReader, Read, Write};
    // Every connection is two tasks (its reader and its writer); a
    // subscription is none (a record on its connection's broker sink). With
    // room for 64, connections soon fill the executor.
    let served = serve("task-bound", "[runtime]\ntask_queue_depth = 64\n");
    let connect = || {
        let conn = std::net::TcpStream::connect(served.nats).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = BufReader::new(conn.try_clone().unwrap());
        (conn, reader)
    };
    let line = |reader: &mut BufReader<std::net::TcpStream>| {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    };
    // Open connections until the server refuses one: an -ERR, then closed.
    let mut open = Vec::new();
    let refused = loop {
        assert!(open.len() < 64, "64 connections accepted under a bound of 64 live tasks");
        let (mut c, mut c_in) = connect();
        let mut heard = line(&mut c_in);
        if heard.starts_with("INFO ") {
            c.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n").unwrap();
            heard = line(&mut c_in);
            if heard == "PONG\r\n" {
                open.push((c, c_in));
                continue;
            }
        }
        let mut rest = String::new();
        c_in.read_to_string(&mut rest).unwrap();
        break heard + &rest;
    };
    assert_eq!(refused, "-ERR 'server is at its task capacity'\r\n", "then closed");
    assert!(!open.is_empty(), "no connection fit at all");

    // At the bound, an accepted connection still subscribes freely: a
    // subscription takes no task.
    let (a, a_in) = &mut open[0];
    let mut subs = String::new();
    for sid in 1..=200 {
        subs.push_str(&format!("SUB s.{sid} {sid}\r\n"));
    }
    subs.push_str("PING\r\n");
    a.write_all(subs.as_bytes()).unwrap();
    assert_eq!(line(a_in), "PONG\r\n", "200 subscriptions accepted at the task bound");
    // And they work: a publish reaches subscription 1 before the PONG
    // (delivery happens inside the publish).
    a.write_all(b"PUB s.1 2\r\nhi\r\nPING\r\n").unwrap();
    let heard = vec![line(a_in), line(a_in), line(a_in)];
    assert_eq!(heard, ["MSG s.1 1 2\r\n", "hi\r\n", "PONG\r\n"]);

    let (_, text) = http_get(served.metrics, "/metrics");
    assert!(sample(&text, "kaelix_executor_spawns_refused_total") >= 1.0, "{text}");
    assert!(sample(&text, "kaelix_executor_live_tasks") <= 64.0, "{text}");
    assert_eq!(sample(&text, "kaelix_server_connections"), open.len() as f64, "the refused connection holds no place");

    // Room comes back as connections close: a new connection is served.
    open.truncate(1);
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (mut c, mut c_in) = connect();
        let mut reply = line(&mut c_in);
        if reply.starts_with("INFO ") {
            c.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n").unwrap();
            reply = line(&mut c_in);
            if reply == "PONG\r\n" {
                break;
            }
        }
        assert_eq!(reply, "-ERR 'server is at its task capacity'\r\n");
        assert!(std::time::Instant::now() < give_up, "no room came back after the connections closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}
